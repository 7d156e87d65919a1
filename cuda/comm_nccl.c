/* comm_nccl.c - the NCCL back end (libluatrain_nccl.so): collectives on device buffers for
 * src/comm/comm.c, through the table of comm/backend.h. Plain C against NCCL's and the CUDA
 * runtime's C interfaces, compiled by the host compiler.
 *
 * One communicator per process, on the GPU numbered by the rank's local rank, created
 * non-blocking (ncclConfig_t.blocking = 0) so that no NCCL call can hold the process past
 * the job's timeout: a call that answers ncclInProgress is polled with
 * ncclCommGetAsyncError until it settles or the deadline passes.
 *
 * Streams: the core's CUDA back end queues every kernel of a device on one compute stream
 * (lt_cuda_runtime_stream). Collectives run on a stream of their own so that compute and
 * communication overlap. Each collective is ordered after the compute queued so far (an
 * event recorded on the compute stream, waited for by the comm stream), and its request
 * is an event recorded on the comm stream after it: test() queries that event. Compute
 * queued later is not ordered after the collective; comm.c's wait returns only once test()
 * reports the event done, and the host queues work on a collective's buffers only after
 * that wait, so a buffer in flight is never overwritten.
 *
 * Errors go into err as "NCCL <what>: <reason>"; nothing here exits or prints. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime.h>
#include <nccl.h>

#include "comm/backend.h"
#include "core/internal.h"

/* A started collective: the event recorded on the comm stream after it. Finished requests
   go back to a free list, so a step's collectives reuse their events. */
typedef struct nccl_req {
    cudaEvent_t done;
    const char *what; /* the collective, for messages */
    struct nccl_req *next;
} nccl_req;

typedef struct nccl_state {
    ncclComm_t comm;
    int device;
    int rank, world;
    double timeout_s;
    cudaStream_t stream;  /* the collectives' stream (ours) */
    cudaStream_t compute; /* the core's compute stream of `device` (borrowed) */
    cudaEvent_t ready;    /* recorded on compute before each collective */
    int32_t *flag;        /* (1,) int32 on the device: the barrier's all-reduce */
    nccl_req *free_reqs;
    int aborted;
} nccl_state;

/* Between polls of a communicator that answered ncclInProgress: from 20 us, which adds
   little to a collective's launch, doubling to 1 ms, so that a bring-up of seconds does not
   spin a core. */
static const long POLL_FIRST_NS = 20 * 1000, POLL_MAX_NS = 1000 * 1000;

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void nap(long *ns) {
    struct timespec ts = {0, *ns};
    nanosleep(&ts, NULL);
    *ns = *ns * 2 < POLL_MAX_NS ? *ns * 2 : POLL_MAX_NS;
}

/* ---- messages ----------------------------------------------------------------------------- */

static int fail(char *err, const char *fmt, ...) LT_PRINTF(2, 3);
static int fail(char *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, LT_COMM_ERRLEN, fmt, ap);
    va_end(ap);
    return -1;
}

/* "NCCL <what>: <NCCL's name for r> (<its last error>)"; the detail is left out when NCCL
   has none. */
static int fail_nccl(char *err, ncclComm_t comm, const char *what, ncclResult_t r) {
    const char *last = ncclGetLastError(comm);
    if (last && *last)
        return fail(err, "NCCL %s: %s (%s)", what, ncclGetErrorString(r), last);
    return fail(err, "NCCL %s: %s", what, ncclGetErrorString(r));
}

static int fail_cuda(char *err, const char *what, const char *call, cudaError_t e) {
    return fail(err, "NCCL %s: %s: %s", what, call, cudaGetErrorString(e));
}

/* The core's message (lt_last_error) of a failed core call, under our prefix. */
static int fail_core(char *err, const char *what) {
    return fail(err, "NCCL %s: %s", what, lt_last_error());
}

/* ---- the non-blocking communicator ---------------------------------------------------- */

/* After an NCCL call that returned r: LT_OK once the communicator has settled (r was
   ncclSuccess, or it answered ncclInProgress and its async state became ncclSuccess before
   the deadline), else the failure. */
