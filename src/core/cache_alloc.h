/* cache_alloc.h - a caching allocator over a slow raw allocator (cudaMalloc/cudaFree).
 *
 * Raw allocations (segments) are never given back on the hot path: a freed block goes back
 * to a pool and the next request of a fitting size reuses it. Segments are carved into
 * blocks (best fit, split when the rest is worth keeping) and neighbouring free blocks of a
 * segment merge again, so a training step that allocates the same sizes every iteration
 * reaches a steady state with no raw calls at all.
 *
 * Two pools, as sizes behave differently:
 *   small  requests <= 1 MiB, rounded up to 512 B, carved from 2 MiB segments;
 *   large  requests  > 1 MiB, rounded up to 512 B, carved from segments of at least 20 MiB
 *          (requests up to 10 MiB) or of the request rounded up to 2 MiB.
 * The smallest free block that fits is used; what is left over goes back to the pool as its
 * own block when it is at least 512 B (small pool) or 1 MiB (large pool), so one big free
 * block is never pinned whole by a small tensor.
 *
 * When the raw allocator fails, every segment that is entirely free is released and the
 * request tried once more; if it still fails the caller gets NULL and builds the error from
 * lt_cache_stats (requested, allocated, reserved).
 *
 * The logic knows nothing of CUDA: tests run it on the CPU over a mock raw allocator.
 * One stream per device means a freed block may be reused at once (the stream orders the
 * old user's kernels before the new user's). Thread-safe (one mutex per cache).
 *
 * Pass-through mode (lt_cache_set_passthrough) turns the caching off for memory checkers:
 * every request is its own raw allocation of exactly the bytes asked for, and every free
 * gives it straight back. A checker such as compute-sanitizer's memcheck only sees the
 * bounds of raw allocations, so an overrun into a neighbouring block of a cached segment is
 * invisible to it until each block is a raw allocation of its own. The statistics keep their
 * meaning (allocated = reserved = the bytes asked for). */
#ifndef LT_CACHE_ALLOC_H
#define LT_CACHE_ALLOC_H

#include <stdint.h>

typedef struct lt_cache lt_cache;

/* raw_alloc returns NULL on failure; ctx is passed through. */
typedef void *(*lt_raw_alloc_fn)(void *ctx, int64_t nbytes);
typedef void (*lt_raw_free_fn)(void *ctx, void *ptr, int64_t nbytes);

typedef struct lt_cache_stats {
    int64_t allocated;      /* bytes in blocks handed out now (rounded sizes) */
    int64_t peak_allocated; /* high-water mark of `allocated` since the last reset */
    int64_t reserved;       /* bytes held in raw segments */
    int64_t peak_reserved;
    int64_t segments;       /* raw segments held */
    int64_t raw_allocs;     /* raw_alloc calls that succeeded, ever */
    int64_t raw_frees;      /* raw_free calls, ever */
    int64_t oom_retries;    /* times the cache was emptied to retry a failed raw_alloc */
    int64_t num_allocs, num_frees;
} lt_cache_stats;

lt_cache *lt_cache_new(lt_raw_alloc_fn raw_alloc, lt_raw_free_fn raw_free, void *ctx);
/* Releases every segment (blocks still handed out included): only at shutdown. */
void lt_cache_destroy(lt_cache *c);

/* A block of at least nbytes (nbytes may be 0: a 512-byte block is returned). NULL when the
   raw allocator fails even after emptying the cache. *rounded gets the size counted. */
void *lt_cache_alloc(lt_cache *c, int64_t nbytes, int64_t *rounded);
/* Give a block back to its pool. Unknown pointers are ignored and return -1. */
int lt_cache_free(lt_cache *c, void *ptr);
/* Release every entirely free segment to the raw allocator; returns the bytes released. */
int64_t lt_cache_empty(lt_cache *c);
void lt_cache_get_stats(lt_cache *c, lt_cache_stats *out);
/* Switch pass-through mode on (1) or off (0). Only while the cache holds no segment, so a
   block never changes mode under its user: returns -1 (and changes nothing) otherwise. */
int lt_cache_set_passthrough(lt_cache *c, int on);
void lt_cache_reset_peak(lt_cache *c);

#endif
