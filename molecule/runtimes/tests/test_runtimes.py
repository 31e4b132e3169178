"""A real Node.js agent under `standard`, its token from credentials_env (delivered by `agentops exec`).

In file order: the agent runs as its user with the unit's main PID, reached the loopback API with the
token as the bearer, spawned git and bash and wrote in its HOME; exposure <= 1.5; the token is nowhere
but in the agent's own environment (unit files, systemctl show, every /proc/*/cmdline, the journal, the
-vvv --diff output of a converge); stopping the unit leaves no process; strict on a JIT runtime and bad
credentials_env are refused before any change."""
import json
import os
import re

import testinfra.utils.ansible_runner

from agentops_testlib import endpoint_records

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("agentops_test")

AGENT = "nodeagent"
UNIT = "agentops-nodeagent.service"
USER = "agent-nodeagent"
HOME = "/var/lib/agentops/nodeagent"
CANARY = "CANARY-runtimes-token-4c1d9e"
# The pattern that finds the canary without being it: a search's own command line must not match.
CANARY_GREP = "CANARY-runtimes-token-4c1d9[e]"
MAX_EXPOSURE = 1.5


def state(host):
    return json.loads(host.file(HOME + "/runtimes-state.json").content_string)


def main_pid(host):
    return int(host.check_output("systemctl show -P MainPID %s", UNIT))


def agent_state(host, wait_for):
    """The state the agent wrote once it called the API and started its children (of this session)."""
    def ready():
        pid = main_pid(host)
        if not pid or not host.file(HOME + "/runtimes-state.json").exists:
            return None
        seen = state(host)
        return seen if seen["node"] == pid else None
    return wait_for(ready, 60, message="%s to write runtimes-state.json" % AGENT)


def test_the_node_agent_runs_as_its_user_with_the_units_main_pid(host, wait_for):
    assert host.service(UNIT).is_running
    seen = agent_state(host, wait_for)
    pid = main_pid(host)
    # agentops exec replaced itself with node: the agent is the unit's main process (KillMode, MainPID)
    assert host.file("/proc/%s/comm" % pid).content_string.strip() in ("node", "nodejs")
    assert host.check_output("stat -c %%U /proc/%s", str(pid)) == USER
    assert seen["uid"] == host.user(USER).uid
    unit = host.file("/etc/systemd/system/" + UNIT).content_string
    assert "ExecStart=/usr/local/bin/agentops exec nodeagent --env=AGENT_API_TOKEN=api_token -- /usr/bin/node " in unit
    assert "MemoryDenyWriteExecute" not in unit  # the default profile is standard
    assert "# Sandbox: profile standard" in unit


def test_it_wrote_in_its_home_and_committed_with_git(host, wait_for):
    seen = agent_state(host, wait_for)
    notes = host.file(HOME + "/work/notes.txt")
    assert notes.user == USER and "api status 200" in notes.content_string
    log = host.run("runuser -u %s -- git -C %s/work log --format=%%H -1", USER, HOME)
    assert log.rc == 0 and log.stdout.strip() == seen["head"]


def test_the_api_saw_the_token_as_bearer(host, wait_for):
    agent_state(host, wait_for)
    calls = [r for r in endpoint_records(host, 18081) if r["path"] == "/api/me"]
    assert calls, "the agent never called the API"
    headers = dict((k.lower(), v) for k, v in calls[-1]["headers"].items())
    assert headers["authorization"] == "Bearer " + CANARY


def test_exposure_is_at_most_1_5(host, capsys):
    out = host.check_output("systemd-analyze security --no-pager %s", UNIT)
    level = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    with capsys.disabled():  # the figure is part of the scenario's report, for each image
        print("\nsystemd-analyze security %s on %s: exposure %.1f" % (UNIT, host.backend.host, level))
    assert level <= MAX_EXPOSURE
    assert host.run("systemd-analyze security --threshold=%s %s", str(int(MAX_EXPOSURE * 10)), UNIT).rc == 0


