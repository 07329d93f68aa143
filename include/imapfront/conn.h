/* conn: one side of a session (the client's or the backend's): its socket,
 * the bytes that came from it (rx) and those going to it (tx), and its
 * state bits. Writes take the front of tx; reads go straight into the tail
 * of rx. A session embeds two; the socket's data pointer is the session. */
#ifndef IMAPFRONT_CONN_H
#define IMAPFRONT_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "imapfront/chain.h"

struct imf_conn {
    uv_tcp_t tcp;
    struct imf_chain rx, tx;
    /* When set, the socket writes this chain instead of tx: TLS to the
     * backend, where tx holds plaintext (backend_tls.c). */
    struct imf_chain *wire;
    size_t wlen;  /* bytes of the written chain in the write in flight (0 = none) */
    bool inited;  /* tcp initialised, so it must be closed */
    bool up;      /* connected */
    bool reading; /* uv_read_start active */
    bool blocked; /* its direction is over the high mark: not reading */
    bool eof;     /* the peer closed (EOF, or close_notify) */
    bool closing; /* uv_close called */
};

/* Called once a write that did not complete at once has: status as libuv
 * gives it (UV_ECANCELED when the socket closed first). */
typedef void (*imf_conn_written_cb)(struct imf_conn *c, int status);

/* Writes the front of c->tx (c->wire when set) unless a write is in flight. Most writes
 * complete at once (uv_try_write) and need no request; one that does not
 * takes a request, allocated here and freed before cb runs, so that an idle
 * connection holds none. Returns 0, or a negative libuv error (the caller
 * ends the session; cb is then never called). */
int imf_conn_write(struct imf_conn *c, imf_conn_written_cb cb);

/* Starts or stops reading as want says; a start that fails leaves it off. */
void imf_conn_want_read(struct imf_conn *c, bool want, uv_alloc_cb alloc, uv_read_cb cb);

/* Points buf at room in the tail of c (a zero-length buffer when there is
 * no memory: libuv then reports UV_ENOBUFS). */
void imf_conn_read_buf(struct imf_chain *c, uv_buf_t *buf);

/* A handle a session needs only at times (a timer, a check, an idle
 * handle): allocated and initialised on first use, kept until the session
 * ends. *slot holds the memory, *inited says whether it is initialised
 * (and must be closed); *open_handles counts it. Returns it, or NULL when
 * there is no memory. */
uv_handle_t *imf_lazy_handle(uv_loop_t *loop, uv_handle_type type, void *data, void **slot,
                             bool *inited, unsigned *open_handles);

#endif
