/* json.c - JSON documents for the Lua side (lua/luatrain/json.lua): a strict checking
 * pass, then cJSON, then a flat list of nodes the Lua side turns into tables.
 *
 * cJSON builds the tree: it converts numbers (strtod, correctly rounded) and unescapes
 * strings. On its own it takes more than JSON allows and says only where it stopped, not
 * why: it skips every byte up to 0x20 (NUL included) and a leading byte order mark as
 * whitespace, reads "01", "1." and "-.5" as numbers, passes raw control bytes and invalid
 * UTF-8 through strings, reads a bad "\u12G4" as U+0000, nests to 1000, and reads a
 * number's first 63 characters only. So a checking pass runs first. It accepts exactly
 * RFC 8259 JSON, strings valid UTF-8 with no lone surrogate escape, nesting at most
 * LT_JSON_MAX_DEPTH containers, number literals of at most 63 characters, and names the
 * line, column and what was expected at the first fault. cJSON then only sees documents it
 * parses, and where it stops must be where the check ended (a disagreement is an internal
 * error, never a wrong value).
 *
 * The pass also records, per string token in document order, where it starts and its
 * decoded length: cJSON's strings are NUL-terminated, but "\u0000" is a valid character,
 * and Lua's duplicate-key message points at the key. Flattening walks cJSON's tree in the
 * same (document) order, so the n-th string node takes the n-th record. */
#include <cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/internal.h"
#include "lt_io.h"

/* cJSON copies at most this many characters of a number literal before strtod. */
enum { JSON_NUMBER_MAX = 63 };
/* Buffers above this many entries are freed by lt_json_doc_clear rather than kept for the
   next document, so one big file does not pin its node list. */
enum { JSON_KEEP_MAX = 1 << 16 };

typedef struct json_str {
    int64_t pos; /* byte offset of the opening quote */
    int64_t len; /* decoded length in bytes */
} json_str;

struct lt_json_doc {
    cJSON *root;
    lt_json_node *nodes; /* (node_count), pre-order; capacity node_cap */
    int64_t node_count, node_cap;
    json_str *strs; /* (str_count), document order; capacity str_cap */
    int64_t str_count, str_cap;
};

/* The checking pass over s[0..n). */
typedef struct json_check {
    const unsigned char *s;
    size_t n;
    size_t i;        /* next byte */
    const char *name;
    lt_json_doc *d;
    int64_t values;  /* values seen: the number of nodes cJSON's tree will have */
} json_check;

/* "NAME:LINE:COL: message", LINE and COL 1-based at byte offset `at` (columns count
   bytes). */
static int check_fail(const json_check *c, size_t at, const char *fmt, ...) LT_PRINTF(3, 4);
static int check_fail(const json_check *c, size_t at, const char *fmt, ...) {
    long long line = 1;
    size_t line_start = 0;
    for (size_t k = 0; k < at && k < c->n; k++) {
        if (c->s[k] == '\n') {
            line++;
            line_start = k + 1;
        }
    }
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return lt_fail(LT_ERR_FORMAT, "%s:%lld:%lld: %s", c->name, line,
                   (long long)(at - line_start + 1), msg);
}

/* The byte at i for a message: 'x' when printable ASCII, else byte 0xNN. */
static const char *describe(const json_check *c, size_t i, char *buf, size_t len) {
    unsigned char ch = c->s[i];
    if (ch >= 0x20 && ch < 0x7f)
        snprintf(buf, len, "'%c'", ch);
    else
        snprintf(buf, len, "byte 0x%02x", ch);
    return buf;
}

/* "expected X" at byte i, naming what is there instead or saying the input ended. */
static int expected(const json_check *c, size_t i, const char *what) {
    if (i >= c->n) return check_fail(c, i, "unexpected end of input (expected %s)", what);
    char b[16];
    return check_fail(c, i, "expected %s, found %s", what, describe(c, i, b, sizeof b));
}

