"""Recovery with a circuit breaker: what the heartbeat does besides alerting (``recovery`` of an agent).

Settings (``agents.d/<name>.json`` key ``recovery``, normalised by the inventory contract; absent: the
heartbeat only alerts and nothing here acts):

* ``on_hang: restart``: an agent the heartbeat finds hung (no progress for ``max_silence`` inside its
  active hours) is restarted with ``systemctl restart --no-block agentops-<name>.service`` (SIGTERM to
  the whole control group; WORKSTATE.md is not touched, so the next session resumes from it);
* ``start_limit_retry_after`` (seconds or ``"infinity"``): a unit latched at its start limit (``failed``
  after ``Restart=`` gave up, see ``is_latched``) is ``systemctl reset-failed`` and ``start --no-block``
  once it has been latched that long (since systemd's ``InactiveEnterTimestampMonotonic`` of the unit, or
  the first heartbeat run that saw it latched when that is unknown);
* ``max_restarts`` per ``window`` (seconds): every such action counts; with the budget spent the next
  action that would be due raises ONE critical ``<agent>/giving-up`` alert and nothing is done until the
  window has passed (the breaker re-arms by itself and resolves that alert) or an operator runs
  ``agentops recover --reset <agent>``.

Every action is logged (the heartbeat's journal) and announced by one ``info`` alert (key
``<agent>/recovery``; info alerts are not de-duplicated, so each action gives exactly one message).

State: ``<state_dir>/.recovery/<agent>.json`` (root only: directory 0700, file 0600), written atomically
under ``<state_dir>/.recovery/.lock``. It is read with a bound and sanitised: a corrupt, truncated or
hostile file counts as a fresh budget (logged once), never as a reason to crash or to act more often.

Root code here runs ``systemctl`` with a fixed argv and a fixed environment: no agent environment, no
path the agent can write.
"""
import os
import subprocess
import sys
import time

from agentops_host import alert
from agentops_host import config as hostconfig
from agentops_host import state
from agentops_host import systemd
from agentops_lib import agentops_contract
from agentops_lib.agentops_auth import SAFE_PATH

STATE_VERSION = 1
# Bounds of what is kept (max_restarts is at most RECOVERY_MAX_RESTARTS by the contract).
MAX_ACTIONS = agentops_contract.RECOVERY_MAX_RESTARTS
HISTORY = 10
DETAIL_CHARS = 300
SYSTEMCTL_TIMEOUT = 30.0
KINDS = ("restart", "start-limit-retry", "giving-up", "re-armed", "reset")


def recovery_dir(args):
    return os.path.join(args.state_dir, ".recovery")


def state_path(args, name):
    return os.path.join(recovery_dir(args), name + ".json")


def _lock(args):
    state.ensure_dir(recovery_dir(args))
    return state.locked(os.path.join(recovery_dir(args), ".lock"))


def settings_of(agent):
    """The agent's normalised recovery settings, or None when it has none (alert only)."""
    recovery = agent.get("recovery")
    if not isinstance(recovery, dict) or agentops_contract.recovery_problems(recovery):
        return None
    merged = dict(agentops_contract.RECOVERY_DEFAULTS)
    merged.update(recovery)
    retry = merged["start_limit_retry_after"]
    return {"on_hang": merged["on_hang"],
            "max_restarts": int(agentops_contract._as_int(merged["max_restarts"])),  # pylint: disable=protected-access
            "window": float(agentops_contract.timespan_seconds(merged["window"])),
            "start_limit_retry_after": (None if retry == "infinity"
                                        else float(agentops_contract.timespan_seconds(retry)))}


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value != value or value in (float("inf"), float("-inf")) or value < 0:  # NaN, infinities, negative
        return None
    return float(value)


def _text(value, limit=DETAIL_CHARS):
    return alert.scrub(str(value))[:limit] if isinstance(value, str) else ""


def _event(value):
    if not isinstance(value, dict) or value.get("kind") not in KINDS or _number(value.get("time")) is None:
        return None
    return {"time": _number(value["time"]), "kind": value["kind"], "detail": _text(value.get("detail")),
            "ok": value.get("ok") is not False}


def fresh():
    return {"version": STATE_VERSION, "actions": [], "giving_up": None, "latched_since": None,
            "last_action": None, "history": []}


def sanitise(data, now=None):
    """A usable state from whatever was read: unknown keys dropped, wrong types reset, lists bounded,
    times in the future (clock steps, forged files) clamped to ``now``."""
    now = now if now is not None else time.time()
    out = fresh()
    if not isinstance(data, dict):
        return out
    actions = data.get("actions")
    if isinstance(actions, list):
        times = [_number(t) for t in actions[-MAX_ACTIONS:]]
        out["actions"] = sorted(min(t, now) for t in times if t is not None)
    for key in ("giving_up", "latched_since"):
        value = _number(data.get(key))
        out[key] = min(value, now) if value is not None else None
    out["last_action"] = _event(data.get("last_action"))
    history = data.get("history")
    if isinstance(history, list):
        out["history"] = [e for e in (_event(item) for item in history[-HISTORY:]) if e is not None]
    return out


