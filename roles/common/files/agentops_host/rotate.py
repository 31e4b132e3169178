"""`agentops rotate`: token rotation driven by data, not by cron.

cron runs ``agentops rotate`` once a day (/etc/cron.d/agentops-token-rotation).
Each ``token_rotation`` entry of an agent ({"credential", "every_days", "command",
optional "timeout"}) is due when its last successful rotation is ``every_days`` or
more in the past; a credential that was never rotated counts its age from the
credential file's modification time (a file replaced by hand later than the last
rotation counts from that newer time). A day the host was down is caught up by the
next daily run.

Rotating one credential:
  1. run ``command`` as the agent's user (HOME = the agent's state directory, the
     current credential on stdin, a timeout); stdout is the new token: stripped,
     non-empty, a single line, different from the current one;
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
the agent is not restarted and a ``critical`` alert goes out. The token is never
printed, logged, stored in the state or put into an alert.

State: <state_dir>/rotation/<agent>/<credential>.json (0600, root) with the last
success, the last attempt, its result and message. A lock (flock on
<state_dir>/rotation/.lock) keeps two rotations from running at once.
"""
import datetime
import errno
import fcntl
import json
import os
import pwd
import shlex
import signal
import subprocess
import sys
import time

from agentops_host import config

DAY = 86400
# Command used to restart agents; the unit tests point it at a recording stand-in.
SYSTEMCTL = "systemctl"
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_OUTPUT = 64 * 1024
EXIT_LOCKED = 75  # EX_TEMPFAIL: another rotation holds the lock


class RotationError(Exception):
    """One credential could not be rotated; the message never contains a token."""


# ---------------------------------------------------------------------------
# configuration and state


def rotation_dir(args):
    return os.path.join(args.state_dir, "rotation")


def _settings(args):
    host = config.load_host_config(args.config_dir)
    rotation = dict(config.DEFAULT_HOST_CONFIG["rotation"])
    rotation.update(host.get("rotation") or {})
    return rotation


def _entries(agent):
    """The agent's token_rotation entries with defaults; invalid entries raise ConfigError."""
    entries = []
    for index, raw in enumerate(agent.get("token_rotation") or []):
        if not isinstance(raw, dict) or not raw.get("credential") or not raw.get("command"):
            raise config.ConfigError("agent %s: token_rotation[%d] needs 'credential' and 'command'"
                                     % (agent["name"], index))
        every = raw.get("every_days", 45)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise config.ConfigError("agent %s: token_rotation[%d].every_days must be a whole number of days >= 1, "
                                     "got %r" % (agent["name"], index, every))
        entry = dict(raw)
        entry["every_days"] = every
        entries.append(entry)
    return entries


def _state_path(args, agent_name, credential):
    return os.path.join(rotation_dir(args), agent_name, credential + ".json")


def load_state(args, agent_name, credential):
    try:
        with open(_state_path(args, agent_name, credential), "r", encoding="utf-8") as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (FileNotFoundError, ValueError):
        return {}


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs(path):
    os.makedirs(path, mode=0o700, exist_ok=True)


def save_state(args, agent_name, credential, state):
    directory = os.path.join(rotation_dir(args), agent_name)
    _makedirs(rotation_dir(args))
    _makedirs(directory)
    path = _state_path(args, agent_name, credential)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(directory)


def _cred_path(agent, credential):
    return os.path.join(agent["credentials_dir"], credential)


def _iso(timestamp):
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def _date(timestamp):
    return datetime.datetime.fromtimestamp(timestamp).date().isoformat()


def schedule_entry(args, agent, entry, now=None):
    """Where one credential stands: basis of its age, next due time, whether it is due."""
    now = time.time() if now is None else now
    credential = entry["credential"]
    state = load_state(args, agent["name"], credential)
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
        "last_attempt": state.get("last_attempt"),
        "result": state.get("result") or "never",
        "message": state.get("message") or "",
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


