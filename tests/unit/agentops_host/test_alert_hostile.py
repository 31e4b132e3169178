"""The alert path against hostile endpoints: real servers on 127.0.0.1 that answer with deeply
nested JSON, redirects, absurd Retry-After values, permanent 4xx, a one-byte-a-second trickle or a
50 MB body. Each one runs beside a healthy channel that must still get every message exactly once,
and the bounded retry / dead-letter / spool-cap behaviour of ``agentops flush`` is checked.
"""
import argparse
import glob
import http.server
import json
import os
import shutil
import threading
import time

import pytest

from agentops_host import alert
from agentops_host import cli

from test_alert_helpers import make_args, recorder, webhook_channel, write_config  # noqa: F401  (fixture)

SECRET = "hostile-webhook-s3cr3t-CANARY"
TIMEOUT = 2.0                       # alert_timeout_seconds of these tests
SLACK = 1.5                         # what a request may take beyond its deadline


# --------------------------------------------------------------------------- hostile server
class Hostile(http.server.ThreadingHTTPServer):
    """Records every request (method, path, body) and answers through ``behave(handler, request)``."""

    daemon_threads = True

    def __init__(self, behave):
        self.behave = behave
        self.requests = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.sent = 0
        self.send_failed = False
        http.server.ThreadingHTTPServer.__init__(self, ("127.0.0.1", 0), _HostileHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.server_address[1]

    def posts(self):
        return [r for r in self.requests if r["method"] == "POST"]

    def keys(self):
        """Alert keys of the POSTs (webhook JSON, or the text of a Telegram sendMessage)."""
        found = []
        for request in self.posts():
            data = json.loads(request["body"])
            if "key" in data:
                found.append(data["key"])
            else:
                found.append([line[5:] for line in data["text"].splitlines() if line.startswith("key: ")][0])
        return found

    def close(self):
        self.stop.set()
        self.shutdown()
        self.server_close()


class _HostileHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8") if length else ""
        request = {"method": self.command, "path": self.path, "body": body, "headers": dict(self.headers.items())}
        with self.server.lock:
            self.server.requests.append(request)
        self.close_connection = True
        try:
            self.server.behave(self, request)
        except OSError:
            self.server.send_failed = True

    do_POST = _handle   # noqa: N815
    do_GET = _handle    # noqa: N815

    def answer(self, status, body=b"", headers=None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def answer_with(status, body=b"", headers=None):
    return lambda handler, request: handler.answer(status, body, headers)


def deep_json(status, depth):
    """An answer of ``depth`` nested lists, streamed (100000 levels are 200 KB)."""
    def behave(handler, request):
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(2 * depth))
        handler.end_headers()
        for char in (b"[", b"]"):
            left = depth
            while left:
                step = min(left, 65536)
                handler.wfile.write(char * step)
                left -= step
    return behave


def redirect(status):
    def behave(handler, request):
        handler.answer(status, b"", {"Location": "http://127.0.0.1:%d/landing" % handler.server.server_address[1]})
    return behave


def trickle(handler, request):
    """A status line, one byte a second, forever."""
    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" * 100:
        if handler.server.stop.wait(1.0):
            return
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()


def huge(status, size=50 * 1024 * 1024):
    def behave(handler, request):
        handler.send_response(status)
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        chunk = (b"%s " % request["path"].encode()) * 2048
        sent = 0
        while sent < size and not handler.server.stop.is_set():
            piece = chunk[: size - sent]
            handler.wfile.write(piece)
            sent += len(piece)
            with handler.server.lock:
                handler.server.sent += len(piece)
    return behave


def echo_400(handler, request):
    """A permanent refusal that echoes the request (URL with its secret, secret headers) back."""
    handler.answer(400, json.dumps({"error": "bad request", "path": request["path"],
                                    "authorization": request["headers"].get("Authorization"),
                                    "second": request["headers"].get("X-Second")}).encode())


@pytest.fixture
def hostile_server():
    servers = []

    def start(behave):
        server = Hostile(behave)
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.close()


def hostile_webhook(server):
    return {"type": "webhook", "url": server.base + "/hook/" + SECRET}


def hostile_telegram(server):
    return {"type": "telegram", "bot_token": "4242:" + SECRET, "chat_id": "-1", "api_url": server.base}


# --------------------------------------------------------------------------- helpers
def spool_entries(args, channel=None):
    pattern = os.path.join(args.spool_dir, "alerts", alert.channel_id(channel) if channel else "*", "*.json")
    return [json.loads(open(p).read()) for p in sorted(glob.glob(pattern))]


def dead_entries(args, channel=None):
    pattern = os.path.join(args.spool_dir, "alerts", ".dead", alert.channel_id(channel) if channel else "*", "*.json")
    return [json.loads(open(p).read()) for p in sorted(glob.glob(pattern))]


def accepted_keys(rec, failed_first=0):
    """Keys a Recorder took (its first ``failed_first`` requests were answered with an error)."""
    return [b["key"] for b in rec.bodies()[failed_first:]]


def no_secret_anywhere(args, text):
    assert SECRET not in text
    for path in glob.glob(os.path.join(args.spool_dir, "**", "*.json"), recursive=True):
        assert SECRET not in open(path).read(), path
    for path in glob.glob(os.path.join(args.state_dir, "**", "*.json"), recursive=True):
        assert SECRET not in open(path).read(), path


CASES = {
    # name: (behaviour, channel factory, delivered on the hostile channel at once?)
    "deep-json-200-webhook": (lambda: deep_json(200, 100000), hostile_webhook, True),
    "deep-json-200-telegram": (lambda: deep_json(200, 100000), hostile_telegram, True),
    "deep-json-400-within-64k": (lambda: deep_json(400, 30000), hostile_webhook, False),
    "redirect-302": (lambda: redirect(302), hostile_webhook, False),
    "redirect-307": (lambda: redirect(307), hostile_webhook, False),
    "redirect-302-telegram": (lambda: redirect(302), hostile_telegram, False),
    "retry-after-1e12-header": (lambda: answer_with(429, b"{}", {"Retry-After": "1e12"}), hostile_webhook, False),
    "retry-after-1e12-telegram": (lambda: answer_with(429, json.dumps(
        {"ok": False, "error_code": 429, "parameters": {"retry_after": 1e12}}).encode()), hostile_telegram, False),
    "permanent-400-echo": (lambda: echo_400, hostile_webhook, False),
    "trickle": (lambda: trickle, hostile_webhook, False),
    "huge-body-500": (lambda: huge(500), hostile_webhook, False),
    "huge-body-200": (lambda: huge(200), hostile_webhook, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_channel_never_stops_the_healthy_one(case, tmp_path, recorder, hostile_server, capsys):
    behaviour, factory, takes = CASES[case]
    server = hostile_server(behaviour())
    args = make_args(tmp_path)
    bad = factory(server)
    good = webhook_channel(recorder)
    write_config(args, [bad, good], alert_timeout_seconds=TIMEOUT)
    recorder.rules.append({"status": 503, "times": 2, "body": {}})   # the healthy one is down at first

    for key, severity in (("k1", "critical"), ("k2", "warning")):
        start = time.monotonic()
        assert alert.emit(args, severity, key, "%s fired" % key, "body of %s" % key) is True
        assert time.monotonic() - start < TIMEOUT + SLACK, "one delivery held past its deadline"
    assert len(spool_entries(args, good)) == 2                  # both spooled for the healthy channel
    hostile_spooled = spool_entries(args, bad)
    assert len(hostile_spooled) == (0 if takes else 2)
    assert server.keys() == ["k1", "k2"]

    start = time.monotonic()
    delivered, _remaining = alert.flush(args, now=time.time() + 1)
    assert time.monotonic() - start < TIMEOUT + SLACK
    assert delivered == 2
    assert alert.flush(args, now=time.time() + 2)[0] == 0
    assert accepted_keys(recorder, failed_first=2) == ["k1", "k2"]      # every message, exactly once
    assert spool_entries(args, good) == []

    # nothing reached a redirect target; the hostile answers never became a "delivery"
    assert [r for r in server.requests if r["path"] == "/landing"] == []
    for entry in spool_entries(args, bad):
        assert len(entry["last_error"]) < 400
        assert 0 <= entry["not_before"] - entry["last_attempt"] <= alert.RETRY_AFTER_MAX + 1
    err = capsys.readouterr().err
    no_secret_anywhere(args, err)
    assert "Traceback" not in err

    if case.startswith("redirect"):
        assert all("redirect, not followed" in e["last_error"] for e in spool_entries(args, bad))
    if case.startswith("retry-after"):
        for entry in spool_entries(args, bad):
            assert entry["not_before"] - entry["last_attempt"] == pytest.approx(alert.RETRY_AFTER_MAX, abs=1)
        assert server.keys() == ["k1", "k2"]                    # not retried before the (clamped) wait
    if case in ("permanent-400-echo", "deep-json-400-within-64k"):
        # a permanent 4xx of the first message does not block the one behind it
        assert server.keys() == ["k1", "k2", "k1", "k2"]
        assert [e["permanent_failures"] for e in spool_entries(args, bad)] == [2, 2]
        assert [e["last_kind"] for e in spool_entries(args, bad)] == ["permanent", "permanent"]
    if case == "trickle":
        assert server.keys() == ["k1", "k2", "k1"]              # a transient failure ends this channel's pass
    if case.startswith("huge"):
        assert server.sent < 50 * 1024 * 1024 and server.send_failed
    if takes:
        assert alert.dead_letter_count(args) == 0


def test_deep_json_answer_is_not_parsed_recursively():
    deep = b"[" * 100000 + b"]" * 100000
    assert alert.parse_answer(deep) == (None, deep.decode())
    assert alert.parse_answer(b'{"ok": true, "a": [[1]]}')[0] == {"ok": True, "a": [[1]]}
    assert alert.parse_answer(b'{"a": "' + b"[" * 100 + b'"}')[0] == {"a": "[" * 100}    # brackets in a string


@pytest.mark.parametrize("value, expected", [
    ("1e12", 3600.0), (1e12, 3600.0), ("inf", 3600.0), (float("inf"), 3600.0), (10 ** 400, 3600.0),
    ("-5", 0.0), (-5, 0.0), ("nan", None), (float("nan"), None), ("soon", None), (None, None), (True, None),
    ("120", 120.0), (2, 2.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
])
def test_retry_after_is_clamped(value, expected):
    assert alert.clamp_retry_after(value) == expected


def test_retry_after_http_date_in_the_future():
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 600))
    assert 590 <= alert.clamp_retry_after(date) <= 601
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10 * 86400))
    assert alert.clamp_retry_after(date) == alert.RETRY_AFTER_MAX


