#!/usr/bin/python3
"""Soak test: many concurrent IMAP sessions through imapfront for a while,
then proof that nothing was lost, mixed up or leaked.

Each worker thread plays one client for the whole run: it logs in, works in
a mailbox of its own, and does at random

  * APPEND of a message (sizes up to 4 MiB, mostly small) whose headers name
    the worker and carry a SHA-256 of the payload,
  * UID FETCH of one of its own messages, checked byte for byte,
  * IDLE (enter, wait a moment for an update that does not come, DONE),
  * an abrupt disconnect: an RST in the middle of an APPEND literal, of a
    command line, or of a FETCH answer; then it connects again.

Backends: the legacy-server emulator with its Q239082 receive-chain bug on
(and its CRLF bug with --coalesce-bug on, see EMULATOR_FLAGS) behind
`quirks = exchange55`, and a private Dovecot (started with
tests/integration/dovecot.py) when it can run here.

At the end, a direct plain connection to the backend FETCHes every worker's
mailbox and checks: every message whose APPEND got a tagged OK is there,
byte-exact; no message of an interrupted APPEND was stored; no mailbox holds
another worker's message. During the run the proxy's RSS is sampled every
second against a stated bound; afterwards its descriptor count is back to
the baseline and its chain counters are 0.

Usage:
  soak.py [--sessions 200] [--duration 300] [--backend emulator|dovecot|both]
          [--parallel] [--coalesce-bug on|off] [--seed N] [--workdir DIR]
          [--json FILE]
imapfront comes from $IMAPFRONT_BIN (or --bin), the source tree from
$IMAPFRONT_SRC (default: two levels up from this file). Exit status 0 when
every check passed."""

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import imapfront_harness as h  # noqa: E402

MAX_APPEND = 4 << 20
BUFFER_LIMIT = 256 << 10
IO_TIMEOUT = 120.0  # seconds for one read or write under full load
JOIN_GRACE = 240.0  # how long workers may overrun the deadline (a 4 MiB APPEND on a busy box)
RSS_SLACK_KIB = 32 << 10
# The emulator's receive-chain bug (Q239082) is on: exchange55's
# pipelining shield must keep it from ever firing. Its CRLF bug
# (--bug-coalesce) is off by default: literal_crlf_split is a timing
# heuristic (the end of a literal and its CRLF leave ~1 ms apart, README),
# so a backend that reads later than that under load still gets both in one
# read and hangs the APPEND; --coalesce-bug on measures how often.
EMULATOR_FLAGS = ["--bug-chain", "1"]


def rss_bound_kib(idle_kib, sessions):
    """The RSS the proxy may reach: idle, plus per session both directions
    at buffer_limit and one 64 KiB read each, plus 32 MiB for TLS state and
    allocator slack. Without backpressure a single 4 MiB APPEND per session
    would be 800 MiB for 200 sessions."""
    return idle_kib + sessions * (2 * (BUFFER_LIMIT + (64 << 10)) >> 10) + RSS_SLACK_KIB


class SoakError(Exception):
    pass


# ---------------------------------------------------------------- client ----

