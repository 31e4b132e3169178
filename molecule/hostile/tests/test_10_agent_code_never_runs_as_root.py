"""Item 1: the evil agent's user plants code where Python and curl look for it; root must never run it.

Planted, as agent-evil, in its HOME (which is also its WorkingDirectory): a `.pth` file, `usercustomize.py`
and `sitecustomize.py` in ~/.local/lib/python3.X/site-packages, `sitecustomize.py` / `usercustomize.py` in
HOME itself, `sitecustomize.py` in ~/pylib (the inventory points PYTHONPATH there), and a ~/.curlrc that
sends curl's output to /root/PWNED-curlrc (the agent has a `curl` auth check). Each Python payload records
who ran it in /var/lib/agentops-canary/<kind>-euid<N>-pid<P>; run as root it also writes /root/PWNED-<kind>.
"""
import pytest

from hostile_helpers import (API, CANARY_DIR, EVIL_HOME, EVIL_USER, HOSTILE_ENV, ROTATE_MODE, UNIT, as_evil,
                             now, prop, py_minor, records, root_canaries, payload_records, set_api, sh, timed,
                             write)

PAYLOAD = "/opt/agentops-test/payloads/payload.py"


def plant(host):
    """Plant every payload as agent-evil; returns its uid."""
    site = ".local/lib/python%s/site-packages" % py_minor(host)
    files = [("%s/agentops_hostile_pth.py" % site, "pth"),
             ("%s/usercustomize.py" % site, "usercustomize-usersite"),
             ("%s/sitecustomize.py" % site, "sitecustomize-usersite"),
             ("sitecustomize.py", "sitecustomize-home"),
             ("usercustomize.py", "usercustomize-home"),
             ("pylib/sitecustomize.py", "sitecustomize-pythonpath")]
    script = ["mkdir -p %s pylib" % site]
    script += ["sed 's/@KIND@/%s/' %s > %s" % (kind, PAYLOAD, path) for path, kind in files]
    script += ["echo 'import agentops_hostile_pth' > %s/agentops-hostile.pth" % site,
               "printf 'output = \"/root/PWNED-curlrc\"\\n' > .curlrc"]
    as_evil(host, " && ".join(script))
    return int(host.check_output("id -u %s" % EVIL_USER))


@pytest.fixture
def planted(host):
    sh(host, "rm -f /root/PWNED-* %s/*" % CANARY_DIR)
    set_api(host, tokens={"evil": "CANARY-rotated-evil-planted", "victim": "CANARY-rotated-victim-planted"})
    write(host, ROTATE_MODE, "ok\n")
    return plant(host)


def health_checks(host, since):
    """curl auth checks of the evil agent the fake API answered since `since`."""
    return [r for r in records(host, API, since) if r["path"] == "/evil/health"]


def test_the_payloads_are_live_for_the_agent_user(host, planted):
    """Control: the same Python and curl, run as the agent's user, do pick the payloads up."""
    as_evil(host, "python3 -c pass", env={"PYTHONPATH": EVIL_HOME + "/pylib"})
    kinds = payload_records(host, planted)
    assert "pth" in kinds and "sitecustomize-pythonpath" in kinds, kinds
    assert "usercustomize-usersite" in kinds, kinds
    # curl reads ~/.curlrc and tries to write its output to /root/PWNED-curlrc: exit 23 (write error)
    assert as_evil(host, "curl -sf http://127.0.0.1:%d/evil/health" % API, ok=False).rc == 23
    assert root_canaries(host) == []


def test_crash_restart_and_heartbeat_never_run_agent_code_as_root(host, planted, wait_for):
    unit = UNIT % "evil"
    since = now(host)
    restarts = int(prop(host, unit, "NRestarts"))
    # the agent crashes itself: Restart= starts it again, ExecStartPre=+ check-auth runs as root
    pid = prop(host, unit, "MainPID")
    as_evil(host, "kill -KILL %s" % pid)
    wait_for(lambda: int(prop(host, unit, "NRestarts")) > restarts and prop(host, unit, "ActiveState") == "active",
             60, message="%s restarted by Restart=" % unit)
    result, seconds = timed(host, "systemctl restart %s" % unit, 60)
    assert result.rc == 0, result.stderr
    result, seconds = timed(host, "systemctl start agentops-heartbeat.service", 120)
    assert result.rc == 0, result.stderr
    # the root helpers really ran (both starts ran the curl check) ...
    wait_for(lambda: len(health_checks(host, since)) >= 2, 30, message="check-auth runs of both starts")
    # ... and never ran the agent's code
    assert root_canaries(host) == []


@pytest.mark.parametrize("argv", [
    "check-auth evil",
    "check-auth victim",
    "heartbeat --force",
    "status",
    "rotate --list",
    "rotate --force evil/api_token",
    "flush",
    "alert --severity info --key hostile-env-test --title 'alert from a hostile environment'",
    "failure agentops-evil.service",
])
def test_root_entry_points_ignore_a_hostile_environment(host, planted, argv):
    """Run as root from the agent's directory with HOME, PYTHONPATH, PYTHONUSERBASE and CURL_HOME pointing
    into it (what ExecStartPre=+ inherits from the unit, or a careless shell): isolated, nothing runs."""
    env = " ".join("%s=%s" % item for item in sorted(HOSTILE_ENV.items()))
    since = now(host)
    result, seconds = timed(host, "cd %s && env %s /usr/local/bin/agentops %s" % (EVIL_HOME, env, argv), 90)
    assert result.rc != 137, "agentops %s did not finish within 90s" % argv
    if argv.startswith("check-auth") or argv.startswith("rotate"):
        assert result.rc == 0, result.stdout + result.stderr
    if argv == "check-auth evil":
        # the curl check ran (the heartbeat, every 3 s, may have run it once more meanwhile)
        assert "evil/curl: AUTH_OK" in result.stdout, result.stdout
        assert len(health_checks(host, since)) >= 1
    if argv == "rotate --force evil/api_token":
        assert host.file("/etc/agentops/credentials/evil/api_token").content_string == "CANARY-rotated-evil-planted"
    assert root_canaries(host) == [], "agentops %s ran the agent's code as root" % argv
