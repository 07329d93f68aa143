#!/usr/bin/python3
"""What COMPRESS=DEFLATE at the proxy costs and saves (a measurement
command, not a test: meson does not run it).

For each round, imapfront is started twice in front of the legacy
emulator, with `[imap] compress = off` and `on`. One client logs in
(and, with `on`, sends COMPRESS DEFLATE, deflating what it writes and
inflating what it reads, with Python's zlib), APPENDs a corpus of text
messages (2 to 60 KiB of mail-like text each, the same corpus as the
mbsync test), then FETCHes the whole mailbox --fetches times. Measured
for each direction:

  * plaintext MiB and MiB on the wire (inside TLS) from the proxy's
    `imapfront_compress_bytes_total` counters (with `off`, wire = plain);
  * the proxy's CPU time per plaintext MiB: the sum of every thread's
    run time from /proc/PID/task/*/schedstat (nanoseconds), read before
    and after the phase.

The COMPRESS cost per MiB is the median `on` minus the median `off`. The
client and the emulator (Python) share the 2 cores with the proxy, which
slows the run but does not enter the proxy's CPU time.

Usage (from the source tree, after building):

  IMAPFRONT_BIN=BUILD/src/imapfront /usr/bin/python3 bench/compress.py
  /usr/bin/python3 bench/compress.py --bin BUILD/src/imapfront --rounds 5 --fetches 8 --level 6
"""

import argparse
import glob
import os
import random
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))

import imapfront_harness as h  # noqa: E402
import ops_support as ops  # noqa: E402
from test_compress import METRIC, ZClient, text_message  # noqa: E402

MiB = 1 << 20


def cpu_ns(pid):
    """Run time of every thread of pid so far, in nanoseconds."""
    total = 0
    for path in glob.glob("/proc/%d/task/*/schedstat" % pid):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that just ended
    return total


def counters(proxy):
    m = ops.scrape(proxy)
    return {(d, s): m.get(METRIC, 0, direction=d, stage=s)
            for d in ("in", "out") for s in ("wire", "plain")}


