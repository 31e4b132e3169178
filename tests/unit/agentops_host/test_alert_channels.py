"""The chat, push, paging and mail channels of the alert path against real loopback servers.

The HTTP receivers are the Molecule fake endpoint itself (molecule/shared/files/fake_endpoint.py)
run in-process, with its validators answering as Slack, Discord, ntfy and PagerDuty do; e-mail goes
to the SMTP sink (molecule/shared/files/smtp_sink.py) with STARTTLS and implicit TLS, its
certificate signed by a test CA made with openssl for the test and trusted through SSL_CERT_FILE.
"""
import base64
import email
import email.header
import email.policy
import hashlib
import json
import os
import smtplib
import stat
import subprocess
import sys
import threading
import time

import pytest

from agentops_host import alert
from agentops_host import state

from test_alert_helpers import make_args, write_config

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
SHARED = os.path.join(ROOT, "molecule", "shared", "files")
sys.path.insert(0, SHARED)
import fake_endpoint  # noqa: E402  pylint: disable=wrong-import-position
import smtp_sink  # noqa: E402  pylint: disable=wrong-import-position

CANARY = "CANARYchannelsecret7Q2x"
ROUTING_KEY = "R0ut1ngKeyCANARY0123456789abcdef"         # 32 characters
SMTP_PASSWORD = "smtp-" + CANARY


