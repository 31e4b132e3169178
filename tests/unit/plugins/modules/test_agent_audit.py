"""agent_audit module: parsers, the checklist evaluation and in-process runs on a bare controller."""
import json
import os

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.agentops.fleet.plugins.modules import agent_audit

CANARY = "canary-audit-9Qx7-bot-token"

AGENTS_MD = """<!-- Managed by Ansible -->
# Agent mail

## Checkpoint protocol (WORKSTATE.md)
1. On a fresh start, read `WORKSTATE.md` first.
2. Write your working state to `WORKSTATE.md` before context use reaches 90%.

## Failure modes
- **email**: Send Telegram alert to owner, do not retry silently
- **api**: Wait 60 seconds, retry once, then alert
- Never retry silently.
"""

GOOD_PROPS = {"Id": "agentops-mail.service", "LoadState": "loaded", "ActiveState": "active",
              "KillMode": "control-group", "Restart": "on-failure", "RestartUSec": "10s",
              "OnFailure": "agentops-alert@agentops-mail.service.service",
              "ExecStartPre": "{ path=/usr/local/bin/agentops ; argv[]=/usr/local/bin/agentops check-auth mail ; }"}


def good_agent(**overrides):
    agent = {"unit": "agentops-mail.service", "name": "mail", "source": "agents.d", "load_state": "loaded",
             "active_state": "active", "props": dict(GOOD_PROPS), "restart_sec": "10",
             "credentials": ["graph_token"], "auth_checks": 1, "agents_md_path": "/var/lib/agentops/mail/AGENTS.md",
             "agents_md": AGENTS_MD, "agents_md_error": None}
    agent.update(overrides)
    return agent


def good_facts(**overrides):
    facts = {
        "agents": [good_agent()],
        "heartbeat_timers": {"agentops-heartbeat.timer": "active"},
        "journald": {"SystemMaxUse": "2G", "MaxRetentionSec": "1week"},
        "journald_files": ["/etc/systemd/journald.conf", "/etc/systemd/journald.conf.d/agentops.conf"],
        "journal_dir_exists": True,
        "alert_template": True,
        "cron_file": "/etc/cron.d/agentops-token-rotation", "cron_file_exists": True, "cron_runs_rotate": True,
        "rotation_list": [{"agent": "mail", "credential": "graph_token", "every_days": 45, "next_due": "2030-01-01"}],
        "rotation_list_error": None,
        "alert_config": "/etc/agentops/agentops.json", "channel_types": ["telegram", "webhook"], "channel_error": None,
    }
    facts.update(overrides)
    return facts


def by_id(items):
    return dict((i["id"], i) for i in items)


def test_item_order_and_ids():
    items = agent_audit.evaluate(good_facts())
    assert [i["id"] for i in items] == [pair[0] for pair in agent_audit.ITEMS]


def test_provisioned_host_passes_every_item():
    items = agent_audit.evaluate(good_facts())
    failed = [i for i in items if not i["passed"]]
    assert failed == []
    checks = by_id(items)
    assert "agentops-mail.service" in checks["kill_mode"]["reason"]
    assert "mail/graph_token every 45d, next due 2030-01-01" in checks["rotation_schedule"]["reason"]
    assert "channels: telegram, webhook" in checks["alert_path"]["reason"]
    assert "SystemMaxUse=2G" in checks["log_retention"]["reason"]
    assert "email, api" in checks["failure_modes"]["reason"]


def test_no_agents_every_item_fails_with_a_reason():
    facts = good_facts(agents=[], heartbeat_timers={}, journald={}, journald_files=[], journal_dir_exists=False,
                       alert_template=False, cron_file_exists=False, cron_runs_rotate=False, rotation_list=None,
                       rotation_list_error="/usr/local/bin/agentops is not installed", channel_types=None,
                       channel_error="cannot read /etc/agentops/agentops.json: No such file or directory")
    items = agent_audit.evaluate(facts)
    assert all(not i["passed"] for i in items)
    for item in items:
        assert item["reason"], item
    checks = by_id(items)
    assert "no agent unit found" in checks["kill_mode"]["reason"]
    assert "no agentops-heartbeat*.timer installed" in checks["heartbeat"]["reason"]
    assert "SystemMaxUse is not set" in checks["log_retention"]["reason"]
    assert "agentops-alert@.service is not installed" in checks["alert_path"]["reason"]