static int settle(nccl_state *s, ncclResult_t r, const char *what, char *err) {
    if (r == ncclSuccess) return LT_OK;
    if (r != ncclInProgress) return fail_nccl(err, s->comm, what, r);
    double deadline = mono_now() + s->timeout_s;
    long pause = POLL_FIRST_NS;
    for (;;) {
        ncclResult_t state = ncclSuccess;
        ncclResult_t q = ncclCommGetAsyncError(s->comm, &state);
        if (q != ncclSuccess) return fail_nccl(err, s->comm, what, q);
        if (state == ncclSuccess) return LT_OK;
        if (state != ncclInProgress) return fail_nccl(err, s->comm, what, state);
        if (mono_now() >= deadline)
            return fail(err,
                        "NCCL %s: still in progress after %g s (rank %d of %d, device %d)",
                        what, s->timeout_s, s->rank, s->world, s->device);
        nap(&pause);
    }
}

/* An error the communicator met in the background (a peer gone, a failed kernel). */
static int async_error(nccl_state *s, const char *what, char *err) {
    ncclResult_t state = ncclSuccess;
    ncclResult_t q = ncclCommGetAsyncError(s->comm, &state);
    if (q != ncclSuccess) return fail_nccl(err, s->comm, what, q);
    if (state != ncclSuccess && state != ncclInProgress)
        return fail_nccl(err, s->comm, what, state);
    return LT_OK;
}

/* ---- requests --------------------------------------------------------------------------- */

static int req_get(nccl_state *s, const char *what, nccl_req **out, char *err) {
    nccl_req *q = s->free_reqs;
    if (q) {
        s->free_reqs = q->next;
    } else {
        q = (nccl_req *)calloc(1, sizeof *q);
        if (!q) return fail(err, "NCCL %s: out of host memory", what);
        cudaError_t e = cudaEventCreateWithFlags(&q->done, cudaEventDisableTiming);
        if (e != cudaSuccess) {
            free(q);
            return fail_cuda(err, what, "cudaEventCreateWithFlags", e);
        }
    }
    q->what = what;
    q->next = NULL;
    *out = q;
    return LT_OK;
}

static void req_put(nccl_state *s, nccl_req *q) {
    q->next = s->free_reqs;
    s->free_reqs = q;
}

/* Before a collective: the comm stream waits for everything queued on the compute stream
   so far (the kernels that wrote the buffers it reads). */
static int begin(nccl_state *s, const char *what, char *err) {
    if (s->aborted) return fail(err, "NCCL %s: the communicator was aborted", what);
    cudaError_t e;
    if ((e = cudaSetDevice(s->device)) != cudaSuccess)
        return fail_cuda(err, what, "cudaSetDevice", e);
    if ((e = cudaEventRecord(s->ready, s->compute)) != cudaSuccess)
        return fail_cuda(err, what, "cudaEventRecord", e);
    if ((e = cudaStreamWaitEvent(s->stream, s->ready, 0)) != cudaSuccess)
        return fail_cuda(err, what, "cudaStreamWaitEvent", e);
    return LT_OK;
}

/* After the NCCL call(s) that returned r: once they are queued, the request is an event
   behind them on the comm stream. */
static int finish(nccl_state *s, ncclResult_t r, const char *what, void **req, char *err) {
    if (settle(s, r, what, err) != LT_OK) return -1;
    nccl_req *q = NULL;
    if (req_get(s, what, &q, err) != LT_OK) return -1;
    cudaError_t e = cudaEventRecord(q->done, s->stream);
    if (e != cudaSuccess) {
        req_put(s, q);
        return fail_cuda(err, what, "cudaEventRecord", e);
    }
    *req = q;
    return LT_OK;
}

/* ---- types ----------------------------------------------------------------------------- */

static int nccl_type(int dtype, ncclDataType_t *out) {
    switch (dtype) {
    case LT_DTYPE_F32: *out = ncclFloat32; return 1;
    case LT_DTYPE_BF16: *out = ncclBfloat16; return 1;
    case LT_DTYPE_F16: *out = ncclFloat16; return 1;
    case LT_DTYPE_I32: *out = ncclInt32; return 1;
    case LT_DTYPE_I64: *out = ncclInt64; return 1;
    case LT_DTYPE_U8: *out = ncclUint8; return 1;
    case LT_DTYPE_I8: *out = ncclInt8; return 1;
    default: return 0;
    }
}

