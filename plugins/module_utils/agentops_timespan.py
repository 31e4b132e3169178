# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)
"""systemd time spans and sizes, shared by the modules and the on-host command.

Standard library only: this file is also installed on managed hosts.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import re

_TIMESPAN_UNITS = {
    "us": 1e-6, "usec": 1e-6,
    "ms": 1e-3, "msec": 1e-3,
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
    "M": 2629800, "month": 2629800, "months": 2629800,
    "y": 31557600, "year": 31557600, "years": 31557600,
}
# ASCII digits only: Python's \d also matches other scripts' digits ("\u0663s"), which systemd refuses.
_TIMESPAN_PART = re.compile(r"[ \t]*([0-9]+(?:\.[0-9]+)?)[ \t]*([a-zA-Z]*)")


def parse_timespan(value):
    """Return the number of seconds of a systemd time span ("30min", "1h 30s", "45").

    A bare number is seconds. Raises ValueError on anything else.
    """
    if isinstance(value, bool):
        raise ValueError("not a time span: %r" % (value,))
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("not a finite time span: %r" % (value,))
        if value < 0:
            raise ValueError("negative time span: %r" % (value,))
        return float(value)
    text = str(value).strip(" \t")
    if not text:
        raise ValueError("empty time span")
    total = 0.0
    pos = 0
    while pos < len(text):
        match = _TIMESPAN_PART.match(text, pos)
        if not match or match.end() == pos:
            raise ValueError("not a time span: %r" % (value,))
        number, unit = match.groups()
        if unit not in _TIMESPAN_UNITS and unit != "":
            raise ValueError("unknown time unit %r in %r" % (unit, value))
        total += float(number) * _TIMESPAN_UNITS.get(unit, 1)
        pos = match.end()
        while pos < len(text) and text[pos] in " \t":
            pos += 1
    return total
