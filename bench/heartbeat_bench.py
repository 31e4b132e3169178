#!/usr/bin/env python3
"""CPU cost of one ``agentops heartbeat`` run for 1, 50 and 200 agents.

For every agent count, a throw-away systemd container is created from the local test image (the
flags of the Molecule platforms), the on-host command of each compared source is copied in
(``--ref`` names a git revision, ``worktree`` the checkout as it is), N agents are laid down
(``agents.d`` files and plain ``sleep infinity`` units, started), and ``agentops heartbeat`` is run:
one warm-up run, then ``--runs`` measured runs. The figure is the CPU time (user + system) of the
heartbeat process and all its children (``getrusage(RUSAGE_CHILDREN)`` of a probe that only
starts it), the median of the measured runs; the wall time beside it.

``--lines N``: before every run (warm-up and measured) each agent logs N journal lines (the bench waits until
journald stored them all), so a run reads N new lines per agent. ``--flood N``: one more agent with journal
progress (its unit lifts journald's rate limit) logs N lines before every run, next to the quiet others.

By default the run has a Prometheus textfile directory and a host dead man's switch (healthchecks
type, aimed at a loopback receiver in the container) configured, as in production with both on, and
every measured run pings (the state of the last pings is removed before each: the worst case, as a
success ping otherwise goes at most once a minute); ``--no-features`` turns both off. A source that
predates them ignores the settings file.

  bench/heartbeat_bench.py --agents 1,50,200 --ref c39a6f7 --ref worktree
  bench/heartbeat_bench.py --agents 50 --lines 1000 --ref eae1b2f --ref worktree
  bench/heartbeat_bench.py --agents 50 --flood 250000 --runs 3 --ref eae1b2f --ref worktree

Not a test: nothing is asserted, figures depend on the machine and its load (printed with them).
"""
import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

# The container flags and boot command of the converge benchmark (the Molecule platforms' own);
# bench/ is on sys.path as the script's own folder.
from converge_bench import BOOT, DOCKER_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "agentops-hbbench-"
LIB = "/usr/local/lib/agentops-%s"
HOST_FILES = "roles/common/files"
SHARED = "plugins/module_utils"

PROBE = (
    "import resource, subprocess, sys, time\n"
    "t = time.monotonic()\n"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode\n"
    "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print('%.4f %.4f %d' % (r.ru_utime + r.ru_stime, time.monotonic() - t, rc))\n")

# A loopback receiver for the dead man's switch pings (answers 200 to everything).
RECEIVER = (
    "import http.server\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers()\n"
    "        self.wfile.write(b'OK')\n"
    "    do_POST = do_HEAD = do_GET\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('127.0.0.1', 18999), H).serve_forever()\n")


def log(message):
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def docker(*args, check=True, data=None):
    return subprocess.run(["docker"] + list(args), input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          check=check)


def git_files(ref):
    """{relative path: bytes} of the on-host command's files at ``ref`` (``worktree``: the checkout)."""
    out = {}
    if ref == "worktree":
        for folder in (HOST_FILES, SHARED):
            for base, _dirs, names in os.walk(os.path.join(ROOT, folder)):
                for name in names:
                    if name.endswith(".py") or name == "agentops":
                        path = os.path.join(base, name)
                        with open(path, "rb") as handle:
                            out[os.path.relpath(path, ROOT)] = handle.read()
        return out
    listing = subprocess.run(["git", "-C", ROOT, "ls-tree", "-r", "--name-only", ref, HOST_FILES, SHARED],
                             stdout=subprocess.PIPE, check=True, text=True).stdout.split()
    for path in listing:
        if path.endswith(".py") or path.endswith("/agentops"):
            out[path] = subprocess.run(["git", "-C", ROOT, "show", "%s:%s" % (ref, path)],
                                       stdout=subprocess.PIPE, check=True).stdout
    return out


