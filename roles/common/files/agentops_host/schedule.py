"""Scheduled one-shot agents (``schedule``): the heartbeat's view of a run and of its timer.

A scheduled agent's ``agentops-<name>.service`` is ``Type=oneshot``, started by
``agentops-<name>.timer`` (``OnCalendar=<schedule>``, ``Persistent=true``). For such an agent:

* ``activating`` is a run in progress: the progress / ``max_silence`` logic applies while it lasts;
* ``inactive`` after a successful run is the normal state between runs (not down, not hung,
  ``agentops_agent_up 1``); ``failed`` (a run that failed or was killed at ``runtime_max``, Result
  ``exit-code`` / ``timeout`` / ...) stays the ``<agent>/down`` alert until a later run succeeds;
* a missed run alerts as ``<agent>/missed``: the timer is stopped, disabled or gone, or the elapse
  the timer announced (``NextElapseUSecRealtime``, remembered from run to run) is more than
  ``schedule_grace`` (default 15min) in the past without a trigger (``LastTriggerUSec``) or a run.
  The alert is resolved when a run happens (a trigger newer than the one known when it opened).

The timer's properties come from the heartbeat's one ``systemctl show`` for all units. systemd prints
``LastTriggerUSec`` and ``NextElapseUSecRealtime`` as local time ("Thu 2026-11-26 22:52:40 UTC"); a
stopped timer shows neither, so the last known values are kept in the agent's heartbeat state.
"""
import calendar
import time

from agentops_host import systemd

GRACE_DEFAULT = 15 * 60.0
# UnitFileState values of a timer that will not start at boot, and LoadStates of a timer that is gone.
DISABLED_FILE_STATES = ("disabled", "masked", "masked-runtime", "bad", "invalid", "not-found")
MISSING_LOAD_STATES = ("not-found", "masked", "error", "bad-setting")
RUN_STATES = ("activating", "active", "deactivating", "reloading")
STATE_KEY = "schedule"


def is_scheduled(agent):
    return bool(agent.get("schedule"))


def timer_unit(agent):
    return agent.get("timer") or "agentops-%s.timer" % agent["name"]


def timer_units(agents):
    """The timers of the scheduled agents (for the heartbeat's one ``systemctl show``)."""
    return [timer_unit(a) for a in agents if is_scheduled(a)]


def grace_seconds(agent):
    value = agent.get("schedule_grace")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return GRACE_DEFAULT


