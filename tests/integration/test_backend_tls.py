"""TLS from the proxy to a backend ([backend] tls = on | starttls), against
a real Dovecot with a certificate from a test CA: a session relays through
it (imaplib APPEND then FETCH); the chain and the name are verified
(tls_ca_file, tls_server_name, the host as written); a wrong CA, or a
tls_pin_sha256 that does not match, fails the connect with a log line that
says why, and the client gets the usual "* BYE [UNAVAILABLE]"; tls_verify =
no accepts a self-signed certificate; -t warns about quirks = exchange55
with TLS."""

import base64
import hashlib
import imaplib
import os
import re
import ssl
import subprocess

import pytest

import imapfront_harness as h
import ops_support as ops
from dovecot import dovecot_factory  # noqa: F401

MESSAGE = b"From: a@example.org\r\nSubject: over TLS\r\n\r\nbody through two TLS legs\r\n"


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, timeout=30)


def make_ca(d, name):
    """A CA (cert, key) and a server certificate it signed for localhost and
    127.0.0.1: returns (ca_cert, server_cert, server_key)."""
    ca_key, ca_cert = os.path.join(d, name + "-ca.key"), os.path.join(d, name + "-ca.pem")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", ca_key, "-out", ca_cert, "-days", "30",
            "-subj", "/CN=imapfront test CA " + name,
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign")
    key, csr, cert = (os.path.join(d, name + "-srv" + ext) for ext in (".key", ".csr", ".pem"))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    ext = os.path.join(d, name + "-ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "30", "-extfile", ext)
    for p in (key, cert):
        os.chmod(p, 0o644)
    return ca_cert, cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("btls"))
    good = make_ca(d, "good")
    wrong = make_ca(d, "wrong")
    return {"ca": good[0], "cert": good[1], "key": good[2], "wrong_ca": wrong[0],
            "self_cert": h.make_cert(d, "selfsigned")}


def tls_dovecot(factory, cert, key):
    """Dovecot with ssl = required: STARTTLS on its plain port, TLS on an
    imaps port (returned as .imaps)."""
    imaps = h.free_port()
    d = factory(ssl_cert=cert, ssl_key=key, extra=[
        "ssl = required", "ssl_min_protocol = TLSv1.2",
        "service imap-login {", "  inet_listener imaps {", "    address = 127.0.0.1",
        "    port = %d" % imaps, "  }", "}"])
    h.wait_until(lambda: h.tcp_listening(imaps), 10, "Dovecot's imaps listener")
    d.imaps = imaps
    return d


@pytest.fixture(scope="module")
def dovecot_tls(dovecot_factory, pki):  # noqa: F811
    return tls_dovecot(dovecot_factory, pki["cert"], pki["key"])


def round_trip(proxy, ctx):
    """imaplib through the proxy: APPEND, then FETCH the message back."""
    c = imaplib.IMAP4_SSL("127.0.0.1", proxy.port, ssl_context=ctx, timeout=30)
    try:
        assert c.login("demo", "demo")[0] == "OK"
        typ, data = c.append("INBOX", None, None, MESSAGE)
        assert typ == "OK", data
        typ, data = c.select("INBOX")
        assert typ == "OK"
        typ, data = c.fetch(data[0], "(BODY.PEEK[])")
        assert typ == "OK"
        assert data[0][1] == MESSAGE
    finally:
        c.logout()


def backend(servers, **keys):
    section = {"servers": servers, "down_after": "5"}
    section.update(keys)
    return {"backend": section}


def expect_unavailable(proxy, ctx):
    with h.TLSClient(proxy.port, ctx) as c:
        line = c.read_line(timeout=15)
        assert line == b"* BYE [UNAVAILABLE] Backend server unavailable\r\n", line
        c.expect_eof()


def test_tls_on_relays_verified_by_address(dovecot_tls, pki, proxy_factory, ctx):
    S = ops.addr(dovecot_tls.imaps)
    proxy = ops.start_proxy(proxy_factory, dovecot_tls.imaps,
                            extra=backend(S, tls="on", tls_ca_file=pki["ca"]))
    round_trip(proxy, ctx)
    assert not proxy.log.find(r"connect failed")


def test_tls_on_by_name(dovecot_tls, pki, proxy_factory, ctx):
    S = "localhost:%d" % dovecot_tls.imaps
    proxy = ops.start_proxy(proxy_factory, dovecot_tls.imaps,
                            extra=backend(S, tls="on", tls_ca_file=pki["ca"]))
    assert ops.session_backend(proxy, ctx) == S
    round_trip(proxy, ctx)


