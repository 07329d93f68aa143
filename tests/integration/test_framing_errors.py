"""Bad framing from a client gets a clear IMAP answer (RFC 7888 for
oversized literals), the session goes on where the stream can be
resynchronised and ends with * BYE where it cannot, and another session is
not disturbed meanwhile."""

import pytest

import imapfront_harness as h

LIMITS = {"imap": {"max_literal_size": "1M", "max_line_length": "64k"}}


@pytest.fixture
def limited(emulator, proxy_factory):
    return proxy_factory(emulator.plain_port, extra=LIMITS)


@pytest.fixture
def bystander(limited, ctx):
    """A logged-in session that must stay healthy through every test."""
    c = h.TLSClient(limited.port, ctx)
    h.login(c, tag="B0")
    yield c
    # It still works after whatever the test did to the other session.
    _, tagged = c.command("B1", "NOOP")
    assert tagged.startswith(b"B1 OK"), tagged
    body = b"Subject: bystander\r\n\r\nstill here\r\n"
    tagged = h.append(c, "B2", body)
    assert tagged.startswith(b"B2 OK"), tagged
    assert h.fetch_appended(c, tagged) == body
    _, tagged = c.command("B3", "LOGOUT")
    assert tagged.startswith(b"B3 OK"), tagged
    c.close()


def assert_bye_and_close(c):
    how, rest = c.expect_eof(timeout=5)
    assert rest.startswith(b"* BYE"), rest


def test_sync_literal_too_big_refused_before_sending(limited, bystander, ctx):
    with h.TLSClient(limited.port, ctx) as c:
        h.login(c)
        c.write(b"A APPEND INBOX {99999999999}\r\n")
        line = c.read_line(timeout=5)
        assert line.startswith(b"A NO [TOOBIG]"), line
        _, tagged = c.command("N", "NOOP")
        assert tagged.startswith(b"N OK"), tagged


def test_nonsync_literal_too_big_discarded(limited, bystander, ctx):
    n = (1 << 20) + 1
    with h.TLSClient(limited.port, ctx) as c:
        h.login(c)
        # The octets look like commands; they must be discarded, not run.
        octets = (b"X1 LOGOUT\r\n" * (n // 11 + 1))[:n]
        c.write(b"B APPEND INBOX {%d+}\r\n" % n + octets + b"\r\n")
        untagged, tagged = c.read_until_tagged("B", timeout=10)
        assert tagged.startswith(b"B BAD [TOOBIG]"), tagged
        assert not any(l.startswith(b"X1") or l.startswith(b"* BYE") for l in untagged), untagged
        _, tagged = c.command("N", "NOOP")
        assert tagged.startswith(b"N OK"), tagged
        body = b"Subject: after toobig\r\n\r\nok\r\n"
        tagged = h.append(c, "P", body)
        assert tagged.startswith(b"P OK"), tagged
        assert h.fetch_appended(c, tagged) == body


@pytest.mark.parametrize("announcement", [b"{1x}", b"{18446744073709551616}"],
                         ids=["malformed", "overflow"])
def test_bad_literal_announcement_bye(limited, bystander, ctx, announcement):
    with h.TLSClient(limited.port, ctx) as c:
        c.read_line()
        c.write(b"C LOGIN " + announcement + b"\r\n")
        assert_bye_and_close(c)


def test_line_too_long_bye(limited, bystander, ctx):
    mark = limited.log.mark()
    with h.TLSClient(limited.port, ctx) as c:
        c.read_line()
        c.write(b"D NOOP " + b"a" * (100 << 10))
        assert_bye_and_close(c)
    limited.log.wait_for(r"session: closed .*reason=line-too-long", since=mark, timeout=5)
