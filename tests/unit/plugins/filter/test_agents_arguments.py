"""The filters that prepare the roles' module arguments (plugins/filter/agents.py).

The rendered files are compared with what Ansible's own template lookup makes of the same
templates (a real ansible-playbook run on localhost): byte for byte, for every agent and profile.
"""
import json
import os
import subprocess
import sys

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.agentops.fleet.plugins.filter import agents as filters
from ansible_collections.agentops.fleet.plugins.module_utils.agentops_contract import PATHS

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
ROLE = os.path.join(ROOT, "roles", "agents")
DEFAULTS = {"config_dir": "/etc/agentops", "state_dir": "/var/lib/agentops", "hardening": "standard",
            "restart_sec": 10, "timeout_stop_sec": 30, "start_limit_interval_sec": "5min", "start_limit_burst": 5,
            "memory_max": "2G", "cpu_quota": "200%", "tasks_max": 512, "every_days": 45}
with open(os.path.join(ROLE, "vars", "main.yml"), encoding="utf-8") as _handle:
    PROFILES = yaml.safe_load(_handle)["agentops_agents_profile_directives"]

AGENTS = [
    {"name": "mail-triage", "command": "/opt/agents/mail-triage/run --rate 50%", "user": "mailer",
     "description": u"Mail triage \u00e9 100%", "environment": {"Q": 'say "hi" \\ 100%', "LOG_LEVEL": "info"},
     "credentials": {"graph_token": "s3cr3t-graph", "other": "s3cr3t-other"},
     "auth_checks": [{"name": "graph", "type": "http", "url": u"https://graph.example.com/v1.0/m\u00e9",
                      "credential": "graph_token", "expect_status": [200]}],
     "heartbeat": {"interval": "15s", "max_silence": "30s"},
     "token_rotation": [{"credential": "graph_token", "every_days": 30, "command": "/opt/refresh", "timeout": 60}],
     "failure_modes": [{"tool": "email", "on_failure": u"Send an alert {braces} <b>&amp; \u2713"},
                       {"tool": "api", "on_failure": "Wait 60 seconds, retry once, then alert"}],
     "read_write_paths": ["/srv/mail", "/srv/50%"]},
    {"name": "strict-one", "command": "/bin/true", "hardening": "strict", "enabled": False,
     "memory_max": "1G", "cpu_quota": "50%", "tasks_max": 64, "restart_sec": "1min"},
    {"name": "open", "command": "/bin/true", "hardening": "none"},
    {"name": "gone", "command": "/bin/true", "state": "absent", "credentials": {"t": "never-written"}},
]

# Each present agent's files rendered by Ansible's template lookup, one agent at a time.
REFERENCE_PLAY = """
- hosts: localhost
  gather_facts: false
  vars:
    agentops_paths: %(paths)s
    agentops_agents_profile_directives: %(profiles)s
  tasks:
    - ansible.builtin.set_fact:
        effective: "{{ agents | agentops.fleet.agents_normalize(settings) | selectattr('state', 'eq', 'present') | list }}"
    - ansible.builtin.copy:
        dest: "{{ out }}"
        mode: "0600"
        content: >-
          {%% set rendered = {} %%}{%% for agent in effective %%}{%% set _ = rendered.update({agent.name: {
            'AGENTS.md': lookup('ansible.builtin.template', role ~ '/templates/AGENTS.md.j2', template_vars={'agent': agent}),
            'WORKSTATE.md': lookup('ansible.builtin.template', role ~ '/templates/WORKSTATE.md.j2', template_vars={'agent': agent}),
            'unit': lookup('ansible.builtin.template', role ~ '/templates/agent.service.j2', template_vars={'agent': agent,
                'agentops_agents_sandbox': agent | agentops.fleet.agents_sandbox(agentops_agents_systemd_version,
                                                                                agentops_agents_profile_directives)}),
            'config': (agent.config | combine({'sandbox': (agent | agentops.fleet.agents_sandbox(
                agentops_agents_systemd_version, agentops_agents_profile_directives)).config})
                       | to_nice_json(indent=2)) ~ '\\n'}}) %%}{%% endfor %%}{{ rendered | to_json }}
"""


