"""[login] store: replicas share the login throttle's counters in a real
redis-server (Debian's package). Two imapfront processes in front of one
emulator see each other's failures; a Redis that dies leaves the proxy
counting alone (logged once, shown in a metric) and is rejoined when it is
back; Redis holds no user name and no password."""

import os
import shutil
import signal
import subprocess
import time

import pytest

import imapfront_harness as h
import ops_support as ops
from test_config_cli import good_ini, line_of
from test_gate import tls_session
from test_logins import logins_at_backend

PASSWORD = "Wr0ngSecret-Do-Not-Store"
THROTTLED = b"NO [AUTHENTICATIONFAILED] Authentication failed"  # the proxy's own answer
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"

pytestmark = pytest.mark.skipif(not (os.access(REDIS, os.X_OK) and os.access(REDIS_CLI, os.X_OK)),
                                reason="redis-server and redis-cli are not installed "
                                       "(apt-get install redis-server)")


class Redis:
    """A redis-server on 127.0.0.1 at a free port that stays the same
    across kill() and start(); no persistence."""

    def __init__(self, workdir, port=None, password=None):
        self.port = port or h.free_port()
        self.password = password
        self.socket = None
        self.dir = os.path.join(workdir, "redis-%d" % self.port)
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None
        self.start()

    def start(self):
        log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir] +
            (["--requirepass", self.password] if self.password else []) +
            (["--unixsocket", self.socket, "--unixsocketperm", "700"] if self.socket else []),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        h.wait_until(lambda: self.proc.poll() is None and self.cli("PING") == "PONG", 10,
                     "redis-server answering PING on port %d" % self.port)

    def cli(self, *args, db=0):
        env = dict(os.environ, REDISCLI_AUTH=self.password) if self.password else None
        r = subprocess.run([REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port), "-n", str(db)] +
                           list(args), stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
                           env=env)
        return r.stdout.decode("utf-8", "replace").strip()

    def keys(self, db=0):
        out = self.cli("--scan", db=db)
        return [k for k in out.split("\n") if k]

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port


@pytest.fixture
def redis(workdir):
    started = []

    def start(port=None, password=None):
        r = Redis(workdir, port, password)
        started.append(r)
        return r

    yield start
    for r in started:
        r.kill()


def store_up(proxy, value=1, timeout=10.0):
    return ops.wait_metrics(proxy, lambda m: m.get("imapfront_login_store_up") == value,
                            timeout=timeout, what="imapfront_login_store_up == %d" % value)


def replica(proxy_factory, emu, store, login=None, workers=1):
    cfg = {"store": store, "delay_max": "500ms"}
    cfg.update(login or {})
    p = ops.start_proxy(proxy_factory, emu.plain_port,
                        extra={"login": cfg, "proxy": {"workers": str(workers)}})
    store_up(p)
    return p


def guess(proxy, ctx, n, source=None):
    """One failed LOGIN as demo; returns (tagged answer, seconds taken)."""
    c = h.TLSClient(proxy.port, ctx, source=source) if source else tls_session(proxy.port, ctx)
    if source:
        c.read_line()
    t0 = time.monotonic()
    _, tagged = c.command("G", "LOGIN demo %s%d" % (PASSWORD, n))
    took = time.monotonic() - t0
    c.close()
    return tagged, took


