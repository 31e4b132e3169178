"""The example inventories parse, carry the contract's variables and keep their secrets vaulted."""
import base64
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BIN = os.path.dirname(sys.executable)
VAULT_PASS = os.path.join(ROOT, "inventories", "example-vault-password.txt")


def ansible(tool, *args):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([os.path.join(BIN, tool)] + list(args), cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_example_inventory_graph():
    graph = ansible("ansible-inventory", "-i", "inventories/example", "--graph")
    assert "mail01.example.com" in graph and "research01.example.com" in graph
    assert "@agent_hosts" in graph


def test_example_inventory_vars_and_vault():
    data = json.loads(ansible("ansible-inventory", "-i", "inventories/example", "--list",
                              "--vault-password-file", VAULT_PASS))
    hostvars = data["_meta"]["hostvars"]
    mail = hostvars["mail01.example.com"]
    assert [a["name"] for a in mail["agentops_agents"]] == ["mail-triage"]
    assert {c["type"] for c in mail["agentops_alert_channels"]} == {"telegram", "webhook", "command", "slack", "pagerduty", "email"}
    assert mail["agentops_deadman"][0]["url"].startswith("https://hc-ping.com/")
    assert [a["name"] for a in hostvars["research01.example.com"]["agentops_agents"]] == ["research", "digest"]
    # The secrets are only ever referenced from the inventory, and stored encrypted.
    vault = open(os.path.join(ROOT, "inventories/example/group_vars/agent_hosts/vault.yml"), encoding="utf-8").read()
    assert vault.startswith("$ANSIBLE_VAULT;")
    assert "vault_mail_graph_token" in json.dumps(mail["agentops_agents"])


@pytest.mark.parametrize("inventory", ["inventories/example", "inventories/demo"])
def test_site_playbook_syntax(inventory):
    args = ["-i", inventory, "--syntax-check", "playbooks/site.yml"]
    if inventory.endswith("example"):
        args += ["--vault-password-file", VAULT_PASS]
    out = ansible("ansible-playbook", *args)
    assert "playbook: playbooks/site.yml" in out


def test_example_inventory_passes_the_contract():
    """What users copy must be valid: every host's variables, vault secrets resolved, pass the contract."""
    from ansible_collections.agentops.fleet.plugins.module_utils import agentops_contract as contract
    out = ansible("ansible", "-i", "inventories/example", "agent_hosts", "-c", "local", "-o",
                  "--vault-password-file", VAULT_PASS, "-m", "ansible.builtin.debug",
                  "-a", "msg={{ dict(vars | dict2items | selectattr('key', 'match', '^agentops_') | items2dict) "
                        "| to_json | b64encode }}")
    checked = 0
    for line in out.splitlines():
        host, _sep, rest = line.partition(" | SUCCESS => ")
        if not rest:
            continue
        settings = json.loads(base64.b64decode(json.loads(rest)["msg"]))
        assert settings["agentops_agents"], host
        assert contract.agents_errors(settings["agentops_agents"]) == [], host
        assert contract.settings_errors(settings) == [], host
        assert settings["agentops_alert_channels"] and settings["agentops_deadman"], host
        assert "vault_" not in json.dumps(settings)      # every secret was resolved from the vault
        checked += 1
    assert checked == 2, out[-2000:]
