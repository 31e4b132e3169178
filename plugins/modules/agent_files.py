#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)
"""Lay down the system users, directories and files of many agents in one pass."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: agent_files
short_description: Users, directories and files of many agents in one module call
description:
  - Internal module of the C(agentops.fleet.agents) role. One call handles every agent of a host,
    so the cost of a run does not grow with one remote round trip per agent and per file.
  - Creates missing system users (no login shell, no password, no home created by useradd),
    creates or fixes directories, writes files atomically (temporary file in the same directory, then rename),
    and removes paths.
  - Order of work is I(users), I(directories), I(files), I(secret_files), I(prune), I(absent).
  - Paths are never followed through a symlink in a directory that a user other than root can write (an agent's
    state directory). Every directory is opened one component at a time without following symlinks (a symlink is
    followed only in a directory that root alone can write), and every file is opened once, relative to its
    directory, with C(O_NOFOLLOW|O_NONBLOCK), checked with C(fstat) (a regular file with one link), read with a
    bound, and its owner and mode are changed through that open file, never by path.
  - "In an agent-writable directory (its owner is not root, or group or others can write it) a hostile entry - a
    symlink, a FIFO, a socket, a hard link, a directory where a file belongs - never stops the run: it is reported
    in RV(problems) and as a warning, and the other paths are handled. With I(force=true) it is replaced by the
    rendered file through a rename (which replaces the entry itself, never what it points to); with I(force=false)
    and for a directory it is left in place. A diff never shows the content behind such an entry, nor a file not
    owned by the expected owner."
  - In a directory that only root can write, such an entry fails the module.
  - "Entries that name an C(agent) are that agent's: before anything is written, the entries of each agent in
    agent-writable directories are looked at (without following or opening anything); a hostile entry there - or
    one met later, in a race - leaves that agent as it was: none of its later entries (its unit, its settings) is
    written, its user is not created, nothing of it is replaced. It is returned in RV(held) and as a warning; the
    other agents are handled."
options:
  users:
    description: System users to create when missing. Existing users are left as they are.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: User name (a group of the same name is created too).
        type: str
        required: true
      home:
        description: Home directory recorded in the password database (not created by this option).
        type: path
        required: true
      comment:
        description: GECOS comment.
        type: str
        default: agentops agent
      agent:
        description: The agent this user belongs to (not created while that agent is held, see RV(held)).
        type: str
  prune:
    description:
      - Directories to clean up - every entry not listed in I(keep) is removed.
        Names starting with a dot (locks, temporary files of other tools) are left alone.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Directory to clean up (nothing happens when it does not exist).
        type: path
        required: true
      keep:
        description: Entry names to keep.
        type: list
        elements: str
        default: []
  absent:
    description: Paths to remove (files, or directories with everything below them).
    type: list
    elements: path
    default: []
  secret_contents:
    description:
      - Contents of O(files) entries that hold secrets, by path. An entry of O(files) whose path is a key here
        takes its content from here and has no O(files[].content) of its own.
      - The whole option is C(no_log), so its values never reach the module's C(Invoked with) line in the host's
        journal, nor its C(invocation) at C(-vvv). A sub-option marked C(no_log) would not do, as the journal line
        holds each option's Python representation, in which a multi-line value is escaped and no longer matches
        the value Ansible masks.
      - "In diff mode a JSON content is shown with every secret value (the fields of
        C(agentops_contract.SECRET_FIELDS), each value of C(headers) and C(credentials)) replaced by V(<secret>),
        or by V(<secret: changed>) on the new side where it changes; which secret changed shows, its value never.
        Any other content is not shown."
    type: dict
    default: {}
extends_documentation_fragment:
  - agentops.fleet.file_entries
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: partial
    details:
      - Contents of O(secret_files) are never part of the diff.
      - Contents of O(secret_contents) are diffed with every secret value masked.
  platform:
    platforms: posix
author:
  - agentops.fleet maintainers (@agentops)
"""

