"""`agentops exec`: credentials_env delivered at exec time, run for real.

The real entry script (``python3 -I``) runs as an unprivileged user (``nobody``) with a temporary
``$CREDENTIALS_DIRECTORY``, as the agent unit's ExecStart= does. The child prints a hash of its
variable (never the value), its PID and its arguments, so the tests prove the value arrived, the
process was replaced (same PID) and no message carries the value.
"""
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import pytest

from agentops_host import execenv

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
ENTRY = os.path.join(ROOT, "roles", "common", "files", "agentops")
PYTHON = "/usr/bin/python3"
CANARY = "canary-7f3a9c-token-value"

pytestmark = pytest.mark.skipif(not os.path.exists(PYTHON), reason="needs the system python3 of the shebang")


def _nobody():
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


@pytest.fixture
def bench():
    """An installed entry script, a credentials directory owned by the runner, a child that reports."""
    top = tempfile.mkdtemp(prefix="agentops-exec-")
    os.chmod(top, 0o755)
    lib = os.path.join(top, "lib")
    os.mkdir(lib)
    os.symlink(os.path.join(ROOT, "roles", "common", "files", "agentops_host"), os.path.join(lib, "agentops_host"))
    os.symlink(os.path.join(ROOT, "plugins", "module_utils"), os.path.join(lib, "agentops_lib"))
    script = os.path.join(top, "agentops")
    with open(ENTRY) as handle:
        text = handle.read()
    with open(script, "w") as handle:
        handle.write(text.replace('"/usr/local/lib/agentops"', repr(lib)))
    os.chmod(script, 0o755)
    child = os.path.join(top, "child")
    with open(child, "w") as handle:
        handle.write("#!%s -I\nimport hashlib, json, os, sys\n"
                     "value = os.environb.get(b'API_TOKEN')\n"
                     "print(json.dumps({'sha': hashlib.sha256(value).hexdigest() if value is not None else None,"
                     " 'len': len(value) if value is not None else None, 'pid': os.getpid(), 'argv': sys.argv[1:],"
                     " 'other': os.environ.get('OTHER'), 'uid': os.getuid(), 'keep': os.environ.get('KEEP')}))\n"
                     % PYTHON)
    os.chmod(child, 0o755)
    creds = os.path.join(top, "creds")
    os.mkdir(creds, 0o700)
    user = _nobody()
    uid = os.geteuid()
    if uid == 0 and user is not None:
        os.chown(creds, user.pw_uid, user.pw_gid)
    yield {"top": top, "script": script, "child": child, "creds": creds, "user": user}
    shutil.rmtree(top, ignore_errors=True)


def _write(bench, name, data):
    path = os.path.join(bench["creds"], name)
    with open(path, "wb") as handle:
        handle.write(data)
    if os.geteuid() == 0 and bench["user"] is not None:
        os.chown(path, bench["user"].pw_uid, bench["user"].pw_gid)
    return path


def _run(bench, args, creds_dir=None, as_root=False):
    env = {"PATH": "/usr/bin:/bin", "KEEP": "kept", "CREDENTIALS_DIRECTORY": creds_dir or bench["creds"]}
    kwargs = {}
    if os.geteuid() == 0 and not as_root:
        if bench["user"] is None:
            pytest.skip("needs the user nobody to run unprivileged")
        kwargs = {"user": bench["user"].pw_uid, "group": bench["user"].pw_gid, "extra_groups": []}
    proc = subprocess.run([bench["script"], "exec"] + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=30, cwd=bench["top"], **kwargs)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def _needs_unprivileged():
    if os.geteuid() == 0 and _nobody() is None:
        pytest.skip("needs the user nobody")


def test_the_value_arrives_in_the_variable_and_the_pid_is_kept(bench):
    _needs_unprivileged()
    _write(bench, "api_token", (CANARY + "\n").encode())
    rc, out, err = _run(bench, ["probe", "--env=API_TOKEN=api_token", "--", bench["child"], "--loop", "--env", "x"])
    assert rc == 0, err
    seen = json.loads(out)
    assert seen["sha"] == hashlib.sha256(CANARY.encode()).hexdigest()  # one trailing newline stripped
    assert seen["argv"] == ["--loop", "--env", "x"]  # the agent's own arguments untouched
    assert seen["keep"] == "kept"  # the unit's environment is kept (exec is not a root helper)
    assert seen["uid"] != 0
    assert CANARY not in out + err


def test_exec_replaces_the_process(bench):
    """The child has the PID of the process that started `agentops exec`: KillMode and MainPID see the agent."""
    _needs_unprivileged()
    _write(bench, "api_token", CANARY.encode())
    kwargs = {}
    if os.geteuid() == 0:
        kwargs = {"user": bench["user"].pw_uid, "group": bench["user"].pw_gid, "extra_groups": []}
    proc = subprocess.Popen([bench["script"], "exec", "probe", "--env=API_TOKEN=api_token", "--", bench["child"]],
                            env={"PATH": "/usr/bin:/bin", "CREDENTIALS_DIRECTORY": bench["creds"]},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out.decode())["pid"] == proc.pid
    assert json.loads(out.decode())["sha"] == hashlib.sha256(CANARY.encode()).hexdigest()