class Fake:
    """The fake endpoint on 127.0.0.1 (ephemeral port), rules and request log in tmp_path."""

    def __init__(self, tmp_path):
        fake_endpoint.LOG_DIR = str(tmp_path / "fake-log")
        fake_endpoint.RULES = str(tmp_path / "fake-rules.json")
        fake_endpoint.LOG = os.path.join(fake_endpoint.LOG_DIR, "requests.jsonl")
        fake_endpoint.USED.clear()
        fake_endpoint.RULES_MTIME[0] = None
        self.server = fake_endpoint.Server(("127.0.0.1", 0), fake_endpoint.Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    def rules(self, rules):
        with open(fake_endpoint.RULES, "w", encoding="utf-8") as handle:
            json.dump(rules, handle)
        stamp = time.time() + len(fake_endpoint.USED) + 1     # a new mtime: rule counters start again
        os.utime(fake_endpoint.RULES, (stamp, stamp))

    def records(self):
        try:
            with open(fake_endpoint.LOG, encoding="utf-8") as handle:
                return [json.loads(line) for line in handle if line.strip()]
        except FileNotFoundError:
            return []

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(name="fake")
def fake_fixture(tmp_path):
    server = Fake(tmp_path)
    yield server
    server.close()


def spool_files(args, dead=False):
    root = os.path.join(args.spool_dir, "alerts")
    found = []
    for dirpath, _dirs, files in os.walk(root):
        if (os.sep + ".dead") in dirpath and not dead:
            continue
        found += [os.path.join(dirpath, f) for f in files if f.endswith(".json") and not f.startswith(".")]
    return sorted(found)


# --------------------------------------------------------------------------- slack
def test_slack_gets_text_and_exactly_one_resolved(tmp_path, fake, capsys):
    args = make_args(tmp_path)
    fake.rules([{"path": "^/services/", "validate": "slack"}])
    write_config(args, [{"type": "slack", "url": fake.base + "/services/T000/B000/" + CANARY}])
    assert alert.emit(args, "critical", "a1/down", "a1 failed", "out <!channel> & `x` ```fence```", agent="a1")
    assert alert.emit(args, "critical", "a1/down", "a1 failed again")       # de-duplicated
    assert alert.resolve(args, "a1/down") and alert.resolve(args, "a1/down")
    records = fake.records()
    assert [r["verdict"] for r in records] == ["ok", "ok"]
    assert [r["status"] for r in records] == [200, 200]
    fire, resolved = (json.loads(r["body"])["text"] for r in records)
    assert fire.startswith("*[CRITICAL] testhost: a1 failed*\nagent: a1\nkey: a1/down")
    assert "&lt;!channel&gt; &amp;" in fire and "<!channel>" not in fire      # no @channel ping from agent output
    assert "```fence```" not in fire.split("```\n", 1)[1]                     # the body cannot close its block
    assert resolved.startswith("*[RESOLVED] testhost: resolved: a1 failed again*")
    assert CANARY not in capsys.readouterr().err
    assert spool_files(args) == []


def test_slack_validator_refuses_what_slack_refuses():
    def judge(raw, ctype="application/json"):
        return fake_endpoint.judge("slack", "POST", "/services/x", "", {"Content-Type": ctype}, raw, {})[:2]
    assert judge(b'{"text": "hi"}') == (200, "ok")
    assert judge(b'{"content": "hi"}') == (400, "no_text")
    assert judge(b'{"text": ""}') == (400, "no_text")
    assert judge(b"not json") == (400, "invalid_payload")
    assert judge(b'{"text": "hi"}', ctype="text/plain") == (400, "invalid_payload")


def test_slack_text_is_bounded():
    msg = alert.build_message({"host": "h"}, "warning", "k", "t", body="&<>" * 5000)
    text = alert.slack_text(msg)
    assert len(text) <= alert.SLACK_LIMIT and text.endswith("[cut]\n```")


# --------------------------------------------------------------------------- discord
def test_discord_content_is_at_most_2000_and_mentions_nobody(tmp_path, fake):
    args = make_args(tmp_path)
    fake.rules([{"path": "^/api/webhooks/", "validate": "discord"}])
    write_config(args, [{"type": "discord", "url": fake.base + "/api/webhooks/1/" + CANARY}])
    assert alert.emit(args, "critical", "k", "@everyone look", "x" * 10000)
    (record,) = fake.records()
    assert record["verdict"] == "ok" and record["status"] == 204
    body = json.loads(record["body"])
    assert len(body["content"]) <= 2000 and body["content"].endswith("[cut]\n```")
    assert body["allowed_mentions"] == {"parse": []}
    assert spool_files(args) == []


def test_discord_validator_refuses_empty_and_long_content():
    def judge(payload):
        return fake_endpoint.judge("discord", "POST", "/api/webhooks/1/x", "", {"Content-Type": "application/json"},
                                   json.dumps(payload).encode(), {})
    assert judge({"content": "ok"})[0] == 204
    assert judge({"content": ""})[1]["code"] == 50006
    assert judge({"username": "x"})[1]["code"] == 50006
    assert judge({"content": "x" * 2001})[:2][0] == 400 and judge({"content": "x" * 2001})[3] == "too_long"


def test_discord_429_retry_after_is_waited_for(tmp_path, fake):
    args = make_args(tmp_path)
    fake.rules([{"path": "^/api/", "status": 429, "times": 1, "body": {"message": "You are being rate limited.",
                                                                       "retry_after": 1.5, "global": False}},
                {"path": "^/api/", "validate": "discord"}])
    write_config(args, [{"type": "discord", "url": fake.base + "/api/webhooks/1/" + CANARY}])
    start = time.monotonic()
    assert alert.emit(args, "warning", "k", "rate limited")
    assert time.monotonic() - start >= 1.5
    records = fake.records()
    assert [r["status"] for r in records] == [429, 204]
    assert records[1]["time"] - records[0]["time"] >= 1.5
    assert spool_files(args) == []


def test_discord_long_retry_after_goes_to_the_spool_with_not_before(tmp_path, fake):
    args = make_args(tmp_path)
    fake.rules([{"path": "^/api/", "status": 429, "times": 1, "headers": {"Retry-After": "120"},
                 "body": {"message": "rate limited", "retry_after": 120.0}},
                {"path": "^/api/", "validate": "discord"}])
    write_config(args, [{"type": "discord", "url": fake.base + "/api/webhooks/1/" + CANARY}],
                 alert_retry_after_max_seconds=1)
    assert alert.emit(args, "critical", "k", "rate limited")
    (path,) = spool_files(args)
    entry = state.read_json(path)
    assert entry["not_before"] >= time.time() + 100 and entry["last_kind"] == "transient"
    assert alert.flush(args) == (0, 1)                      # not before retry_after
    assert alert.flush(args, now=time.time() + 121) == (1, 0)
    assert [r["status"] for r in fake.records()] == [429, 204]


# --------------------------------------------------------------------------- ntfy
def test_ntfy_headers_from_severity_and_bearer_token(tmp_path, fake):
    args = make_args(tmp_path)
    fake.rules([{"path": "^/agent-alerts$", "validate": "ntfy", "token": "tk_" + CANARY}])
    write_config(args, [{"type": "ntfy", "url": fake.base + "/agent-alerts", "token": "tk_" + CANARY}])
    assert alert.emit(args, "critical", "k", "Zürich agent down", "body line")
    assert alert.emit(args, "warning", "w", "disk filling")
    assert alert.resolve(args, "k")
    records = fake.records()
    assert [r["verdict"] for r in records] == ["ok", "ok", "ok"]
    priorities = [r["headers"]["Priority"] for r in records]
    assert priorities == ["5", "4", "3"]
    assert [r["headers"]["Tags"] for r in records] == ["agentops,rotating_light", "agentops,warning",
                                                       "agentops,white_check_mark"]
    title = str(email.header.make_header(email.header.decode_header(records[0]["headers"]["Title"])))
    assert title == "[CRITICAL] testhost: Zürich agent down"
    assert records[0]["headers"]["Authorization"] == "Bearer tk_" + CANARY
    assert "body line" in records[0]["body"] and records[0]["body"].startswith("key: k")


def test_ntfy_wrong_token_is_a_permanent_refusal(tmp_path, fake, capsys):
    args = make_args(tmp_path)
    fake.rules([{"path": "^/t$", "validate": "ntfy", "token": "the-right-one"}])
    write_config(args, [{"type": "ntfy", "url": fake.base + "/t", "token": "tk_" + CANARY}],
                 alert_permanent_failures=1)
    assert alert.emit(args, "critical", "k", "t")
    assert fake.records()[0]["status"] == 401
    assert spool_files(args) == [] and len(spool_files(args, dead=True)) == 1
    err = capsys.readouterr().err
    assert "HTTP 401" in err and CANARY not in err


def test_ntfy_validator():
    def judge(headers, path="/topic", raw=b"x", rule=None):
        return fake_endpoint.judge("ntfy", "POST", path, "", headers, raw, rule or {})[3]
    assert judge({"Priority": "5"}) == "ok"
    assert judge({"Priority": "urgent", "Title": "=?UTF-8?B?WsO8cmljaA==?="}) == "ok"
    assert judge({"Priority": "9"}) == "priority"
    assert judge({"Title": "=?UTF-8?B?***?="}) == "title"
    assert judge({}, path="/bad topic") == "topic"
    assert judge({}, rule={"token": "t"}) == "unauthorized"
    assert judge({}, raw=b"") == "empty"


# --------------------------------------------------------------------------- pagerduty
def test_pagerduty_trigger_and_resolve_share_a_dedup_key(tmp_path, fake):
    args = make_args(tmp_path)
    fake.rules([{"path": "", "validate": "pagerduty"}])
    write_config(args, [{"type": "pagerduty", "routing_key": ROUTING_KEY, "api_url": fake.base + "/"}])
    assert alert.emit(args, "critical", "a1/down", "a1 failed", "journal", agent="a1", unit="agentops-a1.service")
    assert alert.emit(args, "info", "rotated", "token rotated")              # info never pages
    assert alert.resolve(args, "a1/down")
    records = fake.records()
    assert [r["path"] for r in records] == ["/v2/enqueue", "/v2/enqueue"]
    assert [r["verdict"] for r in records] == ["ok", "ok"] and [r["status"] for r in records] == [202, 202]
    trigger, resolve = (json.loads(r["body"]) for r in records)
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"]
    assert trigger["routing_key"] == ROUTING_KEY
    payload = trigger["payload"]
    assert payload["severity"] == "critical" and payload["source"] == "testhost"
    assert payload["summary"] == "[CRITICAL] testhost: a1 failed"
    assert payload["component"] == "a1" and payload["custom_details"]["body"] == "journal"
    assert spool_files(args) == []


def test_pagerduty_dedup_key_differs_per_host_and_warning_maps_to_warning():
    one = alert.build_message({"host": "h1"}, "warning", "mail-triage/down", "t")
    two = alert.build_message({"host": "h2"}, "warning", "mail-triage/down", "t")
    channel = {"routing_key": ROUTING_KEY}
    event_one, event_two = alert.pagerduty_event(channel, one), alert.pagerduty_event(channel, two)
    assert event_one["dedup_key"] != event_two["dedup_key"]
    assert event_one["dedup_key"] == alert.pagerduty_event(channel, dict(one, severity="resolved"))["dedup_key"]
    assert event_one["payload"]["severity"] == "warning"
    assert alert.pagerduty_event(channel, dict(one, severity="info")) is None


def test_pagerduty_validator_refuses_bad_events():
    def verdict(event, path="/v2/enqueue"):
        return fake_endpoint.judge("pagerduty", "POST", path, "", {}, json.dumps(event).encode(), {})
    good = {"routing_key": "k" * 32, "event_action": "trigger", "dedup_key": "d",
            "payload": {"summary": "s", "source": "h", "severity": "critical"}}
    assert verdict(good)[0] == 202
    assert verdict(dict(good, routing_key="short"))[0] == 400
    assert verdict(dict(good, event_action="fire"))[0] == 400
    assert verdict(dict(good, payload={"summary": "s", "source": "h", "severity": "page"}))[0] == 400
    assert verdict({"routing_key": "k" * 32, "event_action": "resolve"})[0] == 400      # dedup_key required
    assert verdict(good, path="/v2/other")[0] == 404


def test_pagerduty_400_is_permanent_and_5xx_spooled_then_flushed_once(tmp_path, fake):
    args = make_args(tmp_path)
    write_config(args, [{"type": "pagerduty", "routing_key": "x" * 31 + "y", "api_url": fake.base}])
    fake.rules([{"path": "", "status": 503, "times": 1}, {"path": "", "validate": "pagerduty"}])
    assert alert.emit(args, "critical", "k", "t")
    assert len(spool_files(args)) == 1
    assert alert.flush(args) == (1, 0)
    assert alert.flush(args) == (0, 0)
    assert [r["status"] for r in fake.records()] == [503, 202]
    fake.rules([{"path": "", "status": 400, "body": {"status": "invalid event", "errors": ["x"]}}])
    assert alert.emit(args, "critical", "k2", "t")
    (path,) = spool_files(args)
    assert state.read_json(path)["last_kind"] == "permanent"


# --------------------------------------------------------------------------- webhook headers
def test_webhook_headers_are_sent_and_never_logged(tmp_path, fake, capsys):
    args = make_args(tmp_path)
    write_config(args, [{"type": "webhook", "url": fake.base + "/hook",
                         "headers": {"Authorization": "Bearer " + CANARY, "X-Tenant": "t1"}}])
    fake.rules([{"path": "^/hook$", "status": 500, "times": 1, "body": "echo Bearer " + CANARY}])
    assert alert.emit(args, "critical", "k", "t")
    assert alert.flush(args) == (1, 0)
    records = fake.records()
    assert records[-1]["headers"]["Authorization"] == "Bearer " + CANARY
    assert records[-1]["headers"]["X-Tenant"] == "t1"
    assert CANARY not in capsys.readouterr().err


# --------------------------------------------------------------------------- e-mail
@pytest.fixture(scope="module", name="test_ca")
def test_ca_fixture(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ca")
    subprocess.run(["sh", os.path.join(SHARED, "make_test_ca.sh"), str(directory)], check=True)
    return directory


class Sink:
    def __init__(self, test_ca, tmp_path, auth=True, tls=True):
        opts = smtp_sink.parser().parse_args(
            ["--port", "0", "--log", str(tmp_path / "smtp.jsonl")]
            + (["--tls-port", "0", "--cert", str(test_ca / "server.crt"), "--key", str(test_ca / "server.key")]
               if tls else [])
            + (["--auth-user", "alerts", "--auth-sha256", hashlib.sha256(SMTP_PASSWORD.encode()).hexdigest()]
               if auth else []))
        self.servers = smtp_sink.servers(opts)
        for server in self.servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        self.log = tmp_path / "smtp.jsonl"

    @property
    def port(self):
        return self.servers[0].server_address[1]

    @property
    def tls_port(self):
        return self.servers[1].server_address[1]

    def messages(self):
        return [m for server in self.servers for m in server.messages]

    def close(self):
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(name="sink")
def sink_fixture(test_ca, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(test_ca / "ca.crt"))      # the test CA is the trust store
    server = Sink(test_ca, tmp_path)
    yield server
    server.close()


def email_channel(sink, **extra):
    channel = {"type": "email", "smtp_host": "localhost", "smtp_port": sink.port, "username": "alerts",
               "password": SMTP_PASSWORD, "from": "alerts@example.com", "to": ["oncall@example.com", "b@example.com"]}
    channel.update(extra)
    return channel


def test_email_over_starttls_with_login_then_one_resolved(tmp_path, sink, capsys):
    args = make_args(tmp_path)
    write_config(args, [email_channel(sink)])
    assert alert.emit(args, "critical", "a1/down", "a1 failed\r\nBcc: evil@example.com", "last lines", agent="a1")
    assert alert.emit(args, "critical", "a1/down", "a1 failed")                # de-duplicated
    assert alert.resolve(args, "a1/down")
    fire, resolved = sink.messages()
    assert fire["starttls"] is True and fire["tls"] is True and fire["auth"] == "alerts"
    assert fire["mail_from"] == "alerts@example.com" and fire["rcpt_to"] == ["oncall@example.com", "b@example.com"]
    mail = email.message_from_string(fire["data"], policy=email.policy.default)
    assert mail["Subject"] == "[CRITICAL] testhost: a1 failed Bcc: evil@example.com"    # no header injection
    assert mail["Bcc"] is None
    assert "last lines" in mail.get_content() and "key: a1/down" in mail.get_content()
    again = email.message_from_string(resolved["data"], policy=email.policy.default)
    assert again["Subject"].startswith("[RESOLVED] testhost: resolved:")
    assert again["References"] == mail["References"]                              # one thread per host and key
    assert stat.S_IMODE(os.stat(sink.log).st_mode) == 0o600
    assert SMTP_PASSWORD not in sink.log.read_text()
    assert CANARY not in capsys.readouterr().err


def test_email_implicit_tls(tmp_path, sink):
    args = make_args(tmp_path)
    write_config(args, [email_channel(sink, security="tls", smtp_port=sink.tls_port)])
    assert alert.emit(args, "warning", "k", "over implicit TLS")
    (message,) = sink.messages()
    assert message["tls"] is True and message["starttls"] is False and message["port"] == sink.tls_port


def test_email_untrusted_certificate_is_not_sent(tmp_path, sink, monkeypatch, capsys):
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.crt")                   # the system store lacks the test CA
    args = make_args(tmp_path)
    write_config(args, [email_channel(sink)])
    assert alert.emit(args, "critical", "k", "t")
    assert sink.messages() == []
    (path,) = spool_files(args)
    entry = state.read_json(path)
    assert "SSLCertVerificationError" in entry["last_error"] and entry["last_kind"] == "transient"
    assert CANARY not in capsys.readouterr().err
    monkeypatch.setenv("SSL_CERT_FILE", str(sink.servers[0].opts.cert).replace("server.crt", "ca.crt"))
    assert alert.flush(args) == (1, 0)                                           # delivered once trusted
    assert len(sink.messages()) == 1


def test_email_starttls_never_falls_back_to_clear_text(tmp_path, test_ca, monkeypatch):
    plain = Sink(test_ca, tmp_path, auth=False, tls=False)
    try:
        args = make_args(tmp_path)
        write_config(args, [{"type": "email", "smtp_host": "127.0.0.1", "smtp_port": plain.port,
                             "from": "a@example.com", "to": ["b@example.com"]}])
        assert alert.emit(args, "critical", "k", "t")
        assert plain.messages() == []
        assert "does not offer STARTTLS" in state.read_json(spool_files(args)[0])["last_error"]
        write_config(args, [{"type": "email", "smtp_host": "127.0.0.1", "smtp_port": plain.port, "security": "none",
                             "from": "a@example.com", "to": ["b@example.com"]}])
        assert alert.emit(args, "critical", "k2", "t")
        assert [m["tls"] for m in plain.messages()] == [False]
    finally:
        plain.close()


def test_email_wrong_password_and_refused_recipient_are_permanent(tmp_path, sink, capsys):
    args = make_args(tmp_path)
    write_config(args, [email_channel(sink, password="wrong-" + CANARY)])
    assert alert.emit(args, "critical", "k", "t")
    entry = state.read_json(spool_files(args)[0])
    assert entry["last_kind"] == "permanent" and "SMTP 535" in entry["last_error"]
    for path in spool_files(args):
        os.unlink(path)
    write_config(args, [email_channel(sink, to=["gone@refused.invalid"])])
    assert alert.emit(args, "critical", "k2", "t")
    entry = state.read_json(spool_files(args)[0])
    assert entry["last_kind"] == "permanent" and "every recipient refused (550)" in entry["last_error"]
    assert sink.messages() == []
    assert CANARY not in capsys.readouterr().err


def test_email_server_down_spools_then_delivers_exactly_once(tmp_path, test_ca, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(test_ca / "ca.crt"))
    first = Sink(test_ca, tmp_path)
    port = first.port
    first.close()                                                                # the server is down
    args = make_args(tmp_path)
    channel = email_channel(first, smtp_port=port)
    write_config(args, [channel])
    assert alert.emit(args, "critical", "k", "while down")
    assert alert.flush(args) == (0, 1)
    opts = smtp_sink.parser().parse_args(["--port", str(port), "--log", "", "--cert", str(test_ca / "server.crt"),
                                          "--key", str(test_ca / "server.key"), "--auth-user", "alerts",
                                          "--auth-sha256", hashlib.sha256(SMTP_PASSWORD.encode()).hexdigest()])
    (back,) = smtp_sink.servers(opts)
    threading.Thread(target=back.serve_forever, daemon=True).start()
    try:
        later = time.time() + 31
        assert alert.flush(args, now=later) == (1, 0)
        assert alert.flush(args, now=later) == (0, 0)
        assert len(back.messages) == 1 and "while down" in back.messages[0]["data"]
    finally:
        back.shutdown()
        back.server_close()


def test_email_deadline_covers_a_silent_server(tmp_path):
    import socket
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)                       # accepts the connection, never greets
    try:
        args = make_args(tmp_path)
        write_config(args, [{"type": "email", "smtp_host": "127.0.0.1", "smtp_port": listener.getsockname()[1],
                             "from": "a@example.com", "to": ["b@example.com"]}], alert_timeout_seconds=1)
        start = time.monotonic()
        assert alert.emit(args, "critical", "k", "t")
        assert time.monotonic() - start < 5
        assert "deadline" in state.read_json(spool_files(args)[0])["last_error"]
    finally:
        listener.close()


def test_smtp_sink_plain_auth_needs_tls(test_ca, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(test_ca / "ca.crt"))
    sink = Sink(test_ca, tmp_path)
    try:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=5) as session:
            session.ehlo()
            assert not session.has_extn("auth") and session.has_extn("starttls")
            assert session.docmd("MAIL", "FROM:<a@example.com>")[0] == 530
    finally:
        sink.close()