EXAMPLES = r"""
- name: Lay down one agent
  agentops.fleet.agent_files:
    users:
      - name: agent-mail-triage
        home: /var/lib/agentops/mail-triage
    directories:
      - path: /var/lib/agentops/mail-triage
        owner: agent-mail-triage
        group: agent-mail-triage
        mode: "0700"
    files:
      - path: /var/lib/agentops/mail-triage/WORKSTATE.md
        content: "# Working state\n"
        owner: agent-mail-triage
        group: agent-mail-triage
        mode: "0600"
        force: false

- name: A JSON file holding secrets (a header value) is never logged, its diff masks the secret
  agentops.fleet.agent_files:
    files:
      - path: /etc/agentops/agents.d/mail-triage.json
        mode: "0600"
    secret_contents:
      /etc/agentops/agents.d/mail-triage.json: "{{ agents_d_json }}"
"""

RETURN = r"""
held:
  description:
    - Agent name -> why it was left as it was (a hostile entry in a directory its user can write); each message
      starts with C(agentops_agents[<agent>]) and names the path and what was found there. Nothing of that agent
      was written after the check that found it.
  returned: always
  type: dict
  sample: {"mail": ["agentops_agents[mail]: /var/lib/agentops/mail/AGENTS.md is a symlink (not followed)"]}
changed_paths:
  description: Paths that were (or in check mode would be) created, changed or removed.
  returned: always
  type: list
  elements: str
kept:
  description: Existing files with I(force=false) that were left alone.
  returned: always
  type: list
  elements: str
created_users:
  description: Users that were (or would be) created.
  returned: always
  type: list
  elements: str
problems:
  description:
    - Hostile or unusable entries found in agent-writable directories. None of them was followed or read;
      the other paths were handled.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The path as given in the options.
      type: str
    found:
      description: What was there - C(symlink), C(fifo), C(directory), C(not a regular file), C(not a directory),
        C(hard link), C(busy), C(missing directory) or C(error).
      type: str
    action:
      description: What the module did about it, for example C(replaced by the rendered file (not followed)),
        C(left in place) or C(skipped).
      type: str
    message:
      description: One sentence naming the path and what was found.
      type: str
  sample:
    - path: /var/lib/agentops/mail/AGENTS.md
      found: symlink
      action: replaced by the rendered file (not followed)
      message: /var/lib/agentops/mail/AGENTS.md is a symlink (not followed)
"""

import errno
import grp
import json
import os
import pwd
import shutil
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agentops.fleet.plugins.module_utils import agentops_contract as contract
from ansible_collections.agentops.fleet.plugins.module_utils import agentops_safefile as safefile

FILE_OPTIONS = dict(
    path=dict(type="path", required=True),
    content=dict(type="str", required=True),
    owner=dict(type="str", default="root"),
    group=dict(type="str", default="root"),
    mode=dict(type="str", default="0644"),
    force=dict(type="bool", default=True),
    agent=dict(type="str"),
)

# Largest "before" shown in a diff; a larger file is summarised, never read whole.
DIFF_MAX_BYTES = safefile.DEFAULT_MAX_BYTES
# What a diff shows for a secret value of a O(secret_contents) file.
SECRET = "<secret>"
SECRET_CHANGED = "<secret: changed>"
NOT_SHOWN = "(holds secrets, not shown)\n"
MASKED_HEADER = " (secret values masked)"
_NOT_JSON = object()


def _mask(value):
    return contract.redact_secrets(value, lambda secret: SECRET)


def _masked_field(key, before, after):
    """(before, after) of the value of ``key`` in two mappings, secrets masked (changed ones marked in after)."""
    if key in contract.SECRET_MAPPINGS and isinstance(before, dict) and isinstance(after, dict):
        return (dict((name, SECRET) for name in before),
                dict((name, SECRET if name not in before or before[name] == value else SECRET_CHANGED)
                     for name, value in after.items()))
    if key in contract.SECRET_FIELDS or (key in contract.SECRET_MAPPINGS
                                         and not (isinstance(before, list) and isinstance(after, list))):
        return SECRET, SECRET if before == after else SECRET_CHANGED
    return masked_pair(before, after)


