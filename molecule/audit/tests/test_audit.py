"""audit.yml and status.yml against two provisioned hosts (Debian 12 and 13) and one bare host."""
import json
import re

import pytest

AUDIT = "../../playbooks/audit.yml"
STATUS = "../../playbooks/status.yml"
ITEMS = ["kill_mode", "restart", "auth_at_start", "rotation_schedule", "heartbeat", "log_retention",
         "workstate_protocol", "failure_modes", "alert_path"]
CANARIES = ["CANARY-audit-bot-token-never-print", "seed-CANARY-audit-api-token-never-print",
            "rotated-audit-token"]
BARE = "agentops-audit-bare"
PROVISIONED = ["agentops-audit-debian12", "agentops-audit-debian13"]
AGENTS = ["agentops-mailbot.service", "agentops-notes.service"]


def name_of(host):
    return host.backend.host


def bare_only(host):
    if name_of(host) != BARE:
        pytest.skip("runs on the bare host only")


def provisioned_only(host):
    if name_of(host) == BARE:
        pytest.skip("runs on the provisioned hosts only")


def audit(run_playbook, host, tmp_path, check=False, **extra):
    """Run audit.yml on one host with a JSON report; returns (result, report of the host)."""
    report = tmp_path / ("audit-%s.json" % name_of(host))
    extra_vars = {"agentops_audit_report_path": str(report)}
    extra_vars.update(extra)
    result = run_playbook(host, AUDIT, extra_vars=extra_vars, check=check)
    data = json.loads(report.read_text())
    return result, data["hosts"][name_of(host)]


def items_of(report):
    return dict((item["id"], item) for item in report["checklist"])


def etc_checksums(host):
    out = host.check_output("find /etc -xdev -type f -print0 | sort -z | xargs -0 sha256sum")
    return out


def wait_agents_running(host, wait_for):
    for unit in AGENTS:
        wait_for(lambda u=unit: host.service(u).is_running, timeout=120, message="%s running" % unit)


def test_bare_host_fails_every_item_with_a_reason(host, run_playbook, tmp_path):
    bare_only(host)
    result, report = audit(run_playbook, host, tmp_path)
    assert result.rc == 0, result.output[-3000:]
    assert result.recap["changed"] == 0 and result.recap["failed"] == 0
    assert report["passed"] is False
    assert [i["id"] for i in report["checklist"]] == ITEMS
    assert report["failed_items"] == ITEMS
    for item in report["checklist"]:
        assert item["passed"] is False
        assert len(item["reason"]) > 20, item
    items = items_of(report)
    for item in ("kill_mode", "restart", "auth_at_start", "rotation_schedule", "workstate_protocol",
                 "failure_modes"):
        assert items[item]["reason"].startswith("no agent unit found"), items[item]
    assert "no agentops-heartbeat*.timer installed" in items["heartbeat"]["reason"]
    assert "SystemMaxUse is not set" in items["log_retention"]["reason"]
    assert "MaxRetentionSec is not set" in items["log_retention"]["reason"]
    assert "agentops-alert@.service is not installed" in items["alert_path"]["reason"]
    assert "/etc/agentops/agentops.json" in items["alert_path"]["reason"]
    # the fake endpoint's template unit (agentops-fake-endpoint@.service) is not mistaken for an agent
    assert report["agents"] == []
    assert "FAIL  kill_mode" in result.output
    assert "0/9 passed" in result.output


def test_strict_flag_fails_the_play_on_findings(host, run_playbook, tmp_path):
    bare_only(host)
    result = run_playbook(host, AUDIT, extra_vars={"agentops_audit_fail_on_findings": True}, expect_fail=True)
    assert result.recap["failed"] == 1
    assert "Agent Ops Checklist: 0/9 passed; failed: kill_mode, restart" in result.output
    # the string form used on the command line (-e agentops_audit_fail_on_findings=true) works too
    result = run_playbook(host, AUDIT, extra_vars={"agentops_audit_fail_on_findings": "true"}, expect_fail=True)
    assert result.recap["failed"] == 1


@pytest.mark.parametrize("extra,needle", [
    ({"agentops_audit_fail_on_findings": "maybe"}, "agentops_audit_fail_on_findings must be true or false"),
    ({"agentops_audit_report_format": "pdf", "agentops_audit_report_path": "/tmp/x.pdf"},
     "agentops_audit_report_format must be json or markdown"),
    ({"agentops_audit_units": "agentops-x.service"}, "agentops_audit_units and agentops_audit_rotation_exempt must"),
    ({"agentops_audit_units": ["bad unit;rm"]}, "units: not a systemd unit name"),
])
def test_bad_audit_input_is_rejected(host, run_playbook, extra, needle):
    bare_only(host)
    result = run_playbook(host, AUDIT, extra_vars=extra, expect_fail=True)
    assert needle in result.output


