"""The alert path and the heartbeat on real systemd: fake Telegram (18081), fake webhook (18082)
and fake auth endpoint (18083) on the container's 127.0.0.1. Intervals are seconds:
heartbeat tick 3s, agent interval 3s, max_silence 10s (agent hang), flush every 3s."""
import json
import os

import pytest
import testinfra.utils.ansible_runner
from agentops_testlib import skip_unless_case_host

from alerts_helpers import (AUTH, CANARY, TELEGRAM, WEBHOOK, figure, flush_runs, heartbeat_runs, now,
                            records, set_mode, set_rules, telegram, webhook)

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("agentops_test")

AGENTS = ("hang", "loop", "limit", "authy")
HANG_DEADLINE = 10 + 3 + 15          # max_silence + interval + 15 s


def test_alert_units_and_config(host):
    config = host.file("/etc/agentops/agentops.json")
    assert config.user == "root" and config.mode == 0o600
    data = json.loads(config.content_string)
    assert [c["type"] for c in data["alert_channels"]] == ["telegram", "webhook", "command"]
    assert data["alert_repeat_seconds"] == 3600 and data["alert_timeout_seconds"] == 5
    for timer in ("agentops-alert-flush.timer", "agentops-heartbeat.timer"):
        assert host.service(timer).is_enabled and host.service(timer).is_running
    assert host.file("/etc/systemd/system/agentops-alert@.service").contains("agentops failure %i")
    for name in AGENTS:
        unit = host.file("/etc/systemd/system/agentops-%s.service" % name)
        assert unit.contains("OnFailure=agentops-alert@%n.service")
        assert host.service("agentops-%s.service" % name).is_running
    spool = host.check_output("findmnt -n -o FSTYPE -T /var/spool/agentops/alerts")
    assert spool != "tmpfs", "the spool must survive a reboot"
    assert host.file("/var/spool/agentops/alerts").mode == 0o700


def test_telegram_429_retry_after_is_honoured(host):
    key = "test/429-%d" % now(host)
    set_rules(host, TELEGRAM, [{"path": "sendMessage$", "method": "POST", "status": 429, "times": 1,
                                "body": {"ok": False, "error_code": 429,
                                         "description": "Too Many Requests: retry after 3",
                                         "parameters": {"retry_after": 3}}}])
    try:
        start = now(host)
        host.run_expect([0], "agentops alert --severity info --key %s --title 'rate limit test'" % key)
    finally:
        set_rules(host, TELEGRAM, [])
    mine = [r for r in records(host, TELEGRAM, start) if key in r["body"]]
    assert [r["status"] for r in mine] == [429, 200]
    assert mine[1]["time"] - mine[0]["time"] >= 3.0
    assert len(webhook(host, start, key=key)) == 1


def test_receiver_down_spools_then_delivers_exactly_once(host, wait_for):
    start = now(host)
    keys = ["test/spool-%d-%d" % (start, i) for i in range(3)]
    host.run_expect([0], "systemctl stop agentops-fake-endpoint@%d.service" % WEBHOOK)
    try:
        for key in keys:
            host.run_expect([0], "agentops alert --severity info --key %s --title 'spool test'" % key)
        spooled = host.check_output("grep -rlF -e %s /var/spool/agentops/alerts || true" % keys[0].rsplit("-", 1)[0])
        assert len(spooled.split()) == 3
        for path in spooled.split():
            assert host.file(path).mode == 0o600
        assert sorted(m["text"].split("key: ")[1].split("\n")[0] for m in telegram(host, start)
                      if "spool test" in m["text"]) == keys        # the other channels did not wait
        flush_runs(host, 1, wait_for)                                # a flush while the receiver is down
        assert not any(webhook(host, start, key=k) for k in keys)
    finally:
        host.run_expect([0], "systemctl start agentops-fake-endpoint@%d.service" % WEBHOOK)
    wait_for(lambda: all(webhook(host, start, key=k) for k in keys), 60, message="spooled alerts delivered")
    wait_for(lambda: not host.run("grep -rqF -e %s /var/spool/agentops/alerts" % keys[0].rsplit("-", 1)[0]).succeeded,
             30, message="spool emptied")
    flush_runs(host, 2, wait_for)
    assert [len(webhook(host, start, key=k)) for k in keys] == [1, 1, 1]
    assert [m["key"] for m in webhook(host, start) if m["key"] in keys] == keys   # in order
    journal = host.check_output("journalctl --no-pager -o cat -u agentops-alert-flush.service --since @%d" % int(start))
    assert "delivered spooled info key=%s" % keys[0] in journal


