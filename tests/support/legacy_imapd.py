#!/usr/bin/python3
"""A small IMAP4rev1 server that behaves like an old Exchange 5.5.

It exists so that imapfront's tests have a backend with the Q239082 bugs,
each switchable:

  --bug-tls-crlf on|off  (TLS port, default on) when one recv() holds the end
                         of a literal and the CRLF after it, the bytes that
                         follow the literal in that recv() are lost, so the
                         command never completes and the client hangs.
  --bug-coalesce on|off  (plain port, default off) the same bug on the plain
                         port.
  --bug-chain N          (both ports, default 0 = off) when one recv()
                         delivers more than N complete command lines, the
                         connection is dropped at once, without BYE.

Two more knobs make it an older server still, for the proxy's literal shield:

  --no-literal-plus      LITERAL+ is not announced and "{N+}" is not
                         understood: a line ending in it is a malformed
                         command (tagged BAD) and the octets after it are read
                         as commands, as such a server would.
  --max-append N         an APPEND whose synchronising literal is announced
                         bigger than N octets is refused with
                         "TAG NO [TOOBIG] ..." instead of "+"; a bigger
                         non-synchronising one is read, then refused the same.

Two more let a test present another server and see exactly what arrived:

  --greeting TEXT        the greeting is "* OK TEXT" (no [CAPABILITY ...]
                         code unless TEXT has one), e.g. an Exchange 5.5
                         banner for a proxy that recognises servers by it.
  --record FILE          append one JSON object per line the framer cut
                         from the stream (commands, continuation lines such
                         as DONE or a SASL response, and each line that
                         announces a literal, announcement included):
                         {"conn": N, "recv": K, "same_recv": B, "line": S}
                         with K the number of the recv() whose bytes ended
                         the line, B whether the previous line of that
                         connection ended in the same recv(), and S the
                         line without its CRLF (bytes as latin-1). Literal
                         octets are recorded as {"conn", "recv", "literal":
                         SIZE}. Passwords do appear here: it is for tests.

Everything else is meant to be a correct (if small) IMAP4rev1 server with a
real on-disk store, so that curl, mbsync and imaplib work against it.
Python 3 standard library only.
"""

import argparse
import base64
import calendar
import collections
import email.utils
import json
import os
import re
import select
import signal
import socket
import ssl
import sys
import threading
import time

CAPS = b"IMAP4rev1 LITERAL+ IDLE UIDPLUS NAMESPACE ID"
CAPS_FULL = CAPS + b" AUTH=PLAIN"
GREETING = b"* OK [CAPABILITY " + CAPS + b"] legacy emulator ready\r\n"
# --no-literal-plus
CAPS_NO_LP = CAPS.replace(b" LITERAL+", b"")
CAPS_FULL_NO_LP = CAPS_NO_LP + b" AUTH=PLAIN"
GREETING_NO_LP = b"* OK [CAPABILITY " + CAPS_NO_LP + b"] legacy emulator ready\r\n"

# At least 64 KiB so that a literal's end and its CRLF can arrive together
# (the precondition of the Q239082 bug) and a 16 MiB APPEND takes few calls.
RECV_SIZE = 256 * 1024
MAX_LINE = 1024 * 1024
MAX_LITERAL = 100 * 1024 * 1024
AUTOLOGOUT_S = 30 * 60
SEND_TIMEOUT_S = 300
HANDSHAKE_TIMEOUT_S = 10
# Write big bodies straight to the socket instead of joining them.
BIG_WRITE = 256 * 1024

SYSTEM_FLAGS = [b"\\Answered", b"\\Flagged", b"\\Deleted", b"\\Seen", b"\\Draft"]
SYSTEM_FLAGS_BY_LOWER = {f.lower(): f for f in SYSTEM_FLAGS}

MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun",
          "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

LITERAL_END_RE = re.compile(rb"\{(\d{1,20})(\+?)\}\r?\n\Z")
APPEND_HEAD_RE = re.compile(rb"^[^ ]+ +APPEND ", re.IGNORECASE)


class ProtocolError(Exception):
    """The stream cannot be resynchronised: answer BYE and close."""


class ClientEOF(Exception):
    pass


class ChainBug(Exception):
    pass


class BadCommand(Exception):
    """Syntax error in one command: tagged BAD, session continues."""


class NoCommand(Exception):
    """Semantic refusal: tagged NO, session continues."""


# ---------------------------------------------------------------------------
# Event log


class EventLog:
    def __init__(self, path):
        self._lock = threading.Lock()
        self._f = open(path, "a", encoding="utf-8") if path else None

    def write(self, line):
        if self._f is None:
            return
        with self._lock:
            try:
                self._f.write(line + "\n")
                self._f.flush()
            except (OSError, ValueError):
                pass


