"""token_rotation scenario: real cron file, real agent unit, real token endpoint and webhook on 127.0.0.1.

Port 18081 (fake endpoint): POST /token hands out the next token (its rules decide which),
GET /me answers the agent's auth check (200 unless a rule says 401).
Port 18082 (fake endpoint): webhook receiver of the alert path (/var/log/agentops-fake-endpoint/18082.jsonl).
"""
import hashlib
import json
import os
import random
import re

import pytest
import testinfra.utils.ansible_runner
from agentops_testlib import skip_unless_case_host

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("all")

CRED = "/etc/agentops/credentials/rotor/api_token"
PREV = CRED + ".prev"
STATE = "/var/lib/agentops/rotation/rotor/api_token.json"
UNIT = "agentops-rotor.service"
AGENT_SUM = "/var/lib/agentops/rotor/token.sha256"
TOKEN_RULES = "/etc/agentops-fake-endpoint/18081.json"
TOKEN_LOG = "/var/log/agentops-fake-endpoint/18081.jsonl"
HOOK_LOG = "/var/log/agentops-fake-endpoint/18082.jsonl"
CRON = "/etc/cron.d/agentops-token-rotation"
ROTATION_UNIT = "agentops-rotation.service"
SEED = "seed-canary-7f3e91c2-never-print-me"


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def sh(host, command, ok=True):
    result = host.run(command)
    if ok:
        assert result.rc == 0, "%s failed (%s): %s %s" % (command, result.rc, result.stdout, result.stderr)
    return result


def write(host, path, content, mode="0600"):
    marker = "AGENTOPS_EOF_%08x" % random.getrandbits(32)
    sh(host, "umask 077; cat > %s.new <<'%s'\n%s\n%s\nchmod %s %s.new && mv %s.new %s"
       % (path, marker, content, marker, mode, path, path, path))


def set_token_rules(host, token=None, token_status=200, me_status=200):
    rules = [{"path": "^/me$", "status": me_status, "body": {"ok": me_status == 200}},
             {"path": "^/token$", "method": "POST", "status": token_status,
              "body": {"access_token": token} if token_status == 200 else {"error": "server_error"}}]
    write(host, TOKEN_RULES, json.dumps(rules), mode="0644")


def set_credential(host, value, days_old):
    """Put a known token in place (printf: no trailing newline) and age it."""
    sh(host, "printf %%s '%s' > %s.new && chmod 0600 %s.new && mv %s.new %s && touch -d '%s days ago' %s && rm -f %s"
       % (value, CRED, CRED, CRED, CRED, days_old, CRED, STATE))


def lines(host, path):
    result = host.run("cat %s 2>/dev/null" % path)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def hooks(host, key=None, severity=None):
    found = []
    for record in lines(host, HOOK_LOG):
        try:
            body = json.loads(record["body"])
        except ValueError:
            continue
        if key and body.get("key") != key:
            continue
        if severity and body.get("severity") != severity:
            continue
        found.append(body)
    return found


def token_requests(host):
    return len([r for r in lines(host, TOKEN_LOG) if r["path"] == "/token"])


def started_at(host):
    return host.run("systemctl show -p ExecMainStartTimestamp --value %s" % UNIT).stdout.strip()


def cred_state(host):
    return sh(host, "stat -c '%%i %%s %%Y %%a %%U' %s && sha256sum %s" % (CRED, CRED)).stdout


def agent_read(host, expected):
    return host.run("cat %s" % AGENT_SUM).stdout.strip() == sha(expected)


def new_token():
    return "rotated-%016x" % random.getrandbits(64)


@pytest.fixture(autouse=True)
def healthy_agent(host, wait_for):
    """Every test starts from a running agent, a healthy API and no open rotation failure."""
    set_token_rules(host, token=new_token())
    sh(host, "systemctl enable --now %s" % UNIT)
    wait_for(lambda: host.service(UNIT).is_running, 60, message="%s running" % UNIT)
    yield


def rotate_ok_and_resolve(host):
    """A good forced rotation: resolves an open failure alert (used after the failure cases)."""
    token = new_token()
    set_token_rules(host, token=token)
    sh(host, "agentops rotate --force rotor/api_token")
    assert host.file(CRED).content_string == token
    return token


