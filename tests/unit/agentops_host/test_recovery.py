"""Unit tests of recovery (``recovery`` of an agent): restart of a hung agent, retry of a unit latched at its
start limit, the max_restarts-per-window budget, giving up, re-arming, ``agentops recover --reset`` and a
corrupt state file. Alerts reach a real HTTP server on 127.0.0.1.

Unit state comes from a stand-in ``systemctl`` executable (the controller has no systemd as PID 1): ``show``
prints the properties the test wrote, every other call is appended to a calls file the tests read. The
Molecule scenario ``recovery`` runs the same code against real units.
"""
import argparse
import json
import os
import pwd
import time

import pytest

from agentops_host import heartbeat
from agentops_host import recovery
from agentops_host import state
from agentops_host import status as hoststatus

from test_alert_helpers import make_args, recorder, webhook_channel, write_config  # noqa: F401  (fixture)

FAKE_SYSTEMCTL = """#!/bin/sh
# test stand-in: `systemctl show ... -- UNIT...` prints DIR/UNIT.props of every unit; any other call is logged
if [ "$1" != "show" ]; then
  echo "$*" >> "%(dir)s/calls"
  exit "$(cat "%(dir)s/exit" 2>/dev/null || echo 0)"
fi
while [ "$1" != "--" ]; do shift; done; shift
first=1
for unit; do
  [ $first = 1 ] || echo
  first=0
  cat "%(dir)s/$unit.props"
done
"""


class Units:
    def __init__(self, directory):
        self.directory = directory

    def set(self, unit, active="active", sub="running", result="success", started_ago=600):
        started = int((time.monotonic() - started_ago) * 1e6) if active == "active" else 0
        with open(os.path.join(self.directory, unit + ".props"), "w", encoding="utf-8") as handle:
            handle.write("Id=%s\nActiveState=%s\nSubState=%s\nNRestarts=0\nResult=%s\nRestartUSec=1s\n"
                         "ActiveEnterTimestampMonotonic=%d\nInactiveEnterTimestamp=\n" % (unit, active, sub, result,
                                                                                          started))

    def calls(self):
        path = os.path.join(self.directory, "calls")
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as handle:
            return [line.rstrip("\n") for line in handle]

    def fail_with(self, code):
        with open(os.path.join(self.directory, "exit"), "w", encoding="utf-8") as handle:
            handle.write("%d\n" % code)


@pytest.fixture
def units(tmp_path, monkeypatch):
    directory = tmp_path / "units"
    directory.mkdir()
    script = tmp_path / "systemctl"
    script.write_text(FAKE_SYSTEMCTL % {"dir": directory})
    script.chmod(0o755)
    journal = tmp_path / "journalctl"
    journal.write_text("#!/bin/sh\nexit 0\n")
    journal.chmod(0o755)
    monkeypatch.setattr(heartbeat.systemd, "SYSTEMCTL", str(script))
    monkeypatch.setattr(heartbeat.systemd, "JOURNALCTL", str(journal))
    return Units(str(directory))


def add_agent(args, name, recovery_settings=None, max_silence="30s"):
    hb = {"interval": "10s", "max_silence": max_silence, "progress": "file", "file": "heartbeat",
          "command": None, "active_hours": None, "workstate_max_age": None}
    state_dir = os.path.join(args.state_dir, name)
    os.makedirs(state_dir, exist_ok=True)
    agent = {"name": name, "unit": "agentops-%s.service" % name, "user": pwd.getpwuid(os.getuid()).pw_name,
             "state_dir": state_dir, "enabled": True, "state": "present", "heartbeat": hb,
             "auth_checks": [], "token_rotation": [], "credentials": [], "recovery": recovery_settings}
    with open(os.path.join(args.config_dir, "agents.d", name + ".json"), "w", encoding="utf-8") as handle:
        json.dump(agent, handle)
    return agent


