"""Bounded reading of the journal, one agent unit at a time: its new lines since its saved position.

What an agent logs is untrusted input in volume and content; what journald adds (fields starting with
``_``) is not forgeable by the agent. So:

* lines of an agent are matched ONLY on the trusted ``_SYSTEMD_UNIT=<unit>`` (journald's field index:
  no other unit's entries are scanned), never on ``SYSLOG_IDENTIFIER``, ``UNIT=`` or ``-u``;
* every read is bounded: at most ``LINES_MAX`` new lines per agent and read (the NEWEST are kept: the
  last lines before an exit matter most; ``truncated`` says older ones were skipped), ``MESSAGE_MAX``
  bytes of each message (``FIELD_MAX`` of the other fields), ``UNIT_BYTES_MAX`` bytes of journalctl
  output per agent, a deadline per journalctl process and one for all reads of a heartbeat run;
* a read that fails, times out or runs out of budget is ``ok=False``: unknown, never "no progress".

Each agent has a position (its heartbeat state ``<state_dir>/.heartbeat/<agent>.json``: ``journal_cursor``,
``journal_floor``, ``journal_checked``, ``journal_seen``, ``journal_loud``): the cursor of the newest entry
already read, so the next read returns only lines after it ("each line judged once": the caller saves the
position returned with the outcome of judging those lines, and a failed read never moves it). The first
read of an agent (no position) judges only lines from ``now - NEW_SLACK`` on; older lines only give its
newest entry time (progress). Positions are compared like sd-journal orders entries: by sequence number
within one sequence-number id, else by monotonic time within one boot, else by wall-clock time.

``read`` is what the heartbeat calls once per run for all its agents: ONE ``journalctl`` for the quiet
agents whose position is recent (forward from where the previous batch stopped, ``--cursor``; or from the
oldest position minus ``SLACK`` when there is no such record), and one newest-first read (``-r -n
LINES_MAX+1``, stopped at the agent's position) for each agent that is new, was not read recently, or had
``BUSY_LINES`` new lines or more in its last read (``loud``: journalctl reads one unit far more cheaply
than one unit among many). A batch in which one agent passes ``LINES_MAX`` new lines or ``UNIT_BYTES_MAX``
bytes is stopped at once, that agent is read alone, and the batch is read again without it: one agent's
volume never hides another agent's lines, and the cost of a run stays bounded while one floods.

``tail`` is the journal excerpt quoted in alerts (crash loop, ``agentops failure``): lines of the unit
itself attributed by trusted fields, plus systemd's (PID 1's) messages about it; for the collection's own
units (names reserved by the inventory contract: ``agentops-heartbeat*``, ``agentops-alert*``,
``agentops-rotation``) only the unit's root processes, so a command run for an agent inside such a unit
can never speak in the collection's name.
"""
import os
import selectors
import subprocess
import time

from agentops_host import systemd
from agentops_lib import agentops_contract

try:
    from agentops_lib.agentops_auth import SAFE_PATH
except ImportError:  # pragma: no cover - the library is always installed next to agentops_host
    SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# Per agent and read: the newest LINES_MAX new lines are kept (more: truncated).
LINES_MAX = 2000
# Bytes kept of a line's MESSAGE, and of every other field.
MESSAGE_MAX = 4096
FIELD_MAX = 512
# journalctl output read for one agent in one read (the fields beyond the bounds above count too).
UNIT_BYTES_MAX = 4 * 1024 * 1024
# One batch: entries and bytes of all its agents together (beyond: the loudest agent is read alone).
BATCH_LINES_MAX = 200000
BATCH_BYTES_MAX = 48 * 1024 * 1024
BATCH_TRIES = 3
# Seconds one journalctl may run; seconds all reads of one heartbeat run may take.
DEADLINE = 15.0
BUDGET = 45.0
# journald may store a line a little after its timestamp: a read by time starts this much earlier.
SLACK = 60.0
# The first read of an agent judges the lines of the last NEW_SLACK seconds only.
NEW_SLACK = 60.0
# An agent whose last complete read is older than this is read alone (newest first, bounded).
BATCH_MAX_AGE = 3600.0
# An agent with at least this many new lines in its last read is read alone, newest first: journalctl
# pays for every term of the batch's match on every entry it prints (measured: ~60 us per entry with 50
# agents in the batch, ~8 us per entry read alone, ~7 ms per journalctl started).
BUSY_LINES = 100
# The fields printed per entry (journalctl adds __CURSOR, __REALTIME_TIMESTAMP, ... itself).
FIELDS = ("MESSAGE", "PRIORITY", "_SYSTEMD_UNIT", "_UID", "_PID", "_COMM", "_EXE")
CURSOR_MAX = 256
CHUNK = 1 << 20
# An entry shorter than this is parsed in one go when it holds text fields only.
FAST_ENTRY_MAX = 64 * 1024
STDERR_MAX = 512
# The journal excerpt of an alert: bytes of one line, and of journalctl's whole output read.
TAIL_LINE_MAX = 2000
TAIL_BYTES_MAX = 4 * 1024 * 1024
TAIL_DEADLINE = 15.0

