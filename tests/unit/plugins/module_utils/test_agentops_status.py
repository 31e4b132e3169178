"""plugins/module_utils/agentops_status.py: the one formatter of `agentops status` and status.yml."""
import json

import pytest

from ansible_collections.agentops.fleet.plugins.module_utils import agentops_status as fmt


def agent(name, **values):
    row = {"agent": name, "unit": "agentops-%s.service" % name, "active_state": "active", "sub_state": "running",
           "uptime_seconds": 50, "restarts": 0, "last_progress_age_seconds": 5, "auth": None, "next_rotation": None,
           "open_alerts": [], "error": None}
    row.update(values)
    return row


@pytest.mark.parametrize("seconds, text", [(None, "-"), (0, "0s"), (119, "119s"), (120, "2m"), (7199, "119m"),
                                           (7200, "2h"), (172799, "47h"), (172800, "2d"), (12.9, "12s")])
def test_age(seconds, text):
    assert fmt.age(seconds) == text


def test_auth_text_is_the_worst_result():
    assert fmt.auth_text(None) == "-" and fmt.auth_text([]) == "-"
    assert fmt.auth_text([{"status": "AUTH_OK"}, {"status": "AUTH_OK"}]) == "AUTH_OK"
    assert fmt.auth_text([{"status": "AUTH_OK"}, {"status": "AUTH_EXPIRED"}, {"status": "AUTH_UNREACHABLE"}]) \
        == "AUTH_EXPIRED"
    assert fmt.auth_text(["garbage"]) == "?"


def test_fleet_rows_of_host():
    ok = {"exists": True, "path": "/usr/local/bin/agentops"}
    rows = [agent("a", restarts=3, auth=[{"status": "AUTH_OK"}], next_rotation="2026-03-02",
                  open_alerts=[{"key": "a/silent", "severity": "critical"}, {"key": "auth:a:g", "severity": "warning"}]),
            agent("b", active_state="broken", sub_state="config", restarts=None, last_progress_age_seconds=None)]
    got = fmt.fleet_rows_of_host("h", ok, {"rc": 0, "stdout": json.dumps(rows)})
    assert got == [
        {"host": "h", "agent": "a", "state": "active/running", "restarts": "3", "progress": "5s", "auth": "AUTH_OK",
         "next_rotation": "2026-03-02", "alerts": "2 critical:silent,warning:auth:a:g"},
        {"host": "h", "agent": "b", "state": "broken/config", "restarts": "-", "progress": "-", "auth": "-",
         "next_rotation": "-", "alerts": "-"}]
    assert [r["state"] for r in fmt.fleet_rows_of_host("h", None, {})] == ["unreachable"]
    assert [r["state"] for r in fmt.fleet_rows_of_host("h", {"exists": False}, {})] == ["not provisioned"]
    assert [r["state"] for r in fmt.fleet_rows_of_host("h", ok, {"skipped": True})] == \
        ["not provisioned (/usr/local/bin/agentops is not executable)"]
    failed = fmt.fleet_rows_of_host("h", ok, {"rc": 2, "stderr": "first\nagentops status: error: " + "x" * 300})
    assert failed[0]["state"] == ("error: exit 2: agentops status: error: " + "x" * 300)[:len("error: exit 2: ") + 120]
    assert fmt.fleet_rows_of_host("h", ok, {"rc": 1, "stderr": ""})[0]["state"] == "error: exit 1"
    for stdout in ("nope", "{}", "[1, 2]", "[", ""):
        assert fmt.fleet_rows_of_host("h", ok, {"rc": 0, "stdout": stdout})[0]["state"] == \
            "error: agentops status --json did not print a JSON list", stdout
    assert fmt.fleet_rows_of_host("h", ok, {"rc": 0, "stdout": "[]"}) == [fmt.host_row("h", "no agents")]


ROWS = [fmt.agent_cells("web1", agent("mail|bot", auth=[{"status": "AUTH_EXPIRED"}],
                                      open_alerts=[{"key": "mail|bot/silent", "severity": "critical"}])),
        fmt.agent_cells("web1", agent("<notes>&", active_state="failed", sub_state="failed")),
        fmt.host_row("db1", "not provisioned")]


def test_fleet_table():
    assert fmt.fleet_report(ROWS, "table").split("\n") == [
        "HOST  AGENT     STATE            RESTARTS  LAST PROGRESS  AUTH          NEXT ROTATION  OPEN ALERTS",
        "web1  mail|bot  active/running   0         5s             AUTH_EXPIRED  -              1 critical:silent",
        "web1  <notes>&  failed/failed    0         5s             -             -              -",
        "db1   -         not provisioned  -         -              -             -              -",
        "2 host(s), 2 agent(s)"]
    assert fmt.fleet_report(ROWS, "text", "2026-01-02 03:04 UTC").startswith(
        "agentops fleet status, 2026-01-02 03:04 UTC\n\nHOST  AGENT")


