#!/usr/bin/python3
"""Test agent that leaves work behind: a child that ignores SIGTERM and a grandchild
that setsid()s away from its parent. Their pids go to `pids` in the working directory."""
import os
import signal
import time


def idle():
    while True:
        time.sleep(1)


stubborn = os.fork()
if stubborn == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    idle()

read_end, write_end = os.pipe()
middle = os.fork()
if middle == 0:
    os.setsid()
    runaway = os.fork()
    if runaway == 0:
        os.close(read_end)
        os.write(write_end, b"%d" % os.getpid())
        os.close(write_end)
        idle()
    os._exit(0)
os.close(write_end)
os.waitpid(middle, 0)
runaway = int(os.read(read_end, 32).decode())
with open("pids.tmp", "w", encoding="ascii") as handle:
    handle.write("main=%d\nstubborn=%d\nrunaway=%d\n" % (os.getpid(), stubborn, runaway))
os.replace("pids.tmp", "pids")
print("forker up", flush=True)
idle()
