"""COMPRESS=DEFLATE terminated at imapfront (RFC 4978), seen by a client.

* A Python client with zlib (raw deflate, wbits -15) over TLS, through
  imapfront to the legacy emulator and to a Dovecot that offers its own
  COMPRESS: the proxy advertises COMPRESS=DEFLATE after login (once, the
  backend's own is hidden), answers "OK DEFLATE active" uncompressed, and
  then LOGIN-state commands, an APPEND of 1 MiB of text and of 1 MiB of
  incompressible octets, and a FETCH of both come back byte-exact.
* The refusals: before login (BAD), a second COMPRESS (NO
  [COMPRESSIONACTIVE]), compress = off (NO [CANNOT]), STARTTLS once
  compressed (BAD); the backend never sees a COMPRESS command.
* /metrics: for text, fewer bytes on the wire than in plain text.
* mbsync (isync 1.4.4 uses COMPRESS=DEFLATE when offered): 100 generated
  text messages up and down through a compress = on proxy, identical;
  the bytes saved on the wire are printed."""

import collections
import os
import random
import re
import shutil
import threading
import time
import zlib

import pytest

import imapfront_harness as h
import ops_support as ops
from dovecot import dovecot_factory  # noqa: F401
from test_real_clients import mbsync_rc, normalised_digest, run

MBSYNC = shutil.which("mbsync")
COMPRESS_ON = {"imap": {"compress": "on"}}
METRIC = "imapfront_compress_bytes_total"
WORDS = ("the quick brown fox jumps over lazy dog mail server proxy message "
         "header body deflate window literal fetch append select inbox").split()


class ZClient(h.TLSClient):
    """A TLSClient that, once compress() is called, deflates what it writes
    (one sync flush per write) and inflates what it reads."""

    zout = None
    zin = None

    def start_compress(self):
        self.zout = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.zin = zlib.decompressobj(-15)
        # Whatever arrived after the OK is already compressed.
        leftover, self.buf = self.buf, b""
        self.buf = self.zin.decompress(leftover)

    def write(self, data):
        if self.zout is not None:
            data = self.zout.compress(data) + self.zout.flush(zlib.Z_SYNC_FLUSH)
        h.TLSClient.write(self, data)

    def _fill(self, deadline):
        if self.zin is None:
            return h.TLSClient._fill(self, deadline)
        plain, self.buf = self.buf, b""
        try:
            h.TLSClient._fill(self, deadline)
        finally:
            raw, self.buf = self.buf, plain
        self.buf += self.zin.decompress(raw)

    def compress(self, tag="Z"):
        """COMPRESS DEFLATE; the OK must arrive uncompressed."""
        self.write(b"%s COMPRESS DEFLATE\r\n" % tag.encode())
        _, tagged = self.read_until_tagged(tag)
        assert tagged.startswith(b"%s OK" % tag.encode()), tagged
        self.start_compress()
        return tagged


def caps_of(lines):
    out = []
    for line in lines:
        m = re.match(rb"\* CAPABILITY (.*)\r\n", line) or re.search(rb"\[CAPABILITY ([^\]]*)\]",
                                                                     line)
        if m:
            out += m.group(1).decode().upper().split()
    return out


def text_body(size, seed):
    """size bytes of CRLF lines of words: compresses well."""
    rng = random.Random(seed)
    out = bytearray(b"Subject: text %d\r\n\r\n" % seed)
    while len(out) < size:
        out += " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))).encode() + b"\r\n"
    out = out[:size - 2] + b"\r\n"
    return bytes(out)


def noise_body(size, seed):
    """size bytes that deflate cannot shrink: random octets 0x20..0xFF
    (no NUL, no bare CR or LF, so any server stores them as they are) in
    CRLF lines."""
    rng = random.Random(seed)
    table = bytes(0x20 + (b % 0xE0) for b in range(256))
    raw = bytearray(rng.randbytes(size).translate(table))
    for pos in range(150, size - 2, 150):
        raw[pos:pos + 2] = b"\r\n"
    raw[:20] = b"Subject: noise\r\n\r\nxx"
    raw[-2:] = b"\r\n"
    return bytes(raw)


def compress_counts(proxy):
    m = ops.scrape(proxy)
    return {(d, s): m.value(METRIC, direction=d, stage=s)
            for d in ("in", "out") for s in ("wire", "plain")}


def delta(after, before):
    return {k: after[k] - before[k] for k in after}


