"""Attacks on migration routing from outside: the login-first lobby (what
may reach a backend before a login), retries and races around a pending
backend login, and TLS or name failures of a routed pool. Each test says
what an attacker or an unlucky operator does and what the documentation
(README "What the proxy guarantees" and "Migrating users off a legacy
server", docs/configuration.md [route] and [backend] tls) promises.

The emulator's --record file shows every line a backend framed; a
FakeBackend shows the exact bytes. Every wait is bounded."""

import base64
import datetime
import os
import re
import select
import signal
import socket
import ssl
import threading
import time

import pytest

import imapfront_harness as h
import ops_support as ops

SECRET = "Att4ck-Pw-Never-Logged"
LOGIN_COMMANDS = {"LOGIN", "AUTHENTICATE", "CAPABILITY", "ID", "LOGOUT", "NOOP", "STARTTLS"}


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def routed(proxy_factory, tmp_path, port, map_text="demo default\n", extra=None, admin=False):
    """A proxy whose [backend] is 127.0.0.1:port, with a route map."""
    path = str(tmp_path / "route.map")
    write(path, map_text)
    sections = ops.merge({"route": {"map": path}, "proxy": {"log_level": "debug"}}, extra)
    if admin:
        p = ops.start_proxy(proxy_factory, port, extra=sections)
    else:
        p = proxy_factory(port, extra=sections)
    p.map_path = path
    return p


def session(proxy, ctx):
    c = h.TLSClient(proxy.port, ctx)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    greeting = c.read_line()
    assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1"), greeting
    return c


def command_names(emu):
    """The command names of every line the emulator framed (SASL
    continuation lines are base64 or '*': no name)."""
    names = []
    for r in emu.records():
        parts = r.get("line", "").split(" ")
        if len(parts) >= 2:
            names.append(parts[1].upper())
    return names


def backend_opens(emu):
    return len(emu.log.find(r"\bconn \d+ open\b"))


class HeldLogin:
    """A backend played by the test: greets, reads the proxy's login and
    answers it only when release() is called (or after `hold` seconds);
    then answers NOOP/LOGOUT. Records what it read and whether it saw the
    proxy hang up."""

    def __init__(self, hold=10.0, greeting=b"* OK [CAPABILITY IMAP4rev1] held ready\r\n"):
        self.go = threading.Event()
        self.got_login = threading.Event()
        self.eof = threading.Event()
        self.lines = []
        self.logins = 0
        self.hold = hold
        self.greeting = greeting
        self.fake = h.FakeBackend(self._serve)
        self.port = self.fake.port

    def _serve(self, conn):
        conn.sendall(self.greeting)
        line = h.recv_line(conn)
        self.lines.append(line)
        self.logins += 1
        self.got_login.set()
        # Until released (at most `hold` seconds), watch for the proxy
        # hanging up on us.
        deadline = time.monotonic() + self.hold
        while not self.go.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            r, _, _ = select.select([conn], [], [], min(left, 0.05))
            if r:
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    self.eof.set()
                    return
                self.lines.append(data)
        tag = line.split(b" ", 1)[0]
        conn.sendall(tag + b" OK [CAPABILITY IMAP4rev1] Logged in\r\n")
        while True:
            line = h.recv_line(conn)
            if not line:
                self.eof.set()
                return
            self.lines.append(line)
            tag, rest = (line.split(b" ", 1) + [b""])[:2]
            if rest.upper().startswith(b"LOGOUT"):
                conn.sendall(b"* BYE bye\r\n" + tag + b" OK LOGOUT done\r\n")
                return
            conn.sendall(tag + b" OK done\r\n")

    def release(self):
        self.go.set()

    def stop(self):
        self.go.set()
        self.fake.stop()


@pytest.fixture
def held():
    yield from h.stopping(HeldLogin)


# ------------------------------------------------------------- the lobby ----

def test_pipelined_after_failed_login_never_reaches_backend(proxy_factory, emulator_factory,
                                                            tmp_path, ctx):
    """LOGIN with a wrong password and SELECT/FETCH/APPEND pipelined in the
    same write: the login is NO, the rest is 'BAD Log in first', and the
    backend (greeted and kept for a retry) framed nothing but the login."""
    emu = emulator_factory(record=True)
    proxy = routed(proxy_factory, tmp_path, emu.plain_port)
    with session(proxy, ctx) as c:
        c.write(b"L LOGIN demo %s\r\nS SELECT INBOX\r\nF FETCH 1 BODY[]\r\n"
                b"A APPEND INBOX {5+}\r\nhello\r\n" % SECRET.encode())
        assert c.read_until_tagged("L")[1].startswith(b"L NO"), "login"
        assert c.read_until_tagged("S")[1] == b"S BAD Log in first\r\n"
        assert c.read_until_tagged("F")[1] == b"F BAD Log in first\r\n"
        assert c.read_until_tagged("A")[1] == b"A BAD Log in first\r\n"
        assert c.command("n", "NOOP")[1] == b"n OK NOOP completed\r\n"
    names = command_names(emu)
    assert names and set(names) <= LOGIN_COMMANDS, names


def test_oversized_login_literal_is_not_read_as_commands(proxy_factory, emulator_factory,
                                                         tmp_path, ctx):
    """A 2,000-octet {N+} user name (over the documented 1,024) full of
    command lines: refused, and none of the lines inside it is answered
    as a command or reaches the backend."""
    emu = emulator_factory(record=True)
    proxy = routed(proxy_factory, tmp_path, emu.plain_port)
    inner = b"x SELECT INBOX\r\n" * 125  # 2000 octets
    with session(proxy, ctx) as c:
        c.write(b"L LOGIN {%d+}\r\n" % len(inner) + inner + b" pw\r\nn NOOP\r\n")
        items, tagged = c.read_until_tagged("L")
        assert items == [] and tagged == b"L BAD [TOOBIG] User name or password too long\r\n", (
            items[:3], tagged)
        assert c.read_until_tagged("n") == ([], b"n OK NOOP completed\r\n")
    assert backend_opens(emu) == 0


def test_huge_literal_count_refused_at_once(proxy_factory, emulator_factory, tmp_path, ctx):
    """{N+} and {N} with N past 2^64 or 4 GiB in LOGIN: answered at once
    (no wait for octets that will never come), no backend contacted."""
    emu = emulator_factory(record=True)
    proxy = routed(proxy_factory, tmp_path, emu.plain_port)
    cases = [(b"{18446744073709551617+}", b"* BYE Invalid literal announcement\r\n"),
             (b"{4294967296+}", b"* BYE [TOOBIG] Literal too big\r\n"),
             (b"{99999999999}", b"L BAD [TOOBIG] User name or password too long\r\n"),
             (b"{1025}", b"L BAD [TOOBIG] User name or password too long\r\n")]
    for lit, answer in cases:
        with session(proxy, ctx) as c:
            c.write(b"L LOGIN " + lit + b"\r\n")
            assert c.read_line(timeout=5) == answer, lit
            if answer.startswith(b"* BYE"):
                # The octets of a {N+} cannot be skipped: the session ends.
                c.expect_eof()
            else:
                assert c.command("n", "NOOP")[1] == b"n OK NOOP completed\r\n"
    assert backend_opens(emu) == 0


