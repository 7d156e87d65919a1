/* test_rendezvous.c - lt_comm_rendezvous_broadcast between forked processes on the loopback:
 * every rank ends with rank 0's bytes (world 2 over "localhost", 3 and 4 over 127.0.0.1, with
 * peers started before rank 0 listens), and each way a job goes wrong is an error that names
 * the rank and the address rather than a hang: no rank 0, a missing peer, a world size or a
 * length that differs, two processes given one rank.
 *
 * Each child process is one rank; it exits 0 only when the call succeeded and it holds rank
 * 0's 64 bytes. Every child is reaped within a bound and killed past it, so a hang fails
 * the test instead of holding ctest. Times are not asserted beyond a hang guard. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "lt.h"
#include "lt_comm.h"

enum { BLOB = 64, MAX_KIDS = 8 };

/* A port nothing listens on right now: bind port 0, read the kernel's choice, close. Racy in
   principle (another program could take it meanwhile), harmless on a test machine. */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/* Rank 0's bytes: a pattern no zeroed or partly received buffer matches. */
static void fill_blob(unsigned char *b) {
    for (int i = 0; i < BLOB; i++) b[i] = (unsigned char)(0xa5 ^ (i * 37 + 11));
}

/* One rank in a child: 0 when the call succeeded and the buffer holds rank 0's bytes. */
static pid_t spawn_rank(const char *addr, int port, int rank, int world, int len,
                        double timeout_s, double delay_s) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid != 0) return pid;
    if (delay_s > 0) {
        struct timespec ts = {0, (long)(delay_s * 1e9)};
        nanosleep(&ts, NULL);
    }
    unsigned char buf[BLOB], want[BLOB];
    memset(buf, 0, sizeof buf);
    fill_blob(want);
    if (rank == 0) fill_blob(buf);
    int st = lt_comm_rendezvous_broadcast(addr, port, rank, world, buf, len, timeout_s);
    if (st != LT_OK) {
        fprintf(stderr, "  (child rank %d of %d: %s)\n", rank, world, lt_last_error());
        _exit(1);
    }
    _exit(memcmp(buf, want, (size_t)len) == 0 ? 0 : 2);
}

/* Wait for every child until `bound_s`, then kill what is left: returns how many exited 0,
   and counts the killed ones in *hung. */
