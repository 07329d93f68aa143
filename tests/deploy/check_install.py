#!/usr/bin/env python3
"""`meson install` into a temporary DESTDIR, then what an administrator
would check of the result. TAP output, one line per check:

  * the binary is in sbindir and runs (-V), BoringSSL found at its rpath;
  * the systemd unit is in the unit directory, has Type=notify, the unit's
    ExecStart/ExecStartPre/ExecReload, the required hardening, and a
    TimeoutStopSec above the default drain_timeout of docs/configuration.md;
  * `systemd-analyze verify` accepts it (when systemd-analyze exists), with
    its paths pointed into DESTDIR so that the binary it names exists;
  * proxy.ini is in sysconfdir/imapfront, and loads with `imapfront -t`
    once its certificate and key exist (moved to a temporary directory);
  * both man pages are in mandir and groff renders them without a warning.

usage: check_install.py SRCDIR BUILDDIR
"""

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

# Directives the unit must have, with their exact value.
REQUIRED = {
    "Type": "notify",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
    "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
    "User": "imapfront",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter": "@system-service",
}

results = []


def check(ok, what, detail=""):
    results.append(ok)
    print("%s %d - %s" % ("ok" if ok else "not ok", len(results), what))
    if not ok and detail:
        for line in str(detail).rstrip().splitlines()[-20:]:
            print("# " + line)


def read_unit(path):
    """{(section, key): [values]} of a systemd unit file (keys may repeat)."""
    out, section = {}, None
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            m = re.fullmatch(r"\[(\w+)\]", line)
            if m:
                section = m.group(1)
                continue
            key, sep, value = line.partition("=")
            if not sep or section is None:
                raise SystemExit("%s: cannot read %r" % (path, line))
            out.setdefault((section, key.strip()), []).append(value.strip())
    return out


def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|min|m|h)?", text)
    if not m:
        raise ValueError(text)
    return int(m.group(1)) * {"ms": 0.001, None: 1, "s": 1, "min": 60, "m": 60, "h": 3600}[m.group(2)]


def default_drain_timeout(srcdir):
    with open(os.path.join(srcdir, "docs", "configuration.md"), encoding="utf-8") as f:
        m = re.search(r"^\| `drain_timeout` \| duration \| `([^`]+)` \|", f.read(), re.M)
    if not m:
        raise SystemExit("docs/configuration.md: no drain_timeout row")
    return seconds(m.group(1))


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    srcdir, builddir = argv[1], argv[2]
    opts = {o["name"]: o["value"] for o in json.loads(subprocess.run(
        ["meson", "introspect", "--buildoptions", builddir], check=True,
        stdout=subprocess.PIPE).stdout)}
    prefix = opts["prefix"]

    def where(name):
        return os.path.join(prefix, opts[name])

    sbindir, sysconfdir, mandir = where("sbindir"), where("sysconfdir"), where("mandir")
    unitdir = opts.get("systemdunitdir") or "/lib/systemd/system"

    tmp = tempfile.mkdtemp(prefix="check-install-")
    try:
        dest = os.path.join(tmp, "dest")
        r = subprocess.run(["meson", "install", "-C", builddir, "--no-rebuild", "--quiet",
                            "--destdir", dest], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
        check(r.returncode == 0, "meson install --destdir", r.stdout)
        if r.returncode != 0:
            return 1

        def d(path):
            return os.path.join(dest, path.lstrip("/"))

        binary = d(os.path.join(sbindir, "imapfront"))
        r = subprocess.run([binary, "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True) if os.access(binary, os.X_OK) else None
        check(r is not None and r.returncode == 0 and r.stdout.startswith("imapfront "),
              "%s/imapfront installed and runs -V" % sbindir, r.stdout if r else "missing")

        unit_path = d(os.path.join(unitdir, "imapfront.service"))
        check(os.path.isfile(unit_path), "imapfront.service installed in %s" % unitdir)
        unit = read_unit(unit_path) if os.path.isfile(unit_path) else {}
        config = os.path.join(sysconfdir, "imapfront", "proxy.ini")
        want = dict(REQUIRED)
        want["ExecStart"] = "%s/imapfront -c %s" % (sbindir, config)
        want["ExecStartPre"] = "%s/imapfront -t -c %s" % (sbindir, config)
        for key, value in want.items():
            got = unit.get(("Service", key), [])
            check(value in got, "unit: %s=%s" % (key, value), "found: %r" % got)
        drain = default_drain_timeout(srcdir)
        stop = unit.get(("Service", "TimeoutStopSec"), ["0"])[-1]
        check(seconds(stop) > drain, "unit: TimeoutStopSec=%s above the default drain_timeout "
              "(%ds)" % (stop, drain))

        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            print("ok %d - systemd-analyze verify # SKIP systemd-analyze not installed"
                  % (len(results) + 1))
            results.append(True)
        else:
            # The unit as installed, its paths pointing into DESTDIR.
            probe = os.path.join(tmp, "imapfront.service")
            with open(unit_path, encoding="utf-8") as f:
                text = f.read().replace(sbindir + "/", d(sbindir) + "/")
            with open(probe, "w", encoding="utf-8") as f:
                f.write(text)
            r = subprocess.run([analyze, "verify", "--man=no", probe], cwd=tmp,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            check(r.returncode == 0 and not r.stdout.strip(), "systemd-analyze verify", r.stdout)

        ini = d(config)
        check(os.path.isfile(ini), "proxy.ini installed in %s/imapfront" % sysconfdir)
        if os.path.isfile(ini):
            etc = os.path.join(tmp, "etc")
            os.makedirs(etc)
            r = subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                 os.path.join(etc, "privkey.pem"), "-out", os.path.join(etc, "fullchain.pem"),
                 "-days", "2", "-subj", "/CN=localhost"], stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT)
            with open(ini, encoding="utf-8") as f:
                text = f.read()
            moved = os.path.join(tmp, "proxy.ini")
            with open(moved, "w", encoding="utf-8") as f:
                f.write(text.replace(os.path.join(sysconfdir, "imapfront") + "/", etc + "/"))
            r = subprocess.run([binary, "-t", "-c", moved], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
            check(r.returncode == 0, "the installed proxy.ini loads (imapfront -t) once its "
                  "certificate exists", r.stdout)
            parser = configparser.ConfigParser(inline_comment_prefixes=(";",))
            parser.read_string(text)
            check(not [s for s in parser.sections() if s.startswith("certificate.")],
                  "the installed proxy.ini has no [certificate.NAME] example (its files "
                  "do not exist)")

        for page in ("man8/imapfront.8", "man5/imapfront.ini.5"):
            path = d(os.path.join(mandir, page))
            if not os.path.isfile(path):
                check(False, "%s installed in %s" % (page, mandir))
                continue
            r = subprocess.run(["groff", "-ww", "-z", "-man", "-Tutf8", path],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            check(r.returncode == 0 and not r.stdout.strip(),
                  "%s installed in %s, renders without warnings" % (page, mandir), r.stdout)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("1..%d" % len(results))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
