"""Attack 7: two behaviours of imapfront attacked from outside.

1. COMPRESS=DEFLATE ([imap] compress, compress_window): the proxy deflates
   towards the client with compress_window and inflates the client's own
   window (up to 32 KiB). Attacked with
   * a client deflating with a 32 KiB window (level 9) whose back
     references reach further than the proxy's 8k / 1k window, in one
     APPEND and across commands;
   * FETCH of bodies larger than the proxy's window (text and noise,
     compress_window = 1k and 8k), compared byte for byte;
   * sessions idle past the 2 s release of zlib state that then resume
     with back references into their history (three rounds);
   * SIGHUP to compress_window = 3k (a config error naming the key, the
     running configuration stays) and to 1k and 32k while a compressed
     session is open, then idle past 2 s, then FETCH again.
2. The proxy's in-place rewrites of client lines (default strip_client_id):
   `ID` with fields in a `{N+}` / `{N-}` literal goes to the backend as
   `tag ID NIL`, and a non-base64 AUTHENTICATE response as `*`. Attacked
   with CRLF and bare-LF endings, 1-octet tags, empty literals and literals
   holding empty lines, the lines written octet by octet, and the next
   command in the same packet. The emulator's --record shows what the
   backend framed: exactly the rewritten line, then the next command as its
   own line, never a NUL or a CR.

Found and fixed since: a response of base64's letters that is not base64
(`=x`, `abc`, `a=bc`, `ab==cd==`) went to the backend as it was instead of
as `*`; the gate now checks the form (groups of four, padding only at the
end), not only the alphabet.

Only 127.0.0.1; every loop is bounded in count and, through the harness's
read timeouts, in time. The only sleeps are the wait past the 2 s idle
release the contract names, and the 2 ms pacing between octets written one
at a time (copied from test_gate.send) so that the proxy reads them apart.
"""

import base64
import random
import time
import zlib

import pytest

import imapfront_harness as h
import ops_support as ops
from test_compress import ZClient, noise_body, text_body
from test_gate import backend_rows, gate, lines_of, send, tls_session  # noqa: F401

COMPRESS_ON = {"imap": {"compress": "on"}}
IDLE_RELEASE = 2.0


class Z32Client(ZClient):
    """ZClient deflating at level 9 with a 32 KiB window and memLevel 9, so
    that back references reach up to 32 KiB back."""

    def start_compress(self):
        ZClient.start_compress(self)
        self.zout = zlib.compressobj(9, zlib.DEFLATED, -15, 9)


def far_repeat_body(seed, block=6 << 10, gap=20 << 10):
    """A message whose only redundancy is a random block repeated after a
    random gap: the deflate of it back-references block+gap octets back
    (further than 8 KiB), and nothing nearer."""
    rng = random.Random(seed)
    table = bytes(0x21 + (b % 0x5E) for b in range(256))

    def rand(n):
        raw = bytearray(rng.randbytes(n).translate(table))
        for pos in range(100, n - 2, 100):
            raw[pos:pos + 2] = b"\r\n"
        raw[-2:] = b"\r\n"
        return bytes(raw)
    a = rand(block)
    return b"Subject: far %d\r\n\r\n" % seed + a + rand(gap) + a + rand(block) + a


def max_distance(data):
    """(deflated size with an 8 KiB window, with a 32 KiB window): the
    second much smaller shows the 32 KiB stream holds far references."""
    small = zlib.compressobj(9, zlib.DEFLATED, -13)  # 8 KiB
    big = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (len(small.compress(data) + small.flush()), len(big.compress(data) + big.flush()))


def compressed_session(proxy, ctx, cls=Z32Client):
    c = tls_session(proxy.port, ctx, login=True, cls=cls)
    c.timeout = 30
    c.compress("Z")
    return c


def roundtrip(c, tag, body, sync=True):
    tagged = h.append(c, tag, body, sync=sync)
    assert tagged.startswith(tag.encode() + b" OK"), tagged
    got = h.fetch_appended(c, tagged)
    assert len(got) == len(body), (len(got), len(body))
    assert got == body, "FETCH differs from the APPENDed body first at octet %d" % next(
        i for i in range(len(body)) if got[i] != body[i])


# ------------------------------------------------------------ COMPRESS ----

@pytest.mark.parametrize("window", ["1k", "8k"])
def test_client_32k_window_back_references(proxy_factory, emulator, ctx, window):
    """The client's deflate references 26 KiB back (beyond the proxy's
    window); the proxy must inflate with the client's window. The same body
    APPENDed again in one more command references the previous command."""
    body = far_repeat_body(1)
    small, big = max_distance(body)
    assert big < small * 0.8, (small, big)  # the far references exist
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra=ops.merge(COMPRESS_ON, {"imap": {"compress_window": window}}))
    with compressed_session(proxy, ctx) as c:
        roundtrip(c, "A1", body)
        roundtrip(c, "A2", body, sync=False)
        _, tagged = c.command("N", "NOOP")
        assert tagged.startswith(b"N OK"), tagged


