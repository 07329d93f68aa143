/* sockq: see include/imapfront/sockq.h. Uses the kernel's own struct
 * tcp_info (glibc's copy lacks tcpi_snd_wnd). */
#include "imapfront/sockq.h"

#include <errno.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

int imf_sendq_probe(int fd, struct imf_sendq *out)
{
    memset(out, 0, sizeof(*out));
    int unsent = 0;
    if (ioctl(fd, SIOCOUTQNSD, &unsent) != 0)
        return -errno;
    out->unsent = unsent > 0 ? (uint32_t)unsent : 0;
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    memset(&ti, 0, sizeof(ti));
    /* An older kernel fills a shorter struct: the field is known only when
     * the answer covers it. */
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 &&
        len >= offsetof(struct tcp_info, tcpi_snd_wnd) + sizeof(ti.tcpi_snd_wnd)) {
        out->peer_window = ti.tcpi_snd_wnd;
        out->window_known = true;
    }
    return 0;
}
