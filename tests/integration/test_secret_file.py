"""Secrets from files: [backend] check_password_file names a file (a
mounted Kubernetes Secret, a systemd credential) whose content, less one
trailing newline, is the check account's password. The check logs in with
it, the password reaches no log, and a file that cannot be used stops the
start (or the reload) with FILE:LINE: key: reason."""

import os
import subprocess
import tempfile

import imapfront_harness as h
import ops_support as ops

PASSWORD = "Xq7-file-only-s3cret"


def secret(workdir, text):
    d = tempfile.mkdtemp(prefix="secret-", dir=workdir)
    path = os.path.join(d, "check-password")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


def login_check(backend_port, password_file):
    return {"backend": {"check": "login", "check_interval": "200ms", "check_timeout": "2s",
                        "down_after": "1", "check_user": "svc", "check_mailbox": "INBOX",
                        "check_password_file": password_file}}


def test_login_check_with_password_from_file(workdir, backends, proxy_factory):
    emu = backends(users="svc:" + PASSWORD)
    path = secret(workdir, PASSWORD + "\n")  # as `kubectl create secret --from-file` keeps it
    proxy = ops.start_proxy(proxy_factory, emu.port, extra=login_check(emu.port, path))
    ops.wait_metrics(proxy, lambda m: m.value("imapfront_backend_checks_total",
                                              server=ops.addr(emu.port), result="ok") >= 2,
                     timeout=10, what="two passed login checks")
    assert ops.scrape(proxy).value("imapfront_backend_checks_total", server=ops.addr(emu.port),
                                   result="failed") == 0
    assert ops.http_get(proxy.admin, "/readyz").status == 200
    assert PASSWORD not in proxy.log.text()

    # A wrong password in the file: the check fails, still unlogged.
    path_wrong = secret(workdir, "not-the-password\n")
    ops.rewrite_ini(proxy, login_check(emu.port, path_wrong))
    ops.sighup(proxy, ops.RELOADED)
    proxy.log.wait_for(r"\bwarn backend: server failed its check, out of rotation .*"
                       r"step=LOGIN reason=\"LOGIN refused", timeout=10, alive=proxy.check_alive)
    assert "not-the-password" not in proxy.log.text()
    assert PASSWORD not in proxy.log.text()


def test_unusable_file_is_a_config_error(workdir, backends, proxy_factory, need_bin):
    emu = backends(users="svc:" + PASSWORD)
    proxy = ops.start_proxy(proxy_factory, emu.port)
    empty = secret(workdir, "\n")
    ops.rewrite_ini(proxy, login_check(emu.port, empty))
    line = [n for n, l in enumerate(open(proxy.ini), 1) if l.startswith("check_password_file")][0]
    m = ops.sighup(proxy, ops.RELOAD_FAILED)
    assert m.group(1) == "%s:%d: check_password_file: %s is empty" % (proxy.ini, line, empty)

    missing = empty + ".missing"
    ops.rewrite_ini(proxy, login_check(emu.port, missing))
    r = subprocess.run([h.BIN, "-t", "-c", proxy.ini], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr.strip() == ("%s:%d: check_password_file: cannot open %s: No such file or "
                                "directory" % (proxy.ini, line, missing)), r.stderr
