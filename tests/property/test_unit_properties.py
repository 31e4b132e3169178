"""Property: whatever the validator accepts renders into a unit that systemd reads exactly as intended.

For generated agent entries and role defaults (strings full of NULs, line breaks, backslashes,
quotes, ``%``, U+2028/U+2029, C1 controls, huge or non-finite numbers, other scripts' digits):

* rejected -> every message names the variable (``agentops_agents[<agent>].<field>`` or the role
  variable) and the agent;
* accepted -> the unit rendered from roles/agents/templates/agent.service.j2, read with systemd's
  own line rules (comments, sections, backslash continuation), has exactly the directives the
  template intends, in order (no extra line, no swallowed one), each accepted value comes back
  unchanged, and ``systemd-analyze verify`` in a Debian container passes without a single warning.
"""
import os
import string

import jinja2
import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from ansible_collections.agentops.fleet.plugins.filter import agents as filters
from ansible_collections.agentops.fleet.plugins.filter.agents import agents_errors, agents_normalize
from ansible_collections.agentops.fleet.plugins.module_utils import agentops_contract as contract

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TEMPLATES = os.path.join(ROOT, "roles", "agents", "templates")
NAME = "prop"

with open(os.path.join(ROOT, "roles", "agents", "vars", "main.yml")) as _handle:
    PROFILES = yaml.safe_load(_handle)["agentops_agents_profile_directives"]
with open(os.path.join(ROOT, "roles", "agents", "defaults", "main.yml")) as _handle:
    ROLE_DEFAULTS = yaml.safe_load(_handle)

DEFAULTS = {"config_dir": "/etc/agentops", "state_dir": "/var/lib/agentops",
            "hardening": ROLE_DEFAULTS["agentops_agents_hardening"],
            "restart_sec": ROLE_DEFAULTS["agentops_agents_restart_sec"],
            "timeout_stop_sec": ROLE_DEFAULTS["agentops_agents_timeout_stop_sec"],
            "start_limit_interval_sec": ROLE_DEFAULTS["agentops_agents_start_limit_interval_sec"],
            "start_limit_burst": ROLE_DEFAULTS["agentops_agents_start_limit_burst"],
            "memory_max": ROLE_DEFAULTS["agentops_agents_memory_max"],
            "cpu_quota": ROLE_DEFAULTS["agentops_agents_cpu_quota"],
            "tasks_max": ROLE_DEFAULTS["agentops_agents_tasks_max"],
            "every_days": ROLE_DEFAULTS["agentops_agents_every_days"]}

ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), trim_blocks=True, keep_trailing_newline=True,
                         undefined=jinja2.StrictUndefined)

# --------------------------------------------------------------------------- systemd's line rules
WHITESPACE = " \t\n\r"


def systemd_directives(text):
    """[(section, key, value)] of a unit file, read the way systemd's config parser reads it.

    Lines are split on "\\n"; leading and trailing whitespace is dropped; "#" and ";" start a
    comment (also inside a continuation, where systemd skips them); a line whose end is an
    unescaped backslash continues on the next line (the backslash becomes a space).
    """
    result = []
    section = None
    pending = None
    for raw in text.split("\n"):
        line = raw.strip(WHITESPACE)
        if pending is not None and line[:1] in ("#", ";"):
            continue
        if pending is None and (not line or line[:1] in ("#", ";")):
            continue
        escaped = False
        for char in line:
            escaped = (not escaped) and char == "\\"
        if pending is not None:
            line = pending + line
            pending = None
        if escaped:
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, "line without '=' in section %s: %r" % (section, line)
        result.append((section, key.strip(WHITESPACE), value.strip(WHITESPACE)))
    if pending is not None:
        result.append((section, "<continuation at end of file>", pending))
    return result


def render(entry, systemd_version):
    return ENV.get_template("agent.service.j2").render(
        agent=entry, agentops_paths=contract.PATHS,
        agentops_agents_systemd_version=systemd_version,
        agentops_agents_sandbox=filters.agent_sandbox(entry, systemd_version, PROFILES))


