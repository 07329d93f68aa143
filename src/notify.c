/* notify: see include/imapfront/notify.h. The protocol is a few lines;
 * libsystemd would be one more dependency for it. */
#include "imapfront/notify.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int imf_notify_open(struct imf_notify *n)
{
    memset(n, 0, sizeof(*n));
    n->fd = -1;
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0')
        return 0;
    size_t len = strlen(path);
    /* An absolute path, or '@' for Linux's abstract namespace (the name is
     * then the bytes after a leading NUL, not NUL-terminated). */
    if ((path[0] != '/' && path[0] != '@') || len < 2 || len > sizeof(n->addr.sun_path))
        return -EINVAL;
    n->addr.sun_family = AF_UNIX;
    memcpy(n->addr.sun_path, path, len);
    if (path[0] == '@')
        n->addr.sun_path[0] = '\0';
    n->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    n->fd = fd;
    return 0;
}

bool imf_notify_enabled(const struct imf_notify *n)
{
    return n->fd >= 0;
}

int imf_notify_send(const struct imf_notify *n, const char *text)
{
    if (n->fd < 0)
        return 0;
    ssize_t rc = sendto(n->fd, text, strlen(text), MSG_NOSIGNAL, (const struct sockaddr *)&n->addr,
                        n->addr_len);
    return rc < 0 ? -errno : 0;
}

void imf_notify_reloading_text(char *out, size_t out_len)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t usec = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
    snprintf(out, out_len, "RELOADING=1\nMONOTONIC_USEC=%" PRIu64, usec);
}

void imf_notify_close(struct imf_notify *n)
{
    if (n->fd >= 0)
        close(n->fd);
    n->fd = -1;
}
