"""The roles' meta/argument_specs.yml against the inventory contract, and scripts/gen-docs.py.

Ansible validates a role's arguments (nested options included) when the role starts, with the same
ArgumentSpecValidator used here: a spec stricter than the contract would fail valid inventories, so
every inventory of the repository and every type the contract accepts must pass every role's spec,
and what the spec rejects the contract rejects as well.
"""
import glob
import hashlib
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.agentops.fleet.plugins.module_utils import agentops_contract as contract

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ROLES = sorted(os.path.basename(os.path.dirname(os.path.dirname(p)))
               for p in glob.glob(os.path.join(ROOT, "roles", "*", "meta", "argument_specs.yml")))
CONTRACT_VARS = ("agentops_agents", "agentops_alert_channels")


def _spec(role, entry="main"):
    with open(os.path.join(ROOT, "roles", role, "meta", "argument_specs.yml"), encoding="utf-8") as handle:
        return (yaml.safe_load(handle)["argument_specs"][entry].get("options") or {})


def _roles_with_nested(variable):
    return [role for role in ROLES if "options" in _spec(role).get(variable, {})]


def _errors(role, variable, value):
    options = _spec(role)
    result = ArgumentSpecValidator({variable: options[variable]}).validate({variable: value})
    return [str(e) for e in result.errors]


def _scrub(node):
    """Templated values (vault secrets) stand for strings."""
    if isinstance(node, str) and "{{" in node:
        return "a-secret-value"
    if isinstance(node, dict):
        return dict((k, _scrub(v)) for k, v in node.items())
    if isinstance(node, list):
        return [_scrub(v) for v in node]
    return node