@pytest.mark.parametrize("props,restart_sec,item,needle", [
    ({"KillMode": "process"}, "10", "kill_mode", "KillMode=process"),
    ({"KillMode": "mixed"}, "10", "kill_mode", "KillMode=mixed"),
    ({"Restart": "no"}, "10", "restart", "Restart=no"),
    ({"Restart": "always"}, "10", "restart", "Restart=always"),
    ({}, None, "restart", "RestartSec not set"),
    ({"ExecStartPre": ""}, "10", "auth_at_start", "no ExecStartPre runs check-auth"),
    ({"OnFailure": ""}, "10", "alert_path", "OnFailure=(none)"),
    ({"OnFailure": "other.service"}, "10", "alert_path", "OnFailure=other.service"),
])
def test_unit_findings(props, restart_sec, item, needle):
    agent_props = dict(GOOD_PROPS)
    agent_props.update(props)
    facts = good_facts(agents=[good_agent(props=agent_props, restart_sec=restart_sec)])
    checks = by_id(agent_audit.evaluate(facts))
    assert not checks[item]["passed"]
    assert needle in checks[item]["reason"]
    assert "agentops-mail.service" in checks[item]["reason"]
    assert [i for i in checks.values() if not i["passed"]] == [checks[item]]


def test_unit_not_loaded_fails_unit_items():
    facts = good_facts(agents=[good_agent(load_state="not-found", props={})])
    checks = by_id(agent_audit.evaluate(facts))
    for item in ("kill_mode", "restart", "auth_at_start", "alert_path"):
        assert not checks[item]["passed"]
        assert "not loaded (LoadState=not-found)" in checks[item]["reason"]


def test_credentials_without_auth_checks_fail():
    facts = good_facts(agents=[good_agent(auth_checks=0, props=dict(GOOD_PROPS, ExecStartPre=""))])
    checks = by_id(agent_audit.evaluate(facts))
    assert not checks["auth_at_start"]["passed"]
    assert "has no auth_checks" in checks["auth_at_start"]["reason"]


def test_agent_without_credentials_needs_no_auth_or_rotation():
    agent = good_agent(credentials=[], auth_checks=0, props=dict(GOOD_PROPS, ExecStartPre=""))
    facts = good_facts(agents=[agent], cron_file_exists=False, rotation_list=None, rotation_list_error="missing")
    checks = by_id(agent_audit.evaluate(facts))
    assert checks["auth_at_start"]["passed"]
    assert "nothing to validate" in checks["auth_at_start"]["reason"]
    assert checks["rotation_schedule"]["passed"]
    assert "no agent holds a credential" in checks["rotation_schedule"]["reason"]


def test_rotation_findings():
    checks = by_id(agent_audit.evaluate(good_facts(cron_file_exists=False)))
    assert not checks["rotation_schedule"]["passed"]
    assert "/etc/cron.d/agentops-token-rotation is missing" in checks["rotation_schedule"]["reason"]
    checks = by_id(agent_audit.evaluate(good_facts(cron_runs_rotate=False)))
    assert "does not run 'agentops rotate'" in checks["rotation_schedule"]["reason"]
    checks = by_id(agent_audit.evaluate(good_facts(rotation_list=None, rotation_list_error="exit code 1: boom")))
    assert "'agentops rotate --list' failed: exit code 1: boom" in checks["rotation_schedule"]["reason"]
    checks = by_id(agent_audit.evaluate(good_facts(rotation_list=[])))
    assert "no rotation schedule for mail/graph_token" in checks["rotation_schedule"]["reason"]
    checks = by_id(agent_audit.evaluate(good_facts(rotation_list=[]), rotation_exempt=["mail/graph_token"]))
    assert checks["rotation_schedule"]["passed"]
    assert "exempt" in checks["rotation_schedule"]["reason"]


def test_heartbeat_inactive_timer():
    checks = by_id(agent_audit.evaluate(good_facts(heartbeat_timers={"agentops-heartbeat.timer": "inactive"})))
    assert not checks["heartbeat"]["passed"]
    assert "agentops-heartbeat.timer is inactive" in checks["heartbeat"]["reason"]


@pytest.mark.parametrize("kind", ["slack", "discord", "ntfy", "pagerduty", "email", "telegram", "webhook", "command"])
def test_every_contract_channel_type_is_usable(kind):
    checks = by_id(agent_audit.evaluate(good_facts(channel_types=[kind])))
    assert checks["alert_path"]["passed"] and "channels: %s" % kind in checks["alert_path"]["reason"]
    checks = by_id(agent_audit.evaluate(good_facts(channel_types=["carrier-pigeon"])))
    assert not checks["alert_path"]["passed"] and "no usable channel" in checks["alert_path"]["reason"]


