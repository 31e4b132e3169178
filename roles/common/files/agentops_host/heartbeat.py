"""``agentops heartbeat``: progress-based health checks of every agent, alerting through alert.py.

Run by ``agentops-heartbeat.timer`` every tick (``--tick``, default 1min). On every run, for
every agent in ``agents.d``:

* liveness (every tick): the unit failed or is stopped while enabled -> ``<agent>/down``;
  ``NRestarts`` rose since the last run -> ``<agent>/crashloop`` (``Restart=`` hides such a
  crash loop from ``OnFailure=``), resolved once the unit ran without a restart for a while;
* progress (every tick for ``journal`` and ``file``, every ``interval`` for ``command``):
  no progress for ``max_silence`` while the unit is active -> ``<agent>/silent``; outside
  ``active_hours`` silence is not alerted. Journal progress is the agent's newest journal line
  (``agentops_host.journal``: each agent's own lines, matched on the trusted ``_SYSTEMD_UNIT``, read
  with bounds per agent, so one agent's volume never hides another's progress). A read that fails or
  times out leaves the progress unknown: never ``silent``, never a recovery restart; unknown for longer
  than ``max_silence`` -> ``<agent>/progress-unknown`` (warning), resolved by the next read that works;
  the poll command (``command``) runs as the agent's user in the
  agent's own sandbox and limits, in the transient unit ``agentops-heartbeat-poll-<agent>.service``
  (``agentops_host.sandbox``), so neither it nor what it leaves behind can outlive its deadline or hold the run;
* scheduled agents (``schedule``, ``agentops_host.schedule``): a run in progress (``activating``) is checked
  for progress, the agent is not down between runs (after a failed run ``<agent>/down`` stays open until a
  run succeeds), and a missed run (timer stopped or disabled, or not fired within ``schedule_grace`` of the
  elapse it announced) -> ``<agent>/missed``, resolved by the next run;
* the progress ``file`` and ``WORKSTATE.md`` live where the agent writes: only their ``lstat`` is read,
  through directory fds that never follow a symlink in the agent's directory
  (``agentops_lib.agentops_safefile``); a symlink, FIFO, directory, ... there is logged (once per change)
  and counts as no progress signal, never followed;
* every ``interval`` (recorded per agent in ``<state_dir>/.heartbeat/<agent>.json``):
  WORKSTATE.md older than ``workstate_max_age`` -> ``<agent>/workstate``; auth checks
  (``agentops_host.check_auth``, when installed) -> ``auth:<agent>:<check>`` (the keys of
  ``agentops check-auth``); overdue token rotations (``agentops_host.rotate.overdue``, when installed);
* once per run: the filesystems of the journal and of the state directory above the
  disk threshold -> ``host/disk:<path>``;
* once per run, from ``<config_dir>/heartbeat.json`` (the heartbeat role): the dead man's switch
  (``agentops_host.deadman``: the host's targets get the run's outcome, an agent's targets its
  health) and the Prometheus textfile ``agentops.prom`` (``agentops_host.metrics``). Neither can
  fail or hold up the run: pings share one 10 s budget, a missing metrics directory is skipped;
  both are recorded in ``<state_dir>/.heartbeat/run.json`` for ``agentops status``.

Cost: one ``systemctl show`` for all units and one ``journalctl`` for the journal progress of the quiet
agents since the previous run; an agent that is new, was not read for an hour or logged
``journal.BUSY_LINES`` lines or more between two runs is read on its own, newest first and bounded
(``agentops_host.journal.read``).

Every condition that clears sends exactly one ``resolved`` (see alert.resolve).
"""
import datetime
import os
import subprocess
import time

from agentops_host import alert
from agentops_host import check_auth as checkauth
from agentops_host import config as hostconfig
from agentops_host import deadman
from agentops_host import journal as journalreader
from agentops_host import metrics
from agentops_host import recovery
from agentops_host import rotate
from agentops_host import sandbox
from agentops_host import schedule
from agentops_host import state
from agentops_host import systemd
from agentops_lib import agentops_safefile as safefile

try:
    from agentops_lib.agentops_timespan import parse_timespan
except ImportError:  # pragma: no cover - the library is always installed next to agentops_host
    parse_timespan = None

