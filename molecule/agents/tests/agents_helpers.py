"""Helpers of the agents scenario tests: the scenario's agent list, playbook runs on all hosts at once."""
import copy
import os

import testinfra
import yaml
from agentops_playbook import ansible_playbook

SCENARIO = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", os.path.dirname(os.path.dirname(__file__)))
GROUP = "agentops_test"


def scenario_agents():
    """A fresh copy of agentops_agents as the scenario's inventory defines it."""
    with open(os.path.join(SCENARIO, "molecule.yml"), encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    return copy.deepcopy(data["provisioner"]["inventory"]["group_vars"][GROUP]["agentops_agents"])


def agent(agents, name):
    return next(a for a in agents if a["name"] == name)


def fleet_run(playbook, extra_vars=None, check=False, diff=False, verbosity=0):
    """Run a playbook of the scenario on every host at once (the hosts work in parallel).

    Returns (rc, output, {host: recap}).
    """
    return ansible_playbook(GROUP, os.path.join(SCENARIO, playbook), extra_vars=extra_vars, check=check,
                            diff=diff, verbosity=verbosity)


def all_hosts():
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    return testinfra.get_hosts(["ansible://" + GROUP], ansible_inventory=inventory)


def host_name(host):
    return host.backend.host if hasattr(host.backend, "host") else str(host)


def prop(host, unit, name):
    return host.check_output("systemctl show --value -p %s %s", name, unit)


def start_stamps(host, units):
    return {u: prop(host, u, "ExecMainStartTimestampMonotonic") for u in units}


def snapshot(host):
    """What the role could change on a host: its files (path, owner, mode, size, mtime), the state
    directories (owner, mode), the agent units' states and the users. Files the agents write
    themselves (heartbeat, connections, ...) are left out: they change all the time."""
    files = host.check_output(
        "{ find /etc/systemd/system /etc/agentops /usr/local/bin/agentops /usr/local/lib/agentops "
        "-printf '%p %u %m %s %T@\\n'; "
        "find /var/lib/agentops -maxdepth 2 \\( -name AGENTS.md -o -name WORKSTATE.md \\) -printf '%p %u %m %s %T@\\n'; "
        "find /var/lib/agentops -maxdepth 1 -type d -printf '%p %u %m\\n'; } 2>/dev/null | sort")
    units = host.check_output(
        "for u in $(systemctl list-units --all --plain --no-legend 'agentops-*.service' | awk '$2 == \"loaded\" {print $1}'); "
        "do systemctl show -p Id,ActiveState,ExecMainStartTimestampMonotonic $u; done")
    users = host.check_output("getent passwd | sort")
    return files, units, users
