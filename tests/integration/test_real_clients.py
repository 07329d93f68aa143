"""Real clients through imapfront, against the legacy emulator and against
a real Dovecot, over implicit TLS and over STARTTLS:

* curl: APPEND a file with -T, list mailboxes, find the message by a
  header, fetch it back by UID; the bytes are equal.
* mbsync (isync): 300 generated messages (0 bytes to 2 MiB, some 8-bit)
  synchronised up from a Maildir through imapfront, then down into an
  empty Maildir; the multiset of SHA-256 digests of the bodies is equal.
* Python's imaplib with IMAP4.starttls() and IMAP4_SSL: login, select,
  append, fetch, and IDLE held across several keep-alive intervals with a
  short idle_timeout (the session stays up)."""

import collections
import hashlib
import imaplib
import os
import random
import re
import select
import shutil
import subprocess
import time
import uuid

import pytest

import imapfront_harness as h
from dovecot import dovecot, dovecot_factory, starttls_proxy  # noqa: F401

CURL = shutil.which("curl")
MBSYNC = shutil.which("mbsync")
IDLE_TIMEOUT = 2.0
RUN_TIMEOUT = 120


@pytest.fixture(params=["emulator", "dovecot"])
def backend(request, emulator_factory):
    """(port, user, password, name) of a fresh emulator or of the shared
    Dovecot (tests there find their message by a unique header)."""
    if request.param == "emulator":
        return emulator_factory().plain_port, "demo", "demo", "emulator"
    d = request.getfixturevalue("dovecot")
    return d.port, "demo", "demo", "dovecot"


def front(proxy_factory, port, extra=None):
    """(proxy, implicit TLS port, STARTTLS port) in front of a backend."""
    p, st = starttls_proxy(proxy_factory, port, extra=extra)
    return p, p.port, st


def run(args, timeout=RUN_TIMEOUT, **kw):
    r = subprocess.run(args, capture_output=True, timeout=timeout, **kw)
    return r


def tls_sessions(proxy, mark, listener):
    return [kv for kv in proxy.closed_lines(mark)
            if kv.get("listener") == listener and kv.get("tls", "").startswith("TLSv1.")]


def crlf_message(token, size, seed):
    """A CRLF message with a unique Subject, 8-bit octets in the body."""
    body = h.message_body(size, seed)
    return (b"Subject: curl %s\r\nMessage-ID: <%s@test>\r\n\r\n" % (token, token)) + body


# ------------------------------------------------------------------ curl ----

@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("mode", ["imaps", "starttls"])
def test_curl_append_list_fetch(proxy_factory, backend, cert, tmp_path, mode):
    port, user, password, _ = backend
    proxy, tls_port, st_port = front(proxy_factory, port)
    if mode == "imaps":
        base = "imaps://127.0.0.1:%d" % tls_port
        tls = []
    else:
        base = "imap://127.0.0.1:%d" % st_port
        tls = ["--ssl-reqd"]
    common = [CURL, "-sS", "--max-time", "60", "--cacert", cert[0], "-u",
              "%s:%s" % (user, password)] + tls
    token = uuid.uuid4().hex.encode()
    msg = crlf_message(token, 300 * 1024, seed=len(mode))
    f = tmp_path / "message.eml"
    f.write_bytes(msg)
    mark = proxy.log.mark()

    r = run(common + ["-T", str(f), base + "/INBOX"])
    assert r.returncode == 0, r
    r = run(common + [base + "/"])
    assert r.returncode == 0, r
    assert re.search(rb'^\* LIST .*\b"?INBOX"?\r?$', r.stdout, re.M | re.I), r.stdout
    r = run(common + ["-X", "UID SEARCH HEADER Message-ID %s@test" % token.decode(),
                      base + "/INBOX"])
    assert r.returncode == 0, r
    uids = re.findall(rb"^\* SEARCH ((?:\d+ ?)+)", r.stdout, re.M)
    assert len(uids) == 1 and len(uids[0].split()) == 1, r.stdout
    uid = int(uids[0])
    r = run(common + [base + "/INBOX;UID=%d" % uid])
    assert r.returncode == 0, r
    assert hashlib.sha256(r.stdout).hexdigest() == hashlib.sha256(msg).hexdigest()
    assert r.stdout == msg

    # Four TLS sessions went through the listener under test.
    listener = "imaps" if mode == "imaps" else "imap"
    h.wait_until(lambda: len(tls_sessions(proxy, mark, listener)) >= 4, 5,
                 "4 closed sessions on %s" % listener)


# ---------------------------------------------------------------- mbsync ----

MESSAGES = 300
MAX_SIZE = 2 << 20


def message_sizes(rng):
    """300 sizes from 1 byte to 2 MiB: mostly small, some large; ~30 MiB."""
    sizes = [1, 2, 3, 100, MAX_SIZE]
    while len(sizes) < MESSAGES:
        k = len(sizes)
        if k < 250:
            sizes.append(int(2 ** rng.uniform(2, 16)))            # 4 B .. 64 KiB
        elif k < 290:
            sizes.append(rng.randint(64 << 10, 512 << 10))
        else:
            sizes.append(rng.randint(1 << 20, MAX_SIZE))
    return sizes


