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


# --------------------------------------------------------------------------- root reading an agent's command
# The agent's directory (owned by nobody, 0700, like /var/lib/agentops/<name>) sits in a root-only directory; the
# root-only file it links to starts with a JIT shebang and holds a canary.
CANARY = b"CANARY-root-only-7a1e"


def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: the agent's directory belongs to nobody")


@pytest.fixture
def agent_layout(trusted_dir):
    """trusted/agents/evil (nobody 0700) with bin/ (nobody); trusted/root-only/secret (root 0600, node shebang)."""
    _needs_root()
    import pwd
    nobody = pwd.getpwnam("nobody")
    agents = os.path.join(trusted_dir, "agents")
    os.mkdir(agents, 0o755)
    own = os.path.join(agents, "evil")
    os.mkdir(own, 0o700)
    os.mkdir(os.path.join(own, "bin"), 0o755)
    for path in (own, os.path.join(own, "bin")):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    private = os.path.join(trusted_dir, "root-only")
    os.mkdir(private, 0o700)
    secret = os.path.join(private, "secret")
    with open(secret, "wb") as handle:
        handle.write(b"#!/usr/bin/node\n" + CANARY + b"\n")
    os.chmod(secret, 0o600)
    return own, secret


def test_a_root_only_file_behind_an_agent_symlink_is_never_read(agent_layout):
    """The agent links its command to a root-only file starting with '#!/usr/bin/node': nothing is followed, the
    shebang and the target never show, and it is that agent's problem, not an inventory error."""
    own, secret = agent_layout
    command = os.path.join(own, "bin", "agent")
    os.symlink(secret, command)
    assert rt.detect(command + " --loop") == (None, None)
    found = rt.check_agent("evil", command + " --loop", user="nobody", own_dir=own, strict=True, executable=True)
    assert found["errors"] == [] and found["runtime"] is None
    assert found["problems"] == ["agentops_agents[evil].command: %s is a symlink (not followed): in a directory that "
                                 "a user other than root can write" % command]
    shown = " ".join(found["problems"])
    assert secret not in shown and "node" not in shown and CANARY.decode() not in shown


def test_a_symlinked_directory_on_the_way_is_not_followed(agent_layout):
    own, secret = agent_layout
    os.symlink(os.path.dirname(secret), os.path.join(own, "lib"))
    command = os.path.join(own, "lib", "secret")
    found = rt.check_agent("evil", command, own_dir=own, strict=True, executable=True)
    assert found["errors"] == [] and len(found["problems"]) == 1
    assert "%s is a symlink (not followed)" % os.path.join(own, "lib") in found["problems"][0]


def test_a_fifo_command_is_never_opened(agent_layout):
    """The type is known before anything is opened: a writer blocked in open() on the FIFO stays blocked."""
    import threading
    own, secret = agent_layout
    fifo = os.path.join(own, "bin", "agent")
    os.mkfifo(fifo)
    opened = threading.Event()

    def writer():
        fd = os.open(fifo, os.O_WRONLY)  # returns only once a reader opened the FIFO
        opened.set()
        os.close(fd)
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        assert rt.detect(fifo) == (None, None)
        # proving that something did NOT happen takes a bounded wait
        assert not opened.wait(1.0), "the FIFO was opened"
        found = rt.check_agent("evil", fifo, own_dir=own, strict=True, executable=True)
        assert not opened.wait(1.0), "the FIFO was opened"
    finally:
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # release the writer
        thread.join(5)
    assert found["errors"] == []
    assert found["problems"] == ["agentops_agents[evil].command: %s is a FIFO (not read)" % fifo]


def test_a_jit_script_in_the_agents_own_directory_concerns_that_agent_only(agent_layout):
    """The same message as for an inventory error, but a problem of the agent: its user wrote the shebang."""
    own, secret = agent_layout
    script = os.path.join(own, "bin", "agent")
    _script(script, b"#!/usr/bin/node")
    found = rt.check_agent("evil", script, own_dir=own, strict=True, executable=True)
    assert found["errors"] == []
    assert found["problems"] == [rt.strict_message("agentops_agents[evil]", "node",
                                                   "%s starts with '#!/usr/bin/node'" % script)]
    assert found["runtime"] == {"runtime": "node", "how": "%s starts with '#!/usr/bin/node'" % script}


