"""`agentops check-auth <agent>`: run an agent's auth checks on the host.

The checks are the agent's ``auth_checks`` in ``<config_dir>/agents.d/<agent>.json``
and run through ``agentops_lib.agentops_auth.run_check``, the same code as the
``agentops.fleet.auth_check`` module. A check's ``credential`` is read from
``<config_dir>/credentials/<agent>/<credential>``.

The agent's unit runs this as ``ExecStartPre=+/usr/local/bin/agentops check-auth <agent>``:
exit 0 when every check is AUTH_OK (or AUTH_EXPIRING without ``fail_on_expiring``),
1 otherwise, so a session with a dead token does not start. A failing check raises a
critical alert (key ``auth:<agent>:<check>``, shared with the heartbeat's auth checks) through the alert path; a check that
passes again resolves it. The last result per agent is kept in
``<state_dir>/.auth/<agent>.json`` (root, 0600, never the token) for ``agentops status``.

On systemd 247, where an ``ExecStartPre=`` beside ``LoadCredential=`` cannot run in a sandboxed unit,
the agent unit instead has ``Requires=`` and ``After=`` on the root one-shot ``agentops-auth@<agent>.service``,
which runs ``agentops check-auth --unless-running <agent>``: the same checks, state and alerts, before
every start of the agent. ``--unless-running`` exits 0 without checking while the agent's unit already has
a running main process: a start request for a running session starts nothing (ExecStartPre= does not run
then either), so a failing check must not fail that request.

``--credential CRED --token-stdin`` validates a NEW token for one credential before it
is swapped in: only the checks of that credential run, nothing is recorded or alerted.

A credential whose value holds a line break (CR/LF) or NUL inside it is refused (AUTH_FAILED,
never sent, never shown); the final newline of a credential file is not part of the value.
A malformed agent file fails only that agent (exit 1, the message names the file and the
reason); one check that cannot run fails only that check.
"""
import datetime
import json
import os
import sys

from agentops_host import config
from agentops_host import state
from agentops_host import systemd
from agentops_lib import agentops_auth
from agentops_lib import agentops_contract

AUTH_OK = agentops_auth.AUTH_OK
AUTH_EXPIRING = agentops_auth.AUTH_EXPIRING
AUTH_FAILED = agentops_auth.AUTH_FAILED
AUTH_UNREACHABLE = agentops_auth.AUTH_UNREACHABLE
DEFAULT_TIMEOUT = 10


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "check-auth",
        help="run an agent's auth checks (exit 1 when one fails)",
        description="Run the auth checks of an agent with its current credentials. Exit 0 when every check "
                    "is OK (or EXPIRING without fail_on_expiring), 1 otherwise.",
    )
    parser.add_argument("agent", help="agent name (as in /etc/agentops/agents.d/<agent>.json)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--credential", metavar="CRED",
                        help="only run the checks of this credential (with --token-stdin: validate a new token)")
    parser.add_argument("--token-stdin", action="store_true",
                        help="read the token to check for --credential from standard input; nothing is recorded")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per check unless the check sets its own timeout (default: timeout_seconds "
                             "of <config-dir>/auth.json, agentops_auth_timeout; %s without it)" % DEFAULT_TIMEOUT)
    parser.add_argument("--no-alert", action="store_true", help="do not raise or resolve alerts")
    parser.add_argument("--unless-running", action="store_true",
                        help="exit 0 without checking when the agent's unit already has a running main process "
                             "(the session-start check of agentops-auth@<agent>.service)")
    parser.set_defaults(func=run)
    return parser


def _resolve(agent, check, overrides):
    """Return (check to run, token, error message) for one check of an agent."""
    check = dict(check)
    credential = check.get("credential")
    if not credential:
        return check, None, None
    if check.get("type") == "file":
        check.pop("credential")
        check["path"] = os.path.join(agent["credentials_dir"], credential)
        return check, None, None
    if credential in overrides:
        return check, overrides[credential], None
    try:
        return check, config.read_credential(agent, credential), None
    except FileNotFoundError:
        return check, None, ("credential %r is missing: %s does not exist"
                             % (credential, os.path.join(agent["credentials_dir"], credential)))
    except config.ConfigError as exc:
        return check, None, "credential %r cannot be used: %s" % (credential, exc)
    except (OSError, UnicodeError) as exc:
        return check, None, "credential %r cannot be read: %s" % (credential, agentops_auth.describe_error(exc))


