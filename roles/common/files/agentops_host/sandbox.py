"""Commands the collection runs for an agent, inside that agent's own sandbox.

The heartbeat's poll command (``heartbeat.progress: command``) and an agent's token rotation commands act for
the agent: they run as its user, with its limits and its sandbox, in a transient service unit of their own:

    systemd-run --wait --pipe --quiet --unit=agentops-heartbeat-<kind>-<agent>.service
        --description=... --uid=<user> --gid=<user> --working-directory=<state dir>
        -E PATH=... -E LANG=C.UTF-8 -E HOME=<state dir> -E USER=... -E LOGNAME=... -E AGENTOPS_AGENT=<agent> ...
        -p <every directive of the "sandbox" entry of agents.d/<agent>.json>
        -p Type=exec -p KillMode=control-group -p TimeoutStopSec=5s -p RuntimeMaxSec=<timeout>
        [-p LimitCORE=1: a rotation command, which holds the current token]
        -- <command, with every "$" doubled>

* The same sandbox as the agent: the ``sandbox`` entry holds the limits and hardening directives the agent's own
  unit was rendered from (``agentops.fleet.agents_sandbox``, gated on the host's systemd version when the agents
  role wrote it), so the command gets the agent's NoNewPrivileges, capability sets, seccomp filter, read-only file
  system, private /tmp, memory and task limits, and nothing more. An agent file without that entry (written by an
  older collection) runs nothing: converge the host again.
* A deadline that also ends escaped children: RuntimeMaxSec= stops the unit at the command's timeout, and stopping
  a unit (KillMode=control-group) ends every process of its cgroup, a child that left with ``setsid`` included:
  SIGTERM, then SIGKILL after TimeoutStopSec= (5 s). When the command exits, what it left behind is stopped the
  same way before the unit is done. The runner's own deadline (timeout + 5 s + 10 s) kills ``systemd-run`` and
  then the unit itself (``systemctl kill --signal=SIGKILL``).
* Output comes back through the pipes (``--pipe``), read with ``agentops_auth.run_bounded`` (stdout capped,
  only the end of stderr kept, reading stops at the deadline): never through the journal, so a rotation
  command's new token reaches no log. The journal holds only systemd's own lines about the unit (started, its
  result, CPU time) under a fixed description; ``--quiet`` keeps ``systemd-run``'s own notes out of stderr.
* The result is the unit's: ``systemd-run --wait`` exits 0 when the unit succeeded, and otherwise the unit's
  Result= and its main process's exit code and status are read with ``systemctl show``, after which the failed
  unit is reset so that the name is free for the next run. A unit that was never created (``systemd-run`` could
  not start it) is reported as such, with ``systemd-run``'s own message.
* One unit name per agent and kind, under the reserved prefix ``heartbeat-`` (``agentops_contract.transient_unit``):
  an agent called ``poll-x`` cannot collide with anything. Both callers hold a lock (the heartbeat's run lock, the
  agent's rotation lock), so a unit of that name still loaded when a run begins is a leftover of a runner that was
  killed: it is stopped and reset first.
"""
import os
import pwd

from agentops_lib import agentops_auth
from agentops_lib import agentops_contract

SYSTEMD_RUN = "systemd-run"
SYSTEMCTL = "systemctl"
# Stopping the unit: SIGTERM to every process of its cgroup, SIGKILL after this many seconds.
STOP_TIMEOUT = 5
# How long past the command's timeout and the stop the runner still waits for systemd-run.
SLACK = 10
SYSTEMCTL_TIMEOUT = 30
MAX_OUTPUT = 64 * 1024
STDERR_TAIL = 8 * 1024
DETAIL_MAX = 300
# The environment of systemd-run itself (not of the command): fixed, no colours.
RUNNER_ENV = {"PATH": agentops_auth.SAFE_PATH, "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_LOG_COLOR": "0",
              "SYSTEMD_PAGER": ""}
DESCRIPTIONS = {"poll": "agentops: heartbeat poll command of agent %s",
                "rotate": "agentops: token rotation command of agent %s"}
