"""Helpers for the black-box tests: start the legacy-server emulator and
imapfront as child processes, follow their logs, and talk IMAP over TLS with
exact control of what goes into each TLS record.

Every wait here is bounded in time; nothing sleeps in place of an event
(polling loops re-check a condition until a deadline)."""

import json
import os
import random
import re
import select
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("IMAPFRONT_SRC") or os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("IMAPFRONT_BIN") or os.path.join(SRC, "build", "src", "imapfront")
# The emulator needs nothing beyond the standard library; the system
# interpreter is the one the README's setup installs.
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else "python3"
EMULATOR = os.path.join(SRC, "tests", "support", "legacy_imapd.py")

START_TIMEOUT = 15.0  # seconds for a process to report that it listens
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL


class HarnessError(AssertionError):
    pass


def wait_until(predicate, timeout, what, interval=0.02):
    """Polls predicate() until it returns a true value (returned) or timeout
    seconds pass (HarnessError naming `what`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise HarnessError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_listening(port):
    """Whether a TCP socket listens on 127.0.0.1:port (or the wildcard)
    right now, read from /proc/net/tcp."""
    want = {"0100007F:%04X" % port, "00000000:%04X" % port}
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] in want and fields[3] == "0A":
                    return True
    except FileNotFoundError:
        return True  # cannot tell; trust the log line
    return False


def make_cert(directory, name="server", days=30):
    """A self-signed ECDSA P-256 certificate for localhost / 127.0.0.1 made
    by the openssl CLI, valid for `days`; returns (cert_path, key_path)."""
    cert = os.path.join(directory, name + "-cert.pem")
    key = os.path.join(directory, name + "-key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", str(days), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
    return cert, key


def client_context(cafile, minimum=None, maximum=None, alpn=None, seclevel0=False):
    """A client SSLContext trusting cafile (the test's self-signed cert),
    with hostname checks off (tests connect to 127.0.0.1)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile)
    if seclevel0:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


# ------------------------------------------------------------------ logs ----

