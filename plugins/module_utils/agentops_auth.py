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
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import datetime
import json
import os
import re
import shlex
import socket
import ssl
import stat
import subprocess
import time

try:  # Python 3 (managed hosts and controllers); the module is never run on Python 2
    from urllib import error as urllib_error
    from urllib import request as urllib_request
except ImportError:  # pragma: no cover
    urllib_error = None
    urllib_request = None

from .agentops_timespan import parse_timespan

AUTH_OK = "AUTH_OK"
AUTH_EXPIRING = "AUTH_EXPIRING"
AUTH_FAILED = "AUTH_FAILED"
AUTH_UNREACHABLE = "AUTH_UNREACHABLE"
STATUSES = (AUTH_OK, AUTH_EXPIRING, AUTH_FAILED, AUTH_UNREACHABLE)

CHECK_TYPES = ("http", "jwt", "command", "file")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
DEFAULT_TIMEOUT = 10
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
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


def validate_check(check, token_sources=("token", "token_file", "credential"), token_given=False):
    """Return a list of error strings (empty when the check is valid).

    Each error names the check so a person can find it in the inventory.
    ``token_sources`` lists the keys that may provide the token (the module has no
    ``credential``; the on-host command resolves it). ``token_given`` says the caller
    provides the token itself (``run_check(check, token=...)``).
    """
    if not isinstance(check, dict):
        return ["an auth check must be a mapping, got %s" % type(check).__name__]
    errors = []
    label = check_label(check)
    unknown = sorted(k for k in check if k not in KNOWN_KEYS)
    if unknown:
        errors.append("%s: unknown key(s) %s (known: %s)" % (label, ", ".join(unknown), ", ".join(sorted(KNOWN_KEYS))))
    name = check.get("name")
    if not _is_set(name):
        errors.append("%s: 'name' is required" % label)
    elif not isinstance(name, str) or not _NAME.match(name):
        errors.append("%s: 'name' must match %s" % (label, _NAME.pattern))
    ctype = check.get("type")
    if ctype not in CHECK_TYPES:
        errors.append("%s: unknown type %r (use one of: %s)" % (label, ctype, ", ".join(CHECK_TYPES)))
        return errors
    given = [k for k in ("token", "token_file", "credential") if _is_set(check.get(k))]
    if len(given) > 1:
        errors.append("%s: set only one of %s, not both (got %s)" % (
            label, " / ".join(token_sources), " and ".join(given)))
    for key in given:
        if key not in token_sources:
            errors.append("%s: %r is not supported here (use one of: %s)" % (label, key, ", ".join(token_sources)))
    if _is_set(check.get("token_file")) and not os.path.isabs(str(check["token_file"])):
        errors.append("%s: 'token_file' must be an absolute path, got %r" % (label, check["token_file"]))

    if ctype == "http":
        url = check.get("url")
        if not _is_set(url):
            errors.append("%s: type http needs 'url'" % label)
        elif not re.match(r"^https?://[^/\s]+", str(url)):
            errors.append("%s: 'url' must start with http:// or https:// and name a host, got %r" % (label, url))
        method = str(check.get("method") or "GET").upper()
        if method not in HTTP_METHODS:
            errors.append("%s: unknown HTTP method %r (use one of: %s)" % (label, check.get("method"), ", ".join(HTTP_METHODS)))
        headers = check.get("headers")
        if headers is not None and not isinstance(headers, dict):
            errors.append("%s: 'headers' must be a mapping of header name to value" % label)
        try:
            _expected_statuses(check)
        except ValueError as exc:
            errors.append("%s: %s" % (label, exc))
        if _is_set(check.get("password")) and not _is_set(check.get("username")):
            errors.append("%s: 'password' needs 'username' (basic auth)" % label)
        if _is_set(check.get("ca_path")) and not os.path.isabs(str(check["ca_path"])):
            errors.append("%s: 'ca_path' must be an absolute path, got %r" % (label, check["ca_path"]))
    elif ctype == "jwt":
        if not given and not token_given:
            errors.append("%s: type jwt needs the token (%s)" % (label, " or ".join(token_sources)))
    elif ctype == "command":
        command = check.get("command")
        if not _is_set(command) or (isinstance(command, list) and not command):
            errors.append("%s: type command needs 'command'" % label)
        elif isinstance(command, list):
            if not all(isinstance(part, str) for part in command):
                errors.append("%s: 'command' as a list must hold strings only" % label)
        elif not isinstance(command, str):
            errors.append("%s: 'command' must be a string or a list of strings" % label)
        else:
            try:
                shlex.split(command)
            except ValueError as exc:
                errors.append("%s: 'command' cannot be parsed: %s" % (label, exc))
    elif ctype == "file":
        path_sources = [k for k in ("path", "token_file", "credential")
                        if _is_set(check.get(k)) and k in tuple(token_sources) + ("path",)]
        if not path_sources:
            errors.append("%s: type file needs 'path' (or %s)" % (label, " or ".join(s for s in token_sources if s != "token")))
        if _is_set(check.get("path")) and not os.path.isabs(str(check["path"])):
            errors.append("%s: 'path' must be an absolute path, got %r" % (label, check["path"]))
        if _is_set(check.get("token")):
            errors.append("%s: type file checks a file; 'token' makes no sense here" % label)

    if _is_set(check.get("expect_regex")):
        try:
            re.compile(str(check["expect_regex"]))
        except re.error as exc:
            errors.append("%s: 'expect_regex' is not a valid regular expression: %s" % (label, exc))
    for key in ("min_valid", "max_age", "timeout"):
        if _is_set(check.get(key)):
            try:
                seconds = parse_timespan(check[key])
            except ValueError as exc:
                errors.append("%s: %r is not a time span (e.g. 30s, 7d): %s" % (label, key, exc))
            else:
                if key == "timeout" and seconds <= 0:
                    errors.append("%s: 'timeout' must be more than 0" % label)
    for key in ("validate_certs", "fail_on_expiring"):
        if check.get(key) is not None and not isinstance(check[key], bool):
            errors.append("%s: %r must be true or false, got %r" % (label, key, check[key]))
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