@pytest.mark.parametrize("window", ["1k", "8k"])
def test_fetch_bodies_larger_than_window(proxy_factory, emulator, ctx, window):
    """FETCH of text, noise and far-repeat bodies of 4 to 600 times the
    proxy's window, byte for byte; each body fetched twice (the second
    FETCH's output repeats the first's, further back than the window)."""
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra=ops.merge(COMPRESS_ON, {"imap": {"compress_window": window}}))
    bodies = [text_body(600 << 10, 3), noise_body(300 << 10, 4), far_repeat_body(5),
              text_body(4 << 10, 6)]
    with compressed_session(proxy, ctx) as c:
        for i, body in enumerate(bodies):
            tagged = h.append(c, "A%d" % i, body, sync=bool(i % 2))
            assert tagged.startswith(b"A%d OK" % i), tagged
            for _ in range(2):
                assert h.fetch_appended(c, tagged) == body, "body %d differs" % i


def test_idle_release_then_back_references(proxy_factory, emulator, ctx):
    """Three rounds: APPEND a body, go idle past the 2 s release, then APPEND
    the same body again (the client's deflate references the octets sent
    before the pause, up to 32 KiB back) and FETCH both."""
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port, extra=COMPRESS_ON)
    with compressed_session(proxy, ctx) as c:
        for rnd in range(3):
            body = far_repeat_body(10 + rnd, block=4 << 10, gap=8 << 10)
            tagged = h.append(c, "P%d" % rnd, body)
            assert tagged.startswith(b"P%d OK" % rnd), tagged
            time.sleep(IDLE_RELEASE + 0.7)  # past the release the contract names
            tagged2 = h.append(c, "Q%d" % rnd, body, sync=False)
            assert tagged2.startswith(b"Q%d OK" % rnd), (rnd, tagged2)
            assert h.fetch_appended(c, tagged) == body, rnd
            time.sleep(IDLE_RELEASE + 0.7)
            assert h.fetch_appended(c, tagged2) == body, rnd
            # A short command whose text repeats one from before the pause.
            _, t = c.command("P%d" % rnd, "NOOP")
            assert t.startswith(b"P%d OK" % rnd), t


def test_reload_changes_compress_window_mid_session(proxy_factory, emulator, ctx):
    """A compressed session open across SIGHUPs: compress_window = 3k is a
    config error naming the key (the running configuration stays), then 1k
    and 32k are accepted; after each, and after idling past 2 s, FETCHes in
    the same session are byte-exact, and a new session works."""
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port, extra=COMPRESS_ON)
    body = text_body(200 << 10, 20)
    with compressed_session(proxy, ctx) as c:
        tagged = h.append(c, "A", body)
        assert tagged.startswith(b"A OK"), tagged
        assert h.fetch_appended(c, tagged) == body
        ops.rewrite_ini(proxy, {"imap": {"compress_window": "3k"}})
        m = ops.sighup(proxy, ops.RELOAD_FAILED + "|" + ops.RELOADED)
        assert "reload failed" in m.group(0) and "compress_window" in m.group(0), m.group(0)
        assert h.fetch_appended(c, tagged) == body
        for i, window in enumerate(("1k", "32k", "2k")):
            ops.rewrite_ini(proxy, {"imap": {"compress_window": window}})
            m = ops.sighup(proxy, ops.RELOAD_FAILED + "|" + ops.RELOADED)
            assert "reloaded" in m.group(0), (window, m.group(0))
            assert h.fetch_appended(c, tagged) == body, window
            time.sleep(IDLE_RELEASE + 0.7)  # the zlib state is released ...
            assert h.fetch_appended(c, tagged) == body, window  # ... and made again
            roundtrip(c, "R%d" % i, far_repeat_body(30 + i))
            with compressed_session(proxy, ctx) as d:
                assert h.fetch_appended(d, tagged) == body, window


# ---------------------------------------------------- rewritten lines ----

def id_cases():
    out = []
    for tag in ("a", "t7"):
        for kind in ("+", "-"):
            for eol in (b"\r\n", b"\n"):
                for lit in (b"x", b"", b"\r\n\r\n", b"\n"):
                    out.append((tag, kind, eol, lit))
    return out


def bad_rows(rows):
    return [l for l in lines_of(rows) if "\0" in l or "\r" in l]