def parse_timestamp(text):
    """Epoch seconds of a timestamp as ``systemctl show`` prints it ("Thu 2026-11-26 22:52:40 UTC"); None for
    an empty, "n/a" or unreadable value. A zone other than UTC/GMT is the host's local time, as systemctl
    (run by the same host, same zone) formats it."""
    words = str(text or "").split()
    if len(words) < 3:
        return None
    if not words[0][:1].isalpha():
        words = ["-"] + words
    try:
        parsed = time.strptime("%s %s" % (words[1], words[2][:8]), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    zone = words[3] if len(words) > 3 else ""
    if zone in ("UTC", "GMT", "UCT", "Z"):
        return float(calendar.timegm(parsed))
    return float(time.mktime(parsed[:8] + (-1,)))


def decide(agent, timer, service, record, now, expected=True):
    """(reason or None, record): is a run of the scheduled ``agent`` missed?

    ``timer`` / ``service``: ``systemctl show`` properties of the timer and of the service; ``record``: what
    the previous runs of the heartbeat remembered (``expected``: the earliest announced elapse not yet seen
    triggered, ``last_trigger``); ``expected``: the agent is present and enabled (else nothing is missed).
    """
    record = dict(record or {})
    trigger = parse_timestamp(timer.get("LastTriggerUSec"))
    known = record.get("last_trigger") if isinstance(record.get("last_trigger"), (int, float)) else None
    if trigger is None or (known is not None and known > trigger):
        trigger = known
    record["last_trigger"] = trigger
    due = record.get("expected") if isinstance(record.get("expected"), (int, float)) else None
    if due is not None and trigger is not None and trigger >= due - 1.0:
        due = None
    announced = parse_timestamp(timer.get("NextElapseUSecRealtime")) if timer.get("ActiveState") == "active" else None
    if due is None and announced is not None:
        due = announced
    record["expected"] = due
    if not expected:
        return None, record
    name = timer_unit(agent)
    if not timer or timer.get("LoadState") in MISSING_LOAD_STATES:
        return "%s is missing (LoadState=%s): no scheduled run will start" % (
            name, timer.get("LoadState") or "unknown"), record
    if timer.get("UnitFileState") in DISABLED_FILE_STATES or timer.get("ActiveState") != "active":
        return "%s is %s and %s: scheduled runs (%s) do not start" % (
            name, timer.get("ActiveState") or "unknown", timer.get("UnitFileState") or "unknown",
            agent.get("schedule")), record
    if service.get("ActiveState") in RUN_STATES:
        return None, record
    if due is not None and now > due + grace_seconds(agent):
        return "the run due at %s has not started %ds later (schedule %s, schedule_grace %ds)" % (
            _iso(due), now - due, agent.get("schedule"), grace_seconds(agent)), record
    return None, record


def _iso(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else "never"


def missed_key(agent):
    return "%s/missed" % agent["name"]


def check(checker, agent, props, hbstate, now, expected=True):
    """The heartbeat's missed-run check of one scheduled agent (alert ``<agent>/missed``, resolved by a run)."""
    timer = checker.props.get(timer_unit(agent))
    if timer is None:  # not in the heartbeat's one read (it failed): ask for this timer alone
        timer = systemd.show(timer_unit(agent))
    record = hbstate.get(STATE_KEY) if isinstance(hbstate.get(STATE_KEY), dict) else {}
    reason, record = decide(agent, timer, props, record, now, expected)
    name, key = agent["name"], missed_key(agent)
    if reason:
        if record.get("missed_since") is None:
            record["missed_since"] = now
            record["trigger_at_miss"] = record.get("last_trigger")
        checker._emit("critical", key, "%s missed a scheduled run: %s" % (name, reason),  # pylint: disable=protected-access
                      "Schedule: %s (timer %s, Persistent=true). Last run: %s. The agent's scheduled work is not "
                      "being done; re-enable the timer with the agents role or `systemctl enable --now %s`."
                      % (agent.get("schedule"), timer_unit(agent), _iso(record.get("last_trigger")),
                         timer_unit(agent)), agent=name, unit=agent["unit"])
    elif record.get("missed_since") is not None:
        ran = (record.get("last_trigger") or 0) > (record.get("trigger_at_miss") or 0) or \
            props.get("ActiveState") in RUN_STATES
        if ran or not expected:
            checker._resolve(key, title="%s runs on its schedule again (last run %s)"  # pylint: disable=protected-access
                             % (name, _iso(record.get("last_trigger"))), agent=name, unit=agent["unit"])
            record.pop("missed_since", None)
            record.pop("trigger_at_miss", None)
    hbstate[STATE_KEY] = record
    return reason


def liveness(checker, agent, props, expected=True):
    """The down check of a scheduled agent, except a failed run (the heartbeat's usual ``failed`` path).

    Between runs (inactive, Result=success) the agent is not down: an open ``<agent>/down`` (a failed
    earlier run) is resolved; a run in progress changes nothing. Returns True when it handled the agent.
    """
    active = props.get("ActiveState")
    if active == "failed":
        return False
    if active == "inactive" and props.get("Result") == "success":
        checker._resolve("%s/down" % agent["name"],  # pylint: disable=protected-access
                         title="%s ran successfully again (scheduled run, Result=success)" % agent["unit"],
                         agent=agent["name"], unit=agent["unit"])
    return True


def running(agent, props):
    """The unit counts as running for the progress checks: active, or a scheduled run in progress."""
    active = props.get("ActiveState")
    return active == "active" or (is_scheduled(agent) and active == "activating")


def view(agent, props, timer, hbstate=None):
    """``agentops status``: the schedule, the timer, last run, its result and the next run."""
    record = (hbstate or {}).get(STATE_KEY) if isinstance((hbstate or {}).get(STATE_KEY), dict) else {}
    last = parse_timestamp(timer.get("LastTriggerUSec")) or record.get("last_trigger")
    active = props.get("ActiveState")
    if active in RUN_STATES:
        result = "running"
    elif last is None and active == "inactive":
        result = "never ran"
    else:
        result = props.get("Result") or "unknown"
    following = parse_timestamp(timer.get("NextElapseUSecRealtime")) if timer.get("ActiveState") == "active" else None
    return {
        "expression": agent.get("schedule"),
        "timer": timer_unit(agent),
        "timer_state": "%s/%s" % (timer.get("ActiveState") or "unknown", timer.get("UnitFileState") or "unknown"),
        "last_run": _iso(last) if last else None,
        "result": result,
        "next_run": _iso(following) if following else None,
        "grace_seconds": int(grace_seconds(agent)),
    }


def status_line(row):
    """One line of ``agentops status`` (text) for a scheduled agent's row."""
    item = row.get("schedule") or {}
    return "%s: schedule %s, last run %s (%s), next run %s, timer %s" % (
        row.get("agent"), item.get("expression"), item.get("last_run") or "never", item.get("result"),
        item.get("next_run") or ("after this run" if item.get("result") == "running" else "none (timer not active)"),
        item.get("timer_state"))
