# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)
"""Validation and normalisation of ``agentops_agents`` (the per-host agent inventory).

Runs on the controller only. ``agents_errors`` returns one message per problem,
each naming the agent and the field, so the role can fail before it changes anything.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.agentops.fleet.plugins.module_utils.agentops_systemd import parse_show
from ansible_collections.agentops.fleet.plugins.module_utils.agentops_contract import (  # noqa: F401 (re-exported)
    AGENT_KEYS, HEARTBEAT_DEFAULTS, HEARTBEAT_KEYS, agents_errors, agents_normalize, agents_user_errors,
    heartbeat_tick, settings_errors, timespan_seconds)


def systemctl_show(text):
    """Parse `systemctl show -p ... unit...` output into {Id: {Property: value}}."""
    return parse_show(text)


class FilterModule(object):
    """agentops.fleet filters: the inventory contract (plugins/module_utils/agentops_contract.py)."""

    def filters(self):
        return {
            "agents_errors": agents_errors,
            "agents_user_errors": agents_user_errors,
            "agents_heartbeat_tick": heartbeat_tick,
            "agentops_settings_errors": settings_errors,
            "agents_normalize": agents_normalize,
            "systemctl_show": systemctl_show,
            "timespan_seconds": timespan_seconds,
        }
