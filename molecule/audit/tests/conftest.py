"""Fixtures of the audit scenario: run a playbook against several hosts at once (the fleet table)."""
import pytest
from agentops_playbook import ansible_playbook


@pytest.fixture
def run_fleet():
    """run_fleet(playbook, limit='all', extra_vars=None, check=False) -> (rc, output, {host: recap})."""
    def runner(playbook, limit="all", extra_vars=None, check=False):
        rc, output, recaps = ansible_playbook(limit, playbook, extra_vars=extra_vars, check=check)
        assert recaps, "no PLAY RECAP in the output of %s:\n%s" % (playbook, output[-4000:])
        return rc, output, recaps
    return runner