# Kinds whose command holds a secret in memory (a rotation command reads the current token on stdin).
SECRET_KINDS = ("rotate",)
# ExecMainCode= (waitid's si_code)
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
# Exit statuses systemd itself uses when it could not set up the command (systemd.exec(5), "Process exit codes").
SETUP_STATUSES = {200: "CHDIR", 201: "NICE", 202: "FDS", 203: "EXEC", 204: "MEMORY", 205: "LIMITS", 206: "OOM_ADJUST",
                  207: "SIGNAL_MASK", 208: "STDIN", 209: "STDOUT", 210: "CHROOT", 211: "IOPRIO", 212: "TIMERSLACK",
                  213: "SECUREBITS", 214: "SETSCHEDULER", 215: "CPUAFFINITY", 216: "GROUP", 217: "USER",
                  218: "CAPABILITIES", 219: "CGROUP", 220: "SETSID", 221: "CONFIRM", 222: "STDERR", 224: "PAM",
                  225: "NETWORK", 226: "NAMESPACE", 227: "NO_NEW_PRIVILEGES", 228: "SECCOMP", 229: "SELINUX_CONTEXT",
                  230: "PERSONALITY", 231: "APPARMOR_PROFILE", 232: "ADDRESS_FAMILIES", 233: "RUNTIME_DIRECTORY",
                  235: "CHOWN", 236: "SMACK_PROCESS_LABEL", 237: "KEYRING", 238: "STATE_DIRECTORY",
                  239: "CACHE_DIRECTORY", 240: "LOGS_DIRECTORY", 241: "CONFIGURATION_DIRECTORY",
                  242: "NUMA_POLICY", 243: "CREDENTIALS"}
RUNNING_STATES = ("active", "activating", "deactivating", "reloading", "refreshing")


class SandboxError(Exception):
    """The command cannot be run for the agent; nothing was started. The message names the agent."""


def unit_name(kind, agent):
    """The transient unit of ``kind`` (poll, rotate) for ``agent`` (its agents.d dict)."""
    try:
        return agentops_contract.transient_unit(kind, agent.get("name"))
    except ValueError as exc:
        raise SandboxError(str(exc))


def directives(agent):
    """The agent's sandbox as ``KEY=VALUE`` strings for ``systemd-run -p``; SandboxError when it is missing or bad."""
    name = agent.get("name")
    sandbox = agent.get("sandbox")
    if sandbox is None:
        raise SandboxError("agent %s: its agents.d file has no sandbox settings (written by an older version of the "
                           "collection); converge the host again, the command was not run" % name)
    problems = agentops_contract.sandbox_problems(sandbox)
    if problems:
        raise SandboxError("agent %s: sandbox%s: %s; the command was not run" % ((name,) + problems[0]))
    return ["%s=%s" % (key, value) for key, value in sandbox["directives"]]


def environment(agent, extra=None):
    """The whole environment of the command: fixed, never the caller's (systemd adds only INVOCATION_ID and such)."""
    user = agent.get("user")
    home = agent.get("state_dir")
    env = {"PATH": agentops_auth.SAFE_PATH, "LANG": "C.UTF-8", "HOME": home, "USER": user, "LOGNAME": user,
           "AGENTOPS_AGENT": agent.get("name")}
    env.update(extra or {})
    return env


def _seconds(value):
    return "%gs" % value if isinstance(value, float) else "%ds" % value