def masked_pair(before, after):
    """``before`` and ``after`` (parsed JSON) with every secret value replaced by V(<secret>); in ``after``, a
    secret that differs from the one at the same place in ``before`` becomes V(<secret: changed>)."""
    if isinstance(before, dict) and isinstance(after, dict):
        old, new = {}, {}
        for key, value in before.items():
            if key in after:
                old[key], new[key] = _masked_field(key, value, after[key])
            else:
                old[key] = _mask({key: value})[key]
        for key, value in after.items():
            if key not in before:
                new[key] = _mask({key: value})[key]
        return old, new
    if isinstance(before, list) and isinstance(after, list):
        pairs = [masked_pair(b, a) for b, a in zip(before, after)]
        return ([p[0] for p in pairs] + [_mask(b) for b in before[len(after):]],
                [p[1] for p in pairs] + [_mask(a) for a in after[len(before):]])
    return _mask(before), _mask(after)


def _json_text(value):
    """The layout of the collection's JSON files (Ansible's to_nice_json(indent=2)) plus a final newline."""
    return json.dumps(value, indent=2, sort_keys=True, separators=(",", ": ")) + "\n"


def _loads(text):
    try:
        return json.loads(text)
    except ValueError:
        return _NOT_JSON


def masked_diff(before, after):
    """(before, after) texts of a diff of a file holding secrets: JSON with the secret values masked, anything
    else not shown. ``before`` is None for a file that does not exist yet."""
    new = _loads(after)
    old = {} if before is None else _loads(before)
    if new is _NOT_JSON or old is _NOT_JSON:
        return ("" if before is None else NOT_SHOWN), NOT_SHOWN
    old, new = masked_pair(old, new)
    return ("" if before is None else _json_text(old)), _json_text(new)


def _ids(owner, group):
    """Return (uid, gid), or None when the user or group does not exist (yet)."""
    try:
        return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        return None


