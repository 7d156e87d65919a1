/* tokenizer.c - loading Hugging Face tokenizer.json (+ tokenizer_config.json) files, and the
 * small public calls (info, token <-> id).
 *
 * The loader trusts nothing: the file must be UTF-8 and nest at most TK_MAX_DEPTH deep
 * before cJSON sees it, every field is type-checked, ids are bounded and unique, and every
 * merge must name vocabulary tokens whose concatenation is in the vocabulary (as the
 * reference's BPE builder requires). Components the reference has but luatrain does not
 * implement are LT_ERR_UNSUPPORTED naming the component; anything malformed is
 * LT_ERR_FORMAT naming the file and the field. */
#define _GNU_SOURCE /* memmem */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "tok/tok_internal.h"

/* tokenizer.json nests about six deep; this only stops abuse. */
enum { TK_MAX_DEPTH = 128 };
/* Ids are indexes of dense per-id arrays: bounded so a malformed file cannot make us
   allocate gigabytes. */
enum { TK_MAX_ID = (1 << 24) - 1 };
#define TK_MAX_FILE ((int64_t)1 << 30)

typedef struct tk_load {
    const char *path; /* the file being read, for messages */
    lt_tokenizer *t;
    int32_t next_id;         /* the id the next new added token gets */
    const char *config_path; /* tokenizer_config.json, NULL */
} tk_load;

static int tk_fail(const char *path, int status, const char *fmt, ...) LT_PRINTF(3, 4);
static int tk_fail(const char *path, int status, const char *fmt, ...) {
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return lt_fail(status, "%s: %s", path, msg);
}

static const char *json_type(const cJSON *j) {
    if (!j) return "missing";
    if (cJSON_IsNull(j)) return "null";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsArray(j)) return "an array";
    if (cJSON_IsObject(j)) return "an object";
    return "an invalid value";
}

/* ---- reading and checking the document --------------------------------------------- */

static int read_file(const char *path, char **data, int64_t *len) {
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return lt_fail(LT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    lt_text buf = {0};
    int st = LT_OK;
    for (;;) {
        if ((st = tok_text_reserve(&buf, 1 << 20)) != LT_OK) break;
        size_t got = fread(buf.data + buf.len, 1, (size_t)(buf.cap - buf.len - 1), f);
        buf.len += (int64_t)got;
        buf.data[buf.len] = '\0';
        if (buf.len > TK_MAX_FILE) {
            st = tk_fail(path, LT_ERR_FORMAT, "file is larger than %lld bytes",
                         (long long)TK_MAX_FILE);
            break;
        }
        if (got == 0) {
            if (ferror(f)) st = lt_fail(LT_ERR_IO, "%s: read failed", path);
            break;
        }
    }
    fclose(f);
    if (st != LT_OK) {
        lt_text_free(&buf);
        return st;
    }
    if (!buf.data && (st = tok_text_reserve(&buf, 0)) != LT_OK) return st;
    *data = buf.data;
    *len = buf.len;
    return LT_OK;
}

/* UTF-8, bounded nesting, no NUL escapes (cJSON's C strings would silently cut there). */
static int scan_json(const char *path, const char *s, int64_t n) {
    int64_t valid = tok_utf8_valid_prefix((const unsigned char *)s, n);
    if (valid != n)
        return tk_fail(path, LT_ERR_FORMAT, "not valid UTF-8 (byte %lld)", (long long)valid);
    int depth = 0;
    for (int64_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '"') {
            for (i++; i < n && s[i] != '"'; i++) {
                if (s[i] == '\\') {
                    if (i + 5 < n && s[i + 1] == 'u' && memcmp(s + i + 2, "0000", 4) == 0)
                        return tk_fail(path, LT_ERR_FORMAT,
                                       "a string holds a NUL character (\\u0000) at byte %lld",
                                       (long long)i);
                    i++;
                }
            }
        } else if (c == '{' || c == '[') {
            if (++depth > TK_MAX_DEPTH)
                return tk_fail(path, LT_ERR_FORMAT, "nested deeper than %d levels (byte %lld)",
                               TK_MAX_DEPTH, (long long)i);
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return LT_OK;
}

static int parse_json(const char *path, cJSON **root) {
    char *data;
    int64_t len;
    LT_TRY(read_file(path, &data, &len));
    int st = scan_json(path, data, len);
    if (st == LT_OK) {
        const char *end = NULL;
        /* the length includes the NUL so that cJSON can insist nothing follows the value */
        *root = cJSON_ParseWithLengthOpts(data, (size_t)len + 1, &end, 1);
        if (!*root) {
            int64_t at = end && end >= data ? (int64_t)(end - data) : 0;
            st = len == 0
                     ? tk_fail(path, LT_ERR_FORMAT, "file is empty")
                     : tk_fail(path, LT_ERR_FORMAT, "not valid JSON (error at byte %lld of %lld%s)",
                               (long long)at, (long long)len, at >= len ? ": truncated?" : "");
        } else if (!cJSON_IsObject(*root)) {
            st = tk_fail(path, LT_ERR_FORMAT, "the document is %s, not a JSON object",
                         json_type(*root));
            cJSON_Delete(*root);
            *root = NULL;
        }
    }
    free(data);
    return st;
}

/* ---- typed field access ------------------------------------------------------------ */

static const cJSON *field(const cJSON *obj, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

static int is_absent(const cJSON *j) { return !j || cJSON_IsNull(j); }

/* A boolean that may be absent or null (then `dflt`). */
static int get_bool(const tk_load *L, const cJSON *obj, const char *key, const char *where,
                    int dflt, int *out) {
    const cJSON *j = field(obj, key);
    if (is_absent(j)) {
        *out = dflt;
        return LT_OK;
    }
    if (!cJSON_IsBool(j))
        return tk_fail(L->path, LT_ERR_FORMAT, "%s.%s is %s, not a boolean", where, key,
                       json_type(j));
    *out = cJSON_IsTrue(j);
    return LT_OK;
}

/* A string that may be absent or null (then NULL). */
static int get_string(const tk_load *L, const cJSON *obj, const char *key, const char *where,
                      const char **out) {
    const cJSON *j = field(obj, key);
    *out = NULL;
    if (is_absent(j)) return LT_OK;
    if (!cJSON_IsString(j))
        return tk_fail(L->path, LT_ERR_FORMAT, "%s.%s is %s, not a string", where, key,
                       json_type(j));
    *out = j->valuestring;
    return LT_OK;
}

static int need_string(const tk_load *L, const cJSON *obj, const char *key, const char *where,
                       const char **out) {
    LT_TRY(get_string(L, obj, key, where, out));
    if (!*out) return tk_fail(L->path, LT_ERR_FORMAT, "%s: missing field '%s'", where, key);
    return LT_OK;
}

/* An integer in [lo, hi]; `what` names it fully ("model.vocab['abc']"). */
static int get_int(const tk_load *L, const cJSON *j, const char *what, int64_t lo, int64_t hi,
                   int64_t *out) {
    if (!j) return tk_fail(L->path, LT_ERR_FORMAT, "%s is missing", what);
    if (!cJSON_IsNumber(j))
        return tk_fail(L->path, LT_ERR_FORMAT, "%s is %s, not an integer", what, json_type(j));
    double v = j->valuedouble;
    if (!isfinite(v) || v != floor(v))
        return tk_fail(L->path, LT_ERR_FORMAT, "%s is %g, not an integer", what, v);
    if (v < (double)lo || v > (double)hi)
        return tk_fail(L->path, LT_ERR_FORMAT, "%s is %.17g, outside %lld..%lld", what, v,
                       (long long)lo, (long long)hi);
    *out = (int64_t)v;
    return LT_OK;
}

static char *dup_bytes(const char *s, int64_t n) {
    char *d = malloc((size_t)n + 1);
    if (!d) return NULL;
    memcpy(d, s, (size_t)n);
    d[n] = '\0';
    return d;
}

/* A string of exactly one character (serde's char), UTF-8 into buf (8 bytes). */
static int get_char(const tk_load *L, const cJSON *obj, const char *key, const char *where,
                    const char *dflt, char *buf, int *len) {
    const char *s;
    LT_TRY(get_string(L, obj, key, where, &s));
    if (!s) s = dflt;
    if (!s) return tk_fail(L->path, LT_ERR_FORMAT, "%s: missing field '%s'", where, key);
    int64_t n = (int64_t)strlen(s);
    if (n == 0 || tok_utf8_len((unsigned char)s[0]) != n)
        return tk_fail(L->path, LT_ERR_FORMAT, "%s.%s is '%.40s', not a single character", where,
                       key, s);
    memcpy(buf, s, (size_t)n);
    *len = (int)n;
    return LT_OK;
}

/* {"String": s} or {"Regex": r} (SplitPattern / ReplacePattern). */
static int get_pattern(const tk_load *L, const cJSON *obj, const char *where, tok_regex *re) {
    const cJSON *p = field(obj, "pattern");
    char w[256];
    snprintf(w, sizeof w, "%s.pattern", where);
    if (!cJSON_IsObject(p))
        return tk_fail(L->path, LT_ERR_FORMAT,
                       "%s is %s, not {\"String\": ...} or "
                       "{\"Regex\": ...}",
                       w, json_type(p));
    const cJSON *s = field(p, "String"), *r = field(p, "Regex");
    if ((s != NULL) == (r != NULL) || p->child->next)
        return tk_fail(L->path, LT_ERR_FORMAT, "%s must hold exactly one of String and Regex", w);
    const cJSON *v = s ? s : r;
    if (!cJSON_IsString(v))
        return tk_fail(L->path, LT_ERR_FORMAT, "%s.%s is %s, not a string", w,
                       s ? "String" : "Regex", json_type(v));
    return tok_regex_compile(re, v->valuestring, (int64_t)strlen(v->valuestring), s != NULL,
                             L->path, w);
}

static const char *get_type(const cJSON *obj) {
    const cJSON *ty = field(obj, "type");
    return cJSON_IsString(ty) ? ty->valuestring : NULL;
}

static int need_type(const tk_load *L, const cJSON *obj, const char *where, const char **out) {
    if (!cJSON_IsObject(obj))
        return tk_fail(L->path, LT_ERR_FORMAT, "%s is %s, not an object", where, json_type(obj));
    const cJSON *ty = field(obj, "type");
    if (!cJSON_IsString(ty))
        return tk_fail(L->path, LT_ERR_FORMAT, "%s.type is %s, not a string", where, json_type(ty));
    *out = ty->valuestring;
    return LT_OK;
}

static int in_list(const char *s, const char *const *list) {
    for (; *list; list++)
        if (strcmp(s, *list) == 0) return 1;
    return 0;
}

/* ---- the model --------------------------------------------------------------------- */

static int parse_vocab(tk_load *L, const cJSON *vocab, int32_t *max_id) {
    lt_tokenizer *t = L->t;
    if (!cJSON_IsObject(vocab))
        return tk_fail(L->path, LT_ERR_FORMAT, "model.vocab is %s, not an object of token -> id",
                       json_type(vocab));
    int64_t count = 0;
    *max_id = -1;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        char what[320];
        snprintf(what, sizeof what, "model.vocab['%.200s']", e->string);
        int64_t id = 0;
        LT_TRY(get_int(L, e, what, 0, TK_MAX_ID, &id));
        if (id > *max_id) *max_id = (int32_t)id;
        count++;
    }
    LT_TRY(tok_strmap_init(&t->vocab, count));
    for (const cJSON *e = vocab->child; e; e = e->next) {
        int32_t existing;
        LT_TRY(tok_strmap_insert(&t->vocab, e->string, (int64_t)strlen(e->string),
                                 (int32_t)e->valuedouble, &existing, NULL));
        if (existing >= 0)
            return tk_fail(L->path, LT_ERR_FORMAT, "model.vocab: token '%.200s' appears twice",
                           e->string);
    }
    return LT_OK;
}

/* Per-id arrays once the largest id is known. */
static int alloc_ids(tk_load *L, int32_t n_ids) {
    lt_tokenizer *t = L->t;
    t->n_ids = n_ids;
    size_t n = (size_t)n_ids + 1;
    t->tok_off = calloc(n, sizeof *t->tok_off);
    t->tok_len = malloc(n * sizeof *t->tok_len);
    t->added_of = malloc(n * sizeof *t->added_of);
    if (!t->tok_off || !t->tok_len || !t->added_of)
        return tk_fail(L->path, LT_ERR_NOMEM, "out of memory for %d ids", n_ids);
    for (size_t i = 0; i < n; i++) t->tok_len[i] = t->added_of[i] = -1;
    return LT_OK;
}

static int fill_vocab_ids(tk_load *L) {
    lt_tokenizer *t = L->t;
    for (uint64_t i = 0; i <= t->vocab.mask; i++) {
        const tok_strmap_slot *s = &t->vocab.slots[i];
        if (s->value < 0) continue;
        if (t->tok_len[s->value] >= 0)
            return tk_fail(L->path, LT_ERR_FORMAT,
                           "model.vocab: id %d is given to both '%.100s' and '%.100s'", s->value,
                           t->vocab.pool.data + t->tok_off[s->value], t->vocab.pool.data + s->off);
        t->tok_off[s->value] = s->off;
        t->tok_len[s->value] = (int32_t)s->len;
    }
    return LT_OK;
}

/* One merge: "a b" (exactly one space) or ["a", "b"]. */
static int merge_parts(const tk_load *L, const cJSON *m, int64_t index, const char **a,
                       int64_t *alen, const char **b, int64_t *blen, int *skip) {
    *skip = 0;
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring;
        if (strncmp(s, "#version", 8) == 0) {
            *skip = 1;
            return LT_OK;
        }
        const char *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' '))
            return tk_fail(L->path, LT_ERR_FORMAT,
                           "model.merges[%lld] is '%.200s', not two tokens separated by one space",
                           (long long)index, s);
        *a = s;
        *alen = sp - s;
        *b = sp + 1;
        *blen = (int64_t)strlen(sp + 1);
        return LT_OK;
    }
    if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
        cJSON_IsString(m->child->next)) {
        *a = m->child->valuestring;
        *alen = (int64_t)strlen(*a);
        *b = m->child->next->valuestring;
        *blen = (int64_t)strlen(*b);
        return LT_OK;
    }
    return tk_fail(L->path, LT_ERR_FORMAT,
                   "model.merges[%lld] is %s, not \"a b\" or [\"a\", \"b\"]", (long long)index,
                   json_type(m));
}

