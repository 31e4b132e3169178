"""Items 5 and 4: the evil agent's rotation command (timeout: 5, run as its user) floods stdout without end, or
leaves a child in a new session holding stdout and stderr open for 10 minutes.

Each rotation fails within its timeout plus a few seconds with a critical alert at the webhook, the credential
file stays byte for byte (same inode, mtime and mode), and meanwhile victim's own rotation runs (the lock is per
agent), the heartbeat keeps running, and victim's API turning 401 is alerted and then resolved.
"""
import json
import random
import time

import pytest

from hostile_helpers import (CRED, EVIL_HOME, ROTATE_MODE, SECRET_MARK, UNIT, now, prop, set_api, sh, timed,
                             wait_for, webhook, write)

TIMEOUT = 5          # token_rotation[].timeout of the evil agent in molecule.yml
GRACE = 10           # "a few seconds" past the timeout for killing, draining and alerting
GUARD = 90           # the test kills a rotation that outlives this (an unbounded one would hang the test)
OUT = "/root/.evil-rotate"
STATE = "/var/lib/agentops/rotation/evil/api_token.json"
FAIL_KEY = "rotate-failed:evil:api_token"


def new_token(name):
    return "CANARY-rotated-%s-%016x" % (name, random.getrandbits(64))


def cred_state(host, name):
    return sh(host, "stat -c '%%i %%s %%Y %%a %%U %%G' %s && sha256sum %s" % (CRED % name, CRED % name)).stdout


def kill_setsid_child(host):
    """End the sleep the setsid mode left behind (this test started it; found by its pid file and owner)."""
    pid = host.run("cat %s/.setsid-child.pid 2>/dev/null" % EVIL_HOME).stdout.strip()
    if pid.isdigit() and host.run("ps -o user= -p %s" % pid).stdout.strip() == "agent-evil":
        host.run("kill -KILL %s" % pid)
    host.run("rm -f %s/.setsid-child.pid" % EVIL_HOME)


def end_background_rotation(host):
    """Kill what is left of the rotation this test started in the background (its process group)."""
    pgid = host.run("cat %s.pgid 2>/dev/null" % OUT).stdout.strip()
    if pgid.isdigit() and host.run("test -e %s.done" % OUT).rc != 0:
        host.run("/usr/bin/kill -KILL -- -%s" % pgid)
        wait_for(lambda: host.run("pgrep -g %s" % pgid).rc != 0, 30, message="background rotation ended")
    host.run("rm -f %s.pgid" % OUT)


def heartbeat_last_check(host, name):
    state = host.run("cat /var/lib/agentops/.heartbeat/%s.json 2>/dev/null" % name).stdout
    return json.loads(state).get("last_check", 0) if state.strip() else 0


def poll(predicate, timeout, interval=0.5):
    """predicate()'s first truthy value within `timeout` seconds, else its last value (never raises)."""
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last or time.monotonic() >= deadline:
            return last
        time.sleep(interval)


def reset(host):
    """evil's command in its normal mode, nothing left running, and a good rotation (resolves a failure)."""
    end_background_rotation(host)
    kill_setsid_child(host)
    write(host, ROTATE_MODE, "ok\n")
    set_api(host, tokens={"evil": new_token("evil"), "victim": new_token("victim")})
    result, seconds = timed(host, "/usr/local/bin/agentops rotate --force evil/api_token", 60)
    assert result.rc == 0, result.stdout + result.stderr


