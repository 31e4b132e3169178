"""Every role variable set to a non-default value changes what the host uses.

Each test names the variables it covers (tests/unit/test_settings_scenario.py checks that every
variable of every role's argument_specs is named here and set in molecule.yml to a non-default value).
"""
import json
import os
import re
import shlex

import pytest
import testinfra.utils.ansible_runner
from agentops_testlib import skip_unless_case_host

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("agentops_test")

WEBHOOK = 18095
HERE = os.path.dirname(os.path.abspath(__file__))
# The host's own loaders: what `agentops` uses is what these print (run with the host command's -I).
HOST_SETTINGS = r"""
import json, sys
sys.path.insert(0, "/usr/local/lib/agentops")
from agentops_host import alert, config
cfg = config.load_host_config("/etc/agentops")
out = dict(alert.settings(cfg), host=cfg["host"], repeat=cfg["alert_repeat_seconds"],
           rotation=config.load_rotation_config("/etc/agentops"))
print(json.dumps(out))
"""


def show(host, unit, *props):
    out = host.check_output("systemctl show %s %s" % (unit, " ".join("-p " + p for p in props)))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def host_settings(host):
    return json.loads(host.check_output("python3 -I -c %s" % shlex.quote(HOST_SETTINGS)))


def webhook_messages(host):
    log = host.file("/var/log/agentops-fake-endpoint/%d.jsonl" % WEBHOOK)
    if not log.exists:
        return []
    return [json.loads(json.loads(line)["body"]) for line in log.content_string.splitlines() if line.strip()]


def test_agents_role_defaults_reach_systemd(host):
    """agentops_agents_hardening, agentops_agents_restart_sec, agentops_agents_timeout_stop_sec,
    agentops_agents_start_limit_interval_sec, agentops_agents_start_limit_burst, agentops_agents_memory_max,
    agentops_agents_cpu_quota, agentops_agents_tasks_max: an agent without its own values gets these."""
    props = show(host, "agentops-plain.service", "RestartUSec", "TimeoutStopUSec", "StartLimitIntervalUSec",
                 "StartLimitBurst", "MemoryMax", "CPUQuotaPerSecUSec", "TasksMax", "MemoryDenyWriteExecute",
                 "ActiveState")
    assert props == {"RestartUSec": "7s", "TimeoutStopUSec": "12s", "StartLimitIntervalUSec": "3min",
                     "StartLimitBurst": "4", "MemoryMax": str(300 * 1024 * 1024), "CPUQuotaPerSecUSec": "1.500000s",
                     "TasksMax": "100", "MemoryDenyWriteExecute": "yes",  # the strict profile
                     "ActiveState": "active"}, props


def test_rotation_period_default_and_rotation_settings(host):
    """agentops_agents_every_days is the period of a token_rotation entry without every_days;
    agentops_token_rotation_grace_days and agentops_token_rotation_timeout_seconds are what agentops rotate loads."""
    rows = json.loads(host.check_output("/usr/local/bin/agentops rotate --list --json"))
    assert [(r["agent"], r["credential"], r["every_days"]) for r in rows] == [("plain", "api_token", 30)], rows
    assert host_settings(host)["rotation"] == {"grace_days": 3, "timeout_seconds": 60}


def test_rotation_runs_from_the_chosen_cron_daemon(host, wait_for):
    """agentops_token_rotation_hour and agentops_token_rotation_minute set the daily run;
    agentops_token_rotation_cron_package and agentops_token_rotation_cron_service choose the daemon
    (systemd-cron here: cron.target, and a timer generated from the cron file)."""
    line = [entry for entry in host.file("/etc/cron.d/agentops-token-rotation").content_string.splitlines()
            if entry and not entry.startswith("#")]
    assert len(line) == 1 and line[0].startswith("41 5 * * * root "), line
    assert host.package("systemd-cron").is_installed
    assert host.service("cron.target").is_running and host.service("cron.target").is_enabled
    timers = wait_for(lambda: host.check_output("systemctl list-units --all --no-legend 'cron-*agentops*'"), 60,
                      message="systemd-cron's timer for /etc/cron.d/agentops-token-rotation")
    assert ".timer" in timers, timers


def test_alert_settings_are_what_the_host_uses(host):
    """agentops_alert_timeout, agentops_alert_retry_after_max, agentops_alert_max_age,
    agentops_alert_permanent_failures, agentops_alert_spool_max, agentops_alert_repeat and
    agentops_alert_host_name, as the host command loads them; agentops_alert_flush_interval is the
    flush timer's period."""
    loaded = host_settings(host)
    assert {k: loaded[k] for k in ("timeout", "max_wait", "max_age", "permanent_failures", "spool_max",
                                   "repeat", "host")} == {
        "timeout": 7.0, "max_wait": 20.0, "max_age": 43200.0, "permanent_failures": 5, "spool_max": 300,
        "repeat": 7200, "host": "fleet-%s" % host.backend.host}
    timers = host.check_output("systemctl show -p TimersMonotonic agentops-alert-flush.timer")
    assert "OnUnitActiveUSec=45s" in timers, timers