static int parse_merges(tk_load *L, const cJSON *merges) {
    lt_tokenizer *t = L->t;
    if (!cJSON_IsArray(merges))
        return tk_fail(L->path, LT_ERR_FORMAT, "model.merges is %s, not an array",
                       json_type(merges));
    int64_t n = cJSON_GetArraySize(merges);
    LT_TRY(tok_pairmap_init(&t->merges, n));
    t->merge_new_id = malloc(((size_t)n + 1) * sizeof *t->merge_new_id);
    if (!t->merge_new_id) return tk_fail(L->path, LT_ERR_NOMEM, "out of memory for merges");
    lt_text joined = {0};
    int64_t index = 0, rank = 0;
    int st = LT_OK;
    for (const cJSON *m = merges->child; m && st == LT_OK; m = m->next, index++) {
        /* The reference reads either form, but one form for the whole list. */
        if (m != merges->child && cJSON_IsString(m) != cJSON_IsString(merges->child)) {
            st = tk_fail(L->path, LT_ERR_FORMAT,
                         "model.merges[%lld] is %s but model.merges[0] is "
                         "%s: the list mixes \"a b\" strings and [a, b] pairs",
                         (long long)index, json_type(m), json_type(merges->child));
            break;
        }
        const char *a = NULL, *b = NULL;
        int64_t alen = 0, blen = 0;
        int skip;
        if ((st = merge_parts(L, m, index, &a, &alen, &b, &blen, &skip)) != LT_OK || skip) continue;
        int32_t ia = tok_strmap_get(&t->vocab, a, alen);
        int32_t ib = tok_strmap_get(&t->vocab, b, blen);
        if (ia < 0 || ib < 0) {
            const char *bad = ia < 0 ? a : b;
            int64_t bad_len = ia < 0 ? alen : blen;
            st = tk_fail(L->path, LT_ERR_FORMAT,
                         "model.merges[%lld]: '%.*s' is not in the vocabulary", (long long)index,
                         (int)(bad_len > 200 ? 200 : bad_len), bad);
            break;
        }
        /* The merged token drops the second part's continuing_subword_prefix. */
        int64_t skip_prefix = 0;
        if (t->cont_prefix && blen >= t->cont_prefix_len &&
            memcmp(b, t->cont_prefix, (size_t)t->cont_prefix_len) == 0)
            skip_prefix = t->cont_prefix_len;
        joined.len = 0;
        if ((st = tok_text_put(&joined, a, alen)) != LT_OK ||
            (st = tok_text_put(&joined, b + skip_prefix, blen - skip_prefix)) != LT_OK)
            break;
        int32_t inew = tok_strmap_get(&t->vocab, joined.data, joined.len);
        if (inew < 0) {
            st = tk_fail(L->path, LT_ERR_FORMAT,
                         "model.merges[%lld]: the merged token '%.200s' is not in the vocabulary",
                         (long long)index, joined.data);
            break;
        }
        tok_pairmap_put(&t->merges, ia, ib, (int32_t)rank, inew);
        t->merge_new_id[rank++] = inew;
    }
    lt_text_free(&joined);
    return st;
}

