"""The proxy's policy seen from outside, by an attacker: the legacy backend
only receives what the policy allows.

Every test drives imapfront with raw sockets (plain before STARTTLS, TLS
after it or on the implicit-TLS listener) and then reads the emulator's
--record (every line and literal it framed, with the recv() that carried
it) to check what actually reached the backend. The promises:

1. fail closed: a line that is not "tag SP command-name" (RFC 9051) is
   answered BAD by the proxy and never forwarded;
2. a tag already in flight is refused with BAD;
3. literals by the backend's rules: "{N+}" never reaches a backend without
   LITERAL+, a "{N+}" literal cannot smuggle a command, max_literal_size
   holds for every literal, and a line after a "+" is no announcement;
4. state, not tags: a pipelined duplicate tag does not log anyone in;
   STARTTLS and COMPRESS only with nothing in flight;
5. continuations are judged by what the "+" was for (SASL, IDLE);
6. preauth_timeout is a deadline from connect to login;
7. local answers land between backend responses, never inside one;
8. a client cannot send its own x-originating-* / x-connected-* ID keys;
9. quirks = auto recognises an Exchange 5.5 greeting (and only that);
10. the attacks of 1 and 3 give the same outcome sent one byte at a time.
"""

import base64
import re
import socket
import time

import pytest

import imapfront_harness as h
import ops_support as ops
from dovecot import PlainClient, listener_port
from test_compress import ZClient

EXCHANGE55 = ("Microsoft Exchange Server IMAP4rev1 server version 5.5.2653.23 "
              "(mail.example.org) ready")
DOVECOT = "[CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ " \
          "AUTH=PLAIN] Dovecot (Debian) ready."
PREAUTH = 2.0
# How late a BYE may come on a loaded 2-core machine.
SLACK = 3.0
# How long a local answer may take; a test that waits this long and gets
# nothing reports what it got instead.
ANSWER = 5.0
LONG_TAG = "t" * 65
COMMAND_RE = re.compile(r"^\S+ +(\S+)")


# ---------------------------------------------------------------- setup ----

def start(proxy_factory, emulator_factory, flags=(), extra=None):
    """An emulator (recording) and a proxy with an implicit-TLS listener
    (proxy.port) and a STARTTLS listener with require_tls = yes; returns
    (proxy, starttls_port, emulator)."""
    emu = emulator_factory(flags=flags, record=True)
    sections = {"listen.imap": {"address": "127.0.0.1:0", "mode": "starttls",
                                "require_tls": "yes"}}
    for section, keys in (extra or {}).items():
        sections.setdefault(section, {}).update(keys)
    proxy = proxy_factory(emu.plain_port, extra=sections)
    return proxy, listener_port(proxy, "imap"), emu


@pytest.fixture
def gate(proxy_factory, emulator_factory):
    """gate(flags=(), extra=None) -> (proxy, starttls_port, emulator)."""
    return lambda flags=(), extra=None: start(proxy_factory, emulator_factory, flags, extra)


def plain_session(port):
    """A STARTTLS-listener session before TLS, greeting read."""
    c = PlainClient(port)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    greeting = c.read_line()
    assert greeting.startswith(b"* OK"), greeting
    return c


def starttls_session(port, ctx):
    """A STARTTLS-listener session after a successful STARTTLS."""
    c = plain_session(port)
    _, tagged = c.command("T0", "STARTTLS")
    assert tagged.startswith(b"T0 OK"), "STARTTLS refused: %r" % tagged
    t = c.starttls(ctx)
    t.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return t


def tls_session(port, ctx, login=False, cls=h.TLSClient):
    """An implicit-TLS session, greeting read (and logged in as demo)."""
    c = cls(port, ctx)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    greeting = c.read_line()
    assert greeting.startswith(b"* OK"), greeting
    if login:
        _, tagged = c.command("L0", "LOGIN demo demo")
        assert tagged.startswith(b"L0 OK"), "LOGIN demo demo failed: %r" % tagged
    return c


def session(kind, proxy, port, ctx):
    if kind == "before-tls":
        return plain_session(port)
    if kind == "after-starttls":
        return starttls_session(port, ctx)
    return tls_session(proxy.port, ctx)


def send(c, data, bytewise=False):
    """Writes data in one write, or one byte per write (each its own TCP
    segment with TCP_NODELAY, or its own TLS record) with a short pause so
    that the proxy reads them apart."""
    if not bytewise:
        c.write(data)
        return
    for i in range(len(data)):
        c.write(data[i:i + 1])
        time.sleep(0.002)


def backend_rows(emu, since):
    """Record rows after index `since`, waiting (bounded) until the record
    stops growing, so that what the proxy forwarded last is in."""
    rows = emu.records()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        time.sleep(0.1)
        again = emu.records()
        if len(again) == len(rows):
            break
        rows = again
    return rows[since:]


def lines_of(rows):
    return [r["line"] for r in rows if "line" in r]


