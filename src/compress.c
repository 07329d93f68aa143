/* compress: COMPRESS=DEFLATE at the proxy, on the client side: the
 * client's bytes are inflated between TLS and the framer, ours deflated
 * between the gate and TLS (zchain.h does the work over chains); the
 * backend never sees compression. */
#include "imapfront/log.h"
#include "imapfront/session_int.h"

/* COMPRESS DEFLATE accepted: the OK leaves uncompressed, then both
 * directions are compressed. What the client sent after its command line
 * is compressed already. */
void imf_sess_start_compress(struct imf_session *s, const char *ok, size_t ok_len)
{
    imf_sess_to_client(s, ok, ok_len);
    imf_sess_encrypt_all(s);
    if (imf_zchain_start(&s->z, (int)s->cfg->compress_level, s->cfg->compress_window) != 0) {
        /* The stream state is unknown to the client now: end it. */
        imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
        return;
    }
    imf_chain_splice(&s->c_z, &s->c_plain, s->c_plain.bytes);
    imf_debug("session", "client=%s COMPRESS DEFLATE active", s->peer);
    imf_sess_arm_inactivity_timer(s); /* for imf_sess_compress_idle */
}

/* zlib's state was made again for new octets: the session's timer must
 * come back to release it once the session is idle again. */
static void revived(struct imf_session *s, bool before)
{
    if (!before && imf_zchain_releasable(&s->z) && s->state == SESS_RELAY)
        imf_sess_arm_inactivity_timer(s);
}

void imf_sess_compress_idle(struct imf_session *s)
{
    imf_zchain_release(&s->z, &s->c_z, &s->p_tx);
}

/* Inflates compressed client bytes from c_z into c_plain. Returns 1 on
 * progress, 0 when it needs more input, -1 when the session ended. */
int imf_sess_inflate_step(struct imf_session *s)
{
    size_t used, made;
    bool before = imf_zchain_releasable(&s->z);
    int rc = imf_zchain_inflate(&s->z, &s->c_z, &s->c_plain, TLS_RECORD_MAX, &used, &made);
    imf_stat_add(&s->worker->stats.compress_in_wire, (int64_t)used);
    imf_stat_add(&s->worker->stats.compress_in_plain, (int64_t)made);
    if (rc == IMF_ZCHAIN_NOMEM) {
        imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
        return -1;
    }
    if (rc == IMF_ZCHAIN_CORRUPT) {
        /* Nothing after it can be read any more. */
        imf_sess_bye(s, IMF_CLOSE_CLIENT_ERROR, "Compression error");
        return -1;
    }
    uint64_t out = imf_zchain_inflated(&s->z);
    if (out > INFLATE_RATIO_AFTER &&
        out / (imf_zchain_inflated_from(&s->z) + 1) > INFLATE_RATIO_MAX) {
        /* Mail text deflates 5 to 10 times; this is a bomb. */
        imf_sess_bye(s, IMF_CLOSE_CLIENT_ERROR, "[LIMIT] Compression ratio too high");
        return -1;
    }
    revived(s, before);
    return rc;
}

/* Deflates p_tx into p_z, within the watermark. */
void imf_sess_deflate_downstream(struct imf_session *s)
{
    uint64_t used = 0, made = 0;
    bool before = imf_zchain_releasable(&s->z);
    int rc = imf_zchain_deflate(&s->z, &s->p_tx, &s->p_z, TLS_RECORD_MAX, s->high, &used, &made);
    imf_stat_add(&s->worker->stats.compress_out_plain, (int64_t)used);
    imf_stat_add(&s->worker->stats.compress_out_wire, (int64_t)made);
    if (rc != 0) {
        imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
        return;
    }
    revived(s, before);
}
