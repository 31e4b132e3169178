"""Helpers shared by the testinfra suites of every Molecule scenario: the container's clock, the request
logs of the loopback receivers (molecule/shared/files/fake_endpoint.py, smtp_sink.py), polling with a
deadline and the measured figures. Scenario helper modules import them from here (molecule/ is on sys.path through conftest.py)."""
import json
import time

import pytest

ENDPOINT_LOG = "/var/log/agentops-fake-endpoint/%d.jsonl"


def now(host):
    """The container's clock (the receivers stamp requests with it)."""
    return float(host.check_output("date +%s.%N"))


def jsonl_records(host, path, since=0.0):
    """The JSON lines of a receiver's log at ``path`` stamped at or after ``since`` (none when it does not exist)."""
    log = host.file(path)
    if not log.exists:
        return []
    found = []
    for line in log.content_string.splitlines():
        if line.strip():
            record = json.loads(line)
            if record["time"] >= since:
                found.append(record)
    return found


def endpoint_records(host, port, since=0.0):
    """What the fake endpoint on 127.0.0.1:``port`` logged since ``since`` (path, query, body, status, time...)."""
    return jsonl_records(host, ENDPOINT_LOG % port, since)


def wait_for(predicate, timeout, interval=0.5, message="condition"):
    """Poll predicate() until it returns a truthy value (returned) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %ss waiting for %s (last value: %r)" % (timeout, message, last))
        time.sleep(interval)


def record_figure(path, host, name, seconds, digits=1, **extra):
    """Record a measured latency: printed (``FIGURE {...}``) and appended to the JSON lines file ``path``
    on the controller, where the closing figures of a run are read from."""
    line = {"host": host.backend.host, "figure": name, "seconds": round(seconds, digits), "time": time.time()}
    line.update(extra)
    print("FIGURE %s" % json.dumps(line))
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def skip_unless_case_host(host, hosts, case):
    """Bad-input case number ``case`` runs on one host only, the hosts taking turns: validation happens on
    the controller, so once is enough, and spreading the cases keeps the hosts' pytest-xdist workers even."""
    owner = hosts[case % len(hosts)]
    if host.backend.host != owner:
        pytest.skip("validation runs on the controller: this case runs once, on %s" % owner)
