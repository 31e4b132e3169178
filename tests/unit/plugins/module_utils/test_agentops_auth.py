"""agentops_auth: every check type against real things (a local HTTP server, files, commands)."""
import base64
import http.server
import json
import os
import socket
import sys
import threading
import time

import pytest

from ansible_collections.agentops.fleet.plugins.module_utils import agentops_auth as auth
from agentops_lib import agentops_auth as host_auth

CANARY = "canary-Zq7xTOKEN-4471"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    routes = {
        "/ok": (200, {}),
        "/created": (201, {}),
        "/unauthorized": (401, {}),
        "/forbidden": (403, {}),
        "/error": (500, {}),
        "/throttled": (429, {}),
        "/notfound": (404, {}),
        "/redirect": (302, {"Location": "http://127.0.0.1:1/login"}),
    }

    def log_message(self, fmt, *args):
        pass

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append({"method": self.command, "path": self.path,
                                     "headers": dict(self.headers.items()), "body": body.decode()})
        if self.path.startswith("/slow"):
            time.sleep(3)
            status, headers = 200, {}
        else:
            status, headers = self.routes.get(self.path.split("?")[0], (404, {}))
        payload = json.dumps({"echo": "the answer never matters, the status does"}).encode()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_HEAD = do_PUT = _answer


