"""Session lifecycle: LOGOUT, backend unreachable, backend EOF, client EOF
in the middle of a literal, the per-session summary log line, and counters
back at zero once every session has ended."""

import re

import imapfront_harness as h


def test_logout_bye_ok_close_notify_then_close(proxy, ctx):
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
        untagged, tagged = c.command("Z", "LOGOUT")
        assert any(l.startswith(b"* BYE") for l in untagged), untagged
        assert tagged.startswith(b"Z OK"), tagged
        how, rest = c.expect_eof(timeout=5)
        assert rest == b""
        assert how == "close_notify", "TLS ended without close_notify"
        assert c.wait_tcp_eof(timeout=5)


def test_session_summary_line(emulator, proxy, ctx):
    mark = proxy.log.mark()
    with h.TLSClient(proxy.port, ctx) as c:
        local = "127.0.0.1:%d" % c.sock.getsockname()[1]
        sent = received = 0
        received += len(c.read_line())
        for tag, cmd in (("L", "LOGIN demo demo"), ("N", "NOOP"), ("Z", "LOGOUT")):
            line = ("%s %s\r\n" % (tag, cmd)).encode()
            sent += len(line)
            c.write(line)
            untagged, tagged = c.read_until_tagged(tag)
            received += sum(len(x) for x in untagged) + len(tagged)
        version, cipher = c.version, c.cipher[0]
        c.expect_eof()
    m = proxy.log.wait_for(r"\bsession: closed (.*client=%s\b.*)$" % re.escape(local), since=mark, timeout=5)
    kv = h.parse_kv(m.group(1))
    assert kv.get("reason") == "logout", kv
    assert kv.get("tls") == version, kv
    assert kv.get("cipher") == cipher, kv
    assert kv.get("backend") == "127.0.0.1:%d" % emulator.plain_port, kv
    assert int(kv["bytes_in"]) >= sent, kv
    assert int(kv["bytes_out"]) >= received, kv
    assert int(kv["duration_ms"]) >= 0, kv


def test_backend_unreachable_bye_unavailable(proxy_factory, ctx):
    port = h.free_port()  # nothing listens there
    proxy = proxy_factory(port, extra={"backend": {"connect_timeout": "2s"}})
    mark = proxy.log.mark()
    with h.TLSClient(proxy.port, ctx) as c:
        line = c.read_line(timeout=10)
        assert line.startswith(b"* BYE [UNAVAILABLE]"), line
        how, rest = c.expect_eof(timeout=5)
        assert rest == b""
    proxy.log.wait_for(r"session: closed .*reason=backend-unavailable", since=mark, timeout=5)


def test_backend_eof_client_gets_bytes_then_close(proxy_factory, ctx):
    def backend(conn):
        conn.sendall(b"* OK fake server ready\r\n")
        line = h.recv_line(conn)
        tag = line.split(b" ", 1)[0]
        conn.sendall(b"* 1 EXISTS\r\n" + tag + b" OK done, and goodbye\r\n")
        conn.close()

    fake = h.FakeBackend(backend)
    try:
        proxy = proxy_factory(fake.port)
        mark = proxy.log.mark()
        with h.TLSClient(proxy.port, ctx) as c:
            assert c.read_line() == b"* OK fake server ready\r\n"
            untagged, tagged = c.command("a", "NOOP")
            assert untagged == [b"* 1 EXISTS\r\n"]
            assert tagged == b"a OK done, and goodbye\r\n"
            how, rest = c.expect_eof(timeout=5)
            assert rest == b""
        proxy.log.wait_for(r"session: closed .*reason=backend-eof", since=mark, timeout=5)
        assert not fake.errors, fake.errors
    finally:
        fake.stop()


def test_client_eof_mid_literal_closes_backend_at_once(emulator, proxy, ctx):
    mark = emulator.log.mark()
    c = h.TLSClient(proxy.port, ctx)
    try:
        h.login(c)
        c.write(b"A APPEND INBOX {1000}\r\n")
        assert c.read_line().startswith(b"+")
        c.write(b"0123456789")
    finally:
        c.close()
    conns = emulator.conns_since(mark)
    assert len(conns) == 1, conns
    n = conns[0]
    emulator.log.wait_for(r"\bconn %d close client-eof\b" % n, since=mark, timeout=2)
    assert not emulator.log.find(r"\bconn %d append-stored\b" % n, since=mark)


def test_counters_back_to_zero_after_sessions(emulator, proxy, ctx):
    # A mix: clean logout, abrupt close mid-literal, abrupt close idle,
    # one still open while we look, then closed.
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
        c.command("Z", "LOGOUT")
        c.expect_eof()
    c = h.TLSClient(proxy.port, ctx)
    h.login(c)
    c.write(b"A APPEND INBOX {100000}\r\n")
    assert c.read_line().startswith(b"+")
    c.write(b"x" * 50000)
    c.close()
    idle = h.TLSClient(proxy.port, ctx)
    idle.read_line()
    stats = proxy.wait_stats(lambda s: s.get("sessions_active") == 1, what="one active session")
    assert stats["sessions_total"] >= 3, stats
    idle.close()
    stats = proxy.wait_stats(lambda s: s.get("sessions_active") == 0, what="no active session")
    assert stats["chain_bytes"] == 0, stats
    assert stats["chain_links"] == 0, stats
