"""The one alert path of the host: ``agentops alert``, ``agentops flush``, ``agentops failure``.

Every part of the collection (heartbeat, auth checks, rotation, ``OnFailure=``) raises
alerts through :func:`emit` and clears them through :func:`resolve`.

* De-duplication: an alert is identified by its key. While a key is open (firing) it is
  sent once, then reminded at most every ``alert_repeat_seconds``; a higher severity is
  sent at once. ``resolve`` sends exactly one ``resolved`` message for an open key.
  Severity ``info`` is a one-off notice and never opens a key. ``agentops failure`` (the
  ``OnFailure=`` handler of the agents and of the collection's own units) is de-duplicated
  the same way: a unit that fails at every tick alerts once per incident, then as a reminder.
  When no channel took a message (not even into the spool), the key is marked unsent and
  the next ``emit`` sends it again instead of waiting for a reminder.
* Channels (``alert_channels`` in ``agentops.json``): ``telegram`` (Bot API sendMessage,
  HTML, honours 429 ``retry_after``), ``webhook`` (JSON POST, optional ``headers``),
  ``command`` (text on stdin, minimal environment, run in its own process group),
  ``slack`` (incoming webhook, ``{"text"}``), ``discord`` (webhook, ``{"content"}`` <= 2000
  characters, no mentions), ``ntfy`` (text body, Title/Priority/Tags headers, optional bearer
  token), ``pagerduty`` (Events API v2: ``trigger``/``resolve`` with ``dedup_key`` = a hash of
  host and key; ``info`` never pages) and ``email`` (smtplib; STARTTLS by default, implicit TLS
  or none; certificates verified). The HTTP channels but ``webhook`` wait out a 429
  ``retry_after`` in-process up to ``alert_retry_after_max_seconds`` like ``telegram``.
* Isolation: every channel and every message on its own. Any exception while sending one
  message to one channel (a RecursionError, MemoryError, UnicodeError, anything) is that
  message's failure only; the other channels and the other spooled messages are still tried.
* Requests: one overall deadline per request (``alert_timeout_seconds``: name resolution,
  connect, TLS, request, answer), enforced by a watchdog that shuts the socket down, so a
  server trickling a byte a second cannot hold a delivery. No redirect is followed: any 3xx
  is a failure. At most 64 KiB of an answer is read, JSON is parsed only up to a small
  nesting depth, and only a short, scrubbed excerpt of it is ever logged or spooled. A
  header value or URL with CR, LF or another control character is refused before sending.
* Spool: a message a channel did not take is written atomically, one file per message and
  channel, under ``<spool_dir>/alerts/<channel>/`` and delivered by ``agentops flush`` (run by
  ``agentops-alert-flush.timer``) exactly once, oldest first per channel, every channel in
  its own thread. Failures are classified:

  - permanent (a 4xx other than 408/425/429): that message only; the pass goes on with
    the messages behind it;
  - transient (connection error, deadline, 3xx, 5xx, 408/425/429, a failing command):
    ends this channel's pass for this run, keeping the order; other channels go on;
  - an unexpected exception: that message only.

  Retries back off exponentially with jitter (30 s doubling up to 1 h, after the first
  retry at the next flush); a ``retry_after`` (Telegram's ``parameters.retry_after``, a
  ``Retry-After`` header in seconds or as an HTTP date) is clamped to [0, 1 h] and honoured
  when it is longer.
* Dead letters: a message is given up only when it is older than ``alert_max_age_seconds``
  (24 h) or after ``alert_permanent_failures`` (3) permanent answers in a row -- never
  because an outage outlasted a number of attempts. Over ``alert_spool_max`` (1000) messages
  per channel, the oldest ``info``/``resolved`` messages go first, then warnings; criticals
  never. A given-up message is moved (rename) to ``<spool_dir>/alerts/.dead/<channel>/``
  with the reason added to it; nothing is deleted. Moving a file back into its channel's
  folder requeues it. One warning ``host/alert-dead-letter:<channel>`` (de-duplicated) goes
  through the other channels and is resolved once that dead-letter folder is empty.
  :func:`dead_letter_count` and :func:`dead_letter_summary` feed ``agentops status``.
* A full or broken ``/var`` never stops an alert. The alert-key state (``<state_dir>/.alerts``) is
  only bookkeeping: when it cannot be written (ENOSPC, EROFS, EIO, ...) the failure is logged and the
  key's record goes to ``<runtime_dir>/alerts`` (``/run/agentops``, a tmpfs in memory) instead, so
  de-duplication keeps working until the next reboot; the next write that ``/var`` takes again moves
  the record back. When neither can be written the alert is delivered anyway, every time it is
  raised, and each send logs that duplicates are possible: a repeated message beats a lost one. A
  message a channel did not take goes to ``<runtime_dir>/spool/alerts/<channel>/`` when the spool
  cannot be written; ``agentops flush`` moves it back into the spool once there is room and delivers
  it from either place. When no place takes it, its text is written to the journal (stderr).
* Every attempt and outcome is written to stderr (the journal under systemd). Secrets (bot
  tokens, webhook URLs, header values, tokens, passwords) are scrubbed from every line and
  never part of an error; a library's error text (which can hold a URL) is never echoed,
  only its class; text is masked before it is cut.
"""
import base64
import contextlib
import datetime
import email.message
import email.utils
import errno
import fcntl
import hashlib
import html
import http.client
import json
import math
import os
import random
import re
import selectors
import shlex
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

from agentops_host import config as hostconfig
from agentops_host import state
from agentops_host import systemd
from agentops_lib import agentops_auth
from agentops_lib import agentops_contract

SEVERITIES = ("critical", "warning", "info", "resolved")
RANK = {"info": 0, "warning": 1, "critical": 2}
CHANNEL_TYPES = ("telegram", "webhook", "command", "slack", "discord", "ntfy", "pagerduty", "email")
TELEGRAM_LIMIT = 4096
DEFAULT_TELEGRAM_API = "https://api.telegram.org"
MAX_INLINE_RETRY_AFTER = 30     # longest 429 retry_after honoured by waiting in-process (seconds)
MAX_429_ATTEMPTS = 3            # sends per delivery attempt when the API keeps answering 429
JOURNAL_LINES = 20

DEFAULT_TIMEOUT = 10.0          # alert_timeout_seconds: overall deadline of one request / command
DEFAULT_MAX_AGE = 24 * 3600     # alert_max_age_seconds: a spooled message older than this is given up
DEFAULT_PERMANENT_FAILURES = 3  # alert_permanent_failures: permanent answers in a row before giving up
DEFAULT_SPOOL_MAX = 1000        # alert_spool_max: spooled messages per channel
RETRY_AFTER_MAX = 3600.0        # any retry_after is clamped to [0, this]
BACKOFF_BASE = 30.0             # first backoff step of a spooled retry (seconds) ...
BACKOFF_MAX = 3600.0            # ... doubling up to this
FLUSH_BUDGET = 240.0            # one flush run starts no new send after this many seconds
RESPONSE_LIMIT = 65536          # bytes of an answer read at most
OUTPUT_LIMIT = 65536            # bytes of a command channel's output kept at most
JSON_MAX_DEPTH = 32             # an answer nested deeper is not parsed as JSON
EXCERPT_CHARS = 200             # characters of an answer or output kept in a log line / the spool
PIPE_GRACE = 1.0                # seconds a command's output is still read after it exited
TRANSIENT_4XX = (408, 425, 429)
DEAD_LETTER_KEY = "host/alert-dead-letter:%s"

TRANSIENT = "transient"
PERMANENT = "permanent"
ERROR = "error"

# The secret fields of a channel: one list with the controller (agentops_contract.SECRET_FIELDS).
SECRET_FIELDS = agentops_contract.SECRET_FIELDS
SECRET_MAPPINGS = agentops_contract.SECRET_MAPPINGS

