/* netaddr: see include/imapfront/netaddr.h. */
#include "imapfront/netaddr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "imapfront/util.h"

static const uint8_t v4mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* Zeroes the bits of addr[0..16) past the first bits. */
static void clear_host_bits(uint8_t addr[16], unsigned bits)
{
    unsigned bytes = bits / 8, rest = bits % 8;
    if (rest != 0) {
        addr[bytes] &= (uint8_t)(0xff << (8 - rest));
        bytes++;
    }
    if (bytes < 16)
        memset(addr + bytes, 0, 16 - bytes);
}

int imf_cidr_parse(const char *text, size_t len, struct imf_cidr *out)
{
    /* The longest valid entry: an IPv6 address with an embedded IPv4 one
     * (45 bytes) and "/128". */
    char buf[INET6_ADDRSTRLEN + 5];
    if (len == 0 || len >= sizeof(buf))
        return -EINVAL;
    memcpy(buf, text, len);
    buf[len] = '\0';
    char *slash = strchr(buf, '/');
    if (slash != NULL)
        *slash = '\0';
    struct imf_cidr c;
    memset(&c, 0, sizeof(c));
    if (inet_pton(AF_INET, buf, c.addr) == 1) {
        c.family = AF_INET;
        c.prefix = 32;
    } else if (inet_pton(AF_INET6, buf, c.addr) == 1) {
        c.family = AF_INET6;
        c.prefix = 128;
    } else {
        return -EINVAL;
    }
    if (slash != NULL) {
        const char *d = slash + 1;
        size_t digits = strlen(d);
        /* "/", "/+8", "/ 8", "/0008" are all refused: only 1..3 digits. */
        if (digits == 0 || digits > 3)
            return -EINVAL;
        unsigned v = 0;
        for (; *d != '\0'; d++) {
            if (*d < '0' || *d > '9')
                return -EINVAL;
            v = v * 10 + (unsigned)(*d - '0');
        }
        if (v > c.prefix)
            return -EINVAL;
        c.prefix = v;
    }
    /* Peers arrive v4-mapped on a dual-stack socket and are matched as
     * IPv4 (imf_cidr_match); a mapped range written by hand means the
     * same IPv4 range, as long as it keeps the whole mapping prefix. */
    if (c.family == AF_INET6 && c.prefix >= 96 && memcmp(c.addr, v4mapped_prefix, 12) == 0) {
        memmove(c.addr, c.addr + 12, 4);
        memset(c.addr + 4, 0, 12);
        c.family = AF_INET;
        c.prefix -= 96;
    }
    clear_host_bits(c.addr, c.prefix);
    *out = c;
    return 0;
}

int imf_cidr_parse_list(const char *text, struct imf_cidr *out, size_t max, const char **out_bad,
                        size_t *out_bad_len)
{
    size_t n = 0, len;
    const char *p = text, *start;
    while (imf_list_next(&p, &start, &len)) {
        if (n == max || imf_cidr_parse(start, len, &out[n]) < 0) {
            *out_bad = start;
            *out_bad_len = len;
            return -1;
        }
        n++;
    }
    return (int)n;
}

static bool prefix_equal(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned bytes = bits / 8, rest = bits % 8;
    if (memcmp(a, b, bytes) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[bytes] & mask) == (b[bytes] & mask);
}

/* The address bytes of addr and their family, v4-mapped IPv6 as IPv4.
 * False for another family. */
static bool address_of(const struct sockaddr *addr, uint8_t out[16], int *out_family)
{
    memset(out, 0, 16);
    if (addr->sa_family == AF_INET) {
        memcpy(out, &((const struct sockaddr_in *)addr)->sin_addr, 4);
        *out_family = AF_INET;
        return true;
    }
    if (addr->sa_family != AF_INET6)
        return false;
    const uint8_t *b = ((const struct sockaddr_in6 *)addr)->sin6_addr.s6_addr;
    if (memcmp(b, v4mapped_prefix, 12) == 0) {
        memcpy(out, b + 12, 4);
        *out_family = AF_INET;
    } else {
        memcpy(out, b, 16);
        *out_family = AF_INET6;
    }
    return true;
}

bool imf_cidr_match(const struct imf_cidr *list, size_t n, const struct sockaddr *addr)
{
    uint8_t a[16];
    int family;
    if (!address_of(addr, a, &family))
        return false;
    for (size_t i = 0; i < n; i++)
        if (list[i].family == family && prefix_equal(a, list[i].addr, list[i].prefix))
            return true;
    return false;
}

void imf_cidr_format(const struct imf_cidr *c, char *out, size_t out_len)
{
    char host[INET6_ADDRSTRLEN];
    if ((c->family != AF_INET && c->family != AF_INET6) ||
        inet_ntop(c->family, c->addr, host, sizeof(host)) == NULL) {
        snprintf(out, out_len, "?");
        return;
    }
    snprintf(out, out_len, "%s/%u", host, c->prefix);
}

bool imf_netaddr_key(const struct sockaddr *addr, unsigned prefix_v6,
                     uint8_t out_key[IMF_NETADDR_KEY_LEN])
{
    memset(out_key, 0, IMF_NETADDR_KEY_LEN);
    uint8_t a[16];
    int family;
    if (!address_of(addr, a, &family))
        return false;
    if (family == AF_INET) {
        out_key[0] = 4;
        memcpy(out_key + 1, a, 4);
        return true;
    }
    clear_host_bits(a, prefix_v6 > 128 ? 128 : prefix_v6);
    out_key[0] = 6;
    memcpy(out_key + 1, a, 16);
    return true;
}

void imf_format_sockaddr(const struct sockaddr *sa, char *out, size_t out_len)
{
    char host[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        snprintf(out, out_len, "%s:%u", host, (unsigned)ntohs(a->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        snprintf(out, out_len, "[%s]:%u", host, (unsigned)ntohs(a->sin6_port));
    } else {
        snprintf(out, out_len, "?");
    }
}
