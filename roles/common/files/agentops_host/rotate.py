"""`agentops rotate`: token rotation driven by data, not by cron.

cron runs ``agentops rotate`` once a day (/etc/cron.d/agentops-token-rotation).
Each ``token_rotation`` entry of an agent ({"credential", "every_days", "command",
optional "timeout"}) is due when its last successful rotation is ``every_days`` or
more in the past; a credential that was never rotated counts its age from the
credential file's modification time (a file replaced by hand later than the last
rotation counts from that newer time). A day the host was down is caught up by the
next daily run.

Rotating one credential:
  1. run ``command`` for the agent (``agentops_host.sandbox``): as its user, in the transient unit
     ``agentops-heartbeat-rotate-<agent>.service`` with the agent's own sandbox and limits (the directives
     of its unit), a fixed minimal environment (PATH, LANG, HOME = the agent's state directory,
     USER/LOGNAME, AGENTOPS_AGENT, AGENTOPS_CREDENTIAL; never root's), in the agent's state directory,
     the current credential on stdin. One deadline (``timeout``) covers the run AND the reading of its
     output: at the deadline the unit is stopped with every process it started (a child that escaped
     with ``setsid`` included) and the pipes are no longer read, so nothing can keep the run (or any other
     agent's rotation) waiting. stdout and stderr come back through pipes, never through the journal.
     stdout beyond 64 KiB is a failure; of stderr only the end is kept, and the last line shown in a
     failure has every token (current and new) masked BEFORE it is cut to length. stdout is the new token:
     stripped, non-empty, a single line, different from the current one;
  2. validate it with the agent's auth checks for that credential
     (``check_auth.check_agent(..., overrides=..., only_credential=...)``): every
     check must say AUTH_OK. A credential without a check is accepted, and the
     confirmation says it was not validated;
  3. swap it in atomically: a temporary file in the credential directory (0600,
     fsync), the previous file kept as ``<cred>.prev`` (hard link), ``os.replace``,
     fsync of the directory. At any instant the credential file holds either the
     old or the new token;
  4. restart the agent's unit (``LoadCredential=`` is read at start) when the unit
     is active or enabled; a stopped and disabled agent is left stopped;
  5. an ``info`` alert confirms it and resolves an earlier rotation failure.

On any failure before the swap the credential file stays byte-for-byte as it was,
the agent is not restarted and a ``critical`` alert goes out. Any error while rotating
one credential (not only the expected ones) is recorded as a failure of that credential
and alerted; the other credentials and agents still rotate. The token is never printed,
logged, stored in the state or put into an alert.

State: <state_dir>/rotation/<agent>/<credential>.json (0600, root) with the last
success, the last attempt, its result and message. A lock per agent (flock on
<state_dir>/rotation/<agent>/.lock) keeps two rotations of the same agent from running
at once; an agent whose lock is held is skipped (exit 75 when nothing else failed) and
the other agents rotate. A malformed agent file or state file is reported for its agent
(``--list`` shows it as broken) and never stops the others.
"""
import datetime
import errno
import fcntl
import json
import os
import pwd
import shlex
import subprocess
import sys
import time

from agentops_host import config
from agentops_host import sandbox
from agentops_host import state as statefiles
from agentops_lib import agentops_auth
from agentops_lib import agentops_contract

DAY = 86400
# Command used to restart agents; the unit tests point it at a recording stand-in.
SYSTEMCTL = "systemctl"
SAFE_PATH = agentops_auth.SAFE_PATH
MAX_OUTPUT = 64 * 1024
STDERR_TAIL = 8 * 1024
EXIT_LOCKED = 75  # EX_TEMPFAIL: another rotation holds the lock


_CREDENTIAL_NAME = agentops_contract.CRED_RE  # the contract's rule for credential names


class RotationError(Exception):
    """One credential could not be rotated; the message never contains a token."""


class AgentLocked(Exception):
    """Another rotation of the same agent holds its lock."""


# ---------------------------------------------------------------------------
# configuration and state


def rotation_dir(args):
    return os.path.join(args.state_dir, "rotation")


def _settings(args):
    return config.load_rotation_config(args.config_dir)


