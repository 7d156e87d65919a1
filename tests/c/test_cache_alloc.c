/* test_cache_alloc.c - the caching allocator that backs CUDA device memory, run on the CPU
 * over a mock raw allocator with a capacity: steady-state reuse with no raw calls, small
 * blocks sharing a segment, splitting and merging back to whole segments, emptying the
 * cache, the retry after a failed raw allocation, statistics, and a random stress run that
 * checks live blocks never overlap and keep their contents; pass-through mode (every block
 * its own raw allocation of the exact size, for memory checkers). Also built under ASan. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cache_alloc.h"
#include "check.h"

#define MiB (1024 * 1024)

/* The mock device: malloc with a byte budget, counting live raw allocations. */
typedef struct {
    int64_t capacity, used;
    int64_t live, calls, fails;
} mock;

static void *mock_alloc(void *ctx, int64_t n) {
    mock *m = ctx;
    m->calls++;
    if (m->used + n > m->capacity) {
        m->fails++;
        return NULL;
    }
    void *p = aligned_alloc(512, (size_t)n);
    if (!p) return NULL;
    m->used += n;
    m->live++;
    return p;
}

static void mock_free(void *ctx, void *p, int64_t n) {
    mock *m = ctx;
    m->used -= n;
    m->live--;
    free(p);
}

static lt_cache_stats stats(lt_cache *c) {
    lt_cache_stats s;
    lt_cache_get_stats(c, &s);
    return s;
}

static void test_steady_state(void) {
    mock m = {.capacity = 1LL << 34};
    lt_cache *c = lt_cache_new(mock_alloc, mock_free, &m);
    static const int64_t sizes[] = {4096, 100, 3 * MiB, 777777, 12 * MiB, 64, 40 * MiB};
    enum { N = sizeof sizes / sizeof *sizes };
    void *p[N];
    int64_t raw_after_first = 0;
    for (int step = 0; step < 5; step++) {
        for (int i = 0; i < N; i++) {
            int64_t r;
            p[i] = lt_cache_alloc(c, sizes[i], &r);
            CHECK(p[i] != NULL);
            CHECK(r >= sizes[i] && r % 512 == 0);
            CHECK(((uintptr_t)p[i]) % 512 == 0);
            memset(p[i], step, (size_t)sizes[i]);
        }
        for (int i = N - 1; i >= 0; i--) CHECK(lt_cache_free(c, p[i]) == 0);
        if (step == 0) raw_after_first = m.calls;
    }
    CHECK(m.calls == raw_after_first); /* no raw calls after the first step */
    lt_cache_stats s = stats(c);
    CHECK(s.allocated == 0);
    CHECK(s.num_allocs == 5 * N && s.num_frees == 5 * N);
    CHECK(s.peak_allocated >= 3 * MiB + 12 * MiB + 40 * MiB);
    CHECK(s.reserved == m.used);
    CHECK(lt_cache_free(c, (void *)&m) == -1); /* not ours */
    lt_cache_destroy(c);
    CHECK(m.live == 0 && m.used == 0);
}

static void test_small_blocks_share_a_segment(void) {
    mock m = {.capacity = 1LL << 34};
    lt_cache *c = lt_cache_new(mock_alloc, mock_free, &m);
    void *p[100];
    for (int i = 0; i < 100; i++) p[i] = lt_cache_alloc(c, 10000, NULL);
    CHECK(m.calls == 1); /* 100 x 10240 B fit one 2 MiB segment */
    CHECK(stats(c).reserved == 2 * MiB);
    /* distinct, non-overlapping */
    for (int i = 1; i < 100; i++) CHECK((char *)p[i] - (char *)p[i - 1] == 10240);
    for (int i = 0; i < 100; i += 2) lt_cache_free(c, p[i]);
    CHECK(lt_cache_empty(c) == 0); /* the segment is still in use */
    for (int i = 1; i < 100; i += 2) lt_cache_free(c, p[i]);
    CHECK(lt_cache_empty(c) == 2 * MiB); /* everything merged back into one free segment */
    CHECK(stats(c).reserved == 0 && m.live == 0);
    lt_cache_destroy(c);
}

