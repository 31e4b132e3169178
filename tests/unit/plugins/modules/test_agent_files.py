"""agentops.fleet.agent_files: files, directories, pruning, check mode, secrets never returned."""
import grp
import json
import os
import pwd

import pytest
from ansible.module_utils.common import warnings as ansible_warnings
from ansible.module_utils.testing import patch_module_args

from ansible_collections.agentops.fleet.plugins.modules import agent_files

ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


def run(capsys, check=False, diff=False, **args):
    if check:
        args["_ansible_check_mode"] = True
    if diff:
        args["_ansible_diff"] = True
    ansible_warnings._global_warnings.clear()  # one module run per process on a host: no warnings carried over
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            agent_files.main()
    return json.loads(capsys.readouterr().out)


def spec(path, content, mode="0600", force=True):
    return {"path": str(path), "content": content, "owner": ME, "group": MY_GROUP, "mode": mode, "force": force}


def test_write_then_idempotent(tmp_path, capsys):
    target = tmp_path / "unit.service"
    first = run(capsys, files=[spec(target, "a\n", "0644")])
    assert first["changed"] and first["changed_paths"] == [str(target)]
    assert target.read_text() == "a\n" and oct(target.stat().st_mode & 0o777) == "0o644"
    again = run(capsys, files=[spec(target, "a\n", "0644")])
    assert not again["changed"]
    target.chmod(0o666)
    fixed = run(capsys, files=[spec(target, "a\n", "0644")])
    assert fixed["changed"] and oct(target.stat().st_mode & 0o777) == "0o644"


def test_check_mode_changes_nothing_and_diff(tmp_path, capsys):
    target = tmp_path / "f"
    target.write_text("old\n")
    result = run(capsys, check=True, diff=True, files=[spec(target, "new\n")], directories=[
        {"path": str(tmp_path / "d"), "owner": ME, "group": MY_GROUP, "mode": "0700"}], absent=[str(target)])
    assert result["changed"] and target.read_text() == "old\n" and not (tmp_path / "d").exists()
    assert result["diff"][0]["before"] == "old\n" and result["diff"][0]["after"] == "new\n"


def test_force_false_keeps_existing_file(tmp_path, capsys):
    target = tmp_path / "WORKSTATE.md"
    target.write_text("my memory\n")
    result = run(capsys, files=[spec(target, "template\n", force=False)])
    assert not result["changed"] and result["kept"] == [str(target)]
    assert target.read_text() == "my memory\n"


def test_secret_content_is_never_returned(tmp_path, capsys):
    target = tmp_path / "token"
    result = run(capsys, diff=True, secret_files=[spec(target, "canary-secret-1234")])
    assert result["changed"] and "diff" not in result
    assert "canary-secret-1234" not in json.dumps(result)
    assert target.read_text() == "canary-secret-1234"
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_prune_and_absent(tmp_path, capsys):
    creds = tmp_path / "creds"
    creds.mkdir()
    for name in ("keep", "keep.prev", "stale", ".lock"):
        (creds / name).write_text("x")
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "inner").write_text("x")
    result = run(capsys, prune=[{"path": str(creds), "keep": ["keep", "keep.prev"]},
                                {"path": str(tmp_path / "missing"), "keep": []}], absent=[str(gone)])
    assert sorted(os.listdir(creds)) == [".lock", "keep", "keep.prev"]
    assert not gone.exists()
    assert sorted(result["changed_paths"]) == sorted([str(creds / "stale"), str(gone)])


# ---------------------------------------------------------------- agent-writable directories
#
# /var/lib/agentops/<name> belongs to the agent (0700) and its parent to root: here tmp/agents (root) holds
# agent directories owned by ``nobody``, and tmp/outside/secret is a root-only file (0600) that a symlink,
# a hard link or a swapped entry points at. Its content must never reach a result, its owner and mode
# never change.

import signal  # noqa: E402
import stat  # noqa: E402
import threading  # noqa: E402
import tracemalloc  # noqa: E402

CANARY = "root-only-canary-Zp81"
NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrgid(NOBODY.pw_gid).gr_name
AGENTS_MD = "# Agent\n\n## Checkpoint protocol (WORKSTATE.md)\nRead it first.\n"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: agent directories belong to nobody")


