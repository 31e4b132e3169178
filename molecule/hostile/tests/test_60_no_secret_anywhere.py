"""After every attack of the scenario: no secret in the journal (every field), `systemctl show`, any process's
command line or environment, any file an unprivileged user can read, or any alert; and root never ran the
evil agent's code at any point of the scenario (the payloads of test_10 are still in place)."""
import json
import subprocess

from hostile_helpers import SECRET_MARK, host_name, root_canaries, webhook

# The test doubles' own files hold what they were sent (tokens in Authorization headers, rotated tokens in the
# rules): they are the remote side, not the host's.
EXCLUDES = ["/var/log/agentops-fake-endpoint", "/etc/agentops-fake-endpoint"]


def scan(host):
    argv = ["docker", "exec", "-i", host_name(host), "/opt/agentops-test/leakscan"]
    for path in EXCLUDES:
        argv += ["--exclude", path]
    proc = subprocess.run(argv, input=(SECRET_MARK + "\n").encode(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout.decode())


def test_no_secret_in_journal_units_processes_or_readable_files(host):
    found = scan(host)
    assert found == {"journal": [], "systemctl": [], "proc": [], "files": []}


def test_no_secret_in_any_alert(host):
    alerts = webhook(host)
    assert len(alerts) > 5  # the scenario did raise alerts
    leaked = [a["key"] for a in alerts if SECRET_MARK in json.dumps(a)]
    assert leaked == []


def test_root_never_ran_the_agent_code(host):
    assert root_canaries(host) == []
