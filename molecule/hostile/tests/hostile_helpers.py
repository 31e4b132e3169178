"""Helpers of the hostile scenario: acting as the evil agent's user, the receivers' logs, snapshots, deadlines.

Every secret of the scenario (credentials, rotated tokens, the webhook URL) contains SECRET_MARK, so one
search finds any of them in an output, a file, the journal or a process.
"""
import copy
import json
import os
import shlex
import subprocess
import time

import agentops_testlib
import testinfra
import yaml
from agentops_playbook import ansible_playbook

SCENARIO = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", os.path.dirname(os.path.dirname(__file__)))
GROUP = "agentops_test"
SECRET_MARK = "CANARY-"
EVIL = "evil"
EVIL_USER = "agent-evil"
EVIL_HOME = "/var/lib/agentops/evil"
VICTIM_HOME = "/var/lib/agentops/victim"
BYSTANDER_HOME = "/var/lib/agentops/bystander"
CRED = "/etc/agentops/credentials/%s/api_token"
API, HOOK = 18081, 18082
API_RULES = "/etc/agentops-fake-endpoint/%d.json" % API
CANARY_DIR = "/var/lib/agentops-canary"
ROTATE_MODE = "/etc/agentops-test/evil-rotate.mode"
UNIT = "agentops-%s.service"
# The collection's own units: an agent name must never overwrite or remove them.
OWN_UNITS = ["agentops-heartbeat.service", "agentops-heartbeat.timer", "agentops-alert@.service",
             "agentops-alert-flush.service", "agentops-alert-flush.timer"]
# Where root-owned things live whose owner or mode an agent must never change through root.
SNAPSHOT_ROOTS = ["/etc", "/root", "/usr/local", "/opt", VICTIM_HOME, BYSTANDER_HOME]
# Files an agent points its symlinks at: their content must never change either.
TARGETS = [CRED % "victim", CRED % "bystander", "/etc/shadow", "/usr/local/bin/agentops",
           VICTIM_HOME + "/AGENTS.md", "/etc/agentops/agentops.json"]
# Environment a root entry point could inherit from an agent's unit or a careless shell in its directory.
HOSTILE_ENV = {"HOME": EVIL_HOME, "CURL_HOME": EVIL_HOME, "PYTHONPATH": EVIL_HOME + "/pylib",
               "PYTHONUSERBASE": EVIL_HOME + "/.local", "XDG_CONFIG_HOME": EVIL_HOME + "/.config"}