def command_argv(kind, agent, argv, timeout, extra_env=None):
    """The ``systemd-run`` command line that runs ``argv`` for ``agent``; SandboxError when it cannot be built."""
    name = agent.get("name")
    unit = unit_name(kind, agent)
    user = agent.get("user")
    home = agent.get("state_dir")
    if not (isinstance(user, str) and agentops_contract.USER_RE.match(user)):
        raise SandboxError("agent %s: %r is not a user name; the command was not run" % (name, user))
    if agentops_contract.path_problem(home, own=True):
        raise SandboxError("agent %s: state_dir %r is not an absolute path; the command was not run" % (name, home))
    if not argv or not all(isinstance(part, str) for part in argv) or not os.path.isabs(argv[0]):
        raise SandboxError("agent %s: the command %r is not an absolute path" % (name, argv[0] if argv else argv))
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 86400:
        raise SandboxError("agent %s: the timeout %r is not a number of seconds" % (name, timeout))
    line = [SYSTEMD_RUN, "--wait", "--pipe", "--quiet", "--unit=" + unit, "--description=" + DESCRIPTIONS[kind] % name,
            "--uid=" + user, "--gid=" + user, "--working-directory=" + home]
    for key, value in sorted(environment(agent, extra_env).items()):
        line += ["-E", "%s=%s" % (key, value)]
    for directive in directives(agent):
        line += ["-p", directive]
    # after the agent's own list: these are the runner's (a later assignment wins)
    line += ["-p", "Type=exec", "-p", "KillMode=control-group", "-p", "TimeoutStopSec=%ds" % STOP_TIMEOUT,
             "-p", "RuntimeMaxSec=" + _seconds(timeout)]
    if kind in SECRET_KINDS:
        # the current token is in its memory: no core dump (a limit of 1 byte also keeps the kernel from piping
        # the crash to systemd-coredump, which would store the memory and journal the environment)
        line += ["-p", "LimitCORE=1"]
    # systemd expands $VAR and ${VAR} in a command line it is given ($$ is a $); the command runs as written
    return line + ["--"] + [part.replace("$", "$$") for part in argv]


def _systemctl(*args):
    """Run ``systemctl ARGS`` (fixed environment, bounded); (returncode, stdout), or (None, "") when it cannot run."""
    try:
        run = agentops_auth.run_bounded([SYSTEMCTL] + list(args), timeout=SYSTEMCTL_TIMEOUT, env=dict(RUNNER_ENV),
                                        stdout_limit=MAX_OUTPUT)
    except OSError:
        return None, ""
    return run["returncode"], run["stdout"].decode("utf-8", "replace")


def show(unit):
    """LoadState, ActiveState, Result, ExecMainCode, ExecMainStatus of ``unit`` ({} when systemctl fails)."""
    code, out = _systemctl("show", "--no-pager", "-p", "LoadState,ActiveState,Result,ExecMainCode,ExecMainStatus",
                           "--", unit)
    if code != 0:
        return {}
    props = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key] = value
    return props


def _loaded(props):
    return props.get("LoadState") not in (None, "", "not-found")


def _stop(unit):
    """End every process of ``unit`` now and stop it (the runner gave up waiting, or the unit is a leftover)."""
    _systemctl("kill", "--signal=SIGKILL", "--", unit)
    _systemctl("stop", "--", unit)


def _reset(unit):
    """Unload a failed transient unit, so that its name is free for the next run."""
    _systemctl("reset-failed", "--", unit)


def clear_leftover(unit):
    """Stop and reset a unit of this name left by a runner that was killed (the callers hold a lock)."""
    props = show(unit)
    if not _loaded(props):
        return False
    if props.get("ActiveState") in RUNNING_STATES:
        _stop(unit)
    _reset(unit)
    return True


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _detail(stderr):
    """systemd-run's own last stderr line (it never started the command), cut to length."""
    tail = agentops_auth.last_line(stderr, [], limit=DETAIL_MAX)
    return tail or "no message"


def interpret(returncode, props, stderr=b""):
    """The outcome of a run from systemd-run's exit status and, after a failure, the unit's properties.

    Returns {ok, result, code, status, returncode, timed_out, leftover, detail}: ``result`` is the unit's
    Result= (``success``, ``exit-code``, ``signal``, ``core-dump``, ``timeout``, ``oom-kill``, ...) or
    ``not-started`` when no unit of that name was loaded after a failed ``systemd-run`` (its message is in
    ``detail``); ``returncode`` is the exit status, or minus the signal that killed the command;
    ``timed_out``: the command ran past its timeout; ``leftover``: the command exited but left processes that
    did not end on SIGTERM (they were killed, and the unit failed with ``timeout``).
    """
    outcome = {"ok": False, "result": None, "code": None, "status": None, "returncode": None, "timed_out": False,
               "leftover": False, "detail": None}
    if returncode == 0:
        outcome.update(ok=True, result="success", code=CLD_EXITED, status=0, returncode=0)
        return outcome
    if not _loaded(props):
        outcome.update(result="not-started", detail=_detail(stderr))
        return outcome
    result = props.get("Result") or "unknown"
    code, status = _int(props.get("ExecMainCode")), _int(props.get("ExecMainStatus"))
    outcome.update(result=result, code=code, status=status, ok=result == "success")
    if code == CLD_EXITED:
        outcome["returncode"] = status
    elif code in (CLD_KILLED, CLD_DUMPED) and status:
        outcome["returncode"] = -status
    if result == "timeout":
        if code == CLD_EXITED:
            outcome["leftover"] = True
        else:
            outcome["timed_out"] = True
    return outcome