static void skip_ws(json_check *c) {
    while (c->i < c->n) {
        unsigned char ch = c->s[c->i];
        if (ch != ' ' && ch != '\n' && ch != '\r' && ch != '\t') break;
        c->i++;
    }
}

/* Length of the UTF-8 sequence at s[0..n) (2 to 4), or 0 when it is not a valid one: no
   overlong forms, no surrogates (U+D800-DFFF), nothing above U+10FFFF. s[0] >= 0x80. */
static int utf8_seq(const unsigned char *s, size_t n) {
    unsigned ch = s[0];
    int len;
    unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (ch >= 0xc2 && ch <= 0xdf) {
        len = 2;
    } else if (ch >= 0xe0 && ch <= 0xef) {
        len = 3;
        if (ch == 0xe0) lo = 0xa0;
        if (ch == 0xed) hi = 0x9f;
    } else if (ch >= 0xf0 && ch <= 0xf4) {
        len = 4;
        if (ch == 0xf0) lo = 0x90;
        if (ch == 0xf4) hi = 0x8f;
    } else {
        return 0;
    }
    if (n < (size_t)len || s[1] < lo || s[1] > hi) return 0;
    for (int k = 2; k < len; k++)
        if ((s[k] & 0xc0) != 0x80) return 0;
    return len;
}

static int hex_digit(unsigned char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* The code unit of "\uXXXX" at s[i..], or -1 when it is not one. */
static long hex4_at(const json_check *c, size_t i) {
    if (c->n - i < 6 || c->s[i] != '\\' || c->s[i + 1] != 'u') return -1;
    long v = 0;
    for (int k = 2; k < 6; k++) {
        int h = hex_digit(c->s[i + k]);
        if (h < 0) return -1;
        v = v * 16 + h;
    }
    return v;
}

static int push_str(json_check *c, size_t pos, int64_t len) {
    lt_json_doc *d = c->d;
    if (d->str_count == d->str_cap) {
        int64_t cap = d->str_cap ? 2 * d->str_cap : 64;
        json_str *grown = realloc(d->strs, (size_t)cap * sizeof *grown);
        if (!grown) return lt_fail(LT_ERR_NOMEM, "%s: out of memory parsing JSON", c->name);
        d->strs = grown;
        d->str_cap = cap;
    }
    d->strs[d->str_count++] = (json_str){(int64_t)pos, len};
    return LT_OK;
}

/* A string token at the opening quote. */
static int check_string(json_check *c) {
    const unsigned char *s = c->s;
    size_t n = c->n, start = c->i, i = c->i + 1;
    int64_t len = 0;
    for (;;) {
        /* the common run: printable ASCII with nothing to unescape */
        size_t run = i;
        while (i < n && s[i] >= 0x20 && s[i] < 0x80 && s[i] != '"' && s[i] != '\\') i++;
        len += (int64_t)(i - run);
        if (i >= n) return check_fail(c, n, "unterminated string");
        unsigned char ch = s[i];
        if (ch == '"') break;
        if (ch == '\\') {
            if (i + 1 >= n) return check_fail(c, n, "unterminated string");
            unsigned char e = s[i + 1];
            if (e == 'u') {
                long cp = hex4_at(c, i);
                if (cp < 0) return check_fail(c, i, "bad \\u escape (expected 4 hex digits)");
                if (cp >= 0xdc00 && cp <= 0xdfff)
                    return check_fail(c, i, "lone surrogate \\u%04lX (a low surrogate with no "
                                      "high one before it)", cp);
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    long lo = hex4_at(c, i + 6);
                    if (lo < 0xdc00 || lo > 0xdfff)
                        return check_fail(c, i, "lone surrogate \\u%04lX (a high surrogate not "
                                          "followed by a low one)", cp);
                    len += 4;
                    i += 12;
                } else {
                    len += cp < 0x80 ? 1 : cp < 0x800 ? 2 : 3;
                    i += 6;
                }
            } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' ||
                       e == 'r' || e == 't') {
                len++;
                i += 2;
            } else {
                if (e >= 0x20 && e < 0x7f) return check_fail(c, i, "bad escape \\%c", e);
                return check_fail(c, i, "bad escape: \\ then byte 0x%02x", e);
            }
        } else if (ch < 0x20) {
            return check_fail(c, i, "control character 0x%02x in string (write it as an escape)",
                              ch);
        } else {
            int k = utf8_seq(s + i, n - i);
            if (!k) return check_fail(c, i, "invalid UTF-8 in string (byte 0x%02x)", ch);
            len += k;
            i += (size_t)k;
        }
    }
    c->i = i + 1;
    return push_str(c, start, len);
}

