#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: auth_check
short_description: Check that an agent's credential still works (HTTP, JWT expiry, command, token file)
version_added: "0.1.0"
description:
  - Runs one authentication check of an agent and reports whether the credential works, so an expired or
    revoked token is found at deploy time instead of after hours of silent C(401) errors.
  - The same checks run on the managed host at every agent session start (C(agentops check-auth <agent>)) from
    the same code (C(plugins/module_utils/agentops_auth.py)), so a check behaves identically in both places.
  - "O(type=http): requests O(url) with the token as C(Authorization: Bearer) header, or with basic auth when
    O(username) is set. Succeeds when the HTTP status is in O(expect_status). C(401)/C(403) mean C(AUTH_FAILED);
    timeouts, connection errors, TLS errors, C(429) and C(5xx) mean C(AUTH_UNREACHABLE): the token could not be
    checked, which is a different problem from an expired token. Redirects are not followed (the token must not
    travel to another URL); an unexpected redirect is C(AUTH_FAILED)."
  - "O(type=jwt): decodes the C(exp) and C(nbf) claims of a JSON Web Token without verifying its signature.
    Fails when it expired or is not valid yet; C(AUTH_EXPIRING) when it expires within O(min_valid)."
  - "O(type=command): runs O(command) (no shell) with the token, if any, on its standard input. Succeeds on exit
    code 0 and, when O(expect_regex) is set, when the standard output matches it (the C(tool auth list | grep)
    pattern). The command must only read state. It runs with a fixed minimal environment (C(PATH) of the system
    directories, C(LANG=C.UTF-8), C(HOME), C(USER) and C(LOGNAME) of the user the module runs as), never the
    caller's, in the directory C(/), in its own process group (killed at the timeout); more than 64 KiB on its
    standard output is a failure."
  - "O(type=file): checks that the token file O(path) (or O(token_file)) exists, is not empty, is not readable by
    group or others and, when O(max_age) is set, was written within O(max_age)."
  - The token is never returned, logged or shown in messages, at any verbosity. A token, a header name or a
    header value that holds a line break (CR, LF) or a NUL character is refused before anything is sent
    (C(AUTH_FAILED)); only the final newline of a token file is ignored. Errors of the underlying libraries are
    reported by their class and never quote what they were given.
  - The module never changes anything; it runs in check mode too.
author:
  - agentops.fleet maintainers (@agentops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - agentops.fleet.read_only
options:
  name:
    description:
      - Name of the check, used in every message (for example the C(name) of an C(auth_checks) entry).
    type: str
    default: auth
  type:
    description:
      - Kind of check.
    type: str
    required: true
    choices: [http, jwt, command, file]
  token:
    description:
      - The secret to check. Mutually exclusive with O(token_file).
      - Never shown in the output.
    type: str
  token_file:
    description:
      - Absolute path of a file on the managed host holding the token (its final newline is ignored),
        for example C(/etc/agentops/credentials/<agent>/<credential>). Using the file checks the token the
        host actually uses, including one the host rotated itself. Mutually exclusive with O(token).
    type: path
  url:
    description:
      - URL to request. Required with O(type=http).
    type: str
  method:
    description:
      - HTTP method.
    type: str
    default: GET
    choices: [GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS]
  headers:
    description:
      - Additional request headers.
      - Header values are treated as secrets (an API key header, for instance) and never returned or logged.
        A name or a value that holds a line break (CR, LF) or a NUL character fails the check before anything is
        sent.
    type: dict
  body:
    description:
      - Request body. A string is sent as is, anything else as JSON.
    type: raw
  expect_status:
    description:
      - HTTP status codes that mean the credential works.
    type: list
    elements: int
    default: [200]
  username:
    description:
      - User name for HTTP basic auth. The password is O(password), or the token when O(password) is not set.
    type: str
  password:
    description:
      - Password for HTTP basic auth. Never shown in the output.
    type: str
  validate_certs:
    description:
      - Verify the server's TLS certificate. Only turn this off for a test endpoint.
    type: bool
    default: true
  ca_path:
    description:
      - CA bundle file or directory used to verify the server's certificate instead of the system store.
    type: path
  timeout:
    description:
      - Seconds to wait for the HTTP answer or the command before reporting C(AUTH_UNREACHABLE).
      - One overall deadline (connecting, TLS, sending, reading the status line and headers), not a limit per
        network read, so a server that trickles its answer cannot hold the check longer. The body of the
        answer is never read.
    type: int
    default: 10
  min_valid:
    description:
      - With O(type=jwt), a systemd time span (for example C(7d), C(12h)). A token that expires sooner is
        C(AUTH_EXPIRING).
    type: str
  fail_on_expiring:
    description:
      - Treat C(AUTH_EXPIRING) as a failure.
    type: bool
    default: false
  command:
    description:
      - With O(type=command), the command to run, as a string (split like a shell would, but no shell runs it)
        or a list of arguments.
    type: raw
  expect_regex:
    description:
      - With O(type=command), a regular expression the standard output must match (Python C(re.search),
        multi-line).
    type: str
  path:
    description:
      - With O(type=file), the token file to inspect. Defaults to O(token_file).
    type: path
  max_age:
    description:
      - With O(type=file), a systemd time span (for example C(45d)); an older file is C(AUTH_FAILED).
    type: str
  fail_on_error:
    description:
      - Fail the task when the check does not pass (C(AUTH_FAILED), C(AUTH_UNREACHABLE), or C(AUTH_EXPIRING)
        with O(fail_on_expiring)). With V(false) the module only reports RV(status) and RV(passed).
    type: bool
    default: true
notes:
  - The check runs on the managed host, so URLs, files and commands are those seen from the host.
  - The role C(agentops.fleet.auth) runs this module for every C(auth_checks) entry of every agent.
seealso:
  - name: Inventory contract of agentops.fleet
    description: The C(auth_checks) entries of C(agentops_agents) use the same keys as this module.
    link: https://github.com/agentops/fleet/blob/main/docs/development.md
"""

EXAMPLES = r"""
- name: The Graph token of mail-triage still works
  agentops.fleet.auth_check:
    name: graph
    type: http
    url: https://graph.microsoft.com/v1.0/me
    token_file: /etc/agentops/credentials/mail-triage/graph_token
    expect_status: [200]

- name: Basic auth against an internal API, with a private CA
  agentops.fleet.auth_check:
    name: tickets
    type: http
    url: https://tickets.example.com/api/whoami
    username: agent-bot
    password: "{{ vault_tickets_password }}"
    ca_path: /etc/ssl/private-ca.pem

- name: The JWT is valid for at least 7 more days
  agentops.fleet.auth_check:
    name: api-jwt
    type: jwt
    token: "{{ vault_api_jwt }}"
    min_valid: 7d
    fail_on_expiring: true

- name: The CLI tool is still logged in
  agentops.fleet.auth_check:
    name: mog
    type: command
    command: /usr/local/bin/mog auth list
    expect_regex: "^valid"

- name: The token file is private and was rotated within 45 days
  agentops.fleet.auth_check:
    name: graph-file
    type: file
    path: /etc/agentops/credentials/mail-triage/graph_token
    max_age: 45d

- name: Report without failing, then decide
  agentops.fleet.auth_check:
    name: graph
    type: http
    url: https://graph.microsoft.com/v1.0/me
    token_file: /etc/agentops/credentials/mail-triage/graph_token
    fail_on_error: false
  register: graph_auth

- name: Show the outcome
  ansible.builtin.debug:
    msg: "{{ graph_auth.status }}: {{ graph_auth.message }}"
"""

RETURN = r"""
status:
  description:
    - "C(AUTH_OK), C(AUTH_EXPIRING) (works, but expires within O(min_valid)), C(AUTH_FAILED) (the credential
      was rejected, expired, or the check found a problem) or C(AUTH_UNREACHABLE) (the service could not be
      asked: timeout, connection or TLS error, C(429), C(5xx))."
  returned: always
  type: str
  sample: AUTH_FAILED
