"""auth_check module: in-process runs (AnsibleModule) and real ansible-playbook runs at -vvv."""
import base64
import http.server
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.agentops.fleet.plugins.modules import auth_check

CANARY = "canary-Mx81TOKEN-fleet-0420"
PASSWORD_CANARY = "canary-pw-Ua73-secret"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):  # noqa: N802
        self.server.seen.append(self.headers.get("Authorization"))
        status = {"/ok": 200, "/unauthorized": 401, "/error": 500}.get(self.path, 404)
        payload = b'{"ok": false}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url = lambda path: "http://127.0.0.1:%d%s" % (server.server_address[1], path)
    yield server
    server.shutdown()
    server.server_close()


def run_module(capsys, **args):
    """Run the module in-process; return (exit code, result dict, raw stdout)."""
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exc:
            auth_check.main()
    out = capsys.readouterr().out
    return exc.value.code, json.loads(out), out


def test_ok(api, capsys):
    code, result, out = run_module(capsys, name="graph", type="http", url=api.url("/ok"), token=CANARY)
    assert code == 0
    assert result["status"] == "AUTH_OK" and result["passed"] is True and result["changed"] is False
    assert result["name"] == "graph" and result["http_status"] == 200
    assert api.seen[-1] == "Bearer " + CANARY
    assert CANARY not in out


def test_401_fails_with_message(api, capsys):
    code, result, out = run_module(capsys, name="graph", type="http", url=api.url("/unauthorized"), token=CANARY)
    assert code == 1
    assert result["failed"] is True and result["status"] == "AUTH_FAILED"
    assert result["msg"].startswith("auth check 'graph' FAILED: GET %s answered HTTP 401" % api.url("/unauthorized"))
    assert CANARY not in out


def test_fail_on_error_false_only_reports(api, capsys):
    code, result, _ = run_module(capsys, name="graph", type="http", url=api.url("/error"), token=CANARY,
                                 fail_on_error=False)
    assert code == 0 and "failed" not in result
    assert result["status"] == "AUTH_UNREACHABLE" and result["passed"] is False


def test_check_mode_runs_the_check_and_changes_nothing(api, capsys):
    before = len(api.seen)
    code, result, _ = run_module(capsys, name="graph", type="http", url=api.url("/unauthorized"), token=CANARY,
                                 _ansible_check_mode=True)
    assert code == 1 and result["status"] == "AUTH_FAILED" and result["changed"] is False
    assert len(api.seen) == before + 1
    code, result, _ = run_module(capsys, name="graph", type="http", url=api.url("/ok"), token=CANARY,
                                 _ansible_check_mode=True)
    assert code == 0 and result["status"] == "AUTH_OK" and result["changed"] is False


def test_token_file_value_is_masked(api, capsys, tmp_path):
    token_file = tmp_path / "graph_token"
    token_file.write_text(CANARY + "\n")
    code, result, out = run_module(capsys, name="graph", type="http", url=api.url("/ok"),
                                   token_file=str(token_file))
    assert code == 0 and result["status"] == "AUTH_OK"
    assert api.seen[-1] == "Bearer " + CANARY
    assert CANARY not in out


def test_token_file_with_a_line_break_fails_before_sending(api, capsys, tmp_path):
    token_file = tmp_path / "graph_token"
    token_file.write_text(CANARY + "\r\nX-Injected: yes\n")
    before = len(api.seen)
    code, result, out = run_module(capsys, name="graph", type="http", url=api.url("/ok"),
                                   token_file=str(token_file))
    assert code == 1 and result["status"] == "AUTH_FAILED"
    assert "contains a line break" in result["msg"]
    assert len(api.seen) == before  # nothing was sent
    assert CANARY not in out and "X-Injected" not in out


def test_header_value_with_a_line_break_is_refused_without_showing_it(api, capsys):
    before = len(api.seen)
    code, result, out = run_module(capsys, name="graph", type="http", url=api.url("/ok"), token="plain-token",
                                   headers={"X-Api-Key": PASSWORD_CANARY + "\nX-Evil: 1"})
    assert code == 1 and "the value of header X-Api-Key contains a line break" in result["msg"]
    assert len(api.seen) == before
    assert PASSWORD_CANARY not in out and "X-Evil" not in out


def test_no_log_leaves_nothing_in_result(api, capsys):
    code, result, out = run_module(capsys, name="basic", type="http", url=api.url("/unauthorized"),
                                   username="bot", password=PASSWORD_CANARY, fail_on_error=False)
    assert code == 0 and result["status"] == "AUTH_FAILED"
    encoded = base64.b64encode(("bot:" + PASSWORD_CANARY).encode()).decode()
    assert PASSWORD_CANARY not in out and encoded not in out
    code, result, out = run_module(capsys, name="j", type="jwt", token=CANARY)
    assert code == 1 and "not a JWT" in result["msg"]
    assert CANARY not in out


