#!/usr/bin/env python3
"""Profile imapfront (1 worker) under the APPEND workload of bench/run.py.

  --tool callgrind  imapfront runs under valgrind --tool=callgrind (user
                    space only, exact instruction counts; ~50x slower, so
                    the load is light), then callgrind_annotate prints the
                    functions with the most instructions (self cost).
  --tool perf       perf record -e cpu-clock -g -p PID while the load
                    runs at full speed (software clock sampling, kernel
                    included: works where hardware counters do not), then
                    perf report prints the symbols with the most samples.

Environment: IMAPFRONT_BIN as for run.py. Every process started here is
stopped by its PID at the end. The raw profile stays in --out when given.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the benchmark driver: build, cert, sink, peers)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tool", choices=("callgrind", "perf"), default="callgrind")
    ap.add_argument("--seconds", type=float, default=None,
                    help="load duration (default: 20 for callgrind, 10 for perf)")
    ap.add_argument("--size", type=int, default=8 << 20, help="APPEND size (default 8 MiB)")
    ap.add_argument("--top", type=int, default=15, help="entries to print (default 15)")
    ap.add_argument("--out", help="directory to keep the raw profile in")
    opts = ap.parse_args()
    seconds = opts.seconds or (20.0 if opts.tool == "callgrind" else 10.0)

    imapfront_bin = os.environ.get("IMAPFRONT_BIN",
                                   os.path.join(run.SOURCE_ROOT, "build", "src", "imapfront"))
    if not os.access(imapfront_bin, os.X_OK):
        sys.exit("profile: imapfront binary not found at %s (set IMAPFRONT_BIN)" % imapfront_bin)
    needed = ["openssl", "valgrind", "callgrind_annotate"] if opts.tool == "callgrind" \
        else ["openssl", "perf"]
    for exe in needed:
        if run.find_exe(exe) is None:
            sys.exit("profile: %s is not installed" % exe)
    run.raise_nofile()
    workdir = tempfile.mkdtemp(prefix="imf-profile-")
    outdir = opts.out or workdir
    os.makedirs(outdir, exist_ok=True)
    perf_proc = None
    try:
        sink_bin, client = run.build_tools(workdir, None)
        cert, key, combined = run.make_cert(workdir, run.find_exe("openssl"))
        sink_port = run.free_port()
        run.Proc("sink", [sink_bin, run.HOST, str(sink_port)], workdir, sink_port)
        peers = run.Peers(workdir, {}, imapfront_bin, sink_port, cert, key, combined, 1000)
        data = os.path.join(outdir, "callgrind.out" if opts.tool == "callgrind" else "perf.data")
        if opts.tool == "callgrind":
            wrapper = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + data]
            proc, port = peers.start("imapfront", wrapper, start_timeout=120)
        else:
            proc, port = peers.start("imapfront")
            perf_proc = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-g",
                                          "-p", str(proc.pid), "-o", data],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        line, _ = run.run_client(client, ["append", "--conns", "1", "--seconds", str(seconds),
                                          "--size", str(opts.size), "--port", str(port),
                                          "--pid", str(proc.pid), "--label", "imapfront"],
                                 timeout=seconds * 3 + 300)
        print(line)
        if perf_proc is not None:
            perf_proc.send_signal(signal.SIGINT)
            perf_proc.wait(timeout=60)
            perf_proc = None
        proc.stop()  # callgrind writes its file when imapfront exits
        print()
        if opts.tool == "callgrind":
            r = subprocess.run(["callgrind_annotate", "--inclusive=no", data],
                               capture_output=True, text=True, check=True)
            body = r.stdout.splitlines()
            # The header, the total and the first --top functions.
            start = next(i for i, ln in enumerate(body) if "file:function" in ln)
            total = [ln for ln in body[:start] if "PROGRAM TOTALS" in ln]
            print("\n".join(total + body[start:start + 2 + opts.top]))
        else:
            # Where the time goes by object (kernel, libcrypto, libc, ...),
            # then by symbol. Debian's libcrypto has no symbols for its
            # assembly (AES-GCM): those samples show as bare addresses, and
            # the per-object line is the one to read for them.
            for sort in ("dso", "dso,symbol"):
                r = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                                    "--sort", sort, "-g", "none", "--percent-limit", "0.5"],
                                   capture_output=True, text=True, check=True)
                rows = [ln.rstrip() for ln in r.stdout.splitlines()
                        if ln.strip() and not ln.startswith("#")]
                print("\n".join(rows[:opts.top]))
                print()
        if opts.out:
            print("\nprofile data: %s" % data)
        return 0
    finally:
        if perf_proc is not None and perf_proc.poll() is None:
            perf_proc.send_signal(signal.SIGINT)
            perf_proc.wait(timeout=60)
        run.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
