"""``agentops status``: one table (``--format table``, the default) or ``--format json|markdown|html`` for the host.

The formatting lives in ``agentops_lib.agentops_status`` (plugins/module_utils/agentops_status.py),
which ``playbooks/status.yml`` uses for the fleet report too: ``--format markdown|html`` prints the
report status.yml writes, for this host alone (host column: ``--host`` or this host's name).

JSON: a list with one object per agent: agent, unit, active_state, sub_state, uptime_seconds,
restarts, last_progress_age_seconds, last_check (epoch of the last heartbeat run), auth (the last
auth check results or null: the heartbeat's, else those `agentops check-auth` recorded at the
last start), next_rotation (from ``agentops_host.rotate.next_due`` when installed, else null),
open_alerts (key, severity, title, since), deadman (the agent's dead man's switch targets: scope,
target as "<type> <host>", ok, detail, error, last_kind, last_attempt_at, last_ok_at, failures),
error (null, or why the agent is broken), schedule (null, or for a scheduled agent: expression,
timer, timer_state, last_run, result, next_run, grace_seconds; the text table is followed by one line
each), recovery (null without recovery settings, else on_hang, max_restarts, window_seconds,
start_limit_retry_after_seconds, restarts_used, giving_up, giving_up_since, last_action {time, kind,
detail, ok}; the text table is followed by one line each), dead_letter (the host's number of alert messages given
up on, from ``alert.dead_letter_count`` when the alert module provides it, else null) and watcher
(the heartbeat's last run, its metrics file status and the host's dead man's switch targets);
dead_letter and watcher are the same in every row.

An agent whose settings file (agents.d) or state file (.heartbeat, .auth, rotation) cannot be
used is shown as broken (active_state ``broken``, sub_state ``config`` or ``state``, ``error``
naming the file and the reason); the other agents are shown as usual.
"""
import json
import socket
import sys
import time

from agentops_lib import agentops_status

from agentops_host import alert
from agentops_host import config as hostconfig
from agentops_host import deadman
from agentops_host import heartbeat
from agentops_host import recovery
from agentops_host import rotate
from agentops_host import schedule
from agentops_host import state as statefiles
from agentops_host import systemd

FORMATS = ("table", "json", "markdown", "html")


def _open_alert_view(item):
    return {"key": item.get("key"), "severity": item.get("severity"), "title": item.get("title"),
            "since": alert._iso(item.get("first_seen"))}


def _auth_results(args, name, hbstate):
    """The last auth results: the heartbeat's, else what `agentops check-auth` recorded (StateError if malformed)."""
    if hbstate.get("auth") is not None:
        if not isinstance(hbstate["auth"], list):
            raise statefiles.StateError("%s: 'auth' must be a list" % heartbeat.state_path(args, name))
        return hbstate["auth"]
    try:
        from agentops_host import check_auth  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    recorded = check_auth.load_result(args, name)
    if not recorded:
        return None
    return [{"name": r.get("name"), "status": str(r.get("status")), "message": alert.scrub(r.get("message") or ""),
             "time": recorded.get("time")} for r in recorded.get("results") or [] if isinstance(r, dict)]


def agent_status(args, agent, now=None):
    now = now if now is not None else time.time()
    name = agent["name"]
    props = systemd.show(agent["unit"])
    hbstate = statefiles.load_object(heartbeat.state_path(args, name))
    seen = heartbeat.last_progress(agent, props, hbstate, now=now) if props.get("ActiveState") == "active" else None
    next_rotation, error = None, None
    try:
        next_rotation = rotate.next_due(args, agent)
    except hostconfig.ConfigError as exc:  # token_rotation entries of the wrong type: this agent's file
        next_rotation = "error"
        error = "%s: %s" % (hostconfig.agent_path(args.config_dir, name), alert.scrub(exc))
    except Exception as exc:  # pylint: disable=broad-except
        next_rotation = "error: %s" % alert.scrub(exc)
    uptime = systemd.uptime_seconds(props)
    scheduled = None
    if schedule.is_scheduled(agent):
        scheduled = schedule.view(agent, props, systemd.show(schedule.timer_unit(agent)), hbstate)
    return {
        "agent": name,
        "unit": agent["unit"],
        "active_state": props.get("ActiveState", "unknown"),
        "sub_state": props.get("SubState", "unknown"),
        "uptime_seconds": int(uptime) if uptime is not None else None,
        "restarts": systemd.as_int(props.get("NRestarts"), 0),
        "last_progress_age_seconds": int(now - seen) if seen else None,
        "last_check": hbstate.get("last_check"),
        "auth": _auth_results(args, name, hbstate),
        "next_rotation": next_rotation,
        "open_alerts": [_open_alert_view(a) for a in alert.open_alerts(args, agent=name)],
        "deadman": deadman.status(args, scope=name),
        "recovery": recovery.status(args, agent, now),
        "error": error,
        "schedule": scheduled,
    }


