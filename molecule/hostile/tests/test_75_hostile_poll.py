"""Item 2: a hostile poll command runs in its agent's own sandbox and cannot hold the heartbeat.

The agent `poller` (added for this file, removed at its end) has `heartbeat.progress: command` with a poll
command (files/hostile-poll, run by the heartbeat on every tick) that plants a ~/.curlrc, writes to /dev/shm and
/run/lock, prints a line forged to look like the collection's own (`agentops[1]: heartbeat victim: auth check
api OK`) and leaves a child in a new session that ignores SIGTERM, holds the poll's pipes and sends that forged
line to the journal once a second. Then, on each host:

* the poll ran as the agent's user with the agent's own sandbox: NoNewPrivileges, the same seccomp filter and
  the same (empty) capability sets as the agent's main process, /run/lock read-only, /dev/shm exactly as private
  as the agent's own (the host's while the agents' profile shares it, a private one once it gives each agent its
  own), its state directory as working directory and HOME, a fixed environment without a journal stream, its
  arguments as written (`$HOME` not expanded);
* the escaped child is gone within the transient unit's stop timeout after the poll exits;
* the heartbeat keeps its pace: the timer (3 s tick) starts the next run of agentops-heartbeat.service one tick
  after a run's work is done, also after the runs that ran the poll (nothing holds the unit in its stop), and
  the poll's own unit is stopped within its 5 s stop timeout of the poll's exit, the escaped child with it;
* no alert quotes the forged line and the heartbeat unit never fails; the forged lines in the journal belong to
  the poll's transient unit and the agent's user (what an alert's journal excerpt is chosen by), or, when the
  sender was killed before journald read the line, to no unit at all;
* the heartbeat unit itself has NoNewPrivileges=yes, a short TimeoutStopSec= and a lower exposure.
"""
import json
import re
import time

import pytest

from hostile_helpers import (API, all_hosts, fleet_run, host_name, now, prop, records, scenario_agents, sh,
                             webhook)

POLL = "/opt/agentops-test/hostile-poll"
HOME = "/var/lib/agentops/poller"
EV = HOME + "/poll-evidence"
POLL_UNIT = "agentops-heartbeat-poll-poller.service"
HEARTBEAT = "agentops-heartbeat.service"
FORGED = "heartbeat victim: auth check api OK"
MARKERS = ("/dev/shm/agentops-poll-marker", "/run/lock/agentops-poll-marker")
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STOP = 5.0           # TimeoutStopSec= of the poll's transient unit (agentops_host.sandbox.STOP_TIMEOUT)
GONE = STOP + 10.0   # the escaped child is gone this long after it started, at the latest
STOP_SLACK = 3.0     # systemd noticing the exit and killing what is left, on a loaded machine
POLL_TIMEOUT = 60.0  # the poll's timeout: half of max_silence (1h), at most 60 s
RUNNER_SLACK = 10.0  # agentops_host.sandbox.SLACK: the runner's own deadline past the timeout and the stop
POLL_INTERVAL = "3s"  # the poller's heartbeat interval: every heartbeat run polls
TICK = 3.0           # agentops_heartbeat_tick of the scenario (OnUnitActiveSec=)
START_SLACK = 5.0    # the timer firing and systemd starting the unit, on a loaded machine
RUN_JSON = "/var/lib/agentops/.heartbeat/run.json"
RUNS = 3             # polls watched
WATCH = 300          # the fixture waits at most this long for them (a stuck heartbeat shows as a long gap)
DEADLINE = 300       # a converge of the agents role on both hosts
EXPOSURE_MAX = 4.0   # systemd-analyze security of agentops-heartbeat.service (8.9 with no sandbox)
STARTING = "7d4958e842da4a758f6c1cdc7b36dcc5"   # MESSAGE_ID of systemd's "Starting <unit>..."


def poller(state="present"):
    return {"name": "poller", "command": "/opt/agentops-test/hostile-agent poller", "state": state,
            "description": "agentops test agent poller (its poll command attacks)",
            "heartbeat": {"interval": POLL_INTERVAL, "max_silence": "1h", "progress": "command",
                          "command": "%s '$HOME' second" % POLL}}


def lines(host, command):
    return host.run(command).stdout.splitlines()


def keyvalues(host, path):
    return dict(line.split("=", 1) for line in lines(host, "cat %s 2>/dev/null" % path) if "=" in line)


def status_fields(host, path):
    return dict((k, v.strip()) for k, v in (line.split(":", 1) for line in lines(host, "cat %s 2>/dev/null" % path)
                                            if ":" in line))


