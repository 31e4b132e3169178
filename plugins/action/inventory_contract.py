# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)
"""Action plugin of agentops.fleet.inventory_contract: validate a host's inventory once, before any change."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

try:  # ansible-core >= 2.19 templates only strings marked as trusted templates
    from ansible.template import trust_as_template
except ImportError:  # pragma: no cover - older ansible-core templates every string
    def trust_as_template(value):
        return value

from ansible_collections.agentops.fleet.plugins.module_utils import agentops_contract as contract
from ansible_collections.agentops.fleet.plugins.module_utils import agentops_runtime as runtime

ROLES = ("common", "journald", "alerts", "agents", "heartbeat", "token_rotation", "auth")
COLLECTION_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
ROLES_DIR = os.path.join(COLLECTION_DIR, "roles")
# The agentops_* variables besides the roles' options: playbook variables (documented) and the collection's own.
VARIABLES_FILE = os.path.join(COLLECTION_DIR, "meta", "variables.yml")
FACT = "agentops_contract_checked"
# Agent name -> problems found in a place a user other than root can write (its own directory, ...): the agents
# role leaves these agents as they were, deploys the others, alerts, and the run fails at its end naming them.
HELD = "agentops_agents_held"
# True when the playbook reports the held agents at its end (playbooks/site.yml), not each role.
HELD_DEFERRED = "agentops_agents_held_deferred"


def _redacted(value):
    """The inventory with every secret replaced by its type (agentops_contract.SECRET_FIELDS): the digest never
    depends on a secret."""
    return contract.redact_secrets(value, lambda secret: "<%s>" % type(secret).__name__)


def _trusted(value):
    """Role defaults are the collection's own templates: mark them as such (ansible-core >= 2.19)."""
    if isinstance(value, dict):
        return dict((key, _trusted(item)) for key, item in value.items())
    if isinstance(value, list):
        return [_trusted(item) for item in value]
    if isinstance(value, str):
        return trust_as_template(value)
    return value


