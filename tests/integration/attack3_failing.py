"""Attacks from test_attack3.py that FAIL against the code on main (not
collected: the name does not start with test_). Run them by name:

    cd build && /usr/bin/python3 -m pytest -q ../tests/integration/attack3_failing.py

Each docstring says the input, what was expected and what was observed."""

import os
import re
import signal

import imapfront_harness as h
import ops_support as ops
from test_attack3 import (CREDS, FAST, PASSWORD, THROTTLED, RawBackend, attempt,  # noqa: F401
                          auth_lines_at_backend, check, check_ini, fails, fake_store, publish,
                          good_login_is_prompt, loaded, map_text, need_redis, ok, raw, redis,
                          replica, serving, write)
from test_login_store import store_up


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
    Observed: `L NO [AUTHENTICATIONFAILED] Authentication failed`, the
    proxy's own ban, without asking the backend. The INCR of the second
    guess makes -4, which seems to be read as a huge unsigned count. `-1`
    (INCR makes 0), text, a value above int64, a hash, a list and a set
    under the key all leave the owner's login alone (test_attack3.py)."""
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
    good_login_is_prompt(p, ctx, source="127.0.0.1")  # fails here
    p.check_alive()


@need_redis
def test_store_answering_ok_to_everything_crashes_the_proxy(proxy_factory, emulator_factory,
                                                            ctx):
    """Input: `[login] store = redis://127.0.0.1:PORT` where PORT is a TCP
    server that answers every read with eight `+OK\\r\\n` (more replies
    than commands: what a confused proxy or a wrong service could send).
    Expected: the proxy lives, says the store is unusable, and answers
    logins as without a store.
    Observed: imapfront aborts right after start (exit status -6, SIGABRT):
    `imapfront: async.c:478: redisProcessCallbacks: Assertion
    `(c->flags & REDIS_SUBSCRIBED || c->flags & REDIS_MONITORING)' failed.`
    (hiredis asserts on a reply without a pending callback; the client
    code hands hiredis unvalidated replies). Anyone who can bind or
    answer on the store address can kill every replica."""
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
    Observed: logins are answered for about a second, then the proxy
    stops answering: TLS handshakes of new sessions time out (10 s), the
    process runs at 100 % CPU and its RSS grows by about 200 MB/s (1.2 GB
    after 7.5 s, with 22 GB free it would go on towards 16 GiB, the size of
    an array of 2^31 pointers), nothing is logged, and SIGTERM is not
    obeyed within 10 s. (It looks as if the announced element count is
    allocated and then walked when the reply is dropped at the
    one-second timeout.) Anyone who can answer on the store address can
    take every replica down."""
    fake = fake_store(lambda n: b"*2147483647\r\n" + b":1\r\n" * 1000 if n < 16 else None)
    emu = emulator_factory(record=True)
    try:
        p = replica(proxy_factory, emu.plain_port, "redis://127.0.0.1:%d" % fake.port)
        h.wait_until(lambda: len(fake.conns) >= 1, 5, "the proxy connecting to the store")
        tagged, took = attempt(p, ctx, "LOGIN demo %s0" % PASSWORD)
        assert b" NO " in tagged and took < FAST, (tagged, took)
        p.log.wait_for(r"\bwarn store: login store unreachable", timeout=5,
                       alive=p.check_alive)  # fails here
        good_login_is_prompt(p, ctx)
        assert p.rss_kib() < 200 * 1024, p.rss_kib()
    finally:
        fake.stop()


def test_check_fifo_does_not_hang(need_bin, cert, tmp_path):
    """Input: `[route] map = X` where X is a FIFO nobody writes to;
    `imapfront -t -c proxy.ini`.
    Expected: exit status 1 within seconds and `X: ...` on stderr (not a
    regular file).
    Observed: `imapfront -t` blocks forever (killed by the test's 15 s
    timeout), printing nothing: the open() of a FIFO waits for a writer."""
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
    Observed: `configuration reloaded` and sessions are still served, but
    no route line at all follows the first SIGHUP within 10 s (the map
    read seems to block on the FIFO's open(), in the main process). A
    probe went on: the second SIGHUP (back to a good map) logs nothing
    and loads nothing; see also test_fifo_map_blocks_shutdown."""
    path = str(tmp_path / "route.map")
    write(path, map_text(2))
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port, extra={"route": {"map": path}})
    proxy.log.wait_for(loaded(path), alive=proxy.check_alive)
    fifo = str(tmp_path / "route.fifo")
    os.mkfifo(fifo)
    ops.rewrite_ini(proxy, {"route": {"map": fifo}})
    mark = proxy.log.mark()
    proxy.proc.send_signal(signal.SIGHUP)
    proxy.log.wait_for(ops.RELOADED, since=mark, timeout=10, alive=proxy.check_alive)
    serving(proxy, ctx)
    assert ops.http_get(proxy.admin, "/healthz").status == 200
    proxy.log.wait_for(r"\berror route: %s: " % re.escape(fifo), since=mark, timeout=10,
                       alive=proxy.check_alive)  # fails here
    good = str(tmp_path / "good.map")
    write(good, map_text(4))
    ops.rewrite_ini(proxy, {"route": {"map": good}})
    mark = proxy.log.mark()
    proxy.proc.send_signal(signal.SIGHUP)
    m = proxy.log.wait_for(loaded(good), since=mark, timeout=10, alive=proxy.check_alive)
    assert m.group(1) == "4"


