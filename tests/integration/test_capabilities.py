"""Capability hygiene through implicit TLS (and STARTTLS): clients never
see STARTTLS or LOGINDISABLED after TLS, never COMPRESS=*, never what
[imap] hide_capabilities names, in untagged CAPABILITY responses nor in
[CAPABILITY ...] codes (greeting, LOGIN's tagged OK). COMPRESS and a
second STARTTLS are answered by the proxy. Message bodies are data: a body
that looks like a capability response comes back byte-exact.

Backends: a scripted one that advertises everything the proxy must hide,
the legacy emulator, and a real Dovecot with STARTTLS (ssl = yes) and
COMPRESS=DEFLATE (imap_zlib) switched on."""

import socket
import threading

import pytest

import imapfront_harness as h
from dovecot import (PlainClient, TLSOver, capabilities, dovecot_factory,  # noqa: F401
                     starttls_proxy)

NEVER_AFTER_TLS = {"STARTTLS", "LOGINDISABLED"}

# A body that a careless rewriter would change: capability lines at the
# start of the literal and after CRLFs, and a fake tagged completion.
TRAP_BODY = (b"* CAPABILITY IMAP4rev1 STARTTLS COMPRESS=DEFLATE LOGINDISABLED\r\n"
             b"Subject: * OK [CAPABILITY IMAP4rev1 STARTTLS COMPRESS=DEFLATE] trap\r\n"
             b"\r\n"
             b"* CAPABILITY IMAP4rev1 STARTTLS COMPRESS=DEFLATE\r\n"
             b"* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN IDLE ID] greeting-like\r\n"
             b"F OK [CAPABILITY COMPRESS=DEFLATE STARTTLS] looks like our tag\r\n"
             b"8-bit \xe9\xe8\xff text and the end\r\n")

FAKE_CAPS = b"IMAP4rev1 STARTTLS LOGINDISABLED AUTH=PLAIN COMPRESS=DEFLATE IDLE ID SORT SORT=DISPLAY X-KEEP"


def no_forbidden(caps, extra=()):
    bad = {c for c in caps if c in NEVER_AFTER_TLS or c.startswith("COMPRESS")}
    bad |= {c for c in caps if c in {x.upper() for x in extra}}
    return bad


class ScriptedBackend(h.FakeBackend):
    """A backend that advertises STARTTLS, LOGINDISABLED, COMPRESS=DEFLATE
    everywhere it can and records every line it receives."""

    def __init__(self):
        self.received = []
        self.lock = threading.Lock()
        super().__init__(self.serve)

    def serve(self, conn):
        conn.sendall(b"* OK [CAPABILITY " + FAKE_CAPS + b"] scripted ready\r\n")
        while True:
            line = h.recv_line(conn)
            if not line:
                return
            with self.lock:
                self.received.append(line)
            parts = line.rstrip(b"\r\n").split(b" ", 2)
            tag, cmd = parts[0], (parts[1].upper() if len(parts) > 1 else b"")
            if cmd == b"CAPABILITY":
                conn.sendall(b"* CAPABILITY " + FAKE_CAPS + b"\r\n" + tag + b" OK done\r\n")
            elif cmd == b"LOGIN":
                conn.sendall(tag + b" OK [CAPABILITY " + FAKE_CAPS + b"] Logged in\r\n")
            elif cmd == b"FETCH":
                conn.sendall(b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % len(TRAP_BODY) + TRAP_BODY
                             + b")\r\n" + tag + b" OK [CAPABILITY STARTTLS] Fetch completed\r\n")
            elif cmd == b"LOGOUT":
                conn.sendall(b"* BYE bye\r\n" + tag + b" OK LOGOUT completed\r\n")
                conn.close()
                return
            elif cmd in (b"NOOP", b"ID"):
                conn.sendall(tag + b" OK done\r\n")
            else:
                conn.sendall(tag + b" BAD unexpected here\r\n")


@pytest.fixture
def scripted():
    b = ScriptedBackend()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def dovecot_full(dovecot_factory, cert):  # noqa: F811
    """Dovecot that advertises STARTTLS before login and COMPRESS=DEFLATE
    after it (checked directly, without the proxy, in the test below)."""
    return dovecot_factory(ssl_cert=cert[0], ssl_key=cert[1], compress=True)