static int reap(pid_t *kids, int n, double bound_s, int *hung) {
    double end = lt_now() + bound_s;
    int ok = 0, left = n;
    *hung = 0;
    while (left > 0 && lt_now() < end) {
        for (int i = 0; i < n; i++) {
            if (kids[i] <= 0) continue;
            int status = 0;
            pid_t r = waitpid(kids[i], &status, WNOHANG);
            if (r == kids[i] || (r < 0 && errno == ECHILD)) {
                if (r == kids[i] && WIFEXITED(status) && WEXITSTATUS(status) == 0) ok++;
                kids[i] = 0;
                left--;
            }
        }
        if (left > 0) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    for (int i = 0; i < n; i++) {
        if (kids[i] <= 0) continue;
        kill(kids[i], SIGKILL);
        waitpid(kids[i], NULL, 0);
        kids[i] = 0;
        (*hung)++;
    }
    return ok;
}

/* A whole job of `world` ranks, each a child; the peers start first and rank 0 after a
   moment when rank0_late, so their retries are exercised. */
static void test_job(const char *addr, int world, int rank0_late) {
    int port = free_port();
    CHECK(port > 0);
    pid_t kids[MAX_KIDS];
    for (int r = 0; r < world; r++)
        kids[r] = spawn_rank(addr, port, r, world, BLOB, 20.0, r == 0 && rank0_late ? 0.3 : 0.0);
    int hung = 0;
    int ok = reap(kids, world, 30.0, &hung);
    if (ok != world) fprintf(stderr, "job of %d over %s: %d ranks succeeded\n", world, addr, ok);
    CHECK(ok == world);
    CHECK(hung == 0);
}

/* A peer with no rank 0 gives up at its deadline, naming itself and the address. */
static void test_no_rank0(void) {
    int port = free_port();
    char where[64];
    snprintf(where, sizeof where, "127.0.0.1:%d", port);
    unsigned char buf[BLOB] = {0};
    double t0 = lt_now();
    CHECK_FAILS(lt_comm_rendezvous_broadcast("127.0.0.1", port, 2, 3, buf, BLOB, 1.0), LT_ERR_IO,
                "rank 2 could not reach rank 0");
    CHECK(strstr(lt_last_error(), where) != NULL);
    CHECK(lt_now() - t0 < 20.0);
}

/* Rank 0 (here, in the test process) with rank 2 missing gives up at its deadline and says
   which rank it still waited for; rank 1 then fails too. */
static void test_missing_peer(void) {
    int port = free_port();
    pid_t kids[1] = {spawn_rank("127.0.0.1", port, 1, 3, BLOB, 5.0, 0.0)};
    unsigned char buf[BLOB];
    fill_blob(buf);
    double t0 = lt_now();
    CHECK_FAILS(lt_comm_rendezvous_broadcast("127.0.0.1", port, 0, 3, buf, BLOB, 1.0), LT_ERR_IO,
                "rank 0 at 127.0.0.1");
    CHECK(strstr(lt_last_error(), "rank 2") != NULL);
    CHECK(lt_now() - t0 < 20.0);
    int hung = 0;
    CHECK(reap(kids, 1, 20.0, &hung) == 0); /* rank 1 got nothing */
    CHECK(hung == 0);
}

/* A peer that says another world size fails rank 0 with a message naming that rank; the
   peer is told why. */
static void test_world_mismatch(void) {
    int port = free_port();
    pid_t kids[1] = {spawn_rank("127.0.0.1", port, 1, 3, BLOB, 5.0, 0.0)};
    unsigned char buf[BLOB];
    fill_blob(buf);
    CHECK_FAILS(lt_comm_rendezvous_broadcast("127.0.0.1", port, 0, 2, buf, BLOB, 5.0),
                LT_ERR_ARG, "rank 1");
    CHECK(strstr(lt_last_error(), "world has 3 ranks") != NULL);
    int hung = 0;
    CHECK(reap(kids, 1, 20.0, &hung) == 0);
    CHECK(hung == 0);

    /* the peer's side: it learns rank 0 refused it and why */
    port = free_port();
    kids[0] = spawn_rank("127.0.0.1", port, 0, 2, BLOB, 5.0, 0.0);
    memset(buf, 0, sizeof buf);
    CHECK_FAILS(lt_comm_rendezvous_broadcast("127.0.0.1", port, 1, 3, buf, BLOB, 5.0),
                LT_ERR_ARG, "refused rank 1: its world size differs");
    CHECK(reap(kids, 1, 20.0, &hung) == 0);
    CHECK(hung == 0);
}

/* A length that differs is refused the same way. */
static void test_len_mismatch(void) {
    int port = free_port();
    pid_t kids[1] = {spawn_rank("127.0.0.1", port, 1, 2, 32, 5.0, 0.0)};
    unsigned char buf[BLOB];
    fill_blob(buf);
    CHECK_FAILS(lt_comm_rendezvous_broadcast("127.0.0.1", port, 0, 2, buf, BLOB, 5.0),
                LT_ERR_ARG, "expects 32 bytes");
    int hung = 0;
    CHECK(reap(kids, 1, 20.0, &hung) == 0);
    CHECK(hung == 0);
}

/* Two processes given rank 1: rank 0 names the rank and both addresses. */
static void test_duplicate_rank(void) {
    int port = free_port();
    pid_t kids[2] = {spawn_rank("127.0.0.1", port, 1, 3, BLOB, 5.0, 0.0),
                     spawn_rank("127.0.0.1", port, 1, 3, BLOB, 5.0, 0.0)};
    unsigned char buf[BLOB];
    fill_blob(buf);
    CHECK_FAILS(lt_comm_rendezvous_broadcast("127.0.0.1", port, 0, 3, buf, BLOB, 5.0),
                LT_ERR_ARG, "rank 1 connected twice");
    int hung = 0;
    CHECK(reap(kids, 2, 20.0, &hung) == 0);
    CHECK(hung == 0);
}

static void test_arguments(void) {
    unsigned char buf[BLOB] = {0};
    CHECK_FAILS(lt_comm_rendezvous_broadcast("127.0.0.1", 0, 0, 2, buf, BLOB, 1.0), LT_ERR_ARG,
                "port 0");
    CHECK_FAILS(lt_comm_rendezvous_broadcast("127.0.0.1", 29500, 2, 2, buf, BLOB, 1.0),
                LT_ERR_ARG, "rank 2 is outside 0..1");
    CHECK_FAILS(lt_comm_rendezvous_broadcast("127.0.0.1", 29500, 1, 2, buf, -1, 1.0), LT_ERR_ARG,
                "negative length");
    CHECK_FAILS(lt_comm_rendezvous_broadcast(NULL, 29500, 1, 2, buf, BLOB, 1.0), LT_ERR_ARG,
                "no address");
    /* a world of one has nothing to exchange */
    CHECK_OK(lt_comm_rendezvous_broadcast("127.0.0.1", 29500, 0, 1, buf, BLOB, 1.0));
}

/* Descriptors open in this process: every path of the function closes what it opened. */
static int open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

int main(void) {
    /* SIGPIPE keeps its default (ending the process): a rank whose peer went away must get
       an error instead, which the library's MSG_NOSIGNAL sends give */
    int fds = open_fds();
    test_arguments();
    test_job("localhost", 2, 1);
    test_job("127.0.0.1", 3, 1);
    test_job("127.0.0.1", 4, 0);
    test_no_rank0();
    test_missing_peer();
    test_world_mismatch();
    test_len_mismatch();
    test_duplicate_rank();
    CHECK(open_fds() == fds);
    return check_summary();
}
