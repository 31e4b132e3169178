"""Unit tests of `agentops rotate` (roles/common/files/agentops_host/rotate.py).

Everything runs for real in temporary directories: a token endpoint, an API the
auth check asks and a webhook receiver (the alert path) on 127.0.0.1, the rotation
command as a real process. Only systemctl is replaced by a recording script, as the
test machine has no systemd to restart units with (Molecule does that for real).
"""
import fcntl
import http.server
import json
import os
import pwd
import random
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from agentops_host import cli, rotate, sandbox

import fake_systemd

DAY = 86400
HERE = os.path.dirname(os.path.abspath(__file__))
HOSTLIB = os.path.abspath(os.path.join(HERE, "..", "..", "..", "roles", "common", "files"))
MODULE_UTILS_PARENT = os.path.abspath(os.path.join(HERE, "..", "..", "..", ".cache", "hostlib"))

REFRESH_SCRIPT = r'''#!/usr/bin/python3
# Rotation command used by the tests: asks the token endpoint for a new token.
import json, sys, urllib.request, urllib.error
old = sys.stdin.read()
req = urllib.request.Request(sys.argv[1], data=json.dumps({"refresh": len(old)}).encode(), method="POST",
                             headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = json.load(resp)
except urllib.error.HTTPError as exc:
    sys.stderr.write("token endpoint said %s\n" % exc.code)
    sys.exit(3)
sys.stdout.write(body.get("access_token", "") + "\n")
'''


def wait_for(predicate, timeout=15, interval=0.05, message="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out waiting for %s" % message)
        time.sleep(interval)


