"""JIT runtime detection (hardening: strict refuses node, deno, bun, java) on real files: names, links,
env prefixes and shebangs read with a bound, without following a final link or blocking on a FIFO."""
import os

import pytest

from ansible_collections.agentops.fleet.plugins.module_utils import agentops_runtime as rt


def _script(path, first_line, size=0):
    with open(str(path), "wb") as handle:
        handle.write(first_line + b"\n" + b"x" * size)
    os.chmod(str(path), 0o755)
    return str(path)


@pytest.mark.parametrize("command, runtime", [
    ("/usr/bin/node /opt/agent/main.js", "node"),
    ("/usr/bin/nodejs /opt/agent/main.js --loop", "nodejs"),
    ("/usr/local/bin/deno run -A main.ts", "deno"),
    ("/opt/bun/bin/bun run agent.ts", "bun"),
    ("/usr/lib/jvm/java-17/bin/java -jar agent.jar", "java"),
    ("/opt/node22/bin/node22 x.js", "node"),
    ("/usr/bin/env node /opt/agent/main.js", "node"),
    ("/usr/bin/env -i HOME=/x NODE_ENV=production /usr/bin/node main.js", "node"),
    ("/usr/bin/env -S node --max-old-space-size=512 main.js", "node"),
])
def test_runtime_named_on_the_command_line(command, runtime):
    assert rt.detect(command)[0] == runtime


@pytest.mark.parametrize("command", [
    "/usr/bin/python3 /opt/agent/main.py", "/bin/bash -c 'node x.js'", "/opt/nodeish/run", "/usr/bin/env python3 x",
    "/usr/bin/javac", "/opt/agent/nodes", "/nonexistent/agent --loop", "",
])
def test_other_commands_are_not_jit(command):
    assert rt.detect(command) == (None, None)


@pytest.mark.parametrize("shebang, runtime", [
    (b"#!/usr/bin/node", "node"),
    (b"#!/usr/bin/env node", "node"),
    (b"#! /usr/bin/env -S deno run --allow-net", "deno"),
    (b"#!/usr/local/bin/bun", "bun"),
    (b"#!/usr/bin/env java --source 17", "java"),
])
def test_script_shebang(tmp_path, shebang, runtime):
    script = _script(tmp_path / "agent", shebang, size=1 << 20)
    found, how = rt.detect(script + " --loop")
    assert found == runtime and "starts with '#!" in how


def test_a_link_to_a_node_script_is_followed_for_the_name(tmp_path):
    """/usr/local/bin/claude is a link to cli.js whose shebang is '#!/usr/bin/env node'."""
    target = _script(tmp_path / "cli.js", b"#!/usr/bin/env node")
    os.symlink(target, str(tmp_path / "claude"))
    found, how = rt.detect(str(tmp_path / "claude") + " -p hi")
    assert found == "node" and "cli.js" in how


def test_a_link_named_node_is_recognised(tmp_path):
    binary = _script(tmp_path / "opaque-binary", b"\x7fELF")
    os.symlink(binary, str(tmp_path / "node"))
    assert rt.detect(str(tmp_path / "node") + " x.js")[0] == "node"
    os.symlink(str(tmp_path / "node"), str(tmp_path / "agent"))  # agent -> node -> opaque-binary: binary name only
    assert rt.detect(str(tmp_path / "agent"))[0] is None


def test_a_shebang_naming_a_link_to_node(tmp_path):
    real = _script(tmp_path / "node", b"\x7fELF")
    os.symlink(real, str(tmp_path / "js-runtime"))
    script = _script(tmp_path / "agent", b"#!" + str(tmp_path / "js-runtime").encode())
    assert rt.detect(script)[0] == "node"


def test_python_and_shell_scripts_are_fine(tmp_path):
    assert rt.detect(_script(tmp_path / "a", b"#!/usr/bin/python3 -I")) == (None, None)
    assert rt.detect(_script(tmp_path / "b", b"#!/bin/sh")) == (None, None)
    assert rt.detect(_script(tmp_path / "c", b"no shebang at all")) == (None, None)


def test_the_read_is_bounded_and_does_not_block(tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    assert rt.read_head(fifo) is None  # O_NONBLOCK + not a regular file: no hang
    big = _script(tmp_path / "big", b"#!/usr/bin/env node", size=10 << 20)
    assert len(rt.read_head(big)) == rt.SHEBANG_BYTES
    os.symlink(big, str(tmp_path / "link"))
    assert rt.read_head(str(tmp_path / "link")) is None  # O_NOFOLLOW on the path read


def test_a_long_first_line_is_cut_at_the_bound(tmp_path):
    script = _script(tmp_path / "agent", b"#!/usr/bin/env " + b" " * 300 + b"node")
    assert rt.detect(script) == (None, None)


def test_strict_message_names_agent_runtime_and_remedy(tmp_path):
    message = rt.strict_problem("agentops_agents[coder]", "/usr/bin/node /opt/coder/main.js")
    assert message.startswith("agentops_agents[coder].hardening: strict sets MemoryDenyWriteExecute=yes")
    assert "node runtime" in message and "hardening: standard" in message
    assert rt.strict_problem("agentops_agents[py]", "/usr/bin/python3 x") is None
