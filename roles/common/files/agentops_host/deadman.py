"""Dead man's switch: the heartbeat pings outside services so that they alert when it stops.

Settings: ``<config_dir>/heartbeat.json`` (root 0600, written by the heartbeat role, checked on
load with the contract's ``heartbeat_settings_errors``): ``deadman`` (the host's targets, from
``agentops_deadman``) and ``agents`` ({agent: targets}, from ``heartbeat.deadman``). A target is
``{type, url}``:

* ``healthchecks``: ``<url>/start`` when a run begins, ``<url>`` on success, ``<url>/fail`` on failure;
* ``uptime_kuma``: ``<url>?status=up|down&msg=...``;
* ``cronitor``: ``<url>?state=run|complete|fail``;
* ``http``: a plain GET after a run that found nothing critical (nothing on failure).

The host's targets report the run (failure: the run found something critical, or a check or
the run itself crashed); an agent's targets report that agent's health (failure: the agent has
an open critical or warning alert). Success pings (and the ``start``/``run`` ping before one)
go at most once per ``SUCCESS_EVERY`` seconds per target; a change to failure goes at once,
a lasting failure again at most once per ``SUCCESS_EVERY``. All pings of one run share one
budget (``BUDGET`` seconds, pings run in parallel, each bounded by the watchdog deadline of
``agentops_auth.http_exchange``); a ping that fails is logged and recorded in
``<state_dir>/.heartbeat/deadman.json`` for ``agentops status``, never alerted and never fails
the run. 3xx answers are failures (redirects are not followed).

URLs hold tokens: logs, the state file and status show a target as ``<type> <host>`` only.
"""
import hashlib
import os
import socket
import ssl
import threading
import time

try:
    from urllib import parse as urlparse
    from urllib import request as urlrequest
except ImportError:  # pragma: no cover - always there on Python 3
    urlparse = urlrequest = None

from agentops_host import config as hostconfig
from agentops_host import state
from agentops_lib import agentops_auth
from agentops_lib import agentops_contract

SETTINGS_FILE = "heartbeat.json"
STATE_FILE = "deadman.json"
SUCCESS_EVERY = 60.0   # seconds between two success pings (or two lasting-failure pings) of one target
BUDGET = 10.0          # seconds all pings of one run may take together
PING_TIMEOUT = 8.0     # seconds one ping may take at most (within the budget)
MSG_LIMIT = 100        # characters of the message sent to uptime_kuma
USER_AGENT = "agentops-deadman/1"

SUCCESS, FAILURE, START = "success", "failure", "start"


class SettingsError(Exception):
    """heartbeat.json exists but cannot be used (the message names the file and what is wrong)."""


def load_settings(config_dir):
    """{metrics_textfile_dir, deadman, agents} from heartbeat.json; defaults when absent.

    SettingsError (naming the file and the variable) when it is malformed: the caller logs it,
    shows it in status and runs without a dead man's switch rather than with a wrong one.
    """
    path = os.path.join(config_dir, SETTINGS_FILE)
    try:
        data = hostconfig.parse_json(hostconfig.read_bounded(path, hostconfig.MAX_JSON_BYTES), path)
    except FileNotFoundError:
        return {"metrics_textfile_dir": None, "deadman": [], "agents": {}, "present": False}
    except hostconfig.ConfigError as exc:
        raise SettingsError(str(exc))
    problems = agentops_contract.heartbeat_settings_errors(data)
    if problems:
        raise SettingsError("%s: %s" % (path, "; ".join(problems)))
    return {"metrics_textfile_dir": data.get("metrics_textfile_dir"), "deadman": data.get("deadman") or [],
            "agents": data.get("agents") or {}, "present": True}


def label(target):
    """``<type> <host>``: how a target is shown anywhere (never its path or query, which hold tokens)."""
    try:
        host = urlparse.urlsplit(target["url"]).hostname or "?"
    except (ValueError, AttributeError, TypeError):
        host = "?"
    return "%s %s" % (target.get("type"), host)


