/* threads.c - how many threads the CPU kernels use, and how many CPUs there are to use.
 *
 * The kernels parallelise with OpenMP; OpenBLAS runs single-threaded inside those threads
 * (ops/matmul.c). The default is one thread per CPU in the process's affinity mask, which
 * is what `taskset`, cgroup cpusets and mpirun's binding leave it, rather than every core
 * of the machine: a rank pinned to one core that starts one thread per machine core only
 * makes its threads take turns. How the threads wait between parallel regions (passively,
 * unless the user says otherwise) is set where the process starts, in main.c, because
 * libgomp reads it once, when it is loaded. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT_S */
#include <errno.h>
#include <sched.h>
#include <unistd.h>

#include "core/internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Threads per online CPU that lt_set_num_threads accepts. A CPU-bound kernel gains nothing
   from more threads than CPUs; a few per CPU still serve a test of thread-count invariance
   on a small machine. Far more is a mistake, and libgomp crashes when it cannot create
   them (threads=100000 segfaulted inside it). */
enum { LT_THREADS_PER_CPU_MAX = 4 };

static int online_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n >= 1 && n <= 1 << 20 ? (int)n : 1;
}

int lt_available_cpus(void) {
    /* The mask's size must cover the kernel's CPU count; grow it until it does. */
    for (int ncpu = 1024; ncpu <= 1 << 20; ncpu *= 2) {
        cpu_set_t *set = CPU_ALLOC((size_t)ncpu);
        if (!set) break;
        size_t size = CPU_ALLOC_SIZE((size_t)ncpu);
        CPU_ZERO_S(size, set);
        int rc = sched_getaffinity(0, size, set);
        int count = rc == 0 ? CPU_COUNT_S(size, set) : 0;
        int err = errno;
        CPU_FREE(set);
        if (rc == 0) return count >= 1 ? count : 1;
        if (err != EINVAL) break;
    }
    return online_cpus();
}

/* Set by the comm layer (src/comm/comm.c): ranks that share a machine divide its cores. */
static int thread_share;

void lt_threads_set_share(int n) { thread_share = n > 0 ? n : 0; }

int lt_max_threads(void) { return LT_THREADS_PER_CPU_MAX * online_cpus(); }

int lt_set_num_threads(int n) {
    int max = lt_max_threads();
    if (n < 0 || n > max)
        return lt_fail(LT_ERR_RANGE,
                       "threads: %d is outside 0..%d (0: one per CPU this process may run on, "
                       "%d here; at most %d per online CPU, of which there are %d)",
                       n, max, lt_available_cpus(), LT_THREADS_PER_CPU_MAX, online_cpus());
    int nt = n > 0 ? n : thread_share > 0 ? thread_share : lt_available_cpus();
#ifdef _OPENMP
    omp_set_num_threads(nt);
#endif
    lt_blas_set_threads(nt);
    return LT_OK;
}

int lt_get_num_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
