"""Unit tests of ``agentops heartbeat`` (alerts reach a real HTTP server on 127.0.0.1).

Unit state comes from a stand-in ``systemctl`` executable that prints the properties the
test wrote (the controller has no systemd as PID 1); the Molecule scenario ``alerts`` runs
the same code against real units.
"""
import argparse
import datetime
import json
import os
import pwd
import time

import pytest

from agentops_host import heartbeat

import fake_systemd
from test_alert_helpers import make_args, recorder, webhook_channel, write_config  # noqa: F401  (fixture)

FAKE_SYSTEMCTL = """#!/bin/sh
# test stand-in: `systemctl show ... -- UNIT...` prints DIR/UNIT.props of every unit, blank line apart
while [ "$1" != "--" ]; do shift; done; shift
first=1
for unit; do
  [ $first = 1 ] || echo
  first=0
  cat "%s/$unit.props"
done
"""


@pytest.fixture
def units(tmp_path, monkeypatch):
    directory = tmp_path / "units"
    directory.mkdir()
    script = tmp_path / "systemctl"
    script.write_text(FAKE_SYSTEMCTL % directory)
    script.chmod(0o755)
    journal = tmp_path / "journalctl"
    journal.write_text("#!/bin/sh\nexit 0\n")
    journal.chmod(0o755)
    monkeypatch.setattr(heartbeat.systemd, "SYSTEMCTL", str(script))
    monkeypatch.setattr(heartbeat.systemd, "JOURNALCTL", str(journal))

    def set_unit(unit, active="active", sub="running", restarts=0, result="success", started_ago=600):
        started = int((time.monotonic() - started_ago) * 1e6) if active == "active" else 0
        (directory / (unit + ".props")).write_text(
            "Id=%s\nActiveState=%s\nSubState=%s\nNRestarts=%d\nResult=%s\nRestartUSec=1s\n"
            "ActiveEnterTimestampMonotonic=%d\nInactiveEnterTimestamp=\n" % (unit, active, sub, restarts, result, started))
    return set_unit


def add_agent(args, name, **heartbeat_fields):
    hb = {"interval": "10s", "max_silence": "60s", "progress": "file", "file": "heartbeat",
          "command": None, "active_hours": None, "workstate_max_age": None}
    hb.update(heartbeat_fields)
    state_dir = os.path.join(args.state_dir, name)
    os.makedirs(state_dir, exist_ok=True)
    agent = {"name": name, "unit": "agentops-%s.service" % name, "user": pwd.getpwuid(os.getuid()).pw_name,
             "state_dir": state_dir, "enabled": True, "state": "present", "heartbeat": hb,
             "auth_checks": [], "token_rotation": [], "credentials": [],
             "sandbox": fake_systemd.sandbox_entry(state_dir)}
    with open(os.path.join(args.config_dir, "agents.d", name + ".json"), "w", encoding="utf-8") as handle:
        json.dump(agent, handle)
    return agent


def run_heartbeat(args, **extra):
    ns = argparse.Namespace(**vars(args))
    ns.agent = extra.get("agent")
    ns.tick = extra.get("tick", 5.0)
    ns.force = extra.get("force", False)
    ns.disk_threshold = extra.get("disk_threshold", 100.0)
    ns.disk_path = extra.get("disk_path", [args.state_dir])
    return heartbeat.run(ns)


def touch(path, ago):
    with open(path, "a", encoding="utf-8"):
        pass
    stamp = time.time() - ago
    os.utime(path, (stamp, stamp))


@pytest.mark.parametrize("value, inside, outside", [
    ("08:00-20:00", (12, 0), (21, 0)),
    ("22:00-06:00", (23, 30), (12, 0)),
    ("00:00-24:00", (3, 0), None),
])
def test_active_hours(value, inside, outside):
    day = datetime.datetime(2026, 1, 5)
    assert heartbeat.in_active_hours(value, day.replace(hour=inside[0], minute=inside[1]).timestamp())
    if outside:
        assert not heartbeat.in_active_hours(value, day.replace(hour=outside[0], minute=outside[1]).timestamp())
    assert heartbeat.in_active_hours(None)