def ansible_playbook(tmp_path, play, extra):
    (tmp_path / "play.yml").write_text(play)
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".cache", "collections"),
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="0", ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,",
                           "-c", "local", "-e", "@%s" % (tmp_path / "extra.json"), str(tmp_path / "play.yml")],
                          cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


@pytest.mark.parametrize("version", [247, 257])
def test_agents_files_are_what_the_template_lookup_renders(tmp_path, version):
    out = tmp_path / "reference.json"
    play = REFERENCE_PLAY % {"paths": json.dumps(PATHS), "profiles": json.dumps(PROFILES)}
    ansible_playbook(tmp_path, play, {"agents": AGENTS, "settings": DEFAULTS, "role": ROLE, "out": str(out),
                                      "agentops_agents_systemd_version": version})
    reference = json.loads(out.read_text(encoding="utf-8"))
    effective = filters.agents_normalize(AGENTS, DEFAULTS)
    args = filters.agents_files(effective, ROLE, PATHS, version, PROFILES)
    assert sorted(reference) == ["mail-triage", "open", "strict-one"]
    by_path = dict((f["path"], dict(f, content=args["secret_contents"][f["path"]]) if "content" not in f else f)
                   for f in args["files"])
    assert len(by_path) == len(args["files"]) == 4 * 3
    for entry in effective:
        if entry["state"] != "present":
            continue
        ref = reference[entry["name"]]
        state_dir = "/var/lib/agentops/" + entry["name"]
        assert by_path[state_dir + "/AGENTS.md"]["content"] == ref["AGENTS.md"]
        assert by_path[state_dir + "/WORKSTATE.md"]["content"] == ref["WORKSTATE.md"]
        assert by_path["/etc/systemd/system/" + entry["unit"]]["content"] == ref["unit"]
        assert by_path["/etc/agentops/agents.d/%s.json" % entry["name"]]["content"] == ref["config"]
    unit = by_path["/etc/systemd/system/agentops-strict-one.service"]["content"]
    assert ("ProcSubset=pid" in unit) is (version >= 247) and ("MemoryKSM=no" in unit) is (version >= 254)
    # systemd 247 cannot run an ExecStartPre= beside LoadCredential= in a sandboxed unit (fixed in 248): there the
    # unit requires the one-shot agentops-auth@<name>.service, which runs the same check before every start
    mail = by_path["/etc/systemd/system/agentops-mail-triage.service"]["content"]
    assert ("ExecStartPre=+/usr/local/bin/agentops check-auth mail-triage" in mail) is (version >= 248)
    assert ("# auth_checks at session start: systemd 247 cannot run" in mail) is (version == 247)
    assert ("\nRequires=agentops-auth@mail-triage.service\nAfter=agentops-auth@mail-triage.service\n" in
            mail.split("[Service]")[0]) is (version == 247)
    assert u"{braces} <b>&amp; \u2713" in by_path["/var/lib/agentops/mail-triage/AGENTS.md"]["content"]


