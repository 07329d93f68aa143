"""Q239082: the legacy server hangs when the end of an APPEND literal and
the command's CRLF arrive in one TLS read. The emulator's TLS port has the
bug; imapfront, terminating TLS in front of its plain port, shields it."""

import socket

import pytest

import imapfront_harness as h

BODY = b"hello"


def append_in_one_record(client):
    """LOGIN, then 'A APPEND INBOX {5}', wait for '+', then the literal and
    the CRLF in ONE TLS record."""
    h.login(client)
    client.write(b"A APPEND INBOX {5}\r\n")
    cont = client.read_line(timeout=5)
    assert cont.startswith(b"+"), cont
    client.write(BODY + b"\r\n")  # one SSL_write: one record


def test_bug_is_real_on_the_emulators_tls_port(emulator, ctx):
    with h.TLSClient(emulator.tls_port, ctx) as c:
        append_in_one_record(c)
        with pytest.raises(socket.timeout):
            _, tagged = c.read_until_tagged("A", timeout=3)
            pytest.fail("the emulator answered %r: its Q239082 bug is gone" % tagged)


def test_same_client_through_imapfront_succeeds(emulator, proxy, ctx):
    with h.TLSClient(proxy.port, ctx) as c:
        append_in_one_record(c)
        _, tagged = c.read_until_tagged("A", timeout=3)
        assert tagged.startswith(b"A OK"), tagged
        assert h.fetch_appended(c, tagged) == BODY
        _, tagged = c.command("Z", "LOGOUT")
        assert tagged.startswith(b"Z OK"), tagged


def test_many_appends_in_one_record_each_through_imapfront(emulator, proxy, ctx):
    """Twenty APPENDs in a row, each literal end glued to its CRLF, plus a
    pipelined {N+} one where the whole command is one record."""
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
        for i in range(20):
            body = b"message %d\r\nend\r" % i
            c.write(b"A%d APPEND INBOX {%d}\r\n" % (i, len(body)))
            assert c.read_line(timeout=5).startswith(b"+")
            c.write(body + b"\r\n")
            _, tagged = c.read_until_tagged("A%d" % i, timeout=3)
            assert tagged.startswith(b"A%d OK" % i), tagged
        c.write(b"P APPEND INBOX {5+}\r\n" + BODY + b"\r\n")
        _, tagged = c.read_until_tagged("P", timeout=3)
        assert tagged.startswith(b"P OK"), tagged
        assert h.fetch_appended(c, tagged) == BODY
