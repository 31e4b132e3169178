# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)
"""Authentication checks, shared by the auth_check module and the on-host command.

Standard library only: this file is also installed on managed hosts as
``agentops_lib.agentops_auth``.

A check is a dict (the ``auth_checks`` entries of the inventory contract)::

    {"name": "graph", "type": "http", "url": "https://graph.microsoft.com/v1.0/me",
     "credential": "graph_token", "expect_status": [200]}

``run_check(check, token=None, timeout=10)`` returns a dict with the keys
``status`` (one of ``STATUSES``), ``message``, ``http_status``, ``expires_at``,
``expires_in_seconds`` and ``elapsed``. The token never appears in it.

Limits that hold whatever a remote endpoint or a command does:

- an HTTP check has one overall deadline (``timeout``): connecting, TLS, sending and reading
  the status line and headers together; at the deadline its socket is shut down from a
  watchdog and the check is AUTH_UNREACHABLE. The answer's body is never read. Redirects
  are never followed;
- a token, a header name or a header value holding CR, LF or NUL is refused before anything
  is sent (AUTH_FAILED, the value is never shown);
- a command check runs with a fixed minimal environment (``PATH``, ``LANG=C.UTF-8``, ``HOME``,
  ``USER`` and ``LOGNAME`` of the effective user), working directory ``/``, the token on
  standard input, no inherited file descriptors, its own process group (killed at the
  deadline) and its output read with a bound (``run_bounded``);
- messages name the class of a library error and only detail known not to hold data
  (an OS error's text, a TLS verification reason), with every secret masked before a
  message is cut to length.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import datetime
import errno
import functools
import json
import os
import re
import selectors
import shlex
import signal
import socket
import ssl
import stat
import subprocess
import threading
import time

try:  # Python 3 (managed hosts and controllers); the module is never run on Python 2
    from http import client as http_client
    from urllib import error as urllib_error
    from urllib import request as urllib_request
except ImportError:  # pragma: no cover
    http_client = None
    urllib_error = None
    urllib_request = None

try:
    import pwd
except ImportError:  # pragma: no cover - POSIX hosts only
    pwd = None

from . import agentops_safefile as safefile
from .agentops_timespan import parse_timespan

AUTH_OK = "AUTH_OK"
AUTH_EXPIRING = "AUTH_EXPIRING"
AUTH_FAILED = "AUTH_FAILED"
AUTH_UNREACHABLE = "AUTH_UNREACHABLE"
STATUSES = (AUTH_OK, AUTH_EXPIRING, AUTH_FAILED, AUTH_UNREACHABLE)

CHECK_TYPES = ("http", "jwt", "command", "file")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
DEFAULT_TIMEOUT = 10
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_COMMAND_OUTPUT = 64 * 1024  # stdout of a command check beyond this is a failure
STDERR_TAIL = 8 * 1024  # bytes of a command's stderr kept (the end of it)
MAX_TOKEN_FILE = 1024 * 1024
# Largest ca_path file read (a CA bundle of a distribution is about 220 KiB).
MAX_CA_BYTES = 4 * 1024 * 1024
MAX_DETAIL = 200  # characters of library/command detail shown in a message
EXIT_GRACE = 0.5  # seconds the pipes are drained after the command itself exited
_LINE_BREAK = re.compile(r"[\r\n\x00]")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)
_HEADER_NAME = HEADER_NAME_RE
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_CONTROL = re.compile(u"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Keys a check may carry. "credential" is resolved by the caller (the on-host
# command reads /etc/agentops/credentials/<agent>/<credential>).
KNOWN_KEYS = frozenset((
    "name", "type", "credential", "token", "token_file", "url", "method", "headers", "body",
    "expect_status", "username", "password", "validate_certs", "ca_path", "timeout",
    "min_valid", "fail_on_expiring", "command", "expect_regex", "path", "max_age",
))


def _is_set(value):
    return value is not None and value != ""


def check_label(check):
    """Return how a check is named in messages: its name, else its type."""
    name = check.get("name") if isinstance(check, dict) else None
    return "auth check %r" % (name if name else (check.get("type") if isinstance(check, dict) else "?"),)


def check_problems(check, token_sources=("token", "token_file", "credential"), token_given=False,
                   known_keys=KNOWN_KEYS, absolute_command=False):
    """The problems of one auth check as (field, text) pairs ([] when valid): the one validator.

    ``field`` is the key a problem is about ("" for the check as a whole). ``token_sources``
    lists the keys that may provide the token (the module has no ``credential``, the inventory
    has only ``credential``); ``token_given`` says the caller provides the token itself;
    ``known_keys`` are the keys accepted at all; ``absolute_command`` requires a command check's
    command to be an absolute path (the inventory contract does). The controller (plugins/filter/agents.py via
    agentops_contract), the module and the on-host command all call this function.
    """
    if not isinstance(check, dict):
        return [("", "an auth check must be a mapping, got %s" % type(check).__name__)]
    problems = []
    for key in sorted(str(k) for k in check if k not in known_keys):
        problems.append((key, "unknown key (known: %s)" % ", ".join(sorted(known_keys))))
    name = check.get("name")
    if not _is_set(name):
        problems.append(("name", "'name' is required"))
    elif not isinstance(name, str) or not _NAME.match(name):
        problems.append(("name", "'name' must match %s" % _NAME.pattern))
    ctype = check.get("type")
    if ctype not in CHECK_TYPES:
        problems.append(("type", "unknown type %r (use one of: %s)" % (ctype, ", ".join(CHECK_TYPES))))
        return problems
    given = [k for k in ("token", "token_file", "credential") if _is_set(check.get(k))]
    if len(given) > 1:
        problems.append((given[1], "set only one of %s, not both (got %s)" % (
            " / ".join(token_sources), " and ".join(given))))
    for key in given:
        if key not in token_sources and key in known_keys:
            problems.append((key, "%r is not supported here (use one of: %s)" % (key, ", ".join(token_sources))))
    if _is_set(check.get("token_file")) and not os.path.isabs(str(check["token_file"])):
        problems.append(("token_file", "'token_file' must be an absolute path, got %r" % (check["token_file"],)))

    if ctype == "http":
        url = check.get("url")
        if not _is_set(url):
            problems.append(("url", "type http needs 'url'"))
        elif not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url) or _CONTROL.search(url):
            problems.append(("url", "'url' must start with http:// or https:// and name a host, one line, got %r"
                             % (url,)))
        method = str(check.get("method") or "GET").upper()
        if method not in HTTP_METHODS:
            problems.append(("method", "unknown HTTP method %r (use one of: %s)"
                             % (check.get("method"), ", ".join(HTTP_METHODS))))
        headers = check.get("headers")
        if headers is not None and not isinstance(headers, dict):
            problems.append(("headers", "'headers' must be a mapping of header name to value"))
        elif headers:
            problems.extend(("headers", text) for text in header_errors(headers, "'headers'"))
        try:
            _expected_statuses(check)
        except ValueError as exc:
            problems.append(("expect_status", str(exc)))
        if _is_set(check.get("password")) and not _is_set(check.get("username")):
            problems.append(("password", "'password' needs 'username' (basic auth)"))
        if _is_set(check.get("ca_path")) and not os.path.isabs(str(check["ca_path"])):
            problems.append(("ca_path", "'ca_path' must be an absolute path, got %r" % (check["ca_path"],)))
        body = check.get("body")
        if body is not None and not isinstance(body, (str, dict, list)):
            problems.append(("body", "'body' must be text or JSON data (a mapping or a list)"))
    elif ctype == "jwt":
        if not given and not token_given:
            problems.append(("credential" if "credential" in token_sources else "token",
                             "type jwt needs the token (%s)" % " or ".join(token_sources)))
    elif ctype == "command":
        command = check.get("command")
        if not _is_set(command) or (isinstance(command, list) and not command):
            problems.append(("command", "type command needs 'command'"))
        elif isinstance(command, list):
            if not all(isinstance(part, str) for part in command):
                problems.append(("command", "'command' as a list must hold strings only"))
            elif absolute_command and not command[0].startswith("/"):
                problems.append(("command", "'command' must start with an absolute path"))
        elif not isinstance(command, str):
            problems.append(("command", "'command' must be a string or a list of strings"))
        elif _CONTROL.search(command):
            problems.append(("command", "'command' must be one line (no control characters)"))
        else:
            try:
                words = shlex.split(command)
            except ValueError as exc:
                problems.append(("command", "'command' cannot be parsed: %s" % exc))
            else:
                if not words:
                    problems.append(("command", "type command needs 'command'"))
                elif absolute_command and not words[0].startswith("/"):
                    problems.append(("command", "'command' must start with an absolute path"))
    elif ctype == "file":
        path_sources = [k for k in ("path", "token_file", "credential")
                        if _is_set(check.get(k)) and k in tuple(token_sources) + ("path",)]
        if not path_sources:
            problems.append(("path", "type file needs 'path' (or %s)"
                             % " or ".join(s for s in token_sources if s != "token")))
        if _is_set(check.get("path")) and not os.path.isabs(str(check["path"])):
            problems.append(("path", "'path' must be an absolute path, got %r" % (check["path"],)))
        if _is_set(check.get("token")):
            problems.append(("token", "type file checks a file; 'token' makes no sense here"))

    if _is_set(check.get("expect_regex")):
        try:
            re.compile(str(check["expect_regex"]))
        except re.error as exc:
            problems.append(("expect_regex", "'expect_regex' is not a valid regular expression: %s" % exc))
    for key in ("min_valid", "max_age", "timeout"):
        if _is_set(check.get(key)):
            value = check[key]
            try:
                if isinstance(value, bool):
                    raise ValueError("not a time span: %r" % (value,))
                seconds = parse_timespan(value)
            except ValueError as exc:
                problems.append((key, "%r is not a time span (e.g. 30s, 7d): %s" % (key, exc)))
            else:
                if key == "timeout" and seconds <= 0:
                    problems.append((key, "'timeout' must be more than 0"))
    for key in ("validate_certs", "fail_on_expiring"):
        if check.get(key) is not None and not isinstance(check[key], bool):
            problems.append((key, "%r must be true or false, got %r" % (key, check[key])))
    return problems


def validate_check(check, token_sources=("token", "token_file", "credential"), token_given=False):
    """Return a list of error strings (empty when the check is valid), each naming the check.

    The messages of :func:`check_problems` (the one validator), prefixed with the check's label.
    """
    problems = check_problems(check, token_sources=token_sources, token_given=token_given)
    if not isinstance(check, dict):
        return [text for _field, text in problems]
    label = check_label(check)
    errors = []
    unknown = [field for field, text in problems if text.startswith("unknown key (")]
    if unknown:
        errors.append("%s: unknown key(s) %s (known: %s)" % (label, ", ".join(unknown), ", ".join(sorted(KNOWN_KEYS))))
    errors.extend("%s: %s" % (label, text) for field, text in problems if not text.startswith("unknown key ("))
    return errors


def has_line_break(value):
    """True when ``value`` holds CR, LF or NUL: such a value would split an HTTP header."""
    return value is not None and bool(_LINE_BREAK.search(str(value)))


def header_errors(headers, label):
    """Errors of a headers mapping; never shows a header value (values are secrets)."""
    errors = []
    for key, value in headers.items():
        name = str(key)
        if has_line_break(name):
            errors.append("%s: a header name contains a line break (CR/LF) or NUL character; "
                          "header names are one word" % label)
        elif not _HEADER_NAME.match(name):
            errors.append("%s: header name %r is not a valid HTTP header name" % (label, name[:64]))
        elif value is None or isinstance(value, (dict, list)):
            errors.append("%s: header %s must have a text value" % (label, name))
        elif has_line_break(value):
            errors.append("%s: the value of header %s contains a line break (CR/LF) or NUL character "
                          "(value not shown); a header value is one line" % (label, name))
    return errors


def _expected_statuses(check):
    raw = check.get("expect_status")
    if raw is None or raw == "" or raw == []:
        return [200]
    values = raw if isinstance(raw, (list, tuple)) else [raw]
    result = []
    for value in values:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError("'expect_status' must hold HTTP status codes (100-599), got %r" % (value,))
        if isinstance(value, bool) or not 100 <= number <= 599:
            raise ValueError("'expect_status' must hold HTTP status codes (100-599), got %r" % (value,))
        result.append(number)
    return result


def _result(status, message, started, http_status=None, expires_at=None, expires_in=None):
    return {
        "status": status,
        "message": message,
        "http_status": http_status,
        "expires_at": expires_at,
        "expires_in_seconds": expires_in,
        "elapsed": round(time.monotonic() - started, 3),
    }


def _secret_forms(secrets):
    """Every form in which a secret may show up in a text: itself, escaped (repr), each of its lines."""
    forms = set()
    for secret in secrets:
        if secret is None:
            continue
        secret = str(secret)
        candidates = [secret, repr(secret)[1:-1], repr(secret.encode("utf-8", "replace"))[2:-1]]
        candidates.extend(secret.splitlines())
        for form in candidates:
            form = form.strip()
            if len(form) >= 3:
                forms.add(form)
    return sorted(forms, key=len, reverse=True)


def _scrub(text, secrets):
    """Remove every secret (and its obvious encodings) from a text meant for people."""
    text = str(text)
    for form in _secret_forms(secrets):
        text = text.replace(form, "********")
    return text


def mask_text(text, secrets, min_part=4):
    """Mask every secret in ``text``, also a secret cut at either end of it (a text that is itself a cut-out).

    Call it BEFORE cutting a text to length: a secret cut in two by the truncation would
    no longer be recognised afterwards.
    """
    text = _scrub(text, secrets)
    for form in _secret_forms(secrets):
        longest = min(len(form) - 1, len(text))
        for size in range(longest, min_part - 1, -1):
            if text.startswith(form[-size:]):
                text = "********" + text[size:]
                break
        longest = min(len(form) - 1, len(text))
        for size in range(longest, min_part - 1, -1):
            if text.endswith(form[:size]):
                text = text[:-size] + "********"
                break
    return text


def _printable(text):
    return "".join(ch if ch.isprintable() else " " for ch in text)


def bounded_detail(text, secrets, limit=MAX_DETAIL):
    """``text`` made fit for a message: secrets masked first, then control characters removed, then cut."""
    text = _printable(mask_text(str(text), secrets)).strip()
    if len(text) > limit:
        text = text[:limit - 3].rstrip() + "..."
    return text


def describe_error(exc, secrets=()):
    """The class of an exception and only the part of its text known not to hold data.

    Library messages can quote what they were given (http.client's ``Invalid header value
    b'Bearer ...'``, a status line a server sent back): those are reduced to their class name.
    The text of an operating system error (``Connection refused``) and a TLS verification
    reason are kept, masked and bounded.
    """
    name = type(exc).__name__
    detail = None
    if isinstance(exc, ssl.SSLCertVerificationError if hasattr(ssl, "SSLCertVerificationError") else ()):
        detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
    elif isinstance(exc, ssl.SSLError):
        detail = getattr(exc, "reason", None)
    elif isinstance(exc, (socket.timeout, TimeoutError)):
        detail = "timed out"
    elif isinstance(exc, OSError):
        detail = exc.strerror
    elif isinstance(exc, UnicodeError):
        detail = getattr(exc, "reason", None)
    if detail:
        return "%s: %s" % (name, bounded_detail(detail, secrets))
    return name


def read_token_file(path, limit=MAX_TOKEN_FILE):
    """Return the content of a token file without its final newline (at most ``limit`` bytes).

    Read through ``agentops_safefile.read_path`` (no symlink a non-root user could plant is followed,
    non-blocking open, fstat check, bounded read); anything but a regular file raises ``OSError``.
    """
    try:
        data = safefile.read_path(os.path.abspath(path), max_bytes=limit, hardlinks=True)
    except safefile.UnsafeEntry as exc:
        if exc.found == "too large":
            raise OSError(errno.EFBIG, "larger than %d KiB" % (limit // 1024), path)
        if exc.found in ("fifo", "directory", "not a regular file"):
            raise OSError(errno.EINVAL, "not a regular file (%s)" % exc.found, path)
        raise OSError(errno.EINVAL, exc.reason, path)
    return data.decode("utf-8").rstrip("\r\n")


def describe_duration(seconds):
    """Say how long a number of seconds is, the way a person would ("3d 4h", "12min", "40s")."""
    seconds = int(abs(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return "%dd %dh" % (days, hours) if hours else "%dd" % days
    if hours:
        return "%dh %dmin" % (hours, minutes) if minutes else "%dh" % hours
    if minutes:
        return "%dmin" % minutes
    return "%ds" % secs


class _NoRedirect(urllib_request.HTTPRedirectHandler if urllib_request else object):
    """Never follow redirects: the Authorization header must not travel to another URL."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # pylint: disable=too-many-arguments
        return None


