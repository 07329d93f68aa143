#!/bin/bash
# check_container.sh [SOURCE_DIR]: proves the Dockerfile on a machine without
# a container engine by performing its steps in Debian 12 roots made with
# `debootstrap --variant=minbase bookworm` (the base of the debian:12 image):
#
#   1. every stage starts from a fresh copy of that root, with the image's
#      apt sources; RUN lines run in a chroot with /bin/sh -c, in WORKDIR,
#      with ENV, as USER; COPY takes files from the build context (filtered
#      by .dockerignore) or, with --from, from an earlier stage's root;
#   2. the last stage's root is then run as the container would be: root
#      file system read-only, a private network namespace (so the image's
#      own ports are used as they are), the certificate mounted at
#      /etc/imapfront/tls/, a configuration mounted over proxy.ini (the
#      image's default with the backend pointed at the emulator), the
#      ENTRYPOINT as USER with ENV;
#   3. it checks: no compiler nor -dev package in the runtime root, every
#      shared library resolves, the HEALTHCHECK command succeeds, /readyz
#      answers 200, a TLS client gets the emulator's greeting through the
#      proxy and logs in, the logs are JSON lines on stderr, the process
#      runs as the image's non-root user, and STOPSIGNAL stops it with
#      status 0.
#
# Needs root, debootstrap, unshare, ip, openssl and network access to the
# Debian mirror (apt runs inside the roots). The debootstrap root is built
# once and cached as a tarball (the cache fresh-debian uses):
#   ${TMPDIR:-/tmp}/fresh-debian-bookworm-minbase.tar
# A run takes 1.5 to 2.5 minutes with the cache (mostly apt), about 3 more
# to build the cache.
# Environment: KEEP=1 keeps the roots (their paths are printed).
# Exit status: 0 when every check passed.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "check_container: needs root (chroot, mounts)" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "${1:-$here/../..}" && pwd)
[ -f "$src/Dockerfile" ] || { echo "check_container: no Dockerfile in $src" >&2; exit 2; }
for tool in unshare ip openssl chroot; do
    command -v "$tool" >/dev/null || { echo "check_container: $tool is missing" >&2; exit 2; }
done
command -v debootstrap >/dev/null || apt-get install -y debootstrap >/dev/null 2>&1 ||
    { echo "check_container: cannot install debootstrap" >&2; exit 2; }

cache=${TMPDIR:-/tmp}/fresh-debian-bookworm-minbase.tar
if [ ! -s "$cache" ]; then
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || { echo "check_container: no Debian mirror configured" >&2; exit 2; }
    d=$(mktemp -d)
    echo "check_container: building a Debian 12 root with debootstrap (once, about 3 minutes)" >&2
    started=$SECONDS
    debootstrap --variant=minbase bookworm "$d" "$mirror" >"$d.log" 2>&1 ||
        { echo "check_container: debootstrap failed, see $d.log" >&2; exit 2; }
    tar -C "$d" -cf "$cache.part" . && mv "$cache.part" "$cache" && rm -rf "$d" "$d.log"
    echo "check_container: debootstrap took $((SECONDS - started)) s" >&2
fi

# A private mount namespace: every mount below disappears with the script.
export CHECK_SRC=$src CHECK_CACHE=$cache
exec unshare --mount --propagation private /usr/bin/python3 - <<'PY'
import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from fnmatch import fnmatch

SRC = os.environ["CHECK_SRC"]
CACHE = os.environ["CHECK_CACHE"]
KEEP = os.environ.get("KEEP") == "1"
T0 = time.monotonic()
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The debian:12 image's apt sources (deb822), the mirror taken from this host.
SOURCES = """Types: deb
URIs: {mirror}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {security}
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

failures = []
scratch = []  # temporary directories to remove at the end (unless KEEP=1)


def say(msg):
    print("check_container: [%5.1fs] %s" % (time.monotonic() - T0, msg), flush=True)


def check(ok, what):
    say(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


# ------------------------------------------------------ the Dockerfile ----

def dockerfile_instructions(path):
    """(KEYWORD, rest) per instruction: comments dropped, lines ending in
    a backslash joined (comment lines inside a continuation skipped, as
    Docker does)."""
    out, cur = [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not cur and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if cur and line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                cur += line[:-1] + " "
                continue
            cur += line
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    if cur.strip():
        raise SystemExit("Dockerfile ends inside a continued line")
    return out


def stages_of(instructions):
    stages = []
    for word, rest in instructions:
        if word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append({"name": name, "base": parts[0], "steps": []})
        elif not stages:
            raise SystemExit("Dockerfile: %s before FROM" % word)
        else:
            stages[-1]["steps"].append((word, rest))
    return stages


def exec_or_shell(rest):
    """An instruction's command: exec form (JSON array) or shell form."""
    if rest.startswith("["):
        return json.loads(rest)
    return ["/bin/sh", "-c", rest]


