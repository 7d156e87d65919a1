/* spool.c - files that are only appended to and then mapped whole (lt_spool in lt_io.h):
 * how a tokenized dataset streams to disk while it is built, in memory that does not grow
 * with it. A named spool is an lt_atomic_file renamed into place when finished; an unnamed
 * one is a temporary file unlinked the moment it exists and mapped through /proc/self/fd. */
#define _GNU_SOURCE /* mkostemp */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/internal.h"
#include "lt_io.h"

struct lt_spool {
    lt_atomic_file *atomic; /* named: the temporary file that finish renames over the target */
    char *what;             /* for messages: the target, or "temporary file in <dir>" */
    char *target;           /* named: the path finish maps after the rename */
    char *tmp_name;         /* unnamed, without /proc/self/fd: its name until finish or abort */
    int fd;                 /* unnamed: the file, open for writing; -1 for a named spool */
    int failed;             /* a write failed: finish refuses */
    int64_t bytes;          /* written so far */
};

static void spool_free(lt_spool *s) {
    if (s->atomic) lt_atomic_file_abort(s->atomic);
    if (s->fd >= 0) close(s->fd);
    if (s->tmp_name) unlink(s->tmp_name);
    free(s->what);
    free(s->target);
    free(s->tmp_name);
    free(s);
}

/* /proc/self/fd/N opens the file behind descriptor N, even once the file has no name. */
static void proc_path(char *buf, size_t cap, int fd) {
    snprintf(buf, cap, "/proc/self/fd/%d", fd);
}

/* Create the unnamed file in `dir`. It is unlinked at once when /proc/self/fd reaches it
   (finish maps it from there); otherwise it keeps its name until finish or abort. */
static int open_unnamed(lt_spool *s, const char *dir) {
    size_t cap = strlen(dir) + 32;
    char *name = malloc(cap);
    char *what = malloc(cap);
    if (!name || !what) {
        free(name);
        free(what);
        return lt_fail(LT_ERR_NOMEM, "spool in %s: out of memory", dir);
    }
    snprintf(name, cap, "%s/.luatrain-spool-XXXXXX", dir);
    snprintf(what, cap, "temporary file in %s", dir);
    int fd = mkostemp(name, O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        free(name);
        free(what);
        return lt_fail(LT_ERR_IO, "cannot create a temporary file in %s: %s", dir, strerror(e));
    }
    char proc[48];
    proc_path(proc, sizeof proc, fd);
    int probe = open(proc, O_RDONLY | O_CLOEXEC);
    if (probe >= 0) {
        close(probe);
        unlink(name);
        free(name);
        name = NULL;
    }
    s->fd = fd;
    s->tmp_name = name;
    s->what = what;
    return LT_OK;
}

int lt_spool_open(lt_spool **out, const char *path, const char *tmp_dir) {
    if (!out) return lt_fail(LT_ERR_ARG, "lt_spool_open: out is NULL");
    *out = NULL;
    lt_spool *s = calloc(1, sizeof *s);
    if (!s) return lt_fail(LT_ERR_NOMEM, "lt_spool_open: out of memory");
    s->fd = -1;
    int st;
    if (path) {
        st = lt_atomic_file_open(&s->atomic, path);
        if (st == LT_OK) {
            s->target = strdup(path);
            s->what = strdup(path);
            if (!s->target || !s->what) st = lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
        }
    } else if (tmp_dir) {
        st = open_unnamed(s, tmp_dir);
    } else {
        /* $TMPDIR first, as every tool does; then /var/tmp, which is meant for large files
           and is on disk where /tmp may be a RAM-backed tmpfs; then /tmp. */
        const char *dirs[3];
        int n = 0;
        const char *env = getenv("TMPDIR");
        if (env && *env) dirs[n++] = env;
        dirs[n++] = "/var/tmp";
        dirs[n++] = "/tmp";
        st = LT_ERR_IO;
        for (int i = 0; i < n && st != LT_OK; i++) st = open_unnamed(s, dirs[i]);
    }
    if (st != LT_OK) {
        spool_free(s);
        return st;
    }
    *out = s;
    return LT_OK;
}

int lt_spool_write(lt_spool *s, const void *data, int64_t nbytes) {
    if (!s) return lt_fail(LT_ERR_ARG, "lt_spool_write: spool is NULL");
    if (nbytes < 0)
        return lt_fail(LT_ERR_ARG, "%s: negative write size %lld", s->what, (long long)nbytes);
    if (nbytes > 0 && !data) return lt_fail(LT_ERR_ARG, "%s: write from NULL", s->what);
    if (s->failed) return lt_fail(LT_ERR_IO, "%s: an earlier write failed", s->what);
    if (s->atomic) {
        int st = lt_atomic_file_write(s->atomic, data, nbytes);
        if (st != LT_OK) {
            s->failed = 1;
            return st;
        }
        s->bytes += nbytes;
        return LT_OK;
    }
    const char *p = data;
    while (nbytes > 0) {
        /* Linux writes at most ~2 GiB per call; ask for 1 GiB at a time. */
        size_t want = nbytes > (1 << 30) ? (size_t)1 << 30 : (size_t)nbytes;
        ssize_t got = write(s->fd, p, want);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            s->failed = 1;
            return lt_fail(LT_ERR_IO, "%s: write failed: %s", s->what,
                           got < 0 ? strerror(errno) : "no progress (disk full?)");
        }
        p += got;
        nbytes -= got;
        s->bytes += got;
    }
    return LT_OK;
}

int64_t lt_spool_size(const lt_spool *s) { return s ? s->bytes : 0; }

void lt_spool_abort(lt_spool *s) {
    if (s) spool_free(s);
}

int lt_spool_finish(lt_spool *s, lt_tensor *out, int dtype) {
    if (!s) return lt_fail(LT_ERR_ARG, "lt_spool_finish: spool is NULL");
    const lt_dtype_traits *tr = lt_dtype_info(dtype);
    int st = LT_OK;
    if (!out)
        st = lt_fail(LT_ERR_ARG, "%s: finish needs an output tensor", s->what);
    else if (!tr)
        st = lt_fail(LT_ERR_DTYPE, "%s: cannot map as dtype %d", s->what, dtype);
    else if (s->failed)
        st = lt_fail(LT_ERR_IO, "%s: not finished: an earlier write failed", s->what);
    else if (s->bytes % (tr->bits / 8) != 0)
        st = lt_fail(LT_ERR_ARG, "%s: %lld bytes is not a whole number of %s elements", s->what,
                     (long long)s->bytes, tr->name);
    if (st != LT_OK) {
        spool_free(s);
        return st;
    }
    if (s->atomic) {
        lt_atomic_file *f = s->atomic;
        s->atomic = NULL; /* commit frees it, whatever it returns */
        st = lt_atomic_file_commit(f);
        if (st == LT_OK) st = lt_tensor_map_file(out, s->target, dtype);
    } else if (s->tmp_name) {
        /* mapped by its name, which then goes: the mapping keeps the data */
        st = lt_tensor_map_file(out, s->tmp_name, dtype);
        if (st != LT_OK) lt_fail_prefix(st, "%s: ", s->what);
    } else {
        char proc[48];
        proc_path(proc, sizeof proc, s->fd);
        st = lt_tensor_map_file(out, proc, dtype);
        if (st != LT_OK) lt_fail_prefix(st, "%s: ", s->what);
    }
    spool_free(s);
    return st;
}