def test_alert_channels():
    checks = by_id(agent_audit.evaluate(good_facts(channel_types=[])))
    assert not checks["alert_path"]["passed"]
    assert "has no alert channel" in checks["alert_path"]["reason"]
    checks = by_id(agent_audit.evaluate(good_facts(channel_types=None, channel_error="cannot read x: Permission denied")))
    assert "Permission denied" in checks["alert_path"]["reason"]


@pytest.mark.parametrize("settings,exists,ok,needle", [
    ({"SystemMaxUse": "2G", "MaxRetentionSec": "1week"}, True, True, "Storage=auto (/var/log/journal exists)"),
    ({"SystemMaxUse": "2G", "MaxRetentionSec": "1week", "Storage": "persistent"}, False, True, "Storage=persistent"),
    ({"SystemMaxUse": "2G", "MaxRetentionSec": "1week"}, False, False, "journal is volatile"),
    ({"SystemMaxUse": "2G", "MaxRetentionSec": "1week", "Storage": "volatile"}, True, False, "Storage=volatile"),
    ({"MaxRetentionSec": "1week"}, True, False, "SystemMaxUse is not set"),
    ({"SystemMaxUse": "2G", "MaxRetentionSec": "0"}, True, False, "MaxRetentionSec is not set"),
])
def test_journald_findings(settings, exists, ok, needle):
    passed, reason = agent_audit.journald_findings(settings, exists)
    assert passed is ok
    assert needle in reason


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def test_journald_config_merge(tmp_path):
    root = str(tmp_path)
    _write(os.path.join(root, "usr/lib/systemd/journald.conf"), "[Journal]\nSystemMaxUse=9G\n")
    _write(os.path.join(root, "etc/systemd/journald.conf"), "[Journal]\n#SystemMaxUse=\nStorage=auto\n")
    _write(os.path.join(root, "usr/lib/systemd/journald.conf.d/10-vendor.conf"), "[Journal]\nMaxRetentionSec=1month\n")
    _write(os.path.join(root, "usr/lib/systemd/journald.conf.d/agentops.conf"), "[Journal]\nSystemMaxUse=1G\n")
    _write(os.path.join(root, "etc/systemd/journald.conf.d/agentops.conf"),
           "# Managed\n[Journal]\nSystemMaxUse=2G\nMaxRetentionSec=1week\n[Other]\nStorage=none\n")
    settings, files = agent_audit.journald_config(root)
    # the main file is the first found (/etc), not merged with /usr/lib's; /etc's drop-in hides /usr/lib's
    assert settings == {"Storage": "auto", "MaxRetentionSec": "1week", "SystemMaxUse": "2G"}
    assert files == ["/etc/systemd/journald.conf", "/usr/lib/systemd/journald.conf.d/10-vendor.conf",
                     "/etc/systemd/journald.conf.d/agentops.conf"]


def test_journald_config_masked_dropin(tmp_path):
    root = str(tmp_path)
    _write(os.path.join(root, "usr/lib/systemd/journald.conf.d/agentops.conf"), "[Journal]\nSystemMaxUse=1G\n")
    os.makedirs(os.path.join(root, "etc/systemd/journald.conf.d"))
    os.symlink("/dev/null", os.path.join(root, "etc/systemd/journald.conf.d/agentops.conf"))
    settings, files = agent_audit.journald_config(root)
    assert settings == {}
    assert files == []


def test_workstate_findings():
    assert agent_audit.workstate_findings(AGENTS_MD) == (True, "has the section 'Checkpoint protocol (WORKSTATE.md)'")
    ok, reason = agent_audit.workstate_findings("# Agent\nDo things.\n")
    assert not ok and "does not mention WORKSTATE.md" in reason
    ok, reason = agent_audit.workstate_findings("# Agent\nSee WORKSTATE.md sometimes.\n")
    assert not ok and "no checkpoint section" in reason
    ok, dummy = agent_audit.workstate_findings("# Agent\nRead WORKSTATE.md at start; write WORKSTATE.md before 90%.\n")
    assert ok, dummy


