"""The contract's ``recovery`` of an agent: what is rejected (with the agent and the key named), the defaults,
and the normalised settings written into agents.d/<name>.json and checked again on the host."""
import json
import os

import pytest

from ansible_collections.agentops.fleet.plugins.module_utils import agentops_contract as contract
from ansible_collections.agentops.fleet.plugins.filter.agents import agents_normalize

from agentops_host import config as hostconfig

DEFAULTS = {"config_dir": "/etc/agentops", "state_dir": "/var/lib/agentops", "hardening": "standard",
            "restart_sec": 10, "timeout_stop_sec": 30, "start_limit_interval_sec": "5min", "start_limit_burst": 5,
            "memory_max": "2G", "cpu_quota": "200%", "tasks_max": 512, "every_days": 45}


def _agent(**fields):
    agent = {"name": "mail", "command": "/opt/mail/run", "heartbeat": {"interval": "1min", "max_silence": "10min"}}
    agent.update(fields)
    return agent


@pytest.mark.parametrize("recovery, where, words", [
    ({"on_hang": "reboot"}, "recovery.on_hang", "'reboot' is not one of alert, restart"),
    ({"on_hang": True}, "recovery.on_hang", "not one of alert, restart"),
    ({"max_restarts": -1}, "recovery.max_restarts", "-1 must be a whole number from 0 to 1000"),
    ({"max_restarts": "-3"}, "recovery.max_restarts", "must be a whole number from 0 to 1000"),
    ({"max_restarts": 1.5}, "recovery.max_restarts", "must be a whole number"),
    ({"max_restarts": True}, "recovery.max_restarts", "must be a whole number"),
    ({"max_restarts": 1001}, "recovery.max_restarts", "from 0 to 1000"),
    ({"window": "soon"}, "recovery.window", "'soon' is not a systemd time span"),
    ({"window": "-1h"}, "recovery.window", "is not a systemd time span"),
    ({"window": 0}, "recovery.window", "must be more than 0"),
    ({"window": "0s"}, "recovery.window", "must be more than 0"),
    ({"window": "1h\nUser=root"}, "recovery.window", "not a systemd time span"),
    ({"start_limit_retry_after": "never"}, "recovery.start_limit_retry_after", "or infinity"),
    ({"start_limit_retry_after": "0"}, "recovery.start_limit_retry_after", "must be more than 0"),
    ({"start_limit_retry_after": "-15min"}, "recovery.start_limit_retry_after", "not a systemd time span"),
    ({"on_hang": "restart", "reboot": True}, "recovery.reboot", "unknown key (allowed: on_hang, max_restarts, "
                                                                "window, start_limit_retry_after)"),
    ("restart", "recovery", "must be a mapping with the keys on_hang"),
])
def test_bad_recovery_is_rejected_naming_the_agent_and_the_key(recovery, where, words):
    errors = contract.agents_errors([_agent(recovery=recovery)])
    assert len(errors) == 1, errors
    assert errors[0].startswith("agentops_agents[mail].%s: " % where), errors
    assert words in errors[0], errors


def test_on_hang_restart_needs_a_heartbeat():
    errors = contract.agents_errors([{"name": "plain", "command": "/bin/true", "recovery": {"on_hang": "restart"}}])
    assert errors == ["agentops_agents[plain].recovery.on_hang: restart needs a heartbeat: a hang is no progress "
                      "for heartbeat.max_silence, and this agent sets no heartbeat"]
    # alert only, and the start-limit retry, need no heartbeat
    assert contract.agents_errors([{"name": "plain", "command": "/bin/true", "recovery": {"max_restarts": 1}}]) == []


@pytest.mark.parametrize("recovery", [
    {}, {"on_hang": "alert"}, {"on_hang": "restart", "max_restarts": 0}, {"max_restarts": "2", "window": "90s"},
    {"start_limit_retry_after": "infinity"}, {"window": "1d 2h", "start_limit_retry_after": 20},
])
def test_good_recovery_is_accepted(recovery):
    assert contract.agents_errors([_agent(recovery=recovery)]) == []


def test_the_normalised_settings_go_into_the_agent_file_and_pass_the_host_check(tmp_path):
    agents = [_agent(recovery={"on_hang": "restart", "max_restarts": 2, "window": "10min",
                               "start_limit_retry_after": "20s"}),
              _agent(name="other", recovery={}),
              _agent(name="never", recovery={"start_limit_retry_after": "infinity"}),
              _agent(name="none")]
    entries = dict((e["name"], e) for e in agents_normalize(agents, DEFAULTS))
    assert entries["mail"]["config"]["recovery"] == {"on_hang": "restart", "max_restarts": 2, "window": 600,
                                                     "start_limit_retry_after": 20}
    assert entries["other"]["config"]["recovery"] == {"on_hang": "alert", "max_restarts": 3, "window": 3600,
                                                      "start_limit_retry_after": 900}
    assert entries["never"]["config"]["recovery"]["start_limit_retry_after"] == "infinity"
    assert entries["none"]["config"]["recovery"] is None
    os.makedirs(str(tmp_path / "agents.d"))
    for name, entry in entries.items():
        (tmp_path / "agents.d" / (name + ".json")).write_text(json.dumps(entry["config"]))
        loaded = hostconfig.load_agent(str(tmp_path), name)
        assert loaded["recovery"] == entry["config"]["recovery"]


def test_the_host_refuses_an_agent_file_with_a_bad_recovery(tmp_path):
    os.makedirs(str(tmp_path / "agents.d"))
    (tmp_path / "agents.d" / "bad.json").write_text(json.dumps(
        {"name": "bad", "recovery": {"on_hang": "reboot", "max_restarts": -2}}))
    with pytest.raises(hostconfig.ConfigError) as info:
        hostconfig.load_agent(str(tmp_path), "bad")
    assert "agentops_agents[bad].recovery.on_hang" in str(info.value)
    assert "agentops_agents[bad].recovery.max_restarts" in str(info.value)


def test_the_defaults_match_the_documented_ones():
    assert contract.RECOVERY_DEFAULTS == {"on_hang": "alert", "max_restarts": 3, "window": "1h",
                                          "start_limit_retry_after": "15min"}
    assert "recovery" in contract.AGENT_KEYS
