#!/usr/bin/env python3
"""Benchmark imapfront against HAProxy, stunnel and nginx's mail proxy in one run.

Every peer runs with one worker in front of the same plain IMAP sink
(bench/sink.c), on 127.0.0.1 only, and is driven by bench/loadclient.c over
TLS 1.3 with an ECDSA P-256 certificate made for the run. Each measurement
starts the peer afresh, runs one load-client mode against it with the peer's
PID (CPU time and RSS come from /proc), and stops it again. Modes and peers
alternate, the peer order rotating every round; the table shows medians
over the rounds and ratios to HAProxy. Every round also measures the
BoringSSL decrypt floor (bench/floor.c) that the APPEND CPU is compared
with. A run fails (exit status 1) when any measurement reports a failed
check: an APPEND the sink found corrupt, a wrong FETCH body, a lost session.

Usage: bench/run.py [--quick] [--rounds R] [--seconds T] [--idle N] ...
Environment: IMAPFRONT_BIN (default: build/src/imapfront in the source
tree), BORINGSSL_INCLUDE, BORINGSSL_LIBDIR, CC.

Standard library only. Every process it starts is stopped by its PID on the
way out, also on errors and Ctrl-C.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_ROOT = os.path.dirname(HERE)
HOST = "127.0.0.1"

T_START = time.monotonic()

# Processes this script started, stopped by PID at exit.
STARTED = []


def log(msg):
    print("[%6.1fs] %s" % (time.monotonic() - T_START, msg), file=sys.stderr, flush=True)


# ---- setup -------------------------------------------------------------------

def find_exe(*names):
    for name in names:
        path = shutil.which(name)
        if path is None:
            for d in ("/usr/sbin", "/usr/bin", "/sbin"):
                if os.access(os.path.join(d, name), os.X_OK):
                    path = os.path.join(d, name)
                    break
        if path is not None:
            return path
    return None


NGINX_MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"


def ensure_packages(skip_install):
    """Installs stunnel4, haproxy, openssl, nginx-light and its mail module
    from Debian when missing."""
    wanted = {"stunnel4": ("stunnel4", "stunnel"), "haproxy": ("haproxy",),
              "openssl": ("openssl",), "nginx-light": ("nginx",)}
    missing = [pkg for pkg, exes in wanted.items() if find_exe(*exes) is None]
    if not os.path.exists(NGINX_MAIL_MODULE):
        missing.append("libnginx-mod-mail")
    if missing and not skip_install:
        if os.geteuid() != 0:
            sys.exit("bench: missing %s; install them (apt-get install %s) or run as root"
                     % (", ".join(missing), " ".join(missing)))
        log("bench: installing %s" % " ".join(missing))
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends"] + missing,
                       check=True, env=env, stdout=subprocess.DEVNULL)
    tools = {pkg: find_exe(*exes) for pkg, exes in wanted.items()}
    for pkg, path in tools.items():
        if path is None:
            sys.exit("bench: %s is not installed" % pkg)
    if not os.path.exists(NGINX_MAIL_MODULE):
        sys.exit("bench: %s is missing (apt-get install libnginx-mod-mail)" % NGINX_MAIL_MODULE)
    return tools


def build_tools(workdir, tools_dir, with_floor=False):
    """The sink and the load client (and with_floor, the decrypt floor):
    taken from tools_dir (a meson build's bench/ directory) when given, else
    compiled here with cc. Returns (sink, client) or (sink, client, floor)."""
    if tools_dir:
        sink = os.path.join(tools_dir, "imf-bench-sink")
        client = os.path.join(tools_dir, "imf-bench-loadclient")
        floor = os.path.join(tools_dir, "imf-bench-floor")
        for p in (sink, client) + ((floor,) if with_floor else ()):
            if not os.access(p, os.X_OK):
                sys.exit("bench: %s not found (build with meson first)" % p)
        return (sink, client, floor) if with_floor else (sink, client)
    cc = os.environ.get("CC", "cc")
    multiarch = subprocess.run([cc, "-print-multiarch"], capture_output=True,
                               text=True).stdout.strip()
    inc = os.environ.get("BORINGSSL_INCLUDE", "/usr/include/android")
    libdir = os.environ.get("BORINGSSL_LIBDIR", os.path.join("/usr/lib", multiarch, "android"))
    with open(os.path.join(inc, "openssl", "base.h"), errors="replace") as f:
        if "OPENSSL_IS_BORINGSSL" not in f.read():
            sys.exit("bench: %s is not BoringSSL (apt-get install android-libboringssl-dev)" % inc)
    flags = ["-O2", "-std=c11", "-Wall", "-Wextra"]
    sink = os.path.join(workdir, "sink")
    client = os.path.join(workdir, "loadclient")
    floor = os.path.join(workdir, "floor")
    ssl = ["-L" + libdir, "-Wl,-rpath," + libdir, "-lssl", "-lcrypto"]
    subprocess.run([cc] + flags + ["-o", sink, os.path.join(HERE, "sink.c"), "-lz"], check=True)
    subprocess.run([cc] + flags + ["-isystem", inc, "-o", client,
                                   os.path.join(HERE, "loadclient.c")] + ssl + ["-lz", "-lpthread"],
                   check=True)
    if with_floor:
        subprocess.run([cc] + flags + ["-isystem", inc, "-o", floor,
                                       os.path.join(HERE, "floor.c")] + ssl, check=True)
        return sink, client, floor
    return sink, client


def make_cert(workdir, openssl):
    key = os.path.join(workdir, "key.pem")
    cert = os.path.join(workdir, "cert.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    combined = os.path.join(workdir, "combined.pem")
    with open(combined, "w") as out:
        for p in (cert, key):
            with open(p) as f:
                out.write(f.read())
    return cert, key, combined


CLK_TCK = os.sysconf("SC_CLK_TCK")


def system_busy_s():
    """CPU seconds all CPUs spent on anything but idle and iowait."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / CLK_TCK


def pid_cpu_s(pid):
    if pid is None:
        return 0.0
    try:
        with open("/proc/%d/stat" % pid) as f:
            text = f.read()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_quiet(max_wait, limit_pct=15.0):
    """Waits (at most max_wait seconds) until the machine is quiet: less than
    limit_pct % of a core busy over 0.3 s while nothing of ours runs. Other
    work on the machine shares the two cores with the proxy under test."""
    if max_wait <= 0:
        return None
    deadline = time.monotonic() + max_wait
    while True:
        b0, t0 = system_busy_s(), time.monotonic()
        time.sleep(0.3)
        busy = (system_busy_s() - b0) / (time.monotonic() - t0) * 100
        if busy < limit_pct or time.monotonic() > deadline:
            return busy


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ---- processes ---------------------------------------------------------------

def listening(port):
    """True once something listens on HOST:port (read from /proc, so no
    connection disturbs the peer)."""
    want = "%08X:%04X" % (int.from_bytes(socket.inet_aton(HOST), "little"), port)
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] == want and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