def load(args, name, now=None):
    """The agent's recovery state (fresh when absent; a corrupt file is logged and counts as fresh)."""
    path = state_path(args, name)
    try:
        data = state.load_object(path)
    except state.StateError as exc:
        alert.log("recovery %s: %s; starting with a fresh budget" % (name, exc))
        return fresh()
    return sanitise(data, now)


def save(args, name, data):
    state.write_json(state_path(args, name), data)


def used(data, window, now):
    """Actions inside the window ending now."""
    return len([t for t in data["actions"] if now - t < window])


def _record(data, kind, now, detail, ok=True):
    event = {"time": now, "kind": kind, "detail": _text(detail), "ok": bool(ok)}
    data["last_action"] = event
    data["history"] = (data["history"] + [event])[-HISTORY:]
    return event


def systemctl(*words):
    """Run ``systemctl <words> -- <unit>`` with a fixed environment; (ok, detail)."""
    argv = [systemd.SYSTEMCTL] + list(words)
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=SYSTEMCTL_TIMEOUT, check=False, cwd="/",
                              env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"})
    except subprocess.TimeoutExpired:
        return False, "systemctl %s timed out after %ds" % (words[0], SYSTEMCTL_TIMEOUT)
    except OSError as exc:
        return False, "systemctl %s could not run: %s" % (words[0], exc.strerror or exc)
    if proc.returncode != 0:
        return False, "systemctl %s exited %d: %s" % (words[0], proc.returncode, (proc.stderr or "").strip()[:200])
    return True, "systemctl %s" % " ".join(w for w in words if w != "--")


def unit_of(name):
    problem = agentops_contract.agent_name_problem(name)
    if problem:
        raise ValueError("agent name %s" % problem)
    return "agentops-%s.service" % name


def is_latched(props):
    """The unit sits in ``failed`` and systemd no longer restarts it: its start limit was hit, either by a
    manual start (``Result=start-limit-hit``) or by ``Restart=`` itself (systemd 252 and 257 keep the last
    run's ``Result``, e.g. ``exit-code``, and log "Start request repeated too quickly"): failed after
    ``NRestarts`` > 0. A unit that failed without any restart is left alone."""
    if props.get("ActiveState") != "failed":
        return False
    return props.get("Result") == "start-limit-hit" or systemd.as_int(props.get("NRestarts"), 0) > 0


class Outcome:
    """What one step did: ``action`` (None, restart, start-limit-retry, giving-up, re-armed) and its message."""

    def __init__(self, action=None, message=None):
        self.action = action
        self.message = message


def step(args, agent, props, hung, now, emit, resolve, max_silence=None):
    """One heartbeat run's recovery decision for ``agent`` (emit/resolve: the heartbeat's alert calls).

    ``hung``: the heartbeat raised (or kept) the agent's silent alert in this run. Returns an Outcome.
    """
    settings = settings_of(agent)
    if settings is None:
        return Outcome()
    name = agent["name"]
    unit = unit_of(name)
    with _lock(args):
        data = load(args, name, now)
        outcome = _decide(args, data, settings, name, unit, props, hung, now, emit, resolve, max_silence)
        save(args, name, data)
    return outcome


def _decide(args, data, settings, name, unit, props, hung, now, emit, resolve, max_silence):
    # pylint: disable=too-many-arguments
    window, budget = settings["window"], settings["max_restarts"]
    data["actions"] = [t for t in data["actions"] if now - t < window]
    if data["giving_up"] is not None and (used(data, window, now) < budget or now - data["giving_up"] >= window):
        data["giving_up"] = None
        text = "recovery %s: re-armed, the %ds window passed (%d of %d restarts used)" % (
            name, window, used(data, window, now), budget)
        alert.log(text)
        _record(data, "re-armed", now, text)
        resolve("%s/giving-up" % name, title="%s: recovery re-armed (the %ds window passed)" % (name, window),
                agent=name, unit=unit)
    latched = is_latched(props)
    if latched:
        if data["latched_since"] is None:
            # systemd's own record of when the unit entered the failed state; the first run that saw it otherwise
            entered = systemd.monotonic_to_epoch(props.get("InactiveEnterTimestampMonotonic"))
            data["latched_since"] = min(entered, now) if entered else now
    else:
        data["latched_since"] = None
    wanted = None
    if hung and settings["on_hang"] == "restart":
        last = data["last_action"]
        cooldown = max_silence or 0.0
        if not (last and last["kind"] == "restart" and now - last["time"] < cooldown):
            wanted = "restart"
    elif latched and settings["start_limit_retry_after"] is not None \
            and now - data["latched_since"] >= settings["start_limit_retry_after"]:
        wanted = "start-limit-retry"
    if wanted is None:
        return Outcome()
    if data["giving_up"] is not None:
        return Outcome()
    if used(data, window, now) >= budget:
        data["giving_up"] = now
        text = ("%s: giving up: %d recovery restart(s) in %ds spent (max_restarts %d); no more restarts until the "
                "window passes or `agentops recover --reset %s`" % (name, used(data, window, now), window, budget,
                                                                       name))
        alert.log("recovery " + text)
        _record(data, "giving-up", now, text)
        emit("critical", "%s/giving-up" % name, text,
             "The agent still needs recovery (%s) but its budget is spent: a person has to look.\n"
             "State: %s/%s, Result=%s" % ("hung" if wanted == "restart" else "latched at the start limit",
                                          props.get("ActiveState"), props.get("SubState"), props.get("Result")),
             agent=name, unit=unit)
        return Outcome("giving-up", text)
    if wanted == "restart":
        ok, detail = systemctl("restart", "--no-block", "--", unit)
        reason = "hung: no progress for more than max_silence"
    else:
        ok, detail = systemctl("reset-failed", "--", unit)
        if ok:
            ok, detail = systemctl("start", "--no-block", "--", unit)
        reason = "latched at the start limit for %ds" % (now - data["latched_since"])
        data["latched_since"] = None
    data["actions"].append(now)
    count = used(data, window, now)
    if ok:
        text = "%s: %s %s (%s); recovery restart %d of %d in %ds" % (
            name, "restarted" if wanted == "restart" else "reset and started", unit, reason, count, budget, window)
    else:
        text = "%s: %s of %s failed: %s (%s); counted as recovery restart %d of %d" % (
            name, wanted, unit, detail, reason, count, budget)
    alert.log("recovery " + text)
    _record(data, wanted, now, text, ok=ok)
    emit("info" if ok else "warning", "%s/recovery" % name, text,
         "WORKSTATE.md is left as it is: the next session resumes from it." if wanted == "restart" else "",
         agent=name, unit=unit)
    return Outcome(wanted, text)