_CURSOR = b"__CURSOR"
_REALTIME = b"__REALTIME_TIMESTAMP"
_LIMITS = dict((name.encode(), MESSAGE_MAX if name == "MESSAGE" else FIELD_MAX) for name in FIELDS)


class Line:
    """One journal line: ``realtime`` (epoch seconds), ``message`` (str: at most MESSAGE_MAX bytes of it,
    decoded as UTF-8 with replacement), ``cut`` (the message was longer), ``priority`` (int or None) and the
    trusted fields ``unit``, ``uid``, ``pid``, ``comm``, ``exe``. Decoded when asked for (a run may hold
    thousands of lines and judge only their messages)."""
    __slots__ = ("realtime", "_fields")
    NAMES = ("realtime", "message", "cut", "priority", "unit", "uid", "pid", "comm", "exe")

    def __init__(self, realtime, fields):
        self.realtime = realtime
        self._fields = fields

    @property
    def message(self):
        return _text(self._fields.get(b"MESSAGE")) or ""

    @property
    def cut(self):
        return b"MESSAGE" in (self._fields.get(b"..cut") or ())

    @property
    def priority(self):
        return _int(self._fields.get(b"PRIORITY"))

    @property
    def unit(self):
        return _text(self._fields.get(b"_SYSTEMD_UNIT"))

    @property
    def uid(self):
        return _int(self._fields.get(b"_UID"))

    @property
    def pid(self):
        return _int(self._fields.get(b"_PID"))

    @property
    def comm(self):
        return _text(self._fields.get(b"_COMM"))

    @property
    def exe(self):
        return _text(self._fields.get(b"_EXE"))

    def as_dict(self):
        return dict((name, getattr(self, name)) for name in self.NAMES)

    def __repr__(self):
        return "Line(%r)" % (self.as_dict(),)


class Position:
    """Where an agent's reading stands (from and to its heartbeat state)."""
    __slots__ = ("cursor", "key", "floor", "checked", "seen", "loud", "_prefix")

    def __init__(self, cursor=None, floor=None, checked=None, seen=None, loud=False):
        if isinstance(cursor, bytes):
            cursor = cursor.decode("ascii", "replace")
        self.key = cursor_key(cursor)
        self.cursor = cursor if self.key is not None else None
        # cursors of the same sequence-number domain compare by their sequence number alone
        self._prefix = ("s=%s;i=" % self.key[0]).encode() if self.key is not None else None
        self.floor = _number(floor)
        self.checked = _number(checked)
        self.seen = _number(seen)
        self.loud = loud is True

    @classmethod
    def from_state(cls, hbstate, now):
        """The position an agent's heartbeat state records; a new agent's judges from ``now - NEW_SLACK``."""
        hbstate = hbstate if isinstance(hbstate, dict) else {}
        position = cls(hbstate.get("journal_cursor"), hbstate.get("journal_floor"), hbstate.get("journal_checked"),
                       hbstate.get("journal_seen"), hbstate.get("journal_loud"))
        if position.cursor is None and position.floor is None:
            position.floor = now - NEW_SLACK
        # a time in the future (clock stepped back, or a damaged file) must not hide lines: clamp it
        for name in ("floor", "checked", "seen"):
            value = getattr(position, name)
            if value is not None and value > now:
                setattr(position, name, now)
        return position

    def state(self):
        return {"journal_cursor": self.cursor, "journal_floor": self.floor, "journal_checked": self.checked,
                "journal_seen": self.seen, "journal_loud": self.loud}

    def is_new(self, cursor_value, realtime):
        """True when the entry (its cursor, bytes or str, and realtime in microseconds) comes after this
        position."""
        if self.key is not None:
            if isinstance(cursor_value, bytes) and cursor_value.startswith(self._prefix):
                end = cursor_value.find(b";", len(self._prefix))
                try:
                    return int(cursor_value[len(self._prefix):end], 16) > self.key[1]
                except ValueError:
                    return False
            key = cursor_key(cursor_value)
            return key is not None and after(key, self.key)
        return self.floor is None or realtime >= self.floor * 1e6


