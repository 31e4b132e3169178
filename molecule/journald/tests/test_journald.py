"""journald role: merged config, restart discipline, check mode, bad input, log flood."""
import os
import re

import pytest
import testinfra.utils.ansible_runner
from agentops_testlib import skip_unless_case_host

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("all")

DROPIN = "/etc/systemd/journald.conf.d/agentops.conf"
CAP = 32 * 1024 * 1024
FILE_SIZE = 4 * 1024 * 1024


def journald_pid(host):
    return host.check_output("systemctl show -P MainPID systemd-journald.service")


def checksum(host):
    return host.check_output("sha256sum %s" % DROPIN).split()[0]


def test_merged_config_shows_the_policy(host):
    merged = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    assert DROPIN in merged
    dropin = merged.split("# " + DROPIN, 1)[1]
    for line in ("Storage=persistent", "SystemMaxUse=32M", "SystemKeepFree=100M",
                 "MaxRetentionSec=1week", "SystemMaxFileSize=4M", "RateLimitBurst=0"):
        assert re.search(r"^%s$" % re.escape(line), dropin, re.M), line


def test_dropin_is_managed_and_root_owned(host):
    f = host.file(DROPIN)
    assert f.user == "root" and f.mode == 0o644
    assert "Ansible managed" in f.content_string or "managed by Ansible" in f.content_string.lower()


def test_persistent_storage_in_use(host):
    assert host.file("/var/log/journal").is_directory
    machine_id = host.file("/etc/machine-id").content_string.strip()
    assert machine_id, "systemd should have generated a machine id"
    assert host.file("/var/log/journal/%s" % machine_id).is_directory


def test_no_restart_without_change_and_check_mode_is_clean(host, run_playbook):
    pid = journald_pid(host)
    result = run_playbook(host, "converge.yml", check=True, diff=True)
    assert result.rc == 0, result.output[-3000:]
    assert result.recap["changed"] == 0, result.output[-3000:]
    result = run_playbook(host, "converge.yml")
    assert result.rc == 0 and result.recap["changed"] == 0, result.output[-3000:]
    assert journald_pid(host) == pid, "journald was restarted although nothing changed"


def test_restart_exactly_when_the_dropin_changes(host, run_playbook, wait_for):
    pid = journald_pid(host)
    check = run_playbook(host, "converge.yml", check=True, diff=True,
                         extra_vars={"agentops_journald_system_keep_free": "200M"})
    assert check.rc == 0 and check.recap["changed"] >= 1, check.output[-3000:]
    assert "+SystemKeepFree=200M" in check.output
    assert journald_pid(host) == pid, "check mode must not restart journald"
    assert "SystemKeepFree=100M" in host.file(DROPIN).content_string

    changed = run_playbook(host, "converge.yml", extra_vars={"agentops_journald_system_keep_free": "200M"})
    assert changed.rc == 0 and changed.recap["changed"] >= 1, changed.output[-3000:]
    assert "RUNNING HANDLER [agentops.fleet.journald : Restart systemd-journald]" in changed.output
    new_pid = wait_for(lambda: (journald_pid(host) not in ("0", pid)) and journald_pid(host), 30,
                       message="journald to come back with a new PID")
    assert host.service("systemd-journald").is_running

    restored = run_playbook(host, "converge.yml")
    assert restored.rc == 0 and restored.recap["changed"] >= 1, restored.output[-3000:]
    wait_for(lambda: journald_pid(host) not in ("0", new_pid), 30, message="journald restart after restore")
    assert "SystemKeepFree=100M" in host.file(DROPIN).content_string


BAD_INPUT = [
    ("agentops_journald_system_max_use", "lots", "not a journald size"),
    ("agentops_journald_system_max_use", "-1G", "not a journald size"),
    ("agentops_journald_system_keep_free", "500X", "not a journald size"),
    ("agentops_journald_system_max_file_size", "4 MB", "not a journald size"),
    ("agentops_journald_max_retention_sec", "1 fortnight", "not a systemd time span"),
    ("agentops_journald_max_retention_sec", "-7d", "not a systemd time span"),
    ("agentops_journald_rate_limit_interval_sec", "30 parsecs", "not a systemd time span"),
    ("agentops_journald_rate_limit_burst", "many", "not a whole number"),
    ("agentops_journald_extra_settings", {"SystemMaxUse": "1T"}, "not a valid extra [Journal] setting"),
    ("agentops_journald_extra_settings", {"ForwardToSyslog": "no\nSystemMaxUse=1T"}, "not a valid extra [Journal] setting"),
]


@pytest.mark.parametrize("variable,value,words", BAD_INPUT)
def test_bad_input_is_rejected_before_any_change(host, run_playbook, variable, value, words):
    skip_unless_case_host(host, testinfra_hosts, BAD_INPUT.index((variable, value, words)))
    before = checksum(host)
    pid = journald_pid(host)
    result = run_playbook(host, "converge.yml", extra_vars={variable: value}, expect_fail=True)
    assert variable in result.output, result.output[-3000:]
    assert words in result.output, result.output[-3000:]
    assert result.recap["changed"] == 0, result.output[-3000:]
    assert checksum(host) == before
    assert journald_pid(host) == pid


def test_log_flood_stays_under_the_cap(host, wait_for):
    # 96 MiB of random bytes, base64 encoded: about 4x the 32M cap, incompressible.
    host.check_output(
        "head -c 100663296 /dev/urandom | base64 -w 2000 | systemd-cat -t agentops-flood")
    host.check_output("journalctl --sync")

    def usage():
        out = host.check_output("journalctl --disk-usage")
        match = re.search(r"take up ([0-9.]+)([BKMGT])", out)
        assert match, out
        factor = {"B": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}[match.group(2)]
        return float(match.group(1)) * factor

    used = wait_for(lambda: usage() <= CAP + FILE_SIZE and usage(), 60, interval=2,
                    message="journal disk usage to drop under the cap")
    assert used > FILE_SIZE, "the flood should have filled the journal to near the cap (got %d bytes)" % used
    assert host.service("systemd-journald").is_running
    # journald kept logging after vacuuming: a fresh line is readable.
    host.check_output("echo agentops-after-flood | systemd-cat -t agentops-flood-check")
    wait_for(lambda: "agentops-after-flood" in host.check_output(
        "journalctl --no-pager -t agentops-flood-check -o cat"), 30, message="a journal line after the flood")
