/* comm.c - the comm layer over its back ends (lt_comm.h; ARCHITECTURE.md, contract 8).
 *
 * The back ends (libluatrain_mpi.so for host tensors, libluatrain_nccl.so for device ones)
 * move bytes with non-blocking collectives and nothing else (comm/backend.h). Everything
 * a caller relies on is here, once: tensor checks, storage references held by a work,
 * the deadline on every wait, poisoning after the first failure, avg, and the reductions
 * a back end cannot do itself (bf16 and f16 on MPI, every reduction in deterministic
 * mode), which run as all_to_all + a local sum in rank order (+ all_gather): the
 * reduce-scatter + all-gather shape of a ring all-reduce, with a fixed summation order.
 *
 * The back ends are loaded with dlopen by lt_comm_init, never before, so a process that
 * runs alone has no MPI in it (MPI_Init alone costs about a second here). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/backend.h"
#include "core/internal.h"
#include "lt_comm.h"

/* Internal dtype code for host f64 numbers (no lt_dtype holds f64). */
enum { LT_COMM_DTYPE_F64 = 64 };

enum work_kind { W_ALL_REDUCE, W_REDUCE_SCATTER, W_ALL_GATHER, W_BROADCAST, W_BARRIER,
                 W_GATHER_BYTES };

struct lt_comm {
    lt_comm_info info;
    const lt_comm_backend *host, *dev;
    void *host_state, *dev_state;
    void *host_lib, *dev_lib;
    double timeout;
    int poisoned;
    int finished;
    char failure[LT_COMM_ERRLEN + 256];
    lt_comm_work *live; /* unfinished works, for progress and shutdown */
};

struct lt_comm_work {
    lt_comm *c;
    const lt_comm_backend *be;
    void *st;
    void *req;
    int kind;
    int done;
    int phase;   /* the rank-order reduction: 0 all_to_all in flight, 1 all_gather */
    int local_reduce; /* 1: comm.c reduces (all_to_all + rank-order sum) */
    int scale_avg;    /* divide by world after a native sum */
    char desc[128];   /* "all_reduce sum of 1000003 f32" */
    double deadline;
    lt_storage *refs[2];
    /* operands (element counts; esize bytes each) */
    void *buf;        /* all_reduce: the tensor; reduce_scatter: out */
    const void *in;
    int64_t count;    /* all_reduce: elements; reduce_scatter: elements per rank */
    int dtype, op, esize;
    int64_t chunk;    /* rank-order all_reduce: elements per rank's chunk (padded) */
    void *scratch;    /* [world * chunk] received chunks */
    void *padded;     /* [world * chunk] input padded, then the gathered result; or NULL */
    lt_comm_work *next, *prev;
};

static lt_comm *current;

lt_comm *lt_comm_current(void) { return current; }

/* ---- failures ------------------------------------------------------------------------ */

/* Poisons c with "rank R: <what>: <why>" and returns LT_ERR_IO with that message. */
static int LT_PRINTF(2, 3) poison(lt_comm *c, const char *fmt, ...) {
    if (!c->poisoned) {
        char why[LT_COMM_ERRLEN + 128];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, sizeof why, fmt, ap);
        va_end(ap);
        snprintf(c->failure, sizeof c->failure, "rank %d: %s", c->info.rank, why);
        c->poisoned = 1;
    }
    return lt_fail(LT_ERR_IO, "%s", c->failure);
}

static int check_healthy(lt_comm *c, const char *what) {
    if (!c) return lt_fail(LT_ERR_ARG, "comm %s: no communicator (lt_comm_init first)", what);
    if (c->finished) return lt_fail(LT_ERR_ARG, "comm %s: the communicator was shut down", what);
    if (c->poisoned)
        return lt_fail(LT_ERR_IO, "comm %s refused: an earlier collective failed (%s)", what,
                       c->failure);
    return LT_OK;
}

const char *lt_comm_failure(const lt_comm *c) { return c && c->poisoned ? c->failure : NULL; }

/* ---- loading back ends --------------------------------------------------------------- */

static const lt_comm_backend *load_backend(const char *file, const char *entry, void **lib) {
    char path[PATH_MAX + 64], folder[PATH_MAX];
    const char *env = strcmp(file, "libluatrain_mpi.so") == 0 ? getenv("LT_MPI_LIBRARY")
                                                              : getenv("LT_NCCL_LIBRARY");
    if (env && *env) {
        snprintf(path, sizeof path, "%s", env);
    } else {
        if (lt_core_folder(folder, sizeof folder) != 0)
            return lt_fail(LT_ERR_UNSUPPORTED, "comm: cannot find the folder of libluatrain"),
                   NULL;
        snprintf(path, sizeof path, "%s/%s", folder, file);
    }
    /* RTLD_GLOBAL: Open MPI's own plugins expect libmpi's symbols to be global. */
    void *h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    if (!h)
        return lt_fail(LT_ERR_UNSUPPORTED, "comm: cannot load %s: %s", path, dlerror()), NULL;
    lt_comm_backend_entry fn;
    *(void **)&fn = dlsym(h, entry);
    const lt_comm_backend *be = fn ? fn() : NULL;
    if (!be || be->version != LT_COMM_BACKEND_VERSION) {
        dlclose(h);
        return lt_fail(LT_ERR_UNSUPPORTED, "comm: %s is not a back end of this build (%s)", path,
                       fn ? "another interface version" : "no entry point"), NULL;
    }
    *lib = h;
    return be;
}

