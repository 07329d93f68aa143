"""Deep health checks ([backend] check = banner | login): the proxy greets
every server periodically and, with login, logs in with a service account,
EXAMINEs a canary mailbox and sends NOOP, all within check_timeout. A
server that fails is taken out of rotation and put back when a check
passes; /readyz, /metrics and the log show it.

The failing servers are played by the test: one accepts connections and
never says a word, one greets and then never answers LOGIN. Each can be
switched to a healthy script while the proxy runs."""

import base64
import threading

import pytest

import imapfront_harness as h
import ops_support as ops
from dovecot import dovecot_factory  # noqa: F401

PASSWORD = "s3cr\"et\\pw"  # a quote and a backslash: must arrive quoted


class ScriptedBackend:
    """A plain IMAP server with a switchable behaviour:

    * "silent": accepts and never sends a byte;
    * "hang_login": greets, then never answers LOGIN;
    * "healthy": answers LOGIN, EXAMINE, NOOP and LOGOUT with OK;
    * "preauth": greets with PREAUTH (already logged in), then as healthy;
    * "bye_login": answers LOGIN with a BYE and closes;
    * "eager": sends the greeting (with its capabilities, so that the
      check needs no CAPABILITY) and the OKs to LOGIN, EXAMINE and NOOP in
      one write before reading a byte (the proxy learns each answer before
      its own command's write has completed), then answers LOGOUT;
    * "sasl": announces AUTH=PLAIN (no SASL-IR) and LOGINDISABLED: answers
      AUTHENTICATE PLAIN with "+", then OK only for the right credentials;
    * "nologin": announces LOGINDISABLED and no AUTH= at all;
    * "literals": as healthy, but before every answer sends untagged
      responses with literals of each form ({N}, {N+}, ~{N}) whose octets
      look like a tagged NO for the command, a "+" and a BYE: data that a
      client framing responses right skips.

    Every line it receives is kept in .lines (in order)."""

    def __init__(self, mode):
        self.mode = mode
        self.lines = []
        self.lock = threading.Condition()
        self.fake = h.FakeBackend(self._serve, accept_timeout=120)
        self.port = self.fake.port

    def _serve(self, conn):
        mode = self.mode  # a connection keeps the behaviour it was accepted with
        if mode == "silent":
            while not self.fake.stopping.is_set() and conn.recv(4096):
                pass
            return
        if mode in ("sasl", "nologin"):
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1 %sLOGINDISABLED] scripted IMAP server "
                         b"ready\r\n" % (b"AUTH=PLAIN " if mode == "sasl" else b""))
        elif mode == "preauth":
            conn.sendall(b"* PREAUTH scripted IMAP server, logged in\r\n")
        elif mode == "eager":
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1] scripted IMAP server ready\r\n"
                         b"imfcheck1 OK LOGIN done\r\n"
                         b"imfcheck2 OK EXAMINE done\r\nimfcheck3 OK NOOP done\r\n")
        else:
            conn.sendall(b"* OK scripted IMAP server ready\r\n")
        while not self.fake.stopping.is_set():
            line = h.recv_line(conn)
            if not line:
                return
            with self.lock:
                self.lines.append(line)
                self.lock.notify_all()
            tag, _, rest = line.decode("ascii", "replace").partition(" ")
            verb = rest.split(" ", 1)[0].strip().upper()
            if mode == "hang_login" and verb == "LOGIN":
                continue
            if mode == "bye_login" and verb == "LOGIN":
                conn.sendall(b"* BYE account store offline\r\n")
                conn.close()
                return
            if mode == "eager" and verb != "LOGOUT":
                continue  # answered already
            if mode == "sasl" and verb == "AUTHENTICATE":
                conn.sendall(b"+ \r\n")
                answer = h.recv_line(conn)
                with self.lock:
                    self.lines.append(answer)
                ok = base64.b64decode(answer.strip()) == b"\0svc\0" + PASSWORD.encode()
                conn.sendall(b"%s %s\r\n" % (tag.encode(), b"OK in" if ok else
                                              b"NO [AUTHENTICATIONFAILED] wrong"))
                continue
            if mode in ("sasl", "nologin") and verb == "LOGIN":
                conn.sendall(b"%s NO LOGIN is disabled\r\n" % tag.encode())
                continue
            if mode == "literals" and verb != "LOGOUT":  # the check closes after LOGOUT
                conn.sendall(literal_noise(tag.encode()))
            if verb == "LOGOUT":
                conn.sendall(b"* BYE bye\r\n%s OK LOGOUT done\r\n" % tag.encode())
                return
            conn.sendall(b"%s OK %s done\r\n" % (tag.encode(), verb.encode()))

    def received(self, verb):
        with self.lock:
            return [ln for ln in self.lines if (b" " + verb + b" ") in ln or ln.endswith(
                b" " + verb + b"\r\n")]

    def wait_received(self, verb, timeout=10):
        """The lines with verb, once at least one has arrived (within timeout)."""
        with self.lock:
            self.lock.wait_for(lambda: self._with(verb), timeout=timeout)
            return self._with(verb)

    def _with(self, verb):
        return [ln for ln in self.lines if (b" " + verb + b" ") in ln or ln.endswith(
            b" " + verb + b"\r\n")]

    def stop(self):
        self.fake.stop()