@pytest.mark.parametrize("value", ["8-20", "08:00", "25:00-26:00", "08:60-09:00", "aa:bb-cc:dd"])
def test_active_hours_malformed(value):
    with pytest.raises(ValueError, match="active_hours"):
        heartbeat.parse_active_hours(value)


def test_hung_agent_alerts_once_then_resolves_once(tmp_path, recorder, units):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = add_agent(args, "hung", max_silence="30s")
    units(agent["unit"], started_ago=600)
    beat = os.path.join(agent["state_dir"], "heartbeat")
    touch(beat, ago=120)
    assert run_heartbeat(args) == 0
    assert run_heartbeat(args) == 0                  # still silent: de-duplicated
    bodies = recorder.bodies()
    assert [(b["key"], b["severity"]) for b in bodies] == [("hung/silent", "critical")]
    assert "no progress" in bodies[0]["title"]
    touch(beat, ago=0)                               # progress again
    assert run_heartbeat(args) == 0
    assert run_heartbeat(args) == 0
    assert [(b["key"], b["severity"]) for b in recorder.bodies()][1:] == [("hung/silent", "resolved")]


def test_silence_outside_active_hours_is_not_alerted(tmp_path, recorder, units):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    hour = datetime.datetime.now().hour
    closed = "%02d:00-%02d:00" % ((hour + 2) % 24, (hour + 3) % 24)
    agent = add_agent(args, "night", max_silence="30s", active_hours=closed)
    units(agent["unit"], started_ago=600)
    touch(os.path.join(agent["state_dir"], "heartbeat"), ago=3600)
    assert run_heartbeat(args) == 0
    assert recorder.requests == []


def test_crash_loop_alerts_on_rising_nrestarts(tmp_path, recorder, units):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = add_agent(args, "loop", max_silence="1h")
    units(agent["unit"], restarts=0)
    assert run_heartbeat(args) == 0                  # baseline
    units(agent["unit"], active="activating", sub="auto-restart", restarts=3)
    assert run_heartbeat(args) == 0
    bodies = recorder.bodies()
    assert [(b["key"], b["severity"]) for b in bodies] == [("loop/crashloop", "critical")]
    assert "3 restart(s)" in bodies[0]["title"]
    # running again without restarts for longer than the stable window -> one resolved
    units(agent["unit"], restarts=3)
    path = heartbeat.state_path(args, "loop")
    saved = json.load(open(path))
    saved["last_restart_seen"] = time.time() - 120
    json.dump(saved, open(path, "w"))
    assert run_heartbeat(args) == 0
    assert run_heartbeat(args) == 0
    assert [(b["key"], b["severity"]) for b in recorder.bodies()][1:] == [("loop/crashloop", "resolved")]


def test_failed_and_stopped_agents_alert_down(tmp_path, recorder, units):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = add_agent(args, "gone", max_silence="1h")
    units(agent["unit"], active="inactive", sub="dead")
    assert run_heartbeat(args) == 0
    units(agent["unit"], active="failed", sub="failed", result="start-limit-hit")
    assert run_heartbeat(args) == 0                  # escalation warning -> critical
    units(agent["unit"])
    assert run_heartbeat(args) == 0
    assert [(b["key"], b["severity"]) for b in recorder.bodies()] == [
        ("gone/down", "warning"), ("gone/down", "critical"), ("gone/down", "resolved")]


def test_command_progress_honours_interval(tmp_path, recorder, units, monkeypatch):
    fake = fake_systemd.install(tmp_path / "fake-systemd", monkeypatch)
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    counter = tmp_path / "polls"
    poll = tmp_path / "poll.sh"
    poll.write_text("#!/bin/sh\necho x >> %s\n" % counter)
    poll.chmod(0o755)
    agent = add_agent(args, "cmd", progress="command", command=str(poll), interval="1h")
    units(agent["unit"], started_ago=10)
    assert run_heartbeat(args) == 0
    assert run_heartbeat(args) == 0                  # not due yet
    assert counter.read_text().count("x") == 1
    assert run_heartbeat(args, force=True) == 0
    assert counter.read_text().count("x") == 2
    assert recorder.requests == []
    # each poll in the agent's transient unit, with its sandbox
    assert [run[run.index("--") + 1:] for run in fake.runs()] == [[str(poll)], [str(poll)]]
    assert all("--unit=agentops-heartbeat-poll-cmd.service" in run and "NoNewPrivileges=yes" in run
               for run in fake.runs())