def test_backoff_is_bounded_with_jitter():
    for failures in range(1, 60):
        step = min(alert.BACKOFF_MAX, alert.BACKOFF_BASE * 2 ** (failures - 1))
        values = [alert.backoff(failures) for _ in range(50)]
        assert all(step / 2 <= v <= step for v in values)
        assert max(values) <= 3600
    assert len({round(alert.backoff(3), 6) for _ in range(20)}) > 1        # jitter


def test_spooled_retries_back_off_and_honour_a_longer_retry_after(tmp_path, recorder):
    args = make_args(tmp_path)
    channel = webhook_channel(recorder)
    write_config(args, [channel])
    recorder.rules.append({"status": 503, "times": 1000, "body": {}})
    assert alert.emit(args, "critical", "k", "down")
    now = time.time()
    delays = []
    for _ in range(12):
        now = max(now, spool_entries(args, channel)[0]["not_before"]) + 0.001
        assert alert.flush(args, now=now) == (0, 1)
        entry = spool_entries(args, channel)[0]
        delays.append(entry["not_before"] - now)
    for retry, delay in enumerate(delays, start=1):
        step = min(3600, 30 * 2 ** (retry - 1))
        assert step / 2 <= delay <= step, (retry, delays)
    assert entry["attempts"] == 13
    # a retry_after longer than the backoff step wins (clamped to 1 h)
    recorder.rules[:] = [{"status": 503, "times": 1, "body": {}, "headers": {"Retry-After": "900"}},
                         {"status": 429, "times": 1, "body": {}, "headers": {"Retry-After": "1e12"}}]
    write_config(args, [channel])
    alert.flush(args, now=entry["not_before"] + 1)
    entry2 = spool_entries(args, channel)[0]
    assert entry2["not_before"] - entry2["last_attempt"] >= 900
    alert.flush(args, now=entry2["not_before"] + 1)
    entry3 = spool_entries(args, channel)[0]
    assert entry3["not_before"] - entry3["last_attempt"] == pytest.approx(3600, abs=1)


