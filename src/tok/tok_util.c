/* tok_util.c - the tokenizer's building blocks: growable ids/text, UTF-8 with WHATWG-style
 * replacement, hash maps for the vocabulary and the merges, and regular expressions with the
 * reference's (Oniguruma's) meaning run by PCRE2. */
#define _GNU_SOURCE /* memmem */
#include <stdio.h>
#include <stdlib.h>

#include "tok/tok_internal.h"

/* ---- growable outputs -------------------------------------------------------------- */

void lt_ids_free(lt_ids *v) {
    if (!v) return;
    free(v->data);
    v->data = NULL;
    v->len = v->cap = 0;
}

void lt_text_free(lt_text *s) {
    if (!s) return;
    free(s->data);
    s->data = NULL;
    s->len = s->cap = 0;
}

/* Room for `extra` more bytes plus the terminating NUL. */
int tok_text_reserve(lt_text *s, int64_t extra) {
    if (s->len < 0 || s->cap < 0 || (s->cap && !s->data) || s->len > s->cap)
        return lt_fail(LT_ERR_ARG, "lt_text: corrupt buffer (len %lld, cap %lld)",
                       (long long)s->len, (long long)s->cap);
    if (extra < 0 || extra > INT64_MAX / 4 - s->len)
        return lt_fail(LT_ERR_RANGE, "lt_text: %lld more bytes do not fit", (long long)extra);
    int64_t need = s->len + extra + 1;
    if (need <= s->cap) return LT_OK;
    int64_t cap = s->cap ? s->cap : 64;
    while (cap < need) cap *= 2;
    char *grown = realloc(s->data, (size_t)cap);
    if (!grown)
        return lt_fail(LT_ERR_NOMEM, "out of memory for %lld bytes of text", (long long)cap);
    s->data = grown;
    s->cap = cap;
    s->data[s->len] = '\0';
    return LT_OK;
}

int tok_text_put(lt_text *s, const void *p, int64_t n) {
    if (s->len + n + 1 > s->cap || !s->data) LT_TRY(tok_text_reserve(s, n));
    if (n) memcpy(s->data + s->len, p, (size_t)n);
    s->len += n;
    s->data[s->len] = '\0';
    return LT_OK;
}

int tok_ids_reserve(lt_ids *v, int64_t extra) {
    if (v->len < 0 || v->cap < 0 || (v->cap && !v->data) || v->len > v->cap)
        return lt_fail(LT_ERR_ARG, "lt_ids: corrupt buffer (len %lld, cap %lld)", (long long)v->len,
                       (long long)v->cap);
    if (extra < 0 || extra > INT64_MAX / 16 - v->len)
        return lt_fail(LT_ERR_RANGE, "lt_ids: %lld more ids do not fit", (long long)extra);
    int64_t need = v->len + extra;
    if (need <= v->cap) return LT_OK;
    int64_t cap = v->cap ? v->cap : 16;
    while (cap < need) cap *= 2;
    int32_t *grown = realloc(v->data, (size_t)cap * sizeof *grown);
    if (!grown) return lt_fail(LT_ERR_NOMEM, "out of memory for %lld token ids", (long long)cap);
    v->data = grown;
    v->cap = cap;
    return LT_OK;
}

int tok_ids_put(lt_ids *v, const int32_t *ids, int64_t n) {
    if (v->len + n > v->cap) LT_TRY(tok_ids_reserve(v, n));
    if (n) memcpy(v->data + v->len, ids, (size_t)n * sizeof *ids);
    v->len += n;
    return LT_OK;
}

/* ---- UTF-8 ------------------------------------------------------------------------- */

int tok_utf8_seq(const unsigned char *s, int64_t n, int64_t i, int *bad) {
    unsigned c = s[i];
    if (c < 0x80) return 1;
    int len;
    unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0) lo = 0xa0; /* no overlongs */
        if (c == 0xed) hi = 0x9f; /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f; /* nothing above U+10FFFF */
    } else {
        *bad = 1;
        return 0;
    }
    int k = 1;
    for (; k < len && i + k < n; k++) {
        unsigned b = s[i + k];
        if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xbf)) break;
    }
    if (k == len) return len;
    *bad = k;
    return 0;
}

