"""Canary sweep: converges that carry every kind of secret the collection handles, then a search for each one.

Secrets, each a fresh canary: a Telegram bot token, Slack and Discord webhook URLs, an ntfy token, a PagerDuty
routing key, an SMTP password, a webhook URL and header value, the host's and an agent's dead man's switch URLs,
agent credentials (the tokens the auth checks send) and an auth check's header value. The channels point at the
loopback fakes (18081, 18082) and the SMTP sink (2525), and an alert goes through every one of them.

Searched: the controller's output of a converge at -vvv and of a --check --diff -vvv run that would change every
secret (the diff must say which secrets changed, never show one), and on the host the whole journal
(`journalctl -o export`, every field), `systemctl show`, every process's command line and environment, and every
file a user without privileges can read (files/leakscan). At the end the scenario's own inventory is converged
again (the roles that write secrets).
"""
import json
import os
import secrets
import subprocess

import pytest
from agentops_playbook import ansible_playbook

from hostile_helpers import (API, GROUP, HOOK, SCENARIO, agent, all_hosts, fleet_run, host_name, now, records,
                             scenario_agents, sh, wait_for)

SMTP = 2525
PLAYBOOK_DEADLINE = 600
# The test doubles' own records hold what they were sent: they are the remote side, not the host's.
EXCLUDES = ["/var/log/agentops-fake-endpoint", "/etc/agentops-fake-endpoint"]
KINDS = ("telegram", "slack", "discord", "ntfy", "smtp", "webhook-url", "webhook-header", "deadman", "deadman-agent",
         "credential", "auth-header")


def canaries(tag):
    """One fresh secret per kind; the PagerDuty routing key must be 32 letters and digits."""
    found = dict((kind, "CANARY-%s-%s-%s" % (kind, tag, secrets.token_hex(6))) for kind in KINDS)
    found["pagerduty"] = ("CANARYpagerduty" + tag + secrets.token_hex(8))[:32]
    return found


def inventory(canary):
    """The scenario's inventory plus a channel of every type, dead man's switches, a header and a credential."""
    agents = scenario_agents()
    victim = agent(agents, "victim")
    victim["auth_checks"][0]["headers"] = {"X-Api-Key": canary["auth-header"], "X-Plain": "2023-06-01"}
    victim["heartbeat"]["deadman"] = [{"type": "healthchecks",
                                       "url": "http://127.0.0.1:%d/ping/%s" % (HOOK, canary["deadman-agent"])}]
    agent(agents, "bystander")["credentials"]["extra_token"] = canary["credential"]
    channels = [
        {"type": "telegram", "bot_token": "4242:" + canary["telegram"], "chat_id": "-1001234567890",
         "api_url": "http://127.0.0.1:%d" % API},
        {"type": "slack", "url": "http://127.0.0.1:%d/slack/%s" % (HOOK, canary["slack"])},
        {"type": "discord", "url": "http://127.0.0.1:%d/discord/%s" % (HOOK, canary["discord"])},
        {"type": "ntfy", "url": "http://127.0.0.1:%d/agentops-canary" % HOOK, "token": canary["ntfy"]},
        {"type": "pagerduty", "routing_key": canary["pagerduty"], "api_url": "http://127.0.0.1:%d" % API},
        {"type": "email", "smtp_host": "localhost", "smtp_port": SMTP, "security": "none", "username": "alerts",
         "password": canary["smtp"], "from": "alerts@example.com", "to": ["oncall@example.com"]},
        {"type": "webhook", "url": "http://127.0.0.1:%d/canary-hook/%s" % (HOOK, canary["webhook-url"]),
         "headers": {"Authorization": "Bearer " + canary["webhook-header"]}},
    ]
    deadman = [{"type": "healthchecks", "url": "http://127.0.0.1:%d/ping/%s" % (HOOK, canary["deadman"])}]
    return {"agentops_agents": agents, "agentops_alert_channels": channels, "agentops_deadman": deadman}


