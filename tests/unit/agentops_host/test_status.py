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
