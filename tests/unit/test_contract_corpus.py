"""One contract, two paths: a corpus of inputs gets the same verdict on the controller and on the host.

Controller path: ``agents_errors`` (what ``agentops.fleet.inventory_contract`` runs before any change).
Host path: the agent file under ``agents.d`` loaded by the on-host command (``config.load_agent``,
heartbeat and token rotation entries) and ``agentops check-auth`` judging each auth check
(``check_auth.check_agent``). Every input of the corpus is accepted by both or refused by both.
"""
import base64
import http.server
import json
import os
import threading
import time
import types

import pytest

from agentops_host import check_auth
from agentops_host import config as hostconfig
from ansible_collections.agentops.fleet.plugins.module_utils.agentops_contract import (
    HEARTBEAT_DEFAULTS, agents_errors)

NAME = "corpus"
CREDS = {"tok": "corpus-token-value", "other": "x"}


def _jwt(claims):
    def enc(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    return "%s.%s.sig" % (enc({"alg": "none"}), enc(claims))


URL = "http://127.0.0.1:{port}/me"
AUTH_CHECKS = [
    # valid
    ({"name": "g", "type": "http", "url": URL, "credential": "tok"}, True),
    ({"name": "g", "type": "http", "url": URL, "credential": "tok", "expect_status": [200, 204]}, True),
    ({"name": "g", "type": "http", "url": URL, "credential": "tok", "expect_status": 200}, True),
    ({"name": "g", "type": "http", "url": URL, "method": "post", "credential": "tok"}, True),
    ({"name": "g", "type": "http", "url": URL, "method": "HEAD"}, True),
    ({"name": "g", "type": "http", "url": URL, "credential": "tok", "timeout": 5}, True),
    ({"name": "g", "type": "http", "url": URL, "credential": "tok", "timeout": "30s"}, True),
    ({"name": "g", "type": "http", "url": URL, "credential": "tok", "body": {"q": 1}}, True),
    ({"name": "g", "type": "http", "url": URL, "credential": "tok", "body": "text"}, True),
    ({"name": "g", "type": "http", "url": URL, "credential": "tok", "headers": {"X-A": "b"}}, True),
    ({"name": "g", "type": "http", "url": URL, "credential": "tok", "validate_certs": False}, True),
    ({"name": "g", "type": "http", "url": URL, "credential": "tok", "ca_path": "/etc/ssl/certs"}, True),
    ({"name": "g", "type": "http", "url": URL, "username": "u", "credential": "tok"}, True),
    ({"name": "g.v2", "type": "http", "url": URL, "credential": "tok"}, True),
    ({"name": "9g", "type": "http", "url": URL, "credential": "tok"}, True),
    ({"name": "j", "type": "jwt", "credential": "tok"}, True),
    ({"name": "j", "type": "jwt", "credential": "tok", "min_valid": "1d"}, True),
    ({"name": "j", "type": "jwt", "credential": "tok", "min_valid": "1d", "fail_on_expiring": True}, True),
    ({"name": "c", "type": "command", "command": "/bin/true"}, True),
    ({"name": "c", "type": "command", "command": "/bin/echo 'ok go'", "expect_regex": "ok"}, True),
    ({"name": "c", "type": "command", "command": ["/bin/echo", "ok"], "credential": "tok"}, True),
    ({"name": "f", "type": "file", "credential": "tok"}, True),
    ({"name": "f", "type": "file", "path": "/etc/hostname", "max_age": "400d"}, True),
    # refused
    ({"name": "g", "type": "http", "url": URL, "method": "FOO"}, False),
    ({"name": "_g", "type": "http", "url": URL}, False),
    ({"name": "", "type": "http", "url": URL}, False),
    ({"type": "http", "url": URL}, False),
    ({"name": "g/h", "type": "http", "url": URL}, False),
    ({"name": "g", "type": "http", "url": "https:///path"}, False),
    ({"name": "g", "type": "http", "url": "ftp://host/x"}, False),
    ({"name": "g", "type": "http", "url": "host/x"}, False),
    ({"name": "g", "type": "http"}, False),
    ({"name": "g", "type": "http", "url": URL + "\nX: y"}, False),
    ({"name": "g", "type": "http", "url": URL, "expect_status": [99]}, False),
    ({"name": "g", "type": "http", "url": URL, "expect_status": ["ok"]}, False),
    ({"name": "g", "type": "http", "url": URL, "expect_status": True}, False),
    ({"name": "g", "type": "http", "url": URL, "timeout": "soon"}, False),
    ({"name": "g", "type": "http", "url": URL, "timeout": 0}, False),
    ({"name": "g", "type": "http", "url": URL, "timeout": True}, False),
    ({"name": "g", "type": "http", "url": URL, "headers": ["X-A: b"]}, False),
    ({"name": "g", "type": "http", "url": URL, "headers": {"X-A": "b\r\nX-B: c"}}, False),
    ({"name": "g", "type": "http", "url": URL, "headers": {"X A": "b"}}, False),
    ({"name": "g", "type": "http", "url": URL, "validate_certs": "no"}, False),
    ({"name": "g", "type": "http", "url": URL, "ca_path": "relative/ca.pem"}, False),
    ({"name": "g", "type": "http", "url": URL, "body": 5}, False),
    ({"name": "g", "type": "http", "url": URL, "password": "p", "username": "u"}, False),
    ({"name": "g", "type": "http", "url": URL, "token": "t"}, False),
    ({"name": "g", "type": "http", "url": URL, "token_file": "/etc/t"}, False),
    ({"name": "g", "type": "http", "url": URL, "colour": "red"}, False),
    ({"name": "g", "type": "oauth", "url": URL}, False),
    ({"name": "g", "type": None}, False),
    ({"name": "j", "type": "jwt"}, False),
    ({"name": "j", "type": "jwt", "credential": "tok", "min_valid": "1 fortnight"}, False),
    ({"name": "j", "type": "jwt", "credential": "tok", "min_valid": u"\u0663d"}, False),
    ({"name": "j", "type": "jwt", "credential": "tok", "fail_on_expiring": "yes"}, False),
    ({"name": "c", "type": "command"}, False),
    ({"name": "c", "type": "command", "command": "true"}, False),
    ({"name": "c", "type": "command", "command": "/bin/echo 'unbalanced"}, False),
    ({"name": "c", "type": "command", "command": "/bin/true", "expect_regex": "("}, False),
    ({"name": "c", "type": "command", "command": "/bin/true\nrm -rf /"}, False),
    ({"name": "c", "type": "command", "command": ["/bin/true", 3]}, False),
    ({"name": "c", "type": "command", "command": []}, False),
    ({"name": "c", "type": "command", "command": {"argv": "/bin/true"}}, False),
    ({"name": "f", "type": "file"}, False),
    ({"name": "f", "type": "file", "path": "relative/file"}, False),
    ({"name": "f", "type": "file", "path": "/etc/hostname", "max_age": "nan"}, False),
    ({"name": "f", "type": "file", "path": "/etc/hostname", "max_age": "-1d"}, False),
    ({"name": "f", "type": "file", "path": "/etc/hostname", "token": "t"}, False),
    ({"name": "g", "type": "http", "url": URL, "credential": "tok", "method": "OPTIONS"}, True),
    ({"name": "g", "type": "http", "url": URL, "credential": "tok", "headers": {"Accept": "application/json"}}, True),
    ({"name": "x" * 65, "type": "http", "url": URL}, False),
    "not-a-mapping",
]

HEARTBEATS = [
    ({"interval": "15s", "max_silence": "30s"}, True),
    ({"interval": "5min", "max_silence": "30min", "progress": "journal"}, True),
    ({"interval": 60, "max_silence": 300}, True),
    ({"interval": "1h 30min", "max_silence": "2h"}, True),
    ({"interval": "1.5min", "max_silence": "1month"}, True),
    ({"progress": "file", "file": "heartbeat"}, True),
    ({"progress": "file", "file": "run/beat.txt"}, True),
    ({"progress": "command", "command": "/usr/local/bin/poll --fast"}, True),
    ({"active_hours": "08:00-20:00"}, True),
    ({"active_hours": "22:00-06:00"}, True),
    ({"workstate_max_age": "2h"}, True),
    ({}, True),
    ({"interval": "5 minutes", "max_silence": "1hour"}, True),
    ({"interval": "500ms"}, True),
    ({"interval": "soon"}, False),
    ({"interval": "5 parsecs"}, False),
    ({"interval": u"\u0663s"}, False),
    ({"interval": "nan"}, False),
    ({"interval": ".inf"}, False),
    ({"interval": "-5s"}, False),
    ({"interval": "99999999999y"}, False),
    ({"interval": True}, False),
    ({"interval": None}, False),
    ({"max_silence": None}, False),
    ({"max_silence": "30s\n"}, False),
    ({"max_silence": "30s\\"}, False),
    ({"progress": "vibes"}, False),
    ({"progress": "command"}, False),
    ({"progress": "command", "command": "poll"}, False),
    ({"command": "relative"}, False),
    ({"progress": "file", "file": "/abs/path"}, False),
    ({"progress": "file", "file": "../escape"}, False),
    ({"progress": "file", "file": ""}, False),
    ({"active_hours": "8-20"}, False),
    ({"active_hours": "25:00-26:00"}, False),
    ({"active_hours": "08:00-20:60"}, False),
    ({"workstate_max_age": "often"}, False),
    ({"colour": "blue"}, False),
    ({"active_hours": u"\u0660\u0668:00-20:00"}, False),
    ({"active_hours": "08:00-20:00\n"}, False),
    ({"interval": "1 fortnight"}, False),
    ({"interval": "30min", "max_silence": "30 min"}, True),
    ({"interval": "2d", "max_silence": "1w"}, True),
    ({"progress": "journal", "workstate_max_age": "7d"}, True),
    ({"progress": "file", "file": "a/b/c"}, True),
    ({"progress": "file", "file": "a\nb"}, False),
    ({"max_silence": "1y 2M"}, True),
    ({"max_silence": "0"}, True),
    ("every 5 minutes", False),
    (["15s"], False),
]

HC = "https://hc-ping.com/0f6a6c3e-6f6b-4a43-9d71-6d3c2b8d2a11"
DEADMANS = [
    [{"type": "healthchecks", "url": HC}],
    [{"type": "uptime_kuma", "url": "https://kuma.example.com/api/push/Tok3n?status=up&msg=OK&ping="}],
    [{"type": "cronitor", "url": "https://cronitor.link/p/key123/nightly"}],
    [{"type": "http", "url": "http://127.0.0.1:8080/ping"}],
    [{"type": "healthchecks", "url": HC}, {"type": "http", "url": "https://example.com/ping"}],
    [],
]
BAD_DEADMANS = [
    "https://hc-ping.com/x",
    {"type": "healthchecks", "url": HC},
    [{"type": "pagerduty", "url": HC}],
    [{"type": "healthchecks"}],
    [{"url": HC}],
    [{"type": "healthchecks", "url": "ftp://hc-ping.com/x"}],
    [{"type": "healthchecks", "url": "hc-ping.com/x"}],
    [{"type": "healthchecks", "url": HC + "\nX-Injected: 1"}],
    [{"type": "healthchecks", "url": "https://user:pw@hc-ping.com/x"}],
    [{"type": "healthchecks", "url": HC + "#frag"}],
    [{"type": "healthchecks", "url": "https://hc-ping.com/a b"}],
    [{"type": "healthchecks", "url": HC, "timeout": 5}],
    [{"type": "healthchecks", "url": HC}, {"type": "healthchecks", "url": HC}],
    [{"type": "http", "url": 5}],
    ["https://hc-ping.com/x"],
    [{"type": "http", "url": "https://example.com/" + "x" * 2100}],
]
HEARTBEATS += [({"deadman": d}, True) for d in DEADMANS] + [({"deadman": d}, False) for d in BAD_DEADMANS]

ROTATIONS = [
    ({"credential": "tok", "command": "/usr/local/bin/refresh"}, True),
    ({"credential": "tok", "command": "/usr/local/bin/refresh --scope all", "every_days": 45}, True),
    ({"credential": "tok", "command": "/usr/local/bin/refresh", "every_days": "30"}, True),
    ({"credential": "tok", "command": "/usr/local/bin/refresh", "every_days": 1}, True),
    ({"credential": "tok", "command": "/usr/local/bin/refresh", "timeout": 30}, True),
    ({"credential": "tok", "command": "/usr/local/bin/refresh", "timeout": "600"}, True),
    ({"credential": "other", "command": "/usr/local/bin/refresh"}, True),
    ({"credential": "tok", "command": ["/usr/local/bin/refresh", "--all"]}, True),
    ({"credential": "nope", "command": "/usr/local/bin/refresh"}, False),
    ({"credential": 5, "command": "/usr/local/bin/refresh"}, False),
    ({"credential": "../../etc/shadow", "command": "/usr/local/bin/refresh"}, False),
    ({"command": "/usr/local/bin/refresh"}, False),
    ({"credential": "tok"}, False),
    ({"credential": "tok", "command": "refresh"}, False),
    ({"credential": "tok", "command": "/usr/local/bin/refresh\nid"}, False),
    ({"credential": "tok", "command": ["refresh"]}, False),
    ({"credential": "tok", "command": ["/bin/refresh", 3]}, False),
    ({"credential": "tok", "command": {"argv": "/bin/refresh"}}, False),
    ({"credential": "tok", "command": "/usr/local/bin/refresh", "every_days": "*/45"}, False),
    ({"credential": "tok", "command": "/usr/local/bin/refresh", "every_days": 0}, False),
    ({"credential": "tok", "command": "/usr/local/bin/refresh", "every_days": -3}, False),
    ({"credential": "tok", "command": "/usr/local/bin/refresh", "every_days": True}, False),
    ({"credential": "tok", "command": "/usr/local/bin/refresh", "every_days": 4.5}, False),
    ({"credential": "tok", "command": "/usr/local/bin/refresh", "every_days": u"\u0663"}, False),
    ({"credential": "tok", "command": "/usr/local/bin/refresh", "timeout": "soon"}, False),
    ({"credential": "tok", "command": "/usr/local/bin/refresh", "timeout": 0}, False),
    ({"credential": "tok", "command": "/usr/local/bin/refresh", "cron": "0 3 * * *"}, False),
    ({"credential": "tok", "command": "/usr/local/bin/refresh", "every_days": " 7"}, True),
    ({"credential": "tok", "command": "/usr/local/bin/refresh", "every_days": "7 days"}, False),
    ({"credential": "tok", "command": "/usr/local/bin/refresh \\"}, False),
    ({"credential": "tok", "command": "/usr/local/bin/refresh", "timeout": True}, False),
    ({"credential": "tok", "command": "/usr/local/bin/refresh", "timeout": -1}, False),
    ({"credential": "", "command": "/usr/local/bin/refresh"}, False),
    ("daily", False),
]


def _ids(cases):
    return ["%d" % i for i in range(len(cases))]


def test_the_corpus_is_large_and_balanced():
    total = len(AUTH_CHECKS) + len(HEARTBEATS) + len(ROTATIONS)
    assert total >= 150, total
    verdicts = [ok for case in AUTH_CHECKS + HEARTBEATS + ROTATIONS
                for ok in [case[1] if isinstance(case, tuple) else False]]
    assert verdicts.count(True) >= 40 and verdicts.count(False) >= 80


class _Api(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(b"{}")

    do_GET = do_POST = do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def port():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def host(tmp_path):
    config_dir = tmp_path / "etc"
    (config_dir / "agents.d").mkdir(parents=True)
    creds = config_dir / "credentials" / NAME
    creds.mkdir(parents=True)
    for cred, value in CREDS.items():
        (creds / cred).write_text((_jwt({"exp": int(time.time()) + 86400 * 30}) if cred == "tok" else value) + "\n")
        os.chmod(str(creds / cred), 0o600)
    return types.SimpleNamespace(config_dir=str(config_dir), state_dir=str(tmp_path / "state"),
                                 spool_dir=str(tmp_path / "spool"), credentials_dir=str(creds), timeout=5)


def _agent(**fields):
    agent = {"name": NAME, "command": "/bin/true", "credentials": dict(CREDS)}
    agent.update(fields)
    return agent


def _host_file(host, **fields):
    data = {"name": NAME, "unit": "agentops-%s.service" % NAME, "user": "root", "state": "present",
            "state_dir": os.path.join(host.state_dir, NAME), "credentials_dir": host.credentials_dir,
            "credentials": sorted(CREDS), "auth_checks": [], "token_rotation": [], "heartbeat": None}
    data.update(fields)
    with open(os.path.join(host.config_dir, "agents.d", NAME + ".json"), "w") as handle:
        json.dump(data, handle)


def _with_port(value, port):
    if isinstance(value, dict) and isinstance(value.get("url"), str):
        return dict(value, url=value["url"].replace("{port}", str(port)))
    return value


@pytest.mark.parametrize("case", AUTH_CHECKS, ids=_ids(AUTH_CHECKS))
def test_auth_check_same_verdict(case, host, port):
    check, expected = (case, False) if not isinstance(case, tuple) else case
    check = _with_port(check, port)
    controller_ok = not agents_errors([_agent(auth_checks=[check])])
    _host_file(host, auth_checks=[check])
    agent = hostconfig.load_agent(host.config_dir, NAME)
    (result,) = check_auth.check_agent(host, agent)
    host_ok = "the check is invalid" not in result["message"]
    assert (controller_ok, host_ok) == (expected, expected), (check, result["message"])


@pytest.mark.parametrize("case", HEARTBEATS, ids=_ids(HEARTBEATS))
def test_heartbeat_same_verdict(case, host):
    heartbeat, expected = case
    controller_ok = not agents_errors([_agent(heartbeat=heartbeat)])
    stored = dict(HEARTBEAT_DEFAULTS, **heartbeat) if isinstance(heartbeat, dict) else heartbeat
    _host_file(host, heartbeat=stored)
    try:
        hostconfig.load_agent(host.config_dir, NAME)
        host_ok = True
    except hostconfig.ConfigError:
        host_ok = False
    assert (controller_ok, host_ok) == (expected, expected), heartbeat


def _deadman_on_host(host, entries):
    """The host path of heartbeat.deadman: heartbeat.json as the heartbeat role writes it, loaded by the heartbeat."""
    from agentops_host import deadman
    with open(os.path.join(host.config_dir, "heartbeat.json"), "w") as handle:
        json.dump({"metrics_textfile_dir": "", "deadman": [], "agents": {NAME: entries}}, handle)
    try:
        deadman.load_settings(host.config_dir)
        return True
    except deadman.SettingsError:
        return False


DEADMAN_CASES = [(d, True) for d in DEADMANS] + [(d, False) for d in BAD_DEADMANS]


@pytest.mark.parametrize("case", DEADMAN_CASES, ids=_ids(DEADMAN_CASES))
def test_heartbeat_deadman_same_verdict(case, host):
    """heartbeat.deadman: agents_errors on the controller, heartbeat.json checked by the heartbeat on the host
    (the entries travel there, not through agents.d, so their URLs never show in the agents role's output)."""
    entries, expected = case
    controller = agents_errors([_agent(heartbeat={"deadman": entries})])
    host_ok = _deadman_on_host(host, entries)
    assert (not controller, host_ok) == (expected, expected), (entries, controller)
    for message in controller:
        assert "agentops_agents[corpus].heartbeat.deadman" in message and "hc-ping.com/" not in message


@pytest.mark.parametrize("case", ROTATIONS, ids=_ids(ROTATIONS))
def test_token_rotation_same_verdict(case, host):
    entry, expected = case
    controller_ok = not agents_errors([_agent(token_rotation=[entry])])
    _host_file(host, token_rotation=[entry])
    try:
        hostconfig.load_agent(host.config_dir, NAME)
        host_ok = True
    except hostconfig.ConfigError:
        host_ok = False
    assert (controller_ok, host_ok) == (expected, expected), entry
