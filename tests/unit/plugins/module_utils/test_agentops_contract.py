"""The contract's unit-safe value check, reserved names and role-setting checks, with the regressions
of the directive-injection and validation-gap reproductions."""
import pytest

from ansible_collections.agentops.fleet.plugins.module_utils import agentops_contract as contract
from ansible_collections.agentops.fleet.plugins.filter.agents import (agents_errors, agents_normalize,
                                                                       agents_user_errors)

DEFAULTS = {"config_dir": "/etc/agentops", "state_dir": "/var/lib/agentops", "hardening": "standard",
            "restart_sec": 10, "timeout_stop_sec": 30, "start_limit_interval_sec": "5min", "start_limit_burst": 5,
            "memory_max": "2G", "cpu_quota": "200%", "tasks_max": 512, "every_days": 45}


@pytest.mark.parametrize("value", [
    "a\x00User=root", "a\nUser=root", "a\rb", "tab\there", "\x1b[31m", "del\x7f", "c1\x85", "c1\x9f",
    u"ls\u2028User=root", u"p\u2029q", "/tmp/x\\",
])
def test_unit_value_problem_refuses(value):
    assert contract.unit_value_problem(value)


@pytest.mark.parametrize("value", ["/opt/agent/run --loop", "50%", u"caf\u00e9 d\u00e9j\u00e0", "a\\b", "", 12, None])
def test_unit_value_problem_accepts(value):
    assert contract.unit_value_problem(value) is None


def test_trailing_backslash_is_fine_inside_escaping_quotes():
    assert contract.unit_value_problem("C:\\", quoted=True) is None
    assert contract.unit_value_problem("x\n", quoted=True)


def test_escapes():
    assert contract.escape_unit("50% %n") == "50%% %%n"
    assert contract.escape_cron("date +%s") == "date +\\%s"


@pytest.mark.parametrize("name", ["heartbeat", "alert", "alert-flush", "rotation", "heartbeat-x", "alert-anything"])
def test_reserved_agent_names(name):
    problem = contract.agent_name_problem(name)
    assert problem and "reserved" in problem
    errors = agents_errors([{"name": name, "command": "/bin/true"}])
    assert any(e.startswith("agentops_agents[%s].name:" % name) and "reserved" in e for e in errors), errors


@pytest.mark.parametrize("name", ["heartbeats", "alerting", "mail-triage", "hb-1"])
def test_names_near_the_reserved_ones_are_fine(name):
    assert contract.agent_name_problem(name) is None


@pytest.mark.parametrize("variable, value", [
    ("agentops_agents_memory_max", "2G\nUser=root"),
    ("agentops_agents_memory_max", u"\u0663G"),
    ("agentops_agents_cpu_quota", "200%\\"),
    ("agentops_agents_tasks_max", "512\x00"),
    ("agentops_agents_restart_sec", "10s\n[Service]"),
    ("agentops_agents_restart_sec", u"\u0663s"),
    ("agentops_agents_restart_sec", "nan"),
    ("agentops_agents_restart_sec", float("inf")),
    ("agentops_agents_restart_sec", ".inf"),
    ("agentops_agents_timeout_stop_sec", "-1"),
    ("agentops_agents_start_limit_interval_sec", "5min\\"),
    ("agentops_agents_start_limit_burst", 0),
    ("agentops_agents_start_limit_burst", True),
    ("agentops_agents_hardening", "paranoid"),
    ("agentops_heartbeat_tick", "1min\n"),
    ("agentops_heartbeat_disk_paths", ["/var/log/journal", "/tmp/x\\"]),
    ("agentops_heartbeat_disk_paths", ["/srv/a b"]),
    ("agentops_heartbeat_disk_paths", "/var/log/journal"),
    ("agentops_heartbeat_disk_threshold_percent", 101),
    ("agentops_alert_flush_interval", "30s\x00"),
    ("agentops_token_rotation_hour", 24),
    ("agentops_alert_host_name", "web1\nUser=root"),
    ("agentops_journald_system_max_use", "2G\nStorage=none"),
    ("agentops_journald_extra_settings", {"ForwardToSyslog": "no\\"}),
    ("agentops_journald_extra_settings", {"ForwardToSyslog": u"no\u2028Storage=none"}),
    ("agentops_journald_extra_settings", {"forward": "no"}),
    ("agentops_journald_rate_limit_burst", "many"),
])
def test_role_settings_rejected_with_the_variable_named(variable, value):
    errors = contract.settings_errors({variable: value})
    assert len(errors) == 1 and errors[0].startswith(variable + ": "), errors


