"""Entry point of `agentops`: one sub-command per module.

Each sub-command module exposes ``add_parser(subparsers)`` which registers its
parser and sets ``func`` (a callable taking the parsed arguments and returning
an exit code).  Modules are imported lazily so one broken sub-command cannot
take the others (in particular ``alert``) down with it.
"""
import argparse
import importlib
import sys

# sub-command name -> module under agentops_host
SUBCOMMANDS = {
    "alert": "alert",
    "flush": "alert",
    "check-auth": "check_auth",
    "heartbeat": "heartbeat",
    "status": "status",
    "rotate": "rotate",
    "failure": "alert",
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="agentops",
        description="agentops.fleet on-host command: alerts, auth checks, heartbeat, rotation, status.",
    )
    parser.add_argument("--config-dir", default="/etc/agentops", help="configuration directory (default: %(default)s)")
    parser.add_argument("--state-dir", default="/var/lib/agentops", help="state directory (default: %(default)s)")
    parser.add_argument("--spool-dir", default="/var/spool/agentops", help="spool directory (default: %(default)s)")
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


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line a person can act on, never a traceback with secrets
        sys.stderr.write("agentops %s: error: %s\n" % (args.command, exc))
        return 1
