"""Malformed root-only files affect only their own agent.

An agents.d file or a state file (.heartbeat, .auth, rotation) that is not what it should be
(a list, a string, invalid or too deeply nested JSON, fields of the wrong type, a huge file,
a FIFO) is reported for that agent, with the file and the reason, by ``agentops status``
(text and --json), ``agentops rotate --list`` (text and --json), the daily ``agentops rotate``
and ``agentops check-auth``; the other agents are handled as usual. Real files, a real API and
webhook receiver on 127.0.0.1; only systemctl and systemd-run are stand-ins (no systemd here).
"""
import http.server
import json
import os
import pwd
import threading
import time

import pytest

from agentops_host import cli, config, rotate, state, status

import fake_systemd
from test_alert_helpers import make_args, recorder, webhook_channel, write_config  # noqa: F401  (fixture)
from test_heartbeat import units  # noqa: F401  (fixture)

TOKEN = "GOODTOKEN-5f1c2a"
NEW_TOKEN = "ROTATED-77aa01"


class _Api(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):  # noqa: N802
        ok = (self.headers.get("Authorization") or "")[len("Bearer "):] in (TOKEN, NEW_TOKEN)
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


@pytest.fixture
def api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield "http://127.0.0.1:%d/me" % server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def host(tmp_path, recorder, units, api, monkeypatch):
    """Agent `good` (heartbeat, an http auth check, a due token rotation) next to whatever a test breaks."""
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    fake = tmp_path / "systemctl-rotate"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setattr(rotate, "SYSTEMCTL", str(fake))
    fake_systemd.install(tmp_path / "fake-systemd", monkeypatch)
    me = pwd.getpwuid(os.geteuid()).pw_name
    args.me = me

    def add(name, **extra):
        state_dir = os.path.join(args.state_dir, name)
        cred_dir = os.path.join(args.config_dir, "credentials", name)
        os.makedirs(state_dir, exist_ok=True)
        os.makedirs(cred_dir, exist_ok=True)
        cred = os.path.join(cred_dir, "api_token")
        with open(cred, "w", encoding="utf-8") as handle:
            handle.write(TOKEN + "\n")
        os.chmod(cred, 0o600)
        past = time.time() - 50 * 86400
        os.utime(cred, (past, past))
        agent = {"name": name, "unit": "agentops-%s.service" % name, "user": me, "state": "present",
                 "state_dir": state_dir, "credentials_dir": cred_dir, "credentials": ["api_token"],
                 "heartbeat": {"interval": "10s", "max_silence": "1h", "progress": "file", "file": "heartbeat"},
                 "auth_checks": [{"name": "api", "type": "http", "url": api, "credential": "api_token"}],
                 "token_rotation": [{"credential": "api_token", "every_days": 45,
                                     "command": ["/bin/echo", NEW_TOKEN]}],
                 "sandbox": fake_systemd.sandbox_entry(state_dir)}
        agent.update(extra)
        with open(config.agent_path(args.config_dir, name), "w", encoding="utf-8") as handle:
            json.dump(agent, handle)
        units(agent["unit"])
        return agent

    args.add = add
    args.recorder = recorder
    add("good")
    return args


def _cli(args, capsys, *argv):
    rc = cli.main(["--config-dir", args.config_dir, "--state-dir", args.state_dir, "--spool-dir", args.spool_dir]
                  + list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data if isinstance(data, bytes) else data.encode("utf-8"))


AGENT_FILES = [
    ("list", b"[]", "must hold a JSON object"),
    ("string", b'"just a string"', "must hold a JSON object"),
    ("number", b"42", "must hold a JSON object"),
    ("invalid", b"{not json", "is not valid JSON"),
    ("deep", b"[" * 200000, "nested too deeply"),
    ("huge", b'{"pad": "' + b"x" * (1024 * 1024 + 10) + b'"}', "larger than 1024 KiB"),
    ("binary", b"\xff\xfe{}", "is not UTF-8"),
    ("checks-string", b'{"auth_checks": "graph"}', "'auth_checks' must be a list"),
    ("heartbeat-list", b'{"heartbeat": []}', "'heartbeat' must be a mapping"),
    ("rotation-string", b'{"token_rotation": "daily"}', "'token_rotation' must be a list"),
    ("name-mismatch", b'{"name": "../../etc"}', "the file is named for agent"),
    ("sandbox-user", b'{"sandbox": {"systemd": 252, "directives": [["User", "root"]]}}',
     "User= is set by the runner itself"),
    ("sandbox-line", b'{"sandbox": {"systemd": 252, "directives": [["ReadWritePaths", "/x\\nUser=root"]]}}',
     "contains the control character U+000A"),
]