class Result:
    """What one read found for one unit (see the module docstring)."""
    __slots__ = ("unit", "ok", "lines", "truncated", "error", "position", "mode")

    def __init__(self, unit, ok, position, lines=None, truncated=False, error=None, mode=None):
        self.unit = unit
        self.ok = ok
        self.position = position          # the Position to save (unchanged, but for a new floor, when not ok)
        self.lines = lines or []          # oldest first
        self.truncated = truncated
        self.error = error
        self.mode = mode                  # "batch" or "alone"

    @property
    def progress(self):
        """Epoch seconds of the unit's newest journal entry known (None: none known, or the read failed)."""
        return self.position.seen if self.ok else None

    @property
    def cursor(self):
        return self.position.cursor

    def save(self, hbstate):
        """Record the position in the agent's heartbeat state (dict)."""
        hbstate.update(self.position.state())


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    if value in (float("inf"), float("-inf")) or value < 0:
        return None
    return float(value)


def cursor_key(cursor):
    """(seqnum_id, seqnum, boot_id, monotonic, realtime) of a journal cursor, or None when it is not one."""
    if isinstance(cursor, bytes):
        try:
            cursor = cursor.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(cursor, str) or len(cursor) > CURSOR_MAX:
        return None
    parts = {}
    for item in cursor.split(";"):
        name, sep, value = item.partition("=")
        if sep:
            parts[name] = value
    try:
        return (parts["s"], int(parts["i"], 16), parts["b"], int(parts["m"], 16), int(parts["t"], 16))
    except (KeyError, ValueError):
        return None


def after(key, other):
    """``key`` comes after ``other`` in the journal's order (both from cursor_key)."""
    if key[0] == other[0]:
        return key[1] > other[1]
    if key[2] == other[2]:
        return key[3] > other[3]
    return key[4] > other[4]


# ------------------------------------------------------------------------------------------ processes
class ReadFailed(Exception):
    pass