def skeleton(agent):
    """The same agent with harmless values in every free-text field: the directives intended."""
    plain = dict(agent)
    plain["command"] = "/bin/true"
    plain.pop("description", None)
    plain["environment"] = {key: "v" for key in agent.get("environment") or {}}
    plain["read_write_paths"] = ["/p%d" % i for i, _ in enumerate(agent.get("read_write_paths") or [])]
    for key in ("restart_sec", "timeout_stop_sec", "start_limit_interval_sec", "start_limit_burst",
                "memory_max", "cpu_quota", "tasks_max"):
        plain.pop(key, None)
    return plain


# --------------------------------------------------------------------------- strategies
NASTY = ["\x00", "\n", "\r", "\\", "\\\\", "%", "%n", '"', "'", u"\u2028", u"\u2029", u"\x85", "\t", " ", ";",
         "$", "${X}", "=", "[", "]", "#", "\x7f", "\x1b", u"\u0663", u"\u00e9", "..", "/"]
CHAR = st.one_of(st.sampled_from(NASTY), st.sampled_from(string.ascii_letters + string.digits + "-_.:/@+,"),
                 st.characters(blacklist_categories=("Cs",)))
NASTY_TEXT = st.lists(CHAR, max_size=12).map("".join)
SAFE_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "-_.:/@+,=%$ " + u"\u00e9\u4e2d", max_size=16)
# mostly values a person would write, often hostile ones: both sides of the validator get exercised
TEXT = st.one_of(SAFE_TEXT, SAFE_TEXT, NASTY_TEXT)
SPANS = st.sampled_from(["10", "10s", "1.5min", "5min", "1h 30s", "30", "1month", "2 weeks", "500ms", 7, 90, 0.5])
VALID_BY_FIELD = {
    "restart_sec": SPANS, "timeout_stop_sec": SPANS, "start_limit_interval_sec": SPANS,
    "start_limit_burst": st.integers(1, 1000),
    "memory_max": st.sampled_from(["2G", "512M", "1.5G", "50%", "infinity", "1048576", 4096]),
    "cpu_quota": st.sampled_from(["50%", "200%", "1%", "12345%"]),
    "tasks_max": st.sampled_from(["512", "infinity", "80%", 64]),
}
NUMBERISH = st.one_of(
    st.integers(min_value=-5, max_value=10 ** 12), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["10", "10s", "1.5min", "5min", "1h 30s", "nan", ".inf", "-1", u"\u0663s", "1e3", "2G", "512M",
                     "50%", "200%", "infinity", "100000%", "99999999999999999999y", "1month", "0"]),
    TEXT)


SAFE_PATH = st.text(alphabet=string.ascii_letters + string.digits + "-_.:@+,=%" + u"\u00e9", min_size=1,
                    max_size=12).map(lambda t: "/srv/" + t)
SAFE_ENV_KEY = st.sampled_from(["LOG_LEVEL", "A", "_X1", "HTTP_PROXY", "NODE_OPTIONS"])
SAFE_CRED = st.sampled_from(["tok", "api_key", "a.b-c", "graph_token"])


