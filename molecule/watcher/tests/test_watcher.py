"""Scenario watcher: the dead man's switch pings and the Prometheus metrics, on a real host.

The ping receiver (127.0.0.1:18092, the shared fake endpoint) logs every request with its path,
query, status and verdict (it answers like healthchecks, Uptime Kuma and Cronitor do); node_exporter
(Debian's package, textfile collector only) serves agentops.prom on 127.0.0.1:9100 and the tests
scrape it and parse it with prometheus_client. The tests run in file order and leave the agents
healthy and the timer running.
"""
import json
import os
import time
import urllib.parse

import agentops_testlib
import testinfra.utils.ansible_runner
from prometheus_client.parser import text_string_to_metric_families

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("all")

PINGS, HOOK = 18092, 18091
TICK = 3.0
CANARY = "CANARY-deadman-token"
HC_HOST = "/hc-host-" + CANARY
KUMA = "/api/push/kuma-" + CANARY
CRON = "/p/cronitor-%s/host" % CANARY
PLAIN = "/plain/" + CANARY
HC_UP = "/hc-agent-up-" + CANARY
HC_HUNG = "/hc-agent-hung-" + CANARY
STATE = "/var/lib/agentops/.heartbeat/deadman.json"


now = agentops_testlib.now


def pings(host, since=0.0):
    """[(time, path, query dict, status, verdict)] the ping receiver logged since ``since``."""
    return [(rec["time"], rec["path"], dict(urllib.parse.parse_qsl(rec["query"], keep_blank_values=True)),
             rec["status"], rec["verdict"]) for rec in agentops_testlib.endpoint_records(host, PINGS, since)]


def seen(host, since, path, **query):
    """The first ping to ``path`` (with these query values) since ``since``, or None."""
    for item in pings(host, since):
        if item[1] == path and all(item[2].get(k) == v for k, v in query.items()):
            return item
    return None


def set_mode(host, agent, mode):
    host.run_expect([0], "printf '%s\\n' > /etc/agentops-test/%s.mode" % (mode, agent))


def scrape(host):
    """{(name, labels tuple): value} of node_exporter's /metrics (agentops_* only)."""
    text = host.check_output("python3 -c \"import urllib.request; print(urllib.request.urlopen("
                             "'http://127.0.0.1:9100/metrics', timeout=5).read().decode())\"")
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("agentops_"):
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(found, name, **labels):
    return found.get((name, tuple(sorted(labels.items()))))


def test_10_pings_arrive_with_the_right_suffix_and_status(host, wait_for):
    """Every type gets its URL: healthchecks /start and the plain URL, Uptime Kuma status=up, Cronitor
    state=run and state=complete, plain http; each agent's own target its success; the receiver accepts
    each as the real service would. A run whose pings are due (state reset) pings within a tick or two."""
    def all_arrived(since):
        return all((seen(host, since, HC_HOST + "/start"), seen(host, since, HC_HOST),
                    seen(host, since, KUMA, status="up", msg="OK", ping=""), seen(host, since, CRON, state="run"),
                    seen(host, since, CRON, state="complete"), seen(host, since, PLAIN), seen(host, since, HC_UP),
                    seen(host, since, HC_HUNG)))

    wait_for(lambda: all_arrived(0.0), 60, interval=1.0, message="the first pings of every target")
    for _time, path, _query, status, verdict in pings(host):
        assert status == 200 and verdict in ("ok", None), (path, status, verdict)
    assert not seen(host, 0.0, HC_HOST + "/fail") and not seen(host, 0.0, CRON, state="fail")
    # every run pings once its pings are due: make them due, the next tick sends them all again
    start = now(host)
    host.run_expect([0], "rm -f %s" % STATE)
    wait_for(lambda: all_arrived(start), 4 * TICK + 10, interval=1.0, message="the pings of the next run")