def test_units_deployed_otherwise_are_audited(host, run_playbook, tmp_path):
    bare_only(host)
    result, report = audit(run_playbook, host, tmp_path, agentops_audit_units=["cron.service"])
    assert result.rc == 0
    items = items_of(report)
    assert [a["unit"] for a in report["agents"]] == ["cron.service"]
    # Debian's cron.service sets KillMode=process: a real finding on a unit this collection never touched
    assert "cron.service: KillMode=process" in items["kill_mode"]["reason"]
    assert "cron.service: RestartSec not set" in items["restart"]["reason"]  # Debian sets Restart=on-failure only
    assert "cron.service: OnFailure=(none)" in items["alert_path"]["reason"]


def test_provisioned_host_passes_every_item(host, run_playbook, tmp_path, wait_for):
    provisioned_only(host)
    wait_agents_running(host, wait_for)
    result, report = audit(run_playbook, host, tmp_path)
    assert result.rc == 0, result.output[-3000:]
    failed = [i for i in report["checklist"] if not i["passed"]]
    assert failed == [], failed
    assert report["passed"] is True
    assert sorted(a["unit"] for a in report["agents"]) == AGENTS
    items = items_of(report)
    assert "agentops-mailbot.service, agentops-notes.service" in items["kill_mode"]["reason"]
    assert "mailbot/api_token every 45d, next due" in items["rotation_schedule"]["reason"]
    assert "/etc/cron.d/agentops-token-rotation" in items["rotation_schedule"]["reason"]
    assert "agentops-heartbeat.timer" in items["heartbeat"]["reason"]
    assert "SystemMaxUse=2G" in items["log_retention"]["reason"]
    assert "MaxRetentionSec=1week" in items["log_retention"]["reason"]
    assert "email, api" in items["failure_modes"]["reason"]
    assert "filesystem" in items["failure_modes"]["reason"]
    assert "channels: telegram, webhook" in items["alert_path"]["reason"]
    # the CI gate lets a clean host through
    strict = run_playbook(host, AUDIT, extra_vars={"agentops_audit_fail_on_findings": True})
    assert strict.rc == 0 and strict.recap["failed"] == 0


def test_audit_changes_nothing(host, run_playbook, tmp_path, wait_for):
    if name_of(host) != BARE:
        wait_agents_running(host, wait_for)
    before = etc_checksums(host)
    for check in (False, True):
        result, report = audit(run_playbook, host, tmp_path, check=check)
        assert result.rc == 0
        assert result.recap["changed"] == 0, result.output[-3000:]
        assert len(report["checklist"]) == len(ITEMS)  # the audit really ran in check mode too
    assert etc_checksums(host) == before
    assert not host.file("/etc/agentops/audit").exists


def test_audit_never_prints_secrets(host, run_playbook):
    provisioned_only(host)
    result = run_playbook(host, AUDIT, verbosity=3)
    assert result.rc == 0
    assert "channels: telegram, webhook" in result.output
    for canary in CANARIES:
        assert canary not in result.output


def test_status_lists_the_agents_of_a_provisioned_host(host, run_playbook, tmp_path, wait_for):
    provisioned_only(host)
    wait_agents_running(host, wait_for)
    host.run_expect([0], "/usr/local/bin/agentops heartbeat")  # what the timer runs: records auth results
    report = tmp_path / "status.md"
    result = run_playbook(host, STATUS, extra_vars={"agentops_status_report_path": str(report)})
    assert result.rc == 0 and result.recap["changed"] == 0
    rows = dict((row[1], row) for row in md_rows(report.read_text()) if row[0] == name_of(host))
    assert sorted(rows) == ["mailbot", "notes"]
    mailbot = rows["mailbot"]
    assert mailbot[2] == "active/running"
    assert re.match(r"^\d+$", mailbot[3])
    assert re.match(r"^\d+[smhd]$", mailbot[4]), mailbot  # last progress seen in the journal
    assert mailbot[5] == "AUTH_OK"
    assert re.match(r"^\d{4}-\d{2}-\d{2}$", mailbot[6]), mailbot
    assert rows["notes"][5] == "-" and rows["notes"][6] == "-"
    for canary in CANARIES:
        assert canary not in result.output


def md_rows(text):
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith(("| host", "| ---")):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows


def test_fleet_status_table(host, run_fleet, tmp_path):
    """One table for the fleet: the agents of both provisioned hosts, "not provisioned" for the bare one."""
    bare_only(host)
    for fmt in ("md", "html"):
        report = tmp_path / ("fleet." + fmt)
        rc, output, recaps = run_fleet(STATUS, extra_vars={"agentops_status_report_path": str(report)}, check=True)
        assert rc == 0, output[-3000:]
        assert sorted(recaps) == sorted(PROVISIONED + [BARE])
        assert all(r["changed"] == 0 and r["failed"] == 0 for r in recaps.values()), recaps
        table = output[output.index("TASK [Fleet status]"):]
        table = table[:table.index("TASK [Write the status report]")]
        assert re.search(r"HOST\s+AGENT\s+STATE\s+RESTARTS\s+LAST PROGRESS\s+AUTH\s+NEXT ROTATION\s+OPEN ALERTS",
                         table)
        for name in PROVISIONED:
            for agent in ("mailbot", "notes"):
                assert re.search(r"%s\s+%s\s+active/running" % (name, agent), table), table
        assert re.search(r"%s\s+-\s+not provisioned" % BARE, table), table
        assert "3 host(s), 4 agent(s)" in table
        text = report.read_text()
        if fmt == "md":
            rows = md_rows(text)
            assert [r[2] for r in rows if r[0] == BARE] == ["not provisioned"]
            assert sorted(r[1] for r in rows if r[0] in PROVISIONED) == ["mailbot", "mailbot", "notes", "notes"]
        else:
            assert text.startswith("<!DOCTYPE html>")
            assert "<td>%s</td><td>-</td><td class=\"bad\">not provisioned</td>" % BARE in text
            assert text.count("<td>mailbot</td>") == 2


