#!/usr/bin/env python3
# Managed by the agentops.fleet collection: documentation generated from meta/argument_specs.yml.
"""Generate the roles' variable tables and the shared agent options from meta/argument_specs.yml.

One source per fact:

* ``roles/<role>/meta/argument_specs.yml`` documents every variable of a role (type, default,
  description); ``roles/<role>/defaults/main.yml`` holds the value, with a comment above each.
* The fields of an agent are documented once, in the ``agentops_agents`` option of the agents
  role's ``main`` entry point. Every other entry point that declares ``agentops_agents`` with
  nested options gets a copy of them between the lines
  ``# BEGIN generated from roles/agents/meta/argument_specs.yml: agentops_agents options`` and
  ``# END generated from roles/agents/meta/argument_specs.yml: agentops_agents options``.
* The role READMEs' tables are generated between the lines
  ``<!-- BEGIN generated from meta/argument_specs.yml: WHAT ... -->`` and
  ``<!-- END generated from meta/argument_specs.yml: WHAT -->``, where WHAT is ``variables``
  (the table of the role's variables) or the dotted path of an option with nested options
  (``agentops_agents``, ``agentops_agents.heartbeat``, ``agentops_alert_channels``). Text outside
  the markers is written by hand and left alone.

Before anything is written the sources are checked; the run fails (exit 1), naming the file and the
variable, when:

* a variable is in argument_specs.yml but not in defaults/main.yml, or the other way round;
* a default in argument_specs.yml differs from the one in defaults/main.yml (compared as parsed
  YAML, type included; a templated default is compared as its template text);
* a variable in defaults/main.yml has no comment line directly above it;
* an option has no description or no type, a list no elements, a default is not one of its choices;
* an entry point other than main declares a variable that main does not, or with another type or default;
* the nested options differ from what the inventory contract accepts
  (plugins/module_utils/agentops_contract.py: AGENT_KEYS, HEARTBEAT_KEYS, AUTH_KEYS, ROTATION_KEYS,
  FAILURE_MODE_KEYS, CHANNEL_FIELDS), a choice list differs from the contract's (HARDENING, PROGRESS)
  or a heartbeat default from HEARTBEAT_DEFAULTS: Ansible's role argument validation rejects unknown
  keys, so a field the contract accepts but the spec lacks would make valid inventories fail;
* a variable the contract lists as removed (REMOVED_VARIABLES) is still declared or defaulted;
* a role variable is documented but not checked by the contract (SETTING_CHECKS), or the other way round;
* a README has no generated variables table, or a marker names an option that does not exist.

usage: .venv/bin/python scripts/gen-docs.py            write the generated parts (make docs)
       .venv/bin/python scripts/gen-docs.py --check    change nothing; print a diff of what is stale
                                                       and exit 1 when anything is (make lint)
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLES = ROOT / "roles"
SOURCE_ROLE = "agents"
SOURCE_SPEC = "roles/%s/meta/argument_specs.yml" % SOURCE_ROLE
SHARED = "agentops_agents"

SPEC_BEGIN_RE = re.compile(r"^(?P<indent>[ ]*)# BEGIN generated from roles/agents/meta/argument_specs\.yml: "
                           r"agentops_agents options\b.*$", re.M)
SPEC_END_RE = re.compile(r"^[ ]*# END generated from roles/agents/meta/argument_specs\.yml: agentops_agents options\b.*$",
                         re.M)
SPEC_BEGIN = "# BEGIN generated from roles/agents/meta/argument_specs.yml: agentops_agents options (make docs)"
SPEC_END = "# END generated from roles/agents/meta/argument_specs.yml: agentops_agents options"

README_BEGIN_RE = re.compile(r"^<!-- BEGIN generated from meta/argument_specs\.yml: (?P<what>[A-Za-z0-9_.]+)\b[^\n]*-->[ ]*$",
                             re.M)
README_BEGIN = "<!-- BEGIN generated from meta/argument_specs.yml: %s; edit the spec, then run make docs -->"
README_END = "<!-- END generated from meta/argument_specs.yml: %s -->"

# Nested options of the specs and the contract constants that list the keys they must accept.
CONTRACT_KEYS = (
    ((SHARED,), "AGENT_KEYS"),
    ((SHARED, "heartbeat"), "HEARTBEAT_KEYS"),
    ((SHARED, "auth_checks"), "AUTH_KEYS"),
    ((SHARED, "token_rotation"), "ROTATION_KEYS"),
    ((SHARED, "failure_modes"), "FAILURE_MODE_KEYS"),
    ((SHARED, "recovery"), "RECOVERY_KEYS"),
)
CONTRACT_CHOICES = (
    ((SHARED, "hardening"), "HARDENING"),
    ((SHARED, "heartbeat", "progress"), "PROGRESS"),
    ((SHARED, "recovery", "on_hang"), "RECOVERY_ON_HANG"),
)
ALERT_CHANNELS = "agentops_alert_channels"
# Variables the contract checks with their own code rather than SETTING_CHECKS.
CHECKED_APART = (SHARED, ALERT_CHANNELS)
# Variables the contract checks that belong to no role: playbooks/site.yml reads them (documented in prose).
PLAYBOOK_VARIABLES = ("agentops_auth_check_at_deploy",)


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, message):
        self.items.append("%s: %s" % (where, message))


# --------------------------------------------------------------------------- YAML
class _Dumper(yaml.SafeDumper):
    """Block style with indented sequences (the repository's yamllint rules)."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def dump_yaml(data, indent):
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                     width=110, indent=2)
    pad = " " * indent
    return "".join(pad + line if line.strip() else line for line in text.splitlines(True))