def poll_times(host):
    return [float(t) for t in lines(host, "cat %s/runs.log 2>/dev/null" % EV) if t.strip()]


def heartbeat_starts(host, since):
    out = host.run("journalctl -q --no-pager -o json --since=@%d _PID=1 UNIT=%s MESSAGE_ID=%s"
                   % (int(since), HEARTBEAT, STARTING)).stdout
    return sorted(int(json.loads(line)["__REALTIME_TIMESTAMP"]) / 1e6 for line in out.splitlines() if line.strip())


def children(host):
    found = []
    for line in lines(host, "cat %s/children.log 2>/dev/null" % EV):
        pid, _, started = line.partition(" ")
        if pid.isdigit():
            found.append((int(pid), float(started)))
    return found


def alive(host, pid):
    return host.run("kill -0 %d" % pid).rc == 0


def end_children(host):
    """Kill what this file's poll command left behind (its children, by their recorded pids and owner)."""
    for pid, _started in children(host):
        if host.run("ps -o user= -p %d" % pid).stdout.strip() == "agent-poller":
            host.run("kill -KILL %d" % pid)


def clean(host):
    end_children(host)
    sh(host, "rm -rf %s; rm -f %s" % (EV, " ".join(MARKERS)))


def done_watching(host, since):
    """RUNS polls happened, and the heartbeat started again after the last of them."""
    polls = poll_times(host)
    return len(polls) >= RUNS and any(s > polls[RUNS - 1] for s in heartbeat_starts(host, since))


def sample_run(host, finished):
    """Record the heartbeat's last run ({started: finished}, from its run.json, rewritten at the end of each run)."""
    text = host.run("cat %s 2>/dev/null" % RUN_JSON).stdout
    try:
        record = json.loads(text)
    except ValueError:
        return
    if isinstance(record.get("started"), (int, float)) and isinstance(record.get("finished"), (int, float)):
        finished[record["started"]] = record["finished"]


def track_children(host, deaths):
    """Record in ``deaths`` ({pid: seconds from its start to the first check that found it gone})."""
    for pid, started in children(host):
        if pid not in deaths and not alive(host, pid):
            deaths[pid] = now(host) - started


def evidence(host, since, deaths, finished):
    """What one host shows after the attack started at ``since`` (the tests judge it)."""
    seen = {"since": since, "finished": dict(finished), "polls": poll_times(host),
            "exits": [float(t) for t in lines(host, "cat %s/exits.log 2>/dev/null" % EV) if t.strip()], "starts": heartbeat_starts(host, since),
            "run": keyvalues(host, EV + "/run"), "status": status_fields(host, EV + "/status"),
            "env": lines(host, "cat %s/env 2>/dev/null" % EV), "children": children(host), "deaths": dict(deaths),
            "uid": host.check_output("id -u agent-poller")}
    # what the agent's own main process recorded of its sandbox (files/hostile-agent)
    seen["agent_status"] = status_fields(host, HOME + "/agent-status")
    seen["agent_shm_dev"] = host.run("cat %s/agent-shm-dev" % HOME).stdout.strip()
    seen["host_shm_dev"] = host.check_output("stat -c %d /dev/shm")
    seen["markers"] = dict((m, host.file(m).exists) for m in MARKERS)
    seen["curlrc"] = host.run("cat %s/.curlrc" % HOME).stdout
    seen["alerts"] = webhook(host, since)
    seen["api_paths"] = [r["path"] for r in records(host, API, since)]
    seen["heartbeat_journal"] = host.run("journalctl -q --no-pager -o cat --since=@%d -u %s"
                                         % (int(since), HEARTBEAT)).stdout
    seen["forged_entries"] = [json.loads(line) for line in host.run(
        "journalctl -q --no-pager -o json --since=@%d SYSLOG_IDENTIFIER=agentops SYSLOG_PID=1"
        % int(since)).stdout.splitlines() if line.strip()]
    seen["poll_unit_started"] = host.run("journalctl -q --no-pager -o cat --since=@%d -u %s"
                                         % (int(since), POLL_UNIT)).stdout
    # systemd's own lines about the poll's unit: when each was started and when it was done
    seen["poll_unit_events"] = [(int(e["__REALTIME_TIMESTAMP"]) / 1e6, e.get("MESSAGE", "")) for e in (
        json.loads(line) for line in host.run("journalctl -q --no-pager -o json --since=@%d _PID=1 UNIT=%s"
                                              % (int(since), POLL_UNIT)).stdout.splitlines() if line.strip())]
    return seen


