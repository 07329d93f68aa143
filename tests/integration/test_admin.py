"""The admin endpoint ([admin] address): /metrics in the Prometheus text
exposition format with values that move as sessions come and go, /healthz,
/readyz, and what happens to anything else (404, 405, malformed or
oversized requests: a 4xx and the connection closed)."""

import shutil
import signal
import socket
import ssl
import subprocess

import pytest

import imapfront_harness as h
import ops_support as ops

# Every family the endpoint promises, with its type.
FAMILIES = {
    "imapfront_sessions_active": "gauge",
    "imapfront_sessions_total": "counter",
    "imapfront_client_bytes_received_total": "counter",
    "imapfront_client_bytes_sent_total": "counter",
    "imapfront_connections_refused_total": "counter",
    "imapfront_tls_handshakes_total": "counter",
    "imapfront_tls_handshake_failures_total": "counter",
    "imapfront_tls_sessions_total": "counter",
    "imapfront_backend_connects_total": "counter",
    "imapfront_backend_up": "gauge",
    "imapfront_chain_bytes": "gauge",
    "imapfront_chain_links": "gauge",
    "imapfront_shield_commands_held_total": "counter",
    "imapfront_shield_literals_converted_total": "counter",
    "imapfront_shield_crlf_splits_total": "counter",
    "imapfront_session_closes_total": "counter",
    "imapfront_workers": "gauge",
    "imapfront_draining": "gauge",
}
FAILURE_REASONS = {"timeout", "client_closed", "no_alpn", "protocol_version", "no_shared_cipher",
                   "not_tls", "other"}


def short_session(port, ctx):
    """LOGIN, NOOP, LOGOUT; returns (plaintext bytes sent, bytes received,
    TLS version, cipher)."""
    sent = 0
    received = b""
    with h.TLSClient(port, ctx) as c:
        received += c.read_line()
        for tag, cmd in (("L", "LOGIN demo demo"), ("N", "NOOP"), ("Z", "LOGOUT")):
            line = ("%s %s\r\n" % (tag, cmd)).encode()
            sent += len(line)
            c.write(line)
            untagged, tagged = c.read_until_tagged(tag)
            received += b"".join(untagged) + tagged
        _, rest = c.expect_eof()
        received += rest
        return sent, len(received), c.version, c.cipher[0]


def test_metrics_format_is_valid(emulator, proxy_factory, ctx):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port)
    short_session(proxy.port, ctx)
    m = ops.scrape(proxy)  # the parser raises on any format error
    for name, kind in FAMILIES.items():
        assert m.types.get(name) == kind, (name, m.types.get(name))
        assert name in m.samples, "no samples of %s" % name
    assert {d["reason"] for d in m.labelsets("imapfront_tls_handshake_failures_total")} \
        == FAILURE_REASONS
    assert {d["listener"] for d in m.labelsets("imapfront_sessions_total")} == {"imaps"}
    assert m.value("imapfront_workers") == 1
    assert m.value("imapfront_draining") == 0
    # Every close reason is listed, also those still at zero.
    reasons = {d["reason"] for d in m.labelsets("imapfront_session_closes_total")}
    assert {"logout", "client-eof", "backend-unavailable", "handshake-failed", "shutdown",
            "refused", "proxy-protocol"} <= reasons, reasons


def test_promtool_accepts_the_metrics(emulator, proxy_factory, ctx):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus); the parser in "
                    "test_metrics_format_is_valid checks the format")
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port)
    short_session(proxy.port, ctx)
    text = ops.scrape(proxy).text
    r = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    assert r.returncode == 0, r.stdout.decode()


