# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)
"""Root reading, changing and replacing files in directories that an agent can write.

Standard library only. Shared by the collection's modules (``agent_files``, ``agent_audit``) and by the
on-host command, which imports it as ``agentops_lib.agentops_safefile``.

An agent owns its state directory (``/var/lib/agentops/<name>``, 0700) and can replace any entry in it at
any instant - between two system calls of root - by a symlink (to ``/etc/shadow``, to a root-only
credential), a FIFO, a 64 GiB sparse file, a directory or a hard link. So root never uses a path below such
a directory twice:

* a directory is opened as a file descriptor one component at a time with ``O_DIRECTORY|O_NOFOLLOW``
  (``open_dir``); a symlink is followed only when it sits in a directory that only root can write
  (``/var/run -> /run``), never in a directory another user can write;
* an entry is opened once, relative to that directory fd, with ``O_NOFOLLOW|O_NONBLOCK|O_NOCTTY|O_CLOEXEC``
  (``open_file``): a symlink fails to open, a FIFO or a leased file never blocks; ``fstat`` on the open fd
  decides (a regular file, one link, under the size cap);
* content is read with a bound (``read_bounded``: never more than the cap plus one byte, even when the file
  grows while it is read); owner and mode are changed through the fd (``fix_attrs``);
* a file is replaced by a new one created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` next to it and renamed over
  it (``replace_file``): a rename replaces a symlink itself and never follows it;
* only the metadata of an entry: ``stat_path``/``regular_mtime`` (``lstat`` relative to a directory fd);
* a path root would follow as a whole (an agent's command, a token path): ``locate`` follows symlinks only in
  directories that root alone can write, says whether a user other than root can write any directory on the
  way (``writable``), and gives the entry's type before anything opens it.

Every refusal raises ``UnsafeEntry`` naming the path and what was found there (``found``: ``symlink``,
``fifo``, ``directory``, ``not a regular file``, ``not a directory``, ``too large``, ``hard link``,
``busy``, ``outside the directory``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import binascii
import errno
import os
import stat

DEFAULT_MAX_BYTES = 1024 * 1024
MAX_SYMLINKS = 40
_RETRIES = 5
_CHUNK = 64 * 1024

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_NOCTTY = getattr(os, "O_NOCTTY", 0)

DIR_FLAGS = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_NOCTTY | _O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_NOCTTY | _O_CLOEXEC

TEMP_PREFIX = ".agentops-"

_TEXT = {
    "symlink": "is a symlink (not followed)",
    "fifo": "is a FIFO (not read)",
    "directory": "is a directory where a file belongs",
    "not a regular file": "is not a regular file",
    "not a directory": "is not a directory",
    "too large": "is too large",
    "hard link": "has more than one hard link (not read or changed: it may be another file's link)",
    "busy": "is held by a lease (not read)",
    "outside the directory": "leaves the directory it is relative to",
}


class UnsafeEntry(Exception):
    """An entry that root does not follow, open or read. ``found`` says what was there.

    ``writable`` (set by ``locate``): True when the entry sits in a place that a user other than root can
    write (a symlink there always does), False when every directory on the way is root's, None when unknown.
    """

    def __init__(self, path, found, detail="", writable=None):
        self.path = path
        self.found = found
        self.detail = detail
        self.writable = writable
        Exception.__init__(self, self.message)

    @property
    def reason(self):
        """What is wrong, without the path: ``is not a regular file: a fifo``."""
        text = _TEXT.get(self.found, "is unsafe (%s)" % self.found)
        return "%s: %s" % (text, self.detail) if self.detail else text

    @property
    def message(self):
        return "%s %s" % (self.path, self.reason)

    def as_dict(self):
        return {"path": self.path, "found": self.found, "message": self.message}


def kind_of(mode):
    """``found`` value for an entry's ``st_mode`` (``regular file`` for a regular file)."""
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISDIR(mode):
        return "directory"
    return "not a regular file"


def _detail_of(mode):
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    return ""


