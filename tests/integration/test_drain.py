"""SIGTERM/SIGINT: the listeners close, quiet sessions get
`* BYE [UNAVAILABLE] Server shutting down` at once, a command in progress
(an APPEND in the middle of its literal) finishes first and is stored,
drain_timeout cuts what is still busy, a second signal stops at once, and
the process exits 0."""

import signal
import socket
import time

import imapfront_harness as h
import ops_support as ops

BYE = b"* BYE [UNAVAILABLE] Server shutting down\r\n"
DRAINING = r"\binfo main: (Terminated|Interrupt): draining"


def logged_in(port, ctx, tag="L1"):
    c = h.TLSClient(port, ctx)
    h.login(c, tag=tag)
    return c


def start_append(c, body, half):
    """APPEND with a synchronising literal; sends the first `half` octets."""
    c.write(b"A APPEND INBOX {%d}\r\n" % len(body))
    cont = c.read_line()
    assert cont.startswith(b"+"), cont
    c.write(body[:half])


def listener_refuses(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def test_append_in_flight_completes_and_is_stored(emulator, proxy_factory, ctx):
    proxy = proxy_factory(emulator.plain_port, extra={"proxy": {"drain_timeout": "30s"}})
    body = h.message_body(20000, seed=7)
    emark = emulator.log.mark()
    busy = logged_in(proxy.port, ctx)
    quiet = logged_in(proxy.port, ctx, tag="Q1")
    try:
        start_append(busy, body, len(body) // 2)
        mark = proxy.log.mark()
        t0 = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        proxy.log.wait_for(DRAINING, since=mark, timeout=5)
        # The quiet session is told at once and closed.
        how, got = quiet.expect_eof(timeout=5)
        assert got == BYE, got
        bye_after = time.monotonic() - t0
        # Nobody new gets in.
        h.wait_until(lambda: listener_refuses(proxy.port), 5, "the listener to close")
        # The busy one finishes its command after the signal.
        busy.write(body[len(body) // 2:] + b"\r\n")
        _, tagged = busy.read_until_tagged("A")
        assert tagged.startswith(b"A OK"), tagged
        how, got = busy.expect_eof(timeout=5)
        assert got == BYE, got
        assert ops.wait_exit(proxy, 10) == 0
        total = time.monotonic() - t0
    finally:
        busy.close()
        quiet.close()
    assert proxy.log.find(r"\binfo main: stopped$")
    assert ops.closes(proxy, mark, 2) == ["shutdown", "shutdown"]
    m = emulator.log.wait_for(r"\bconn \d+ append-stored INBOX (\d+) (\d+)$", since=emark,
                              timeout=5)
    assert int(m.group(2)) == len(body)
    print("quiet session BYE after %.3fs, exit after %.3fs" % (bye_after, total))
    # Read it back through a new proxy on the same store.
    again = proxy_factory(emulator.plain_port)
    with h.TLSClient(again.port, ctx) as c:
        h.login(c)
        assert h.fetch_appended(c, tagged) == body


def test_quiet_sessions_get_bye_at_once(emulator, proxy_factory, ctx):
    proxy = proxy_factory(emulator.plain_port, extra={"proxy": {"drain_timeout": "30s"}})
    authenticated = logged_in(proxy.port, ctx)
    idling = logged_in(proxy.port, ctx)
    fresh = h.TLSClient(proxy.port, ctx)  # greeted, not logged in
    try:
        idling.write(b"I IDLE\r\n")
        assert idling.read_line().startswith(b"+")
        assert fresh.read_line().startswith(b"* OK")
        t0 = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        for c in (authenticated, idling, fresh):
            how, got = c.expect_eof(timeout=5)
            assert got == BYE, got
            assert how == "close_notify", how
        assert ops.wait_exit(proxy, 5) == 0
        elapsed = time.monotonic() - t0
    finally:
        for c in (authenticated, idling, fresh):
            c.close()
    # Far below drain_timeout: nothing waited for it.
    assert elapsed < 5, elapsed
    print("three quiet sessions closed and process exited %.3fs after SIGTERM" % elapsed)


def test_drain_timeout_cuts_a_stuck_session(emulator, proxy_factory, ctx):
    proxy = proxy_factory(emulator.plain_port, extra={"proxy": {"drain_timeout": "1s"}})
    emark = emulator.log.mark()
    c = logged_in(proxy.port, ctx)
    try:
        start_append(c, b"x" * 1000, 10)  # and then nothing more
        mark = proxy.log.mark()
        t0 = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        how, got = c.expect_eof(timeout=10)
        waited = time.monotonic() - t0
        assert got == BYE, got
    finally:
        c.close()
    assert ops.wait_exit(proxy, 5) == 0
    assert 0.9 <= waited < 5, waited
    assert proxy.log.find(r"\bdrain_timeout passed, closing the remaining sessions", mark)
    assert ops.closes(proxy, mark) == ["shutdown"]
    # The half message never reached the store; the backend was closed.
    emulator.log.wait_for(r"\bconn \d+ close\b", since=emark, timeout=5)
    assert not emulator.log.find(r"append-stored", emark)
    print("stuck session cut %.3fs after SIGTERM (drain_timeout = 1s)" % waited)


def test_second_signal_stops_at_once(emulator, proxy_factory, ctx):
    proxy = proxy_factory(emulator.plain_port, extra={"proxy": {"drain_timeout": "60s"}})
    c = logged_in(proxy.port, ctx)
    try:
        start_append(c, b"y" * 1000, 10)
        mark = proxy.log.mark()
        proxy.proc.send_signal(signal.SIGTERM)
        proxy.log.wait_for(DRAINING, since=mark, timeout=5)
        t0 = time.monotonic()
        proxy.proc.send_signal(signal.SIGINT)
        how, got = c.expect_eof(timeout=5)
        assert got == BYE, got
        assert ops.wait_exit(proxy, 5) == 0
        assert time.monotonic() - t0 < 3
    finally:
        c.close()
    assert proxy.log.find(r"\binfo main: Interrupt: stopping now", mark)
    assert proxy.log.find(r"\binfo main: stopped$", mark)
