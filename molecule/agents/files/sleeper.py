#!/usr/bin/python3
"""Test agent that only stays alive and says so now and then (journal progress)."""
import os
import sys
import time

tick = int(sys.argv[sys.argv.index("--tick") + 1]) if "--tick" in sys.argv else 60
print("sleeper up, greeting %s" % os.environ.get("GREETING"), flush=True)
while True:
    time.sleep(tick)
    print("still here", flush=True)