def is_trusted_dir(st):
    """True when only root (or the user running this code) can add, remove or rename entries in it."""
    return st.st_uid in (0, os.geteuid()) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def replaceable(dir_st, entry_st=None):
    """True when a user other than root (or the current user) can replace the entry ``entry_st`` (an ``lstat``;
    None: an entry that does not exist yet, which anyone who can write the directory can create) of the
    directory ``dir_st``. In a sticky directory of root's (``/tmp``) an entry of root's can be renamed or removed
    by root alone, so it stays where it is."""
    if is_trusted_dir(dir_st):
        return False
    trusted = (0, os.geteuid())
    return not (entry_st is not None and dir_st.st_mode & stat.S_ISVTX and dir_st.st_uid in trusted
                and entry_st.st_uid in trusted)


def agent_writable(dir_fd):
    """True when someone other than root (or the current user) can replace entries of the directory ``dir_fd``."""
    return not is_trusted_dir(os.fstat(dir_fd))


def _join(shown, name):
    return os.path.normpath(os.path.join(shown, name))


def _split(path):
    return [part for part in path.split("/") if part not in ("", ".")]


def _walk(start_fd, display, parts, strict):
    """Open ``parts`` one by one below ``start_fd`` (which this function closes); return the last fd."""
    current = start_fd
    shown = display
    stack = list(reversed(parts))
    links = 0
    retries = 0
    try:
        while stack:
            name = stack.pop()
            if name == "..":
                if strict:
                    raise UnsafeEntry(_join(shown, name), "outside the directory")
                nxt = os.open("..", DIR_FLAGS, dir_fd=current)
                os.close(current)
                current, shown = nxt, _join(shown, name)
                continue
            try:
                nxt = os.open(name, DIR_FLAGS, dir_fd=current)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                here = _join(shown, name)
                st = os.stat(name, dir_fd=current, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    # replaced by a directory between the two calls: try again, a bounded number of times
                    retries += 1
                    if retries > _RETRIES:
                        raise UnsafeEntry(here, "not a directory", "it keeps changing")
                    stack.append(name)
                    continue
                if not stat.S_ISLNK(st.st_mode):
                    raise UnsafeEntry(here, "not a directory", "a %s" % kind_of(st.st_mode))
                if strict or not is_trusted_dir(os.fstat(current)):
                    raise UnsafeEntry(here, "symlink", "in a directory that a user other than root can write")
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), here)
                target = os.readlink(name, dir_fd=current)
                nxt = os.open("/", DIR_FLAGS) if target.startswith("/") else os.dup(current)
                os.close(current)
                current = nxt
                shown = "/" if target.startswith("/") else shown
                stack.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
                continue
            os.close(current)
            current, shown = nxt, _join(shown, name)
        return current
    except BaseException:
        os.close(current)
        raise


def open_dir(path, root=None):
    """Directory fd (``O_RDONLY|O_DIRECTORY``) of ``path``; close it with ``os.close``.

    Without ``root``, ``path`` is absolute and walked from ``/`` one component at a time with ``O_NOFOLLOW``:
    a symlink is followed only when the directory holding it can be written by root alone; any other symlink
    (one in an agent's directory) raises ``UnsafeEntry``. With ``root`` (a trusted directory path, or a
    directory fd that stays open), ``path`` is relative to it (or absolute below it) and every component
    below ``root`` must be a real directory: no symlink, no ``..``.
    Raises ``OSError`` (``ENOENT``) when a component is missing.
    """
    if root is None:
        if not os.path.isabs(path):
            raise ValueError("open_dir: %r is not an absolute path" % (path,))
        return _walk(os.open("/", DIR_FLAGS), "/", _split(os.path.normpath(path)), strict=False)
    if isinstance(root, int):
        start, shown = os.dup(root), "."
    else:
        start, shown = open_dir(root), root
    if os.path.isabs(path):
        relative = os.path.relpath(os.path.normpath(path), os.path.normpath(shown))
        if relative == ".." or relative.startswith("../"):
            os.close(start)
            raise UnsafeEntry(path, "outside the directory", "not below %s" % shown)
    else:
        relative = path
    return _walk(start, shown, _split(relative), strict=True)


