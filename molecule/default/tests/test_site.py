"""playbooks/site.yml end to end: every concern on a three-host inventory (Debian 12, 13 and 11)."""
import json
import os

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
TOKENS = {
    "agentops-default-debian12": {"CANARY-default-mail-token-0451", "CANARY-default-digest-token-0452"},
    "agentops-default-debian13": {"CANARY-default-research-token-0453"},
    "agentops-default-debian11": {"CANARY-default-archive-token-0454"},
}
AGENTS = {
    "agentops-default-debian12": ["mail-triage", "digest"],
    "agentops-default-debian13": ["research"],
    "agentops-default-debian11": ["archive"],
}
CANARIES = ["CANARY-default-mail-token-0451", "CANARY-default-digest-token-0452",
            "CANARY-default-research-token-0453", "CANARY-default-archive-token-0454",
            "555001:CANARY-default-bot-token-never-shown"]


def agents_of(host):
    return AGENTS[host.backend.host]


def endpoint_log(host, port):
    out = host.run("cat /var/log/agentops-fake-endpoint/%s.jsonl 2>/dev/null" % int(port)).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_journald_policy(host):
    merged = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    assert "SystemMaxUse=256M" in merged and "MaxRetentionSec=1week" in merged


def test_agents_run_hardened_with_their_credentials(host, wait_for):
    for name in agents_of(host):
        unit = "agentops-%s.service" % name
        assert host.service(unit).is_running, unit
        show = host.check_output("systemctl show -p KillMode -p Restart -p OnFailure %s", unit)
        assert "KillMode=control-group" in show and "Restart=on-failure" in show
        assert "OnFailure=agentops-alert@%s" % unit in show
        agents_md = host.file("/var/lib/agentops/%s/AGENTS.md" % name).content_string
        assert "WORKSTATE.md" in agents_md and "Failure modes" in agents_md
        assert host.file("/var/lib/agentops/%s/WORKSTATE.md" % name).exists
    # The agents really call their API with the credential they got through LoadCredential=.
    expected = {"Bearer " + token for token in TOKENS[host.backend.host]}
    wait_for(lambda: {r["headers"].get("Authorization") for r in endpoint_log(host, 18080)
                      if r["path"] == "/v1/work"} >= expected, 60,
             message="every agent's API call with its own credential")


def test_alert_path_reaches_both_channels(host, wait_for):
    cfg = host.file("/etc/agentops/agentops.json")
    assert cfg.user == "root" and cfg.mode == 0o600
    assert host.file("/etc/systemd/system/agentops-alert@.service").exists
    host.check_output("agentops alert --severity info --key default-site-test --title 'site.yml smoke alert'")
    wait_for(lambda: any("site.yml smoke alert" in r["body"] for r in endpoint_log(host, 18090)), 60,
             message="the webhook sink to receive the alert")
    wait_for(lambda: any(r["path"].endswith("/sendMessage") and "site.yml smoke alert" in r["body"]
                         for r in endpoint_log(host, 18091)), 60, message="the fake Telegram API to receive it")


def test_heartbeat_and_status(host, wait_for):
    timers = host.check_output("systemctl list-timers --all --no-legend 'agentops-heartbeat*'")
    assert "agentops-heartbeat" in timers
    status = json.loads(host.check_output("agentops status --json"))
    rows = status if isinstance(status, list) else status.get("agents", [])
    assert sorted(r["agent"] for r in rows) == sorted(agents_of(host))
    assert all(r["active_state"] == "active" for r in rows), rows


def systemd_version(host):
    return int(host.check_output("systemctl --version").split()[1])


def test_auth_checked_at_session_start(host):
    # systemd 247 (Debian 11) cannot run an ExecStartPre= beside LoadCredential= in a sandboxed unit
    # (fixed in 248): there the unit requires the root one-shot agentops-auth@<name>.service, which runs
    # the same check before every start.
    pre_start = systemd_version(host) >= 248
    for name in agents_of(host):
        pre = host.check_output("systemctl show -p ExecStartPre agentops-%s.service", name)
        requires = host.check_output("systemctl show -p Requires --value agentops-%s.service", name).split()
        gate = "agentops-auth@%s.service" % name
        if name == "digest":
            assert "check-auth" not in pre and gate not in requires
            continue
        assert ("check-auth %s" % name in pre) == pre_start, pre
        assert (gate in requires) == (not pre_start), requires
        if not pre_start:
            assert host.check_output("systemctl show -p Result --value %s", gate) == "success"
        assert host.run("agentops check-auth %s", name).rc == 0


