/* notify: the systemd service notification protocol (sd_notify(3)), by
 * hand: one datagram of "KEY=VALUE" lines to the unix socket named by
 * $NOTIFY_SOCKET (a path, or an abstract name when it starts with '@').
 * With Type=notify the service manager then knows when the proxy listens
 * (READY=1), reloads (RELOADING=1), stops (STOPPING=1), and shows STATUS=
 * in `systemctl status`. Without $NOTIFY_SOCKET every call does nothing. */
#ifndef IMAPFRONT_NOTIFY_H
#define IMAPFRONT_NOTIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

struct imf_notify {
    int fd; /* -1: off */
    struct sockaddr_un addr;
    socklen_t addr_len;
};

/* Reads $NOTIFY_SOCKET and opens a datagram socket for it. Returns 0 (off
 * when the variable is unset or empty: n->fd == -1), or a negative errno
 * when the variable is malformed or no socket can be made (n is then off).
 * Call before dropping privileges. */
int imf_notify_open(struct imf_notify *n);

/* Whether notifications go anywhere. */
bool imf_notify_enabled(const struct imf_notify *n);

/* Sends text (newline-separated KEY=VALUE assignments) as one datagram.
 * Returns 0 (also when off) or a negative errno; never blocks. */
int imf_notify_send(const struct imf_notify *n, const char *text);

/* The "RELOADING=1\nMONOTONIC_USEC=..." message systemd wants at the start
 * of a reload, written into out. */
void imf_notify_reloading_text(char *out, size_t out_len);

void imf_notify_close(struct imf_notify *n);

#endif