def _configured_timeout(args):
    """agentops_auth_timeout as the auth role wrote it (auth.json); the default when it cannot be read."""
    try:
        return config.load_auth_config(args.config_dir)["timeout_seconds"]
    except config.ConfigError as exc:
        sys.stderr.write("agentops check-auth: %s; using %ss per check\n" % (exc, DEFAULT_TIMEOUT))
        return DEFAULT_TIMEOUT


def check_agent(args, agent, overrides=None, only_credential=None):
    """Run the auth checks of ``agent`` (a dict from ``config.load_agent``); return a list of result dicts.

    Each result is ``agentops_auth.run_check``'s dict plus ``name``, ``type``, ``credential`` and
    ``passed``. ``overrides`` maps credential name -> token to check instead of the stored one (a NEW
    token before it is swapped in); with ``only_credential`` only the checks of that credential run.
    File checks of an overridden credential are skipped: the new token is not in the file yet.
    """
    overrides = dict(overrides or {})
    timeout = getattr(args, "timeout", None) or _configured_timeout(args)
    results = []
    for index, raw in enumerate(agent.get("auth_checks") or []):
        if not isinstance(raw, dict):
            raw = {"name": "check-%d" % (index + 1), "type": None}
        name = raw.get("name") or "check-%d" % (index + 1)
        credential = raw.get("credential")
        if only_credential is not None and credential != only_credential:
            continue
        if credential in overrides and raw.get("type") == "file":
            continue
        secrets = list(overrides.values())
        try:
            # The inventory contract's verdict on this check (the one the controller gave at deploy).
            problems = agentops_contract.auth_check_problems(raw)
            check, token, error = (None, None, None) if problems else _resolve(agent, raw, overrides)
            secrets.append(token)
            if problems:
                result = _failed(raw, "the check is invalid: %s" % "; ".join(
                    "%s: %s" % (field, text) if field else text for field, text in problems))
            elif error:
                result = _failed(raw, error)
            elif token is not None and agentops_auth.has_line_break(token):
                result = _failed(raw, "credential %r contains a line break (CR/LF) or NUL character inside its value "
                                      "(not shown); a credential is one line (a final newline in the file is fine). "
                                      "Nothing was sent" % credential)
            else:
                result = agentops_auth.run_check(check, token=token, timeout=timeout)
        except Exception as exc:  # pylint: disable=broad-except  # one broken check never stops the others
            result = _failed(raw, "the check could not run: %s" % agentops_auth.describe_error(exc, secrets))
        # belt and braces: run_check never echoes a secret
        result["message"] = agentops_auth.mask_text(str(result.get("message") or ""), secrets)
        result["name"] = name
        result["type"] = raw.get("type")
        result["credential"] = credential
        result["passed"] = agentops_auth.passed(raw, result)
        results.append(result)
    return results


def _failed(raw, error):
    return {"status": AUTH_FAILED, "message": "%s FAILED: %s" % (agentops_auth.check_label(raw), error),
            "http_status": None, "expires_at": None, "expires_in_seconds": None, "elapsed": 0.0}


def state_path(args, agent_name):
    return os.path.join(args.state_dir, ".auth", agent_name + ".json")


def record(args, agent, results):
    """Keep the last results of an agent in <state_dir>/.auth/<agent>.json (0600; messages, never tokens)."""
    directory = state.ensure_dir(os.path.join(args.state_dir, ".auth"))
    os.chmod(directory, 0o700)
    data = {
        "agent": agent["name"],
        "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "passed": all(r["passed"] for r in results),
        "results": results,
    }
    path = state_path(args, agent["name"])
    state.write_json(path, data)
    return path


def last_result(args, agent_name):
    """The last recorded results of an agent (for `agentops status`), or None (also for a malformed file)."""
    try:
        return load_result(args, agent_name)
    except state.StateError:
        return None


def load_result(args, agent_name):
    """Like ``last_result`` but a malformed file raises ``state.StateError`` naming the file and the reason."""
    path = state_path(args, agent_name)
    data = state.load_object(path)
    if not data:
        return None
    if not isinstance(data.get("results", []), list):
        raise state.StateError("%s: 'results' must be a list" % path)
    return data


def alert_key(agent_name, check_name):
    """The alert key of one check; the heartbeat raises and resolves the same key."""
    return "auth:%s:%s" % (agent_name, check_name)