# --------------------------------------------------------------------------- secrets everywhere
def test_canaries_stay_out_of_logs_spool_names_and_status(tmp_path, fake, capsys):
    """Every new secret field holds a canary; deliveries fail with answers that echo them: the canary
    is in none of the log lines, spool and dead-letter files (which are 0600) or their names."""
    args = make_args(tmp_path)
    echo = "you sent %s and Bearer tk_%s and %s" % (CANARY, CANARY, ROUTING_KEY)
    fake.rules([{"path": "", "status": 400, "body": {"error": echo, "errors": [echo]}}])
    channels = [
        {"type": "slack", "url": fake.base + "/services/" + CANARY},
        {"type": "discord", "url": fake.base + "/api/webhooks/1/" + CANARY},
        {"type": "ntfy", "url": fake.base + "/topic", "token": "tk_" + CANARY},
        {"type": "pagerduty", "routing_key": ROUTING_KEY, "api_url": fake.base},
        {"type": "webhook", "url": fake.base + "/hook", "headers": {"Authorization": "Bearer " + CANARY}},
        {"type": "email", "smtp_host": "127.0.0.1", "smtp_port": 9, "username": "u", "password": SMTP_PASSWORD,
         "from": "a@example.com", "to": ["b@example.com"]},
    ]
    write_config(args, channels, alert_permanent_failures=2)
    assert alert.emit(args, "critical", "k", "t")
    for _ in range(3):
        alert.flush(args, now=time.time() + 7200)
    err = capsys.readouterr().err
    assert "HTTP 400" in err and "<redacted>" in err
    files = spool_files(args, dead=True)
    assert len(files) >= len(channels)
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        text = open(path, encoding="utf-8").read()
        for secret in (CANARY, ROUTING_KEY, SMTP_PASSWORD):
            assert secret not in path and secret not in text, path
    summary = json.dumps(alert.dead_letter_summary(args))
    for secret in (CANARY, ROUTING_KEY, base64.b64encode(SMTP_PASSWORD.encode()).decode()):
        assert secret not in err and secret not in summary


