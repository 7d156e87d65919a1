/* lt_comm.h - collectives over the processes of one job (ARCHITECTURE.md, contract 8).
 *
 * One interface with no MPI or NCCL types in it. Host tensors go through Open MPI (the
 * back end libluatrain_mpi.so, loaded by lt_comm_init); device tensors through NCCL
 * (libluatrain_nccl.so, loaded when the options ask for a device), on its own stream. A
 * process that never calls lt_comm_init loads neither: a lone run never initialises MPI.
 *
 *     lt_comm_env env;  lt_comm_env_read(&env);     // who launched us, as which rank
 *     lt_comm *c;       lt_comm_init(&c, &opts);    // MPI_Init, checked against env
 *     lt_comm_work *w;  lt_comm_all_reduce(c, &grad, LT_COMM_SUM, &w);   // started
 *     ... compute, calling lt_comm_progress(c) now and then ...
 *     lt_comm_work_wait(w);  lt_comm_work_free(w);
 *     lt_comm_shutdown(c);                          // MPI_Finalize, healthy runs only
 *
 * Rules:
 *   - Tensors are contiguous. reduce_scatter: in has world_size times the elements of
 *     out, and rank r receives the reduction of in's r-th slice; all_gather: out has
 *     world_size times the elements of in, slices in rank order. Every rank passes the
 *     same dtype and sizes. Callers pad uneven sizes (ZeRO does).
 *   - Dtypes: sum, avg and max on f32, bf16, f16 (on the host: arithmetic in f32, rounded once),
 *     sum and max on i32 and i64; gather, broadcast and all_gather take every dtype.
 *   - A call given a `work` pointer returns at once with a started operation; one given
 *     NULL waits for it. A work holds a reference on the storages it touches until it is
 *     complete or freed, so the tensors may be dropped meanwhile. Free every work; freeing
 *     an unfinished one waits for it first.
 *   - Every wait has a deadline (timeout_s; default 600 s). A timeout, or any error from
 *     the back end, poisons the communicator: the failed call and every later one fail at
 *     once with a message that names this rank and the collective. A poisoned
 *     communicator is never finalised (a rank in MPI_Finalize waits for peers that wait
 *     for it): the job is ended with lt_comm_abort, which the host does on any error.
 *   - Deterministic mode sums host tensors in rank order ((x0 + x1) + x2 ...) whatever
 *     MPI's algorithm would do, so runs can be compared bit for bit; reduce_scatter and
 *     all_reduce then give the same bits for the same slice. Device tensors are reduced by
 *     NCCL itself, whose order is fixed for a given communicator and size but is not rank
 *     order, and whose bf16 / f16 sums round at every step of its ring.
 *   - torchrun: NCCL's id is handed out by rank 0 on MASTER_PORT + 1 (torchrun's own store
 *     holds MASTER_PORT), or on LT_RENDEZVOUS_PORT when that is set.
 */
#ifndef LT_COMM_H
#define LT_COMM_H

#include <stdint.h>

#include "lt.h"

enum lt_comm_op { LT_COMM_SUM = 0, LT_COMM_AVG = 1, LT_COMM_MAX = 2 };

enum lt_comm_launcher {
    LT_LAUNCH_NONE = 0,     /* a lone process */
    LT_LAUNCH_MPI = 1,      /* mpirun / mpiexec (Open MPI, PMIx or PMI variables) */
    LT_LAUNCH_SLURM = 2,    /* srun: SLURM_PROCID within a step of SLURM_STEP_NUM_TASKS */
    LT_LAUNCH_TORCHRUN = 3  /* RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT */
};

/* What the environment says about this process's place in the job. */
typedef struct lt_comm_env {
    int32_t launcher; /* lt_comm_launcher */
    int32_t rank;
    int32_t world_size;
    int32_t local_rank; /* among the ranks on this machine; the GPU a rank uses */
    int32_t local_size; /* -1 when the launcher does not say */
    int32_t master_port; /* torchrun: the rendezvous port; 0 otherwise */
    char master_addr[256];
    char source[160]; /* the variables rank and size were read from, for messages */
} lt_comm_env;

