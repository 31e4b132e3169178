#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: agent_runtime
short_description: Check the agents' commands and paths on the host before a converge (read-only)
version_added: "0.1.0"
description:
  - For each agent, looks at what root will use on the host, without changing anything. The action
    C(agentops.fleet.inventory_contract) runs it once for all agents of a host before any change, in check mode too.
  - "Executable (O(agents[].executable)): the first word of the command exists and the agent's user may execute it
    (the mode bits of its class; a user the converge has yet to create owns nothing; a file with an ACL needs any
    execute bit)."
  - "JIT runtime (O(agents[].strict)): whether the command runs a runtime that compiles code at run time (C(node),
    C(nodejs), C(deno), C(bun), C(java)) - from the command's first word, the target of that word when it is a
    link (for example C(/usr/local/bin/claude) linking to a script), the program C(env) runs, the script's C(#!)
    line, or the target of the interpreter that line names. C(hardening=strict) sets C(MemoryDenyWriteExecute=yes),
    which kills such a runtime at start."
  - "Paths of the auth checks (O(agents[].paths)): the file a C(file) check looks at, the C(ca_path) of an C(http)
    check, the program of a C(command) check (root runs it)."
  - "Every path is walked from C(/) one directory at a time (C(agentops.fleet) C(agentops_safefile.locate)): a symlink
    is followed only in a directory that only root can write (C(/usr/bin/node -> /etc/alternatives/node)), never in
    one another user can write; the type of an entry is known before anything opens it, so a device node or a FIFO
    is never opened; a script's first 256 bytes are read through a descriptor opened relative to its directory."
  - "A reason in a place that only root can write is an inventory error (RV(agents[].errors)): the action refuses the
    converge before any change. A reason in a place that a user other than root can write - below the agent's own
    directory O(agents[].own_dir) (even before it exists), or below any directory such a user can write - is that
    agent's problem (RV(agents[].problems)): the agents role leaves that agent as it was and deploys the others."
author:
  - agentops.fleet maintainers (@agentops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - agentops.fleet.read_only
options:
  agents:
    description:
      - The agents to check, one entry each.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The agent's name (messages say C(agentops_agents[<name>])).
        type: str
        required: true
      command:
        description: The agent's command line (an absolute path with optional arguments).
        type: str
        required: true
      user:
        description: The agent's user (it may not exist yet).
        type: str
      own_dir:
        description: The agent's own directory (its HOME and state directory); everything below it counts as
          writable by the agent.
        type: path
      executable:
        description: Check that the command's first word exists and the user may execute it.
        type: bool
        default: false
      strict:
        description: Recognise a JIT runtime (the agent has C(hardening=strict)).
        type: bool
        default: false
      paths:
        description: Paths of the agent's auth checks that root uses.
        type: list
        elements: dict
        default: []
        suboptions:
          field:
            description: Where the path comes from, for the message (C(auth_checks[api].path)).
            type: str
            required: true
          path:
            description: The absolute path.
            type: str
            required: true
          use:
            description: C(stat) (a C(file) check), C(read) (C(ca_path)) or C(run) (the program of a C(command) check).
            type: str
            required: true
            choices: [stat, read, run]
  commands:
    description:
      - Agent name -> command line of agents with C(hardening=strict); the JIT runtime check alone, as
        O(agents) with only O(agents[].strict). Kept for callers of earlier releases.
    type: dict
"""

EXAMPLES = r"""
- name: Check the agents' commands on the host
  agentops.fleet.agent_runtime:
    agents:
      - name: claude
        command: /usr/local/bin/claude -p "work on the queue"
        user: agent-claude
        own_dir: /var/lib/agentops/claude
        executable: true
        strict: true
      - name: indexer
        command: /opt/indexer/run --loop
        executable: true
        paths:
          - {field: "auth_checks[token].path", path: /var/lib/agentops/indexer/token, use: stat}
  register: checked
"""

RETURN = r"""
agents:
  description: Agent name -> what was found; every agent checked has an entry.
  returned: always
  type: dict
  contains:
    errors:
      description: Inventory errors, each naming C(agentops_agents[<name>]) and the field.
      type: list
      elements: str
    problems:
      description: Problems in a place a user other than root can write; they concern this agent alone.
      type: list
      elements: str
    runtime:
      description: The JIT runtime and where it was recognised, or null.
      type: dict
  sample:
    indexer:
      errors: ["agentops_agents[indexer].command: /opt/indexer/run does not exist on the host: install it before
        the converge, or set enabled: false for this agent until it is there"]
      problems: []
      runtime: null
runtimes:
  description: Agent name -> the runtime and where it was recognised; only strict agents that run a JIT runtime.
  returned: always
  type: dict
  sample: {"claude": {"runtime": "node", "how": "/usr/local/bin/claude starts with '#!/usr/bin/env node'"}}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agentops.fleet.plugins.module_utils import agentops_runtime as runtime

PATH_OPTIONS = dict(field=dict(type="str", required=True), path=dict(type="str", required=True),
                    use=dict(type="str", required=True, choices=list(runtime.PATH_USES)))
AGENT_OPTIONS = dict(
    name=dict(type="str", required=True),
    command=dict(type="str", required=True),
    user=dict(type="str"),
    own_dir=dict(type="path"),
    executable=dict(type="bool", default=False),
    strict=dict(type="bool", default=False),
    paths=dict(type="list", elements="dict", default=[], options=PATH_OPTIONS),
)


def main():
    module = AnsibleModule(argument_spec=dict(
        agents=dict(type="list", elements="dict", default=[], options=AGENT_OPTIONS),
        commands=dict(type="dict"),
    ), supports_check_mode=True)
    agents = list(module.params["agents"])
    for name, command in sorted((module.params["commands"] or {}).items()):
        if isinstance(command, str):
            agents.append(dict(name=name, command=command, user=None, own_dir=None, executable=False, strict=True,
                               paths=[]))
    found = {}
    for agent in agents:
        try:
            found[agent["name"]] = runtime.check_agent(agent["name"], agent["command"], user=agent["user"],
                                                       own_dir=agent["own_dir"], strict=agent["strict"],
                                                       executable=agent["executable"], paths=agent["paths"])
        except (OSError, ValueError) as exc:
            module.fail_json(msg="agentops_agents[%s].command: cannot be checked on the host: %s"
                             % (agent["name"], getattr(exc, "strerror", None) or exc))
    runtimes = dict((name, result["runtime"]) for name, result in found.items() if result["runtime"])
    module.exit_json(changed=False, agents=found, runtimes=runtimes)


if __name__ == "__main__":
    main()
