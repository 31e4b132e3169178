"""A Debian container in which ``systemd-analyze verify`` judges the units the agents role renders.

The image is the Molecule test image (``make images`` builds it; AGENTOPS_PROPERTY_IMAGE overrides
it). The container is not booted: ``systemd-analyze verify`` loads unit files offline. It holds the
collection's alert unit (the agents' OnFailure= target) and an executable /usr/local/bin/agentops,
so a unit that the collection renders correctly verifies without a single warning.
"""
import importlib.util
import os
import subprocess
import uuid

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# The unit tests' conftest makes ansible_collections.agentops.fleet importable: load it under its own name.
_SPEC = importlib.util.spec_from_file_location("agentops_unit_paths", os.path.join(ROOT, "tests", "unit", "conftest.py"))
_SPEC.loader.exec_module(importlib.util.module_from_spec(_SPEC))

IMAGE = os.environ.get("AGENTOPS_PROPERTY_IMAGE", "agentops-test/debian12:latest")


def _docker(*argv, **kwargs):
    return subprocess.run(["docker"] + list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120, check=False, **kwargs)


class Verifier:
    """Copies a unit into the container and runs ``systemd-analyze verify`` on it."""

    def __init__(self, name):
        self.name = name

    def verify(self, unit_name, text):
        path = "/etc/systemd/system/" + unit_name
        proc = subprocess.run(["docker", "exec", "-i", self.name, "sh", "-c",
                               'cat > "$1" && systemd-analyze verify "$1"; rc=$?; rm -f "$1"; exit $rc', "sh", path],
                              input=text.encode("utf-8"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=60, check=False)
        return proc.returncode, proc.stdout.decode("utf-8", "replace")


@pytest.fixture(scope="session")
def verifier():
    if _docker("image", "inspect", IMAGE).returncode != 0:
        pytest.fail("image %s is missing: run `make images` (make test does)" % IMAGE)
    name = "agentops-property-%s" % uuid.uuid4().hex[:8]
    started = _docker("run", "-d", "--rm", "--name", name, "--network", "none", IMAGE, "sleep", "3600")
    if started.returncode != 0:
        pytest.fail("cannot start %s: %s" % (IMAGE, started.stderr))
    try:
        with open(os.path.join(ROOT, "roles", "alerts", "templates", "agentops-alert@.service.j2")) as handle:
            alert_unit = handle.read().replace("{{ agentops_paths.bin }}", "/usr/local/bin/agentops")
        setup = ("mkdir -p /usr/local/bin && printf '#!/bin/sh\\nexit 0\\n' > /usr/local/bin/agentops "
                 "&& chmod 0755 /usr/local/bin/agentops && cat > /etc/systemd/system/agentops-alert@.service")
        proc = subprocess.run(["docker", "exec", "-i", name, "sh", "-c", setup], input=alert_unit.encode("utf-8"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60, check=False)
        assert proc.returncode == 0, proc.stdout
        version = _docker("exec", name, "systemctl", "--version").stdout.split()[1]
        verifier = Verifier(name)
        verifier.systemd_version = int(version)
        yield verifier
    finally:
        _docker("rm", "-f", name)
