"""Attacks from outside on three new features, as a guesser or an unlucky
operator would make them: the login throttle's Redis store ([login] store),
the route map ([route] map) and the login health check ([backend] check =
login). Each test states what a user would check: logins answered at once
and never refused because of the store, Redis holding nothing secret, the
last good route map kept with FILE:LINE logged, a check that fails or
passes correctly within check_timeout and never leaks its password. Tests
that found a defect live in attack3_failing.py (not collected)."""

import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

import imapfront_harness as h
import ops_support as ops
from test_gate import backend_rows, tls_session
from test_login_store import REDIS, REDIS_CLI, Redis, store_up

PASSWORD = "Att4ck3-Guess-Not-Stored"
THROTTLED = b"NO [AUTHENTICATIONFAILED] Authentication failed"
KEY_RE = re.compile(r"^imapfront:login:[0-9a-f]{64}$")
FAST = 0.45  # below delay_max = 500ms: an answer that was not delayed

need_redis = pytest.mark.skipif(not (os.access(REDIS, os.X_OK) and os.access(REDIS_CLI, os.X_OK)),
                                reason="redis-server and redis-cli are not installed")


@pytest.fixture
def redis(workdir):
    started = []

    def start():
        r = Redis(workdir)
        started.append(r)
        return r

    yield start
    for r in started:
        r.kill()


def replica(proxy_factory, port, store, workers=1):
    p = ops.start_proxy(proxy_factory, port,
                        extra={"login": {"store": store, "delay_max": "500ms"},
                               "proxy": {"workers": str(workers)}})
    return p


def auth_lines_at_backend(emu):
    """LOGIN and AUTHENTICATE commands the backend framed."""
    return [r["line"] for r in backend_rows(emu, 0)
            if "line" in r and re.match(r"^\S+ (LOGIN|AUTHENTICATE) ", r["line"], re.I)]


def attempt(proxy, ctx, command):
    """One command in a fresh session; (tagged answer, seconds)."""
    c = tls_session(proxy.port, ctx)
    t0 = time.monotonic()
    try:
        _, tagged = c.command("G", command, timeout=10)
    finally:
        took = time.monotonic() - t0
        c.close()
    return tagged, took


def good_login_is_prompt(proxy, ctx, source="127.0.0.9"):
    c = h.TLSClient(proxy.port, ctx, source=source)
    c.read_line()
    t0 = time.monotonic()
    _, ok = c.command("L", "LOGIN demo demo", timeout=10)
    took = time.monotonic() - t0
    c.close()
    assert ok.startswith(b"L OK"), ok
    assert took < FAST, took


# ------------------------------------------------------------ Redis store ----

@need_redis
def test_case_variants_over_two_replicas_get_no_more_guesses(proxy_factory, emulator_factory,
                                                             redis, ctx):
    """Guesses alternate between two replicas sharing one Redis, the user
    name in three cases: the backend sees at most fail_ban = 6 of them and
    the rest are refused by the proxy itself."""
    r = redis()
    emu = emulator_factory(record=True)
    a = replica(proxy_factory, emu.plain_port, r.url, workers=2)
    b = replica(proxy_factory, emu.plain_port, r.url, workers=2)
    store_up(a)
    store_up(b)
    names = ["demo", "DEMO", "Demo", "dEmO"]
    answers = []
    for i in range(10):
        p = (a, b)[i % 2]
        tagged, _ = attempt(p, ctx, "LOGIN %s %s%d" % (names[i % 4], PASSWORD, i))
        answers.append(tagged)
        assert b" NO " in tagged, tagged
        # Each replica learns of the other's failure through the channel:
        # wait for the key to be in Redis (the announcement goes with it).
        h.wait_until(lambda: len(r.keys()) >= 1, 5, "a failure counted in Redis")
    sent = auth_lines_at_backend(emu)
    assert len(sent) <= 6, sent
    assert THROTTLED in answers[-1], answers
    # AUTHENTICATE PLAIN (initial response) for the banned user, another
    # case, on the other replica: refused, its credentials never sent on.
    creds = __import__("base64").b64encode(b"\0DeMo\0" + PASSWORD.encode() + b"x").decode()
    tagged, _ = attempt(a, ctx, "AUTHENTICATE PLAIN " + creds)
    assert tagged.startswith(b"G NO"), tagged
    assert not any(creds in r.get("line", "") for r in backend_rows(emu, 0))
    for p in (a, b):
        p.check_alive()
        assert PASSWORD not in p.log.text()


@need_redis
def test_parallel_burst_over_two_replicas(proxy_factory, emulator_factory, redis, ctx):
    """After one shared failure, ten sessions at once on each of two
    replicas: attempts in progress count on each replica, so at most
    fail_ban - 1 = 5 more guesses per replica reach the backend."""
    r = redis()
    emu = emulator_factory(record=True)
    a = replica(proxy_factory, emu.plain_port, r.url)
    b = replica(proxy_factory, emu.plain_port, r.url)
    store_up(a)
    store_up(b)
    attempt(a, ctx, "LOGIN demo %s-first" % PASSWORD)
    ops.wait_metrics(b, lambda m: m.get("imapfront_login_tracked", default=0) >= 1,
                     what="B tracks A's failure")
    clients = []
    for i in range(20):
        c = tls_session((a, b)[i % 2].port, ctx)
        clients.append(c)
    for i, c in enumerate(clients):
        c.write(b"P%d LOGIN demo %s-p%d\r\n" % (i, PASSWORD.encode(), i))
    for i, c in enumerate(clients):
        line = c.read_until_tagged("P%d" % i, timeout=20)[-1]
        assert b" NO " in line, line
        c.close()
    sent = auth_lines_at_backend(emu)
    assert len(sent) <= 1 + 5 + 5, sent
    for p in (a, b):
        p.check_alive()


