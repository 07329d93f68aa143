/* conn: see include/imapfront/conn.h. */
#include "imapfront/conn.h"

#include <stdlib.h>

#define WRITE_IOV_MAX   16
#define WRITE_BYTES_MAX (256 * 1024)

struct write_req {
    uv_write_t req;
    struct imf_conn *conn;
    imf_conn_written_cb cb;
};

static void on_written(uv_write_t *req, int status)
{
    struct write_req *w = (struct write_req *)req;
    struct imf_conn *c = w->conn;
    imf_conn_written_cb cb = w->cb;
    free(w);
    size_t n = c->wlen;
    c->wlen = 0;
    imf_chain_consume(c->wire != NULL ? c->wire : &c->tx, n);
    cb(c, status);
}

/* Fills bufs with the front of the chain; returns how many. */
static unsigned front(struct imf_chain *tx, uv_buf_t *bufs, size_t *out_total)
{
    struct imf_iovec iov[WRITE_IOV_MAX];
    unsigned n = imf_chain_iov(tx, iov, WRITE_IOV_MAX, WRITE_BYTES_MAX, out_total);
    for (unsigned i = 0; i < n; i++)
        bufs[i] = uv_buf_init(iov[i].base, (unsigned)iov[i].len);
    return n;
}

int imf_conn_write(struct imf_conn *c, imf_conn_written_cb cb)
{
    uv_buf_t bufs[WRITE_IOV_MAX];
    size_t total;
    unsigned n;
    struct imf_chain *tx = c->wire != NULL ? c->wire : &c->tx;
    /* Try the socket right away, as long as it takes everything. */
    for (;;) {
        if (c->wlen != 0 || tx->bytes == 0)
            return 0;
        n = front(tx, bufs, &total);
        int done = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
        if (done < 0 && done != UV_EAGAIN)
            return done;
        if (done <= 0)
            break;
        imf_chain_consume(tx, (size_t)done);
        if ((size_t)done != total) {
            n = front(tx, bufs, &total);
            break;
        }
    }
    struct write_req *w = malloc(sizeof(*w));
    if (w == NULL)
        return UV_ENOMEM;
    w->conn = c;
    w->cb = cb;
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, n, on_written);
    if (rc != 0) {
        free(w);
        return rc;
    }
    c->wlen = total;
    return 0;
}

void imf_conn_want_read(struct imf_conn *c, bool want, uv_alloc_cb alloc, uv_read_cb cb)
{
    if (want && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, alloc, cb) == 0)
            c->reading = true;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

void imf_conn_read_buf(struct imf_chain *c, uv_buf_t *buf)
{
    uint8_t *p;
    size_t room;
    if (imf_chain_reserve(c, IMF_READ_MIN, &p, &room) != 0) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    *buf = uv_buf_init((char *)p, (unsigned)room);
}

uv_handle_t *imf_lazy_handle(uv_loop_t *loop, uv_handle_type type, void *data, void **slot,
                             bool *inited, unsigned *open_handles)
{
    if (*inited)
        return *slot;
    if (*slot == NULL && (*slot = malloc(uv_handle_size(type))) == NULL)
        return NULL;
    uv_handle_t *h = *slot;
    switch (type) {
    case UV_TIMER:
        uv_timer_init(loop, (uv_timer_t *)h);
        break;
    case UV_CHECK:
        uv_check_init(loop, (uv_check_t *)h);
        break;
    case UV_IDLE:
        uv_idle_init(loop, (uv_idle_t *)h);
        break;
    default:
        return NULL; /* not a kind a session makes lazily */
    }
    h->data = data;
    *inited = true;
    (*open_handles)++;
    return h;
}