def test_agents_files_owners_modes_and_order():
    effective = filters.agents_normalize(AGENTS, DEFAULTS)
    args = filters.agents_files(effective, ROLE, PATHS, 252, PROFILES)
    assert args["users"] == [
        {"name": "mailer", "home": "/var/lib/agentops/mail-triage", "comment": "agentops agent mail-triage",
         "agent": "mail-triage"},
        {"name": "agent-strict-one", "home": "/var/lib/agentops/strict-one", "comment": "agentops agent strict-one",
         "agent": "strict-one"},
        {"name": "agent-open", "home": "/var/lib/agentops/open", "comment": "agentops agent open", "agent": "open"}]
    assert args["directories"][0] == {"path": "/var/lib/agentops/mail-triage", "owner": "mailer", "group": "mailer",
                                      "mode": "0700", "agent": "mail-triage"}
    # every entry names its agent: a problem in its directory holds that agent's later entries (agent_files)
    assert [f["agent"] for f in args["files"][:2] + args["files"][6:8]] == ["mail-triage"] * 4
    paths = [f["path"] for f in args["files"]]
    # the agents' own files first, then units and settings (the order of the module's work)
    assert paths[:2] == ["/var/lib/agentops/mail-triage/AGENTS.md", "/var/lib/agentops/mail-triage/WORKSTATE.md"]
    assert paths[6:8] == ["/etc/systemd/system/agentops-mail-triage.service",
                          "/etc/agentops/agents.d/mail-triage.json"]
    workstate = args["files"][1]
    assert workstate["force"] is False and workstate["owner"] == "mailer" and workstate["mode"] == "0600"
    assert all("force" not in f for f in args["files"] if not f["path"].endswith("WORKSTATE.md"))
    assert args["files"][6]["mode"] == "0644" and args["files"][7]["mode"] == "0600"
    assert "owner" not in args["files"][6]  # root, the module's default
    assert not any("s3cr3t" in json.dumps(v) for v in args.values())
    # the settings file holding a secret (the auth check's url) travels in secret_contents, the others in files
    assert sorted(args["secret_contents"]) == ["/etc/agentops/agents.d/mail-triage.json"]
    assert "content" not in args["files"][7] and all("content" in f for f in args["files"] if f is not args["files"][7])
    assert not any("gone" in f["path"] for f in args["files"])


def test_agents_files_without_agents_and_without_version():
    assert filters.agents_files([], ROLE, PATHS) == {"users": [], "directories": [], "files": [], "secret_contents": {}}
    effective = filters.agents_normalize(AGENTS[:1], DEFAULTS)
    with pytest.raises(AnsibleFilterError, match="systemd version"):
        filters.agents_files(effective, ROLE, PATHS, None, PROFILES)
    with pytest.raises(AnsibleFilterError, match="AGENTS.md.j2"):
        filters.agents_files(effective, "/nonexistent/role", PATHS, 252, PROFILES)


def test_agents_credential_files():
    effective = filters.agents_normalize(AGENTS, DEFAULTS)
    args = filters.agents_credential_files(effective, AGENTS)
    assert args["directories"] == [
        {"path": "/etc/agentops/credentials/%s" % n, "owner": "root", "group": "root", "mode": "0700"}
        for n in ("mail-triage", "strict-one", "open")]
    assert args["secret_files"] == [
        {"path": "/etc/agentops/credentials/mail-triage/graph_token", "content": "s3cr3t-graph", "owner": "root",
         "group": "root", "mode": "0600", "force": False},   # rotated on the host: written only when absent
        {"path": "/etc/agentops/credentials/mail-triage/other", "content": "s3cr3t-other", "owner": "root",
         "group": "root", "mode": "0600", "force": True}]
    assert args["prune"] == [
        {"path": "/etc/agentops/credentials/mail-triage", "keep": ["graph_token", "other", "graph_token.prev"]},
        {"path": "/etc/agentops/credentials/strict-one", "keep": []},
        {"path": "/etc/agentops/credentials/open", "keep": []}]
    assert "never-written" not in json.dumps(args)


def test_agents_absent_paths():
    effective = filters.agents_normalize(AGENTS, DEFAULTS)
    assert filters.agents_absent_paths(effective, "/etc/systemd/system") == [
        "/etc/systemd/system/agentops-gone.service", "/etc/systemd/system/agentops-gone.service.d",
        "/etc/systemd/system/multi-user.target.wants/agentops-gone.service",
        "/etc/agentops/agents.d/gone.json", "/etc/agentops/credentials/gone",
        "/etc/systemd/system/agentops-gone.timer", "/etc/systemd/system/timers.target.wants/agentops-gone.timer"]
    assert filters.agents_absent_paths(effective[:1], "/etc/systemd/system") == []


SHOW = ("systemd 252 (252.22-1~deb12u1)\n"
        "Id=agentops-mail-triage.service\nLoadState=loaded\nActiveState=failed\nUnitFileState=enabled\n\n"
        "Id=agentops-strict-one.service\nLoadState=loaded\nActiveState=active\nUnitFileState=enabled\n\n"
        "Id=agentops-open.service\nLoadState=loaded\nActiveState=active\nUnitFileState=disabled\n\n"
        "Id=agentops-gone.service\nLoadState=loaded\nActiveState=inactive\nUnitFileState=enabled\n")


