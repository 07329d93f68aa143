"""Login-first sessions (issue 14): with [route] configured the proxy
greets the client itself, answers it until a login, logs in to the routed
pool's backend for it and then relays as a transparent session does."""

import imaplib
import re
import socket
import ssl
import time

import imapfront_harness as h
import ops_support as ops

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
    proxy.log.wait_for(r"login: login ok result=ok user=demo .*backend=127\.0\.0\.1:%d"
                       % emu.plain_port, since=mark)


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
    import base64
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