def test_jwt_expiring_warns(capsys):
    def enc(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    token = "%s.%s.sig" % (enc({"alg": "none"}), enc({"exp": int(time.time()) + 3600}))
    code, result, out = run_module(capsys, name="j", type="jwt", token=token, min_valid="1d")
    assert code == 0 and result["status"] == "AUTH_EXPIRING" and result["passed"] is True
    assert "EXPIRING" in json.dumps(result.get("warnings")), result
    code, result, _ = run_module(capsys, name="j", type="jwt", token=token, min_valid="1d", fail_on_expiring=True)
    assert code == 1 and result["status"] == "AUTH_EXPIRING"
    assert token not in out


@pytest.mark.parametrize("args,words", [
    ({"type": "ftp"}, "value of type must be one of: http, jwt, command, file, got: ftp"),
    ({"name": "graph", "type": "http", "token": CANARY}, "auth check 'graph': type http needs 'url'"),
    ({"name": "graph", "type": "http", "url": "https://127.0.0.1:9/", "token": CANARY, "token_file": "/t"},
     "auth check 'graph': set only one of token / token_file, not both"),
    ({"name": "graph", "type": "jwt", "token": CANARY, "min_valid": "soon"}, "'min_valid' is not a time span"),
    ({"name": "cli", "type": "command"}, "type command needs 'command'"),
])
def test_bad_parameters_fail_clearly(capsys, args, words):
    code, result, _ = run_module(capsys, **args)
    assert code == 1 and result["failed"] is True
    assert words in result["msg"], result["msg"]


# ------------------------------------------------------- real ansible-playbook runs

def _playbook(tmp_path, tasks):
    path = tmp_path / "play.yml"
    path.write_text(json.dumps([{"name": "auth_check", "hosts": "localhost", "gather_facts": False,
                                 "tasks": tasks}]))
    return str(path)


def _ansible_playbook(playbook, verbosity="-vvv"):
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": os.path.join(ROOT, ".cache", "collections"),
        "ANSIBLE_CONFIG": os.path.join(ROOT, "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
    })
    binary = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    proc = subprocess.run([binary, "-i", "localhost,", "-c", "local", verbosity, playbook],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=300,
                          check=False, cwd=ROOT)
    return proc.returncode, proc.stdout


def test_playbook_vvv_never_shows_token(api, tmp_path):
    token_file = tmp_path / "graph_token"
    token_file.write_text(CANARY + "\n")
    tasks = [
        {"name": "Token given inline", "agentops.fleet.auth_check": {
            "name": "inline", "type": "http", "url": api.url("/ok"), "token": CANARY}, "register": "inline"},
        {"name": "Token read from the host", "agentops.fleet.auth_check": {
            "name": "file", "type": "http", "url": api.url("/unauthorized"), "token_file": str(token_file),
            "fail_on_error": False}, "register": "from_file"},
        {"name": "Basic auth", "agentops.fleet.auth_check": {
            "name": "basic", "type": "http", "url": api.url("/ok"), "username": "bot",
            "password": PASSWORD_CANARY}},
        {"name": "Show the results", "ansible.builtin.debug": {"var": "from_file"}},
        {"name": "The rejected token fails the play", "agentops.fleet.auth_check": {
            "name": "graph", "type": "http", "url": api.url("/unauthorized"), "token_file": str(token_file)}},
    ]
    rc, out = _ansible_playbook(_playbook(tmp_path, tasks))
    assert rc == 2, out
    assert "AUTH_OK" in out and "AUTH_FAILED" in out
    assert "auth check 'graph' FAILED: GET %s answered HTTP 401" % api.url("/unauthorized") in out
    for secret in (CANARY, PASSWORD_CANARY, base64.b64encode(("bot:" + PASSWORD_CANARY).encode()).decode()):
        assert secret not in out, "secret shown at -vvv"
    assert api.seen.count("Bearer " + CANARY) >= 3  # the token really was presented


def test_playbook_check_mode(api, tmp_path):
    tasks = [{"name": "Check in check mode", "agentops.fleet.auth_check": {
        "name": "inline", "type": "http", "url": api.url("/ok"), "token": CANARY}, "check_mode": True,
        "register": "checked"},
        {"name": "It ran", "ansible.builtin.assert": {"that": ["checked.status == 'AUTH_OK'", "not checked.changed"]}}]
    rc, out = _ansible_playbook(_playbook(tmp_path, tasks), verbosity="-v")
    assert rc == 0, out
    assert "changed=0" in out and CANARY not in out
