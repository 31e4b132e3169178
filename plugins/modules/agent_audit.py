#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: agent_audit
short_description: Audit a host against the Agent Ops Checklist (read-only)
version_added: "0.1.0"
description:
  - Reads the systemd units, the journald configuration, the agents' C(AGENTS.md) files, the rotation schedule and
    the alert path of a host and reports, for every item of the Agent Ops Checklist, whether it passes and why.
  - "Items: C(kill_mode) (C(KillMode=control-group) on every agent unit), C(restart) (C(Restart=on-failure) with an
    explicit C(RestartSec=); for a scheduled agent of C(agents.d), a one-shot run, its C(agentops-<name>.timer)
    loaded, active and enabled instead - such an agent inactive between runs is no finding, a missing, stopped
    or disabled timer is), C(auth_at_start) (C(ExecStartPre=) runs C(check-auth) for every agent that holds a
    credential or has auth checks; on systemd 247 the unit has C(Requires=) and C(After=) on
    C(agentops-auth@<name>.service), which runs it), C(rotation_schedule)
    (C(/etc/cron.d/agentops-token-rotation) runs C(agentops rotate) or starts C(agentops-rotation.service), whose
    C(ExecStart=) runs it, and C(agentops rotate --list) covers every credential, or no agent holds one),
    C(heartbeat) (an active C(agentops-heartbeat*.timer)), C(log_retention) (the merged journald configuration sets C(SystemMaxUse=) and
    C(MaxRetentionSec=) and stores the journal persistently), C(workstate_protocol) (every agent's C(AGENTS.md)
    describes the C(WORKSTATE.md) checkpoint protocol), C(failure_modes) (every C(AGENTS.md) documents failure
    modes per tool) and C(alert_path) (C(OnFailure=agentops-alert@...) on every agent unit,
    C(agentops-alert@.service) installed, at least one alert channel in C(agentops.json))."
  - "Agent units are the units named in C(agents.d/*.json) of the collection, every other C(agentops-*.service)
    except template units (C(@)) and the helpers C(agentops-alert-flush.service), C(agentops-rotation.service) and
    C(agentops-heartbeat*.service), and the units given in O(units) (agents deployed some other way)."
  - Works on hosts this collection never provisioned; there every item fails with its reason.
  - Never changes anything (C(changed) is always false) and runs in check mode too. Only the channel types of the
    alert configuration are read into the result; secrets in it are never returned.
  - Reading C(/etc/agentops) and the agents' state directories needs root (C(become)).
  - "The state directory of an agent is written by the agent: its C(AGENTS.md) and C(WORKSTATE.md) are opened
    relative to the directory without following a symlink and without blocking on a FIFO, C(AGENTS.md) is read
    only when it is a regular file of at most 1 MiB with one link, and only the type of C(WORKSTATE.md) is looked
    at. Anything else is reported for that agent (RV(agents[].problems), the C(workstate_protocol) and
    C(failure_modes) items) and the other agents are audited as usual."