def test_secrets_stay_out_of_journal_files_and_ansible_output(host, run_playbook):
    journal = host.run("journalctl --no-pager -o verbose | grep -cF %s" % CANARY)
    assert journal.stdout.strip() == "0", "bot token in the journal"
    leaked = host.check_output(
        "find / \\( -path /proc -o -path /sys -o -path /dev -o -path /var/log/agentops-fake-endpoint \\) -prune"
        " -o -type f -perm -o=r -size -20M -print0 | xargs -0 grep -lF %s 2>/dev/null || true" % CANARY)
    assert leaked == "", "bot token in world-readable files: %s" % leaked
    holders = host.check_output("grep -rlF %s /etc /var /run /usr/local 2>/dev/null "
                                "| grep -v '^/var/log/agentops-fake-endpoint/' || true" % CANARY).split()
    assert holders == ["/etc/agentops/agentops.json"]
    assert CANARY not in host.check_output("ps -eo args")
    assert CANARY not in host.check_output("systemctl show 'agentops-*' --all")
    result = run_playbook(host, "converge.yml", check=True, diff=True, verbosity=3)
    assert result.rc == 0, result.output[-3000:]
    assert result.recap["changed"] == 0
    assert CANARY not in result.output
    assert "authy-token-value" not in result.output


def test_crash_loop_under_restart_alerts_both_receivers_then_resolves_once(host, wait_for):
    start = now(host)
    set_mode(host, "loop", "crash")
    try:
        hooks = wait_for(lambda: webhook(host, start, key="loop/crashloop", severity="critical"), 60,
                         message="crash loop alert at the webhook")
        figure(host, "crash_loop_under_restart", hooks[0]["_time"] - start)
        tg = wait_for(lambda: telegram(host, start, key="loop/crashloop", severity="critical"), 30,
                      message="crash loop alert at telegram")
        assert tg[0]["chat_id"] == "-100777" and tg[0]["parse_mode"] == "HTML"
        assert "crash" in tg[0]["text"]       # heartbeat: "crash looping"; systemd >= 254 OnFailure=: "crashed"
        assert hooks[0]["unit"] == "agentops-loop.service" and hooks[0]["agent"] == "loop"
        assert "NRestarts=" in hooks[0]["title"]
        heartbeat_runs(host, "loop", 2, wait_for)
    finally:
        set_mode(host, "loop", "ok")
    assert len(webhook(host, start, key="loop/crashloop", severity="critical")) == 1    # de-duplicated
    wait_for(lambda: webhook(host, start, key="loop/crashloop", severity="resolved"), 120,
             message="crash loop resolved")
    heartbeat_runs(host, "loop", 3, wait_for)
    assert len(webhook(host, start, key="loop/crashloop", severity="resolved")) == 1
    assert len(telegram(host, start, key="loop/crashloop", severity="resolved")) == 1


def test_hung_agent_alerts_within_deadline_then_resolves_once(host, wait_for):
    start = now(host)
    set_mode(host, "hang", "hang")
    try:
        hooks = wait_for(lambda: webhook(host, start, key="hang/silent", severity="critical"), HANG_DEADLINE + 30,
                         message="hung agent alert")
        latency = hooks[0]["_time"] - start
        figure(host, "hung_but_alive", latency)
        assert latency <= HANG_DEADLINE, "hung agent detected after %.1fs (deadline %ss)" % (latency, HANG_DEADLINE)
        assert host.service("agentops-hang.service").is_running          # alive, just silent
        assert wait_for(lambda: telegram(host, start, key="hang/silent", severity="critical"), 20,
                        message="hung agent alert at telegram")
        heartbeat_runs(host, "hang", 2, wait_for)
    finally:
        set_mode(host, "hang", "ok")
    assert len(webhook(host, start, key="hang/silent", severity="critical")) == 1
    wait_for(lambda: webhook(host, start, key="hang/silent", severity="resolved"), 30, message="hang resolved")
    heartbeat_runs(host, "hang", 3, wait_for)
    assert len(webhook(host, start, key="hang/silent", severity="resolved")) == 1
    assert len(telegram(host, start, key="hang/silent", severity="resolved")) == 1


def test_start_limit_failure_sends_one_message_with_journal_lines(host, wait_for):
    start = now(host)
    set_mode(host, "limit", "crash")
    try:
        def failure_messages():
            return [m for m in webhook(host, start, key="limit/down", severity="critical")
                    if "journal lines" in m["body"]]
        found = wait_for(failure_messages, 90, message="agentops-alert@ message")
        figure(host, "crash_after_start_limit", found[0]["_time"] - start)
        body = found[0]["body"]
        assert "Result: start-limit-hit" in body or "Result: exit-code" in body
        assert "NRestarts: " in body and "Failed since: " in body
        assert "test agent limit crashing on purpose" in body
        assert found[0]["host"] == host.backend.host and found[0]["unit"] == "agentops-limit.service"
        wait_for(lambda: host.service("agentops-alert@agentops-limit.service.service").is_running is False, 30,
                 message="agentops-alert@ finished")
        heartbeat_runs(host, "limit", 3, wait_for)
        assert len(failure_messages()) == 1
        tg = telegram(host, start, key="limit/down", severity="critical")
        assert len([m for m in tg if "journal lines" in m["text"]]) == 1
        assert "<pre>" in tg[0]["text"]
    finally:
        set_mode(host, "limit", "ok")
        host.run_expect([0], "systemctl reset-failed agentops-limit.service; systemctl start agentops-limit.service")
    wait_for(lambda: webhook(host, start, key="limit/down", severity="resolved"), 30, message="limit resolved")
    heartbeat_runs(host, "limit", 2, wait_for)
    assert len(webhook(host, start, key="limit/down", severity="resolved")) == 1


