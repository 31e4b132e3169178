"""agent_audit: a scheduled agent (one-shot runs started by its timer) in the checklist."""
import pytest

from ansible_collections.agentops.fleet.plugins.modules import agent_audit

from test_agent_audit import GOOD_PROPS, by_id, good_agent, good_facts

ONESHOT = dict(GOOD_PROPS, Id="agentops-nightly.service", ActiveState="inactive", Restart="no")
TIMER_OK = {"Id": "agentops-nightly.timer", "LoadState": "loaded", "ActiveState": "active", "UnitFileState": "enabled"}


def scheduled(timer):
    return good_agent(unit="agentops-nightly.service", name="nightly", props=dict(ONESHOT), active_state="inactive",
                      restart_sec=None, schedule="*-*-* 03:00:00", timer="agentops-nightly.timer", timer_props=timer,
                      credentials=[], auth_checks=0)


def test_scheduled_agent_inactive_between_runs_is_no_finding():
    checks = by_id(agent_audit.evaluate(good_facts(agents=[good_agent(), scheduled(dict(TIMER_OK))])))
    assert checks["restart"]["passed"], checks["restart"]
    assert "a scheduled agent: its timer active and enabled" in checks["restart"]["reason"]
    assert checks["kill_mode"]["passed"] and checks["alert_path"]["passed"]


@pytest.mark.parametrize("timer, needle", [
    ({"Id": "agentops-nightly.timer", "LoadState": "not-found"}, "agentops-nightly.timer is missing"),
    (dict(TIMER_OK, ActiveState="inactive", UnitFileState="disabled"),
     "agentops-nightly.timer is inactive and disabled: runs are missed"),
    (dict(TIMER_OK, UnitFileState="disabled"), "is active and disabled"),
    ({}, "is missing (LoadState=unknown)"),
])
def test_missing_or_disabled_timer_is_a_finding(timer, needle):
    checks = by_id(agent_audit.evaluate(good_facts(agents=[good_agent(), scheduled(timer)])))
    assert not checks["restart"]["passed"]
    assert needle in checks["restart"]["reason"], checks["restart"]["reason"]
    assert "agentops-mail.service" not in checks["restart"]["reason"]      # the long-running agent is fine
