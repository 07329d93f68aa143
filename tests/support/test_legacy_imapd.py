"""Checks of the legacy-server emulator itself: protocol, store, the three
switchable Q239082 bugs, and real clients (imaplib, curl, mbsync).

Run with:  /usr/bin/python3 -m pytest -q tests/support/test_legacy_imapd.py
"""

import base64
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import legacy_imapd as L  # noqa: E402

EMULATOR = os.path.join(HERE, "legacy_imapd.py")
IO_TIMEOUT = 10.0
PASSWORD = "pw-never-logged-7c1"


# ---------------------------------------------------------------------------
# Helpers


class Emulator:
    def __init__(self, tmp_path, *extra, store=None, tls_cert=None):
        self.store = store or str(tmp_path / "store")
        self.log = str(tmp_path / ("log.%d" % time.monotonic_ns()))
        self.ready_file = str(tmp_path / "ready")
        args = [sys.executable, EMULATOR, "--plain", "127.0.0.1:0",
                "--store", self.store, "--users", "demo:demo,alice:" + PASSWORD,
                "--log", self.log, "--ready-file", self.ready_file]
        if tls_cert:
            args += ["--tls", "127.0.0.1:0", "--cert", tls_cert[0], "--key", tls_cert[1]]
        args += list(extra)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        r, _, _ = select.select([self.proc.stdout], [], [], IO_TIMEOUT)
        assert r, "emulator did not print READY in time"
        self.ready_line = self.proc.stdout.readline().decode().rstrip("\n")
        m = re.fullmatch(r"READY plain=(\d+) tls=(\d+)", self.ready_line)
        assert m, self.ready_line
        self.plain, self.tls = int(m.group(1)), int(m.group(2))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=IO_TIMEOUT)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc

    def log_lines(self):
        with open(self.log, encoding="utf-8") as f:
            return f.read().splitlines()

    def wait_log(self, pattern, timeout=IO_TIMEOUT):
        """The log is written before the server acts on the next event, but a
        close is logged after the socket is gone: poll the file, bounded."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if rx.search(line):
                    return line
            time.sleep(0.02)
        raise AssertionError("no log line matching %r in %r" % (pattern, self.log_lines()))


class Client:
    """A raw IMAP client: exact control over what goes into each write."""

    def __init__(self, port, tls=False, timeout=IO_TIMEOUT):
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock)
        self.sock = sock
        self.buf = b""
        self.greeting = self.line()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError("server closed")
        self.buf += data

    def line(self):
        for _ in range(100000):
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out, self.buf = self.buf[:i + 2], self.buf[i + 2:]
                return out
            self._fill()
        raise AssertionError("line never ended")

    def exactly(self, n):
        for _ in range(100000):
            if len(self.buf) >= n:
                out, self.buf = self.buf[:n], self.buf[n:]
                return out
            self._fill()
        raise AssertionError("literal never ended")

    def response(self, tag):
        """Lines up to the tagged one; literals are inlined as bytes items."""
        tag = tag.encode() if isinstance(tag, str) else tag
        out = []
        for _ in range(100000):
            line = self.line()
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                out.append(line)
                out.append(self.exactly(int(m.group(1))))
                continue
            out.append(line)
            if line.startswith(tag + b" "):
                return out
        raise AssertionError("no tagged response")

    def cmd(self, tag, text):
        self.send(tag.encode() + b" " + text + b"\r\n")
        return self.response(tag)

    def login(self, user="demo", password="demo"):
        r = self.cmd("L", b"LOGIN %s %s" % (user.encode(), password.encode()))
        assert r[-1].startswith(b"L OK"), r

    def eof_within(self, timeout):
        """True when the server closed the connection, reading whatever came."""
        self.sock.settimeout(timeout)
        try:
            for _ in range(1000):
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except (socket.timeout, ConnectionResetError):
            return False
        return False

    def close(self):
        self.sock.close()


def tagged(resp):
    return resp[-1].split(b" ", 2)[1]


def fetch_literal(resp):
    """The first literal of a FETCH response."""
    for i, item in enumerate(resp):
        if re.search(rb"\{\d+\}\r\n$", item):
            return resp[i + 1]
    raise AssertionError("no literal in %r" % resp[:3])


@pytest.fixture(scope="session")
def cert(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    d = tmp_path_factory.mktemp("cert")
    key, crt = str(d / "key.pem"), str(d / "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True, timeout=60)
    return crt, key


@pytest.fixture
def emu(tmp_path, request):
    started = []

    def start(*extra, **kw):
        e = Emulator(tmp_path, *extra, **kw)
        started.append(e)
        return e

    yield start
    for e in started:
        assert e.stop() == 0


# ---------------------------------------------------------------------------
# Framer: the same input split anywhere gives the same commands.


CORPUS = (b"a1 LOGIN {4}\r\ndemo {4+}\r\ndemo\r\n"
          b"a2 APPEND INBOX (\\Seen) {10+}\r\nx\r\n}{1}\r\nz\r\n"
          b"a3 NOOP\r\n"
          b"a4 APPEND INBOX {0}\r\n\r\n"
          b"a5 ID (\"k\" {3}\r\nv v \"x\" {2+}\r\n\r\n)\r\n"
          b"a6 SEARCH HEADER X-TUID {5}\r\nab{}\n\r\n")


def frame_all(chunks, bug=False):
    units, conts = [], []
    f = L.Framer(lambda: conts.append(1), bug_crlf=bug)
    for c in chunks:
        f.feed(c)
        for _ in range(1000):
            while f.units:
                units.append(f.units.popleft().parts)
            if not f.paused:
                break
            f.resume()
    return units, len(conts), f


def test_framer_every_split_gives_same_units():
    whole, conts, _ = frame_all([CORPUS])
    assert len(whole) == 6 and conts == 4
    assert whole[0] == [b"a1 LOGIN ", b"demo", b" ", b"demo", b""]
    assert whole[1][1] == b"x\r\n}{1}\r\nz"
    assert whole[3] == [b"a4 APPEND INBOX ", b"", b""]
    for i in range(len(CORPUS) + 1):
        assert frame_all([CORPUS[:i], CORPUS[i:]])[:2] == (whole, conts), i
    for i in range(0, len(CORPUS), 7):
        for j in range(i, len(CORPUS), 5):
            got = frame_all([CORPUS[:i], CORPUS[i:j], CORPUS[j:]])[:2]
            assert got == (whole, conts), (i, j)
    bytewise = frame_all([CORPUS[i:i + 1] for i in range(len(CORPUS))])[:2]
    assert bytewise == (whole, conts)


def test_framer_crlf_bug_depends_on_read_boundaries():
    head = b"A APPEND INBOX {5}\r\n"
    units, _, _ = frame_all([head, b"hello\r\n"], bug=True)
    assert units == []
    units, _, _ = frame_all([head, b"hel", b"lo\r\n"], bug=True)
    assert units == []
    units, _, _ = frame_all([head, b"hello", b"\r\n"], bug=True)
    assert units == [[b"A APPEND INBOX ", b"hello", b""]]
    units, _, _ = frame_all([head, b"hello\r\n"], bug=False)
    assert units == [[b"A APPEND INBOX ", b"hello", b""]]


def test_framer_counts_commands_per_read():
    _, _, f = frame_all([b"a NOOP\r\nb NOOP\r\nc APPEND INBOX {3+}\r\nx\r\n\r\nd NO"])
    assert f.completed_in_chunk == 3


# ---------------------------------------------------------------------------
# Protocol over the plain port


def test_ready_line_and_file(emu):
    e = emu()
    with open(e.ready_file) as f:
        assert f.read() == e.ready_line + "\n"
    assert e.tls == 0


def test_greeting_capability_and_errors(emu):
    e = emu()
    c = Client(e.plain)
    assert c.greeting == (b"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE UIDPLUS NAMESPACE ID]"
                          b" legacy emulator ready\r\n")
    r = c.cmd("a", b"CAPABILITY")
    assert r[0] == b"* CAPABILITY IMAP4rev1 LITERAL+ IDLE UIDPLUS NAMESPACE ID AUTH=PLAIN\r\n"
    assert tagged(c.cmd("b", b"SELECT INBOX")) == b"NO"
    assert tagged(c.cmd("c", b"FROBNICATE")) == b"BAD"
    assert tagged(c.cmd("d", b"LOGIN (demo")) == b"BAD"
    c.send(b"\r\n")
    assert c.line().startswith(b"* BAD")
    assert tagged(c.cmd("e", b"LOGIN demo wrong")) == b"NO"
    assert tagged(c.cmd("f", b"NOOP")) == b"OK"
    c.login()
    assert tagged(c.cmd("g", b"FETCH 1 FLAGS")) == b"BAD"
    r = c.cmd("h", b"LOGOUT")
    assert r[0].startswith(b"* BYE") and tagged(r) == b"OK"
    assert c.eof_within(IO_TIMEOUT)
    e.wait_log(r"^conn 1 close logout$")


def test_login_forms_and_password_never_logged(emu):
    e = emu()
    pw = PASSWORD.encode()
    c = Client(e.plain)
    c.send(b"a LOGIN {5}\r\n")
    assert c.line().startswith(b"+ ")
    c.send(b"alice {%d}\r\n" % len(pw))
    assert c.line().startswith(b"+ ")
    c.send(pw + b"\r\n")
    assert tagged(c.response("a")) == b"OK"
    c.close()
    c = Client(e.plain)
    c.send(b"a LOGIN {5+}\r\nalice {%d+}\r\n%s\r\n" % (len(pw), pw))
    assert tagged(c.response("a")) == b"OK"
    c.close()
    c = Client(e.plain)
    assert tagged(c.cmd("a", b'LOGIN "alice" "%s"' % pw)) == b"OK"
    c.close()
    # AUTHENTICATE PLAIN, with a continuation and with an initial response.
    blob = base64.b64encode(b"\0alice\0" + pw)
    c = Client(e.plain)
    c.send(b"a AUTHENTICATE PLAIN\r\n")
    assert c.line() == b"+ \r\n"
    c.send(blob + b"\r\n")
    assert tagged(c.response("a")) == b"OK"
    c.close()
    c = Client(e.plain)
    assert tagged(c.cmd("a", b"AUTHENTICATE PLAIN " + blob)) == b"OK"
    assert tagged(c.cmd("b", b"AUTHENTICATE PLAIN " + blob)) == b"BAD"
    c.close()
    c = Client(e.plain)
    bad = base64.b64encode(b"\0alice\0" + pw + b"x")
    assert tagged(c.cmd("a", b"AUTHENTICATE PLAIN " + bad)) == b"NO"
    c.close()
    e.wait_log(r"^conn 6 close")
    text = open(e.log, "rb").read()
    assert pw not in text and blob not in text and bad not in text
    assert text.count(b" AUTHENTICATE\n") == 4


def test_id_is_logged_with_client_ip(emu):
    e = emu()
    c = Client(e.plain)
    r = c.cmd("a", b'ID ("name" "imapfront" "x-originating-ip" "192.0.2.7")')
    assert r == [b'* ID ("name" "legacy-emulator")\r\n', b"a OK ID completed\r\n"]
    assert tagged(c.cmd("b", b"ID NIL")) == b"OK"
    e.wait_log(r"^conn 1 id name=imapfront x-originating-ip=192\.0\.2\.7$")
    e.wait_log(r"^conn 1 id$")


def test_mailbox_commands(emu):
    e = emu()
    c = Client(e.plain)
    c.login()
    assert tagged(c.cmd("a", b"CREATE Archive")) == b"OK"
    assert tagged(c.cmd("b", b"CREATE Archive")) == b"NO"
    assert tagged(c.cmd("c", b'CREATE "Archive/2024"')) == b"OK"
    r = c.cmd("d", b'LIST "" *')
    assert b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n' in r
    assert b'* LIST (\\HasChildren) "/" "Archive"\r\n' in r
    assert b'* LIST (\\HasNoChildren) "/" "Archive/2024"\r\n' in r
    r = c.cmd("e", b'LIST "" %')
    assert len(r) == 3
    assert c.cmd("f", b'LIST "" ""')[0] == b'* LIST (\\Noselect) "/" ""\r\n'
    assert b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n' in c.cmd("g", b'LIST "" inbox')
    assert tagged(c.cmd("h", b"SUBSCRIBE Archive")) == b"OK"
    r = c.cmd("i", b'LSUB "" *')
    assert len(r) == 3 and any(b'"Archive"' in x for x in r)
    r = c.cmd("j", b"NAMESPACE")
    assert r[0] == b'* NAMESPACE (("" "/")) NIL NIL\r\n'
    assert tagged(c.cmd("k", b'DELETE "Archive/2024"')) == b"OK"
    assert tagged(c.cmd("l", b"DELETE INBOX")) == b"NO"
    r = c.cmd("m", b"STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT)")
    assert re.match(rb'\* STATUS "INBOX" \(MESSAGES 0 UIDNEXT 1 UIDVALIDITY \d+ UNSEEN 0 '
                    rb'RECENT 0\)\r\n', r[0])
    r = c.cmd("n", b"SELECT INBOX")
    assert b"* 0 EXISTS\r\n" in r and r[-1].startswith(b"n OK [READ-WRITE]")
    assert any(x.startswith(b"* OK [UIDVALIDITY ") for x in r)
    assert any(x.startswith(b"* OK [UIDNEXT 1]") for x in r)
    assert any(x.startswith(b"* OK [PERMANENTFLAGS (") for x in r)
    assert tagged(c.cmd("o", b"APPEND Nowhere {1+}\r\nx")) == b"NO"


MSG = (b"From: Alice <alice@example.org>\r\nTo: demo@example.org\r\n"
       b"Subject: hello\r\nX-TUID: abc123\r\nMessage-ID: <1@x>\r\n\r\n"
       b"body line\r\nbare\nlf and\rcr \xff\x80 8bit\r\n")


def test_append_fetch_store_search_expunge(emu):
    e = emu()
    c = Client(e.plain)
    c.login()
    r = c.cmd("a", b'APPEND INBOX (\\Flagged) " 5-Mar-2021 10:20:30 +0100" {%d+}\r\n%s'
              % (len(MSG), MSG))
    m = re.match(rb"a OK \[APPENDUID (\d+) 1\]", r[-1])
    assert m, r
    c.send(b"b APPEND INBOX {%d}\r\n" % len(MSG))
    assert c.line() == b"+ Ready for literal data\r\n"
    c.send(MSG + b"\r\n")
    assert re.match(rb"b OK \[APPENDUID \d+ 2\]", c.response("b")[-1])
    c.cmd("c", b"SELECT INBOX")
    r = c.cmd("d", b"FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)")
    assert r[0] == (b'* 1 FETCH (UID 1 FLAGS (\\Flagged) RFC822.SIZE %d INTERNALDATE '
                    b'"05-Mar-2021 10:20:30 +0100" ENVELOPE (NIL "hello" (("Alice" NIL '
                    b'"alice" "example.org")) (("Alice" NIL "alice" "example.org")) '
                    b'(("Alice" NIL "alice" "example.org")) ((NIL NIL "demo" '
                    b'"example.org")) NIL NIL NIL "<1@x>"))\r\n' % len(MSG))
    assert fetch_literal(c.cmd("e", b"UID FETCH 2 BODY.PEEK[]")) == MSG
    head, text = MSG.split(b"\r\n\r\n", 1)
    assert fetch_literal(c.cmd("f", b"FETCH 1 BODY.PEEK[HEADER]")) == head + b"\r\n\r\n"
    assert fetch_literal(c.cmd("g", b"FETCH 1 RFC822.HEADER")) == head + b"\r\n\r\n"
    assert fetch_literal(c.cmd("h", b"FETCH 1 BODY.PEEK[TEXT]")) == text
    r = c.cmd("i", b"UID FETCH 1 (BODY.PEEK[HEADER.FIELDS (X-TUID subject)])")
    assert r[0] == b"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (X-TUID SUBJECT)] {34}\r\n"
    assert r[1] == b"Subject: hello\r\nX-TUID: abc123\r\n\r\n"
    r = c.cmd("j", b"FETCH 2 BODY.PEEK[]<6.5>")
    assert r[0] == b"* 2 FETCH (BODY[]<6> {5}\r\n" and r[1] == MSG[6:11]
    r = c.cmd("k", b"FETCH 2 (FLAGS)")
    assert r[0] == b"* 2 FETCH (FLAGS ())\r\n"
    r = c.cmd("l", b"FETCH 2 BODY[]")
    assert r[1] == MSG and b"FLAGS (\\Seen)" in r[2]
    assert fetch_literal(c.cmd("m", b"FETCH 2 RFC822")) == MSG
    assert c.cmd("n", b"SEARCH UNSEEN")[0] == b"* SEARCH 1\r\n"
    assert c.cmd("o", b"UID SEARCH HEADER X-TUID abc123")[0] == b"* SEARCH 1 2\r\n"
    assert c.cmd("p", b"SEARCH HEADER X-TUID nope")[0] == b"* SEARCH\r\n"
    r = c.cmd("q", b"STORE 1 +FLAGS (\\Deleted $Junk)")
    assert r[0] == b"* 1 FETCH (FLAGS (\\Flagged \\Deleted $Junk))\r\n"
    r = c.cmd("r", b"UID STORE 1:* -FLAGS.SILENT (\\Flagged)")
    assert r == [b"r OK UID STORE completed\r\n"]
    assert c.cmd("s", b"SEARCH DELETED")[0] == b"* SEARCH 1\r\n"
    assert c.cmd("t", b"UID SEARCH UNDELETED")[0] == b"* SEARCH 2\r\n"
    assert c.cmd("u", b"SEARCH OR DELETED SEEN NOT ALL")[0] == b"* SEARCH\r\n"
    assert c.cmd("v", b"SEARCH UID 2:*")[0] == b"* SEARCH 2\r\n"
    r = c.cmd("w", b"EXPUNGE")
    assert r == [b"* 1 EXPUNGE\r\n", b"w OK EXPUNGE completed\r\n"]
    c.cmd("x", b"STORE 1 FLAGS (\\Deleted)")
    r = c.cmd("y", b"UID EXPUNGE 1:1")
    assert r == [b"y OK UID EXPUNGE completed\r\n"]
    assert c.cmd("z", b"UID EXPUNGE 2")[0] == b"* 1 EXPUNGE\r\n"
    assert c.cmd("z2", b"CHECK")[-1].startswith(b"z2 OK")
    assert c.cmd("z3", b"CLOSE")[-1].startswith(b"z3 OK")
    e.wait_log(r"^conn 1 append-stored INBOX 2 %d$" % len(MSG))


def test_pipelined_commands_and_continuation_order(emu):
    e = emu()
    c = Client(e.plain)
    c.send(b"a LOGIN demo demo\r\nb NOOP\r\nc APPEND INBOX {3}\r\n")
    assert c.line() == b"a OK LOGIN completed\r\n"
    assert c.line() == b"b OK NOOP completed\r\n"
    assert c.line() == b"+ Ready for literal data\r\n"
    # What follows a literal on its line belongs to the same command.
    c.send(b"abc\r\nd APPEND INBOX {1+}\r\nx extra\r\ne NOOP\r\n")
    assert tagged(c.response("c")) == b"OK"
    assert tagged(c.response("d")) == b"BAD"
    assert tagged(c.response("e")) == b"OK"


def test_idle_announces_appends_from_other_connections(emu):
    e = emu()
    a = Client(e.plain)
    a.login()
    a.cmd("s", b"SELECT INBOX")
    a.send(b"i IDLE\r\n")
    assert a.line() == b"+ idling\r\n"
    b = Client(e.plain)
    b.login()
    assert tagged(b.cmd("x", b"APPEND INBOX {4+}\r\nmsg1")) == b"OK"
    assert a.line() == b"* 1 EXISTS\r\n"
    assert tagged(b.cmd("y", b"APPEND INBOX {4+}\r\nmsg2")) == b"OK"
    assert a.line() == b"* 2 EXISTS\r\n"
    a.send(b"DONE\r\n")
    assert a.response("i") == [b"i OK IDLE terminated\r\n"]
    assert tagged(a.cmd("n", b"NOOP")) == b"OK"


def test_store_survives_restart(emu, tmp_path):
    e = emu()
    c = Client(e.plain)
    c.login()
    body = bytes(range(1, 256)) * 3
    c.cmd("a", b"APPEND INBOX (\\Seen) {%d+}\r\n%s" % (len(body), body))
    r = c.cmd("b", b"STATUS INBOX (UIDVALIDITY UIDNEXT)")
    c.close()
    assert e.stop() == 0
    e2 = emu(store=e.store)
    c = Client(e2.plain)
    c.login()
    assert c.cmd("b", b"STATUS INBOX (UIDVALIDITY UIDNEXT)")[0] == r[0]
    c.cmd("c", b"SELECT INBOX")
    r = c.cmd("d", b"UID FETCH 1 (FLAGS BODY.PEEK[])")
    assert r[0].startswith(b"* 1 FETCH (UID 1 FLAGS (\\Seen) BODY[] {765}")
    assert r[1] == body
    with open(os.path.join(e.store, "demo", "mailboxes", "INBOX", "1.msg"), "rb") as f:
        assert f.read() == body


def test_misbehaving_clients_do_not_hurt_the_server(emu):
    e = emu()
    c = Client(e.plain)
    c.login()
    assert tagged(c.cmd("a", b"APPEND INBOX {999999999999}")) == b"NO"
    assert tagged(c.cmd("b", b'SELECT "INBOX')) == b"BAD"
    assert tagged(c.cmd("c", b"FETCH 1:x FLAGS")) == b"BAD"
    c.send(b"\x00\x01\xff garbage\r\n")
    assert c.line().startswith(b"* BAD")
    c.send(b"d APPEND INBOX {10}\r\n")
    assert c.line().startswith(b"+")
    c.send(b"abc")  # then vanish mid-literal
    c.close()
    e.wait_log(r"^conn 1 close client-eof$")
    c = Client(e.plain)
    c.send(b"x" * (L.MAX_LINE + 10))
    assert c.line().startswith(b"* BYE")
    assert c.eof_within(IO_TIMEOUT)
    e.wait_log(r"^conn 2 close error line-too-long$")
    c = Client(e.plain)
    c.send(b"a LOGIN demo {999999999999+}\r\n")
    assert c.line().startswith(b"* BYE")
    c = Client(e.plain)
    c.login()
    assert tagged(c.cmd("z", b"NOOP")) == b"OK"


def test_imaplib_roundtrip_sizes(emu):
    import imaplib
    e = emu()
    m = imaplib.IMAP4("127.0.0.1", e.plain, timeout=IO_TIMEOUT)
    m.login("demo", "demo")
    assert m.select("INBOX")[0] == "OK"
    line = bytes(range(32, 127)) + b"\x80\xfe\xff\r\n"   # imaplib keeps CRLF-only data
    timings = {}
    for n in (0, 1, 1000, 16 * 1024 * 1024):
        data = (line * (n // len(line) + 1))[:n]
        if n > 2:
            data = data[:-2] + b"\r\n"
        if n == 1:
            data = b"z"
        t0 = time.monotonic()
        typ, resp = m.append("INBOX", None, None, data)
        assert typ == "OK", resp
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", resp[0]).group(1))
        t1 = time.monotonic()
        typ, resp = m.uid("FETCH", str(uid), "(BODY.PEEK[])")
        t2 = time.monotonic()
        assert typ == "OK"
        assert resp[0][1] == data, n
        timings[n] = (t1 - t0, t2 - t1)
    big = timings[16 * 1024 * 1024]
    print("16 MiB via imaplib: APPEND %.3fs FETCH %.3fs" % big)
    assert big[0] < 5 and big[1] < 5
    assert m.logout()[0] == "BYE"


def test_raw_16mib_append_fetch_is_fast(emu):
    e = emu()
    c = Client(e.plain)
    c.login()
    data = os.urandom(16 * 1024 * 1024).replace(b"\0", b"\n")
    t0 = time.monotonic()
    c.send(b"a APPEND INBOX {%d}\r\n" % len(data))
    assert c.line().startswith(b"+")
    c.send(data + b"\r\n")
    assert tagged(c.response("a")) == b"OK"
    t1 = time.monotonic()
    c.cmd("b", b"SELECT INBOX")
    assert fetch_literal(c.cmd("c", b"UID FETCH 1 BODY.PEEK[]")) == data
    t2 = time.monotonic()
    print("16 MiB raw: APPEND %.3fs FETCH %.3fs" % (t1 - t0, t2 - t1))
    assert t1 - t0 < 3 and t2 - t1 < 3


# ---------------------------------------------------------------------------
# The Q239082 bugs


def tls_append(port, split):
    c = Client(port, tls=True)
    c.login()
    c.send(b"A APPEND INBOX {5}\r\n")
    assert c.line().startswith(b"+ ")
    if split:
        c.send(b"hello")   # one TLS record ...
        c.send(b"\r\n")    # ... and another
    else:
        c.send(b"hello\r\n")
    c.sock.settimeout(2.0)
    try:
        return c.response("A")
    except socket.timeout:
        return None
    finally:
        c.close()


def test_tls_crlf_bug_hangs_append_in_one_record(emu, cert):
    e = emu(tls_cert=cert)
    assert e.tls != 0
    assert tls_append(e.tls, split=False) is None
    e.wait_log(r"^conn 1 bug-crlf-drop 2$")
    r = tls_append(e.tls, split=True)
    assert r is not None and r[-1].startswith(b"A OK [APPENDUID")
    # The plain port is unaffected by default.
    c = Client(e.plain)
    c.login()
    assert tagged(c.cmd("A", b"APPEND INBOX {5+}\r\nhello")) == b"OK"
    stored = [x for x in e.log_lines() if " append-stored " in x]
    assert [x.split()[1] for x in stored] == ["2", "3"]


def test_tls_crlf_bug_off(emu, cert):
    e = emu("--bug-tls-crlf", "off", tls_cert=cert)
    r = tls_append(e.tls, split=False)
    assert r is not None and r[-1].startswith(b"A OK [APPENDUID")


def test_coalesce_bug_on_plain_port(emu):
    e = emu("--bug-coalesce", "on")
    c = Client(e.plain)
    c.login()
    c.send(b"A APPEND INBOX {5}\r\n")
    assert c.line().startswith(b"+ ")
    c.send(b"hello\r\n")
    c.sock.settimeout(2.0)
    with pytest.raises(socket.timeout):
        c.response("A")
    e.wait_log(r"^conn 1 bug-crlf-drop 2$")
    assert not any(" append-stored " in x for x in e.log_lines())


@pytest.mark.parametrize("count,dropped", [(3, False), (5, True)])
def test_chain_bug(emu, count, dropped):
    e = emu("--bug-chain", "3")
    c = Client(e.plain)
    c.send(b"".join(b"n%d NOOP\r\n" % i for i in range(count)))
    if dropped:
        assert c.eof_within(IO_TIMEOUT)
        assert b"BYE" not in c.buf and b"OK" not in c.buf
        e.wait_log(r"^conn 1 close chain-bug$")
        assert not any(" cmd " in x for x in e.log_lines())
    else:
        for i in range(count):
            assert c.line() == b"n%d OK NOOP completed\r\n" % i


def test_greeting_text_replaces_capability_code(emu):
    text = ("Microsoft Exchange Server IMAP4rev1 server version 5.5.2653.23 "
            "(mail.example.org) ready")
    e = emu("--greeting", text)
    c = Client(e.plain)
    assert c.greeting == b"* OK " + text.encode() + b"\r\n"
    r = c.cmd("a", b"CAPABILITY")
    assert r[0].startswith(b"* CAPABILITY IMAP4rev1 "), r


def test_record_lines_literals_and_reads(emu, tmp_path):
    record = str(tmp_path / "record.jsonl")
    e = emu("--record", record)
    c = Client(e.plain)
    c.send(b"a NOOP\r\nb NOOP\r\n")
    assert tagged(c.response("b")) == b"OK"
    c.send(b"c LOGIN {4+}\r\ndemo demo\r\n")
    assert tagged(c.response("c")) == b"OK"
    c.send(b"d IDLE\r\n")
    assert c.line().startswith(b"+ ")
    c.send(b"DONE\r\n")
    assert tagged(c.response("d")) == b"OK"
    with open(record, encoding="utf-8") as f:
        rows = [json.loads(x) for x in f]
    assert [r.get("line", r.get("literal")) for r in rows] == [
        "a NOOP", "b NOOP", "c LOGIN {4+}", 4, " demo", "d IDLE", "DONE"], rows
    assert [r.get("same_recv") for r in rows] == [False, True, False, None, True, False,
                                                 False], rows
    assert rows[0]["recv"] == rows[1]["recv"] < rows[2]["recv"], rows
    assert {r["conn"] for r in rows} == {1}, rows


# ---------------------------------------------------------------------------
# Real clients


def run(args, **kw):
    return subprocess.run(args, capture_output=True, timeout=60, **kw)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_list_append_fetch(emu, tmp_path):
    e = emu()
    url = "imap://127.0.0.1:%d" % e.plain
    r = run(["curl", "-s", "--max-time", "20", "--url", url + "/INBOX", "-u", "demo:demo"])
    assert r.returncode == 0 and b'"INBOX"' in r.stdout, r
    msg = tmp_path / "m.eml"
    msg.write_bytes(b"Subject: curl\r\n\r\nline 1\r\nline 2 \xe9\r\n")
    r = run(["curl", "-s", "--max-time", "20", "-T", str(msg), url + "/INBOX",
             "-u", "demo:demo"])
    assert r.returncode == 0, r
    r = run(["curl", "-s", "--max-time", "20", url + "/INBOX;UID=1", "-u", "demo:demo"])
    assert r.returncode == 0 and r.stdout == msg.read_bytes(), r


@pytest.mark.skipif(shutil.which("mbsync") is None, reason="mbsync (isync) not installed")
def test_mbsync_up_and_down(emu, tmp_path):
    e = emu()
    up, down = tmp_path / "up", tmp_path / "down"
    for d in ("cur", "new", "tmp"):
        (up / "INBOX" / d).mkdir(parents=True)
    down.mkdir()
    sent = {}
    for i in range(1, 21):
        body = b"body of message %d\n%s\n" % (i, b"x" * (i * 13))
        msg = (b"From: a%d@example.org\nTo: demo@example.org\nSubject: msg %d\n"
               b"Message-ID: <m%d@example.org>\n\n" % (i, i, i)) + body
        (up / "INBOX" / "new" / ("1700000000.%d.gen" % i)).write_bytes(msg)
        sent[i] = msg
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        "IMAPAccount legacy\nHost 127.0.0.1\nPort %d\nUser demo\nPass demo\n"
        "SSLType None\nAuthMechs LOGIN\n\n"
        "IMAPStore far\nAccount legacy\n\n"
        "MaildirStore up\nPath %s/\nInbox %s/INBOX\n\n"
        "MaildirStore down\nPath %s/\nInbox %s/INBOX\n\n"
        "Channel up\nFar :far:\nNear :up:\nCreate Both\nSync All\nExpunge None\n"
        "SyncState *\n\n"
        "Channel down\nFar :far:\nNear :down:\nCreate Both\nSync All\nExpunge None\n"
        "SyncState *\n" % (e.plain, up, up, down, down))
    env = dict(os.environ, HOME=str(tmp_path))
    for channel in ("up", "down"):
        r = run(["mbsync", "-c", str(rc), channel], env=env)
        assert r.returncode == 0, r
    stored = [x for x in e.log_lines() if " append-stored INBOX " in x]
    assert len(stored) == 20
    got = {}
    for sub in ("cur", "new"):
        for f in (down / "INBOX" / sub).iterdir():
            data = f.read_bytes()
            # mbsync tags what it uploads with X-TUID; drop it to compare.
            data = re.sub(rb"(?m)^X-TUID: .*\r?\n", b"", data)
            n = int(re.search(rb"Subject: msg (\d+)", data).group(1))
            got[n] = data.replace(b"\r\n", b"\n")
    assert got == sent
