#!/usr/bin/env python3
"""`make demo`: a two-host agent fleet in local containers, and the failures it catches.

1. Starts two containers from the local test images (systemd as PID 1).
2. Lays down the loopback stand-ins (agents' API, webhook sink, fake Telegram) and the demo agent.
3. Runs playbooks/site.yml against them with the docker connection, then playbooks/status.yml.
4. Breaks things on purpose -- a crashed agent, a hung agent, a revoked token -- and shows each
   alert as the webhook sink receives it, with the time it took to arrive.
Ends with how to tear it down (`make demo-clean`).
"""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
INVENTORY = os.path.join(ROOT, "inventories", "demo")
HOSTS = {
    "agentops-demo-1": os.environ.get("IMAGE_DEBIAN12", "agentops-test/debian12:latest"),
    "agentops-demo-2": os.environ.get("IMAGE_DEBIAN13", "agentops-test/debian13:latest"),
}
SINK = "/var/log/agentops-fake-endpoint/18090.jsonl"
BOLD, DIM, RED, GREEN, YELLOW, RESET = (("\033[1m", "\033[2m", "\033[31m", "\033[32m", "\033[33m", "\033[0m")
                                        if sys.stdout.isatty() else ("",) * 6)


def say(text=""):
    print(text, flush=True)


def header(text):
    say("\n%s== %s%s" % (BOLD, text, RESET))


def run(cmd, check=True, capture=False, quiet=False, stdin=None):
    if not quiet:
        say("%s$ %s%s" % (DIM, " ".join(cmd), RESET))
    proc = subprocess.run(cmd, check=False, text=True, cwd=ROOT, input=stdin,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.STDOUT if capture else None)
    if check and proc.returncode != 0:
        if capture:
            say(proc.stdout[-4000:])
        raise SystemExit("demo: command failed (%d): %s" % (proc.returncode, " ".join(cmd)))
    return proc


def dexec(host, command, check=True):
    return run(["docker", "exec", host, "sh", "-c", command], check=check, capture=True, quiet=True).stdout


def playbook(*args):
    run(["ansible-playbook", "-i", INVENTORY] + list(args))


def start_containers():
    for name, image in HOSTS.items():
        state = run(["docker", "inspect", "-f", "{{.State.Running}}", name], check=False, capture=True, quiet=True)
        if state.returncode == 0 and state.stdout.strip() == "true":
            say("%s is already running" % name)
            continue
        run(["docker", "rm", "-f", name], check=False, capture=True, quiet=True)
        run(["docker", "run", "-d", "--name", name, "--hostname", name,
             "--label", "agentops-demo=1",
             "--cap-add", "SYS_ADMIN",
             "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
             "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
             "--tmpfs", "/run", "--tmpfs", "/run/lock",
             image, "/bin/sh", "-c", "mount --make-rshared / && exec /lib/systemd/systemd"],
            capture=True)
        say("started %s from %s" % (name, image))


def alerts(host):
    out = dexec(host, "cat %s 2>/dev/null || true" % SINK)
    found = []
    for line in out.splitlines():
        try:
            found.append(json.loads(json.loads(line)["body"]))
        except (ValueError, KeyError):
            continue
    return found


def show(host, alert, elapsed=None):
    colour = {"critical": RED, "warning": YELLOW, "resolved": GREEN}.get(alert.get("severity"), "")
    took = "" if elapsed is None else "  %s(+%.0fs)%s" % (DIM, elapsed, RESET)
    say("  %s[%s]%s %-9s %-14s %s%s" % (colour, alert.get("severity", "?").upper(), RESET, host,
                                        alert.get("agent") or "-", alert.get("title", ""), took))


def wait_alert(host, match, timeout, since, started):
    """Wait until the sink on host has received an alert (after index `since`) for which match() is true."""
    deadline = time.monotonic() + timeout
    seen = since
    while time.monotonic() < deadline:
        received = alerts(host)
        for alert in received[seen:]:
            show(host, alert, time.monotonic() - started)
            if match(alert):
                return alert
        seen = len(received)
        time.sleep(1)
    say("  %sno matching alert within %ds%s" % (RED, timeout, RESET))
    return None


def main_pid(host, agent):
    return dexec(host, "systemctl show -P MainPID agentops-%s.service" % agent).strip()