author:
  - agentops.fleet maintainers (@agentops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - agentops.fleet.read_only
options:
  units:
    description:
      - Additional agent units to audit (for agents deployed without this collection), for example C(my-agent.service).
        A name without a suffix gets C(.service).
    type: list
    elements: str
    default: []
  rotation_exempt:
    description:
      - Credentials that need no rotation schedule, as C(<agent>/<credential>) (the agent is the unit name without
        C(agentops-) and C(.service)). They do not make the C(rotation_schedule) item fail.
    type: list
    elements: str
    default: []
  config_dir:
    description:
      - Configuration directory of the collection on the host (C(agentops.json), C(agents.d/)).
    type: path
    default: /etc/agentops
  command:
    description:
      - The on-host command used for C(agentops rotate --list --json).
    type: path
    default: /usr/local/bin/agentops
  cron_file:
    description:
      - The cron file of the token rotation.
    type: path
    default: /etc/cron.d/agentops-token-rotation
  journal_root:
    description:
      - Root directory under which the journald configuration and C(/var/log/journal) are looked up.
    type: path
    default: /
seealso:
  - module: agentops.fleet.auth_check
"""

EXAMPLES = r"""
- name: Audit the host
  agentops.fleet.agent_audit:
  become: true
  register: audit

- name: Audit agents deployed by hand too
  agentops.fleet.agent_audit:
    units: [research-bot.service]
    rotation_exempt: [research-bot/static_api_key]
  become: true
  register: audit

- name: Show the failing items
  ansible.builtin.debug:
    msg: "{{ audit.checklist | rejectattr('passed') | map(attribute='reason') | list }}"
"""

RETURN = r"""
checklist:
  description: One entry per checklist item, in the order of the checklist.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: Item id (C(kill_mode), C(restart), C(auth_at_start), C(rotation_schedule), C(heartbeat),
        C(log_retention), C(workstate_protocol), C(failure_modes), C(alert_path)).
      type: str
    title:
      description: What the item requires.
      type: str
    passed:
      description: Whether the host meets the item.
      type: bool
    reason:
      description: Why it passed or failed, naming the units, files and settings involved.
      type: str
  sample:
    - id: kill_mode
      title: KillMode=control-group on every agent unit
      passed: true
      reason: "2 agent unit(s), all KillMode=control-group: agentops-mail.service, agentops-web.service"
agents:
  description: The agent units that were audited.
  returned: always
  type: list
  elements: dict
  contains:
    unit:
      description: Unit name.
      type: str
    name:
      description: Agent name (the unit name without C(agentops-) and C(.service)).
      type: str
    source:
      description: C(agents.d) (deployed by this collection), C(discovered) (another C(agentops-*.service)) or
        C(units) (given in O(units)).
      type: str
    load_state:
      description: systemd C(LoadState).
      type: str
    active_state:
      description: systemd C(ActiveState).
      type: str
    problems:
      description:
        - Hostile entries found in the agent's state directory (C(AGENTS.md) or C(WORKSTATE.md) that is a symlink,
          a FIFO, a directory, a hard link, larger than 1 MiB, ...). None of them was followed or read; each also
          fails the checklist items that need the file and is returned as a warning.
      type: list
      elements: str
  sample:
    - {unit: agentops-mail.service, name: mail, source: agents.d, load_state: loaded, active_state: active,
       problems: []}
passed:
  description: Whether every item passed.
  returned: always
  type: bool
failed_items:
  description: Ids of the items that failed.
  returned: always
  type: list
  elements: str
  sample: [heartbeat, log_retention]
summary:
  description: "One line, for example C(7/9 passed; failed: heartbeat, log_retention)."
  returned: always
  type: str
