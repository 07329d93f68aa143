"""TLS termination: versions (1.2 minimum by default), ALPN, the handshake
timeout, and failed handshakes logged with a reason and counted."""

import re
import socket
import ssl
import time

import pytest

import imapfront_harness as h


def can_speak_tls11(cert):
    """Whether this machine's OpenSSL can still negotiate TLS 1.1 at all
    (a client and a server in memory, both limited to 1.1)."""
    try:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(cert[0], cert[1])
        server.set_ciphers("DEFAULT:@SECLEVEL=0")
        server.minimum_version = server.maximum_version = ssl.TLSVersion.TLSv1_1
        client = h.client_context(cert[0], minimum=ssl.TLSVersion.TLSv1_1,
                                  maximum=ssl.TLSVersion.TLSv1_1, seclevel0=True)
    except (ssl.SSLError, ValueError):
        return False
    cin, cout, sin, sout = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(cin, cout)
    s = server.wrap_bio(sin, sout, server_side=True)
    for _ in range(10):
        done = 0
        for obj in (c, s):
            try:
                obj.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return False
        sin.write(cout.read())
        cin.write(sout.read())
        if done == 2:
            return c.version() == "TLSv1.1"
    return False


def greeting_over(proxy, context):
    with h.TLSClient(proxy.port, context) as c:
        line = c.read_line()
        return c.version, c.alpn, line


# TLS 1.1 is what this test is about; Python's deprecation notice is noise.
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1:DeprecationWarning")
def test_tls11_client_refused_logged_and_counted(proxy, cert):
    if not can_speak_tls11(cert):
        pytest.skip("the local OpenSSL cannot offer TLS 1.1")
    before = proxy.stats()
    mark = proxy.log.mark()
    ctx11 = h.client_context(cert[0], minimum=ssl.TLSVersion.TLSv1_1,
                             maximum=ssl.TLSVersion.TLSv1_1, seclevel0=True)
    with pytest.raises((ssl.SSLError, h.Closed, ConnectionError)):
        with h.TLSClient(proxy.port, ctx11) as c:
            c.read_line(timeout=5)
    m = proxy.log.wait_for(r"\btls: handshake failed\b(.*)$", since=mark, timeout=5)
    kv = h.parse_kv(m.group(1))
    assert kv.get("reason"), m.group(0)
    assert kv.get("client", "").startswith("127.0.0.1:"), m.group(0)
    after = proxy.wait_stats(
        lambda s: s.get("handshakes_failed", 0) >= before.get("handshakes_failed", 0) + 1,
        what="handshakes_failed to grow")
    assert after["handshakes_ok"] == before["handshakes_ok"], (before, after)


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls12_and_13_accepted(proxy, cert, version):
    v = getattr(ssl.TLSVersion, version)
    before = proxy.stats()
    got, _, line = greeting_over(proxy, h.client_context(cert[0], minimum=v, maximum=v))
    assert got == version.replace("_", "."), got
    assert line.startswith(b"* OK"), line
    proxy.wait_stats(lambda s: s["handshakes_ok"] >= before["handshakes_ok"] + 1,
                     what="handshakes_ok to grow")


def test_alpn_imap_selected(proxy, cert):
    _, alpn, line = greeting_over(proxy, h.client_context(cert[0], alpn=["imap"]))
    assert alpn == "imap"
    assert line.startswith(b"* OK"), line


def test_silent_client_closed_after_handshake_timeout(proxy_factory, emulator):
    proxy = proxy_factory(emulator.plain_port, extra={"tls": {"handshake_timeout": "1s"}})
    mark = proxy.log.mark()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        t0 = time.monotonic()
        try:
            data = s.recv(4096)
        except ConnectionResetError:
            data = b""
        elapsed = time.monotonic() - t0
    assert data == b"", data
    assert 0.8 <= elapsed < 5, elapsed
    proxy.log.wait_for(r"handshake-timeout", since=mark, timeout=5)


def test_garbage_instead_of_client_hello(proxy):
    before = proxy.stats()
    mark = proxy.log.mark()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"A1 LOGIN demo demo\r\n" + bytes(range(256)) * 4)
        got = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
    # Whatever came back is at most a TLS alert record, never IMAP.
    assert not re.search(rb"\* OK|\* BYE", got), got
    m = proxy.log.wait_for(r"\btls: handshake failed\b(.*)$", since=mark, timeout=5)
    assert h.parse_kv(m.group(1)).get("reason"), m.group(0)
    proxy.wait_stats(lambda s: s["handshakes_failed"] >= before["handshakes_failed"] + 1,
                     what="handshakes_failed to grow")