_SECRETS = set()
_SECRETS_SORTED = []
_RNG = random.Random()
_LOCAL = threading.local()
_HEADER_NAME = agentops_auth.HEADER_NAME_RE
_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_UNSAFE_URL = re.compile(r"[^\x21-\x7e]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_RESERVED_HEADERS = ("host", "content-length", "connection", "transfer-encoding")


# --------------------------------------------------------------------------- logging / secrets
def _add_secret(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return
    candidates = {value, value.strip()}
    candidates.update(line.strip() for line in value.splitlines())
    words = value.split()
    if len(words) > 1:
        candidates.add(words[-1])              # "Bearer <token>": the token alone too
    for candidate in candidates:
        if len(candidate) < 4:
            continue
        _SECRETS.add(candidate)
        _SECRETS.add(urllib.parse.quote(candidate, safe=""))
        _SECRETS.add(urllib.parse.quote(candidate, safe=":/"))
        _SECRETS.add(candidate.encode("unicode_escape").decode("ascii"))
    _SECRETS_SORTED[:] = sorted(_SECRETS, key=len, reverse=True)


def add_url_secret(url):
    """A secret URL, and the parts an endpoint may echo alone: its path and query, and their long pieces."""
    _add_secret(url)
    if not isinstance(url, str):
        return
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return
    tail = parts.path + ("?" + parts.query if parts.query else "")
    if len(tail) >= 8:
        _add_secret(tail)
    for piece in re.split(r"[/?&=#;]", tail):
        if len(piece) >= 12:
            _add_secret(piece)
    if "@" in parts.netloc:
        _add_secret(parts.netloc.rsplit("@", 1)[0])


def _register_secrets(channels):
    for channel in channels or []:
        if not isinstance(channel, dict):
            continue
        for field in SECRET_FIELDS:
            if field == "url":
                add_url_secret(channel.get(field))
            else:
                _add_secret(channel.get(field))
        for field in SECRET_MAPPINGS:
            values = channel.get(field)
            for value in values.values() if isinstance(values, dict) else [values]:
                _add_secret(value)


def scrub(text):
    """Replace every known secret in ``text`` by ``<redacted>``."""
    text = str(text)
    for secret in _SECRETS_SORTED:
        if secret and secret in text:
            text = text.replace(secret, "<redacted>")
    return text


def excerpt(text, limit=EXCERPT_CHARS):
    """A short, single-line, scrubbed excerpt of untrusted text (masked first, then cut)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = scrub(text)
    text = " ".join(_CONTROL.sub(" ", text).split())
    if len(text) > limit:
        text = text[:limit] + "..."
    return text


def describe_exception(exc):
    """The class of an error and a detail that cannot hold a URL or secret (an errno or TLS reason)."""
    name = type(exc).__name__
    detail = None
    if isinstance(exc, ssl.SSLError):
        detail = getattr(exc, "reason", None)
    elif isinstance(exc, socket.gaierror):
        detail = {getattr(socket, n): n for n in dir(socket) if n.startswith("EAI_")}.get(exc.errno)
    elif isinstance(exc, OSError) and exc.errno:
        detail = errno.errorcode.get(exc.errno)
    if isinstance(detail, str) and re.match(r"^[A-Z][A-Z0-9_]{0,60}$", detail):
        return "%s (%s)" % (name, detail)
    return name


def log(message):
    """One line to stderr: the journal when running under systemd."""
    try:
        line = scrub(message).replace("\n", " | ")
        sys.stderr.write("agentops: %s\n" % line)
        sys.stderr.flush()
    except Exception:  # pylint: disable=broad-except
        pass


# --------------------------------------------------------------------------- paths and config
def _alerts_state_dir(args):
    return os.path.join(args.state_dir, ".alerts")


def _spool_root(args):
    return os.path.join(args.spool_dir, "alerts")


def _dead_root(args):
    return os.path.join(_spool_root(args), ".dead")


def _key_name(key):
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32] + ".json"


def _key_file(args, key):
    return os.path.join(_alerts_state_dir(args), _key_name(key))


def _runtime_root(args):
    """The fallback root in memory (``--runtime-dir``, /run/agentops), or None (no fallback)."""
    root = getattr(args, "runtime_dir", None)
    return root or None


def _fallback_state_dir(args):
    root = _runtime_root(args)
    return os.path.join(root, "alerts") if root else None


def _fallback_spool_root(args):
    root = _runtime_root(args)
    return os.path.join(root, "spool", "alerts") if root else None


def _oserror(exc):
    """A short, secret-free description of an OSError (errno name and text)."""
    name = errno.errorcode.get(getattr(exc, "errno", None) or 0)
    text = getattr(exc, "strerror", None) or type(exc).__name__
    return "%s: %s" % (name, text) if name else text


def load_config(args):
    cfg = hostconfig.load_host_config(args.config_dir)
    channels = cfg.get("alert_channels") or []
    _register_secrets(channels if isinstance(channels, list) else [])
    return cfg


def _number(cfg, name, default, low, high):
    value = cfg.get(name)
    if value is None or isinstance(value, bool):
        return default
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        log("%s=%r in agentops.json is not a number: using %s" % (name, value, default))
        return default
    if math.isnan(value):
        return default
    return min(high, max(low, value))


def settings(cfg):
    """The delivery settings of ``agentops.json``, each bounded (a bad value falls back to its default)."""
    return {
        "timeout": _number(cfg, "alert_timeout_seconds", DEFAULT_TIMEOUT, 0.5, 600.0),
        "max_wait": _number(cfg, "alert_retry_after_max_seconds", MAX_INLINE_RETRY_AFTER, 0.0, RETRY_AFTER_MAX),
        "max_age": _number(cfg, "alert_max_age_seconds", DEFAULT_MAX_AGE, 1.0, 10 * 365 * 86400.0),
        "permanent_failures": int(_number(cfg, "alert_permanent_failures", DEFAULT_PERMANENT_FAILURES, 1, 1000)),
        "spool_max": int(_number(cfg, "alert_spool_max", DEFAULT_SPOOL_MAX, 1, 10 ** 7)),
    }


def _channels(cfg):
    channels = cfg.get("alert_channels") or []
    return channels if isinstance(channels, list) else []


def channel_id(channel):
    """Stable, secret-free identity of a channel: its spool folder name.

    The fields are only ever part of it as a hash (a webhook URL, a PagerDuty routing key);
    a telegram bot token is not part of it at all, so a rotated bot token keeps the spool.
    """
    ctype = str(channel.get("type", "unknown"))
    if ctype == "telegram":
        ident = "%s|%s" % (channel.get("api_url") or DEFAULT_TELEGRAM_API, channel.get("chat_id"))
    elif ctype in ("webhook", "slack", "discord", "ntfy"):
        ident = str(channel.get("url"))
    elif ctype == "pagerduty":
        ident = "%s|%s" % (channel.get("api_url") or DEFAULT_PAGERDUTY_API, channel.get("routing_key"))
    elif ctype == "email":
        ident = "%s|%s|%s|%s" % (channel.get("smtp_host"), channel.get("smtp_port") or "",
                                 channel.get("from"), ",".join(str(a) for a in channel.get("to") or []))
    else:
        ident = str(channel.get("command"))
    safe = re.sub(r"[^a-z0-9_]", "_", ctype.lower())[:20] or "unknown"
    return "%s-%s" % (safe, hashlib.sha256(ident.encode("utf-8", "replace")).hexdigest()[:16])


def channel_label(index, channel):
    return "%s#%d" % (re.sub(r"[^a-z0-9_]", "_", str(channel.get("type", "unknown")).lower())[:20], index)


def _iso(epoch):
    if epoch is None:
        return None
    try:
        return datetime.datetime.fromtimestamp(float(epoch), datetime.timezone.utc).replace(microsecond=0).isoformat()
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _float(value, default=0.0):
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return default if math.isnan(value) else value


# --------------------------------------------------------------------------- open alerts
def _record_dirs(args):
    return [d for d in (_alerts_state_dir(args), _fallback_state_dir(args)) if d]


def _read_record(path):
    """A key record (dict) or None; an unreadable file (EIO, ...) is logged and counts as absent."""
    try:
        data = state.read_json(path)
    except OSError as exc:
        log("alert state %s cannot be read (%s)" % (path, _oserror(exc)))
        return None
    return data if isinstance(data, dict) else None


def _newer(first, second):
    """The newer of two key records (by ``saved_at``; a record without it is the oldest)."""
    if first is None or second is None:
        return first if second is None else second
    return second if _float(second.get("saved_at")) > _float(first.get("saved_at")) else first


def _load_key(args, key):
    """The key's current record, from the state directory or its fallback in memory (the newer one);
    None when the key is not open (no record, or a ``closed`` marker left by a resolve)."""
    record = None
    for directory in _record_dirs(args):
        record = _newer(record, _read_record(os.path.join(directory, _key_name(key))))
    if record is None or record.get("closed"):
        return None
    return record


def _save_key(args, key, record):
    """Write the key's record; returns where it went (``state``, ``memory``) or None.

    A state directory that cannot be written is logged, and the record goes to the fallback in memory;
    a record written to the state directory again removes the copy in memory.
    """
    record = dict(record, saved_at=time.time())
    fallback = _fallback_state_dir(args)
    try:
        state.write_json(_key_file(args, key), record)
    except OSError as exc:
        problem = _oserror(exc)
    else:
        if fallback:
            with contextlib.suppress(OSError):
                state.remove(os.path.join(fallback, _key_name(key)))
        return "state"
    if fallback:
        try:
            state.write_json(os.path.join(fallback, _key_name(key)), record)
        except OSError as exc:
            log("alert state of key=%s cannot be written to %s (%s) nor to %s (%s): it is sent anyway, and sent "
                "again each time it is raised (duplicates are possible)" % (
                    key, _alerts_state_dir(args), problem, fallback, _oserror(exc)))
            return None
        log("alert state of key=%s cannot be written to %s (%s): kept in %s (memory) until it can"
            % (key, _alerts_state_dir(args), problem, fallback))
        return "memory"
    log("alert state of key=%s cannot be written to %s (%s): it is sent anyway, and sent again each time it is "
        "raised (duplicates are possible)" % (key, _alerts_state_dir(args), problem))
    return None


def _drop_key(args, key):
    """Close the key: remove its records; where the state directory cannot be changed, a ``closed`` marker
    in memory says so (else the next resolve would send ``resolved`` again)."""
    fallback = _fallback_state_dir(args)
    try:
        state.remove(_key_file(args, key))
    except OSError as exc:
        problem = _oserror(exc)
        if fallback:
            try:
                state.write_json(os.path.join(fallback, _key_name(key)),
                                 {"key": key, "closed": True, "saved_at": time.time()})
                log("alert state of key=%s cannot be removed from %s (%s): closed in %s (memory)"
                    % (key, _alerts_state_dir(args), problem, fallback))
                return
            except OSError as exc2:
                problem = "%s; %s: %s" % (problem, fallback, _oserror(exc2))
        log("alert state of key=%s cannot be removed (%s): the key stays open, a later resolve may send "
            "'resolved' again" % (key, problem))
        return
    if fallback:
        with contextlib.suppress(OSError):
            state.remove(os.path.join(fallback, _key_name(key)))


@contextlib.contextmanager
def _lock_first(paths):
    """Hold an exclusive flock on the first of ``paths`` that can be opened (created 0600); yields that
    path, or None when none can (a full or read-only disk): the caller goes on unlocked, logged."""
    fd, held, problems = None, None, []
    for path in paths:
        try:
            state.ensure_dir(os.path.dirname(path))
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            problems.append("%s: %s" % (path, _oserror(exc)))
            continue
        held = path
        break
    if fd is None:
        log("no lock file can be opened (%s): going on without the lock" % "; ".join(problems))
        yield None
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield held
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _state_lock(args):
    return _lock_first([os.path.join(d, ".lock") for d in _record_dirs(args)])


def open_alerts(args, agent=None):
    """Open (firing) alerts, optionally only those of one agent (the state directory and its fallback
    in memory, the newer record of a key winning)."""
    records = {}
    for directory in _record_dirs(args):
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            records[name] = _newer(records.get(name), _read_record(os.path.join(directory, name)))
    found = []
    for data in records.values():
        if data is None or data.get("closed"):
            continue
        if agent is not None and not belongs_to(data, agent):
            continue
        found.append(data)
    return sorted(found, key=lambda a: _float(a.get("first_seen")))


def belongs_to(item, agent):
    """True when an open alert concerns ``agent`` (by its agent field or by its key)."""
    if item.get("agent"):
        return item["agent"] == agent
    key = str(item.get("key", ""))
    return key.startswith(agent + "/") or (":%s:" % agent) in key


def is_open(args, key):
    return _load_key(args, key) is not None


# --------------------------------------------------------------------------- messages
def build_message(cfg, severity, key, title, body="", agent=None, unit=None, since=None, reminder=False):
    now = time.time()
    host = cfg.get("host") or socket.gethostname()
    return {
        "id": uuid.uuid4().hex,
        "host": host,
        "agent": agent,
        "unit": unit,
        "severity": severity,
        "key": key,
        "title": title,
        "body": body or "",
        "since": _iso(since if since is not None else now),
        "time": _iso(now),
        "reminder": bool(reminder),
        "fingerprint": hashlib.sha256(("%s|%s" % (host, key)).encode("utf-8")).hexdigest()[:16],
    }


def _headline(msg):
    tag = str(msg["severity"]).upper()
    if msg.get("reminder"):
        tag += " (still firing)"
    return "[%s] %s: %s" % (tag, msg["host"], msg["title"])


def _details(msg):
    parts = []
    if msg.get("agent"):
        parts.append("agent: %s" % msg["agent"])
    if msg.get("unit"):
        parts.append("unit: %s" % msg["unit"])
    parts.append("key: %s" % msg["key"])
    parts.append("since: %s" % msg["since"])
    return parts


def plain_text(msg):
    """The message as plain text (command channel, journal)."""
    text = _headline(msg) + "\n" + "\n".join(_details(msg))
    if msg.get("body"):
        text += "\n\n" + str(msg["body"])
    return text + "\n"


def telegram_text(msg, limit=TELEGRAM_LIMIT):
    """The message in Telegram's HTML parse mode, escaped and at most ``limit`` characters."""
    head = "<b>%s</b>\n%s" % (html.escape(_headline(msg), quote=False),
                              html.escape("\n".join(_details(msg)), quote=False))
    body = str(msg.get("body") or "")
    if not body:
        return head[:limit]
    marker = "\n[cut]"
    wrap = "\n<pre>%s</pre>"
    budget = limit - len(head) - len(wrap % "")
    if budget <= len(marker):
        return head[:limit]
    escaped = html.escape(body, quote=False)
    if len(escaped) <= budget:
        return head + wrap % escaped
    raw = body[: budget - len(marker)]
    escaped = html.escape(raw, quote=False)
    while len(escaped) + len(marker) > budget:
        raw = raw[: max(0, len(raw) - (len(escaped) + len(marker) - budget))]
        escaped = html.escape(raw, quote=False)
    return head + wrap % (escaped + marker)


def webhook_payload(msg):
    return {k: msg.get(k) for k in ("host", "agent", "unit", "severity", "key", "title", "body", "since",
                                    "fingerprint", "time", "reminder")}


# --------------------------------------------------------------------------- delivery errors
class DeliveryError(Exception):
    """A channel did not take a message.

    ``kind``: ``permanent`` (this message will not be taken as it is), ``transient`` (the
    channel cannot take anything now) or ``error`` (an unexpected exception for this message).
    ``retry_after``: seconds the channel asked to wait (already clamped). ``status``: HTTP status.
    """

    def __init__(self, message, retry_after=None, kind=TRANSIENT, status=None):
        Exception.__init__(self, scrub(message))
        self.retry_after = retry_after
        self.kind = kind
        self.status = status


def classify_status(status):
    """``permanent`` for a 4xx other than 408/425/429, else ``transient`` (3xx, 5xx, anything odd)."""
    if 400 <= status < 500 and status not in TRANSIENT_4XX:
        return PERMANENT
    return TRANSIENT


def http_error(status, answer_text, retry_after=None, code=None):
    """The DeliveryError for a non-2xx answer (3xx: never followed; the answer only as an excerpt)."""
    code = status if code is None else code
    if 300 <= status < 400:
        text = "HTTP %d: a redirect, not followed (the message was not delivered)" % status
    else:
        text = "HTTP %d" % status
        if code != status:
            text += " (error_code %d)" % code
        detail = excerpt(answer_text)
        if detail:
            text += ": " + detail
    if retry_after is not None:
        text += " retry_after=%gs" % retry_after
    return DeliveryError(text, retry_after=retry_after, kind=classify_status(code), status=status)


def clamp_retry_after(value, now=None):
    """Seconds to wait from a retry_after value, clamped to [0, 1 h]; None when absent or unreadable.

    Accepts numbers and numeric strings (``1e12``, ``inf`` and overflowing values clamp to
    1 h, negatives to 0, ``nan`` is ignored) and HTTP dates (``Retry-After``).
    """
    if value is None or isinstance(value, bool):
        return None
    seconds = None
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf if value > 0 else -math.inf
    else:
        text = str(value).strip()[:100]
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError, OverflowError):
                return None
            if when is None:
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.timezone.utc)
            try:
                seconds = when.timestamp() - (time.time() if now is None else now)
            except (OverflowError, OSError, ValueError):
                return None
    if math.isnan(seconds):
        return None
    return min(RETRY_AFTER_MAX, max(0.0, seconds))


