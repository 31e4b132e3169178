"""Unit tests of the bounded per-agent journal reader (``agentops_host.journal``).

The parser gets journalctl's export format as bytes, cut into chunks of every size; the reader runs the
stand-in journalctl of fake_journal.py (journalctl's semantics over a journal kept in a JSON file). The
Molecule scenarios ``watcher`` and ``hostile`` run the same reader against journald.
"""
import time

import pytest

from agentops_host import journal
from agentops_host import systemd

from fake_journal import FakeJournal

VICTIM = "agentops-victim.service"
FLOOD = "agentops-flood.service"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    journal_ = FakeJournal(tmp_path)
    monkeypatch.setattr(systemd, "JOURNALCTL", journal_.path)
    return journal_


def entry(cursor, realtime, **fields):
    out = b"__CURSOR=%s\n__REALTIME_TIMESTAMP=%d\n__MONOTONIC_TIMESTAMP=1\n_BOOT_ID=b\n" % (cursor.encode(), realtime)
    for name, value in fields.items():
        if isinstance(value, bytes):  # binary encoding
            out += name.encode() + b"\n" + len(value).to_bytes(8, "little") + value + b"\n"
        else:
            out += ("%s=%s\n" % (name, value)).encode()
    return out + b"\n"


def cursor(seq, realtime=1, seqnum_id="a" * 32, boot="b" * 32, mono=None):
    return "s=%s;i=%x;b=%s;m=%x;t=%x;x=0" % (seqnum_id, seq, boot, seq if mono is None else mono, realtime)


def chunked(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)]


def parse(data, size):
    return list(journal.export_entries(chunked(data, size)))


# ------------------------------------------------------------------------------------------ parser
@pytest.mark.parametrize("size", [1, 3, 7, 64, 1 << 20])
def test_export_parser_text_and_binary_fields_in_any_chunking(size):
    binary = b"line one\n\nline two \x1b[31mred\x1b[0m"    # a blank line and escapes inside a value
    data = (entry(cursor(1), 10, MESSAGE="hello = world", PRIORITY="6", _SYSTEMD_UNIT=VICTIM)
            + entry(cursor(2), 20, MESSAGE=binary, _SYSTEMD_UNIT=VICTIM)
            + entry(cursor(3), 30, MESSAGE="", _UID="990"))
    found = parse(data, size)
    assert [f[b"MESSAGE"] for f, _ in found] == [b"hello = world", binary, b""]
    assert [f[b"__REALTIME_TIMESTAMP"] for f, _ in found] == [b"10", b"20", b"30"]
    assert sum(s for _, s in found) == len(data)
    assert not any(b"..cut" in f for f, _ in found)


@pytest.mark.parametrize("size", [5, 4096, 1 << 20])
def test_export_parser_cuts_long_values_and_keeps_the_next_entry(size):
    long_text = "x" * (journal.MESSAGE_MAX * 3)
    long_binary = b"\x01" + b"y" * (journal.MESSAGE_MAX * 5)
    long_comm = "c" * (journal.FIELD_MAX + 10)
    data = (entry(cursor(1), 10, MESSAGE=long_text, _COMM=long_comm)
            + entry(cursor(2), 20, MESSAGE=long_binary)
            + entry(cursor(3), 30, MESSAGE="after"))
    found = parse(data, size)
    assert [len(f[b"MESSAGE"]) for f, _ in found] == [journal.MESSAGE_MAX, journal.MESSAGE_MAX, 5]
    assert found[0][0][b"..cut"] == {b"MESSAGE", b"_COMM"} and len(found[0][0][b"_COMM"]) == journal.FIELD_MAX
    assert found[1][0][b"..cut"] == {b"MESSAGE"} and found[2][0][b"MESSAGE"] == b"after"
    assert sum(s for _, s in found) == len(data)


def test_export_parser_memory_stays_bounded_on_a_huge_line():
    """A 20 MiB value without its newline in sight is kept up to its limit, the rest skipped as it comes."""
    huge = b"MESSAGE=" + b"z" * (20 * 1024 * 1024) + b"\n"
    head = entry(cursor(1), 10)[:-1]   # the entry without its final blank line
    data = head + huge + b"\n" + entry(cursor(2), 20, MESSAGE="next")
    found = parse(data, 65536)
    assert len(found[0][0][b"MESSAGE"]) == journal.MESSAGE_MAX and found[1][0][b"MESSAGE"] == b"next"


