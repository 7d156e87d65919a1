/* safetensors.c - safetensors files: a strict zero-copy reader and an atomic writer.
 *
 * Layout: [n: u64 little-endian][n bytes of JSON header][data buffer]. The header maps each
 * tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (byte offsets into the
 * data buffer) and may hold "__metadata__": {string: string}.
 *
 * The reader trusts nothing in the file. Before cJSON sees the header, a lexical pass
 * checks it is UTF-8, bounds its nesting, rejects raw control bytes and \u0000 in strings,
 * and records where every number literal starts: cJSON keeps numbers only as doubles, which
 * cannot tell 2 from 2.0 nor hold every int64, so shapes and offsets are read back exactly
 * from the header text. Then every entry is checked, and the tensors must tile the data
 * buffer exactly, as the reference implementation (huggingface/safetensors) requires. */
#include <cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/internal.h"
#include "lt_io.h"

/* The reference implementation's cap; a larger header is refused before it is read. */
#define ST_MAX_HEADER 100000000ULL
/* A valid header nests 3 deep ({ -> entry { -> shape [); this only has to stop abuse, well
   inside cJSON's own limit of 1000. */
enum { ST_MAX_DEPTH = 64 };

/* ---- dtypes ------------------------------------------------------------------------- */

/* The reference writer orders tensors by its Dtype enum, descending ("by alignment"), then
   by name. The enum's relative order for the dtypes luatrain has. */
static int st_dtype_rank(int dtype) {
    switch (dtype) {
    case LT_DTYPE_U8: return 1;
    case LT_DTYPE_I8: return 2;
    case LT_DTYPE_F16: return 3;
    case LT_DTYPE_BF16: return 4;
    case LT_DTYPE_I32: return 5;
    case LT_DTYPE_F32: return 6;
    case LT_DTYPE_I64: return 7;
    default: return 0;
    }
}

/* An exact safetensors dtype name -> lt_dtype, or -1. lt_dtype_from_name also takes
   "f32" and "float32", which a file must not use. */
static int st_dtype_from_name(const char *name) {
    for (int i = 0; i < LT_DTYPE_COUNT; i++) {
        const lt_dtype_traits *tr = lt_dtype_info(i);
        if (tr->st_name && strcmp(tr->st_name, name) == 0) return i;
    }
    return -1;
}

/* Dtypes the format defines that luatrain does not hold: a valid file we cannot load. */
static int st_dtype_is_foreign(const char *name) {
    static const char *const foreign[] = {
        "BOOL", "F4",  "F6_E2M3", "F6_E3M2", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ",
        "F8_E5M2FNUZ", "I16", "U16", "U32", "U64", "F64", "C64"};
    for (size_t i = 0; i < sizeof foreign / sizeof foreign[0]; i++)
        if (strcmp(foreign[i], name) == 0) return 1;
    return 0;
}

/* ---- UTF-8 -------------------------------------------------------------------------- */

/* Length of the valid UTF-8 prefix of s[0..n) (n when all of it is valid): no overlong
   forms, no surrogates, nothing above U+10FFFF, as Rust's str::from_utf8 requires. */
static size_t utf8_valid_prefix(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0) lo = 0xa0;
            if (c == 0xed) hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0) lo = 0x90;
            if (c == 0xf4) hi = 0x8f;
        } else {
            return i;
        }
        if (n - i < len) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80) return i;
        i += len;
    }
    return n;
}

/* ---- the reader --------------------------------------------------------------------- */

typedef struct st_entry {
    char *name;
    int32_t dtype;
    int32_t ndim;
    int64_t sizes[LT_MAX_DIMS];
    int64_t begin, end; /* byte offsets into the data buffer */
} st_entry;

typedef struct st_name_index {
    const char *name;
    int64_t index; /* into entries */
} st_name_index;

struct lt_safetensors {
    char *path;
    lt_mapping *map;
    int64_t data_start; /* 8 + header length: file offset of the data buffer */
    int64_t data_len;
    int64_t count;
    st_entry *entries;       /* (count), in data-offset order */
    st_name_index *by_name;  /* (count), sorted by name, for find */
    int64_t meta_count;
    char **meta;             /* (2 * meta_count): key, value, key, value, ... file order */
};

/* What the checks need while the header is parsed. */
typedef struct st_parse {
    const char *path;
    const char *hdr;  /* NUL-terminated copy of the header (n bytes) */
    size_t hdr_len;
    uint32_t *nums;   /* (num_count): byte offset in hdr of each number literal, in order */
    int64_t num_count;
    int64_t num_cap;
    int64_t data_len;
} st_parse;

/* Fail with "path: message". */
static int st_fail(const st_parse *p, int status, const char *fmt, ...) LT_PRINTF(3, 4);
static int st_fail(const st_parse *p, int status, const char *fmt, ...) {
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return lt_fail(status, "%s: %s", p->path, msg);
}