"""

import glob
import json
import os
import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agentops.fleet.plugins.module_utils import agentops_safefile as safefile
from ansible_collections.agentops.fleet.plugins.module_utils.agentops_contract import CHANNEL_FIELDS
from ansible_collections.agentops.fleet.plugins.module_utils.agentops_systemd import parse_show

ITEMS = (
    ("kill_mode", "KillMode=control-group on every agent unit"),
    ("restart", "Restart=on-failure with RestartSec set"),
    ("auth_at_start", "Auth validated at session start (ExecStartPre check-auth)"),
    ("rotation_schedule", "Documented token rotation schedule"),
    ("heartbeat", "Heartbeat configured (active agentops-heartbeat*.timer)"),
    ("log_retention", "Log retention capped (SystemMaxUse, MaxRetentionSec, persistent journal)"),
    ("workstate_protocol", "WORKSTATE.md protocol in every agent's AGENTS.md"),
    ("failure_modes", "Failure modes documented per tool in AGENTS.md"),
    ("alert_path", "Alert path for silent failures (OnFailure=agentops-alert@, channels)"),
)

SHOW_PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "KillMode", "Restart", "RestartUSec", "OnFailure",
                   "ExecStartPre", "Requires", "After", "WorkingDirectory")
HELPER_UNITS = ("agentops-alert-flush.service", "agentops-heartbeat.service", "agentops-rotation.service")
HELPER_PREFIXES = ("agentops-heartbeat-",)
# The daily token rotation: cron starts this unit, whose ExecStart= runs `agentops rotate`.
ROTATION_UNIT = "agentops-rotation.service"
ROTATION_UNIT_FILE = "/etc/systemd/system/agentops-rotation.service"
# The channel types the alert path delivers to (the inventory contract's list).
CHANNEL_TYPES = tuple(sorted(CHANNEL_FIELDS))
JOURNALD_DIRS = ("etc/systemd", "run/systemd", "usr/local/lib/systemd", "usr/lib/systemd")
CREDENTIAL_DIRECTIVES = ("LoadCredential", "LoadCredentialEncrypted", "SetCredential", "SetCredentialEncrypted",
                         "ImportCredential")
# AGENTS.md is read from the agent's own directory: never more than this.
AGENTS_MD_MAX_BYTES = safefile.DEFAULT_MAX_BYTES
NO_AGENT = "no agent unit found (no agentops-*.service, nothing in agents.d, no unit given in agentops_audit_units)"


# ---------------------------------------------------------------- parsers (pure)

def parse_unit_list(text):
    """First column of `systemctl list-units/list-unit-files --plain --no-legend` output."""
    names = []
    for line in (text or "").splitlines():
        fields = [f for f in line.split() if f not in ("\u25cf", "*")]
        if fields and fields[0] not in names:
            names.append(fields[0])
    return names


def _unit_runs_rotate(path):
    """True when the unit file at ``path`` (root's, a bounded read) has an ExecStart= that runs ``rotate``."""
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as handle:
            text = handle.read(64 * 1024)
    except OSError:
        return False
    return any(line.startswith("ExecStart=") and re.search(r"\brotate\b", line) for line in text.splitlines())


def is_agent_unit_name(name):
    """agentops-*.service that is not a template/instance nor one of the collection's helper units."""
    if not (name.startswith("agentops-") and name.endswith(".service")):
        return False
    if "@" in name:
        return False
    return name not in HELPER_UNITS and not name.startswith(HELPER_PREFIXES)


def agent_name(unit):
    name = unit[:-len(".service")] if unit.endswith(".service") else unit
    return name[len("agentops-"):] if name.startswith("agentops-") else name


def unit_directives(text, keys):
    """Values of the directives ``keys`` in `systemctl cat` output (every file, in order; comments skipped)."""
    found = dict((k, []) for k in keys)
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.strip()
        if key in found:
            value = value.strip()
            if value == "":
                found[key] = []  # an empty assignment resets the list
            else:
                found[key].append(value)
    return found


def credential_ids(values):
    """Credential ids of LoadCredential=/SetCredential= values (``id:path``)."""
    ids = []
    for value in values:
        cred = value.split(":", 1)[0].strip()
        if cred and cred not in ids:
            ids.append(cred)
    return ids


def _parse_ini_section(text, section):
    values = {}
    current = None
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            continue
        if current == section and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def journald_config(root="/"):
    """Merged [Journal] settings of journald.conf and its drop-ins, as systemd reads them.

    Returns (settings, files): the main file is the first of /etc, /run, /usr/local/lib, /usr/lib that exists;
    drop-ins (journald.conf.d/*.conf) are applied in file-name order, a name in an earlier directory hiding the
    same name in a later one; a drop-in linked to /dev/null (or empty) masks that name.
    """
    settings = {}
    files = []
    for directory in JOURNALD_DIRS:
        path = os.path.join(root, directory, "journald.conf")
        if os.path.isfile(path):
            with open(path, "r", encoding="utf-8", errors="replace") as handle:
                settings.update(_parse_ini_section(handle.read(), "Journal"))
            files.append("/" + os.path.relpath(path, root))
            break
    dropins = {}
    for directory in JOURNALD_DIRS:
        for path in glob.glob(os.path.join(root, directory, "journald.conf.d", "*.conf")):
            dropins.setdefault(os.path.basename(path), path)
    for name in sorted(dropins):
        path = dropins[name]
        if os.path.realpath(path) == "/dev/null":
            continue
        with open(path, "r", encoding="utf-8", errors="replace") as handle:
            settings.update(_parse_ini_section(handle.read(), "Journal"))
        files.append("/" + os.path.relpath(path, root))
    return settings, files


def journald_findings(settings, journal_dir_exists):
    """(ok, reason) for the log_retention item."""
    problems = []
    max_use = settings.get("SystemMaxUse", "")
    retention = settings.get("MaxRetentionSec", "")
    storage = settings.get("Storage", "auto") or "auto"
    if not max_use:
        problems.append("SystemMaxUse is not set (the journal may use 10% of the file system, up to 4G)")
    if not retention or retention in ("0", "0s"):
        problems.append("MaxRetentionSec is not set (entries are kept until space runs out)")
    if storage == "persistent":
        persistent = True
    elif storage == "auto":
        persistent = journal_dir_exists
        if not persistent:
            problems.append("Storage=auto without /var/log/journal: the journal is volatile and SystemMaxUse "
                            "does not apply")
    else:
        persistent = False
        problems.append("Storage=%s: the journal is not stored persistently" % storage)
    if problems:
        return False, "; ".join(problems)
    return True, "SystemMaxUse=%s, MaxRetentionSec=%s, Storage=%s%s" % (
        max_use, retention, storage, " (/var/log/journal exists)" if storage == "auto" and persistent else "")


HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.*)$")
TOOL_ITEM = re.compile(r"^(?:\*\*|__|`)?\s*([^*_`:]+?)\s*(?:\*\*|__|`)?\s*:\s*\S")


def sections(text):
    """[(heading, [lines])] of a Markdown document (text before the first heading has heading None)."""
    out = [(None, [])]
    for line in (text or "").splitlines():
        match = HEADING.match(line)
        if match:
            out.append((match.group(2), []))
        else:
            out[-1][1].append(line)
    return out


