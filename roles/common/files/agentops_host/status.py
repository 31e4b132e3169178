"""``agentops status``: one table (or ``--json``) for the host.

JSON: a list with one object per agent: agent, unit, active_state, sub_state, uptime_seconds,
restarts, last_progress_age_seconds, last_check (epoch of the last heartbeat run), auth (the last
auth check results or null), next_rotation (from ``agentops_host.rotate.next_due`` when
installed, else null) and open_alerts (key, severity, title, since).
"""
import json
import sys
import time

from agentops_host import alert
from agentops_host import config as hostconfig
from agentops_host import heartbeat
from agentops_host import systemd


def _open_alert_view(item):
    return {"key": item.get("key"), "severity": item.get("severity"), "title": item.get("title"),
            "since": alert._iso(item.get("first_seen"))}


def agent_status(args, agent, now=None):
    now = now if now is not None else time.time()
    name = agent["name"]
    props = systemd.show(agent["unit"])
    hbstate = heartbeat.load_state(args, name)
    seen = heartbeat.last_progress(agent, props, hbstate, now=now) if props.get("ActiveState") == "active" else None
    next_due = heartbeat._optional("rotate", "next_due")
    next_rotation = None
    if next_due is not None:
        try:
            next_rotation = next_due(args, agent)
        except Exception as exc:  # pylint: disable=broad-except
            next_rotation = "error: %s" % alert.scrub(exc)
    uptime = systemd.uptime_seconds(props)
    return {
        "agent": name,
        "unit": agent["unit"],
        "active_state": props.get("ActiveState", "unknown"),
        "sub_state": props.get("SubState", "unknown"),
        "uptime_seconds": int(uptime) if uptime is not None else None,
        "restarts": systemd.as_int(props.get("NRestarts"), 0),
        "last_progress_age_seconds": int(now - seen) if seen else None,
        "last_check": hbstate.get("last_check"),
        "auth": hbstate.get("auth"),
        "next_rotation": next_rotation,
        "open_alerts": [_open_alert_view(a) for a in alert.open_alerts(args, agent=name)],
    }


def collect(args):
    rows = []
    for name in hostconfig.agent_names(args.config_dir):
        agent = hostconfig.load_agent(args.config_dir, name)
        if agent.get("state", "present") != "present":
            continue
        rows.append(agent_status(args, agent))
    return rows


def _age(value):
    if value is None:
        return "-"
    value = int(value)
    if value < 120:
        return "%ds" % value
    if value < 7200:
        return "%dm" % (value // 60)
    if value < 172800:
        return "%dh" % (value // 3600)
    return "%dd" % (value // 86400)


def _auth_text(auth):
    if not auth:
        return "-"
    worst = [a["status"] for a in auth if a.get("status") != "AUTH_OK"]
    return worst[0] if worst else "AUTH_OK"


def render_table(rows, host_alerts):
    header = ("AGENT", "ACTIVE", "UPTIME", "RESTARTS", "PROGRESS", "AUTH", "NEXT ROTATION", "ALERTS")
    lines = [header]
    for row in rows:
        alerts = ",".join("%s:%s" % (a["severity"], a["key"].split("/", 1)[-1]) for a in row["open_alerts"]) or "-"
        lines.append((row["agent"], "%s/%s" % (row["active_state"], row["sub_state"]), _age(row["uptime_seconds"]),
                      str(row["restarts"]), _age(row["last_progress_age_seconds"]), _auth_text(row["auth"]),
                      str(row["next_rotation"] or "-"), alerts))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines]
    if not rows:
        out.append("(no agents configured)")
    for item in host_alerts:
        out.append("host alert: %s %s: %s" % (item.get("severity"), item.get("key"), item.get("title")))
    return "\n".join(out) + "\n"


def _cmd_status(args):
    rows = collect(args)
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2, sort_keys=True) + "\n")
        return 0
    host_alerts = [a for a in alert.open_alerts(args) if not a.get("agent")]
    sys.stdout.write(render_table(rows, host_alerts))
    return 0


def add_parser(subparsers):
    parser = subparsers.add_parser("status", help="one table of every agent of the host")
    parser.add_argument("--json", action="store_true", help="machine-readable output (a list, one object per agent)")
    parser.set_defaults(func=_cmd_status)
