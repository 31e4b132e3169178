"""Root never follows a path the evil agent's user can replace; a problem found there holds that agent alone.

The evil agent's command and the token path of a `file` auth check live in its own directory, and its user links
them elsewhere:

* `strict`, command `~/bin/agent` -> a root-only file whose first line is `#!/usr/bin/node` (site.yml);
* `file` auth checks on `~/token` -> victim's credential and on `~/shadow` -> /etc/shadow (the agents role alone).

Each time, on both hosts at once: nothing behind the link is followed or shown (neither the target, nor its
first line, its mode or its age), evil's unit, agents.d file, AGENTS.md and credential stay byte for byte as they
were and evil is not restarted, victim gets a change in the same run (its description), the host alerts
`evil/deploy` through the webhook sink on 127.0.0.1:18082, and the run ends rc != 0 with a message naming evil and
the problem - for site.yml after every role ran. A last run without the links deploys evil again and resolves
the alert.
"""
import uuid

import pytest

from hostile_helpers import (API_RULES, CRED, EVIL_HOME, UNIT, agent, all_hosts, as_evil, fleet_run, host_name, leaks,
                             now, prop, scenario_agents, sh, wait_for, webhook, write)

# site.yml on both hosts at once takes minutes on a loaded 2-core machine; the deadline only catches a hang
DEADLINE = 900
JIT_FILE = "/root/agentops-jit-secret.js"
JIT_CANARY = "CANARY-jit-secret-2b7d41"
COMMAND = EVIL_HOME + "/bin/agent"
TOKEN = EVIL_HOME + "/token"
SHADOW = EVIL_HOME + "/shadow"
# What the evil agent's files must still be after a held run (root-owned ones and its AGENTS.md).
EVIL_FILES = ["/etc/systemd/system/agentops-evil.service", "/etc/agentops/agents.d/evil.json",
              EVIL_HOME + "/AGENTS.md", CRED % "evil"]
NOT_FOLLOWED = "is a symlink (not followed): in a directory that a user other than root can write"
CASES = {
    # case: (playbook, {link: target})
    "command": ("converge.yml", {COMMAND: JIT_FILE}),
    "token": ("agents.yml", {TOKEN: CRED % "victim", SHADOW: "/etc/shadow"}),
}
# what the run and the alert must name, per case
NAMED = {"command": ["agentops_agents[evil].command: %s" % COMMAND],
         "token": ["agentops_agents[evil].auth_checks[token].path: %s" % TOKEN,
                   "agentops_agents[evil].auth_checks[shadow].path: %s" % SHADOW]}


def evil_state(host):
    return {"sums": host.check_output("sha256sum %s" % " ".join(EVIL_FILES)),
            "started": prop(host, UNIT % "evil", "ExecMainStartTimestampMonotonic")}


def inventory(case, nonce):
    agents = scenario_agents()
    evil = agent(agents, "evil")
    evil["description"] = "evil changed but never deployed %s" % nonce
    if case == "command":
        evil["hardening"] = "strict"
        evil["command"] = COMMAND + " evil"
    else:
        evil["auth_checks"] = list(evil.get("auth_checks") or []) + [
            {"name": "token", "type": "file", "path": TOKEN}, {"name": "shadow", "type": "file", "path": SHADOW}]
    agent(agents, "victim")["description"] = "victim converged next to a held agent %s" % nonce
    return agents


