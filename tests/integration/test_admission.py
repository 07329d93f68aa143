"""Admission control ([backend] max_sessions, max_connecting, queue_timeout,
connect_rate): a slow backend gets a queue, not a storm; a client waits
(TLS up, no backend socket) and is served, or told the server is busy; a
slow server is never marked down for being slow; a closed port still is.

The slow backend is the emulator with a tiny listen queue and an accept
loop at a fixed rate: further SYNs wait for retransmission, as they do in
front of an overloaded legacy server."""

import os
import signal
import threading
import time

import pytest

import imapfront_harness as h
import ops_support as ops
from dovecot import dovecot_factory  # noqa: F401

def start_proxy(proxy_factory, port, extra=None):
    """ops.start_proxy with the login throttle off for 127.0.0.0/8: these
    bursts are one user's many logins at once, which the throttle bounds
    (32 in progress); admission, not the throttle, is under test here."""
    return ops.start_proxy(proxy_factory, port, extra=ops.merge(
        {"login": {"trusted_networks": "127.0.0.0/8"}}, extra))


BUSY = b"* BYE [UNAVAILABLE] Backend server busy, try again later\r\n"
SHUTDOWN = b"* BYE [UNAVAILABLE] Server shutting down\r\n"


def burst(port, ctx, n, timeout):
    """n clients at once, each: greeting, LOGIN, LOGOUT. Returns the list of
    outcomes ("ok" or the first line / error seen) and the seconds the
    slowest one took to get its greeting."""
    results = [None] * n
    waits = [0.0] * n
    go = threading.Event()

    def one(i):
        go.wait(10)
        t0 = time.monotonic()
        try:
            with h.TLSClient(port, ctx, timeout=timeout) as c:
                line = c.read_line(timeout=timeout)
                waits[i] = time.monotonic() - t0
                if not line.startswith(b"* OK"):
                    results[i] = line
                    return
                _, tagged = c.command("L", "LOGIN demo demo", timeout=timeout)
                c.command("Z", "LOGOUT", timeout=timeout)
                results[i] = "ok" if tagged.startswith(b"L OK") else tagged
        except Exception as e:  # reported in the assertion below
            results[i] = repr(e)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(timeout + 30)
    return results, max(waits)


def held_session(proxy, ctx):
    """A logged-in client holding one backend connection."""
    c = h.TLSClient(proxy.port, ctx)
    h.login(c)
    return c


def queued_client(proxy, ctx, server, n):
    """A client whose TLS is up and that waits in the queue (the n-th)."""
    c = h.TLSClient(proxy.port, ctx)
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_queue_length", server=server) == n,
                     timeout=5, what="%d sessions queued" % n)
    return c


def test_burst_against_slow_backend_all_log_in(backends, proxy_factory, ctx):
    """300 clients at once against a server that accepts 60 a second with a
    listen queue of 2: with max_connecting = 2 every one logs in, none is
    refused, the server stays up, and the queue shows in /metrics."""
    b = backends(flags=["--listen-backlog", "2", "--accept-rate", "60"])
    S = ops.addr(b.port)
    proxy = start_proxy(proxy_factory, b.port, extra={"backend": {
        "max_connecting": "2", "queue_timeout": "60s", "connect_timeout": "3s",
        "connect_rate": "0"}})
    mark = proxy.log.mark()
    results, slowest = burst(proxy.port, ctx, 300, timeout=60)
    bad = [r for r in results if r != "ok"]
    assert not bad, (len(bad), bad[:5])
    assert slowest < 60
    assert not proxy.log.find(r"server marked down|connect failed|Backend server", mark)
    m = ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_sessions", server=S) == 0,
                         timeout=10, what="backend connections closed")
    assert m.value("imapfront_backend_up", server=S) == 1
    assert m.value("imapfront_backend_queue_length", server=S) == 0
    assert m.value("imapfront_backend_connecting", server=S) == 0
    assert m.value("imapfront_backend_queue_waits_total", server=S) > 100
    assert m.value("imapfront_backend_queue_wait_seconds_total", server=S) > 0
    assert m.value("imapfront_backend_queue_timeouts_total", server=S) == 0
    assert m.value("imapfront_backend_connects_total", server=S, result="ok") == 300


