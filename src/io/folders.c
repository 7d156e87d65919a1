/* folders.c - folders that commit as one unit (checkpoints, adapters): temporary siblings,
 * durable renames and exchanges, removal of trees without a shell, listings.
 *
 * The invariant every function here keeps: at every moment, the name `path` holds either
 * the previous complete folder or the new complete one. Work in progress and folders on
 * their way out live under hidden sibling names (".<name>.tmp-...", ".<name>.old-...",
 * ".<name>.del-...") that no reader takes for the folder, and a crash leaves at most such
 * leftovers, which the next save removes. */
#define _GNU_SOURCE /* renameat2's flag, O_DIRECTORY, fdopendir */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "core/internal.h"
#include "lt_io.h"

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

/* Deeper trees than this are refused: each level of the walks below holds a descriptor. */
enum { LT_DIR_MAX_DEPTH = 64 };

static _Atomic uint64_t lt_dir_counter;

/* "<a>/<b>" in malloc'd memory, or NULL with the failure recorded. */
static char *join(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    if (na + nb + 2 > PATH_MAX) {
        lt_fail(LT_ERR_ARG, "%s/%s: path too long", a, b);
        return NULL;
    }
    char *s = malloc(na + nb + 2);
    if (!s) {
        lt_fail(LT_ERR_NOMEM, "%s/%s: out of memory", a, b);
        return NULL;
    }
    memcpy(s, a, na);
    s[na] = '/';
    memcpy(s + na + 1, b, nb + 1);
    return s;
}

/* Split `path` (trailing slashes ignored) into its parent folder ("." when it has none)
   and its last component, both malloc'd. */
static int split(const char *path, char **parent, char **base) {
    *parent = *base = NULL;
    if (!path || !*path) return lt_fail(LT_ERR_ARG, "folder path is empty");
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    if (n + 1 > PATH_MAX) return lt_fail(LT_ERR_ARG, "%s: path too long", path);
    size_t b = n;
    while (b > 0 && path[b - 1] != '/') b--;
    size_t blen = n - b;
    if (blen == 0 || (blen == 1 && path[b] == '.') || (blen == 2 && !strncmp(path + b, "..", 2)))
        return lt_fail(LT_ERR_ARG, "%s: does not name a folder inside a parent folder", path);
    size_t plen = b == 0 ? 1 : (b == 1 ? 1 : b - 1);
    *parent = malloc(plen + 1);
    *base = malloc(blen + 1);
    if (!*parent || !*base) {
        free(*parent);
        free(*base);
        *parent = *base = NULL;
        return lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
    }
    if (b == 0)
        memcpy(*parent, ".", 1);
    else
        memcpy(*parent, path, plen);
    (*parent)[plen] = '\0';
    memcpy(*base, path + b, blen);
    (*base)[blen] = '\0';
    return LT_OK;
}

/* A fresh hidden sibling name "<parent>/.<base>.<tag>-<pid>-<n>-<salt>": pid + counter is
   unique on this host, the clock salt keeps two hosts on a shared folder apart. */
static char *sibling_name(const char *parent, const char *base, const char *tag) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t n = atomic_fetch_add(&lt_dir_counter, 1);
    char leaf[NAME_MAX + 1];
    int len = snprintf(leaf, sizeof leaf, ".%s.%s-%ld-%llu-%lx", base, tag, (long)getpid(),
                       (unsigned long long)n, (unsigned long)(ts.tv_nsec ^ ts.tv_sec));
    if (len < 0 || (size_t)len >= sizeof leaf) {
        lt_fail(LT_ERR_ARG, "%s/%s: name too long for a temporary sibling", parent, base);
        return NULL;
    }
    return join(parent, leaf);
}

/* fsync an open descriptor; file systems that cannot sync (EINVAL: some FUSE and special
   mounts) have nothing to make durable. */
static int sync_fd(int fd, const char *what) {
    if (fsync(fd) != 0 && errno != EINVAL)
        return lt_fail(LT_ERR_IO, "%s: fsync failed: %s", what, strerror(errno));
    return LT_OK;
}

int lt_path_kind(const char *path, int32_t *kind) {
    if (!path || !kind) return lt_fail(LT_ERR_ARG, "lt_path_kind: NULL argument");
    struct stat st;
    if (stat(path, &st) != 0) {
        if (errno == ENOENT || errno == ENOTDIR) {
            *kind = LT_PATH_MISSING;
            return LT_OK;
        }
        return lt_fail(LT_ERR_IO, "%s: %s", path, strerror(errno));
    }
    *kind = S_ISREG(st.st_mode) ? LT_PATH_FILE : S_ISDIR(st.st_mode) ? LT_PATH_DIR : LT_PATH_OTHER;
    return LT_OK;
}