def test_systemd_state_reads_version_and_units():
    state = filters.systemd_state(SHOW)
    assert state["version"] == 252
    assert sorted(state["units"]) == ["agentops-gone.service", "agentops-mail-triage.service",
                                      "agentops-open.service", "agentops-strict-one.service"]
    assert state["units"]["agentops-open.service"]["UnitFileState"] == "disabled"
    for bad in ("", "Id=x.service\n", "systemd\n", "systemd two (x)\n"):
        with pytest.raises(AnsibleFilterError, match="no systemd version"):
            filters.systemd_state(bad)


def test_agents_unit_actions():
    effective = filters.agents_normalize(AGENTS, DEFAULTS)
    actions = filters.agents_unit_actions(effective, filters.systemd_state(SHOW)["units"])
    assert actions == {
        "reset_failed": ["agentops-mail-triage.service"],
        "start": ["agentops-mail-triage.service", "agentops-open.service"],  # failed; running but not enabled
        "disable": ["agentops-strict-one.service"],                          # enabled: false, still enabled
        "stop": ["agentops-gone.service"]}
    # nothing known yet (first run): every wanted agent is started, nothing else
    assert filters.agents_unit_actions(effective, {}) == {
        "reset_failed": [], "start": ["agentops-mail-triage.service", "agentops-open.service"],
        "disable": [], "stop": []}
    settled = {u: {"Id": u, "LoadState": "loaded", "ActiveState": "activating", "UnitFileState": "enabled"}
               for u in ("agentops-mail-triage.service", "agentops-open.service")}
    settled["agentops-gone.service"] = {"Id": "agentops-gone.service", "LoadState": "not-found"}
    assert filters.agents_unit_actions(effective, settled) == {"reset_failed": [], "start": [], "disable": [],
                                                              "stop": []}


def test_agents_auth_checks():
    checks = filters.agents_auth_checks(AGENTS + [
        {"name": "filey", "command": "/bin/true", "auth_checks": [{"name": "c", "type": "command", "command": "/x"}]},
        {"name": "off", "command": "/bin/true", "state": "absent", "auth_checks": [{"name": "c", "type": "file"}]}],
        "/etc/agentops")
    assert checks == [
        {"agent": "mail-triage", "check": AGENTS[0]["auth_checks"][0],
         "credential_file": "/etc/agentops/credentials/mail-triage/graph_token"},
        {"agent": "filey", "check": {"name": "c", "type": "command", "command": "/x"}, "credential_file": None}]
    assert filters.agents_auth_checks(None, "/etc/agentops") == []


def test_auth_check_report():
    def result(agent, check, **values):
        return dict({"item": {"agent": agent, "check": {"name": check}}}, **values)

    results = [
        result("a", "ok", passed=True, status="AUTH_OK", message="a/ok: AUTH_OK"),
        result("b", "dead", passed=False, status="AUTH_EXPIRED", message="b/dead: expired"),
        result("c", "far", passed=False, status="AUTH_UNREACHABLE", message="c/far: timed out"),
        result("d", "broken", failed=True, msg="unsupported parameter"),
        result("e", "silent", failed=True),
    ]
    report = filters.auth_check_report(results)
    assert report["lines"] == ["agent a, AUTH_OK: a/ok: AUTH_OK", "agent b, AUTH_EXPIRED: b/dead: expired",
                               "agent c, AUTH_UNREACHABLE: c/far: timed out",
                               "agent d, AUTH_FAILED: unsupported parameter",
                               "agent e, AUTH_FAILED: auth check silent could not run"]
    assert report["failures"] == ["agent b: b/dead: expired", "agent d: unsupported parameter",
                                  "agent e: auth check silent could not run"]
    assert report["unreachable"] == ["c/far: timed out"]
    assert filters.auth_check_report(results, True)["failures"][1] == "agent c: c/far: timed out"
    assert filters.auth_check_report([]) == {"lines": [], "failures": [], "unreachable": []}


def test_agents_rotating():
    assert filters.agents_rotating(AGENTS) is True
    assert filters.agents_rotating(AGENTS[1:]) is False
    assert filters.agents_rotating([dict(AGENTS[0], state="absent")]) is False
    assert filters.agents_rotating(None) is False