@pytest.fixture
def deadline():
    """Fail instead of hanging when something blocks (a FIFO opened without O_NONBLOCK would)."""
    def expired(signum, frame):
        raise TimeoutError("blocked for more than 20 s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, 20)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def fleet(tmp_path):
    """Returns make(name) -> agent directory, and the root-only secret outside every agent directory."""
    root = tmp_path / "agents"
    root.mkdir(mode=0o755)
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    secret = outside / "secret"
    secret.write_text(CANARY)
    secret.chmod(0o600)

    def make(name):
        directory = root / name
        directory.mkdir(mode=0o700)
        os.chown(str(directory), NOBODY.pw_uid, NOBODY.pw_gid)
        return directory
    return make, secret


def agent_spec(path, content=AGENTS_MD, mode="0600", force=True):
    return {"path": str(path), "content": content, "owner": "nobody", "group": NOGROUP, "mode": mode,
            "force": force}


def fingerprint(path):
    st = os.lstat(str(path))
    with open(str(path), "rb") as handle:
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_nlink, handle.read()


def warning_texts(result):
    return [w if isinstance(w, str) else w["event"]["msg"] for w in result.get("warnings", [])]


def problems_by_path(result):
    return dict((p["path"], p) for p in result["problems"])


@needs_root
def test_symlinked_agents_md_is_replaced_never_followed(fleet, capsys):
    make, secret = fleet
    agent = make("mail")
    before = fingerprint(secret)
    os.symlink(str(secret), str(agent / "AGENTS.md"))
    result = run(capsys, diff=True, files=[agent_spec(agent / "AGENTS.md", mode="0644")])
    assert fingerprint(secret) == before
    assert CANARY not in json.dumps(result)
    st = os.lstat(str(agent / "AGENTS.md"))
    assert stat.S_ISREG(st.st_mode) and (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY.pw_uid, 0o644)
    assert (agent / "AGENTS.md").read_text() == AGENTS_MD
    problem = problems_by_path(result)[str(agent / "AGENTS.md")]
    assert problem["found"] == "symlink" and problem["action"].startswith("replaced")
    assert any("AGENTS.md is a symlink" in w for w in warning_texts(result))
    assert result["changed_paths"] == [str(agent / "AGENTS.md")]
    assert result["diff"][0]["before"] == "" and "symlink, not read" in result["diff"][0]["before_header"]


@needs_root
def test_check_diff_never_shows_a_root_only_file(fleet, capsys):
    make, secret = fleet
    agent = make("mail")
    before = fingerprint(secret)
    os.symlink(str(secret), str(agent / "AGENTS.md"))
    os.link(str(secret), str(agent / "NOTES.md"))      # a hard link to it (no symlink to stop)
    result = run(capsys, check=True, diff=True, files=[agent_spec(agent / "AGENTS.md"),
                                                       agent_spec(agent / "NOTES.md")])
    assert CANARY not in json.dumps(result)
    assert result["changed"] and not result.get("failed")
    found = problems_by_path(result)
    assert found[str(agent / "AGENTS.md")]["found"] == "symlink"
    assert found[str(agent / "NOTES.md")]["found"] == "hard link"
    assert all(p["action"] == "would be replaced by the rendered file" for p in result["problems"])
    assert os.path.islink(str(agent / "AGENTS.md"))    # check mode changed nothing
    assert fingerprint(secret)[:3] == before[:3] and fingerprint(secret)[4] == CANARY.encode()


@needs_root
def test_diff_shows_only_the_expected_owners_file(fleet, capsys):
    make, dummy = fleet
    agent = make("mail")
    (agent / "AGENTS.md").write_text("written by someone else\n")      # owned by root, not by the agent
    result = run(capsys, check=True, diff=True, files=[agent_spec(agent / "AGENTS.md")])
    assert result["diff"][0]["before"] == "(owned by uid 0, not shown)\n"
    os.chown(str(agent / "AGENTS.md"), NOBODY.pw_uid, NOBODY.pw_gid)
    result = run(capsys, check=True, diff=True, files=[agent_spec(agent / "AGENTS.md")])
    assert result["diff"][0]["before"] == "written by someone else\n"


@needs_root
def test_hostile_entries_of_one_agent_never_stop_the_others(fleet, capsys, deadline):
    make, secret = fleet
    before = fingerprint(secret)
    link, fifo, huge, folder, good = (make(n) for n in ("link", "fifo", "huge", "folder", "good"))
    os.symlink(str(secret), str(link / "AGENTS.md"))
    os.symlink(str(secret), str(link / "WORKSTATE.md"))
    os.mkfifo(str(fifo / "AGENTS.md"))
    os.mkfifo(str(fifo / "WORKSTATE.md"))
    with open(str(huge / "AGENTS.md"), "wb") as handle:
        handle.truncate(64 * 1024 ** 3)                  # 64 GiB, sparse
    (folder / "AGENTS.md").mkdir()
    (folder / "AGENTS.md" / "data").write_text("agent data")
    (folder / "WORKSTATE.md").mkdir()
    files = []
    for agent in (link, fifo, huge, folder, good):
        files += [agent_spec(agent / "AGENTS.md"),
                  agent_spec(agent / "WORKSTATE.md", content="# Working state\n", force=False)]
    tracemalloc.start()
    try:
        result = run(capsys, diff=True, files=files)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not result.get("failed"), result.get("msg")
    assert peak < 32 * 1024 * 1024
    assert fingerprint(secret) == before
    assert CANARY not in json.dumps(result)
    found = dict((p["path"], (p["found"], p["action"])) for p in result["problems"])
    replaced = "replaced by the rendered file (not followed)"
    assert found == {
        str(link / "AGENTS.md"): ("symlink", replaced),
        str(link / "WORKSTATE.md"): ("symlink", "left in place"),
        str(fifo / "AGENTS.md"): ("fifo", replaced),
        str(fifo / "WORKSTATE.md"): ("fifo", "left in place"),
        str(huge / "AGENTS.md"): ("too large", replaced),
        str(folder / "AGENTS.md"): ("directory", "left in place"),
        str(folder / "WORKSTATE.md"): ("directory", "left in place"),
    }
    assert len(warning_texts(result)) == len(result["problems"]) == 7
    for agent in (link, fifo, huge, good):
        st = os.lstat(str(agent / "AGENTS.md"))
        assert stat.S_ISREG(st.st_mode) and st.st_size == len(AGENTS_MD) and st.st_uid == NOBODY.pw_uid
    assert (folder / "AGENTS.md" / "data").read_text() == "agent data"
    assert os.path.islink(str(link / "WORKSTATE.md"))
    assert stat.S_ISFIFO(os.lstat(str(fifo / "WORKSTATE.md")).st_mode)
    assert (good / "WORKSTATE.md").read_text() == "# Working state\n"
    assert str(link / "WORKSTATE.md") in result["kept"] and str(good / "WORKSTATE.md") not in result["kept"]
    huge_diff = [d for d in result["diff"] if d["after_header"] == str(huge / "AGENTS.md")][0]
    assert huge_diff["before"] == "" and "(too large, not read)" in huge_diff["before_header"]


@needs_root
def test_same_content_wrong_mode_is_fixed_through_the_file(fleet, capsys):
    make, dummy = fleet
    agent = make("mail")
    (agent / "AGENTS.md").write_text(AGENTS_MD)
    os.chmod(str(agent / "AGENTS.md"), 0o666)
    result = run(capsys, files=[agent_spec(agent / "AGENTS.md")])
    st = os.lstat(str(agent / "AGENTS.md"))
    assert result["changed_paths"] == [str(agent / "AGENTS.md")] and result["problems"] == []
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY.pw_uid, 0o600)
    assert not run(capsys, files=[agent_spec(agent / "AGENTS.md")])["changed"]


