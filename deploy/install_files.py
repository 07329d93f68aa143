#!/usr/bin/env python3
"""Makes the files `meson install` (and so the Debian package) puts in
place from their one source each, with the install's own paths:

  install_files.py unit SOURCE OUTPUT SBINDIR SYSCONFDIR
      deploy/systemd/imapfront.service with /usr/sbin and /etc replaced by
      the configured directories (identical for --prefix=/usr).
  install_files.py config SOURCE OUTPUT SYSCONFDIR
      proxy.ini.example as the installed proxy.ini: the [certificate.NAME]
      example section commented out (its files do not exist), every
      /etc/imapfront/ path under SYSCONFDIR/imapfront/, and a header saying
      what to edit. The result loads with `imapfront -t` once the [tls]
      certificate and key exist.
"""

import re
import sys


def unit(source, output, sbindir, sysconfdir):
    with open(source, encoding="utf-8") as f:
        text = f.read()
    text = text.replace("/usr/sbin/imapfront", sbindir.rstrip("/") + "/imapfront")
    text = text.replace("/etc/imapfront/", sysconfdir.rstrip("/") + "/imapfront/")
    with open(output, "w", encoding="utf-8") as f:
        f.write(text)


HEADER = """\
; {path}: the configuration of imapfront, installed from
; proxy.ini.example. Before `systemctl enable --now imapfront`:
;   * put the certificate (with its chain) and its key where [tls] says,
;     readable by the imapfront user (the key: chgrp imapfront, chmod 640);
;   * set [backend] servers to your IMAP server(s);
;   * check it: imapfront -t -c {path}
; Under systemd the process already runs as user imapfront with the right
; to bind port 993: leave [proxy] user empty. Every key: imapfront.ini(5).
;
"""


def config(source, output, sysconfdir):
    etc = sysconfdir.rstrip("/") + "/imapfront/"
    out = [HEADER.format(path=etc + "proxy.ini")]
    in_certificate = False
    with open(source, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^\s*\[([^\]]+)\]", line)
            if m:
                in_certificate = m.group(1).startswith("certificate.")
            if in_certificate and line.strip():
                line = "; " + line
            out.append(line.replace("/etc/imapfront/", etc))
    with open(output, "w", encoding="utf-8") as f:
        f.write("".join(out))


def main(argv):
    if len(argv) == 6 and argv[1] == "unit":
        unit(*argv[2:])
    elif len(argv) == 5 and argv[1] == "config":
        config(*argv[2:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
