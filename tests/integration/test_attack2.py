"""Attacks from outside on the login throttle, the login log line and the
admission queue. Each test is what a guesser or an impatient client would
try; the emulator's --record shows what reached the backend."""

import base64
import re
import signal
import time

import imapfront_harness as h
import ops_support as ops
from test_gate import backend_rows, plain_session, tls_session

PASSWORD = "Wr0ngSecret-Do-Not-Log"
FAIL_BAN = 6
# Quick answers: the delays are not what these tests look at.
FAST = {"delay_max": "50ms"}
GUESS_RE = re.compile(r"^\S+ +(LOGIN|AUTHENTICATE) ", re.I)
SHUTDOWN = b"* BYE [UNAVAILABLE] Server shutting down\r\n"


def guesses_at_backend(emu):
    return [r["line"] for r in backend_rows(emu, 0) if "line" in r and GUESS_RE.match(r["line"])]


def start(proxy_factory, emulator_factory, login=None, extra=None):
    emu = emulator_factory(record=True)
    proxy = ops.start_proxy(proxy_factory, emu.plain_port,
                            extra=ops.merge({"login": dict(FAST, **(login or {}))}, extra))
    return proxy, emu


def plain_b64(user, password, authz=""):
    return base64.b64encode(("%s\0%s\0%s" % (authz, user, password)).encode()).decode()


def guess_all(c, commands):
    answers = []
    for i, text in enumerate(commands):
        _, tagged = c.command("G%d" % i, text)
        answers.append(tagged)
    return answers


# ------------------------------------------------------------ throttle ----

def test_reused_tag_gets_no_extra_guesses(proxy_factory, emulator_factory, ctx):
    proxy, emu = start(proxy_factory, emulator_factory)
    c = tls_session(proxy.port, ctx)
    # One after another with the same tag, then two in flight with one tag.
    for i in range(8):
        _, tagged = c.command("X", "LOGIN demo r%d" % i)
        assert b" NO " in tagged, tagged
    c.write(b"Y LOGIN demo y1\r\nY LOGIN demo y2\r\n")
    lines = [c.read_line(timeout=30) for _ in range(2)]
    assert all(l.startswith(b"Y ") for l in lines), lines
    assert len(guesses_at_backend(emu)) <= FAIL_BAN, guesses_at_backend(emu)


def test_login_before_tls_never_reaches_the_backend(proxy_factory, emulator_factory, ctx):
    emu = emulator_factory(record=True)
    proxy = ops.start_proxy(proxy_factory, emu.plain_port, extra={
        "login": FAST, "proxy": {"log_level": "debug"},
        "listen.imap": {"address": "127.0.0.1:0", "mode": "starttls", "require_tls": "yes"}})
    port = ops.listener_port(proxy, "imap")
    c = plain_session(port)
    for i, text in enumerate(["LOGIN demo %s" % PASSWORD, "login demo %s" % PASSWORD,
                              "AUTHENTICATE PLAIN " + plain_b64("demo", PASSWORD)]):
        _, tagged = c.command("P%d" % i, text)
        assert b"NO [PRIVACYREQUIRED]" in tagged, tagged
    c.write(b"Q LOGIN demo {%d+}\r\n%s\r\n" % (len(PASSWORD), PASSWORD.encode()))
    _, tagged = c.read_until_tagged("Q")
    assert b"NO" in tagged or b"BAD" in tagged, tagged
    assert guesses_at_backend(emu) == []
    assert PASSWORD not in proxy.log.text()


# ------------------------------------------------------------- the log ----

def test_no_password_or_sasl_payload_in_a_debug_log(proxy_factory, emulator_factory, ctx):
    proxy, emu = start(proxy_factory, emulator_factory, extra={"proxy": {"log_level": "debug"}})
    secret = "S3cret-quoted\\\"x"
    payload = plain_b64("demo", PASSWORD)
    payload_ok = plain_b64("demo", "demo")
    c = tls_session(proxy.port, ctx)
    c.command("A", "LOGIN demo %s" % PASSWORD)
    c.command("B", 'LOGIN demo "%s"' % secret)
    c.command("C", "LOGIN demo {%d+}\r\n%s" % (len(PASSWORD), PASSWORD))
    c.command("D", "AUTHENTICATE PLAIN " + payload)
    c.write(b"E AUTHENTICATE PLAIN\r\n")
    assert c.read_line().startswith(b"+")
    c.write(payload.encode() + b"\r\n")
    c.read_until_tagged("E")
    _, ok = c.command("F", "AUTHENTICATE PLAIN " + payload_ok)
    assert ok.startswith(b"F OK"), ok
    c.command("Z", "LOGOUT")
    proxy.log.wait_for(r"session: closed .* user=demo ", timeout=5)
    text = proxy.log.text()
    for s in (PASSWORD, "S3cret-quoted", payload, payload_ok, payload[8:40], payload_ok[4:]):
        assert s not in text, s
    assert PASSWORD not in ops.scrape(proxy).text


