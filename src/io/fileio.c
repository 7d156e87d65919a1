/* fileio.c - atomic file writes: a unique temporary file in the target's directory, written
 * in full, fsynced, renamed over the target, then the directory fsynced. A reader of `path`
 * sees the old file or the new one, never a part; a crash or a failure leaves the old one. */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/internal.h"
#include "lt_io.h"

struct lt_atomic_file {
    int fd;
    char *path; /* the target */
    char *tmp;  /* "<dir>/.<base>.tmp-<pid>-<n>-<salt>", created with O_EXCL */
    char *dir;  /* the target's directory, synced after the rename */
    int failed; /* a write failed: commit refuses, the caller should abort */
};

static _Atomic uint64_t lt_tmp_counter;

static void atomic_file_free(lt_atomic_file *f) {
    free(f->path);
    free(f->tmp);
    free(f->dir);
    free(f);
}

/* Close and remove the temporary file; errors are ignored, the failure being reported is
   the one that led here. */
static void discard_tmp(lt_atomic_file *f) {
    if (f->fd >= 0) close(f->fd);
    f->fd = -1;
    unlink(f->tmp);
}

/* Split path into its directory ("." when it has none) and its last component. */
static int split_path(const char *path, char **dir, const char **base) {
    const char *slash = strrchr(path, '/');
    *base = slash ? slash + 1 : path;
    if (!**base)
        return lt_fail(LT_ERR_ARG, "%s: names a directory, not a file", path);
    if (strcmp(*base, ".") == 0 || strcmp(*base, "..") == 0)
        return lt_fail(LT_ERR_ARG, "%s: names a directory, not a file", path);
    size_t dlen = slash ? (size_t)(slash - path) : 1;
    if (slash && dlen == 0) dlen = 1; /* "/name": the root directory */
    *dir = malloc(dlen + 1);
    if (!*dir) return lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
    if (slash)
        memcpy(*dir, slash == path ? "/" : path, dlen);
    else
        memcpy(*dir, ".", 1);
    (*dir)[dlen] = '\0';
    return LT_OK;
}

int lt_atomic_file_open(lt_atomic_file **out, const char *path) {
    if (!out) return lt_fail(LT_ERR_ARG, "lt_atomic_file_open: out is NULL");
    *out = NULL;
    if (!path || !*path) return lt_fail(LT_ERR_ARG, "lt_atomic_file_open: empty path");
    lt_atomic_file *f = calloc(1, sizeof *f);
    if (!f) return lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
    f->fd = -1;
    const char *base;
    int st = split_path(path, &f->dir, &base);
    if (st != LT_OK) {
        atomic_file_free(f);
        return st;
    }
    f->path = strdup(path);
    size_t tmp_cap = strlen(f->dir) + strlen(base) + 80;
    f->tmp = malloc(tmp_cap);
    if (!f->path || !f->tmp) {
        atomic_file_free(f);
        return lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
    }
    /* pid + counter is unique on this host; the clock salt keeps two hosts writing into a
       shared (network) directory apart. O_EXCL settles any remaining race. */
    int err = 0;
    for (int attempt = 0; attempt < 64; attempt++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t n = atomic_fetch_add(&lt_tmp_counter, 1);
        snprintf(f->tmp, tmp_cap, "%s/.%s.tmp-%ld-%llu-%lx", f->dir, base, (long)getpid(),
                 (unsigned long long)n, (unsigned long)(ts.tv_nsec ^ ts.tv_sec));
        f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (f->fd >= 0) break;
        err = errno;
        if (err != EEXIST) break;
    }
    if (f->fd < 0) {
        st = lt_fail(LT_ERR_IO, "%s: cannot create a temporary file in %s: %s", path, f->dir,
                     strerror(err));
        atomic_file_free(f);
        return st;
    }
    /* Replacing a file keeps its permission bits (a model made read-only for others stays
       so); a new file gets the usual 0666 & ~umask. */
    struct stat old;
    if (stat(path, &old) == 0 && S_ISREG(old.st_mode)) fchmod(f->fd, old.st_mode & 07777);
    *out = f;
    return LT_OK;
}

