"""A stand-in ``journalctl`` for the unit tests: a journal held in a JSON file, printed as journalctl does.

The controller has no journald; the Molecule scenarios (watcher, hostile) run the same reader against
the real journalctl and journald. This stand-in implements what the reader and the alert excerpts use,
with journalctl's semantics: ``-o export`` (and ``-o json``) (``--output-fields``, binary encoding of values that are not
printable, ``__CURSOR`` / ``__REALTIME_TIMESTAMP`` / ``__MONOTONIC_TIMESTAMP`` / ``_BOOT_ID`` always
printed), ``-o short-iso``, ``-r``, ``-n``, ``--since @EPOCH``, ``--cursor=``, ``-u`` (journalctl's expansion: the unit's processes, or PID 1 or a root
process naming it), and matches (``FIELD=VALUE``;
the same field twice is OR, different fields AND, ``+`` separates alternatives). Entries are kept in
journal order (sequence numbers); cursors look like journald's.

Knobs (``FakeJournal.behave``): ``exit`` (status after printing), ``stderr``, ``sleep`` (seconds before
printing: a hung journalctl), ``garbage`` (bytes printed instead of the entries). Every call's argv is
appended to ``calls`` (one JSON list per line).
"""
import json
import os
import sys

SCRIPT = """#!%(python)s
import sys
sys.path.insert(0, %(here)r)
import fake_journal
sys.exit(fake_journal.main(%(data)r, sys.argv[1:]))
"""

SEQNUM_ID = "0123456789abcdef0123456789abcdef"
BOOT_ID = "fedcba9876543210fedcba9876543210"