def test_failure_mode_findings():
    assert agent_audit.failure_mode_findings(AGENTS_MD) == (True, "2 tool(s): email, api")
    ok, reason = agent_audit.failure_mode_findings("# Agent\n## Failure modes\n- **any tool**: stop and alert\n")
    assert not ok and "only a generic entry (any tool)" in reason
    ok, reason = agent_audit.failure_mode_findings("# Agent\n## Failure modes\nBe careful.\n")
    assert not ok and "without" in reason
    ok, reason = agent_audit.failure_mode_findings("# Agent\n## Tools\n- **email**: alert\n")
    assert not ok and "no 'Failure modes' section" in reason
    ok, reason = agent_audit.failure_mode_findings("## Failure Modes\n* `browser`: take a screenshot, alert\n")
    assert ok and "browser" in reason


def test_unit_names_and_directives():
    assert agent_audit.is_agent_unit_name("agentops-mail.service")
    assert agent_audit.is_agent_unit_name("agentops-alerting-bot.service")
    for helper in ("agentops-alert@.service", "agentops-alert@x.service.service", "agentops-alert-flush.service",
                   "agentops-heartbeat.service", "agentops-heartbeat-mail.service", "agentops-rotation.service",
                   "agentops-fake-endpoint@18080.service", "agentops-mail.timer", "other.service"):
        assert not agent_audit.is_agent_unit_name(helper), helper
    assert agent_audit.agent_name("agentops-mail.service") == "mail"
    assert agent_audit.agent_name("research-bot.service") == "research-bot"
    text = ("# /etc/systemd/system/x.service\n[Service]\nRestartSec=10\nLoadCredential=tok:/etc/x/tok\n"
            "# /etc/systemd/system/x.service.d/override.conf\n[Service]\nLoadCredential=\nSetCredential=api:abc\n")
    found = agent_audit.unit_directives(text, ("RestartSec", "LoadCredential", "SetCredential"))
    assert found == {"RestartSec": ["10"], "LoadCredential": [], "SetCredential": ["api:abc"]}
    assert agent_audit.credential_ids(["tok:/etc/x/tok", "api:abc", "tok:/other"]) == ["tok", "api"]
    show = "Id=a.service\nKillMode=process\n\nId=b.service\nKillMode=control-group\n"
    assert agent_audit.parse_show(show) == {"a.service": {"Id": "a.service", "KillMode": "process"},
                                            "b.service": {"Id": "b.service", "KillMode": "control-group"}}
    assert agent_audit.parse_unit_list("agentops-a.service enabled enabled\n\u25cf agentops-b.service x\n\n"
                                       "agentops-a.service loaded\n") == ["agentops-a.service", "agentops-b.service"]


def _run(capsys, args):
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            agent_audit.main()
    return json.loads(capsys.readouterr().out)


def test_module_on_a_bare_tree(tmp_path, capsys):
    """In-process run against empty paths: nothing provisioned, every item fails, nothing changed."""
    result = _run(capsys, {"config_dir": str(tmp_path / "etc-agentops"), "command": str(tmp_path / "agentops"),
                           "cron_file": str(tmp_path / "cron"), "journal_root": str(tmp_path),
                           "units": ["agentops-audit-unit-test-none"]})
    assert result["changed"] is False
    assert result["passed"] is False
    assert len(result["failed_items"]) == len(agent_audit.ITEMS)
    assert result["summary"].startswith("0/9 passed; failed: kill_mode")
    reasons = by_id(result["checklist"])
    assert "cannot tell which credentials need rotation: agentops-audit-unit-test-none.service: not loaded" in \
        reasons["rotation_schedule"]["reason"]
    assert "cannot read" in reasons["alert_path"]["reason"]
    assert [a["unit"] for a in result["agents"]] == ["agentops-audit-unit-test-none.service"]


def test_module_reads_channel_types_only(tmp_path, capsys):
    config = tmp_path / "etc-agentops"
    config.mkdir()
    (config / "agentops.json").write_text(json.dumps({"host": "h", "alert_channels": [
        {"type": "telegram", "bot_token": CANARY, "chat_id": "1", "api_url": "http://127.0.0.1:1"},
        {"type": "webhook", "url": "http://127.0.0.1:1/" + CANARY}]}))
    result = _run(capsys, {"config_dir": str(config), "command": str(tmp_path / "agentops"),
                           "cron_file": str(tmp_path / "cron"), "journal_root": str(tmp_path)})
    assert CANARY not in json.dumps(result)
    reason = by_id(result["checklist"])["alert_path"]["reason"]
    assert "no agent unit found" in reason
    assert "alert channel" not in reason and "cannot read" not in reason


