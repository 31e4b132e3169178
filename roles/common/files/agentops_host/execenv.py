"""`agentops exec <agent> --env=VAR=credential ... -- <command>`: credentials_env at exec time.

The agent unit's main process when the agent sets ``credentials_env``. It runs as the agent
user with the unit's own environment and sandbox (it is not a root helper), reads each named
credential from ``$CREDENTIALS_DIRECTORY`` (what ``LoadCredential=`` prepared for this unit),
puts it into the environment under the variable's name and replaces itself with the agent's
command (``os.execve``): the agent keeps the unit's main PID, so ``KillMode=``, ``Restart=``
and ``systemctl stop`` treat it exactly as without this step.

The command line carries names only: the value is never in the unit file, ``systemctl show``,
any ``/proc/<pid>/cmdline`` or the journal. Messages name the variable and the credential,
never the value.
"""
import os
import stat
import sys

from agentops_lib.agentops_contract import CRED_RE, ENV_KEY_RE, LOADER_ENV_RE, NAME_RE

# A credential delivered in an environment variable: Linux limits one environment string to
# 128 KiB (MAX_ARG_STRLEN); tokens are far shorter.
MAX_VALUE_BYTES = 64 * 1024
EXIT_USAGE = 2
EXIT_CREDENTIAL = 78  # EX_CONFIG: Restart=on-failure retries; the start limit then alerts
EXIT_EXEC = 127


class ExecError(Exception):
    """A problem that names the agent, the variable and the credential, never a value."""

    def __init__(self, message, code):
        Exception.__init__(self, message)
        self.code = code


def parse_mapping(items):
    """[(VAR, credential)] from ``--env`` arguments ``VAR=credential``; ExecError on a bad one."""
    result = []
    seen = set()
    for item in items or []:
        var, sep, cred = item.partition("=")
        if not sep or not ENV_KEY_RE.match(var) or LOADER_ENV_RE.match(var):
            raise ExecError("--env %r: expected VARIABLE=credential with a valid variable name that the "
                            "dynamic loader does not read" % item, EXIT_USAGE)
        if not CRED_RE.match(cred):
            raise ExecError("--env %s: %r is not a valid credential name" % (var, cred), EXIT_USAGE)
        if var in seen:
            raise ExecError("--env %s: given twice" % var, EXIT_USAGE)
        seen.add(var)
        result.append((var, cred))
    return result


def split_arguments(env_items, rest):
    """(--env items, command) from the words after the agent name: ``--env=V=c`` / ``--env V=c``, then
    ``--``, then the command (whose own arguments are never read as options)."""
    index = 0
    while index < len(rest):
        word = rest[index]
        if word == "--":
            return env_items, rest[index + 1:]
        if word.startswith("--env="):
            env_items.append(word[len("--env="):])
        elif word == "--env" and index + 1 < len(rest):
            index += 1
            env_items.append(rest[index])
        else:
            raise ExecError("%r: expected --env=VARIABLE=credential or '--' before the command" % word, EXIT_USAGE)
        index += 1
    return env_items, []


def read_credential(dir_fd, var, cred):
    """The credential's bytes: opened without following a link, a regular file, bounded, one
    trailing newline stripped, no NUL, not empty."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(cred, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise ExecError("credentials_env.%s: credential %r cannot be opened in $CREDENTIALS_DIRECTORY (%s); is it "
                        "in the agent's credentials?" % (var, cred, os.strerror(exc.errno)), EXIT_CREDENTIAL)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ExecError("credentials_env.%s: credential %r is not a regular file" % (var, cred), EXIT_CREDENTIAL)
        if info.st_size > MAX_VALUE_BYTES:
            raise ExecError("credentials_env.%s: credential %r is larger than %d bytes" % (var, cred, MAX_VALUE_BYTES),
                            EXIT_CREDENTIAL)
        chunks = []
        total = 0
        while total <= MAX_VALUE_BYTES:
            chunk = os.read(fd, MAX_VALUE_BYTES + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > MAX_VALUE_BYTES:
        raise ExecError("credentials_env.%s: credential %r is larger than %d bytes" % (var, cred, MAX_VALUE_BYTES),
                        EXIT_CREDENTIAL)
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if b"\0" in data:
        raise ExecError("credentials_env.%s: credential %r contains a NUL byte and cannot be an environment value"
                        % (var, cred), EXIT_CREDENTIAL)
    if not data:
        raise ExecError("credentials_env.%s: credential %r is empty" % (var, cred), EXIT_CREDENTIAL)
    return data


def build_environment(environ, mapping):
    """A copy of ``environ`` (bytes keys and values) with each credential of ``mapping`` added."""
    directory = environ.get(b"CREDENTIALS_DIRECTORY", b"")
    if not directory.startswith(b"/"):
        raise ExecError("$CREDENTIALS_DIRECTORY is not set: agentops exec runs as the ExecStart= of a unit with "
                        "LoadCredential= (the agent's credentials)", EXIT_CREDENTIAL)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ExecError("$CREDENTIALS_DIRECTORY cannot be opened (%s)" % os.strerror(exc.errno), EXIT_CREDENTIAL)
    env = dict(environ)
    try:
        for var, cred in mapping:
            env[var.encode("ascii")] = read_credential(dir_fd, var, cred)
    finally:
        os.close(dir_fd)
    return env


def run(args):
    agent = args.agent
    if not NAME_RE.match(agent or ""):
        sys.stderr.write("agentops exec: %r is not an agent name\n" % (agent,))
        return EXIT_USAGE
    try:
        env_items, command = split_arguments(list(args.env or []), list(args.argv or []))
        if os.geteuid() == 0:
            raise ExecError("refusing to run as root: it is the agent unit's main process and runs as the agent "
                            "user (User=)", EXIT_USAGE)
        if not command or not command[0].startswith("/"):
            raise ExecError("no command after '--' (an absolute path)", EXIT_USAGE)
        mapping = parse_mapping(env_items)
        env = build_environment(os.environb, mapping)
    except ExecError as exc:
        sys.stderr.write("agentops exec %s: %s\n" % (agent, exc))
        return exc.code
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(command[0], command, env)
    except OSError as exc:
        sys.stderr.write("agentops exec %s: cannot run %s: %s\n" % (agent, command[0], os.strerror(exc.errno)))
        return EXIT_EXEC
    return EXIT_EXEC  # not reached


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "exec", help="run an agent's command with its credentials_env (unit ExecStart=, as the agent user)",
        description="Read the named credentials from $CREDENTIALS_DIRECTORY, put them into the environment "
                    "and exec the command (same PID). Messages never show a value.")
    parser.add_argument("agent", help="agent name")
    parser.add_argument("--env", action="append", default=[], metavar="VAR=CREDENTIAL",
                        help="deliver credential CREDENTIAL in environment variable VAR (repeatable)")
    parser.add_argument("argv", nargs="...", metavar="-- COMMAND", help="the agent's command and its arguments")
    parser.set_defaults(func=run)
