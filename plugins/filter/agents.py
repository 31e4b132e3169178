# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)
"""Filters of agentops.fleet: the inventory contract and the module arguments the roles pass on.

Runs on the controller only. ``agents_errors`` returns one message per problem, each naming the
agent and the field, so a role can fail before it changes anything. The other filters turn the
effective agent settings (``agents_normalize``) into the arguments of one module call each, so the
task files hold no list-building Jinja and every template is rendered once, here, per agent.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible.errors import AnsibleFilterError

from ansible_collections.agentops.fleet.plugins.module_utils.agentops_systemd import parse_show
from ansible_collections.agentops.fleet.plugins.module_utils.agentops_contract import (
    agents_errors, agents_normalize, agents_user_errors, heartbeat_settings, heartbeat_tick, redact_secrets,
    settings_errors, timespan_seconds)
from ansible_collections.agentops.fleet.plugins.module_utils import agentops_status

try:
    import jinja2
except ImportError:  # pragma: no cover - ansible-core always ships with Jinja2
    jinja2 = None

# Ansible renders `lookup('template')` and the template module with these Jinja settings
# (trim_blocks, the trailing newline kept): the files rendered here are byte for byte the same.
_ENVIRONMENTS = {}
ACTIVE_STATES = ("active", "activating", "reloading")


def systemctl_show(text):
    """Parse `systemctl show -p ... unit...` output into {Id: {Property: value}}."""
    return parse_show(text)


def _environment(templates_dir):
    env = _ENVIRONMENTS.get(templates_dir)
    if env is None:
        if jinja2 is None:  # pragma: no cover
            raise AnsibleFilterError("agentops.fleet: Jinja2 is required on the controller")
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates_dir), trim_blocks=True,
                                 keep_trailing_newline=True, undefined=jinja2.StrictUndefined, autoescape=False)
        _ENVIRONMENTS[templates_dir] = env
    return env


def render_template(templates_dir, name, **variables):
    """``name`` under ``templates_dir`` rendered the way Ansible's template lookup renders it."""
    try:
        return _environment(str(templates_dir)).get_template(name).render(**variables)
    except jinja2.TemplateError as exc:
        raise AnsibleFilterError("agentops.fleet: rendering %s/%s failed: %s" % (templates_dir, name, exc))


def _present(agents):
    return [a for a in agents or [] if a.get("state", "present") == "present"]


def _config_json(config):
    """agents.d/<name>.json: Ansible's ``to_nice_json(indent=2)`` plus a final newline."""
    return json.dumps(config, indent=2, sort_keys=True, separators=(",", ": ")) + "\n"


def _holds_secret(content):
    """True when ``content`` (a JSON document) has a secret field (agentops_contract.SECRET_FIELDS); a content
    that is not JSON counts as one."""
    try:
        data = json.loads(content)
    except (TypeError, ValueError):
        return True
    return redact_secrets(data, lambda secret: None) != data


def secret_json_files(entries):
    """agent_files arguments ({files, secret_contents}) for ``entries`` of ``files`` whose content is JSON that
    may hold secrets: the content of an entry holding one moves to ``secret_contents`` (a no_log option: never in
    the host's journal or the output; its diff masks the secret values), the others keep theirs (a full diff)."""
    secret_contents = {}
    return {"files": [_secret_entry(entry, secret_contents) for entry in entries or []],
            "secret_contents": secret_contents}


def _secret_entry(entry, secret_contents):
    """``entry`` of ``files``, its content moved to ``secret_contents`` when it holds a secret."""
    if not _holds_secret(entry.get("content")):
        return entry
    secret_contents[entry["path"]] = entry["content"]
    return dict((key, value) for key, value in entry.items() if key != "content")
# Unit knobs that limit resources: the transient units started for an agent get them too.
LIMIT_KNOBS = ("memory_high", "oom_score_adjust")


