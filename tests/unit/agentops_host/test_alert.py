"""Unit tests of the alert path (agentops_host.alert) against real HTTP servers on 127.0.0.1."""
import json
import os
import stat
import sys
import time

import pytest

from agentops_host import alert
from agentops_host import cli

from test_alert_helpers import (CANARY, Recorder, make_args, recorder, telegram_channel,  # noqa: F401  (fixture)
                                webhook_channel, write_config)


def spool_files(args):
    found = []
    for dirpath, _dirs, files in os.walk(os.path.join(args.spool_dir, "alerts")):
        found += [os.path.join(dirpath, f) for f in files if f.endswith(".json") and not f.startswith(".")]
    return sorted(found)


def test_telegram_and_webhook_receive_one_alert(tmp_path, recorder, capsys):
    args = make_args(tmp_path)
    write_config(args, [telegram_channel(recorder), webhook_channel(recorder)])
    assert alert.emit(args, "critical", "a1/down", "a1 failed", "line <1> & 2", agent="a1", unit="agentops-a1.service")
    tg, hook = recorder.requests
    assert tg["path"] == "/bot%s/sendMessage" % CANARY
    payload = json.loads(tg["body"])
    assert payload["chat_id"] == "-1001"
    assert payload["parse_mode"] == "HTML"
    assert "line &lt;1&gt; &amp; 2" in payload["text"]
    assert "[CRITICAL] testhost: a1 failed" in payload["text"]
    body = json.loads(hook["body"])
    for field in ("host", "agent", "unit", "severity", "key", "title", "body", "since", "fingerprint"):
        assert field in body
    assert body["host"] == "testhost" and body["agent"] == "a1" and body["severity"] == "critical"
    assert body["key"] == "a1/down" and body["unit"] == "agentops-a1.service"
    err = capsys.readouterr().err
    assert "delivered critical key=a1/down to telegram#0" in err
    assert CANARY not in err


def test_duplicate_is_suppressed_until_repeat(tmp_path, recorder):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)], alert_repeat_seconds=3600)
    assert alert.emit(args, "warning", "k", "first")
    assert alert.emit(args, "warning", "k", "second")
    assert len(recorder.requests) == 1
    # escalation is sent at once
    assert alert.emit(args, "critical", "k", "worse")
    assert len(recorder.requests) == 2
    # a reminder once the repeat interval passed
    write_config(args, [webhook_channel(recorder)], alert_repeat_seconds=0)
    assert alert.emit(args, "critical", "k", "still")
    bodies = recorder.bodies()
    assert len(bodies) == 3 and bodies[2]["reminder"] is True
    assert bodies[0]["since"] == bodies[2]["since"]
    assert bodies[0]["fingerprint"] == bodies[2]["fingerprint"]


def test_resolve_sends_exactly_one_resolved(tmp_path, recorder):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    assert alert.resolve(args, "k") is True          # not open: nothing sent
    assert recorder.requests == []
    alert.emit(args, "critical", "k", "down", agent="a1")
    assert alert.resolve(args, "k")
    assert alert.resolve(args, "k")
    bodies = recorder.bodies()
    assert [b["severity"] for b in bodies] == ["critical", "resolved"]
    assert bodies[1]["agent"] == "a1" and bodies[1]["since"] == bodies[0]["since"]
    assert alert.open_alerts(args) == []


def test_info_is_never_deduplicated(tmp_path, recorder):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    alert.emit(args, "info", "rotated", "token rotated")
    alert.emit(args, "info", "rotated", "token rotated")
    assert len(recorder.requests) == 2
    assert alert.open_alerts(args) == []


def test_receiver_down_spools_then_flush_delivers_exactly_once(tmp_path, recorder):
    args = make_args(tmp_path)
    port = recorder.server_address[1]
    recorder.close()                                 # receiver down
    down = {"type": "webhook", "url": "http://127.0.0.1:%d/hook" % port}
    write_config(args, [down])
    assert alert.emit(args, "critical", "k1", "one")
    assert alert.emit(args, "warning", "k2", "two")
    files = spool_files(args)
    assert len(files) == 2
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert alert.flush(args) == (0, 2)               # still down: kept, attempts counted
    assert json.loads(open(files[0]).read())["attempts"] == 2
    back = Recorder(port)                            # the receiver comes back on the same port
    try:
        assert alert.flush(args) == (0, 2)           # the channel backs off (at most 30 s after the first retry)
        assert back.requests == []
        later = time.time() + 31
        assert alert.flush(args, now=later) == (2, 0)
        assert alert.flush(args, now=later) == (0, 0)
        keys = [b["key"] for b in back.bodies()]
        assert keys == ["k1", "k2"]                  # oldest first, each once
    finally:
        back.close()
    assert spool_files(args) == []