def literal_noise(tag):
    """Untagged responses whose literals hold what would end the command
    (its tagged NO), ask for more ("+") or end the connection (BYE)."""
    fake = b"%s NO [AUTHENTICATIONFAILED] inside a literal\r\n" % tag
    plus = b"+ inside a literal\r\n"
    bye = b"* BYE inside a literal\r\n"
    return (b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\n" % (len(fake), fake) +
            b"* 2 FETCH (BODY[] {%d+}\r\n%s BODY[1] {%d}\r\n%s)\r\n"
            % (len(plus), plus, len(bye), bye) +
            b"* 3 FETCH (BINARY[] ~{%d}\r\n%s)\r\n" % (len(fake) + 1, fake + b"\0") +
            # A long line (a big header field in an ENVELOPE, say) before
            # its literal: the announcement is still at the end of the line.
            b"* 4 FETCH (X-LONG \"%s\" BODY[] {%d}\r\n%s)\r\n" % (b"x" * 3000, len(fake), fake))


@pytest.fixture
def scripted():
    yield from h.stopping(ScriptedBackend)


def checks(mode, servers, **more):
    section = {"servers": ", ".join(servers), "balance": "first", "check": mode,
               "check_interval": "200ms", "check_timeout": "600ms", "down_after": "1"}
    if mode == "login":
        section.update({"check_user": "svc", "check_password": PASSWORD,
                        "check_mailbox": "Canary"})
    section.update(more)
    return {"backend": section}


def test_login_hangs_out_of_rotation_and_back(scripted, backends, proxy_factory, ctx):
    a = scripted("hang_login")
    b = backends(users="demo:demo,svc:" + PASSWORD)
    A, B = ops.addr(a.port), ops.addr(b.port)
    proxy = ops.start_proxy(proxy_factory, b.port,
                            extra=checks("login", [A, B], check_mailbox="INBOX"))
    proxy.log.wait_for(r"\bwarn backend: server failed its check, out of rotation "
                       r"backend=%s step=LOGIN reason=\"no answer to LOGIN within 600ms\"$" % A,
                       timeout=10, alive=proxy.check_alive)
    m = ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_checks_total", server=B,
                                                  result="ok") >= 1,
                         timeout=10, what="a passing check of B")
    assert m.value("imapfront_backend_up", server=A) == 0
    assert m.value("imapfront_backend_check_failing", server=A) == 1
    assert m.value("imapfront_backend_up", server=B) == 1
    assert m.value("imapfront_backend_check_failing", server=B) == 0
    assert m.value("imapfront_backend_checks_total", server=A, result="failed") >= 1
    assert ops.http_get(proxy.admin, "/readyz").status == 200  # B carries the load

    # A accepts connections, so passive health alone would keep sending
    # clients into its hanging LOGIN; the check keeps them on B.
    assert ops.session_backend(proxy, ctx) == B
    assert ops.session_backend(proxy, ctx) == B

    # The check's LOGIN was quoted (a quote and a backslash escaped) and
    # the password never reached the log.
    assert a.received(b"LOGIN") and a.received(b"LOGIN")[0].endswith(
        b' LOGIN "svc" "s3cr\\"et\\\\pw"\r\n')
    assert "s3cr" not in proxy.log.text()

    a.mode = "healthy"
    mark = proxy.log.mark()
    proxy.log.wait_for(r"\binfo backend: server passed its check, back in rotation "
                       r"backend=%s took=\d+ms$" % A, since=mark, timeout=10,
                       alive=proxy.check_alive)
    assert ops.scrape(proxy).value("imapfront_backend_up", server=A) == 1
    # The healthy check went all the way: EXAMINE of the canary, NOOP, LOGOUT
    # (the check passes on NOOP's OK; its LOGOUT may still be on the way).
    assert any(ln.endswith(b' EXAMINE "INBOX"\r\n') for ln in a.lines)
    assert a.received(b"NOOP") and a.wait_received(b"LOGOUT")