def test_cron_file_exists_parses_and_names_the_command(host):
    cron = host.file(CRON)
    assert cron.exists and cron.user == "root" and cron.mode == 0o644
    jobs = [line for line in cron.content_string.splitlines()
            if line.strip() and not line.startswith("#") and not re.match(r"^[A-Z_]+=", line)]
    assert len(jobs) == 1, jobs
    fields = jobs[0].split(None, 6)
    minute, hour, dom, month, dow, user, command = fields
    assert (minute, hour, dom, month, dow, user) == ("30", "4", "*", "*", "*", "root")
    assert command == "/usr/bin/systemctl start %s" % ROTATION_UNIT
    assert "argv[]=/usr/local/bin/agentops rotate ;" in host.run(
        "systemctl show -p ExecStart --value %s" % ROTATION_UNIT).stdout
    assert "every_days" in cron.content_string  # the comment: the schedule lives in the data
    assert host.service("cron").is_running and host.service("cron").is_enabled


def test_the_daily_run_is_a_hardened_unit_that_rotates_what_is_due(host, wait_for, capsys):
    """What cron starts every day: agentops-rotation.service rotates the due credential, the command in the
    agent's own sandbox, and its output reaches the journal without the token."""
    old = new_token()
    set_credential(host, old, 46)
    token = new_token()
    set_token_rules(host, token=token)
    since = sh(host, "date +%s").stdout.strip()
    result = host.run("systemctl start %s" % ROTATION_UNIT)
    assert result.rc == 0, result.stderr
    assert host.file(CRED).content_string == token
    journal = sh(host, "journalctl --no-pager -q -o cat --since=@%s -u %s" % (since, ROTATION_UNIT)).stdout
    assert "rotor/api_token: rotated" in journal and token not in journal and old not in journal
    # the rotation command ran for the agent in its own transient unit
    sandboxed = sh(host, "journalctl --no-pager -q -o cat --since=@%s -u agentops-heartbeat-rotate-rotor.service"
                   % since).stdout
    assert "Started" in sandboxed and token not in sandboxed
    props = dict(line.split("=", 1) for line in sh(host, "systemctl show -p NoNewPrivileges,ProtectSystem,"
                                                         "TimeoutStopUSec %s" % ROTATION_UNIT).stdout.splitlines())
    assert props == {"NoNewPrivileges": "yes", "ProtectSystem": "full", "TimeoutStopUSec": "10s"}
    out = sh(host, "systemd-analyze security --no-pager %s" % ROTATION_UNIT).stdout
    level = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    with capsys.disabled():
        print("\nsystemd-analyze security %s on %s: exposure %.1f" % (ROTATION_UNIT, host.backend.host, level))
    assert level <= 4.0


def test_one_day_old_credential_is_left_alone(host):
    old = new_token()
    set_credential(host, old, 1)
    before, requests, started = cred_state(host), token_requests(host), started_at(host)
    result = sh(host, "agentops rotate")
    assert "nothing due" in result.stdout
    assert cred_state(host) == before and token_requests(host) == requests and started_at(host) == started


def test_46_day_old_credential_is_rotated_once_and_the_agent_restarted(host, wait_for):
    old = new_token()
    set_credential(host, old, 46)
    sh(host, "systemctl restart %s" % UNIT)
    wait_for(lambda: agent_read(host, old), 60, message="agent reading the old token")
    started = started_at(host)
    token = new_token()
    set_token_rules(host, token=token)
    requests = token_requests(host)

    result = sh(host, "agentops rotate")
    assert "rotor/api_token: rotated" in result.stdout
    assert token_requests(host) == requests + 1
    cred = host.file(CRED)
    assert cred.content_string == token and cred.mode == 0o600 and cred.user == "root"
    prev = host.file(PREV)
    assert prev.content_string == old and prev.mode == 0o600 and prev.user == "root"
    wait_for(lambda: started_at(host) != started, 60, message="agent restarted")
    wait_for(lambda: agent_read(host, token), 60, message="agent reading the new token")
    info = wait_for(lambda: hooks(host, "rotate:rotor:api_token", "info"), 60, message="info confirmation")
    assert "passed the auth check" in info[-1]["body"]
    state = json.loads(sh(host, "cat %s" % STATE).stdout)
    assert state["result"] == "ok"
    # the second daily run finds nothing due: exactly one rotation
    assert "nothing due" in sh(host, "agentops rotate").stdout
    assert token_requests(host) == requests + 1
    # the token is in no log, alert, state or journal
    leaks = sh(host, "grep -rlF '%s' /var/lib/agentops /var/spool/agentops %s; "
                     "journalctl --no-pager -o cat | grep -cF '%s'" % (token, HOOK_LOG, token), ok=False).stdout
    assert leaks.strip() == "0", leaks


