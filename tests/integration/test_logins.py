"""Logins the proxy sees: one log line per attempt, the user in the
summary line, and failed logins throttled by the backend's own verdict.
The emulator's --record shows how many LOGINs reached the backend."""

import re
import time

import imapfront_harness as h
import ops_support as ops
from test_gate import backend_rows, tls_session

PASSWORD = "Wr0ngSecret-Do-Not-Log"


def logins_at_backend(emu):
    return [r["line"] for r in backend_rows(emu, 0)
            if "line" in r and re.match(r"^\S+ LOGIN ", r["line"], re.I)]


def start(proxy_factory, emulator_factory, login):
    emu = emulator_factory(record=True)
    proxy = ops.start_proxy(proxy_factory, emu.plain_port, extra={"login": login})
    return proxy, emu


def test_guessing_slows_down_then_stops_reaching_the_backend(proxy_factory, emulator_factory,
                                                             ctx):
    proxy, emu = start(proxy_factory, emulator_factory, {"delay_max": "1s"})
    c = tls_session(proxy.port, ctx)
    took = []
    answers = []
    for i in range(8):
        t0 = time.monotonic()
        _, tagged = c.command("G%d" % i, "LOGIN demo %s%d" % (PASSWORD, i))
        took.append(time.monotonic() - t0)
        answers.append(tagged)
    assert all(b" NO " in a for a in answers), answers
    # fail_free = 3 answered at once; then delayed (delay_max 1s).
    assert max(took[:3]) < 0.9, took
    assert min(took[3:6]) >= 0.9, took
    # fail_ban = 6: the 7th and 8th never reach the backend.
    assert len(logins_at_backend(emu)) == 6
    assert b"[AUTHENTICATIONFAILED]" in answers[6]
    # The owner from the same address is refused too while banned, but a
    # success elsewhere is unaffected: another user logs in fine.
    c2 = tls_session(proxy.port, ctx)
    _, ok = c2.command("L", "LOGIN other other")  # unknown to the emulator: fails
    assert b" NO " in ok
    text = "\n".join(proxy.log.lines())
    assert PASSWORD not in text
    assert re.search(r"login: login failed result=failed user=demo authz=- mech=LOGIN client=127\.0\.0\.1:\d+",
                     text), text
    assert "result=throttled user=demo" in text
    m = ops.scrape(proxy)
    assert m.value("imapfront_logins_total", result="failed", mechanism="login") == 7
    assert m.value("imapfront_logins_total", result="throttled", mechanism="login") == 2
    assert m.value("imapfront_logins_delayed_total") == 3
    assert m.value("imapfront_login_bans") >= 1
    assert m.value("imapfront_login_tracked") >= 2
    assert PASSWORD not in m.text

    # The account's owner, from another address, is not locked out by
    # someone else's guessing (user_lockout = off): answered at once.
    owner = h.TLSClient(proxy.port, ctx, source="127.0.0.2")
    owner.read_line()
    t0 = time.monotonic()
    _, ok = owner.command("O", "LOGIN demo demo")
    assert ok.startswith(b"O OK"), ok
    assert time.monotonic() - t0 < 0.9
    proxy.log.wait_for(r"login: login ok result=ok user=demo .*client=127\.0\.0\.2:", timeout=5)


def test_identical_wrong_password_counts_once(proxy_factory, emulator_factory, ctx):
    proxy, emu = start(proxy_factory, emulator_factory, {"delay_max": "1s"})
    c = tls_session(proxy.port, ctx)
    for i in range(10):
        t0 = time.monotonic()
        _, tagged = c.command("R%d" % i, "LOGIN demo {%d+}\r\n%s" % (len(PASSWORD), PASSWORD))
        assert b" NO " in tagged and b"AUTHENTICATIONFAILED] Authentication failed" not in tagged
        assert time.monotonic() - t0 < 0.9
    assert len(logins_at_backend(emu)) == 10
    _, ok = c.command("OK", "LOGIN {4+}\r\ndemo demo")
    assert ok.startswith(b"OK OK"), ok
    c.command("Z", "LOGOUT")
    proxy.log.wait_for(r"session: closed .* user=demo ", timeout=5)
    text = "\n".join(proxy.log.lines())
    assert PASSWORD not in text
    assert re.search(r"session: closed .* user=demo ", text), text


