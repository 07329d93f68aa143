"""Limits and privileges: max_connections and max_connections_per_ip refuse
politely (`* BYE [UNAVAILABLE] Too many connections...`, after the TLS
handshake) and are counted; the per-IP limit counts the real client behind
a PROXY header; the open files limit is raised for max_connections (or a
warning says why not); `user =` drops root after binding; `workers = 2`
runs two event loops that both serve sessions."""

import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile

import pytest

import imapfront_harness as h
import ops_support as ops

TOO_MANY = b"* BYE [UNAVAILABLE] Too many connections\r\n"
TOO_MANY_IP = b"* BYE [UNAVAILABLE] Too many connections from your address\r\n"


def greeted(port, ctx, header=None):
    """A TLS client (after header, if any) and the first line it got."""
    c = ops.tls_after(port, header, ctx) if header else h.TLSClient(port, ctx)
    return c, c.read_line()


def refused(c, line, expect):
    assert line == expect, line
    how, rest = c.expect_eof(timeout=5)
    assert rest == b"" and how == "close_notify", (how, rest)
    c.close()


def test_max_connections(emulator, proxy_factory, ctx):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra={"proxy": {"max_connections": "2"}})
    emark, mark = emulator.log.mark(), proxy.log.mark()
    first, l1 = greeted(proxy.port, ctx)
    second, l2 = greeted(proxy.port, ctx)
    try:
        assert l1.startswith(b"* OK") and l2.startswith(b"* OK"), (l1, l2)
        third, l3 = greeted(proxy.port, ctx)
        refused(third, l3, TOO_MANY)
        proxy.log.wait_for(r"\bwarn listener: connection refused client=127\.0\.0\.1:\d+ "
                           r'reason="\[UNAVAILABLE\] Too many connections"', since=mark)
        # The backend never saw the refused one.
        assert len(emulator.conns_since(emark)) == 2
        m = ops.wait_metrics(proxy, lambda m: m.value("imapfront_session_closes_total",
                                                      reason="refused") == 1)
        assert m.value("imapfront_connections_refused_total") == 1
        # A place frees up: the next one is served.
        first.close()
        ops.wait_metrics(proxy, lambda m: m.value("imapfront_sessions_active",
                                                  listener="imaps") == 1)
        fourth, l4 = greeted(proxy.port, ctx)
        with fourth:
            assert l4.startswith(b"* OK"), l4
            _, tagged = fourth.command("L", "LOGIN demo demo")
            assert tagged.startswith(b"L OK"), tagged
    finally:
        first.close()
        second.close()


def test_max_connections_on_starttls_listener_refuses_in_plaintext(emulator, proxy_factory,
                                                                    ctx):
    proxy = proxy_factory(emulator.plain_port, extra={
        "proxy": {"max_connections": "1"},
        "listen.imap": {"address": "127.0.0.1:0", "mode": "starttls"}})
    port = ops.listener_port(proxy, "imap")
    with h.TLSClient(proxy.port, ctx) as first:
        h.login(first)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            # Before any TLS: the client can read a plaintext BYE here.
            assert ops.wait_closed(s) == TOO_MANY


def test_max_connections_counts_across_workers(emulator, proxy_factory, ctx):
    proxy = proxy_factory(emulator.plain_port,
                          extra={"proxy": {"workers": "2", "max_connections": "2"}})
    clients = []
    try:
        # Twelve connections from different ports: with two workers the
        # chance that all land on one worker is 2 in 4096.
        for _ in range(12):
            clients.append(greeted(proxy.port, ctx))
        served = [line for _, line in clients if line.startswith(b"* OK")]
        assert len(served) == 2, [line for _, line in clients]
    finally:
        for c, _ in clients:
            c.close()


@pytest.mark.parametrize("prefix", [None, "128"])
def test_max_connections_per_ip_counts_ipv6_per_prefix(emulator, proxy_factory, ctx, prefix):
    """IPv6 clients (here behind PROXY headers) count per /64 by default:
    another address of the same /64 is refused, one of the next /64 is not.
    With ip_prefix_v6 = 128 every address counts alone."""
    keys = {"max_connections_per_ip": "1"}
    if prefix is not None:
        keys["ip_prefix_v6"] = prefix
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port, extra={
        "proxy": keys,
        "listen.imaps": {"proxy_protocol": "v1", "proxy_protocol_from": "127.0.0.1"}})
    dst = "2001:db8::993"
    open_ = []
    try:
        c, line = greeted(proxy.port, ctx, ops.pp_v1("2001:db8:1:2::1", 5001, dst))
        open_.append(c)
        assert line.startswith(b"* OK"), line
        c, line = greeted(proxy.port, ctx, ops.pp_v1("2001:db8:1:2:ffff::7", 5002, dst))
        if prefix is None:
            refused(c, line, TOO_MANY_IP)
        else:
            open_.append(c)
            assert line.startswith(b"* OK"), line
        c, line = greeted(proxy.port, ctx, ops.pp_v1("2001:db8:1:3::1", 5003, dst))
        open_.append(c)
        assert line.startswith(b"* OK"), line
        m = ops.scrape(proxy)
        assert m.value("imapfront_connections_refused_total") == (1 if prefix is None else 0)
    finally:
        for c in open_:
            c.close()