def run_heartbeat(args):
    ns = argparse.Namespace(**vars(args))
    ns.agent, ns.tick, ns.force, ns.disk_threshold, ns.disk_path = None, 5.0, False, 100.0, [args.state_dir]
    return heartbeat.run(ns)


def touch(path, ago):
    with open(path, "a", encoding="utf-8"):
        pass
    stamp = time.time() - ago
    os.utime(path, (stamp, stamp))


class Alerts:
    """The heartbeat's emit/resolve calls of one recovery.step, collected."""

    def __init__(self):
        self.items = []

    def emit(self, severity, key, title, body="", agent=None, unit=None):
        self.items.append((severity, key, title))

    def resolve(self, key, title="", body="", agent=None, unit=None):
        self.items.append(("resolved", key, title))


RESTART = "restart --no-block -- agentops-%s.service"
RESTART_SETTINGS = {"on_hang": "restart", "max_restarts": 2, "window": 3600, "start_limit_retry_after": 20}


def test_a_hung_agent_is_restarted_once_with_one_alert_and_its_workstate_untouched(tmp_path, recorder, units):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = add_agent(args, "hung", RESTART_SETTINGS)
    units.set(agent["unit"], started_ago=600)
    touch(os.path.join(agent["state_dir"], "heartbeat"), ago=120)
    workstate = os.path.join(agent["state_dir"], "WORKSTATE.md")
    with open(workstate, "w", encoding="utf-8") as handle:
        handle.write("# Work state\n- step 3 of 7\n")
    before = os.stat(workstate)
    assert run_heartbeat(args) == 0
    assert units.calls() == [RESTART % "hung"]
    sent = [(b["key"], b["severity"]) for b in recorder.bodies()]
    assert sent == [("hung/silent", "critical"), ("hung/recovery", "info")]
    assert "restarted agentops-hung.service" in recorder.bodies()[1]["title"]
    assert "1 of 2" in recorder.bodies()[1]["title"]
    # the restart is under way (the fake unit still looks hung): no second restart within max_silence
    assert run_heartbeat(args) == 0
    assert units.calls() == [RESTART % "hung"]
    assert [(b["key"], b["severity"]) for b in recorder.bodies()] == sent
    after = os.stat(workstate)
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (before.st_mtime_ns, before.st_size, before.st_ino)
    with open(workstate, encoding="utf-8") as handle:
        assert handle.read() == "# Work state\n- step 3 of 7\n"
    # what the state file and `agentops status --json` show
    recorded = json.loads(open(recovery.state_path(args, "hung"), encoding="utf-8").read())
    assert len(recorded["actions"]) == 1 and recorded["last_action"]["kind"] == "restart"
    assert oct(os.stat(recovery.state_path(args, "hung")).st_mode & 0o777) == "0o600"
    assert oct(os.stat(recovery.recovery_dir(args)).st_mode & 0o777) == "0o700"
    view = hoststatus.agent_status(args, dict(agent, recovery=agent["recovery"]))["recovery"]
    assert view["restarts_used"] == 1 and view["max_restarts"] == 2 and not view["giving_up"]
    assert view["last_action"]["kind"] == "restart"
    line = recovery.status_lines([{"agent": "hung", "recovery": view}])[0]
    assert "1/2 restarts used" in line and "last: restart" in line


@pytest.mark.parametrize("settings", [None, {"on_hang": "alert"}])
def test_without_on_hang_restart_a_hang_only_alerts(tmp_path, recorder, units, settings):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = add_agent(args, "quiet", settings)
    units.set(agent["unit"], started_ago=600)
    touch(os.path.join(agent["state_dir"], "heartbeat"), ago=120)
    assert run_heartbeat(args) == 0
    assert units.calls() == []
    assert [(b["key"], b["severity"]) for b in recorder.bodies()] == [("quiet/silent", "critical")]


