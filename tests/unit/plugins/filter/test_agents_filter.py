"""Validation and normalisation of agentops_agents (plugins/filter/agents.py)."""
import pytest

from ansible_collections.agentops.fleet.plugins.filter.agents import agents_errors, agents_normalize, systemctl_show

DEFAULTS = {"config_dir": "/etc/agentops", "state_dir": "/var/lib/agentops", "hardening": "standard",
            "restart_sec": 10, "timeout_stop_sec": 30, "start_limit_interval_sec": "5min", "start_limit_burst": 5,
            "memory_max": "2G", "cpu_quota": "200%", "tasks_max": 512, "every_days": 45}


def contract_agent():
    """The agent of the inventory contract (DESIGN.md), verbatim."""
    return {
        "name": "mail-triage", "command": "/opt/agents/mail-triage/run --loop", "state": "present",
        "user": "agent-mail-triage", "environment": {"LOG_LEVEL": "info"},
        "credentials": {"graph_token": "s3cr3t-value"},
        "auth_checks": [{"name": "graph", "type": "http", "url": "https://graph.microsoft.com/v1.0/me",
                         "credential": "graph_token", "expect_status": [200]}],
        "heartbeat": {"interval": "30min", "max_silence": "30min", "progress": "journal",
                      "active_hours": "08:00-20:00"},
        "token_rotation": [{"credential": "graph_token", "every_days": 45,
                            "command": "/opt/agents/mail-triage/refresh-token"}],
        "failure_modes": [{"tool": "email", "on_failure": "Send Telegram alert to owner, do not retry silently"},
                          {"tool": "api", "on_failure": "Wait 60 seconds, retry once, then alert"}],
    }


def test_contract_example_is_valid():
    assert agents_errors([contract_agent()]) == []
    assert agents_errors([]) == [] and agents_errors(None) == []


@pytest.mark.parametrize("change, expected", [
    ({"name": "../x"}, "agentops_agents['../x'].name"),
    ({"name": "a" * 41}, ".name"),
    ({"name": "rotation"}, "agentops_agents[rotation].name: 'rotation' is reserved"),
    ({"command": "relative/run"}, "agentops_agents[mail-triage].command"),
    ({"extra": 1}, "agentops_agents[mail-triage].extra: unknown key"),
    ({"heartbeat": {"max_silence": "5 parsecs"}},
     "agentops_agents[mail-triage].heartbeat.max_silence: '5 parsecs' is not a systemd time span"),
    ({"heartbeat": {"progress": "command"}}, "agentops_agents[mail-triage].heartbeat.command"),
    ({"heartbeat": {"active_hours": "25:00-26:00"}}, "agentops_agents[mail-triage].heartbeat.active_hours"),
    ({"auth_checks": [{"name": "g", "type": "file", "credential": "nope"}]},
     "agentops_agents[mail-triage].auth_checks[g].credential"),
    ({"token_rotation": [{"credential": "graph_token", "every_days": "*/45", "command": "/bin/r"}]},
     "agentops_agents[mail-triage].token_rotation[graph_token].every_days: '*/45' is not a number of days"),
    ({"token_rotation": [{"credential": "graph_token", "every_days": True, "command": "/bin/r"}]},
     "agentops_agents[mail-triage].token_rotation[graph_token].every_days"),
    ({"start_limit_burst": 0}, "agentops_agents[mail-triage].start_limit_burst"),
    ({"tasks_max": True}, "agentops_agents[mail-triage].tasks_max"),
])
def test_rejections_name_agent_and_field(change, expected):
    agent = contract_agent()
    agent.update(change)
    errors = agents_errors([agent])
    assert any(expected in e for e in errors), errors


def test_duplicates_and_secret_values_never_in_messages():
    agent = contract_agent()
    agent["credentials"]["other"] = 12345
    errors = agents_errors([agent, contract_agent()])
    assert any("duplicate agent name" in e for e in errors)
    assert all("s3cr3t-value" not in e and "12345" not in e for e in errors)


def test_normalize_contract_agent():
    (entry,) = agents_normalize([contract_agent()], DEFAULTS)
    assert entry["unit"] == "agentops-mail-triage.service"
    assert entry["credentials"] == ["graph_token"] and entry["rotated_credentials"] == ["graph_token"]
    assert "s3cr3t-value" not in repr(entry)
    assert entry["config"]["heartbeat"] == {"interval": "30min", "max_silence": "30min", "progress": "journal",
                                            "file": "heartbeat", "command": None, "active_hours": "08:00-20:00",
                                            "workstate_max_age": None}
    assert entry["config"]["token_rotation"] == [{"credential": "graph_token", "every_days": 45,
                                                  "command": "/opt/agents/mail-triage/refresh-token"}]
    assert entry["environment_lines"] == ['"LOG_LEVEL=info"']


def test_normalize_escapes_systemd_specifiers_and_quotes():
    agent = {"name": "x", "command": "/bin/run --rate 50%", "environment": {"Q": 'say "hi" \\ 100%', "B": True}}
    (entry,) = agents_normalize([agent], DEFAULTS)
    assert entry["exec_start"] == "/bin/run --rate 50%%"
    assert entry["environment_lines"] == ['"B=true"', '"Q=say \\"hi\\" \\\\ 100%%"']
    assert entry["user"] == "agent-x" and entry["restart_sec"] == "10" and entry["heartbeat"] is None


def test_systemctl_show_parsing():
    text = "Id=a.service\nActiveState=active\n\nId=b.service\nLoadState=not-found\n"
    assert systemctl_show(text) == {"a.service": {"Id": "a.service", "ActiveState": "active"},
                                    "b.service": {"Id": "b.service", "LoadState": "not-found"}}


def test_rotation_timeout_is_validated_and_kept():
    from ansible_collections.agentops.fleet.plugins.filter.agents import agents_errors, agents_normalize
    base = {"name": "rot", "command": "/bin/true", "credentials": {"tok": "x"},
            "token_rotation": [{"credential": "tok", "command": "/bin/echo", "timeout": 30}]}
    assert agents_errors([base]) == []
    bad = dict(base, token_rotation=[{"credential": "tok", "command": "/bin/echo", "timeout": "soon"}])
    errors = agents_errors([bad])
    assert any("agentops_agents[rot].token_rotation[tok].timeout" in e for e in errors), errors


def test_heartbeat_tick_follows_the_shortest_interval():
    from ansible_collections.agentops.fleet.plugins.filter.agents import heartbeat_tick
    fast = {"name": "a", "command": "/bin/true", "heartbeat": {"interval": "15s", "max_silence": "30s"}}
    slow = {"name": "b", "command": "/bin/true", "heartbeat": {"interval": "30min"}}
    assert heartbeat_tick([], "1min") == "1min"
    assert heartbeat_tick([slow], "1min") == "1min"
    assert heartbeat_tick([slow, fast], "1min") == "15s"
    assert heartbeat_tick([dict(fast, heartbeat={"interval": "1s"})], "1min") == "5s"
    assert heartbeat_tick([dict(fast, state="absent")], "1min") == "1min"
    assert heartbeat_tick([{"name": "c", "command": "/bin/true", "heartbeat": {}}], "10min") == "5min"
    assert heartbeat_tick([fast], "3s") == "3s"
    assert heartbeat_tick([fast], 90) == "15s"