class _Watch(object):
    """The sockets of one request, shut down from another thread when its deadline passes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sockets = []
        self.expired = False

    def add(self, sock):
        with self._lock:
            if not self.expired:
                self._sockets.append(sock)
                return sock
        _shutdown(sock)
        return sock

    def expire(self):
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock):
    """shutdown(2) on the descriptor: a blocked recv/send/handshake in another thread returns at once."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # also for an SSLSocket: no TLS close_notify, just the fd
    except (OSError, ValueError, TypeError):
        pass


if http_client is not None:
    class _WatchedHTTPConnection(http_client.HTTPConnection):
        """HTTPConnection whose socket is registered with a _Watch as soon as it exists."""

        def __init__(self, *args, **kwargs):
            watch = kwargs.pop("watch")
            http_client.HTTPConnection.__init__(self, *args, **kwargs)
            self._agentops_watch = watch
            self._create_connection = lambda *a, **k: watch.add(socket.create_connection(*a, **k))

    class _WatchedHTTPSConnection(http_client.HTTPSConnection):
        """HTTPSConnection whose TCP and TLS sockets are registered with a _Watch (the handshake included)."""

        def __init__(self, *args, **kwargs):
            watch = kwargs.pop("watch")
            http_client.HTTPSConnection.__init__(self, *args, **kwargs)
            self._agentops_watch = watch
            self._create_connection = lambda *a, **k: watch.add(socket.create_connection(*a, **k))

        def connect(self):
            http_client.HTTPConnection.connect(self)  # TCP (and a proxy tunnel), watched
            server_hostname = self._tunnel_host or self.host
            sock = self._context.wrap_socket(self.sock, server_hostname=server_hostname,
                                             do_handshake_on_connect=False)
            self._agentops_watch.add(sock)
            self.sock = sock
            sock.do_handshake()