def test_disk_threshold_alert(tmp_path, recorder, units):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    assert run_heartbeat(args, disk_threshold=0.0) == 0
    assert run_heartbeat(args, disk_threshold=100.0) == 0
    assert [(b["key"].split(":")[0], b["severity"]) for b in recorder.bodies()] == [
        ("host/disk", "warning"), ("host/disk", "resolved")]


def test_removed_agent_alerts_are_resolved(tmp_path, recorder, units):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = add_agent(args, "old", max_silence="1h")
    units(agent["unit"], active="failed", sub="failed")
    assert run_heartbeat(args) == 0
    os.unlink(os.path.join(args.config_dir, "agents.d", "old.json"))
    assert run_heartbeat(args) == 0
    assert [b["severity"] for b in recorder.bodies()] == ["critical", "resolved"]


# ---------------------------------------------------------------- files the agent can replace
#
# The progress file and WORKSTATE.md live in the agent's directory (owned by the agent, here nobody): a
# symlink (even to a fresh file), a symlinked subdirectory or a FIFO there is no progress signal, is logged
# once per change and is never followed or opened.

import signal  # noqa: E402


@pytest.fixture
def deadline():
    def expired(signum, frame):
        raise TimeoutError("blocked for more than 20 s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, 20)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def hostile_agent(args, name, **fields):
    agent = add_agent(args, name, **fields)
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(agent["state_dir"], nobody.pw_uid, nobody.pw_gid)
        os.chmod(agent["state_dir"], 0o700)
    return agent


def log_lines(capsys, name):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("agentops: heartbeat %s:" % name)]


def test_symlinked_progress_file_is_no_progress_signal(tmp_path, recorder, units, capsys):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = hostile_agent(args, "sym", max_silence="30s")
    units(agent["unit"], started_ago=600)
    fresh = tmp_path / "outside-fresh"
    touch(str(fresh), ago=0)
    beat = os.path.join(agent["state_dir"], "heartbeat")
    os.symlink(str(fresh), beat)
    assert run_heartbeat(args) == 0
    assert run_heartbeat(args) == 0
    assert [(b["key"], b["severity"]) for b in recorder.bodies()] == [("sym/silent", "critical")]
    assert log_lines(capsys, "sym") == [
        "agentops: heartbeat sym: %s is a symlink (not followed); counted as no progress signal" % beat]
    assert heartbeat.load_state(args, "sym")["unsafe_progress_file"].endswith("is a symlink (not followed)")
    os.unlink(beat)
    touch(beat, ago=0)                                   # a real progress file again
    assert run_heartbeat(args) == 0
    assert [(b["key"], b["severity"]) for b in recorder.bodies()][1:] == [("sym/silent", "resolved")]
    assert "unsafe_progress_file" not in heartbeat.load_state(args, "sym")
    assert log_lines(capsys, "sym") == []