class Worker:
    def __init__(self, module):
        self.module = module
        self.check = module.check_mode
        self.changed_paths = []
        self.kept = []
        self.created_users = []
        self.diffs = []
        self.problems = []
        self.held = {}

    def _mark(self, path):
        if path not in self.changed_paths:
            self.changed_paths.append(path)

    def _problem(self, path, found, action, message, agent=None):
        """A hostile or unusable entry in an agent-writable directory: reported, the run goes on. An entry of an
        ``agent`` holds that agent: none of its later entries is handled."""
        if agent:
            action = "agent %s left as it was" % agent
            self.held.setdefault(agent, []).append("agentops_agents[%s]: %s" % (agent, message))
        self.problems.append(dict(path=path, found=found, action=action, message=message))
        self.module.warn("%s; %s" % (message, action))

    def _skip(self, item):
        """True for an entry of an agent that is held."""
        return bool(item.get("agent")) and item["agent"] in self.held

    def precheck(self, directories, files):
        """Before anything is written: the entries of each agent in agent-writable directories, looked at with
        lstat through their directory's fd (nothing followed or opened). A hostile one holds its agent."""
        for item, kind in [(d, "directory") for d in directories] + [(f, "file") for f in files]:
            if not item.get("agent") or self._skip(item):
                continue
            path = os.path.normpath(item["path"])
            try:
                parent = safefile.open_dir(os.path.dirname(path))
            except safefile.UnsafeEntry as exc:
                self._problem(path, exc.found, "", exc.message, item["agent"])
                continue
            except OSError:
                continue  # not there yet (created by this run), or reported by the run itself
            try:
                if not safefile.agent_writable(parent):
                    continue
                st = os.stat(os.path.basename(path), dir_fd=parent, follow_symlinks=False)
                if kind == "directory":
                    if not stat.S_ISDIR(st.st_mode):
                        raise safefile.UnsafeEntry(path, safefile.kind_of(st.st_mode))
                elif item.get("force", True):
                    safefile.check_regular(st, path, max(len(item["content"].encode("utf-8")), DIFF_MAX_BYTES))
                else:
                    safefile.check_regular(st, path, None, True)
            except safefile.UnsafeEntry as exc:
                self._problem(path, exc.found, "", exc.message, item["agent"])
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    self._problem(path, "error", "", "%s: %s" % (path, exc.strerror or exc), item["agent"])
            finally:
                os.close(parent)

    def _fail_ids(self, path, item):
        self.module.fail_json(msg="%s: unknown owner %s or group %s" % (path, item["owner"], item["group"]),
                              changed_paths=self.changed_paths, problems=self.problems)

    def users(self, users):
        useradd = self.module.get_bin_path("useradd", required=True)
        nologin = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
        for user in users:
            if self._skip(user):
                continue
            try:
                pwd.getpwnam(user["name"])
                continue
            except KeyError:
                pass
            self.created_users.append(user["name"])
            if self.check:
                continue
            cmd = [useradd, "--system", "--user-group", "--no-create-home", "--shell", nologin,
                   "--home-dir", user["home"], "--comment", user["comment"], user["name"]]
            rc, out, err = self.module.run_command(cmd)
            if rc != 0:
                self.module.fail_json(msg="useradd %s failed: %s" % (user["name"], (err or out).strip()),
                                      changed_paths=self.changed_paths, created_users=self.created_users)

    def _parent(self, path, agent=None):
        """(fd of the directory holding ``path``, missing): no symlink followed in an agent-writable directory.

        The fd is None when the directory does not exist (``missing`` True: in check mode it would be created
        first) or when a hostile entry on the way was reported.
        """
        directory = os.path.dirname(path)
        try:
            return safefile.open_dir(directory), False
        except safefile.UnsafeEntry as exc:
            # open_dir follows symlinks only in root-only directories: this one is in a directory a user can write
            self._problem(path, exc.found, "skipped", exc.message, agent)
            return None, False
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                self.module.fail_json(msg="%s: cannot open its directory: %s" % (path, exc.strerror or exc),
                                      changed_paths=self.changed_paths, problems=self.problems)
        if self.check:
            return None, True
        if self._in_agent_dir(directory):
            self._problem(path, "missing directory", "skipped",
                          "%s: its directory is missing in a directory that a user other than root can write" % path,
                          agent)
            return None, False
        self.module.fail_json(msg="%s: its directory %s does not exist" % (path, directory),
                              changed_paths=self.changed_paths, problems=self.problems)
        return None, False

    @staticmethod
    def _in_agent_dir(directory):
        """True when the nearest existing ancestor of the missing ``directory`` is agent-writable."""
        while directory not in ("/", ""):
            directory = os.path.dirname(directory)
            try:
                fd = safefile.open_dir(directory)
            except safefile.UnsafeEntry:
                return True
            except OSError:
                continue
            try:
                return safefile.agent_writable(fd)
            finally:
                os.close(fd)
        return False

    def _in_parent(self, path, what, action, on_missing, agent=None):
        """Run ``action(parent_fd, name, untrusted)`` for ``path`` in its opened parent directory.

        A missing parent (check mode) calls ``on_missing``. In a root-only directory an unsafe entry fails the
        module; in an agent-writable one (``untrusted``) it is left in place and reported as a problem (which holds
        ``agent``).
        """
        parent, missing = self._parent(path, agent)
        if parent is None:
            if missing:
                on_missing()
            return
        try:
            untrusted = safefile.agent_writable(parent)
            try:
                action(parent, os.path.basename(path), untrusted)
            except safefile.UnsafeEntry as exc:
                if not untrusted:
                    self.module.fail_json(msg="%s exists and is not %s (%s)" % (path, what, exc.found),
                                          changed_paths=self.changed_paths, problems=self.problems)
                self._problem(path, exc.found, "left in place", exc.message, agent)
            except OSError as exc:
                if not untrusted:
                    raise
                self._problem(path, "error", "skipped", "%s: %s" % (path, exc.strerror or exc), agent)
        finally:
            os.close(parent)

    def directories(self, directories):
        for item in directories:
            if self._skip(item):
                continue
            path, mode = os.path.normpath(item["path"]), int(item["mode"], 8)
            ids = _ids(item["owner"], item["group"])
            if ids is None and not self.check:
                self._fail_ids(path, item)
            self._in_parent(path, "a directory",
                            lambda parent, name, untrusted, path=path, mode=mode, ids=ids:
                            self._directory(parent, name, path, mode, ids),
                            lambda path=path: self._mark(path), item.get("agent"))

    def _directory(self, parent, name, path, mode, ids):
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            self._mark(path)
            if self.check:
                return
            os.mkdir(name, 0o700, dir_fd=parent)
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise safefile.UnsafeEntry(path, safefile.kind_of(st.st_mode))
        try:
            fd = os.open(name, safefile.DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise safefile.UnsafeEntry(path, "not a directory", "replaced while it was opened")
            raise
        try:
            if safefile.fix_attrs(fd, os.fstat(fd), mode, *(ids or (None, None)), apply=not self.check):
                self._mark(path)
        finally:
            os.close(fd)

    def files(self, files, secret):
        for item in files:
            if self._skip(item):
                continue
            path = os.path.normpath(item["path"])
            ids = _ids(item["owner"], item["group"])
            if ids is None and not self.check:
                self._fail_ids(path, item)

            def missing(path=path, item=item):  # check mode, its directory is created first: the file is new
                self._mark(path)
                if not secret and self.module._diff:
                    self.diffs.append(self._diff(path, path, None, item))

            self._in_parent(path, "a regular file",
                            lambda parent, name, untrusted, path=path, item=item, ids=ids:
                            self._file(parent, name, path, item, ids, secret, untrusted),
                            missing, item.get("agent"))

    def _file(self, parent, name, path, item, ids, secret, untrusted):
        """One file. In an agent-writable directory (``untrusted``) nothing is followed, read unbounded or
        changed by path; a hostile entry raises UnsafeEntry (left in place) or is replaced (force)."""
        mode = int(item["mode"], 8)
        content = item["content"].encode("utf-8")
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            st = None
        if st is not None and not item["force"]:
            # WORKSTATE.md and rotated credentials: never overwritten, never opened
            self.kept.append(path)
            if untrusted and not stat.S_ISREG(st.st_mode):
                if item.get("agent"):
                    self.kept.remove(path)
                    raise safefile.UnsafeEntry(path, safefile.kind_of(st.st_mode))
                self._problem(path, safefile.kind_of(st.st_mode), "left in place",
                              safefile.UnsafeEntry(path, safefile.kind_of(st.st_mode)).message)
            return
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise safefile.UnsafeEntry(path, "directory")
        fd = hostile = None
        if st is not None:
            try:
                fd, st = safefile.open_file(parent, name, path, hardlinks=not untrusted,
                                            max_bytes=max(len(content), DIFF_MAX_BYTES) if untrusted else None)
            except safefile.UnsafeEntry as exc:
                if not untrusted or exc.found == "directory" or item.get("agent"):
                    raise  # an agent's entry: the agent is held, nothing of it is replaced
                hostile = exc
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
        before = None
        try:
            if fd is not None:
                if st.st_size == len(content) and self._read(fd, len(content), path) == content:
                    if safefile.fix_attrs(fd, st, mode, *(ids or (None, None)), apply=not self.check):
                        self._mark(path)
                    return
                if not secret and self.module._diff:
                    if untrusted and (ids is None or st.st_uid != ids[0]):
                        # in an agent's directory only the expected owner's file is shown
                        before = "(owned by uid %d, not shown)\n" % st.st_uid
                    else:
                        before = self._before(fd, st, path)
        finally:
            if fd is not None:
                os.close(fd)
        self._mark(path)
        if hostile is not None:
            self._problem(path, hostile.found, "would be replaced by the rendered file" if self.check
                          else "replaced by the rendered file (not followed)", hostile.message)
        if not secret and self.module._diff:
            header = path if hostile is None else "%s (%s, not read)" % (path, hostile.found)
            self.diffs.append(self._diff(header, path, before, item))
        if self.check:
            return
        try:
            safefile.replace_file(parent, name, content, mode, *(ids or (None, None)), replace=bool(item["force"]))
        except OSError as exc:
            if item["force"] or exc.errno != errno.EEXIST:
                raise
            # force=false: the entry appeared since it was looked at (the agent wrote it): it stays
            self.changed_paths.remove(path)
            self.diffs = [d for d in self.diffs if d["after_header"] not in (path, path + MASKED_HEADER)]
            self.kept.append(path)

    @staticmethod
    def _diff(before_header, path, before, item):
        """One diff entry; a file of O(secret_contents) is shown with its secret values masked."""
        if item.get("masked"):
            before, after = masked_diff(before, item["content"])
            return dict(before_header=before_header, after_header=path + MASKED_HEADER,
                        before=before, after=after)
        return dict(before_header=before_header, after_header=path, before=before or "", after=item["content"])

    @staticmethod
    def _read(fd, limit, path):
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            return safefile.read_bounded(fd, limit, path)
        except safefile.UnsafeEntry:
            return None  # grew while read: it differs

    def _before(self, fd, st, path):
        if st.st_size > DIFF_MAX_BYTES:
            return "(%d bytes, not shown)\n" % st.st_size
        data = self._read(fd, DIFF_MAX_BYTES, path)
        if data is None:
            return "(more than %d bytes, not shown)\n" % DIFF_MAX_BYTES
        return data.decode("utf-8", "replace")

    def prune(self, prunes):
        for item in prunes:
            try:
                entries = sorted(os.listdir(item["path"]))
            except FileNotFoundError:
                continue
            self.absent([os.path.join(item["path"], e) for e in entries
                         if not e.startswith(".") and e not in item["keep"]])

    def absent(self, paths):
        for path in paths:
            if not os.path.lexists(path):
                continue
            self._mark(path)
            if self.check:
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)


