"""Unit tests of the runner of commands that act for an agent (roles/common/files/agentops_host/sandbox.py).

What is checked here: the transient unit names, the ``systemd-run`` command line built from the agent's
agents.d settings, how a run's outcome is read (from ``systemctl show`` outputs recorded on Debian 11, 12
and 13), and the runner's calls around a run, with stand-ins of ``systemd-run`` and ``systemctl``
(tests/unit/agentops_host/fake_systemd.py) since no systemd runs here. That the command really gets the
agent's sandbox, and that its unit ends what it started, is proven on real systemd by
molecule/hostile/tests/test_75_hostile_poll.py.
"""
import os
import pwd

import pytest

from agentops_host import sandbox
from agentops_lib import agentops_contract

import fake_systemd

ME = pwd.getpwuid(os.geteuid()).pw_name


def agent(tmp_path, name="mail", **extra):
    state_dir = str(tmp_path / name)
    os.makedirs(state_dir, exist_ok=True)
    entry = {"name": name, "user": ME, "state_dir": state_dir, "sandbox": fake_systemd.sandbox_entry(state_dir)}
    entry.update(extra)
    return entry


# --------------------------------------------------------------------------- names


def test_transient_unit_names_live_under_the_reserved_prefix_and_never_collide():
    names = ["x", "poll", "poll-x", "rotate", "rotate-x", "x-poll", "mail-triage", "a" * 40]
    units = {}
    for kind in ("poll", "rotate"):
        for name in names:
            unit = agentops_contract.transient_unit(kind, name)
            assert unit not in units, "%s of %s collides with %s" % (unit, name, units.get(unit))
            units[unit] = (kind, name)
            # no agent can have that unit: its name would start with the reserved heartbeat-
            assert unit.startswith("agentops-heartbeat-") and unit.endswith(".service")
            assert agentops_contract.agent_name_problem(unit[len("agentops-"):-len(".service")]) is not None
    assert units["agentops-heartbeat-poll-poll-x.service"] == ("poll", "poll-x")
    assert units["agentops-heartbeat-rotate-poll-x.service"] == ("rotate", "poll-x")
    # an agent's own unit is never one of them
    assert not set("agentops-%s.service" % n for n in names) & set(units)


@pytest.mark.parametrize("kind,name", [("poll", "heartbeat"), ("poll", "heartbeat-x"), ("rotate", "../etc"),
                                       ("poll", "X"), ("shell", "mail"), ("poll", None)])
def test_transient_unit_refuses_reserved_or_bad_names_and_kinds(kind, name):
    with pytest.raises(ValueError):
        agentops_contract.transient_unit(kind, name)
    with pytest.raises(sandbox.SandboxError):
        sandbox.unit_name(kind, {"name": name})


# --------------------------------------------------------------------------- the command line


def test_command_line_is_the_agents_user_directory_environment_and_sandbox(tmp_path):
    entry = agent(tmp_path)
    line = sandbox.command_argv("rotate", entry, ["/opt/refresh", "--for", "mail"], 20,
                                extra_env={"AGENTOPS_CREDENTIAL": "api_token"})
    state_dir = entry["state_dir"]
    assert line == [
        sandbox.SYSTEMD_RUN, "--wait", "--pipe", "--quiet", "--unit=agentops-heartbeat-rotate-mail.service",
        "--description=agentops: token rotation command of agent mail",
        "--uid=" + ME, "--gid=" + ME, "--working-directory=" + state_dir,
        "-E", "AGENTOPS_AGENT=mail", "-E", "AGENTOPS_CREDENTIAL=api_token", "-E", "HOME=" + state_dir,
        "-E", "LANG=C.UTF-8", "-E", "LOGNAME=" + ME, "-E", "PATH=" + sandbox.agentops_auth.SAFE_PATH,
        "-E", "USER=" + ME,
        "-p", "MemoryMax=2G", "-p", "CPUQuota=200%", "-p", "TasksMax=512", "-p", "NoNewPrivileges=yes",
        "-p", "ProtectSystem=strict", "-p", "SystemCallFilter=@system-service", "-p", "SystemCallFilter=~@privileged",
        "-p", "CapabilityBoundingSet=", "-p", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "-p", "ReadWritePaths=" + state_dir,
        "-p", "Type=exec", "-p", "KillMode=control-group", "-p", "TimeoutStopSec=5s", "-p", "RuntimeMaxSec=20s",
        "-p", "LimitCORE=1", "--", "/opt/refresh", "--for", "mail"]
    # a poll command holds no secret: no core limit of its own
    assert sandbox.command_argv("poll", entry, ["/bin/true"], 2.5)[-4:] == ["-p", "RuntimeMaxSec=2.5s", "--",
                                                                            "/bin/true"]