int64_t tok_utf8_valid_prefix(const unsigned char *s, int64_t n) {
    int64_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int bad;
        int len = tok_utf8_seq(s, n, i, &bad);
        if (!len) return i;
        i += len;
    }
    return n;
}

static const char REPLACEMENT[3] = {(char)0xef, (char)0xbf, (char)0xbd}; /* U+FFFD */

int tok_utf8_sanitize(lt_text *out, const unsigned char *s, int64_t n) {
    LT_TRY(tok_text_reserve(out, n + n / 2));
    int64_t i = 0, run = 0; /* s[run..i) is valid and not yet copied */
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int bad;
        int len = tok_utf8_seq(s, n, i, &bad);
        if (len) {
            i += len;
            continue;
        }
        LT_TRY(tok_text_put(out, s + run, i - run));
        LT_TRY(tok_text_put(out, REPLACEMENT, 3));
        i += bad;
        run = i;
    }
    return tok_text_put(out, s + run, n - run);
}

int tok_utf8_lossy(lt_text *out, const unsigned char *s, int64_t n, int final, int64_t *used) {
    int64_t i = 0, run = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int bad;
        int len = tok_utf8_seq(s, n, i, &bad);
        if (len) {
            i += len;
            continue;
        }
        if (!final && i + bad == n) break; /* may still be completed by later bytes */
        LT_TRY(tok_text_put(out, s + run, i - run));
        LT_TRY(tok_text_put(out, REPLACEMENT, 3));
        i += bad;
        run = i;
    }
    LT_TRY(tok_text_put(out, s + run, i - run));
    *used = i;
    return LT_OK;
}