def test_role_defaults_are_valid():
    settings = {
        "agentops_agents_hardening": "standard", "agentops_agents_restart_sec": 10,
        "agentops_agents_timeout_stop_sec": 30, "agentops_agents_start_limit_interval_sec": "5min",
        "agentops_agents_start_limit_burst": 5, "agentops_agents_memory_max": "2G",
        "agentops_agents_cpu_quota": "200%", "agentops_agents_tasks_max": 512, "agentops_agents_every_days": 45,
        "agentops_heartbeat_tick": "1min", "agentops_heartbeat_disk_paths": ["/var/log/journal"],
        "agentops_heartbeat_disk_threshold_percent": "90", "agentops_alert_flush_interval": "30s",
        "agentops_token_rotation_hour": 3, "agentops_token_rotation_minute": "17",
        "agentops_journald_system_max_use": "2G", "agentops_journald_system_keep_free": "500M",
        "agentops_journald_max_retention_sec": "1week", "agentops_journald_system_max_file_size": "",
        "agentops_journald_rate_limit_burst": "", "agentops_journald_extra_settings": {"ForwardToSyslog": "no"},
    }
    assert contract.settings_errors(settings) == []


def _agent(**change):
    agent = {"name": "evil", "command": "/opt/agents/evil/run"}
    agent.update(change)
    return agent


@pytest.mark.parametrize("change, field", [
    # a NUL or a line break in read_write_paths would split the line and inject User=root / ExecStartPre=+
    ({"read_write_paths": ["/srv/data\x00User=root"]}, "read_write_paths"),
    ({"read_write_paths": ["/srv/data\nExecStartPre=+/bin/sh -c id"]}, "read_write_paths"),
    # a trailing backslash continues ReadWritePaths= onto the next line and swallows it
    ({"read_write_paths": ["/tmp/x\\"]}, "read_write_paths"),
    ({"read_write_paths": [u"/srv/a\u2028User=root"]}, "read_write_paths"),
    ({"command": "/opt/agents/evil/run \\"}, "command"),
    ({"command": "/opt/agents/evil/run\x85"}, "command"),
    ({"description": "nice\\"}, "description"),
    ({"description": u"nice\u2029[Service]"}, "description"),
    ({"environment": {"LD_PRELOAD": "/var/lib/agentops/evil/x.so"}}, "environment.LD_PRELOAD"),
    ({"environment": {"LD_LIBRARY_PATH": "/var/lib/agentops/evil"}}, "environment.LD_LIBRARY_PATH"),
    ({"environment": {"GCONV_PATH": "/var/lib/agentops/evil"}}, "environment.GCONV_PATH"),
    ({"environment": {"X": u"a\u2028b"}}, "environment.X"),
    ({"credentials": {"tok": "a", "tok.prev": "b"}}, "credentials.tok.prev"),
    ({"restart_sec": u"\u0663s"}, "restart_sec"),
    ({"restart_sec": "nan"}, "restart_sec"),
    ({"timeout_stop_sec": ".inf"}, "timeout_stop_sec"),
    ({"memory_max": u"\u0663G"}, "memory_max"),
    ({"share_user": "yes"}, "share_user"),
    ({"heartbeat": {"max_silence": u"\u0663s"}}, "heartbeat.max_silence"),
])
def test_injection_and_gap_regressions_name_agent_and_field(change, field):
    errors = agents_errors([_agent(**change)])
    assert any(e.startswith("agentops_agents[evil].%s:" % field) for e in errors), errors


