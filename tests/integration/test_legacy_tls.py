"""Old clients, on request only: [tls] min_version = 1.0 or 1.1 with
legacy_ciphers = on lets a TLS 1.0/1.1 client in (BoringSSL still speaks
them when asked to), a TLS 1.2 client that has only CBC suites gets one of
the ECDHE CBC suites, both settings are warned about at start and reload,
and the version shows in the session summary and in the metrics. The
defaults refuse all of this (test_tls_defaults.py checks them in depth).

Python's OpenSSL refuses TLS 1.0/1.1 and SHA-1 signatures at its default
security level: the client contexts here lower it to 0."""

import ssl

import pytest

import imapfront_harness as h
import ops_support as ops

LEGACY = {"tls": {"min_version": "1.0", "legacy_ciphers": "on"}}


def old_client(cert, version, ciphers=None):
    ctx = h.client_context(cert[0], minimum=version, maximum=version, seclevel0=True)
    if ciphers:
        ctx.set_ciphers(ciphers + ":@SECLEVEL=0")
    return ctx


def session_through(proxy, ctx):
    """A TLS session that logs in and out; returns (version, cipher)."""
    with h.TLSClient(proxy.port, ctx) as c:
        version, cipher = c.version, c.cipher[0]
        h.login(c)
        _, tagged = c.command("Z", "LOGOUT")
        assert tagged.startswith(b"Z OK"), tagged
    return version, cipher


def refused(proxy, ctx):
    with pytest.raises((ssl.SSLError, ConnectionResetError, h.Closed)):
        with h.TLSClient(proxy.port, ctx, timeout=5) as c:
            c.read_line()


@pytest.mark.parametrize("version,name", [(ssl.TLSVersion.TLSv1, "TLSv1"),
                                          (ssl.TLSVersion.TLSv1_1, "TLSv1.1")])
def test_old_versions_on_request(emulator, proxy_factory, cert, version, name):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port, extra=LEGACY)
    proxy.log.wait_for(r"warn tls: \[tls\] min_version = 1\.0: clients may use TLS 1\.0 and 1\.1")
    proxy.log.wait_for(r"warn tls: \[tls\] legacy_ciphers = on")
    mark = proxy.log.mark()
    got, cipher = session_through(proxy, old_client(cert, version))
    assert got == name
    assert cipher.startswith("ECDHE-") and cipher.endswith("-SHA"), cipher
    # The summary line names the version; the metrics count it.
    summary = ops.closes(proxy, mark) and proxy.closed_lines(mark)[0]
    assert summary["tls"] == name, summary
    m = ops.scrape(proxy)  # (cipher labels use the standard suite names)
    labels = [ls for ls in m.labelsets("imapfront_tls_sessions_total") if ls["version"] == name]
    assert len(labels) == 1, labels
    assert m.value("imapfront_tls_sessions_total", **labels[0]) == 1
    assert "_CBC_" in labels[0]["cipher"], labels


def test_min_version_1_1_refuses_1_0(emulator, proxy_factory, cert):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra={"tls": {"min_version": "1.1", "legacy_ciphers": "on"}})
    refused(proxy, old_client(cert, ssl.TLSVersion.TLSv1))
    assert session_through(proxy, old_client(cert, ssl.TLSVersion.TLSv1_1))[0] == "TLSv1.1"


def test_cbc_only_tls12_client(emulator, proxy_factory, cert):
    cbc = "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA"
    ctx = old_client(cert, ssl.TLSVersion.TLSv1_2, ciphers=cbc)
    plain = ops.start_proxy(proxy_factory, emulator.plain_port)
    refused(plain, ctx)
    legacy = ops.start_proxy(proxy_factory, emulator.plain_port,
                             extra={"tls": {"legacy_ciphers": "on"}})
    version, cipher = session_through(legacy, ctx)
    assert (version, cipher) == ("TLSv1.2", "ECDHE-ECDSA-AES128-SHA")
    # A modern client still gets an AEAD suite first.
    modern = h.client_context(cert[0], maximum=ssl.TLSVersion.TLSv1_2)
    assert session_through(legacy, modern)[1] == "ECDHE-ECDSA-AES128-GCM-SHA256"


def test_defaults_refuse_old_versions(emulator, proxy_factory, cert):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port)
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        refused(proxy, old_client(cert, version))
    assert not proxy.log.find(r"warn tls: \[tls\] (min_version|legacy_ciphers)")


def test_warned_again_at_reload(emulator, proxy_factory):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port)
    ops.rewrite_ini(proxy, LEGACY)
    mark = proxy.log.mark()
    ops.sighup(proxy, ops.RELOADED)
    assert proxy.log.find(r"warn tls: \[tls\] min_version = 1\.0", mark)
    assert proxy.log.find(r"warn tls: \[tls\] legacy_ciphers = on", mark)


def test_old_version_without_legacy_ciphers_is_a_config_error(emulator, proxy_factory):
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port)
    ops.rewrite_ini(proxy, {"tls": {"min_version": "1.0"}})
    m = ops.sighup(proxy, ops.RELOAD_FAILED)
    assert "min_version: TLS 1.0 and 1.1 need legacy_ciphers = on" in m.group(1)