if urllib_request is not None:
    class _WatchedHTTPHandler(urllib_request.HTTPHandler):
        def __init__(self, watch):
            urllib_request.HTTPHandler.__init__(self)
            self._agentops_watch = watch

        def http_open(self, req):
            return self.do_open(functools.partial(_WatchedHTTPConnection, watch=self._agentops_watch), req)

    class _WatchedHTTPSHandler(urllib_request.HTTPSHandler):
        def __init__(self, watch, context):
            urllib_request.HTTPSHandler.__init__(self, context=context)
            self._agentops_watch = watch
            self._agentops_context = context

        def https_open(self, req):
            return self.do_open(functools.partial(_WatchedHTTPSConnection, watch=self._agentops_watch), req,
                                context=self._agentops_context)


def _ssl_context(check):
    if check.get("validate_certs") is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    ca_path = check.get("ca_path")
    if _is_set(ca_path):
        return _ca_context(str(ca_path))
    return ssl.create_default_context()


def _ca_context(ca_path):
    """A context that trusts ``ca_path``, found with ``agentops_safefile.locate`` (no symlink followed in a place a
    user other than root can write). A file is read through a descriptor with a bound (``MAX_CA_BYTES``) and
    given as ``cadata``; a directory of hashed certificates, which OpenSSL reads by name following links, is used
    only where root alone can write. Raises OSError (the request is not sent)."""
    try:
        found = safefile.locate(os.path.abspath(ca_path))
    except safefile.UnsafeEntry as exc:
        raise OSError(errno.EINVAL, "ca_path %s" % exc.message)
    with found:
        if found.st is None:
            raise OSError(errno.ENOENT, "ca_path %s does not exist" % ca_path)
        if stat.S_ISDIR(found.st.st_mode):
            if found.writable or not safefile.is_trusted_dir(found.st):
                raise OSError(errno.EPERM, "ca_path %s is a directory in a place a user other than root can write: "
                                           "not used (point ca_path at a file)" % ca_path)
            return ssl.create_default_context(capath=found.path)
        try:
            fd, dummy = found.open(max_bytes=MAX_CA_BYTES, hardlinks=not found.writable)
        except safefile.UnsafeEntry as exc:
            raise OSError(errno.EINVAL, "ca_path %s" % exc.message)
        try:
            data = safefile.read_bounded(fd, MAX_CA_BYTES, found.path)
        except safefile.UnsafeEntry as exc:
            raise OSError(errno.EFBIG, "ca_path %s" % exc.message)
        finally:
            os.close(fd)
    return ssl.create_default_context(cadata=data.decode("ascii", "replace"))


