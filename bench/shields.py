#!/usr/bin/python3
"""Measures imapfront's legacy-backend shields (a measurement command, not
a test: meson does not run it).

  1. Round trips saved by `literal_plus = sync`: a delaying TCP relay
     (written here, in Python) sits between the client and imapfront and
     adds --delay-ms each way; behind imapfront the legacy emulator runs
     without LITERAL+. The client APPENDs --messages messages of 1 KiB:
     with "{N}" through `literal_plus = pass` (it waits for each "+"), then
     with "{N+}" through `literal_plus = sync`, each APPEND waiting for its
     tagged answer; then "{N+}" pipelined. Prints wall times and ratios.
  2. Hang/drop rates: for each shield, --runs runs of the 200-command
     workload of tests/integration/test_shields.py (APPENDs of 0..256 KiB
     with "{N}" and "{N+}", UID FETCHes, NOOPs, pipelined in batches)
     against the emulator with the matching bug, shield off and on. A run
     fails when the session is dropped, nothing arrives for 3 s (hang), an
     answer is not OK, or a message does not come back byte-exact.
  3. Cost of the shields: the same workload against a bug-free emulator
     with `quirks = none` and `quirks = exchange55` (median of --cost-runs).

Usage (from the source tree, after building):

  IMAPFRONT_BIN=BUILD/src/imapfront /usr/bin/python3 bench/shields.py
  /usr/bin/python3 bench/shields.py --bin BUILD/src/imapfront --runs 5 --sections rates

Needs the Python 3 standard library, pytest (the workload lives in a test
module) and the openssl CLI (a throwaway certificate). Everything listens
on 127.0.0.1 only. The load average is printed with the results: the split
shield depends on timing, so results on a busy machine differ.
"""

import argparse
import collections
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))

import imapfront_harness as h  # noqa: E402
import test_shields as T  # noqa: E402


# ----------------------------------------------------------------- relay ----

class DelayRelay:
    """Accepts on 127.0.0.1 and relays each connection to target_port,
    delivering every chunk `delay` seconds after it was read, in order,
    in both directions. EOF is passed on (after the delay) as a shutdown."""

    def __init__(self, target_port, delay):
        self.target_port = target_port
        self.delay = delay
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.socks = []
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed.is_set():
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            for x in (a, b):
                x.settimeout(None)
                x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.socks.append(x)
            self._pipe(a, b)
            self._pipe(b, a)

    def _pipe(self, src, dst):
        queue = collections.deque()
        cv = threading.Condition()

        def reader():
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                with cv:
                    queue.append((time.monotonic() + self.delay, data))
                    cv.notify()
                if not data:
                    return

        def writer():
            while True:
                with cv:
                    while not queue:
                        cv.wait(1.0)
                        if self.closed.is_set():
                            return
                    due, data = queue[0]
                    left = due - time.monotonic()
                    if left > 0:
                        cv.wait(left)
                        continue
                    queue.popleft()
                try:
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=reader, daemon=True).start()
        threading.Thread(target=writer, daemon=True).start()

    def stop(self):
        self.closed.set()
        self.listener.close()
        for x in self.socks:
            try:
                x.close()
            except OSError:
                pass


# ------------------------------------------------------------- sections ----

class Env:
    def __init__(self, workdir):
        self.workdir = workdir
        self.cert, self.key = h.make_cert(workdir)
        self.ctx = h.client_context(self.cert)
        self.children = []

    def emulator(self, flags):
        emu = h.Emulator(self.workdir, self.cert, self.key, flags=flags)
        self.children.append(emu)
        return emu

    def proxy(self, backend_port, backend_keys):
        p = h.Proxy(self.workdir, self.cert, self.key, backend_port,
                    extra={"backend": backend_keys})
        self.children.append(p)
        return p

    def stop(self):
        for c in reversed(self.children):
            c.stop()


