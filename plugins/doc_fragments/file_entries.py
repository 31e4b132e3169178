# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)
"""Documentation of the file and directory entries of agentops.fleet.agent_files.

files and secret_files take the same entries (the module's FILE_OPTIONS; in files the content may come from
secret_contents); path, owner and group are shared with directories. Each suboption is written once here.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

# Suboptions shared by file and directory entries (indented for the place they take below).
_PATH = r"""
      path:
        description: Absolute path.
        type: path
        required: true"""
_OWNER = r"""
      owner:
        description: Owner name.
        type: str
        default: root
      group:
        description: Group name.
        type: str
        default: root
      agent:
        description:
          - "The agent this entry belongs to. A hostile entry of that agent in an agent-writable directory (found
            before anything is written, or in a race later) leaves the agent as it was: its later entries are not
            handled and nothing of it is replaced (RV(held))."
        type: str"""

# The content of a file entry: required in secret_files; in files it may come from secret_contents instead.
_CONTENT = r"""
      content:
        description:
          - Complete content of the file.
          - In O(secret_files), a secret that is never returned, logged or diffed.
        type: str
        required: true"""
_FILES_CONTENT = r"""
      content:
        description:
          - Complete content of the file.
          - Required unless the path is a key of O(secret_contents), which then holds the content.
        type: str"""
# The suboptions of one file entry after its content.
_FILE_ENTRY = _OWNER + r"""
      mode:
        description: Octal mode as a string, e.g. C(0644).
        type: str
        default: "0644"
      force:
        description:
          - When C(false), an existing file is left alone entirely (content, owner and mode) and
            its path is reported in RV(kept); it is not even opened. In an agent-writable directory an entry
            that is not a regular file is reported in RV(problems) as well.
          - When C(true), a hostile entry in an agent-writable directory is replaced by the rendered file, unless
            the entry names an O(files[].agent) (then that agent is held, see RV(held)).
        type: bool
        default: true
"""


class ModuleDocFragment(object):

    DOCUMENTATION = r"""
options:
  files:
    description:
      - Files, with a diff in diff mode. A file holding secrets among other settings takes its content from
        O(secret_contents) (diffed with the secret values masked); a file that is a secret goes to O(secret_files).
    type: list
    elements: dict
    default: []
    suboptions:""" + _PATH + _FILES_CONTENT + _FILE_ENTRY + r"""
  secret_files:
    description:
      - Like O(files), for secrets. Contents are never returned, logged or diffed.
    type: list
    elements: dict
    default: []
    suboptions:""" + _PATH + _CONTENT + _FILE_ENTRY + r"""
  directories:
    description: Directories to create or fix (owner, group, mode). Parents must exist.
    type: list
    elements: dict
    default: []
    suboptions:""" + _PATH + _OWNER + r"""
      mode:
        description: Octal mode as a string, e.g. C(0700).
        type: str
        default: "0755"
"""
