"""Item 3: the evil agent's user turns AGENTS.md, WORKSTATE.md and its progress file into symlinks to root-only
files, FIFOs or 64 GiB sparse files; then, on both hosts at once, a --check --diff -vvv converge, audit.yml -vvv,
and the on-host heartbeat, status, rotate --list and check-auth (each layout), and a real converge --diff -vvv
(symlinks: the layout where following a path would chmod/chown or disclose a root-only file).

Each run finishes within a deadline (a FIFO never blocks, a huge file is never read whole), no secret and no
/etc/shadow line appears in any output or report, nothing outside the agent's directory changes owner, mode or
content, the other agents are still converged (victim gets a new description in the same run), the hostile files
are reported for the evil agent, and the audit names them. The converge leaves the evil agent as it was (its
AGENTS.md stays the agent's symlink, nothing of it is written) and fails at its end naming it.
"""
import json
import os
import tempfile
import uuid

import pytest

from hostile_helpers import (EVIL_HOME, FILES, UNIT, agent, all_hosts, as_evil, fleet_run, host_name, leaks, prop,
                             read_report, restore, save_originals, scenario_agents, snapshot, snapshot_changes, target_sums,
                             timed)

LAYOUTS = {
    "symlinks": {"AGENTS.md": "/etc/agentops/credentials/victim/api_token", "WORKSTATE.md": "/etc/shadow",
                 "progress": "/dev/zero"},
    "fifos": {"AGENTS.md": "fifo", "WORKSTATE.md": "fifo", "progress": "fifo"},
    "sparse": {"AGENTS.md": "sparse", "WORKSTATE.md": "sparse", "progress": "sparse"},
}
# what the audit must say it found in AGENTS.md, per layout
FOUND = {"symlinks": "symlink", "fifos": "fifo", "sparse": "too large"}
PLAYBOOK_DEADLINE = 240
COMMAND_DEADLINE = 60
ROOT_COMMANDS = ("heartbeat --force", "status", "rotate --list", "check-auth evil")


def make_hostile(host, layout):
    script = []
    for name in FILES:
        kind = LAYOUTS[layout][name]
        if kind == "fifo":
            script.append("rm -f %s && mkfifo %s" % (name, name))
        elif kind == "sparse":
            script.append("rm -f %s && truncate -s 64G %s" % (name, name))
        else:
            script.append("ln -sfn %s %s" % (kind, name))
    as_evil(host, " && ".join(script))


def task_status(output, task, host):
    """ok / changed / failed / skipping / None of `host` in the first TASK whose title contains `task`."""
    start = output.find(task)
    if start < 0:
        return None
    section = output[start:]
    end = section.find("\nTASK [", 1)
    section = section[:end if end > 0 else len(section)]
    for status in ("changed", "ok", "fatal", "failed", "skipping"):
        if "%s: [%s]" % (status, host) in section:
            return status
    return None


def prepare(hosts, layout):
    """Hostile files of `layout` on every host; returns the snapshots and target checksums before."""
    before, sums = {}, {}
    for host in hosts:
        save_originals(host)
        restore(host)
        before[host_name(host)] = snapshot(host)
        sums[host_name(host)] = target_sums(host)
        make_hostile(host, layout)
    return before, sums


def after(hosts, result):
    result["after"] = dict((host_name(h), snapshot(h)) for h in hosts)
    result["sums_after"] = dict((host_name(h), target_sums(h)) for h in hosts)


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def static_run(request):
    """One layout of hostile files on every host, then the read-only runs: a --check --diff -vvv converge,
    audit.yml -vvv, and the on-host command's heartbeat, status, rotate --list and check-auth."""
    layout = request.param
    hosts = all_hosts()
    result = {"layout": layout, "commands": {}}
    result["before"], result["sums"] = prepare(hosts, layout)
    try:
        result["check"] = fleet_run("agents.yml", PLAYBOOK_DEADLINE, check=True, diff=True, verbosity=3)
        report = os.path.join(tempfile.mkdtemp(prefix="hostile-audit-"), "audit.json")
        result["audit"] = fleet_run("../../playbooks/audit.yml", PLAYBOOK_DEADLINE, verbosity=3,
                                    extra_vars={"agentops_audit_report_path": report})
        result["report_text"] = read_report(report)
        for host in hosts:
            for argv in ROOT_COMMANDS:
                result["commands"][(host_name(host), argv)] = timed(
                    host, "/usr/local/bin/agentops %s" % argv, COMMAND_DEADLINE)
        after(hosts, result)
    finally:
        for host in hosts:
            restore(host)
    return result


