# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)
"""What root learns about an agent's command on its host: the JIT runtime it runs, whether it is there.

``hardening: strict`` sets ``MemoryDenyWriteExecute=yes``: a runtime that compiles code at run
time (V8, JavaScriptCore, HotSpot) then dies at start, and ``Restart=`` turns that into a crash
loop. The agents role refuses the combination before any change, from the command's first word
(its basename, its resolved basename when it is a link such as ``/usr/bin/node`` or
``/usr/local/bin/claude``), an ``env`` prefix, or a script's shebang read with a bound.

Every path is found with ``agentops_safefile.locate``: a symlink is followed only in a directory
that root alone can write, the entry's type is known before anything opens it (a device node or a
FIFO is never opened), a script's first bytes are read through a file descriptor opened relative to
its directory. A problem in a place that a user other than root can write (below the agent's own
directory, or below any directory such a user can write) is the agent's own problem: it is returned
apart from the inventory errors (``check_agent``), so it stops that agent alone.

The programs followed from a command are hops (``MAX_HOPS``): the command, then the interpreter its
``#!`` line names. A later hop (the program a ``#!/bin/sh`` wrapper ``exec``s) goes through
``next_hop`` and the same ``locate``.

Python 2.7 compatible syntax (module_utils); the host side is Python 3.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import re
import shlex
import stat


try:
    import grp
    import pwd
except ImportError:  # pragma: no cover - POSIX hosts only
    grp = pwd = None

from . import agentops_safefile as safefile

# Interpreter basenames that need write+execute memory: node, nodejs, node18, deno, bun, java, java17, ...
JIT_RE = re.compile(r"^(node|nodejs|deno|bun|java)(-?[0-9][0-9.]*)?\Z")
SHEBANG_BYTES = 256
# Programs followed from one command: the command itself and the interpreter its #! line names.
MAX_HOPS = 2
WRITABLE = "in a place that a user other than root can write"


def jit_name(word):
    """The JIT runtime a command word names (its basename), or None."""
    if not word:
        return None
    base = os.path.basename(word)
    match = JIT_RE.match(base)
    return match.group(1) if match else None


def _after_env(words):
    """The program that ``env [-i] [-S] [-u NAME] [NAME=value ...] program`` runs (None when none)."""
    index = 1
    while index < len(words):
        word = words[index]
        if word in ("-u", "--unset", "-C", "--chdir"):
            index += 2
            continue
        if word.startswith("-") or "=" in word:
            if word.startswith("-S") and len(word) > 2:  # -Snode --flag
                return word[2:].split()[0] if word[2:].split() else None
            index += 1
            continue
        return word
    return None


def interpreter_words(words):
    """The runtime a command line (a list of words) would run: the first word, or what env runs."""
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        inner = _after_env(words)
        return inner
    return words[0]


def parse_shebang(data):
    """The words of a ``#!`` line (bytes, at most SHEBANG_BYTES), or [] when there is none."""
    if not data.startswith(b"#!"):
        return []
    line = data[2:].split(b"\n", 1)[0]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return []
    return text.strip().split()


def _printable(text):
    """``text`` as it may be shown: a character that is not printable (an escape sequence) becomes ``?``."""
    return "".join(c if c.isprintable() else "?" for c in text)


def split_command(command):
    """The words of a command line (a string or a list)."""
    if not isinstance(command, str):
        return [str(word) for word in command or []]
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def under(path, directory):
    """True when ``path`` is ``directory`` or below it (both normalised, no link resolved)."""
    if not directory:
        return False
    path, directory = os.path.normpath(path), os.path.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