def log_escape(value):
    """Keep one event per line and one token per field: percent-escape
    whitespace, '=', '%' and anything non-printable."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    out = []
    for b in value:
        if b <= 0x20 or b >= 0x7F or b in (0x25, 0x3D):
            out.append("%%%02X" % b)
        else:
            out.append(chr(b))
    return "".join(out) if out else '""'


# ---------------------------------------------------------------------------
# Framing: lines and literals, incremental and I/O free.


class Unit:
    """One framed command (or one continuation line such as DONE).

    parts alternates line segments and literal octets:
    [seg0, lit0, seg1, lit1, ..., segN]; a segment that precedes a literal
    has its "{N}" / "{N+}" announcement removed.  error is set when the
    framer refused the command (a synchronising literal that is too big).
    """

    __slots__ = ("parts", "error")

    def __init__(self, parts, error=None):
        self.parts = parts
        self.error = error

    def simple_line(self):
        """The line of a unit without literals, else None."""
        return self.parts[0] if len(self.parts) == 1 else None


class Framer:
    """Splits a byte stream into command units.

    feed() takes exactly what one recv() returned, because two of the
    emulated bugs depend on how the stream was cut into reads.

    on_continuation() is called when a synchronising literal was announced
    and the client must be told to go on.  When units framed earlier are
    still waiting to be executed, framing pauses instead (paused = True) so
    that their answers go out before the "+"; call resume() once they ran.
    """

    LINE, LITERAL = 0, 1

    def __init__(self, on_continuation, bug_crlf=False, on_bug_drop=None,
                 max_line=MAX_LINE, max_literal=MAX_LITERAL, literal_plus=True,
                 max_append=None, on_line=None, on_literal=None):
        self.buf = bytearray()  # bytes not yet framed (lines, small literals)
        self.pos = 0            # first unconsumed byte of buf
        self.scan = 0           # where to look for the next LF
        self.chunk_start = 0    # where the latest feed() began in buf
        self.state = self.LINE
        self.remaining = 0      # literal octets still to come
        self.lit = []           # literal octets so far, as received pieces
        self.parts = []
        self.units = collections.deque()
        self.paused = False
        self.completed_in_chunk = 0
        self.on_continuation = on_continuation
        self.on_bug_drop = on_bug_drop
        self.bug_crlf = bug_crlf
        self.max_line = max_line
        self.max_literal = max_literal
        self.literal_plus = literal_plus
        self.max_append = max_append
        self.on_line = on_line        # on_line(line): each line cut, CRLF included
        self.on_literal = on_literal  # on_literal(size): each literal completed

    def feed(self, data):
        self.completed_in_chunk = 0
        if self.pos:
            del self.buf[:self.pos]
            self.scan -= self.pos
            self.pos = 0
        if self.state == self.LITERAL and not self.paused and not self.buf:
            # Fast path for big literals: keep the received pieces as they
            # are and join them once, instead of growing and copying buf.
            take = min(len(data), self.remaining)
            self.lit.append(data if take == len(data) else data[:take])
            self.remaining -= take
            if self.remaining:
                return
            self.chunk_start = 0
            self.buf += data[take:]
            self._finish_literal(last_octet_in_chunk=take > 0)
            self._run()
            return
        self.chunk_start = len(self.buf)
        self.buf += data
        if not self.paused:
            self._run()

    def resume(self):
        if self.paused:
            self.paused = False
            self.on_continuation()
            self._run()

    def want_bytes(self):
        """How many octets the current literal still needs (0 in a line)."""
        if self.state == self.LITERAL:
            return max(0, self.remaining - (len(self.buf) - self.pos))
        return 0

    def _finish_literal(self, last_octet_in_chunk):
        self.parts.append(b"".join(self.lit))
        self.lit = []
        if self.on_literal:
            self.on_literal(len(self.parts[-1]))
        # Q239082: the literal's last octet and the CRLF came in one read;
        # the CRLF and the rest of that read are lost.  Everything after
        # pos in buf came in that same read.
        if (self.bug_crlf and last_octet_in_chunk
                and self.buf[self.pos:self.pos + 2] == b"\r\n"):
            lost = len(self.buf) - self.pos
            del self.buf[self.pos:]
            if self.on_bug_drop:
                self.on_bug_drop(lost)
        self.scan = self.pos
        self.state = self.LINE

    def _run(self):
        buf = self.buf
        while not self.paused:
            if self.state == self.LITERAL:
                take = min(len(buf) - self.pos, self.remaining)
                if take:
                    with memoryview(buf) as mv:
                        self.lit.append(bytes(mv[self.pos:self.pos + take]))
                    self.pos += take
                    self.remaining -= take
                if self.remaining:
                    return
                self._finish_literal(take > 0 and self.pos - 1 >= self.chunk_start)
                continue
            nl = buf.find(b"\n", self.scan)
            if nl < 0:
                self.scan = len(buf)
                if len(buf) - self.pos > self.max_line:
                    raise ProtocolError("line-too-long")
                return
            line = bytes(buf[self.pos:nl + 1])
            self.pos = nl + 1
            self.scan = self.pos
            if len(line) > self.max_line:
                raise ProtocolError("line-too-long")
            if self.on_line:
                self.on_line(line)
            m = LITERAL_END_RE.search(line)
            if m is None:
                self.parts.append(line[:-2] if line.endswith(b"\r\n") else line[:-1])
                self.units.append(Unit(self.parts))
                self.parts = []
                if nl >= self.chunk_start:
                    self.completed_in_chunk += 1
                continue
            size = int(m.group(1))
            sync = m.group(2) != b"+"
            self.parts.append(line[:m.start()])
            refusal = None
            if not sync and not self.literal_plus:
                # "{N+}" means nothing to a server without LITERAL+: the line
                # ends the command, and what follows is the next command.
                refusal = "nonsync"
            elif (sync and self.max_append is not None and size > self.max_append
                  and APPEND_HEAD_RE.match(self.parts[0])):
                # Refused before "+": the client will not send the octets.
                refusal = "toobig"
            if refusal is not None:
                self.units.append(Unit(self.parts, error=refusal))
                self.parts = []
                if nl >= self.chunk_start:
                    self.completed_in_chunk += 1
                continue
            if size > self.max_literal:
                if not sync:
                    raise ProtocolError("literal-too-big")
                self.units.append(Unit(self.parts, error="toobig"))
                self.parts = []
                if nl >= self.chunk_start:
                    self.completed_in_chunk += 1
                continue
            self.state = self.LITERAL
            self.remaining = size
            if sync:
                if self.units:
                    self.paused = True
                    return
                self.on_continuation()


# ---------------------------------------------------------------------------
# Tokenizer and argument cursor


TOKEN_RE = re.compile(
    rb'(?P<sp>[ \t]+)'
    rb'|(?P<open>\()'
    rb'|(?P<close>\))'
    rb'|"(?P<str>(?:[^"\\\r\n]|\\.)*)"'
    rb'|(?P<atom>(?:[^\x00-\x20()"\[{\x7f]|\[[^\]\r\n]*\])+)')
QUOTED_ESC_RE = re.compile(rb"\\(.)")


def tokenize(parts):
    """Turns a unit's parts into a nested token list.

    Tokens are ("atom", b), ("str", b), ("lit", b) or ("list", [...]).
    """
    stack = [[]]
    for i, seg in enumerate(parts):
        if i % 2 == 1:
            stack[-1].append(("lit", seg))
            continue
        p = 0
        n = len(seg)
        while p < n:
            m = TOKEN_RE.match(seg, p)
            if m is None:
                raise BadCommand("syntax error near %r" % seg[p:p + 10].decode("latin-1"))
            p = m.end()
            kind = m.lastgroup
            if kind == "sp":
                continue
            if kind == "open":
                stack.append([])
            elif kind == "close":
                if len(stack) == 1:
                    raise BadCommand("unbalanced parenthesis")
                inner = stack.pop()
                stack[-1].append(("list", inner))
            elif kind == "str":
                stack[-1].append(("str", QUOTED_ESC_RE.sub(rb"\1", m.group("str"))))
            else:
                stack[-1].append(("atom", m.group("atom")))
    if len(stack) != 1:
        raise BadCommand("unbalanced parenthesis")
    return stack[0]


class Args:
    def __init__(self, tokens):
        self.t = tokens
        self.i = 0

    def more(self):
        return self.i < len(self.t)

    def peek(self):
        return self.t[self.i] if self.more() else None

    def take(self):
        if not self.more():
            raise BadCommand("missing argument")
        tok = self.t[self.i]
        self.i += 1
        return tok

    def atom(self):
        kind, val = self.take()
        if kind != "atom":
            raise BadCommand("expected atom")
        return val

    def astring(self):
        kind, val = self.take()
        if kind == "list":
            raise BadCommand("expected string")
        return val

    def nstring(self):
        kind, val = self.take()
        if kind == "atom" and val.upper() == b"NIL":
            return None
        if kind == "list":
            raise BadCommand("expected string or NIL")
        return val

    def number(self):
        val = self.atom()
        if not val.isdigit() or len(val) > 10:
            raise BadCommand("expected number")
        return int(val)

    def list(self):
        kind, val = self.take()
        if kind != "list":
            raise BadCommand("expected parenthesized list")
        return val

    def end(self):
        if self.more():
            raise BadCommand("unexpected extra arguments")


# ---------------------------------------------------------------------------
# Output helpers


def istring(value):
    """A quoted string when it can be one, else a literal."""
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if (b"\r" in value or b"\n" in value or b"\0" in value
            or any(b >= 0x80 for b in value) or len(value) > 1000):
        return b"{%d}\r\n" % len(value) + value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def fmt_flags(flags):
    return b"(" + b" ".join(flags) + b")"


def fmt_internaldate(ts, tz_min):
    t = time.gmtime(ts + tz_min * 60)
    sign = b"+" if tz_min >= 0 else b"-"
    a = abs(tz_min)
    return b'"%02d-%s-%04d %02d:%02d:%02d %s%02d%02d"' % (
        t.tm_mday, MONTHS[t.tm_mon - 1].encode(), t.tm_year,
        t.tm_hour, t.tm_min, t.tm_sec, sign, a // 60, a % 60)


DATE_TIME_RE = re.compile(
    rb"^ ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$")
DATE_RE = re.compile(rb"^(\d{1,2})-([A-Za-z]{3})-(\d{4})$")


def parse_month(name):
    try:
        return [m.lower() for m in MONTHS].index(name.decode("ascii").lower()) + 1
    except ValueError:
        raise BadCommand("bad month")


def parse_date_time(value):
    m = DATE_TIME_RE.match(value)
    if not m:
        raise BadCommand("bad date-time")
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    tz = (int(zh) * 60 + int(zm)) * (1 if sign == b"+" else -1)
    try:
        local = calendar.timegm((int(year), parse_month(mon), int(day),
                                 int(hh), int(mm), int(ss), 0, 0, 0))
    except (ValueError, OverflowError):
        raise BadCommand("bad date-time")
    return local - tz * 60, tz


def parse_search_date(value):
    m = DATE_RE.match(value)
    if not m:
        raise BadCommand("bad date")
    return (int(m.group(3)), parse_month(m.group(2)), int(m.group(1)))


# ---------------------------------------------------------------------------
# Message parsing (headers, envelope)


def split_message(data):
    """Returns (header, text): the header includes the blank line."""
    a = data.find(b"\r\n\r\n")
    b = data.find(b"\n\n")
    cands = []
    if a >= 0:
        cands.append(a + 4)
    if b >= 0:
        cands.append(b + 2)
    if not cands:
        return data, b""
    end = min(cands)
    return data[:end], data[end:]


def header_fields(header):
    """[(name_lower, raw_lines_bytes, unfolded_value)] for each field."""
    fields = []
    for line in re.split(rb"(?<=\n)", header):
        if not line or line in (b"\r\n", b"\n"):
            continue
        if line[:1] in (b" ", b"\t") and fields:
            name, raw, value = fields[-1]
            fields[-1] = (name, raw + line, value + b" " + line.strip())
            continue
        colon = line.find(b":")
        if colon <= 0:
            fields.append((b"", line, b""))
            continue
        fields.append((line[:colon].strip().lower(), line, line[colon + 1:].strip()))
    return fields


def header_value(fields, name):
    for fname, _, value in fields:
        if fname == name:
            return value
    return None


def envelope_addresses(value):
    if value is None:
        return b"NIL"
    text = value.decode("latin-1")
    addrs = [a for a in email.utils.getaddresses([text]) if a[1] or a[0]]
    if not addrs:
        return b"NIL"
    out = []
    for name, addr in addrs:
        mailbox, _, host = addr.partition("@")
        out.append(b"(" + b" ".join([
            istring(name.encode("latin-1")) if name else b"NIL",
            b"NIL",
            istring(mailbox.encode("latin-1")) if mailbox else b"NIL",
            istring(host.encode("latin-1")) if host else b"NIL"]) + b")")
    return b"(" + b"".join(out) + b")"


def envelope(data):
    header, _ = split_message(data)
    f = header_fields(header)
    frm = header_value(f, b"from")
    sender = header_value(f, b"sender") or frm
    reply = header_value(f, b"reply-to") or frm
    return b"(" + b" ".join([
        istring(header_value(f, b"date")),
        istring(header_value(f, b"subject")),
        envelope_addresses(frm),
        envelope_addresses(sender),
        envelope_addresses(reply),
        envelope_addresses(header_value(f, b"to")),
        envelope_addresses(header_value(f, b"cc")),
        envelope_addresses(header_value(f, b"bcc")),
        istring(header_value(f, b"in-reply-to")),
        istring(header_value(f, b"message-id"))]) + b")"


def bodystructure(data):
    _, text = split_message(data)
    lines = text.count(b"\n")
    return b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" %d %d)' % (
        len(text), lines)


def select_header_fields(header, names, negate):
    wanted = {n.lower() for n in names}
    out = []
    for fname, raw, _ in header_fields(header):
        if (fname in wanted) != negate and fname:
            out.append(raw if raw.endswith(b"\n") else raw + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


# ---------------------------------------------------------------------------
# Store


def encode_name(name):
    """A mailbox or user name as one safe directory entry."""
    return "".join(c if (c.isascii() and (c.isalnum() or c in "_-")) else
                   "".join("%%%02X" % b for b in c.encode("utf-8", "surrogateescape"))
                   for c in name) or "%"


def decode_name(enc):
    if enc == "%":
        return ""
    raw = bytearray()
    i = 0
    while i < len(enc):
        if enc[i] == "%" and i + 3 <= len(enc):
            raw.append(int(enc[i + 1:i + 3], 16))
            i += 3
        else:
            raw += enc[i].encode()
            i += 1
    return raw.decode("utf-8", "surrogateescape")


def atomic_write(path, data):
    tmp = path + ".tmp.%d.%d" % (os.getpid(), threading.get_ident())
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Mailbox:
    def __init__(self, name, path):
        self.name = name
        self.path = path
        self.uidvalidity = 0
        self.uidnext = 1
        self.msgs = collections.OrderedDict()  # uid -> dict(flags, date, tz, size)
        self.listeners = set()

    def load(self):
        with open(os.path.join(self.path, "index.json"), "r", encoding="utf-8") as f:
            idx = json.load(f)
        self.uidvalidity = idx["uidvalidity"]
        self.uidnext = idx["uidnext"]
        for m in idx["messages"]:
            self.msgs[m["uid"]] = {
                "flags": [x.encode("utf-8", "surrogateescape") for x in m["flags"]],
                "date": m["date"], "tz": m["tz"], "size": m["size"]}

    def save(self):
        idx = {"uidvalidity": self.uidvalidity, "uidnext": self.uidnext,
               "messages": [{"uid": uid,
                             "flags": [x.decode("utf-8", "surrogateescape") for x in m["flags"]],
                             "date": m["date"], "tz": m["tz"], "size": m["size"]}
                            for uid, m in self.msgs.items()]}
        atomic_write(os.path.join(self.path, "index.json"),
                     json.dumps(idx).encode("utf-8"))

    def msg_path(self, uid):
        return os.path.join(self.path, "%d.msg" % uid)

    def read(self, uid):
        with open(self.msg_path(uid), "rb") as f:
            return f.read()

    def notify(self, origin):
        for s in list(self.listeners):
            if s is not origin:
                s.wake()


class Store:
    def __init__(self, root):
        self.root = root
        self.lock = threading.RLock()
        self.cache = {}
        self.last_uidvalidity = 0
        os.makedirs(root, exist_ok=True)

    @staticmethod
    def canonical(name):
        if name.upper() == "INBOX":
            return "INBOX"
        return name

    def _user_dir(self, user):
        return os.path.join(self.root, encode_name(user))

    def _box_dir(self, user, name):
        return os.path.join(self._user_dir(user), "mailboxes", encode_name(name))

    def _new_uidvalidity(self):
        v = max(int(time.time()), self.last_uidvalidity + 1)
        self.last_uidvalidity = v
        return v

    def ensure_user(self, user):
        with self.lock:
            os.makedirs(os.path.join(self._user_dir(user), "mailboxes"), exist_ok=True)
            if self.get(user, "INBOX") is None:
                self.create(user, "INBOX")

    def get(self, user, name):
        name = self.canonical(name)
        with self.lock:
            key = (user, name)
            box = self.cache.get(key)
            if box is not None:
                return box
            path = self._box_dir(user, name)
            if not os.path.exists(os.path.join(path, "index.json")):
                return None
            box = Mailbox(name, path)
            box.load()
            self.uidvalidity_seen(box.uidvalidity)
            self.cache[key] = box
            return box

    def uidvalidity_seen(self, v):
        self.last_uidvalidity = max(self.last_uidvalidity, v)

    def create(self, user, name):
        name = self.canonical(name)
        with self.lock:
            if self.get(user, name) is not None:
                return None
            path = self._box_dir(user, name)
            os.makedirs(path, exist_ok=True)
            box = Mailbox(name, path)
            box.uidvalidity = self._new_uidvalidity()
            box.save()
            self.cache[(user, name)] = box
            return box

    def delete(self, user, name):
        name = self.canonical(name)
        with self.lock:
            box = self.get(user, name)
            if box is None:
                return False
            for entry in os.listdir(box.path):
                os.unlink(os.path.join(box.path, entry))
            os.rmdir(box.path)
            del self.cache[(user, name)]
            box.msgs.clear()
            box.notify(None)
            return True

    def rename(self, user, old, new):
        old, new = self.canonical(old), self.canonical(new)
        with self.lock:
            box = self.get(user, old)
            if box is None or self.get(user, new) is not None:
                return False
            newpath = self._box_dir(user, new)
            os.rename(box.path, newpath)
            del self.cache[(user, old)]
            moved = Mailbox(new, newpath)
            moved.load()
            self.cache[(user, new)] = moved
            box.msgs.clear()
            box.notify(None)
            if old == "INBOX":
                self.create(user, "INBOX")
            return True

    def names(self, user):
        with self.lock:
            base = os.path.join(self._user_dir(user), "mailboxes")
            try:
                entries = os.listdir(base)
            except FileNotFoundError:
                return []
            return sorted(decode_name(e) for e in entries
                          if os.path.exists(os.path.join(base, e, "index.json")))

    def subscriptions(self, user):
        path = os.path.join(self._user_dir(user), "subscriptions.json")
        try:
            with open(path, "r", encoding="utf-8") as f:
                return set(json.load(f))
        except (FileNotFoundError, ValueError):
            return {"INBOX"}

    def set_subscribed(self, user, name, on):
        with self.lock:
            subs = self.subscriptions(user)
            if on:
                subs.add(self.canonical(name))
            else:
                subs.discard(self.canonical(name))
            atomic_write(os.path.join(self._user_dir(user), "subscriptions.json"),
                         json.dumps(sorted(subs)).encode("utf-8"))

    def append(self, user, name, data, flags, date, tz):
        """Stores one message; returns (mailbox, uid) or None if no mailbox."""
        box = self.get(user, name)
        if box is None:
            return None
        tmp = os.path.join(box.path, "incoming.%d.tmp" % threading.get_ident())
        with open(tmp, "wb") as f:
            f.write(data)
        with self.lock:
            if self.cache.get((user, box.name)) is not box:
                os.unlink(tmp)
                return None
            uid = box.uidnext
            box.uidnext += 1
            os.replace(tmp, box.msg_path(uid))
            box.msgs[uid] = {"flags": list(flags), "date": date, "tz": tz,
                             "size": len(data)}
            box.save()
        return box, uid


# ---------------------------------------------------------------------------
# Sequence sets and flags


def parse_seqset(value):
    """[(lo, hi)] with None standing for '*'."""
    ranges = []
    for item in value.split(b","):
        if not item:
            raise BadCommand("bad sequence set")
        lo, sep, hi = item.partition(b":")
        vals = []
        for v in (lo, hi) if sep else (lo,):
            if v == b"*":
                vals.append(None)
            elif v.isdigit() and len(v) <= 10 and int(v) > 0:
                vals.append(int(v))
            else:
                raise BadCommand("bad sequence set")
        ranges.append((vals[0], vals[-1]))
    return ranges


def seqset_match(ranges, star):
    resolved = []
    for lo, hi in ranges:
        lo = star if lo is None else lo
        hi = star if hi is None else hi
        if lo > hi:
            lo, hi = hi, lo
        resolved.append((lo, hi))
    return lambda n: any(lo <= n <= hi for lo, hi in resolved)


def normalize_flag(flag):
    if flag.startswith(b"\\"):
        canon = SYSTEM_FLAGS_BY_LOWER.get(flag.lower())
        if canon is None:
            if flag.lower() == b"\\recent":
                return None
            raise BadCommand("unknown system flag")
        return canon
    if not flag or any(c in flag for c in b"(){%*\"\\]"):
        raise BadCommand("bad flag")
    return flag


def parse_flag_tokens(tokens):
    out = []
    for kind, val in tokens:
        if kind != "atom":
            raise BadCommand("bad flag")
        f = normalize_flag(val)
        if f is not None and f not in out:
            out.append(f)
    return out


def sort_flags(flags):
    system = [f for f in SYSTEM_FLAGS if f in flags]
    return system + [f for f in flags if f not in SYSTEM_FLAGS]


# ---------------------------------------------------------------------------
# LIST pattern matching


def list_pattern_re(pattern):
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append("[^/]*")
        else:
            out.append(re.escape(ch))
    return re.compile("^" + "".join(out) + "$", re.DOTALL)


def list_match(pattern, name):
    rx = list_pattern_re(pattern)
    if rx.match(name):
        return True
    # INBOX is case-insensitive, also as the start of a pattern.
    if name == "INBOX" and pattern[:5].upper() == "INBOX":
        return bool(list_pattern_re("INBOX" + pattern[5:]).match(name))
    return False


# ---------------------------------------------------------------------------
# Connection: socket, framing, bugs


class Conn:
    def __init__(self, server, sock, peer, is_tls, conn_id):
        self.server = server
        self.sock = sock
        self.peer = peer
        self.is_tls = is_tls
        self.id = conn_id
        self.out = []
        self.out_len = 0
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        bug = server.bug_tls_crlf if is_tls else server.bug_coalesce
        self.framer = Framer(self._continuation, bug_crlf=bug,
                             on_bug_drop=self._bug_drop,
                             literal_plus=server.literal_plus,
                             max_append=server.max_append,
                             on_line=self._record_line if server.record else None,
                             on_literal=self._record_literal if server.record else None)
        self.recvs = 0            # recv() calls so far, for --record
        self.last_line_recv = -1  # the recv() that ended the previous line

    def log(self, text):
        self.server.log.write("conn %d %s" % (self.id, text))

    def _record_line(self, line):
        if line.endswith(b"\r\n"):
            line = line[:-2]
        elif line.endswith(b"\n"):
            line = line[:-1]
        self.server.record.write(json.dumps({
            "conn": self.id, "recv": self.recvs, "same_recv": self.recvs == self.last_line_recv,
            "line": line.decode("latin-1")}))
        self.last_line_recv = self.recvs

    def _record_literal(self, size):
        self.server.record.write(json.dumps({"conn": self.id, "recv": self.recvs,
                                             "literal": size}))

    def _bug_drop(self, lost):
        self.log("bug-crlf-drop %d" % lost)

    def _continuation(self):
        self.write(b"+ Ready for literal data\r\n")
        self.flush()

    # --- output
    def write(self, data):
        if len(data) >= BIG_WRITE:
            self.flush()
            self.sock.sendall(data)
            return
        self.out.append(data)
        self.out_len += len(data)
        if self.out_len >= BIG_WRITE:
            self.flush()

    def flush(self):
        if self.out:
            data = b"".join(self.out)
            self.out = []
            self.out_len = 0
            self.sock.sendall(data)

    # --- wakeups from other connections (IDLE)
    def wake(self):
        try:
            os.write(self.wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _drain_wake(self):
        try:
            while os.read(self.wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    # --- input
    def next_unit(self, wake_ok=False):
        """The next framed unit; None when woken (only if wake_ok)."""
        while True:
            if self.framer.units:
                return self.framer.units.popleft()
            if self.framer.paused:
                self.framer.resume()
                continue
            if not (self.is_tls and self.sock.pending()):
                r, _, _ = select.select([self.sock, self.wake_r], [], [], AUTOLOGOUT_S)
                if not r:
                    raise ProtocolError("autologout")
                if self.wake_r in r:
                    self._drain_wake()
                    if wake_ok:
                        return None
                    if self.sock not in r:
                        continue
            want = max(RECV_SIZE, self.framer.want_bytes())
            data = self.sock.recv(min(want, 4 * 1024 * 1024))
            if not data:
                raise ClientEOF()
            self.recvs += 1
            self.framer.feed(data)
            limit = self.server.bug_chain
            if limit and self.framer.completed_in_chunk > limit:
                raise ChainBug()

    def close(self):
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------
# Session: the IMAP state machine


NOT_AUTH, AUTH, SELECTED, LOGOUT = range(4)

# tag, command name, and the word after UID.  A name that is not a plain word
# is not logged: a desynchronised client could be sending a password.
CMD_HEAD_RE = re.compile(
    rb"^([^\x00-\x20()\"{%*\\\]+]+)(?: +([A-Za-z]{1,20})(?= |$)(?: +([A-Za-z]{1,20})(?= |$))?)?")


class FetchItem:
    __slots__ = ("name", "kind", "section", "fields", "negate", "start", "count", "peek")

    def __init__(self, name, kind, **kw):
        self.name = name
        self.kind = kind
        self.section = kw.get("section")
        self.fields = kw.get("fields")
        self.negate = kw.get("negate", False)
        self.start = kw.get("start")
        self.count = kw.get("count")
        self.peek = kw.get("peek", True)


BODY_ITEM_RE = re.compile(
    rb"^(BODY|BODY\.PEEK|BINARY|BINARY\.PEEK)\[([^\]]*)\](?:<(\d+)(?:\.(\d+))?>)?$",
    re.IGNORECASE)
HEADER_FIELDS_RE = re.compile(rb"^HEADER\.FIELDS(\.NOT)?\s*\((.*)\)$", re.IGNORECASE | re.DOTALL)

FETCH_MACROS = {
    b"ALL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"],
    b"FAST": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"],
    b"FULL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"],
}


def parse_fetch_item(raw):
    up = raw.upper()
    if up in (b"FLAGS", b"UID", b"RFC822.SIZE", b"INTERNALDATE", b"ENVELOPE",
              b"BODYSTRUCTURE", b"BODY"):
        return FetchItem(up, up.decode())
    if up == b"RFC822":
        return FetchItem(b"RFC822", "section", section=b"", peek=False)
    if up == b"RFC822.HEADER":
        return FetchItem(b"RFC822.HEADER", "section", section=b"HEADER", peek=True)
    if up == b"RFC822.TEXT":
        return FetchItem(b"RFC822.TEXT", "section", section=b"TEXT", peek=False)
    m = BODY_ITEM_RE.match(raw)
    if not m:
        raise BadCommand("unknown fetch item %s" % raw[:40].decode("latin-1"))
    base, section, start, count = m.groups()
    peek = base.upper().endswith(b".PEEK")
    sec_up = section.upper()
    fields = None
    negate = False
    fm = HEADER_FIELDS_RE.match(section)
    if fm:
        negate = bool(fm.group(1))
        fields = fm.group(2).split()
        if not fields:
            raise BadCommand("empty header field list")
        fields = [f.strip(b'"') for f in fields]
        canon = b"HEADER.FIELDS" + (b".NOT" if negate else b"") + b" (" + \
            b" ".join(f.upper() for f in fields) + b")"
    elif sec_up in (b"", b"HEADER", b"TEXT", b"1", b"MIME", b"1.MIME"):
        canon = sec_up
    else:
        raise BadCommand("unsupported section")
    resp = b"BINARY[" if base.upper().startswith(b"BINARY") else b"BODY["
    name = resp + canon + b"]"
    if start is not None:
        name += b"<" + start + b">"
    return FetchItem(name, "section", section=sec_up if fields is None else b"FIELDS",
                     fields=fields, negate=negate,
                     start=None if start is None else int(start),
                     count=None if count is None else int(count), peek=peek)


class Session:
    def __init__(self, server, conn):
        self.server = server
        self.store = server.store
        self.conn = conn
        self.state = NOT_AUTH
        self.user = None
        self.box = None
        self.readonly = False
        self.view = []  # UIDs as this session knows them, in sequence order

    # --- helpers
    def send(self, data):
        self.conn.write(data)

    def tagged(self, tag, status, text):
        if isinstance(text, str):
            text = text.encode("utf-8", "replace")
        self.send(tag + b" " + status + b" " + text + b"\r\n")

    def require_auth(self):
        if self.state == NOT_AUTH:
            raise NoCommand("not authenticated")

    def require_selected(self):
        self.require_auth()
        if self.state != SELECTED:
            raise BadCommand("no mailbox selected")

    def mailbox_name(self, raw):
        name = raw.decode("utf-8", "surrogateescape")
        if not name or "\0" in name or name.startswith("/") or "//" in name \
                or name.endswith("/") or any(p in (".", "..") for p in name.split("/")):
            raise NoCommand("invalid mailbox name")
        return Store.canonical(name)

    def deselect(self):
        if self.box is not None:
            with self.store.lock:
                self.box.listeners.discard(self)
        self.box = None
        self.view = []
        if self.state == SELECTED:
            self.state = AUTH

    def wake(self):
        self.conn.wake()

    def sync_view(self, allow_expunge=True):
        """Tells the client about messages that came or went meanwhile."""
        if self.state != SELECTED:
            return
        with self.store.lock:
            current = self.box.msgs
            if allow_expunge:
                for seq in range(len(self.view), 0, -1):
                    if self.view[seq - 1] not in current:
                        del self.view[seq - 1]
                        self.send(b"* %d EXPUNGE\r\n" % seq)
            top = self.view[-1] if self.view else 0
            new = [uid for uid in current if uid > top]
        if new:
            self.view.extend(new)
            self.send(b"* %d EXISTS\r\n" % len(self.view))

    # --- main loop
    def run(self):
        if self.server.greeting is not None:
            self.send(b"* OK " + self.server.greeting + b"\r\n")
        else:
            self.send(GREETING if self.server.literal_plus else GREETING_NO_LP)
        self.conn.flush()
        while self.state != LOGOUT:
            unit = self.conn.next_unit()
            self.execute(unit)
            self.conn.flush()

    def execute(self, unit):
        first = unit.parts[0]
        m = CMD_HEAD_RE.match(first)
        if m is None:
            self.conn.log("cmd * ?")
            self.send(b"* BAD invalid or missing tag\r\n")
            return
        tag = m.group(1)
        name = (m.group(2) or b"").upper()
        full = name
        if name == b"UID" and m.group(3):
            full = b"UID " + m.group(3).upper()
        # Only the command's name is logged, never its arguments (passwords).
        self.conn.log("cmd %s %s" % (tag.decode("latin-1"), full.decode("ascii") or "-"))
        try:
            if unit.error == "toobig":
                raise NoCommand("[TOOBIG] literal too big")
            if unit.error == "nonsync":
                raise BadCommand("invalid literal: LITERAL+ is not supported")
            if not name:
                raise BadCommand("missing or invalid command name")
            args = Args(tokenize([first[m.end(2):]] + unit.parts[1:]))
            handler = self.HANDLERS.get(name)
            if handler is None:
                raise BadCommand("unknown command")
            handler(self, tag, args)
        except BadCommand as e:
            self.tagged(tag, b"BAD", str(e))
        except NoCommand as e:
            self.tagged(tag, b"NO", str(e))
        except (ClientEOF, ChainBug, ProtocolError, OSError):
            raise
        except Exception:
            # A bug here must not cost the client its session.
            import traceback
            traceback.print_exc(file=sys.stderr)
            self.conn.log("error internal in %s" % full.decode("ascii"))
            self.tagged(tag, b"NO", "[SERVERBUG] internal error")

    # --- any state
    def cmd_capability(self, tag, args):
        args.end()
        caps = CAPS_FULL if self.server.literal_plus else CAPS_FULL_NO_LP
        self.send(b"* CAPABILITY " + caps + b"\r\n")
        self.tagged(tag, b"OK", "CAPABILITY completed")

    def cmd_noop(self, tag, args):
        args.end()
        self.sync_view()
        self.tagged(tag, b"OK", "NOOP completed")

    def cmd_check(self, tag, args):
        args.end()
        self.require_selected()
        self.sync_view()
        self.tagged(tag, b"OK", "CHECK completed")

    def cmd_logout(self, tag, args):
        args.end()
        self.send(b"* BYE legacy emulator logging out\r\n")
        self.tagged(tag, b"OK", "LOGOUT completed")
        self.state = LOGOUT

    def cmd_id(self, tag, args):
        kind, val = args.take()
        args.end()
        pairs = []
        if kind == "list":
            if len(val) % 2:
                raise BadCommand("ID list must hold key/value pairs")
            for i in range(0, len(val), 2):
                k, v = val[i], val[i + 1]
                if k[0] == "list" or v[0] == "list":
                    raise BadCommand("bad ID parameter")
                key = k[1]
                value = b"NIL" if (v[0] == "atom" and v[1].upper() == b"NIL") else v[1]
                pairs.append("%s=%s" % (log_escape(key), log_escape(value)))
        elif not (kind == "atom" and val.upper() == b"NIL"):
            raise BadCommand("ID expects a list or NIL")
        self.conn.log("id" + "".join(" " + p for p in pairs))
        self.send(b'* ID ("name" "legacy-emulator")\r\n')
        self.tagged(tag, b"OK", "ID completed")

    # --- not authenticated
    def login_ok(self, user, password):
        expected = self.server.users.get(user)
        return expected is not None and expected == password

    def become_user(self, user):
        self.user = user
        self.state = AUTH
        self.store.ensure_user(user)

    def cmd_login(self, tag, args):
        if self.state != NOT_AUTH:
            raise BadCommand("already authenticated")
        user = args.astring().decode("utf-8", "surrogateescape")
        password = args.astring().decode("utf-8", "surrogateescape")
        args.end()
        if not self.login_ok(user, password):
            raise NoCommand("[AUTHENTICATIONFAILED] invalid credentials")
        self.become_user(user)
        self.tagged(tag, b"OK", "LOGIN completed")

    def cmd_authenticate(self, tag, args):
        if self.state != NOT_AUTH:
            raise BadCommand("already authenticated")
        mech = args.atom().upper()
        initial = args.astring() if args.more() else None
        args.end()
        if mech != b"PLAIN":
            raise NoCommand("unsupported mechanism")
        if initial is None:
            self.send(b"+ \r\n")
            self.conn.flush()
            unit = self.conn.next_unit()
            line = unit.simple_line()
            if line is None:
                raise BadCommand("unexpected literal in SASL response")
            initial = line.strip()
            if initial == b"*":
                raise BadCommand("authentication cancelled")
        try:
            blob = b"" if initial == b"=" else base64.b64decode(initial, validate=True)
        except ValueError:
            raise BadCommand("invalid base64")
        fields = blob.split(b"\0")
        if len(fields) != 3:
            raise NoCommand("[AUTHENTICATIONFAILED] malformed PLAIN response")
        authz, user, password = (f.decode("utf-8", "surrogateescape") for f in fields)
        if (authz and authz != user) or not self.login_ok(user, password):
            raise NoCommand("[AUTHENTICATIONFAILED] invalid credentials")
        self.become_user(user)
        self.tagged(tag, b"OK", "AUTHENTICATE completed")

    # --- authenticated
    def cmd_select(self, tag, args, readonly=False):
        self.require_auth()
        name = self.mailbox_name(args.astring())
        args.end()
        self.deselect()
        box = self.store.get(self.user, name)
        if box is None:
            raise NoCommand("[NONEXISTENT] no such mailbox")
        with self.store.lock:
            self.box = box
            box.listeners.add(self)
            self.view = list(box.msgs.keys())
            unseen = next((i + 1 for i, uid in enumerate(self.view)
                           if b"\\Seen" not in box.msgs[uid]["flags"]), None)
            uidvalidity, uidnext = box.uidvalidity, box.uidnext
        self.state = SELECTED
        self.readonly = readonly
        self.send(b"* FLAGS (" + b" ".join(SYSTEM_FLAGS) + b")\r\n")
        self.send(b"* OK [PERMANENTFLAGS (" + b" ".join(SYSTEM_FLAGS) +
                  b" \\*)] flags permitted\r\n")
        self.send(b"* %d EXISTS\r\n* 0 RECENT\r\n" % len(self.view))
        if unseen is not None:
            self.send(b"* OK [UNSEEN %d] first unseen\r\n" % unseen)
        self.send(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % uidvalidity)
        self.send(b"* OK [UIDNEXT %d] predicted next UID\r\n" % uidnext)
        mode = b"[READ-ONLY]" if readonly else b"[READ-WRITE]"
        self.tagged(tag, b"OK", mode + (b" EXAMINE" if readonly else b" SELECT") + b" completed")

    def cmd_examine(self, tag, args):
        self.cmd_select(tag, args, readonly=True)

    def cmd_create(self, tag, args):
        self.require_auth()
        raw = args.astring()
        args.end()
        name = self.mailbox_name(raw.rstrip(b"/") or raw)
        if name == "INBOX" or self.store.create(self.user, name) is None:
            raise NoCommand("[ALREADYEXISTS] mailbox exists")
        self.tagged(tag, b"OK", "CREATE completed")

    def cmd_delete(self, tag, args):
        self.require_auth()
        name = self.mailbox_name(args.astring())
        args.end()
        if name == "INBOX":
            raise NoCommand("cannot delete INBOX")
        if self.box is not None and self.box.name == name:
            self.deselect()
        if not self.store.delete(self.user, name):
            raise NoCommand("[NONEXISTENT] no such mailbox")
        self.tagged(tag, b"OK", "DELETE completed")

    def cmd_rename(self, tag, args):
        self.require_auth()
        old = self.mailbox_name(args.astring())
        new = self.mailbox_name(args.astring())
        args.end()
        if new == "INBOX":
            raise NoCommand("cannot rename to INBOX")
        if not self.store.rename(self.user, old, new):
            raise NoCommand("rename failed")
        self.tagged(tag, b"OK", "RENAME completed")

    def cmd_subscribe(self, tag, args, on=True):
        self.require_auth()
        name = self.mailbox_name(args.astring())
        args.end()
        self.store.set_subscribed(self.user, name, on)
        self.tagged(tag, b"OK", ("SUBSCRIBE" if on else "UNSUBSCRIBE") + " completed")

    def cmd_unsubscribe(self, tag, args):
        self.cmd_subscribe(tag, args, on=False)

    def cmd_list(self, tag, args, lsub=False):
        self.require_auth()
        ref = args.astring().decode("utf-8", "surrogateescape")
        pattern = args.astring().decode("utf-8", "surrogateescape")
        args.end()
        word = b"LSUB" if lsub else b"LIST"
        if pattern == "":
            self.send(b'* ' + word + b' (\\Noselect) "/" ""\r\n')
        else:
            full = ref + pattern
            names = self.store.names(self.user)
            subs = self.store.subscriptions(self.user) if lsub else None
            for name in names:
                if subs is not None and name not in subs:
                    continue
                if not list_match(full, name):
                    continue
                children = any(n.startswith(name + "/") for n in names)
                attr = b"\\HasChildren" if children else b"\\HasNoChildren"
                self.send(b"* " + word + b" (" + attr + b') "/" ' + istring(name) + b"\r\n")
        self.tagged(tag, b"OK", word.decode() + " completed")

    def cmd_lsub(self, tag, args):
        self.cmd_list(tag, args, lsub=True)

    def cmd_namespace(self, tag, args):
        self.require_auth()
        args.end()
        self.send(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
        self.tagged(tag, b"OK", "NAMESPACE completed")

    def cmd_status(self, tag, args):
        self.require_auth()
        name = self.mailbox_name(args.astring())
        items = [i[1].upper() for i in args.list() if i[0] == "atom"]
        args.end()
        box = self.store.get(self.user, name)
        if box is None:
            raise NoCommand("[NONEXISTENT] no such mailbox")
        out = []
        with self.store.lock:
            for item in items:
                if item == b"MESSAGES":
                    v = len(box.msgs)
                elif item == b"UIDNEXT":
                    v = box.uidnext
                elif item == b"UIDVALIDITY":
                    v = box.uidvalidity
                elif item == b"UNSEEN":
                    v = sum(1 for m in box.msgs.values() if b"\\Seen" not in m["flags"])
                elif item == b"RECENT":
                    v = 0
                else:
                    raise BadCommand("unknown status item")
                out.append(b"%s %d" % (item, v))
        self.send(b"* STATUS " + istring(box.name) + b" (" + b" ".join(out) + b")\r\n")
        self.tagged(tag, b"OK", "STATUS completed")

    def cmd_append(self, tag, args):
        self.require_auth()
        name = self.mailbox_name(args.astring())
        flags = []
        date = None
        tok = args.peek()
        if tok is not None and tok[0] == "list":
            flags = parse_flag_tokens(args.take()[1])
        tok = args.peek()
        if tok is not None and tok[0] == "str":
            date = parse_date_time(args.take()[1])
        kind, data = args.take()
        if kind != "lit":
            raise BadCommand("APPEND expects a literal")
        args.end()
        limit = self.server.max_append
        if limit is not None and len(data) > limit:
            raise NoCommand("[TOOBIG] message bigger than %d octets" % limit)
        if date is None:
            now = time.time()
            date = (int(now), 0)
        stored = self.store.append(self.user, name, data, flags, date[0], date[1])
        if stored is None:
            raise NoCommand("[TRYCREATE] no such mailbox")
        box, uid = stored
        self.conn.log("append-stored %s %d %d" % (log_escape(box.name), uid, len(data)))
        box.notify(self)
        self.sync_view()
        self.tagged(tag, b"OK", b"[APPENDUID %d %d] APPEND completed" % (box.uidvalidity, uid))

    def cmd_idle(self, tag, args):
        self.require_auth()
        args.end()
        self.send(b"+ idling\r\n")
        while True:
            self.sync_view()
            self.conn.flush()
            unit = self.conn.next_unit(wake_ok=True)
            if unit is None:
                continue
            line = unit.simple_line()
            if line is not None and line.strip().upper() == b"DONE":
                self.tagged(tag, b"OK", "IDLE terminated")
            else:
                self.tagged(tag, b"BAD", "expected DONE")
            return

    # --- selected
    def cmd_close(self, tag, args, expunge=True):
        self.require_selected()
        args.end()
        if expunge and not self.readonly:
            self.expunge(None, announce=False)
        self.deselect()
        self.tagged(tag, b"OK", ("CLOSE" if expunge else "UNSELECT") + " completed")

    def cmd_unselect(self, tag, args):
        self.cmd_close(tag, args, expunge=False)

    def expunge(self, uid_match, announce=True):
        with self.store.lock:
            box = self.box
            gone = [uid for uid, m in box.msgs.items()
                    if b"\\Deleted" in m["flags"] and (uid_match is None or uid_match(uid))]
            for uid in gone:
                del box.msgs[uid]
                try:
                    os.unlink(box.msg_path(uid))
                except FileNotFoundError:
                    pass
            if gone:
                box.save()
        if gone:
            box.notify(self)
        if announce:
            self.sync_view()

    def cmd_expunge(self, tag, args):
        self.require_selected()
        args.end()
        if self.readonly:
            raise NoCommand("mailbox is read-only")
        self.expunge(None)
        self.tagged(tag, b"OK", "EXPUNGE completed")

    def resolve(self, seqset, uid):
        """[(seq, uid)] that the set names, within this session's view."""
        ranges = parse_seqset(seqset)
        if uid:
            star = self.view[-1] if self.view else 0
            match = seqset_match(ranges, star)
            return [(i + 1, u) for i, u in enumerate(self.view) if match(u)]
        match = seqset_match(ranges, len(self.view))
        return [(i + 1, u) for i, u in enumerate(self.view) if match(i + 1)]

    def cmd_fetch(self, tag, args, uid=False):
        self.require_selected()
        targets = self.resolve(args.atom(), uid)
        kind, val = args.take()
        args.end()
        if kind == "list":
            raws = []
            for k, v in val:
                if k != "atom":
                    raise BadCommand("bad fetch item")
                raws.append(v)
        elif kind == "atom":
            raws = FETCH_MACROS.get(val.upper(), [val])
        else:
            raise BadCommand("bad fetch items")
        items = [parse_fetch_item(r) for r in raws]
        if uid and not any(i.kind == "UID" for i in items):
            items.insert(0, FetchItem(b"UID", "UID"))
        sets_seen = not self.readonly and any(i.kind == "section" and not i.peek for i in items)
        box = self.box
        for seq, u in targets:
            with self.store.lock:
                meta = box.msgs.get(u)
                if meta is None:
                    continue
                flags_changed = False
                if sets_seen and b"\\Seen" not in meta["flags"]:
                    meta["flags"].append(b"\\Seen")
                    box.save()
                    flags_changed = True
                flags = sort_flags(meta["flags"])
                mdate, mtz, msize = meta["date"], meta["tz"], meta["size"]
            data = None
            out = []
            for item in items:
                k = item.kind
                if k == "UID":
                    out.append(b"UID %d" % u)
                elif k == "FLAGS":
                    out.append(b"FLAGS " + fmt_flags(flags))
                elif k == "RFC822.SIZE":
                    out.append(b"RFC822.SIZE %d" % msize)
                elif k == "INTERNALDATE":
                    out.append(b"INTERNALDATE " + fmt_internaldate(mdate, mtz))
                else:
                    if data is None:
                        try:
                            data = box.read(u)
                        except FileNotFoundError:
                            data = b""
                    if k == "ENVELOPE":
                        out.append(b"ENVELOPE " + envelope(data))
                    elif k in ("BODYSTRUCTURE", "BODY"):
                        out.append(item.name + b" " + bodystructure(data))
                    else:
                        out.append([item.name + b" "] + self.section_literal(item, data))
            if flags_changed and not any(i.kind == "FLAGS" for i in items):
                out.append(b"FLAGS " + fmt_flags(flags))
            self.write_fetch(seq, out)
        self.sync_view(allow_expunge=uid)
        self.tagged(tag, b"OK", ("UID " if uid else "") + "FETCH completed")

    def write_fetch(self, seq, items):
        """items are bytes or lists of bytes (a name and a literal)."""
        self.send(b"* %d FETCH (" % seq)
        for n, it in enumerate(items):
            if n:
                self.send(b" ")
            if isinstance(it, list):
                for piece in it:
                    self.send(piece)
            else:
                self.send(it)
        self.send(b")\r\n")

    @staticmethod
    def section_literal(item, data):
        sec = item.section
        if sec == b"":
            body = data
        elif sec == b"HEADER":
            body = split_message(data)[0]
        elif sec in (b"TEXT", b"1"):
            body = split_message(data)[1]
        elif sec in (b"MIME", b"1.MIME"):
            body = b"\r\n"
        else:
            body = select_header_fields(split_message(data)[0], item.fields, item.negate)
        if item.start is not None:
            body = body[item.start:]
            if item.count is not None:
                body = body[:item.count]
        # Two pieces: Conn.write sends a big body straight to the socket.
        return [b"{%d}\r\n" % len(body), body]

    def cmd_store(self, tag, args, uid=False):
        self.require_selected()
        targets = self.resolve(args.atom(), uid)
        what = args.atom().upper()
        tok = args.take()
        if tok[0] == "list":
            flags = parse_flag_tokens(tok[1])
        else:
            flags = parse_flag_tokens([tok] + [args.take() for _ in range(len(args.t) - args.i)])
        args.end()
        silent = what.endswith(b".SILENT")
        op = what[:-7] if silent else what
        if op not in (b"FLAGS", b"+FLAGS", b"-FLAGS"):
            raise BadCommand("bad STORE item")
        if self.readonly:
            raise NoCommand("mailbox is read-only")
        box = self.box
        changed = False
        results = []
        with self.store.lock:
            for seq, u in targets:
                meta = box.msgs.get(u)
                if meta is None:
                    continue
                old = list(meta["flags"])
                if op == b"FLAGS":
                    meta["flags"] = list(flags)
                elif op == b"+FLAGS":
                    meta["flags"] = old + [f for f in flags if f not in old]
                else:
                    meta["flags"] = [f for f in old if f not in flags]
                changed = changed or meta["flags"] != old
                results.append((seq, u, sort_flags(meta["flags"])))
            if changed:
                box.save()
        if not silent:
            for seq, u, fl in results:
                parts = [b"FLAGS " + fmt_flags(fl)]
                if uid:
                    parts.insert(0, b"UID %d" % u)
                self.write_fetch(seq, parts)
        self.sync_view(allow_expunge=uid)
        self.tagged(tag, b"OK", ("UID " if uid else "") + "STORE completed")

    def cmd_copy(self, tag, args, uid=False):
        self.require_selected()
        targets = self.resolve(args.atom(), uid)
        name = self.mailbox_name(args.astring())
        args.end()
        dest = self.store.get(self.user, name)
        if dest is None:
            raise NoCommand("[TRYCREATE] no such mailbox")
        src_uids, dst_uids = [], []
        for _, u in targets:
            with self.store.lock:
                meta = self.box.msgs.get(u)
                if meta is None:
                    continue
                meta = dict(meta, flags=list(meta["flags"]))
            try:
                data = self.box.read(u)
            except FileNotFoundError:
                continue
            stored = self.store.append(self.user, name, data, meta["flags"], meta["date"], meta["tz"])
            if stored is None:
                raise NoCommand("[TRYCREATE] no such mailbox")
            src_uids.append(u)
            dst_uids.append(stored[1])
        if dst_uids:
            dest.notify(self)
        self.sync_view(allow_expunge=uid)
        code = b""
        if dst_uids:
            code = b"[COPYUID %d %s %s] " % (dest.uidvalidity,
                                             b",".join(b"%d" % x for x in src_uids),
                                             b",".join(b"%d" % x for x in dst_uids))
        self.tagged(tag, b"OK", code + b"COPY completed")

    def cmd_search(self, tag, args, uid=False):
        self.require_selected()
        if args.more() and args.peek()[0] == "atom" and args.peek()[1].upper() == b"CHARSET":
            args.take()
            args.astring()
        crit = self.parse_search_keys(args, uid)
        if not crit:
            raise BadCommand("missing search criteria")
        box = self.box
        hits = []
        for seq, u in enumerate(list(self.view), 1):
            with self.store.lock:
                meta = box.msgs.get(u)
                if meta is None:
                    continue
                meta = dict(meta, flags=list(meta["flags"]))
            ctx = SearchCtx(box, seq, u, meta)
            if all(c(ctx) for c in crit):
                hits.append(u if uid else seq)
        self.send(b"* SEARCH" + b"".join(b" %d" % h for h in hits) + b"\r\n")
        self.sync_view(allow_expunge=uid)
        self.tagged(tag, b"OK", ("UID " if uid else "") + "SEARCH completed")

    def parse_search_keys(self, args, uid):
        crit = []
        while args.more():
            crit.append(self.parse_search_key(args))
        return crit

    def parse_search_key(self, args):
        kind, val = args.take()
        if kind == "list":
            sub = Args(val)
            keys = self.parse_search_keys(sub, False)
            return lambda c: all(k(c) for k in keys)
        if kind != "atom":
            raise BadCommand("bad search key")
        key = val.upper()
        flag_keys = {b"ANSWERED": (b"\\Answered", True), b"DELETED": (b"\\Deleted", True),
                     b"DRAFT": (b"\\Draft", True), b"FLAGGED": (b"\\Flagged", True),
                     b"SEEN": (b"\\Seen", True), b"UNANSWERED": (b"\\Answered", False),
                     b"UNDELETED": (b"\\Deleted", False), b"UNDRAFT": (b"\\Draft", False),
                     b"UNFLAGGED": (b"\\Flagged", False), b"UNSEEN": (b"\\Seen", False)}
        if key == b"ALL" or key == b"OLD":
            return lambda c: True
        if key in (b"NEW", b"RECENT"):
            return lambda c: False
        if key in flag_keys:
            flag, want = flag_keys[key]
            return lambda c: (flag in c.meta["flags"]) == want
        if key in (b"KEYWORD", b"UNKEYWORD"):
            flag = normalize_flag(args.atom())
            want = key == b"KEYWORD"
            return lambda c: (flag in c.meta["flags"]) == want
        if key == b"NOT":
            inner = self.parse_search_key(args)
            return lambda c: not inner(c)
        if key == b"OR":
            a = self.parse_search_key(args)
            b_ = self.parse_search_key(args)
            return lambda c: a(c) or b_(c)
        if key == b"UID":
            ranges = parse_seqset(args.atom())
            star = self.view[-1] if self.view else 0
            match = seqset_match(ranges, star)
            return lambda c: match(c.uid)
        if key in (b"LARGER", b"SMALLER"):
            n = args.number()
            if key == b"LARGER":
                return lambda c: c.meta["size"] > n
            return lambda c: c.meta["size"] < n
        if key == b"HEADER":
            field = args.astring().lower()
            needle = args.astring().lower()
            return lambda c: c.header_has(field, needle)
        if key in (b"FROM", b"TO", b"CC", b"BCC", b"SUBJECT"):
            field = key.lower()
            needle = args.astring().lower()
            return lambda c: c.header_has(field, needle)
        if key == b"BODY":
            needle = args.astring().lower()
            return lambda c: needle in c.text().lower()
        if key == b"TEXT":
            needle = args.astring().lower()
            return lambda c: needle in c.data().lower()
        if key in (b"BEFORE", b"ON", b"SINCE"):
            day = parse_search_date(args.astring())
            return lambda c: SearchCtx.date_cmp(c.internal_day(), day, key)
        if key in (b"SENTBEFORE", b"SENTON", b"SENTSINCE"):
            day = parse_search_date(args.astring())
            return lambda c: c.sent_day() is not None and \
                SearchCtx.date_cmp(c.sent_day(), day, key[4:])
        try:
            ranges = parse_seqset(val)
        except BadCommand:
            raise BadCommand("unknown search key")
        match = seqset_match(ranges, len(self.view))
        return lambda c: match(c.seq)

    HANDLERS = {}


