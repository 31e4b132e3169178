"""Scheduled one-shot agents on the controller: the OnCalendar syntax check, schedule_grace, the units.

The systemd side (``systemd-analyze calendar`` on the host, real timers) is the Molecule scenario
``scheduled``; the expressions listed as valid here were checked with systemd-analyze 252 and 257.
"""
import os

import pytest
import yaml

from ansible_collections.agentops.fleet.plugins.filter import agents as filters
from ansible_collections.agentops.fleet.plugins.module_utils import agentops_contract as contract
from ansible_collections.agentops.fleet.plugins.module_utils.agentops_contract import PATHS

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
ROLE = os.path.join(ROOT, "roles", "agents")
DEFAULTS = {"config_dir": "/etc/agentops", "state_dir": "/var/lib/agentops", "hardening": "standard",
            "restart_sec": 10, "timeout_stop_sec": 30, "start_limit_interval_sec": "5min", "start_limit_burst": 5,
            "memory_max": "2G", "cpu_quota": "200%", "tasks_max": 512, "every_days": 45}
with open(os.path.join(ROLE, "vars", "main.yml"), encoding="utf-8") as _handle:
    PROFILES = yaml.safe_load(_handle)["agentops_agents_profile_directives"]

VALID = ["daily", "hourly", "weekly", "minutely", "Mon..Fri *-*-* 03:00:00", "*-*-* *:0/15:00", "*:0/15",
         "2026-12-01 03:00 UTC", "*-*-* *:*:0/20", "Sat,Sun 10:00", "Mon", "*-*-01 00:00:00", "*-02~03",
         "Wed..Sat,Tue 12-10-15 1:2:3", "@1700000000", "2003-03-05 05:40 Europe/Berlin", "03:00", "12:00:01.5",
         "*-1,4,7,10-1 00:00:00", "Mon,Fri *-01/2-01,03 *:30:45", "Mon *-*-* 08:00:00 America/New_York"]
INVALID = [
    ("", "non-empty"), ("   ", "non-empty"), (None, "non-empty"), (3, "non-empty"),
    ("0 3 * * *", "looks like a cron expression"), ("*/15 * * * *", "looks like a cron expression"),
    ("0 3", "a cron expression?"), ("*-*-* 25:00:00", "hour 25 is out of range"),
    ("*-13-01", "month 13 is out of range"), ("*-*-* 03:61", "minute 61 is out of range"),
    ("*-*-32", "day of the month 32"), ("Funday", "is not a weekday, a date, a time"),
    ("*-*-* 03:00:00\nExecStart=/bin/sh", "control character"), ("daily 03:00", "stands alone"),
    ("03:00 Mon", "out of place"), ("every day", "'every' is not a weekday"), ("*:0/0", "more than 0"),
    ("*-*-* 03:00:00 %n", "'%'"),
]


@pytest.mark.parametrize("expression", VALID)
def test_valid_calendar_expressions_pass(expression):
    assert contract.calendar_problem(expression) is None


@pytest.mark.parametrize("expression,fragment", INVALID)
def test_invalid_calendar_expressions_are_refused(expression, fragment):
    problem = contract.calendar_problem(expression)
    assert problem and fragment in problem, problem


def test_messages_name_the_agent_and_the_field():
    errors = contract.agents_errors([
        {"name": "nightly", "command": "/bin/true", "schedule": "0 3 * * *"},
        {"name": "grace", "command": "/bin/true", "schedule": "daily", "schedule_grace": "0"},
        {"name": "lonely", "command": "/bin/true", "schedule_grace": "5min"},
        {"name": "fine", "command": "/bin/true", "schedule": "*-*-* *:*:0/20", "schedule_grace": "30s",
         "runtime_max": "5s"},
    ])
    assert len(errors) == 3, errors
    assert errors[0].startswith("agentops_agents[nightly].schedule: '0 3 * * *' looks like a cron expression")
    assert errors[1].startswith("agentops_agents[grace].schedule_grace: '0' must be more than 0")
    assert errors[2] == ("agentops_agents[lonely].schedule_grace: is only used with schedule "
                         "(a scheduled one-shot agent)")


def test_host_config_is_checked_with_the_same_rules():
    assert contract.agent_config_errors({"name": "n", "schedule": "daily", "schedule_grace": 900}) == []
    assert contract.agent_config_errors({"name": "n", "schedule": "0 3 * * *"})[0].startswith(
        "agentops_agents[n].schedule:")


