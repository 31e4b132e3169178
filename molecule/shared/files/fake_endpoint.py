#!/usr/bin/python3
"""Test double for Telegram, webhook, token, chat, push, paging and ping endpoints (loopback only).

usage: agentops-fake-endpoint PORT
  Listens on 127.0.0.1:PORT. Every HTTP request is appended as one JSON line
  {"time", "method", "path", "query", "headers", "body", "status", "verdict"} to
  /var/log/agentops-fake-endpoint/PORT.jsonl. Responses follow the rules in
  /etc/agentops-fake-endpoint/PORT.json, re-read on every request: a JSON list,
  first match wins, each {"path": regex, "method": optional, "status": 200,
  "body": json-or-string, "delay": seconds, "headers": {}, "times": N,
  "validate": optional service, "token": optional}.
  Without a matching rule: 200 {"ok": true, "result": {}}.

  "validate" makes the rule answer like that service does: a request the real
  service would refuse gets the service's error status and body (the log line's
  "verdict" says why), a valid one the service's success answer (or the rule's own
  "status"/"body" when the rule has them, e.g. a 429 or a 503). Services:
    slack       incoming webhook: JSON with a non-empty "text" (or blocks/attachments),
                else 400 "invalid_payload" / "no_text"; 200 "ok"
    discord     webhook: JSON "content" 1..2000 characters (or embeds), else 400 JSON
                (code 50006 empty message, 50035 too long, 50109 bad JSON); 204
    ntfy        POST <topic>: topic [-_A-Za-z0-9]{1,64}, Priority 1-5 or min/low/default/
                high/max/urgent (else 400 code 40007), an RFC 2047 Title must decode, with
                "token": Authorization: Bearer <token> (else 401 code 40101); 200 JSON message
    pagerduty   POST /v2/enqueue: Events API v2 (routing_key of 32 characters, event_action
                trigger|acknowledge|resolve, dedup_key <= 255 (required unless trigger),
                payload.summary/source/severity (critical|error|warning|info) for trigger),
                else 400 {"status": "invalid event", "errors": [...]}; 202 success
    healthchecks  <uuid>[/start|/fail|/log|/<exit status>]: 200 "OK" (GET, HEAD or POST)
    uptime_kuma   push?status=up|down&msg=...: {"ok": true}, a bad status {"ok": false}
    cronitor      ?state=run|complete|fail: 200, another state 400
"""
import base64
import binascii
import http.server
import json
import os
import re
import sys
import threading
import time
import urllib.parse

LOG_DIR = os.environ.get("FAKE_ENDPOINT_LOG_DIR", "/var/log/agentops-fake-endpoint")
RULE_DIR = os.environ.get("FAKE_ENDPOINT_RULE_DIR", "/etc/agentops-fake-endpoint")
LOCK = threading.Lock()
USED = {}  # rule index -> times used (reset when the rules file changes)
RULES_MTIME = [None]
PORT = LOG = RULES = None


def _json(raw):
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeError, ValueError):
        return None


def _is_json_request(headers):
    return str(headers.get("Content-Type", "")).split(";")[0].strip().lower() == "application/json"


def validate_slack(method, path, headers, raw, rule):
    if method != "POST":
        return 405, "invalid_method", "text/html", "invalid_method"
    body = _json(raw) if _is_json_request(headers) else None
    if not isinstance(body, dict):
        return 400, "invalid_payload", "text/html", "invalid_payload"
    if not (isinstance(body.get("text"), str) and body["text"].strip()) and not body.get("blocks") \
            and not body.get("attachments"):
        return 400, "no_text", "text/html", "no_text"
    return 200, "ok", "text/html", "ok"


