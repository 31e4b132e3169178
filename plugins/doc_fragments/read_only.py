# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)
"""Attributes of the modules that only read state (agent_audit, auth_check)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
    details: The module only reads state, so it runs in check mode as well and reports no change.
  diff_mode:
    support: none
  platform:
    platforms: posix
"""