def test_heartbeat_tick_and_disk_check(host, wait_for):
    """agentops_heartbeat_tick (20s, shorter than the agents' 1min interval) is the timer's period;
    agentops_heartbeat_disk_threshold_percent (1) and agentops_heartbeat_disk_paths ([/var/tmp]) make the
    heartbeat warn about /var/tmp's filesystem, and agentops_alert_channels / agentops_alert_host_name
    deliver it to the webhook with this host's configured name."""
    timers = host.check_output("systemctl show -p TimersMonotonic agentops-heartbeat.timer")
    assert "OnUnitActiveUSec=20s" in timers, timers

    def disk_alert():
        return [m for m in webhook_messages(host) if m.get("key") == "host/disk:/var/tmp"]

    found = wait_for(disk_alert, 90, message="the disk warning for /var/tmp at the webhook")
    assert found[0]["host"] == "fleet-%s" % host.backend.host and found[0]["severity"] == "warning", found[0]
    assert "threshold 1%" in found[0]["title"], found[0]
    assert not [m for m in webhook_messages(host) if m.get("key") == "host/disk:/var/log/journal"]


def test_auth_timeout_and_unreachable_policy(host, run_playbook, wait_for):
    """agentops_auth_timeout (3 s) cuts off an endpoint that answers after 5 s, on the host and at deploy, and
    agentops_auth_fail_on_unreachable: false turns that into a warning, not a failed play
    agentops_auth_check_at_deploy: false kept site.yml's converge and idempotence runs from asking the
    endpoint (the agent is disabled, so no session start asked it either)."""
    def asked():
        log = host.file("/var/log/agentops-fake-endpoint/18096.jsonl")
        return log.content_string.count('"/slow"') if log.exists else 0

    # The heartbeat's first run asks once (gated's heartbeat interval is 1d, so only once); site.yml's
    # converge and idempotence runs would have asked twice more.
    assert wait_for(asked, 60, message="the heartbeat's auth check of gated") == 1
    # on the host (as at every session start and in the heartbeat): the timeout comes from auth.json
    on_host = host.run("/usr/local/bin/agentops check-auth gated")
    assert on_host.rc != 0 and "did not answer within 3s" in on_host.stdout, on_host.stdout + on_host.stderr
    assert asked() == 2
    result = run_playbook(host, os.path.join(HERE, "auth_only.yml"), extra_vars={"agentops_auth_check_at_deploy": True})
    assert asked() == 3
    assert result.rc == 0, result.output[-3000:]
    assert re.search(r"agent gated, AUTH_UNREACHABLE: auth check 'slow'\s+UNREACHABLE: GET\s+"
                     r"http://127.0.0.1:18096/slow did not answer within 3s", result.output), result.output[-3000:]


def test_journald_uses_the_configured_limits(host, wait_for):
    """agentops_journald_system_max_use, agentops_journald_system_keep_free,
    agentops_journald_max_retention_sec, agentops_journald_system_max_file_size,
    agentops_journald_max_file_sec, agentops_journald_rate_limit_interval_sec,
    agentops_journald_rate_limit_burst, agentops_journald_compress and agentops_journald_extra_settings
    are in journald's merged configuration, and the running journald reports the size limits."""
    merged = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    dropin = merged.split("# /etc/systemd/journald.conf.d/agentops.conf", 1)[1]
    for line in ("SystemMaxUse=64M", "SystemKeepFree=50M", "MaxRetentionSec=3day", "SystemMaxFileSize=8M",
                 "MaxFileSec=1day", "RateLimitIntervalSec=10s", "RateLimitBurst=2000", "Compress=no",
                 "MaxLevelStore=info"):
        assert re.search(r"^%s$" % re.escape(line), dropin, re.M), (line, dropin)
    # journald logs its limits when it opens the system journal: max 64M, at most 8M per file
    host.run_expect([0], "journalctl --rotate")
    limits = wait_for(lambda: host.run("journalctl -b -u systemd-journald --no-pager -o cat | "
                                       "grep -E 'System Journal .* max 64(\\.0)?M'").stdout, 30,
                      message="journald's report of its limits")
    assert limits


