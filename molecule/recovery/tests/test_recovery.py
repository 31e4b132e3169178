"""Scenario recovery: the heartbeat restarts a hung agent, retries a unit latched at its start limit, gives up
once its budget is spent and is re-armed by `agentops recover --reset`, on a real host with systemd.

The tests run in file order on each image (one host after the other) and build on each other: `hang` stays
hung from test_10 to test_40, so its second restart and its third hang follow by themselves; `latch` is driven
into its start limit in test_10 and checked in test_50 (its cool-down runs meanwhile). They leave every agent
healthy. Measured latencies are printed (``FIGURE {...}``, shown in the PASSES section) and appended to
AGENTOPS_RECOVERY_FIGURES.
"""
import json
import os

import agentops_testlib
import testinfra.utils.ansible_runner

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("all")

HOOK = 18091
TICK = 3.0
MAX_SILENCE = 8.0
INTERVAL = 3.0
RETRY_AFTER = 15.0
DEADLINE = MAX_SILENCE + INTERVAL + 15.0          # restart at the latest this long after the last progress
HANG = "agentops-hang.service"
LATCH = "agentops-latch.service"
WORKSTATE = "/var/lib/agentops/hang/WORKSTATE.md"
FIGURES = os.environ.get("AGENTOPS_RECOVERY_FIGURES", "/tmp/agentops-recovery-figures.jsonl")
HERE = os.path.dirname(os.path.abspath(__file__))
# Facts one test hands to a later one, per host.
SEEN = {}

now = agentops_testlib.now


def figure(host, name, seconds):
    agentops_testlib.record_figure(FIGURES, host, name, seconds)


def alerts(host, since=0.0, key=None, severity=None):
    """The webhook bodies (plus _time) the fake receiver got since ``since``."""
    found = []
    for record in agentops_testlib.endpoint_records(host, HOOK, since):
        if record["path"] != "/hook":
            continue
        body = json.loads(record["body"])
        body["_time"] = record["time"]
        if (key is None or body["key"] == key) and (severity is None or body["severity"] == severity):
            found.append(body)
    return found


def set_mode(host, agent, mode):
    host.run_expect([0], "printf '%s\\n' > /etc/agentops-test/%s.mode" % (mode, agent))


def props(host, unit, *names):
    out = host.check_output("systemctl show -p %s %s" % (",".join(names), unit))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def prop(host, unit, name):
    return props(host, unit, name).get(name, "")


def epoch_of(host, unit, name):
    """Container epoch of a monotonic timestamp property of the unit (systemd's own record, no polling lag)."""
    out = host.check_output("cat /proc/uptime; date +%%s.%%N; systemctl show -p %s --value %s" % (name, unit))
    uptime, epoch, usec = out.split()[0], out.split()[2], out.split()[3]
    return float(epoch) - (float(uptime) - int(usec) / 1e6)


def started_at(host, unit):
    """Container epoch of the unit's current activation."""
    return epoch_of(host, unit, "ActiveEnterTimestampMonotonic")


def last_line_time(host, invocation, words):
    """The container time of the newest journal line of ``invocation`` that contains ``words``."""
    out = host.check_output("journalctl -q -o json _SYSTEMD_INVOCATION_ID=%s" % invocation)
    stamps = [int(e["__REALTIME_TIMESTAMP"]) / 1e6 for e in map(json.loads, out.splitlines())
              if words in str(e.get("MESSAGE"))]
    assert stamps, "no %r line of invocation %s in the journal" % (words, invocation)
    return max(stamps)


def heartbeat_runs(host, agent, count, wait_for):
    """Wait until the heartbeat checked ``agent`` ``count`` more times."""
    path = "/var/lib/agentops/.heartbeat/%s.json" % agent
    start = now(host)
    seen = set()

    def more():
        stamp = json.loads(host.file(path).content_string).get("last_check", 0) if host.file(path).exists else 0
        if stamp > start:
            seen.add(stamp)
        return len(seen) >= count
    # a generous bound: on a loaded machine one run can take several ticks
    wait_for(more, count * (TICK + 15) + 20, interval=0.5, message="%d heartbeat runs for %s" % (count, agent))


def new_invocation(host, wait_for, old, timeout, message):
    """Wait for a new activation of the hung agent: (its start, its invocation id)."""
    wait_for(lambda: prop(host, HANG, "InvocationID") not in ("", old), timeout, interval=0.25, message=message)
    return started_at(host, HANG), prop(host, HANG, "InvocationID")