def restore():
    """The scenario's own inventory converged again by the roles that write secrets (tags of site.yml)."""
    rc, output, recaps = ansible_playbook(GROUP, os.path.join(SCENARIO, "converge.yml"), timeout=PLAYBOOK_DEADLINE,
                                          env={"ANSIBLE_RUN_TAGS": "alerts,agents,heartbeat"})
    return rc, output, recaps, None


def found_in(text, values):
    """The canaries in `text`, each with a little context (the canary itself masked)."""
    hits = []
    for value in values:
        index = text.find(value)
        if index >= 0:
            hits.append("%s: ...%s..." % (value.split("-")[1] if "-" in value else "pagerduty",
                                          text[max(0, index - 160):index + len(value) + 40].replace(value, "<CANARY>")))
    return hits


def scan(host, values):
    argv = ["docker", "exec", "-i", host_name(host), "/opt/agentops-test/leakscan"]
    for path in EXCLUDES:
        argv += ["--exclude", path]
    proc = subprocess.run(argv, input="\n".join(values).encode() + b"\n", stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout.decode())


@pytest.fixture(scope="module")
def sweep():
    hosts = all_hosts()
    first, second = canaries("a"), canaries("b")
    result = {"values": sorted(first.values()) + sorted(second.values()), "hosts": {}}
    started = dict((host_name(h), now(h)) for h in hosts)
    try:
        result["converge"] = fleet_run("converge.yml", PLAYBOOK_DEADLINE, extra_vars=inventory(first), verbosity=3)
        # every secret changes: the diff must say which, never show one
        result["check"] = fleet_run("converge.yml", PLAYBOOK_DEADLINE, extra_vars=inventory(second), check=True,
                                    diff=True, verbosity=3)
        for host in hosts:
            name = host_name(host)
            # the auth check with its header runs at the session start, an alert goes through every channel
            sh(host, "systemctl restart agentops-victim.service", ok=False)
            sh(host, "/usr/local/bin/agentops alert --severity warning --key canary/sweep --title 'canary sweep' "
                     "--body 'every channel'")
            result["hosts"][name] = {"delivered": wait_for(lambda h=host, t=started[name]: delivered(h, t), 60,
                                                           message="the alert at every HTTP channel and the dead "
                                                                   "man's switch pings")}
            result["hosts"][name]["scan"] = scan(host, result["values"])
    finally:
        # back to the scenario's own channels, dead man's switches, auth checks and credentials
        result["restore"] = restore()
    return result


def delivered(host, since):
    """Paths the fakes received since the converge, once every HTTP channel and both dead man's switches show."""
    paths = [r["path"] for r in records(host, HOOK, since) + records(host, API, since)]
    wanted = ("/bot4242:", "/slack/", "/discord/", "/agentops-canary", "/v2/enqueue", "/canary-hook/",
              "/ping/CANARY-deadman-a", "/ping/CANARY-deadman-agent-a")
    return paths if all(any(p.startswith(w) for p in paths) for w in wanted) else None


def test_the_runs_succeed_with_every_secret(host, sweep):
    for run in ("converge", "check", "restore"):
        rc, output, recaps, _seconds = sweep[run]
        assert rc == 0, "%s:\n%s" % (run, output[-4000:])
        assert recaps[host_name(host)]["failed"] == 0, run


def test_no_secret_in_the_controller_output_at_vvv(host, sweep):
    for run in ("converge", "check"):
        output = sweep[run][1]
        assert "ESTABLISH" in output, "%s did not run at -vvv" % run
        assert found_in(output, sweep["values"]) == [], run


def test_the_diff_says_which_secrets_change(host, sweep):
    output = sweep["check"][1]
    assert "<secret: changed>" in output, output[-4000:]
    for path in ("/etc/agentops/agentops.json", "/etc/agentops/heartbeat.json", "/etc/agentops/agents.d/victim.json"):
        assert path + " (secret values masked)" in output, path
    assert '"X-Api-Key": "<secret: changed>"' in output


def test_every_channel_was_used(host, sweep):
    assert sweep["hosts"][host_name(host)]["delivered"]


def test_no_secret_on_the_host(host, sweep):
    found = sweep["hosts"][host_name(host)]["scan"]
    assert found == {"journal": [], "systemctl": [], "proc": [], "files": []}
