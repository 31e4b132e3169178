"""`agentops check-auth`: the agent's checks with its stored credentials, state, alerts, overrides."""
import argparse
import http.server
import io
import json
import os
import stat
import threading

import pytest

from agentops_host import check_auth, cli, config

CANARY = "canary-Hq42TOKEN-host-9931"
NEW_CANARY = "canary-new-Rt55TOKEN-0007"


class _Api(http.server.BaseHTTPRequestHandler):
    """Accepts only the bearer tokens in server.valid; webhook POSTs are collected in server.posts."""
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _send(self, status):
        payload = b"{}"
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):  # noqa: N802
        auth = self.headers.get("Authorization") or ""
        self._send(200 if auth[len("Bearer "):] in self.server.valid else 401)

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.posts.append(json.loads(body.decode() or "null"))
        self._send(200)


@pytest.fixture
def api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    server.daemon_threads = True
    server.valid = {CANARY}
    server.posts = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url = lambda path: "http://127.0.0.1:%d%s" % (server.server_address[1], path)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def host(tmp_path, api):
    """A host tree: agentops.json with a webhook channel, agent mail-triage with an http and a file check."""
    cfg, st, spool = tmp_path / "etc", tmp_path / "state", tmp_path / "spool"
    for d in (cfg / "agents.d", cfg / "credentials" / "mail-triage", st, spool):
        d.mkdir(parents=True)
    (cfg / "agentops.json").write_text(json.dumps({
        "host": "web1", "alert_channels": [{"type": "webhook", "url": api.url("/hook")}],
        "alert_timeout_seconds": 5}))
    agent = {"name": "mail-triage", "unit": "agentops-mail-triage.service",
             "credentials_dir": str(cfg / "credentials" / "mail-triage"), "credentials": ["graph_token", "other"],
             "auth_checks": [
                 {"name": "graph", "type": "http", "url": api.url("/v1.0/me"), "credential": "graph_token",
                  "expect_status": [200]},
                 {"name": "graph-file", "type": "file", "credential": "graph_token", "max_age": "45d"},
             ]}
    (cfg / "agents.d" / "mail-triage.json").write_text(json.dumps(agent))
    cred = cfg / "credentials" / "mail-triage" / "graph_token"
    cred.write_text(CANARY + "\n")
    cred.chmod(0o600)
    args = argparse.Namespace(config_dir=str(cfg), state_dir=str(st), spool_dir=str(spool), timeout=5)
    args.cred = cred
    return args


