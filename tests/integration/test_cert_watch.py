"""Certificates that reload themselves: imapfront watches the certificate
and key files and their directories; when they are replaced (renamed into
place as certbot does, or through the "..data" symlink swap of a
Kubernetes Secret volume) the pair is reloaded, once settled, for new
sessions, with no SIGHUP. A broken pair keeps the old certificate and the
log says which file and why. The expiry gauge follows the certificate
served."""

import os
import shutil
import socket
import ssl
import tempfile

import imapfront_harness as h
import ops_support as ops

RELOADED = r"\binfo tls: certificates reloaded from their files"
FAILED = r"\berror tls: certificate reload failed, the running certificates stay: (.*)$"
SETTLE = 1.0  # IMF_CERTWATCH_SETTLE_MS


def der(cert_path):
    with open(cert_path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def not_after(cert_path):
    info = ssl._ssl._test_decode_cert(cert_path)
    return int(ssl.cert_time_to_seconds(info["notAfter"]))


def served(proxy, ctx, sni=None):
    """The DER certificate a new TLS session gets (asking for sni)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            return s.getpeercert(binary_form=True)


def expiry_gauge(proxy):
    m = ops.scrape(proxy)
    return {ls["certificate"]: m.value("imapfront_certificate_expiry_timestamp_seconds", **ls)
            for ls in m.labelsets("imapfront_certificate_expiry_timestamp_seconds")}


class Certs:
    """Certificates with different validity (so that the gauge tells them
    apart) and a client context that trusts them all."""

    def __init__(self, workdir):
        self.dir = tempfile.mkdtemp(prefix="watch-", dir=workdir)
        self.old = h.make_cert(self.dir, "old", days=30)
        self.new = h.make_cert(self.dir, "new", days=60)
        self.third = h.make_cert(self.dir, "third", days=90)
        self.ctx = h.client_context(self.old[0])
        self.ctx.load_verify_locations(self.new[0])
        self.ctx.load_verify_locations(self.third[0])


def replace(src, dst):
    """Write to a temporary name beside dst, then rename over it."""
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def test_rename_into_place(workdir, emulator, proxy_factory):
    certs = Certs(workdir)
    live = tempfile.mkdtemp(prefix="live-", dir=workdir)
    cert, key = os.path.join(live, "cert.pem"), os.path.join(live, "key.pem")
    shutil.copyfile(certs.old[0], cert)
    shutil.copyfile(certs.old[1], key)
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra={"tls": {"certificate": cert, "private_key": key}})
    assert served(proxy, certs.ctx) == der(certs.old[0])
    assert expiry_gauge(proxy) == {"tls": not_after(certs.old[0])}

    with h.TLSClient(proxy.port, certs.ctx) as running:
        h.login(running)
        mark = proxy.log.mark()
        replace(certs.new[1], key)
        replace(certs.new[0], cert)
        proxy.log.wait_for(RELOADED, since=mark, timeout=SETTLE + 10, alive=proxy.check_alive)
        assert served(proxy, certs.ctx) == der(certs.new[0])
        assert expiry_gauge(proxy) == {"tls": not_after(certs.new[0])}
        # One reload for the burst of renames, and the running session goes on.
        assert len(proxy.log.find(RELOADED, mark)) == 1
        _, tagged = running.command("N", "NOOP")
        assert tagged.startswith(b"N OK"), tagged

    # Replaced again: the watch follows the new files.
    mark = proxy.log.mark()
    replace(certs.third[1], key)
    replace(certs.third[0], cert)
    proxy.log.wait_for(RELOADED, since=mark, timeout=SETTLE + 10, alive=proxy.check_alive)
    assert served(proxy, certs.ctx) == der(certs.third[0])


def test_kubernetes_secret_symlink_swap(workdir, emulator, proxy_factory):
    """The layout kubelet makes: tls.crt -> ..data/tls.crt, ..data ->
    ..TIMESTAMP/; an update writes a new ..TIMESTAMP2/ and renames a new
    ..data symlink over the old one."""
    certs = Certs(workdir)
    vol = tempfile.mkdtemp(prefix="secret-", dir=workdir)

    def publish(pair, stamp):
        d = os.path.join(vol, stamp)
        os.mkdir(d)
        shutil.copyfile(pair[0], os.path.join(d, "tls.crt"))
        shutil.copyfile(pair[1], os.path.join(d, "tls.key"))
        os.symlink(stamp, os.path.join(vol, "..data_tmp"))
        os.replace(os.path.join(vol, "..data_tmp"), os.path.join(vol, "..data"))

    publish(certs.old, "..2026_01")
    for name in ("tls.crt", "tls.key"):
        os.symlink(os.path.join("..data", name), os.path.join(vol, name))
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra={"tls": {"certificate": os.path.join(vol, "tls.crt"),
                                           "private_key": os.path.join(vol, "tls.key")}})
    assert served(proxy, certs.ctx) == der(certs.old[0])
    mark = proxy.log.mark()
    publish(certs.new, "..2026_02")
    shutil.rmtree(os.path.join(vol, "..2026_01"))  # kubelet removes the old one
    proxy.log.wait_for(RELOADED, since=mark, timeout=SETTLE + 10, alive=proxy.check_alive)
    assert served(proxy, certs.ctx) == der(certs.new[0])
    assert expiry_gauge(proxy) == {"tls": not_after(certs.new[0])}


def test_broken_pair_keeps_the_old_certificate(workdir, emulator, proxy_factory):
    certs = Certs(workdir)
    live = tempfile.mkdtemp(prefix="live-", dir=workdir)
    cert, key = os.path.join(live, "cert.pem"), os.path.join(live, "key.pem")
    shutil.copyfile(certs.old[0], cert)
    shutil.copyfile(certs.old[1], key)
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra={"tls": {"certificate": cert, "private_key": key}})
    ini_line = [n for n, l in enumerate(open(proxy.ini), 1) if l.startswith("private_key")][0]

    # Written in place: a key that is not the certificate's.
    mark = proxy.log.mark()
    with open(key, "w") as f:
        f.write(open(certs.new[1]).read())
    m = proxy.log.wait_for(FAILED, since=mark, timeout=SETTLE + 10, alive=proxy.check_alive)
    assert m.group(1).startswith("%s:%d: private_key: does not match the certificate: %s"
                                 % (proxy.ini, ini_line, key)), m.group(1)
    assert served(proxy, certs.ctx) == der(certs.old[0])
    assert expiry_gauge(proxy) == {"tls": not_after(certs.old[0])}

    # Garbage in place of the certificate: named too.
    mark = proxy.log.mark()
    with open(cert, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    m = proxy.log.wait_for(FAILED, since=mark, timeout=SETTLE + 10, alive=proxy.check_alive)
    assert ": certificate: cannot load %s: " % cert in m.group(1), m.group(1)
    assert served(proxy, certs.ctx) == der(certs.old[0])

    # Fixed: the matching certificate arrives and is taken.
    mark = proxy.log.mark()
    replace(certs.new[0], cert)
    proxy.log.wait_for(RELOADED, since=mark, timeout=SETTLE + 10, alive=proxy.check_alive)
    assert served(proxy, certs.ctx) == der(certs.new[0])


def test_sni_certificates_watched_and_expiring_one_warned(workdir, emulator, proxy_factory):
    certs = Certs(workdir)
    soon = h.make_cert(certs.dir, "soon", days=3)
    live = tempfile.mkdtemp(prefix="live-", dir=workdir)
    other = os.path.join(live, "other.pem"), os.path.join(live, "other.key")
    shutil.copyfile(soon[0], other[0])
    shutil.copyfile(soon[1], other[1])
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port, extra={
        "tls": {"certificate": certs.old[0], "private_key": certs.old[1]},
        "certificate.other": {"certificate": other[0], "private_key": other[1],
                              "server_names": "other.test"}})
    proxy.log.wait_for(r"\bwarn tls: .*: certificate: %s expires within 14 days"
                       % other[0].replace(".", r"\."), timeout=5)
    assert not proxy.log.find(r"certificate: %s expires" % certs.old[0].replace(".", r"\."))
    assert expiry_gauge(proxy) == {"tls": not_after(certs.old[0]), "other": not_after(soon[0])}

    mark = proxy.log.mark()
    replace(certs.new[1], other[1])
    replace(certs.new[0], other[0])
    proxy.log.wait_for(RELOADED, since=mark, timeout=SETTLE + 10, alive=proxy.check_alive)
    assert expiry_gauge(proxy) == {"tls": not_after(certs.old[0]), "other": not_after(certs.new[0])}
    assert served(proxy, certs.ctx, sni="other.test") == der(certs.new[0])
    assert served(proxy, certs.ctx) == der(certs.old[0])