static int push_number(st_parse *p, size_t pos) {
    if (p->num_count == p->num_cap) {
        int64_t cap = p->num_cap ? 2 * p->num_cap : 64;
        uint32_t *grown = realloc(p->nums, (size_t)cap * sizeof *grown);
        if (!grown) return st_fail(p, LT_ERR_NOMEM, "out of memory reading the header");
        p->nums = grown;
        p->num_cap = cap;
    }
    p->nums[p->num_count++] = (uint32_t)pos;
    return LT_OK;
}

static int is_number_char(char c) {
    return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

/* The lexical pass described at the top. Number literals are the maximal runs of number
   characters starting at '-' or a digit outside strings; when cJSON accepts the header these
   are exactly its numbers, in document order. */
static int scan_header(st_parse *p) {
    const unsigned char *h = (const unsigned char *)p->hdr;
    size_t n = p->hdr_len;
    size_t valid = utf8_valid_prefix(h, n);
    if (valid != n)
        return st_fail(p, LT_ERR_FORMAT, "header is not valid UTF-8 (byte %zu of the header)",
                       valid);
    if (n >= 3 && h[0] == 0xef && h[1] == 0xbb && h[2] == 0xbf)
        return st_fail(p, LT_ERR_FORMAT, "header starts with a UTF-8 byte order mark");
    int depth = 0;
    size_t i = 0;
    while (i < n) {
        unsigned char c = h[i];
        if (c == '"') {
            size_t start = i++;
            while (i < n && h[i] != '"') {
                if (h[i] < 0x20)
                    return st_fail(p, LT_ERR_FORMAT,
                                   "header is not valid JSON: control byte 0x%02x inside a "
                                   "string at byte %zu",
                                   h[i], i);
                if (h[i] == '\\') {
                    if (i + 1 < n && h[i + 1] == 'u' && n - i >= 6 &&
                        memcmp(h + i + 2, "0000", 4) == 0)
                        return st_fail(p, LT_ERR_FORMAT,
                                       "header has a NUL character (\\u0000) in a string at "
                                       "byte %zu",
                                       i);
                    i++;
                }
                i++;
            }
            if (i >= n)
                return st_fail(p, LT_ERR_FORMAT,
                               "header is not valid JSON: unterminated string at byte %zu",
                               start);
            i++;
        } else if (c == '{' || c == '[') {
            if (++depth > ST_MAX_DEPTH)
                return st_fail(p, LT_ERR_FORMAT,
                               "header is nested deeper than %d levels (at byte %zu)",
                               ST_MAX_DEPTH, i);
            i++;
        } else if (c == '}' || c == ']') {
            depth--;
            i++;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            LT_TRY(push_number(p, i));
            while (i < n && is_number_char((char)h[i])) i++;
        } else if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
            /* cJSON would skip any byte below 0x21 as whitespace; JSON allows four. */
            return st_fail(p, LT_ERR_FORMAT, "header is not valid JSON: control byte 0x%02x at "
                           "byte %zu", c, i);
        } else {
            i++;
        }
    }
    return LT_OK;
}

/* Give every cJSON number its index among the number literals, in document order. cJSON's
   deprecated valueint field carries it; the tree is ours and freed after the checks. */
static void index_numbers(cJSON *node, int64_t *next) {
    for (; node; node = node->next) {
        if (cJSON_IsNumber(node)) node->valueint = (int)(*next)++;
        if (node->child) index_numbers(node->child, next);
    }
}

/* "a number", "an array", ... for messages. */
static const char *json_type(const cJSON *j) {
    if (cJSON_IsNull(j)) return "null";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsArray(j)) return "an array";
    if (cJSON_IsObject(j)) return "an object";
    return "an invalid value";
}

/* Read a number node as a plain non-negative integer literal that fits int64 ("12"; not
   "-1", "2.0", "1e3", "012"). `what` names the field in messages. */
static int read_index(const st_parse *p, const char *tname, const char *what, const cJSON *j,
                      int64_t *out) {
    if (!cJSON_IsNumber(j))
        return st_fail(p, LT_ERR_FORMAT,
                       "tensor '%.200s': %s is %s, not a non-negative integer", tname, what,
                       json_type(j));
    int64_t k = j->valueint;
    if (k < 0 || k >= p->num_count)
        return LT_INTERNAL("safetensors: number literal %lld of %lld", (long long)k,
                           (long long)p->num_count);
    const char *s = p->hdr + p->nums[k];
    size_t len = 0;
    while (is_number_char(s[len])) len++;
    int plain = len > 0 && (len == 1 || s[0] != '0');
    uint64_t v = 0;
    int overflow = 0;
    for (size_t i = 0; plain && i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            plain = 0;
            break;
        }
        unsigned d = (unsigned)(s[i] - '0');
        if (v > ((uint64_t)INT64_MAX - d) / 10) overflow = 1;
        else v = v * 10 + d;
    }
    if (!plain)
        return st_fail(p, LT_ERR_FORMAT, "tensor '%.200s': %s is %.*s, not a non-negative integer",
                       tname, what, (int)(len > 40 ? 40 : len), s);
    if (overflow)
        return st_fail(p, LT_ERR_FORMAT, "tensor '%.200s': %s is %.*s, which does not fit int64",
                       tname, what, (int)(len > 40 ? 40 : len), s);
    *out = (int64_t)v;
    return LT_OK;
}

