"""[backend] with several servers: failover on a refused or timed-out
connect, passive health (down_after failures in a row mark a server down;
it is tried last for retry_after, then it is back on the first success),
round robin, and all of it in the logs, in /metrics and in /readyz. The
tests kill a backend and start it again on the same port."""

import os
import re
import shutil
import socket
import subprocess

import pytest

import imapfront_harness as h
import ops_support as ops


def test_failover_marked_down_and_back(backends, proxy_factory, ctx):
    a, b = backends(), backends()
    A, B = ops.addr(a.port), ops.addr(b.port)
    proxy = ops.start_proxy(proxy_factory, a.port, extra={"backend": {
        "servers": "%s, %s" % (A, B), "balance": "first", "down_after": "2",
        "retry_after": "1500ms", "connect_timeout": "2s"}})
    assert ops.session_backend(proxy, ctx) == A

    a.kill()
    mark = proxy.log.mark()
    assert ops.session_backend(proxy, ctx) == B  # A refused once: failed over
    assert proxy.log.find(r"\bwarn backend: connect failed .*backend=%s" % A, mark)
    assert not proxy.log.find(r"server marked down", mark)
    assert ops.session_backend(proxy, ctx) == B  # twice: marked down
    proxy.log.wait_for(r"\bwarn backend: server marked down backend=%s failures=2$" % A,
                       since=mark, timeout=5)
    m = ops.scrape(proxy)
    assert m.value("imapfront_backend_up", server=A) == 0
    assert m.value("imapfront_backend_up", server=B) == 1
    assert m.value("imapfront_backend_connects_total", server=A, result="failed") == 2
    assert ops.http_get(proxy.admin, "/readyz").status == 200  # B is up

    # While down, A is not tried first: no new failure is counted.
    assert ops.session_backend(proxy, ctx) == B
    m = ops.scrape(proxy)
    assert m.value("imapfront_backend_connects_total", server=A, result="failed") == 2
    assert m.value("imapfront_backend_connects_total", server=B, result="ok") == 3

    a.start()  # same port, same store
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_up", server=A) == 1,
                     timeout=10, what="retry_after to pass")
    mark = proxy.log.mark()
    assert ops.session_backend(proxy, ctx) == A
    assert proxy.log.find(r"\binfo backend: server is back backend=%s$" % A, mark)
    m = ops.scrape(proxy)
    assert m.value("imapfront_backend_connects_total", server=A, result="ok") == 2


def test_every_server_down_bye_last_one_fails_open(backends, proxy_factory, ctx):
    """Both ports closed: the client gets its BYE at once (refusals are not
    retried). The first server is marked down; the second, the last one up,
    is not: passive health never empties the pool (fail open), so /readyz
    stays 200 and the server is still tried first."""
    ports = [h.free_port(), h.free_port()]
    servers = [ops.addr(p) for p in ports]
    proxy = ops.start_proxy(proxy_factory, ports[0], extra={"backend": {
        "servers": ", ".join(servers), "down_after": "1", "retry_after": "60s"}})
    assert ops.http_get(proxy.admin, "/readyz").status == 200
    mark = proxy.log.mark()
    with h.TLSClient(proxy.port, ctx) as c:
        line = c.read_line(timeout=10)
        assert line == b"* BYE [UNAVAILABLE] Backend server unavailable\r\n", line
        c.expect_eof()
    proxy.log.wait_for(r"\bserver marked down backend=%s failures=1$" % servers[0], since=mark,
                       timeout=5)
    proxy.log.wait_for(r"\bwarn backend: server failing, but it is the last one up: still tried "
                       r"backend=%s failures=1$" % servers[1], since=mark, timeout=5)
    assert not proxy.log.find(r"server marked down backend=%s" % servers[1], mark)
    assert ops.http_get(proxy.admin, "/readyz").status == 200
    assert ops.http_get(proxy.admin, "/healthz").status == 200
    m = ops.scrape(proxy)
    assert m.value("imapfront_backend_up", server=servers[0]) == 0
    assert m.value("imapfront_backend_up", server=servers[1]) == 1
    # Closes are counted when the session is freed, just after the client's
    # EOF: poll (bounded) rather than read once.
    h.wait_until(lambda: ops.scrape(proxy).value("imapfront_session_closes_total",
                                                 reason="backend-unavailable") == 1,
                 5, "the backend-unavailable close counted")

    # The server that failed open comes back: it serves at once.
    e = backends(port=ports[1])
    mark = proxy.log.mark()
    assert ops.session_backend(proxy, ctx) == servers[1]
    assert proxy.log.find(r"\binfo backend: server is back backend=%s$" % servers[1], mark)
    assert ops.http_get(proxy.admin, "/readyz").status == 200
    assert e.opens_since(0) == 1


