"""[backend] forward_client_ip = id: right after connecting, the proxy tells
the backend who the client is (ID "x-originating-ip"/"x-originating-port")
and swallows the answer, so that the backend logs the real client; the
client never sees that exchange. With the option off nothing is sent.

Against Dovecot (login_trusted_networks = 127.0.0.0/8) the login line
shows the client's address and port; the client connects over ::1 when it
can, so that even the address differs from the proxy's own 127.0.0.1."""

import socket

import pytest

import imapfront_harness as h
from dovecot import (PlainClient, TLSOver, dovecot, dovecot_factory,  # noqa: F401
                     listener_port, starttls_proxy)

FORWARD = {"backend": {"forward_client_ip": "id"}}


def have_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def conn_of(emulator, mark):
    conns = emulator.conns_since(mark)
    assert len(conns) == 1, conns
    return conns[0]


def everything_until_logout(c):
    """All lines of a short session: NOOP, a client ID, LOGIN, LOGOUT."""
    seen = []
    for tag, cmd in (("a", "NOOP"), ("b", 'ID ("name" "pytest")'), ("c", "LOGIN demo demo"),
                     ("d", "NOOP")):
        untagged, tagged = c.command(tag, cmd)
        assert tagged.startswith(tag.encode() + b" OK"), tagged
        seen += untagged + [tagged]
    untagged, tagged = c.command("z", "LOGOUT")
    seen += untagged + [tagged]
    _, rest = c.expect_eof()
    return seen + ([rest] if rest else [])


def test_id_sent_first_and_swallowed_emulator(proxy_factory, emulator, ctx):
    proxy = proxy_factory(emulator.plain_port, extra=FORWARD)
    mark = emulator.log.mark()
    with TLSOver.connect(proxy.port, ctx) as c:
        port = c.sock.getsockname()[1]
        greeting = c.read_line()
        assert greeting.startswith(b"* OK"), greeting
        seen = [greeting] + everything_until_logout(c)
    n = conn_of(emulator, mark)
    cmds = [m.group(1) for m in emulator.log.find(r"\bconn %d cmd (\S+ \S+)" % n, mark)]
    assert cmds[0] == "imapfront-id ID", cmds
    assert cmds[1:] == ["a NOOP", "b ID", "c LOGIN", "d NOOP", "z LOGOUT"], cmds
    ids = [h.parse_kv(m.group(1)) for m in emulator.log.find(r"\bconn %d id(.*)$" % n, mark)]
    assert ids[0] == {"x-originating-ip": "127.0.0.1", "x-originating-port": str(port)}, ids
    assert ids[1] == {"name": "pytest"}, ids
    # The client's own ID is answered; the proxy's is not shown at all.
    ids_seen = [l for l in seen if l.startswith(b"* ID ")]
    assert len(ids_seen) == 1, seen
    assert not [l for l in seen if b"imapfront-id" in l], seen


def test_id_forwarded_on_starttls_listener(proxy_factory, emulator, ctx):
    proxy, port = starttls_proxy(proxy_factory, emulator.plain_port, extra=FORWARD)
    mark = emulator.log.mark()
    with PlainClient(port) as p:
        local = p.sock.getsockname()[1]
        seen = [p.read_line()]
        untagged, tagged = p.command("s", "STARTTLS")
        seen += untagged + [tagged]
        c = p.starttls(ctx)
        seen += everything_until_logout(c)
    # One `* ID`: the answer to the client's own ID, not the proxy's.
    assert len([l for l in seen if l.startswith(b"* ID ")]) == 1, seen
    assert not [l for l in seen if b"imapfront-id" in l], seen
    n = conn_of(emulator, mark)
    m = emulator.log.find(r"\bconn %d id (x-originating.*)$" % n, mark)
    assert m and h.parse_kv(m[0].group(1)) == {"x-originating-ip": "127.0.0.1",
                                                "x-originating-port": str(local)}, m