class StartError(Exception):
    pass


class Proc:
    def __init__(self, name, argv, workdir, port, start_timeout=10):
        self.name = name
        self.log_path = os.path.join(workdir, "%s.log" % name)
        self.log = open(self.log_path, "ab")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        STARTED.append(self)
        deadline = time.monotonic() + start_timeout
        while not listening(port):
            if self.p.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise StartError("%s did not start listening on %s:%d:\n%s"
                                 % (name, HOST, port, self.tail()))
            time.sleep(0.01)

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def tail(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read()[-2000:].decode(errors="replace")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=10)
        self.log.close()
        if self in STARTED:
            STARTED.remove(self)


def stop_all():
    for proc in list(STARTED):
        try:
            proc.stop()
        except Exception as e:  # keep stopping the others
            log("bench: stopping %s: %s" % (proc.name, e))


# ---- peers -------------------------------------------------------------------

# nginx's mail proxy asks an HTTP server whether a login may pass and where
# to send it; this one says yes to everyone and names the sink. It runs as a
# process of its own (python3, standard library), started once per run.
AUTH_RESPONDER = """\
import http.server, sys
SINK_PORT = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Auth-Status", "OK")
        self.send_header("Auth-Server", "127.0.0.1")
        self.send_header("Auth-Port", SINK_PORT)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


class Peers:
    def __init__(self, workdir, tools, imapfront_bin, sink_port, cert, key, combined, max_conn):
        self.workdir = workdir
        self.auth = None  # the auth responder for nginx, started when first needed
        self.auth_port = None
        self.tools = tools
        self.imapfront_bin = imapfront_bin
        self.sink_port = sink_port
        self.cert, self.key, self.combined = cert, key, combined
        self.max_conn = max_conn

    def write(self, name, text):
        path = os.path.join(self.workdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start_auth(self):
        """Starts nginx's auth responder once (stopped at exit with the rest)."""
        if self.auth is not None and self.auth.alive():
            return
        script = self.write("auth_responder.py", AUTH_RESPONDER)
        for attempt in range(3):
            port = free_port()
            try:
                self.auth = Proc("auth", [sys.executable, script, str(port), str(self.sink_port)],
                                 self.workdir, port)
                self.auth_port = port
                return
            except StartError as e:
                if attempt == 2:
                    sys.exit("bench: %s" % e)

    def start(self, peer, wrapper=(), start_timeout=10, compress=False):
        """Starts peer on a free port (under wrapper, e.g. valgrind, when
        given); a port taken by someone else between the choice and the bind
        costs one more try."""
        for attempt in range(3):
            try:
                return self.start_on(peer, free_port(), list(wrapper), start_timeout, compress)
            except StartError as e:
                if attempt == 2:
                    sys.exit("bench: %s" % e)
                log("bench: %s; trying another port" % str(e).splitlines()[0])

    def start_on(self, peer, port, wrapper, start_timeout, compress=False):
        if peer.startswith("imapfront"):
            workers = 2 if peer == "imapfront-w2" else 1
            ini = self.write("%s.ini" % peer, """\
[proxy]
workers = %d
max_connections = %d
log_level = warn

[listen.imaps]
address = %s:%d
mode = implicit-tls

[tls]
certificate = %s
private_key = %s

[backend]
servers = %s:%d
%s""" % (workers, self.max_conn, HOST, port, self.cert, self.key, HOST, self.sink_port,
         "\n[imap]\ncompress = on\n" if compress else ""))
            argv = [self.imapfront_bin, "-c", ini]
        elif peer == "haproxy":
            cfg = self.write("haproxy.cfg", """\
global
    nbthread 1
    maxconn %d

defaults
    mode tcp
    timeout connect 5s
    timeout client 30m
    timeout server 30m

frontend imaps
    bind %s:%d ssl crt %s ciphersuites TLS_AES_128_GCM_SHA256
    default_backend sink

backend sink
    server sink %s:%d
""" % (self.max_conn, HOST, port, self.combined, HOST, self.sink_port))
            argv = [self.tools["haproxy"], "-db", "-f", cfg]
        elif peer == "stunnel":
            conf = self.write("stunnel.conf", """\
foreground = yes
pid =
debug = 3
syslog = no

[imaps]
accept = %s:%d
connect = %s:%d
cert = %s
key = %s
ciphersuites = TLS_AES_128_GCM_SHA256
""" % (HOST, port, HOST, self.sink_port, self.cert, self.key))
            argv = [self.tools["stunnel4"], conf]
        elif peer == "nginx":
            self.start_auth()
            prefix = os.path.join(self.workdir, "nginx")
            os.makedirs(prefix, exist_ok=True)
            # One process that is the worker (no master), so the PID the
            # load client measures is the one doing the work.
            conf = self.write("nginx.conf", """\
load_module %s;
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile %d;
pid %s/nginx.pid;
error_log %s/error.log warn;

events {
    worker_connections %d;
}

mail {
    server_name localhost;
    auth_http %s:%d/auth;
    proxy_pass_error_message on;
    ssl_certificate %s;
    ssl_certificate_key %s;
    ssl_protocols TLSv1.3;
    ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;

    server {
        listen %s:%d ssl;
        protocol imap;
    }
}
""" % (NGINX_MAIL_MODULE, 2 * self.max_conn + 200, prefix, prefix, 2 * self.max_conn + 100,
                HOST, self.auth_port, self.cert, self.key, HOST, port))
            argv = [self.tools["nginx-light"], "-p", prefix, "-e", os.path.join(prefix, "error.log"),
                    "-c", conf]
        else:
            raise ValueError(peer)
        return Proc(peer, wrapper + argv, self.workdir, port, start_timeout), port


