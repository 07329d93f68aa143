"""systemd notification (sd_notify): with NOTIFY_SOCKET set, imapfront
tells the service manager when it is ready, reloading, ready again and
stopping, and sends a STATUS= line every few seconds. The test plays the
service manager: it binds the datagram socket and reads what arrives."""

import os
import signal
import socket
import tempfile
import time

import pytest

import imapfront_harness as h

STATUS_EVERY = 5.0  # IMF_NOTIFY_STATUS_MS


class Manager:
    """A unix datagram socket standing for systemd's notification socket,
    at a path or (name starting with '@') in the abstract namespace."""

    def __init__(self, workdir, abstract):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            self.name = "@imapfront-test-%d-%d" % (os.getpid(), time.monotonic_ns())
            self.sock.bind("\0" + self.name[1:])
        else:
            self.dir = tempfile.mkdtemp(prefix="notify-", dir=workdir)
            self.name = os.path.join(self.dir, "notify.sock")
            self.sock.bind(self.name)

    def next(self, timeout=5.0, skip_status=True):
        """The next datagram as {KEY: VALUE}, waiting at most timeout; a
        periodic STATUS-only one is skipped unless skip_status is off."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise h.HarnessError("no notification within %.1fs" % timeout)
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                raise h.HarnessError("no notification within %.1fs" % timeout) from None
            msg = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            if not (skip_status and set(msg) == {"STATUS"}):
                return msg

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_reload_status_stopping(workdir, cert, emulator, need_bin, abstract):
    mgr = Manager(workdir, abstract)
    proxy = None
    try:
        proxy = h.Proxy(workdir, cert[0], cert[1], emulator.plain_port,
                        env={"NOTIFY_SOCKET": mgr.name})
        ready = mgr.next()
        assert ready.get("READY") == "1", ready
        # Sent once the listener accepts: a client gets in right away.
        with h.TLSClient(proxy.port, h.client_context(cert[0])) as c:
            assert c.read_line().startswith(b"* OK")
        assert ready["STATUS"] == "0 sessions open, 1 of 1 backend up", ready

        before = time.clock_gettime(time.CLOCK_MONOTONIC)
        proxy.proc.send_signal(signal.SIGHUP)
        reloading = mgr.next()
        after = time.clock_gettime(time.CLOCK_MONOTONIC)
        assert reloading.get("RELOADING") == "1", reloading
        usec = int(reloading["MONOTONIC_USEC"])  # CLOCK_MONOTONIC, as systemd wants
        assert before * 1e6 <= usec <= after * 1e6
        again = mgr.next()
        assert again.get("READY") == "1", again
        proxy.log.wait_for(r"configuration reloaded from", timeout=5)

        # The periodic line, on its own, while a session is open.
        with h.TLSClient(proxy.port, h.client_context(cert[0])) as c:
            assert c.read_line().startswith(b"* OK")
            status = mgr.next(timeout=STATUS_EVERY + 3, skip_status=False)
            assert set(status) == {"STATUS"}, status
            assert status["STATUS"] == "1 session open, 1 of 1 backend up", status

        proxy.proc.send_signal(signal.SIGTERM)
        stopping = mgr.next()
        assert stopping == {"STOPPING": "1"}, stopping
        assert proxy.proc.wait(h.STOP_TIMEOUT) == 0
    finally:
        if proxy is not None:
            proxy.stop()
        mgr.close()


def test_no_socket_no_notifications(workdir, cert, emulator, need_bin):
    """Without NOTIFY_SOCKET nothing is sent, and a malformed value is a
    warning, not a failure to start."""
    proxy = h.Proxy(workdir, cert[0], cert[1], emulator.plain_port,
                    env={"NOTIFY_SOCKET": "relative/path"})
    try:
        proxy.log.wait_for(r"warn main: NOTIFY_SOCKET: cannot notify the service manager: "
                           r"Invalid argument", timeout=5)
        with h.TLSClient(proxy.port, h.client_context(cert[0])) as c:
            assert c.read_line().startswith(b"* OK")
    finally:
        proxy.stop()