def _digest(role, values):
    text = json.dumps([role, _redacted(values)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


class ActionModule(ActionBase):
    """Validate the inventory contract of the named roles; fail before anything on the host changes."""

    TRANSFERS_FILES = False
    _requires_connection = False

    def _role_defaults(self, role):
        path = os.path.join(ROLES_DIR, role, "defaults", "main.yml")
        if not os.path.isfile(path):
            raise AnsibleError("agentops.fleet.inventory_contract: unknown role %r" % role)
        return _trusted(self._loader.load_from_file(path) or {})

    def _load(self, path):
        try:
            return self._loader.load_from_file(path) or {}
        except AnsibleError as exc:
            raise AnsibleError("agentops.fleet.inventory_contract: cannot read %s: %s" % (path, exc))

    def _role_options(self):
        """Every option of every role's meta/argument_specs.yml (all entry points)."""
        names = set()
        for role in sorted(os.listdir(ROLES_DIR)):
            path = os.path.join(ROLES_DIR, role, "meta", "argument_specs.yml")
            if os.path.isfile(path):
                for entry in (self._load(path).get("argument_specs") or {}).values():
                    names.update((entry or {}).get("options") or {})
        return names

    def _variable_errors(self, task_vars, checked):
        """The agentops_* variables of this host that no role or playbook of the collection knows (a typo would
        otherwise be ignored and the default applied); checked once per host and set of names."""
        listed = self._load(VARIABLES_FILE)
        internal = set(listed.get("internal") or [])
        names = sorted(name for name in task_vars
                       if isinstance(name, str) and name.startswith(contract.VARIABLE_PREFIX) and name not in internal)
        marker = "variables:" + hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()[:24]
        if marker in checked:
            return [], None
        documented = self._role_options() | set(listed.get("settings") or {})
        return contract.unknown_variable_errors(names, documented | internal, documented), marker

    def _value(self, name, task_vars, defaults):
        raw = task_vars[name] if name in task_vars else defaults[name]
        return self._templar.template(raw)

    def _users(self, task_vars):
        """The host's passwd database (read-only getent; cached in the facts of this run)."""
        facts = task_vars.get("ansible_facts") or {}
        if "getent_passwd" in facts:
            return facts["getent_passwd"], {}
        result = self._execute_module(module_name="ansible.builtin.getent",
                                      module_args={"database": "passwd"}, task_vars=task_vars)
        if result.get("failed"):
            raise AnsibleError("agentops.fleet.inventory_contract: reading the users of the host failed: %s"
                               % result.get("msg"))
        passwd = (result.get("ansible_facts") or {}).get("getent_passwd") or {}
        return passwd, {"getent_passwd": passwd}

    def _calendar(self, task_vars, expressions):
        """(rc, stderr) of ``systemd-analyze calendar -- <expressions>`` on the host (argv, no shell; read-only,
        so it also runs in check mode)."""
        check_mode = self._task.check_mode
        self._task.check_mode = False
        try:
            result = self._execute_module(module_name="ansible.builtin.command",
                                          module_args={"argv": ["systemd-analyze", "calendar", "--"] + expressions},
                                          task_vars=task_vars)
        finally:
            self._task.check_mode = check_mode
        if "rc" not in result:
            raise AnsibleError("agentops.fleet.inventory_contract: systemd-analyze calendar could not run on the "
                               "host: %s" % result.get("msg"))
        return result["rc"], (result.get("stderr") or "").strip()

    def _schedule_errors(self, task_vars, agents):
        """The schedules systemd on the host refuses (``systemd-analyze calendar``), naming each agent:
        one call for all schedules, one per schedule only when that call fails."""
        scheduled = [(index, agent) for index, agent in enumerate(agents or [])
                     if isinstance(agent, dict) and agent.get("state", "present") == "present" and agent.get("schedule")]
        if not scheduled:
            return []
        rc, _stderr = self._calendar(task_vars, sorted(set(a["schedule"] for _i, a in scheduled)))
        if rc == 0:
            return []
        errors = []
        for index, agent in scheduled:
            rc, stderr = self._calendar(task_vars, [agent["schedule"]])
            if rc != 0:
                errors.append("agentops_agents[%s].schedule: %r is refused by systemd on %s (systemd-analyze "
                              "calendar: %s); see systemd.time(7)" % (agent.get("name", index), agent["schedule"],
                                                                      task_vars.get("inventory_hostname", "the host"),
                                                                      stderr.splitlines()[-1] if stderr else rc))
        return errors

    def _host_agents(self, task_vars, agents):
        """The module arguments of agentops.fleet.agent_runtime: every present agent, what root uses of it."""
        hardening = self._value("agentops_agents_hardening", task_vars, self._role_defaults("agents"))
        out = []
        for agent in agents or []:
            if not (isinstance(agent, dict) and agent.get("state", "present") == "present"
                    and isinstance(agent.get("command"), str)):
                continue
            name = agent["name"]
            paths = []
            for check in agent.get("auth_checks") or []:
                if not isinstance(check, dict):
                    continue
                field = "auth_checks[%s]" % check.get("name")
                if check.get("type") == "file" and isinstance(check.get("path"), str):
                    paths.append({"field": field + ".path", "path": check["path"], "use": "stat"})
                if check.get("type") == "http" and isinstance(check.get("ca_path"), str):
                    paths.append({"field": field + ".ca_path", "path": check["ca_path"], "use": "read"})
                if check.get("type") == "command":
                    words = runtime.split_command(check.get("command"))
                    if words and words[0].startswith("/"):
                        paths.append({"field": field + ".command", "path": words[0], "use": "run"})
            out.append({"name": name, "command": agent["command"], "user": agent.get("user") or "agent-%s" % name,
                        "own_dir": "%s/%s" % (contract.PATHS["state"], name),
                        "executable": agent.get("enabled", True) is not False,
                        "strict": agent.get("hardening", hardening) == "strict", "paths": paths})
        return out

    def _host_checks(self, task_vars, agents):
        """(errors, held) from agentops.fleet.agent_runtime (read-only, one call for every present agent, in check
        mode too): the command's executable exists and the agent's user may run it (enabled agents), a strict
        agent's command runs no JIT runtime (node, deno, bun, java: MemoryDenyWriteExecute=yes would kill it at
        every start), and the paths of its auth checks. ``errors`` lie in places only root can write: inventory
        errors. ``held``: agent name -> problems in a place a user other than root can write; those agents are
        left as they were and the others are deployed."""
        arguments = self._host_agents(task_vars, agents)
        if not arguments:
            return [], {}
        check_mode = self._task.check_mode
        self._task.check_mode = False
        try:
            result = self._execute_module(module_name="agentops.fleet.agent_runtime",
                                          module_args={"agents": arguments}, task_vars=task_vars)
        finally:
            self._task.check_mode = check_mode
        if result.get("failed"):
            raise AnsibleError("agentops.fleet.inventory_contract: %s" % result.get("msg"))
        errors, held = [], {}
        for name, found in sorted((result.get("agents") or {}).items()):
            errors.extend(found.get("errors") or [])
            if found.get("problems"):
                held[name] = list(found["problems"])
        return errors, held

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        roles = self._task.args.get("roles") or list(ROLES)
        if isinstance(roles, str):
            roles = [roles]
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            return dict(result, failed=True, msg="inventory_contract: unknown role(s) %s (known: %s)"
                        % (", ".join(map(str, unknown)), ", ".join(ROLES)))
        checked = list(task_vars.get(FACT) or [])
        errors = contract.removed_errors([name for name in task_vars if name.startswith("agentops_")])
        variable_errors, marker = self._variable_errors(task_vars, checked)
        errors.extend(variable_errors)
        if marker is not None:
            checked.append(marker)
        new_facts = {}
        validated = []
        parts = []
        for role in roles:
            defaults = self._role_defaults(role)
            values = {name: self._value(name, task_vars, defaults) for name in sorted(defaults)}
            agents = values.pop("agentops_agents", None)
            parts.append((role, values))
            if agents is not None and not any(part == "agentops_agents" for part, _values in parts):
                parts.append(("agentops_agents", agents))
        for part, values in parts:
            digest = _digest(part, values)
            if digest in checked:
                continue
            if part == "agentops_agents":
                part_errors = contract.agents_errors(values)
                if not part_errors and any(isinstance(a, dict) and a.get("state", "present") == "present"
                                           for a in values or []):
                    passwd, facts = self._users(task_vars)
                    new_facts.update(facts)
                    part_errors = contract.agents_user_errors(values, passwd) or self._schedule_errors(task_vars, values)
                    if not part_errors:
                        part_errors, held = self._host_checks(task_vars, values)
                        new_facts[HELD] = held
                elif not part_errors:
                    new_facts[HELD] = {}
            else:
                part_errors = contract.role_errors(part, values)
            errors.extend(e for e in part_errors if e not in errors)
            validated.append(part)
            checked.append(digest)
        if errors:
            return dict(result, failed=True, changed=False, msg="; ".join(errors), problems=errors)
        new_facts[FACT] = checked
        if self._task.args.get("defer_held"):
            new_facts[HELD_DEFERRED] = True
        new_facts["agentops_paths"] = dict(contract.PATHS)
        held = new_facts.get(HELD) or {}
        msg = "inventory contract: %s valid" % (", ".join(validated) or "already validated")
        if held:
            msg += "; left as they are (a problem in a place a user other than root can write): %s" % (
                "; ".join(p for name in sorted(held) for p in held[name]))
        return dict(result, changed=False, validated=validated, ansible_facts=new_facts, held=held, msg=msg)
