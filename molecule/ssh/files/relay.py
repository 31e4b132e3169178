#!/usr/bin/python3
"""Test helper of the ssh scenario (loopback only): copies stdin/stdout to and from 127.0.0.1:PORT.

usage: agentops-test-relay PORT
The controller's ssh runs it through `docker exec -i` as its ProxyCommand, so SSH reaches the
container's own sshd on 127.0.0.1 and no bridge address is ever a target.
"""
import os
import selectors
import socket
import sys


def main():
    port = int(sys.argv[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(None)
    stdin, stdout = sys.stdin.buffer.fileno(), sys.stdout.buffer.fileno()
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_READ, "in")
    sel.register(sock, selectors.EVENT_READ, "sock")
    while True:
        for key, _ in sel.select():
            if key.data == "in":
                data = os.read(stdin, 65536)
                if not data:
                    sock.shutdown(socket.SHUT_WR)
                    sel.unregister(stdin)
                    continue
                sock.sendall(data)
            else:
                data = sock.recv(65536)
                if not data:
                    return 0
                view = memoryview(data)
                while view:
                    view = view[os.write(stdout, view):]


if __name__ == "__main__":
    sys.exit(main())