def test_list_shows_the_next_due_date(host):
    rotate_ok_and_resolve(host)
    due = sh(host, "date -d '+45 days' +%F").stdout.strip()
    table = sh(host, "agentops rotate --list").stdout
    row = [line for line in table.splitlines() if line.startswith("rotor")]
    assert row and "api_token" in row[0] and due in row[0] and "ok" in row[0], table
    data = json.loads(sh(host, "agentops rotate --list --json").stdout)
    assert data[0]["next_due"] == due and data[0]["due"] is False


@pytest.mark.parametrize("failure", ["command-fails", "prints-nothing", "token-rejected"])
def test_failed_rotation_keeps_the_old_token_and_alerts(host, failure, wait_for):
    old = new_token()
    set_credential(host, old, 46)
    sh(host, "systemctl restart %s" % UNIT)
    wait_for(lambda: agent_read(host, old), 60, message="agent reading the old token")
    prev_before = host.run("sha256sum %s" % PREV).stdout
    if failure == "command-fails":
        set_token_rules(host, token_status=500)
    elif failure == "prints-nothing":
        set_token_rules(host, token="")
    else:
        set_token_rules(host, token=new_token(), me_status=401)
    before, started = cred_state(host), started_at(host)
    criticals = len(hooks(host, "rotate-failed:rotor:api_token", "critical"))

    result = host.run("agentops rotate")
    assert result.rc == 1, result.stdout + result.stderr
    expected = {"command-fails": "exited with status", "prints-nothing": "printed no token",
                "token-rejected": "failed the auth check"}[failure]
    assert expected in result.stderr
    assert cred_state(host) == before  # byte-for-byte, same inode, same mtime
    assert host.run("sha256sum %s" % PREV).stdout == prev_before
    assert started_at(host) == started and agent_read(host, old)
    alert = wait_for(lambda: hooks(host, "rotate-failed:rotor:api_token", "critical")[criticals:], 60,
                     message="critical alert")
    assert expected in alert[-1]["body"] and old not in alert[-1]["body"]
    assert json.loads(sh(host, "cat %s" % STATE).stdout)["result"] == "failed"
    # a later good rotation resolves the failure alert
    rotate_ok_and_resolve(host)
    wait_for(lambda: hooks(host, "rotate-failed:rotor:api_token", "resolved"), 60, message="resolved notice")


def test_sigkill_during_swap_never_leaves_a_partial_credential(host):
    """30 x SIGKILL of `agentops rotate --force` at random moments: old or new token, never anything else."""
    sh(host, "systemctl disable --now %s" % UNIT)  # the loop tests the swap, not restarts
    old, token = "old-" + "o" * 3000, "new-" + "n" * 3000
    set_token_rules(host, token=token)
    script = r"""
old=$(cat /root/sigkill-old); new=$(cat /root/sigkill-new); n=0; old_seen=0; new_seen=0
while [ $n -lt 30 ]; do
  n=$((n+1))
  printf %%s "$old" > %(c)s.new && chmod 0600 %(c)s.new && mv %(c)s.new %(c)s
  /usr/local/bin/agentops rotate --force rotor/api_token >/dev/null 2>&1 &
  pid=$!
  sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%%.3f", r / 32767 * 1.2 }')"
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  content=$(cat %(c)s)
  if [ "$content" = "$old" ]; then old_seen=$((old_seen+1))
  elif [ "$content" = "$new" ]; then new_seen=$((new_seen+1))
  else echo "PARTIAL size=$(stat -c %%s %(c)s)"; fi
  [ "$(stat -c %%a %(c)s)" = 600 ] || echo "MODE $(stat -c %%a %(c)s)"
done
echo "old=$old_seen new=$new_seen"
""" % {"c": CRED}
    write(host, "/root/sigkill-old", old)
    write(host, "/root/sigkill-new", token)
    write(host, "/root/sigkill-loop.sh", script, mode="0700")
    try:
        result = sh(host, "bash /root/sigkill-loop.sh")
        print("SIGKILL loop outcome:", result.stdout.strip().splitlines()[-1])
        assert "PARTIAL" not in result.stdout and "MODE" not in result.stdout, result.stdout
        assert re.search(r"old=\d+ new=\d+", result.stdout)
        # a later run cleans up what the killed ones left and rotates normally
        sh(host, "printf %%s '%s' > %s" % (old, CRED))
        sh(host, "agentops rotate --force rotor/api_token")
        assert host.file(CRED).content_string == token
        assert sorted(host.file("/etc/agentops/credentials/rotor").listdir()) == ["api_token", "api_token.prev"]
    finally:
        sh(host, "systemctl enable --now %s" % UNIT)