def http_exchange(request, context, timeout):
    """Send ``request`` and read the status line and headers within ONE overall deadline.

    Returns ``(answer, error, timed_out)``: ``answer`` is a dict (code, reason, location) or
    None, ``error`` the exception the exchange raised or None. The exchange runs in a worker
    thread; at the deadline its sockets are shut down (a server trickling one byte a second
    cannot hold it) and the caller returns even if the worker is still stuck (in a DNS lookup,
    for instance: it is a daemon thread). The body is never read; redirects are not followed.
    """
    watch = _Watch()
    box = {}

    def work():
        try:
            opener = urllib_request.build_opener(_NoRedirect(), _WatchedHTTPHandler(watch),
                                                 _WatchedHTTPSHandler(watch, context))
            try:
                response = opener.open(request, timeout=timeout)
            except urllib_error.HTTPError as exc:
                headers = exc.headers
                box["answer"] = {"code": exc.code, "reason": str(exc.reason or ""),
                                 "location": headers.get("Location") if headers else None}
                exc.close()
            else:
                box["answer"] = {"code": response.getcode(), "reason": str(getattr(response, "reason", "") or ""),
                                 "location": None}
                response.close()  # the body is never read
        except BaseException as exc:  # pylint: disable=broad-except  # handed to the caller
            box["error"] = exc

    worker = threading.Thread(target=work, name="agentops-auth-http")
    worker.daemon = True
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        watch.expire()
        worker.join(1.0)  # the worker unwinds once its socket is shut down; never wait longer
        return None, None, True
    return box.get("answer"), box.get("error"), False


