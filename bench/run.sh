#!/bin/sh
# Runs the benchmark (bench/run.py): imapfront, HAProxy and stunnel in front
# of the same IMAP sink, one worker each. Options: --quick, --rounds R,
# --seconds T, --idle N, --json FILE, --keep; see bench/run.py --help.
set -eu
here=$(dirname "$0")
exec python3 "$here/run.py" "$@"
