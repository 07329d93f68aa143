/* proxy_proto: the PROXY protocol header a load balancer puts before the
 * client's bytes (versions 1 and 2, as HAProxy specifies them). Which peers
 * may send one is a CIDR list of netaddr.h. Pure: no I/O, no allocation. */
#ifndef IMAPFRONT_PROXY_PROTO_H
#define IMAPFRONT_PROXY_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "imapfront/config.h"

enum imf_pp_result {
    IMF_PP_NEED_MORE, /* a valid prefix: read more */
    IMF_PP_DONE,      /* a whole header; *out_len bytes of it */
    IMF_PP_ERROR,     /* not a valid header: *out_error says why */
};

/* The longest header we accept: v1's 107 bytes, or v2 with up to this
 * many bytes of addresses and TLVs. */
#define IMF_PP_MAX 1024

struct imf_pp_info {
    bool local;                  /* LOCAL (v2) or UNKNOWN (v1): the balancer speaks for itself */
    struct sockaddr_storage src; /* the client, unless local */
    struct sockaddr_storage dst;
};

/* Parses the header at the front of data[0..len), of the version(s) the
 * listener expects (IMF_PROXY_PROTOCOL_V1, _V2 or _ANY). */
enum imf_pp_result imf_pp_parse(const uint8_t *data, size_t len, enum imf_proxy_protocol version,
                                struct imf_pp_info *out, size_t *out_len, const char **out_error);

#endif