def _check_http(check, token, timeout, started, label):
    url = str(check["url"])
    method = str(check.get("method") or "GET").upper()
    expected = _expected_statuses(check)
    secrets = [token, check.get("password")]
    headers = {"User-Agent": "agentops-auth-check/1", "Accept": "application/json, */*"}
    problems = header_errors(check.get("headers") or {}, label)
    if problems:
        return _result(AUTH_FAILED, "%s FAILED: %s; nothing was sent" % (label, "; ".join(problems)), started)
    for key, value in (check.get("headers") or {}).items():
        headers[str(key)] = str(value)
        secrets.append(str(value))
    if has_line_break(token):
        return _result(AUTH_FAILED, "%s FAILED: the token contains a line break (CR/LF) or NUL character (not shown); "
                       "a token is one line (only the final newline of a token file is ignored). Nothing was sent"
                       % label, started)
    if _is_set(check.get("username")):
        password = check.get("password") if _is_set(check.get("password")) else (token or "")
        secrets.append(password)
        pair = ("%s:%s" % (check["username"], password)).encode("utf-8")
        encoded = base64.b64encode(pair).decode("ascii")
        secrets.append(encoded)
        headers["Authorization"] = "Basic " + encoded
    elif _is_set(token):
        headers["Authorization"] = "Bearer " + token
    body = check.get("body")
    data = None
    if body is not None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode("utf-8")
        if not isinstance(body, str):
            headers.setdefault("Content-Type", "application/json")
    too_slow = ("%s UNREACHABLE: %s %s did not answer within %ss; the token was not checked "
                "(network or service problem, not an auth failure)" % (label, method, url, _fmt_seconds(timeout)))
    try:
        request = urllib_request.Request(url, data=data, headers=headers, method=method)
        context = _ssl_context(check)
    except (ValueError, OSError) as exc:
        return _result(AUTH_FAILED, "%s FAILED: the request cannot be built (%s)"
                       % (label, describe_error(exc, secrets)), started)
    answer, error, timed_out = http_exchange(request, context, timeout)
    if timed_out:
        return _result(AUTH_UNREACHABLE, too_slow, started)
    if error is not None:
        reason = error.reason if isinstance(error, urllib_error.URLError) else error
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return _result(AUTH_UNREACHABLE, too_slow, started)
        if isinstance(reason, ssl.SSLError) or "CERTIFICATE" in str(getattr(reason, "reason", "") or "").upper():
            return _result(AUTH_UNREACHABLE, _scrub(
                "%s UNREACHABLE: TLS verification of %s failed (%s); fix the certificate or set ca_path, "
                "the token was not checked" % (label, url, describe_error(reason, secrets)), secrets), started)
        if isinstance(error, urllib_error.URLError):
            shown = describe_error(reason, secrets) if isinstance(reason, BaseException) else bounded_detail(
                reason, secrets)
            return _result(AUTH_UNREACHABLE, _scrub(
                "%s UNREACHABLE: cannot connect to %s (%s); the token was not checked "
                "(network or service problem, not an auth failure)" % (label, url, shown), secrets), started)
        if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit in the worker
            raise error
        return _result(AUTH_UNREACHABLE, _scrub(
            "%s UNREACHABLE: %s %s failed (%s); the token was not checked"
            % (label, method, url, describe_error(error, secrets)), secrets), started)

    code = answer["code"]
    reason = bounded_detail(answer["reason"], secrets, limit=80)
    if 300 <= code < 400 and code not in expected:
        location = bounded_detail(answer["location"] or "?", secrets)
        return _result(AUTH_FAILED, _scrub(
            "%s FAILED: %s %s answered HTTP %d and redirects to %s, which usually means a login page: "
            "the credential was not accepted" % (label, method, url, code, location), secrets),
            started, http_status=code)
    shown = ("%d %s" % (code, reason)).strip()
    if code in expected:
        return _result(AUTH_OK, _scrub("%s OK: %s %s answered HTTP %s" % (label, method, url, shown), secrets),
                       started, http_status=code)
    if code in (401, 403):
        what = "expired, revoked or wrong" if code == 401 else "valid but not allowed to do this (missing scope or permission)"
        return _result(AUTH_FAILED, _scrub(
            "%s FAILED: %s %s answered HTTP %s (expected %s): the credential is %s"
            % (label, method, url, shown, _fmt_list(expected), what), secrets), started, http_status=code)
    if code == 429 or code >= 500:
        return _result(AUTH_UNREACHABLE, _scrub(
            "%s UNREACHABLE: %s %s answered HTTP %s (expected %s): the service is failing or throttling, "
            "the token could not be checked" % (label, method, url, shown, _fmt_list(expected)), secrets),
            started, http_status=code)
    return _result(AUTH_FAILED, _scrub(
        "%s FAILED: %s %s answered HTTP %s (expected %s)" % (label, method, url, shown, _fmt_list(expected)), secrets),
        started, http_status=code)