@pytest.mark.parametrize("bytewise", [False, True], ids=["packet", "octets"])
def test_id_literal_rewrite_keeps_framing(gate, ctx, bytewise):
    """`tag ID ("name" {N+|-}<eol>lit)<eol>n NOOP<eol>` in one packet (or
    octet by octet) for 1- and 2-octet tags, CRLF and bare LF, literals
    empty, of one octet, of empty lines: the backend reads `tag ID NIL`
    then `nK NOOP`, nothing between, no NUL, no CR."""
    proxy, _, emu = gate()
    failures = []
    cases = id_cases()
    if bytewise:
        cases = [x for x in cases if x[3] in (b"x", b"\r\n\r\n")]
    with tls_session(proxy.port, ctx) as c:
        for k, (tag, kind, eol, lit) in enumerate(cases):
            mark = len(emu.records())
            nxt = "n%d" % k
            data = (b'%s ID ("name" {%d%s}' % (tag.encode(), len(lit), kind.encode()) + eol
                    + lit + b")" + eol + b"%s NOOP" % nxt.encode() + eol)
            send(c, data, bytewise)
            _, t = c.read_until_tagged(tag)
            _, t2 = c.read_until_tagged(nxt)
            rows = backend_rows(emu, mark)
            got = [l for l in lines_of(rows) if l.startswith((tag + " ", nxt + " "))
                   or "\0" in l or "\r" in l or l == ""]
            if got != ["%s ID NIL" % tag, "%s NOOP" % nxt] or bad_rows(rows) \
                    or not t.startswith(tag.encode() + b" OK") or not t2.startswith(nxt.encode() + b" OK"):
                failures.append((data, got, bad_rows(rows), t, t2))
    assert not failures, "%d of %d cases broke framing, e.g. %r" % (
        len(failures), len(cases), failures[:3])


@pytest.mark.parametrize("bytewise", [False, True], ids=["packet", "octets"])
def test_sasl_non_base64_response_becomes_star(gate, ctx, bytewise):
    """AUTHENTICATE PLAIN, then a non-base64 response (1 to 5 octets, CRLF
    or bare LF, a 1-octet tag) with the next command in the same packet:
    the backend reads `*` then `nK NOOP`, no NUL, no CR; the session still
    logs in afterwards."""
    proxy, _, emu = gate()
    failures = []
    responses = [b"!", b"!!", b"a b", b"@@@@@", b"=x!", b"*!"]
    cases = [(tag, r, eol) for tag in ("a", "tg") for r in responses for eol in (b"\r\n", b"\n")]
    if bytewise:
        cases = [x for x in cases if x[1] in (b"!", b"a b")]
    for k, (tag, resp, eol) in enumerate(cases):
        mark = len(emu.records())
        nxt = "n%d" % k
        with tls_session(proxy.port, ctx) as c:
            send(c, b"%s AUTHENTICATE PLAIN" % tag.encode() + eol, bytewise)
            cont = c.read_line()
            assert cont.startswith(b"+"), cont
            send(c, resp + eol + b"%s NOOP" % nxt.encode() + eol, bytewise)
            _, t = c.read_until_tagged(tag)
            _, t2 = c.read_until_tagged(nxt)
            blob = base64.b64encode(b"\0demo\0demo")
            _, t3 = c.command("ok", "AUTHENTICATE PLAIN " + blob.decode())
        rows = backend_rows(emu, mark)
        lines = lines_of(rows)
        i = next((j for j, l in enumerate(lines) if l.startswith(tag + " AUTHENTICATE")), None)
        after = lines[i + 1:i + 3] if i is not None else None
        if after != ["*", "%s NOOP" % nxt] or bad_rows(rows) \
                or not t2.startswith(nxt.encode() + b" OK") or not t3.startswith(b"ok OK"):
            failures.append((resp, eol, after, bad_rows(rows), t, t2, t3))
    assert not failures, "%d of %d cases broke framing, e.g. %r" % (
        len(failures), len(cases), failures[:3])


def test_sasl_alphabet_only_non_base64_becomes_star(gate, ctx):
    """Responses made of base64 characters that are not base64 (padding
    first or inside, a length that is not a multiple of 4): the contract
    says the backend gets `*`."""
    proxy, _, emu = gate()
    seen = []
    for k, resp in enumerate((b"=x", b"abc", b"a=bc", b"ab==cd==")):
        try:
            base64.b64decode(resp, validate=True)
            raise AssertionError("%r decodes" % resp)
        except ValueError:
            pass
        mark = len(emu.records())
        with tls_session(proxy.port, ctx) as c:
            c.write(b"a AUTHENTICATE PLAIN\r\n")
            assert c.read_line().startswith(b"+")
            c.write(resp + b"\r\nn%d NOOP\r\n" % k)
            c.read_until_tagged("a")
            _, t = c.read_until_tagged("n%d" % k)
            assert t.startswith(b"n%d OK" % k), t
        lines = lines_of(backend_rows(emu, mark))
        i = next(j for j, l in enumerate(lines) if l.startswith("a AUTHENTICATE"))
        seen.append((resp, lines[i + 1:i + 3]))
    assert all(after == ["*", "n%d NOOP" % k] for k, (_, after) in enumerate(seen)), seen