/* Reductions NCCL runs for us: sum, avg and max on the float dtypes, sum and max on the
   64- and 32-bit integers (lt_comm.h's contract); comm.c reduces the rest itself. */
static int nccl_reduces(void *state, int dtype, int op) {
    (void)state;
    int is_float = dtype == LT_DTYPE_F32 || dtype == LT_DTYPE_BF16 || dtype == LT_DTYPE_F16;
    int is_int = dtype == LT_DTYPE_I32 || dtype == LT_DTYPE_I64;
    if (is_float) return op == LT_COMM_SUM || op == LT_COMM_AVG || op == LT_COMM_MAX;
    if (is_int) return op == LT_COMM_SUM || op == LT_COMM_MAX;
    return 0;
}

/* The (dtype, op) of a reduction as NCCL's, or the message. */
static int reduction(int dtype, int op, const char *what, ncclDataType_t *t, ncclRedOp_t *o,
                     char *err) {
    if (!nccl_reduces(NULL, dtype, op) || !nccl_type(dtype, t))
        return fail(err, "NCCL %s: no native reduction %d on dtype %d (ask reduces() first)",
                    what, op, dtype);
    *o = op == LT_COMM_SUM ? ncclSum : op == LT_COMM_AVG ? ncclAvg : ncclMax;
    return LT_OK;
}

static int count_ok(int64_t n, const char *what, char *err) {
    if (n < 0) return fail(err, "NCCL %s: negative count %lld", what, (long long)n);
    return LT_OK;
}

/* ---- collectives ---------------------------------------------------------------------------
   Every rank passes the same sizes (lt_comm.h), so a size of 0 queues no NCCL call on any
   rank and the request is just an event behind the compute so far. */

static int nccl_all_reduce(void *state, void *buf, int64_t count, int dtype, int op,
                           void **req, char *err) {
    nccl_state *s = (nccl_state *)state;
    const char *what = "all_reduce";
    ncclDataType_t t = ncclFloat32;
    ncclRedOp_t o = ncclSum;
    if (count_ok(count, what, err) || reduction(dtype, op, what, &t, &o, err) ||
        begin(s, what, err))
        return -1;
    /* buf: (count,) of dtype, reduced in place */
    ncclResult_t r = count ? ncclAllReduce(buf, buf, (size_t)count, t, o, s->comm, s->stream)
                           : ncclSuccess;
    return finish(s, r, what, req, err);
}

static int nccl_reduce_scatter(void *state, const void *in, void *out, int64_t count_per_rank,
                               int dtype, int op, void **req, char *err) {
    nccl_state *s = (nccl_state *)state;
    const char *what = "reduce_scatter";
    ncclDataType_t t = ncclFloat32;
    ncclRedOp_t o = ncclSum;
    if (count_ok(count_per_rank, what, err) || reduction(dtype, op, what, &t, &o, err) ||
        begin(s, what, err))
        return -1;
    /* in: (world, count_per_rank); out: (count_per_rank,), the reduction of in's rank-th row */
    ncclResult_t r = count_per_rank ? ncclReduceScatter(in, out, (size_t)count_per_rank, t, o,
                                                        s->comm, s->stream)
                                    : ncclSuccess;
    return finish(s, r, what, req, err);
}

static int nccl_all_gather(void *state, const void *in, void *out, int64_t bytes_per_rank,
                           void **req, char *err) {
    nccl_state *s = (nccl_state *)state;
    const char *what = "all_gather";
    if (count_ok(bytes_per_rank, what, err) || begin(s, what, err)) return -1;
    /* in: (bytes_per_rank,) bytes; out: (world, bytes_per_rank), rows in rank order */
    ncclResult_t r = bytes_per_rank ? ncclAllGather(in, out, (size_t)bytes_per_rank, ncclInt8,
                                                    s->comm, s->stream)
                                    : ncclSuccess;
    return finish(s, r, what, req, err);
}