def _repository_inventories():
    """Every agentops_agents / agentops_alert_channels value of the example, demo and Molecule inventories."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in CONTRACT_VARS and isinstance(value, list):
                    found.append((where, key, _scrub(value)))
                else:
                    walk(value, where)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    paths = sorted(glob.glob(os.path.join(ROOT, "inventories", "**", "*.yml"), recursive=True)
                   + glob.glob(os.path.join(ROOT, "molecule", "**", "*.yml"), recursive=True))
    for path in paths:
        if path.endswith("vault.yml"):
            continue
        with open(path, encoding="utf-8") as handle:
            for document in yaml.safe_load_all(handle):
                walk(document, os.path.relpath(path, ROOT))
    return found


def test_every_role_with_agents_documents_the_fields_of_an_agent():
    roles = _roles_with_nested("agentops_agents")
    assert "agents" in roles
    for role in ROLES:
        if "agentops_agents" in _spec(role):
            assert role in roles, "%s declares agentops_agents without its fields" % role


def test_every_repository_inventory_passes_every_role_spec():
    inventories = _repository_inventories()
    assert len([i for i in inventories if i[1] == "agentops_agents"]) >= 10
    assert len([i for i in inventories if i[1] == "agentops_alert_channels"]) >= 5
    checked = 0
    for where, variable, value in inventories:
        for role in _roles_with_nested(variable):
            assert _errors(role, variable, value) == [], (where, role)
            checked += 1
    assert checked >= 50


FULL_AGENT = {
    "name": "mail-triage", "command": "/opt/agents/mail-triage/run --loop", "state": "present", "enabled": True,
    "user": "agent-mail", "share_user": False, "description": "Mail triage (50% of the inbox)",
    "environment": {"LOG_LEVEL": "info", "WORKERS": 4, "DRY_RUN": False},
    "credentials": {"graph_token": "t0k3n", "api.key": "k"},
    "auth_checks": [
        {"name": "graph", "type": "http", "url": "https://graph.example.com/v1.0/me", "method": "GET",
         "headers": {"X-Api-Key": "h"}, "credential": "graph_token", "username": "bot", "expect_status": [200, 204],
         "timeout": 30, "validate_certs": True},
        {"name": "jwt", "type": "jwt", "credential": "graph_token", "min_valid": "7d", "fail_on_expiring": True},
        {"name": "cli", "type": "command", "command": "/usr/local/bin/tool auth list", "expect_regex": "^valid",
         "timeout": 2.5},
        {"name": "file", "type": "file", "path": "/etc/agentops/credentials/mail-triage/api.key", "max_age": 3600},
    ],
    "heartbeat": {"interval": "15s", "max_silence": 1800, "progress": "command", "file": "beat",
                  "command": "/opt/agents/mail-triage/ping", "active_hours": "22:00-06:00", "workstate_max_age": "2h"},
    "token_rotation": [{"credential": "graph_token", "every_days": 45, "command": "/opt/agents/refresh", "timeout": 60}],
    "failure_modes": [{"tool": "email", "on_failure": "Alert the owner"}],
    "hardening": "strict", "read_write_paths": ["/srv/mail"], "restart_sec": 2, "timeout_stop_sec": "1min 30s",
    "start_limit_interval_sec": "5min", "start_limit_burst": 3, "memory_max": 1073741824, "cpu_quota": "50%",
    "tasks_max": "infinity",
}


def _variant(**changes):
    agent = dict(FULL_AGENT)
    agent.update(changes)
    return [agent]


VALID_AGENTS = {
    "every-field": [FULL_AGENT],
    "minimal": [{"name": "a", "command": "/bin/true"}],
    "absent-without-command": [{"name": "gone", "state": "absent"}],
    "heartbeat-null": _variant(heartbeat=None),
    "heartbeat-defaults": _variant(heartbeat={}),
    "heartbeat-nulls": _variant(heartbeat={"interval": "5min", "command": None, "active_hours": None,
                                           "workstate_max_age": None}),
    "expect-status-single-int": [{"name": "a", "command": "/bin/true", "credentials": {"t": "x"},
                                  "auth_checks": [{"name": "c", "type": "http", "url": "http://127.0.0.1/",
                                                   "expect_status": 200, "credential": "t"}]}],
    "every-days-and-timeout-as-strings": _variant(token_rotation=[{"credential": "graph_token", "every_days": "30",
                                                                   "command": "/opt/r", "timeout": "90"}]),
    "time-spans-as-numbers": _variant(restart_sec=10, timeout_stop_sec=30, start_limit_interval_sec=300),
    "sizes-and-limits": _variant(memory_max="50%", tasks_max=512),
    "tasks-max-percent": _variant(tasks_max="20%", memory_max="infinity"),
    "auth-check-variants": _variant(auth_checks=[
        {"name": "post", "type": "http", "url": "https://api.example.com/check", "method": "post",
         "body": {"ping": True}, "ca_path": "/etc/ssl/private-ca.pem", "expect_status": "204", "timeout": "30s"},
        {"name": "text", "type": "http", "url": "https://api.example.com/", "body": "ping", "expect_status": ""},
        {"name": "argv", "type": "command", "command": ["/usr/local/bin/tool", "auth", "list"], "timeout": 5},
        {"name": "nulls", "type": "http", "url": "https://api.example.com/", "headers": None,
         "validate_certs": None, "expect_status": None}]),
    "shared-user": [dict(FULL_AGENT, share_user=True), dict(FULL_AGENT, name="second", share_user=True)],
}


@pytest.mark.parametrize("case", sorted(VALID_AGENTS))
def test_what_the_contract_accepts_every_role_spec_accepts(case):
    agents = VALID_AGENTS[case]
    assert contract.agents_errors(agents) == [], case
    roles = _roles_with_nested("agentops_agents")
    assert len(roles) >= 4
    for role in roles:
        assert _errors(role, "agentops_agents", agents) == [], (case, role)


BAD_AGENTS = {
    "enabled-not-a-boolean": (_variant(enabled="maybe"), "enabled"),
    "environment-a-list": (_variant(environment=["LOG_LEVEL=info"]), "environment"),
    "burst-not-a-number": (_variant(start_limit_burst="five"), "start_limit_burst"),
    "state-unknown": (_variant(state="gone"), "state"),
    "hardening-unknown": (_variant(hardening="paranoid"), "hardening"),
    "unknown-key": (_variant(colour="blue"), "colour"),
    "unknown-heartbeat-key": (_variant(heartbeat={"interval": "5min", "colour": 1}), "colour"),
    "unknown-auth-key": (_variant(auth_checks=[{"name": "c", "type": "jwt", "credential": "graph_token",
                                                "token": "x"}]), "token"),
    "unknown-rotation-key": (_variant(token_rotation=[{"credential": "graph_token", "command": "/r",
                                                       "cron": "* * *"}]), "cron"),
    "no-name": ([{"command": "/bin/true"}], "name"),
    "rotation-without-command": (_variant(token_rotation=[{"credential": "graph_token"}]), "command"),
    "failure-mode-without-tool": (_variant(failure_modes=[{"on_failure": "alert"}]), "tool"),
    "progress-unknown": (_variant(heartbeat={"progress": "vibes"}), "progress"),
    "certs-not-a-boolean": (_variant(auth_checks=[{"name": "c", "type": "http", "url": "https://x/",
                                                   "validate_certs": "maybe"}]), "validate_certs"),
    "headers-a-string": (_variant(auth_checks=[{"name": "c", "type": "http", "url": "https://x/",
                                                "headers": "X-Key"}]), "headers"),
}


@pytest.mark.parametrize("case", sorted(BAD_AGENTS))
def test_a_bad_type_fails_role_validation_and_the_contract(case):
    agents, field = BAD_AGENTS[case]
    assert contract.agents_errors(agents), "the contract accepts %s: the spec must too" % case
    for role in _roles_with_nested("agentops_agents"):
        errors = _errors(role, "agentops_agents", agents)
        assert errors, (case, role)
        assert any(field in e for e in errors), (case, role, errors)


def test_channels_the_contract_accepts_pass_the_alerts_spec():
    channels = [{"type": "telegram", "bot_token": "1:x", "chat_id": -1001234567890, "api_url": "http://127.0.0.1:1"},
                {"type": "telegram", "bot_token": "1:x", "chat_id": "-100"},
                {"type": "webhook", "url": "https://hooks.example.com/x"},
                {"type": "command", "command": "/usr/local/bin/page-owner --now"}]
    assert contract.channels_errors(channels) == []
    assert _errors("alerts", "agentops_alert_channels", channels) == []
    bad = [{"type": "webhook", "url": "https://hooks.example.com/x", "colour": "red"}]
    assert contract.channels_errors(bad)
    assert _errors("alerts", "agentops_alert_channels", bad)


def test_validate_entry_points_leave_the_fields_to_the_contract():
    """tasks_from: validate reports each problem with the agent's name: its spec declares the list only."""
    for role in ROLES:
        path = os.path.join(ROOT, "roles", role, "meta", "argument_specs.yml")
        with open(path, encoding="utf-8") as handle:
            entries = yaml.safe_load(handle)["argument_specs"]
        if "validate" in entries and "agentops_agents" in (entries["validate"].get("options") or {}):
            option = entries["validate"]["options"]["agentops_agents"]
            assert "options" not in option, role
            result = ArgumentSpecValidator(entries["validate"]["options"]).validate(
                {"agentops_agents": [{"name": "a", "colour": "blue"}]})
            assert result.errors.errors == [], role