def test_telegram_429_retry_after_is_honoured(tmp_path, recorder):
    args = make_args(tmp_path)
    write_config(args, [telegram_channel(recorder)])
    recorder.rules.append({"status": 429, "times": 1,
                           "body": {"ok": False, "error_code": 429, "parameters": {"retry_after": 2}}})
    start = time.monotonic()
    assert alert.emit(args, "critical", "k", "rate limited")
    elapsed = time.monotonic() - start
    assert len(recorder.requests) == 2
    assert elapsed >= 2.0
    assert spool_files(args) == []


def test_telegram_long_retry_after_is_spooled_with_not_before(tmp_path, recorder):
    args = make_args(tmp_path)
    write_config(args, [telegram_channel(recorder)], alert_retry_after_max_seconds=1)
    recorder.rules.append({"status": 429, "times": 1,
                           "body": {"ok": False, "error_code": 429, "parameters": {"retry_after": 60}}})
    assert alert.emit(args, "critical", "k", "rate limited")
    files = spool_files(args)
    assert len(files) == 1
    entry = json.loads(open(files[0]).read())
    assert entry["not_before"] >= time.time() + 50
    assert alert.flush(args) == (0, 1)               # not before retry_after: nothing sent
    assert len(recorder.requests) == 1


def test_telegram_text_is_cut_to_4096(tmp_path):
    msg = alert.build_message({"host": "h"}, "critical", "k", "t<", body="<&>" * 5000)
    text = alert.telegram_text(msg)
    assert len(text) <= 4096
    assert text.endswith("[cut]</pre>")
    assert "<b>[CRITICAL] h: t&lt;</b>" in text


def test_token_never_in_errors_or_spool_names(tmp_path, capsys):
    args = make_args(tmp_path)
    # a token with a space makes http.client reject the URL; the error must not carry it
    token = CANARY + " x"
    write_config(args, [{"type": "telegram", "bot_token": token, "chat_id": "1", "api_url": "http://127.0.0.1:9"}])
    assert alert.emit(args, "critical", "k", "t")
    err = capsys.readouterr().err
    assert "CANARY" not in err
    for path in spool_files(args):
        assert "CANARY" not in path
        assert "CANARY" not in json.loads(open(path).read())["last_error"]


def test_command_channel_gets_text_on_stdin(tmp_path):
    args = make_args(tmp_path)
    out = tmp_path / "received.txt"
    script = tmp_path / "sink.sh"
    script.write_text("#!/bin/sh\ncat >> %s\necho \"$AGENTOPS_ALERT_KEY\" >> %s\n" % (out, out))
    script.chmod(0o755)
    write_config(args, [{"type": "command", "command": str(script)}])
    assert alert.emit(args, "warning", "cmd/k", "via command", "body text")
    text = out.read_text()
    assert "[WARNING] testhost: via command" in text and "body text" in text and "cmd/k" in text


def test_command_channel_timeout_spools(tmp_path):
    args = make_args(tmp_path)
    script = tmp_path / "slow.sh"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    write_config(args, [{"type": "command", "command": str(script)}], alert_timeout_seconds=1)
    start = time.monotonic()
    assert alert.emit(args, "warning", "k", "slow")
    assert time.monotonic() - start < 10
    assert len(spool_files(args)) == 1


def test_webhook_5xx_is_spooled(tmp_path, recorder):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    recorder.rules.append({"status": 503, "times": 1, "body": {}})
    assert alert.emit(args, "critical", "k", "t")
    assert len(spool_files(args)) == 1
    assert alert.flush(args) == (1, 0)
    assert [b["key"] for b in recorder.bodies()] == ["k", "k"]


def test_no_channels_returns_false(tmp_path):
    args = make_args(tmp_path)
    write_config(args, [])
    assert alert.emit(args, "critical", "k", "t") is False