def test_two_replicas_share_failures_and_redis_holds_no_secret(proxy_factory, emulator_factory,
                                                              redis, ctx):
    r = redis()
    emu = emulator_factory(record=True)
    a = replica(proxy_factory, emu, r.url, workers=2)  # one subscriber, two connections
    b = replica(proxy_factory, emu, r.url)
    clients = r.cli("CLIENT", "LIST").split("\n")
    assert len(clients) == 2 + 1 + 2 + 1, clients  # A, B and redis-cli
    # fail_free = 3 through A, answered at once.
    for i in range(3):
        tagged, took = guess(a, ctx, i)
        assert b" NO " in tagged and THROTTLED not in tagged, tagged
        assert took < 0.45, took
    # B learns them (announced through Redis) ...
    ops.wait_metrics(b, lambda m: m.get("imapfront_login_tracked", default=0) >= 2,
                     what="B tracks A's failures")
    # ... so its first guess is already past fail_free: delayed.
    for i in range(3, 6):
        tagged, took = guess(b, ctx, i)
        assert b" NO " in tagged and THROTTLED not in tagged, tagged
        assert took >= 0.45, (i, took)
    # fail_ban = 6 reached over the two: A refuses without the backend.
    ops.wait_metrics(a, lambda m: m.get("imapfront_login_bans", default=0) >= 1,
                     what="A holds B's ban")
    tagged, _ = guess(a, ctx, 6)
    assert THROTTLED in tagged, tagged
    assert len(logins_at_backend(emu)) == 6, logins_at_backend(emu)
    a.log.wait_for(r"login: login failed result=throttled user=demo ", timeout=5)

    # Redis holds counters with an expiry, named by hashes: no user name
    # and no password, in a key or a value.
    keys = r.keys()
    assert len(keys) >= 2, keys
    for k in keys:
        value = r.cli("GET", k)
        assert int(value) >= 1, (k, value)
        assert int(r.cli("PTTL", k)) > 0, k
        for secret in ("demo", PASSWORD, PASSWORD.lower()):
            assert secret not in k and secret not in value, (k, value)
    for p in (a, b):
        assert PASSWORD not in "\n".join(p.log.lines())
        assert ops.scrape(p).value("imapfront_login_store_errors_total") == 0

    # The owner's success (from another address) clears its record in
    # Redis, never the guesser's.
    owner = h.TLSClient(b.port, ctx, source="127.0.0.2")
    owner.read_line()
    _, ok = owner.command("O", "LOGIN demo demo")
    assert ok.startswith(b"O OK"), ok
    owner.close()


def test_store_down_counts_locally_and_comes_back(proxy_factory, emulator_factory, redis, ctx):
    r = redis()
    emu = emulator_factory(record=True)
    p = replica(proxy_factory, emu, r.url)
    p.log.wait_for(r"store: login store connected", timeout=5)
    r.kill()
    m = store_up(p, 0)
    # Logins go on, answered at once; failures are still counted here.
    c = tls_session(p.port, ctx)
    t0 = time.monotonic()
    _, ok = c.command("L", "LOGIN demo demo")
    assert ok.startswith(b"L OK"), ok
    assert time.monotonic() - t0 < 0.45
    c.close()
    for i in range(6):
        tagged, _ = guess(p, ctx, i)
        assert b" NO " in tagged and THROTTLED not in tagged, tagged
    tagged, _ = guess(p, ctx, 6)
    assert THROTTLED in tagged, tagged
    # Retried with a backoff, each failure counted, logged once.
    ops.wait_metrics(p, lambda m: m.get("imapfront_login_store_errors_total", default=0) >= 4,
                     what="reconnects failing")
    down = [l for l in p.log.lines() if "login store unreachable" in l]
    assert len(down) == 1, down
    assert "store=%s" % r.url in down[0], down
    # Back: the metric says so, one line says so, and counting is shared again.
    r.start()
    store_up(p, 1)
    back = p.log.wait_for(r"store: login store reachable again", timeout=5)
    assert back is not None
    guess(p, ctx, 7, source="127.0.0.3")
    h.wait_until(lambda: len(r.keys()) >= 2, 5, "the failure counted in Redis")
    assert len([l for l in p.log.lines() if "login store unreachable" in l]) == 1


def test_sighup_with_another_store_reconnects(proxy_factory, emulator_factory, redis, ctx):
    r1, r2 = redis(), redis()
    emu = emulator_factory(record=True)
    p = replica(proxy_factory, emu, r1.url)
    ops.rewrite_ini(p, {"login": {"store": r2.url}})
    ops.sighup(p, r"store: login store changed: reconnecting to redis://127\.0\.0\.1:%d" % r2.port)
    store_up(p, 1)
    guess(p, ctx, 0)
    h.wait_until(lambda: len(r2.keys()) >= 2, 5, "the failure counted in the new store")
    assert r1.keys() == []


