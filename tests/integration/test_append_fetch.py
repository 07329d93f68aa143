"""A real client (Python's imaplib over TLS) through imapfront to the
emulator's plain port: APPEND messages of many sizes and adversarial
contents, FETCH them back, compare SHA-256. Only the IMAP conversation is
checked, never the emulator's files."""

import hashlib
import imaplib
import re

import pytest

import imapfront_harness as h

SIZES = [0, 1, 2, 1000, 65535, 65536, 65537, 1 << 20, 16 << 20]

# Bodies that look like framing to a careless parser. imaplib rewrites bare
# CR and LF to CRLF, so these are CRLF-clean; the bare-CR one goes by hand.
ADVERSARIAL = {
    "ends-in-crlf": b"Subject: a\r\n\r\nbody line\r\n",
    "brace-crlf": b"Subject: b\r\n\r\nx {5}\r\n}\r\n{0}\r\n}\r\n",
    "tagged-ok": b"Subject: c\r\n\r\nA1 OK done\r\nA1 OK APPEND completed\r\n",
    "untagged-capability": b"* CAPABILITY IMAP4rev1 STARTTLS\r\n* BYE\r\n",
    "literal-plus-inside": b"A2 APPEND INBOX {3+}\r\nabc\r\nA3 LOGOUT\r\n",
}


@pytest.fixture(scope="module")
def stack(workdir, cert, need_bin):
    """One emulator and one imapfront in front of it for the module."""
    emu = h.Emulator(workdir, cert[0], cert[1])
    try:
        proxy = h.Proxy(workdir, cert[0], cert[1], emu.plain_port)
    except Exception:
        emu.stop()
        raise
    yield emu, proxy
    proxy.stop()
    emu.stop()


@pytest.fixture
def imap(stack, ctx):
    _, proxy = stack
    client = imaplib.IMAP4_SSL("127.0.0.1", proxy.port, ssl_context=ctx, timeout=60)
    typ, _ = client.login("demo", "demo")
    assert typ == "OK"
    yield client
    try:
        client.logout()
    except (imaplib.IMAP4.abort, OSError):
        pass


def sha(data):
    return hashlib.sha256(data).hexdigest()


def appended_uid(imap, data):
    """The UID of the message just appended: from [APPENDUID v uid] when the
    server sends it, else the UID of the last message in INBOX."""
    text = b" ".join(d for d in data if isinstance(d, bytes))
    m = re.search(rb"\[APPENDUID \d+ (\d+)\]", text)
    if m:
        return m.group(1).decode()
    typ, data = imap.select("INBOX")
    assert typ == "OK", data
    count = int(data[0])
    typ, data = imap.fetch(str(count), "(UID)")
    assert typ == "OK", data
    m = re.search(rb"UID (\d+)", data[0])
    assert m, data
    return m.group(1).decode()


def fetch_body(imap, uid):
    typ, _ = imap.select("INBOX", readonly=True)
    assert typ == "OK"
    typ, data = imap.uid("FETCH", uid, "(BODY.PEEK[])")
    assert typ == "OK", data
    parts = [d for d in data if isinstance(d, tuple)]
    assert len(parts) == 1, data
    head, body = parts[0]
    assert b"BODY[]" in head, head
    return body


def append_and_fetch(imap, body):
    typ, data = imap.append("INBOX", None, None, body)
    assert typ == "OK", data
    uid = appended_uid(imap, data)
    return fetch_body(imap, uid)


@pytest.mark.parametrize("size", SIZES, ids=[str(s) for s in SIZES])
def test_append_fetch_size(imap, size):
    if size > (1 << 16):
        body = h.fast_body(size, seed=size)
    else:
        body = h.message_body(size, seed=size)
    assert len(body) == size
    got = append_and_fetch(imap, body)
    assert len(got) == size
    assert sha(got) == sha(body)


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_append_fetch_adversarial(imap, name):
    body = ADVERSARIAL[name]
    got = append_and_fetch(imap, body)
    assert sha(got) == sha(body), got


def test_append_fetch_bare_cr_ending(stack, ctx):
    """A body ending in a bare CR (not expressible through imaplib, which
    rewrites it): the literal's last octet is CR and the command's CRLF
    follows, which is as close to Q239082 as a body gets."""
    _, proxy = stack
    body = b"Subject: d\r\n\r\nends in CR\r"
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
        c.write(b"A APPEND INBOX {%d}\r\n" % len(body))
        assert c.read_line().startswith(b"+")
        c.write(body + b"\r\n")
        _, tagged = c.read_until_tagged("A")
        assert tagged.startswith(b"A OK"), tagged
        got = h.fetch_appended(c, tagged)
        assert sha(got) == sha(body), got
        c.command("Z", "LOGOUT")


def test_all_sizes_in_one_session_and_session_closed_clean(stack, ctx):
    """The same sizes again, back to back on one connection, ending with
    LOGOUT; imapfront's counters return to zero afterwards."""
    _, proxy = stack
    client = imaplib.IMAP4_SSL("127.0.0.1", proxy.port, ssl_context=ctx, timeout=60)
    client.login("demo", "demo")
    for size in SIZES[:-1]:
        body = h.message_body(size, seed=1000 + size) if size <= 65537 else \
            h.fast_body(size, seed=1000 + size)
        assert sha(append_and_fetch(client, body)) == sha(body)
    typ, _ = client.logout()
    assert typ == "BYE"
    stats = proxy.wait_stats(lambda s: s.get("sessions_active") == 0, what="no active session")
    assert stats.get("chain_bytes") == 0 and stats.get("chain_links") == 0, stats
