"""One agent's journal volume never makes root act against another agent.

`neighbour` (journal progress, on_hang: restart) prints one line, then `flood` prints 250,000 lines (its
unit's drop-in lifts journald's rate limit, see prepare.yml), all between two heartbeat runs: at least
200,000 of them after the neighbour's line, so one read of all agents capped at 200,000 lines, newest first,
cannot see it. At the second run the neighbour's line before the first run is older than its max_silence,
its line between the runs is not: the heartbeat of the second run still sees that line, so no silent
alert, no restart, the neighbour's recovery budget untouched; flood is read on its own, bounded, and the
run's CPU (the heartbeat and its journalctl children) is recorded.

How long 250,000 lines take depends on the machine's load (journald writes them), so the neighbour's
max_silence is set in its agents.d file (restored afterwards): an hour for the first run, and for the second
the age of its line between the runs plus a margin, which leaves its line before the first run past it.

Both hosts at once, in lockstep. The heartbeat timer is stopped meanwhile: the two runs are started by hand
with the unit's own command line, under a probe that reports their CPU time.
"""
import json
import os
import shlex
import uuid

import agentops_testlib
import pytest

from hostile_helpers import UNIT, agent, all_hosts, host_name, now, prop, scenario_agents, sh, wait_for, webhook, write

FLOOD, NEIGHBOUR = "flood", "neighbour"
FLOOD_LINES = 250000
HIDDEN_BY = 200000  # the line cap of the single read of all agents that this replaces
MODE = "/etc/agentops-test/%s.mode"
AGENT_FILE = "/etc/agentops/agents.d/%s.json"
# Seconds between the neighbour's line before the first run and its line between the runs, and the margin
# of max_silence for the second run on each side.
GAP, MARGIN = 25, 20
RECOVERY_STATE = "/var/lib/agentops/.recovery/%s.json"
HEARTBEAT_STATE = "/var/lib/agentops/.heartbeat/%s.json"
FIGURES = os.environ.get("AGENTOPS_HOSTILE_FIGURES", "/tmp/agentops-hostile-figures.jsonl")
# CPU seconds a heartbeat run may take while one agent floods (the single read took about 9 s).
CPU_BOUND = 3.0
PROBE = ("import resource, subprocess, sys, time\n"
         "t = time.monotonic()\n"
         "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode\n"
         "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
         "print('%.4f %.4f %d' % (r.ru_utime + r.ru_stime, time.monotonic() - t, rc))\n")


def max_silence():
    spec = agent(scenario_agents(), NEIGHBOUR)["heartbeat"]["max_silence"]
    assert spec.endswith("s"), spec
    return float(spec[:-1])


def set_max_silence(host, seconds):
    """The neighbour's max_silence as the heartbeat reads it (agents.d, root 0600); the previous content."""
    before = host.file(AGENT_FILE % NEIGHBOUR).content_string
    data = json.loads(before)
    data["heartbeat"]["max_silence"] = "%ds" % seconds
    write(host, AGENT_FILE % NEIGHBOUR, json.dumps(data), mode="0600")
    return before


def heartbeat_argv(host):
    """argv of agentops-heartbeat.service's ExecStart (``{ path=... ; argv[]=... ; ... }``)."""
    text = prop(host, "agentops-heartbeat.service", "ExecStart")
    return text.split("argv[]=", 1)[1].split(" ;", 1)[0].split()


def heartbeat_run(host):
    """One heartbeat run as the timer would start it: (CPU seconds of it and its children, seconds, exit status)."""
    out = host.check_output("python3 -c %s %s" % (shlex.quote(PROBE), " ".join(shlex.quote(w) for w in
                                                                            heartbeat_argv(host))))
    cpu, wall, rc = out.split()
    return float(cpu), float(wall), int(rc)