def _fmt_seconds(value):
    return ("%g" % value) if isinstance(value, float) else str(value)


def _fmt_list(values):
    return " or ".join(str(v) for v in values)


def _b64url_json(segment):
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8"))


def jwt_claims(token):
    """Decode the claims of a JWT without verifying its signature. Raises ValueError."""
    parts = str(token).strip().split(".")
    if len(parts) != 3:
        raise ValueError("it has %d part(s) separated by '.', a JWT has 3" % len(parts))
    try:
        claims = _b64url_json(parts[1])
    except (ValueError, UnicodeError, TypeError):
        raise ValueError("its payload is not base64url-encoded JSON")
    if not isinstance(claims, dict):
        raise ValueError("its payload is not a JSON object")
    return claims


def _iso(timestamp):
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_jwt(check, token, started, label, now=None):
    if not _is_set(token):
        return _result(AUTH_FAILED, "%s FAILED: no token to check (the token or its file is empty)" % label, started)
    try:
        claims = jwt_claims(token)
    except ValueError as exc:
        return _result(AUTH_FAILED, "%s FAILED: the token is not a JWT: %s" % (label, exc), started)
    now = time.time() if now is None else now
    nbf = claims.get("nbf")
    if isinstance(nbf, (int, float)) and not isinstance(nbf, bool) and nbf > now + 60:
        return _result(AUTH_FAILED, "%s FAILED: the token is not valid before %s (in %s)"
                       % (label, _iso(nbf), describe_duration(nbf - now)), started)
    exp = claims.get("exp")
    if exp is None:
        return _result(AUTH_OK, "%s OK: the token has no expiry (no exp claim)" % label, started)
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return _result(AUTH_FAILED, "%s FAILED: the token's exp claim is not a number" % label, started)
    expires_at = _iso(exp)
    remaining = int(exp - now)
    if remaining <= 0:
        return _result(AUTH_FAILED, "%s FAILED: the token expired at %s (%s ago); renew it"
                       % (label, expires_at, describe_duration(remaining)), started,
                       expires_at=expires_at, expires_in=remaining)
    min_valid = parse_timespan(check["min_valid"]) if _is_set(check.get("min_valid")) else 0
    if remaining < min_valid:
        return _result(AUTH_EXPIRING, "%s EXPIRING: the token expires at %s (in %s, less than min_valid %s); renew it soon"
                       % (label, expires_at, describe_duration(remaining), check["min_valid"]), started,
                       expires_at=expires_at, expires_in=remaining)
    return _result(AUTH_OK, "%s OK: the token is valid until %s (%s left)"
                   % (label, expires_at, describe_duration(remaining)), started,
                   expires_at=expires_at, expires_in=remaining)


def minimal_env(extra=None):
    """The fixed environment of commands the collection runs: never the caller's.

    ``PATH`` (system directories only), ``LANG=C.UTF-8``, and ``HOME``/``USER``/``LOGNAME`` of
    the effective user from the password database (``/root`` for root), so no ``PYTHONPATH``,
    ``LD_PRELOAD`` or an agent's ``HOME`` reaches the command.
    """
    uid = os.geteuid()
    home, user = ("/root" if uid == 0 else "/"), None
    if pwd is not None:
        try:
            record = pwd.getpwuid(uid)
        except KeyError:
            record = None
        if record is not None:
            home, user = record.pw_dir or home, record.pw_name
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": home}
    if user:
        env["USER"] = env["LOGNAME"] = user
    env.update(extra or {})
    return env