def test_starttls_command_injection(proxy_factory, emulator_factory, tmp_path, ctx):
    """Plaintext 'T STARTTLS' with 'L LOGIN demo demo' pipelined in the same
    segment (CVE-2011-0411 style): the LOGIN sent before TLS must not be
    executed after the handshake; the client is not logged in and no
    backend is contacted."""
    emu = emulator_factory(record=True)
    proxy = routed(proxy_factory, tmp_path, emu.plain_port, extra={
        "listen.plain": {"address": "127.0.0.1:0", "mode": "starttls", "require_tls": "no"}})
    port = ops.listener_port(proxy, "plain")
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        f = s.makefile("rb")
        assert f.readline().startswith(b"* OK")
        mark = proxy.log.mark()
        s.sendall(b"T STARTTLS\r\nL LOGIN demo demo\r\n")
        assert f.readline() == b"T OK Begin TLS negotiation now\r\n"
        t = ctx.wrap_socket(s, server_hostname="localhost")
        t.settimeout(5)
        t.sendall(b"N NOOP\r\n")
        got = b""
        deadline = time.monotonic() + 5
        while b"N OK" not in got and time.monotonic() < deadline:
            try:
                chunk = t.recv(4096)
            except (socket.timeout, ssl.SSLError, OSError):
                break
            if not chunk:
                break
            got += chunk
        assert got == b"N OK NOOP completed\r\n", got
        t.sendall(b"S SELECT INBOX\r\n")
        try:
            more = t.recv(4096)
        except (socket.timeout, ssl.SSLError, OSError):
            more = b""
        assert more == b"S BAD Log in first\r\n", more
        t.close()
    finally:
        s.close()
    proxy.log.wait_for(r"warn session: discarded plaintext sent after STARTTLS .*bytes=19",
                       since=mark)
    assert backend_opens(emu) == 0


def test_credentials_before_tls_never_leave(proxy_factory, emulator_factory, tmp_path, ctx):
    """require_tls: LOGIN/AUTHENTICATE in any case and literal form before
    STARTTLS get NO [PRIVACYREQUIRED]; a {N+} literal's octets (which hold
    a command) are swallowed; no backend is contacted."""
    emu = emulator_factory(record=True)
    proxy = routed(proxy_factory, tmp_path, emu.plain_port, extra={
        "listen.plain": {"address": "127.0.0.1:0", "mode": "starttls", "require_tls": "yes"}})
    port = ops.listener_port(proxy, "plain")
    plain = base64.b64encode(b"\0demo\0demo")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        for tag, cmd in ((b"a", b"authenticate plain " + plain),
                         (b"b", b"AuThEnTiCaTe PLAIN"),
                         (b"c", b"login {4+}\r\ndemo {4+}\r\ndemo"),
                         (b"d", b'LOGIN "demo" {17+}\r\nx SELECT INBOX\r\n')):
            s.sendall(tag + b" " + cmd + b"\r\n")
            line = f.readline()
            assert line.startswith(tag + b" NO [PRIVACYREQUIRED]"), (tag, line)
        s.sendall(b"n NOOP\r\n")
        assert f.readline() == b"n OK NOOP completed\r\n"
    assert backend_opens(emu) == 0


def test_authzid_other_than_user_refused(proxy_factory, emulator_factory, tmp_path, ctx):
    """AUTHENTICATE PLAIN 'alice\\0demo\\0demo' (demo's valid password,
    asking to act as alice, whose pool is another): refused; neither pool
    sees a login for alice; 'demo\\0demo\\0demo' is fine and lands on
    demo's pool (the authentication identity's)."""
    old = emulator_factory(record=True)
    new = emulator_factory(record=True, flags=["--users", "demo:demo,alice:alicepw"])
    proxy = routed(proxy_factory, tmp_path, old.plain_port, "demo default\nalice new\n",
                   extra={"backend.new": {"servers": ops.addr(new.plain_port)}})
    mark = proxy.log.mark()
    bad = base64.b64encode(b"alice\0demo\0demo").decode()
    good = base64.b64encode(b"demo\0demo\0demo").decode()
    with session(proxy, ctx) as c:
        tagged = c.command("A", "AUTHENTICATE PLAIN " + bad)[1]
        assert tagged.startswith((b"A NO", b"A BAD")), tagged
        assert c.command("S", "SELECT INBOX")[1] == b"S BAD Log in first\r\n"
        c.write(b"B AUTHENTICATE PLAIN\r\n")
        assert c.read_line() == b"+ \r\n"
        c.write(bad.encode() + b"\r\n")
        tagged = c.read_until_tagged("B")[1]
        assert tagged.startswith((b"B NO", b"B BAD")), tagged
        assert c.command("C", "AUTHENTICATE PLAIN " + good)[1].startswith(b"C OK")
    assert not [r for r in new.records() if "alice" in r.get("line", "").lower()]
    assert backend_opens(new) == 0
    proxy.log.wait_for(r"login: login ok result=ok user=demo .*pool=default$", since=mark)


def test_bad_base64_and_malformed_plain(proxy_factory, emulator_factory, tmp_path, ctx):
    """AUTHENTICATE PLAIN with invalid base64, with two fields, with an
    empty user: each is refused by the proxy, the session stays, no
    backend login is made for it."""
    emu = emulator_factory(record=True)
    proxy = routed(proxy_factory, tmp_path, emu.plain_port)
    cases = ["!!!not-base64!!!", "ZGVtbw=",  # bad padding
             base64.b64encode(b"\0demo").decode(),
             base64.b64encode(b"\0\0demo").decode(),
             base64.b64encode(b"\0demo\0demo\0extra").decode()]
    with session(proxy, ctx) as c:
        for i, ir in enumerate(cases):
            tag = "A%d" % i
            tagged = c.command(tag, "AUTHENTICATE PLAIN " + ir)[1]
            assert tagged.startswith(((tag + " NO").encode(), (tag + " BAD").encode())), (
                ir, tagged)
        assert c.command("n", "NOOP")[1] == b"n OK NOOP completed\r\n"
        assert c.command("S", "SELECT INBOX")[1] == b"S BAD Log in first\r\n"
    assert not [n for n in command_names(emu) if n in ("LOGIN", "AUTHENTICATE")]


def test_case_and_at_tricks_route_as_documented(proxy_factory, emulator_factory, tmp_path, ctx):
    """ignore_case (default yes) and the last '@': ALICE@EXAMPLE.ORG is
    alice@example.org (pool new); 'bob@sales.example.org@evil.example'
    takes the domain after the last @ (not routed: NO, same as a wrong
    password); 'x@evil.example@sales.example.org' is in *@sales (new)."""
    old = emulator_factory(record=True)
    new = emulator_factory(record=True)
    proxy = routed(proxy_factory, tmp_path, old.plain_port,
                   "alice@example.org new\n*@sales.example.org new\ndemo default\n",
                   extra={"backend.new": {"servers": ops.addr(new.plain_port)}})
    expect = [("ALICE@EXAMPLE.ORG", "new"), ("x@evil.example@sales.example.org", "new"),
              ("bob@sales.example.org@evil.example", None), ("Demo", "default")]
    for user, pool in expect:
        mark = proxy.log.mark()
        with session(proxy, ctx) as c:
            tagged = c.command("L", "LOGIN %s %s" % (h_quote(user), SECRET))[1]
            if pool is None:
                assert tagged == b"L NO [AUTHENTICATIONFAILED] Authentication failed\r\n", tagged
                proxy.log.wait_for(r"login-first login not sent .*reason=\"user not routed\"",
                                   since=mark)
            else:
                assert tagged.startswith(b"L NO"), tagged
                proxy.log.wait_for(r"login: login-first route .*pool=%s\b" % pool, since=mark)
    assert SECRET not in proxy.log.text()


def h_quote(s):
    return '"%s"' % s