ROLE_PLAY = """
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.include_role: {name: agentops.fleet.alerts, tasks_from: validate}
    - ansible.builtin.include_role: {name: agentops.fleet.alerts, tasks_from: config}
"""


def test_alerts_role_keeps_every_new_secret_out_of_vvv_and_diff_output(tmp_path):
    """The alerts role's validation and config tasks at -vvv with --diff (twice: a change, then none):
    no canary of any new secret field in the output; agentops.json is root-only and holds them."""
    channels = [
        {"type": "slack", "url": "https://hooks.slack.com/services/T0/B0/" + CANARY},
        {"type": "discord", "url": "https://discord.com/api/webhooks/1/" + CANARY},
        {"type": "ntfy", "url": "https://ntfy.example.com/t", "token": "tk_" + CANARY},
        {"type": "pagerduty", "routing_key": ROUTING_KEY},
        {"type": "email", "smtp_host": "smtp.example.com", "username": "u", "password": SMTP_PASSWORD,
         "from": "a@example.com", "to": ["b@example.com"]},
        {"type": "webhook", "url": "https://hooks.example.com/x", "headers": {"Authorization": "Bearer " + CANARY}},
    ]
    inventory = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
                         "hosts": {"good": {"agentops_alert_channels": channels},
                                   "bad": {"agentops_alert_channels": channels + [
                                       {"type": "ntfy", "url": "https://ntfy.example.com/t",
                                        "token": CANARY + "\r\nX: y"}]}}}}
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    (tmp_path / "play.yml").write_text(ROLE_PLAY)
    config = tmp_path / "etc"
    config.mkdir()
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".cache", "collections"))
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-vvv", "--diff", "-i",
               str(tmp_path / "inventory.json"), "-e", json.dumps({"agentops_paths": {"config": str(config)}}),
               str(tmp_path / "play.yml")]
    outputs = []
    for _ in range(2):
        proc = subprocess.run(command, cwd=ROOT, env=env, text=True, capture_output=True, timeout=300, check=False)
        outputs.append(proc.stdout + proc.stderr)
    assert "bad" in outputs[0] and "(ntfy).token must not contain" in outputs[0]
    import re
    recaps = [dict(re.findall(r"^(good|bad)\s*:\s*ok=\d+\s+changed=(\d+)", o, re.M)) for o in outputs]
    assert recaps == [{"good": "1", "bad": "0"}, {"good": "0", "bad": "0"}], recaps
    for output in outputs:
        for secret in (CANARY, ROUTING_KEY, SMTP_PASSWORD):
            assert secret not in output
    written = config / "agentops.json"
    assert stat.S_IMODE(os.stat(written).st_mode) == 0o600
    data = json.loads(written.read_text())
    assert data["alert_channels"][3]["routing_key"] == ROUTING_KEY