static int parse_model(tk_load *L, const cJSON *root, int32_t *max_id) {
    lt_tokenizer *t = L->t;
    const cJSON *model = field(root, "model");
    if (!model) return tk_fail(L->path, LT_ERR_FORMAT, "missing field 'model'");
    if (!cJSON_IsObject(model))
        return tk_fail(L->path, LT_ERR_FORMAT, "model is %s, not an object", json_type(model));
    const char *type = get_type(model);
    if (!type && field(model, "type"))
        return tk_fail(L->path, LT_ERR_FORMAT, "model.type is %s, not a string",
                       json_type(field(model, "type")));
    if (!type && field(model, "merges")) type = "BPE"; /* the reference infers it too */
    if (!type) return tk_fail(L->path, LT_ERR_FORMAT, "model: missing field 'type'");
    static const char *const other_models[] = {"WordPiece", "Unigram", "WordLevel", NULL};
    if (in_list(type, other_models))
        return tk_fail(L->path, LT_ERR_UNSUPPORTED,
                       "model type '%s' is not supported (luatrain reads BPE models)", type);
    if (strcmp(type, "BPE") != 0)
        return tk_fail(L->path, LT_ERR_FORMAT, "model.type '%.100s' is not a tokenizers model type",
                       type);

    const cJSON *dropout = field(model, "dropout");
    if (!is_absent(dropout)) {
        if (!cJSON_IsNumber(dropout) || !(dropout->valuedouble >= 0 && dropout->valuedouble <= 1))
            return tk_fail(L->path, LT_ERR_FORMAT,
                           "model.dropout must be null or a number in "
                           "[0, 1]");
        if (dropout->valuedouble > 0)
            return tk_fail(L->path, LT_ERR_UNSUPPORTED,
                           "model.dropout %g: BPE dropout is not supported (encoding must be "
                           "deterministic)",
                           dropout->valuedouble);
    }
    LT_TRY(get_bool(L, model, "fuse_unk", "model", 0, &t->fuse_unk));
    LT_TRY(get_bool(L, model, "byte_fallback", "model", 0, &t->byte_fallback));
    LT_TRY(get_bool(L, model, "ignore_merges", "model", 0, &t->ignore_merges));
    const char *prefix, *suffix, *unk;
    LT_TRY(get_string(L, model, "continuing_subword_prefix", "model", &prefix));
    LT_TRY(get_string(L, model, "end_of_word_suffix", "model", &suffix));
    LT_TRY(get_string(L, model, "unk_token", "model", &unk));
    if (prefix && *prefix) {
        t->cont_prefix_len = (int64_t)strlen(prefix);
        if (!(t->cont_prefix = dup_bytes(prefix, t->cont_prefix_len)))
            return tk_fail(L->path, LT_ERR_NOMEM, "out of memory");
    }
    if (suffix && *suffix) {
        t->eow_suffix_len = (int64_t)strlen(suffix);
        if (!(t->eow_suffix = dup_bytes(suffix, t->eow_suffix_len)))
            return tk_fail(L->path, LT_ERR_NOMEM, "out of memory");
    }

    const cJSON *vocab = field(model, "vocab"), *merges = field(model, "merges");
    if (!vocab) return tk_fail(L->path, LT_ERR_FORMAT, "model: missing field 'vocab'");
    if (!merges) return tk_fail(L->path, LT_ERR_FORMAT, "model: missing field 'merges'");
    LT_TRY(parse_vocab(L, vocab, max_id));
    LT_TRY(parse_merges(L, merges));

    t->unk_id = unk ? tok_strmap_get(&t->vocab, unk, (int64_t)strlen(unk)) : -1;
    if (unk && t->unk_id < 0)
        return tk_fail(L->path, LT_ERR_FORMAT, "model.unk_token '%.100s' is not in the vocabulary",
                       unk);
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_ids[b] = tok_strmap_get(&t->vocab, name, 6);
    }
    return LT_OK;
}

/* code point -> id of single-character model tokens, for the BPE's first step. */
static int fill_char_table(tk_load *L) {
    lt_tokenizer *t = L->t;
    t->char_ids = malloc(TOK_CHAR_TABLE * sizeof *t->char_ids);
    if (!t->char_ids) return tk_fail(L->path, LT_ERR_NOMEM, "out of memory");
    for (int i = 0; i < TOK_CHAR_TABLE; i++) t->char_ids[i] = -1;
    for (int32_t id = 0; id < t->n_ids; id++) {
        int32_t len = t->tok_len[id];
        if (len <= 0 || len > 4) continue;
        const unsigned char *s = (const unsigned char *)t->vocab.pool.data + t->tok_off[id];
        if (tok_utf8_len(s[0]) != len) continue;
        uint32_t cp;
        tok_utf8_decode(s, &cp);
        if (cp < TOK_CHAR_TABLE) t->char_ids[cp] = id;
    }
    return LT_OK;
}

/* Whether a SentencePiece word may be merged run by run (lt_tokenizer.chunk_metaspace). */
static void check_metaspace_chunks(lt_tokenizer *t) {
    static const char ms[3] = {(char)0xe2, (char)0x96, (char)0x81}; /* U+2581 */
    t->chunk_metaspace = 0;
    if (t->cont_prefix || t->eow_suffix || t->ignore_merges) return;
    if (tok_strmap_get(&t->vocab, ms, 3) < 0) return;
    for (int32_t id = 0; id < t->n_ids; id++) {
        int32_t len = t->tok_len[id];
        if (len < 4) continue;
        const char *s = t->vocab.pool.data + t->tok_off[id];
        for (const char *p = memmem(s + 1, (size_t)len - 1, ms, 3); p;
             p = memmem(p + 1, (size_t)(s + len - p - 1), ms, 3)) {
            if (p - s < 3 || memcmp(p - 3, ms, 3) != 0) return;
        }
    }
    t->chunk_metaspace = 1;
}

/* ---- added tokens ------------------------------------------------------------------ */

/* Grow the per-id arrays to hold `id`. */
static int ensure_id(tk_load *L, int32_t id) {
    lt_tokenizer *t = L->t;
    if (id < t->n_ids) return LT_OK;
    if (id > TK_MAX_ID) return tk_fail(L->path, LT_ERR_FORMAT, "no id left below %d", TK_MAX_ID);
    size_t n = (size_t)id + 2;
    uint32_t *off = realloc(t->tok_off, n * sizeof *off);
    if (off) t->tok_off = off;
    int32_t *len = realloc(t->tok_len, n * sizeof *len);
    if (len) t->tok_len = len;
    int32_t *of = realloc(t->added_of, n * sizeof *of);
    if (of) t->added_of = of;
    if (!off || !len || !of) return tk_fail(L->path, LT_ERR_NOMEM, "out of memory");
    for (int32_t i = t->n_ids; i <= id; i++) {
        t->tok_off[i] = 0;
        t->tok_len[i] = t->added_of[i] = -1;
    }
    t->n_ids = id + 1;
    return LT_OK;
}

/* The first id the reference hands out in one call of AddedVocabulary::add_tokens: after
   the largest added id when that is past the model's vocabulary, else the vocabulary's
   size (its count of tokens). */