def test_budget_then_exactly_one_giving_up_then_window_rearms(tmp_path, units):
    args = make_args(tmp_path)
    agent = add_agent(args, "loop", RESTART_SETTINGS)
    props = {"ActiveState": "active", "SubState": "running", "Result": "success"}
    alerts = Alerts()
    t0 = time.time() - 10000

    def hang(at):
        return recovery.step(args, agent, props, True, at, alerts.emit, alerts.resolve, max_silence=30.0).action

    assert hang(t0) == "restart"
    assert hang(t0 + 10) is None                          # within max_silence of the restart: under way
    assert hang(t0 + 60) == "restart"
    assert units.calls() == [RESTART % "loop"] * 2
    assert hang(t0 + 120) == "giving-up"                  # third hang: no restart, one critical alert
    assert hang(t0 + 180) is None and hang(t0 + 240) is None
    assert units.calls() == [RESTART % "loop"] * 2
    assert [a[:2] for a in alerts.items] == [("info", "loop/recovery")] * 2 + [("critical", "loop/giving-up")]
    assert "giving up" in alerts.items[-1][2] and "agentops recover --reset loop" in alerts.items[-1][2]
    view = recovery.status(args, agent, now=t0 + 240)
    assert view["giving_up"] and view["restarts_used"] == 2
    # not hung for a while: still giving up until the first restart leaves the window
    assert recovery.step(args, agent, props, False, t0 + 3599, alerts.emit, alerts.resolve).action is None
    assert recovery.status(args, agent, now=t0 + 3599)["giving_up"]
    # the first restart left the window: re-armed (giving-up resolved), the next hang is restarted again
    assert hang(t0 + 3601) == "restart"
    assert alerts.items[3][:2] == ("resolved", "loop/giving-up")
    assert alerts.items[4][:2] == ("info", "loop/recovery")
    assert units.calls() == [RESTART % "loop"] * 3


def test_max_restarts_zero_gives_up_at_once(tmp_path, units):
    args = make_args(tmp_path)
    agent = add_agent(args, "zero", dict(RESTART_SETTINGS, max_restarts=0))
    alerts = Alerts()
    step = recovery.step(args, agent, {"ActiveState": "active"}, True, time.time(), alerts.emit, alerts.resolve)
    assert step.action == "giving-up" and units.calls() == []
    assert [a[:2] for a in alerts.items] == [("critical", "zero/giving-up")]


def test_a_unit_latched_at_the_start_limit_is_retried_after_the_cool_down(tmp_path, units):
    args = make_args(tmp_path)
    agent = add_agent(args, "latched", RESTART_SETTINGS)
    latched = {"ActiveState": "failed", "SubState": "failed", "Result": "start-limit-hit"}
    alerts = Alerts()
    t0 = time.time() - 1000
    assert recovery.step(args, agent, latched, False, t0, alerts.emit, alerts.resolve).action is None
    assert recovery.step(args, agent, latched, False, t0 + 19, alerts.emit, alerts.resolve).action is None
    assert units.calls() == []
    assert recovery.step(args, agent, latched, False, t0 + 20, alerts.emit, alerts.resolve).action == \
        "start-limit-retry"
    assert units.calls() == ["reset-failed -- agentops-latched.service", "start --no-block -- agentops-latched.service"]
    assert alerts.items[0][:2] == ("info", "latched/recovery") and "reset and started" in alerts.items[0][2]
    assert recovery.status(args, agent, now=t0 + 21)["restarts_used"] == 1
    # latched again: the cool-down counts from the new latch
    assert recovery.step(args, agent, latched, False, t0 + 30, alerts.emit, alerts.resolve).action is None
    assert recovery.step(args, agent, latched, False, t0 + 50, alerts.emit, alerts.resolve).action == \
        "start-limit-retry"
    # a failed unit that was never restarted is left alone
    assert recovery.step(args, agent, dict(latched, Result="exit-code"), False, t0 + 500, alerts.emit,
                         alerts.resolve).action is None


