"""Telemetry on /metrics, seen from outside.

* imapfront_command_duration_seconds: a histogram per command name whose
  counts move by exactly the commands a client sent.
* imapfront_anomalies_total: a scripted backend that sends a tagged reply
  for a tag no command carried (unknown_tag), a bare "+" to a command
  (bare_continuation), a 50-octet literal for FETCH BODY[]<0.10>
  (fetch_literal_oversize), and a client that stops inside an APPEND
  literal (client_literal_stall): each counts once, the log says so,
  and the client receives exactly what the backend sent."""

import re
import time

import pytest

import imapfront_harness as h
import ops_support as ops

HIST = "imapfront_command_duration_seconds"
ANOM = "imapfront_anomalies_total"
NAMES = ("OTHER", "APPEND", "AUTHENTICATE", "CAPABILITY", "COPY", "EXPUNGE", "FETCH", "IDLE",
         "LIST", "LOGIN", "LOGOUT", "MOVE", "NOOP", "SEARCH", "SELECT", "STATUS", "STORE")
KINDS = ("unknown_tag", "bare_continuation", "fetch_literal_oversize", "client_literal_stall")


def counts(m):
    return {n: m.value(HIST + "_count", command=n) for n in NAMES}


def anomalies(m):
    return {k: m.value(ANOM, kind=k) for k in KINDS}


def test_histogram_counts_move_by_commands_sent(proxy_factory, emulator, ctx):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port)
    before = ops.scrape(proxy)
    for n in NAMES:  # every named series is there, buckets well formed
        assert before.get(HIST + "_bucket", command=n, le="+Inf") is not None, n
    sent = {"LOGIN": 1, "NOOP": 3, "CAPABILITY": 2, "SELECT": 1, "LIST": 1, "STATUS": 1,
            "SEARCH": 1, "FETCH": 2, "STORE": 1, "APPEND": 1, "EXPUNGE": 1, "LOGOUT": 1}
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
        script = [("N1", "NOOP"), ("N2", "NOOP"), ("C1", "CAPABILITY"), ("C2", "CAPABILITY"),
                  ("L1", 'LIST "" "*"'), ("ST", "STATUS INBOX (MESSAGES)")]
        for tag, cmd in script:
            _, t = c.command(tag, cmd)
            assert t.startswith(tag.encode() + b" OK"), (cmd, t)
        assert h.append(c, "A1", b"Subject: t\r\n\r\nbody\r\n").startswith(b"A1 OK")
        for tag, cmd in [("S1", "SELECT INBOX"), ("SE", "SEARCH ALL"), ("F1", "FETCH 1 FLAGS"),
                         ("F2", "FETCH 1 BODY.PEEK[]<0.4>"), ("SO", "STORE 1 +FLAGS (\\Deleted)"),
                         ("EX", "EXPUNGE"), ("N3", "NOOP")]:
            _, t = c.command(tag, cmd)
            assert t.startswith(tag.encode() + b" OK"), (cmd, t)
        _, t = c.command("LO", "LOGOUT")
        assert t.startswith(b"LO OK"), t
    want = {n: counts(before)[n] + sent.get(n, 0) for n in NAMES}
    after = ops.wait_metrics(proxy, lambda m: counts(m) == want, what="histogram counts")
    # Durations were recorded: _sum grew for the commands that ran.
    for n in sent:
        assert after.value(HIST + "_sum", command=n) >= before.value(HIST + "_sum", command=n)
    assert after.value(HIST + "_bucket", command="NOOP", le="+Inf") == want["NOOP"]


GREETING = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE] fake ready\r\n"


def scripted(special):
    """A FakeBackend handler: ordinary replies, plus special(tag, name,
    line) -> bytes or None for the command under test."""

    def handler(conn):
        conn.sendall(GREETING)
        while True:
            line = h.recv_line(conn)
            if not line:
                return
            parts = line.rstrip(b"\r\n").split(b" ", 2)
            tag, name = parts[0], (parts[1].upper() if len(parts) > 1 else b"")
            out = special(tag, name, line)
            if out is not None:
                conn.sendall(out)
            elif name == b"CAPABILITY":
                conn.sendall(b"* CAPABILITY IMAP4rev1 LITERAL+ IDLE\r\n%s OK done\r\n" % tag)
            elif name == b"SELECT":
                conn.sendall(b"* 1 EXISTS\r\n%s OK [READ-WRITE] done\r\n" % tag)
            elif name == b"LOGOUT":
                conn.sendall(b"* BYE bye\r\n%s OK done\r\n" % tag)
                return
            else:
                conn.sendall(b"%s OK done\r\n" % tag)

    return handler