def status(args, agent, now=None):
    """The agent's recovery view for ``agentops status`` (None when it has no recovery settings)."""
    settings = settings_of(agent)
    if settings is None:
        return None
    now = now if now is not None else time.time()
    data = load(args, agent["name"], now)
    return {"on_hang": settings["on_hang"], "max_restarts": settings["max_restarts"],
            "window_seconds": int(settings["window"]),
            "start_limit_retry_after_seconds": (int(settings["start_limit_retry_after"])
                                                if settings["start_limit_retry_after"] is not None else None),
            "restarts_used": used(data, settings["window"], now), "giving_up": data["giving_up"] is not None,
            "giving_up_since": data["giving_up"], "last_action": data["last_action"]}


def _iso(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(epoch))


def status_lines(rows):
    """One line per agent with recovery settings, under the status table."""
    lines = []
    for row in rows:
        view = row.get("recovery")
        if not view:
            continue
        last = view.get("last_action")
        lines.append("recovery %s: on_hang %s, %d/%d restarts used in %ds%s%s" % (
            row.get("agent"), view["on_hang"], view["restarts_used"], view["max_restarts"], view["window_seconds"],
            ", GIVING UP (agentops recover --reset %s)" % row.get("agent") if view["giving_up"] else "",
            "; last: %s at %s%s" % (last["kind"], _iso(last["time"]), "" if last["ok"] else " (failed)")
            if last else ""))
    return lines


def reset(args, name, now=None):
    """``agentops recover --reset <agent>``: a fresh budget; resolves the giving-up alert. Root only."""
    now = now if now is not None else time.time()
    if os.geteuid() != 0:
        raise PermissionError("agentops recover --reset must run as root")
    agent = hostconfig.load_agent(args.config_dir, name)  # ConfigError naming the agent when it does not exist
    unit = unit_of(agent["name"])
    with _lock(args):
        data = load(args, name, now)
        was = data["giving_up"] is not None
        spent = len(data["actions"])
        data.update(actions=[], giving_up=None, latched_since=None)
        text = "recovery %s: reset by an operator (%d action(s) in the budget cleared%s)" % (
            name, spent, ", was giving up" if was else "")
        _record(data, "reset", now, text)
        save(args, name, data)
    alert.log(text)
    alert.resolve(args, "%s/giving-up" % name, title="%s: recovery reset by an operator, re-armed" % name,
                  agent=name, unit=unit)
    return text


def _cmd_recover(args):
    if args.reset:
        sys.stdout.write(reset(args, args.reset) + "\n")
        return 0
    for name, agent, error in hostconfig.iter_agents(args.config_dir):
        if error:
            sys.stdout.write("%s: broken: %s\n" % (name, alert.scrub(error)))
            continue
        view = status(args, agent)
        lines = status_lines([{"agent": name, "recovery": view}]) if view else ["recovery %s: alert only" % name]
        sys.stdout.write("\n".join(lines) + "\n")
    return 0


def add_parser(subparsers):
    parser = subparsers.add_parser("recover", help="show the recovery budgets, or re-arm an agent's recovery (root)")
    parser.add_argument("--reset", metavar="AGENT", default=None,
                        help="clear the agent's recovery budget and giving-up state (root only)")
    parser.set_defaults(func=_cmd_recover)