def workstate_findings(text):
    """(ok, reason) for one AGENTS.md and the WORKSTATE.md protocol."""
    if "WORKSTATE.md" not in (text or ""):
        return False, "does not mention WORKSTATE.md"
    for heading, lines in sections(text):
        if heading and ("WORKSTATE" in heading.upper() or "CHECKPOINT" in heading.upper()):
            if any(line.strip() for line in lines):
                return True, "has the section '%s'" % heading
    mentions = [line for line in text.splitlines() if "WORKSTATE.md" in line]
    if re.search(r"\bread\b", " ".join(mentions), re.I) and re.search(r"\bwrite\b|\bcheckpoint\b",
                                                                     " ".join(mentions), re.I):
        return True, "describes reading and writing WORKSTATE.md"
    return False, "mentions WORKSTATE.md but has no checkpoint section (read it at start, write it before the " \
                  "context fills up)"


def failure_mode_tools(text):
    """Tools listed under a 'Failure modes' heading of AGENTS.md (``- **tool**: what to do``)."""
    tools = []
    found = False
    for heading, lines in sections(text):
        if not heading or "failure mode" not in heading.lower():
            continue
        found = True
        for line in lines:
            item = LIST_ITEM.match(line)
            if not item:
                continue
            tool = TOOL_ITEM.match(item.group(1).strip())
            if tool:
                tools.append(tool.group(1).strip())
    return found, tools


def failure_mode_findings(text):
    found, tools = failure_mode_tools(text)
    if not found:
        return False, "has no 'Failure modes' section"
    specific = [t for t in tools if t.lower() not in ("any tool", "any", "all tools", "*")]
    if not specific:
        if tools:
            return False, "lists only a generic entry (%s), no failure mode per tool" % ", ".join(tools)
        return False, "has a 'Failure modes' section without '- **tool**: what to do' entries"
    return True, "%d tool(s): %s" % (len(specific), ", ".join(specific))


# ---------------------------------------------------------------- evaluation (pure)

def _item(item_id, passed, reason):
    title = dict(ITEMS)[item_id]
    return {"id": item_id, "title": title, "passed": bool(passed), "reason": reason}


def _unit_problem(agent):
    if agent.get("load_state") != "loaded":
        return "%s: not loaded (LoadState=%s)" % (agent["unit"], agent.get("load_state") or "unknown")
    return None


def _per_unit(item_id, agents, check, ok_text):
    """Evaluate check(agent) -> problem or None on every agent unit."""
    if not agents:
        return _item(item_id, False, NO_AGENT)
    problems = []
    for agent in agents:
        problem = _unit_problem(agent) or check(agent)
        if problem:
            problems.append(problem)
    if problems:
        return _item(item_id, False, "; ".join(problems))
    return _item(item_id, True, "%d agent unit(s), %s: %s" % (len(agents), ok_text,
                                                             ", ".join(a["unit"] for a in agents)))


def _check_kill_mode(agent):
    mode = agent["props"].get("KillMode", "")
    return None if mode == "control-group" else "%s: KillMode=%s (children survive a stop or crash)" % (
        agent["unit"], mode or "unset")


def _check_restart(agent):
    if agent.get("schedule"):
        return _check_timer(agent)
    restart = agent["props"].get("Restart", "")
    problems = []
    if restart != "on-failure":
        problems.append("Restart=%s" % (restart or "unset"))
    if not agent.get("restart_sec"):
        problems.append("RestartSec not set (systemd's 100ms default restarts in a tight loop)")
    return "%s: %s" % (agent["unit"], ", ".join(problems)) if problems else None


def _check_timer(agent):
    """A scheduled agent (a one-shot run started by its timer): the timer must be loaded, active and enabled."""
    timer = agent.get("timer_props") or {}
    name = agent.get("timer") or "agentops-%s.timer" % agent.get("name")
    if timer.get("LoadState") != "loaded":
        return "%s: scheduled (%s) but %s is missing (LoadState=%s): no run starts" % (
            agent["unit"], agent["schedule"], name, timer.get("LoadState") or "unknown")
    if timer.get("ActiveState") != "active" or timer.get("UnitFileState") not in ("enabled", "enabled-runtime"):
        return "%s: scheduled (%s) but %s is %s and %s: runs are missed" % (
            agent["unit"], agent["schedule"], name, timer.get("ActiveState") or "unknown",
            timer.get("UnitFileState") or "unknown")
    return None