def _exited_unreaped(proc):
    """True once the child has exited, WITHOUT reaping it where the OS allows (its pid stays reserved)."""
    if not hasattr(os, "waitid"):  # macOS: Popen.poll reaps
        return proc.poll() is not None
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(proc):
    if proc.returncode is not None:  # already reaped: its pid (the group id) may belong to another process now
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_bounded(argv, stdin_data=b"", timeout=DEFAULT_TIMEOUT, env=None, cwd="/", stdout_limit=MAX_COMMAND_OUTPUT,
                stderr_limit=STDERR_TAIL, **popen_kwargs):
    """Run ``argv`` with one overall deadline and bounded output; return a dict.

    - ``env`` defaults to ``minimal_env()`` (never the caller's environment), ``cwd`` to ``/``;
      no file descriptor but the three pipes is inherited; the command is the leader of a new
      session (``start_new_session``), so its whole process group can be killed;
    - ``stdin_data`` is written while stdout and stderr are read (one poll loop, no deadlock);
    - stdout beyond ``stdout_limit`` bytes stops the run (``stdout_overflow``); of stderr only
      the last ``stderr_limit`` bytes are kept (``stderr_truncated`` says something was dropped);
    - at the deadline, or on overflow, the process group is killed and reading STOPS: a
      process that escaped with ``setsid`` and keeps the pipes open cannot hold the caller;
      after the command itself exits, the pipes are drained for at most ``EXIT_GRACE`` seconds.

    Keys: ``returncode`` (None when killed by us), ``stdout``, ``stderr`` (bytes), ``stdout_overflow``,
    ``stderr_truncated``, ``timed_out``, ``elapsed``. Raises OSError when the command cannot start.
    """
    started = time.monotonic()
    deadline = started + timeout
    # The on-host command shares this code and has no AnsibleModule (so no run_command): a bounded Popen.
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,  # pylint: disable=ansible-bad-function
                            stderr=subprocess.PIPE,
                            env=minimal_env() if env is None else env, cwd=cwd, close_fds=True,
                            start_new_session=True, **popen_kwargs)
    out, err = bytearray(), bytearray()
    result = {"returncode": None, "stdout_overflow": False, "stderr_truncated": False, "timed_out": False}
    pending = memoryview(bytes(stdin_data or b""))
    written = 0
    selector = selectors.DefaultSelector()
    pidfd = None
    exited = False
    drain_until = None
    try:
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(proc.pid)
                selector.register(pidfd, selectors.EVENT_READ, "exit")
            except OSError:  # kernel older than 5.3
                pidfd = None
        if pending:
            os.set_blocking(proc.stdin.fileno(), False)
            selector.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
        else:
            proc.stdin.close()
        selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
        selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
        open_pipes = 2
        while open_pipes or not exited:
            now = time.monotonic()
            if now >= deadline:
                result["timed_out"] = not exited
                break
            if drain_until is not None and now >= drain_until:
                break  # the command exited; whatever still holds its pipes is not waited for
            wait = min(deadline, drain_until or deadline) - now
            if pidfd is None and not exited:
                wait = min(wait, 0.05)
            events = selector.select(wait)
            for key, _mask in events:
                if key.data == "exit":
                    selector.unregister(pidfd)
                    exited = True
                elif key.data == "stdin":
                    try:
                        written += os.write(proc.stdin.fileno(), pending[written:written + 65536])
                    except BlockingIOError:
                        continue
                    except OSError:  # EPIPE: the command does not read its input
                        written = len(pending)
                    if written >= len(pending):
                        selector.unregister(proc.stdin)
                        try:
                            proc.stdin.close()
                        except OSError:
                            pass
                else:
                    chunk = os.read(key.fileobj.fileno(), 65536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        open_pipes -= 1
                        continue
                    if key.data == "stdout":
                        room = stdout_limit - len(out)
                        if len(chunk) > room:
                            out += chunk[:max(room, 0)]
                            result["stdout_overflow"] = True
                        else:
                            out += chunk
                    else:
                        err += chunk
                        if len(err) > stderr_limit:
                            del err[:len(err) - stderr_limit]
                            result["stderr_truncated"] = True
            if result["stdout_overflow"]:
                break
            if not exited and pidfd is None:
                exited = _exited_unreaped(proc)
            if exited and open_pipes and drain_until is None:
                drain_until = time.monotonic() + EXIT_GRACE
    finally:
        # Kill what is left of the group while the child is unreaped (its pid cannot be reused yet).
        _kill_group(proc)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # stuck in the kernel; never hold the caller for it
            pass
        selector.close()
        if pidfd is not None:
            os.close(pidfd)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
    if exited and not result["stdout_overflow"]:
        result["returncode"] = proc.returncode
    result.update(stdout=bytes(out), stderr=bytes(err), elapsed=time.monotonic() - started)
    return result


def last_line(data, secrets, truncated=False, limit=MAX_DETAIL):
    """The last non-empty line of a command's output, secrets masked BEFORE it is cut to ``limit``.

    ``truncated`` says ``data`` is the end of a longer output: its first (partial) line is
    dropped, so the cut-off end of a secret before it cannot show.
    """
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    text = mask_text(text, secrets)
    lines = text.splitlines()
    if truncated and len(lines) > 1:
        lines = lines[1:]
    lines = [line.strip() for line in lines if line.strip()]
    if not lines:
        return ""
    return bounded_detail(lines[-1], secrets, limit=limit)


def program_problem(program):
    """Why root may not run ``program`` (the first word of a command check): it lies in a place that a user other
    than root can write (a directory on the way, or a symlink there), so that user could make root run anything.
    None when only root can change it (or it is not an absolute path: then PATH, system directories, finds it)."""
    if not program.startswith("/"):
        return None
    try:
        found = safefile.locate(program)
    except safefile.UnsafeEntry as exc:
        return exc.message if exc.writable else None
    except (OSError, ValueError):
        return None
    with found:
        if found.writable:
            return "%s is in a place that a user other than root can write: root does not run it" % found.path
    return None


def _check_command(check, token, timeout, started, label):
    command = check["command"]
    argv = list(command) if isinstance(command, list) else shlex.split(command)
    shown = command if isinstance(command, str) else " ".join(shlex.quote(p) for p in command)
    refused = program_problem(str(argv[0])) if argv else None
    if refused:
        return _result(AUTH_FAILED, "%s FAILED: %s" % (label, refused), started)
    secrets = [token]
    stdin = ((token or "") + ("\n" if token else "")).encode("utf-8")
    try:
        run = run_bounded(argv, stdin_data=stdin, timeout=timeout, env=minimal_env(), cwd="/")
    except FileNotFoundError:
        return _result(AUTH_FAILED, "%s FAILED: command not found: %s" % (label, argv[0]), started)
    except PermissionError:
        return _result(AUTH_FAILED, "%s FAILED: command is not executable: %s" % (label, argv[0]), started)
    except OSError as exc:
        return _result(AUTH_FAILED, "%s FAILED: cannot run %s (%s)" % (label, argv[0], describe_error(exc, secrets)),
                       started)
    code = run["returncode"]
    if run["timed_out"] or (code is None and not run["stdout_overflow"]):
        return _result(AUTH_UNREACHABLE, "%s UNREACHABLE: `%s` did not finish within %ss; the credential was not checked"
                       % (label, shown, _fmt_seconds(timeout)), started)
    if run["stdout_overflow"]:
        return _result(AUTH_FAILED, "%s FAILED: `%s` printed more than %d KiB; a check command prints a short status"
                       % (label, shown, MAX_COMMAND_OUTPUT // 1024), started)
    stdout = run["stdout"].decode("utf-8", "replace")
    code = code or 0
    if code != 0:
        if run["stderr"].strip():
            tail = last_line(run["stderr"], secrets, truncated=run["stderr_truncated"])
        else:
            tail = last_line(stdout, secrets)
        how = ("exited with %d" % code) if code > 0 else ("was killed by signal %d" % -code)
        return _result(AUTH_FAILED, _scrub("%s FAILED: `%s` %s%s" % (label, shown, how, (": " + tail) if tail else ""),
                                           secrets), started)
    regex = check.get("expect_regex")
    if _is_set(regex) and not re.search(str(regex), stdout, re.M):
        return _result(AUTH_FAILED, "%s FAILED: `%s` succeeded but its output does not match %r"
                       % (label, shown, str(regex)), started)
    return _result(AUTH_OK, "%s OK: `%s` succeeded" % (label, shown), started)


def _check_file(check, started, label, now=None):
    """Existence, mode and age of a file, found with ``agentops_safefile.locate``: a symlink is followed only in a
    directory that root alone can write, so a user who links the path to another file (another agent's
    credential, /etc/shadow) learns nothing about it; the answer names what was found instead."""
    path = check.get("path") if _is_set(check.get("path")) else check.get("token_file")
    try:
        found = safefile.locate(os.path.abspath(str(path)))
    except safefile.UnsafeEntry as exc:
        return _result(AUTH_FAILED, "%s FAILED: %s" % (label, exc.message), started)
    except (OSError, ValueError) as exc:
        return _result(AUTH_FAILED, "%s FAILED: cannot read %s: %s" % (label, path, getattr(exc, "strerror", None)
                                                                        or type(exc).__name__), started)
    with found:
        info = found.st
        writable = found.writable
    if info is None:
        return _result(AUTH_FAILED, "%s FAILED: %s does not exist" % (label, path), started)
    if not stat.S_ISREG(info.st_mode):
        return _result(AUTH_FAILED, "%s FAILED: %s is not a regular file" % (label, path), started)
    if writable and info.st_nlink > 1:
        return _result(AUTH_FAILED, "%s FAILED: %s has %d hard links in a place a user other than root can write "
                       "(not checked: it may be another file's link)" % (label, path, info.st_nlink), started)
    if info.st_size == 0:
        return _result(AUTH_FAILED, "%s FAILED: %s is empty" % (label, path), started)
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return _result(AUTH_FAILED, "%s FAILED: %s has mode %04o, readable by others than its owner; chmod 0600 it"
                       % (label, path, mode), started)
    now = time.time() if now is None else now
    age = max(0, now - info.st_mtime)
    if _is_set(check.get("max_age")):
        max_age = parse_timespan(check["max_age"])
        if age > max_age:
            return _result(AUTH_FAILED, "%s FAILED: %s was last written %s ago, older than max_age %s"
                           % (label, path, describe_duration(age), check["max_age"]), started)
        expires = info.st_mtime + max_age
        return _result(AUTH_OK, "%s OK: %s is present, mode %04o, written %s ago" % (label, path, mode, describe_duration(age)),
                       started, expires_at=_iso(expires), expires_in=int(expires - now))
    return _result(AUTH_OK, "%s OK: %s is present, mode %04o, written %s ago" % (label, path, mode, describe_duration(age)),
                   started)


def run_check(check, token=None, timeout=DEFAULT_TIMEOUT):
    """Run one auth check and return its result dict (never containing the token).

    ``token`` is the secret to present; when it is None the check's own ``token`` or
    ``token_file`` is used. ``timeout`` (seconds) applies unless the check sets ``timeout``.
    Invalid checks come back as AUTH_FAILED with the validation errors as message.
    """
    started = time.monotonic()
    label = check_label(check)
    errors = validate_check(check, token_given=token is not None)
    if errors:
        return _result(AUTH_FAILED, "; ".join(errors), started)
    if _is_set(check.get("timeout")):
        timeout = parse_timespan(check["timeout"])
    ctype = check["type"]
    if ctype == "file":
        return _check_file(check, started, label)
    if token is None:
        if _is_set(check.get("token")):
            token = str(check["token"])
        elif _is_set(check.get("token_file")):
            try:
                token = read_token_file(check["token_file"])
            except OSError as exc:
                return _result(AUTH_FAILED, "%s FAILED: cannot read token_file %s: %s"
                               % (label, check["token_file"], exc.strerror or type(exc).__name__), started)
            except UnicodeError:
                return _result(AUTH_FAILED, "%s FAILED: token_file %s is not text" % (label, check["token_file"]), started)
    source = None
    if _is_set(check.get("credential")):
        source = "credential %r" % check["credential"]
    elif _is_set(check.get("token_file")):
        source = "token_file %s" % check["token_file"]
    elif "token" in check:
        source = "token"
    if source and not _is_set(token) and not _is_set(check.get("password")):
        return _result(AUTH_FAILED, "%s FAILED: %s is empty: there is no token to check" % (label, source), started)
    if has_line_break(token):
        return _result(AUTH_FAILED, "%s FAILED: the token%s contains a line break (CR/LF) or NUL character "
                       "(not shown); a token is one line (only the final newline of a token file is ignored). "
                       "Nothing was sent" % (label, (" (%s)" % source) if source else ""), started)
    if ctype == "http":
        return _check_http(check, token, timeout, started, label)
    if ctype == "jwt":
        return _check_jwt(check, token, started, label)
    return _check_command(check, token, timeout, started, label)


def passed(check, result):
    """True when the result lets the agent run: OK, or EXPIRING without fail_on_expiring."""
    if result["status"] == AUTH_OK:
        return True
    return result["status"] == AUTH_EXPIRING and not check.get("fail_on_expiring")