class SearchCtx:
    def __init__(self, box, seq, uid, meta):
        self.box = box
        self.seq = seq
        self.uid = uid
        self.meta = meta
        self._data = None
        self._fields = None

    def data(self):
        if self._data is None:
            try:
                self._data = self.box.read(self.uid)
            except FileNotFoundError:
                self._data = b""
        return self._data

    def text(self):
        return split_message(self.data())[1]

    def fields(self):
        if self._fields is None:
            self._fields = header_fields(split_message(self.data())[0])
        return self._fields

    def header_has(self, field, needle):
        return any(name == field and needle in value.lower()
                   for name, _, value in self.fields())

    def internal_day(self):
        t = time.gmtime(self.meta["date"] + self.meta["tz"] * 60)
        return (t.tm_year, t.tm_mon, t.tm_mday)

    def sent_day(self):
        value = header_value(self.fields(), b"date")
        if value is None:
            return None
        try:
            d = email.utils.parsedate_tz(value.decode("latin-1"))
        except (TypeError, ValueError):
            return None
        return None if d is None else (d[0], d[1], d[2])

    @staticmethod
    def date_cmp(day, ref, key):
        if key == b"BEFORE":
            return day < ref
        if key == b"ON":
            return day == ref
        return day >= ref


def _uid(self, tag, args):
    sub = args.atom().upper()
    handler = {b"FETCH": Session.cmd_fetch, b"STORE": Session.cmd_store,
               b"SEARCH": Session.cmd_search, b"COPY": Session.cmd_copy}.get(sub)
    if sub == b"EXPUNGE":
        self.require_selected()
        ranges = parse_seqset(args.atom())
        args.end()
        if self.readonly:
            raise NoCommand("mailbox is read-only")
        star = self.view[-1] if self.view else 0
        self.expunge(seqset_match(ranges, star))
        self.tagged(tag, b"OK", "UID EXPUNGE completed")
        return
    if handler is None:
        raise BadCommand("unknown UID command")
    handler(self, tag, args, uid=True)