# ---- measurements ------------------------------------------------------------

def parse_result(out):
    for line in out.splitlines():
        if line.startswith("RESULT "):
            fields = {}
            for tok in line.split()[1:]:
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    try:
                        fields[k] = float(v)
                    except ValueError:
                        fields[k] = v
            return line, fields
    return None, None


def run_client(client, args, timeout):
    try:
        r = subprocess.run([client] + args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log("bench: loadclient %s took more than %.0f s; stopped" % (" ".join(args), timeout))
        return None, None
    line, fields = parse_result(r.stdout)
    if r.returncode != 0 or fields is None:
        log("bench: loadclient %s failed (exit %d): %s %s"
            % (" ".join(args), r.returncode, r.stdout.strip(), r.stderr.strip()[-500:]))
    return line, fields


ALL_PEERS = ("imapfront", "haproxy", "stunnel", "nginx")

# Concurrent clients of the handshake storm modes (handshake8, ...).
HANDSHAKE_CONNS = (8, 32, 128, 512)


# (name, peers, load-client arguments builder)
def plan(opts):
    t = str(opts.seconds)
    main_peers = [p for p in ALL_PEERS if p in opts.peers]
    real = ["realistic", "--sessions", str(opts.sessions), "--seconds", str(opts.real_seconds)]
    return [
        ("append1", main_peers, lambda: ["append", "--conns", "1", "--seconds", t]),
        ("noop", main_peers, lambda: ["noop", "--seconds", t]),
        ("idle", main_peers, lambda: ["idle", "--sessions", str(opts.idle)]),
        ("idle_z", main_peers, lambda: ["idle", "--sessions", str(opts.idle), "--compress"]),
        ("handshake", main_peers, lambda: ["handshake", "--conns", "2", "--seconds", t]),
    ] + [
        # The handshake storm at the concurrency levels; the
        # default argument binds each level now, not at the loop's end.
        ("handshake%d" % c, main_peers,
         lambda c=c: ["handshake", "--conns", str(c), "--seconds", t])
        for c in HANDSHAKE_CONNS
    ] + [
        ("append4", ["imapfront", "imapfront-w2"],
         lambda: ["append", "--conns", "4", "--seconds", t]),
        ("realistic", main_peers, lambda: real),
        ("realistic_z", main_peers, lambda: real + ["--compress"]),
    ]


def median(xs):
    xs = [x for x in xs if isinstance(x, float)]
    return statistics.median(xs) if xs else None


# figure, mode, field, peer-of-interest target (ratio to HAProxy), direction
FIGURES = [
    ("APPEND throughput, 1 conn, 8 MiB (MiB/s)", "append1", "mibps", ">=", 1.25),
    ("proxy CPU per GiB relayed (s)", "append1", "cpu_s_per_gib", "<=", 0.5),
    ("NOOP round trip p50 (us)", "noop", "p50_us", "<=", 1.0),
    ("NOOP round trip p99 (us)", "noop", "p99_us", None, None),
    ("proxy CPU per NOOP (us)", "noop", "cpu_us_per_noop", "<=", 0.5),
    ("memory per idle logged-in session (KiB)", "idle", "kib_per_session", "<=", 0.5),
    ("... with COMPRESS DEFLATE (KiB)", "idle_z", "kib_per_session", None, None),
    ("proxy CPU per full handshake (us)", "handshake", "cpu_us_per_handshake", "<=", 0.8),
    ("full handshakes per second (2 conns)", "handshake", "per_s", None, None),
    ("load client CPU per handshake (us, 2 conns)", "handshake", "client_cpu_us_per_handshake",
     "<=", 1.1),
] + [row for c in HANDSHAKE_CONNS for row in (
    ("full handshakes per second (%d conns)" % c, "handshake%d" % c, "per_s", ">=",
     1.2 if c == 128 else 1.1),
    ("... proxy CPU per handshake (us, %d conns)" % c, "handshake%d" % c,
     "cpu_us_per_handshake", None, None),
    ("... load client CPU per handshake (us, %d conns)" % c, "handshake%d" % c,
     "client_cpu_us_per_handshake", "<=", 1.1),
)]


def fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return "%.0f" % v
    if abs(v) >= 10:
        return "%.1f" % v
    return "%.2f" % v


# The realistic modes' rows: title, field.
REAL_FIGURES = [
    ("commands per second (all kinds)", "ops_per_s"),
    ("proxy CPU per command (us)", "cpu_us_per_op"),
    ("NOOP p50 / p99 (us)", ("noop_p50_us", "noop_p99_us")),
    ("FETCH p50 / p99 (us)", ("fetch_p50_us", "fetch_p99_us")),
    ("APPEND 50 KiB p50 / p99 (us)", ("append_p50_us", "append_p99_us")),
    ("peak RSS of the peer (MiB)", "peak_rss_kib"),
]


def table(results, opts, floors=()):
    def med(mode, peer, field):
        return median([r.get(field) for r in results.get((mode, peer), [])])

    peers = [p for p in ALL_PEERS if p in opts.peers]
    names = {"imapfront": "imapfront", "haproxy": "HAProxy", "stunnel": "stunnel",
             "nginx": "nginx"}
    others = [p for p in peers if p not in ("imapfront", "haproxy")]
    lines = []
    main_modes = set(m for _, m, _, _, _ in FIGURES)
    if not any((m, p) in results for m in main_modes for p in peers):
        lines.append("(no append1, noop, idle or handshake measurement in this run)")
    else:
        lines.append("| figure | %s | imapfront / HAProxy | target | met | %s |"
                     % (" | ".join(names[p] for p in peers),
                        " | ".join("%s / HAProxy" % names[p] for p in others)))
        lines.append("|---|" + "---|" * (len(peers) + 3 + len(others)))
    for title, mode, field, op, target in FIGURES:
        if not any((mode, p) in results for p in peers):
            continue
        v = {p: med(mode, p, field) for p in peers}
        h = v.get("haproxy")
        ratio = {p: (v[p] / h if h and v[p] is not None else None) for p in peers}
        ri = ratio.get("imapfront")
        met = "-"
        if op is not None and ri is not None:
            met = "yes" if (ri >= target if op == ">=" else ri <= target) else "NO"
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            title, " | ".join(fmt(v[p]) for p in peers),
            ("%.2fx" % ri) if ri is not None else "-",
            ("%s %.2fx" % (op, target)) if op else "-", met,
            " | ".join(("%.2fx" % ratio[p]) if ratio[p] is not None else "-" for p in others)))
    w1 = med("append4", "imapfront", "mibps")
    w2 = med("append4", "imapfront-w2", "mibps")
    extra = []
    floor = median(list(floors))
    if floor:
        parts = []
        for p in peers:
            v = med("append1", p, "cpu_s_per_gib")
            if v is not None:
                parts.append("%s %.2fx" % (names[p], v / floor))
        fi = med("append1", "imapfront", "cpu_s_per_gib")
        verdict = ""
        if fi is not None:
            verdict = " (target for imapfront <= 1.60x: %s)" % ("yes" if fi / floor <= 1.6 else "NO")
        extra.append("proxy CPU per GiB of APPEND / floor: %s; the BoringSSL decrypt floor "
                     "(bench/floor.c, median of %d) is %.3f s per GiB%s"
                     % (", ".join(parts) if parts else "-", len(floors), floor, verdict))
    if w1 is not None and w2 is not None:
        ratio = w2 / w1
        extra.append("imapfront APPEND at 4 connections: workers = 1: %s MiB/s, workers = 2: "
                     "%s MiB/s, ratio %.2fx (target > 1.00x: %s)"
                     % (fmt(w1), fmt(w2), ratio, "yes" if ratio > 1.0 else "NO"))
    kib = med("idle", "imapfront", "kib_per_session")
    if kib is not None:
        kz = med("idle_z", "imapfront", "kib_per_session")
        extra.append("imapfront memory per idle logged-in session: %.2f KiB (target <= 4.00 KiB: "
                     "%s)%s" % (kib, "yes" if kib <= 4.0 else "NO",
                                "; with COMPRESS DEFLATE %.2f KiB" % kz if kz is not None else ""))
    d50 = med("noop", "direct", "p50_us")
    d99 = med("noop", "direct", "p99_us")
    if d50 is not None:
        extra.append("NOOP straight to the sink (plain TCP, no proxy): p50 %s us, p99 %s us"
                     % (fmt(d50), fmt(d99)))
    for mode in ("realistic", "realistic_z"):
        if not any((mode, p) in results for p in peers):
            continue
        lines.append("")
        lines.append("%s: %d logged-in sessions%s, a FETCH or NOOP every 200 ms and an APPEND of "
                     "50 KiB every 10 s each, %g s" % (
                         mode, opts.sessions,
                         " with COMPRESS DEFLATE (imapfront terminates it; the others pass it "
                         "through to the sink)" if mode == "realistic_z" else "",
                         opts.real_seconds))
        lines.append("")
        lines.append("| figure | %s | imapfront / HAProxy | target | met |"
                     % " | ".join(names[p] for p in peers))
        lines.append("|---|" + "---|" * (len(peers) + 3))
        for title, field in REAL_FIGURES:
            if isinstance(field, tuple):
                cells = []
                for p in peers:
                    a, b = med(mode, p, field[0]), med(mode, p, field[1])
                    cells.append("%s / %s" % (fmt(a), fmt(b)))
                vi, vh = med(mode, "imapfront", field[1]), med(mode, "haproxy", field[1])
                ratio = vi / vh if vi is not None and vh else None
                target, met = "p99 <= 1.00x", ("-" if ratio is None else
                                               "yes" if ratio <= 1.0 else "NO")
            else:
                scale = 1 / 1024 if field == "peak_rss_kib" else 1
                vals = {p: med(mode, p, field) for p in peers}
                cells = [fmt(vals[p] * scale) if vals[p] is not None else "-" for p in peers]
                vi, vh = vals.get("imapfront"), vals.get("haproxy")
                ratio = vi / vh if vi is not None and vh else None
                target, met = "-", "-"
                if field == "cpu_us_per_op":
                    target = "<= 0.60x"
                    met = "-" if ratio is None else "yes" if ratio <= 0.6 else "NO"
            lines.append("| %s | %s | %s | %s | %s |" % (
                title, " | ".join(cells), ("%.2fx" % ratio) if ratio is not None else "-",
                target, met))
    return "\n".join(lines), extra