def test_host_command_files_are_the_collection_files():
    role = os.path.join(ROOT, "roles", "common")
    files = filters.host_command_files(PATHS, role, ["__init__.py", "agentops_contract.py"])
    by_path = dict((f["path"], f) for f in files)
    entry = by_path.pop("/usr/local/bin/agentops")
    assert entry["mode"] == "0755"
    with open(os.path.join(role, "files", "agentops"), encoding="utf-8") as handle:
        assert entry["content"] == handle.read()
    host = sorted(n for n in os.listdir(os.path.join(role, "files", "agentops_host")) if n.endswith(".py"))
    assert sorted(p for p in by_path if "/agentops_host/" in p) == \
        ["/usr/local/lib/agentops/agentops_host/" + n for n in host]
    lib = by_path["/usr/local/lib/agentops/agentops_lib/agentops_contract.py"]
    with open(os.path.join(ROOT, "plugins", "module_utils", "agentops_contract.py"), encoding="utf-8") as handle:
        assert lib["content"] == handle.read() and lib["mode"] == "0644"
    assert len(by_path) == len(host) + 2
    with pytest.raises(AnsibleFilterError, match="nope.py"):
        filters.host_command_files(PATHS, role, ["nope.py"])


def test_audit_summary():
    ids = ["kill_mode", "restart"]
    hostvars = {
        "web1": {"agentops_audit_result": {"passed": True, "checklist": [{"id": "kill_mode", "passed": True},
                                                                         {"id": "restart", "passed": True}]}},
        "db-server-2": {"agentops_audit_result": {"passed": False, "checklist": [
            {"id": "kill_mode", "passed": False}, {"id": "restart", "passed": True}]}},
        "gone": {},
    }
    text = filters.audit_summary(["web1", "db-server-2", "gone"], hostvars, ids)
    assert text.split("\n") == [
        "HOST         RESULT       PASSED  kill_mode  restart",
        "web1         pass         2/2     ok         ok",
        "db-server-2  FAIL         1/2     FAIL       ok",
        "gone         not audited  -       -          -",
        "1 host(s) pass every item, 1 fail at least one, 1 not audited (unreachable or error)"]
    assert filters.audit_summary(["web1"], hostvars, ids).endswith("1 host(s) pass every item, 0 fail at least one")


def test_audit_checklist_aligns_ids_and_lists_units():
    result = {"summary": "1/2 items pass", "agents": [{"unit": "agentops-a.service"}, {"unit": "agentops-b.service"}],
              "checklist": [{"id": "kill_mode", "passed": True, "reason": "KillMode=control-group"},
                            {"id": "restart", "passed": False, "reason": "Restart=no"}]}
    assert filters.audit_checklist(result, "web1") == [
        "Agent Ops Checklist for web1: 1/2 items pass",
        "PASS  kill_mode  KillMode=control-group",
        "FAIL  restart    Restart=no",
        "agent units: agentops-a.service, agentops-b.service"]
    assert filters.audit_checklist({"summary": "0/0", "checklist": []}, "h")[-1] == "agent units: none"


def test_audit_report_marks_unaudited_hosts_failed():
    audited = {"passed": True, "summary": "2/2", "failed_items": [], "checklist": [{"id": "x", "passed": True}],
               "agents": [], "changed": False}
    report = filters.audit_report(["web1", "gone"], {"web1": {"agentops_audit_result": audited}, "gone": {}}, "T")
    assert report["generated"] == "T" and report["passed"] is False
    assert report["hosts"]["web1"] == {key: audited[key] for key in
                                       ("passed", "summary", "failed_items", "checklist", "agents")}
    assert report["hosts"]["gone"]["summary"] == "not audited (unreachable or error)"
    assert filters.audit_report(["web1"], {"web1": {"agentops_audit_result": audited}}, "T")["passed"] is True


