"""A role applied alone (roles: [agentops.fleet.<role>]) reports a bad agent entry by the agent's name.

Ansible validates a role's meta/argument_specs.yml before the role's first task, and its message
names no agent (``agentops_agents.colour``). Every role therefore depends on agentops.fleet.contract,
which runs first and fails with the inventory contract's message. The play targets the controller
in check mode and fails at its first task: nothing is changed.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
# The roles that read agentops_agents (alerts and journald do not).
ROLES = ["agents", "auth", "heartbeat", "token_rotation"]
PLAY = """
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    agentops_agents:
      - {name: fine, command: /bin/true}
      - {name: mail, command: /bin/true, colour: blue}
  roles:
    - agentops.fleet.%s
"""


@pytest.mark.parametrize("role", ROLES)
def test_first_error_names_the_agent(tmp_path, role):
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAY % role)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".cache", "collections"),
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "--check",
                           str(playbook)], cwd=str(tmp_path), env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=300, check=False)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "agentops_agents[mail].colour: unknown key" in proc.stdout, proc.stdout[-3000:]
    assert "Validating arguments against arg spec" not in proc.stdout, proc.stdout[-3000:]
    assert "TASK [agentops.fleet.contract : Validate the inventory contract of %s]" % role in proc.stdout