@st.composite
def agents(draw):
    """An agent entry: about half of them as a person would write it, with one field or more turned hostile."""
    hostile = draw(st.integers(0, 3))   # 0: none, 1: one field, 2-3: every field may be anything

    def choose(safe, anything):
        return anything if hostile >= 2 or (hostile == 1 and draw(st.integers(0, 5)) == 0) else safe

    def pick(safe, anything):
        return draw(choose(safe, anything))

    agent = {"name": NAME, "command": "/bin/true" + pick(st.just(" "), st.sampled_from(["", " "]))
             + pick(SAFE_TEXT, TEXT)}
    if draw(st.booleans()):
        agent["description"] = pick(SAFE_TEXT, TEXT)
    if draw(st.booleans()):
        keys = choose(SAFE_ENV_KEY, st.one_of(st.sampled_from(["LD_PRELOAD", "PYTHONPATH", "1BAD"]), TEXT))
        values = choose(st.one_of(SAFE_TEXT, st.integers(), st.booleans()), st.one_of(TEXT, st.integers(), st.booleans()))
        agent["environment"] = draw(st.dictionaries(keys, values, max_size=3))
    if draw(st.booleans()):
        agent["read_write_paths"] = draw(st.lists(choose(SAFE_PATH, st.one_of(TEXT.map(lambda t: "/" + t), TEXT)),
                                                  max_size=3))
    if draw(st.booleans()):
        names = choose(SAFE_CRED, st.one_of(st.sampled_from(["tok.prev", "x.tmp"]), TEXT))
        agent["credentials"] = draw(st.dictionaries(names, st.just("s3cret"), max_size=2))
    for key in ("restart_sec", "timeout_stop_sec", "start_limit_interval_sec", "start_limit_burst",
                "memory_max", "cpu_quota", "tasks_max"):
        if draw(st.integers(0, 3)) == 0:
            agent[key] = pick(VALID_BY_FIELD[key], NUMBERISH)
    if draw(st.booleans()):
        agent["hardening"] = pick(st.sampled_from(["standard", "strict", "none"]), st.sampled_from(["paranoid", ""]))
    return agent


@st.composite
def role_defaults(draw):
    """Role defaults written into the unit when an agent does not set its own value."""
    out = {}
    hostile = draw(st.booleans())
    for key in ("restart_sec", "timeout_stop_sec", "start_limit_interval_sec", "memory_max", "cpu_quota",
                "tasks_max", "start_limit_burst"):
        if draw(st.integers(0, 4)) == 0:
            out[key] = draw(NUMBERISH if hostile else VALID_BY_FIELD[key])
    return out


# --------------------------------------------------------------------------- the property
def _same_value(expected, got):
    """A value as systemd reads it back equals what was given (after %% unescaping)."""
    return got.replace("%%", "%") == str(expected).strip(WHITESPACE)


def check_one(verifier, agent, overrides):
    """One example: rejected with named variables, or rendered, read back and verified."""
    setting_errors = contract.settings_errors({"agentops_agents_" + k: v for k, v in overrides.items()})
    errors = agents_errors([agent])
    for message in errors:
        assert message.startswith("agentops_agents[%s]." % NAME), message
        field = message[len("agentops_agents[%s]." % NAME):].split(":", 1)[0]
        assert field and field.split(".")[0].split("[")[0] in agent, message
    for message in setting_errors:
        variable = message.split(":", 1)[0]
        assert variable in ("agentops_agents_" + k for k in overrides), message
    if errors or setting_errors:
        event("rejected")
        return
    event("accepted")
    defaults = dict(DEFAULTS, **overrides)
    (entry,) = agents_normalize([agent], defaults)
    (intended,) = agents_normalize([skeleton(agent)], DEFAULTS)
    text = render(entry, verifier.systemd_version)
    got = systemd_directives(text)
    want = systemd_directives(render(intended, verifier.systemd_version))
    assert [(s, k) for s, k, _ in got] == [(s, k) for s, k, _ in want], text
    values = {(s, k): v for s, k, v in got if k not in ("Environment", "ReadWritePaths", "LoadCredential")}
    if "description" in agent and str(agent["description"]).strip(WHITESPACE):
        assert _same_value(agent["description"], values[("Unit", "Description")]), text
    assert _same_value(agent["command"], values[("Service", "ExecStart")]), text
    for key, directive in (("restart_sec", "RestartSec"), ("memory_max", "MemoryMax"), ("cpu_quota", "CPUQuota"),
                           ("tasks_max", "TasksMax"), ("timeout_stop_sec", "TimeoutStopSec")):
        value = agent.get(key, defaults[key])
        assert _same_value(value, values[("Service", directive)]), text
    if entry["hardening"] != "none":
        (paths,) = [v for s, k, v in got if k == "ReadWritePaths"]
        assert paths.split() == ["/var/lib/agentops/" + NAME] + [p.replace("%", "%%") for p in
                                                                   agent.get("read_write_paths") or []]
    rc, output = verifier.verify("agentops-%s.service" % NAME, text)
    assert rc == 0 and output.strip() == "", "systemd-analyze verify:\n%s\n--- unit:\n%s" % (output, text)