def test_wrong_ca_fails_with_reason(dovecot_tls, pki, proxy_factory, ctx):
    S = ops.addr(dovecot_tls.imaps)
    proxy = ops.start_proxy(proxy_factory, dovecot_tls.imaps,
                            extra=backend(S, tls="on", tls_ca_file=pki["wrong_ca"]))
    mark = proxy.log.mark()
    expect_unavailable(proxy, ctx)
    proxy.log.wait_for(r"\bwarn backend: connect failed .*backend=%s reason=\"TLS handshake "
                       r"failed: CERTIFICATE_VERIFY_FAILED \(unable to get local issuer "
                       r"certificate\)\"" % S, since=mark, timeout=5)
    m = ops.scrape(proxy)
    assert m.value("imapfront_backend_connects_total", server=S, result="failed") == 1


def test_wrong_server_name_fails(dovecot_tls, pki, proxy_factory, ctx):
    S = ops.addr(dovecot_tls.imaps)
    proxy = ops.start_proxy(proxy_factory, dovecot_tls.imaps,
                            extra=backend(S, tls="on", tls_ca_file=pki["ca"],
                                          tls_server_name="mail.example.org"))
    mark = proxy.log.mark()
    expect_unavailable(proxy, ctx)
    proxy.log.wait_for(r"connect failed .*reason=\"TLS handshake failed: "
                       r"CERTIFICATE_VERIFY_FAILED \(Hostname mismatch\)\"", since=mark,
                       timeout=5)


def test_verify_off_accepts_self_signed(dovecot_factory, pki, proxy_factory, ctx):  # noqa: F811
    d = tls_dovecot(dovecot_factory, *pki["self_cert"])
    S = ops.addr(d.imaps)
    proxy = ops.start_proxy(proxy_factory, d.imaps, extra=backend(S, tls="on",
                                                                   tls_verify="no"))
    round_trip(proxy, ctx)
    # The same server with verification on (system store): refused.
    proxy2 = ops.start_proxy(proxy_factory, d.imaps, extra=backend(S, tls="on"))
    mark = proxy2.log.mark()
    expect_unavailable(proxy2, ctx)
    proxy2.log.wait_for(r"connect failed .*CERTIFICATE_VERIFY_FAILED", since=mark, timeout=5)


def test_tls_to_a_plaintext_server_fails_over(dovecot_tls, pki, backends, proxy_factory, ctx):
    """A server that does not speak TLS (the emulator's plain port) is a
    failed connect; the next server of the pool takes the session."""
    plain = backends()
    P, S = ops.addr(plain.port), ops.addr(dovecot_tls.imaps)
    proxy = ops.start_proxy(proxy_factory, plain.port,
                            extra=backend("%s, %s" % (P, S), tls="on", tls_ca_file=pki["ca"],
                                          connect_timeout="2s"))
    mark = proxy.log.mark()
    assert ops.session_backend(proxy, ctx) == S
    assert proxy.log.find(r"connect failed .*backend=%s reason=\"(TLS handshake failed|connect "
                          r"timeout \(in the TLS handshake\))" % P, mark)


def test_starttls_relays(dovecot_tls, pki, proxy_factory, ctx):
    """STARTTLS on Dovecot's plain port (ssl = required: no login without
    it). The client sees a greeting whose capabilities are those Dovecot
    gives under TLS (no STARTTLS, no LOGINDISABLED), then a full session."""
    S = ops.addr(dovecot_tls.port)
    proxy = ops.start_proxy(proxy_factory, dovecot_tls.port,
                            extra=backend(S, tls="starttls", tls_ca_file=pki["ca"]))
    with h.TLSClient(proxy.port, ctx) as c:
        greeting = c.read_line(timeout=15)
        assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1"), greeting
        assert b"LOGINDISABLED" not in greeting and b"STARTTLS" not in greeting, greeting
        assert greeting.endswith(b"] Dovecot (Debian) ready.\r\n") or b"ready" in greeting
    round_trip(proxy, ctx)
    assert not proxy.log.find(r"connect failed")


