"""Helpers for the operations tests (reload, drain, admin endpoint,
backends, PROXY protocol, limits, logs): an HTTP client for the admin
endpoint that also sends malformed requests, a strict parser of the
Prometheus text exposition format, PROXY protocol v1/v2 headers built by
hand, an emulator that can be killed and restarted on the same port, and
rewriting a running proxy's INI file before a SIGHUP.

Every wait is bounded; nothing sleeps in place of an event."""

import configparser
import ipaddress
import math
import os
import re
import signal
import socket
import struct
import subprocess
import tempfile
import time

import imapfront_harness as h
from dovecot import TLSOver

ADMIN = {"admin": {"address": "127.0.0.1:0"}}


def merge(*parts):
    """{section: {key: value}} dicts merged left to right."""
    out = {}
    for part in parts:
        for section, keys in (part or {}).items():
            out.setdefault(section, {}).update(keys)
    return out


def admin_port(proxy, timeout=5.0):
    """The port the proxy's admin endpoint logged it listens on."""
    m = proxy.log.wait_for(r"\badmin: listening address=127\.0\.0\.1:(\d+)", timeout=timeout,
                           alive=proxy.check_alive)
    return int(m.group(1))


def start_proxy(proxy_factory, backend_port, extra=None):
    """A proxy with the admin endpoint on a kernel-chosen loopback port
    (proxy.admin)."""
    p = proxy_factory(backend_port, extra=merge(ADMIN, extra))
    p.admin = admin_port(p)
    return p


def listener_port(proxy, name, timeout=5.0):
    m = proxy.log.wait_for(r"listening name=%s address=127\.0\.0\.1:(\d+)" % re.escape(name),
                           timeout=timeout, alive=proxy.check_alive)
    return int(m.group(1))


def addr(port):
    return "127.0.0.1:%d" % port


def session_backend(proxy, ctx):
    """One client session (LOGIN demo, LOGOUT); returns the backend its
    summary line names."""
    mark = proxy.log.mark()
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
        c.command("Z", "LOGOUT")
        c.expect_eof()
    m = proxy.log.wait_for(r"\bsession: closed (.*)$", since=mark, timeout=5)
    return h.parse_kv(m.group(1))["backend"]


# ------------------------------------------------------------------ HTTP ----

class HTTPReply:
    def __init__(self, status, headers, body, closed):
        self.status = status
        self.headers = headers  # {lower-case name: value}
        self.body = body
        self.closed = closed    # the server closed the connection after it