static int nccl_all_to_all(void *state, const void *in, void *out, int64_t bytes_per_rank,
                           void **req, char *err) {
    nccl_state *s = (nccl_state *)state;
    const char *what = "all_to_all";
    if (count_ok(bytes_per_rank, what, err) || begin(s, what, err)) return -1;
    /* in: (world, bytes_per_rank), row p goes to rank p; out: (world, bytes_per_rank), row p
       came from rank p. One group, so the sends and receives of every pair proceed together
       instead of deadlocking in turn. */
    ncclResult_t r = ncclSuccess;
    if (bytes_per_rank) {
        size_t n = (size_t)bytes_per_rank;
        r = ncclGroupStart();
        for (int p = 0; p < s->world && (r == ncclSuccess || r == ncclInProgress); p++) {
            r = ncclSend((const char *)in + (size_t)p * n, n, ncclInt8, p, s->comm, s->stream);
            if (r == ncclSuccess || r == ncclInProgress)
                r = ncclRecv((char *)out + (size_t)p * n, n, ncclInt8, p, s->comm, s->stream);
        }
        /* the group is closed whatever happened inside it, or NCCL stays in group mode */
        ncclResult_t end = ncclGroupEnd();
        if (r == ncclSuccess || r == ncclInProgress) r = end;
    }
    return finish(s, r, what, req, err);
}

static int nccl_broadcast(void *state, void *buf, int64_t bytes, int root, void **req,
                          char *err) {
    nccl_state *s = (nccl_state *)state;
    const char *what = "broadcast";
    if (root < 0 || root >= s->world)
        return fail(err, "NCCL broadcast: root %d is outside 0..%d", root, s->world - 1);
    if (count_ok(bytes, what, err) || begin(s, what, err)) return -1;
    /* buf: (bytes,), root's copy written over everyone else's */
    ncclResult_t r = bytes ? ncclBroadcast(buf, buf, (size_t)bytes, ncclInt8, root, s->comm,
                                           s->stream)
                           : ncclSuccess;
    return finish(s, r, what, req, err);
}

/* A max-reduction of one int32 that stays 0: complete on a rank only once every rank has
   joined it. */
static int nccl_barrier(void *state, void **req, char *err) {
    nccl_state *s = (nccl_state *)state;
    const char *what = "barrier";
    if (begin(s, what, err)) return -1;
    ncclResult_t r = ncclAllReduce(s->flag, s->flag, 1, ncclInt32, ncclMax, s->comm, s->stream);
    return finish(s, r, what, req, err);
}

/* ---- requests, progress ----------------------------------------------------------------- */

static int nccl_test(void *state, void *req, int *done, char *err) {
    nccl_state *s = (nccl_state *)state;
    nccl_req *q = (nccl_req *)req;
    *done = 0;
    if (s->aborted) return fail(err, "NCCL %s: the communicator was aborted", q->what);
    /* a peer that failed shows here first; its collectives would otherwise never end */
    if (async_error(s, q->what, err)) return -1;
    cudaError_t e = cudaEventQuery(q->done);
    if (e == cudaErrorNotReady) return LT_OK;
    if (e != cudaSuccess) return fail_cuda(err, q->what, "cudaEventQuery", e);
    *done = 1;
    req_put(s, q);
    return LT_OK;
}

/* The communicator is about to be aborted: the event may never fire, so it is destroyed
   (CUDA releases a pending event once it completes) rather than reused. */
static void nccl_cancel(void *state, void *req) {
    (void)state;
    nccl_req *q = (nccl_req *)req;
    if (!q) return;
    cudaEventDestroy(q->done);
    free(q);
}

/* NCCL's kernels need no host to progress; only a background error is worth looking for. */
static int nccl_progress(void *state, char *err) {
    nccl_state *s = (nccl_state *)state;
    if (s->aborted) return fail(err, "NCCL progress: the communicator was aborted");
    return async_error(s, "progress", err);
}

/* ---- bring-up and teardown ---------------------------------------------------------------- */

/* The device resources; each is NULL until made, so release() frees any subset. */
static void release(nccl_state *s) {
    while (s->free_reqs) {
        nccl_req *q = s->free_reqs;
        s->free_reqs = q->next;
        cudaEventDestroy(q->done);
        free(q);
    }
    if (s->flag) cudaFree(s->flag);
    if (s->ready) cudaEventDestroy(s->ready);
    if (s->stream) cudaStreamDestroy(s->stream);
    free(s);
}