def session_through(proxy, ctx, user, password, expect_login_caps):
    """Login, check the capabilities, COMPRESS, exercise, APPEND+FETCH."""
    with ZClient(proxy.port, ctx, timeout=30) as c:
        greeting = c.read_line()
        assert greeting.startswith(b"* OK"), greeting
        _, tagged = c.command("L1", "LOGIN %s %s" % (user, password))
        assert tagged.startswith(b"L1 OK"), tagged
        login_caps = caps_of([tagged])
        if expect_login_caps:
            assert login_caps, tagged
        if login_caps:
            assert login_caps.count("COMPRESS=DEFLATE") == 1, tagged
        untagged, tagged = c.command("C1", "CAPABILITY")
        assert tagged.startswith(b"C1 OK"), tagged
        caps = caps_of(untagged)
        assert caps.count("COMPRESS=DEFLATE") == 1, untagged
        assert [x for x in caps if x.startswith("COMPRESS=")] == ["COMPRESS=DEFLATE"], caps

        ok = c.compress()
        assert re.match(rb"Z OK DEFLATE active\r\n$", ok), ok

        # LOGIN-state commands, compressed both ways.
        seen = {}
        for tag, cmd in (("N1", "NOOP"), ("C2", "CAPABILITY"), ("LS", 'LIST "" "*"'),
                         ("ST", "STATUS INBOX (MESSAGES UIDNEXT)")):
            untagged, tagged = c.command(tag, cmd)
            assert tagged.startswith(tag.encode() + b" OK"), (cmd, tagged)
            seen[tag] = untagged
        # (Whether COMPRESS=DEFLATE is still listed now is not specified.)
        assert any(re.match(rb'\* LIST .*INBOX', l, re.I) for l in seen["LS"]), seen["LS"]
        assert any(l.startswith(b"* STATUS") for l in seen["ST"]), seen["ST"]
        # A second COMPRESS is refused, compressed.
        _, tagged = c.command("Z2", "COMPRESS DEFLATE")
        assert tagged.startswith(b"Z2 NO [COMPRESSIONACTIVE]"), tagged
        _, tagged = c.command("T1", "STARTTLS")
        assert tagged.startswith(b"T1 BAD"), tagged

        before = compress_counts(proxy)
        text = text_body(1 << 20, 1)
        tagged = h.append(c, "A1", text)
        assert tagged.startswith(b"A1 OK"), tagged
        assert h.fetch_appended(c, tagged) == text
        text_delta = delta(compress_counts(proxy), before)

        noise = noise_body(1 << 20, 2)
        tagged = h.append(c, "A2", noise, sync=False)
        assert tagged.startswith(b"A2 OK"), tagged
        assert h.fetch_appended(c, tagged) == noise

        _, tagged = c.command("N2", "NOOP")
        assert tagged.startswith(b"N2 OK"), tagged
        c.write(b"LO LOGOUT\r\n")
        _, tagged = c.read_until_tagged("LO")
        assert tagged.startswith(b"LO OK"), tagged

    # Both directions carried the 1 MiB of text (plus commands) and the
    # wire held much less than the plain text in each.
    for d in ("in", "out"):
        assert text_delta[(d, "plain")] >= len(text), text_delta
        assert text_delta[(d, "wire")] < text_delta[(d, "plain")] / 2, text_delta
    print("1 MiB text: in wire/plain %d/%d, out wire/plain %d/%d"
          % (text_delta[("in", "wire")], text_delta[("in", "plain")],
             text_delta[("out", "wire")], text_delta[("out", "plain")]))
    total = compress_counts(proxy)
    assert total[("in", "plain")] >= 2 << 20 and total[("out", "plain")] >= 2 << 20, total


@pytest.mark.parametrize("window", [None, "1k", "32k"])
def test_compress_through_emulator(proxy_factory, emulator, ctx, window):
    """The whole session (1 MiB of text and of noise both ways) with the
    default compress_window (8k), the smallest and the largest."""
    extra = ops.merge(COMPRESS_ON, {"imap": {"compress_window": window}} if window else None)
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port, extra=extra)
    mark = emulator.log.mark()
    session_through(proxy, ctx, "demo", "demo", False)
    cmds = [m.group(1).upper() for m in emulator.log.find(r"\bcmd \S+ (\S+)", mark)]
    assert "APPEND" in cmds and "LOGIN" in cmds, cmds
    assert "COMPRESS" not in cmds and "STARTTLS" not in cmds, cmds


def test_compress_through_dovecot(proxy_factory, dovecot_factory, ctx):  # noqa: F811
    d = dovecot_factory(compress=True)
    proxy = ops.start_proxy(proxy_factory, d.port, extra=COMPRESS_ON)
    session_through(proxy, ctx, "demo", "demo", True)