passed:
  description: Whether the check passed (C(AUTH_OK), or C(AUTH_EXPIRING) without O(fail_on_expiring)).
  returned: always
  type: bool
  sample: false
message:
  description: One line a person can act on, naming the check, the URL, file or command and what went wrong.
  returned: always
  type: str
  sample: "auth check 'graph' FAILED: GET https://graph.microsoft.com/v1.0/me answered HTTP 401 Unauthorized
    (expected 200): the credential is expired, revoked or wrong"
name:
  description: Name of the check.
  returned: always
  type: str
  sample: graph
http_status:
  description: HTTP status code of the answer, if an answer was received.
  returned: always
  type: int
  sample: 401
expires_at:
  description:
    - When the token expires (UTC, ISO 8601), for O(type=jwt) with an C(exp) claim, or when the file reaches
      O(max_age) for O(type=file). V(null) otherwise.
  returned: always
  type: str
  sample: "2026-12-24T10:00:00Z"
expires_in_seconds:
  description: Seconds until RV(expires_at) (negative when already expired). V(null) when unknown.
  returned: always
  type: int
  sample: 518400
elapsed:
  description: Seconds the check took.
  returned: always
  type: float
  sample: 0.183
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agentops.fleet.plugins.module_utils.agentops_auth import (
    passed,
    read_token_file,
    run_check,
    validate_check,
)

CHECK_KEYS = (
    "name", "type", "token", "token_file", "url", "method", "headers", "body", "expect_status", "username",
    "password", "validate_certs", "ca_path", "timeout", "min_valid", "fail_on_expiring", "command",
    "expect_regex", "path", "max_age",
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", default="auth"),
            type=dict(type="str", required=True, choices=["http", "jwt", "command", "file"]),
            token=dict(type="str", no_log=True),
            token_file=dict(type="path", no_log=False),
            url=dict(type="str"),
            method=dict(type="str", default="GET", choices=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
            headers=dict(type="dict", no_log=True),
            body=dict(type="raw"),
            expect_status=dict(type="list", elements="int", default=[200]),
            username=dict(type="str"),
            password=dict(type="str", no_log=True),
            validate_certs=dict(type="bool", default=True),
            ca_path=dict(type="path"),
            timeout=dict(type="int", default=10),
            min_valid=dict(type="str"),
            fail_on_expiring=dict(type="bool", default=False),
            command=dict(type="raw"),
            expect_regex=dict(type="str"),
            path=dict(type="path"),
            max_age=dict(type="str"),
            fail_on_error=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    check = dict((key, params[key]) for key in CHECK_KEYS if params.get(key) is not None)
    errors = validate_check(check, token_sources=("token", "token_file"))
    if errors:
        module.fail_json(msg="; ".join(errors), name=params["name"])

    token = None
    if params.get("token_file") and check["type"] != "file":
        try:
            token = read_token_file(params["token_file"])
        except (OSError, UnicodeError):
            token = None  # run_check reports the unreadable file
        else:
            if token:
                module.no_log_values.add(token)  # a value read on the host is masked like a no_log parameter

    result = run_check(check, token=token, timeout=params["timeout"])
    result["name"] = params["name"]
    result["passed"] = passed(check, result)
    result["changed"] = False
    if result["status"] == "AUTH_EXPIRING" and result["passed"]:
        module.warn(result["message"])
    if params["fail_on_error"] and not result["passed"]:
        module.fail_json(msg=result["message"], **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