def recovery_view(host, agent):
    rows = json.loads(host.check_output("agentops status --json"))
    return [row for row in rows if row["agent"] == agent][0]["recovery"]


def test_10_hung_agent_is_restarted_in_time_with_one_alert_and_workstate_untouched(host, wait_for):
    seen = SEEN.setdefault(host.backend.host, {})
    host.run_expect([0], "agentops recover --reset hang && agentops recover --reset latch")   # re-runs of verify
    set_mode(host, "hang", "ok")
    # the latched unit's cool-down runs while the hung agent is tested (checked in test_50)
    set_mode(host, "latch", "crash")
    wait_for(lambda: (lambda p: p.get("ActiveState") == "failed" and p.get("NRestarts") not in ("", "0"))(
        props(host, LATCH, "ActiveState", "NRestarts")), 90, interval=0.25,
        message="the crash-looping unit to latch at its start limit")
    seen["latched"] = epoch_of(host, LATCH, "InactiveEnterTimestampMonotonic")   # when it entered failed
    seen["start"] = seen["latched"] - 1.0
    set_mode(host, "latch", "ok")                                   # the retried start will work
    wait_for(lambda: prop(host, HANG, "ActiveState") == "active", 30, message="hang active")
    heartbeat_runs(host, "hang", 2, wait_for)
    host.run_expect([0], "printf '%s\\n' '- checkpoint: step 3 of 7, next: send the digest' >> " + WORKSTATE)
    checksum = "sha256sum %s; stat -c '%%s %%Y %%i %%U' %s" % (WORKSTATE, WORKSTATE)
    before = host.check_output(checksum)
    old = prop(host, HANG, "InvocationID")
    set_mode(host, "hang", "hang")
    restarted, seen["invocation"] = new_invocation(host, wait_for, old, DEADLINE + 10, "the hung agent's restart")
    seen["session"] = restarted          # the agent stays hung: the next restart may follow while this test runs
    latency = restarted - last_line_time(host, old, "working")
    figure(host, "hang restart latency after last progress", latency)
    assert MAX_SILENCE <= latency <= DEADLINE, latency
    notice = wait_for(lambda: alerts(host, seen["start"], key="hang/recovery"), 30, interval=0.5,
                      message="the restart alert")
    assert notice[0]["severity"] == "info", notice
    assert "restarted agentops-hang.service" in notice[0]["title"] and "1 of 2" in notice[0]["title"], notice
    assert host.check_output(checksum) == before
    journal = host.check_output("journalctl -q -u agentops-heartbeat.service --since @%d" % int(seen["start"]))
    assert "recovery hang: restarted agentops-hang.service" in journal
    view = recovery_view(host, "hang")
    assert view["restarts_used"] >= 1 and view["max_restarts"] == 2 and view["last_action"]["kind"] == "restart"


def test_20_still_hung_after_the_restart_it_is_restarted_again(host, wait_for):
    seen = SEEN[host.backend.host]
    begun = seen["session"]
    restarted, seen["invocation"] = new_invocation(host, wait_for, seen["invocation"], DEADLINE + 10,
                                                   "the second restart")
    seen["session"] = restarted
    figure(host, "second hang restart after the session start", restarted - begun)
    assert MAX_SILENCE <= restarted - begun <= DEADLINE, restarted - begun
    notices = wait_for(lambda: len(alerts(host, seen["start"], key="hang/recovery")) >= 2 and alerts(
        host, seen["start"], key="hang/recovery"), 30, interval=0.5, message="the second restart alert")
    assert len(notices) == 2 and "2 of 2" in notices[1]["title"], notices


def test_30_the_third_hang_gives_up_once_and_is_not_restarted(host, wait_for):
    seen = SEEN[host.backend.host]
    begun = seen["session"]
    giving_up = wait_for(lambda: alerts(host, seen["start"], key="hang/giving-up"), DEADLINE + 10, interval=0.5,
                         message="the giving-up alert")
    figure(host, "giving-up alert after the session start", giving_up[0]["_time"] - begun)
    assert giving_up[0]["severity"] == "critical" and "giving up" in giving_up[0]["title"]
    assert "agentops recover --reset hang" in giving_up[0]["title"]
    heartbeat_runs(host, "hang", 3, wait_for)                       # still hung: no restart, no second alert
    assert prop(host, HANG, "InvocationID") == seen["invocation"]
    assert len(alerts(host, seen["start"], key="hang/giving-up")) == 1
    assert len(alerts(host, seen["start"], key="hang/recovery")) == 2
    view = recovery_view(host, "hang")
    assert view["giving_up"] and view["restarts_used"] == 2
    text = host.check_output("agentops status")
    assert "recovery hang: on_hang restart, 2/2 restarts used in 3600s, GIVING UP" in text, text
    assert "recovery hang: giving up" in host.check_output(
        "journalctl -q -u agentops-heartbeat.service --since @%d" % int(seen["start"]))