@needs_root
def test_symlinked_directory_inside_an_agent_directory(fleet, capsys):
    make, secret = fleet
    agent = make("mail")
    os.symlink(str(secret.parent), str(agent / "notes"))
    before = sorted(os.listdir(str(secret.parent)))
    mode_before = stat.S_IMODE(os.lstat(str(secret.parent)).st_mode)
    result = run(capsys, files=[agent_spec(agent / "notes" / "secret"), agent_spec(agent / "notes" / "new")],
                 directories=[{"path": str(agent / "notes"), "owner": "nobody", "group": NOGROUP, "mode": "0755"}])
    assert not result.get("failed")
    found = problems_by_path(result)
    assert found[str(agent / "notes")]["found"] == "symlink"
    assert found[str(agent / "notes")]["action"] == "left in place"
    assert found[str(agent / "notes" / "secret")]["found"] == "symlink"
    assert found[str(agent / "notes" / "new")]["action"] == "skipped"
    assert sorted(os.listdir(str(secret.parent))) == before
    assert stat.S_IMODE(os.lstat(str(secret.parent)).st_mode) == mode_before
    assert secret.read_text() == CANARY and result["changed_paths"] == []


@needs_root
def test_directory_in_an_agent_directory_is_fixed_through_its_fd(fleet, capsys):
    make, dummy = fleet
    agent = make("mail")
    result = run(capsys, directories=[{"path": str(agent / "cache"), "owner": "nobody", "group": NOGROUP,
                                       "mode": "0750"}])
    st = os.lstat(str(agent / "cache"))
    assert result["changed_paths"] == [str(agent / "cache")]
    assert stat.S_ISDIR(st.st_mode) and (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY.pw_uid, 0o750)