@pytest.fixture(scope="module")
def held_runs():
    hosts = all_hosts()
    rules = dict((host_name(h), h.file(API_RULES).content_string) for h in hosts)
    runs = {}
    try:
        for host in hosts:
            write(host, API_RULES, "[]\n")  # every GET /<agent>/me answers 200: the auth role passes for the others
            write(host, JIT_FILE, "#!/usr/bin/node\n// %s\n" % JIT_CANARY, mode="0600")
            as_evil(host, "mkdir -p bin")
        for case, (playbook, links) in sorted(CASES.items()):
            # an evil/deploy alert still open (the case before, or a converge of an earlier file that held evil for
            # its hostile AGENTS.md) would keep this case's alert from being sent: resolve it as an operator would
            for host in hosts:
                sh(host, "/usr/local/bin/agentops alert --severity resolved --title '' --key evil/deploy", ok=False)
            nonce = uuid.uuid4().hex[:8]
            run = {"nonce": nonce, "before": {}, "after": {}, "since": {}, "victim": {}}
            for host in hosts:
                as_evil(host, "rm -f bin/agent token shadow && %s" % " && ".join(
                    "ln -s %s %s" % (target, link) for link, target in sorted(links.items())))
                run["before"][host_name(host)] = evil_state(host)
                run["since"][host_name(host)] = now(host)
            run["result"] = fleet_run(playbook, DEADLINE, extra_vars={"agentops_agents": inventory(case, nonce)},
                                      diff=True, verbosity=2)
            for host in hosts:
                run["after"][host_name(host)] = evil_state(host)
                run["victim"][host_name(host)] = prop(host, UNIT % "victim", "Description")
            runs[case] = run
        # the links gone, the scenario's inventory: evil is deployed again and its alert resolved
        for host in hosts:
            as_evil(host, "rm -rf bin token shadow")
        since = dict((host_name(h), now(h)) for h in hosts)
        runs["clean"] = {"result": fleet_run("agents.yml", DEADLINE), "since": since}
    finally:
        for host in hosts:
            as_evil(host, "rm -rf bin token shadow", ok=False)
            sh(host, "rm -f %s" % JIT_FILE)
            write(host, API_RULES, rules[host_name(host)])
    return runs


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_run_fails_naming_the_agent_and_the_problem(host, held_runs, case):
    rc, output, recaps, seconds = held_runs[case]["result"]
    assert rc is not None and rc != 0, output[-3000:]
    text = " ".join(output.split())
    for named in NAMED[case]:
        assert "%s %s" % (named, NOT_FOLLOWED) in text, output[-3000:]
    assert "left as they were on %s" % host_name(host) in text, output[-3000:]
    assert recaps[host_name(host)]["failed"] == 1


def test_site_yml_fails_only_after_every_role_ran(host, held_runs):
    """The failure is site.yml's last task: the heartbeat, token rotation and auth roles ran before it."""
    rc, output, recaps, seconds = held_runs["command"]["result"]
    tail = output[output.index("TASK [agentops.fleet.auth : Run the auth checks of every agent]"):]
    assert "Fail for the agents left as they were" in tail
    assert "fatal: [%s]" % host_name(host) not in tail.split("Fail for the agents left as they were")[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_nothing_behind_the_link_is_followed_or_shown(host, held_runs, case):
    rc, output, recaps, seconds = held_runs[case]["result"]
    playbook, links = CASES[case]
    assert leaks(output, host) == []
    # the target, its first line, and what the old file check told about it ("present, mode 0600, written 3min ago");
    # victim's credential path itself is in victim's unit (LoadCredential=), which --diff shows: no line of evil's
    # may name it
    for shown in (JIT_CANARY, "#!/usr/bin/node", "/etc/shadow", "is present, mode"):
        assert shown not in output, "%r in the output of %s" % (shown, case)
    if case == "command":
        assert JIT_FILE not in output
    assert not [line for line in output.splitlines() if "evil" in line and CRED % "victim" in line]


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_held_agent_is_left_as_it_was(host, held_runs, case):
    name = host_name(host)
    before, after = held_runs[case]["before"][name], held_runs[case]["after"][name]
    assert after["sums"] == before["sums"]
    assert after["started"] == before["started"], "evil was restarted"
    assert held_runs[case]["nonce"] not in prop(host, UNIT % "evil", "Description")


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_other_agents_converge_in_the_same_run(host, held_runs, case):
    want = "victim converged next to a held agent %s" % held_runs[case]["nonce"]
    rc, output, recaps, seconds = held_runs[case]["result"]
    assert held_runs[case]["victim"][host_name(host)] == want, output[-3000:]
    assert recaps[host_name(host)]["changed"] > 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_host_alerts_evil_deploy(host, held_runs, case):
    since = held_runs[case]["since"][host_name(host)]
    # agentops alert delivers while the run goes on (or spools, then the flush timer delivers within seconds)
    sent = wait_for(lambda: webhook(host, since, key="evil/deploy", severity="critical"), 60,
                    message="evil/deploy alert after:\n%s" % held_runs[case]["result"][1][-3000:])
    body = sent[0]["title"] + "\n" + sent[0]["body"]
    for named in NAMED[case]:
        assert "%s %s" % (named, NOT_FOLLOWED) in body, body
    playbook, links = CASES[case]
    for shown in list(links.values()) + [JIT_CANARY, "#!/usr/bin/node", "is present, mode"]:
        assert shown not in body
    assert leaks(body, host) == []


def test_a_clean_run_deploys_evil_again_and_resolves_the_alert(host, held_runs):
    rc, output, recaps, seconds = held_runs["clean"]["result"]
    assert rc == 0, output[-3000:]
    since = held_runs["clean"]["since"][host_name(host)]
    wait_for(lambda: webhook(host, since, key="evil/deploy", severity="resolved"), 60,
             message="evil/deploy resolved")
    wait_for(lambda: prop(host, UNIT % "evil", "ActiveState") == "active", 60, message="evil running")
