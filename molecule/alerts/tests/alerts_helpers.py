"""Helpers of the alerts scenario's testinfra suite: the receivers' request logs and the clock."""
import json
import os

import agentops_testlib

TELEGRAM, WEBHOOK, AUTH = 18081, 18082, 18083
CANARY = "CANARY-alerts-bot-token-must-not-leak"
FIGURES = os.environ.get("AGENTOPS_ALERTS_FIGURES", "/tmp/agentops-alerts-figures.jsonl")


now = agentops_testlib.now
records = agentops_testlib.endpoint_records


def webhook(host, since=0.0, key=None, severity=None):
    """Messages the fake webhook received (its JSON body plus _time and _status)."""
    found = []
    for record in records(host, WEBHOOK, since):
        if record["path"] != "/hook":
            continue
        body = json.loads(record["body"])
        body.update(_time=record["time"], _status=record["status"])
        if (key is None or body["key"] == key) and (severity is None or body["severity"] == severity):
            found.append(body)
    return found


def telegram(host, since=0.0, key=None, severity=None):
    """Messages the fake Telegram received (sendMessage payload plus _time, _status and _path)."""
    found = []
    for record in records(host, TELEGRAM, since):
        if not record["path"].endswith("/sendMessage"):
            continue
        body = json.loads(record["body"])
        body.update(_time=record["time"], _status=record["status"], _path=record["path"])
        text = body.get("text", "")
        if key is not None and "key: %s\n" % key not in text + "\n":
            continue
        if severity is not None and not text.startswith("<b>[%s" % severity.upper()):
            continue
        found.append(body)
    return found


def set_mode(host, agent, mode):
    host.run_expect([0], "printf '%s\\n' > /etc/agentops-test/%s.mode" % (mode, agent))


def set_rules(host, port, rules):
    host.run_expect([0], "printf '%%s\\n' '%s' > /etc/agentops-fake-endpoint/%d.json" % (json.dumps(rules), port))


def heartbeat_runs(host, agent, count, wait_for, timeout=60):
    """Wait until the heartbeat checked ``agent`` ``count`` more times."""
    seen = set()
    start = now(host)

    def more():
        state = host.file("/var/lib/agentops/.heartbeat/%s.json" % agent)
        if state.exists:
            stamp = json.loads(state.content_string).get("last_check", 0)
            if stamp > start:
                seen.add(stamp)
        return len(seen) >= count
    wait_for(more, timeout, message="%d heartbeat runs for %s" % (count, agent))


def flush_runs(host, count, wait_for, timeout=60):
    """Wait until agentops-alert-flush.service finished ``count`` more runs."""
    seen = set()

    def more():
        stamp = host.check_output("systemctl show -p InactiveEnterTimestampMonotonic --value agentops-alert-flush.service")
        seen.add(stamp)
        return len(seen) > count
    wait_for(more, timeout, message="%d flush runs" % count)


def figure(host, name, seconds):
    """Record a measured detection latency (printed and appended to FIGURES)."""
    agentops_testlib.record_figure(FIGURES, host, name, seconds)