class Program(object):
    """One program of a command, found with ``agentops_safefile.locate``: ``given`` (the path as written),
    ``path`` (with root-only links resolved), ``st`` (lstat of the entry, None when missing), ``writable``
    (a user other than root can write a directory on the way, or it is below ``own_dir``), ``problem``
    (an ``UnsafeEntry`` met on the way, then nothing else is known), ``links`` and ``dirs`` (see ``Located``)."""

    def __init__(self, given, own_dir=None):
        self.given = given
        self.path = given
        self.st = None
        self.problem = None
        self.head = None
        self.links = []
        self.dirs = []
        self.writable = under(given, own_dir)
        self._own_dir = own_dir
        self._located = None

    def locate(self):
        try:
            self._located = safefile.locate(self.given)
        except safefile.UnsafeEntry as exc:
            self.problem = exc
            self.writable = self.writable or bool(exc.writable)
            return self
        found = self._located
        self.path, self.st, self.links, self.dirs = found.path, found.st, found.links, found.dirs
        self.writable = self.writable or found.writable or under(found.path, self._own_dir)
        return self

    def read_head(self, limit=SHEBANG_BYTES, owner=None):
        """At most ``limit`` bytes from the start of the program, read through a descriptor opened relative to
        its directory (no link followed, a FIFO never blocks); None when it is not a regular file. In a writable
        place a file with other hard links is read only when it is ``owner``'s or readable by anyone: it may be
        another file's link."""
        if self._located is None or self.st is None or not stat.S_ISREG(self.st.st_mode):
            return None
        if self.writable and self.st.st_nlink > 1 and not (self.st.st_mode & stat.S_IROTH) \
                and (owner is None or self.st.st_uid != owner):
            self.problem = safefile.UnsafeEntry(self.path, "hard link", "%d links" % self.st.st_nlink,
                                                writable=True)
            return None
        try:
            fd, dummy = self._located.open(max_bytes=None, hardlinks=True)
        except safefile.UnsafeEntry as exc:
            self.problem = exc
            self.writable = self.writable or bool(exc.writable)
            return None
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EACCES, errno.ENXIO):
                return None
            raise
        try:
            self.head = os.read(fd, limit)
        finally:
            os.close(fd)
        return self.head

    def close(self):
        if self._located is not None:
            self._located.close()
            self._located = None


def _locate(path, own_dir=None):
    return Program(path, own_dir).locate()


def _ids(user):
    """(uid, gids) of ``user`` on this host; None when the user does not exist (yet)."""
    if not user or pwd is None:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    try:
        gids = set(os.getgrouplist(user, entry.pw_gid))
    except (AttributeError, OSError):
        gids = set([entry.pw_gid] + [g.gr_gid for g in grp.getgrall() if user in g.gr_mem])
    return entry.pw_uid, gids


def _has_acl(program):
    """True when the located entry carries a POSIX ACL, which can grant what its mode bits do not show."""
    located = program._located  # pylint: disable=protected-access
    if located is None:
        return False
    try:
        names = os.listxattr("/proc/self/fd/%d/%s" % (located.dir_fd, located.name), follow_symlinks=False)
    except (AttributeError, OSError):
        return False
    return "system.posix_acl_access" in names


