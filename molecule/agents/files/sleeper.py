#!/usr/bin/python3
"""Test agent that only stays alive and says so now and then (journal progress).

--shm: uses POSIX shared memory (multiprocessing.shared_memory, i.e. shm_open) under the name
agentops-test-<agent>, reads it back from a child process, puts a plain file next to it in /dev/shm
and records in $HOME/shm.json what it read back and what it sees in /dev/shm (refreshed every second).
--raise-core-limit: raises its soft core size limit to the hard one (as a runtime that wants core
dumps would) and records both in $HOME/rlimit-core.
"""
import json
import multiprocessing
import os
import resource
import sys
import time

tick = int(sys.argv[sys.argv.index("--tick") + 1]) if "--tick" in sys.argv else 60
home = os.environ.get("HOME", ".")
name = os.path.basename(home)


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def read_back(segment, queue):
    from multiprocessing import shared_memory  # noqa: E402  (the child attaches by name, as another process would)
    other = shared_memory.SharedMemory(name=segment)
    queue.put(bytes(other.buf[:64]).rstrip(b"\0").decode())
    other.close()


if "--raise-core-limit" in sys.argv:
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    except (ValueError, OSError) as exc:
        print("cannot raise the core limit: %s" % exc, flush=True)
    write(os.path.join(home, "rlimit-core"), "%d %d\n" % resource.getrlimit(resource.RLIMIT_CORE))

shm = None
if "--shm" in sys.argv:
    from multiprocessing import shared_memory
    segment = "agentops-test-%s" % name
    marker = "shm-%s-%d" % (name, os.getpid())
    try:
        shm = shared_memory.SharedMemory(name=segment, create=True, size=4096)
    except FileExistsError:  # left by an earlier run that was killed
        shared_memory.SharedMemory(name=segment).unlink()
        shm = shared_memory.SharedMemory(name=segment, create=True, size=4096)
    shm.buf[:len(marker)] = marker.encode()
    queue = multiprocessing.Queue()
    child = multiprocessing.Process(target=read_back, args=(segment, queue))
    child.start()
    seen_by_child = queue.get(timeout=30)
    child.join(30)
    write(os.path.join("/dev/shm", "agentops-test-file-%s" % name), marker)
    result = {"segment": segment, "marker": marker, "read_back": seen_by_child, "ready": time.time()}

print("sleeper up, greeting %s" % os.environ.get("GREETING"), flush=True)
last = time.monotonic()
while True:
    if shm is not None:
        result["sees"] = sorted(os.listdir("/dev/shm"))
        result["time"] = time.time()
        write(os.path.join(home, "shm.json"), json.dumps(result))
        time.sleep(1)
    else:
        time.sleep(tick)
    if time.monotonic() - last >= tick:
        last = time.monotonic()
        print("still here", flush=True)
