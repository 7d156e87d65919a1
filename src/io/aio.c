/* aio.c - asynchronous, aligned reads and writes of one file by a few threads: where the
 * NVMe-offloaded optimizer state lives (lt_io.h, lt_aio_*).
 *
 * The file is opened with O_DIRECT where the file system takes it (ext4, xfs on a disk; not
 * tmpfs), so the transfers bypass the page cache and the state costs no host memory beyond
 * the pages being moved. O_DIRECT wants the buffer, the offset and the length aligned to the
 * device's block (4096 here, the largest in common use): requests are page-aligned in the
 * file and each thread moves them through a 4096-aligned bounce buffer of its own, so the
 * caller's tensors need no alignment. Without O_DIRECT the same path runs through the page
 * cache.
 *
 * Requests queue in order and are taken by `threads` workers (pread/pwrite of whole
 * buffers, looping on short transfers); a ticket names each. lt_aio_wait waits for one
 * ticket, up to a timeout, and returns its error if it failed. Requests on overlapping
 * ranges are the caller's to order (wait for the write before reading the range back). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/internal.h"
#include "lt_io.h"

enum { AIO_ALIGN = 4096, AIO_BOUNCE = 4 << 20, AIO_MAX_THREADS = 16, AIO_RING = 1 << 14 };

typedef struct req {
    struct req *next;
    int64_t ticket, offset, nbytes;
    void *data; /* the caller's bytes (a tensor's storage, retained) */
    lt_storage *hold;
    int write;
} req;

struct lt_aio {
    int fd, direct, nthreads, stopping;
    char path[512];
    pthread_t threads[AIO_MAX_THREADS];
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    req *head, *tail;
    int64_t issued;            /* the next ticket */
    int64_t finished[AIO_RING]; /* by ticket % AIO_RING: the ticket once it is done, else older */
    int64_t lowest_open;       /* every ticket below this one has finished */
    int failed_status;
    char failed_msg[1024];
};

static int64_t round_up(int64_t n, int64_t a) { return (n + a - 1) / a * a; }

/* Mark ticket t finished. Called with mu held. (A failure is kept in failed_status, which
   every later wait reports.) */
static void mark_done(lt_aio *a, int64_t t) {
    a->finished[t % AIO_RING] = t;
    while (a->lowest_open < a->issued && a->finished[a->lowest_open % AIO_RING] == a->lowest_open)
        a->lowest_open++;
}

static int is_done(const lt_aio *a, int64_t t) {
    return t < a->lowest_open || a->finished[t % AIO_RING] == t;
}

/* Move r through the bounce buffer, block by block. Returns 0 or an errno. */
static int run_req(lt_aio *a, req *r, char *bounce) {
    int64_t done = 0;
    while (done < r->nbytes) {
        int64_t n = r->nbytes - done < AIO_BOUNCE ? r->nbytes - done : AIO_BOUNCE;
        int64_t io = round_up(n, AIO_ALIGN); /* whole blocks in the file */
        int64_t off = r->offset + done;
        if (r->write) {
            memcpy(bounce, (char *)r->data + done, (size_t)n);
            if (io > n) memset(bounce + n, 0, (size_t)(io - n));
        }
        int64_t moved = 0;
        while (moved < io) {
            ssize_t k = r->write ? pwrite(a->fd, bounce + moved, (size_t)(io - moved), off + moved)
                                 : pread(a->fd, bounce + moved, (size_t)(io - moved), off + moved);
            if (k < 0) {
                if (errno == EINTR) continue;
                return errno;
            }
            if (k == 0) {
                if (r->write) return EIO;
                memset(bounce + moved, 0, (size_t)(io - moved)); /* past the end: zeros */
                break;
            }
            moved += k;
        }
        if (!r->write) memcpy((char *)r->data + done, bounce, (size_t)n);
        done += n;
    }
    return 0;
}

static void *worker(void *arg) {
    lt_aio *a = arg;
    char *bounce = NULL;
    int berr = posix_memalign((void **)&bounce, AIO_ALIGN, AIO_BOUNCE);
    pthread_mutex_lock(&a->mu);
    for (;;) {
        while (!a->head && !a->stopping) pthread_cond_wait(&a->work, &a->mu);
        if (!a->head) break;
        req *r = a->head;
        a->head = r->next;
        if (!a->head) a->tail = NULL;
        pthread_mutex_unlock(&a->mu);
        int err = berr ? ENOMEM : run_req(a, r, bounce);
        pthread_mutex_lock(&a->mu);
        if (err && !a->failed_status) {
            a->failed_status = err;
            snprintf(a->failed_msg, sizeof a->failed_msg, "%.400s: %s %lld bytes at %lld: %s", a->path,
                     r->write ? "writing" : "reading", (long long)r->nbytes, (long long)r->offset, strerror(err));
        }
        mark_done(a, r->ticket);
        lt_storage_release(r->hold);
        free(r);
        pthread_cond_broadcast(&a->done);
    }
    pthread_mutex_unlock(&a->mu);
    free(bounce);
    return NULL;
}