def test_timeouts_are_retried_and_never_an_outage(backends, proxy_factory, ctx):
    """No admission limit and a connect_timeout shorter than the server's
    accept delay: connects time out, are retried until queue_timeout, and
    every client logs in; the only server, slow but completing connects, is
    never marked down (down_after = 1)."""
    b = backends(flags=["--listen-backlog", "1", "--accept-rate", "8"])
    S = ops.addr(b.port)
    proxy = start_proxy(proxy_factory, b.port, extra={"backend": {
        "max_connecting": "0", "connect_timeout": "300ms", "down_after": "1",
        "queue_timeout": "40s", "connect_rate": "0"}})
    mark = proxy.log.mark()
    results, _ = burst(proxy.port, ctx, 30, timeout=45)
    bad = [r for r in results if r != "ok"]
    assert not bad, (len(bad), bad[:5])
    assert proxy.log.find(r"connect failed .*reason=\"?connect timeout", mark)
    assert not proxy.log.find(r"server marked down", mark)
    m = ops.scrape(proxy)
    assert m.value("imapfront_backend_up", server=S) == 1
    assert m.value("imapfront_backend_connects_total", server=S, result="failed") > 0


def test_closed_port_is_marked_down_quickly(backends, proxy_factory, ctx):
    """A refused connect is not retried: with one port closed and one
    server up, the closed one is marked down at its first refusal and the
    client is served by the other at once."""
    closed = h.free_port()
    b = backends()
    C, B = ops.addr(closed), ops.addr(b.port)
    proxy = start_proxy(proxy_factory, b.port, extra={"backend": {
        "servers": "%s, %s" % (C, B), "down_after": "1", "retry_after": "60s"}})
    mark = proxy.log.mark()
    t0 = time.monotonic()
    assert ops.session_backend(proxy, ctx) == B
    assert time.monotonic() - t0 < 3
    proxy.log.wait_for(r"server marked down backend=%s failures=1$" % C, since=mark, timeout=5)
    assert ops.scrape(proxy).value("imapfront_backend_up", server=C) == 0


def test_only_server_closed_bye_at_once(proxy_factory, ctx):
    """The only server's port is closed: the client is told it is
    unavailable at once, not after queue_timeout."""
    closed = h.free_port()
    proxy = start_proxy(proxy_factory, closed, extra={"backend": {"queue_timeout": "30s"}})
    t0 = time.monotonic()
    with h.TLSClient(proxy.port, ctx) as c:
        assert c.read_line(timeout=10) == b"* BYE [UNAVAILABLE] Backend server unavailable\r\n"
    assert time.monotonic() - t0 < 3


def test_queue_fifo_timeout_and_metrics(backends, proxy_factory, ctx):
    """max_sessions = 1: the second and third clients wait; when the first
    leaves, the oldest waiter gets its greeting; one left waiting past
    queue_timeout is told the server is busy (close reason backend-busy)."""
    b = backends()
    S = ops.addr(b.port)
    proxy = start_proxy(proxy_factory, b.port, extra={"backend": {
        "max_sessions": "1", "queue_timeout": "3s"}})
    first = held_session(proxy, ctx)
    second = queued_client(proxy, ctx, S, 1)
    third = queued_client(proxy, ctx, S, 2)
    assert b.opens_since(0) == 1  # the waiting ones hold no backend connection
    first.command("Z", "LOGOUT")
    first.close()
    assert second.read_line(timeout=5).startswith(b"* OK")
    assert second.command("L", "LOGIN demo demo")[1].startswith(b"L OK")
    # third is still waiting: queue_timeout (from its first try) ends it.
    assert third.read_line(timeout=10) == BUSY
    third.expect_eof()
    second.close()
    m = ops.wait_metrics(
        proxy, lambda m: m.value("imapfront_session_closes_total", reason="backend-busy") == 1,
        timeout=5, what="the backend-busy close counted")
    assert m.value("imapfront_backend_queue_timeouts_total", server=S) == 1
    assert m.value("imapfront_backend_queue_waits_total", server=S) == 1
    assert m.value("imapfront_backend_queue_length", server=S) == 0
    assert proxy.log.find(r"warn backend: gave up waiting for a busy backend .*backend=%s" % S)


def test_queued_sessions_answered_at_drain(backends, proxy_factory, ctx):
    """SIGTERM: the sessions waiting for a slot get their BYE at once."""
    b = backends()
    S = ops.addr(b.port)
    proxy = start_proxy(proxy_factory, b.port, extra={"backend": {
        "max_sessions": "1", "queue_timeout": "60s"}, "proxy": {"drain_timeout": "30s"}})
    first = held_session(proxy, ctx)
    waiting = [queued_client(proxy, ctx, S, n + 1) for n in range(3)]
    t0 = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    for c in waiting:
        assert c.read_line(timeout=5) == SHUTDOWN
        c.expect_eof()
    assert time.monotonic() - t0 < 5
    assert first.read_line(timeout=5) == SHUTDOWN  # idle, so at once too
    first.close()


