"""Running a scenario playbook from a testinfra suite (shared by molecule/conftest.py and scenario helpers)."""
import json
import os
import re
import subprocess

RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)"
                   r"(?:\s+skipped=(\d+))?(?:\s+rescued=(\d+))?(?:\s+ignored=(\d+))?", re.M)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RECAP_KEYS = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")


def inventory():
    """The scenario's inventory directory (it carries the group_vars/host_vars next to the inventory file)."""
    path = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not path:
        raise RuntimeError("MOLECULE_INVENTORY_FILE is not set: run the tests through Molecule")
    return os.path.dirname(path)


def ansible_playbook(limit, playbook, extra_vars=None, check=False, diff=False, verbosity=0, env=None,
                     timeout=900):
    """Run one playbook of the scenario against `limit`; return (rc, output, {host: recap})."""
    scenario_dir = os.environ["MOLECULE_SCENARIO_DIRECTORY"]
    path = playbook if os.path.isabs(playbook) else os.path.join(scenario_dir, playbook)
    cmd = ["ansible-playbook", "-i", inventory(), "--limit", limit, path]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if verbosity:
        cmd.append("-" + "v" * verbosity)
    for key, value in (extra_vars or {}).items():
        cmd += ["-e", json.dumps({key: value})]
    run_env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1", PY_COLORS="0")
    run_env.update(env or {})
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=run_env, timeout=timeout, check=False)
    output = ANSI.sub("", proc.stdout)
    recaps = {m.group(1): {k: int(v or 0) for k, v in zip(RECAP_KEYS, m.groups()[1:])}
              for m in RECAP.finditer(output)}
    return proc.returncode, output, recaps
