"""Scenario scheduled: timer-started one-shot agents on a real host (both images).

The tests run in file order. Alerts reach the shared fake endpoint (webhook, 127.0.0.1:18091), which logs
each request; the heartbeat ticks every 3 s and writes /var/lib/agentops-test-metrics/agentops.prom.
"""
import json
import os
import re

import agentops_testlib
import pytest
import testinfra.utils.ansible_runner
from prometheus_client.parser import text_string_to_metric_families

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("all")

HOOK = 18091
TICK = 3.0
PERIOD = 20.0
GRACE = 10.0
PROM = "/var/lib/agentops-test-metrics/agentops.prom"
UNITS = "/etc/systemd/system"

FIGURES = os.environ.get("AGENTOPS_SCHEDULED_FIGURES", "/tmp/agentops-scheduled-figures.jsonl")

now = agentops_testlib.now


def figure(host, name, seconds):
    """Record a measured latency (printed, and appended to FIGURES on the controller)."""
    agentops_testlib.record_figure(FIGURES, host, name, seconds)


def alerts(host, since=0.0):
    """The alerts (key, severity, title, time) the webhook received since ``since``."""
    found = []
    for record in agentops_testlib.endpoint_records(host, HOOK, since):
        if record["path"] != "/hook":
            continue
        body = json.loads(record["body"])
        found.append((body.get("key"), body.get("severity"), body.get("title") or "", record["time"]))
    return found


def show(host, unit, *props):
    out = host.check_output("systemctl show -p %s -- %s" % (",".join(props), unit))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def metrics(host):
    found = {}
    for family in text_string_to_metric_families(host.file(PROM).content_string):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def up(host, agent):
    return metrics(host).get(("agentops_agent_up", (("agent", agent),)))


def test_10_units_timer_enabled_service_static(host):
    service = host.file("%s/agentops-tick.service" % UNITS).content_string
    timer = host.file("%s/agentops-tick.timer" % UNITS).content_string
    assert "Type=oneshot\n" in service and "Restart=no\n" in service and "TimeoutStartSec=1min\n" in service
    assert "RuntimeMaxSec" not in service and "[Install]" not in service
    assert "TimeoutStartSec=5s\n" in host.file("%s/agentops-slow.service" % UNITS).content_string
    assert timer.startswith("# Managed by Ansible (agentops.fleet.agents)")
    assert "OnCalendar=*-*-* *:*:0/20\n" in timer and "Persistent=true\n" in timer
    assert host.check_output("systemctl is-enabled agentops-tick.timer") == "enabled"
    assert host.run("systemctl is-enabled agentops-tick.service").stdout.strip() == "static"  # only the timer


def test_20_runs_on_its_timer_and_goes_back_to_inactive(host, wait_for):
    def two_runs():
        log = host.file("/var/lib/agentops/tick/runs.log")
        return log.exists and len(set(log.content_string.split())) >= 2
    wait_for(two_runs, 2 * PERIOD + 15, message="two scheduled runs of tick")
    journal = host.check_output("journalctl -q -u agentops-tick.service --no-pager -o cat")
    assert "scheduled run of tick started" in journal and "scheduled run of tick done" in journal
    state = wait_for(lambda: (lambda p: p if p["ActiveState"] == "inactive" else None)(
        show(host, "agentops-tick.service", "ActiveState", "Result")), 15, message="tick back to inactive")
    assert state["Result"] == "success"


def test_30_up_between_successful_runs(host, wait_for):
    def inactive_and_up():
        if show(host, "agentops-tick.service", "ActiveState")["ActiveState"] != "inactive":
            return None
        value = up(host, "tick")
        again = show(host, "agentops-tick.service", "ActiveState")["ActiveState"]
        return value == 1 and again == "inactive"
    wait_for(inactive_and_up, 30, message="agentops_agent_up{agent=tick} 1 while tick is inactive between runs")


def test_40_run_past_runtime_max_is_killed_and_alerted(host, wait_for):
    state = wait_for(lambda: (lambda p: p if p["Result"] == "timeout" else None)(
        show(host, "agentops-slow.service", "ActiveState", "Result")), PERIOD + 15,
        message="slow killed at runtime_max (Result=timeout)")
    assert state["Result"] == "timeout"
    journal = host.check_output("journalctl -q -u agentops-slow.service --no-pager")
    assert "timed out" in journal and "scheduled run of slow done" not in journal
    found = wait_for(lambda: [a for a in alerts(host) if a[0] == "slow/down" and a[1] == "critical"], 20,
                     message="the slow/down alert")
    assert "agentops-slow.service failed (Result=timeout" in found[0][2], found
    wait_for(lambda: up(host, "slow") == 0
             and show(host, "agentops-slow.service", "ActiveState")["ActiveState"] == "failed", 30,
             message="agentops_agent_up{agent=slow} 0 after the killed run")