static int32_t first_new_id(const lt_tokenizer *t) {
    int32_t vocab = (int32_t)t->vocab.count, most = -1;
    for (int32_t i = 0; i < t->n_added; i++)
        if (t->added[i].id > most) most = t->added[i].id;
    if (most < 0) return vocab;
    return most >= vocab || vocab == 0 ? most + 1 : vocab;
}

/* Add (or update) an added token the way the reference does: a content already added
   keeps its id and takes the new flags; a content of the model vocabulary gets the
   vocabulary's id; anything else the next new id (L->next_id). The id a file declares is
   not used: the reference only warns when it differs. */
static int add_token(tk_load *L, const char *content, int special, int lstrip, int rstrip,
                     int single_word, int normalized, int32_t *id_out) {
    lt_tokenizer *t = L->t;
    int64_t len = (int64_t)strlen(content);
    int32_t prev = tok_strmap_get(&t->added_map, content, len);
    int32_t in_vocab = tok_strmap_get(&t->vocab, content, len);
    int32_t id = prev >= 0 ? prev : in_vocab >= 0 ? in_vocab : L->next_id++;
    tok_added *a;
    if (prev >= 0) {
        a = &t->added[t->added_of[prev]];
    } else {
        LT_TRY(ensure_id(L, id));
        if (t->added_of[id] >= 0)
            return tk_fail(L->path, LT_ERR_FORMAT,
                           "id %d is given to both added tokens '%.100s' "
                           "and '%.100s'",
                           id, t->added[t->added_of[id]].content, content);
        tok_added *grown = realloc(t->added, ((size_t)t->n_added + 1) * sizeof *grown);
        if (!grown) return tk_fail(L->path, LT_ERR_NOMEM, "out of memory for added tokens");
        t->added = grown;
        a = &t->added[t->n_added++];
        memset(a, 0, sizeof *a);
        a->id = id;
        a->len = len;
        if (!(a->content = dup_bytes(content, len)))
            return tk_fail(L->path, LT_ERR_NOMEM, "out of memory for added tokens");
        int32_t existing;
        LT_TRY(tok_strmap_insert(&t->added_map, content, len, id, &existing, NULL));
        t->added_of[id] = t->n_added - 1;
    }
    a->special = (uint8_t)special;
    a->lstrip = (uint8_t)lstrip;
    a->rstrip = (uint8_t)rstrip;
    a->single_word = (uint8_t)single_word;
    a->normalized = (uint8_t)normalized;
    if (id_out) *id_out = id;
    return LT_OK;
}

/* An AddedToken object's flags; `where` names it. */
static int token_flags(const tk_load *L, const cJSON *o, const char *where, int dflt_special,
                       int *special, int *lstrip, int *rstrip, int *single_word, int *normalized) {
    LT_TRY(get_bool(L, o, "special", where, dflt_special, special));
    LT_TRY(get_bool(L, o, "lstrip", where, 0, lstrip));
    LT_TRY(get_bool(L, o, "rstrip", where, 0, rstrip));
    LT_TRY(get_bool(L, o, "single_word", where, 0, single_word));
    LT_TRY(get_bool(L, o, "normalized", where, !*special, normalized));
    return LT_OK;
}

static int parse_added(tk_load *L, const cJSON *root) {
    const cJSON *list = field(root, "added_tokens");
    L->next_id = first_new_id(L->t);
    if (is_absent(list)) return LT_OK;
    if (!cJSON_IsArray(list))
        return tk_fail(L->path, LT_ERR_FORMAT, "added_tokens is %s, not an array", json_type(list));
    int64_t i = 0;
    for (const cJSON *o = list->child; o; o = o->next, i++) {
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%lld]", (long long)i);
        if (!cJSON_IsObject(o))
            return tk_fail(L->path, LT_ERR_FORMAT, "%s is %s, not an object", where, json_type(o));
        const char *content;
        LT_TRY(need_string(L, o, "content", where, &content));
        char what[96];
        snprintf(what, sizeof what, "%s.id", where);
        int64_t id;
        LT_TRY(get_int(L, field(o, "id"), what, 0, TK_MAX_ID, &id));
        int special, lstrip, rstrip, single_word, normalized;
        LT_TRY(token_flags(L, o, where, 0, &special, &lstrip, &rstrip, &single_word, &normalized));
        if (!*content) continue; /* the reference ignores empty tokens */
        LT_TRY(add_token(L, content, special, lstrip, rstrip, single_word, normalized, NULL));
    }
    return LT_OK;
}

/* ---- normalizer, pre-tokenizer ----------------------------------------------------- */

static int push_norm(tk_load *L, tok_norm **slot) {
    lt_tokenizer *t = L->t;
    tok_norm *grown = realloc(t->norms, ((size_t)t->n_norms + 1) * sizeof *grown);
    if (!grown) return tk_fail(L->path, LT_ERR_NOMEM, "out of memory");
    t->norms = grown;
    *slot = &t->norms[t->n_norms++];
    memset(*slot, 0, sizeof **slot);
    return LT_OK;
}

static int parse_normalizer(tk_load *L, const cJSON *n, const char *where, int depth) {
    if (is_absent(n)) return LT_OK;
    const char *type;
    LT_TRY(need_type(L, n, where, &type));
    char w[256];
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = field(n, "normalizers");
        if (!cJSON_IsArray(list))
            return tk_fail(L->path, LT_ERR_FORMAT, "%s.normalizers is %s, not an array", where,
                           json_type(list));
        int i = 0;
        for (const cJSON *c = list->child; c; c = c->next, i++) {
            snprintf(w, sizeof w, "%s.normalizers[%d]", where, i);
            if (is_absent(c)) return tk_fail(L->path, LT_ERR_FORMAT, "%s is null", w);
            LT_TRY(parse_normalizer(L, c, w, depth + 1));
        }
        return LT_OK;
    }
    tok_norm *s = NULL;
    if (strcmp(type, "Prepend") == 0) {
        const char *text;
        LT_TRY(need_string(L, n, "prepend", where, &text));
        LT_TRY(push_norm(L, &s));
        s->type = TOK_NORM_PREPEND;
        s->str_len = (int64_t)strlen(text);
        if (!(s->str = dup_bytes(text, s->str_len)))
            return tk_fail(L->path, LT_ERR_NOMEM, "out of memory");
        return LT_OK;
    }
    if (strcmp(type, "Replace") == 0) {
        const char *content;
        LT_TRY(need_string(L, n, "content", where, &content));
        LT_TRY(push_norm(L, &s));
        s->type = TOK_NORM_REPLACE;
        s->str_len = (int64_t)strlen(content);
        if (!(s->str = dup_bytes(content, s->str_len)))
            return tk_fail(L->path, LT_ERR_NOMEM, "out of memory");
        return get_pattern(L, n, where, &s->re);
    }
    if (strcmp(type, "Strip") == 0) {
        int left, right;
        LT_TRY(get_bool(L, n, "strip_left", where, 1, &left));
        LT_TRY(get_bool(L, n, "strip_right", where, 1, &right));
        LT_TRY(push_norm(L, &s));
        s->type = TOK_NORM_STRIP;
        s->strip_left = left;
        s->strip_right = right;
        return LT_OK;
    }
    static const char *const known[] = {
        "NFC",          "NFD",         "NFKC", "NFKD",      "Lowercase", "BertNormalizer",
        "StripAccents", "Precompiled", "Nmt",  "ByteLevel", NULL};
    if (in_list(type, known))
        return tk_fail(L->path, LT_ERR_UNSUPPORTED,
                       "%s: normalizer type '%s' is not supported (luatrain implements Sequence, "
                       "Prepend, Replace and Strip)",
                       where, type);
    return tk_fail(L->path, LT_ERR_FORMAT, "%s.type '%.100s' is not a tokenizers normalizer type",
                   where, type);
}

static int push_pre(tk_load *L, tok_pre **slot) {
    lt_tokenizer *t = L->t;
    tok_pre *grown = realloc(t->pres, ((size_t)t->n_pres + 1) * sizeof *grown);
    if (!grown) return tk_fail(L->path, LT_ERR_NOMEM, "out of memory");
    t->pres = grown;
    *slot = &t->pres[t->n_pres++];
    memset(*slot, 0, sizeof **slot);
    return LT_OK;
}

