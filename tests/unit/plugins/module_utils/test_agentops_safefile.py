"""agentops_safefile: root opening, reading, stat'ing and replacing entries of an agent-writable directory.

Real files in a temporary directory: symlinks to a root-only file outside, FIFOs, a socket, a 64 GiB sparse
file, hard links, a directory where a file belongs. The agent's directory is owned by ``nobody`` (0700),
as ``/var/lib/agentops/<name>`` is owned by the agent; its parent is root's.
"""
import os
import pwd
import signal
import socket
import stat
import tracemalloc

import pytest

from ansible_collections.agentops.fleet.plugins.module_utils import agentops_safefile as safefile

CANARY = "root-only-canary-7Hq2"
NOBODY = pwd.getpwnam("nobody")
MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the agent's directory belongs to nobody")


@pytest.fixture
def deadline():
    """Fail (instead of hanging) when something blocks: a FIFO opened without O_NONBLOCK would."""
    def expired(signum, frame):
        raise TimeoutError("blocked for more than 10 s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, 10)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def layout(tmp_path):
    """tmp/agents (root, 0755) / mail (nobody, 0700); tmp/outside/secret (root, 0600, CANARY)."""
    root = tmp_path / "agents"
    root.mkdir(mode=0o755)
    agent = root / "mail"
    agent.mkdir(mode=0o700)
    os.chown(agent, NOBODY.pw_uid, NOBODY.pw_gid)
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    secret = outside / "secret"
    secret.write_text(CANARY)
    secret.chmod(0o600)
    return agent, secret


def snapshot(path):
    st = os.lstat(path)
    with open(path, "rb") as handle:
        return (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_nlink, handle.read())


def test_module_is_shared_with_the_host():
    from agentops_lib import agentops_safefile as host_copy
    assert os.path.realpath(host_copy.__file__) == os.path.realpath(safefile.__file__)


def test_open_dir_refuses_a_symlink_in_an_agent_directory(layout):
    agent, secret = layout
    os.symlink(str(secret.parent), str(agent / "sub"))
    with pytest.raises(safefile.UnsafeEntry) as err:
        safefile.open_dir(str(agent / "sub"))
    assert err.value.found == "symlink"
    assert err.value.path == str(agent / "sub")
    assert "not followed" in err.value.message


def test_open_dir_follows_a_symlink_only_root_can_write(tmp_path):
    trusted = tmp_path / "trusted"
    trusted.mkdir(mode=0o755)
    target = tmp_path / "target"
    target.mkdir()
    os.symlink("../target", str(trusted / "link"))
    fd = safefile.open_dir(str(trusted / "link"))
    try:
        assert os.fstat(fd).st_ino == target.stat().st_ino
    finally:
        os.close(fd)
    # the same symlink in a group-writable directory is refused
    trusted.chmod(0o775)
    with pytest.raises(safefile.UnsafeEntry):
        safefile.open_dir(str(trusted / "link"))


def test_open_dir_below_a_root_follows_no_symlink_at_all(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink("real", str(tmp_path / "link"))
    with pytest.raises(safefile.UnsafeEntry) as err:
        safefile.open_dir("link", root=str(tmp_path))
    assert err.value.found == "symlink"
    with pytest.raises(safefile.UnsafeEntry) as err:
        safefile.open_dir("real/../..", root=str(tmp_path))
    assert err.value.found == "outside the directory"
    fd = safefile.open_dir("real", root=str(tmp_path))
    os.close(fd)
    (tmp_path / "file").write_text("x")
    with pytest.raises(safefile.UnsafeEntry) as err:
        safefile.open_dir(str(tmp_path / "file" / "x"))
    assert err.value.found == "not a directory"
    with pytest.raises(FileNotFoundError):
        safefile.open_dir(str(tmp_path / "missing" / "x"))


def test_every_hostile_kind_is_refused_without_blocking(layout, deadline):
    agent, secret = layout
    os.symlink(str(secret), str(agent / "link"))
    os.mkfifo(str(agent / "fifo"))
    (agent / "dir").mkdir()
    os.link(str(secret), str(agent / "hard"))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(agent / "sock"))
    expected = {"link": "symlink", "fifo": "fifo", "dir": "directory", "hard": "hard link",
                "sock": "not a regular file"}
    fd = safefile.open_dir(str(agent))
    try:
        for name, found in expected.items():
            with pytest.raises(safefile.UnsafeEntry) as err:
                safefile.read_file(fd, name, str(agent / name))
            assert err.value.found == found, name
            assert CANARY not in err.value.message
            with pytest.raises(safefile.UnsafeEntry):
                safefile.open_file(fd, name)
        with pytest.raises(FileNotFoundError):
            safefile.read_file(fd, "missing")
    finally:
        os.close(fd)
        sock.close()
    assert snapshot(str(secret))[:3] == (0, 0, 0o600)


def test_sparse_64g_file_is_never_read(layout):
    agent, dummy = layout
    huge = agent / "AGENTS.md"
    with open(str(huge), "wb") as handle:
        handle.truncate(64 * 1024 ** 3)
    tracemalloc.start()
    try:
        with pytest.raises(safefile.UnsafeEntry) as err:
            safefile.read_path("AGENTS.md", base=str(agent))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.found == "too large"
    assert "68719476736 bytes, limit 1048576" in err.value.message
    assert peak < 256 * 1024


def test_read_never_goes_past_the_cap_even_when_the_file_grows(layout):
    agent, dummy = layout
    path = agent / "WORKSTATE.md"
    path.write_bytes(b"x" * 10)
    dir_fd = safefile.open_dir(str(agent))
    try:
        fd, st = safefile.open_file(dir_fd, "WORKSTATE.md", max_bytes=MiB)
        assert st.st_size == 10
        with open(str(path), "ab") as handle:      # the agent appends after the size check
            handle.write(b"y" * (3 * MiB))
        with pytest.raises(safefile.UnsafeEntry) as err:
            safefile.read_bounded(fd, MiB, str(path))
        assert err.value.found == "too large"
        assert os.lseek(fd, 0, os.SEEK_CUR) == MiB + 1
        os.close(fd)
    finally:
        os.close(dir_fd)
    # a device that never ends (what a symlink to /dev/zero would give): still bounded
    zero = os.open("/dev/zero", os.O_RDONLY)
    try:
        with pytest.raises(safefile.UnsafeEntry):
            safefile.read_bounded(zero, 4096)
    finally:
        os.close(zero)
    path.write_bytes(b"checkpoint\n")
    assert safefile.read_path(str(path)) == b"checkpoint\n"


def test_fix_attrs_changes_the_opened_file_never_a_swapped_in_symlink(layout):
    agent, secret = layout
    target = agent / "AGENTS.md"
    target.write_text("agent text")
    before = snapshot(str(secret))
    dir_fd = safefile.open_dir(str(agent))
    try:
        fd, st = safefile.open_file(dir_fd, "AGENTS.md")
        # the agent swaps the name for a symlink between open and chmod
        os.unlink(str(target))
        os.symlink(str(secret), str(target))
        assert safefile.fix_attrs(fd, st, 0o644, NOBODY.pw_uid, NOBODY.pw_gid) is True
        opened = os.fstat(fd)
        assert (opened.st_uid, stat.S_IMODE(opened.st_mode)) == (NOBODY.pw_uid, 0o644)
        assert safefile.fix_attrs(fd, opened, 0o644, NOBODY.pw_uid, NOBODY.pw_gid) is False
        os.close(fd)
    finally:
        os.close(dir_fd)
    assert snapshot(str(secret)) == before


def test_replace_file_replaces_a_symlink_itself(layout):
    agent, secret = layout
    before = snapshot(str(secret))
    os.symlink(str(secret), str(agent / "AGENTS.md"))
    dir_fd = safefile.open_dir(str(agent))
    try:
        safefile.replace_file(dir_fd, "AGENTS.md", b"# rendered\n", 0o640, NOBODY.pw_uid, NOBODY.pw_gid)
    finally:
        os.close(dir_fd)
    st = os.lstat(str(agent / "AGENTS.md"))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert (agent / "AGENTS.md").read_text() == "# rendered\n"
    assert snapshot(str(secret)) == before
    assert sorted(os.listdir(str(agent))) == ["AGENTS.md"]


def test_replace_file_leaves_a_directory_and_no_temporary_file(layout):
    agent, dummy = layout
    (agent / "AGENTS.md").mkdir()
    (agent / "AGENTS.md" / "keep").write_text("agent data")
    dir_fd = safefile.open_dir(str(agent))
    try:
        with pytest.raises(OSError):
            safefile.replace_file(dir_fd, "AGENTS.md", b"x", 0o600)
    finally:
        os.close(dir_fd)
    assert sorted(os.listdir(str(agent))) == ["AGENTS.md"]
    assert (agent / "AGENTS.md" / "keep").read_text() == "agent data"


def test_stat_only_variant_for_progress_files(layout, deadline):
    agent, secret = layout
    (agent / "run").mkdir()
    beat = agent / "run" / "beat"
    beat.write_text("")
    os.utime(str(beat), (1000000, 1000000))
    assert safefile.regular_mtime("run/beat", base=str(agent)) == 1000000
    assert safefile.regular_mtime(str(beat)) == 1000000
    assert safefile.regular_mtime("run/missing", base=str(agent)) is None
    assert safefile.regular_mtime("gone/beat", base=str(agent)) is None
    # a symlinked intermediate directory
    os.symlink(str(secret.parent), str(agent / "linked"))
    with pytest.raises(safefile.UnsafeEntry) as err:
        safefile.regular_mtime("linked/secret", base=str(agent))
    assert (err.value.found, err.value.path) == ("symlink", str(agent / "linked"))
    with pytest.raises(safefile.UnsafeEntry):
        safefile.regular_mtime(str(agent / "linked" / "secret"))
    # the entry itself
    os.symlink(str(secret), str(agent / "WORKSTATE.md"))
    with pytest.raises(safefile.UnsafeEntry) as err:
        safefile.regular_mtime("WORKSTATE.md", base=str(agent))
    assert err.value.found == "symlink"
    os.mkfifo(str(agent / "fifo"))
    with pytest.raises(safefile.UnsafeEntry) as err:
        safefile.regular_mtime("fifo", base=str(agent))
    assert err.value.found == "fifo"
    with pytest.raises(safefile.UnsafeEntry) as err:
        safefile.regular_mtime("run", base=str(agent))
    assert err.value.found == "directory"
    with pytest.raises(safefile.UnsafeEntry) as err:
        safefile.regular_mtime("../mail/run/beat", base=str(agent))
    assert err.value.found == "outside the directory"
    assert stat.S_ISLNK(safefile.stat_path("WORKSTATE.md", base=str(agent)).st_mode)


def test_create_only_never_overwrites_what_appeared_meanwhile(layout):
    agent, secret = layout
    (agent / "WORKSTATE.md").write_text("the agent's memory\n")
    os.symlink(str(secret), str(agent / "link"))
    dir_fd = safefile.open_dir(str(agent))
    try:
        for name in ("WORKSTATE.md", "link"):
            with pytest.raises(FileExistsError):
                safefile.replace_file(dir_fd, name, b"# seed\n", 0o600, NOBODY.pw_uid, NOBODY.pw_gid, replace=False)
        safefile.replace_file(dir_fd, "NEW.md", b"# seed\n", 0o640, NOBODY.pw_uid, NOBODY.pw_gid, replace=False)
    finally:
        os.close(dir_fd)
    assert (agent / "WORKSTATE.md").read_text() == "the agent's memory\n"
    assert os.readlink(str(agent / "link")) == str(secret) and secret.read_text() == CANARY
    st = os.lstat(str(agent / "NEW.md"))
    assert (st.st_uid, stat.S_IMODE(st.st_mode), st.st_nlink) == (NOBODY.pw_uid, 0o640, 1)
    assert sorted(os.listdir(str(agent))) == ["NEW.md", "WORKSTATE.md", "link"]


# --------------------------------------------------------------------------- locate: a path as root follows it
@pytest.fixture
def places(trusted_dir):
    """trusted/ (root-only chain) with agents/mail (nobody 0700) and root-only/secret (root 0600, CANARY)."""
    agents = os.path.join(trusted_dir, "agents")
    os.mkdir(agents, 0o755)
    agent = os.path.join(agents, "mail")
    os.mkdir(agent, 0o700)
    os.chown(agent, NOBODY.pw_uid, NOBODY.pw_gid)
    private = os.path.join(trusted_dir, "root-only")
    os.mkdir(private, 0o700)
    secret = os.path.join(private, "secret")
    with open(secret, "w") as handle:
        handle.write(CANARY)
    os.chmod(secret, 0o600)
    return trusted_dir, agent, secret


def test_locate_follows_symlinks_only_root_can_write(places):
    trusted, agent, secret = places
    os.symlink("root-only/secret", os.path.join(trusted, "rel"))
    os.symlink(os.path.join(trusted, "rel"), os.path.join(trusted, "abs"))
    with safefile.locate(os.path.join(trusted, "abs")) as found:
        assert found.path == secret and found.name == "secret" and found.writable is False
        assert found.links == [os.path.join(trusted, "abs"), os.path.join(trusted, "rel")]
        assert stat.S_ISREG(found.st.st_mode) and found.missing is None
        fd, st = found.open()
        try:
            assert os.read(fd, 100) == CANARY.encode()
        finally:
            os.close(fd)


@pytest.mark.parametrize("where", ["entry", "directory"])
def test_locate_never_follows_a_symlink_in_an_agent_directory(places, where):
    trusted, agent, secret = places
    if where == "entry":
        os.symlink(secret, os.path.join(agent, "run"))
        path = os.path.join(agent, "run")
    else:
        os.symlink(os.path.dirname(secret), os.path.join(agent, "bin"))
        path = os.path.join(agent, "bin", "secret")
    before = os.stat(secret).st_atime_ns
    with pytest.raises(safefile.UnsafeEntry) as err:
        safefile.locate(path)
    link = path if where == "entry" else os.path.join(agent, "bin")
    assert err.value.found == "symlink" and err.value.writable is True and err.value.path == link
    assert err.value.message == "%s is a symlink (not followed): in a directory that a user other than root can " \
                                "write" % link
    assert secret not in err.value.message and CANARY not in err.value.message
    assert os.stat(secret).st_atime_ns == before


def test_locate_says_writable_for_anything_below_a_directory_another_user_can_write(places):
    trusted, agent, secret = places
    os.mkdir(os.path.join(agent, "sub"), 0o755)  # root's, but in the agent's directory: it can be renamed away
    with open(os.path.join(agent, "sub", "tool"), "w") as handle:
        handle.write("x")
    with safefile.locate(os.path.join(agent, "sub", "tool")) as found:
        assert found.writable is True and stat.S_ISREG(found.st.st_mode)
    group = os.path.join(trusted, "group-writable")
    os.mkdir(group)
    os.chmod(group, 0o775)
    with safefile.locate(os.path.join(group, "x")) as found:
        assert found.writable is True and found.st is None
    with safefile.locate(os.path.join(trusted, "x")) as found:
        assert found.writable is False


def test_locate_reports_a_missing_component_and_where_it_stopped(places):
    trusted, agent, secret = places
    with safefile.locate(os.path.join(trusted, "opt", "tool", "run")) as found:
        assert found.st is None and found.missing == os.path.join(trusted, "opt")
        assert found.path == os.path.join(trusted, "opt", "tool", "run") and found.writable is False
        with pytest.raises(FileNotFoundError):
            found.open()
    with safefile.locate(os.path.join(agent, "bin", "run")) as found:
        assert found.st is None and found.missing == os.path.join(agent, "bin") and found.writable is True


def test_locate_gives_the_type_without_opening(places, deadline):
    trusted, agent, secret = places
    os.mkfifo(os.path.join(agent, "fifo"))
    with safefile.locate(os.path.join(agent, "fifo")) as found:
        assert stat.S_ISFIFO(found.st.st_mode)
        with pytest.raises(safefile.UnsafeEntry) as err:
            found.open()
        assert err.value.found == "fifo" and err.value.writable is True
    with safefile.locate("/dev/null") as found:
        assert stat.S_ISCHR(found.st.st_mode) and found.writable is False
    open(os.path.join(trusted, "file"), "w").close()
    with pytest.raises(safefile.UnsafeEntry) as err:
        safefile.locate(os.path.join(trusted, "file", "x"))
    assert err.value.found == "not a directory" and err.value.writable is False


def test_locate_bounds_the_links_it_follows(trusted_dir):
    os.symlink("b", os.path.join(trusted_dir, "a"))
    os.symlink("a", os.path.join(trusted_dir, "b"))
    with pytest.raises(safefile.UnsafeEntry) as err:
        safefile.locate(os.path.join(trusted_dir, "a"))
    assert "more than %d symlinks" % safefile.MAX_SYMLINKS in err.value.message
    with pytest.raises(ValueError):
        safefile.locate("relative/path")


def test_locate_resolves_dotdot_in_a_root_link_physically(places):
    trusted, agent, secret = places
    deep = os.path.join(trusted, "a", "b")
    os.makedirs(deep, 0o755)
    os.symlink("../../root-only/secret", os.path.join(deep, "up"))
    with safefile.locate(os.path.join(deep, "up")) as found:
        assert found.path == secret and found.writable is False


def test_locate_in_a_sticky_directory_of_roots(places):
    """Like /tmp: another user cannot rename or remove root's entries there, only create new ones."""
    trusted, agent, secret = places
    sticky = os.path.join(trusted, "tmp")
    os.mkdir(sticky)
    os.chmod(sticky, 0o1777)
    os.mkdir(os.path.join(sticky, "roots"), 0o755)
    with safefile.locate(os.path.join(sticky, "roots", "x")) as found:
        assert found.writable is False
    with safefile.locate(os.path.join(sticky, "not-there", "x")) as found:
        assert found.writable is True and found.missing == os.path.join(sticky, "not-there")
    os.mkdir(os.path.join(sticky, "theirs"), 0o755)
    os.chown(os.path.join(sticky, "theirs"), NOBODY.pw_uid, NOBODY.pw_gid)
    with safefile.locate(os.path.join(sticky, "theirs", "x")) as found:
        assert found.writable is True
    os.symlink(secret, os.path.join(sticky, "root-link"))
    with safefile.locate(os.path.join(sticky, "root-link")) as found:
        assert found.path == secret and found.writable is False
    os.symlink(secret, os.path.join(sticky, "their-link"))
    os.lchown(os.path.join(sticky, "their-link"), NOBODY.pw_uid, NOBODY.pw_gid)
    with pytest.raises(safefile.UnsafeEntry) as err:
        safefile.locate(os.path.join(sticky, "their-link"))
    assert err.value.found == "symlink" and err.value.writable is True