def test_auth_broken_mid_session_alerts(host, wait_for):
    start = now(host)
    set_rules(host, AUTH, [{"path": "^/me$", "status": 401, "body": {"error": "invalid_token"}}])
    try:
        hooks = wait_for(lambda: webhook(host, start, key="auth:authy:api", severity="critical"), 60,
                         message="auth alert")
        figure(host, "auth_broken_mid_session", hooks[0]["_time"] - start)
        assert host.service("agentops-authy.service").is_running         # the session itself keeps running
    finally:
        set_rules(host, AUTH, [])
    wait_for(lambda: webhook(host, start, key="auth:authy:api", severity="resolved"), 30, message="auth resolved")
    heartbeat_runs(host, "authy", 2, wait_for)
    assert len(webhook(host, start, key="auth:authy:api", severity="resolved")) == 1


def test_command_channel_receives_alerts(host):
    sink = host.file("/var/log/agentops-test-alert-sink.log")
    assert sink.exists and sink.mode == 0o600
    assert "[CRITICAL] %s: " % host.backend.host in sink.content_string
    assert "key: hang/silent" in sink.content_string


def test_status_json(host):
    rows = json.loads(host.check_output("agentops status --json"))
    assert sorted(r["agent"] for r in rows) == sorted(AGENTS)
    for row in rows:
        for field in ("agent", "unit", "active_state", "sub_state", "uptime_seconds", "restarts",
                      "last_progress_age_seconds", "auth", "next_rotation", "open_alerts"):
            assert field in row
    hang = [r for r in rows if r["agent"] == "hang"][0]
    assert hang["active_state"] == "active" and hang["last_progress_age_seconds"] < 10
    authy = [r for r in rows if r["agent"] == "authy"][0]
    assert [a["status"] for a in authy["auth"]] == ["AUTH_OK"]
    table = host.check_output("agentops status")
    assert table.splitlines()[0].split()[:4] == ["AGENT", "ACTIVE", "UPTIME", "RESTARTS"]


BAD_INPUT = [
    ({"agentops_alert_channels": [{"type": "matrix", "url": "https://hooks.example.com/x"}]},
     "agentops_alert_channels[0].type: unknown channel type"),
    ({"agentops_alert_channels": [{"type": "telegram", "bot_token": "99:" + CANARY}]},
     "agentops_alert_channels[0] (telegram).chat_id is required"),
    ({"agentops_alert_channels": [{"type": "telegram", "chat_id": "-1"}]},
     "agentops_alert_channels[0] (telegram).bot_token is required"),
    ({"agentops_alert_channels": [{"type": "webhook", "url": "ftp://hooks.example.com/x"}]},
     "agentops_alert_channels[0] (webhook).url must be an http:// or https:// URL"),
    ({"agentops_alert_channels": [{"type": "command", "command": "page-owner --now"}]},
     "agentops_alert_channels[0] (command).command must start with an absolute path"),
    ({"agentops_alert_repeat": "often"}, "agentops_alert_repeat"),
    ({"agentops_agents": [{"name": "night", "command": "/bin/true",
                           "heartbeat": {"interval": "1min", "max_silence": "5min", "active_hours": "8-20"}}]},
     "agentops_agents[night].heartbeat.active_hours"),
    ({"agentops_heartbeat_tick": "soon"}, "agentops_heartbeat_tick"),
]


def _fingerprint(host):
    return host.check_output("sha256sum /etc/agentops/agentops.json /etc/systemd/system/agentops-heartbeat.service"
                             " /etc/systemd/system/agentops-alert-flush.timer")


@pytest.mark.parametrize("extra_vars, message", BAD_INPUT, ids=[m.split(" ")[0].split(":")[0] + "-%d" % i
                                                                 for i, (_, m) in enumerate(BAD_INPUT)])
def test_bad_input_is_rejected_before_any_change(host, run_playbook, extra_vars, message):
    skip_unless_case_host(host, testinfra_hosts, BAD_INPUT.index((extra_vars, message)))
    before = _fingerprint(host)
    result = run_playbook(host, "validate.yml", extra_vars=extra_vars, expect_fail=True)
    assert message in result.output, result.output[-3000:]
    assert result.recap["changed"] == 0 and result.recap["failed"] == 1
    assert CANARY not in result.output
    assert _fingerprint(host) == before
