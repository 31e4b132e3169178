"""The on-host command imports from agentops_lib only the modules the common role installs there."""
import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
HOST = os.path.join(ROOT, "roles", "common", "files", "agentops_host")


def test_every_agentops_lib_import_is_installed_on_the_host():
    with open(os.path.join(ROOT, "roles", "common", "vars", "main.yml"), encoding="utf-8") as handle:
        installed = set(m[:-3] for m in yaml.safe_load(handle)["agentops_common_shared_modules"])
    imported = set()
    for name in os.listdir(HOST):
        if name.endswith(".py"):
            with open(os.path.join(HOST, name), encoding="utf-8") as handle:
                text = handle.read()
            imported.update(re.findall(r"^\s*from agentops_lib\.(\w+) import", text, re.M))
            imported.update(re.findall(r"^\s*from agentops_lib import (\w+)", text, re.M))
    assert imported and imported <= installed, imported - installed