def agent_sandbox(agent, systemd_version, profile_directives):
    """The directives that confine an agent's unit: {limits, knobs, hardening, config}.

    ``limits``: MemoryMax=, CPUQuota=, TasksMax=; ``knobs``: MemoryHigh= and OOMScoreAdjust= when the agent sets
    them and the host's systemd knows them; ``hardening``: the directives of the agent's hardening profile known to
    the host's systemd (``min_version``), then ReadWritePaths= (its state directory and ``read_write_paths``).
    Each a list of {key, value, unit}: ``value`` as ``systemd-run -p KEY=VALUE`` takes it, ``unit`` as the unit
    file writes it (``%`` doubled where systemd expands specifiers). ``config``: the ``sandbox`` entry of the
    agent's agents.d file, {systemd, directives: [[key, value], ...]} (all three lists, in that order).

    The agent's unit (agent.service.j2) and the transient units the host starts for the agent (its poll and
    rotation commands, ``agentops_host.sandbox``, from the ``sandbox`` entry) are both written from this one list.
    """
    version = int(systemd_version)
    limits = [{"key": key, "value": str(agent[field]), "unit": str(agent[field])}
              for key, field in (("MemoryMax", "memory_max"), ("CPUQuota", "cpu_quota"), ("TasksMax", "tasks_max"))]
    knobs = [{"key": knob["key"], "value": knob["value"], "unit": knob["value"]}
             for knob in agent.get("unit_knobs") or []
             if knob["field"] in LIMIT_KNOBS and knob["min_version"] <= version]
    hardening = []
    if agent.get("hardening", "standard") != "none":
        profiles = profile_directives or {}
        directives = list(profiles.get("standard") or []) + (
            list(profiles.get("strict") or []) if agent.get("hardening") == "strict" else [])
        hardening = [{"key": d["key"], "value": str(d["value"]), "unit": str(d["value"])}
                     for d in directives if int(d.get("min_version", 0)) <= version]
        # agents_normalize doubles the % of read_write_paths for the unit file; systemd-run -p takes them as they are
        paths = [agent["state_dir"]] + list(agent.get("read_write_paths") or [])
        hardening.append({"key": "ReadWritePaths", "value": " ".join(p.replace("%%", "%") for p in paths),
                          "unit": " ".join(paths)})
    return {"limits": limits, "knobs": knobs, "hardening": hardening,
            "config": {"systemd": version, "directives": [[d["key"], d["value"]] for d in limits + knobs + hardening]}}


def agents_files(agents, role_path, paths, systemd_version=None, profile_directives=None):
    """The agent_files arguments (users, directories, files, secret_contents) of every present agent.

    ``agents``: the effective settings (``agents_normalize``). Users with their state directory,
    ``AGENTS.md`` (rewritten), ``WORKSTATE.md`` (seeded once: ``force: false``), the unit and the
    ``agents.d`` settings file. Templates come from ``<role_path>/templates``; no credential is read. An
    ``agents.d`` file with a secret in it (auth check header values) goes through ``secret_contents``.
    """
    present = _present(agents)
    templates = os.path.join(str(role_path), "templates")
    users, directories, files, units, secret_contents = [], [], [], [], {}
    for agent in present:
        owner = {"owner": agent["user"], "group": agent["user"], "agent": agent["name"]}
        users.append({"name": agent["user"], "home": agent["state_dir"], "comment": "agentops agent %s" % agent["name"],
                      "agent": agent["name"]})
        directories.append(dict(owner, path=agent["state_dir"], mode="0700"))
        files.append(dict(owner, path=agent["state_dir"] + "/AGENTS.md", mode="0600",
                          content=render_template(templates, "AGENTS.md.j2", agent=agent)))
        files.append(dict(owner, path=agent["state_dir"] + "/WORKSTATE.md", mode="0600", force=False,
                          content=render_template(templates, "WORKSTATE.md.j2", agent=agent)))
    if present and systemd_version is None:
        raise AnsibleFilterError("agents_files: the systemd version of the host is needed to render the units")
    # After every agent's files in its own directory: an agent held there (agent_files) gets none of these.
    for agent in present:
        sandbox = agent_sandbox(agent, systemd_version, profile_directives)
        units.append({"path": "%s/%s" % (paths["units"], agent["unit"]), "mode": "0644", "agent": agent["name"],
                      "content": render_template(templates, "agent.service.j2", agent=agent, agentops_paths=paths,
                                                 agentops_agents_systemd_version=int(systemd_version),
                                                 agentops_agents_sandbox=sandbox)})
        if agent.get("schedule"):
            units.append({"path": "%s/%s" % (paths["units"], agent["timer"]), "mode": "0644", "agent": agent["name"],
                          "content": render_template(templates, "agent.timer.j2", agent=agent)})
        config = dict(agent["config"], sandbox=sandbox["config"])
        units.append(_secret_entry({"path": agent["config_file"], "mode": "0600", "content": _config_json(config),
                                    "agent": agent["name"]}, secret_contents))
    return {"users": users, "directories": directories, "files": files + units, "secret_contents": secret_contents}


