"""The heartbeat's journal progress (``agentops_host.journal`` through ``agentops heartbeat``): one agent's
volume never hides another's progress, an unknown read is never "silent" and never restarts an agent, an
unknown that lasts raises ``<agent>/progress-unknown``, and alerts quote only lines attributed by trusted
fields. Units come from the stand-in systemctl of test_recovery (calls other than ``show`` are logged),
the journal from the stand-in journalctl of fake_journal.py; alerts reach a real HTTP server on 127.0.0.1.
"""
import json
import os
import time

import pytest

from agentops_host import alert
from agentops_host import heartbeat
from agentops_host import journal
from agentops_host import recovery
from agentops_host import status as hoststatus

from fake_journal import FakeJournal
from test_alert_helpers import make_args, recorder, webhook_channel, write_config  # noqa: F401  (fixture)
from test_recovery import add_agent, run_heartbeat, units  # noqa: F401  (fixture)

RESTART = {"on_hang": "restart", "max_restarts": 3, "window": "1h"}


@pytest.fixture
def fake(tmp_path, monkeypatch, units):  # noqa: F811  (after the units fixture, which sets its own journalctl)
    journal_ = FakeJournal(tmp_path / "journal")
    monkeypatch.setattr(heartbeat.systemd, "JOURNALCTL", journal_.path)
    return journal_


def journal_agent(args, name, max_silence="30s", recovery_settings=None):
    agent = add_agent(args, name, recovery_settings=recovery_settings, max_silence=max_silence)
    agent["heartbeat"]["progress"] = "journal"
    with open(os.path.join(args.config_dir, "agents.d", name + ".json"), "w", encoding="utf-8") as handle:
        json.dump(agent, handle)
    return agent


def hbstate(args, name):
    with open(heartbeat.state_path(args, name), encoding="utf-8") as handle:
        return json.load(handle)


def keys(recorder_):  # noqa: F811
    return [(b["key"], b["severity"]) for b in recorder_.bodies()]


def test_a_flooding_agent_never_makes_its_neighbour_silent_nor_restarted(tmp_path, recorder, units, fake):
    """The defect: one journalctl for all agents, capped at 200,000 lines, newest first: 210,000 lines of
    one agent after the victim's newest line hid it; the victim kept its old time, was called silent and
    restarted by on_hang. Now each agent's lines are bounded on their own."""
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    victim = journal_agent(args, "victim", max_silence="20s", recovery_settings=RESTART)
    flood = journal_agent(args, "flood", max_silence="1h")
    units.set(victim["unit"], started_ago=3600)
    units.set(flood["unit"], started_ago=3600)
    first = time.time() - 15
    fake.add(victim["unit"], "victim works", first)
    fake.add(flood["unit"], "flood starts", first)
    assert run_heartbeat(args) == 0
    second = time.time()
    fake.add(victim["unit"], "victim still works", second)
    fake.add_many(flood["unit"], 210000, second, step=0.000001)
    deadline = time.monotonic() + 30
    while time.time() < first + 21 and time.monotonic() < deadline:   # the first line is past max_silence
        time.sleep(0.2)
    assert run_heartbeat(args) == 0
    assert keys(recorder) == []                                   # no false silent alert
    assert [c for c in units.calls() if "restart" in c] == []       # no recovery restart
    assert recovery.load(args, "victim")["actions"] == []          # its budget untouched
    state = hbstate(args, "victim")
    assert abs(state["journal_seen"] - second) < 0.01 and abs(state["last_progress"] - second) < 0.01
    flood_state = hbstate(args, "flood")
    assert flood_state["journal_loud"] is True and abs(flood_state["journal_seen"] - (second + 0.209999)) < 0.01


def test_an_unknown_read_is_not_silent_and_warns_once_it_lasts(tmp_path, recorder, units, fake):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = journal_agent(args, "victim", recovery_settings=RESTART)
    units.set(agent["unit"], started_ago=3600)
    fake.add(agent["unit"], "last line, long ago", time.time() - 1800)
    fake.behave(exit=1, stderr="Failed to open journal: Input/output error")
    assert run_heartbeat(args) == 0
    assert run_heartbeat(args) == 0
    assert keys(recorder) == []                                   # silent for 1800 s, but unknown: no alert
    assert [c for c in units.calls() if "restart" in c] == []
    state = hbstate(args, "victim")
    assert state["last_progress"] is None and "Input/output error" in state["journal_error"]
    # unknown for longer than max_silence (30 s)
    state["journal_unknown_since"] = time.time() - 40
    with open(heartbeat.state_path(args, "victim"), "w", encoding="utf-8") as handle:
        json.dump(state, handle)
    assert run_heartbeat(args) == 0
    assert keys(recorder) == [("victim/progress-unknown", "warning")]
    body = recorder.bodies()[0]
    assert "progress unknown for 4" in body["title"] and "Input/output error" in body["body"]
    assert [c for c in units.calls() if "restart" in c] == []
    # the journal can be read again: resolved, and the silence is judged again
    fake.behave()
    fake.add(agent["unit"], "alive", time.time())
    assert run_heartbeat(args) == 0
    assert keys(recorder)[1:] == [("victim/progress-unknown", "resolved")]
    assert "journal_unknown_since" not in hbstate(args, "victim")