def broken_row(args, name, kind, error):
    """The row of an agent whose settings or state cannot be used: what is wrong, and its open alerts."""
    try:
        alerts = [_open_alert_view(a) for a in alert.open_alerts(args, agent=name)]
    except Exception:  # pylint: disable=broad-except
        alerts = []
    return {
        "agent": name,
        "unit": "agentops-%s.service" % name,
        "active_state": "broken",
        "sub_state": kind,
        "uptime_seconds": None,
        "restarts": None,
        "last_progress_age_seconds": None,
        "last_check": None,
        "auth": None,
        "next_rotation": None,
        "open_alerts": alerts,
        "deadman": [],
        "recovery": None,
        "error": alert.scrub(error),
        "schedule": None,
    }


def collect(args):
    rows = []
    for name, agent, error in hostconfig.iter_agents(args.config_dir):
        if error:
            rows.append(broken_row(args, name, "config", error))
            continue
        if agent.get("state", "present") != "present":
            continue
        try:
            rows.append(agent_status(args, agent))
        except statefiles.StateError as exc:
            rows.append(broken_row(args, name, "state", str(exc)))
        except Exception as exc:  # pylint: disable=broad-except  # one agent never hides the others
            rows.append(broken_row(args, name, "error", "%s: %s" % (type(exc).__name__, exc)))
    return rows


def dead_letter(args):
    """The host's dead-letter count when the alert module provides it, else None."""
    count = getattr(alert, "dead_letter_count", None)
    if count is None:
        return None
    try:
        return int(count(args))
    except Exception:  # pylint: disable=broad-except  # status shows what it can
        return None


def watcher(args):
    """What watches the heartbeat: its last run, the metrics file, the host's dead man's switch targets."""
    try:
        recorded = heartbeat.run_status(args)
        targets = deadman.status(args, scope="host")
    except Exception as exc:  # pylint: disable=broad-except  # status shows what it can
        return {"last_run": None, "duration": None, "metrics": {}, "deadman": [],
                "settings_error": "cannot read the heartbeat's records: %s" % alert.scrub(exc)}
    _settings, problem = heartbeat.load_settings(args)
    return {"last_run": recorded.get("finished"), "duration": recorded.get("duration"),
            "metrics": recorded.get("metrics") or {}, "deadman": targets,
            "settings_error": alert.scrub(problem) if problem else None}


def _cmd_status(args):
    rows = collect(args)
    dead = dead_letter(args)
    watch = watcher(args)
    notes = agentops_status.watcher_lines(watch, rows, now=time.time()) + recovery.status_lines(rows)
    fmt = "json" if getattr(args, "json", False) else getattr(args, "format", "table")
    if fmt == "json":
        for row in rows:
            row["dead_letter"] = dead
            row["watcher"] = watch
        sys.stdout.write(json.dumps(rows, indent=2, sort_keys=True) + "\n")
        return 0
    if fmt in ("markdown", "html"):
        host = getattr(args, "host", None) or socket.gethostname()
        sys.stdout.write(agentops_status.fleet_report(agentops_status.agent_rows(host, rows), fmt, notes=notes))
        return 0
    host_alerts = [a for a in alert.open_alerts(args) if not a.get("agent")]
    sys.stdout.write(agentops_status.host_table(rows, host_alerts, dead, notes=notes))
    lines = [schedule.status_line(row) for row in rows if row.get("schedule")]
    if lines:
        sys.stdout.write("\nScheduled agents:\n" + "".join("  %s\n" % line for line in lines))
    return 0


def add_parser(subparsers):
    parser = subparsers.add_parser("status", help="one table of every agent of the host")
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="table (default), json (one object per agent), or the fleet report's markdown or html")
    parser.add_argument("--json", action="store_true", help="the same as --format json")
    parser.add_argument("--host", default=None,
                        help="the host name shown in the markdown and html reports (default: this host's name)")
    parser.set_defaults(func=_cmd_status)
