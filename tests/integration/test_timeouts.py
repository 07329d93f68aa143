"""Timeouts: preauth_timeout cuts a session that does not log in,
idle_timeout one that logged in and went quiet, each with `* BYE` first and
a close reason in the log; never before the configured time. Only the
client's traffic counts: an IDLE session lives until idle_timeout even when
the backend keeps pushing updates, and a client that keeps talking is
never cut. Short configured values (1 s / 2 s) keep this quick."""

import socket
import time

import pytest

import imapfront_harness as h
from dovecot import PlainClient, TLSOver, starttls_proxy

PREAUTH = 1.0
IDLE = 2.0
# The proxy's clock has millisecond steps; a timer may fire up to a step
# before a wall-clock measurement that started a hair after its own.
CLOCK_STEP = 0.01
# How late a BYE may come: generous, for a loaded 2-core CI machine.
SLACK = 3.0

TIMEOUTS = {"imap": {"preauth_timeout": "%dms" % (PREAUTH * 1000),
                     "idle_timeout": "%ds" % IDLE}}


@pytest.fixture
def tproxy(proxy_factory, emulator):
    return proxy_factory(emulator.plain_port, extra=TIMEOUTS)


def wait_bye(c, t0, limit):
    """Reads lines until `* BYE` (bounded); returns (line, elapsed since t0,
    lines before it)."""
    before = []
    deadline = t0 + limit + SLACK
    while True:
        line = c.read_line(timeout=max(deadline - time.monotonic(), 0.001))
        if line.startswith(b"* BYE"):
            return line, time.monotonic() - t0, before
        before.append(line)


def closed_reason(proxy, port, mark):
    m = proxy.log.wait_for(r"session: closed .*client=127\.0\.0\.1:%d\b.*reason=(\S+)" % port,
                           since=mark, timeout=5)
    return m.group(1)


def test_preauth_timeout_bye_then_close(tproxy, ctx):
    mark = tproxy.log.mark()
    t0 = time.monotonic()
    with TLSOver.connect(tproxy.port, ctx) as c:
        port = c.sock.getsockname()[1]
        assert c.read_line().startswith(b"* OK")
        line, elapsed, before = wait_bye(c, t0, PREAUTH)
        assert line.startswith(b"* BYE Autologout"), line
        assert before == [], before
        assert elapsed >= PREAUTH - CLOCK_STEP, elapsed
        how, rest = c.expect_eof()
        assert how == "close_notify" and rest == b"", (how, rest)
    assert closed_reason(tproxy, port, mark) == "preauth-timeout"


def test_preauth_timeout_before_starttls(proxy_factory, emulator):
    proxy, port = starttls_proxy(proxy_factory, emulator.plain_port, extra=TIMEOUTS)
    mark = proxy.log.mark()
    t0 = time.monotonic()
    with PlainClient(port) as c:
        local = c.sock.getsockname()[1]
        assert c.read_line().startswith(b"* OK")
        line, elapsed, _ = wait_bye(c, t0, PREAUTH)
        assert line.startswith(b"* BYE Autologout"), line
        assert elapsed >= PREAUTH - CLOCK_STEP, elapsed
        assert c.expect_eof() == b""
    assert closed_reason(proxy, local, mark) == "preauth-timeout"


def test_preauth_is_a_deadline(tproxy, ctx):
    """preauth_timeout counts from connect: NOOPs every 0.4 s do not extend
    it (a trickling client cannot hold its backend connection)."""
    mark = tproxy.log.mark()
    with TLSOver.connect(tproxy.port, ctx) as c:
        c.read_line()
        t0 = time.monotonic()
        bye = None
        for i in range(int(4 * PREAUTH / 0.4) + 1):
            c.write(b"N%d NOOP\r\n" % i)
            line = line_within(c, 0.4)
            while line is not None and not line.startswith(b"* BYE"):
                line = line_within(c, 0.4)
            if line is not None:
                bye = line
                break
        took = time.monotonic() - t0
        assert bye is not None and b"no login in time" in bye, bye
        assert took < PREAUTH + 1.5, "the BYE came %.1fs after connect" % took
    tproxy.log.wait_for(r"reason=preauth-timeout", since=mark)


