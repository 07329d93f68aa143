/* proxy_proto: see include/imapfront/proxy_proto.h. */
#include "imapfront/proxy_proto.h"

#include "imapfront/util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
static const char v1_sig[] = "PROXY ";
#define V1_MAX 107 /* the whole line, CRLF included, as the spec bounds it */

static void set4(struct sockaddr_storage *ss, const uint8_t *a, const uint8_t *port)
{
    struct sockaddr_in *s = (struct sockaddr_in *)ss;
    memset(ss, 0, sizeof(*ss));
    s->sin_family = AF_INET;
    memcpy(&s->sin_addr, a, 4);
    memcpy(&s->sin_port, port, 2);
}

static void set6(struct sockaddr_storage *ss, const uint8_t *a, const uint8_t *port)
{
    struct sockaddr_in6 *s = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof(*ss));
    s->sin6_family = AF_INET6;
    memcpy(&s->sin6_addr, a, 16);
    memcpy(&s->sin6_port, port, 2);
}

static enum imf_pp_result fail(const char **out_error, const char *why)
{
    *out_error = why;
    return IMF_PP_ERROR;
}

static enum imf_pp_result parse_v2(const uint8_t *d, size_t len, struct imf_pp_info *out,
                                   size_t *out_len, const char **out_error)
{
    if (len < 16)
        return IMF_PP_NEED_MORE;
    if ((d[12] >> 4) != 2)
        return fail(out_error, "PROXY v2: unsupported version");
    unsigned cmd = d[12] & 0x0f;
    if (cmd > 1)
        return fail(out_error, "PROXY v2: unknown command");
    size_t body = ((size_t)d[14] << 8) | d[15];
    if (body > IMF_PP_MAX - 16)
        return fail(out_error, "PROXY v2: header too long");
    if (len < 16 + body)
        return IMF_PP_NEED_MORE;
    memset(out, 0, sizeof(*out));
    *out_len = 16 + body;
    if (cmd == 0) { /* LOCAL: a health check from the balancer itself */
        out->local = true;
        return IMF_PP_DONE;
    }
    unsigned fam = d[13] >> 4, proto = d[13] & 0x0f;
    if (fam == 0) { /* UNSPEC: no address to take */
        out->local = true;
        return IMF_PP_DONE;
    }
    if (proto != 1)
        return fail(out_error, "PROXY v2: not a TCP connection");
    const uint8_t *a = d + 16;
    if (fam == 1) {
        if (body < 12)
            return fail(out_error, "PROXY v2: truncated IPv4 addresses");
        set4(&out->src, a, a + 8);
        set4(&out->dst, a + 4, a + 10);
        return IMF_PP_DONE;
    }
    if (fam == 2) {
        if (body < 36)
            return fail(out_error, "PROXY v2: truncated IPv6 addresses");
        set6(&out->src, a, a + 32);
        set6(&out->dst, a + 16, a + 34);
        return IMF_PP_DONE;
    }
    return fail(out_error, "PROXY v2: unsupported address family");
}

/* Copies the next space-separated field of line (NUL-terminated) into buf. */
static const char *field(const char *p, char *buf, size_t len)
{
    size_t n = 0;
    while (*p != ' ' && *p != '\0') {
        if (n + 1 >= len)
            return NULL;
        buf[n++] = *p++;
    }
    buf[n] = '\0';
    if (n == 0)
        return NULL;
    return *p == ' ' ? p + 1 : p;
}

static bool parse_port(const char *s, uint8_t out[2])
{
    if (*s == '\0' || strlen(s) > 5 || (s[0] == '0' && s[1] != '\0'))
        return false;
    unsigned v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        v = v * 10 + (unsigned)(*s - '0');
    }
    if (v > 65535)
        return false;
    uint16_t be = htons((uint16_t)v);
    memcpy(out, &be, 2);
    return true;
}

