/* lines.c - streaming line reader for JSONL datasets, plain or gzip-compressed, and
 * whole-file tensor mappings for pre-tokenized caches. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <zlib.h>

#include "core/internal.h"
#include "lt_io.h"

enum { LINE_MAX_BYTES = 256 << 20, CHUNK = 1 << 16 };

struct lt_lines {
    gzFile gz;
    char *path;
    char in[CHUNK]; /* decompressed bytes not yet consumed: in[pos, end) */
    int64_t pos, end;
    char *buf;      /* the current line, NUL-terminated (it may hold other NULs) */
    int64_t cap;
    int64_t lineno;
    int64_t file_size;
    int eof;
};

int lt_lines_open(lt_lines **out, const char *path) {
    if (!out || !path) return lt_fail(LT_ERR_ARG, "lines_open: NULL argument");
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0) return lt_fail(LT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return lt_fail(LT_ERR_IO, "%s: not a regular file", path);
    lt_lines *r = calloc(1, sizeof *r);
    if (!r) return lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
    r->path = strdup(path);
    r->cap = CHUNK;
    r->buf = malloc((size_t)r->cap);
    /* gzopen reads gzip streams and passes other files through unchanged */
    r->gz = gzopen(path, "rb");
    if (!r->path || !r->buf || !r->gz) {
        int e = errno;
        lt_lines_close(r);
        return lt_fail(LT_ERR_IO, "%s: cannot open: %s", path, e ? strerror(e) : "out of memory");
    }
    r->file_size = st.st_size;
    *out = r;
    return LT_OK;
}

/* Refill `in`; 0 at the end of the data. */
static int refill(lt_lines *r, int64_t *got) {
    int n = gzread(r->gz, r->in, CHUNK);
    if (n < 0) {
        int zerr;
        const char *msg = gzerror(r->gz, &zerr);
        return lt_fail(LT_ERR_FORMAT, "%s:%lld: cannot read: %s", r->path,
                       (long long)(r->lineno + 1), msg);
    }
    if (n == 0) {
        int zerr;
        gzerror(r->gz, &zerr);
        if (zerr == Z_BUF_ERROR) /* input ended inside a gzip member */
            return lt_fail(LT_ERR_FORMAT, "%s:%lld: the gzip stream is truncated", r->path,
                           (long long)(r->lineno + 1));
    }
    r->pos = 0;
    r->end = n;
    *got = n;
    return LT_OK;
}

static int append(lt_lines *r, int64_t *n, const char *src, int64_t len) {
    if (*n + len + 1 > r->cap) {
        if (*n + len + 1 > LINE_MAX_BYTES)
            return lt_fail(LT_ERR_FORMAT, "%s:%lld: line longer than %d MiB", r->path,
                           (long long)(r->lineno + 1), LINE_MAX_BYTES >> 20);
        int64_t cap = r->cap;
        while (cap < *n + len + 1) cap *= 2;
        if (cap > LINE_MAX_BYTES) cap = LINE_MAX_BYTES;
        char *b = realloc(r->buf, (size_t)cap);
        if (!b)
            return lt_fail(LT_ERR_NOMEM, "%s:%lld: out of memory for a long line", r->path,
                           (long long)(r->lineno + 1));
        r->buf = b;
        r->cap = cap;
    }
    memcpy(r->buf + *n, src, (size_t)len);
    *n += len;
    return LT_OK;
}

int lt_lines_next(lt_lines *r, const char **line, int64_t *len, int64_t *lineno, int32_t *has) {
    if (!r || !line || !len || !has) return lt_fail(LT_ERR_ARG, "lines_next: NULL argument");
    *has = 0;
    *line = NULL;
    *len = 0;
    int64_t n = 0;
    int got_any = 0;
    while (!r->eof) {
        if (r->pos == r->end) {
            int64_t got;
            LT_TRY(refill(r, &got));
            if (got == 0) {
                r->eof = 1;
                break;
            }
        }
        const char *start = r->in + r->pos;
        const char *nl = memchr(start, '\n', (size_t)(r->end - r->pos));
        int64_t take = nl ? nl - start : r->end - r->pos;
        LT_TRY(append(r, &n, start, take));
        got_any = 1;
        r->pos += take + (nl ? 1 : 0);
        if (nl) break;
    }
    if (!got_any) return LT_OK;
    if (n > 0 && r->buf[n - 1] == '\r') n--;
    r->buf[n] = '\0';
    r->lineno++;
    *line = r->buf;
    *len = n;
    if (lineno) *lineno = r->lineno;
    *has = 1;
    return LT_OK;
}

int64_t lt_lines_offset(const lt_lines *r) { return r ? (int64_t)gzoffset(r->gz) : 0; }
int64_t lt_lines_file_size(const lt_lines *r) { return r ? r->file_size : 0; }

void lt_lines_close(lt_lines *r) {
    if (!r) return;
    if (r->gz) gzclose(r->gz);
    free(r->buf);
    free(r->path);
    free(r);
}

int lt_tensor_map_file(lt_tensor *out, const char *path, int dtype) {
    if (!out || !path) return lt_fail(LT_ERR_ARG, "tensor_map_file: NULL argument");
    const lt_dtype_traits *tr = lt_dtype_info(dtype);
    if (!tr) return lt_fail(LT_ERR_DTYPE, "tensor_map_file: unsupported dtype %d", dtype);
    lt_mapping *m;
    int64_t size;
    LT_TRY(lt_mapping_open(&m, path, &size));
    int64_t esz = tr->bits / 8;
    if (size % esz != 0) {
        lt_mapping_release(m);
        return lt_fail(LT_ERR_FORMAT, "%s: %lld bytes is not a whole number of %s elements", path,
                       (long long)size, tr->name);
    }
    lt_storage *s;
    int st = lt_storage_new_mapped(&s, m, 0, size);
    lt_mapping_release(m);
    LT_TRY(st);
    lt_tensor_release(out);
    out->storage = s;
    out->dtype_id = dtype;
    out->ndim = 1;
    out->sizes[0] = size / esz;
    out->strides[0] = 1;
    return LT_OK;
}