def permitted(st, ids):
    """True when the mode in ``st`` lets the user ``ids`` execute the file: ``(uid, gids)`` of an existing user,
    or None for a user that owns nothing and is in none of its groups (a system user the converge creates)."""
    if ids is None:
        return bool(st.st_mode & stat.S_IXOTH)
    uid, gids = ids
    if uid == 0:
        return bool(st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def not_executable(program, user):
    """Why ``user`` (who may not exist yet) cannot run ``program`` (a located regular file), or None. The mode
    bits of the user's class decide; a file with an ACL needs any execute bit."""
    mode = stat.S_IMODE(program.st.st_mode)
    if not mode & 0o111:
        return "%s is not executable (mode %04o)" % (program.path, mode)
    if _has_acl(program) or permitted(program.st, _ids(user)):
        return None
    return "%s is not executable by %s (mode %04o, owner uid %d, group gid %d)" % (
        program.path, user or "the agent's user", mode, program.st.st_uid, program.st.st_gid)


def read_head(path, limit=SHEBANG_BYTES):
    """At most ``limit`` bytes from the start of the regular file ``path``: its directory opened with
    ``agentops_safefile.open_dir``, the file relative to it without following a final link (O_NOFOLLOW,
    O_NONBLOCK: a FIFO does not block, its type is checked before the open). None when it is not a readable
    regular file."""
    try:
        dir_fd = safefile.open_dir(os.path.dirname(path) or "/")
    except (safefile.UnsafeEntry, OSError):
        return None
    try:
        fd, dummy = safefile.open_file(dir_fd, os.path.basename(path), path, max_bytes=None, hardlinks=True)
    except (safefile.UnsafeEntry, OSError):
        return None
    finally:
        os.close(dir_fd)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def _owner_uid(user):
    ids = _ids(user)
    return ids[0] if ids else None


def find_runtime(command, user=None, own_dir=None):
    """The JIT runtime ``command`` runs, as ``(runtime, how, writable, problem)``.

    ``how`` says where it was recognised (for the message): the command's name, env's program, the target of
    a link, a script's ``#!`` line, the target of the interpreter that line names. ``writable`` is True when
    that evidence comes from a place a user other than root can write (the agent's own script), so that it
    concerns that agent alone. ``problem`` is an ``UnsafeEntry`` met in such a place (a symlink, a FIFO, ...):
    nothing behind it was followed or read. At most ``MAX_HOPS`` programs are looked at.
    """
    words = split_command(command)
    program = interpreter_words(words)
    if not program:
        return None, None, False, None
    name = jit_name(program)
    if name:
        return name, ("env runs %s" % program if program != words[0] else "the command is %s" % program), False, None
    if not program.startswith("/"):
        return None, None, False, None
    path, writable, found_by = program, False, None
    owner = _owner_uid(user)
    for hop in range(MAX_HOPS):
        prog = _locate(path, own_dir)
        try:
            writable = writable or prog.writable
            if prog.problem is not None:
                problem = prog.problem if prog.writable else None
                if problem is not None and found_by is not None:
                    problem = safefile.UnsafeEntry(problem.path, problem.found, "%s; named by %s" % (
                        problem.detail or problem.reason, found_by), writable=True)
                return None, None, writable, problem
            if prog.st is None:
                return None, None, writable, None
            name = jit_name(prog.path)
            if name and hop == 0:  # the command links to a runtime: only root's links were followed
                return name, "%s links to %s" % (path, prog.path), False, None
            if name:  # the program the hop before named, once its links are resolved
                return name, "%s (%s)" % (found_by, prog.path), writable, None
            if hop + 1 >= MAX_HOPS:
                return None, None, writable, None
            head = prog.read_head(owner=owner)
            if prog.problem is not None:
                return None, None, True, prog.problem
            name, found_by, path = next_hop(prog, path, head)
            if name:
                return name, found_by, writable, None
            if path is None:
                return None, None, writable, None
        finally:
            prog.close()
    return None, None, writable, None


def next_hop(prog, path, head):
    """What the located program ``prog`` (given as ``path``) hands over to, from its first bytes ``head``:
    ``(runtime, how, next_path)``.

    ``runtime``: a JIT runtime the ``#!`` line names (``how`` says so); ``next_path``: the absolute program to
    look at next - the interpreter of the ``#!`` line, whose resolved name may tell the runtime - or None.
    A ``#!/bin/sh`` wrapper's ``exec <program>`` line is the place for a later rule: it returns that program
    as ``next_path`` (``find_runtime`` locates it the same way, within ``MAX_HOPS``)."""
    shebang = parse_shebang(head or b"")
    inner = interpreter_words(shebang)
    script = path if prog.path == path else "%s (a link to %s)" % (path, prog.path)
    how = "%s starts with '#!%s'" % (script, _printable(" ".join(shebang)))
    name = jit_name(inner)
    if name:
        return name, how, None
    if inner and inner.startswith("/"):
        return None, how, inner
    return None, how, None


def detect(command):
    """(runtime, how) when ``command`` (the agent's command line) runs a JIT runtime, else (None, None)."""
    runtime, how, dummy, dummy = find_runtime(command)
    return (runtime, how) if runtime else (None, None)


def strict_message(agent_label, runtime, how):
    """The message for a strict agent whose command runs the JIT runtime ``runtime``."""
    return ("%s.hardening: strict sets MemoryDenyWriteExecute=yes, which kills the %s runtime at start (%s), so "
            "the agent would crash-loop; set hardening: standard for this agent (nothing was changed)"
            % (agent_label, runtime, how))


def strict_problem(agent_label, command):
    """The message for a strict agent whose command runs a JIT runtime, else None."""
    runtime, how = detect(command)
    return strict_message(agent_label, runtime, how) if runtime else None


def _shown(prog):
    return prog.given if prog.path == prog.given else "%s (a link to %s)" % (prog.given, prog.path)


def executable_problem(path, user=None, own_dir=None):
    """``(text, writable)``: why the agent's executable ``path`` cannot run as ``user``, or ``(None, False)``.

    ``writable`` True: the reason lies in a place a user other than root can write (the agent's own directory
    included), so it concerns that agent alone."""
    prog = _locate(path, own_dir)
    try:
        if prog.problem is not None:
            return prog.problem.message, prog.writable
        if prog.st is None:
            if prog.writable:
                return "%s does not exist (%s)" % (prog.given, WRITABLE), True
            return ("%s does not exist on the host: install it before the converge, or set enabled: false for "
                    "this agent until it is there" % _shown(prog)), False
        if not stat.S_ISREG(prog.st.st_mode):
            entry = safefile.UnsafeEntry(_shown(prog), safefile.kind_of(prog.st.st_mode), _device(prog.st.st_mode))
            return entry.message, prog.writable
        why = not_executable(prog, user)
        if why:
            return ("%s (%s)" % (why, WRITABLE) if prog.writable else why), prog.writable
        return None, False
    finally:
        prog.close()


def _device(mode):
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return ""


# How root uses a path of an agent's auth checks: stat (type file: existence, mode, age), read (ca_path: the
# certificates), run (type command: root runs the program).
PATH_USES = ("stat", "read", "run")


def path_problem(path, use, user=None, own_dir=None):
    """Why root may not use ``path`` (``use``: one of PATH_USES) for the agent, when the reason lies in a place a
    user other than root can write; None otherwise (a missing file is the auth check's own failure)."""
    prog = _locate(path, own_dir)
    try:
        if prog.problem is not None:
            return prog.problem.message if prog.writable else None
        if use == "read" and prog.st is not None and stat.S_ISDIR(prog.st.st_mode) \
                and not safefile.is_trusted_dir(prog.st):
            prog.writable = True  # its certificates can be replaced
        if not prog.writable:
            return None
        if use == "run":
            return ("%s is %s: root runs it, so only root may be able to change it" % (_shown(prog), WRITABLE))
        if prog.st is None:
            return None
        if use == "read" and stat.S_ISDIR(prog.st.st_mode):
            return ("%s is a directory %s: root would read the certificates in it following their links; point "
                    "ca_path at a file" % (_shown(prog), WRITABLE))
        if not stat.S_ISREG(prog.st.st_mode):
            return safefile.UnsafeEntry(_shown(prog), safefile.kind_of(prog.st.st_mode), _device(prog.st.st_mode)).message
        owner = _owner_uid(user)
        if prog.st.st_nlink > 1 and not (prog.st.st_mode & stat.S_IROTH) and prog.st.st_uid != owner:
            return safefile.UnsafeEntry(_shown(prog), "hard link", "%d links" % prog.st.st_nlink).message
        return None
    finally:
        prog.close()


def check_agent(name, command, user=None, own_dir=None, strict=False, executable=False, paths=()):
    """Everything root checks on the host about one agent, read-only: ``{"errors", "problems", "runtime"}``.

    * ``executable``: the command's first word exists and ``user`` may execute it (for a present, enabled agent);
    * ``strict``: the command does not run a JIT runtime (``hardening: strict``);
    * ``paths``: ``[{"field", "path", "use"}]``, paths of the agent's auth checks that root stats, reads or runs.

    ``errors`` are inventory errors (the reason is in a place only root can write: refuse the converge);
    ``problems`` lie in a place the agent's user - or another user but root - can write (below ``own_dir``,
    the agent's own directory, even when it does not exist yet): they concern this agent alone.
    Each message names ``agentops_agents[<name>]`` and the field. ``runtime``: ``{"runtime", "how"}`` or None.
    """
    label = "agentops_agents[%s]" % name
    errors, problems = [], []
    words = split_command(command)
    if executable and words and words[0].startswith("/"):
        text, writable = executable_problem(words[0], user, own_dir)
        if text:
            (problems if writable else errors).append("%s.command: %s" % (label, text))
    found = None
    if strict:
        runtime, how, writable, problem = find_runtime(command, user, own_dir)
        if problem is not None:
            problems.append("%s.command: %s" % (label, problem.message))
        if runtime:
            found = {"runtime": runtime, "how": how}
            (problems if writable else errors).append(strict_message(label, runtime, how))
    for entry in paths or ():
        text = path_problem(entry["path"], entry["use"], user, own_dir)
        if text:
            problems.append("%s.%s: %s" % (label, entry["field"], text))
    return {"errors": _unique(errors), "problems": _unique(problems), "runtime": found}


def _unique(items):
    return [item for index, item in enumerate(items) if item not in items[:index]]
