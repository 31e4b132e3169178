"""Slack, Discord, ntfy, PagerDuty, e-mail (STARTTLS and implicit TLS) and webhook headers through the one
alert path, on real systemd. Receivers run in the container on 127.0.0.1 and answer as each service does
(a payload the real service would refuse is refused). Heartbeat tick 3s, flush every 3s."""
import json
import os

import pytest
import testinfra.utils.ansible_runner
from agentops_playbook import ansible_playbook
from agentops_testlib import skip_unless_case_host

from channels_helpers import (CANARIES, CHANNELS, DISCORD, NTFY, SMTP_STARTTLS, SMTP_TLS, detected_at, figure,
                              fingerprint, flush_runs, heartbeat_runs, now, received, set_mode)

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("agentops_test")

KEY = "crashy/down"


def test_config_trust_store_and_receivers(host):
    config = host.file("/etc/agentops/agentops.json")
    assert config.user == "root" and config.mode == 0o600
    types = [c["type"] for c in json.loads(config.content_string)["alert_channels"]]
    assert types == ["slack", "discord", "ntfy", "pagerduty", "email", "email", "webhook"]
    # the sink's certificate verifies against the system trust store (the test CA was installed into it)
    host.run_expect([0], "python3 -c \"import socket, ssl; ssl.create_default_context().wrap_socket("
                         "socket.create_connection(('127.0.0.1', %d)), server_hostname='localhost').close()\""
                    % SMTP_TLS)
    assert not host.file("/etc/agentops-test-ca/server.key").mode & 0o077


def test_crash_alert_reaches_every_channel_then_exactly_one_resolved(host, wait_for):
    start = now(host)
    set_mode(host, "crashy", "crash")
    try:
        def everywhere():
            got = {c: received(host, c, start, KEY, "critical") for c in CHANNELS}
            return got if all(got.values()) else None
        got = wait_for(everywhere, 120, message="crash alert on every channel")
        detected = detected_at(host, start, "alert CRITICAL key=%s" % KEY)
        assert detected is not None
        for channel, messages in got.items():
            assert all(verdict == "ok" for _t, verdict, _r in messages), (channel, messages)
            figure(host, "crash_to_delivery:%s" % channel, messages[0][0] - start)
            figure(host, "detection_to_delivery:%s" % channel, messages[0][0] - detected)
        trigger = json.loads(got["pagerduty"][0][2]["body"])
        assert trigger["routing_key"] == CANARIES[3] and trigger["payload"]["source"] == host.backend.host
        assert "journal lines" in trigger["payload"]["custom_details"]["body"]
        starttls, implicit = got["email_starttls"][0][2], got["email_tls"][0][2]
        assert starttls["starttls"] is True and starttls["auth"] == "alerts" and starttls["rcpt_to"] == [
            "oncall@example.com"]
        assert implicit["tls"] is True and implicit["starttls"] is False and implicit["port"] == SMTP_TLS
        hook = got["webhook"][0][2]["headers"]
        assert hook["Authorization"] == "Bearer " + CANARIES[5] and hook["X-Tenant"] == "agentops"
        ntfy = got["ntfy"][0][2]["headers"]
        assert ntfy["Authorization"] == "Bearer tk_" + CANARIES[2] and ntfy["Priority"] == "5"
        assert len(json.loads(got["discord"][0][2]["body"])["content"]) <= 2000
        heartbeat_runs(host, 2, wait_for)
    finally:
        set_mode(host, "crashy", "ok")
        host.run_expect([0], "systemctl reset-failed agentops-crashy.service; systemctl start agentops-crashy.service")
    for channel in CHANNELS:
        assert len(received(host, channel, start, KEY, "critical")) == 1, channel        # de-duplicated
    wait_for(lambda: all(received(host, c, start, KEY, "resolved") for c in CHANNELS), 60,
             message="one resolved message on every channel")
    heartbeat_runs(host, 3, wait_for)
    flush_runs(host, 1, wait_for)
    for channel in CHANNELS:
        resolved = received(host, channel, start, KEY, "resolved")
        assert len(resolved) == 1 and resolved[0][1] == "ok", (channel, resolved)
    resolve = json.loads(received(host, "pagerduty", start, KEY, "resolved")[0][2]["body"])
    assert resolve["dedup_key"] == "agentops-%s" % fingerprint(host.backend.host, KEY)
    assert resolve["dedup_key"] == json.loads(received(host, "pagerduty", start, KEY, "critical")[0][2]["body"])[
        "dedup_key"]


DOWN = {"discord": "agentops-fake-endpoint@%d.service" % DISCORD, "ntfy": "agentops-fake-endpoint@%d.service" % NTFY,
        "email_starttls": "agentops-smtp-sink.service", "email_tls": "agentops-smtp-sink.service"}