def timed_appends(port, ctx, delay, n, mode):
    """Seconds for n APPENDs of 1 KiB over a relay adding `delay` each way;
    mode is "sync" ({N}, wait for +), "plus" ({N+}, wait for each OK) or
    "pipelined" (all {N+} at once). Returns (seconds, + lines seen)."""
    relay = DelayRelay(port, delay)
    try:
        s = T.Session(h.TLSClient(relay.port, ctx, timeout=30), deadline=30)
        try:
            s.response()
            _, tagged = s.command("L", "LOGIN demo demo")
            assert tagged.status == b"OK", tagged.text
            bodies = [T.body_for(1024, i) for i in range(n)]
            start = time.monotonic()
            if mode == "pipelined":
                s.send(b"".join(b"A%d APPEND INBOX {%d+}\r\n" % (i, len(b)) + b + b"\r\n"
                                for i, b in enumerate(bodies)))
            for i, body in enumerate(bodies):
                tag = b"A%d" % i
                if mode == "sync":
                    s.send(b"%s APPEND INBOX {%d}\r\n" % (tag, len(body)))
                    r = s.response()
                    assert r.kind == "continuation", r.text
                    s.send(body + b"\r\n")
                elif mode == "plus":
                    s.send(b"%s APPEND INBOX {%d+}\r\n" % (tag, len(body)) + body + b"\r\n")
                r = s.response()
                assert r.kind == "tagged" and r.tag == tag and r.status == b"OK", r.text
            return time.monotonic() - start, s.continuations
        finally:
            s.c.close()
    finally:
        relay.stop()


def section_round_trips(env, args, out):
    delay = args.delay_ms / 1000.0
    emu = env.emulator(["--no-literal-plus"])
    passing = env.proxy(emu.plain_port, {"literal_plus": "pass"})
    syncing = env.proxy(emu.plain_port, {"literal_plus": "sync"})
    t_sync, c_sync = timed_appends(passing.port, env.ctx, delay, args.messages, "sync")
    t_plus, c_plus = timed_appends(syncing.port, env.ctx, delay, args.messages, "plus")
    t_pipe, c_pipe = timed_appends(syncing.port, env.ctx, delay, args.messages, "pipelined")
    out("1. Round trips: %d APPENDs of 1 KiB, %d ms added each way between client "
        "and imapfront;" % (args.messages, args.delay_ms))
    out("   backend without LITERAL+ (emulator --no-literal-plus)")
    out("   %-58s %8.2f s   (%d '+' waited for)" % (
        "{N}  through literal_plus = pass, one APPEND at a time", t_sync, c_sync))
    out("   %-58s %8.2f s   (%d '+')   %.2fx faster" % (
        "{N+} through literal_plus = sync, one APPEND at a time", t_plus, c_plus,
        t_sync / t_plus))
    out("   %-58s %8.2f s   (%d '+')   %.1fx faster" % (
        "{N+} through literal_plus = sync, all pipelined", t_pipe, c_pipe, t_sync / t_pipe))
    out("")


# (name, emulator flags, [backend] keys off, keys on)
def rate_configs():
    rows = []
    for knob in ("pipelining", "literal_crlf_split", "quirks"):
        flags, off, on, _ = T.KNOBS[knob]
        rows.append((knob, flags, off, on))
    rows.append(("literal_crlf_split, pipelining on", ["--bug-coalesce", "on"],
                 {"literal_crlf_split": "off"}, {"literal_crlf_split": "on"}))
    return rows


def describe(keys):
    return ", ".join("%s=%s" % kv for kv in keys.items())


def section_rates(env, args, out):
    workload = T.Workload()
    out("2. Hang/drop rate: %d runs per cell of the %d-command workload "
        "(%d APPENDs of 0..256 KiB, %d with {N+}), TLS client pipelining in batches of 5..10"
        % (args.runs, workload.commands, workload.appends, workload.nonsync_appends))
    out("   %-34s %-32s %-22s %-22s" % ("shield", "emulator bug", "off: failed", "on: failed"))
    for name, flags, off, on in rate_configs():
        emu = env.emulator(flags)
        cells = []
        for keys in (off, on):
            proxy = env.proxy(emu.plain_port, keys)
            kinds = collections.Counter()
            for _ in range(args.runs):
                _, failure = T.run_workload(proxy.port, env.ctx, workload)
                if failure is not None:
                    kinds[failure.how] += 1
            failed = sum(kinds.values())
            detail = ", ".join("%d %s" % (v, k) for k, v in sorted(kinds.items()))
            cells.append("%d/%d%s" % (failed, args.runs, " (%s)" % detail if detail else ""))
            proxy.stop()
        out("   %-34s %-32s %-22s %-22s" % (name, " ".join(flags), cells[0], cells[1]))
        out("   %-34s off: %s; on: %s" % ("", describe(off), describe(on)))
    out("")


