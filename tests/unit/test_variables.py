"""Every agentops_* variable the repository uses is known to the collection, and an unknown one is refused.

The known names are the roles' options (roles/*/meta/argument_specs.yml) and meta/variables.yml (playbook
variables, the contract role's parameter, the collection's own facts and registered results). The action
agentops.fleet.inventory_contract refuses any other agentops_* variable of a host before anything changes;
a name used in roles/, playbooks/, molecule/, inventories/, bench/, demo/ or a documentation example that is
in neither list would be refused there too (or is a typo).
"""
import glob
import os
import re
import subprocess
import sys
import warnings

import jinja2
import jinja2.nodes
import pytest
import yaml

from ansible_collections.agentops.fleet.plugins.module_utils import agentops_contract as contract

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PREFIX = contract.VARIABLE_PREFIX
JINJA = jinja2.Environment(extensions=["jinja2.ext.do", "jinja2.ext.loopcontrols"])
# Keys whose values are Jinja expressions without braces.
BARE_JINJA_KEYS = ("when", "that", "failed_when", "changed_when", "until", "loop", "with_items")
# Keys whose mappings are named by hosts or groups, not variables.
HOST_GROUP_KEYS = ("group_vars", "host_vars", "children", "hosts")
YAML_FILES = ("roles/**/*.yml", "playbooks/**/*.yml", "molecule/**/*.yml", "inventories/**/*.yml",
              "bench/**/*.yml", "demo/**/*.yml")
TEMPLATES = ("roles/**/*.j2", "playbooks/**/*.j2", "molecule/**/*.j2")
DOCS = ("README.md", "docs/*.md", "roles/*/README.md")