def test_outage_gives_up_by_age_only(tmp_path, recorder):
    """20 failed retries within 24 h keep the message; past alert_max_age_seconds it is dead-lettered."""
    args = make_args(tmp_path)
    port = recorder.server_address[1]
    recorder.close()                                         # the receiver is down
    down = {"type": "webhook", "url": "http://127.0.0.1:%d/hook" % port}
    write_config(args, [down])
    assert alert.emit(args, "critical", "k", "outage")
    first = spool_entries(args, down)[0]["first_attempt"]
    now = first
    for _ in range(20):
        now = spool_entries(args, down)[0]["not_before"] + 1
        assert now - first < 86400
        assert alert.flush(args, now=now) == (0, 1)
    assert spool_entries(args, down)[0]["attempts"] == 21
    assert alert.dead_letter_count(args) == 0
    assert alert.flush(args, now=first + 86400 + 1) == (0, 0)
    dead = dead_entries(args, down)
    assert len(dead) == 1 and dead[0]["message"]["key"] == "k"
    assert "alert_max_age_seconds=86400" in dead[0]["dead_letter"]["reason"]
    assert alert.dead_letter_count(args) == 1
    summary = alert.dead_letter_summary(args)
    assert summary["dead_letter"] == 1 and summary["spooled"] == 0
    assert summary["channels"][alert.channel_id(down)]["dead_letter"] == 1
    assert "1 given up" in alert.spool_status_line(args)


