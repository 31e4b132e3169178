"""Items 6 and 8: names and users an inventory must not be able to give an agent.

An agent named like the collection's own units (`heartbeat`, `alert-flush`, `heartbeat-x`) is rejected by
site.yml before anything changes: the collection's units, agents.d, the users and the unit files stay as they
are. An agent whose user is a system user (`daemon`) or another agent's user is rejected too, unless it says
`share_user: true` (on every agent sharing it; then a --check run of the agents role accepts it).
"""
import pytest

from hostile_helpers import OWN_UNITS, agent, all_hosts, fleet_run, host_name, scenario_agents

RESERVED = ["heartbeat", "alert-flush", "heartbeat-x"]
DEADLINE = 240


def extra(name, **fields):
    entry = {"name": name, "command": "/opt/agentops-test/hostile-agent %s" % name}
    entry.update(fields)
    return entry


def host_state(host):
    """What a rejected run must not change: the collection's units, agents.d, users, unit files."""
    units = " ".join("/etc/systemd/system/%s" % u for u in OWN_UNITS)
    return host.check_output(
        "sha256sum %s; stat -c '%%n %%U %%a %%Y' %s; ls -la /etc/agentops/agents.d; getent passwd | sort; "
        "ls /etc/systemd/system | grep agentops; systemctl list-unit-files --no-legend 'agentops-*'"
        % (units, units))


@pytest.fixture(scope="module")
def rejected():
    """site.yml on both hosts with reserved agent names, with a system user, with another agent's user."""
    hosts = all_hosts()
    runs = {}
    cases = {
        "reserved": [extra(name) for name in RESERVED],
        "system user": [extra("intruder", user="daemon")],
        "another agent's user": [extra("copycat", user="agent-victim")],
    }
    for case, added in cases.items():
        before = dict((host_name(h), host_state(h)) for h in hosts)
        agents = scenario_agents() + added
        rc, output, recaps, seconds = fleet_run("converge.yml", DEADLINE, extra_vars={"agentops_agents": agents})
        runs[case] = {"rc": rc, "output": output, "recaps": recaps, "before": before,
                      "after": dict((host_name(h), host_state(h)) for h in hosts)}
    return runs


@pytest.fixture(scope="module")
def shared():
    """--check run of the agents role with both users shared on purpose: share_user: true on every agent that
    shares one (victim too, whose user copycat borrows)."""
    agents = scenario_agents() + [extra("intruder", user="daemon", share_user=True),
                                  extra("copycat", user="agent-victim", share_user=True)]
    agent(agents, "victim")["share_user"] = True
    return fleet_run("agents.yml", DEADLINE, extra_vars={"agentops_agents": agents}, check=True)


@pytest.mark.parametrize("case", ["reserved", "system user", "another agent's user"])
def test_rejected_before_any_change(host, rejected, case):
    run = rejected[case]
    name = host_name(host)
    assert run["rc"] != 0, "site.yml accepted the %s case:\n%s" % (case, run["output"][-3000:])
    assert run["recaps"].get(name, {}).get("changed", 0) == 0, run["recaps"]
    assert run["after"][name] == run["before"][name]


def test_reserved_names_are_named_in_the_message(rejected):
    output = rejected["reserved"]["output"]
    assert "reserved" in output, output[-3000:]
    for name in RESERVED:
        assert "agentops_agents[%s]" % name in output, (name, output[-3000:])


@pytest.mark.parametrize("case,name,user", [("system user", "intruder", "daemon"),
                                            ("another agent's user", "copycat", "agent-victim")])
def test_user_rejection_names_the_agent_and_the_user(rejected, case, name, user):
    output = rejected[case]["output"]
    assert name in output and user in output and "share_user" in output, output[-3000:]


def test_share_user_true_is_accepted(host, shared):
    rc, output, recaps, seconds = shared
    assert rc == 0, output[-3000:]
    assert recaps[host_name(host)]["failed"] == 0
