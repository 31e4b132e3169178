"""Stand-ins for ``systemd-run`` and ``systemctl`` where the unit tests run: no systemd as PID 1 there.

The sandbox itself (the transient unit with the agent's directives) is proven on real systemd by the Molecule
scenarios (``hostile``: test_75_hostile_poll.py, ``token_rotation``, ``recovery``). These stand-ins let the unit
tests drive the runner (agentops_host.sandbox) and its callers end to end with real commands:

* ``systemd-run --wait --pipe ... --unit=U --uid=USER --gid=GROUP --working-directory=DIR -E K=V ... -p K=V ...
  -- COMMAND...`` runs COMMAND the way the transient unit starts it: as USER (root only), in DIR, with exactly
  the ``-E`` environment, ``$$`` read as ``$``, the pipes inherited; ``RuntimeMaxSec=`` ends it (SIGTERM to its
  process group, SIGKILL after ``TimeoutStopSec=``). It answers like ``systemd-run --wait``: 0 when the command
  exited 0, its exit status, 255 for a signal, 1 for a timeout; a failed unit's properties go to
  ``DIR/U.props`` (loaded until ``reset-failed``). A unit of that name still loaded, or a file ``DIR/refuse``,
  makes it refuse to start, as systemd-run does, with the message on stderr. Every call is recorded.
* ``systemctl show|reset-failed|kill|stop ... -- U`` reads and drops ``DIR/U.props``; every call is recorded.
"""
import json
import os
import sys

SYSTEMD_RUN = r'''#!%(python)s -I
import json, os, pwd, signal, sys, time
DIR = %(dir)r
args = sys.argv[1:]
with open(os.path.join(DIR, "systemd-run.jsonl"), "a") as log:
    log.write(json.dumps(args) + "\n")
unit, user, group, cwd, env, props, command = None, None, None, "/", {}, {}, []
i = 0
while i < len(args):
    arg = args[i]
    if arg == "--":
        command = args[i + 1:]
        break
    if arg in ("-E", "-p"):
        key, _, value = args[i + 1].partition("=")
        (env if arg == "-E" else props)[key] = value
        i += 2
        continue
    for flag in ("--unit=", "--uid=", "--gid=", "--working-directory="):
        if arg.startswith(flag):
            value = arg[len(flag):]
            if flag == "--unit=":
                unit = value
            elif flag == "--uid=":
                user = value
            elif flag == "--gid=":
                group = value
            else:
                cwd = value
    i += 1
state = os.path.join(DIR, unit + ".props")
refuse = os.path.join(DIR, "refuse")
if os.path.exists(state) or os.path.exists(refuse):
    text = open(refuse).read().strip() if os.path.exists(refuse) else "Unit %%s already exists." %% unit
    sys.stderr.write("Failed to start transient service unit: %%s\n" %% text)
    sys.exit(1)
def seconds(text):
    return float(text.rstrip("s"))
command = [part.replace("$$", "$") for part in command]
pid = os.fork()
if pid == 0:
    try:
        os.setpgid(0, 0)
        if os.geteuid() == 0 and user:
            record = pwd.getpwnam(user)
            os.setgroups(os.getgrouplist(record.pw_name, record.pw_gid))
            os.setgid(pwd.getpwnam(group).pw_gid if group else record.pw_gid)
            os.setuid(record.pw_uid)
        os.chdir(cwd)
    except OSError:
        os._exit(200)
    try:
        os.execve(command[0], command, env)
    except OSError:
        os._exit(203)
deadline = time.monotonic() + seconds(props.get("RuntimeMaxSec", "86400s"))
result = None
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    if time.monotonic() >= deadline and result is None:
        result = "timeout"
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + seconds(props.get("TimeoutStopSec", "5s"))
    elif time.monotonic() >= deadline:
        os.killpg(pid, signal.SIGKILL)
    time.sleep(0.01)
if os.WIFEXITED(status):
    code, value = 1, os.WEXITSTATUS(status)
    result = result or ("success" if value == 0 else "exit-code")
else:
    code, value = 2, os.WTERMSIG(status)
    result = result or "signal"
if result == "success":
    sys.exit(0)
with open(state, "w") as handle:
    handle.write("LoadState=loaded\nActiveState=failed\nResult=%%s\nExecMainCode=%%d\nExecMainStatus=%%d\n"
                 %% (result, code, value))
sys.exit(value if result == "exit-code" else 255 if result == "signal" else 1)
'''

SYSTEMCTL = r'''#!/bin/sh
echo "$*" >> %(dir)s/systemctl.log
verb=$1
while [ "$1" != "--" ]; do shift; done; shift
case "$verb" in
  show) cat "%(dir)s/$1.props" 2>/dev/null || printf 'LoadState=not-found\nActiveState=inactive\nResult=success\nExecMainCode=0\nExecMainStatus=0\n' ;;
  reset-failed) rm -f "%(dir)s/$1.props" ;;
esac
exit 0
'''


class FakeSystemd:
    """The stand-ins installed in ``directory``; what they were asked to do."""

    def __init__(self, directory):
        self.dir = str(directory)

    def runs(self):
        """Every systemd-run argv (without the program), oldest first."""
        path = os.path.join(self.dir, "systemd-run.jsonl")
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def systemctl(self):
        path = os.path.join(self.dir, "systemctl.log")
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as handle:
            return handle.read().splitlines()

    def refuse(self, message):
        with open(os.path.join(self.dir, "refuse"), "w", encoding="utf-8") as handle:
            handle.write(message)

    def leave(self, unit, text):
        """A unit of that name left loaded (a runner that was killed)."""
        with open(os.path.join(self.dir, unit + ".props"), "w", encoding="utf-8") as handle:
            handle.write(text)

    def loaded(self, unit):
        return os.path.exists(os.path.join(self.dir, unit + ".props"))


def install(directory, monkeypatch):
    """Write both stand-ins into ``directory`` (0755, readable by any user) and point the runner at them."""
    from agentops_host import sandbox
    directory = str(directory)
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o755)
    for name, text in (("systemd-run", SYSTEMD_RUN), ("systemctl", SYSTEMCTL)):
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text % {"python": sys.executable, "dir": directory})
        os.chmod(path, 0o755)
    monkeypatch.setattr(sandbox, "SYSTEMD_RUN", os.path.join(directory, "systemd-run"))
    monkeypatch.setattr(sandbox, "SYSTEMCTL", os.path.join(directory, "systemctl"))
    return FakeSystemd(directory)


def sandbox_entry(state_dir, hardening=True):
    """A ``sandbox`` entry of agents.d/<name>.json as the agents role writes it (a short profile)."""
    directives = [["MemoryMax", "2G"], ["CPUQuota", "200%"], ["TasksMax", "512"]]
    if hardening:
        directives += [["NoNewPrivileges", "yes"], ["ProtectSystem", "strict"], ["SystemCallFilter", "@system-service"],
                       ["SystemCallFilter", "~@privileged"], ["CapabilityBoundingSet", ""],
                       ["RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"], ["ReadWritePaths", str(state_dir)]]
    return {"systemd": 252, "directives": directives}
