# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)
"""The inventory contract of agentops.fleet: rules shared by the controller and the host.

Standard library only: this file is also installed on managed hosts as
``agentops_lib.agentops_contract``.

What lives here:

* the unit-safe value check applied to every string that reaches a unit file, a drop-in,
  a timer or a cron file, whether it comes from an agent entry or from a role variable
  (:func:`unit_value_problem`);
* the escaping of ``%`` (systemd specifiers: ``%%``; cron: ``\\%``);
* the agent names reserved for the collection's own units (:func:`agent_name_problem`);
* the checks of the role settings that are written into units, drop-ins and cron
  (:func:`settings_errors`).

Every message names the variable (and, for agent fields, the agent) it is about.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import shlex

from .agentops_timespan import parse_timespan

# C0 controls (NUL included), DEL, C1 controls, and the Unicode line and paragraph separators.
# systemd splits unit lines on "\n" only, but a NUL ends a C string, "\r" and friends survive
# into logs and cron, and U+2028/U+2029 are line breaks to every other reader of the file.
UNSAFE_CHARS_RE = re.compile(u"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

AGENT_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}\Z")
# Names of the collection's own units (agentops-<name>.service would overwrite or delete them)
# and of its own state folders under /var/lib/agentops.
RESERVED_AGENT_NAMES = ("alert", "alert-flush", "heartbeat", "rotation")
RESERVED_AGENT_PREFIXES = ("heartbeat-", "alert-")

SIZE_RE = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?[KMGT]?|[0-9]{1,3}%|infinity)\Z")
QUOTA_RE = re.compile(r"^[0-9]{1,5}%\Z")
TASKS_RE = re.compile(r"^(?:[0-9]+|[0-9]{1,3}%|infinity)\Z")
JOURNALD_SIZE_RE = re.compile(r"^[0-9]+(?:\.[0-9]+)?[KMGTPE]?\Z")
JOURNALD_KEY_RE = re.compile(r"^[A-Z][A-Za-z]+\Z")
ABS_PATH_RE = re.compile(r"^/[^\s\"'\\]*\Z")
# Paths of the collection itself (written unescaped into units, timers, cron and JSON): no '%' either.
OWN_PATH_RE = re.compile(r"^/[^\s\"'\\%]*\Z")


def unit_value_problem(value, quoted=False):
    """Why ``value`` cannot go into a unit, drop-in, timer or cron line (None when it can).

    Refused: any C0/C1 control character (NUL, newline, carriage return, tab, ...), DEL,
    U+2028 and U+2029, and, unless the value is written inside quotes that escape
    backslashes, a trailing backslash (systemd and cron would continue the line onto
    the next one and swallow the directive there).
    """
    if value is None or isinstance(value, bool):
        return None
    text = value if isinstance(value, str) else str(value)
    match = UNSAFE_CHARS_RE.search(text)
    if match:
        return "contains the control character U+%04X (no control characters, line or paragraph separators)" % ord(
            match.group(0))
    if not quoted and text.endswith("\\"):
        return "ends with a backslash, which would continue the line onto the next directive"
    return None


def escape_unit(value):
    """Escape systemd specifiers: ``%`` -> ``%%``."""
    return str(value).replace("%", "%%")


def escape_cron(value):
    """Escape cron's newline marker: ``%`` -> ``\\%``."""
    return str(value).replace("%", "\\%")


def agent_name_problem(name):
    """Why ``name`` is not a valid agent name (None when it is)."""
    if not (isinstance(name, str) and AGENT_NAME_RE.match(name)):
        return "%r must match ^[a-z][a-z0-9-]{0,39}$" % (name,)
    if name in RESERVED_AGENT_NAMES or name.startswith(RESERVED_AGENT_PREFIXES):
        return ("%r is reserved for the collection's own units and state (reserved: %s, and names starting with %s)"
                % (name, ", ".join(RESERVED_AGENT_NAMES), " or ".join(RESERVED_AGENT_PREFIXES)))
    return None