/* prepend_scheme / add_prefix_space of a Metaspace (pre-tokenizer or decoder). */
static int metaspace_scheme(const tk_load *L, const cJSON *o, const char *where, int *scheme) {
    const char *s;
    LT_TRY(get_string(L, o, "prepend_scheme", where, &s));
    const cJSON *aps = field(o, "add_prefix_space");
    if (!is_absent(aps) && !cJSON_IsBool(aps))
        return tk_fail(L->path, LT_ERR_FORMAT, "%s.add_prefix_space is %s, not a boolean", where,
                       json_type(aps));
    if (!s) {
        /* Files written before prepend_scheme existed say add_prefix_space. */
        *scheme = cJSON_IsFalse(aps) ? TOK_PREPEND_NEVER : TOK_PREPEND_ALWAYS;
        return LT_OK;
    }
    if (strcmp(s, "always") == 0)
        *scheme = TOK_PREPEND_ALWAYS;
    else if (strcmp(s, "first") == 0)
        *scheme = TOK_PREPEND_FIRST;
    else if (strcmp(s, "never") == 0)
        *scheme = TOK_PREPEND_NEVER;
    else
        return tk_fail(L->path, LT_ERR_FORMAT,
                       "%s.prepend_scheme is '%.40s', not always, first "
                       "or never",
                       where, s);
    if (cJSON_IsFalse(aps) && *scheme != TOK_PREPEND_NEVER)
        return tk_fail(L->path, LT_ERR_FORMAT,
                       "%s: add_prefix_space false does not match prepend_scheme '%s'", where, s);
    return LT_OK;
}

/* GPT-2's pre-tokenizer pattern, used by ByteLevel with use_regex. */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int parse_pre(tk_load *L, const cJSON *p, const char *where) {
    if (is_absent(p)) return LT_OK;
    const char *type;
    LT_TRY(need_type(L, p, where, &type));
    char w[256];
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = field(p, "pretokenizers");
        if (!cJSON_IsArray(list))
            return tk_fail(L->path, LT_ERR_FORMAT, "%s.pretokenizers is %s, not an array", where,
                           json_type(list));
        int i = 0;
        for (const cJSON *c = list->child; c; c = c->next, i++) {
            snprintf(w, sizeof w, "%s.pretokenizers[%d]", where, i);
            if (is_absent(c)) return tk_fail(L->path, LT_ERR_FORMAT, "%s is null", w);
            LT_TRY(parse_pre(L, c, w));
        }
        return LT_OK;
    }
    tok_pre *s = NULL;
    if (strcmp(type, "Split") == 0) {
        const char *behavior;
        int invert;
        LT_TRY(need_string(L, p, "behavior", where, &behavior));
        LT_TRY(get_bool(L, p, "invert", where, 0, &invert));
        static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
                                            "MergedWithNext", "Contiguous"};
        int b = 0;
        for (int i = 0; i < 5; i++)
            if (strcmp(behavior, names[i]) == 0) b = TOK_SPLIT_REMOVED + i;
        if (!b)
            return tk_fail(L->path, LT_ERR_FORMAT,
                           "%s.behavior is '%.40s', not one of Removed, "
                           "Isolated, MergedWithPrevious, MergedWithNext, Contiguous",
                           where, behavior);
        LT_TRY(push_pre(L, &s));
        s->type = TOK_PRE_SPLIT;
        s->behavior = b;
        s->invert = invert;
        return get_pattern(L, p, where, &s->re);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        int aps, use_regex;
        LT_TRY(get_bool(L, p, "add_prefix_space", where, 1, &aps));
        LT_TRY(get_bool(L, p, "use_regex", where, 1, &use_regex));
        LT_TRY(push_pre(L, &s));
        s->type = TOK_PRE_BYTELEVEL;
        s->add_prefix_space = aps;
        s->use_regex = use_regex;
        if (use_regex) {
            snprintf(w, sizeof w, "%s (GPT-2 pattern)", where);
            LT_TRY(tok_regex_compile(&s->re, GPT2_PATTERN, (int64_t)strlen(GPT2_PATTERN), 0,
                                     L->path, w));
        }
        return LT_OK;
    }
    if (strcmp(type, "Metaspace") == 0) {
        char repl[8];
        int repl_len, scheme, split;
        LT_TRY(get_char(L, p, "replacement", where, NULL, repl, &repl_len));
        LT_TRY(metaspace_scheme(L, p, where, &scheme));
        LT_TRY(get_bool(L, p, "split", where, 1, &split));
        LT_TRY(push_pre(L, &s));
        s->type = TOK_PRE_METASPACE;
        memcpy(s->repl, repl, sizeof repl);
        s->repl_len = repl_len;
        s->prepend_scheme = scheme;
        s->split = split;
        return LT_OK;
    }
    static const char *const known[] = {"BertPreTokenizer",   "Whitespace",  "WhitespaceSplit",
                                        "Punctuation",        "Digits",      "UnicodeScripts",
                                        "CharDelimiterSplit", "FixedLength", NULL};
    if (in_list(type, known))
        return tk_fail(L->path, LT_ERR_UNSUPPORTED,
                       "%s: pre-tokenizer type '%s' is not supported (luatrain implements "
                       "Sequence, Split, ByteLevel and Metaspace)",
                       where, type);
    return tk_fail(L->path, LT_ERR_FORMAT,
                   "%s.type '%.100s' is not a tokenizers pre-tokenizer type", where, type);
}

/* ---- post-processor ---------------------------------------------------------------- */

static int append_ids(const tk_load *L, int32_t **arr, int32_t *n, const int32_t *ids, int32_t k,
                      int at_front) {
    if (k == 0) return LT_OK;
    int32_t *grown = realloc(*arr, ((size_t)*n + (size_t)k + 1) * sizeof *grown);
    if (!grown) return tk_fail(L->path, LT_ERR_NOMEM, "out of memory");
    if (at_front) {
        memmove(grown + k, grown, (size_t)*n * sizeof *grown);
        memcpy(grown, ids, (size_t)k * sizeof *ids);
    } else {
        memcpy(grown + *n, ids, (size_t)k * sizeof *ids);
    }
    *arr = grown;
    *n += k;
    return LT_OK;
}

/* ["[SEP]", 102] of Bert/RobertaProcessing. */
static int token_pair(const tk_load *L, const cJSON *p, const char *key, const char *where,
                      int32_t *id) {
    const cJSON *j = field(p, key);
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) != 2 || !cJSON_IsString(j->child))
        return tk_fail(L->path, LT_ERR_FORMAT, "%s.%s is %s, not [token, id]", where, key,
                       json_type(j));
    char what[300];
    snprintf(what, sizeof what, "%s.%s[1]", where, key);
    int64_t v;
    LT_TRY(get_int(L, j->child->next, what, 0, TK_MAX_ID, &v));
    *id = (int32_t)v;
    return LT_OK;
}

/* The ids a TemplateProcessing special token name stands for. */
static int template_ids(const tk_load *L, const cJSON *specials, const char *name,
                        const char *where, lt_ids *out) {
    const cJSON *sp = cJSON_IsObject(specials) ? field(specials, name) : NULL;
    if (!cJSON_IsObject(sp))
        return tk_fail(L->path, LT_ERR_FORMAT,
                       "%s: special token '%.100s' is not in "
                       "special_tokens",
                       where, name);
    const cJSON *ids = field(sp, "ids");
    if (!cJSON_IsArray(ids))
        return tk_fail(L->path, LT_ERR_FORMAT,
                       "%s.special_tokens['%.100s'].ids is %s, not an "
                       "array",
                       where, name, json_type(ids));
    int i = 0;
    for (const cJSON *e = ids->child; e; e = e->next, i++) {
        char what[300];
        snprintf(what, sizeof what, "%s.special_tokens['%.100s'].ids[%d]", where, name, i);
        int64_t v;
        LT_TRY(get_int(L, e, what, 0, TK_MAX_ID, &v));
        LT_TRY(tok_ids_push(out, (int32_t)v));
    }
    return LT_OK;
}