@pytest.fixture(scope="module")
def api():
    """A real HTTP server on 127.0.0.1 (random port); .url(path), .requests."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = lambda path: "http://127.0.0.1:%d%s" % (server.server_address[1], path)
    yield server
    server.shutdown()
    server.server_close()


def closed_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def no_secret(result, *secrets):
    text = json.dumps(result)
    for secret in secrets:
        assert secret not in text, "secret leaked into %s" % text


def make_jwt(claims):
    def enc(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    return "%s.%s.%s" % (enc({"alg": "RS256", "typ": "JWT"}), enc(claims), "c2lnbmF0dXJl")


def test_same_module_on_controller_and_host():
    assert auth.run_check.__code__.co_filename.endswith("agentops_auth.py")
    assert host_auth.STATUSES == auth.STATUSES == ("AUTH_OK", "AUTH_EXPIRING", "AUTH_FAILED", "AUTH_UNREACHABLE")


# ---------------------------------------------------------------- http

def test_http_200_is_ok_and_sends_bearer(api):
    result = auth.run_check({"name": "graph", "type": "http", "url": api.url("/ok")}, token=CANARY)
    assert result["status"] == "AUTH_OK", result
    assert result["http_status"] == 200
    assert set(result) == {"status", "message", "http_status", "expires_at", "expires_in_seconds", "elapsed"}
    assert api.requests[-1]["headers"]["Authorization"] == "Bearer " + CANARY
    assert result["elapsed"] >= 0
    no_secret(result, CANARY)


@pytest.mark.parametrize("path,code,words", [
    ("/unauthorized", 401, "expired, revoked or wrong"),
    ("/forbidden", 403, "not allowed"),
])
def test_http_401_403_are_failed_naming_check_url_status(api, path, code, words):
    result = auth.run_check({"name": "graph", "type": "http", "url": api.url(path)}, token=CANARY)
    assert result["status"] == "AUTH_FAILED"
    assert result["http_status"] == code
    for part in ("'graph'", api.url(path), str(code), words):
        assert part in result["message"]
    assert "\n" not in result["message"]
    no_secret(result, CANARY)


@pytest.mark.parametrize("path,code", [("/error", 500), ("/throttled", 429)])
def test_http_5xx_and_429_are_unreachable_not_failed(api, path, code):
    result = auth.run_check({"name": "graph", "type": "http", "url": api.url(path)}, token=CANARY)
    assert result["status"] == "AUTH_UNREACHABLE"
    assert result["http_status"] == code
    assert "could not be checked" in result["message"]


def test_http_unexpected_status_is_failed(api):
    result = auth.run_check({"name": "graph", "type": "http", "url": api.url("/notfound")}, token=CANARY)
    assert result["status"] == "AUTH_FAILED"
    assert "HTTP 404" in result["message"] and "expected 200" in result["message"]


def test_http_expect_status_list(api):
    check = {"name": "c", "type": "http", "url": api.url("/created"), "expect_status": [200, 201], "method": "POST"}
    result = auth.run_check(check, token=CANARY)
    assert result["status"] == "AUTH_OK"
    assert api.requests[-1]["method"] == "POST"
    check["expect_status"] = [200]
    assert auth.run_check(check, token=CANARY)["status"] == "AUTH_FAILED"


def test_http_slow_response_past_timeout_is_unreachable(api):
    started = time.monotonic()
    result = auth.run_check({"name": "slow", "type": "http", "url": api.url("/slow")}, token=CANARY, timeout=1)
    assert result["status"] == "AUTH_UNREACHABLE", result
    assert "did not answer within 1s" in result["message"]
    assert "not an auth failure" in result["message"]
    assert time.monotonic() - started < 2.9  # gave up at the timeout, did not wait for the answer


def test_http_check_timeout_overrides_default(api):
    result = auth.run_check({"name": "slow", "type": "http", "url": api.url("/slow"), "timeout": "1s"}, token=CANARY)
    assert result["status"] == "AUTH_UNREACHABLE"
    assert result["elapsed"] < 2.9


def test_http_closed_port_is_unreachable():
    url = "http://127.0.0.1:%d/me" % closed_port()
    result = auth.run_check({"name": "graph", "type": "http", "url": url}, token=CANARY)
    assert result["status"] == "AUTH_UNREACHABLE"
    assert "cannot connect to " + url in result["message"]
    assert result["http_status"] is None
    no_secret(result, CANARY)


def test_http_redirect_is_not_followed(api):
    before = len(api.requests)
    result = auth.run_check({"name": "sso", "type": "http", "url": api.url("/redirect")}, token=CANARY)
    assert result["status"] == "AUTH_FAILED"
    assert "redirects to http://127.0.0.1:1/login" in result["message"]
    assert len(api.requests) == before + 1


def test_http_basic_auth_with_password(api):
    check = {"name": "b", "type": "http", "url": api.url("/ok"), "username": "bot", "password": CANARY}
    result = auth.run_check(check)
    assert result["status"] == "AUTH_OK"
    sent = api.requests[-1]["headers"]["Authorization"]
    assert sent == "Basic " + base64.b64encode(("bot:" + CANARY).encode()).decode()
    no_secret(result, CANARY)


def test_http_basic_auth_takes_token_as_password(api):
    result = auth.run_check({"name": "b", "type": "http", "url": api.url("/ok"), "username": "bot"}, token=CANARY)
    assert result["status"] == "AUTH_OK"
    assert base64.b64decode(api.requests[-1]["headers"]["Authorization"][6:]).decode() == "bot:" + CANARY


def test_http_headers_and_token_file(api, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(CANARY + "\n")
    check = {"name": "h", "type": "http", "url": api.url("/ok"), "headers": {"X-Tenant": "t1"},
             "token_file": str(token_file)}
    result = auth.run_check(check)
    assert result["status"] == "AUTH_OK"
    assert api.requests[-1]["headers"]["X-Tenant"] == "t1"
    assert api.requests[-1]["headers"]["Authorization"] == "Bearer " + CANARY  # final newline stripped


def test_http_empty_token_file_fails_before_asking(api, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("\n")
    before = len(api.requests)
    result = auth.run_check({"name": "h", "type": "http", "url": api.url("/ok"), "token_file": str(token_file)})
    assert result["status"] == "AUTH_FAILED"
    assert "is empty" in result["message"] and str(token_file) in result["message"]
    assert len(api.requests) == before


def test_http_missing_token_file(tmp_path):
    missing = str(tmp_path / "nope")
    result = auth.run_check({"name": "h", "type": "http", "url": "http://127.0.0.1:1/", "token_file": missing})
    assert result["status"] == "AUTH_FAILED"
    assert "cannot read token_file " + missing in result["message"]


# ---------------------------------------------------------------- jwt

def test_jwt_valid():
    token = make_jwt({"exp": int(time.time()) + 30 * 86400, "sub": "agent"})
    result = auth.run_check({"name": "j", "type": "jwt", "min_valid": "7d"}, token=token)
    assert result["status"] == "AUTH_OK"
    assert 29 * 86400 < result["expires_in_seconds"] <= 30 * 86400
    assert result["expires_at"].endswith("Z")
    no_secret(result, token)


def test_jwt_expired():
    exp = int(time.time()) - 3600
    result = auth.run_check({"name": "j", "type": "jwt"}, token=make_jwt({"exp": exp}))
    assert result["status"] == "AUTH_FAILED"
    assert "expired at" in result["message"] and "1h ago" in result["message"]
    assert result["expires_in_seconds"] < 0


def test_jwt_expiring_warns_but_passes():
    token = make_jwt({"exp": int(time.time()) + 2 * 86400})
    check = {"name": "j", "type": "jwt", "min_valid": "7d"}
    result = auth.run_check(check, token=token)
    assert result["status"] == "AUTH_EXPIRING"
    assert "less than min_valid 7d" in result["message"]
    assert auth.passed(check, result) is True
    check["fail_on_expiring"] = True
    assert auth.passed(check, auth.run_check(check, token=token)) is False


@pytest.mark.parametrize("token,words", [
    ("not-a-jwt", "3"),
    ("a.%%%.c", "base64url"),
    ("a.%s.c" % base64.urlsafe_b64encode(b"[1]").decode(), "JSON object"),
])
def test_jwt_malformed(token, words):
    result = auth.run_check({"name": "j", "type": "jwt", "token": token})
    assert result["status"] == "AUTH_FAILED"
    assert "not a JWT" in result["message"] and words in result["message"]


def test_jwt_not_yet_valid_and_no_exp():
    future = make_jwt({"nbf": int(time.time()) + 7200, "exp": int(time.time()) + 9000})
    assert auth.run_check({"name": "j", "type": "jwt"}, token=future)["status"] == "AUTH_FAILED"
    result = auth.run_check({"name": "j", "type": "jwt"}, token=make_jwt({"sub": "x"}))
    assert result["status"] == "AUTH_OK" and "no expiry" in result["message"]


# ---------------------------------------------------------------- command

def test_command_success_and_regex(tmp_path):
    check = {"name": "mog", "type": "command", "command": [sys.executable, "-c", "print('account bot: valid')"],
             "expect_regex": "^account .*: valid$"}
    assert auth.run_check(check)["status"] == "AUTH_OK"


def test_command_regex_miss():
    check = {"name": "mog", "type": "command", "command": "echo 'no accounts'", "expect_regex": "valid"}
    result = auth.run_check(check)
    assert result["status"] == "AUTH_FAILED"
    assert "does not match 'valid'" in result["message"]


def test_command_failure_shows_last_line_without_token():
    script = "import sys; t = sys.stdin.read().strip(); print('token ' + t + ' refused', file=sys.stderr); sys.exit(3)"
    result = auth.run_check({"name": "cli", "type": "command", "command": [sys.executable, "-c", script]}, token=CANARY)
    assert result["status"] == "AUTH_FAILED"
    assert "exited with 3" in result["message"] and "refused" in result["message"]
    no_secret(result, CANARY)


def test_command_gets_token_on_stdin_not_argv():
    script = "import sys; sys.exit(0 if sys.stdin.read().strip() == %r else 1)" % CANARY
    assert auth.run_check({"name": "cli", "type": "command", "command": [sys.executable, "-c", script]},
                          token=CANARY)["status"] == "AUTH_OK"


def test_command_not_found_and_timeout():
    result = auth.run_check({"name": "cli", "type": "command", "command": "/nonexistent/tool auth list"})
    assert result["status"] == "AUTH_FAILED" and "command not found: /nonexistent/tool" in result["message"]
    result = auth.run_check({"name": "cli", "type": "command", "command": "sleep 5"}, timeout=0.5)
    assert result["status"] == "AUTH_UNREACHABLE" and "did not finish within 0.5s" in result["message"]


# ---------------------------------------------------------------- file

def test_file_ok_with_max_age(tmp_path):
    path = tmp_path / "token"
    path.write_text(CANARY)
    path.chmod(0o600)
    result = auth.run_check({"name": "f", "type": "file", "path": str(path), "max_age": "45d"})
    assert result["status"] == "AUTH_OK"
    assert 44 * 86400 < result["expires_in_seconds"] <= 45 * 86400
    no_secret(result, CANARY)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_file_readable_by_others_fails(tmp_path, mode):
    path = tmp_path / "token"
    path.write_text(CANARY)
    path.chmod(mode)
    result = auth.run_check({"name": "f", "type": "file", "token_file": str(path)})
    assert result["status"] == "AUTH_FAILED"
    assert "%04o" % mode in result["message"] and "chmod 0600" in result["message"]


def test_file_too_old_missing_empty(tmp_path):
    path = tmp_path / "token"
    path.write_text(CANARY)
    path.chmod(0o600)
    old = time.time() - 50 * 86400
    os.utime(path, (old, old))
    result = auth.run_check({"name": "f", "type": "file", "path": str(path), "max_age": "45d"})
    assert result["status"] == "AUTH_FAILED" and "50d ago, older than max_age 45d" in result["message"]
    result = auth.run_check({"name": "f", "type": "file", "path": str(tmp_path / "missing")})
    assert result["status"] == "AUTH_FAILED" and "does not exist" in result["message"]
    empty = tmp_path / "empty"
    empty.write_text("")
    empty.chmod(0o600)
    result = auth.run_check({"name": "f", "type": "file", "path": str(empty)})
    assert result["status"] == "AUTH_FAILED" and "is empty" in result["message"]


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("check,words", [
    ({"name": "x", "type": "ftp"}, "unknown type 'ftp' (use one of: http, jwt, command, file)"),
    ({"name": "x", "type": "http"}, "type http needs 'url'"),
    ({"name": "x", "type": "http", "url": "graph.example.com/me"}, "must start with http://"),
    ({"name": "x", "type": "http", "url": "https://a/", "token": "t", "token_file": "/t"}, "not both"),
    ({"name": "x", "type": "http", "url": "https://a/", "expect_status": [200, "ok"]}, "'expect_status'"),
    ({"name": "x", "type": "http", "url": "https://a/", "method": "FETCH"}, "unknown HTTP method"),
    ({"name": "x", "type": "jwt"}, "type jwt needs the token"),
    ({"name": "x", "type": "jwt", "token": "t", "min_valid": "7 fortnights"}, "'min_valid' is not a time span"),
    ({"name": "x", "type": "command"}, "type command needs 'command'"),
    ({"name": "x", "type": "command", "command": "ls", "expect_regex": "("}, "not a valid regular expression"),
    ({"name": "x", "type": "file"}, "type file needs 'path'"),
    ({"name": "x", "type": "file", "path": "relative/token"}, "absolute path"),
    ({"type": "jwt", "token": "t"}, "'name' is required"),
    ({"name": "x", "type": "jwt", "token": "t", "colour": "red"}, "unknown key(s) colour"),
])
def test_validate_check_rejects(check, words):
    errors = auth.validate_check(check)
    assert errors and any(words in e for e in errors), errors
    result = auth.run_check(check)
    assert result["status"] == "AUTH_FAILED" and words in result["message"]


def test_validate_check_accepts_contract_example():
    check = {"name": "graph", "type": "http", "url": "https://graph.microsoft.com/v1.0/me",
             "credential": "graph_token", "expect_status": [200]}
    assert auth.validate_check(check) == []
    assert auth.validate_check(check, token_sources=("token", "token_file"))  # the module has no credential


# ---------------------------------------------------------------- TLS

@pytest.fixture(scope="module")
def tls_api(tmp_path_factory):
    """The same server behind TLS with a self-signed certificate for 127.0.0.1."""
    import shutil
    import ssl
    import subprocess
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.requests = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url = lambda path: "https://127.0.0.1:%d%s" % (server.server_address[1], path)
    server.cert = cert
    yield server
    server.shutdown()
    server.server_close()


def test_tls_verified_by_default(tls_api):
    before = len(tls_api.requests)
    result = auth.run_check({"name": "tls", "type": "http", "url": tls_api.url("/ok")}, token=CANARY)
    assert result["status"] == "AUTH_UNREACHABLE"
    assert "TLS verification of %s failed" % tls_api.url("/ok") in result["message"]
    assert len(tls_api.requests) == before  # the token never went out over the unverified connection
    no_secret(result, CANARY)


def test_tls_with_ca_path_or_validate_certs_false(tls_api):
    result = auth.run_check({"name": "tls", "type": "http", "url": tls_api.url("/ok"), "ca_path": tls_api.cert},
                            token=CANARY)
    assert result["status"] == "AUTH_OK", result
    result = auth.run_check({"name": "tls", "type": "http", "url": tls_api.url("/unauthorized"),
                             "validate_certs": False}, token=CANARY)
    assert result["status"] == "AUTH_FAILED" and result["http_status"] == 401


# ---------------------------------------------------------------- hostile endpoints (overall deadline, leaks)

class RawServer:
    """A TCP server on 127.0.0.1 that answers every connection with ``behaviour(conn, server)`` in a thread."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.received = []
        self.sent = 0
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return "http://127.0.0.1:%d/me" % self.sock.getsockname()[1]

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.settimeout(30)
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            self.received.append(data)
            self.behaviour(conn, self)
        except OSError:
            pass
        finally:
            self.closed.set()
            conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def raw_server():
    servers = []

    def make(behaviour):
        server = RawServer(behaviour)
        servers.append(server)
        return server
    yield make
    for server in servers:
        server.close()


