"""agentops.fleet.agent_runtime: which agent commands run a JIT runtime, run in-process as on a host."""
import json
import os

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.agentops.fleet.plugins.modules import agent_runtime


def run_module(capsys, **args):
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exc:
            agent_runtime.main()
    return exc.value.code, json.loads(capsys.readouterr().out)


def test_reports_only_the_jit_agents(tmp_path, capsys):
    script = tmp_path / "cli.js"
    script.write_bytes(b"#!/usr/bin/env node\nconsole.log(1)\n")
    os.symlink(str(script), str(tmp_path / "claude"))
    code, result = run_module(capsys, commands={
        "coder": str(tmp_path / "claude") + " -p work",
        "direct": "/usr/bin/java -jar /opt/a.jar",
        "python": "/usr/bin/python3 /opt/agent.py",
        "missing": "/nonexistent/agent --loop",
    })
    assert code == 0 and result["changed"] is False
    assert sorted(result["runtimes"]) == ["coder", "direct"]
    assert result["runtimes"]["coder"]["runtime"] == "node"
    assert "starts with '#!/usr/bin/env node'" in result["runtimes"]["coder"]["how"]
    assert result["runtimes"]["direct"] == {"runtime": "java", "how": "the command is /usr/bin/java"}


def test_check_mode_reads_too(tmp_path, capsys):
    code, result = run_module(capsys, commands={"n": "/usr/bin/env deno run x.ts"}, _ansible_check_mode=True)
    assert code == 0 and result["runtimes"]["n"]["runtime"] == "deno"


def test_every_agent_is_checked_and_problems_stay_apart(trusted_dir, capsys):
    """Inventory errors (root-only places) and the agents' own problems (places their user can write) apart; an
    agent with enabled: false is not checked for its executable."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the agent's directory belongs to nobody")
    import pwd
    nobody = pwd.getpwnam("nobody")
    own = os.path.join(trusted_dir, "agents", "evil")
    os.makedirs(own)
    os.chown(own, nobody.pw_uid, nobody.pw_gid)
    secret = os.path.join(trusted_dir, "secret")
    with open(secret, "wb") as handle:
        handle.write(b"#!/usr/bin/node\nCANARY-agent-runtime\n")
    os.chmod(secret, 0o600)
    os.symlink(secret, os.path.join(own, "run"))
    code, result = run_module(capsys, _ansible_check_mode=True, agents=[
        {"name": "fine", "command": "/bin/true", "executable": True, "strict": True},
        {"name": "gone", "command": os.path.join(trusted_dir, "opt", "run") + " --loop", "executable": True},
        {"name": "later", "command": os.path.join(trusted_dir, "opt", "run"), "executable": False},
        {"name": "evil", "command": os.path.join(own, "run"), "user": "nobody", "own_dir": own, "executable": True,
         "strict": True, "paths": [{"field": "auth_checks[tok].path", "path": os.path.join(own, "run"),
                                    "use": "stat"}]},
    ])
    assert code == 0 and result["changed"] is False
    agents = result["agents"]
    assert agents["fine"] == agents["later"] == {"errors": [], "problems": [], "runtime": None}
    assert agents["gone"]["errors"] == ["agentops_agents[gone].command: %s does not exist on the host: install it "
                                        "before the converge, or set enabled: false for this agent until it is there"
                                        % os.path.join(trusted_dir, "opt", "run")]
    link = "%s is a symlink (not followed): in a directory that a user other than root can write" \
        % os.path.join(own, "run")
    assert agents["evil"] == {"errors": [], "runtime": None,
                              "problems": ["agentops_agents[evil].command: " + link,
                                           "agentops_agents[evil].auth_checks[tok].path: " + link]}
    assert result["runtimes"] == {}
    assert "CANARY" not in json.dumps(result) and secret not in json.dumps(result)
