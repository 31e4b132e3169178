"""Fixtures of the agents scenario (helpers live in agents_helpers.py)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from agents_helpers import scenario_agents  # noqa: E402


@pytest.fixture(scope="session")
def scenario():
    """agentops_agents as the scenario's inventory defines it (a fresh copy)."""
    return scenario_agents()