def test_50_disabled_timer_is_reported_missed(host, wait_for):
    wait_for(lambda: host.file("/var/lib/agentops/skipped/runs.log").exists, PERIOD + 15, message="a run of skipped")
    assert not [a for a in alerts(host) if a[0] == "skipped/missed"]
    started = now(host)
    host.run_expect([0], "systemctl disable --now agentops-skipped.timer")
    found = wait_for(lambda: [a for a in alerts(host, started) if a[0] == "skipped/missed"], GRACE + TICK + 20,
                     message="the skipped/missed alert")
    latency = found[0][3] - started
    figure(host, "missed run reported after the timer was disabled (schedule_grace 10s, tick 3s)", latency)
    assert latency <= GRACE + TICK + 5, latency
    # `disable --now` disables before it stops: a heartbeat run in between sees the timer still active
    assert found[0][1] == "critical" and re.search(r"agentops-skipped\.timer is (in)?active and disabled", found[0][2])
    assert len(found) == 1                       # one alert, not one per tick
    status = json.loads(host.check_output("/usr/local/bin/agentops status --json"))
    row = [r for r in status if r["agent"] == "skipped"][0]
    assert row["schedule"]["timer_state"] == "inactive/disabled" and row["schedule"]["next_run"] is None
    assert "skipped/missed" in [a["key"] for a in row["open_alerts"]]
    host.run_expect([0], "systemctl enable --now agentops-skipped.timer")
    resolved = wait_for(lambda: [a for a in alerts(host, started) if a[0] == "skipped/missed" and a[1] == "resolved"],
                        PERIOD + TICK + 20, message="skipped/missed resolved by the next run")
    assert "runs on its schedule again" in resolved[0][2]


def test_60_status_shows_last_run_result_and_next_run(host):
    rows = dict((r["agent"], r) for r in json.loads(host.check_output("/usr/local/bin/agentops status --json")))
    tick = rows["tick"]["schedule"]
    assert tick["expression"] == "*-*-* *:*:0/20" and tick["timer_state"] == "active/enabled"
    assert tick["last_run"] and tick["result"] in ("success", "running")
    assert tick["next_run"] or tick["result"] == "running"      # systemd announces the next elapse after a run
    assert rows["slow"]["schedule"]["result"] in ("timeout", "running")
    text = host.check_output("/usr/local/bin/agentops status")
    assert "Scheduled agents:" in text and "tick: schedule *-*-* *:*:0/20, last run " in text


def _fingerprint(host):
    return host.check_output("sha256sum %s/agentops-tick.service %s/agentops-tick.timer "
                             "/etc/agentops/agents.d/tick.json" % (UNITS, UNITS))


def _agents(schedule):
    return {"agentops_agents": [{"name": "tick", "command": "/usr/local/sbin/agentops-sched-agent tick",
                                 "schedule": schedule}]}


BAD_SCHEDULES = [
    ("0 3 * * *", "agentops_agents[tick].schedule: '0 3 * * *' looks like a cron expression"),
    ("*-*-* 03:00:00 Mars/Olympus", "agentops_agents[tick].schedule: '*-*-* 03:00:00 Mars/Olympus' is refused by "
                                    "systemd on"),
]


@pytest.mark.parametrize("schedule, message", BAD_SCHEDULES, ids=["controller", "systemd-analyze"])
def test_70_bad_schedule_is_rejected_before_any_change(host, run_playbook, schedule, message):
    agentops_testlib.skip_unless_case_host(host, testinfra_hosts, BAD_SCHEDULES.index((schedule, message)))
    before = _fingerprint(host)
    result = run_playbook(host, "validate.yml", extra_vars=_agents(schedule), expect_fail=True)
    assert message in result.output, result.output[-3000:]
    changed = [line for line in result.output.splitlines() if line.startswith("changed:")]
    assert result.recap["changed"] == 0 and result.recap["failed"] == 1, (changed, result.output[-3000:])
    assert _fingerprint(host) == before