def test_token_rotation_schedule(host):
    listing = host.check_output("agentops rotate --list")
    if "mail-triage" in agents_of(host):
        cron = host.file("/etc/cron.d/agentops-token-rotation")
        # the daily job starts the hardened one-shot unit that runs `agentops rotate`
        assert cron.exists and "/usr/bin/systemctl start agentops-rotation.service" in cron.content_string
        unit = host.file("/etc/systemd/system/agentops-rotation.service").content_string
        assert "ExecStart=/usr/local/bin/agentops rotate" in unit.splitlines()
        assert "mail-triage" in listing and "api_token" in listing
    else:
        assert not host.file("/etc/cron.d/agentops-token-rotation").exists


def test_no_secret_outside_credential_files(host):
    for canary in CANARIES:
        assert host.run("journalctl --no-pager | grep -F -q -- %s", canary).rc == 1, "journal"
        assert host.run("grep -r -F -l -- %s /etc/systemd /run/systemd/system 2>/dev/null", canary).rc == 1
        # The fake API's request log records the Authorization headers it received on purpose.
        world = host.run("find / -xdev -type f -perm -o=r -not -path '/proc/*' -not -path '/sys/*' "
                         "-not -path '/var/log/agentops-fake-endpoint/*' "
                         "-size -2M -print0 2>/dev/null | xargs -0 grep -F -l -- %s 2>/dev/null", canary)
        assert world.stdout.strip() == "", world.stdout
    for name in agents_of(host):
        show = host.check_output("systemctl show agentops-%s.service", name)
        assert not any(c in show for c in CANARIES)


def test_converged_check_mode_and_verbose_output(host, run_playbook):
    result = run_playbook(host, "converge.yml", check=True, diff=True, verbosity=3)
    assert result.rc == 0, result.output[-3000:]
    assert result.recap["changed"] == 0, result.output[-3000:]
    for canary in CANARIES:
        assert canary not in result.output, "a secret leaked into ansible-playbook -vvv --diff output"


HUNG = {"agentops-default-debian12": "mail-triage", "agentops-default-debian13": "research",
        "agentops-default-debian11": "archive"}


def _last_journal_time(host, unit):
    out = host.check_output("journalctl --no-pager -q -o json -n 1 _SYSTEMD_UNIT=%s", unit)
    return int(json.loads(out.splitlines()[-1])["__REALTIME_TIMESTAMP"]) / 1e6


def test_default_tick_honours_a_15s_interval(host, wait_for):
    """No tick variable set (default 1min), interval 15s, max_silence 30s: a hang is alerted within 50 s."""
    timer = host.check_output("systemctl show -p TimersMonotonic agentops-heartbeat.timer")
    assert "OnUnitActiveUSec=15s" in timer, timer
    name = HUNG[host.backend.host]
    unit = "agentops-%s.service" % name
    pid = host.check_output("systemctl show -p MainPID --value %s", unit).strip()
    assert int(pid) > 0
    seen = len(endpoint_log(host, 18090))
    host.check_output("kill -STOP %s", pid)
    try:
        alert = wait_for(lambda: next((r for r in endpoint_log(host, 18090)[seen:]
                                       if "%s/silent" % name in json.dumps(r["body"])), None), 90,
                         message="the silence alert of the hung agent")
        last = _last_journal_time(host, unit)
        latency = alert["time"] - last
        print("hang of %s alerted %.1f s after its last progress" % (name, latency))
        figures = os.path.join(ROOT, ".cache", "logs", "figures-default.jsonl")
        os.makedirs(os.path.dirname(figures), exist_ok=True)
        with open(figures, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"host": host.backend.host, "figure": "hang_default_tick_15s",
                                     "seconds": round(latency, 1)}) + "\n")
        assert latency <= 50, latency
    finally:
        host.check_output("kill -CONT %s", pid)
    wait_for(lambda: any("%s/silent" % name in json.dumps(r["body"]) and "resolved" in json.dumps(r["body"])
                         for r in endpoint_log(host, 18090)[seen:]), 90, message="the resolved notice")