def keys_of(line):
    return [m.group(1) for m in re.finditer(r'(\w[\w.-]*)=("(?:[^"\\]|\\.)*"|\S*)', line)]


def test_user_names_cannot_forge_log_fields(proxy_factory, emulator_factory, ctx):
    proxy, emu = start(proxy_factory, emulator_factory,
                       login={"trusted_networks": "127.0.0.0/8"})
    c = tls_session(proxy.port, ctx)
    forged = ['"x result=ok client=6.6.6.6:1"', '"x\\" result=ok client=6.6.6.6:1 y=\\""',
              '"a\\\\" result=ok client=6.6.6.6:2"']
    lit = b"u\r\n2030-01-01 info login: login ok result=ok user=root client=6.6.6.6:3\x1b[2J"
    for i, u in enumerate(forged):
        _, tagged = c.command("F%d" % i, "LOGIN %s pw" % u)
        assert b" NO " in tagged or b" BAD " in tagged, tagged
    c.write(b"L LOGIN {%d+}\r\n%s pw\r\n" % (len(lit), lit))
    c.read_until_tagged("L")
    c.write(b"M AUTHENTICATE PLAIN %s\r\n" % base64.b64encode(
        b"\0x result=ok client=6.6.6.6:4\r\nfoo result=ok\0pw"))
    c.read_until_tagged("M")
    c.command("Z", "LOGOUT")
    proxy.log.wait_for(r"session: closed ", timeout=5)
    lines = proxy.log.lines()
    logins = [l for l in lines if " login: " in l]
    assert len(logins) >= 5, logins
    for l in logins:
        ks = keys_of(l)
        assert ks.count("result") == 1 and ks.count("client") == 1, l
        kv = h.parse_kv(l)
        assert kv["result"] != "ok" and kv["client"].startswith("127.0.0.1:"), l
    first = lines[0].split(" ", 1)[0]
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT" if re.match(r"\d{4}-", first) else r"^\S")
    for l in lines:
        assert stamp.match(l) and "6.6.6.6:3" not in l.split(" login: ")[0], l
        assert "\x1b" not in l, l
    assert not any(re.match(r"^2030-01-01", l) for l in lines), lines


# ---------------------------------------------------------- admission ----

def admitted(proxy, ctx, S, n):
    c = h.TLSClient(proxy.port, ctx)
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_queue_length", server=S) == n,
                     timeout=5, what="%d sessions queued" % n)
    return c


def held(proxy, ctx):
    c = h.TLSClient(proxy.port, ctx)
    h.login(c)
    return c


def limited(backends, proxy_factory, extra=None):
    b = backends()
    S = ops.addr(b.port)
    proxy = ops.start_proxy(proxy_factory, b.port, extra=ops.merge({"backend": {
        "max_sessions": "1", "queue_timeout": "60s"}}, extra))
    return b, S, proxy


def test_clients_leaving_the_queue_leak_no_slot(backends, proxy_factory, ctx):
    b, S, proxy = limited(backends, proxy_factory)
    first = held(proxy, ctx)
    waiting = [admitted(proxy, ctx, S, n + 1) for n in range(6)]
    # Some leave politely typed nothing, some with a command half-written,
    # some by a TCP reset.
    waiting[1].write(b"A NOO")
    waiting[3].sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_LINGER,
                               b"\x01\x00\x00\x00\x00\x00\x00\x00")
    for c in waiting:
        c.close()
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_queue_length", server=S) == 0,
                     timeout=5, what="queue emptied")
    assert b.opens_since(0) == 1
    first.command("Z", "LOGOUT")
    first.close()
    # The slot is free for the next five, one after another.
    for i in range(5):
        c = h.TLSClient(proxy.port, ctx)
        assert c.read_line(timeout=5).startswith(b"* OK"), i
        assert c.command("L", "LOGIN demo demo")[1].startswith(b"L OK")
        c.command("Z", "LOGOUT")
        c.close()
    assert proxy.proc.poll() is None
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_sessions", server=S) == 0,
                     timeout=5, what="no backend session left")


def test_commands_typed_while_queued_wait_for_the_backend(backends, proxy_factory, ctx):
    b, S, proxy = limited(backends, proxy_factory)
    first = held(proxy, ctx)
    c = admitted(proxy, ctx, S, 1)
    c.write(b"N NOOP\r\nL LOGIN demo demo\r\nZ LOGOUT\r\n")
    behind = admitted(proxy, ctx, S, 2)
    # Nothing reaches the backend early.
    assert b.opens_since(0) == 1
    assert proxy.proc.poll() is None
    first.command("Z", "LOGOUT")
    first.close()
    assert c.read_line(timeout=5).startswith(b"* OK")
    _, n = c.read_until_tagged("N", timeout=5)
    assert n.startswith(b"N OK"), n
    _, l = c.read_until_tagged("L", timeout=5)
    assert l.startswith(b"L OK"), l
    _, z = c.read_until_tagged("Z", timeout=5)
    assert z.startswith(b"Z OK"), z
    c.expect_eof()
    # Its slot went to the next in line.
    assert behind.read_line(timeout=5).startswith(b"* OK")
    behind.close()