def test_roundrobin_alternates(backends, proxy_factory, ctx):
    a, b = backends(), backends()
    proxy = proxy_factory(a.port, extra={"backend": {
        "servers": "%s, %s" % (ops.addr(a.port), ops.addr(b.port)), "balance": "roundrobin"}})
    seen = [ops.session_backend(proxy, ctx) for _ in range(6)]
    assert all(x != y for x, y in zip(seen, seen[1:])), seen
    assert a.opens_since(0) == 3 and b.opens_since(0) == 3, (a.opens_since(0), b.opens_since(0))


def test_roundrobin_skips_a_dead_server(backends, proxy_factory, ctx):
    a, b = backends(), backends()
    proxy = ops.start_proxy(proxy_factory, a.port, extra={"backend": {
        "servers": "%s, %s" % (ops.addr(a.port), ops.addr(b.port)), "balance": "roundrobin",
        "down_after": "1", "retry_after": "60s"}})
    a.kill()
    seen = [ops.session_backend(proxy, ctx) for _ in range(4)]
    assert seen == [ops.addr(b.port)] * 4, seen
    m = ops.scrape(proxy)
    # Marked down at the first failure, then never tried first again.
    assert m.value("imapfront_backend_connects_total", server=ops.addr(a.port), result="failed") == 1


def test_connect_timeout_fails_over(backends, proxy_factory, ctx):
    """A server that never answers the SYN: a listener whose accept queue
    is full (the kernel drops further SYNs)."""
    b = backends()
    stuck = socket.socket()
    fillers = []
    try:
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(0)
        port = stuck.getsockname()[1]
        # Fill the accept queue (backlog 0 still queues one connection).
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
            fillers.append(f)
        proxy = ops.start_proxy(proxy_factory, b.port, extra={"backend": {
            "servers": "%s, %s" % (ops.addr(port), ops.addr(b.port)), "connect_timeout": "300ms"}})
        mark = proxy.log.mark()
        assert ops.session_backend(proxy, ctx) == ops.addr(b.port)
        assert proxy.log.find(r"\bwarn backend: connect failed .*backend=%s" % ops.addr(port), mark)
        m = ops.scrape(proxy)
        assert m.value("imapfront_backend_connects_total", server=ops.addr(port), result="failed") \
            == 1
    finally:
        for f in fillers:
            f.close()
        stuck.close()


def open_fds(pid):
    return [int(n) for n in os.listdir("/proc/%d/fd" % pid)]


def set_nofile(pid, n):
    """Sets the soft limit only (raising a hard one may need a capability)."""
    subprocess.run(["prlimit", "--pid", str(pid), "--nofile=%d:" % n], check=True)


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) not found")
def test_out_of_descriptors_is_not_a_backend_failure(backends, proxy_factory, ctx):
    """A backend connect that fails because the proxy has no descriptor
    left (EMFILE) is the proxy's exhaustion: the client gets a BYE that
    says so, the server is not marked down (down_after = 1), and once
    descriptors are back the next client is served by that server."""
    a = backends()
    A = ops.addr(a.port)
    proxy = ops.start_proxy(proxy_factory, a.port, extra={"backend": {"down_after": "1"}})
    assert ops.session_backend(proxy, ctx) == A
    pid = proxy.proc.pid
    with open("/proc/%d/limits" % pid) as f:
        soft = int(next(l for l in f if l.startswith("Max open files")).split()[3])
    mark = proxy.log.mark()
    held, bye = [], None
    try:
        # Room for one more descriptor: the next accept takes it and the
        # backend connect finds none. Holes below the highest descriptor
        # serve whole sessions first; a client whose accept itself failed
        # (libuv closes it) gets one more descriptor of room.
        limit = max(open_fds(pid)) + 2
        set_nofile(pid, limit)
        for _ in range(12):
            c = h.TLSClient(proxy.port, ctx, handshake=False)
            held.append(c)
            try:
                c.handshake(timeout=3)
                line = c.read_line(timeout=3)
            except (OSError, h.HarnessError, TimeoutError) as e:
                line = repr(e).encode()
            if b"Proxy out of resources" in line:
                bye = line
                break
            if not line.startswith(b"* OK"):
                limit += 1
                set_nofile(pid, limit)
    finally:
        set_nofile(pid, soft)
        for c in held:
            c.close()
    assert bye is not None and bye.startswith(b"* BYE [UNAVAILABLE]"), bye
    assert proxy.log.find(r"warn backend: no resources to connect \(not the server's fault\)"
                          r" .*backend=%s" % re.escape(A), mark)
    assert not proxy.log.find(r"server marked down", mark)
    m = ops.scrape(proxy)
    assert m.value("imapfront_backend_up", server=A) == 1
    assert ops.session_backend(proxy, ctx) == A