def test_accepted_values_are_escaped_in_the_unit_entry():
    (entry,) = agents_normalize([_agent(description="50% done", read_write_paths=["/srv/100%"])], DEFAULTS)
    assert entry["description"] == "50%% done"
    assert entry["read_write_paths"] == ["/srv/100%%"]


def test_two_agents_may_not_share_a_user_unless_both_say_so():
    a = _agent(name="a", user="shared")
    b = _agent(name="b", user="shared")
    errors = agents_errors([a, b])
    assert any(e.startswith("agentops_agents[a].user:") for e in errors), errors
    assert any(e.startswith("agentops_agents[b].user:") for e in errors), errors
    # the default user of another agent counts too
    errors = agents_errors([_agent(name="a", user="agent-b"), _agent(name="b")])
    assert any(e.startswith("agentops_agents[a].user:") for e in errors), errors
    assert agents_errors([dict(a, share_user=True), dict(b, share_user=True)]) == []


PASSWD = {
    "root": ["x", "0", "0", "root", "/root", "/bin/bash"],
    "daemon": ["x", "1", "1", "daemon", "/usr/sbin", "/usr/sbin/nologin"],
    "agent-evil": ["x", "998", "998", "agentops agent evil", "/var/lib/agentops/evil", "/usr/sbin/nologin"],
    "agent-victim": ["x", "997", "997", "agentops agent victim", "/var/lib/agentops/victim", "/usr/sbin/nologin"],
}


def test_existing_users_that_are_not_the_agents_own_are_refused():
    assert agents_user_errors([_agent()], PASSWD) == []
    errors = agents_user_errors([_agent(user="daemon")], PASSWD)
    assert len(errors) == 1 and errors[0].startswith("agentops_agents[evil].user: 'daemon' already exists"), errors
    errors = agents_user_errors([_agent(user="agent-victim")], PASSWD)
    assert len(errors) == 1 and "agent-victim" in errors[0], errors
    assert agents_user_errors([_agent(user="daemon", share_user=True)], PASSWD) == []
    assert agents_user_errors([_agent(user="agent-new")], PASSWD) == []
    assert agents_user_errors([_agent(user="daemon", state="absent")], PASSWD) == []


@pytest.mark.parametrize("name", sorted(contract.REMOVED_VARIABLES))
def test_removed_variables_are_refused_with_their_replacement(name):
    (message,) = contract.removed_errors(["agentops_agents", name])
    assert message.startswith(name + ": was removed: ")
    assert "/" in message or "agentops_heartbeat_disk_threshold_percent" in message


def test_every_role_default_has_a_check():
    """Each variable a role declares is validated by the contract (no setting accepted and unchecked)."""
    import glob
    import os
    import yaml
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
    unchecked = []
    for path in sorted(glob.glob(os.path.join(root, "roles", "*", "defaults", "main.yml"))):
        with open(path) as handle:
            names = yaml.safe_load(handle) or {}
        for name in names:
            if name in ("agentops_agents", "agentops_alert_channels"):
                continue
            if name not in contract.SETTING_CHECKS:
                unchecked.append(name)
            assert name not in contract.REMOVED_VARIABLES, name
    assert unchecked == [], unchecked


KNOBS = {"restart_sec": "2s", "restart_steps": 3, "restart_max_delay_sec": "30s", "runtime_max": "12h",
         "memory_high": "200M", "oom_score_adjust": 300}


def test_unit_knobs_are_accepted():
    assert contract.agents_errors([dict({"name": "knobs", "command": "/bin/true"}, **KNOBS)]) == []


