"""SIGHUP: the file and the certificates are read again; new sessions use
the new snapshot, running ones keep theirs and are not disturbed. A file
that does not load (or names a bad certificate) is refused with the error
logged and the old configuration kept; changes that need a restart are
refused (listeners) or reported (workers, admin address)."""

import os
import re
import shutil
import socket
import ssl
import tempfile

import imapfront_harness as h
import ops_support as ops


def der(cert_path):
    with open(cert_path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def peer_der(client):
    return client.obj.getpeercert(binary_form=True)


def put_cert(src_cert, src_key, dst_cert, dst_key):
    """Replaces the files at dst atomically (as a certificate manager would)."""
    for src, dst in ((src_key, dst_key), (src_cert, dst_cert)):
        tmp = dst + ".tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


class Certs:
    """Two certificates (old, new) and a client context that trusts both."""

    def __init__(self, workdir):
        self.dir = tempfile.mkdtemp(prefix="certs-", dir=workdir)
        self.old = h.make_cert(self.dir, "old")
        self.new = h.make_cert(self.dir, "new")
        self.live = (os.path.join(self.dir, "live-cert.pem"), os.path.join(self.dir, "live-key.pem"))
        put_cert(*self.old, *self.live)
        self.ctx = h.client_context(self.old[0])
        self.ctx.load_verify_locations(self.new[0])

    def tls_extra(self):
        return {"tls": {"certificate": self.live[0], "private_key": self.live[1]}}


def idle(client):
    h.login(client)
    _, tagged = client.command("S", "SELECT INBOX")
    assert tagged.startswith(b"S OK"), tagged
    client.write(b"I IDLE\r\n")
    line = client.read_line()
    assert line.startswith(b"+"), line


def end_idle(client):
    client.write(b"DONE\r\n")
    untagged, tagged = client.read_until_tagged("I")
    assert tagged.startswith(b"I OK"), (untagged, tagged)
    _, tagged = client.command("N", "NOOP")
    assert tagged.startswith(b"N OK"), tagged
    untagged, tagged = client.command("Z", "LOGOUT")
    assert tagged.startswith(b"Z OK"), tagged


def test_rotate_certificate_in_place_under_idle_session(workdir, emulator, proxy_factory):
    certs = Certs(workdir)
    proxy = proxy_factory(emulator.plain_port, extra=certs.tls_extra())
    with h.TLSClient(proxy.port, certs.ctx) as old:
        assert peer_der(old) == der(certs.old[0])
        idle(old)
        put_cert(*certs.new, *certs.live)
        ops.sighup(proxy, ops.RELOADED)
        with h.TLSClient(proxy.port, certs.ctx) as fresh:
            assert peer_der(fresh) == der(certs.new[0])
            h.login(fresh)
            _, tagged = fresh.command("N", "NOOP")
            assert tagged.startswith(b"N OK"), tagged
        # The IDLE session saw nothing of it and goes on.
        end_idle(old)
        assert peer_der(old) == der(certs.old[0])
    assert not proxy.log.find(r"session: closed .*reason=(?!logout|client-eof)")


def test_rotate_certificate_to_new_paths(workdir, emulator, proxy_factory):
    certs = Certs(workdir)
    proxy = proxy_factory(emulator.plain_port, extra=certs.tls_extra())
    with h.TLSClient(proxy.port, certs.ctx) as old:
        idle(old)
        ops.rewrite_ini(proxy, {"tls": {"certificate": certs.new[0], "private_key": certs.new[1]}})
        ops.sighup(proxy, ops.RELOADED)
        with h.TLSClient(proxy.port, certs.ctx) as fresh:
            assert peer_der(fresh) == der(certs.new[0])
        end_idle(old)


def assert_still_old(proxy, certs):
    with h.TLSClient(proxy.port, certs.ctx) as c:
        assert peer_der(c) == der(certs.old[0])
        h.login(c)


def test_invalid_file_refused_old_config_kept(workdir, emulator, proxy_factory):
    certs = Certs(workdir)
    proxy = proxy_factory(emulator.plain_port, extra=certs.tls_extra())
    with h.TLSClient(proxy.port, certs.ctx) as old:
        idle(old)
        # A new certificate path and, further down, a bad value: all or nothing.
        ops.rewrite_ini(proxy, {"tls": {"certificate": certs.new[0], "private_key": certs.new[1]},
                                "imap": {"buffer_limit": "12q"}})
        m = ops.sighup(proxy, ops.RELOAD_FAILED)
        assert re.match(r"%s:\d+: buffer_limit: " % re.escape(proxy.ini), m.group(1)), m.group(0)
        assert_still_old(proxy, certs)
        # An unknown key is refused the same way.
        ops.rewrite_ini(proxy, {"imap": {"buffer_limit": "256k"}, "proxy": {"colour": "blue"}})
        m = ops.sighup(proxy, ops.RELOAD_FAILED)
        assert re.match(r"%s:\d+: colour: unknown key" % re.escape(proxy.ini), m.group(1)), \
            m.group(0)
        assert_still_old(proxy, certs)
        end_idle(old)
    assert proxy.alive()


def test_bad_certificate_refused_old_kept(workdir, emulator, proxy_factory):
    certs = Certs(workdir)
    proxy = proxy_factory(emulator.plain_port, extra=certs.tls_extra())
    # A certificate file that is not PEM, at the live path.
    with open(certs.live[0] + ".tmp", "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    os.replace(certs.live[0] + ".tmp", certs.live[0])
    m = ops.sighup(proxy, ops.RELOAD_FAILED)
    assert proxy.ini in m.group(1), m.group(0)
    assert_still_old(proxy, certs)
    # A key that does not match the certificate.
    put_cert(certs.old[0], certs.new[1], *certs.live)
    ops.sighup(proxy, ops.RELOAD_FAILED)
    assert_still_old(proxy, certs)
    # Fixed: the next SIGHUP applies it.
    put_cert(*certs.new, *certs.live)
    ops.sighup(proxy, ops.RELOADED)
    with h.TLSClient(proxy.port, certs.ctx) as c:
        assert peer_der(c) == der(certs.new[0])


def test_listener_change_refused(emulator, proxy_factory, ctx):
    proxy = proxy_factory(emulator.plain_port)
    other = h.free_port()
    ops.rewrite_ini(proxy, {"listen.imaps": {"address": "127.0.0.1:%d" % other}})
    m = ops.sighup(proxy, r"\berror main: reload refused, the running configuration stays: (.*)$")
    assert "restart to apply" in m.group(1), m.group(0)
    assert not proxy.log.find(ops.RELOADED)
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
    # A new listener section is refused the same way.
    ops.rewrite_ini(proxy, {"listen.imaps": {"address": "127.0.0.1:0"},
                            "listen.more": {"address": "127.0.0.1:%d" % other}})
    ops.sighup(proxy, r"\berror main: reload refused, .*restart to apply")
    assert proxy.alive()


def test_workers_and_admin_changes_need_restart(emulator, proxy_factory, ctx):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port)
    mark = proxy.log.mark()
    ops.rewrite_ini(proxy, {"proxy": {"workers": "2"},
                            "admin": {"address": "127.0.0.1:%d" % h.free_port()}})
    ops.sighup(proxy, ops.RELOADED)
    assert proxy.log.find(r"\bwarn main: reload: \[proxy\] workers changed; that needs a "
                          r"restart; keeping the old value 1$", mark)
    assert proxy.log.find(r"\bwarn main: reload: \[admin\] address changed; that needs a "
                          r"restart; keeping the old value 127\.0\.0\.1:0$", mark)
    # Still one worker, still the old admin port.
    assert ops.scrape(proxy).value("imapfront_workers") == 1
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)