def test_check_unsolicited_plus_gets_the_credentials(raw, proxy_factory):  # noqa: F811
    """Input: a backend greets without capabilities; it answers the check's
    CAPABILITY with `* CAPABILITY IMAP4rev1 LOGINDISABLED AUTH=PLAIN`, its
    tagged OK and, in the same write, an unsolicited `+ ` (no command is
    waiting for one). It answers AUTHENTICATE with a tagged NO and never
    sends a `+` of its own.
    Expected: the `+` that came before AUTHENTICATE was sent is a protocol
    error (or ignored); the credentials are never sent.
    Observed: the check sends `imfcheck2 AUTHENTICATE PLAIN` and then the
    base64 credentials line (`\\0svc\\0PASSWORD`) on the stale `+`. Low
    severity: they go to the server that is being checked, but a server
    (or a man in the middle on a plain backend link) gets them without
    asking for them after the command."""
    def script(b, conn, tag, verb):
        if verb == "CAPABILITY":
            conn.sendall(b"* CAPABILITY IMAP4rev1 LOGINDISABLED AUTH=PLAIN\r\n%s OK done\r\n"
                         b"+ \r\n" % tag)
        elif verb == "AUTHENTICATE":
            conn.sendall(b"* OK thinking\r\n%s NO not today\r\n" % tag)
        else:
            ok(b, conn, tag, verb)
    b = raw(b"* OK ready\r\n", script)
    proxy = ops.start_proxy(proxy_factory, b.port,
                            extra={"backend": {
                                "servers": ops.addr(b.port), "check": "login",
                                "check_interval": "200ms", "check_timeout": "600ms",
                                "down_after": "1", "check_user": "svc",
                                "check_password": "Chk-Pw-9\"q\\b", "check_mailbox": "Canary"}})
    fails(proxy, b.port)
    h.wait_until(lambda: b.ended >= 1, 5, "the first check's connection read to its end")
    assert CREDS not in b.received, b.lines  # fails here
    proxy.check_alive()



def test_fifo_map_blocks_shutdown(workdir, emulator, proxy_factory, tmp_path, ctx):
    """Input: as test_sighup_to_a_fifo_map (SIGHUP with map = a FIFO
    without a writer), then SIGTERM.
    Expected: the proxy drains and exits (drain_timeout is 30 s by
    default; with no session open it exits at once).
    Observed: no exit within 10 s; only SIGKILL ends it. An operator's
    typo (a FIFO, or a path on a hung network mount) leaves a proxy that
    no longer reloads and no longer stops on SIGTERM."""
    path = str(tmp_path / "route.map")
    write(path, map_text(2))
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port, extra={"route": {"map": path}})
    proxy.log.wait_for(loaded(path), alive=proxy.check_alive)
    fifo = str(tmp_path / "route.fifo")
    os.mkfifo(fifo)
    ops.rewrite_ini(proxy, {"route": {"map": fifo}})
    mark = proxy.log.mark()
    proxy.proc.send_signal(signal.SIGHUP)
    proxy.log.wait_for(ops.RELOADED, since=mark, timeout=10, alive=proxy.check_alive)
    proxy.proc.send_signal(signal.SIGTERM)
    proxy.proc.wait(10)  # fails here: subprocess.TimeoutExpired


def test_fifo_renamed_over_the_watched_map(workdir, emulator, proxy_factory, tmp_path, ctx):
    """Input: a running proxy watching a good map; a FIFO (no writer) is
    renamed over the map file, as a mistaken deploy could do.
    Expected: `error route: MAP: ...; the running route map stays` and
    the proxy still answers SIGHUP (`configuration reloaded`).
    Observed: `info route: route map changed: MAP; reloading once it
    settles`, then nothing within 10 s: the reload blocks on the FIFO as
    in test_sighup_to_a_fifo_map. Sessions are still served by the
    worker."""
    path = str(tmp_path / "route.map")
    write(path, map_text(2))
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port, extra={"route": {"map": path}})
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


def test_case_twins_in_the_map_are_refused(need_bin, cert, tmp_path):
    """Input: a route map `Alice@example.org default` and
    `alice@example.org default` (ignore_case on, the default);
    `imapfront -t`.
    Expected (docs/configuration.md, [route] ignore_case): "with it on,
    two lines that differ only in case are an error": exit 1, `MAP:2: ...`.
    Observed: exit 0, `route map MAP: 1 entries`: the twins are taken as
    the same user twice with the same pool, which the limits paragraph
    accepts. Low severity: code and docs disagree; with one pool only
    (today) twins with different pools cannot be written to see whether
    those are refused. One of the two texts should change."""
    path = str(tmp_path / "route.map")
    write(path, b"Alice@example.org default\nalice@example.org default\n")
    r = check(check_ini(tmp_path, cert, path))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith(path + ":2: "), r.stderr


@need_redis
def test_negative_count_announced_bans_the_owner(proxy_factory, emulator_factory, redis, ctx):
    """Input: after one failed LOGIN demo from 127.0.0.1, `PUBLISH
    imapfront:login:0 "<key> -5 600000"` for each of the two keys it made
    (the announcement format is "KEY COUNT TTL_MS").
    Expected: a malformed (negative) count is ignored like `abc` or
    `0x10` are (test_attack3.py::test_hostile_announcements); the owner's
    LOGIN demo demo from 127.0.0.1 succeeds.
    Observed: `L NO [AUTHENTICATIONFAILED] Authentication failed`, the
    proxy's ban: -5 is taken as a huge count (the same root as
    test_negative_value_under_a_key_bans_the_owner). A count above 2^64
    (99999999999999999999) bans too; that one may be meant as saturation,
    since anyone who can publish can send 1000000 anyway."""
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
    good_login_is_prompt(p, ctx, source="127.0.0.1")  # fails here