class Located(object):
    """Where ``locate`` found a path - or where it stopped. Close it (``close()``, or use it in ``with``).

    * ``dir_fd``: the directory holding the entry (when the entry is missing: the deepest directory reached);
    * ``name``: the entry's name in that directory;
    * ``path``: the path reached, with the symlinks that were followed (all in root-only directories) resolved;
    * ``st``: ``lstat`` of the entry - never a symlink - or None when it does not exist;
    * ``writable``: True when a user other than root can replace the entry or a directory on the way (each in the
      directory holding it: one another user can write, where a sticky directory of root's keeps root's
      entries); when the entry is missing, True when such a user could create it;
    * ``links``: the symlinks followed on the way (paths), each in a directory only root can write;
    * ``dirs``: the ``fstat`` of every directory opened on the way, from ``/`` (for permission checks);
    * ``missing``: the first component that does not exist (a path), None when the entry exists.
    """

    def __init__(self, dir_fd, name, path, st, writable, links, dirs, missing=None):
        self.dir_fd = dir_fd
        self.name = name
        self.path = path
        self.st = st
        self.writable = writable
        self.links = links
        self.dirs = dirs
        self.missing = missing

    def close(self):
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def open(self, max_bytes=DEFAULT_MAX_BYTES, hardlinks=False):
        """(fd, fstat) of the entry, which must be a regular file: ``open_file`` relative to ``dir_fd``."""
        if self.st is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), self.missing or self.path)
        try:
            return open_file(self.dir_fd, self.name, self.path, max_bytes, hardlinks)
        except UnsafeEntry as exc:
            if exc.writable is None:
                exc.writable = self.writable
            raise


def locate(path, max_links=MAX_SYMLINKS):
    """Find the absolute ``path`` the way root may follow it; return a ``Located`` (close it).

    The path is walked from ``/`` one component at a time, each directory opened with ``O_NOFOLLOW``
    relative to the one before. A symlink - a directory on the way or the entry itself - is followed only
    when no user but root can replace it: in a directory only root can write (``/bin -> usr/bin``,
    ``/usr/bin/node -> /etc/alternatives/node``), or root's own in a sticky directory of root's; at most
    ``max_links`` of them. A symlink another user can replace raises ``UnsafeEntry`` (``symlink``, ``writable``
    True) without being read.
    Nothing is opened but directories: the entry's type is in ``st`` (from ``lstat``) before anything opens
    it (``Located.open``), so a device node or a FIFO is never opened. A missing component is not an error
    (``missing``); a component on the way that is not a directory raises ``UnsafeEntry`` (``not a
    directory``). Every ``UnsafeEntry`` raised here says in ``writable`` whether its place can be written by
    a user other than root.
    """
    if not os.path.isabs(path):
        raise ValueError("locate: %r is not an absolute path" % (path,))
    stack = list(reversed(_split(os.path.normpath(path))))
    if not stack:
        raise ValueError("locate: %r names no entry" % (path,))
    current = os.open("/", DIR_FLAGS)
    shown = "/"
    here_st = os.fstat(current)
    dirs = [here_st]
    writable = False
    links = []
    retries = 0
    try:
        while stack:
            name = stack.pop()
            here = _join(shown, name)
            if name == "..":
                nxt = os.open("..", DIR_FLAGS, dir_fd=current)
                os.close(current)
                current, shown, here_st = nxt, here, os.fstat(nxt)
                dirs.append(here_st)
                if not stack:
                    raise UnsafeEntry(here, "directory", writable=writable)
                continue
            try:
                st = os.stat(name, dir_fd=current, follow_symlinks=False)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                writable = writable or replaceable(here_st)
                rest = [name] + list(reversed(stack))
                found = Located(current, name, os.path.join(shown, *rest), None, writable, links, dirs, missing=here)
                current = None
                return found
            if replaceable(here_st, st):
                writable = True
                if stat.S_ISLNK(st.st_mode):
                    raise UnsafeEntry(here, "symlink", "in a directory that a user other than root can write",
                                      writable=True)
            if stat.S_ISLNK(st.st_mode):
                if len(links) >= max_links:
                    raise UnsafeEntry(here, "symlink", "more than %d symlinks on the way" % max_links,
                                      writable=writable)
                target = os.readlink(name, dir_fd=current)
                links.append(here)
                if target.startswith("/"):
                    nxt = os.open("/", DIR_FLAGS)
                    os.close(current)
                    current, shown, here_st = nxt, "/", os.fstat(nxt)
                    dirs.append(here_st)
                parts = _split(target)
                if not parts:
                    raise UnsafeEntry(here, "directory", writable=writable)
                stack.extend(reversed(parts))
                continue
            if not stack:
                found = Located(current, name, here, st, writable, links, dirs)
                current = None
                return found
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeEntry(here, "not a directory", "a %s" % kind_of(st.st_mode), writable=writable)
            try:
                nxt = os.open(name, DIR_FLAGS, dir_fd=current)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                    raise
                nxt = None
            if nxt is not None:
                nxt_st = os.fstat(nxt)
                if (nxt_st.st_dev, nxt_st.st_ino) != (st.st_dev, st.st_ino):
                    os.close(nxt)
                    nxt = None
            if nxt is None:
                # replaced between lstat and open: look again, a bounded number of times
                retries += 1
                if retries > _RETRIES:
                    raise UnsafeEntry(here, "not a directory", "it keeps changing", writable=writable)
                stack.append(name)
                continue
            os.close(current)
            current, shown, here_st = nxt, here, nxt_st
            dirs.append(here_st)
        raise ValueError("locate: %r names no entry" % (path,))  # pragma: no cover - the loop returns
    except BaseException:
        if current is not None:
            os.close(current)
        raise