DEFAULT_TICK = 60.0
# The defaults of the inventory contract (plugins/filter/agents.py HEARTBEAT_DEFAULTS).
DEFAULT_INTERVAL = 5 * 60.0
DEFAULT_MAX_SILENCE = 30 * 60.0
# agentops_heartbeat_disk_threshold_percent's default; the heartbeat unit passes --disk-threshold.
DEFAULT_DISK_THRESHOLD = 90.0
COMMAND_TIMEOUT_MAX = 60.0
RUN_FILE = "run.json"
SYSTEMCTL_TIMEOUT = 60.0
# ActiveState values that count as running.
RUNNING = ("active", "reloading")


def seconds(value, default=None):
    if value in (None, ""):
        return default
    return parse_timespan(value)


def heartbeat_dir(args):
    return os.path.join(args.state_dir, ".heartbeat")


def state_path(args, name):
    return os.path.join(heartbeat_dir(args), name + ".json")


def load_state(args, name):
    data = state.read_json(state_path(args, name), {})
    return data if isinstance(data, dict) else {}


def parse_active_hours(value):
    """``"HH:MM-HH:MM"`` -> (start_minute, end_minute); raises ValueError when malformed."""
    text = str(value).strip()
    try:
        start, end = text.split("-")
        result = []
        for part in (start, end):
            hours, minutes = part.strip().split(":")
            if len(hours) != 2 or len(minutes) != 2:
                raise ValueError
            hours, minutes = int(hours), int(minutes)
            if not (0 <= hours <= 24 and 0 <= minutes < 60) or (hours == 24 and minutes):
                raise ValueError
            result.append(hours * 60 + minutes)
    except ValueError:
        raise ValueError("active_hours must look like 08:00-20:00, got %r" % (value,)) from None
    return tuple(result)


def in_active_hours(value, now=None):
    """True when ``now`` (local time) is inside ``value``; always True without active hours."""
    if not value:
        return True
    start, end = parse_active_hours(value)
    local = datetime.datetime.fromtimestamp(now if now is not None else time.time())
    minute = local.hour * 60 + local.minute
    if start == end:
        return True
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


def agent_dir(agent):
    return agent.get("state_dir") or "/var/lib/agentops/%s" % agent["name"]


def agent_path(agent, relative):
    if os.path.isabs(relative):
        return relative
    return os.path.join(agent_dir(agent), relative)


def entry_mtime(agent, relative):
    """(mtime, problem) of a file the agent writes (``relative`` to its state directory, or absolute).

    Only ``lstat`` is used, through directory fds that follow no symlink in a directory the agent can write
    (subdirectories of the state directory included). mtime is None when the file is missing or unsafe;
    problem names the path and what was found (a symlink, a FIFO, a directory, ...) or is None.
    """
    base = None if os.path.isabs(relative) else agent_dir(agent)
    try:
        return safefile.regular_mtime(relative, base), None
    except safefile.UnsafeEntry as exc:
        return None, exc.message
    except (OSError, ValueError) as exc:
        return None, "%s: %s" % (agent_path(agent, relative), getattr(exc, "strerror", None) or exc)


UNSAFE_MEANS = {"progress_file": "counted as no progress signal", "workstate": "counted as no checkpoint"}


def _note_unsafe(agent, hbstate, what, problem):
    """Log a hostile progress/WORKSTATE.md entry once per change (the state remembers the last one)."""
    field = "unsafe_" + what
    if problem and (hbstate is None or hbstate.get(field) != problem):
        alert.log("heartbeat %s: %s; %s" % (agent["name"], problem, UNSAFE_MEANS[what]))
    if hbstate is not None:
        if problem:
            hbstate[field] = problem
        else:
            hbstate.pop(field, None)


def run_poll_command(agent, command, timeout):
    """Run the agent's poll command for it; True when it exits 0.

    Through agentops_host.sandbox: as the agent's user, in the transient unit
    agentops-heartbeat-poll-<agent>.service with the agent's own sandbox and limits, its state directory
    as working directory and HOME, a fixed environment, bounded output, and one deadline that also ends
    whatever it started (a child that escaped with setsid included) before the heartbeat goes on.
    """
    import shlex
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        alert.log("heartbeat %s: poll command does not parse: %s" % (agent["name"], exc))
        return False
    try:
        result = sandbox.run("poll", agent, argv, timeout)
    except sandbox.SandboxError as exc:
        alert.log("heartbeat %s: poll command not run: %s" % (agent["name"], exc))
        return False
    if result["stdout_overflow"]:
        alert.log("heartbeat %s: poll command printed more than 64 KiB: stopped" % agent["name"])
        return False
    if result["timed_out"]:
        alert.log("heartbeat %s: poll command timed out after %ss (its unit %s was stopped)"
                  % (agent["name"], timeout, result["unit"]))
        return False
    if result["result"] == "exit-code" and result["status"] not in sandbox.SETUP_STATUSES:
        alert.log("heartbeat %s: poll command exited %s" % (agent["name"], result["status"]))
    elif not result["ok"]:
        alert.log("heartbeat %s: poll command %s" % (agent["name"], sandbox.describe(result, timeout)))
    return result["ok"]


