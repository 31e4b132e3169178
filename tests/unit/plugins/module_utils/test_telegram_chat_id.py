"""Telegram chat_id in the inventory contract: the chat's number (negative for groups and channels), as an
integer or a string of digits, or @channelname (a public username); anything else is refused before any change,
naming the channel and the field.

``chat_id: "my team chat"`` used to be accepted: the converge passed, and every alert to that channel failed
at delivery (Telegram answers 400 "chat not found").
"""
import glob
import os

import pytest
import yaml

from ansible_collections.agentops.fleet.plugins.module_utils import agentops_contract as contract


ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))


def telegram(chat_id):
    return {"type": "telegram", "bot_token": "123456:CANARY-bot-token", "chat_id": chat_id,
            "api_url": "http://127.0.0.1:18081"}


@pytest.mark.parametrize("chat_id", [
    "-1001234567890",         # supergroup or channel
    -1001234567890,           # the same, as a YAML integer
    "-100424242",
    "123456789",              # a user's private chat
    123456789,
    "-1",
    "1",
    "@agentops_alerts",       # a public channel's username
    "@ops2",                  # 4 characters: collectible usernames can be that short
    "@AgentOpsAlerts",        # usernames are case-insensitive, any case is sent as is
    "@a" + "b" * 30 + "c",    # 32 characters
])
def test_chat_ids_telegram_accepts_pass(chat_id):
    assert contract.channels_errors([telegram(chat_id)]) == []


@pytest.mark.parametrize("chat_id, shown", [
    ("my team chat", "got 'my team chat'"),
    ("team", "got 'team'"),                          # a name without @ is not a username
    ("agentops_alerts", "got 'agentops_alerts'"),
    ("@my team", "got '@my team'"),
    ("@abc", "got '@abc'"),                          # 3 characters: too short
    ("@" + "a" * 33, "got '@" + "a" * 33 + "'"),     # 33 characters: too long
    ("@1channel", "got '@1channel'"),                # starts with a digit
    ("@_channel", "got '@_channel'"),                # starts with an underscore
    ("@channel_", "got '@channel_'"),                # ends with an underscore
    ("@chan-nel", "got '@chan-nel'"),                # hyphen
    ("@kanäle", "got '@kanäle'"),                    # not ASCII
    ("https://t.me/agentops_alerts", "got 'https://t.me/agentops_alerts'"),
    ("-100 1234", "got '-100 1234'"),
    ("--100", "got '--100'"),
    ("+100", "got '+100'"),
    ("0", "got '0'"),
    (0, "got 0"),
    ("007", "got '007'"),
    ("1e9", "got '1e9'"),
    ("12345678901234567890", "got '12345678901234567890'"),   # beyond a 64-bit id
    (1 << 63, "got %d" % (1 << 63)),
    (-100.5, "got -100.5"),
    (True, "got True"),
    (["-100"], "got a list"),
    ({"id": -100}, "got a dict"),
    ("-100\nX: y", "got a str"),                     # a control character is never echoed
])
def test_anything_else_is_refused_naming_the_channel_and_field(chat_id, shown):
    errors = contract.channels_errors([{"type": "command", "command": "/bin/true"}, telegram(chat_id)])
    assert len(errors) == 1, errors
    assert errors[0].startswith("agentops_alert_channels[1] (telegram).chat_id must be the chat's number"), errors
    assert "@channelname" in errors[0] and shown in errors[0], errors


@pytest.mark.parametrize("chat_id", [None, "", "   "])
def test_a_missing_chat_id_keeps_its_message(chat_id):
    channel = telegram(chat_id)
    if chat_id is None:
        del channel["chat_id"]
    (error,) = contract.channels_errors([channel])
    assert error.startswith("agentops_alert_channels[0] (telegram).chat_id is required"), error


def test_the_bot_token_is_never_part_of_the_message():
    (error,) = contract.channels_errors([telegram("my team chat")])
    assert "CANARY" not in error


def _channel_lists():
    """Every agentops_alert_channels list of the example, demo and Molecule inventories (templated values, the
    vaulted secrets, stand for a plain string)."""
    def scrub(node):
        if isinstance(node, str) and "{{" in node:
            return "a-secret-value"
        if isinstance(node, dict):
            return dict((k, scrub(v)) for k, v in node.items())
        if isinstance(node, list):
            return [scrub(v) for v in node]
        return node

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "agentops_alert_channels" and isinstance(value, list):
                    yield where, scrub(value)
                else:
                    yield from walk(value, where)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item, where)

    for path in sorted(glob.glob(os.path.join(ROOT, "inventories", "**", "*.yml"), recursive=True)
                       + glob.glob(os.path.join(ROOT, "molecule", "**", "*.yml"), recursive=True)):
        if not path.endswith("vault.yml"):
            with open(path, encoding="utf-8") as handle:
                for document in yaml.safe_load_all(handle):
                    yield from walk(document, os.path.relpath(path, ROOT))


def test_the_repository_inventories_keep_passing():
    """The telegram channels of the example, demo and Molecule inventories are still accepted."""
    found = [(where, [c for c in channels if isinstance(c, dict) and c.get("type") == "telegram"])
             for where, channels in _channel_lists()]
    assert len([c for _where, channels in found for c in channels]) >= 4, found
    assert [(where, contract.channels_errors(channels)) for where, channels in found
            if contract.channels_errors(channels)] == []