def test_nul_in_user_literal_does_not_forge_plain(proxy_factory, tmp_path, ctx):
    """A user name literal 'demo\\0alice' (NUL is PLAIN's separator) routed
    to a backend that offers AUTH=PLAIN: no PLAIN message can carry it, so
    the proxy refuses it itself (the backend sees nothing), rather than
    forging 'demo' as the user or 'alice' as an authorization identity."""
    seen = []

    def backend(conn):
        conn.sendall(b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] plain ready\r\n")
        while True:
            line = h.recv_line(conn)
            if not line:
                return
            seen.append(line)
            tag = line.split(b" ", 1)[0]
            if line.rstrip().upper().endswith(b"AUTHENTICATE PLAIN"):
                conn.sendall(b"+ \r\n")
                seen.append(h.recv_line(conn))
            conn.sendall(tag + b" NO [AUTHENTICATIONFAILED] no\r\n")

    fake = h.FakeBackend(backend)
    try:
        proxy = routed(proxy_factory, tmp_path, fake.port, "demo default\n",
                       extra={"route": {"default": "default"}})
        with session(proxy, ctx) as c:
            user = b"demo\0alice"
            c.write(b"L LOGIN {%d+}\r\n" % len(user) + user + b" pw\r\n")
            tagged = c.read_until_tagged("L")[1]
            assert tagged == b"L NO [AUTHENTICATIONFAILED] Authentication failed\r\n", tagged
        proxy.log.wait_for(r"login-first login not sent .*reason=\"credentials no IMAP form "
                           r"can carry\"", timeout=5)
        assert seen == [], seen
    finally:
        fake.stop()


def test_long_password_byte_by_byte_refused(proxy_factory, emulator_factory, tmp_path, ctx):
    """A 10,000-octet password as a quoted string, one octet per TLS record:
    refused (over 1,024 octets) without reaching the backend, never
    logged, and the session survives or ends with a clear line."""
    emu = emulator_factory(record=True)
    proxy = routed(proxy_factory, tmp_path, emu.plain_port)
    pw = (SECRET * 500)[:10000].encode()
    data = b'L LOGIN demo "' + pw + b'"\r\n'
    with session(proxy, ctx) as c:
        for i in range(len(data)):
            c.write(data[i:i + 1])
        tagged = c.read_until_tagged("L", timeout=20)[1]
        assert tagged.startswith(b"L BAD"), tagged
        assert c.command("n", "NOOP")[1] == b"n OK NOOP completed\r\n"
    assert not [n for n in command_names(emu) if n in ("LOGIN", "AUTHENTICATE")]
    assert SECRET not in proxy.log.text()


def test_login_split_at_every_byte(proxy_factory, emulator_factory, tmp_path, ctx):
    """LOGIN with literals and a pipelined SELECT, one octet per TLS record:
    logged in, SELECT answered after the login."""
    emu = emulator_factory()
    proxy = routed(proxy_factory, tmp_path, emu.plain_port)
    data = b"L LOGIN {4+}\r\ndemo \"demo\"\r\nS SELECT INBOX\r\n"
    with session(proxy, ctx) as c:
        for i in range(len(data)):
            c.write(data[i:i + 1])
        assert c.read_until_tagged("L")[1].startswith(b"L OK")
        assert c.read_until_tagged("S")[1].startswith(b"S OK")


def test_secrets_not_in_logs_or_metrics(proxy_factory, emulator_factory, tmp_path, ctx):
    """Debug level: wrong passwords by LOGIN (quoted, literal, 8-bit),
    AUTHENTICATE PLAIN by continuation and cancelled, a password in the
    user-name slot of an unrouted user: neither the passwords nor the SASL
    payloads appear in the log or on /metrics."""
    emu = emulator_factory()
    proxy = routed(proxy_factory, tmp_path, emu.plain_port, admin=True)
    eight = SECRET.encode() + b"\xe9\xff"
    cont = base64.b64encode(b"\0demo\0" + SECRET.encode() + b"2")
    with session(proxy, ctx) as c:
        assert c.command("a", 'LOGIN "demo" "%s1"' % SECRET)[1].startswith(b"a NO")
        c.write(b"b LOGIN demo {%d+}\r\n" % len(eight) + eight + b"\r\n")
        assert c.read_until_tagged("b")[1].startswith(b"b NO")
        c.write(b"c AUTHENTICATE PLAIN\r\n")
        assert c.read_line() == b"+ \r\n"
        c.write(cont + b"\r\n")
        assert c.read_until_tagged("c")[1].startswith(b"c NO")
        c.write(b"d AUTHENTICATE PLAIN\r\n")
        assert c.read_line() == b"+ \r\n"
        c.write(b"*\r\n")
        c.read_until_tagged("d")
        assert c.command("e", "LOGIN %s3 x" % SECRET)[1].startswith(b"e NO")
        assert c.command("f", "LOGIN demo demo")[1].startswith(b"f OK")
    metrics = ops.http_get(proxy.admin, "/metrics").body
    text = proxy.log.text()
    assert "debug" in text
    for needle in (SECRET + "1", SECRET + "2", cont.decode(), base64.b64encode(eight).decode()):
        assert needle not in text, needle
        assert needle.encode() not in metrics, needle
    assert eight not in proxy.log.text().encode("latin-1", "replace")