def _load(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def role_options():
    names = set()
    for path in glob.glob(os.path.join(ROOT, "roles", "*", "meta", "argument_specs.yml")):
        for entry in (_load(path).get("argument_specs") or {}).values():
            names.update((entry or {}).get("options") or {})
    return names


LISTED = _load("meta/variables.yml")
SETTINGS = set(LISTED["settings"])
INTERNAL = set(LISTED["internal"])
DOCUMENTED = role_options() | SETTINGS
KNOWN = DOCUMENTED | INTERNAL


def _jinja_names(text):
    """Variables a Jinja template or expression reads or sets ({% set %}, loop variables)."""
    try:
        with warnings.catch_warnings():  # regular expressions such as '\.md$' in the playbooks' string literals
            warnings.simplefilter("ignore", DeprecationWarning)
            tree = JINJA.parse(text)
    except jinja2.TemplateSyntaxError:
        return set()
    return set(node.name for node in tree.find_all(jinja2.nodes.Name))


def _strings_names(value, key=None):
    if not isinstance(value, str):
        return set()
    if key in BARE_JINJA_KEYS:
        return _jinja_names("{{ %s }}" % value)
    return _jinja_names(value) if ("{{" in value or "{%" in value) else set()


def yaml_names(node, key=None):
    """Variables of a YAML document: mapping keys (definitions), register / loop_var values, Jinja expressions."""
    names = set()
    if isinstance(node, dict):
        for name, value in node.items():
            if isinstance(name, str) and key not in HOST_GROUP_KEYS:
                names.add(name)
            if name in ("register", "loop_var") and isinstance(value, str):
                names.add(value)
            names |= yaml_names(value, name)
    elif isinstance(node, list):
        for item in node:
            names |= yaml_names(item, key)
    else:
        names |= _strings_names(node, key)
    return names


def _files(patterns):
    found = set()
    for pattern in patterns:
        found.update(glob.glob(os.path.join(ROOT, pattern), recursive=True))
    return sorted(os.path.relpath(path, ROOT) for path in found)


def used_names():
    """{name: [files]} of every agentops_* variable the repository uses."""
    used = {}

    def add(names, where):
        for name in names:
            if isinstance(name, str) and name.startswith(PREFIX):
                used.setdefault(name, set()).add(where)

    for path in _files(YAML_FILES):
        with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
            for document in yaml.safe_load_all(handle):
                add(yaml_names(document), path)
    for path in _files(TEMPLATES):
        with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
            add(_jinja_names(handle.read()), path)
    for path in _files(DOCS):
        with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
            text = handle.read()
        for block in re.findall(r"^```ya?ml\n(.*?)^```", text, re.M | re.S):
            add(yaml_names(yaml.safe_load(block)), path)
        add(re.findall(r"-e\s+'?\"?(%s[a-z0-9_]+)=" % PREFIX, text), path)
    # extra vars the Molecule suites pass to the playbooks they run
    for path in _files(("molecule/**/*.py",)):
        with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
            add(re.findall(r"[\"'](%s[a-z0-9_]+)[\"']\s*:" % PREFIX, handle.read()), path)
    return used


# Mistyped names the Molecule suites set on purpose, to see them refused.
REFUSED_ON_PURPOSE = {"agentops_agent": "molecule/settings/tests/test_settings.py"}


def test_every_agentops_variable_used_in_the_repository_is_known():
    used = used_names()
    assert "agentops_agents" in used and "agentops_target" in used and "agentops_paths" in used  # the scan sees
    # removed variables are refused with their own message; the Molecule suites set them on purpose
    unknown = dict((name, sorted(where)) for name, where in sorted(used.items())
                   if name not in KNOWN and name not in contract.REMOVED_VARIABLES
                   and sorted(where) != [REFUSED_ON_PURPOSE.get(name)])
    assert unknown == {}, "agentops_* names in neither roles/*/meta/argument_specs.yml nor meta/variables.yml"


def test_the_names_refused_on_purpose_are_refused():
    assert len(contract.unknown_variable_errors(sorted(REFUSED_ON_PURPOSE), KNOWN, DOCUMENTED)) == len(REFUSED_ON_PURPOSE)


def test_every_listed_variable_is_used():
    """No stale entry: each name of meta/variables.yml is used somewhere in the repository."""
    used = set(used_names())
    for path in _files(("plugins/action/*.py",)):  # the facts the action plugins return
        with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
            used.update(re.findall(r"[\"'](%s[a-z0-9_]+)[\"']" % PREFIX, handle.read()))
    assert sorted((SETTINGS | INTERNAL) - used) == []


def test_the_lists_do_not_overlap_and_keep_the_prefix():
    assert SETTINGS & INTERNAL == set()
    assert (SETTINGS | INTERNAL) & role_options() == set()
    assert (SETTINGS | INTERNAL) & set(contract.REMOVED_VARIABLES) == set()
    assert all(name.startswith(PREFIX) for name in SETTINGS | INTERNAL)


def test_every_setting_is_documented_in_the_inventory_docs():
    with open(os.path.join(ROOT, "docs", "inventory.md"), encoding="utf-8") as handle:
        text = handle.read()
    table = set(re.findall(r"^\| `(%s[a-z0-9_]+)` \|" % PREFIX, text, re.M))
    assert table == SETTINGS


def test_the_scanner_finds_variables_only():
    """Definitions, registered names and Jinja reads count; module names in strings and group names do not."""
    document = [{"hosts": "agentops_group", "vars": {"agentops_defined": "{{ agentops_read | default(1) }}"},
                 "tasks": [{"ansible.builtin.command": "echo agentops_contract.py", "register": "agentops_registered",
                            "when": "agentops_condition | bool"}]},
                {"group_vars": {"agentops_group": {"agentops_in_group": 1}}}]
    assert sorted(n for n in yaml_names(document) if n.startswith(PREFIX)) == [
        "agentops_condition", "agentops_defined", "agentops_in_group", "agentops_read", "agentops_registered"]


# --------------------------------------------------------------------------- the refusal, as users meet it
@pytest.mark.parametrize("names, expected", [
    (["agentops_agent"], ["agentops_agent: unknown variable", "did you mean `agentops_agents`?"]),
    (["agentops_alert_channel"], ["agentops_alert_channel: unknown variable", "did you mean `agentops_alert_channels`?"]),
    (["agentops_agents_hardenning"], ["did you mean `agentops_agents_hardening`?"]),
    (["agentops_journald_max_use"], ["did you mean `agentops_journald_system_max_use`?"]),
    (["agentops_audit_fail_on_finding"], ["did you mean `agentops_audit_fail_on_findings`?"]),
    (["agentops_my_own_token"], ["agentops_my_own_token: unknown variable, no role or playbook"]),
])
def test_unknown_variables_are_refused_with_the_closest_name(names, expected):
    (message,) = contract.unknown_variable_errors(names, KNOWN, DOCUMENTED)
    for text in expected:
        assert text in message, message


def test_known_removed_and_foreign_variables_are_not_unknown():
    names = sorted(KNOWN) + sorted(contract.REMOVED_VARIABLES) + ["vault_token", "ansible_host", "my_agentops_x",
                                                                   "AGENTOPS_X"]
    assert contract.unknown_variable_errors(names, KNOWN, DOCUMENTED) == []


def test_internal_names_are_never_suggested():
    """The collection's own facts are no answer to a typo: only documented names are offered."""
    (message,) = contract.unknown_variable_errors(["agentops_agents_effectiv"], KNOWN, DOCUMENTED)
    assert "agentops_agents_effective" not in message


PLAY = """
- hosts: agent_hosts
  gather_facts: false
  roles:
    - agentops.fleet.%s
"""


def _run(tmp_path, role, host_vars, group_vars=None, extra=()):
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "inventory.ini").write_text("[agent_hosts]\nlocalhost ansible_connection=local "
                                            "ansible_python_interpreter=%s\n" % sys.executable)
    (tmp_path / "host_vars" / "localhost.yml").write_text(yaml.safe_dump(host_vars))
    (tmp_path / "group_vars" / "agent_hosts.yml").write_text(yaml.safe_dump(group_vars or {}))
    (tmp_path / "play.yml").write_text(PLAY % role)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".cache", "collections"),
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "--check",
                           "-i", str(tmp_path / "inventory.ini"), str(tmp_path / "play.yml")] + list(extra),
                          cwd=str(tmp_path), env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=300, check=False)
    return proc.returncode, proc.stdout