int tok_utf8_encode(uint32_t cp, char *buf) {
    unsigned char *b = (unsigned char *)buf;
    if (cp < 0x80) {
        b[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        b[0] = (unsigned char)(0xc0 | cp >> 6);
        b[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        b[0] = (unsigned char)(0xe0 | cp >> 12);
        b[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
        b[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    b[0] = (unsigned char)(0xf0 | cp >> 18);
    b[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
    b[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
    b[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

int tok_is_white_space(uint32_t cp) {
    if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0d);
    if (cp < 0x85) return 0;
    return cp == 0x85 || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) ||
           cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

/* ---- hashing ----------------------------------------------------------------------- */

uint64_t tok_hash(const void *p, int64_t n) {
    const unsigned char *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ ((uint64_t)n * 0xc2b2ae3d27d4eb4fULL);
    while (n >= 8) {
        uint64_t k;
        memcpy(&k, s, 8);
        h = (h ^ (k * 0xbf58476d1ce4e5b9ULL)) * 0x94d049bb133111ebULL;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    if (n > 0) {
        uint64_t k = 0;
        memcpy(&k, s, (size_t)n);
        h = (h ^ (k * 0xbf58476d1ce4e5b9ULL)) * 0x94d049bb133111ebULL;
    }
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ULL;
    h ^= h >> 32;
    return h;
}

/* Slots for `expected` keys at a load factor of at most 1/2. */
static uint64_t table_size(int64_t expected) {
    uint64_t cap = 16;
    while (cap < (uint64_t)expected * 2) cap *= 2;
    return cap;
}

int tok_strmap_init(tok_strmap *m, int64_t expected) {
    memset(m, 0, sizeof *m);
    uint64_t cap = table_size(expected);
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->slots)
        return lt_fail(LT_ERR_NOMEM, "out of memory for a %llu-slot table",
                       (unsigned long long)cap);
    for (uint64_t i = 0; i < cap; i++) m->slots[i].value = -1;
    m->mask = cap - 1;
    return LT_OK;
}

void tok_strmap_free(tok_strmap *m) {
    free(m->slots);
    lt_text_free(&m->pool);
    memset(m, 0, sizeof *m);
}

static int strmap_grow(tok_strmap *m) {
    uint64_t cap = (m->mask + 1) * 2;
    tok_strmap_slot *slots = malloc(cap * sizeof *slots);
    if (!slots)
        return lt_fail(LT_ERR_NOMEM, "out of memory for a %llu-slot table",
                       (unsigned long long)cap);
    for (uint64_t i = 0; i < cap; i++) slots[i].value = -1;
    for (uint64_t i = 0; i <= m->mask; i++) {
        tok_strmap_slot s = m->slots[i];
        if (s.value < 0) continue;
        uint64_t j = s.hash & (cap - 1);
        while (slots[j].value >= 0) j = (j + 1) & (cap - 1);
        slots[j] = s;
    }
    free(m->slots);
    m->slots = slots;
    m->mask = cap - 1;
    return LT_OK;
}

int tok_strmap_insert(tok_strmap *m, const char *key, int64_t len, int32_t value, int32_t *existing,
                      uint32_t *off) {
    *existing = -1;
    if (len < 0 || len > UINT32_MAX || m->pool.len + len > (int64_t)UINT32_MAX)
        return lt_fail(LT_ERR_RANGE, "token strings exceed 4 GiB");
    if ((uint64_t)(m->count + 1) * 2 > m->mask + 1) LT_TRY(strmap_grow(m));
    uint32_t h = (uint32_t)tok_hash(key, len);
    uint64_t i = h & m->mask;
    for (;; i = (i + 1) & m->mask) {
        tok_strmap_slot *s = &m->slots[i];
        if (s->value < 0) break;
        if (s->hash == h && s->len == (uint32_t)len &&
            memcmp(m->pool.data + s->off, key, (size_t)len) == 0) {
            *existing = s->value;
            if (off) *off = s->off;
            return LT_OK;
        }
    }
    uint32_t at = (uint32_t)m->pool.len;
    LT_TRY(tok_text_put(&m->pool, key, len));
    /* Each key is stored NUL-terminated so that it can be handed out as a C string. */
    LT_TRY(tok_text_putc(&m->pool, '\0'));
    m->slots[i] = (tok_strmap_slot){.hash = h, .value = value, .off = at, .len = (uint32_t)len};
    m->count++;
    if (off) *off = at;
    return LT_OK;
}

int32_t tok_strmap_get(const tok_strmap *m, const char *key, int64_t len) {
    if (!m->slots) return -1;
    uint32_t h = (uint32_t)tok_hash(key, len);
    for (uint64_t i = h & m->mask;; i = (i + 1) & m->mask) {
        const tok_strmap_slot *s = &m->slots[i];
        if (s->value < 0) return -1;
        if (s->hash == h && s->len == (uint64_t)len &&
            memcmp(m->pool.data + s->off, key, (size_t)len) == 0)
            return s->value;
    }
}

int tok_pairmap_init(tok_pairmap *m, int64_t expected) {
    memset(m, 0, sizeof *m);
    uint64_t cap = table_size(expected);
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->slots)
        return lt_fail(LT_ERR_NOMEM, "out of memory for a %llu-slot merge table",
                       (unsigned long long)cap);
    for (uint64_t i = 0; i < cap; i++) m->slots[i].key = UINT64_MAX;
    m->mask = cap - 1;
    return LT_OK;
}

void tok_pairmap_free(tok_pairmap *m) {
    free(m->slots);
    memset(m, 0, sizeof *m);
}

void tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t new_id) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint64_t i = tok_pair_mix(key) & m->mask;
    while (m->slots[i].key != UINT64_MAX && m->slots[i].key != key) i = (i + 1) & m->mask;
    if (m->slots[i].key == UINT64_MAX) m->count++;
    m->slots[i] = (tok_pair_slot){.key = key, .rank = rank, .new_id = new_id};
}

/* ---- regular expressions ----------------------------------------------------------- */

/* Oniguruma's \s in UTF-8 (what the reference's SysRegex uses): 9-D, space, U+0085 and the
   Z categories. PCRE2's \s also takes U+180E, so the class is spelled out. */
#define ONIG_SPACE                                                                                 \
    "\\x{9}-\\x{D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"             \
    "\\x{202F}\\x{205F}\\x{3000}"
/* Its complement as ranges, for \S inside a class. */
#define ONIG_NONSPACE                                                                              \
    "\\x{0}-\\x{8}\\x{E}-\\x{1F}\\x{21}-\\x{84}\\x{86}-\\x{9F}\\x{A1}-\\x{167F}"                   \
    "\\x{1681}-\\x{1FFF}\\x{200B}-\\x{2027}\\x{202A}-\\x{202E}\\x{2030}-\\x{205E}"                 \
    "\\x{2060}-\\x{2FFF}\\x{3001}-\\x{10FFFF}"
/* Oniguruma's \h is a hexadecimal digit (PCRE2's is horizontal space). */
#define ONIG_HEX "0-9a-fA-F"
#define ONIG_NONHEX "\\x{0}-\\x{2F}\\x{3A}-\\x{40}\\x{47}-\\x{60}\\x{67}-\\x{10FFFF}"

/* Oniguruma's \w: Letter, Mark, Number, Connector_Punctuation (PCRE2 10.42's is L, N, _). */
#define ONIG_WORD "\\p{L}\\p{M}\\p{N}\\p{Pc}"

/* Rewrite the escapes whose meaning differs between Oniguruma and PCRE2. \W inside a class
   stays PCRE2's (it differs only on marks and connector punctuation other than _).
   Categories (\p{..}, \d) need nothing here: tok_unicode.c evens out the Unicode versions
   on the subject. */
static int onig_to_pcre2(const char *p, int64_t n, lt_text *out) {
    int in_class = 0;
    int64_t i = 0;
    while (i < n) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char e = p[i + 1];
            const char *rep = NULL;
            switch (e) {
            case 's': rep = in_class ? ONIG_SPACE : "[" ONIG_SPACE "]"; break;
            case 'S': rep = in_class ? ONIG_NONSPACE : "[^" ONIG_SPACE "]"; break;
            case 'h': rep = in_class ? ONIG_HEX : "[" ONIG_HEX "]"; break;
            case 'H': rep = in_class ? ONIG_NONHEX : "[^" ONIG_HEX "]"; break;
            case 'w': rep = in_class ? ONIG_WORD : "[" ONIG_WORD "]"; break;
            case 'W': rep = in_class ? "\\W" : "[^" ONIG_WORD "]"; break;
            default: break;
            }
            if (rep) {
                LT_TRY(tok_text_put(out, rep, (int64_t)strlen(rep)));
                i += 2;
            } else if (e == 'Q') {
                /* \Q...\E quotes: copy through verbatim */
                int64_t j = i + 2;
                while (j < n && !(p[j] == '\\' && j + 1 < n && p[j + 1] == 'E')) j++;
                int64_t stop = j < n ? j + 2 : n;
                LT_TRY(tok_text_put(out, p + i, stop - i));
                i = stop;
            } else {
                int clen = tok_utf8_len((unsigned char)e);
                if (i + 1 + clen > n) clen = (int)(n - i - 1);
                LT_TRY(tok_text_put(out, p + i, 1 + clen));
                i += 1 + clen;
            }
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            LT_TRY(tok_text_putc(out, c));
            i++;
            if (i < n && p[i] == '^') LT_TRY(tok_text_putc(out, p[i++]));
            if (i < n && p[i] == ']') LT_TRY(tok_text_putc(out, p[i++])); /* a literal ] */
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && p[i + 1] == ':') {
            /* a POSIX class [:alpha:] */
            int64_t j = i + 2;
            while (j + 1 < n && !(p[j] == ':' && p[j + 1] == ']')) j++;
            int64_t stop = j + 1 < n ? j + 2 : n;
            LT_TRY(tok_text_put(out, p + i, stop - i));
            i = stop;
            continue;
        }
        if (in_class && c == ']') in_class = 0;
        LT_TRY(tok_text_putc(out, c));
        i++;
    }
    return LT_OK;
}

void tok_regex_free(tok_regex *re) {
    if (re->code) pcre2_code_free(re->code);
    free(re->literal);
    memset(re, 0, sizeof *re);
}

static int compile_one(pcre2_code **out, const lt_text *src, int literal, const char *pattern,
                       int64_t len, const char *path, const char *where) {
    int err = 0;
    PCRE2_SIZE off = 0;
    uint32_t opts = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP;
    *out = pcre2_compile((PCRE2_SPTR)src->data, (PCRE2_SIZE)src->len, opts, &err, &off, NULL);
    if (!*out) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        int show = len > 200 ? 200 : (int)len;
        return lt_fail(LT_ERR_FORMAT, "%s: %s: bad regular expression '%.*s%s': %s", path, where,
                       show, pattern, len > 200 ? "..." : "", (const char *)msg);
    }
    /* Without the JIT PCRE2's interpreter still matches, only slower. */
    pcre2_jit_compile(*out, PCRE2_JIT_COMPLETE);
    return LT_OK;
}

int tok_regex_compile(tok_regex *re, const char *pattern, int64_t len, int literal,
                      const char *path, const char *where) {
    memset(re, 0, sizeof *re);
    re->is_literal = literal;
    if (literal) {
        re->literal = malloc((size_t)len + 1);
        if (!re->literal) return lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
        memcpy(re->literal, pattern, (size_t)len);
        re->literal[len] = '\0';
        re->literal_len = len;
        /* A non-empty literal is searched with memmem; the empty one matches everywhere and
           goes through PCRE2 so that the empty-match rules stay in one place. */
        if (len > 0) return LT_OK;
    }
    lt_text src = {0};
    int st = literal ? tok_text_put(&src, "", 0) : onig_to_pcre2(pattern, len, &src);
    if (st == LT_OK) st = compile_one(&re->code, &src, literal, pattern, len, path, where);
    lt_text_free(&src);
    return st;
}

void tok_match_free(tok_match *m) {
    lt_text_free(&m->subject);
    if (m->md) pcre2_match_data_free(m->md);
    if (m->mctx) pcre2_match_context_free(m->mctx);
    if (m->stack) pcre2_jit_stack_free(m->stack);
    memset(m, 0, sizeof *m);
}

int tok_regex_search(const tok_regex *re, tok_match *m, const char *s, int64_t n, int64_t from,
                     int64_t *ms, int64_t *me, int *found) {
    *found = 0;
    if (re->is_literal && re->literal_len > 0) {
        if (from > n) return LT_OK;
        const char *hit =
            memmem(s + from, (size_t)(n - from), re->literal, (size_t)re->literal_len);
        if (!hit) return LT_OK;
        *ms = hit - s;
        *me = *ms + re->literal_len;
        *found = 1;
        return LT_OK;
    }
    if (!m->md) {
        m->md = pcre2_match_data_create(1, NULL);
        if (!m->md) return lt_fail(LT_ERR_NOMEM, "out of memory for regex match data");
    }
    for (int attempt = 0;; attempt++) {
        int rc = pcre2_match(re->code, (PCRE2_SPTR)s, (PCRE2_SIZE)n, (PCRE2_SIZE)from,
                             PCRE2_NO_UTF_CHECK, m->md, m->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) return LT_OK;
        if (rc >= 0) {
            /* rc == 0 only says the ovector had no room for the captures; pair 0 is set */
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(m->md);
            *ms = (int64_t)ov[0];
            *me = (int64_t)ov[1];
            *found = 1;
            return LT_OK;
        }
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && attempt == 0) {
            /* The default 32 KiB JIT stack ran out (long runs of one class): retry on a
               larger one, kept for later matches of this thread. */
            if (!m->stack) m->stack = pcre2_jit_stack_create(64 * 1024, 256 * 1024 * 1024, NULL);
            if (!m->mctx) m->mctx = pcre2_match_context_create(NULL);
            if (!m->stack || !m->mctx)
                return lt_fail(LT_ERR_NOMEM, "out of memory for a regex stack");
            pcre2_jit_stack_assign(m->mctx, NULL, m->stack);
            continue;
        }
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        return lt_fail(LT_ERR_RANGE, "tokenizer regex failed on the text at byte %lld: %s",
                       (long long)from, (const char *)msg);
    }
}

int tok_segs_push(tok_segs *v, int64_t start, int64_t end, int is_match) {
    if (v->len == v->cap) {
        int64_t cap = v->cap ? v->cap * 2 : 64;
        tok_seg *grown = realloc(v->data, (size_t)cap * sizeof *grown);
        if (!grown) return lt_fail(LT_ERR_NOMEM, "out of memory splitting text");
        v->data = grown;
        v->cap = cap;
    }
    v->data[v->len++] = (tok_seg){start, end, is_match};
    return LT_OK;
}

int tok_regex_find_matches(const tok_regex *re, tok_match *m, const char *s, int64_t n,
                           tok_segs *out) {
    out->len = 0;
    if (n == 0) return tok_segs_push(out, 0, 0, 0);
    int64_t first = re->is_literal ? -1 : tok_unicode_find(s, n);
    if (first >= 0) {
        m->subject.len = 0;
        LT_TRY(tok_text_put(&m->subject, s, n));
        tok_unicode_standin(m->subject.data, n, first);
        s = m->subject.data;
    }
    int64_t prev = 0, last_end = 0, last_match_end = -1;
    while (last_end <= n) {
        int64_t ms, me;
        int found;
        LT_TRY(tok_regex_search(re, m, s, n, last_end, &ms, &me, &found));
        if (!found) break;
        if (ms == me && last_match_end == me) {
            /* The onig crate skips an empty match at the end of the previous match and
               searches again one character on. */
            last_end += last_end < n ? tok_utf8_len((unsigned char)s[last_end]) : 1;
            continue;
        }
        last_end = me;
        last_match_end = me;
        if (prev != ms) LT_TRY(tok_segs_push(out, prev, ms, 0));
        LT_TRY(tok_segs_push(out, ms, me, 1));
        prev = me;
    }
    if (prev != n) LT_TRY(tok_segs_push(out, prev, n, 0));
    return LT_OK;
}

/* ---- the byte-level alphabet ------------------------------------------------------- */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 to
   U+0100.. in byte order. */
const uint16_t tok_byte_to_cp[256] = {
    256, 257, 258, 259, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 270, 271, 272, 273, 274,
    275, 276, 277, 278, 279, 280, 281, 282, 283, 284, 285, 286, 287, 288, 33,  34,  35,  36,  37,
    38,  39,  40,  41,  42,  43,  44,  45,  46,  47,  48,  49,  50,  51,  52,  53,  54,  55,  56,
    57,  58,  59,  60,  61,  62,  63,  64,  65,  66,  67,  68,  69,  70,  71,  72,  73,  74,  75,
    76,  77,  78,  79,  80,  81,  82,  83,  84,  85,  86,  87,  88,  89,  90,  91,  92,  93,  94,
    95,  96,  97,  98,  99,  100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113,
    114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 289, 290, 291, 292, 293, 294,
    295, 296, 297, 298, 299, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 311, 312, 313,
    314, 315, 316, 317, 318, 319, 320, 321, 322, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170,
    171, 172, 323, 174, 175, 176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189,
    190, 191, 192, 193, 194, 195, 196, 197, 198, 199, 200, 201, 202, 203, 204, 205, 206, 207, 208,
    209, 210, 211, 212, 213, 214, 215, 216, 217, 218, 219, 220, 221, 222, 223, 224, 225, 226, 227,
    228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239, 240, 241, 242, 243, 244, 245, 246,
    247, 248, 249, 250, 251, 252, 253, 254, 255};

int tok_cp_to_byte(uint32_t cp) {
    if (cp >= 0x21 && cp <= 0x7e) return (int)cp;
    if ((cp >= 0xa1 && cp <= 0xac) || (cp >= 0xae && cp <= 0xff)) return (int)cp;
    if (cp < 256 || cp > 323) return -1;
    /* U+0100 + k is the k-th byte (in byte order) outside the printable ranges */
    uint32_t k = cp - 256;
    if (k <= 32) return (int)k;               /* 0x00..0x20 */
    if (k <= 66) return (int)(k - 33 + 0x7f); /* 0x7f..0xa0 */
    return 0xad;                              /* k == 67 */
}
