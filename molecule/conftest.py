"""Fixtures shared by the testinfra suites of every Molecule scenario."""
import os

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


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """One pytest-xdist worker per host, for scenarios that ask for it (verifier options `n` and
    `dist: loadgroup` in their molecule.yml; the group is the host): every test of one host runs in one
    worker, in file order, and the hosts run side by side. Only scenarios whose tests touch nothing but
    their own host opt in. A test without a host goes to one "controller" group.

    The host is read from the test id (testinfra's "ansible://<host>" parameter) against the scenario's
    inventory, not from xdist_group marks: pytest 9.2 no longer carries the group that marks add
    (pytest-xdist issue 1386). A host-parametrized test whose host is not found fails the run instead of
    running beside its host's other tests."""
    if getattr(config.option, "dist", "no") != "loadgroup":
        return None
    from testinfra.utils.ansible_runner import AnsibleRunner
    from xdist.scheduler import LoadScopeScheduling

    hosts = sorted(AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("all"), key=len, reverse=True)

    class PerHostScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            params = nodeid[nodeid.find("[") + 1:] if "[" in nodeid else ""
            if not params.startswith("ansible://"):
                return "controller"
            for name in hosts:     # longest first: a host name may be the prefix of another
                if params.startswith("ansible://%s]" % name) or params.startswith("ansible://%s-" % name):
                    return name
            raise pytest.UsageError("no host of the inventory (%s) in the test id %s" % (", ".join(hosts), nodeid))

    return PerHostScheduling(config, log)