def last_progress(agent, props, hbstate, now=None, run_command=False, journal=None):
    """Epoch seconds of the agent's last sign of progress (None when unknown).

    The start of the current activation counts as progress, so a freshly started agent is
    given ``max_silence`` before it is called silent. ``journal``: a callable returning the newest
    journal time of the unit (the heartbeat's read of this run); default: the unit's newest journal
    entry (one bounded read), else what the heartbeat recorded.
    """
    hb = agent.get("heartbeat") or {}
    mode = hb.get("progress") or "journal"
    seen = None
    if mode == "journal":
        if journal is not None:
            seen = journal(agent)
        else:
            seen, _ok = journalreader.newest(agent["unit"])
            recorded = hbstate.get("journal_seen")
            if isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
                seen = max(seen or 0.0, float(recorded)) or None
    elif mode == "file":
        seen, problem = entry_mtime(agent, hb.get("file") or "heartbeat")
        _note_unsafe(agent, hbstate, "progress_file", problem)
    elif mode == "command":
        seen = hbstate.get("command_ok_at")
        if run_command and hb.get("command"):
            max_silence = seconds(hb.get("max_silence"), DEFAULT_MAX_SILENCE)
            if run_poll_command(agent, hb["command"], min(COMMAND_TIMEOUT_MAX, max(5.0, max_silence / 2))):
                seen = now if now is not None else time.time()
                hbstate["command_ok_at"] = seen
    started = None
    if props.get("ActiveState") == "active":
        started = systemd.monotonic_to_epoch(props.get("ActiveEnterTimestampMonotonic"))
    elif props.get("ActiveState") == "activating" and schedule.is_scheduled(agent):  # a scheduled run's start
        started = systemd.monotonic_to_epoch(props.get("InactiveExitTimestampMonotonic"))
    candidates = [t for t in (seen, started) if t]
    return max(candidates) if candidates else None


def parse_show(text):
    """``systemctl show`` output of several units -> {Id: {property: value}} (blocks apart by blank lines)."""
    units = {}
    for block in text.split("\n\n"):
        props = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                props[key] = value
        if props.get("Id"):
            units[props["Id"]] = props
    return units


