"""The admin endpoint under abuse: [admin] allow_from disconnects other
clients (and says so in the log, at most once a second), a non-loopback
address without allow_from is warned about, and a flood of sockets that
send half a request and wait cannot stop /healthz from answering: one
thread polls them all, max_connections bounds them and timeout closes
them."""

import socket
import subprocess
import time

import pytest

import imapfront_harness as h
import ops_support as ops

HALF = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # no blank line: never complete


def timed_healthz(port, timeout=5.0):
    start = time.monotonic()
    reply = ops.http_get(port, "/healthz", timeout=timeout)
    return reply, time.monotonic() - start


class Flood:
    """n sockets to port that each sent HALF and wait."""

    def __init__(self, port, n):
        self.socks = []
        try:
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(HALF)
                self.socks.append(s)
        except BaseException:
            self.close()
            raise

    def closed_by_server(self):
        """How many of the sockets the server has closed (EOF or reset)."""
        n = 0
        for s in self.socks:
            s.setblocking(False)
            try:
                n += s.recv(4096) == b""
            except BlockingIOError:
                pass
            except ConnectionResetError:
                n += 1
        return n

    def close(self):
        for s in self.socks:
            s.close()


def test_allow_from_refuses_others_and_reload_changes_it(emulator, proxy_factory):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra={"admin": {"allow_from": "::1, 10.0.0.0/8"}})
    mark = proxy.log.mark()
    for path in ("/healthz", "/metrics"):
        reply = ops.http_get(proxy.admin, path)
        assert reply.status is None and reply.closed, vars(reply)
    line = proxy.log.wait_for(r"\bwarn admin: connection refused client=127\.0\.0\.1:\d+ "
                              r"reason=\"not in \[admin\] allow_from\"", since=mark, timeout=5)
    assert line
    # Rate-limited: a burst of refusals is not a burst of lines.
    for _ in range(20):
        ops.http_get(proxy.admin, "/healthz")
    assert len(proxy.log.find(r"\bwarn admin: connection refused", mark)) <= 3

    ops.rewrite_ini(proxy, {"admin": {"allow_from": "127.0.0.1/32"}})
    ops.sighup(proxy, ops.RELOADED)
    assert ops.http_get(proxy.admin, "/healthz").status == 200


def test_non_loopback_without_allow_from_is_warned(emulator, proxy_factory, need_bin):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port)
    assert not proxy.log.find(r"\bwarn admin:")  # loopback: fine as it is
    # `-t` reads the file without binding anything: the warning shows there.
    for allow, warned in (("", True), ("10.0.0.0/8", False)):
        ops.rewrite_ini(proxy, {"admin": {"address": "192.0.2.1:9100", "allow_from": allow}})
        r = subprocess.run([h.BIN, "-t", "-c", proxy.ini], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        said = "[admin] address 192.0.2.1:9100 is not a loopback address and allow_from is empty"
        assert (said in r.stderr) == warned, r.stderr


def test_healthz_answers_under_a_slow_request_flood(emulator, proxy_factory):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port)
    flood = Flood(proxy.admin, 200)
    try:
        for _ in range(3):
            reply, took = timed_healthz(proxy.admin)
            assert reply.status == 200, vars(reply)
            assert took < 1.0, took
        assert flood.closed_by_server() == 0  # they were all still held
    finally:
        flood.close()


def test_limit_and_timeout_free_the_slots(emulator, proxy_factory):
    """With every slot taken a new request waits in the listen queue (the
    limit holds); the timeout closes the half-sent requests and the
    waiting one is answered then."""
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra={"admin": {"max_connections": "20", "timeout": "2s"}})
    flood = Flood(proxy.admin, 20)
    try:
        reply, took = timed_healthz(proxy.admin, timeout=6.0)
        assert reply.status == 200, vars(reply)
        assert 1.5 <= took < 4.0, took  # held back until the timeout freed slots
        h.wait_until(lambda: flood.closed_by_server() == 20, 2.0, "20 half-sent requests closed")
        reply, took = timed_healthz(proxy.admin)
        assert reply.status == 200 and took < 1.0, (vars(reply), took)
    finally:
        flood.close()
