"""An alert is delivered when its state cannot be written: real full and read-only tmpfs mounts.

The alert-key state (``<state_dir>/.alerts``) and the spool live on ``/var``; these tests mount a tiny
tmpfs in their place, fill it up (ENOSPC) or remount it read-only (EROFS), and send alerts to a real
HTTP receiver on 127.0.0.1. Mounting needs root: CI runs the unit tests as root.
"""
import errno
import json
import os
import subprocess

import pytest

from agentops_host import alert

from test_alert_helpers import Recorder, make_args, recorder, webhook_channel, write_config  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs the unit tests as "
                                                          "root); run them as root to cover the full-disk path")


def _mount(path, size="64k", mode="0700"):
    os.makedirs(path, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=%s" % (size, mode), "tmpfs", str(path)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    assert proc.returncode == 0, "mount -t tmpfs failed as root: %s" % proc.stdout


def _fill(path):
    """Write into ``path`` until the tmpfs refuses with ENOSPC; prove that it does."""
    with pytest.raises(OSError) as caught:
        with open(os.path.join(str(path), "ballast"), "wb") as handle:
            for _ in range(10000):
                handle.write(b"\0" * 4096)
                handle.flush()
                os.fsync(handle.fileno())
    assert caught.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as again:
        with open(os.path.join(str(path), "probe"), "wb") as handle:
            handle.write(b"x" * 8192)
            handle.flush()
    assert again.value.errno == errno.ENOSPC


@pytest.fixture
def mounts(tmp_path):
    """mount(name, fill=True|False, readonly=False) -> path of a fresh tiny tmpfs under tmp_path; all unmounted after."""
    mounted = []

    def mount(name, fill=True, readonly=False, prepare=None):
        path = tmp_path / name
        _mount(path)
        mounted.append(path)
        if prepare:
            prepare(str(path))
        if fill:
            _fill(path)
        if readonly:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
            with pytest.raises(OSError) as caught:
                open(os.path.join(str(path), "probe"), "wb").close()
            assert caught.value.errno == errno.EROFS
        return str(path)

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def _args(tmp_path, state_dir, spool_dir=None, runtime_dir=None):
    args = make_args(tmp_path)
    args.state_dir = state_dir
    if spool_dir is not None:
        args.spool_dir = spool_dir
    args.runtime_dir = runtime_dir
    return args


def _keys(server):
    return [(b["key"], b["severity"]) for b in server.bodies()]


@pytest.mark.parametrize("broken", ["full", "read-only"])
def test_alert_is_delivered_when_its_state_cannot_be_written(tmp_path, mounts, recorder, capsys, broken):
    if broken == "full":
        state_dir = mounts("state")
    else:
        state_dir = mounts("state", fill=False, readonly=True)
    args = _args(tmp_path, state_dir, runtime_dir=str(tmp_path / "run"))
    write_config(args, [webhook_channel(recorder)], alert_repeat_seconds=3600)
    assert alert.emit(args, "critical", "host/disk:/var", "/var is full", "99% used", agent=None) is True
    assert _keys(recorder) == [("host/disk:/var", "critical")]
    err = capsys.readouterr().err
    problem = "ENOSPC" if broken == "full" else "EROFS"
    assert "alert state of key=host/disk:/var cannot be written to %s/.alerts (%s" % (state_dir, problem) in err
    assert "kept in %s/run/alerts (memory)" % tmp_path in err
    # de-duplication goes on through the record in memory: the same alert is not sent again ...
    assert alert.emit(args, "critical", "host/disk:/var", "/var is full", "99% used") is True
    assert _keys(recorder) == [("host/disk:/var", "critical")]
    assert [a["key"] for a in alert.open_alerts(args)] == ["host/disk:/var"]
    assert alert.is_open(args, "host/disk:/var")
    # ... an escalation or a resolve still is, exactly once
    assert alert.emit(args, "warning", "other", "other") is True
    assert alert.resolve(args, "host/disk:/var", title="/var has room again") is True
    assert alert.resolve(args, "host/disk:/var") is True
    assert _keys(recorder) == [("host/disk:/var", "critical"), ("other", "warning"),
                               ("host/disk:/var", "resolved")]
    assert [a["key"] for a in alert.open_alerts(args)] == ["other"]


def test_without_any_writable_state_every_alert_is_sent_and_the_duplicates_are_said(tmp_path, mounts, recorder,
                                                                                    capsys):
    args = _args(tmp_path, mounts("state"), runtime_dir=mounts("run"))
    write_config(args, [webhook_channel(recorder)], alert_repeat_seconds=3600)
    assert alert.emit(args, "critical", "a1/down", "a1 failed", agent="a1") is True
    assert alert.emit(args, "critical", "a1/down", "a1 failed", agent="a1") is True
    # nothing remembers that it was sent: it is sent again (a duplicate, never a lost alert)
    assert _keys(recorder) == [("a1/down", "critical"), ("a1/down", "critical")]
    err = capsys.readouterr().err
    assert err.count("it is sent anyway, and sent again each time it is raised (duplicates are possible)") == 2


def test_state_back_on_disk_takes_the_record_back_from_memory(tmp_path, mounts, recorder):
    state_dir = mounts("state", fill=False)
    args = _args(tmp_path, state_dir, runtime_dir=str(tmp_path / "run"))
    write_config(args, [webhook_channel(recorder)], alert_repeat_seconds=0)
    subprocess.run(["mount", "-o", "remount,ro", state_dir], check=True)
    assert alert.emit(args, "critical", "k", "first")
    memory = os.path.join(str(tmp_path / "run"), "alerts", alert._key_name("k"))
    assert os.path.exists(memory)
    subprocess.run(["mount", "-o", "remount,rw", state_dir], check=True)
    assert alert.emit(args, "critical", "k", "reminder")        # repeat 0: due at once
    assert os.path.exists(alert._key_file(args, "k")) and not os.path.exists(memory)
    bodies = recorder.bodies()
    assert [b["reminder"] for b in bodies] == [False, True]
    assert bodies[0]["since"] == bodies[1]["since"]                # the same incident, carried over


def test_spool_full_too_keeps_the_message_in_memory_and_flush_delivers_it(tmp_path, mounts, capsys):
    receiver = Recorder()
    port = receiver.server_address[1]
    receiver.close()                                             # the channel is down
    args = _args(tmp_path, mounts("state"), spool_dir=mounts("spool"), runtime_dir=str(tmp_path / "run"))
    write_config(args, [{"type": "webhook", "url": "http://127.0.0.1:%d/hook" % port}])
    assert alert.emit(args, "critical", "a1/down", "a1 failed", "the body", agent="a1") is True
    err = capsys.readouterr().err
    assert "the spool %s/alerts cannot be written (ENOSPC" % args.spool_dir in err
    kept = [os.path.join(d, f) for d, _s, files in os.walk(str(tmp_path / "run" / "spool")) for f in files
            if f.endswith(".json")]
    assert len(kept) == 1 and json.loads(open(kept[0]).read())["message"]["key"] == "a1/down"
    assert alert.spooled_count(args) == 1
    back = Recorder(port)                                        # the channel comes back, /var is still full
    try:
        assert alert.flush(args) == (1, 0)
        assert _keys(back) == [("a1/down", "critical")]
        assert alert.flush(args) == (0, 0)                        # exactly once
        assert _keys(back) == [("a1/down", "critical")]
    finally:
        back.close()


def test_spooled_in_memory_moves_back_to_the_spool_when_it_has_room(tmp_path, mounts):
    receiver = Recorder()
    port = receiver.server_address[1]
    receiver.close()
    spool_dir = mounts("spool", fill=False)
    args = _args(tmp_path, str(tmp_path / "state"), spool_dir=spool_dir, runtime_dir=str(tmp_path / "run"))
    write_config(args, [{"type": "webhook", "url": "http://127.0.0.1:%d/hook" % port}])
    subprocess.run(["mount", "-o", "remount,ro", spool_dir], check=True)
    assert alert.emit(args, "critical", "a1/down", "a1 failed", agent="a1") is True
    assert alert.flush(args) == (0, 1)                            # still down, the spool still read-only
    subprocess.run(["mount", "-o", "remount,rw", spool_dir], check=True)
    assert alert.flush(args) == (0, 1)                            # still down: moved onto the disk
    on_disk = [f for _d, _s, files in os.walk(os.path.join(spool_dir, "alerts")) for f in files if f.endswith(".json")]
    in_memory = [f for _d, _s, files in os.walk(str(tmp_path / "run" / "spool")) for f in files if f.endswith(".json")]
    assert len(on_disk) == 1 and in_memory == []


def test_no_place_at_all_writes_the_message_to_the_journal(tmp_path, mounts, capsys):
    receiver = Recorder()
    port = receiver.server_address[1]
    receiver.close()
    args = _args(tmp_path, mounts("state"), spool_dir=mounts("spool"), runtime_dir=mounts("run"))
    write_config(args, [{"type": "webhook", "url": "http://127.0.0.1:%d/hook" % port}])
    assert alert.emit(args, "critical", "a1/down", "a1 failed", "last lines of the journal", agent="a1") is False
    err = capsys.readouterr().err
    assert "could not deliver or spool key=a1/down for webhook#0" in err
    assert "a1 failed" in err and "last lines of the journal" in err