def test_40_recover_reset_rearms_the_breaker(host, wait_for):
    seen = SEEN[host.backend.host]
    reset_at = now(host)
    out = host.check_output("agentops recover --reset hang")
    assert "reset by an operator" in out and "was giving up" in out
    restarted, _ = new_invocation(host, wait_for, seen["invocation"], 2 * TICK + 10, "the restart after the reset")
    figure(host, "restart after recover --reset", restarted - reset_at)
    resolved = wait_for(lambda: alerts(host, reset_at, key="hang/giving-up", severity="resolved"), 30, interval=0.5,
                        message="the giving-up alert resolved")
    assert len(resolved) == 1
    assert len(wait_for(lambda: alerts(host, reset_at, key="hang/recovery"), 30, interval=0.5,
                        message="the restart alert after the reset")) == 1
    set_mode(host, "hang", "ok")
    unknown = host.run("agentops recover --reset nosuchagent")
    assert unknown.rc == 1 and "unknown agent 'nosuchagent'" in unknown.stderr


def test_50_unit_latched_at_the_start_limit_ran_again_after_the_cool_down(host, wait_for):
    seen = SEEN[host.backend.host]
    wait_for(lambda: prop(host, LATCH, "ActiveState") == "active", RETRY_AFTER + 2 * TICK + 20, interval=0.5,
             message="the latched unit to be retried")
    latency = started_at(host, LATCH) - seen["latched"]
    figure(host, "start-limit retry after latching", latency)
    assert RETRY_AFTER - 1.0 <= latency <= RETRY_AFTER + 2 * TICK + 10, latency
    notice = alerts(host, seen["start"], key="latch/recovery")
    assert len(notice) == 1 and notice[0]["severity"] == "info", notice
    assert "reset and started agentops-latch.service" in notice[0]["title"]
    journal = host.check_output("journalctl -q -u agentops-heartbeat.service --since @%d" % int(seen["start"]))
    assert "recovery latch: reset and started agentops-latch.service" in journal
    assert recovery_view(host, "latch")["last_action"]["kind"] == "start-limit-retry"


def etc_snapshot(host):
    return host.check_output("find /etc/agentops /etc/systemd/system -xdev -type f -exec sha256sum {} + | sort")


BAD_AGENTS = [
    {"name": "reboot", "command": "/bin/true", "heartbeat": {"max_silence": "1min"}, "recovery": {"on_hang": "reboot"}},
    {"name": "negative", "command": "/bin/true", "recovery": {"max_restarts": -1}},
    {"name": "window", "command": "/bin/true", "recovery": {"window": "soon"}},
    {"name": "unknown", "command": "/bin/true", "recovery": {"retries": 3}},
]
BAD_MESSAGES = [
    "agentops_agents[reboot].recovery.on_hang: 'reboot' is not one of alert, restart",
    "agentops_agents[negative].recovery.max_restarts: -1 must be a whole number from 0 to 1000",
    "agentops_agents[window].recovery.window: 'soon' is not a systemd time span",
    "agentops_agents[unknown].recovery.retries: unknown key",
]


def test_60_bad_recovery_input_is_rejected_before_any_change(host, run_playbook):
    agentops_testlib.skip_unless_case_host(host, testinfra_hosts, 0)
    before = etc_snapshot(host)
    result = run_playbook(host, os.path.join(HERE, "..", "converge.yml"),
                          extra_vars={"agentops_agents": BAD_AGENTS}, expect_fail=True)
    text = " ".join(result.output.split())
    for message in BAD_MESSAGES:
        assert message in text, (message, result.output[-3000:])
    assert result.recap.get("changed") == 0 and result.recap.get("failed") == 1, result.recap
    assert etc_snapshot(host) == before
    assert not host.file("/etc/agentops/agents.d/reboot.json").exists
