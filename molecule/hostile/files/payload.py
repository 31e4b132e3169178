# Payload planted by the evil agent's user (kind: @KIND@). It records who ran it in
# /var/lib/agentops-canary/<kind>-euid<N>-pid<P>; run by root, it also leaves /root/PWNED-<kind>.
# It never prints: it must not change the output of what it runs inside.
import os as _os
import sys as _sys


def _fire(kind="@KIND@"):
    euid = _os.geteuid()
    line = "euid=%d pid=%d argv=%r\n" % (euid, _os.getpid(), list(_sys.argv))
    for path in ("/var/lib/agentops-canary/%s-euid%d-pid%d" % (kind, euid, _os.getpid()), "/root/PWNED-" + kind):
        try:
            with open(path, "a") as handle:
                handle.write(line)
        except OSError:
            pass


_fire()