def commands_named(rows, *names):
    """Backend lines whose command name (as the emulator parses it: tag,
    one or more spaces, name) is one of names."""
    want = {n.upper() for n in names}
    out = []
    for line in lines_of(rows):
        m = COMMAND_RE.match(line)
        if m and m.group(1).upper() in want:
            out.append(line)
    return out


def read_answer(c, timeout=ANSWER):
    """The next line, or a description of why there was none."""
    try:
        return c.read_line(timeout=timeout)
    except (socket.timeout, TimeoutError):
        return "<no answer within %.0fs>" % timeout
    except h.Closed as e:
        return "<connection closed (%s)>" % e.how


def not_logged_in(c, tag="X9"):
    """True when SELECT INBOX does not succeed (or the session is gone)."""
    try:
        _, tagged = c.command(tag, "SELECT INBOX", timeout=ANSWER)
    except (h.Closed, socket.timeout, TimeoutError, ConnectionError):
        return True
    return not tagged.startswith(tag.encode() + b" OK")


def read_tagged(c, tags, what, timeout=ANSWER):
    """Reads (literals inline) until every tag in `tags` had its tagged
    answer; returns (all items in order, {tag: tagged line}). When that
    does not happen, fails the test saying what the client got, after
    `what` (what the client did)."""
    deadline = time.monotonic() + timeout
    items, done = [], {}
    try:
        while set(done) != set(tags):
            line = c.read_line(max(deadline - time.monotonic(), 0.001))
            items.append(line)
            tag = line.split(b" ", 1)[0].decode("latin-1")
            if tag in tags and tag not in done:
                done[tag] = line
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                items.append(c.read_exact(int(m.group(1)),
                                          max(deadline - time.monotonic(), 0.001)))
    except (socket.timeout, TimeoutError) as e:
        pytest.fail("%s: the client waited %.0fs for the answers to %s and got only %r "
                    "(%s)" % (what, timeout, ", ".join(tags), short(items), e))
    except (h.Closed, ConnectionError) as e:
        pytest.fail("%s: the connection closed before the answers to %s; the client got %r "
                    "(%s)" % (what, ", ".join(tags), short(items), e))
    return items, done


def short(items):
    """Items for a failure message, big literals cut."""
    return [x if len(x) <= 200 else x[:80] + b"...<%d octets>" % len(x) for x in items]


# ------------------------------------------------------- 1. fail closed ----

MALFORMED = {
    "tag-65-chars": LONG_TAG.encode() + b" LOGIN demo demo\r\n",
    "two-spaces-after-tag": b"a  LOGIN demo demo\r\n",
    "tag-with-plus": b"a+b LOGIN demo demo\r\n",
    "tag-with-star": b"a*b LOGIN demo demo\r\n",
    "tag-with-percent": b"a%b LOGIN demo demo\r\n",
    "tag-with-paren": b"a(b LOGIN demo demo\r\n",
    "tag-with-quote": b"a\"b LOGIN demo demo\r\n",
    "tag-with-backslash": b"a\\b LOGIN demo demo\r\n",
    "tag-with-brace": b"a{b LOGIN demo demo\r\n",
    "tag-with-ctl": b"a\x01b LOGIN demo demo\r\n",
    "nul-in-tag": b"a\x00b LOGIN demo demo\r\n",
    "nul-in-line": b"a LOGIN demo de\x00mo\r\n",
    "tab-after-tag": b"a\tLOGIN demo demo\r\n",
    "space-before-tag": b" a LOGIN demo demo\r\n",
    "empty-line": b"\r\n",
    "bare-lf-empty-line": b"\n",
}


