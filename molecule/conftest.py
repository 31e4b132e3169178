"""Fixtures shared by the testinfra suites of every Molecule scenario."""
import os
import re
import subprocess
import time

import pytest

RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)"
                   r"(?:\s+skipped=(\d+))?(?:\s+rescued=(\d+))?(?:\s+ignored=(\d+))?", re.M)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


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


def _inventory():
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory:
        raise RuntimeError("MOLECULE_INVENTORY_FILE is not set: run the tests through Molecule")
    # The directory carries the scenario's group_vars/host_vars next to the inventory file.
    return os.path.dirname(inventory)


def _run(host_name, playbook, extra_vars=None, check=False, diff=False, verbosity=0, expect_fail=False,
         env=None, timeout=900):
    scenario_dir = os.environ["MOLECULE_SCENARIO_DIRECTORY"]
    path = playbook if os.path.isabs(playbook) else os.path.join(scenario_dir, playbook)
    cmd = ["ansible-playbook", "-i", _inventory(), "--limit", host_name, path]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if verbosity:
        cmd.append("-" + "v" * verbosity)
    for key, value in (extra_vars or {}).items():
        import json
        cmd += ["-e", json.dumps({key: value})]
    run_env = dict(os.environ)
    run_env["ANSIBLE_FORCE_COLOR"] = "0"
    run_env["ANSIBLE_NOCOLOR"] = "1"
    run_env["PY_COLORS"] = "0"
    run_env.update(env or {})
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=run_env, timeout=timeout, check=False)
    output = ANSI.sub("", proc.stdout)
    recap = {}
    for match in RECAP.finditer(output):
        if match.group(1) == host_name:
            keys = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")
            recap = {k: int(v or 0) for k, v in zip(keys, match.groups()[1:])}
    if expect_fail:
        assert proc.returncode != 0, "playbook %s was expected to fail but passed:\n%s" % (playbook, output[-4000:])
    if not recap and "PLAY RECAP" in output:
        raise AssertionError("no recap line for %s in the output of %s:\n%s" % (host_name, playbook, output[-4000:]))
    return PlaybookResult(proc.returncode, output, recap)


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


def wait_for(predicate, timeout, interval=0.5, message="condition"):
    """Poll predicate() until it returns a truthy value or timeout seconds pass; return the value."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %ss waiting for %s (last value: %r)" % (timeout, message, last))
        time.sleep(interval)


@pytest.fixture(name="wait_for")
def wait_for_fixture():
    """The wait_for(predicate, timeout, interval=0.5, message=...) helper as a fixture."""
    return wait_for
