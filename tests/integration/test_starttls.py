"""STARTTLS listeners (mode = starttls): what a client sees before TLS,
LOGIN refused until TLS, the plaintext-injection class (CVE-2011-0411)
closed, STARTTLS never reaching the backend, and the session going on as
an implicit-TLS one after the handshake."""

import re

import pytest

import imapfront_harness as h
from dovecot import PlainClient, capabilities, starttls_proxy


@pytest.fixture
def st(proxy_factory, emulator):
    """(proxy, starttls_port, emulator) with require_tls = yes."""
    p, port = starttls_proxy(proxy_factory, emulator.plain_port)
    return p, port, emulator


def emulator_cmds(emulator, mark):
    """(conn, tag, name) of every command the emulator saw after mark."""
    return [(int(m.group(1)), m.group(2), m.group(3))
            for m in emulator.log.find(r"\bconn (\d+) cmd (\S+) (.+)$", mark)]


def test_greeting_and_capability_before_tls(st):
    proxy, port, _ = st
    with PlainClient(port) as c:
        greeting = c.read_line()
        assert greeting.startswith(b"* OK "), greeting
        caps, places = capabilities([greeting])
        assert places == 1, greeting
        assert {"STARTTLS", "LOGINDISABLED", "IMAP4REV1"} <= caps, greeting
        assert not any(x.startswith("AUTH=") for x in caps), greeting
        untagged, tagged = c.command("A", "CAPABILITY")
        assert tagged.startswith(b"A OK"), tagged
        caps, places = capabilities(untagged)
        assert places == 1, untagged
        # The emulator's own list has AUTH=PLAIN; before TLS it is hidden.
        assert {"STARTTLS", "LOGINDISABLED", "IMAP4REV1", "IDLE"} <= caps, untagged
        assert not any(x.startswith("AUTH=") for x in caps), untagged
        _, tagged = c.command("B", "NOOP")
        assert tagged.startswith(b"B OK"), tagged
        untagged, tagged = c.command("Z", "LOGOUT")
        assert tagged.startswith(b"Z OK") and untagged[0].startswith(b"* BYE"), (untagged, tagged)


@pytest.mark.parametrize("command", ["LOGIN demo demo", "AUTHENTICATE PLAIN AGRlbW8AZGVtbw=="])
def test_login_before_tls_refused_never_reaches_backend(st, command):
    proxy, port, emu = st
    emark, pmark = emu.log.mark(), proxy.log.mark()
    with PlainClient(port) as c:
        c.read_line()
        untagged, tagged = c.command("L", command)
        assert untagged == [], untagged
        assert tagged.startswith(b"L NO [PRIVACYREQUIRED]"), tagged
        # The session goes on, still unauthenticated.
        _, tagged = c.command("S", "SELECT INBOX")
        assert re.match(rb"S (NO|BAD)", tagged), tagged
        _, tagged = c.command("Z", "LOGOUT")
        assert tagged.startswith(b"Z OK"), tagged
    cmds = emulator_cmds(emu, emark)
    assert ("Z", "LOGOUT") in [(t, n) for _, t, n in cmds], cmds
    assert not [x for x in cmds if x[2] in ("LOGIN", "AUTHENTICATE")], cmds
    # The refusal is logged, the password never.
    proxy.log.wait_for(r"command refused .*tag=L\b", since=pmark, timeout=5)
    text = proxy.log.text()
    assert "AGRlbW8AZGVtbw==" not in text and "demo demo" not in text


def test_starttls_with_pipelined_login_discarded(st, ctx):
    """CVE-2011-0411: `A STARTTLS` and `B LOGIN` in one write; B must run
    neither before the handshake (in plaintext) nor after it (as if the
    client had sent it inside TLS)."""
    proxy, port, emu = st
    emark, pmark = emu.log.mark(), proxy.log.mark()
    junk = b"B LOGIN demo demo\r\n"
    with PlainClient(port) as c:
        c.read_line()
        c.write(b"A STARTTLS\r\n" + junk)
        assert c.read_line() == b"A OK Begin TLS negotiation now\r\n"
        # starttls() fails if any plaintext byte followed the OK.
        t = c.starttls(ctx)
        # Inside TLS: the first answer is the one to C; nothing for B, and
        # the session is not authenticated (B's LOGIN never ran).
        untagged, tagged = t.command("C", "NOOP")
        assert tagged.startswith(b"C OK"), tagged
        assert not [l for l in untagged if l.startswith(b"B ")], untagged
        _, tagged = t.command("D", "SELECT INBOX")
        assert re.match(rb"D (NO|BAD)", tagged), tagged
        untagged, tagged = t.command("E", "LOGIN demo demo")
        assert tagged.startswith(b"E OK"), tagged
        assert not [l for l in untagged if l.startswith(b"B ")], untagged
        t.command("Z", "LOGOUT")
    m = proxy.log.wait_for(r"discarded plaintext sent after STARTTLS .*bytes=(\d+)",
                           since=pmark, timeout=5)
    assert int(m.group(1)) == len(junk), m.group(0)
    cmds = emulator_cmds(emu, emark)
    tags = [t for _, t, _ in cmds]
    assert "B" not in tags and "A" not in tags, cmds
    assert tags[-4:] == ["C", "D", "E", "Z"], cmds