def tar_of(files):
    """A tar (bytes) of {path in the container: (bytes, mode)}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def install_source(name, label, ref):
    """Copy the on-host command of ``ref`` into the container; return the path of its entry script."""
    lib = LIB % label
    files = {}
    for path, data in git_files(ref).items():
        if path.startswith(HOST_FILES + "/agentops_host/"):
            files["%s/agentops_host/%s" % (lib, os.path.basename(path))] = (data, 0o644)
        elif path == HOST_FILES + "/agentops":
            files["%s/agentops" % lib] = (data.replace(b"/usr/local/lib/agentops", lib.encode()), 0o755)
        elif path.startswith(SHARED + "/") and path.count("/") == 2:
            files["%s/agentops_lib/%s" % (lib, os.path.basename(path))] = (data, 0o644)
    docker("exec", "-i", name, "tar", "-C", "/", "-xf", "-", data=tar_of(files))
    return "%s/agentops" % lib


# A bench agent that logs: quiet, but when /run/bench-gen holds a new "GEN COUNT" it logs COUNT lines, then
# "bench done GEN" ($$: a dollar sign in a unit file).
AGENT = ("while :; do set -- $$(cat /run/bench-gen 2>/dev/null); "
         "if [ -n \"$$1\" ] && [ \"$$1\" != \"$$last\" ]; then seq 1 \"$$2\" | sed \"s/^/bench line /\"; "
         "echo \"bench done $$1\"; last=$$1; fi; sleep 1; done")


def lay_down(name, agents, flood=0, lines=0):
    files = {}
    units = []
    names = ["bench-%03d" % index for index in range(agents)] + (["bench-flood"] if flood else [])
    for agent in names:
        unit = "agentops-%s.service" % agent
        units.append(unit)
        if agent == "bench-flood":
            command, limits = AGENT.replace("/run/bench-gen", "/run/bench-flood"), \
                "LogRateLimitIntervalSec=1s\nLogRateLimitBurst=100000000\n"
        else:
            command, limits = (AGENT if lines else "exec /bin/sleep infinity"), ""
        files["/etc/systemd/system/" + unit] = (
            ("[Unit]\nDescription=bench agent %s\n[Service]\nExecStart=/bin/sh -c '%s'\n%s"
             % (agent, command, limits)).encode(), 0o644)
        files["/etc/agentops/agents.d/%s.json" % agent] = (json.dumps({
            "name": agent, "unit": unit, "user": "root", "state": "present", "enabled": True,
            "state_dir": "/var/lib/agentops/" + agent, "credentials_dir": "/etc/agentops/credentials/" + agent,
            "credentials": [], "auth_checks": [], "token_rotation": [],
            "heartbeat": {"interval": "5min", "max_silence": "30min", "progress": "journal", "file": "heartbeat",
                          "command": None, "active_hours": None, "workstate_max_age": None},
        }).encode(), 0o600)
    docker("exec", name, "mkdir", "-p", "/etc/agentops/agents.d", "/var/lib/agentops", "/var/spool/agentops")
    docker("exec", "-i", name, "tar", "-C", "/", "-xf", "-", data=tar_of(files))
    docker("exec", name, "systemctl", "daemon-reload")
    for start in range(0, len(units), 50):
        docker("exec", name, "systemctl", "start", *units[start:start + 50])


def features(name, enabled):
    settings = {"metrics_textfile_dir": "", "deadman": [], "agents": {}}
    if enabled:
        docker("exec", "-d", name, "python3", "-c", RECEIVER)
        docker("exec", name, "mkdir", "-p", "/var/lib/prometheus/node-exporter")
        settings = {"metrics_textfile_dir": "/var/lib/prometheus/node-exporter",
                    "deadman": [{"type": "healthchecks", "url": "http://127.0.0.1:18999/ping/bench"}], "agents": {}}
    docker("exec", "-i", name, "sh", "-c", "umask 077; cat > /etc/agentops/heartbeat.json",
           data=json.dumps(settings).encode())


def log_lines(name, lines, flood, units):
    """Make every agent log ``lines`` lines (and the flooding one ``flood``); wait until journald has them."""
    if not lines and not flood:
        return
    gen = "%d" % (time.time() * 1000)
    expected = 0
    if lines:
        docker("exec", name, "sh", "-c", "echo '%s %d' > /run/bench-gen" % (gen, lines))
        expected += units
    if flood:
        docker("exec", name, "sh", "-c", "echo '%s %d' > /run/bench-flood" % (gen, flood))
        expected += 1
    deadline = time.monotonic() + 600
    while True:
        found = docker("exec", name, "sh", "-c", "journalctl -q -o cat --since -15min --grep 'bench done %s' | wc -l"
                       % gen).stdout.decode().strip()
        if int(found or 0) >= expected:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the bench agents did not log their lines in time (%s of %d)" % (found, expected))
        time.sleep(1)


def run_once(name, entry, state_label, pings_due=False):
    if pings_due:  # forget when the targets were pinged last: this run pings every one of them
        docker("exec", name, "rm", "-f", "/var/lib/agentops-state-%s/.heartbeat/deadman.json" % state_label)
    cmd = ["python3", "-c", PROBE, "python3", "-I", entry, "--state-dir", "/var/lib/agentops-state-%s" % state_label,
           "heartbeat"]
    out = docker("exec", name, *cmd).stdout.decode().split()
    return float(out[0]), float(out[1]), int(out[2])


def median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2.0


def measure(image, agents, refs, runs, with_features, pings_due=True, lines=0, flood=0, prefix=PREFIX):
    name = "%s%d" % (prefix, agents)
    docker("rm", "-f", name, check=False)
    docker("run", "-d", "--name", name, "--hostname", name, *DOCKER_FLAGS, image, *BOOT)
    rows = []
    try:
        deadline = time.monotonic() + 180
        while docker("exec", name, "systemctl", "is-system-running", "--wait", check=False).stdout.decode().strip() \
                not in ("running", "degraded"):
            if time.monotonic() > deadline:
                raise RuntimeError("%s did not boot" % name)
            time.sleep(1)
        lay_down(name, agents, flood, lines)
        features(name, with_features)
        for label, ref in refs:
            entry = install_source(name, label, ref)
            log_lines(name, lines, flood, agents)
            run_once(name, entry, label)  # warm-up: state files, byte code
            samples = []
            for _ in range(runs):
                log_lines(name, lines, flood, agents)
                samples.append(run_once(name, entry, label, pings_due and with_features))
            rows.append({"agents": agents, "lines": lines, "flood": flood, "source": label, "ref": ref,
                         "features": with_features,
                         "cpu": median([s[0] for s in samples]), "wall": median([s[1] for s in samples]),
                         "rc": max(s[2] for s in samples), "load": "%.2f" % os.getloadavg()[0]})
            log("   %d agent(s), %s: cpu %.3f s, wall %.3f s" % (agents, label, rows[-1]["cpu"], rows[-1]["wall"]))
    finally:
        docker("rm", "-f", name, check=False)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="1,50,200", help="comma-separated agent counts (default %(default)s)")
    parser.add_argument("--ref", action="append", default=None,
                        help="a git revision to measure, or 'worktree' (repeatable; default: worktree)")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per case (default %(default)s)")
    parser.add_argument("--no-features", action="store_true", help="without metrics and dead man's switch")
    parser.add_argument("--image", default=os.environ.get("AGENTOPS_TEST_IMAGE_DEBIAN12",
                                                          "agentops-test/debian12:latest"))
    parser.add_argument("--lines", type=int, default=0, help="journal lines each agent logs before every run")
    parser.add_argument("--flood", type=int, default=0,
                        help="journal lines one more agent logs before every run (default: no such agent)")
    parser.add_argument("--prefix", default=PREFIX, help="name prefix of the throw-away containers")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if not shutil.which("docker"):
        parser.error("docker is not installed")
    refs = []
    for ref in args.ref or ["worktree"]:
        label = "worktree" if ref == "worktree" else subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", ref], stdout=subprocess.PIPE, check=True, text=True).stdout.strip()
        refs.append((label, ref))
    rows = []
    for agents in [int(x) for x in args.agents.split(",") if x]:
        log("== %d agent(s)" % agents)
        rows.extend(measure(args.image, agents, refs, args.runs, not args.no_features, lines=args.lines,
                            flood=args.flood, prefix=args.prefix))
    print("heartbeat CPU per run (median of %d; metrics and dead man's switch %s; %d journal line(s) per agent "
          "and run%s); %d CPU(s)" % (args.runs, "off" if args.no_features else "on", args.lines,
                                    ", one more agent logging %d" % args.flood if args.flood else "",
                                    os.cpu_count() or 0))
    print("| agents | source | CPU (s) | wall (s) | exit | load |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print("| %d | %s | %.3f | %.3f | %d | %s |" % (row["agents"], row["source"], row["cpu"], row["wall"], row["rc"],
                                                    row["load"]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