def run_cli(host, capsys, *extra, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    rc = cli.main(["--config-dir", host.config_dir, "--state-dir", host.state_dir, "--spool-dir", host.spool_dir,
                   "check-auth"] + list(extra))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_registered_in_cli():
    parser = cli.build_parser()
    args = parser.parse_args(["check-auth", "x", "--json"])
    assert args.func is check_auth.run and args.agent == "x" and args.json


def test_all_ok_exit_0_one_line_per_check(host, capsys, api):
    rc, out, _ = run_cli(host, capsys, "mail-triage")
    assert rc == 0, out
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("mail-triage/graph: AUTH_OK - auth check 'graph' OK: GET %s" % api.url("/v1.0/me"))
    assert lines[1].startswith("mail-triage/graph-file: AUTH_OK")
    assert CANARY not in out


def test_rejected_token_exit_1_records_and_alerts(host, capsys, api):
    api.valid = {"something-else"}
    rc, out, _ = run_cli(host, capsys, "mail-triage")
    assert rc == 1
    assert "mail-triage/graph: AUTH_FAILED" in out and "HTTP 401" in out
    assert "Put a working token into %s" % host.cred in out
    assert "systemctl start agentops-mail-triage.service" in out
    # state for `agentops status`: root-only, no token
    path = os.path.join(host.state_dir, ".auth", "mail-triage.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    recorded = check_auth.last_result(host, "mail-triage")
    assert recorded["passed"] is False
    assert [r["status"] for r in recorded["results"]] == ["AUTH_FAILED", "AUTH_OK"]
    assert CANARY not in open(path).read()
    # the alert went out through the alert path (webhook on 127.0.0.1)
    assert len(api.posts) == 1, api.posts
    alert = api.posts[0]
    assert alert["severity"] == "critical" and alert["key"] == "auth:mail-triage:graph"
    assert alert["agent"] == "mail-triage" and "HTTP 401" in alert["body"]
    assert CANARY not in json.dumps(api.posts)
    # a second failing start does not repeat the alert (de-duplicated by the alert path)
    assert run_cli(host, capsys, "mail-triage")[0] == 1
    assert len(api.posts) == 1
    # fixing the token: exit 0 and one recovery notice
    api.valid = {CANARY}
    rc, out, _ = run_cli(host, capsys, "mail-triage")
    assert rc == 0, out
    assert len(api.posts) == 2 and api.posts[1]["severity"] == "resolved"
    assert api.posts[1]["key"] == "auth:mail-triage:graph"
    assert check_auth.last_result(host, "mail-triage")["passed"] is True


def test_unreachable_is_distinct_and_fails(host, capsys):
    agent_file = os.path.join(host.config_dir, "agents.d", "mail-triage.json")
    agent = json.load(open(agent_file))
    agent["auth_checks"][0]["url"] = "http://127.0.0.1:1/v1.0/me"
    json.dump(agent, open(agent_file, "w"))
    rc, out, _ = run_cli(host, capsys, "mail-triage", "--no-alert")
    assert rc == 1
    assert "mail-triage/graph: AUTH_UNREACHABLE" in out and "the token itself may be fine" in out


def test_json_output(host, capsys):
    rc, out, _ = run_cli(host, capsys, "mail-triage", "--json")
    data = json.loads(out)
    assert rc == 0 and data["passed"] is True and data["agent"] == "mail-triage"
    assert [r["name"] for r in data["results"]] == ["graph", "graph-file"]
    assert {"status", "message", "http_status", "expires_at", "expires_in_seconds", "elapsed", "name"} <= set(
        data["results"][0])


def test_missing_credential_file(host, capsys):
    os.unlink(str(host.cred))
    rc, out, _ = run_cli(host, capsys, "mail-triage", "--no-alert")
    assert rc == 1
    assert "credential 'graph_token' is missing: %s does not exist" % host.cred in out


def test_world_readable_credential_fails_file_check(host, capsys):
    host.cred.chmod(0o644)
    rc, out, _ = run_cli(host, capsys, "mail-triage", "--no-alert")
    assert rc == 1 and "mail-triage/graph-file: AUTH_FAILED" in out and "0644" in out


def test_unknown_agent(host, capsys):
    rc, _, err = run_cli(host, capsys, "nobody")
    assert rc == 1 and "unknown agent 'nobody'" in err


def test_no_checks(host, capsys):
    path = os.path.join(host.config_dir, "agents.d", "quiet.json")
    json.dump({"name": "quiet"}, open(path, "w"))
    rc, out, _ = run_cli(host, capsys, "quiet")
    assert rc == 0 and "quiet: no auth checks configured" in out


def test_token_stdin_validates_new_token_without_recording(host, capsys, api, monkeypatch):
    api.valid = {NEW_CANARY}
    rc, out, _ = run_cli(host, capsys, "mail-triage", "--credential", "graph_token", "--token-stdin",
                         stdin=NEW_CANARY + "\n", monkeypatch=monkeypatch)
    assert rc == 0, out
    assert "graph-file" not in out  # the new token is not in the file yet
    assert NEW_CANARY not in out
    assert not os.path.exists(os.path.join(host.state_dir, ".auth", "mail-triage.json"))
    assert api.posts == []
    rc, out, _ = run_cli(host, capsys, "mail-triage", "--credential", "graph_token", "--token-stdin",
                         stdin="canary-bad-token-1234\n", monkeypatch=monkeypatch)
    assert rc == 1 and "AUTH_FAILED" in out and "canary-bad-token-1234" not in out
    assert open(str(host.cred)).read().strip() == CANARY  # nothing swapped
    rc, _, err = run_cli(host, capsys, "mail-triage", "--token-stdin", stdin="x", monkeypatch=monkeypatch)
    assert rc == 2 and "--token-stdin needs --credential" in err


def test_check_agent_api_overrides_and_only_credential(host, api):
    agent = config.load_agent(host.config_dir, "mail-triage")
    agent["auth_checks"].append({"name": "other", "type": "http", "url": api.url("/x"), "credential": "other"})
    api.valid = {NEW_CANARY}
    results = check_agent = check_auth.check_agent(host, agent, overrides={"graph_token": NEW_CANARY},
                                                   only_credential="graph_token")
    assert [r["name"] for r in results] == ["graph"]
    assert results[0]["status"] == "AUTH_OK" and results[0]["passed"] is True
    assert results[0]["credential"] == "graph_token"
    results = check_auth.check_agent(host, agent)
    assert [r["name"] for r in results] == ["graph", "graph-file", "other"]
    assert [r["status"] for r in results] == ["AUTH_FAILED", "AUTH_OK", "AUTH_FAILED"]
    assert "credential 'other' is missing" in results[2]["message"]
    assert NEW_CANARY not in json.dumps(check_agent) and CANARY not in json.dumps(results)


def test_invalid_check_in_config_fails_clearly(host, capsys):
    path = os.path.join(host.config_dir, "agents.d", "broken.json")
    json.dump({"name": "broken", "auth_checks": [{"name": "x", "type": "ftp"}]}, open(path, "w"))
    rc, out, _ = run_cli(host, capsys, "broken", "--no-alert")
    assert rc == 1 and "unknown type 'ftp'" in out


# ---------------------------------------------------------------- hostile endpoints and files

def _set_checks(host, checks):
    path = os.path.join(host.config_dir, "agents.d", "mail-triage.json")
    agent = json.load(open(path))
    agent["auth_checks"] = checks
    json.dump(agent, open(path, "w"))


@pytest.fixture
def trickle():
    """A server on 127.0.0.1 that answers two bytes a second, for minutes."""
    import socket
    import time
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)

    def serve(conn):
        try:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 600:
                conn.sendall(bytes([byte]))
                time.sleep(0.5)
        except OSError:
            pass
        finally:
            conn.close()

    def accept():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    yield "http://127.0.0.1:%d/me" % sock.getsockname()[1]
    sock.close()


def test_trickling_endpoint_is_cut_at_the_check_timeout_and_the_next_check_runs(host, capsys, api, trickle):
    import time
    _set_checks(host, [{"name": "slow", "type": "http", "url": trickle, "credential": "graph_token", "timeout": "1s"},
                       {"name": "graph", "type": "http", "url": api.url("/v1.0/me"), "credential": "graph_token"}])
    started = time.monotonic()
    rc, out, _ = run_cli(host, capsys, "mail-triage", "--no-alert")
    took = time.monotonic() - started
    assert rc == 1
    assert "mail-triage/slow: AUTH_UNREACHABLE" in out and "did not answer within 1s" in out
    assert "mail-triage/graph: AUTH_OK" in out
    assert took < 2.5, "check-auth took %.2f s" % took


def test_credential_that_is_a_fifo_fails_that_check_only_and_never_blocks(host, capsys, api):
    import time
    fifo = os.path.join(host.config_dir, "credentials", "mail-triage", "other")
    os.mkfifo(fifo)
    _set_checks(host, [{"name": "other", "type": "http", "url": api.url("/x"), "credential": "other"},
                       {"name": "graph", "type": "http", "url": api.url("/v1.0/me"), "credential": "graph_token"}])
    started = time.monotonic()
    rc, out, _ = run_cli(host, capsys, "mail-triage", "--no-alert")
    assert time.monotonic() - started < 5
    assert rc == 1
    assert "mail-triage/other: AUTH_FAILED" in out and "is not a regular file" in out
    assert "mail-triage/graph: AUTH_OK" in out


def test_header_value_with_a_line_break_is_refused_and_never_recorded(host, capsys, api):
    secret = "hdr-canary-8812"
    _set_checks(host, [{"name": "graph", "type": "http", "url": api.url("/v1.0/me"), "credential": "graph_token",
                        "headers": {"X-Api-Key": secret + "\r\nX-Evil: 1"}}])
    rc, out, err = run_cli(host, capsys, "mail-triage")
    assert rc == 1 and "the value of header X-Api-Key contains a line break" in out
    recorded = open(os.path.join(host.state_dir, ".auth", "mail-triage.json")).read()
    for text in (out, err, recorded, json.dumps(api.posts)):
        assert secret not in text and "X-Evil" not in text
    assert api.posts and api.posts[0]["key"] == "auth:mail-triage:graph"


def test_command_check_run_by_root_never_gets_the_callers_environment(host, capsys, monkeypatch, tmp_path):
    # As from ExecStartPre=+: the unit's environment has the agent's HOME and maybe PYTHONPATH/LD_PRELOAD.
    monkeypatch.setenv("HOME", "/var/lib/agentops/mail-triage")
    monkeypatch.setenv("PYTHONPATH", "/var/lib/agentops/mail-triage/.local/lib")
    monkeypatch.setenv("LD_PRELOAD", "/var/lib/agentops/mail-triage/x.so")
    report = tmp_path / "env"
    _set_checks(host, [{"name": "cli", "type": "command", "credential": "graph_token",
                        "command": ["/bin/sh", "-c", "env > %s; pwd >> %s; read t; test \"$t\" = %s"
                                    % (report, report, CANARY)]}])
    rc, out, _ = run_cli(host, capsys, "mail-triage", "--no-alert")
    assert rc == 0, out
    text = report.read_text()
    import pwd
    assert "HOME=%s\n" % pwd.getpwuid(os.geteuid()).pw_dir in text
    assert "/var/lib/agentops" not in text and "PYTHONPATH" not in text and "LD_PRELOAD" not in text
    assert text.splitlines()[-1] == "/"
    assert CANARY not in text  # the token only on stdin


def test_timeout_comes_from_auth_json(host, capsys, api):
    """agentops_auth_timeout reaches every host-side check through auth.json (the auth role writes it)."""
    gate = threading.Event()
    slow = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    slow.daemon_threads = True
    slow.valid = {CANARY}
    slow.posts = []

    class _Slow(_Api):
        def do_GET(self):  # noqa: N802
            gate.wait(10)
            _Api.do_GET(self)

    slow.RequestHandlerClass = _Slow
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    try:
        agent_file = os.path.join(host.config_dir, "agents.d", "mail-triage.json")
        with open(agent_file) as handle:
            agent = json.load(handle)
        agent["auth_checks"] = [{"name": "graph", "type": "http", "credential": "graph_token",
                                 "url": "http://127.0.0.1:%d/v1.0/me" % slow.server_address[1]}]
        with open(agent_file, "w") as handle:
            json.dump(agent, handle)
        with open(os.path.join(host.config_dir, "auth.json"), "w") as handle:
            json.dump({"timeout_seconds": 1}, handle)
        assert config.load_auth_config(host.config_dir) == {"timeout_seconds": 1}
        rc, out, _ = run_cli(host, capsys, "mail-triage")
        assert rc == 1 and "AUTH_UNREACHABLE" in out and "did not answer within 1s" in out, out
        # --timeout on the command line still wins; a missing or bad file falls back to 10 s
        with open(os.path.join(host.config_dir, "auth.json"), "w") as handle:
            json.dump({"timeout_seconds": "soon"}, handle)
        assert config.load_auth_config(host.config_dir) == {"timeout_seconds": 10}
        os.unlink(os.path.join(host.config_dir, "auth.json"))
        assert config.load_auth_config(host.config_dir) == {"timeout_seconds": 10}
        rc, out, _ = run_cli(host, capsys, "mail-triage", "--timeout", "1")
        assert rc == 1 and "did not answer within 1s" in out, out
    finally:
        gate.set()
        slow.shutdown()
        slow.server_close()


def test_unless_running_decides_on_the_main_pid_only():
    """agentops-auth@<agent>.service (systemd 247): a start request for a running session checks nothing."""
    assert check_auth.running_session({"MainPID": "4242", "ActiveState": "active"}) == 4242
    assert check_auth.running_session({"MainPID": "977", "ActiveState": "activating", "SubState": "start"}) == 977
    for props in ({"MainPID": "0", "ActiveState": "inactive"}, {"MainPID": "0", "ActiveState": "activating",
                                                                  "SubState": "auto-restart"},
                  {}, {"MainPID": "x"}, {"MainPID": "-1"}):
        assert check_auth.running_session(props) is None, props  # unknown or not running: the checks run
    args = cli.build_parser().parse_args(["check-auth", "--unless-running", "mail-triage"])
    assert args.unless_running and args.agent == "mail-triage" and args.func is check_auth.run
def test_a_token_path_the_agent_linked_elsewhere_is_no_oracle(host, capsys, api, trusted_dir):
    """`check-auth` (ExecStartPre=, as root, at every start) on a file check whose path the agent linked to /etc/shadow
    and to another agent's credential: the answer and the alert say 'symlink (not followed)' and nothing about the
    target - not whether it exists, its mode or its age."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the agent's directory belongs to nobody")
    import pwd
    nobody = pwd.getpwnam("nobody")
    home = os.path.join(trusted_dir, "evil")
    os.mkdir(home, 0o700)
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    token = os.path.join(home, "token")
    agent_file = os.path.join(host.config_dir, "agents.d", "mail-triage.json")
    agent = json.load(open(agent_file))
    agent["auth_checks"] = [{"name": "tok", "type": "file", "path": token, "max_age": "3650d"}]
    with open(agent_file, "w") as handle:
        json.dump(agent, handle)
    for target in ("/etc/shadow", str(host.cred)):
        if os.path.lexists(token):
            os.unlink(token)
        os.symlink(target, token)
        rc, out, err = run_cli(host, capsys, "mail-triage")
        assert rc == 1
        assert "mail-triage/tok: AUTH_FAILED - auth check 'tok' FAILED: %s is a symlink (not followed)" % token in out
        for text in (out, err, json.dumps(api.posts)):
            assert "mode 0" not in text and "written" not in text and "shadow" not in text
            assert str(host.cred) not in text and CANARY not in text
    assert api.posts and api.posts[0]["key"] == "auth:mail-triage:tok"
