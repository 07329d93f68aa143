#!/bin/sh
# Runs the benchmark (bench/run.py): imapfront, HAProxy, stunnel and nginx's
# mail proxy in front of the same IMAP sink, one worker each. As root it
# first installs what is missing with apt-get (stunnel4, haproxy, openssl,
# nginx-light, libnginx-mod-mail; --no-install never does). Options: --quick,
# --rounds R, --seconds T, --idle N, --sessions N, --realistic-seconds T,
# --modes LIST, --peers LIST, --json FILE, --keep; see bench/run.py --help.
set -eu
here=$(dirname "$0")
exec python3 "$here/run.py" "$@"