@pytest.mark.parametrize("kind,content,reason", AGENT_FILES, ids=[a[0] for a in AGENT_FILES])
def test_broken_agent_file_affects_only_that_agent(host, capsys, kind, content, reason):
    path = config.agent_path(host.config_dir, "bad")
    _write(path, content)
    # agentops status --json: both agents, the broken one with the file and the reason
    rc, out, _ = _cli(host, capsys, "status", "--json")
    assert rc == 0
    rows = {row["agent"]: row for row in json.loads(out)}
    assert set(rows) == {"bad", "good"}
    assert rows["bad"]["active_state"] == "broken" and rows["bad"]["sub_state"] == "config"
    assert path in rows["bad"]["error"] and reason in rows["bad"]["error"]
    assert rows["good"]["active_state"] == "active" and rows["good"]["error"] is None
    assert len(rows["bad"]["error"]) < 1000  # never the file's content
    # agentops status (text)
    rc, out, _ = _cli(host, capsys, "status")
    assert rc == 0
    assert "broken agent bad: %s" % path in out and reason in out
    assert any(line.startswith("good ") and "active/running" in line for line in out.splitlines())
    # agentops rotate --list, text and JSON
    rc, out, err = _cli(host, capsys, "rotate", "--list")
    assert rc == 0
    assert any(line.startswith("good ") and "api_token" in line for line in out.splitlines())
    assert "broken: bad: " in out and reason in out and "agent bad is broken" in err
    rc, out, _ = _cli(host, capsys, "rotate", "--list", "--json")
    listed = {row["agent"]: row for row in json.loads(out)}
    assert listed["good"]["credential"] == "api_token" and listed["good"]["due"] is True
    assert listed["bad"]["result"] == "broken" and reason in listed["bad"]["message"]
    # agentops check-auth: the good agent passes, the broken one fails naming its file
    rc, out, _ = _cli(host, capsys, "check-auth", "good")
    assert rc == 0 and "good/api: AUTH_OK" in out, out
    rc, _, err = _cli(host, capsys, "check-auth", "bad")
    assert rc == 1 and path in err and reason in err
    # the daily rotate: the good agent rotates, the broken one is reported and alerted
    rc, out, err = _cli(host, capsys, "rotate")
    assert rc == 1
    assert "good/api_token: rotated" in out
    assert "agent bad is broken, not rotated" in err and reason in err
    with open(os.path.join(host.config_dir, "credentials", "good", "api_token"), encoding="utf-8") as handle:
        assert handle.read() == NEW_TOKEN
    titles = [b["title"] for b in host.recorder.bodies()]
    assert "Token rotation impossible: bad" in titles and "Token rotated: good/api_token" in titles


@pytest.mark.parametrize("entry,reason", [
    ({"credential": 5, "command": "/bin/true"}, "5 is not one of the agent's credentials"),
    ({"credential": "../../../etc/shadow", "command": "/bin/true"}, "is not one of the agent's credentials"),
    ({"credential": "api_token", "command": {"argv": "/bin/true"}}, "required: the command"),
    ({"credential": "api_token", "command": ["/bin/true", 3]}, "required: the command"),
    ({"credential": "api_token", "command": "/bin/true", "timeout": "soon"}, "must be a whole number of seconds"),
    ("not-a-mapping", "must be a mapping with the keys credential"),
])
def test_token_rotation_entry_of_the_wrong_type_affects_only_that_agent(host, capsys, entry, reason):
    host.add("bad", token_rotation=[entry])
    rc, out, _ = _cli(host, capsys, "status", "--json")
    rows = {row["agent"]: row for row in json.loads(out)}
    assert rows["good"]["error"] is None and rows["good"]["next_rotation"]
    assert rows["bad"]["error"] and reason in rows["bad"]["error"]
    assert config.agent_path(host.config_dir, "bad") in rows["bad"]["error"]
    rc, out, err = _cli(host, capsys, "rotate", "--list", "--json")
    listed = {row["agent"]: row for row in json.loads(out)}
    assert listed["bad"]["result"] == "broken" and reason in listed["bad"]["message"]
    assert listed["good"]["credential"] == "api_token"
    rc, out, err = _cli(host, capsys, "rotate")
    assert rc == 1 and "good/api_token: rotated" in out and reason in err
    with open(os.path.join(host.config_dir, "credentials", "bad", "api_token"), encoding="utf-8") as handle:
        assert handle.read().strip() == TOKEN  # nothing of the broken agent was touched
    assert not os.path.exists("/etc/shadow.prev")
    # the broken file is the agent's whole configuration: its session does not start on it either
    rc, _, err = _cli(host, capsys, "check-auth", "bad")
    assert rc == 1 and reason in err


STATE_FILES = [
    ("heartbeat-list", ".heartbeat/good.json", b"[]", "must hold a JSON object"),
    ("heartbeat-deep", ".heartbeat/good.json", b"{\"a\":" * 100000, "nested too deeply"),
    ("heartbeat-auth-string", ".heartbeat/good.json", b'{"auth": "AUTH_OK"}', "'auth' must be a list"),
    ("auth-string", ".auth/good.json", b'"x"', "must hold a JSON object"),
    ("auth-results", ".auth/good.json", b'{"results": 7}', "'results' must be a list"),
]


