#!/usr/bin/python3
"""SMTP sink of the tests (loopback only): takes every message and writes it to a JSONL log.

usage: agentops-smtp-sink --port 2525 [--tls-port 2465] [--cert CERT --key KEY]
                          [--auth-user USER --auth-sha256 HEX] [--log FILE]

  --port       plain SMTP on 127.0.0.1; offers STARTTLS when --cert/--key are given
  --tls-port   implicit TLS (SMTPS) on 127.0.0.1 (needs --cert/--key)
  --auth-user / --auth-sha256
               AUTH PLAIN and LOGIN accepted (only over TLS) for this user whose password has
               this SHA-256 (the password itself is never written anywhere by the sink);
               without them AUTH is not offered and MAIL needs no login
  --log        one JSON line per accepted message: {"time", "port", "tls", "starttls", "auth",
               "mail_from", "rcpt_to", "data"} (default /var/log/agentops-smtp-sink.jsonl)

Standard library only (socketserver): Python's smtpd module is gone from Debian 13.
Lines are bounded (1000 bytes), a message to 1 MiB, a session to 60 s of silence.
"""
import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import socketserver
import ssl
import threading
import time

LINE_LIMIT = 1000
DATA_LIMIT = 1024 * 1024
IDLE = 60


class Session(socketserver.StreamRequestHandler):
    """One SMTP session (RFC 5321 subset: EHLO/HELO, STARTTLS, AUTH PLAIN/LOGIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT)."""

    timeout = IDLE

    def setup(self):
        self.tls = False
        self.starttls = False
        if self.server.implicit_tls:
            self.request = self.server.context.wrap_socket(self.request, server_side=True)
            self.tls = True
        socketserver.StreamRequestHandler.setup(self)

    def reply(self, text):
        self.wfile.write((text + "\r\n").encode("ascii"))
        self.wfile.flush()

    def readline(self):
        line = self.rfile.readline(LINE_LIMIT + 2)
        if not line:
            raise EOFError
        return line.rstrip(b"\r\n").decode("utf-8", "replace")

    def handle(self):
        opts = self.server.opts
        self.user = None
        mail_from, rcpt = None, []
        try:
            self.reply("220 agentops-smtp-sink ESMTP ready")
            while True:
                line = self.readline()
                verb, _, arg = line.partition(" ")
                verb = verb.upper()
                if verb in ("EHLO", "HELO"):
                    if verb == "HELO":
                        self.reply("250 agentops-smtp-sink")
                        continue
                    lines = ["agentops-smtp-sink", "SIZE %d" % DATA_LIMIT, "8BITMIME"]
                    if self.server.context is not None and not self.tls:
                        lines.append("STARTTLS")
                    if opts.auth_user and self.tls:
                        lines.append("AUTH PLAIN LOGIN")
                    for index, text in enumerate(lines):
                        self.reply("250%s%s" % ("-" if index < len(lines) - 1 else " ", text))
                elif verb == "STARTTLS":
                    if self.server.context is None or self.tls:
                        self.reply("502 5.5.1 STARTTLS not available")
                        continue
                    self.reply("220 2.0.0 ready to start TLS")
                    self.request = self.server.context.wrap_socket(self.request, server_side=True)
                    self.rfile = self.request.makefile("rb")
                    self.wfile = self.request.makefile("wb")
                    self.tls = self.starttls = True
                    mail_from, rcpt, self.user = None, [], None
                elif verb == "AUTH":
                    self.auth(arg)
                elif verb == "MAIL":
                    if opts.auth_user and not self.user:
                        self.reply("530 5.7.0 authentication required")
                        continue
                    mail_from, rcpt = (arg.partition(":")[2].split() or [""])[0].strip("<>"), []
                    self.reply("250 2.1.0 ok")
                elif verb == "RCPT":
                    if mail_from is None:
                        self.reply("503 5.5.1 MAIL first")
                        continue
                    address = (arg.partition(":")[2].split() or [""])[0].strip("<>")
                    if address.endswith("@refused.invalid"):
                        self.reply("550 5.1.1 mailbox unavailable")
                        continue
                    rcpt.append(address)
                    self.reply("250 2.1.5 ok")
                elif verb == "DATA":
                    if not rcpt:
                        self.reply("503 5.5.1 RCPT first")
                        continue
                    self.reply("354 end data with <CR><LF>.<CR><LF>")
                    data = self.read_data()
                    if data is None:
                        self.reply("552 5.3.4 message too big")
                    else:
                        self.server.record({"time": time.time(), "port": self.server.server_address[1],
                                            "tls": self.tls, "starttls": self.starttls, "auth": self.user,
                                            "mail_from": mail_from, "rcpt_to": rcpt, "data": data})
                        self.reply("250 2.0.0 ok: queued")
                    mail_from, rcpt = None, []
                elif verb == "RSET":
                    mail_from, rcpt = None, []
                    self.reply("250 2.0.0 ok")
                elif verb == "NOOP":
                    self.reply("250 2.0.0 ok")
                elif verb == "QUIT":
                    self.reply("221 2.0.0 bye")
                    return
                else:
                    self.reply("502 5.5.2 command not recognized")
        except (EOFError, OSError, ssl.SSLError, ValueError):
            return

    def read_data(self):
        lines, size = [], 0
        while True:
            line = self.rfile.readline(LINE_LIMIT + 2)
            if not line:
                raise EOFError
            if line in (b".\r\n", b".\n"):
                break
            if line.startswith(b".."):
                line = line[1:]
            size += len(line)
            if size <= DATA_LIMIT:
                lines.append(line)
        if size > DATA_LIMIT:
            return None
        return b"".join(lines).decode("utf-8", "replace")

    def check(self, user, password):
        opts = self.server.opts
        digest = hashlib.sha256(password.encode("utf-8")).hexdigest()
        return user == opts.auth_user and hmac.compare_digest(digest, opts.auth_sha256 or "")

    def auth(self, arg):
        if not (self.server.opts.auth_user and self.tls):
            self.reply("503 5.5.1 AUTH not available")
            return
        mechanism, _, initial = arg.partition(" ")
        try:
            if mechanism.upper() == "PLAIN":
                if not initial:
                    self.reply("334 ")
                    initial = self.readline()
                _zid, user, password = base64.b64decode(initial, validate=True).decode("utf-8").split("\0")
            elif mechanism.upper() == "LOGIN":
                if initial:
                    user = base64.b64decode(initial, validate=True).decode("utf-8")
                else:
                    self.reply("334 VXNlcm5hbWU6")
                    user = base64.b64decode(self.readline(), validate=True).decode("utf-8")
                self.reply("334 UGFzc3dvcmQ6")
                password = base64.b64decode(self.readline(), validate=True).decode("utf-8")
            else:
                self.reply("504 5.5.4 mechanism not supported")
                return
        except (binascii.Error, UnicodeError, ValueError):
            self.reply("501 5.5.2 cannot decode")
            return
        if self.check(user, password):
            self.user = user
            self.reply("235 2.7.0 authentication succeeded")
        else:
            self.reply("535 5.7.8 authentication credentials invalid")


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port, opts, context=None, implicit_tls=False):
        self.opts = opts
        self.context = context
        self.implicit_tls = implicit_tls
        self.lock = threading.Lock()
        self.messages = []
        socketserver.ThreadingTCPServer.__init__(self, ("127.0.0.1", port), Session)

    def record(self, message):
        with self.lock:
            self.messages.append(message)
            if self.opts.log:
                fd = os.open(self.opts.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with os.fdopen(fd, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(message) + "\n")


def parser():
    args = argparse.ArgumentParser(description="SMTP sink of the tests (127.0.0.1 only)")
    args.add_argument("--port", type=int, default=2525)
    args.add_argument("--tls-port", type=int, default=None)
    args.add_argument("--cert")
    args.add_argument("--key")
    args.add_argument("--auth-user")
    args.add_argument("--auth-sha256")
    args.add_argument("--log", default="/var/log/agentops-smtp-sink.jsonl")
    return args


def servers(opts):
    """The plain (STARTTLS) server and, with --tls-port, the implicit TLS one; not yet serving."""
    context = None
    if opts.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(opts.cert, opts.key)
    found = [Server(opts.port, opts, context)]
    if opts.tls_port is not None:
        found.append(Server(opts.tls_port, opts, context, implicit_tls=True))
    return found


def main(argv=None):
    opts = parser().parse_args(argv)
    running = servers(opts)
    for server in running[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    running[0].serve_forever()


if __name__ == "__main__":
    main()