int lt_fsync_dir(const char *path) {
    if (!path || !*path) return lt_fail(LT_ERR_ARG, "lt_fsync_dir: empty path");
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return lt_fail(LT_ERR_IO, "%s: cannot open folder: %s", path, strerror(errno));
    int st = sync_fd(fd, path);
    close(fd);
    return st;
}

/* fsync every regular file under `path`, then each folder after its contents. */
static int sync_tree(const char *path, int depth) {
    if (depth > LT_DIR_MAX_DEPTH)
        return lt_fail(LT_ERR_RANGE, "%s: folders nested deeper than %d", path, LT_DIR_MAX_DEPTH);
    lt_dir_list *l;
    LT_TRY(lt_dir_list_open(&l, path));
    int st = LT_OK;
    for (int64_t i = 0; st == LT_OK && i < lt_dir_list_count(l); i++) {
        int32_t kind = lt_dir_list_kind(l, i);
        if (kind != LT_PATH_FILE && kind != LT_PATH_DIR) continue; /* links point elsewhere */
        char *p = join(path, lt_dir_list_name(l, i));
        if (!p) {
            st = LT_ERR_NOMEM;
            break;
        }
        if (kind == LT_PATH_DIR) {
            st = sync_tree(p, depth + 1);
        } else {
            int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            if (fd < 0) {
                st = lt_fail(LT_ERR_IO, "%s: cannot open to sync: %s", p, strerror(errno));
            } else {
                st = sync_fd(fd, p);
                close(fd);
            }
        }
        free(p);
    }
    lt_dir_list_close(l);
    if (st != LT_OK) return st;
    return lt_fsync_dir(path);
}

int lt_dir_sync(const char *path) {
    if (!path || !*path) return lt_fail(LT_ERR_ARG, "lt_dir_sync: empty path");
    return sync_tree(path, 0);
}

int lt_dir_make_temp(const char *path, char *out, int64_t cap) {
    if (!out || cap <= 0) return lt_fail(LT_ERR_ARG, "lt_dir_make_temp: no output buffer");
    out[0] = '\0';
    char *parent, *base;
    LT_TRY(split(path, &parent, &base));
    int st = LT_OK;
    for (int attempt = 0;; attempt++) {
        char *tmp = sibling_name(parent, base, "tmp");
        if (!tmp) {
            st = LT_ERR_ARG;
            break;
        }
        if (mkdir(tmp, 0755) == 0) {
            if ((int64_t)strlen(tmp) + 1 > cap) {
                rmdir(tmp);
                st = lt_fail(LT_ERR_ARG, "%s: temporary folder name longer than the buffer", path);
            } else {
                memcpy(out, tmp, strlen(tmp) + 1);
            }
            free(tmp);
            break;
        }
        int e = errno;
        free(tmp);
        if (e != EEXIST || attempt == 63) {
            st = lt_fail(LT_ERR_IO, "%s: cannot create a temporary folder in %s: %s", path, parent,
                         strerror(e));
            break;
        }
    }
    free(parent);
    free(base);
    return st;
}

/* ---- removal ------------------------------------------------------------------------ */

/* Names in the open folder `dfd` (named `path` for messages), read in full before any is
   removed: readdir's view of a folder changing under it is unspecified. */
static int read_names(int dfd, const char *path, char ***names, int64_t *n) {
    *names = NULL;
    *n = 0;
    int fd = dup(dfd);
    if (fd < 0) return lt_fail(LT_ERR_IO, "%s: %s", path, strerror(errno));
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return lt_fail(LT_ERR_IO, "%s: cannot read folder: %s", path, strerror(errno));
    }
    int st = LT_OK;
    int64_t cap = 0;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            if (errno != 0) st = lt_fail(LT_ERR_IO, "%s: cannot read folder: %s", path, strerror(errno));
            break;
        }
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            char **grown = realloc(*names, (size_t)cap * sizeof *grown);
            if (!grown) {
                st = lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            *names = grown;
        }
        if (!((*names)[*n] = strdup(e->d_name))) {
            st = lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
            break;
        }
        (*n)++;
    }
    closedir(d);
    return st;
}

/* Remove everything inside the open folder `dfd`, never following a symbolic link: links
   are removed, not what they point to. */