def dockerignore(context):
    pats = []
    path = os.path.join(context, ".dockerignore")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    pats.append(line.rstrip("/"))
    return pats


def ignored(rel, pats):
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        for p in pats:
            if fnmatch(prefix, p) or (p.startswith("**/") and fnmatch(prefix, p[3:])):
                return True
    return False


# ------------------------------------------------------------ the roots ----

def mirrors():
    mirror = security = None
    try:
        with open("/etc/apt/sources.list.d/debian.sources") as f:
            for block in f.read().split("\n\n"):
                uri = re.search(r"^URIs:\s*(\S+)", block, re.M)
                suites = re.search(r"^Suites:\s*(.*)$", block, re.M)
                if uri and suites and "security" in suites.group(1):
                    security = security or uri.group(1)
                elif uri:
                    mirror = mirror or uri.group(1)
    except FileNotFoundError:
        pass
    return (mirror or "http://deb.debian.org/debian",
            security or "http://deb.debian.org/debian-security")


def new_root(label):
    root = tempfile.mkdtemp(prefix="check-container-%s-" % label)
    sh(["tar", "-C", root, "-xf", CACHE])
    # It becomes "/": a 0700 from mkdtemp (or from the tarball's "./",
    # made from a mktemp directory) would lock USER out.
    os.chmod(root, 0o755)
    shutil.copyfile("/etc/resolv.conf", os.path.join(root, "etc/resolv.conf"))
    for old in ("etc/apt/sources.list",):
        p = os.path.join(root, old)
        if os.path.exists(p):
            os.remove(p)
    os.makedirs(os.path.join(root, "etc/apt/sources.list.d"), exist_ok=True)
    mirror, security = mirrors()
    with open(os.path.join(root, "etc/apt/sources.list.d/debian.sources"), "w") as f:
        f.write(SOURCES.format(mirror=mirror, security=security))
    sh(["mount", "-t", "proc", "proc", os.path.join(root, "proc")])
    sh(["mount", "--rbind", "/sys", os.path.join(root, "sys")])
    sh(["mount", "--rbind", "/dev", os.path.join(root, "dev")])
    return root


def unmount_all(root):
    for m in ("proc", "sys", "dev"):
        subprocess.run(["umount", "-lR", os.path.join(root, m)], stderr=subprocess.DEVNULL)


def user_ids(root, user):
    """uid, gid for USER (name or number, optionally :group)."""
    name, _, group = user.partition(":")

    def lookup(file, key):
        with open(os.path.join(root, "etc", file)) as f:
            for line in f:
                fields = line.split(":")
                if fields[0] == key:
                    return int(fields[2]), (int(fields[3]) if file == "passwd" else None)
        raise SystemExit("USER %s: no %s in %s" % (user, key, file))

    if name.isdigit():
        uid, gid = int(name), int(name)
    else:
        uid, gid = lookup("passwd", name)
    if group:
        gid = int(group) if group.isdigit() else lookup("group", group)[0]
    return uid, gid


def in_root(root, state, argv, **kw):
    """argv in the chroot as the stage's USER, in WORKDIR, with its ENV."""
    env = ["PATH=" + DEFAULT_PATH, "HOME=/root" if state["user"] == "root" else "HOME=/"]
    env += ["%s=%s" % kv for kv in state["env"].items()]
    cmd = ["chroot"]
    if state["user"] != "root":
        uid, gid = user_ids(root, state["user"])
        cmd += ["--userspec=%d:%d" % (uid, gid), "--groups=%d" % gid]
    inner = "cd %s && exec \"$@\"" % shlex.quote(state["workdir"])
    cmd += [root, "/usr/bin/env", "-i"] + env + ["/bin/sh", "-c", inner, "sh"] + argv
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, **kw)