def direct_caps(port, user, password):
    """(greeting caps, LOGIN OK caps) straight from a plaintext backend."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        greeting = h.recv_line(s)
        s.sendall(("a LOGIN %s %s\r\n" % (user, password)).encode())
        line = h.recv_line(s)
        while not line.startswith(b"a "):
            line = h.recv_line(s)
        s.sendall(b"z LOGOUT\r\n")
        return capabilities([greeting])[0], capabilities([line])[0]


def walk_session(c, user, password, hide=()):
    """Greeting, CAPABILITY, LOGIN, CAPABILITY, COMPRESS, STARTTLS, NOOP
    over a TLS client; asserts the hygiene rules at each step and returns
    the capabilities seen after login."""
    greeting = c.read_line()
    caps, places = capabilities([greeting])
    assert places == 1 and "IMAP4REV1" in caps, greeting
    assert not no_forbidden(caps, hide), greeting
    untagged, tagged = c.command("A", "CAPABILITY")
    assert tagged.startswith(b"A OK"), tagged
    caps, places = capabilities(untagged)
    assert places == 1 and not no_forbidden(caps, hide), untagged
    untagged, tagged = c.command("L", "LOGIN %s %s" % (user, password))
    assert tagged.startswith(b"L OK"), tagged
    seen = capabilities(untagged + [tagged])
    assert not no_forbidden(seen[0], hide), (untagged, tagged)
    untagged, tagged = c.command("B", "CAPABILITY")
    after, places = capabilities(untagged)
    assert places == 1 and not no_forbidden(after, hide), untagged
    untagged, tagged = c.command("C", "COMPRESS DEFLATE")
    assert tagged.startswith(b"C NO [CANNOT]"), tagged
    _, tagged = c.command("D", "NOOP")
    assert tagged.startswith(b"D OK"), tagged
    _, tagged = c.command("E", "STARTTLS")
    assert tagged.startswith(b"E BAD"), tagged
    _, tagged = c.command("G", "NOOP")
    assert tagged.startswith(b"G OK"), tagged
    return after | seen[0]


# ------------------------------------------------------ scripted backend ----

def test_scripted_backend_everything_hidden(proxy_factory, scripted, ctx):
    proxy = proxy_factory(scripted.port)
    with TLSOver.connect(proxy.port, ctx) as c:
        greeting = c.read_line()
        # Only the code changes; the text after it stays.
        assert greeting.endswith(b"] scripted ready\r\n"), greeting
        caps, _ = capabilities([greeting])
        # LITERAL+ is the proxy's own: it makes {N+} synchronising for a
        # backend that did not announce it.
        assert caps == {"IMAP4REV1", "AUTH=PLAIN", "IDLE", "ID", "SORT", "SORT=DISPLAY",
                        "X-KEEP", "LITERAL+"}, greeting
        untagged, tagged = c.command("A", "CAPABILITY")
        assert capabilities(untagged)[0] == caps, untagged
        _, tagged = c.command("L", "LOGIN demo demo")
        assert capabilities([tagged])[0] == caps, tagged
        assert tagged.endswith(b"] Logged in\r\n"), tagged
        _, tagged = c.command("C", "COMPRESS DEFLATE")
        assert tagged.startswith(b"C NO [CANNOT]"), tagged
        _, tagged = c.command("S", "STARTTLS")
        assert tagged.startswith(b"S BAD"), tagged
        untagged, tagged = c.command("F", "FETCH 1 BODY[]")
        assert untagged[1] == TRAP_BODY, untagged
        assert tagged.startswith(b"F OK"), tagged
        _, tagged = c.command("N", "NOOP")
        assert tagged == b"N OK done\r\n", tagged
    sent = b"".join(scripted.received)
    assert b"COMPRESS" not in sent and b"STARTTLS" not in sent, sent


def test_scripted_backend_hide_list_and_wildcard(proxy_factory, scripted, ctx):
    # Case-insensitive names and NAME=* wildcards; SORT stays while
    # SORT=DISPLAY goes, ID goes while IDLE stays.
    proxy = proxy_factory(scripted.port, extra={"imap": {"hide_capabilities": "id, sort=*"}})
    with TLSOver.connect(proxy.port, ctx) as c:
        caps, _ = capabilities([c.read_line()])
        assert caps == {"IMAP4REV1", "AUTH=PLAIN", "IDLE", "SORT", "X-KEEP", "LITERAL+"}, caps
        untagged, _ = c.command("A", "CAPABILITY")
        assert capabilities(untagged)[0] == caps, untagged
        _, tagged = c.command("L", "LOGIN demo demo")
        assert capabilities([tagged])[0] == caps, tagged


def test_scripted_backend_through_starttls(proxy_factory, scripted, ctx):
    proxy, port = starttls_proxy(proxy_factory, scripted.port)
    with PlainClient(port) as p:
        caps, _ = capabilities([p.read_line()])
        assert caps == {"IMAP4REV1", "STARTTLS", "LOGINDISABLED", "IDLE", "ID", "SORT",
                        "SORT=DISPLAY", "X-KEEP", "LITERAL+"}, caps
        untagged, _ = p.command("A", "CAPABILITY")
        assert capabilities(untagged)[0] == caps, untagged
        p.command("T", "STARTTLS")
        c = p.starttls(ctx)
        untagged, _ = c.command("B", "CAPABILITY")
        after = capabilities(untagged)[0]
        assert after == {"IMAP4REV1", "AUTH=PLAIN", "IDLE", "ID", "SORT", "SORT=DISPLAY",
                         "X-KEEP", "LITERAL+"}, untagged
        _, tagged = c.command("L", "LOGIN demo demo")
        assert capabilities([tagged])[0] == after, tagged
        untagged, tagged = c.command("F", "FETCH 1 BODY[]")
        assert untagged[1] == TRAP_BODY, untagged


# --------------------------------------------------------------- emulator ----

def test_emulator_hygiene_and_trap_body(proxy, ctx):
    with TLSOver.connect(proxy.port, ctx) as c:
        caps = walk_session(c, "demo", "demo")
        assert {"IDLE", "ID", "AUTH=PLAIN"} <= caps, caps
        tagged = h.append(c, "P", TRAP_BODY)
        assert tagged.startswith(b"P OK"), tagged
        assert h.fetch_appended(c, tagged) == TRAP_BODY


def test_emulator_hide_capabilities(proxy_factory, emulator, ctx):
    proxy = proxy_factory(emulator.plain_port, extra={"imap": {"hide_capabilities": "IDLE, ID"}})
    with TLSOver.connect(proxy.port, ctx) as c:
        caps = walk_session(c, "demo", "demo", hide=("IDLE", "ID"))
        assert {"UIDPLUS", "NAMESPACE", "LITERAL+"} <= caps, caps


# ---------------------------------------------------------------- Dovecot ----

def test_dovecot_really_advertises_what_must_be_hidden(dovecot_full):
    before, after = direct_caps(dovecot_full.port, "demo", "demo")
    assert "STARTTLS" in before, before
    assert "COMPRESS=DEFLATE" in after, after


def test_dovecot_hygiene_and_trap_body(proxy_factory, dovecot_full, ctx):
    proxy = proxy_factory(dovecot_full.port)
    with TLSOver.connect(proxy.port, ctx) as c:
        caps = walk_session(c, "demo", "demo")
        assert {"IDLE", "ID", "IMAP4REV1"} <= caps, caps
        tagged = h.append(c, "P", TRAP_BODY)
        assert tagged.startswith(b"P OK"), tagged
        assert h.fetch_appended(c, tagged) == TRAP_BODY
        c.command("Z", "LOGOUT")


def test_dovecot_hide_capabilities(proxy_factory, dovecot_full, ctx):
    proxy = proxy_factory(dovecot_full.port, extra={"imap": {"hide_capabilities": "IDLE, ID"}})
    with TLSOver.connect(proxy.port, ctx) as c:
        caps = walk_session(c, "demo", "demo", hide=("IDLE", "ID"))
        assert {"UIDPLUS", "SORT", "MOVE"} <= caps, caps
        c.command("Z", "LOGOUT")


def test_dovecot_through_starttls(proxy_factory, dovecot_full, ctx):
    proxy, port = starttls_proxy(proxy_factory, dovecot_full.port)
    with PlainClient(port) as p:
        greeting = p.read_line()
        caps, _ = capabilities([greeting])
        assert {"STARTTLS", "LOGINDISABLED"} <= caps, greeting
        assert not [x for x in caps if x.startswith("AUTH=")], greeting
        p.command("T", "STARTTLS")
        c = p.starttls(ctx)
        untagged, _ = c.command("A", "CAPABILITY")
        caps, _ = capabilities(untagged)
        assert not no_forbidden(caps) and "AUTH=PLAIN" in caps, untagged
        _, tagged = c.command("L", "LOGIN demo demo")
        assert tagged.startswith(b"L OK") and not no_forbidden(capabilities([tagged])[0]), tagged
        tagged = h.append(c, "P", TRAP_BODY)
        assert h.fetch_appended(c, tagged) == TRAP_BODY
        _, tagged = c.command("C", "COMPRESS DEFLATE")
        assert tagged.startswith(b"C NO [CANNOT]"), tagged
        _, tagged = c.command("N", "NOOP")
        assert tagged.startswith(b"N OK"), tagged
        c.command("Z", "LOGOUT")