def test_every_dollar_is_doubled_so_systemd_expands_nothing(tmp_path):
    line = sandbox.command_argv("poll", agent(tmp_path), ["/bin/sh", "-c", "echo $HOME ${X} $$ %n 100%"], 5)
    assert line[line.index("--") + 1:] == ["/bin/sh", "-c", "echo $$HOME $${X} $$$$ %n 100%"]


def test_the_runners_own_settings_come_last(tmp_path):
    line = sandbox.command_argv("poll", agent(tmp_path), ["/bin/true"], 5)
    props = [line[i + 1] for i, word in enumerate(line) if word == "-p"]
    assert props[-4:] == ["Type=exec", "KillMode=control-group", "TimeoutStopSec=5s", "RuntimeMaxSec=5s"]


@pytest.mark.parametrize("field,value,message", [
    ("sandbox", None, "no sandbox settings"),
    ("sandbox", {"systemd": 252, "directives": [["User", "root"]]}, "User= is set by the runner itself"),
    ("sandbox", {"systemd": 252, "directives": [["ExecStartPre", "+/bin/sh"]]}, "ExecStartPre= is set by the runner"),
    ("sandbox", {"systemd": 252, "directives": [["ReadWritePaths", "/x\nUser=root"]]}, "control character"),
    ("sandbox", {"systemd": 252, "directives": [["bad key", "1"]]}, "is not a directive name"),
    ("sandbox", {"systemd": 252, "directives": "NoNewPrivileges=yes"}, "must be a list"),
    ("sandbox", {"systemd": "252", "directives": []}, "the systemd version"),
    ("sandbox", {"systemd": 252, "directives": [], "extra": 1}, "unknown key"),
    ("user", "Root Shell", "is not a user name"),
    ("user", None, "is not a user name"),
    ("state_dir", "relative/dir", "is not an absolute path"),
])
def test_bad_settings_run_nothing_and_say_why(tmp_path, monkeypatch, field, value, message):
    fake = fake_systemd.install(tmp_path / "fake", monkeypatch)
    entry = agent(tmp_path)
    if value is None and field == "sandbox":
        del entry["sandbox"]
    else:
        entry[field] = value
    with pytest.raises(sandbox.SandboxError, match="agent mail") as info:
        sandbox.run("poll", entry, ["/bin/true"], 5)
    assert message in str(info.value)
    assert fake.runs() == [] and fake.systemctl() == []


def test_bad_commands_and_timeouts_are_refused(tmp_path):
    for argv in ([], ["relative/cmd"], [None]):
        with pytest.raises(sandbox.SandboxError, match="absolute path"):
            sandbox.command_argv("poll", agent(tmp_path), argv, 5)
    for timeout in (0, -1, True, "5", 86401):
        with pytest.raises(sandbox.SandboxError, match="timeout"):
            sandbox.command_argv("poll", agent(tmp_path), ["/bin/true"], timeout)


def test_a_user_that_does_not_exist_or_not_being_root_runs_nothing(tmp_path, monkeypatch):
    fake = fake_systemd.install(tmp_path / "fake", monkeypatch)
    with pytest.raises(sandbox.SandboxError, match="its user agent-gone does not exist"):
        sandbox.run("poll", agent(tmp_path, user="agent-gone"), ["/bin/true"], 5)
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    with pytest.raises(sandbox.SandboxError, match="only root can start the transient unit"):
        sandbox.run("poll", agent(tmp_path), ["/bin/true"], 5)
    assert fake.runs() == []


# --------------------------------------------------------------------------- the outcome


