#!/usr/bin/env python3
"""Converge benchmark of the agents role.

Creates throw-away systemd containers from the local test images (with the same flags as the
Molecule platforms in .config/molecule/config.yml), converges the agents role with N generated
agents over the docker connection (community.docker.docker), times the first run and the
idempotent second run (started once the containers are idle again: the agents the first run
started take a few seconds of CPU to set up their sandboxes), prints a table and removes its
containers. The load column is the machine's 1-minute load average when the second run started.

  bench/converge_bench.py --agents 1,50,200 --hosts 1 --repeat 2   # cost per added agent
  bench/converge_bench.py --agents 1 --hosts 1,2,4                 # cost per added host

Per-task times come from the ansible.posix.json callback: the validation column is the time of
the agentops.fleet.inventory_contract task (the inventory contract, with its read of the host's
users), its share is of the whole run. --pipelining runs with ANSIBLE_PIPELINING=1, as a
production run over SSH with the checkout's ansible.cfg ([ssh_connection] pipelining) does.

Not a test: nothing is asserted, figures depend on the machine and its load (printed with them).
"""
import argparse
import datetime
import json
import os
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


def settle(names, deadline_seconds=180, busy_percent=10.0):
    """Wait until the containers are idle again (the agents a first run started have finished starting:
    their sandbox setup takes CPU after systemctl returned). Returns the seconds waited."""
    started = time.monotonic()
    quiet = 0
    while time.monotonic() - started < deadline_seconds:
        out = docker("stats", "--no-stream", "--format", "{{.CPUPerc}}", *names, check=False).stdout.split()
        try:
            busy = max(float(value.rstrip("%")) for value in out)
        except ValueError:
            busy = 0.0
        quiet = quiet + 1 if busy < busy_percent else 0
        if quiet >= 2:
            break
    return time.monotonic() - started


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
    # per-task times and the actions that ran (JSON on stdout): the validation's share of a run
    env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
    env["ANSIBLE_FORKS"] = "20"
    return env


VALIDATION_ACTION = "agentops.fleet.inventory_contract"


