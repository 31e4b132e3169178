"""Reading the host and agent configuration written by the roles.

Layout (all written by Ansible, root-owned):
  <config_dir>/agentops.json           host settings and alert channels (0600, holds secrets)
  <config_dir>/agents.d/<name>.json    one file per agent (0600)
  <config_dir>/credentials/<name>/<c>  credential files (0600), directory 0700

Every file is read with a bound (``MAX_JSON_BYTES``, ``MAX_CREDENTIAL_BYTES``), only when it is a
regular file, and a malformed one raises ``ConfigError`` naming the file and what is wrong with
it. An agent file that is not a JSON object, or whose fields have the wrong type, makes only that
agent broken: callers catch ``ConfigError`` per agent (``iter_agents``) and carry on with the others.
"""
import json
import os
import stat

from agentops_lib import agentops_contract
from agentops_lib import agentops_safefile as safefile

MAX_JSON_BYTES = 1024 * 1024
MAX_CREDENTIAL_BYTES = 1024 * 1024

DEFAULT_HOST_CONFIG = {
    "host": None,
    "alert_channels": [],
    "alert_repeat_seconds": 4 * 3600,
    "alert_timeout_seconds": 10,
}
# <config_dir>/rotation.json, written by the token_rotation role (the one owner of these settings).
DEFAULT_ROTATION_CONFIG = {"grace_days": 7, "timeout_seconds": 120}
# <config_dir>/auth.json, written by the auth role (agentops_auth_timeout): the time an auth check
# without a timeout of its own may take, at session start (check-auth), in the heartbeat and in rotation.
DEFAULT_AUTH_CONFIG = {"timeout_seconds": 10}

# Fields of an agent file the on-host command relies on, and the JSON types each may have.
_AGENT_FIELDS = (
    ("name", (str,), False),
    ("unit", (str,), False),
    ("user", (str,), True),
    ("state", (str,), False),
    ("state_dir", (str,), True),
    ("credentials_dir", (str,), False),
    ("credentials", (list,), True),
    ("auth_checks", (list,), True),
    ("token_rotation", (list,), True),
    ("heartbeat", (dict,), True),
)
_TYPE_NAMES = {str: "a string", list: "a list", dict: "a mapping (JSON object)"}


class ConfigError(Exception):
    """The configuration on the host is missing or malformed."""