def test_reload_keeps_the_queue_under_new_limits(backends, proxy_factory, ctx):
    """SIGHUP keeps waiting sessions; a higher max_sessions admits them."""
    b = backends()
    S = ops.addr(b.port)
    proxy = start_proxy(proxy_factory, b.port, extra={"backend": {
        "max_sessions": "1", "queue_timeout": "60s"}})
    first = held_session(proxy, ctx)
    waiting = [queued_client(proxy, ctx, S, n + 1) for n in range(2)]
    ops.rewrite_ini(proxy, {"backend": {"max_sessions": "3"}})
    ops.sighup(proxy, ops.RELOADED)
    for c in waiting:
        assert c.read_line(timeout=5).startswith(b"* OK")
        assert c.command("L", "LOGIN demo demo")[1].startswith(b"L OK")
        c.close()
    first.close()


@pytest.mark.skipif(bool(os.environ.get("IMAPFRONT_SANITIZED")),
                    reason="the sanitizers' redzones and quarantine inflate RSS")
def test_waiting_session_costs_little_memory(backends, proxy_factory, ctx):
    """200 clients waiting with TLS up: the proxy's RSS grows by a bounded
    amount per waiting session (measured and printed)."""
    b = backends()
    S = ops.addr(b.port)
    proxy = start_proxy(proxy_factory, b.port, extra={"backend": {
        "max_sessions": "1", "queue_timeout": "60s"}})
    first = held_session(proxy, ctx)
    # Warm up the allocator with a few waiting sessions first.
    warm = [queued_client(proxy, ctx, S, n + 1) for n in range(5)]
    before = proxy.rss_kib()
    n = 200
    clients = []
    try:
        for i in range(n):
            clients.append(h.TLSClient(proxy.port, ctx))
        ops.wait_metrics(proxy,
                         lambda m: m.value("imapfront_backend_queue_length", server=S) == n + 5,
                         timeout=20, what="%d sessions queued" % (n + 5))
        per = (proxy.rss_kib() - before) / n
        print("RSS per waiting session: %.1f KiB" % per)
        assert per < 48, per
        assert b.opens_since(0) == 1
    finally:
        for c in clients + warm:
            c.close()
        first.close()


def test_connect_rate_spreads_a_restart_storm(backends, proxy_factory, ctx):
    """connect_rate = 5: right after the start a burst of 100 clients gets a
    first bucket of 5 connects, then 5 a second, doubling every second (a
    slow start): all log in, spread over seconds, but far sooner than the
    19 s that 5 a second would take, and the warm-up is over at the end."""
    b = backends()
    S = ops.addr(b.port)
    proxy = start_proxy(proxy_factory, b.port, extra={"backend": {
        "connect_rate": "5", "queue_timeout": "30s"}})
    t0 = time.monotonic()
    results, slowest = burst(proxy.port, ctx, 100, timeout=30)
    assert results == ["ok"] * 100, results
    # 5, then 10, 20, 40 and 80 connects a second: the 100th at about 4 s.
    assert slowest >= 2.5, slowest
    assert slowest < 12, slowest
    assert time.monotonic() - t0 < 25
    m = ops.scrape(proxy)
    assert m.value("imapfront_backend_queue_waits_total", server=S) >= 50
    # Over once the bucket is full again, and at the latest 6 s after the start.
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_warming", server=S) == 0,
                     timeout=max(1.0, 8 - (time.monotonic() - t0)), what="the warm-up over")


def test_dovecot_burst_with_default_limits(dovecot_factory, proxy_factory, ctx):  # noqa: F811
    """A real Dovecot, the [backend] admission keys at their defaults
    (max_connecting = 16): 200 clients at once all log in, none is refused
    or waits past queue_timeout, some waited in the queue (a connect slot
    is held until Dovecot's greeting), and the server stays up."""
    d = dovecot_factory()
    S = ops.addr(d.port)
    proxy = start_proxy(proxy_factory, d.port)
    mark = proxy.log.mark()
    results, _ = burst(proxy.port, ctx, 200, timeout=60)
    bad = [r for r in results if r != "ok"]
    assert not bad, (len(bad), bad[:5])
    assert not proxy.log.find(r"connect failed|server marked down|server failing", mark)
    m = ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_sessions", server=S) == 0,
                         timeout=10, what="backend connections closed")
    assert m.value("imapfront_backend_queue_waits_total", server=S) > 0
    assert m.value("imapfront_backend_queue_timeouts_total", server=S) == 0
    assert m.value("imapfront_backend_connects_total", server=S, result="ok") == 200
    assert m.value("imapfront_backend_up", server=S) == 1