def _needs_auth(agent):
    return bool(agent.get("credentials") or agent.get("auth_checks"))


def _check_auth(agent):
    if not _needs_auth(agent):
        return None
    pre = agent["props"].get("ExecStartPre", "")
    if not agent.get("auth_checks") and agent.get("source") == "agents.d":
        return "%s: holds credential(s) %s but has no auth_checks, nothing validates them at start" % (
            agent["unit"], ", ".join(agent.get("credentials") or []))
    if "check-auth" not in pre and not _has_auth_gate(agent):
        return "%s: holds credential(s) %s but no ExecStartPre runs check-auth (nor does it require %s)" % (
            agent["unit"], ", ".join(agent.get("credentials") or []) or "(auth checks)", _auth_gate(agent))
    return None


def _auth_gate(agent):
    return "agentops-auth@%s.service" % agent_name(agent["unit"])


def _has_auth_gate(agent):
    """systemd 247: the unit requires, and is ordered after, the one-shot that runs check-auth before it."""
    gate = _auth_gate(agent)
    props = agent["props"]
    return gate in props.get("Requires", "").split() and gate in props.get("After", "").split()


def _check_on_failure(agent):
    targets = agent["props"].get("OnFailure", "").split()
    if any(t.startswith("agentops-alert@") for t in targets):
        return None
    return "%s: OnFailure=%s" % (agent["unit"], " ".join(targets) or "(none): a failure alerts nobody")


def evaluate(facts, rotation_exempt=()):
    """The checklist from collected facts (see collect())."""
    agents = facts["agents"]
    items = [
        _per_unit("kill_mode", agents, _check_kill_mode, "all KillMode=control-group"),
        _per_unit("restart", agents, _check_restart,
                  "all Restart=on-failure with RestartSec (a scheduled agent: its timer active and enabled)"),
    ]

    # auth at session start
    item = _per_unit("auth_at_start", agents, _check_auth, "every credential is checked by ExecStartPre check-auth")
    if item["passed"] and not any(_needs_auth(a) for a in agents):
        item["reason"] = "no agent holds a credential or has auth checks: nothing to validate (%s)" % ", ".join(
            a["unit"] for a in agents)
    items.append(item)

    # rotation schedule
    items.append(_rotation_item(facts, agents, rotation_exempt))

    # heartbeat
    timers = facts.get("heartbeat_timers") or {}
    active = sorted(t for t, state in timers.items() if state == "active")
    if active:
        items.append(_item("heartbeat", True, "active: %s" % ", ".join(active)))
    elif timers:
        items.append(_item("heartbeat", False, "no agentops-heartbeat*.timer is active: %s" % ", ".join(
            "%s is %s" % (t, s) for t, s in sorted(timers.items()))))
    else:
        items.append(_item("heartbeat", False, "no agentops-heartbeat*.timer installed: a stuck agent is not noticed"))

    # log retention
    settings = facts.get("journald") or {}
    ok, reason = journald_findings(settings, facts.get("journal_dir_exists", False))
    files = facts.get("journald_files") or []
    items.append(_item("log_retention", ok, "%s (from %s)" % (reason, ", ".join(files) or "no journald.conf found")))

    # AGENTS.md
    for item_id, judge, ok_text in (("workstate_protocol", workstate_findings, "WORKSTATE.md protocol"),
                                    ("failure_modes", failure_mode_findings, "failure modes per tool")):
        if not agents:
            items.append(_item(item_id, False, NO_AGENT))
            continue
        problems, oks = [], []
        for agent in agents:
            path = agent.get("agents_md_path")
            text = agent.get("agents_md")
            if item_id == "workstate_protocol" and agent.get("workstate_error"):
                problems.append("%s: %s" % (agent["unit"], agent["workstate_error"]))
            if text is None:
                problems.append("%s: %s" % (agent["unit"], agent.get("agents_md_error") or "no AGENTS.md"))
                continue
            good, why = judge(text)
            (oks if good else problems).append("%s: %s %s" % (agent["unit"], path, why))
        if problems:
            items.append(_item(item_id, False, "; ".join(problems)))
        else:
            items.append(_item(item_id, True, "; ".join(oks)))

    items.append(_alert_item(facts, agents))
    return items


