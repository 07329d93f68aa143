/* imap: see include/imapfront/imap.h. */
#include "imapfront/imap.h"

#include <assert.h>
#include <errno.h>
#include <string.h>
#include <strings.h>

const char *const imf_cmd_names[IMF_CMD_COUNT] = {
    "OTHER", "APPEND", "AUTHENTICATE", "CAPABILITY", "COMPRESS", "ID",
    "IDLE",  "LOGIN",  "LOGOUT",       "NOOP",       "STARTTLS",
};
static_assert(sizeof(imf_cmd_names) / sizeof(imf_cmd_names[0]) == IMF_CMD_COUNT, "cmd names");

/* RFC 9051 tag: 1*<any ASTRING-CHAR except "+">; ASTRING-CHAR excludes
 * SP, CTL, "(", ")", "{", "%", "*", '"', "\\" but allows "]". */
static bool tag_char(uint8_t c)
{
    if (c <= 0x20 || c >= 0x7f)
        return false;
    return strchr("(){%*\"\\+", c) == NULL;
}

static bool atom_char(uint8_t c)
{
    return tag_char(c) || c == '+';
}

int imf_imap_parse_command(const uint8_t *line, size_t len, struct imf_imap_command *out)
{
    memset(out, 0, sizeof(*out));
    out->cmd = IMF_CMD_OTHER;
    size_t i = 0;
    while (i < len && i < IMF_TAG_MAX && tag_char(line[i])) {
        out->tag[i] = (char)line[i];
        i++;
    }
    if (i == 0 || i >= len || line[i] != ' ') {
        strcpy(out->tag, "*");
        return -EINVAL;
    }
    i++;
    size_t n = 0;
    bool uid = false;
    for (;;) {
        size_t start = i;
        while (i < len && atom_char(line[i]))
            i++;
        size_t wlen = i - start;
        if (wlen == 0 || n + wlen + 1 >= sizeof(out->name))
            return out->name[0] != '\0' ? 0 : -EINVAL;
        for (size_t k = 0; k < wlen; k++) {
            uint8_t c = line[start + k];
            out->name[n++] = (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
        }
        out->name[n] = '\0';
        if (!uid && strcmp(out->name, "UID") == 0 && i < len && line[i] == ' ') {
            uid = true;
            out->name[n++] = ' ';
            i++;
            continue;
        }
        break;
    }
    if (!uid) {
        for (int c = 1; c < IMF_CMD_COUNT; c++) {
            if (strcmp(out->name, imf_cmd_names[c]) == 0) {
                out->cmd = (enum imf_cmd)c;
                break;
            }
        }
    }
    return 0;
}

static enum imf_resp_status status_word(const uint8_t *p, size_t len)
{
    static const struct {
        const char *word;
        enum imf_resp_status status;
    } words[] = {
        {"OK", IMF_STATUS_OK},   {"NO", IMF_STATUS_NO},           {"BAD", IMF_STATUS_BAD},
        {"BYE", IMF_STATUS_BYE}, {"PREAUTH", IMF_STATUS_PREAUTH},
    };
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        size_t wl = strlen(words[i].word);
        if (len >= wl && strncasecmp((const char *)p, words[i].word, wl) == 0 &&
            (len == wl || p[wl] == ' ' || p[wl] == '\r' || p[wl] == '\n'))
            return words[i].status;
    }
    return IMF_STATUS_NONE;
}

void imf_imap_parse_response(const uint8_t *line, size_t len, struct imf_imap_response *out)
{
    memset(out, 0, sizeof(*out));
    if (len >= 1 && line[0] == '+') {
        out->kind = IMF_RESP_CONTINUATION;
        return;
    }
    if (len >= 2 && line[0] == '*' && line[1] == ' ') {
        out->kind = IMF_RESP_UNTAGGED;
        out->status = status_word(line + 2, len - 2);
        return;
    }
    size_t i = 0;
    while (i < len && i < IMF_TAG_MAX && tag_char(line[i])) {
        out->tag[i] = (char)line[i];
        i++;
    }
    if (i == 0 || i >= len || line[i] != ' ') {
        out->kind = IMF_RESP_INVALID;
        out->tag[0] = '\0';
        return;
    }
    out->kind = IMF_RESP_TAGGED;
    out->status = status_word(line + i + 1, len - i - 1);
}