static const char *shape_str(const st_entry *e, char *buf, size_t len) {
    lt_tensor t = {0};
    t.ndim = e->ndim;
    memcpy(t.sizes, e->sizes, sizeof t.sizes);
    return lt_shape_str(&t, buf, len);
}

/* Check one tensor entry {"dtype", "shape", "data_offsets"} and fill e (name excepted). */
static int parse_entry(const st_parse *p, const cJSON *obj, st_entry *e) {
    const char *name = obj->string;
    if (!cJSON_IsObject(obj))
        return st_fail(p, LT_ERR_FORMAT, "tensor '%.200s': entry is %s, not an object", name,
                       json_type(obj));
    const cJSON *dtype = NULL, *shape = NULL, *offsets = NULL;
    for (const cJSON *f = obj->child; f; f = f->next) {
        const cJSON **slot = strcmp(f->string, "dtype") == 0          ? &dtype
                             : strcmp(f->string, "shape") == 0        ? &shape
                             : strcmp(f->string, "data_offsets") == 0 ? &offsets
                                                                      : NULL;
        if (!slot)
            return st_fail(p, LT_ERR_FORMAT,
                           "tensor '%.200s': unexpected field '%.100s' (an entry holds dtype, "
                           "shape and data_offsets)",
                           name, f->string);
        if (*slot)
            return st_fail(p, LT_ERR_FORMAT, "tensor '%.200s': field '%s' appears twice", name,
                           f->string);
        *slot = f;
    }
    const char *missing = !dtype ? "dtype" : !shape ? "shape" : !offsets ? "data_offsets" : NULL;
    if (missing)
        return st_fail(p, LT_ERR_FORMAT, "tensor '%.200s': missing field '%s'", name, missing);

    if (!cJSON_IsString(dtype))
        return st_fail(p, LT_ERR_FORMAT, "tensor '%.200s': dtype is %s, not a string", name,
                       json_type(dtype));
    e->dtype = st_dtype_from_name(dtype->valuestring);
    if (e->dtype < 0) {
        if (st_dtype_is_foreign(dtype->valuestring))
            return st_fail(p, LT_ERR_UNSUPPORTED,
                           "tensor '%.200s': unsupported dtype %s (luatrain reads F32, F16, "
                           "BF16, I64, I32, I8 and U8)",
                           name, dtype->valuestring);
        return st_fail(p, LT_ERR_FORMAT, "tensor '%.200s': unknown dtype '%.40s'", name,
                       dtype->valuestring);
    }
    const char *dt_name = lt_dtype_info(e->dtype)->st_name;

    if (!cJSON_IsArray(shape))
        return st_fail(p, LT_ERR_FORMAT, "tensor '%.200s': shape is %s, not an array", name,
                       json_type(shape));
    int64_t ndim = 0;
    for (const cJSON *d = shape->child; d; d = d->next) ndim++;
    if (ndim > LT_MAX_DIMS)
        return st_fail(p, LT_ERR_UNSUPPORTED,
                       "tensor '%.200s': shape has %lld dims; luatrain supports at most %d",
                       name, (long long)ndim, LT_MAX_DIMS);
    e->ndim = (int32_t)ndim;
    int i = 0;
    for (const cJSON *d = shape->child; d; d = d->next, i++) {
        char what[32];
        snprintf(what, sizeof what, "shape entry %d", i + 1);
        LT_TRY(read_index(p, name, what, d, &e->sizes[i]));
    }
    char sb[256];
    /* Any zero dim makes the tensor empty, whatever the others are; otherwise the product
       must fit. */
    int64_t numel = 1, nbytes;
    for (i = 0; i < e->ndim; i++)
        if (e->sizes[i] == 0) numel = 0;
    for (i = 0; numel && i < e->ndim; i++) {
        if (numel > INT64_MAX / e->sizes[i])
            return st_fail(p, LT_ERR_FORMAT,
                           "tensor '%.200s': shape %s has more elements than fit in 64 bits",
                           name, shape_str(e, sb, sizeof sb));
        numel *= e->sizes[i];
    }
    if (lt_dtype_nbytes(e->dtype, numel, &nbytes) != LT_OK)
        return st_fail(p, LT_ERR_FORMAT, "tensor '%.200s': %s %s overflows a 64-bit byte count",
                       name, dt_name, shape_str(e, sb, sizeof sb));

    if (!cJSON_IsArray(offsets))
        return st_fail(p, LT_ERR_FORMAT, "tensor '%.200s': data_offsets is %s, not an array",
                       name, json_type(offsets));
    int count = 0;
    for (const cJSON *o = offsets->child; o; o = o->next) count++;
    if (count != 2)
        return st_fail(p, LT_ERR_FORMAT,
                       "tensor '%.200s': data_offsets holds %d values, not 2 ([begin, end])",
                       name, count);
    LT_TRY(read_index(p, name, "data_offsets begin", offsets->child, &e->begin));
    LT_TRY(read_index(p, name, "data_offsets end", offsets->child->next, &e->end));
    if (e->begin > e->end)
        return st_fail(p, LT_ERR_FORMAT,
                       "tensor '%.200s': data_offsets [%lld, %lld] end before they begin", name,
                       (long long)e->begin, (long long)e->end);
    if (e->end > p->data_len)
        return st_fail(p, LT_ERR_FORMAT,
                       "tensor '%.200s': data_offsets [%lld, %lld] reach past the end of the "
                       "%lld-byte data buffer (file truncated?)",
                       name, (long long)e->begin, (long long)e->end, (long long)p->data_len);
    if (e->end - e->begin != nbytes)
        return st_fail(p, LT_ERR_FORMAT,
                       "tensor '%.200s': data_offsets [%lld, %lld] hold %lld bytes but %s %s "
                       "needs %lld",
                       name, (long long)e->begin, (long long)e->end,
                       (long long)(e->end - e->begin), dt_name, shape_str(e, sb, sizeof sb),
                       (long long)nbytes);
    return LT_OK;
}