def target_id(scope, target):
    """A stable id of a target that reveals nothing of its URL: sha256 of scope, type and URL."""
    text = "%s\0%s\0%s" % (scope, target.get("type"), target.get("url"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _with_query(url, **params):
    parts = urlparse.urlsplit(url)
    query = [(k, v) for k, v in urlparse.parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += sorted(params.items())
    return urlparse.urlunsplit((parts.scheme, parts.netloc, parts.path, urlparse.urlencode(query), parts.fragment))


def _with_suffix(url, suffix):
    parts = urlparse.urlsplit(url)
    return urlparse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/" + suffix, parts.query,
                                parts.fragment))


def ping_url(target, kind, message=""):
    """The URL of a ``kind`` (start, success, failure) ping to ``target``; None when the type sends none."""
    url, ttype = target["url"], target["type"]
    if ttype == "healthchecks":
        return {START: _with_suffix(url, "start"), SUCCESS: url, FAILURE: _with_suffix(url, "fail")}[kind]
    if ttype == "uptime_kuma":
        if kind == START:
            return None
        return _with_query(url, status="up" if kind == SUCCESS else "down", msg=(message or "OK")[:MSG_LIMIT])
    if ttype == "cronitor":
        return _with_query(url, state={START: "run", SUCCESS: "complete", FAILURE: "fail"}[kind])
    if ttype == "http":
        return url if kind == SUCCESS else None
    return None


def _describe(exc, secrets):
    reason = getattr(exc, "reason", None)
    if reason is not None and isinstance(reason, BaseException):
        exc = reason
    return agentops_auth.describe_error(exc, secrets) if isinstance(exc, BaseException) else \
        agentops_auth.bounded_detail(str(exc), secrets)


_TLS = []
_TLS_LOCK = threading.Lock()


def _tls_context():
    """One verifying TLS context per process (loading the system CA store costs CPU; pings run in parallel)."""
    with _TLS_LOCK:
        if not _TLS:
            _TLS.append(ssl.create_default_context())
        return _TLS[0]


def send(url, timeout, secrets=()):
    """GET ``url`` within ``timeout`` seconds: (ok, detail). 2xx is success; 3xx, 4xx, 5xx, errors and
    the deadline are failures. ``detail`` never holds the URL (nor any of ``secrets``)."""
    secrets = [url] + [s for s in secrets if s]
    try:
        request = urlrequest.Request(url, headers={"User-Agent": USER_AGENT}, method="GET")
    except ValueError as exc:
        return False, "the request cannot be built (%s)" % _describe(exc, secrets)
    answer, error, timed_out = agentops_auth.http_exchange(request, _tls_context() if url.startswith("https:") else None,
                                                           timeout)
    if timed_out:
        return False, "no answer within %.1fs" % timeout
    if error is not None:
        if not isinstance(error, Exception):
            raise error
        reason = getattr(error, "reason", error)
        if isinstance(reason, (socket.timeout, TimeoutError)) or isinstance(error, (socket.timeout, TimeoutError)):
            return False, "no answer within %.1fs" % timeout
        return False, "cannot connect (%s)" % _describe(error, secrets)
    code = answer["code"]
    if 200 <= code < 300:
        return True, "HTTP %d" % code
    if 300 <= code < 400:
        return False, "HTTP %d redirect (not followed: a redirected ping is not a delivered ping)" % code
    return False, "HTTP %d" % code


def _secret_parts(url):
    try:
        parts = urlparse.urlsplit(url)
    except ValueError:
        return []
    return [p for p in (parts.path, parts.query) + tuple(s for s in parts.path.split("/") if len(s) >= 6)
            if p and p != "/"]


class Run:
    """The pings of one heartbeat run: ``start()`` when it begins, ``finish(...)`` at its end.

    ``budget`` seconds cover every ping of the run; ``clock`` and ``sender`` are replaceable for tests.
    """

    def __init__(self, args, settings, log, budget=BUDGET, now=None, clock=time.monotonic, sender=send):
        self.args = args
        self.settings = settings
        self.log = log
        self.clock = clock
        self.sender = sender
        self.budget = budget
        self.deadline = clock() + budget
        self.now = time.time() if now is None else now
        self.path = os.path.join(args.state_dir, ".heartbeat", STATE_FILE)
        loaded = state.read_json(self.path, {}, expect=dict)
        self.state = loaded.get("targets") if isinstance(loaded.get("targets"), dict) else {}
        self.started = {}
        self.sent = []

    # -- targets ------------------------------------------------------------------------------
    @staticmethod
    def targets_of(settings):
        """[(scope, target)] of every configured target: "host" or the agent's name."""
        agents = settings.get("agents") or {}
        return [("host", t) for t in settings.get("deadman") or []] + [
            (name, t) for name in sorted(agents) for t in agents[name] or []]

    def host_targets(self):
        return [("host", t) for t in self.settings.get("deadman") or []]

    def agent_targets(self, names=None):
        agents = self.settings.get("agents") or {}
        return [(name, t) for name in sorted(agents) if names is None or name in names for t in agents[name] or []]

    def _record(self, scope, target):
        tid = target_id(scope, target)
        record = self.state.get(tid)
        if not isinstance(record, dict):
            record = {}
        record.update(scope=scope, target=label(target), type=target.get("type"))
        self.state[tid] = record
        return record

    def _due(self, record, outcome):
        """True when a ``outcome`` ping of this target is due now."""
        last_ping = record.get("last_ping_at")
        if not isinstance(last_ping, (int, float)):
            return True
        if outcome != record.get("last_outcome"):
            return True  # a change (to failure at once, back to success at once)
        return self.now - float(last_ping) >= SUCCESS_EVERY or self.now < float(last_ping)

    # -- sending ------------------------------------------------------------------------------
    def _send_all(self, jobs, deadline=None):
        """Send [(record, kind, url)] in parallel within the run's remaining budget (or until ``deadline``,
        when that is sooner); record the outcomes."""
        jobs = [j for j in jobs if j[2]]
        if not jobs:
            return
        deadline = self.deadline if deadline is None else min(deadline, self.deadline)
        results = {}

        def work(index, url):
            remaining = deadline - self.clock()
            if remaining < 0.2:
                results[index] = (False, "skipped: the run's %gs ping budget was used up" % self.budget)
                return
            try:
                results[index] = self.sender(url, min(PING_TIMEOUT, remaining), _secret_parts(url))
            except Exception as exc:  # pylint: disable=broad-except  # a ping never breaks the run
                results[index] = (False, "error (%s)" % type(exc).__name__)

        threads = []
        for index, (_record, _kind, url) in enumerate(jobs):
            thread = threading.Thread(target=work, args=(index, url), name="agentops-deadman")
            thread.daemon = True
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(max(0.0, deadline - self.clock()) + 0.2)
        for index, (record, kind, _url) in enumerate(jobs):
            ok, detail = results.get(index, (False, "no answer within the run's %gs ping budget" % self.budget))
            record["last_attempt_at"] = self.now
            record["last_kind"] = kind
            record["ok"] = bool(ok)
            record["detail"] = detail
            if ok:
                record["last_ok_at"] = self.now
                record.pop("error", None)
            else:
                record["error"] = detail
                record["failures"] = int(record.get("failures") or 0) + 1
                self.log("dead man's switch %s (%s, %s ping) failed: %s"
                         % (record["target"], "host" if record["scope"] == "host" else "agent " + record["scope"],
                            kind, detail))
            if ok:
                record["failures"] = 0
            self.sent.append((record["scope"], record["target"], kind, bool(ok)))

    def start(self):
        """At the beginning of a run: ``/start`` (healthchecks) and ``state=run`` (cronitor) to the host's
        targets not pinged for ``SUCCESS_EVERY`` seconds; the run's outcome follows in ``finish``."""
        jobs = []
        for scope, target in self.host_targets():
            record = self._record(scope, target)
            url = ping_url(target, START)
            last_ping = record.get("last_ping_at")
            if url and (not isinstance(last_ping, (int, float)) or not 0 <= self.now - last_ping < SUCCESS_EVERY):
                self.started[target_id(scope, target)] = True
                jobs.append((record, START, url))
        # at most half of the budget: a slow target's /start never starves the run's outcome pings
        self._send_all(jobs, deadline=self.clock() + self.budget / 2.0)

    def finish(self, host_ok, host_message, agent_health):
        """At the end of a run: the host's outcome and each agent's (``agent_health``: {name: (ok, message)};
        agents missing from it are not pinged this run). Writes the state file."""
        jobs = []
        for scope, target in self.host_targets():
            jobs.extend(self._outcome(scope, target, host_ok, host_message,
                                      started=self.started.get(target_id(scope, target))))
        for scope, target in self.agent_targets(set(agent_health)):
            healthy, message = agent_health[scope]
            jobs.extend(self._outcome(scope, target, healthy, message, started=False))
        self._send_all(jobs)
        self.save()

    def _outcome(self, scope, target, ok, message, started):
        record = self._record(scope, target)
        outcome = SUCCESS if ok else FAILURE
        if not (started or self._due(record, outcome)):
            return []
        record["last_outcome"] = outcome
        record["last_ping_at"] = self.now
        url = ping_url(target, outcome, message)
        if url is None:
            return []
        return [(record, outcome, url)]

    def save(self):
        wanted = set(target_id(s, t) for s, t in self.host_targets() + self.agent_targets())
        targets = dict((k, v) for k, v in self.state.items() if k in wanted)
        if not targets and not os.path.exists(self.path):
            return  # no dead man's switch configured: nothing to record, no write per run
        try:
            state.write_json(self.path, {"targets": targets})
        except OSError as exc:
            self.log("dead man's switch: cannot write %s: %s" % (self.path, exc.strerror or exc))


def status(args, scope=None):
    """The recorded targets ([{scope, target, type, ok, detail, last_attempt_at, last_ok_at, ...}]),
    only those of ``scope`` ("host" or an agent name) when given; sorted by scope and target."""
    data = state.read_json(os.path.join(args.state_dir, ".heartbeat", STATE_FILE), {}, expect=dict)
    targets = data.get("targets") if isinstance(data.get("targets"), dict) else {}
    out = []
    for record in targets.values():
        if not isinstance(record, dict) or (scope is not None and record.get("scope") != scope):
            continue
        out.append(dict((k, record.get(k)) for k in ("scope", "target", "type", "ok", "detail", "error",
                                                      "last_kind", "last_attempt_at", "last_ok_at", "failures")))
    return sorted(out, key=lambda r: (str(r.get("scope")), str(r.get("target"))))