# `systemctl show -p LoadState,ActiveState,Result,ExecMainCode,ExecMainStatus` of the transient unit after
# `systemd-run --wait --pipe --quiet` failed, as Debian 11 (247), 12 (252) and 13 (257) print it.
OUTCOMES = [
    ("exit 3", 3, "LoadState=loaded\nActiveState=failed\nResult=exit-code\nExecMainCode=1\nExecMainStatus=3\n",
     {"result": "exit-code", "returncode": 3, "status": 3}, "exited with status 3"),
    ("RuntimeMaxSec", 1, "LoadState=loaded\nActiveState=failed\nResult=timeout\nExecMainCode=2\nExecMainStatus=15\n",
     {"result": "timeout", "timed_out": True, "returncode": -15},
     "timed out after 5s (its unit agentops-heartbeat-poll-mail.service was stopped, with every process it started)"),
    ("setsid child ignoring SIGTERM", 1,
     "LoadState=loaded\nActiveState=failed\nResult=timeout\nExecMainCode=1\nExecMainStatus=0\n",
     {"result": "timeout", "leftover": True, "timed_out": False, "returncode": 0},
     "exited with status 0 but left processes behind that did not end on SIGTERM (killed after 5s)"),
    ("kill -9", 255, "LoadState=loaded\nActiveState=failed\nResult=signal\nExecMainCode=2\nExecMainStatus=9\n",
     {"result": "signal", "returncode": -9}, "was killed by signal 9"),
    ("no such user", 217, "LoadState=loaded\nActiveState=failed\nResult=exit-code\nExecMainCode=1\nExecMainStatus=217\n",
     {"result": "exit-code", "returncode": 217}, "could not be started by systemd in the agent's sandbox (status 217/USER)"),
    ("oom", 1, "LoadState=loaded\nActiveState=failed\nResult=oom-kill\nExecMainCode=2\nExecMainStatus=9\n",
     {"result": "oom-kill"}, "was killed for running out of memory (the agent's MemoryMax=)"),
    ("start refused", 1, "LoadState=not-found\nActiveState=inactive\nResult=success\nExecMainCode=0\nExecMainStatus=0\n",
     {"result": "not-started", "detail": "Failed to start transient service unit: Unit "
                                         "agentops-heartbeat-poll-mail.service already exists."},
     "could not be started in the transient unit agentops-heartbeat-poll-mail.service: Failed to start transient "
     "service unit: Unit agentops-heartbeat-poll-mail.service already exists."),
]


@pytest.mark.parametrize("returncode,show,expected,words", [o[1:] for o in OUTCOMES], ids=[o[0] for o in OUTCOMES])
def test_the_outcome_is_the_units_result(returncode, show, expected, words):
    props = dict(line.split("=", 1) for line in show.splitlines())
    stderr = b"Failed to start transient service unit: Unit agentops-heartbeat-poll-mail.service already exists.\n"
    outcome = sandbox.interpret(returncode, props, stderr)
    assert outcome["ok"] is False
    for key, value in expected.items():
        assert outcome[key] == value, key
    outcome.update(unit="agentops-heartbeat-poll-mail.service", stdout_overflow=False)
    assert sandbox.describe(outcome, 5) == words


def test_exit_zero_is_success_without_asking_systemctl():
    outcome = sandbox.interpret(0, {})
    assert outcome["ok"] is True and outcome["result"] == "success" and outcome["returncode"] == 0


# --------------------------------------------------------------------------- a run, with stand-ins


def test_a_run_returns_output_and_status_and_frees_the_unit_name(tmp_path, monkeypatch):
    fake = fake_systemd.install(tmp_path / "fake", monkeypatch)
    entry = agent(tmp_path)
    outcome = sandbox.run("rotate", entry, ["/bin/sh", "-c", "cat; echo out; echo err >&2; exit 3"], 5,
                          stdin_data=b"in\n")
    assert (outcome["ok"], outcome["result"], outcome["returncode"]) == (False, "exit-code", 3)
    assert outcome["stdout"] == b"in\nout\n" and outcome["stderr"] == b"err\n"
    unit = "agentops-heartbeat-rotate-mail.service"
    assert outcome["unit"] == unit and not fake.loaded(unit)
    assert fake.systemctl() == ["show --no-pager -p LoadState,ActiveState,Result,ExecMainCode,ExecMainStatus -- " + unit,
                                "show --no-pager -p LoadState,ActiveState,Result,ExecMainCode,ExecMainStatus -- " + unit,
                                "reset-failed -- " + unit]
    ok = sandbox.run("rotate", entry, ["/bin/echo", "fine"], 5)
    assert ok["ok"] is True and ok["stdout"] == b"fine\n"


