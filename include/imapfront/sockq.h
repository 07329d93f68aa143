/* sockq: what the kernel knows of a TCP socket's send side, for the
 * literal_crlf_split shield. Linux only; every field may be unknown. */
#ifndef IMAPFRONT_SOCKQ_H
#define IMAPFRONT_SOCKQ_H

#include <stdbool.h>
#include <stdint.h>

struct imf_sendq {
    uint32_t unsent;      /* bytes queued but not yet sent (SIOCOUTQNSD) */
    uint32_t peer_window; /* the receive window the peer last advertised */
    bool window_known;    /* the kernel reports peer_window (tcpi_snd_wnd) */
};

/* Fills *out for socket fd. Returns 0, or -errno when nothing is known. */
int imf_sendq_probe(int fd, struct imf_sendq *out);

#endif