def test_20_metrics_and_switches_for_up_hung_and_failed(host, wait_for):
    """node_exporter serves every metric with the right values for an up, a hung and a failed agent; the
    hung agent's own switch and the host's switch fail at once, the healthy agent's does not."""
    start = now(host)
    set_mode(host, "hung", "hang")
    set_mode(host, "failed", "crash")

    def settled():
        found = scrape(host)
        age = metric(found, "agentops_agent_progress_age_seconds", agent="hung")
        if (metric(found, "agentops_agent_up", agent="failed") == 0 and age is not None and age > 8
                and (metric(found, "agentops_open_alerts", severity="critical") or 0) >= 2):
            return found
        return None

    found = wait_for(settled, 60, interval=1.0, message="the hung and failed agents in the scraped metrics")
    container_now = now(host)
    assert metric(found, "agentops_agent_up", agent="up") == 1
    assert metric(found, "agentops_agent_up", agent="hung") == 1          # alive, but not progressing
    assert metric(found, "agentops_agent_progress_age_seconds", agent="up") < 8
    assert metric(found, "agentops_agent_restarts_total", agent="failed") >= 1
    assert metric(found, "agentops_agent_restarts_total", agent="up") == 0
    assert metric(found, "agentops_agent_auth_ok", agent="up", check="api") == 1
    due = metric(found, "agentops_agent_rotation_due_timestamp_seconds", agent="up", credential="api_token")
    assert abs(due - (container_now + 30 * 86400)) < 2 * 86400, due
    assert metric(found, "agentops_open_alerts", severity="warning") is not None
    assert container_now - 3 * TICK - 5 < metric(found, "agentops_heartbeat_last_run_timestamp_seconds") <= container_now
    assert 0 < metric(found, "agentops_heartbeat_duration_seconds") < 10
    for name in ("agentops_agent_up", "agentops_agent_restarts_total", "agentops_open_alerts"):
        assert any(key[0] == name for key in found), name
    # the switches
    wait_for(lambda: seen(host, start, HC_HUNG + "/fail"), 30, interval=1.0, message="the hung agent's /fail ping")
    wait_for(lambda: seen(host, start, HC_HOST + "/fail") and seen(host, start, KUMA, status="down")
             and seen(host, start, CRON, state="fail"), 30, interval=1.0, message="the host's failure pings")
    assert not seen(host, start, HC_UP + "/fail")
    assert not seen(host, start, PLAIN), "the plain http target is pinged only after a run without anything critical"


def test_30_hung_agent_resumes_its_switch_turns_back_to_success(host, wait_for):
    start = now(host)
    set_mode(host, "hung", "ok")
    wait_for(lambda: seen(host, start, HC_HUNG), 30, interval=1.0, message="the resumed agent's success ping")
    found = wait_for(lambda: (lambda f: f if (metric(f, "agentops_agent_progress_age_seconds", agent="hung") or 99) < 8
                              else None)(scrape(host)), 30, interval=1.0, message="the resumed agent's progress age")
    assert metric(found, "agentops_agent_up", agent="hung") == 1
    # put the failed agent back (the next tests and a re-run want every agent healthy)
    set_mode(host, "failed", "ok")
    host.run_expect([0], "systemctl reset-failed agentops-failed.service; systemctl start agentops-failed.service")
    wait_for(lambda: seen(host, now(host) - 60, HC_HOST) if metric(
        scrape(host), "agentops_agent_up", agent="failed") == 1 else None, 60,
        interval=1.0, message="the host's switch back to success")


def test_40_stopping_the_timer_stops_the_pings(host, wait_for):
    """With agentops-heartbeat.timer stopped nothing reaches the receiver although pings are due, so the
    service sees the check late; started again, the pings resume."""
    host.run_expect([0], "systemctl stop agentops-heartbeat.timer")
    wait_for(lambda: host.run("systemctl is-active agentops-heartbeat.service").stdout.strip() != "activating",
             30, interval=1.0, message="the last heartbeat run to end")
    stopped = now(host)
    host.run_expect([0], "rm -f %s" % STATE)                # every ping would be due at the next run
    time.sleep(5 * TICK)                                    # absence can only be shown by waiting
    late = pings(host, stopped)
    try:
        assert late == [], late
        last = max(item[0] for item in pings(host) if item[1].startswith(HC_HOST))
        assert now(host) - last > 4 * TICK, "the receiver sees the check late: no ping for more than 4 ticks"
    finally:
        host.run_expect([0], "systemctl start agentops-heartbeat.timer")
    restarted = now(host)
    wait_for(lambda: seen(host, restarted, HC_HOST + "/start") and seen(host, restarted, HC_HOST),
             4 * TICK + 10, interval=1.0, message="the pings after the timer started again")


def test_50_status_and_secrets(host, run_playbook):
    """agentops status shows every target as <type> <host> and the metrics file; the tokens appear in no
    status output, journal line, world-readable file, or Ansible output at -vvv with --diff."""
    table = host.check_output("agentops status")
    assert "dead man's switch (host) healthchecks 127.0.0.1: ok" in table, table
    assert "dead man's switch (agent hung) healthchecks 127.0.0.1: ok" in table, table
    assert "metrics: written to /var/lib/prometheus/node-exporter/agentops.prom" in table, table
    rows = json.loads(host.check_output("agentops status --json"))
    assert rows[0]["watcher"]["metrics"]["status"] == "written"
    settings = host.file("/etc/agentops/heartbeat.json")
    assert settings.user == "root" and settings.mode == 0o600
    outputs = [table, json.dumps(rows), host.check_output("agentops status --format markdown"),
               host.check_output("journalctl -q --no-pager -u agentops-heartbeat.service -n 2000"),
               host.check_output("cat /var/lib/agentops/.heartbeat/*.json"),
               host.check_output("systemctl show agentops-heartbeat.service"),
               host.check_output("find / -xdev -type f -perm -o+r -newer /etc/agentops/heartbeat.json "
                                 "-not -path '/proc/*' -not -path '/sys/*' -not -path '/var/log/agentops-fake-endpoint/*' "
                                 "-exec grep -l %s {} + || true" % CANARY)]
    for text in outputs:
        assert CANARY not in text
    result = run_playbook(host, "converge.yml", verbosity=3, diff=True)
    assert result.rc == 0, result.output[-3000:]
    assert CANARY not in result.output
    assert "heartbeat.json" in result.output


