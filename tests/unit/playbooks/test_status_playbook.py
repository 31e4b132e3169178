"""playbooks/status.yml, run for real on local hosts whose `agentops status --json` is a script.

Every kind of host in one run: agents, no agents, a failing command, a command printing garbage,
a file that is not executable, no command at all. The fleet table, the Markdown, HTML and text
reports, changed=0 and --check are checked.
"""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
AGENTS = [
    {"agent": "mail|bot", "active_state": "active", "sub_state": "running", "restarts": 3, "uptime_seconds": 50,
     "last_progress_age_seconds": 7300, "auth": [{"name": "g", "status": "AUTH_OK"}, {"name": "h", "status": "AUTH_EXPIRED"}],
     "next_rotation": "2026-03-02", "open_alerts": [{"key": "mail|bot/silent", "severity": "critical"}], "error": None},
    {"agent": "notes<&>", "active_state": "failed", "sub_state": "failed", "restarts": 0, "uptime_seconds": None,
     "last_progress_age_seconds": None, "auth": None, "next_rotation": None, "open_alerts": [], "error": None},
]
# What `agentops status --json` repeats in every row: the heartbeat's watcher and the dead-letter count.
WATCHER = {"last_run": 1_700_000_000.0, "duration": 0.31, "settings_error": None,
           "metrics": {"status": "missing", "detail": "/var/lib/prometheus/node-exporter does not exist"},
           "deadman": [{"target": "healthchecks hc-ping.com", "ok": False, "last_kind": "fail", "error": "HTTP 503",
                        "last_attempt_at": 1_700_000_000.0, "failures": 4, "last_ok_at": None}]}
for _row in AGENTS:
    _row.update(watcher=WATCHER, dead_letter=2, deadman=[])
SCRIPTS = {
    "web1": "#!/bin/sh\ncat <<'EOF'\n%s\nEOF\n" % json.dumps(AGENTS),
    "empty": "#!/bin/sh\necho '[]'\n",
    "fail": "#!/bin/sh\necho 'first line' >&2\necho 'agentops status: error: it broke' >&2\nexit 3\n",
    "garbage": "#!/bin/sh\necho nope\n",
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    base = tmp_path_factory.mktemp("fleet")
    hosts = {}
    for name, script in SCRIPTS.items():
        path = base / (name + ".sh")
        path.write_text(script)
        path.chmod(0o755)
        hosts[name] = {"agentops_status_command": str(path)}
    (base / "noexec.sh").write_text("x\n")
    hosts["noexec"] = {"agentops_status_command": str(base / "noexec.sh")}
    hosts["bare"] = {"agentops_status_command": str(base / "missing")}
    inventory = {"all": {"vars": {"ansible_connection": "local", "ansible_become": False,
                                  "ansible_python_interpreter": sys.executable}, "hosts": hosts}}
    (base / "inventory.json").write_text(json.dumps(inventory))
    return base


def status(fleet, *args):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".cache", "collections"),
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORKS="6")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i",
                           str(fleet / "inventory.json"), "playbooks/status.yml"] + list(args),
                          cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=300, check=False)
    return proc.returncode, proc.stdout


def recap(output):
    return dict((m.group(1), int(m.group(2))) for m in re.finditer(r"^(\w+)\s+: ok=\d+\s+changed=(\d+)", output, re.M))