def test_permanent_4xx_dead_letters_one_message_and_alerts_once_through_the_working_channel(
        tmp_path, recorder, hostile_server, capsys):
    state = {"requests": 0}

    def behave(handler, request):
        state["requests"] += 1
        if state["requests"] <= 3:
            handler.answer(503, b"{}")                       # down while k1..k3 are raised
        elif json.loads(request["body"])["key"] == "k1":
            handler.answer(400, b'{"error": "this one is refused"}')
        else:
            handler.answer(200, b"{}")
    server = hostile_server(behave)
    args = make_args(tmp_path)
    bad, good = hostile_webhook(server), webhook_channel(recorder)
    write_config(args, [bad, good], alert_timeout_seconds=TIMEOUT)
    for key in ("k1", "k2", "k3"):
        alert.emit(args, "critical", key, key)
    now = time.time() + 1
    assert alert.flush(args, now=now) == (2, 1)              # k1 refused, k2 and k3 behind it delivered
    now += 3600
    assert alert.flush(args, now=now) == (0, 1)
    assert alert.dead_letter_count(args) == 0
    now += 3600
    assert alert.flush(args, now=now) == (0, 0)              # third permanent answer in a row: given up
    assert server.keys() == ["k1", "k2", "k3", "k1", "k2", "k3", "k1", "k1"]
    dead = dead_entries(args, bad)
    assert [d["message"]["key"] for d in dead] == ["k1"]
    assert "permanent failure answered 3 time(s) in a row: HTTP 400" in dead[0]["dead_letter"]["reason"]
    key = "host/alert-dead-letter:%s" % alert.channel_id(bad)
    assert accepted_keys(recorder) == ["k1", "k2", "k3", key]       # the alert, once, through the other channel
    assert key not in server.keys()
    no_secret_anywhere(args, capsys.readouterr().err)


def test_dead_letter_alert_is_deduplicated_and_resolved_when_the_folder_is_empty(tmp_path, recorder, hostile_server):
    server = hostile_server(answer_with(403, b'{"error": "forbidden"}'))
    args = make_args(tmp_path)
    bad, good = hostile_webhook(server), webhook_channel(recorder)
    write_config(args, [bad, good], alert_timeout_seconds=TIMEOUT, alert_permanent_failures=1)
    for key in ("k1", "k2", "k3"):
        assert alert.emit(args, "critical", key, key)
    key = "host/alert-dead-letter:%s" % alert.channel_id(bad)
    assert accepted_keys(recorder) == ["k1", key, "k2", "k3"]     # once, right after the first dead letter
    assert [d["message"]["key"] for d in dead_entries(args, bad)] == ["k1", "k2", "k3"]
    assert spool_entries(args, bad) == []
    assert key not in server.keys()
    alert.flush(args)
    assert len(recorder.requests) == 4                       # still open: nothing new
    # the operator takes the dead letters away: the alert resolves, once
    folder = os.path.join(args.spool_dir, "alerts", ".dead", alert.channel_id(bad))
    shutil.move(folder, str(tmp_path / "kept"))
    alert.flush(args)
    alert.flush(args)
    bodies = recorder.bodies()
    assert [(b["key"], b["severity"]) for b in bodies[4:]] == [(key, "resolved")]