def copy_into(root, src, dest, workdir):
    """COPY semantics: a directory's contents go into dest; a file goes to
    dest (or into it when dest ends with /)."""
    if not dest.startswith("/"):
        dest = os.path.join(workdir, dest)
    target = os.path.join(root, dest.lstrip("/"))
    if os.path.isdir(src["path"]):
        for rel, full in src["files"]:
            out = os.path.join(target, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            if os.path.islink(full):
                os.symlink(os.readlink(full), out)
            else:
                shutil.copy2(full, out)
    else:
        if dest.endswith("/"):
            target = os.path.join(target, os.path.basename(src["path"]))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(src["path"], target)


def context_source(rel, pats):
    path = os.path.normpath(os.path.join(SRC, rel))
    files = []
    if os.path.isdir(path):
        for dirpath, dirnames, filenames in os.walk(path):
            relbase = os.path.relpath(dirpath, SRC)
            dirnames[:] = [d for d in dirnames
                           if not ignored(os.path.normpath(os.path.join(relbase, d)), pats)]
            for fn in filenames:
                r = os.path.normpath(os.path.join(relbase, fn))
                if not ignored(r, pats):
                    files.append((os.path.relpath(os.path.join(dirpath, fn), path),
                                  os.path.join(dirpath, fn)))
    elif ignored(os.path.normpath(rel), pats):
        raise SystemExit("COPY %s: excluded by .dockerignore" % rel)
    return {"path": path, "files": files}


def build(stages, roots):
    """Builds every stage; roots (stage name -> root) is filled as they
    are made, so that the caller can clean up after a failure."""
    pats = dockerignore(SRC)
    for st in stages:
        if st["base"] not in ("debian:12", "debian:bookworm"):
            raise SystemExit("stage %s: base %s is not debian:12; cannot emulate it"
                             % (st["name"], st["base"]))
        started = time.monotonic()
        root = new_root(st["name"])
        roots[st["name"]] = root
        state = {"user": "root", "workdir": "/", "env": {}, "meta": {}}
        st["state"] = state
        say("stage %s: FROM %s in %s" % (st["name"], st["base"], root))
        for word, rest in st["steps"]:
            if word == "RUN":
                argv = exec_or_shell(rest)
                say("stage %s: RUN %s" % (st["name"], re.sub(r"\s+", " ", argv[-1])[:110]))
                r = in_root(root, state, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                if r.returncode != 0:
                    sys.stdout.write(r.stdout.decode("utf-8", "replace")[-6000:])
                    raise SystemExit("stage %s: RUN failed with status %d"
                                     % (st["name"], r.returncode))
            elif word == "COPY":
                args = shlex.split(rest)
                frm = None
                while args and args[0].startswith("--"):
                    opt = args.pop(0)
                    if opt.startswith("--from="):
                        frm = opt[len("--from="):]
                    else:
                        raise SystemExit("COPY option %s is not emulated" % opt)
                *srcs, dest = args
                for s in srcs:
                    if frm is not None:
                        p = os.path.join(roots[frm], s.lstrip("/"))
                        src = {"path": p, "files": [
                            (os.path.relpath(os.path.join(d, f), p), os.path.join(d, f))
                            for d, _, fs in os.walk(p) for f in fs]}
                    else:
                        src = context_source(s, pats)
                    copy_into(root, src, dest, state["workdir"])
                say("stage %s: COPY %s" % (st["name"], rest))
            elif word == "WORKDIR":
                state["workdir"] = os.path.join(state["workdir"], rest)
                os.makedirs(os.path.join(root, state["workdir"].lstrip("/")), exist_ok=True)
            elif word == "ENV":
                parts = shlex.split(rest)
                if parts and "=" not in parts[0]:
                    state["env"][parts[0]] = " ".join(parts[1:])
                else:
                    for p in parts:
                        k, _, v = p.partition("=")
                        state["env"][k] = v
            elif word == "USER":
                state["user"] = rest.strip()
            elif word in ("ENTRYPOINT", "CMD", "EXPOSE", "STOPSIGNAL", "HEALTHCHECK", "LABEL"):
                state["meta"][word] = rest
            else:
                raise SystemExit("Dockerfile instruction %s is not emulated" % word)
        say("stage %s: done in %.0fs" % (st["name"], time.monotonic() - started))


# ---------------------------------------------------------------- run ----

CLONE_NEWNET = 0x40000000


def private_network():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise SystemExit("unshare(CLONE_NEWNET): %s" % os.strerror(ctypes.get_errno()))
    sh(["ip", "link", "set", "lo", "up"])


def healthcheck_argv(meta):
    rest = meta["HEALTHCHECK"]
    m = re.search(r"\bCMD\s+(.*)$", rest)
    if not m:
        raise SystemExit("HEALTHCHECK without CMD")
    return exec_or_shell(m.group(1).strip())


def http_get(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET %s HTTP/1.0\r\n\r\n" % path.encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise SystemExit("timed out waiting for " + what)


def run_checks(stages, roots):
    final = stages[-1]
    rt = roots[final["name"]]
    state = final["state"]
    meta = state["meta"]

    # What the runtime stage holds.
    for tool in ("usr/bin/gcc", "usr/bin/cc", "usr/bin/meson", "usr/bin/ninja"):
        check(not os.path.exists(os.path.join(rt, tool)), "runtime root has no /" + tool)
    pkgs = subprocess.run(["chroot", rt, "dpkg-query", "-W", "-f", "${Package}\\n"],
                          stdout=subprocess.PIPE, check=True).stdout.decode().split()
    dev = [p for p in pkgs if p.endswith("-dev")]
    check(not dev, "runtime root has no -dev packages %s" % (dev or ""))
    entry = json.loads(meta["ENTRYPOINT"])
    binary = None
    for d in DEFAULT_PATH.split(":"):
        if os.path.exists(os.path.join(rt, d.lstrip("/"), entry[0])):
            binary = os.path.join(d, entry[0])
            break
    check(binary is not None, "ENTRYPOINT %s is on PATH in the runtime root" % entry[0])
    ldd = subprocess.run(["chroot", rt, "ldd", binary], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT).stdout.decode()
    check("not found" not in ldd and ldd.strip() != "", "every shared library of %s resolves"
          % binary)
    check(state["user"] not in ("root", "0", "0:0"), "USER is not root (%s)" % state["user"])
    uid, _ = user_ids(rt, state["user"])

    # The container's view: the image's config with the backend replaced,
    # mounted over proxy.ini; the certificate mounted at /etc/imapfront/tls.
    cfg_path = entry[entry.index("-c") + 1]
    with open(os.path.join(rt, cfg_path.lstrip("/"))) as f:
        image_cfg = f.read()
    mounts = tempfile.mkdtemp(prefix="check-container-mounts-")
    scratch.append(mounts)
    os.chmod(mounts, 0o755)
    tls = os.path.join(mounts, "tls")
    os.makedirs(tls)
    sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", os.path.join(tls, "tls.key"), "-out", os.path.join(tls, "tls.crt"),
        "-days", "2", "-subj", "/CN=localhost", "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1"], stdout=subprocess.DEVNULL,
       stderr=subprocess.DEVNULL)
    for fn in ("tls.crt", "tls.key"):
        os.chmod(os.path.join(tls, fn), 0o644)  # as a Kubernetes secret volume
    os.chmod(tls, 0o755)
    emu_port = 1143
    test_cfg = re.sub(r"(?m)^servers\s*=.*$", "servers = 127.0.0.1:%d" % emu_port, image_cfg)
    check(test_cfg != image_cfg, "the image's config names [backend] servers (replaced)")
    cfg_file = os.path.join(mounts, "proxy.ini")
    with open(cfg_file, "w") as f:
        f.write(test_cfg)
    os.chmod(cfg_file, 0o644)
    imaps = int(re.search(r"(?ms)^\[listen\.\w+\].*?^address\s*=\s*\S+:(\d+)", test_cfg).group(1))
    admin = int(re.search(r"(?ms)^\[admin\].*?^address\s*=\s*\S+:(\d+)", test_cfg).group(1))
    exposed = {int(p.split("/")[0]) for p in meta.get("EXPOSE", "").split()}
    check({imaps, admin} <= exposed, "EXPOSE lists the listener and admin ports %s" % exposed)

    # Read-only root, fresh /proc and /dev, the two mounts.
    unmount_all(rt)
    sh(["mount", "--bind", rt, rt])
    sh(["mount", "-o", "remount,bind,ro", rt])
    sh(["mount", "-t", "proc", "proc", os.path.join(rt, "proc")])
    sh(["mount", "--rbind", "/dev", os.path.join(rt, "dev")])
    sh(["mount", "--bind", tls, os.path.join(rt, "etc/imapfront/tls")])
    sh(["mount", "-o", "remount,bind,ro", os.path.join(rt, "etc/imapfront/tls")])
    sh(["mount", "--bind", cfg_file, os.path.join(rt, cfg_path.lstrip("/"))])
    as_root = dict(state, user="root")
    r = in_root(rt, as_root, ["touch", "/written"], stderr=subprocess.PIPE)
    check(r.returncode != 0 and b"Read-only file system" in r.stderr,
          "the root file system is read-only (even for root)")

    private_network()
    say("run: private network namespace; image ports imaps=%d admin=%d" % (imaps, admin))
    store = tempfile.mkdtemp(prefix="check-container-store-")
    scratch.append(store)
    emu = subprocess.Popen(["/usr/bin/python3", os.path.join(SRC, "tests/support/legacy_imapd.py"),
                            "--plain", "127.0.0.1:%d" % emu_port, "--store", store,
                            "--users", "demo:demo"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)
    proxy = None
    log_path = os.path.join(mounts, "stderr.log")
    try:
        line = emu.stdout.readline().decode()
        check(line.startswith("READY"), "the emulator runs on 127.0.0.1:%d" % emu_port)
        env = ["PATH=" + DEFAULT_PATH, "HOME=/"] + ["%s=%s" % kv for kv in state["env"].items()]
        uid, gid = user_ids(rt, state["user"])
        with open(log_path, "wb") as err:
            proxy = subprocess.Popen(["chroot", "--userspec=%d:%d" % (uid, gid),
                                      "--groups=%d" % gid, rt, "/usr/bin/env", "-i"] + env
                                     + entry, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        hc = healthcheck_argv(meta)

        def healthy():
            if proxy.poll() is not None:
                raise SystemExit("imapfront exited with %s:\n%s"
                                 % (proxy.returncode, open(log_path).read()))
            return in_root(rt, state, hc, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL).returncode == 0

        started = time.monotonic()
        wait(healthy, 15, "the HEALTHCHECK command to succeed")
        check(True, "HEALTHCHECK (%s) succeeds %.1fs after start"
              % (" ".join(hc)[:60] + "...", time.monotonic() - started))
        with open("/proc/%d/status" % proxy.pid) as f:
            uids = re.search(r"(?m)^Uid:\s+(.*)$", f.read()).group(1).split()
        check(uids == [str(uid)] * 4, "imapfront runs as uid %d (%s)" % (uid, " ".join(uids)))
        status, _ = http_get(admin, "/readyz")
        check(status == 200, "/readyz answers %d" % status)
        ctx = ssl.create_default_context(cafile=os.path.join(tls, "tls.crt"))
        ctx.check_hostname = False
        with socket.create_connection(("127.0.0.1", imaps), timeout=10) as raw:
            with ctx.wrap_socket(raw) as s:
                f = s.makefile("rb")
                greeting = f.readline()
                check(greeting.startswith(b"* OK") and b"legacy emulator" in greeting,
                      "TLS on %d gives the emulator's greeting: %r" % (imaps, greeting[:60]))
                s.sendall(b"a LOGIN demo demo\r\n")
                check(f.readline().startswith(b"a OK"), "LOGIN through the proxy")
                s.sendall(b"z LOGOUT\r\n")
                f.readline(), f.readline()
        status, body = http_get(admin, "/metrics")
        check(status == 200 and re.search(rb'imapfront_sessions_total\{listener="imaps"\} 1\n',
                                          body) is not None, "/metrics counted the session")
        t = time.monotonic()
        signame = meta.get("STOPSIGNAL", "SIGTERM").strip()
        proxy.send_signal(getattr(signal, signame if signame.startswith("SIG") else "SIG" + signame))
        rc = proxy.wait(35)
        check(rc == 0, "%s: exit status %d after %.2fs" % (signame, rc, time.monotonic() - t))
        lines = open(log_path).read().splitlines()
        objs = []
        for l in lines:
            try:
                objs.append(json.loads(l))
            except ValueError:
                objs.append(None)
        check(lines and all(isinstance(o, dict) for o in objs),
              "stderr is JSON lines (%d lines)" % len(lines))
        check(any(o and o.get("msg") == "stopped" for o in objs), "the log ends with 'stopped'")
        check(any(o and o.get("msg") == "closed" and o.get("reason") == "logout" for o in objs),
              "the session summary line is there")
    finally:
        if proxy is not None and proxy.poll() is None:
            proxy.kill()
            proxy.wait()
        emu.terminate()
        emu.wait(10)
        if KEEP:
            say("kept: %s (config, certificate, log) and the roots" % mounts)


def main():
    stages = stages_of(dockerfile_instructions(os.path.join(SRC, "Dockerfile")))
    say("Dockerfile: %d stages (%s); source %s" % (len(stages),
                                                   ", ".join(s["name"] for s in stages), SRC))
    roots = {}
    try:
        build(stages, roots)
        run_checks(stages, roots)
    finally:
        for root in roots.values():
            unmount_all(root)
            subprocess.run(["umount", "-lR", root], stderr=subprocess.DEVNULL)
            if not KEEP:
                subprocess.run(["rm", "-rf", "--one-file-system", root])
        if not KEEP:
            for d in scratch:
                shutil.rmtree(d, ignore_errors=True)
    total = time.monotonic() - T0
    if failures:
        say("%d check(s) failed in %.0fs: %s" % (len(failures), total, "; ".join(failures)))
        sys.exit(1)
    say("all checks passed in %.0fs" % total)


main()
PY
