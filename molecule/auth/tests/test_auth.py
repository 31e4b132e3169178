"""Auth checks at deploy and at every session start, on a converged host (tests run in file order).

The fake API on 127.0.0.1:18090 answers /v1.0/me with 200 or 401 (the tests rewrite its rules); the
webhook receiver on 127.0.0.1:18091 records what the alert path sends. On systemd 248 and later the
agent unit runs the check as ExecStartPre=+; on 247 (Debian 11) the unit requires the root one-shot
agentops-auth@mailer.service, which runs it before every start.
"""
import json
import os
import time

import testinfra.utils.ansible_runner

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("agentops_test")

CANARY = "canary-auth-inventory-token-7f3a"      # the token in the inventory
ROTATED = "canary-auth-rotated-token-91bd"       # a token an operator (or rotation) put on the host
UNIT = "agentops-mailer.service"
GATE = "agentops-auth@mailer.service"            # systemd 247 only
CRED = "/etc/agentops/credentials/mailer/graph_token"
API_RULES = "/etc/agentops-fake-endpoint/18090.json"
API_LOG = "/var/log/agentops-fake-endpoint/18090.jsonl"
HOOK_LOG = "/var/log/agentops-fake-endpoint/18091.jsonl"
URL = "http://127.0.0.1:18090/v1.0/me"
# One result per line: messages are asserted verbatim, not as wrapped YAML.
JSON_OUTPUT = {"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}


def set_api(host, status):
    rules = json.dumps([{"path": "^/v1.0/me$", "status": status, "body": {"error": "x"} if status != 200 else {}}])
    host.run_expect([0], "printf '%%s' %s > %s" % (_quote(rules), API_RULES))


def _quote(text):
    return "'" + text.replace("'", "'\\''") + "'"


def jsonl(host, path):
    result = host.run("cat %s" % path)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def api_tokens(host):
    return [r["headers"].get("Authorization") for r in jsonl(host, API_LOG) if r["path"] == "/v1.0/me"]


def hook_alerts(host):
    found = []
    for record in jsonl(host, HOOK_LOG):
        try:
            found.append(json.loads(record["body"]))
        except ValueError:
            pass
    return found


def prop(host, name):
    return host.check_output("systemctl show -p %s --value %s" % (name, UNIT))


def put_token(host, token):
    host.run_expect([0], "umask 077 && printf '%%s\\n' %s > %s.tmp && mv %s.tmp %s" % (_quote(token), CRED, CRED, CRED))


def journal_since(host, since):
    # the agent unit's journal, and the gate's (where the check runs on systemd 247)
    return host.check_output("journalctl --no-pager -o cat --since @%d -u %s -u %s" % (since, UNIT, GATE))


def systemd_version(host):
    return int(host.check_output("systemctl --version").split()[1])


def gate_prop(host, name):
    return host.check_output("systemctl show -p %s --value %s" % (name, GATE))


def critical_alerts(host, key, first=0):
    return [a for a in hook_alerts(host)[first:] if a.get("key") == key and a.get("severity") == "critical"]


def stays(predicate, seconds, interval=0.5):
    """Assert predicate() holds on every poll for ``seconds`` (an absence cannot be waited for: it is watched)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), "changed while watched"
        time.sleep(interval)


def test_10_agent_started_after_passing_check(host, wait_for):
    wait_for(lambda: prop(host, "ActiveState") == "active", 90, message="%s active" % UNIT)
    unit = host.file("/etc/systemd/system/" + UNIT).content_string
    if systemd_version(host) >= 248:
        assert "ExecStartPre=+/usr/local/bin/agentops check-auth mailer" in unit
        assert GATE not in prop(host, "Requires").split()
    else:
        assert "\nExecStartPre=" not in unit
        assert GATE in prop(host, "Requires").split() and GATE in prop(host, "After").split()
        assert gate_prop(host, "Result") == "success" and gate_prop(host, "ExecMainStatus") == "0"
        assert gate_prop(host, "ActiveState") == "inactive"  # a one-shot: it runs again at the next start
    plain = host.file("/etc/systemd/system/agentops-plain.service").content_string
    assert "check-auth" not in plain and "agentops-auth@" not in plain
    state = host.file("/var/lib/agentops/.auth/mailer.json")
    assert state.user == "root" and state.mode == 0o600
    recorded = json.loads(state.content_string)
    assert recorded["passed"] is True
    assert [(r["name"], r["status"]) for r in recorded["results"]] == [("graph", "AUTH_OK"), ("graph-file", "AUTH_OK")]
    assert CANARY not in state.content_string
    assert "Bearer " + CANARY in api_tokens(host)  # the check really presented the credential
    run = host.run("/usr/local/bin/agentops check-auth mailer")
    assert run.rc == 0, run.stdout + run.stderr
    assert run.stdout.startswith("mailer/graph: AUTH_OK - auth check 'graph' OK: GET %s answered HTTP 200" % URL)
    assert CANARY not in run.stdout + run.stderr
    for where in ("systemctl show %s" % UNIT, "journalctl --no-pager -u %s" % UNIT, "cat /proc/*/cmdline"):
        assert CANARY not in host.run(where).stdout, where


def test_15_every_start_runs_the_check_a_running_session_none(host, wait_for):
    """systemctl restart and a restart by Restart=on-failure (RestartSec=2) each run the check once; a start
    request for the running session starts nothing and checks nothing."""
    calls = len(api_tokens(host))
    host.run_expect([0], "systemctl restart %s" % UNIT)
    wait_for(lambda: prop(host, "ActiveState") == "active", 30, message="%s active after the restart" % UNIT)
    assert api_tokens(host)[calls:] == ["Bearer " + CANARY]
    pid, restarts = prop(host, "MainPID"), int(prop(host, "NRestarts"))
    host.run_expect([0], "kill -KILL %s" % pid)
    wait_for(lambda: prop(host, "ActiveState") == "active" and prop(host, "MainPID") not in ("0", pid), 30,
             message="%s restarted by Restart=" % UNIT)
    assert int(prop(host, "NRestarts")) == restarts + 1
    assert api_tokens(host)[calls:] == ["Bearer " + CANARY] * 2
    since = int(host.check_output("date +%s")) - 1
    host.run_expect([0], "systemctl start %s" % UNIT)
    assert prop(host, "ActiveState") == "active"
    assert len(api_tokens(host)) == calls + 2
    if systemd_version(host) < 248:
        assert "mailer: %s runs (main PID %s): a start request starts nothing, nothing checked" % (
            UNIT, prop(host, "MainPID")) in journal_since(host, since)


def test_20_check_mode_diff_vvv_pass_and_show_no_token(host, run_playbook):
    rc, out, recap = run_playbook(host, "converge.yml", check=True, diff=True, verbosity=3, env=JSON_OUTPUT)
    assert rc == 0, out[-3000:]
    assert recap["changed"] == 0, out[-3000:]
    assert "agent mailer, AUTH_OK: auth check 'graph' OK" in out
    assert CANARY not in out


def test_30_rejected_token_fails_the_deploy_with_the_check_message(host, run_playbook):
    set_api(host, 401)
    before = len(api_tokens(host))
    rc, out, recap = run_playbook(host, "auth_only.yml", verbosity=3, expect_fail=True, env=JSON_OUTPUT)
    assert recap["failed"] == 1, out[-3000:]
    assert ("agent mailer: auth check 'graph' FAILED: GET %s answered HTTP 401 Unauthorized (expected 200): "
            "the credential is expired, revoked or wrong" % URL) in out
    assert CANARY not in out
    assert api_tokens(host)[before:] == ["Bearer " + CANARY]  # checked with the token the host holds


def test_40_rejected_token_keeps_the_agent_down_and_alerts(host, wait_for):
    since = int(host.check_output("date +%s")) - 1
    alerts_before = len(hook_alerts(host))
    calls = len(api_tokens(host))
    restarts = int(prop(host, "NRestarts"))
    restart = host.run("systemctl restart %s" % UNIT)
    assert restart.rc != 0  # the session does not start: the check failed
    assert prop(host, "ActiveState") != "active"
    log = wait_for(lambda: (lambda text: text if "mailer/graph: AUTH_FAILED" in text else None)(
        journal_since(host, since)), 30, message="check-auth failure in the journal")
    assert "answered HTTP 401" in log and "Put a working token into %s" % CRED in log
    assert CANARY not in log
    # the failure goes through the alert path: one critical alert at the webhook receiver
    alert = wait_for(lambda: next(iter(critical_alerts(host, "auth:mailer:graph", alerts_before)), None),
                     60, message="critical auth alert at the webhook")
    assert alert["agent"] == "mailer" and "HTTP 401" in alert["body"]
    if systemd_version(host) >= 248:
        # systemd retries (Restart=on-failure, RestartSec=2): every retry runs ExecStartPre again and fails,
        # until the start limit (5 starts in 5 min) leaves the unit failed
        wait_for(lambda: int(prop(host, "NRestarts") or 0) >= 1, 60, message="a restart attempt")
        wait_for(lambda: prop(host, "ActiveState") == "failed", 60, message="%s failed at its start limit" % UNIT)
    else:
        # systemd 247: the one-shot failed, the agent's start job failed with it; Restart= does not apply to a
        # start that never ran, so the session stays down until something starts it again
        assert gate_prop(host, "ActiveState") == "failed" and gate_prop(host, "Result") == "exit-code"
        assert prop(host, "ActiveState") == "inactive" and int(prop(host, "NRestarts")) == restarts
        assert "Dependency failed for" in journal_since(host, since)
    assert prop(host, "MainPID") == "0"
    # nothing loops: once the agent is down, no further check reaches the API (watched for three RestartSec)
    settled = len(api_tokens(host))
    if systemd_version(host) < 248:
        assert settled - calls == 1                  # one start, one check, no retry
    else:
        assert settled - calls >= 2                  # the start and each retry up to the start limit
    stays(lambda: len(api_tokens(host)) == settled and prop(host, "ActiveState") != "active", 6)
    # each alert once: the auth alert, and the agent's own down (or crash-loop) alert from OnFailure=
    assert len(critical_alerts(host, "auth:mailer:graph", alerts_before)) == 1
    for key in ("mailer/down", "mailer/crashloop"):
        assert len(critical_alerts(host, key, alerts_before)) <= 1, key
    assert CANARY not in json.dumps(hook_alerts(host))


def test_50_fixed_token_next_start_succeeds_and_resolves(host, wait_for, run_playbook):
    alerts_before = len(hook_alerts(host))
    put_token(host, ROTATED)
    set_api(host, 200)
    host.run("systemctl reset-failed %s %s" % (UNIT, GATE))
    start = host.run("systemctl restart %s" % UNIT)
    assert start.rc == 0, start.stderr
    wait_for(lambda: prop(host, "ActiveState") == "active", 60, message="%s active again" % UNIT)
    assert api_tokens(host)[-1] == "Bearer " + ROTATED
    wait_for(lambda: any(a.get("key") == "auth:mailer:graph" and a.get("severity") == "resolved"
                         for a in hook_alerts(host)[alerts_before:]), 60, message="resolved auth alert")
    assert json.loads(host.file("/var/lib/agentops/.auth/mailer.json").content_string)["passed"] is True
    # the role checks the token the host holds (rotated), not the inventory's
    before = len(api_tokens(host))
    rc, out, _ = run_playbook(host, "auth_only.yml", verbosity=3, env=JSON_OUTPUT)
    assert rc == 0, out[-3000:]
    assert api_tokens(host)[before:] == ["Bearer " + ROTATED]
    assert ROTATED not in out and CANARY not in out


def test_60_bad_input_is_rejected_before_anything_runs(host, run_playbook):
    def agent(**check):
        base = {"name": "graph", "type": "http", "url": URL, "credential": "graph_token"}
        base.update(check)
        return [{"name": "mailer", "command": "/usr/bin/sleep infinity", "credentials": {"graph_token": CANARY},
                 "auth_checks": [dict((k, v) for k, v in base.items() if v is not None)]}]

    cases = [
        ({"agentops_agents": agent(type="ftp")}, ["agentops_agents[mailer].auth_checks[graph].type", "unknown type 'ftp' (use one of: http, jwt, command, file)"]),
        ({"agentops_agents": agent(url=None)}, ["agentops_agents[mailer].auth_checks[graph].url", "type http needs 'url'"]),
        ({"agentops_agents": agent(credential="nope")}, ["mailer", "'nope' is not one of the agent's credentials"]),
        ({"agentops_agents": agent(token=ROTATED)}, ["mailer", "auth_checks[graph].token", "unknown key"]),
        ({"agentops_auth_timeout": 0}, ["agentops_auth_timeout: 0 is not a whole number between 1 and 3600"]),
    ]
    for extra, words in cases:
        before = len(api_tokens(host))
        rc, out, recap = run_playbook(host, "auth_only.yml", extra_vars=extra, expect_fail=True, env=JSON_OUTPUT)
        assert recap["failed"] == 1, out[-3000:]
        for word in words:
            assert word in out, (extra, word, out[-3000:])
        assert len(api_tokens(host)) == before, "a check ran despite bad input %r" % (extra,)
        assert CANARY not in out and ROTATED not in out