def test_every_filter_is_registered():
    names = filters.FilterModule().filters()
    for name in ("agents_files", "agents_credential_files", "agents_absent_paths", "agents_unit_actions",
                 "systemd_state", "agents_auth_checks", "auth_check_report", "agents_rotating",
                 "host_command_files", "status_fleet_rows", "status_report", "audit_summary", "audit_checklist", "audit_report",
                 "agents_normalize", "agents_errors", "systemctl_show"):
        assert callable(names[name]), name


@pytest.mark.parametrize("version", [252, 257])
def test_unit_knobs_are_gated_on_the_systemd_version(version):
    agent = {"name": "knobs", "command": "/bin/true", "restart_sec": "2s", "restart_steps": 3,
             "restart_max_delay_sec": "30s", "runtime_max": "12h", "memory_high": "200M", "oom_score_adjust": 300}
    args = filters.agents_files(filters.agents_normalize([agent], DEFAULTS), ROLE, PATHS, version, PROFILES)
    unit = [f for f in args["files"] if f["path"] == "/etc/systemd/system/agentops-knobs.service"][0]["content"]
    lines = unit.splitlines()
    for line in ("RuntimeMaxSec=12h", "MemoryHigh=200M", "OOMScoreAdjust=300", "RestartSec=2s"):
        assert line in lines, (line, unit)
    if version >= 254:
        assert "RestartSteps=3" in lines and "RestartMaxDelaySec=30s" in lines
    else:
        assert not [line for line in lines if line.startswith(("RestartSteps=", "RestartMaxDelaySec="))]
        assert "# restart_steps: RestartSteps= needs systemd 254, this host has 252" in lines
    plain = filters.agents_files(filters.agents_normalize([{"name": "plain", "command": "/bin/true"}], DEFAULTS),
                                 ROLE, PATHS, version, PROFILES)
    text = [f for f in plain["files"] if f["path"].endswith("agentops-plain.service")][0]["content"]
    assert not any(key in text for key in ("RestartSteps", "RuntimeMaxSec", "MemoryHigh", "OOMScoreAdjust"))


def _units(agents, version):
    args = filters.agents_files(filters.agents_normalize(agents, DEFAULTS), ROLE, PATHS, version, PROFILES)
    return dict((os.path.basename(f["path"]), f["content"]) for f in args["files"] if f["path"].endswith(".service"))


@pytest.mark.parametrize("version", [247, 248, 252, 257])
def test_sandboxed_agents_get_a_private_dev_shm(version):
    units = _units([{"name": "std", "command": "/bin/true"}, {"name": "tight", "command": "/bin/true",
                                                             "hardening": "strict"},
                    {"name": "open", "command": "/bin/true", "hardening": "none"}], version)
    line = "TemporaryFileSystem=/dev/shm:mode=1777,nosuid,nodev,noexec,size=25%"
    for name in ("std", "tight"):
        lines = units["agentops-%s.service" % name].splitlines()
        assert line in lines and "PrivateDevices=yes" in lines, name
        # after PrivateDevices= in the unit: the private /dev gets its own /dev/shm, not the host's
        assert lines.index(line) > lines.index("PrivateDevices=yes")
    assert "TemporaryFileSystem" not in units["agentops-open.service"]


@pytest.mark.parametrize("version", [247, 257])
def test_credentials_in_the_environment_mean_no_core_dump(version):
    env_agent = {"name": "envy", "command": "/opt/envy --loop", "credentials": {"tok": "s3cr3t"},
                 "credentials_env": {"API_TOKEN": "tok"}}
    file_agent = {"name": "filey", "command": "/bin/true", "credentials": {"tok": "s3cr3t"}}
    bare = {"name": "open", "command": "/bin/true", "hardening": "none", "credentials": {"tok": "s3cr3t"},
            "credentials_env": {"API_TOKEN": "tok"}}
    units = _units([env_agent, file_agent, bare], version)
    for name in ("envy", "open"):                      # whatever the sandbox profile
        assert "LimitCORE=1" in units["agentops-%s.service" % name].splitlines(), name
    assert "LimitCORE" not in units["agentops-filey.service"]