def test_fleet_markdown_and_html():
    markdown = fmt.fleet_report(ROWS, "markdown", "2026-01-02 03:04 UTC").split("\n")
    assert markdown[:7] == [
        "<!-- Managed by Ansible (agentops.fleet status.yml): generated report, changes are overwritten. -->",
        "# agentops fleet status", "", "Generated 2026-01-02 03:04 UTC.", "",
        "| host | agent | state | restarts | last progress | auth | next rotation | open alerts |",
        "| --- | --- | --- | ---: | ---: | --- | --- | --- |"]
    assert markdown[7] == "| web1 | mail\\|bot | active/running | 0 | 5s | AUTH_EXPIRED | - | 1 critical:silent |"
    assert markdown[9] == "| db1 | - | not provisioned | - | - | - | - | - |" and markdown[10] == ""
    html = fmt.fleet_report(ROWS, "html", "2026-01-02 03:04 UTC")
    assert html.startswith("<!DOCTYPE html>\n") and html.endswith("</table>\n</body>\n</html>\n")
    assert ("<tr><td>web1</td><td>&lt;notes&gt;&amp;</td><td class=\"bad\">failed/failed</td><td>0</td><td>5s</td>"
            "<td>-</td><td>-</td><td>-</td></tr>") in html
    assert ("<tr><td>web1</td><td>mail|bot</td><td>active/running</td><td>0</td><td>5s</td>"
            "<td class=\"bad\">AUTH_EXPIRED</td><td>-</td><td class=\"bad\">1 critical:silent</td></tr>") in html
    assert "<tr><td>db1</td><td>-</td><td class=\"bad\">not provisioned</td>" in html
    with pytest.raises(ValueError, match="unknown format 'pdf'"):
        fmt.fleet_report(ROWS, "pdf")


def test_host_table():
    rows = [agent("a", uptime_seconds=4000, restarts=2, open_alerts=[{"key": "a/silent", "severity": "critical"}]),
            agent("bad", active_state="broken", sub_state="config", restarts=None, uptime_seconds=None,
                  last_progress_age_seconds=None, error="/etc/agentops/agents.d/bad.json: not JSON")]
    text = fmt.host_table(rows, [{"severity": "warning", "key": "host/disk:/", "title": "disk 95%"}], 0)
    assert text.split("\n") == [
        "AGENT  ACTIVE          UPTIME  RESTARTS  PROGRESS  AUTH  NEXT ROTATION  ALERTS",
        "a      active/running  66m     2         5s        -     -              critical:silent",
        "bad    broken/config   -       -         -         -     -              -",
        "broken agent bad: /etc/agentops/agents.d/bad.json: not JSON",
        "host alert: warning host/disk:/: disk 95%",
        "dead-letter alerts: 0", ""]
    assert fmt.host_table([]).split("\n")[1] == "(no agents configured)"
    assert "dead-letter alerts: 2 (given up on" in fmt.host_table([], None, 2)


def test_fleet_notes_of_host():
    watch = {"last_run": 100.0, "duration": None, "metrics": {"status": "off", "detail": "no directory set"},
             "deadman": [], "settings_error": None}
    rows = [{"agent": "a", "watcher": watch, "dead_letter": 0, "deadman": []},
            {"agent": "b", "watcher": watch, "dead_letter": 0, "deadman": [
                {"target": "http example.com", "ok": True, "last_kind": "success", "detail": "HTTP 200",
                 "last_attempt_at": 160.0}]}]
    notes = fmt.fleet_notes_of_host("h1", {"rc": 0, "stdout": json.dumps(rows)}, now=220.0)
    assert notes == ["h1: heartbeat: last run 2m ago", "h1: metrics: off (no directory set)",
                     "h1: dead man's switch (agent b) http example.com: ok (success HTTP 200, 60s ago)"]
    rows[0]["dead_letter"] = 3
    assert fmt.fleet_notes_of_host("h1", {"rc": 0, "stdout": json.dumps(rows)}, now=220.0)[-1] == \
        "h1: dead-letter alerts: 3 (given up on; see the alert spool's dead-letter folder)"
    # Nothing to say for a host that failed, printed garbage or has no agents: its row says so.
    for cmd in ({"rc": 1, "stdout": json.dumps(rows)}, {"rc": 0, "stdout": "nope"}, {"rc": 0, "stdout": "[]"},
                {"rc": 0, "stdout": '[1]'}, {}, None):
        assert fmt.fleet_notes_of_host("h1", cmd) == []
