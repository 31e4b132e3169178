"""Shared helpers of the alert/heartbeat/status unit tests (imported by those test modules).

A real HTTP server on 127.0.0.1 records every request and answers from a rule list, the
same way the Molecule fake endpoint does.
"""
import argparse
import http.server
import json
import os
import threading

import pytest

CANARY = "123456:CANARY-bot-token-s3cr3t"


class Recorder(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port=0):
        self.requests = []
        self.rules = []          # list of dicts: status, body, headers, times, path
        self.lock = threading.Lock()
        http.server.ThreadingHTTPServer.__init__(self, ("127.0.0.1", port), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.server_address[1]

    def bodies(self):
        return [json.loads(r["body"]) for r in self.requests]

    def close(self):
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8")
        server = self.server
        with server.lock:
            server.requests.append({"path": self.path, "body": raw, "headers": dict(self.headers.items())})
            rule = None
            for candidate in server.rules:
                if candidate.get("times", 1) > 0 and candidate.get("path", "") in self.path:
                    rule = candidate
                    if "times" in candidate:
                        candidate["times"] -= 1
                    break
        rule = rule or {"status": 200, "body": {"ok": True, "result": {}}}
        data = json.dumps(rule.get("body", {"ok": True})).encode("utf-8")
        self.send_response(rule.get("status", 200))
        self.send_header("Content-Type", "application/json")
        for key, value in rule.get("headers", {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def recorder():
    server = Recorder()
    yield server
    server.close()


def make_args(tmp_path):
    args = argparse.Namespace(config_dir=str(tmp_path / "etc"), state_dir=str(tmp_path / "state"),
                              spool_dir=str(tmp_path / "spool"))
    for directory in (args.config_dir, args.state_dir, args.spool_dir):
        os.makedirs(directory, exist_ok=True)
    os.makedirs(os.path.join(args.config_dir, "agents.d"), exist_ok=True)
    return args


def write_config(args, channels, **extra):
    data = {"host": "testhost", "alert_channels": channels, "alert_repeat_seconds": 3600,
            "alert_timeout_seconds": 3}
    data.update(extra)
    with open(os.path.join(args.config_dir, "agentops.json"), "w", encoding="utf-8") as handle:
        json.dump(data, handle)


def telegram_channel(server, token=CANARY, chat_id="-1001"):
    return {"type": "telegram", "bot_token": token, "chat_id": chat_id, "api_url": server.base}


def webhook_channel(server, path="/hook"):
    return {"type": "webhook", "url": server.base + path}


def test_recorder_records_requests(recorder):
    """The helper server itself: records a POST and answers from its rules."""
    import urllib.request
    recorder.rules.append({"status": 201, "body": {"ok": True}, "times": 1})
    req = urllib.request.Request(recorder.base + "/x", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=5) as response:
        assert response.status == 201
    assert recorder.requests[0]["path"] == "/x"