def test_requeued_dead_letter_is_delivered(tmp_path, recorder):
    args = make_args(tmp_path)
    channel = webhook_channel(recorder)
    write_config(args, [channel], alert_permanent_failures=1)
    recorder.rules.append({"status": 404, "times": 1, "body": {}})
    alert.emit(args, "critical", "k", "refused once")
    assert alert.dead_letter_count(args) == 1
    cid = alert.channel_id(channel)
    for path in glob.glob(os.path.join(args.spool_dir, "alerts", ".dead", cid, "*.json")):
        os.rename(path, os.path.join(args.spool_dir, "alerts", cid, os.path.basename(path)))
    assert alert.flush(args) == (1, 0)
    assert accepted_keys(recorder, failed_first=1) == ["k"]


def test_spool_cap_moves_info_then_warnings_never_criticals(tmp_path, recorder):
    args = make_args(tmp_path)
    down = {"type": "webhook", "url": "http://127.0.0.1:9/down"}
    good = webhook_channel(recorder)
    write_config(args, [down, good], alert_spool_max=3)
    alert.emit(args, "info", "i1", "i1")
    alert.emit(args, "warning", "w1", "w1")
    alert.emit(args, "critical", "c1", "c1")
    alert.emit(args, "critical", "c2", "c2")                 # 4 > 3: the oldest info goes
    assert [e["message"]["key"] for e in spool_entries(args, down)] == ["w1", "c1", "c2"]
    alert.emit(args, "info", "i2", "i2")                     # info before warnings
    assert [e["message"]["key"] for e in spool_entries(args, down)] == ["w1", "c1", "c2"]
    alert.emit(args, "critical", "c3", "c3")                 # then warnings
    assert [e["message"]["key"] for e in spool_entries(args, down)] == ["c1", "c2", "c3"]
    alert.emit(args, "critical", "c4", "c4")                 # criticals never
    assert [e["message"]["key"] for e in spool_entries(args, down)] == ["c1", "c2", "c3", "c4"]
    dead = dead_entries(args, down)
    assert sorted(d["message"]["key"] for d in dead) == ["i1", "i2", "w1"]
    assert all("spool cap of 3" in d["dead_letter"]["reason"] for d in dead)
    key = "host/alert-dead-letter:%s" % alert.channel_id(down)
    keys = accepted_keys(recorder)
    assert keys.count(key) == 1                              # one alert, through the working channel
    assert [k for k in keys if k != key] == ["i1", "w1", "c1", "c2", "i2", "c3", "c4"]
    # flush keeps the cap too (a message spooled while a flush held the lock)
    assert alert.flush(args)[1] == 4


class _Boom(Exception):
    pass


@pytest.mark.parametrize("error", [RecursionError, MemoryError, UnicodeError, _Boom])
def test_any_exception_is_one_messages_failure(error, tmp_path, recorder, monkeypatch):
    """An exception no endpoint can be made to raise on demand (MemoryError, ...) from a sender of a
    test-only channel type, for one message: the other channel and the other spooled message go on."""
    calls = []

    def sender(channel, msg, timeout, max_wait=None, sleep=None):
        calls.append(msg["key"])
        if msg["key"] == "k1" or calls.count(msg["key"]) == 1:
            raise error("boom with %s inside" % SECRET)
        return "ok"
    monkeypatch.setitem(alert.SENDERS, "raising", sender)
    args = make_args(tmp_path)
    raising = {"type": "raising", "command": "/x", "token": SECRET}
    good = webhook_channel(recorder)
    write_config(args, [raising, good])
    recorder.rules.append({"status": 503, "times": 2, "body": {}})
    assert alert.emit(args, "critical", "k1", "one")
    assert alert.emit(args, "critical", "k2", "two")
    assert [e["message"]["key"] for e in spool_entries(args, raising)] == ["k1", "k2"]
    assert alert.flush(args, now=time.time() + 1) == (3, 1)   # k1 fails again; k2 behind it is not blocked
    assert calls == ["k1", "k2", "k1", "k2"]
    assert accepted_keys(recorder, failed_first=2) == ["k1", "k2"]
    entry = spool_entries(args, raising)[0]
    assert entry["last_kind"] == "error" and error.__name__ in entry["last_error"]
    assert SECRET not in json.dumps(entry)


