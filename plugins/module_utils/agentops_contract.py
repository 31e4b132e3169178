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

import decimal
import difflib
import re
import shlex

from . import agentops_auth
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
_SIZE_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_UINT64 = 1 << 64


def _limit_text(value):
    """The text of a resource limit, or None for a type that never is one (bool, None, a container)."""
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        return None
    return str(value)


def size_problem(value):
    """Why ``value`` is not a memory limit systemd accepts (MemoryMax=, MemoryHigh=); None when it is.

    systemd refuses 0, 0%, a fraction of a byte ("0.5"), more than 100% and more than 2^64 bytes
    ("out of range, ignoring": the unit would run without the limit).
    """
    what = "%r is not a size (e.g. 512M, 2G, 50%%, infinity)" % (value,)
    text = _limit_text(value)
    if text is None or not SIZE_RE.match(text):
        return what
    if text == "infinity":
        return None
    if text.endswith("%"):
        return None if 1 <= int(text[:-1]) <= 100 else what + ": a percentage is 1% to 100% of the memory"
    unit = text[-1] if text[-1] in _SIZE_FACTORS else ""
    number = text[:-1] if unit else text
    if not unit and "." in number:
        return what + ": a fraction of a byte"
    amount = int(decimal.Decimal(number) * _SIZE_FACTORS[unit])
    return None if 1 <= amount < _UINT64 else what + ": out of range"


def tasks_problem(value):
    """Why ``value`` is not a TasksMax= systemd accepts (1 or more tasks, 0% to 100%, infinity); None when it is."""
    what = "%r is not a number of tasks, a percentage or infinity" % (value,)
    text = _limit_text(value)
    if text is None or not TASKS_RE.match(text):
        return what
    if text == "infinity":
        return None
    if text.endswith("%"):
        return None if int(text[:-1]) <= 100 else what + ": a percentage is 0% to 100%"
    return None if 1 <= int(text) < _UINT64 else what + ": out of range (1 or more)"


def quota_problem(value):
    """Why ``value`` is not a CPUQuota= systemd accepts (a percentage above 0); None when it is."""
    what = "%r is not a percentage (e.g. 50%%, 200%%)" % (value,)
    if not isinstance(value, str) or not QUOTA_RE.match(value):
        return what
    return None if int(value[:-1]) >= 1 else what + ": more than 0% is needed"
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


# Transient units the host starts for an agent (agentops_host.sandbox: its heartbeat poll command and its token
# rotation command, each in the agent's own sandbox). They live under the reserved prefix ``heartbeat-``, so no
# agent's unit (agentops-<name>.service) is ever one of them, and the word after it keeps the kinds apart: an agent
# called ``poll-x`` gets agentops-heartbeat-poll-poll-x.service and agentops-heartbeat-rotate-poll-x.service.
TRANSIENT_UNITS = {"poll": "agentops-heartbeat-poll-%s.service", "rotate": "agentops-heartbeat-rotate-%s.service"}
# Settings of such a unit that the runner sets itself (who runs, where, with what, for how long): an agent file
# that lists one among its sandbox directives is refused.
SANDBOX_RUNNER_KEYS = frozenset((
    "User", "Group", "DynamicUser", "SupplementaryGroups", "WorkingDirectory", "RootDirectory", "RootImage",
    "Environment", "EnvironmentFile", "PassEnvironment", "UnsetEnvironment", "Type", "ExecStart", "ExecStartPre",
    "ExecStartPost", "ExecStop", "ExecStopPost", "KillMode", "KillSignal", "SendSIGKILL", "TimeoutStopSec",
    "TimeoutSec", "RuntimeMaxSec", "Description", "StandardInput", "StandardOutput", "StandardError",
    "PAMName", "LoadCredential", "SetCredential", "Slice", "Delegate", "RemainAfterExit", "Restart"))
SANDBOX_KEY_RE = re.compile(r"^[A-Z][A-Za-z0-9]{1,63}\Z")
SANDBOX_MAX_DIRECTIVES = 200


def transient_unit(kind, name):
    """The name of the transient unit of ``kind`` (``poll`` or ``rotate``) for agent ``name``; ValueError otherwise."""
    if kind not in TRANSIENT_UNITS:
        raise ValueError("unknown transient unit kind %r (one of %s)" % (kind, ", ".join(sorted(TRANSIENT_UNITS))))
    problem = agent_name_problem(name)
    if problem:
        raise ValueError("agent name %s" % problem)
    return TRANSIENT_UNITS[kind] % name


def sandbox_problems(sandbox):
    """[(field, text)] of the ``sandbox`` entry of agents.d/<name>.json (empty when it is usable).

    ``{"systemd": <version the list was gated for>, "directives": [[key, value], ...]}``: the limits and hardening
    directives of the agent's unit (``agentops.fleet.agents_files``), as ``systemd-run -p KEY=VALUE`` takes them.
    """
    if not isinstance(sandbox, dict):
        return [("", "must be a mapping with the keys systemd and directives")]
    problems = []
    for key in sorted(k for k in sandbox if k not in ("systemd", "directives")):
        problems.append(("." + str(key), "unknown key"))
    version = sandbox.get("systemd")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        problems.append((".systemd", "%r must be the systemd version the directives were chosen for" % (version,)))
    directives = sandbox.get("directives")
    if not isinstance(directives, list) or len(directives) > SANDBOX_MAX_DIRECTIVES:
        return problems + [(".directives", "must be a list of at most %d [key, value] pairs" % SANDBOX_MAX_DIRECTIVES)]
    for index, item in enumerate(directives):
        here = ".directives[%d]" % index
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(part, str) for part in item)):
            problems.append((here, "must be a [key, value] pair of strings"))
            continue
        key, value = item
        if not SANDBOX_KEY_RE.match(key):
            problems.append((here, "%r is not a directive name" % (key,)))
        elif key in SANDBOX_RUNNER_KEYS:
            problems.append((here, "%s= is set by the runner itself, not by the sandbox list" % key))
        problem = unit_value_problem(value)
        if problem:
            problems.append((here, "the value of %s= %s" % (key, problem)))
    return problems


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


def timespan_seconds(value):
    """Whole seconds (at least 1) of a validated time span, for the on-host configuration."""
    return max(1, int(round(parse_timespan(value))))


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
    if minimum is not None and maximum is not None:
        what = "a whole number between %d and %d" % (minimum, maximum)
    elif minimum is not None:
        what = "a whole number >= %d" % minimum
    else:
        what = "a whole number"
    number = value
    if isinstance(value, str) and re.match(r"^[0-9]+\Z", value.strip()):
        number = int(value.strip())
    if isinstance(number, bool) or not isinstance(number, int):
        return "%r is not %s" % (value, what)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        return "%r is not %s" % (value, what)
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


# [Journal] keys the journald role writes itself: not accepted among the extra settings.
JOURNALD_MANAGED_KEYS = ("Storage", "SystemMaxUse", "SystemKeepFree", "MaxRetentionSec", "SystemMaxFileSize",
                         "MaxFileSec", "RateLimitIntervalSec", "RateLimitBurst", "Compress")