@pytest.mark.parametrize("change, field, text", [
    ({"restart_steps": 0}, "restart_steps", "from 1 to 3600"),
    ({"restart_steps": 3601}, "restart_steps", "from 1 to 3600"),
    ({"restart_steps": "3"}, "restart_steps", "from 1 to 3600"),
    ({"restart_steps": True}, "restart_steps", "from 1 to 3600"),
    ({"restart_max_delay_sec": "soon"}, "restart_max_delay_sec", "not a systemd time span"),
    ({"restart_max_delay_sec": "1s"}, "restart_max_delay_sec", "shorter than restart_sec '2s'"),
    ({"restart_max_delay_sec": "30s\nUser=root"}, "restart_max_delay_sec", "not a systemd time span"),
    ({"runtime_max": "0"}, "runtime_max", "longer than 0"),
    ({"runtime_max": "forever"}, "runtime_max", "not a systemd time span"),
    ({"memory_high": "lots"}, "memory_high", "not a size"),
    ({"memory_high": u"\u0663G"}, "memory_high", "not a size"),
    ({"oom_score_adjust": 1001}, "oom_score_adjust", "from -1000 to 1000"),
    ({"oom_score_adjust": -1001}, "oom_score_adjust", "from -1000 to 1000"),
    ({"oom_score_adjust": "300"}, "oom_score_adjust", "from -1000 to 1000"),
])
def test_unit_knob_rejections_name_agent_and_field(change, field, text):
    agent = dict({"name": "knobs", "command": "/bin/true"}, **KNOBS)
    agent.update(change)
    errors = contract.agents_errors([agent])
    assert any(e.startswith("agentops_agents[knobs].%s: " % field) and text in e for e in errors), errors


@pytest.mark.parametrize("dropped", ["restart_steps", "restart_max_delay_sec"])
def test_restart_steps_and_max_delay_come_together(dropped):
    agent = dict({"name": "knobs", "command": "/bin/true"}, **KNOBS)
    del agent[dropped]
    errors = contract.agents_errors([agent])
    assert any(e.startswith("agentops_agents[knobs].%s: required with" % dropped) for e in errors), errors


@pytest.mark.parametrize("path", ["/tmp/metrics", "/var/tmp/agentops-metrics", "/tmp"])
def test_metrics_dir_under_a_private_tmp_is_refused(path):
    errors = contract.settings_errors({"agentops_metrics_textfile_dir": path})
    assert len(errors) == 1 and errors[0].startswith("agentops_metrics_textfile_dir: ") and "PrivateTmp" in errors[0]


def test_metrics_dir_elsewhere_is_accepted():
    assert contract.settings_errors({"agentops_metrics_textfile_dir": "/var/lib/prometheus/node-exporter"}) == []
    assert contract.settings_errors({"agentops_metrics_textfile_dir": "/var/tmpfiles/x"}) == []


# Values systemd refuses with "out of range, ignoring" (the unit would run without the limit): found by
# tests/property (memory_max: 0, tasks_max: 0), each checked with systemd-analyze verify on Debian 12.
@pytest.mark.parametrize("field, value", [
    ("memory_max", 0), ("memory_max", "0"), ("memory_max", "0%"), ("memory_max", "101%"), ("memory_max", "0.5"),
    ("memory_max", "99999999999999999999T"), ("memory_high", 0), ("memory_high", "0%"),
    ("tasks_max", 0), ("tasks_max", "150%"), ("cpu_quota", "0%"),
])
def test_limits_systemd_ignores_are_refused(field, value):
    errors = contract.agents_errors([{"name": "lim", "command": "/bin/true", field: value}])
    assert len(errors) == 1 and errors[0].startswith("agentops_agents[lim].%s: " % field), errors


@pytest.mark.parametrize("field, value", [
    ("memory_max", "100%"), ("memory_max", "0.5K"), ("memory_max", "1.5G"), ("memory_max", 512),
    ("memory_max", "infinity"), ("tasks_max", "0%"), ("tasks_max", "100%"), ("tasks_max", 1), ("cpu_quota", "1%"),
])
def test_limits_systemd_accepts_are_accepted(field, value):
    assert contract.agents_errors([{"name": "lim", "command": "/bin/true", field: value}]) == []


@pytest.mark.parametrize("variable, value", [
    ("agentops_agents_memory_max", 0), ("agentops_agents_tasks_max", 0), ("agentops_agents_cpu_quota", "0%")])
def test_role_limits_systemd_ignores_are_refused(variable, value):
    errors = contract.settings_errors({variable: value})
    assert len(errors) == 1 and errors[0].startswith(variable + ": "), errors