@need_redis
def test_hostile_user_names_make_only_hashed_keys(proxy_factory, emulator_factory, redis, ctx):
    """User names with Redis syntax, CRLF, 8-bit octets, 300 octets: every
    session is answered, the proxy lives, and Redis holds only
    imapfront:login:<64 hex> counters, none holding the name or password."""
    r = redis()
    emu = emulator_factory(record=True)
    p = replica(proxy_factory, emu.plain_port, r.url)
    store_up(p)
    users = [b'"a b*c{x}"', b'"*"', b"{8}\r\nde\r\nmo\r\n", b"{6}\r\nd\xe9mo\x00\x01",
             b"{300}\r\n" + b"u" * 300, b'"imapfront:login:*"', b'"$3\\r\\nSET"']
    for i, user in enumerate(users):
        c = tls_session(p.port, ctx)
        # A literal needs the server's "+" unless LITERAL+; send as
        # synchronising literals after each "+".
        parts = re.split(rb"(\{\d+\}\r\n)", b"G%d LOGIN " % i + user + b" " +
                         (PASSWORD + str(i)).encode() + b"\r\n")
        c.write(parts[0] + (parts[1] if len(parts) > 1 else b""))
        if len(parts) > 1:
            cont = c.read_line(timeout=5)
            assert cont.startswith(b"+"), (user, cont)
            c.write(b"".join(parts[2:]))
        line = c.read_line(timeout=10)
        while line.startswith(b"* "):
            line = c.read_line(timeout=10)
        assert line.startswith(b"G%d NO" % i) or line.startswith(b"G%d BAD" % i), (user, line)
        c.close()
        p.check_alive()
    h.wait_until(lambda: len(r.keys()) >= 2, 5, "failures counted in Redis")
    for k in r.keys():
        assert KEY_RE.match(k), k
        v = r.cli("GET", k)
        assert re.fullmatch(r"\d+", v), (k, v)
        for secret in ("a b", "demo", "uuuu", PASSWORD, "SET"):
            assert secret not in v and secret not in k
    assert PASSWORD not in p.log.text()
    good_login_is_prompt(p, ctx)


@need_redis
@pytest.mark.parametrize("hostile", [
    ["SET", "{k}", "-1"], ["SET", "{k}", "99999999999999999999999"], ["SET", "{k}", "abc"],
    ["SET", "{k}", ""], ["HSET", "{k}", "f", "1"], ["RPUSH", "{k}", "1", "2"],
    ["SADD", "{k}", "x"],
], ids=["minus_one", "overflow", "text", "empty", "hash", "list", "set"])
def test_hostile_values_under_the_keys(proxy_factory, emulator_factory, redis, ctx, hostile):
    """Someone writes garbage or another type under imapfront's keys: the
    proxy lives, a guess is answered at once by the backend (not refused),
    and the owner's login from another address goes through at once."""
    r = redis()
    emu = emulator_factory(record=True)
    p = replica(proxy_factory, emu.plain_port, r.url)
    store_up(p)
    tagged, _ = attempt(p, ctx, "LOGIN demo %s0" % PASSWORD)
    assert b" NO " in tagged
    h.wait_until(lambda: len(r.keys()) >= 2, 5, "the failure counted in Redis")
    for k in r.keys():
        r.cli("DEL", k)
        r.cli(*[k if x == "{k}" else x for x in hostile])
    before = len(auth_lines_at_backend(emu))
    tagged, took = attempt(p, ctx, "LOGIN demo %s1" % PASSWORD)
    assert b" NO " in tagged and THROTTLED not in tagged, tagged
    assert took < FAST, took
    assert len(auth_lines_at_backend(emu)) == before + 1
    p.check_alive()
    good_login_is_prompt(p, ctx)
    good_login_is_prompt(p, ctx, source="127.0.0.1")
    p.check_alive()
    assert PASSWORD not in p.log.text()