class FakeJournal:
    """The journal of one test: ``add`` entries, then point ``systemd.JOURNALCTL`` at ``path``."""

    def __init__(self, directory):
        os.makedirs(str(directory), exist_ok=True)
        self.data = os.path.join(str(directory), "journal.json")
        self.path = os.path.join(str(directory), "journalctl")
        self.calls_path = os.path.join(str(directory), "journal-calls")
        self.state = {"entries": [], "seqnum": 0, "seqnum_id": SEQNUM_ID, "boot_id": BOOT_ID, "behave": {},
                      "calls": self.calls_path}
        with open(self.path, "w", encoding="utf-8") as handle:
            handle.write(SCRIPT % {"python": sys.executable, "here": os.path.dirname(os.path.abspath(__file__)),
                                   "data": self.data})
        os.chmod(self.path, 0o755)
        self._save()

    def _save(self):
        with open(self.data + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(self.state, handle)
        os.replace(self.data + ".tmp", self.data)

    def add(self, unit, message, realtime, save=True, **fields):
        """Append one entry of ``unit`` (its ``_SYSTEMD_UNIT``; None for none) at ``realtime`` (epoch)."""
        self.state["seqnum"] += 1
        entry = {"MESSAGE": message, "PRIORITY": "6", "_UID": "990", "_PID": "4242", "_COMM": "agent",
                 "_EXE": "/usr/bin/agent"}
        if unit is not None:
            entry["_SYSTEMD_UNIT"] = unit
        entry.update(dict((k, v) for k, v in fields.items() if v is not None))
        for key in [k for k, v in fields.items() if v is None]:
            entry.pop(key, None)
        entry["__SEQNUM"] = self.state["seqnum"]
        entry["__REALTIME"] = int(realtime * 1e6)
        entry["__MONOTONIC"] = int(realtime * 1e6) - 1_000_000_000
        self.state["entries"].append(entry)
        if save:
            self._save()

    def add_many(self, unit, count, realtime, step=0.0001, text="line %d", **fields):
        for index in range(count):
            self.add(unit, text % index, realtime + index * step, save=False, **fields)
        self._save()

    def new_seqnum_id(self, seqnum_id):
        """journald started a new sequence-number domain (new journal files)."""
        self.state["seqnum_id"] = seqnum_id
        self.state["seqnum"] = 0
        self._save()

    def behave(self, **knobs):
        self.state["behave"] = knobs
        self._save()

    def calls(self):
        try:
            with open(self.calls_path, encoding="utf-8") as handle:
                return [json.loads(line) for line in handle]
        except OSError:
            return []

    def cursor_of(self, index):
        return cursor(self.state["entries"][index], self.state)


def cursor(entry, state):
    return "s=%s;i=%x;b=%s;m=%x;t=%x;x=%x" % (entry.get("__SEQNUM_ID", state["seqnum_id"]), entry["__SEQNUM"],
                                               state["boot_id"], entry["__MONOTONIC"], entry["__REALTIME"],
                                               entry["__SEQNUM"] * 7919)


def _printable(value):
    return all(ch == "\t" or (ch >= " " and ch != "\x7f") for ch in value)


def _export(entry, state, fields):
    out = bytearray()
    out += b"__CURSOR=" + cursor(entry, state).encode() + b"\n"
    out += b"__REALTIME_TIMESTAMP=%d\n" % entry["__REALTIME"]
    out += b"__MONOTONIC_TIMESTAMP=%d\n" % entry["__MONOTONIC"]
    out += b"_BOOT_ID=" + state["boot_id"].encode() + b"\n"
    for name, value in entry.items():
        if name.startswith("__") or (fields is not None and name not in fields):
            continue
        if isinstance(value, dict):  # {"hex": "..."}: raw bytes
            raw = bytes.fromhex(value["hex"])
        else:
            raw = str(value).encode("utf-8")
        if isinstance(value, dict) or not _printable(str(value)):
            out += name.encode() + b"\n" + len(raw).to_bytes(8, "little") + raw + b"\n"
        else:
            out += name.encode() + b"=" + raw + b"\n"
    return bytes(out + b"\n")


def _json(entry, state, fields):
    out = {"__CURSOR": cursor(entry, state), "__REALTIME_TIMESTAMP": str(entry["__REALTIME"]),
           "__MONOTONIC_TIMESTAMP": str(entry["__MONOTONIC"]), "_BOOT_ID": state["boot_id"]}
    for name, value in entry.items():
        if not name.startswith("__") and (fields is None or name in fields):
            out[name] = list(bytes.fromhex(value["hex"])) if isinstance(value, dict) else str(value)
    return (json.dumps(out) + "\n").encode("utf-8")


def _short_iso(entry):
    import datetime  # pylint: disable=import-outside-toplevel
    stamp = datetime.datetime.fromtimestamp(entry["__REALTIME"] / 1e6, datetime.timezone.utc)
    ident = entry.get("SYSLOG_IDENTIFIER") or entry.get("_COMM") or "unknown"
    message = entry.get("MESSAGE", "")
    message = bytes.fromhex(message["hex"]).decode("utf-8", "replace") if isinstance(message, dict) else str(message)
    return ("%s testhost %s[%s]: %s\n" % (stamp.strftime("%Y-%m-%dT%H:%M:%S+0000"), ident,
                                          entry.get("_PID", "?"), message)).encode("utf-8")


def _matches(words):
    groups, current = [], {}
    for word in words:
        if word == "+":
            groups.append(current)
            current = {}
            continue
        name, _sep, value = word.partition("=")
        current.setdefault(name, set()).add(value)
    groups.append(current)
    return [g for g in groups if g]


def _match(entry, groups):
    if not groups:
        return True
    for group in groups:
        if all(str(entry.get(name)) in values for name, values in group.items()):
            return True
    return False


def _key(entry, state):
    return (entry.get("__SEQNUM_ID", state["seqnum_id"]), entry["__SEQNUM"])


def main(data, argv):
    with open(data, encoding="utf-8") as handle:
        state = json.load(handle)
    with open(state["calls"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps(argv) + "\n")
    behave = state.get("behave") or {}
    if behave.get("sleep"):
        import time  # pylint: disable=import-outside-toplevel
        time.sleep(behave["sleep"])
    output, fields, reverse, lines, since, start, words = "short", None, False, None, None, None, []
    args = list(argv)
    while args:
        word = args.pop(0)
        if word in ("--no-pager", "-q"):
            continue
        if word == "-o":
            output = args.pop(0)
        elif word.startswith("--output-fields="):
            fields = set(word.split("=", 1)[1].split(","))
        elif word == "-r":
            reverse = True
        elif word == "-n":
            lines = int(args.pop(0))
        elif word == "--since":
            since = float(args.pop(0).lstrip("@")) * 1e6
        elif word.startswith("--cursor="):
            start = word.split("=", 1)[1]
        elif word == "-u":  # journalctl's own expansion of a unit match
            unit = args.pop(0)
            words += ["_SYSTEMD_UNIT=%s" % unit, "+", "_PID=1", "UNIT=%s" % unit, "+", "_UID=0",
                      "OBJECT_SYSTEMD_UNIT=%s" % unit]
        elif word.startswith("-"):
            sys.stderr.write("fake journalctl: unknown option %s\n" % word)
            return 2
        else:
            words.append(word)
    if behave.get("exit") and behave.get("garbage") is None:  # journalctl fails before printing anything
        sys.stderr.write((behave.get("stderr") or "failed") + "\n")
        return behave["exit"]
    if behave.get("garbage") is not None:
        sys.stdout.buffer.write(behave["garbage"].encode("latin-1"))
        sys.stdout.flush()
        return behave.get("exit", 0)
    groups = _matches(words)
    entries = [e for e in state["entries"] if _match(e, groups)]
    if start is not None:
        parts = dict(p.split("=", 1) for p in start.split(";"))
        position = (parts["s"], int(parts["i"], 16))
        entries = [e for e in entries if _key(e, state)[0] != position[0] or _key(e, state)[1] >= position[1]]
    if since is not None:
        entries = [e for e in entries if e["__REALTIME"] >= since]
    if reverse:
        entries = entries[::-1]
        if lines is not None:
            entries = entries[:lines]
    elif lines is not None and start is None and since is None:
        entries = entries[-lines:] if lines else []
    out = sys.stdout.buffer
    try:
        for entry in entries:
            if output == "export":
                out.write(_export(entry, state, fields))
            elif output == "json":
                out.write(_json(entry, state, fields))
            else:
                out.write(_short_iso(entry))
        out.flush()
    except BrokenPipeError:
        return 1
    if behave.get("stderr"):
        sys.stderr.write(behave["stderr"] + "\n")
    return behave.get("exit", 0)
