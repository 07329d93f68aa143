"""A private Dovecot for the integration tests, plus the fixtures that
start it.

Dovecot runs in the foreground (`dovecot -F -c CONF`) from a temporary
directory of its own: its own base_dir, state_dir, logs, passwd-file and
Maildir root, plaintext IMAP on one free loopback port, no imaps
listener. Nothing of the system's /etc/dovecot is read or touched. It is
stopped by the PID we started (SIGTERM, bounded wait, SIGKILL).

Users: demo/demo and alice/secret.

The login log line carries the client's port (`rport=`) next to its
address, so that a test can tell the real client from the proxy's own
outgoing connection. 127.0.0.0/8 is a trusted network, so Dovecot accepts
the x-originating-ip / x-originating-port an ID command gives it."""

import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

import imapfront_harness as h

USERS = {"demo": "demo", "alice": "secret"}
DOVECOT = shutil.which("dovecot") or ("/usr/sbin/dovecot"
                                      if os.access("/usr/sbin/dovecot", os.X_OK) else None)

# Login and logout lines say who connected from where, port included.
LOGIN_ELEMENTS = "user=<%u> method=%m rip=%r rport=%b lip=%l lport=%a mpid=%e %c session=<%{session}>"


def unavailable_reason():
    """Why a private Dovecot cannot run here, or None when it can."""
    if DOVECOT is None:
        return "dovecot is not installed (./dev setup installs dovecot-imapd)"
    if os.geteuid() != 0:
        return "a private Dovecot needs root here (its login processes drop privileges)"
    for user in ("dovecot", "dovenull"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return "system user %r missing (it comes with dovecot-core)" % user
    # Dovecot's auth and login processes run unprivileged and must reach
    # their files from "/": a root directory without the x bit for others
    # (a chroot made by mktemp -d, for one) stops them.
    if not os.stat("/").st_mode & 0o001:
        return "the filesystem root is not traversable by other users (mode %o)" % (
            os.stat("/").st_mode & 0o777)
    return None


def _mail_owner():
    """uid, gid for mail files: Dovecot refuses uid 0 for mail access."""
    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return 65534, 65534


class Dovecot(h._Child):
    """dovecot -F with a configuration written into a fresh directory.

    ssl_cert/ssl_key given: Dovecot advertises STARTTLS before login (it
    still listens in plaintext only), so tests can check that the proxy
    hides it. compress=True loads imap_zlib, so COMPRESS=DEFLATE appears in
    the capabilities after login. extra: more configuration lines, last
    (later settings override earlier ones)."""

    name = "dovecot"

    def __init__(self, parent=None, ssl_cert=None, ssl_key=None, compress=False, extra=()):
        # A short path: unix socket names are limited to 108 bytes, and the
        # unprivileged login/auth processes must be able to traverse it.
        self.dir = tempfile.mkdtemp(prefix="imf-dovecot-", dir=parent)
        os.chmod(self.dir, 0o755)
        self.base = os.path.join(self.dir, "run")
        self.state = os.path.join(self.dir, "state")
        self.mail = os.path.join(self.dir, "mail")
        for d in (self.base, self.state, self.mail):
            os.makedirs(d)
            os.chmod(d, 0o755)
        uid, gid = _mail_owner()
        os.chown(self.mail, uid, gid)
        self.passwd = os.path.join(self.dir, "passwd")
        with open(self.passwd, "w") as f:
            for user, password in USERS.items():
                f.write("%s:{PLAIN}%s\n" % (user, password))
        os.chmod(self.passwd, 0o644)
        self.log = h.LogFile(os.path.join(self.dir, "dovecot.log"))
        self.port = h.free_port()
        self.conf = os.path.join(self.dir, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(self._config(uid, gid, ssl_cert, ssl_key, compress) +
                    "".join(line + "\n" for line in extra))
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([DOVECOT, "-F", "-c", self.conf],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         cwd=self.dir)
        try:
            self._wait_ready()
        except Exception:
            self.stop()
            raise

    def _config(self, uid, gid, ssl_cert, ssl_key, compress):
        lines = [
            "protocols = imap",
            "listen = 127.0.0.1",
            "base_dir = %s" % self.base,
            "state_dir = %s" % self.state,
            "instance_name = imf-test-%d" % self.port,
            "log_path = %s" % self.log.path,
            "info_log_path = %s" % self.log.path,
            "log_timestamp = \"%Y-%m-%d %H:%M:%S \"",
            "login_log_format_elements = %s" % LOGIN_ELEMENTS,
            "login_trusted_networks = 127.0.0.0/8",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain login",
            "first_valid_uid = %d" % min(uid, 500),
            "first_valid_gid = %d" % min(gid, 500),
            "mail_location = maildir:%s/%%u" % self.mail,
            "mail_uid = %d" % uid,
            "mail_gid = %d" % gid,
            # No fsync per message: the mail store is thrown away.
            "mail_fsync = never",
            "passdb {",
            "  driver = passwd-file",
            "  args = scheme=PLAIN username_format=%%u %s" % self.passwd,
            "}",
            "userdb {",
            "  driver = static",
            "  args = uid=%d gid=%d home=%s/%%u" % (uid, gid, self.mail),
            "}",
            "service imap-login {",
            "  inet_listener imap {",
            "    address = 127.0.0.1",
            "    port = %d" % self.port,
            "  }",
            "  inet_listener imaps {",
            "    port = 0",
            "  }",
            "}",
            # Other services would listen on their default TCP ports.
            "service doveadm {",
            "  inet_listener {",
            "    port = 0",
            "  }",
            "}",
        ]
        if ssl_cert:
            lines += ["ssl = yes", "ssl_cert = <%s" % ssl_cert, "ssl_key = <%s" % ssl_key]
        else:
            lines += ["ssl = no"]
        if compress:
            lines += ["protocol imap {", "  mail_plugins = $mail_plugins zlib imap_zlib", "}"]
        return "\n".join(lines) + "\n"

    def _wait_ready(self):
        """Connects (bounded) until the greeting is a `* OK`."""

        def probe():
            self.check_alive()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    return h.recv_line(s).startswith(b"* OK")
            except OSError:
                return False

        h.wait_until(probe, h.START_TIMEOUT, "dovecot to greet on port %d" % self.port,
                     interval=0.05)

    def tail(self):
        out = []
        for path in (self.stderr_path, self.log.path):
            try:
                with open(path, "rb") as f:
                    out.append(f.read()[-3000:].decode("utf-8", "replace"))
            except FileNotFoundError:
                pass
        return "\n".join(out)

    def logins(self, since=0):
        """key=value pairs of the "imap-login: Login:" lines after a mark
        (Dovecot separates its elements with ", ")."""
        return [dict(re.findall(r"(\w+)=<?([^,>\s]*)>?", m.group(1)))
                for m in self.log.find(r"imap-login: (?:Info: )?Login: (.*)$", since)]


# ------------------------------------------------------ client helpers ----

class TLSOver(h.TLSClient):
    """h.TLSClient over a socket that is already connected (after STARTTLS),
    or with an SNI name (server_hostname) on a fresh connection."""

    def __init__(self, sock, context, timeout=10.0, server_hostname=None, handshake=True):
        self.sock = sock
        self.timeout = timeout
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=False,
                                    server_hostname=server_hostname)
        self.buf = b""
        self.closed = None
        self.tcp_eof = False
        if handshake:
            self.handshake()

    @classmethod
    def connect(cls, port, context, host="127.0.0.1", timeout=10.0, source=None, **kw):
        sock = socket.create_connection((host, port), timeout=timeout, source_address=source)
        return cls(sock, context, timeout=timeout, **kw)


class PlainClient(h.LineClient):
    """The plaintext phase of a STARTTLS session. Reads exactly what the
    server sent (nothing is read ahead past a line), so that at starttls()
    no byte of the server's is lost or mistaken for TLS."""

    def __init__(self, port, host="127.0.0.1", timeout=10.0, source=None):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=source)
        self.timeout = timeout
        self.buf = b""
        self.eof = False

    def write(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            raise h.Closed("eof")
        self.buf += data

    def expect_eof(self, timeout=5.0):
        """Everything the server sends until it closes (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._fill(deadline)
            except h.Closed:
                out, self.buf = self.buf, b""
                return out

    def starttls(self, context, server_hostname=None):
        """After the tagged OK to STARTTLS: the TLS handshake on this
        socket. Any server byte already here would be plaintext sent after
        the OK, which must never happen."""
        if self.buf:
            raise AssertionError("plaintext after the STARTTLS OK: %r" % self.buf)
        return TLSOver(self.sock, context, timeout=self.timeout, server_hostname=server_hostname)


def capabilities(lines):
    """The set of capability atoms (upper case) in `* CAPABILITY` lines and
    `[CAPABILITY ...]` codes among lines (bytes), and how many such
    places there were."""
    caps, places = set(), 0
    for line in lines:
        for m in re.finditer(rb"^\* CAPABILITY ([^\r\n]*)|\[CAPABILITY ([^\]]*)\]", line):
            places += 1
            caps.update(x.upper().decode() for x in (m.group(1) or m.group(2)).split())
    return caps, places


def make_named_cert(directory, cn, names=None):
    """A self-signed ECDSA P-256 certificate whose CN is cn and whose SANs
    are DNS:names (default: cn); returns (cert_path, key_path)."""
    base = re.sub(r"[^A-Za-z0-9]", "_", cn)
    cert = os.path.join(directory, base + "-cert.pem")
    key = os.path.join(directory, base + "-key.pem")
    san = ",".join("DNS:" + n for n in (names or [cn]))
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=" + cn,
         "-addext", "subjectAltName=" + san],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
    return cert, key


def tcp_listens(port, v6=False):
    """Whether a TCP socket is in LISTEN state on loopback:port now, read
    from /proc/net/tcp(6) (True when that cannot be read)."""
    if v6:
        want = {"00000000000000000000000001000000:%04X" % port,
                "00000000000000000000000000000000:%04X" % port}
    else:
        want = {"0100007F:%04X" % port, "00000000:%04X" % port}
    try:
        with open("/proc/net/tcp6" if v6 else "/proc/net/tcp") as f:
            next(f)
            return any(l.split()[1] in want and l.split()[3] == "0A" for l in f)
    except (FileNotFoundError, StopIteration):
        return True


def listener_port(proxy, name, timeout=5.0):
    """The port the proxy logged for listener `name`, once it accepts: the
    "listening" line comes after bind() but may precede listen()."""
    m = proxy.log.wait_for(r"listening name=%s address=(127\.0\.0\.1|\[::1\]):(\d+)"
                           % re.escape(name), timeout=timeout, alive=proxy.check_alive)
    port, v6 = int(m.group(2)), m.group(1).startswith("[")
    h.wait_until(lambda: tcp_listens(port, v6), timeout, "listener %s in LISTEN state" % name)
    return port


def starttls_proxy(proxy_factory, backend_port, extra=None, require_tls=True):
    """A proxy with an extra `[listen.imap] mode = starttls` listener;
    returns (proxy, starttls_port)."""
    sections = {"listen.imap": {"address": "127.0.0.1:0", "mode": "starttls",
                                "require_tls": "yes" if require_tls else "no"}}
    for section, keys in (extra or {}).items():
        sections.setdefault(section, {}).update(keys)
    p = proxy_factory(backend_port, extra=sections)
    return p, listener_port(p, "imap")


# ------------------------------------------------------------- fixtures ----

@pytest.fixture(scope="session")
def dovecot_factory():
    """dovecot_factory(**kw) starts a private Dovecot (see Dovecot); every
    one started stops when the test session ends. Skips when Dovecot
    cannot run here."""
    why = unavailable_reason()
    if why:
        pytest.skip(why)
    started = []

    def start(**kw):
        d = Dovecot(**kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
        shutil.rmtree(d.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot(dovecot_factory):
    """One plain Dovecot shared by a test module's tests (mail left by one
    test is visible to the next: tests use their own mailbox or user)."""
    return dovecot_factory()