# A sample of the contract's rejections, one or more per role, each run through site.yml: the play
# fails in its first step with a message naming the variable, and nothing under /etc changes.
REJECTED = {
    "agents": ({"agentops_agents_memory_max": "a lot"}, "agentops_agents_memory_max: 'a lot' is not a size"),
    "agents-every-days": ({"agentops_agents_every_days": 0}, "agentops_agents_every_days: 0 is not a whole number"),
    "alerts": ({"agentops_alert_repeat": "soon"}, "agentops_alert_repeat: 'soon' is not a systemd time span"),
    "alerts-channel": ({"agentops_alert_channels": [{"type": "webhook", "url": "ftp://127.0.0.1/x"}]},
                       "agentops_alert_channels[0] (webhook).url must be an http:// or https:// URL"),
    "auth": ({"agentops_auth_timeout": 0}, "agentops_auth_timeout: 0 is not a whole number"),
    "heartbeat": ({"agentops_heartbeat_disk_threshold_percent": 150},
                  "agentops_heartbeat_disk_threshold_percent: 150 is not a whole number between 1 and 100"),
    "journald": ({"agentops_journald_extra_settings": {"Bad Key": "x"}},
                 "agentops_journald_extra_settings: 'Bad Key' is not a valid extra [Journal] setting"),
    "token-rotation": ({"agentops_token_rotation_hour": 25},
                       "agentops_token_rotation_hour: 25 is not a whole number between 0 and 23"),
    "removed": ({"agentops_common_config_dir": "/opt/agentops"},
                "agentops_common_config_dir: was removed: the path is fixed at /etc/agentops"),
    # a mistyped variable is not ignored (with `agentops_agents` left at [] every agent would be removed)
    "unknown-variable": ({"agentops_agent": [{"name": "plain", "command": "/bin/true"}]},
                         "agentops_agent: unknown variable, no role or playbook of agentops.fleet reads it; "
                         "did you mean `agentops_agents`?"),
    "telegram-chat-id": ({"agentops_alert_channels": [{"type": "telegram", "bot_token": "4242:settings-bot-token",
                                                       "chat_id": "my team chat"}]},
                         "agentops_alert_channels[0] (telegram).chat_id must be the chat's number"),
}


def etc_snapshot(host):
    return host.check_output(
        "find /etc/agentops /etc/systemd/system /etc/cron.d /etc/systemd/journald.conf.d -xdev "
        "-printf '%p %u %g %m %y %s %T@\\n' | sort; "
        "find /etc/agentops /etc/systemd/system /etc/cron.d /etc/systemd/journald.conf.d -xdev -type f "
        "-exec sha256sum {} + | sort")


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_site_rejects_bad_settings_before_any_change(host, run_playbook, case):
    skip_unless_case_host(host, testinfra_hosts, sorted(REJECTED).index(case))
    extra_vars, message = REJECTED[case]
    before = etc_snapshot(host)
    result = run_playbook(host, os.path.join(HERE, "..", "converge.yml"), extra_vars=extra_vars, expect_fail=True)
    assert message in " ".join(result.output.split()), result.output[-3000:]
    assert result.recap.get("changed") == 0 and result.recap.get("failed") == 1, result.recap
    assert etc_snapshot(host) == before


def test_deadman_and_metrics_textfile_dir(host, wait_for):
    """agentops_deadman (a healthchecks URL on the 18096 receiver) is pinged by the heartbeat runs with
    /start and the plain URL, and agentops_metrics_textfile_dir (/var/lib/agentops-metrics, absent at
    first: skipped and shown as missing) receives agentops.prom once it exists."""
    def pings():
        log = host.file("/var/log/agentops-fake-endpoint/18096.jsonl")
        if not log.exists:
            return []
        lines = [json.loads(line) for line in log.content_string.splitlines() if line.strip()]
        return [line["path"] for line in lines if line["path"].startswith("/ping/settings-deadman-uuid")]

    # /start, then the plain URL or /fail: gated's auth check is UNREACHABLE (a critical alert) in this scenario
    found = wait_for(lambda: "/ping/settings-deadman-uuid/start" in pings()
                     and {"/ping/settings-deadman-uuid", "/ping/settings-deadman-uuid/fail"} & set(pings())
                     and pings(), 90, message="the dead man's switch pings at the 18096 receiver")
    assert set(found) <= {"/ping/settings-deadman-uuid/start", "/ping/settings-deadman-uuid",
                          "/ping/settings-deadman-uuid/fail"}, found
    settings = json.loads(host.check_output("cat /etc/agentops/heartbeat.json"))
    assert settings["metrics_textfile_dir"] == "/var/lib/agentops-metrics"
    host.check_output("mkdir -p /var/lib/agentops-metrics")
    prom = wait_for(lambda: host.file("/var/lib/agentops-metrics/agentops.prom").exists, 60,
                    message="agentops.prom in agentops_metrics_textfile_dir")
    assert prom
    assert "agentops_heartbeat_last_run_timestamp_seconds " in host.file(
        "/var/lib/agentops-metrics/agentops.prom").content_string