def agents_credential_files(agents, inventory_agents):
    """The agent_files arguments (directories, secret_files, prune) of the present agents' credentials.

    Values come from ``inventory_agents`` (``agentops_agents``); the task using this keeps no_log.
    A credential that the host rotates is written only when its file is absent (``force: false``);
    ``prune`` keeps the credentials and the ``.prev`` copies of the rotated ones.
    """
    given = {}
    for entry in inventory_agents or []:
        if isinstance(entry, dict) and entry.get("name") not in given:
            given[entry.get("name")] = entry.get("credentials") or {}
    directories, secret_files, prune = [], [], []
    for agent in _present(agents):
        directories.append({"path": agent["credentials_dir"], "owner": "root", "group": "root", "mode": "0700"})
        values = given.get(agent["name"], {})
        for cred in agent["credentials"]:
            secret_files.append({"path": "%s/%s" % (agent["credentials_dir"], cred), "content": values[cred],
                                 "owner": "root", "group": "root", "mode": "0600",
                                 "force": cred not in agent["rotated_credentials"]})
        prune.append({"path": agent["credentials_dir"],
                      "keep": list(agent["credentials"]) + [c + ".prev" for c in agent["rotated_credentials"]]})
    return {"directories": directories, "secret_files": secret_files, "prune": prune}


def agents_absent_paths(agents, units_dir, unit_state=None):
    """What is removed of every agent marked absent: unit, drop-ins, enablement link, settings, credentials,
    and its timer; of a present agent without a schedule, the timer it had (when ``unit_state``, the states
    read before the run, shows that systemd knows it)."""
    out = []
    for agent in agents or []:
        if agent.get("state") != "absent":
            known = ((unit_state or {}).get(agent.get("timer")) or {}).get("LoadState") not in (None, "not-found")
            if not agent.get("schedule") and agent.get("timer") and known:
                timer = "%s/%s" % (units_dir, agent["timer"])
                out.extend([timer, "%s/timers.target.wants/%s" % (units_dir, agent["timer"])])
            continue
        unit = "%s/%s" % (units_dir, agent["unit"])
        out.extend([unit, unit + ".d", "%s/multi-user.target.wants/%s" % (units_dir, agent["unit"]),
                    agent["config_file"], agent["credentials_dir"]])
        if agent.get("timer"):
            timer = "%s/%s" % (units_dir, agent["timer"])
            out.extend([timer, "%s/timers.target.wants/%s" % (units_dir, agent["timer"])])
    return out


def systemd_state(text):
    """Output of ``systemctl --version | head -n 1; systemctl show -p ... units`` -> {version, units}."""
    first, _sep, rest = (text or "").partition("\n")
    words = first.split()
    if len(words) < 2 or words[0] != "systemd" or not words[1].isdigit():
        raise AnsibleFilterError("systemd_state: no systemd version in the first line of the output: %r" % first[:80])
    return {"version": int(words[1]), "units": parse_show(rest)}


def agents_unit_actions(agents, unit_state):
    """The systemctl work of a run, from the unit states read before it (one list per command).

    reset_failed: wanted agents (present, enabled, not scheduled) whose unit failed; start: wanted agents
    (the timer of a scheduled one) not both enabled and running; disable: present agents with ``enabled: false``
    whose unit (timer) is enabled, and the service of a scheduled agent that is enabled itself (only its timer
    is); stop: absent agents' units and timers that systemd still knows, and the timer of a present agent
    that no longer has a schedule. ``unit_state`` holds the services and the timers.
    """
    unit_state = unit_state or {}

    def prop(unit, key):
        return (unit_state.get(unit) or {}).get(key)

    def known(unit):
        return unit in unit_state and prop(unit, "LoadState") != "not-found"

    present = _present(agents)
    # A scheduled agent is started by its timer: the timer is what is enabled and running; the service's
    # failed state is the result of its last run (kept for the heartbeat and status, the next run clears it).
    wanted = [a["timer"] if a.get("schedule") else a["unit"] for a in present if a.get("enabled", True)]
    services = [a["unit"] for a in present if a.get("enabled", True) and not a.get("schedule")]
    stale_timers = [a["timer"] for a in present if not a.get("schedule") and a.get("timer") and known(a["timer"])]
    return {
        "reset_failed": [u for u in services if prop(u, "ActiveState") == "failed"],
        "start": [u for u in wanted if not (prop(u, "UnitFileState") == "enabled"
                                            and prop(u, "ActiveState") in ACTIVE_STATES)],
        "disable": [a["timer"] if a.get("schedule") else a["unit"] for a in present if not a.get("enabled", True)
                    and prop(a["timer"] if a.get("schedule") else a["unit"], "UnitFileState") == "enabled"]
        + [a["unit"] for a in present if a.get("schedule") and prop(a["unit"], "UnitFileState") == "enabled"],
        "stop": [a["unit"] for a in agents or [] if a.get("state") == "absent" and known(a["unit"])]
        + [a["timer"] for a in agents or [] if a.get("state") == "absent" and a.get("timer") and known(a["timer"])]
        + stale_timers,
    }


