"""Backend servers written as host names ([backend] servers =
localhost:PORT): resolved on every connect, each address tried in order; a
name that does not resolve is a failed connect of that server (log line
"cannot resolve NAME: reason"), the session fails over to the next server
or gets the usual BYE; health checks resolve too; -t says when a name does
not resolve now."""

import socket
import subprocess
import time

import pytest

import imapfront_harness as h
import ops_support as ops

BAD = "nonexistent.invalid:143"


def _fails_fast():
    """Whether the machine's resolver says at once that the name does not
    exist. In a root with no reachable DNS server, glibc waits out its
    timeouts (5 s and more) first: the tests of an unresolvable name then
    measure the resolver, not the proxy."""
    t0 = time.monotonic()
    try:
        socket.getaddrinfo("nonexistent.invalid", 143)
    except socket.gaierror:
        pass
    return time.monotonic() - t0 < 1.0


need_fast_nxdomain = pytest.mark.skipif(not _fails_fast(),
                                        reason="the resolver takes over a second to fail a name")


def test_name_resolves_and_relays(backends, proxy_factory, ctx):
    a = backends()
    name = "localhost:%d" % a.port
    proxy = ops.start_proxy(proxy_factory, a.port, extra={"backend": {"servers": name}})
    # Logs and metrics name the server as written.
    assert ops.session_backend(proxy, ctx) == name
    m = ops.scrape(proxy)
    assert m.value("imapfront_backend_connects_total", server=name, result="ok") == 1


@need_fast_nxdomain
def test_unresolvable_name_fails_over(backends, proxy_factory, ctx):
    a = backends()
    A = ops.addr(a.port)
    proxy = ops.start_proxy(proxy_factory, a.port, extra={"backend": {
        "servers": "%s, %s" % (BAD, A), "balance": "first", "down_after": "5"}})
    mark = proxy.log.mark()
    assert ops.session_backend(proxy, ctx) == A
    assert proxy.log.find(r"\bwarn backend: connect failed .*backend=%s "
                          r"reason=\"cannot resolve nonexistent\.invalid: [^\"]+\"" % BAD, mark)
    m = ops.scrape(proxy)
    assert m.value("imapfront_backend_connects_total", server=BAD, result="failed") == 1


@need_fast_nxdomain
def test_unresolvable_only_server_bye(backends, proxy_factory, ctx):
    a = backends()  # only for the proxy fixture; not in servers
    proxy = ops.start_proxy(proxy_factory, a.port, extra={"backend": {"servers": BAD}})
    mark = proxy.log.mark()
    with h.TLSClient(proxy.port, ctx) as c:
        line = c.read_line(timeout=10)
        assert line == b"* BYE [UNAVAILABLE] Backend server unavailable\r\n", line
        c.expect_eof()
    proxy.log.wait_for(r"\bcannot resolve nonexistent\.invalid: ", since=mark, timeout=5)


@need_fast_nxdomain
def test_health_check_resolves(backends, proxy_factory, ctx):
    a = backends()
    name = "localhost:%d" % a.port
    proxy = ops.start_proxy(proxy_factory, a.port, extra={"backend": {
        "servers": "%s, %s" % (BAD, name), "check": "banner", "check_interval": "200ms",
        "check_timeout": "2s", "down_after": "1"}})
    proxy.log.wait_for(r"\bwarn backend: server failed its check, out of rotation "
                       r"backend=%s step=connect reason=\"cannot resolve nonexistent\.invalid: "
                       % BAD, timeout=10, alive=proxy.check_alive)
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_checks_total", server=name,
                                              result="ok") >= 1,
                     timeout=10, what="a passing check of the named server")
    assert ops.session_backend(proxy, ctx) == name


@need_fast_nxdomain
def test_check_config_warns_unresolvable(need_bin, cert, tmp_path):
    path = tmp_path / "p.ini"
    path.write_text(h.render_ini({
        "listen.imaps": {"address": "127.0.0.1:0"},
        "tls": {"certificate": cert[0], "private_key": cert[1]},
        "backend": {"servers": "%s, localhost:143" % BAD},
    }))
    r = subprocess.run([h.BIN, "-t", "-c", str(path)], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "[backend] servers: cannot resolve nonexistent.invalid now" in r.stderr
    assert "localhost" not in r.stderr
