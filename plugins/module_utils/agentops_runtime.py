# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)
"""Recognise a JIT runtime (Node.js, Deno, Bun, Java) from an agent's command.

``hardening: strict`` sets ``MemoryDenyWriteExecute=yes``: a runtime that compiles code at run
time (V8, JavaScriptCore, HotSpot) then dies at start, and ``Restart=`` turns that into a crash
loop. The agents role refuses the combination before any change, from the command's first word
(its basename, its resolved basename when it is a link such as ``/usr/bin/node`` or
``/usr/local/bin/claude``), an ``env`` prefix, or a script's shebang read with a bound.

Python 2.7 compatible syntax (module_utils); the host side is Python 3.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import re
import shlex
import stat

# Interpreter basenames that need write+execute memory: node, nodejs, node18, deno, bun, java, java17, ...
JIT_RE = re.compile(r"^(node|nodejs|deno|bun|java)(-?[0-9][0-9.]*)?\Z")
SHEBANG_BYTES = 256


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


def read_head(path, limit=SHEBANG_BYTES):
    """At most ``limit`` bytes from the start of a regular file, not following a final link
    (O_NOFOLLOW, O_NONBLOCK: a FIFO does not block). None when it is not a readable regular file."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.EACCES, errno.ENOTDIR, errno.ENXIO):
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    finally:
        os.close(fd)


def detect(command, realpath=os.path.realpath, head=read_head):
    """(runtime, how) when ``command`` (the agent's command line) runs a JIT runtime, else (None, None).

    ``how`` says where it was recognised (for the message): the command's name, the target of its
    link, env's program, or the script's shebang (one level: a shebang naming a script is not followed).
    """
    try:
        words = shlex.split(command) if isinstance(command, str) else list(command or [])
    except ValueError:
        words = command.split() if isinstance(command, str) else []
    program = interpreter_words(words)
    if not program:
        return None, None
    name = jit_name(program)
    if name:
        how = "env runs %s" % program if program != words[0] else "the command is %s" % program
        return name, how
    if not program.startswith("/"):
        return None, None
    target = realpath(program)
    name = jit_name(target)
    if name:
        return name, "%s links to %s" % (program, target)
    data = head(target)
    if not data:
        return None, None
    shebang = parse_shebang(data)
    inner = interpreter_words(shebang)
    script = program if target == program else "%s (a link to %s)" % (program, target)
    name = jit_name(inner)
    if name:
        return name, "%s starts with '#!%s'" % (script, " ".join(shebang))
    if inner and inner.startswith("/"):
        name = jit_name(realpath(inner))
        if name:
            return name, "%s starts with '#!%s' (%s)" % (script, " ".join(shebang), realpath(inner))
    return None, None


def strict_message(agent_label, runtime, how):
    """The message for a strict agent whose command runs the JIT runtime ``runtime``."""
    return ("%s.hardening: strict sets MemoryDenyWriteExecute=yes, which kills the %s runtime at start (%s), so "
            "the agent would crash-loop; set hardening: standard for this agent (nothing was changed)"
            % (agent_label, runtime, how))


def strict_problem(agent_label, command):
    """The message for a strict agent whose command runs a JIT runtime, else None."""
    runtime, how = detect(command)
    return strict_message(agent_label, runtime, how) if runtime else None