def test_a_jit_script_in_a_root_only_place_is_an_inventory_error(trusted_dir):
    script = _script(os.path.join(trusted_dir, "agent"), b"#!/usr/bin/env node")
    link = os.path.join(trusted_dir, "claude")
    os.symlink(script, link)
    found = rt.check_agent("coder", link + " -p hi", strict=True, executable=True)
    assert found["problems"] == []
    assert found["errors"] == [rt.strict_message("agentops_agents[coder]", "node", "%s (a link to %s) starts with "
                                                 "'#!/usr/bin/env node'" % (link, script))]


def test_a_shebang_is_shown_printable_only(agent_layout):
    own, secret = agent_layout
    script = _script(os.path.join(own, "bin", "agent"), b"#!/usr/bin/env \x1b[2Jnode")
    found = rt.check_agent("evil", script, own_dir=own, strict=True)
    assert found["problems"] == []  # '\x1b[2Jnode' is not a runtime name
    script = _script(os.path.join(own, "bin", "agent2"), b"#!/usr/bin/node \x1b]0;title\x07")
    problem = rt.check_agent("evil", script, own_dir=own, strict=True)["problems"][0]
    assert "\x1b" not in problem and "\x07" not in problem and "#!/usr/bin/node ?]0;title?" in problem


def test_a_hard_link_in_the_agents_directory_is_read_only_when_harmless(agent_layout):
    """A second name of a root-only file (possible where protected_hardlinks is off) is never read."""
    own, secret = agent_layout
    link = os.path.join(own, "bin", "agent")
    os.link(secret, link)
    found = rt.check_agent("evil", link, own_dir=own, strict=True)
    assert found["runtime"] is None
    assert found["problems"] == ["agentops_agents[evil].command: %s has more than one hard link (not read or changed: "
                                 "it may be another file's link): 2 links" % link]


def test_an_interpreter_named_in_a_shebang_is_located_the_same_way(agent_layout):
    """The #! line of the agent's script names a symlink in its own directory: not followed either."""
    own, secret = agent_layout
    os.symlink("/usr/bin/python3", os.path.join(own, "bin", "js"))
    script = _script(os.path.join(own, "bin", "agent"), ("#!%s" % os.path.join(own, "bin", "js")).encode())
    found = rt.check_agent("evil", script, own_dir=own, strict=True)
    assert found["runtime"] is None and found["errors"] == []
    assert found["problems"] and "bin/js is a symlink (not followed)" in found["problems"][0]
    assert "named by %s starts with '#!" % script in found["problems"][0]


@pytest.mark.parametrize("place", ["root", "agent"])
def test_a_missing_executable(trusted_dir, place):
    if place == "agent":
        _needs_root()
    own = os.path.join(trusted_dir, "agents", "mail")  # not created: it is the agent's own even before it exists
    command = (os.path.join(own, "bin", "run") if place == "agent" else os.path.join(trusted_dir, "opt", "run")) + " -x"
    found = rt.check_agent("mail", command, user="agent-nobody-here", own_dir=own, executable=True)
    if place == "root":
        assert found["problems"] == []
        assert found["errors"] == ["agentops_agents[mail].command: %s does not exist on the host: install it before "
                                   "the converge, or set enabled: false for this agent until it is there"
                                   % command.split()[0]]
    else:
        assert found["errors"] == []
        assert found["problems"] == ["agentops_agents[mail].command: %s does not exist (in a place that a user other "
                                     "than root can write)" % command.split()[0]]
    # enabled: false (executable=False): not checked, its binary may come later
    assert rt.check_agent("mail", command, own_dir=own, executable=False) == {"errors": [], "problems": [],
                                                                               "runtime": None}


def test_executable_for_the_agents_user(trusted_dir):
    """The mode bits of the user's class decide; a user the converge will create owns nothing."""
    import pwd
    path = os.path.join(trusted_dir, "run")
    _script(path, b"#!/bin/sh")
    os.chmod(path, 0o744)
    found = rt.check_agent("mail", path, user="agent-not-created-yet", executable=True)
    assert found["errors"] == ["agentops_agents[mail].command: %s is not executable by agent-not-created-yet "
                               "(mode 0744, owner uid %d, group gid %d)" % (path, os.getuid(), os.getgid())]
    os.chmod(path, 0o644)
    assert rt.check_agent("mail", path, executable=True)["errors"] == [
        "agentops_agents[mail].command: %s is not executable (mode 0644)" % path]
    os.chmod(path, 0o755)
    assert rt.check_agent("mail", path, user="agent-not-created-yet", executable=True)["errors"] == []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
        os.chmod(path, 0o700)
        assert rt.check_agent("mail", path, user="nobody", executable=True)["errors"] == []