def holds(starts, finished):
    """For each heartbeat run whose end was seen: the time from the end of its work (run.json "finished") to the
    timer's next start. A child left in the heartbeat's own unit holds the unit for its whole stop timeout here."""
    found = []
    for started, done in sorted(finished.items()):
        after = [s for s in starts if s > done]
        if after:
            found.append(after[0] - done)
    return found


def poll_units(events):
    """(start, end) of each run of the poll's unit: systemd's "Starting" and its result."""
    found, begun = [], None
    for stamp, message in events:
        if message.startswith("Starting"):
            begun = stamp
        elif begun is not None and ("Failed with result" in message or "Deactivated successfully" in message
                                    or "Succeeded" in message):
            found.append((begun, stamp))
            begun = None
    return found


def stops(units, exits):
    """For each run of the poll's unit: from the poll command's exit to the unit's end (its stop)."""
    found = []
    for begun, ended in units:
        exited = [e for e in exits if begun <= e <= ended]
        if exited:
            found.append(ended - exited[-1])
    return found


@pytest.fixture(scope="module")
def attack():
    hosts = all_hosts()
    for host in hosts:
        clean(host)
    since = dict((host_name(h), now(h)) for h in hosts)
    rc, output, _recaps, _seconds = fleet_run("agents.yml", DEADLINE,
                                              extra_vars={"agentops_agents": scenario_agents() + [poller()]})
    seen = {}
    try:
        assert rc == 0, "the agents role did not add the poller agent:\n%s" % output[-3000:]
        deaths = dict((host_name(h), {}) for h in hosts)
        finished = dict((host_name(h), {}) for h in hosts)
        deadline = time.monotonic() + WATCH
        while time.monotonic() < deadline:
            for host in hosts:
                track_children(host, deaths[host_name(host)])
                sample_run(host, finished[host_name(host)])
            if all(done_watching(h, since[host_name(h)]) for h in hosts):
                break
            time.sleep(0.5)
        # the children of the polls seen so far: until each is gone, or long past its deadline (the poller goes on
        # polling meanwhile; its later children are not judged)
        judged = dict((host_name(h), [pid for pid, _t in children(h)]) for h in hosts)
        deadline = time.monotonic() + GONE + 30
        while time.monotonic() < deadline:
            for host in hosts:
                track_children(host, deaths[host_name(host)])
                sample_run(host, finished[host_name(host)])
            if all(set(judged[host_name(h)]) <= set(deaths[host_name(h)]) for h in hosts):
                break
            time.sleep(0.5)
        for host in hosts:
            seen[host_name(host)] = evidence(host, since[host_name(host)], deaths[host_name(host)],
                                             finished[host_name(host)])
            seen[host_name(host)]["judged"] = judged[host_name(host)]
    finally:
        fleet_run("agents.yml", DEADLINE, extra_vars={"agentops_agents": scenario_agents() + [poller("absent")]})
        for host in hosts:
            end_children(host)
            host.run("rm -f %s" % " ".join(MARKERS))
    return seen