# --------------------------------------------------------------------------- inventory and hosts
def scenario_agents():
    """A fresh copy of agentops_agents as molecule.yml defines it."""
    with open(os.path.join(SCENARIO, "molecule.yml"), encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    return copy.deepcopy(data["provisioner"]["inventory"]["group_vars"][GROUP]["agentops_agents"])


def agent(agents, name):
    return next(a for a in agents if a["name"] == name)


def all_hosts():
    return testinfra.get_hosts(["ansible://" + GROUP], ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


def host_name(host):
    return host.backend.host if hasattr(host.backend, "host") else str(host)


def fleet_run(playbook, deadline, extra_vars=None, check=False, diff=False, verbosity=0):
    """Run a playbook of the scenario on every host at once, killed after `deadline` seconds.

    Returns (rc, output, {host: recap}, seconds); rc is None when the run was killed at its deadline
    (a hostile file blocked it), so the tests that judge the run fail, not the fixture.
    """
    started = time.monotonic()
    try:
        rc, output, recaps = ansible_playbook(GROUP, os.path.join(SCENARIO, playbook), extra_vars=extra_vars,
                                              check=check, diff=diff, verbosity=verbosity, timeout=deadline)
    except subprocess.TimeoutExpired as exc:
        tail = exc.output or b""
        tail = tail.decode("utf-8", "replace") if isinstance(tail, bytes) else tail
        return None, "%s killed after %ss\n%s" % (playbook, deadline, tail), {}, time.monotonic() - started
    return rc, output, recaps, time.monotonic() - started


def read_report(path):
    """The audit report a playbook run wrote on the controller ("" when it wrote none)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return ""


# --------------------------------------------------------------------------- commands
wait_for = agentops_testlib.wait_for


def sh(host, command, ok=True):
    result = host.run(command)
    if ok:
        assert result.rc == 0, "%s failed (%s): %s %s" % (command, result.rc, result.stdout, result.stderr)
    return result


def as_evil(host, script, ok=True, env=None):
    """Run a shell script as the evil agent's user, in its HOME, with its login environment."""
    prefix = "".join("%s=%s " % (k, shlex.quote(v)) for k, v in sorted((env or {}).items()))
    command = "setpriv --reuid=%s --regid=%s --init-groups --reset-env sh -c %s" % (
        EVIL_USER, EVIL_USER, shlex.quote("cd ~ && %s%s" % ("export %s&& " % prefix if prefix else "", script)))
    return sh(host, command, ok=ok)


def timed(host, command, deadline):
    """Run `command` as root with a hard deadline (SIGKILL); returns (result, seconds)."""
    start = now(host)
    result = host.run("timeout -s KILL %d sh -c %s" % (deadline, shlex.quote(command)))
    return result, now(host) - start


now = agentops_testlib.now


def py_minor(host):
    return host.check_output("python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'")


def write(host, path, text, mode="0644"):
    """Write a root-owned file atomically (the content never reaches a command line)."""
    proc = subprocess.run(["docker", "exec", "-i", host_name(host), "sh", "-c",
                           "umask 077; cat > %s.new && chmod %s %s.new && mv %s.new %s"
                           % (path, mode, path, path, path)],
                          input=text.encode("utf-8"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    assert proc.returncode == 0, proc.stdout


def prop(host, unit, name):
    return host.check_output("systemctl show --value -p %s %s" % (name, unit))


# --------------------------------------------------------------------------- the fake API and the receiver
def set_api(host, status=None, tokens=None):
    """Rules of the fake API: status {agent: HTTP status of GET /<agent>/me} (default 200),
    tokens {agent: token handed out by POST /token/<agent>}."""
    rules = [{"path": "^/%s/me$" % name, "status": code, "body": {"ok": code == 200}}
             for name, code in sorted((status or {}).items())]
    rules += [{"path": "^/token/%s$" % name, "method": "POST", "status": 200, "body": {"access_token": token}}
              for name, token in sorted((tokens or {}).items())]
    write(host, API_RULES, json.dumps(rules))


records = agentops_testlib.endpoint_records


def webhook(host, since=0.0, key=None, severity=None):
    """Alerts the fake webhook received (their JSON body plus _time)."""
    found = []
    for record in records(host, HOOK, since):
        if not record["path"].startswith("/hook/"):
            continue
        body = json.loads(record["body"])
        body["_time"] = record["time"]
        if (key is None or body.get("key") == key) and (severity is None or body.get("severity") == severity):
            found.append(body)
    return found


# --------------------------------------------------------------------------- the evil agent's files
ORIGINALS = "/root/.hostile-orig"
FILES = ("AGENTS.md", "WORKSTATE.md", "progress")


def save_originals(host):
    sh(host, "mkdir -p -m 0700 %s && for f in AGENTS.md WORKSTATE.md; do "
             "[ -f %s/$f.saved ] || cp -p %s/$f %s/$f.saved; done" % (ORIGINALS, ORIGINALS, EVIL_HOME, ORIGINALS))


def restore(host):
    """The evil agent's files back to what the role wrote (the progress file absent)."""
    as_evil(host, "rm -f %s" % " ".join(FILES))
    sh(host, "for f in AGENTS.md WORKSTATE.md; do cp -p %s/$f.saved %s/$f; done" % (ORIGINALS, EVIL_HOME))


# --------------------------------------------------------------------------- evidence
def root_canaries(host):
    """Everything that says root ran the evil user's code: /root/PWNED-* and euid-0 payload records."""
    found = host.run("ls -1 /root/PWNED-* %s/*-euid0-* 2>/dev/null" % CANARY_DIR).stdout.split()
    details = []
    for path in found:
        details.append("%s: %s" % (path, host.run("head -c 400 %s" % path).stdout.strip()))
    return details


def payload_records(host, uid):
    return sorted(os.path.basename(p).split("-euid")[0]
                  for p in host.run("ls -1 %s/*-euid%d-* 2>/dev/null" % (CANARY_DIR, uid)).stdout.split())


def snapshot(host):
    """{path: "owner group mode type"} of everything under SNAPSHOT_ROOTS (Ansible's temporary files left out)."""
    out = host.check_output(
        "find %s -xdev \\( -path /root/.ansible -o -path /root/.cache \\) -prune -o -printf '%%p %%u %%g %%m %%y\\n'"
        % " ".join(SNAPSHOT_ROOTS))
    found = {}
    for line in out.splitlines():
        parts = line.rsplit(" ", 4)
        found[parts[0]] = " ".join(parts[1:])
    return found


def snapshot_changes(before, after):
    """Paths present before and after whose owner, group, mode or type changed."""
    return sorted("%s: %s -> %s" % (p, before[p], after[p]) for p in before if p in after and before[p] != after[p])


def target_sums(host):
    return host.check_output("sha256sum %s" % " ".join(TARGETS))


def shadow_lines(host):
    """Lines of /etc/shadow (root-only): none may ever appear in an output."""
    return [line for line in host.check_output("cat /etc/shadow").splitlines() if line.count(":") >= 8]


def leaks(output, host):
    """Secrets and /etc/shadow lines found in an output (empty when clean)."""
    found = []
    if SECRET_MARK in output:
        index = output.index(SECRET_MARK)
        found.append("a secret (...%s...)" % output[max(0, index - 200):index + 60].replace(SECRET_MARK, "<MARK>"))
    found += ["/etc/shadow line of %s" % line.split(":")[0] for line in shadow_lines(host) if line in output]
    return found