def _trickle(conn, server):
    """Two bytes a second, for minutes: every recv() of the client gets data well within its socket timeout."""
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Padding: " + b"a" * 600:
        conn.sendall(bytes([byte]))
        server.sent += 1
        time.sleep(0.5)


def test_http_trickle_server_is_cut_at_the_overall_deadline(raw_server):
    server = raw_server(_trickle)
    started = time.monotonic()
    result = auth.run_check({"name": "trickle", "type": "http", "url": server.url}, token=CANARY, timeout=1)
    took = time.monotonic() - started
    assert result["status"] == "AUTH_UNREACHABLE", result
    assert "did not answer within 1s" in result["message"]
    assert took < 2.5, "a 1 s check took %.2f s against a trickling server" % took
    assert server.closed.wait(5), "the connection was not shut down at the deadline"
    no_secret(result, CANARY)


def test_http_trickle_with_check_timeout_and_module_default(raw_server):
    server = raw_server(_trickle)
    started = time.monotonic()
    result = auth.run_check({"name": "trickle", "type": "http", "url": server.url, "timeout": "2s"}, token=CANARY)
    assert result["status"] == "AUTH_UNREACHABLE"
    assert 1.9 <= time.monotonic() - started < 3.5


def test_http_huge_body_is_never_read(raw_server):
    import tracemalloc

    def huge(conn, server):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4294967296\r\n\r\n")
        block = b"[" * 65536
        for _ in range(65536):  # 4 GiB if anybody read it
            conn.sendall(block)
            server.sent += len(block)

    server = raw_server(huge)
    tracemalloc.start()
    try:
        started = time.monotonic()
        result = auth.run_check({"name": "big", "type": "http", "url": server.url}, token=CANARY, timeout=5)
        took = time.monotonic() - started
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result["status"] == "AUTH_OK", result
    assert took < 2, took
    assert peak < 2 * 1024 * 1024, "the check allocated %d bytes" % peak
    assert server.closed.wait(5)
    assert server.sent < 64 * 1024 * 1024  # the client hung up instead of draining 4 GiB