@pytest.mark.parametrize("value", ["redis:/x", "redis://127.0.0.1", "redis://127.0.0.1:0",
                                   "redis://127.0.0.1:6379/x", "127.0.0.1:6379"])
def test_bad_store_is_a_config_error(need_bin, cert, tmp_path, value):
    path = tmp_path / "bad.ini"
    text = good_ini(cert, "\n[login]\nstore = %s\n" % value)
    path.write_text(text)
    r = subprocess.run([h.BIN, "-t", "-c", str(path)], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r
    assert "bad.ini:%d: store: " % line_of(text, "store =") in r.stderr, r.stderr
    assert "is not redis://HOST:PORT" in r.stderr, r.stderr


def test_store_forms_are_accepted(need_bin, cert, tmp_path):
    for value in ("redis://127.0.0.1:6379", "redis://localhost:6379/2", "redis://[::1]:6379",
                  "unix:/run/redis/redis.sock"):
        path = tmp_path / "good.ini"
        path.write_text(good_ini(cert, "\n[login]\nstore = %s\n" % value))
        r = subprocess.run([h.BIN, "-t", "-c", str(path)], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, (value, r.stderr)


def test_store_that_stops_answering_is_dropped(proxy_factory, emulator_factory, redis, ctx):
    """A Redis that accepts but never answers (SIGSTOP): the awaited reply
    times out, the store is down; logins are answered meanwhile as
    without a store. SIGCONT: it is rejoined."""
    r = redis()
    emu = emulator_factory(record=True)
    p = replica(proxy_factory, emu, r.url)
    os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        tagged, took = guess(p, ctx, 0)
        assert b" NO " in tagged and THROTTLED not in tagged, tagged
        assert took < 0.45, took
        store_up(p, 0)
        p.log.wait_for(r"login store unreachable: .* reason=\"?no reply in time", timeout=5)
        c = tls_session(p.port, ctx)
        t0 = time.monotonic()
        _, ok = c.command("L", "LOGIN demo demo")
        assert ok.startswith(b"L OK") and time.monotonic() - t0 < 0.45, ok
        c.close()
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)
    store_up(p, 1)
    p.log.wait_for(r"store: login store reachable again", timeout=5)


def test_store_password_file_and_db(proxy_factory, emulator_factory, redis, ctx, tmp_path):
    secret = "Redis-Pass-Not-In-Logs"
    r = redis(password=secret)
    pw = tmp_path / "redis.pass"
    pw.write_text(secret + "\n")
    emu = emulator_factory(record=True)
    p = replica(proxy_factory, emu, r.url + "/3", {"store_password_file": str(pw)})
    guess(p, ctx, 0)
    h.wait_until(lambda: len(r.keys(db=3)) >= 2, 5, "the failure counted in DB 3")
    assert r.keys(db=0) == []
    # A wrong password: the store is refused, said once, and logins go on.
    ops.rewrite_ini(p, {"login": {"store_password": "Wrong-Redis-Pass-9", "store_password_file": ""}})
    ops.sighup(p, r"store: login store changed: reconnecting")
    store_up(p, 0)
    p.log.wait_for(r"login store unreachable: .* reason=\"AUTH or SELECT refused\"", timeout=5)
    tagged, _ = guess(p, ctx, 1)
    assert b" NO " in tagged and THROTTLED not in tagged, tagged
    text = "\n".join(p.log.lines())
    assert secret not in text and "Wrong-Redis-Pass-9" not in text


def test_unix_socket_store(proxy_factory, emulator_factory, redis, ctx, tmp_path):
    r = redis()
    r.kill()
    r.socket = str(tmp_path / "redis.sock")
    r.start()
    emu = emulator_factory(record=True)
    p = replica(proxy_factory, emu, "unix:" + r.socket)
    guess(p, ctx, 0)
    h.wait_until(lambda: len(r.keys()) >= 2, 5, "the failure counted through the socket")
