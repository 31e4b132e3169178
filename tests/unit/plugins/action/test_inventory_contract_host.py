"""agentops.fleet.inventory_contract on a real host (this machine, as root, connection local): the read-only checks
of the agents' commands and auth-check paths run in one module call, in check mode too. A reason in a place only
root can write refuses the run before any change, naming agentops_agents[<name>].command; a reason in a place an
agent's user can write holds that agent alone (fact agentops_agents_held) and nothing behind it is shown."""
import json
import os
import pwd
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
CANARY = "CANARY-root-only-contract-31f0"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the agent's directory belongs to nobody")

PLAY = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Validate
      agentops.fleet.inventory_contract:
        roles: [agents]
    - name: Show the held agents
      ansible.builtin.debug:
        msg: "HELD={{ agentops_agents_held | to_json }}"
"""


def play(tmp_path, agents, check=False):
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAY)
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({"agentops_agents": agents, "ansible_python_interpreter": sys.executable}))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".cache", "collections"),
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,",
            "-e", "@%s" % extra, str(playbook)] + (["--check"] if check else [])
    proc = subprocess.run(argv, cwd=str(tmp_path), env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=300, check=False)
    held = None
    for line in proc.stdout.splitlines():
        if '"msg": "HELD=' in line:
            held = json.loads(json.loads(line.split('"msg": ', 1)[1]).split("=", 1)[1])
    return proc.returncode, proc.stdout, held


@pytest.fixture
def evil_home(trusted_dir):
    """A directory of nobody's (like /var/lib/agentops/evil) whose bin/run links to a root-only node script."""
    nobody = pwd.getpwnam("nobody")
    home = os.path.join(trusted_dir, "evil")
    os.makedirs(os.path.join(home, "bin"))
    for path in (home, os.path.join(home, "bin")):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    secret = os.path.join(trusted_dir, "root-only")
    with open(secret, "w") as handle:
        handle.write("#!/usr/bin/node\n%s\n" % CANARY)
    os.chmod(secret, 0o600)
    os.symlink(secret, os.path.join(home, "bin", "run"))
    os.symlink(secret, os.path.join(home, "token"))
    return home, secret


@pytest.mark.parametrize("check", [False, True], ids=["run", "check"])
def test_a_missing_executable_in_a_root_only_place_refuses_the_run(tmp_path, trusted_dir, check):
    command = os.path.join(trusted_dir, "opt", "mail-triage", "run")
    rc, out, held = play(tmp_path, [{"name": "fine", "command": "/bin/true"},
                                    {"name": "mail-triage", "command": command + " --loop"},
                                    {"name": "later", "command": command, "enabled": False}], check=check)
    assert rc != 0, out[-3000:]
    assert ("agentops_agents[mail-triage].command: %s does not exist on the host: install it before the converge, "
            "or set enabled: false for this agent until it is there" % command) in out
    assert "agentops_agents[later]" not in out and "agentops_agents[fine]" not in out
    assert "HELD=" not in out


def test_an_agents_own_symlinks_hold_that_agent_only(tmp_path, evil_home):
    """A strict agent's command and its file check's token path link to a root-only file starting with
    '#!/usr/bin/node': the run goes on, the agent is held, neither the target nor its first line is shown."""
    home, secret = evil_home
    rc, out, held = play(tmp_path, [
        {"name": "fine", "command": "/bin/true", "hardening": "strict"},
        {"name": "evil", "command": os.path.join(home, "bin", "run"), "hardening": "strict",
         "auth_checks": [{"name": "tok", "type": "file", "path": os.path.join(home, "token")}]}])
    assert rc == 0, out[-3000:]
    link = "is a symlink (not followed): in a directory that a user other than root can write"
    assert held == {"evil": ["agentops_agents[evil].command: %s/bin/run %s" % (home, link),
                             "agentops_agents[evil].auth_checks[tok].path: %s/token %s" % (home, link)]}
    assert secret not in out and CANARY not in out and "#!/usr/bin/node" not in out


def test_a_jit_script_the_agent_wrote_holds_it_with_the_usual_message(tmp_path, evil_home):
    home, secret = evil_home
    script = os.path.join(home, "bin", "agent.js")
    with open(script, "w") as handle:
        handle.write("#!/usr/bin/node\nconsole.log(1)\n")
    os.chmod(script, 0o755)
    rc, out, held = play(tmp_path, [{"name": "evil", "command": script, "hardening": "strict"},
                                    {"name": "fine", "command": "/bin/true"}], check=True)
    assert rc == 0, out[-3000:]
    assert held == {"evil": ["agentops_agents[evil].hardening: strict sets MemoryDenyWriteExecute=yes, which kills "
                             "the node runtime at start (%s starts with '#!/usr/bin/node'), so the agent would "
                             "crash-loop; set hardening: standard for this agent (nothing was changed)" % script]}
