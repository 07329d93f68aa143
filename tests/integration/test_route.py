"""The [route] map (issue 14): `imapfront -t` loads it and prints its entry
count, or fails with FILE:LINE; a running proxy reads it again when the file
is rewritten in place or renamed into place, and on SIGHUP; a bad version
keeps the running map and logs FILE:LINE once."""

import os
import re
import signal
import subprocess

import imapfront_harness as h

SETTLE = 1.0  # IMF_CERTWATCH_SETTLE_MS: the watcher waits for quiet


def loaded(path):
    return r"\binfo route: route map %s: (\d+) entries$" % re.escape(path)


def failed(path):
    return (r"\berror route: %s:(\d+): (.*); the running route map stays$"
            % re.escape(path))


def map_text(n, pool="default"):
    return "".join("user%d@example.org %s\n" % (i, pool) for i in range(n))


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def rename_into_place(path, text):
    tmp = path + ".new"
    write(tmp, text)
    os.replace(tmp, path)


def check(ini):
    return subprocess.run([h.BIN, "-t", "-c", ini], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30)


def check_ini(tmp_path, cert, route):
    ini = str(tmp_path / "proxy.ini")
    write(ini, h.render_ini({
        "proxy": {"workers": "1"},
        "listen.imaps": {"address": "127.0.0.1:0"},
        "tls": {"certificate": cert[0], "private_key": cert[1]},
        "backend": {"servers": "127.0.0.1:1"},
        "route": route,
    }))
    return ini


def test_check_prints_the_entry_count(need_bin, cert, tmp_path):
    path = str(tmp_path / "route.map")
    write(path, "# moved\nalice@example.org default\n*@old.example.org default\n\n"
                "bob default\n")
    r = check(check_ini(tmp_path, cert, {"map": path, "default": "default"}))
    assert r.returncode == 0, r.stderr
    assert "route map %s: 3 entries\n" % path in r.stdout, r.stdout


def test_check_fails_with_file_and_line(need_bin, cert, tmp_path):
    path = str(tmp_path / "route.map")
    write(path, "alice@example.org default\n\nbob@example.org elsewhere\n")
    r = check(check_ini(tmp_path, cert, {"map": path}))
    assert r.returncode == 1, (r.returncode, r.stdout)
    assert r.stderr == '%s:3: no pool named "elsewhere"\n' % path

    write(path, "alice@example.org default\nalice@example.org\n")
    r = check(check_ini(tmp_path, cert, {"map": path}))
    assert r.returncode == 1
    assert r.stderr.startswith("%s:2: a user without a pool" % path), r.stderr


def test_check_unknown_default_and_missing_file(need_bin, cert, tmp_path):
    r = check(check_ini(tmp_path, cert, {"default": "nowhere"}))
    assert r.returncode == 1
    assert r.stderr == '[route] default: no pool named "nowhere"\n', r.stderr
    path = str(tmp_path / "absent.map")
    r = check(check_ini(tmp_path, cert, {"map": path}))
    assert r.returncode == 1
    assert r.stderr == "%s: cannot open: No such file or directory\n" % path, r.stderr


def test_reload_when_the_file_changes(workdir, emulator, proxy_factory, tmp_path):
    path = str(tmp_path / "route.map")
    write(path, map_text(2))
    proxy = proxy_factory(emulator.plain_port, extra={"route": {"map": path}})
    alive = proxy.check_alive
    m = proxy.log.wait_for(loaded(path), alive=alive)
    assert m.group(1) == "2"

    # Written in place.
    mark = proxy.log.mark()
    write(path, map_text(3))
    m = proxy.log.wait_for(loaded(path), since=mark, timeout=SETTLE + 10, alive=alive)
    assert m.group(1) == "3"

    # Renamed into place, as editors and config management do.
    mark = proxy.log.mark()
    rename_into_place(path, map_text(5))
    m = proxy.log.wait_for(loaded(path), since=mark, timeout=SETTLE + 10, alive=alive)
    assert m.group(1) == "5"

    # A bad version in place: the error names the line, the map stays.
    mark = proxy.log.mark()
    write(path, map_text(3) + "user9@example.org\n")
    m = proxy.log.wait_for(failed(path), since=mark, timeout=SETTLE + 10, alive=alive)
    assert m.group(1) == "4"
    assert m.group(2) == "a user without a pool (expected: USER POOL)"
    # ... and a bad one renamed over it: still watched (a new inode).
    rename_into_place(path, "*@ default\n")
    m = proxy.log.wait_for(r"\berror route: %s:1: a pattern must be \*@domain;"
                           % re.escape(path), since=mark, timeout=SETTLE + 10, alive=alive)
    assert proxy.log.find(loaded(path), since=mark) == []

    # SIGHUP re-reads it too, and fails the same way: the old map stays.
    hup = proxy.log.mark()
    proxy.proc.send_signal(signal.SIGHUP)
    proxy.log.wait_for(r"\binfo main: configuration reloaded", since=hup, alive=alive)
    proxy.log.wait_for(r"\berror route: %s:1: " % re.escape(path), since=hup, alive=alive)

    # Fixed: loaded again, and each bad version was reported once.
    fixed = proxy.log.mark()
    rename_into_place(path, map_text(7))
    m = proxy.log.wait_for(loaded(path), since=fixed, timeout=SETTLE + 10, alive=alive)
    assert m.group(1) == "7"
    errors = [e.group(1) for e in proxy.log.find(failed(path), since=mark)]
    assert errors == ["4", "1", "1"], errors  # in place, renamed, SIGHUP


def test_sighup_moves_to_another_map(workdir, emulator, proxy_factory, tmp_path):
    first, second = str(tmp_path / "first.map"), str(tmp_path / "second.map")
    write(first, map_text(2))
    write(second, map_text(4))
    proxy = proxy_factory(emulator.plain_port, extra={"route": {"map": first}})
    proxy.log.wait_for(loaded(first), alive=proxy.check_alive)

    with open(proxy.ini) as f:
        ini = f.read()
    write(proxy.ini, ini.replace(first, second))
    mark = proxy.log.mark()
    proxy.proc.send_signal(signal.SIGHUP)
    m = proxy.log.wait_for(loaded(second), since=mark, alive=proxy.check_alive)
    assert m.group(1) == "4"

    # The watch moved with it: the new file is followed, the old one not.
    mark = proxy.log.mark()
    write(first, map_text(9))
    write(second, map_text(6))
    m = proxy.log.wait_for(loaded(second), since=mark, timeout=SETTLE + 10,
                           alive=proxy.check_alive)
    assert m.group(1) == "6"
    assert proxy.log.find(loaded(first), since=mark) == []
