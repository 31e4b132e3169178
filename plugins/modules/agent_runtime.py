#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: agent_runtime
short_description: Recognise agents whose command runs a JIT runtime (Node.js, Deno, Bun, Java)
version_added: "0.1.0"
description:
  - For each agent command, tells whether it runs a runtime that compiles code at run time (C(node), C(nodejs),
    C(deno), C(bun), C(java)) - from the command's first word, the target of that word when it is a link (for
    example C(/usr/local/bin/claude) linking to a script), the program C(env) runs, or the script's C(#!) line.
  - A script's first 256 bytes are read, without following a final link and without blocking on a FIFO; a
    command that does not exist yet is judged by its name only.
  - C(hardening=strict) sets C(MemoryDenyWriteExecute=yes), which kills such a runtime at start. The
    action C(agentops.fleet.inventory_contract) runs this module before any change and refuses a strict agent whose
    command runs one, with a message naming the agent and telling to use C(hardening=standard).
  - The module never changes anything; it runs in check mode too.
author:
  - agentops.fleet maintainers (@agentops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - agentops.fleet.read_only
options:
  commands:
    description:
      - Agent name -> the agent's command line (an absolute path with optional arguments).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Which agents run a JIT runtime
  agentops.fleet.agent_runtime:
    commands:
      claude: /usr/local/bin/claude -p "work on the queue"
      indexer: /opt/indexer/run --loop
  register: runtimes
"""

RETURN = r"""
runtimes:
  description: Agent name -> the runtime and where it was recognised; only agents that run a JIT runtime.
  returned: always
  type: dict
  sample: {"claude": {"runtime": "node", "how": "/usr/local/bin/claude starts with '#!/usr/bin/env node'"}}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agentops.fleet.plugins.module_utils.agentops_runtime import detect


def main():
    module = AnsibleModule(argument_spec={"commands": {"type": "dict", "required": True}}, supports_check_mode=True)
    runtimes = {}
    for name, command in sorted(module.params["commands"].items()):
        if not isinstance(command, str):
            continue
        try:
            runtime, how = detect(command)
        except OSError as exc:
            module.fail_json(msg="agentops_agents[%s].command: cannot read %s: %s" % (name, command, exc.strerror))
        if runtime:
            runtimes[name] = {"runtime": runtime, "how": how}
    module.exit_json(changed=False, runtimes=runtimes)


if __name__ == "__main__":
    main()