def _rotation_item(facts, agents, rotation_exempt):
    if not agents:
        return _item("rotation_schedule", False, NO_AGENT)
    unknown = [p for p in (_unit_problem(a) for a in agents) if p]
    if unknown:
        return _item("rotation_schedule", False, "cannot tell which credentials need rotation: " + "; ".join(unknown))
    creds = []
    for agent in agents:
        for cred in agent.get("credentials") or []:
            creds.append("%s/%s" % (agent["name"], cred))
    exempt = set(rotation_exempt or ())
    needed = [c for c in creds if c not in exempt]
    if not needed:
        text = "no agent holds a credential" if not creds else "every credential is exempt (%s)" % ", ".join(creds)
        return _item("rotation_schedule", True, text + ": nothing to rotate")
    problems = []
    if not facts.get("cron_file_exists"):
        problems.append("%s is missing" % facts.get("cron_file"))
    elif not facts.get("cron_runs_rotate"):
        problems.append("%s does not run 'agentops rotate'" % facts.get("cron_file"))
    schedule = facts.get("rotation_list")
    if schedule is None:
        problems.append("'agentops rotate --list' failed: %s" % (facts.get("rotation_list_error") or "unknown"))
        scheduled = {}
    else:
        scheduled = dict(("%s/%s" % (row.get("agent"), row.get("credential")), row) for row in schedule)
    if schedule is not None:
        missing = [c for c in needed if c not in scheduled]
        if missing:
            problems.append("no rotation schedule for %s" % ", ".join(missing))
    if problems:
        return _item("rotation_schedule", False, "; ".join(problems))
    parts = ["%s every %sd, next due %s" % (c, scheduled[c].get("every_days"), scheduled[c].get("next_due"))
             for c in needed]
    return _item("rotation_schedule", True, "%s; daily run in %s" % ("; ".join(parts), facts.get("cron_file")))


def _alert_item(facts, agents):
    problems = []
    if not agents:
        problems.append(NO_AGENT)
    else:
        for agent in agents:
            problem = _unit_problem(agent) or _check_on_failure(agent)
            if problem:
                problems.append(problem)
    if not facts.get("alert_template"):
        problems.append("agentops-alert@.service is not installed")
    types = facts.get("channel_types")
    if types is None:
        problems.append("no alert configuration: %s" % (facts.get("channel_error") or "missing"))
    elif not types:
        problems.append("%s has no alert channel: alerts only reach the journal" % facts.get("alert_config"))
    else:
        unknown = [t for t in types if t not in CHANNEL_TYPES]
        if unknown and len(unknown) == len(types):
            problems.append("%s has no usable channel (types %s)" % (facts.get("alert_config"), ", ".join(unknown)))
    if problems:
        return _item("alert_path", False, "; ".join(problems))
    return _item("alert_path", True, "OnFailure=agentops-alert@ on %d agent unit(s); agentops-alert@.service "
                                     "installed; channels: %s" % (len(agents), ", ".join(types)))


# ---------------------------------------------------------------- collection (reads the host)

