"""deploy/fail2ban: Debian's fail2ban-regex, run over a real imapfront log
(text format, debug level: every line a session writes), finds every failed
and throttled login with the client's address, and nothing else: no
successful login, no policy refusal, no summary line, even when the user
name is made to look like another client field."""

import ast
import base64
import os
import re
import shutil
import subprocess
import time

import pytest

import imapfront_harness as h
import ops_support as ops
from test_gate import tls_session

FILTER = os.path.join(os.environ.get("IMAPFRONT_SRC", os.path.join(os.path.dirname(__file__),
                                                                   "..", "..")),
                      "deploy", "fail2ban", "filter.d", "imapfront.conf")
FAIL2BAN_REGEX = shutil.which("fail2ban-regex")
# Counted: the backend said NO, or the proxy refused a further guess.
COUNTED = re.compile(r" login: login failed result=(failed|throttled) ")


def fail2ban_rows(log_path):
    """fail2ban-regex's matches: (ip, epoch seconds, user) per matched line."""
    out = subprocess.run([FAIL2BAN_REGEX, "-o", "row", log_path, FILTER], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    rows = []
    for line in out.splitlines():
        line = line.strip().rstrip(",")
        if line.startswith("["):
            ip, when, info = ast.literal_eval(line)
            rows.append((ip, int(when), info.get("user")))
    return rows


@pytest.mark.skipif(FAIL2BAN_REGEX is None, reason="fail2ban is not installed (./dev setup)")
def test_fail2ban_regex_finds_every_failed_login_and_nothing_else(emulator_factory,
                                                                   proxy_factory, ctx):
    emu = emulator_factory()
    # No delay (a fast test), a ban after 3 failures per address and user.
    proxy = proxy_factory(emu.plain_port, extra={
        "proxy": {"log_level": "debug"},
        "login": {"fail_free": "3", "fail_ban": "3", "delay_max": "0"},
    })
    started = time.time()
    # Successful logins, each in a session of its own with some traffic.
    for i in range(2):
        c = tls_session(proxy.port, ctx)
        _, tagged = c.command("S%d" % i, "LOGIN demo demo")
        assert tagged.startswith(b"S%d OK" % i), tagged
        c.command("N", "NOOP")
        c.command("Z", "LOGOUT")
    # Three wrong passwords for demo: the emulator's NO; then two more,
    # which the proxy refuses itself (throttled).
    c = tls_session(proxy.port, ctx)
    answers = [c.command("F%d" % i, "LOGIN demo wrong%d" % i)[1] for i in range(5)]
    assert all(b" NO " in a for a in answers), answers
    assert b"[AUTHENTICATIONFAILED]" in answers[3] and b"[AUTHENTICATIONFAILED]" in answers[4]
    # A user name that mimics a later field, and a failed AUTHENTICATE PLAIN.
    _, tagged = c.command("Q", 'LOGIN "x client=192.0.2.66:1 y" wrong')
    assert b" NO " in tagged, tagged
    plain = base64.b64encode(b"\0other\0wrong").decode()
    _, tagged = c.command("P", "AUTHENTICATE PLAIN " + plain)
    assert b" NO " in tagged, tagged
    # The owner logs in after all (from the same address: a new user
    # record, so only the address's counter stands against it).
    c.command("Z", "LOGOUT")
    c = tls_session(proxy.port, ctx)
    _, tagged = c.command("B", "LOGIN nobody nothing")
    assert b" NO " in tagged, tagged
    c.command("Z", "LOGOUT")

    proxy.proc.send_signal(2)  # SIGINT: drain and stop, so the log is complete
    assert ops.wait_exit(proxy, 10) == 0
    lines = proxy.log.lines()
    counted = [l for l in lines if COUNTED.search(l)]
    results = [COUNTED.search(l).group(1) for l in counted]
    assert results.count("failed") == 6 and results.count("throttled") == 2, counted
    # The log holds everything else too: successes, summaries, commands.
    assert sum(" result=ok " in l for l in lines) == 2, lines
    assert sum(" session: closed " in l for l in lines) == 4, lines
    assert any(" debug " in l for l in lines)

    rows = fail2ban_rows(proxy.log.path)
    assert len(rows) == len(counted) == 8, (rows, counted)
    # The right host for every one (never the address in the user name)...
    assert {ip for ip, _, _ in rows} == {"127.0.0.1"}, rows
    # ... at the right time (the log's UTC "Z" read as UTC) ...
    for _, when, _ in rows:
        assert started - 5 <= when <= time.time() + 5, (when, started)
    # ... and the user of each counted line, in order.
    users = [u.strip('"') for _, _, u in rows]
    assert users == ["demo"] * 5 + ["x client=192.0.2.66:1 y", "other", "nobody"], users
    # Exactly the counted lines: matched messages are those lines.
    out = subprocess.run([FAIL2BAN_REGEX, "-o", "msg", proxy.log.path, FILTER],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    matched = [l for l in out.splitlines() if " login: " in l]
    assert len(matched) == 8
    for m, l in zip(matched, counted):
        assert m.strip() in l, (m, l)


@pytest.mark.skipif(FAIL2BAN_REGEX is None or not os.path.isdir("/etc/fail2ban"),
                    reason="fail2ban is not installed (./dev setup)")
def test_example_jail_passes_fail2bans_configuration_test(tmp_path):
    """The shipped jail, with its placeholder log path pointed at a real
    file, is accepted by fail2ban-client's own configuration test and
    uses the shipped filter."""
    conf = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", conf)
    for f in (conf / "jail.d").iterdir():
        f.unlink()
    shutil.copy(FILTER, conf / "filter.d" / "imapfront.conf")
    log = tmp_path / "imapfront.log"
    log.write_text("")
    jail = os.path.join(os.path.dirname(os.path.dirname(FILTER)), "jail.d", "imapfront.local")
    with open(jail) as f:
        text = f.read()
    assert re.search(r"^logpath\s*=", text, re.M), text
    text = re.sub(r"^logpath\s*=.*$", "logpath  = %s" % log, text, flags=re.M)
    (conf / "jail.d" / "imapfront.local").write_text(text)
    client = shutil.which("fail2ban-client")
    test = subprocess.run([client, "-c", str(conf), "-t"], capture_output=True, text=True,
                          timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr
    dump = subprocess.run([client, "-c", str(conf), "-d"], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    assert "['add', 'imapfront', 'auto']" in dump, dump
    assert "login: login failed result=(?:failed|throttled)" in dump, dump
