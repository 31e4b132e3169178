"""Modules run on the managed host, not in the controller: run them in-process the same way.

Importing controller code (ansible.errors, a filter plugin, an action plugin) in the same pytest
process marks the process as the controller, and ansible-core then sends module warnings to the
controller's display instead of the module result. The modules' own tests run them as on a host.
"""
import pytest

from ansible.module_utils import _internal as module_utils_internal


@pytest.fixture(autouse=True)
def _run_as_on_the_host(monkeypatch):
    monkeypatch.setattr(module_utils_internal, "is_controller", False)
