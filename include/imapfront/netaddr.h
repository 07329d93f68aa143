/* netaddr: IP addresses and CIDR ranges, without I/O or allocation.
 * Parses "10.0.0.0/8, 192.0.2.7 2001:db8::/32" lists (the config's
 * proxy_protocol_from, allow_from, trusted_networks), matches a peer
 * against them, keys an address the way the per-IP limit and the login
 * throttle count it, and formats addresses for logs. */
#ifndef IMAPFRONT_NETADDR_H
#define IMAPFRONT_NETADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Ranges a list may hold; more is a config error. */
#define IMF_CIDR_MAX 32

/* One range: the first prefix bits of addr. An IPv4 range keeps its four
 * bytes at the front of addr; the bytes past the prefix are zero. */
struct imf_cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    unsigned prefix; /* 0..32 or 0..128 */
};

/* Parses one range, "ADDR" (a /32 or /128) or "ADDR/PREFIX", into *out.
 * Returns 0, or -EINVAL for garbage, a prefix longer than the family's or
 * not written in decimal digits. Host bits past the prefix are cleared, so
 * "10.1.2.3/8" is the range 10.0.0.0/8. An IPv4-mapped IPv6 range
 * ("::ffff:10.0.0.0/104") becomes the IPv4 range it names. */
int imf_cidr_parse(const char *text, size_t len, struct imf_cidr *out);

/* Parses a list of ranges separated by commas and/or spaces into out[0..max).
 * Returns the count (0 for an empty list), or -1 with *out_bad pointing at
 * the bad entry inside text (its length in *out_bad_len); an entry past max
 * is bad. */
int imf_cidr_parse_list(const char *text, struct imf_cidr *out, size_t max, const char **out_bad,
                        size_t *out_bad_len);

/* True when addr (AF_INET or AF_INET6) is inside one of list[0..n). An
 * IPv4-mapped IPv6 address matches IPv4 ranges; another family nothing. */
bool imf_cidr_match(const struct imf_cidr *list, size_t n, const struct sockaddr *addr);

/* Writes "10.0.0.0/8" or "2001:db8::/32" into out (at least
 * IMF_CIDR_TEXT_MAX bytes for it all to fit; cut otherwise). */
#define IMF_CIDR_TEXT_MAX 64
void imf_cidr_format(const struct imf_cidr *c, char *out, size_t out_len);

/* The key under which a client address is counted: a family byte (4 or 6)
 * then the address; IPv4 (also IPv4-mapped IPv6) whole, IPv6 cut to its
 * first prefix_v6 bits (clamped to 0..128) with the rest zero. Returns false
 * (key all zero) for another family. */
#define IMF_NETADDR_KEY_LEN 17
bool imf_netaddr_key(const struct sockaddr *addr, unsigned prefix_v6,
                     uint8_t out_key[IMF_NETADDR_KEY_LEN]);

/* "192.0.2.1:993", "[2001:db8::1]:993", or "?" for another family. */
void imf_format_sockaddr(const struct sockaddr *sa, char *out, size_t out_len);

#endif