static int parse_template(tk_load *L, const cJSON *p, const char *where) {
    lt_tokenizer *t = L->t;
    const cJSON *single = field(p, "single"), *specials = field(p, "special_tokens");
    if (!cJSON_IsArray(single))
        return tk_fail(L->path, LT_ERR_FORMAT, "%s.single is %s, not an array", where,
                       json_type(single));
    lt_ids pre = {0}, post = {0};
    int seen_a = 0, i = 0, st = LT_OK;
    for (const cJSON *e = single->child; e && st == LT_OK; e = e->next, i++) {
        const cJSON *sp = cJSON_IsObject(e) ? field(e, "SpecialToken") : NULL;
        const cJSON *sq = cJSON_IsObject(e) ? field(e, "Sequence") : NULL;
        if (sp && cJSON_IsObject(sp) && cJSON_IsString(field(sp, "id"))) {
            st = template_ids(L, specials, field(sp, "id")->valuestring, where,
                              seen_a ? &post : &pre);
        } else if (sq && cJSON_IsObject(sq) && cJSON_IsString(field(sq, "id"))) {
            const char *which = field(sq, "id")->valuestring;
            if (strcmp(which, "A") != 0)
                st = tk_fail(L->path, LT_ERR_FORMAT,
                             "%s.single[%d] names sequence '%.20s'; a "
                             "single template holds only A",
                             where, i, which);
            else if (seen_a++)
                st = tk_fail(L->path, LT_ERR_UNSUPPORTED, "%s.single repeats the sequence $A",
                             where);
        } else {
            st = tk_fail(L->path, LT_ERR_FORMAT,
                         "%s.single[%d] is not {\"SpecialToken\": "
                         "{\"id\": ...}} or {\"Sequence\": {\"id\": ...}}",
                         where, i);
        }
    }
    if (st == LT_OK && !seen_a)
        st = tk_fail(L->path, LT_ERR_FORMAT, "%s.single has no $A sequence", where);
    if (st == LT_OK) st = append_ids(L, &t->prefix, &t->n_prefix, pre.data, (int32_t)pre.len, 1);
    if (st == LT_OK) st = append_ids(L, &t->suffix, &t->n_suffix, post.data, (int32_t)post.len, 0);
    lt_ids_free(&pre);
    lt_ids_free(&post);
    return st;
}

/* Processors apply in order, each wrapping what the previous produced. */
static int parse_post(tk_load *L, const cJSON *p, const char *where) {
    lt_tokenizer *t = L->t;
    if (is_absent(p)) return LT_OK;
    const char *type;
    LT_TRY(need_type(L, p, where, &type));
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = field(p, "processors");
        if (!cJSON_IsArray(list))
            return tk_fail(L->path, LT_ERR_FORMAT, "%s.processors is %s, not an array", where,
                           json_type(list));
        int i = 0;
        for (const cJSON *c = list->child; c; c = c->next, i++) {
            char w[256];
            snprintf(w, sizeof w, "%s.processors[%d]", where, i);
            LT_TRY(parse_post(L, c, w));
        }
        return LT_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) return LT_OK; /* adjusts offsets only */
    if (strcmp(type, "TemplateProcessing") == 0) return parse_template(L, p, where);
    if (strcmp(type, "BertProcessing") == 0 || strcmp(type, "RobertaProcessing") == 0) {
        int32_t cls, sep;
        LT_TRY(token_pair(L, p, "cls", where, &cls));
        LT_TRY(token_pair(L, p, "sep", where, &sep));
        LT_TRY(append_ids(L, &t->prefix, &t->n_prefix, &cls, 1, 1));
        return append_ids(L, &t->suffix, &t->n_suffix, &sep, 1, 0);
    }
    return tk_fail(L->path, LT_ERR_UNSUPPORTED,
                   "%s: post-processor type '%.100s' is not supported (luatrain implements "
                   "TemplateProcessing, ByteLevel, BertProcessing, RobertaProcessing, Sequence)",
                   where, type);
}

/* ---- decoder ----------------------------------------------------------------------- */

static int push_dec(tk_load *L, tok_dec_step **slot, int type) {
    lt_tokenizer *t = L->t;
    tok_dec_step *grown = realloc(t->decs, ((size_t)t->n_decs + 1) * sizeof *grown);
    if (!grown) return tk_fail(L->path, LT_ERR_NOMEM, "out of memory");
    t->decs = grown;
    int joined = 0;
    for (int i = 0; i < t->n_decs; i++)
        if (t->decs[i].type == TOK_DEC_FUSE || t->decs[i].type == TOK_DEC_BYTELEVEL) joined = 1;
    *slot = &t->decs[t->n_decs++];
    memset(*slot, 0, sizeof **slot);
    (*slot)->type = type;
    (*slot)->joined = joined;
    return LT_OK;
}

static int parse_decoder(tk_load *L, const cJSON *d, const char *where) {
    if (is_absent(d)) return LT_OK;
    const char *type;
    LT_TRY(need_type(L, d, where, &type));
    tok_dec_step *s = NULL;
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = field(d, "decoders");
        if (!cJSON_IsArray(list))
            return tk_fail(L->path, LT_ERR_FORMAT, "%s.decoders is %s, not an array", where,
                           json_type(list));
        int i = 0;
        for (const cJSON *c = list->child; c; c = c->next, i++) {
            char w[256];
            snprintf(w, sizeof w, "%s.decoders[%d]", where, i);
            if (is_absent(c)) return tk_fail(L->path, LT_ERR_FORMAT, "%s is null", w);
            LT_TRY(parse_decoder(L, c, w));
        }
        return LT_OK;
    }
    if (strcmp(type, "Replace") == 0) {
        const char *content;
        LT_TRY(need_string(L, d, "content", where, &content));
        LT_TRY(push_dec(L, &s, TOK_DEC_REPLACE));
        s->str_len = (int64_t)strlen(content);
        if (!(s->str = dup_bytes(content, s->str_len)))
            return tk_fail(L->path, LT_ERR_NOMEM, "out of memory");
        return get_pattern(L, d, where, &s->re);
    }
    if (strcmp(type, "ByteFallback") == 0) {
        LT_TRY(push_dec(L, &s, TOK_DEC_BYTEFALLBACK));
        if (s->joined)
            return tk_fail(L->path, LT_ERR_UNSUPPORTED,
                           "%s: a ByteFallback decoder after Fuse or "
                           "ByteLevel is not supported",
                           where);
        return LT_OK;
    }
    if (strcmp(type, "Fuse") == 0) return push_dec(L, &s, TOK_DEC_FUSE);
    if (strcmp(type, "Strip") == 0) {
        char ch[8];
        int ch_len;
        int64_t start, stop;
        char w[300];
        LT_TRY(get_char(L, d, "content", where, NULL, ch, &ch_len));
        snprintf(w, sizeof w, "%s.start", where);
        LT_TRY(get_int(L, field(d, "start"), w, 0, 1 << 20, &start));
        snprintf(w, sizeof w, "%s.stop", where);
        LT_TRY(get_int(L, field(d, "stop"), w, 0, 1 << 20, &stop));
        LT_TRY(push_dec(L, &s, TOK_DEC_STRIP));
        memcpy(s->ch, ch, sizeof ch);
        s->ch_len = ch_len;
        s->start = start;
        s->stop = stop;
        return LT_OK;
    }
    if (strcmp(type, "Metaspace") == 0) {
        char ch[8];
        int ch_len, scheme;
        LT_TRY(get_char(L, d, "replacement", where, NULL, ch, &ch_len));
        LT_TRY(metaspace_scheme(L, d, where, &scheme));
        LT_TRY(push_dec(L, &s, TOK_DEC_METASPACE));
        memcpy(s->ch, ch, sizeof ch);
        s->ch_len = ch_len;
        s->prepend_scheme = scheme;
        return LT_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) return push_dec(L, &s, TOK_DEC_BYTELEVEL);
    static const char *const known[] = {"WordPiece", "CTC", "BPEDecoder", NULL};
    if (in_list(type, known))
        return tk_fail(L->path, LT_ERR_UNSUPPORTED,
                       "%s: decoder type '%s' is not supported (luatrain implements Sequence, "
                       "Replace, ByteFallback, Fuse, Strip, Metaspace and ByteLevel)",
                       where, type);
    return tk_fail(L->path, LT_ERR_FORMAT, "%s.type '%.100s' is not a tokenizers decoder type",
                   where, type);
}