def test_trickle_is_bounded_by_one_deadline(tmp_path, hostile_server):
    server = hostile_server(trickle)
    args = make_args(tmp_path)
    channel = hostile_webhook(server)
    write_config(args, [channel], alert_timeout_seconds=TIMEOUT)
    start = time.monotonic()
    assert alert.emit(args, "critical", "k", "slow")
    elapsed = time.monotonic() - start
    assert TIMEOUT - 0.2 <= elapsed < TIMEOUT + SLACK
    assert "deadline of 2s" in spool_entries(args, channel)[0]["last_error"]


def test_header_with_crlf_is_refused_before_sending(tmp_path, recorder, hostile_server, capsys):
    server = hostile_server(echo_400)
    args = make_args(tmp_path)
    injected = {"type": "webhook", "url": recorder.base + "/injected",
                "headers": {"X-Token": SECRET + "\r\nX-Injected: yes"}}
    echoing = {"type": "webhook", "url": server.base + "/echo", "headers": {"Authorization": "Bearer " + SECRET,
                                                                          "X-Second": "second-" + SECRET}}
    good = webhook_channel(recorder, path="/good")
    write_config(args, [injected, echoing, good])
    assert alert.emit(args, "critical", "k", "headers")
    assert [r["path"] for r in recorder.requests] == ["/good"]            # nothing sent with the bad header
    assert server.posts()[0]["headers"]["Authorization"] == "Bearer " + SECRET
    refused = spool_entries(args, injected)[0]
    assert "header X-Token" in refused["last_error"] and "control character" in refused["last_error"]
    echoed = spool_entries(args, echoing)[0]
    assert "HTTP 400" in echoed["last_error"] and "<redacted>" in echoed["last_error"]
    no_secret_anywhere(args, capsys.readouterr().err)


def test_command_channel_output_flood_and_escaped_child_are_bounded(tmp_path, recorder):
    args = make_args(tmp_path)
    flood = tmp_path / "flood.sh"
    flood.write_text("#!/bin/sh\ncat >/dev/null\nyes %s | head -c 200000000\nexit 3\n" % SECRET)
    flood.chmod(0o755)
    escape = tmp_path / "escape.sh"
    escape.write_text("#!/bin/sh\ncat >/dev/null\nsetsid sleep 30 &\nexit 0\n")
    escape.chmod(0o755)
    write_config(args, [{"type": "command", "command": str(flood), "token": SECRET},
                        {"type": "command", "command": str(escape)}, webhook_channel(recorder)],
                 alert_timeout_seconds=5)
    start = time.monotonic()
    assert alert.emit(args, "critical", "k", "commands")
    assert time.monotonic() - start < 5 + 2 * SLACK
    entries = spool_entries(args)
    assert len(entries) == 1                                  # the escaping command's message was delivered
    assert entries[0]["last_error"].startswith("command exited 3") or "timed out" in entries[0]["last_error"]
    assert len(entries[0]["last_error"]) < 300 and SECRET not in entries[0]["last_error"]
    assert accepted_keys(recorder) == ["k"]


# --------------------------------------------------------------------------- agentops failure
FAKE_SYSTEMCTL = """#!/bin/sh
for last; do :; done
cat "%s/$last.props"
"""


@pytest.fixture
def units(tmp_path, monkeypatch):
    directory = tmp_path / "units"
    directory.mkdir()
    script = tmp_path / "systemctl"
    script.write_text(FAKE_SYSTEMCTL % directory)
    script.chmod(0o755)
    journal = tmp_path / "journalctl"
    journal.write_text("#!/bin/sh\necho 'last line of the unit'\n")
    journal.chmod(0o755)
    monkeypatch.setattr(alert.systemd, "SYSTEMCTL", str(script))
    monkeypatch.setattr(alert.systemd, "JOURNALCTL", str(journal))

    def set_unit(unit, active="failed", sub="failed", restarts=5):
        (directory / (unit + ".props")).write_text("Id=%s\nActiveState=%s\nSubState=%s\nNRestarts=%d\nResult=exit-code\n"
                                                   % (unit, active, sub, restarts))
    return set_unit