def http_raw(port, request, timeout=5.0):
    """Sends request bytes as they are and reads the reply up to the
    server's close (bounded by timeout). closed is False when the server
    kept the connection open past the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read everything: the reply may be there
        data = b""
        closed = False
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk  # every request here ends in a close: read up to it
    if not data:
        return HTTPReply(None, {}, b"", closed)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return HTTPReply(int(m.group(1)) if m else None, headers, body, closed)


def http_get(port, path, method="GET", timeout=5.0):
    req = "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % (method, path)
    return http_raw(port, req.encode("latin-1"), timeout)


# ------------------------------------------------ Prometheus text format ----

METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_SAMPLE = re.compile(r"^(%s)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$" % METRIC_NAME)
_LABEL = re.compile(r'\s*(%s)="((?:[^"\\\n]|\\["\\n])*)"\s*(,|$)' % LABEL_NAME)
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class FormatError(AssertionError):
    pass


class Metrics:
    """A parsed exposition: samples[name][((label, value), ...)] = float,
    types[name], helps[name]."""

    def __init__(self, text):
        self.text = text
        self.samples = {}
        self.types = {}
        self.helps = {}
        self._parse(text)

    def _parse(self, text):
        if text and not text.endswith("\n"):
            raise FormatError("the exposition does not end with a newline")
        finished = set()  # families whose samples ended (another began)
        current = None
        for no, line in enumerate(text.split("\n")[:-1], 1):
            where = "line %d: %r" % (no, line)
            if line == "":
                raise FormatError("%s: empty line" % where)
            if line.startswith("#"):
                m = re.match(r"^# (HELP|TYPE) (%s)(?: (.*))?$" % METRIC_NAME, line)
                if not m:
                    if re.match(r"^# (HELP|TYPE)\b", line):
                        raise FormatError("%s: malformed %s line" % (where, line.split()[1]))
                    continue  # a plain comment
                kind, name, rest = m.group(1), m.group(2), m.group(3)
                table = self.helps if kind == "HELP" else self.types
                if name in table:
                    raise FormatError("%s: second %s for %s" % (where, kind, name))
                if name in self.samples:
                    raise FormatError("%s: %s for %s after its samples" % (where, kind, name))
                if kind == "TYPE" and rest not in TYPES:
                    raise FormatError("%s: unknown type %r" % (where, rest))
                if kind == "HELP" and not rest:
                    raise FormatError("%s: empty HELP" % where)
                table[name] = rest
                continue
            m = _SAMPLE.match(line)
            if not m:
                raise FormatError("%s: not 'name{labels} value'" % where)
            name, labels_text, value_text = m.group(1), m.group(2), m.group(3)
            family = self.family_of(name)
            if family is None:
                raise FormatError("%s: sample of %s before (or without) its TYPE" % (where, name))
            if family not in self.helps:
                raise FormatError("%s: sample of %s without a HELP" % (where, family))
            if family != current:
                if family in finished:
                    raise FormatError("%s: samples of %s are not contiguous" % (where, family))
                if current is not None:
                    finished.add(current)
                current = family
            labels = self._labels(labels_text, where)
            try:
                value = float(value_text)
            except ValueError:
                raise FormatError("%s: value %r is not a number" % (where, value_text)) from None
            if math.isnan(value):
                raise FormatError("%s: NaN" % where)
            kind = self.types[family]
            if kind == "histogram" and name.endswith("_bucket") and "le" not in dict(labels):
                raise FormatError("%s: histogram bucket without le" % where)
            series = self.samples.setdefault(name, {})
            if labels in series:
                raise FormatError("%s: duplicate label set" % where)
            if (kind == "counter" or name.endswith(("_bucket", "_count"))) and value < 0:
                raise FormatError("%s: negative counter" % where)
            series[labels] = value
        for family, kind in self.types.items():
            if kind == "histogram":
                self._check_histogram(family)

    def family_of(self, name):
        """The family a sample name belongs to (a histogram's _bucket,
        _sum and _count samples belong to the histogram), or None."""
        if name in self.types:
            return name
        for suffix, kinds in (("_bucket", ("histogram",)), ("_sum", ("histogram", "summary")),
                              ("_count", ("histogram", "summary"))):
            if name.endswith(suffix) and self.types.get(name[:-len(suffix)]) in kinds:
                return name[:-len(suffix)]
        return None

    def _check_histogram(self, family):
        """Buckets cumulative with le ascending, ending in +Inf == _count."""
        buckets = self.samples.get(family + "_bucket", {})
        series = {}
        for labels, v in buckets.items():
            d = dict(labels)
            le = d.pop("le")
            series.setdefault(tuple(sorted(d.items())), []).append((float(le), v))
        for rest, points in series.items():
            points.sort()
            if points[-1][0] != math.inf:
                raise FormatError("%s%r: no le=\"+Inf\" bucket" % (family, rest))
            counts = [v for _, v in points]
            if counts != sorted(counts):
                raise FormatError("%s%r: buckets are not cumulative" % (family, rest))
            count = self.samples.get(family + "_count", {}).get(rest)
            if count != counts[-1]:
                raise FormatError("%s%r: _count %r != +Inf bucket %r"
                                  % (family, rest, count, counts[-1]))
            if rest not in self.samples.get(family + "_sum", {}):
                raise FormatError("%s%r: no _sum" % (family, rest))

    @staticmethod
    def _labels(text, where):
        if text is None or text == "":
            return ()
        out = []
        pos = 0
        while pos < len(text):
            m = _LABEL.match(text, pos)
            if not m:
                raise FormatError("%s: malformed labels at %r" % (where, text[pos:]))
            out.append((m.group(1), m.group(2).replace('\\"', '"').replace("\\n", "\n")
                        .replace("\\\\", "\\")))
            pos = m.end()
            if m.group(3) == "" and pos < len(text):
                raise FormatError("%s: labels not separated by commas" % where)
        names = [k for k, _ in out]
        if len(set(names)) != len(names):
            raise FormatError("%s: a label appears twice" % where)
        return tuple(sorted(out))

    def get(self, name, default=None, **labels):
        """The value of name with exactly these labels (default if absent).
        A backend series (one with a server label) carries its pool too;
        left out, the pool is "default", the one [backend] defines."""
        if "server" in labels and "pool" not in labels:
            labels = dict(labels, pool="default")
        return self.samples.get(name, {}).get(tuple(sorted(labels.items())), default)

    def value(self, name, **labels):
        v = self.get(name, **labels)
        if v is None:
            raise AssertionError("no sample %s%r in:\n%s" % (name, labels, self.text))
        return v

    def labelsets(self, name):
        return [dict(k) for k in self.samples.get(name, {})]


def scrape(proxy):
    r = http_get(proxy.admin, "/metrics")
    assert r.status == 200, (r.status, r.body)
    assert r.headers.get("content-type", "").startswith("text/plain; version=0.0.4"), r.headers
    return Metrics(r.body.decode("utf-8"))


def wait_metrics(proxy, predicate, timeout=5.0, what="metrics"):
    """Scrapes until predicate(metrics) holds; returns the last scrape."""
    last = [None]

    def probe():
        last[0] = scrape(proxy)
        return predicate(last[0])

    try:
        h.wait_until(probe, timeout, what, interval=0.05)
    except h.HarnessError as e:
        raise h.HarnessError("%s; last scrape:\n%s" % (e, last[0].text if last[0] else "")) \
            from None
    return last[0]


# --------------------------------------------------------- PROXY protocol ----

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def pp_v1(src, sport, dst="127.0.0.1", dport=993):
    family = "TCP6" if ipaddress.ip_address(src).version == 6 else "TCP4"
    return ("PROXY %s %s %s %d %d\r\n" % (family, src, dst, sport, dport)).encode()


def pp_v2(src, sport, dst="127.0.0.1", dport=993, tlvs=b""):
    """A version 2 PROXY command for a TCP connection (IPv4 or IPv6 by
    src), optionally followed by raw TLV bytes."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        fam, addrs = 0x11, s.packed + d.packed + struct.pack("!HH", sport, dport)
    else:
        if d.version == 4:
            d = ipaddress.IPv6Address("::ffff:" + str(d))
        fam, addrs = 0x21, s.packed + d.packed + struct.pack("!HH", sport, dport)
    body = addrs + tlvs
    return V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