static int remove_contents(int dfd, const char *path, int depth) {
    if (depth > LT_DIR_MAX_DEPTH)
        return lt_fail(LT_ERR_RANGE, "%s: folders nested deeper than %d", path, LT_DIR_MAX_DEPTH);
    char **names;
    int64_t n;
    int st = read_names(dfd, path, &names, &n);
    for (int64_t i = 0; st == LT_OK && i < n; i++) {
        const char *name = names[i];
        if (unlinkat(dfd, name, 0) == 0 || errno == ENOENT) continue;
        if (errno != EISDIR && errno != EPERM) {
            st = lt_fail(LT_ERR_IO, "%s/%s: cannot remove: %s", path, name, strerror(errno));
            break;
        }
        /* A folder (unlink gives EISDIR on Linux, EPERM elsewhere): empty it, then remove it. */
        int sub = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0) {
            st = lt_fail(LT_ERR_IO, "%s/%s: cannot remove: %s", path, name, strerror(errno));
            break;
        }
        char *subpath = join(path, name);
        st = subpath ? remove_contents(sub, subpath, depth + 1) : LT_ERR_NOMEM;
        free(subpath);
        close(sub);
        if (st == LT_OK && unlinkat(dfd, name, AT_REMOVEDIR) != 0 && errno != ENOENT)
            st = lt_fail(LT_ERR_IO, "%s/%s: cannot remove folder: %s", path, name, strerror(errno));
    }
    for (int64_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return st;
}

int lt_remove_tree(const char *path) {
    if (!path || !*path) return lt_fail(LT_ERR_ARG, "lt_remove_tree: empty path");
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT) return LT_OK;
        return lt_fail(LT_ERR_IO, "%s: %s", path, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(path) != 0) return lt_fail(LT_ERR_IO, "%s: cannot remove: %s", path, strerror(errno));
        return LT_OK;
    }
    char *parent, *base;
    LT_TRY(split(path, &parent, &base));
    /* A folder under a name readers look at goes to a hidden name first, in one rename, so
       a crash halfway through the removal leaves no partial folder under that name. */
    char *victim = NULL;
    int status = LT_OK;
    if (base[0] != '.') {
        victim = sibling_name(parent, base, "del");
        if (!victim) {
            status = LT_ERR_ARG;
        } else if (rename(path, victim) != 0) {
            status = lt_fail(LT_ERR_IO, "%s: cannot move aside for removal: %s", path, strerror(errno));
        }
    } else {
        victim = strdup(path);
        if (!victim) status = lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
    }
    if (status == LT_OK) {
        int dfd = open(victim, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0) {
            status = lt_fail(LT_ERR_IO, "%s: cannot open folder: %s", victim, strerror(errno));
        } else {
            status = remove_contents(dfd, victim, 0);
            close(dfd);
        }
        if (status == LT_OK && rmdir(victim) != 0)
            status = lt_fail(LT_ERR_IO, "%s: cannot remove folder: %s", victim, strerror(errno));
    }
    free(victim);
    free(parent);
    free(base);
    return status;
}

/* ---- commit -------------------------------------------------------------------------- */

/* Swap the two names in one step; fails with EINVAL, ENOSYS or ENOTSUP/EOPNOTSUPP where
   the kernel or file system cannot. */
static int exchange(const char *a, const char *b) {
#ifdef SYS_renameat2
    return (int)syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE);
#else
    errno = ENOSYS;
    return -1;
#endif
}

static int exchange_unsupported(int e) {
    return e == EINVAL || e == ENOSYS || e == ENOTSUP || e == EOPNOTSUPP;
}