@pytest.mark.parametrize("kind,relative,content,reason", STATE_FILES, ids=[s[0] for s in STATE_FILES])
def test_broken_state_file_is_reported_for_its_agent(host, capsys, kind, relative, content, reason):
    host.add("other")
    path = os.path.join(host.state_dir, relative)
    _write(path, content)
    rc, out, _ = _cli(host, capsys, "status", "--json")
    assert rc == 0
    rows = {row["agent"]: row for row in json.loads(out)}
    assert rows["good"]["active_state"] == "broken" and rows["good"]["sub_state"] == "state"
    assert path in rows["good"]["error"] and reason in rows["good"]["error"]
    assert rows["other"]["active_state"] == "active" and rows["other"]["error"] is None
    rc, out, _ = _cli(host, capsys, "status")
    assert "broken agent good: %s" % path in out
    # check-auth records over the broken file; the next status is clean for a .auth file
    rc, out, _ = _cli(host, capsys, "check-auth", "good")
    assert rc == 0
    if relative.startswith(".auth"):
        rows = {row["agent"]: row for row in json.loads(_cli(host, capsys, "status", "--json")[1])}
        assert rows["good"]["error"] is None and rows["good"]["auth"][0]["status"] == "AUTH_OK"


def test_state_file_that_is_a_fifo_never_blocks_status(host, capsys):
    path = os.path.join(host.state_dir, ".heartbeat", "good.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mkfifo(path)
    started = time.monotonic()
    rc, out, _ = _cli(host, capsys, "status", "--json")
    assert rc == 0 and time.monotonic() - started < 10
    row = json.loads(out)[0]
    assert row["active_state"] == "broken" and "is not a regular file" in row["error"]


@pytest.mark.parametrize("content,reason", [(b"[]", "must hold a JSON object"), (b"{{{", "is not valid JSON")])
def test_broken_rotation_state_is_listed_and_replaced_by_the_next_run(host, capsys, content, reason):
    host.add("other")
    path = os.path.join(host.state_dir, "rotation", "good", "api_token.json")
    _write(path, content)
    rc, out, err = _cli(host, capsys, "rotate", "--list", "--json")
    assert rc == 0
    listed = {row["agent"]: row for row in json.loads(out)}
    assert listed["good"]["result"] == "broken" and path in listed["good"]["message"]
    assert reason in listed["good"]["message"] and listed["good"]["due"] is True
    assert listed["other"]["result"] == "never"
    rc, out, err = _cli(host, capsys, "rotate", "--list")
    assert "broken: good/api_token: %s" % path in out
    rc, out, err = _cli(host, capsys, "rotate")
    assert rc == 0, err
    assert "good/api_token: rotated" in out and "other/api_token: rotated" in out
    assert state.load_object(path)["result"] == "ok"


def test_state_read_json_bounds_and_types(tmp_path):
    path = str(tmp_path / "x.json")
    _write(path, b"[" * 100000)
    assert state.read_json(path, {"d": 1}) == {"d": 1}
    with pytest.raises(state.StateError, match="nested too deeply"):
        state.load_object(path)
    _write(path, b"[1, 2]")
    assert state.read_json(path) == [1, 2]
    assert state.read_json(path, {}, expect=dict) == {}
    _write(path, b" " * (state.MAX_JSON_BYTES + 1))
    with pytest.raises(state.StateError, match="larger than"):
        state.load_object(path)
    assert state.load_object(str(tmp_path / "missing.json")) == {}


def test_credential_with_a_line_break_inside_is_refused_never_shown(host, capsys):
    canary = "CANARY-nl-4f4f"
    cred = os.path.join(host.config_dir, "credentials", "good", "api_token")
    with open(cred, "w", encoding="utf-8") as handle:
        handle.write(canary + "\nX-Injected: yes\n")
    rc, out, err = _cli(host, capsys, "check-auth", "good")
    assert rc == 1
    assert "good/api: AUTH_FAILED" in out and "contains a line break" in out
    recorded = open(os.path.join(host.state_dir, ".auth", "good.json"), encoding="utf-8").read()
    alerts = json.dumps(host.recorder.bodies())
    assert "line break" in alerts
    for text in (out, err, recorded, alerts):
        assert canary not in text and "X-Injected" not in text
    # a credential file ending in one newline (or CRLF) is the normal case and passes
    for ending in ("\n", "\r\n", ""):
        with open(cred, "w", encoding="utf-8", newline="") as handle:
            handle.write(TOKEN + ending)
        rc, out, _ = _cli(host, capsys, "check-auth", "good")
        assert rc == 0, out


def test_status_shows_the_dead_letter_count_when_the_alert_module_has_it(host, capsys, monkeypatch):
    from agentops_host import alert
    monkeypatch.setattr(alert, "dead_letter_count", lambda args: 3, raising=False)
    rows = json.loads(_cli(host, capsys, "status", "--json")[1])
    assert rows and all(row["dead_letter"] == 3 for row in rows)
    assert "dead-letter alerts: 3" in _cli(host, capsys, "status")[1]
    monkeypatch.delattr(alert, "dead_letter_count", raising=False)
    rows = json.loads(_cli(host, capsys, "status", "--json")[1])
    assert all(row["dead_letter"] is None for row in rows)
    assert "dead-letter" not in _cli(host, capsys, "status")[1]
