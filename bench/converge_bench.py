#!/usr/bin/env python3
"""Converge benchmark of the agents role.

Creates throw-away systemd containers from the local test images (with the same flags as the
Molecule platforms in .config/molecule/config.yml), converges the agents role with N generated
agents over the docker connection (community.docker.docker), times the first run and the
idempotent second run, prints a table and removes its containers.

  bench/converge_bench.py --agents 1,10,50 --hosts 1     # cost per added agent
  bench/converge_bench.py --agents 1 --hosts 1,2,4       # cost per added host

Not a test: nothing is asserted, figures depend on the machine and its load.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAYBOOK = os.path.join(ROOT, "bench", "converge.yml")
PREFIX = "agentops-bench-"
DOCKER_FLAGS = [
    "--cap-add", "SYS_ADMIN",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--cgroupns", "host",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run", "--tmpfs", "/run/lock",
]
BOOT = ["/bin/sh", "-c", "mount --make-rshared / && exec /lib/systemd/systemd"]


def log(message):
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def docker(*args, check=True):
    return subprocess.run(["docker"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, check=check)


def create(names, image):
    for name in names:
        docker("rm", "-f", name, check=False)
        docker("run", "-d", "--name", name, "--hostname", name, *DOCKER_FLAGS, image, *BOOT)
    for name in names:
        deadline = time.monotonic() + 180
        while True:
            state = docker("exec", name, "systemctl", "is-system-running", "--wait", check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("%s did not boot (state %r)" % (name, state))
            time.sleep(1)


def destroy(names):
    for name in names:
        docker("rm", "-f", name, check=False)


def generated_agents(count):
    agents = []
    for index in range(count):
        agents.append({
            "name": "bench-%03d" % index,
            "command": "/bin/sleep infinity",
            "environment": {"AGENT_INDEX": str(index)},
            "credentials": {"api_token": "bench-token-%03d" % index},
            "heartbeat": {"interval": "5min", "max_silence": "30min"},
            "failure_modes": [{"tool": "api", "on_failure": "Wait 60 seconds, retry once, then alert"}],
        })
    return agents


def write_inventory(directory, names, agents):
    inventory = {"all": {"hosts": {n: {"ansible_connection": "community.docker.docker",
                                       "ansible_python_interpreter": "/usr/bin/python3"} for n in names},
                         "vars": {"agentops_agents": agents}}}
    path = os.path.join(directory, "inventory.yml")  # JSON is valid YAML for the yaml inventory plugin
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(inventory, handle)
    return path


def environment():
    env = dict(os.environ)
    venv_bin = os.path.join(ROOT, ".venv", "bin")
    if os.path.isdir(venv_bin):
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", os.path.join(ROOT, ".cache", "collections"))
    env.setdefault("ANSIBLE_CONFIG", os.path.join(ROOT, "ansible.cfg"))
    env["ANSIBLE_NOCOLOR"] = "1"
    # per-task times, to tell the agents role's own share from the common role and the machine's load
    env["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.posix.profile_tasks"
    env["PROFILE_TASKS_TASK_OUTPUT_LIMIT"] = "all"
    env["ANSIBLE_FORKS"] = "20"
    return env


def converge(inventory, env, logfile):
    started = time.monotonic()
    proc = subprocess.run(["ansible-playbook", "-i", inventory, PLAYBOOK], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, check=False)
    elapsed = time.monotonic() - started
    with open(logfile, "a", encoding="utf-8") as handle:
        handle.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError("ansible-playbook failed (rc %d), see %s:\n%s" % (proc.returncode, logfile,
                                                                            proc.stdout[-3000:]))
    changed = sum(int(part.split("=")[1]) for line in proc.stdout.splitlines() if " : ok=" in line
                  for part in line.split() if part.startswith("changed="))
    role = sum(float(m.group(1)) for m in re.finditer(r"^agentops\.fleet\.agents : .*?-+ (\d+\.\d+)s$",
                                                       proc.stdout, re.M))
    return elapsed, changed, role


def measure(agents, hosts, image, env, workdir):
    names = ["%s%d" % (PREFIX, i + 1) for i in range(hosts)]
    logfile = os.path.join(workdir, "a%d-h%d.log" % (agents, hosts))
    log("== %d agent(s) on %d host(s): creating containers" % (agents, hosts))
    try:
        create(names, image)
        inventory = write_inventory(workdir, names, generated_agents(agents))
        log("   first run ...")
        first, changed_first, role_first = converge(inventory, env, logfile)
        log("   second run ...")
        second, changed_second, role_second = converge(inventory, env, logfile)
        log("   one run of agentops heartbeat ...")
        heartbeat_cpu, heartbeat_wall = heartbeat_cost(names[0])
    finally:
        destroy(names)
    return {"agents": agents, "hosts": hosts, "first": first, "second": second,
            "changed_first": changed_first, "changed_second": changed_second,
            "role_first": role_first, "role_second": role_second,
            "heartbeat_cpu": heartbeat_cpu, "heartbeat_wall": heartbeat_wall}


HEARTBEAT_PROBE = (
    "import resource, subprocess, time\n"
    "t = time.monotonic()\n"
    "subprocess.run(['/usr/local/bin/agentops', 'heartbeat'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print('%.3f %.3f' % (r.ru_utime + r.ru_stime, time.monotonic() - t))\n")


def heartbeat_cost(name):
    """CPU seconds (user + system, the command and its children) and wall seconds of one heartbeat run."""
    out = docker("exec", name, "python3", "-c", HEARTBEAT_PROBE).stdout.split()
    return float(out[0]), float(out[1])


def table(rows, per):
    lines = ["| agents | hosts | first run (s) | second run (s) | agents role tasks, 1st / 2nd (s) | changed on 2nd run |"
             " heartbeat CPU / wall (s) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append("| %d | %d | %.1f | %.1f | %.1f / %.1f | %d | %.2f / %.2f |" % (
            row["agents"], row["hosts"], row["first"], row["second"], row["role_first"], row["role_second"],
            row["changed_second"], row["heartbeat_cpu"], row["heartbeat_wall"]))
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        steps = b[per] - a[per]
        if steps:
            lines.append("")
            lines.append("seconds per added %s: first run %.2f, second run %.2f (from %d to %d)" % (
                "agent" if per == "agents" else "host", (b["first"] - a["first"]) / steps,
                (b["second"] - a["second"]) / steps, a[per], b[per]))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="1,10,50", help="comma-separated agent counts (default %(default)s)")
    parser.add_argument("--hosts", default="1", help="comma-separated host counts (default %(default)s)")
    parser.add_argument("--image", default=os.environ.get("AGENTOPS_TEST_IMAGE_DEBIAN12",
                                                          "agentops-test/debian12:latest"))
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    agent_counts = [int(x) for x in args.agents.split(",") if x]
    host_counts = [int(x) for x in args.hosts.split(",") if x]
    if len(agent_counts) > 1 and len(host_counts) > 1:
        parser.error("vary either --agents or --hosts, not both")
    if not shutil.which("docker"):
        parser.error("docker is not installed")
    env = environment()
    rows = []
    workdir = tempfile.mkdtemp(prefix="agentops-bench-")
    log("logs in %s" % workdir)
    for hosts in host_counts:
        for agents in agent_counts:
            rows.append(measure(agents, hosts, args.image, env, workdir))
    per = "hosts" if len(host_counts) > 1 else "agents"
    print(table(rows, per))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