def test_restart_gave_up_is_latched_too():
    """systemd 252 and 257 keep Result=exit-code when Restart= runs into the start limit."""
    assert recovery.is_latched({"ActiveState": "failed", "Result": "exit-code", "NRestarts": "3"})
    assert recovery.is_latched({"ActiveState": "failed", "Result": "start-limit-hit", "NRestarts": "0"})
    assert not recovery.is_latched({"ActiveState": "failed", "Result": "exit-code", "NRestarts": "0"})
    assert not recovery.is_latched({"ActiveState": "activating", "Result": "exit-code", "NRestarts": "3"})
    assert not recovery.is_latched({"ActiveState": "active", "Result": "start-limit-hit", "NRestarts": "3"})


def test_the_cool_down_counts_from_when_systemd_says_the_unit_failed(tmp_path, units):
    args = make_args(tmp_path)
    agent = add_agent(args, "late", RESTART_SETTINGS)
    failed_ago = 18.0                      # the heartbeat sees the latch late (a slow tick): 18 s after it happened
    latched = {"ActiveState": "failed", "Result": "exit-code", "NRestarts": "3",
               "InactiveEnterTimestampMonotonic": str(int((time.monotonic() - failed_ago) * 1e6))}
    now = time.time()
    assert recovery.step(args, agent, latched, False, now, Alerts().emit, Alerts().resolve).action is None
    assert recovery.step(args, agent, latched, False, now + 2.5, Alerts().emit, Alerts().resolve).action == \
        "start-limit-retry"


def test_infinity_never_retries_a_latched_unit(tmp_path, units):
    args = make_args(tmp_path)
    agent = add_agent(args, "never", dict(RESTART_SETTINGS, start_limit_retry_after="infinity"))
    latched = {"ActiveState": "failed", "SubState": "failed", "Result": "start-limit-hit"}
    t0 = time.time() - 100000
    for offset in (0, 60, 86400):
        assert recovery.step(args, agent, latched, False, t0 + offset, Alerts().emit, Alerts().resolve).action is None
    assert units.calls() == []


def test_a_failing_systemctl_is_counted_and_alerted_as_a_warning(tmp_path, units):
    args = make_args(tmp_path)
    agent = add_agent(args, "stuck", RESTART_SETTINGS)
    units.fail_with(1)
    alerts = Alerts()
    step = recovery.step(args, agent, {"ActiveState": "active"}, True, time.time(), alerts.emit, alerts.resolve)
    assert step.action == "restart" and "failed" in step.message and "exited 1" in step.message
    assert alerts.items[0][:2] == ("warning", "stuck/recovery")
    assert recovery.status(args, agent)["restarts_used"] == 1
    assert recovery.status(args, agent)["last_action"]["ok"] is False


def test_reset_clears_the_budget_and_resolves_giving_up(tmp_path, recorder, units):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = add_agent(args, "again", dict(RESTART_SETTINGS, max_restarts=1))
    t0 = time.time() - 100

    def hang(at):
        return recovery.step(args, agent, {"ActiveState": "active"}, True, at,
                             lambda *a, **k: recovery.alert.emit(args, *a, **k),
                             lambda *a, **k: recovery.alert.resolve(args, *a, **k), max_silence=30.0).action

    assert hang(t0) == "restart" and hang(t0 + 40) == "giving-up"
    assert recovery.status(args, agent)["giving_up"]
    text = recovery.reset(args, "again")
    assert "reset by an operator" in text and "was giving up" in text
    view = recovery.status(args, agent)
    assert not view["giving_up"] and view["restarts_used"] == 0 and view["last_action"]["kind"] == "reset"
    assert [(b["key"], b["severity"]) for b in recorder.bodies()] == [
        ("again/recovery", "info"), ("again/giving-up", "critical"), ("again/giving-up", "resolved")]
    assert hang(t0 + 80) == "restart"                    # re-armed: the next hang is restarted again
    assert units.calls() == [RESTART % "again"] * 2