def _journald_extra_problem(value):
    if not isinstance(value, dict):
        return "must be a mapping of journald directive names to one-line values"
    for key, item in value.items():
        if not (isinstance(key, str) and JOURNALD_KEY_RE.match(key)):
            return "%r is not a valid extra [Journal] setting (not a journald directive name)" % (key,)
        if key in JOURNALD_MANAGED_KEYS:
            return ("%s is not a valid extra [Journal] setting: the role manages it (use its own variable)" % key)
        if isinstance(item, (dict, list)) or item is None:
            return "%s is not a valid extra [Journal] setting: the value must be one line of text" % key
        problem = unit_value_problem(item)
        if problem:
            return "%s is not a valid extra [Journal] setting: the value %s" % (key, problem)
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
    "agentops_agents_memory_max": size_problem,
    "agentops_agents_cpu_quota": lambda v: quota_problem(_limit_text(v)),
    "agentops_agents_tasks_max": tasks_problem,
    "agentops_agents_every_days": lambda v: _int_problem(v, 1),
    # heartbeat role (agentops-heartbeat.service / .timer)
    "agentops_heartbeat_tick": timespan_problem,
    "agentops_heartbeat_disk_threshold_percent": lambda v: _int_problem(v, 1, 100),
    "agentops_heartbeat_disk_paths": lambda v: path_list_problem(v) or (
        "must not contain '%'" if any("%" in str(p) for p in v) else None),
    # alerts role (agentops-alert@.service, agentops-alert-flush.timer)
    "agentops_alert_flush_interval": timespan_problem,
    # token_rotation role (/etc/cron.d/agentops-token-rotation)
    "agentops_token_rotation_hour": lambda v: _int_problem(v, 0, 23) and (
        _int_problem(v, 0, 23) + ": the rotation job runs once a day at agentops_token_rotation_hour:"
        "agentops_token_rotation_minute; how often a credential rotates is token_rotation[].every_days "
        "(cron cannot say 'every 45 days')"),
    "agentops_token_rotation_minute": lambda v: _int_problem(v, 0, 59),
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


def _positive_timespan(value):
    problem = timespan_problem(value)
    if problem:
        return problem
    if parse_timespan(value) <= 0:
        return "%r must be more than 0" % (value,)
    return None


def _bool_problem(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
        return None
    return "%r is not true or false" % (value,)


def _one_line(value):
    if not isinstance(value, str) or not value.strip():
        return "%r must be a non-empty one-line string" % (value,)
    return unit_value_problem(value)


def _name_problem(value):
    if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}\Z", value):
        return "%r is not a package or service name" % (value,)
    return None


SETTING_CHECKS.update({
    # alerts role (agentops.json, agentops-alert-flush.timer)
    "agentops_alert_repeat": _positive_timespan,
    "agentops_alert_timeout": _positive_timespan,
    "agentops_alert_retry_after_max": _positive_timespan,
    "agentops_alert_flush_interval": _positive_timespan,
    "agentops_alert_max_age": lambda v: _positive_timespan(v) or (
        "%r is shorter than 1min: spooled alerts would be given up before the flush timer could retry them" % (v,)
        if parse_timespan(v) < 60 else None),
    "agentops_alert_permanent_failures": lambda v: _int_problem(v, 1, 100),
    "agentops_alert_spool_max": lambda v: _int_problem(v, 1, 1000000),
    "agentops_alert_host_name": _one_line,
    # journald role
    "agentops_journald_compress": _bool_problem,
    # token_rotation role
    "agentops_token_rotation_grace_days": lambda v: _int_problem(v, 0, 3650),
    "agentops_token_rotation_timeout_seconds": lambda v: _int_problem(v, 1, 86400),
    "agentops_token_rotation_cron_package": _name_problem,
    "agentops_token_rotation_cron_service": _name_problem,
    # auth role
    "agentops_auth_timeout": lambda v: _int_problem(v, 1, 3600),
    "agentops_auth_fail_on_unreachable": _bool_problem,
    "agentops_auth_check_at_deploy": _bool_problem,
})

# --------------------------------------------------------------------------- dead man's switch
# Who watches the watcher: services pinged by every heartbeat run (agentops_deadman, and per agent
# heartbeat.deadman). The URL usually holds a token (healthchecks UUID, Uptime Kuma push token,
# Cronitor key): messages never show it.
DEADMAN_TYPES = ("healthchecks", "uptime_kuma", "cronitor", "http")
DEADMAN_KEYS = ("type", "url")
DEADMAN_URL_RE = re.compile(r"^https?://[^\s/?#@]+(/[^\s#]*)?(\?[^\s#]*)?\Z")
DEADMAN_MAX = 20


def deadman_problems(entries):
    """(where, text) problems of a dead man's switch list: ``where`` is "" for the list itself or
    ``[<index>]`` / ``[<index>].<field>``; the URL is never part of a message."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        return [("", "must be a list of {type, url} (type: %s)" % ", ".join(DEADMAN_TYPES))]
    problems = []
    if len(entries) > DEADMAN_MAX:
        problems.append(("", "has %d entries, more than %d" % (len(entries), DEADMAN_MAX)))
    seen = set()
    for index, entry in enumerate(entries):
        where = "[%d]" % index
        if not isinstance(entry, dict):
            problems.append((where, "must be a mapping with the keys type and url (type: %s)" % ", ".join(DEADMAN_TYPES)))
            continue
        for key in entry:
            if key not in DEADMAN_KEYS:
                shown = repr(key) if isinstance(key, str) and not UNSAFE_CHARS_RE.search(key) else "(not shown)"
                problems.append(("%s.%s" % (where, key) if shown != "(not shown)" else where,
                                 "unknown key %s (allowed: %s)" % (shown, ", ".join(DEADMAN_KEYS))))
        kind = entry.get("type")
        if kind not in DEADMAN_TYPES:
            shown = repr(kind) if isinstance(kind, str) and not UNSAFE_CHARS_RE.search(kind) else "(not shown)"
            problems.append((where + ".type", "%s is not one of %s" % (shown, ", ".join(DEADMAN_TYPES))))
        url = entry.get("url")
        if not (isinstance(url, str) and DEADMAN_URL_RE.match(url) and not UNSAFE_CHARS_RE.search(url)
                and len(url) <= 2048):
            problems.append((where + ".url", "must be an http:// or https:// URL on one line, without spaces, "
                                             "user:password@ or #fragment, at most 2048 characters (value not shown)"))
        elif (kind, url) in seen:
            problems.append((where + ".url", "the same %s URL is listed twice (value not shown)" % kind))
        seen.add((kind, url))
    return problems


def deadman_errors(entries, variable):
    """Messages (naming ``variable``, e.g. ``agentops_deadman``) for a dead man's switch list."""
    return ["%s%s: %s" % (variable, where, text) for where, text in deadman_problems(entries)]


def _deadman_setting_problem(value):
    problems = deadman_problems(value)
    if not problems:
        return None
    return "; ".join("%s%s" % (("%s " % where) if where else "", text) for where, text in problems)


def _textfile_dir_problem(value):
    if value is None or value == "":
        return None
    problem = path_problem(value, own=True)
    if problem:
        return "%s; an empty string turns the metrics file off" % problem
    return None


def _textfile_dir_setting_problem(value):
    """The inventory's agentops_metrics_textfile_dir: a path (as above), and not one the heartbeat unit's
    PrivateTmp=yes would hide (the host's heartbeat.json is only checked as a path)."""
    problem = _textfile_dir_problem(value)
    if problem or not value:
        return problem
    parts = [p for p in value.split("/") if p]
    if parts[:1] == ["tmp"] or parts[:2] == ["var", "tmp"]:
        return ("%r is under /tmp or /var/tmp: the heartbeat runs with PrivateTmp=yes and would write into its own "
                "private copy, not the directory node_exporter reads" % (value,))
    return None


SETTING_CHECKS.update({
    # heartbeat role (/etc/agentops/heartbeat.json)
    "agentops_deadman": _deadman_setting_problem,
    "agentops_metrics_textfile_dir": _textfile_dir_setting_problem,
})