def load_yaml(text, where):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SystemExit("gen-docs: %s is not valid YAML: %s" % (where, exc))


# --------------------------------------------------------------------------- the contract
def load_contract():
    """plugins/module_utils/agentops_contract.py, imported like the host does (package agentops_lib)."""
    folder = ROOT / "plugins" / "module_utils"
    spec = importlib.util.spec_from_file_location("agentops_lib", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["agentops_lib"] = package
    spec.loader.exec_module(package)
    return importlib.import_module("agentops_lib.agentops_contract")


# --------------------------------------------------------------------------- shared agent options
def sync_shared_options(texts, problems):
    """Copy the agents role's agentops_agents options into the marked blocks of the other specs."""
    source = load_yaml(texts[SOURCE_SPEC], SOURCE_SPEC)
    try:
        options = source["argument_specs"]["main"]["options"][SHARED]["options"]
    except (KeyError, TypeError):
        problems.add(SOURCE_SPEC, "argument_specs.main.options.%s.options is missing: it documents the fields of an "
                     "agent, which the other roles' specs copy" % SHARED)
        return
    for path in sorted(texts):
        if not path.endswith("meta/argument_specs.yml") or path == SOURCE_SPEC:
            continue
        text = texts[path]
        out, pos = [], 0
        for begin in SPEC_BEGIN_RE.finditer(text):
            if begin.start() < pos:
                continue
            end = SPEC_END_RE.search(text, begin.end())
            if end is None:
                problems.add(path, "'%s' without a matching '%s'" % (SPEC_BEGIN, SPEC_END))
                break
            indent = len(begin.group("indent"))
            out.append(text[pos:begin.start()])
            out.append(" " * indent + SPEC_BEGIN + "\n")
            out.append(dump_yaml({"options": options}, indent))
            out.append(" " * indent + SPEC_END)
            pos = end.end()
        out.append(text[pos:])
        texts[path] = "".join(out)


# --------------------------------------------------------------------------- checks
def _same(a, b):
    """Equal as parsed YAML, types included (True is not 1, 10 is not "10")."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _show(value):
    return json.dumps(value, sort_keys=True)


def check_options(problems, where, options):
    if not isinstance(options, dict):
        problems.add(where, "options must be a mapping")
        return
    for name, option in options.items():
        here = "%s.%s" % (where, name)
        if not isinstance(option, dict):
            problems.add(here, "must be a mapping with type and description")
            continue
        if not option.get("description"):
            problems.add(here, "has no description")
        if not option.get("type"):
            problems.add(here, "has no type")
        if option.get("type") == "list" and not option.get("elements"):
            problems.add(here, "is a list without elements")
        if "choices" in option and "default" in option and option["default"] not in option["choices"]:
            problems.add(here, "default %s is not one of its choices %s" % (_show(option["default"]),
                                                                            _show(option["choices"])))
        if "options" in option:
            if not (option.get("type") == "dict" or (option.get("type") == "list" and option.get("elements") == "dict")):
                problems.add(here, "has nested options but is not a dict or a list of dicts")
            check_options(problems, here, option["options"])


def defaults_comments(problems, where, text):
    """Every top-level variable of defaults/main.yml has a comment line directly above it."""
    lines = text.splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:", line)
        if not match:
            continue
        above = lines[number - 1].strip() if number > 0 else ""
        if not above.startswith("#") or above == "#":
            problems.add("%s:%d" % (where, number + 1), "%s has no comment line directly above it" % match.group(1))


def check_role(problems, role, spec, defaults, defaults_text, removed):
    spec_path = "roles/%s/meta/argument_specs.yml" % role
    defaults_path = "roles/%s/defaults/main.yml" % role
    entry_points = (spec or {}).get("argument_specs") or {}
    if "main" not in entry_points:
        problems.add(spec_path, "has no main entry point")
        return
    for entry, data in sorted(entry_points.items()):
        if not (data or {}).get("short_description"):
            problems.add("%s %s" % (spec_path, entry), "has no short_description")
        check_options(problems, "%s %s" % (spec_path, entry), (data or {}).get("options") or {})
    main = entry_points["main"].get("options") or {}
    if defaults is None:
        defaults = {}
    if not isinstance(defaults, dict):
        problems.add(defaults_path, "must be a mapping of variables")
        return
    for name in main:
        if name not in defaults:
            problems.add(spec_path, "%s is documented but has no default in %s" % (name, defaults_path))
        elif "default" not in main[name]:
            problems.add(spec_path, "%s has no default (%s sets %s)" % (name, defaults_path, _show(defaults[name])))
        elif not _same(main[name]["default"], defaults[name]):
            problems.add(spec_path, "the default of %s is %s, but %s sets %s" % (
                name, _show(main[name]["default"]), defaults_path, _show(defaults[name])))
    for name in defaults:
        if name not in main:
            problems.add(defaults_path, "%s is not documented in %s (argument_specs.main.options)" % (name, spec_path))
    for name in sorted(set(main) | set(defaults)):
        if name in removed:
            problems.add(spec_path if name in main else defaults_path,
                         "%s is a removed variable of the contract (REMOVED_VARIABLES) but still declared" % name)
    defaults_comments(problems, defaults_path, defaults_text)
    for entry, data in sorted(entry_points.items()):
        if entry == "main":
            continue
        for name, option in ((data or {}).get("options") or {}).items():
            if name not in main:
                problems.add("%s %s" % (spec_path, entry), "%s is not an option of the main entry point" % name)
                continue
            for key in ("type", "elements", "default"):
                if key in option and not _same(option.get(key), main[name].get(key)):
                    problems.add("%s %s" % (spec_path, entry), "%s has %s %s, the main entry point %s" % (
                        name, key, _show(option.get(key)), _show(main[name].get(key))))


def _find(options, path):
    option = None
    for part in path:
        if not isinstance(options, dict) or part not in options:
            return None
        option = options[part]
        options = option.get("options") if isinstance(option, dict) else None
    return option


def check_contract(problems, specs, contract):
    def constant(name):
        if not hasattr(contract, name):
            problems.add("plugins/module_utils/agentops_contract.py", "has no %s (scripts/gen-docs.py compares the "
                         "argument specs with it: update CONTRACT_KEYS there)" % name)
            return None
        return getattr(contract, name)

    checks = constant("SETTING_CHECKS")
    if checks is not None:
        declared = {}
        for role, spec in sorted(specs.items()):
            main = (((spec or {}).get("argument_specs") or {}).get("main") or {}).get("options") or {}
            for name in main:
                declared.setdefault(name, role)
        for name in sorted(set(checks) - set(declared) - set(PLAYBOOK_VARIABLES)):
            problems.add("plugins/module_utils/agentops_contract.py", "SETTING_CHECKS checks %s, which no role documents "
                         "in its meta/argument_specs.yml" % name)
        for name, role in sorted(declared.items()):
            if name not in checks and name not in CHECKED_APART:
                problems.add("roles/%s/meta/argument_specs.yml" % role, "%s is documented but the contract does not "
                             "check it (add it to SETTING_CHECKS in plugins/module_utils/agentops_contract.py)" % name)

    for role, spec in sorted(specs.items()):
        for entry, data in sorted(((spec or {}).get("argument_specs") or {}).items()):
            options = (data or {}).get("options") or {}
            where = "roles/%s/meta/argument_specs.yml %s" % (role, entry)
            if SHARED in options and "options" in options[SHARED]:
                for path, name in CONTRACT_KEYS:
                    keys = constant(name)
                    option = _find(options, path)
                    if keys is None:
                        continue
                    nested = (option or {}).get("options") if isinstance(option, dict) else None
                    if not isinstance(nested, dict):
                        problems.add(where, "%s has no nested options (the contract accepts %s)" % (
                            ".".join(path), ", ".join(keys)))
                        continue
                    missing = [k for k in keys if k not in nested]
                    extra = [k for k in nested if k not in keys]
                    if missing:
                        problems.add(where, "%s lacks %s, which the contract (%s) accepts: Ansible's role argument "
                                     "validation would reject valid inventories" % (".".join(path), ", ".join(missing), name))
                    if extra:
                        problems.add(where, "%s declares %s, which the contract (%s) rejects" % (
                            ".".join(path), ", ".join(extra), name))
                for path, name in CONTRACT_CHOICES:
                    choices = constant(name)
                    option = _find(options, path)
                    if choices is not None and isinstance(option, dict) and sorted(option.get("choices") or []) != sorted(choices):
                        problems.add(where, "%s has choices %s, the contract (%s) %s" % (
                            ".".join(path), _show(option.get("choices")), name, _show(list(choices))))
                hb_defaults = constant("HEARTBEAT_DEFAULTS") or {}
                heartbeat = (_find(options, (SHARED, "heartbeat")) or {}).get("options") or {}
                for key, value in sorted(hb_defaults.items()):
                    if key in heartbeat and value is not None and not _same(heartbeat[key].get("default"), value):
                        problems.add(where, "%s.heartbeat.%s has default %s, the contract (HEARTBEAT_DEFAULTS) %s" % (
                            SHARED, key, _show(heartbeat[key].get("default")), _show(value)))
            if ALERT_CHANNELS in options and "options" in options[ALERT_CHANNELS]:
                fields = constant("CHANNEL_FIELDS")
                if fields is not None:
                    accepted = []
                    for names in fields.values():
                        accepted.extend(k for k in names if k not in accepted)
                    nested = options[ALERT_CHANNELS]["options"]
                    missing = [k for k in accepted if k not in nested]
                    extra = [k for k in nested if k not in accepted]
                    if missing:
                        problems.add(where, "%s lacks %s, which the contract (CHANNEL_FIELDS) accepts" % (
                            ALERT_CHANNELS, ", ".join(missing)))
                    if extra:
                        problems.add(where, "%s declares %s, which no channel type of the contract (CHANNEL_FIELDS) "
                                     "accepts" % (ALERT_CHANNELS, ", ".join(extra)))


# --------------------------------------------------------------------------- Markdown
MARKUP_RE = re.compile(r"\b(L|R)\(([^,()]*),\s*([^()]*)\)|\b(RV|C|V|O|E|I|B|M|U)\(([^()]*)\)|HORIZONTALLINE")


def markdown(text):
    """Ansible documentation markup as Markdown for a table cell."""
    def convert(match):
        if match.group(1) == "L":
            return "[%s](%s)" % (match.group(2), match.group(3).strip())
        if match.group(1) == "R":
            return match.group(2)
        kind, value = match.group(4), match.group(5)
        if kind is None:
            return ""
        if kind == "I":
            return "*%s*" % value
        if kind == "B":
            return "**%s**" % value
        if kind == "U":
            return "<%s>" % value
        return "`%s`" % value

    parts = []
    pos = 0
    for match in MARKUP_RE.finditer(text):
        parts.append(_plain(text[pos:match.start()]))
        parts.append(convert(match))
        pos = match.end()
    parts.append(_plain(text[pos:]))
    return "".join(parts).replace("|", "\\|")


def _plain(text):
    """Text outside code: characters Markdown or HTML would read as markup are escaped."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("<", "&lt;").replace("`", "\\`")


def description(option):
    value = option.get("description") or ""
    paragraphs = value if isinstance(value, list) else [value]
    text = " ".join(" ".join(str(p).split()) for p in paragraphs)
    extra = []
    if option.get("choices"):
        extra.append("Choices: %s." % ", ".join("`%s`" % _scalar(c) for c in option["choices"]))
    if option.get("no_log"):
        extra.append("A secret: never logged.")
    return " ".join([markdown(text)] + [e.replace("|", "\\|") for e in extra]).strip()


def _scalar(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    if isinstance(value, str) and value == "":
        return '""'
    return str(value)


def default_cell(option):
    if option.get("required"):
        return "required"
    if "default" not in option or option["default"] is None:
        return ""
    return "`%s`" % _scalar(option["default"]).replace("|", "\\|")


def type_cell(option):
    kind = option.get("type", "")
    if kind == "list":
        return "list of %s" % option.get("elements", "raw")
    return kind


def table(options, first):
    rows = ["| %s | type | default | description |" % first, "| --- | --- | --- | --- |"]
    for name, option in options.items():
        rows.append("| `%s` | %s | %s | %s |" % (name, type_cell(option), default_cell(option), description(option)))
    return rows


def render(what, role, main_options, problems):
    if what == "variables":
        if not main_options:
            return ["This role has no variables."]
        return table(main_options, "variable")
    path = tuple(what.split("."))
    option = _find(main_options, path)
    if not isinstance(option, dict) or not isinstance(option.get("options"), dict):
        problems.add("roles/%s/README.md" % role, "the generated block %r names no option with nested options in "
                     "argument_specs.main" % what)
        return []
    lines = table(option["options"], "field")
    for name, child in option["options"].items():
        if isinstance(child, dict) and isinstance(child.get("options"), dict):
            label = "an entry of `%s`" % name if child.get("type") == "list" else "`%s`" % name
            lines += ["", "#### Fields of %s" % label, ""] + table(child["options"], "field")
    return lines


def render_readme(role, text, main_options, problems):
    out, pos, seen = [], 0, []
    for begin in README_BEGIN_RE.finditer(text):
        if begin.start() < pos:
            continue
        what = begin.group("what")
        end_line = README_END % what
        end = text.find(end_line, begin.end())
        if end < 0:
            problems.add("roles/%s/README.md" % role, "'%s' has no matching '%s'" % (begin.group(0), end_line))
            return text
        seen.append(what)
        out.append(text[pos:begin.start()])
        out.append("\n".join([README_BEGIN % what] + render(what, role, main_options, problems) + [end_line]))
        pos = end + len(end_line)
    out.append(text[pos:])
    if "variables" not in seen and main_options:
        problems.add("roles/%s/README.md" % role, "has no generated variables table: add the lines '%s' and '%s' "
                     "where it belongs" % (README_BEGIN % "variables", README_END % "variables"))
    return "".join(out)


# --------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; print a diff of every stale file and exit 1 when there is one")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    problems = Problems()

    roles = sorted(p.name for p in ROLES.iterdir() if (p / "meta" / "argument_specs.yml").is_file())
    originals = {}
    for role in roles:
        for rel in ("meta/argument_specs.yml", "README.md"):
            path = "roles/%s/%s" % (role, rel)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as handle:
                    originals[path] = handle.read()
    texts = dict(originals)

    sync_shared_options(texts, problems)
    specs = {role: load_yaml(texts["roles/%s/meta/argument_specs.yml" % role], role) for role in roles}
    contract = load_contract()
    removed = set(getattr(contract, "REMOVED_VARIABLES", {}) or {})
    for role in roles:
        defaults_path = "roles/%s/defaults/main.yml" % role
        defaults_text = ""
        if os.path.isfile(defaults_path):
            with open(defaults_path, encoding="utf-8") as handle:
                defaults_text = handle.read()
        check_role(problems, role, specs[role], load_yaml(defaults_text, defaults_path), defaults_text, removed)
        readme = "roles/%s/README.md" % role
        if readme not in texts:
            problems.add(readme, "is missing")
            continue
        main_options = ((specs[role] or {}).get("argument_specs") or {}).get("main", {}).get("options") or {}
        texts[readme] = render_readme(role, texts[readme], main_options, problems)
    check_contract(problems, specs, contract)

    stale = [path for path in sorted(texts) if texts[path] != originals.get(path)]
    if problems.items:
        for item in problems.items:
            print("gen-docs: ERROR: %s" % item, file=sys.stderr)
        print("gen-docs: %d problem(s); nothing was written" % len(problems.items), file=sys.stderr)
        return 1
    if args.check:
        if not stale:
            print("gen-docs: the generated parts of %d role(s) are up to date" % len(roles))
            return 0
        for path in stale:
            sys.stdout.writelines(difflib.unified_diff(
                originals[path].splitlines(True), texts[path].splitlines(True), "a/" + path, "b/" + path))
        print("gen-docs: ERROR: stale generated documentation in %s: run `make docs` and commit the result"
              % ", ".join(stale), file=sys.stderr)
        return 1
    for path in stale:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(texts[path])
        print("gen-docs: updated %s" % path)
    if not stale:
        print("gen-docs: nothing to update (%d role(s))" % len(roles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
