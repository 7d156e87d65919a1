/* backend.h - what a communication back end (libluatrain_mpi.so, libluatrain_nccl.so)
 * gives src/comm/comm.c: raw non-blocking collectives on contiguous buffers. Everything
 * above bytes and counts (tensors, storage references, deadlines, poisoning, rank-order
 * sums, avg) is comm.c's, written once for both.
 *
 * Each start function returns 0 and a request, or -1 with a message in err. test
 * completes and frees a request (*done = 1) or leaves it running; cancel forgets one that
 * will never complete (after a timeout). Counts are elements of `dtype` (an lt_dtype);
 * ops are lt_comm_op. A back end that cannot reduce some dtype natively says so through
 * `reduces` and comm.c reduces it itself (all_to_all, then sums in rank order). */
#ifndef LT_COMM_BACKEND_H
#define LT_COMM_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "lt_comm.h"

enum { LT_COMM_ERRLEN = 512 };

/* Bumped whenever the table changes: a back end from another build is refused. */
enum { LT_COMM_BACKEND_VERSION = 1 };

typedef struct lt_comm_backend {
    int32_t version;
    const char *name;
    /* Bring up the job: env is what lt_comm_env_read found; info gets rank, world,
       local_rank, local_size and threads (the rank's share of its machine's CPUs).
       `bootstrap` is for a device back end: a host back end to broadcast its id with, or
       NULL under torchrun (it uses lt_comm_rendezvous_broadcast). */
    int (*init)(void **state, const lt_comm_env *env, const lt_comm_options *opts,
                lt_comm_info *info, void *bootstrap, char *err);
    /* 1 when all_reduce / reduce_scatter of (dtype, op) run natively. */
    int (*reduces)(void *state, int dtype, int op);
    int (*all_reduce)(void *state, void *buf, int64_t count, int dtype, int op, void **req,
                      char *err);
    int (*reduce_scatter)(void *state, const void *in, void *out, int64_t count_per_rank,
                          int dtype, int op, void **req, char *err);
    int (*all_gather)(void *state, const void *in, void *out, int64_t bytes_per_rank,
                      void **req, char *err);
    int (*all_to_all)(void *state, const void *in, void *out, int64_t bytes_per_rank,
                      void **req, char *err);
    int (*broadcast)(void *state, void *buf, int64_t bytes, int root, void **req, char *err);
    int (*barrier)(void *state, void **req, char *err);
    int (*test)(void *state, void *req, int *done, char *err);
    void (*cancel)(void *state, void *req);
    /* Drive outstanding operations (MPI_Testsome on them, or an async-error poll). */
    int (*progress)(void *state, char *err);
    /* Only on a healthy back end with nothing in flight. */
    int (*finalize)(void *state, char *err);
    void (*abort)(void *state, int code);
    /* A host back end's broadcast of a small blob, blocking, for a device back end's id. */
    int (*bootstrap_broadcast)(void *state, void *buf, int32_t len, char *err);
} lt_comm_backend;

/* Each back end library exports this one function. */
typedef const lt_comm_backend *(*lt_comm_backend_entry)(void);

/* What comm.c passes a device back end's init as `bootstrap` when a host back end is up:
   that back end and its state, whose bootstrap_broadcast carries rank 0's NCCL unique id
   to every rank. NULL instead under torchrun-style variables alone. */
typedef struct lt_comm_bootstrap {
    const lt_comm_backend *host;
    void *host_state;
} lt_comm_bootstrap;

#endif
