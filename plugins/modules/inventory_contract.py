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
  - "On the host, read-only and in check mode too (module C(agentops.fleet.agent_runtime), one call for all agents):
    the first word of each present, enabled agent's C(command) exists and the agent's user may execute it; a
    C(hardening=strict) agent's command runs no JIT runtime; the paths of the auth checks that root stats, reads
    or runs. A reason in a place only root can write fails the host here, before any change, naming
    C(agentops_agents[<name>].command) (or the field)."
  - "A reason in a place that a user other than root can write (below the agent's own directory, or any directory
    such a user can write on the way) concerns that agent alone: it is returned in RV(held) and in the fact
    C(agentops_agents_held) (agent name -> messages). The agents role then leaves that agent as it was (unit,
    C(agents.d/<name>.json), C(AGENTS.md), credentials), deploys the others and sends the alert
    C(<agent>/deploy); the run fails at its end naming the agent (at the end of the agents or auth role, or, with
    O(defer_held=true), where the playbook includes C(agentops.fleet.contract) C(tasks_from=held))."
  - Runs on the controller (action plugin); the remote calls are the read-only user lookup, C(systemd-analyze
    calendar) for schedules and C(agentops.fleet.agent_runtime).
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
  defer_held:
    description:
      - The playbook fails for the agents left as they were at its end (it includes C(agentops.fleet.contract)
        with C(tasks_from=held) last, as C(playbooks/site.yml) does), so the agents and auth roles do not fail
        for them and the roles after them still run for the other agents. Sets the fact C(agentops_agents_held_deferred).
    type: bool
    default: false
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

- name: Validate everything; the playbook reports agents left as they were at its end
  agentops.fleet.inventory_contract:
    roles: [journald, alerts, agents, heartbeat, token_rotation, auth]
    defer_held: true
"""

RETURN = r"""
validated:
  description: The parts checked by this call (roles, and C(agentops_agents)); parts already checked with the same values are left out.
  returned: success
  type: list
  elements: str
  sample: [alerts, agentops_agents]
held:
  description: Agent name -> problems found in a place a user other than root can write (that agent is left as it was).
  returned: success
  type: dict
  sample: {"evil": ["agentops_agents[evil].command: /var/lib/agentops/evil/bin/run is a symlink (not followed): in a
    directory that a user other than root can write"]}
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
                                               "token_rotation", "auth"]),
                           defer_held=dict(type="bool", default=False)),
        supports_check_mode=True,
    )
    module.fail_json(msg="agentops.fleet.inventory_contract runs as an action plugin on the controller")


if __name__ == "__main__":
    main()