def test_a_mistyped_host_or_group_variable_fails_the_play_before_any_change(tmp_path):
    """`agentops_agent:` in host_vars once converged with rc=0 and removed the rotation cron file: now the
    contract, the first task of every role, refuses it (in check mode too) and names the variable it meant."""
    rc, out = _run(tmp_path, "token_rotation", {"agentops_agent": [{"name": "mail", "command": "/bin/true"}]},
                   {"agentops_alert_channel": []})
    assert rc != 0, out[-3000:]
    assert "agentops_agent: unknown variable" in out and "did you mean `agentops_agents`?" in out, out[-3000:]
    assert "did you mean `agentops_alert_channels`?" in out, out[-3000:]
    assert "TASK [agentops.fleet.contract : Validate the inventory contract of token_rotation]" in out
    assert "changed=0" in out and "ok=0" in out, out[-3000:]


def test_an_unknown_extra_variable_is_refused_and_known_ones_pass(tmp_path):
    host_vars = {"agentops_contract_roles": ["journald"], "agentops_journald_system_max_use": "1G",
                 "agentops_target": "all", "my_own_variable": 1}
    (tmp_path / "typo").mkdir()
    rc, out = _run(tmp_path / "typo", "contract", host_vars, extra=["-e", "agentops_targte=all"])
    assert rc != 0, out[-3000:]
    assert "agentops_targte: unknown variable" in out and "did you mean `agentops_target`?" in out, out[-3000:]
    (tmp_path / "fine").mkdir()
    rc, out = _run(tmp_path / "fine", "contract", host_vars)
    assert rc == 0, out[-3000:]
