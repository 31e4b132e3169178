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
  directories:
    description: Directories to create or fix (owner, group, mode). Parents must exist.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      owner:
        description: Owner name.
        type: str
        default: root
      group:
        description: Group name.
        type: str
        default: root
      mode:
        description: Octal mode as a string, e.g. C(0700).
        type: str
        default: "0755"
  files:
    description: Files whose content is not secret (a diff is returned in diff mode).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      content:
        description: Complete content of the file.
        type: str
        required: true
      owner:
        description: Owner name.
        type: str
        default: root
      group:
        description: Group name.
        type: str
        default: root
      mode:
        description: Octal mode as a string, e.g. C(0644).
        type: str
        default: "0644"
      force:
        description:
          - When C(false), an existing file is left alone entirely (content, owner and mode) and
            its path is reported in RV(kept).
        type: bool
        default: true
  secret_files:
    description:
      - Like I(files), for secrets. Contents are never returned, logged or diffed.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      content:
        description: Complete content of the file (a secret).
        type: str
        required: true
      owner:
        description: Owner name.
        type: str
        default: root
      group:
        description: Group name.
        type: str
        default: root
      mode:
        description: Octal mode as a string, e.g. C(0644).
        type: str
        default: "0644"
      force:
        description:
          - When C(false), an existing file is left alone entirely (content, owner and mode) and
            its path is reported in RV(kept).
        type: bool
        default: true
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
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: partial
    details: Contents of I(secret_files) are never part of the diff.
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
"""

RETURN = r"""
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
"""

import grp
import os
import pwd
import shutil
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule

FILE_OPTIONS = dict(
    path=dict(type="path", required=True),
    content=dict(type="str", required=True),
    owner=dict(type="str", default="root"),
    group=dict(type="str", default="root"),
    mode=dict(type="str", default="0644"),
    force=dict(type="bool", default=True),
)


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

    def _mark(self, path):
        if path not in self.changed_paths:
            self.changed_paths.append(path)

    def users(self, users):
        useradd = self.module.get_bin_path("useradd", required=True)
        nologin = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
        for user in users:
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

    def _fix_attrs(self, path, st, mode, ids):
        changed = False
        if ids is None or (st.st_uid, st.st_gid) != ids:
            changed = True
            if not self.check:
                os.chown(path, *ids)
        if stat.S_IMODE(st.st_mode) != mode:
            changed = True
            if not self.check:
                os.chmod(path, mode)
        return changed

    def directories(self, directories):
        for item in directories:
            path, mode = item["path"], int(item["mode"], 8)
            ids = _ids(item["owner"], item["group"])
            if ids is None and not self.check:
                self.module.fail_json(msg="%s: unknown owner %s or group %s" % (path, item["owner"], item["group"]))
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                self._mark(path)
                if not self.check:
                    os.mkdir(path, mode)
                    os.chown(path, *ids)
                    os.chmod(path, mode)
                continue
            if not stat.S_ISDIR(st.st_mode):
                self.module.fail_json(msg="%s exists and is not a directory" % path)
            if self._fix_attrs(path, st, mode, ids):
                self._mark(path)

    def files(self, files, secret):
        for item in files:
            path, mode = item["path"], int(item["mode"], 8)
            content = item["content"].encode("utf-8")
            ids = _ids(item["owner"], item["group"])
            if ids is None and not self.check:
                self.module.fail_json(msg="%s: unknown owner %s or group %s" % (path, item["owner"], item["group"]))
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                st = None
            if st is not None and not item["force"]:
                self.kept.append(path)
                continue
            if st is not None and not stat.S_ISREG(st.st_mode):
                self.module.fail_json(msg="%s exists and is not a regular file" % path)
            before = None
            if st is not None:
                with open(path, "rb") as handle:
                    before = handle.read()
            if before == content:
                if self._fix_attrs(path, st, mode, ids):
                    self._mark(path)
                continue
            self._mark(path)
            if not secret and self.module._diff:
                self.diffs.append(dict(before_header=path, after_header=path,
                                       before=(before or b"").decode("utf-8", "replace"),
                                       after=item["content"]))
            if self.check:
                continue
            self._write(path, content, mode, ids)

    def _write(self, path, content, mode, ids):
        directory = os.path.dirname(path)
        fd, tmp = tempfile.mkstemp(prefix=".agentops-", dir=directory)
        try:
            os.fchmod(fd, mode)
            os.fchown(fd, *ids)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

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


def main():
    module = AnsibleModule(
        argument_spec=dict(
            users=dict(type="list", elements="dict", default=[], options=dict(
                name=dict(type="str", required=True),
                home=dict(type="path", required=True),
                comment=dict(type="str", default="agentops agent"),
            )),
            directories=dict(type="list", elements="dict", default=[], options=dict(
                path=dict(type="path", required=True),
                owner=dict(type="str", default="root"),
                group=dict(type="str", default="root"),
                mode=dict(type="str", default="0755"),
            )),
            files=dict(type="list", elements="dict", default=[], options=FILE_OPTIONS),
            secret_files=dict(type="list", elements="dict", default=[], no_log=False,
                              options=dict(FILE_OPTIONS, content=dict(type="str", required=True, no_log=True))),
            prune=dict(type="list", elements="dict", default=[], options=dict(
                path=dict(type="path", required=True),
                keep=dict(type="list", elements="str", default=[], no_log=False),
            )),
            absent=dict(type="list", elements="path", default=[]),
        ),
        supports_check_mode=True,
    )
    worker = Worker(module)
    worker.users(module.params["users"])
    worker.directories(module.params["directories"])
    worker.files(module.params["files"], secret=False)
    worker.files(module.params["secret_files"], secret=True)
    worker.prune(module.params["prune"])
    worker.absent(module.params["absent"])
    result = dict(changed=bool(worker.changed_paths or worker.created_users),
                  changed_paths=worker.changed_paths, kept=worker.kept, created_users=worker.created_users)
    if module._diff and worker.diffs:
        result["diff"] = worker.diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