class Collector(object):
    """Reads the host. Every command it runs only reads state."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.systemctl = module.get_bin_path("systemctl")

    def _systemctl(self, *args):
        if not self.systemctl:
            return 1, "", "systemctl not found"
        rc, out, err = self.module.run_command([self.systemctl] + list(args), check_rc=False,
                                               environ_update={"SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"})
        return rc, out, err

    def _list(self, kind, pattern, extra=()):
        rc, out, dummy = self._systemctl(kind, "--plain", "--no-legend", "--no-pager", *(list(extra) + [pattern]))
        return parse_unit_list(out) if rc == 0 else []

    def _read_json(self, path):
        with open(path, "r", encoding="utf-8") as handle:
            return json.load(handle)

    def agent_configs(self):
        configs = {}
        for path in sorted(glob.glob(os.path.join(self.params["config_dir"], "agents.d", "*.json"))):
            try:
                data = self._read_json(path)
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict) or data.get("state", "present") == "absent" or not data.get("unit"):
                continue
            configs[data["unit"]] = data
        return configs

    def collect(self):
        configs = self.agent_configs()
        units = []
        sources = {}
        for unit in configs:
            units.append(unit)
            sources[unit] = "agents.d"
        discovered = self._list("list-unit-files", "agentops-*.service", ["--type=service"])
        discovered += self._list("list-units", "agentops-*.service", ["--all", "--type=service"])
        for unit in discovered:
            if is_agent_unit_name(unit) and unit not in sources:
                units.append(unit)
                sources[unit] = "discovered"
        for unit in self.params["units"]:
            unit = unit if "." in unit else unit + ".service"
            if unit not in sources:
                units.append(unit)
                sources[unit] = "units"
        props = {}
        if units:
            rc, out, dummy = self._systemctl("show", "--property=" + ",".join(SHOW_PROPERTIES), "--", *units)
            if rc == 0:
                props = parse_show(out)
        agents = [self.agent(unit, sources[unit], props.get(unit, {}), configs.get(unit)) for unit in units]
        scheduled = [a["timer"] for a in agents if a.get("schedule")]
        if scheduled:
            rc, out, dummy = self._systemctl("show", "--property=Id,LoadState,ActiveState,UnitFileState", "--",
                                             *scheduled)
            found = parse_show(out) if rc == 0 else {}
            for entry in agents:
                if entry.get("schedule"):
                    entry["timer_props"] = found.get(entry["timer"], {})

        timers = {}
        names = self._list("list-unit-files", "agentops-heartbeat*.timer", ["--type=timer"])
        names += self._list("list-units", "agentops-heartbeat*.timer", ["--all", "--type=timer"])
        names = sorted(set(names))
        if names:
            rc, out, dummy = self._systemctl("show", "--property=Id,LoadState,ActiveState", "--", *names)
            for name, values in parse_show(out).items():
                if values.get("LoadState") == "loaded":
                    timers[name] = values.get("ActiveState", "unknown")

        root = self.params["journal_root"]
        journald, journald_files = journald_config(root)
        facts = {
            "agents": agents,
            "heartbeat_timers": timers,
            "journald": journald,
            "journald_files": journald_files,
            "journal_dir_exists": os.path.isdir(os.path.join(root, "var/log/journal")),
            "alert_template": "agentops-alert@.service" in self._list("list-unit-files", "agentops-alert@.service"),
        }
        facts.update(self.rotation())
        facts.update(self.channels())
        return facts

    def agent(self, unit, source, props, config):
        config = config or {}
        name = config.get("name") or agent_name(unit)
        rc, text, dummy = self._systemctl("cat", "--", unit)
        directives = unit_directives(text if rc == 0 else "", ("RestartSec",) + CREDENTIAL_DIRECTIVES)
        credentials = list(config.get("credentials") or [])
        for key in CREDENTIAL_DIRECTIVES:
            for cred in credential_ids(directives[key]):
                if cred not in credentials:
                    credentials.append(cred)
        state_dir = config.get("state_dir") or props.get("WorkingDirectory", "").lstrip("-!") or None
        entry = {
            "unit": unit,
            "name": name,
            "source": source,
            "load_state": props.get("LoadState", "not-found"),
            "active_state": props.get("ActiveState", "unknown"),
            "props": props,
            "restart_sec": (directives["RestartSec"] or [None])[-1],
            "credentials": credentials,
            "auth_checks": len(config.get("auth_checks") or []),
            "schedule": config.get("schedule"),
            "timer": config.get("timer") or ("agentops-%s.timer" % name if config.get("schedule") else None),
            "agents_md_path": None,
            "agents_md": None,
            "agents_md_error": None,
            "workstate_error": None,
            "problems": [],
        }
        if not state_dir or state_dir == "~":
            entry["agents_md_error"] = "no state directory known (no agents.d entry, no WorkingDirectory=)"
            return entry
        self.read_state_dir(entry, state_dir)
        return entry

    @staticmethod
    def read_state_dir(entry, state_dir):
        """AGENTS.md (bounded) and WORKSTATE.md (lstat only) of an agent, from the directory the agent writes.

        The directory is opened without following a symlink the agent can replace and the files relative to it
        with O_NOFOLLOW|O_NONBLOCK: a symlink, a FIFO, a huge file or a hard link is a problem of this agent
        (recorded in ``problems``), never followed, read whole or waited for.
        """
        path = os.path.join(state_dir, "AGENTS.md")
        entry["agents_md_path"] = path
        try:
            dir_fd = safefile.open_dir(state_dir) if os.path.isabs(state_dir) else None
        except safefile.UnsafeEntry as exc:
            entry["agents_md_error"] = "state directory not read: %s" % exc.message
            entry["problems"].append(exc.message)
            return
        except OSError as exc:
            entry["agents_md_error"] = "cannot read %s: %s" % (path, exc.strerror or exc)
            return
        if dir_fd is None:
            entry["agents_md_error"] = "state directory %s is not an absolute path" % state_dir
            return
        try:
            try:
                data = safefile.read_file(dir_fd, "AGENTS.md", path, AGENTS_MD_MAX_BYTES)
                entry["agents_md"] = data.decode("utf-8", "replace")
            except safefile.UnsafeEntry as exc:
                entry["agents_md_error"] = "not read: %s" % exc.message
                entry["problems"].append(exc.message)
            except OSError as exc:
                entry["agents_md_error"] = "cannot read %s: %s" % (path, exc.strerror or exc)
            workstate = os.path.join(state_dir, "WORKSTATE.md")
            try:
                safefile.check_regular(os.stat("WORKSTATE.md", dir_fd=dir_fd, follow_symlinks=False), workstate,
                                       None, True)
            except safefile.UnsafeEntry as exc:
                entry["workstate_error"] = exc.message
                entry["problems"].append(exc.message)
            except OSError:
                pass  # not written yet: not a finding
        finally:
            os.close(dir_fd)

    def rotation(self):
        cron_file = self.params["cron_file"]
        facts = {"cron_file": cron_file, "cron_file_exists": os.path.isfile(cron_file), "cron_runs_rotate": False,
                 "rotation_list": None, "rotation_list_error": None}
        if facts["cron_file_exists"]:
            try:
                with open(cron_file, "r", encoding="utf-8", errors="replace") as handle:
                    jobs = [line for line in handle if line.strip() and not line.lstrip().startswith("#")]
            except OSError as exc:
                jobs = []
                facts["cron_file_exists"] = False
                facts["rotation_list_error"] = str(exc)
            # the job runs `agentops rotate` itself, or starts the unit that does (agentops-rotation.service)
            facts["cron_runs_rotate"] = any(re.search(r"\brotate\b", line) for line in jobs) or (
                any(re.search(r"\b%s\b" % re.escape(ROTATION_UNIT), line) for line in jobs)
                and _unit_runs_rotate(ROTATION_UNIT_FILE))
        command = self.params["command"]
        if not os.access(command, os.X_OK):
            facts["rotation_list_error"] = "%s is not installed" % command
            return facts
        rc, out, err = self.module.run_command([command, "rotate", "--list", "--json"], check_rc=False)
        if rc != 0:
            last = (err or out).strip().splitlines()
            facts["rotation_list_error"] = "exit code %d%s" % (rc, (": " + last[-1]) if last else "")
            return facts
        try:
            rows = json.loads(out)
        except ValueError:
            facts["rotation_list_error"] = "output is not JSON"
            return facts
        facts["rotation_list"] = [
            {"agent": r.get("agent"), "credential": r.get("credential"), "every_days": r.get("every_days"),
             "next_due": r.get("next_due")} for r in rows if isinstance(r, dict)]
        return facts

    def channels(self):
        path = os.path.join(self.params["config_dir"], "agentops.json")
        facts = {"alert_config": path, "channel_types": None, "channel_error": None}
        try:
            data = self._read_json(path)
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError):
                facts["channel_error"] = "cannot read %s: %s" % (path, exc.strerror or exc)
            else:
                facts["channel_error"] = "%s is not valid JSON" % path
            return facts
        channels = data.get("alert_channels") if isinstance(data, dict) else None
        # Only the type of every channel leaves this function: tokens and URLs stay on the host.
        facts["channel_types"] = [str(c.get("type")) for c in channels or [] if isinstance(c, dict)]
        return facts


def run_module():
    module = AnsibleModule(
        argument_spec=dict(
            units=dict(type="list", elements="str", default=[]),
            rotation_exempt=dict(type="list", elements="str", default=[]),
            config_dir=dict(type="path", default="/etc/agentops"),
            command=dict(type="path", default="/usr/local/bin/agentops"),
            cron_file=dict(type="path", default="/etc/cron.d/agentops-token-rotation"),
            journal_root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    bad = [u for u in module.params["units"] if not re.match(r"^[A-Za-z0-9:_.\\@-]+$", u or "")]
    if bad:
        module.fail_json(msg="units: not a systemd unit name: %s" % ", ".join(repr(u) for u in bad))
    bad = [c for c in module.params["rotation_exempt"] if not re.match(r"^[^/\s]+/[^/\s]+$", c or "")]
    if bad:
        module.fail_json(msg="rotation_exempt: expected <agent>/<credential>, got %s" % ", ".join(
            repr(c) for c in bad))
    facts = Collector(module).collect()
    checklist = evaluate(facts, module.params["rotation_exempt"])
    failed = [i["id"] for i in checklist if not i["passed"]]
    summary = "%d/%d passed" % (len(checklist) - len(failed), len(checklist))
    if failed:
        summary += "; failed: %s" % ", ".join(failed)
    agents = []
    for agent in facts["agents"]:
        entry = dict((k, agent[k]) for k in ("unit", "name", "source", "load_state", "active_state"))
        entry["problems"] = list(agent.get("problems") or [])
        for problem in entry["problems"]:
            module.warn("%s: %s" % (agent["unit"], problem))
        agents.append(entry)
    module.exit_json(changed=False, checklist=checklist, agents=agents, passed=not failed, failed_items=failed,
                     summary=summary)


def main():
    run_module()


if __name__ == "__main__":
    main()
