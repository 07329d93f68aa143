#!/bin/bash
# check_deb.sh [SOURCE_DIR]: builds the Debian package and proves it the way
# an administrator would meet it, in a clean Debian 12 root made with
# `debootstrap --variant=minbase bookworm`:
#
#   1. dpkg-buildpackage -us -uc -b on a copy of the source tree;
#   2. apt-get install ./imapfront_*.deb in a fresh copy of the root (only
#      Debian's mirror is used, for the runtime libraries);
#   3. checks: the system user imapfront exists, /etc/imapfront/proxy.ini
#      is a conffile readable by root and group imapfront only, the unit is
#      installed and not enabled, the man pages are there, and the packaged
#      config is refused by `imapfront -t` only for its missing certificate;
#   4. with a certificate in place and [backend] servers pointed at the
#      bundled emulator (the one change to the packaged file), runs the
#      unit's own ExecStartPre and ExecStart commands in the root, as the
#      unit's user with only CAP_NET_BIND_SERVICE (what User= and
#      AmbientCapabilities= give it; there is no init in a chroot), in a
#      private network namespace so port 993 is its own; then logs in with
#      curl through port 993 and stops it with SIGTERM (exit status 0).
#
# Needs root, dpkg-buildpackage and debhelper, debootstrap, unshare, chroot,
# openssl and curl; exits 77 (meson's "skipped") with the reason when one
# is missing. The root is built once and cached as a tarball shared with
# check_container.sh: ${TMPDIR:-/tmp}/fresh-debian-bookworm-minbase.tar.
# About a minute with the cache (the build and apt), 1 to 3 more to build it.
# Environment: KEEP=1 keeps the work directory (its path is printed).
set -euo pipefail

skip() { echo "check_deb: SKIP: $*"; exit 77; }
fail() { echo "check_deb: FAIL: $*" >&2; exit 1; }
say() { echo "check_deb: [$((SECONDS))s] $*"; }

[ "$(id -u)" = 0 ] || skip "needs root (chroot, mounts, namespaces)"
for tool in dpkg-buildpackage dh debootstrap unshare chroot openssl curl ip; do
    command -v "$tool" >/dev/null || skip "$tool is not installed (./dev setup installs it)"
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "${1:-$here/../..}" && pwd)
[ -d "$src/debian" ] || fail "no debian/ in $src"

# Everything below runs in a private mount namespace: the mounts made in
# the root disappear with the script, whatever happens.
if [ -z "${CHECK_DEB_NS:-}" ]; then
    export CHECK_DEB_NS=1
    # Inside a chroot (such as fresh-debian's) the root is no mount point
    # and mount namespaces cannot be made private: say so and skip.
    unshare --mount --propagation private true 2>/dev/null ||
        skip "cannot make a private mount namespace here (in a chroot?)"
    exec unshare --mount --propagation private "$0" "$src"
fi

cache=${TMPDIR:-/tmp}/fresh-debian-bookworm-minbase.tar
mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
if [ ! -s "$cache" ]; then
    d=$(mktemp -d)
    say "building a Debian 12 root with debootstrap (once)"
    debootstrap --variant=minbase bookworm "$d" "$mirror" >"$d.log" 2>&1 ||
        fail "debootstrap failed, see $d.log"
    tar -C "$d" -cf "$cache.part" . && mv "$cache.part" "$cache" && rm -rf "$d" "$d.log"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/check-deb.XXXXXX")
root=$work/root
emu_pid=
proxy_pid=
cleanup() {
    local rc=$?
    [ -z "$proxy_pid" ] || kill -KILL "$proxy_pid" 2>/dev/null || true
    [ -z "$emu_pid" ] || kill -KILL "$emu_pid" 2>/dev/null || true
    for m in proc sys dev; do umount -lR "$root/$m" 2>/dev/null || true; done
    if [ "${KEEP:-}" = 1 ]; then
        echo "check_deb: kept $work"
    else
        rm -rf --one-file-system "$work"
    fi
    exit $rc
}
trap cleanup EXIT

# ------------------------------------------------------------ 1. build ----
say "copying the source tree and running dpkg-buildpackage -us -uc -b"
mkdir -p "$work/src"
if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    # What is in the repository (committed or not), nothing it ignores.
    (cd "$src" && git ls-files -z --cached --others --exclude-standard |
        tar --null -T - -cf -) | tar -C "$work/src" -xf -
else
    tar -C "$src" --exclude='./build*' --exclude=./.demo --exclude=./.git -cf - . |
        tar -C "$work/src" -xf -