/* Device, compute stream, our stream, event and barrier flag: everything of this rank's
   own, made before the ranks meet. */
static int setup_device(nccl_state *s, const lt_comm_env *env, char *err) {
    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return fail(err, "NCCL init: rank %d finds no usable GPU: %s", s->rank,
                    cudaGetErrorString(e));
    }
    if (env->local_rank < 0 || env->local_rank >= ndev)
        return fail(err,
                    "NCCL init: rank %d has local rank %d, but its machine has %d GPU%s "
                    "(one rank per GPU: start at most %d ranks per machine)",
                    s->rank, (int)env->local_rank, ndev, ndev == 1 ? "" : "s", ndev);
    s->device = env->local_rank;
    if ((e = cudaSetDevice(s->device)) != cudaSuccess)
        return fail_cuda(err, "init", "cudaSetDevice", e);
    /* the core's CUDA back end makes new tensors and runs kernels on the same device */
    if (lt_cuda_set_device(s->device) != LT_OK) return fail_core(err, "init");
    void *compute = NULL;
    if (lt_cuda_runtime_stream(s->device, &compute) != LT_OK) return fail_core(err, "init");
    s->compute = (cudaStream_t)compute;
    if ((e = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking)) != cudaSuccess)
        return fail_cuda(err, "init", "cudaStreamCreateWithFlags", e);
    if ((e = cudaEventCreateWithFlags(&s->ready, cudaEventDisableTiming)) != cudaSuccess)
        return fail_cuda(err, "init", "cudaEventCreateWithFlags", e);
    /* 4 bytes, outside the caching allocator: they live as long as the communicator */
    if ((e = cudaMalloc((void **)&s->flag, sizeof *s->flag)) != cudaSuccess)
        return fail_cuda(err, "init", "cudaMalloc", e);
    if ((e = cudaMemset(s->flag, 0, sizeof *s->flag)) != cudaSuccess)
        return fail_cuda(err, "init", "cudaMemset", e);
    return LT_OK;
}

/* What rank 0 sends every rank: whether it could make the id, and the id. Every rank takes
   part in the exchange even after a failure of its own, so that none is left waiting in it. */
typedef struct id_blob {
    int32_t failed; /* rank 0 could not make the id (its own message says why) */
    int32_t pad;
    ncclUniqueId id;
} id_blob;

static int share_id(nccl_state *s, const lt_comm_env *env, void *bootstrap, id_blob *blob,
                    char *err) {
    if (bootstrap) {
        const lt_comm_bootstrap *b = (const lt_comm_bootstrap *)bootstrap;
        if (!b->host || !b->host->bootstrap_broadcast)
            return fail(err, "NCCL init: the host back end has no bootstrap broadcast");
        char host_err[LT_COMM_ERRLEN] = "";
        if (b->host->bootstrap_broadcast(b->host_state, blob, (int32_t)sizeof *blob, host_err))
            return fail(err, "NCCL init: sharing the unique id through %s: %s",
                        b->host->name ? b->host->name : "the host back end", host_err);
        return LT_OK;
    }
    /* torchrun: rank 0 listens on MASTER_ADDR:MASTER_PORT for the others */
    if (lt_comm_rendezvous_broadcast(env->master_addr, env->master_port, s->rank, s->world,
                                     blob, (int32_t)sizeof *blob, s->timeout_s) != LT_OK)
        return fail_core(err, "init");
    return LT_OK;
}

/* Create the communicator non-blocking and wait, bounded, for it to come up. */
static int create_comm(nccl_state *s, const ncclUniqueId *id, char *err) {
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&s->comm, s->world, *id, s->rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        fail_nccl(err, s->comm, "init", r);
        if (s->comm) ncclCommAbort(s->comm);
        s->comm = NULL;
        return -1;
    }
    char why[LT_COMM_ERRLEN];
    if (settle(s, r, "init", why) != LT_OK) {
        /* an error or the deadline: the ranks that did come up are waiting on this one, and
           only an abort frees what the half-made communicator holds */
        ncclCommAbort(s->comm);
        s->comm = NULL;
        return fail(err, "%s (rank %d of %d on device %d; the job's timeout is %g s)", why,
                    s->rank, s->world, s->device, s->timeout_s);
    }
    return LT_OK;
}