def newest(host, unit, grep=None):
    """(realtime, cursor, message) of the unit's newest line (containing ``grep``), or None."""
    out = host.check_output("journalctl -q -r -o json --output-fields=MESSAGE _SYSTEMD_UNIT=%s%s | head -n 1"
                            % (unit, " --grep %s" % shlex.quote(grep) if grep else ""))
    if not out.strip():
        return None
    entry = json.loads(out)
    return int(entry["__REALTIME_TIMESTAMP"]) / 1e6, entry["__CURSOR"], entry.get("MESSAGE")


def tail_cursor(host):
    return json.loads(host.check_output("journalctl -q -n 1 -o json --output-fields=MESSAGE"))["__CURSOR"]


def count_after(host, cursor, unit, text):
    """Lines of ``unit`` containing ``text`` from ``cursor`` on (``--cursor``: ``--after-cursor`` with a match
    skips the first matching entry when the cursor's own entry does not match)."""
    return int(host.check_output("journalctl -q --cursor=%s _SYSTEMD_UNIT=%s -o cat | grep -c -F %s || true"
                                 % (shlex.quote(cursor), unit, shlex.quote(text))))


def read_json(host, path):
    found = host.file(path)
    return json.loads(found.content_string) if found.exists else {}


def restarts_used(host):
    return len(read_json(host, RECOVERY_STATE % NEIGHBOUR).get("actions") or [])


def set_mode(host, name, mode):
    write(host, MODE % name, mode + "\n")


@pytest.fixture(scope="module")
def flood_run():
    hosts = all_hosts()
    gen = uuid.uuid4().hex[:8]
    out = dict((host_name(h), {}) for h in hosts)
    originals = {}
    try:
        for host in hosts:
            res = out[host_name(host)]
            sh(host, "systemctl stop agentops-heartbeat.timer")
            wait_for(lambda h=host: prop(h, "agentops-heartbeat.service", "ActiveState") != "activating", 120,
                     message="the running heartbeat finished")
            res["since"] = now(host)
            res["invocation"] = prop(host, UNIT % NEIGHBOUR, "InvocationID")
            res["nrestarts"] = prop(host, UNIT % NEIGHBOUR, "NRestarts")
            res["restarts_used"] = restarts_used(host)
            originals[host_name(host)] = set_max_silence(host, 3600)
            set_mode(host, NEIGHBOUR, "quiet")
        for host in hosts:
            res = out[host_name(host)]
            # the neighbour's last line before the first run: no newer one for 3 s (the quiet mode took effect)
            res["t0"] = wait_for(lambda h=host: (lambda n: n and now(h) - n[0] > 3 and n)(
                newest(h, UNIT % NEIGHBOUR)), 60, message="neighbour quiet")[0]
            res["first"] = heartbeat_run(host)
            res["cursor"] = tail_cursor(host)
        for host in hosts:
            wait_for(lambda h=host: now(h) >= out[host_name(h)]["t0"] + GAP, GAP + 30, interval=1.0,
                     message="the neighbour's last line %ds old" % GAP)
            set_mode(host, NEIGHBOUR, "once %s" % gen)
        for host in hosts:
            res = out[host_name(host)]
            res["line"] = wait_for(lambda h=host: newest(h, UNIT % NEIGHBOUR, "works %s" % gen), 30,
                                   message="the neighbour's line")
            set_mode(host, FLOOD, "flood %s %d" % (gen, FLOOD_LINES))
        for host in hosts:
            out[host_name(host)]["flood_done"] = wait_for(
                lambda h=host: newest(h, UNIT % FLOOD, "flood %s done" % gen), 900, interval=2.0,
                message="the flood's last line")
        for host in hosts:
            res = out[host_name(host)]
            res["max_silence"] = int(now(host) - res["line"][0]) + MARGIN
            set_max_silence(host, res["max_silence"])
            res["second_at"] = now(host)
            res["second"] = heartbeat_run(host)
        for host in hosts:
            res = out[host_name(host)]
            agentops_testlib.record_figure(FIGURES, host, "heartbeat CPU while one agent floods", res["second"][0],
                                           digits=3, wall=res["second"][1])
            text = "flood %s line" % gen
            res["flood_lines"] = count_after(host, res["cursor"], UNIT % FLOOD, text)
            res["after_line"] = count_after(host, res["line"][1], UNIT % FLOOD, text)
            res["alerts"] = [a for a in webhook(host, res["since"]) if a.get("agent") == NEIGHBOUR]
            res["invocation_after"] = prop(host, UNIT % NEIGHBOUR, "InvocationID")
            res["nrestarts_after"] = prop(host, UNIT % NEIGHBOUR, "NRestarts")
            res["restarts_used_after"] = restarts_used(host)
            res["state"] = dict((n, read_json(host, HEARTBEAT_STATE % n)) for n in (NEIGHBOUR, FLOOD))
    finally:
        for host in hosts:
            if host_name(host) in originals:
                write(host, AGENT_FILE % NEIGHBOUR, originals[host_name(host)], mode="0600")
            set_mode(host, NEIGHBOUR, "normal")
            set_mode(host, FLOOD, "normal")
            sh(host, "systemctl start agentops-heartbeat.timer")
    out["agent_files"] = originals
    return out