int lt_dir_commit(const char *tmp, const char *path, int32_t flags) {
    if (!tmp || !*tmp) return lt_fail(LT_ERR_ARG, "lt_dir_commit: empty temporary folder");
    if (flags & ~(int32_t)LT_DIR_COMMIT_NO_EXCHANGE)
        return lt_fail(LT_ERR_ARG, "lt_dir_commit: unknown flags %d", (int)flags);
    char *parent, *base, *tparent, *tbase;
    LT_TRY(split(path, &parent, &base));
    int status = split(tmp, &tparent, &tbase);
    if (status != LT_OK) {
        free(parent);
        free(base);
        return status;
    }
    char *aside = NULL;
    struct stat st;
    /* A rename cannot cross file systems and is atomic only within one folder. */
    if (strcmp(parent, tparent) != 0) {
        status = lt_fail(LT_ERR_ARG, "%s: the temporary folder %s is not beside it", path, tmp);
        goto done;
    }
    if (lstat(tmp, &st) != 0 || !S_ISDIR(st.st_mode)) {
        status = lt_fail(LT_ERR_ARG, "%s: the temporary folder %s is missing", path, tmp);
        goto done;
    }
    /* Every file, then the folder: the contents are durable before the name points at them. */
    status = lt_dir_sync(tmp);
    if (status != LT_OK) goto done;

    int exists = lstat(path, &st) == 0;
    if (!exists && errno != ENOENT) {
        status = lt_fail(LT_ERR_IO, "%s: %s", path, strerror(errno));
        goto done;
    }
    if (exists && S_ISLNK(st.st_mode)) {
        status = lt_fail(LT_ERR_ARG, "%s: is a symbolic link; save to the folder it points to", path);
        goto done;
    }
    if (exists && !S_ISDIR(st.st_mode)) {
        status = lt_fail(LT_ERR_IO, "%s: exists and is not a folder", path);
        goto done;
    }
    if (!exists) {
        if (rename(tmp, path) != 0)
            status = lt_fail(LT_ERR_IO, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
        else
            status = lt_fsync_dir(parent);
        goto done;
    }
    if (!(flags & LT_DIR_COMMIT_NO_EXCHANGE)) {
        if (exchange(tmp, path) == 0) {
            /* the previous folder now sits at the temporary name */
            status = lt_fsync_dir(parent);
            if (status == LT_OK) status = lt_remove_tree(tmp);
            if (status != LT_OK)
                lt_fail_prefix(status, "%s: committed, but finishing up failed: ", path);
            goto done;
        }
        if (!exchange_unsupported(errno)) {
            status = lt_fail(LT_ERR_IO, "%s: cannot exchange it with %s: %s", path, tmp, strerror(errno));
            goto done;
        }
    }
    /* No exchange here (some network and FUSE file systems): move the previous folder to a
       hidden name, then the new one in. A crash between the two renames leaves the
       previous folder complete at ".<name>.old-...", and lt_dir_restore puts it back. */
    aside = sibling_name(parent, base, "old");
    if (!aside) {
        status = LT_ERR_ARG;
        goto done;
    }
    if (rename(path, aside) != 0) {
        status = lt_fail(LT_ERR_IO, "%s: cannot move the previous folder aside: %s", path, strerror(errno));
        goto done;
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        if (rename(aside, path) != 0)
            status = lt_fail(LT_ERR_IO, "%s: cannot rename %s into place (%s), nor put the previous folder "
                             "back from %s: %s", path, tmp, strerror(e), aside, strerror(errno));
        else
            status = lt_fail(LT_ERR_IO, "%s: cannot rename %s into place: %s", path, tmp, strerror(e));
        goto done;
    }
    status = lt_fsync_dir(parent);
    if (status == LT_OK) status = lt_remove_tree(aside);
    if (status != LT_OK) lt_fail_prefix(status, "%s: committed, but finishing up failed: ", path);
done:
    free(aside);
    free(parent);
    free(base);
    free(tparent);
    free(tbase);
    return status;
}

int lt_dir_restore(const char *path, int32_t *restored) {
    if (!restored) return lt_fail(LT_ERR_ARG, "lt_dir_restore: restored is NULL");
    *restored = 0;
    if (!path || !*path) return lt_fail(LT_ERR_ARG, "lt_dir_restore: empty path");
    struct stat st;
    if (lstat(path, &st) == 0) return LT_OK; /* in place: nothing to undo */
    if (errno != ENOENT) return lt_fail(LT_ERR_IO, "%s: %s", path, strerror(errno));
    char *parent, *base;
    LT_TRY(split(path, &parent, &base));
    int status = LT_OK;
    lt_dir_list *l = NULL;
    char *best = NULL;
    status = lt_dir_list_open(&l, parent);
    if (status != LT_OK) {
        /* no parent folder: nothing was ever saved here */
        if (lstat(parent, &st) != 0 && errno == ENOENT) status = LT_OK;
        goto done;
    }
    /* ".<base>.old-": normally one; after repeated crashes, the last moved aside. */
    size_t blen = strlen(base);
    struct timespec best_time = { 0, 0 };
    for (int64_t i = 0; i < lt_dir_list_count(l); i++) {
        const char *name = lt_dir_list_name(l, i);
        if (lt_dir_list_kind(l, i) != LT_PATH_DIR || name[0] != '.' || strncmp(name + 1, base, blen) != 0 ||
            strncmp(name + 1 + blen, ".old-", 5) != 0)
            continue;
        char *p = join(parent, name);
        if (!p) {
            status = LT_ERR_NOMEM;
            goto done;
        }
        if (lstat(p, &st) == 0 && (!best || st.st_ctim.tv_sec > best_time.tv_sec ||
                                   (st.st_ctim.tv_sec == best_time.tv_sec &&
                                    st.st_ctim.tv_nsec > best_time.tv_nsec))) {
            free(best);
            best = p;
            best_time = st.st_ctim;
        } else {
            free(p);
        }
    }
    if (!best) goto done;
    if (rename(best, path) != 0) {
        status = lt_fail(LT_ERR_IO, "%s: cannot put the previous folder back from %s: %s", path, best,
                         strerror(errno));
        goto done;
    }
    status = lt_fsync_dir(parent);
    if (status == LT_OK) *restored = 1;
done:
    lt_dir_list_close(l);
    free(best);
    free(parent);
    free(base);
    return status;
}

/* ---- carrying other files over ---------------------------------------------------------- */

/* Copy a regular file's bytes, for file systems that refuse hard links. */
static int copy_file(const char *from, const char *to, mode_t mode) {
    int in = open(from, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (in < 0) return lt_fail(LT_ERR_IO, "%s: cannot open: %s", from, strerror(errno));
    int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode & 07777);
    if (out < 0) {
        int e = errno;
        close(in);
        return lt_fail(LT_ERR_IO, "%s: cannot create: %s", to, strerror(e));
    }
    int status = LT_OK;
    char buf[1 << 16];
    for (;;) {
        ssize_t got = read(in, buf, sizeof buf);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            status = lt_fail(LT_ERR_IO, "%s: read failed: %s", from, strerror(errno));
            break;
        }
        if (got == 0) break;
        for (ssize_t off = 0; off < got;) {
            ssize_t put = write(out, buf + off, (size_t)(got - off));
            if (put < 0 && errno == EINTR) continue;
            if (put <= 0) {
                status = lt_fail(LT_ERR_IO, "%s: write failed: %s", to,
                                 put < 0 ? strerror(errno) : "no progress (disk full?)");
                break;
            }
            off += put;
        }
        if (status != LT_OK) break;
    }
    close(in);
    if (close(out) != 0 && status == LT_OK)
        status = lt_fail(LT_ERR_IO, "%s: close failed: %s", to, strerror(errno));
    return status;
}

