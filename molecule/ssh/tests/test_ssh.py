"""site.yml converged over SSH as an unprivileged user with sudo (become), pipelining on, host keys checked.

The tests look at the container through docker (root); the SSH runs are the converge and idempotence
steps of this scenario and the ones below, all through the loopback ProxyCommand.
"""
import os
import subprocess

HOST = "agentops-ssh-debian12"
testinfra_hosts = ["docker://" + HOST]
EPHEMERAL = os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
PROXY = "docker exec -i %s /usr/local/sbin/agentops-test-relay 22" % HOST
CANARY = "CANARY-ssh-token-3141"


def ssh(known_hosts, *command):
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "ProxyCommand=" + PROXY, "-o", "UserKnownHostsFile=" + known_hosts,
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
            "-i", os.path.join(EPHEMERAL, "deploy_key"), "deploy@" + HOST] + list(command)
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, check=False)


def test_converge_came_over_ssh_as_deploy_with_sudo(host):
    log = host.check_output("journalctl -u ssh --no-pager -o cat")
    assert "Accepted publickey for deploy from 127.0.0.1" in log, log[-2000:]
    assert "for root" not in log
    sudo = host.check_output("journalctl _COMM=sudo --no-pager -o cat")
    assert "deploy : " in sudo and "USER=root" in sudo, sudo[-2000:]
    # what site.yml laid down through sudo: a running agent, root-only credentials, the on-host command
    assert host.service("agentops-remote.service").is_running
    cred = host.file("/etc/agentops/credentials/remote/api_token")
    assert cred.user == "root" and cred.mode == 0o600 and cred.content_string.strip() == CANARY
    assert host.file("/usr/local/bin/agentops").user == "root"
    assert host.service("agentops-heartbeat.timer").is_running


def test_sshd_listens_on_loopback_only(host):
    listening = []
    for line in host.file("/proc/net/tcp").content_string.splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A":  # LISTEN
            address, port = fields[1].split(":")
            if int(port, 16) == 22:
                listening.append(address)
    assert listening == ["0100007F"], listening  # 127.0.0.1 only
    assert not [line for line in host.file("/proc/net/tcp6").content_string.splitlines()[1:]
                if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == 22]


def test_host_key_checking_is_on(tmp_path):
    good = ssh(os.path.join(EPHEMERAL, "known_hosts"), "id", "-un")
    assert good.returncode == 0 and good.stdout.strip().splitlines()[-1] == "deploy", good.stdout
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    refused = ssh(str(empty), "true")
    assert refused.returncode != 0 and "Host key verification failed" in refused.stdout, refused.stdout
    wrong = tmp_path / "wrong_hosts"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    wrong.write_text("%s %s\n" % (HOST, " ".join((tmp_path / "other.pub").read_text().split()[:2])))
    changed = ssh(str(wrong), "true")
    assert changed.returncode != 0 and "HOST IDENTIFICATION HAS CHANGED" in changed.stdout, changed.stdout


def test_check_mode_over_ssh_changes_nothing(host, run_playbook):
    before = host.check_output("find /etc/agentops /etc/systemd/system -printf '%p %s %T@\\n' | sort")
    result = run_playbook(HOST, os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "converge.yml"),
                          check=True, diff=True, verbosity=3)
    assert result.rc == 0 and result.recap.get("changed") == 0, result.output[-3000:]
    assert "ESTABLISH SSH CONNECTION FOR USER: deploy" in result.output
    assert CANARY not in result.output
    assert host.check_output("find /etc/agentops /etc/systemd/system -printf '%p %s %T@\\n' | sort") == before