def _stamp(value):
    return datetime.datetime.strptime(value.rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f")


def task_times(report):
    """[(task name, seconds, actions)] of an ansible.posix.json report."""
    out = []
    for play in report.get("plays", []):
        for task in play.get("tasks", []):
            duration = task["task"].get("duration") or {}
            if "start" not in duration or "end" not in duration:
                continue
            seconds = (_stamp(duration["end"]) - _stamp(duration["start"])).total_seconds()
            actions = set(result.get("action") for result in task.get("hosts", {}).values())
            out.append((task["task"]["name"], seconds, actions))
    return out


def converge(inventory, env, logfile):
    started = time.monotonic()
    proc = subprocess.run(["ansible-playbook", "-i", inventory, PLAYBOOK], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, check=False)
    elapsed = time.monotonic() - started
    with open(logfile, "a", encoding="utf-8") as handle:
        handle.write(proc.stderr)
        handle.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError("ansible-playbook failed (rc %d), see %s:\n%s" % (proc.returncode, logfile,
                                                                            (proc.stderr + proc.stdout)[-3000:]))
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    changed = sum(stats.get("changed", 0) for stats in report.get("stats", {}).values())
    times = task_times(report)
    validation = sum(seconds for _name, seconds, actions in times if VALIDATION_ACTION in actions)
    return {"seconds": elapsed, "changed": changed, "validation": validation, "tasks": len(times), "times": times}


def measure(agents, hosts, image, env, workdir, repeat):
    names = ["%s%d" % (PREFIX, i + 1) for i in range(hosts)]
    logfile = os.path.join(workdir, "a%d-h%d-r%d.log" % (agents, hosts, repeat))
    log("== %d agent(s) on %d host(s), run %d: creating containers (load %s)" % (
        agents, hosts, repeat, load_average()))
    try:
        create(names, image)
        inventory = write_inventory(workdir, names, generated_agents(agents))
        log("   first run ...")
        first = converge(inventory, env, logfile)
        waited = settle(names)
        log("   second run (after %.0f s for the agents to settle, load %s) ..." % (waited, load_average()))
        load = load_average()
        second = converge(inventory, env, logfile)
        log("   one run of agentops heartbeat ...")
        heartbeat_cpu, heartbeat_wall = heartbeat_cost(names[0])
    finally:
        destroy(names)
    return {"agents": agents, "hosts": hosts, "repeat": repeat, "load": load, "settle": waited,
            "first": first["seconds"], "second": second["seconds"],
            "changed_first": first["changed"], "changed_second": second["changed"],
            "validation_first": first["validation"], "validation_second": second["validation"],
            "tasks_second": second["tasks"],
            "slowest_second": [(name, round(sec, 2)) for name, sec, _a in sorted(second["times"], key=lambda t: -t[1])[:8]],
            "heartbeat_cpu": heartbeat_cpu, "heartbeat_wall": heartbeat_wall}


def load_average():
    try:
        return "%.2f" % os.getloadavg()[0]
    except OSError:
        return "?"


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
    lines = ["| agents | hosts | run | first run (s) | second run (s) | validation 1st / 2nd (s) |"
             " validation share 1st / 2nd | tasks (2nd) | changed on 2nd run | heartbeat CPU / wall (s) | load at 2nd |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append("| %d | %d | %d | %.1f | %.1f | %.2f / %.2f | %.0f%% / %.0f%% | %d | %d | %.2f / %.2f | %s |" % (
            row["agents"], row["hosts"], row["repeat"], row["first"], row["second"], row["validation_first"],
            row["validation_second"], 100.0 * row["validation_first"] / row["first"],
            100.0 * row["validation_second"] / row["second"], row["tasks_second"], row["changed_second"],
            row["heartbeat_cpu"], row["heartbeat_wall"], row["load"]))
    best = {}
    for row in rows:
        key = row[per]
        if key not in best or row["second"] < best[key]["second"]:
            best[key] = row
    if len(best) > 1:
        a, b = best[min(best)], best[max(best)]
        steps = b[per] - a[per]
        lines.append("")
        lines.append("seconds per added %s (fastest run of each): first run %.3f, second run %.3f (from %d to %d)" % (
            "agent" if per == "agents" else "host", (b["first"] - a["first"]) / steps,
            (b["second"] - a["second"]) / steps, a[per], b[per]))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="1,10,50", help="comma-separated agent counts (default %(default)s)")
    parser.add_argument("--hosts", default="1", help="comma-separated host counts (default %(default)s)")
    parser.add_argument("--image", default=os.environ.get("AGENTOPS_TEST_IMAGE_DEBIAN12",
                                                          "agentops-test/debian12:latest"))
    parser.add_argument("--repeat", type=int, default=1, help="measure every case this many times (fresh containers)")
    parser.add_argument("--pipelining", action="store_true",
                        help="ANSIBLE_PIPELINING=1 (what ansible.cfg sets for SSH connections)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    agent_counts = [int(x) for x in args.agents.split(",") if x]
    host_counts = [int(x) for x in args.hosts.split(",") if x]
    if len(agent_counts) > 1 and len(host_counts) > 1:
        parser.error("vary either --agents or --hosts, not both")
    if not shutil.which("docker"):
        parser.error("docker is not installed")
    env = environment()
    if args.pipelining:
        env["ANSIBLE_PIPELINING"] = "1"
    rows = []
    workdir = tempfile.mkdtemp(prefix="agentops-bench-")
    log("logs in %s" % workdir)
    for hosts in host_counts:
        for agents in agent_counts:
            for repeat in range(1, args.repeat + 1):
                rows.append(measure(agents, hosts, args.image, env, workdir, repeat))
    per = "hosts" if len(host_counts) > 1 else "agents"
    print("pipelining: %s; %d CPU(s)" % ("on" if args.pipelining else "off", os.cpu_count() or 0))
    print(table(rows, per))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
