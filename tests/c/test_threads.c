/* test_threads.c - lt_set_num_threads' contract: 0 is one thread per CPU of the affinity
 * mask, 1..lt_max_threads() is taken as given, anything else is an error naming the value
 * and the range that changes nothing (threads=100000 used to crash inside libgomp). */
#define _GNU_SOURCE /* sched_getaffinity */
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "lt.h"

static int mask_count(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -1;
    return CPU_COUNT(&set);
}

static void test_counts(void) {
    CHECK(lt_available_cpus() >= 1);
    CHECK(lt_available_cpus() == mask_count());
    CHECK(lt_max_threads() == 4 * (int)sysconf(_SC_NPROCESSORS_ONLN));
}

static void test_valid(void) {
    CHECK_OK(lt_set_num_threads(1));
    CHECK(lt_get_num_threads() == 1);
    CHECK_OK(lt_set_num_threads(3));
    CHECK(lt_get_num_threads() == 3);
    CHECK_OK(lt_set_num_threads(lt_max_threads()));
    CHECK(lt_get_num_threads() == lt_max_threads());
    CHECK_OK(lt_set_num_threads(0));
    CHECK(lt_get_num_threads() == lt_available_cpus());
}

static void test_out_of_range(void) {
    char buf[64];
    snprintf(buf, sizeof buf, "outside 0..%d", lt_max_threads());
    const char *range = buf;
    CHECK_OK(lt_set_num_threads(2));
    CHECK_FAILS(lt_set_num_threads(100000), LT_ERR_RANGE, "threads: 100000 is");
    CHECK(strstr(lt_last_error(), range) != NULL);
    CHECK(lt_get_num_threads() == 2); /* a refused count changes nothing */
    CHECK_FAILS(lt_set_num_threads(-5), LT_ERR_RANGE, "threads: -5 is");
    CHECK(strstr(lt_last_error(), range) != NULL);
    CHECK_FAILS(lt_set_num_threads(lt_max_threads() + 1), LT_ERR_RANGE, range);
    CHECK_FAILS(lt_set_num_threads(-2147483647 - 1), LT_ERR_RANGE, range);
    CHECK(lt_get_num_threads() == 2);
}

/* The default follows the affinity mask, not the machine: pinned to one CPU, it is 1. */
static void test_default_follows_affinity(void) {
    cpu_set_t saved, one;
    CPU_ZERO(&saved);
    if (sched_getaffinity(0, sizeof saved, &saved) != 0) return;
    int first = -1;
    for (int c = 0; c < CPU_SETSIZE && first < 0; c++)
        if (CPU_ISSET(c, &saved)) first = c;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    CHECK(sched_setaffinity(0, sizeof one, &one) == 0);
    CHECK(lt_available_cpus() == 1);
    CHECK_OK(lt_set_num_threads(0));
    CHECK(lt_get_num_threads() == 1);
    CHECK(sched_setaffinity(0, sizeof saved, &saved) == 0);
    CHECK(lt_available_cpus() == CPU_COUNT(&saved));
}

int main(void) {
    test_counts();
    test_valid();
    test_out_of_range();
    test_default_follows_affinity();
    return check_summary();
}
