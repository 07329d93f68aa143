"""Login-first sessions (issue 14): with [route] configured the proxy
greets the client itself, answers it until a login, logs in to the routed
pool's backend for it and then relays as a transparent session does."""

import base64
import re
import hashlib
import imaplib
import os
import shutil
import socket
import subprocess
import time
import uuid

import pytest

import imapfront_harness as h
import ops_support as ops
from dovecot import dovecot, dovecot_factory  # noqa: F401

CURL = shutil.which("curl")
MBSYNC = shutil.which("mbsync")

PASSWORD = "demo"
SECRET = "Wr0ng-S3cret-Never-Logged"


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def start(proxy_factory, emulator_factory, tmp_path, route=None, extra=None, emu=None,
          backend_port=None):
    emu = emu or emulator_factory(record=True)
    path = str(tmp_path / "route.map")
    write(path, "demo default\n*@moved.example default\n")
    sections = {"route": route if route is not None else {"map": path},
                "proxy": {"log_level": "debug"}}
    for k, v in (extra or {}).items():
        sections.setdefault(k, {}).update(v)
    port = backend_port if backend_port is not None else emu.plain_port
    return proxy_factory(port, extra=sections), emu


def session(proxy, ctx):
    c = h.TLSClient(proxy.port, ctx)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def backend_conns(emu):
    return len([l for l in emu.log.lines() if " open " in l])


def test_proxy_greets_and_answers_before_login(proxy_factory, emulator_factory, tmp_path, ctx):
    proxy, emu = start(proxy_factory, emulator_factory, tmp_path)
    with session(proxy, ctx) as c:
        g = c.read_line()
        assert g == (b"* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN] "
                     b"IMAP proxy ready\r\n"), g
        untagged, tagged = c.command("a", "CAPABILITY")
        assert untagged == [b"* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN\r\n"]
        assert tagged == b"a OK CAPABILITY completed\r\n"
        assert c.command("b", "NOOP")[1] == b"b OK NOOP completed\r\n"
        untagged, tagged = c.command("c", 'ID ("name" "test")')
        assert untagged == [b"* ID NIL\r\n"] and tagged == b"c OK ID completed\r\n"
        assert c.command("d", "SELECT INBOX")[1] == b"d BAD Log in first\r\n"
        assert c.command("e", "STARTTLS")[1].startswith(b"e BAD STARTTLS is not available")
        untagged, tagged = c.command("f", "LOGOUT")
        assert untagged == [b"* BYE Logging out\r\n"] and tagged == b"f OK LOGOUT completed\r\n"
        c.expect_eof()
    # No backend connection was made for any of that.
    assert backend_conns(emu) == 0