class Conn:
    """A blocking IMAP connection (TLS through the proxy, or plain to the
    backend for the final check)."""

    def __init__(self, port, ctx=None, timeout=IO_TIMEOUT):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ctx.wrap_socket(raw) if ctx is not None else raw
        self.buf = bytearray()

    def _fill(self):
        data = self.sock.recv(262144)
        if not data:
            raise SoakError("connection closed by the server")
        self.buf += data

    def read_line(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return line
            if len(self.buf) > (1 << 20):
                raise SoakError("response line over 1 MiB")
            self._fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def send(self, data):
        self.sock.sendall(data)

    def response(self, tag, bye_ok=False):
        """Items up to the tagged line: each item is (line, literal or None);
        a line that ends in a literal continues after it (joined). A BYE
        is an error unless bye_ok (LOGOUT)."""
        items = []
        prefix = tag.encode() + b" "
        while True:
            line = self.read_line()
            if line.startswith(prefix):
                return items, line
            if line.startswith(b"* BYE") and not bye_ok:
                raise SoakError("unexpected %r" % line)
            lit = None
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                lit = self.read_exact(int(m.group(1)))
                line = line + b"<lit>" + self.read_line()
            items.append((line, lit))

    def command(self, tag, text):
        self.send(("%s %s\r\n" % (tag, text)).encode())
        return self.response(tag, bye_ok=text.upper() == "LOGOUT")

    def ok(self, tag, text):
        items, tagged = self.command(tag, text)
        if not tagged.startswith((tag + " OK").encode()):
            raise SoakError("%s %s -> %r" % (tag, text.split(" ")[0], tagged))
        return items, tagged

    def reset(self):
        """Closes with an RST (SO_LINGER 0), no close_notify."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# -------------------------------------------------------------- messages ----

def payload(rng, size, block):
    """size octets of CRLF-terminated lines from a per-worker random block,
    varied by a counter line so that no two messages are alike."""
    out = bytearray()
    i = rng.randrange(1 << 30)
    while len(out) < size:
        out += b"%010d " % i + block
        i += 1
    out = out[:size]
    if size >= 2:
        # End on a whole CRLF; a cut pair must not leave a bare CR behind
        # (servers may rewrite those, and byte-exactness is the point).
        out[-2:] = b"\r\n"
        if size >= 3 and out[-3] == 0x0D:
            out[-3] = 0x78
    elif size == 1:
        out[:] = b"x"
    return bytes(out)


def message(worker, msg_id, body):
    head = (b"From: soak@example.invalid\r\nSubject: soak %s\r\nX-Soak-Session: %s\r\n"
            b"X-Soak-Id: %s\r\nX-Soak-Sum: %s\r\n\r\n"
            % (msg_id.encode(), worker.encode(), msg_id.encode(),
               hashlib.sha256(body).hexdigest().encode()))
    return head + body


HEADER_RX = {k: re.compile(rb"^" + k + rb": (\S+)\r$", re.M)
             for k in (b"X-Soak-Session", b"X-Soak-Id", b"X-Soak-Sum")}


def parse_message(data):
    """(session, id, sum_ok) of a message this test wrote, or None."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    got = {}
    for k, rx in HEADER_RX.items():
        m = rx.search(head + b"\r\n")
        if not m:
            return None
        got[k] = m.group(1).decode()
    ok = hashlib.sha256(body).hexdigest() == got[b"X-Soak-Sum"]
    return got[b"X-Soak-Session"], got[b"X-Soak-Id"], ok


def append_size(rng):
    r = rng.random()
    if r < 0.80:
        return rng.randint(0, 4096)
    if r < 0.95:
        return rng.randint(4097, 256 << 10)
    return rng.randint((256 << 10) + 1, MAX_APPEND - 512)


# ---------------------------------------------------------------- worker ----

class Worker:
    def __init__(self, run, index):
        self.run = run
        self.name = "%s-w%03d" % (run.run_id, index)
        self.mailbox = "soak-" + self.name
        self.rng = random.Random("%s/%s/%d" % (run.seed, run.label, index))
        self.block = b"".join(
            bytes(self.rng.choice(run.alphabet) for _ in range(self.rng.randint(20, 120))) + b"\r\n"
            for _ in range(80))
        self.conn = None
        self.tags = 0
        self.seq = 0
        self.stored = {}  # msg id -> (uid, sha256, size): APPEND got a tagged OK
        self.interrupted = set()  # msg ids whose APPEND was cut mid-literal
        self.counts = {k: 0 for k in ("connects", "appends", "append_bytes", "fetches",
                                      "fetch_bytes", "idles", "reset_literal", "reset_line",
                                      "reset_fetch")}
        self.errors = []

    def tag(self):
        self.tags += 1
        return "t%d" % self.tags

    def connect(self):
        self.conn = Conn(self.run.port, self.run.ctx)
        greeting = self.conn.read_line()
        if not greeting.startswith(b"* OK"):
            raise SoakError("greeting %r" % greeting)
        self.conn.ok(self.tag(), "LOGIN %s %s" % (self.run.user, self.run.password))
        if self.counts["connects"] == 0:
            # Dovecot can answer a first CREATE with ALREADYEXISTS: another
            # process of the same user refreshing its mailbox list index
            # opens the directory being created (its debug log shows
            # "Mailbox <this one> opened" in another session mid-CREATE).
            # The mailbox is there either way; what the soak checks is
            # that every message lands in it, and no foreign one.
            tag = self.tag()
            _, tagged = self.conn.command(tag, "CREATE %s" % self.mailbox)
            if not re.match(rb"%s (OK|NO \[ALREADYEXISTS\])" % tag.encode(), tagged):
                raise SoakError("%s CREATE -> %r" % (tag, tagged))
        self.conn.ok(self.tag(), "SELECT %s" % self.mailbox)
        self.counts["connects"] += 1

    def new_message(self):
        self.seq += 1
        msg_id = "%s-m%05d" % (self.name, self.seq)
        return msg_id, message(self.name, msg_id, payload(self.rng, append_size(self.rng),
                                                          self.block))

    def do_append(self):
        msg_id, msg = self.new_message()
        tag = self.tag()
        self.conn.send(b"%s APPEND %s {%d}\r\n" % (tag.encode(), self.mailbox.encode(), len(msg)))
        cont = self.conn.read_line()
        if not cont.startswith(b"+"):
            raise SoakError("APPEND continuation %r" % cont)
        self.conn.send(msg + b"\r\n")
        _, tagged = self.conn.response(tag)
        m = re.match(rb"\S+ OK \[APPENDUID \d+ (\d+)\]", tagged)
        if not m:
            raise SoakError("APPEND -> %r" % tagged)
        self.stored[msg_id] = (int(m.group(1)), hashlib.sha256(msg).hexdigest(), len(msg))
        self.counts["appends"] += 1
        self.counts["append_bytes"] += len(msg)

    def do_fetch(self):
        if not self.stored:
            return self.do_append()
        msg_id = self.rng.choice(sorted(self.stored))
        uid, digest, size = self.stored[msg_id]
        items, _ = self.conn.ok(self.tag(), "UID FETCH %d (UID BODY.PEEK[])" % uid)
        bodies = [lit for line, lit in items if lit is not None and b"FETCH" in line]
        if len(bodies) != 1:
            raise SoakError("FETCH of uid %d gave %d bodies: %r"
                            % (uid, len(bodies), [l[:80] for l, _ in items]))
        got = parse_message(bodies[0])
        if got is None or got[0] != self.name:
            self.run.foreign.append((self.name, got))
            raise SoakError("FETCH returned a message not ours: %r" % (got,))
        if hashlib.sha256(bodies[0]).hexdigest() != digest or got[1] != msg_id:
            raise SoakError("FETCH of %s returned other bytes (%d octets)" % (msg_id, len(bodies[0])))
        self.counts["fetches"] += 1
        self.counts["fetch_bytes"] += size

    def do_idle(self):
        tag = self.tag()
        self.conn.send(b"%s IDLE\r\n" % tag.encode())
        line = self.conn.read_line()
        if not line.startswith(b"+"):
            raise SoakError("IDLE -> %r" % line)
        # Nobody else writes to this mailbox: nothing should arrive while
        # idling; the wait is the point of the exercise, bounded.
        self.conn.sock.settimeout(self.rng.uniform(0.2, 2.0))
        try:
            early = self.conn.sock.recv(4096)
        except (socket.timeout, ssl.SSLWantReadError):
            early = b""
        finally:
            self.conn.sock.settimeout(IO_TIMEOUT)
        self.conn.buf += early
        self.conn.send(b"DONE\r\n")
        items, tagged = self.conn.response(tag)
        if not tagged.startswith(tag.encode() + b" OK"):
            raise SoakError("IDLE DONE -> %r" % tagged)
        self.counts["idles"] += 1

    def do_reset(self):
        kind = self.rng.choice(["literal", "line", "fetch"])
        if kind == "literal":
            msg_id, msg = self.new_message()
            tag = self.tag()
            self.conn.send(b"%s APPEND %s {%d}\r\n" % (tag.encode(), self.mailbox.encode(),
                                                       len(msg)))
            cont = self.conn.read_line()
            if not cont.startswith(b"+"):
                raise SoakError("APPEND continuation %r" % cont)
            self.conn.send(msg[: self.rng.randint(0, len(msg) - 1)])
            self.interrupted.add(msg_id)
        elif kind == "line":
            self.conn.send(b"%s UID FETCH 1:* (FLA" % self.tag().encode())
        else:
            self.conn.send(b"%s UID FETCH 1:* (UID BODY.PEEK[])\r\n" % self.tag().encode())
            self.conn.read_line()  # something of the answer is on its way
        self.conn.reset()
        self.conn = None
        self.counts["reset_" + kind] += 1

    def main(self):
        actions = [(self.do_append, 45), (self.do_fetch, 30), (self.do_idle, 15),
                   (self.do_reset, 5), (lambda: self.conn.ok(self.tag(), "NOOP"), 5)]
        funcs = [a for a, _ in actions]
        weights = [w for _, w in actions]
        while time.monotonic() < self.run.deadline and not self.run.abort.is_set():
            try:
                self.doing = "connect"
                if self.conn is None:
                    self.connect()
                action = self.rng.choices(funcs, weights)[0]
                self.doing = getattr(action, "__name__", "noop")
                action()
            except (SoakError, OSError, ssl.SSLError) as e:
                port = None
                try:
                    port = self.conn.sock.getsockname()[1] if self.conn else None
                except OSError:
                    pass
                self.errors.append("%s: %s (tag t%d, client port %s, %.1fs into the run): %s: %s"
                                   % (self.name, self.doing, self.tags, port,
                                      time.monotonic() - self.run.t0, type(e).__name__, e))
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
                if len(self.errors) > 5:
                    return
        if self.conn is not None:
            try:
                self.conn.ok(self.tag(), "LOGOUT")
            except (SoakError, OSError, ssl.SSLError) as e:
                self.errors.append("%s: LOGOUT: %s" % (self.name, e))
            self.conn.close()


# ------------------------------------------------------------ the check ----

def verify_mailboxes(backend_port, user, password, workers):
    """Reads every worker's mailbox straight from the backend."""
    result = {"expected": 0, "found": 0, "missing": [], "corrupt": [], "foreign": [],
              "from_interrupted": [], "duplicates": [], "unknown": 0}
    c = Conn(backend_port, None)
    try:
        c.read_line()
        c.ok("v0", "LOGIN %s %s" % (user, password))
        for n, w in enumerate(workers):
            result["expected"] += len(w.stored)
            if w.counts["connects"] == 0:
                continue
            c.ok("s%d" % n, "SELECT %s" % w.mailbox)
            items, _ = c.ok("f%d" % n, "UID FETCH 1:* (UID BODY.PEEK[])")
            seen = {}
            for line, lit in items:
                if lit is None or b"FETCH" not in line:
                    continue
                m = re.search(rb"UID (\d+)", line)
                uid = int(m.group(1)) if m else -1
                got = parse_message(lit)
                if got is None:
                    result["unknown"] += 1
                    continue
                session, msg_id, sum_ok = got
                if session != w.name:
                    result["foreign"].append((w.mailbox, msg_id))
                if msg_id in seen:
                    result["duplicates"].append(msg_id)
                seen[msg_id] = (uid, hashlib.sha256(lit).hexdigest(), sum_ok)
                if msg_id in w.interrupted:
                    result["from_interrupted"].append(msg_id)
            for msg_id, (uid, digest, size) in w.stored.items():
                if msg_id not in seen:
                    result["missing"].append(msg_id)
                elif seen[msg_id][:2] != (uid, digest) or not seen[msg_id][2]:
                    result["corrupt"].append(msg_id)
                else:
                    result["found"] += 1
        c.ok("lo", "LOGOUT")
    finally:
        c.close()
    return result


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class Sampler(threading.Thread):
    """RSS and descriptors of the proxy, once a second."""

    def __init__(self, proxy):
        super().__init__(daemon=True)
        self.proxy = proxy
        self.stop = threading.Event()
        self.rss = []
        self.fds = []

    def run(self):
        while not self.stop.is_set():
            try:
                self.rss.append(self.proxy.rss_kib())
                self.fds.append(fd_count(self.proxy.pid))
            except (OSError, h.HarnessError):
                return
            self.stop.wait(1.0)


class Run:
    """One soak: a backend, a proxy in front of it, N workers for D s."""

    def __init__(self, label, port, proxy, ctx, sessions, duration, seed, user, password,
                 backend_port):
        self.label = label
        self.port = port
        self.proxy = proxy
        self.ctx = ctx
        self.sessions = sessions
        self.duration = duration
        self.seed = seed
        self.user = user
        self.password = password
        self.backend_port = backend_port
        self.run_id = "%s%d" % (label[:3], seed % 100000)
        self.alphabet = bytes(range(0x20, 0x7F)) + bytes(range(0xA0, 0x100))
        self.abort = threading.Event()
        self.emulator = None  # set for the emulator: its bug events are counted
        self.foreign = []
        self.deadline = None

    def execute(self, log=print):
        proxy = self.proxy
        # Baseline after one warm-up session (lazily opened descriptors).
        c = Conn(self.port, self.ctx)
        c.read_line()
        c.ok("w1", "LOGIN %s %s" % (self.user, self.password))
        c.ok("w2", "LOGOUT")
        c.close()
        proxy.wait_stats(lambda s: s["sessions_active"] == 0, timeout=10, what="warm-up gone")
        base_fds = fd_count(proxy.pid)
        idle_rss = proxy.rss_kib()
        bound = rss_bound_kib(idle_rss, self.sessions)
        mark = proxy.log.mark()

        workers = [Worker(self, i) for i in range(self.sessions)]
        sampler = Sampler(proxy)
        sampler.start()
        t0 = self.t0 = time.monotonic()
        self.deadline = t0 + self.duration
        threads = [threading.Thread(target=w.main, daemon=True) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(self.deadline + JOIN_GRACE - time.monotonic(), 0.1))
        hung = sum(t.is_alive() for t in threads)
        self.abort.set()
        elapsed = time.monotonic() - t0
        sampler.stop.set()
        sampler.join(5)
        proxy.check_alive()

        stats = {}
        try:
            stats = proxy.wait_stats(lambda s: (s["sessions_active"] == 0 and s["chain_bytes"] == 0
                                                and s["chain_links"] == 0),
                                     timeout=30, what="sessions and chains at 0")
        except h.HarnessError as e:
            stats = proxy.stats()
            log("stats did not settle: %s" % e)
        end_fds = None
        try:
            h.wait_until(lambda: fd_count(proxy.pid) == base_fds, 30, "fds back", interval=0.1)
        except h.HarnessError:
            pass
        end_fds = fd_count(proxy.pid)
        verify = verify_mailboxes(self.backend_port, self.user, self.password, workers)

        reasons = {}
        for kv in proxy.closed_lines(mark):
            reasons[kv.get("reason", "?")] = reasons.get(kv.get("reason", "?"), 0) + 1
        totals = {}
        for w in workers:
            for k, v in w.counts.items():
                totals[k] = totals.get(k, 0) + v
        errors = [e for w in workers for e in w.errors]
        bug_events = {}
        if self.emulator is not None:
            bug_events = {"crlf_drop": len(self.emulator.log.find(r"\bbug-crlf-drop\b")),
                          "chain_bug": len(self.emulator.log.find(r"\bclose chain-bug\b"))}
        report = {
            "backend": self.label, "sessions": self.sessions, "duration_s": round(elapsed, 1),
            "counts": totals, "errors": errors[:50], "error_count": len(errors),
            "hung_workers": hung,
            "rss_kib": {"idle": idle_rss, "max": max(sampler.rss or [0]),
                        "mean": int(sum(sampler.rss) / max(len(sampler.rss), 1)),
                        "bound": bound, "samples": len(sampler.rss)},
            "fds": {"baseline": base_fds, "max": max(sampler.fds or [0]), "end": end_fds},
            "stats_end": {k: stats.get(k) for k in ("sessions_active", "sessions_total",
                                                    "chain_bytes", "chain_links",
                                                    "handshakes_failed", "commands_held",
                                                    "literals_converted", "crlf_splits")},
            "close_reasons": reasons,
            "emulator_bug_events": bug_events,
            "verify": {k: (v if isinstance(v, int) else len(v)) for k, v in verify.items()},
            "verify_detail": {k: v[:20] for k, v in verify.items() if isinstance(v, list) and v},
            "foreign_fetches": self.foreign[:20],
        }
        report["failures"] = failures(report)
        return report


def failures(r):
    out = []
    v = r["verify"]
    if r["error_count"]:
        out.append("%d client-side errors, first: %s" % (r["error_count"], r["errors"][:3]))
    if r["hung_workers"]:
        out.append("%d workers still running after the grace period" % r["hung_workers"])
    for k in ("missing", "corrupt", "foreign", "from_interrupted", "duplicates", "unknown"):
        if v[k]:
            out.append("%d %s messages: %s" % (v[k], k, r["verify_detail"].get(k, "")))
    if r["foreign_fetches"]:
        out.append("FETCH returned other sessions' data: %s" % r["foreign_fetches"])
    if v["found"] != v["expected"]:
        out.append("found %d of %d acknowledged messages" % (v["found"], v["expected"]))
    if r["rss_kib"]["max"] > r["rss_kib"]["bound"]:
        out.append("RSS %d KiB over the bound %d KiB" % (r["rss_kib"]["max"], r["rss_kib"]["bound"]))
    if r["fds"]["end"] != r["fds"]["baseline"]:
        out.append("descriptors %d at the end, %d before" % (r["fds"]["end"], r["fds"]["baseline"]))
    s = r["stats_end"]
    if s.get("sessions_active") != 0 or s.get("chain_bytes") != 0 or s.get("chain_links") != 0:
        out.append("stats at the end: %s" % s)
    for k, n in r.get("emulator_bug_events", {}).items():
        if n:
            out.append("the emulator's %s bug fired %d times through the shields" % (k, n))
    if r["counts"].get("appends", 0) == 0:
        out.append("no APPEND completed at all")
    return out


def summary(r):
    c, v, rss = r["counts"], r["verify"], r["rss_kib"]
    line = ("[%s] %d sessions x %.0fs: %d connects, %d APPEND ok (%.1f MiB), %d FETCH verified "
            "(%.1f MiB), %d IDLE, resets literal/line/fetch %d/%d/%d; verified %d/%d stored, "
            "missing %d corrupt %d foreign %d interrupted-stored %d; RSS idle %.1f MiB max %.1f "
            "MiB (bound %.1f MiB); fds %d -> max %d -> %d; chain_bytes %s chain_links %s; "
            "errors %d; %s"
            % (r["backend"], r["sessions"], r["duration_s"], c["connects"], c["appends"],
               c["append_bytes"] / 1048576.0, c["fetches"], c["fetch_bytes"] / 1048576.0,
               c["idles"], c["reset_literal"], c["reset_line"], c["reset_fetch"], v["found"],
               v["expected"], v["missing"], v["corrupt"], v["foreign"], v["from_interrupted"],
               rss["idle"] / 1024.0, rss["max"] / 1024.0, rss["bound"] / 1024.0,
               r["fds"]["baseline"], r["fds"]["max"], r["fds"]["end"],
               r["stats_end"].get("chain_bytes"), r["stats_end"].get("chain_links"),
               r["error_count"], "PASS" if not r["failures"] else "FAIL"))
    if r.get("emulator_bug_events"):
        line += "; emulator bug events %s" % r["emulator_bug_events"]
    return line


# ----------------------------------------------------------- backends ----

PROXY_BASE = {"proxy": {"workers": "2"}}


def start_emulator_run(workdir, cert, sessions, duration, seed, coalesce_bug=False):
    """(Run, cleanup) for the emulator with its chain bug on, behind
    exchange55 (and its CRLF bug too with coalesce_bug)."""
    flags = EMULATOR_FLAGS + (["--bug-coalesce", "on"] if coalesce_bug else [])
    emu = h.Emulator(workdir, cert[0], cert[1], flags=flags, label="soak-emu")
    try:
        extra = dict(PROXY_BASE)
        extra["backend"] = {"quirks": "exchange55"}
        proxy = h.Proxy(workdir, cert[0], cert[1], emu.plain_port, extra=extra, label="soak-px")
    except Exception:
        emu.stop()
        raise
    ctx = h.client_context(cert[0])
    run = Run("emulator", proxy.port, proxy, ctx, sessions, duration, seed, "demo", "demo",
              emu.plain_port)
    run.emulator = emu

    def cleanup():
        proxy.stop()
        emu.stop()

    return run, cleanup


def dovecot_unavailable():
    try:
        import dovecot  # tests/integration/dovecot.py
    except ImportError as e:
        return "tests/integration/dovecot.py cannot be imported: %s" % e
    return dovecot.unavailable_reason()


def start_dovecot_run(workdir, cert, sessions, duration, seed, coalesce_bug=False):
    """(Run, cleanup) for a private Dovecot (dovecot.py's starter, with
    limits raised for this many concurrent sessions of one user)."""
    import dovecot

    class SoakDovecot(dovecot.Dovecot):
        def _config(self, *args):
            # One user from one address with hundreds of sessions: Dovecot
            # allows 10 per user and IP, and 100 processes, by default.
            return super()._config(*args) + (
                "mail_max_userip_connections = %d\n"
                "default_process_limit = %d\n"
                "default_client_limit = %d\n"
                % (sessions + 50, sessions + 50, 4 * sessions + 200))

    # Its own short temporary directory (dovecot.py's default): socket paths
    # are limited in length, and its unprivileged processes must traverse it.
    dc = SoakDovecot()
    try:
        proxy = h.Proxy(workdir, cert[0], cert[1], dc.port, extra=dict(PROXY_BASE),
                        label="soak-px")
    except Exception:
        dc.stop()
        raise
    ctx = h.client_context(cert[0])
    run = Run("dovecot", proxy.port, proxy, ctx, sessions, duration, seed, "demo", "demo",
              dc.port)

    def cleanup():
        proxy.stop()
        dc.stop()
        shutil.rmtree(dc.dir, ignore_errors=True)

    return run, cleanup


def soak(backends, sessions, duration, seed, workdir, log=print, parallel=False,
         coalesce_bug=False):
    """Runs the soak against each backend (one after the other, or at the
    same time with parallel); returns the reports. A backend that cannot run
    here yields a report with "skipped"."""
    os.makedirs(workdir, exist_ok=True)
    cert = h.make_cert(workdir, name="soak")
    reports = []
    plans = []
    for b in backends:
        if b == "dovecot":
            why = dovecot_unavailable()
            if why:
                reports.append({"backend": "dovecot", "skipped": why, "failures": []})
                log("[dovecot] skipped: %s" % why)
                continue
            plans.append(start_dovecot_run)
        else:
            plans.append(start_emulator_run)

    def one(plan):
        run, cleanup = plan(workdir, cert, sessions, duration, seed, coalesce_bug)
        try:
            report = run.execute(log)
        finally:
            cleanup()
        log(summary(report))
        return report

    if not parallel:
        for plan in plans:
            reports.append(one(plan))
        return reports
    results = [None] * len(plans)
    errors = []

    def wrap(i, plan):
        try:
            results[i] = one(plan)
        except Exception as e:  # reported below, the other run goes on
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i, p)) for i, p in enumerate(plans)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + JOIN_GRACE + 120)
    if errors:
        raise errors[0]
    return reports + [r for r in results if r is not None]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--duration", type=float, default=300.0, help="seconds")
    ap.add_argument("--backend", choices=["emulator", "dovecot", "both"], default="both")
    ap.add_argument("--parallel", action="store_true", help="run both backends at once")
    ap.add_argument("--coalesce-bug", choices=["on", "off"], default="off",
                    help="also switch on the emulator's CRLF bug (see EMULATOR_FLAGS)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--bin", help="imapfront binary (default $IMAPFRONT_BIN)")
    ap.add_argument("--workdir", help="keep logs and stores here (default: a temporary dir)")
    ap.add_argument("--json", help="write the reports to this file")
    args = ap.parse_args(argv)
    if args.bin:
        h.BIN = os.path.abspath(args.bin)
    if not os.access(h.BIN, os.X_OK):
        ap.error("imapfront binary not found at %s (set IMAPFRONT_BIN or --bin)" % h.BIN)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    workdir = args.workdir or tempfile.mkdtemp(prefix="imapfront-soak-")
    os.makedirs(workdir, exist_ok=True)
    backends = ["emulator", "dovecot"] if args.backend == "both" else [args.backend]
    print("soak: %d sessions, %.0fs, backends %s, seed %d, workdir %s"
          % (args.sessions, args.duration, ",".join(backends), seed, workdir), flush=True)
    reports = soak(backends, args.sessions, args.duration, seed, workdir,
                   log=lambda s: print(s, flush=True), parallel=args.parallel,
                   coalesce_bug=args.coalesce_bug == "on")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=2, default=str)
    failed = [f for r in reports for f in r.get("failures", [])]
    for f in failed:
        print("FAIL: " + f)
    if not args.workdir and not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