# The fixed names on the host (DESIGN.md): the roles, the units, the cron line and the on-host
# command all use these, and nothing else. The roles get them as the fact agentops_paths.
PATHS = {
    "bin": "/usr/local/bin/agentops",
    "lib": "/usr/local/lib/agentops",
    "config": "/etc/agentops",
    "state": "/var/lib/agentops",
    "spool": "/var/spool/agentops",
    "runtime": "/run/agentops",
    "units": "/etc/systemd/system",
    "rotation_cron": "/etc/cron.d/agentops-token-rotation",
}

_FIXED = "was removed: the path is fixed at %s (a fixed name of the inventory contract, used by the units, " \
         "the cron line and the on-host command alike); remove the variable from the inventory"
# Variables that were part of the contract once and are gone: setting one fails validation
# with what to do instead (an inventory must not believe a setting is honoured when it is not).
_REMOVED_PATHS = (
    (PATHS["bin"], ("agentops_common_bin", "agentops_agents_command", "agentops_alert_command",
                    "agentops_heartbeat_command")),
    (PATHS["lib"], ("agentops_common_lib_dir",)),
    (PATHS["config"], ("agentops_common_config_dir", "agentops_agents_config_dir", "agentops_auth_config_dir")),
    (PATHS["config"] + "/agentops.json", ("agentops_alert_config_file",)),
    (PATHS["state"], ("agentops_common_state_dir", "agentops_agents_state_dir")),
    (PATHS["spool"], ("agentops_common_spool_dir",)),
    (PATHS["units"], ("agentops_agents_unit_dir", "agentops_alert_unit_dir", "agentops_heartbeat_unit_dir")),
    (PATHS["rotation_cron"], ("agentops_token_rotation_cron_file",)),
)
REMOVED_VARIABLES = dict((name, _FIXED % path) for path, names in _REMOVED_PATHS for name in names)
REMOVED_VARIABLES["agentops_alert_disk_threshold_percent"] = (
    "was removed: the heartbeat role owns the disk check; set agentops_heartbeat_disk_threshold_percent instead")


def removed_errors(names):
    """Messages for the removed variables among ``names`` (the variables an inventory sets)."""
    return ["%s: %s" % (name, REMOVED_VARIABLES[name]) for name in sorted(names) if name in REMOVED_VARIABLES]


VARIABLE_PREFIX = "agentops_"


def unknown_variable_errors(names, known, documented):
    """Messages for the ``agentops_*`` variables among ``names`` that agentops.fleet does not know.

    ``known``: every name the collection reads or sets itself (the roles' options, the playbook variables,
    its own facts, registered results and role vars); ``documented``: the names a user sets (the roles'
    options and the playbook variables), the only ones offered as "did you mean". A removed variable has
    its own message (:func:`removed_errors`); a name without the prefix belongs to someone else.
    """
    known = set(known)
    offered = sorted(set(documented))
    errors = []
    for name in sorted(n for n in names if isinstance(n, str)):
        if not name.startswith(VARIABLE_PREFIX) or name in known or name in REMOVED_VARIABLES:
            continue
        close = difflib.get_close_matches(name, offered, n=1, cutoff=0.8)
        errors.append("%s: unknown variable, no role or playbook of agentops.fleet reads it%s (known variables: "
                      "each role's README and docs/inventory.md; the agentops_ prefix is the collection's own)"
                      % (name, "; did you mean `%s`?" % close[0] if close else ""))
    return errors


def role_errors(role, values):
    """Problems of one role's variables ({name: value}, agentops_agents excluded); [] when valid."""
    errors = settings_errors(values)
    if role == "alerts" and "agentops_alert_channels" in values:
        errors.extend(channels_errors(values["agentops_alert_channels"]))
    return errors


# --------------------------------------------------------------------------- secrets
# The fields whose values are secrets wherever they appear: alert channels (agentops.json), dead man's switch
# entries (heartbeat.json), auth checks (agents.d/<name>.json) and the inventory itself. Their values are never
# shown: not in a message, a --diff (agent_files) or the contract's digest (inventory_contract), and the alert
# path masks them in every line it logs. Every value of a SECRET_MAPPINGS mapping is a secret (header values,
# credentials by name); its keys are not, nor a list under that name (the credential names of agents.d).
SECRET_FIELDS = ("bot_token", "url", "token", "routing_key", "password", "secret")
SECRET_MAPPINGS = ("headers", "credentials")


