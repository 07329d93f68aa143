"""The login throttle in front of a real Dovecot (issue 13, point 7): the
backend's own verdict drives it. Dovecot counts every password it checks
(auth_verbose: one "Password mismatch" line each), so the tests count
what reached it from its log, and from the proxy's login lines (a
throttled attempt has backend=-).

Dovecot's own protections are turned off here (auth_failure_delay = 0, and
its per-address penalty, which would answer the 3rd guess after 10 s):
the legacy servers this proxy is for have none, and the tests stay short."""

import re
import time

import pytest

import imapfront_harness as h
import ops_support as ops
from dovecot import dovecot_factory  # noqa: F401
from test_gate import tls_session

PASSWORD = "Wr0ngSecret-Do-Not-Log"
DOVECOT_EXTRA = (
    "auth_verbose = yes",
    "auth_failure_delay = 0",
    "service anvil {",
    "  unix_listener anvil-auth-penalty {",
    "    mode = 0",
    "  }",
    "}",
)


@pytest.fixture(scope="module")
def dovecot(dovecot_factory):  # noqa: F811
    return dovecot_factory(extra=DOVECOT_EXTRA)


def mismatches(d, since, user="demo"):
    return d.log.find(r"auth: Info: passwd-file\(%s,[^)]*\): Password mismatch" % user, since)


def attempts(proxy, since, result):
    """The proxy's login lines of one result after a mark, as dicts."""
    return [h.parse_kv(m.group(1))
            for m in proxy.log.find(r"login: login \w+ (result=%s .*)$" % result, since)]


def login(c, tag, user, password):
    t0 = time.monotonic()
    _, tagged = c.command(tag, "LOGIN %s %s" % (user, password))
    return tagged, time.monotonic() - t0


def test_guessing_slows_down_then_stops_reaching_dovecot(dovecot, proxy_factory, ctx):
    mark = dovecot.log.mark()
    proxy = ops.start_proxy(proxy_factory, dovecot.port, extra={"login": {"delay_max": "1s"}})
    c = tls_session(proxy.port, ctx)
    answers, took = [], []
    for i in range(8):
        tagged, t = login(c, "G%d" % i, "demo", "%s%d" % (PASSWORD, i))
        answers.append(tagged)
        took.append(t)
    assert all(b" NO " in a for a in answers), answers
    # fail_free = 3 as fast as Dovecot answers; the next three wait 1 s
    # more (delay_max); then the proxy answers itself, at once.
    assert min(took[3:6]) >= max(took[:3]) + 0.8, took
    assert max(took[6:]) < 0.5, took
    assert len(attempts(proxy, 0, "failed")) == 6
    throttled = attempts(proxy, 0, "throttled")
    assert len(throttled) == 2 and all(kv["backend"] == "-" for kv in throttled), throttled
    h.wait_until(lambda: len(mismatches(dovecot, mark)) >= 6, 5, "Dovecot's 6 auth failures")

    # The account's owner, from another address: not locked out, answered
    # at once, by Dovecot.
    owner = h.TLSClient(proxy.port, ctx, source="127.0.0.2")
    owner.read_line()
    tagged, t = login(owner, "O", "demo", "demo")
    assert tagged.startswith(b"O OK"), tagged
    assert t < 0.5, t
    dovecot.log.wait_for(r"imap-login: Info: Login: user=<demo>", since=mark, timeout=5)
    assert len(mismatches(dovecot, mark)) == 6
    proxy.log.wait_for(r"login: login ok result=ok user=demo .*client=127\.0\.0\.2:", timeout=5)
    text = "\n".join(proxy.log.lines())
    assert PASSWORD not in text
    assert PASSWORD not in ops.scrape(proxy).text


def test_identical_wrong_password_counts_once_at_dovecot(dovecot, proxy_factory, ctx):
    mark = dovecot.log.mark()
    proxy = ops.start_proxy(proxy_factory, dovecot.port, extra={"login": {"delay_max": "1s"}})
    c = tls_session(proxy.port, ctx)
    for i in range(8):
        tagged, t = login(c, "R%d" % i, "demo", PASSWORD)
        assert b" NO " in tagged, tagged
        assert t < 0.9, (i, t)
    assert attempts(proxy, 0, "throttled") == []
    h.wait_until(lambda: len(mismatches(dovecot, mark)) >= 8, 5, "8 auth failures at Dovecot")
    tagged, _ = login(c, "OK", "demo", "demo")
    assert tagged.startswith(b"OK OK"), tagged


def test_trusted_networks_reach_dovecot_unthrottled(dovecot, proxy_factory, ctx):
    mark = dovecot.log.mark()
    proxy = ops.start_proxy(proxy_factory, dovecot.port,
                            extra={"login": {"delay_max": "1s",
                                             "trusted_networks": "127.0.0.0/8"}})
    c = tls_session(proxy.port, ctx)
    for i in range(8):
        tagged, t = login(c, "T%d" % i, "alice", "%s%d" % (PASSWORD, i))
        assert b" NO " in tagged and b"Authentication failed." in tagged, tagged
        assert t < 0.9, (i, t)
    h.wait_until(lambda: len(mismatches(dovecot, mark, "alice")) >= 8, 5,
                 "8 auth failures at Dovecot")
    assert attempts(proxy, 0, "throttled") == []
    assert ops.scrape(proxy).value("imapfront_logins_delayed_total") == 0
    assert not re.search(r"delay_ms=[1-9]", "\n".join(proxy.log.lines()))