def agents_auth_checks(agents, config_dir):
    """Every auth check of the present agents: {agent, check, credential_file (None without a credential)}."""
    out = []
    for agent in agents or []:
        if agent.get("state", "present") != "present":
            continue
        for check in agent.get("auth_checks") or []:
            credential = check.get("credential")
            out.append({"agent": agent["name"], "check": check,
                        "credential_file": "%s/credentials/%s/%s" % (config_dir, agent["name"], credential)
                        if "credential" in check else None})
    return out


def _result_text(result):
    if "message" in result:
        return result["message"]
    if "msg" in result:
        return result["msg"]
    return "auth check %s could not run" % ((result.get("item") or {}).get("check") or {}).get("name")


def auth_check_report(results, fail_on_unreachable=False):
    """The registered results of the auth_check loop -> {lines, failures, unreachable} (messages only)."""
    lines, failures, unreachable = [], [], []
    for result in results or []:
        agent = (result.get("item") or {}).get("agent")
        status = result.get("status")
        lines.append("agent %s, %s: %s" % (agent, status if "status" in result else "AUTH_FAILED", _result_text(result)))
        if status == "AUTH_UNREACHABLE":
            unreachable.append(result.get("message"))
        if not result.get("passed", False) and not (status == "AUTH_UNREACHABLE" and not fail_on_unreachable):
            failures.append("agent %s: %s" % (agent, _result_text(result)))
    return {"lines": lines, "failures": failures, "unreachable": unreachable}


def agents_rotating(agents):
    """True when a present agent has a token_rotation entry (the daily rotation job is wanted)."""
    return any(a.get("state", "present") != "absent" and len(a.get("token_rotation") or []) > 0
               for a in agents or [] if isinstance(a, dict))


def host_command_files(paths, role_path, shared_modules):
    """The agent_files ``files`` of the on-host command: the entry script, agentops_host/*.py, agentops_lib/*.py.

    Read from the common role's ``files`` folder and the collection's ``plugins/module_utils``.
    """
    role_path = str(role_path)
    files_dir = os.path.join(role_path, "files")
    utils_dir = os.path.normpath(os.path.join(role_path, "..", "..", "plugins", "module_utils"))

    def read(path):
        try:
            with open(path, "rb") as handle:
                return handle.read().decode("utf-8")
        except (IOError, OSError, UnicodeDecodeError) as exc:
            raise AnsibleFilterError("host_command_files: cannot read %s: %s" % (path, exc))

    host_dir = os.path.join(files_dir, "agentops_host")
    out = [{"path": paths["bin"], "mode": "0755", "content": read(os.path.join(files_dir, "agentops"))}]
    for name in sorted(n for n in os.listdir(host_dir) if n.endswith(".py")):
        out.append({"path": "%s/agentops_host/%s" % (paths["lib"], name), "mode": "0644",
                    "content": read(os.path.join(host_dir, name))})
    for name in shared_modules or []:
        out.append({"path": "%s/agentops_lib/%s" % (paths["lib"], name), "mode": "0644",
                    "content": read(os.path.join(utils_dir, name))})
    return out


def _hostvar(hostvars, host, name):
    try:
        value = hostvars[host][name]
    except (KeyError, TypeError):
        return None
    except Exception:  # pylint: disable=broad-except  # an undefined variable of an unreachable host
        return None
    return value


def status_fleet_rows(hosts, hostvars):
    """One row per agent of every host (display strings) from the results of status.yml's tasks.

    ``hosts``: ``ansible_play_hosts_all``; per host the registered ``agentops_status_stat`` (the
    command's stat) and ``agentops_status_cmd`` (``agentops status --json``) are read from ``hostvars``.
    """
    rows = []
    for host in hosts or []:
        stat = _hostvar(hostvars, host, "agentops_status_stat") or {}
        cmd = _hostvar(hostvars, host, "agentops_status_cmd") or {}
        rows.extend(agentops_status.fleet_rows_of_host(host, stat.get("stat"), cmd))
    return rows


def status_fleet_notes(hosts, hostvars):
    """The watcher lines of every host (heartbeat last run, metrics file, dead man's switch targets,
    dead-letter count), each prefixed with its host, from the same results as ``status_fleet_rows``."""
    import time  # pylint: disable=import-outside-toplevel
    now = time.time()
    notes = []
    for host in hosts or []:
        notes.extend(agentops_status.fleet_notes_of_host(host, _hostvar(hostvars, host, "agentops_status_cmd"), now))
    return notes