static int carry_over(const char *from, const char *to, int depth) {
    if (depth > LT_DIR_MAX_DEPTH)
        return lt_fail(LT_ERR_RANGE, "%s: folders nested deeper than %d", from, LT_DIR_MAX_DEPTH);
    lt_dir_list *l;
    LT_TRY(lt_dir_list_open(&l, from));
    int status = LT_OK;
    for (int64_t i = 0; status == LT_OK && i < lt_dir_list_count(l); i++) {
        const char *name = lt_dir_list_name(l, i);
        char *src = join(from, name), *dst = join(to, name);
        struct stat st;
        if (!src || !dst) {
            status = LT_ERR_NOMEM;
        } else if (lstat(dst, &st) == 0) {
            /* the new folder has its own: it wins */
        } else if (lstat(src, &st) != 0) {
            status = lt_fail(LT_ERR_IO, "%s: %s", src, strerror(errno));
        } else if (S_ISREG(st.st_mode)) {
            /* a second name for the same bytes: nothing copied, and the file survives
               the removal of the previous folder */
            if (link(src, dst) != 0) {
                if (errno == EPERM || errno == ENOTSUP || errno == EOPNOTSUPP || errno == EMLINK ||
                    errno == EXDEV)
                    status = copy_file(src, dst, st.st_mode);
                else
                    status = lt_fail(LT_ERR_IO, "%s: cannot link into %s: %s", src, to, strerror(errno));
            }
        } else if (S_ISDIR(st.st_mode)) {
            if (mkdir(dst, st.st_mode & 07777) != 0)
                status = lt_fail(LT_ERR_IO, "%s: cannot create: %s", dst, strerror(errno));
            else
                status = carry_over(src, dst, depth + 1);
        } else if (S_ISLNK(st.st_mode)) {
            char target[PATH_MAX];
            ssize_t n = readlink(src, target, sizeof target - 1);
            if (n < 0) {
                status = lt_fail(LT_ERR_IO, "%s: cannot read link: %s", src, strerror(errno));
            } else {
                target[n] = '\0';
                if (symlink(target, dst) != 0)
                    status = lt_fail(LT_ERR_IO, "%s: cannot create link: %s", dst, strerror(errno));
            }
        } else {
            status = lt_fail(LT_ERR_UNSUPPORTED, "%s: a special file (socket, pipe or device) cannot be "
                             "carried over into the new folder", src);
        }
        free(src);
        free(dst);
    }
    lt_dir_list_close(l);
    return status;
}