def _entries(agent):
    """The agent's token_rotation entries with defaults; invalid entries raise ConfigError naming the agent."""
    raw_entries = agent.get("token_rotation") or []
    if not isinstance(raw_entries, list):
        raise config.ConfigError("agent %s: token_rotation must be a list" % agent["name"])
    entries = []
    for index, raw in enumerate(raw_entries):
        where = "agent %s: token_rotation[%d]" % (agent["name"], index)
        if not isinstance(raw, dict) or not raw.get("credential") or not raw.get("command"):
            raise config.ConfigError("%s needs 'credential' and 'command'" % where)
        credential = raw["credential"]
        if not isinstance(credential, str) or not _CREDENTIAL_NAME.match(credential):
            raise config.ConfigError("%s.credential must be a credential name (letters, digits, '_', '.', '-'), "
                                     "got %r" % (where, credential))
        command = raw["command"]
        if isinstance(command, list):
            if not all(isinstance(part, str) for part in command):
                raise config.ConfigError("%s.command as a list must hold strings only" % where)
        elif not isinstance(command, str):
            raise config.ConfigError("%s.command must be a string or a list of strings, got %s"
                                     % (where, type(command).__name__))
        every = raw.get("every_days", 45)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise config.ConfigError("%s.every_days must be a whole number of days >= 1, got %r" % (where, every))
        timeout = raw.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not 0 < timeout <= 86400):
            raise config.ConfigError("%s.timeout must be a number of seconds (0 < timeout <= 86400), got %r"
                                     % (where, timeout))
        entry = dict(raw)
        entry["every_days"] = every
        entries.append(entry)
    return entries


def _state_path(args, agent_name, credential):
    return os.path.join(rotation_dir(args), agent_name, credential + ".json")


def load_state(args, agent_name, credential, strict=False):
    """The state of one credential ({} when none). A malformed file gives {}, or StateError with ``strict``."""
    try:
        return statefiles.load_object(_state_path(args, agent_name, credential))
    except statefiles.StateError:
        if strict:
            raise
        return {}


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs(path):
    os.makedirs(path, mode=0o700, exist_ok=True)


def save_state(args, agent_name, credential, data):
    _makedirs(rotation_dir(args))
    _makedirs(os.path.join(rotation_dir(args), agent_name))
    statefiles.write_json(_state_path(args, agent_name, credential), data)


def _cred_path(agent, credential):
    return os.path.join(agent["credentials_dir"], credential)


def _iso(timestamp):
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def _date(timestamp):
    return datetime.datetime.fromtimestamp(timestamp).date().isoformat()


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _text(value):
    return value if isinstance(value, str) else ""


def schedule_entry(args, agent, entry, now=None):
    """Where one credential stands: basis of its age, next due time, whether it is due."""
    now = time.time() if now is None else now
    credential = entry["credential"]
    broken = None
    try:
        state = load_state(args, agent["name"], credential, strict=True)
    except statefiles.StateError as exc:
        state, broken = {}, str(exc)
    try:
        mtime = os.stat(_cred_path(agent, credential)).st_mtime
    except FileNotFoundError:
        mtime = None
    last_success = state.get("last_success")
    if not isinstance(last_success, (int, float)) or isinstance(last_success, bool):
        last_success = None
    candidates = [t for t in (last_success, mtime) if t is not None]
    basis = max(candidates) if candidates else None
    next_due = None if basis is None else basis + entry["every_days"] * DAY
    return {
        "agent": agent["name"],
        "credential": credential,
        "every_days": entry["every_days"],
        "last_success": last_success,
        "last_attempt": _number(state.get("last_attempt")),
        "result": "broken" if broken else _text(state.get("result")) or "never",
        "message": broken or _text(state.get("message")),
        "state_error": broken,
        "file_present": mtime is not None,
        "basis": basis,
        "next_due": next_due,
        "due": next_due is None or now >= next_due,
    }


# ---------------------------------------------------------------------------
# interface used by the heartbeat and `agentops status`


