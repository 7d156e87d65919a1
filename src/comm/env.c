/* env.c - which launcher started this process, and as which rank of how many.
 *
 * Launchers say it in variables of their own:
 *   Open MPI      OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE
 *   PMIx, PMI     PMIX_RANK; PMI_RANK / PMI_SIZE (MPICH's hydra, srun --mpi=pmi2)
 *   Slurm (srun)  SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID; the batch script's
 *                 own shell has SLURM_PROCID too but no step size, and is a lone process
 *   torchrun      RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE / MASTER_ADDR / _PORT
 * Several may be present at once (mpirun inside a Slurm allocation sets both, and users
 * export RANK for their own reasons): every source that is present must agree, or the run
 * is refused with both named, rather than silently running as some other world. A rank
 * above 0 needs something that can connect it to rank 0 (an MPI launcher, or torchrun's
 * MASTER_ADDR and MASTER_PORT): `RANK=1 WORLD_SIZE=2 luatrain ...` alone is an error, not
 * a world of 1. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "lt_comm.h"

/* A variable's value as a non-negative int: 1 if present and valid, 0 if absent, -1
   (with an error set) if malformed. */
static int read_int(const char *name, int32_t *out) {
    const char *s = getenv(name);
    if (!s) return 0;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno || v < 0 || v > 1 << 24)
        return lt_fail(LT_ERR_ARG, "launch: %s=\"%s\" is not a rank or size (a whole number "
                                   "0..%d)", name, s, 1 << 24), -1;
    *out = (int32_t)v;
    return 1;
}

/* One launcher's view: rank and size (both or neither), local rank and size if given. */
typedef struct source {
    const char *rank_var, *size_var, *local_rank_var, *local_size_var;
    int launcher;
    int32_t rank, size, local_rank, local_size;
    int has_rank, has_size, has_local;
} source;

static int read_source(source *s) {
    int r;
    s->local_rank = -1;
    s->local_size = -1;
    if ((r = read_int(s->rank_var, &s->rank)) < 0) return -1;
    s->has_rank = r;
    if (s->size_var) {
        if ((r = read_int(s->size_var, &s->size)) < 0) return -1;
        s->has_size = r;
    }
    if (s->local_rank_var) {
        if ((r = read_int(s->local_rank_var, &s->local_rank)) < 0) return -1;
        s->has_local = r;
    }
    if (s->local_size_var && read_int(s->local_size_var, &s->local_size) < 0) return -1;
    if (s->has_size && s->size < 1)
        return lt_fail(LT_ERR_ARG, "launch: %s=0: a job has at least one rank", s->size_var), -1;
    if (s->has_rank && s->has_size && s->rank >= s->size)
        return lt_fail(LT_ERR_ARG, "launch: %s=%d is not below %s=%d", s->rank_var, s->rank,
                       s->size_var, s->size), -1;
    return 0;
}