def test_logout_while_queued_then_drain(backends, proxy_factory, ctx):
    """SIGTERM with a full queue whose clients typed LOGOUT: all get the
    shutdown BYE, none reaches the backend, the proxy exits once the held
    session leaves."""
    b, S, proxy = limited(backends, proxy_factory, {"proxy": {"drain_timeout": "20s"}})
    first = held(proxy, ctx)
    first.write(b"I IDLE\r\n")
    assert first.read_line().startswith(b"+")
    waiting = [admitted(proxy, ctx, S, n + 1) for n in range(5)]
    for c in waiting[::2]:
        c.write(b"Z LOGOUT\r\n")
    proxy.proc.send_signal(signal.SIGTERM)
    for c in waiting:
        assert c.read_line(timeout=5) == SHUTDOWN
        c.expect_eof()
    assert b.opens_since(0) == 1
    first.close()
    assert ops.wait_exit(proxy, 20) == 0


def test_sighup_keeps_the_queue_and_its_order(backends, proxy_factory, ctx):
    b, S, proxy = limited(backends, proxy_factory)
    first = held(proxy, ctx)
    waiting = [admitted(proxy, ctx, S, n + 1) for n in range(3)]
    ops.sighup(proxy, ops.RELOADED)
    ops.sighup(proxy, ops.RELOADED)
    m = ops.scrape(proxy)
    assert m.value("imapfront_backend_queue_length", server=S) == 3
    assert b.opens_since(0) == 1
    waiting[1].close()  # one leaves meanwhile
    first.command("Z", "LOGOUT")
    first.close()
    for c in (waiting[0], waiting[2]):
        assert c.read_line(timeout=5).startswith(b"* OK")
        assert c.command("L", "LOGIN demo demo")[1].startswith(b"L OK")
        c.command("Z", "LOGOUT")
        c.close()
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_queue_length", server=S) == 0,
                     timeout=5, what="queue empty")



def test_case_variants_of_the_user_share_one_count(proxy_factory, emulator_factory, ctx):
    """Directory servers behind legacy IMAP compare user names without
    case: DEMO, Demo, dEmo... are one account, so should be one count."""
    proxy, emu = start(proxy_factory, emulator_factory)
    c = tls_session(proxy.port, ctx)
    variants = ["demo", "DEMO", "Demo", "dEmo", "deMo", "demO", "DEmo", "dEMo", "deMO", "DeMo",
                "dEmO", "DEMo"]
    answers = guess_all(c, ["LOGIN %s c%d" % (u, i) for i, u in enumerate(variants)])
    assert all(b" NO " in a for a in answers), answers
    assert len(guesses_at_backend(emu)) <= FAIL_BAN, guesses_at_backend(emu)


def test_pipelined_logins_after_a_failure_get_no_extra_guesses(proxy_factory, emulator_factory,
                                                             ctx):
    """Once one failure is recorded, ten LOGINs in one write in one session
    get no more than fail_ban guesses through."""
    proxy, emu = start(proxy_factory, emulator_factory)
    c = tls_session(proxy.port, ctx)
    _, first = c.command("F", "LOGIN demo first")
    assert b" NO " in first
    c.write(b"".join(b"P%d LOGIN demo p%d\r\n" % (i, i) for i in range(10)))
    # Answers come in any order: the proxy refuses the ones it refuses at
    # once, the backend answers the one it got when it has checked it.
    want, got = {b"P%d" % i for i in range(10)}, {}
    deadline = time.monotonic() + 10
    while set(got) != want:
        line = c.read_line(max(deadline - time.monotonic(), 0.001))
        tag = line.split(b" ", 1)[0]
        if tag in want:
            got[tag] = line
    assert all(b" NO " in t or b" BAD " in t for t in got.values()), got
    assert len(guesses_at_backend(emu)) <= FAIL_BAN, guesses_at_backend(emu)


def test_aborting_mid_login_gets_no_extra_guesses(proxy_factory, emulator_factory, ctx):
    """A guesser who hangs up right after sending LOGIN (not waiting for the
    verdict) still spends a guess: at most fail_ban reach the backend."""
    proxy, emu = start(proxy_factory, emulator_factory)
    for i in range(12):
        c = tls_session(proxy.port, ctx)
        c.write(b"A LOGIN demo abort%d\r\n" % i)
        c.close()
    # The last aborted one has been seen by the proxy (its summary line).
    h.wait_until(lambda: len(proxy.closed_lines()) >= 12, 20, "12 session summaries")
    assert len(guesses_at_backend(emu)) <= FAIL_BAN, guesses_at_backend(emu)
    c = tls_session(proxy.port, ctx)
    _, tagged = c.command("B", "LOGIN demo after")
    assert b"[AUTHENTICATIONFAILED]" in tagged, tagged
    assert len(guesses_at_backend(emu)) <= FAIL_BAN, guesses_at_backend(emu)