static void test_split_and_merge(void) {
    mock m = {.capacity = 1LL << 34};
    lt_cache *c = lt_cache_new(mock_alloc, mock_free, &m);
    void *a = lt_cache_alloc(c, 2 * MiB, NULL); /* a 20 MiB segment, split */
    void *b = lt_cache_alloc(c, 3 * MiB, NULL);
    void *d = lt_cache_alloc(c, 4 * MiB, NULL);
    CHECK(m.calls == 1);
    CHECK((char *)b == (char *)a + 2 * MiB && (char *)d == (char *)b + 3 * MiB);
    lt_cache_free(c, b);
    /* a 3 MiB hole: a 3 MiB request takes it exactly (best fit) */
    void *e = lt_cache_alloc(c, 3 * MiB, NULL);
    CHECK(e == b);
    lt_cache_free(c, a);
    lt_cache_free(c, e);
    CHECK(lt_cache_empty(c) == 0);
    lt_cache_free(c, d);
    CHECK(lt_cache_empty(c) == 20 * MiB);
    /* a request bigger than 10 MiB gets its own segment, rounded to 2 MiB */
    void *big = lt_cache_alloc(c, 33 * MiB + 5, NULL);
    CHECK(big != NULL && stats(c).reserved == 34 * MiB);
    lt_cache_free(c, big);
    lt_cache_destroy(c);
    CHECK(m.live == 0);
}

static void test_out_of_memory_retry(void) {
    mock m = {.capacity = 72 * MiB};
    lt_cache *c = lt_cache_new(mock_alloc, mock_free, &m);
    void *a = lt_cache_alloc(c, 30 * MiB, NULL);
    void *b = lt_cache_alloc(c, 30 * MiB, NULL);
    CHECK(a && b && m.used == 60 * MiB);
    lt_cache_free(c, a);
    /* 40 MiB does not fit beside the two segments; the free one is released and it does */
    void *d = lt_cache_alloc(c, 40 * MiB, NULL);
    CHECK(d != NULL);
    lt_cache_stats s = stats(c);
    CHECK(s.oom_retries == 1 && s.raw_frees == 1);
    CHECK(s.reserved == m.used && m.used == 70 * MiB);
    /* now nothing can be freed: the request fails cleanly and nothing changes */
    int64_t before = s.allocated;
    void *e = lt_cache_alloc(c, 40 * MiB, NULL);
    CHECK(e == NULL);
    CHECK(stats(c).allocated == before);
    /* a request that fits only without the segment's slack: 3 MiB would get a 20 MiB
       segment, which does not fit in 5 MiB; the bare request does */
    lt_cache_free(c, b);
    lt_cache_free(c, d);
    lt_cache_empty(c);
    CHECK(m.used == 0);
    m.capacity = 5 * MiB;
    void *f = lt_cache_alloc(c, 3 * MiB, NULL); /* 20 MiB segment fails; the bare 3 MiB fits */
    CHECK(f != NULL && stats(c).reserved == 3 * MiB);
    lt_cache_free(c, f);
    lt_cache_destroy(c);
    CHECK(m.live == 0);
}

static void test_peak(void) {
    mock m = {.capacity = 1LL << 34};
    lt_cache *c = lt_cache_new(mock_alloc, mock_free, &m);
    void *a = lt_cache_alloc(c, 5 * MiB, NULL);
    void *b = lt_cache_alloc(c, 1 * MiB, NULL);
    lt_cache_free(c, a);
    lt_cache_stats s = stats(c);
    CHECK(s.allocated == 1 * MiB && s.peak_allocated == 6 * MiB);
    lt_cache_reset_peak(c);
    CHECK(stats(c).peak_allocated == 1 * MiB);
    CHECK(stats(c).peak_reserved == stats(c).reserved);
    lt_cache_free(c, b);
    void *z = lt_cache_alloc(c, 0, NULL);
    CHECK(z != NULL && stats(c).allocated == 512);
    lt_cache_free(c, z);
    lt_cache_destroy(c);
}

/* Random allocations and frees: live blocks never overlap and keep their bytes. */
static void test_stress(void) {
    mock m = {.capacity = 1LL << 34};
    lt_cache *c = lt_cache_new(mock_alloc, mock_free, &m);
    enum { SLOTS = 300, ROUNDS = 8000 };
    unsigned char *p[SLOTS] = {0};
    int64_t n[SLOTS] = {0}, got[SLOTS] = {0};
    uint64_t x = 12345;
    int64_t live_bytes = 0;
    int bad = 0;
    for (int r = 0; r < ROUNDS; r++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        int i = (int)((x >> 33) % SLOTS);
        if (p[i]) {
            for (int64_t k = 0; k < n[i]; k += 97)
                if (p[i][k] != (unsigned char)(i * 7 + 1)) bad++;
            lt_cache_free(c, p[i]);
            live_bytes -= got[i];
            p[i] = NULL;
        } else {
            int64_t size;
            int kind = (int)((x >> 20) % 10);
            if (kind < 6)
                size = (int64_t)((x >> 40) % 20000) + 1; /* small */
            else if (kind < 9)
                size = (int64_t)((x >> 40) % (4 * MiB)) + MiB; /* medium */
            else
                size = (int64_t)((x >> 40) % (40 * MiB)) + 10 * MiB; /* large */
            int64_t r2;
            p[i] = lt_cache_alloc(c, size, &r2);
            n[i] = size;
            if (!p[i]) {
                bad++;
                continue;
            }
            memset(p[i], i * 7 + 1, (size_t)size);
            got[i] = r2;
            live_bytes += r2;
        }
    }
    CHECK(bad == 0);
    /* pairwise disjoint */
    int overlap = 0;
    for (int i = 0; i < SLOTS; i++)
        for (int j = i + 1; j < SLOTS; j++)
            if (p[i] && p[j] && p[i] < p[j] + n[j] && p[j] < p[i] + n[i]) overlap++;
    CHECK(overlap == 0);
    CHECK(stats(c).allocated == live_bytes);
    for (int i = 0; i < SLOTS; i++)
        if (p[i]) lt_cache_free(c, p[i]);
    CHECK(stats(c).allocated == 0);
    lt_cache_empty(c);
    CHECK(stats(c).reserved == 0 && m.live == 0);
    lt_cache_destroy(c);
}