@pytest.mark.parametrize("content,text", [
    (b"", "is empty"),
    (b"\n", "is empty"),
    (b"abc\0def-" + CANARY.encode(), "NUL"),
    (CANARY.encode() * 3000, "larger than"),
])
def test_bad_credential_content_is_refused_without_the_value(bench, content, text):
    _needs_unprivileged()
    _write(bench, "api_token", content)
    rc, out, err = _run(bench, ["probe", "--env=API_TOKEN=api_token", "--", bench["child"]])
    assert rc == execenv.EXIT_CREDENTIAL
    assert out == ""  # the agent did not start
    assert text in err and "credentials_env.API_TOKEN" in err and "'api_token'" in err
    assert CANARY not in err and "abc" not in err


def test_a_missing_credential_names_variable_and_credential(bench):
    _needs_unprivileged()
    rc, out, err = _run(bench, ["probe", "--env=API_TOKEN=api_token", "--", bench["child"]])
    assert rc == execenv.EXIT_CREDENTIAL and out == ""
    assert "credentials_env.API_TOKEN: credential 'api_token' cannot be opened" in err


def test_a_symlink_or_fifo_in_place_of_the_credential_is_refused(bench):
    _needs_unprivileged()
    target = os.path.join(bench["top"], "elsewhere")
    with open(target, "w") as handle:
        handle.write(CANARY)
    os.chmod(target, 0o644)
    os.symlink(target, os.path.join(bench["creds"], "linked"))
    os.mkfifo(os.path.join(bench["creds"], "fifo"))
    if os.geteuid() == 0:
        os.chown(os.path.join(bench["creds"], "fifo"), bench["user"].pw_uid, bench["user"].pw_gid)
    rc, out, err = _run(bench, ["probe", "--env=API_TOKEN=linked", "--", bench["child"]])
    assert rc == execenv.EXIT_CREDENTIAL and out == "" and "cannot be opened" in err
    rc, out, err = _run(bench, ["probe", "--env=API_TOKEN=fifo", "--", bench["child"]])  # O_NONBLOCK: no hang
    assert rc == execenv.EXIT_CREDENTIAL and out == "" and "not a regular file" in err


@pytest.mark.parametrize("args,text", [
    (["probe", "--env=LD_PRELOAD=api_token", "--", "/bin/true"], "dynamic loader"),
    (["probe", "--env=1BAD=api_token", "--", "/bin/true"], "VARIABLE=credential"),
    (["probe", "--env=API_TOKEN=../x", "--", "/bin/true"], "not a valid credential name"),
    (["probe", "--env=API_TOKEN=api_token", "--env=API_TOKEN=api_token", "--", "/bin/true"], "given twice"),
    (["probe", "--env=API_TOKEN=api_token", "--"], "no command"),
    (["probe", "--env=API_TOKEN=api_token", "--", "relative/cmd"], "no command"),
    (["Not_An_Agent", "--env=API_TOKEN=api_token", "--", "/bin/true"], "not an agent name"),
])
def test_bad_arguments_are_refused(bench, args, text):
    _needs_unprivileged()
    _write(bench, "api_token", CANARY.encode())
    rc, out, err = _run(bench, args)
    assert rc == execenv.EXIT_USAGE, err
    assert text in err and CANARY not in err


def test_without_credentials_directory_it_refuses(bench):
    _needs_unprivileged()
    rc, out, err = _run(bench, ["probe", "--env=API_TOKEN=api_token", "--", bench["child"]], creds_dir="relative")
    assert rc == execenv.EXIT_CREDENTIAL and "$CREDENTIALS_DIRECTORY is not set" in err


def test_a_command_that_cannot_run_is_named(bench):
    _needs_unprivileged()
    _write(bench, "api_token", CANARY.encode())
    rc, out, err = _run(bench, ["probe", "--env=API_TOKEN=api_token", "--", "/nonexistent/agent"])
    assert rc == execenv.EXIT_EXEC and "cannot run /nonexistent/agent" in err and CANARY not in err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to prove the refusal")
def test_it_refuses_to_run_as_root(bench):
    _write(bench, "api_token", CANARY.encode())
    rc, out, err = _run(bench, ["probe", "--env=API_TOKEN=api_token", "--", bench["child"]], as_root=True)
    assert rc == execenv.EXIT_USAGE and "refusing to run as root" in err and out == ""


@pytest.mark.parametrize("argv,kept", [
    (["exec", "probe", "--", "/bin/true"], True),
    (["status", "exec"], False),  # a later "exec" does not keep a root sub-command's environment
    (["--config-dir", "exec", "status"], False),
    (["heartbeat"], False),
])
def test_only_exec_as_first_argument_keeps_the_environment(argv, kept):
    code = ("import json, os, sys; sys.path[:0] = [%r, %r]; os.environ['KEEP'] = 'kept'\n"
            "from agentops_host import cli\n"
            "def stop():\n    print(json.dumps(os.environ.get('KEEP'))); sys.exit(0)\n"
            "cli.build_parser = stop\nsys.argv = ['agentops'] + %r\ncli.main()\n"
            % (os.path.join(ROOT, "roles", "common", "files"), os.path.join(ROOT, ".cache", "hostlib"), argv))
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, check=True, timeout=30).stdout
    assert json.loads(out.decode()) == ("kept" if kept else None)