def validate_discord(method, path, headers, raw, rule):
    if method != "POST":
        return 405, {"message": "405: Method Not Allowed", "code": 0}, "application/json", "method"
    body = _json(raw) if _is_json_request(headers) else None
    if not isinstance(body, dict):
        return 400, {"code": 50109, "message": "The request body contains invalid JSON."}, "application/json", \
            "invalid_json"
    content = body.get("content")
    if content is not None and not isinstance(content, str):
        return 400, {"code": 50035, "message": "Invalid Form Body"}, "application/json", "content_type"
    if not (content or "").strip() and not body.get("embeds"):
        return 400, {"message": "Cannot send an empty message", "code": 50006}, "application/json", "empty"
    if content is not None and len(content) > 2000:
        return 400, {"code": 50035, "message": "Invalid Form Body", "errors": {"content": {"_errors": [
            {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]}}}, \
            "application/json", "too_long"
    return 204, "", "application/json", "ok"


NTFY_PRIORITIES = ("1", "2", "3", "4", "5", "min", "low", "default", "high", "max", "urgent")


def _rfc2047_ok(value):
    match = re.match(r"^=\?([^?]+)\?([BbQq])\?([^?]*)\?=$", value)
    if not match:
        return "=?" not in value
    try:
        if match.group(2).upper() == "B":
            base64.b64decode(match.group(3), validate=True).decode(match.group(1))
        return True
    except (binascii.Error, UnicodeError, LookupError):
        return False


def validate_ntfy(method, path, headers, raw, rule):
    def error(status, code, text, verdict):
        return status, {"code": code, "http": status, "error": text}, "application/json", verdict
    topic = path.strip("/")
    if method not in ("POST", "PUT") or not re.match(r"^[-_A-Za-z0-9]{1,64}\Z", topic):
        return error(404, 40401, "page not found", "topic")
    if rule.get("token") and headers.get("Authorization") != "Bearer %s" % rule["token"]:
        return error(401, 40101, "unauthorized", "unauthorized")
    priority = headers.get("Priority") or headers.get("X-Priority")
    if priority is not None and priority.strip().lower() not in NTFY_PRIORITIES:
        return error(400, 40007, "invalid request: priority invalid", "priority")
    title = headers.get("Title") or headers.get("X-Title") or ""
    if not _rfc2047_ok(title):
        return error(400, 40000, "invalid request: title", "title")
    if not raw:
        return error(400, 40000, "invalid request: empty message", "empty")
    return 200, {"id": "fake%d" % int(time.time() * 1000), "time": int(time.time()), "event": "message",
                 "topic": topic, "message": raw.decode("utf-8", "replace")[:4096]}, "application/json", "ok"


PD_SEVERITIES = ("critical", "error", "warning", "info")


def validate_pagerduty(method, path, headers, raw, rule):
    def invalid(*errors):
        return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": list(errors)}, \
            "application/json", "; ".join(errors)
    if path != "/v2/enqueue":
        return 404, {"status": "not found"}, "application/json", "path"
    if method != "POST":
        return 405, {"status": "method not allowed"}, "application/json", "method"
    event = _json(raw)
    if not isinstance(event, dict):
        return invalid("Request body is not a JSON object")
    errors = []
    key = event.get("routing_key")
    if not isinstance(key, str) or len(key) != 32:
        errors.append("'routing_key' must be a 32 character string")
    action = event.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        errors.append("'event_action' is invalid (must be one of: trigger, acknowledge, resolve)")
    dedup = event.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or not dedup or len(dedup) > 255):
        errors.append("'dedup_key' must be a non-empty string of at most 255 characters")
    if action in ("acknowledge", "resolve") and dedup is None:
        errors.append("'dedup_key' is required for %s" % action)
    if action == "trigger":
        payload = event.get("payload")
        if not isinstance(payload, dict):
            errors.append("'payload' is missing or not an object")
        else:
            summary = payload.get("summary")
            if not isinstance(summary, str) or not summary or len(summary) > 1024:
                errors.append("'payload.summary' is missing or longer than 1024 characters")
            if not isinstance(payload.get("source"), str) or not payload["source"]:
                errors.append("'payload.source' is missing")
            if payload.get("severity") not in PD_SEVERITIES:
                errors.append("'payload.severity' must be one of: critical, error, warning, info")
    if errors:
        return invalid(*errors)
    return 202, {"status": "success", "message": "Event processed", "dedup_key": dedup or "generated"}, \
        "application/json", "ok"


def validate_healthchecks(method, path, headers, raw, rule):
    if method not in ("GET", "HEAD", "POST"):
        return 405, "method not allowed", "text/plain", "method"
    if not re.match(r"^/[^/]+(/(start|fail|log|[0-9]{1,3}))?\Z", path):
        return 404, "not found", "text/plain", "path"
    return 200, "OK", "text/plain", "ok"


def validate_uptime_kuma(method, path, headers, raw, rule, query=""):
    status = urllib.parse.parse_qs(query).get("status", ["up"])[0]
    if status not in ("up", "down"):
        return 200, {"ok": False, "msg": "invalid status"}, "application/json", "status"
    return 200, {"ok": True}, "application/json", "ok"


def validate_cronitor(method, path, headers, raw, rule, query=""):
    state = urllib.parse.parse_qs(query).get("state", ["complete"])[0]
    if state not in ("run", "complete", "fail", "ok"):
        return 400, "invalid state", "text/plain", "state"
    return 200, "", "text/plain", "ok"


VALIDATORS = {"slack": validate_slack, "discord": validate_discord, "ntfy": validate_ntfy,
              "pagerduty": validate_pagerduty, "healthchecks": validate_healthchecks,
              "uptime_kuma": validate_uptime_kuma, "cronitor": validate_cronitor}


def judge(service, method, path, query, headers, raw, rule):
    """(status, body, content type, verdict) of a request as ``service`` would answer it."""
    check = VALIDATORS[service]
    if service in ("uptime_kuma", "cronitor"):
        return check(method, path, headers, raw, rule, query=query)
    return check(method, path, headers, raw, rule)


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
            rule = dict(chosen or {"status": 200, "body": {"ok": True, "result": {}}})
            content_type = "application/json"
            verdict = None
            if rule.get("validate") in VALIDATORS:
                status, body, content_type, verdict = judge(rule["validate"], self.command, path, query,
                                                            self.headers, raw, rule)
                if verdict != "ok" or "status" not in rule:
                    rule.update(status=status, body=body)
            record = {
                "time": time.time(),
                "method": self.command,
                "path": path,
                "query": query,
                "headers": dict(self.headers.items()),
                "body": raw.decode("utf-8", "replace"),
                "status": rule.get("status", 200),
                "verdict": verdict,
            }
            os.makedirs(LOG_DIR, exist_ok=True)
            with open(LOG, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        if rule.get("delay"):
            time.sleep(float(rule["delay"]))
        body = rule.get("body", "")
        if not isinstance(body, str):
            body = json.dumps(body)
        data = body.encode("utf-8")
        status = int(rule.get("status", 200))
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for key, value in rule.get("headers", {}).items():
                self.send_header(key, str(value))
            if status not in (204, 304):
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if status not in (204, 304) and self.command != "HEAD":
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv):
    global PORT, LOG, RULES  # pylint: disable=global-statement
    PORT = int(argv[1])
    LOG = os.path.join(LOG_DIR, "%d.jsonl" % PORT)
    RULES = os.path.join(RULE_DIR, "%d.json" % PORT)
    Server(("127.0.0.1", PORT), Handler).serve_forever()


if __name__ == "__main__":
    main(sys.argv)