@pytest.fixture(scope="module", params=["flood", "setsid"])
def episode(host, request):
    """evil's rotation in one bad mode, started in the background; meanwhile victim rotates and its API
    turns 401 for a while. Returns what was observed (the tests judge it)."""
    mode = request.param
    seen = {"mode": mode}
    reset(host)
    try:
        seen["before"] = cred_state(host, "evil")
        victim_token = new_token("victim")
        set_api(host, tokens={"evil": new_token("evil"), "victim": victim_token})
        write(host, ROTATE_MODE, mode + "\n")
        seen["since"] = since = now(host)
        sh(host, "rm -f %s.*" % OUT)
        # in its own session, so the teardown can end what is left of it (its pid is the process group)
        sh(host, "setsid nohup sh -c 'echo $$ > %s.pgid; s=$(date +%%s.%%N); timeout --foreground -s KILL %d "
                 "/usr/local/bin/agentops rotate --force evil/api_token > %s.out 2>&1; rc=$?; "
                 "echo \"$s $(date +%%s.%%N) $rc\" > %s.done' >/dev/null 2>&1 &" % (OUT, GUARD, OUT, OUT))
        # the command is running (flood) or has left its child behind (setsid), or the rotation already ended
        poll(lambda: host.run("test -e %s.done || pgrep -u agent-evil -x yes || test -s %s/.setsid-child.pid"
                              % (OUT, EVIL_HOME)).rc == 0, 30)
        seen["evil_running_when_victim_started"] = host.run("test -e %s.done" % OUT).rc != 0

        # meanwhile: victim's rotation (a per-agent lock) ...
        seen["victim_rotation"], seen["victim_rotation_seconds"] = timed(
            host, "/usr/local/bin/agentops rotate --force victim/api_token", 60)
        seen["victim_token_in_place"] = host.file(CRED % "victim").content_string == victim_token
        # ... and victim's API turning 401, then 200 again: still checked, alerted, resolved
        checked = now(host)
        set_api(host, status={"victim": 401}, tokens={"victim": victim_token})
        try:
            seen["victim_alert"] = poll(lambda: webhook(host, checked, key="auth:victim:api", severity="critical"),
                                        60)
        finally:
            set_api(host, tokens={"victim": victim_token})
        seen["victim_resolved"] = poll(lambda: webhook(host, checked, key="auth:victim:api",
                                                       severity="resolved"), 60)

        done = poll(lambda: host.run("cat %s.done 2>/dev/null" % OUT).stdout.split(), GUARD + 30, interval=1)
        seen["done"] = done
        seen["output"] = host.run("head -c 4000 %s.out" % OUT).stdout
        seen["after"] = cred_state(host, "evil")
        seen["alert"] = poll(lambda: webhook(host, since, key=FAIL_KEY, severity="critical"), 30)
        seen["state"] = host.run("cat %s" % STATE).stdout
        seen["victim_last_check"] = heartbeat_last_check(host, "victim")
        seen["active"] = dict((n, prop(host, UNIT % n, "ActiveState")) for n in ("evil", "victim", "bystander"))
    finally:
        reset(host)
    return seen


def test_rotation_command_is_cut_off_within_its_timeout(episode):
    done = episode["done"]
    assert done, "evil's rotation (%s) never finished" % episode["mode"]
    started, ended, rc = float(done[0]), float(done[1]), int(done[2])
    assert rc != 137, ("evil's rotation (%s) was SIGKILLed after %.1fs: by the test's %ss guard (unbounded) or by "
                       "the container's memory limit (unbounded output)" % (episode["mode"], ended - started, GUARD))
    assert rc == 1, episode["output"]
    assert ended - started <= TIMEOUT + GRACE, "evil's rotation (%s) took %.1fs" % (episode["mode"], ended - started)


def test_failed_rotation_alerts_critical_without_secrets(episode):
    assert episode["alert"], "no critical %s alert at the webhook (%s)" % (FAIL_KEY, episode["mode"])
    body = episode["alert"][0]["body"]
    assert SECRET_MARK not in body and len(body) < 8000, body[:500]
    assert SECRET_MARK not in episode["output"]
    assert json.loads(episode["state"] or "{}").get("result") == "failed", episode["state"]


def test_credential_unchanged_byte_for_byte(episode):
    assert episode["after"] == episode["before"]  # same inode, size, mtime, mode, owner and sha256


def test_victim_rotates_while_evil_rotation_misbehaves(episode):
    result = episode["victim_rotation"]
    assert result.rc == 0, "victim's rotation while evil's runs: %s%s" % (result.stdout, result.stderr)
    assert episode["victim_token_in_place"]
    assert episode["victim_rotation_seconds"] < 30


def test_victim_still_checked_and_alerted(episode):
    assert episode["victim_alert"], "no critical auth:victim:api alert while evil's rotation misbehaved"
    assert SECRET_MARK not in episode["victim_alert"][0]["body"]
    assert episode["victim_resolved"], "auth:victim:api not resolved"


def test_heartbeat_and_agents_keep_running(episode):
    assert episode["victim_last_check"] > episode["since"], "the heartbeat stopped checking victim"
    assert episode["active"] == {"evil": "active", "victim": "active", "bystander": "active"}