def test_silent_backend_banner_check_and_readyz(scripted, proxy_factory, ctx):
    a = scripted("silent")
    A = ops.addr(a.port)
    proxy = ops.start_proxy(proxy_factory, a.port, extra=checks("banner", [A]))
    proxy.log.wait_for(r"\bwarn backend: server failed its check, out of rotation "
                       r"backend=%s step=greeting reason=\"no answer to greeting within 600ms\"$"
                       % A, timeout=10, alive=proxy.check_alive)
    # The only server is out: not ready, so a load balancer sends clients
    # elsewhere.
    assert ops.http_get(proxy.admin, "/readyz").status == 503
    assert ops.scrape(proxy).value("imapfront_backend_up", server=A) == 0

    a.mode = "healthy"
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_up", server=A) == 1,
                     timeout=10, what="a passing banner check")
    assert ops.http_get(proxy.admin, "/readyz").status == 200
    # A banner check greets and leaves: it never logs in.
    assert not a.received(b"LOGIN")
    assert a.wait_received(b"LOGOUT")


def test_refused_login_names_the_reason(emulator, proxy_factory):
    B = ops.addr(emulator.plain_port)
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra=checks("login", [B], check_user="demo",
                                         check_password="wrong"))
    m = proxy.log.wait_for(r"\bwarn backend: server failed its check, out of rotation "
                           r"backend=%s step=LOGIN reason=\"LOGIN refused: (NO .*)\"$" % B,
                           timeout=10, alive=proxy.check_alive)
    assert "wrong" not in proxy.log.text()
    assert ops.http_get(proxy.admin, "/readyz").status == 503
    assert m.group(1)


def test_preauth_greeting_skips_login(scripted, proxy_factory):
    """A server that greets with PREAUTH has logged the connection in: the
    check goes straight to EXAMINE, and passes."""
    a = scripted("preauth")
    A = ops.addr(a.port)
    proxy = ops.start_proxy(proxy_factory, a.port, extra=checks("login", [A]))
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_checks_total", server=A,
                                              result="ok") >= 1,
                     timeout=10, what="a passing check")
    assert not a.received(b"LOGIN")
    assert any(ln.endswith(b' EXAMINE "Canary"\r\n') for ln in a.lines)


def test_literals_around_the_login_are_data(scripted, proxy_factory):
    """Untagged responses with {N}, {N+} and ~{N} literals (one after a
    3000-byte line) come before every answer, their octets a tagged NO, a
    "+" and a BYE: the check reads them as data and passes, check after
    check."""
    a = scripted("literals")
    A = ops.addr(a.port)
    proxy = ops.start_proxy(proxy_factory, a.port, extra=checks("login", [A]))
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_checks_total", server=A,
                                              result="ok") >= 2,
                     timeout=10, what="two passing checks")
    assert "failed" not in proxy.log.text()
    assert a.received(b"EXAMINE")
    assert a.fake.errors == []


def test_login_takes_the_form_the_server_offers(scripted, proxy_factory):
    """A server with LOGINDISABLED and AUTH=PLAIN gets AUTHENTICATE PLAIN, its
    credentials after the "+" (no SASL-IR), and passes; one with neither
    form is never sent a password and fails with that reason."""
    a = scripted("sasl")
    A = ops.addr(a.port)
    proxy = ops.start_proxy(proxy_factory, a.port, extra=checks("login", [A]))
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_checks_total", server=A,
                                              result="ok") >= 1,
                     timeout=10, what="a passing check")
    assert not a.received(b"LOGIN")
    assert any(ln.endswith(b" AUTHENTICATE PLAIN\r\n") for ln in a.lines)

    b = scripted("nologin")
    B = ops.addr(b.port)
    proxy = ops.start_proxy(proxy_factory, b.port, extra=checks("login", [B]))
    proxy.log.wait_for(r"\bwarn backend: server failed its check, out of rotation "
                       r"backend=%s step=LOGIN reason=\"the server allows no login "
                       r"\(LOGINDISABLED and no AUTH=PLAIN\)\"$" % B, timeout=10,
                       alive=proxy.check_alive)
    with b.lock:
        assert not any(b"LOGIN" in ln or b"AUTHENTICATE" in ln for ln in b.lines), b.lines