# --------------------------------------------------------------------------- scripts/gen-docs.py
@pytest.fixture()
def tree(tmp_path):
    """A copy of what the generator reads and writes."""
    for folder in ("roles", os.path.join("plugins", "module_utils"), "scripts"):
        shutil.copytree(os.path.join(ROOT, folder), str(tmp_path / folder),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "files", "templates", "tasks", "handlers"))
    return tmp_path


def _gen(tree, *args):
    proc = subprocess.run([sys.executable, str(tree / "scripts" / "gen-docs.py")] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def _digest(tree):
    digest = hashlib.sha256()
    for path in sorted(glob.glob(str(tree / "roles" / "**" / "*"), recursive=True)):
        if os.path.isfile(path):
            digest.update(path.encode())
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


def _edit(path, old, new):
    text = path.read_text(encoding="utf-8")
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_make_docs_is_idempotent_and_check_mode_agrees(tree):
    rc, _, err = _gen(tree)
    assert rc == 0, err
    before = _digest(tree)
    rc, out, err = _gen(tree)
    assert rc == 0, err
    assert "nothing to update" in out
    assert _digest(tree) == before
    rc, out, err = _gen(tree, "--check")
    assert rc == 0, err
    assert "up to date" in out


def test_check_mode_prints_a_diff_of_a_stale_readme_and_changes_nothing(tree):
    assert _gen(tree)[0] == 0
    readme = tree / "roles" / "journald" / "README.md"
    _edit(readme, "| `agentops_journald_system_max_use` | str | `2G` |", "| `agentops_journald_system_max_use` | str | `4G` |")
    _edit(readme, "## Example", "## Example, written by hand")
    stale = readme.read_text(encoding="utf-8")
    rc, out, err = _gen(tree, "--check")
    assert rc == 1
    assert "-| `agentops_journald_system_max_use` | str | `4G` |" in out
    assert "+| `agentops_journald_system_max_use` | str | `2G` |" in out
    assert "roles/journald/README.md" in err and "make docs" in err
    assert readme.read_text(encoding="utf-8") == stale
    assert _gen(tree)[0] == 0
    fixed = readme.read_text(encoding="utf-8")
    assert "| `agentops_journald_system_max_use` | str | `2G` |" in fixed
    assert "## Example, written by hand" in fixed


def test_a_default_that_differs_from_defaults_main_fails(tree):
    _edit(tree / "roles" / "heartbeat" / "defaults" / "main.yml", "agentops_heartbeat_tick: 1min",
          "agentops_heartbeat_tick: 2min")
    before = _digest(tree)
    for args in ((), ("--check",)):
        rc, _, err = _gen(tree, *args)
        assert rc == 1
        assert "the default of agentops_heartbeat_tick is \"1min\", but roles/heartbeat/defaults/main.yml sets \"2min\"" in err
    assert _digest(tree) == before


def test_a_default_of_another_type_fails(tree):
    _edit(tree / "roles" / "agents" / "defaults" / "main.yml", "agentops_agents_start_limit_burst: 5",
          "agentops_agents_start_limit_burst: \"5\"")
    rc, _, err = _gen(tree, "--check")
    assert rc == 1 and "agentops_agents_start_limit_burst" in err


def test_a_variable_in_only_one_of_spec_and_defaults_fails(tree):
    defaults = tree / "roles" / "journald" / "defaults" / "main.yml"
    with open(str(defaults), "a", encoding="utf-8") as handle:
        handle.write("# A setting nobody documented.\nagentops_journald_undocumented: 1\n")
    rc, _, err = _gen(tree, "--check")
    assert rc == 1
    assert "agentops_journald_undocumented is not documented in roles/journald/meta/argument_specs.yml" in err
    _edit(defaults, "# A setting nobody documented.\nagentops_journald_undocumented: 1\n", "")
    _edit(defaults, "agentops_journald_compress: true\n", "")
    rc, _, err = _gen(tree, "--check")
    assert rc == 1
    assert "agentops_journald_compress is documented but has no default in roles/journald/defaults/main.yml" in err


def test_a_default_without_its_comment_fails(tree):
    defaults = tree / "roles" / "alerts" / "defaults" / "main.yml"
    lines = defaults.read_text(encoding="utf-8").splitlines(True)
    index = [i for i, line in enumerate(lines) if line.startswith("agentops_alert_repeat:")][0]
    assert lines[index - 1].startswith("#")
    del lines[index - 1]
    defaults.write_text("".join(lines), encoding="utf-8")
    rc, _, err = _gen(tree, "--check")
    assert rc == 1
    assert "agentops_alert_repeat has no comment line directly above it" in err


def test_a_field_the_contract_accepts_but_the_spec_lacks_fails(tree):
    _edit(tree / "plugins" / "module_utils" / "agentops_contract.py", "AGENT_KEYS = (", 'AGENT_KEYS = ("nice_level", ')
    rc, _, err = _gen(tree, "--check")
    assert rc == 1
    assert "agentops_agents lacks nice_level, which the contract (AGENT_KEYS) accepts" in err
    for role in ("agents", "auth", "heartbeat", "token_rotation"):
        assert "roles/%s/meta/argument_specs.yml main" % role in err


def test_a_removed_variable_still_declared_fails(tree):
    name = sorted(contract.REMOVED_VARIABLES)[0]
    spec = tree / "roles" / "journald" / "meta" / "argument_specs.yml"
    _edit(spec, "    options:\n", "    options:\n      %s:\n        type: str\n        default: x\n"
          "        description: Gone.\n" % name)
    defaults = tree / "roles" / "journald" / "defaults" / "main.yml"
    with open(str(defaults), "a", encoding="utf-8") as handle:
        handle.write("# Gone.\n%s: x\n" % name)
    rc, _, err = _gen(tree, "--check")
    assert rc == 1
    assert "%s is a removed variable of the contract" % name in err


def test_the_fields_of_an_agent_are_copied_into_every_role_and_readme(tree):
    _edit(tree / "roles" / "agents" / "meta" / "argument_specs.yml",
          "description: The tool, one line.", "description: The tool, one line (for example C(email)).")
    rc, _, err = _gen(tree, "--check")
    assert rc == 1 and "stale" in err
    assert _gen(tree)[0] == 0
    for role in ("auth", "heartbeat", "token_rotation"):
        text = (tree / "roles" / role / "meta" / "argument_specs.yml").read_text(encoding="utf-8")
        assert "The tool, one line (for example C(email))." in text, role
        with open(str(tree / "roles" / role / "meta" / "argument_specs.yml"), encoding="utf-8") as handle:
            spec = yaml.safe_load(handle)
        tool = spec["argument_specs"]["main"]["options"]["agentops_agents"]["options"]["failure_modes"]["options"]["tool"]
        assert tool == {"type": "str", "required": True, "description": "The tool, one line (for example C(email))."}
    readme = (tree / "roles" / "agents" / "README.md").read_text(encoding="utf-8")
    assert "| `tool` | str | required | The tool, one line (for example `email`). |" in readme
    assert _gen(tree, "--check")[0] == 0


def test_two_runs_on_two_copies_write_the_same_bytes(tree, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    for folder in ("roles", os.path.join("plugins", "module_utils"), "scripts"):
        shutil.copytree(str(tree / folder), str(other / folder))
    assert _gen(tree)[0] == 0 and _gen(other)[0] == 0
    for path in sorted(glob.glob(str(tree / "roles" / "*" / "README.md"))
                       + glob.glob(str(tree / "roles" / "*" / "meta" / "argument_specs.yml"))):
        twin = str(other / os.path.relpath(path, str(tree)))
        with open(path, "rb") as one, open(twin, "rb") as two:
            assert one.read() == two.read(), path


def test_a_documented_variable_the_contract_does_not_check_fails(tree):
    _edit(tree / "plugins" / "module_utils" / "agentops_contract.py", '"agentops_journald_compress": _bool_problem,', "")
    rc, _, err = _gen(tree, "--check")
    assert rc == 1
    assert "agentops_journald_compress is documented but the contract does not check it" in err


def test_a_checked_variable_no_role_documents_fails(tree):
    _edit(tree / "plugins" / "module_utils" / "agentops_contract.py", '"agentops_journald_compress": _bool_problem,',
          '"agentops_journald_compress": _bool_problem, "agentops_journald_forgotten": _bool_problem,')
    rc, _, err = _gen(tree, "--check")
    assert rc == 1
    assert "SETTING_CHECKS checks agentops_journald_forgotten, which no role documents" in err