static int nccl_init(void **state, const lt_comm_env *env, const lt_comm_options *opts,
                     lt_comm_info *info, void *bootstrap, char *err) {
    *state = NULL;
    if (!env || !opts || !info) return fail(err, "NCCL init: env, opts and info are required");
    nccl_state *s = (nccl_state *)calloc(1, sizeof *s);
    if (!s) return fail(err, "NCCL init: out of host memory");
    s->rank = env->rank;
    s->world = env->world_size;
    s->timeout_s = opts->timeout_s > 0 ? opts->timeout_s : 600.0;

    id_blob blob;
    memset(&blob, 0, sizeof blob);
    int local = setup_device(s, env, err);
    if (s->rank == 0) {
        ncclResult_t r = ncclSuccess;
        if (local == LT_OK && (r = ncclGetUniqueId(&blob.id)) != ncclSuccess)
            local = fail_nccl(err, NULL, "init: ncclGetUniqueId", r);
        blob.failed = local != LT_OK;
    }
    char share_err[LT_COMM_ERRLEN];
    int shared = share_id(s, env, bootstrap, &blob, share_err);
    if (local != LT_OK) { /* err holds this rank's own failure */
        release(s);
        return -1;
    }
    if (shared != LT_OK) {
        memcpy(err, share_err, LT_COMM_ERRLEN);
        release(s);
        return -1;
    }
    if (blob.failed) {
        release(s);
        return fail(err, "NCCL init: rank 0 could not make the unique id (its message says why)");
    }
    if (create_comm(s, &blob.id, err) != LT_OK) {
        release(s);
        return -1;
    }

    info->rank = env->rank;
    info->world_size = env->world_size;
    info->local_rank = env->local_rank;
    info->local_size = env->local_size;
    info->launcher = env->launcher;
    info->has_device = 1;
    if (info->threads < 1) { /* no host back end shared the CPUs out: this rank's share */
        int per = env->local_size > 0 ? lt_available_cpus() / env->local_size : 1;
        info->threads = per > 1 ? per : 1;
    }
    *state = s;
    return LT_OK;
}

static int nccl_finalize(void *state, char *err) {
    nccl_state *s = (nccl_state *)state;
    if (s->aborted) return fail(err, "NCCL finalize: the communicator was aborted");
    cudaSetDevice(s->device);
    /* finalize flushes every queued collective and waits for the peers to do the same:
       bounded like everything else; past the deadline the communicator is aborted */
    char why[LT_COMM_ERRLEN];
    if (settle(s, ncclCommFinalize(s->comm), "finalize", why) != LT_OK) {
        ncclCommAbort(s->comm);
        s->comm = NULL;
        s->aborted = 1;
        return fail(err, "%s", why);
    }
    ncclResult_t r = ncclCommDestroy(s->comm);
    s->comm = NULL;
    if (r != ncclSuccess) {
        fail_nccl(err, NULL, "finalize: ncclCommDestroy", r);
        release(s);
        return -1;
    }
    release(s);
    return LT_OK;
}

/* Ends the communicator now, whatever it is doing; the process is about to end, so the
   state stays (a later cancel of an outstanding request may still touch it). */
static void nccl_abort(void *state, int code) {
    (void)code;
    nccl_state *s = (nccl_state *)state;
    if (!s || s->aborted) return;
    s->aborted = 1;
    if (s->comm) ncclCommAbort(s->comm);
    s->comm = NULL;
}

static const lt_comm_backend nccl_backend = {
    LT_COMM_BACKEND_VERSION,
    "nccl",
    nccl_init,
    nccl_reduces,
    nccl_all_reduce,
    nccl_reduce_scatter,
    nccl_all_gather,
    nccl_all_to_all,
    nccl_broadcast,
    nccl_barrier,
    nccl_test,
    nccl_cancel,
    nccl_progress,
    nccl_finalize,
    nccl_abort,
    NULL, /* bootstrap_broadcast: a device back end is not a host bootstrap */
};

/* The library's one exported symbol (it is built with hidden visibility). */
__attribute__((visibility("default"))) const lt_comm_backend *lt_comm_nccl_backend(void);
const lt_comm_backend *lt_comm_nccl_backend(void) { return &nccl_backend; }