/* Reads and checks every launcher's variables (Open MPI, PMIx, PMI, Slurm, torchrun).
 * Variables of two launchers that disagree, a rank outside 0..size-1, a malformed number,
 * or a rank above 0 with nothing that could connect it to rank 0 are LT_ERR_ARG, naming
 * the variables. No variables at all: launcher NONE, rank 0 of 1. */
int lt_comm_env_read(lt_comm_env *out);

typedef struct lt_comm lt_comm;
typedef struct lt_comm_work lt_comm_work;

typedef struct lt_comm_options {
    double timeout_s;      /* every wait; <= 0: 600 */
    int32_t deterministic; /* sums in rank order */
    int32_t device;        /* LT_DEVICE_CUDA: also bring up NCCL for device tensors */
    int32_t set_threads;   /* 1: CPU kernels use this rank's share of the cores */
} lt_comm_options;

typedef struct lt_comm_info {
    int32_t rank;
    int32_t world_size;
    int32_t local_rank;
    int32_t local_size;
    int32_t launcher;      /* lt_comm_launcher */
    int32_t threads;       /* this rank's share of the CPUs of its machine, at least 1 */
    int32_t has_device;    /* NCCL is up for device tensors */
    int32_t deterministic;
    double timeout_s;
    char host_backend[32]; /* "mpi" */
} lt_comm_info;

/* Initialises the job's communication (once per process; a second call fails). A world
 * of 1 is refused: the caller runs alone without a communicator. */
int lt_comm_init(lt_comm **out, const lt_comm_options *opts);
int lt_comm_get_info(const lt_comm *c, lt_comm_info *out);
/* The communicator lt_comm_init made and lt_comm_shutdown has not ended, or NULL. */
lt_comm *lt_comm_current(void);
int lt_comm_set_timeout(lt_comm *c, double seconds);
/* The poisoning failure's message, or NULL while the communicator is healthy. */
const char *lt_comm_failure(const lt_comm *c);

int lt_comm_all_reduce(lt_comm *c, lt_tensor *t, int op, lt_comm_work **work);
int lt_comm_reduce_scatter(lt_comm *c, lt_tensor *out, const lt_tensor *in, int op,
                           lt_comm_work **work);
int lt_comm_all_gather(lt_comm *c, lt_tensor *out, const lt_tensor *in, lt_comm_work **work);
int lt_comm_broadcast(lt_comm *c, lt_tensor *t, int root, lt_comm_work **work);
int lt_comm_barrier(lt_comm *c);
/* n host numbers reduced in place over the ranks (sum, avg or max), blocking. */
int lt_comm_all_reduce_f64(lt_comm *c, double *values, int32_t n, int op);
int lt_comm_all_reduce_i64(lt_comm *c, int64_t *values, int32_t n, int op);

/* *done = 1 once the work is complete (its storages are released then). */
int lt_comm_work_test(lt_comm_work *w, int32_t *done);
int lt_comm_work_wait(lt_comm_work *w);
void lt_comm_work_free(lt_comm_work *w);
/* Lets started operations advance (MPI moves data only inside its calls): called from
 * the backward's layer hooks while buckets are in flight. */
int lt_comm_progress(lt_comm *c);

/* Ends communication: on a healthy communicator with no unfinished work, a barrier bounded
 * by the timeout (every rank is ending, none is left in a collective), then MPI_Finalize;
 * on a poisoned one, or when that barrier fails, it refuses so the caller aborts instead. */
int lt_comm_shutdown(lt_comm *c);
/* Ends the whole job now: prints "rank R: why" on stderr and has the launcher stop every
 * rank (MPI_Abort, ncclCommAbort). Returns only when there is nothing to abort. */
void lt_comm_abort(lt_comm *c, int code, const char *why);

/* A small TCP rendezvous for torchrun-style launches: rank 0 listens on addr:port and
 * sends its `len` bytes of `buf` to every other rank, which connect and receive them
 * (NCCL's unique id). Every connect, accept and read is bounded by timeout_s. */
int lt_comm_rendezvous_broadcast(const char *addr, int32_t port, int32_t rank, int32_t world,
                                 void *buf, int32_t len, double timeout_s);

#endif