def overdue(args, agent):
    """[(key, title, body)] for credentials not rotated successfully for every_days + grace_days."""
    grace = _settings(args).get("grace_days", 7)
    found = []
    now = time.time()
    for entry in _entries(agent):
        item = schedule_entry(args, agent, entry, now)
        key = "rotation-overdue:%s:%s" % (agent["name"], entry["credential"])
        title = "Token rotation overdue: %s/%s" % (agent["name"], entry["credential"])
        if item["basis"] is None:
            found.append((key, title, "The credential file %s is missing and was never rotated."
                          % _cred_path(agent, entry["credential"])))
            continue
        limit = item["basis"] + (entry["every_days"] + grace) * DAY
        if now >= limit:
            age = int((now - item["basis"]) // DAY)
            body = ("%s/%s was last rotated or replaced %d days ago (%s); it should rotate every %d days "
                    "and the %d-day grace period is over. Last attempt: %s %s. Run `agentops rotate --force %s/%s`."
                    % (agent["name"], entry["credential"], age, _iso(item["basis"]), entry["every_days"], grace,
                       item["result"], item["message"], agent["name"], entry["credential"]))
            found.append((key, title, body))
    return found


def next_due(args, agent):
    """Earliest next due date (ISO date, local time) of the agent's rotated credentials, or None."""
    dates = []
    for entry in _entries(agent):
        item = schedule_entry(args, agent, entry)
        dates.append(_date(item["next_due"] if item["next_due"] is not None else time.time()))
    return min(dates) if dates else None


# ---------------------------------------------------------------------------
# the rotation itself


def _command_argv(entry):
    command = entry["command"]
    try:
        argv = list(command) if isinstance(command, list) else shlex.split(command)
    except ValueError as exc:
        raise RotationError("command cannot be parsed: %s" % exc)
    if not argv or not os.path.isabs(argv[0]):
        raise RotationError("command %r is not an absolute path" % (argv[0] if argv else command))
    return argv


def run_command(agent, entry, current, timeout):
    """Run the rotation command for the agent, in its sandbox; return the new token (never logged).

    Through agentops_host.sandbox: as the agent's user, in the transient unit
    agentops-heartbeat-rotate-<agent>.service with the agent's own sandbox and limits; the current token on
    stdin and the new one on stdout, both through pipes, never through the journal.
    """
    argv = _command_argv(entry)
    user = agent.get("user")
    if user:
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise RotationError("user %s of agent %s does not exist" % (user, agent["name"]))
    try:
        run = sandbox.run("rotate", agent, argv, timeout, stdin_data=(current or "").encode("utf-8"),
                          extra_env={"AGENTOPS_CREDENTIAL": entry["credential"]}, stdout_limit=MAX_OUTPUT,
                          stderr_limit=STDERR_TAIL)
    except sandbox.SandboxError as exc:
        raise RotationError("cannot run %s: %s" % (argv[0], agentops_auth.mask_text(str(exc), (current,))))
    if run["stdout_overflow"]:
        raise RotationError("command %s printed more than %d KiB on stdout; expected only the new token"
                            % (argv[0], MAX_OUTPUT // 1024))
    text = run["stdout"].decode("utf-8", "replace").strip()
    if run["timed_out"]:
        raise RotationError("command %s timed out after %ss%s"
                            % (argv[0], _seconds(timeout), _stderr_tail(run, (text, current))))
    if not run["ok"]:
        if run["result"] == "exit-code" and run["status"] not in sandbox.SETUP_STATUSES:
            how = "exited with status %s" % run["status"]
        elif run["result"] in ("signal", "core-dump"):
            how = "was killed by signal %s" % run["status"]
        else:
            how = sandbox.describe(run, timeout)
        raise RotationError("command %s %s%s" % (argv[0], how, _stderr_tail(run, (text, current))))
    if not text:
        raise RotationError("command %s printed no token%s" % (argv[0], _stderr_tail(run, (current,))))
    if "\n" in text or "\r" in text or "\x00" in text:
        raise RotationError("command %s printed more than one line; expected only the new token" % argv[0])
    if text == current:
        raise RotationError("command %s printed the current token unchanged" % argv[0])
    return text


def _seconds(value):
    return ("%g" % value) if isinstance(value, float) else str(value)


def _stderr_tail(run, secrets):
    """Last line of the command's stderr, for the alert: every token masked first, then cut to 300 characters."""
    tail = agentops_auth.last_line(run["stderr"], [s for s in secrets if s], truncated=run["stderr_truncated"],
                                   limit=300)
    return (": " + tail) if tail else ""


def _status_of(result):
    if isinstance(result, dict):
        return result.get("status"), result.get("name") or result.get("check"), result.get("message") or result.get(
            "detail") or ""
    return (getattr(result, "status", None), getattr(result, "name", None),
            getattr(result, "message", None) or getattr(result, "detail", None) or "")


def validate_token(args, agent, credential, token):
    """Run the agent's auth checks for this credential with the new token. Returns a note for the confirmation."""
    from agentops_host import check_auth  # the auth checks of the agent (same code as `agentops check-auth`)
    auth_ok = getattr(check_auth, "AUTH_OK", None)
    if auth_ok is None:
        from agentops_lib import agentops_auth
        auth_ok = agentops_auth.AUTH_OK
    results = check_auth.check_agent(args, agent, overrides={credential: token}, only_credential=credential)
    results = list(results or [])
    if not results:
        return "no auth check uses %s, so the new token was not validated before the swap" % credential
    failed = []
    for result in results:
        status, name, message = _status_of(result)
        if status != auth_ok:
            text = "%s: %s" % (name or "check", status)
            if message:
                text += " (%s)" % str(message).replace(token, "***")
            failed.append(text)
    if failed:
        raise RotationError("the new token failed the auth check: %s" % "; ".join(failed))
    names = ", ".join(str(_status_of(r)[1] or "check") for r in results)
    return "the new token passed the auth check (%s)" % names


def swap_credential(agent, credential, token):
    """Atomically replace the credential file, keeping the previous one as <cred>.prev."""
    directory = agent["credentials_dir"]
    path = os.path.join(directory, credential)
    tmp = os.path.join(directory, ".%s.rotate.tmp" % credential)
    prev = path + ".prev"
    prev_tmp = os.path.join(directory, ".%s.prev.tmp" % credential)
    if not os.path.isdir(directory):
        raise RotationError("credential directory %s does not exist" % directory)
    for leftover in (tmp, prev_tmp):
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            pass
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            if os.geteuid() == 0:
                os.fchown(fd, 0, 0)
            data = token.encode("utf-8")
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        if os.path.exists(path):
            # The old inode stays as <cred>.prev: same bytes, same mode (0600), no copy to go wrong.
            os.link(path, prev_tmp)
            os.replace(prev_tmp, prev)
            _fsync_dir(directory)
        os.replace(tmp, path)
        _fsync_dir(directory)
    except OSError as exc:
        for leftover in (tmp, prev_tmp):
            try:
                os.unlink(leftover)
            except OSError:
                pass
        raise RotationError("swapping in the new token failed: %s" % (exc.strerror or exc))


def _systemctl(*argv):
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}
    try:
        proc = subprocess.run([SYSTEMCTL] + list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return proc.returncode, (proc.stdout + proc.stderr).decode("utf-8", "replace").strip()


def restart_agent(agent):
    """Restart the unit when it is active or enabled. Returns a sentence for the confirmation."""
    unit = agent.get("unit") or "agentops-%s.service" % agent["name"]
    active = _systemctl("is-active", "--quiet", unit)[0] == 0
    enabled = _systemctl("is-enabled", "--quiet", unit)[0] == 0
    if not (active or enabled):
        return "%s is neither active nor enabled, so it was not started; it reads the new token at its next start" % unit
    rc, output = _systemctl("restart", unit)
    if rc != 0:
        raise RotationError("the new token is in place but restarting %s failed: %s" % (unit, output[-300:]))
    return "%s restarted" % unit


def _alert(args, agent, severity, key, title, body):
    try:
        from agentops_host import alert
        alert.emit(args, severity, key=key, title=title, body=body, agent=agent["name"], unit=agent.get("unit"))
    except Exception as exc:  # the rotation result is still recorded and printed
        sys.stderr.write("agentops rotate: could not send the %s alert %s: %s\n" % (severity, key, exc))


def _resolve(args, agent, key, title, body):
    try:
        from agentops_host import alert
        alert.resolve(args, key, title=title, body=body, agent=agent["name"], unit=agent.get("unit"))
    except Exception as exc:
        sys.stderr.write("agentops rotate: could not resolve alert %s: %s\n" % (key, exc))


def _record_failure(args, agent, entry, state, message, swapped):
    name, credential = agent["name"], entry["credential"]
    label = "%s/%s" % (name, credential)
    state.update({"result": "failed", "message": message})
    try:
        save_state(args, name, credential, state)
    except Exception as exc:  # pylint: disable=broad-except  # the alert below still goes out
        message += " (the state could not be saved: %s)" % agentops_auth.describe_error(exc)
    if swapped:
        body = "%s: %s. The new token is in place (previous one in %s.prev)." % (label, message, credential)
    else:
        body = ("%s: %s. The previous token is untouched and the agent was not restarted; "
                "the next daily run retries (or run `agentops rotate --force %s`)." % (label, message, label))
    _alert(args, agent, "critical", "rotate-failed:%s:%s" % (name, credential), "Token rotation failed: %s" % label,
           body)
    sys.stderr.write("agentops rotate: %s: FAILED: %s\n" % (label, message))


def rotate_one(args, agent, entry, settings, forced=False):
    """Rotate one credential. Returns True on success; alerts either way; never raises for one credential."""
    name, credential = agent["name"], entry["credential"]
    label = "%s/%s" % (name, credential)
    state = load_state(args, name, credential)
    state.update({"agent": name, "credential": credential, "last_attempt": time.time()})
    timeout = entry.get("timeout") or settings.get("timeout_seconds") or 120
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        timeout = 120
    fail_key = "rotate-failed:%s:%s" % (name, credential)
    swapped = False
    secrets = []
    try:
        try:
            current = config.read_credential(agent, credential)
        except FileNotFoundError:
            current = ""
        except config.ConfigError as exc:
            raise RotationError("the current credential cannot be read: %s" % exc)
        secrets.append(current)
        token = run_command(agent, entry, current, timeout)
        secrets.append(token)
        try:
            note = validate_token(args, agent, credential, token)
        except RotationError:
            raise
        except Exception as exc:  # an unexpected error of the checks: never let the token into the message
            raise RotationError("the auth check could not run: %s" % agentops_auth.describe_error(exc, secrets))
        swap_credential(agent, credential, token)
        swapped = True
        state["last_success"] = time.time()
        restarted = restart_agent(agent)
    except RotationError as exc:
        _record_failure(args, agent, entry, state, agentops_auth.mask_text(str(exc), secrets), swapped)
        return False
    except Exception as exc:  # pylint: disable=broad-except  # any error is this credential's failure only
        message = "unexpected error: %s" % agentops_auth.describe_error(exc, secrets)
        _record_failure(args, agent, entry, state, message, swapped)
        return False
    message = "rotated%s; %s; %s" % (" (forced)" if forced else "", note, restarted)
    state.update({"result": "ok", "message": message})
    try:
        save_state(args, name, credential, state)
    except Exception as exc:  # pylint: disable=broad-except
        sys.stderr.write("agentops rotate: %s: rotated, but the state could not be saved: %s\n"
                         % (label, agentops_auth.describe_error(exc)))
    next_date = _date(state["last_success"] + entry["every_days"] * DAY)
    body = "%s: %s. Previous token kept as %s.prev. Next rotation due %s." % (label, message, credential, next_date)
    _alert(args, agent, "info", "rotate:%s:%s" % (name, credential), "Token rotated: %s" % label, body)
    _resolve(args, agent, fail_key, "Token rotation recovered: %s" % label, body)
    print("%s: %s" % (label, message))
    return True


def config_key(agent_name):
    """Alert key of an agent whose settings the daily run cannot use."""
    return "rotate-config:%s" % agent_name


def _stub(name):
    return {"name": name, "unit": "agentops-%s.service" % name}


def lock_path(args, agent_name):
    return os.path.join(rotation_dir(args), agent_name, ".lock")


def _lock(args, agent_name):
    """Take the agent's rotation lock without waiting: its fd, or raise AgentLocked."""
    path = lock_path(args, agent_name)
    _makedirs(rotation_dir(args))
    _makedirs(os.path.dirname(path))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise AgentLocked("another rotation is running for agent %s (lock %s is held)" % (agent_name, path))
        raise
    return fd


def _agents_with_rotation(args, errors=None):
    """[(agent, entries)] of present agents with token_rotation; a broken agent file is reported, not fatal.

    ``errors`` collects (agent name, message) of broken agents; without it the first one raises.
    """
    agents = []
    for name, agent, error in config.iter_agents(args.config_dir):
        try:
            if error:
                raise config.ConfigError(error)
            if agent.get("state", "present") == "absent":
                continue
            entries = _entries(agent)
        except config.ConfigError as exc:
            if errors is None:
                raise
            text = str(exc)
            path = config.agent_path(args.config_dir, name)
            errors.append((name, text if path in text else "%s: %s" % (path, text)))
            continue
        if entries:
            agents.append((agent, entries))
    return agents


def cmd_list(args):
    rows = []
    errors = []
    for agent, entries in _agents_with_rotation(args, errors):
        for entry in entries:
            try:
                rows.append(schedule_entry(args, agent, entry))
            except Exception as exc:  # pylint: disable=broad-except
                errors.append((agent["name"], "%s/%s: %s" % (agent["name"], entry["credential"],
                                                             agentops_auth.describe_error(exc))))
    for name, error in errors:
        sys.stderr.write("agentops rotate: agent %s is broken: %s\n" % (name, error))
    for row in rows:
        if row.get("state_error"):
            sys.stderr.write("agentops rotate: %s/%s: %s\n" % (row["agent"], row["credential"], row["state_error"]))
    if args.json:
        out = []
        for row in rows:
            out.append({
                "agent": row["agent"], "credential": row["credential"], "every_days": row["every_days"],
                "last_rotation": _iso(row["last_success"]), "last_attempt": _iso(row["last_attempt"]),
                "result": row["result"], "message": row["message"], "age_basis": _iso(row["basis"]),
                "next_due": _date(row["next_due"]) if row["next_due"] is not None else _date(time.time()),
                "due": row["due"],
            })
        for name, error in errors:
            out.append({"agent": name, "credential": None, "every_days": None, "last_rotation": None,
                        "last_attempt": None, "result": "broken", "message": error, "age_basis": None,
                        "next_due": None, "due": None})
        print(json.dumps(out, indent=2))
        return 0
    if not rows and not errors:
        print("no agent has token_rotation entries")
        return 0
    header = ("AGENT", "CREDENTIAL", "EVERY", "LAST ROTATION", "RESULT", "NEXT DUE")
    table = [header]
    for row in rows:
        nxt = _date(row["next_due"]) if row["next_due"] is not None else _date(time.time())
        table.append((row["agent"], row["credential"], "%dd" % row["every_days"],
                      _iso(row["last_success"]) or "never", row["result"], nxt + (" (due)" if row["due"] else "")))
    for name, _error in errors:
        table.append((name, "-", "-", "-", "broken", "-"))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    for name, error in errors:
        print("broken: %s: %s" % (name, error))
    for row in rows:
        if row.get("state_error"):
            print("broken: %s/%s: %s" % (row["agent"], row["credential"], row["state_error"]))
    return 0


def _rotate_agent(args, agent, entries, settings, forced=False):
    """Rotate the due (or all given, with ``forced``) entries of one agent under its lock.

    Returns (ok, locked). Raises nothing for one credential's failure.
    """
    try:
        fd = _lock(args, agent["name"])
    except AgentLocked as exc:
        sys.stderr.write("agentops rotate: %s; agent %s skipped\n" % (exc, agent["name"]))
        return True, True, 0
    except Exception as exc:  # pylint: disable=broad-except  # e.g. its rotation directory is not a directory
        message = "cannot take the rotation lock %s: %s" % (lock_path(args, agent["name"]),
                                                            agentops_auth.describe_error(exc))
        due = 0
        for entry in entries:
            try:
                if not (forced or schedule_entry(args, agent, entry)["due"]):
                    continue
            except Exception:  # pylint: disable=broad-except  # cannot tell: count it as due
                pass
            due += 1
            state = {"agent": agent["name"], "credential": entry["credential"], "last_attempt": time.time()}
            _record_failure(args, agent, entry, state, message, False)
        return not due, False, due
    ok, due = True, 0
    try:
        for entry in entries:
            try:
                item = schedule_entry(args, agent, entry)
                if item.get("state_error"):
                    sys.stderr.write("agentops rotate: %s/%s: %s (it is replaced by this run's state)\n"
                                     % (agent["name"], entry["credential"], item["state_error"]))
                if not (forced or item["due"]):
                    continue
            except Exception as exc:  # pylint: disable=broad-except
                sys.stderr.write("agentops rotate: %s/%s: cannot tell whether it is due: %s\n"
                                 % (agent["name"], entry["credential"], agentops_auth.describe_error(exc)))
                ok = False
                continue
            due += 1
            ok = rotate_one(args, agent, entry, settings, forced=forced) and ok
    finally:
        os.close(fd)
    return ok, False, due


def cmd_rotate(args):
    if args.list:
        return cmd_list(args)
    if args.json:
        sys.stderr.write("agentops rotate: --json only applies to --list\n")
        return 2
    try:
        settings = _settings(args)
    except config.ConfigError as exc:  # rotation.json is broken: say so and go on with the defaults
        sys.stderr.write("agentops rotate: %s; using the default rotation settings\n" % exc)
        settings = dict(config.DEFAULT_ROTATION_CONFIG)
    if args.force:
        agent_name, _, credential = args.force.partition("/")
        if not agent_name or not credential:
            sys.stderr.write("agentops rotate: --force expects AGENT/CREDENTIAL, got %r\n" % args.force)
            return 2
        try:
            agent = config.load_agent(args.config_dir, agent_name)
            entries = [e for e in _entries(agent) if e["credential"] == credential]
        except config.ConfigError as exc:
            sys.stderr.write("agentops rotate: %s\n" % exc)
            return 1
        if not entries:
            sys.stderr.write("agentops rotate: agent %s has no token_rotation entry for %s\n"
                             % (agent_name, credential))
            return 2
        result = _rotate_agent(args, agent, entries[:1], settings, forced=True)
        if result[1]:
            return EXIT_LOCKED
        return 0 if result[0] else 1
    errors = []
    agents = _agents_with_rotation(args, errors)
    for name, error in errors:
        sys.stderr.write("agentops rotate: agent %s is broken, not rotated: %s\n" % (name, error))
        _alert(args, _stub(name), "critical", config_key(name), "Token rotation impossible: %s" % name,
               "The settings of agent %s cannot be used, so none of its credentials is rotated: %s. "
               "Converge the host again (ansible-playbook ... site.yml) to rewrite the file." % (name, error))
    broken = set(name for name, _error in errors)
    for name in config.agent_names(args.config_dir):
        if name not in broken:
            _resolve(args, _stub(name), config_key(name), "Token rotation settings readable again: %s" % name, "")
    ok, locked, due = not errors, False, 0
    for agent, entries in agents:
        result = _rotate_agent(args, agent, entries, settings)
        if result[1]:
            locked = True
            continue
        ok = result[0] and ok
        due += result[2]
    if not due and not locked:
        print("nothing due")
    if not ok:
        return 1
    return EXIT_LOCKED if locked else 0


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "rotate",
        help="rotate due credentials (token_rotation), list the schedule, or force one",
        description="Rotate every credential whose last rotation is every_days or more in the past "
                    "(run daily by cron). The new token is validated before it replaces the old one.",
    )
    parser.add_argument("--list", action="store_true", help="print the rotation schedule and exit")
    parser.add_argument("--json", action="store_true", help="with --list: JSON output")
    parser.add_argument("--force", metavar="AGENT/CREDENTIAL", help="rotate this credential now, due or not")
    parser.set_defaults(func=cmd_rotate)
    return parser