# Longest time span accepted anywhere in the contract (ten years): systemd overflows far beyond.
MAX_TIMESPAN = 10 * 365 * 86400


def timespan_problem(value):
    """Why ``value`` is not a systemd time span (None when it is)."""
    if value is None or isinstance(value, bool):
        return "%r is not a systemd time span" % (value,)
    try:
        seconds = parse_timespan(value)
    except (TypeError, ValueError) as exc:
        return "%r is not a systemd time span (%s)" % (value, exc)
    if seconds > MAX_TIMESPAN:
        return "%r is longer than ten years" % (value,)
    return unit_value_problem(value)


def command_problem(value):
    """Why ``value`` cannot be an ExecStart= command line (None when it can).

    An absolute path with optional arguments on one line; quotes must balance, and
    backslashes (C escapes and line continuation in units) and a ";" word (a command
    separator to systemd) are refused.
    """
    if not isinstance(value, str) or not value.strip():
        return "%r must be an absolute path with optional arguments" % (value,)
    problem = unit_value_problem(value)
    if problem:
        return problem
    if "\\" in value:
        return "contains a backslash (write the command without escapes, or wrap it in a script)"
    try:
        words = shlex.split(value)
    except ValueError:
        return "has unbalanced quotes"
    if not words or not words[0].startswith("/"):
        return "must start with an absolute path"
    if ";" in words:
        return "contains a ';' word, which systemd reads as a command separator"
    return None


def _int_problem(value, minimum=None, maximum=None):
    if isinstance(value, bool):
        return "%r is not a whole number" % (value,)
    if isinstance(value, str) and re.match(r"^[0-9]+\Z", value.strip()):
        value = int(value.strip())
    if not isinstance(value, int):
        return "%r is not a whole number" % (value,)
    if minimum is not None and value < minimum:
        return "%r must be >= %d" % (value, minimum)
    if maximum is not None and value > maximum:
        return "%r must be <= %d" % (value, maximum)
    return None


def _regex_problem(regex, what):
    def check(value):
        if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
            return "%r is not %s" % (value, what)
        text = str(value)
        if not regex.match(text):
            return "%r is not %s" % (value, what)
        return unit_value_problem(text)
    return check


def path_problem(value, own=False):
    """Why ``value`` is not an absolute path that can be written into a unit (None when it is).

    ``own``: a path of the collection itself, which must not contain ``%`` either.
    """
    regex = OWN_PATH_RE if own else ABS_PATH_RE
    if not isinstance(value, str) or not regex.match(value) or ".." in value.split("/"):
        return "%r must be an absolute path without whitespace, quotes, backslashes%s or '..'" % (
            value, ", '%'" if own else "")
    return unit_value_problem(value)


def _path_problem(value):
    return path_problem(value, own=True)


def path_list_problem(value):
    """Why ``value`` is not a list of absolute paths for ReadWritePaths= and the like."""
    if not isinstance(value, list):
        return "must be a list of absolute paths"
    for item in value:
        problem = path_problem(item)
        if problem:
            return problem
    return None


def _journald_extra_problem(value):
    if not isinstance(value, dict):
        return "must be a mapping of journald directive names to one-line values"
    for key, item in value.items():
        if not (isinstance(key, str) and JOURNALD_KEY_RE.match(key)):
            return "key %r is not a journald directive name" % (key,)
        if isinstance(item, (dict, list)) or item is None:
            return "%s must be a one-line scalar value" % key
        problem = unit_value_problem(item)
        if problem:
            return "%s %s" % (key, problem)
    return None


def _choice(choices):
    def check(value):
        if value not in choices:
            return "%r is not one of %s" % (value, ", ".join(choices))
        return None
    return check