def redact_secrets(value, mask):
    """``value`` (lists and mappings, any depth) with every secret replaced by ``mask(secret)``: the value of a
    SECRET_FIELDS key, and each value of a SECRET_MAPPINGS mapping (the whole value when it is neither a mapping
    nor a list)."""
    if isinstance(value, list):
        return [redact_secrets(item, mask) for item in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if key in SECRET_MAPPINGS and isinstance(item, dict):
            out[key] = dict((name, mask(secret)) for name, secret in item.items())
        elif key in SECRET_FIELDS or (key in SECRET_MAPPINGS and not isinstance(item, list)):
            out[key] = mask(item)
        else:
            out[key] = redact_secrets(item, mask)
    return out


# --------------------------------------------------------------------------- alert channels
CHANNEL_FIELDS = {
    "telegram": ("type", "bot_token", "chat_id", "api_url"),
    "webhook": ("type", "url", "headers"),
    "command": ("type", "command"),
    "slack": ("type", "url"),
    "discord": ("type", "url"),
    "ntfy": ("type", "url", "token"),
    "pagerduty": ("type", "routing_key", "api_url"),
    "email": ("type", "smtp_host", "smtp_port", "security", "username", "password", "from", "to"),
}
URL_RE = re.compile(r"^https?://[^\s/?#@]+(/\S*)?\Z")
BOT_TOKEN_BAD_RE = re.compile(r"[\s/?#%]")
# Set by the alert path itself: a channel's headers cannot replace them.
RESERVED_HEADERS = ("host", "content-length", "connection", "transfer-encoding")
ROUTING_KEY_RE = re.compile(r"^[A-Za-z0-9]{32}\Z")
# Telegram chat ids: a non-zero integer (groups and channels are negative: -100... for supergroups and channels)
# or the public username of a channel, @name.
CHAT_NUMBER_RE = re.compile(r"^-?[1-9][0-9]{0,18}\Z")
CHAT_USERNAME_RE = re.compile(r"^@[A-Za-z][A-Za-z0-9_]{2,30}[A-Za-z0-9]\Z")
SMTP_SECURITY = ("starttls", "tls", "none")
# A DNS name, an IPv4 address or a bare IPv6 address (getaddrinfo takes no brackets).
SMTP_HOST_RE = re.compile(r"^(?:(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
                          r"[A-Za-z0-9])?\.?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)\Z")
# A bare address (no display name, no comments): what smtplib puts into MAIL FROM / RCPT TO.
MAIL_ADDRESS_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253}[A-Za-z0-9])?\Z")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def chat_id_problem(value):
    """Why ``value`` is not a Telegram chat id: an integer (negative for groups and channels), as a number or a
    string of digits, or ``@channelname``, the public username of a channel (Telegram's rules: a letter, then
    letters, digits and underscores, 4 to 32 characters, not ending in an underscore)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "is required: the chat's number, such as \"-1001234567890\", or @channelname"
    if isinstance(value, int) and not isinstance(value, bool) and value != 0 and abs(value) < _UINT64 >> 1:
        return None
    if isinstance(value, str) and (CHAT_NUMBER_RE.match(value) or CHAT_USERNAME_RE.match(value)):
        return None
    shown = repr(value) if isinstance(value, (str, int, float)) and not UNSAFE_CHARS_RE.search(str(value)) \
        else "a %s" % type(value).__name__
    return ("must be the chat's number, such as \"-1001234567890\" (negative for groups and channels), or "
            "@channelname, a channel's public username (a letter, then letters, digits and underscores, 4 to 32 "
            "characters); got %s" % shown)


def _url_problem(value, secret=True):
    """Why ``value`` is not an http(s) URL a channel can POST to (the value itself is never part of it)."""
    if not (isinstance(value, str) and URL_RE.match(value) and not UNSAFE_CHARS_RE.search(value)):
        return "must be an http:// or https:// URL%s" % (" (value not shown)" if secret else "")
    return None


def _secret_problem(value, what="a non-empty string"):
    """Why a secret value is unusable, without showing it: empty, not a string, spaces or control characters."""
    if isinstance(value, bool) or not isinstance(value, str) or not value.strip():
        return "must be %s (value not shown)" % what
    if UNSAFE_CHARS_RE.search(value) or re.search(r"\s", value):
        return "must not contain spaces, CR, LF or other control characters (value not shown)"
    return None


def headers_problems(headers):
    """(field, problem) pairs of a ``headers`` mapping: the field is ``headers`` or ``headers.<name>``;
    header names are shown, values never (they are secrets)."""
    if not isinstance(headers, dict):
        return [("headers", "must be a mapping of header name to value")]
    problems = []
    for name in sorted(headers, key=str):
        value = headers[name]
        if not isinstance(name, str) or not agentops_auth.HEADER_NAME_RE.match(name):
            shown = repr(name) if isinstance(name, str) and not UNSAFE_CHARS_RE.search(name) else "(not shown)"
            problems.append(("headers", "has a header name %s that is not a valid HTTP header name (letters, digits "
                                        "and !#$%%&'*+.^_`|~-; no spaces, colons, CR or LF)" % shown))
            continue
        field = "headers.%s" % name
        if name.lower() in RESERVED_HEADERS:
            problems.append((field, "is set by the alert path and cannot be configured (reserved: %s)"
                             % ", ".join(RESERVED_HEADERS)))
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            problems.append((field, "must be a string (value not shown)"))
            continue
        text = str(value)
        if UNSAFE_CHARS_RE.search(text):
            problems.append((field, "holds CR, LF or another control character (value not shown)"))
            continue
        try:
            text.encode("latin-1")
        except UnicodeError:
            problems.append((field, "is not Latin-1 text (value not shown)"))
    return problems


def _email_problems(channel):
    problems = []
    host = channel.get("smtp_host")
    if not (isinstance(host, str) and SMTP_HOST_RE.match(host)):
        problems.append(("smtp_host", "is required: a host name or IP address (got %r)" % (host,)))
    security = channel.get("security", "starttls")
    if security not in SMTP_SECURITY:
        problems.append(("security", "%r is not one of %s" % (security, ", ".join(SMTP_SECURITY))))
    if "smtp_port" in channel:
        problem = _int_problem(channel["smtp_port"], 1, 65535) or unit_value_problem(str(channel["smtp_port"]))
        if problem:
            problems.append(("smtp_port", problem))
    username = channel.get("username")
    if username is not None and (not isinstance(username, str) or not username.strip()
                                 or UNSAFE_CHARS_RE.search(username)):
        problems.append(("username", "must be a non-empty one-line string (value not shown)"))
    password = channel.get("password")
    if password is not None:
        if isinstance(password, bool) or not isinstance(password, (str, int)) or str(password) == "" \
                or UNSAFE_CHARS_RE.search(str(password)):
            problems.append(("password", "must be a non-empty one-line string (value not shown)"))
        elif username is None:
            problems.append(("password", "is set without a username: set both or neither"))
        elif security == "none" and str(host).lower() not in LOOPBACK_HOSTS:
            problems.append(("password", "with security: none would cross the network in clear text; "
                                         "use starttls or tls"))
    sender = channel.get("from")
    if not (isinstance(sender, str) and MAIL_ADDRESS_RE.match(sender)):
        problems.append(("from", "is required: one bare address such as alerts@example.com (got %r)" % (sender,)))
    recipients = channel.get("to")
    if not isinstance(recipients, list) or not recipients:
        problems.append(("to", "is required: a non-empty list of addresses"))
    else:
        for index, item in enumerate(recipients):
            if not (isinstance(item, str) and MAIL_ADDRESS_RE.match(item)):
                problems.append(("to[%d]" % index, "is not a bare address such as oncall@example.com (got %r)"
                                 % (item,)))
    return problems


def _channel_problems(ctype, channel):
    """(field, problem) pairs of one channel of a known type; no secret value is ever part of a problem."""
    problems = []
    if ctype == "telegram":
        token = channel.get("bot_token")
        if not isinstance(token, str) or not token.strip():
            problems.append(("bot_token", "is required"))
        elif BOT_TOKEN_BAD_RE.search(token) or UNSAFE_CHARS_RE.search(token):
            problems.append(("bot_token", "must not contain spaces, control characters, '/', '?', '#' or '%' "
                                          "(value not shown)"))
        problem = chat_id_problem(channel.get("chat_id"))
        if problem:
            problems.append(("chat_id", problem))
        if "api_url" in channel and _url_problem(channel["api_url"]):
            problems.append(("api_url", "must be an http:// or https:// URL"))
    elif ctype in ("webhook", "slack", "discord", "ntfy"):
        problem = _url_problem(channel.get("url"))
        if problem:
            problems.append(("url", problem))
        elif ctype == "ntfy" and not re.match(r"^https?://[^/]+/[^/?#]+", channel["url"]):
            problems.append(("url", "must name the topic: https://ntfy.example.com/<topic> (value not shown)"))
        if ctype == "webhook" and "headers" in channel and channel["headers"] is not None:
            problems.extend(headers_problems(channel["headers"]))
        if ctype == "ntfy" and channel.get("token") is not None:
            problem = _secret_problem(channel["token"])
            if problem:
                problems.append(("token", problem))
    elif ctype == "pagerduty":
        key = channel.get("routing_key")
        if not isinstance(key, str) or not key.strip():
            problems.append(("routing_key", "is required (value not shown)"))
        elif not ROUTING_KEY_RE.match(key):
            problems.append(("routing_key", "must be the 32-character integration key of an Events API v2 "
                                            "integration, letters and digits (value not shown)"))
        if "api_url" in channel and _url_problem(channel["api_url"], secret=False):
            problems.append(("api_url", "must be an http:// or https:// URL such as https://events.pagerduty.com"))
    elif ctype == "email":
        problems.extend(_email_problems(channel))
    else:
        command = channel.get("command")
        if not (isinstance(command, str) and re.match(r"^/\S", command)) or UNSAFE_CHARS_RE.search(command or ""):
            problems.append(("command", "must start with an absolute path, one line (got %r)" % (command,)))
        else:
            try:
                shlex.split(command)
            except ValueError:
                problems.append(("command", "has unbalanced quotes"))
    return problems


def channels_errors(channels, variable="agentops_alert_channels"):
    """Problems of a list of alert channels; messages name ``<variable>[<i>] (<type>).<field>``, never a secret."""
    if channels is None:
        return []
    if not isinstance(channels, list):
        return ["%s: must be a list of channels" % variable]
    errors = []
    for index, channel in enumerate(channels):
        where = "%s[%d]" % (variable, index)
        if not isinstance(channel, dict):
            errors.append("%s: must be a mapping with a type (%s)" % (where, ", ".join(sorted(CHANNEL_FIELDS))))
            continue
        ctype = channel.get("type")
        if not isinstance(ctype, str) or ctype not in CHANNEL_FIELDS:
            errors.append("%s.type: unknown channel type %r (one of %s)" % (where, ctype, ", ".join(sorted(CHANNEL_FIELDS))))
            continue
        where = "%s (%s)" % (where, ctype)
        for field in sorted((k for k in channel if k not in CHANNEL_FIELDS[ctype]), key=str):
            errors.append("%s: unknown field %r (allowed: %s)" % (where, field, ", ".join(CHANNEL_FIELDS[ctype])))
        for field, problem in _channel_problems(ctype, channel):
            errors.append("%s.%s %s" % (where, field, problem))
    return errors


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


# =========================================================================== agentops_agents
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}\Z")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
CRED_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
HOURS_RE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])\Z")
CONTROL_RE = UNSAFE_CHARS_RE
# Environment variables that the dynamic loader (or glibc) acts on before any program of the
# unit runs: the root helper of ExecStartPre=+ would load the agent's code with them.
LOADER_ENV_RE = re.compile(r"^(LD_[A-Z0-9_]*|GCONV_PATH|GLIBC_TUNABLES|LOCPATH|NLSPATH|HOSTALIASES|MALLOC_[A-Z0-9_]*)\Z")
HARDENING = ("strict", "standard", "none")
PROGRESS = ("journal", "file", "command")

AGENT_KEYS = (
    "name", "command", "state", "enabled", "user", "description", "environment", "credentials",
    "auth_checks", "heartbeat", "token_rotation", "failure_modes", "hardening", "read_write_paths",
    "restart_sec", "timeout_stop_sec", "start_limit_interval_sec", "start_limit_burst",
    "memory_max", "cpu_quota", "tasks_max", "share_user",
    "restart_steps", "restart_max_delay_sec", "runtime_max", "memory_high", "oom_score_adjust",
    "schedule", "schedule_grace",
    "recovery",
    "credentials_env",
)
# Optional per-agent systemd settings without a role default: directive and the first systemd version
# that knows it (an older host gets a comment in the unit instead).
AGENT_UNIT_KNOBS = (
    ("restart_steps", "RestartSteps", 254),
    ("restart_max_delay_sec", "RestartMaxDelaySec", 254),
    ("runtime_max", "RuntimeMaxSec", 229),
    ("memory_high", "MemoryHigh", 231),
    ("oom_score_adjust", "OOMScoreAdjust", 0),
)
HEARTBEAT_KEYS = ("interval", "max_silence", "progress", "file", "command", "active_hours", "workstate_max_age",
                  "deadman")
# heartbeat keys written into agents.d/<name>.json; heartbeat.deadman (URLs with tokens) goes to the
# heartbeat role's root-only heartbeat.json instead, never through the agents role's output.
HEARTBEAT_CONFIG_KEYS = tuple(k for k in HEARTBEAT_KEYS if k != "deadman")
# Keys of an inventory auth check: agentops_auth.KNOWN_KEYS without the secret-carrying ones
# (token, token_file, password): an agent's secrets are its credentials.
INVENTORY_AUTH_KEYS = frozenset(k for k in agentops_auth.KNOWN_KEYS if k not in ("token", "token_file", "password"))
AUTH_KEYS = tuple(sorted(INVENTORY_AUTH_KEYS))
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
    if isinstance(value, str) and re.match(r"^[0-9]+\Z", value.strip(" ")):
        return int(value.strip())
    return None


def _is_timespan(value):
    return timespan_problem(value) is None


def _why(value):
    problem = unit_value_problem(value) if isinstance(value, str) else None
    return " (%s)" % problem if problem else ""


def _clean_str(value):
    return isinstance(value, str) and value.strip() != "" and not CONTROL_RE.search(value)


def _abs_command(value):
    return _clean_str(value) and value.strip().startswith("/") and unit_value_problem(value) is None


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
    for here, text in deadman_problems(heartbeat.get("deadman")):
        errors.add(where + ".deadman" + here, text)


def auth_check_problems(check):
    """(field, text) problems of one inventory auth check: the verdict of the controller and the host."""
    return agentops_auth.check_problems(check, token_sources=("credential",), known_keys=INVENTORY_AUTH_KEYS,
                                        absolute_command=True)


def _entries(errors, where, items, key, not_list, not_mapping):
    """(where[<key value>|<index>], entry) for each mapping of the list ``items``; the others are errors."""
    if not isinstance(items, list):
        errors.add(where, not_list)
        return
    for index, entry in enumerate(items):
        if not isinstance(entry, dict):
            errors.add("%s[%d]" % (where, index), not_mapping)
            continue
        name = entry.get(key)
        yield ("%s[%s]" % (where, name) if isinstance(name, str) and name else "%s[%d]" % (where, index)), entry


def _check_auth(errors, where, checks, credentials):
    """auth_checks of one agent: agentops_auth.check_problems (the validator the module and the
    host use too) with the inventory's keys, plus the agent-level rules (credential names, unique names)."""
    seen = set()
    for here, check in _entries(errors, where, checks, "name", "must be a list of auth checks", "must be a mapping"):
        for field, text in auth_check_problems(check):
            errors.add("%s.%s" % (here, field) if field else here, text)
        name = check.get("name")
        if isinstance(name, str) and name in seen:
            errors.add(here + ".name", "duplicate auth check name %r" % name)
        seen.add(name)
        cred = check.get("credential")
        if cred is not None and cred not in credentials:
            errors.add(here + ".credential", "%r is not one of the agent's credentials (%s)"
                       % (cred, ", ".join(sorted(credentials)) or "none"))