def test_after_ok_relays_append_fetch_idle(proxy_factory, emulator_factory, tmp_path, ctx):
    """After a login-first OK: APPEND {N+} then FETCH give the same bytes;
    IDLE sees an EXISTS caused by another session, DONE ends it."""
    emu = emulator_factory()
    proxy = routed(proxy_factory, tmp_path, emu.plain_port)
    body = b"Subject: a4\r\n\r\n" + os.urandom(300).hex().encode() + b"\r\n"
    with session(proxy, ctx) as a:
        assert a.command("L", "LOGIN demo demo")[1].startswith(b"L OK")
        a.write(b"P APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
        assert a.read_until_tagged("P")[1].startswith(b"P OK")
        untagged, tagged = a.command("S", "SELECT INBOX")
        assert tagged.startswith(b"S OK")
        n = int([u for u in untagged if u.endswith(b"EXISTS\r\n")][0].split()[1])
        untagged, tagged = a.command("F", "FETCH %d BODY.PEEK[]" % n)
        assert tagged.startswith(b"F OK") and body in untagged, untagged
        a.write(b"I IDLE\r\n")
        assert a.read_line().startswith(b"+ ")
        with session(proxy, ctx) as b:
            assert b.command("L", "LOGIN demo demo")[1].startswith(b"L OK")
            b.write(b"P APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
            assert b.read_until_tagged("P")[1].startswith(b"P OK")
        assert a.read_line() == b"* %d EXISTS\r\n" % (n + 1)
        a.write(b"DONE\r\n")
        assert a.read_until_tagged("I")[1].startswith(b"I OK")


def test_user_with_crlf_and_quotes_cannot_inject_into_backend(proxy_factory, emulator_factory,
                                                              tmp_path, ctx):
    """A user name literal holding '" "x"', CRLF and a whole SELECT line,
    routed by [route] default: the backend's LOGIN must carry it as one
    string (a literal) or the proxy must refuse it; the backend never
    frames a SELECT. A password with quotes, a backslash and a space is
    escaped correctly (the login succeeds)."""
    pw = 'q"u\\o te'
    emu = emulator_factory(record=True, flags=["--users", "demo:" + pw])
    proxy = routed(proxy_factory, tmp_path, emu.plain_port, "demo default\n",
                   extra={"route": {"default": "default"}})
    evil = b'demo" "x"\r\nX SELECT INBOX\r\nY LOGIN "demo'
    with session(proxy, ctx) as c:
        c.write(b"L LOGIN {%d+}\r\n" % len(evil) + evil + b" pw\r\n")
        tagged = c.read_until_tagged("L")[1]
        assert tagged.startswith((b"L NO", b"L BAD")), tagged
        assert c.command("S", "SELECT INBOX")[1] == b"S BAD Log in first\r\n"
        quoted = pw.replace("\\", "\\\\").replace('"', '\\"')
        assert c.command("M", 'LOGIN demo "%s"' % quoted)[1].startswith(b"M OK")
    records = emu.records()
    assert "SELECT" not in command_names(emu), records
    # The whole user name went as one literal of its length.
    i = next(i for i, r in enumerate(records) if "LOGIN" in r.get("line", ""))
    assert re.match(r"^imf\d+ LOGIN \{%d\+?\}$" % len(evil), records[i]["line"]), records
    assert records[i + 1].get("literal") == len(evil), records


def test_second_login_while_first_pending(proxy_factory, held, emulator_factory, tmp_path, ctx):
    """'A LOGIN demo' pending and 'B LOGIN alice' (another pool) pipelined,
    then 'A NOOP' reusing the pending tag: the first tagged answer for A is
    the login's; B does not move the session to alice's pool nor change
    its user; the session stays demo's."""
    b = held()
    new = emulator_factory(record=True, flags=["--users", "alice:alicepw"])
    proxy = routed(proxy_factory, tmp_path, b.port, "demo default\nalice new\n",
                   extra={"backend.new": {"servers": ops.addr(new.plain_port)}})
    mark = proxy.log.mark()
    with session(proxy, ctx) as c:
        c.write(b"A LOGIN demo demo\r\nB LOGIN alice alicepw\r\nA NOOP\r\n")
        assert b.got_login.wait(5)
        b.release()
        assert c.read_until_tagged("A")[1] == b"A OK [CAPABILITY IMAP4rev1 LITERAL+] Logged in\r\n"
        tagged = c.read_until_tagged("B")[1]
        assert not tagged.startswith(b"B OK [CAPABILITY"), tagged
        c.read_until_tagged("A")
        c.command("Z", "LOGOUT")
        c.expect_eof()
    assert backend_opens(new) == 0
    m = proxy.log.wait_for(r"\bsession: closed (.*)$", since=mark, timeout=5)
    assert h.parse_kv(m.group(1))["user"] == "demo"


def test_sasl_continuation_that_is_a_command(proxy_factory, emulator_factory, tmp_path, ctx):
    """After AUTHENTICATE PLAIN's '+', the client sends 'X SELECT INBOX'
    instead of base64: the exchange ends (BAD or NO), X is never answered
    as a command, and nothing reaches the backend."""
    emu = emulator_factory(record=True)
    proxy = routed(proxy_factory, tmp_path, emu.plain_port)
    with session(proxy, ctx) as c:
        c.write(b"A AUTHENTICATE PLAIN\r\n")
        assert c.read_line() == b"+ \r\n"
        c.write(b"X SELECT INBOX\r\n")
        items, tagged = c.read_until_tagged("A")
        assert tagged.startswith((b"A BAD", b"A NO")), tagged
        items2, tagged = c.command("n", "NOOP")
        assert tagged == b"n OK NOOP completed\r\n"
        assert not any(l.startswith(b"X ") for l in items + items2), (items, items2)
    assert backend_opens(emu) == 0


@pytest.mark.parametrize("cmd", ["AUTHENTICATE LOGIN", "AUTHENTICATE CRAM-MD5",
                                 "AUTHENTICATE XOAUTH2 dXNlcj1kZW1vAWF1dGg9QmVhcmVyIHgBAQ==",
                                 "AUTHENTICATE", "LOGIN demo", "LOGIN demo demo extra"])
def test_other_mechanisms_and_bad_login_forms(cmd, proxy_factory, emulator_factory, tmp_path,
                                              ctx):
    """Mechanisms the lobby does not take, and malformed LOGINs: a tagged
    NO or BAD, no backend contact, the session stays logged out."""
    emu = emulator_factory(record=True)
    proxy = routed(proxy_factory, tmp_path, emu.plain_port)
    with session(proxy, ctx) as c:
        tagged = c.command("A", cmd)[1]
        assert tagged.startswith((b"A NO", b"A BAD")), tagged
        assert c.command("S", "SELECT INBOX")[1] == b"S BAD Log in first\r\n"
    assert backend_opens(emu) == 0


def test_lobby_id_never_reaches_backend(proxy_factory, emulator_factory, tmp_path, ctx):
    """A client's ID before login claiming an address: answered by the
    proxy (* ID NIL); after login the backend framed no ID carrying it."""
    emu = emulator_factory(record=True)
    proxy = routed(proxy_factory, tmp_path, emu.plain_port,
                   extra={"backend": {"forward_client_ip": "id"}})
    with session(proxy, ctx) as c:
        untagged, tagged = c.command("I", 'ID ("x-originating-ip" "203.0.113.9")')
        assert untagged == [b"* ID NIL\r\n"] and tagged == b"I OK ID completed\r\n"
        assert c.command("L", "LOGIN demo demo")[1].startswith(b"L OK")
        assert c.command("N", "NOOP")[1].startswith(b"N OK")
    lines = [r.get("line", "") for r in emu.records()]
    assert any(" ID " in l and "127.0.0.1" in l for l in lines), lines
    assert not any("203.0.113.9" in l for l in lines), lines


def lines_until(c, tag, timeout):
    """(lines before, the tagged line or how the stream ended) within
    timeout seconds."""
    deadline = time.monotonic() + timeout
    items = []
    while True:
        try:
            line = c.read_line(max(deadline - time.monotonic(), 0.001))
        except (h.Closed, socket.timeout) as e:
            return items, repr(e).encode()
        if line.startswith(tag.encode() + b" "):
            return items, line
        items.append(line)


def broken_backend(mode):
    """A backend that breaks the protocol around the login:
    'long-greeting'  a 100,000-octet greeting line;
    'preauth'        greets with PREAUTH;
    'huge-literal'   answers the login with an untagged {999999999999};
    'wrong-tag'      answers the login with the client's usual tag 'L OK';
    'continuation'   answers the quoted LOGIN with '+ go on'."""

    def serve(conn):
        if mode == "long-greeting":
            conn.sendall(b"* OK " + b"x" * 100000 + b"\r\n")
        elif mode == "preauth":
            conn.sendall(b"* PREAUTH [CAPABILITY IMAP4rev1] welcome\r\n")
        else:
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1] broken ready\r\n")
        line = h.recv_line(conn)
        if not line:
            return
        if mode == "huge-literal":
            conn.sendall(b"* 1 FETCH (BODY[] {999999999999}\r\n" + b"y" * 1000)
        elif mode == "wrong-tag":
            conn.sendall(b"L OK [CAPABILITY IMAP4rev1] Logged in\r\n")
        elif mode == "continuation":
            conn.sendall(b"+ go on\r\n")
        conn.settimeout(10)
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass

    return h.FakeBackend(serve)


@pytest.mark.parametrize("mode", ["long-greeting", "preauth", "huge-literal", "wrong-tag"])
def test_broken_backend_during_login(mode, proxy_factory, tmp_path, ctx):
    """Each breakage: the client gets NO [UNAVAILABLE] at once (documented:
    a server that greets with PREAUTH or breaks the protocol during the
    login), is not logged in, a log line says why, the proxy stays up.
    (A '+' answer to the LOGIN is in attack4_failing.py.)"""
    fake = broken_backend(mode)
    try:
        proxy = routed(proxy_factory, tmp_path, fake.port, extra={
            "imap": {"preauth_timeout": "4s"},
            "backend": {"connect_timeout": "1s", "queue_timeout": "2s"}})
        mark = proxy.log.mark()
        with session(proxy, ctx) as c:
            t0 = time.monotonic()
            c.write(b"L LOGIN demo demo\r\n")
            items, tagged = lines_until(c, "L", 8)
            waited = time.monotonic() - t0
            assert (items, tagged) == (
                [], b"L NO [UNAVAILABLE] Backend server unavailable, try again later\r\n"), (
                items, tagged, waited)
            assert waited < 3, waited  # well before preauth_timeout
            assert c.command("S", "SELECT INBOX")[1] == b"S BAD Log in first\r\n"
        proxy.check_alive()
        proxy.log.wait_for(r"login-first (backend closed|login not sent) .*reason=", since=mark)
    finally:
        fake.stop()


def test_password_length_boundary(proxy_factory, emulator_factory, tmp_path, ctx):
    """A 1,024-octet password (the documented limit) logs in, as a quoted
    string and as a literal; 1,025 octets are refused without a backend
    login."""
    pw = ("k" * 1024)
    emu = emulator_factory(record=True, flags=["--users", "demo:" + pw])
    proxy = routed(proxy_factory, tmp_path, emu.plain_port)
    with session(proxy, ctx) as c:
        assert c.command("L", 'LOGIN demo "%s"' % pw)[1].startswith(b"L OK")
    with session(proxy, ctx) as c:
        c.write(b"L LOGIN demo {1024+}\r\n" + pw.encode() + b"\r\n")
        assert c.read_until_tagged("L")[1].startswith(b"L OK")
    logins = len([n for n in command_names(emu) if n in ("LOGIN", "AUTHENTICATE")])
    with session(proxy, ctx) as c:
        c.write(b"L LOGIN demo {1025+}\r\n" + pw.encode() + b"k\r\n")
        assert c.read_until_tagged("L")[1].startswith(b"L BAD [TOOBIG]")
        assert c.command("n", "NOOP")[1] == b"n OK NOOP completed\r\n"
    assert len([n for n in command_names(emu) if n in ("LOGIN", "AUTHENTICATE")]) == logins


EXCHANGE55 = ("Microsoft Exchange Server IMAP4rev1 server version 5.5.2653.23 "
              "(mail.example.org) ready")


def test_shields_apply_after_login_first(proxy_factory, emulator_factory, tmp_path, ctx):
    """The legacy pool greets like Exchange 5.5, drops a connection that
    gets more than one command line in one read (--bug-chain 1) and has no
    LITERAL+: after a login-first login, commands pipelined with the
    LOGIN and an APPEND {N+} reach it one at a time and as {N}, so nothing
    is lost."""
    emu = emulator_factory(record=True, flags=["--greeting", EXCHANGE55, "--bug-chain", "1",
                                               "--no-literal-plus"])
    proxy = routed(proxy_factory, tmp_path, emu.plain_port)
    body = b"Subject: shield\r\n\r\nthrough the shields\r\n"
    with session(proxy, ctx) as c:
        c.write(b"L LOGIN demo demo\r\nN1 NOOP\r\nN2 NOOP\r\nS SELECT INBOX\r\n"
                b"A APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\nN3 NOOP\r\n")
        for tag in ("L", "N1", "N2", "S", "A", "N3"):
            tagged = c.read_until_tagged(tag)[1]
            assert tagged.startswith(tag.encode() + b" OK"), (tag, tagged)
        untagged, tagged = c.command("F", "FETCH * BODY.PEEK[]")
        assert tagged.startswith(b"F OK") and body in untagged, untagged
    assert not emu.log.find(r"\bclose\b.*chain"), emu.log.text()
    assert any(r.get("line", "").endswith("{%d}" % len(body)) for r in emu.records())


# ------------------------------------------------------ retries and races ----

def test_retry_wrong_then_other_pool(proxy_factory, emulator_factory, tmp_path, ctx):
    """alice (pool new) with a wrong password, then demo (default) right on
    the same connection: the session ends up on the default pool, the new
    pool saw only alice's login."""
    old = emulator_factory(record=True)
    new = emulator_factory(record=True, flags=["--users", "alice:alicepw"])
    proxy = routed(proxy_factory, tmp_path, old.plain_port, "demo default\nalice new\n",
                   extra={"backend.new": {"servers": ops.addr(new.plain_port)}})
    mark = proxy.log.mark()
    with session(proxy, ctx) as c:
        assert c.command("A", "LOGIN alice %s" % SECRET)[1].startswith(b"A NO")
        assert c.command("D", "LOGIN demo demo")[1].startswith(b"D OK")
        assert c.command("S", "SELECT INBOX")[1].startswith(b"S OK")
    assert command_names(new).count("LOGIN") == 1
    assert "SELECT" not in command_names(new) and "SELECT" in command_names(old)
    proxy.log.wait_for(r"login-first backend closed .*reason=\"a retry routed to another pool\"",
                       since=mark)


def test_hangup_while_login_pending(proxy_factory, held, tmp_path, ctx):
    """The client hangs up while the backend has not answered its login:
    the proxy closes the backend connection and logs the session's end."""
    b = held(hold=10.0)
    proxy = routed(proxy_factory, tmp_path, b.port)
    mark = proxy.log.mark()
    c = session(proxy, ctx)
    c.write(b"L LOGIN demo demo\r\n")
    assert b.got_login.wait(5)
    c.close()
    assert b.eof.wait(5), "the backend connection stayed open after the client left"
    assert ops.closes(proxy, mark)


def test_logout_while_login_pending(proxy_factory, held, tmp_path, ctx):
    """LOGOUT pipelined behind a pending login waits for it, then runs."""
    b = held()
    proxy = routed(proxy_factory, tmp_path, b.port)
    with session(proxy, ctx) as c:
        c.write(b"L LOGIN demo demo\r\nZ LOGOUT\r\n")
        assert b.got_login.wait(5)
        b.release()
        assert c.read_until_tagged("L")[1].startswith(b"L OK")
        assert c.read_until_tagged("Z")[1].startswith(b"Z OK")


def test_map_edit_while_login_pending(proxy_factory, held, emulator_factory, tmp_path, ctx):
    """demo's login is pending on the default pool when the map moves demo
    to pool new: that session stays on default; the next login goes new."""
    b = held()
    new = emulator_factory()
    proxy = routed(proxy_factory, tmp_path, b.port, "demo default\n",
                   extra={"backend.new": {"servers": ops.addr(new.plain_port)}})
    with session(proxy, ctx) as c:
        c.write(b"L LOGIN demo demo\r\n")
        assert b.got_login.wait(5)
        m2 = proxy.log.mark()
        write(proxy.map_path, "demo new\n")
        proxy.log.wait_for(r"route map .*: 1 entries", since=m2, timeout=10)
        b.release()
        assert c.read_until_tagged("L")[1].startswith(b"L OK")
        assert c.command("N", "NOOP")[1] == b"N OK done\r\n"
    mark = proxy.log.mark()
    with session(proxy, ctx) as d:
        assert d.command("L", "LOGIN demo demo")[1].startswith(b"L OK")
    proxy.log.wait_for(r"login: login ok result=ok user=demo .*pool=new$", since=mark)


def test_sigterm_while_login_pending(proxy_factory, held, tmp_path, ctx):
    """SIGTERM with drain_timeout = 1s while a login is pending: the client
    gets a BYE (or its answer) within the drain time and the proxy exits."""
    b = held(hold=20.0)
    proxy = routed(proxy_factory, tmp_path, b.port, extra={"proxy": {"drain_timeout": "1s"}})
    c = session(proxy, ctx)
    try:
        c.write(b"L LOGIN demo demo\r\n")
        assert b.got_login.wait(5)
        t0 = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        how, got = c.expect_eof(timeout=8)
        waited = time.monotonic() - t0
        assert b"* BYE" in got or b"L NO" in got, got
        assert waited < 5, waited
        assert ops.wait_exit(proxy, 5) == 0
    finally:
        c.close()


def test_sighup_while_login_pending(proxy_factory, held, tmp_path, ctx):
    """A reload while a login is pending: the login completes, the session
    relays."""
    b = held()
    proxy = routed(proxy_factory, tmp_path, b.port)
    with session(proxy, ctx) as c:
        c.write(b"L LOGIN demo demo\r\n")
        assert b.got_login.wait(5)
        ops.sighup(proxy, ops.RELOADED)
        b.release()
        assert c.read_until_tagged("L")[1].startswith(b"L OK")
        assert c.command("N", "NOOP")[1] == b"N OK done\r\n"


def test_backend_never_greets_ends_by_preauth_timeout(proxy_factory, tmp_path, ctx):
    """A pool server that accepts TCP and never greets: the client's login
    cannot outlast preauth_timeout (3s here), a documented deadline that
    nothing extends; the client gets a NO or a BYE by then."""
    silent = h.FakeBackend(lambda conn: conn.recv(65536))
    try:
        proxy = routed(proxy_factory, tmp_path, silent.port, extra={
            "imap": {"preauth_timeout": "3s"}, "backend": {"connect_timeout": "1s"}})
        with session(proxy, ctx) as c:
            t0 = time.monotonic()
            c.write(b"L LOGIN demo demo\r\n")
            try:
                line = c.read_line(timeout=8)
            except (h.Closed, socket.timeout) as e:
                line = repr(e).encode()
            waited = time.monotonic() - t0
            assert line.startswith((b"L NO", b"* BYE")), (line, waited, proxy.tail())
            assert waited < 6, waited
    finally:
        silent.stop()


def test_backend_hangs_during_login_is_bounded(proxy_factory, held, tmp_path, ctx):
    """A server that greets, reads the LOGIN and never answers: the client
    must not wait forever. The only documented bound before login is
    preauth_timeout (3s here): the client gets a NO or BYE by then."""
    b = held(hold=15.0)
    proxy = routed(proxy_factory, tmp_path, b.port, extra={
        "imap": {"preauth_timeout": "3s"}, "backend": {"connect_timeout": "1s"}})
    with session(proxy, ctx) as c:
        t0 = time.monotonic()
        c.write(b"L LOGIN demo demo\r\n")
        try:
            line = c.read_line(timeout=8)
        except (h.Closed, socket.timeout) as e:
            line = repr(e).encode()
        waited = time.monotonic() - t0
        assert line.startswith((b"L NO", b"* BYE")), (line, waited)
        assert waited < 6, waited


def test_throttle_ban_holds_through_lobby(proxy_factory, emulator_factory, tmp_path, ctx):
    """fail_ban = 2: two wrong guesses (LOGIN, then AUTHENTICATE with the
    user in another case), then the right password is refused by the proxy
    itself and the backend sees no third login."""
    emu = emulator_factory(record=True)
    proxy = routed(proxy_factory, tmp_path, emu.plain_port, extra={
        "login": {"fail_free": "2", "fail_ban": "2"}})
    with session(proxy, ctx) as c:
        assert c.command("a", "LOGIN demo %s1" % SECRET)[1].startswith(b"a NO")
        ir = base64.b64encode(b"\0DEMO\0" + SECRET.encode() + b"2").decode()
        assert c.command("b", "AUTHENTICATE PLAIN " + ir)[1].startswith(b"b NO")
        before = [n for n in command_names(emu) if n in ("LOGIN", "AUTHENTICATE")]
        tagged = c.command("c", "LOGIN demo demo", timeout=20)[1]
        assert tagged == b"c NO [AUTHENTICATIONFAILED] Authentication failed\r\n", tagged
    after = [n for n in command_names(emu) if n in ("LOGIN", "AUTHENTICATE")]
    assert len(before) == 2 and after == before, (before, after)
    proxy.log.wait_for(r"login: login failed result=throttled user=demo", timeout=5)


def test_hangup_during_pending_login_counts_as_failure(proxy_factory, held, tmp_path, ctx):
    """fail_ban = 1: a client that hangs up while its guess is with the
    backend has still used its guess (documented); its next attempt is
    refused by the proxy without a backend login."""
    b = held()
    proxy = routed(proxy_factory, tmp_path, b.port, extra={
        "login": {"fail_free": "0", "fail_ban": "1", "delay_max": "0"}})
    c = session(proxy, ctx)
    c.write(b"L LOGIN demo %s\r\n" % SECRET.encode())
    assert b.got_login.wait(5)
    c.close()
    assert b.eof.wait(5)
    with session(proxy, ctx) as d:
        tagged = d.command("M", "LOGIN demo %s2" % SECRET, timeout=15)[1]
        assert tagged == b"M NO [AUTHENTICATIONFAILED] Authentication failed\r\n", tagged
    assert b.logins == 1


def test_parallel_guesses_capped_by_fail_ban(proxy_factory, emulator_factory, tmp_path, ctx):
    """fail_ban = 2 and one failure recorded: six sessions guessing at the
    same moment get at most one more guess to the backend."""
    emu = emulator_factory(record=True)
    proxy = routed(proxy_factory, tmp_path, emu.plain_port, extra={
        "login": {"fail_free": "10", "fail_ban": "2"}})
    with session(proxy, ctx) as c:
        assert c.command("a", "LOGIN demo %s0" % SECRET)[1].startswith(b"a NO")
    clients = [session(proxy, ctx) for _ in range(6)]
    try:
        for i, c in enumerate(clients):
            c.write(b"P LOGIN demo %s%d\r\n" % (SECRET.encode(), i + 1))
        answers = [c.read_until_tagged("P", timeout=15)[1] for c in clients]
    finally:
        for c in clients:
            c.close()
    assert all(a.startswith(b"P NO") for a in answers), answers
    logins = [n for n in command_names(emu) if n in ("LOGIN", "AUTHENTICATE")]
    assert len(logins) <= 2, logins


def test_pool_removed_by_reload_never_falls_back(proxy_factory, emulator_factory, tmp_path, ctx):
    """The operator removes [backend.new] and reloads while the map still
    sends alice there: either the reload is refused (alice still reaches
    new), or alice gets NO [UNAVAILABLE]; her password never goes to the
    legacy pool."""
    old = emulator_factory(record=True)
    new = emulator_factory(record=True, flags=["--users", "alice:alicepw"])
    proxy = routed(proxy_factory, tmp_path, old.plain_port, "alice new\ndemo default\n",
                   extra={"backend.new": {"servers": ops.addr(new.plain_port)}})
    ops.rewrite_ini(proxy, drop=("backend.new",))
    m = ops.sighup(proxy, r"(%s|%s)" % (ops.RELOADED, ops.RELOAD_FAILED))
    with session(proxy, ctx) as c:
        tagged = c.command("A", "LOGIN alice alicepw")[1]
        if "reload failed" in m.group(0):
            assert tagged.startswith(b"A OK"), tagged
        else:
            assert tagged.startswith(b"A NO [UNAVAILABLE]"), (tagged, proxy.tail())
    assert not [r for r in old.records() if "alice" in r.get("line", "")]


def test_map_with_unknown_pool_keeps_running_map(proxy_factory, emulator_factory, tmp_path, ctx):
    """The map is edited to name a pool the configuration lacks: the
    running map stays (alice still reaches new), the log says FILE:LINE."""
    old = emulator_factory(record=True)
    new = emulator_factory(flags=["--users", "alice:alicepw"])
    proxy = routed(proxy_factory, tmp_path, old.plain_port, "alice new\ndemo default\n",
                   extra={"backend.new": {"servers": ops.addr(new.plain_port)}})
    mark = proxy.log.mark()
    write(proxy.map_path, "demo default\nalice nosuchpool\n")
    proxy.log.wait_for(r"route\.map:2: ", since=mark, timeout=10)
    with session(proxy, ctx) as c:
        assert c.command("A", "LOGIN alice alicepw")[1].startswith(b"A OK")
    assert not [r for r in old.records() if "alice" in r.get("line", "")]


def test_pipelined_guesses_and_unrouted_users_are_throttled(proxy_factory, emulator_factory,
                                                             tmp_path, ctx):
    """fail_ban = 3: ten wrong LOGINs for demo pipelined in one write get
    at most three to the backend; guesses for a user the map does not
    route count too (with distinct passwords: a repeated one counts once),
    the fourth is answered by the throttle."""
    emu = emulator_factory(record=True)
    proxy = routed(proxy_factory, tmp_path, emu.plain_port, extra={
        "login": {"fail_free": "10", "fail_ban": "3"}})
    with session(proxy, ctx) as c:
        c.write(b"".join(b"P%d LOGIN demo %s%d\r\n" % (i, SECRET.encode(), i)
                         for i in range(10)))
        answers = [c.read_until_tagged("P%d" % i, timeout=20)[1] for i in range(10)]
    assert all(b" NO " in a for a in answers), answers
    logins = [n for n in command_names(emu) if n in ("LOGIN", "AUTHENTICATE")]
    assert len(logins) <= 3, logins
    mark = proxy.log.mark()
    with session(proxy, ctx) as c:
        for i in range(4):
            tagged = c.command("U%d" % i, "LOGIN stranger %s%d" % (SECRET, i), timeout=20)[1]
            assert tagged == b"U%d NO [AUTHENTICATIONFAILED] Authentication failed\r\n" % i
    proxy.log.wait_for(r"login: login failed result=throttled user=stranger", since=mark,
                       timeout=5)


# ------------------------------------------------------ backend TLS, names ----

def expired_cert(directory):
    """A self-signed certificate for localhost / 127.0.0.1 that expired
    yesterday (made with python3-cryptography)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.utcnow()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30))
            .not_valid_after(now - datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cp, kp = os.path.join(directory, "expired-cert.pem"), os.path.join(directory, "expired-key.pem")
    with open(cp, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(kp, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    return cp, kp


@pytest.mark.parametrize("case", ["expired", "wrong-name", "pin", "plaintext", "unresolvable",
                                  "control"])
def test_tls_pool_failures_answer_no(case, proxy_factory, emulator_factory, workdir, cert,
                                     tmp_path, ctx):
    """alice's pool 'new' is reached over TLS and is broken in one way: the
    login gets NO [UNAVAILABLE], a log line says why, no credentials reach
    that server in plaintext, and the session can still log in demo on the
    legacy pool. 'control' is the same pool working."""
    old = emulator_factory()
    if case == "expired":
        ec, ek = expired_cert(str(tmp_path))
        emu = h.Emulator(workdir, ec, ek, flags=["--users", "alice:alicepw"], record=True)
        pool = {"servers": "localhost:%d" % emu.tls_port, "tls": "on", "tls_ca_file": ec}
        reason = r"TLS handshake failed: CERTIFICATE_VERIFY_FAILED \(certificate has expired\)"
    else:
        emu = emulator_factory(flags=["--users", "alice:alicepw"], record=True)
        pool = {"servers": "localhost:%d" % emu.tls_port, "tls": "on", "tls_ca_file": cert[0]}
    try:
        if case == "wrong-name":
            pool["tls_server_name"] = "mail.example.org"
            reason = r"TLS handshake failed: CERTIFICATE_VERIFY_FAILED \(Hostname mismatch\)"
        elif case == "pin":
            pool["tls_pin_sha256"] = "00" * 32
            reason = r"TLS pin mismatch: expected "
        elif case == "plaintext":
            pool["servers"] = "localhost:%d" % emu.plain_port
            reason = r"(TLS handshake failed|connect timeout \(in the TLS handshake\))"
        elif case == "unresolvable":
            pool["servers"] = "nonexistent.invalid:993"
            reason = r"cannot resolve nonexistent\.invalid: "
        pool.update({"connect_timeout": "2s", "queue_timeout": "3s", "down_after": "5"})
        proxy = routed(proxy_factory, tmp_path, old.plain_port, "alice new\ndemo default\n",
                       extra={"backend.new": pool})
        mark = proxy.log.mark()
        with session(proxy, ctx) as c:
            tagged = c.command("A", "LOGIN alice alicepw", timeout=15)[1]
            if case == "control":
                assert tagged.startswith(b"A OK"), tagged
                return
            assert tagged.startswith(b"A NO [UNAVAILABLE]"), tagged
            assert c.command("D", "LOGIN demo demo")[1].startswith(b"D OK")
            assert c.command("S", "SELECT INBOX")[1].startswith(b"S OK")
        proxy.log.wait_for(r"connect failed .*reason=\"%s" % reason, since=mark, timeout=5)
        assert not [n for n in command_names(emu) if n in ("LOGIN", "AUTHENTICATE")]
    finally:
        if case == "expired":
            emu.stop()


def starttls_fake(mode, cert):
    """A backend on a tls = starttls pool that misbehaves:
    'no-offer'  greets without STARTTLS and refuses it (a MITM stripping it);
    'fake-ok'   answers OK to STARTTLS but stays in plaintext, offering login;
    'inject'    answers OK with a forged CAPABILITY line in the same
                segment before TLS, then does real TLS.
    Records every plaintext line it reads in .plain."""
    plain = []

    def serve(conn):
        conn.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] stripped ready\r\n")
        line = h.recv_line(conn)
        plain.append(line)
        tag = line.split(b" ", 1)[0]
        if mode == "no-offer":
            conn.sendall(tag + b" BAD unknown command\r\n")
        elif mode == "fake-ok":
            conn.sendall(tag + b" OK Begin TLS negotiation now\r\n")
        else:
            conn.sendall(tag + b" OK Begin TLS negotiation now\r\n"
                         b"* CAPABILITY IMAP4rev1 AUTH=PLAIN XINJECTED\r\n")
            sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            sctx.load_cert_chain(cert[0], cert[1])
            try:
                t = sctx.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                return
            t.settimeout(10)
            while True:
                line = h.recv_line(t)
                if not line:
                    return
                tag, rest = (line.split(b" ", 1) + [b""])[:2]
                if rest.upper().startswith(b"CAPABILITY"):
                    t.sendall(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n")
                else:
                    t.sendall(tag + b" OK [CAPABILITY IMAP4rev1] done\r\n")
        while True:
            line = h.recv_line(conn)
            if not line:
                return
            plain.append(line)
            conn.sendall(line.split(b" ", 1)[0] + b" OK whatever\r\n")

    fake = h.FakeBackend(serve)
    fake.plain = plain
    return fake


@pytest.mark.parametrize("mode", ["no-offer", "fake-ok"])
def test_starttls_stripping_never_falls_back(mode, proxy_factory, emulator_factory, cert,
                                             tmp_path, ctx):
    """A tls = starttls pool whose server (or a MITM) does not do STARTTLS:
    the proxy must not send the credentials in plaintext; the client gets
    NO [UNAVAILABLE] and a log line says why."""
    old = emulator_factory()
    fake = starttls_fake(mode, cert)
    try:
        proxy = routed(proxy_factory, tmp_path, old.plain_port, "alice new\ndemo default\n",
                       extra={"backend.new": {"servers": ops.addr(fake.port), "tls": "starttls",
                                              "tls_ca_file": cert[0], "connect_timeout": "2s",
                                              "queue_timeout": "3s"}})
        mark = proxy.log.mark()
        with session(proxy, ctx) as c:
            tagged = c.command("A", "LOGIN alice %s" % SECRET, timeout=15)[1]
            assert tagged.startswith(b"A NO [UNAVAILABLE]"), tagged
        proxy.log.wait_for(r"connect failed .*backend=%s reason=" % ops.addr(fake.port),
                           since=mark, timeout=5)
        assert fake.plain and fake.plain[0].split()[1].upper() == b"STARTTLS", fake.plain
        assert not any(SECRET.encode() in l or b"LOGIN" in l.upper() or
                       b"AUTHENTICATE" in l.upper() for l in fake.plain), fake.plain
    finally:
        fake.stop()


def test_starttls_response_injection_ignored(proxy_factory, emulator_factory, cert, tmp_path,
                                             ctx):
    """A MITM appends '* CAPABILITY ... XINJECTED' after the server's
    STARTTLS OK, in plaintext: the proxy must not believe it (the
    capabilities come from CAPABILITY asked under TLS), so the client never
    sees XINJECTED; refusing the server is also acceptable."""
    old = emulator_factory()
    fake = starttls_fake("inject", cert)
    try:
        proxy = routed(proxy_factory, tmp_path, old.plain_port, "alice new\ndemo default\n",
                       extra={"backend.new": {"servers": ops.addr(fake.port), "tls": "starttls",
                                              "tls_ca_file": cert[0], "connect_timeout": "2s",
                                              "queue_timeout": "3s"}})
        with session(proxy, ctx) as c:
            untagged, tagged = c.command("A", "LOGIN alice alicepw", timeout=15)
            assert b"XINJECTED" not in tagged + b"".join(untagged), (untagged, tagged)
            if tagged.startswith(b"A OK"):
                untagged, tagged = c.command("C", "CAPABILITY")
                assert b"XINJECTED" not in tagged + b"".join(untagged), untagged
            else:
                assert tagged.startswith(b"A NO [UNAVAILABLE]"), tagged
    finally:
        fake.stop()


# Found failing by the attack and fixed since: each docstring says what it was.


def test_backend_never_greets_answers_within_connect_timeout(proxy_factory, tmp_path, ctx):
    """Input: a login-first session's pool server accepts TCP and never
    sends a byte; connect_timeout = 500ms, queue_timeout = 1s,
    preauth_timeout left at its 60s default; the client sends
    'L LOGIN demo demo'.

    Expected: 'L NO [UNAVAILABLE] ...' within about a second, with a
    'login-first login not sent' (or 'connect failed') log line, as for an
    unreachable pool. docs/configuration.md counts a connect "from the SYN
    until the server's first bytes (its greeting)" (max_connecting), the
    TLS negotiation of a TLS pool counts in connect_timeout, and the
    [route] section promises NO [UNAVAILABLE] for "no server reachable".

    Was: no answer until preauth_timeout (60 s), in transparent sessions too.
    Now connect_timeout runs on until the greeting: past it the connect
    counts as timed out and the client gets the answer for no backend."""
    silent = h.FakeBackend(lambda conn: conn.recv(65536))
    try:
        proxy = routed(proxy_factory, tmp_path, silent.port, extra={
            "backend": {"connect_timeout": "500ms", "queue_timeout": "1s"}})
        mark = proxy.log.mark()
        with session(proxy, ctx) as c:
            t0 = time.monotonic()
            try:
                tagged = c.command("L", "LOGIN demo demo", timeout=15)[1]
            except socket.timeout:
                tagged = b"(no answer in 15s)"
            waited = time.monotonic() - t0
            assert tagged.startswith(b"L NO [UNAVAILABLE]"), (tagged, proxy.tail())
            assert waited < 4, waited
            assert c.command("n", "NOOP")[1] == b"n OK NOOP completed\r\n"
        proxy.log.wait_for(r"login-first login not sent .*reason=", since=mark)
    finally:
        silent.stop()



def test_backend_continuation_to_login_is_a_protocol_break(proxy_factory, tmp_path, ctx):
    """Input: the pool server greets, reads the proxy's 'imfN LOGIN "demo"
    "demo"' (quoted: no literal was announced) and answers '+ go on', then
    sends nothing more; preauth_timeout = 4s.

    Expected: 'L NO [UNAVAILABLE] Backend server unavailable, try again
    later' at once and a 'login-first backend closed' log line:
    docs/configuration.md [route] says a server that "breaks the protocol
    during the login gets NO [UNAVAILABLE]", and a continuation request
    to a command without a literal or SASL exchange is such a break (a
    PREAUTH greeting, an over-long greeting, a huge untagged literal and a
    tagged answer under a foreign tag all get that NO at once:
    test_attack4.py::test_broken_backend_during_login).

    Was: the '+' was ignored and the client waited until preauth_timeout.
    Now a continuation request nothing asked for is a protocol error of
    the backend client."""
    def serve(conn):
        conn.sendall(b"* OK [CAPABILITY IMAP4rev1] broken ready\r\n")
        if h.recv_line(conn):
            conn.sendall(b"+ go on\r\n")
        conn.settimeout(10)
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass

    fake = h.FakeBackend(serve)
    try:
        proxy = routed(proxy_factory, tmp_path, fake.port, extra={
            "imap": {"preauth_timeout": "4s"},
            "backend": {"connect_timeout": "1s", "queue_timeout": "2s"}})
        mark = proxy.log.mark()
        with session(proxy, ctx) as c:
            t0 = time.monotonic()
            c.write(b"L LOGIN demo demo\r\n")
            try:
                line = c.read_line(timeout=8)
            except (h.Closed, socket.timeout) as e:
                line = repr(e).encode()
            waited = time.monotonic() - t0
            assert line == b"L NO [UNAVAILABLE] Backend server unavailable, try again later\r\n", (
                line, waited)
            assert waited < 3, waited
        proxy.log.wait_for(r"login-first backend closed .*reason=", since=mark)
    finally:
        fake.stop()


def test_transparent_backend_never_greets(proxy_factory, ctx):
    """A transparent session's server accepts and never greets: within
    connect_timeout (plus slack) the client gets * BYE [UNAVAILABLE] and
    the log a 'connect failed' line that says why."""
    silent = h.FakeBackend(lambda conn: conn.recv(65536))
    try:
        proxy = ops.start_proxy(proxy_factory, silent.port, extra={
            "backend": {"connect_timeout": "500ms", "queue_timeout": "1s"}})
        mark = proxy.log.mark()
        t0 = time.monotonic()
        with h.TLSClient(proxy.port, ctx, timeout=10) as c:
            line = c.read_line(timeout=10)
        assert line == b"* BYE [UNAVAILABLE] Backend server unavailable\r\n", line
        assert time.monotonic() - t0 < 4
        proxy.log.wait_for(r"warn backend: connect failed .*reason=\"no greeting within "
                           r"connect_timeout \(500 ms\)\"", since=mark)
        proxy.check_alive()
    finally:
        silent.stop()
