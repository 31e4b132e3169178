"""Reading unit state and journal lines through systemctl and journalctl."""
import subprocess
import time

SHOW_PROPERTIES = (
    "Id", "LoadState", "ActiveState", "SubState", "Result", "NRestarts", "MainPID",
    "ActiveEnterTimestamp", "ActiveEnterTimestampMonotonic", "InactiveEnterTimestamp",
    "StateChangeTimestamp", "ExecMainStartTimestamp", "ExecMainStatus", "ExecMainCode",
    "RestartUSec", "UnitFileState",
    # scheduled agents: the start of a run in progress (activating), and their timers
    "InactiveExitTimestampMonotonic", "LastTriggerUSec", "NextElapseUSecRealtime",
    # recovery: when a unit latched at its start limit entered the failed state
    "InactiveEnterTimestampMonotonic",
)

SYSTEMCTL = "systemctl"
JOURNALCTL = "journalctl"


def _run(cmd, timeout=30):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, check=False)


def show(unit, properties=SHOW_PROPERTIES):
    """Return ``systemctl show`` of ``unit`` as a dict (empty dict if systemctl fails)."""
    proc = _run([SYSTEMCTL, "show", "--no-pager", "-p", ",".join(properties), "--", unit])
    result = {}
    if proc.returncode != 0:
        return result
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            result[key] = value
    return result


def as_int(value, default=0):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def monotonic_to_epoch(usec):
    """Convert a CLOCK_MONOTONIC timestamp in microseconds (as systemd prints it) to epoch seconds."""
    usec = as_int(usec)
    if usec <= 0:
        return None
    return time.time() - (time.monotonic() - usec / 1e6)


def uptime_seconds(props):
    """Seconds since the unit entered the active state (None when it is not active)."""
    if props.get("ActiveState") != "active":
        return None
    since = monotonic_to_epoch(props.get("ActiveEnterTimestampMonotonic"))
    if since is None:
        return None
    return max(0.0, time.time() - since)


def journal_tail(unit, lines=20):
    """The last ``lines`` journal lines about ``unit``: its own processes' lines and systemd's messages
    about it, attributed by trusted fields and bounded (``agentops_host.journal.tail``)."""
    from agentops_host import journal  # pylint: disable=import-outside-toplevel  # journal imports this module
    return journal.tail(unit, lines)