/* ---- init ---------------------------------------------------------------------------- */

int lt_comm_init(lt_comm **out, const lt_comm_options *opts) {
    if (!out) return lt_fail(LT_ERR_ARG, "lt_comm_init: out is NULL");
    *out = NULL;
    if (current) return lt_fail(LT_ERR_ARG, "lt_comm_init: the job's communicator exists already");
    lt_comm_options o = { 0 };
    if (opts) o = *opts;
    if (!(o.timeout_s > 0)) o.timeout_s = 600;
    lt_comm_env env;
    LT_TRY(lt_comm_env_read(&env));
    if (env.world_size <= 1)
        return lt_fail(LT_ERR_ARG, "lt_comm_init: this process runs alone (%s); a world of 1 "
                                   "needs no communicator",
                       env.launcher == LT_LAUNCH_NONE ? "no launcher's variables" : env.source);

    lt_comm *c = calloc(1, sizeof *c);
    if (!c) return lt_fail(LT_ERR_NOMEM, "lt_comm_init: out of memory");
    c->timeout = o.timeout_s;
    char err[LT_COMM_ERRLEN] = "";
    int status = LT_OK;
    if (env.launcher == LT_LAUNCH_MPI || env.launcher == LT_LAUNCH_SLURM) {
        c->host = load_backend("libluatrain_mpi.so", "lt_comm_mpi_backend", &c->host_lib);
        if (!c->host) {
            status = lt_fail_prefix(LT_ERR_UNSUPPORTED, "launched by %s, but Open MPI is not usable",
                                    env.source);
            goto fail;
        }
        if (c->host->init(&c->host_state, &env, &o, &c->info, NULL, err) != 0) {
            status = lt_fail(LT_ERR_IO, "rank %d: MPI init: %s", env.rank, err);
            goto fail;
        }
        snprintf(c->info.host_backend, sizeof c->info.host_backend, "%s", c->host->name);
    } else if (o.device != LT_DEVICE_CUDA) {
        status = lt_fail(LT_ERR_ARG, "launch: %s is a torchrun-style launch, which luatrain "
                                     "honours for GPUs (NCCL); CPU ranks are started with "
                                     "mpirun -np %d",
                         env.source, env.world_size);
        goto fail;
    } else {
        c->info.rank = env.rank;
        c->info.world_size = env.world_size;
        c->info.local_rank = env.local_rank >= 0 ? env.local_rank : 0;
        c->info.local_size = env.local_size > 0 ? env.local_size : 1;
        c->info.threads = lt_available_cpus();
    }
    c->info.launcher = env.launcher;
    c->info.deterministic = o.deterministic ? 1 : 0;
    c->info.timeout_s = o.timeout_s;

    if (o.device == LT_DEVICE_CUDA) {
        c->dev = load_backend("libluatrain_nccl.so", "lt_comm_nccl_backend", &c->dev_lib);
        if (!c->dev) {
            status = lt_fail_prefix(LT_ERR_UNSUPPORTED, "rank %d: NCCL is not usable", env.rank);
            goto fail;
        }
        lt_comm_env denv = env;
        denv.rank = c->info.rank;
        denv.local_rank = c->info.local_rank;
        /* torchrun's agent serves its own store on MASTER_PORT: NCCL's id goes through the
           next port, or LT_RENDEZVOUS_PORT. */
        const char *rv = getenv("LT_RENDEZVOUS_PORT");
        if (rv && *rv) {
            char *end;
            long p = strtol(rv, &end, 10);
            if (*end || p < 1 || p > 65535) {
                status = lt_fail(LT_ERR_ARG, "LT_RENDEZVOUS_PORT=\"%s\" is not a TCP port", rv);
                goto fail;
            }
            denv.master_port = (int32_t)p;
        } else if (env.master_port > 0) {
            denv.master_port = env.master_port < 65535 ? env.master_port + 1 : env.master_port - 1;
        }
        lt_comm_bootstrap boot = { c->host, c->host_state };
        lt_comm_info dinfo = c->info;
        if (c->dev->init(&c->dev_state, &denv, &o, &dinfo, c->host ? (void *)&boot : NULL,
                         err) != 0) {
            status = lt_fail(LT_ERR_IO, "rank %d: NCCL init: %s", env.rank, err);
            goto fail;
        }
        c->info.has_device = 1;
    }
    if (o.set_threads && c->info.threads > 0) {
        lt_threads_set_share(c->info.threads);
        lt_set_num_threads(0);
    }
    current = c;
    *out = c;
    return LT_OK;
fail:
    /* A failed init is the end of the job: a half-made MPI world cannot be finalised
       (the other ranks may be waiting in theirs), so the caller aborts. */
    if (c->host_state) {
        c->poisoned = 1;
        snprintf(c->failure, sizeof c->failure, "rank %d: init failed", env.rank);
        current = c;
        *out = NULL;
        return status;
    }
    if (c->host_lib) dlclose(c->host_lib);
    free(c);
    return status;
}