def test_make_line_decodes_and_flags():
    data = entry(cursor(1), 1_700_000_000_500_000, MESSAGE=b"caf\xc3\xa9 \xff", PRIORITY="3",
                 _SYSTEMD_UNIT=VICTIM, _UID="990", _PID="12", _COMM="agent", _EXE="/usr/bin/agent")
    (fields, _size), = list(journal.export_entries([data]))
    line = journal.make_line(fields, 1_700_000_000_500_000)
    assert line.as_dict() == {"realtime": 1_700_000_000.5, "message": "caf\u00e9 \ufffd", "cut": False, "priority": 3,
                              "unit": VICTIM, "uid": 990, "pid": 12, "comm": "agent", "exe": "/usr/bin/agent"}
    assert line.message.startswith("caf") and line.uid == 990 and "Line(" in repr(line)


# ------------------------------------------------------------------------------------------ cursors
def test_cursor_order_follows_the_journal():
    first = journal.cursor_key(cursor(5, realtime=900, mono=50))
    assert journal.after(journal.cursor_key(cursor(6, realtime=100, mono=10)), first)        # seqnum decides
    other = journal.cursor_key(cursor(1, realtime=100, mono=60, seqnum_id="c" * 32))
    assert journal.after(other, first)                                                      # same boot: monotonic
    elsewhere = journal.cursor_key(cursor(1, realtime=1000, mono=1, seqnum_id="c" * 32, boot="d" * 32))
    assert journal.after(elsewhere, first)                                                  # else wall clock
    assert not journal.after(first, first)
    for bad in (None, "", "s=x;i=zz;b=y;m=1;t=1", "i=1;b=y;m=1;t=1", "s=" + "a" * 300, 17, b"\xff"):
        assert journal.cursor_key(bad) is None


def test_position_from_state_sanitises_and_a_new_agent_starts_now_minus_slack():
    now = 2_000_000_000.0
    fresh = journal.Position.from_state({}, now)
    assert fresh.cursor is None and fresh.floor == now - journal.NEW_SLACK and fresh.checked is None
    hostile = journal.Position.from_state({"journal_cursor": "s=../../etc;rm -rf", "journal_floor": "0",
                                           "journal_checked": True, "journal_seen": float("nan"),
                                           "journal_loud": "yes"}, now)
    assert (hostile.cursor, hostile.checked, hostile.seen, hostile.loud) == (None, None, None, False)
    assert hostile.floor == now - journal.NEW_SLACK
    future = journal.Position.from_state({"journal_cursor": cursor(3), "journal_checked": now + 9e6,
                                          "journal_seen": now + 9e6}, now)
    assert future.checked == now and future.seen == now and future.floor is None
    assert journal.Position.from_state(future.state(), now).state() == future.state()


# ------------------------------------------------------------------------------------------ one unit
def test_first_read_judges_only_the_last_slack_but_knows_the_newest_line(fake):
    now = time.time()
    fake.add(VICTIM, "old, before the agent was known", now - 3600)
    fake.add(VICTIM, "recent", now - 10)
    position = journal.Position.from_state({}, now)
    result = journal.read_alone(VICTIM, position, time.monotonic() + 10)
    assert result.ok and [l.message for l in result.lines] == ["recent"] and not result.truncated
    assert abs(result.progress - (now - 10)) < 0.01 and result.cursor == fake.cursor_of(1)
    assert fake.calls()[-1][:8] == ["--no-pager", "-q", "-o", "export", "--output-fields=%s" % ",".join(
        journal.FIELDS), "-r", "-n", str(journal.LINES_MAX + 1)]
    assert fake.calls()[-1][-1] == "_SYSTEMD_UNIT=%s" % VICTIM


def test_first_read_of_an_agent_with_only_old_lines_gives_progress_and_no_lines(fake):
    now = time.time()
    fake.add(VICTIM, "an hour ago", now - 3600)
    result = journal.read_alone(VICTIM, journal.Position.from_state({}, now), time.monotonic() + 10)
    assert result.ok and result.lines == [] and abs(result.progress - (now - 3600)) < 0.01
    assert result.cursor == fake.cursor_of(0)