def test_metrics_move_with_a_session(emulator, proxy_factory, ctx):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port)
    before = ops.scrape(proxy)
    backend = "127.0.0.1:%d" % emulator.plain_port

    # While a session is open it is active.
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
        during = ops.wait_metrics(
            proxy, lambda m: m.value("imapfront_sessions_active", listener="imaps") == 1)
        assert during.value("imapfront_chain_links") >= 0
    sent, received, version, cipher = short_session(proxy.port, ctx)
    after = ops.wait_metrics(
        proxy, lambda m: m.value("imapfront_sessions_active", listener="imaps") == 0
        and m.value("imapfront_session_closes_total", reason="client-eof") == 1)

    def delta(name, **labels):
        return after.value(name, **labels) - before.get(name, 0, **labels)

    assert delta("imapfront_sessions_total", listener="imaps") == 2
    assert delta("imapfront_tls_handshakes_total") == 2
    assert delta("imapfront_backend_connects_total", server=backend, result="ok") == 2
    assert delta("imapfront_backend_connects_total", server=backend, result="failed") == 0
    assert after.value("imapfront_backend_up", server=backend) == 1
    assert delta("imapfront_session_closes_total", reason="logout") == 1
    assert delta("imapfront_tls_sessions_total", version=version, cipher=cipher) == 2
    # The first session: greeting + LOGIN's tagged OK; sent "L1 LOGIN demo demo\r\n".
    first_sent = len(b"L1 LOGIN demo demo\r\n")
    assert delta("imapfront_client_bytes_received_total") == sent + first_sent
    assert delta("imapfront_client_bytes_sent_total") >= received
    # Nothing is left in the buffers once every session has ended.
    assert after.value("imapfront_chain_bytes") == 0
    assert after.value("imapfront_chain_links") == 0