static enum imf_pp_result parse_v1(const uint8_t *d, size_t len, struct imf_pp_info *out,
                                   size_t *out_len, const char **out_error)
{
    size_t scan = len < V1_MAX ? len : V1_MAX;
    const uint8_t *lf = memchr(d, '\n', scan);
    if (lf == NULL)
        return len < V1_MAX ? IMF_PP_NEED_MORE : fail(out_error, "PROXY v1: line too long");
    size_t n = (size_t)(lf - d) + 1;
    if (n < 2 || d[n - 2] != '\r')
        return fail(out_error, "PROXY v1: line does not end in CRLF");
    char line[V1_MAX + 1];
    memcpy(line, d, n - 2);
    line[n - 2] = '\0';
    if (memchr(line, '\0', n - 2) != NULL)
        return fail(out_error, "PROXY v1: NUL in header");
    memset(out, 0, sizeof(*out));
    *out_len = n;
    const char *p = line + sizeof(v1_sig) - 1;
    char proto[8], src[48], dst[48], sport[8], dport[8];
    p = field(p, proto, sizeof(proto));
    if (p == NULL)
        return fail(out_error, "PROXY v1: missing protocol");
    if (strcmp(proto, "UNKNOWN") == 0) {
        out->local = true;
        return IMF_PP_DONE;
    }
    bool v6 = strcmp(proto, "TCP6") == 0;
    if (!v6 && strcmp(proto, "TCP4") != 0)
        return fail(out_error, "PROXY v1: unknown protocol");
    if ((p = field(p, src, sizeof(src))) == NULL || (p = field(p, dst, sizeof(dst))) == NULL ||
        (p = field(p, sport, sizeof(sport))) == NULL || field(p, dport, sizeof(dport)) == NULL)
        return fail(out_error, "PROXY v1: missing fields");
    if (strchr(p, ' ') != NULL)
        return fail(out_error, "PROXY v1: too many fields");
    uint8_t a[16], b[16], ps[2], pd[2];
    if (inet_pton(v6 ? AF_INET6 : AF_INET, src, a) != 1 ||
        inet_pton(v6 ? AF_INET6 : AF_INET, dst, b) != 1)
        return fail(out_error, "PROXY v1: bad address");
    if (!parse_port(sport, ps) || !parse_port(dport, pd))
        return fail(out_error, "PROXY v1: bad port");
    if (v6) {
        set6(&out->src, a, ps);
        set6(&out->dst, b, pd);
    } else {
        set4(&out->src, a, ps);
        set4(&out->dst, b, pd);
    }
    return IMF_PP_DONE;
}

enum imf_pp_result imf_pp_parse(const uint8_t *data, size_t len, enum imf_proxy_protocol version,
                                struct imf_pp_info *out, size_t *out_len, const char **out_error)
{
    bool try_v1 = version == IMF_PROXY_PROTOCOL_V1 || version == IMF_PROXY_PROTOCOL_ANY;
    bool try_v2 = version == IMF_PROXY_PROTOCOL_V2 || version == IMF_PROXY_PROTOCOL_ANY;
    /* Compare what we have with each signature: a mismatch is final, a
     * short match wants more. */
    if (try_v2) {
        size_t n = len < sizeof(v2_sig) ? len : sizeof(v2_sig);
        if (memcmp(data, v2_sig, n) == 0)
            return n < sizeof(v2_sig) ? IMF_PP_NEED_MORE
                                      : parse_v2(data, len, out, out_len, out_error);
    }
    if (try_v1) {
        size_t siglen = sizeof(v1_sig) - 1;
        size_t n = len < siglen ? len : siglen;
        if (memcmp(data, v1_sig, n) == 0)
            return n < siglen ? IMF_PP_NEED_MORE : parse_v1(data, len, out, out_len, out_error);
    }
    if (len == 0)
        return IMF_PP_NEED_MORE;
    return fail(out_error, "no PROXY protocol header");
}