def check_regular(st, path, max_bytes=DEFAULT_MAX_BYTES, hardlinks=False):
    """Raise ``UnsafeEntry`` unless ``st`` (an ``fstat``/``lstat`` result) is a regular file within the limits."""
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeEntry(path, kind_of(st.st_mode), _detail_of(st.st_mode))
    if not hardlinks and st.st_nlink > 1:
        raise UnsafeEntry(path, "hard link", "%d links" % st.st_nlink)
    if max_bytes is not None and st.st_size > max_bytes:
        raise UnsafeEntry(path, "too large", "%d bytes, limit %d" % (st.st_size, max_bytes))


def open_file(dir_fd, name, path=None, max_bytes=DEFAULT_MAX_BYTES, hardlinks=False):
    """(fd, fstat) of the regular file ``name`` in ``dir_fd``, opened read-only without following a symlink.

    Anything ``lstat`` does not report as a regular file is never opened; the ``fstat`` of the open fd must
    be a regular file with one link (unless ``hardlinks``) and at most ``max_bytes`` (``None``: no cap)
    long. Raises ``UnsafeEntry``, or ``OSError`` (``ENOENT``) when the entry does not exist.
    """
    path = path or name
    if "/" in name or name in ("", ".", ".."):
        raise ValueError("open_file: %r is not a directory entry" % (name,))
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    check_regular(st, path, None, True)
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeEntry(path, "symlink")
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise UnsafeEntry(path, "busy")
        if exc.errno == errno.ENXIO:
            raise UnsafeEntry(path, "not a regular file", "a socket")
        raise
    try:
        st = os.fstat(fd)
        check_regular(st, path, max_bytes, hardlinks)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_bounded(fd, max_bytes=DEFAULT_MAX_BYTES, path="file"):
    """Read ``fd`` from its current offset to the end, never more than ``max_bytes + 1`` bytes.

    Raises ``UnsafeEntry`` (``too large``) when there is more than ``max_bytes``.
    """
    chunks = []
    total = 0
    while total <= max_bytes:
        data = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
        if not data:
            break
        chunks.append(data)
        total += len(data)
    if total > max_bytes:
        raise UnsafeEntry(path, "too large", "more than %d bytes" % max_bytes)
    return b"".join(chunks)


def read_file(dir_fd, name, path=None, max_bytes=DEFAULT_MAX_BYTES, hardlinks=False):
    """Content (bytes) of the regular file ``name`` in ``dir_fd``: ``open_file`` then ``read_bounded``."""
    fd, dummy = open_file(dir_fd, name, path, max_bytes, hardlinks)
    try:
        return read_bounded(fd, max_bytes, path or name)
    finally:
        os.close(fd)