COST_ROWS = [
    ("quirks = none", {"quirks": "none"}),
    ("quirks = exchange55", {"quirks": "exchange55"}),
    # One shield at a time, to see where the cost comes from.
    ("  only pipelining = off", {"pipelining": "off"}),
    ("  only literal_plus = sync", {"literal_plus": "sync"}),
    ("  only literal_crlf_split = on", {"literal_crlf_split": "on"}),
]


def section_cost(env, args, out):
    workload = T.Workload()
    emu = env.emulator([])
    out("3. Cost: the %d-command workload (without the fetch-back) against a bug-free "
        "emulator, median of %d runs" % (workload.commands, args.cost_runs))
    medians = {}
    for label, keys in COST_ROWS:
        proxy = env.proxy(emu.plain_port, keys)
        runs, failures = [], []
        for _ in range(args.cost_runs):
            s = None
            try:
                s = T.open_session(proxy.port, env.ctx, deadline=10.0)
                runs.append(workload.run(s)["seconds"])
            except T.RunFailed as e:
                failures.append(e.how)
            finally:
                if s is not None:
                    s.c.close()
        st = proxy.stats()
        proxy.stop()
        counters = " ".join("%s=%d" % (k, st[k]) for k in (
            "commands_held", "literals_converted", "crlf_splits", "longest_queue"))
        failed = ""
        if failures:
            failed = "  %d of %d runs failed (%s), not timed" % (
                len(failures), args.cost_runs, ", ".join(failures))
        if runs:
            medians[label] = statistics.median(runs)
            out("   %-32s %7.2f s  (min %.2f, max %.2f)%s" % (
                label, medians[label], min(runs), max(runs), failed))
        else:
            out("   %-32s     n/a%s" % (label, failed))
        out("   %-32s counters over all runs: %s" % ("", counters))
    base = medians.get("quirks = none")
    if base:
        for label, _ in COST_ROWS[1:]:
            if label in medians:
                out("   %-32s %.2fx the time of quirks = none" % (label.strip(),
                                                                  medians[label] / base))
    out("")


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Measure imapfront's legacy-backend shields: round trips saved by "
        "literal_plus = sync, hang/drop rates with each shield off and on, and their cost.",
        epilog="Not a test; prints a table. See the module docstring for details.")
    ap.add_argument("--bin", default=os.environ.get("IMAPFRONT_BIN"),
                    help="imapfront binary (default: $IMAPFRONT_BIN, else build/src/imapfront)")
    ap.add_argument("--runs", type=int, default=20, help="runs per shield and setting (20)")
    ap.add_argument("--messages", type=int, default=100, help="APPENDs in section 1 (100)")
    ap.add_argument("--delay-ms", type=int, default=50, help="delay added each way (50)")
    ap.add_argument("--cost-runs", type=int, default=5, help="runs per setting in section 3 (5)")
    ap.add_argument("--sections", default="rtt,rates,cost",
                    help="comma-separated subset of rtt,rates,cost")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args(argv)
    if args.bin:
        h.BIN = os.path.abspath(args.bin)
    if not os.access(h.BIN, os.X_OK):
        ap.error("no imapfront binary at %s (use --bin or IMAPFRONT_BIN)" % h.BIN)
    if args.runs < 1 or args.messages < 1 or args.cost_runs < 1 or args.delay_ms < 0:
        ap.error("counts must be positive")
    sections = set(args.sections.split(","))
    if not sections <= {"rtt", "rates", "cost"}:
        ap.error("unknown section in %r" % args.sections)

    def out(line):
        print(line, flush=True)

    workdir = tempfile.mkdtemp(prefix="imapfront-bench-shields-")
    env = Env(workdir)
    start = time.monotonic()
    try:
        out("imapfront shields benchmark: %s; %d CPUs; load average %.2f at start"
            % (h.BIN, os.cpu_count() or 0, os.getloadavg()[0]))
        out("")
        if "rtt" in sections:
            section_round_trips(env, args, out)
        if "rates" in sections:
            section_rates(env, args, out)
        if "cost" in sections:
            section_cost(env, args, out)
        out("done in %.0f s; load average %.2f at the end" % (
            time.monotonic() - start, os.getloadavg()[0]))
    finally:
        env.stop()
        if args.keep:
            out("work directory kept: %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