def status_report(rows, fmt="table", generated=None, notes=None):
    """The fleet report of ``status_fleet_rows``: ``table`` (the aligned table), ``text``, ``markdown`` or ``html``;
    ``notes`` (``status_fleet_notes``) under the table, in a "Watchers" section of the reports."""
    try:
        return agentops_status.fleet_report(rows, fmt, generated, notes)
    except ValueError as exc:
        raise AnsibleFilterError("status_report: %s" % exc)


def audit_summary(hosts, hostvars, ids):
    """audit.yml's fleet summary: one aligned line per host (``agentops_audit_result``) and a count line."""
    rows = [["HOST", "RESULT", "PASSED"] + list(ids)]
    passed_hosts = failed_hosts = missing = 0
    for host in hosts or []:
        result = _hostvar(hostvars, host, "agentops_audit_result") or {}
        checklist = result.get("checklist") if isinstance(result, dict) else None
        if checklist is None:
            rows.append([host, "not audited", "-"] + ["-"] * len(ids))
            missing += 1
            continue
        marks = dict((item["id"], "ok" if item["passed"] else "FAIL") for item in checklist)
        passed = len([item for item in checklist if item["passed"]])
        rows.append([host, "pass" if result.get("passed") else "FAIL", "%d/%d" % (passed, len(checklist))]
                    + [marks.get(i, "-") for i in ids])
        if result.get("passed"):
            passed_hosts += 1
        else:
            failed_hosts += 1
    lines = agentops_status.aligned(rows)
    lines.append("%d host(s) pass every item, %d fail at least one%s" % (
        passed_hosts, failed_hosts, (", %d not audited (unreachable or error)" % missing) if missing else ""))
    return "\n".join(lines)


def audit_checklist(result, host):
    """One host's ``agentops_audit_result`` -> aligned lines: a title, one PASS/FAIL line per item, the units."""
    checklist = result.get("checklist") or []
    width = max([len(item["id"]) for item in checklist] or [0])
    lines = ["Agent Ops Checklist for %s: %s" % (host, result.get("summary"))]
    for item in checklist:
        lines.append("%s  %s  %s" % ("PASS" if item["passed"] else "FAIL", item["id"].ljust(width), item["reason"]))
    units = [agent["unit"] for agent in result.get("agents") or []]
    lines.append("agent units: " + (", ".join(units) or "none"))
    return lines


def audit_report(hosts, hostvars, generated):
    """audit.yml's fleet report: {generated, passed, hosts: {host: {passed, summary, failed_items, checklist, agents}}}."""
    report = {}
    for host in hosts or []:
        result = _hostvar(hostvars, host, "agentops_audit_result") or {}
        if isinstance(result, dict) and "checklist" in result:
            report[host] = dict((key, result.get(key)) for key in
                                ("passed", "summary", "failed_items", "checklist", "agents"))
        else:
            report[host] = {"passed": False, "summary": "not audited (unreachable or error)",
                            "failed_items": [], "checklist": [], "agents": []}
    return {"generated": generated, "passed": all(entry["passed"] for entry in report.values()), "hosts": report}


class FilterModule(object):
    """agentops.fleet filters: the inventory contract (plugins/module_utils/agentops_contract.py) and module arguments."""

    def filters(self):
        return {
            "agents_errors": agents_errors,
            "agents_user_errors": agents_user_errors,
            "agents_heartbeat_tick": heartbeat_tick,
            "heartbeat_settings": heartbeat_settings,
            "agentops_settings_errors": settings_errors,
            "agents_normalize": agents_normalize,
            "systemctl_show": systemctl_show,
            "timespan_seconds": timespan_seconds,
            "agents_files": agents_files,
            "secret_json_files": secret_json_files,
            "agents_sandbox": agent_sandbox,
            "agents_credential_files": agents_credential_files,
            "agents_absent_paths": agents_absent_paths,
            "agents_unit_actions": agents_unit_actions,
            "systemd_state": systemd_state,
            "agents_auth_checks": agents_auth_checks,
            "auth_check_report": auth_check_report,
            "agents_rotating": agents_rotating,
            "host_command_files": host_command_files,
            "status_fleet_rows": status_fleet_rows,
            "status_report": status_report,
            "status_fleet_notes": status_fleet_notes,
            "audit_summary": audit_summary,
            "audit_checklist": audit_checklist,
            "audit_report": audit_report,
        }