def test_each_line_is_returned_once_over_many_reads(fake):
    """Whichever way a unit is read (alone, batch from a time, batch from the previous batch's cursor), the
    lines returned over many reads are every line after the first position, each once, in order; lines
    that journald stored late (their timestamps 30 s back) included."""
    now = time.time()
    fake.add(VICTIM, "before the agent was known", now - 120)
    state = {VICTIM: {}, FLOOD: {}}
    batch, seen, expected = None, {VICTIM: [], FLOOD: []}, {VICTIM: [], FLOOD: []}
    for round_ in range(6):
        for index in range(3):
            for unit in (VICTIM, FLOOD):
                message = "%s r%d-%d" % (unit, round_, index)
                fake.add(unit, message, time.time() - (30 if index == 1 else 0))
                expected[unit].append(message)
        positions = dict((u, journal.Position.from_state(state[u], time.time())) for u in state)
        results, batch = journal.read(positions, batch=batch)
        for unit, result in results.items():
            assert result.ok
            seen[unit] += [l.message for l in result.lines]
            result.save(state[unit])
    assert seen == expected
    batches = [c for c in fake.calls() if "-r" not in c and any(w.startswith("_SYSTEMD_UNIT=") for w in c)]
    assert len(batches) == 5 and all(any(w.startswith("--cursor=") for w in c) for c in batches)


def test_a_batch_without_a_record_starts_by_time_and_leaves_one(fake):
    """Positions read before but no record of where a batch stopped (the state of an older heartbeat): the
    batch starts at the oldest last read minus SLACK, and the journal's end, taken before it, is the record
    the next batch starts from."""
    now = time.time()
    fake.add(VICTIM, "judged before", now - 30)
    fake.add(VICTIM, "new", now - 1)
    state = {"journal_checked": now - 20, "journal_seen": now - 30, "journal_cursor": fake.cursor_of(0)}
    results, record = journal.read({VICTIM: journal.Position.from_state(state, now)}, now=now)
    calls = fake.calls()
    assert calls[0] == ["--no-pager", "-q", "-n", "1", "-o", "export", "--output-fields=_SYSTEMD_UNIT"]
    assert calls[1][calls[1].index("--since") + 1] == "@%d" % int(now - 20 - journal.SLACK)
    assert [l.message for l in results[VICTIM].lines] == ["new"]
    assert record["cursor"] == fake.cursor_of(1)
    results[VICTIM].save(state)
    fake.add(VICTIM, "newer", time.time())
    results, record = journal.read({VICTIM: journal.Position.from_state(state, time.time())}, batch=record)
    assert "--cursor=%s" % fake.cursor_of(1) in fake.calls()[-1] and "-r" not in fake.calls()[-1]
    assert [l.message for l in results[VICTIM].lines] == ["newer"] and record["cursor"] == fake.cursor_of(2)


def test_truncated_keeps_the_newest_lines_and_the_next_read_starts_after_them(fake, monkeypatch):
    monkeypatch.setattr(journal, "LINES_MAX", 50)
    now = time.time()
    fake.add(FLOOD, "seen before", now - 5)
    state = {}
    journal.read_alone(FLOOD, journal.Position.from_state(state, now), time.monotonic() + 10).save(state)
    fake.add_many(FLOOD, 130, now - 4)
    result = journal.read_alone(FLOOD, journal.Position.from_state(state, time.time()), time.monotonic() + 10)
    assert result.ok and result.truncated and result.position.loud
    assert [l.message for l in result.lines] == ["line %d" % i for i in range(80, 130)]
    assert result.cursor == fake.cursor_of(130)
    result.save(state)
    fake.add(FLOOD, "after", time.time())
    again = journal.read_alone(FLOOD, journal.Position.from_state(state, time.time()), time.monotonic() + 10)
    assert [l.message for l in again.lines] == ["after"] and not again.truncated
    assert not again.position.loud          # few lines again: back to the batch


def test_bytes_per_unit_are_bounded(fake, monkeypatch):
    monkeypatch.setattr(journal, "UNIT_BYTES_MAX", 64 * 1024)
    now = time.time()
    fake.add_many(FLOOD, 40, now - 5, text="%d " + "w" * 20000)
    result = journal.read_alone(FLOOD, journal.Position.from_state({}, now - 10), time.monotonic() + 10)
    assert result.ok and result.truncated and 0 < len(result.lines) < 40
    assert all(len(l.message.encode()) <= journal.MESSAGE_MAX and l.cut for l in result.lines)
    assert result.lines[-1].message.startswith("39 ")      # the newest kept


