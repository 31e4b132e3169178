# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)
"""How agent status is shown: the one formatter of ``agentops status`` and ``playbooks/status.yml``.

Standard library only: installed on managed hosts as ``agentops_lib.agentops_status`` (the
``agentops status --format`` output of one host) and used on the controller by the
``agentops.fleet.status_fleet_rows`` and ``status_report`` filters (the fleet report built from
every host's ``agentops status --json``). Both paths call the same functions, so a row looks the
same whichever of them printed it.

Input rows are the objects of ``agentops status --json`` (agent, active_state, sub_state,
uptime_seconds, restarts, last_progress_age_seconds, auth, next_rotation, open_alerts, error).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

FORMATS = ("table", "text", "markdown", "html")
# (key, title in the text table, title in the Markdown / HTML reports)
FLEET_COLUMNS = (
    ("host", "HOST", "host"),
    ("agent", "AGENT", "agent"),
    ("state", "STATE", "state"),
    ("restarts", "RESTARTS", "restarts"),
    ("progress", "LAST PROGRESS", "last progress"),
    ("auth", "AUTH", "auth"),
    ("next_rotation", "NEXT ROTATION", "next rotation"),
    ("alerts", "OPEN ALERTS", "open alerts"),
)
# The table of one host (`agentops status` without --format).
HOST_COLUMNS = ("AGENT", "ACTIVE", "UPTIME", "RESTARTS", "PROGRESS", "AUTH", "NEXT ROTATION", "ALERTS")
MANAGED = "Managed by Ansible (agentops.fleet status.yml): generated report, changes are overwritten."
STDERR_DETAIL_MAX = 120


def age(value):
    """Seconds as the shortest readable age: 59s, 119s, 2m, 119m, 2h, 47h, 2d; None as '-'."""
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


def auth_text(auth):
    """The worst of the last auth results: the first status that is not AUTH_OK, else AUTH_OK; '-' without any."""
    if not auth:
        return "-"
    worst = [str(a.get("status")) if isinstance(a, dict) else "?" for a in auth
             if not isinstance(a, dict) or a.get("status") != "AUTH_OK"]
    return worst[0] if worst else "AUTH_OK"


def _alert_marks(alerts):
    return ["%s:%s" % (a.get("severity"), str(a.get("key")).split("/", 1)[-1])
            for a in alerts or [] if isinstance(a, dict)]


def _text(value):
    return "-" if value is None else str(value)


def agent_cells(host, row):
    """The display cells of one agent row of ``agentops status --json`` (FLEET_COLUMNS keys)."""
    marks = _alert_marks(row.get("open_alerts"))
    return {
        "host": str(host),
        "agent": _text(row.get("agent")),
        "state": "%s/%s" % (row.get("active_state"), row.get("sub_state")),
        "restarts": _text(row.get("restarts")),
        "progress": age(row.get("last_progress_age_seconds")),
        "auth": auth_text(row.get("auth")),
        "next_rotation": str(row.get("next_rotation") or "-"),
        "alerts": ("%d %s" % (len(marks), ",".join(marks))) if marks else "-",
    }


def host_row(host, state):
    """The one row of a host that shows no agent (unreachable, not provisioned, an error, no agents)."""
    return {"host": str(host), "agent": "-", "state": state, "restarts": "-", "progress": "-", "auth": "-",
            "next_rotation": "-", "alerts": "-"}


def fleet_rows_of_host(host, stat, cmd):
    """The rows of one host from status.yml's results: ``stat`` of the command (None: the host did not
    answer) and the ``agentops status --json`` command result (without ``rc``: it did not run)."""
    cmd = cmd or {}
    if not stat:
        return [host_row(host, "unreachable")]
    if not stat.get("exists"):
        return [host_row(host, "not provisioned")]
    if cmd.get("rc") is None:
        return [host_row(host, "not provisioned (%s is not executable)" % stat.get("path"))]
    if cmd["rc"] != 0:
        detail = (cmd.get("stderr") or "").strip().split("\n")[-1][:STDERR_DETAIL_MAX]
        return [host_row(host, "error: exit %s%s" % (cmd["rc"], (": " + detail) if detail else ""))]
    try:
        agents = json.loads(cmd.get("stdout") or "")
    except ValueError:
        agents = None
    if not isinstance(agents, list) or not all(isinstance(a, dict) for a in agents):
        return [host_row(host, "error: agentops status --json did not print a JSON list")]
    return agent_rows(host, agents)


def agent_rows(host, agents):
    """The rows of one host's agents (objects of ``agentops status --json``); a row "no agents" without any."""
    if not agents:
        return [host_row(host, "no agents")]
    return [agent_cells(host, agent) for agent in agents]


