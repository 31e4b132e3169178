"""The entry script runs isolated: an agent's HOME, working directory and environment never run as root.

``ExecStartPre=+/usr/local/bin/agentops check-auth <agent>`` runs as root with the agent unit's
environment (HOME = the agent's state directory, its Environment=) and working directory. These
tests run the real entry script (its shebang, ``python3 -I``) with a hostile HOME holding a
``.pth`` file in the user site-packages, ``sitecustomize.py`` / ``usercustomize.py`` in HOME and in
the working directory, PYTHONPATH / PYTHONSTARTUP / PYTHONUSERBASE / PYTHONINSPECT pointing there,
and checks that none of the payloads runs. A control run without ``-I`` proves the payloads are real.
"""
import json
import os
import stat
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
ENTRY = os.path.join(ROOT, "roles", "common", "files", "agentops")
PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.skipif(not os.path.exists(PYTHON), reason="needs the system python3 of the shebang")


def _minor():
    out = subprocess.run([PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         stdout=subprocess.PIPE, check=True, universal_newlines=True)
    return out.stdout.strip()


@pytest.fixture
def hostile(tmp_path):
    """A library dir, an installed entry script, a config with one agent, and a hostile HOME."""
    lib = tmp_path / "lib"
    lib.mkdir()
    os.symlink(os.path.join(ROOT, "roles", "common", "files", "agentops_host"), str(lib / "agentops_host"))
    os.symlink(os.path.join(ROOT, "plugins", "module_utils"), str(lib / "agentops_lib"))
    script = tmp_path / "agentops"
    with open(ENTRY) as handle:
        text = handle.read()
    assert text.startswith("#!/usr/bin/python3 -I\n")
    script.write_text(text.replace('"/usr/local/lib/agentops"', repr(str(lib))))
    script.chmod(0o755)

    canary_dir = tmp_path / "canaries"
    canary_dir.mkdir()
    home = tmp_path / "home"
    site = home / ".local" / "lib" / ("python" + _minor()) / "site-packages"
    site.mkdir(parents=True)

    def payload(name):
        return "import os; open(%r, 'w').write('ran')\n" % str(canary_dir / name)

    (site / "evil.pth").write_text("import os; open(%r, 'w').write('ran')\n" % str(canary_dir / "pth"))
    for folder in (home, site):
        (folder / "sitecustomize.py").write_text(payload("sitecustomize-" + folder.name))
        (folder / "usercustomize.py").write_text(payload("usercustomize-" + folder.name))
    (home / "startup.py").write_text(payload("pythonstartup"))
    # a module named like one the command imports, in HOME (cwd and PYTHONPATH)
    (home / "json.py").write_text(payload("shadowed-json"))

    config = tmp_path / "etc"
    (config / "agents.d").mkdir(parents=True)
    (config / "credentials" / "probe").mkdir(parents=True)
    envfile = tmp_path / "seen-env.json"
    probe = tmp_path / "probe.sh"
    probe.write_text("#!/bin/sh\n%s -c 'import json, os, sys; json.dump({\"env\": dict(os.environ), "
                     "\"cwd\": os.getcwd()}, open(sys.argv[1], \"w\"))' %s\nexit 0\n"
                     % (PYTHON, str(envfile)))
    probe.chmod(0o755)
    (config / "agents.d" / "probe.json").write_text(json.dumps({
        "name": "probe", "unit": "agentops-probe.service", "credentials_dir": str(config / "credentials" / "probe"),
        "auth_checks": [{"name": "env", "type": "command", "command": str(probe)}]}))
    (config / "agentops.json").write_text(json.dumps({"host": "test", "alert_channels": []}))
    os.chmod(str(config / "agentops.json"), stat.S_IRUSR | stat.S_IWUSR)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "PYTHONPATH": str(home),
        "PYTHONSTARTUP": str(home / "startup.py"),
        "PYTHONUSERBASE": str(home / ".local"),
        "PYTHONINSPECT": "1",
        "CURL_HOME": str(home),
        "AGENT_SECRET_ENV": "must-not-reach-commands",
    }
    return {"script": str(script), "home": str(home), "canaries": canary_dir, "config": str(config),
            "state": str(tmp_path / "state"), "spool": str(tmp_path / "spool"), "env": env, "envfile": envfile}


def _run(h, argv, interpreter=None):
    cmd = ([interpreter, h["script"]] if interpreter else [h["script"]]) + [
        "--config-dir", h["config"], "--state-dir", h["state"], "--spool-dir", h["spool"]] + argv
    return subprocess.run(cmd, cwd=h["home"], env=h["env"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60, check=False)


def test_control_run_without_isolation_executes_the_payloads(hostile):
    """Without -I the same HOME runs the agent's code: the payloads are real, the test can fail."""
    subprocess.run([PYTHON, "-c", "pass"], cwd=hostile["home"], env=hostile["env"], stdin=subprocess.DEVNULL,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, check=False)
    assert "pth" in os.listdir(str(hostile["canaries"]))


@pytest.mark.parametrize("argv", [
    ["check-auth", "probe", "--no-alert"],
    ["status"],
    ["heartbeat", "--force"],
    ["rotate", "--list"],
    ["flush"],
    ["alert", "--severity", "info", "--key", "k", "--title", "t"],
])
def test_entry_script_never_runs_the_agents_code(hostile, argv):
    proc = _run(hostile, argv)
    assert os.listdir(str(hostile["canaries"])) == [], (proc.stdout, proc.stderr)


def test_commands_run_by_root_get_a_fixed_environment(hostile):
    proc = _run(hostile, ["check-auth", "probe", "--no-alert"])
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(hostile["envfile"].read_text())
    env = seen["env"]
    assert env.get("HOME") != hostile["home"]
    assert not [k for k in env if k.startswith("PYTHON") or k in ("CURL_HOME", "AGENT_SECRET_ENV")], env
    assert hostile["home"] not in json.dumps(env)
    assert seen["cwd"] == "/"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_entry_script_refuses_to_run_without_isolated_mode(hostile):
    proc = _run(hostile, ["status"], interpreter=PYTHON)
    assert proc.returncode != 0
    assert "isolated mode" in proc.stderr
    # and even that refusal ran no payload from the working directory or HOME except what plain
    # python3 itself loads before the script (the user site .pth): the script did nothing more.
    assert "shadowed-json" not in os.listdir(str(hostile["canaries"]))


def test_in_process_callers_keep_their_environment(monkeypatch):
    """cli.main(argv) (tests, other Python code) never clears the caller's environment."""
    from agentops_host import cli
    monkeypatch.setenv("AGENTOPS_TEST_MARKER", "kept")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert os.environ.get("AGENTOPS_TEST_MARKER") == "kept"


def test_safe_environment_is_minimal():
    from agentops_host import cli
    env = cli.safe_environment()
    assert set(env) == {"PATH", "LANG", "HOME"}
    assert env["PATH"] == cli.SAFE_PATH
    assert env["HOME"].startswith("/")