def test_cli_alert_and_flush(tmp_path, recorder):
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    base = ["--config-dir", args.config_dir, "--state-dir", args.state_dir, "--spool-dir", args.spool_dir]
    assert cli.main(base + ["alert", "--severity", "critical", "--key", "c/k", "--title", "from cli",
                            "--body", "b", "--agent", "a1"]) == 0
    assert cli.main(base + ["alert", "--severity", "resolved", "--key", "c/k", "--title", "ok again"]) == 0
    assert cli.main(base + ["flush"]) == 0
    assert [b["severity"] for b in recorder.bodies()] == ["critical", "resolved"]
    with pytest.raises(SystemExit):
        cli.main(base + ["alert", "--severity", "bogus", "--key", "k", "--title", "t"])


def test_cli_resolves_several_keys_in_one_call(tmp_path, recorder):
    """A converge clears the deploy alert of every agent it deployed in one call: each open key is resolved once,
    a key that is not open sends nothing; several keys are refused for any other severity."""
    args = make_args(tmp_path)
    write_config(args, [webhook_channel(recorder)])
    base = ["--config-dir", args.config_dir, "--state-dir", args.state_dir, "--spool-dir", args.spool_dir]
    for key in ("a/deploy", "c/deploy"):
        assert cli.main(base + ["alert", "--severity", "critical", "--key", key, "--title", "held"]) == 0
    assert cli.main(base + ["alert", "--severity", "resolved", "--title", "", "--key=a/deploy", "--key=b/deploy",
                            "--key=c/deploy"]) == 0
    bodies = recorder.bodies()
    assert [(b["severity"], b["key"]) for b in bodies] == [
        ("critical", "a/deploy"), ("critical", "c/deploy"), ("resolved", "a/deploy"), ("resolved", "c/deploy")]
    assert bodies[2]["title"] == "resolved: held"
    assert cli.main(base + ["alert", "--severity", "resolved", "--title", "", "--key=a/deploy"]) == 0
    assert len(recorder.bodies()) == 4
    assert cli.main(base + ["alert", "--severity", "critical", "--title", "t", "--key=x", "--key=y"]) == 2
    assert len(recorder.bodies()) == 4


def test_spool_survives_channel_token_change(tmp_path, recorder):
    """The spool folder is keyed by non-secret fields: a rotated bot token keeps the spool."""
    args = make_args(tmp_path)
    write_config(args, [telegram_channel(recorder)])
    recorder.rules.append({"status": 500, "times": 1, "body": {"ok": False}})
    alert.emit(args, "critical", "k", "t")
    write_config(args, [telegram_channel(recorder, token="999:new")])
    assert alert.flush(args) == (1, 0)
    assert recorder.requests[-1]["path"] == "/bot999:new/sendMessage"


def test_python_is_standard_library_only():
    """The host library must import with the standard library alone."""
    import subprocess
    top = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
    root = os.path.join(top, "roles", "common", "files")
    hostlib = os.path.join(top, ".cache", "hostlib")   # plugins/module_utils as agentops_lib, as on a host
    code = ("import sys; sys.path[:0] = [%r, %r]; import agentops_host.alert, agentops_host.state, "
            "agentops_host.config, agentops_lib.agentops_contract" % (root, hostlib))
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


ROLE_SETTINGS_PLAY = """
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.include_role: {name: agentops.fleet.alerts, tasks_from: validate}
    - ansible.builtin.include_role: {name: agentops.fleet.alerts, tasks_from: config}
"""


def _alerts_role_run(tmp_path, hosts, config_dir):
    """Run the alerts role's validate + config on local hosts; agentops.json goes to config_dir."""
    import subprocess
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
    inventory = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
                         "hosts": hosts}}
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    (tmp_path / "play.yml").write_text(ROLE_SETTINGS_PLAY)
    config_dir.mkdir()
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(root, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(root, ".cache", "collections"))
    # the fixed paths come as the fact agentops_paths: an extra var points the config at a test folder
    paths = json.dumps({"agentops_paths": {"config": str(config_dir)}})
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i",
                           str(tmp_path / "inventory.json"), "-e", paths, str(tmp_path / "play.yml")],
                          cwd=root, env=env, text=True, capture_output=True, timeout=300, check=False)