def run(kind, agent, argv, timeout, stdin_data=b"", extra_env=None, stdout_limit=MAX_OUTPUT,
        stderr_limit=STDERR_TAIL):
    """Run ``argv`` for ``agent`` in its transient unit of ``kind``; a dict of what happened.

    Keys of :func:`interpret` plus ``unit``, ``stdout``, ``stderr`` (bytes), ``stdout_overflow`` (more than
    ``stdout_limit`` bytes: stopped), ``stderr_truncated`` and ``elapsed``. Raises SandboxError when nothing
    could be started (no sandbox settings, a user that does not exist, not root, no systemd-run).
    """
    name = agent.get("name")
    unit = unit_name(kind, agent)
    line = command_argv(kind, agent, argv, timeout, extra_env)
    try:
        pwd.getpwnam(agent["user"])
    except KeyError:
        raise SandboxError("agent %s: its user %s does not exist; the command was not run" % (name, agent["user"]))
    if os.geteuid() != 0:
        raise SandboxError("agent %s: only root can start the transient unit %s; the command was not run"
                           % (name, unit))
    clear_leftover(unit)
    try:
        done = agentops_auth.run_bounded(line, stdin_data=stdin_data, timeout=timeout + STOP_TIMEOUT + SLACK,
                                         env=dict(RUNNER_ENV), cwd="/", stdout_limit=stdout_limit,
                                         stderr_limit=stderr_limit)
    except OSError as exc:
        raise SandboxError("agent %s: cannot run %s: %s; the command was not run"
                           % (name, SYSTEMD_RUN, agentops_auth.describe_error(exc)))
    gave_up = done["timed_out"] or done["stdout_overflow"] or done["returncode"] is None
    if gave_up:
        _stop(unit)
    props = {} if done["returncode"] == 0 and not gave_up else show(unit)
    outcome = interpret(None if gave_up else done["returncode"], props, done["stderr"])
    if done["timed_out"]:
        outcome.update(ok=False, timed_out=True)
    if done["stdout_overflow"]:
        outcome["ok"] = False
    if _loaded(props):
        _reset(unit)
    outcome.update(unit=unit, stdout=done["stdout"], stderr=done["stderr"], stdout_overflow=done["stdout_overflow"],
                   stderr_truncated=done["stderr_truncated"], elapsed=done["elapsed"])
    return outcome


def describe(outcome, timeout):
    """What happened, in words ("exited with status 3", "timed out after 5s", ...); never the command's output."""
    result = outcome.get("result")
    status = outcome.get("status")
    if outcome.get("stdout_overflow"):
        return "printed more than %d KiB on stdout (stopped)" % (MAX_OUTPUT // 1024)
    if outcome.get("timed_out"):
        return "timed out after %s (its unit %s was stopped, with every process it started)" % (
            _seconds(timeout), outcome.get("unit"))
    if result == "not-started":
        return "could not be started in the transient unit %s: %s" % (outcome.get("unit"), outcome.get("detail"))
    if outcome.get("leftover"):
        return ("exited with status %s but left processes behind that did not end on SIGTERM (killed after %ds)"
                % (status, STOP_TIMEOUT))
    if result == "success":
        return "exited with status 0"
    if result == "exit-code" and status in SETUP_STATUSES:
        return "could not be started by systemd in the agent's sandbox (status %d/%s)" % (status, SETUP_STATUSES[status])
    if result == "exit-code":
        return "exited with status %s" % status
    if result in ("signal", "core-dump"):
        return "was killed by signal %s" % status
    if result == "oom-kill":
        return "was killed for running out of memory (the agent's MemoryMax=)"
    return "ended with the unit result %s (main process code %s, status %s)" % (result, outcome.get("code"), status)
