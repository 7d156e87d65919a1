/* mpi.c - the Open MPI back end of the comm layer (libluatrain_mpi.so; comm/backend.h).
 *
 * Non-blocking collectives on a private duplicate of MPI_COMM_WORLD whose errors return
 * instead of killing the process, so comm.c can poll each request against its deadline
 * and turn a failure into a message. Nothing here waits without a bound: the one blocking
 * helper (the bootstrap broadcast for NCCL's id) polls against the job's timeout too.
 *
 * Loaded by src/comm/comm.c with dlopen (RTLD_GLOBAL: Open MPI's plugins expect its
 * symbols to be global) only when a launcher's variables say the job has several ranks. */
#define _GNU_SOURCE /* sched_getaffinity */
#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h> /* setenv */
#include <string.h>
#include <time.h>

#include "comm/backend.h"

enum { LT_COMM_DTYPE_F64 = 64 }; /* comm.c's code for host f64 numbers */

typedef struct mpi_state {
    MPI_Comm comm;
    int rank, world;
    double timeout;
} mpi_state;

typedef struct mpi_req {
    MPI_Request r;
} mpi_req;

static void mpi_message(int code, const char *what, char *err) {
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "error %d", code);
    snprintf(err, LT_COMM_ERRLEN, "%s: %s", what, s);
}

static int mpi_type(int dtype, MPI_Datatype *out) {
    switch (dtype) {
    case LT_DTYPE_F32: *out = MPI_FLOAT; return 0;
    case LT_DTYPE_I32: *out = MPI_INT32_T; return 0;
    case LT_DTYPE_I64: *out = MPI_INT64_T; return 0;
    case LT_COMM_DTYPE_F64: *out = MPI_DOUBLE; return 0;
    default: return -1; /* bf16, f16: comm.c reduces them itself */
    }
}

/* A count MPI can take (its counts are int). */
static int fits(int64_t count, const char *what, char *err) {
    if (count >= 0 && count <= 0x7fffffff) return 1;
    snprintf(err, LT_COMM_ERRLEN, "%s of %lld elements is more than MPI takes in one call "
                                  "(2^31-1); split it",
             what, (long long)count);
    return 0;
}

/* The CPUs of every rank on this machine, to give each its share: a CPU in k ranks' masks
   counts 1/k for each (mpirun's binding gives disjoint masks; --bind-to none gives each
   rank the whole machine, shared among all local ranks). */
static int cpu_share(MPI_Comm node, int local_size, int local_rank) {
    cpu_set_t mine;
    CPU_ZERO(&mine);
    if (sched_getaffinity(0, sizeof mine, &mine) != 0) return 1;
    cpu_set_t *all = calloc((size_t)local_size, sizeof *all);
    if (!all) return 1;
    int threads = 1;
    if (MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, all, (int)sizeof mine, MPI_BYTE,
                      node) == MPI_SUCCESS) {
        double share = 0;
        for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
            if (!CPU_ISSET(cpu, &mine)) continue;
            int k = 0;
            for (int r = 0; r < local_size; r++) k += CPU_ISSET(cpu, &all[r]) ? 1 : 0;
            share += 1.0 / (k > 0 ? k : 1);
        }
        threads = (int)(share + 1e-9);
        if (threads < 1) threads = 1;
    }
    (void)local_rank;
    free(all);
    return threads;
}