int lt_dir_carry_over(const char *from, const char *to) {
    if (!from || !*from || !to || !*to) return lt_fail(LT_ERR_ARG, "lt_dir_carry_over: empty path");
    struct stat st;
    if (lstat(from, &st) != 0) {
        if (errno == ENOENT) return LT_OK;
        return lt_fail(LT_ERR_IO, "%s: %s", from, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) return lt_fail(LT_ERR_IO, "%s: exists and is not a folder", from);
    return carry_over(from, to, 0);
}

/* ---- listing -------------------------------------------------------------------------- */

struct dir_entry {
    char *name;
    int32_t kind; /* LT_PATH_* */
};

struct lt_dir_list {
    int64_t n, cap;
    struct dir_entry *entries; /* sorted by name, bytewise */
};

static int by_name(const void *a, const void *b) {
    return strcmp(((const struct dir_entry *)a)->name, ((const struct dir_entry *)b)->name);
}

void lt_dir_list_close(lt_dir_list *l) {
    if (!l) return;
    for (int64_t i = 0; i < l->n; i++) free(l->entries[i].name);
    free(l->entries);
    free(l);
}

static int32_t kind_of(int dfd, const struct dirent *e) {
    switch (e->d_type) {
    case DT_REG: return LT_PATH_FILE;
    case DT_DIR: return LT_PATH_DIR;
    case DT_LNK: return LT_PATH_LINK;
    case DT_UNKNOWN: break;
    default: return LT_PATH_OTHER;
    }
    /* some file systems leave d_type unknown: ask for the entry itself */
    struct stat st;
    if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) return LT_PATH_MISSING;
    if (S_ISREG(st.st_mode)) return LT_PATH_FILE;
    if (S_ISDIR(st.st_mode)) return LT_PATH_DIR;
    if (S_ISLNK(st.st_mode)) return LT_PATH_LINK;
    return LT_PATH_OTHER;
}

int lt_dir_list_open(lt_dir_list **out, const char *path) {
    if (!out) return lt_fail(LT_ERR_ARG, "lt_dir_list_open: out is NULL");
    *out = NULL;
    if (!path || !*path) return lt_fail(LT_ERR_ARG, "lt_dir_list_open: empty path");
    DIR *d = opendir(path);
    if (!d) return lt_fail(LT_ERR_IO, "%s: cannot list folder: %s", path, strerror(errno));
    lt_dir_list *l = calloc(1, sizeof *l);
    int status = LT_OK;
    if (!l) {
        status = lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            if (errno != 0) status = lt_fail(LT_ERR_IO, "%s: cannot list folder: %s", path, strerror(errno));
            break;
        }
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        int32_t kind = kind_of(dirfd(d), e);
        if (kind == LT_PATH_MISSING) continue; /* removed while we listed */
        if (l->n == l->cap) {
            int64_t cap = l->cap ? 2 * l->cap : 16;
            struct dir_entry *grown = realloc(l->entries, (size_t)cap * sizeof *grown);
            if (!grown) {
                status = lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            l->entries = grown;
            l->cap = cap;
        }
        char *name = strdup(e->d_name);
        if (!name) {
            status = lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
            break;
        }
        l->entries[l->n].name = name;
        l->entries[l->n].kind = kind;
        l->n++;
    }
    if (status == LT_OK && l->n > 1) qsort(l->entries, (size_t)l->n, sizeof *l->entries, by_name);
done:
    closedir(d);
    if (status != LT_OK) {
        lt_dir_list_close(l);
        return status;
    }
    *out = l;
    return LT_OK;
}

int64_t lt_dir_list_count(const lt_dir_list *l) { return l ? l->n : 0; }

const char *lt_dir_list_name(const lt_dir_list *l, int64_t index) {
    if (!l || index < 0 || index >= l->n) return NULL;
    return l->entries[index].name;
}

int32_t lt_dir_list_kind(const lt_dir_list *l, int64_t index) {
    if (!l || index < 0 || index >= l->n) return LT_PATH_MISSING;
    return l->entries[index].kind;
}
