"""Unit tests of what watches the watcher: the dead man's switch pings, the Prometheus textfile, status.

Pings reach a real HTTP server on 127.0.0.1 that records every request (path and query); the
metrics file is parsed with prometheus_client's text parser (the controller side). Unit state comes
from the stand-in systemctl of test_heartbeat.
"""
import http.server
import io
import json
import os
import threading
import time
import urllib.parse

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentops_host import deadman
from agentops_host import heartbeat
from agentops_host import metrics
from agentops_host import status

from test_alert_helpers import make_args, recorder, webhook_channel, write_config  # noqa: F401  (fixture)
from test_heartbeat import add_agent, run_heartbeat, touch, units  # noqa: F401  (fixture)

TOKEN = "s3cr3t-ping-token-CANARY"


class Pings(http.server.ThreadingHTTPServer):
    """Records every GET (path, query); rules: {path substring: (status, delay seconds)}."""
    daemon_threads = True

    def __init__(self):
        self.requests = []
        self.rules = {}
        self.lock = threading.Lock()
        http.server.ThreadingHTTPServer.__init__(self, ("127.0.0.1", 0), _PingHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.server_address[1]

    def paths(self):
        with self.lock:
            return [r["path"] + ("?" + r["query"] if r["query"] else "") for r in self.requests]

    def close(self):
        self.shutdown()
        self.server_close()


class _PingHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def do_GET(self):  # noqa: N802
        path, _sep, query = self.path.partition("?")
        with self.server.lock:
            self.server.requests.append({"path": path, "query": query})
            rule = next((v for k, v in self.server.rules.items() if k in path), (200, 0))
        if rule[1]:
            time.sleep(rule[1])
        try:
            self.send_response(rule[0])
            if 300 <= rule[0] < 400:
                self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")
        except OSError:  # the client gave up (its deadline passed)
            pass


@pytest.fixture
def pings():
    server = Pings()
    yield server
    server.close()


class Log:
    def __init__(self):
        self.lines = []

    def __call__(self, line):
        self.lines.append(line)


def hc(server, name="hc"):
    return {"type": "healthchecks", "url": "%s/%s/%s" % (server.base, name, TOKEN)}


def new_run(args, settings, now, log=None, budget=deadman.BUDGET):
    return deadman.Run(args, dict({"deadman": [], "agents": {}}, **settings), log or Log(), budget=budget, now=now)


# ------------------------------------------------------------------------------------------ URLs
def test_ping_urls_of_every_type():
    base = "https://ping.example/p/" + TOKEN
    hcheck = {"type": "healthchecks", "url": base + "/"}
    assert deadman.ping_url(hcheck, deadman.START) == base + "/start"
    assert deadman.ping_url(hcheck, deadman.SUCCESS) == base + "/"
    assert deadman.ping_url(hcheck, deadman.FAILURE) == base + "/fail"
    kuma = {"type": "uptime_kuma", "url": base + "?status=up&msg=OK&ping="}
    assert deadman.ping_url(kuma, deadman.START) is None
    down = urllib.parse.urlsplit(deadman.ping_url(kuma, deadman.FAILURE, "2 open alert(s): a&b"))
    assert urllib.parse.parse_qs(down.query, keep_blank_values=True) == {
        "status": ["down"], "msg": ["2 open alert(s): a&b"], "ping": [""]}
    cron = {"type": "cronitor", "url": base}
    assert [urllib.parse.parse_qs(urllib.parse.urlsplit(deadman.ping_url(cron, k)).query)["state"]
            for k in (deadman.START, deadman.SUCCESS, deadman.FAILURE)] == [["run"], ["complete"], ["fail"]]
    plain = {"type": "http", "url": base}
    assert deadman.ping_url(plain, deadman.SUCCESS) == base
    assert deadman.ping_url(plain, deadman.FAILURE) is None and deadman.ping_url(plain, deadman.START) is None
    assert deadman.label(hcheck) == "healthchecks ping.example"


# ------------------------------------------------------------------------------ scheduling
def test_success_pings_at_most_once_a_minute_failure_at_once(tmp_path, pings):
    args = make_args(tmp_path)
    target = hc(pings)
    settings = {"deadman": [target]}
    prefix = "/hc/" + TOKEN
    t0 = 1_800_000_000.0

    def one_run(now, ok):
        run = new_run(args, settings, now)
        run.start()
        run.finish(ok, "OK" if ok else "1 critical alert(s) open", {})
        return run

    one_run(t0, True)
    assert pings.paths() == [prefix + "/start", prefix]
    one_run(t0 + 10, True)                       # within the minute: nothing
    one_run(t0 + 30, True)
    assert pings.paths() == [prefix + "/start", prefix]
    one_run(t0 + 40, False)                      # a change to failure: at once
    assert pings.paths()[2:] == [prefix + "/fail"]
    one_run(t0 + 50, False)                      # a lasting failure: not again within the minute
    assert len(pings.paths()) == 3
    one_run(t0 + 101, False)                     # ... but again after it (a run began: /start first)
    assert pings.paths()[3:] == [prefix + "/start", prefix + "/fail"]
    one_run(t0 + 105, True)                      # back to success: at once
    assert pings.paths()[5:] == [prefix]
    one_run(t0 + 150, True)
    assert len(pings.paths()) == 6
    one_run(t0 + 166, True)                      # a minute after the last ping: the next success ping
    assert pings.paths()[6:] == [prefix + "/start", prefix]


def test_agent_targets_report_each_agents_health(tmp_path, pings):
    args = make_args(tmp_path)
    kuma = {"type": "uptime_kuma", "url": pings.base + "/api/push/" + TOKEN}
    cron = {"type": "cronitor", "url": pings.base + "/p/key/" + TOKEN}
    settings = {"agents": {"good": [kuma], "bad": [cron]}}
    run = new_run(args, settings, 1_800_000_000.0)
    run.start()
    assert pings.paths() == []                   # agent targets get no start ping
    run.finish(True, "OK", {"good": (True, "OK"), "bad": (False, "1 open alert(s): bad/silent")})
    found = sorted(pings.paths())
    assert found == ["/api/push/%s?msg=OK&status=up" % TOKEN, "/p/key/%s?state=fail" % TOKEN], found
    # an agent missing from the health map (not checked in this run) is not pinged
    run = new_run(args, settings, 1_800_000_100.0)
    run.finish(True, "OK", {"good": (True, "OK")})
    assert len(pings.paths()) == 3


def test_budget_bounds_all_pings_and_failures_are_recorded(tmp_path, pings):
    pings.rules["/slow/"] = (200, 5)
    pings.rules["/moved/"] = (302, 0)
    pings.rules["/gone/"] = (404, 0)
    args = make_args(tmp_path)
    settings = {"deadman": [hc(pings, "slow"), hc(pings, "moved"), hc(pings, "gone"), hc(pings, "fast")]}
    log = Log()
    started = time.monotonic()
    run = new_run(args, settings, 1_800_000_000.0, log=log, budget=1.5)
    run.start()
    run.finish(True, "OK", {})
    elapsed = time.monotonic() - started
    assert elapsed < 1.5 + 1.5, elapsed            # the budget (plus the join grace), not 2 x 5 s
    records = dict((r["target"].split()[0] + r["scope"], r) for r in deadman.status(args))
    found = deadman.status(args, scope="host")
    assert len(found) == 4 and all(r["target"] == "healthchecks 127.0.0.1" for r in found)
    by_outcome = sorted((r["ok"], r["detail"].split(" (")[0]) for r in found)
    assert (True, "HTTP 200") in by_outcome, by_outcome
    assert (False, "HTTP 302 redirect") in by_outcome and (False, "HTTP 404") in by_outcome, by_outcome
    assert any(not ok and ("budget" in detail or "no answer" in detail) for ok, detail in by_outcome), by_outcome
    assert records and log.lines and all("dead man's switch healthchecks 127.0.0.1 (host" in line for line in log.lines)
    text = json.dumps(deadman.status(args)) + "\n".join(log.lines)
    text += open(os.path.join(args.state_dir, ".heartbeat", deadman.STATE_FILE)).read()
    assert TOKEN not in text and "/slow" not in text and str(pings.server_address[1]) not in text


def test_unreachable_target_never_fails_the_run_and_hides_the_url(tmp_path):
    args = make_args(tmp_path)
    settings = {"deadman": [{"type": "http", "url": "http://127.0.0.1:9/x/" + TOKEN}]}
    log = Log()
    run = new_run(args, settings, 1_800_000_000.0, log=log)
    run.start()
    run.finish(True, "OK", {})
    (record,) = deadman.status(args)
    assert record["ok"] is False and "cannot connect" in record["error"]
    assert TOKEN not in json.dumps(record) and TOKEN not in "".join(log.lines)


def test_settings_are_checked_with_the_contract(tmp_path):
    args = make_args(tmp_path)
    path = os.path.join(args.config_dir, "heartbeat.json")
    assert deadman.load_settings(args.config_dir)["present"] is False
    with open(path, "w") as handle:
        json.dump({"deadman": [{"type": "healthchecks", "url": "ftp://x/" + TOKEN}], "metrics_textfile_dir": "",
                   "agents": {"a": [{"type": "pager", "url": "https://x/y"}]}}, handle)
    with pytest.raises(deadman.SettingsError) as caught:
        deadman.load_settings(args.config_dir)
    message = str(caught.value)
    assert "agentops_deadman[0].url" in message and "agentops_agents[a].heartbeat.deadman[0].type" in message
    assert TOKEN not in message


# --------------------------------------------------------------------------------- metrics
def parse(text):
    return dict((f.name, f) for f in text_string_to_metric_families(text))


def test_metrics_text_parses_with_hostile_label_values():
    hostile = 'we"ird\\na\nme'
    text = metrics.render({
        "agentops_agent_up": [({"agent": "a"}, 1)],
        "agentops_agent_auth_ok": [({"agent": "a", "check": hostile}, 0)],
        "agentops_agent_rotation_due_timestamp_seconds": [({"agent": "a", "credential": "c\\"}, 1800000000)],
        "agentops_heartbeat_duration_seconds": [({}, 0.125)],
    })
    families = parse(text)
    assert set(families) == set(n.replace("_total", "") for n in metrics.NAMES)  # the parser drops a counter's _total
    (sample,) = families["agentops_agent_auth_ok"].samples
    assert sample.labels == {"agent": "a", "check": hostile} and sample.value == 0
    (sample,) = families["agentops_agent_rotation_due_timestamp_seconds"].samples
    assert sample.labels["credential"] == "c\\"
    assert families["agentops_heartbeat_duration_seconds"].samples[0].value == 0.125
    assert families["agentops_agent_restarts"].type == "counter"
    for line in text.splitlines():                     # one sample or comment per line
        assert line.startswith("#") or line.startswith("agentops_"), line


def test_metrics_file_written_atomically_missing_dir_skipped(tmp_path):
    directory = tmp_path / "textfile"
    status_, detail = metrics.write(str(directory), "x 1\n")
    assert status_ == "missing" and str(directory) in detail
    assert metrics.write("", "x 1\n")[0] == "off"
    directory.mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    os.symlink(str(target), str(directory / "agentops.prom"))
    assert metrics.write(str(directory), "x 1\n") == ("written", str(directory / "agentops.prom"))
    assert target.read_text() == "keep"                # the symlink was replaced, never followed
    assert not os.path.islink(str(directory / "agentops.prom"))
    assert (directory / "agentops.prom").read_text() == "x 1\n"
    assert oct(os.stat(str(directory / "agentops.prom")).st_mode & 0o777) == "0o644"
    assert os.listdir(str(directory)) == ["agentops.prom"]   # no temporary file left behind


def test_scheduled_agent_between_successful_runs_is_up():
    scheduled = {"name": "nightly", "schedule": "*-*-* 03:00:00"}
    assert heartbeat.is_up(scheduled, {"ActiveState": "inactive", "Result": "success"})
    assert not heartbeat.is_up(scheduled, {"ActiveState": "inactive", "Result": "exit-code"})
    assert not heartbeat.is_up(scheduled, {"ActiveState": "failed", "Result": "exit-code"})
    assert heartbeat.is_up(scheduled, {"ActiveState": "activating", "Result": "success"})
    assert not heartbeat.is_up({"name": "daemon"}, {"ActiveState": "inactive", "Result": "success"})
    assert heartbeat.is_up({"name": "daemon"}, {"ActiveState": "active"})


# ------------------------------------------------------------------ heartbeat end to end
def write_settings(args, **data):
    with open(os.path.join(args.config_dir, "heartbeat.json"), "w") as handle:
        json.dump(dict({"metrics_textfile_dir": "", "deadman": [], "agents": {}}, **data), handle)


def samples(path):
    out = {}
    for family in text_string_to_metric_families(open(path).read()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_heartbeat_run_metrics_and_deadman_for_up_hung_and_failed(tmp_path, pings, units, recorder):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    host_target = hc(pings, "host")
    write_settings(args, metrics_textfile_dir=str(textfile), deadman=[host_target],
                   agents={"up": [hc(pings, "agent-up")], "hung": [hc(pings, "agent-hung")]})
    for name in ("up", "hung", "failed"):
        agent = add_agent(args, name, max_silence="30s")
        units(agent["unit"], **({"active": "failed", "sub": "failed", "result": "exit-code", "restarts": 3}
                                if name == "failed" else {"started_ago": 600}))
        touch(os.path.join(agent["state_dir"], "heartbeat"), ago=300 if name == "hung" else 1)
    assert run_heartbeat(args) == 0
    found = samples(str(textfile / "agentops.prom"))
    assert found[("agentops_agent_up", (("agent", "up"),))] == 1
    assert found[("agentops_agent_up", (("agent", "hung"),))] == 1       # alive, but hung
    assert found[("agentops_agent_up", (("agent", "failed"),))] == 0
    assert found[("agentops_agent_restarts_total", (("agent", "failed"),))] == 3
    assert 295 <= found[("agentops_agent_progress_age_seconds", (("agent", "hung"),))] <= 330
    assert found[("agentops_agent_progress_age_seconds", (("agent", "up"),))] < 30
    assert ("agentops_agent_progress_age_seconds", (("agent", "failed"),)) not in found
    assert found[("agentops_open_alerts", (("severity", "critical"),))] == 2   # failed/down, hung/silent
    assert abs(found[("agentops_heartbeat_last_run_timestamp_seconds", ())] - time.time()) < 30
    assert 0 <= found[("agentops_heartbeat_duration_seconds", ())] < 30
    paths = pings.paths()
    assert "/host/%s/start" % TOKEN in paths and "/host/%s/fail" % TOKEN in paths   # critical: the run fails
    assert "/agent-up/" + TOKEN in paths and "/agent-hung/%s/fail" % TOKEN in paths
    # the hung agent resumes: its own switch turns back to success at once, the host's too
    touch(os.path.join(args.state_dir, "hung", "heartbeat"), ago=0)
    units("agentops-failed.service", started_ago=5)
    assert run_heartbeat(args) == 0
    later = pings.paths()[len(paths):]
    assert "/agent-hung/" + TOKEN in later and "/host/" + TOKEN in later, later
    assert "/agent-up/" + TOKEN not in later       # still healthy: within the minute, no second success ping
    record = heartbeat.run_status(args)
    assert record["metrics"]["status"] == "written" and record["ok"] is True


def test_missing_textfile_dir_is_skipped_and_shown(tmp_path, units, capsys):
    args = make_args(tmp_path)
    write_config(args, [])
    missing = str(tmp_path / "no-such-dir")
    write_settings(args, metrics_textfile_dir=missing,
                   deadman=[{"type": "healthchecks", "url": "http://127.0.0.1:9/p/" + TOKEN}])
    agent = add_agent(args, "a1")
    units(agent["unit"])
    touch(os.path.join(agent["state_dir"], "heartbeat"), ago=1)
    assert run_heartbeat(args) == 0                 # neither the missing directory nor the dead target fail it
    assert heartbeat.run_status(args)["metrics"]["status"] == "missing"
    args.format, args.json, args.host = "table", False, "h1"
    status._cmd_status(args)
    table = capsys.readouterr().out
    assert "metrics: SKIPPED: %s does not exist" % missing in table
    assert "dead man's switch (host) healthchecks 127.0.0.1: FAILING" in table
    args.format = "json"
    status._cmd_status(args)
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["watcher"]["metrics"]["status"] == "missing"
    assert rows[0]["watcher"]["deadman"][0]["ok"] is False
    args.format = "markdown"
    status._cmd_status(args)
    report = capsys.readouterr().out
    assert "## Watchers" in report and "- dead man's switch (host) healthchecks 127.0.0.1: FAILING" in report
    for text in (table, json.dumps(rows), report):
        assert TOKEN not in text


def test_status_lines_of_the_watcher():
    from ansible_collections.agentops.fleet.plugins.module_utils import agentops_status
    now = 1_800_000_000.0
    watch = {"last_run": now - 5, "duration": 0.21, "metrics": {"status": "written", "detail": "/m/agentops.prom"},
             "deadman": [{"target": "healthchecks hc-ping.com", "ok": True, "last_kind": "success",
                          "detail": "HTTP 200", "last_attempt_at": now - 5}], "settings_error": None}
    rows = [{"agent": "a", "deadman": [{"target": "cronitor cronitor.link", "ok": False, "last_kind": "failure",
                                         "error": "HTTP 503", "last_attempt_at": now - 3, "failures": 2,
                                         "last_ok_at": None}]}]
    lines = agentops_status.watcher_lines(watch, rows, now=now)
    assert lines == [
        "heartbeat: last run 5s ago (0.21s)",
        "metrics: written to /m/agentops.prom",
        "dead man's switch (host) healthchecks hc-ping.com: ok (success HTTP 200, 5s ago)",
        "dead man's switch (agent a) cronitor cronitor.link: FAILING: failure ping 3s ago: HTTP 503 "
        "(2 failure(s) in a row; last success never)",
    ]
    html = agentops_status.fleet_report([agentops_status.host_row("h", "no agents")], "html", "now", notes=lines)
    assert "<h2>Watchers</h2>" in html and "<li>metrics: written to /m/agentops.prom</li>" in html
    assert io.StringIO(agentops_status.host_table([], notes=lines)).getvalue().endswith(lines[-1] + "\n")


def test_role_settings_file_and_variable_checks():
    """heartbeat_settings (the heartbeat role's filter) -> heartbeat.json the host accepts; bad role variables
    are refused naming the variable, never showing the URL."""
    from ansible_collections.agentops.fleet.plugins.module_utils import agentops_contract as contract
    host = [{"type": "healthchecks", "url": "https://hc-ping.com/" + TOKEN}]
    agents = [{"name": "a", "command": "/bin/true", "heartbeat": {"deadman": [{"type": "http", "url": "https://x/p"}]}},
              {"name": "b", "command": "/bin/true", "state": "absent",
               "heartbeat": {"deadman": [{"type": "http", "url": "https://x/q"}]}},
              {"name": "c", "command": "/bin/true"}]
    data = contract.heartbeat_settings(host, agents, "/var/lib/prometheus/node-exporter")
    assert data["deadman"] == host and data["agents"] == {"a": [{"type": "http", "url": "https://x/p"}]}
    assert contract.heartbeat_settings_errors(data) == []
    assert contract.heartbeat_settings([], [], "")["metrics_textfile_dir"] == ""
    normalized = contract.agents_normalize(agents[:1], {
        "config_dir": "/etc/agentops", "state_dir": "/var/lib/agentops", "every_days": 45, "hardening": "standard",
        "restart_sec": "10s", "timeout_stop_sec": "30s", "start_limit_interval_sec": "5min", "start_limit_burst": 5,
        "memory_max": "infinity", "cpu_quota": "100%", "tasks_max": "infinity"})
    assert "deadman" not in normalized[0]["heartbeat"] and "https://x/p" not in json.dumps(normalized)
    errors = contract.settings_errors({"agentops_deadman": [{"type": "healthchecks", "url": "ftp://h/" + TOKEN}],
                                       "agentops_metrics_textfile_dir": "relative/dir"})
    assert errors[0].startswith("agentops_deadman: [0].url must be an http:// or https:// URL")
    assert errors[1].startswith("agentops_metrics_textfile_dir: 'relative/dir' must be an absolute path")
    assert TOKEN not in " ".join(errors)
    assert contract.settings_errors({"agentops_metrics_textfile_dir": ""}) == []


def test_deadman_urls_are_scrubbed_from_what_the_heartbeat_logs(tmp_path, units, capsys):
    from agentops_host import alert
    args = make_args(tmp_path)
    write_config(args, [])
    url = "http://127.0.0.1:9/p/" + TOKEN
    write_settings(args, deadman=[{"type": "healthchecks", "url": url}])
    assert run_heartbeat(args) == 0
    assert TOKEN not in alert.scrub("echoed back: " + url) and TOKEN not in capsys.readouterr().err