/* Pass-through: the raw allocator sees every request at its exact size, and every free. */
static int64_t last_raw_size;
static void *exact_alloc(void *ctx, int64_t n) {
    mock *m = ctx;
    m->calls++;
    last_raw_size = n;
    void *p = malloc((size_t)n); /* exact size: a checker sees one byte past the end */
    if (p) {
        m->used += n;
        m->live++;
    }
    return p;
}

static void test_passthrough(void) {
    mock m = {.capacity = 1LL << 34};
    lt_cache *c = lt_cache_new(exact_alloc, mock_free, &m);
    CHECK(lt_cache_set_passthrough(c, 1) == 0);
    static const int64_t sizes[] = {1, 100, 513, 3 * MiB + 7, 0};
    enum { N = sizeof sizes / sizeof *sizes };
    void *p[N];
    for (int step = 0; step < 3; step++) {
        int64_t calls0 = m.calls;
        for (int i = 0; i < N; i++) {
            int64_t r = -1;
            p[i] = lt_cache_alloc(c, sizes[i], &r);
            CHECK(p[i] != NULL);
            CHECK(last_raw_size == (sizes[i] ? sizes[i] : 1));
            CHECK(r == last_raw_size);
            memset(p[i], step, (size_t)r);
        }
        CHECK(m.calls == calls0 + N); /* no reuse: a raw call per request, every step */
        CHECK(m.live == N);
        lt_cache_stats s = stats(c);
        CHECK(s.allocated == s.reserved && s.reserved == m.used && s.segments == N);
        /* the mode cannot change under live blocks */
        CHECK(lt_cache_set_passthrough(c, 0) == -1);
        for (int i = 0; i < N; i++) CHECK(lt_cache_free(c, p[i]) == 0);
        CHECK(m.live == 0 && m.used == 0); /* every free went straight back */
        s = stats(c);
        CHECK(s.allocated == 0 && s.reserved == 0 && s.segments == 0);
        CHECK(s.raw_frees == s.raw_allocs);
    }
    CHECK(stats(c).peak_allocated == 1 + 100 + 513 + 3 * MiB + 7 + 1);
    CHECK(lt_cache_empty(c) == 0);
    /* blocks still handed out at destroy are released too */
    p[0] = lt_cache_alloc(c, 4096, NULL);
    CHECK(p[0] != NULL && m.live == 1);
    lt_cache_destroy(c);
    CHECK(m.live == 0 && m.used == 0);

    /* back to caching once empty; not while a segment is held */
    c = lt_cache_new(mock_alloc, mock_free, &m);
    void *q = lt_cache_alloc(c, 100, NULL);
    CHECK(lt_cache_set_passthrough(c, 1) == -1);
    lt_cache_free(c, q);
    lt_cache_empty(c);
    CHECK(lt_cache_set_passthrough(c, 1) == 0);
    CHECK(lt_cache_set_passthrough(c, 0) == 0);
    int64_t calls0 = m.calls;
    q = lt_cache_alloc(c, 100, NULL);
    lt_cache_free(c, q);
    q = lt_cache_alloc(c, 100, NULL);
    lt_cache_free(c, q);
    CHECK(m.calls == calls0 + 1); /* caching again: the second request reused the segment */
    lt_cache_destroy(c);
    CHECK(m.live == 0);
}

int main(void) {
    test_steady_state();
    test_small_blocks_share_a_segment();
    test_split_and_merge();
    test_out_of_memory_retry();
    test_peak();
    test_stress();
    test_passthrough();
    return check_summary();
}