def test_forward_off_sends_no_id(proxy_factory, emulator, ctx):
    proxy = proxy_factory(emulator.plain_port, extra={"backend": {"forward_client_ip": "off"}})
    mark = emulator.log.mark()
    with TLSOver.connect(proxy.port, ctx) as c:
        c.read_line()
        _, tagged = c.command("L", "LOGIN demo demo")
        assert tagged.startswith(b"L OK"), tagged
        c.command("z", "LOGOUT")
        c.expect_eof()
    n = conn_of(emulator, mark)
    assert not emulator.log.find(r"\bconn %d (id\b|cmd imapfront-id)" % n, mark)
    cmds = [m.group(1) for m in emulator.log.find(r"\bconn %d cmd (\S+)" % n, mark)]
    assert cmds == ["L", "z"], cmds


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_dovecot_logs_real_client(proxy_factory, dovecot, ctx, family):  # noqa: F811
    extra = dict(FORWARD)
    host = "127.0.0.1"
    if family == "ipv6":
        if not have_ipv6_loopback():
            pytest.skip("no ::1 here")
        extra = dict(FORWARD, **{"listen.v6": {"address": "[::1]:0", "mode": "implicit-tls"}})
        host = "::1"
    proxy = proxy_factory(dovecot.port, extra=extra)
    port = listener_port(proxy, "v6") if family == "ipv6" else proxy.port
    mark = dovecot.log.mark()
    pmark = proxy.log.mark()
    with TLSOver.connect(port, ctx, host=host) as c:
        client_ip, client_port = c.sock.getsockname()[:2]
        greeting = c.read_line()
        assert greeting.startswith(b"* OK"), greeting
        untagged, tagged = c.command("c", "LOGIN demo demo")
        assert tagged.startswith(b"c OK"), tagged
        assert not [l for l in untagged if l.startswith(b"* ID")], untagged
        c.command("z", "LOGOUT")
        c.expect_eof()
    m = dovecot.log.wait_for(r"imap-login: (?:Info: )?Login: user=<demo>.*", since=mark, timeout=5)
    logins = dovecot.logins(mark)
    assert len(logins) == 1, logins
    assert logins[0]["rip"] == client_ip, m.group(0)
    assert logins[0]["rport"] == str(client_port), m.group(0)
    assert not proxy.log.find(r"ID with the client address refused", pmark)


def test_dovecot_without_forwarding_sees_the_proxy(proxy_factory, dovecot, ctx):  # noqa: F811
    """The control: with forward_client_ip = off, a client on ::1 shows up
    in Dovecot's log as the proxy's 127.0.0.1."""
    if not have_ipv6_loopback():
        pytest.skip("no ::1 here")
    proxy = proxy_factory(dovecot.port, extra={
        "backend": {"forward_client_ip": "off"},
        "listen.v6": {"address": "[::1]:0", "mode": "implicit-tls"}})
    mark = dovecot.log.mark()
    with TLSOver.connect(listener_port(proxy, "v6"), ctx, host="::1") as c:
        c.read_line()
        _, tagged = c.command("c", "LOGIN demo demo")
        assert tagged.startswith(b"c OK"), tagged
        c.command("z", "LOGOUT")
        c.expect_eof()
    dovecot.log.wait_for(r"imap-login: (?:Info: )?Login: user=<demo>", since=mark, timeout=5)
    logins = dovecot.logins(mark)
    assert len(logins) == 1 and logins[0]["rip"] == "127.0.0.1", logins


def test_id_with_pipelining_off(proxy_factory, emulator, ctx):
    """With one command in flight at a time (quirks = exchange55), the
    client's first command waits for the ID's answer and is not lost."""
    proxy = proxy_factory(emulator.plain_port,
                          extra={"backend": {"forward_client_ip": "id", "quirks": "exchange55"}})
    mark = emulator.log.mark()
    with TLSOver.connect(proxy.port, ctx) as c:
        c.read_line()
        # Sent at once, before the ID can have been answered.
        c.write(b"a NOOP\r\nb LOGIN demo demo\r\n")
        _, tagged = c.read_until_tagged("a")
        assert tagged.startswith(b"a OK"), tagged
        untagged, tagged = c.read_until_tagged("b")
        assert tagged.startswith(b"b OK"), tagged
        assert not [l for l in untagged if b"ID" in l], untagged
    n = conn_of(emulator, mark)
    cmds = [m.group(1) for m in emulator.log.find(r"\bconn %d cmd (\S+)" % n, mark)]
    assert cmds[:3] == ["imapfront-id", "a", "b"], cmds


def test_backend_without_id_support(proxy_factory, ctx):
    """A backend that answers the ID with BAD: the client sees nothing of
    it, the session works, and the proxy says so in its log."""
    got = []

    def backend(conn):
        conn.sendall(b"* OK [CAPABILITY IMAP4rev1] no ID here\r\n")
        while True:
            line = h.recv_line(conn)
            if not line:
                return
            got.append(line)
            tag = line.split(b" ", 1)[0]
            if b" ID " in line:
                conn.sendall(tag + b" BAD unknown command\r\n")
            else:
                conn.sendall(tag + b" OK done\r\n")

    fake = h.FakeBackend(backend)
    try:
        proxy = proxy_factory(fake.port, extra=FORWARD)
        pmark = proxy.log.mark()
        with TLSOver.connect(proxy.port, ctx) as c:
            # LITERAL+ is the proxy's own (it converts {N+} for this backend).
            assert c.read_line() == b"* OK [CAPABILITY IMAP4rev1 LITERAL+] no ID here\r\n"
            untagged, tagged = c.command("a", "NOOP")
            assert tagged == b"a OK done\r\n", tagged
            assert not [l for l in untagged if b"BAD" in l or b"imapfront" in l], untagged
        proxy.log.wait_for(r"ID with the client address refused", since=pmark, timeout=5)
        assert got[0].startswith(b"imapfront-id ID ("), got
    finally:
        fake.stop()
