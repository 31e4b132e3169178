"""A problem in a place an agent's user can write concerns that agent alone (the agents role, on Debian 11, 12, 13).

Two agents in trouble next to a change of alpha's environment:

* `loner` (new) runs `/var/lib/agentops/loner/bin/run`, a program in its own directory that does not exist: found by
  the contract check before any change;
* `beta` (deployed) gets a new environment while its AGENTS.md is a symlink to /etc/shadow: found by agent_files
  while it writes beta's directory.

Both are left as they were (loner: no user, directory, unit; beta: unit, agents.d file and AGENTS.md untouched, not
restarted), alpha gets its change and is restarted, the host sends the alerts loner/deploy and beta/deploy (the
open alerts of the host show them), the run ends rc != 0 naming both. A --check run reports
the same and sends nothing. A clean run afterwards deploys beta again and resolves its alert. The scenario has no
alert channel: the open alerts are read from the host's alert state (/var/lib/agentops/.alerts).
"""
import json
import os

import pytest
import testinfra.utils.ansible_runner

from agents_helpers import agent, all_hosts, fleet_run, host_name, prop, scenario_agents, start_stamps

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("agentops_test")

BETA_FILES = ["/etc/systemd/system/agentops-beta.service", "/etc/agentops/agents.d/beta.json"]
AGENTS_MD = "/var/lib/agentops/beta/AGENTS.md"
UNITS = ["agentops-alpha.service", "agentops-beta.service"]


def inventory(greeting):
    agents = scenario_agents()
    agent(agents, "retiree")["state"] = "absent"  # as test_20 left it
    agent(agents, "alpha")["environment"]["GREETING"] = greeting
    agent(agents, "beta")["environment"]["GREETING"] = "never-applied"
    agents.append({"name": "loner", "command": "/var/lib/agentops/loner/bin/run --loop"})
    return agents


def open_alerts(host):
    """The keys of the host's open alerts (the alert path's de-duplication state)."""
    return json.loads(host.check_output(
        "python3 -c \"import glob, json; print(json.dumps(sorted(json.load(open(p))['key'] "
        "for p in glob.glob('/var/lib/agentops/.alerts/*.json'))))\""))


def state(host):
    return {"sums": host.check_output("sha256sum %s" % " ".join(BETA_FILES)),
            "link": host.check_output("readlink %s || true" % AGENTS_MD),
            "stamps": start_stamps(host, UNITS), "alerts": open_alerts(host)}


@pytest.fixture(scope="module")
def held():
    hosts = all_hosts()
    runs = {}
    for h in hosts:
        h.run_test("mv %s %s.saved && ln -s /etc/shadow %s" % (AGENTS_MD, AGENTS_MD, AGENTS_MD))
    try:
        for mode in ("check", "run"):
            before = dict((host_name(h), state(h)) for h in hosts)
            rc, output, recaps = fleet_run("converge.yml", {"agentops_agents": inventory("held-%s" % mode)},
                                           check=mode == "check", diff=True)
            after = dict((host_name(h), state(h)) for h in hosts)
            runs[mode] = {"rc": rc, "output": output, "recaps": recaps, "before": before, "after": after}
    finally:
        for h in hosts:
            h.run_test("rm -f %s && mv %s.saved %s" % (AGENTS_MD, AGENTS_MD, AGENTS_MD))
    agents = [a for a in inventory("held-run") if a["name"] != "loner"]
    agent(agents, "beta")["environment"]["GREETING"] = "bonjour"
    rc, output, recaps = fleet_run("converge.yml", {"agentops_agents": agents})
    runs["clean"] = {"rc": rc, "output": output, "alerts": dict((host_name(h), open_alerts(h)) for h in hosts)}
    return runs


LONER = ("agentops_agents[loner].command: /var/lib/agentops/loner/bin/run does not exist (in a place that a user "
         "other than root can write)")
BETA = "agentops_agents[beta]: %s is a symlink (not followed)" % AGENTS_MD


@pytest.mark.parametrize("mode", ["check", "run"])
def test_the_run_fails_naming_both_agents_and_their_problems(host, held, mode):
    run = held[mode]
    text = " ".join(run["output"].split())
    assert run["rc"] != 0, run["output"][-3000:]
    assert "2 agent(s) left as they were on %s" % host_name(host) in text, run["output"][-3000:]
    assert LONER in text and BETA in text
    assert run["recaps"][host_name(host)]["failed"] == 1


@pytest.mark.parametrize("mode", ["check", "run"])
def test_the_agents_in_trouble_are_left_as_they_were(host, held, mode):
    name = host_name(host)
    before, after = held[mode]["before"][name], held[mode]["after"][name]
    assert after["sums"] == before["sums"] and after["link"].strip() == "/etc/shadow"
    assert after["stamps"]["agentops-beta.service"] == before["stamps"]["agentops-beta.service"]
    assert "never-applied" not in prop(host, "agentops-beta.service", "Environment")
    assert not host.user("agent-loner").exists
    assert not host.file("/var/lib/agentops/loner").exists
    assert not host.file("/etc/systemd/system/agentops-loner.service").exists
    assert "never-applied" not in held[mode]["output"]  # no diff of beta's files either


def test_the_other_agents_converge_in_the_same_run(host, held):
    name = host_name(host)
    run = held["run"]
    assert "GREETING=held-run" in prop(host, "agentops-alpha.service", "Environment")
    assert run["after"][name]["stamps"]["agentops-alpha.service"] != run["before"][name]["stamps"]["agentops-alpha.service"]
    assert prop(host, "agentops-alpha.service", "ActiveState") == "active"


def test_the_host_alerts_each_held_agent_and_check_mode_sends_nothing(host, held):
    name = host_name(host)
    assert "loner/deploy" not in held["check"]["after"][name]["alerts"]
    assert "beta/deploy" not in held["check"]["after"][name]["alerts"]
    assert {"loner/deploy", "beta/deploy"} <= set(held["run"]["after"][name]["alerts"])


def test_a_clean_run_deploys_beta_again_and_resolves_its_alert(host, held):
    assert held["clean"]["rc"] == 0, held["clean"]["output"][-3000:]
    assert "GREETING=bonjour" in prop(host, "agentops-beta.service", "Environment")
    alerts = held["clean"]["alerts"][host_name(host)]
    assert "beta/deploy" not in alerts and "loner/deploy" in alerts  # loner left the inventory: its alert stays