@pytest.mark.parametrize("knobs, error", [
    ({"exit": 1, "stderr": "Failed to open journal: Permission denied"}, "exited 1: Failed to open journal"),
    ({"garbage": "this is not\nthe export format\n\n"}, "ended inside an entry"),
    ({"garbage": "MESSAGE=no cursor\n\n"}, "without a valid cursor"),
    ({"sleep": 5}, "timed out"),
])
def test_a_failed_read_is_unknown_and_does_not_move_the_position(fake, monkeypatch, knobs, error):
    now = time.time()
    fake.add(VICTIM, "a line", now - 5)
    state = {}
    journal.read_alone(VICTIM, journal.Position.from_state(state, now), time.monotonic() + 10).save(state)
    before = dict(state)
    fake.add(VICTIM, "not read yet", now - 1)
    fake.behave(**knobs)
    monkeypatch.setattr(journal, "DEADLINE", 0.5)
    started = time.monotonic()
    results, _batch = journal.read({VICTIM: journal.Position.from_state(state, time.time())}, budget=2.0)
    result = results[VICTIM]
    assert time.monotonic() - started < 3
    assert not result.ok and result.progress is None and error in result.error and result.lines == []
    result.save(state)
    assert state == before
    fake.behave()
    again = journal.read_alone(VICTIM, journal.Position.from_state(state, time.time()), time.monotonic() + 10)
    assert [l.message for l in again.lines] == ["not read yet"]


def test_journalctl_missing_is_a_failed_read(monkeypatch, tmp_path):
    monkeypatch.setattr(systemd, "JOURNALCTL", str(tmp_path / "nowhere"))
    result = journal.read_alone(VICTIM, journal.Position.from_state({}, time.time()), time.monotonic() + 5)
    assert not result.ok and "could not run" in result.error
    assert journal.newest(VICTIM) == (None, False)


# ------------------------------------------------------------------------------------------ many units
def test_a_flood_never_hides_another_agents_line(fake, monkeypatch):
    """The defect: one batch capped in lines let a flooding agent hide the victim's newest line."""
    monkeypatch.setattr(journal, "LINES_MAX", 100)
    start = time.time() - 30
    fake.add(VICTIM, "victim before", start)
    fake.add(FLOOD, "flood before", start)
    state = {VICTIM: {}, FLOOD: {}}
    results, batch = journal.read(dict((u, journal.Position.from_state({}, start + 1)) for u in state))
    for unit, result in results.items():
        result.save(state[unit])
    fake.add(VICTIM, "victim works", start + 5)
    fake.add_many(FLOOD, 1000, start + 6)
    positions = dict((u, journal.Position.from_state(state[u], time.time())) for u in state)
    results, batch = journal.read(positions, batch=batch)
    victim, flood = results[VICTIM], results[FLOOD]
    assert victim.ok and victim.mode == "batch" and [l.message for l in victim.lines] == ["victim works"]
    assert abs(victim.progress - (start + 5)) < 0.01 and not victim.truncated
    assert flood.ok and flood.mode == "alone" and flood.truncated and flood.position.loud
    assert len(flood.lines) == 100 and flood.lines[-1].message == "line 999"
    # the next run reads the flooder alone at once: the batch is not spent on it again
    flood.save(state[FLOOD])
    victim.save(state[VICTIM])
    fake.add_many(FLOOD, 500, time.time())
    before = len(fake.calls())
    positions = dict((u, journal.Position.from_state(state[u], time.time())) for u in state)
    results, batch = journal.read(positions, batch=batch)
    calls = fake.calls()[before:]
    assert len(calls) == 2 and calls[0][-1] == "_SYSTEMD_UNIT=%s" % VICTIM and "-r" in calls[1]
    assert results[VICTIM].ok and results[VICTIM].lines == [] and results[FLOOD].truncated


def test_the_batch_reads_many_quiet_agents_in_one_journalctl(fake):
    now = time.time()
    units = ["agentops-q%d.service" % i for i in range(20)]
    for unit in units:
        fake.add(unit, "hello", now - 2)
    state = dict((u, {}) for u in units)
    results, batch = journal.read(dict((u, journal.Position.from_state({}, now)) for u in units))
    assert len(fake.calls()) == 21            # new agents: each read alone, once (and where the journal ends)
    for unit in units:
        results[unit].save(state[unit])
    for unit in units[:5]:
        fake.add(unit, "again", time.time())
    results, batch = journal.read(dict((u, journal.Position.from_state(state[u], time.time())) for u in units),
                                  batch=batch)
    assert len(fake.calls()) == 22            # then one for all of them
    assert set(fake.calls()[-1][-20:]) == set("_SYSTEMD_UNIT=%s" % u for u in units)
    assert [len(results[u].lines) for u in units] == [1] * 5 + [0] * 15
    assert all(results[u].ok and results[u].mode == "batch" for u in units)