int lt_comm_env_read(lt_comm_env *out) {
    if (!out) return lt_fail(LT_ERR_ARG, "lt_comm_env_read: out is NULL");
    memset(out, 0, sizeof *out);
    out->world_size = 1;
    out->local_size = 1;

    source src[] = {
        { "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
          "OMPI_COMM_WORLD_LOCAL_SIZE", LT_LAUNCH_MPI, 0, 0, 0, 0, 0, 0, 0 },
        { "PMIX_RANK", NULL, NULL, NULL, LT_LAUNCH_MPI, 0, 0, 0, 0, 0, 0, 0 },
        { "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", LT_LAUNCH_MPI,
          0, 0, 0, 0, 0, 0, 0 },
        { "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", NULL, LT_LAUNCH_SLURM,
          0, 0, 0, 0, 0, 0, 0 },
        { "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", LT_LAUNCH_TORCHRUN,
          0, 0, 0, 0, 0, 0, 0 },
    };
    enum { NSRC = sizeof src / sizeof src[0] };
    for (int i = 0; i < NSRC; i++)
        if (read_source(&src[i]) < 0) return lt_last_status();

    /* A Slurm batch shell has SLURM_PROCID=0 and no step: not a launch. */
    if (src[3].has_rank && !src[3].has_size) src[3].has_rank = 0;

    const source *first = NULL; /* the source with rank and size that others must match */
    for (int i = 0; i < NSRC; i++) {
        source *s = &src[i];
        if (!s->has_rank && !s->has_size) continue;
        if (s->size_var && s->has_rank != s->has_size)
            return lt_fail(LT_ERR_ARG, "launch: %s is set but %s is not; a launcher sets both",
                           s->has_rank ? s->rank_var : s->size_var,
                           s->has_rank ? s->size_var : s->rank_var);
        if (!first && s->size_var) first = s;
    }
    /* PMIx gives a rank with no size: it must agree with a source that has one. */
    if (src[1].has_rank && !first)
        return lt_fail(LT_ERR_ARG, "launch: PMIX_RANK=%d but no variable gives the job's size "
                                   "(OMPI_COMM_WORLD_SIZE, PMI_SIZE or SLURM_STEP_NUM_TASKS)",
                       src[1].rank);
    if (!first) return LT_OK; /* a lone process */

    for (int i = 0; i < NSRC; i++) {
        const source *s = &src[i];
        if (!s->has_rank || s == first) continue;
        if (s->rank != first->rank || (s->size_var && s->size != first->size)) {
            char other[96] = "";
            if (s->size_var) snprintf(other, sizeof other, " %s=%d", s->size_var, s->size);
            return lt_fail(LT_ERR_ARG, "launch: the launchers' variables disagree: %s=%d %s=%d "
                                       "but %s=%d%s; unset the stale ones",
                           first->rank_var, first->rank, first->size_var, first->size,
                           s->rank_var, s->rank, other);
        }
        if (s->has_local && first->has_local && s->local_rank != first->local_rank)
            return lt_fail(LT_ERR_ARG, "launch: %s=%d but %s=%d", first->local_rank_var,
                           first->local_rank, s->local_rank_var, s->local_rank);
    }

    /* The launcher: an MPI launcher wherever one is present (it can connect the ranks on
       host tensors); else srun; else torchrun. */
    int launcher = LT_LAUNCH_NONE;
    const source *best = first;
    for (int pass = 0; pass < 3 && launcher == LT_LAUNCH_NONE; pass++) {
        int want = pass == 0 ? LT_LAUNCH_MPI : pass == 1 ? LT_LAUNCH_SLURM : LT_LAUNCH_TORCHRUN;
        for (int i = 0; i < NSRC; i++)
            if (src[i].has_rank && src[i].launcher == want && src[i].size_var) {
                launcher = want;
                best = &src[i];
                break;
            }
    }
    out->launcher = launcher;
    out->rank = first->rank;
    out->world_size = first->size;
    snprintf(out->source, sizeof out->source, "%s=%d %s=%d", best->rank_var, best->rank,
             best->size_var, best->size);
    out->local_rank = best->has_local ? best->local_rank : -1;
    out->local_size = best->local_size;
    for (int i = 0; i < NSRC && out->local_rank < 0; i++)
        if (src[i].has_local) out->local_rank = src[i].local_rank;
    for (int i = 0; i < NSRC && out->local_size < 0; i++)
        if (src[i].local_size > 0) out->local_size = src[i].local_size;

    const char *addr = getenv("MASTER_ADDR");
    int32_t port = 0;
    int has_port = read_int("MASTER_PORT", &port);
    if (has_port < 0) return lt_last_status();
    if (has_port && (port < 1 || port > 65535))
        return lt_fail(LT_ERR_ARG, "launch: MASTER_PORT=%d is not a TCP port (1..65535)", port);
    if (addr) {
        if (strlen(addr) >= sizeof out->master_addr || !*addr)
            return lt_fail(LT_ERR_ARG, "launch: MASTER_ADDR=\"%.40s\" is empty or too long",
                           addr);
        snprintf(out->master_addr, sizeof out->master_addr, "%s", addr);
    }
    out->master_port = port;

    if (launcher == LT_LAUNCH_TORCHRUN && out->world_size > 1 && (!addr || !has_port))
        return lt_fail(LT_ERR_ARG, "launch: %s says rank %d of %d, but nothing connects the "
                                   "ranks: torchrun also sets MASTER_ADDR and MASTER_PORT, and "
                                   "on CPUs the job is started with mpirun -np %d",
                       out->source, out->rank, out->world_size, out->world_size);
    return LT_OK;
}
