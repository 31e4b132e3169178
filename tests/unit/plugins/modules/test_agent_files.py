"""agentops.fleet.agent_files: files, directories, pruning, check mode, secrets never returned."""
import grp
import json
import os
import pwd

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.agentops.fleet.plugins.modules import agent_files

ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


def run(capsys, check=False, diff=False, **args):
    if check:
        args["_ansible_check_mode"] = True
    if diff:
        args["_ansible_diff"] = True
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