def one_run(workdir, cert, key, emu, mode, level, window, corpus, fetches, label):
    """One proxy, one client session; returns {direction: (plain, wire, cpu_ns)}."""
    proxy = ops.start_proxy(
        lambda port, extra: h.Proxy(workdir, cert, key, port, extra=extra), emu.plain_port,
        extra={"imap": {"compress": mode, "compress_level": str(level),
                        "compress_window": window}})
    try:
        ctx = h.client_context(cert)
        with ZClient(proxy.port, ctx, timeout=120) as c:
            h.login(c)
            if mode == "on":
                c.compress()
            box = "Bench" + label
            assert c.command("C", "CREATE %s" % box)[1].startswith(b"C OK")
            c0, k0 = cpu_ns(proxy.pid), counters(proxy)
            up = 0
            for i, msg in enumerate(corpus):
                c.write(b"A%d APPEND %s {%d+}\r\n" % (i, box.encode(), len(msg)) + msg + b"\r\n")
                _, tagged = c.read_until_tagged("A%d" % i)
                assert tagged.startswith(b"A%d OK" % i), tagged
                up += len(msg)
            c1, k1 = cpu_ns(proxy.pid), counters(proxy)
            assert c.command("S", "SELECT %s" % box)[1].startswith(b"S OK")
            c2, k2 = cpu_ns(proxy.pid), counters(proxy)
            down = 0
            for f in range(fetches):
                lines, tagged = c.command("F%d" % f, "FETCH 1:* BODY.PEEK[]")
                assert tagged.startswith(b"F%d OK" % f), tagged
                down += sum(len(x) for x in lines)
            c3, k3 = cpu_ns(proxy.pid), counters(proxy)
            c.command("Z", "LOGOUT")
    finally:
        proxy.stop()
    if mode == "off":
        return {"up": (up, up, c1 - c0), "down": (down, down, c3 - c2)}
    return {"up": (k1[("in", "plain")] - k0[("in", "plain")],
                   k1[("in", "wire")] - k0[("in", "wire")], c1 - c0),
            "down": (k3[("out", "plain")] - k2[("out", "plain")],
                     k3[("out", "wire")] - k2[("out", "wire")], c3 - c2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", help="imapfront binary (default: IMAPFRONT_BIN or build/src/imapfront)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--level", type=int, default=1,
                    help="[imap] compress_level of the proxy, 1..9 (default 1, its default)")
    ap.add_argument("--window", default="8k",
                    help="[imap] compress_window of the proxy, 1k..32k (default 8k, its default)")
    ap.add_argument("--messages", type=int, default=100, help="corpus size (default 100)")
    ap.add_argument("--fetches", type=int, default=4,
                    help="FETCH 1:* BODY.PEEK[] of the whole corpus this many times (default 4)")
    args = ap.parse_args(argv)
    if args.bin:
        h.BIN = os.path.abspath(args.bin)
    if not os.access(h.BIN, os.X_OK):
        ap.error("no imapfront binary at %s (use --bin or IMAPFRONT_BIN)" % h.BIN)
    if not 1 <= args.level <= 9:
        ap.error("--level takes 1..9")
    if not 1 <= args.rounds <= 50 or not 1 <= args.messages <= 5000 or not 1 <= args.fetches <= 100:
        ap.error("rounds 1..50, messages 1..5000, fetches 1..100")
    rng = random.Random(100)
    corpus = [text_message(i, rng).replace(b"\n", b"\r\n") for i in range(args.messages)]
    print("# imapfront %s; compress_level %d, compress_window %s; corpus %d messages, %.1f MiB; %d round(s), "
          "%d fetch(es); load %.2f"
          % (h.BIN, args.level, args.window, len(corpus), sum(map(len, corpus)) / MiB, args.rounds,
             args.fetches, os.getloadavg()[0]))
    workdir = tempfile.mkdtemp(prefix="imf-compress-bench-")
    emu = None
    results = {m: {"up": [], "down": []} for m in ("off", "on")}
    try:
        cert, key = h.make_cert(workdir)
        emu = h.Emulator(workdir, cert, key)
        for r in range(args.rounds):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            for mode in order:
                got = one_run(workdir, cert, key, emu, mode, args.level, args.window, corpus,
                              args.fetches, "%d%s" % (r, mode))
                for d, v in got.items():
                    results[mode][d].append(v)
                    print("RESULT round=%d compress=%s direction=%s plain=%d wire=%d cpu_ns=%d"
                          % (r, mode, d, v[0], v[1], v[2]))
    finally:
        if emu is not None:
            emu.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def med(mode, d, f):
        return statistics.median(f(v) for v in results[mode][d])

    print()
    print("| direction | compress | plain MiB | wire MiB | saved | proxy CPU ms/MiB |")
    print("|---|---|---|---|---|---|")
    for d, what in (("up", "client to proxy (APPEND)"), ("down", "proxy to client (FETCH)")):
        for mode in ("off", "on"):
            plain = med(mode, d, lambda v: v[0]) / MiB
            wire = med(mode, d, lambda v: v[1]) / MiB
            cpu = med(mode, d, lambda v: v[2] / 1e6 / (v[0] / MiB))
            print("| %s | %s | %.1f | %.1f | %.1f%% | %.2f |"
                  % (what, mode, plain, wire, 100.0 * (1 - wire / plain), cpu))
    print()
    for d, verb in (("up", "inflate (client to proxy)"), ("down", "deflate (proxy to client)")):
        cost = (med("on", d, lambda v: v[2] / 1e6 / (v[0] / MiB))
                - med("off", d, lambda v: v[2] / 1e6 / (v[0] / MiB)))
        print("COMPRESS cost, %s: %.2f ms of proxy CPU per plaintext MiB" % (verb, cost))
    return 0


if __name__ == "__main__":
    sys.exit(main())