BAD = {
    "agentops_deadman": [{"type": "healthchecks", "url": "ftp://127.0.0.1/" + CANARY}],
    "agentops_metrics_textfile_dir": "var/lib/metrics",
    "agentops_agents": [{"name": "up", "command": "/usr/local/sbin/agentops-watch-agent up",
                         "heartbeat": {"deadman": [{"type": "pagerduty", "url": "https://x/" + CANARY}]}}],
}
MESSAGES = (
    "agentops_deadman: [0].url must be an http:// or https:// URL",
    "agentops_metrics_textfile_dir: 'var/lib/metrics' must be an absolute path",
    "agentops_agents[up].heartbeat.deadman[0].type: 'pagerduty' is not one of healthchecks, uptime_kuma",
)


def test_60_bad_values_are_rejected_before_any_change(host, run_playbook):
    """One run with a bad value in each new field: every one is named, no URL is shown, nothing changes."""
    files = "/etc/agentops/heartbeat.json /etc/systemd/system/agentops-heartbeat.*"
    before = host.check_output("sha256sum " + files)
    result = run_playbook(host, "tests/heartbeat_only.yml", extra_vars=BAD, expect_fail=True)
    output = " ".join(result.output.split())
    for message in MESSAGES:
        assert message in output, (message, result.output[-3000:])
    assert CANARY not in result.output
    assert result.recap.get("changed") == 0 and result.recap.get("failed") == 1, result.recap
    assert host.check_output("sha256sum " + files) == before


# First on the fixed PATH the heartbeat runs journalctl with (agentops_auth.SAFE_PATH): a journal that
# cannot be read, for the time of one test.
BROKEN_JOURNALCTL = "/usr/local/sbin/journalctl"


def alerts(host, since, key, severity=None):
    found = []
    for record in agentops_testlib.endpoint_records(host, HOOK, since):
        body = json.loads(record["body"]) if record["path"].startswith("/hook") else {}
        if body.get("key") == key and (severity is None or body.get("severity") == severity):
            found.append(body)
    return found


def test_70_an_unreadable_journal_is_unknown_never_silent(host, wait_for):
    """While the journal cannot be read, the hung agent (no line for longer than max_silence) is not called
    silent and not counted in the progress metric; once that lasts longer than max_silence its
    progress-unknown warning comes. Readable again: the warning is resolved and the real silence alerted."""
    start = now(host)
    set_mode(host, "hung", "hang")
    host.run_expect([0], "printf '#!/bin/sh\\necho \"Failed to open journal: test\" >&2\\nexit 1\\n' > %s && chmod 0755 %s"
                    % (BROKEN_JOURNALCTL, BROKEN_JOURNALCTL))
    try:
        warning = wait_for(lambda: alerts(host, start, "hung/progress-unknown", "warning"), 60, interval=1.0,
                           message="hung/progress-unknown")
        assert "Failed to open journal: test" in warning[0]["body"], warning
        assert now(host) - start > 8                                          # after max_silence, not before
        assert metric(scrape(host), "agentops_agent_progress_age_seconds", agent="hung") is None
        assert alerts(host, start, "hung/silent") == []
    finally:
        host.run_expect([0], "rm -f %s" % BROKEN_JOURNALCTL)
    readable = now(host)
    wait_for(lambda: alerts(host, readable, "hung/progress-unknown", "resolved"), 30, interval=1.0,
             message="hung/progress-unknown resolved")
    wait_for(lambda: alerts(host, readable, "hung/silent", "critical"), 30, interval=1.0,
             message="the real silence alerted once the journal is read")
    set_mode(host, "hung", "ok")
    wait_for(lambda: alerts(host, readable, "hung/silent", "resolved"), 30, interval=1.0,
             message="hung/silent resolved")
    wait_for(lambda: alerts(host, start, "up/progress-unknown", "resolved") or not alerts(
        host, start, "up/progress-unknown"), 30, interval=1.0, message="the up agent known again")