@pytest.mark.parametrize("bad", ["\n", "\r\n", "\r", "\x00"])
def test_http_token_with_line_break_is_refused_before_sending(raw_server, bad):
    server = raw_server(lambda conn, srv: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    token = CANARY + bad + "X-Injected: yes"
    result = auth.run_check({"name": "nl", "type": "http", "url": server.url}, token=token)
    assert result["status"] == "AUTH_FAILED"
    assert "line break" in result["message"] and "not shown" in result["message"]
    assert server.received == []  # nothing was sent
    no_secret(result, CANARY, "X-Injected")


def test_token_with_line_break_is_refused_for_command_and_jwt_too(tmp_path):
    marker = tmp_path / "ran"
    check = {"name": "cli", "type": "command", "command": ["/bin/sh", "-c", "touch %s" % marker]}
    result = auth.run_check(check, token=CANARY + "\nmore")
    assert result["status"] == "AUTH_FAILED" and "line break" in result["message"]
    assert not marker.exists()
    token_file = tmp_path / "token"
    token_file.write_text(CANARY + "\nsecond-line\n")
    result = auth.run_check({"name": "j", "type": "jwt", "token_file": str(token_file)})
    assert result["status"] == "AUTH_FAILED" and "line break" in result["message"]
    assert "token_file %s" % token_file in result["message"]
    no_secret(result, CANARY, "second-line")


def test_token_file_final_newlines_are_still_stripped(api, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(CANARY + "\r\n")
    result = auth.run_check({"name": "h", "type": "http", "url": api.url("/ok"), "token_file": str(token_file)})
    assert result["status"] == "AUTH_OK", result
    assert api.requests[-1]["headers"]["Authorization"] == "Bearer " + CANARY


@pytest.mark.parametrize("headers,words", [
    ({"X-Api-Key": CANARY + "\r\nX-Evil: 1"}, "the value of header X-Api-Key contains a line break"),
    ({"X-Api-Key": CANARY + "\n"}, "the value of header X-Api-Key contains a line break"),
    ({"X-Api-Key": CANARY + "\x00"}, "the value of header X-Api-Key contains a line break"),
    ({"X-Evil\r\nHost": CANARY}, "a header name contains a line break"),
    ({"Bad Name": CANARY}, "is not a valid HTTP header name"),
])
def test_http_header_with_line_break_is_refused_never_shown(raw_server, headers, words):
    server = raw_server(lambda conn, srv: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    check = {"name": "hdr", "type": "http", "url": server.url, "headers": headers}
    errors = auth.validate_check(check, token_given=True)
    assert any(words in e for e in errors), errors
    assert CANARY not in json.dumps(errors)
    result = auth.run_check(check, token="plain-token")
    assert result["status"] == "AUTH_FAILED" and words in result["message"]
    assert server.received == []
    no_secret(result, CANARY, "X-Evil: 1")


def test_server_echoing_the_token_in_its_status_line_is_not_repeated(raw_server):
    def echo_status(conn, server):
        auth_line = [l for l in server.received[-1].split(b"\r\n") if l.lower().startswith(b"authorization:")][0]
        conn.sendall(b"XYZZY " + auth_line + b"\r\n\r\n")

    def echo_reason(conn, server):
        auth_line = [l for l in server.received[-1].split(b"\r\n") if l.lower().startswith(b"authorization:")][0]
        conn.sendall(b"HTTP/1.1 401 " + auth_line + b"\r\nContent-Length: 0\r\n\r\n")

    result = auth.run_check({"name": "e", "type": "http", "url": raw_server(echo_status).url}, token=CANARY)
    assert result["status"] == "AUTH_UNREACHABLE" and "BadStatusLine" in result["message"], result
    no_secret(result, CANARY, CANARY[:12])
    result = auth.run_check({"name": "e", "type": "http", "url": raw_server(echo_reason).url}, token=CANARY)
    assert result["status"] == "AUTH_FAILED" and result["http_status"] == 401
    no_secret(result, CANARY)


def test_describe_error_names_the_class_and_never_library_text():
    exc = ValueError("Invalid header value b'Bearer %s\\r\\nX: 1'" % CANARY)
    assert auth.describe_error(exc, [CANARY]) == "ValueError"
    assert auth.describe_error(ConnectionRefusedError(111, "Connection refused")) == \
        "ConnectionRefusedError: Connection refused"
    text = auth.describe_error(OSError(5, "noise " + CANARY + " " + "y" * 500), [CANARY])
    assert CANARY not in text and len(text) < 260


def test_mask_text_masks_before_cutting_and_at_the_edges():
    secret = "tok-" + "Q" * 20 + "-end"
    assert auth.mask_text("x" * 10 + secret, [secret]) == "x" * 10 + "********"
    assert auth.mask_text(secret[9:] + " tail", [secret]) == "******** tail"  # a cut-off end of the secret
    assert auth.mask_text("head " + secret[:9], [secret]) == "head ********"  # a cut-off start
    line = auth.last_line(("n" * 190 + secret + "\n").encode(), [secret], limit=200)
    assert "tok-" not in line and "QQQQ" not in line and line.startswith("n" * 100)


# ---------------------------------------------------------------- commands: environment and bounds

def test_command_check_runs_with_a_fixed_minimal_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", "/var/lib/agentops/evil-agent")
    monkeypatch.setenv("PYTHONPATH", "/var/lib/agentops/evil-agent/.local")
    monkeypatch.setenv("LD_PRELOAD", "/var/lib/agentops/evil-agent/evil.so")
    monkeypatch.setenv("AGENTOPS_TOKEN", CANARY)
    monkeypatch.chdir(str(tmp_path))
    out = tmp_path / "env.txt"
    script = "env > %s; echo \"cwd=$(pwd)\" >> %s; echo \"stdin=$(cat)\" >> %s; ls /proc/self/fd >> %s" % (
        out, out, out, out)
    result = auth.run_check({"name": "env", "type": "command", "command": ["/bin/sh", "-c", script]}, token=CANARY)
    assert result["status"] == "AUTH_OK", result
    lines = out.read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith(("cwd=", "stdin=")))
    import pwd
    me = pwd.getpwuid(os.geteuid())
    assert env["HOME"] == me.pw_dir and not env["HOME"].startswith("/var/lib/agentops")
    assert env["PATH"] == auth.SAFE_PATH and env["LANG"] == "C.UTF-8"
    for name in ("PYTHONPATH", "LD_PRELOAD", "AGENTOPS_TOKEN"):
        assert name not in env
    assert set(env) <= {"HOME", "PATH", "LANG", "USER", "LOGNAME", "PWD", "SHLVL", "_"}, env
    assert "cwd=/" in lines
    assert "stdin=" + CANARY in lines  # the token on stdin, never in the environment
    fds = sorted(int(l) for l in lines if l.isdigit())
    assert fds[:3] == [0, 1, 2] and len(fds) <= 4  # the three pipes (and ls' own directory fd)


def test_command_flooding_stdout_is_cut_and_fails():
    started = time.monotonic()
    result = auth.run_check({"name": "flood", "type": "command", "command": ["/usr/bin/yes"]}, timeout=10)
    assert result["status"] == "AUTH_FAILED"
    assert "printed more than 64 KiB" in result["message"]
    assert time.monotonic() - started < 3


def test_command_leaving_a_setsid_child_on_the_pipes_returns_at_the_deadline(tmp_path):
    pidfile = tmp_path / "pid"
    script = "setsid /bin/sh -c 'echo $$ > %s; exec sleep 30' & sleep 30" % pidfile
    started = time.monotonic()
    try:
        result = auth.run_check({"name": "esc", "type": "command", "command": ["/bin/sh", "-c", script]}, timeout=1)
        took = time.monotonic() - started
    finally:
        deadline = time.monotonic() + 5
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), 9)
            except (ProcessLookupError, ValueError):
                pass
    assert result["status"] == "AUTH_UNREACHABLE" and "did not finish within 1s" in result["message"]
    assert took < 2.5, took


