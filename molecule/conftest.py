"""Fixtures shared by the testinfra suites of every Molecule scenario."""
import pytest
from agentops_playbook import ansible_playbook
from agentops_testlib import wait_for


class PlaybookResult:
    """Outcome of one ansible-playbook run: rc, full output and the host's recap."""

    def __init__(self, rc, output, recap):
        self.rc = rc
        self.output = output
        self.recap = recap

    def __iter__(self):  # allows: rc, output, recap = run_playbook(...)
        return iter((self.rc, self.output, self.recap))

    def __repr__(self):
        return "PlaybookResult(rc=%r, recap=%r)" % (self.rc, self.recap)


def _run(host_name, playbook, extra_vars=None, check=False, diff=False, verbosity=0, expect_fail=False,
         env=None, timeout=900):
    rc, output, recaps = ansible_playbook(host_name, playbook, extra_vars=extra_vars, check=check, diff=diff,
                                          verbosity=verbosity, env=env, timeout=timeout)
    recap = recaps.get(host_name, {})
    if expect_fail:
        assert rc != 0, "playbook %s was expected to fail but passed:\n%s" % (playbook, output[-4000:])
    if not recap and "PLAY RECAP" in output:
        raise AssertionError("no recap line for %s in the output of %s:\n%s" % (host_name, playbook, output[-4000:]))
    return PlaybookResult(rc, output, recap)


@pytest.fixture
def run_playbook():
    """run_playbook(host, playbook, extra_vars=None, check=False, diff=False, verbosity=0, expect_fail=False).

    Runs ansible-playbook against that one testinfra host with the scenario's inventory.
    Returns a PlaybookResult (rc, output, recap) that also unpacks as a tuple.
    """
    def runner(host, playbook, **kwargs):
        name = host if isinstance(host, str) else host.backend.host
        return _run(name, playbook, **kwargs)
    return runner


@pytest.fixture(name="wait_for")
def wait_for_fixture():
    """The wait_for(predicate, timeout, interval=0.5, message=...) helper as a fixture."""
    return wait_for