def _with_secret_contents(module):
    """O(files) with the content of each O(secret_contents) entry filled in (and marked for a masked diff)."""
    contents = module.params["secret_contents"] or {}
    files, paths = [], set()
    for item in module.params["files"]:
        paths.add(item["path"])
        if item["path"] in contents:
            if item.get("content") is not None:
                module.fail_json(msg="files: %s has a content and an entry in secret_contents: give one" % item["path"])
            item = dict(item, content=contents[item["path"]], masked=True)
        elif item.get("content") is None:
            module.fail_json(msg="files: %s has no content (and no entry in secret_contents)" % item["path"])
        files.append(item)
    stray = sorted(set(contents) - paths)
    if stray:
        module.fail_json(msg="secret_contents: %s is not the path of an entry of files" % ", ".join(stray))
    for path, content in contents.items():
        if not isinstance(content, str):
            module.fail_json(msg="secret_contents: the content of %s must be a string" % path)
    return files


def main():
    module = AnsibleModule(
        argument_spec=dict(
            users=dict(type="list", elements="dict", default=[], options=dict(
                name=dict(type="str", required=True),
                home=dict(type="path", required=True),
                comment=dict(type="str", default="agentops agent"),
                agent=dict(type="str"),
            )),
            directories=dict(type="list", elements="dict", default=[], options=dict(
                path=dict(type="path", required=True),
                owner=dict(type="str", default="root"),
                group=dict(type="str", default="root"),
                mode=dict(type="str", default="0755"),
                agent=dict(type="str"),
            )),
            files=dict(type="list", elements="dict", default=[],
                       options=dict(FILE_OPTIONS, content=dict(type="str"))),
            secret_files=dict(type="list", elements="dict", default=[], no_log=False,
                              options=dict(FILE_OPTIONS, content=dict(type="str", required=True, no_log=True))),
            prune=dict(type="list", elements="dict", default=[], options=dict(
                path=dict(type="path", required=True),
                keep=dict(type="list", elements="str", default=[], no_log=False),
            )),
            absent=dict(type="list", elements="path", default=[]),
            secret_contents=dict(type="dict", default={}, no_log=True),
        ),
        supports_check_mode=True,
    )
    files = _with_secret_contents(module)
    worker = Worker(module)
    worker.precheck(module.params["directories"], module.params["files"])
    worker.users(module.params["users"])
    worker.directories(module.params["directories"])
    worker.files(files, secret=False)
    worker.files(module.params["secret_files"], secret=True)
    worker.prune(module.params["prune"])
    worker.absent(module.params["absent"])
    result = dict(changed=bool(worker.changed_paths or worker.created_users),
                  changed_paths=worker.changed_paths, kept=worker.kept, created_users=worker.created_users,
                  problems=worker.problems, held=worker.held)
    if module._diff and worker.diffs:
        result["diff"] = worker.diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