def _needs_auth(fn):
    def wrapper(self, tag, args, *a, **kw):
        self.require_auth()
        return fn(self, tag, args, *a, **kw)
    return wrapper


Session.HANDLERS = {
    b"CAPABILITY": Session.cmd_capability,
    b"NOOP": Session.cmd_noop,
    b"LOGOUT": Session.cmd_logout,
    b"ID": Session.cmd_id,
    b"LOGIN": Session.cmd_login,
    b"AUTHENTICATE": Session.cmd_authenticate,
    b"SELECT": Session.cmd_select,
    b"EXAMINE": Session.cmd_examine,
    b"CREATE": Session.cmd_create,
    b"DELETE": Session.cmd_delete,
    b"RENAME": Session.cmd_rename,
    b"SUBSCRIBE": Session.cmd_subscribe,
    b"UNSUBSCRIBE": Session.cmd_unsubscribe,
    b"LIST": Session.cmd_list,
    b"LSUB": Session.cmd_lsub,
    b"NAMESPACE": Session.cmd_namespace,
    b"STATUS": Session.cmd_status,
    b"APPEND": Session.cmd_append,
    b"IDLE": Session.cmd_idle,
    b"CHECK": Session.cmd_check,
    b"CLOSE": Session.cmd_close,
    b"UNSELECT": Session.cmd_unselect,
    b"EXPUNGE": Session.cmd_expunge,
    b"FETCH": Session.cmd_fetch,
    b"STORE": Session.cmd_store,
    b"COPY": Session.cmd_copy,
    b"SEARCH": Session.cmd_search,
    b"UID": _needs_auth(_uid),
}