# Role variables written into units, drop-ins, timers or cron, and how each is checked.
SETTING_CHECKS = {
    # agents role defaults (agent.service.j2)
    "agentops_agents_hardening": _choice(("strict", "standard", "none")),
    "agentops_agents_restart_sec": timespan_problem,
    "agentops_agents_timeout_stop_sec": timespan_problem,
    "agentops_agents_start_limit_interval_sec": timespan_problem,
    "agentops_agents_start_limit_burst": lambda v: _int_problem(v, 1),
    "agentops_agents_memory_max": _regex_problem(SIZE_RE, "a size (e.g. 512M, 2G, 50%, infinity)"),
    "agentops_agents_cpu_quota": _regex_problem(QUOTA_RE, "a percentage (e.g. 50%, 200%)"),
    "agentops_agents_tasks_max": _regex_problem(TASKS_RE, "a number of tasks, a percentage or infinity"),
    "agentops_agents_every_days": lambda v: _int_problem(v, 1),
    "agentops_agents_config_dir": _path_problem,
    "agentops_agents_state_dir": _path_problem,
    "agentops_agents_command": _path_problem,
    "agentops_agents_unit_dir": _path_problem,
    # common role (paths that units, timers and cron name)
    "agentops_common_bin": _path_problem,
    "agentops_common_lib_dir": _path_problem,
    "agentops_common_config_dir": _path_problem,
    "agentops_common_state_dir": _path_problem,
    "agentops_common_spool_dir": _path_problem,
    # heartbeat role (agentops-heartbeat.service / .timer)
    "agentops_heartbeat_tick": timespan_problem,
    "agentops_heartbeat_disk_threshold_percent": lambda v: _int_problem(v, 1, 100),
    "agentops_heartbeat_disk_paths": lambda v: path_list_problem(v) or (
        "must not contain '%'" if any("%" in str(p) for p in v) else None),
    "agentops_heartbeat_command": _path_problem,
    "agentops_heartbeat_unit_dir": _path_problem,
    # alerts role (agentops-alert@.service, agentops-alert-flush.timer)
    "agentops_alert_flush_interval": timespan_problem,
    "agentops_alert_command": _path_problem,
    "agentops_alert_unit_dir": _path_problem,
    # token_rotation role (/etc/cron.d/agentops-token-rotation)
    "agentops_token_rotation_hour": lambda v: _int_problem(v, 0, 23),
    "agentops_token_rotation_minute": lambda v: _int_problem(v, 0, 59),
    "agentops_token_rotation_cron_file": _path_problem,
    # journald role (/etc/systemd/journald.conf.d/agentops.conf)
    "agentops_journald_system_max_use": _regex_problem(JOURNALD_SIZE_RE, "a journald size (e.g. 2G, 500M)"),
    "agentops_journald_system_keep_free": _regex_problem(JOURNALD_SIZE_RE, "a journald size (e.g. 2G, 500M)"),
    "agentops_journald_max_retention_sec": timespan_problem,
    "agentops_journald_extra_settings": _journald_extra_problem,
}
# Settings where "" means "leave the default" (nothing is written).
OPTIONAL_EMPTY = (
    "agentops_journald_system_max_file_size", "agentops_journald_max_file_sec",
    "agentops_journald_rate_limit_interval_sec", "agentops_journald_rate_limit_burst",
)
SETTING_CHECKS.update({
    "agentops_journald_system_max_file_size": _regex_problem(JOURNALD_SIZE_RE, "a journald size (e.g. 128M)"),
    "agentops_journald_max_file_sec": timespan_problem,
    "agentops_journald_rate_limit_interval_sec": timespan_problem,
    "agentops_journald_rate_limit_burst": lambda v: _int_problem(v, 0),
})


def settings_errors(settings):
    """Problems of the role variables in ``settings`` ({variable name: value}); [] when valid.

    Only variables this module knows are checked; each message names the variable.
    """
    errors = []
    for name in sorted(settings or {}):
        check = SETTING_CHECKS.get(name)
        if check is None:
            continue
        value = settings[name]
        if name in OPTIONAL_EMPTY and (value is None or (isinstance(value, str) and value == "")):
            continue
        problem = check(value)
        if problem:
            errors.append("%s: %s" % (name, problem))
    return errors
