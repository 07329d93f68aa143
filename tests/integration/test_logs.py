"""Logs: `log_format = json` is one JSON object per line (ts, level,
subsys, msg and the line's key/value fields), `text` one line per event;
levels filter; and no password or AUTHENTICATE payload reaches the log at
any level, debug included, whichever way the client sends it."""

import base64
import json
import re
import socket

import pytest

import imapfront_harness as h
import ops_support as ops

USER = "alice"
PASSWORD = "Tr0ub4dor&3-xyzzy-9f2c"
WRONG = "n0t-the-Passw0rd-71e4"
WRONG2 = "an0ther-Wr0ng-One-8c3d"
LEVELS = ("error", "warn", "info", "debug")
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (error|warn|info|debug) "
                       r"[a-z]+: \S.*$")


@pytest.fixture
def json_proxy(workdir, cert, need_bin):
    """Like proxy_factory, with log_format = json from the start."""
    started = []

    def start(backend_port, extra=None):
        p = ops.JSONProxy(workdir, cert[0], cert[1], backend_port, extra=extra)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


TOKEN = "ya29.b3arer-T0ken-5e1d"
XOAUTH2 = base64.b64encode(("user=bob\x01auth=Bearer %s\x01\x01" % TOKEN).encode())


def secrets():
    """Every form of the secrets a log could leak."""
    out = {PASSWORD, WRONG, WRONG2, TOKEN, XOAUTH2.decode()}
    for pw in (PASSWORD, WRONG, WRONG2):
        for authz in ("", USER):
            blob = ("%s\0%s\0%s" % (authz, USER, pw)).encode()
            out.add(base64.b64encode(blob).decode())
        out.add(base64.b64encode(pw.encode()).decode())
    return out


def run(proxy, ctx, tag, steps):
    """A session: greeting, then steps of (bytes to send, expect "+"
    first?) ending with the tagged reply for tag; returns that reply."""
    with h.TLSClient(proxy.port, ctx) as c:
        c.read_line()
        for data, wait_plus in steps:
            c.write(data)
            if wait_plus:
                line = c.read_line()
                assert line.startswith(b"+"), line
        _, tagged = c.read_until_tagged(tag)
        c.command("Z", "LOGOUT")
        return tagged


def every_login_form(proxy, ctx):
    pw = PASSWORD.encode()
    plain = base64.b64encode(b"\0alice\0" + pw)
    plain_authz = base64.b64encode(b"alice\0alice\0" + pw)
    wrong = base64.b64encode(b"\0alice\0" + WRONG.encode())
    cases = [
        ("a", [(b'a LOGIN alice "%s"\r\n' % pw, False)], b"a OK"),
        ("b", [(b"b LOGIN alice {%d}\r\n" % len(pw), True), (pw + b"\r\n", False)], b"b OK"),
        ("c", [(b"c LOGIN {5+}\r\nalice {%d+}\r\n%s\r\n" % (len(pw), pw), False)], b"c OK"),
        ("d", [(b"d AUTHENTICATE PLAIN %s\r\n" % plain, False)], b"d OK"),
        ("e", [(b"e AUTHENTICATE PLAIN\r\n", True), (plain_authz + b"\r\n", False)], b"e OK"),
        ("f", [(b'f LOGIN alice "%s"\r\n' % WRONG.encode(), False)], b"f NO"),
        ("g", [(b"g AUTHENTICATE PLAIN\r\n", True), (wrong + b"\r\n", False)], b"g NO"),
        # The emulator knows PLAIN only: a NO with its response text.
        ("h", [(b"h AUTHENTICATE XOAUTH2 %s\r\n" % XOAUTH2, False)], b"h NO"),
        # [login] fail_ban = 2: f and g sent the same wrong password (one
        # failure), i another (two), so j and k are the proxy's: j's payload
        # is replaced by a cancel, k never reaches the backend.
        ("i", [(b"i LOGIN alice {%d+}\r\n%s\r\n" % (len(WRONG2), WRONG2.encode()), False)],
         b"i NO"),
        ("j", [(b"j AUTHENTICATE PLAIN\r\n", True), (wrong + b"\r\n", False)], b"j "),
        ("k", [(b'k LOGIN alice "%s"\r\n' % WRONG2.encode(), False)],
         b"k NO [AUTHENTICATIONFAILED]"),
    ]
    for tag, steps, expect in cases:
        tagged = run(proxy, ctx, tag, steps)
        assert tagged.startswith(expect), (tag, tagged)