def test_login_then_relay_append_fetch(proxy_factory, emulator_factory, tmp_path, ctx):
    proxy, emu = start(proxy_factory, emulator_factory, tmp_path)
    mark = proxy.log.mark()
    with session(proxy, ctx) as c:
        c.read_line()
        _, tagged = c.command("L", "LOGIN demo demo")
        assert tagged.startswith(b"L OK"), tagged
        assert b"STARTTLS" not in tagged
        assert c.command("S", "SELECT INBOX")[1].startswith(b"S OK")
        body = b"Subject: lf\r\n\r\nhello login-first\r\n"
        c.write(b"A APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
        assert c.read_until_tagged("A")[1].startswith(b"A OK")
        untagged, tagged = c.command("F", "FETCH * BODY[]")
        assert tagged.startswith(b"F OK")
        assert b"hello login-first" in b"".join(untagged)
        c.command("Z", "LOGOUT")
        c.expect_eof()
    m = proxy.log.wait_for(r"\bsession: closed (.*)$", since=mark, timeout=5)
    kv = h.parse_kv(m.group(1))
    assert kv["user"] == "demo"
    assert kv["backend"] == "127.0.0.1:%d" % emu.plain_port
    proxy.log.wait_for(r"login: login-first route .*user=demo pool=default", since=mark)
    proxy.log.wait_for(r"login: login ok result=ok user=demo .*backend=127\.0\.0\.1:%d .*"
                       r"pool=default$" % emu.plain_port, since=mark)


def test_imaplib_login_and_authenticate(proxy_factory, emulator_factory, tmp_path, ctx):
    proxy, emu = start(proxy_factory, emulator_factory, tmp_path)
    m = imaplib.IMAP4_SSL("127.0.0.1", proxy.port, ssl_context=ctx, timeout=10)
    m.login("demo", "demo")
    typ, _ = m.select("INBOX")
    assert typ == "OK"
    m.logout()
    m = imaplib.IMAP4_SSL("127.0.0.1", proxy.port, ssl_context=ctx, timeout=10)
    typ, _ = m.authenticate("PLAIN", lambda _: b"\0demo\0demo")
    assert typ == "OK"
    assert m.select("INBOX")[0] == "OK"
    m.logout()


def test_wrong_password_then_retry_same_connection(proxy_factory, emulator_factory, tmp_path,
                                                   ctx):
    proxy, emu = start(proxy_factory, emulator_factory, tmp_path)
    with session(proxy, ctx) as c:
        c.read_line()
        _, tagged = c.command("L1", "LOGIN demo %s" % SECRET)
        assert tagged.startswith(b"L1 NO "), tagged
        assert c.command("n", "NOOP")[1] == b"n OK NOOP completed\r\n"
        _, tagged = c.command("L2", "LOGIN demo demo")
        assert tagged.startswith(b"L2 OK"), tagged
        assert c.command("S", "SELECT INBOX")[1].startswith(b"S OK")
    # The retry reused the greeted backend connection.
    assert backend_conns(emu) == 1
    assert SECRET not in proxy.log.text()


def test_login_literals_sync_and_nonsync(proxy_factory, emulator_factory, tmp_path, ctx):
    proxy, emu = start(proxy_factory, emulator_factory, tmp_path)
    with session(proxy, ctx) as c:
        c.read_line()
        c.write(b"L1 LOGIN {4}\r\n")
        assert c.read_line().startswith(b"+ ")
        c.write(b"demo {4}\r\n")
        assert c.read_line().startswith(b"+ ")
        c.write(b"demo\r\n")
        assert c.read_until_tagged("L1")[1].startswith(b"L1 OK")
    with session(proxy, ctx) as c:
        c.read_line()
        c.write(b"L2 LOGIN {4+}\r\ndemo {4+}\r\ndemo\r\n")
        assert c.read_until_tagged("L2")[1].startswith(b"L2 OK")


def test_authenticate_plain_ir_continuation_cancel(proxy_factory, emulator_factory, tmp_path,
                                                   ctx):
    proxy, emu = start(proxy_factory, emulator_factory, tmp_path)
    good = base64.b64encode(b"\0demo\0demo").decode()
    with session(proxy, ctx) as c:
        c.read_line()
        c.write(b"A1 AUTHENTICATE PLAIN\r\n")
        assert c.read_line() == b"+ \r\n"
        c.write(b"*\r\n")
        assert c.read_until_tagged("A1")[1] == b"A1 BAD Authentication cancelled\r\n"
        c.write(b"A2 AUTHENTICATE PLAIN\r\n")
        assert c.read_line() == b"+ \r\n"
        c.write(good.encode() + b"\r\n")
        assert c.read_until_tagged("A2")[1].startswith(b"A2 OK")
    with session(proxy, ctx) as c:
        c.read_line()
        assert c.command("A3", "AUTHENTICATE PLAIN " + good)[1].startswith(b"A3 OK")


def test_pipelined_command_runs_after_login(proxy_factory, emulator_factory, tmp_path, ctx):
    proxy, emu = start(proxy_factory, emulator_factory, tmp_path)
    with session(proxy, ctx) as c:
        c.read_line()
        c.write(b"L LOGIN demo demo\r\nS SELECT INBOX\r\n")
        untagged, tagged = c.read_until_tagged("L")
        assert tagged.startswith(b"L OK"), tagged
        untagged, tagged = c.read_until_tagged("S")
        assert tagged.startswith(b"S OK"), tagged
        assert any(b"EXISTS" in u for u in untagged)


def test_user_not_routed(proxy_factory, emulator_factory, tmp_path, ctx):
    proxy, emu = start(proxy_factory, emulator_factory, tmp_path)
    mark = proxy.log.mark()
    with session(proxy, ctx) as c:
        c.read_line()
        _, tagged = c.command("L", "LOGIN stranger %s" % SECRET)
        # The same answer as a wrong password: no hint of who exists.
        assert tagged == b"L NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
        assert c.command("L2", "LOGIN demo demo")[1].startswith(b"L2 OK")
    proxy.log.wait_for(r"login: login-first login not sent .*reason=\"user not routed\"",
                       since=mark)
    # Its login line names no pool: counting a pool's logins counts no strangers.
    proxy.log.wait_for(r"login: login failed result=failed user=stranger .*pool=-$", since=mark)
    proxy.log.wait_for(r"login: login ok result=ok user=demo .*pool=default$", since=mark)
    assert SECRET not in proxy.log.text()


def test_unreachable_pool(proxy_factory, emulator_factory, tmp_path, ctx):
    dead = h.free_port()
    proxy, emu = start(proxy_factory, emulator_factory, tmp_path, backend_port=dead)
    mark = proxy.log.mark()
    with session(proxy, ctx) as c:
        c.read_line()
        _, tagged = c.command("L", "LOGIN demo demo")
        assert tagged.startswith(b"L NO [UNAVAILABLE]"), tagged
        # The session stays; the client may retry.
        assert c.command("n", "NOOP")[1] == b"n OK NOOP completed\r\n"
    proxy.log.wait_for(r"login: login-first login not sent .*reason=\"no backend server reachable\"",
                       since=mark)


def test_starttls_listener_require_tls(proxy_factory, emulator_factory, tmp_path, ctx):
    proxy, emu = start(proxy_factory, emulator_factory, tmp_path, extra={
        "listen.plain": {"address": "127.0.0.1:0", "mode": "starttls", "require_tls": "yes"}})
    port = ops.listener_port(proxy, "plain")
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rb")
    g = f.readline()
    assert g == (b"* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID STARTTLS LOGINDISABLED] "
                 b"IMAP proxy ready\r\n"), g
    s.sendall(b"L LOGIN demo demo\r\n")
    assert f.readline() == b"L NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"
    s.sendall(b"T STARTTLS\r\n")
    assert f.readline() == b"T OK Begin TLS negotiation now\r\n"
    t = ctx.wrap_socket(s, server_hostname="localhost")
    tf = t.makefile("rb")
    t.sendall(b"c CAPABILITY\r\n")
    assert tf.readline() == b"* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN\r\n"
    assert tf.readline() == b"c OK CAPABILITY completed\r\n"
    t.sendall(b"L LOGIN demo demo\r\n")
    ok = tf.readline()
    assert ok.startswith(b"L OK"), ok
    assert b"STARTTLS" not in ok
    t.close()


# ------------------------------------------------- real clients, two servers ----

@pytest.fixture(params=["emulator", "dovecot"])
def backend(request, emulator_factory):
    """(port, name) of a fresh emulator or of the shared Dovecot (users
    demo/demo on both)."""
    if request.param == "emulator":
        return emulator_factory().plain_port, "emulator"
    return request.getfixturevalue("dovecot").port, "dovecot"


def routed_proxy(proxy_factory, tmp_path, port, extra=None):
    path = str(tmp_path / "route.map")
    write(path, "demo default\n")
    sections = {"route": {"map": path}, "proxy": {"log_level": "debug"}}
    for k, v in (extra or {}).items():
        sections.setdefault(k, {}).update(v)
    return proxy_factory(port, extra=sections)


def test_imaplib_append_fetch(proxy_factory, backend, tmp_path, ctx):
    port, _ = backend
    proxy = routed_proxy(proxy_factory, tmp_path, port)
    token = uuid.uuid4().hex
    msg = b"Subject: lf %s\r\nMessage-ID: <%s@lf>\r\n\r\nbody %s\r\n" % (
        token.encode(), token.encode(), token.encode())
    m = imaplib.IMAP4_SSL("127.0.0.1", proxy.port, ssl_context=ctx, timeout=20)
    assert "AUTH=PLAIN" in m.capabilities
    assert m.login("demo", "demo")[0] == "OK"
    assert m.append("INBOX", None, None, msg)[0] == "OK"
    assert m.select("INBOX")[0] == "OK"
    typ, data = m.search(None, "HEADER", "Message-ID", "<%s@lf>" % token)
    assert typ == "OK" and len(data[0].split()) == 1, data
    typ, data = m.fetch(data[0].split()[0], "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1] == msg, data
    m.logout()


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_append_fetch(proxy_factory, backend, tmp_path, cert):
    port, _ = backend
    proxy = routed_proxy(proxy_factory, tmp_path, port)
    base = "imaps://127.0.0.1:%d" % proxy.port
    common = [CURL, "-sS", "--max-time", "60", "--cacert", cert[0], "-u", "demo:demo"]
    token = uuid.uuid4().hex.encode()
    msg = b"Subject: curl %s\r\nMessage-ID: <%s@lf>\r\n\r\n" % (token, token) + os.urandom(
        64 * 1024).hex().encode() + b"\r\n"
    f = tmp_path / "m.eml"
    f.write_bytes(msg)
    run = lambda args: subprocess.run(args, capture_output=True, timeout=120)  # noqa: E731
    r = run(common + ["-T", str(f), base + "/INBOX"])
    assert r.returncode == 0, r
    r = run(common + ["-X", "UID SEARCH HEADER Message-ID %s@lf" % token.decode(),
                      base + "/INBOX"])
    assert r.returncode == 0, r
    uid = int(r.stdout.split(b"SEARCH")[1].split()[0])
    r = run(common + [base + "/INBOX;UID=%d" % uid])
    assert r.returncode == 0, r
    assert hashlib.sha256(r.stdout).digest() == hashlib.sha256(msg).digest()
    # curl logs in with AUTHENTICATE PLAIN (SASL-IR) when offered.
    proxy.log.wait_for(r"login: login ok result=ok user=demo .*mech=PLAIN", timeout=5)


@pytest.mark.skipif(MBSYNC is None, reason="mbsync (isync) is not installed")
def test_mbsync_up_and_down(proxy_factory, backend, tmp_path, cert):
    port, which = backend
    proxy = routed_proxy(proxy_factory, tmp_path, port)
    box = "LF" + uuid.uuid4().hex[:8]
    up, down = tmp_path / "up", tmp_path / "down"
    for d in ("cur", "new", "tmp"):
        (up / box / d).mkdir(parents=True)
    down.mkdir()
    sent = set()
    for i in range(20):
        data = b"Subject: mb %d\nMessage-ID: <mb%d.%s@lf>\n\n%s\n" % (
            i, i, box.encode(), os.urandom(100 * i + 1).hex().encode())
        (up / box / "new" / ("1700000000.%d_%d.gen" % (i, i))).write_bytes(data)
        sent.add(hashlib.sha256(data).hexdigest())
    for d in (up / box / "new", up / box):
        os.utime(d, (time.time() - 10, time.time() - 10))
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        "IMAPAccount far\nHost localhost\nPort %d\nUser demo\nPass demo\n"
        "SSLType IMAPS\nCertificateFile %s\nTimeout 60\n\n"
        "IMAPStore far\nAccount far\n\n"
        "MaildirStore up\nPath %s/\n\nMaildirStore down\nPath %s/\n\n"
        "Channel up\nFar :far:\nNear :up:\nPatterns %s\nCreate Both\nSync All\n"
        "Expunge None\nSyncState *\n\n"
        "Channel down\nFar :far:\nNear :down:\nPatterns %s\nCreate Both\nSync All\n"
        "Expunge None\nSyncState *\n" % (proxy.port, cert[0], up, down, box, box))
    env = dict(os.environ, HOME=str(tmp_path))
    for channel in ("up", "down"):
        r = subprocess.run([MBSYNC, "-c", str(rc), channel], capture_output=True, env=env,
                           timeout=120)
        assert r.returncode == 0, (channel, r.stdout[-2000:], r.stderr[-2000:], proxy.tail())
    got = set()
    for sub in ("cur", "new"):
        for f in (down / box / sub).iterdir():
            data = f.read_bytes()
            data = b"".join(l for l in data.splitlines(True) if not l.startswith(b"X-TUID: "))
            got.add(hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest())
    assert got == sent


def test_dovecot_sees_the_client_address(proxy_factory, dovecot, tmp_path, ctx):
    """forward_client_ip = id: the proxy's ID goes before the login, and
    Dovecot logs the real client's port."""
    proxy = routed_proxy(proxy_factory, tmp_path, dovecot.port,
                         extra={"backend": {"forward_client_ip": "id"}})
    mark = dovecot.log.mark()
    with session(proxy, ctx) as c:
        c.read_line()
        assert c.command("L", "LOGIN demo demo")[1].startswith(b"L OK")
        client_port = c.sock.getsockname()[1]
        assert c.command("N", "NOOP")[1].startswith(b"N OK")
    logins = h.wait_until(lambda: [kv for kv in dovecot.logins(mark)
                                   if kv.get("rport") == str(client_port)], 10,
                          "dovecot login line with the client's port")
    assert logins[0]["user"] == "demo"


# ------------------------------------------------------------------ attacks ----

def test_attacks_before_login(proxy_factory, emulator_factory, tmp_path, ctx):
    proxy, emu = start(proxy_factory, emulator_factory, tmp_path,
                       extra={"imap": {"max_line_length": "1024"}})
    with session(proxy, ctx) as c:
        c.read_line()
        # Garbage, one line at a time: refused, the session stays.
        c.write(b"\x01\x02garbage\r\n")
        assert c.read_line() == b"* BAD Invalid tag or command line\r\n"
        c.write(b"\r\n")
        assert c.read_line() == b"* BAD Invalid tag or command line\r\n"
        # A tag used twice: nothing is in flight before login; both answered.
        assert c.command("t", "NOOP")[1] == b"t OK NOOP completed\r\n"
        assert c.command("t", "NOOP")[1] == b"t OK NOOP completed\r\n"
        # Commands smuggled inside LOGIN's literals are credentials.
        smuggled = b"x SELECT INBOX\r\n"
        c.write(b"L LOGIN {%d+}\r\n" % len(smuggled) + smuggled + b" {6+}\r\ny NOOP\r\n")
        _, tagged = c.read_until_tagged("L")
        assert tagged == b"L NO [AUTHENTICATIONFAILED] Authentication failed\r\n", tagged
        # A refused command's {N+} literal is swallowed, never a command.
        c.write(b"s SELECT {12+}\r\nz LOGOUT\r\nxx\r\n")
        assert c.read_line() == b"s BAD Log in first\r\n"
        assert c.command("n", "NOOP")[1] == b"n OK NOOP completed\r\n"
        # An over-long line ends the session with a BYE.
        c.write(b"a " + b"A" * 4000 + b"\r\n")
        assert c.read_line() == b"* BYE Command line too long\r\n"
        c.expect_eof()
    # Nothing of that reached the backend: no connection was ever made.
    assert backend_conns(emu) == 0


def test_nothing_secret_in_debug_logs(proxy_factory, emulator_factory, tmp_path, ctx):
    proxy, emu = start(proxy_factory, emulator_factory, tmp_path)
    wrong = SECRET.encode()
    plain = base64.b64encode(b"\0demo\0" + wrong).decode()
    with session(proxy, ctx) as c:
        c.read_line()
        assert c.command("a", "LOGIN demo %s" % SECRET)[1].startswith(b"a NO")
        c.write(b"b LOGIN demo {%d}\r\n" % len(wrong))
        assert c.read_line().startswith(b"+ ")
        c.write(wrong + b"\r\n")
        assert c.read_until_tagged("b")[1].startswith(b"b NO")
        assert c.command("c", "AUTHENTICATE PLAIN " + plain)[1].startswith(b"c NO")
        assert c.command("d", "LOGIN stranger %s" % SECRET)[1].startswith(b"d NO")
        assert c.command("e", "LOGIN demo demo")[1].startswith(b"e OK")
    text = proxy.log.text()
    assert " debug " in text or "debug" in text
    for needle in (SECRET, plain, base64.b64encode(wrong).decode()):
        assert needle not in text, needle


# ------------------------------------------------------------ backend faults ----

def test_backend_bye_or_garbage_then_retry(proxy_factory, tmp_path, ctx):
    """A backend that says BYE to the login, then one that answers garbage:
    each gives the client NO [UNAVAILABLE] and a log line; the next login
    connects again and succeeds."""
    script = iter(["bye", "garbage", "ok"])
    seen = []

    def backend(conn):
        what = next(script)
        conn.sendall(b"* OK [CAPABILITY IMAP4rev1] fake ready\r\n")
        line = h.recv_line(conn)
        seen.append(line)
        tag = line.split(b" ", 1)[0]
        if what == "bye":
            conn.sendall(b"* BYE going away\r\n")
        elif what == "garbage":
            conn.sendall(b"\x00\x01 not imap at all\r\n")
        else:
            conn.sendall(tag + b" OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
            line = h.recv_line(conn)
            conn.sendall(line.split(b" ", 1)[0] + b" OK NOOP done\r\n")
            h.recv_line(conn)
        conn.close()

    fake = h.FakeBackend(backend)
    try:
        path = str(tmp_path / "route.map")
        write(path, "demo default\n")
        proxy = proxy_factory(fake.port, extra={"route": {"map": path}})
        mark = proxy.log.mark()
        with session(proxy, ctx) as c:
            c.read_line()
            for tag in ("L1", "L2"):
                _, tagged = c.command(tag, "LOGIN demo demo")
                assert tagged.startswith(tag.encode() + b" NO [UNAVAILABLE]"), tagged
            _, tagged = c.command("L3", "LOGIN demo demo")
            # Capability hygiene: the proxy's LITERAL+ (it converts {N+}
            # for a backend without it).
            assert tagged == b"L3 OK [CAPABILITY IMAP4rev1 IDLE LITERAL+] Logged in\r\n", tagged
            assert c.command("N", "NOOP")[1] == b"N OK NOOP done\r\n"
        proxy.log.wait_for(r"backend: login-first backend closed .*reason=\"the backend said BYE\"",
                           since=mark)
        proxy.log.wait_for(r"backend: login-first backend closed .*phase=login", since=mark)
        # The backend was logged in to in the form it digests: quoted LOGIN.
        assert all(re.match(rb'^imf\d+ LOGIN "demo" "demo"\r\n$', l) for l in seen), seen
        assert not fake.errors, fake.errors
    finally:
        fake.stop()


def test_failed_logins_are_throttled(proxy_factory, emulator_factory, tmp_path, ctx):
    proxy, emu = start(proxy_factory, emulator_factory, tmp_path,
                       extra={"login": {"fail_free": "1", "fail_ban": "2", "delay_max": "1s"}})
    with session(proxy, ctx) as c:
        c.read_line()
        answers = [c.command("L%d" % i, "LOGIN demo %s%d" % (SECRET, i))[1] for i in range(3)]
    assert all(b" NO " in a for a in answers), answers
    proxy.log.wait_for(r"login: login failed result=throttled user=demo", timeout=5)


def test_queue_timeout_then_retry(proxy_factory, emulator_factory, tmp_path, ctx):
    """max_sessions = 1: a second login waits in the queue, is answered NO
    [UNAVAILABLE] at queue_timeout and logs in once the slot is free."""
    proxy, emu = start(proxy_factory, emulator_factory, tmp_path,
                       extra={"backend": {"max_sessions": "1", "queue_timeout": "1s"}})
    mark = proxy.log.mark()
    first = session(proxy, ctx)
    first.read_line()
    assert first.command("L", "LOGIN demo demo")[1].startswith(b"L OK")
    with session(proxy, ctx) as c:
        c.read_line()
        t0 = time.monotonic()
        _, tagged = c.command("Q", "LOGIN demo demo")
        waited = time.monotonic() - t0
        assert tagged.startswith(b"Q NO [UNAVAILABLE]"), tagged
        assert 0.9 <= waited < 5, waited
        first.command("Z", "LOGOUT")
        first.close()
        assert c.command("R", "LOGIN demo demo")[1].startswith(b"R OK")
    proxy.log.wait_for(r'login-first login not sent .*reason="gave up waiting for a busy backend"',
                       since=mark)


# ---------------------------------------------------------------- migration ----

def test_migration_two_pools(proxy_factory, emulator_factory, dovecot, tmp_path, ctx):
    """The emulator is the legacy pool (default), Dovecot the new one: each
    user reaches its own server; a retry routed to the other pool closes
    the greeted connection and logs in there; a map edit applies to the
    next logins while an open session stays where it is."""
    emu = emulator_factory()
    path = str(tmp_path / "route.map")
    write(path, "alice new\ndemo default\n")
    proxy = proxy_factory(emu.plain_port, extra={
        "route": {"map": path}, "backend.new": {"servers": "127.0.0.1:%d" % dovecot.port}})

    mark = proxy.log.mark()
    with session(proxy, ctx) as a:
        a.read_line()
        assert a.command("A", "LOGIN alice secret")[1].startswith(b"A OK")
        assert a.command("S", "SELECT INBOX")[1].startswith(b"S OK")
        proxy.log.wait_for(r"login: login ok result=ok user=alice .*backend=127\.0\.0\.1:%d "
                           r".*pool=new$" % dovecot.port, since=mark)
        with session(proxy, ctx) as d:
            d.read_line()
            # demo fails on the emulator; alice, on the same connection,
            # goes to Dovecot.
            assert d.command("D1", "LOGIN demo %s" % SECRET)[1].startswith(b"D1 NO")
            assert d.command("D2", "LOGIN alice secret")[1].startswith(b"D2 OK")
        proxy.log.wait_for(r"login-first backend closed .*reason=\"a retry routed to another pool\"",
                           since=mark)
        # The map moves demo to the new pool: the next login follows it,
        # alice's open session is undisturbed.
        m2 = proxy.log.mark()
        with open(path + ".tmp", "w") as f:
            f.write("alice new\ndemo new\n")
        os.replace(path + ".tmp", path)
        proxy.log.wait_for(r"route map %s: 2 entries" % re.escape(path), since=m2, timeout=10)
        with session(proxy, ctx) as d:
            d.read_line()
            assert d.command("D3", "LOGIN demo demo")[1].startswith(b"D3 OK")
        proxy.log.wait_for(r"login: login ok result=ok user=demo .*backend=127\.0\.0\.1:%d "
                           r".*pool=new$" % dovecot.port, since=m2)
        assert a.command("N", "NOOP")[1].startswith(b"N OK")
    assert SECRET not in proxy.log.text()