static int mpi_init(void **state, const lt_comm_env *env, const lt_comm_options *opts,
                    lt_comm_info *info, void *bootstrap, char *err) {
    (void)bootstrap;
    int inited = 0, provided = 0, rc;
    MPI_Initialized(&inited);
    if (inited) {
        snprintf(err, LT_COMM_ERRLEN, "MPI was initialised already by someone else");
        return -1;
    }
    /* Open MPI's non-blocking all-reduce (libnbc) picks recursive doubling or a binomial
       tree by default, which moved a 60 MB gradient between 2 ranks at half the speed of
       the blocking MPI_Allreduce (70 ms against 35); its ring matched the blocking call
       at every size measured (4 KB to 60 MB, 2 and 3 ranks). A user's own setting wins. */
    setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1", 0);
    /* Only the thread that runs Lua calls MPI; the OpenMP kernels never do. */
    rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) {
        mpi_message(rc, "MPI_Init_thread", err);
        return -1;
    }
    mpi_state *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, LT_COMM_ERRLEN, "out of memory");
        return -1;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    if ((rc = MPI_Comm_dup(MPI_COMM_WORLD, &s->comm)) != MPI_SUCCESS) {
        mpi_message(rc, "MPI_Comm_dup", err);
        free(s);
        return -1;
    }
    MPI_Comm_set_errhandler(s->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(s->comm, &s->rank);
    MPI_Comm_size(s->comm, &s->world);
    s->timeout = opts->timeout_s;
    *state = s;
    if (s->world != env->world_size || s->rank != env->rank) {
        snprintf(err, LT_COMM_ERRLEN, "the launcher's variables say rank %d of %d (%s) but MPI's "
                                      "world makes this rank %d of %d: was the job started "
                                      "with mpirun (or srun --mpi=pmix)?",
                 env->rank, env->world_size, env->source, s->rank, s->world);
        return -1;
    }
    MPI_Comm node;
    if ((rc = MPI_Comm_split_type(s->comm, MPI_COMM_TYPE_SHARED, s->rank, MPI_INFO_NULL,
                                  &node)) != MPI_SUCCESS) {
        mpi_message(rc, "MPI_Comm_split_type", err);
        return -1;
    }
    int local_rank = 0, local_size = 1;
    MPI_Comm_rank(node, &local_rank);
    MPI_Comm_size(node, &local_size);
    info->rank = s->rank;
    info->world_size = s->world;
    info->local_rank = local_rank;
    info->local_size = local_size;
    info->threads = cpu_share(node, local_size, local_rank);
    MPI_Comm_free(&node);
    return 0;
}

static int mpi_reduces(void *state, int dtype, int op) {
    (void)state;
    MPI_Datatype t;
    return mpi_type(dtype, &t) == 0 && (op == LT_COMM_SUM || op == LT_COMM_MAX);
}

static mpi_req *new_req(char *err) {
    mpi_req *q = malloc(sizeof *q);
    if (!q) snprintf(err, LT_COMM_ERRLEN, "out of memory");
    return q;
}

static int started(int rc, mpi_req *q, void **req, const char *what, char *err) {
    if (rc != MPI_SUCCESS) {
        mpi_message(rc, what, err);
        free(q);
        return -1;
    }
    *req = q;
    return 0;
}

static int mpi_all_reduce(void *state, void *buf, int64_t count, int dtype, int op, void **req,
                          char *err) {
    mpi_state *s = state;
    MPI_Datatype t;
    if (mpi_type(dtype, &t) != 0 || !fits(count, "MPI_Iallreduce", err)) {
        if (!*err) snprintf(err, LT_COMM_ERRLEN, "MPI does not reduce dtype %d", dtype);
        return -1;
    }
    mpi_req *q = new_req(err);
    if (!q) return -1;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)count, t, op == LT_COMM_MAX ? MPI_MAX : MPI_SUM,
                            s->comm, &q->r);
    return started(rc, q, req, "MPI_Iallreduce", err);
}

static int mpi_reduce_scatter(void *state, const void *in, void *out, int64_t count_per_rank,
                              int dtype, int op, void **req, char *err) {
    mpi_state *s = state;
    MPI_Datatype t;
    if (mpi_type(dtype, &t) != 0 || !fits(count_per_rank * s->world, "MPI_Ireduce_scatter_block", err)) {
        if (!*err) snprintf(err, LT_COMM_ERRLEN, "MPI does not reduce dtype %d", dtype);
        return -1;
    }
    mpi_req *q = new_req(err);
    if (!q) return -1;
    int rc = MPI_Ireduce_scatter_block(in, out, (int)count_per_rank, t,
                                       op == LT_COMM_MAX ? MPI_MAX : MPI_SUM, s->comm, &q->r);
    return started(rc, q, req, "MPI_Ireduce_scatter_block", err);
}

static int mpi_all_gather(void *state, const void *in, void *out, int64_t bytes_per_rank,
                          void **req, char *err) {
    mpi_state *s = state;
    if (!fits(bytes_per_rank * s->world, "MPI_Iallgather (bytes)", err)) return -1;
    mpi_req *q = new_req(err);
    if (!q) return -1;
    /* comm.c gathers a rank-order reduction in place: this rank's slot of out is the input */
    const void *send = in == (const char *)out + (int64_t)s->rank * bytes_per_rank ? MPI_IN_PLACE : in;
    int rc = MPI_Iallgather(send, (int)bytes_per_rank, MPI_BYTE, out, (int)bytes_per_rank,
                            MPI_BYTE, s->comm, &q->r);
    return started(rc, q, req, "MPI_Iallgather", err);
}