static int cmp_cstr_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Sort names (n) in place; the first name that occurs twice, or NULL. */
static const char *first_duplicate(const char **names, int64_t n) {
    qsort(names, (size_t)n, sizeof *names, cmp_cstr_ptr);
    for (int64_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0) return names[i];
    return NULL;
}

static int cmp_by_offset(const void *a, const void *b) {
    const st_entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp(((const st_name_index *)a)->name, ((const st_name_index *)b)->name);
}

void lt_safetensors_close(lt_safetensors *f) {
    if (!f) return;
    for (int64_t i = 0; i < f->count; i++) free(f->entries[i].name);
    for (int64_t i = 0; i < 2 * f->meta_count; i++) free(f->meta[i]);
    free(f->entries);
    free(f->by_name);
    free(f->meta);
    lt_mapping_release(f->map);
    free(f->path);
    free(f);
}

/* __metadata__: an object of string values with unique keys. */
static int parse_metadata(const st_parse *p, const cJSON *obj, lt_safetensors *f) {
    if (!cJSON_IsObject(obj))
        return st_fail(p, LT_ERR_FORMAT, "__metadata__ is %s, not an object of strings",
                       json_type(obj));
    int64_t n = 0;
    for (const cJSON *m = obj->child; m; m = m->next) {
        if (!cJSON_IsString(m))
            return st_fail(p, LT_ERR_FORMAT,
                           "__metadata__: value of '%.200s' is %s, not a string", m->string,
                           json_type(m));
        n++;
    }
    const char **keys = malloc((size_t)n * sizeof *keys + 1);
    if (!keys) return st_fail(p, LT_ERR_NOMEM, "out of memory reading __metadata__");
    int64_t nk = 0;
    for (const cJSON *m = obj->child; m; m = m->next) keys[nk++] = m->string;
    const char *dup = first_duplicate(keys, n);
    int st = dup ? st_fail(p, LT_ERR_FORMAT, "__metadata__: key '%.200s' appears twice", dup)
                 : LT_OK;
    free(keys);
    if (st != LT_OK) return st;
    f->meta = calloc((size_t)(2 * n + 1), sizeof *f->meta);
    if (!f->meta) return st_fail(p, LT_ERR_NOMEM, "out of memory reading __metadata__");
    for (const cJSON *m = obj->child; m; m = m->next) {
        char *k = strdup(m->string), *v = strdup(m->valuestring);
        if (!k || !v) {
            free(k);
            free(v);
            return st_fail(p, LT_ERR_NOMEM, "out of memory reading __metadata__");
        }
        f->meta[2 * f->meta_count] = k;
        f->meta[2 * f->meta_count + 1] = v;
        f->meta_count++;
    }
    return LT_OK;
}

