"""Scheduled one-shot agents in the heartbeat: the missed-run decision, liveness between runs, metrics.

Unit and timer state come from the stand-in ``systemctl`` of test_heartbeat (the controller has no
systemd as PID 1); alerts reach a real HTTP server on 127.0.0.1. The Molecule scenario ``scheduled``
runs the same code against real timers.
"""
import calendar
import json
import os
import time

from prometheus_client.parser import text_string_to_metric_families

from agentops_host import heartbeat
from agentops_host import schedule

from test_alert_helpers import make_args, recorder, webhook_channel, write_config  # noqa: F401  (fixture)
from test_heartbeat import add_agent, run_heartbeat, units  # noqa: F401  (fixture)

AGENT = {"name": "nightly", "unit": "agentops-nightly.service", "timer": "agentops-nightly.timer",
         "schedule": "*-*-* 03:00:00", "schedule_grace": 60}


def stamp(epoch):
    """A timestamp the way systemctl show prints it in UTC."""
    return time.strftime("%a %Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def timer(active="active", file_state="enabled", last=None, following=None):
    return {"Id": AGENT["timer"], "LoadState": "loaded", "ActiveState": active, "UnitFileState": file_state,
            "LastTriggerUSec": stamp(last) if last else "", "NextElapseUSecRealtime": stamp(following) if following else ""}


def test_parse_timestamp():
    assert schedule.parse_timestamp("Thu 2026-11-26 22:52:40 UTC") == calendar.timegm((2026, 11, 26, 22, 52, 40))
    assert schedule.parse_timestamp("2026-11-26 22:52:40 UTC") == calendar.timegm((2026, 11, 26, 22, 52, 40))
    local = schedule.parse_timestamp("Thu 2026-11-26 22:52:40 CET")
    assert local == time.mktime((2026, 11, 26, 22, 52, 40, 0, 0, -1))
    for empty in ("", "n/a", None, "garbage words here"):
        assert schedule.parse_timestamp(empty) is None


def test_announced_run_in_the_future_is_not_missed():
    now = time.time()
    reason, record = schedule.decide(AGENT, timer(last=now - 3600, following=now + 600), {"ActiveState": "inactive"},
                                     {}, now)
    assert reason is None
    assert record["expected"] == int(now + 600) and record["last_trigger"] == int(now - 3600)


def test_run_not_started_within_grace_is_missed_and_a_trigger_clears_it():
    now = time.time()
    _reason, record = schedule.decide(AGENT, timer(last=now - 3600, following=now - 30), {"ActiveState": "inactive"},
                                      {}, now - 40)
    # due 30 s ago, grace 60 s: not yet
    reason, record = schedule.decide(AGENT, timer(last=now - 3600), {"ActiveState": "inactive"}, record, now)
    assert reason is None
    reason, record = schedule.decide(AGENT, timer(last=now - 3600), {"ActiveState": "inactive"}, record, now + 45)
    assert reason and "has not started" in reason and "schedule_grace 60s" in reason
    # a run in progress is not missed
    reason, _ = schedule.decide(AGENT, timer(last=now - 3600), {"ActiveState": "activating"}, record, now + 45)
    assert reason is None
    # the timer fired (LastTriggerUSec at the due time): the next announced elapse is expected
    reason, record = schedule.decide(AGENT, timer(last=now - 29, following=now + 3600), {"ActiveState": "inactive"},
                                     record, now + 50)
    assert reason is None and record["expected"] == int(now + 3600)


def test_stopped_or_disabled_timer_is_missed_at_once_unless_the_agent_is_disabled():
    now = time.time()
    reason, _ = schedule.decide(AGENT, timer(active="inactive", file_state="disabled"), {"ActiveState": "inactive"},
                                {}, now)
    assert reason and "agentops-nightly.timer is inactive and disabled" in reason
    reason, _ = schedule.decide(AGENT, timer(file_state="disabled", following=now + 60), {}, {}, now)
    assert reason and "disabled" in reason
    reason, _ = schedule.decide(AGENT, {"LoadState": "not-found"}, {}, {}, now)
    assert reason and "missing" in reason
    reason, _ = schedule.decide(AGENT, timer(active="inactive", file_state="disabled"), {}, {}, now, expected=False)
    assert reason is None


def test_view_for_status():
    now = time.time()
    item = schedule.view(AGENT, {"ActiveState": "failed", "Result": "timeout"}, timer(last=now - 60, following=now + 60))
    assert item["result"] == "timeout" and item["timer_state"] == "active/enabled"
    assert item["last_run"] and item["next_run"] and item["expression"] == "*-*-* 03:00:00"
    assert schedule.view(AGENT, {"ActiveState": "activating"}, timer())["result"] == "running"
    assert schedule.view(AGENT, {"ActiveState": "inactive", "Result": "success"}, timer())["result"] == "never ran"
    line = schedule.status_line({"agent": "nightly", "schedule": item})
    assert line.startswith("nightly: schedule *-*-* 03:00:00, last run ") and "(timeout)" in line
    running = schedule.view(AGENT, {"ActiveState": "activating"}, timer(last=now - 1))
    assert "next run after this run" in schedule.status_line({"agent": "nightly", "schedule": running})


# ------------------------------------------------------------------ heartbeat end to end
def add_scheduled(args, name, **fields):
    agent = add_agent(args, name, max_silence="30s")
    agent.update({"schedule": "*-*-* *:*:0/20", "timer": "agentops-%s.timer" % name, "schedule_grace": 30}, **fields)
    with open(os.path.join(args.config_dir, "agents.d", name + ".json"), "w", encoding="utf-8") as handle:
        json.dump(agent, handle)
    return agent


def write_timer(tmp_path, name, **fields):
    props = timer(**fields)
    props["Id"] = "agentops-%s.timer" % name
    (tmp_path / "units" / (props["Id"] + ".props")).write_text("".join("%s=%s\n" % kv for kv in props.items()))


def metrics_of(path):
    out = {}
    for family in text_string_to_metric_families(open(path).read()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_scheduled_agent_between_runs_is_up_not_down_and_a_failed_run_alerts(tmp_path, recorder, units):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    with open(os.path.join(args.config_dir, "heartbeat.json"), "w") as handle:
        json.dump({"metrics_textfile_dir": str(textfile), "deadman": [], "agents": {}}, handle)
    agent = add_scheduled(args, "nightly")
    now = time.time()
    units(agent["unit"], active="inactive", sub="dead", result="success")
    write_timer(tmp_path, "nightly", last=now - 5, following=now + 15)
    assert run_heartbeat(args) == 0
    assert recorder.requests == []                                      # between runs: neither down nor silent
    found = metrics_of(str(textfile / "agentops.prom"))
    assert found[("agentops_agent_up", (("agent", "nightly"),))] == 1
    units(agent["unit"], active="failed", sub="failed", result="timeout")   # killed at runtime_max
    assert run_heartbeat(args) == 0
    assert metrics_of(str(textfile / "agentops.prom"))[("agentops_agent_up", (("agent", "nightly"),))] == 0
    bodies = recorder.bodies()
    assert [(b["key"], b["severity"]) for b in bodies] == [("nightly/down", "critical")]
    assert "Result=timeout" in bodies[0]["title"]
    units(agent["unit"], active="inactive", sub="dead", result="success")   # the next run succeeded
    assert run_heartbeat(args) == 0
    assert [(b["key"], b["severity"]) for b in recorder.bodies()][1:] == [("nightly/down", "resolved")]


def test_activating_run_is_checked_for_progress(tmp_path, recorder, units):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = add_scheduled(args, "hangs")
    units(agent["unit"], active="activating", sub="start", result="success")
    props = (tmp_path / "units" / (agent["unit"] + ".props"))
    props.write_text(props.read_text() + "InactiveExitTimestampMonotonic=%d\n" % int((time.monotonic() - 600) * 1e6))
    write_timer(tmp_path, "hangs", last=time.time() - 600)
    assert run_heartbeat(args) == 0                  # no heartbeat file, run started 600 s ago, max_silence 30 s
    assert [(b["key"], b["severity"]) for b in recorder.bodies()] == [("hangs/silent", "critical")]


def test_disabled_timer_alerts_missed_once_and_a_run_resolves_it(tmp_path, recorder, units):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = add_scheduled(args, "skipped")
    now = time.time()
    units(agent["unit"], active="inactive", sub="dead", result="success")
    write_timer(tmp_path, "skipped", last=now - 10, following=now + 10)
    assert run_heartbeat(args) == 0
    write_timer(tmp_path, "skipped", active="inactive", file_state="disabled")    # systemctl disable --now
    assert run_heartbeat(args) == 0
    assert run_heartbeat(args) == 0                  # de-duplicated
    bodies = recorder.bodies()
    assert [(b["key"], b["severity"]) for b in bodies] == [("skipped/missed", "critical")]
    assert "agentops-skipped.timer is inactive and disabled" in bodies[0]["title"]
    write_timer(tmp_path, "skipped", last=time.time(), following=time.time() + 20)  # re-enabled, it ran
    assert run_heartbeat(args) == 0
    assert [(b["key"], b["severity"]) for b in recorder.bodies()][1:] == [("skipped/missed", "resolved")]
    saved = json.load(open(heartbeat.state_path(args, "skipped")))
    assert "missed_since" not in saved["schedule"]


def test_status_shows_last_run_result_and_next_run(tmp_path, recorder, units, capsys):
    from agentops_host import status  # pylint: disable=import-outside-toplevel
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = add_scheduled(args, "report")
    now = time.time()
    units(agent["unit"], active="failed", sub="failed", result="timeout")
    write_timer(tmp_path, "report", last=now - 5, following=now + 15)
    assert run_heartbeat(args) == 0
    args.json = True
    assert status._cmd_status(args) == 0  # pylint: disable=protected-access
    row = json.loads(capsys.readouterr().out)[0]
    item = row["schedule"]
    assert item["expression"] == "*-*-* *:*:0/20" and item["result"] == "timeout"
    assert item["timer"] == "agentops-report.timer" and item["timer_state"] == "active/enabled"
    assert item["last_run"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(now - 5)))
    assert item["next_run"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(now + 15)))
    args.json = False
    assert status._cmd_status(args) == 0  # pylint: disable=protected-access
    text = capsys.readouterr().out
    assert "Scheduled agents:\n  report: schedule *-*-* *:*:0/20, last run " in text and "(timeout)" in text