fi
(cd "$work/src" && dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1 || {
    tail -n 30 "$work/build.log" >&2
    fail "dpkg-buildpackage failed"
}
deb=$(ls "$work"/imapfront_*_"$(dpkg --print-architecture)".deb)
say "built $(basename "$deb")"

# ---------------------------------------------------------- 2. install ----
mkdir "$root"
tar -C "$root" -xf "$cache"
chmod 755 "$root"
cp /etc/resolv.conf "$root/etc/resolv.conf"
rm -f "$root/etc/apt/sources.list"
mkdir -p "$root/etc/apt/sources.list.d"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
cp "$deb" "$root/tmp/"
in_root() {
    chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root DEBIAN_FRONTEND=noninteractive "$@"
}
say "apt-get install ./$(basename "$deb") in a fresh Debian 12 root"
{
    in_root apt-get update -qq &&
        in_root apt-get install -y -qq --no-install-recommends "/tmp/$(basename "$deb")"
} >"$work/apt.log" 2>&1 || {
    tail -n 30 "$work/apt.log" >&2
    fail "apt-get install of the package failed"
}

# ----------------------------------------------------------- 3. checks ----
failures=0
check() {
    local what=$1
    shift
    if "$@"; then
        echo "check_deb: ok    $what"
    else
        echo "check_deb: FAIL  $what"
        failures=$((failures + 1))
    fi
}
user_line=$(in_root getent passwd imapfront || true)
uid=$(printf '%s' "$user_line" | cut -d: -f3)
check "system user imapfront exists ($user_line)" test -n "$uid" -a "${uid:-1000}" -lt 1000
check "/etc/imapfront/proxy.ini is a conffile" \
    bash -c "chroot '$root' dpkg-query -W -f='\${Conffiles}' imapfront | grep -q '^ /etc/imapfront/proxy.ini '"
mode=$(in_root stat -c '%U:%G %a' /etc/imapfront/proxy.ini)
check "/etc/imapfront/proxy.ini is root:imapfront 640 ($mode)" test "$mode" = "root:imapfront 640"
unit=$root/lib/systemd/system/imapfront.service
check "the unit is installed" test -f "$unit"
check "the unit is not enabled" \
    bash -c "! ls '$root'/etc/systemd/system/*.wants/imapfront.service 2>/dev/null | grep -q ."
check "the man pages are installed" test -f "$root/usr/share/man/man8/imapfront.8.gz" -a \
    -f "$root/usr/share/man/man5/imapfront.ini.5.gz"
out=$(in_root /usr/sbin/imapfront -t -c /etc/imapfront/proxy.ini 2>&1) && rc=0 || rc=$?
refused_for_certificate() { [ "$rc" = 1 ] && grep -q certificate <<<"$out"; }
check "the packaged config is refused for its missing certificate only ($out)" \
    refused_for_certificate

# The unit's commands, as the unit runs them.
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
exec_pre=$(sed -n 's/^ExecStartPre=//p' "$unit")
check "ExecStart is /usr/sbin/imapfront -c /etc/imapfront/proxy.ini" \
    test "$exec_start" = "/usr/sbin/imapfront -c /etc/imapfront/proxy.ini"
as_unit=(setpriv --reuid=imapfront --regid=imapfront --init-groups
    --inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service
    --bounding-set=-all,+net_bind_service --no-new-privs)

# ------------------------------------------------------------- 4. run ----
etc=$root/etc/imapfront
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$etc/privkey.pem" -out "$etc/fullchain.pem" -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >/dev/null 2>&1 ||
    fail "openssl could not make a certificate"
in_root chgrp imapfront /etc/imapfront/privkey.pem
chmod 640 "$etc/privkey.pem"
sed -i 's/^servers = [^;]*/servers = 127.0.0.1:11143      /' "$etc/proxy.ini"
check "the packaged config, backend changed, passes the unit's ExecStartPre" \
    in_root "${as_unit[@]}" $exec_pre

mkdir -p "$work/store"
export work root src exec_start
export AS_UNIT="${as_unit[*]}"
say "starting the emulator and the unit's ExecStart in a private network namespace"
unshare --net bash -c '
    set -euo pipefail
    ip link set lo up
    python3 "$src/tests/support/legacy_imapd.py" --plain 127.0.0.1:11143 --store "$work/store" \
        --users demo:demo --ready-file "$work/emu.ready" >"$work/emu.log" 2>&1 &
    emu=$!
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin $AS_UNIT $exec_start \
        </dev/null 2>"$work/imapfront.log" &
    proxy=$!
    trap "kill -KILL $proxy $emu 2>/dev/null || true" EXIT
    # Bounded waits (10 s each) for the emulator and port 993.
    for ((i = 0; i < 100; i++)); do [ -e "$work/emu.ready" ] && break; sleep 0.1; done
    [ -e "$work/emu.ready" ] || { cat "$work/emu.log" >&2; echo "emulator not ready" >&2; exit 1; }
    for ((i = 0; i < 100; i++)); do
        kill -0 $proxy 2>/dev/null || { cat "$work/imapfront.log" >&2; echo "imapfront exited" >&2; exit 1; }
        grep -q "listening" "$work/imapfront.log" && break
        sleep 0.1
    done
    grep -q "listening" "$work/imapfront.log" || { echo "imapfront not listening after 10 s" >&2; exit 1; }
    out=$(curl -sS --max-time 20 --cacert /"$root"/etc/imapfront/fullchain.pem \
        imaps://localhost:993/ -u demo:demo) || { cat "$work/imapfront.log" >&2; exit 1; }
    printf "%s\n" "$out" | grep -q "INBOX" || { echo "no INBOX in: $out" >&2; exit 1; }
    echo "check_deb: ok    curl logged in through port 993 and listed: $(printf "%s" "$out" | tr -s "\r\n" " ")"
    kill -TERM $proxy
    rc=0; wait $proxy || rc=$?
    [ $rc = 0 ] || { cat "$work/imapfront.log" >&2; echo "imapfront exited $rc on SIGTERM" >&2; exit 1; }
    echo "check_deb: ok    SIGTERM: imapfront exited 0"
' || { echo "check_deb: FAIL  login through the packaged proxy"; failures=$((failures + 1)); }

if [ $failures -ne 0 ]; then
    echo "check_deb: $failures check(s) failed in ${SECONDS}s"
    exit 1
fi
say "all checks passed"