def test_the_flood_logged_its_lines_between_two_heartbeat_runs(host, flood_run):
    res = flood_run[host_name(host)]
    assert res["flood_lines"] >= FLOOD_LINES, res["flood_lines"]
    # at least HIDDEN_BY of them after the neighbour's line: a single read capped there, newest first, misses it
    assert res["after_line"] >= HIDDEN_BY + 1, res["after_line"]
    # the neighbour's line before the first run is past max_silence at the second run, its line between the
    # runs is not: a heartbeat that sees only the first calls it silent (and on_hang restarts it)
    assert res["second_at"] - res["t0"] > res["max_silence"] + 2, res
    assert res["second_at"] - res["line"][0] < res["max_silence"] - 2, res
    assert res["max_silence"] >= max_silence()


def test_no_false_silent_alert_no_restart_budget_untouched(host, flood_run):
    res = flood_run[host_name(host)]
    assert res["first"][2] == 0 and res["second"][2] == 0, (res["first"], res["second"])
    assert [(a["key"], a["severity"]) for a in res["alerts"]] == []
    assert res["invocation_after"] == res["invocation"] and res["nrestarts_after"] == res["nrestarts"]
    assert res["restarts_used_after"] == res["restarts_used"]
    assert host.check_output("agentops recover").count("recovery %s: on_hang restart, %d/2 restarts used"
                                                        % (NEIGHBOUR, res["restarts_used"])) == 1


def test_the_heartbeat_saw_the_neighbours_line_and_read_the_flood_alone(host, flood_run):
    res = flood_run[host_name(host)]
    neighbour, flood = res["state"][NEIGHBOUR], res["state"][FLOOD]
    assert abs(neighbour["journal_seen"] - res["line"][0]) < 0.001, (neighbour, res["line"])
    assert neighbour["journal_cursor"] == res["line"][1] and neighbour.get("journal_loud") is False
    assert abs(flood["journal_seen"] - res["flood_done"][0]) < 0.001 and flood["journal_loud"] is True
    assert res["second"][0] < CPU_BOUND, "the heartbeat run took %.2f CPU-s while flood logged %d lines" % (
        res["second"][0], res["flood_lines"])


def test_the_heartbeat_runs_on_its_timer_again(host, flood_run):
    assert prop(host, "agentops-heartbeat.timer", "ActiveState") == "active"
    before = prop(host, "agentops-heartbeat.service", "InactiveExitTimestampMonotonic")
    wait_for(lambda: prop(host, "agentops-heartbeat.service", "InactiveExitTimestampMonotonic") != before, 60,
             message="a heartbeat run started by the timer")
    assert host.file(AGENT_FILE % NEIGHBOUR).content_string == flood_run["agent_files"][host_name(host)]