def fake_store(reply):
    """A TCP server on 127.0.0.1 that answers whatever it reads with
    reply(n) (n: replies sent so far on that connection; None to stop)."""
    def serve(conn):
        n = 0
        conn.settimeout(0.5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                data = conn.recv(65536)
            except socket.timeout:
                continue
            if not data:
                return
            out = reply(n)
            n += 1
            if out is None:
                continue
            try:
                conn.sendall(out)
            except OSError:
                return
    return h.FakeBackend(serve, accept_timeout=60)


HUGE = b"x" * (1 << 20)


def stream_huge(n):
    return (b"$2147483647\r\n" if n == 0 else b"") + HUGE if n < 16 else None


GARBAGE = {
    "nonsense": lambda n: b"HELLO I AM NOT REDIS\r\n\x00\xff\r\n",
    "huge_bulk": stream_huge,
    "deep_nesting": lambda n: b"*1\r\n" * 200000 if n == 0 else None,
    "negative_lengths": lambda n: b"$-7\r\n*-9\r\n$-1\r\n:abc\r\n+OK\r\n",
    "error_replies": lambda n: b"-ERR nope\r\n" * 4,
}


@need_redis
@pytest.mark.parametrize("mode", sorted(GARBAGE))
def test_garbage_speaking_store(proxy_factory, emulator_factory, ctx, mode):
    """A fake server on the store's port speaks nonsense, announces a huge
    bulk string, nests arrays 200000 deep: the proxy lives, answers
    guesses and the owner's login at once, says the store is down (within
    its one-second reply timeout, plus slack) and its memory stays
    bounded."""
    fake = fake_store(GARBAGE[mode])
    emu = emulator_factory(record=True)
    try:
        p = replica(proxy_factory, emu.plain_port, "redis://127.0.0.1:%d" % fake.port)
        h.wait_until(lambda: len(fake.conns) >= 1, 5, "the proxy connecting to the store")
        for i in range(3):
            tagged, took = attempt(p, ctx, "LOGIN demo %s%d" % (PASSWORD, i))
            assert b" NO " in tagged and THROTTLED not in tagged, tagged
            assert took < FAST, took
        good_login_is_prompt(p, ctx)
        store_up(p, 0, timeout=5)
        good_login_is_prompt(p, ctx)
        p.check_alive()
        assert p.rss_kib() < 200 * 1024, p.rss_kib()
        assert PASSWORD not in p.log.text()
    finally:
        fake.stop()


@need_redis
@pytest.mark.parametrize("how", ["kill", "stop"])
def test_redis_lost_during_a_burst(proxy_factory, emulator_factory, redis, ctx, how):
    """Redis is killed (or stopped: SIGSTOP) while eight sessions log in at
    once: each is answered within delay_max plus slack, the proxy lives and
    says the store is down."""
    r = redis()
    emu = emulator_factory(record=True)
    p = replica(proxy_factory, emu.plain_port, r.url, workers=2)
    store_up(p)
    results = []

    def one(i):
        try:
            results.append(attempt(p, ctx, "LOGIN demo %s%d" % (PASSWORD, i)))
        except Exception as e:  # noqa: BLE001 - reported below
            results.append((repr(e).encode(), 99))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    if how == "kill":
        r.kill()
    else:
        os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        for t in threads:
            t.join(20)
        check_burst(p, ctx, r, results)
    finally:
        if how == "stop":
            os.kill(r.proc.pid, signal.SIGCONT)
    if how == "stop":
        store_up(p, 1)


def check_burst(p, ctx, r, results):
    assert len(results) == 8
    for tagged, took in results:
        assert b" NO " in tagged, tagged
        assert took < 1.0 + 1.0, (tagged, took)  # a delay is at most delay_max (+ a busy machine)
    store_up(p, 0)
    p.check_alive()
    good_login_is_prompt(p, ctx)


# -------------------------------------------------------------- route map ----

SETTLE = 1.0


def loaded(path):
    return r"\binfo route: route map %s: (\d+) entries$" % re.escape(path)


def map_text(n, eol="\n"):
    return "".join("user%d@example.org default%s" % (i, eol) for i in range(n))


def write(path, data):
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def check_ini(tmp_path, cert, path):
    ini = str(tmp_path / "proxy.ini")
    write(ini, h.render_ini({
        "proxy": {"workers": "1"},
        "listen.imaps": {"address": "127.0.0.1:0"},
        "tls": {"certificate": cert[0], "private_key": cert[1]},
        "backend": {"servers": "127.0.0.1:1"},
        "route": {"map": path},
    }))
    return ini


def check(ini, timeout=30):
    return subprocess.run([h.BIN, "-t", "-c", ini], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def test_case_twins_in_the_map(need_bin, cert, tmp_path):
    """With ignore_case on (the default), Alice@ and alice@ are one user:
    twice with the same pool is one entry, with different pools an error
    naming the second line."""
    path = str(tmp_path / "route.map")
    write(path, b"Alice@example.org default\nalice@example.org default\n")
    r = check(check_ini(tmp_path, cert, path))
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "route map %s: 1 entries" % path in r.stdout, r.stdout
    write(path, b"Alice@example.org default\nalice@example.org new\n")
    ini = str(tmp_path / "proxy.ini")
    with open(ini, "a") as f:
        f.write("\n[backend.new]\nservers = 127.0.0.1:2\n")
    r = check(ini)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith(path + ":2: "), r.stderr
    assert "already routed to pool default" in r.stderr, r.stderr


def test_check_crlf_map(need_bin, cert, tmp_path):
    path = str(tmp_path / "route.map")
    write(path, map_text(4, "\r\n"))
    r = check(check_ini(tmp_path, cert, path))
    assert r.returncode == 0, r.stderr
    assert "route map %s: 4 entries\n" % path in r.stdout


@pytest.mark.parametrize("data,line", [
    (b"alice@example.org default\nbo\x00b@example.org default\n", 2),
    (b"alice@example.org defa\x00ult\n", 1),
    (b"alice@example.org default\r\r\n", 1),
    (b"a\rb@example.org default\n", 1),
    (b"u" * 256 + b" default\n", 1),
    (b"alice@example.org " + b"p" * 64 + b"\n", 1),
], ids=["nul_in_user", "nul_in_pool", "bare_cr", "cr_in_user", "user_256", "pool_64"])
def test_check_bad_bytes_name_the_line(need_bin, cert, tmp_path, data, line):
    path = str(tmp_path / "route.map")
    write(path, data)
    r = check(check_ini(tmp_path, cert, path))
    assert r.returncode == 1, (r.returncode, r.stdout)
    assert r.stderr.startswith("%s:%d: " % (path, line)), r.stderr


def test_check_50mb_line(need_bin, cert, tmp_path):
    path = str(tmp_path / "route.map")
    with open(path, "wb") as f:
        f.write(b"x" * (50 << 20) + b" default\n")
    t0 = time.monotonic()
    r = check(check_ini(tmp_path, cert, path))
    assert r.returncode == 1, r.stdout
    assert r.stderr.startswith("%s:1: " % path), r.stderr[:300]
    assert len(r.stderr) < 1000, len(r.stderr)  # the line is not echoed
    assert time.monotonic() - t0 < 20


def test_check_dev_zero_and_directory(need_bin, cert, tmp_path):
    for path in ("/dev/zero", str(tmp_path)):
        r = check(check_ini(tmp_path, cert, path), timeout=30)
        assert r.returncode == 1, (path, r.stdout)
        assert r.stderr.startswith(path + ":"), r.stderr[:300]


def serving(proxy, ctx):
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
        c.command("Z", "LOGOUT")


def test_running_map_survives_hostile_rewrites(workdir, emulator, proxy_factory, tmp_path, ctx):
    """A served map is rewritten with a NUL, a 50 MB line, deleted, and
    rewritten 100 times quickly: each bad version is logged FILE:LINE, the
    proxy keeps serving, and the last version is the one loaded."""
    path = str(tmp_path / "route.map")
    write(path, map_text(2))
    # [route] default: with routing configured sessions are login-first,
    # and serving() logs in as demo, whom map_text() does not name.
    proxy = proxy_factory(emulator.plain_port,
                          extra={"route": {"map": path, "default": "default"}})
    alive = proxy.check_alive
    proxy.log.wait_for(loaded(path), alive=alive)
    failed = r"\berror route: %s:(\d+): .*; the running route map stays$" % re.escape(path)

    mark = proxy.log.mark()
    write(path, b"alice@example.org default\nbo\x00b@example.org default\n")
    m = proxy.log.wait_for(failed, since=mark, timeout=SETTLE + 10, alive=alive)
    assert m.group(1) == "2"
    serving(proxy, ctx)

    mark = proxy.log.mark()
    tmp = path + ".new"
    with open(tmp, "wb") as f:
        f.write(b"y" * (50 << 20) + b" default\n")
    os.replace(tmp, path)
    m = proxy.log.wait_for(failed, since=mark, timeout=SETTLE + 20, alive=alive)
    assert m.group(1) == "1"
    assert max(len(x) for x in proxy.log.lines(since=mark)) < 2000
    serving(proxy, ctx)

    os.unlink(path)
    serving(proxy, ctx)
    mark = proxy.log.mark()
    write(path, map_text(3))
    m = proxy.log.wait_for(loaded(path), since=mark, timeout=SETTLE + 10, alive=alive)
    assert m.group(1) == "3"

    mark = proxy.log.mark()
    for i in range(100):
        write(path, map_text(1 + i % 7))
    write(path, map_text(11))
    h.wait_until(lambda: [x.group(1) for x in proxy.log.find(loaded(path), since=mark)][-1:]
                 == ["11"], SETTLE + 10, "the last version loaded")
    serving(proxy, ctx)
    alive()


def test_symlink_swapped_to_another_file(workdir, emulator, proxy_factory, tmp_path, ctx):
    """The map is a symlink; the link is swapped (renamed into place) to
    point at another file: the new target is loaded."""
    a, b = str(tmp_path / "a.map"), str(tmp_path / "b.map")
    link = str(tmp_path / "route.map")
    write(a, map_text(2))
    write(b, map_text(5))
    os.symlink(a, link)
    proxy = proxy_factory(emulator.plain_port,
                          extra={"route": {"map": link, "default": "default"}})  # see above
    m = proxy.log.wait_for(loaded(link), alive=proxy.check_alive)
    assert m.group(1) == "2"
    mark = proxy.log.mark()
    os.symlink(b, link + ".new")
    os.replace(link + ".new", link)
    m = proxy.log.wait_for(loaded(link), since=mark, timeout=SETTLE + 10, alive=proxy.check_alive)
    assert m.group(1) == "5"
    serving(proxy, ctx)


# ---------------------------------------------------------- health checks ----

CHECK_PW = "Chk-Pw-9\"q\\b"
CREDS = __import__("base64").b64encode(b"\0svc\0" + CHECK_PW.encode())


class RawBackend:
    """A plain backend played by script(self, conn, tag, verb) for each
    command line; every octet received is kept in .received, and the
    moment a connection was found closed by the proxy in .closed_at."""

    def __init__(self, greeting, script):
        self.greeting = greeting
        self.script = script
        self.received = b""
        self.lines = []
        self.closed_at = []
        self.ended = 0  # connections whose script is over (all octets read)
        self.lock = threading.Lock()
        self.fake = h.FakeBackend(self._serve, accept_timeout=120)
        self.port = self.fake.port

    def _serve(self, conn):
        try:
            self._script(conn)
        finally:
            with self.lock:
                self.ended += 1

    def _script(self, conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(self.greeting)
        while not self.fake.stopping.is_set():
            line = h.recv_line(conn)
            if not line:
                return
            with self.lock:
                self.received += line
                self.lines.append(line)
            tag, _, rest = line.decode("ascii", "replace").partition(" ")
            verb = rest.split(" ", 1)[0].strip().upper()
            if verb == "LOGOUT":
                conn.sendall(b"* BYE bye\r\n%s OK LOGOUT done\r\n" % tag.encode())
                return
            if self.script(self, conn, tag.encode(), verb) == "stop":
                return

    def stream(self, conn, first, chunk, seconds=15):
        """Sends first, then chunk repeatedly until the proxy closes the
        connection (its time kept) or seconds pass."""
        deadline = time.monotonic() + seconds
        try:
            conn.sendall(first)
            while time.monotonic() < deadline and not self.fake.stopping.is_set():
                conn.sendall(chunk)
        except OSError:
            self.closed_at.append(time.monotonic())
        return "stop"

    def verbs(self):
        with self.lock:
            return [ln.split(b" ")[1].strip().upper() for ln in self.lines if b" " in ln]

    def stop(self):
        self.fake.stop()


@pytest.fixture
def raw():
    yield from h.stopping(RawBackend)


def login_checks(port, **more):
    section = {"servers": ops.addr(port), "balance": "first", "check": "login",
               "check_interval": "200ms", "check_timeout": "600ms", "down_after": "1",
               "check_user": "svc", "check_password": CHECK_PW, "check_mailbox": "Canary"}
    section.update(more)
    return {"backend": section}


FAILED = r"\bwarn backend: server failed its check, out of rotation backend=%s step=(\S+) " \
         r"reason=\"(.*)\"$"


def ok(b, conn, tag, verb):
    conn.sendall(b"%s OK %s done\r\n" % (tag, verb.encode()))


def passes(proxy, port, n=2):
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_checks_total",
                                              server=ops.addr(port), result="ok") >= n,
                     timeout=10, what="%d passing checks" % n)
    proxy.check_alive()


def fails(proxy, port):
    m = proxy.log.wait_for(FAILED % re.escape(ops.addr(port)), timeout=10,
                           alive=proxy.check_alive)
    return m.group(1), m.group(2)


def no_secret_leak(proxy, b):
    assert CHECK_PW not in proxy.log.text()
    assert "Chk-Pw" not in proxy.log.text()
    with b.lock:
        for ln in b.lines:
            if b"Chk-Pw" in ln or CREDS in ln:
                assert re.match(rb"^\S+ LOGIN ", ln) or ln.strip() == CREDS, ln


GREET = b"* OK [CAPABILITY IMAP4rev1] scripted ready\r\n"


def test_check_literals_split_at_odd_places(raw, proxy_factory):
    """Before each answer an untagged response with a literal arrives in
    pieces cut inside "{12}", between CR and LF, inside the literal and
    inside the tagged line: the check reads it right and passes."""
    def script(b, conn, tag, verb):
        lit = tag + b" NO fake\r\n"
        n = b"%d" % len(lit)
        pieces = [b"* 1 FETCH (BODY[] {" + n[:1], n[1:] + b"}\r", b"\n" + lit[:5], lit[5:-1],
                  lit[-1:] + b")\r", b"\n" + tag[:3], tag[3:] + b" O",
                  b"K " + verb.encode() + b" done\r", b"\n"]
        for p in pieces:
            conn.sendall(p)
            time.sleep(0.005)  # separate segments: no event marks "the proxy read it"
    b = raw(GREET, script)
    proxy = ops.start_proxy(proxy_factory, b.port, extra=login_checks(b.port))
    passes(proxy, b.port)
    assert "failed its check" not in proxy.log.text()
    no_secret_leak(proxy, b)


def test_check_unexpected_continuation(raw, proxy_factory):
    """A "+" answers LOGIN (which asked for none), then the OK: nothing but
    the check's own commands is sent, the password only in LOGIN."""
    def script(b, conn, tag, verb):
        if verb == "LOGIN":
            conn.sendall(b"+ send more\r\n")
        ok(b, conn, tag, verb)
    b = raw(GREET, script)
    proxy = ops.start_proxy(proxy_factory, b.port, extra=login_checks(b.port))
    h.wait_until(lambda: b.verbs().count(b"LOGOUT") >= 2 or
                 proxy.log.find(FAILED % re.escape(ops.addr(b.port))), 10,
                 "two checks through, or a failed check")
    assert set(b.verbs()) <= {b"LOGIN", b"EXAMINE", b"NOOP", b"LOGOUT"}, b.lines
    no_secret_leak(proxy, b)
    proxy.check_alive()


@pytest.mark.parametrize("first,chunk", [
    (b"", b"* OK noise\r\n" * 4096),
    (b"* 1 FETCH (BODY[] {4294967296}\r\n", b"x" * 65536),
    (b"* 1 FETCH (BODY[] {99999999999999999999}\r\n", b"x" * 65536),
    (b"* OK ", b"y" * 65536),
], ids=["endless_untagged", "literal_4g", "literal_20_digits", "endless_line"])
def test_check_flood_fails_within_timeout(raw, proxy_factory, first, chunk):
    """Answering LOGIN with an endless untagged stream, an enormous literal
    or an endless line: the check fails and closes the connection within
    check_timeout (600ms, plus slack), the proxy lives, memory bounded."""
    t_login = []

    def script(b, conn, tag, verb):
        if verb != "LOGIN":
            return ok(b, conn, tag, verb)
        t_login.append(time.monotonic())
        return b.stream(conn, first, chunk)
    b = raw(GREET, script)
    proxy = ops.start_proxy(proxy_factory, b.port, extra=login_checks(b.port))
    step, reason = fails(proxy, b.port)
    assert step == "LOGIN", (step, reason)
    h.wait_until(lambda: b.closed_at, 5, "the check connection closed by the proxy")
    assert b.closed_at[0] - t_login[0] < 0.6 + 0.5, b.closed_at[0] - t_login[0]
    proxy.check_alive()
    assert proxy.rss_kib() < 200 * 1024
    assert b"EXAMINE" not in b.verbs()


def test_check_capability_late_logindisabled(raw, proxy_factory):
    """A greeting without capabilities; CAPABILITY then says LOGINDISABLED
    and no AUTH=PLAIN: no LOGIN and no AUTHENTICATE, the check fails."""
    def script(b, conn, tag, verb):
        if verb == "CAPABILITY":
            conn.sendall(b"* CAPABILITY IMAP4rev1 LOGINDISABLED\r\n%s OK done\r\n" % tag)
        else:
            ok(b, conn, tag, verb)
    b = raw(b"* OK ready\r\n", script)
    proxy = ops.start_proxy(proxy_factory, b.port, extra=login_checks(b.port))
    step, reason = fails(proxy, b.port)
    assert "LOGINDISABLED" in reason, reason
    h.wait_until(lambda: b.ended >= 1, 5, "the first check's connection read to its end")
    assert b.verbs()[0] == b"CAPABILITY"
    assert b"LOGIN" not in b.verbs() and b"AUTHENTICATE" not in b.verbs(), b.lines
    assert b"Chk-Pw" not in b.received and CREDS not in b.received


def test_check_plain_without_continuation_never_sends_credentials(raw, proxy_factory):
    """AUTH=PLAIN without SASL-IR, learned from a late CAPABILITY; AUTHENTICATE
    gets untagged noise and a tagged NO, never its own "+": the credentials are
    never sent and the check fails."""
    def script(b, conn, tag, verb):
        if verb == "CAPABILITY":
            conn.sendall(b"* CAPABILITY IMAP4rev1 LOGINDISABLED AUTH=PLAIN\r\n%s OK done\r\n"
                         % tag)
        elif verb == "AUTHENTICATE":
            conn.sendall(b"* OK thinking\r\n%s NO not today\r\n" % tag)
        else:
            ok(b, conn, tag, verb)
    b = raw(b"* OK ready\r\n", script)
    proxy = ops.start_proxy(proxy_factory, b.port, extra=login_checks(b.port))
    fails(proxy, b.port)
    h.wait_until(lambda: b.ended >= 1, 5, "the first check's connection read to its end")
    assert CREDS not in b.received, b.lines
    assert b"Chk-Pw" not in b.received, b.lines
    assert b"LOGIN" not in b.verbs()
    proxy.check_alive()


@pytest.mark.parametrize("wrong", ["other", "prefix", "longer", "star"])
def test_check_tagged_ok_for_a_wrong_tag(raw, proxy_factory, wrong):
    """LOGIN is answered by a tagged OK with another tag (a different one,
    the tag less its last character, the tag plus a digit, "*"): it is not
    LOGIN's answer; the check fails on LOGIN without going on."""
    def script(b, conn, tag, verb):
        if verb == "LOGIN":
            t = {"other": b"x999", "prefix": tag[:-1], "longer": tag + b"0",
                 "star": b"*"}[wrong]
            conn.sendall(b"%s OK LOGIN done\r\n" % t)
        else:
            ok(b, conn, tag, verb)
    b = raw(GREET, script)
    proxy = ops.start_proxy(proxy_factory, b.port, extra=login_checks(b.port))
    step, reason = fails(proxy, b.port)
    assert step == "LOGIN", (step, reason)
    assert b"EXAMINE" not in b.verbs(), b.lines
    assert ops.scrape(proxy).value("imapfront_backend_up", server=ops.addr(b.port)) == 0
    no_secret_leak(proxy, b)


@pytest.mark.parametrize("data,rc,out", [
    (b"\xc3\x84lice@example.org default\n\xc3\xa4lice@example.org default\n", 0, "2 entries"),
    (b"Alice@example.org default\nalice@example.org\n", 1, ":2: "),
    (b"bob@a@b.example default\n*@b.example default\n", 0, "2 entries"),
], ids=["8bit_not_folded", "bad_second_line", "two_at_signs"])
def test_check_case_folding_of_map_names(need_bin, cert, tmp_path, data, rc, out):
    """ignore_case (on by default) folds ASCII letters only: two names
    that differ in an 8-bit octet's case are two entries; a pattern holds
    the part after the last "@"."""
    path = str(tmp_path / "route.map")
    write(path, data)
    r = check(check_ini(tmp_path, cert, path))
    assert r.returncode == rc, (r.stdout, r.stderr)
    if rc:
        assert r.stderr.startswith(path + out), r.stderr
    else:
        assert "route map %s: %s\n" % (path, out) in r.stdout, r.stdout


@pytest.mark.parametrize("greeting", [
    b"* OK " + b"z" * (4 << 20),
    b"* BYE go away\r\n",
    b"HTTP/1.1 400 Bad Request\r\n\r\n",
], ids=["endless_greeting", "bye_greeting", "not_imap"])
def test_check_bad_greetings_fail_in_time(raw, proxy_factory, greeting):
    """A greeting that never ends, a BYE, an HTTP answer: the check fails at the greeting, within check_timeout, and
    sends no LOGIN."""
    b = raw(greeting, ok)
    proxy = ops.start_proxy(proxy_factory, b.port, extra=login_checks(b.port))
    step, reason = fails(proxy, b.port)
    assert step == "greeting", (step, reason)
    assert b"LOGIN" not in b.verbs() and b"Chk-Pw" not in b.received
    proxy.check_alive()
    assert proxy.rss_kib() < 200 * 1024


CHANNEL = "imapfront:login:0"  # seen with PUBSUB CHANNELS; messages "KEY COUNT TTL_MS"


def publish(r, body):
    """PUBLISH body (any octets, any size) on CHANNEL, in RESP over a
    socket of our own; returns Redis's answer line."""
    args = [b"PUBLISH", CHANNEL.encode(), body.encode("latin-1")]
    cmd = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
        s.sendall(cmd)
        answer = h.recv_line(s)
    assert answer.startswith(b":"), answer
    return answer


@need_redis
@pytest.mark.parametrize("body", [
    "{key} abc 600000", "{key} 0x10 600000",
    "{key} 1 -1", "{key} 1 abc", "{key} 1 99999999999999999999", "{key}", "{key} 1",
    "", "garbage", "imapfront:login:zz 1 600000", "imapfront:login:%s 1 600000" % ("0" * 70),
    "{key} 1 600000 extra words", "x" * (1 << 20), "{key}\x00 9 600000",
], ids=["count_text", "count_hex", "ttl_negative", "ttl_text",
        "ttl_overflow", "key_only", "no_ttl", "empty", "garbage", "bad_hex", "long_key",
        "extra_words", "one_mib", "nul"])
def test_hostile_announcements(proxy_factory, emulator_factory, redis, ctx, body):
    """Someone who can PUBLISH on imapfront's channel sends malformed
    announcements about the guesser's own records: the proxy lives, and
    the owner (same address, one failure so far) still logs in at once."""
    r = redis()
    emu = emulator_factory(record=True)
    p = replica(proxy_factory, emu.plain_port, r.url)
    store_up(p)
    assert r.cli("PUBSUB", "CHANNELS") == CHANNEL
    tagged, _ = attempt(p, ctx, "LOGIN demo %s0" % PASSWORD)
    assert b" NO " in tagged
    h.wait_until(lambda: len(r.keys()) >= 2, 5, "the failure counted in Redis")
    keys = sorted(r.keys())
    for k in keys:
        publish(r, body.replace("{key}", k))
    # A well-formed announcement for another address after them: once it
    # is tracked, the hostile ones were handled (a channel keeps order).
    other = keys[0].replace("7f000001", "7f000005")
    assert other != keys[0], keys
    tracked = ops.scrape(p).get("imapfront_login_tracked", default=0)
    r.cli("PUBLISH", CHANNEL, "%s 1 600000" % other)
    ops.wait_metrics(p, lambda m: m.get("imapfront_login_tracked", default=0) > tracked,
                     what="the sentinel announcement tracked")
    p.check_alive()
    good_login_is_prompt(p, ctx, source="127.0.0.1")
    assert p.rss_kib() < 200 * 1024


@pytest.mark.parametrize("pw", ["p\u00e4ss-W\u00f6rd", "pass\rword"], ids=["8bit", "cr"])
def test_check_password_a_quoted_string_cannot_carry(need_bin, cert, tmp_path, pw):
    """A check password with 8-bit octets or a CR cannot be sent quoted
    (and the check sends no literal): `imapfront -t` refuses it naming
    FILE:LINE and the key, without echoing the password."""
    ini = str(tmp_path / "proxy.ini")
    text = h.render_ini({
        "proxy": {"workers": "1"},
        "listen.imaps": {"address": "127.0.0.1:0"},
        "tls": {"certificate": cert[0], "private_key": cert[1]},
        "backend": {"servers": "127.0.0.1:1", "check": "login", "check_user": "svc",
                    "check_password": pw},
    })
    write(ini, text.encode("utf-8"))
    r = check(ini)
    assert r.returncode == 1, r.stdout
    line = text.split("\n").index("check_password = %s" % pw) + 1
    assert r.stderr.startswith("%s:%d: check_password: " % (ini, line)), r.stderr
    assert pw not in r.stderr and "ss-W" not in r.stderr and "pass\r" not in r.stderr


# Found failing by the attack and fixed since: each docstring says what it was.


@need_redis
def test_negative_value_under_a_key_bans_the_owner(proxy_factory, emulator_factory, redis,
                                                   ctx):
    """Input: one failed LOGIN demo from 127.0.0.1 (Redis gets its two
    imapfront:login:<hex> keys), then `SET <key> -5` on each key, then a
    second wrong guess and LOGIN demo demo (the right password) from
    127.0.0.1.
    Expected: two failures are below fail_free = 3; a garbage (negative)
    counter in the store must not refuse a login beyond the local verdict:
    L OK.
    Was: -4 read as a huge unsigned count, the owner banned. Now a count
    set below 1 in the store starts over at 1, and announcements take only
    plain decimal counts."""
    r = redis()
    emu = emulator_factory(record=True)
    p = replica(proxy_factory, emu.plain_port, r.url)
    store_up(p)
    tagged, _ = attempt(p, ctx, "LOGIN demo %s0" % PASSWORD)
    assert b" NO " in tagged
    h.wait_until(lambda: len(r.keys()) >= 2, 5, "the failure counted in Redis")
    for k in r.keys():
        r.cli("SET", k, "-5")
    tagged, took = attempt(p, ctx, "LOGIN demo %s1" % PASSWORD)
    assert b" NO " in tagged and THROTTLED not in tagged, tagged
    good_login_is_prompt(p, ctx, source="127.0.0.1")
    p.check_alive()



@need_redis
def test_store_answering_ok_to_everything_crashes_the_proxy(proxy_factory, emulator_factory,
                                                            ctx):
    """Input: `[login] store = redis://127.0.0.1:PORT` where PORT is a TCP
    server that answers every read with eight `+OK\\r\\n` (more replies
    than commands: what a confused proxy or a wrong service could send).
    Expected: the proxy lives, says the store is unusable, and answers
    logins as without a store.
    Was: SIGABRT (hiredis asserts on a reply no command asked for). Now
    the reader refuses replies nobody asked for and the store is dropped."""
    fake = fake_store(lambda n: b"+OK\r\n" * 8)
    emu = emulator_factory(record=True)
    try:
        p = replica(proxy_factory, emu.plain_port, "redis://127.0.0.1:%d" % fake.port)
        h.wait_until(lambda: len(fake.conns) >= 1, 5, "the proxy connecting to the store")
        tagged, took = attempt(p, ctx, "LOGIN demo %s0" % PASSWORD)
        assert b" NO " in tagged and took < FAST, (tagged, took)
        good_login_is_prompt(p, ctx)
        p.check_alive()
    finally:
        fake.stop()



@need_redis
def test_store_announcing_a_huge_array_stalls_the_proxy(proxy_factory, emulator_factory,
                                                        ctx):
    """Input: `[login] store = redis://127.0.0.1:PORT` where PORT is a TCP
    server that answers each of the first 16 reads with
    `*2147483647\r\n` and 1000 `:1\r\n` elements (an array of 2^31
    elements that never completes), then goes quiet.
    Expected: the reply is not complete within a second, so the store is
    declared unreachable (`login store unreachable`, metric 0); logins are
    answered at once throughout; memory bounded.
    Was: 100 % CPU and memory growing without bound. Now the reader
    refuses arrays and strings larger than any reply the proxy asks for."""
    fake = fake_store(lambda n: b"*2147483647\r\n" + b":1\r\n" * 1000 if n < 16 else None)
    emu = emulator_factory(record=True)
    try:
        p = replica(proxy_factory, emu.plain_port, "redis://127.0.0.1:%d" % fake.port)
        h.wait_until(lambda: len(fake.conns) >= 1, 5, "the proxy connecting to the store")
        tagged, took = attempt(p, ctx, "LOGIN demo %s0" % PASSWORD)
        assert b" NO " in tagged and took < FAST, (tagged, took)
        p.log.wait_for(r"\bwarn store: login store unreachable", timeout=5,
                       alive=p.check_alive)
        good_login_is_prompt(p, ctx)
        assert p.rss_kib() < 200 * 1024, p.rss_kib()
    finally:
        fake.stop()



def test_check_fifo_does_not_hang(need_bin, cert, tmp_path):
    """Input: `[route] map = X` where X is a FIFO nobody writes to;
    `imapfront -t -c proxy.ini`.
    Expected: exit status 1 within seconds and `X: ...` on stderr (not a
    regular file).
    Was: -t blocked in open(). Now the map is opened without blocking
    and a FIFO is refused as not a regular file."""
    path = str(tmp_path / "route.fifo")
    os.mkfifo(path)
    r = check(check_ini(tmp_path, cert, path), timeout=15)
    assert r.returncode == 1, r.stdout
    assert r.stderr.startswith(path + ":"), r.stderr



def test_sighup_to_a_fifo_map(workdir, emulator, proxy_factory, tmp_path, ctx):
    """Input: a running proxy with a good map; proxy.ini rewritten with
    `[route] map = FIFO` (no writer), SIGHUP; then proxy.ini back to a good
    4-entry map and SIGHUP again.
    Expected: `error route: FIFO: ...; the running route map stays`, then
    `route map GOOD: 4 entries`.
    Was: the reload blocked in open(). Fixed with the map's non-blocking open."""
    path = str(tmp_path / "route.map")
    write(path, map_text(2))
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port, extra={"route": {"map": path, "default": "default"}})
    proxy.log.wait_for(loaded(path), alive=proxy.check_alive)
    fifo = str(tmp_path / "route.fifo")
    os.mkfifo(fifo)
    ops.rewrite_ini(proxy, {"route": {"map": fifo, "default": "default"}})
    mark = proxy.log.mark()
    proxy.proc.send_signal(signal.SIGHUP)
    proxy.log.wait_for(ops.RELOADED, since=mark, timeout=10, alive=proxy.check_alive)
    serving(proxy, ctx)
    assert ops.http_get(proxy.admin, "/healthz").status == 200
    proxy.log.wait_for(r"\berror route: %s: " % re.escape(fifo), since=mark, timeout=10,
                       alive=proxy.check_alive)
    good = str(tmp_path / "good.map")
    write(good, map_text(4))
    ops.rewrite_ini(proxy, {"route": {"map": good, "default": "default"}})
    mark = proxy.log.mark()
    proxy.proc.send_signal(signal.SIGHUP)
    m = proxy.log.wait_for(loaded(good), since=mark, timeout=10, alive=proxy.check_alive)
    assert m.group(1) == "4"



