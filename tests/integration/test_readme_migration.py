"""The README's "Migrating users off a legacy server" example runs as
written: its shell block is taken from README.md and run with bash, with
only what must differ on a test machine swapped (the demo's ports and
state directory, the example's directory, the binary's path) and its
`sleep 1` replaced by a bounded wait for the listener. What its comments
promise is checked: `-t` counts the map's two entries, curl lists INBOX
for demo and is refused for a user the map does not route."""

import os
import re
import subprocess

import imapfront_harness as h

README = os.path.join(h.SRC, "README.md")


def example_block():
    """The first ```sh block of the migration section."""
    text = open(README, encoding="utf-8").read()
    section = text.split("## Migrating users off a legacy server", 1)[1]
    m = re.search(r"```sh\n(.*?)```", section, re.S)
    assert m, "no sh block in the migration section"
    return m.group(1)


def test_readme_migration_example_runs(tmp_path, need_bin):
    block = example_block()
    # What the text promises must be in it, or this test proves nothing.
    for needle in ("./dev demo", "migrate/users.map", "[route]", "imapfront -t -c",
                   "-u demo:demo", "-u nobody:x", "sleep 1"):
        assert needle in block, needle
    demo_dir = str(tmp_path / "demo")
    port, backend_port = h.free_port(), h.free_port()
    mig = str(tmp_path / "migrate")
    build = os.path.dirname(os.path.dirname(h.BIN))
    script = (block.replace(".demo/", demo_dir + "/")
              .replace("127.0.0.1:11143", "127.0.0.1:%d" % backend_port)
              .replace("127.0.0.1:10994", "127.0.0.1:%d" % port)
              .replace("migrate/", mig + "/").replace("mkdir -p migrate", "mkdir -p " + mig)
              .replace("build/src/imapfront", h.BIN)
              # A bounded wait for the listener instead of a fixed sleep.
              .replace("sleep 1", "for i in $(seq 100); do "
                       "grep -q 'listening' %s/imapfront.log 2>/dev/null && break; "
                       "sleep 0.1; done" % mig))
    env = dict(os.environ, DEMO_DIR=demo_dir, DEMO_PORT=str(h.free_port()),
               DEMO_BACKEND_PORT=str(backend_port), BUILD_DIR=build)
    dev = os.path.join(h.SRC, "dev")
    try:
        r = subprocess.run(["bash", "-c", script], cwd=h.SRC, env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=600)
    finally:
        subprocess.run([dev, "stop"], env=env, cwd=h.SRC, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60)
    out = r.stdout + r.stderr
    assert "route map %s/users.map: 2 entries" % mig in out, out
    assert re.search(r"^\* LIST .*INBOX", r.stdout, re.M), out
    assert "curl: (67)" in r.stderr, out
    log = open(os.path.join(mig, "imapfront.log")).read()
    assert re.search(r"\blogin\b.*\buser=demo\b.*\bpool=default\b", log), log
    assert "user not routed" in log, log
    assert "demo:demo" not in log and "nobody:x" not in log
