"""Fixtures of the audit scenario: run a playbook against several hosts at once (the fleet table)."""
import json
import os
import re
import subprocess

import pytest

RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def run_fleet():
    """run_fleet(playbook, limit='all', extra_vars=None, check=False) -> (rc, output, {host: recap})."""
    def runner(playbook, limit="all", extra_vars=None, check=False):
        scenario_dir = os.environ["MOLECULE_SCENARIO_DIRECTORY"]
        inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
        cmd = ["ansible-playbook", "-i", inventory, "--limit", limit, os.path.join(scenario_dir, playbook)]
        if check:
            cmd.append("--check")
        for key, value in (extra_vars or {}).items():
            cmd += ["-e", json.dumps({key: value})]
        env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1", PY_COLORS="0")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              timeout=900, check=False)
        output = ANSI.sub("", proc.stdout)
        recaps = {}
        for match in RECAP.finditer(output):
            recaps[match.group(1)] = dict(zip(("ok", "changed", "unreachable", "failed"),
                                              (int(v) for v in match.groups()[1:])))
        assert recaps, "no PLAY RECAP in the output of %s:\n%s" % (playbook, output[-4000:])
        return proc.returncode, output, recaps
    return runner
