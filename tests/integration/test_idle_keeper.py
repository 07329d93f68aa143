"""imapfront's IDLE keeper, seen by a client and by the emulator's log.

* [imap] idle_keepalive = 1s: a client in IDLE gets "* OK Still here"
  about every second; DONE ends the IDLE with one tagged OK.
* [backend] idle_refresh = 1500ms: the backend sees the client's one IDLE
  re-issued several times; the client never sees the extra "+" or the
  extra tagged completions, and DONE gives it one tagged OK.
* [backend] idle = poll, poll_interval = 500ms: the proxy answers
  "+ idling" itself, the backend gets "imapfront-poll NOOP" and no IDLE,
  a message APPENDed by another session shows up as "* N EXISTS" to the
  idler, DONE gives "TAG OK IDLE terminated"."""

import re
import socket
import time

import imapfront_harness as h


def lines_for(c, seconds):
    """Every line the server sends during `seconds` (bounded)."""
    out = []
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        try:
            out.append((time.monotonic(), c.read_line(left)))
        except socket.timeout:
            return out


def start_idle(c, tag="I1"):
    untagged, tagged = c.command("S1", "SELECT INBOX")
    assert tagged.startswith(b"S1 OK"), tagged
    c.write(b"%s IDLE\r\n" % tag.encode())
    cont = c.read_line()
    assert cont.startswith(b"+"), cont
    return cont, untagged


def finish_idle(c, tag="I1"):
    c.write(b"DONE\r\n")
    untagged, tagged = c.read_until_tagged(tag)
    assert tagged.startswith(b"%s OK" % tag.encode()), tagged
    # Exactly one completion: the next command's reply is the next thing.
    _, t = c.command("N9", "NOOP")
    assert t.startswith(b"N9 OK"), t
    return untagged, tagged


def idle_cmds(emu, mark):
    return emu.log.find(r"\bconn (\d+) cmd (\S+) IDLE\b", mark)


def test_keepalive_every_second(proxy_factory, emulator, ctx):
    proxy = proxy_factory(emulator.plain_port, extra={"imap": {"idle_keepalive": "1s"}})
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
        start_idle(c)
        got = lines_for(c, 3.6)
        texts = [l for _, l in got]
        assert all(l == b"* OK Still here\r\n" for l in texts), texts
        assert 2 <= len(got) <= 5, texts
        times = [t for t, _ in got]
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(0.5 <= g <= 1.8 for g in gaps), gaps
        finish_idle(c)


def test_idle_refresh_hidden_from_client(proxy_factory, emulator, ctx):
    proxy = proxy_factory(emulator.plain_port, extra={"backend": {"idle_refresh": "1500ms"}})
    with h.TLSClient(proxy.port, ctx) as c:
        h.login(c)
        mark = emulator.log.mark()
        start_idle(c)
        # Wait (bounded) for the backend to have been sent IDLE three times
        # for this one client IDLE; the client sees nothing meanwhile.
        seen = []
        deadline = time.monotonic() + 6.0
        while len(idle_cmds(emulator, mark)) < 3 and time.monotonic() < deadline:
            seen += [l for _, l in lines_for(c, 0.3)]
        cmds = idle_cmds(emulator, mark)
        assert len(cmds) >= 3, emulator.log.lines(mark)
        assert len({m.group(1) for m in cmds}) == 1, cmds  # one backend connection
        seen += [l for _, l in lines_for(c, 0.3)]
        assert not [l for l in seen if l.startswith(b"+") or not l.startswith(b"* ")], seen
        untagged, tagged = finish_idle(c)
        assert not [l for l in untagged if l.startswith(b"+")], untagged
        assert tagged.startswith(b"I1 OK"), tagged


def test_poll_mode(proxy_factory, emulator, ctx):
    proxy = proxy_factory(emulator.plain_port,
                          extra={"backend": {"idle": "poll", "poll_interval": "500ms"}})
    with h.TLSClient(proxy.port, ctx) as a, h.TLSClient(proxy.port, ctx) as b:
        h.login(a)
        untagged, tagged = a.command("C1", "CAPABILITY")
        assert b" IDLE" in b"".join(untagged), untagged
        mark = emulator.log.mark()
        cont, selected = start_idle(a)
        assert cont == b"+ idling\r\n", cont
        exists = [int(m.group(1)) for m in
                  (re.match(rb"\* (\d+) EXISTS", l) for l in selected) if m][-1]
        emulator.log.wait_for(r"\bcmd imapfront-poll NOOP\b", since=mark, timeout=3)
        h.login(b)
        tagged = h.append(b, "A1", b"Subject: poll\r\n\r\nhello\r\n")
        assert tagged.startswith(b"A1 OK"), tagged
        want = b"* %d EXISTS\r\n" % (exists + 1)
        got = []
        deadline = time.monotonic() + 5.0
        while want not in got and time.monotonic() < deadline:
            got += [l for _, l in lines_for(a, 0.2)]
        assert want in got, got
        assert not [l for l in got if not l.startswith(b"* ")], got
        # At least two polls went to the backend, and never an IDLE.
        h.wait_until(lambda: len(emulator.log.find(r"\bcmd imapfront-poll NOOP\b", mark)) >= 2,
                     3, "two polls")
        a.write(b"DONE\r\n")
        _, tagged = a.read_until_tagged("I1")
        assert tagged == b"I1 OK IDLE terminated\r\n", tagged
        _, t = a.command("N9", "NOOP")
        assert t.startswith(b"N9 OK"), t
        assert not idle_cmds(emulator, mark), emulator.log.lines(mark)