def test_new_sessions_use_new_backend_old_ones_keep_theirs(emulator_factory, proxy_factory, ctx):
    first, second = emulator_factory(), emulator_factory()
    proxy = proxy_factory(first.plain_port)
    with h.TLSClient(proxy.port, ctx) as old:
        h.login(old)
        ops.rewrite_ini(proxy, {"backend": {"servers": "127.0.0.1:%d" % second.plain_port}})
        ops.sighup(proxy, ops.RELOADED)
        mark1, mark2 = first.log.mark(), second.log.mark()
        with h.TLSClient(proxy.port, ctx) as fresh:
            h.login(fresh, tag="F1")
        _, tagged = old.command("OLD1", "NOOP")
        assert tagged.startswith(b"OLD1 OK"), tagged
    first.log.wait_for(r"\bcmd OLD1 NOOP", since=mark1, timeout=5)
    second.log.wait_for(r"\bcmd F1 LOGIN", since=mark2, timeout=5)
    assert not second.log.find(r"\bcmd OLD1\b", mark2)
    assert not first.log.find(r"\bcmd F1\b", mark1)


def test_listeners_reordered_found_by_name(emulator, proxy_factory, ctx):
    """Sections are matched by name: listing the same listeners in another
    order reloads, and each socket keeps its own section's settings (one
    is implicit TLS, the other STARTTLS with a plaintext greeting)."""
    proxy = proxy_factory(emulator.plain_port, extra={
        "listen.plain": {"address": "127.0.0.1:0", "mode": "starttls", "require_tls": "yes"}})
    plain = ops.listener_port(proxy, "plain")
    sections = ops.read_ini(proxy.ini)
    first = {k: sections[k] for k in ("listen.plain", "listen.imaps")}
    first.update({k: v for k, v in sections.items() if k not in first})
    assert list(first)[:2] == ["listen.plain", "listen.imaps"]
    with open(proxy.ini, "w") as f:
        f.write(h.render_ini(first))
    mark = proxy.log.mark()
    ops.sighup(proxy, ops.RELOADED)
    assert not proxy.log.find(r"needs a restart|reload refused", mark)
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
        c.command("Z", "LOGOUT")
    with socket.create_connection(("127.0.0.1", plain), timeout=5) as s:
        s.settimeout(5)
        assert s.recv(512).startswith(b"* OK"), "a STARTTLS listener greets in plaintext"
    proxy.log.wait_for(r"\binfo session: closed client=\S+ listener=imaps tls=TLS", since=mark,
                       timeout=5)
    proxy.log.wait_for(r"\binfo session: closed client=\S+ listener=plain ", since=mark,
                       timeout=5)
