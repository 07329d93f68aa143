/* libFuzzer: the PROXY protocol parser and the CIDR list parser.
 * Invariants: a DONE header length is within the input and never more than
 * IMF_PP_MAX; every strict prefix of an input that parses DONE says
 * NEED_MORE (the parser never decides on bytes it has not seen); an
 * extended input gives the same verdict and length once it is DONE or
 * ERROR; a CIDR list that parses matches its own base addresses. */
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "imapfront/netaddr.h"
#include "imapfront/proxy_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    enum imf_proxy_protocol v = (enum imf_proxy_protocol)(1 + data[0] % 3);
    data++;
    size--;
    struct imf_pp_info info;
    size_t len = 0;
    const char *why = NULL;
    enum imf_pp_result r = imf_pp_parse(data, size, v, &info, &len, &why);
    if (r == IMF_PP_ERROR && why == NULL)
        abort();
    if (r == IMF_PP_DONE) {
        if (len == 0 || len > size || len > IMF_PP_MAX)
            abort();
        for (size_t n = 0; n < len; n++) {
            size_t l2;
            if (imf_pp_parse(data, n, v, &info, &l2, &why) != IMF_PP_NEED_MORE)
                abort();
        }
        /* More bytes after the header change nothing. */
        uint8_t *more = malloc(size + 8);
        memcpy(more, data, size);
        memset(more + size, 'x', 8);
        size_t l3;
        if (imf_pp_parse(more, size + 8, v, &info, &l3, &why) != IMF_PP_DONE || l3 != len)
            abort();
        free(more);
    }
    if (r == IMF_PP_ERROR) {
        uint8_t *more = malloc(size + 8);
        memcpy(more, data, size);
        memset(more + size, '\n', 8);
        size_t l3;
        if (imf_pp_parse(more, size + 8, v, &info, &l3, &why) != IMF_PP_ERROR)
            abort();
        free(more);
    }

    /* The same bytes as a CIDR list. */
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    struct imf_cidr list[8];
    const char *bad;
    size_t bad_len;
    int n = imf_cidr_parse_list(text, list, 8, &bad, &bad_len);
    for (int i = 0; i < n; i++) {
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof(ss));
        ss.ss_family = (sa_family_t)list[i].family;
        if (list[i].family == AF_INET)
            memcpy(&((struct sockaddr_in *)&ss)->sin_addr, list[i].addr, 4);
        else
            memcpy(&((struct sockaddr_in6 *)&ss)->sin6_addr, list[i].addr, 16);
        if (!imf_cidr_match(&list[i], 1, (struct sockaddr *)&ss))
            abort();
    }
    if (n < 0 && (bad < text || bad + bad_len > text + size))
        abort();
    free(text);
    return 0;
}