def test_bye_during_login_is_the_reason(scripted, proxy_factory):
    a = scripted("bye_login")
    A = ops.addr(a.port)
    proxy = ops.start_proxy(proxy_factory, a.port, extra=checks("login", [A]))
    proxy.log.wait_for(r"\bwarn backend: server failed its check, out of rotation "
                       r"backend=%s step=LOGIN reason=\"closed by the server during LOGIN: "
                       r"\* BYE account store offline\"$" % A, timeout=10,
                       alive=proxy.check_alive)


def test_answers_ahead_of_the_writes(scripted, proxy_factory):
    """A server that answers before the check's write has completed (here:
    every answer in one packet, sent before it reads) gets each command as
    its own intact line, in order, check after check; the proxy stays up."""
    a = scripted("eager")
    A = ops.addr(a.port)
    proxy = ops.start_proxy(proxy_factory, a.port, extra=checks("login", [A]))
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_checks_total", server=A,
                                              result="ok") >= 3,
                     timeout=10, what="three passing checks")
    proxy.check_alive()
    assert a.fake.errors == []
    with a.lock:
        lines = list(a.lines)
    # Whole probes only: the last one may still be under way.
    done = len(lines) - len(lines) % 4
    assert done >= 8, lines
    for i in range(0, done, 4):
        assert lines[i:i + 4] == [b'imfcheck1 LOGIN "svc" "s3cr\\"et\\\\pw"\r\n',
                                  b'imfcheck2 EXAMINE "Canary"\r\n',
                                  b"imfcheck3 NOOP\r\n", b"imfcheck4 LOGOUT\r\n"], lines
    assert "failed its check" not in proxy.log.text()


def test_missing_canary_mailbox(emulator, proxy_factory):
    """The canary mailbox was never created: EXAMINE fails, and says so."""
    B = ops.addr(emulator.plain_port)
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port,
                            extra=checks("login", [B], check_user="demo", check_password="demo",
                                         check_mailbox="No Such Canary"))
    proxy.log.wait_for(r"\bwarn backend: server failed its check, out of rotation "
                       r"backend=%s step=EXAMINE reason=\"EXAMINE refused: NO .*\"$" % B,
                       timeout=10, alive=proxy.check_alive)


def test_down_after_counts_failed_checks(scripted, proxy_factory):
    """down_after = 3: two failed checks leave the server in rotation."""
    a = scripted("silent")
    A = ops.addr(a.port)
    proxy = ops.start_proxy(proxy_factory, a.port,
                            extra=checks("banner", [A], down_after="3", check_timeout="300ms"))
    m = ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_checks_total", server=A,
                                                  result="failed") >= 1,
                         timeout=10, what="a first failed check")
    if m.value("imapfront_backend_checks_total", server=A, result="failed") < 3:
        assert m.value("imapfront_backend_up", server=A) == 1
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_up", server=A) == 0,
                     timeout=10, what="the third failed check")
    assert ops.scrape(proxy).value("imapfront_backend_checks_total", server=A,
                                   result="failed") >= 3


def test_reload_turns_checks_off(scripted, proxy_factory):
    a = scripted("silent")
    A = ops.addr(a.port)
    proxy = ops.start_proxy(proxy_factory, a.port, extra=checks("banner", [A]))
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_up", server=A) == 0,
                     timeout=10, what="the failed check")
    ops.rewrite_ini(proxy, {"backend": {"check": "off"}})
    ops.sighup(proxy, expect="configuration reloaded")
    m = ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_up", server=A) == 1,
                         timeout=5, what="checks off: the server back")
    assert m.get("imapfront_backend_checks_total", server=A, result="failed") is None
    assert ops.http_get(proxy.admin, "/readyz").status == 200