int lt_comm_get_info(const lt_comm *c, lt_comm_info *out) {
    if (!c || !out) return lt_fail(LT_ERR_ARG, "lt_comm_get_info: NULL argument");
    *out = c->info;
    return LT_OK;
}

int lt_comm_set_timeout(lt_comm *c, double seconds) {
    if (!c) return lt_fail(LT_ERR_ARG, "lt_comm_set_timeout: no communicator");
    if (!(seconds > 0) || seconds > 1e7)
        return lt_fail(LT_ERR_RANGE, "comm timeout: %g s is outside (0, 1e7]", seconds);
    c->timeout = seconds;
    c->info.timeout_s = seconds;
    return LT_OK;
}

/* ---- works --------------------------------------------------------------------------- */

static int dtype_size(int dtype) {
    if (dtype == LT_COMM_DTYPE_F64) return 8;
    const lt_dtype_traits *tr = lt_dtype_info(dtype);
    return tr ? tr->bits / 8 : 0;
}

static const char *dtype_name(int dtype) {
    if (dtype == LT_COMM_DTYPE_F64) return "f64";
    const lt_dtype_traits *tr = lt_dtype_info(dtype);
    return tr ? tr->name : "?";
}

static const char *op_name(int op) {
    return op == LT_COMM_SUM ? "sum" : op == LT_COMM_AVG ? "avg" : op == LT_COMM_MAX ? "max" : "?";
}

static lt_comm_work *work_new(lt_comm *c, int kind, const lt_comm_backend *be, void *st) {
    lt_comm_work *w = calloc(1, sizeof *w);
    if (!w) return lt_fail(LT_ERR_NOMEM, "comm: out of memory for a work"), NULL;
    w->c = c;
    w->kind = kind;
    w->be = be;
    w->st = st;
    w->deadline = lt_now() + c->timeout;
    w->next = c->live;
    if (c->live) c->live->prev = w;
    c->live = w;
    return w;
}

static void work_unlink(lt_comm_work *w) {
    lt_comm *c = w->c;
    if (!c) return;
    if (w->prev) w->prev->next = w->next;
    else if (c->live == w) c->live = w->next;
    if (w->next) w->next->prev = w->prev;
    w->next = w->prev = NULL;
}

/* Drops what a work holds once it is complete or abandoned. */
static void work_release(lt_comm_work *w) {
    for (int i = 0; i < 2; i++)
        if (w->refs[i]) {
            lt_storage_release(w->refs[i]);
            w->refs[i] = NULL;
        }
    if (w->scratch) lt_scratch_free(w->scratch);
    if (w->padded) lt_scratch_free(w->padded);
    w->scratch = w->padded = NULL;
    work_unlink(w);
}

static void work_hold(lt_comm_work *w, int i, const lt_tensor *t) {
    if (t && t->storage) {
        lt_storage_retain(t->storage);
        w->refs[i] = t->storage;
    }
}

