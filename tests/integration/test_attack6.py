"""Attacks from outside on the login throttle's parallel bounds (README
"Logins the proxy sees", docs/configuration.md [login]), as a password
guesser and as an unlucky NAT would make them. The contract, with the
defaults (fail_free 3, fail_ban 6, address_fail_free 10, address_fail_ban
30, fail_window and ban_time 10m):

* at most 6 failed guesses for one user from one address reach the
  backend one after another; once one failure is recorded, logins in
  progress count, so parallel sessions get no more through than one;
* before any failure up to 32 logins of one user from one address may be
  in progress at once; the 33rd is refused (NO [AUTHENTICATIONFAILED]);
* logins of different users from one address are never refused for being
  many at once and count towards address_fail_ban only once they failed;
* trusted_networks are exempt; a success clears the (address, user) record.

The backend is a scripted one (Backend below) that records every LOGIN
and AUTHENTICATE PLAIN it reads (user, password) and can hold its answers
until the test releases them: a held login is a login in progress. What
is counted is what reached that backend. Attacks: bursts of one user (in
user names that differ only in case or form: atom, quoted, literal), of
LOGIN mixed with AUTHENTICATE PLAIN, bursts that straddle the first
failure's answer, clients that hang up mid-login (while the backend holds
the answer, during the throttle's delay, inside a password literal), many
users behind one address, two workers, and a SIGHUP (with a change of
trusted_networks) in the middle of a burst.

Found and fixed since: passwords longer than 256 octets that share their
first 256 octets were taken for 'the same wrong password repeated', so
every such guess reached the backend and none was refused. A password the
proxy cannot hold whole (over 256 octets; over 3 KiB decoded in SASL) is
now never taken for a repeat: each such failure counts.

Every wait is bounded and waits for an event (a line at the backend, an
answer at a client, a log line)."""

import base64
import re
import threading

import pytest

import imapfront_harness as h
import ops_support as ops
from test_gate import tls_session

REFUSED = b"[AUTHENTICATIONFAILED]"
WAIT = 20.0