def test_max_connections_per_ip_behind_proxy_headers(emulator, proxy_factory, ctx):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port, extra={
        "proxy": {"max_connections_per_ip": "2"},
        "listen.imaps": {"proxy_protocol": "v1", "proxy_protocol_from": "127.0.0.1"}})
    a, b = "203.0.113.1", "203.0.113.2"
    mark = proxy.log.mark()
    open_ = []
    try:
        for port in (5001, 5002):
            c, line = greeted(proxy.port, ctx, ops.pp_v1(a, port))
            open_.append(c)
            assert line.startswith(b"* OK"), line
        c, line = greeted(proxy.port, ctx, ops.pp_v1(a, 5003))
        refused(c, line, TOO_MANY_IP)
        proxy.log.wait_for(r"\bconnection refused client=203\.0\.113\.1:5003 ", since=mark)
        # Another address is not affected (all come from 127.0.0.1).
        c, line = greeted(proxy.port, ctx, ops.pp_v1(b, 5004))
        open_.append(c)
        assert line.startswith(b"* OK"), line
        # One of a's sessions ends: a may open another.
        open_.pop(0).close()
        h.wait_until(lambda: any(kv.get("client") == "%s:5001" % a
                                 for kv in proxy.closed_lines(mark)), 5, "a's session to end")
        c, line = greeted(proxy.port, ctx, ops.pp_v1(a, 5005))
        open_.append(c)
        assert line.startswith(b"* OK"), line
        m = ops.scrape(proxy)
        assert m.value("imapfront_connections_refused_total") == 1
    finally:
        for c in open_:
            c.close()


@contextlib.contextmanager
def soft_nofile(n):
    """Lowers this process's soft open-files limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def nofile_of(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                parts = line.split()
                return int(parts[3]), parts[4]
    raise AssertionError("no open files limit for %d" % pid)


def may_raise_hard_limit():
    """CAP_SYS_RESOURCE (bit 24) in the effective set."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> 24 & 1)
    return False


def test_open_files_limit_raised_for_max_connections(emulator, proxy_factory):
    with soft_nofile(256):
        proxy = proxy_factory(emulator.plain_port, extra={"proxy": {"max_connections": "1000"}})
    soft, _ = nofile_of(proxy.pid)
    assert soft >= 2 * 1000, soft
    assert not proxy.log.find(r"open files limit is")


