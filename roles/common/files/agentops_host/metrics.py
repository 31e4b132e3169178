"""Prometheus metrics of the heartbeat: ``agentops.prom`` for node_exporter's textfile collector.

Every heartbeat run writes ``<agentops_metrics_textfile_dir>/agentops.prom`` (from heartbeat.json;
empty: off) atomically: a temporary file created next to it (``O_EXCL|O_NOFOLLOW``, a name
node_exporter ignores as it does not end in ``.prom``), written, fsync'ed and renamed over it
through a directory fd (``agentops_lib.agentops_safefile.replace_file``), mode 0644. A missing
directory is skipped (recorded for ``agentops status``), never a failed run.

The metric names are fixed (DESIGN.md); per-agent series carry the label ``agent``:

  agentops_agent_up{agent}                                  1 running (or a scheduled agent whose
                                                            last run succeeded), else 0
  agentops_agent_restarts_total{agent}                      systemd's NRestarts of the unit
  agentops_agent_progress_age_seconds{agent}                seconds since the last progress
                                                            (only while known)
  agentops_agent_auth_ok{agent,check}                       1 when the last auth check passed
  agentops_agent_rotation_due_timestamp_seconds{agent,credential}
  agentops_open_alerts{severity}                            open alerts of the host
  agentops_heartbeat_last_run_timestamp_seconds             end of this run (epoch)
  agentops_heartbeat_duration_seconds                       how long this run took

Text exposition format 0.0.4: one HELP and one TYPE line per metric, label values escaped
(backslash, double quote, newline), values as Go's strconv would print them.
"""
import errno
import math
import os

from agentops_lib import agentops_safefile as safefile

FILE_NAME = "agentops.prom"
FILE_MODE = 0o644

# (name, type, help) in the order they are written.
METRICS = (
    ("agentops_agent_up", "gauge",
     "1 when the agent's unit runs (or a scheduled agent's last run succeeded), else 0."),
    ("agentops_agent_restarts_total", "counter", "Restarts of the agent's unit by systemd (NRestarts)."),
    ("agentops_agent_progress_age_seconds", "gauge", "Seconds since the agent's last sign of progress."),
    ("agentops_agent_auth_ok", "gauge", "1 when the agent's last auth check passed, else 0."),
    ("agentops_agent_rotation_due_timestamp_seconds", "gauge",
     "When the credential's next token rotation is due (Unix time)."),
    ("agentops_open_alerts", "gauge", "Open (firing) alerts of the host by severity."),
    ("agentops_heartbeat_last_run_timestamp_seconds", "gauge", "End of the last heartbeat run (Unix time)."),
    ("agentops_heartbeat_duration_seconds", "gauge", "Duration of the last heartbeat run in seconds."),
)
NAMES = tuple(m[0] for m in METRICS)
SEVERITIES = ("critical", "warning", "info")


def escape_label(value):
    """A label value for the text format: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(value):
    """HELP text: backslash and newline escaped."""
    return str(value).replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def render(samples):
    """The file's text from ``samples``: {metric name: [(labels dict, value)]}; every metric gets its
    HELP and TYPE lines, also without samples. Unknown names raise ValueError."""
    unknown = set(samples) - set(NAMES)
    if unknown:
        raise ValueError("unknown metric(s): %s" % ", ".join(sorted(unknown)))
    lines = []
    for name, kind, text in METRICS:
        lines.append("# HELP %s %s" % (name, escape_help(text)))
        lines.append("# TYPE %s %s" % (name, kind))
        for labels, value in samples.get(name) or []:
            if value is None:
                continue
            shown = ",".join('%s="%s"' % (key, escape_label(labels[key])) for key in sorted(labels))
            lines.append("%s%s %s" % (name, "{%s}" % shown if shown else "", format_value(value)))
    return "\n".join(lines) + "\n"


def write(directory, text):
    """Write ``text`` as ``<directory>/agentops.prom`` atomically. Returns (status, detail): status is
    ``written``, ``off`` (no directory configured), ``missing`` (the directory does not exist: skipped)
    or ``error`` (detail says why; the run carries on)."""
    if not directory:
        return "off", "agentops_metrics_textfile_dir is empty"
    try:
        dir_fd = safefile.open_dir(directory)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "missing", "%s does not exist: metrics not written" % directory
        return "error", "%s cannot be opened: %s" % (directory, exc.strerror or exc)
    except (safefile.UnsafeEntry, ValueError) as exc:
        return "error", str(exc)
    try:
        safefile.replace_file(dir_fd, FILE_NAME, text.encode("utf-8"), FILE_MODE, uid=0 if os.geteuid() == 0 else None,
                              gid=0 if os.geteuid() == 0 else None)
    except OSError as exc:
        return "error", "%s/%s cannot be written: %s" % (directory, FILE_NAME, exc.strerror or exc)
    finally:
        os.close(dir_fd)
    return "written", os.path.join(directory, FILE_NAME)