def test_compress_refusals(proxy_factory, emulator, ctx):
    on = proxy_factory(emulator.plain_port, extra=COMPRESS_ON)
    off = proxy_factory(emulator.plain_port)
    mark = emulator.log.mark()
    with ZClient(on.port, ctx) as c:
        c.read_line()
        _, tagged = c.command("Z0", "COMPRESS DEFLATE")
        assert tagged == b"Z0 BAD COMPRESS is valid only after login\r\n", tagged
        # Still uncompressed: login works, and then COMPRESS does.
        _, tagged = c.command("L1", "LOGIN demo demo")
        assert tagged.startswith(b"L1 OK"), tagged
        c.compress("Z1")
        _, tagged = c.command("N1", "NOOP")
        assert tagged.startswith(b"N1 OK"), tagged
    with ZClient(off.port, ctx) as c:
        h.login(c)
        untagged, tagged = c.command("C1", "CAPABILITY")
        assert not [x for x in caps_of(untagged + [tagged]) if x.startswith("COMPRESS")], untagged
        _, tagged = c.command("Z1", "COMPRESS DEFLATE")
        assert tagged.startswith(b"Z1 NO [CANNOT]"), tagged
        _, tagged = c.command("N1", "NOOP")
        assert tagged.startswith(b"N1 OK"), tagged
    cmds = [m.group(1).upper() for m in emulator.log.find(r"\bcmd \S+ (\S+)", mark)]
    assert cmds.count("NOOP") == 2 and "COMPRESS" not in cmds, cmds


# ---------------------------------------------------------------- mbsync ----

MESSAGES = 100


def text_message(i, rng):
    """A Maildir (LF) text message of 2 to 60 KiB."""
    size = rng.randint(2 << 10, 60 << 10)
    head = ("From: gen%d@example.org\nTo: demo@example.org\nSubject: corpus %d\n"
            "Message-ID: <corpus%d@example.org>\n\n" % (i, i, i)).encode()
    body = bytearray()
    while len(body) < size:
        body += " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))).encode() + b"\n"
    return head + bytes(body)


@pytest.mark.skipif(MBSYNC is None, reason="mbsync (isync) is not installed")
def test_mbsync_through_compress(proxy_factory, dovecot_factory, cert, tmp_path):  # noqa: F811
    # Dovecot, not the emulator: mbsync 1.4.4 learns the post-login
    # capabilities only from the LOGIN OK's [CAPABILITY ...] (it does not
    # ask again), which Dovecot sends and the emulator does not; through
    # the emulator mbsync never sees COMPRESS=DEFLATE.
    backend = dovecot_factory(compress=True)
    proxy = ops.start_proxy(proxy_factory, backend.port, extra=COMPRESS_ON)
    rng = random.Random(100)
    up, down = tmp_path / "up", tmp_path / "down"
    for d in ("cur", "new", "tmp"):
        (up / "INBOX" / d).mkdir(parents=True)
    down.mkdir()
    sent = collections.Counter()
    total = 0
    for i in range(MESSAGES):
        data = text_message(i, rng)
        total += len(data)
        (up / "INBOX" / "new" / ("1700000000.%d_%d.gen" % (i, i))).write_bytes(data)
        sent[normalised_digest(data)] += 1
    for d in (up / "INBOX" / "new", up / "INBOX" / "cur", up / "INBOX"):
        os.utime(d, (time.time() - 10, time.time() - 10))
    rc = tmp_path / "mbsyncrc"
    mbsync_rc(rc, proxy.port, "demo", "demo", cert[0], up, down)
    env = dict(os.environ, HOME=str(tmp_path))
    before = compress_counts(proxy)
    for channel in ("up", "down"):
        r = run([MBSYNC, "-c", str(rc), channel], env=env, timeout=60)
        assert r.returncode == 0, (channel, r.stdout[-2000:], r.stderr[-2000:], proxy.tail())
    got = collections.Counter()
    for sub in ("cur", "new"):
        for f in (down / "INBOX" / sub).iterdir():
            got[normalised_digest(f.read_bytes())] += 1
    assert got == sent
    d = delta(compress_counts(proxy), before)
    plain = d[("in", "plain")] + d[("out", "plain")]
    wire = d[("in", "wire")] + d[("out", "wire")]
    # mbsync used COMPRESS: the corpus crossed compressed both ways.
    assert d[("in", "plain")] >= total and d[("out", "plain")] >= total, (d, total)
    assert wire < plain, d
    print("mbsync %d text messages (%.1f KiB) up+down via COMPRESS: plain %d B, wire %d B, "
          "saved %d B (%.1f%%); in %d->%d, out %d->%d"
          % (MESSAGES, total / 1024.0, plain, wire, plain - wire, 100.0 * (plain - wire) / plain,
             d[("in", "plain")], d[("in", "wire")], d[("out", "plain")], d[("out", "wire")]))


# ---------------------------------------------------------- deflate bomb ----