/* Everything after the header bytes are in memory: JSON, entries, names, tiling. */
static int parse_header(st_parse *p, lt_safetensors *f) {
    LT_TRY(scan_header(p));
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(p->hdr, p->hdr_len, &end, 0);
    if (!root) {
        size_t at = end && end >= p->hdr ? (size_t)(end - p->hdr) : 0;
        if (p->hdr_len == 0) return st_fail(p, LT_ERR_FORMAT, "header is empty");
        return st_fail(p, LT_ERR_FORMAT, "header is not valid JSON (error at byte %zu of %zu)",
                       at, p->hdr_len);
    }
    int st = LT_OK;
    /* Only JSON whitespace may follow the object (the writer pads with spaces). */
    for (const char *q = end; q < p->hdr + p->hdr_len; q++) {
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
            st = st_fail(p, LT_ERR_FORMAT,
                         "header has trailing bytes after the JSON value (byte %zu of %zu)",
                         (size_t)(q - p->hdr), p->hdr_len);
            goto done;
        }
    }
    if (!cJSON_IsObject(root)) {
        st = st_fail(p, LT_ERR_FORMAT, "header is %s, not a JSON object", json_type(root));
        goto done;
    }
    int64_t seen = 0;
    index_numbers(root->child, &seen);
    if (seen != p->num_count) {
        st = LT_INTERNAL("safetensors: %lld JSON numbers but %lld number literals",
                         (long long)seen, (long long)p->num_count);
        goto done;
    }

    int64_t ntensors = 0, nmeta_keys = 0;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (strcmp(c->string, "__metadata__") == 0)
            nmeta_keys++;
        else
            ntensors++;
    }
    if (nmeta_keys > 1) {
        st = st_fail(p, LT_ERR_FORMAT, "header has __metadata__ twice");
        goto done;
    }
    f->entries = calloc((size_t)ntensors + 1, sizeof *f->entries);
    f->by_name = calloc((size_t)ntensors + 1, sizeof *f->by_name);
    if (!f->entries || !f->by_name) {
        st = st_fail(p, LT_ERR_NOMEM, "out of memory for %lld tensor entries", (long long)ntensors);
        goto done;
    }
    for (const cJSON *c = root->child; c; c = c->next) {
        if (strcmp(c->string, "__metadata__") == 0) {
            st = parse_metadata(p, c, f);
        } else {
            st_entry *e = &f->entries[f->count];
            st = parse_entry(p, c, e);
            if (st == LT_OK) {
                e->name = strdup(c->string);
                if (!e->name) st = st_fail(p, LT_ERR_NOMEM, "out of memory for tensor names");
                else f->count++;
            }
        }
        if (st != LT_OK) goto done;
    }

    qsort(f->entries, (size_t)f->count, sizeof *f->entries, cmp_by_offset);
    for (int64_t i = 0; i < f->count; i++) {
        f->by_name[i].name = f->entries[i].name;
        f->by_name[i].index = i;
    }
    qsort(f->by_name, (size_t)f->count, sizeof *f->by_name, cmp_by_name);
    for (int64_t i = 1; i < f->count; i++) {
        if (strcmp(f->by_name[i - 1].name, f->by_name[i].name) == 0) {
            st = st_fail(p, LT_ERR_FORMAT, "tensor name '%.200s' appears twice in the header",
                         f->by_name[i].name);
            goto done;
        }
    }

    /* The tensors, in offset order, must cover [0, data_len) exactly once. */
    int64_t covered = 0;
    for (int64_t i = 0; i < f->count; i++) {
        const st_entry *e = &f->entries[i];
        if (e->begin < covered) {
            const st_entry *prev = &f->entries[i - 1];
            st = st_fail(p, LT_ERR_FORMAT,
                         "tensor '%.200s': data_offsets [%lld, %lld] overlap tensor '%.200s' "
                         "[%lld, %lld]",
                         e->name, (long long)e->begin, (long long)e->end, prev->name,
                         (long long)prev->begin, (long long)prev->end);
            goto done;
        }
        if (e->begin > covered) {
            st = st_fail(p, LT_ERR_FORMAT,
                         "bytes [%lld, %lld) of the data buffer belong to no tensor (a gap "
                         "before tensor '%.200s')",
                         (long long)covered, (long long)e->begin, e->name);
            goto done;
        }
        covered = e->end;
    }
    if (covered != p->data_len)
        st = st_fail(p, LT_ERR_FORMAT,
                     "bytes [%lld, %lld) at the end of the data buffer belong to no tensor",
                     (long long)covered, (long long)p->data_len);
done:
    cJSON_Delete(root);
    return st;
}

int lt_safetensors_open(lt_safetensors **out, const char *path) {
    if (!out) return lt_fail(LT_ERR_ARG, "lt_safetensors_open: out is NULL");
    *out = NULL;
    if (!path) return lt_fail(LT_ERR_ARG, "lt_safetensors_open: path is NULL");
    lt_safetensors *f = calloc(1, sizeof *f);
    st_parse p = {.path = path};
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
    }
    int64_t size = 0;
    int st = lt_mapping_open(&f->map, path, &size);
    if (st != LT_OK) goto fail;
    const unsigned char *base = lt_mapping_data(f->map);
    if (size < 8) {
        st = st_fail(&p, LT_ERR_FORMAT,
                     "file is %lld bytes, too short for the 8-byte header length",
                     (long long)size);
        goto fail;
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | base[i];
    if (n > ST_MAX_HEADER) {
        st = st_fail(&p, LT_ERR_FORMAT,
                     "declared header length %llu is above the %llu-byte limit",
                     (unsigned long long)n, (unsigned long long)ST_MAX_HEADER);
        goto fail;
    }
    if (n > (uint64_t)size - 8) {
        st = st_fail(&p, LT_ERR_FORMAT,
                     "declared header length %llu is larger than the %lld bytes after it "
                     "(file truncated?)",
                     (unsigned long long)n, (long long)size - 8);
        goto fail;
    }
    f->data_start = 8 + (int64_t)n;
    f->data_len = size - f->data_start;
    /* cJSON gets its own NUL-terminated copy: it never reads past the header's end into
       the data or off the end of the mapping. */
    char *hdr = malloc((size_t)n + 1);
    if (!hdr) {
        st = st_fail(&p, LT_ERR_NOMEM, "out of memory for a %llu-byte header",
                     (unsigned long long)n);
        goto fail;
    }
    memcpy(hdr, base + 8, (size_t)n);
    hdr[n] = '\0';
    p.hdr = hdr;
    p.hdr_len = (size_t)n;
    p.data_len = f->data_len;
    st = parse_header(&p, f);
    free(hdr);
    free(p.nums);
    if (st != LT_OK) goto fail;
    *out = f;
    return LT_OK;
fail:
    lt_safetensors_close(f);
    return st;
}