int lt_aio_open(lt_aio **out, const char *path, int threads) {
    if (!out || !path) return lt_fail(LT_ERR_ARG, "lt_aio_open: out and path are needed");
    *out = NULL;
    if (threads < 1 || threads > AIO_MAX_THREADS)
        return lt_fail(LT_ERR_RANGE, "aio: %d threads (1 to %d)", threads, AIO_MAX_THREADS);
    lt_aio *a = calloc(1, sizeof *a);
    if (!a) return lt_fail(LT_ERR_NOMEM, "aio: out of memory");
    snprintf(a->path, sizeof a->path, "%s", path);
    a->fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0600);
    a->direct = a->fd >= 0;
    if (a->fd < 0 && errno == EINVAL) a->fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (a->fd < 0) {
        int e = errno;
        free(a);
        return lt_fail(LT_ERR_IO, "%s: cannot open for the offloaded state: %s", path, strerror(e));
    }
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->work, NULL);
    pthread_cond_init(&a->done, NULL);
    a->issued = 1; /* tickets from 1; 0 means "nothing to wait for" */
    a->lowest_open = 1;
    for (int i = 0; i < AIO_RING; i++) a->finished[i] = -1;
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&a->threads[i], NULL, worker, a) != 0) {
            a->nthreads = i;
            lt_aio_close(a);
            return lt_fail(LT_ERR_IO, "aio: cannot start a thread for %s", path);
        }
        a->nthreads = i + 1;
    }
    *out = a;
    return LT_OK;
}

int lt_aio_direct(const lt_aio *a) { return a && a->direct; }

int64_t lt_aio_align(void) { return AIO_ALIGN; }

static int submit(lt_aio *a, int64_t offset, const lt_tensor *t, int write, int64_t *ticket) {
    if (!a || !t || !ticket) return lt_fail(LT_ERR_ARG, "aio: a request needs the file, a tensor and a ticket");
    *ticket = 0;
    LT_TRY(lt_check_cpu(t, write ? "aio write" : "aio read", "tensor"));
    if (!lt_tensor_is_contiguous(t)) return lt_fail(LT_ERR_ARG, "aio: the tensor must be contiguous");
    if (offset < 0 || offset % AIO_ALIGN != 0)
        return lt_fail(LT_ERR_ARG, "aio: offset %lld is not a multiple of %d", (long long)offset, AIO_ALIGN);
    int64_t nbytes = lt_tensor_numel(t) * lt_dtype_size(t->dtype_id);
    req *r = calloc(1, sizeof *r);
    if (!r) return lt_fail(LT_ERR_NOMEM, "aio: out of memory");
    r->offset = offset;
    r->nbytes = nbytes;
    r->data = lt_tensor_data(t);
    r->hold = t->storage;
    r->write = write;
    lt_storage_retain(r->hold);
    pthread_mutex_lock(&a->mu);
    if (a->failed_status) {
        pthread_mutex_unlock(&a->mu);
        lt_storage_release(r->hold);
        free(r);
        return lt_fail(LT_ERR_IO, "aio: an earlier transfer failed: %s", a->failed_msg);
    }
    if (a->issued - a->lowest_open >= AIO_RING) {
        pthread_mutex_unlock(&a->mu);
        lt_storage_release(r->hold);
        free(r);
        return lt_fail(LT_ERR_RANGE, "aio: %d transfers outstanding on %s; wait for some first", AIO_RING, a->path);
    }
    r->ticket = a->issued++;
    if (a->tail) a->tail->next = r;
    else a->head = r;
    a->tail = r;
    *ticket = r->ticket;
    pthread_cond_signal(&a->work);
    pthread_mutex_unlock(&a->mu);
    return LT_OK;
}

int lt_aio_read(lt_aio *a, int64_t offset, lt_tensor *dst, int64_t *ticket) {
    return submit(a, offset, dst, 0, ticket);
}

int lt_aio_write(lt_aio *a, int64_t offset, const lt_tensor *src, int64_t *ticket) {
    return submit(a, offset, src, 1, ticket);
}

int lt_aio_wait(lt_aio *a, int64_t ticket, double timeout_s) {
    if (!a) return lt_fail(LT_ERR_ARG, "lt_aio_wait: no file");
    if (ticket <= 0) return LT_OK;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    double whole = (double)(int64_t)timeout_s;
    until.tv_sec += (time_t)whole;
    until.tv_nsec += (long)((timeout_s - whole) * 1e9);
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&a->mu);
    if (ticket >= a->issued) {
        pthread_mutex_unlock(&a->mu);
        return lt_fail(LT_ERR_ARG, "aio: ticket %lld was never issued", (long long)ticket);
    }
    int rc = 0;
    while (!is_done(a, ticket) && rc == 0) rc = pthread_cond_timedwait(&a->done, &a->mu, &until);
    int failed = a->failed_status;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", a->failed_msg);
    pthread_mutex_unlock(&a->mu);
    if (rc == ETIMEDOUT)
        return lt_fail(LT_ERR_IO, "%s: a transfer did not finish within %g s (a stalled disk?)", a->path, timeout_s);
    if (failed) return lt_fail(LT_ERR_IO, "aio: %s", msg);
    return LT_OK;
}

int lt_aio_close(lt_aio *a) {
    if (!a) return LT_OK;
    pthread_mutex_lock(&a->mu);
    a->stopping = 1;
    pthread_cond_broadcast(&a->work);
    pthread_mutex_unlock(&a->mu);
    for (int i = 0; i < a->nthreads; i++) pthread_join(a->threads[i], NULL);
    int failed = a->failed_status;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", a->failed_msg);
    if (a->fd >= 0) close(a->fd);
    unlink(a->path);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->work);
    pthread_cond_destroy(&a->done);
    free(a);
    if (failed) return lt_fail(LT_ERR_IO, "aio: %s", msg);
    return LT_OK;
}
