"""agentops_alert_channels in the inventory contract: every new channel field, accepted and refused.

Each refusal names ``agentops_alert_channels[<i>] (<type>).<field>`` and never shows a secret value.
"""
import pytest

from ansible_collections.agentops.fleet.plugins.module_utils import agentops_contract as contract

SECRET = "CANARYcontract5ecret"
KEY = "A" * 16 + SECRET[:16]            # 32 characters

GOOD = [
    {"type": "slack", "url": "https://hooks.slack.com/services/T0/B0/" + SECRET},
    {"type": "discord", "url": "https://discord.com/api/webhooks/1/" + SECRET},
    {"type": "ntfy", "url": "https://ntfy.example.com/agent-alerts"},
    {"type": "ntfy", "url": "https://ntfy.example.com/agent-alerts", "token": "tk_" + SECRET},
    {"type": "pagerduty", "routing_key": KEY},
    {"type": "pagerduty", "routing_key": KEY, "api_url": "https://events.eu.pagerduty.com"},
    {"type": "email", "smtp_host": "smtp.example.com", "from": "alerts@example.com", "to": ["oncall@example.com"]},
    {"type": "email", "smtp_host": "smtp.example.com", "smtp_port": 465, "security": "tls", "username": "alerts",
     "password": SECRET, "from": "alerts@example.com", "to": ["a@example.com", "b+tag@example.org"]},
    {"type": "email", "smtp_host": "127.0.0.1", "security": "none", "username": "u", "password": SECRET,
     "from": "a@example.com", "to": ["b@example.com"]},
    {"type": "email", "smtp_host": "::1", "smtp_port": "2525", "from": "a@example.com", "to": ["b@example.com"]},
    {"type": "webhook", "url": "https://hooks.example.com/x", "headers": {"Authorization": "Bearer " + SECRET,
                                                                        "X-Count": 3, "Content-Type": "text/plain"}},
    {"type": "webhook", "url": "https://hooks.example.com/x", "headers": {}},
]


def test_every_new_channel_shape_is_accepted():
    assert contract.channels_errors(GOOD) == []