def demo_failures():
    results = []
    for host, agent in (("agentops-demo-1", "mail-triage"), ("agentops-demo-2", "research")):
        set_api_rules(host, [{"path": "^/v1/token$", "status": 200, "body": "demo-token-rotated"}])
        dexec(host, "systemctl reset-failed agentops-%s.service; systemctl start agentops-%s.service"
              % (agent, agent), check=False)
        _wait_new_pid(host, agent, "0")
    host, agent = "agentops-demo-1", "mail-triage"

    header("1. The agent crashes, again and again (kill -9 of its main process)")
    say("Restart=on-failure brings it back each time, so OnFailure= never fires: the heartbeat")
    say("watches NRestarts and alerts on the crash loop itself.")
    since, started = len(alerts(host)), time.monotonic()
    for attempt in range(3):
        pid = main_pid(host, agent)
        dexec(host, "kill -9 %s" % pid)
        say("  killed %s (pid %s); restarted as pid %s" % (agent, pid, _wait_new_pid(host, agent, pid)))
    procs = dexec(host, "cat /sys/fs/cgroup/systemd$(systemctl show -P ControlGroup agentops-%s.service)/cgroup.procs"
                        " 2>/dev/null | xargs -r ps -o comm= -p | sort | uniq -c | xargs" % agent, check=False).strip()
    strays = dexec(host, "ps -u agent-%s -o pid= | wc -l" % agent, check=False).strip()
    say("  its control group now holds: %s; processes of its user in total: %s (nothing orphaned by the kills)"
        % (procs or "nothing", strays))
    hit = wait_alert(host, lambda a: a.get("agent") == agent and a.get("severity") in ("critical", "warning"),
                     90, since, started)
    results.append(("crash loop under Restart=", hit, time.monotonic() - started))

    host, agent = "agentops-demo-2", "research"
    header("2. The agent hangs: alive, but no progress (kill -STOP)")
    say("systemd still reports it active; the heartbeat sees no journal line for max_silence (20s).")
    since, started = len(alerts(host)), time.monotonic()
    pid = main_pid(host, agent)
    dexec(host, "kill -STOP %s" % pid)
    hit = wait_alert(host, lambda a: a.get("agent") == agent and a.get("severity") in ("critical", "warning"),
                     90, since, started)
    results.append(("hung but alive", hit, time.monotonic() - started))
    say("  resuming it (kill -CONT): expect exactly one resolved message")
    since, started = len(alerts(host)), time.monotonic()
    dexec(host, "kill -CONT %s" % pid)
    hit = wait_alert(host, lambda a: a.get("agent") == agent and a.get("severity") == "resolved", 90, since, started)
    results.append(("recovery notice", hit, time.monotonic() - started))

    host, agent = "agentops-demo-1", "mail-triage"
    header("3. Its token is revoked: the API answers 401 and the agent carries on regardless")
    say("The agent itself does not stop; the auth check in the heartbeat notices, and a restart")
    say("refuses to start a session with a dead token (ExecStartPre=agentops check-auth).")
    since, started = len(alerts(host)), time.monotonic()
    set_api_rules(host, [{"path": "^/v1/", "status": 401, "body": {"error": "token revoked"}}])
    hit = wait_alert(host, lambda a: a.get("agent") == agent and "auth" in (a.get("key") or ""), 90, since, started)
    results.append(("auth broken mid-session", hit, time.monotonic() - started))
    say("  systemctl restart agentops-%s.service, with the token still revoked:" % agent)
    dexec(host, "systemctl restart --no-block agentops-%s.service" % agent, check=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = dexec(host, "systemctl show -P Result agentops-%s.service" % agent, check=False).strip()
        if result not in ("", "success"):
            break
        time.sleep(0.5)
    say("  unit result: %s; ExecStartPre said:" % result)
    say("    " + dexec(host, "journalctl --no-pager -o cat -n 200 -u agentops-%s.service | grep -i auth | tail -n 1"
                      % agent, check=False).strip())
    say("  restoring the token endpoint; the next start passes the check")
    set_api_rules(host, [{"path": "^/v1/token$", "status": 200, "body": "demo-token-rotated"}])
    dexec(host, "systemctl reset-failed agentops-%s.service; systemctl start agentops-%s.service" % (agent, agent),
          check=False)
    say("  agentops-%s.service is %s" % (agent, dexec(host, "systemctl is-active agentops-%s.service" % agent,
                                                           check=False).strip()))
    return results


def set_api_rules(host, rules):
    """Rewrite the response rules of the demo API on 127.0.0.1:18080 of that host."""
    run(["docker", "exec", "-i", host, "sh", "-c", "cat > /etc/agentops-fake-endpoint/18080.json"],
        quiet=True, capture=True, stdin=json.dumps(rules))


def _wait_new_pid(host, agent, old, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = main_pid(host, agent)
        if pid not in ("", "0", old):
            return pid
        time.sleep(0.5)
    return "(not restarted within %ds)" % timeout


def main():
    os.chdir(ROOT)
    header("Starting the demo fleet: two containers with systemd as PID 1")
    start_containers()

    header("Loopback stand-ins: the agents' API, a webhook alert sink, a fake Telegram Bot API")
    playbook(os.path.join("demo", "prepare.yml"))

    header("Deploying the collection: ansible-playbook -i inventories/demo playbooks/site.yml")
    playbook(os.path.join("playbooks", "site.yml"))

    header("What was deployed: the fleet status")
    playbook(os.path.join("playbooks", "status.yml"))
    for host in HOSTS:
        say("%s$ docker exec %s agentops status%s" % (DIM, host, RESET))
        say(dexec(host, "agentops status", check=False).rstrip())

    results = demo_failures()

    header("Detection summary")
    for name, hit, elapsed in results:
        mark = "%scaught%s" % (GREEN, RESET) if hit else "%sNOT caught%s" % (RED, RESET)
        say("  %-26s %s after %.0fs" % (name, mark, elapsed))
    say("\nEvery alert above went to both the webhook sink and the fake Telegram Bot API on each host's 127.0.0.1.")
    say("Look around: docker exec -it agentops-demo-1 bash   (agentops status, journalctl -u 'agentops-*')")
    say("Tear the demo down with: %smake demo-clean%s" % (BOLD, RESET))
    return 0 if all(hit for _, hit, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
