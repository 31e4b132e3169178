#!/usr/bin/python3
"""Test agent that crashes right after it starts."""
import sys

print("crasher: giving up", flush=True)
sys.exit(3)