def test_fleet_audit_summary(host, run_fleet, tmp_path):
    bare_only(host)
    report = tmp_path / "fleet-audit.md"
    rc, output, recaps = run_fleet(AUDIT, extra_vars={"agentops_audit_report_path": str(report)})
    assert rc == 0, output[-3000:]
    assert all(r["changed"] == 0 for r in recaps.values()), recaps
    for name in PROVISIONED:
        assert re.search(r"%s\s+pass\s+9/9" % name, output), output[-3000:]
    assert re.search(r"%s\s+FAIL\s+0/9" % BARE, output)
    assert "2 host(s) pass every item, 1 fail at least one" in output
    text = report.read_text()
    assert "## %s" % BARE in text and "| kill_mode | **FAIL** | no agent unit found" in text
    # the CI gate fails the bare host only
    rc, output, recaps = run_fleet(AUDIT, extra_vars={"agentops_audit_fail_on_findings": True})
    assert rc != 0
    assert recaps[BARE]["failed"] == 1
    assert all(recaps[name]["failed"] == 0 for name in PROVISIONED), recaps


def test_audit_finds_regressions(host, run_playbook, tmp_path, wait_for):
    """Break one thing per item on a provisioned host; the audit names it; restored, everything passes again."""
    provisioned_only(host)
    wait_agents_running(host, wait_for)
    dropin_dir = "/etc/systemd/system/agentops-notes.service.d"
    agents_md = "/var/lib/agentops/notes/AGENTS.md"
    journald = "/etc/systemd/journald.conf.d/agentops.conf"
    alert_config = "/etc/agentops/agentops.json"
    host.run_expect([0], "cp -p %s /root/AGENTS.md.audit-test" % agents_md)
    try:
        host.run_expect([0], "mkdir -p %s && printf '[Service]\\nKillMode=process\\n"
                             "Restart=always\\n' > %s/zz-audit-test.conf && systemctl daemon-reload"
                        % (dropin_dir, dropin_dir))
        host.run_expect([0], "systemctl stop agentops-heartbeat.timer")
        host.run_expect([0], "mv %s /root/journald-agentops.conf.audit-test" % journald)
        host.run_expect([0], "mv %s /root/agentops.json.audit-test" % alert_config)
        host.run_expect([0], "printf '# Agent notes\\nDo the work.\\n## Failure modes\\n- **any tool**: stop\\n' > %s"
                        % agents_md)
        result, report = audit(run_playbook, host, tmp_path)
        assert result.rc == 0
        items = items_of(report)
        assert "agentops-notes.service: KillMode=process" in items["kill_mode"]["reason"]
        assert "agentops-notes.service: Restart=always" in items["restart"]["reason"]
        assert "no alert configuration: cannot read %s" % alert_config in items["alert_path"]["reason"]
        assert "agentops-heartbeat.timer is inactive" in items["heartbeat"]["reason"]
        assert "SystemMaxUse is not set" in items["log_retention"]["reason"]
        assert "agentops-notes.service: %s does not mention WORKSTATE.md" % agents_md in \
            items["workstate_protocol"]["reason"]
        assert "only a generic entry (any tool)" in items["failure_modes"]["reason"]
        assert "agentops-mailbot.service" not in items["kill_mode"]["reason"]
        assert sorted(report["failed_items"]) == sorted(["kill_mode", "restart", "alert_path", "heartbeat",
                                                         "log_retention", "workstate_protocol", "failure_modes"])
        strict = run_playbook(host, AUDIT, extra_vars={"agentops_audit_fail_on_findings": True}, expect_fail=True)
        assert "Agent Ops Checklist: 2/9 passed" in strict.output
    finally:
        host.run("rm -rf %s && systemctl daemon-reload" % dropin_dir)
        host.run("systemctl start agentops-heartbeat.timer")
        host.run("test -e /root/journald-agentops.conf.audit-test && mv /root/journald-agentops.conf.audit-test %s"
                 % journald)
        host.run("mv /root/AGENTS.md.audit-test %s" % agents_md)
        host.run("test -e /root/agentops.json.audit-test && mv /root/agentops.json.audit-test %s" % alert_config)
    result, report = audit(run_playbook, host, tmp_path)
    assert report["passed"] is True, report["checklist"]