class _Journalctl:
    """One journalctl with a deadline; ``chunks()`` yields its stdout, ``close()`` ends and reaps it."""

    def __init__(self, argv, deadline):
        self.deadline = deadline
        self.stderr = b""
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, close_fds=True, cwd="/",
                                         env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"})
        except OSError as exc:
            raise ReadFailed("journalctl could not run: %s" % (exc.strerror or exc)) from None
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ, "out")
        self.selector.register(self.proc.stderr, selectors.EVENT_READ, "err")

    def chunks(self):
        open_pipes = 2
        while open_pipes:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise ReadFailed("journalctl timed out")
            for key, _mask in self.selector.select(left):
                data = os.read(key.fileobj.fileno(), CHUNK)
                if not data:
                    self.selector.unregister(key.fileobj)
                    open_pipes -= 1
                elif key.data == "out":
                    yield data
                elif len(self.stderr) < STDERR_MAX:
                    self.stderr += data[:STDERR_MAX - len(self.stderr)]

    def close(self, stop=False):
        """End and reap journalctl. ``stop``: we have what we need (or give up): it is killed and its exit
        status is not judged (None); otherwise it is given until the deadline to exit by itself."""
        if not stop:
            try:
                self.proc.wait(timeout=max(0.1, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass  # killed below: its status (-9) is a failure
        if self.proc.poll() is None:
            self.proc.kill()
        self.selector.close()
        self.proc.stdout.close()
        self.proc.stderr.close()
        code = self.proc.wait()
        return None if stop else code

    def failure(self, code):
        detail = self.stderr.decode("utf-8", "replace").strip().splitlines()
        return "journalctl exited %s%s" % (code, (": %s" % detail[0][:200]) if detail else "")


def export_entries(chunks, limits=None):
    """Parse ``journalctl -o export`` output arriving in ``chunks``: yield (fields, size) per entry.

    ``fields``: {name (bytes): value (bytes)}, each value cut at ``limits[name]`` (FIELD_MAX for other
    names; a cut value is recorded in the set ``fields[b"..cut"]``); ``size``: the bytes the entry took in
    the output (cut parts included). Output that ends inside an entry raises ReadFailed. Memory stays
    bounded whatever the output holds: a text field without its newline is kept up to its limit and the
    rest skipped; a binary field (``NAME\\n`` + 64-bit little-endian length + data + ``\\n``) is skipped by
    its length.
    """
    limits = _LIMITS if limits is None else limits
    limits_get = limits.get
    data = b""
    pos = 0
    entry = {}
    size = 0
    skip = 0            # bytes of a binary field's data still to drop
    skip_line = False   # drop up to the next newline (a text field longer than its limit)
    for chunk in chunks:
        if skip or skip_line:
            if skip:
                dropped = min(skip, len(chunk))
                skip -= dropped
                size += dropped
                chunk = chunk[dropped:]
            if skip_line and chunk:
                newline = chunk.find(b"\n")
                if newline < 0:
                    size += len(chunk)
                    continue
                size += newline + 1
                chunk = chunk[newline + 1:]
                skip_line = False
            if skip or not chunk:
                continue
        data = data[pos:] + chunk if pos < len(data) else chunk
        pos = 0
        end = len(data)
        while pos < end:
            newline = data.find(b"\n", pos)
            if newline == pos:  # blank line: end of the entry
                pos += 1
                size += 1
                if entry:
                    yield entry, size
                entry, size = {}, 0
                continue
            if not entry and newline > 0:
                # fast path: a whole entry of text fields (the usual case) up to its blank line
                stop = data.find(b"\n\n", pos, pos + FAST_ENTRY_MAX)
                if stop >= 0:
                    fields = {}
                    for line in data[pos:stop].split(b"\n"):
                        name, equals, value = line.partition(b"=")
                        if not equals:
                            break  # a binary field: the careful way below
                        if len(value) > limits_get(name, FIELD_MAX):
                            value = value[:limits_get(name, FIELD_MAX)]
                            fields.setdefault(b"..cut", set()).add(name)
                        fields[name] = value
                    else:
                        yield fields, stop + 2 - pos
                        pos = stop + 2
                        continue
            if newline < 0:
                longest = max(limits.values()) if limits else FIELD_MAX
                if end - pos > longest + 1024:  # a text field too long to hold: keep its start, skip the rest
                    equals = data.find(b"=", pos, pos + 256)
                    if equals >= 0:
                        name = data[pos:equals]
                        limit = limits.get(name, FIELD_MAX)
                        entry[name] = data[equals + 1:equals + 1 + limit]
                        entry.setdefault(b"..cut", set()).add(name)
                    size += end - pos
                    pos = end
                    skip_line = True
                break
            equals = data.find(b"=", pos, newline)
            if equals >= 0:
                name = data[pos:equals]
                limit = limits.get(name, FIELD_MAX)
                if newline - equals - 1 > limit:
                    entry.setdefault(b"..cut", set()).add(name)
                entry[name] = data[equals + 1:min(newline, equals + 1 + limit)]
                size += newline + 1 - pos
                pos = newline + 1
                continue
            # binary field: NAME \n <u64 le length> <data> \n
            if newline + 9 > end:
                break
            name = data[pos:newline]
            length = int.from_bytes(data[newline + 1:newline + 9], "little")
            limit = limits.get(name, FIELD_MAX)
            start = newline + 9
            if start + length + 1 <= end:
                entry[name] = data[start:start + min(length, limit)]
                if length > limit:
                    entry.setdefault(b"..cut", set()).add(name)
                size += start + length + 1 - pos
                pos = start + length + 1
                continue
            if length <= limit or end - start < limit:
                break  # wait for the rest of a field kept whole, or for the part of it that is kept
            entry[name] = data[start:start + limit]
            entry.setdefault(b"..cut", set()).add(name)
            size += end - pos
            skip = length + 1 - (end - start)
            pos = end
            break
        if pos >= len(data):
            data, pos = b"", 0
    if entry or skip or skip_line or pos < len(data):
        raise ReadFailed("journalctl's output ended inside an entry")


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else None


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def make_line(fields, realtime):
    return Line(realtime / 1e6, fields)


def _stamp(fields):
    """(realtime in microseconds, cursor as bytes) of an entry; ReadFailed when journalctl printed no valid
    ones (the cursor is parsed in full only where it is compared or kept)."""
    realtime = _int(fields.get(_REALTIME))
    cursor = fields.get(_CURSOR)
    if realtime is None or realtime < 0 or not cursor or not cursor.startswith(b"s=") or len(cursor) > CURSOR_MAX:
        raise ReadFailed("journalctl printed an entry without a valid cursor or timestamp")
    return realtime, cursor


def _argv(*extra):
    return [systemd.JOURNALCTL, "--no-pager", "-q", "-o", "export", "--output-fields=%s" % ",".join(FIELDS)] \
        + list(extra)


# ------------------------------------------------------------------------------------------ one unit
def read_alone(unit, position, deadline, lines_max=None):
    """Newest first, stopped at the position: the unit's new lines (the newest ``lines_max``, default
    LINES_MAX; at most UNIT_BYTES_MAX bytes of output)."""
    lines_max = LINES_MAX if lines_max is None else lines_max
    bytes_max = UNIT_BYTES_MAX
    started = time.time()
    newest = None
    kept = []
    truncated = False
    used = 0
    try:
        proc = _Journalctl(_argv("-r", "-n", str(lines_max + 1), "_SYSTEMD_UNIT=%s" % unit), deadline)
    except ReadFailed as exc:
        return Result(unit, False, position, error=str(exc), mode="alone")
    stop = False
    try:
        for fields, size in export_entries(proc.chunks()):
            used += size
            realtime, cursor = _stamp(fields)
            if fields.get(b"_SYSTEMD_UNIT") != unit.encode():
                raise ReadFailed("journalctl printed an entry of another unit")
            if newest is None:
                newest = (cursor, realtime)
            if not position.is_new(cursor, realtime):
                stop = True  # the position is reached: the rest was read before
                break
            if len(kept) >= lines_max or used > bytes_max:
                truncated = stop = True
                break
            kept.append(make_line(fields, realtime))
    except ReadFailed as exc:
        proc.close(stop=True)
        return Result(unit, False, position, error=str(exc), mode="alone")
    code = proc.close(stop)
    if code:
        return Result(unit, False, position, error=proc.failure(code), mode="alone")
    if newest is not None and cursor_key(newest[0]) is None:
        return Result(unit, False, position, error="journalctl printed a cursor that is not one", mode="alone")
    kept.reverse()
    moved = Position(position.cursor, position.floor, started, position.seen, truncated or len(kept) >= BUSY_LINES)
    if newest is not None:
        moved = Position(newest[0], position.floor, started, max(newest[1] / 1e6, position.seen or 0.0), moved.loud)
    return Result(unit, True, moved, kept, truncated, mode="alone")


def newest(unit, deadline=None):
    """(epoch seconds of the unit's newest journal entry or None, ok): for ``agentops status``."""
    position = Position(floor=time.time() + 3600.0)  # nothing is new: only the newest entry is looked at
    result = read_alone(unit, position, deadline or time.monotonic() + DEADLINE, lines_max=0)
    return (result.position.seen, True) if result.ok else (None, False)


# ------------------------------------------------------------------------------------------ many units
def read(positions, now=None, batch=None, budget=BUDGET):
    """Read the new lines of every unit in ``positions`` ({unit: Position}).

    ``batch``: the record the previous call returned (where its batch stopped: a cursor and the time it
    was taken; None on the first run). Returns ({unit: Result}, the record for the next call).
    """
    now = time.time() if now is None else now
    limit = time.monotonic() + budget
    record = _usable(batch)
    fresh = None
    if record is None and positions:
        # nowhere to start a batch from: where the journal ends now, before any read of this run
        fresh = _tail(min(limit, time.monotonic() + DEADLINE))
    results = {}
    alone = []
    members = []
    for unit, position in positions.items():
        if position.loud or position.checked is None or position.checked < now - BATCH_MAX_AGE \
                or (record is not None and position.checked < record["at"] - 0.001):
            alone.append(unit)
        else:
            members.append(unit)
    tries = 0
    following = None
    while members:
        tries += 1
        if tries > BATCH_TRIES or time.monotonic() >= limit:
            alone.extend(members)
            break
        found, outcome = _read_batch(members, positions, record, limit)
        if found is not None:
            results.update(found)
            following = outcome
            break
        if outcome is None:  # the batch failed: read each agent alone
            alone.extend(members)
            break
        members.remove(outcome)  # it passed its bounds: alone from now on, the batch again without it
        positions[outcome].loud = True
        alone.append(outcome)
    for unit in alone:
        left = limit - time.monotonic()
        if left <= 0:
            results[unit] = Result(unit, False, positions[unit], mode="alone",
                                   error="not read: the journal reads of this run took their %ds" % budget)
            continue
        results[unit] = read_alone(unit, positions[unit], time.monotonic() + min(DEADLINE, left))
    return results, following or record or fresh or {}


def _usable(batch):
    """The batch record ``{"cursor", "at"}`` when both are valid, else None."""
    if not isinstance(batch, dict) or cursor_key(batch.get("cursor")) is None or _number(batch.get("at")) is None:
        return None
    return {"cursor": batch["cursor"], "at": _number(batch["at"])}


def _tail(deadline):
    """A record at the journal's newest entry (taken before the reads that follow it), or None."""
    started = time.time()
    try:
        proc = _Journalctl([systemd.JOURNALCTL, "--no-pager", "-q", "-n", "1", "-o", "export",
                            "--output-fields=_SYSTEMD_UNIT"], deadline)
    except ReadFailed:
        return None
    cursor = None
    try:
        for fields, _size in export_entries(proc.chunks()):
            cursor = _stamp(fields)[1]
    except ReadFailed:
        proc.close(stop=True)
        return None
    if proc.close() or cursor is None or cursor_key(cursor) is None:
        return None
    return {"cursor": _text(cursor), "at": started}


def _batch_start(members, positions, record):
    """journalctl arguments where the batch starts: where the previous one stopped (``--cursor``: every
    member was read at or after that), else the oldest member's last read minus SLACK."""
    if record is not None:
        return ["--cursor=%s" % record["cursor"]]
    oldest = min(positions[u].checked for u in members)
    return ["--since", "@%d" % int(oldest - SLACK)]


def _read_batch(members, positions, record, limit):
    """One forward read of all ``members``. Returns ({unit: Result}, the record where it stopped, None when
    it printed nothing) when complete, (None, unit) when ``unit`` passed its bounds (read it alone from now
    on), (None, None) when the read failed."""
    started = time.time()
    wanted = dict((u.encode(), u) for u in members)
    kept = dict((u, []) for u in members)
    counts = dict((u, 0) for u in members)
    sizes = dict((u, 0) for u in members)
    newest = {}
    total_lines = total_bytes = 0
    last_cursor = None
    argv = _argv(*(_batch_start(members, positions, record) + ["_SYSTEMD_UNIT=%s" % u for u in members]))
    try:
        proc = _Journalctl(argv, min(limit, time.monotonic() + DEADLINE))
    except ReadFailed:
        return None, None
    try:
        for fields, size in export_entries(proc.chunks()):
            unit = wanted.get(fields.get(b"_SYSTEMD_UNIT"))
            realtime, cursor = _stamp(fields)
            total_lines += 1
            total_bytes += size
            if unit is None:
                raise ReadFailed("journalctl printed an entry of another unit (%s)"
                                 % (_text(fields.get(b"_SYSTEMD_UNIT")) or "none"))
            last_cursor = cursor
            if total_lines > BATCH_LINES_MAX or total_bytes > BATCH_BYTES_MAX:
                proc.close(stop=True)
                return None, max(members, key=lambda u: (counts[u], sizes[u]))
            if kept[unit] or positions[unit].is_new(cursor, realtime):  # the order is the journal's: once new, new
                counts[unit] += 1
                sizes[unit] += size
                if counts[unit] > LINES_MAX or sizes[unit] > UNIT_BYTES_MAX:
                    proc.close(stop=True)
                    return None, unit
                kept[unit].append(make_line(fields, realtime))
                newest[unit] = (cursor, realtime)
    except ReadFailed:
        proc.close(stop=True)
        return None, None
    if proc.close():
        return None, None
    if any(cursor_key(cursor) is None for cursor, _realtime in newest.values()) \
            or (last_cursor is not None and cursor_key(last_cursor) is None):
        return None, None
    following = {"cursor": _text(last_cursor), "at": started} if last_cursor is not None else None
    results = {}
    for unit in members:
        old = positions[unit]
        if unit in newest:
            cursor, realtime = newest[unit]
            moved = Position(cursor, old.floor, started, max(realtime / 1e6, old.seen or 0.0),
                             len(kept[unit]) >= BUSY_LINES)
        else:
            moved = Position(old.cursor, old.floor, started, old.seen, False)
        results[unit] = Result(unit, True, moved, kept[unit], False, mode="batch")
    return results, following


# ------------------------------------------------------------------------------------------ alert excerpts
def is_collection_unit(unit):
    """A unit of the collection itself (agent names that the inventory contract reserves for it)."""
    if not isinstance(unit, str) or not unit.startswith("agentops-"):
        return False
    stem = unit[len("agentops-"):]
    name = stem.split("@", 1)[0]
    if "@" not in stem:
        name = name.rpartition(".")[0] or name
    return name in agentops_contract.RESERVED_AGENT_NAMES or name.startswith(agentops_contract.RESERVED_AGENT_PREFIXES)


def tail_matches(unit):
    """journalctl matches of the lines an alert about ``unit`` may quote (see the module docstring)."""
    own = ["_SYSTEMD_UNIT=%s" % unit]
    if is_collection_unit(unit):
        own.append("_UID=0")
    return own + ["+", "_PID=1", "UNIT=%s" % unit]


def tail(unit, lines=20, deadline=TAIL_DEADLINE):
    """The last ``lines`` journal lines about ``unit`` (``short-iso``, as ``journalctl -u`` prints them),
    attributed by trusted fields (``tail_matches``); each line cut at TAIL_LINE_MAX characters, at most
    TAIL_BYTES_MAX bytes of journalctl's output read, one deadline."""
    argv = [systemd.JOURNALCTL, "--no-pager", "-q", "-o", "short-iso", "-n", str(int(lines))] + tail_matches(unit)
    try:
        proc = _Journalctl(argv, time.monotonic() + deadline)
    except ReadFailed as exc:
        return "(%s)" % exc
    keep = TAIL_LINE_MAX * 4  # bytes: a character takes at most four
    out = []
    pending = b""
    skipping = False  # the rest of a line longer than `keep`
    used = 0
    stop = False
    try:
        for chunk in proc.chunks():
            used += len(chunk)
            if skipping:
                newline = chunk.find(b"\n")
                if newline < 0:
                    chunk = b""
                else:
                    chunk, skipping = chunk[newline + 1:], False
            parts = (pending + chunk).split(b"\n")
            pending = parts.pop()
            out.extend(parts)
            if len(pending) > keep:
                out.append(pending[:keep] + b" [...]")
                pending, skipping = b"", True
            if used > TAIL_BYTES_MAX:
                stop = True
                break
    except ReadFailed as exc:
        proc.close(stop=True)
        return "(%s)" % exc
    code = proc.close(stop)
    if code:
        return "(%s)" % proc.failure(code).replace("journalctl exited", "journalctl failed: exit status", 1)
    if pending and not stop:
        out.append(pending)
    text = []
    for line in out:
        line = line.decode("utf-8", "replace")
        text.append(line if len(line) <= TAIL_LINE_MAX else line[:TAIL_LINE_MAX] + " [...]")
    if stop:
        text.append("[journal output cut after %d bytes]" % TAIL_BYTES_MAX)
    return "\n".join(text)
