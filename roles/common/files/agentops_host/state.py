"""Small state helpers of the on-host command: atomic JSON files and locks.

Every state file is written to a temporary file in the same directory, flushed,
fsync'ed and renamed over the target, so a crash or a reboot leaves either the
old or the new content, never a torn file.

State files are read with a bound (``MAX_JSON_BYTES``), only when they are regular files, and
deep nesting (RecursionError) counts as malformed like any invalid JSON. ``read_json`` turns a
malformed file into its default; ``load_object`` raises ``StateError`` naming the file and the
reason, for callers that report a broken file (``agentops status``, ``agentops rotate --list``).
"""
import contextlib
import fcntl
import json
import os
import tempfile

from agentops_host import config as hostconfig


def ensure_dir(path, mode=0o700):
    """Create ``path`` (and parents) if missing; return it."""
    os.makedirs(path, mode=mode, exist_ok=True)
    return path


MAX_JSON_BYTES = 1024 * 1024


class StateError(Exception):
    """A state file exists but cannot be used; the message names the file and why."""


def _describe_type(value):
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {type(None): "null", str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _load(path):
    """The JSON content of ``path``; FileNotFoundError when absent, StateError when unusable.

    The bounded, non-blocking read and the JSON parsing are config.py's (one implementation).
    """
    try:
        return hostconfig.parse_json(hostconfig.read_bounded(path, MAX_JSON_BYTES), path)
    except hostconfig.ConfigError as exc:
        raise StateError(str(exc))


def read_json(path, default=None, expect=None):
    """Return the JSON content of ``path`` or ``default`` when missing or unreadable.

    With ``expect`` (a type such as ``dict``), content of another type also gives ``default``.
    """
    try:
        data = _load(path)
    except (FileNotFoundError, StateError):
        return default
    if expect is not None and not isinstance(data, expect):
        return default
    return data


def load_object(path):
    """The JSON object in ``path``: {} when the file is absent, StateError when it is not a usable object."""
    try:
        data = _load(path)
    except FileNotFoundError:
        return {}
    if not isinstance(data, dict):
        raise StateError("%s must hold a JSON object, not %s" % (path, _describe_type(data)))
    return data


def write_json(path, data, mode=0o600):
    """Write ``data`` as JSON to ``path`` atomically (temp file + fsync + rename)."""
    directory = os.path.dirname(path) or "."
    ensure_dir(directory)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            json.dump(data, handle, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def fsync_dir(directory):
    """fsync a directory so a rename or unlink in it survives a power loss."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove(path):
    """Remove ``path`` if it exists; return True when something was removed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_dir(os.path.dirname(path) or ".")
    return True


@contextlib.contextmanager
def locked(path):
    """Hold an exclusive flock on ``path`` (created 0600) for the duration of the block."""
    ensure_dir(os.path.dirname(path) or ".")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