int64_t lt_safetensors_count(const lt_safetensors *f) { return f ? f->count : 0; }

const char *lt_safetensors_name(const lt_safetensors *f, int64_t index) {
    if (!f || index < 0 || index >= f->count) return NULL;
    return f->entries[index].name;
}

int lt_safetensors_find(const lt_safetensors *f, const char *name, int64_t *index) {
    if (!f || !name || !index) return lt_fail(LT_ERR_ARG, "lt_safetensors_find: NULL argument");
    st_name_index key = {.name = name};
    const st_name_index *hit =
        bsearch(&key, f->by_name, (size_t)f->count, sizeof key, cmp_by_name);
    if (!hit)
        return lt_fail(LT_ERR_RANGE, "%s: no tensor named '%.200s' (the file holds %lld)",
                       f->path, name, (long long)f->count);
    *index = hit->index;
    return LT_OK;
}

int lt_safetensors_drop_pages(const lt_safetensors *f, int64_t index) {
    if (!f) return lt_fail(LT_ERR_ARG, "lt_safetensors_drop_pages: NULL file");
    if (index < 0 || index >= f->count)
        return lt_fail(LT_ERR_RANGE, "%s: tensor index %lld out of range (the file holds %lld)",
                       f->path, (long long)index, (long long)f->count);
    const st_entry *e = &f->entries[index];
    return lt_mapping_drop_pages(f->map, f->data_start + e->begin, e->end - e->begin);
}

int lt_safetensors_tensor(const lt_safetensors *f, int64_t index, lt_tensor *out) {
    if (!f || !out) return lt_fail(LT_ERR_ARG, "lt_safetensors_tensor: NULL argument");
    if (index < 0 || index >= f->count)
        return lt_fail(LT_ERR_RANGE, "%s: tensor index %lld out of range (the file holds %lld)",
                       f->path, (long long)index, (long long)f->count);
    const st_entry *e = &f->entries[index];
    int64_t at = f->data_start + e->begin, nbytes = e->end - e->begin;
    int esz = lt_dtype_size(e->dtype);
    lt_tensor t = {0};
    if (at % esz != 0) {
        /* Only reachable for files whose header length is not a multiple of 8: a mapped view
           would give kernels misaligned element pointers. */
        const char *src = (const char *)lt_mapping_data(f->map) + at;
        int st = lt_tensor_from_buffer(&t, e->dtype, e->ndim, e->sizes, src, nbytes);
        if (st != LT_OK) return lt_fail_prefix(st, "%s: tensor '%.200s': ", f->path, e->name);
    } else {
        lt_storage *s;
        LT_TRY(lt_storage_new_mapped(&s, f->map, at, nbytes));
        t.storage = s;
        t.dtype_id = e->dtype;
        t.ndim = e->ndim;
        int64_t stride = 1;
        for (int i = e->ndim - 1; i >= 0; i--) {
            t.sizes[i] = e->sizes[i];
            t.strides[i] = stride;
            stride *= e->sizes[i] > 0 ? e->sizes[i] : 1;
        }
    }
    lt_tensor_release(out);
    *out = t;
    return LT_OK;
}

int64_t lt_safetensors_metadata_count(const lt_safetensors *f) { return f ? f->meta_count : 0; }

const char *lt_safetensors_metadata_key(const lt_safetensors *f, int64_t index) {
    if (!f || index < 0 || index >= f->meta_count) return NULL;
    return f->meta[2 * index];
}

const char *lt_safetensors_metadata_value(const lt_safetensors *f, int64_t index) {
    if (!f || index < 0 || index >= f->meta_count) return NULL;
    return f->meta[2 * index + 1];
}

/* ---- the writer --------------------------------------------------------------------- */

/* A growing byte buffer for the JSON header; `failed` makes every later append a no-op. */
typedef struct st_buf {
    char *data;
    size_t len, cap;
    int failed;
} st_buf;

static void buf_put(st_buf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->cap - b->len < n + 1) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n + 1) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            b->failed = 1;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void buf_puts(st_buf *b, const char *s) { buf_put(b, s, strlen(s)); }

static void buf_int(st_buf *b, int64_t v) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    buf_put(b, tmp, (size_t)n);
}

/* A JSON string escaped as serde_json (the reference) escapes it: quote, backslash and
   control characters only; other bytes, UTF-8 included, as they are. */
static void buf_json_string(st_buf *b, const char *s) {
    buf_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        switch (*c) {
        case '"': buf_put(b, "\\\"", 2); break;
        case '\\': buf_put(b, "\\\\", 2); break;
        case '\b': buf_put(b, "\\b", 2); break;
        case '\f': buf_put(b, "\\f", 2); break;
        case '\n': buf_put(b, "\\n", 2); break;
        case '\r': buf_put(b, "\\r", 2); break;
        case '\t': buf_put(b, "\\t", 2); break;
        default:
            if (*c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", *c);
                buf_put(b, esc, 6);
            } else {
                buf_put(b, (const char *)c, 1);
            }
        }
    }
    buf_put(b, "\"", 1);
}