def test_a_leftover_unit_is_stopped_and_reset_before_the_run(tmp_path, monkeypatch):
    fake = fake_systemd.install(tmp_path / "fake", monkeypatch)
    unit = "agentops-heartbeat-poll-mail.service"
    fake.leave(unit, "LoadState=loaded\nActiveState=active\nResult=success\nExecMainCode=0\nExecMainStatus=0\n")
    outcome = sandbox.run("poll", agent(tmp_path), ["/bin/true"], 5)
    assert outcome["ok"] is True
    calls = fake.systemctl()
    assert calls[1:4] == ["kill --signal=SIGKILL -- " + unit, "stop -- " + unit, "reset-failed -- " + unit]


def test_a_unit_that_could_not_be_started_is_reported_with_systemd_runs_message(tmp_path, monkeypatch):
    fake = fake_systemd.install(tmp_path / "fake", monkeypatch)
    fake.refuse("Access denied")
    outcome = sandbox.run("poll", agent(tmp_path), ["/bin/true"], 5)
    assert outcome["ok"] is False and outcome["result"] == "not-started"
    assert sandbox.describe(outcome, 5) == ("could not be started in the transient unit "
                                            "agentops-heartbeat-poll-mail.service: Failed to start transient service "
                                            "unit: Access denied")


def test_a_missing_systemd_run_is_a_clear_error(tmp_path, monkeypatch):
    fake_systemd.install(tmp_path / "fake", monkeypatch)
    monkeypatch.setattr(sandbox, "SYSTEMD_RUN", str(tmp_path / "no-systemd-run"))
    with pytest.raises(sandbox.SandboxError, match="agent mail: cannot run .*no-systemd-run"):
        sandbox.run("poll", agent(tmp_path), ["/bin/true"], 5)


def test_runner_deadline_stops_the_unit(tmp_path, monkeypatch):
    """systemd-run itself hangs (here: the stand-in never returns): the runner kills it and the unit."""
    fake = fake_systemd.install(tmp_path / "fake", monkeypatch)
    hang = tmp_path / "hanging-systemd-run"
    hang.write_text("#!/bin/sh\nexec sleep 60\n")
    hang.chmod(0o755)
    monkeypatch.setattr(sandbox, "SYSTEMD_RUN", str(hang))
    monkeypatch.setattr(sandbox, "STOP_TIMEOUT", 0)
    monkeypatch.setattr(sandbox, "SLACK", 1)
    outcome = sandbox.run("poll", agent(tmp_path), ["/bin/true"], 1)
    assert outcome["timed_out"] is True and outcome["ok"] is False and outcome["elapsed"] < 5
    unit = "agentops-heartbeat-poll-mail.service"
    assert "kill --signal=SIGKILL -- " + unit in fake.systemctl() and "stop -- " + unit in fake.systemctl()
    assert sandbox.describe(outcome, 1).startswith("timed out after 1s")


def test_the_environment_is_fixed(tmp_path, monkeypatch):
    fake_systemd.install(tmp_path / "fake", monkeypatch)
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    monkeypatch.setenv("SECRET_OF_THE_CALLER", "x")
    outcome = sandbox.run("poll", agent(tmp_path), ["/usr/bin/env"], 5, extra_env={"AGENTOPS_EXTRA": "1"})
    env = dict(line.split("=", 1) for line in outcome["stdout"].decode().splitlines())
    assert sorted(env) == ["AGENTOPS_AGENT", "AGENTOPS_EXTRA", "HOME", "LANG", "LOGNAME", "PATH", "USER"]
    assert env["HOME"] == str(tmp_path / "mail") and env["PATH"] == sandbox.agentops_auth.SAFE_PATH
