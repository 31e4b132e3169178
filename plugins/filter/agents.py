# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)
"""Validation and normalisation of ``agentops_agents`` (the per-host agent inventory).

Runs on the controller only. ``agents_errors`` returns one message per problem,
each naming the agent and the field, so the role can fail before it changes anything.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.agentops.fleet.plugins.module_utils.agentops_timespan import parse_timespan
from ansible_collections.agentops.fleet.plugins.module_utils.agentops_systemd import parse_show
from ansible_collections.agentops.fleet.plugins.module_utils import agentops_contract as contract

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}\Z")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
CRED_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
CHECK_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
HOURS_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)\Z")
SIZE_RE = contract.SIZE_RE
QUOTA_RE = contract.QUOTA_RE
TASKS_RE = contract.TASKS_RE
CONTROL_RE = contract.UNSAFE_CHARS_RE
# Environment variables that the dynamic loader (or glibc) acts on before any program of the
# unit runs: the root helper of ExecStartPre=+ would load the agent's code with them.
LOADER_ENV_RE = re.compile(r"^(LD_[A-Z0-9_]*|GCONV_PATH|GLIBC_TUNABLES|LOCPATH|NLSPATH|HOSTALIASES|MALLOC_[A-Z0-9_]*)\Z")
HARDENING = ("strict", "standard", "none")
PROGRESS = ("journal", "file", "command")
AUTH_TYPES = ("http", "jwt", "command", "file")

AGENT_KEYS = (
    "name", "command", "state", "enabled", "user", "description", "environment", "credentials",
    "auth_checks", "heartbeat", "token_rotation", "failure_modes", "hardening", "read_write_paths",
    "restart_sec", "timeout_stop_sec", "start_limit_interval_sec", "start_limit_burst",
    "memory_max", "cpu_quota", "tasks_max", "share_user",
)
HEARTBEAT_KEYS = ("interval", "max_silence", "progress", "file", "command", "active_hours", "workstate_max_age")
AUTH_KEYS = ("name", "type", "url", "method", "headers", "credential", "username", "expect_status", "timeout",
             "validate_certs", "min_valid", "fail_on_expiring", "command", "expect_regex", "path", "max_age")
ROTATION_KEYS = ("credential", "every_days", "command", "timeout")
FAILURE_MODE_KEYS = ("tool", "on_failure")

HEARTBEAT_DEFAULTS = {"interval": "5min", "max_silence": "30min", "progress": "journal", "file": "heartbeat",
                      "command": None, "active_hours": None, "workstate_max_age": None}
TIMESPAN_FIELDS = ("restart_sec", "timeout_stop_sec", "start_limit_interval_sec")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _as_int(value):
    """int for ints and digit strings, else None (booleans are not numbers)."""
    if _is_int(value):
        return value
    if isinstance(value, str) and re.match(r"^\d+\Z", value.strip()):
        return int(value.strip())
    return None


def _is_timespan(value):
    return contract.timespan_problem(value) is None


def _why(value):
    problem = contract.unit_value_problem(value) if isinstance(value, str) else None
    return " (%s)" % problem if problem else ""


def _clean_str(value):
    return isinstance(value, str) and value.strip() != "" and not CONTROL_RE.search(value)


def _abs_command(value):
    return _clean_str(value) and value.strip().startswith("/") and contract.unit_value_problem(value) is None


class _Errors:
    def __init__(self):
        self.items = []

    def add(self, where, message):
        self.items.append("%s: %s" % (where, message))


def _unknown(errors, where, data, allowed):
    for key in data:
        if key not in allowed:
            errors.add("%s.%s" % (where, key), "unknown key (allowed: %s)" % ", ".join(allowed))


def _label(agent, index):
    name = agent.get("name") if isinstance(agent, dict) else None
    if isinstance(name, str) and name:
        return "agentops_agents[%s]" % (name if NAME_RE.match(name) else repr(name))
    return "agentops_agents[%d]" % index


def _check_heartbeat(errors, where, heartbeat):
    if not isinstance(heartbeat, dict):
        errors.add(where, "must be a mapping with the keys %s" % ", ".join(HEARTBEAT_KEYS))
        return
    _unknown(errors, where, heartbeat, HEARTBEAT_KEYS)
    for key in ("interval", "max_silence", "workstate_max_age"):
        if key in heartbeat and heartbeat[key] is not None and not _is_timespan(heartbeat[key]):
            errors.add("%s.%s" % (where, key), "%r is not a systemd time span" % (heartbeat[key],))
    for key in ("interval", "max_silence"):
        if key in heartbeat and heartbeat[key] is None:
            errors.add("%s.%s" % (where, key), "must be a systemd time span, not empty")
    progress = heartbeat.get("progress", "journal")
    if progress not in PROGRESS:
        errors.add(where + ".progress", "%r is not one of %s" % (progress, ", ".join(PROGRESS)))
    if progress == "command" and not _abs_command(heartbeat.get("command")):
        errors.add(where + ".command", "progress: command needs a command (an absolute path)")
    elif heartbeat.get("command") is not None and not _abs_command(heartbeat.get("command")):
        errors.add(where + ".command", "%r is not an absolute path" % (heartbeat.get("command"),))
    if "file" in heartbeat:
        value = heartbeat["file"]
        if not _clean_str(value) or value.startswith("/") or ".." in value.split("/"):
            errors.add(where + ".file", "%r must be a path relative to the state directory" % (value,))
    hours = heartbeat.get("active_hours")
    if hours is not None and not (isinstance(hours, str) and HOURS_RE.match(hours)):
        errors.add(where + ".active_hours", "%r is not HH:MM-HH:MM (e.g. 08:00-20:00)" % (hours,))


def _check_auth(errors, where, checks, credentials):
    if not isinstance(checks, list):
        errors.add(where, "must be a list of auth checks")
        return
    seen = set()
    for index, check in enumerate(checks):
        here = "%s[%d]" % (where, index)
        if not isinstance(check, dict):
            errors.add(here, "must be a mapping")
            continue
        if isinstance(check.get("name"), str):
            here = "%s[%s]" % (where, check["name"])
        _unknown(errors, here, check, AUTH_KEYS)
        name = check.get("name")
        if not (isinstance(name, str) and CHECK_NAME_RE.match(name)):
            errors.add(here + ".name", "required, letters, digits, '.', '_' or '-' (got %r)" % (name,))
        elif name in seen:
            errors.add(here + ".name", "duplicate auth check name %r" % name)
        seen.add(name)
        kind = check.get("type")
        if kind not in AUTH_TYPES:
            errors.add(here + ".type", "%r is not one of %s" % (kind, ", ".join(AUTH_TYPES)))
        cred = check.get("credential")
        if cred is not None and cred not in credentials:
            errors.add(here + ".credential", "%r is not one of the agent's credentials (%s)"
                       % (cred, ", ".join(sorted(credentials)) or "none"))
        if kind == "http":
            url = check.get("url")
            if not (isinstance(url, str) and re.match(r"^https?://[^\s]+\Z", url)):
                errors.add(here + ".url", "type http needs an http(s) URL (got %r)" % (url,))
        if kind == "jwt" and cred is None:
            errors.add(here + ".credential", "type jwt needs the credential that holds the token")
        if kind == "command" and not _abs_command(check.get("command")):
            errors.add(here + ".command", "type command needs a command (an absolute path)")
        if kind == "file" and cred is None and not (_clean_str(check.get("path")) and check["path"].startswith("/")):
            errors.add(here + ".credential", "type file needs a credential or an absolute path")
        if "expect_status" in check:
            statuses = check["expect_status"]
            statuses = statuses if isinstance(statuses, list) else [statuses]
            if not statuses or not all(_is_int(s) and 100 <= s <= 599 for s in statuses):
                errors.add(here + ".expect_status", "%r must be HTTP status codes (100-599)" % (check["expect_status"],))
        for key in ("min_valid", "max_age"):
            if key in check and not _is_timespan(check[key]):
                errors.add("%s.%s" % (here, key), "%r is not a systemd time span" % (check[key],))
        if "timeout" in check and not (isinstance(check["timeout"], (int, float)) and not isinstance(check["timeout"], bool)
                                       and check["timeout"] > 0):
            errors.add(here + ".timeout", "%r must be a number of seconds > 0" % (check["timeout"],))
        for key in ("validate_certs", "fail_on_expiring"):
            if key in check and not isinstance(check[key], bool):
                errors.add("%s.%s" % (here, key), "must be true or false")
        if "headers" in check and not isinstance(check["headers"], dict):
            errors.add(here + ".headers", "must be a mapping")


def _check_rotation(errors, where, rotations, credentials):
    if not isinstance(rotations, list):
        errors.add(where, "must be a list")
        return
    seen = set()
    for index, entry in enumerate(rotations):
        here = "%s[%d]" % (where, index)
        if not isinstance(entry, dict):
            errors.add(here, "must be a mapping with the keys %s" % ", ".join(ROTATION_KEYS))
            continue
        if isinstance(entry.get("credential"), str):
            here = "%s[%s]" % (where, entry["credential"])
        _unknown(errors, here, entry, ROTATION_KEYS)
        cred = entry.get("credential")
        if cred not in credentials:
            errors.add(here + ".credential", "%r is not one of the agent's credentials (%s)"
                       % (cred, ", ".join(sorted(credentials)) or "none"))
        elif cred in seen:
            errors.add(here + ".credential", "%r is rotated twice" % cred)
        seen.add(cred)
        if "every_days" in entry:
            days = _as_int(entry["every_days"])
            if days is None:
                errors.add(here + ".every_days", "%r is not a number of days: give every_days as an integer >= 1 "
                           "(cron expressions such as '*/45' cannot say 'every 45 days')" % (entry["every_days"],))
            elif days < 1:
                errors.add(here + ".every_days", "%r must be an integer >= 1 (days)" % (entry["every_days"],))
        if not _abs_command(entry.get("command")):
            errors.add(here + ".command", "required: the command (an absolute path) that prints the new token")
        if "timeout" in entry:
            seconds = _as_int(entry["timeout"])
            if seconds is None or seconds < 1:
                errors.add(here + ".timeout", "%r must be a whole number of seconds >= 1" % (entry["timeout"],))


def _check_agent(errors, agent, index, names):
    where = _label(agent, index)
    if not isinstance(agent, dict):
        errors.add(where, "must be a mapping")
        return
    _unknown(errors, where, agent, AGENT_KEYS)
    name = agent.get("name")
    problem = contract.agent_name_problem(name)
    if problem:
        errors.add(where + ".name", problem)
    elif name in names:
        errors.add(where + ".name", "duplicate agent name %r on this host" % name)
    names.add(name)
    state = agent.get("state", "present")
    if state not in ("present", "absent"):
        errors.add(where + ".state", "%r is not present or absent" % (state,))
    if state == "present" or "command" in agent:
        problem = contract.command_problem(agent.get("command"))
        if problem:
            errors.add(where + ".command", "%r must be an absolute path (with optional arguments, one line): %s"
                       % (agent.get("command"), problem))
    if "enabled" in agent and not isinstance(agent["enabled"], bool):
        errors.add(where + ".enabled", "must be true or false")
    if "user" in agent and not (isinstance(agent["user"], str) and USER_RE.match(agent["user"])
                                and agent["user"] != "root"):
        errors.add(where + ".user", "%r is not a valid non-root user name" % (agent["user"],))
    if "description" in agent and not (_clean_str(agent["description"])
                                       and contract.unit_value_problem(agent["description"]) is None):
        errors.add(where + ".description", "must be a one-line string%s" % _why(agent["description"]))
    if "share_user" in agent and not isinstance(agent["share_user"], bool):
        errors.add(where + ".share_user", "must be true or false")
    env = agent.get("environment", {})
    if not isinstance(env, dict):
        errors.add(where + ".environment", "must be a mapping of variable names to values")
    else:
        for key, value in env.items():
            if not (isinstance(key, str) and ENV_KEY_RE.match(key)):
                errors.add("%s.environment.%s" % (where, key), "is not a valid variable name")
            elif LOADER_ENV_RE.match(key):
                errors.add("%s.environment.%s" % (where, key),
                           "is read by the dynamic loader before any program of the unit runs, the root "
                           "ExecStartPre= helper included; set it in the agent's own wrapper script instead")
            elif isinstance(value, (dict, list)) or value is None or (isinstance(value, str) and CONTROL_RE.search(value)):
                errors.add("%s.environment.%s" % (where, key), "must be a one-line scalar value")
    creds = agent.get("credentials", {})
    if not isinstance(creds, dict):
        errors.add(where + ".credentials", "must be a mapping of credential names to values")
        creds = {}
    for key, value in creds.items():
        if not (isinstance(key, str) and CRED_RE.match(key)):
            errors.add("%s.credentials.%s" % (where, key), "is not a valid credential name ([A-Za-z0-9_.-], no '/')")
        elif key.endswith(".prev") or key.endswith(".tmp"):
            errors.add("%s.credentials.%s" % (where, key), "names ending in .prev or .tmp are reserved for the "
                       "previous token kept by rotation (<credential>.prev) and its temporary files")
        elif not isinstance(value, str) or value == "":
            errors.add("%s.credentials.%s" % (where, key), "must be a non-empty string (value not shown)")
    if "auth_checks" in agent:
        _check_auth(errors, where + ".auth_checks", agent["auth_checks"], creds)
    if "heartbeat" in agent and agent["heartbeat"] is not None:
        _check_heartbeat(errors, where + ".heartbeat", agent["heartbeat"])
    if "token_rotation" in agent:
        _check_rotation(errors, where + ".token_rotation", agent["token_rotation"], creds)
    modes = agent.get("failure_modes", [])
    if not isinstance(modes, list):
        errors.add(where + ".failure_modes", "must be a list of {tool, on_failure}")
    else:
        for mindex, mode in enumerate(modes):
            here = "%s.failure_modes[%d]" % (where, mindex)
            if not isinstance(mode, dict):
                errors.add(here, "must be a mapping with the keys tool, on_failure")
                continue
            _unknown(errors, here, mode, FAILURE_MODE_KEYS)
            for key in FAILURE_MODE_KEYS:
                if not _clean_str(mode.get(key)):
                    errors.add("%s.%s" % (here, key), "required, one line of text")
    if "hardening" in agent and agent["hardening"] not in HARDENING:
        errors.add(where + ".hardening", "%r is not one of %s" % (agent["hardening"], ", ".join(HARDENING)))
    paths = agent.get("read_write_paths", [])
    problem = contract.path_list_problem(paths)
    if problem:
        errors.add(where + ".read_write_paths", problem)
    for key in TIMESPAN_FIELDS:
        if key in agent and not _is_timespan(agent[key]):
            errors.add("%s.%s" % (where, key), "%r is not a systemd time span" % (agent[key],))
    if "start_limit_burst" in agent and not (_is_int(agent["start_limit_burst"]) and agent["start_limit_burst"] >= 1):
        errors.add(where + ".start_limit_burst", "%r must be an integer >= 1" % (agent["start_limit_burst"],))
    if "memory_max" in agent and (isinstance(agent["memory_max"], bool) or not SIZE_RE.match(str(agent["memory_max"]))):
        errors.add(where + ".memory_max", "%r is not a size (e.g. 512M, 2G, 50%%, infinity)" % (agent["memory_max"],))
    if "cpu_quota" in agent and not (isinstance(agent["cpu_quota"], str) and QUOTA_RE.match(agent["cpu_quota"])):
        errors.add(where + ".cpu_quota", "%r is not a percentage (e.g. 50%%, 200%%)" % (agent["cpu_quota"],))
    if "tasks_max" in agent and (isinstance(agent["tasks_max"], bool) or not TASKS_RE.match(str(agent["tasks_max"]))):
        errors.add(where + ".tasks_max", "%r is not a number of tasks, a percentage or infinity" % (agent["tasks_max"],))


def agents_errors(agents):
    """Return the list of problems in agentops_agents (empty when it is valid)."""
    errors = _Errors()
    if agents is None:
        return []
    if not isinstance(agents, list):
        return ["agentops_agents: must be a list of agents"]
    names = set()
    for index, agent in enumerate(agents):
        _check_agent(errors, agent, index, names)
    _check_shared_users(errors, agents)
    return errors.items


def _effective_user(agent):
    user = agent.get("user")
    return user if isinstance(user, str) and user else "agent-%s" % agent.get("name")


def _check_shared_users(errors, agents):
    """Agents must not share a uid: the same user for two agents needs share_user: true on each."""
    users = {}
    for agent in agents:
        if isinstance(agent, dict) and agent.get("state", "present") == "present":
            users.setdefault(_effective_user(agent), []).append(agent.get("name"))
    for index, agent in enumerate(agents):
        if not isinstance(agent, dict) or agent.get("state", "present") != "present" or agent.get("share_user") is True:
            continue
        others = [n for n in users.get(_effective_user(agent), []) if n != agent.get("name")]
        if others:
            errors.add(_label(agent, index) + ".user", "%r is also the user of agent(s) %s: agents must not share a "
                       "user (one agent could read and change the other's state); set share_user: true on each "
                       "agent that shares it on purpose" % (_effective_user(agent), ", ".join(map(str, others))))


def agents_user_errors(agents, passwd):
    """Problems of agent users that already exist on the host and are not the agent's own.

    ``passwd`` is ``ansible_facts.getent_passwd`` ({user: [pw, uid, gid, gecos, home, shell]}).
    A user is the agent's own when its GECOS comment is the one the agents role gives it
    ("agentops agent <name>"); any other existing user (daemon, www-data, a person, another
    agent's user) is refused unless the agent sets share_user: true.
    """
    errors = _Errors()
    for index, agent in enumerate(agents or []):
        if not isinstance(agent, dict) or agent.get("state", "present") != "present" or agent.get("share_user") is True:
            continue
        user = _effective_user(agent)
        entry = (passwd or {}).get(user)
        if entry is None:
            continue
        gecos = entry[3] if isinstance(entry, (list, tuple)) and len(entry) > 3 else None
        if gecos != "agentops agent %s" % agent.get("name"):
            errors.add(_label(agent, index) + ".user", "%r already exists on this host and is not this agent's own "
                       "user (uid %s, comment %r): an agent must not run as a system or shared account; choose "
                       "another user or set share_user: true" % (user, entry[1] if len(entry) > 1 else "?", gecos))
    return errors.items


def settings_errors(settings):
    """Problems of the role variables that reach units, drop-ins, timers and cron."""
    return contract.settings_errors(settings)


def _escape_specifiers(value):
    return str(value).replace("%", "%%")


def _env_line(key, value):
    if isinstance(value, bool):
        value = "true" if value else "false"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return '"%s=%s"' % (key, _escape_specifiers(text))


def agents_normalize(agents, defaults):
    """Effective settings of every agent (no secret values: credential names only)."""
    result = []
    config_dir = defaults["config_dir"]
    state_root = defaults["state_dir"]
    for agent in agents or []:
        name = agent["name"]
        creds = sorted((agent.get("credentials") or {}).keys())
        rotated = sorted(r["credential"] for r in agent.get("token_rotation") or [])
        heartbeat = agent.get("heartbeat")
        if heartbeat is not None:
            merged = dict(HEARTBEAT_DEFAULTS)
            merged.update(heartbeat)
            for key in ("interval", "max_silence", "workstate_max_age"):
                if merged[key] is not None:
                    merged[key] = str(merged[key])
            heartbeat = dict((k, merged[k]) for k in HEARTBEAT_KEYS)
        user = agent.get("user") or "agent-%s" % name
        entry = {
            "name": name,
            "unit": "agentops-%s.service" % name,
            "state": agent.get("state", "present"),
            "enabled": agent.get("enabled", True),
            "user": user,
            "description": _escape_specifiers(agent.get("description") or "agentops agent %s" % name),
            "command": agent.get("command"),
            "exec_start": _escape_specifiers(agent.get("command") or ""),
            "state_dir": "%s/%s" % (state_root, name),
            "credentials_dir": "%s/credentials/%s" % (config_dir, name),
            "config_file": "%s/agents.d/%s.json" % (config_dir, name),
            "credentials": creds,
            "rotated_credentials": rotated,
            "environment_lines": [_env_line(k, v) for k, v in sorted((agent.get("environment") or {}).items())],
            "auth_checks": agent.get("auth_checks") or [],
            "heartbeat": heartbeat,
            "token_rotation": [
                dict({"credential": r["credential"], "every_days": _as_int(r.get("every_days", defaults["every_days"])),
                      "command": r["command"]}, **({"timeout": _as_int(r["timeout"])} if "timeout" in r else {}))
                for r in agent.get("token_rotation") or []
            ],
            "failure_modes": agent.get("failure_modes") or [],
            "hardening": agent.get("hardening", defaults["hardening"]),
            "read_write_paths": [_escape_specifiers(p) for p in agent.get("read_write_paths") or []],
        }
        for key in ("restart_sec", "timeout_stop_sec", "start_limit_interval_sec", "start_limit_burst",
                    "memory_max", "cpu_quota", "tasks_max"):
            entry[key] = str(agent.get(key, defaults[key]))
        entry["config"] = {
            "name": name, "unit": entry["unit"], "user": user, "state_dir": entry["state_dir"],
            "credentials_dir": entry["credentials_dir"], "credentials": creds, "enabled": entry["enabled"],
            "state": entry["state"], "auth_checks": entry["auth_checks"], "heartbeat": heartbeat,
            "token_rotation": entry["token_rotation"],
        }
        result.append(entry)
    return result


TICK_FLOOR = 5.0


def _span(seconds):
    """Seconds as a systemd time span ("15s", "1min", "1.5s")."""
    if seconds >= 60 and seconds % 60 == 0:
        return "%dmin" % (seconds // 60)
    if seconds == int(seconds):
        return "%ds" % seconds
    return "%gs" % seconds


def heartbeat_tick(agents, tick):
    """The heartbeat timer's period on a host: ``tick``, or the shortest heartbeat interval of its agents.

    The tick bounds every detection (a 1-minute tick turns ``interval: 15s`` into 60 s), so it
    follows the shortest ``interval`` the host's present agents ask for (their default interval when
    they set a heartbeat without one); an interval-derived tick never goes below 5 s, a shorter
    ``tick`` set on purpose is kept. Returns a systemd time span.
    """
    seconds = parse_timespan(tick)
    for agent in agents or []:
        if not isinstance(agent, dict) or agent.get("state", "present") != "present" or agent.get("heartbeat") is None:
            continue
        interval = (agent.get("heartbeat") or {}).get("interval") or HEARTBEAT_DEFAULTS["interval"]
        seconds = min(seconds, max(TICK_FLOOR, parse_timespan(interval)))
    return _span(seconds)


def systemctl_show(text):
    """Parse `systemctl show -p ... unit...` output into {Id: {Property: value}}."""
    return parse_show(text)


class FilterModule(object):
    """agentops.fleet agents role filters."""

    def filters(self):
        return {
            "agents_errors": agents_errors,
            "agents_user_errors": agents_user_errors,
            "agents_heartbeat_tick": heartbeat_tick,
            "agentops_settings_errors": settings_errors,
            "agents_normalize": agents_normalize,
            "systemctl_show": systemctl_show,
        }
