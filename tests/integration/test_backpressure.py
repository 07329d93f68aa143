"""A slow reader never makes imapfront's memory grow without bound: the
backend stops reading while the client APPENDs 64 MiB; once the client's
sends block (imapfront stopped reading from it), imapfront's RSS is still
close to where it started, and other sessions are served."""

import socket
import threading

import imapfront_harness as h

LITERAL = 64 << 20
BUFFER_LIMIT = 256 << 10
# Allowed RSS growth over the idle process. The chains hold at most
# buffer_limit (plus one read) per direction; the rest is TLS and libc
# slack. Far below the 64 MiB that would be held without backpressure.
RSS_BOUND_KIB = 32 << 10
# stats chain_bytes while the session is stuck: both directions, each at
# most buffer_limit plus one read (64 KiB).
CHAIN_BOUND = 2 * (BUFFER_LIMIT + (64 << 10))


def test_backend_that_stops_reading(proxy_factory, ctx, record_property):
    release = threading.Event()

    def backend(conn):
        conn.sendall(b"* OK slow server ready\r\n")
        line = h.recv_line(conn)
        if not line:
            return
        conn.sendall(line.split(b" ", 1)[0] + b" OK LOGIN done\r\n")
        # From here on the backend reads nothing until released; then it
        # closes, which ends the session (imapfront is not reading from the
        # client any more, so the client's own close may go unseen).
        release.wait(120)
        conn.close()

    fake = h.FakeBackend(backend)
    try:
        proxy = proxy_factory(fake.port, extra={
            "imap": {"buffer_limit": "256k", "max_literal_size": "128M"}})
        idle_kib = proxy.rss_kib()

        client = h.TLSClient(proxy.port, ctx)
        h.login(client, tag="L")
        client.write(b"A APPEND INBOX {%d+}\r\n" % LITERAL)

        pushed = 0
        blocked = threading.Event()
        failure = []

        def push():
            nonlocal pushed
            chunk = b"x" * 65534 + b"\r\n"
            client.sock.settimeout(3.0)
            try:
                while pushed < LITERAL:
                    n = min(len(chunk), LITERAL - pushed)
                    view = memoryview(chunk)[:n]
                    while view:
                        w = client.obj.write(view)
                        view = view[w:]
                    client.sock.sendall(client.outgoing.read())
                    pushed += n
            except socket.timeout:
                blocked.set()
            except OSError as e:
                failure.append(e)

        pusher = threading.Thread(target=push, daemon=True)
        pusher.start()
        pusher.join(120)
        assert not failure, failure
        assert blocked.is_set(), "all %d octets went through: nothing pushed back" % pushed

        rss_kib = proxy.rss_kib()
        growth = rss_kib - idle_kib
        record_property("idle_rss_kib", idle_kib)
        record_property("stuck_rss_kib", rss_kib)
        record_property("pushed_before_block", pushed)
        print("imapfront RSS idle %d KiB, stuck %d KiB (+%d KiB) after %d octets pushed"
              % (idle_kib, rss_kib, growth, pushed))
        assert growth < RSS_BOUND_KIB, (idle_kib, rss_kib, pushed)
        assert pushed < LITERAL

        stats = proxy.stats()
        assert stats["sessions_active"] == 1, stats
        assert stats["chain_bytes"] <= CHAIN_BOUND, stats

        # Another session is served while the first one is stuck.
        with h.TLSClient(proxy.port, ctx) as other:
            assert other.read_line(timeout=5) == b"* OK slow server ready\r\n"

        client.close()
        release.set()
        stats = proxy.wait_stats(lambda s: s.get("sessions_active") == 0, timeout=10,
                                 what="no active session")
        assert stats["chain_bytes"] == 0 and stats["chain_links"] == 0, stats
        assert not fake.errors, fake.errors
    finally:
        release.set()
        fake.stop()