@settings(max_examples=int(os.environ.get("AGENTOPS_PROPERTY_EXAMPLES", "300")), deadline=None, derandomize=True,
          database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(agent=agents(), overrides=role_defaults())
# the reproductions of the directive-injection report
@example(agent={"name": NAME, "command": "/bin/true", "read_write_paths": ["/tmp/x\x00User=root"]}, overrides={})
@example(agent={"name": NAME, "command": "/bin/true", "read_write_paths": ["/tmp/x\\"]}, overrides={})
@example(agent={"name": NAME, "command": "/bin/true --rate 50% \\"}, overrides={})
@example(agent={"name": NAME, "command": "/bin/true", "description": "nice\\"}, overrides={})
@example(agent={"name": NAME, "command": "/bin/true", "description": u"nice\u2028Wants=evil.service"}, overrides={})
@example(agent={"name": NAME, "command": "/bin/true"}, overrides={"memory_max": "2G\nUser=root"})
@example(agent={"name": NAME, "command": "/bin/true"}, overrides={"restart_sec": float("nan")})
@example(agent={"name": NAME, "command": "/bin/true", "description": "50% of %n",
                "environment": {"Q": 'say "hi" \\'}, "read_write_paths": ["/srv/100%"]}, overrides={})
def test_accepted_values_render_exactly_the_intended_unit(verifier, agent, overrides):
    check_one(verifier, agent, overrides)


def test_the_line_reader_sees_a_swallowed_directive():
    """The reader used above follows systemd: a trailing backslash swallows the next directive."""
    got = systemd_directives("[Service]\nReadWritePaths=/tmp/x\\\nUser=root\nExecStart=/bin/true\n")
    assert [k for _, k, _ in got] == ["ReadWritePaths", "ExecStart"]
    assert got[0][2] == "/tmp/x User=root"


def test_verify_is_a_real_judge_and_the_key_check_catches_what_it_misses(verifier):
    """A continuation into a directive that verify cannot see is caught by the key comparison.

    ``ReadWritePaths=/tmp/x\\`` followed by ``User=root`` draws a warning from verify; ``ExecStart=`` followed
    by ``User=root`` is read as one more argument, verify stays silent, and only the directive
    comparison of the property test notices the swallowed line.
    """
    text = render(agents_normalize([{"name": NAME, "command": "/bin/true"}], DEFAULTS)[0], verifier.systemd_version)
    rc, output = verifier.verify("agentops-%s.service" % NAME, text)
    assert rc == 0 and output.strip() == "", output
    paths = text.replace("ReadWritePaths=/var/lib/agentops/prop", "ReadWritePaths=/var/lib/agentops/prop /tmp/x\\\nUser=root")
    rc, output = verifier.verify("agentops-%s.service" % NAME, paths)
    assert rc != 0 or output.strip(), output
    swallowed = text.replace("ExecStart=/bin/true", "ExecStart=/bin/true \\\nUser=root")
    assert [k for _, k, _ in systemd_directives(swallowed)] == [k for _, k, _ in systemd_directives(text)]
    assert ("Service", "ExecStart", "/bin/true  User=root") in systemd_directives(swallowed)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), u"\u0663s"])
def test_non_finite_and_foreign_digits_are_rejected(value):
    errors = agents_errors([{"name": NAME, "command": "/bin/true", "restart_sec": value}])
    assert errors and all(e.startswith("agentops_agents[prop].restart_sec:") for e in errors)
