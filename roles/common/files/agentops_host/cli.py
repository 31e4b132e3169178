"""Entry point of `agentops`: one sub-command per module.

Each sub-command module exposes ``add_parser(subparsers)`` which registers its
parser and sets ``func`` (a callable taking the parsed arguments and returning
an exit code).  Modules are imported lazily so one broken sub-command cannot
take the others (in particular ``alert``) down with it.
"""
import argparse
import importlib
import os
import pwd
import sys

from agentops_lib.agentops_auth import SAFE_PATH
from agentops_lib.agentops_contract import PATHS

# Sub-commands that keep the caller's environment (they run as the agent user and exec the
# agent itself); every other sub-command runs with the fixed environment below.
KEEP_ENVIRONMENT = frozenset(("exec",))

# sub-command name -> module under agentops_host
SUBCOMMANDS = {
    "alert": "alert",
    "flush": "alert",
    "check-auth": "check_auth",
    "heartbeat": "heartbeat",
    "status": "status",
    "rotate": "rotate",
    "failure": "alert",
    "recover": "recovery",
    "exec": "execenv",
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="agentops",
        description="agentops.fleet on-host command: alerts, auth checks, heartbeat, rotation, status.",
    )
    parser.add_argument("--config-dir", default=PATHS["config"], help="configuration directory (default: %(default)s)")
    parser.add_argument("--state-dir", default=PATHS["state"], help="state directory (default: %(default)s)")
    parser.add_argument("--spool-dir", default=PATHS["spool"], help="spool directory (default: %(default)s)")
    parser.add_argument("--runtime-dir", default=None,
                        help="in-memory fallback of the alert state and spool when the state or spool directory "
                             "cannot be written, e.g. a full disk (default: %s with the default --state-dir, "
                             "none with another one)" % PATHS["runtime"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    loaded = set()
    for modname in dict.fromkeys(SUBCOMMANDS.values()):
        try:
            module = importlib.import_module("agentops_host." + modname)
        except ImportError:
            continue
        if modname not in loaded:
            module.add_parser(sub)
            loaded.add(modname)
    return parser


def safe_environment():
    """The fixed, minimal environment of every root-run sub-command (never the caller's)."""
    try:
        home = pwd.getpwuid(os.geteuid()).pw_dir or "/"
    except KeyError:
        home = "/"
    return {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": home}


def reset_environment():
    """Replace the inherited environment and working directory by fixed ones.

    Called before anything else runs: HOME, PATH, LD_*, PYTHON*, TZ, a .curlrc or a
    sitecustomize.py in an agent's folder can no longer reach code that root runs.
    """
    os.environ.clear()
    os.environ.update(safe_environment())
    os.chdir("/")
    os.umask(0o077)


def main(argv=None):
    """Run one sub-command. ``argv`` None: the process's own arguments (the entry script).

    Run as a process, every sub-command but those in KEEP_ENVIRONMENT first resets its
    environment (reset_environment); in-process callers that pass ``argv`` keep theirs.
    """
    if argv is None:
        # Before anything is imported or parsed: fail closed, only a sub-command named in
        # KEEP_ENVIRONMENT, as the very first argument, keeps the caller's environment.
        if not (len(sys.argv) > 1 and sys.argv[1] in KEEP_ENVIRONMENT):
            reset_environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.runtime_dir is None and args.state_dir == PATHS["state"]:
        args.runtime_dir = PATHS["runtime"]
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line a person can act on, never a traceback with secrets
        sys.stderr.write("agentops %s: error: %s\n" % (args.command, exc))
        return 1