def test_symlink_in_a_root_only_directory_still_fails(tmp_path, capsys):
    target = tmp_path / "real"
    target.write_text("x")
    os.symlink(str(target), str(tmp_path / "unit.service"))
    result = run(capsys, files=[spec(tmp_path / "unit.service", "a\n")])
    assert result["failed"] and "unit.service exists and is not a regular file (symlink)" in result["msg"]
    assert target.read_text() == "x"


@needs_root
def test_race_swapping_agents_md_and_a_symlink(fleet, capsys):
    """The agent swaps AGENTS.md between a regular file and a symlink to a root-only file in a tight loop."""
    make, secret = fleet
    agent = make("mail")
    before = fingerprint(secret)
    stop = threading.Event()
    swaps = [0]

    def swapper():
        regular, link = str(agent / ".reg"), str(agent / ".lnk")
        while not stop.is_set():
            with open(regular, "w") as handle:
                handle.write(AGENTS_MD if swaps[0] % 3 else "agent edit\n")
            os.chmod(regular, 0o600)
            os.replace(regular, str(agent / "AGENTS.md"))
            os.symlink(str(secret), link)
            os.replace(link, str(agent / "AGENTS.md"))
            swaps[0] += 1

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    outcomes = {"symlink": 0, "clean": 0}
    try:
        for index in range(200):
            result = run(capsys, check=index % 4 == 0, diff=index % 2 == 0,
                         files=[agent_spec(agent / "AGENTS.md", mode="0644")])
            assert not result.get("failed"), result.get("msg")
            assert CANARY not in json.dumps(result)
            assert fingerprint(secret) == before, "run %d changed the file outside" % index
            kinds = [p["found"] for p in result["problems"]]
            assert set(kinds) <= {"symlink", "hard link", "error"}, kinds
            outcomes["symlink" if kinds else "clean"] += 1
    finally:
        stop.set()
        thread.join(5)
    assert fingerprint(secret) == before
    assert swaps[0] > 10
    assert outcomes["symlink"] > 0 and outcomes["clean"] > 0, outcomes


# ---------------------------------------------------------------- entries of an agent: a hostile one holds that agent
# The agents role names the agent of each entry. A hostile entry in an agent's directory leaves that agent as it
# was - its unit and settings (in root's directories, written after its own files) are not written, nothing of it is
# replaced - and the other agents are handled.

def agent_entries(agent_dir, units, name, content=AGENTS_MD):
    files = [dict(agent_spec(agent_dir / "AGENTS.md", content), agent=name),
             dict(agent_spec(agent_dir / "WORKSTATE.md", "# Working state\n", force=False), agent=name)]
    units_files = [{"path": str(units / ("agentops-%s.service" % name)), "content": "[Service]\n", "mode": "0644",
                    "agent": name},
                   {"path": str(units / ("%s.json" % name)), "content": "{}\n", "mode": "0600", "agent": name}]
    directories = [{"path": str(agent_dir), "owner": "nobody", "group": NOGROUP, "mode": "0700", "agent": name}]
    users = [{"name": "agentops-test-user-%s" % name, "home": str(agent_dir), "agent": name}]
    return users, directories, files, units_files


HOSTILE = {
    "agents-md-symlink": ("AGENTS.md", "symlink", "is a symlink (not followed)"),
    "agents-md-fifo": ("AGENTS.md", "fifo", "is a FIFO (not read)"),
    "agents-md-sparse": ("AGENTS.md", "sparse", "is too large"),
    "agents-md-directory": ("AGENTS.md", "directory", "is a directory where a file belongs"),
    "agents-md-hard-link": ("AGENTS.md", "hardlink", "has more than one hard link (not read or changed: it may be "
                                                     "another file's link)"),
    "workstate-symlink-shadow": ("WORKSTATE.md", "shadow", "is a symlink (not followed)"),
    "workstate-fifo": ("WORKSTATE.md", "fifo", "is a FIFO (not read)"),
}


