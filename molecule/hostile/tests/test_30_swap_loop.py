"""Items 3 and 4 under a race: the evil agent's user swaps AGENTS.md, WORKSTATE.md and its progress file without
pause (symlinks to a root-only credential, /etc/shadow, another agent's AGENTS.md, /usr/local/bin/agentops and
/dev/zero; FIFOs; 64 GiB sparse files; regular files; always by an atomic rename), while a real converge, a
--check --diff -vvv converge, heartbeat runs and audit.yml -vvv run on both hosts, and bystander is stopped.

Every run finishes within its deadline, nothing outside the agent's directory changes owner, mode or content,
no secret reaches an output, victim is converged in the same run, and bystander's outage is alerted.
"""
import json
import os
import tempfile
import uuid

import pytest

from hostile_helpers import (EVIL_HOME, FILES, UNIT, agent, all_hosts, as_evil, fleet_run, host_name, leaks, now,
                             prop, read_report, restore, save_originals, scenario_agents, sh, snapshot, snapshot_changes,
                             target_sums, timed, wait_for, webhook)

PLAYBOOK_DEADLINE = 240
SWAP_SECONDS = 600
HEARTBEAT_RUNS = 3


def wait_swapper_gone(host, wait_for):
    wait_for(lambda: host.run("pgrep -u agent-evil -f evil-swapper").rc != 0, 30, message="swapper stopped")


@pytest.fixture(scope="module")
def swap_loop():
    hosts = all_hosts()
    nonce = uuid.uuid4().hex[:8]
    result = {"nonce": nonce, "before": {}, "sums": {}, "after": {}, "sums_after": {}, "heartbeats": {},
              "outage": {}, "swaps": {}}
    for host in hosts:
        save_originals(host)
        restore(host)
        as_evil(host, "rm -f .stop-swapper .swapper.out")
        result["before"][host_name(host)] = snapshot(host)
        result["sums"][host_name(host)] = target_sums(host)
        as_evil(host, "nohup /opt/agentops-test/evil-swapper %s %d %s > .swapper.out 2>&1 &"
                % (EVIL_HOME, SWAP_SECONDS, " ".join(FILES)))
        wait_for(lambda h=host: h.run("pgrep -u agent-evil -f evil-swapper").rc == 0, 30, message="swapper running")
    try:
        agents = scenario_agents()
        agent(agents, "victim")["description"] = "victim converged during the swap loop %s" % nonce
        result["converge"] = fleet_run("agents.yml", PLAYBOOK_DEADLINE, extra_vars={"agentops_agents": agents},
                                       diff=True)
        result["check"] = fleet_run("agents.yml", PLAYBOOK_DEADLINE, extra_vars={"agentops_agents": agents},
                                    check=True, diff=True, verbosity=3)
        report = os.path.join(tempfile.mkdtemp(prefix="hostile-audit-"), "audit.json")
        result["audit"] = fleet_run("../../playbooks/audit.yml", PLAYBOOK_DEADLINE, verbosity=3,
                                    extra_vars={"agentops_audit_report_path": report})
        result["report_text"] = read_report(report)
        for host in hosts:
            name = host_name(host)
            runs = [timed(host, "systemctl start agentops-heartbeat.service", 120)
                    for _ in range(HEARTBEAT_RUNS)]
            runs.append(timed(host, "/usr/local/bin/agentops heartbeat --force", 120))
            result["heartbeats"][name] = runs
            # item 4: the other agents are still checked and alerted while evil misbehaves
            since = now(host)
            sh(host, "systemctl stop %s" % (UNIT % "bystander"))
            try:
                result["outage"][name] = wait_for(lambda h=host, s=since: webhook(h, s, key="bystander/down"), 60,
                                                  message="bystander/down alert")
            finally:
                sh(host, "systemctl start %s" % (UNIT % "bystander"))
            result["outage"][name + "/resolved"] = wait_for(
                lambda h=host, s=since: webhook(h, s, key="bystander/down", severity="resolved"), 60,
                message="bystander/down resolved")
    finally:
        for host in hosts:
            as_evil(host, "touch .stop-swapper")
            wait_swapper_gone(host, wait_for)
            result["swaps"][host_name(host)] = host.run("cat %s/.swapper.out" % EVIL_HOME).stdout.strip()
            as_evil(host, "rm -f .stop-swapper .swapper.out .swap-*")
            restore(host)
            result["after"][host_name(host)] = snapshot(host)
            result["sums_after"][host_name(host)] = target_sums(host)
    return result


def test_the_swapper_really_raced(host, swap_loop):
    out = swap_loop["swaps"][host_name(host)]
    assert out.startswith("swaps="), out
    assert int(out.split("=")[1]) >= 1000, out


def test_every_run_finished_within_its_deadline(host, swap_loop):
    for run in ("converge", "check", "audit"):
        rc, output, recaps, seconds = swap_loop[run]
        assert rc is not None, "%s did not finish within %ss:\n%s" % (run, PLAYBOOK_DEADLINE, output[-3000:])
        assert host_name(host) in recaps, "%s: no recap for %s:\n%s" % (run, host_name(host), output[-3000:])
    for result, seconds in swap_loop["heartbeats"][host_name(host)]:
        assert result.rc != 137 and seconds < 120, "a heartbeat run hung during the swap loop"


def test_nothing_outside_the_agent_directory_changed(host, swap_loop):
    name = host_name(host)
    assert snapshot_changes(swap_loop["before"][name], swap_loop["after"][name]) == []
    assert swap_loop["sums_after"][name] == swap_loop["sums"][name]


def test_no_secret_in_any_output(host, swap_loop):
    for run in ("converge", "check", "audit"):
        assert leaks(swap_loop[run][1], host) == [], run
    assert leaks(swap_loop["report_text"], host) == []
    for result, seconds in swap_loop["heartbeats"][host_name(host)]:
        assert leaks(result.stdout + result.stderr, host) == []


def test_victim_converged_during_the_swap_loop(host, swap_loop):
    want = "victim converged during the swap loop %s" % swap_loop["nonce"]
    assert prop(host, UNIT % "victim", "Description") == want, swap_loop["converge"][1][-3000:]
    for name in ("victim", "bystander"):
        wait_for(lambda n=name: prop(host, UNIT % n, "ActiveState") == "active", 60,
                 message="%s running" % (UNIT % name))


def test_the_audit_completed_for_every_agent(host, swap_loop):
    assert swap_loop["report_text"], "audit.yml wrote no report:\n%s" % swap_loop["audit"][1][-3000:]
    report = json.loads(swap_loop["report_text"])["hosts"][host_name(host)]
    assert sorted(a["unit"] for a in report["agents"]) == sorted(UNIT % a["name"] for a in scenario_agents())
    assert len(report["checklist"]) == 9


def test_bystander_outage_alerted_and_resolved_while_evil_raced(host, swap_loop):
    name = host_name(host)
    down = swap_loop["outage"][name]
    assert down[0]["severity"] in ("warning", "critical"), down
    assert down[0]["agent"] == "bystander"
    assert swap_loop["outage"][name + "/resolved"]