# ---------------------------------------------------------------------------
# Server


class Server:
    def __init__(self, opts):
        self.store = Store(opts.store)
        self.users = opts.users
        self.bug_tls_crlf = opts.bug_tls_crlf
        self.bug_coalesce = opts.bug_coalesce
        self.bug_chain = opts.bug_chain
        self.literal_plus = not opts.no_literal_plus
        self.max_append = opts.max_append
        self.log = EventLog(opts.log)
        self.record = EventLog(opts.record) if opts.record else None
        self.greeting = (opts.greeting.encode("utf-8", "surrogateescape")
                         if opts.greeting is not None else None)
        self.tls_ctx = None
        if opts.tls:
            self.tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls_ctx.load_cert_chain(opts.cert, opts.key)
        self._ids = 0
        self._ids_lock = threading.Lock()
        # --accept-rate: an overloaded server that accepts slowly.
        self.accept_gap = 1.0 / opts.accept_rate if opts.accept_rate else 0.0

    def next_id(self):
        with self._ids_lock:
            self._ids += 1
            return self._ids

    def serve(self, listener, is_tls):
        while True:
            if self.accept_gap:
                time.sleep(self.accept_gap)
            try:
                sock, addr = listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self.handle, args=(sock, addr, is_tls), daemon=True)
            t.start()

    def handle(self, sock, addr, is_tls):
        conn_id = self.next_id()
        peer = ("[%s]:%d" % addr[:2]) if ":" in addr[0] else "%s:%d" % addr[:2]
        self.log.write("conn %d open %s" % (conn_id, peer))
        conn = None
        session = None
        reason = "error unknown"
        try:
            sock.settimeout(SEND_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if is_tls:
                sock.settimeout(HANDSHAKE_TIMEOUT_S)
                sock = self.tls_ctx.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
                sock.do_handshake()
                sock.settimeout(SEND_TIMEOUT_S)
            conn = Conn(self, sock, peer, is_tls, conn_id)
            session = Session(self, conn)
            session.run()
            reason = "logout"
        except ClientEOF:
            reason = "client-eof"
        except ChainBug:
            reason = "chain-bug"
        except ProtocolError as e:
            reason = "error %s" % e
            try:
                if conn is not None:
                    conn.write(b"* BYE %s\r\n" % str(e).encode())
                    conn.flush()
            except (OSError, ValueError):
                pass
        except ssl.SSLError as e:
            reason = "error tls %s" % (e.reason or type(e).__name__)
        except (ConnectionResetError, BrokenPipeError):
            reason = "client-eof"
        except socket.timeout:
            reason = "error timeout"
        except OSError as e:
            reason = "error %s" % (e.strerror or type(e).__name__)
        except Exception as e:  # the process must survive anything a client does
            reason = "error internal %s" % type(e).__name__
            import traceback
            traceback.print_exc(file=sys.stderr)
        finally:
            if session is not None:
                try:
                    session.deselect()
                except Exception:
                    pass
            # Logged before the socket closes: a client that saw EOF can
            # rely on the line being in the log already.
            self.log.write("conn %d close %s" % (conn_id, reason.replace("\n", " ")))
            if conn is not None:
                conn.close()
            else:
                try:
                    sock.close()
                except OSError:
                    pass


def parse_addr(text):
    m = re.match(r"^\[([^\]]+)\]:(\d+)$", text) or re.match(r"^([^:]+):(\d+)$", text)
    if not m:
        raise argparse.ArgumentTypeError("expected HOST:PORT or [V6]:PORT, got %r" % text)
    return m.group(1), int(m.group(2))


def parse_users(text):
    users = {}
    for item in text.split(","):
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user:
            raise argparse.ArgumentTypeError("expected USER:PASSWORD[,...]")
        users[user] = password
    if not users:
        raise argparse.ArgumentTypeError("no users")
    return users


def on_off(text):
    if text in ("on", "yes", "1", "true"):
        return True
    if text in ("off", "no", "0", "false"):
        return False
    raise argparse.ArgumentTypeError("expected on or off")


def listen(addr, backlog=128):
    host, port = addr
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(backlog)
    return s


def main(argv=None):
    ap = argparse.ArgumentParser(description="Exchange 5.5-like IMAP server with the "
                                 "Q239082 bugs, for tests.")
    ap.add_argument("--plain", type=parse_addr, required=True, metavar="HOST:PORT")
    ap.add_argument("--tls", type=parse_addr, metavar="HOST:PORT")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--store", required=True, metavar="DIR")
    ap.add_argument("--users", type=parse_users, required=True, metavar="USER:PASS[,...]")
    ap.add_argument("--bug-tls-crlf", type=on_off, default=True, metavar="on|off")
    ap.add_argument("--bug-coalesce", type=on_off, default=False, metavar="on|off")
    ap.add_argument("--bug-chain", type=int, default=0, metavar="N")
    ap.add_argument("--no-literal-plus", action="store_true",
                    help="do not announce LITERAL+; answer {N+} with BAD")
    ap.add_argument("--max-append", type=int, default=None, metavar="N",
                    help="refuse APPENDs over N octets with NO [TOOBIG] (before '+')")
    ap.add_argument("--greeting", metavar="TEXT",
                    help='greet with "* OK TEXT" instead of the default (no capability code)')
    ap.add_argument("--record", metavar="FILE",
                    help="append every line framed (and literal size) as JSON, one per line")
    ap.add_argument("--listen-backlog", type=int, default=128, metavar="N",
                    help="listen queue length (a small one makes further SYNs wait)")
    ap.add_argument("--accept-rate", type=float, default=0, metavar="R",
                    help="accept at most R connections a second (0: at once)")
    ap.add_argument("--ready-file", metavar="FILE")
    ap.add_argument("--log", metavar="FILE")
    opts = ap.parse_args(argv)
    if opts.tls and not (opts.cert and opts.key):
        ap.error("--tls needs --cert and --key")
    if opts.bug_chain < 0:
        ap.error("--bug-chain must be >= 0")
    if opts.max_append is not None and opts.max_append < 0:
        ap.error("--max-append must be >= 0")
    if opts.greeting is not None and ("\r" in opts.greeting or "\n" in opts.greeting
                                      or not opts.greeting.strip()):
        ap.error("--greeting must be one non-empty line")

    server = Server(opts)

    def stop(signum, frame):
        # Connection threads may sit in blocking calls; leave at once.
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    if opts.listen_backlog < 0 or opts.accept_rate < 0:
        ap.error("--listen-backlog and --accept-rate must be >= 0")
    plain = listen(opts.plain, opts.listen_backlog)
    tls = listen(opts.tls, opts.listen_backlog) if opts.tls else None
    for lsock, is_tls in ((plain, False), (tls, True)):
        if lsock is not None:
            threading.Thread(target=server.serve, args=(lsock, is_tls), daemon=True).start()

    line = "READY plain=%d tls=%d" % (plain.getsockname()[1],
                                      tls.getsockname()[1] if tls else 0)
    # The file first: whoever saw the stdout line can rely on the file too.
    if opts.ready_file:
        atomic_write(opts.ready_file, (line + "\n").encode())
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
