"""Reading the host and agent configuration written by the roles.

Layout (all written by Ansible, root-owned):
  <config_dir>/agentops.json           host settings and alert channels (0600, holds secrets)
  <config_dir>/agents.d/<name>.json    one file per agent (0600)
  <config_dir>/credentials/<name>/<c>  credential files (0600), directory 0700
"""
import json
import os

DEFAULT_HOST_CONFIG = {
    "host": None,
    "alert_channels": [],
    "alert_repeat_seconds": 4 * 3600,
    "alert_timeout_seconds": 10,
    "disk_threshold_percent": 90,
    "rotation": {"grace_days": 7, "timeout_seconds": 120},
}


class ConfigError(Exception):
    """The configuration on the host is missing or malformed."""


def _read_json(path):
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ConfigError("%s is not valid JSON: %s" % (path, exc))


def load_host_config(config_dir):
    data = dict(DEFAULT_HOST_CONFIG)
    found = _read_json(os.path.join(config_dir, "agentops.json"))
    if found:
        data.update(found)
    if not data.get("host"):
        data["host"] = os.uname().nodename
    return data


def agent_names(config_dir):
    directory = os.path.join(config_dir, "agents.d")
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    return [e[: -len(".json")] for e in entries if e.endswith(".json") and not e.startswith(".")]


def load_agent(config_dir, name):
    data = _read_json(os.path.join(config_dir, "agents.d", name + ".json"))
    if data is None:
        raise ConfigError("unknown agent %r (no %s/agents.d/%s.json)" % (name, config_dir, name))
    data.setdefault("name", name)
    data.setdefault("unit", "agentops-%s.service" % name)
    data.setdefault("credentials_dir", os.path.join(config_dir, "credentials", name))
    data.setdefault("auth_checks", [])
    data.setdefault("token_rotation", [])
    data.setdefault("heartbeat", None)
    return data


def load_agents(config_dir):
    return [load_agent(config_dir, n) for n in agent_names(config_dir)]


def read_credential(agent, credential):
    """Return the value of one credential of an agent (stripped of the final newline)."""
    path = os.path.join(agent["credentials_dir"], credential)
    with open(path, "r", encoding="utf-8") as handle:
        return handle.read().rstrip("\r\n")
