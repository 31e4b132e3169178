"""credentials_env in the contract: names checked on the controller, the unit's ExecStart= carries names only."""
import pytest

from ansible_collections.agentops.fleet.plugins.module_utils import agentops_contract as contract

DEFAULTS = {"config_dir": "/etc/agentops", "state_dir": "/var/lib/agentops", "hardening": "standard",
            "restart_sec": 10, "timeout_stop_sec": 30, "start_limit_interval_sec": "5min", "start_limit_burst": 5,
            "memory_max": "2G", "cpu_quota": "200%", "tasks_max": 512, "every_days": 45}
SECRET = "sk-canary-credentials-env-0001"


def agent(**change):
    base = {"name": "coder", "command": "/usr/bin/node /opt/coder/main.js --rate 5%",
            "credentials": {"oauth_token": SECRET, "api.key": SECRET + "b"},
            "credentials_env": {"CLAUDE_CODE_OAUTH_TOKEN": "oauth_token"}}
    base.update(change)
    return base


def test_valid_credentials_env_is_accepted():
    assert contract.agents_errors([agent()]) == []
    assert contract.agents_errors([agent(credentials_env={"A": "oauth_token", "B_2": "api.key"})]) == []


@pytest.mark.parametrize("mapping, field, text", [
    ({"CLAUDE_CODE_OAUTH_TOKEN": "nope"}, "credentials_env.CLAUDE_CODE_OAUTH_TOKEN",
     "'nope' is not one of the agent's credentials (api.key, oauth_token)"),
    ({"1TOKEN": "oauth_token"}, "credentials_env.1TOKEN", "not a valid environment variable name"),
    ({"MY-TOKEN": "oauth_token"}, "credentials_env.MY-TOKEN", "not a valid environment variable name"),
    ({"A\nB": "oauth_token"}, "credentials_env.A\nB", "not a valid environment variable name"),
    ({"LD_PRELOAD": "oauth_token"}, "credentials_env.LD_PRELOAD", "dynamic loader"),
    ({"GLIBC_TUNABLES": "oauth_token"}, "credentials_env.GLIBC_TUNABLES", "dynamic loader"),
    ({"HOME": "oauth_token"}, "credentials_env.HOME", "set by systemd or the collection"),
    ({"CREDENTIALS_DIRECTORY": "oauth_token"}, "credentials_env.CREDENTIALS_DIRECTORY", "set by systemd"),
    ({"LOG_LEVEL": "oauth_token"}, "credentials_env.LOG_LEVEL", "also set in environment"),
    ({"TOKEN": ["oauth_token"]}, "credentials_env.TOKEN", "is not one of the agent's credentials"),
    ({}, "credentials_env", "non-empty mapping"),
    (["oauth_token"], "credentials_env", "non-empty mapping"),
])
def test_bad_credentials_env_names_agent_and_variable(mapping, field, text):
    errors = contract.agents_errors([agent(credentials_env=mapping, environment={"LOG_LEVEL": "info"})])
    assert any(e.startswith("agentops_agents[coder].%s: " % field) and text in e for e in errors), errors
    assert not any(SECRET in e for e in errors)


def test_a_credential_of_another_agent_is_unknown():
    other = {"name": "other", "command": "/bin/true", "credentials": {"shared": "x"}}
    errors = contract.agents_errors([other, agent(credentials_env={"T": "shared"})])
    assert errors == ["agentops_agents[coder].credentials_env.T: 'shared' is not one of the agent's credentials "
                      "(api.key, oauth_token)"]


def test_credentials_env_is_an_agent_key():
    assert "credentials_env" in contract.AGENT_KEYS


def test_exec_start_goes_through_agentops_exec_with_names_only():
    entry = contract.agents_normalize([agent(credentials_env={"B": "api.key", "A": "oauth_token"})], DEFAULTS)[0]
    assert entry["exec_start"] == ("/usr/local/bin/agentops exec coder --env=A=oauth_token --env=B=api.key -- "
                                   "/usr/bin/node /opt/coder/main.js --rate 5%%")
    assert SECRET not in repr(entry)
    assert entry["credentials_env"] == {"A": "oauth_token", "B": "api.key"}


def test_exec_start_is_the_command_without_credentials_env():
    plain = dict(agent())
    del plain["credentials_env"]
    entry = contract.agents_normalize([plain], DEFAULTS)[0]
    assert entry["exec_start"] == "/usr/bin/node /opt/coder/main.js --rate 5%%"