def _json_type(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def read_bounded(path, limit):
    """The bytes of the regular file ``path`` (at most ``limit``); FileNotFoundError when absent.

    Read through ``agentops_safefile.read_path``: walked from ``/`` without following a symlink that a
    user other than root could have planted, opened non-blocking (a FIFO cannot hang the caller),
    checked with fstat and read with a bound. Raises ConfigError for anything else.
    """
    try:
        return safefile.read_path(path, max_bytes=limit, hardlinks=True)
    except FileNotFoundError:
        raise
    except safefile.UnsafeEntry as exc:
        if exc.found == "too large":
            raise ConfigError("%s is larger than %d KiB" % (path, limit // 1024))
        if exc.found in ("fifo", "directory", "not a regular file"):
            raise ConfigError("%s is not a regular file (%s)" % (path, exc.found))
        raise ConfigError(exc.message)
    except OSError as exc:
        raise ConfigError("%s cannot be read: %s" % (path, exc.strerror or exc))


def parse_json(data, path):
    """JSON from bytes; ConfigError naming ``path`` when it is not UTF-8 JSON (deep nesting included)."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("%s is not UTF-8 text" % path)
    except RecursionError:
        raise ConfigError("%s is not valid JSON: nested too deeply" % path)
    except ValueError as exc:
        raise ConfigError("%s is not valid JSON: %s" % (path, exc))


def _read_json(path):
    try:
        data = read_bounded(path, MAX_JSON_BYTES)
    except FileNotFoundError:
        return None
    return parse_json(data, path)


def _read_object(path):
    """The JSON object in ``path``; None when the file is absent, ConfigError when it holds anything else."""
    found = _read_json(path)
    if found is not None and not isinstance(found, dict):
        raise ConfigError("%s must hold a JSON object, not %s" % (path, _json_type(found)))
    return found


def load_host_config(config_dir):
    data = dict(DEFAULT_HOST_CONFIG)
    found = _read_object(os.path.join(config_dir, "agentops.json"))
    if found:
        data.update(found)
    if not data.get("host"):
        data["host"] = os.uname().nodename
    return data


def _load_settings(config_dir, name, defaults):
    """``defaults`` updated from ``<config_dir>/<name>`` (whole numbers >= 0); a bad value keeps its default."""
    data = dict(defaults)
    found = _read_object(os.path.join(config_dir, name))
    for key, default in defaults.items():
        value = (found or {}).get(key, default)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            data[key] = value
    return data


def load_rotation_config(config_dir):
    """The rotation settings (grace_days, timeout_seconds); defaults for a missing file or a bad value."""
    return _load_settings(config_dir, "rotation.json", DEFAULT_ROTATION_CONFIG)


def load_auth_config(config_dir):
    """The auth check settings (timeout_seconds); defaults for a missing file or a bad value."""
    data = _load_settings(config_dir, "auth.json", DEFAULT_AUTH_CONFIG)
    if data["timeout_seconds"] < 1:
        data["timeout_seconds"] = DEFAULT_AUTH_CONFIG["timeout_seconds"]
    return data


def agent_names(config_dir):
    directory = os.path.join(config_dir, "agents.d")
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    return [e[: -len(".json")] for e in entries if e.endswith(".json") and not e.startswith(".")]


def agent_path(config_dir, name):
    return os.path.join(config_dir, "agents.d", name + ".json")


def check_agent(data, path, name):
    """Raise ConfigError when an agent's data is not an object or a field has the wrong type."""
    if not isinstance(data, dict):
        raise ConfigError("%s must hold a JSON object (the agent's settings), not %s" % (path, _json_type(data)))
    for field, types, nullable in _AGENT_FIELDS:
        if field not in data or (nullable and data[field] is None):
            continue
        value = data[field]
        if not isinstance(value, types) or isinstance(value, bool):
            raise ConfigError("%s: %r must be %s, not %s" % (path, field, _TYPE_NAMES[types[0]], _json_type(value)))
    if "name" in data and data["name"] != name:
        raise ConfigError("%s: 'name' is %r but the file is named for agent %r" % (path, data["name"], name))
    for field in ("state_dir", "credentials_dir"):
        if data.get(field) is not None and not os.path.isabs(data[field]):
            raise ConfigError("%s: %r must be an absolute path, got %r" % (path, field, data[field]))


def load_agent(config_dir, name):
    """The settings of one agent with defaults. ConfigError when missing or malformed (the message names the file)."""
    if not name or "/" in name or name.startswith(".") or "\x00" in name:
        raise ConfigError("unknown agent %r (not a valid agent name)" % (name,))
    path = agent_path(config_dir, name)
    data = _read_json(path)
    if data is None:
        raise ConfigError("unknown agent %r (no %s/agents.d/%s.json)" % (name, config_dir, name))
    check_agent(data, path, name)
    problems = agentops_contract.agent_config_errors(dict(data, name=data.get("name") or name))
    if problems:
        raise ConfigError("%s: %s" % (path, "; ".join(problems)))
    data.setdefault("name", name)
    data.setdefault("unit", "agentops-%s.service" % name)
    data.setdefault("credentials_dir", os.path.join(config_dir, "credentials", name))
    for field in ("auth_checks", "token_rotation"):
        if data.get(field) is None:
            data[field] = []
    data.setdefault("heartbeat", None)
    return data


def iter_agents(config_dir):
    """(name, agent, None) for every readable agent file, (name, None, error text) for a broken one."""
    for name in agent_names(config_dir):
        try:
            yield name, load_agent(config_dir, name), None
        except ConfigError as exc:
            yield name, None, str(exc)


def load_agents(config_dir):
    return [load_agent(config_dir, n) for n in agent_names(config_dir)]


def credential_path(agent, credential):
    return os.path.join(agent["credentials_dir"], credential)


def read_credential(agent, credential):
    """Return the value of one credential of an agent (stripped of the final newline).

    FileNotFoundError when the file is absent; ConfigError when it is not a regular file, is
    larger than ``MAX_CREDENTIAL_BYTES`` or is not UTF-8 text (the value is never shown).
    """
    path = credential_path(agent, credential)
    data = read_bounded(path, MAX_CREDENTIAL_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("%s is not UTF-8 text" % path)
    return text.rstrip("\r\n")