def _scrub(text, secrets):
    """Remove every secret (and its obvious encodings) from a text meant for people."""
    text = str(text)
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "********")
    return text


def read_token_file(path):
    """Return the content of a token file without its final newline."""
    with open(path, "r", encoding="utf-8") as handle:
        return handle.read().rstrip("\r\n")


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


def _ssl_context(check):
    if check.get("validate_certs") is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    ca_path = check.get("ca_path")
    if _is_set(ca_path):
        if os.path.isdir(ca_path):
            return ssl.create_default_context(capath=ca_path)
        return ssl.create_default_context(cafile=ca_path)
    return ssl.create_default_context()


def _check_http(check, token, timeout, started, label):
    url = str(check["url"])
    method = str(check.get("method") or "GET").upper()
    expected = _expected_statuses(check)
    secrets = [token, check.get("password")]
    headers = {"User-Agent": "agentops-auth-check/1", "Accept": "application/json, */*"}
    for key, value in (check.get("headers") or {}).items():
        headers[str(key)] = str(value)
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
    request = urllib_request.Request(url, data=data, headers=headers, method=method)
    handlers = [_NoRedirect(), urllib_request.HTTPSHandler(context=_ssl_context(check))]
    opener = urllib_request.build_opener(*handlers)
    try:
        try:
            response = opener.open(request, timeout=timeout)
            code = response.getcode()
            response.close()
            reason = getattr(response, "reason", "") or ""
        except urllib_error.HTTPError as exc:
            code = exc.code
            reason = exc.reason or ""
            location = exc.headers.get("Location") if exc.headers else None
            exc.close()
            if 300 <= code < 400 and code not in expected:
                return _result(AUTH_FAILED, _scrub(
                    "%s FAILED: %s %s answered HTTP %d and redirects to %s, which usually means a login page: "
                    "the credential was not accepted" % (label, method, url, code, location or "?"), secrets),
                    started, http_status=code)
    except (socket.timeout, TimeoutError):
        return _result(AUTH_UNREACHABLE, "%s UNREACHABLE: %s %s did not answer within %ss; "
                       "the token was not checked (network or service problem, not an auth failure)"
                       % (label, method, url, _fmt_seconds(timeout)), started)
    except urllib_error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLError) or "CERTIFICATE" in str(reason).upper():
            return _result(AUTH_UNREACHABLE, _scrub(
                "%s UNREACHABLE: TLS verification of %s failed (%s); fix the certificate or set ca_path, "
                "the token was not checked" % (label, url, reason), secrets), started)
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return _result(AUTH_UNREACHABLE, "%s UNREACHABLE: %s %s did not answer within %ss; "
                           "the token was not checked (network or service problem, not an auth failure)"
                           % (label, method, url, _fmt_seconds(timeout)), started)
        return _result(AUTH_UNREACHABLE, _scrub(
            "%s UNREACHABLE: cannot connect to %s (%s); the token was not checked "
            "(network or service problem, not an auth failure)" % (label, url, reason), secrets), started)
    except (OSError, ValueError) as exc:  # connection reset, bad status line, ...
        return _result(AUTH_UNREACHABLE, _scrub(
            "%s UNREACHABLE: %s %s failed: %s; the token was not checked" % (label, method, url, exc), secrets), started)

    shown = ("%d %s" % (code, reason)).strip()
    if code in expected:
        return _result(AUTH_OK, "%s OK: %s %s answered HTTP %s" % (label, method, url, shown), started, http_status=code)
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