int lt_atomic_file_write(lt_atomic_file *f, const void *data, int64_t nbytes) {
    if (!f) return lt_fail(LT_ERR_ARG, "lt_atomic_file_write: file is NULL");
    if (nbytes < 0)
        return lt_fail(LT_ERR_ARG, "%s: negative write size %lld", f->path, (long long)nbytes);
    if (nbytes > 0 && !data) return lt_fail(LT_ERR_ARG, "%s: write from NULL", f->path);
    if (f->failed) return lt_fail(LT_ERR_IO, "%s: an earlier write failed", f->path);
    const char *p = data;
    while (nbytes > 0) {
        /* Linux writes at most ~2 GiB per call; ask for 1 GiB at a time. */
        size_t want = nbytes > (1 << 30) ? (size_t)1 << 30 : (size_t)nbytes;
        ssize_t got = write(f->fd, p, want);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            f->failed = 1;
            return lt_fail(LT_ERR_IO, "%s: write failed: %s", f->path,
                           got < 0 ? strerror(errno) : "no progress (disk full?)");
        }
        p += got;
        nbytes -= got;
    }
    return LT_OK;
}

void lt_atomic_file_abort(lt_atomic_file *f) {
    if (!f) return;
    discard_tmp(f);
    atomic_file_free(f);
}

int lt_atomic_file_commit(lt_atomic_file *f) {
    if (!f) return lt_fail(LT_ERR_ARG, "lt_atomic_file_commit: file is NULL");
    int st = LT_OK;
    if (f->failed) {
        st = lt_fail(LT_ERR_IO, "%s: not committed: an earlier write failed", f->path);
        goto abort;
    }
    /* EINVAL: the file system cannot sync (some FUSE and special mounts); nothing to do. */
    if (fsync(f->fd) != 0 && errno != EINVAL) {
        st = lt_fail(LT_ERR_IO, "%s: fsync failed: %s", f->path, strerror(errno));
        goto abort;
    }
    /* close can report a deferred write error (NFS). */
    int fd = f->fd;
    f->fd = -1;
    if (close(fd) != 0 && errno != EINTR) {
        st = lt_fail(LT_ERR_IO, "%s: close failed: %s", f->path, strerror(errno));
        goto abort;
    }
    if (rename(f->tmp, f->path) != 0) {
        st = lt_fail(LT_ERR_IO, "%s: cannot rename the temporary file into place: %s", f->path,
                     strerror(errno));
        goto abort;
    }
    /* The rename is durable only once the directory is synced. A directory we may not open
       for reading, or a file system without directory sync, leaves nothing more to do. */
    int dfd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        if (fsync(dfd) != 0 && errno != EINVAL && errno != EBADF)
            st = lt_fail(LT_ERR_IO, "%s: written and renamed, but syncing directory %s failed: %s",
                         f->path, f->dir, strerror(errno));
        close(dfd);
    }
    atomic_file_free(f);
    return st;
abort:
    discard_tmp(f);
    atomic_file_free(f);
    return st;
}

int lt_write_file_atomic(const char *path, const void *data, int64_t nbytes) {
    if (nbytes < 0)
        return lt_fail(LT_ERR_ARG, "%s: negative size %lld", path ? path : "(null)",
                       (long long)nbytes);
    if (nbytes > 0 && !data)
        return lt_fail(LT_ERR_ARG, "%s: data is NULL", path ? path : "(null)");
    lt_atomic_file *f;
    LT_TRY(lt_atomic_file_open(&f, path));
    int st = lt_atomic_file_write(f, data, nbytes);
    if (st != LT_OK) {
        lt_atomic_file_abort(f);
        return st;
    }
    return lt_atomic_file_commit(f);
}