def test_open_files_limit_warning_when_it_cannot_be_raised(emulator, proxy_factory):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or may_raise_hard_limit():
        pytest.skip("this process may raise its hard open-files limit: no warning to see")
    want = min(hard // 2 + 1000, 1000000)
    proxy = proxy_factory(emulator.plain_port, extra={"proxy": {"max_connections": str(want)}})
    m = proxy.log.wait_for(r"\bwarn main: open files limit is (\d+), below the (\d+) that "
                           r"max_connections = %d needs" % want, timeout=5)
    assert int(m.group(1)) == hard
    assert nofile_of(proxy.pid)[0] == hard  # raised as far as it goes


def ids_of(pid):
    with open("/proc/%d/status" % pid) as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    return [int(x) for x in status["Uid"].split()], [int(x) for x in status["Gid"].split()]


def test_user_drops_privileges_and_still_serves(emulator, cert, need_bin):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    if not os.stat("/").st_mode & 0o001:
        # A chroot made by mktemp -d (mode 0700): no unprivileged process
        # can reach its files, whatever imapfront does.
        pytest.skip("the filesystem root is not traversable by other users")
    import pwd
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    # A world-readable directory: the proxy re-reads its files as nobody.
    base = tempfile.mkdtemp(prefix="imapfront-user-")
    proxy = None
    try:
        os.chmod(base, 0o755)
        paths = []
        for src, name in ((cert[0], "cert.pem"), (cert[1], "key.pem")):
            dst = os.path.join(base, name)
            shutil.copyfile(src, dst)
            os.chmod(dst, 0o644)
            paths.append(dst)
        proxy = h.Proxy(base, paths[0], paths[1], emulator.plain_port,
                        extra={"proxy": {"user": "nobody"}})
        os.chmod(proxy.dir, 0o755)
        os.chmod(proxy.ini, 0o644)
        proxy.log.wait_for(r"\binfo main: running as nobody \(uid %d\)" % nobody.pw_uid)
        uids, gids = ids_of(proxy.pid)
        assert uids == [nobody.pw_uid] * 4, uids
        assert gids == [nobody.pw_gid] * 4, gids
        ctx = h.client_context(paths[0])
        with h.TLSClient(proxy.port, ctx) as c:
            h.login(c)
        # Reload works too, as nobody.
        ops.sighup(proxy, ops.RELOADED)
        with h.TLSClient(proxy.port, ctx) as c:
            h.login(c)
        proxy.proc.send_signal(signal.SIGTERM)
        assert ops.wait_exit(proxy, 5) == 0
    finally:
        if proxy is not None:
            proxy.stop()
        shutil.rmtree(base, ignore_errors=True)


def root_and_nobody():
    """nobody's passwd entry, or a skip saying why the test cannot run."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the files must be owned by root and the user switched")
    if not os.stat("/").st_mode & 0o001:
        pytest.skip("the filesystem root is not traversable by other users")
    import pwd
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")


def test_files_the_user_cannot_read_are_named(emulator, cert, need_bin):
    """With user = nobody, a key file of mode 0600 owned by root (and a
    config file likewise) can be read at start, as root, but not by a
    reload, which runs as nobody: `-t` names each such file and exits 1, a
    start warns about each and still serves."""
    root_and_nobody()
    base = tempfile.mkdtemp(prefix="imapfront-user-")
    proxy = None
    try:
        os.chmod(base, 0o755)
        paths = []
        for src, name in ((cert[0], "cert.pem"), (cert[1], "key.pem")):
            dst = os.path.join(base, name)
            shutil.copyfile(src, dst)
            os.chown(dst, 0, 0)
            os.chmod(dst, 0o644)
            paths.append(dst)
        proxy = h.Proxy(base, paths[0], paths[1], emulator.plain_port,
                        extra={"proxy": {"user": "nobody"}})
        os.chmod(proxy.dir, 0o755)
        os.chmod(proxy.ini, 0o644)

        def check():
            return subprocess.run([h.BIN, "-t", "-c", proxy.ini], stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=30)

        r = check()
        assert r.returncode == 0 and "not readable" not in r.stderr, (r.returncode, r.stderr)

        os.chmod(paths[1], 0o600)
        r = check()
        assert r.returncode == 1, r
        assert ("%s: not readable by user nobody; a reload would fail" % paths[1]
                in r.stderr.splitlines()), r.stderr
        assert paths[0] not in r.stderr and proxy.ini not in r.stderr, r.stderr

        os.chmod(proxy.ini, 0o600)
        r = check()
        assert r.returncode == 1, r
        lines = r.stderr.splitlines()
        for path in (proxy.ini, paths[1]):
            assert "%s: not readable by user nobody; a reload would fail" % path in lines, lines

        # A start (as root) works, and warns about each file. The new
        # proxy's directory is mkdtemp's (0700): nobody cannot reach its
        # proxy.ini either, whatever the file's own mode.
        proxy.stop()
        proxy = h.Proxy(base, paths[0], paths[1], emulator.plain_port,
                        extra={"proxy": {"user": "nobody"}})
        for path in (proxy.ini, paths[1]):
            proxy.log.wait_for(r"\bwarn main: %s: not readable by user nobody; a reload would "
                               r"fail$" % re.escape(path), alive=proxy.check_alive)
        assert paths[0] not in proxy.log.text()
        with h.TLSClient(proxy.port, h.client_context(paths[0])) as c:
            h.login(c)
    finally:
        if proxy is not None:
            proxy.stop()
        shutil.rmtree(base, ignore_errors=True)


def listen_inodes(port):
    """Inodes of the LISTEN sockets on 127.0.0.1:port."""
    want = "0100007F:%04X" % port
    out = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":
                out.append(fields[9])
    return out


def thread_reads(pid):
    """{tid: bytes read by that thread} (rchar counts socket reads)."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/io" % (pid, tid)) as f:
                out[tid] = int(next(l for l in f if l.startswith("rchar:")).split()[1])
        except (OSError, StopIteration):
            pass
    return out


def test_two_workers_both_serve(emulator, proxy_factory, ctx):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port, extra={"proxy": {"workers": "2"}})
    proxy.log.wait_for(r"\binfo main: imapfront \S+ started: 2 workers")
    assert ops.scrape(proxy).value("imapfront_workers") == 2
    # One SO_REUSEPORT listening socket per worker, both ours.
    inodes = listen_inodes(proxy.port)
    assert len(inodes) == 2, inodes
    fds = {os.readlink("/proc/%d/fd/%s" % (proxy.pid, fd))
           for fd in os.listdir("/proc/%d/fd" % proxy.pid)}
    assert {"socket:[%s]" % i for i in inodes} <= fds
    before = thread_reads(proxy.pid)
    body = h.message_body(32768, seed=3)
    sessions = 16
    for i in range(sessions):
        with h.TLSClient(proxy.port, ctx) as c:
            h.login(c)
            tagged = h.append(c, "A%d" % i, body)
            assert tagged.startswith(b"A%d OK" % i), tagged
    after = thread_reads(proxy.pid)
    moved = sorted((after[t] - before.get(t, 0) for t in after), reverse=True)
    busy = [d for d in moved if d >= len(body)]
    print("bytes read per thread over %d sessions of one %d-byte APPEND: %s"
          % (sessions, len(body), moved))
    # Sixteen connections all on one worker: 2 chances in 65536.
    assert len(busy) >= 2, moved
    assert ops.closes(proxy, 0, sessions) == ["client-eof"] * sessions
