"""Documentation of the filter plugins: one plugins/filter/<name>.yml per filter, in step with the code.

ansible-doc and Galaxy read a filter's documentation from the YAML file next to the plugin that has
the filter's name. A filter added to ``FilterModule.filters()`` without such a file, a file without a
filter, or an option that is not an argument of the function fails here.
"""
import inspect
import json
import os
import subprocess
import sys

import pytest
import yaml
from antsibull_docs_parser import dom, parser

from ansible_collections.agentops.fleet.plugins.filter.agents import FilterModule

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
FILTER_DIR = os.path.join(ROOT, "plugins", "filter")
FILTERS = FilterModule().filters()
NAMES = sorted(FILTERS)
FQCN = "agentops.fleet.%s"


def doc_files():
    return sorted(name[:-len(".yml")] for name in os.listdir(FILTER_DIR) if name.endswith(".yml"))


def load(name):
    with open(os.path.join(FILTER_DIR, name + ".yml")) as handle:
        return yaml.safe_load(handle)


def arguments(name):
    """The function's parameters after the first (the filtered value): name -> inspect.Parameter."""
    params = list(inspect.signature(FILTERS[name]).parameters.values())
    variadic = [p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert not variadic, "filter %s takes *args/**kwargs (%s): document its arguments one by one" % (name, variadic)
    assert params, "filter %s takes no argument" % name
    return params[1:]


def test_every_filter_has_a_doc_file_and_every_doc_file_a_filter():
    files = set(doc_files())
    assert set(NAMES) - files == set(), "filters without plugins/filter/<name>.yml"
    assert files - set(NAMES) == set(), "plugins/filter/*.yml without a filter of that name"
    assert len(NAMES) >= 23


@pytest.mark.parametrize("name", NAMES)
def test_doc_file_structure(name):
    data = load(name)
    assert sorted(data) == ["DOCUMENTATION", "EXAMPLES", "RETURN"], name
    doc = data["DOCUMENTATION"]
    assert doc["name"] == name
    assert doc["version_added"] == "0.1.0"
    assert isinstance(doc["short_description"], str) and doc["short_description"].strip()
    assert isinstance(doc["description"], list)
    assert all(isinstance(line, str) and line.strip() for line in doc["description"]), name
    assert doc["author"], name
    # Internal filters say so, and where the collection uses them.
    assert "internal" in (doc["short_description"] + " ".join(doc["description"])).lower(), name
    assert isinstance(data["EXAMPLES"], str) and FQCN % name in data["EXAMPLES"], \
        "the EXAMPLES of %s do not use %s" % (name, FQCN % name)
    value = data["RETURN"]["_value"]
    assert value["description"] and value["type"] in ("str", "int", "bool", "list", "dict", "raw", "path"), name


@pytest.mark.parametrize("name", NAMES)
def test_options_are_the_function_arguments(name):
    doc = load(name)["DOCUMENTATION"]
    params = arguments(name)
    options = doc["options"]
    assert set(options) == set(["_input"] + [p.name for p in params]), \
        "options of %s must be _input and the keyword arguments of its function" % name
    assert [p.strip() for p in doc["positional"].split(",")] == ["_input"] + [p.name for p in params]
    assert options["_input"].get("required") is True
    for param in params:
        option = options[param.name]
        assert option.get("type") and option.get("description"), "%s: option %s" % (name, param.name)
        if param.default is param.empty:
            assert option.get("required") is True, "%s: %s has no default, so it is required" % (name, param.name)
        else:
            assert not option.get("required"), "%s: %s has a default, so it is not required" % (name, param.name)
            assert option.get("default") == param.default, \
                "%s: documented default of %s is %r, the function's is %r" % (name, param.name, option.get("default"),
                                                                               param.default)
    for option in options.values():
        if option.get("type") == "list":
            assert option.get("elements"), "%s: list options say their elements" % name


def descriptions(node):
    """Every description text of a DOCUMENTATION or RETURN tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("description", "short_description"):
                for text in value if isinstance(value, list) else [value]:
                    yield text
            elif isinstance(value, (dict, list)):
                for text in descriptions(value):
                    yield text
    elif isinstance(node, list):
        for item in node:
            for text in descriptions(item):
                yield text


def module_exists(fqcn):
    namespace, collection, name = fqcn.split(".")
    if (namespace, collection) == ("ansible", "builtin"):
        return True
    return (namespace, collection) == ("agentops", "fleet") and \
        os.path.exists(os.path.join(ROOT, "plugins", "modules", name + ".py"))


@pytest.mark.parametrize("name", NAMES)
def test_markup_and_references(name):
    """The Ansible markup (C(), O(), P(), M() ...) parses, and names only options, filters and modules that exist."""
    data = load(name)
    options = set(data["DOCUMENTATION"]["options"])
    for text in descriptions([data["DOCUMENTATION"], data["RETURN"]]):
        assert isinstance(text, str), "%s: %r" % (name, text)
        for paragraph in parser.parse(text, parser.Context(), errors="message", strict=True):
            for part in paragraph:
                assert not isinstance(part, dom.ErrorPart), "%s: %s in %r" % (name, part.message, text)
                if isinstance(part, dom.OptionNamePart) and part.plugin is None:
                    assert part.name in options, "%s: O(%s) is not one of its options" % (name, part.name)
                if isinstance(part, dom.PluginPart):
                    assert part.plugin.type == "filter" and part.plugin.fqcn in [FQCN % n for n in NAMES], text
                if isinstance(part, dom.ModulePart):
                    assert module_exists(part.fqcn), "%s: M(%s) does not exist" % (name, part.fqcn)
    for entry in data["DOCUMENTATION"].get("seealso") or []:
        if "module" in entry:
            assert module_exists(entry["module"]), "%s: seealso module %s" % (name, entry["module"])
        else:
            assert entry["plugin_type"] == "filter" and entry["plugin"] in [FQCN % n for n in NAMES if n != name], entry


@pytest.fixture(scope="module")
def ansible_doc():
    """`ansible-doc -t filter --json` of every filter, in one call, as the collection is installed for the tests."""
    binary = os.path.join(os.path.dirname(sys.executable), "ansible-doc")
    if not os.path.exists(binary):
        binary = os.path.join(ROOT, ".venv", "bin", "ansible-doc")
    assert os.path.exists(binary), "ansible-doc not found next to %s (run make venv)" % sys.executable
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".cache", "collections"),
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=os.path.dirname(binary) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run([binary, "-t", "filter", "--json"] + [FQCN % name for name in NAMES], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def test_ansible_doc_renders_every_filter(ansible_doc):
    assert sorted(ansible_doc) == sorted(FQCN % name for name in NAMES)
    for name in NAMES:
        entry = ansible_doc[FQCN % name]
        assert entry["doc"]["name"] == name
        assert entry["doc"]["collection"] == "agentops.fleet"
        assert set(entry["doc"]["options"]) == set(["_input"] + [p.name for p in arguments(name)])
        assert FQCN % name in entry["examples"]
        assert "_value" in entry["return"]