def aligned(rows):
    """Rows of cells as lines of left-aligned columns, two spaces apart, no trailing blanks."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def _escape_html(value):
    return (str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&#39;").replace('"', "&#34;"))


def _bad(key, value):
    return ((key == "state" and not value.startswith("active")) or (key == "auth" and value not in ("-", "AUTH_OK"))
            or (key == "alerts" and value != "-"))


def fleet_table(rows):
    """The fleet as an aligned text table with a count line (the status.yml output)."""
    table = [[title for _key, title, _md in FLEET_COLUMNS]]
    table += [[row[key] for key, _title, _md in FLEET_COLUMNS] for row in rows]
    lines = aligned(table)
    hosts = []
    for row in rows:
        if row["host"] not in hosts:
            hosts.append(row["host"])
    lines.append("%d host(s), %d agent(s)" % (len(hosts), len([r for r in rows if r["agent"] != "-"])))
    return "\n".join(lines)


def _since(value, now):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or now is None:
        return "never"
    return "%s ago" % age(max(0, now - value))


def watcher_lines(watcher, rows=(), now=None):
    """Lines about what watches the heartbeat itself: its last run, the Prometheus textfile and every dead
    man's switch target (the host's from ``watcher``, each agent's from its row's ``deadman``).

    ``watcher``: ``{last_run, duration, metrics: {status, detail}, deadman: [...], settings_error}`` as
    ``agentops status --json`` shows it; targets are shown as ``<type> <host>`` only (their URLs hold tokens).
    """
    if not isinstance(watcher, dict):
        return []
    lines = []
    last = watcher.get("last_run")
    duration = watcher.get("duration")
    lines.append("heartbeat: last run %s%s" % (_since(last, now), (" (%.2fs)" % duration)
                                               if isinstance(duration, (int, float)) else ""))
    if watcher.get("settings_error"):
        lines.append("heartbeat settings: %s" % watcher["settings_error"])
    found = watcher.get("metrics") or {}
    if found:
        status = found.get("status")
        text = {"written": "written to %s", "off": "off (%s)", "missing": "SKIPPED: %s",
                "error": "ERROR: %s"}.get(status, str(status) + ": %s")
        lines.append("metrics: " + text % found.get("detail"))
    targets = [("host", t) for t in watcher.get("deadman") or [] if isinstance(t, dict)]
    for row in rows or []:
        if isinstance(row, dict):
            targets += [("agent %s" % row.get("agent"), t) for t in row.get("deadman") or [] if isinstance(t, dict)]
    for scope, target in targets:
        if target.get("ok"):
            state = "ok (%s %s, %s)" % (target.get("last_kind"), target.get("detail"),
                                        _since(target.get("last_attempt_at"), now))
        elif target.get("last_attempt_at") is None:
            state = "not pinged yet"
        else:
            state = "FAILING: %s ping %s: %s (%d failure(s) in a row; last success %s)" % (
                target.get("last_kind"), _since(target.get("last_attempt_at"), now), target.get("error") or
                target.get("detail"), int(target.get("failures") or 0), _since(target.get("last_ok_at"), now))
        lines.append("dead man's switch (%s) %s: %s" % (scope, target.get("target"), state))
    return lines


def fleet_notes_of_host(host, cmd, now=None):
    """The watcher lines of one host for the fleet report, each prefixed with the host: its heartbeat's last
    run, metrics file, dead man's switch targets (``watcher_lines``) and its dead-letter count, from the
    ``agentops status --json`` result ``cmd`` (the same ``watcher`` and ``dead_letter`` are in every row).
    A host that did not answer, failed, or has no agents has no lines (its row already says so)."""
    cmd = cmd or {}
    if cmd.get("rc") != 0:
        return []
    try:
        agents = json.loads(cmd.get("stdout") or "")
    except ValueError:
        return []
    if not isinstance(agents, list) or not agents or not all(isinstance(a, dict) for a in agents):
        return []
    lines = watcher_lines(agents[0].get("watcher"), agents, now=now)
    dead = agents[0].get("dead_letter")
    if isinstance(dead, int) and not isinstance(dead, bool) and dead > 0:
        lines.append("dead-letter alerts: %d (given up on; see the alert spool's dead-letter folder)" % dead)
    return ["%s: %s" % (host, line) for line in lines]


def fleet_report(rows, fmt="table", generated=None, notes=None):
    """The fleet rows as ``table`` (aligned text), ``text`` (a report: title line and table),
    ``markdown`` or ``html``. ``generated``: the time shown in reports (default: now, UTC).
    ``notes``: lines shown under the table (``watcher_lines``), in a "Watchers" section of the reports."""
    if fmt not in FORMATS:
        raise ValueError("unknown format %r (known: %s)" % (fmt, ", ".join(FORMATS)))
    notes = [str(n) for n in notes or []]
    if fmt == "table":
        return fleet_table(rows) + "".join("\n" + n for n in notes)
    if generated is None:
        import time  # pylint: disable=import-outside-toplevel
        generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if fmt == "text":
        return "agentops fleet status, %s\n\n%s\n%s" % (generated, fleet_table(rows), "".join(n + "\n" for n in notes))
    if fmt == "markdown":
        out = ["<!-- %s -->" % MANAGED, "# agentops fleet status", "", "Generated %s." % generated, "",
               "| %s |" % " | ".join(md for _key, _title, md in FLEET_COLUMNS),
               "| --- | --- | --- | ---: | ---: | --- | --- | --- |"]
        for row in rows:
            out.append("| %s |" % " | ".join(row[key].replace("|", "\\|") for key, _title, _md in FLEET_COLUMNS))
        if notes:
            out += ["", "## Watchers", ""] + ["- %s" % n.replace("|", "\\|") for n in notes]
        return "\n".join(out) + "\n"
    out = ["<!DOCTYPE html>", "<!-- %s -->" % MANAGED, '<html lang="en">', "<head>", '<meta charset="utf-8">',
           "<title>agentops fleet status</title>", "<style>", "  body { font-family: sans-serif; }",
           "  table { border-collapse: collapse; }",
           "  th, td { border: 1px solid #999; padding: 0.2em 0.6em; text-align: left; }",
           "  td.bad { color: #b00; font-weight: bold; }", "</style>", "</head>", "<body>",
           "<h1>agentops fleet status</h1>", "<p>Generated %s.</p>" % _escape_html(generated), "<table>",
           "<tr>%s</tr>" % "".join("<th>%s</th>" % md for _key, _title, md in FLEET_COLUMNS)]
    for row in rows:
        out.append("<tr>%s</tr>" % "".join(
            "<td%s>%s</td>" % (' class="bad"' if _bad(key, row[key]) else "", _escape_html(row[key]))
            for key, _title, _md in FLEET_COLUMNS))
    out.append("</table>")
    if notes:
        out += ["<h2>Watchers</h2>", "<ul>"] + ["<li>%s</li>" % _escape_html(n) for n in notes] + ["</ul>"]
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def host_table(rows, host_alerts=None, dead=None, notes=None):
    """The table of one host (``agentops status``): agents, broken agents, host alerts, dead-letter count,
    and ``notes`` (``watcher_lines``)."""
    lines = [HOST_COLUMNS]
    for row in rows:
        alerts = ",".join(_alert_marks(row.get("open_alerts"))) or "-"
        lines.append((_text(row.get("agent")), "%s/%s" % (row.get("active_state"), row.get("sub_state")),
                      age(row.get("uptime_seconds")), _text(row.get("restarts")),
                      age(row.get("last_progress_age_seconds")), auth_text(row.get("auth")),
                      str(row.get("next_rotation") or "-"), alerts))
    out = aligned(lines)
    if not rows:
        out.append("(no agents configured)")
    for row in rows:
        if row.get("error"):
            out.append("broken agent %s: %s" % (row.get("agent"), row["error"]))
    for item in host_alerts or []:
        out.append("host alert: %s %s: %s" % (item.get("severity"), item.get("key"), item.get("title")))
    if dead is not None:
        out.append("dead-letter alerts: %d%s" % (dead, " (given up on; see the alert spool's dead-letter folder)"
                                                  if dead else ""))
    out.extend(str(n) for n in notes or [])
    return "\n".join(out) + "\n"