@pytest.mark.parametrize("args,needle", [
    ({"units": ["bad unit;rm"]}, "units: not a systemd unit name: 'bad unit;rm'"),
    ({"rotation_exempt": ["nocredential"]}, "rotation_exempt: expected <agent>/<credential>, got 'nocredential'"),
])
def test_module_rejects_bad_input(capsys, args, needle):
    result = _run(capsys, args)
    assert result["failed"] is True
    assert needle in result["msg"]


# ---------------------------------------------------------------- hostile state directories
#
# Each agent's state directory belongs to the agent (nobody here) and its parent to root. The audit must
# not follow a symlink there, block on a FIFO, read a 64 GiB sparse file or a hard link to a root-only
# file; the hostile agent gets a finding, the others are audited as usual.

import pwd  # noqa: E402
import signal  # noqa: E402
import tracemalloc  # noqa: E402

from ansible.module_utils.common import warnings as ansible_warnings  # noqa: E402

SECRET = "root-only-canary-audit-Lw4"


@pytest.fixture
def deadline():
    def expired(signum, frame):
        raise TimeoutError("blocked for more than 20 s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, 20)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: agent directories belong to nobody")
def test_hostile_state_directories_are_findings_never_followed(tmp_path, capsys, deadline):
    nobody = pwd.getpwnam("nobody")
    config = tmp_path / "etc-agentops"
    (config / "agents.d").mkdir(parents=True)
    root = tmp_path / "agents"
    root.mkdir(mode=0o755)
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    secret = outside / "AGENTS.md"
    secret.write_text(AGENTS_MD.replace("## Failure modes", "## Failure modes\n- **%s**: x" % SECRET))
    secret.chmod(0o600)
    dirs = {}
    for name in ("good", "plain", "link", "fifo", "huge", "hard", "ws"):
        directory = root / name
        directory.mkdir(mode=0o700)
        os.chown(str(directory), nobody.pw_uid, nobody.pw_gid)
        dirs[name] = directory
        (config / "agents.d" / (name + ".json")).write_text(json.dumps(
            {"name": name, "unit": "agentops-%s.service" % name, "state_dir": str(directory)}))
    for name in ("good", "ws"):
        (dirs[name] / "AGENTS.md").write_text(AGENTS_MD)
    (dirs["good"] / "WORKSTATE.md").write_text("# state\n")
    (dirs["plain"] / "AGENTS.md").write_text("# Agent\n")     # judged as usual next to the hostile ones
    os.symlink(str(secret), str(dirs["link"] / "AGENTS.md"))
    os.mkfifo(str(dirs["fifo"] / "AGENTS.md"))
    os.mkfifo(str(dirs["fifo"] / "WORKSTATE.md"))
    with open(str(dirs["huge"] / "AGENTS.md"), "wb") as handle:
        handle.truncate(64 * 1024 ** 3)
    os.link(str(secret), str(dirs["hard"] / "AGENTS.md"))
    os.symlink(str(secret), str(dirs["ws"] / "WORKSTATE.md"))
    ansible_warnings._global_warnings.clear()
    tracemalloc.start()
    try:
        result = _run(capsys, {"config_dir": str(config), "command": str(tmp_path / "agentops"),
                               "cron_file": str(tmp_path / "cron"), "journal_root": str(tmp_path)})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024
    assert not result.get("failed"), result.get("msg")
    assert SECRET not in json.dumps(result)
    problems = dict((a["name"], a["problems"]) for a in result["agents"])
    assert problems["good"] == []
    assert problems["link"] == ["%s is a symlink (not followed)" % (dirs["link"] / "AGENTS.md")]
    assert problems["fifo"] == ["%s is a FIFO (not read)" % (dirs["fifo"] / "AGENTS.md"),
                                "%s is a FIFO (not read)" % (dirs["fifo"] / "WORKSTATE.md")]
    assert problems["huge"] == ["%s is too large: 68719476736 bytes, limit 1048576" % (dirs["huge"] / "AGENTS.md")]
    assert problems["hard"][0].startswith("%s has more than one hard link" % (dirs["hard"] / "AGENTS.md"))
    assert problems["ws"] == ["%s is a symlink (not followed)" % (dirs["ws"] / "WORKSTATE.md")]
    warnings = [w if isinstance(w, str) else w["event"]["msg"] for w in result.get("warnings", [])]
    assert sorted(warnings) == sorted("agentops-%s.service: %s" % (name, problem)
                                      for name, found in problems.items() for problem in found)
    items = by_id(result["checklist"])
    workstate = items["workstate_protocol"]["reason"]
    assert "agentops-good.service" not in workstate
    assert "agentops-plain.service: %s does not mention WORKSTATE.md" % (dirs["plain"] / "AGENTS.md") in workstate
    assert "agentops-link.service: not read: %s is a symlink" % (dirs["link"] / "AGENTS.md") in workstate
    assert "agentops-ws.service: %s is a symlink" % (dirs["ws"] / "WORKSTATE.md") in workstate
    failure_modes = items["failure_modes"]["reason"]
    assert "agentops-fifo.service: not read: %s is a FIFO" % (dirs["fifo"] / "AGENTS.md") in failure_modes
    assert "agentops-plain.service: %s has no 'Failure modes' section" % (dirs["plain"] / "AGENTS.md") in failure_modes
    assert "agentops-good.service" not in failure_modes and "agentops-ws.service" not in failure_modes
    assert not items["workstate_protocol"]["passed"] and not items["failure_modes"]["passed"]
    assert oct(secret.stat().st_mode & 0o7777) == "0o600" and secret.stat().st_uid == 0