class Backend:
    """A plain backend played by the test. Users: {name: password}.
    Every LOGIN / AUTHENTICATE PLAIN it reads is appended to .logins as
    (mechanism, user, password); while .hold is set, its answer waits
    until release(password) or release_all() (at most WAIT seconds)."""

    GREETING = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN LITERAL+] scripted ready\r\n"

    def __init__(self, users=None, hold=False):
        self.users = dict(users or {"demo": "demo"})
        self.cv = threading.Condition()
        self.logins = []
        self.answered = 0
        self.hold = hold
        self.released = set()
        self.all_released = False
        self.fake = h.FakeBackend(self._serve, accept_timeout=120)
        self.fake.listener.listen(256)
        self.port = self.fake.port

    # --- what the test uses
    def count(self):
        with self.cv:
            return len(self.logins)

    def passwords(self):
        with self.cv:
            return [p for _, _, p in self.logins]

    def wait(self, predicate, timeout=WAIT, what="backend"):
        with self.cv:
            if not self.cv.wait_for(lambda: predicate(self), timeout):
                raise AssertionError("timed out waiting for %s: %d logins, %d answered"
                                     % (what, len(self.logins), self.answered))

    def release(self, password):
        with self.cv:
            self.released.add(password)
            self.cv.notify_all()

    def release_all(self):
        with self.cv:
            self.all_released = True
            self.cv.notify_all()

    def stop(self):
        self.release_all()
        self.fake.stop()

    # --- the server
    @staticmethod
    def _recv_exact(conn, n):
        buf = b""
        while len(buf) < n:
            got = conn.recv(n - len(buf))
            if not got:
                raise EOFError("eof in literal")
            buf += got
        return buf

    def _read_command(self, conn, line):
        """The tokens of a command whose first line is `line`; literals
        (sync: '+' sent first) become tokens of their own."""
        tokens = []
        for _ in range(10):
            m = re.search(rb"\{(\d+)(\+?)\}\r?\n$", line)
            text = line[:m.start()] if m else line
            for q, a in re.findall(rb'"((?:[^"\\]|\\.)*)"|(\S+)', text):
                tokens.append(re.sub(rb"\\(.)", rb"\1", q) if q or not a else a)
            if not m:
                return tokens
            if not m.group(2):
                conn.sendall(b"+ go on\r\n")
            tokens.append(self._recv_exact(conn, int(m.group(1))))
            line = h.recv_line(conn)
        return tokens

    def _answer(self, conn, tag, mech, user, password, authz=""):
        with self.cv:
            self.logins.append((mech, user, password))
            self.cv.notify_all()
            if self.hold:
                self.cv.wait_for(lambda: self.all_released or password in self.released, WAIT)
        ok = self.users.get(user) == password and authz in ("", user)
        try:
            if ok:
                conn.sendall(tag + b" OK [CAPABILITY IMAP4rev1] LOGIN completed\r\n")
            else:
                conn.sendall(tag + b" NO [AUTHENTICATIONFAILED] invalid credentials\r\n")
        finally:
            with self.cv:
                self.answered += 1
                self.cv.notify_all()

    def _serve(self, conn):
        conn.sendall(self.GREETING)
        for _ in range(200):
            try:
                line = h.recv_line(conn)
            except OSError:
                return
            if not line:
                return
            tokens = self._read_command(conn, line)
            if len(tokens) < 2:
                conn.sendall(b"* BAD what\r\n")
                continue
            tag, name = tokens[0], tokens[1].upper()
            if name == b"LOGIN" and len(tokens) >= 4:
                self._answer(conn, tag, "LOGIN", tokens[2].decode("utf-8", "replace"),
                             tokens[3].decode("utf-8", "replace"))
            elif name == b"AUTHENTICATE" and len(tokens) >= 3:
                if len(tokens) >= 4:
                    blob = tokens[3]
                else:
                    conn.sendall(b"+ \r\n")
                    blob = h.recv_line(conn).strip()
                if blob == b"*":
                    conn.sendall(tag + b" BAD cancelled\r\n")
                    continue
                fields = base64.b64decode(blob).split(b"\0")
                if len(fields) != 3:
                    conn.sendall(tag + b" NO [AUTHENTICATIONFAILED] malformed\r\n")
                    continue
                authz, user, password = (f.decode("utf-8", "replace") for f in fields)
                self._answer(conn, tag, "PLAIN", user, password, authz)
            elif name == b"LOGOUT":
                conn.sendall(b"* BYE bye\r\n" + tag + b" OK LOGOUT completed\r\n")
                return
            elif name == b"CAPABILITY":
                conn.sendall(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN LITERAL+\r\n" + tag + b" OK done\r\n")
            else:
                conn.sendall(tag + b" OK done\r\n")


@pytest.fixture
def backend():
    yield from h.stopping(Backend)


def start(proxy_factory, b, login=None, proxy=None):
    return ops.start_proxy(proxy_factory, b.port, extra={
        "login": dict({"delay_max": "100ms"}, **(login or {})),
        "backend": {"connect_rate": "0"},
        "proxy": dict(proxy or {})})


def plain(user, password):
    return base64.b64encode(b"\0%s\0%s" % (user.encode(), password.encode())).decode()


class Burst:
    """Sessions that each send one login at once; a reader thread per
    session collects its tagged answer. settled(): each session either
    has its login at the backend (its password is unique) or an answer."""

    def __init__(self, proxy, ctx, b, commands):
        self.b = b
        self.answers = {}
        self.clients = []
        self.threads = []
        for password, _ in commands:
            self.clients.append((password, tls_session(proxy.port, ctx)))
        for i, (password, c) in enumerate(self.clients):
            c.write(commands[i][1] if isinstance(commands[i][1], bytes)
                    else ("B%d %s\r\n" % (i, commands[i][1])).encode())
        for i, (password, c) in enumerate(self.clients):
            t = threading.Thread(target=self._read, args=(i, c), daemon=True)
            t.start()
            self.threads.append(t)

    def _read(self, i, c):
        try:
            _, tagged = c.read_until_tagged("B%d" % i, timeout=WAIT + 5)
        except Exception as e:  # closed or timed out: recorded as such
            tagged = ("error: %r" % e).encode()
        with self.b.cv:
            self.answers[i] = tagged
            self.b.cv.notify_all()

    def settled(self):
        def done(b):
            at = set(p for _, _, p in b.logins)
            return all(i in self.answers or pw in at for i, (pw, _) in enumerate(self.clients))
        self.b.wait(done, what="every session at the backend or answered")

    def refused(self):
        with self.b.cv:
            return [a for a in self.answers.values() if REFUSED in a and b" NO " in a]

    def finish(self):
        """Releases the backend and waits for every answer."""
        self.b.release_all()
        self.b.wait(lambda b: len(self.answers) == len(self.clients), what="all answers")
        for t in self.threads:
            t.join(5)
        for _, c in self.clients:
            c.close()
        return dict(self.answers)


def guess(proxy, ctx, tag, text):
    c = tls_session(proxy.port, ctx)
    try:
        _, tagged = c.command(tag, text, timeout=WAIT)
    finally:
        c.close()
    return tagged


def fail_once(proxy, ctx, b, user="demo", password="first-wrong"):
    n = b.count()
    if b.hold:
        b.release(password)
    tagged = guess(proxy, ctx, "F", "LOGIN %s %s" % (user, password))
    assert tagged.startswith(b"F NO"), tagged
    assert b.count() == n + 1


# --------------------------------------------------------------- one user ----

def test_first_burst_of_one_user_is_bounded_at_32(backend, proxy_factory, ctx):
    """40 logins of one user at once, none answered yet: exactly 32 reach
    the backend, the other 8 get NO [AUTHENTICATIONFAILED] from the proxy.
    Once those 32 failed, a further guess never reaches the backend."""
    b = backend(hold=True)
    proxy = start(proxy_factory, b, login={"address_fail_ban": "1000"})
    burst = Burst(proxy, ctx, b, [("pw%d" % i, "LOGIN demo pw%d" % i) for i in range(40)])
    burst.settled()
    assert b.count() == 32, b.count()
    assert len(burst.refused()) == 8, burst.answers
    answers = burst.finish()
    assert all(b" NO " in a for a in answers.values()), answers
    tagged = guess(proxy, ctx, "G", "LOGIN demo another")
    assert REFUSED in tagged and b.count() == 32, (tagged, b.count())


def test_burst_after_one_failure_gets_no_more_than_one_session(backend, proxy_factory, ctx):
    """One failure recorded, then 40 parallel guesses of the same user:
    at most fail_ban - 1 = 5 reach the backend while they are in progress;
    once answered, no further guess reaches it (6 in all)."""
    b = backend(hold=True)
    proxy = start(proxy_factory, b)
    fail_once(proxy, ctx, b)
    burst = Burst(proxy, ctx, b, [("pw%d" % i, "LOGIN demo pw%d" % i) for i in range(40)])
    burst.settled()
    assert b.count() <= 6, b.passwords()
    assert len(burst.refused()) >= 35
    burst.finish()
    for i in range(3):
        tagged = guess(proxy, ctx, "G%d" % i, "LOGIN demo later%d" % i)
        assert REFUSED in tagged, tagged
    assert b.count() <= 6, b.passwords()


def test_case_and_form_variants_of_a_user_are_one_user(backend, proxy_factory, ctx):
    """After one failure of 'demo', a burst whose user names differ only in
    case and in form (atom, quoted string, synchronising and non-synchronising
    literal) is one user: at most 6 guesses reach the backend in all."""
    b = backend(hold=True)
    proxy = start(proxy_factory, b)
    fail_once(proxy, ctx, b)
    names = ["Demo", "DEMO", "dEmO", "deMo", "DeMo", "dEMO", "DEmo", "demO"]
    commands = []
    for i in range(32):
        name = names[i % len(names)]
        pw = "v%d" % i
        form = i % 4
        if form == 0:
            commands.append((pw, "LOGIN %s %s" % (name, pw)))
        elif form == 1:
            commands.append((pw, 'LOGIN "%s" "%s"' % (name, pw)))
        elif form == 2:
            commands.append((pw, b"B%d LOGIN {4+}\r\n%s %s\r\n" % (i, name.encode(), pw.encode())))
        else:
            commands.append((pw, "AUTHENTICATE PLAIN %s" % plain(name, pw)))
    burst = Burst(proxy, ctx, b, commands)
    burst.settled()
    assert b.count() <= 6, b.logins
    burst.finish()
    assert b.count() <= 6, b.logins


def test_login_and_authenticate_plain_share_one_count(backend, proxy_factory, ctx):
    """Guesses one after another, alternating LOGIN (atom, quoted, literal
    password) and AUTHENTICATE PLAIN (initial response, continuation, a
    rotating authorization identity): 6 reach the backend, then the proxy
    refuses."""
    b = backend()
    proxy = start(proxy_factory, b)
    answers = []
    for i in range(12):
        pw = "Guess-%d" % i
        c = tls_session(proxy.port, ctx)
        kind = i % 4
        if kind == 0:
            _, t = c.command("A", "LOGIN demo %s" % pw, timeout=WAIT)
        elif kind == 1:
            c.write(b"A LOGIN demo {%d}\r\n" % len(pw))
            cont = c.read_line(WAIT)
            if cont.startswith(b"+"):
                c.write(pw.encode() + b"\r\n")
                _, t = c.read_until_tagged("A", WAIT)
            else:
                t = cont
        elif kind == 2:
            blob = base64.b64encode(b"admin%d\0demo\0%s" % (i, pw.encode())).decode()
            _, t = c.command("A", "AUTHENTICATE PLAIN %s" % blob, timeout=WAIT)
        else:
            c.write(b"A AUTHENTICATE PLAIN\r\n")
            cont = c.read_line(WAIT)
            if cont.startswith(b"+"):
                c.write(plain("demo", pw).encode() + b"\r\n")
                _, t = c.read_until_tagged("A", WAIT)
            else:
                t = cont
        c.close()
        answers.append(t)
    assert all(b" NO " in a for a in answers[:6]), answers
    assert b.count() == 6, b.logins
    # Refused by the proxy; an AUTHENTICATE refused after its '+' is
    # cancelled towards the backend, whose answer (BAD) the client gets.
    assert all(REFUSED in a or a == b"A BAD cancelled\r\n" for a in answers[6:]), answers[6:]


def sequential_guesses(proxy, ctx, forms):
    answers = []
    for text in forms:
        c = tls_session(proxy.port, ctx)
        c.write(text)
        _, t = c.read_until_tagged("A", WAIT)
        c.close()
        answers.append(t)
    return answers


def test_distinct_passwords_in_any_form_are_distinct_guesses(backend, proxy_factory, ctx):
    """'The same wrong password repeated counts once': distinct passwords
    sent as literals (sync and LITERAL+, user name a literal too) and as
    quoted strings with escapes each count: 6 reach the backend."""
    b = backend()
    proxy = start(proxy_factory, b)
    forms = []
    for i in range(10):
        pw = b"lit-%d" % i
        if i % 3 == 0:
            forms.append(b"A LOGIN demo {%d+}\r\n%s\r\n" % (len(pw), pw))
        elif i % 3 == 1:
            forms.append(b'A LOGIN demo "%s\\"q"\r\n' % pw)
        else:
            forms.append(b"A LOGIN {4+}\r\ndemo {%d+}\r\n%s\r\n" % (len(pw), pw))
    answers = sequential_guesses(proxy, ctx, forms)
    assert len(set(b.passwords())) == b.count() == 6, b.passwords()
    assert all(REFUSED in a for a in answers[6:]), answers[6:]


def test_long_passwords_differing_late_are_distinct_guesses(backend, proxy_factory, ctx):
    """10 guesses of 257-octet passwords that share their first 256 octets
    (a known prefix, a guessed tail), as atoms and as literals: they are 10
    different passwords, so only 6 may reach the backend."""
    b = backend()
    proxy = start(proxy_factory, b)
    prefix = b"y" * 256
    forms = []
    for i in range(10):
        pw = prefix + b"abcdefghij"[i:i + 1]
        forms.append(b"A LOGIN demo %s\r\n" % pw if i % 2 else
                     b"A LOGIN demo {%d+}\r\n%s\r\n" % (len(pw), pw))
    answers = sequential_guesses(proxy, ctx, forms)
    assert len(set(b.passwords())) == b.count()
    assert b.count() == 6, (b.count(), [a[:40] for a in answers])
    assert all(REFUSED in a for a in answers[6:]), answers[6:]


def test_long_password_repeated_counts_each_time(backend, proxy_factory, ctx):
    """The same 300-octet wrong password ten times: the proxy keeps only
    its first 256 octets, so it cannot tell a repeat from a new guess
    sharing them, and counts each: 6 reach the backend, the rest are
    refused."""
    b = backend()
    proxy = start(proxy_factory, b)
    pw = b"z" * 300
    forms = [b"A LOGIN demo {%d+}\r\n%s\r\n" % (len(pw), pw)] * 10
    answers = sequential_guesses(proxy, ctx, forms)
    assert b.count() == 6, (b.count(), [a[:40] for a in answers])
    assert all(REFUSED in a for a in answers[6:]), answers[6:]


def test_burst_straddling_the_first_failure(backend, proxy_factory, ctx):
    """10 logins of one user held at the backend, then one that fails at
    once (its NO read by the client), then 30 more: from the first failure
    on, the 10 in progress count, so none of the 30 reaches the backend."""
    b = backend(hold=True)
    proxy = start(proxy_factory, b)
    first = Burst(proxy, ctx, b, [("h%d" % i, "LOGIN demo h%d" % i) for i in range(10)])
    first.settled()
    assert b.count() == 10 and not first.answers
    fail_once(proxy, ctx, b, password="straddle")
    second = Burst(proxy, ctx, b, [("s%d" % i, "LOGIN demo s%d" % i) for i in range(30)])
    second.settled()
    assert b.count() == 11, b.passwords()
    assert len(second.refused()) == 30
    first.finish()
    second.finish()
    assert REFUSED in guess(proxy, ctx, "G", "LOGIN demo after")
    assert b.count() == 11


# ------------------------------------------------------------- hang-ups ----

def test_hang_up_while_the_backend_answers_spends_one_guess_not_a_slot(backend, proxy_factory,
                                                                        ctx):
    """3 clients hang up while their guesses are held at the backend: each
    spends a guess (the backend saw it) but none stays 'in progress': 3
    more guesses one after another still reach the backend, the 7th is
    refused."""
    b = backend(hold=True)
    proxy = start(proxy_factory, b)
    mark = proxy.log.mark()
    for i in range(3):
        c = tls_session(proxy.port, ctx)
        c.write(b"H LOGIN demo hang%d\r\n" % i)
        b.wait(lambda b, i=i: "hang%d" % i in b.passwords())
        c.close()
    wait_lines(proxy, r"session: closed", mark, 3)
    b.release_all()
    b.wait(lambda b: b.answered >= 3)
    answers = [guess(proxy, ctx, "G%d" % i, "LOGIN demo next%d" % i) for i in range(4)]
    assert [p for p in b.passwords() if p.startswith("next")] == ["next0", "next1", "next2"], \
        (b.passwords(), answers)
    assert REFUSED in answers[3], answers


def test_owner_logs_in_after_hang_ups_then_gets_a_full_burst(backend, proxy_factory, ctx):
    """3 hang-ups mid-login (one held at the backend, one inside a
    synchronising password literal, one during AUTHENTICATE's '+'), then
    the owner's right password from the same address is answered OK, and
    the success leaves nothing behind: a burst of 32 all reach the backend."""
    b = backend(hold=True)
    proxy = start(proxy_factory, b)
    mark = proxy.log.mark()
    c = tls_session(proxy.port, ctx)
    c.write(b"H LOGIN demo held\r\n")
    b.wait(lambda b: "held" in b.passwords())
    c.close()
    c = tls_session(proxy.port, ctx)
    c.write(b"H LOGIN demo {12}\r\n")
    assert c.read_line(WAIT).startswith(b"+")
    c.close()
    c = tls_session(proxy.port, ctx)
    c.write(b"H AUTHENTICATE PLAIN\r\n")
    assert c.read_line(WAIT).startswith(b"+")
    c.close()
    wait_lines(proxy, r"session: closed", mark, 3)
    b.release("held")
    b.release("demo")
    tagged = guess(proxy, ctx, "O", "LOGIN demo demo")
    assert tagged.startswith(b"O OK"), tagged
    burst = Burst(proxy, ctx, b, [("o%d" % i, "LOGIN demo o%d" % i) for i in range(33)])
    burst.settled()
    assert len([p for p in b.passwords() if p.startswith("o")]) == 32, b.passwords()
    burst.finish()


def test_hang_up_during_the_throttle_delay_still_counts(backend, proxy_factory, ctx):
    """A guesser that hangs up as soon as the backend has answered (it only
    waits for an OK, which is never delayed) must not escape the delayed
    failures' count: over 10 such guesses at most 6 reach the backend."""
    b = backend()
    proxy = start(proxy_factory, b, login={"delay_max": "3s"})
    outcomes = []
    for i in range(10):
        before_logins, before = b.count(), b.answered
        c = tls_session(proxy.port, ctx)
        got = {}

        def read(c=c, got=got):
            try:
                got["t"] = c.read_until_tagged("D", timeout=WAIT)[1]
            except Exception as e:
                got["t"] = ("error %r" % e).encode()
            with b.cv:
                b.cv.notify_all()

        c.write(b"D LOGIN demo delay%d\r\n" % i)
        t = threading.Thread(target=read, daemon=True)
        t.start()
        b.wait(lambda b: b.answered > before or "t" in got, what="backend answer or refusal")
        if b.count() > before_logins and "t" not in got:
            c.close()  # hang up before the (delayed) NO
            outcomes.append("hung up")
        else:
            outcomes.append(got["t"])
        t.join(WAIT)
        c.close()
    assert b.count() <= 6, (b.count(), outcomes)


# ------------------------------------------------------------------ NAT ----

def wait_lines(proxy, pattern, mark, n):
    h.wait_until(lambda: len(proxy.log.find(pattern, mark)) >= n, WAIT,
                 "%d log lines %r" % (n, pattern))


def test_nat_many_users_in_progress_are_not_counted_then_30_failures_ban(backend,
                                                                       proxy_factory, ctx):
    """Behind one address: 29 users each mistype once (finished failures),
    then 60 other users log in at once while their answers are held: all 60
    reach the backend and succeed. One more finished failure (the 30th)
    bans the address: a user with the right password is then refused."""
    users = {"u%d" % i: "p%d" % i for i in range(100)}
    b = backend(users=users)
    proxy = start(proxy_factory, b, login={"delay_max": "10ms"})
    for i in range(29):
        t = guess(proxy, ctx, "T%d" % i, "LOGIN u%d typo" % (60 + i))
        assert t.startswith(b"T%d NO" % i) and REFUSED in t, t
    assert b.count() == 29
    b.hold = True
    burst = Burst(proxy, ctx, b, [("p%d" % i, "LOGIN u%d p%d" % (i, i)) for i in range(60)])
    burst.settled()
    assert b.count() == 29 + 60, (b.count(), burst.answers)
    answers = burst.finish()
    bad = [a for a in answers.values() if b" OK " not in a]
    assert not bad, bad[:3]
    b.hold = False
    t = guess(proxy, ctx, "X", "LOGIN u99 typo")
    assert b.count() == 90
    t = guess(proxy, ctx, "Y", "LOGIN u98 p98")
    assert REFUSED in t and b.count() == 90, (t, b.count())


def test_nat_users_with_a_banned_neighbour_are_not_refused(backend, proxy_factory, ctx):
    """One user behind the NAT is banned (7 guesses); then 40 other users
    log in at once, held: all reach the backend and succeed."""
    users = {"n%d" % i: "p%d" % i for i in range(40)}
    b = backend(users=users)
    proxy = start(proxy_factory, b)
    for i in range(7):
        guess(proxy, ctx, "G%d" % i, "LOGIN demo wrong%d" % i)
    assert b.count() == 6
    b.hold = True
    burst = Burst(proxy, ctx, b, [("p%d" % i, "LOGIN n%d p%d" % (i, i)) for i in range(40)])
    burst.settled()
    assert b.count() == 46, burst.answers
    answers = burst.finish()
    assert all(b" OK " in a for a in answers.values()), answers


# ------------------------------------------------------ workers, reload ----

def test_two_workers_share_the_in_progress_count(backend, proxy_factory, ctx):
    """workers = 2: a first burst of 40 of one user lets exactly 32 through
    (the kernel spreads the sessions over both workers); after one failure
    (a fresh user), a burst of 20 lets at most 5 through."""
    b = backend(hold=True)
    proxy = start(proxy_factory, b, login={"address_fail_ban": "1000"}, proxy={"workers": "2"})
    burst = Burst(proxy, ctx, b, [("w%d" % i, "LOGIN demo w%d" % i) for i in range(40)])
    burst.settled()
    assert b.count() == 32, b.count()
    burst.finish()
    fail_once(proxy, ctx, b, user="other", password="other-first")
    n = b.count()
    burst = Burst(proxy, ctx, b, [("x%d" % i, "LOGIN other x%d" % i) for i in range(20)])
    burst.settled()
    assert b.count() - n <= 5, b.passwords()[n:]
    burst.finish()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_reload_in_the_middle_of_a_burst_keeps_the_count(backend, proxy_factory, ctx, workers):
    """20 logins of one user in progress, SIGHUP, 20 more: 32 reach the
    backend in all, as without the reload (with one worker and two)."""
    b = backend(hold=True)
    proxy = start(proxy_factory, b, proxy={"workers": workers})
    first = Burst(proxy, ctx, b, [("r%d" % i, "LOGIN demo r%d" % i) for i in range(20)])
    first.settled()
    ops.sighup(proxy, ops.RELOADED)
    second = Burst(proxy, ctx, b, [("s%d" % i, "LOGIN demo s%d" % i) for i in range(20)])
    second.settled()
    assert b.count() == 32, b.count()
    first.finish()
    second.finish()


def test_trust_withdrawn_and_granted_mid_burst_leaves_no_stale_count(backend, proxy_factory,
                                                                    ctx):
    """Logins begun while 127.0.0.0/8 was trusted finish after a reload that
    withdrew the trust, and logins begun untrusted finish after a reload
    that granted it. Afterwards, untrusted again, a fresh user's first
    burst still gets exactly 32 through, and 'demo' (whose held logins
    succeeded) too: nothing in progress was left counted or went negative."""
    users = {"demo": "demo", "fresh": "fresh"}
    b = backend(users=users, hold=True)
    proxy = start(proxy_factory, b, login={"trusted_networks": "127.0.0.0/8",
                                           "address_fail_ban": "1000"})
    trusted = Burst(proxy, ctx, b, [("demo", "LOGIN demo demo") for _ in range(10)])
    b.wait(lambda b: b.count() == 10)
    ops.rewrite_ini(proxy, {"login": {"trusted_networks": ""}})
    ops.sighup(proxy, ops.RELOADED)
    untrusted = Burst(proxy, ctx, b, [("fresh", "LOGIN fresh fresh") for _ in range(10)])
    b.wait(lambda b: b.count() == 20)
    ops.rewrite_ini(proxy, {"login": {"trusted_networks": "127.0.0.0/8"}})
    ops.sighup(proxy, ops.RELOADED)
    answers = list(trusted.finish().values()) + list(untrusted.finish().values())
    assert all(b" OK " in a for a in answers), answers
    ops.rewrite_ini(proxy, {"login": {"trusted_networks": ""}})
    ops.sighup(proxy, ops.RELOADED)
    for user in ("fresh", "demo"):
        b.all_released = False
        n = b.count()
        burst = Burst(proxy, ctx, b, [("%s-%d" % (user, i), "LOGIN %s %s-%d" % (user, user, i))
                                      for i in range(34)])
        burst.settled()
        assert b.count() - n == 32, (user, b.count() - n)
        burst.finish()