/* ---- added-token tries ------------------------------------------------------------- */

static int trie_node(tok_trie *tr, uint8_t byte, int32_t *out) {
    if (tr->count == tr->cap) {
        int32_t cap = tr->cap ? tr->cap * 2 : 64;
        tok_trie_node *grown = realloc(tr->nodes, (size_t)cap * sizeof *grown);
        if (!grown) return lt_fail(LT_ERR_NOMEM, "out of memory for the added-token trie");
        tr->nodes = grown;
        tr->cap = cap;
    }
    tr->nodes[tr->count] = (tok_trie_node){.child = -1, .sibling = -1, .added = -1, .byte = byte};
    *out = tr->count++;
    return LT_OK;
}

static int trie_add(tok_trie *tr, const char *s, int64_t n, int32_t added) {
    int32_t node = 0;
    if (tr->count == 0) LT_TRY(trie_node(tr, 0, &node));
    tr->first[(uint8_t)s[0]] = 1;
    for (int64_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        int32_t c = tr->nodes[node].child;
        while (c >= 0 && tr->nodes[c].byte != b) c = tr->nodes[c].sibling;
        if (c < 0) {
            LT_TRY(trie_node(tr, b, &c));
            tr->nodes[c].sibling = tr->nodes[node].child;
            tr->nodes[node].child = c;
        }
        node = c;
    }
    tr->nodes[node].added = added;
    return LT_OK;
}

static int build_tries(tk_load *L) {
    lt_tokenizer *t = L->t;
    tok_ctx *ctx;
    LT_TRY(tok_ctx_new(&ctx));
    lt_text norm = {0};
    int st = LT_OK;
    for (int32_t i = 0; i < t->n_added && st == LT_OK; i++) {
        tok_added *a = &t->added[i];
        if (!a->normalized) {
            st = trie_add(&t->trie_raw, a->content, a->len, i);
            continue;
        }
        /* The reference matches normalized tokens in a second pass over the normalized
           text, by their normalized form. */
        int orig0;
        if ((st = tok_normalize(t, ctx, a->content, a->len, &norm, &orig0)) != LT_OK) break;
        if (!(a->norm = dup_bytes(norm.data ? norm.data : "", norm.len))) {
            st = tk_fail(L->path, LT_ERR_NOMEM, "out of memory");
            break;
        }
        a->norm_len = norm.len;
        if (norm.len > 0) st = trie_add(&t->trie_norm, a->norm, a->norm_len, i);
    }
    lt_text_free(&norm);
    tok_ctx_free(ctx);
    if (st != LT_OK) return st;
    for (int32_t i = 0; i < t->n_added; i++) {
        if (!t->added[i].single_word) continue;
        /* Rust regex's \w: Alphabetic, marks, decimal digits, connector punctuation and the
           joiners (Join_Control). */
        static const char word[] = "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]";
        return tok_regex_compile(&t->word_re, word, (int64_t)strlen(word), 0, L->path,
                                 "single_word check");
    }
    return LT_OK;
}

/* ---- tokenizer_config.json --------------------------------------------------------- */

typedef struct tk_config {
    int has_add_bos, add_bos, has_add_eos, add_eos;
    int has_cleanup, cleanup;
    int has[4];     /* bos, eos, unk, pad keys present */
    int32_t ids[4]; /* their ids, -1 */
} tk_config;

static const char *const SPECIAL_KEYS[4] = {"bos_token", "eos_token", "unk_token", "pad_token"};

/* A config special token: "text" or {"content": "text", ...flags}. Resolves it to an id,
   adding it as a special added token when the tokenizer does not have it as one (as
   transformers does when it builds a fast tokenizer). *id stays -1 for null. */
static int config_token(tk_load *L, const cJSON *j, const char *where, int32_t *id) {
    lt_tokenizer *t = L->t;
    *id = -1;
    if (is_absent(j)) return LT_OK;
    const char *content;
    int special = 1, lstrip = 0, rstrip = 0, single_word = 0, normalized = 0;
    if (cJSON_IsString(j)) {
        content = j->valuestring;
    } else if (cJSON_IsObject(j)) {
        LT_TRY(need_string(L, j, "content", where, &content));
        LT_TRY(token_flags(L, j, where, 1, &special, &lstrip, &rstrip, &single_word, &normalized));
        special = 1;
    } else {
        return tk_fail(L->path, LT_ERR_FORMAT, "%s is %s, not a string or {\"content\": ...}",
                       where, json_type(j));
    }
    if (!*content) return LT_OK;
    int64_t len = (int64_t)strlen(content);
    int32_t found = tok_strmap_get(&t->added_map, content, len);
    if (found >= 0) {
        *id = found;
        return LT_OK;
    }
    LT_TRY(add_token(L, content, special, lstrip, rstrip, single_word, normalized, id));
    return LT_OK;
}

static int parse_config(tk_load *L, const char *config_path, tk_config *cfg) {
    cJSON *root;
    const char *saved = L->path;
    L->path = config_path;
    L->next_id = first_new_id(L->t); /* transformers adds the missing ones in one call */
    int st = parse_json(config_path, &root);
    if (st != LT_OK) {
        L->path = saved;
        return st;
    }
    const cJSON *j;
    if (!is_absent(j = field(root, "add_bos_token"))) {
        cfg->has_add_bos = 1;
        st = get_bool(L, root, "add_bos_token", "tokenizer_config", 0, &cfg->add_bos);
    }
    if (st == LT_OK && !is_absent(j = field(root, "add_eos_token"))) {
        cfg->has_add_eos = 1;
        st = get_bool(L, root, "add_eos_token", "tokenizer_config", 0, &cfg->add_eos);
    }
    if (st == LT_OK && !is_absent(j = field(root, "clean_up_tokenization_spaces"))) {
        cfg->has_cleanup = 1;
        st =
            get_bool(L, root, "clean_up_tokenization_spaces", "tokenizer_config", 0, &cfg->cleanup);
    }
    for (int k = 0; k < 4 && st == LT_OK; k++) {
        j = field(root, SPECIAL_KEYS[k]);
        cfg->has[k] = j != NULL;
        st = config_token(L, j, SPECIAL_KEYS[k], &cfg->ids[k]);
    }
    j = field(root, "additional_special_tokens");
    if (st == LT_OK && !is_absent(j)) {
        if (!cJSON_IsArray(j)) {
            st = tk_fail(config_path, LT_ERR_FORMAT,
                         "additional_special_tokens is %s, not an "
                         "array",
                         json_type(j));
        } else {
            int i = 0;
            for (const cJSON *e = j->child; e && st == LT_OK; e = e->next, i++) {
                char w[64];
                int32_t id;
                snprintf(w, sizeof w, "additional_special_tokens[%d]", i);
                st = config_token(L, e, w, &id);
            }
        }
    }
    cJSON_Delete(root);
    L->path = saved;
    return st;
}

/* ---- assembling -------------------------------------------------------------------- */

void lt_tokenizer_free(lt_tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < TOK_CTX_POOL; i++) tok_ctx_free(atomic_exchange(&t->ctx_pool[i], NULL));
    free(t->path);
    tok_strmap_free(&t->vocab);
    free(t->tok_off);
    free(t->tok_len);
    tok_pairmap_free(&t->merges);
    free(t->merge_new_id);
    free(t->char_ids);
    free(t->cont_prefix);
    free(t->eow_suffix);
    for (int32_t i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].norm);
    }
    free(t->added);
    tok_strmap_free(&t->added_map);
    free(t->added_of);
    free(t->trie_raw.nodes);
    free(t->trie_norm.nodes);
    tok_regex_free(&t->word_re);
    for (int32_t i = 0; i < t->n_norms; i++) {
        tok_regex_free(&t->norms[i].re);
        free(t->norms[i].str);
    }
    free(t->norms);
    for (int32_t i = 0; i < t->n_pres; i++) tok_regex_free(&t->pres[i].re);
    free(t->pres);
    free(t->prefix);
    free(t->suffix);
    for (int32_t i = 0; i < t->n_decs; i++) {
        tok_regex_free(&t->decs[i].re);
        free(t->decs[i].str);
    }
    free(t->decs);
    free(t);
}

