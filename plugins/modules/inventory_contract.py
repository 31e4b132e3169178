#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)
"""Documentation of the agentops.fleet.inventory_contract action (the work is done by its action plugin)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: inventory_contract
short_description: Validate a host's agentops.fleet inventory once, before anything changes
description:
  - Checks every variable of the named roles of the collection (their role defaults overridden by the
    inventory) and C(agentops_agents) with the one definition of the inventory contract,
    C(plugins/module_utils/agentops_contract.py), the code the on-host command uses too.
  - Fails with one message per problem, each naming the variable and, for agent fields, the agent
    (C(agentops_agents[mail-triage].heartbeat.max_silence)). Secret values are never shown.
  - Setting a variable that was removed from the contract fails with what to use instead.
  - Setting an C(agentops_*) variable (host, group, play or extra vars) that no role or playbook of the collection
    reads fails too, with "did you mean" when a known name is close (C(agentops_agent) for C(agentops_agents));
    ignored, a mistyped name would leave the role's default in force. The known names are every role's options
    (C(meta/argument_specs.yml), all entry points, whatever O(roles) says) and C(meta/variables.yml) (playbook
    variables and the collection's own facts); variables without the prefix are not looked at. Checked once per
    host and run for the same set of names.
  - Refuses an agent C(user) that already exists on the host and is not the agent's own (unless
    C(share_user=true)); the host's users are read with a read-only C(getent passwd).
  - A part that was validated earlier in the same run with the same values is not validated again
    (fact C(agentops_contract_checked)), so C(site.yml) and each role's C(validate) entry point cost one check.
  - Runs on the controller (action plugin); the only remote call is the read-only user lookup.
version_added: 0.2.0
author:
  - agentops.fleet maintainers (@agentops)
options:
  roles:
    description:
      - The roles whose variables are checked. C(agentops_agents) is checked with any role that has it.
    type: list
    elements: str
    choices: [common, journald, alerts, agents, heartbeat, token_rotation, auth]
    default: [common, journald, alerts, agents, heartbeat, token_rotation, auth]
attributes:
  check_mode:
    support: full
    description: Read-only in every mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to diff.
  action:
    support: full
    description: Runs as an action plugin on the controller.
notes:
  - The check is the same whether it runs from C(playbooks/site.yml) or from a role's C(validate) entry point.
"""

EXAMPLES = r"""
- name: Validate the whole inventory of this host first
  agentops.fleet.inventory_contract:
    roles: [journald, alerts, agents, heartbeat, token_rotation, auth]

- name: Validate only the agents role's variables and agentops_agents
  agentops.fleet.inventory_contract:
    roles: [agents]
"""

RETURN = r"""
validated:
  description: The parts checked by this call (roles, and C(agentops_agents)); parts already checked with the same values are left out.
  returned: success
  type: list
  elements: str
  sample: [alerts, agentops_agents]
problems:
  description: One message per problem, each naming the variable and the agent.
  returned: failure
  type: list
  elements: str
  sample: ["agentops_agents[mail-triage].heartbeat.max_silence: '5 parsecs' is not a systemd time span"]
"""

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec=dict(roles=dict(type="list", elements="str",
                                      choices=["common", "journald", "alerts", "agents", "heartbeat",
                                               "token_rotation", "auth"],
                                      default=["common", "journald", "alerts", "agents", "heartbeat",
                                               "token_rotation", "auth"])),
        supports_check_mode=True,
    )
    module.fail_json(msg="agentops.fleet.inventory_contract runs as an action plugin on the controller")


if __name__ == "__main__":
    main()