def run_case(proxy_factory, ctx, special, command, expect, kind, log_pattern):
    """Logs in through a proxy in front of the scripted backend, sends
    `command` (tag T1), checks the client gets exactly `expect`, that the
    anomaly `kind` rose by one (and no other), and the log line."""
    fake = h.FakeBackend(scripted(special))
    try:
        proxy = ops.start_proxy(proxy_factory, fake.port)
        before = anomalies(ops.scrape(proxy))
        mark = proxy.log.mark()
        with h.TLSClient(proxy.port, ctx) as c:
            h.login(c)
            _, t = c.command("S1", "SELECT INBOX")
            assert t.startswith(b"S1 OK"), t
            c.write(command)
            got = b""
            deadline = time.monotonic() + 5
            while not got.endswith(b"T1 OK done\r\n") and time.monotonic() < deadline:
                got += c.read_exact(1)
            assert got == expect
            _, t = c.command("N1", "NOOP")
            assert t == b"N1 OK done\r\n", t
        want = dict(before)
        want[kind] += 1
        ops.wait_metrics(proxy, lambda m: anomalies(m) == want, what="anomaly %s" % kind)
        if log_pattern:
            proxy.log.wait_for(log_pattern, since=mark, timeout=3)
        assert not fake.errors, fake.errors
    finally:
        fake.stop()


def test_unknown_tag(proxy_factory, ctx):
    stray = b"ZZ9 OK nobody asked\r\nT1 OK done\r\n"

    def special(tag, name, line):
        return stray if tag == b"T1" else None

    run_case(proxy_factory, ctx, special, b"T1 NOOP\r\n", stray, "unknown_tag",
             r"tagged response for no command in flight")


def test_bare_continuation(proxy_factory, ctx):
    reply = b"+\r\nT1 OK done\r\n"

    def special(tag, name, line):
        return reply if tag == b"T1" else None

    run_case(proxy_factory, ctx, special, b"T1 NOOP\r\n", reply, "bare_continuation", None)


def test_fetch_literal_oversize(proxy_factory, ctx):
    body = bytes(range(0x41, 0x41 + 25)) * 2
    reply = b"* 1 FETCH (BODY[]<0> {50}\r\n" + body + b")\r\nT1 OK done\r\n"

    def special(tag, name, line):
        return reply if tag == b"T1" else None

    run_case(proxy_factory, ctx, special, b"T1 FETCH 1 BODY[]<0.10>\r\n", reply,
             "fetch_literal_oversize", r"FETCH literal larger than the partial range")


def test_client_literal_stall(proxy_factory, emulator, ctx):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra={"imap": {"literal_stall": "500ms"}})
    before = anomalies(ops.scrape(proxy))
    mark = proxy.log.mark()
    body = (b"Subject: stall\r\n\r\n" + b"x" * 100)[:98] + b"\r\n"
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
        c.write(b"A APPEND INBOX {100}\r\n")
        cont = c.read_line()
        assert cont.startswith(b"+"), cont
        c.write(body[:10])
        m = proxy.log.wait_for(r"client literal stalled .*announced=100 received=10\b",
                               since=mark, timeout=5)
        assert m
        want = dict(before)
        want["client_literal_stall"] += 1
        ops.wait_metrics(proxy, lambda m: anomalies(m) == want, what="literal stall counted")
        # The stream is untouched: the rest of the literal completes it.
        c.write(body[10:] + b"\r\n")
        _, t = c.read_until_tagged("A")
        assert re.match(rb"A OK \[APPENDUID \d+ \d+\]", t), t
    assert emulator.log.find(r"\bappend-stored INBOX \d+ 100\b")