def test_idle_timeout_after_login(tproxy, ctx):
    """After login the longer idle_timeout applies, not preauth_timeout."""
    mark = tproxy.log.mark()
    with TLSOver.connect(tproxy.port, ctx) as c:
        port = c.sock.getsockname()[1]
        c.read_line()
        t0 = time.monotonic()
        _, tagged = c.command("L", "LOGIN demo demo")
        assert tagged.startswith(b"L OK"), tagged
        line, elapsed, before = wait_bye(c, t0, IDLE)
        assert line.startswith(b"* BYE Autologout"), line
        assert elapsed >= IDLE - CLOCK_STEP, elapsed
        how, _ = c.expect_eof()
        assert how == "close_notify", how
    assert closed_reason(tproxy, port, mark) == "idle-timeout"


def test_idle_command_held_until_idle_timeout(tproxy, ctx):
    mark = tproxy.log.mark()
    with TLSOver.connect(tproxy.port, ctx) as c:
        port = c.sock.getsockname()[1]
        h.login(c)
        _, tagged = c.command("S", "SELECT INBOX")
        assert tagged.startswith(b"S OK"), tagged
        t0 = time.monotonic()
        c.write(b"I IDLE\r\n")
        assert c.read_line().startswith(b"+"), "no continuation for IDLE"
        line, elapsed, before = wait_bye(c, t0, IDLE)
        assert line.startswith(b"* BYE Autologout"), line
        assert elapsed >= IDLE - CLOCK_STEP, elapsed
    assert closed_reason(tproxy, port, mark) == "idle-timeout"


def test_backend_traffic_does_not_keep_idle_session(tproxy, emulator, ctx):
    """While the client sits in IDLE, another connection appends messages
    every 0.5 s; the IDLE client is told (EXISTS) but says nothing, so it
    is cut at idle_timeout all the same."""
    with TLSOver.connect(tproxy.port, ctx) as c:
        h.login(c)
        c.command("S", "SELECT INBOX")
        t0 = time.monotonic()
        c.write(b"I IDLE\r\n")
        assert c.read_line().startswith(b"+")
        with socket.create_connection(("127.0.0.1", emulator.plain_port), timeout=10) as other:
            h.recv_line(other)
            other.sendall(b"a LOGIN demo demo\r\n")
            assert h.recv_line(other).startswith(b"a OK")
            pushed = 0
            line = None
            for i in range(int((IDLE + SLACK) / 0.5)):
                tick = time.monotonic() + 0.5
                msg = b"Subject: push %d\r\n\r\nx\r\n" % i
                other.sendall(b"p%d APPEND INBOX {%d+}\r\n" % (i, len(msg)) + msg + b"\r\n")
                while not h.recv_line(other).startswith(b"p%d " % i):
                    pass
                # Whatever the IDLE client gets until the next tick.
                line = None
                while time.monotonic() < tick:
                    line = line_within(c, tick - time.monotonic())
                    if line is None or line.startswith(b"* BYE"):
                        break
                    assert line.startswith(b"* "), line
                    pushed += 1
                if line is not None and line.startswith(b"* BYE"):
                    break
            elapsed = time.monotonic() - t0
        assert line is not None and line.startswith(b"* BYE Autologout"), line
        assert pushed >= 2, "the backend's updates never reached the client"
        assert IDLE - CLOCK_STEP <= elapsed <= IDLE + SLACK, elapsed


def test_client_keepalive_survives(tproxy, ctx):
    """NOOP every 0.5 s for twice idle_timeout: never cut."""
    with TLSOver.connect(tproxy.port, ctx) as c:
        h.login(c)
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 2 * IDLE:
            _, tagged = c.command("N%d" % i, "NOOP")
            assert tagged.startswith(b"N%d OK" % i), tagged
            i += 1
            line = line_within(c, 0.5)
            assert line is None, line
        _, tagged = c.command("Z", "LOGOUT")
        assert tagged.startswith(b"Z OK"), tagged


def line_within(c, seconds):
    """The next complete line the server sends within `seconds`, or None
    (a bounded wait that also proves silence: a BYE would show up here)."""
    try:
        return c.read_line(timeout=seconds)
    except socket.timeout:
        return None



def test_idle_timeout_shorter_than_preauth(proxy_factory, emulator, ctx):
    proxy = proxy_factory(emulator.plain_port,
                          extra={"imap": {"preauth_timeout": "6s", "idle_timeout": "1s"}})
    with TLSOver.connect(proxy.port, ctx) as c:
        c.read_line()
        t0 = time.monotonic()
        _, tagged = c.command("L", "LOGIN demo demo")
        assert tagged.startswith(b"L OK"), tagged
        line, elapsed, _ = wait_bye(c, t0, 1.0)
        assert line.startswith(b"* BYE Autologout"), line
        assert 1.0 - CLOCK_STEP <= elapsed <= 1.0 + SLACK, elapsed