def test_command_failure_tail_masks_the_token_before_cutting():
    script = "import sys; t = sys.stdin.read().strip(); sys.stderr.write('n' * 190 + t + ' rejected\\n'); sys.exit(2)"
    result = auth.run_check({"name": "cli", "type": "command", "command": [sys.executable, "-c", script]},
                            token=CANARY)
    assert result["status"] == "AUTH_FAILED" and "exited with 2" in result["message"]
    for size in range(4, len(CANARY) + 1):
        assert CANARY[:size] not in result["message"], "a %d-character prefix of the token leaked" % size


def test_run_bounded_writes_stdin_while_reading_no_deadlock():
    data = os.urandom(1024 * 1024)
    run = auth.run_bounded(["/bin/cat"], stdin_data=data, timeout=10, stdout_limit=2 * 1024 * 1024)
    assert run["returncode"] == 0 and not run["timed_out"] and not run["stdout_overflow"]
    assert run["stdout"] == data


def test_run_bounded_keeps_only_the_end_of_stderr():
    run = auth.run_bounded(["/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\0' e >&2; echo LAST >&2; exit 4"],
                           timeout=10, stderr_limit=1000)
    assert run["returncode"] == 4 and run["stderr_truncated"]
    assert len(run["stderr"]) == 1000 and run["stderr"].endswith(b"LAST\n")