def assert_refused_bad(answer, what):
    assert isinstance(answer, bytes) and re.match(rb"^\S+ BAD\b", answer), (
        "the client sent %s and expected the proxy's BAD; it got %r" % (what, answer))


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-write", "byte-by-byte"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_line_before_tls_is_bad_and_never_forwarded(gate, case, bytewise):
    proxy, port, emu = gate()
    mark = len(emu.records())
    attack = MALFORMED[case]
    with plain_session(port) as c:
        send(c, attack, bytewise)
        assert_refused_bad(read_answer(c), "%r before TLS" % attack)
        assert not_logged_in(c), "after %r before TLS, SELECT INBOX succeeded" % attack
    rows = backend_rows(emu, mark)
    assert not commands_named(rows, "LOGIN", "AUTHENTICATE"), (
        "a line naming LOGIN reached the backend after the client sent %r before TLS: %r"
        % (attack, lines_of(rows)))
    line = attack[:-2] if attack.endswith(b"\r\n") else attack[:-1]
    assert line.decode("latin-1") not in lines_of(rows), (
        "the malformed line %r reached the backend: %r" % (attack, lines_of(rows)))


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-write", "byte-by-byte"])
def test_login_after_junk_lines_before_tls_never_forwarded(gate, bytewise):
    proxy, port, emu = gate()
    mark = len(emu.records())
    junk = [b"\r\n", b"\x00\r\n", b" \r\n", LONG_TAG.encode() + b" NOOP\r\n", b"j  NOOP\r\n"]
    with plain_session(port) as c:
        send(c, b"".join(junk) + b"a LOGIN demo demo\r\n", bytewise)
        # Answers to the junk may come before or after the LOGIN's.
        got, deadline = [], time.monotonic() + ANSWER
        while time.monotonic() < deadline:
            line = read_answer(c, max(deadline - time.monotonic(), 0.001))
            if not isinstance(line, bytes):
                break
            got.append(line)
            bads = [l for l in got if re.match(rb"^\S+ BAD\b", l) and not l.startswith(b"a ")]
            if len(bads) >= len(junk) and [l for l in got if l.startswith(b"a ")]:
                break
        assert not [l for l in got if re.match(rb"^\S+ OK\b", l)], (
            "junk lines and LOGIN before TLS: something was accepted: %r" % got)
        assert len([l for l in got if re.match(rb"^\S+ BAD\b", l)
                    and not l.startswith(b"a ")]) == len(junk), (
            "each of the %d junk lines %r should get a BAD; the client got %r"
            % (len(junk), junk, got))
        assert [l for l in got if re.match(rb"^a (NO|BAD)\b", l)], (
            "LOGIN before TLS (after junk lines) was not refused: %r" % got)
        assert not_logged_in(c), "after junk lines and LOGIN before TLS, SELECT succeeded"
    rows = backend_rows(emu, mark)
    assert not commands_named(rows, "LOGIN"), (
        "the backend received a LOGIN sent before TLS: %r" % lines_of(rows))
    forwarded = [j for j in junk if j[:-2].decode("latin-1") in lines_of(rows)]
    assert not forwarded, "junk lines reached the backend: %r" % forwarded