def test_the_token_is_in_the_agents_environment_only(host, wait_for):
    seen = agent_state(host, wait_for)
    environ = host.run("tr '\\0' '\\n' < /proc/%s/environ | grep -c %s", str(seen["node"]), CANARY_GREP)
    assert environ.stdout.strip() == "1"  # where credentials_env puts it (documented trade-off)
    units = host.run("grep -rl %s /etc/systemd /run/systemd /usr/lib/systemd/system 2>/dev/null", CANARY_GREP)
    assert units.stdout == "" and host.file("/etc/systemd/system/" + UNIT).exists
    show = host.run("systemctl show %s | grep -c %s", UNIT, CANARY_GREP)
    assert show.stdout.strip() == "0"
    show_all = host.run("systemctl show '*' 2>/dev/null | grep -c %s", CANARY_GREP)
    assert show_all.stdout.strip() == "0"
    cmdlines = host.run("grep -l %s /proc/[0-9]*/cmdline 2>/dev/null", CANARY_GREP)
    assert cmdlines.stdout == "", cmdlines.stdout
    journal = host.run("journalctl -o export --no-pager | grep -ac %s", CANARY_GREP)
    assert journal.stdout.strip() == "0"


def test_the_token_is_not_in_a_verbose_diff_converge(host, run_playbook):
    """A second converge with -vvv --diff: no change (the scenario's idempotence check) and no token."""
    result = run_playbook(host, "converge.yml", diff=True, verbosity=3)
    assert result.rc == 0, result.output[-4000:]
    assert result.recap["changed"] == 0
    assert "api_token" in result.output  # the run did handle the credential
    assert CANARY not in result.output


def test_stopping_leaves_no_process_of_the_user_or_the_cgroup(host, wait_for):
    seen = agent_state(host, wait_for)
    cgroup = host.check_output("systemctl show -P ControlGroup %s", UNIT)
    procs = host.check_output("systemd-cgls --no-pager -u %s", UNIT)
    for name in ("node", "bash", "git", "sleep"):
        assert name in procs, procs
    for pid in (seen["bash"], seen["git"]):
        assert host.file("/proc/%d" % pid).exists
        assert cgroup in host.file("/proc/%d/cgroup" % pid).content_string
    assert host.run("systemctl stop %s", UNIT).rc == 0
    assert host.run("pgrep -u %s", USER).stdout == ""
    for pid in (seen["node"], seen["bash"], seen["git"]):
        assert not host.file("/proc/%d" % pid).exists
    assert host.run("systemctl start %s", UNIT).rc == 0
    fresh = agent_state(host, wait_for)
    assert fresh["node"] != seen["node"]


def _unit_snapshot(host):
    return host.check_output("sha256sum /etc/systemd/system/%s /etc/agentops/agents.d/%s.json; "
                             "stat -c %%Y /etc/systemd/system/%s", UNIT, AGENT, UNIT)


def _refused(host, run_playbook, agents):
    before = _unit_snapshot(host)
    pid = main_pid(host)
    result = run_playbook(host, "converge.yml", extra_vars={"agentops_agents": agents}, expect_fail=True)
    assert result.recap.get("changed") == 0, result.output[-4000:]
    assert _unit_snapshot(host) == before
    assert main_pid(host) == pid
    assert CANARY not in result.output
    return result.output


def _nodeagent(**change):
    agent = {"name": AGENT, "command": "/usr/bin/node /opt/agentops-test/node-agent.js --api http://127.0.0.1:18081",
             "credentials": {"api_token": CANARY}, "credentials_env": {"AGENT_API_TOKEN": "api_token"}}
    agent.update(change)
    return agent


def test_strict_on_a_jit_runtime_is_refused_before_any_change(host, run_playbook):
    output = _refused(host, run_playbook, [
        _nodeagent(hardening="strict"),
        {"name": "scripted", "hardening": "strict",
         "command": "/opt/agentops-test/node-agent.js --api http://127.0.0.1:18081"},
    ])
    assert ("agentops_agents[nodeagent].hardening: strict sets MemoryDenyWriteExecute=yes, which kills the node "
            "runtime at start (the command is /usr/bin/node)") in output
    assert ("agentops_agents[scripted].hardening: strict sets MemoryDenyWriteExecute=yes, which kills the node "
            "runtime at start (/opt/agentops-test/node-agent.js starts with '#!/usr/bin/node')") in output
    assert "set hardening: standard for this agent" in output
    assert not host.file("/etc/systemd/system/agentops-scripted.service").exists


def test_bad_credentials_env_is_refused_before_any_change(host, run_playbook):
    output = _refused(host, run_playbook, [_nodeagent(credentials_env={"AGENT_API_TOKEN": "no_such_credential",
                                                                       "BAD-NAME": "api_token"})])
    assert ("agentops_agents[nodeagent].credentials_env.AGENT_API_TOKEN: 'no_such_credential' is not one of the "
            "agent's credentials (api_token)") in output
    assert "agentops_agents[nodeagent].credentials_env.BAD-NAME: 'BAD-NAME' is not a valid environment variable" in output