def _check_rotation(errors, where, rotations, credentials):
    seen = set()
    for here, entry in _entries(errors, where, rotations, "credential", "must be a list",
                                "must be a mapping with the keys %s" % ", ".join(ROTATION_KEYS)):
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
        command = entry.get("command")
        if not (_abs_command(command) or (isinstance(command, list) and command
                                           and all(isinstance(p, str) and unit_value_problem(p) is None for p in command)
                                           and command[0].startswith("/"))):
            errors.add(here + ".command", "required: the command (an absolute path, or a list of words starting "
                       "with one) that prints the new token")
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
    problem = agent_name_problem(name)
    if problem:
        errors.add(where + ".name", problem)
    elif name in names:
        errors.add(where + ".name", "duplicate agent name %r on this host" % name)
    names.add(name)
    state = agent.get("state", "present")
    if state not in ("present", "absent"):
        errors.add(where + ".state", "%r is not present or absent" % (state,))
    if state == "present" or "command" in agent:
        problem = command_problem(agent.get("command"))
        if problem:
            errors.add(where + ".command", "%r must be an absolute path (with optional arguments, one line): %s"
                       % (agent.get("command"), problem))
    if "enabled" in agent and not isinstance(agent["enabled"], bool):
        errors.add(where + ".enabled", "must be true or false")
    if "user" in agent and not (isinstance(agent["user"], str) and USER_RE.match(agent["user"])
                                and agent["user"] != "root"):
        errors.add(where + ".user", "%r is not a valid non-root user name" % (agent["user"],))
    if "description" in agent and not (_clean_str(agent["description"])
                                       and unit_value_problem(agent["description"]) is None):
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
    problem = path_list_problem(paths)
    if problem:
        errors.add(where + ".read_write_paths", problem)
    for key in TIMESPAN_FIELDS:
        if key in agent and not _is_timespan(agent[key]):
            errors.add("%s.%s" % (where, key), "%r is not a systemd time span" % (agent[key],))
    if "start_limit_burst" in agent and not (_is_int(agent["start_limit_burst"]) and agent["start_limit_burst"] >= 1):
        errors.add(where + ".start_limit_burst", "%r must be an integer >= 1" % (agent["start_limit_burst"],))
    for key, check in (("memory_max", size_problem), ("cpu_quota", quota_problem), ("tasks_max", tasks_problem),
                       ("memory_high", size_problem)):
        problem = check(agent[key]) if key in agent else None
        if problem:
            errors.add("%s.%s" % (where, key), problem)
    _check_unit_knobs(errors, where, agent)
    _check_schedule(errors, where, agent)
    _check_recovery(errors, where, agent)
    _check_credentials_env(errors, where, agent, creds)


