"""ALPN and SNI.

ALPN: "imap" is selected when offered (alone or among others); a client
offering ALPN without "imap" speaks something else and is refused with a
fatal no_application_protocol alert, and the failure is logged.

SNI: [certificate.NAME] sections (certificate, private_key, server_names,
wildcards "*.domain" standing for one label) are chosen by the name the
client sends; no name or an unknown one gets [tls]'s certificate. The
certificate is told apart by its CN."""

import ssl

import pytest

import imapfront_harness as h
from dovecot import PlainClient, TLSOver, make_named_cert, starttls_proxy


@pytest.fixture(scope="module")
def sni_certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("sni"))
    return {"a": make_named_cert(d, "a.test"),
            "b": make_named_cert(d, "b.test", ["b.test", "*.wild.test"])}


@pytest.fixture
def sni_proxy(proxy_factory, emulator, sni_certs):
    """(proxy, starttls_port): [tls] is the harness's localhost certificate;
    a.test and b.test / *.wild.test have their own."""
    extra = {}
    for name, (crt, key) in sni_certs.items():
        names = "a.test" if name == "a" else "b.test, *.wild.test"
        extra["certificate." + name] = {"certificate": crt, "private_key": key,
                                        "server_names": names}
    return starttls_proxy(proxy_factory, emulator.plain_port, extra=extra)


def verifying_context(cafiles, version=None, alpn=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # which certificate came is the question
    for f in cafiles:
        ctx.load_verify_locations(f)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def peer_cn(client):
    subject = client.obj.getpeercert()["subject"]
    return dict(x[0] for x in subject)["commonName"]


# ------------------------------------------------------------------ ALPN ----

@pytest.mark.parametrize("offer", [["imap"], ["h2", "imap", "http/1.1"], None],
                         ids=["imap", "h2-imap-http", "none"])
def test_alpn_imap_selected_or_absent(proxy, ctx, cert, offer):
    c_ctx = h.client_context(cert[0], alpn=offer)
    with TLSOver.connect(proxy.port, c_ctx) as c:
        assert c.alpn == ("imap" if offer else None), c.alpn
        assert c.read_line().startswith(b"* OK")
        _, tagged = c.command("N", "NOOP")
        assert tagged.startswith(b"N OK"), tagged


def expect_alpn_refusal(connect, proxy, mark):
    with pytest.raises(ssl.SSLError) as e:
        with connect() as c:
            c.read_line(timeout=5)
    assert "NO_APPLICATION_PROTOCOL" in str(e.value).upper().replace(" ", "_"), e.value
    m = proxy.log.wait_for(r"\btls: handshake failed\b(.*)$", since=mark, timeout=5)
    kv = h.parse_kv(m.group(1))
    reason = kv.get("reason", "").lower()
    assert "alpn" in reason or "application_protocol" in reason, m.group(0)


def test_alpn_h2_only_refused_with_alert(proxy, cert):
    mark = proxy.log.mark()
    before = proxy.stats()
    c_ctx = h.client_context(cert[0], alpn=["h2"])
    expect_alpn_refusal(lambda: TLSOver.connect(proxy.port, c_ctx), proxy, mark)
    proxy.wait_stats(lambda s: s["handshakes_failed"] >= before["handshakes_failed"] + 1,
                     what="handshakes_failed to grow")


def test_alpn_h2_only_refused_after_starttls(proxy_factory, emulator, cert):
    proxy, port = starttls_proxy(proxy_factory, emulator.plain_port)
    mark = proxy.log.mark()
    c_ctx = h.client_context(cert[0], alpn=["h2"])

    def connect():
        p = PlainClient(port)
        p.read_line()
        _, tagged = p.command("S", "STARTTLS")
        assert tagged.startswith(b"S OK"), tagged
        return p.starttls(c_ctx)

    expect_alpn_refusal(connect, proxy, mark)


def test_alpn_imap_after_starttls(proxy_factory, emulator, cert):
    proxy, port = starttls_proxy(proxy_factory, emulator.plain_port)
    with PlainClient(port) as p:
        p.read_line()
        p.command("S", "STARTTLS")
        c = p.starttls(h.client_context(cert[0], alpn=["imap"]))
        assert c.alpn == "imap"
        _, tagged = c.command("N", "NOOP")
        assert tagged.startswith(b"N OK"), tagged


# ------------------------------------------------------------------- SNI ----

CASES = [
    ("a.test", "a.test"),
    ("A.Test", "a.test"),        # names are case-insensitive
    ("b.test", "b.test"),
    ("x.wild.test", "b.test"),   # one label for the "*"
    ("a.b.wild.test", "localhost"),  # two labels: no match
    ("wild.test", "localhost"),  # the wildcard needs a label
    ("unknown.test", "localhost"),
    (None, "localhost"),         # no SNI at all
]


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_sni_chooses_certificate(sni_proxy, sni_certs, cert, version):
    proxy, _ = sni_proxy
    ctx = verifying_context([cert[0], sni_certs["a"][0], sni_certs["b"][0]],
                            version=getattr(ssl.TLSVersion, version))
    for name, cn in CASES:
        with TLSOver.connect(proxy.port, ctx, server_hostname=name) as c:
            assert peer_cn(c) == cn, (name, peer_cn(c))
            assert c.read_line().startswith(b"* OK")
            _, tagged = c.command("N", "NOOP")
            assert tagged.startswith(b"N OK"), tagged


def test_sni_after_starttls_and_with_alpn(sni_proxy, sni_certs, cert):
    proxy, port = sni_proxy
    ctx = verifying_context([cert[0], sni_certs["a"][0], sni_certs["b"][0]], alpn=["imap"])
    for name, cn in (("a.test", "a.test"), ("x.wild.test", "b.test"), (None, "localhost")):
        with PlainClient(port) as p:
            p.read_line()
            p.command("S", "STARTTLS")
            c = p.starttls(ctx, server_hostname=name)
            assert peer_cn(c) == cn, (name, peer_cn(c))
            assert c.alpn == "imap"
            _, tagged = c.command("L", "LOGIN demo demo")
            assert tagged.startswith(b"L OK"), tagged
    # ALPN refusal holds on an SNI certificate's context too.
    mark = proxy.log.mark()
    h2 = verifying_context([sni_certs["a"][0]], alpn=["h2"])
    expect_alpn_refusal(lambda: TLSOver.connect(proxy.port, h2, server_hostname="a.test"),
                        proxy, mark)