typedef struct save_item {
    const char *name;
    const lt_tensor *t;
    int64_t nbytes;
} save_item;

static int cmp_save_order(const void *a, const void *b) {
    const save_item *x = a, *y = b;
    int rx = st_dtype_rank(x->t->dtype_id), ry = st_dtype_rank(y->t->dtype_id);
    if (rx != ry) return rx > ry ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int check_utf8(const char *path, const char *what, const char *s) {
    size_t n = strlen(s);
    if (utf8_valid_prefix((const unsigned char *)s, n) != n)
        return lt_fail(LT_ERR_ARG, "%s: %s '%.200s' is not valid UTF-8", path, what, s);
    return LT_OK;
}

/* Check every argument before a byte is written; fill items (n) in file order and say
   whether "format": "pt" must be added. */
static int save_prepare(const char *path, const lt_safetensors_entry *entries, int64_t n,
                        const char *const *kv, int64_t m, save_item *items, int *add_format) {
    int st;
    *add_format = 1;
    for (int64_t i = 0; i < m; i++) {
        const char *k = kv[2 * i], *v = kv[2 * i + 1];
        if (!k || !v)
            return lt_fail(LT_ERR_ARG, "%s: metadata pair %lld has a NULL %s", path,
                           (long long)i + 1, k ? "value" : "key");
        LT_TRY(check_utf8(path, "metadata key", k));
        LT_TRY(check_utf8(path, "metadata value", v));
        if (strcmp(k, "format") == 0) *add_format = 0;
    }
    for (int64_t i = 0; i < n; i++) {
        const char *name = entries[i].name;
        const lt_tensor *t = entries[i].tensor;
        if (!name)
            return lt_fail(LT_ERR_ARG, "%s: tensor %lld has no name", path, (long long)i + 1);
        LT_TRY(check_utf8(path, "tensor name", name));
        if (strcmp(name, "__metadata__") == 0)
            return lt_fail(LT_ERR_ARG, "%s: '__metadata__' is reserved, not a tensor name", path);
        st = lt_check_cpu(t, "safetensors save", "tensor");
        if (st != LT_OK) return lt_fail_prefix(st, "%s: tensor '%.200s': ", path, name);
        const lt_dtype_traits *tr = lt_dtype_info(t->dtype_id);
        if (!tr || !tr->st_name)
            return lt_fail(LT_ERR_DTYPE,
                           "%s: tensor '%.200s': dtype %s has no safetensors form",
                           path, name, tr ? tr->name : "?");
        st = lt_dtype_nbytes(t->dtype_id, lt_tensor_numel(t), &items[i].nbytes);
        if (st != LT_OK) return lt_fail_prefix(st, "%s: tensor '%.200s': ", path, name);
        items[i].name = name;
        items[i].t = t;
    }
    /* Unique names and metadata keys: sort copies of the pointers. */
    int64_t most = n > m ? n : m;
    const char **names = malloc((size_t)most * sizeof *names + 1);
    if (!names) return lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
    for (int64_t i = 0; i < n; i++) names[i] = entries[i].name;
    const char *dup = first_duplicate(names, n);
    st = dup ? lt_fail(LT_ERR_ARG, "%s: tensor name '%.200s' given twice", path, dup) : LT_OK;
    for (int64_t i = 0; st == LT_OK && i < m; i++) names[i] = kv[2 * i];
    if (st == LT_OK && (dup = first_duplicate(names, m)))
        st = lt_fail(LT_ERR_ARG, "%s: metadata key '%.200s' given twice", path, dup);
    free(names);
    if (st != LT_OK) return st;
    qsort(items, (size_t)n, sizeof *items, cmp_save_order);
    return LT_OK;
}

/* The header JSON, padded with spaces to a multiple of 8 bytes. */
static int build_header(const char *path, const save_item *items, int64_t n,
                        const char *const *kv, int64_t m, int add_format, st_buf *b) {
    buf_puts(b, "{\"__metadata__\":{");
    for (int64_t i = 0; i < m; i++) {
        if (i) buf_puts(b, ",");
        buf_json_string(b, kv[2 * i]);
        buf_puts(b, ":");
        buf_json_string(b, kv[2 * i + 1]);
    }
    if (add_format) buf_puts(b, m ? ",\"format\":\"pt\"" : "\"format\":\"pt\"");
    buf_puts(b, "}");
    int64_t offset = 0;
    for (int64_t i = 0; i < n; i++) {
        const lt_tensor *t = items[i].t;
        buf_puts(b, ",");
        buf_json_string(b, items[i].name);
        buf_puts(b, ":{\"dtype\":\"");
        buf_puts(b, lt_dtype_info(t->dtype_id)->st_name);
        buf_puts(b, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            if (d) buf_puts(b, ",");
            buf_int(b, t->sizes[d]);
        }
        buf_puts(b, "],\"data_offsets\":[");
        buf_int(b, offset);
        buf_puts(b, ",");
        if (items[i].nbytes > INT64_MAX - offset)
            return lt_fail(LT_ERR_RANGE, "%s: the tensors hold more than 2^63 bytes", path);
        offset += items[i].nbytes;
        buf_int(b, offset);
        buf_puts(b, "]}");
    }
    buf_puts(b, "}");
    while (b->len % 8) buf_puts(b, " ");
    if (b->failed) return lt_fail(LT_ERR_NOMEM, "%s: out of memory building the header", path);
    return LT_OK;
}

enum { ST_STAGE_BYTES = 4 << 20 };

/* Write a non-contiguous tensor's elements in row-major order, gathered into `stage`
   (stage_elems elements of esz bytes) one chunk at a time. t->ndim >= 1 here: a 0-d tensor
   is always contiguous. */
static int write_strided(lt_atomic_file *af, const lt_tensor *t, char *stage, int64_t stage_elems) {
    int nd = t->ndim, esz = lt_dtype_size(t->dtype_id);
    const char *base = (const char *)t->storage->data + t->offset * esz;
    int64_t total = lt_tensor_numel(t), done = 0;
    int64_t inner = t->sizes[nd - 1], istride = t->strides[nd - 1];
    int64_t idx[LT_MAX_DIMS] = {0};
    int64_t row = 0; /* element offset of the current row: sum idx[d] * strides[d], d < nd-1 */
    while (done < total) {
        int64_t fill = 0;
        while (fill < stage_elems && done < total) {
            int64_t take = inner - idx[nd - 1];
            if (take > stage_elems - fill) take = stage_elems - fill;
            const char *src = base + (row + idx[nd - 1] * istride) * esz;
            char *dst = stage + fill * esz;
            if (istride == 1) {
                memcpy(dst, src, (size_t)(take * esz));
            } else {
                for (int64_t k = 0; k < take; k++)
                    memcpy(dst + k * esz, src + k * istride * esz, (size_t)esz);
            }
            fill += take;
            done += take;
            idx[nd - 1] += take;
            if (idx[nd - 1] == inner) {
                idx[nd - 1] = 0;
                for (int d = nd - 2; d >= 0; d--) {
                    idx[d]++;
                    row += t->strides[d];
                    if (idx[d] < t->sizes[d]) break;
                    row -= idx[d] * t->strides[d];
                    idx[d] = 0;
                }
            }
        }
        LT_TRY(lt_atomic_file_write(af, stage, fill * esz));
    }
    return LT_OK;
}

int lt_safetensors_save(const char *path, const lt_safetensors_entry *entries, int64_t n,
                        const char *const *kv, int64_t m) {
    if (!path || !*path) return lt_fail(LT_ERR_ARG, "lt_safetensors_save: empty path");
    if (n < 0 || m < 0 || (n > 0 && !entries) || (m > 0 && !kv))
        return lt_fail(LT_ERR_ARG, "%s: bad tensor or metadata list (n %lld, m %lld)", path,
                       (long long)n, (long long)m);
    save_item *items = calloc((size_t)n + 1, sizeof *items);
    if (!items) return lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
    st_buf hdr = {0};
    char *stage = NULL;
    lt_atomic_file *af = NULL;
    int add_format;
    int st = save_prepare(path, entries, n, kv, m, items, &add_format);
    if (st == LT_OK) st = build_header(path, items, n, kv, m, add_format, &hdr);
    /* One staging buffer for gathering non-contiguous tensors: as large as the largest of
       them, up to ST_STAGE_BYTES. It holds at least one element of each. */
    int64_t stage_bytes = 0;
    for (int64_t i = 0; st == LT_OK && i < n; i++) {
        if (lt_tensor_is_contiguous(items[i].t)) continue;
        int64_t want = items[i].nbytes < ST_STAGE_BYTES ? items[i].nbytes : ST_STAGE_BYTES;
        if (want > stage_bytes) stage_bytes = want;
    }
    if (st == LT_OK && stage_bytes > 0) {
        stage = malloc((size_t)stage_bytes);
        if (!stage) st = lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
    }
    if (st == LT_OK) st = lt_atomic_file_open(&af, path);
    if (st == LT_OK) {
        unsigned char len8[8];
        for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hdr.len >> (8 * i));
        st = lt_atomic_file_write(af, len8, 8);
        if (st == LT_OK) st = lt_atomic_file_write(af, hdr.data, (int64_t)hdr.len);
        for (int64_t i = 0; st == LT_OK && i < n; i++) {
            const lt_tensor *t = items[i].t;
            if (items[i].nbytes == 0) continue;
            if (lt_tensor_is_contiguous(t)) {
                st = lt_atomic_file_write(af, lt_tensor_data(t), items[i].nbytes);
            } else {
                st = write_strided(af, t, stage, stage_bytes / lt_dtype_size(t->dtype_id));
            }
        }
        if (st == LT_OK)
            st = lt_atomic_file_commit(af);
        else
            lt_atomic_file_abort(af);
    }
    free(stage);
    free(hdr.data);
    free(items);
    return st;
}
