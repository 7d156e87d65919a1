/* check.h - a minimal assertion harness for the C tests.
 *
 * CHECK(cond) and CHECK_OK(call) record failures and go on; each test file's main() ends
 * with `return check_summary();`, which prints "N passed, N failed" and returns nonzero
 * when anything failed. */
#ifndef LT_TEST_CHECK_H
#define LT_TEST_CHECK_H

#include <stdio.h>

#include "lt.h"

static int check_passed, check_failed;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (cond) {                                                                      \
            check_passed++;                                                              \
        } else {                                                                         \
            check_failed++;                                                              \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);     \
        }                                                                                \
    } while (0)

/* The call must return LT_OK. */
#define CHECK_OK(call)                                                                   \
    do {                                                                                 \
        int check_st_ = (call);                                                          \
        if (check_st_ == LT_OK) {                                                        \
            check_passed++;                                                              \
        } else {                                                                         \
            check_failed++;                                                              \
            fprintf(stderr, "%s:%d: %s returned %d: %s\n", __FILE__, __LINE__, #call,    \
                    check_st_, lt_last_error());                                         \
        }                                                                                \
    } while (0)

/* The call must fail with `status`; the message must contain `needle` (if not NULL). */
#define CHECK_FAILS(call, status, needle)                                                \
    do {                                                                                 \
        int check_st_ = (call);                                                          \
        const char *check_msg_ = lt_last_error();                                        \
        if (check_st_ == (status) &&                                                     \
            ((needle) == NULL || strstr(check_msg_, (needle)) != NULL)) {                \
            check_passed++;                                                              \
        } else {                                                                         \
            check_failed++;                                                              \
            fprintf(stderr, "%s:%d: %s: want status %d with \"%s\", got %d: %s\n",       \
                    __FILE__, __LINE__, #call, (int)(status),                            \
                    (needle) ? (const char *)(needle) : "", check_st_, check_msg_);      \
        }                                                                                \
    } while (0)

static int check_summary(void) {
    printf("%d passed, %d failed\n", check_passed, check_failed);
    return check_failed ? 1 : 0;
}

#endif
