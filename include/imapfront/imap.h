/* imap: parsers over one complete command or response line (no I/O). The
 * proxy's policy uses them on the lines the framer delimits. */
#ifndef IMAPFRONT_IMAP_H
#define IMAPFRONT_IMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Commands the proxy treats specially; everything else is IMF_CMD_OTHER. */
enum imf_cmd {
    IMF_CMD_OTHER,
    IMF_CMD_APPEND,
    IMF_CMD_AUTHENTICATE,
    IMF_CMD_CAPABILITY,
    IMF_CMD_COMPRESS,
    IMF_CMD_ID,
    IMF_CMD_IDLE,
    IMF_CMD_LOGIN,
    IMF_CMD_LOGOUT,
    IMF_CMD_NOOP,
    IMF_CMD_STARTTLS,
    IMF_CMD_COUNT
};
extern const char *const imf_cmd_names[IMF_CMD_COUNT];

#define IMF_TAG_MAX 64

/* RFC 9051 tag: 1*<any ASTRING-CHAR except "+">. */
static inline bool imf_imap_tag_char(uint8_t c)
{
    return c > 0x20 && c < 0x7f && strchr("(){%*\"\\+", c) == NULL;
}

/* The length of a line without its LF or CRLF. */
static inline size_t imf_imap_text_len(const uint8_t *line, size_t len)
{
    if (len > 0 && line[len - 1] == '\n')
        len--;
    if (len > 0 && line[len - 1] == '\r')
        len--;
    return len;
}

/* A line a backend must read exactly as the proxy did: no NUL, and no CR
 * but the one before the final LF (an old server may end a line at a bare
 * CR, and a C string ends at NUL: either would let the backend see a
 * command the proxy did not). */
static inline bool imf_imap_line_clean(const uint8_t *line, size_t len)
{
    size_t n = imf_imap_text_len(line, len);
    return memchr(line, '\0', n) == NULL && memchr(line, '\r', n) == NULL;
}

struct imf_imap_command {
    char tag[IMF_TAG_MAX + 1]; /* NUL-terminated copy */
    enum imf_cmd cmd;
    char name[32]; /* upper-cased command name, for logs ("UID FETCH") */
};

/* Parses "tag SP command ..." from the first line of a command. Returns 0,
 * or -EINVAL when the line has no valid tag or command (out->tag is then
 * "*" when no tag could be read, so a BAD can still be addressed). */
int imf_imap_parse_command(const uint8_t *line, size_t len, struct imf_imap_command *out);

enum imf_resp_kind {
    IMF_RESP_UNTAGGED,     /* "* ..." */
    IMF_RESP_CONTINUATION, /* "+ ..." */
    IMF_RESP_TAGGED,       /* "tag OK|NO|BAD ..." */
    IMF_RESP_INVALID,
    IMF_RESP_KIND_COUNT
};

enum imf_resp_status {
    IMF_STATUS_NONE,
    IMF_STATUS_OK,
    IMF_STATUS_NO,
    IMF_STATUS_BAD,
    IMF_STATUS_BYE,
    IMF_STATUS_PREAUTH,
    IMF_STATUS_COUNT
};

struct imf_imap_response {
    enum imf_resp_kind kind;
    enum imf_resp_status status;
    char tag[IMF_TAG_MAX + 1];
};

/* Classifies the first line (or its first bytes) of a response. */
void imf_imap_parse_response(const uint8_t *line, size_t len, struct imf_imap_response *out);

#endif