/* The first of `names` that is an added (else model) token, or -1. */
static int32_t find_named(const lt_tokenizer *t, const char *const *names) {
    for (; *names; names++) {
        int64_t n = (int64_t)strlen(*names);
        int32_t id = tok_strmap_get(&t->added_map, *names, n);
        if (id < 0) id = tok_strmap_get(&t->vocab, *names, n);
        if (id >= 0) return id;
    }
    return -1;
}

static int finish(tk_load *L, const tk_config *cfg, int have_config) {
    lt_tokenizer *t = L->t;
    lt_tokenizer_info *info = &t->info;
    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>",
                                            NULL};
    static const char *const eos_names[] = {"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>",
                                            NULL};
    static const char *const pad_names[] = {"<pad>", "[PAD]", "<|pad|>", NULL};
    info->bos_id = cfg->has[0]   ? cfg->ids[0]
                   : t->n_prefix ? t->prefix[0]
                                 : find_named(t, bos_names);
    info->eos_id = cfg->has[1]   ? cfg->ids[1]
                   : t->n_suffix ? t->suffix[t->n_suffix - 1]
                                 : find_named(t, eos_names);
    info->unk_id = cfg->has[2] ? cfg->ids[2] : t->unk_id;
    info->pad_id = cfg->has[3] ? cfg->ids[3] : have_config ? -1 : find_named(t, pad_names);

    /* transformers' Llama-style fast tokenizers rebuild the template from add_bos_token /
       add_eos_token; a key that is absent keeps what tokenizer.json's template does. */
    if (cfg->has_add_bos) {
        if (cfg->add_bos && info->bos_id < 0)
            return tk_fail(L->config_path, LT_ERR_FORMAT,
                           "add_bos_token is true but there is no "
                           "bos_token");
        t->n_prefix = 0;
        if (cfg->add_bos) LT_TRY(append_ids(L, &t->prefix, &t->n_prefix, &info->bos_id, 1, 0));
    }
    if (cfg->has_add_eos) {
        if (cfg->add_eos && info->eos_id < 0)
            return tk_fail(L->config_path, LT_ERR_FORMAT,
                           "add_eos_token is true but there is no "
                           "eos_token");
        t->n_suffix = 0;
        if (cfg->add_eos) LT_TRY(append_ids(L, &t->suffix, &t->n_suffix, &info->eos_id, 1, 0));
    }
    for (int32_t i = 0; i < t->n_prefix + t->n_suffix; i++) {
        int32_t id = i < t->n_prefix ? t->prefix[i] : t->suffix[i - t->n_prefix];
        if (!tok_id_valid(t, id))
            return tk_fail(L->path, LT_ERR_FORMAT, "post_processor adds id %d, which is no token",
                           id);
    }
    info->vocab_size = t->n_ids;
    info->add_bos = t->n_prefix > 0;
    info->add_eos = t->n_suffix > 0;
    info->clean_up_spaces = cfg->has_cleanup ? cfg->cleanup : 0;
    info->kind = LT_TOK_KIND_BPE_SENTENCEPIECE;
    for (int32_t i = 0; i < t->n_pres; i++)
        if (t->pres[i].type == TOK_PRE_BYTELEVEL) info->kind = LT_TOK_KIND_BPE_BYTELEVEL;
    for (int32_t i = 0; i < t->n_decs; i++)
        if (t->decs[i].type == TOK_DEC_BYTELEVEL) info->kind = LT_TOK_KIND_BPE_BYTELEVEL;
    if (t->n_decs == 0) {
        tok_dec_step *s;
        LT_TRY(push_dec(L, &s, TOK_DEC_JOIN_SPACE));
    }
    return LT_OK;
}

static int load(tk_load *L, const char *config_path) {
    lt_tokenizer *t = L->t;
    cJSON *root;
    LT_TRY(parse_json(L->path, &root));
    int32_t max_model = -1;
    tk_config cfg;
    memset(&cfg, 0, sizeof cfg);
    int st = LT_OK;
    const cJSON *version = field(root, "version");
    if (!is_absent(version) && !cJSON_IsString(version))
        st = tk_fail(L->path, LT_ERR_FORMAT, "version is %s, not a string", json_type(version));
    if (st == LT_OK) st = parse_model(L, root, &max_model);
    if (st == LT_OK) st = tok_strmap_init(&t->added_map, 16);
    if (st == LT_OK) st = alloc_ids(L, max_model + 1);
    if (st == LT_OK) st = fill_vocab_ids(L);
    if (st == LT_OK) st = fill_char_table(L);
    if (st == LT_OK) check_metaspace_chunks(t);
    if (st == LT_OK) st = parse_added(L, root);
    if (st == LT_OK) st = parse_normalizer(L, field(root, "normalizer"), "normalizer", 0);
    if (st == LT_OK) st = parse_pre(L, field(root, "pre_tokenizer"), "pre_tokenizer");
    if (st == LT_OK) st = parse_post(L, field(root, "post_processor"), "post_processor");
    if (st == LT_OK) st = parse_decoder(L, field(root, "decoder"), "decoder");
    cJSON_Delete(root);
    if (st == LT_OK && config_path) st = parse_config(L, config_path, &cfg);
    if (st == LT_OK) st = build_tries(L);
    if (st == LT_OK) st = finish(L, &cfg, config_path != NULL);
    return st;
}

int lt_tokenizer_load(lt_tokenizer **out, const char *tokenizer_json, const char *config_json) {
    if (!out) return lt_fail(LT_ERR_ARG, "lt_tokenizer_load: out is NULL");
    *out = NULL;
    if (!tokenizer_json) return lt_fail(LT_ERR_ARG, "lt_tokenizer_load: tokenizer_json is NULL");
    lt_tokenizer *t = calloc(1, sizeof *t);
    if (!t || !(t->path = strdup(tokenizer_json))) {
        free(t);
        return lt_fail(LT_ERR_NOMEM, "%s: out of memory", tokenizer_json);
    }
    t->unk_id = -1;
    for (int i = 0; i < TOK_CTX_POOL; i++) atomic_init(&t->ctx_pool[i], NULL);
    tk_load L = {.path = tokenizer_json, .t = t, .config_path = config_json};
    int st = load(&L, config_json);
    if (st != LT_OK) {
        lt_tokenizer_free(t);
        return st;
    }
    *out = t;
    return LT_OK;
}

/* ---- small public calls ------------------------------------------------------------ */

int lt_tokenizer_get_info(const lt_tokenizer *t, lt_tokenizer_info *out) {
    if (!t || !out) return lt_fail(LT_ERR_ARG, "lt_tokenizer_get_info: NULL argument");
    *out = t->info;
    return LT_OK;
}

int lt_tokenizer_token_to_id(const lt_tokenizer *t, const char *token, int64_t len, int32_t *id) {
    if (!t || !id || (!token && len) || len < 0)
        return lt_fail(LT_ERR_ARG, "lt_tokenizer_token_to_id: bad argument");
    *id = tok_strmap_get(&t->added_map, token ? token : "", len);
    if (*id < 0) *id = tok_strmap_get(&t->vocab, token ? token : "", len);
    return LT_OK;
}

int lt_tokenizer_id_to_token(const lt_tokenizer *t, int32_t id, lt_text *out) {
    if (!t || !out) return lt_fail(LT_ERR_ARG, "lt_tokenizer_id_to_token: NULL argument");
    if (!tok_id_valid(t, id))
        return lt_fail(LT_ERR_RANGE, "%s: id %d is no token (vocabulary size %d)", t->path, id,
                       t->n_ids);
    /* As the file spells it: for a normalized added token, its content (decoding shows its
       normalized form). */
    int32_t a = t->added_of[id];
    if (a >= 0) return tok_text_put(out, t->added[a].content, t->added[a].len);
    return tok_text_put(out, t->vocab.pool.data + t->tok_off[id], t->tok_len[id]);
}

int lt_tokenizer_is_special(const lt_tokenizer *t, int32_t id, int32_t *out) {
    if (!t || !out) return lt_fail(LT_ERR_ARG, "lt_tokenizer_is_special: NULL argument");
    if (!tok_id_valid(t, id))
        return lt_fail(LT_ERR_RANGE, "%s: id %d is no token (vocabulary size %d)", t->path, id,
                       t->n_ids);
    *out = t->added_of[id] >= 0 && t->added[t->added_of[id]].special;
    return LT_OK;
}