BAD = [
    ({"type": "slack"}, "(slack).url must be an http:// or https:// URL (value not shown)"),
    ({"type": "slack", "url": "ftp://x/" + SECRET}, "(slack).url must be an http"),
    ({"type": "slack", "url": "https://x/" + SECRET + "\r\nX: y"}, "(slack).url must be an http"),
    ({"type": "slack", "url": "https://x/a", "channel": "#ops"}, "(slack): unknown field 'channel'"),
    ({"type": "discord", "url": "https://discord.com/api/webhooks/1/" + SECRET + " x"}, "(discord).url must be"),
    ({"type": "discord", "url": "https://d/x", "token": SECRET}, "(discord): unknown field 'token'"),
    ({"type": "ntfy", "url": "https://ntfy.example.com"}, "(ntfy).url must name the topic"),
    ({"type": "ntfy", "url": "https://ntfy.example.com/t", "token": ""}, "(ntfy).token must be a non-empty string"),
    ({"type": "ntfy", "url": "https://ntfy.example.com/t", "token": SECRET + "\n"}, "(ntfy).token must not contain"),
    ({"type": "ntfy", "url": "https://ntfy.example.com/t", "token": "a " + SECRET}, "(ntfy).token must not contain"),
    ({"type": "ntfy", "url": "https://ntfy.example.com/t", "token": 12345}, "(ntfy).token must be a non-empty"),
    ({"type": "pagerduty"}, "(pagerduty).routing_key is required"),
    ({"type": "pagerduty", "routing_key": SECRET}, "(pagerduty).routing_key must be the 32-character"),
    ({"type": "pagerduty", "routing_key": KEY[:-1] + "\n"}, "(pagerduty).routing_key must be the 32-character"),
    ({"type": "pagerduty", "routing_key": KEY, "api_url": "events.pagerduty.com"}, "(pagerduty).api_url must be"),
    ({"type": "pagerduty", "routing_key": KEY, "url": "https://x/y"}, "(pagerduty): unknown field 'url'"),
    ({"type": "email", "from": "a@example.com", "to": ["b@example.com"]}, "(email).smtp_host is required"),
    ({"type": "email", "smtp_host": "[::1]", "from": "a@example.com", "to": ["b@example.com"]},
     "(email).smtp_host is required"),
    ({"type": "email", "smtp_host": "smtp example", "from": "a@example.com", "to": ["b@example.com"]},
     "(email).smtp_host is required"),
    ({"type": "email", "smtp_host": "h", "smtp_port": 0, "from": "a@example.com", "to": ["b@example.com"]},
     "(email).smtp_port"),
    ({"type": "email", "smtp_host": "h", "smtp_port": True, "from": "a@example.com", "to": ["b@example.com"]},
     "(email).smtp_port"),
    ({"type": "email", "smtp_host": "h", "smtp_port": "587\n", "from": "a@example.com", "to": ["b@example.com"]},
     "(email).smtp_port"),
    ({"type": "email", "smtp_host": "h", "security": "ssl", "from": "a@example.com", "to": ["b@example.com"]},
     "(email).security 'ssl' is not one of starttls, tls, none"),
    ({"type": "email", "smtp_host": "h", "password": SECRET, "from": "a@example.com", "to": ["b@example.com"]},
     "(email).password is set without a username"),
    ({"type": "email", "smtp_host": "smtp.example.com", "security": "none", "username": "u", "password": SECRET,
      "from": "a@example.com", "to": ["b@example.com"]}, "(email).password with security: none"),
    ({"type": "email", "smtp_host": "h", "username": "u", "password": SECRET + "\r\n", "from": "a@example.com",
      "to": ["b@example.com"]}, "(email).password must be a non-empty one-line string (value not shown)"),
    ({"type": "email", "smtp_host": "h", "username": "u\nRCPT TO:<x@y>", "from": "a@example.com",
      "to": ["b@example.com"]}, "(email).username must be a non-empty one-line string"),
    ({"type": "email", "smtp_host": "h", "to": ["b@example.com"]}, "(email).from is required"),
    ({"type": "email", "smtp_host": "h", "from": "Alerts <a@example.com>", "to": ["b@example.com"]},
     "(email).from is required: one bare address"),
    ({"type": "email", "smtp_host": "h", "from": "a@example.com\r\nBcc: x@y.z", "to": ["b@example.com"]},
     "(email).from is required"),
    ({"type": "email", "smtp_host": "h", "from": "a@example.com"}, "(email).to is required"),
    ({"type": "email", "smtp_host": "h", "from": "a@example.com", "to": "b@example.com"}, "(email).to is required"),
    ({"type": "email", "smtp_host": "h", "from": "a@example.com", "to": []}, "(email).to is required"),
    ({"type": "email", "smtp_host": "h", "from": "a@example.com", "to": ["b@example.com", "nobody"]},
     "(email).to[1] is not a bare address"),
    ({"type": "email", "smtp_host": "h", "from": "a@example.com", "to": ["b@example.com"], "cc": ["c@d.e"]},
     "(email): unknown field 'cc'"),
    ({"type": "webhook", "url": "https://x/y", "headers": ["Authorization: x"]}, "(webhook).headers must be a mapping"),
    ({"type": "webhook", "url": "https://x/y", "headers": {"Host": "evil.example.com"}},
     "(webhook).headers.Host is set by the alert path"),
    ({"type": "webhook", "url": "https://x/y", "headers": {"content-length": "1"}},
     "(webhook).headers.content-length is set by the alert path"),
    ({"type": "webhook", "url": "https://x/y", "headers": {"Transfer-Encoding": "chunked"}},
     "(webhook).headers.Transfer-Encoding is set by the alert path"),
    ({"type": "webhook", "url": "https://x/y", "headers": {"X Bad": "v"}},
     "(webhook).headers has a header name 'X Bad' that is not a valid HTTP header name"),
    ({"type": "webhook", "url": "https://x/y", "headers": {"X-A:": "v"}}, "(webhook).headers has a header name"),
    ({"type": "webhook", "url": "https://x/y", "headers": {"X-A\r\nX-Injected": "v"}},
     "(webhook).headers has a header name (not shown)"),
    ({"type": "webhook", "url": "https://x/y", "headers": {"Authorization": "Bearer " + SECRET + "\r\nX-I: 1"}},
     "(webhook).headers.Authorization holds CR, LF or another control character (value not shown)"),
    ({"type": "webhook", "url": "https://x/y", "headers": {"Authorization": "Bearer " + SECRET + "\n"}},
     "(webhook).headers.Authorization holds CR, LF"),
    ({"type": "webhook", "url": "https://x/y", "headers": {"X-Token": [SECRET]}},
     "(webhook).headers.X-Token must be a string (value not shown)"),
    ({"type": "webhook", "url": "https://x/y", "headers": {"X-Token": True}}, "(webhook).headers.X-Token must be"),
    ({"type": "webhook", "url": "https://x/y", "headers": {"X-Token": SECRET + "\u20ac"}},
     "(webhook).headers.X-Token is not Latin-1 text"),
    ({"type": "webhook", "url": "https://x/y", "headers": {"X-Token": SECRET + "\u2028"}},
     "(webhook).headers.X-Token holds CR, LF"),
]


@pytest.mark.parametrize("channel, message", BAD, ids=["%s-%d" % (c.get("type"), i) for i, (c, _m) in enumerate(BAD)])
def test_a_bad_field_is_refused_naming_channel_and_field_but_no_secret(channel, message):
    errors = contract.channels_errors([GOOD[0], channel])
    assert errors, channel
    assert any(e.startswith("agentops_alert_channels[1] ") and message in e for e in errors), errors
    text = "\n".join(errors)
    for secret in (SECRET, KEY):
        assert secret not in text


def test_role_errors_checks_the_channels_of_the_alerts_role():
    errors = contract.role_errors("alerts", {"agentops_alert_channels": [{"type": "matrix", "url": "https://x/y"}]})
    assert errors == ["agentops_alert_channels[0].type: unknown channel type 'matrix' (one of command, discord, "
                      "email, ntfy, pagerduty, slack, telegram, webhook)"]


def test_header_problems_of_the_host_and_the_contract_agree():
    """alert.check_headers refuses at send time what the contract refuses at deploy time."""
    from agentops_host import alert
    for headers in ({"Host": "x"}, {"X Bad": "v"}, {"X-A": "v\r\nX-B: w"}, {"X-A": True}, {"X-A": "\u20ac"}):
        assert contract.headers_problems(headers)
        with pytest.raises(alert.DeliveryError):
            alert.check_headers(headers)
    good = {"Authorization": "Bearer x", "X-N": 3}
    assert contract.headers_problems(good) == [] and len(alert.check_headers(good)) == 2