def login_records(proxy, fmt):
    """The fields of the login lines, in order, from either format."""
    if fmt == "json":
        return [r for r in map(json.loads, proxy.log.lines()) if r["subsys"] == "login"]
    return [h.parse_kv(m.group(1)) for m in re.finditer(r" login: login (?:ok|failed)( .*)$",
                                                        proxy.log.text(), re.M)]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_secret_in_debug_logs(emulator_factory, json_proxy, proxy_factory, ctx, fmt):
    emulator = emulator_factory(flags=("--users", "%s:%s" % (USER, PASSWORD)))
    start = json_proxy if fmt == "json" else proxy_factory
    proxy = start(emulator.plain_port, extra={"proxy": {"log_level": "debug"},
                                              "login": {"fail_ban": "2", "delay_max": "0"}})
    every_login_form(proxy, ctx)
    proxy.proc.send_signal(2)  # SIGINT: drain and stop, so the log is complete
    assert ops.wait_exit(proxy, 10) == 0
    text = proxy.log.text()
    leaked = [s for s in secrets() if s in text]
    assert not leaked, "secrets in the log: %r" % leaked
    # One login line per attempt, with what it may say: who, how, the
    # verdict, the backend's text on failure; nothing else of the exchange.
    logins = login_records(proxy, fmt)
    got = [(r["result"], r["user"], r["authz"], r["mech"]) for r in logins]
    assert got == [("ok", USER, "-", "LOGIN")] * 3 + [
        ("ok", USER, "-", "PLAIN"), ("ok", USER, USER, "PLAIN"),
        ("failed", USER, "-", "LOGIN"), ("failed", USER, "-", "PLAIN"),
        ("failed", "bob", "-", "XOAUTH2"), ("failed", USER, "-", "LOGIN"),
        ("throttled", USER, "-", "PLAIN"), ("throttled", USER, "-", "LOGIN")], got
    for r in logins:
        assert re.match(r"^127\.0\.0\.1:\d+$", r["client"]), r
        assert r["tls"].startswith("TLSv1."), r
        if r["result"] == "failed":
            assert r["response"] not in ("", "-") and r["backend"] != "-", r
        if r["result"] == "throttled":
            assert r["backend"] == "-", r
        line = " ".join(r.values())
        assert not [s for s in secrets() if s in line], r
    # It was a debug log, and it did log each command (tag and name only).
    for tag, name in (("a", "LOGIN"), ("b", "LOGIN"), ("c", "LOGIN"), ("d", "AUTHENTICATE"),
                      ("e", "AUTHENTICATE"), ("g", "AUTHENTICATE"), ("h", "AUTHENTICATE"),
                      ("i", "LOGIN")):
        assert re.search(r"command tag=%s name=%s\b" % (tag, name), text), (tag, name)
    assert " debug " in text or '"level":"debug"' in text


def test_json_log_one_object_per_line(emulator, json_proxy, ctx):
    proxy = json_proxy(emulator.plain_port, extra={"proxy": {"log_level": "debug"}})
    with h.TLSClient(proxy.port, ctx) as c:
        local = "127.0.0.1:%d" % c.sock.getsockname()[1]
        h.login(c)
        c.command("Z", "LOGOUT")
        c.expect_eof()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b'a LOGIN "quoted \\" value" x\r\n')  # not TLS: a warning with a quote
        ops.wait_closed(s)
    proxy.proc.send_signal(15)
    assert ops.wait_exit(proxy, 10) == 0
    records = []
    for no, line in enumerate(proxy.log.lines(), 1):
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise AssertionError("line %d is not JSON (%s): %r" % (no, e, line)) from None
        assert isinstance(obj, dict), line
        for key in ("ts", "level", "subsys", "msg"):
            assert isinstance(obj.get(key), str), (key, line)
        assert obj["level"] in LEVELS, line
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", obj["ts"]), line
        records.append(obj)
    closed = [r for r in records if r["subsys"] == "session" and r["msg"] == "closed"]
    mine = [r for r in closed if r.get("client") == local]
    assert len(mine) == 1, closed
    assert mine[0]["reason"] == "logout" and mine[0]["listener"] == "imaps", mine[0]
    assert mine[0]["backend"] == "127.0.0.1:%d" % emulator.plain_port, mine[0]
    assert int(mine[0]["bytes_in"]) > 0, mine[0]
    listening = [r for r in records if r["subsys"] == "listener" and r["msg"] == "listening"]
    assert listening and listening[0]["name"] == "imaps", listening
    assert any(r["level"] == "debug" for r in records)
    assert any(r["subsys"] == "tls" and r["level"] == "warn" for r in records), records
    assert records[-1]["msg"] == "stopped", records[-1]


def test_text_log_lines_and_levels(emulator, proxy_factory, ctx):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port)  # info, text
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
    h.wait_until(lambda: proxy.closed_lines(0), 5, "a summary line")
    # Down to warnings only, by reload.
    # (The "reloaded" line is info: gone. The admin address change is
    # reported as a warning after the new level applies.)
    mark = proxy.log.mark()
    ops.rewrite_ini(proxy, {"proxy": {"log_level": "warn"},
                            "admin": {"address": "127.0.0.1:%d" % h.free_port()}})
    ops.sighup(proxy, r"\bwarn main: reload: \[admin\] address changed")
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"a NOOP\r\n")  # not TLS: a warning
        ops.wait_closed(s)
    proxy.log.wait_for(r"\bwarn tls: handshake failed ", since=mark)
    after = proxy.log.lines(mark)
    assert not [l for l in after if " info " in l or " debug " in l], after
    for line in proxy.log.lines():
        assert TEXT_LINE.match(line), line