def maildir_message(i, size, rng, pool):
    """A Maildir message (LF line ends) of exactly `size` bytes; every
    third one has 8-bit octets in its body. Messages too small for a real
    header have an empty one: mbsync skips a message whose header does not
    end ("incomplete header"), so the smallest is the 1-byte "\\n"."""
    head = b"From: gen%d@example.org\nTo: demo@example.org\nSubject: gen %d\n" \
           b"Message-ID: <gen%d@example.org>\n\n" % (i, i, i)
    if size <= len(head):
        return b"\n" + pool[i:i + size - 1]
    start = rng.randrange(0, len(pool) - size)
    body = pool[start:start + size - len(head)]
    if i % 3:
        body = body.translate(ASCII_ONLY)
    return head + body


def _pool(n, seed):
    """n bytes of text lines (LF) of printable ASCII and 8-bit octets:
    no NUL, no CR, lines shorter than 200 bytes."""
    rng = random.Random(seed)
    alphabet = bytes(range(0x20, 0x7F)) + bytes(range(0xA0, 0x100))
    table = bytes(alphabet[b % len(alphabet)] for b in range(256))
    raw = bytearray(rng.randbytes(n).translate(table))
    pos = 0
    while True:
        pos += rng.randint(1, 160)
        if pos >= n:
            break
        raw[pos] = 0x0A
    return bytes(raw)


ASCII_ONLY = bytes(b if b < 0x80 else 0x41 + (b % 26) for b in range(256))


def normalised_digest(data):
    """SHA-256 of a message as the emulator's own test compares them:
    mbsync's X-TUID header removed, CRLF turned into LF."""
    data = re.sub(rb"(?m)^X-TUID: .*\r?\n", b"", data)
    return hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest()


def mbsync_rc(path, port, user, password, cafile, up, down):
    path.write_text(
        "IMAPAccount far\nHost localhost\nPort %d\nUser %s\nPass %s\n"
        "SSLType IMAPS\nCertificateFile %s\nAuthMechs LOGIN\nTimeout 60\n\n"
        "IMAPStore far\nAccount far\n\n"
        "MaildirStore up\nPath %s/\nInbox %s/INBOX\n\n"
        "MaildirStore down\nPath %s/\nInbox %s/INBOX\n\n"
        "Channel up\nFar :far:\nNear :up:\nCreate Both\nSync All\nExpunge None\nSyncState *\n\n"
        "Channel down\nFar :far:\nNear :down:\nCreate Both\nSync All\nExpunge None\n"
        "SyncState *\n" % (port, user, password, cafile, up, up, down, down))


@pytest.mark.skipif(MBSYNC is None, reason="mbsync (isync) is not installed")
@pytest.mark.parametrize("which", ["emulator", "dovecot"])
def test_mbsync_300_messages_up_and_down(proxy_factory, emulator_factory, request, cert,
                                         tmp_path, which):
    if which == "emulator":
        emu = emulator_factory()
        port = emu.plain_port
        emark = emu.log.mark()
    else:
        port = request.getfixturevalue("dovecot_factory")().port  # an empty mail store
    proxy = proxy_factory(port)
    pmark = proxy.log.mark()
    rng = random.Random(300)
    pool = _pool(MAX_SIZE + 4096, seed=1)
    up, down = tmp_path / "up", tmp_path / "down"
    for d in ("cur", "new", "tmp"):
        (up / "INBOX" / d).mkdir(parents=True)
    down.mkdir()
    sent = collections.Counter()
    sizes = message_sizes(rng)
    total = eight_bit = 0
    for i, size in enumerate(sizes):
        data = maildir_message(i, size, rng, pool)
        assert len(data) == size
        total += size
        eight_bit += max(data, default=0) >= 0x80
        (up / "INBOX" / "new" / ("1700000000.%d_%d.gen" % (i, i))).write_bytes(data)
        sent[normalised_digest(data)] += 1
    assert 20 << 20 <= total <= 60 << 20, total
    assert eight_bit >= 50, eight_bit
    # mbsync waits a second when a Maildir folder changed in the last one.
    for d in (up / "INBOX" / "new", up / "INBOX" / "cur", up / "INBOX"):
        os.utime(d, (time.time() - 10, time.time() - 10))
    rc = tmp_path / "mbsyncrc"
    mbsync_rc(rc, proxy.port, "demo", "demo", cert[0], up, down)
    env = dict(os.environ, HOME=str(tmp_path))
    timings = {}
    for channel in ("up", "down"):
        t0 = time.monotonic()
        r = run([MBSYNC, "-c", str(rc), channel], env=env)
        timings[channel] = time.monotonic() - t0
        assert r.returncode == 0, (channel, r.stdout[-2000:], r.stderr[-2000:], proxy.tail())
    print("mbsync via imapfront to %s: %d messages, %.1f MiB, up %.1fs down %.1fs"
          % (which, len(sizes), total / 1048576.0, timings["up"], timings["down"]))
    got = collections.Counter()
    for sub in ("cur", "new"):
        for f in (down / "INBOX" / sub).iterdir():
            got[normalised_digest(f.read_bytes())] += 1
    assert sum(got.values()) == MESSAGES, sum(got.values())
    assert got == sent
    if which == "emulator":
        stored = emu.log.find(r"\bappend-stored INBOX ", emark)
        assert len(stored) == MESSAGES, len(stored)
    # Both runs went through imapfront's TLS listener: the mail crossed it
    # once in each direction.
    h.wait_until(lambda: len(tls_sessions(proxy, pmark, "imaps")) >= 2, 5, "2 mbsync sessions")
    sessions = tls_sessions(proxy, pmark, "imaps")
    assert sum(int(kv["bytes_in"]) for kv in sessions) >= total, sessions
    assert sum(int(kv["bytes_out"]) for kv in sessions) >= total, sessions


