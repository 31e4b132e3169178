"""Helpers of the channels scenario's testinfra suite: what each receiver got, the clock, the figures."""
import email
import email.policy
import hashlib
import json
import os

import agentops_testlib

SLACK, DISCORD, NTFY, PAGERDUTY, WEBHOOK = 18091, 18092, 18093, 18094, 18095
SMTP_STARTTLS, SMTP_TLS = 2587, 2465
CANARIES = ("CANARY-channels-slack-url-must-not-leak", "CANARY-channels-discord-url-must-not-leak",
            "CANARY-channels-ntfy-token-must-not-leak", "CANARYchannelsPagerDutyKey012345",
            "CANARY-channels-password-must-not-leak", "CANARY-channels-webhook-header-must-not-leak")
FIGURES = os.environ.get("AGENTOPS_CHANNELS_FIGURES", "/tmp/agentops-channels-figures.jsonl")
CHANNELS = ("slack", "discord", "ntfy", "pagerduty", "email_starttls", "email_tls", "webhook")


now = agentops_testlib.now
records = agentops_testlib.endpoint_records


def _has_key(text, key):
    return ("key: %s\n" % key) in text + "\n"


def fingerprint(host_name, key):
    return hashlib.sha256(("%s|%s" % (host_name, key)).encode("utf-8")).hexdigest()[:16]


def received(host, channel, since, key, severity):
    """Messages for ``key`` with ``severity`` that ``channel`` received: [(time, verdict, record)]."""
    found = []
    tag = severity.upper()
    if channel in ("slack", "discord", "ntfy", "pagerduty", "webhook"):
        port = {"slack": SLACK, "discord": DISCORD, "ntfy": NTFY, "pagerduty": PAGERDUTY, "webhook": WEBHOOK}[channel]
        for record in records(host, port, since):
            if channel == "ntfy":
                text = record["body"]
                sev = {"5": "CRITICAL", "4": "WARNING"}.get(record["headers"].get("Priority"))
                if "white_check_mark" in record["headers"].get("Tags", ""):
                    sev = "RESOLVED"
                elif sev is None:
                    sev = "INFO"
                match = _has_key(text, key) and sev == tag
            else:
                try:
                    body = json.loads(record["body"])
                except ValueError:
                    continue
                if channel == "slack":
                    match = _has_key(body.get("text", ""), key) and body["text"].startswith("*[%s" % tag)
                elif channel == "discord":
                    match = _has_key(body.get("content", ""), key) and body["content"].startswith("**[%s" % tag)
                elif channel == "webhook":
                    match = body.get("key") == key and body.get("severity") == severity
                else:
                    action = "resolve" if severity == "resolved" else "trigger"
                    match = (body.get("event_action") == action
                             and body.get("dedup_key") == "agentops-%s" % fingerprint(host.backend.host, key)
                             and (action == "resolve" or body["payload"]["severity"] == severity))
            if match:
                found.append((record["time"], record.get("verdict") or "ok", record))
        return found
    port = SMTP_STARTTLS if channel == "email_starttls" else SMTP_TLS
    for record in agentops_testlib.jsonl_records(host, "/var/log/agentops-smtp-sink.jsonl", since):
        if record["port"] != port:
            continue
        mail = email.message_from_string(record["data"], policy=email.policy.default)
        if mail["X-Agentops-Key"] == key and str(mail["Subject"]).startswith("[%s" % tag):
            found.append((record["time"], "ok", record))
    return found


def set_mode(host, agent, mode):
    host.run_expect([0], "printf '%s\\n' > /etc/agentops-test/%s.mode" % (mode, agent))


def _runs(host, unit, count, wait_for, timeout):
    seen = set()

    def more():
        seen.add(host.check_output("systemctl show -p InactiveEnterTimestampMonotonic --value %s" % unit))
        return len(seen) > count
    wait_for(more, timeout, message="%d runs of %s" % (count, unit))


def heartbeat_runs(host, count, wait_for, timeout=60):
    """Wait until agentops-heartbeat.service finished ``count`` more runs."""
    _runs(host, "agentops-heartbeat.service", count, wait_for, timeout)


def flush_runs(host, count, wait_for, timeout=60):
    """Wait until agentops-alert-flush.service finished ``count`` more runs."""
    _runs(host, "agentops-alert-flush.service", count, wait_for, timeout)


def detected_at(host, since, needle):
    """Journal time of the first line holding ``needle`` since ``since`` (the alert path raising the alert)."""
    out = host.check_output("journalctl --no-pager -o json --since @%d" % int(since))
    for line in out.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if isinstance(message, str) and needle in message:
            return int(entry["__REALTIME_TIMESTAMP"]) / 1e6
    return None


def figure(host, name, seconds, **extra):
    agentops_testlib.record_figure(FIGURES, host, name, seconds, digits=2, **extra)