def test_login_check_against_dovecot(dovecot_factory, proxy_factory, ctx):  # noqa: F811
    d = dovecot_factory()
    D = ops.addr(d.port)
    mark = d.log.mark()
    proxy = ops.start_proxy(proxy_factory, d.port,
                            extra=checks("login", [D], check_user="alice",
                                         check_password="secret", check_mailbox="INBOX"))
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_checks_total", server=D,
                                              result="ok") >= 2,
                     timeout=15, what="two passing checks against Dovecot")
    assert any(li.get("user") == "alice" for li in d.logins(mark))
    m = ops.scrape(proxy)
    assert m.value("imapfront_backend_up", server=D) == 1
    assert m.value("imapfront_backend_checks_total", server=D, result="failed") == 0
    assert 0 < m.value("imapfront_backend_check_seconds", server=D) < 0.6
    assert "secret" not in proxy.log.text()
    # Clients are relayed as usual.
    with h.TLSClient(proxy.port, ctx) as c:
        c.read_line()
        assert c.command("a", "LOGIN demo demo")[-1].startswith(b"a OK")


def test_named_pool_is_checked_on_its_own(scripted, emulator, proxy_factory, ctx):
    """A [backend.NAME] pool has its own checks, its own health and its own
    `pool` label; sessions keep using the pool default, and /readyz looks
    only at pools sessions can reach (no route uses the archive yet)."""
    a = scripted("silent")
    A, D = ops.addr(a.port), ops.addr(emulator.plain_port)
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port, extra={
        "backend.archive": {"servers": A, "check": "banner", "check_interval": "200ms",
                            "check_timeout": "600ms", "down_after": "1"}})
    proxy.log.wait_for(r"\bwarn backend: server failed its check, out of rotation "
                       r"backend=%s step=greeting reason=\"no answer to greeting within 600ms\" "
                       r"pool=archive$" % A, timeout=10, alive=proxy.check_alive)
    m = ops.scrape(proxy)
    assert m.value("imapfront_backend_up", pool="archive", server=A) == 0
    assert m.value("imapfront_backend_check_failing", pool="archive", server=A) == 1
    assert m.value("imapfront_backend_up", pool="default", server=D) == 1
    # The default pool has check = off: its server is never checked.
    assert m.value("imapfront_backend_checks_total", pool="default", server=D, result="ok") == 0
    assert m.value("imapfront_backend_checks_total", pool="default", server=D,
                   result="failed") == 0
    assert ops.http_get(proxy.admin, "/readyz").status == 200
    assert ops.session_backend(proxy, ctx) == D

    a.mode = "healthy"
    mark = proxy.log.mark()
    proxy.log.wait_for(r"\binfo backend: server passed its check, back in rotation "
                       r"backend=%s took=\d+ms pool=archive$" % A, since=mark, timeout=10,
                       alive=proxy.check_alive)
    assert ops.scrape(proxy).value("imapfront_backend_up", pool="archive", server=A) == 1


def test_pool_added_and_removed_by_reload(scripted, emulator, proxy_factory):
    """A pool a reload adds is checked from then on; one a reload removes
    is no longer shown."""
    a = scripted("silent")
    A = ops.addr(a.port)
    proxy = ops.start_proxy(proxy_factory, emulator.plain_port)
    assert not ops.scrape(proxy).labelsets("imapfront_backend_check_failing")
    ops.rewrite_ini(proxy, {"backend.archive": {
        "servers": A, "check": "banner", "check_interval": "200ms", "check_timeout": "600ms",
        "down_after": "1"}})
    mark = proxy.log.mark()
    ops.sighup(proxy, ops.RELOADED)
    proxy.log.wait_for(r"\bwarn backend: server failed its check, out of rotation "
                       r"backend=%s .* pool=archive$" % A, since=mark, timeout=10,
                       alive=proxy.check_alive)
    assert ops.scrape(proxy).value("imapfront_backend_check_failing", pool="archive",
                                   server=A) == 1

    ops.rewrite_ini(proxy, drop=("backend.archive",))
    ops.sighup(proxy, ops.RELOADED)
    m = ops.scrape(proxy)
    assert [ls["pool"] for ls in m.labelsets("imapfront_backend_up")] == ["default"]
    assert not m.labelsets("imapfront_backend_check_failing")  # no pool has checks now
    assert ops.http_get(proxy.admin, "/readyz").status == 200
