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