def test_the_session_start_auth_check_unit():
    text = filters.render_template(os.path.join(ROLE, "templates"), "agentops-auth@.service.j2", agentops_paths=PATHS)
    lines = text.splitlines()
    assert lines[0].startswith("# Managed by Ansible")
    for line in ("Type=oneshot", "ExecStart=/usr/local/bin/agentops check-auth --unless-running %i",
                 "StartLimitIntervalSec=0", "TimeoutStartSec=5min"):
        assert line in lines, line
    # root, like ExecStartPre=+: no User=, no credentials of its own, no sandbox that hides /etc/agentops
    assert not [x for x in lines if x.startswith(("User=", "LoadCredential", "ProtectSystem", "Environment"))]
def _directive_lines(unit):
    """The [Service] directives of a unit file."""
    service = unit.split("[Service]\n", 1)[1].split("\n[", 1)[0]
    return [line for line in service.splitlines() if "=" in line and not line.startswith("#")]


@pytest.mark.parametrize("version", [247, 252, 257])
def test_the_units_limits_and_sandbox_and_the_hosts_sandbox_entry_are_one_list(version):
    """agents.d/<name>.json "sandbox" (what the host gives an agent's poll and rotation commands) holds exactly the
    limits and sandbox lines of the agent's unit, in order, gated on the same systemd version."""
    agents = AGENTS + [{"name": "knobby", "command": "/bin/true", "memory_high": "1G", "oom_score_adjust": 100,
                        "restart_steps": 3, "restart_max_delay_sec": "1min", "runtime_max": "1h"}]
    effective = filters.agents_normalize(agents, DEFAULTS)
    args = filters.agents_files(effective, ROLE, PATHS, version, PROFILES)
    # an agents.d file holding a secret travels in secret_contents (no_log)
    by_path = dict((f["path"], f.get("content", args["secret_contents"].get(f["path"]))) for f in args["files"])
    for entry in effective:
        if entry["state"] != "present":
            continue
        lines = _directive_lines(by_path["/etc/systemd/system/" + entry["unit"]])
        sandbox = json.loads(by_path["/etc/agentops/agents.d/%s.json" % entry["name"]])["sandbox"]
        assert sandbox["systemd"] == version
        directives = ["%s=%s" % (k, v) for k, v in sandbox["directives"]]
        start = lines.index("MemoryMax=" + entry["memory_max"])
        unit_part = [line for line in lines[start:] if not line.startswith(("RestartSteps=", "RestartMaxDelaySec=",
                                                                             "RuntimeMaxSec="))]
        # the unit writes % doubled where systemd expands specifiers; the host passes the values as they are
        assert [line.replace("%%", "%") for line in unit_part] == directives, entry["name"]
        keys = [k for k, _v in sandbox["directives"]]
        assert keys[:3] == ["MemoryMax", "CPUQuota", "TasksMax"]
        if entry["hardening"] == "none":
            assert keys == ["MemoryMax", "CPUQuota", "TasksMax"]
        else:
            assert "NoNewPrivileges" in keys and keys[-1] == "ReadWritePaths"
            assert ("PrivateIPC" in keys) is (version >= 248) and ("MemoryKSM" in keys) is (version >= 254)
        assert ("ProcSubset" in keys) is (entry["hardening"] == "strict")
    mail = json.loads(by_path["/etc/agentops/agents.d/mail-triage.json"])["sandbox"]["directives"]
    assert mail[-1] == ["ReadWritePaths", "/var/lib/agentops/mail-triage /srv/mail /srv/50%"]
    assert "ReadWritePaths=/var/lib/agentops/mail-triage /srv/mail /srv/50%%" in by_path[
        "/etc/systemd/system/agentops-mail-triage.service"]
    knobby = json.loads(by_path["/etc/agentops/agents.d/knobby.json"])["sandbox"]["directives"]
    assert knobby[3:5] == [["MemoryHigh", "1G"], ["OOMScoreAdjust", "100"]]


def test_the_hosts_sandbox_entry_passes_the_hosts_own_check():
    from ansible_collections.agentops.fleet.plugins.module_utils.agentops_contract import sandbox_problems
    for entry in filters.agents_normalize(AGENTS, DEFAULTS):
        if entry["state"] == "present":
            assert sandbox_problems(filters.agent_sandbox(entry, 257, PROFILES)["config"]) == []