def test_rerunning_the_playbook_keeps_the_rotated_token(host, run_playbook):
    token = rotate_ok_and_resolve(host)
    result = run_playbook(host, "converge.yml")
    assert result.rc == 0, result.output[-3000:]
    assert host.file(CRED).content_string == token
    assert "Left alone" in result.output and "rotor/api_token" in result.output
    assert SEED not in result.output and token not in result.output


BAD_INPUT = [
    ({"agentops_token_rotation_hour": "*/45"},
     "agentops_token_rotation_hour: '*/45' is not a whole number between 0 and 23: the rotation job runs once a day"),
    ({"agentops_token_rotation_minute": 60}, "agentops_token_rotation_minute: 60 is not a whole number between 0 and 59"),
    ({"agentops_token_rotation_hour": "3,15"}, "agentops_token_rotation_hour: '3,15' is not a whole number"),
    ({"agentops_token_rotation_grace_days": "x"}, "agentops_token_rotation_grace_days: 'x' is not a whole number"),
    ({"agentops_token_rotation_timeout_seconds": 0},
     "agentops_token_rotation_timeout_seconds: 0 is not a whole number between 1 and 86400"),
    ({"agentops_token_rotation_cron_file": "/etc/cron.d/other"},
     "agentops_token_rotation_cron_file: was removed: the path is fixed at /etc/cron.d/agentops-token-rotation"),
    ({"agentops_agents": [{"name": "rotor", "command": "/opt/agentops-test/token-agent",
                           "credentials": {"api_token": SEED},
                           "token_rotation": [{"credential": "api_token", "every_days": "*/45",
                                               "command": "/opt/agentops-test/refresh-token"}]}]},
     "every_days"),
]


@pytest.mark.parametrize("extra,message", BAD_INPUT)
def test_bad_input_is_refused_before_anything_changes(host, run_playbook, extra, message):
    skip_unless_case_host(host, testinfra_hosts, BAD_INPUT.index((extra, message)))
    before = sh(host, "sha256sum %s %s" % (CRON, CRED)).stdout
    result = run_playbook(host, "reject.yml", extra_vars=extra, expect_fail=True)
    assert message in result.output, result.output[-3000:]
    assert result.recap.get("changed", 0) == 0
    assert sh(host, "sha256sum %s %s" % (CRON, CRED)).stdout == before
    assert SEED not in result.output


def test_cron_file_removed_when_no_agent_rotates(host, run_playbook):
    token = rotate_ok_and_resolve(host)
    without = [{"name": "rotor", "command": "/opt/agentops-test/token-agent", "credentials": {"api_token": token},
                "auth_checks": [{"name": "api", "type": "http", "url": "http://127.0.0.1:18081/me",
                                 "credential": "api_token", "expect_status": [200]}]}]
    try:
        result = run_playbook(host, "converge.yml", extra_vars={"agentops_agents": without})
        assert result.rc == 0, result.output[-3000:]
        assert not host.file(CRON).exists and not host.file("/etc/systemd/system/" + ROTATION_UNIT).exists
        assert host.run("systemctl show -p LoadState --value %s" % ROTATION_UNIT).stdout.strip() == "not-found"
    finally:
        result = run_playbook(host, "converge.yml")
        assert result.rc == 0, result.output[-3000:]
    assert host.file(CRON).exists and host.file("/etc/systemd/system/" + ROTATION_UNIT).exists
    assert host.file(CRED).content_string == token