# --------------------------------------------------------------- imaplib ----

def imaplib_client(mode, tls_port, st_port, ctx):
    if mode == "ssl":
        return imaplib.IMAP4_SSL("127.0.0.1", tls_port, ssl_context=ctx, timeout=30)
    m = imaplib.IMAP4("127.0.0.1", st_port, timeout=30)
    assert "STARTTLS" in m.capabilities and "LOGINDISABLED" in m.capabilities, m.capabilities
    typ, _ = m.starttls(ssl_context=ctx)
    assert typ == "OK"
    assert "STARTTLS" not in m.capabilities and "LOGINDISABLED" not in m.capabilities
    return m


def idle_round(m, tag, hold):
    """IDLE, `hold` seconds of silence from the server (checked, bounded),
    DONE, tagged OK."""
    m.send(b"%s IDLE\r\n" % tag)
    line = m.readline()
    while line.startswith(b"* "):  # untagged updates may come first
        line = m.readline()
    assert line.startswith(b"+"), line
    # The hold must pass without the proxy ending the IDLE. Dovecot sends its
    # own "* OK Still here" at a time of its choosing (imap_idle_notify_interval,
    # offset per client address): an untagged line that is not a BYE is an
    # update the client may get at any time, so it is read and allowed.
    deadline = time.monotonic() + hold
    for _ in range(16):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([m.sock], [], [], left)
        if not r:
            break
        line = m.readline()
        assert line, "connection closed during IDLE"
        assert line.startswith(b"* ") and not line.upper().startswith(b"* BYE"), \
            "the server spoke during IDLE: %r" % line
    else:
        raise AssertionError("more than 16 untagged lines during one IDLE hold")
    m.send(b"DONE\r\n")
    while True:
        line = m.readline()
        assert line, "connection closed after DONE"
        if line.startswith(tag + b" "):
            assert line.startswith(tag + b" OK"), line
            return
        assert line.startswith(b"* "), line


@pytest.mark.parametrize("mode", ["ssl", "starttls"])
def test_imaplib_login_append_fetch_idle(proxy_factory, backend, ctx, mode):
    port, user, password, name = backend
    proxy, tls_port, st_port = front(
        proxy_factory, port, extra={"imap": {"idle_timeout": "%ds" % IDLE_TIMEOUT}})
    mark = proxy.log.mark()
    m = imaplib_client(mode, tls_port, st_port, ctx)
    try:
        typ, _ = m.login(user, password)
        assert typ == "OK"
        typ, _ = m.select("INBOX")
        assert typ == "OK"
        token = uuid.uuid4().hex.encode()
        data = crlf_message(token, 100 * 1024, seed=3) + b"\xe9t\xe9 8-bit\r\n"
        typ, resp = m.append("INBOX", None, None, data)
        assert typ == "OK", resp
        uid = re.search(rb"APPENDUID \d+ (\d+)", resp[0]).group(1).decode()
        typ, resp = m.uid("FETCH", uid, "(BODY.PEEK[])")
        assert typ == "OK" and resp[0][1] == data
        # Three IDLE periods of 1 s each, 3 s in all: longer than
        # idle_timeout, but the client speaks (DONE) between them.
        t0 = time.monotonic()
        for i in range(3):
            idle_round(m, b"I%d" % i, hold=IDLE_TIMEOUT / 2)
        assert time.monotonic() - t0 > IDLE_TIMEOUT
        typ, _ = m.noop()
        assert typ == "OK"
        assert m.logout()[0] == "BYE"
    finally:
        try:
            m.shutdown()
        except OSError:
            pass
    listener = "imaps" if mode == "ssl" else "imap"
    h.wait_until(lambda: [kv for kv in tls_sessions(proxy, mark, listener)
                          if kv.get("reason") == "logout"], 5, "a logout on %s" % listener)
    assert not proxy.log.find(r"reason=idle-timeout", mark)
