#!/usr/bin/python3
"""What a login-first session costs per login (a measurement command, not a
test: meson does not run it).

The same proxy binary runs twice per round in front of the legacy emulator
(tests/support/legacy_imapd.py): transparent (no [route]) and login-first
([route] default = default). In each, --clients client threads open
implicit-TLS sessions one after the other until --logins sessions are done;
every session reads the greeting, logs in (LOGIN demo demo), sends NOOP and
LOGOUT. For each mode it prints the wall time per login (from connect to
the LOGIN's OK, median and 90th percentile) and the proxy's CPU per
session (user + system time of its PID from /proc over the run, divided by
the sessions), and the ratio login-first / transparent. Modes alternate and
their order flips every round; medians are over --rounds.

Usage (from the source tree, after building):

  /usr/bin/python3 bench/loginfirst.py --bin build/src/imapfront
  /usr/bin/python3 bench/loginfirst.py --logins 2000 --clients 8 --rounds 5
  /usr/bin/python3 bench/loginfirst.py --sink build/bench/imf-bench-sink

Needs the Python 3 standard library and the openssl CLI (a throwaway
certificate). Everything listens on 127.0.0.1 only; every process it
started is stopped by its PID.
"""

import argparse
import os
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

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU seconds of pid so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def one_session(port, ctx):
    """Seconds from connect to the LOGIN's OK."""
    t0 = time.monotonic()
    c = h.TLSClient(port, ctx)
    try:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        g = c.read_line()
        if not g.startswith(b"* OK"):
            raise RuntimeError("greeting %r" % g)
        _, ok = c.command("L", "LOGIN demo demo")
        took = time.monotonic() - t0
        if not ok.startswith(b"L OK"):
            raise RuntimeError("login %r" % ok)
        c.command("N", "NOOP")
        c.command("Z", "LOGOUT")
        return took
    finally:
        c.close()


def measure(proxy, ctx, logins, clients):
    lock = threading.Lock()
    left = [logins]
    times, errors = [], []

    def worker():
        while True:
            with lock:
                if left[0] == 0 or errors:
                    return
                left[0] -= 1
            try:
                t = one_session(proxy.port, ctx)
            except Exception as e:  # reported below
                with lock:
                    errors.append(e)
                return
            with lock:
                times.append(t)

    cpu0, t0 = cpu_seconds(proxy.pid), time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall, cpu = time.monotonic() - t0, cpu_seconds(proxy.pid) - cpu0
    if errors:
        raise SystemExit("a session failed: %r" % errors[0])
    times.sort()
    return {"login_ms": 1000 * statistics.median(times),
            "login_p90_ms": 1000 * times[int(len(times) * 0.9) - 1],
            "cpu_us": 1e6 * cpu / len(times), "rate": len(times) / wall}


class Sink:
    """bench/sink.c on a port the kernel picks; stopped by its PID."""

    def __init__(self, path):
        import subprocess
        self.proc = subprocess.Popen([path, "127.0.0.1", "0"], stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise SystemExit("sink did not start: %r" % line)
        self.plain_port = int(line.rsplit(":", 1)[1])

    def stop(self):
        self.proc.kill()
        self.proc.wait(10)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=h.BIN)
    ap.add_argument("--logins", type=int, default=500)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sink", help="the bench's C sink (build/bench/imf-bench-sink) as the "
                    "backend instead of the Python emulator, whose own latency hides the "
                    "proxy's")
    args = ap.parse_args()
    h.BIN = os.path.abspath(args.bin)
    workdir = tempfile.mkdtemp(prefix="bench-loginfirst-")
    cert = h.make_cert(workdir)
    ctx = h.client_context(cert[0])
    if args.sink:
        emu = Sink(args.sink)
    else:
        emu = h.Emulator(workdir, cert[0], cert[1])
    modes = {"transparent": {}, "login-first": {"route": {"default": "default"}}}
    results = {m: [] for m in modes}
    try:
        for r in range(args.rounds):
            order = list(modes) if r % 2 == 0 else list(reversed(list(modes)))
            for mode in order:
                extra = {"proxy": {"log_level": "info"},
                         "login": {"throttle": "off"}}
                extra.update(modes[mode])
                proxy = h.Proxy(workdir, cert[0], cert[1], emu.plain_port, extra=extra,
                                label=mode)
                try:
                    res = measure(proxy, ctx, args.logins, args.clients)
                finally:
                    proxy.stop()
                results[mode].append(res)
                print("round %d %-12s login %.2f ms (p90 %.2f)  proxy CPU %.0f us/session  "
                      "%.0f sessions/s" % (r + 1, mode, res["login_ms"], res["login_p90_ms"],
                                           res["cpu_us"], res["rate"]), flush=True)
    finally:
        emu.stop()
    med = {m: {k: statistics.median(x[k] for x in results[m]) for k in results[m][0]}
           for m in modes}
    print("\n| mode | login wall ms (median) | p90 ms | proxy CPU us/session | sessions/s |")
    print("|---|---|---|---|---|")
    for m in modes:
        print("| %s | %.2f | %.2f | %.0f | %.0f |" % (m, med[m]["login_ms"], med[m]["login_p90_ms"],
                                                   med[m]["cpu_us"], med[m]["rate"]))
    t, lf = med["transparent"], med["login-first"]
    print("\nlogin-first / transparent: wall %.2fx, proxy CPU %.2fx (%+.0f us per login)"
          % (lf["login_ms"] / t["login_ms"], lf["cpu_us"] / t["cpu_us"],
             lf["cpu_us"] - t["cpu_us"]))


if __name__ == "__main__":
    main()
