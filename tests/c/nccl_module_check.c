/* nccl_module_check.c - the NCCL back end loads as comm.c will load it: dlopen the library
 * named on the command line, find its one entry point, and check the table it returns (the
 * version of comm/backend.h it was built from, its name, every operation a device back end
 * gives, and no bootstrap broadcast, which only a host back end offers).
 *
 * Then init under torchrun-style variables, which must end, one way or the other, within
 * its timeout: two forked ranks over the TCP rendezvous (rank 1 asks for a second GPU), and
 * one rank alone. Without a GPU every rank fails with an "NCCL init:" message, and rank 0
 * still hands its answer to rank 1 so that neither waits out the timeout. With a GPU, a
 * rank that comes up joins a barrier and finalizes.
 *
 * Built and run (the ctest nccl_backend_loads) only where libluatrain_nccl.so is built; the
 * name keeps it out of the test_*.c glob that every build compiles. */
#include <dlfcn.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "comm/backend.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A loopback port nothing listens on right now (bind port 0, read it back, close). */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

static lt_comm_env torchrun_env(int rank, int world, int port) {
    lt_comm_env env;
    memset(&env, 0, sizeof env);
    env.launcher = LT_LAUNCH_TORCHRUN;
    env.rank = rank;
    env.world_size = world;
    env.local_rank = rank;
    env.local_size = world;
    env.master_port = port;
    snprintf(env.master_addr, sizeof env.master_addr, "127.0.0.1");
    snprintf(env.source, sizeof env.source, "nccl_module_check");
    return env;
}

/* Init as `rank`: 0 when it came up (and was shut down again), 1 when it failed with an
   NCCL message, 2 when it failed without one. */
static int try_init(const lt_comm_backend *b, int rank, int world, int port, double timeout_s) {
    lt_comm_env env = torchrun_env(rank, world, port);
    lt_comm_options opts;
    memset(&opts, 0, sizeof opts);
    opts.timeout_s = timeout_s;
    opts.device = LT_DEVICE_CUDA;
    lt_comm_info info;
    memset(&info, 0, sizeof info);
    char err[LT_COMM_ERRLEN] = "";
    void *state = NULL;
    if (b->init(&state, &env, &opts, &info, NULL, err) != 0) {
        fprintf(stderr, "  (rank %d of %d: %s)\n", rank, world, err);
        return strncmp(err, "NCCL init", 9) == 0 ? 1 : 2;
    }
    int ok = info.has_device == 1 && info.rank == rank && info.world_size == world;
    void *req = NULL;
    int done = 0;
    if (b->barrier(state, &req, err) != 0) ok = 0;
    double end = now_s() + timeout_s;
    while (ok && !done && now_s() < end)
        if (b->test(state, req, &done, err) != 0) ok = 0;
    if (!done) ok = 0;
    if (b->finalize(state, err) != 0) ok = 0;
    if (!ok) fprintf(stderr, "  (rank %d of %d came up but: %s)\n", rank, world, err);
    return ok ? 0 : 2;
}

/* Two ranks: rank 1 in a child, reaped within a bound (killed past it). */
static void check_two_ranks(const lt_comm_backend *b) {
    int port = free_port();
    CHECK(port > 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) _exit(try_init(b, 1, 2, port, 5.0));
    double t0 = now_s();
    int r0 = try_init(b, 0, 2, port, 5.0);
    int status = 0, reaped = 0;
    while (!reaped && now_s() - t0 < 30.0) {
        reaped = waitpid(pid, &status, WNOHANG) == pid;
        if (!reaped) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    if (!reaped) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    CHECK(reaped);
    /* both come up on a machine with two GPUs; elsewhere both fail, each saying why in an
       NCCL message (rank 0 with one GPU once rank 1 has not joined within the timeout) */
    int r1 = reaped && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    CHECK((r0 == 0 && r1 == 0) || (r0 == 1 && r1 == 1));
    CHECK(now_s() - t0 < 30.0);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s path/to/libluatrain_nccl.so\n", argv[0]);
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
        CHECK(lib != NULL);
        return check_summary();
    }
    lt_comm_backend_entry entry = NULL;
    void *sym = dlsym(lib, "lt_comm_nccl_backend");
    memcpy(&entry, &sym, sizeof entry); /* object pointer to function pointer, as POSIX allows */
    CHECK(entry != NULL);
    const lt_comm_backend *b = entry ? entry() : NULL;
    CHECK(b != NULL);
    if (b) {
        CHECK(b->version == LT_COMM_BACKEND_VERSION);
        CHECK(b->name && strcmp(b->name, "nccl") == 0);
        CHECK(b->init && b->reduces && b->all_reduce && b->reduce_scatter && b->all_gather);
        CHECK(b->all_to_all && b->broadcast && b->barrier && b->test && b->cancel);
        CHECK(b->progress && b->finalize && b->abort);
        CHECK(b->bootstrap_broadcast == NULL);
        /* reduces needs no communicator: the table of lt_comm.h's contract */
        CHECK(b->reduces(NULL, LT_DTYPE_F32, LT_COMM_AVG) == 1);
        CHECK(b->reduces(NULL, LT_DTYPE_BF16, LT_COMM_SUM) == 1);
        CHECK(b->reduces(NULL, LT_DTYPE_I64, LT_COMM_MAX) == 1);
        CHECK(b->reduces(NULL, LT_DTYPE_I32, LT_COMM_AVG) == 0);
        CHECK(b->reduces(NULL, LT_DTYPE_U8, LT_COMM_SUM) == 0);
        CHECK(b->reduces(NULL, LT_DTYPE_I8, LT_COMM_MAX) == 0);

        /* the two-rank job forks before this process touches CUDA, which a child of an
           initialised CUDA process cannot use */
        check_two_ranks(b);
        int alone = try_init(b, 0, 1, free_port(), 10.0);
        CHECK(alone == 0 || alone == 1);
    }
    dlclose(lib);
    return check_summary();
}
