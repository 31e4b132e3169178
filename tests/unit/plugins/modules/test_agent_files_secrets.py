"""agentops.fleet.agent_files with files holding secrets (agents.d/<name>.json, agentops.json, heartbeat.json).

The module's `Invoked with ...` line goes to the managed host's journal on every converge, and its result (with
`invocation` at -vvv, and the diff) to the controller's output. A secret in such a file (an auth check's header
value, a channel's bot token) must reach neither: the content travels in the no_log option `secret_contents`,
and the diff masks each secret value, showing which one changed. The journal line is caught at Ansible's
syslog sink (the line is built and masked by Ansible's own code; only where it is written differs).
"""
import json
import os

import pytest
from ansible.module_utils import basic

from ansible_collections.agentops.fleet.plugins.filter import agents as filters
from ansible_collections.agentops.fleet.plugins.module_utils.agentops_contract import PATHS
from ansible_collections.agentops.fleet.plugins.modules import agent_files

from test_agent_files import ME, MY_GROUP, run

HEADER = "CANARY-header-5e1f09"
HEADER_NEW = "CANARY-header-new-77a0c3"
TOKEN = "123456:CANARY-bot-token-b41d"
SHORT = "2023-06-01"          # a header value that is also an ordinary string (anthropic-version)


@pytest.fixture()
def journal(monkeypatch):
    """The lines the module sends to the host's log (syslog; the journal reads it), as Ansible builds them."""
    lines = []
    monkeypatch.setattr(basic, "has_journal", False)
    monkeypatch.setattr(basic.AnsibleModule, "_log_to_syslog", lambda self, msg: lines.append(msg))
    return lines


def agents_d(headers, url="http://127.0.0.1:18081/me"):
    return json.dumps({"name": "mail", "credentials": ["api_token"], "auth_checks": [
        {"name": "api", "type": "http", "url": url, "credential": "api_token", "headers": headers}]},
        indent=2, sort_keys=True, separators=(",", ": ")) + "\n"


def entry(path, mode="0600"):
    return {"path": str(path), "owner": ME, "group": MY_GROUP, "mode": mode}


def test_a_secret_content_is_written_but_never_logged_or_returned(tmp_path, capsys, journal):
    target = tmp_path / "mail.json"
    content = agents_d({"X-Api-Key": HEADER, "anthropic-version": SHORT})
    result = run(capsys, diff=True, files=[entry(target)], secret_contents={str(target): content})
    assert target.read_text() == content and oct(target.stat().st_mode & 0o777) == "0o600"
    assert result["changed"] and result["changed_paths"] == [str(target)]
    assert len(journal) == 1 and journal[0].startswith("Invoked with"), journal
    assert HEADER not in journal[0] and "secret_contents=NOT_LOGGING_PARAMETER" in journal[0], journal[0]
    output = json.dumps(result)  # with `invocation`, as the controller prints it at -vvv
    assert HEADER not in output and "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in output
    # the diff of the new file: every key shows, each secret value is <secret>; a short secret value masks
    # nothing else (Ansible masks only the whole content)
    (diff,) = result["diff"]
    assert diff["before"] == "" and diff["after_header"] == str(target) + " (secret values masked)"
    after = json.loads(diff["after"])
    assert after["auth_checks"][0]["headers"] == {"X-Api-Key": "<secret>", "anthropic-version": "<secret>"}
    assert after["auth_checks"][0]["url"] == "<secret>" and after["credentials"] == ["api_token"]
    assert after["auth_checks"][0]["name"] == "api" and "********" not in output


def test_the_diff_shows_which_secret_changed_never_its_value(tmp_path, capsys, journal):
    target = tmp_path / "mail.json"
    target.write_text(agents_d({"X-Api-Key": HEADER, "X-Other": "CANARY-other-1", "X-Gone": "CANARY-gone-2"}))
    new = agents_d({"X-Api-Key": HEADER_NEW, "X-Other": "CANARY-other-1", "X-New": "CANARY-added-3"})
    result = run(capsys, check=True, diff=True, files=[entry(target)], secret_contents={str(target): new})
    output = json.dumps(result) + "".join(journal)
    for value in (HEADER, HEADER_NEW, "CANARY-other-1", "CANARY-gone-2", "CANARY-added-3"):
        assert value not in output, value
    assert result["changed"] and HEADER in target.read_text()  # check mode: nothing written
    (diff,) = result["diff"]
    before, after = json.loads(diff["before"]), json.loads(diff["after"])
    assert before["auth_checks"][0]["headers"] == {"X-Api-Key": "<secret>", "X-Other": "<secret>",
                                                   "X-Gone": "<secret>"}
    assert after["auth_checks"][0]["headers"] == {"X-Api-Key": "<secret: changed>", "X-Other": "<secret>",
                                                  "X-New": "<secret>"}