def _parent_fd(path, base):
    """(dir fd, entry name, shown path) of ``path``; relative paths are below ``base`` and walked strictly."""
    if os.path.isabs(path):
        shown = os.path.normpath(path)
        directory, name = os.path.split(shown)
        if base is not None:
            return open_dir(directory, base), name, shown
        return open_dir(directory), name, shown
    if base is None:
        raise ValueError("%r is relative and no base directory was given" % (path,))
    parts = _split(path)
    if not parts:
        raise UnsafeEntry(path, "not a regular file", "no file name")
    shown = os.path.join(base, *parts) if not isinstance(base, int) else path
    if ".." in parts:
        raise UnsafeEntry(shown, "outside the directory")
    return open_dir("/".join(parts[:-1]) or ".", base), parts[-1], shown


def read_path(path, base=None, max_bytes=DEFAULT_MAX_BYTES, hardlinks=False):
    """Content (bytes) of ``path`` (absolute, or relative to the directory ``base``), see ``read_file``."""
    dir_fd, name, shown = _parent_fd(path, base)
    try:
        return read_file(dir_fd, name, shown, max_bytes, hardlinks)
    finally:
        os.close(dir_fd)


def _lstat(path, base):
    dir_fd, name, shown = _parent_fd(path, base)
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False), shown
    finally:
        os.close(dir_fd)


def stat_path(path, base=None):
    """``lstat`` of ``path`` (absolute, or relative to ``base``, which may hold subdirectories).

    The directories on the way are opened with ``open_dir`` (no symlink followed in an agent-writable one;
    every directory below ``base`` must be a real one); the entry itself is never followed.
    Raises ``UnsafeEntry`` or ``OSError`` (``ENOENT``).
    """
    return _lstat(path, base)[0]


def regular_mtime(path, base=None):
    """Modification time of the regular file ``path`` (as for ``stat_path``); None when it does not exist.

    Raises ``UnsafeEntry`` for a symlink (the entry or a directory on the way), a FIFO, a directory, ...
    """
    try:
        st, shown = _lstat(path, base)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    check_regular(st, shown, None, True)
    return st.st_mtime


def fix_attrs(fd, st, mode, uid=None, gid=None, apply=True):
    """Give the open file or directory ``fd`` (``st``: its fstat) owner ``uid:gid`` and ``mode``, through the fd.

    ``uid`` None means "owner unknown yet" and counts as a change. Returns True when something differs
    (and, with ``apply``, was changed).
    """
    owner_differs = uid is None or (st.st_uid, st.st_gid) != (uid, gid)
    mode_differs = stat.S_IMODE(st.st_mode) != mode
    if apply and uid is not None and owner_differs:
        os.fchown(fd, uid, gid)
    if apply and (mode_differs or (owner_differs and uid is not None)):
        os.fchmod(fd, mode)  # after fchown, which may clear set-id bits
    return owner_differs or mode_differs


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def replace_file(dir_fd, name, content, mode, uid=None, gid=None, replace=True):
    """Atomically make ``name`` in ``dir_fd`` a regular file holding ``content`` (bytes).

    A temporary file is created next to it with ``O_CREAT|O_EXCL|O_NOFOLLOW``, given its owner and mode
    through the fd, written, fsync'ed and renamed over ``name``: whatever ``name`` was (a symlink, a FIFO,
    a huge file, another file's hard link) is replaced, never followed or opened. A directory at ``name``
    makes the rename fail (``OSError``); nothing below it is touched.
    With ``replace=False`` the file is only created: linked to ``name`` (which fails with ``EEXIST`` when
    anything appeared there meanwhile, so an entry the agent just wrote is never overwritten).
    """
    if "/" in name or name in ("", ".", ".."):
        raise ValueError("replace_file: %r is not a directory entry" % (name,))
    for dummy in range(_RETRIES):
        tmp = TEMP_PREFIX + binascii.hexlify(os.urandom(8)).decode("ascii")
        try:
            fd = os.open(tmp, CREATE_FLAGS, 0o600, dir_fd=dir_fd)
            break
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
    else:
        raise OSError(errno.EEXIST, "no free temporary name", name)
    try:
        try:
            if uid is not None:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            _write_all(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            os.unlink(tmp, dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    try:
        os.fsync(dir_fd)
    except OSError:
        pass


class DirFd(object):
    """``with DirFd(path) as fd:`` - ``open_dir`` as a context manager."""

    def __init__(self, path, root=None):
        self.fd = open_dir(path, root)

    def __enter__(self):
        return self.fd

    def __exit__(self, *exc):
        os.close(self.fd)
        return False