def test_fleet_table_and_markdown_report(fleet):
    report = fleet / "fleet.md"
    rc, output = status(fleet, "-e", "agentops_status_report_path=%s" % report)
    assert rc == 0, output[-3000:]
    assert recap(output) == dict((h, 0) for h in ("web1", "empty", "fail", "garbage", "noexec", "bare"))
    table = output[output.index("TASK [Fleet status]"):output.index("TASK [Write the status report]")]
    lines = [line.strip().strip('",') for line in table.splitlines()]
    assert re.search(r"HOST\s+AGENT\s+STATE\s+RESTARTS\s+LAST PROGRESS\s+AUTH\s+NEXT ROTATION\s+OPEN ALERTS", table)
    assert any(re.match(r"web1\s+mail\|bot\s+active/running\s+3\s+2h\s+AUTH_EXPIRED\s+2026-03-02\s+1 critical:silent$",
                        line) for line in lines), table
    assert any(re.match(r"web1\s+notes<&>\s+failed/failed\s+0\s+-\s+-\s+-\s+-$", line) for line in lines), table
    for host, state in (("empty", "no agents"), ("fail", "error: exit 3: agentops status: error: it broke"),
                        ("garbage", "error: agentops status --json did not print a JSON list"),
                        ("noexec", "not provisioned (%s is not executable)" % (fleet / "noexec.sh")),
                        ("bare", "not provisioned")):
        assert any(re.match(r"%s\s+-\s+%s\s+-" % (host, re.escape(state)), line) for line in lines), (host, table)
    assert "6 host(s), 2 agent(s)" in table
    # The watchers of each host that answered, under the table: what would otherwise fail silently.
    assert any(re.match(r"web1: heartbeat: last run \d+d ago \(0\.31s\)$", line) for line in lines), table
    assert "web1: metrics: SKIPPED: /var/lib/prometheus/node-exporter does not exist" in lines, table
    assert any(line.startswith("web1: dead man's switch (host) healthchecks hc-ping.com: FAILING: fail ping ")
               and line.endswith("HTTP 503 (4 failure(s) in a row; last success never)") for line in lines), table
    assert "web1: dead-letter alerts: 2 (given up on; see the alert spool's dead-letter folder)" in lines, table
    assert not [line for line in lines if re.match(r"(empty|fail|garbage|noexec|bare): ", line)], table
    text = report.read_text()
    assert text.startswith("<!-- Managed by Ansible (agentops.fleet status.yml)")
    assert "| web1 | mail\\|bot | active/running | 3 | 2h | AUTH_EXPIRED | 2026-03-02 | 1 critical:silent |" in text
    assert "| bare | - | not provisioned | - | - | - | - | - |" in text
    assert "## Watchers" in text and "- web1: metrics: SKIPPED: /var/lib/prometheus/node-exporter does not exist" in text


def test_html_and_text_reports_in_check_mode(fleet):
    html = fleet / "fleet.html"
    rc, output = status(fleet, "--check", "-e", "agentops_status_report_path=%s" % html)
    assert rc == 0, output[-3000:]
    assert set(recap(output).values()) == {0}
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<tr>") == 8
    assert "<h2>Watchers</h2>" in page and "<li>web1: metrics: SKIPPED: " in page
    assert "<td>web1</td><td>notes&lt;&amp;&gt;</td><td class=\"bad\">failed/failed</td>" in page
    text = fleet / "fleet.out"
    rc, output = status(fleet, "-e", "agentops_status_report_path=%s" % text, "-e", "agentops_status_report_format=text")
    assert rc == 0, output[-3000:]
    lines = text.read_text().split("\n")
    assert lines[0].startswith("agentops fleet status, ") and lines[1] == ""
    assert lines[2].split()[:3] == ["HOST", "AGENT", "STATE"] and "6 host(s), 2 agent(s)" in lines
    assert lines[-2] == "web1: dead-letter alerts: 2 (given up on; see the alert spool's dead-letter folder)"


def test_unknown_report_format_is_refused(fleet):
    rc, output = status(fleet, "-e", "agentops_status_report_path=%s" % (fleet / "x.pdf"),
                        "-e", "agentops_status_report_format=pdf")
    assert rc != 0
    assert 'agentops_status_report_format must be markdown, html or text, got \\"pdf\\"' in output \
        or 'agentops_status_report_format must be markdown, html or text, got "pdf"' in output, output[-2000:]
    assert not (fleet / "x.pdf").exists()


def test_unreachable_host_gets_its_row(fleet, tmp_path):
    """A host that does not answer (SSH to a closed port on 127.0.0.1) is a row, not a failed play."""
    inventory = json.loads((fleet / "inventory.json").read_text())
    hosts = {"web1": inventory["all"]["hosts"]["web1"],
             "down": {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 9,
                      "ansible_ssh_common_args": "-o ConnectTimeout=5 -o StrictHostKeyChecking=no"}}
    inventory["all"]["hosts"] = hosts
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    report = tmp_path / "fleet.md"
    rc, output = status(tmp_path, "-e", "agentops_status_report_path=%s" % report)
    assert rc == 4, output[-3000:]  # ansible-playbook's exit code for an unreachable host
    assert "| down | - | unreachable | - | - | - | - | - |" in report.read_text()
    assert "| web1 | mail\\|bot |" in report.read_text()
    assert "2 host(s), 2 agent(s)" in output