def test_nested_channel_secrets_are_masked_in_both_sides(tmp_path, capsys):
    target = tmp_path / "agentops.json"
    old = {"host": "web1", "alert_channels": [{"type": "telegram", "bot_token": TOKEN, "chat_id": "-100"},
                                              {"type": "email", "password": "CANARY-smtp-1", "to": ["a@x.y"]}]}
    new = {"host": "web1", "alert_channels": [{"type": "telegram", "bot_token": TOKEN, "chat_id": "-200"},
                                              {"type": "email", "password": "CANARY-smtp-2", "to": ["a@x.y"]},
                                              {"type": "slack", "url": "http://127.0.0.1:1/CANARY-slack-3"}]}
    target.write_text(json.dumps(old))
    text = json.dumps(new, indent=2, sort_keys=True) + "\n"
    result = run(capsys, diff=True, files=[entry(target)], secret_contents={str(target): text})
    assert json.loads(target.read_text()) == new
    output = json.dumps(result)
    assert "CANARY" not in output, output
    (diff,) = result["diff"]
    after = json.loads(diff["after"])["alert_channels"]
    assert after[0] == {"type": "telegram", "bot_token": "<secret>", "chat_id": "-200"}
    assert after[1]["password"] == "<secret: changed>" and after[2]["url"] == "<secret>"
    assert json.loads(diff["before"])["alert_channels"][1]["password"] == "<secret>"


def test_a_content_that_is_not_json_is_never_shown(tmp_path, capsys):
    target = tmp_path / "f"
    target.write_text("old CANARY-plain-1\n")
    result = run(capsys, check=True, diff=True, files=[entry(target)],
                 secret_contents={str(target): "new CANARY-plain-2\n"})
    assert "CANARY" not in json.dumps(result)
    assert result["diff"][0]["before"] == result["diff"][0]["after"] == "(holds secrets, not shown)\n"


def test_an_unchanged_secret_file_is_not_rewritten(tmp_path, capsys):
    target = tmp_path / "mail.json"
    content = agents_d({"X-Api-Key": HEADER})
    run(capsys, files=[entry(target)], secret_contents={str(target): content})
    again = run(capsys, diff=True, files=[entry(target)], secret_contents={str(target): content})
    assert not again["changed"] and "diff" not in again


@pytest.mark.parametrize("files, contents, message", [
    ([{"path": "/x/a"}], {}, "files: /x/a has no content (and no entry in secret_contents)"),
    ([{"path": "/x/a", "content": "{}"}], {"/x/a": "{}"}, "files: /x/a has a content and an entry in secret_contents: give one"),
    ([{"path": "/x/a", "content": "{}"}], {"/x/b": "{}"}, "secret_contents: /x/b is not the path of an entry of files"),
])
def test_inconsistent_arguments_fail_before_anything_is_written(capsys, files, contents, message):
    result = run(capsys, files=files, secret_contents=contents)
    assert result["failed"] and result["msg"] == message


# --------------------------------------------------------------------------- the role's arguments, end to end
ROLE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "roles", "agents"))
DEFAULTS = {"config_dir": "/etc/agentops", "state_dir": "/var/lib/agentops", "hardening": "standard",
            "restart_sec": 10, "timeout_stop_sec": 30, "start_limit_interval_sec": "5min", "start_limit_burst": 5,
            "memory_max": "2G", "cpu_quota": "200%", "tasks_max": 512, "every_days": 45}


def test_the_agents_role_arguments_keep_header_values_out_of_the_journal_and_output(tmp_path, capsys, journal):
    """What roles/agents/tasks/units.yml passes (agents_files) for an agent whose auth check sends a header."""
    agents = filters.agents_normalize([{"name": "mail", "command": "/bin/true", "credentials": {"api_token": "x"},
                                        "auth_checks": [{"name": "api", "type": "http", "url": "http://127.0.0.1:1/me",
                                                         "credential": "api_token",
                                                         "headers": {"X-Tenant": HEADER}}]}],
                                      dict(DEFAULTS, config_dir=str(tmp_path), state_dir=str(tmp_path)))
    (tmp_path / "agents.d").mkdir()
    paths = dict(PATHS, units=str(tmp_path), config=str(tmp_path), state=str(tmp_path))
    args = filters.agents_files(agents, ROLE, paths, 257, {"standard": [], "strict": [], "none": []})
    config = agents[0]["config_file"]
    assert HEADER in args["secret_contents"][config]
    assert HEADER not in json.dumps(args["files"]) + json.dumps(args["users"]) + json.dumps(args["directories"])
    units = [dict(f, owner=ME, group=MY_GROUP) for f in args["files"] if f["path"].startswith(str(tmp_path) + "/agentops-")]
    result = run(capsys, check=True, diff=True, files=units + [entry(config)], secret_contents=args["secret_contents"])
    assert str(tmp_path / "agentops-mail.service") in result["changed_paths"]
    assert HEADER not in json.dumps(result) and HEADER not in "".join(journal)
    shown = [d for d in result["diff"] if d["after_header"].startswith(config)]
    assert json.loads(shown[0]["after"])["auth_checks"][0]["headers"] == {"X-Tenant": "<secret>"}