def test_a_failed_batch_falls_back_to_reads_alone(fake):
    now = time.time()
    units = [VICTIM, FLOOD]
    fake.add(VICTIM, "v", now - 2)
    state = dict((u, {}) for u in units)
    results, batch = journal.read(dict((u, journal.Position.from_state({}, now)) for u in units))
    for unit in units:
        results[unit].save(state[unit])
    fake.add(VICTIM, "v2", time.time())
    # an entry of a unit that was not asked for: the output is not trusted, the read is unknown
    fake.behave(garbage=fake_entry_of_other_unit())
    results, _ = journal.read(dict((u, journal.Position.from_state(state[u], time.time())) for u in units),
                              batch=batch)
    assert all(not r.ok and "another unit" in r.error for r in results.values())  # batch, then each alone
    fake.behave()
    results, _ = journal.read(dict((u, journal.Position.from_state(state[u], time.time())) for u in units),
                              batch=batch)
    assert [l.message for l in results[VICTIM].lines] == ["v2"]


def fake_entry_of_other_unit():
    return entry(cursor(99), 5, MESSAGE="forged", _SYSTEMD_UNIT="agentops-other.service").decode("latin-1")


def test_the_budget_of_a_run_bounds_all_reads(fake, monkeypatch):
    fake.behave(sleep=0.4)
    units = ["agentops-s%d.service" % i for i in range(10)]
    started = time.monotonic()
    results, _ = journal.read(dict((u, journal.Position.from_state({}, time.time())) for u in units), budget=1.0)
    assert time.monotonic() - started < 2.5
    assert any(not r.ok and "took their" in r.error for r in results.values())


# ------------------------------------------------------------------------------------------ alert excerpts
@pytest.mark.parametrize("unit, collection", [
    ("agentops-heartbeat.service", True), ("agentops-alert@agentops-x.service.service", True),
    ("agentops-alert-flush.service", True), ("agentops-rotation.service", True),
    ("agentops-heartbeat-poll-x.service", True), ("agentops-alert-x.service", True),
    ("agentops-heartbeat.timer", True), ("agentops-victim.service", False), ("agentops-rotation-x.service", False),
    ("agentops-heartbeatx.service", False), ("cron.service", False),
])
def test_collection_units(unit, collection):
    assert journal.is_collection_unit(unit) is collection
    matches = journal.tail_matches(unit)
    assert matches[:1] == ["_SYSTEMD_UNIT=%s" % unit] and matches[-3:] == ["+", "_PID=1", "UNIT=%s" % unit]
    assert ("_UID=0" in matches) is collection


def test_tail_quotes_only_lines_attributed_by_trusted_fields(fake):
    now = time.time()
    unit = "agentops-heartbeat.service"
    fake.add(unit, "heartbeat victim: auth check api OK", now - 4, _UID="990", _PID="777",
             SYSLOG_IDENTIFIER="agentops")                                   # a child of the unit, agent user
    fake.add(unit, "heartbeat: check failed", now - 3, _UID="0", _PID="123", SYSLOG_IDENTIFIER="agentops")
    fake.add("init.scope", "agentops-heartbeat.service: Main process exited", now - 2, _UID="0", _PID="1",
             UNIT=unit, SYSLOG_IDENTIFIER="systemd")
    fake.add("agentops-evil.service", "agentops-heartbeat.service: forged", now - 1, UNIT=unit,
             SYSLOG_IDENTIFIER="systemd")                                    # UNIT= from anyone else
    text = systemd.journal_tail(unit, 10)
    assert "check failed" in text and "Main process exited" in text
    assert "auth check api OK" not in text and "forged" not in text
    assert text.splitlines()[0].endswith("agentops[123]: heartbeat: check failed")
    victim = systemd.journal_tail(VICTIM, 10)
    assert victim == ""
    fake.add(VICTIM, "victim's own line", now, _UID="990")
    fake.add("agentops-evil.service", "victim: forged", now, UNIT=VICTIM)
    assert systemd.journal_tail(VICTIM, 10).endswith("agent[4242]: victim's own line")


def test_tail_is_bounded(fake, monkeypatch):
    monkeypatch.setattr(journal, "TAIL_BYTES_MAX", 200 * 1024)
    now = time.time()
    fake.add_many(VICTIM, 30, now - 10, text="%d " + "q" * 50000)
    text = systemd.journal_tail(VICTIM, 30)
    assert len(text) < 250 * 1024
    assert all(len(line) <= journal.TAIL_LINE_MAX + 6 for line in text.splitlines())
    assert text.endswith("[journal output cut after %d bytes]" % (200 * 1024))
    fake.behave(exit=1, stderr="Failed to open journal")
    assert systemd.journal_tail(VICTIM, 3).startswith("(journalctl failed: exit status 1: Failed to open journal")