def show_all(units, timeout=SYSTEMCTL_TIMEOUT):
    """{unit: properties} of every unit from ONE ``systemctl show`` (blocks come in argument order).

    A unit missing from the answer (systemctl failed) is absent from the result: the caller falls
    back to ``systemd.show`` for it.
    """
    if not units:
        return {}
    try:
        proc = subprocess.run([systemd.SYSTEMCTL, "show", "--no-pager", "-p", ",".join(systemd.SHOW_PROPERTIES),
                               "--"] + list(units), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if proc.returncode != 0:
        return {}
    found = parse_show(proc.stdout)
    return dict((unit, found[unit]) for unit in units if unit in found)


def journal_agents(agents):
    """The agents whose journal lines the heartbeat reads: those with ``progress: journal``."""
    return [a for a in agents if ((a.get("heartbeat") or {}).get("progress") or "journal") == "journal"]


class JournalReads:
    """This run's journal reads (``agentops_host.journal.read``): each journal agent's new lines and newest
    entry time since its position in its heartbeat state; ``batch``: the record the next run starts from."""

    def __init__(self, agents, hbstates, now, batch=None):
        positions = dict((a["unit"], journalreader.Position.from_state(hbstates.get(a["name"]), now))
                         for a in journal_agents(agents))
        self.results, self.batch = journalreader.read(positions, now, batch) if positions else ({}, batch)

    def result(self, agent):
        return self.results.get(agent["unit"])

    def newest(self, agent):
        result = self.result(agent)
        return result.progress if result is not None else None


def is_up(agent, props):
    """agentops_agent_up: the unit runs, or a scheduled agent (a one-shot started by its timer) is
    between runs after a successful one (inactive, Result=success)."""
    active = props.get("ActiveState")
    if active in RUNNING or active == "activating" and agent.get("schedule"):
        return True
    return bool(agent.get("schedule")) and active == "inactive" and props.get("Result") == "success"


class Checker:
    """One heartbeat run."""

    def __init__(self, args, cfg):
        self.args = args
        self.cfg = cfg
        self.tick = float(getattr(args, "tick", None) or DEFAULT_TICK)
        self.errors = 0
        # The keys open when the run started (one read), kept up to date by _emit/_resolve: a key
        # that is not open needs no resolve (no lock, no read per agent and run).
        self.open_keys = None
        self.props = {}
        self.journal = None
        self.samples = []
        # Agents found hung (silent alert raised or kept) in this run: recovery.step may restart them.
        self.hung = set()

    def _emit(self, severity, key, title, body="", agent=None, unit=None):
        if not alert.emit(self.args, severity, key, title, body, agent=agent, unit=unit):
            self.errors += 1
        if self.open_keys is not None:
            self.open_keys.add(key)

    def _resolve(self, key, title="", body="", agent=None, unit=None):
        if self.open_keys is not None and key not in self.open_keys:
            return
        if not alert.resolve(self.args, key, title=title, body=body, agent=agent, unit=unit):
            self.errors += 1
        if self.open_keys is not None:
            self.open_keys.discard(key)

    def _is_open(self, key):
        if self.open_keys is not None:
            return key in self.open_keys
        return alert.is_open(self.args, key)

    # -- per agent ---------------------------------------------------------------------------
    def check_agent(self, agent, now):
        name, unit = agent["name"], agent["unit"]
        hb = agent.get("heartbeat") or {}
        hbstate = load_state(self.args, name)
        interval = seconds(hb.get("interval"), DEFAULT_INTERVAL)
        due = (self.args.force or now - float(hbstate.get("last_full_check", 0))
               >= interval - min(self.tick / 2.0, interval / 2.0))
        props = self.props.get(unit)
        if props is None:
            props = systemd.show(unit)
        active, sub = props.get("ActiveState", "unknown"), props.get("SubState", "unknown")
        restarts = systemd.as_int(props.get("NRestarts"), 0)
        expected = agent.get("enabled", True) and agent.get("state", "present") == "present"

        self.check_liveness(agent, props, hbstate, now, expected)
        self.check_crashloop(agent, props, hbstate, now, restarts)
        self.check_silence(agent, props, hbstate, now, due)
        recovery.step(self.args, agent, props, name in self.hung, now, self._emit, self._resolve,
                      max_silence=seconds(hb.get("max_silence")))
        if schedule.is_scheduled(agent):
            schedule.check(self, agent, props, hbstate, now, expected)
        if due:
            self.check_workstate(agent, props, now, hbstate)
            self.check_auth(agent, hbstate, now)
            self.check_rotation(agent, hbstate)
            hbstate["last_full_check"] = now
        hbstate.update(last_check=now, active_state=active, sub_state=sub, nrestarts=restarts, unit=unit)
        self.record_journal(agent, hbstate, now)
        state.write_json(state_path(self.args, name), hbstate)
        self.samples.append((agent, props, hbstate))

    def record_journal(self, agent, hbstate, now):
        """Save the agent's journal position (only a read that worked moves it) and note what changed."""
        result = self.journal.result(agent) if self.journal is not None else None
        if result is None:
            if self.journal is not None:  # not read by the heartbeat (progress: file or command)
                for key in ("journal_cursor", "journal_floor", "journal_checked", "journal_seen", "journal_loud",
                            "journal_truncated", "journal_unknown_since", "journal_error"):
                    hbstate.pop(key, None)
            return
        name = agent["name"]
        result.save(hbstate)
        if result.ok:
            hbstate.pop("journal_unknown_since", None)
            hbstate.pop("journal_error", None)
            self._resolve("%s/progress-unknown" % name, title="%s: journal read again, progress known" % name,
                          agent=name, unit=agent["unit"])
            if result.truncated and not hbstate.get("journal_truncated"):
                alert.log("heartbeat %s: more than %d new journal lines since the last run: its newest %d read, "
                          "the older ones skipped (logged once until it logs less)"
                          % (name, journalreader.LINES_MAX, journalreader.LINES_MAX))
            elif hbstate.get("journal_truncated") and not result.truncated:
                alert.log("heartbeat %s: %d new journal lines since the last run: all read again"
                          % (name, len(result.lines)))
            hbstate["journal_truncated"] = result.truncated
            return
        since = hbstate.get("journal_unknown_since")
        if not isinstance(since, (int, float)) or isinstance(since, bool) or since > now:
            hbstate["journal_unknown_since"] = now
        if hbstate.get("journal_error") != result.error:
            alert.log("heartbeat %s: journal not read, progress unknown: %s" % (name, result.error))
        hbstate["journal_error"] = result.error

    def check_liveness(self, agent, props, hbstate, now, expected):
        name, unit = agent["name"], agent["unit"]
        active, sub = props.get("ActiveState", "unknown"), props.get("SubState", "unknown")
        key = alert.down_key(name, unit)
        if schedule.is_scheduled(agent) and schedule.liveness(self, agent, props, expected):
            return
        if active == "failed":
            # The same message as `agentops failure` (OnFailure=): whichever runs first sends it.
            _final, title, body = alert.failure_report(unit, props)
            self._emit("critical", key, title, body, agent=name, unit=unit)
        elif active == "inactive" and expected:
            self._emit("warning", key, "%s is not running (%s/%s)" % (unit, active, sub),
                       "The agent is enabled but its unit is inactive since %s."
                       % (props.get("InactiveEnterTimestamp") or "?"), agent=name, unit=unit)
        elif active == "active" or (active == "inactive" and not expected):
            self._resolve(key, title="%s is running again (%s/%s)" % (unit, active, sub), agent=name, unit=unit)

    def check_crashloop(self, agent, props, hbstate, now, restarts):
        name, unit = agent["name"], agent["unit"]
        key = alert.crashloop_key(name, unit)
        previous = hbstate.get("nrestarts")
        if previous is not None and restarts > int(previous):
            hbstate["last_restart_seen"] = now
            self._emit("critical", key, "%s is crash looping: %d restart(s) since the last check (NRestarts=%d)"
                       % (unit, restarts - int(previous), restarts),
                       "Restart= keeps restarting the unit; OnFailure= fires only once the start limit is hit.\n"
                       "State: %s/%s, Result=%s\n\n%s" % (props.get("ActiveState"), props.get("SubState"),
                                                         props.get("Result"), systemd.journal_tail(unit, 10)),
                       agent=name, unit=unit)
            return
        restart_sec = seconds(props.get("RestartUSec"), 0.0) if props.get("RestartUSec") not in (None, "", "infinity") else 0.0
        stable = max(3 * restart_sec + self.tick, 2 * self.tick, 30.0)
        if (props.get("ActiveState") == "active"
                and now - float(hbstate.get("last_restart_seen", 0)) >= stable
                and self._is_open(key)):
            self._resolve(key, title="%s stopped crash looping (no restart for %ds)" % (unit, stable),
                          agent=name, unit=unit)

    def check_silence(self, agent, props, hbstate, now, due):
        name, unit = agent["name"], agent["unit"]
        hb = agent.get("heartbeat") or {}
        key = "%s/silent" % name
        max_silence = seconds(hb.get("max_silence"))
        if not schedule.running(agent, props) or not max_silence:
            hbstate["last_progress"] = None
            if max_silence and self._is_open(key):
                self._resolve(key, title="%s is no longer running: silence check suspended" % unit,
                              agent=name, unit=unit)
            return
        result = self.journal.result(agent) if self.journal is not None else None
        if result is not None and not result.ok:
            self.check_unknown(agent, props, hbstate, now, max_silence, result)
            return
        seen = last_progress(agent, props, hbstate, now=now, run_command=due,
                             journal=self.journal.newest if self.journal is not None else None)
        hbstate["last_progress"] = seen
        age = now - seen if seen else None
        if age is not None and age > max_silence:
            if in_active_hours(hb.get("active_hours"), now):
                self.hung.add(name)
                self._emit("critical", key, "%s shows no progress for %ds (max_silence %ds, progress: %s)"
                           % (name, age, max_silence, hb.get("progress") or "journal"),
                           "The unit is %s/%s but made no progress since %s: alive but hung?"
                           % (props.get("ActiveState"), props.get("SubState"), alert._iso(seen)),
                           agent=name, unit=unit)
        elif age is not None:
            self._resolve(key, title="%s makes progress again (last %ds ago)" % (name, age), agent=name, unit=unit)

    def check_unknown(self, agent, props, hbstate, now, max_silence, result):
        """The journal read of this run failed: progress unknown. Not silent (the silent alert is neither
        raised nor resolved, no recovery restart); unknown longer than max_silence -> progress-unknown."""
        name, unit = agent["name"], agent["unit"]
        hbstate["last_progress"] = None
        since = hbstate.get("journal_unknown_since")
        since = since if isinstance(since, (int, float)) and not isinstance(since, bool) else now
        started = last_progress(agent, props, {}, now=now, journal=lambda _agent: None)
        unknown = now - max(since, started or 0.0)
        if unknown > max_silence:
            self._emit("warning", "%s/progress-unknown" % name,
                       "%s: progress unknown for %ds (max_silence %ds): its journal cannot be read"
                       % (name, unknown, max_silence),
                       "%s\nUntil a read works the agent is not called silent and on_hang does not restart it."
                       % (result.error or "journal read failed"), agent=name, unit=unit)

    def check_workstate(self, agent, props, now, hbstate=None):
        name, unit = agent["name"], agent["unit"]
        hb = agent.get("heartbeat") or {}
        max_age = seconds(hb.get("workstate_max_age"))
        key = "%s/workstate" % name
        if not max_age or props.get("ActiveState") != "active":
            return
        mtime, problem = entry_mtime(agent, "WORKSTATE.md")
        _note_unsafe(agent, hbstate, "workstate", problem)
        started = systemd.monotonic_to_epoch(props.get("ActiveEnterTimestampMonotonic")) or 0
        reference = max(mtime or 0, started)
        if now - reference > max_age:
            self._emit("warning", key, "%s: WORKSTATE.md not updated for %ds (workstate_max_age %ds)"
                       % (name, now - (mtime or now), max_age),
                       "The agent is active but did not checkpoint its work state.", agent=name, unit=unit)
        else:
            self._resolve(key, title="%s: WORKSTATE.md updated again" % name, agent=name, unit=unit)

    def check_auth(self, agent, hbstate, now):
        """The same checks (and alert keys) as ``agentops check-auth``."""
        if not agent.get("auth_checks"):
            return
        name = agent["name"]
        try:
            results = checkauth.check_agent(self.args, agent) or []
            checkauth.record(self.args, agent, results)
        except Exception as exc:  # pylint: disable=broad-except
            alert.log("heartbeat %s: auth checks could not run: %s" % (name, alert.scrub(exc)))
            self.errors += 1
            return
        hbstate["auth"] = [{"name": r.get("name"), "status": str(r.get("status")),
                            "message": alert.scrub(r.get("message", "")), "time": now} for r in results]
        for problem in checkauth.raise_alerts(self.args, agent, results) or []:
            alert.log("heartbeat %s: %s" % (name, problem))
            self.errors += 1

    def check_rotation(self, agent, hbstate):
        name, unit = agent["name"], agent["unit"]
        try:
            found = list(rotate.overdue(self.args, agent) or [])
        except Exception as exc:  # pylint: disable=broad-except
            alert.log("heartbeat %s: rotation check could not run: %s" % (name, exc))
            self.errors += 1
            return
        keys = []
        for key, title, body in found:
            keys.append(key)
            self._emit("critical", key, title, body, agent=name, unit=unit)
        for key in hbstate.get("rotation_keys", []):
            if key not in keys:
                self._resolve(key, title="%s: token rotation no longer overdue" % name, agent=name, unit=unit)
        hbstate["rotation_keys"] = keys

    # -- host --------------------------------------------------------------------------------
    def check_disk(self, paths, threshold):
        seen = set()
        for path in paths:
            try:
                info = os.statvfs(path)
                device = os.stat(path).st_dev
            except OSError:
                continue
            if device in seen:
                continue
            seen.add(device)
            used = info.f_blocks - info.f_bfree
            usable = used + info.f_bavail
            percent = 100.0 * used / usable if usable else 0.0
            key = "host/disk:%s" % path
            if percent > threshold:
                self._emit("warning", key, "filesystem of %s is %.0f%% full (threshold %.0f%%)"
                           % (path, percent, threshold),
                           "Agents and the journal die together when it fills up.")
            else:
                self._resolve(key, title="filesystem of %s back to %.0f%%" % (path, percent))

    def resolve_removed(self, names):
        for item in alert.open_alerts(self.args):
            if item.get("agent") and item["agent"] not in names:
                self._resolve(item["key"], title="%s removed from the host" % item["agent"])
        directory = heartbeat_dir(self.args)
        for entry in os.listdir(directory):
            if entry.endswith(".json") and entry[:-5] not in names:
                state.remove(os.path.join(directory, entry))


def run_path(args):
    return os.path.join(heartbeat_dir(args), RUN_FILE)


def load_settings(args):
    """heartbeat.json (dead man's switch, metrics directory): (settings, problem)."""
    try:
        return deadman.load_settings(args.config_dir), None
    except deadman.SettingsError as exc:
        return {"metrics_textfile_dir": None, "deadman": [], "agents": {}, "present": True}, str(exc)


def agent_health(checker, open_now):
    """{agent: (healthy, message)} for the per-agent dead man's switch: an agent is unhealthy while it
    has an open critical or warning alert (``open_now``: the open alerts after the run's checks)."""
    bad = {}
    for item in open_now:
        if item.get("severity") in ("critical", "warning") and item.get("agent"):
            bad.setdefault(item["agent"], []).append(str(item.get("key")))
    out = {}
    for agent, _props, _hbstate in checker.samples:
        keys = bad.get(agent["name"])
        out[agent["name"]] = (not keys, ("%d open alert(s): %s" % (len(keys), ", ".join(sorted(keys))))
                              if keys else "OK")
    return out


def collect_samples(args, checker, now, started, finished, open_now):
    """The metric samples of this run ({metric name: [(labels, value)]})."""
    samples = dict((name, []) for name in metrics.NAMES)
    for agent, props, hbstate in checker.samples:
        name = agent["name"]
        samples["agentops_agent_up"].append(({"agent": name}, 1 if is_up(agent, props) else 0))
        samples["agentops_agent_restarts_total"].append(({"agent": name}, systemd.as_int(props.get("NRestarts"), 0)))
        seen = hbstate.get("last_progress")
        if isinstance(seen, (int, float)) and seen:
            samples["agentops_agent_progress_age_seconds"].append(({"agent": name}, max(0.0, round(now - seen, 3))))
        for result in hbstate.get("auth") or [] if isinstance(hbstate.get("auth"), list) else []:
            if isinstance(result, dict) and result.get("name") is not None:
                samples["agentops_agent_auth_ok"].append(
                    ({"agent": name, "check": str(result["name"])},
                     1 if str(result.get("status")) in ("AUTH_OK", "AUTH_EXPIRING") else 0))
        try:
            for entry in rotate._entries(agent):  # pylint: disable=protected-access
                item = rotate.schedule_entry(args, agent, entry, now)
                if item.get("next_due") is not None:
                    samples["agentops_agent_rotation_due_timestamp_seconds"].append(
                        ({"agent": name, "credential": entry["credential"]}, int(item["next_due"])))
        except Exception as exc:  # pylint: disable=broad-except  # metrics never fail the run
            alert.log("heartbeat %s: rotation due time unknown for the metrics: %s" % (name, alert.scrub(exc)))
    counts = dict((severity, 0) for severity in metrics.SEVERITIES)
    for item in open_now:
        if item.get("severity") in counts:
            counts[item["severity"]] += 1
    samples["agentops_open_alerts"] = [({"severity": sev}, counts[sev]) for sev in metrics.SEVERITIES]
    samples["agentops_heartbeat_last_run_timestamp_seconds"] = [({}, round(finished, 3))]
    samples["agentops_heartbeat_duration_seconds"] = [({}, round(max(0.0, finished - started), 3))]
    return samples


def run(args):
    started = time.time()
    clock = time.monotonic()
    cfg = alert.load_config(args)
    checker = Checker(args, cfg)
    now = started
    state.ensure_dir(heartbeat_dir(args))
    settings, settings_problem = load_settings(args)
    for _scope, target in deadman.Run.targets_of(settings):  # scrubbed from every log line and alert, like channel URLs
        alert.add_url_secret(target.get("url"))
    if settings_problem:
        alert.log("heartbeat: %s; running without a dead man's switch and metrics" % settings_problem)
    pings = deadman.Run(args, settings, alert.log)
    pings.start()
    record = {"started": started, "settings_error": settings_problem}
    crashed = None
    try:
        with state.locked(os.path.join(heartbeat_dir(args), ".lock")):
            previous = state.read_json(run_path(args), {}, expect=dict)
            names = hostconfig.agent_names(args.config_dir)
            wanted = set(args.agent or names)
            agents, hbstates = [], {}
            for name in names:
                if name not in wanted:
                    continue
                try:
                    agent = hostconfig.load_agent(args.config_dir, name)
                except Exception as exc:  # pylint: disable=broad-except
                    checker.errors += 1
                    alert.log("heartbeat %s: check failed: %s" % (name, exc))
                    continue
                if agent.get("state", "present") == "present":
                    agents.append(agent)
                    hbstates[name] = load_state(args, name)
            checker.open_keys = set(a.get("key") for a in alert.open_alerts(args))
            checker.props = show_all([a["unit"] for a in agents] + schedule.timer_units(agents))
            checker.journal = JournalReads(agents, hbstates, now, previous.get("journal"))
            record["journal"] = checker.journal.batch
            for agent in agents:
                try:
                    checker.check_agent(agent, now)
                except Exception as exc:  # pylint: disable=broad-except
                    checker.errors += 1
                    alert.log("heartbeat %s: check failed: %s" % (agent["name"], exc))
            if not args.agent:
                checker.resolve_removed(set(names))
                threshold = args.disk_threshold if args.disk_threshold is not None else DEFAULT_DISK_THRESHOLD
                paths = args.disk_path or [p for p in ("/var/log/journal", args.state_dir) if os.path.isdir(p)]
                checker.check_disk(paths, threshold)
    except BaseException as exc:
        crashed = exc
    open_now = alert.open_alerts(args)
    critical = [a.get("key") for a in open_now if a.get("severity") == "critical"]
    if crashed is not None:
        host_ok, message = False, "heartbeat run crashed: %s" % type(crashed).__name__
    elif checker.errors:
        host_ok, message = False, "%d check(s) could not run" % checker.errors
    elif critical:
        host_ok, message = False, "%d critical alert(s) open" % len(critical)
    else:
        host_ok, message = True, "OK"
    try:
        pings.finish(host_ok, message, agent_health(checker, open_now) if crashed is None else {})
    except Exception as exc:  # pylint: disable=broad-except  # the dead man's switch never breaks the run
        alert.log("heartbeat: dead man's switch failed: %s" % alert.scrub(exc))
    finished = time.time()
    if crashed is None and not args.agent:
        try:
            text = metrics.render(collect_samples(args, checker, now, started, started + time.monotonic() - clock,
                                                  open_now))
            status, detail = metrics.write(settings.get("metrics_textfile_dir"), text)
        except Exception as exc:  # pylint: disable=broad-except  # metrics never fail the run
            status, detail = "error", "%s: %s" % (type(exc).__name__, alert.scrub(exc))
        if status in ("missing", "error") and (previous.get("metrics") or {}).get("detail") != detail:
            alert.log("heartbeat: metrics %s: %s" % (status, detail))
        record["metrics"] = {"status": status, "detail": detail, "dir": settings.get("metrics_textfile_dir") or "",
                             "at": finished}
        record["finished"] = finished
        record["duration"] = round(time.monotonic() - clock, 3)
        record["ok"] = host_ok
        try:
            state.write_json(run_path(args), record)
        except OSError as exc:
            alert.log("heartbeat: cannot record the run in %s: %s" % (run_path(args), exc.strerror or exc))
    if crashed is not None:
        raise crashed
    if checker.errors:
        return 1
    checker._resolve(alert.down_key(None, "agentops-heartbeat.service"),
                     title="agentops-heartbeat.service runs again")
    return 0


def run_status(args):
    """What the last run recorded (run.json): started, finished, duration, ok, metrics, settings_error."""
    return state.read_json(run_path(args), {}, expect=dict)


def _cmd_heartbeat(args):
    if args.tick is not None:
        args.tick = seconds(args.tick)
    return run(args)


def add_parser(subparsers):
    parser = subparsers.add_parser("heartbeat", help="check every agent once and alert (run by agentops-heartbeat.timer)")
    parser.add_argument("--agent", action="append", help="check only this agent (repeatable)")
    parser.add_argument("--tick", default=None, help="how often the timer runs (systemd time span, default 1min)")
    parser.add_argument("--force", action="store_true", help="run the interval-bound checks now")
    parser.add_argument("--disk-threshold", type=float, default=None,
                        help="alert above this percentage of used space (default 90)")
    parser.add_argument("--disk-path", action="append", default=None,
                        help="path whose filesystem is watched (repeatable; default /var/log/journal and the state dir)")
    parser.set_defaults(func=_cmd_heartbeat)
