"""Unit tests of ``agentops status`` (table and --json) on top of a heartbeat run."""
import json
import os

from agentops_host import status

from test_alert_helpers import make_args, recorder, webhook_channel, write_config  # noqa: F401  (fixture)
from test_heartbeat import add_agent, run_heartbeat, touch, units  # noqa: F401  (fixture)


def test_status_json_and_table(tmp_path, recorder, units, capsys):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = add_agent(args, "st", max_silence="30s")
    units(agent["unit"], restarts=2, started_ago=100)
    touch(os.path.join(agent["state_dir"], "heartbeat"), ago=50)
    assert run_heartbeat(args) == 0
    args.json = True
    assert status._cmd_status(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1
    row = rows[0]
    for field in ("agent", "unit", "active_state", "sub_state", "uptime_seconds", "restarts",
                  "last_progress_age_seconds", "auth", "next_rotation", "open_alerts"):
        assert field in row
    assert row["agent"] == "st" and row["restarts"] == 2 and row["active_state"] == "active"
    assert 95 <= row["uptime_seconds"] <= 130
    assert 45 <= row["last_progress_age_seconds"] <= 80
    assert [a["key"] for a in row["open_alerts"]] == ["st/silent"]
    args.json = False
    assert status._cmd_status(args) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["AGENT", "ACTIVE", "UPTIME"]
    assert "critical:silent" in table


def test_status_falls_back_to_the_results_check_auth_recorded(tmp_path, recorder, units, capsys):
    from agentops_host import check_auth
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = add_agent(args, "fresh")
    units(agent["unit"])
    token_file = tmp_path / "tok"
    token_file.write_text("x")
    token_file.chmod(0o600)
    agent["auth_checks"] = [{"name": "tokfile", "type": "file", "path": str(token_file)}]
    check_auth.record(args, agent, check_auth.check_agent(args, agent))  # as ExecStartPre does at a start
    args.json = True
    assert status._cmd_status(args) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["error"] is None
    assert [(a["name"], a["status"]) for a in row["auth"]] == [("tokfile", "AUTH_OK")]
    args.json = False
    assert status._cmd_status(args) == 0
    assert "AUTH_OK" in capsys.readouterr().out


def _cli(args, capsys, *argv):
    from agentops_host import cli
    rc = cli.main(["--config-dir", args.config_dir, "--state-dir", args.state_dir, "--spool-dir", args.spool_dir]
                  + list(argv))
    return rc, capsys.readouterr().out


def test_status_formats(tmp_path, recorder, units, capsys):
    """--format json is --json; markdown and html are the fleet report (status.yml) of this host alone."""
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    agent = add_agent(args, "fmt", max_silence="30s")
    units(agent["unit"], restarts=1, started_ago=100)
    touch(os.path.join(agent["state_dir"], "heartbeat"), ago=50)
    assert run_heartbeat(args) == 0
    rc, by_flag = _cli(args, capsys, "status", "--json")
    rc2, by_format = _cli(args, capsys, "status", "--format", "json")
    assert rc == rc2 == 0
    strip = [dict(r, last_progress_age_seconds=0, uptime_seconds=0) for r in json.loads(by_flag)]
    assert strip == [dict(r, last_progress_age_seconds=0, uptime_seconds=0) for r in json.loads(by_format)]
    rc, table = _cli(args, capsys, "status", "--format", "table")
    assert rc == 0 and table.split("\n")[0].split()[:3] == ["AGENT", "ACTIVE", "UPTIME"]
    rc, markdown = _cli(args, capsys, "status", "--format", "markdown", "--host", "web1")
    assert rc == 0
    lines = markdown.splitlines()
    assert lines[0].startswith("<!-- Managed by Ansible") and lines[1] == "# agentops fleet status"
    assert "| host | agent | state | restarts | last progress | auth | next rotation | open alerts |" in lines
    row = [line for line in lines if line.startswith("| web1 ")]
    assert len(row) == 1
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert cells[:4] == ["web1", "fmt", "active/running", "1"] and cells[7] == "1 critical:silent"
    rc, html = _cli(args, capsys, "status", "--format", "html")
    assert rc == 0 and html.startswith("<!DOCTYPE html>")
    import socket
    assert "<tr><td>%s</td><td>fmt</td><td>active/running</td>" % socket.gethostname() in html
    assert '<td class="bad">1 critical:silent</td>' in html


def test_status_markdown_of_a_host_without_agents(tmp_path, capsys):
    args = make_args(tmp_path)
    rc, markdown = _cli(args, capsys, "status", "--format", "markdown", "--host", "empty")
    assert rc == 0
    assert "| empty | - | no agents | - | - | - | - | - |" in markdown.splitlines()