static int is_digit(unsigned char ch) { return ch >= '0' && ch <= '9'; }

static int is_number_char(unsigned char ch) {
    return is_digit(ch) || ch == '-' || ch == '+' || ch == '.' || ch == 'e' || ch == 'E';
}

/* A number token at '-' or a digit: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static int check_number(json_check *c) {
    const unsigned char *s = c->s;
    size_t n = c->n, start = c->i, i = c->i;
    /* the run of number characters, for messages */
    size_t run = start;
    while (run < n && is_number_char(s[run])) run++;
    int shown = (int)(run - start < 40 ? run - start : 40);
    const char *dots = run - start > 40 ? "..." : "";
    if (i < n && s[i] == '-') i++;
    if (i < n && s[i] == '0') {
        i++;
        if (i < n && is_digit(s[i]))
            return check_fail(c, start, "leading zero in number '%.*s%s'", shown,
                              (const char *)s + start, dots);
    } else if (i < n && is_digit(s[i])) {
        while (i < n && is_digit(s[i])) i++;
    } else {
        goto bad;
    }
    if (i < n && s[i] == '.') {
        i++;
        if (i >= n || !is_digit(s[i])) goto bad;
        while (i < n && is_digit(s[i])) i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= n || !is_digit(s[i])) goto bad;
        while (i < n && is_digit(s[i])) i++;
    }
    /* number characters right after a complete literal make it a malformed one ("1.5.3",
       "1-2"), not two tokens */
    if (i < run) goto bad;
    if (i - start > JSON_NUMBER_MAX)
        return check_fail(c, start, "number '%.*s%s' has %zu characters; at most %d are read",
                          shown, (const char *)s + start, dots, i - start, JSON_NUMBER_MAX);
    c->i = i;
    return LT_OK;
bad:
    return check_fail(c, start, "bad number '%.*s%s'", shown, (const char *)s + start, dots);
}

static int check_value(json_check *c, int depth);

/* An array or object at its opening bracket, inside `depth` containers. */
static int check_container(json_check *c, int depth) {
    int object = c->s[c->i] == '{';
    char close = object ? '}' : ']';
    const char *sep = object ? "',' or '}' in object" : "',' or ']' in array";
    if (depth >= LT_JSON_MAX_DEPTH)
        return check_fail(c, c->i, "nesting deeper than %d", LT_JSON_MAX_DEPTH);
    c->i++;
    skip_ws(c);
    if (c->i < c->n && c->s[c->i] == close) {
        c->i++;
        return LT_OK;
    }
    for (;;) {
        if (object) {
            if (c->i >= c->n || c->s[c->i] != '"') return expected(c, c->i, "a string key");
            size_t key = c->i;
            LT_TRY(check_string(c));
            size_t klen = c->i - key;
            skip_ws(c);
            if (c->i >= c->n || c->s[c->i] != ':') {
                /* the key as written, shortened */
                char what[128];
                snprintf(what, sizeof what, "':' after key %.*s%s", (int)(klen < 64 ? klen : 64),
                         (const char *)c->s + key, klen > 64 ? "...\"" : "");
                return expected(c, c->i, what);
            }
            c->i++;
        }
        LT_TRY(check_value(c, depth + 1));
        skip_ws(c);
        if (c->i >= c->n) return expected(c, c->i, sep);
        if (c->s[c->i] == close) {
            c->i++;
            return LT_OK;
        }
        if (c->s[c->i] != ',') return expected(c, c->i, sep);
        c->i++;
        skip_ws(c);
    }
}

