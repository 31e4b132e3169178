"""Fixtures of the hostile scenario (helpers live in hostile_helpers.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
