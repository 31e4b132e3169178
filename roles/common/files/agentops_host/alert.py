"""The one alert path of the host: ``agentops alert``, ``agentops flush``, ``agentops failure``.

Every part of the collection (heartbeat, auth checks, rotation, ``OnFailure=``) raises
alerts through :func:`emit` and clears them through :func:`resolve`.

* De-duplication: an alert is identified by its key. While a key is open (firing) it is
  sent once, then reminded at most every ``alert_repeat_seconds``; a higher severity is
  sent at once. ``resolve`` sends exactly one ``resolved`` message for an open key.
  Severity ``info`` is a one-off notice and never opens a key.
* Channels (``alert_channels`` in ``agentops.json``): ``telegram`` (Bot API sendMessage,
  HTML, honours 429 ``retry_after``), ``webhook`` (JSON POST), ``command`` (text on stdin).
* Nothing is lost: a message a channel did not accept is spooled, one file per message
  and channel, written atomically under ``<spool_dir>/alerts/<channel>/``, and delivered
  by ``agentops flush`` (run by ``agentops-alert-flush.timer``) exactly once.
* Every attempt and outcome is written to stderr (the journal under systemd). Secrets
  (bot tokens, webhook URLs) are scrubbed from every line and never part of an error.
"""
import datetime
import hashlib
import html
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from agentops_host import config as hostconfig
from agentops_host import state
from agentops_host import systemd

SEVERITIES = ("critical", "warning", "info", "resolved")
RANK = {"info": 0, "warning": 1, "critical": 2}
CHANNEL_TYPES = ("telegram", "webhook", "command")
TELEGRAM_LIMIT = 4096
DEFAULT_TELEGRAM_API = "https://api.telegram.org"
MAX_INLINE_RETRY_AFTER = 30     # longest 429 retry_after honoured by waiting in-process (seconds)
MAX_429_ATTEMPTS = 3            # sends per delivery attempt when the API keeps answering 429
JOURNAL_LINES = 20

_SECRETS = set()


# --------------------------------------------------------------------------- logging / secrets
def _register_secrets(channels):
    for channel in channels or []:
        if not isinstance(channel, dict):
            continue
        for field in ("bot_token", "url"):
            value = channel.get(field)
            if isinstance(value, str) and len(value) >= 4:
                _SECRETS.add(value)
                _SECRETS.add(urllib.parse.quote(value, safe=""))
                _SECRETS.add(urllib.parse.quote(value, safe=":/"))