class Endpoint(http.server.ThreadingHTTPServer):
    """Token endpoint (POST /token), API checked by the auth check (GET /me) and webhook receiver (POST /hook)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.next_token = "NEWTOKEN-%08x" % random.getrandbits(32)
        self.token_status = 200
        self.accepted = set()
        self.token_requests = 0
        self.api_requests = []
        self.hooks = []
        self.lock = threading.Lock()

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.server_address[1]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server naming)
        server = self.server
        token = (self.headers.get("Authorization") or "").replace("Bearer ", "", 1)
        with server.lock:
            server.api_requests.append(token)
        self._reply(200 if token in server.accepted else 401, {"ok": token in server.accepted})

    def do_POST(self):  # noqa: N802
        server = self.server
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/hook"):
            with server.lock:
                server.hooks.append(raw.decode("utf-8", "replace"))
            self._reply(200, {"ok": True})
            return
        with server.lock:
            server.token_requests += 1
        if server.token_status != 200:
            self._reply(server.token_status, {"error": "nope"})
        else:
            self._reply(200, {"access_token": server.next_token})


@pytest.fixture
def endpoint():
    server = Endpoint()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def env(tmp_path, endpoint, monkeypatch):
    """A host in a temp dir: config with one agent (a1, credential api_token), state, spool, fake systemctl."""
    cfg, state, spool, bindir = (tmp_path / d for d in ("etc", "state", "spool", "bin"))
    for d in (cfg / "agents.d", cfg / "credentials" / "a1", state / "a1", spool, bindir):
        d.mkdir(parents=True)
    # The rotation command must be reachable by an unprivileged user: its own 0755 directory.
    tooldir = tempfile.mkdtemp(prefix="agentops-rotate-test-")
    os.chmod(tooldir, 0o755)
    script = os.path.join(tooldir, "refresh-token")
    with open(script, "w", encoding="utf-8") as handle:
        handle.write(REFRESH_SCRIPT)
    os.chmod(script, 0o755)
    systemctl = bindir / "systemctl"
    calls = tmp_path / "systemctl.log"
    systemctl.write_text("#!/bin/sh\necho \"$*\" >> %s\ncase \"$1\" in\n"
                         "  is-active) exit $(cat %s/active_rc 2>/dev/null || echo 0);;\n"
                         "  is-enabled) exit 1;;\n  restart) exit 0;;\nesac\nexit 1\n" % (calls, tmp_path))
    systemctl.chmod(0o755)
    monkeypatch.setattr(rotate, "SYSTEMCTL", str(systemctl))
    fake = fake_systemd.install(tmp_path / "fake-systemd", monkeypatch)
    (cfg / "agentops.json").write_text(json.dumps({
        "host": "unit", "alert_channels": [{"type": "webhook", "url": endpoint.url + "/hook"}],
        "alert_timeout_seconds": 5}))
    (cfg / "rotation.json").write_text(json.dumps({"grace_days": 7, "timeout_seconds": 20}))
    me = pwd.getpwuid(os.geteuid()).pw_name
    old = "OLDTOKEN-%08x" % random.getrandbits(32)
    endpoint.accepted.update({old, endpoint.next_token})
    cred = cfg / "credentials" / "a1" / "api_token"
    cred.write_text(old)
    cred.chmod(0o600)

    class Env:
        pass

    e = Env()
    e.tmp, e.cfg, e.state, e.spool, e.cred, e.old, e.calls = tmp_path, cfg, state, spool, cred, old, calls
    e.script, e.endpoint, e.user, e.fake = script, endpoint, me, fake
    e.base = ["--config-dir", str(cfg), "--state-dir", str(state), "--spool-dir", str(spool)]

    def write_agent(name="a1", rotation=None, checks=None, user=None, extra=None):
        agent = {
            "name": name, "unit": "agentops-%s.service" % name, "user": user or me,
            "state_dir": str(state / name), "credentials_dir": str(cfg / "credentials" / name),
            "credentials": ["api_token"], "enabled": True, "state": "present",
            "auth_checks": checks if checks is not None else [
                {"name": "api", "type": "http", "url": endpoint.url + "/me", "credential": "api_token",
                 "expect_status": [200], "timeout": 5}],
            "token_rotation": rotation if rotation is not None else [
                {"credential": "api_token", "every_days": 45, "command": "%s %s/token" % (script, endpoint.url)}],
            "sandbox": fake_systemd.sandbox_entry(state / name),
        }
        agent.update(extra or {})
        (cfg / "agents.d" / (name + ".json")).write_text(json.dumps(agent))
    e.write_agent = write_agent
    write_agent()

    def age(days, path=None):
        past = time.time() - days * DAY
        os.utime(str(path or cred), (past, past))
    e.age = age

    def run(*argv):
        return cli.main(e.base + list(argv))
    e.run = run

    def restarts():
        if not calls.exists():
            return []
        return [line for line in calls.read_text().splitlines() if line.startswith("restart")]
    e.restarts = restarts

    def state_of(name="a1", credential="api_token"):
        with open(str(state / "rotation" / name / (credential + ".json")), encoding="utf-8") as handle:
            return json.load(handle)
    e.state_of = state_of

    def hooks_with(text):
        return [h for h in list(endpoint.hooks) if text in h]
    e.hooks_with = hooks_with

    yield e
    subprocess.run(["rm", "-rf", tooldir], check=False)


def _everything_written(e):
    """All bytes the rotation could have leaked into: state, spool, alert bodies."""
    blobs = list(e.endpoint.hooks)
    for root in (str(e.state), str(e.spool)):
        for folder, _dirs, files in os.walk(root):
            for name in files:
                with open(os.path.join(folder, name), "rb") as handle:
                    blobs.append(handle.read().decode("utf-8", "replace"))
    return "\n".join(blobs)


def test_due_credential_is_rotated_validated_swapped_and_confirmed(env, capsys):
    env.age(46)
    new = env.endpoint.next_token
    assert env.run("rotate") == 0
    out, err = capsys.readouterr()
    assert env.cred.read_text() == new
    assert stat.S_IMODE(env.cred.stat().st_mode) == 0o600
    prev = env.cred.parent / "api_token.prev"
    assert prev.read_text() == env.old
    assert stat.S_IMODE(prev.stat().st_mode) == 0o600
    assert sorted(os.listdir(str(env.cred.parent))) == ["api_token", "api_token.prev"]
    assert env.endpoint.token_requests == 1
    assert new in env.endpoint.api_requests  # validated against the API before the swap
    assert env.restarts() == ["restart agentops-a1.service"]
    state = env.state_of()
    assert state["result"] == "ok" and time.time() - state["last_success"] < 60
    assert "passed the auth check" in state["message"]
    hook = wait_for(lambda: env.hooks_with("Token rotated: a1/api_token"), message="info confirmation")
    assert "a1/api_token" in hook[0]
    for text in (out, err, _everything_written(env)):
        assert new not in text and env.old not in text
    # Done: the next daily run finds nothing due.
    assert env.run("rotate") == 0
    assert "nothing due" in capsys.readouterr().out
    assert env.endpoint.token_requests == 1


def test_recent_credential_is_left_alone(env, capsys):
    env.age(1)
    before = env.cred.stat()
    assert env.run("rotate") == 0
    assert "nothing due" in capsys.readouterr().out
    assert env.endpoint.token_requests == 0
    assert env.cred.read_text() == env.old and env.cred.stat().st_mtime == before.st_mtime
    assert not (env.cred.parent / "api_token.prev").exists()
    assert env.restarts() == []


def test_missed_day_is_caught_up_from_the_state(env, capsys):
    # Rotated 47 days ago (the host was down on day 45 and 46): today's run rotates.
    env.age(47)
    rotate.save_state(type("A", (), {"state_dir": str(env.state)}), "a1", "api_token",
                      {"last_success": time.time() - 47 * DAY, "result": "ok"})
    assert env.run("rotate") == 0
    assert env.cred.read_text() == env.endpoint.next_token


def test_exactly_every_days_old_is_due(env):
    env.age(45.001)
    assert env.run("rotate") == 0
    assert env.cred.read_text() == env.endpoint.next_token


@pytest.mark.parametrize("failure", ["command-fails", "prints-nothing", "rejected", "times-out", "two-lines",
                                     "same-token"])
def test_failure_keeps_old_credential_byte_for_byte(env, capsys, failure):
    env.age(46)
    if failure == "command-fails":
        env.endpoint.token_status = 500
    elif failure == "prints-nothing":
        env.endpoint.next_token = ""
    elif failure == "rejected":
        env.endpoint.accepted.discard(env.endpoint.next_token)
    elif failure == "same-token":
        env.endpoint.next_token = env.old
    elif failure == "times-out":
        env.write_agent(rotation=[{"credential": "api_token", "every_days": 45, "timeout": 1,
                                   "command": "/bin/sh -c 'sleep 30; echo late'"}])
    elif failure == "two-lines":
        env.write_agent(rotation=[{"credential": "api_token", "every_days": 45,
                                   "command": "/bin/sh -c 'echo NEWLINE1; echo NEWLINE2'"}])
    before = env.cred.read_bytes()
    before_stat = env.cred.stat()
    started = time.monotonic()
    assert env.run("rotate") == 1
    out, err = capsys.readouterr()
    assert time.monotonic() - started < 15  # the timeout kills the command
    assert env.cred.read_bytes() == before
    assert env.cred.stat().st_ino == before_stat.st_ino and env.cred.stat().st_mtime == before_stat.st_mtime
    assert sorted(os.listdir(str(env.cred.parent))) == ["api_token"]
    assert env.restarts() == []
    state = env.state_of()
    assert state["result"] == "failed" and "last_success" not in state
    expected = {"command-fails": "exited with status 3", "prints-nothing": "printed no token",
                "rejected": "failed the auth check", "times-out": "timed out after 1s",
                "two-lines": "more than one line", "same-token": "unchanged"}[failure]
    assert expected in state["message"]
    assert expected in err
    hook = wait_for(lambda: env.hooks_with("Token rotation failed: a1/api_token"), message="critical alert")
    assert "critical" in hook[0].lower()
    secret = env.endpoint.next_token
    for text in (out, err, _everything_written(env)):
        if secret:
            assert secret not in text
        assert env.old not in text
        assert "NEWLINE1" not in text
    # Still due: the next daily run tries again.
    assert rotate.schedule_entry(_args(env), _agent(env), rotate._entries(_agent(env))[0])["due"]


def _args(env):
    return cli.build_parser().parse_args(env.base + ["rotate"])


def _agent(env, name="a1"):
    from agentops_host import config
    return config.load_agent(str(env.cfg), name)


def test_success_after_failure_resolves_the_failure_alert(env, capsys):
    env.age(46)
    env.endpoint.token_status = 500
    assert env.run("rotate") == 1
    wait_for(lambda: env.hooks_with("Token rotation failed"), message="critical alert")
    env.endpoint.token_status = 200
    assert env.run("rotate") == 0
    assert env.cred.read_text() == env.endpoint.next_token
    wait_for(lambda: env.hooks_with("Token rotated: a1/api_token"), message="info confirmation")
    assert env.state_of()["result"] == "ok"
    resolved = wait_for(lambda: [h for h in env.hooks_with("rotate-failed:a1:api_token")
                                 if json.loads(h).get("severity") == "resolved"], message="resolved notice")
    assert len(resolved) == 1


def test_credential_without_auth_check_is_accepted_and_says_so(env, capsys):
    env.write_agent(checks=[])
    env.age(46)
    assert env.run("rotate") == 0
    assert env.cred.read_text() == env.endpoint.next_token
    assert "not validated" in env.state_of()["message"]
    assert "not validated" in capsys.readouterr().out
    assert env.endpoint.api_requests == []


def test_inactive_and_disabled_agent_is_not_started(env, capsys):
    (env.tmp / "active_rc").write_text("3")
    env.age(46)
    assert env.run("rotate") == 0
    assert env.cred.read_text() == env.endpoint.next_token
    assert env.restarts() == []
    assert "not started" in env.state_of()["message"]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_command_runs_as_the_agent_user_with_home_in_its_state_dir(env):
    nobody = pwd.getpwnam("nobody")
    # the agent's own state directory, which its user can enter (the transient unit changes into it as that user)
    home = tempfile.mkdtemp(prefix="agentops-rotate-home-")
    os.chmod(home, 0o700)
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    env.write_agent(user="nobody", checks=[], rotation=[
        {"credential": "api_token", "every_days": 45,
         "command": "/bin/sh -c 'echo \"$(id -u):$(id -G):$HOME:$AGENTOPS_CREDENTIAL:$(pwd)\"'"}],
        extra={"state_dir": home})
    env.age(46)
    assert env.run("rotate") == 0
    uid, groups, got_home, cred, cwd = env.cred.read_text().split(":")
    assert uid == str(nobody.pw_uid)
    assert "0" not in groups.split()  # root's groups are not inherited
    assert got_home == cwd == home and cred == "api_token"
    # through the agent's transient unit, with its sandbox
    (run,) = env.fake.runs()
    assert "--unit=agentops-heartbeat-rotate-a1.service" in run and "--uid=nobody" in run
    assert "NoNewPrivileges=yes" in run and "ReadWritePaths=%s" % (env.state / "a1") in run
    assert env.cred.stat().st_uid == 0 and stat.S_IMODE(env.cred.stat().st_mode) == 0o600


def test_current_token_reaches_the_command_on_stdin_only(env):
    env.write_agent(checks=[], rotation=[
        {"credential": "api_token", "every_days": 45, "command": "/bin/sh -c 'echo \"got-$(cat)\"'"}])
    env.age(46)
    assert env.run("rotate") == 0
    assert env.cred.read_text() == "got-" + env.old


def _hold_lock(env, name):
    """Hold agent ``name``'s rotation lock as another `agentops rotate` would; returns the fd."""
    lock_dir = env.state / "rotation" / name
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(str(lock_dir / ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_second_run_while_locked_exits_with_a_clear_message(env, capsys):
    env.age(46)
    fd = _hold_lock(env, "a1")
    try:
        assert env.run("rotate") == rotate.EXIT_LOCKED
        err = capsys.readouterr().err
        assert "another rotation is running for agent a1" in err and "skipped" in err
        assert env.cred.read_text() == env.old and env.endpoint.token_requests == 0
        assert env.run("rotate", "--force", "a1/api_token") == rotate.EXIT_LOCKED
        assert env.cred.read_text() == env.old and env.endpoint.token_requests == 0
    finally:
        os.close(fd)
    assert env.run("rotate") == 0
    assert env.cred.read_text() == env.endpoint.next_token


def test_force_rotates_a_credential_that_is_not_due(env, capsys):
    env.age(2)
    assert env.run("rotate", "--force", "a1/api_token") == 0
    assert env.cred.read_text() == env.endpoint.next_token
    assert "forced" in env.state_of()["message"]


@pytest.mark.parametrize("spec,message", [("a1", "AGENT/CREDENTIAL"), ("a1/other", "no token_rotation entry for other"),
                                          ("ghost/api_token", "unknown agent")])
def test_force_rejects_unknown_targets(env, capsys, spec, message):
    rc = env.run("rotate", "--force", spec)
    assert rc != 0
    assert message in capsys.readouterr().err
    assert env.cred.read_text() == env.old


def test_list_shows_schedule_and_next_due(env, capsys):
    env.age(40)
    assert env.run("rotate", "--list") == 0
    out = capsys.readouterr().out
    due = time.strftime("%Y-%m-%d", time.localtime(os.stat(str(env.cred)).st_mtime + 45 * DAY))
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["AGENT", "CREDENTIAL", "EVERY"]
    assert "a1" in lines[1] and "api_token" in lines[1] and "never" in lines[1] and due in lines[1]
    assert "(due)" not in lines[1]
    assert env.run("rotate", "--list", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["next_due"] == due and data[0]["due"] is False and data[0]["result"] == "never"
    assert rotate.next_due(_args(env), _agent(env)) == due
    # after a rotation the next due date moves 45 days ahead of today
    assert env.run("rotate", "--force", "a1/api_token") == 0
    capsys.readouterr()
    assert env.run("rotate", "--list", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["result"] == "ok" and data[0]["last_rotation"]
    assert data[0]["next_due"] == time.strftime("%Y-%m-%d", time.localtime(time.time() + 45 * DAY))


def test_overdue_after_every_days_plus_grace(env):
    args, agent = _args(env), _agent(env)
    env.age(51)
    assert rotate.overdue(args, agent) == []
    env.age(52.01)
    found = rotate.overdue(args, agent)
    assert len(found) == 1
    key, title, body = found[0]
    assert key == "rotation-overdue:a1:api_token" and "a1/api_token" in title and "45 days" in body
    assert env.old not in body
    # grace from rotation.json (written by the token_rotation role)
    (env.cfg / "rotation.json").write_text(json.dumps({"grace_days": 30, "timeout_seconds": 20}))
    assert rotate.overdue(args, agent) == []


def test_next_due_is_the_earliest_of_the_agents_credentials(env):
    other = env.cfg / "credentials" / "a1" / "second"
    other.write_text("x")
    env.write_agent(rotation=[
        {"credential": "api_token", "every_days": 45, "command": "/bin/true"},
        {"credential": "second", "every_days": 10, "command": "/bin/true"}],
        extra={"credentials": ["api_token", "second"]})
    env.age(1)
    env.age(5, other)
    expected = time.strftime("%Y-%m-%d", time.localtime(other.stat().st_mtime + 10 * DAY))
    assert rotate.next_due(_args(env), _agent(env)) == expected
    env.write_agent(rotation=[])
    assert rotate.next_due(_args(env), _agent(env)) is None


@pytest.mark.parametrize("every", ["*/45", 0, True, "45"])
def test_invalid_every_days_on_the_host_is_refused_naming_the_agent(env, capsys, every):
    env.write_agent(rotation=[{"credential": "api_token", "every_days": every, "command": "/bin/true"}])
    env.age(100)
    assert env.run("rotate") == 1
    err = capsys.readouterr().err
    assert "agent a1" in err and "every_days" in err
    assert env.cred.read_text() == env.old


def test_sigkill_during_swap_leaves_old_or_new_never_partial(env):
    """Kill `agentops rotate --force` at random moments: the file is always one whole token."""
    env.write_agent(checks=[], rotation=[
        {"credential": "api_token", "every_days": 45,
         "command": "/bin/sh -c 'head -c 3000 /dev/zero | tr \"\\\\0\" \"T\"; echo'"}])
    new = "T" * 3000
    valid = {env.old, new}
    runner = _runner(env, "rotate", "--force", "a1/api_token")
    seen = set()
    for _ in range(30):
        env.cred.write_text(env.old)
        proc = subprocess.Popen(runner, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(random.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        content = env.cred.read_text()
        assert content in valid, "credential is neither the old nor the new token (%d bytes)" % len(content)
        seen.add(content == new)
        assert stat.S_IMODE(env.cred.stat().st_mode) == 0o600
    # A later run cleans up temporary files left by a killed one.
    env.cred.write_text(env.old)
    assert env.run("rotate", "--force", "a1/api_token") == 0
    assert env.cred.read_text() == new
    assert sorted(os.listdir(str(env.cred.parent))) == ["api_token", "api_token.prev"]


# ---------------------------------------------------------------------------
# hostile rotation commands: bounded output, one deadline, per-agent locks, any error alerted


def _runner(env, *argv):
    """`agentops ...` in a child process (the stand-ins of systemctl and systemd-run kept), for figures the test
    process cannot give."""
    return [sys.executable, "-c",
            "import sys; sys.path[:0] = [%r, %r]; from agentops_host import cli, rotate, sandbox; "
            "rotate.SYSTEMCTL = %r; sandbox.SYSTEMD_RUN = %r; sandbox.SYSTEMCTL = %r; sys.exit(cli.main(sys.argv[1:]))"
            % (HOSTLIB, MODULE_UTILS_PARENT, rotate.SYSTEMCTL, sandbox.SYSTEMD_RUN, sandbox.SYSTEMCTL)] + env.base + list(argv)


def _add_second_agent(env, name="a2", rotation=None):
    cred_dir = env.cfg / "credentials" / name
    cred_dir.mkdir(parents=True, exist_ok=True)
    (env.state / name).mkdir(parents=True, exist_ok=True)
    cred = cred_dir / "api_token"
    cred.write_text(env.old)
    cred.chmod(0o600)
    env.write_agent(name=name, rotation=rotation)
    env.age(46, cred)
    return cred


def _prefixes_absent(secret, *texts, shortest=4):
    for text in texts:
        for size in range(shortest, len(secret) + 1):
            assert secret[:size] not in text, "a %d-character prefix of a token leaked" % size


def test_flooding_rotation_command_is_cut_bounded_in_memory_and_alerted(env, capsys, tmp_path):
    env.write_agent(rotation=[{"credential": "api_token", "every_days": 45, "command": "/usr/bin/yes"}])
    env.age(46)
    before = env.cred.read_bytes()
    started = time.monotonic()
    # A small launcher runs the command and reports its peak RSS (wait4, KiB on Linux, the `yes` it ran
    # included): a child forked by this test process directly would count this process's own pages.
    rss_file = tmp_path / "rss"
    launcher = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL); "
                "_pid, status, usage = os.wait4(p.pid, 0); open(sys.argv[1], 'w').write(str(usage.ru_maxrss)); "
                "sys.exit(os.waitstatus_to_exitcode(status))")
    proc = subprocess.Popen([sys.executable, "-I", "-c", launcher, str(rss_file)] + list(_runner(env, "rotate")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()  # a few lines: the failure and the alert log
    proc.wait()
    took = time.monotonic() - started
    peak = int(rss_file.read_text())
    print("flood run: peak RSS %d KiB, %.2f s" % (peak, took))
    assert proc.returncode == 1, err
    assert b"printed more than 64 KiB" in err
    assert took < 15
    assert peak < 100 * 1024  # an interpreter plus at most 64 KiB of output (1.9 GiB before the bound)
    assert env.cred.read_bytes() == before
    assert sorted(os.listdir(str(env.cred.parent))) == ["api_token"]
    state = env.state_of()
    assert state["result"] == "failed" and "printed more than 64 KiB" in state["message"]
    wait_for(lambda: env.hooks_with("Token rotation failed: a1/api_token"), message="critical alert")
    assert env.restarts() == []


def test_setsid_child_holding_the_pipes_cannot_hold_the_run_and_the_next_agent_rotates(env, capsys, tmp_path):
    pidfile = tmp_path / "escaped.pid"
    env.write_agent(rotation=[{"credential": "api_token", "every_days": 45, "timeout": 2,
                               "command": ["/bin/sh", "-c", "setsid /bin/sh -c 'echo $$ > %s; exec sleep 60' & "
                                           "sleep 60" % pidfile]}])
    env.age(46)
    a2 = _add_second_agent(env)
    started = time.monotonic()
    try:
        rc = env.run("rotate")
        took = time.monotonic() - started
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    out, err = capsys.readouterr()
    assert pidfile.exists(), "the escaping child never started"
    assert rc == 1
    assert "a1/api_token: FAILED: command /bin/sh timed out after 2s" in err
    assert took < 2 + 2 + 5, "the run took %.1f s" % took  # a1's timeout + slack + a2's real rotation
    assert env.cred.read_text() == env.old
    assert a2.read_text() == env.endpoint.next_token  # the other agent still rotated
    assert env.state_of("a2")["result"] == "ok" and env.state_of("a1")["result"] == "failed"
    print("setsid case: whole run %.2f s with a 2 s timeout" % took)


def test_command_that_exits_leaving_a_child_on_the_pipes_still_rotates_promptly(env, capsys, tmp_path):
    pidfile = tmp_path / "bg.pid"
    new = "BGTOKEN-%08x" % random.getrandbits(32)
    env.write_agent(checks=[], rotation=[{"credential": "api_token", "every_days": 45, "timeout": 20,
                                          "command": ["/bin/sh", "-c", "setsid /bin/sh -c 'echo $$ > %s; exec sleep 60' "
                                                      "& echo %s" % (pidfile, new)]}])
    env.age(46)
    started = time.monotonic()
    try:
        assert env.run("rotate") == 0
        took = time.monotonic() - started
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert env.cred.read_text() == new
    assert took < 5


def test_per_agent_lock_held_for_a_does_not_block_b(env, capsys):
    env.age(46)
    a2 = _add_second_agent(env)
    fd = _hold_lock(env, "a1")
    try:
        assert env.run("rotate") == rotate.EXIT_LOCKED
    finally:
        os.close(fd)
    err = capsys.readouterr().err
    assert "another rotation is running for agent a1" in err
    assert env.cred.read_text() == env.old  # a1 skipped
    assert a2.read_text() == env.endpoint.next_token  # b rotated meanwhile


def test_two_runs_for_the_same_agent_exclude_each_other_other_agents_do_not(env, tmp_path):
    started_flag = tmp_path / "started"
    slow = ["/bin/sh", "-c", "touch %s; sleep 3; echo SLOWTOKEN-%08x" % (started_flag, random.getrandbits(32))]
    env.write_agent(checks=[], rotation=[{"credential": "api_token", "every_days": 45, "command": slow}])
    a2 = _add_second_agent(env)
    first = subprocess.Popen(_runner(env, "rotate", "--force", "a1/api_token"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(started_flag.exists, message="the first rotation of a1 to start")
        second = subprocess.run(_runner(env, "rotate", "--force", "a1/api_token"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, timeout=30, check=False)
        assert second.returncode == rotate.EXIT_LOCKED, second.stderr
        assert b"another rotation is running for agent a1" in second.stderr
        other = subprocess.run(_runner(env, "rotate", "--force", "a2/api_token"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=30, check=False)
        assert other.returncode == 0, other.stderr
        assert first.poll() is None  # a2 rotated while a1's rotation was still running
    finally:
        out, err = first.communicate(timeout=30)
    assert first.returncode == 0, err
    assert env.cred.read_text().startswith("SLOWTOKEN-")
    assert a2.read_text() == env.endpoint.next_token


@pytest.mark.parametrize("which", ["current", "new"])
def test_stderr_tail_is_masked_before_it_is_cut(env, capsys, which):
    new = "NEWSECRET-%016x" % random.getrandbits(64)
    if which == "current":
        script = "printf '%0290d' 0 >&2; cat >&2; echo >&2; exit 1"
        secret = env.old
    else:
        script = "echo %s; printf '%%0290d' 0 >&2; echo %s >&2; exit 1" % (new, new)
        secret = new
    env.write_agent(checks=[], rotation=[{"credential": "api_token", "every_days": 45,
                                          "command": ["/bin/sh", "-c", script]}])
    env.age(46)
    assert env.run("rotate") == 1
    out, err = capsys.readouterr()
    message = env.state_of()["message"]
    assert "exited with status 1: " + "0" * 200 in message  # the tail is there ...
    hook = wait_for(lambda: env.hooks_with("Token rotation failed"), message="critical alert")
    _prefixes_absent(secret, message, out, err, _everything_written(env), *hook)  # ... without any piece of the token


def test_unexpected_error_of_one_agent_is_recorded_alerted_and_others_rotate(env, capsys):
    # A user name with a NUL makes the password database lookup raise ValueError: not a RotationError.
    env.write_agent(user="agent\u0000one")
    env.age(46)
    a2 = _add_second_agent(env)
    assert env.run("rotate") == 1
    err = capsys.readouterr().err
    state = env.state_of("a1")
    assert state["result"] == "failed" and "unexpected error: ValueError" in state["message"]
    assert "a1/api_token: FAILED: unexpected error" in err
    wait_for(lambda: env.hooks_with("Token rotation failed: a1/api_token"), message="critical alert for a1")
    assert env.cred.read_text() == env.old
    assert a2.read_text() == env.endpoint.next_token
    assert env.state_of("a2")["result"] == "ok"


def test_rotation_command_environment_cwd_and_fds_are_fixed(env, monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", "/var/lib/agentops/evil/.local")
    monkeypatch.setenv("LD_PRELOAD", "/var/lib/agentops/evil/evil.so")
    monkeypatch.setenv("HOME", "/root/elsewhere")
    monkeypatch.setenv("AGENTOPS_SECRET", "leak")
    report = tmp_path / "report"
    new = "ENVTOKEN-%08x" % random.getrandbits(32)
    script = ("env > %s; echo \"cwd=$(pwd)\" >> %s; ls /proc/self/fd >> %s; echo %s"
              % (report, report, report, new))
    env.write_agent(checks=[], rotation=[{"credential": "api_token", "every_days": 45,
                                          "command": ["/bin/sh", "-c", script]}])
    env.age(46)
    assert env.run("rotate") == 0
    assert env.cred.read_text() == new
    lines = report.read_text().splitlines()
    got = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("cwd="))
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert got["HOME"] == str(env.state / "a1")
    assert got["PATH"] == rotate.SAFE_PATH and got["LANG"] == "C.UTF-8"
    assert got["USER"] == got["LOGNAME"] == me
    assert got["AGENTOPS_AGENT"] == "a1" and got["AGENTOPS_CREDENTIAL"] == "api_token"
    assert set(got) - {"PWD", "SHLVL", "_", "OLDPWD"} == {"PATH", "LANG", "HOME", "USER", "LOGNAME",
                                                            "AGENTOPS_AGENT", "AGENTOPS_CREDENTIAL"}
    assert "cwd=%s" % (env.state / "a1") in lines
    fds = sorted(int(l) for l in lines if l.isdigit())
    assert fds[:3] == [0, 1, 2] and len(fds) <= 4  # stdin/stdout/stderr (and ls' own directory fd)


def test_agent_whose_lock_cannot_be_taken_fails_alone_and_is_alerted(env, capsys):
    env.age(46)
    a2 = _add_second_agent(env)
    (env.state / "rotation").mkdir(mode=0o700, exist_ok=True)
    (env.state / "rotation" / "a1").write_text("not a directory")
    assert env.run("rotate") == 1
    err = capsys.readouterr().err
    assert "a1/api_token: FAILED: cannot take the rotation lock" in err
    wait_for(lambda: env.hooks_with("Token rotation failed: a1/api_token"), message="critical alert for a1")
    assert env.cred.read_text() == env.old
    assert a2.read_text() == env.endpoint.next_token
