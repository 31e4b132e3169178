"""Small state helpers of the on-host command: atomic JSON files and locks.

Every state file is written to a temporary file in the same directory, flushed,
fsync'ed and renamed over the target, so a crash or a reboot leaves either the
old or the new content, never a torn file.
"""
import contextlib
import fcntl
import json
import os
import tempfile


def ensure_dir(path, mode=0o700):
    """Create ``path`` (and parents) if missing; return it."""
    os.makedirs(path, mode=mode, exist_ok=True)
    return path


def read_json(path, default=None):
    """Return the JSON content of ``path`` or ``default`` when missing or unreadable."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return json.load(handle)
    except (FileNotFoundError, ValueError):
        return default


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
