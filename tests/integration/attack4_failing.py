"""Attacks on migration routing that FAIL against the current build (not
collected: the name does not start with test_). Run them by path:

    cd build && /usr/bin/python3 -m pytest -q ../tests/integration/attack4_failing.py

Each docstring says the input, what the documentation leads one to expect,
and what was observed. The passing attacks are in test_attack4.py."""

import socket
import time

import imapfront_harness as h
from test_attack4 import routed, session


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

    Observed: no answer at all for 15 s; the debug log shows
    'login-first connecting -> greeting' and nothing more. Only
    preauth_timeout (60 s by default) ends the wait, with '* BYE
    Autologout; no login in time' (test_attack4.py::
    test_backend_never_greets_ends_by_preauth_timeout shows that bound).
    A transparent session behaves the same (checked by hand: the client
    gets only the preauth_timeout BYE, no 'connect failed' line), so the
    wait for a greeting seems to be outside connect_timeout everywhere."""
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

    Observed: the '+' is silently accepted and the client waits with no
    answer until preauth_timeout, then gets '* BYE Autologout; no login in
    time' and the session is closed (reason=preauth-timeout)."""
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