def test_alerts_role_spool_settings_are_validated_and_written(tmp_path):
    """agentops_alert_max_age / _permanent_failures / _spool_max: bad values are refused naming the
    variable (before the config task runs), good ones reach agentops.json for the on-host command."""
    import re
    hosts = {
        "good": {"agentops_alert_max_age": "2h 30min", "agentops_alert_permanent_failures": 5,
                 "agentops_alert_spool_max": "250"},
        "short_age": {"agentops_alert_max_age": "30s"},
        "bad_age": {"agentops_alert_max_age": "forever"},
        "zero_permanent": {"agentops_alert_permanent_failures": 0},
        "bool_cap": {"agentops_alert_spool_max": True},
        "huge_cap": {"agentops_alert_spool_max": 99999999},
        "removed": {"agentops_alert_config_file": "/tmp/elsewhere.json"},
    }
    (tmp_path / "a").mkdir()
    proc = _alerts_role_run(tmp_path / "a", hosts, tmp_path / "good")
    failed = {m.group(1): json.loads(m.group(2))["msg"]
              for m in re.finditer(r"^fatal: \[(\w+)\]: FAILED! => (\{.*\})$", proc.stdout, re.M)}
    assert set(failed) == {"short_age", "bad_age", "zero_permanent", "bool_cap", "huge_cap", "removed"}, \
        proc.stdout[-3000:]
    assert "agentops_alert_max_age" in failed["short_age"] and "shorter than 1min" in failed["short_age"]
    assert failed["bad_age"].startswith("agentops_alert_max_age: 'forever' is not a systemd time span")
    assert failed["zero_permanent"].startswith("agentops_alert_permanent_failures: 0 is not a whole number")
    assert failed["bool_cap"].startswith("agentops_alert_spool_max: True is not a whole number")
    assert failed["huge_cap"].startswith("agentops_alert_spool_max: 99999999 is not a whole number between 1 and 1000000")
    assert failed["removed"].startswith("agentops_alert_config_file: was removed: the path is fixed at "
                                        "/etc/agentops/agentops.json")
    data = json.loads((tmp_path / "good" / "agentops.json").read_text())
    assert (data["alert_max_age_seconds"], data["alert_permanent_failures"], data["alert_spool_max"]) == (9000, 5, 250)
    (tmp_path / "b").mkdir()
    proc = _alerts_role_run(tmp_path / "b", {"defaults": {}}, tmp_path / "defaults")
    assert proc.returncode == 0, proc.stdout[-3000:]
    defaults = json.loads((tmp_path / "defaults" / "agentops.json").read_text())
    assert (defaults["alert_max_age_seconds"], defaults["alert_permanent_failures"],
            defaults["alert_spool_max"]) == (86400, 3, 1000)
    assert alert.settings(defaults)["max_age"] == 86400 and alert.settings(data)["spool_max"] == 250


@pytest.mark.parametrize("result,meaning", [("timeout", "runtime_max"), ("oom-kill", "OOM killer"),
                                            ("start-limit-hit", "start limit"), ("exit-code", "non-zero status")])
def test_failure_report_says_what_the_result_means(result, meaning):
    props = {"Result": result, "NRestarts": "0", "ActiveState": "failed", "SubState": "failed"}
    final, title, body = alert.failure_report("agentops-nightly.service", props)
    assert final and title == "agentops-nightly.service failed (Result=%s, NRestarts=0)" % result
    line = next(li for li in body.splitlines() if li.startswith("Result: "))
    assert line.startswith("Result: %s (" % result) and meaning in line


def test_failure_report_of_a_start_that_a_failed_dependency_stopped():
    """systemd 247: the agent's session-start auth check (agentops-auth@) failed, so its start job failed and
    OnFailure= fired, while the unit itself kept Result=success from its last run."""
    props = {"Result": "success", "NRestarts": "0", "ActiveState": "inactive", "SubState": "dead"}
    final, title, body = alert.failure_report("agentops-mailer.service", props)
    assert final and title == "agentops-mailer.service did not start: a unit it requires failed (NRestarts=0)"
    assert "Result: success (the unit itself did not fail: a unit it requires (Requires=) failed to start" in body
    assert "agentops-auth@<agent>.service" in body


def test_failure_report_of_an_unknown_result_is_plain():
    _final, _title, body = alert.failure_report("agentops-x.service", {"Result": "weird", "ActiveState": "failed"})
    assert "\nResult: weird\n" in body