def test_receivers_down_get_the_spooled_message_exactly_once(host, wait_for):
    start = now(host)
    key = "test/spool-%d" % start
    units = sorted(set(DOWN.values()))
    host.run_expect([0], "systemctl stop %s" % " ".join(units))
    try:
        host.run_expect([0], "agentops alert --severity warning --key %s --title 'spool test'" % key)
        for channel in ("slack", "pagerduty", "webhook"):                  # the others did not wait
            assert len(received(host, channel, start, key, "warning")) == 1, channel
        spooled = host.check_output("grep -rlF -e %s /var/spool/agentops/alerts --exclude-dir=.dead || true"
                                    % key).split()
        assert len(spooled) == 4                                            # discord, ntfy, two e-mail channels
        for path in spooled:
            assert host.file(path).mode == 0o600 and host.file(path).user == "root"
        flush_runs(host, 1, wait_for)                                       # a flush while they are down
        assert not any(received(host, c, start, key, "warning") for c in DOWN)
        back = now(host)
    finally:
        host.run_expect([0], "systemctl start %s" % " ".join(units))
    got = wait_for(lambda: all(received(host, c, start, key, "warning") for c in DOWN) and
                   {c: received(host, c, start, key, "warning") for c in DOWN}, 90, message="spooled alerts delivered")
    for channel, messages in got.items():
        figure(host, "receiver_back_to_delivery:%s" % channel, messages[0][0] - back)
    wait_for(lambda: not host.run("grep -rqF -e %s /var/spool/agentops/alerts --exclude-dir=.dead" % key).succeeded,
             30, message="spool emptied")
    flush_runs(host, 2, wait_for)
    for channel in CHANNELS:
        assert len(received(host, channel, start, key, "warning")) == 1, channel
    assert host.check_output("ls -A /var/spool/agentops/alerts/.dead 2>/dev/null || true") == ""


def test_secrets_stay_out_of_journal_files_status_and_ansible_output(host):
    for canary in CANARIES:
        journal = host.run("journalctl --no-pager -o verbose | grep -cF -e %s" % canary)
        assert journal.stdout.strip() == "0", "%s in the journal" % canary
        leaked = host.check_output(
            "find / \\( -path /proc -o -path /sys -o -path /dev -o -path /var/log/agentops-fake-endpoint \\) -prune"
            " -o -type f -perm -o=r -size -20M -print0 | xargs -0 grep -lF -e %s 2>/dev/null || true" % canary)
        assert leaked == "", "%s in world-readable files: %s" % (canary, leaked)
        holders = host.check_output("grep -rlF -e %s /etc /var /run /usr/local 2>/dev/null "
                                    "| grep -v -e '^/var/log/agentops-fake-endpoint/' "
                                    "-e '^/etc/agentops-fake-endpoint/' || true"
                                    % canary).split()
        assert holders == ["/etc/agentops/agentops.json"], (canary, holders)
        assert canary not in host.check_output("ps -eo args")
        assert canary not in host.check_output("systemctl show 'agentops-*' --all")
        assert canary not in host.run("agentops status --json").stdout
        assert canary not in host.check_output(
            "find /etc/systemd/system -name 'agentops-*' -type f -exec cat {} +")
    # Each host's own run: the hosts' tests run side by side (one pytest-xdist worker per host).
    name = host.backend.host
    rc, output, recaps = ansible_playbook(name, "converge.yml", check=True, diff=True, verbosity=3)
    assert rc == 0, output[-3000:]
    assert list(recaps) == [name] and recaps[name]["changed"] == 0, recaps
    for canary in CANARIES:
        assert canary not in output, canary


BAD_INPUT = [
    ([{"type": "slack", "url": "https://hooks.slack.com/x\r\n" + CANARIES[0]}],
     "agentops_alert_channels[0] (slack).url must be an http:// or https:// URL (value not shown)"),
    ([{"type": "ntfy", "url": "https://ntfy.example.com/t", "token": CANARIES[2] + "\n"}],
     "agentops_alert_channels[0] (ntfy).token must not contain"),
    ([{"type": "pagerduty", "routing_key": CANARIES[3][:-1]}],
     "agentops_alert_channels[0] (pagerduty).routing_key must be the 32-character"),
    ([{"type": "email", "smtp_host": "smtp.example.com", "security": "none", "username": "u",
       "password": CANARIES[4], "from": "a@example.com", "to": ["b@example.com"]}],
     "agentops_alert_channels[0] (email).password with security: none"),
    ([{"type": "webhook", "url": "https://hooks.example.com/x", "headers": {"Host": CANARIES[5]}}],
     "agentops_alert_channels[0] (webhook).headers.Host is set by the alert path"),
]


def _fingerprint(host):
    return host.check_output("sha256sum /etc/agentops/agentops.json /etc/systemd/system/agentops-alert-flush.timer")


@pytest.mark.parametrize("channels, message", BAD_INPUT, ids=[c[0]["type"] for c, _m in BAD_INPUT])
def test_bad_channel_input_is_rejected_before_any_change(host, run_playbook, channels, message):
    skip_unless_case_host(host, testinfra_hosts, BAD_INPUT.index((channels, message)))
    before = _fingerprint(host)
    result = run_playbook(host, "validate.yml", extra_vars={"agentops_alert_channels": channels}, expect_fail=True)
    assert message in result.output, result.output[-3000:]
    assert result.recap["changed"] == 0 and result.recap["failed"] == 1
    for canary in CANARIES:
        assert canary not in result.output
    assert _fingerprint(host) == before