def test_device_nodes_and_directories_are_not_executables(trusted_dir):
    assert rt.check_agent("a", "/dev/null", executable=True)["errors"] == [
        "agentops_agents[a].command: /dev/null is not a regular file: a device node"]
    assert rt.check_agent("a", trusted_dir, executable=True)["errors"] == [
        "agentops_agents[a].command: %s is a directory where a file belongs" % trusted_dir]


def test_root_only_links_are_followed_and_named(trusted_dir):
    """/usr/bin/node -> /etc/alternatives/node -> /usr/bin/nodejs-20: links in root-only directories are followed."""
    real = _script(os.path.join(trusted_dir, "nodejs-20"), b"\x7fELF")
    alternatives = os.path.join(trusted_dir, "alternatives")
    os.mkdir(alternatives, 0o755)
    os.symlink(real, os.path.join(alternatives, "js"))
    os.symlink(os.path.join(alternatives, "js"), os.path.join(trusted_dir, "agent"))
    found = rt.check_agent("a", os.path.join(trusted_dir, "agent"), strict=True, executable=True)
    assert found["problems"] == []
    assert found["runtime"] == {"runtime": "nodejs", "how": "%s links to %s" % (os.path.join(trusted_dir, "agent"),
                                                                                real)}
    assert found["errors"] == [rt.strict_message("agentops_agents[a]", "nodejs", found["runtime"]["how"])]
    os.chmod(real, 0o755)
    os.rename(real, os.path.join(trusted_dir, "opaque"))
    os.symlink(os.path.join(trusted_dir, "opaque"), real)
    assert rt.check_agent("a", os.path.join(trusted_dir, "agent"), executable=True)["errors"] == []


@pytest.mark.parametrize("kind", ["symlink-credential", "symlink-shadow", "fifo", "hard-link"])
def test_auth_check_paths_in_the_agents_directory(agent_layout, kind):
    """A file check's path linked to another agent's credential or /etc/shadow is the agent's problem; the target
    is never named."""
    own, secret = agent_layout
    token = os.path.join(own, "token")
    if kind == "symlink-credential":
        os.symlink(secret, token)
    elif kind == "symlink-shadow":
        os.symlink("/etc/shadow", token)
    elif kind == "fifo":
        os.mkfifo(token)
    else:
        os.link(secret, token)
    found = rt.check_agent("evil", "/bin/true", user="nobody", own_dir=own, executable=True,
                           paths=[{"field": "auth_checks[tok].path", "path": token, "use": "stat"}])
    assert found["errors"] == [] and len(found["problems"]) == 1
    problem = found["problems"][0]
    assert problem.startswith("agentops_agents[evil].auth_checks[tok].path: %s " % token)
    assert secret not in problem and "shadow" not in problem


def test_auth_check_paths_that_are_fine(agent_layout, trusted_dir):
    own, secret = agent_layout
    with open(os.path.join(own, "token"), "w") as handle:
        handle.write("t")
    trusted_link = os.path.join(trusted_dir, "token-link")
    os.symlink(secret, trusted_link)
    paths = [{"field": "auth_checks[a].path", "path": os.path.join(own, "token"), "use": "stat"},
             {"field": "auth_checks[b].path", "path": os.path.join(own, "not-yet"), "use": "stat"},
             {"field": "auth_checks[c].path", "path": trusted_link, "use": "stat"},
             {"field": "auth_checks[d].command", "path": "/bin/true", "use": "run"},
             {"field": "auth_checks[e].ca_path", "path": "/etc/ssl", "use": "read"}]
    assert rt.check_agent("evil", "/bin/true", own_dir=own, paths=paths)["problems"] == []


def test_root_never_runs_or_reads_a_directory_of_the_agents_place(agent_layout):
    own, secret = agent_layout
    tool = _script(os.path.join(own, "bin", "check"), b"#!/bin/sh")
    os.mkdir(os.path.join(own, "certs"))
    found = rt.check_agent("evil", "/bin/true", own_dir=own, paths=[
        {"field": "auth_checks[cli].command", "path": tool, "use": "run"},
        {"field": "auth_checks[api].ca_path", "path": os.path.join(own, "certs"), "use": "read"}])
    assert found["problems"] == [
        "agentops_agents[evil].auth_checks[cli].command: %s is in a place that a user other than root can write: "
        "root runs it, so only root may be able to change it" % tool,
        "agentops_agents[evil].auth_checks[api].ca_path: %s is a directory in a place that a user other than root can "
        "write: root would read the certificates in it following their links; point ca_path at a file"
        % os.path.join(own, "certs")]
