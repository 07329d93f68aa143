#!/usr/bin/python3
"""Measures admission control against a slow backend (a measurement
command, not a test: meson does not run it).

A burst of --clients TLS clients connects at once through imapfront to the
legacy emulator started with a tiny listen queue (--backlog) and an accept
loop of --accept-rate connections a second: further SYNs are dropped and
retransmitted, as in front of an overloaded server. Each client reads its
greeting, logs in and logs out. For each configuration it prints how many
logged in, how many were refused (and with what), and how long the slowest
one waited for its greeting:

  before   no limit, no retry: queue_timeout = connect_timeout (a session
           ends at its first connect timeout, as before admission control)
  retry    no limit (max_connecting = 0), timed-out connects retried
           until queue_timeout
  limits   max_connecting = --max-connecting (at most the backlog), retry

Usage (from the source tree, after building):

  /usr/bin/python3 bench/admission.py --bin BUILD/src/imapfront
  /usr/bin/python3 bench/admission.py --clients 500 --accept-rate 40

Needs the Python 3 standard library and the openssl CLI (a throwaway
certificate). Everything listens on 127.0.0.1 only; every process it
started is stopped by its PID.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))

import imapfront_harness as h  # noqa: E402
import ops_support as ops  # noqa: E402
from test_admission import burst  # noqa: E402


def run(args, workdir, cert, ctx, name, backend):
    emu = ops.EmulatorAt(workdir, flags=["--listen-backlog", str(args.backlog),
                                         "--accept-rate", str(args.accept_rate)])
    extra = {"proxy": {"log_level": "info"},
             "backend": dict(backend, connect_timeout=args.connect_timeout, connect_rate="0")}
    proxy = h.Proxy(workdir, cert[0], cert[1], emu.port, extra=extra, label=name)
    try:
        t0 = time.monotonic()
        results, slowest = burst(proxy.port, ctx, args.clients, timeout=args.client_timeout)
        wall = time.monotonic() - t0
        ok = results.count("ok")
        refused = {}
        for r in results:
            if r != "ok":
                key = r.decode(errors="replace").strip() if isinstance(r, bytes) else r[:60]
                refused[key] = refused.get(key, 0) + 1
        print("| %-6s | %-44s | %4d / %d | %5.1f s | %5.1f s | %s |" % (
            name, ", ".join("%s=%s" % kv for kv in backend.items()), ok, args.clients, slowest,
            wall, "; ".join("%d× %s" % (n, k) for k, n in refused.items()) or "-"))
        sys.stdout.flush()
    finally:
        proxy.stop()
        emu.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", help="the imapfront binary (default: $IMAPFRONT_BIN or build/)")
    ap.add_argument("--clients", type=int, default=300)
    ap.add_argument("--backlog", type=int, default=2)
    ap.add_argument("--accept-rate", type=float, default=40.0)
    ap.add_argument("--max-connecting", type=int, default=2)
    ap.add_argument("--connect-timeout", default="5s")
    ap.add_argument("--queue-timeout", default="30s")
    ap.add_argument("--client-timeout", type=float, default=60.0,
                    help="how long a client waits for each answer (s)")
    ap.add_argument("--only", help="comma-separated subset of before,retry,limits")
    args = ap.parse_args()
    if args.bin:
        h.BIN = os.path.abspath(args.bin)
    if not os.access(h.BIN, os.X_OK):
        sys.exit("imapfront binary not found at %s (--bin)" % h.BIN)
    configs = [
        ("before", {"max_connecting": "0", "queue_timeout": args.connect_timeout}),
        ("retry", {"max_connecting": "0", "queue_timeout": args.queue_timeout}),
        ("limits", {"max_connecting": str(args.max_connecting),
                    "queue_timeout": args.queue_timeout}),
    ]
    only = set(args.only.split(",")) if args.only else None
    workdir = tempfile.mkdtemp(prefix="imf-admission-")
    try:
        cert = h.make_cert(workdir)
        ctx = h.client_context(cert[0])
        print("%d clients at once; backend: listen backlog %d, %g accepts/s; "
              "connect_timeout %s; load average %s" % (
                  args.clients, args.backlog, args.accept_rate, args.connect_timeout,
                  " ".join(open("/proc/loadavg").read().split()[:3])))
        print()
        print("| run    | [backend] keys                               | logged in | "
              "slowest greeting | wall | refused |")
        print("|---|---|---|---|---|---|")
        for name, backend in configs:
            if only is None or name in only:
                run(args, workdir, cert, ctx, name, backend)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