def versions(tools, imapfront_bin):
    def first_line(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            text = (r.stdout + r.stderr).strip().splitlines()
            for line in text:
                if any(w in line for w in ("HAProxy version", "stunnel ", "imapfront",
                                           "nginx version")):
                    return line.strip()
            return text[0].strip() if text else "?"
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    return {
        "imapfront": first_line([imapfront_bin, "-V"]),
        "haproxy": first_line([tools["haproxy"], "-v"]),
        "stunnel": first_line([tools["stunnel4"], "-version"]),
        "nginx": first_line([tools["nginx-light"], "-v"]),
    }


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%d CPUs, %s, Linux %s" % (os.cpu_count() or 0, model, platform.release())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a short smoke run: 1 round, 0.3 s per mode, 100 idle sessions")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=7.0,
                    help="handshake mode: seconds of handshakes before measuring, for every "
                    "peer alike (imapfront's slow start of backend connects lasts 6 s)")
    ap.add_argument("--idle", type=int, default=2000, help="idle sessions (default 2000)")
    ap.add_argument("--modes",
                    default="append1,noop,idle,idle_z,handshake,%s,append4,direct,"
                    "realistic,realistic_z" % ",".join("handshake%d" % c for c in HANDSHAKE_CONNS),
                    help="comma-separated subset of append1, noop, idle, idle_z (idle with "
                    "COMPRESS DEFLATE), handshake (2 connections), handshake8, handshake32, "
                    "handshake128, handshake512 (the storm at that many clients), append4 "
                    "(imapfront workers = 1 vs 2 at 4 connections), direct (NOOP straight "
                    "to the sink), realistic, realistic_z (the same with COMPRESS); "
                    "default: all")
    ap.add_argument("--sessions", type=int, default=2000,
                    help="sessions of the realistic modes (default 2000)")
    ap.add_argument("--realistic-seconds", dest="real_seconds", type=float, default=60.0,
                    help="duration of each realistic measurement (default 60)")
    ap.add_argument("--tools-dir", help="directory with imf-bench-sink and imf-bench-loadclient "
                    "(a meson build's bench/); default: compile them into the temp dir")
    ap.add_argument("--no-install", action="store_true", help="never run apt-get")
    ap.add_argument("--json", help="also write every RESULT and the medians to this file")
    ap.add_argument("--max-foreign", type=float, default=25.0,
                    help="measure again when other processes took more than this %% of a "
                    "core during a measurement (default 25)")
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="before each measurement, wait up to this many seconds for the "
                    "machine to be idle (default 30; 0 = do not wait)")
    ap.add_argument("--retries", type=int, default=2,
                    help="how many times to measure again (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--peers", default=",".join(ALL_PEERS),
                    help="comma-separated subset of %s for every mode but append4 and "
                    "direct (default: all; stunnel opens idle sessions slowly, so leaving it "
                    "out shortens a run a lot)" % ", ".join(ALL_PEERS))
    opts = ap.parse_args()
    opts.modes = [m.strip() for m in opts.modes.split(",") if m.strip()]
    opts.peers = [p.strip() for p in opts.peers.split(",") if p.strip()]
    if not opts.peers or any(p not in ALL_PEERS for p in opts.peers):
        sys.exit("bench: --peers takes a comma-separated subset of %s" % ", ".join(ALL_PEERS))
    known = [m for m, _, _ in plan(opts)] + ["direct"]
    if not opts.modes or any(m not in known for m in opts.modes):
        sys.exit("bench: --modes takes a comma-separated subset of %s" % ", ".join(known))
    if opts.quick:
        opts.rounds, opts.seconds, opts.idle = 1, 0.3, 100
        opts.sessions, opts.real_seconds = 100, 3
        opts.quiet_wait, opts.retries = 0, 0
        opts.warmup = 0
    if not (1 <= opts.rounds <= 100 and 0 < opts.seconds <= 3600 and 1 <= opts.idle <= 100000
            and 1 <= opts.sessions <= 100000 and 0 < opts.real_seconds <= 3600):
        sys.exit("bench: --rounds 1..100, --seconds up to 3600, --idle 1..100000, "
                 "--sessions 1..100000, --realistic-seconds up to 3600")

    imapfront_bin = os.environ.get("IMAPFRONT_BIN",
                                   os.path.join(SOURCE_ROOT, "build", "src", "imapfront"))
    if not os.access(imapfront_bin, os.X_OK):
        sys.exit("bench: imapfront binary not found at %s (set IMAPFRONT_BIN)" % imapfront_bin)
    hard = raise_nofile()
    if ("idle" in opts.modes or "idle_z" in opts.modes) and 2 * opts.idle + 100 > hard:
        sys.exit("bench: --idle %d needs %d file descriptors per proxy; the limit is %d"
                 % (opts.idle, 2 * opts.idle + 100, hard))
    real_modes = [m for m in opts.modes if m.startswith("realistic")]
    if real_modes and 2 * opts.sessions + 100 > hard:
        sys.exit("bench: --sessions %d needs %d file descriptors per proxy; the limit is %d"
                 % (opts.sessions, 2 * opts.sessions + 100, hard))

    tools = ensure_packages(opts.no_install)
    workdir = tempfile.mkdtemp(prefix="imf-bench-")
    results = {}
    raw = []
    floors = []
    failures = []
    try:
        sink_bin, client, floor_bin = build_tools(workdir, opts.tools_dir, with_floor=True)
        cert, key, combined = make_cert(workdir, tools["openssl"])
        sink_port = free_port()
        try:
            sink = Proc("sink", [sink_bin, HOST, str(sink_port)], workdir, sink_port)
        except StartError as e:
            sys.exit("bench: %s" % e)
        peers = Peers(workdir, tools, imapfront_bin, sink_port, cert, key, combined,
                      max_conn=max(opts.idle, opts.sessions if real_modes else 0,
                                   max(HANDSHAKE_CONNS)) + 200)
        # Bounds on one load-client run: its duration, or for idle the time
        # the slowest peer (stunnel: a thread per session) may take to open
        # the sessions, with a wide margin.
        timeout = max(opts.seconds * 3 + 120, 120 + opts.idle * 0.1)
        real_timeout = opts.real_seconds + 10 + 120 + opts.sessions * 0.1
        vers = versions(tools, imapfront_bin)
        log("bench: %s" % machine())
        for k, v in vers.items():
            log("bench: %s: %s" % (k, v))

        def measure(mode, peer, args):
            """One measurement; repeated (at most opts.retries times) when
            other processes used more than opts.max_foreign % of a core.
            Of the attempts, the one with the least foreign load counts."""
            best = None
            for attempt in range(opts.retries + 1):
                wait_quiet(opts.quiet_wait)
                proc, port = ((None, sink_port) if peer == "direct"
                              else peers.start(peer, compress=mode in ("idle_z", "realistic_z")))
                pid = proc.pid if proc is not None else None
                # nginx's auth responder is ours too, not foreign load.
                auth_pid = peers.auth.pid if peers.auth is not None else None
                try:
                    b0, s0, c0 = system_busy_s(), pid_cpu_s(sink.pid), children_cpu_s()
                    p0, t0 = pid_cpu_s(pid), time.monotonic()
                    a0 = pid_cpu_s(auth_pid)
                    extra = ["--port", str(port), "--label", peer]
                    if pid is not None:
                        extra += ["--pid", str(pid)]
                    if mode.startswith("handshake") and opts.warmup > 0:
                        run_client(client, ["handshake", "--conns", "2", "--seconds",
                                            str(opts.warmup)] + extra, timeout + opts.warmup)
                        b0, s0, c0 = system_busy_s(), pid_cpu_s(sink.pid), children_cpu_s()
                        p0, t0 = pid_cpu_s(pid), time.monotonic()
                        a0 = pid_cpu_s(auth_pid)
                    line, fields = run_client(client, args + extra,
                                              real_timeout if mode.startswith("realistic")
                                              else timeout)
                    b1, s1, c1 = system_busy_s(), pid_cpu_s(sink.pid), children_cpu_s()
                    p1, t1 = pid_cpu_s(pid), time.monotonic()
                    a1 = pid_cpu_s(auth_pid)
                    if proc is not None and not proc.alive():
                        log("bench: %s died during %s:\n%s" % (peer, mode, proc.tail()))
                        fields = None
                finally:
                    if proc is not None:
                        proc.stop()
                if fields is None:
                    break
                foreign = ((b1 - b0) - (s1 - s0) - (p1 - p0) - (c1 - c0) - (a1 - a0)) \
                    / (t1 - t0) * 100
                fields["foreign_cpu_pct"] = foreign
                line += " foreign_cpu_pct=%.0f" % foreign
                if best is None or foreign < best[1]["foreign_cpu_pct"]:
                    best = (line, fields)
                if foreign <= opts.max_foreign or attempt == opts.retries:
                    break
                log("  (other processes used %.0f%% of a core: measuring again) %s"
                    % (foreign, line))
            if best is None:
                return
            if best[1].get("failed", 0.0) != 0.0:
                failures.append("%s/%s: failed=%s" % (mode, peer, fmt(best[1]["failed"])))
            results.setdefault((mode, peer), []).append(best[1])
            raw.append(best[0])
            log("  " + best[0])

        for rnd in range(opts.rounds):
            log("bench: round %d of %d" % (rnd + 1, opts.rounds))
            if "append1" in opts.modes:
                wait_quiet(opts.quiet_wait)
                r = subprocess.run([floor_bin, "--mib", "32" if opts.quick else "256",
                                    "--runs", "3" if opts.quick else "5"],
                                   capture_output=True, text=True, timeout=600)
                line, fields = parse_result(r.stdout)
                if r.returncode != 0 or fields is None:
                    log("bench: floor failed (exit %d): %s %s"
                        % (r.returncode, r.stdout.strip(), r.stderr.strip()[-500:]))
                    failures.append("floor: exit %d" % r.returncode)
                else:
                    floors.append(fields["cpu_s_per_gib"])
                    raw.append(line)
                    log("  " + line)
            for mode, mode_peers, args in plan(opts):
                if mode not in opts.modes:
                    continue
                k = rnd % len(mode_peers)
                for peer in mode_peers[k:] + mode_peers[:k]:
                    measure(mode, peer, args())
            if "direct" in opts.modes:
                measure("noop", "direct", ["noop", "--plain", "--seconds", str(opts.seconds)])
        if not sink.alive():
            log("bench: the sink died:\n%s" % sink.tail())
        sink.stop()

        tab, extra = table(results, opts, floors)
        cmd = "bench/run.py " + " ".join(sys.argv[1:])
        print()
        print("Machine: %s" % machine())
        print("Peers: %s" % "; ".join(vers[p] for p in ALL_PEERS))
        print("Run: %s (%d round%s, %g s per mode, %d idle sessions, %d realistic sessions "
              "for %g s); medians"
              % (cmd.strip(), opts.rounds, "s" if opts.rounds > 1 else "", opts.seconds,
                 opts.idle, opts.sessions, opts.real_seconds))
        print()
        print(tab)
        print()
        for e in extra:
            print("* " + e)
        foreign = [r["foreign_cpu_pct"] for rs in results.values() for r in rs
                   if isinstance(r.get("foreign_cpu_pct"), float)]
        if foreign:
            print("* other processes on the machine during the measurements: median %.0f%%, "
                  "at most %.0f%% of one core" % (statistics.median(foreign), max(foreign)))
        sys.stdout.flush()
        if opts.json:
            with open(opts.json, "w") as f:
                json.dump({"machine": machine(), "versions": vers, "command": cmd,
                           "results": raw,
                           "medians": {"%s/%s" % k: {f: median([r.get(f) for r in v])
                                                     for f in v[0] if isinstance(v[0][f], float)}
                                       for k, v in results.items()}}, f, indent=1)
        missing = [m for m, ps, _ in plan(opts) if m in opts.modes
                   for p in ps if (m, p) not in results]
        if missing:
            log("bench: no result for %d measurement(s); see the messages above" % len(missing))
            return 1
        if failures:
            # A relay that lost or changed bytes does not get a figure.
            log("bench: FAILED checks (corrupt APPEND, wrong FETCH body, lost session): %s"
                % ", ".join(failures))
            return 1
        return 0
    finally:
        stop_all()
        if opts.keep:
            log("bench: configs and logs kept in %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    def on_term(sig, frame):
        stop_all()
        sys.exit(128 + sig)
    signal.signal(signal.SIGTERM, on_term)
    sys.exit(main())