def _check_command(check, token, timeout, started, label):
    command = check["command"]
    argv = list(command) if isinstance(command, list) else shlex.split(command)
    shown = command if isinstance(command, str) else " ".join(shlex.quote(p) for p in command)
    env = dict(os.environ)
    env.pop("AGENTOPS_TOKEN", None)
    try:
        proc = subprocess.run(argv, input=(token or "") + ("\n" if token else ""), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout, check=False,
                              universal_newlines=True, env=env)
    except FileNotFoundError:
        return _result(AUTH_FAILED, "%s FAILED: command not found: %s" % (label, argv[0]), started)
    except PermissionError:
        return _result(AUTH_FAILED, "%s FAILED: command is not executable: %s" % (label, argv[0]), started)
    except subprocess.TimeoutExpired:
        return _result(AUTH_UNREACHABLE, "%s UNREACHABLE: `%s` did not finish within %ss; the credential was not checked"
                       % (label, shown, _fmt_seconds(timeout)), started)
    secrets = [token]
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()
        tail = (": " + detail[-1][:200]) if detail else ""
        return _result(AUTH_FAILED, _scrub("%s FAILED: `%s` exited with %d%s" % (label, shown, proc.returncode, tail), secrets),
                       started)
    regex = check.get("expect_regex")
    if _is_set(regex) and not re.search(str(regex), proc.stdout or "", re.M):
        return _result(AUTH_FAILED, "%s FAILED: `%s` succeeded but its output does not match %r"
                       % (label, shown, str(regex)), started)
    return _result(AUTH_OK, "%s OK: `%s` succeeded" % (label, shown), started)


def _check_file(check, started, label, now=None):
    path = check.get("path") if _is_set(check.get("path")) else check.get("token_file")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return _result(AUTH_FAILED, "%s FAILED: %s does not exist" % (label, path), started)
    except OSError as exc:
        return _result(AUTH_FAILED, "%s FAILED: cannot read %s: %s" % (label, path, exc.strerror or exc), started)
    if not stat.S_ISREG(info.st_mode):
        return _result(AUTH_FAILED, "%s FAILED: %s is not a regular file" % (label, path), started)
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
                               % (label, check["token_file"], exc.strerror or exc), started)
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