def test_run_bounded_command_that_exits_leaving_a_child_on_the_pipes(tmp_path):
    pidfile = tmp_path / "pid"
    script = "setsid /bin/sh -c 'echo $$ > %s; exec sleep 30' & echo done" % pidfile
    started = time.monotonic()
    try:
        run = auth.run_bounded(["/bin/sh", "-c", script], timeout=10)
    finally:
        deadline = time.monotonic() + 5
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), 9)
    assert run["returncode"] == 0 and run["stdout"] == b"done\n" and not run["timed_out"]
    assert time.monotonic() - started < 2


def test_read_token_file_is_bounded_and_refuses_fifos(tmp_path):
    big = tmp_path / "big"
    with open(str(big), "wb") as handle:
        handle.truncate(auth.MAX_TOKEN_FILE + 1)
    result = auth.run_check({"name": "b", "type": "jwt", "token_file": str(big)})
    assert result["status"] == "AUTH_FAILED" and "larger than 1024 KiB" in result["message"]
    fifo = tmp_path / "fifo"
    os.mkfifo(str(fifo))
    started = time.monotonic()
    result = auth.run_check({"name": "f", "type": "jwt", "token_file": str(fifo)})
    assert result["status"] == "AUTH_FAILED" and "not a regular file" in result["message"]
    assert time.monotonic() - started < 2