def plant(agent_dir, name, kind, secret):
    path = str(agent_dir / name)
    if kind == "symlink":
        os.symlink(str(secret), path)
    elif kind == "shadow":
        os.symlink("/etc/shadow", path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "sparse":
        with open(path, "wb") as handle:
            handle.truncate(64 * 1024 ** 3)
    elif kind == "directory":
        os.mkdir(path)
    else:
        os.link(str(secret), path)


@needs_root
@pytest.mark.parametrize("check", [False, True], ids=["run", "check"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_entry_holds_its_agent_and_the_others_are_written(fleet, tmp_path, capsys, deadline, case, check):
    make, secret = fleet
    evil, good = make("evil"), make("good")
    units = tmp_path / "units"
    units.mkdir(mode=0o755)
    entry, kind, reason = HOSTILE[case]
    plant(evil, entry, kind, secret)
    before = fingerprint(secret)
    users, directories, files, units_files = [], [], [], []
    for directory, name in ((evil, "evil"), (good, "good")):
        u, d, f, n = agent_entries(directory, units, name)
        users, directories, files, units_files = users + u, directories + d, files + f, units_files + n
    # users only in check mode: a real run would create them on the machine running the tests
    result = run(capsys, check=check, diff=True, users=users if check else [], directories=directories,
                 files=files + units_files)
    assert not result.get("failed"), result.get("msg")
    assert result["held"] == {"evil": ["agentops_agents[evil]: %s %s" % (evil / entry, reason)
                                       + (": 2 links" if kind == "hardlink" else "")
                                       + (": %d bytes, limit %d" % (64 * 1024 ** 3, agent_files.DIFF_MAX_BYTES)
                                          if kind == "sparse" else "")]}
    assert fingerprint(secret) == before and CANARY not in json.dumps(result)
    # nothing of evil: its user, unit, settings; its entry left as the agent made it
    assert "agentops-test-user-evil" not in result["created_users"]
    assert not (units / "agentops-evil.service").exists() and not (units / "evil.json").exists()
    assert not any("evil" in p for p in result["changed_paths"])
    assert not any("evil" in d["after_header"] for d in result.get("diff", []))
    if kind in ("symlink", "shadow"):
        assert os.path.islink(str(evil / entry))
    # good is handled as usual
    assert result["created_users"] == (["agentops-test-user-good"] if check else [])
    if check:
        assert not (units / "agentops-good.service").exists()
        assert str(units / "agentops-good.service") in result["changed_paths"]
    else:
        assert (units / "agentops-good.service").read_text() == "[Service]\n"
        assert (good / "AGENTS.md").read_text() == AGENTS_MD
    assert [p["action"] for p in result["problems"]] == ["agent evil left as it was"]


@needs_root
def test_a_hostile_entry_met_after_the_first_look_still_holds_the_agent(fleet, tmp_path, capsys, monkeypatch):
    """In a race the entry turns hostile after the look before anything is written: the agent is held where it is
    met, before its unit and settings (written after its own files)."""
    make, secret = fleet
    evil = make("evil")
    units = tmp_path / "units"
    units.mkdir(mode=0o755)
    os.symlink(str(secret), str(evil / "AGENTS.md"))
    monkeypatch.setattr(agent_files.Worker, "precheck", lambda self, directories, files: None)
    dummy, directories, files, units_files = agent_entries(evil, units, "evil")
    result = run(capsys, directories=directories, files=files + units_files)
    assert result["held"] == {"evil": ["agentops_agents[evil]: %s is a symlink (not followed)" % (evil / "AGENTS.md")]}
    assert os.path.islink(str(evil / "AGENTS.md")) and fingerprint(secret)[4] == CANARY.encode()
    assert not (units / "agentops-evil.service").exists() and not (units / "evil.json").exists()


@needs_root
def test_regular_files_of_an_agent_are_not_held(fleet, tmp_path, capsys):
    """An AGENTS.md the agent edited, a WORKSTATE.md it wrote (any size): the usual work, no hold."""
    make, dummy = fleet
    agent = make("mail")
    units = tmp_path / "units"
    units.mkdir(mode=0o755)
    (agent / "AGENTS.md").write_text("edited by the agent\n")
    with open(str(agent / "WORKSTATE.md"), "wb") as handle:
        handle.truncate(8 * 1024 * 1024)
    dummy, directories, files, units_files = agent_entries(agent, units, "mail")
    result = run(capsys, directories=directories, files=files + units_files)
    assert result["held"] == {} and result["problems"] == []
    assert (agent / "AGENTS.md").read_text() == AGENTS_MD and (units / "agentops-mail.service").exists()
    assert os.path.getsize(str(agent / "WORKSTATE.md")) == 8 * 1024 * 1024