def _check_unit_knobs(errors, where, agent):
    """restart_steps / restart_max_delay_sec (together), runtime_max, memory_high, oom_score_adjust."""
    for key in ("restart_max_delay_sec", "runtime_max"):
        if key in agent and not _is_timespan(agent[key]):
            errors.add("%s.%s" % (where, key), "%r is not a systemd time span" % (agent[key],))
    if "runtime_max" in agent and _is_timespan(agent["runtime_max"]) and not parse_timespan(agent["runtime_max"]):
        errors.add(where + ".runtime_max", "must be longer than 0 (leave it out for no limit)")
    steps = agent.get("restart_steps")
    if "restart_steps" in agent and not (_is_int(steps) and 1 <= steps <= 3600):
        errors.add(where + ".restart_steps", "%r must be a whole number from 1 to 3600" % (steps,))
    if ("restart_steps" in agent) != ("restart_max_delay_sec" in agent):
        missing = "restart_max_delay_sec" if "restart_steps" in agent else "restart_steps"
        errors.add("%s.%s" % (where, missing), "required with %s: the restart delay grows from restart_sec to "
                   "restart_max_delay_sec in restart_steps steps" % (
                       "restart_steps" if missing == "restart_max_delay_sec" else "restart_max_delay_sec"))
    elif "restart_max_delay_sec" in agent and _is_timespan(agent["restart_max_delay_sec"]):
        low = agent.get("restart_sec")
        if low is not None and _is_timespan(low) and parse_timespan(agent["restart_max_delay_sec"]) < parse_timespan(low):
            errors.add(where + ".restart_max_delay_sec", "%r is shorter than restart_sec %r"
                       % (agent["restart_max_delay_sec"], low))
    score = agent.get("oom_score_adjust")
    if "oom_score_adjust" in agent and not (_is_int(score) and -1000 <= score <= 1000):
        errors.add(where + ".oom_score_adjust", "%r must be a whole number from -1000 to 1000" % (score,))


# --------------------------------------------------------------------------- schedule (OnCalendar)
# A syntax check of systemd calendar expressions (systemd.time(7)) on the controller: it catches the
# common mistakes (a cron expression, fields out of range, unknown weekdays, stray words) and stays
# lenient where systemd is richer; the agents role runs `systemd-analyze calendar` on the host too.
CALENDAR_SHORTHANDS = ("minutely", "hourly", "daily", "weekly", "monthly", "yearly", "annually", "quarterly",
                       "semiannually")
CALENDAR_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun", "monday", "tuesday", "wednesday",
                     "thursday", "friday", "saturday", "sunday")
CALENDAR_MAX_LENGTH = 256
_CRON_FIELD_RE = re.compile(r"^[0-9*/,?LW#-]+\Z")
_CALENDAR_NUMBER_RE = re.compile(r"^[0-9]+\Z")
_CALENDAR_SECOND_RE = re.compile(r"^[0-9]+(?:\.[0-9]{1,6})?\Z")
_CALENDAR_TZ_RE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z0-9_+-]+)*)\Z")


def _calendar_component(text, what, low, high, second=False):
    """Why one date or time component ("*", "3", "0/15", "1..5", "1,15", "1..5/2") is wrong; None when it is fine."""
    number = _CALENDAR_SECOND_RE if second else _CALENDAR_NUMBER_RE
    for item in text.split(","):
        base, sep, step = item.partition("/")
        if sep and not (_CALENDAR_SECOND_RE.match(step) if second else _CALENDAR_NUMBER_RE.match(step)):
            return "%r: the repetition after '/' in the %s must be a number" % (text, what)
        if sep and float(step) <= 0:
            return "%r: the repetition after '/' in the %s must be more than 0" % (text, what)
        if base == "*":
            continue
        bounds = base.split("..")
        if len(bounds) > 2 or not all(number.match(b) for b in bounds):
            return "%r is not a valid %s (a number, '*', a range a..b, a list a,b or a repetition a/n)" % (text, what)
        for bound in bounds:
            if not low <= float(bound) <= high:
                return "%r: the %s %s is out of range (%d to %d)" % (text, what, bound, low, high)
    return None


def _calendar_date(token):
    parts = token.split("-")
    if len(parts) == 2:
        parts = ["*"] + parts
    if len(parts) != 3:
        return "%r is not a date (YYYY-MM-DD or MM-DD, each part a number, '*', a range or a list)" % token
    year, month, day = parts
    if "~" in day:
        return None if re.match(r"^[0-9*,./]*~[0-9*,./]+\Z", day) else "%r is not a valid last-day form (MM~DD)" % token
    return (_calendar_component(year, "year", 0, 2199) or _calendar_component(month, "month", 1, 12)
            or _calendar_component(day, "day of the month", 1, 31))


def _calendar_time(token):
    parts = token.split(":")
    if len(parts) not in (2, 3):
        return "%r is not a time (HH:MM or HH:MM:SS)" % token
    problem = _calendar_component(parts[0], "hour", 0, 23) or _calendar_component(parts[1], "minute", 0, 59)
    if problem is None and len(parts) == 3:
        problem = _calendar_component(parts[2], "second", 0, 59.999999, second=True)
    return problem


def _calendar_weekdays(token):
    for item in token.split(","):
        for day in item.split(".."):
            if day.lower() not in CALENDAR_WEEKDAYS:
                return "%r is not a weekday (Mon..Sun, e.g. Mon..Fri or Sat,Sun)" % day
        if item.count("..") > 1:
            return "%r is not a weekday range" % item
    return None