def test_progress_file_below_a_symlinked_directory(tmp_path, recorder, units, capsys):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    real = hostile_agent(args, "real", max_silence="30s", file="run/beat")
    units(real["unit"], started_ago=600)
    os.mkdir(os.path.join(real["state_dir"], "run"))
    touch(os.path.join(real["state_dir"], "run", "beat"), ago=0)
    linked = hostile_agent(args, "linked", max_silence="30s", file="run/beat")
    units(linked["unit"], started_ago=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    touch(str(elsewhere / "beat"), ago=0)
    os.symlink(str(elsewhere), os.path.join(linked["state_dir"], "run"))
    assert run_heartbeat(args) == 0
    assert [(b["key"], b["severity"]) for b in recorder.bodies()] == [("linked/silent", "critical")]
    assert log_lines(capsys, "linked") == [
        "agentops: heartbeat linked: %s is a symlink (not followed): in a directory that a user other than root "
        "can write; counted as no progress signal" % os.path.join(linked["state_dir"], "run")]


def test_fifo_progress_file_and_workstate_never_block(tmp_path, recorder, units, capsys, deadline):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = hostile_agent(args, "fifo", max_silence="30s", workstate_max_age="60s")
    units(agent["unit"], started_ago=600)
    os.mkfifo(os.path.join(agent["state_dir"], "heartbeat"))
    os.mkfifo(os.path.join(agent["state_dir"], "WORKSTATE.md"))
    other = add_agent(args, "other", max_silence="30s")
    units(other["unit"], started_ago=600)
    touch(os.path.join(other["state_dir"], "heartbeat"), ago=0)
    assert run_heartbeat(args) == 0
    keys = sorted((b["key"], b["severity"]) for b in recorder.bodies())
    assert keys == [("fifo/silent", "critical"), ("fifo/workstate", "warning")]
    assert sorted(log_lines(capsys, "fifo")) == sorted([
        "agentops: heartbeat fifo: %s/heartbeat is a FIFO (not read); counted as no progress signal"
        % agent["state_dir"],
        "agentops: heartbeat fifo: %s/WORKSTATE.md is a FIFO (not read); counted as no checkpoint"
        % agent["state_dir"]])


def test_symlinked_workstate_is_not_a_checkpoint(tmp_path, recorder, units, capsys):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = hostile_agent(args, "ws", max_silence="1h", workstate_max_age="60s")
    units(agent["unit"], started_ago=600)
    fresh = tmp_path / "fresh-elsewhere"
    touch(str(fresh), ago=0)
    os.symlink(str(fresh), os.path.join(agent["state_dir"], "WORKSTATE.md"))
    assert run_heartbeat(args) == 0
    assert [(b["key"], b["severity"]) for b in recorder.bodies()] == [("ws/workstate", "warning")]
    assert len(log_lines(capsys, "ws")) == 1
    os.unlink(os.path.join(agent["state_dir"], "WORKSTATE.md"))
    touch(os.path.join(agent["state_dir"], "WORKSTATE.md"), ago=0)
    assert run_heartbeat(args, force=True) == 0
    assert [(b["key"], b["severity"]) for b in recorder.bodies()][1:] == [("ws/workstate", "resolved")]


def test_poll_command_is_bounded_in_output_and_time(tmp_path, monkeypatch):
    """progress: command runs through the sandbox runner: a flood or an escaped child cannot hold the heartbeat.

    (The sandbox and the unit's end of escaped children are proven on real systemd by the hostile scenario.)
    """
    import time as _time
    fake = fake_systemd.install(tmp_path / "fake-systemd", monkeypatch)
    state_dir = str(tmp_path / "poller")
    os.makedirs(state_dir)
    agent = {"name": "poller", "user": pwd.getpwuid(os.getuid()).pw_name, "state_dir": state_dir,
             "sandbox": fake_systemd.sandbox_entry(state_dir)}
    started = _time.monotonic()
    assert heartbeat.run_poll_command(agent, "/usr/bin/yes flood", 5) is False        # more than 64 KiB: stopped
    assert _time.monotonic() - started < 4
    started = _time.monotonic()
    # exits at once but leaves a setsid child holding stdout for 30 s
    assert heartbeat.run_poll_command(agent, "/bin/sh -c 'setsid sleep 30 & exit 0'", 5) is True
    assert _time.monotonic() - started < 4
    started = _time.monotonic()
    assert heartbeat.run_poll_command(agent, "/bin/sleep 30", 1) is False
    assert _time.monotonic() - started < 3
    assert "RuntimeMaxSec=1s" in fake.runs()[-1]                        # the unit's own deadline
    assert not fake.loaded("agentops-heartbeat-poll-poller.service")   # the failed unit was reset