static int check_literal(json_check *c, const char *word, size_t len) {
    if (c->n - c->i < len || memcmp(c->s + c->i, word, len) != 0)
        return expected(c, c->i, "a value");
    c->i += len;
    return LT_OK;
}

/* Any value, after optional whitespace, inside `depth` containers. */
static int check_value(json_check *c, int depth) {
    skip_ws(c);
    if (c->i >= c->n) return check_fail(c, c->i, "unexpected end of input");
    c->values++;
    switch (c->s[c->i]) {
    case '{':
    case '[': return check_container(c, depth);
    case '"': return check_string(c);
    case 't': return check_literal(c, "true", 4);
    case 'f': return check_literal(c, "false", 5);
    case 'n': return check_literal(c, "null", 4);
    default:
        if (c->s[c->i] == '-' || is_digit(c->s[c->i])) return check_number(c);
        return expected(c, c->i, "a value");
    }
}

/* ---- flattening cJSON's tree ---------------------------------------------------------- */

typedef struct json_flat {
    lt_json_doc *d;
    const char *name;
    int64_t next_node, next_str;
} json_flat;

static int flat_str(json_flat *f, const char *s, int64_t *len, int64_t *pos) {
    if (f->next_str >= f->d->str_count || !s)
        return LT_INTERNAL("%s: cJSON's strings and the check's disagree", f->name);
    const json_str *r = &f->d->strs[f->next_str++];
    /* cJSON writes the decoded bytes and a NUL after them */
    if (s[r->len] != '\0')
        return LT_INTERNAL("%s: cJSON's string at byte %lld has a length other than %lld",
                           f->name, (long long)r->pos, (long long)r->len);
    *len = r->len;
    if (pos) *pos = r->pos;
    return LT_OK;
}

/* Append `item` and, after it, its children (pre-order). `in_object`: item is a member. */
static int flatten(json_flat *f, const cJSON *item, int in_object) {
    if (f->next_node >= f->d->node_count)
        return LT_INTERNAL("%s: cJSON's tree has more values than the check counted", f->name);
    lt_json_node *node = &f->d->nodes[f->next_node++];
    memset(node, 0, sizeof *node);
    node->key_pos = -1;
    if (in_object) {
        node->key = item->string;
        LT_TRY(flat_str(f, item->string, &node->key_len, &node->key_pos));
    }
    switch (item->type & 0xff) {
    case cJSON_NULL: node->type = LT_JSON_NULL; break;
    case cJSON_False: node->type = LT_JSON_FALSE; break;
    case cJSON_True: node->type = LT_JSON_TRUE; break;
    case cJSON_Number:
        node->type = LT_JSON_NUMBER;
        node->number = item->valuedouble;
        break;
    case cJSON_String:
        node->type = LT_JSON_STRING;
        node->str = item->valuestring;
        LT_TRY(flat_str(f, item->valuestring, &node->len, NULL));
        break;
    case cJSON_Array:
    case cJSON_Object: {
        int object = (item->type & 0xff) == cJSON_Object;
        node->type = object ? LT_JSON_OBJECT : LT_JSON_ARRAY;
        int64_t count = 0;
        for (const cJSON *ch = item->child; ch; ch = ch->next) {
            LT_TRY(flatten(f, ch, object));
            count++;
        }
        node->len = count;
        break;
    }
    default: return LT_INTERNAL("%s: cJSON node of type %d", f->name, item->type);
    }
    return LT_OK;
}