def retry_after(body, headers):
    """retry_after asked for by an answer: Telegram's ``parameters.retry_after``, else ``Retry-After``."""
    value = None
    if isinstance(body, dict):
        params = body.get("parameters")
        if isinstance(params, dict):
            value = params.get("retry_after")
        if value is None:
            value = body.get("retry_after")
    if value is None and headers is not None:
        try:
            value = headers.get("Retry-After")
        except Exception:  # pylint: disable=broad-except
            value = None
    return clamp_retry_after(value)


def backoff(failures, rng=None):
    """Seconds before retry number ``failures`` (>= 1) of a spooled message: 30 s doubling up to 1 h,
    with jitter (between half and all of the step)."""
    step = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** min(max(int(failures), 1) - 1, 30))
    return step * (rng or _RNG).uniform(0.5, 1.0)


# --------------------------------------------------------------------------- HTTP with one deadline
def _remaining(deadline, timeout):
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeliveryError("no complete answer within the deadline of %gs" % timeout)
    return left


def _check_url(url):
    """(scheme, host, port, request target) of an http(s) URL; refuses spaces and control characters."""
    if not isinstance(url, str) or not url or _UNSAFE_URL.search(url):
        raise DeliveryError("the channel's URL is empty or holds spaces, control or non-ASCII characters "
                            "(value not shown)")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise DeliveryError("the channel's URL does not parse (value not shown)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryError("the channel's URL is not an http:// or https:// URL (value not shown)")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), target


def check_headers(headers):
    """A list of (name, value) from a header dict; refuses CR/LF and other control characters."""
    out = []
    if headers is None:
        return out
    if not isinstance(headers, dict):
        raise DeliveryError("headers of the channel must be a mapping")
    for name, value in headers.items():
        name = str(name)
        if not _HEADER_NAME.match(name):
            raise DeliveryError("header name %r is not a valid HTTP token" % excerpt(name, 40))
        if name.lower() in _RESERVED_HEADERS:
            raise DeliveryError("header %s is set by the alert path and cannot be configured" % name)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise DeliveryError("header %s: the value must be a string (value not shown)" % name)
        value = str(value)
        if _UNSAFE_VALUE.search(value):
            raise DeliveryError("header %s: the value holds CR, LF or another control character "
                                "(refused before sending; value not shown)" % name)
        try:
            value.encode("latin-1")
        except UnicodeError:
            raise DeliveryError("header %s: the value is not Latin-1 (value not shown)" % name) from None
        out.append((name, value))
    return out


def _resolve_host(host, port, deadline, timeout):
    """getaddrinfo bounded by the deadline (it runs in a thread that is left behind when it hangs)."""
    box = {}

    def lookup():
        try:
            box["infos"] = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except Exception as exc:  # pylint: disable=broad-except
            box["error"] = exc

    worker = threading.Thread(target=lookup, name="agentops-resolve", daemon=True)
    worker.start()
    worker.join(_remaining(deadline, timeout))
    if worker.is_alive():
        raise DeliveryError("name resolution did not finish within the deadline of %gs" % timeout)
    if "error" in box:
        raise DeliveryError("name resolution failed: %s" % describe_exception(box["error"]))
    return box.get("infos") or []


def _expirer(guard, expired, killers):
    """A deadline watchdog's callback: mark the deadline passed, then shut down every registered socket
    (``killers``: duplicates of the sockets in use), which ends any blocking I/O on them at once."""
    def expire():
        with guard:
            expired.set()
            for killer in killers:
                with contextlib.suppress(OSError):
                    killer.shutdown(socket.SHUT_RDWR)
    return expire


def http_post(url, data, headers=None, timeout=DEFAULT_TIMEOUT, limit=RESPONSE_LIMIT):
    """POST ``data``; return (status, answer bytes (at most ``limit``), answer headers).

    One deadline covers the whole request: a watchdog shuts the socket down when it passes,
    which ends any blocked read or write. Redirects are not followed (http.client never does).
    Errors carry the class of the error, never the library's text or the URL. Once the status
    and headers are in, a body cut short by the deadline is returned as far as it came.
    """
    scheme, host, port, target = _check_url(url)
    header_list = check_headers(headers)
    deadline = time.monotonic() + timeout
    expired = threading.Event()
    guard = threading.Lock()
    killers = []
    opened = []

    expire = _expirer(guard, expired, killers)

    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        try:
            sock = None
            last_error = None
            for family, socktype, proto, _name, address in _resolve_host(host, port, deadline, timeout):
                candidate = socket.socket(family, socktype, proto)
                opened.append(candidate)
                try:
                    candidate.settimeout(_remaining(deadline, timeout))
                    candidate.connect(address)
                except OSError as exc:
                    last_error = exc
                    continue
                sock = candidate
                break
            if sock is None:
                if last_error is None:
                    raise DeliveryError("connection failed: no address for the host")
                raise DeliveryError("connection failed: %s" % describe_exception(last_error))
            with guard:
                killers.append(sock.dup())      # shutdown() on a duplicate ends I/O on the same socket
                if expired.is_set():
                    raise DeliveryError("no complete answer within the deadline of %gs" % timeout)
            if scheme == "https":
                context = ssl.create_default_context()
                sock.settimeout(_remaining(deadline, timeout))
                sock = context.wrap_socket(sock, server_hostname=host)
                opened.append(sock)
                conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            conn.sock = sock
            opened.append(conn)
            sock.settimeout(_remaining(deadline, timeout))
            conn.putrequest("POST", target, skip_accept_encoding=True)
            if not any(name.lower() == "user-agent" for name, _value in header_list):
                conn.putheader("User-Agent", "agentops-alert")
            conn.putheader("Connection", "close")
            conn.putheader("Content-Length", str(len(data)))
            for name, value in header_list:
                conn.putheader(name, value)
            conn.endheaders(data)
            sock.settimeout(_remaining(deadline, timeout))
            response = conn.getresponse()
            opened.append(response)
            status, answer_headers = response.status, response.msg
        except DeliveryError:
            raise
        except Exception as exc:  # pylint: disable=broad-except
            if expired.is_set() or time.monotonic() >= deadline:
                raise DeliveryError("no complete answer within the deadline of %gs" % timeout) from None
            raise DeliveryError("request failed: %s" % describe_exception(exc)) from None
        chunks = []
        total = 0
        try:
            while total < limit and not expired.is_set():
                sock.settimeout(_remaining(deadline, timeout))
                chunk = response.read(min(16384, limit - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except Exception:  # pylint: disable=broad-except
            pass                                # the status is in: keep what came
        return status, b"".join(chunks), answer_headers
    finally:
        watchdog.cancel()
        with guard:
            for item in reversed(killers + opened):
                with contextlib.suppress(Exception):
                    item.close()


def _json_depth_ok(text, limit=JSON_MAX_DEPTH):
    if text.count("[") + text.count("{") <= limit:
        return True
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return False
        elif char in "]}":
            depth -= 1
    return True


def parse_answer(raw):
    """(parsed JSON or None, text) of an answer; never recurses deeper than JSON_MAX_DEPTH."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    stripped = text.strip()
    if stripped[:1] in ("{", "[") and _json_depth_ok(stripped):
        try:
            return json.loads(stripped), text
        except (ValueError, RecursionError):
            pass
    return None, text


# --------------------------------------------------------------------------- channels
def send_telegram(channel, msg, timeout, max_wait=MAX_INLINE_RETRY_AFTER, sleep=time.sleep):
    token = channel.get("bot_token")
    if not isinstance(token, str) or not token or _UNSAFE_URL.search(token) or "/" in token:
        raise DeliveryError("bot_token is empty or holds spaces, '/', control or non-ASCII characters (value not shown)")
    api = str(channel.get("api_url") or DEFAULT_TELEGRAM_API).rstrip("/")
    url = "%s/bot%s/sendMessage" % (api, urllib.parse.quote(token, safe=":"))
    payload = {"chat_id": channel.get("chat_id"), "text": telegram_text(msg),
               "parse_mode": "HTML", "disable_web_page_preview": True}
    data = json.dumps(payload).encode("utf-8")
    for attempt in range(1, MAX_429_ATTEMPTS + 1):
        status, raw, headers = http_post(url, data, {"Content-Type": "application/json"}, timeout)
        body, text = parse_answer(raw)
        refused = isinstance(body, dict) and body.get("ok") is False
        if 200 <= status < 300 and not refused:
            return "HTTP %d" % status
        code = status
        if isinstance(body, dict):
            if isinstance(body.get("error_code"), int) and 400 <= body["error_code"] < 600:
                code = body["error_code"]
            if isinstance(body.get("description"), str):
                text = body["description"]
        wait = retry_after(body, headers)
        if code == 429:
            wait = 1.0 if wait is None else wait
            if wait <= max_wait and attempt < MAX_429_ATTEMPTS:
                log("telegram answered 429, waiting retry_after=%gs (attempt %d)" % (wait, attempt))
                sleep(wait)
                continue
        if 200 <= status < 300:         # ok: false with a 2xx status: classified by its error_code
            detail = excerpt(text)
            raise DeliveryError("HTTP %d ok=false%s%s" % (status, " (error_code %d)" % code if code != status else "",
                                                          (": " + detail) if detail else ""),
                                retry_after=wait, kind=classify_status(code) if code != status else TRANSIENT,
                                status=status)
        raise http_error(status, text, wait, code=code)
    raise DeliveryError("HTTP 429: gave up")


def send_webhook(channel, msg, timeout, max_wait=MAX_INLINE_RETRY_AFTER, sleep=time.sleep):
    url = channel.get("url")
    headers = {"Content-Type": "application/json"}
    for name, value in check_headers(channel.get("headers")):      # refused before anything is sent
        for existing in [k for k in headers if k.lower() == name.lower()]:
            del headers[existing]
        headers[name] = value
    data = json.dumps(webhook_payload(msg)).encode("utf-8")
    status, raw, answer_headers = http_post(url, data, headers, timeout)
    if 200 <= status < 300:
        return "HTTP %d" % status
    body, text = parse_answer(raw)
    raise http_error(status, text, retry_after(body, answer_headers))


def _exchange(proc, data, deadline):
    """Feed ``data`` to the command and read its output (at most OUTPUT_LIMIT bytes kept) until it exits,
    without blocking past ``deadline``. Returns (output, timed out)."""
    output = bytearray()
    pending = memoryview(data)
    stdin, stdout = proc.stdin, proc.stdout
    selector = selectors.DefaultSelector()
    os.set_blocking(stdout.fileno(), False)
    selector.register(stdout, selectors.EVENT_READ)
    if pending:
        os.set_blocking(stdin.fileno(), False)
        selector.register(stdin, selectors.EVENT_WRITE)
    else:
        stdin.close()
        stdin = None
    exited_at = None
    try:
        while stdout is not None or stdin is not None:
            now = time.monotonic()
            if now >= deadline:
                return bytes(output), True
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > PIPE_GRACE:
                break                   # a child that left the command's process group still holds the pipe
            for key, _events in selector.select(min(deadline - now, 0.25)):
                if key.fileobj is stdin:
                    try:
                        written = os.write(stdin.fileno(), pending[:65536])
                        pending = pending[written:]
                    except BlockingIOError:
                        pass
                    except OSError:     # the command closed its stdin: it does not want the rest
                        pending = pending[len(pending):]
                    if not pending:
                        selector.unregister(stdin)
                        stdin.close()
                        stdin = None
                elif key.fileobj is stdout:
                    try:
                        chunk = os.read(stdout.fileno(), 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        selector.unregister(stdout)
                        stdout.close()
                        stdout = None
                    elif len(output) < OUTPUT_LIMIT:
                        output += chunk[:OUTPUT_LIMIT - len(output)]
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return bytes(output), True
        return bytes(output), False
    finally:
        selector.close()
        for pipe in (stdin, stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def send_command(channel, msg, timeout, max_wait=MAX_INLINE_RETRY_AFTER, sleep=time.sleep):
    try:
        argv = shlex.split(str(channel.get("command", "")))
    except ValueError:
        raise DeliveryError("command channel: the command line does not parse") from None
    if not argv or not os.path.isabs(argv[0]):
        raise DeliveryError("command channel needs an absolute command")
    env = {"PATH": agentops_auth.SAFE_PATH, "LANG": "C.UTF-8"}
    for field in ("host", "agent", "unit", "severity", "key", "title", "since", "fingerprint"):
        env["AGENTOPS_ALERT_" + field.upper()] = _CONTROL.sub(" ", str(msg.get(field) or ""))
    data = plain_text(msg).encode("utf-8", "replace")
    deadline = time.monotonic() + timeout
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, cwd="/", close_fds=True, start_new_session=True)
    except (OSError, ValueError) as exc:
        raise DeliveryError("command could not run: %s" % describe_exception(exc)) from None
    try:
        output, timed_out = _exchange(proc, data, deadline)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    if timed_out:
        raise DeliveryError("command timed out after %gs (killed)" % timeout)
    if proc.returncode is None or proc.returncode < 0:
        raise DeliveryError("command killed by signal %s" % (-(proc.returncode or 0)))
    if proc.returncode != 0:
        detail = excerpt(output)
        raise DeliveryError("command exited %d%s" % (proc.returncode, (": " + detail) if detail else ""))
    return "exit 0"


# --------------------------------------------------------------------------- chat, push, paging and mail channels
SLACK_LIMIT = 3900              # characters of a Slack text (Slack cuts at 40 000, but shows 4 000 uncollapsed)
DISCORD_LIMIT = 2000            # Discord refuses content longer than this (HTTP 400)
NTFY_BODY_LIMIT = 4000          # bytes of an ntfy message (over 4 096 ntfy turns it into an attachment)
NTFY_TITLE_LIMIT = 200          # characters of an ntfy Title header
PAGERDUTY_SUMMARY_LIMIT = 1024  # PagerDuty's limit of payload.summary
PAGERDUTY_DETAILS_LIMIT = 16000  # characters of the body sent as payload.custom_details.body
EMAIL_BODY_LIMIT = 65536        # characters of an e-mail body
DEFAULT_PAGERDUTY_API = "https://events.pagerduty.com"
SMTP_PORTS = {"starttls": 587, "tls": 465, "none": 25}
NTFY_PRIORITY = {"critical": "5", "warning": "4", "info": "3", "resolved": "3"}
NTFY_TAGS = {"critical": "rotating_light", "warning": "warning", "info": "information_source",
             "resolved": "white_check_mark"}
PAGERDUTY_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}


def _one_line(text, limit):
    text = " ".join(_CONTROL.sub(" ", str(text)).split())
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def fit_text(head, body, limit, wrap=("\n```\n", "\n```"), escape=lambda s: s, marker="\n[cut]"):
    """``head`` plus ``body`` inside ``wrap``, escaped, at most ``limit`` characters; the body is cut first."""
    head = head[:limit]
    body = str(body or "")
    if not body:
        return head
    budget = limit - len(head) - len(wrap[0]) - len(wrap[1])
    if budget <= len(marker):
        return head
    escaped = escape(body)
    if len(escaped) <= budget:
        return head + wrap[0] + escaped + wrap[1]
    raw = body[: budget - len(marker)]
    escaped = escape(raw)
    while len(escaped) + len(marker) > budget:
        raw = raw[: max(0, len(raw) - (len(escaped) + len(marker) - budget))]
        escaped = escape(raw)
    return head + wrap[0] + escaped + marker + wrap[1]


def _slack_escape(text):
    # Slack's three control characters; "<!channel>" or "<@U123>" in an agent's output then pings nobody
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _no_fence(text):
    return str(text).replace("```", "'''")


def slack_text(msg, limit=SLACK_LIMIT):
    """The message as Slack mrkdwn: bold headline, details, the body in a code block; at most ``limit`` characters."""
    head = "*%s*\n%s" % (_slack_escape(_headline(msg)), _slack_escape("\n".join(_details(msg))))
    return fit_text(head, msg.get("body"), limit, escape=lambda s: _no_fence(_slack_escape(s)))


def discord_text(msg, limit=DISCORD_LIMIT):
    """The message as Discord markdown, at most ``limit`` (2000) characters."""
    head = "**%s**\n%s" % (_no_fence(_headline(msg)).replace("*", "\\*"), _no_fence("\n".join(_details(msg))))
    return fit_text(head, msg.get("body"), limit, escape=_no_fence)


def _post_json(name, url, payload, headers, timeout, max_wait, sleep, accept=lambda status, body: True):
    """POST JSON; on 429 wait the clamped retry_after in-process when it is at most ``max_wait``
    (up to MAX_429_ATTEMPTS sends), else raise with it so the spool waits. Returns (status, parsed answer)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
    for attempt_no in range(1, MAX_429_ATTEMPTS + 1):
        status, raw, answer_headers = http_post(url, data, headers, timeout)
        body, text = parse_answer(raw)
        if 200 <= status < 300 and accept(status, body):
            return status, body
        wait = retry_after(body, answer_headers)
        if status == 429:
            wait = 1.0 if wait is None else wait
            if wait <= max_wait and attempt_no < MAX_429_ATTEMPTS:
                log("%s answered 429, waiting retry_after=%gs (attempt %d)" % (name, wait, attempt_no))
                sleep(wait)
                continue
        if 200 <= status < 300:
            raise DeliveryError("HTTP %d but the answer does not confirm the message: %s"
                                % (status, excerpt(text) or "(empty)"), kind=TRANSIENT, status=status)
        raise http_error(status, text, wait)
    raise DeliveryError("HTTP 429: gave up")


def send_slack(channel, msg, timeout, max_wait=MAX_INLINE_RETRY_AFTER, sleep=time.sleep):
    """Slack incoming webhook: ``{"text": ...}``; Slack answers 200 ``ok`` (errors: 400 no_text, 403, 404, 410)."""
    status, _body = _post_json("slack", channel.get("url"), {"text": slack_text(msg)},
                               {"Content-Type": "application/json"}, timeout, max_wait, sleep)
    return "HTTP %d" % status


def send_discord(channel, msg, timeout, max_wait=MAX_INLINE_RETRY_AFTER, sleep=time.sleep):
    """Discord webhook: ``{"content": ...}`` (<= 2000 characters), no mentions parsed; honours 429 retry_after."""
    payload = {"content": discord_text(msg), "allowed_mentions": {"parse": []}}
    status, _body = _post_json("discord", channel.get("url"), payload, {"Content-Type": "application/json"},
                               timeout, max_wait, sleep)
    return "HTTP %d" % status


def _header_text(text):
    """A header value: ASCII as it is, else RFC 2047 (UTF-8, base64), which ntfy decodes."""
    try:
        text.encode("ascii")
        return text
    except UnicodeError:
        return "=?UTF-8?B?%s?=" % base64.b64encode(text.encode("utf-8")).decode("ascii")


def send_ntfy(channel, msg, timeout, max_wait=MAX_INLINE_RETRY_AFTER, sleep=time.sleep):
    """ntfy: the text as body of a POST to the topic URL; Title, Priority and Tags from the severity."""
    severity = str(msg.get("severity"))
    title = _one_line("%s%s: %s" % ("" if severity == "resolved" else "[%s] " % severity.upper(),
                                    msg.get("host"), msg.get("title")), NTFY_TITLE_LIMIT)
    text = "\n".join(_details(msg))
    if msg.get("body"):
        text += "\n\n" + str(msg["body"])
    data = text.encode("utf-8", "replace")
    if len(data) > NTFY_BODY_LIMIT:
        data = data[: NTFY_BODY_LIMIT - 6].decode("utf-8", "ignore").encode("utf-8") + b"\n[cut]"
    headers = {"Content-Type": "text/plain; charset=utf-8", "Title": _header_text(title),
               "Priority": NTFY_PRIORITY.get(severity, "3"),
               "Tags": ",".join(("agentops", NTFY_TAGS.get(severity, "bell")))}
    token = channel.get("token")
    if token:
        headers["Authorization"] = "Bearer %s" % token
    status, _body = _post_json("ntfy", channel.get("url"), data, headers, timeout, max_wait, sleep)
    return "HTTP %d" % status


def pagerduty_event(channel, msg):
    """The Events API v2 event of a message, or None for ``info`` (a notice never pages).

    ``dedup_key`` is the message's fingerprint (a hash of host and alert key): the same alert
    key on two hosts is two incidents, the fire and the resolve of one key are one.
    """
    severity = str(msg.get("severity"))
    event = {"routing_key": channel.get("routing_key"), "dedup_key": "agentops-%s" % msg.get("fingerprint"),
             "client": "agentops.fleet"}
    if severity == "resolved":
        event["event_action"] = "resolve"
        return event
    if severity not in PAGERDUTY_SEVERITY or severity == "info":
        return None
    details = {"key": msg.get("key"), "since": msg.get("since"), "reminder": bool(msg.get("reminder"))}
    if msg.get("body"):
        body = str(msg["body"])
        details["body"] = body if len(body) <= PAGERDUTY_DETAILS_LIMIT else body[:PAGERDUTY_DETAILS_LIMIT] + "\n[cut]"
    payload = {"summary": _one_line(_headline(msg), PAGERDUTY_SUMMARY_LIMIT),
               "source": _one_line(msg.get("host") or "unknown", 255),
               "severity": PAGERDUTY_SEVERITY[severity], "timestamp": msg.get("time"),
               "custom_details": details}
    if msg.get("agent"):
        payload["component"] = str(msg["agent"])
    if msg.get("unit"):
        payload["group"] = str(msg["unit"])
    event.update(event_action="trigger", payload=payload)
    return event


def send_pagerduty(channel, msg, timeout, max_wait=MAX_INLINE_RETRY_AFTER, sleep=time.sleep):
    """PagerDuty Events API v2 (``<api_url>/v2/enqueue``): trigger on fire, resolve on recovery."""
    key = channel.get("routing_key")
    if not isinstance(key, str) or not key.strip():
        raise DeliveryError("pagerduty channel without a routing_key", kind=PERMANENT)
    event = pagerduty_event(channel, msg)
    if event is None:
        return "not sent: %s alerts never page" % msg.get("severity")
    url = str(channel.get("api_url") or DEFAULT_PAGERDUTY_API).rstrip("/") + "/v2/enqueue"

    def accepted(_status, body):
        return not (isinstance(body, dict) and body.get("status") not in (None, "success"))
    status, _body = _post_json("pagerduty", url, event, {"Content-Type": "application/json"}, timeout,
                               max_wait, sleep, accept=accepted)
    return "HTTP %d %s" % (status, event["event_action"])


class _BoundedSMTP(smtplib.SMTP):
    """smtplib.SMTP connecting to addresses resolved beforehand (name resolution bounded by the deadline),
    optionally wrapping the connection in TLS at once (implicit TLS, port 465), and handing a duplicate of
    the socket to the watchdog that ends the session at the deadline."""

    def __init__(self, infos, implicit_tls, context, register, timeout, local_hostname):
        self._infos = infos
        self._implicit_tls = implicit_tls
        self._context = context
        self._register = register
        smtplib.SMTP.__init__(self, timeout=timeout, local_hostname=local_hostname)

    def _get_socket(self, host, port, timeout):
        last_error = None
        for family, socktype, proto, _name, address in self._infos:
            candidate = socket.socket(family, socktype, proto)
            try:
                candidate.settimeout(timeout)
                candidate.connect(address)
            except OSError as exc:
                candidate.close()
                last_error = exc
                continue
            self._register(candidate)
            if self._implicit_tls:
                return self._context.wrap_socket(candidate, server_hostname=self._host)
            return candidate
        raise last_error or OSError(errno.EHOSTUNREACH, "no address")


def _smtp_error(exc):
    """The DeliveryError of an SMTP answer: 5xx permanent, anything else transient (the text as excerpt)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [answer[0] for answer in exc.recipients.values() if isinstance(answer, tuple) and answer]
        kind = PERMANENT if codes and all(isinstance(c, int) and 500 <= c < 600 for c in codes) else TRANSIENT
        return DeliveryError("SMTP: every recipient refused (%s)" % ", ".join(str(c) for c in codes), kind=kind)
    code = getattr(exc, "smtp_code", None)
    detail = excerpt(getattr(exc, "smtp_error", b"") or b"")
    kind = PERMANENT if isinstance(code, int) and 500 <= code < 600 else TRANSIENT
    return DeliveryError("SMTP %s (%s)%s" % (code, type(exc).__name__, (": " + detail) if detail else ""),
                         kind=kind, status=code if isinstance(code, int) else None)


def _mail_domain(name):
    name = re.sub(r"[^A-Za-z0-9.-]", "", str(name or ""))[:200].strip(".-")
    return name or "localhost"


def email_message(channel, msg):
    """The alert as an e-mail (plain text, UTF-8); one thread per host and key (References: the fingerprint)."""
    mail = email.message.EmailMessage()
    mail["Subject"] = _one_line(_headline(msg), 250)
    mail["From"] = str(channel.get("from"))
    mail["To"] = ", ".join(str(a) for a in channel.get("to") or [])
    mail["Date"] = email.utils.formatdate(localtime=False)
    domain = _mail_domain(msg.get("host"))
    mail["Message-ID"] = email.utils.make_msgid("agentops", domain=domain)
    mail["References"] = "<agentops-%s@%s>" % (re.sub(r"[^0-9a-f]", "", str(msg.get("fingerprint"))), domain)
    mail["Auto-Submitted"] = "auto-generated"
    mail["X-Agentops-Severity"] = _one_line(msg.get("severity"), 20)
    mail["X-Agentops-Key"] = _one_line(msg.get("key"), 200)
    text = plain_text(msg)
    if len(text) > EMAIL_BODY_LIMIT:
        text = text[:EMAIL_BODY_LIMIT] + "\n[cut]\n"
    mail.set_content(text)
    return mail


def send_email(channel, msg, timeout, max_wait=MAX_INLINE_RETRY_AFTER, sleep=time.sleep):
    """E-mail through smtplib: STARTTLS (default, never falls back to clear text), implicit TLS or none;
    certificates verified against the system trust store; one deadline for the whole session."""
    security = channel.get("security") or "starttls"
    if security not in SMTP_PORTS:
        raise DeliveryError("email channel: security %r is not starttls, tls or none" % excerpt(security, 20),
                            kind=PERMANENT)
    host = str(channel.get("smtp_host") or "")
    recipients = [str(a) for a in channel.get("to") or []]
    if not host or not recipients or not channel.get("from"):
        raise DeliveryError("email channel needs smtp_host, from and to", kind=PERMANENT)
    port = channel.get("smtp_port") or SMTP_PORTS[security]
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise DeliveryError("email channel: smtp_port is not a number", kind=PERMANENT) from None
    mail = email_message(channel, msg)
    deadline = time.monotonic() + timeout
    context = ssl.create_default_context()
    expired = threading.Event()
    guard = threading.Lock()
    killers = []

    def register(sock):
        with guard:
            killers.append(sock.dup())
            if expired.is_set():
                raise DeliveryError("no complete SMTP session within the deadline of %gs" % timeout)

    expire = _expirer(guard, expired, killers)

    infos = _resolve_host(host, port, deadline, timeout)
    watchdog = threading.Timer(_remaining(deadline, timeout), expire)
    watchdog.daemon = True
    watchdog.start()
    session = None
    try:
        session = _BoundedSMTP(infos, security == "tls", context, register, _remaining(deadline, timeout),
                               _mail_domain(socket.gethostname()))
        # the TLS server name (smtplib sets it in __init__, which is not given the host so that it does not connect)
        session._host = host                # pylint: disable=protected-access
        code, _answer = session.connect(host, port)
        if code != 220:
            raise DeliveryError("SMTP %s: the server did not greet with 220" % code)
        session.ehlo()
        if security == "starttls":
            if not session.has_extn("starttls"):
                raise DeliveryError("SMTP server does not offer STARTTLS: not sending in clear text")
            session.starttls(context=context)
            session.ehlo()
        if channel.get("username"):
            session.login(str(channel["username"]), str(channel.get("password") or ""))
        refused = session.send_message(mail, from_addr=str(channel["from"]), to_addrs=recipients)
        with contextlib.suppress(Exception):
            session.quit()
        if refused:
            log("email: %d of %d recipient(s) refused: %s" % (len(refused), len(recipients),
                                                               excerpt(", ".join(sorted(refused)))))
        return "SMTP accepted for %d recipient(s)" % (len(recipients) - len(refused or {}))
    except DeliveryError:
        raise
    except (smtplib.SMTPRecipientsRefused, smtplib.SMTPResponseException) as exc:
        if expired.is_set():
            raise DeliveryError("no complete SMTP session within the deadline of %gs" % timeout) from None
        raise _smtp_error(exc) from None
    except smtplib.SMTPNotSupportedError:
        raise DeliveryError("SMTP server does not support AUTH: the credentials cannot be used",
                            kind=PERMANENT) from None
    except Exception as exc:  # pylint: disable=broad-except
        if expired.is_set() or time.monotonic() >= deadline:
            raise DeliveryError("no complete SMTP session within the deadline of %gs" % timeout) from None
        raise DeliveryError("SMTP failed: %s" % describe_exception(exc)) from None
    finally:
        watchdog.cancel()
        if session is not None:
            with contextlib.suppress(Exception):
                session.close()
        with guard:
            for killer in killers:
                with contextlib.suppress(Exception):
                    killer.close()


SENDERS = {"telegram": send_telegram, "webhook": send_webhook, "command": send_command, "slack": send_slack,
           "discord": send_discord, "ntfy": send_ntfy, "pagerduty": send_pagerduty, "email": send_email}


def send(cfg, channel, msg):
    """Send one message to one channel; return a short outcome or raise DeliveryError."""
    sender = SENDERS.get(channel.get("type"))
    if sender is None:
        raise DeliveryError("unknown channel type %r" % excerpt(channel.get("type"), 40))
    opts = settings(cfg)
    return sender(channel, msg, opts["timeout"], max_wait=opts["max_wait"])


def attempt(cfg, channel, msg):
    """One send, isolated: (outcome, None) or (None, DeliveryError); any exception is this message's failure."""
    try:
        return send(cfg, channel, msg), None
    except DeliveryError as exc:
        return None, exc
    except Exception as exc:  # pylint: disable=broad-except
        return None, DeliveryError("could not send: %s" % describe_exception(exc), kind=ERROR)


# --------------------------------------------------------------------------- spool
@contextlib.contextmanager
def _try_lock(path):
    """Yield True while holding an exclusive flock on ``path``, False when someone else holds it."""
    state.ensure_dir(os.path.dirname(path))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _names(directory):
    try:
        return sorted(f for f in os.listdir(directory) if f.endswith(".json") and not f.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _folders(root):
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    return [n for n in names if not n.startswith(".") and os.path.isdir(os.path.join(root, n))]


def _read_entry(path):
    entry = state.read_json(path)
    if not isinstance(entry, dict) or not isinstance(entry.get("message"), dict):
        return None
    return entry


def new_entry(channel, msg, now):
    return {"message": msg, "channel": channel_id(channel), "channel_type": channel.get("type"),
            "attempts": 0, "first_attempt": now, "last_attempt": None, "last_error": None,
            "last_kind": None, "last_status": None, "permanent_failures": 0, "not_before": now}


def record_failure(entry, exc, now, rng=None):
    """Count a failed attempt in a spool entry and set when it is due again.

    The first failure (at delivery) is retried at the next flush; each further one waits
    :func:`backoff`, or the clamped retry_after when that is longer.
    """
    entry["attempts"] = int(_float(entry.get("attempts"))) + 1
    entry["last_attempt"] = now
    entry["last_error"] = scrub(str(exc))
    entry["last_kind"] = exc.kind
    entry["last_status"] = exc.status
    if exc.kind == PERMANENT:
        entry["permanent_failures"] = int(_float(entry.get("permanent_failures"))) + 1
    else:
        entry["permanent_failures"] = 0
    delay = 0.0 if entry["attempts"] <= 1 else backoff(entry["attempts"] - 1, rng)
    wait = clamp_retry_after(exc.retry_after)
    if wait is not None:
        delay = max(delay, wait)
    entry["not_before"] = now + delay
    return entry


def _spool_name(msg):
    return "%020d-%s.json" % (time.time_ns(), re.sub(r"[^0-9a-f]", "", str(msg.get("id", "")))[:32] or uuid.uuid4().hex)


def move_to_dead_letter(args, folder, path, entry, reason, now=None):
    """Move one spool file to ``<spool>/alerts/.dead/<folder>/`` (rename), then add why to it."""
    now = time.time() if now is None else now
    directory = state.ensure_dir(os.path.join(_dead_root(args), folder))
    target = os.path.join(directory, os.path.basename(path))
    os.rename(path, target)
    state.fsync_dir(os.path.dirname(path))
    state.fsync_dir(directory)
    msg = entry.get("message") if isinstance(entry, dict) else None
    if isinstance(entry, dict):
        entry["dead_letter"] = {"reason": scrub(reason), "time": now, "at": _iso(now)}
        state.write_json(target, entry)
    msg = msg if isinstance(msg, dict) else {}
    log("gave up on %s key=%s for %s: moved to %s (%s)" % (msg.get("severity", "?"), msg.get("key", "?"),
                                                           folder, target, reason))
    return {"channel": folder, "key": msg.get("key"), "severity": msg.get("severity"), "title": msg.get("title"),
            "reason": scrub(reason), "file": target}


def enforce_spool_cap(args, folder, cap, now=None):
    """Keep at most ``cap`` messages in one channel's spool: the oldest info/resolved ones move to the
    dead-letter folder first, then warnings; criticals never. Returns the dead-letter records."""
    directory = os.path.join(_spool_root(args), folder)
    names = _names(directory)
    excess = len(names) - cap
    if excess <= 0:
        return []
    order = {"info": 0, "resolved": 0, "warning": 1}
    candidates = []
    for name in names:
        entry = _read_entry(os.path.join(directory, name))
        severity = entry["message"].get("severity") if entry else "info"
        rank = order.get(severity, 0) if severity != "critical" else None
        if rank is not None:
            candidates.append((rank, name, entry))
    candidates.sort(key=lambda c: (c[0], c[1]))
    moved = []
    reason = ("spool cap of %d messages for this channel reached (oldest info/resolved first, then warnings; "
              "criticals are never moved)" % cap)
    for _rank, name, entry in candidates[:excess]:
        try:
            moved.append(move_to_dead_letter(args, folder, os.path.join(directory, name), entry, reason, now))
        except FileNotFoundError:
            continue
    if len(names) - len(moved) > cap:
        log("spool of %s holds %d messages, over the cap of %d: the rest are criticals, kept"
            % (folder, len(names) - len(moved), cap))
    return moved


def spool(args, channel, index, msg, exc, now=None):
    """Write one undelivered message for one channel into the spool (atomically); return its path.

    ``exc`` (a DeliveryError) is recorded as the first failed attempt: the message is due at the
    next flush, or after the retry_after the channel asked for.
    """
    now = time.time() if now is None else now
    entry = record_failure(new_entry(channel, msg, now), exc, now)
    name = _spool_name(msg)
    path = os.path.join(_spool_root(args), channel_id(channel), name)
    try:
        state.write_json(path, entry)
    except OSError as error:
        fallback = _fallback_spool_root(args)
        if not fallback:
            raise
        problem = _oserror(error)
        path = os.path.join(fallback, channel_id(channel), name)
        try:
            state.write_json(path, entry)
        except OSError as error2:
            raise OSError(getattr(error2, "errno", None) or errno.EIO, "the spool %s (%s) and %s (%s) cannot be "
                          "written" % (_spool_root(args), problem, fallback, _oserror(error2)))
        log("the spool %s cannot be written (%s): %s key=%s for %s kept in %s (memory) until it can (%s)"
            % (_spool_root(args), problem, msg.get("severity"), msg.get("key"), channel_label(index, channel),
               fallback, exc))
        return path
    log("spooled %s key=%s for %s (%s)" % (msg.get("severity"), msg.get("key"), channel_label(index, channel), exc))
    return path


def _in_fallback(args, path):
    fallback = _fallback_spool_root(args)
    return bool(fallback) and path.startswith(fallback + os.sep)


def _merge(into, records):
    for record in records:
        into.setdefault(record["channel"], []).append(record)
    return into


def deliver(args, cfg, msg, exclude=()):
    """Send ``msg`` to every channel (but those in ``exclude``); spool it for each channel that did not take it.

    Returns True when every channel either took it or has it spooled (or dead-lettered).
    """
    handled, _taken, _targets = _deliver(args, cfg, msg, exclude)
    return handled


def _deliver(args, cfg, msg, exclude=()):
    """deliver(); returns (handled, channels that took or spooled it, channels tried)."""
    log("alert %s key=%s host=%s agent=%s unit=%s: %s" % (str(msg.get("severity")).upper(), msg.get("key"),
                                                         msg.get("host"), msg.get("agent") or "-",
                                                         msg.get("unit") or "-", msg.get("title")))
    channels = _channels(cfg)
    if not channels:
        log("no alert channels configured: key=%s only in the journal" % msg.get("key"))
        return False, 0, 0
    opts = settings(cfg)
    handled = True
    taken = targets = 0
    moved = {}
    for index, channel in enumerate(channels):
        label = "alert_channels[%d]" % index
        try:
            if not isinstance(channel, dict):
                raise DeliveryError("not a channel (a mapping with a type)")
            label = channel_label(index, channel)
            folder = channel_id(channel)
            if folder in exclude:
                continue
            targets += 1
            outcome, exc = attempt(cfg, channel, msg)
            if exc is None:
                taken += 1
                log("delivered %s key=%s to %s (%s)" % (msg.get("severity"), msg.get("key"), label, outcome))
                continue
            log("delivery of key=%s to %s failed: %s" % (msg.get("key"), label, exc))
            now = time.time()
            try:
                path = spool(args, channel, index, msg, exc, now)
            except OSError as error:
                handled = False
                log("could not deliver or spool key=%s for %s (%s); the message, so that it is not lost:\n%s"
                    % (msg.get("key"), label, _oserror(error), excerpt(plain_text(msg), 4000)))
                continue
            taken += 1
            if _in_fallback(args, path):
                continue                # the spool on disk is full: no dead-letter move, no cap work now
            try:
                if exc.kind == PERMANENT and opts["permanent_failures"] <= 1:
                    _merge(moved, [move_to_dead_letter(args, folder, path, _read_entry(path) or {}, (
                        "permanent failure answered %d time(s) in a row: %s" % (1, exc)), now)])
                with _try_lock(os.path.join(_spool_root(args), ".flush.lock")) as free:
                    if free:            # else the running flush enforces the cap when it ends
                        _merge(moved, enforce_spool_cap(args, folder, opts["spool_max"], now))
            except OSError as error:    # spooled: the next flush does this work
                log("spooled key=%s for %s, but the spool cannot be tidied now: %s"
                    % (msg.get("key"), label, _oserror(error)))
        except Exception as exc:  # pylint: disable=broad-except
            handled = False
            log("could not deliver or spool key=%s for %s: %s" % (msg.get("key"), label, describe_exception(exc)))
    if targets == 0:
        log("no other channel to send key=%s to" % msg.get("key"))
        handled = False
    if moved:
        announce_dead_letters(args, moved)
    return handled, taken, targets


def announce_dead_letters(args, moved):
    """One warning per channel that lost messages, through the other channels (de-duplicated by key)."""
    pending = getattr(_LOCAL, "pending", None)
    if pending is not None:             # already announcing in this thread: queue it, the outer loop sends it
        for folder, records in moved.items():
            pending.setdefault(folder, []).extend(records)
        return
    _LOCAL.pending = {k: list(v) for k, v in moved.items()}
    try:
        while _LOCAL.pending:
            folder, records = _LOCAL.pending.popitem()
            try:
                _announce_one(args, folder, records)
            except Exception as exc:  # pylint: disable=broad-except
                log("could not raise the dead-letter alert for %s: %s" % (folder, describe_exception(exc)))
    finally:
        _LOCAL.pending = None


def _announce_one(args, folder, records):
    directory = os.path.join(_dead_root(args), folder)
    total = len(_names(directory))
    title = "alert channel %s gave up on %d message(s); %d in its dead-letter folder" % (folder, len(records), total)
    lines = ["These alerts were NOT delivered to channel %s and were moved to %s:" % (folder, directory), ""]
    for record in records[:10]:
        lines.append("- [%s] %s: %s (%s)" % (record.get("severity"), record.get("key"),
                                             excerpt(record.get("title") or "", 120), record.get("reason")))
    if len(records) > 10:
        lines.append("- ... and %d more" % (len(records) - 10))
    lines += ["", "Nothing was deleted. Fix the channel, then move the files back to %s to send them again."
              % os.path.join(_spool_root(args), folder)]
    emit(args, "warning", DEAD_LETTER_KEY % folder, title, "\n".join(lines), exclude=(folder,))


def _resolve_cleared_dead_letters(args, channels):
    for folder in channels:
        key = DEAD_LETTER_KEY % folder
        if is_open(args, key) and not _names(os.path.join(_dead_root(args), folder)):
            resolve(args, key, title="alert channel %s: dead-letter folder is empty again" % folder, exclude=(folder,))


def _flush_channel(args, cfg, opts, folder, index, channel, clock, budget_end, result):
    """One channel's pass over its spool, oldest first (runs in its own thread)."""
    label = channel_label(index, channel)
    for name, path in _spooled(args, folder):
        try:
            now = clock()
            entry = _read_entry(path)
            if entry is None:
                if os.path.exists(path):
                    result.add_moved([move_to_dead_letter(args, folder, path, None, "unreadable spool file", now)])
                continue
            msg = entry["message"]
            if "dead_letter" in entry:      # moved back by hand: a fresh start
                entry["requeued"] = entry.pop("dead_letter")
                entry.update(first_attempt=now, attempts=0, permanent_failures=0, not_before=now, last_kind=None)
                state.write_json(path, entry)
                log("requeued key=%s for %s" % (msg.get("key"), label))
            age = now - _float(entry.get("first_attempt"), now)
            if age > opts["max_age"]:
                result.add_moved([move_to_dead_letter(args, folder, path, entry, (
                    "not delivered within alert_max_age_seconds=%ds (%d attempt(s), last error: %s)"
                    % (opts["max_age"], int(_float(entry.get("attempts"))), entry.get("last_error"))), now)])
                continue
            if _float(entry.get("not_before")) > now:
                if entry.get("last_kind") in (PERMANENT, ERROR):
                    continue                # only this message waits
                break                       # the channel backs off; the order is kept
            if time.monotonic() > budget_end:
                log("flush: time budget of %ds used up, %s continues at the next run" % (FLUSH_BUDGET, label))
                break
            outcome, exc = attempt(cfg, channel, msg)
            now = clock()
            if exc is None:
                state.remove(path)
                result.add_delivered()
                log("delivered spooled %s key=%s to %s after %d attempt(s) (%s)"
                    % (msg.get("severity"), msg.get("key"), label, int(_float(entry.get("attempts"))) + 1, outcome))
                continue
            record_failure(entry, exc, now)
            if exc.kind == PERMANENT and entry["permanent_failures"] >= opts["permanent_failures"]:
                result.add_moved([move_to_dead_letter(args, folder, path, entry, (
                    "permanent failure answered %d time(s) in a row: %s" % (entry["permanent_failures"], exc)), now)])
                continue
            state.write_json(path, entry)
            log("spooled key=%s still not delivered to %s (attempt %d, %s, next try after %s): %s"
                % (msg.get("key"), label, entry["attempts"], exc.kind, _iso(entry["not_before"]), exc))
            if exc.kind == TRANSIENT:
                break
        except Exception as exc:  # pylint: disable=broad-except
            log("flush of %s for %s failed: %s" % (name, label, describe_exception(exc)))


class _FlushResult:
    def __init__(self):
        self.lock = threading.Lock()
        self.delivered = 0
        self.moved = {}

    def add_delivered(self):
        with self.lock:
            self.delivered += 1

    def add_moved(self, records):
        with self.lock:
            _merge(self.moved, records)


def _spooled(args, folder):
    """[(name, path)] of one channel's spooled messages, oldest first: the spool and its fallback in memory."""
    found = []
    for root in (_spool_root(args), _fallback_spool_root(args)):
        if root:
            directory = os.path.join(root, folder)
            found += [(name, os.path.join(directory, name)) for name in _names(directory)]
    return sorted(found)


def _spool_folders(args):
    folders = set(_folders(_spool_root(args)))
    if _fallback_spool_root(args):
        folders.update(_folders(_fallback_spool_root(args)))
    return sorted(folders)


def adopt_fallback_spool(args):
    """Move messages kept in memory (the spool could not be written) back into the spool, where it
    has room again; returns how many moved. A message that still does not fit stays where it is."""
    fallback = _fallback_spool_root(args)
    moved = 0
    if not fallback:
        return moved
    for folder in _folders(fallback):
        for name in _names(os.path.join(fallback, folder)):
            source = os.path.join(fallback, folder, name)
            entry = _read_entry(source)
            if entry is None:
                continue
            try:
                state.write_json(os.path.join(_spool_root(args), folder, name), entry)
            except OSError as exc:
                log("the spool %s still cannot be written (%s): %d message(s) stay in %s"
                    % (_spool_root(args), _oserror(exc), len(_names(os.path.join(fallback, folder))), fallback))
                return moved
            state.remove(source)
            moved += 1
    if moved:
        log("moved %d message(s) from %s (memory) back into the spool %s" % (moved, fallback, _spool_root(args)))
    return moved


def flush(args, cfg=None, now=None):
    """Deliver the spool, oldest first per channel, each channel in its own thread; return (delivered, remaining).

    ``now`` (epoch seconds) replaces the clock for due times and ages (tests, replays). Messages kept in
    memory because the spool could not be written are moved back first, and delivered from memory
    while they cannot be.
    """
    cfg = cfg or load_config(args)
    opts = settings(cfg)
    root = _spool_root(args)
    with contextlib.suppress(OSError):
        state.ensure_dir(root)
    channels = {}
    for index, channel in enumerate(_channels(cfg)):
        if isinstance(channel, dict):
            channels.setdefault(channel_id(channel), (index, channel))
    clock = (lambda: now) if now is not None else time.time
    result = _FlushResult()
    budget_end = time.monotonic() + FLUSH_BUDGET
    fallback = _fallback_spool_root(args)
    with _lock_first([os.path.join(root, ".flush.lock")] + ([os.path.join(fallback, ".flush.lock")] if fallback
                                                             else [])):
        adopt_fallback_spool(args)
        for folder in _folders(root):
            try:
                result.add_moved(enforce_spool_cap(args, folder, opts["spool_max"], clock()))
            except OSError as exc:
                log("the spool cap of %s cannot be enforced now: %s" % (folder, _oserror(exc)))
        workers = []
        for folder in _spool_folders(args):
            names = _spooled(args, folder)
            if not names:
                continue
            if folder not in channels:
                log("%d spooled message(s) in %s belong to no configured channel: kept"
                    % (len(names), os.path.join(root, folder)))
                continue
            index, channel = channels[folder]
            workers.append(threading.Thread(target=_flush_channel, name="agentops-flush-%s" % folder,
                                            args=(args, cfg, opts, folder, index, channel, clock, budget_end, result),
                                            daemon=True))
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        for folder in _folders(root):
            try:
                result.add_moved(enforce_spool_cap(args, folder, opts["spool_max"], clock()))
            except OSError as exc:
                log("the spool cap of %s cannot be enforced now: %s" % (folder, _oserror(exc)))
    if result.moved:
        announce_dead_letters(args, result.moved)
    try:
        _resolve_cleared_dead_letters(args, channels)
    except Exception as exc:  # pylint: disable=broad-except
        log("could not check the dead-letter folders: %s" % describe_exception(exc))
    return result.delivered, spooled_count(args)


def spooled_count(args):
    """Messages waiting in the spool and its fallback in memory (all channels; dead letters not counted)."""
    return sum(len(_spooled(args, folder)) for folder in _spool_folders(args))


def dead_letter_count(args):
    """Messages given up on and kept in ``<spool_dir>/alerts/.dead/`` (all channels)."""
    root = _dead_root(args)
    return sum(len(_names(os.path.join(root, folder))) for folder in _folders(root))


def dead_letter_summary(args):
    """Spool and dead-letter figures for ``agentops status``::

        {"spooled": N, "dead_letter": M, "dead_letter_dir": PATH,
         "channels": {<channel>: {"spooled": n, "dead_letter": m, "last_dead_letter": ISO or None}}}
    """
    dead = _dead_root(args)
    channels = {}
    for folder in _spool_folders(args):
        channels.setdefault(folder, {"spooled": 0, "dead_letter": 0, "last_dead_letter": None})
        channels[folder]["spooled"] = len(_spooled(args, folder))
    for folder in _folders(dead):
        names = _names(os.path.join(dead, folder))
        info = channels.setdefault(folder, {"spooled": 0, "dead_letter": 0, "last_dead_letter": None})
        info["dead_letter"] = len(names)
        if names:
            with contextlib.suppress(OSError):
                info["last_dead_letter"] = _iso(os.stat(os.path.join(dead, folder, names[-1])).st_mtime)
    return {"spooled": sum(c["spooled"] for c in channels.values()),
            "dead_letter": sum(c["dead_letter"] for c in channels.values()),
            "dead_letter_dir": dead, "channels": channels}


def spool_status_line(args):
    """One line for ``agentops status`` when something is spooled or dead-lettered, else None."""
    summary = dead_letter_summary(args)
    if not summary["spooled"] and not summary["dead_letter"]:
        return None
    return "alert spool: %d waiting, %d given up (dead letters in %s)" % (
        summary["spooled"], summary["dead_letter"], summary["dead_letter_dir"])


# --------------------------------------------------------------------------- public API
def emit(args, severity, key, title, body="", agent=None, unit=None, exclude=()):
    """Raise (or refresh) the alert ``key``; return True if delivered, spooled or de-duplicated.

    ``exclude``: channel ids (see :func:`channel_id`) that do not get this alert (the
    dead-letter alert of a channel goes through the others).
    """
    if severity == "resolved":
        return resolve(args, key, title=title, body=body, agent=agent, unit=unit, exclude=exclude)
    if severity not in RANK:
        raise ValueError("unknown severity %r (one of %s)" % (severity, ", ".join(SEVERITIES)))
    if not key:
        raise ValueError("an alert needs a key")
    cfg = load_config(args)
    now = time.time()
    since = now
    reminder = False
    if severity != "info":
        repeat = _number(cfg, "alert_repeat_seconds", 4 * 3600.0, 0.0, 10 * 365 * 86400.0)
        # The record is bookkeeping: written before the delivery (so that two runs do not both send it),
        # but a record that cannot be written never stops the delivery (see _save_key).
        with _state_lock(args):
            current = _load_key(args, key)
            if current is not None:
                since = _float(current.get("first_seen"), now)
                last_sent = _float(current.get("last_sent"))
                unsent = bool(current.get("unsent"))
                escalated = RANK[severity] > RANK.get(current.get("severity"), 0)
                due = now - last_sent >= repeat
                if not (unsent or escalated or due):
                    current.update(last_seen=now, title=title)
                    _save_key(args, key, current)
                    log("suppressed duplicate %s key=%s (open since %s, next reminder in %ds)"
                        % (severity, key, _iso(since), repeat - (now - last_sent)))
                    return True
                reminder = not (unsent or escalated)
                count = int(_float(current.get("count"), 1)) + 1
            else:
                count = 1
            _save_key(args, key, {"key": key, "severity": severity, "title": title, "agent": agent, "unit": unit,
                                  "first_seen": since, "last_sent": now, "last_seen": now, "count": count})
    msg = build_message(cfg, severity, key, title, body, agent=agent, unit=unit, since=since, reminder=reminder)
    handled, taken, targets = _deliver(args, cfg, msg, exclude)
    if severity != "info" and targets and not taken:
        # no channel took it, not even into the spool: send it again at the next emit, not at the reminder
        with _state_lock(args):
            current = _load_key(args, key)
            if current is not None and current.get("last_sent") == now:
                current["unsent"] = True
                _save_key(args, key, current)
    return handled


def resolve(args, key, title="", body="", agent=None, unit=None, exclude=()):
    """Clear ``key``: exactly one ``resolved`` message when it was open, else nothing.

    Returns True when the message was delivered or spooled, or when there was nothing to do.
    """
    with _state_lock(args):
        current = _load_key(args, key)
        if current is None:
            return True
        _drop_key(args, key)
    cfg = load_config(args)
    msg = build_message(cfg, "resolved", key, title or "resolved: %s" % current.get("title", key), body,
                        agent=agent or current.get("agent"), unit=unit or current.get("unit"),
                        since=current.get("first_seen"))
    return deliver(args, cfg, msg, exclude)


# --------------------------------------------------------------------------- agentops failure
def agent_of_unit(args, unit):
    """The agent name of an ``agentops-<name>.service`` unit, or None."""
    base = unit[:-len(".service")] if unit.endswith(".service") else unit
    if not base.startswith("agentops-"):
        return None
    name = base[len("agentops-"):]
    return name if name in hostconfig.agent_names(args.config_dir) else None


def down_key(agent, unit):
    """The key shared by ``agentops failure`` and the heartbeat for "the agent is not running"."""
    return "%s/down" % agent if agent else "unit/%s/down" % unit


def crashloop_key(agent, unit):
    """The key of "the agent keeps crashing and Restart= keeps restarting it" (heartbeat and failure)."""
    return "%s/crashloop" % agent if agent else "unit/%s/crashloop" % unit


# What systemd's Result= of a failed unit means for an agent, in the alert body.
RESULT_MEANING = {
    "timeout": "it ran past a time limit: runtime_max (RuntimeMaxSec=, or TimeoutStartSec= of a scheduled run), "
               "or it did not start or stop in time (TimeoutStopSec=)",
    "start-limit-hit": "systemd stopped restarting it: the start limit (StartLimitBurst= in StartLimitIntervalSec=) "
                       "was hit",
    "oom-kill": "the kernel's OOM killer ended it (memory_max / MemoryMax=)",
    "exit-code": "its main process exited with a non-zero status",
    "signal": "its main process was killed by a signal",
    "core-dump": "its main process crashed and dumped core",
    "watchdog": "it stopped sending watchdog keep-alives",
    "resources": "systemd could not set up its resources (user, credentials, directories, sandbox)",
}


def failure_report(unit, props=None):
    """(final, title, body) of a unit that failed: its Result, NRestarts, state and last journal lines.

    Shared by ``agentops failure`` and the heartbeat, so whichever of them raises ``<agent>/down``
    first, the one message sent carries the same facts.
    """
    if props is None:
        try:
            props = systemd.show(unit)
        except Exception as exc:  # pylint: disable=broad-except
            log("failure %s: systemctl show failed: %s" % (unit, describe_exception(exc)))
            props = {}
    try:
        tail = systemd.journal_tail(unit, JOURNAL_LINES)
    except Exception as exc:  # pylint: disable=broad-except
        tail = "(journal not available: %s)" % describe_exception(exc)
    result = props.get("Result") or "unknown"
    restarts = props.get("NRestarts") or "0"
    since = props.get("InactiveEnterTimestamp") or props.get("StateChangeTimestamp") or "unknown"
    final = props.get("ActiveState") in ("failed", "inactive", None)
    meaning = RESULT_MEANING.get(result)
    if final and result == "success":
        # OnFailure= also fires when a start job fails because a unit it requires failed: the unit itself
        # did not run (an agent on systemd 247 whose session-start auth check, agentops-auth@, failed)
        title = "%s did not start: a unit it requires failed (NRestarts=%s)" % (unit, restarts)
        meaning = ("the unit itself did not fail: a unit it requires (Requires=) failed to start, such as "
                   "agentops-auth@<agent>.service, the session-start auth check of an agent on systemd 247")
    elif final:
        title = "%s failed (Result=%s, NRestarts=%s)" % (unit, result, restarts)
    else:
        title = "%s crashed and is being restarted by Restart= (NRestarts=%s)" % (unit, restarts)
    body = "\n".join([
        "Unit: %s" % unit,
        "Result: %s%s" % (result, (" (%s)" % meaning) if meaning else ""),
        "NRestarts: %s" % restarts,
        "State: %s/%s" % (props.get("ActiveState", "?"), props.get("SubState", "?")),
        "Failed since: %s" % since,
        "Last started: %s" % (props.get("ExecMainStartTimestamp") or "unknown"),
        "Main process: code=%s status=%s" % (props.get("ExecMainCode", "?"), props.get("ExecMainStatus", "?")),
        "",
        "Last %d journal lines:" % JOURNAL_LINES,
        tail,
    ])
    return final, title, body


def failure(args, unit):
    """Alert on a unit that entered the failed state (the body of ``agentops-alert@.service``).

    When the unit stays failed (start limit hit, or no ``Restart=``) this is ``<agent>/down``
    (``unit/<unit>/down`` for a unit that is not an agent, such as the collection's own
    ``agentops-heartbeat.service``). systemd 254 and later also run ``OnFailure=`` for failures
    that ``Restart=`` recovers from; the unit is then already restarting or running again, and
    the message goes to ``<agent>/crashloop``. Both are de-duplicated like every alert: a unit
    that fails at every tick alerts once per incident (until the heartbeat resolves the key),
    then as a reminder or an escalation.
    """
    final, title, body = failure_report(unit)
    agent = agent_of_unit(args, unit)
    key = down_key(agent, unit) if final else crashloop_key(agent, unit)
    return emit(args, "critical", key, title, body, agent=agent, unit=unit)


# --------------------------------------------------------------------------- CLI
def _cmd_alert(args):
    body = args.body
    if body == "-":
        body = sys.stdin.read()
    keys = args.key
    if len(keys) > 1 and args.severity != "resolved":
        log("alert: several --key only with --severity resolved")
        return 2
    ok = True
    for key in keys:  # several keys: one resolve each (a key that is not open sends nothing)
        ok = emit(args, args.severity, key, args.title, body or "", agent=args.agent, unit=args.unit) and ok
    return 0 if ok else 1


def _cmd_flush(args):
    delivered, remaining = flush(args)
    dead = dead_letter_count(args)
    if delivered or remaining or dead:
        log("flush: %d delivered, %d still spooled, %d in the dead-letter folder %s"
            % (delivered, remaining, dead, _dead_root(args)))
    return 0


def _cmd_failure(args):
    return 0 if failure(args, args.unit) else 1


def add_parser(subparsers):
    parser = subparsers.add_parser("alert", help="raise, refresh or resolve an alert on every channel")
    parser.add_argument("--severity", required=True, choices=SEVERITIES)
    parser.add_argument("--key", required=True, action="append",
                        help="de-duplication key (one open alert per key); repeated with --severity resolved, each "
                             "open one is resolved")
    parser.add_argument("--title", required=True)
    parser.add_argument("--body", default="", help="message body ('-' reads standard input)")
    parser.add_argument("--agent", default=None)
    parser.add_argument("--unit", default=None)
    parser.set_defaults(func=_cmd_alert)

    parser = subparsers.add_parser("flush", help="deliver the alert spool (run by agentops-alert-flush.timer)")
    parser.set_defaults(func=_cmd_flush)

    parser = subparsers.add_parser("failure", help="alert on a failed unit (body of agentops-alert@.service)")
    parser.add_argument("unit", help="the failed unit, e.g. agentops-mail-triage.service")
    parser.set_defaults(func=_cmd_failure)