def test_trusted_networks_are_not_throttled(proxy_factory, emulator_factory, ctx):
    proxy, emu = start(proxy_factory, emulator_factory,
                       {"trusted_networks": "127.0.0.0/8", "delay_max": "1s"})
    c = tls_session(proxy.port, ctx)
    for i in range(8):
        t0 = time.monotonic()
        _, tagged = c.command("T%d" % i, "LOGIN demo x%d" % i)
        assert b" NO " in tagged
        assert time.monotonic() - t0 < 0.9
    assert len(logins_at_backend(emu)) == 8


def test_parallel_logins_of_one_user_are_not_refused(proxy_factory, emulator_factory, ctx):
    """A user's mail clients open several connections at once: with no
    failure recorded, 12 LOGINs in progress together (over fail_ban) all
    reach the backend and succeed."""
    proxy, emu = start(proxy_factory, emulator_factory, {})
    clients = [tls_session(proxy.port, ctx) for _ in range(12)]
    for i, c in enumerate(clients):
        c.write(b"P%d LOGIN demo demo\r\n" % i)
    for i, c in enumerate(clients):
        _, tagged = c.read_until_tagged("P%d" % i)
        assert tagged.startswith(b"P%d OK" % i), tagged
        c.close()
    assert len(logins_at_backend(emu)) == 12


def test_many_users_behind_one_address_log_in_at_once(backends, proxy_factory, ctx):
    """60 different users behind one address (a NAT after a failover) send
    their LOGINs at once, after one of them mistyped a password: all reach
    the backend and succeed. (Was: past 32 logins in progress from one
    address the proxy refused the rest with NO [AUTHENTICATIONFAILED].)"""
    n = 60
    users = ",".join("u%d:p%d" % (i, i) for i in range(n))
    b = backends(users=users)
    proxy = ops.start_proxy(proxy_factory, b.port)
    c = tls_session(proxy.port, ctx)
    _, tagged = c.command("T", "LOGIN u0 typo")
    assert b" NO " in tagged, tagged
    c.close()
    clients = [tls_session(proxy.port, ctx) for _ in range(n)]
    for i, c in enumerate(clients):
        c.write(b"N%d LOGIN u%d p%d\r\n" % (i, i, i))
    answers = []
    for i, c in enumerate(clients):
        answers.append(c.read_until_tagged("N%d" % i, timeout=20)[1])
        c.close()
    bad = [a for a in answers if b" OK " not in a]
    assert not bad, bad[:3]
    m = ops.scrape(proxy)
    assert m.value("imapfront_logins_total", result="ok", mechanism="login") == n
    assert m.get("imapfront_logins_total", result="throttled", mechanism="login", default=0) == 0


def test_workers_share_the_counters(proxy_factory, emulator_factory, ctx):
    """With two workers, guesses spread over many sessions (the kernel
    picks the worker of each) still meet one table: 10 guesses, one per
    session, and only fail_ban = 6 reach the backend."""
    emu = emulator_factory(record=True)
    proxy = ops.start_proxy(proxy_factory, emu.plain_port,
                            extra={"proxy": {"workers": "2"}, "login": {"delay_max": "200ms"}})
    answers = []
    for i in range(10):
        c = tls_session(proxy.port, ctx)
        _, tagged = c.command("W%d" % i, "LOGIN demo %s%d" % (PASSWORD, i))
        answers.append(tagged)
        c.close()
    assert all(b" NO " in a for a in answers), answers
    assert len(logins_at_backend(emu)) == 6, logins_at_backend(emu)
    assert all(b"[AUTHENTICATIONFAILED]" in a for a in answers[6:]), answers[6:]
