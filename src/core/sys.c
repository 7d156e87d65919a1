/* sys.c - the few operating-system services the Lua side needs: a monotonic clock, Ctrl-C
 * as a request a run answers at a step boundary, and directory creation. */
#include <errno.h>
#include <signal.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/internal.h"
#include "lt_io.h"

double lt_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- Ctrl-C as a request ---------------------------------------------------------------- */

static volatile sig_atomic_t interrupts;
static struct sigaction interrupt_old;
static int interrupt_caught;

static void on_interrupt(int sig) {
    (void)sig;
    interrupts = interrupts + 1;
    /* a second Ctrl-C: the next one does what it did before (kills a stuck save) */
    if (interrupts >= 2) sigaction(SIGINT, &interrupt_old, NULL);
}

int lt_interrupt_catch(int on) {
    if (on && !interrupt_caught) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sigemptyset(&sa.sa_mask);
        sa.sa_handler = on_interrupt;
        sa.sa_flags = SA_RESTART;
        if (sigaction(SIGINT, &sa, &interrupt_old) != 0)
            return lt_fail(LT_ERR_IO, "lt_interrupt_catch: sigaction: %s", strerror(errno));
        interrupts = 0;
        interrupt_caught = 1;
    } else if (!on && interrupt_caught) {
        interrupt_caught = 0;
        if (sigaction(SIGINT, &interrupt_old, NULL) != 0)
            return lt_fail(LT_ERR_IO, "lt_interrupt_catch: sigaction: %s", strerror(errno));
    }
    return LT_OK;
}

int lt_interrupt_pending(void) { return (int)interrupts; }

static int make_one(const char *path) {
    if (mkdir(path, 0755) == 0) return LT_OK;
    int e = errno;
    struct stat st;
    if (e == EEXIST && stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) return LT_OK;
        return lt_fail(LT_ERR_IO, "%s: exists and is not a directory", path);
    }
    return lt_fail(LT_ERR_IO, "%s: cannot create directory: %s", path, strerror(e));
}

int lt_make_dirs(const char *path) {
    if (!path || !*path) return lt_fail(LT_ERR_ARG, "make_dirs: empty path");
    char buf[PATH_MAX];
    size_t n = strlen(path);
    if (n >= sizeof buf) return lt_fail(LT_ERR_ARG, "make_dirs: path too long");
    memcpy(buf, path, n + 1);
    while (n > 1 && buf[n - 1] == '/') buf[--n] = '\0';
    /* each prefix ending before a '/', then the whole path */
    for (size_t i = 1; i < n; i++) {
        if (buf[i] != '/') continue;
        buf[i] = '\0';
        int st = make_one(buf);
        buf[i] = '/';
        if (st != LT_OK) return st;
    }
    return make_one(buf);
}

int lt_file_info(const char *path, int64_t *size, int64_t *mtime_ns) {
    if (!path) return lt_fail(LT_ERR_ARG, "file_info: path is NULL");
    struct stat st;
    if (stat(path, &st) != 0) return lt_fail(LT_ERR_IO, "%s: %s", path, strerror(errno));
    if (size) *size = (int64_t)st.st_size;
    if (mtime_ns) *mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    return LT_OK;
}