def test_recover_reset_names_an_existing_agent_and_needs_root(tmp_path, units, capsys):
    from agentops_host import cli
    args = make_args(tmp_path)
    add_agent(args, "known", RESTART_SETTINGS)
    base = ["--config-dir", args.config_dir, "--state-dir", args.state_dir, "--spool-dir", args.spool_dir]
    assert cli.main(base + ["recover", "--reset", "ghost"]) == 1
    assert "unknown agent 'ghost'" in capsys.readouterr().err
    assert cli.main(base + ["recover", "--reset", "../known"]) == 1
    assert "not a valid agent name" in capsys.readouterr().err
    assert cli.main(base + ["recover", "--reset", "known"]) == 0
    assert "recovery known: reset by an operator" in capsys.readouterr().out
    assert cli.main(base + ["recover"]) == 0
    assert "recovery known: on_hang restart, 0/2 restarts used in 3600s" in capsys.readouterr().out
    if os.geteuid() == 0:                               # as another user: refused before anything is read
        os.seteuid(65534)
        try:
            with pytest.raises(PermissionError, match="must run as root"):
                recovery.reset(args, "known")
        finally:
            os.seteuid(0)


@pytest.mark.parametrize("content", [
    b"{not json", b"\xff\xfe", b"[]", b'"text"', b"{" * 100000 + b"}" * 100000,
    json.dumps({"actions": "many", "giving_up": "yes", "last_action": {"kind": "reboot", "time": 1}}).encode(),
    json.dumps({"actions": [1e300, -5, "x", None, float("1e30")], "history": [1, {"kind": "restart"}]}).encode(),
    b" " * (state.MAX_JSON_BYTES + 10),
])
def test_a_corrupt_state_file_counts_as_a_fresh_budget(tmp_path, units, content):
    args = make_args(tmp_path)
    agent = add_agent(args, "messy", RESTART_SETTINGS)
    os.makedirs(recovery.recovery_dir(args), exist_ok=True)
    with open(recovery.state_path(args, "messy"), "wb") as handle:
        handle.write(content)
    now = time.time()
    data = recovery.load(args, "messy", now)
    assert data["giving_up"] is None and data["last_action"] is None
    assert all(isinstance(t, float) and 0 <= t <= now for t in data["actions"])
    step = recovery.step(args, agent, {"ActiveState": "active"}, True, now, Alerts().emit, Alerts().resolve)
    assert step.action in ("restart", "giving-up")
    saved = json.loads(open(recovery.state_path(args, "messy"), encoding="utf-8").read())
    assert saved["last_action"]["kind"] == step.action and saved["version"] == recovery.STATE_VERSION


def test_a_fifo_as_state_file_does_not_hang_the_heartbeat(tmp_path, units):
    args = make_args(tmp_path)
    agent = add_agent(args, "odd", RESTART_SETTINGS)
    os.makedirs(recovery.recovery_dir(args), exist_ok=True)
    os.mkfifo(recovery.state_path(args, "odd"))
    started = time.monotonic()
    assert recovery.load(args, "odd")["actions"] == []
    step = recovery.step(args, agent, {"ActiveState": "active"}, True, time.time(), Alerts().emit, Alerts().resolve)
    assert time.monotonic() - started < 5
    assert step.action == "restart"
    assert os.path.isfile(recovery.state_path(args, "odd"))      # replaced by a regular file


def test_future_times_are_clamped_so_a_forged_file_cannot_hold_the_breaker_open_forever(tmp_path, units):
    args = make_args(tmp_path)
    now = time.time()
    data = recovery.sanitise({"actions": [now + 1e9] * 3, "giving_up": now + 1e9}, now)
    assert data["actions"] == [now] * 3 and data["giving_up"] == now


def test_a_broken_recovery_setting_on_the_host_means_alert_only(tmp_path, units):
    agent = {"name": "odd", "recovery": {"on_hang": "reboot"}}
    assert recovery.settings_of(agent) is None
    assert recovery.settings_of({"name": "odd"}) is None
    assert recovery.settings_of({"name": "ok", "recovery": {"on_hang": "restart"}}) == {
        "on_hang": "restart", "max_restarts": 3, "window": 3600.0, "start_limit_retry_after": 900.0}