def test_starttls_wrong_ca(dovecot_tls, pki, proxy_factory, ctx):
    S = ops.addr(dovecot_tls.port)
    proxy = ops.start_proxy(proxy_factory, dovecot_tls.port,
                            extra=backend(S, tls="starttls", tls_ca_file=pki["wrong_ca"]))
    mark = proxy.log.mark()
    expect_unavailable(proxy, ctx)
    proxy.log.wait_for(r"connect failed .*backend=%s reason=\"TLS handshake failed: "
                       r"CERTIFICATE_VERIFY_FAILED" % S, since=mark, timeout=5)


def test_starttls_refused_by_plain_server(backends, pki, proxy_factory, ctx):
    """The emulator's plain port does not offer STARTTLS: a failed connect
    that says what the server answered."""
    plain = backends()
    P = ops.addr(plain.port)
    proxy = ops.start_proxy(proxy_factory, plain.port,
                            extra=backend(P, tls="starttls", tls_ca_file=pki["ca"]))
    mark = proxy.log.mark()
    expect_unavailable(proxy, ctx)
    proxy.log.wait_for(r"connect failed .*backend=%s reason=\"STARTTLS refused: " % P,
                       since=mark, timeout=5)


@pytest.mark.parametrize("tls", ["on", "starttls"])
def test_health_checks_use_tls(dovecot_tls, pki, proxy_factory, ctx, tls):
    port = dovecot_tls.imaps if tls == "on" else dovecot_tls.port
    S = ops.addr(port)
    proxy = ops.start_proxy(proxy_factory, port, extra=backend(
        S, tls=tls, tls_ca_file=pki["ca"], check="login", check_user="demo",
        check_password="demo", check_interval="200ms", check_timeout="3s", down_after="1"))
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_checks_total", server=S,
                                              result="ok") >= 2,
                     timeout=15, what="passing TLS checks")
    assert not proxy.log.find(r"check failed|out of rotation")


def test_health_check_wrong_ca(dovecot_tls, pki, proxy_factory, ctx):
    S = ops.addr(dovecot_tls.imaps)
    proxy = ops.start_proxy(proxy_factory, dovecot_tls.imaps, extra=backend(
        S, tls="on", tls_ca_file=pki["wrong_ca"], check="banner", check_interval="200ms",
        check_timeout="3s", down_after="1"))
    proxy.log.wait_for(r"\bwarn backend: server failed its check, out of rotation "
                       r"backend=%s step=\"TLS handshake\" reason=\"TLS handshake failed: "
                       r"CERTIFICATE_VERIFY_FAILED" % S, timeout=10, alive=proxy.check_alive)


