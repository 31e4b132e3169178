"""Every rejected input: the message names the agent and the field, and nothing on the host changes."""
import json
import os
import re

import pytest
import testinfra.utils.ansible_runner

from agents_helpers import agent, all_hosts, fleet_run, host_name, scenario_agents, snapshot

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("agentops_test")


def one(**fields):
    base = {"name": "mail-triage", "command": "/opt/agents/mail-triage/run --loop",
            "credentials": {"graph_token": "x"}}
    base.update(fields)
    return [base]


CASES = {
    # name: (agents, expected pieces of the message)
    "name-dotdot": (one(name="../x"), ["agentops_agents['../x'].name", "^[a-z][a-z0-9-]{0,39}$"]),
    "name-semicolon": (one(name="a;b"), ["agentops_agents['a;b'].name"]),
    "name-uppercase": (one(name="A"), ["agentops_agents['A'].name"]),
    "name-space": (one(name="a b"), ["agentops_agents['a b'].name"]),
    "name-newline": (one(name="a\nb"), ["agentops_agents['a\\nb'].name"]),
    "name-41-chars": (one(name="a" * 41), ["agentops_agents['%s'].name" % ("a" * 41)]),
    "name-reserved": (one(name="rotation"), ["agentops_agents[rotation].name", "reserved"]),
    "name-duplicate": (one() + one(), ["agentops_agents[mail-triage].name", "duplicate"]),
    "command-relative": (one(command="run --loop"), ["agentops_agents[mail-triage].command", "absolute"]),
    "command-missing": ([{"name": "mail-triage"}], ["agentops_agents[mail-triage].command"]),
    "unknown-key": (one(colour="blue"), ["agentops_agents[mail-triage].colour", "unknown key"]),
    "state-bad": (one(state="gone"), ["agentops_agents[mail-triage].state"]),
    "enabled-not-bool": (one(enabled="yes"), ["agentops_agents[mail-triage].enabled"]),
    "user-root": (one(user="root"), ["agentops_agents[mail-triage].user"]),
    "env-bad-name": (one(environment={"BAD-NAME": "x"}), ["agentops_agents[mail-triage].environment.BAD-NAME"]),
    "env-newline": (one(environment={"A": "x\nExecStartPre=/bin/sh"}), ["agentops_agents[mail-triage].environment.A"]),
    "credential-bad-name": (one(credentials={"../etc": "x"}), ["agentops_agents[mail-triage].credentials.../etc"]),
    "restart-sec-not-span": (one(restart_sec="soon"), ["agentops_agents[mail-triage].restart_sec",
                                                       "not a systemd time span"]),
    "start-limit-burst-not-int": (one(start_limit_burst="five"), ["agentops_agents[mail-triage].start_limit_burst"]),
    "memory-max-bad": (one(memory_max="lots"), ["agentops_agents[mail-triage].memory_max"]),
    "hardening-bad": (one(hardening="paranoid"), ["agentops_agents[mail-triage].hardening"]),
    "heartbeat-max-silence": (one(heartbeat={"max_silence": "5 parsecs"}),
                              ["agentops_agents[mail-triage].heartbeat.max_silence: '5 parsecs' "
                               "is not a systemd time span"]),
    "heartbeat-interval": (one(heartbeat={"interval": "often"}), ["agentops_agents[mail-triage].heartbeat.interval"]),
    "heartbeat-unknown-key": (one(heartbeat={"interval": "5min", "colour": "x"}),
                              ["agentops_agents[mail-triage].heartbeat.colour", "unknown key"]),
    "heartbeat-progress": (one(heartbeat={"progress": "vibes"}), ["agentops_agents[mail-triage].heartbeat.progress"]),
    "heartbeat-command-missing": (one(heartbeat={"progress": "command"}),
                                  ["agentops_agents[mail-triage].heartbeat.command"]),
    "heartbeat-active-hours": (one(heartbeat={"active_hours": "8-20"}),
                               ["agentops_agents[mail-triage].heartbeat.active_hours", "HH:MM-HH:MM"]),
    "auth-type": (one(auth_checks=[{"name": "graph", "type": "oauth", "url": "https://x/y"}]),
                  ["agentops_agents[mail-triage].auth_checks[graph].type"]),
    "auth-credential": (one(auth_checks=[{"name": "graph", "type": "http", "url": "https://x/y", "credential": "nope"}]),
                        ["agentops_agents[mail-triage].auth_checks[graph].credential"]),
    "auth-unknown-key": (one(auth_checks=[{"name": "graph", "type": "http", "url": "https://x/y", "colour": 1}]),
                         ["agentops_agents[mail-triage].auth_checks[graph].colour", "unknown key"]),
    "rotation-credential": (one(token_rotation=[{"credential": "nope", "command": "/bin/refresh"}]),
                            ["agentops_agents[mail-triage].token_rotation[nope].credential"]),
    "rotation-cron-expression": (one(token_rotation=[{"credential": "graph_token", "every_days": "*/45",
                                                      "command": "/bin/refresh"}]),
                                 ["agentops_agents[mail-triage].token_rotation[graph_token].every_days", "*/45",
                                  "integer", "days"]),
    "rotation-zero-days": (one(token_rotation=[{"credential": "graph_token", "every_days": 0, "command": "/bin/r"}]),
                           ["agentops_agents[mail-triage].token_rotation[graph_token].every_days", ">= 1"]),
    "rotation-unknown-key": (one(token_rotation=[{"credential": "graph_token", "command": "/bin/r", "cron": "* * *"}]),
                             ["agentops_agents[mail-triage].token_rotation[graph_token].cron", "unknown key"]),
    "failure-mode-unknown-key": (one(failure_modes=[{"tool": "email", "on_failure": "alert", "x": 1}]),
                                 ["agentops_agents[mail-triage].failure_modes[0].x", "unknown key"]),
    # valid inventories whose program the host does not have (checked on the host, read-only)
    "command-not-on-host": (one(), ["agentops_agents[mail-triage].command: /opt/agents/mail-triage/run does not "
                                    "exist on the host", "set enabled: false"]),
    "command-not-executable": (one(command="/etc/hostname --loop"),
                               ["agentops_agents[mail-triage].command: /etc/hostname is not executable (mode 0644)"]),
    "command-a-device": (one(command="/dev/null"),
                         ["agentops_agents[mail-triage].command: /dev/null is not a regular file: a device node"]),
}
@pytest.fixture(scope="module")
def rejections():
    cases = {name: agents for name, (agents, _) in CASES.items()}
    hosts = all_hosts()
    before = {host_name(h): snapshot(h) for h in hosts}
    rc, output, recaps = fleet_run("reject.yml", {"reject_cases": cases})
    after = {host_name(h): snapshot(h) for h in hosts}
    assert rc == 0, output[-3000:]
    found = {}
    for line in output.splitlines():
        match = re.search(r'"msg": "REJECTIONS=(.*)"$', line)
        if match:
            found = json.loads(json.loads('"%s"' % match.group(1)))
    assert found, output[-3000:]
    return found, recaps, before, after