def calendar_problem(value):
    """Why ``value`` is not a systemd calendar expression (OnCalendar=); None when it looks like one.

    Accepted: the shorthands (``daily``, ``hourly``, ...), ``@<epoch>``, and
    ``[weekdays] [date] [time] [timezone]`` (``Mon..Fri *-*-* 03:00:00``, ``*-*-* *:0/15:00``,
    ``2026-12-01 03:00 UTC``). Refused: empty values, control characters, cron expressions
    (``0 3 * * *``), fields out of range and words in the wrong place.
    """
    if not isinstance(value, str) or not value.strip():
        return "%r must be a non-empty systemd calendar expression (OnCalendar=, e.g. '*-*-* 03:00:00' or 'daily')" % (
            value,)
    problem = unit_value_problem(value)
    if problem:
        return problem
    if len(value) > CALENDAR_MAX_LENGTH:
        return "is longer than %d characters" % CALENDAR_MAX_LENGTH
    if "%" in value:
        return "%r contains '%%', which is no part of a calendar expression" % (value,)
    words = value.split()
    if len(words) >= 5 and all(_CRON_FIELD_RE.match(w) for w in words) and not any(":" in w for w in words):
        return ("%r looks like a cron expression; systemd wants OnCalendar syntax 'Weekday YYYY-MM-DD HH:MM:SS' "
                "(cron '0 3 * * *' is '*-*-* 03:00:00', '*/15 * * * *' is '*:0/15'); see systemd.time(7)" % (value,))
    if len(words) == 1 and words[0].lower() in CALENDAR_SHORTHANDS:
        return None
    if len(words) == 1 and re.match(r"^@[0-9]+\Z", words[0]):
        return None
    seen = []
    for index, word in enumerate(words):
        if word.lower() in CALENDAR_SHORTHANDS:
            return "%r: the shorthand %r stands alone (no other words)" % (value, word)
        if "T" in word and ":" in word and "-" in word.partition("T")[0]:
            date, _sep, clock = word.partition("T")
            kinds = [("date", _calendar_date(date)), ("time", _calendar_time(clock))]
        elif ":" in word:
            kinds = [("time", _calendar_time(word))]
        elif "-" in word and re.match(r"^[0-9*~.,/-]+\Z", word):
            kinds = [("date", _calendar_date(word))]
        elif re.match(r"^[A-Za-z][A-Za-z.,]*\Z", word) and all(
                d.lower() in CALENDAR_WEEKDAYS for i in word.split(",") for d in i.split("..") if d):
            kinds = [("weekday", _calendar_weekdays(word))]
        elif index == len(words) - 1 and index > 0 and _CALENDAR_TZ_RE.match(word):
            kinds = [("timezone", None)]
        elif re.match(r"^[0-9*/,]+\Z", word):
            return ("%r: %r is neither a date (YYYY-MM-DD) nor a time (HH:MM[:SS]); a cron expression? systemd "
                    "wants 'Weekday YYYY-MM-DD HH:MM:SS', e.g. '*-*-* 03:00:00'" % (value, word))
        else:
            return "%r: %r is not a weekday, a date, a time or a time zone" % (value, word)
        for kind, problem in kinds:
            if problem:
                return "%r: %s" % (value, problem)
            order = ("weekday", "date", "time", "timezone")
            if seen and order.index(kind) <= order.index(seen[-1]):
                return "%r: the %s %r is out of place (order: weekday, date, time, time zone)" % (value, kind, word)
            seen.append(kind)
    if seen == ["timezone"]:
        return "%r is only a time zone" % (value,)
    return None


def _check_credentials_env(errors, where, agent, creds):
    """credentials_env: {VARIABLE: credential name}, delivered by ``agentops exec`` at exec time."""
    if "credentials_env" not in agent:
        return
    mapping = agent["credentials_env"]
    if not isinstance(mapping, dict) or not mapping:
        errors.add(where + ".credentials_env", "must be a non-empty mapping of environment variable names to "
                   "credential names (e.g. CLAUDE_CODE_OAUTH_TOKEN: oauth_token)")
        return
    env = agent.get("environment") if isinstance(agent.get("environment"), dict) else {}
    for var, cred in mapping.items():
        here = "%s.credentials_env.%s" % (where, var)
        if not (isinstance(var, str) and ENV_KEY_RE.match(var)):
            errors.add(here, "%r is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)" % (var,))
        elif LOADER_ENV_RE.match(var):
            errors.add(here, "is read by the dynamic loader: a credential must not be delivered in it")
        elif var in CREDENTIALS_ENV_RESERVED:
            errors.add(here, "is set by systemd or the collection for the agent: choose another variable name")
        elif var in env:
            errors.add(here, "is also set in environment: a variable comes from environment or credentials_env, "
                       "not both")
        if not isinstance(cred, str) or cred not in creds:
            errors.add(here, "%r is not one of the agent's credentials (%s)"
                       % (cred, ", ".join(sorted(k for k in creds if isinstance(k, str))) or "none"))


# Variables systemd or the unit set for the agent's process: credentials_env may not replace them.
CREDENTIALS_ENV_RESERVED = frozenset(("HOME", "USER", "LOGNAME", "SHELL", "PATH", "CREDENTIALS_DIRECTORY",
                                      "INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET", "MAINPID",
                                      "SYSTEMD_EXEC_PID", "RUNTIME_DIRECTORY", "STATE_DIRECTORY", "LISTEN_FDS",
                                      "LISTEN_PID", "LISTEN_FDNAMES"))


def credentials_env_exec_start(name, command, mapping):
    """ExecStart of an agent with credentials_env: the on-host command reads the credentials
    from $CREDENTIALS_DIRECTORY as the agent user and execs the agent's command (names only, never a value)."""
    words = [PATHS["bin"], "exec", name]
    for var in sorted(mapping):
        words.append("--env=%s=%s" % (var, mapping[var]))
    words.append("--")
    return "%s %s" % (" ".join(words), command)


SCHEDULE_GRACE_DEFAULT = "15min"


def _check_schedule(errors, where, agent):
    """schedule (an OnCalendar expression) and schedule_grace (a time span > 0, only with schedule)."""
    if "schedule" in agent:
        problem = calendar_problem(agent["schedule"])
        if problem:
            errors.add(where + ".schedule", problem)
    if "schedule_grace" in agent:
        if "schedule" not in agent:
            errors.add(where + ".schedule_grace", "is only used with schedule (a scheduled one-shot agent)")
        problem = _positive_timespan(agent["schedule_grace"])
        if problem:
            errors.add(where + ".schedule_grace", problem + " (how long after its time a run may start before "
                       "it is reported as missed)")


# --------------------------------------------------------------------------- recovery
# What the heartbeat does besides alerting (agentops_host.recovery): restart a hung agent (on_hang: restart)
# and retry a unit latched at the start limit after start_limit_retry_after, at most max_restarts times per
# window; then one "giving up" alert and nothing more until the window passes or `agentops recover --reset`.
RECOVERY_KEYS = ("on_hang", "max_restarts", "window", "start_limit_retry_after")
RECOVERY_ON_HANG = ("alert", "restart")
RECOVERY_DEFAULTS = {"on_hang": "alert", "max_restarts": 3, "window": "1h", "start_limit_retry_after": "15min"}
RECOVERY_MAX_RESTARTS = 1000


def recovery_problems(recovery):
    """(where, text) problems of an agent's ``recovery`` mapping; ``where`` is "" or ``.<key>``."""
    if not isinstance(recovery, dict):
        return [("", "must be a mapping with the keys %s" % ", ".join(RECOVERY_KEYS))]
    problems = []
    for key in recovery:
        if key not in RECOVERY_KEYS:
            shown = key if isinstance(key, str) and not UNSAFE_CHARS_RE.search(key) else "(not shown)"
            problems.append((".%s" % shown, "unknown key (allowed: %s)" % ", ".join(RECOVERY_KEYS)))
    on_hang = recovery.get("on_hang", RECOVERY_DEFAULTS["on_hang"])
    if not isinstance(on_hang, str) or on_hang not in RECOVERY_ON_HANG:
        problems.append((".on_hang", "%r is not one of %s (alert: only alert on a hang; restart: restart the "
                                     "agent, within max_restarts per window)" % (on_hang, ", ".join(RECOVERY_ON_HANG))))
    if "max_restarts" in recovery:
        value = recovery["max_restarts"]
        number = _as_int(value)
        if number is None or not 0 <= number <= RECOVERY_MAX_RESTARTS:
            problems.append((".max_restarts", "%r must be a whole number from 0 to %d (recovery restarts per window; "
                                              "0 gives up at once)" % (value, RECOVERY_MAX_RESTARTS)))
    if "window" in recovery:
        problem = _positive_timespan(recovery["window"])
        if problem:
            problems.append((".window", problem + " (the time span max_restarts is counted over, e.g. 1h)"))
    if "start_limit_retry_after" in recovery and recovery["start_limit_retry_after"] != "infinity":
        problem = _positive_timespan(recovery["start_limit_retry_after"])
        if problem:
            problems.append((".start_limit_retry_after", problem + " (a time span such as 15min, or infinity: "
                                                                   "never retry a unit latched at the start limit)"))
    return problems