def test_fifo_map_blocks_shutdown(workdir, emulator, proxy_factory, tmp_path, ctx):
    """Input: as test_sighup_to_a_fifo_map (SIGHUP with map = a FIFO
    without a writer), then SIGTERM.
    Expected: the proxy drains and exits (drain_timeout is 30 s by
    default; with no session open it exits at once).
    Was: SIGTERM ignored after the blocked reload. Fixed with the map's
    non-blocking open."""
    path = str(tmp_path / "route.map")
    write(path, map_text(2))
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port, extra={"route": {"map": path, "default": "default"}})
    proxy.log.wait_for(loaded(path), alive=proxy.check_alive)
    fifo = str(tmp_path / "route.fifo")
    os.mkfifo(fifo)
    ops.rewrite_ini(proxy, {"route": {"map": fifo, "default": "default"}})
    mark = proxy.log.mark()
    proxy.proc.send_signal(signal.SIGHUP)
    proxy.log.wait_for(ops.RELOADED, since=mark, timeout=10, alive=proxy.check_alive)
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(10) is not None  # exits: the reload no longer blocks



def test_fifo_renamed_over_the_watched_map(workdir, emulator, proxy_factory, tmp_path, ctx):
    """Input: a running proxy watching a good map; a FIFO (no writer) is
    renamed over the map file, as a mistaken deploy could do.
    Expected: `error route: MAP: ...; the running route map stays` and
    the proxy still answers SIGHUP (`configuration reloaded`).
    Was: the watcher's reload blocked. Fixed with the map's non-blocking open."""
    path = str(tmp_path / "route.map")
    write(path, map_text(2))
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port, extra={"route": {"map": path, "default": "default"}})
    proxy.log.wait_for(loaded(path), alive=proxy.check_alive)
    mark = proxy.log.mark()
    os.mkfifo(path + ".new")
    os.replace(path + ".new", path)
    proxy.log.wait_for(r"\berror route: %s: " % re.escape(path), since=mark, timeout=10,
                       alive=proxy.check_alive)
    serving(proxy, ctx)
    mark = proxy.log.mark()
    proxy.proc.send_signal(signal.SIGHUP)
    proxy.log.wait_for(ops.RELOADED, since=mark, timeout=10, alive=proxy.check_alive)