def test_failure_is_deduplicated(tmp_path, recorder, units):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)], alert_repeat_seconds=3600)
    with open(os.path.join(args.config_dir, "agents.d", "a1.json"), "w", encoding="utf-8") as handle:
        json.dump({"name": "a1"}, handle)
    units("agentops-a1.service")
    units("agentops-heartbeat.service")
    base = ["--config-dir", args.config_dir, "--state-dir", args.state_dir, "--spool-dir", args.spool_dir]
    for _ in range(5):                                       # fails at every tick
        assert cli.main(base + ["failure", "agentops-a1.service"]) == 0
        assert alert.failure(args, "agentops-heartbeat.service")
    assert accepted_keys(recorder) == ["a1/down", "unit/agentops-heartbeat.service/down"]
    units("agentops-a1.service", active="activating", sub="auto-restart")
    for _ in range(3):                                       # crash loop (systemd >= 254 runs OnFailure= each time)
        assert alert.failure(args, "agentops-a1.service")
    assert accepted_keys(recorder)[2:] == ["a1/crashloop"]
    # the incident ends (the heartbeat resolves the key), the next failure is a new one
    assert alert.resolve(args, "unit/agentops-heartbeat.service/down", title="runs again")
    assert alert.failure(args, "agentops-heartbeat.service")
    assert accepted_keys(recorder)[3:] == ["unit/agentops-heartbeat.service/down"] * 2
    # reminders still go out once the repeat interval passed
    write_config(args, [webhook_channel(recorder)], alert_repeat_seconds=0)
    units("agentops-a1.service")
    assert alert.failure(args, "agentops-a1.service")
    assert recorder.bodies()[-1]["key"] == "a1/down" and recorder.bodies()[-1]["reminder"] is True


def test_unsent_alert_is_sent_again_at_the_next_emit(tmp_path, recorder):
    """Neither delivered nor spooled (the spool cannot be written): the key is not marked as sent."""
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)], alert_repeat_seconds=3600)
    recorder.rules.append({"status": 503, "times": 2, "body": {}})
    with open(os.path.join(args.spool_dir, "alerts"), "w", encoding="utf-8") as handle:
        handle.write("not a folder")
    assert alert.emit(args, "critical", "k", "first try") is False
    assert alert.emit(args, "critical", "k", "second try") is False
    os.unlink(os.path.join(args.spool_dir, "alerts"))
    assert alert.emit(args, "critical", "k", "third try") is True
    assert alert.emit(args, "critical", "k", "fourth: a duplicate") is True
    bodies = recorder.bodies()
    assert [b["title"] for b in bodies] == ["first try", "second try", "third try"]
    assert bodies[2]["reminder"] is False


def test_status_figures_without_anything_spooled(tmp_path):
    args = make_args(tmp_path)
    assert alert.dead_letter_count(args) == 0
    assert alert.spooled_count(args) == 0
    assert alert.spool_status_line(args) is None
    assert alert.dead_letter_summary(argparse.Namespace(**vars(args)))["channels"] == {}


# --------------------------------------------------------------------------- TLS
@pytest.fixture
def tls_cert(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    import subprocess
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def test_https_is_verified_and_bounded(tmp_path, tls_cert, recorder, monkeypatch):
    import socket
    import ssl
    cert, key = tls_cert
    server = Hostile(answer_with(200, b'{"ok": true}'))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    silent = socket.socket()                                 # accepts, never says a word of TLS
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        args = make_args(tmp_path)
        tls = {"type": "webhook", "url": "https://127.0.0.1:%d/hook/%s" % (server.server_address[1], SECRET)}
        mute = {"type": "webhook", "url": "https://127.0.0.1:%d/hook" % silent.getsockname()[1]}
        write_config(args, [tls, mute, webhook_channel(recorder)], alert_timeout_seconds=TIMEOUT)
        start = time.monotonic()
        assert alert.emit(args, "critical", "k1", "not trusted")
        assert time.monotonic() - start < TIMEOUT + SLACK
        assert "CERTIFICATE_VERIFY_FAILED" in spool_entries(args, tls)[0]["last_error"]
        assert "deadline of 2s" in spool_entries(args, mute)[0]["last_error"]
        assert server.posts() == []
        monkeypatch.setenv("SSL_CERT_FILE", cert)            # the test CA trusted: delivered
        assert alert.emit(args, "critical", "k2", "trusted")
        assert server.keys() == ["k2"]
        assert accepted_keys(recorder) == ["k1", "k2"]
    finally:
        server.close()
        silent.close()