static float load_f(const void *p, int dtype, int64_t i) {
    switch (dtype) {
    case LT_DTYPE_BF16: return lt_bf16_to_f32_inline(((const uint16_t *)p)[i]);
    case LT_DTYPE_F16: return lt_f16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

static void store_f(void *p, int dtype, int64_t i, float v) {
    switch (dtype) {
    case LT_DTYPE_BF16: ((uint16_t *)p)[i] = lt_f32_to_bf16_inline(v); break;
    case LT_DTYPE_F16: ((uint16_t *)p)[i] = lt_f32_to_f16(v); break;
    default: ((float *)p)[i] = v;
    }
}

/* dst[i] = op over ranks r = 0..world-1, in that order, of src[r * stride + i], i < n.
   Floats accumulate in f32 (f64 for f64) and are rounded to the dtype once. */
static void reduce_rank_order(void *dst, const void *src, int64_t n, int64_t stride, int world,
                              int dtype, int op) {
    if (dtype == LT_DTYPE_I32 || dtype == LT_DTYPE_I64) {
        for (int64_t i = 0; i < n; i++) {
            int64_t acc = 0;
            for (int r = 0; r < world; r++) {
                int64_t j = (int64_t)r * stride + i;
                int64_t v = dtype == LT_DTYPE_I32 ? ((const int32_t *)src)[j]
                                                  : ((const int64_t *)src)[j];
                /* wrapping sum, as MPI's and NCCL's integer sums wrap */
                acc = r == 0 ? v : op == LT_COMM_MAX ? (v > acc ? v : acc)
                                                     : (int64_t)((uint64_t)acc + (uint64_t)v);
            }
            if (dtype == LT_DTYPE_I32) ((int32_t *)dst)[i] = (int32_t)acc;
            else ((int64_t *)dst)[i] = acc;
        }
        return;
    }
    if (dtype == LT_COMM_DTYPE_F64) {
        for (int64_t i = 0; i < n; i++) {
            double acc = 0;
            for (int r = 0; r < world; r++) {
                double v = ((const double *)src)[(int64_t)r * stride + i];
                acc = r == 0 ? v : op == LT_COMM_MAX ? (v > acc || v != v ? v : acc) : acc + v;
            }
            ((double *)dst)[i] = op == LT_COMM_AVG ? acc / world : acc;
        }
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        float acc = 0;
        for (int r = 0; r < world; r++) {
            float v = load_f(src, dtype, (int64_t)r * stride + i);
            /* max propagates NaN, as the back ends' native max does */
            acc = r == 0 ? v : op == LT_COMM_MAX ? (v > acc || v != v ? v : acc) : acc + v;
        }
        store_f(dst, dtype, i, op == LT_COMM_AVG ? acc / (float)world : acc);
    }
}

static void scale_by_world(void *buf, int64_t n, int dtype, int world) {
    if (dtype == LT_COMM_DTYPE_F64) {
        for (int64_t i = 0; i < n; i++) ((double *)buf)[i] /= world;
        return;
    }
    for (int64_t i = 0; i < n; i++) store_f(buf, dtype, i, load_f(buf, dtype, i) / (float)world);
}

/* Runs when the back end says the current request is done: finishes a native avg, or
   moves a rank-order reduction to its next phase. Returns LT_OK; *more = 1 when a new
   request was started. */
static int work_advance(lt_comm_work *w, int *more) {
    *more = 0;
    lt_comm *c = w->c;
    int world = c->info.world_size, rank = c->info.rank;
    char err[LT_COMM_ERRLEN] = "";
    if (!w->local_reduce) {
        if (w->scale_avg)
            scale_by_world(w->buf, w->kind == W_ALL_REDUCE ? w->count : w->count, w->dtype, world);
        return LT_OK;
    }
    if (w->kind == W_REDUCE_SCATTER) {
        /* scratch [world][count]: every rank's slice for this rank */
        reduce_rank_order(w->buf, w->scratch, w->count, w->count, world, w->dtype, w->op);
        return LT_OK;
    }
    /* all_reduce */
    int64_t chunk_bytes = w->chunk * w->esize;
    if (w->phase == 0) {
        /* scratch [world][chunk] -> this rank's reduced chunk, then everyone's chunks. The
           chunk is written into the gather's input slot of `padded` (or of buf when no
           padding was needed), which MPI allows as the in-place slot of an all-gather. */
        void *target = w->padded ? w->padded : w->buf;
        char *mine = (char *)target + (int64_t)rank * chunk_bytes;
        reduce_rank_order(mine, w->scratch, w->chunk, w->chunk, world, w->dtype, w->op);
        w->phase = 1;
        if (w->be->all_gather(w->st, mine, target, chunk_bytes, &w->req, err) != 0)
            return poison(c, "%s: %s", w->desc, err);
        *more = 1;
        return LT_OK;
    }
    if (w->padded) memcpy(w->buf, w->padded, (size_t)(w->count * w->esize));
    return LT_OK;
}

/* One look at a work: *done = 1 when it has completed. A deadline passed poisons. */
static int work_poll(lt_comm_work *w, int *done) {
    *done = w->done;
    if (w->done) return LT_OK;
    lt_comm *c = w->c;
    if (c->poisoned) {
        if (w->req) w->be->cancel(w->st, w->req);
        w->req = NULL;
        work_release(w);
        w->done = -1;
        return lt_fail(LT_ERR_IO, "%s abandoned: %s", w->desc, c->failure);
    }
    char err[LT_COMM_ERRLEN] = "";
    for (;;) {
        int d = 0;
        if (w->be->test(w->st, w->req, &d, err) != 0) {
            w->req = NULL;
            int st = poison(c, "%s failed: %s", w->desc, err);
            work_release(w);
            w->done = -1;
            return st;
        }
        if (!d) break;
        w->req = NULL;
        int more = 0;
        int st = work_advance(w, &more);
        if (st != LT_OK) {
            work_release(w);
            w->done = -1;
            return st;
        }
        if (!more) {
            w->done = 1;
            work_release(w);
            *done = 1;
            return LT_OK;
        }
    }
    if (lt_now() > w->deadline) {
        w->be->cancel(w->st, w->req);
        w->req = NULL;
        int st = poison(c, "%s timed out after %g s waiting for the other ranks (one of them "
                           "failed, was killed, or is stuck before this collective)",
                        w->desc, c->timeout);
        work_release(w);
        w->done = -1;
        return st;
    }
    return LT_OK;
}

int lt_comm_work_test(lt_comm_work *w, int32_t *done) {
    if (!w || !done) return lt_fail(LT_ERR_ARG, "lt_comm_work_test: NULL argument");
    int d = 0;
    int st = work_poll(w, &d);
    *done = d == 1;
    if (st == LT_OK && w->done < 0) return lt_fail(LT_ERR_IO, "%s failed earlier", w->desc);
    return st;
}

int lt_comm_work_wait(lt_comm_work *w) {
    if (!w) return lt_fail(LT_ERR_ARG, "lt_comm_work_wait: NULL work");
    if (w->done < 0) return lt_fail(LT_ERR_IO, "%s failed earlier", w->desc);
    /* MPI moves data only inside its calls, so the wait polls without sleeping: a sleep
       between polls stalls every round of a large collective (a 60 MB all-reduce took
       twice as long with 50 us naps). Each poll yields the core, so ranks that
       oversubscribe the cores leave them to the peers they wait for. A wait that has
       lasted a second (a peer far behind, or gone) naps 1 ms between polls. */
    double start = lt_now();
    for (long polls = 0;; polls++) {
        int done = 0;
        LT_TRY(work_poll(w, &done));
        if (done) return LT_OK;
        if (polls < 64) continue;
        if (lt_now() - start < 1.0) {
            sched_yield();
            continue;
        }
        struct timespec ts = { 0, 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
}

void lt_comm_work_free(lt_comm_work *w) {
    if (!w) return;
    if (!w->done) {
        /* An unfinished work is waited for: its buffers are the caller's. A failure is
           recorded in the communicator (poisoned), which the next call reports. */
        if (lt_comm_work_wait(w) != LT_OK) lt_clear_error();
    }
    work_release(w);
    free(w);
}

int lt_comm_progress(lt_comm *c) {
    LT_TRY(check_healthy(c, "progress"));
    for (lt_comm_work *w = c->live, *next; w; w = next) {
        next = w->next;
        int done;
        LT_TRY(work_poll(w, &done));
    }
    char err[LT_COMM_ERRLEN] = "";
    if (c->host && c->host->progress(c->host_state, err) != 0)
        return poison(c, "progress: %s", err);
    if (c->dev && c->dev->progress(c->dev_state, err) != 0)
        return poison(c, "progress: %s", err);
    return LT_OK;
}

/* Either hands the started work to the caller or waits for it and frees it. */
static int finish(lt_comm_work *w, lt_comm_work **out) {
    if (out) {
        *out = w;
        return LT_OK;
    }
    int st = lt_comm_work_wait(w);
    if (st != LT_OK) {
        /* keep this message: freeing must not overwrite it */
        w->done = w->done ? w->done : -1;
    }
    work_release(w);
    free(w);
    return st;
}

/* The started-request error path of a collective: poison, release, free. */
static int start_failed(lt_comm_work *w, const char *err) {
    int st = poison(w->c, "%s failed to start: %s", w->desc, err);
    work_release(w);
    free(w);
    return st;
}

/* ---- tensor collectives -------------------------------------------------------------- */

/* The back end for t's device, or an error naming the collective. */
static int pick(lt_comm *c, const lt_tensor *t, const char *what, const lt_comm_backend **be,
                void **st) {
    if (!t || !t->storage) return lt_fail(LT_ERR_ARG, "comm %s: an empty tensor", what);
    if (!lt_tensor_is_contiguous(t))
        return lt_fail(LT_ERR_ARG, "comm %s: the tensor is not contiguous (make a contiguous "
                                   "copy first)", what);
    if (lt_tensor_device_type(t) == LT_DEVICE_CUDA) {
        if (!c->dev)
            return lt_fail(LT_ERR_DEVICE, "comm %s: a CUDA tensor, but this job's communicator "
                                          "has no device back end (init with device=cuda)", what);
        *be = c->dev;
        *st = c->dev_state;
    } else {
        if (!c->host)
            return lt_fail(LT_ERR_DEVICE, "comm %s: a host tensor, but this job has no host back "
                                          "end (torchrun launches are for CUDA tensors; use mpirun "
                                          "for CPU ranks)", what);
        *be = c->host;
        *st = c->host_state;
    }
    return LT_OK;
}

static int check_reduction(int dtype, int op, const char *what) {
    if (op != LT_COMM_SUM && op != LT_COMM_AVG && op != LT_COMM_MAX)
        return lt_fail(LT_ERR_ARG, "comm %s: op %d is not sum, avg or max", what, op);
    int is_float = dtype == LT_DTYPE_F32 || dtype == LT_DTYPE_BF16 || dtype == LT_DTYPE_F16;
    int is_int = dtype == LT_DTYPE_I32 || dtype == LT_DTYPE_I64;
    if (!is_float && !is_int)
        return lt_fail(LT_ERR_DTYPE, "comm %s: %s tensors are not reduced (only gathered and "
                                     "broadcast)", what, dtype_name(dtype));
    if (is_int && op == LT_COMM_AVG)
        return lt_fail(LT_ERR_DTYPE, "comm %s: avg of %s tensors would round; sum them and "
                                     "divide", what, dtype_name(dtype));
    return LT_OK;
}

int lt_comm_all_reduce(lt_comm *c, lt_tensor *t, int op, lt_comm_work **out) {
    if (out) *out = NULL;
    LT_TRY(check_healthy(c, "all_reduce"));
    const lt_comm_backend *be = NULL;
    void *st = NULL;
    LT_TRY(pick(c, t, "all_reduce", &be, &st));
    LT_TRY(check_reduction(t->dtype_id, op, "all_reduce"));
    int64_t n = lt_tensor_numel(t);
    int world = c->info.world_size;
    lt_comm_work *w = work_new(c, W_ALL_REDUCE, be, st);
    if (!w) return lt_last_status();
    snprintf(w->desc, sizeof w->desc, "all_reduce %s of %lld %s", op_name(op), (long long)n,
             dtype_name(t->dtype_id));
    work_hold(w, 0, t);
    w->buf = lt_tensor_data(t);
    w->count = n;
    w->dtype = t->dtype_id;
    w->op = op;
    w->esize = dtype_size(t->dtype_id);
    char err[LT_COMM_ERRLEN] = "";
    int native_op = be->reduces(st, w->dtype, op) ? op
                    : op == LT_COMM_AVG && be->reduces(st, w->dtype, LT_COMM_SUM) ? LT_COMM_SUM
                                                                                 : -1;
    if (be == c->dev && native_op < 0) {
        work_release(w);
        free(w);
        return lt_fail(LT_ERR_DTYPE, "comm all_reduce: NCCL does not reduce %s", dtype_name(t->dtype_id));
    }
    int rank_order = be == c->host && (c->info.deterministic || native_op < 0);
    if (n == 0) { /* nothing to move, but every rank still meets the others */
        if (be->barrier(st, &w->req, err) != 0) return start_failed(w, err);
        return finish(w, out);
    }
    if (!rank_order) {
        w->scale_avg = op == LT_COMM_AVG && native_op == LT_COMM_SUM;
        if (be->all_reduce(st, w->buf, n, w->dtype, native_op, &w->req, err) != 0)
            return start_failed(w, err);
        return finish(w, out);
    }
    /* all_to_all of world chunks, a rank-order sum of this rank's chunk, all_gather. */
    w->local_reduce = 1;
    w->chunk = (n + world - 1) / world;
    int64_t chunk_bytes = w->chunk * w->esize, total = chunk_bytes * world;
    w->scratch = lt_scratch_alloc(total);
    if (!w->scratch) {
        work_release(w);
        free(w);
        return lt_fail_prefix(LT_ERR_NOMEM, "comm %s", "all_reduce");
    }
    const void *src = w->buf;
    if (w->chunk * world != n) {
        w->padded = lt_scratch_alloc(total);
        if (!w->padded) {
            work_release(w);
            free(w);
            return lt_fail_prefix(LT_ERR_NOMEM, "comm %s", "all_reduce");
        }
        memcpy(w->padded, w->buf, (size_t)(n * w->esize));
        memset((char *)w->padded + n * w->esize, 0, (size_t)(total - n * w->esize));
        src = w->padded;
    }
    if (be->all_to_all(st, src, w->scratch, chunk_bytes, &w->req, err) != 0)
        return start_failed(w, err);
    return finish(w, out);
}

int lt_comm_reduce_scatter(lt_comm *c, lt_tensor *out_t, const lt_tensor *in, int op,
                           lt_comm_work **out) {
    if (out) *out = NULL;
    LT_TRY(check_healthy(c, "reduce_scatter"));
    const lt_comm_backend *be = NULL, *be2 = NULL;
    void *st = NULL, *st2 = NULL;
    LT_TRY(pick(c, out_t, "reduce_scatter", &be, &st));
    LT_TRY(pick(c, in, "reduce_scatter", &be2, &st2));
    if (be != be2) return lt_fail(LT_ERR_DEVICE, "comm reduce_scatter: in and out on different devices");
    if (in->dtype_id != out_t->dtype_id)
        return lt_fail(LT_ERR_DTYPE, "comm reduce_scatter: in is %s, out is %s",
                       dtype_name(in->dtype_id), dtype_name(out_t->dtype_id));
    LT_TRY(check_reduction(in->dtype_id, op, "reduce_scatter"));
    int world = c->info.world_size;
    int64_t n = lt_tensor_numel(out_t);
    if (lt_tensor_numel(in) != n * world)
        return lt_fail(LT_ERR_SHAPE, "comm reduce_scatter: in has %lld elements, not %d x %lld "
                                     "(world x out)",
                       (long long)lt_tensor_numel(in), world, (long long)n);
    if (lt_tensor_data(in) == lt_tensor_data(out_t) && world > 1)
        return lt_fail(LT_ERR_ARG, "comm reduce_scatter: in and out overlap");
    lt_comm_work *w = work_new(c, W_REDUCE_SCATTER, be, st);
    if (!w) return lt_last_status();
    snprintf(w->desc, sizeof w->desc, "reduce_scatter %s of %d x %lld %s", op_name(op), world,
             (long long)n, dtype_name(in->dtype_id));
    work_hold(w, 0, out_t);
    work_hold(w, 1, in);
    w->buf = lt_tensor_data(out_t);
    w->in = lt_tensor_data(in);
    w->count = n;
    w->dtype = in->dtype_id;
    w->op = op;
    w->esize = dtype_size(in->dtype_id);
    char err[LT_COMM_ERRLEN] = "";
    int native_op = be->reduces(st, w->dtype, op) ? op
                    : op == LT_COMM_AVG && be->reduces(st, w->dtype, LT_COMM_SUM) ? LT_COMM_SUM
                                                                                 : -1;
    if (be == c->dev && native_op < 0) {
        work_release(w);
        free(w);
        return lt_fail(LT_ERR_DTYPE, "comm reduce_scatter: NCCL does not reduce %s", dtype_name(in->dtype_id));
    }
    if (n == 0) {
        if (be->barrier(st, &w->req, err) != 0) return start_failed(w, err);
        return finish(w, out);
    }
    if (!(be == c->host && (c->info.deterministic || native_op < 0))) {
        w->scale_avg = op == LT_COMM_AVG && native_op == LT_COMM_SUM;
        if (be->reduce_scatter(st, w->in, w->buf, n, w->dtype, native_op, &w->req, err) != 0)
            return start_failed(w, err);
        return finish(w, out);
    }
    w->local_reduce = 1;
    w->scratch = lt_scratch_alloc(n * w->esize * world);
    if (!w->scratch) {
        work_release(w);
        free(w);
        return lt_fail_prefix(LT_ERR_NOMEM, "comm %s", "reduce_scatter");
    }
    if (be->all_to_all(st, w->in, w->scratch, n * w->esize, &w->req, err) != 0)
        return start_failed(w, err);
    return finish(w, out);
}

int lt_comm_all_gather(lt_comm *c, lt_tensor *out_t, const lt_tensor *in, lt_comm_work **out) {
    if (out) *out = NULL;
    LT_TRY(check_healthy(c, "all_gather"));
    const lt_comm_backend *be = NULL, *be2 = NULL;
    void *st = NULL, *st2 = NULL;
    LT_TRY(pick(c, out_t, "all_gather", &be, &st));
    LT_TRY(pick(c, in, "all_gather", &be2, &st2));
    if (be != be2) return lt_fail(LT_ERR_DEVICE, "comm all_gather: in and out on different devices");
    if (in->dtype_id != out_t->dtype_id)
        return lt_fail(LT_ERR_DTYPE, "comm all_gather: in is %s, out is %s",
                       dtype_name(in->dtype_id), dtype_name(out_t->dtype_id));
    int world = c->info.world_size;
    int64_t n = lt_tensor_numel(in);
    if (lt_tensor_numel(out_t) != n * world)
        return lt_fail(LT_ERR_SHAPE, "comm all_gather: out has %lld elements, not %d x %lld "
                                     "(world x in)",
                       (long long)lt_tensor_numel(out_t), world, (long long)n);
    lt_comm_work *w = work_new(c, W_ALL_GATHER, be, st);
    if (!w) return lt_last_status();
    snprintf(w->desc, sizeof w->desc, "all_gather of %d x %lld %s", world, (long long)n,
             dtype_name(in->dtype_id));
    work_hold(w, 0, out_t);
    work_hold(w, 1, in);
    char err[LT_COMM_ERRLEN] = "";
    int64_t bytes = n * dtype_size(in->dtype_id);
    int rc = bytes == 0 ? be->barrier(st, &w->req, err)
                        : be->all_gather(st, lt_tensor_data(in), lt_tensor_data(out_t), bytes,
                                         &w->req, err);
    if (rc != 0) return start_failed(w, err);
    return finish(w, out);
}

int lt_comm_broadcast(lt_comm *c, lt_tensor *t, int root, lt_comm_work **out) {
    if (out) *out = NULL;
    LT_TRY(check_healthy(c, "broadcast"));
    const lt_comm_backend *be = NULL;
    void *st = NULL;
    LT_TRY(pick(c, t, "broadcast", &be, &st));
    if (root < 0 || root >= c->info.world_size)
        return lt_fail(LT_ERR_RANGE, "comm broadcast: root %d is not a rank (0..%d)", root,
                       c->info.world_size - 1);
    lt_comm_work *w = work_new(c, W_BROADCAST, be, st);
    if (!w) return lt_last_status();
    int64_t n = lt_tensor_numel(t);
    snprintf(w->desc, sizeof w->desc, "broadcast from rank %d of %lld %s", root, (long long)n,
             dtype_name(t->dtype_id));
    work_hold(w, 0, t);
    char err[LT_COMM_ERRLEN] = "";
    int64_t bytes = n * dtype_size(t->dtype_id);
    int rc = bytes == 0 ? be->barrier(st, &w->req, err)
                        : be->broadcast(st, lt_tensor_data(t), bytes, root, &w->req, err);
    if (rc != 0) return start_failed(w, err);
    return finish(w, out);
}

static int barrier_named(lt_comm *c, const char *desc) {
    LT_TRY(check_healthy(c, desc));
    const lt_comm_backend *be = c->host ? c->host : c->dev;
    lt_comm_work *w = work_new(c, W_BARRIER, be, c->host ? c->host_state : c->dev_state);
    if (!w) return lt_last_status();
    snprintf(w->desc, sizeof w->desc, "%s", desc);
    char err[LT_COMM_ERRLEN] = "";
    if (be->barrier(w->st, &w->req, err) != 0) return start_failed(w, err);
    return finish(w, NULL);
}

int lt_comm_barrier(lt_comm *c) { return barrier_named(c, "barrier"); }

/* ---- host numbers --------------------------------------------------------------------- */

/* every rank's `len` bytes into all[world][len], in rank order; blocking. */
static int gather_bytes(lt_comm *c, const void *mine, int64_t len, void *all, const char *desc) {
    lt_comm_work *w;
    char err[LT_COMM_ERRLEN] = "";
    int world = c->info.world_size;
    if (c->host) {
        w = work_new(c, W_GATHER_BYTES, c->host, c->host_state);
        if (!w) return lt_last_status();
        snprintf(w->desc, sizeof w->desc, "%s", desc);
        if (c->host->all_gather(w->st, mine, all, len, &w->req, err) != 0)
            return start_failed(w, err);
        return finish(w, NULL);
    }
    /* torchrun: through NCCL on a device buffer [world * len] bytes */
    lt_tensor host = { 0 }, dev_all = { 0 }, dev_mine = { 0 };
    int64_t sz_all = world * len, sz_one = len;
    int st = lt_tensor_empty(&dev_all, LT_DTYPE_U8, 1, &sz_all, LT_DEVICE_CUDA, c->info.local_rank);
    if (st == LT_OK) st = lt_tensor_from_buffer(&host, LT_DTYPE_U8, 1, &sz_one, mine, len);
    if (st == LT_OK)
        st = lt_tensor_empty(&dev_mine, LT_DTYPE_U8, 1, &sz_one, LT_DEVICE_CUDA, c->info.local_rank);
    if (st == LT_OK) st = lt_tensor_copy(&dev_mine, &host);
    if (st == LT_OK) st = lt_comm_all_gather(c, &dev_all, &dev_mine, NULL);
    if (st == LT_OK) {
        lt_tensor back = { 0 };
        st = lt_tensor_empty(&back, LT_DTYPE_U8, 1, &sz_all, LT_DEVICE_CPU, 0);
        if (st == LT_OK) st = lt_tensor_copy(&back, &dev_all);
        if (st == LT_OK) memcpy(all, lt_tensor_data(&back), (size_t)sz_all);
        lt_tensor_release(&back);
    }
    lt_tensor_release(&host);
    lt_tensor_release(&dev_all);
    lt_tensor_release(&dev_mine);
    return st;
}

/* Numbers are few (a loss, a token count, a norm): every rank gathers all of them and
   reduces in rank order, so the result is the same bits on every rank and every run. */
static int reduce_numbers(lt_comm *c, void *values, int32_t n, int op, int dtype,
                          const char *what) {
    LT_TRY(check_healthy(c, what));
    if (n < 0 || n > 1 << 20)
        return lt_fail(LT_ERR_RANGE, "comm %s: %d numbers (0..%d)", what, n, 1 << 20);
    if (op != LT_COMM_SUM && op != LT_COMM_AVG && op != LT_COMM_MAX)
        return lt_fail(LT_ERR_ARG, "comm %s: op %d is not sum, avg or max", what, op);
    if (op == LT_COMM_AVG && dtype == LT_DTYPE_I64)
        return lt_fail(LT_ERR_ARG, "comm %s: avg of integers would round", what);
    if (n == 0) return lt_comm_barrier(c);
    int world = c->info.world_size;
    int64_t len = (int64_t)n * 8;
    void *all = lt_scratch_alloc(len * world);
    if (!all) return lt_fail_prefix(LT_ERR_NOMEM, "comm %s", what);
    char desc[64];
    snprintf(desc, sizeof desc, "%s %s of %d numbers", what, op_name(op), n);
    int st = gather_bytes(c, values, len, all, desc);
    if (st == LT_OK) reduce_rank_order(values, all, n, n, world, dtype, op);
    lt_scratch_free(all);
    return st;
}

int lt_comm_all_reduce_f64(lt_comm *c, double *values, int32_t n, int op) {
    return reduce_numbers(c, values, n, op, LT_COMM_DTYPE_F64, "all_reduce_f64");
}

int lt_comm_all_reduce_i64(lt_comm *c, int64_t *values, int32_t n, int op) {
    return reduce_numbers(c, values, n, op, LT_DTYPE_I64, "all_reduce_i64");
}

/* ---- ending --------------------------------------------------------------------------- */

int lt_comm_shutdown(lt_comm *c) {
    if (!c) return lt_fail(LT_ERR_ARG, "lt_comm_shutdown: no communicator");
    if (c->finished) return LT_OK;
    if (c->poisoned)
        return lt_fail(LT_ERR_ARG, "comm shutdown refused: %s (a failed job is aborted, never "
                                   "finalised)", c->failure);
    if (c->live)
        return lt_fail(LT_ERR_ARG, "comm shutdown: %s is still in flight; wait for it first",
                       c->live->desc);
    /* MPI_Finalize waits, with no bound, for every rank to reach it. A rank whose script
     * went another way (a failed test, a branch on rank) while the others wait in a
     * collective for it would sit there forever and keep the job alive after the others
     * time out and abort, so the ranks first meet in a barrier that has the timeout: if
     * it fails, the communicator is poisoned and the caller aborts the job instead. */
    LT_TRY(barrier_named(c, "the barrier before shutdown"));
    char err[LT_COMM_ERRLEN] = "";
    if (c->dev && c->dev->finalize(c->dev_state, err) != 0)
        return poison(c, "NCCL finalize: %s", err);
    if (c->host && c->host->finalize(c->host_state, err) != 0)
        return poison(c, "MPI finalize: %s", err);
    c->finished = 1;
    if (current == c) current = NULL;
    /* The libraries stay loaded: MPI cannot be initialised twice in one process anyway. */
    return LT_OK;
}

void lt_comm_abort(lt_comm *c, int code, const char *why) {
    if (!c || c->finished) return;
    fflush(stdout);
    fprintf(stderr, "luatrain: rank %d of %d: ending the job: %s\n", c->info.rank,
            c->info.world_size, why && *why ? why : (c->poisoned ? c->failure : "aborted"));
    fflush(stderr);
    if (c->dev && c->dev_state) c->dev->abort(c->dev_state, code);
    if (c->host && c->host_state) c->host->abort(c->host_state, code); /* MPI_Abort */
    c->finished = 1;
    if (current == c) current = NULL;
}