def test_an_open_silent_alert_is_kept_but_no_restart_while_unknown(tmp_path, recorder, units, fake):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = journal_agent(args, "victim", recovery_settings=RESTART)
    units.set(agent["unit"], started_ago=3600)
    fake.add(agent["unit"], "last line, long ago", time.time() - 1800)
    assert run_heartbeat(args) == 0                                # really silent: alert and one restart
    assert keys(recorder) == [("victim/silent", "critical"), ("victim/recovery", "info")]
    assert len([c for c in units.calls() if "restart" in c]) == 1
    fake.behave(exit=1)
    recovery_state = recovery.load(args, "victim")
    recovery_state["last_action"]["time"] -= 3600                  # past the restart cooldown
    recovery.save(args, "victim", recovery_state)
    assert run_heartbeat(args) == 0
    assert len(keys(recorder)) == 2 and len([c for c in units.calls() if "restart" in c]) == 1


def test_journal_read_once_for_all_agents_after_the_first_run(tmp_path, units, fake):
    args = make_args(tmp_path)
    write_config(args, [])
    for name in ("j1", "j2", "j3"):
        agent = journal_agent(args, name)
        units.set(agent["unit"], started_ago=600)
        fake.add(agent["unit"], "hello", time.time() - 5)
    assert run_heartbeat(args) == 0
    first = fake.calls()
    assert len(first) == 4 and all("-r" in c for c in first[1:])     # new agents: one read each
    assert run_heartbeat(args) == 0
    second = fake.calls()[4:]
    assert len(second) == 1 and "-r" not in second[0], second          # then one read for all of them
    assert all("_SYSTEMD_UNIT=agentops-%s.service" % n in second[0] for n in ("j1", "j2", "j3"))
    assert abs(hbstate(args, "j1")["journal_seen"] - (time.time() - 5)) < 2
    with open(heartbeat.run_path(args), encoding="utf-8") as handle:
        assert json.load(handle)["journal"]["cursor"].startswith("s=")


def test_a_file_progress_agent_keeps_no_journal_position(tmp_path, units, fake):
    args = make_args(tmp_path)
    write_config(args, [])
    agent = journal_agent(args, "j1", max_silence="1h")
    units.set(agent["unit"])
    fake.add(agent["unit"], "hello", time.time() - 5)
    assert run_heartbeat(args) == 0
    assert hbstate(args, "j1")["journal_cursor"]
    agent["heartbeat"]["progress"] = "file"
    with open(os.path.join(args.config_dir, "agents.d", "j1.json"), "w", encoding="utf-8") as handle:
        json.dump(agent, handle)
    assert run_heartbeat(args) == 0
    assert not [k for k in hbstate(args, "j1") if k.startswith("journal_")]


def test_status_shows_the_newest_journal_line(tmp_path, units, fake):
    args = make_args(tmp_path)
    write_config(args, [])
    agent = journal_agent(args, "j1", max_silence="1h")
    units.set(agent["unit"], started_ago=3600)
    fake.add(agent["unit"], "hello", time.time() - 50)
    assert 45 <= hoststatus.agent_status(args, agent)["last_progress_age_seconds"] <= 80
    assert run_heartbeat(args) == 0
    fake.behave(exit=1)          # status cannot read the journal: what the heartbeat recorded
    assert 45 <= hoststatus.agent_status(args, agent)["last_progress_age_seconds"] <= 80


def test_failure_report_of_a_collection_unit_quotes_only_its_root_lines(tmp_path, fake):
    """The forged line of the issue: a child of agentops-heartbeat.service running as an agent user wrote
    ``agentops[123]: heartbeat victim: auth check api OK`` and the crash alert quoted it as the collection's."""
    unit = "agentops-heartbeat.service"
    now = time.time()
    fake.add(unit, "heartbeat victim: auth check api OK", now - 3, _UID="990", _PID="123",
             SYSLOG_IDENTIFIER="agentops")
    fake.add(unit, "heartbeat: run crashed", now - 2, _UID="0", _PID="123", SYSLOG_IDENTIFIER="agentops")
    fake.add("init.scope", "agentops-heartbeat.service: Failed with result 'exit-code'.", now - 1, _UID="0",
             _PID="1", UNIT=unit, SYSLOG_IDENTIFIER="systemd")
    _final, _title, body = alert.failure_report(unit, {"ActiveState": "failed", "Result": "exit-code"})
    assert "heartbeat: run crashed" in body and "Failed with result 'exit-code'" in body
    assert "auth check api OK" not in body
    assert body.splitlines()[-2].endswith("agentops[123]: heartbeat: run crashed")