/* ---- the public functions ------------------------------------------------------------- */

int lt_json_doc_new(lt_json_doc **out) {
    if (!out) return lt_fail(LT_ERR_ARG, "json_doc_new: NULL argument");
    *out = calloc(1, sizeof **out);
    if (!*out) return lt_fail(LT_ERR_NOMEM, "json_doc_new: out of memory");
    return LT_OK;
}

void lt_json_doc_clear(lt_json_doc *d) {
    if (!d) return;
    cJSON_Delete(d->root);
    d->root = NULL;
    d->node_count = d->str_count = 0;
    if (d->node_cap > JSON_KEEP_MAX) {
        free(d->nodes);
        d->nodes = NULL;
        d->node_cap = 0;
    }
    if (d->str_cap > JSON_KEEP_MAX) {
        free(d->strs);
        d->strs = NULL;
        d->str_cap = 0;
    }
}

void lt_json_doc_free(lt_json_doc *d) {
    if (!d) return;
    cJSON_Delete(d->root);
    free(d->nodes);
    free(d->strs);
    free(d);
}

int lt_json_parse(lt_json_doc *d, const char *text, int64_t len, const char *name,
                  const lt_json_node **nodes, int64_t *count) {
    if (!name) name = "JSON";
    if (!d || (!text && len > 0) || len < 0 || !nodes || !count)
        return lt_fail(LT_ERR_ARG, "%s: json_parse: NULL argument or negative length", name);
    *nodes = NULL;
    *count = 0;
    lt_json_doc_clear(d);

    json_check c = {(const unsigned char *)text, (size_t)len, 0, name, d, 0};
    if (c.n >= 3 && memcmp(c.s, "\xef\xbb\xbf", 3) == 0)
        return check_fail(&c, 0, "UTF-8 byte order mark before the document (JSON text "
                          "must not start with one)");
    LT_TRY(check_value(&c, 0));
    size_t end = c.i;
    skip_ws(&c);
    if (c.i < c.n) {
        char b[16];
        return check_fail(&c, c.i, "trailing characters after the document (%s)",
                          describe(&c, c.i, b, sizeof b));
    }

    if (c.values > d->node_cap) {
        lt_json_node *grown = realloc(d->nodes, (size_t)c.values * sizeof *grown);
        if (!grown) return lt_fail(LT_ERR_NOMEM, "%s: out of memory parsing JSON", name);
        d->nodes = grown;
        d->node_cap = c.values;
    }
    d->node_count = c.values;

    const char *stop = NULL;
    d->root = cJSON_ParseWithLengthOpts(text, (size_t)len, &stop, 0);
    if (!d->root) {
        /* the check accepted it, so cJSON ran out of memory, or the two disagree */
        size_t at = stop ? (size_t)(stop - text) : 0;
        d->node_count = d->str_count = 0;
        return lt_fail(LT_ERR_NOMEM, "%s: cJSON could not build the document (stopped at "
                       "byte %zu): out of memory?", name, at);
    }
    if (stop != text + end) {
        lt_json_doc_clear(d);
        return LT_INTERNAL("%s: cJSON stopped at byte %lld, the check at byte %zu", name,
                           stop ? (long long)(stop - text) : -1LL, end);
    }
    json_flat f = {d, name, 0, 0};
    int st = flatten(&f, d->root, 0);
    if (st == LT_OK && (f.next_node != d->node_count || f.next_str != d->str_count))
        st = LT_INTERNAL("%s: cJSON's tree has %lld values and %lld strings, the check %lld "
                         "and %lld", name, (long long)f.next_node, (long long)f.next_str,
                         (long long)d->node_count, (long long)d->str_count);
    if (st != LT_OK) {
        lt_json_doc_clear(d);
        return st;
    }
    *nodes = d->nodes;
    *count = d->node_count;
    return LT_OK;
}
