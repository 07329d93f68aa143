"""The command line: `imapfront -t -c FILE` checks a file (exit 0 / 1, errors
as "FILE:LINE: key: reason"), `imapfront -V` prints the version."""

import os
import re
import subprocess

import pytest

import imapfront_harness as h


def check(path):
    return subprocess.run([h.BIN, "-t", "-c", path], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30)


def write(dir_, name, text):
    path = os.path.join(dir_, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def good_ini(cert, extra_lines=""):
    return ("[proxy]\n"
            "workers = 1\n"
            "\n"
            "[listen.imaps]\n"
            "address = 127.0.0.1:10993\n"
            "mode = implicit-tls\n"
            "\n"
            "[tls]\n"
            "certificate = %s\n"
            "private_key = %s\n"
            "\n"
            "[backend]\n"
            "servers = 127.0.0.1:11143\n"
            "\n"
            "[imap]\n"
            "max_literal_size = 64M\n"
            "buffer_limit = 256k\n"
            "%s" % (cert[0], cert[1], extra_lines))


def line_of(text, needle):
    """1-based number of the first line containing needle."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError("%r not in config text" % needle)


@pytest.fixture
def d(tmp_path):
    return str(tmp_path)


def test_good_file_exits_0(need_bin, cert, d):
    path = write(d, "good.ini", good_ini(cert))
    r = check(path)
    assert r.returncode == 0, r.stderr


def test_unknown_key_exits_1_with_file_line_key(need_bin, cert, d):
    text = good_ini(cert).replace("workers = 1\n", "workers = 1\nfrobnicate = yes\n")
    path = write(d, "unknown.ini", text)
    r = check(path)
    assert r.returncode == 1, (r.returncode, r.stderr)
    prefix = "%s:%d: frobnicate:" % (path, line_of(text, "frobnicate"))
    assert r.stderr.startswith(prefix), r.stderr


def test_bad_size_exits_1_with_file_line_key(need_bin, cert, d):
    text = good_ini(cert).replace("buffer_limit = 256k", "buffer_limit = 12 parsecs")
    path = write(d, "badsize.ini", text)
    r = check(path)
    assert r.returncode == 1, (r.returncode, r.stderr)
    prefix = "%s:%d: buffer_limit:" % (path, line_of(text, "buffer_limit"))
    assert r.stderr.startswith(prefix), r.stderr


def test_missing_certificate_file_exits_1(need_bin, cert, d):
    missing = os.path.join(d, "no-such-cert.pem")
    text = good_ini(cert).replace("certificate = %s" % cert[0], "certificate = %s" % missing)
    path = write(d, "nocert.ini", text)
    r = check(path)
    assert r.returncode == 1, (r.returncode, r.stderr)
    prefix = "%s:%d: certificate:" % (path, line_of(text, "certificate ="))
    assert r.stderr.startswith(prefix), r.stderr


def test_absent_certificate_key_exits_1(need_bin, cert, d):
    """An implicit-TLS listener without [tls] certificate cannot work."""
    text = good_ini(cert).replace("certificate = %s\n" % cert[0], "")
    path = write(d, "nocertkey.ini", text)
    r = check(path)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.startswith(path + ":"), r.stderr
    assert "certificate" in r.stderr, r.stderr


def test_version(need_bin):
    r = subprocess.run([h.BIN, "-V"], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert re.search(r"\bimapfront\b.*\b\d+\.\d+\.\d+", r.stdout + r.stderr), r.stdout


def test_named_pool_no_route_uses_is_reported(need_bin, cert, d):
    """A [backend.NAME] pool next to [backend] is valid, but no session can
    reach it until a route names it: -t says so and still exits 0."""
    text = good_ini(cert, "\n[backend.archive]\nservers = 127.0.0.1:11144\n"
                          "balance = roundrobin\n")
    path = write(d, "pools.ini", text)
    r = check(path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"\bwarn backend: \[backend\.archive\] is used by no route", r.stderr), \
        r.stderr
    assert "[backend.default]" not in r.stderr and "[backend] is used" not in r.stderr, r.stderr


def test_backend_and_backend_default_both_refused(need_bin, cert, d):
    text = good_ini(cert, "\n[backend.default]\nservers = 127.0.0.1:11144\n")
    path = write(d, "twice.ini", text)
    r = check(path)
    assert r.returncode == 1, (r.returncode, r.stderr)
    prefix = "%s:%d: [backend.default]: [backend] is the pool \"default\", already defined " \
             "on line %d" % (path, line_of(text, "[backend.default]"), line_of(text, "[backend]"))
    assert r.stderr.startswith(prefix), r.stderr


def test_pools_without_default_refused(need_bin, cert, d):
    """Sessions use the pool default until routing lands: a file with only
    named pools has nowhere to send them."""
    text = good_ini(cert).replace("[backend]\n", "[backend.main]\n")
    path = write(d, "nodefault.ini", text)
    r = check(path)
    assert r.returncode == 1, (r.returncode, r.stderr)
    prefix = "%s:%d: [backend]: required" % (path, line_of(text, "[backend.main]"))
    assert r.stderr.startswith(prefix), r.stderr


def test_route_map_decides_which_pools_are_used(need_bin, cert, d):
    """With [route], a pool is reached when the map or [route] default names
    it: -t warns about the others only, and the pool default is no
    exception."""
    mapfile = write(d, "users.map", "alice@example.org archive\n*@new.example.org modern\n")
    text = good_ini(cert, "\n[backend.archive]\nservers = 127.0.0.1:11144\n"
                          "\n[backend.modern]\nservers = 127.0.0.1:11145\n"
                          "\n[backend.spare]\nservers = 127.0.0.1:11146\n"
                          "\n[route]\nmap = %s\ndefault = modern\n" % mapfile)
    path = write(d, "routed.ini", text)
    r = check(path)
    assert r.returncode == 0, r.stderr
    unused = set(re.findall(r"\bwarn backend: \[backend\.(\w+)\] is used by no route", r.stderr))
    assert unused == {"default", "spare"}, r.stderr
    assert "route map %s: 2 entries" % mapfile in r.stdout, r.stdout