@need_redis
def test_negative_count_announced_bans_the_owner(proxy_factory, emulator_factory, redis, ctx):
    """Input: after one failed LOGIN demo from 127.0.0.1, `PUBLISH
    imapfront:login:0 "<key> -5 600000"` for each of the two keys it made
    (the announcement format is "KEY COUNT TTL_MS").
    Expected: a malformed (negative) count is ignored like `abc` or
    `0x10` are (test_attack3.py::test_hostile_announcements); the owner's
    LOGIN demo demo from 127.0.0.1 succeeds.
    Was: -5 (and counts past 2^64) read as huge counts. Now an
    announcement's count must be a plain decimal of at most 2^32 - 1, else
    it is ignored."""
    r = redis()
    emu = emulator_factory(record=True)
    p = replica(proxy_factory, emu.plain_port, r.url)
    store_up(p)
    tagged, _ = attempt(p, ctx, "LOGIN demo %s0" % PASSWORD)
    assert b" NO " in tagged
    h.wait_until(lambda: len(r.keys()) >= 2, 5, "the failure counted in Redis")
    keys = sorted(r.keys())
    for k in keys:
        publish(r, "%s -5 600000" % k)
    other = keys[0].replace("7f000001", "7f000005")
    tracked = ops.scrape(p).get("imapfront_login_tracked", default=0)
    publish(r, "%s 1 600000" % other)
    ops.wait_metrics(p, lambda m: m.get("imapfront_login_tracked", default=0) > tracked,
                     what="the sentinel announcement tracked")
    good_login_is_prompt(p, ctx, source="127.0.0.1")
