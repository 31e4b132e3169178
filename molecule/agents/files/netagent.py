#!/usr/bin/python3
"""Test agent: reads its credential from $CREDENTIALS_DIRECTORY and talks to 127.0.0.1.

Writes the SHA-256 of the credential (never the credential) to credential.sha256 in its
working directory, then every 2 seconds opens a TCP connection to 127.0.0.1:PORT, sends an
HTTP request carrying that digest and counts the answers in `connections`.
"""
import hashlib
import os
import socket
import sys
import time

port = int(sys.argv[sys.argv.index("--port") + 1])
with open(os.path.join(os.environ["CREDENTIALS_DIRECTORY"], "api_token"), "rb") as handle:
    digest = hashlib.sha256(handle.read()).hexdigest()
with open("credential.sha256", "w", encoding="ascii") as handle:
    handle.write(digest + "\n")
print("net agent up, mode %s" % os.environ.get("AGENT_MODE"), flush=True)
count = 0
while True:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(("GET /agent/net/ping HTTP/1.0\r\nHost: 127.0.0.1\r\nX-Credential-Sha256: %s\r\n\r\n"
                          % digest).encode("ascii"))
            answer = conn.recv(64)
        if answer.startswith(b"HTTP/"):
            count += 1
            with open("connections.tmp", "w", encoding="ascii") as handle:
                handle.write("%d\n" % count)
            os.replace("connections.tmp", "connections")
            with open("heartbeat", "w", encoding="ascii") as handle:
                handle.write("%d\n" % time.time())
    except OSError as exc:
        print("connection failed: %s" % exc, flush=True)
    time.sleep(2)
