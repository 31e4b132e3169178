"""Re-running the playbook: check mode, secrets in verbose output, targeted restarts,
host-rotated credentials, credential sync and state: absent. Each run covers both hosts at once."""
import hashlib
import os

import pytest
import testinfra.utils.ansible_runner

from agents_helpers import agent, all_hosts, fleet_run, host_name, prop, scenario_agents, start_stamps

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("agentops_test")

CANARY = "canary-5d41c7b2-never-print-me"
RUNNING = ("net", "forker", "alpha", "beta", "gamma", "retiree")
UNITS = ["agentops-%s.service" % n for n in RUNNING]


def _sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def check_run():
    """--check --diff -vvv on the converged hosts."""
    return fleet_run("converge.yml", check=True, diff=True, verbosity=3)


@pytest.fixture(scope="module")
def env_change(check_run):
    """alpha's environment changes; everything else stays. Real run with --diff -vvv."""
    hosts = all_hosts()
    before = {host_name(h): start_stamps(h, UNITS) for h in hosts}
    agents = scenario_agents()
    agent(agents, "alpha")["environment"]["GREETING"] = "hola"
    rc, output, recaps = fleet_run("converge.yml", {"agentops_agents": agents}, diff=True, verbosity=3)
    after = {host_name(h): start_stamps(h, UNITS) for h in hosts}
    return rc, output, recaps, before, after


@pytest.fixture(scope="module")
def final_run(env_change):
    """The host rotated authy's graph_token, someone edited net's api_token, retiree is retired."""
    hosts = all_hosts()
    before = {}
    for h in hosts:
        h.run_test("printf %s > /etc/agentops/credentials/authy/graph_token", "rotated-on-host-token")
        h.run_test("printf %s > /etc/agentops/credentials/net/api_token", "edited-by-hand")
        h.run_test("echo 'phase 2 done, next: phase 3' >> /var/lib/agentops/retiree/WORKSTATE.md")
        before[host_name(h)] = {
            "stamps": start_stamps(h, UNITS),
            "workstate": h.file("/var/lib/agentops/retiree/WORKSTATE.md").content_string,
            "retiree_user": h.user("agent-retiree").name,
        }
    agents = scenario_agents()
    agent(agents, "alpha")["environment"]["GREETING"] = "hola"
    agent(agents, "retiree")["state"] = "absent"
    rc, output, recaps = fleet_run("converge.yml", {"agentops_agents": agents}, diff=True)
    after = {host_name(h): {"stamps": start_stamps(h, UNITS)} for h in hosts}
    return rc, output, recaps, before, after


def test_check_mode_on_a_converged_host_changes_nothing(host, check_run):
    rc, output, recaps = check_run
    assert rc == 0, output[-3000:]
    recap = recaps[host_name(host)]
    assert recap["changed"] == 0 and recap["failed"] == 0, output[-3000:]


def test_canary_not_in_verbose_output(check_run, env_change):
    for output in (check_run[1], env_change[1]):
        assert "agentops.fleet.agents" in output  # the runs did go through the role
        assert CANARY not in output


def test_environment_change_restarts_only_that_agent(host, env_change):
    rc, output, recaps, before, after = env_change
    assert rc == 0, output[-3000:]
    name = host_name(host)
    assert recaps[name]["changed"] >= 1
    changed = sorted(u for u in UNITS if before[name][u] != after[name][u])
    assert changed == ["agentops-alpha.service"], (before[name], after[name])
    pid = prop(host, "agentops-alpha.service", "MainPID")
    assert "GREETING=hola" in host.check_output("tr '\\0' '\\n' < /proc/%s/environ", pid).split("\n")
    assert 'Environment="GREETING=hola"' in host.file("/etc/systemd/system/agentops-alpha.service").content_string


def test_host_rotated_credential_is_left_alone(host, final_run):
    rc, output, recaps, before, after = final_run
    assert rc == 0, output[-3000:]
    token = host.file("/etc/agentops/credentials/authy/graph_token")
    assert token.content_string == "rotated-on-host-token"
    assert token.user == "root" and token.mode == 0o600
    assert "Left alone (the host rotates it, token_rotation)" in output and "authy/graph_token" in output
    # a credential the host does not rotate is kept in sync with the inventory ...
    synced = host.file("/etc/agentops/credentials/net/api_token")
    assert host.check_output("sha256sum /etc/agentops/credentials/net/api_token").split()[0] == _sha(CANARY)
    assert synced.user == "root" and synced.mode == 0o600
    # ... and only the agent whose credential changed was restarted
    name = host_name(host)
    changed = sorted(u for u in UNITS[:-1] if before[name]["stamps"][u] != after[name]["stamps"][u])
    assert changed == ["agentops-net.service"], (before[name]["stamps"], after[name]["stamps"])


def test_absent_agent_is_cleaned_up_and_keeps_its_workstate(host, final_run):
    rc, output, recaps, before, after = final_run
    assert rc == 0, output[-3000:]
    name = host_name(host)
    assert prop(host, "agentops-retiree.service", "LoadState") == "not-found"
    assert not host.file("/etc/systemd/system/agentops-retiree.service").exists
    assert not host.file("/etc/systemd/system/multi-user.target.wants/agentops-retiree.service").exists
    assert not host.file("/etc/agentops/agents.d/retiree.json").exists
    assert not host.file("/etc/agentops/credentials/retiree").exists
    assert host.run("pgrep -u agent-retiree").stdout.strip() == ""
    assert host.file("/var/lib/agentops/retiree/WORKSTATE.md").content_string == before[name]["workstate"]
    assert "phase 2 done" in before[name]["workstate"]
    assert host.file("/var/lib/agentops/retiree").user == "agent-retiree"
    assert "agentops-retiree" not in host.check_output("systemctl list-units --all --plain --no-legend 'agentops-*'")
