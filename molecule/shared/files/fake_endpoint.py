#!/usr/bin/python3
"""Test double for Telegram, webhook and token endpoints (loopback only).

usage: agentops-fake-endpoint PORT
  Listens on 127.0.0.1:PORT. Every HTTP request is appended as one JSON line
  {"time", "method", "path", "query", "headers", "body"} to
  /var/log/agentops-fake-endpoint/PORT.jsonl. Responses follow the rules in
  /etc/agentops-fake-endpoint/PORT.json, re-read on every request: a JSON list,
  first match wins, each {"path": regex, "method": optional, "status": 200,
  "body": json-or-string, "delay": seconds, "headers": {}, "times": N}.
  Without a matching rule: 200 {"ok": true, "result": {}}.
"""
import http.server
import json
import os
import re
import sys
import threading
import time

PORT = int(sys.argv[1])
LOG_DIR = os.environ.get("FAKE_ENDPOINT_LOG_DIR", "/var/log/agentops-fake-endpoint")
RULE_DIR = os.environ.get("FAKE_ENDPOINT_RULE_DIR", "/etc/agentops-fake-endpoint")
LOG = os.path.join(LOG_DIR, "%d.jsonl" % PORT)
RULES = os.path.join(RULE_DIR, "%d.json" % PORT)
LOCK = threading.Lock()
USED = {}  # rule index -> times used (reset when the rules file changes)
RULES_MTIME = [None]


def load_rules():
    try:
        mtime = os.stat(RULES).st_mtime_ns
        with open(RULES, encoding="utf-8") as handle:
            rules = json.load(handle)
    except (FileNotFoundError, ValueError):
        return []
    if mtime != RULES_MTIME[0]:
        RULES_MTIME[0] = mtime
        USED.clear()
    return rules


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep the journal quiet: requests go to the JSONL log
        pass

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        with LOCK:
            rules = load_rules()
            chosen = None
            for index, rule in enumerate(rules):
                if rule.get("method") and rule["method"].upper() != self.command:
                    continue
                if not re.search(rule.get("path", ""), path):
                    continue
                if "times" in rule and USED.get(index, 0) >= int(rule["times"]):
                    continue
                USED[index] = USED.get(index, 0) + 1
                chosen = rule
                break
            record = {
                "time": time.time(),
                "method": self.command,
                "path": path,
                "query": query,
                "headers": dict(self.headers.items()),
                "body": raw.decode("utf-8", "replace"),
                "status": (chosen or {}).get("status", 200),
            }
            os.makedirs(LOG_DIR, exist_ok=True)
            with open(LOG, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        rule = chosen or {"status": 200, "body": {"ok": True, "result": {}}}
        if rule.get("delay"):
            time.sleep(float(rule["delay"]))
        body = rule.get("body", "")
        if not isinstance(body, str):
            body = json.dumps(body)
        data = body.encode("utf-8")
        try:
            self.send_response(int(rule.get("status", 200)))
            self.send_header("Content-Type", "application/json")
            for key, value in rule.get("headers", {}).items():
                self.send_header(key, str(value))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


if __name__ == "__main__":
    Server(("127.0.0.1", PORT), Handler).serve_forever()