static int mpi_all_to_all(void *state, const void *in, void *out, int64_t bytes_per_rank,
                          void **req, char *err) {
    mpi_state *s = state;
    if (!fits(bytes_per_rank * s->world, "MPI_Ialltoall (bytes)", err)) return -1;
    mpi_req *q = new_req(err);
    if (!q) return -1;
    int rc = MPI_Ialltoall(in, (int)bytes_per_rank, MPI_BYTE, out, (int)bytes_per_rank, MPI_BYTE,
                           s->comm, &q->r);
    return started(rc, q, req, "MPI_Ialltoall", err);
}

static int mpi_broadcast(void *state, void *buf, int64_t bytes, int root, void **req, char *err) {
    mpi_state *s = state;
    if (!fits(bytes, "MPI_Ibcast (bytes)", err)) return -1;
    mpi_req *q = new_req(err);
    if (!q) return -1;
    int rc = MPI_Ibcast(buf, (int)bytes, MPI_BYTE, root, s->comm, &q->r);
    return started(rc, q, req, "MPI_Ibcast", err);
}

static int mpi_barrier(void *state, void **req, char *err) {
    mpi_state *s = state;
    mpi_req *q = new_req(err);
    if (!q) return -1;
    return started(MPI_Ibarrier(s->comm, &q->r), q, req, "MPI_Ibarrier", err);
}

static int mpi_test(void *state, void *req, int *done, char *err) {
    (void)state;
    mpi_req *q = req;
    int flag = 0;
    int rc = MPI_Test(&q->r, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
        mpi_message(rc, "MPI_Test", err);
        free(q);
        return -1;
    }
    *done = flag;
    if (flag) free(q);
    return 0;
}

/* A request that timed out is left to MPI (collectives cannot be cancelled); the job is
   about to be aborted. Only our wrapper is freed. */
static void mpi_cancel(void *state, void *req) {
    (void)state;
    free(req);
}

static int mpi_progress(void *state, char *err) {
    mpi_state *s = state;
    int flag = 0;
    /* Any call into MPI runs its progress engine; a probe is the cheapest one. */
    int rc = MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, s->comm, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
        mpi_message(rc, "MPI_Iprobe", err);
        return -1;
    }
    return 0;
}

static int mpi_finalize(void *state, char *err) {
    mpi_state *s = state;
    MPI_Comm_free(&s->comm);
    int rc = MPI_Finalize();
    free(s);
    if (rc != MPI_SUCCESS) {
        mpi_message(rc, "MPI_Finalize", err);
        return -1;
    }
    return 0;
}

static void mpi_abort(void *state, int code) {
    (void)state;
    MPI_Abort(MPI_COMM_WORLD, code ? code : 1);
}

static int mpi_bootstrap_broadcast(void *state, void *buf, int32_t len, char *err) {
    mpi_state *s = state;
    MPI_Request r;
    int rc = MPI_Ibcast(buf, len, MPI_BYTE, 0, s->comm, &r);
    if (rc != MPI_SUCCESS) {
        mpi_message(rc, "MPI_Ibcast", err);
        return -1;
    }
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int flag = 0;
        if ((rc = MPI_Test(&r, &flag, MPI_STATUS_IGNORE)) != MPI_SUCCESS) {
            mpi_message(rc, "MPI_Test", err);
            return -1;
        }
        if (flag) return 0;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((double)(t.tv_sec - t0.tv_sec) + 1e-9 * (double)(t.tv_nsec - t0.tv_nsec) > s->timeout) {
            snprintf(err, LT_COMM_ERRLEN, "broadcast of NCCL's id from rank 0 timed out after %g s",
                     s->timeout);
            return -1;
        }
        struct timespec pause = { 0, 100 * 1000 };
        nanosleep(&pause, NULL);
    }
}

static const lt_comm_backend mpi_backend = {
    LT_COMM_BACKEND_VERSION, "mpi", mpi_init, mpi_reduces, mpi_all_reduce, mpi_reduce_scatter,
    mpi_all_gather, mpi_all_to_all, mpi_broadcast, mpi_barrier, mpi_test, mpi_cancel,
    mpi_progress, mpi_finalize, mpi_abort, mpi_bootstrap_broadcast,
};

__attribute__((visibility("default"))) const lt_comm_backend *lt_comm_mpi_backend(void) {
    return &mpi_backend;
}
