"""The example inventories parse, carry the contract's variables and keep their secrets vaulted."""
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
    assert {c["type"] for c in mail["agentops_alert_channels"]} == {"telegram", "webhook", "command"}
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