@pytest.fixture(scope="module")
def converge_run():
    """A real converge (--diff -vvv) while AGENTS.md points at victim's credential, WORKSTATE.md at
    /etc/shadow and the progress file at /dev/zero; victim gets a new description in the same run."""
    hosts = all_hosts()
    nonce = uuid.uuid4().hex[:8]
    result = {"layout": "symlinks", "nonce": nonce}
    result["before"], result["sums"] = prepare(hosts, "symlinks")
    try:
        agents = scenario_agents()
        agent(agents, "victim")["description"] = "victim converged next to a hostile agent %s" % nonce
        result["converge"] = fleet_run("agents.yml", PLAYBOOK_DEADLINE, extra_vars={"agentops_agents": agents},
                                       diff=True, verbosity=3)
        result["links"] = dict((host_name(h), h.run("readlink %s/AGENTS.md" % EVIL_HOME).stdout.strip())
                               for h in hosts)
        after(hosts, result)
    finally:
        for host in hosts:
            restore(host)
    return result


def test_runs_finish_within_their_deadline(host, static_run):
    for run in ("check", "audit"):
        rc, output, recaps, seconds = static_run[run]
        assert rc is not None, "%s did not finish within %ss next to %s:\n%s" % (
            run, PLAYBOOK_DEADLINE, static_run["layout"], output[-3000:])
        assert host_name(host) in recaps, "%s: no recap for %s:\n%s" % (run, host_name(host), output[-3000:])
    for argv in ROOT_COMMANDS:
        result, seconds = static_run["commands"][(host_name(host), argv)]
        assert result.rc != 137 and seconds < COMMAND_DEADLINE, \
            "agentops %s did not finish within %ss next to %s" % (argv, COMMAND_DEADLINE, static_run["layout"])
        assert "Traceback" not in result.stderr, result.stderr


def test_no_secret_in_any_output(host, static_run):
    for run in ("check", "audit"):
        assert leaks(static_run[run][1], host) == [], "%s (%s)" % (run, static_run["layout"])
    assert leaks(static_run["report_text"], host) == []
    for argv in ROOT_COMMANDS:
        result, seconds = static_run["commands"][(host_name(host), argv)]
        assert leaks(result.stdout + result.stderr, host) == [], argv


def test_read_only_runs_change_nothing_outside_the_agent_directory(host, static_run):
    name = host_name(host)
    assert snapshot_changes(static_run["before"][name], static_run["after"][name]) == []
    assert static_run["sums_after"][name] == static_run["sums"][name]


def test_check_mode_goes_on_for_every_agent(host, static_run):
    """The hostile files do not stop the check run: the units of every agent are still checked."""
    rc, output, recaps, seconds = static_run["check"]
    status = task_status(output, "Write the agent units and their agents.d configuration", host_name(host))
    assert status in ("ok", "changed"), "check mode stopped before the units (%s):\n%s" % (status, output[-3000:])


def test_audit_names_the_hostile_agents_md_of_the_evil_agent_only(host, static_run):
    assert static_run["report_text"], "audit.yml wrote no report:\n%s" % static_run["audit"][1][-3000:]
    report = json.loads(static_run["report_text"])["hosts"][host_name(host)]
    items = dict((item["id"], item) for item in report["checklist"])
    reason = items["workstate_protocol"]["reason"]
    assert items["workstate_protocol"]["passed"] is False, reason
    assert "agentops-evil.service" in reason and "AGENTS.md" in reason, reason
    # what was found is named: the audit did not read through it
    assert FOUND[static_run["layout"]] in reason.lower(), reason
    assert "agentops-victim.service" not in reason and "agentops-bystander.service" not in reason, reason


def test_converge_never_follows_the_symlinks(host, converge_run):
    name = host_name(host)
    assert converge_run["converge"][0] is not None, converge_run["converge"][1][-3000:]
    assert host_name(host) in converge_run["converge"][2], converge_run["converge"][1][-3000:]
    assert snapshot_changes(converge_run["before"][name], converge_run["after"][name]) == []
    assert converge_run["sums_after"][name] == converge_run["sums"][name]
    assert leaks(converge_run["converge"][1], host) == []


def test_converge_goes_on_for_the_other_agents(host, converge_run, wait_for):
    rc, output, recaps, seconds = converge_run["converge"]
    want = "victim converged next to a hostile agent %s" % converge_run["nonce"]
    assert prop(host, UNIT % "victim", "Description") == want, output[-3000:]
    for name in ("victim", "bystander"):
        wait_for(lambda n=name: prop(host, UNIT % n, "ActiveState") == "active", 60,
                 message="%s running" % (UNIT % name))


def test_converge_reports_the_hostile_agents_md(host, converge_run):
    """The evil agent's AGENTS.md is named (not silently followed or skipped) in the converge output."""
    rc, output, recaps, seconds = converge_run["converge"]
    assert EVIL_HOME + "/AGENTS.md" in output, output[-3000:]


def test_converge_leaves_the_evil_agent_as_it_was_and_fails_naming_it(host, converge_run):
    rc, output, recaps, seconds = converge_run["converge"]
    assert rc is not None and rc != 0, output[-3000:]
    assert "agentops_agents[evil]: %s/AGENTS.md is a symlink (not followed)" % EVIL_HOME in " ".join(output.split())
    assert converge_run["links"][host_name(host)] == LAYOUTS["symlinks"]["AGENTS.md"]