def test_systemd_247_session_start_gate_is_auth_at_start():
    """On systemd 247 the agent unit requires agentops-auth@<name>.service and is ordered after it (no ExecStartPre)."""
    gate = "agentops-auth@mail.service"
    props = dict(GOOD_PROPS, ExecStartPre="", Requires="sysinit.target system.slice %s" % gate,
                 After="network-online.target %s system.slice" % gate)
    checks = by_id(agent_audit.evaluate(good_facts(agents=[good_agent(props=props)])))
    assert checks["auth_at_start"]["passed"], checks["auth_at_start"]
    # required but not ordered after it (the session could start before the check ends), or another agent's gate
    for bad in (dict(props, After="network-online.target"),
                dict(props, Requires="agentops-auth@other.service", After="agentops-auth@other.service")):
        checks = by_id(agent_audit.evaluate(good_facts(agents=[good_agent(props=bad)])))
        assert not checks["auth_at_start"]["passed"]
        assert ("no ExecStartPre runs check-auth (nor does it require agentops-auth@mail.service)"
                in checks["auth_at_start"]["reason"])


def test_show_reads_the_gate_properties():
    assert "Requires" in agent_audit.SHOW_PROPERTIES and "After" in agent_audit.SHOW_PROPERTIES


class _ReadOnlyModule(object):
    """What Collector.rotation() uses of a module: params and run_command (here: `agentops rotate --list --json`)."""

    def __init__(self, cron_file, command):
        self.params = {"cron_file": cron_file, "command": command}

    def get_bin_path(self, _name):
        return None

    def run_command(self, _argv, check_rc=False):
        return 0, "[]", ""


@pytest.mark.parametrize("job, unit_exec, runs", [
    ("/usr/local/bin/agentops rotate", None, True),                       # the job runs it itself
    ("/usr/bin/systemctl start agentops-rotation.service", "/usr/local/bin/agentops rotate", True),
    ("/usr/bin/systemctl start agentops-rotation.service", None, False),  # the unit is missing
    ("/usr/bin/systemctl start agentops-rotation.service", "/bin/true", False),
    ("/usr/bin/systemctl start other.service", "/usr/local/bin/agentops rotate", False),
])
def test_the_daily_rotation_job_may_start_the_rotation_unit(tmp_path, monkeypatch, job, unit_exec, runs):
    cron = tmp_path / "agentops-token-rotation"
    cron.write_text("#Ansible: agentops token rotation: daily run (agentops rotate --list)\n17 3 * * * root %s\n" % job)
    unit = tmp_path / "agentops-rotation.service"
    if unit_exec:
        unit.write_text("[Service]\nType=oneshot\nExecStart=%s\n" % unit_exec)
    monkeypatch.setattr(agent_audit, "ROTATION_UNIT_FILE", str(unit))
    command = tmp_path / "agentops"
    command.write_text("#!/bin/sh\n")
    command.chmod(0o755)
    facts = agent_audit.Collector(_ReadOnlyModule(str(cron), str(command))).rotation()
    assert facts["cron_file_exists"] and facts["cron_runs_rotate"] is runs