@pytest.fixture(scope="module")
def rejected_converge():
    """Full converge with bad input: fails before the first change."""
    hosts = all_hosts()
    before = {host_name(h): snapshot(h) for h in hosts}
    agents = scenario_agents()
    agent(agents, "alpha")["environment"]["GREETING"] = "changed-but-never-applied"
    agent(agents, "net")["heartbeat"]["max_silence"] = "5 parsecs"
    rc, output, recaps = fleet_run("converge.yml", {"agentops_agents": agents})
    after = {host_name(h): snapshot(h) for h in hosts}
    return rc, output, recaps, before, after


@pytest.mark.parametrize("case", sorted(CASES))
def test_rejected(host, rejections, case):
    found, recaps, before, after = rejections
    message = found[case]
    assert message != "ACCEPTED", case
    for piece in CASES[case][1]:
        assert piece in message, (case, message)
    name = host_name(host)
    assert recaps[name]["changed"] == 0
    assert before[name] == after[name]


def test_bad_input_fails_the_converge_before_any_change(host, rejected_converge):
    rc, output, recaps, before, after = rejected_converge
    name = host_name(host)
    assert rc != 0
    assert "agentops_agents[net].heartbeat.max_silence: '5 parsecs' is not a systemd time span" in output
    assert recaps[name]["changed"] == 0 and recaps[name]["failed"] == 1
    assert before[name] == after[name]


@pytest.fixture(scope="module")
def old_systemd():
    """Converge with the systemd version overridden to 246 (one below the floor, LoadCredential= is 247)."""
    hosts = all_hosts()
    before = {host_name(h): snapshot(h) for h in hosts}
    rc, output, recaps = fleet_run("converge.yml", {"agentops_agents_systemd_version": 246})
    after = {host_name(h): snapshot(h) for h in hosts}
    return rc, output, recaps, before, after


def test_systemd_older_than_the_floor_is_refused_before_any_unit(host, old_systemd):
    rc, output, recaps, before, after = old_systemd
    name = host_name(host)
    assert rc != 0
    text = " ".join(output.split())
    assert "%s runs systemd 246, older than 247, the oldest the agent units work on" % name in text, output[-3000:]
    assert "LoadCredential=" in text
    assert recaps[name]["changed"] == 0 and recaps[name]["failed"] == 1
    assert before[name] == after[name]