def test_starttls_then_session_like_implicit_tls(st, ctx):
    """After the handshake: capabilities without STARTTLS/LOGINDISABLED
    and with AUTH= back; LOGIN, SELECT, APPEND, FETCH work; STARTTLS never
    reached the backend; a second STARTTLS is BAD."""
    proxy, port, emu = st
    emark = emu.log.mark()
    body = h.message_body(5000, seed=7)
    with PlainClient(port) as c:
        c.read_line()
        untagged, tagged = c.command("A", "STARTTLS")
        assert untagged == [] and tagged == b"A OK Begin TLS negotiation now\r\n", tagged
        t = c.starttls(ctx)
        assert t.version in ("TLSv1.2", "TLSv1.3"), t.version
        untagged, tagged = t.command("B", "CAPABILITY")
        assert tagged.startswith(b"B OK"), tagged
        caps, places = capabilities(untagged)
        assert places == 1, untagged
        assert "STARTTLS" not in caps and "LOGINDISABLED" not in caps, caps
        assert "AUTH=PLAIN" in caps, caps
        _, tagged = t.command("C", "LOGIN demo demo")
        assert tagged.startswith(b"C OK"), tagged
        assert "STARTTLS" not in capabilities([tagged])[0]
        tagged = h.append(t, "D", body)
        assert tagged.startswith(b"D OK"), tagged
        assert h.fetch_appended(t, tagged) == body
        _, tagged = t.command("E", "STARTTLS")
        assert tagged.startswith(b"E BAD"), tagged
        _, tagged = t.command("G", "NOOP")
        assert tagged.startswith(b"G OK"), tagged
        untagged, tagged = t.command("Z", "LOGOUT")
        assert tagged.startswith(b"Z OK"), tagged
        how, _ = t.expect_eof()
        assert how == "close_notify", how
    names = [n for _, _, n in emulator_cmds(emu, emark)]
    assert "STARTTLS" not in names, names
    assert names[:3] == ["CAPABILITY", "LOGIN", "APPEND"], names


def test_starttls_with_pipelined_junk_then_handshake_record(st, ctx):
    """Plaintext written after the OK, where the ClientHello belongs (an
    attacker on the path can do this): the handshake fails, the line is
    never executed."""
    proxy, port, emu = st
    emark, pmark = emu.log.mark(), proxy.log.mark()
    with PlainClient(port) as c:
        c.read_line()
        c.write(b"A STARTTLS\r\n")
        assert c.read_line() == b"A OK Begin TLS negotiation now\r\n"
        c.write(b"B LOGIN demo demo\r\n")
        out = c.expect_eof(timeout=10)
        # At most a TLS alert comes back, never an IMAP answer to B.
        assert not re.search(rb"\bB (OK|NO|BAD)\b", out), out
    proxy.log.wait_for(r"tls: handshake failed", since=pmark, timeout=5)
    assert "B" not in [t for _, t, _ in emulator_cmds(emu, emark)]


def test_require_tls_no_allows_login_before_tls(proxy_factory, emulator):
    proxy, port = starttls_proxy(proxy_factory, emulator.plain_port, require_tls=False)
    emark = emulator.log.mark()
    with PlainClient(port) as c:
        greeting = c.read_line()
        caps, _ = capabilities([greeting])
        assert "STARTTLS" in caps and "LOGINDISABLED" not in caps, greeting
        untagged, tagged = c.command("A", "CAPABILITY")
        caps, _ = capabilities(untagged)
        assert "STARTTLS" in caps and "LOGINDISABLED" not in caps, untagged
        assert "AUTH=PLAIN" in caps, untagged
        _, tagged = c.command("L", "LOGIN demo demo")
        assert tagged.startswith(b"L OK"), tagged
        _, tagged = c.command("S", "SELECT INBOX")
        assert tagged.startswith(b"S OK"), tagged
        c.command("Z", "LOGOUT")
    assert "LOGIN" in [n for _, _, n in emulator_cmds(emulator, emark)]


def test_starttls_on_implicit_tls_listener_is_bad(proxy, emulator, ctx):
    emark = emulator.log.mark()
    with h.TLSClient(proxy.port, ctx) as c:
        greeting = c.read_line()
        assert "STARTTLS" not in capabilities([greeting])[0], greeting
        untagged, tagged = c.command("A", "STARTTLS")
        assert tagged.startswith(b"A BAD"), tagged
        _, tagged = c.command("B", "NOOP")
        assert tagged.startswith(b"B OK"), tagged
    assert "STARTTLS" not in [n for _, _, n in emulator_cmds(emulator, emark)]


def test_login_with_literals_before_tls_refused(st):
    """LOGIN whose arguments are literals: a synchronising one is refused
    before the client sends it (no "+"), a non-synchronising one is
    swallowed with its command; nothing reaches the backend, nothing of
    the literal runs as a command."""
    proxy, port, emu = st
    emark = emu.log.mark()
    with PlainClient(port) as c:
        c.read_line()
        c.write(b"L LOGIN {4}\r\n")
        line = c.read_line()
        assert line.startswith(b"L NO [PRIVACYREQUIRED]"), line
        _, tagged = c.command("N", "NOOP")
        assert tagged.startswith(b"N OK"), tagged
        c.write(b"M LOGIN {4+}\r\ndemo {11+}\r\nX1 LOGOUT\r\n\r\n")
        untagged, tagged = c.read_until_tagged("M")
        assert untagged == [] and tagged.startswith(b"M NO [PRIVACYREQUIRED]"), (untagged, tagged)
        _, tagged = c.command("O", "NOOP")
        assert tagged.startswith(b"O OK"), tagged
    cmds = emulator_cmds(emu, emark)
    assert [t for _, t, _ in cmds] == ["N", "O"], cmds