def handshake_then_close(port, ctx, timeout=10.0):
    """A TLS handshake that the server is expected to fail."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=None) as s:
                s.recv(1)
        except (ssl.SSLError, OSError):
            return
    return


def failure_counts(proxy):
    m = ops.scrape(proxy)
    return {r: m.value("imapfront_tls_handshake_failures_total", reason=r)
            for r in FAILURE_REASONS}


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@pytest.mark.parametrize("kind", ["not_tls", "client_closed", "no_shared_cipher",
                                  "protocol_version", "timeout"])
def test_handshake_failures_by_reason(emulator, proxy_factory, cert, kind):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra={"tls": {"handshake_timeout": "500ms"}})
    before = failure_counts(proxy)
    closes_before = ops.scrape(proxy)
    if kind == "not_tls":
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.sendall(b"a LOGIN demo demo\r\n")
            ops.wait_closed(s)
    elif kind == "client_closed":
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        s.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        s.close()
    elif kind == "no_shared_cipher":
        # The server's key is ECDSA; offer only RSA key exchange.
        ctx = h.client_context(cert[0], maximum=ssl.TLSVersion.TLSv1_2)
        ctx.set_ciphers("AES128-SHA")
        handshake_then_close(proxy.port, ctx)
    elif kind == "protocol_version":
        ctx = h.client_context(cert[0], minimum=ssl.TLSVersion.TLSv1,
                               maximum=ssl.TLSVersion.TLSv1_1, seclevel0=True)
        handshake_then_close(proxy.port, ctx)
    elif kind == "timeout":
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            ops.wait_closed(s, timeout=5)
    reason = "handshake-timeout" if kind == "timeout" else "handshake-failed"
    after = ops.wait_metrics(
        proxy, lambda m: m.value("imapfront_tls_handshake_failures_total", reason=kind)
        == before[kind] + 1 and m.value("imapfront_session_closes_total", reason=reason)
        == closes_before.value("imapfront_session_closes_total", reason=reason) + 1,
        what="failure counted under " + kind)
    # No other bucket moved.
    for r in FAILURE_REASONS - {kind}:
        assert after.value("imapfront_tls_handshake_failures_total", reason=r) == before[r], r
    assert after.value("imapfront_tls_handshakes_total") == \
        closes_before.value("imapfront_tls_handshakes_total")


def test_backend_failures_counted_per_server(emulator, proxy_factory, ctx):
    dead = "127.0.0.1:%d" % h.free_port()
    alive = "127.0.0.1:%d" % emulator.plain_port
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra={"backend": {"servers": "%s, %s" % (dead, alive)}})
    mark = proxy.log.mark()
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
    m = ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_connects_total",
                                                  server=alive, result="ok") == 1)
    assert m.value("imapfront_backend_connects_total", server=dead, result="failed") == 1
    assert m.value("imapfront_backend_connects_total", server=dead, result="ok") == 0
    assert m.value("imapfront_backend_connects_total", server=alive, result="failed") == 0
    # One failure is below down_after (3): still counted as up.
    assert m.value("imapfront_backend_up", server=dead) == 1
    line = proxy.log.wait_for(r"\bsession: closed (.*)$", since=mark, timeout=5)
    assert h.parse_kv(line.group(1))["backend"] == alive
    assert proxy.log.find(r"warn backend: connect failed .*backend=%s" % dead, mark)


def test_health_and_ready(emulator, proxy_factory):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port)
    r = ops.http_get(proxy.admin, "/healthz")
    assert (r.status, r.body) == (200, b"ok\n"), (r.status, r.body)
    r = ops.http_get(proxy.admin, "/readyz")
    assert (r.status, r.body) == (200, b"ready\n"), (r.status, r.body)
    # HEAD is GET without a body.
    r = ops.http_get(proxy.admin, "/healthz", method="HEAD")
    assert r.status == 200 and r.body == b"", (r.status, r.body)


@pytest.mark.parametrize("path", ["/", "/metric", "/metrics/", "/healthz?probe=1", "/nope"])
def test_unknown_paths_404(emulator, proxy_factory, path):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port)
    r = ops.http_get(proxy.admin, path)
    if path.startswith("/healthz?"):
        # The query string is not part of the path: still the health check.
        assert r.status == 200, r.status
    else:
        assert r.status == 404, (path, r.status)
    assert r.closed


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_405(emulator, proxy_factory, method):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port)
    r = ops.http_get(proxy.admin, "/metrics", method=method)
    assert r.status == 405, (method, r.status)
    assert r.closed


BAD_REQUESTS = {
    "garbage": b"GARBAGE\r\n\r\n",
    "no-version": b"GET /metrics\r\n\r\n",
    "bad-header": b"GET /metrics HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    "bad-content-length": b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "long-uri": b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "big-headers": b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                   + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"v" * 1000) for i in range(40)) + b"\r\n",
}


@pytest.mark.parametrize("kind", sorted(BAD_REQUESTS))
def test_malformed_or_oversized_requests_4xx_and_closed(emulator, proxy_factory, kind):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port)
    r = ops.http_raw(proxy.admin, BAD_REQUESTS[kind])
    if kind == "garbage":
        # Not even a request line: libmicrohttpd closes without an answer.
        assert r.status in (None, 400), r.status
    else:
        assert r.status is not None and 400 <= r.status < 500, (kind, r.status, r.body[:200])
    if kind == "long-uri":
        assert r.status in (414, 431), r.status
    if kind == "big-headers":
        assert r.status == 431, r.status
    assert r.closed, kind
    # The endpoint serves the next request as usual.
    assert ops.http_get(proxy.admin, "/healthz").status == 200


def test_readyz_503_and_draining_gauge_during_shutdown(emulator, proxy_factory, ctx):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra={"proxy": {"drain_timeout": "30s"}})
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
        # A command in progress keeps the process draining.
        c.write(b"A APPEND INBOX {100}\r\n")
        assert c.read_line().startswith(b"+")
        c.write(b"x" * 10)
        mark = proxy.log.mark()
        proxy.proc.send_signal(signal.SIGTERM)
        proxy.log.wait_for(r"main: Terminated: draining", since=mark, timeout=5)
        r = ops.http_get(proxy.admin, "/readyz")
        assert r.status == 503, r.status
        assert ops.http_get(proxy.admin, "/healthz").status == 200
        assert ops.scrape(proxy).value("imapfront_draining") == 1
        proxy.proc.send_signal(signal.SIGTERM)  # stop now
        assert ops.wait_exit(proxy, 5) == 0


def test_shield_counters_move(emulator, proxy_factory, ctx):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra={"backend": {"quirks": "exchange55"}})
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
        # Two commands in one record: the second waits for the first.
        c.write(b"a NOOP\r\nb NOOP\r\n")
        for tag in ("a", "b"):
            _, tagged = c.read_until_tagged(tag)
            assert tagged.startswith(tag.encode() + b" OK"), tagged
        # A non-synchronising literal goes to the backend as {N}, its end
        # written apart from the CRLF.
        tagged = h.append(c, "P", h.message_body(500, seed=1), sync=False)
        assert tagged.startswith(b"P OK"), tagged
    m = ops.wait_metrics(proxy, lambda m: m.value("imapfront_sessions_active",
                                                  listener="imaps") == 0)
    assert m.value("imapfront_shield_commands_held_total") >= 1
    assert m.value("imapfront_shield_literals_converted_total") == 1
    assert m.value("imapfront_shield_crlf_splits_total") >= 1