def raise_alerts(args, agent, results):
    """Raise a critical alert per failing check, resolve the alerts of checks that pass.

    Returns a list of problems met while alerting (the checks' outcome stands regardless).
    """
    from agentops_host import alert  # pylint: disable=import-outside-toplevel  (alert imports check_auth's peers)
    problems = []
    unit = agent.get("unit") or "agentops-%s.service" % agent["name"]
    for result in results:
        key = alert_key(agent["name"], result["name"])
        try:
            if result["passed"]:
                alert.resolve(args, key=key, title="%s: auth check %s passes again" % (agent["name"], result["name"]),
                              body=result["message"], agent=agent["name"], unit=unit)
            else:
                alert.emit(args, "critical", key=key,
                           title="%s: auth check %s %s" % (agent["name"], result["name"], result["status"]),
                           body="%s\n%s" % (result["message"], _advice(agent, result, unit)),
                           agent=agent["name"], unit=unit)
        except Exception as exc:  # pylint: disable=broad-except
            problems.append("alert for %s could not be sent: %s" % (key, exc))
    return problems


def _advice(agent, result, unit):
    if result["status"] == AUTH_UNREACHABLE:
        return ("The service could not be asked; the token itself may be fine. %s does not start until the check "
                "passes (systemd retries per Restart=). Check the network/service, then: systemctl start %s"
                % (unit, unit))
    if result.get("credential"):
        return ("%s does not start with this credential. Put a working token into %s, then: systemctl start %s"
                % (unit, os.path.join(agent["credentials_dir"], result["credential"]), unit))
    return "%s does not start until this check passes. Then: systemctl start %s" % (unit, unit)


def format_line(agent_name, result):
    """One line per check, readable at 3 a.m."""
    return "%s/%s: %s - %s (%.1fs)" % (agent_name, result["name"], result["status"], result["message"],
                                       result.get("elapsed") or 0.0)


def running_session(props):
    """The main PID of a unit whose session runs (``systemctl show`` properties), else None.

    A unit with a running main process (active, or a scheduled one-shot run in progress) gains nothing
    from a start request. Unknown (systemctl failed, no MainPID) counts as not running: the checks run.
    """
    try:
        pid = int(props.get("MainPID") or 0)
    except (TypeError, ValueError):
        return None
    return pid if pid > 0 else None


def run(args):
    try:
        agent = config.load_agent(args.config_dir, args.agent)
    except config.ConfigError as exc:
        sys.stderr.write("agentops check-auth: %s\n" % exc)
        return 1
    if getattr(args, "unless_running", False):
        unit = agent.get("unit") or "agentops-%s.service" % agent["name"]
        pid = running_session(systemd.show(unit, ("MainPID", "ActiveState", "SubState")))
        if pid is not None:
            sys.stdout.write("%s: %s runs (main PID %d): a start request starts nothing, nothing checked\n"
                             % (agent["name"], unit, pid))
            return 0
    if args.token_stdin and not args.credential:
        sys.stderr.write("agentops check-auth: --token-stdin needs --credential CRED\n")
        return 2
    overrides = None
    if args.token_stdin:
        token = sys.stdin.read(config.MAX_CREDENTIAL_BYTES + 1)
        if len(token) > config.MAX_CREDENTIAL_BYTES:
            sys.stderr.write("agentops check-auth: the token on standard input is larger than %d KiB\n"
                             % (config.MAX_CREDENTIAL_BYTES // 1024))
            return 2
        token = token.strip()
        if not token:
            sys.stderr.write("agentops check-auth: no token on standard input\n")
            return 2
        overrides = {args.credential: token}
    results = check_agent(args, agent, overrides=overrides, only_credential=args.credential)
    validating = overrides is not None
    if not validating and args.credential is None:
        try:
            record(args, agent, results)
        except OSError as exc:  # the checks' verdict stands; the record is only for `agentops status`
            sys.stderr.write("agentops check-auth: could not record the results in %s: %s\n"
                             % (state_path(args, agent["name"]), exc.strerror or type(exc).__name__))
        if not args.no_alert:
            for problem in raise_alerts(args, agent, results):
                sys.stderr.write("agentops check-auth: %s\n" % problem)
    ok = all(r["passed"] for r in results)
    if args.json:
        sys.stdout.write(json.dumps({"agent": agent["name"], "passed": ok, "results": results}, sort_keys=True) + "\n")
    elif not results:
        what = "for credential %s " % args.credential if args.credential else ""
        sys.stdout.write("%s: no auth checks %sconfigured\n" % (agent["name"], what))
    else:
        unit = agent.get("unit") or "agentops-%s.service" % agent["name"]
        for result in results:
            sys.stdout.write(format_line(agent["name"], result) + "\n")
            if not result["passed"] and not validating:
                sys.stdout.write("%s/%s: %s\n" % (agent["name"], result["name"], _advice(agent, result, unit)))
    sys.stdout.flush()
    return 0 if ok else 1
