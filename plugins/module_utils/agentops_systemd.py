# -*- coding: utf-8 -*-
# Copyright: agentops.fleet maintainers
# MIT License (see LICENSE)
"""Parsing of systemctl output, shared by the collection's modules and filters.

Standard library only.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re


def parse_show(text):
    """`systemctl show -p ... unit...` output -> {Id: {Property: value}} (blocks separated by blank lines)."""
    units = {}
    for block in re.split(r"\n\s*\n", text or ""):
        props = {}
        for line in block.splitlines():
            if "=" in line:
                key, value = line.split("=", 1)
                props[key] = value
        if props.get("Id"):
            units[props["Id"]] = props
    return units
