"""The README's first command: `./dev demo` starts the emulator and
imapfront, and the curl line it prints lists the demo INBOX; `./dev stop`
stops both. Runs on free ports in a state directory of its own."""

import os
import re
import subprocess

import pytest

import imapfront_harness as h


@pytest.fixture
def demo(tmp_path):
    env = dict(os.environ)
    env.update({
        "DEMO_DIR": str(tmp_path / "demo"),
        "DEMO_PORT": str(h.free_port()),
        "DEMO_BACKEND_PORT": str(h.free_port()),
    })
    build = os.environ.get("IMAPFRONT_BUILD")
    if not build and h.BIN.endswith(os.path.join("src", "imapfront")):
        build = os.path.dirname(os.path.dirname(h.BIN))
    if build:
        env["BUILD_DIR"] = build
    dev = os.path.join(h.SRC, "dev")
    try:
        yield dev, env
    finally:
        subprocess.run([dev, "stop"], env=env, cwd=h.SRC, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60)


def run(cmd, env, timeout):
    return subprocess.run(cmd, env=env, cwd=h.SRC, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def test_demo_then_curl_lists_inbox_then_stop(demo, need_bin):
    dev, env = demo
    r = run([dev, "demo"], env, 600)
    assert r.returncode == 0, r.stdout + r.stderr
    port = env["DEMO_PORT"]
    line = "curl -k imaps://127.0.0.1:%s/INBOX -u demo:demo" % port
    assert line in r.stdout, r.stdout

    c = run(line.split(), env, 60)
    assert c.returncode == 0, (c.returncode, c.stderr)
    assert re.search(r"^\* LIST .*INBOX", c.stdout, re.M), c.stdout

    # Running it again replaces the running pair instead of failing.
    pids = [open(os.path.join(env["DEMO_DIR"], n)).read().strip()
            for n in ("imapfront.pid", "emulator.pid")]
    r = run([dev, "demo"], env, 600)
    assert r.returncode == 0, r.stdout + r.stderr
    c = run(line.split(), env, 60)
    assert c.returncode == 0, (c.returncode, c.stderr)
    for pid in pids:
        assert not os.path.exists("/proc/%s" % pid) or \
            open("/proc/%s/stat" % pid).read().split()[2] == "Z", "old pid %s still runs" % pid

    r = run([dev, "stop"], env, 60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not os.path.exists(os.path.join(env["DEMO_DIR"], "imapfront.pid"))
    c = run(line.split(), env, 60)
    assert c.returncode != 0, "imapfront still answers after ./dev stop"