def scrub(text):
    """Replace every known secret in ``text`` by ``<redacted>``."""
    text = str(text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret and secret in text:
            text = text.replace(secret, "<redacted>")
    return text


def log(message):
    """One line to stderr: the journal when running under systemd."""
    line = scrub(message).replace("\n", " | ")
    try:
        sys.stderr.write("agentops: %s\n" % line)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


# --------------------------------------------------------------------------- paths and config
def _alerts_state_dir(args):
    return os.path.join(args.state_dir, ".alerts")


def _spool_root(args):
    return os.path.join(args.spool_dir, "alerts")


def _key_file(args, key):
    return os.path.join(_alerts_state_dir(args), hashlib.sha256(key.encode("utf-8")).hexdigest()[:32] + ".json")


def load_config(args):
    cfg = hostconfig.load_host_config(args.config_dir)
    channels = cfg.get("alert_channels") or []
    _register_secrets(channels)
    return cfg


def channel_id(channel):
    """Stable, secret-free identity of a channel: its spool folder name.

    Built from non-secret fields only, so a rotated bot token keeps the spool.
    """
    ctype = channel.get("type", "unknown")
    if ctype == "telegram":
        ident = "%s|%s" % (channel.get("api_url") or DEFAULT_TELEGRAM_API, channel.get("chat_id"))
    elif ctype == "webhook":
        ident = str(channel.get("url"))
    else:
        ident = str(channel.get("command"))
    return "%s-%s" % (ctype, hashlib.sha256(ident.encode("utf-8")).hexdigest()[:16])


def channel_label(index, channel):
    return "%s#%d" % (channel.get("type", "unknown"), index)


def _iso(epoch):
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------- open alerts
def open_alerts(args, agent=None):
    """Open (firing) alerts, optionally only those of one agent."""
    directory = _alerts_state_dir(args)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        data = state.read_json(os.path.join(directory, name))
        if not isinstance(data, dict):
            continue
        if agent is not None and not belongs_to(data, agent):
            continue
        found.append(data)
    return sorted(found, key=lambda a: a.get("first_seen") or 0)


def belongs_to(item, agent):
    """True when an open alert concerns ``agent`` (by its agent field or by its key)."""
    if item.get("agent"):
        return item["agent"] == agent
    key = str(item.get("key", ""))
    return key.startswith(agent + "/") or (":%s:" % agent) in key


def is_open(args, key):
    return state.read_json(_key_file(args, key)) is not None


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
    tag = msg["severity"].upper()
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
        text += "\n\n" + msg["body"]
    return text + "\n"


def telegram_text(msg, limit=TELEGRAM_LIMIT):
    """The message in Telegram's HTML parse mode, escaped and at most ``limit`` characters."""
    head = "<b>%s</b>\n%s" % (html.escape(_headline(msg), quote=False),
                              html.escape("\n".join(_details(msg)), quote=False))
    body = msg.get("body") or ""
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
    return {k: msg[k] for k in ("host", "agent", "unit", "severity", "key", "title", "body", "since",
                                "fingerprint", "time", "reminder")}


# --------------------------------------------------------------------------- channels
class DeliveryError(Exception):
    """A channel did not accept a message. ``retry_after``: seconds the channel asked to wait."""

    def __init__(self, message, retry_after=None):
        Exception.__init__(self, scrub(message))
        self.retry_after = retry_after


def _post_json(url, payload, timeout):
    """POST JSON; return (status, parsed-or-text body, headers). Errors never carry the URL."""
    data = json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "agentops-alert"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler(
        {} if urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1") else None))
    try:
        with opener.open(request, timeout=timeout) as response:
            status, raw, headers = response.status, response.read(65536), response.headers
    except urllib.error.HTTPError as exc:
        status, headers = exc.code, exc.headers
        try:
            raw = exc.read(65536)
        except Exception:  # pylint: disable=broad-except
            raw = b""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError("connection failed: %s" % (reason,)) from None
    except Exception as exc:  # pylint: disable=broad-except
        raise DeliveryError("request failed: %s" % type(exc).__name__) from None
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = text
    return status, body, headers


def _retry_after(body, headers):
    value = None
    if isinstance(body, dict):
        value = (body.get("parameters") or {}).get("retry_after")
    if value is None and headers is not None:
        value = headers.get("Retry-After")
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None


def send_telegram(channel, msg, timeout, max_wait=MAX_INLINE_RETRY_AFTER, sleep=time.sleep):
    token = str(channel.get("bot_token", ""))
    api = str(channel.get("api_url") or DEFAULT_TELEGRAM_API).rstrip("/")
    url = "%s/bot%s/sendMessage" % (api, urllib.parse.quote(token, safe=":"))
    payload = {"chat_id": channel.get("chat_id"), "text": telegram_text(msg),
               "parse_mode": "HTML", "disable_web_page_preview": True}
    for attempt in range(1, MAX_429_ATTEMPTS + 1):
        status, body, headers = _post_json(url, payload, timeout)
        if 200 <= status < 300 and not (isinstance(body, dict) and body.get("ok") is False):
            return "HTTP %d" % status
        description = body.get("description") if isinstance(body, dict) else str(body)[:200]
        if status == 429:
            wait = _retry_after(body, headers)
            wait = 1.0 if wait is None else wait
            if wait <= max_wait and attempt < MAX_429_ATTEMPTS:
                log("telegram answered 429, waiting retry_after=%ss (attempt %d)" % (wait, attempt))
                sleep(wait)
                continue
            raise DeliveryError("HTTP 429 retry_after=%s" % wait, retry_after=wait)
        raise DeliveryError("HTTP %s: %s" % (status, description))
    raise DeliveryError("HTTP 429: gave up")


def send_webhook(channel, msg, timeout, max_wait=MAX_INLINE_RETRY_AFTER, sleep=time.sleep):
    url = str(channel.get("url", ""))
    status, body, headers = _post_json(url, webhook_payload(msg), timeout)
    if 200 <= status < 300:
        return "HTTP %d" % status
    if status == 429:
        raise DeliveryError("HTTP 429", retry_after=_retry_after(body, headers))
    raise DeliveryError("HTTP %s" % status)


def send_command(channel, msg, timeout, max_wait=MAX_INLINE_RETRY_AFTER, sleep=time.sleep):
    argv = shlex.split(str(channel.get("command", "")))
    if not argv or not os.path.isabs(argv[0]):
        raise DeliveryError("command channel needs an absolute command")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    for field in ("host", "agent", "unit", "severity", "key", "title", "since", "fingerprint"):
        env["AGENTOPS_ALERT_" + field.upper()] = str(msg.get(field) or "")
    try:
        proc = subprocess.run(argv, input=plain_text(msg), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise DeliveryError("command timed out after %ss" % timeout) from None
    except OSError as exc:
        raise DeliveryError("command could not run: %s" % exc.strerror) from None
    if proc.returncode != 0:
        raise DeliveryError("command exited %d: %s" % (proc.returncode, (proc.stdout or "").strip()[:200]))
    return "exit 0"


SENDERS = {"telegram": send_telegram, "webhook": send_webhook, "command": send_command}


def send(cfg, channel, msg):
    """Send one message to one channel; return a short outcome or raise DeliveryError."""
    sender = SENDERS.get(channel.get("type"))
    if sender is None:
        raise DeliveryError("unknown channel type %r" % channel.get("type"))
    timeout = float(cfg.get("alert_timeout_seconds") or 10)
    max_wait = float(cfg.get("alert_retry_after_max_seconds", MAX_INLINE_RETRY_AFTER))
    return sender(channel, msg, timeout, max_wait=max_wait)


# --------------------------------------------------------------------------- spool
def spool(args, channel, index, msg, error, retry_after=None):
    """Write one undelivered message for one channel into the spool (atomically)."""
    directory = os.path.join(_spool_root(args), channel_id(channel))
    now = time.time()
    name = "%020d-%s.json" % (time.time_ns(), msg["id"])
    entry = {"message": msg, "channel": channel_id(channel), "channel_type": channel.get("type"),
             "attempts": 1, "first_attempt": now, "last_attempt": now, "last_error": scrub(error),
             "not_before": now + retry_after if retry_after else now}
    state.write_json(os.path.join(directory, name), entry)
    log("spooled %s key=%s for %s (%s)" % (msg["severity"], msg["key"], channel_label(index, channel), scrub(error)))
    return True


def deliver(args, cfg, msg):
    """Send ``msg`` to every channel; spool it for each channel that did not take it.

    Returns True when every channel either took it or has it spooled.
    """
    log("alert %s key=%s host=%s agent=%s unit=%s: %s" % (msg["severity"].upper(), msg["key"], msg["host"],
                                                         msg.get("agent") or "-", msg.get("unit") or "-", msg["title"]))
    channels = cfg.get("alert_channels") or []
    if not channels:
        log("no alert channels configured: key=%s only in the journal" % msg["key"])
        return False
    handled = True
    for index, channel in enumerate(channels):
        label = channel_label(index, channel)
        try:
            outcome = send(cfg, channel, msg)
            log("delivered %s key=%s to %s (%s)" % (msg["severity"], msg["key"], label, outcome))
        except DeliveryError as exc:
            log("delivery of key=%s to %s failed: %s" % (msg["key"], label, exc))
            try:
                spool(args, channel, index, msg, str(exc), exc.retry_after)
            except OSError as err:
                log("could not spool key=%s for %s: %s" % (msg["key"], label, err))
                handled = False
    return handled


def flush(args, cfg=None):
    """Deliver the spool, oldest first per channel; return (delivered, remaining)."""
    cfg = cfg or load_config(args)
    root = _spool_root(args)
    state.ensure_dir(root)
    channels = {channel_id(c): (i, c) for i, c in enumerate(cfg.get("alert_channels") or [])}
    delivered = remaining = 0
    with state.locked(os.path.join(root, ".flush.lock")):
        for folder in sorted(os.listdir(root)):
            directory = os.path.join(root, folder)
            if folder.startswith(".") or not os.path.isdir(directory):
                continue
            files = sorted(f for f in os.listdir(directory) if f.endswith(".json") and not f.startswith("."))
            if not files:
                continue
            if folder not in channels:
                log("%d spooled message(s) in %s belong to no configured channel: kept" % (len(files), directory))
                remaining += len(files)
                continue
            index, channel = channels[folder]
            label = channel_label(index, channel)
            for pos, name in enumerate(files):
                path = os.path.join(directory, name)
                entry = state.read_json(path)
                if not isinstance(entry, dict) or "message" not in entry:
                    log("unreadable spool file %s: kept" % path)
                    remaining += 1
                    continue
                msg = entry["message"]
                if entry.get("not_before", 0) > time.time():
                    remaining += len(files) - pos
                    break
                try:
                    outcome = send(cfg, channel, msg)
                except DeliveryError as exc:
                    entry["attempts"] = int(entry.get("attempts", 0)) + 1
                    entry["last_attempt"] = time.time()
                    entry["last_error"] = str(exc)
                    entry["not_before"] = time.time() + (exc.retry_after or 0)
                    state.write_json(path, entry)
                    log("spooled key=%s still not delivered to %s (attempt %d): %s"
                        % (msg.get("key"), label, entry["attempts"], exc))
                    remaining += len(files) - pos
                    break
                state.remove(path)
                delivered += 1
                log("delivered spooled %s key=%s to %s after %d attempt(s) (%s)"
                    % (msg.get("severity"), msg.get("key"), label, int(entry.get("attempts", 1)) + 1, outcome))
    return delivered, remaining


def spooled_count(args):
    root = _spool_root(args)
    count = 0
    for dirpath, _dirs, files in os.walk(root):
        count += sum(1 for f in files if f.endswith(".json") and not f.startswith("."))
    return count


# --------------------------------------------------------------------------- public API
def emit(args, severity, key, title, body="", agent=None, unit=None, force=False):
    """Raise (or refresh) the alert ``key``; return True if delivered, spooled or de-duplicated.

    ``force`` sends even while the key is open and not yet due for a reminder (used for
    discrete events such as a unit entering the failed state).
    """
    if severity == "resolved":
        return resolve(args, key, title=title, body=body, agent=agent, unit=unit)
    if severity not in RANK:
        raise ValueError("unknown severity %r (one of %s)" % (severity, ", ".join(SEVERITIES)))
    if not key:
        raise ValueError("an alert needs a key")
    cfg = load_config(args)
    now = time.time()
    since = now
    reminder = False
    if severity != "info":
        repeat = cfg.get("alert_repeat_seconds")
        repeat = float(4 * 3600 if repeat is None else repeat)
        path = _key_file(args, key)
        with state.locked(os.path.join(_alerts_state_dir(args), ".lock")):
            current = state.read_json(path)
            if isinstance(current, dict):
                since = current.get("first_seen", now)
                escalated = RANK[severity] > RANK.get(current.get("severity"), 0)
                due = now - float(current.get("last_sent", 0)) >= repeat
                if not (force or escalated or due):
                    current.update(last_seen=now, title=title)
                    state.write_json(path, current)
                    log("suppressed duplicate %s key=%s (open since %s, next reminder in %ds)"
                        % (severity, key, _iso(since), repeat - (now - float(current.get("last_sent", 0)))))
                    return True
                reminder = not (force or escalated)
                count = int(current.get("count", 1)) + 1
            else:
                count = 1
            state.write_json(path, {"key": key, "severity": severity, "title": title, "agent": agent,
                                    "unit": unit, "first_seen": since, "last_sent": now, "last_seen": now,
                                    "count": count})
    msg = build_message(cfg, severity, key, title, body, agent=agent, unit=unit, since=since, reminder=reminder)
    return deliver(args, cfg, msg)


def resolve(args, key, title="", body="", agent=None, unit=None):
    """Clear ``key``: exactly one ``resolved`` message when it was open, else nothing.

    Returns True when the message was delivered or spooled, or when there was nothing to do.
    """
    path = _key_file(args, key)
    with state.locked(os.path.join(_alerts_state_dir(args), ".lock")):
        current = state.read_json(path)
        if not isinstance(current, dict):
            return True
        state.remove(path)
    cfg = load_config(args)
    msg = build_message(cfg, "resolved", key, title or "resolved: %s" % current.get("title", key), body,
                        agent=agent or current.get("agent"), unit=unit or current.get("unit"),
                        since=current.get("first_seen"))
    return deliver(args, cfg, msg)


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


def failure(args, unit):
    """Alert on a unit that entered the failed state (the body of ``agentops-alert@.service``).

    When the unit stays failed (start limit hit, or no ``Restart=``) this is ``<agent>/down``
    and always sent. systemd 254 and later also run ``OnFailure=`` for failures that
    ``Restart=`` recovers from; the unit is then already restarting or running again, and the
    message goes to ``<agent>/crashloop`` (de-duplicated like the heartbeat's crash loop alert).
    """
    props = systemd.show(unit)
    tail = systemd.journal_tail(unit, JOURNAL_LINES)
    agent = agent_of_unit(args, unit)
    result = props.get("Result") or "unknown"
    restarts = props.get("NRestarts") or "0"
    since = props.get("InactiveEnterTimestamp") or props.get("StateChangeTimestamp") or "unknown"
    final = props.get("ActiveState") in ("failed", "inactive", None)
    if final:
        title = "%s failed (Result=%s, NRestarts=%s)" % (unit, result, restarts)
    else:
        title = "%s crashed and is being restarted by Restart= (NRestarts=%s)" % (unit, restarts)
    body = "\n".join([
        "Unit: %s" % unit,
        "Result: %s" % result,
        "NRestarts: %s" % restarts,
        "State: %s/%s" % (props.get("ActiveState", "?"), props.get("SubState", "?")),
        "Failed since: %s" % since,
        "Last started: %s" % (props.get("ExecMainStartTimestamp") or "unknown"),
        "Main process: code=%s status=%s" % (props.get("ExecMainCode", "?"), props.get("ExecMainStatus", "?")),
        "",
        "Last %d journal lines:" % JOURNAL_LINES,
        tail,
    ])
    if final:
        return emit(args, "critical", down_key(agent, unit), title, body, agent=agent, unit=unit, force=True)
    return emit(args, "critical", crashloop_key(agent, unit), title, body, agent=agent, unit=unit)


# --------------------------------------------------------------------------- CLI
def _cmd_alert(args):
    body = args.body
    if body == "-":
        body = sys.stdin.read()
    ok = emit(args, args.severity, args.key, args.title, body or "", agent=args.agent, unit=args.unit)
    return 0 if ok else 1


def _cmd_flush(args):
    delivered, remaining = flush(args)
    if delivered or remaining:
        log("flush: %d delivered, %d still spooled" % (delivered, remaining))
    return 0


def _cmd_failure(args):
    return 0 if failure(args, args.unit) else 1


def add_parser(subparsers):
    parser = subparsers.add_parser("alert", help="raise, refresh or resolve an alert on every channel")
    parser.add_argument("--severity", required=True, choices=SEVERITIES)
    parser.add_argument("--key", required=True, help="de-duplication key (one open alert per key)")
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