# ---------------------------------------------------------------- paths an agent can write (root never follows them)
SECRET_TEXT = "CANARY-another-agents-credential-5c1d"


@pytest.fixture
def evil_home(trusted_dir):
    """trusted/agents/evil (nobody 0700, like an agent's state directory) and trusted/credentials/victim (root 0600)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the agent's directory belongs to nobody")
    import pwd
    nobody = pwd.getpwnam("nobody")
    home = os.path.join(trusted_dir, "agents", "evil")
    os.makedirs(home)
    os.chmod(home, 0o700)
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    credentials = os.path.join(trusted_dir, "credentials")
    os.mkdir(credentials, 0o700)
    victim = os.path.join(credentials, "victim")
    with open(victim, "w") as handle:
        handle.write(SECRET_TEXT)
    os.chmod(victim, 0o600)
    os.utime(victim, (1_000_000_000, 1_000_000_000))
    return home, victim


@pytest.mark.parametrize("target", ["credential", "/etc/shadow"])
def test_file_check_never_follows_a_symlink_the_agent_planted(evil_home, target):
    """The agent links its token path to another agent's credential or /etc/shadow: the check says what it found,
    never whether the target exists, its mode or its age."""
    home, victim = evil_home
    token = os.path.join(home, "token")
    os.symlink(victim if target == "credential" else target, token)
    for check in ({"name": "tok", "type": "file", "path": token, "max_age": "3650d"},
                  {"name": "tok", "type": "file", "token_file": token}):
        result = auth.run_check(check)
        assert result["status"] == "AUTH_FAILED"
        assert result["message"] == "auth check 'tok' FAILED: %s is a symlink (not followed): in a directory that " \
                                    "a user other than root can write" % token
        text = json.dumps(result)
        assert "0600" not in text and "written" not in text and victim not in text and "shadow" not in text
        assert result["expires_at"] is None


def test_file_check_refuses_a_hard_link_in_the_agents_directory(evil_home):
    home, victim = evil_home
    token = os.path.join(home, "token")
    os.link(victim, token)
    result = auth.run_check({"name": "tok", "type": "file", "path": token})
    assert result["status"] == "AUTH_FAILED" and "2 hard links" in result["message"]
    assert "0600" not in result["message"] and "written" not in result["message"]


def test_file_check_follows_links_only_root_can_write(evil_home, trusted_dir):
    home, victim = evil_home
    link = os.path.join(trusted_dir, "token-link")
    os.symlink(victim, link)
    result = auth.run_check({"name": "tok", "type": "file", "path": link})
    assert result["status"] == "AUTH_OK" and "mode 0600" in result["message"]
    own = os.path.join(home, "token")
    with open(own, "w") as handle:
        handle.write("t")
    os.chmod(own, 0o600)
    assert auth.run_check({"name": "tok", "type": "file", "path": own})["status"] == "AUTH_OK"


def test_command_check_never_runs_a_program_the_agent_can_replace(evil_home, trusted_dir):
    """Root runs a command check's program: one in the agent's directory is refused, not run."""
    home, victim = evil_home
    marker = os.path.join(trusted_dir, "ran-as-root")
    tool = os.path.join(home, "check")
    with open(tool, "w") as handle:
        handle.write("#!/bin/sh\ntouch %s\n" % marker)
    os.chmod(tool, 0o755)
    result = auth.run_check({"name": "cli", "type": "command", "command": tool + " --status"})
    assert result["status"] == "AUTH_FAILED"
    assert result["message"] == "auth check 'cli' FAILED: %s is in a place that a user other than root can write: " \
                                "root does not run it" % tool
    assert not os.path.exists(marker)
    os.symlink(tool, os.path.join(home, "link"))
    result = auth.run_check({"name": "cli", "type": "command", "command": [os.path.join(home, "link")]})
    assert "is a symlink (not followed)" in result["message"] and not os.path.exists(marker)
    assert auth.run_check({"name": "cli", "type": "command", "command": "/bin/true"})["status"] == "AUTH_OK"


def test_ca_path_in_the_agents_directory_is_never_followed(evil_home, tls_api):
    home, victim = evil_home
    link = os.path.join(home, "ca.pem")
    os.symlink(victim, link)
    result = auth.run_check({"name": "tls", "type": "http", "url": tls_api.url("/ok"), "ca_path": link}, token=CANARY)
    assert result["status"] == "AUTH_FAILED"
    assert "ca_path %s is a symlink (not followed)" % link in result["message"]
    assert SECRET_TEXT not in json.dumps(result) and victim not in result["message"]
    os.unlink(link)
    with open(tls_api.cert) as src, open(link, "w") as dst:  # a real file of the agent's: read through a descriptor
        dst.write(src.read())
    assert auth.run_check({"name": "tls", "type": "http", "url": tls_api.url("/ok"), "ca_path": link},
                          token=CANARY)["status"] == "AUTH_OK"
    os.unlink(link)
    os.mkdir(link)
    result = auth.run_check({"name": "tls", "type": "http", "url": tls_api.url("/ok"), "ca_path": link}, token=CANARY)
    assert result["status"] == "AUTH_FAILED" and "is a directory in a place a user other than root can write" \
        in result["message"]
