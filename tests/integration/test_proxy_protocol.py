"""PROXY protocol v1 and v2 on a listener, accepted only from the peers in
proxy_protocol_from. Headers are built by hand. The real client address
must show in the session log line, in the ID the backend gets
(forward_client_ip = id) and in the per-IP limit (test_limits.py); bad,
truncated or late headers and untrusted peers are refused and logged."""

import socket

import pytest

import imapfront_harness as h
import ops_support as ops
from dovecot import TLSOver

TRUSTED = "127.0.0.0/8, ::1"


def pp_proxy(proxy_factory, emulator, version="any", trusted=TRUSTED, extra=None):
    return ops.start_proxy(proxy_factory, emulator.plain_port, extra=ops.merge({
        "listen.imaps": {"proxy_protocol": version, "proxy_protocol_from": trusted},
        "backend": {"forward_client_ip": "id"}}, extra))


def logged_session(proxy, emulator, header, ctx, one_packet=False):
    """A session behind header: LOGIN, LOGOUT. Returns (summary line
    key/values, the emulator's ID key/values for that connection)."""
    pmark, emark = proxy.log.mark(), emulator.log.mark()
    if one_packet:
        # The header and the ClientHello in one segment, as balancers send.
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        c = TLSOver(sock, ctx, handshake=False)
        try:
            c.obj.do_handshake()
        except Exception:
            pass
        sock.sendall(header + c.outgoing.read())
        c.handshake()
    else:
        c = ops.tls_after(proxy.port, header, ctx)
    with c:
        local_port = c.sock.getsockname()[1]
        h.login(c)
        c.command("Z", "LOGOUT")
        c.expect_eof()
    m = proxy.log.wait_for(r"\bsession: closed (.*)$", since=pmark, timeout=5)
    ids = emulator.log.find(r"\bconn \d+ id (x-originating.*)$", emark)
    assert len(ids) == 1, ids
    return h.parse_kv(m.group(1)), h.parse_kv(ids[0].group(1)), local_port