def effective(**fields):
    agent = dict({"name": "nightly", "command": "/opt/nightly --all", "schedule": "*-*-* *:*:0/20"}, **fields)
    return contract.agents_normalize([agent], DEFAULTS)


def test_normalize_runtime_max_becomes_timeout_start_and_grace_defaults_to_15min():
    entry = effective(runtime_max="5s")[0]
    assert entry["unit_knobs"] == [{"key": "TimeoutStartSec", "value": "5s", "min_version": 0, "field": "runtime_max"}]
    assert entry["config"]["schedule"] == "*-*-* *:*:0/20" and entry["config"]["schedule_grace"] == 900
    assert entry["config"]["timer"] == "agentops-nightly.timer"
    plain = contract.agents_normalize([{"name": "d", "command": "/bin/true", "runtime_max": "2h"}], DEFAULTS)[0]
    assert plain["unit_knobs"][0]["key"] == "RuntimeMaxSec" and "schedule" not in plain["config"]


def rendered(entries):
    files = filters.agents_files(entries, ROLE, PATHS, 252, PROFILES)["files"]
    return dict((f["path"], f["content"]) for f in files)


def test_units_of_a_scheduled_agent():
    files = rendered(effective(runtime_max="5s", schedule="*-*-* 03:00:00"))
    service = files["/etc/systemd/system/agentops-nightly.service"]
    timer = files["/etc/systemd/system/agentops-nightly.timer"]
    assert "Type=oneshot\n" in service and "Restart=no\n" in service and "Restart=on-failure" not in service
    assert "TimeoutStartSec=5s\n" in service and "RuntimeMaxSec" not in service
    assert "StartLimitIntervalSec=0\n" in service and "StartLimitBurst" not in service
    assert "OnFailure=agentops-alert@%n.service\n" in service
    assert "[Install]" not in service and "WantedBy=multi-user.target" not in service
    assert timer.startswith("# Managed by Ansible (agentops.fleet.agents)")
    assert "OnCalendar=*-*-* 03:00:00\n" in timer and "Persistent=true\nUnit=agentops-nightly.service\n" in timer
    assert "WantedBy=timers.target\n" in timer
    unlimited = rendered(effective())["/etc/systemd/system/agentops-nightly.service"]
    assert "TimeoutStartSec=infinity\n" in unlimited
    daemon = rendered(contract.agents_normalize([{"name": "d", "command": "/bin/true"}], DEFAULTS))
    assert "/etc/systemd/system/agentops-d.timer" not in daemon
    assert "Type=simple\n" in daemon["/etc/systemd/system/agentops-d.service"]


def test_unit_actions_start_the_timer_not_the_service():
    agents = (effective() + contract.agents_normalize(
        [{"name": "d", "command": "/bin/true"}, {"name": "off", "command": "/bin/true", "schedule": "daily",
                                                  "enabled": False},
         {"name": "gone", "command": "/bin/true", "state": "absent"}], DEFAULTS))
    state = {
        "agentops-nightly.service": {"LoadState": "loaded", "ActiveState": "failed", "UnitFileState": "enabled"},
        "agentops-nightly.timer": {"LoadState": "not-found", "ActiveState": "inactive"},
        "agentops-d.service": {"LoadState": "loaded", "ActiveState": "active", "UnitFileState": "enabled"},
        "agentops-d.timer": {"LoadState": "loaded", "ActiveState": "active", "UnitFileState": "enabled"},
        "agentops-off.timer": {"LoadState": "loaded", "ActiveState": "active", "UnitFileState": "enabled"},
        "agentops-gone.service": {"LoadState": "loaded", "ActiveState": "inactive"},
        "agentops-gone.timer": {"LoadState": "loaded", "ActiveState": "active"},
    }
    actions = filters.agents_unit_actions(agents, state)
    assert actions["start"] == ["agentops-nightly.timer"]
    assert actions["reset_failed"] == []          # the failed last run stays visible until the next run
    assert actions["disable"] == ["agentops-off.timer", "agentops-nightly.service"]
    assert actions["stop"] == ["agentops-gone.service", "agentops-gone.timer", "agentops-d.timer"]
    paths = filters.agents_absent_paths(agents, "/etc/systemd/system", state)
    assert "/etc/systemd/system/agentops-d.timer" in paths            # a timer left from an earlier schedule
    assert "/etc/systemd/system/timers.target.wants/agentops-gone.timer" in paths
    assert "/etc/systemd/system/agentops-nightly.timer" not in paths