def pp_v2_local():
    """The LOCAL command: a health check of the balancer; the connection's
    own addresses stand."""
    return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)


def tls_after(port, header, ctx, timeout=10.0):
    """A TLS client that sent header bytes on the TCP connection first."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(header)
    return TLSOver(sock, ctx, timeout=timeout)


def wait_closed(sock, timeout=5.0):
    """Reads until the peer closes; returns what it sent (or raises)."""
    deadline = time.monotonic() + timeout
    got = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise h.HarnessError("connection still open after %.1fs (got %r)" % (timeout, got))
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return got
        except socket.timeout:
            continue
        if not chunk:
            return got
        got += chunk


# -------------------------------------------------------------- emulator ----

class EmulatorAt(h._Child):
    """The legacy-server emulator on a plain port we choose (0 = kernel's
    choice the first time), so that it can be killed and started again on
    the same port with the same mail store. Plain only: the proxy talks
    plain TCP to its backends."""

    name = "emulator"

    def __init__(self, workdir, port=0, users="demo:demo", label="emu", flags=()):
        self.dir = tempfile.mkdtemp(prefix=label + "-", dir=workdir)
        self.flags = list(flags)
        self.store = os.path.join(self.dir, "store")
        os.makedirs(self.store)
        self.log = h.LogFile(os.path.join(self.dir, "conn.log"))
        self.users = users
        self.port = port
        self.starts = 0
        self.start()

    def start(self):
        self.starts += 1
        self.stderr_path = os.path.join(self.dir, "stderr-%d.log" % self.starts)
        cmd = [h.PYTHON, h.EMULATOR, "--plain", "127.0.0.1:%d" % self.port,
               "--store", self.store, "--users", self.users, "--log", self.log.path] + self.flags
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=err, cwd=self.dir)
        try:
            line = h._read_line(self.proc.stdout, h.START_TIMEOUT, self.check_alive)
        except Exception:
            self.stop()
            raise
        m = re.search(r"READY plain=(\d+)", line)
        if not m:
            self.stop()
            raise h.HarnessError("emulator said %r instead of READY" % line)
        self.port = self.plain_port = int(m.group(1))

    def kill(self):
        """SIGKILL: the port refuses connections from now on."""
        self.proc.kill()
        self.proc.wait(h.STOP_TIMEOUT)
        self.proc.stdout.close()

    def opens_since(self, mark):
        return len(self.log.find(r"\bconn \d+ open\b", mark))


# ------------------------------------------------------------ the process ----

def read_ini(path):
    cp = configparser.ConfigParser(interpolation=None, strict=True)
    cp.optionxform = str
    cp.read(path)
    return {s: dict(cp[s]) for s in cp.sections()}


def rewrite_ini(proxy, change=None, drop=()):
    """Rewrites proxy.ini: change merges {section: {key: value}}; drop
    names sections to remove."""
    sections = merge(read_ini(proxy.ini), change)
    for s in drop:
        sections.pop(s, None)
    tmp = proxy.ini + ".new"
    with open(tmp, "w") as f:
        f.write(h.render_ini(sections))
    os.replace(tmp, proxy.ini)


def sighup(proxy, expect, timeout=5.0):
    """SIGHUP, then the first log line matching expect after it."""
    mark = proxy.log.mark()
    proxy.proc.send_signal(signal.SIGHUP)
    return proxy.log.wait_for(expect, since=mark, timeout=timeout, alive=proxy.check_alive)


RELOADED = r"\binfo main: configuration reloaded from "
RELOAD_FAILED = r"\berror main: reload failed, the running configuration stays: (.*)$"


def closes(proxy, since, count=1, timeout=5.0):
    """The close reasons of the next count session summary lines after a
    mark (waits for them: a summary is logged once every handle closed)."""
    h.wait_until(lambda: len(proxy.closed_lines(since)) >= count, timeout,
                 "%d session summary line(s)" % count)
    return [kv["reason"] for kv in proxy.closed_lines(since)]


class JSONProxy(h.Proxy):
    """h.Proxy with `log_format = json` from the start: it learns its port
    from the JSON "listening" record instead of the text line."""

    def __init__(self, workdir, cert, key, backend_port, extra=None, label="proxy"):
        self.dir = tempfile.mkdtemp(prefix=label + "-", dir=workdir)
        sections = merge({
            "proxy": {"workers": "1", "log_level": "info", "log_format": "json"},
            "listen.imaps": {"address": "127.0.0.1:0", "mode": "implicit-tls"},
            "tls": {"certificate": cert, "private_key": key},
            "backend": {"servers": "127.0.0.1:%d" % backend_port},
        }, extra)
        self.ini = os.path.join(self.dir, "proxy.ini")
        with open(self.ini, "w") as f:
            f.write(h.render_ini(sections))
        self.log = h.LogFile(os.path.join(self.dir, "imapfront.log"))
        with open(self.log.path, "wb") as out:
            self.proc = subprocess.Popen([h.BIN, "-c", self.ini], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=out, cwd=self.dir)
        self.pid = self.proc.pid
        try:
            m = self.log.wait_for(r'"msg":"listening","name":"imaps",'
                                  r'"address":"127\.0\.0\.1:(\d+)"',
                                  timeout=h.START_TIMEOUT, alive=self.check_alive)
            self.port = int(m.group(1))
            # Logged at bind(); wait for listen() as the harness does.
            h.wait_until(lambda: _listening(self.port), h.START_TIMEOUT,
                         "port %d in LISTEN state" % self.port)
        except Exception:
            self.stop()
            raise


def _listening(port):
    want = ":%04X " % port
    with open("/proc/net/tcp") as f:
        return any(want in l and l.split()[3] == "0A" for l in f.readlines()[1:])


def wait_exit(proxy, timeout):
    """The proxy's exit status, waiting at most timeout seconds."""
    try:
        return proxy.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise h.HarnessError("imapfront still running %.1fs later; log:\n%s"
                             % (timeout, proxy.tail())) from None