def _user_env(agent, credential, user_record):
    home = agent.get("state_dir") or (user_record.pw_dir if user_record else "/")
    env = {
        "PATH": SAFE_PATH,
        "LANG": "C.UTF-8",
        "HOME": home,
        "AGENTOPS_AGENT": agent["name"],
        "AGENTOPS_CREDENTIAL": credential,
    }
    if user_record:
        env["USER"] = env["LOGNAME"] = user_record.pw_name
    return env


def _command_argv(entry):
    command = entry["command"]
    argv = list(command) if isinstance(command, list) else shlex.split(command)
    if not argv or not os.path.isabs(argv[0]):
        raise RotationError("command %r is not an absolute path" % (argv[0] if argv else command))
    return argv


def run_command(agent, entry, current, timeout):
    """Run the rotation command as the agent's user; return the new token (never logged)."""
    argv = _command_argv(entry)
    user = agent.get("user")
    kwargs = {}
    record = None
    if user:
        try:
            record = pwd.getpwnam(user)
        except KeyError:
            raise RotationError("user %s of agent %s does not exist" % (user, agent["name"]))
        if os.geteuid() == 0:
            kwargs.update(user=record.pw_uid, group=record.pw_gid,
                          extra_groups=os.getgrouplist(record.pw_name, record.pw_gid))
        elif record.pw_uid != os.geteuid():
            raise RotationError("must run as root to run the rotation command as %s" % user)
    env = _user_env(agent, entry["credential"], record)
    cwd = env["HOME"] if os.path.isdir(env["HOME"]) else "/"
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd=cwd, start_new_session=True, close_fds=True, **kwargs)
    except OSError as exc:
        raise RotationError("cannot run %s: %s" % (argv[0], exc.strerror or exc))
    try:
        out, err = proc.communicate(input=(current or "").encode("utf-8"), timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise RotationError("command %s timed out after %ss" % (argv[0], timeout))
    text = out[:MAX_OUTPUT].decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        raise RotationError("command %s exited with status %s%s"
                            % (argv[0], proc.returncode, _stderr_tail(err, (text, current))))
    if not text:
        raise RotationError("command %s printed no token%s" % (argv[0], _stderr_tail(err, (current,))))
    if "\n" in text or "\r" in text or "\x00" in text:
        raise RotationError("command %s printed more than one line; expected only the new token" % argv[0])
    if text == current:
        raise RotationError("command %s printed the current token unchanged" % argv[0])
    return text


def _stderr_tail(err, secrets):
    """Last line of the command's stderr, for the alert, with any token value masked."""
    lines = [line for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        return ""
    tail = lines[-1].strip()[:300]
    for secret in secrets:
        if secret:
            tail = tail.replace(secret, "***")
            for line in secret.splitlines():
                if len(line) >= 4:
                    tail = tail.replace(line, "***")
    return ": " + tail


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


def rotate_one(args, agent, entry, settings, forced=False):
    """Rotate one credential. Returns True on success; alerts either way."""
    name, credential = agent["name"], entry["credential"]
    label = "%s/%s" % (name, credential)
    state = load_state(args, name, credential)
    state.update({"agent": name, "credential": credential, "last_attempt": time.time()})
    timeout = entry.get("timeout") or settings.get("timeout_seconds") or 120
    fail_key = "rotate-failed:%s:%s" % (name, credential)
    swapped = False
    try:
        try:
            current = config.read_credential(agent, credential)
        except FileNotFoundError:
            current = ""
        token = run_command(agent, entry, current, timeout)
        try:
            note = validate_token(args, agent, credential, token)
        except RotationError:
            raise
        except Exception as exc:  # an unexpected error of the checks: never let the token into the message
            raise RotationError("the auth check could not run: %s" % str(exc).replace(token, "***"))
        swap_credential(agent, credential, token)
        swapped = True
        state["last_success"] = time.time()
        restarted = restart_agent(agent)
    except RotationError as exc:
        message = str(exc)
        state.update({"result": "failed", "message": message})
        save_state(args, name, credential, state)
        if swapped:
            body = "%s: %s. The new token is in place (previous one in %s.prev)." % (label, message, credential)
        else:
            body = ("%s: %s. The previous token is untouched and the agent was not restarted; "
                    "the next daily run retries (or run `agentops rotate --force %s`)." % (label, message, label))
        _alert(args, agent, "critical", fail_key, "Token rotation failed: %s" % label, body)
        sys.stderr.write("agentops rotate: %s: FAILED: %s\n" % (label, message))
        return False
    message = "rotated%s; %s; %s" % (" (forced)" if forced else "", note, restarted)
    state.update({"result": "ok", "message": message})
    save_state(args, name, credential, state)
    next_date = _date(state["last_success"] + entry["every_days"] * DAY)
    body = "%s: %s. Previous token kept as %s.prev. Next rotation due %s." % (label, message, credential, next_date)
    _alert(args, agent, "info", "rotate:%s:%s" % (name, credential), "Token rotated: %s" % label, body)
    _resolve(args, agent, fail_key, "Token rotation recovered: %s" % label, body)
    print("%s: %s" % (label, message))
    return True


def _lock(args):
    _makedirs(rotation_dir(args))
    path = os.path.join(rotation_dir(args), ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None, path
        raise
    return fd, path


def _agents_with_rotation(args, errors=None):
    """[(agent, entries)] of present agents with token_rotation; a broken agent file is reported, not fatal."""
    agents = []
    for name in config.agent_names(args.config_dir):
        try:
            agent = config.load_agent(args.config_dir, name)
            if agent.get("state", "present") == "absent":
                continue
            entries = _entries(agent)
        except config.ConfigError as exc:
            if errors is None:
                raise
            errors.append(str(exc))
            continue
        if entries:
            agents.append((agent, entries))
    return agents


def cmd_list(args):
    rows = []
    for agent, entries in _agents_with_rotation(args):
        for entry in entries:
            rows.append(schedule_entry(args, agent, entry))
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
        print(json.dumps(out, indent=2))
        return 0
    if not rows:
        print("no agent has token_rotation entries")
        return 0
    header = ("AGENT", "CREDENTIAL", "EVERY", "LAST ROTATION", "RESULT", "NEXT DUE")
    table = [header]
    for row in rows:
        nxt = _date(row["next_due"]) if row["next_due"] is not None else _date(time.time())
        table.append((row["agent"], row["credential"], "%dd" % row["every_days"],
                      _iso(row["last_success"]) or "never", row["result"], nxt + (" (due)" if row["due"] else "")))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return 0


def cmd_rotate(args):
    if args.list:
        return cmd_list(args)
    if args.json:
        sys.stderr.write("agentops rotate: --json only applies to --list\n")
        return 2
    settings = _settings(args)
    fd, lock_path = _lock(args)
    if fd is None:
        sys.stderr.write("agentops rotate: another rotation is running (lock %s is held); nothing done\n" % lock_path)
        return EXIT_LOCKED
    try:
        if args.force:
            agent_name, _, credential = args.force.partition("/")
            if not agent_name or not credential:
                sys.stderr.write("agentops rotate: --force expects AGENT/CREDENTIAL, got %r\n" % args.force)
                return 2
            agent = config.load_agent(args.config_dir, agent_name)
            entries = [e for e in _entries(agent) if e["credential"] == credential]
            if not entries:
                sys.stderr.write("agentops rotate: agent %s has no token_rotation entry for %s\n"
                                 % (agent_name, credential))
                return 2
            return 0 if rotate_one(args, agent, entries[0], settings, forced=True) else 1
        errors = []
        agents = _agents_with_rotation(args, errors)
        for error in errors:
            sys.stderr.write("agentops rotate: %s\n" % error)
        ok = not errors
        due = 0
        for agent, entries in agents:
            for entry in entries:
                if schedule_entry(args, agent, entry)["due"]:
                    due += 1
                    ok = rotate_one(args, agent, entry, settings) and ok
        if not due:
            print("nothing due")
        return 0 if ok else 1
    finally:
        os.close(fd)


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
