"""The settings Molecule scenario covers every role variable: set to a non-default value, and checked.

molecule/settings sets each variable of every role's meta/argument_specs.yml to a value other than its
default; its tests then show that the host uses that value. A variable added to a role without a place
in that scenario fails here, so "accepted and ignored" cannot come back unnoticed.
"""
import os

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIO = os.path.join(ROOT, "molecule", "settings")


def _role_options():
    options = {}
    roles = os.path.join(ROOT, "roles")
    for role in sorted(os.listdir(roles)):
        path = os.path.join(roles, role, "meta", "argument_specs.yml")
        if not os.path.exists(path):  # the contract role has no variables of its own
            continue
        with open(path, encoding="utf-8") as handle:
            specs = yaml.safe_load(handle)["argument_specs"]
        for spec in specs.values():
            for name, option in (spec.get("options") or {}).items():
                if name != "agentops_agents":
                    options[name] = option.get("default")
    return options


OPTIONS = _role_options()


def _scenario_vars():
    with open(os.path.join(SCENARIO, "molecule.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)["provisioner"]["inventory"]["group_vars"]["agentops_test"]


def _test_text():
    texts = []
    directory = os.path.join(SCENARIO, "tests")
    for name in sorted(os.listdir(directory)):
        if name.endswith(".py"):
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                texts.append(handle.read())
    return "\n".join(texts)


def test_the_roles_have_variables_to_cover():
    assert len(OPTIONS) >= 30 and "agentops_alert_spool_max" in OPTIONS


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_each_variable_is_set_to_a_non_default_value(name):
    values = _scenario_vars()
    assert name in values, "molecule/settings/molecule.yml does not set %s" % name
    assert str(values[name]) != str(OPTIONS[name]), "%s is set to its default %r" % (name, OPTIONS[name])


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_each_variable_is_checked_on_the_host(name):
    assert name in _test_text(), "no test of molecule/settings names %s" % name


def test_the_scenario_sets_nothing_unknown():
    unknown = set(_scenario_vars()) - set(OPTIONS) - {"agentops_agents"}
    assert not unknown, unknown
