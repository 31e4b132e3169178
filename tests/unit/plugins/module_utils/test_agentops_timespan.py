import pytest

from ansible_collections.agentops.fleet.plugins.module_utils.agentops_timespan import parse_timespan


@pytest.mark.parametrize("text,seconds", [
    ("30min", 1800), ("1h 30s", 3630), ("45", 45), (45, 45), ("1week", 604800),
    ("2d", 172800), ("500ms", 0.5), ("1h30min", 5400), ("7d", 604800),
])
def test_parse_timespan(text, seconds):
    assert parse_timespan(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "10 parsecs", "-5", "5m-", True, -3, "*/45",
                                  # regressions: other scripts' digits, non-finite numbers, line breaks
                                  u"\u0663s", u"\u0663", "nan", ".inf", float("nan"), float("inf"), float("-inf"),
                                  "5s\n", "\n5s", u"5s\u2028", "5\x00s"])
def test_parse_timespan_rejects(text):
    with pytest.raises(ValueError):
        parse_timespan(text)


def test_host_name_is_the_same_code():
    from agentops_lib import agentops_timespan as host_copy
    assert host_copy.parse_timespan("1h") == 3600