def test_long_tag_noop_is_bad_not_forwarded(gate, ctx):
    proxy, port, emu = gate()
    mark = len(emu.records())
    with tls_session(proxy.port, ctx) as c:
        c.write(LONG_TAG.encode() + b" NOOP\r\n")
        assert_refused_bad(read_answer(c), "a NOOP with a 65-character tag")
        _, tagged = c.command("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged
    rows = backend_rows(emu, mark)
    assert not [l for l in lines_of(rows) if l.startswith(LONG_TAG)], (
        "a 65-character tag reached the backend: %r" % lines_of(rows))


# ---------------------------------------------------- 2. tag in flight ----

def test_duplicate_tag_in_flight_is_bad_then_fresh_login_works(gate, ctx):
    proxy, port, emu = gate()
    mark = len(emu.records())
    with tls_session(proxy.port, ctx) as c:
        c.write(b"a NOOP\r\na LOGIN x wrong\r\n")
        got = []
        deadline = time.monotonic() + ANSWER
        while len([l for l in got if l.startswith(b"a ")]) < 2:
            line = read_answer(c, max(deadline - time.monotonic(), 0.001))
            if not isinstance(line, bytes):
                break
            got.append(line)
        tagged = [l for l in got if l.startswith(b"a ")]
        assert any(l.startswith(b"a BAD") for l in tagged), (
            "a second command with tag 'a' while 'a NOOP' was in flight was not refused "
            "with BAD; the client got %r" % got)
        assert any(l.startswith(b"a OK") for l in tagged), (
            "the NOOP tagged 'a' got no OK; the client got %r" % got)
        assert not_logged_in(c), "after a duplicate-tag LOGIN, SELECT INBOX succeeded"
        _, tagged = c.command("b", "LOGIN demo demo")
        assert tagged.startswith(b"b OK"), "a LOGIN with a fresh tag failed: %r" % tagged
        _, tagged = c.command("c", "SELECT INBOX")
        assert tagged.startswith(b"c OK"), tagged
    rows = backend_rows(emu, mark)
    assert "a LOGIN x wrong" not in lines_of(rows), (
        "the duplicate-tag LOGIN reached the backend: %r" % lines_of(rows))


def wait_bye(c, t0, limit):
    """Reads until `* BYE` or the end; returns (line or None, elapsed)."""
    deadline = t0 + limit + SLACK
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, time.monotonic() - t0
        try:
            line = c.read_line(timeout=left)
        except (socket.timeout, TimeoutError):
            return None, time.monotonic() - t0
        except h.Closed:
            return b"<closed without BYE>", time.monotonic() - t0
        if line.startswith(b"* BYE"):
            return line, time.monotonic() - t0


def test_duplicate_tag_login_keeps_preauth_deadline(gate, ctx):
    proxy, port, emu = gate(extra={"imap": {"preauth_timeout": "%dms" % (PREAUTH * 1000)}})
    t0 = time.monotonic()
    with tls_session(proxy.port, ctx) as c:
        c.write(b"a NOOP\r\na LOGIN x wrong\r\n")
        line, elapsed = wait_bye(c, t0, PREAUTH)
        assert line is not None and line.startswith(b"* BYE"), (
            "after 'a NOOP' + 'a LOGIN x wrong' the session was not cut at the %.0fs "
            "pre-login deadline (waited %.1fs; got %r): the proxy took the NOOP's OK "
            "for a login" % (PREAUTH, elapsed, line))
        assert elapsed <= PREAUTH + SLACK, elapsed


# --------------------------------------------- 3. literals by the rules ----

# The 19 octets are a literal argument of NOOP; the final CRLF ends the
# command. A backend without LITERAL+ that read "{19+}" as it is would run
# the literal as a command.
SMUGGLE = b"a NOOP {19+}\r\nb LOGIN demo demo\r\n\r\n"


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-write", "byte-by-byte"])
@pytest.mark.parametrize("kind", ["before-tls", "after-starttls"])
def test_nonsync_literal_cannot_smuggle_login(gate, ctx, kind, bytewise):
    proxy, port, emu = gate(flags=["--no-literal-plus"])
    mark = len(emu.records())
    with session(kind, proxy, port, ctx) as c:
        send(c, SMUGGLE, bytewise)
        read_tagged(c, ["a"], "%s: sent %r" % (kind, SMUGGLE))
        assert not_logged_in(c), (
            "%s: 'a NOOP {19+}' with 'b LOGIN demo demo' as its literal logged the "
            "client in" % kind)
    rows = backend_rows(emu, mark)
    assert not commands_named(rows, "LOGIN"), (
        "%s: the backend (no LITERAL+) ran the literal 'b LOGIN demo demo' as a command: "
        "%r" % (kind, lines_of(rows)))
    assert not [l for l in lines_of(rows) if l.endswith("+}")], (
        "%s: '{N+}' reached a backend that did not advertise LITERAL+: %r"
        % (kind, lines_of(rows)))


def test_nonsync_append_converted_for_backend_without_literal_plus(gate, ctx):
    proxy, port, emu = gate(flags=["--no-literal-plus"])
    mark = len(emu.records())
    body = h.message_body(3000, seed=91)
    with tls_session(proxy.port, ctx, login=True) as c:
        tagged = h.append(c, "P", body, sync=False)
        assert tagged.startswith(b"P OK"), "APPEND with {N+} failed: %r" % tagged
        assert h.fetch_appended(c, tagged) == body, "the appended message came back different"
    appends = commands_named(backend_rows(emu, mark), "APPEND")
    assert appends, "no APPEND reached the backend"
    assert all(l.endswith("{%d}" % len(body)) for l in appends), (
        "the backend without LITERAL+ got %r instead of a synchronising {%d}"
        % (appends, len(body)))


@pytest.mark.parametrize("announce", [b"abc {5}", b"abc {99999999}"], ids=["small", "too-big"])
def test_sasl_response_line_is_not_a_literal_announcement(gate, ctx, announce):
    proxy, port, emu = gate(extra={"imap": {"max_literal_size": "1M"}})
    mark = len(emu.records())
    with tls_session(proxy.port, ctx) as c:
        c.write(b"A AUTHENTICATE PLAIN\r\n")
        cont = read_answer(c)
        assert isinstance(cont, bytes) and cont.startswith(b"+"), cont
        c.write(announce + b"\r\n")
        answer = read_answer(c)
        assert isinstance(answer, bytes) and re.match(rb"^A (NO|BAD)\b", answer), (
            "after AUTHENTICATE PLAIN's '+', the line %r should end the exchange with a "
            "NO/BAD; the client got %r (a '+' means it was taken as a literal "
            "announcement)" % (announce, answer))
        _, tagged = c.command("n", "NOOP")
        assert tagged.startswith(b"n OK"), "the session did not recover: %r" % tagged
    rows = backend_rows(emu, mark)
    assert not [r for r in rows if "literal" in r], (
        "the backend received literal octets after the SASL line %r: %r" % (announce, rows))
    assert not [l for l in lines_of(rows) if re.search(r"\{\d+\}$", l)], (
        "a literal announcement reached the backend after AUTHENTICATE's '+' "
        "(it then waits for octets the client never framed): %r" % lines_of(rows))
    assert "n NOOP" in lines_of(rows), (
        "the NOOP after the SASL exchange did not reach the backend as a command: %r"
        % lines_of(rows))


def test_max_literal_size_applies_before_login(gate, ctx):
    proxy, port, emu = gate(extra={"imap": {"max_literal_size": "1M"}})
    mark = len(emu.records())
    with tls_session(proxy.port, ctx) as c:
        c.write(b"a LOGIN {99999999}\r\n")
        answer = read_answer(c)
        assert isinstance(answer, bytes) and re.match(rb"^a (NO|BAD)\b", answer), (
            "a 99999999-octet literal before login (max_literal_size 1M) got %r" % answer)
        _, tagged = c.command("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged
    assert not [l for l in lines_of(backend_rows(emu, mark)) if "{99999999}" in l]


# ------------------------------------------------ 4. state, not tags ----

def test_starttls_with_command_in_flight(gate, ctx):
    proxy, port, emu = gate()
    with plain_session(port) as c:
        c.write(b"a NOOP\r\nb STARTTLS\r\n")
        items, done = read_tagged(c, ["a", "b"], "'a NOOP' + 'b STARTTLS' in one write")
        if done["b"].startswith(b"b BAD"):
            assert done["a"].startswith(b"a OK"), items
            _, tagged = c.command("c", "NOOP")
            assert tagged.startswith(b"c OK"), tagged
            return
        assert done["b"].startswith(b"b OK"), (
            "STARTTLS pipelined after NOOP got neither BAD nor OK: %r" % items)
        assert items.index(done["a"]) < items.index(done["b"]), (
            "STARTTLS was accepted before the NOOP in flight was answered: %r" % items)
        t = c.starttls(ctx)
        untagged, tagged = t.command("c", "NOOP")
        assert tagged.startswith(b"c OK"), tagged
        assert not [l for l in untagged if l.startswith(b"a ")], (
            "the NOOP sent before STARTTLS was answered inside TLS: %r" % untagged)


def test_starttls_after_tls_is_bad(gate, ctx):
    proxy, port, emu = gate()
    mark = len(emu.records())
    with starttls_session(port, ctx) as t:
        _, tagged = t.command("b", "STARTTLS")
        assert tagged.startswith(b"b BAD"), "a second STARTTLS got %r" % tagged
        _, tagged = t.command("c", "LOGIN demo demo")
        assert tagged.startswith(b"c OK"), tagged
    assert not commands_named(backend_rows(emu, mark), "STARTTLS")


def test_compress_with_command_in_flight(gate, ctx):
    proxy, port, emu = gate(extra={"imap": {"compress": "on"}})
    mark = len(emu.records())
    with tls_session(proxy.port, ctx, login=True, cls=ZClient) as c:
        c.write(b"a NOOP\r\nb COMPRESS DEFLATE\r\n")
        items, done = read_tagged(c, ["a", "b"], "'a NOOP' + 'b COMPRESS DEFLATE' in one "
                                  "write, answers read uncompressed")
        assert done["a"].startswith(b"a OK"), items
        if done["b"].startswith(b"b BAD"):
            _, tagged = c.command("c", "NOOP")
            assert tagged.startswith(b"c OK"), tagged
        else:
            assert done["b"].startswith(b"b OK"), items
            assert items.index(done["a"]) < items.index(done["b"]), (
                "COMPRESS was accepted before the NOOP in flight was answered: %r" % items)
            c.start_compress()
            _, tagged = c.command("c", "NOOP")
            assert tagged.startswith(b"c OK"), tagged
    assert not commands_named(backend_rows(emu, mark), "COMPRESS")


def test_compress_before_login_is_bad(gate, ctx):
    proxy, port, emu = gate(extra={"imap": {"compress": "on"}})
    with tls_session(proxy.port, ctx) as c:
        _, tagged = c.command("a", "COMPRESS DEFLATE")
        assert tagged.startswith(b"a BAD"), "COMPRESS before login got %r" % tagged
        _, tagged = c.command("b", "NOOP")
        assert tagged.startswith(b"b OK"), "the session is compressed or gone: %r" % tagged


def test_compress_only_once(gate, ctx):
    proxy, port, emu = gate(extra={"imap": {"compress": "on"}})
    with tls_session(proxy.port, ctx, login=True, cls=ZClient) as c:
        c.compress("a")
        _, tagged = c.command("b", "COMPRESS DEFLATE")
        assert re.match(rb"b (NO|BAD)", tagged), "a second COMPRESS got %r" % tagged
        _, tagged = c.command("c", "NOOP")
        assert tagged.startswith(b"c OK"), tagged


# ------------------------------------------- 5. continuations by kind ----

def test_sasl_base64_response_is_forwarded(gate, ctx):
    proxy, port, emu = gate()
    mark = len(emu.records())
    blob = base64.b64encode(b"\0demo\0demo").decode()
    with tls_session(proxy.port, ctx) as c:
        c.write(b"A AUTHENTICATE PLAIN\r\n")
        assert c.read_line().startswith(b"+")
        c.write(blob.encode() + b"\r\n")
        _, tagged = c.read_until_tagged("A")
        assert tagged.startswith(b"A OK"), "AUTHENTICATE PLAIN failed: %r" % tagged
    assert blob in lines_of(backend_rows(emu, mark))


def test_sasl_cancel_is_forwarded(gate, ctx):
    proxy, port, emu = gate()
    mark = len(emu.records())
    with tls_session(proxy.port, ctx) as c:
        c.write(b"A AUTHENTICATE PLAIN\r\n")
        assert c.read_line().startswith(b"+")
        c.write(b"*\r\n")
        _, tagged = c.read_until_tagged("A")
        assert re.match(rb"A (NO|BAD)", tagged), "a cancelled AUTHENTICATE got %r" % tagged
        _, tagged = c.command("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged
    assert "*" in lines_of(backend_rows(emu, mark))


def test_idle_poll_only_done_ends_idle_nothing_smuggled(gate, ctx):
    proxy, port, emu = gate(extra={"backend": {"idle": "poll", "poll_interval": "500ms"}})
    with tls_session(proxy.port, ctx, login=True) as c:
        _, tagged = c.command("S", "SELECT INBOX")
        assert tagged.startswith(b"S OK"), tagged
        mark = len(emu.records())
        c.write(b"i IDLE\r\n")
        cont = read_answer(c)
        assert isinstance(cont, bytes) and cont.startswith(b"+"), cont
        c.write(b"DONE {5}\r\nXYZ\r\na NOOP\r\n")
        c.write(b"DONE\r\n")
        items, done = read_tagged(c, ["i"], "in emulated IDLE: 'DONE {5}', 5 octets, "
                                  "'a NOOP', then 'DONE'")
        assert done["i"].startswith(b"i OK"), (
            "IDLE (poll mode) was not ended by the DONE alone: after 'DONE {5}', 5 octets, "
            "'a NOOP' and 'DONE' the client got %r" % items)
        _, tagged = c.command("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged
    rows = backend_rows(emu, mark)
    smuggled = [r for r in rows if "literal" in r or not (
        r["line"].startswith("imapfront-") or r["line"] == "n NOOP")]
    assert not smuggled, (
        "in emulated IDLE, bytes other than the proxy's polls reached the backend: %r"
        % smuggled)


def test_idle_continuation_smuggling_keeps_exchange55_pipelining_off(gate, ctx):
    proxy, port, emu = gate(flags=["--bug-chain", "3"],
                            extra={"backend": {"quirks": "exchange55"}})
    with tls_session(proxy.port, ctx, login=True) as c:
        _, tagged = c.command("S", "SELECT INBOX")
        assert tagged.startswith(b"S OK"), tagged
        mark, emark = len(emu.records()), emu.log.mark()
        c.write(b"i IDLE\r\n")
        cont = read_answer(c)
        assert isinstance(cont, bytes) and cont.startswith(b"+"), cont
        noops = b"".join(b"n%d NOOP\r\n" % k for k in range(10))
        c.write(b"DONE {5}\r\nXYZ\r\n" + noops + b"DONE\r\n")
        try:
            _, tagged = c.command("z", "NOOP", timeout=10)
        except (h.Closed, socket.timeout, TimeoutError) as e:
            pytest.fail("after an IDLE continuation 'DONE {5}' followed by ten NOOPs, a NOOP "
                        "got no answer within 10s (%s); emulator log: %r"
                        % ("closed" if isinstance(e, h.Closed) else "timed out",
                           emu.log.lines(emark)[-8:]))
        assert tagged.startswith(b"z OK"), tagged
    assert not emu.log.find(r"close chain-bug", emark), (
        "the backend received more than 3 commands in one read and dropped the session")
    rows = backend_rows(emu, mark)
    per_recv = {}
    for r in rows:
        if "line" in r and re.match(r"^n\d NOOP$", r["line"]):
            per_recv.setdefault((r["conn"], r["recv"]), []).append(r["line"])
    assert all(len(v) == 1 for v in per_recv.values()), (
        "with pipelining off, NOOPs reached the backend together: %r" % per_recv)


# ----------------------------------------------------------- 6. deadlines ----

def test_preauth_deadline_holds_against_noops(gate, ctx):
    proxy, port, emu = gate(extra={"imap": {"preauth_timeout": "%dms" % (PREAUTH * 1000)}})
    t0 = time.monotonic()
    limit = t0 + PREAUTH + SLACK
    bye = None
    with tls_session(proxy.port, ctx) as c:
        for k in range(int((PREAUTH + SLACK) / 0.5) + 2):
            if bye is not None or time.monotonic() >= limit:
                break
            try:
                c.write(b"n%d NOOP\r\n" % k)
            except OSError:
                bye = b"<write failed: closed>"
                break
            next_noop = time.monotonic() + 0.5
            # Read until it is time for the next NOOP (or a BYE).
            while bye is None and time.monotonic() < next_noop:
                line = read_answer(c, max(next_noop - time.monotonic(), 0.001))
                if isinstance(line, bytes) and line.startswith(b"* BYE"):
                    bye = line
                elif isinstance(line, str) and line.startswith("<connection closed"):
                    bye = line.encode()
    elapsed = time.monotonic() - t0
    assert bye is not None and bye.startswith(b"* BYE"), (
        "a client sending NOOP every 0.5s without logging in was not cut with * BYE at the "
        "%.0fs preauth_timeout (after %.1fs: %r)" % (PREAUTH, elapsed, bye or "still open"))
    assert elapsed >= PREAUTH - 0.1, "the pre-login BYE came early: %.1fs" % elapsed


@pytest.mark.parametrize("prelude", [b"", b"\r\n", LONG_TAG.encode() + b" NOOP\r\n"],
                         ids=["nothing", "empty-line", "long-tag"])
def test_preauth_deadline_after_bad_line(gate, ctx, prelude):
    proxy, port, emu = gate(extra={"imap": {"preauth_timeout": "%dms" % (PREAUTH * 1000)}})
    t0 = time.monotonic()
    with tls_session(proxy.port, ctx) as c:
        if prelude:
            c.write(prelude)
        line, elapsed = wait_bye(c, t0, PREAUTH)
        assert line is not None and line.startswith(b"* BYE"), (
            "after %r the session was not cut at the %.0fs pre-login deadline "
            "(waited %.1fs; got %r)" % (prelude, PREAUTH, elapsed, line))


# ------------------------------------- 7. local answers at boundaries ----

REFUSED = {
    "compress-off": (b"r COMPRESS DEFLATE\r\n", rb"^r (NO|BAD)\b"),
    "starttls-on-tls": (b"r STARTTLS\r\n", rb"^r BAD\b"),
    "toobig": (b"r APPEND INBOX {99999999}\r\n", rb"^r NO \[TOOBIG\]"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_local_answer_never_inside_fetch_literal(gate, ctx, case):
    proxy, port, emu = gate(extra={"imap": {"max_literal_size": "1M"}})
    body = h.fast_body(300 * 1024, seed=77)
    command, expect = REFUSED[case]
    with tls_session(proxy.port, ctx, login=True) as c:
        tagged = h.append(c, "P", body)
        assert tagged.startswith(b"P OK"), tagged
        _, tagged = c.command("S", "SELECT INBOX")
        assert tagged.startswith(b"S OK"), tagged
        c.write(b"f FETCH 1 BODY[]\r\n" + command)
        items, done = read_tagged(c, ["f", "r"], "FETCH of a 300 KiB message pipelined with "
                                  "%r" % command, timeout=15)
        assert done["f"].startswith(b"f OK"), items[-3:]
        assert re.match(expect, done["r"]), "the refused command got %r" % done["r"]
        literals = [items[i + 1] for i, l in enumerate(items[:-1])
                    if re.search(rb"BODY\[\] \{\d+\}\r\n$", l)]
        assert len(literals) == 1, [x[:80] for x in items]
        got = literals[0]
        if got != body:
            where = got.find(done["r"].rstrip(b"\r\n")[:12])
            pytest.fail("the FETCH literal came back corrupted (%d octets, %s)" % (
                len(got), "the refusal %r sits at offset %d inside it" % (done["r"], where)
                if where >= 0 else "first difference at %d" % next(
                    i for i, (a, b) in enumerate(zip(got, body)) if a != b)))


# --------------------------------------------------- 8. client ID keys ----

ID_FORMS = {
    "lowercase": b'i ID ("x-originating-ip" "6.6.6.6" "x-connected-ip" "7.7.7.7" "name" "x")\r\n',
    "mixed-case": b'i ID ("X-Originating-IP" "6.6.6.6" "X-Connected-Port" "1" "name" "x")\r\n',
    "literal-key": b'i ID ({16+}\r\nx-originating-ip "6.6.6.6" "name" "x")\r\n',
}


@pytest.mark.parametrize("form", sorted(ID_FORMS))
def test_client_id_cannot_spoof_originating_ip(gate, ctx, form):
    proxy, port, emu = gate(extra={"backend": {"forward_client_ip": "id"}})
    emark = emu.log.mark()
    with tls_session(proxy.port, ctx) as c:
        c.write(ID_FORMS[form])
        _, tagged = c.read_until_tagged("i")
        assert tagged.startswith(b"i OK"), tagged
        _, tagged = c.command("L", "LOGIN demo demo")
        assert tagged.startswith(b"L OK"), tagged
    # The emulator logs each ID's pairs: "conn N id key=value ...".
    ids = [m.group(1) for m in emu.log.find(r"\bconn \d+ id ?(.*)$", emark)]
    assert len(ids) == 2, "expected the proxy's ID and the client's: %r" % ids
    # The proxy's own comes first; the client's second. Fields the proxy
    # cannot read before they go (a literal) are not sent: "ID NIL".
    client = ids[1:]
    if form != "literal-key":
        assert re.search(r"(^| )name=x( |$)", client[0]), (
            "the client's own fields did not reach the backend: %r" % ids)
    spoofed = [k for x in client for k in re.findall(r"(?:^| )([^ =]+)=", x)
               if re.match(r"(?i)x-(originating|connected)-", k)]
    assert not spoofed, (
        "the client's ID reached the backend with its own %r: it can spoof its address; "
        "IDs seen: %r" % (spoofed, ids))


# ------------------------------------------------------ 9. quirks = auto ----

def quirk_lines(proxy, mark):
    return [l for l in proxy.log.lines(mark) if re.search(r"(?i)exchange ?5\.?5", l)]


def noops_per_recv(emu, mark):
    """(conn, recv) -> number of pipelined "pN NOOP" lines in that read."""
    out = {}
    for r in backend_rows(emu, mark):
        if "line" in r and re.match(r"^p\d+ NOOP$", r["line"]):
            out[(r["conn"], r["recv"])] = out.get((r["conn"], r["recv"]), 0) + 1
    return out


def pipelined_noops(c, backend):
    c.write(b"".join(b"p%d NOOP\r\n" % k for k in range(10)))
    return read_tagged(c, ["p%d" % k for k in range(10)],
                       "ten NOOPs in one write to a proxy in front of %s" % backend, timeout=10)


@pytest.mark.parametrize("quirks", [None, "auto"], ids=["default", "auto"])
def test_auto_quirks_recognise_exchange55(proxy_factory, emulator_factory, ctx, quirks):
    emu = emulator_factory(flags=["--greeting", EXCHANGE55, "--bug-chain", "3"], record=True)
    extra = {"backend": {"quirks": quirks}} if quirks else None
    try:
        proxy = proxy_factory(emu.plain_port, extra=extra)
    except h.HarnessError as e:
        pytest.fail("imapfront did not start with quirks = %s: %s" % (quirks, e))
    mark, pmark = len(emu.records()), proxy.log.mark()
    body = h.message_body(2000, seed=55)
    with tls_session(proxy.port, ctx, login=True) as c:
        items, done = pipelined_noops(c, "an Exchange 5.5 (--bug-chain 3), quirks %s"
                                      % (quirks or "not set"))
        assert all(t.endswith(b" OK NOOP completed\r\n") for t in done.values()), done
        tagged = h.append(c, "P", body, sync=False)
        assert tagged.startswith(b"P OK"), tagged
        assert h.fetch_appended(c, tagged) == body
    per_recv = noops_per_recv(emu, mark)
    assert per_recv and max(per_recv.values()) == 1, (
        "pipelined NOOPs reached the Exchange 5.5 backend together: %r" % per_recv)
    appends = commands_named(backend_rows(emu, mark), "APPEND")
    assert appends and all(l.endswith("{%d}" % len(body)) for l in appends), (
        "{N+} was not converted for the Exchange 5.5 backend: %r" % appends)
    found = quirk_lines(proxy, pmark)
    assert len(found) == 1, (
        "the proxy's log should have one line naming the detected Exchange 5.5 profile; "
        "it has %r" % found)


@pytest.mark.parametrize("greeting", [None, DOVECOT], ids=["emulator", "dovecot-like"])
def test_auto_quirks_leave_other_servers_alone(proxy_factory, emulator_factory, ctx, greeting):
    flags = ["--greeting", greeting] if greeting else []
    emu = emulator_factory(flags=flags, record=True)
    proxy = proxy_factory(emu.plain_port)
    mark, pmark = len(emu.records()), proxy.log.mark()
    with tls_session(proxy.port, ctx, login=True) as c:
        items, done = pipelined_noops(c, greeting or "the default emulator")
        assert all(t.endswith(b" OK NOOP completed\r\n") for t in done.values()), done
    per_recv = noops_per_recv(emu, mark)
    assert per_recv and max(per_recv.values()) > 1, (
        "pipelined NOOPs never reached a %s backend together: a shield was turned on "
        "(%r)" % (greeting and "Dovecot" or "default emulator", per_recv))
    assert not quirk_lines(proxy, pmark), quirk_lines(proxy, pmark)


@pytest.mark.parametrize("greeting,profile", [(EXCHANGE55, "exchange55"), (None, "generic")],
                         ids=["exchange55", "emulator"])
def test_auto_quirks_profile_in_metrics(proxy_factory, emulator_factory, ctx, greeting, profile):
    """/metrics shows what each server's greeting made of it."""
    emu = emulator_factory(flags=["--greeting", greeting] if greeting else [])
    proxy = ops.start_proxy(proxy_factory, emu.plain_port)
    assert ops.session_backend(proxy, ctx) == ops.addr(emu.plain_port)
    m = ops.scrape(proxy)
    assert m.value("imapfront_backend_profile", server=ops.addr(emu.plain_port),
                   profile=profile) == 1, m.text


def test_quirks_none_disables_auto_detection(proxy_factory, emulator_factory, ctx):
    emu = emulator_factory(flags=["--greeting", EXCHANGE55], record=True)
    proxy = proxy_factory(emu.plain_port, extra={"backend": {"quirks": "none"}})
    mark, pmark = len(emu.records()), proxy.log.mark()
    with tls_session(proxy.port, ctx, login=True) as c:
        items, done = pipelined_noops(c, "an Exchange 5.5 greeting, quirks = none")
        assert all(t.endswith(b" OK NOOP completed\r\n") for t in done.values()), done
    per_recv = noops_per_recv(emu, mark)
    assert per_recv and max(per_recv.values()) > 1, (
        "with quirks = none, pipelined NOOPs still reached the backend one at a time: %r"
        % per_recv)
    assert not quirk_lines(proxy, pmark), quirk_lines(proxy, pmark)