class LogFile:
    """A log file another process appends to. mark() remembers the current
    end; wait_for() looks at lines after a mark as the file grows."""

    def __init__(self, path):
        self.path = path

    def text(self):
        try:
            with open(self.path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def mark(self):
        try:
            return os.path.getsize(self.path)
        except FileNotFoundError:
            return 0

    def lines(self, since=0):
        try:
            with open(self.path, "rb") as f:
                f.seek(since)
                data = f.read()
        except FileNotFoundError:
            return []
        # A line still being written has no LF yet; leave it for later.
        complete = data[: data.rfind(b"\n") + 1]
        return complete.decode("utf-8", "replace").splitlines()

    def find(self, pattern, since=0):
        """All re.search matches of pattern among the complete lines."""
        rx = re.compile(pattern)
        return [m for m in (rx.search(l) for l in self.lines(since)) if m]

    def wait_for(self, pattern, since=0, timeout=10.0, alive=None):
        """The first match of pattern after `since`, waiting up to timeout
        seconds; alive (optional) is called each round and may raise."""

        def probe():
            if alive is not None:
                alive()
            found = self.find(pattern, since)
            return found[0] if found else None

        try:
            return wait_until(probe, timeout, "%r in %s" % (pattern, self.path))
        except HarnessError as e:
            tail = "\n".join(self.lines(since)[-30:])
            raise HarnessError("%s; log since mark:\n%s" % (e, tail)) from None


def parse_kv(text):
    """key=value pairs of a log line (values may be "quoted")."""
    out = {}
    for m in re.finditer(r'(\w[\w.-]*)=("(?:[^"\\]|\\.)*"|\S*)', text):
        v = m.group(2)
        if v.startswith('"') and v.endswith('"') and len(v) >= 2:
            v = v[1:-1]
        out[m.group(1)] = v
    return out


# ------------------------------------------------------------- processes ----

class _Child:
    """A child process we started; stop() signals only our own PID."""

    proc = None
    name = "child"

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise HarnessError("%s exited with status %s; log:\n%s"
                               % (self.name, self.proc.returncode, self.tail()))

    stderr_path = None

    def tail(self):
        """The end of the child's stderr file, when it has one."""
        if self.stderr_path is None:
            return ""
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read()[-4000:].decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode


class Emulator(_Child):
    """tests/support/legacy_imapd.py with a plain and a TLS port on
    127.0.0.1 and a mail store of its own; user demo, password demo.

    Its connection log has lines "conn N open PEER", "conn N cmd TAG NAME",
    "conn N append-stored MAILBOX UID SIZE", "conn N close REASON".

    record=True also starts it with --record: records() then returns every
    line (and literal size) it framed, as dicts (see the emulator's help)."""

    name = "emulator"

    def __init__(self, workdir, cert, key, flags=(), label="emu", record=False):
        self.dir = tempfile.mkdtemp(prefix=label + "-", dir=workdir)
        os.makedirs(os.path.join(self.dir, "store"))
        self.log = LogFile(os.path.join(self.dir, "conn.log"))
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        ready = os.path.join(self.dir, "ready")
        cmd = [PYTHON, EMULATOR, "--plain", "127.0.0.1:0", "--tls", "127.0.0.1:0",
               "--cert", cert, "--key", key, "--store", os.path.join(self.dir, "store"),
               "--users", "demo:demo", "--log", self.log.path, "--ready-file", ready]
        self.record_path = None
        if record:
            self.record_path = os.path.join(self.dir, "record.jsonl")
            cmd += ["--record", self.record_path]
        cmd += list(flags)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=err, cwd=self.dir)
        try:
            line = _read_line(self.proc.stdout, START_TIMEOUT, self.check_alive)
        except Exception:
            self.stop()
            raise
        m = re.search(r"READY plain=(\d+) tls=(\d+)", line)
        if not m:
            self.stop()
            raise HarnessError("emulator said %r instead of READY" % line)
        self.plain_port = int(m.group(1))
        self.tls_port = int(m.group(2))

    def records(self):
        """Every line and literal the emulator framed so far, as dicts
        {"conn", "recv", "same_recv", "line"} or {"conn", "recv", "literal"}."""
        if self.record_path is None:
            raise HarnessError("emulator started without record=True")
        try:
            with open(self.record_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        # A row still being written has no LF yet; leave it for later.
        complete = data[: data.rfind(b"\n") + 1]
        return [json.loads(x) for x in complete.decode("utf-8").splitlines() if x]

    def conns_since(self, mark):
        """Connection numbers opened after a log mark."""
        return [int(m.group(1)) for m in self.log.find(r"\bconn (\d+) open\b", mark)]


def _read_line(stream, timeout, check):
    """One line from a child's stdout pipe, bounded in time."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = stream.fileno()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise HarnessError("no line on stdout within %.0fs (got %r)" % (timeout, buf))
        r, _, _ = select.select([fd], [], [], min(left, 0.2))
        if r:
            chunk = os.read(fd, 4096)
            if not chunk:
                check()
                raise HarnessError("stdout closed before a full line (got %r)" % buf)
            buf += chunk
        else:
            check()
    return buf.split(b"\n", 1)[0].decode("utf-8", "replace")


def render_ini(sections):
    """INI text from {section: {key: value}} (insertion order kept)."""
    out = []
    for section, keys in sections.items():
        out.append("[%s]" % section)
        for k, v in keys.items():
            out.append("%s = %s" % (k, v))
        out.append("")
    return "\n".join(out)


class Proxy(_Child):
    """imapfront started with a proxy.ini written for one test: one implicit
    TLS listener on 127.0.0.1 (port chosen by the kernel, learned from the
    "listening name=imaps address=..." log line), the test certificate, and
    backend_port as its only backend. `extra` adds or overrides keys:
    {"imap": {"buffer_limit": "256k"}}. `env` adds environment variables."""

    name = "imapfront"

    def __init__(self, workdir, cert, key, backend_port, extra=None, label="proxy", env=None):
        self.dir = tempfile.mkdtemp(prefix=label + "-", dir=workdir)
        sections = {
            "proxy": {"workers": "1", "log_level": "info"},
            "listen.imaps": {"address": "127.0.0.1:0", "mode": "implicit-tls"},
            "tls": {"certificate": cert, "private_key": key},
            "backend": {"servers": "127.0.0.1:%d" % backend_port},
        }
        for section, keys in (extra or {}).items():
            sections.setdefault(section, {}).update(keys)
        self.ini = os.path.join(self.dir, "proxy.ini")
        with open(self.ini, "w") as f:
            f.write(render_ini(sections))
        self.log = LogFile(os.path.join(self.dir, "imapfront.log"))
        with open(self.log.path, "wb") as out:
            self.proc = subprocess.Popen([BIN, "-c", self.ini], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=out, cwd=self.dir,
                                         env=dict(os.environ, **(env or {})))
        self.pid = self.proc.pid
        try:
            m = self.log.wait_for(r"listening name=imaps address=127\.0\.0\.1:(\d+)",
                                  timeout=START_TIMEOUT, alive=self.check_alive)
        except Exception:
            self.stop()
            raise
        self.port = int(m.group(1))
        # The line should only appear once the socket accepts connections;
        # if it came early (bind logged before listen), wait for the real
        # LISTEN state so that tests measure the relay, and say so.
        if not tcp_listening(self.port):
            warnings.warn("imapfront logged 'listening' on port %d before listen()" % self.port)
            wait_until(lambda: tcp_listening(self.port), START_TIMEOUT,
                       "port %d in LISTEN state" % self.port)

    def tail(self):
        return "\n".join(self.log.lines()[-30:])

    def stats(self, timeout=5.0):
        """Sends SIGUSR1 and returns the key=value pairs of the stats line
        it logs in answer (as ints)."""
        mark = self.log.mark()
        self.proc.send_signal(signal.SIGUSR1)
        m = self.log.wait_for(r"\bstats: (.*)$", since=mark, timeout=timeout,
                              alive=self.check_alive)
        return {k: int(v) for k, v in parse_kv(m.group(1)).items() if v.lstrip("-").isdigit()}

    def wait_stats(self, predicate, timeout=5.0, what="stats"):
        """Asks for stats until predicate(stats) holds; returns them."""
        last = {}

        def probe():
            nonlocal last
            last = self.stats()
            return predicate(last)

        try:
            wait_until(probe, timeout, what, interval=0.1)
        except HarnessError as e:
            raise HarnessError("%s; last stats: %r" % (e, last)) from None
        return last

    # What AddressSanitizer, LeakSanitizer and UBSan print: a sanitized
    # build (./dev test runs one) turns any of these into a test failure.
    SANITIZER_REPORT = re.compile(
        r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error: |SUMMARY: UndefinedBehavior")

    def stop(self):
        rc = _Child.stop(self)
        m = self.SANITIZER_REPORT.search(self.log.text())
        if m:
            text = self.log.text()
            raise HarnessError("imapfront's log has a sanitizer report:\n%s"
                               % text[max(0, m.start() - 200):m.start() + 3000])
        return rc

    def rss_kib(self):
        """VmRSS of the imapfront process in KiB."""
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise HarnessError("no VmRSS in /proc/%d/status" % self.pid)

    def closed_lines(self, since=0):
        """Parsed "session: closed ..." summary lines after a mark."""
        return [parse_kv(m.group(1)) for m in self.log.find(r"\bsession: closed (.*)$", since)]


class FakeBackend:
    """A plain-TCP backend played by the test: listens on 127.0.0.1, and for
    each accepted connection runs handler(conn) in a thread. Connections
    and the listener close at stop()."""

    def __init__(self, handler, accept_timeout=30.0):
        self.handler = handler
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.conns = []
        self.errors = []
        self.stopping = threading.Event()
        self.deadline = time.monotonic() + accept_timeout
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self):
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(30)
            self.conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        try:
            self.handler(conn)
        except Exception as e:  # reported by the test through .errors
            if not self.stopping.is_set():
                self.errors.append(e)

    def stop(self):
        self.stopping.set()
        self.listener.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        self.thread.join(5)


def recv_line(sock, limit=65536):
    """One LF-terminated line from a plain socket (b"" at EOF)."""
    buf = b""
    while not buf.endswith(b"\n") and len(buf) < limit:
        ch = sock.recv(1)
        if not ch:
            break
        buf += ch
    return buf


# ---------------------------------------------------------------- client ----

class Closed(Exception):
    """The peer closed: .how is "close_notify" (TLS closed cleanly), "eof"
    (TCP closed without close_notify) or "reset" (TCP RST)."""

    def __init__(self, how):
        super().__init__(how)
        self.how = how


class LineClient:
    """What every test client shares: IMAP lines and literals read from
    self.buf, which the subclass's _fill(deadline) extends (raising Closed
    at the end), and commands sent with the subclass's write(data)."""

    def read_line(self, timeout=None):
        """One line including its CRLF (bytes)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\n", 1)
        return line + b"\n"

    def read_exact(self, n, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_until_tagged(self, tag, timeout=None):
        """Lines (literals inline) up to and including the tagged response
        for tag; returns (untagged_and_literal_bytes_list, tagged_line)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        items = []
        prefix = tag.encode() + b" "
        while True:
            line = self.read_line(max(deadline - time.monotonic(), 0.001))
            if line.startswith(prefix):
                return items, line
            items.append(line)
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                items.append(self.read_exact(int(m.group(1)),
                                             max(deadline - time.monotonic(), 0.001)))

    def command(self, tag, text, timeout=None):
        """Sends 'tag text CRLF' and returns read_until_tagged(tag)."""
        self.write(("%s %s\r\n" % (tag, text)).encode())
        return self.read_until_tagged(tag, timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TLSClient(LineClient):
    """An IMAP client over TLS built on ssl.MemoryBIO, so that a test decides
    exactly which plaintext goes into which TLS record (one write() = one
    SSL_write) and sees whether the server closed with close_notify."""

    def __init__(self, port, context, host="127.0.0.1", timeout=10.0, handshake=True,
                 source=None):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.timeout = timeout
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=False)
        self.buf = b""
        self.closed = None  # None, "close_notify" or "eof"
        self.tcp_eof = False
        if handshake:
            self.handshake()

    # -- TLS plumbing
    def _flush(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _pump(self, deadline):
        """Reads one chunk of ciphertext from the socket into the BIO."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        self.sock.settimeout(left)
        data = self.sock.recv(65536)
        if not data:
            self.tcp_eof = True
            self.incoming.write_eof()
        else:
            self.incoming.write(data)

    def handshake(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                self.obj.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                self._pump(deadline)

    @property
    def version(self):
        return self.obj.version()

    @property
    def cipher(self):
        return self.obj.cipher()

    @property
    def alpn(self):
        return self.obj.selected_alpn_protocol()

    def write(self, data):
        """Sends data; a single call of up to 16 KiB is one TLS record."""
        view = memoryview(data)
        while view:
            n = self.obj.write(view)
            view = view[n:]
            self._flush()
        if not data:
            self._flush()

    def _fill(self, deadline):
        """Adds decrypted bytes to self.buf; raises Closed at the end."""
        if self.closed:
            raise Closed(self.closed)
        while True:
            try:
                data = self.obj.read(65536)
                if data:
                    self.buf += data
                    return
                # Python's SSLObject.read() returns b"" (rather than raising
                # SSLZeroReturnError) once close_notify has arrived.
                self.closed = "close_notify"
                raise Closed(self.closed)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                self.closed = "close_notify"
                raise Closed(self.closed)
            except ssl.SSLEOFError:
                self.closed = "eof"
                raise Closed(self.closed)
            if self.tcp_eof:
                self.closed = "eof"
                raise Closed(self.closed)
            try:
                self._pump(deadline)
            except ConnectionResetError:
                self.tcp_eof = True
                self.closed = "reset"
                raise Closed(self.closed) from None

    def expect_eof(self, timeout=5.0):
        """Reads until the server closes; returns (how, bytes_read_before)."""
        deadline = time.monotonic() + timeout
        got = b""
        while True:
            try:
                self._fill(deadline)
                got += self.buf
                self.buf = b""
            except Closed as c:
                got += self.buf
                self.buf = b""
                return c.how, got

    def wait_tcp_eof(self, timeout=5.0):
        """After close_notify: reads raw bytes until the TCP FIN (or RST)."""
        deadline = time.monotonic() + timeout
        while not self.tcp_eof:
            try:
                self._pump(deadline)
            except ConnectionResetError:
                self.tcp_eof = True
        return True



def login(client, tag="L1", user="demo", password="demo"):
    client.read_line()  # greeting
    _, tagged = client.command(tag, "LOGIN %s %s" % (user, password))
    if not tagged.startswith(("%s OK" % tag).encode()):
        raise HarnessError("LOGIN failed: %r" % tagged)


def fetch_appended(c, tagged):
    """BODY.PEEK[] of the message an APPEND (tagged reply given) stored,
    over a TLSClient."""
    untagged, t = c.command("S", "SELECT INBOX")
    assert t.startswith(b"S OK"), t
    m = re.search(rb"\[APPENDUID \d+ (\d+)\]", tagged)
    if m:
        what = "UID FETCH %s (UID BODY.PEEK[])" % m.group(1).decode()
    else:
        exists = [re.match(rb"\* (\d+) EXISTS", l) for l in untagged]
        count = [int(x.group(1)) for x in exists if x][-1]
        what = "FETCH %d (UID BODY.PEEK[])" % count
    untagged, t = c.command("F", what)
    assert t.startswith(b"F OK"), t
    # untagged: "* n FETCH (... BODY[] {N}\r\n", the N octets, ")\r\n"
    for i, item in enumerate(untagged):
        if re.search(rb"BODY\[\] \{\d+\}\r\n$", item):
            return untagged[i + 1]
    raise AssertionError("no BODY[] literal in %r" % untagged)


def append(client, tag, body, sync=True):
    """APPEND body to INBOX over a TLSClient with a {N} (waiting for "+")
    or {N+} literal; returns the tagged reply line."""
    if sync:
        client.write(b"%s APPEND INBOX {%d}\r\n" % (tag.encode(), len(body)))
        cont = client.read_line()
        if not cont.startswith(b"+"):
            raise HarnessError("APPEND got %r instead of +" % cont)
        client.write(body + b"\r\n")
    else:
        client.write(b"%s APPEND INBOX {%d+}\r\n" % (tag.encode(), len(body)) + body + b"\r\n")
    _, tagged = client.read_until_tagged(tag)
    return tagged


# -------------------------------------------------------------- messages ----

def message_body(size, seed):
    """size bytes of valid message content: CRLF-terminated lines of
    printable ASCII and 8-bit octets, no bare CR or LF, no NUL. Bodies of
    64 bytes or more start with a small header."""
    rng = random.Random(seed)
    alphabet = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
    out = bytearray()
    if size >= 64:
        out += b"Subject: test %d\r\nX-Seed: %d\r\n\r\n" % (size, seed)
    while len(out) < size:
        left = size - len(out)
        if left <= 2:
            out += bytes(rng.choice(alphabet) for _ in range(left))
            break
        n = min(rng.randint(0, 200), left - 2)
        out += bytes(rng.choice(alphabet) for _ in range(n))
        out += b"\r\n"
    return bytes(out[:size])


def fast_body(size, seed):
    """Like message_body but quick for many megabytes: a random 1 KiB line
    set repeated with a varying counter line."""
    rng = random.Random(seed)
    alphabet = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
    block = bytearray()
    while len(block) < 8192:
        n = rng.randint(10, 200)
        block += bytes(rng.choice(alphabet) for _ in range(n)) + b"\r\n"
    out = bytearray(b"Subject: big %d\r\n\r\n" % size)
    i = 0
    while len(out) < size:
        out += b"%08d " % i + block
        i += 1
    out = out[:size]
    if size >= 2 and out.endswith(b"\r"):
        out[-1:] = b"x"
    return bytes(out)


def stopping(make):
    """For a fixture: yields start(*args, **kw), which calls make and keeps
    what it returns; everything started is stop()ped at teardown.
        yield from h.stopping(Backend)"""
    made = []

    def start(*args, **kw):
        x = make(*args, **kw)
        made.append(x)
        return x

    try:
        yield start
    finally:
        for x in made:
            x.stop()