CASES = {
    "v1-tcp4": ("v1", lambda: ops.pp_v1("203.0.113.7", 40001), "203.0.113.7", 40001),
    "v1-tcp6": ("v1", lambda: ops.pp_v1("2001:db8::7", 40002, dst="2001:db8::1"),
                "2001:db8::7", 40002),
    "v2-tcp4": ("v2", lambda: ops.pp_v2("198.51.100.9", 40003), "198.51.100.9", 40003),
    "v2-tcp6": ("v2", lambda: ops.pp_v2("2001:db8::9", 40004, dst="2001:db8::1"),
                "2001:db8::9", 40004),
    # A TLV (PP2_TYPE_AUTHORITY "mail.example") is skipped.
    "v2-tlv": ("v2", lambda: ops.pp_v2("198.51.100.10", 40005,
                                       tlvs=b"\x02\x00\x0cmail.example"),
               "198.51.100.10", 40005),
    "any-v1": ("any", lambda: ops.pp_v1("192.0.2.44", 40006), "192.0.2.44", 40006),
    "any-v2": ("any", lambda: ops.pp_v2("192.0.2.45", 40007), "192.0.2.45", 40007),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_real_client_address_used(emulator, proxy_factory, ctx, case):
    version, header, ip, port = CASES[case]
    proxy = pp_proxy(proxy_factory, emulator, version)
    summary, ident, _ = logged_session(proxy, emulator, header(), ctx,
                                       one_packet=case.endswith("tcp4"))
    shown = "[%s]:%d" % (ip, port) if ":" in ip else "%s:%d" % (ip, port)
    assert summary["client"] == shown, summary
    assert summary["reason"] == "logout", summary
    assert ident == {"x-originating-ip": ip, "x-originating-port": str(port)}, ident


@pytest.mark.parametrize("kind", ["v2-local", "v1-unknown"])
def test_local_and_unknown_keep_the_peer_address(emulator, proxy_factory, ctx, kind):
    """A balancer's own health check (v2 LOCAL, v1 UNKNOWN): the
    connection's addresses stand."""
    proxy = pp_proxy(proxy_factory, emulator)
    header = ops.pp_v2_local() if kind == "v2-local" else b"PROXY UNKNOWN\r\n"
    summary, ident, local_port = logged_session(proxy, emulator, header, ctx)
    assert summary["client"] == "127.0.0.1:%d" % local_port, summary
    assert ident == {"x-originating-ip": "127.0.0.1",
                     "x-originating-port": str(local_port)}, ident


BAD = {
    "v1-bad-address": ("any", b"PROXY TCP4 203.0.113.300 127.0.0.1 1 2\r\n", "bad address"),
    "v1-bad-port": ("any", b"PROXY TCP4 203.0.113.3 127.0.0.1 99999 2\r\n", "bad port"),
    "v1-unknown-protocol": ("any", b"PROXY UDP4 203.0.113.3 127.0.0.1 1 2\r\n",
                            "unknown protocol"),
    "v1-missing-fields": ("any", b"PROXY TCP4 203.0.113.3\r\n", "missing fields"),
    "v1-bare-lf": ("any", b"PROXY TCP4 203.0.113.3 127.0.0.1 1 2\n", "CRLF"),
    "v1-too-long": ("any", b"PROXY TCP4 " + b"1" * 120 + b"\r\n", "too long"),
    "v2-version-3": ("any", ops.V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,
                     "unsupported version"),
    "v2-udp": ("any", ops.V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\x01" * 12,
               "not a TCP connection"),
    "v2-short-addresses": ("any", ops.V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x01" * 4,
                           "truncated"),
    "v2-on-v1-listener": ("v1", ops.pp_v2("203.0.113.3", 1), "no PROXY protocol header"),
    "v1-on-v2-listener": ("v2", ops.pp_v1("203.0.113.3", 1), "no PROXY protocol header"),
    "no-header": ("any", b"\x16\x03\x01\x00\xa0\x01\x00\x00\x9c\x03\x03" + b"\x00" * 40,
                  "no PROXY protocol header"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_malformed_header_refused(emulator, proxy_factory, kind):
    version, header, reason = BAD[kind]
    proxy = pp_proxy(proxy_factory, emulator, version)
    mark, emark = proxy.log.mark(), emulator.log.mark()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(header)
        got = ops.wait_closed(s, timeout=5)
    assert got == b"", got  # not a byte of TLS or IMAP
    m = proxy.log.wait_for(r"\bwarn session: PROXY header refused client=127\.0\.0\.1:\d+ "
                           r"reason=(.*)$", since=mark, timeout=5)
    assert reason in m.group(1), m.group(0)
    assert ops.closes(proxy, mark) == ["proxy-protocol"]
    m = ops.scrape(proxy)
    assert m.value("imapfront_session_closes_total", reason="proxy-protocol") == 1
    assert m.value("imapfront_backend_connects_total",
                   server="127.0.0.1:%d" % emulator.plain_port, result="ok") == 0
    assert not emulator.conns_since(emark)


def test_truncated_header_then_close(emulator, proxy_factory):
    proxy = pp_proxy(proxy_factory, emulator)
    mark = proxy.log.mark()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"PROXY TCP4 203.0.113.3 127.0")
        s.shutdown(socket.SHUT_WR)
        assert ops.wait_closed(s, timeout=5) == b""
    # The header was cut short: that is a PROXY protocol failure, logged as
    # such, and the address it did not finish sending is not used.
    proxy.log.wait_for(r"PROXY header refused .*reason=\"truncated", since=mark, timeout=5)
    summary = proxy.log.wait_for(r"\bsession: closed (.*)$", since=mark, timeout=5)
    kv = h.parse_kv(summary.group(1))
    assert kv["reason"] == "proxy-protocol", kv
    assert kv["client"].startswith("127.0.0.1:"), kv
    assert kv["backend"] == "-", kv


@pytest.mark.parametrize("partial", [b"", b"PROXY TCP4 203.0.113.3", ops.V2_SIGNATURE[:8],
                                     ops.pp_v2("203.0.113.3", 5)[:20]])
def test_header_timeout(emulator, proxy_factory, partial):
    proxy = pp_proxy(proxy_factory, emulator, extra={"tls": {"handshake_timeout": "400ms"}})
    mark = proxy.log.mark()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(partial)
        assert ops.wait_closed(s, timeout=5) == b""
    proxy.log.wait_for(r"\bPROXY header refused client=127\.0\.0\.1:\d+ reason=timeout$",
                       since=mark, timeout=5)
    assert ops.closes(proxy, mark) == ["proxy-protocol"]


def test_untrusted_peer_refused(emulator, proxy_factory, ctx):
    proxy = pp_proxy(proxy_factory, emulator, trusted="192.0.2.0/24, 2001:db8::/32")
    mark = proxy.log.mark()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(ops.pp_v1("203.0.113.3", 1))
        assert ops.wait_closed(s, timeout=5) == b""
    proxy.log.wait_for(r'\bwarn session: PROXY header refused client=127\.0\.0\.1:\d+ '
                       r'reason="peer not in proxy_protocol_from"$', since=mark, timeout=5)
    # Even a client that sends no header (plain TLS) gets nothing.
    with pytest.raises((h.Closed, ConnectionResetError, OSError)):
        with h.TLSClient(proxy.port, ctx, timeout=5) as c:
            c.read_line()
    assert not emulator.conns_since(0)


def test_plain_listener_beside_a_proxied_one(emulator, proxy_factory, ctx):
    """proxy_protocol is per listener: a second one without it takes TLS
    directly, and its clients are who they are."""
    proxy = pp_proxy(proxy_factory, emulator, extra={
        "listen.direct": {"address": "127.0.0.1:0", "mode": "implicit-tls"}})
    port = ops.listener_port(proxy, "direct")
    mark = proxy.log.mark()
    with h.TLSClient(port, ctx) as c:
        local = c.sock.getsockname()[1]
        h.login(c)
    kv = proxy.log.wait_for(r"\bsession: closed (.*)$", since=mark, timeout=5)
    assert h.parse_kv(kv.group(1))["client"] == "127.0.0.1:%d" % local