def test_deflate_bomb_neither_stalls_others_nor_runs_on(proxy_factory, emulator, ctx):
    """A client sends a literal the proxy refuses and swallows, as a deflate
    bomb (zeros: about 1000 to 1). Inflating is bounded per turn of the
    loop, so another session on the same worker keeps its round trips
    short; past 64 MiB at more than 200 to 1 the bomb is refused with a BYE."""
    extra = {"proxy": {"workers": "1"}, "imap": {"compress": "on", "max_literal_size": "1M"}}
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port, extra=extra)
    mark = proxy.log.mark()
    with ZClient(proxy.port, ctx) as bomber, h.TLSClient(proxy.port, ctx) as bystander:
        h.login(bomber)
        bomber.compress("Z1")
        h.login(bystander)
        bomber.write(b"B APPEND INBOX {300000000+}\r\n")

        # 128 MiB of zeros deflate to about 128 KiB, sent at once: what
        # one read brings is what the proxy would inflate in one go.
        z = zlib.compressobj(6, zlib.DEFLATED, -15)
        wire = b"".join(z.compress(bytes(1 << 20)) for _ in range(128))
        wire += z.flush(zlib.Z_SYNC_FLUSH)

        def bomb():
            try:
                h.TLSClient.write(bomber, wire)
            except OSError:
                pass  # refused half-way: what the test wants

        sender = threading.Thread(target=bomb, daemon=True)
        sender.start()
        rtts = []
        t_end = time.monotonic() + 10
        while time.monotonic() < t_end and len(rtts) < 400:
            t0 = time.monotonic()
            _, tagged = bystander.command("N%d" % len(rtts), "NOOP")
            rtts.append(time.monotonic() - t0)
            assert b" OK" in tagged, tagged
            if proxy.log.find(r"Compression ratio too high", mark):
                break
        sender.join(10)
        proxy.log.wait_for(r"closing with BYE .*detail=\"\[LIMIT\] Compression ratio too high\"",
                           since=mark, timeout=10)
        rtts.sort()
        p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]
        assert len(rtts) >= 5, rtts
        assert p99 < 0.050, "bystander NOOP p99 %.1f ms during the bomb (%d samples)" % (
            p99 * 1000, len(rtts))


@pytest.mark.skipif(bool(os.environ.get("IMAPFRONT_SANITIZED")),
                    reason="RSS bounds mean nothing under the sanitizers' redzones")
def test_idle_compressed_sessions_give_zlib_state_back(proxy_factory, emulator, ctx):
    """Compressing sessions that go idle (nothing from the client for 2 s,
    no command in progress) give zlib's state back: the proxy's RSS per idle
    compressed session stays near an uncompressed one's (about 100 KiB
    before this was done), and each session then goes on: its next command,
    deflated by the client against the history of the first (the same
    text, so mostly back references), and a 64 KiB FETCH come back exact;
    idle again, they give it back again."""
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra={"proxy": {"workers": "1"}, "imap": {"compress": "on"}})
    n = 40
    clients = []
    try:
        before = proxy.rss_kib()
        for i in range(n):
            c = ZClient(proxy.port, ctx, timeout=30)
            clients.append(c)
            h.login(c)
            c.compress("Z")
            _, tagged = c.command("S1", 'STATUS INBOX (MESSAGES UIDNEXT)')
            assert tagged.startswith(b"S1 OK"), tagged
        t_idle = time.monotonic()
        # Released 2 s after the last command, by each session's timer.
        h.wait_until(lambda: proxy.rss_kib() - before < n * 20 and
                     time.monotonic() - t_idle > 2.5, 10,
                     "idle compressed sessions under 20 KiB each")
        grown = proxy.rss_kib() - before
        print("%d idle compressed sessions: %.1f KiB each" % (n, grown / n))
        body = text_body(64 << 10, 3)
        for i, c in enumerate(clients):
            _, tagged = c.command("S2", 'STATUS INBOX (MESSAGES UIDNEXT)')
            assert tagged.startswith(b"S2 OK"), tagged
            if i % 10 == 0:
                tagged = h.append(c, "A%d" % i, body)
                assert tagged.startswith(b"A%d OK" % i), tagged
                assert h.fetch_appended(c, tagged) == body
        # Made again by that traffic, the state is given back again.
        t_idle = time.monotonic()
        # (The 64 KiB messages' buffers may stay with malloc: 1 MiB of slack,
        # still far below the ~95 KiB a session's zlib state would add.)
        h.wait_until(lambda: proxy.rss_kib() - before < n * 20 + 1024 and
                     time.monotonic() - t_idle > 2.5, 10,
                     "idle again, under 20 KiB each (+ 1 MiB)")
        _, tagged = clients[0].command("N3", "NOOP")
        assert tagged.startswith(b"N3 OK"), tagged
    finally:
        for c in clients:
            c.close()