def test_the_poll_ran_as_the_agent_user_inside_the_agents_own_sandbox(host, attack):
    seen = attack[host_name(host)]
    assert len(seen["polls"]) >= RUNS, "the heartbeat ran the poll command %d time(s)" % len(seen["polls"])
    poll, agent = seen["status"], seen["agent_status"]
    assert poll["Uid"].split()[0] == seen["uid"] and seen["run"]["uid"] == seen["uid"]
    assert poll["NoNewPrivs"] == "1" and poll["Seccomp"] == "2", poll
    for field in ("NoNewPrivs", "Seccomp", "Seccomp_filters", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert poll[field] == agent[field], "%s: poll %s, agent %s" % (field, poll[field], agent[field])
    assert int(poll["CapBnd"], 16) == 0 and int(poll["CapEff"], 16) == 0
    assert seen["run"]["cwd"] == seen["run"]["home"] == HOME
    assert seen["run"]["arg1"] == "$HOME"            # the command line as written, nothing expanded
    env = dict(line.split("=", 1) for line in seen["env"] if "=" in line)
    assert env["PATH"] == SAFE_PATH and env["AGENTOPS_AGENT"] == "poller" and env["USER"] == "agent-poller"
    assert not set(env) & {"JOURNAL_STREAM", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "LISTEN_FDS"}, sorted(env)
    assert "Started" in seen["poll_unit_started"], "no transient unit %s in the journal" % POLL_UNIT


def test_run_lock_is_read_only_and_dev_shm_is_as_private_as_the_agents_own(host, attack):
    seen = attack[host_name(host)]
    assert seen["run"]["runlock_write"] == "no" and not seen["markers"]["/run/lock/agentops-poll-marker"]
    # The poll's /dev/shm is the agent's kind of /dev/shm: shared with the host exactly when the agent's own is.
    agent_private = seen["agent_shm_dev"] != seen["host_shm_dev"]
    poll_private = seen["run"]["shm_dev"] != seen["host_shm_dev"]
    assert poll_private == agent_private, seen["run"]
    if agent_private:
        assert not seen["markers"]["/dev/shm/agentops-poll-marker"]


def test_the_escaped_child_is_gone_after_the_deadline(host, attack, capsys):
    seen = attack[host_name(host)]
    pids = seen["judged"]
    assert len(pids) >= RUNS, "the poll command left %d child(ren) (the attack did not run)" % len(pids)
    missing = [pid for pid in pids if pid not in seen["deaths"]]
    with capsys.disabled():  # the figures are part of the scenario's report, for each image
        print("\nescaped children on %s gone within %s s of their start" % (
            host_name(host), ", ".join("%.1f" % seen["deaths"][pid] for pid in pids if pid in seen["deaths"])))
    assert not missing, "escaped children still running %ds after they started: %s" % (GONE + 30, missing)
    assert max(seen["deaths"].values()) <= GONE
    assert not [pid for pid in pids if alive(host, pid)]


def test_the_heartbeat_keeps_its_pace(host, attack, capsys):
    """The timer starts the next heartbeat run one tick after a run's work is done, the runs that ran the hostile
    poll included: nothing the poll left holds the heartbeat's unit (before: its 90 s stop timeout). And the poll
    costs a run only its own unit's life: its start, the command, the stop of what it left (5 s)."""
    seen = attack[host_name(host)]
    found = holds(seen["starts"], seen["finished"])
    units = poll_units(seen["poll_unit_events"])
    lives = [end - begun for begun, end in units]
    stopped = stops(units, seen["exits"])
    with capsys.disabled():
        print("\nheartbeat on %s: from the end of a run's work to the next start %s s; the poll's unit lived %s s, "
              "stopped %s s after the poll exited" % (host_name(host), ", ".join("%.1f" % g for g in found),
                                                      ", ".join("%.1f" % g for g in lives),
                                                      ", ".join("%.1f" % g for g in stopped)))
    assert len(found) >= RUNS, "only %d heartbeat run(s) seen ending (run.json) and followed by another" % len(found)
    assert max(found) <= TICK + START_SLACK, found
    assert len(units) >= RUNS, "the poll's unit %s ran %d time(s)" % (POLL_UNIT, len(units))
    assert len(stopped) == len(units) and max(stopped) <= STOP + STOP_SLACK, stopped
    assert max(lives) <= POLL_TIMEOUT + STOP + RUNNER_SLACK, lives


def test_no_forged_line_reaches_an_alert_and_the_heartbeat_never_fails(host, attack):
    seen = attack[host_name(host)]
    for alert in seen["alerts"]:
        assert FORGED not in json.dumps(alert), alert
        assert HEARTBEAT not in (alert.get("unit") or ""), alert
    assert FORGED not in seen["heartbeat_journal"]
    assert "Failed with result" not in seen["heartbeat_journal"], seen["heartbeat_journal"][-2000:]


def test_the_forged_lines_belong_to_the_polls_unit_and_the_agents_user(host, attack):
    """Control: the child did log its forged line, and the journal's trusted fields say who wrote it."""
    entries = attack[host_name(host)]["forged_entries"]
    assert entries, "the escaped child logged no forged line (the attack did not run)"
    # a line whose sender was gone before journald read it carries no _SYSTEMD_UNIT at all
    units = set(entry.get("_SYSTEMD_UNIT") for entry in entries)
    assert POLL_UNIT in units and units <= {POLL_UNIT, None}, units
    assert set(entry.get("_UID") for entry in entries) == {attack[host_name(host)]["uid"]}


def test_the_planted_curlrc_is_never_read_by_root(host, attack):
    seen = attack[host_name(host)]
    assert "curlrc-was-read" in seen["curlrc"]                    # planted
    assert not [p for p in seen["api_paths"] if "curlrc-was-read" in p]


def test_the_heartbeat_unit_is_hardened(host, capsys):
    assert prop(host, HEARTBEAT, "NoNewPrivileges") == "yes"
    assert prop(host, HEARTBEAT, "TimeoutStopUSec") == "10s"
    out = host.check_output("systemd-analyze security --no-pager %s", HEARTBEAT)
    level = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    with capsys.disabled():
        print("\nsystemd-analyze security %s on %s: exposure %.1f" % (HEARTBEAT, host_name(host), level))
    assert level <= EXPOSURE_MAX