def _check_recovery(errors, where, agent):
    if "recovery" not in agent:
        return
    recovery = agent["recovery"]
    for here, text in recovery_problems(recovery):
        errors.add(where + ".recovery" + here, text)
    if isinstance(recovery, dict) and recovery.get("on_hang") == "restart" and agent.get("state", "present") == "present":
        heartbeat = agent.get("heartbeat")
        if not isinstance(heartbeat, dict):
            errors.add(where + ".recovery.on_hang", "restart needs a heartbeat: a hang is no progress for "
                       "heartbeat.max_silence, and this agent sets no heartbeat")
        elif agent.get("schedule"):
            errors.add(where + ".recovery.on_hang", "restart is for long-running agents; a scheduled run is bounded "
                       "by runtime_max instead")


def recovery_config(recovery):
    """The normalised recovery settings for agents.d/<name>.json: None without ``recovery`` (the heartbeat
    only alerts), else {on_hang, max_restarts, window (seconds), start_limit_retry_after (seconds or "infinity")}."""
    if recovery is None:
        return None
    merged = dict(RECOVERY_DEFAULTS)
    merged.update(recovery)
    retry = merged["start_limit_retry_after"]
    return {"on_hang": merged["on_hang"], "max_restarts": _as_int(merged["max_restarts"]),
            "window": timespan_seconds(merged["window"]),
            "start_limit_retry_after": "infinity" if retry == "infinity" else timespan_seconds(retry)}


def agent_config_errors(config):
    """Problems of an agent's host configuration (agents.d/<name>.json, written from agents_normalize).

    The host loads every agent file through this function: its heartbeat and token rotation
    entries get the same verdict on the host as the inventory got on the controller. Auth checks
    are judged one by one by ``agentops check-auth`` with :func:`auth_check_problems` (a bad check
    fails and alerts alone, the agent's other checks still run).
    """
    errors = _Errors()
    name = config.get("name") if isinstance(config, dict) else None
    where = "agentops_agents[%s]" % (name if isinstance(name, str) and NAME_RE.match(name) else "?")
    if not isinstance(config, dict):
        return ["%s: the agent file must hold a JSON object" % where]
    credentials = config.get("credentials") or []
    credentials = dict((c, True) for c in credentials if isinstance(c, str))
    if config.get("heartbeat") is not None:
        _check_heartbeat(errors, where + ".heartbeat", config["heartbeat"])
    if config.get("token_rotation") is not None:
        _check_rotation(errors, where + ".token_rotation", config["token_rotation"], credentials)
    if config.get("schedule") is not None:
        _check_schedule(errors, where, dict((k, config[k]) for k in ("schedule", "schedule_grace") if k in config))
    if config.get("recovery") is not None:
        for here, text in recovery_problems(config["recovery"]):
            errors.add(where + ".recovery" + here, text)
    if config.get("sandbox") is not None:
        for here, text in sandbox_problems(config["sandbox"]):
            errors.add(where + ".sandbox" + here, text)
    return errors.items


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
            heartbeat = dict((k, merged[k]) for k in HEARTBEAT_CONFIG_KEYS)
        user = agent.get("user") or "agent-%s" % name
        entry = {
            "name": name,
            "unit": "agentops-%s.service" % name,
            "state": agent.get("state", "present"),
            "enabled": agent.get("enabled", True),
            "user": user,
            "description": _escape_specifiers(agent.get("description") or "agentops agent %s" % name),
            "command": agent.get("command"),
            "exec_start": _escape_specifiers(
                credentials_env_exec_start(name, agent.get("command") or "", agent["credentials_env"])
                if agent.get("credentials_env") else agent.get("command") or ""),
            "credentials_env": dict(agent.get("credentials_env") or {}),
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
        entry["unit_knobs"] = [{"key": directive, "value": str(agent[key]), "min_version": version, "field": key}
                               for key, directive, version in AGENT_UNIT_KNOBS if key in agent]
        # A scheduled agent is a one-shot run started by agentops-<name>.timer; systemd ignores
        # RuntimeMaxSec= for Type=oneshot, so runtime_max bounds the run with TimeoutStartSec= instead.
        schedule = agent.get("schedule")
        entry["schedule"] = schedule
        entry["timer"] = "agentops-%s.timer" % name
        entry["on_calendar"] = _escape_specifiers(schedule) if schedule else None
        if schedule:
            entry["unit_knobs"] = [dict(k, key="TimeoutStartSec", min_version=0) if k["field"] == "runtime_max" else k
                                   for k in entry["unit_knobs"]]
        entry["config"] = {
            "name": name, "unit": entry["unit"], "user": user, "state_dir": entry["state_dir"],
            "credentials_dir": entry["credentials_dir"], "credentials": creds, "enabled": entry["enabled"],
            "state": entry["state"], "auth_checks": entry["auth_checks"], "heartbeat": heartbeat,
            "token_rotation": entry["token_rotation"],
        }
        if schedule:
            entry["config"].update(schedule=schedule, timer=entry["timer"], schedule_grace=timespan_seconds(
                agent.get("schedule_grace", SCHEDULE_GRACE_DEFAULT)))
        entry["config"]["recovery"] = recovery_config(agent.get("recovery"))
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


def heartbeat_settings(deadman, agents, textfile_dir):
    """The content of ``heartbeat.json`` (root only, 0600): the host's dead man's switch, each present agent's
    ``heartbeat.deadman`` and the Prometheus textfile directory. The heartbeat role writes it with no_log."""
    per_agent = {}
    for agent in agents or []:
        if not isinstance(agent, dict) or agent.get("state", "present") != "present":
            continue
        entries = (agent.get("heartbeat") or {}).get("deadman") if isinstance(agent.get("heartbeat"), dict) else None
        if entries:
            per_agent[agent["name"]] = [{"type": e["type"], "url": e["url"]} for e in entries]
    return {
        "_managed": "Managed by Ansible (agentops.fleet.heartbeat): changes here are overwritten.",
        "metrics_textfile_dir": textfile_dir or "",
        "deadman": [{"type": e["type"], "url": e["url"]} for e in deadman or []],
        "agents": per_agent,
    }


def heartbeat_settings_errors(data):
    """Problems of a ``heartbeat.json`` read on the host: the same verdicts as the controller's checks of
    agentops_deadman, agentops_metrics_textfile_dir and agentops_agents[].heartbeat.deadman."""
    if not isinstance(data, dict):
        return ["heartbeat.json must hold a JSON object"]
    errors = deadman_errors(data.get("deadman"), "agentops_deadman")
    problem = _textfile_dir_problem(data.get("metrics_textfile_dir"))
    if problem:
        errors.append("agentops_metrics_textfile_dir: %s" % problem)
    agents = data.get("agents")
    if agents is not None and not isinstance(agents, dict):
        errors.append("agents: must be a mapping of agent name to a dead man's switch list")
    for name in sorted(agents or {}) if isinstance(agents, dict) else []:
        label = name if isinstance(name, str) and NAME_RE.match(name) else "?"
        errors.extend(deadman_errors(agents[name], "agentops_agents[%s].heartbeat.deadman" % label))
    return errors