def pins(cert_path):
    """(SHA-256 of the certificate in hex with colons, of its public key in
    base64), as an operator computes them with openssl."""
    with open(cert_path) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    cert_hex = ":".join("%02X" % b for b in hashlib.sha256(der).digest())
    pub = subprocess.run(["openssl", "x509", "-in", cert_path, "-pubkey", "-noout"],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    spki = base64.b64decode("".join(l for l in pub.splitlines() if not l.startswith("-----")))
    return cert_hex, base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.mark.parametrize("which", ["certificate", "public-key"])
def test_pin_right(dovecot_tls, pki, proxy_factory, ctx, which):
    cert_pin, key_pin = pins(pki["cert"])
    S = ops.addr(dovecot_tls.imaps)
    proxy = ops.start_proxy(proxy_factory, dovecot_tls.imaps, extra=backend(
        S, tls="on", tls_ca_file=pki["ca"],
        tls_pin_sha256=cert_pin if which == "certificate" else key_pin))
    round_trip(proxy, ctx)


def test_pin_wrong(dovecot_tls, pki, proxy_factory, ctx):
    """A pin of another certificate: refused even though the chain verifies,
    and the log shows what was expected and what the server had."""
    other_cert, other_key = pins(pki["self_cert"][0])
    cert_pin, key_pin = pins(pki["cert"])
    S = ops.addr(dovecot_tls.imaps)
    proxy = ops.start_proxy(proxy_factory, dovecot_tls.imaps, extra=backend(
        S, tls="on", tls_ca_file=pki["ca"], tls_pin_sha256=other_key))
    mark = proxy.log.mark()
    expect_unavailable(proxy, ctx)
    cert_b64 = base64.b64encode(bytes.fromhex(cert_pin.replace(":", ""))).decode()
    proxy.log.wait_for(r"connect failed .*backend=%s reason=\"TLS pin mismatch: expected %s, got "
                       r"certificate %s, public key %s\"" % (
                           S, re.escape(other_key), re.escape(cert_b64), re.escape(key_pin)),
                       since=mark, timeout=5)


def check_config(path):
    return subprocess.run([h.BIN, "-t", "-c", str(path)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30)


def test_check_config_warns_exchange55_over_tls(need_bin, cert, tmp_path):
    path = tmp_path / "p.ini"
    path.write_text(h.render_ini({
        "listen.imaps": {"address": "127.0.0.1:0"},
        "tls": {"certificate": cert[0], "private_key": cert[1]},
        "backend": {"servers": "127.0.0.1:993", "tls": "on", "quirks": "exchange55"},
        "backend.new": {"servers": "127.0.0.1:143", "tls": "starttls"},
        "route": {"default": "default"},
    }))
    r = check_config(path)
    assert r.returncode == 0, r.stderr
    assert ("[backend] quirks = exchange55 with tls = on: Exchange 5.5's receive bug (Q239082) "
            "lives in its TLS path") in r.stderr
    assert "[backend.new] quirks" not in r.stderr


def test_check_config_bad_ca_file(need_bin, cert, tmp_path):
    path = tmp_path / "p.ini"
    path.write_text(h.render_ini({
        "listen.imaps": {"address": "127.0.0.1:0"},
        "tls": {"certificate": cert[0], "private_key": cert[1]},
        "backend": {"servers": "127.0.0.1:993", "tls": "on",
                    "tls_ca_file": str(tmp_path / "missing.pem")},
    }))
    r = check_config(path)
    assert r.returncode == 1
    assert "[backend] tls_ca_file: cannot load %s: " % (tmp_path / "missing.pem") in r.stderr


EXCHANGE55 = ("Microsoft Exchange Server IMAP4rev1 server version 5.5.2653.23 "
              "(mail.example.org) ready")


def test_exchange55_detected_over_tls_warns_once(emulator_factory, cert, proxy_factory, ctx):
    """The emulator's TLS port greeting like Exchange 5.5: with quirks =
    auto the proxy logs the Q239082 warning once for that server, not once
    per session."""
    emulator = emulator_factory(flags=["--greeting", EXCHANGE55])
    S = "localhost:%d" % emulator.tls_port
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra=backend(S, tls="on", tls_ca_file=cert[0]))
    assert ops.session_backend(proxy, ctx) == S
    assert ops.session_backend(proxy, ctx) == S
    warning = (r"\bwarn backend: Exchange 5\.5 reached over TLS: its receive bug \(Q239082\) "
               r"lives in its TLS path, where the shields cannot reach it backend=%s$" % S)
    proxy.log.wait_for(warning, timeout=5)
    assert len([ln for ln in proxy.log.lines() if re.search(warning, ln)]) == 1


def test_big_message_through_both_tls_legs(dovecot_tls, pki, proxy_factory, ctx):
    """8 MiB each way through a 64k buffer_limit: the backend side's
    ciphertext chains are under the same watermarks as the rest."""
    S = ops.addr(dovecot_tls.imaps)
    extra = backend(S, tls="on", tls_ca_file=pki["ca"])
    extra["imap"] = {"buffer_limit": "64k"}
    proxy = ops.start_proxy(proxy_factory, dovecot_tls.imaps, extra=extra)
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!#%&()*+,-./:;<=>?\r\n"
    body = b"Subject: big\r\n\r\n" + line * ((8 << 20) // len(line))
    c = imaplib.IMAP4_SSL("127.0.0.1", proxy.port, ssl_context=ctx, timeout=60)
    try:
        assert c.login("demo", "demo")[0] == "OK"
        c.create("Big")
        typ, data = c.append("Big", None, None, body)
        assert typ == "OK", data
        typ, data = c.select("Big")
        assert typ == "OK"
        typ, data = c.fetch(data[0], "(BODY.PEEK[])")
        assert typ == "OK"
        assert hashlib.sha256(data[0][1]).hexdigest() == hashlib.sha256(body).hexdigest()
    finally:
        c.logout()


def test_silent_server_times_out_in_handshake(dovecot_tls, pki, proxy_factory, ctx):
    """A server that accepts and never answers the ClientHello: the connect
    timer covers the handshake, and the next server takes the session."""
    silent = h.FakeBackend(lambda conn: conn.recv(65536) and conn.recv(65536))
    try:
        Q, S = ops.addr(silent.port), ops.addr(dovecot_tls.imaps)
        proxy = ops.start_proxy(proxy_factory, silent.port, extra=backend(
            "%s, %s" % (Q, S), tls="on", tls_ca_file=pki["ca"], connect_timeout="500ms"))
        mark = proxy.log.mark()
        assert ops.session_backend(proxy, ctx) == S
        assert proxy.log.find(r"connect failed .*backend=%s reason=\"connect timeout \(in the TLS "
                              r"handshake\)\"" % Q, mark)
    finally:
        silent.stop()


def test_reload_fixes_the_ca(dovecot_tls, pki, proxy_factory, ctx):
    """SIGHUP builds the pools' TLS contexts anew: a wrong CA replaced by the
    right one lets new sessions through; a CA file that cannot be read
    refuses the reload and keeps the running one."""
    S = ops.addr(dovecot_tls.imaps)
    proxy = ops.start_proxy(proxy_factory, dovecot_tls.imaps,
                            extra=backend(S, tls="on", tls_ca_file=pki["wrong_ca"]))
    expect_unavailable(proxy, ctx)
    ops.rewrite_ini(proxy, {"backend": {"tls_ca_file": pki["ca"]}})
    ops.sighup(proxy, ops.RELOADED)
    round_trip(proxy, ctx)
    missing = pki["ca"] + ".missing"
    ops.rewrite_ini(proxy, {"backend": {"tls_ca_file": missing}})
    m = ops.sighup(proxy, ops.RELOAD_FAILED)
    assert "[backend] tls_ca_file: cannot load %s: " % missing in m.group(1)
    round_trip(proxy, ctx)


# ------------------------------------------------ login-first over TLS ----

def test_login_first_routes_to_tls_pools(dovecot_tls, pki, emulator_factory, proxy_factory,
                                         tmp_path, ctx):
    """The migration: the emulator is the legacy pool (plaintext), Dovecot
    the new one over TLS (alice by tls = on, bob's pool by starttls, carol's
    pool with the wrong CA). Each logs in through the proxy's own greeting;
    a failed login on the TLS pool retried as a user of the plain pool
    switches the backend connection; the unverifiable pool answers NO and
    logs why."""
    emu = emulator_factory()
    path = str(tmp_path / "route.map")
    with open(path, "w") as f:
        f.write("alice new\nbob newst\ncarol bad\ndemo default\n")
    proxy = ops.start_proxy(proxy_factory, emu.plain_port, extra={
        "route": {"map": path},
        "backend.new": {"servers": "localhost:%d" % dovecot_tls.imaps, "tls": "on",
                        "tls_ca_file": pki["ca"]},
        "backend.newst": {"servers": ops.addr(dovecot_tls.port), "tls": "starttls",
                          "tls_ca_file": pki["ca"]},
        "backend.bad": {"servers": ops.addr(dovecot_tls.imaps), "tls": "on",
                        "tls_ca_file": pki["wrong_ca"]},
    })
    mark = proxy.log.mark()
    with h.TLSClient(proxy.port, ctx) as a:
        assert a.read_line().startswith(b"* OK [CAPABILITY IMAP4rev1")
        assert a.command("A", "LOGIN alice secret")[1].startswith(b"A OK")
        assert a.command("S", "SELECT INBOX")[1].startswith(b"S OK")
        assert a.command("Z", "LOGOUT")[1].startswith(b"Z OK")
    with h.TLSClient(proxy.port, ctx) as b:
        b.read_line()
        assert b.command("B", "LOGIN bob nopassword")[1].startswith(b"B NO")
        assert b.command("D", "LOGIN demo demo")[1].startswith(b"D OK")
        assert b.command("S", "SELECT INBOX")[1].startswith(b"S OK")
    proxy.log.wait_for(r"login: login ok result=ok user=alice .*backend=localhost:%d .*pool=new$"
                       % dovecot_tls.imaps, since=mark)
    proxy.log.wait_for(r"login: login ok result=ok user=demo .*pool=default$", since=mark)
    with h.TLSClient(proxy.port, ctx) as c:
        c.read_line()
        tagged = c.command("C", "LOGIN carol secret")[1]
        assert tagged.startswith(b"C NO [UNAVAILABLE]"), tagged
    proxy.log.wait_for(r"connect failed .*backend=%s reason=\"TLS handshake failed: "
                       r"CERTIFICATE_VERIFY_FAILED" % ops.addr(dovecot_tls.imaps), since=mark)
