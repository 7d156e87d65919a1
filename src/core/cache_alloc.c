/* cache_alloc.c - the caching allocator described in cache_alloc.h.
 *
 * Blocks of one segment form a doubly linked list in address order; a segment is the chain
 * from a block with no prev to a block with no next. Free blocks of each pool sit in an
 * array sorted by (size, address) so best fit is a binary search; handed-out blocks are
 * found from their pointer through an open-addressing hash table. Freeing merges a block
 * with free neighbours of its segment, so an entirely free segment is a single block with
 * neither neighbour, which is what lt_cache_empty looks for. */
#include "core/cache_alloc.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum {
    ROUND = 512,
    SMALL_MAX = 1 << 20,         /* requests up to 1 MiB use the small pool */
    SMALL_SEGMENT = 2 << 20,     /* the small pool's segment size */
    LARGE_MIN_SEGMENT = 20 << 20, /* large segments for requests up to 10 MiB */
    LARGE_ROUND = 2 << 20,
    SPLIT_SMALL = ROUND,         /* keep a remainder this big as its own block */
    SPLIT_LARGE = 1 << 20,
};

typedef struct blk {
    char *ptr;
    int64_t size;
    int pool; /* 0 small, 1 large */
    int allocated;
    struct blk *prev, *next; /* neighbours in the segment */
} blk;

typedef struct {
    blk **v;
    int64_t n, cap;
} blk_vec;

struct lt_cache {
    lt_raw_alloc_fn raw_alloc;
    lt_raw_free_fn raw_free;
    void *ctx;
    pthread_mutex_t mu;
    int passthrough;      /* every block is its own raw allocation (lt_cache_set_passthrough) */
    blk_vec free_pool[2]; /* sorted by (size, ptr) */
    blk **table;          /* handed-out blocks, open addressing by pointer */
    int64_t table_cap, table_n;
    lt_cache_stats st;
};

/* ---- the sorted free pools ------------------------------------------------------------ */

/* First index whose block is not less than (size, ptr). */
static int64_t lower_bound(const blk_vec *v, int64_t size, const char *ptr) {
    int64_t lo = 0, hi = v->n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const blk *m = v->v[mid];
        if (m->size < size || (m->size == size && m->ptr < ptr))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int vec_insert(blk_vec *v, blk *b) {
    if (v->n == v->cap) {
        int64_t cap = v->cap ? 2 * v->cap : 64;
        blk **nv = realloc(v->v, (size_t)cap * sizeof *nv);
        if (!nv) return -1;
        v->v = nv;
        v->cap = cap;
    }
    int64_t i = lower_bound(v, b->size, b->ptr);
    memmove(v->v + i + 1, v->v + i, (size_t)(v->n - i) * sizeof *v->v);
    v->v[i] = b;
    v->n++;
    return 0;
}

static void vec_remove(blk_vec *v, blk *b) {
    int64_t i = lower_bound(v, b->size, b->ptr);
    if (i < v->n && v->v[i] == b) {
        memmove(v->v + i, v->v + i + 1, (size_t)(v->n - i - 1) * sizeof *v->v);
        v->n--;
    }
}

/* ---- the pointer table ------------------------------------------------------------------ */

static uint64_t hash_ptr(const void *p) {
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

#define TOMB ((blk *)(uintptr_t)1)

static int table_grow(lt_cache *c) {
    int64_t cap = c->table_cap ? 2 * c->table_cap : 256;
    blk **t = calloc((size_t)cap, sizeof *t);
    if (!t) return -1;
    for (int64_t i = 0; i < c->table_cap; i++) {
        blk *b = c->table[i];
        if (!b || b == TOMB) continue;
        uint64_t h = hash_ptr(b->ptr) & (uint64_t)(cap - 1);
        while (t[h]) h = (h + 1) & (uint64_t)(cap - 1);
        t[h] = b;
    }
    free(c->table);
    c->table = t;
    c->table_cap = cap;
    return 0;
}

static int table_put(lt_cache *c, blk *b) {
    /* grow at half full, counting tombstones through table_n (never decremented on delete
       until a rebuild), so probes stay short */
    if (2 * (c->table_n + 1) > c->table_cap) {
        if (table_grow(c) != 0) return -1;
        int64_t live = 0;
        for (int64_t i = 0; i < c->table_cap; i++) live += c->table[i] != NULL;
        c->table_n = live;
    }
    uint64_t h = hash_ptr(b->ptr) & (uint64_t)(c->table_cap - 1);
    while (c->table[h] && c->table[h] != TOMB) h = (h + 1) & (uint64_t)(c->table_cap - 1);
    if (!c->table[h]) c->table_n++;
    c->table[h] = b;
    return 0;
}

static blk *table_take(lt_cache *c, const void *p) {
    if (!c->table_cap) return NULL;
    uint64_t h = hash_ptr(p) & (uint64_t)(c->table_cap - 1);
    for (int64_t probes = 0; probes < c->table_cap; probes++) {
        blk *b = c->table[h];
        if (!b) return NULL;
        if (b != TOMB && b->ptr == p) {
            c->table[h] = TOMB;
            return b;
        }
        h = (h + 1) & (uint64_t)(c->table_cap - 1);
    }
    return NULL;
}

/* ---- the cache ---------------------------------------------------------------------------- */

lt_cache *lt_cache_new(lt_raw_alloc_fn raw_alloc, lt_raw_free_fn raw_free, void *ctx) {
    lt_cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->raw_alloc = raw_alloc;
    c->raw_free = raw_free;
    c->ctx = ctx;
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

static void note_alloc(lt_cache *c, int64_t n) {
    c->st.allocated += n;
    if (c->st.allocated > c->st.peak_allocated) c->st.peak_allocated = c->st.allocated;
    c->st.num_allocs++;
}

static int64_t empty_locked(lt_cache *c);

/* A new segment for a request of `size` (already rounded) in `pool`. */
static blk *new_segment(lt_cache *c, int pool, int64_t size) {
    int64_t seg;
    if (pool == 0)
        seg = SMALL_SEGMENT;
    else
        seg = size <= LARGE_MIN_SEGMENT / 2 ? LARGE_MIN_SEGMENT : round_up(size, LARGE_ROUND);
    blk *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    void *p = c->raw_alloc(c->ctx, seg);
    if (!p) {
        /* give back every entirely free segment, then once more */
        c->st.oom_retries++;
        empty_locked(c);
        p = c->raw_alloc(c->ctx, seg);
        if (!p && seg > size) {
            /* the segment's slack may be what does not fit: try the bare request */
            seg = size;
            p = c->raw_alloc(c->ctx, seg);
        }
        if (!p) {
            free(b);
            return NULL;
        }
    }
    b->ptr = p;
    b->size = seg;
    b->pool = pool;
    c->st.reserved += seg;
    if (c->st.reserved > c->st.peak_reserved) c->st.peak_reserved = c->st.reserved;
    c->st.segments++;
    c->st.raw_allocs++;
    return b;
}

/* Pass-through: a raw allocation of exactly nbytes (1 for 0), a lone block in the table. */
static void *alloc_passthrough_locked(lt_cache *c, int64_t nbytes, int64_t *rounded) {
    int64_t size = nbytes > 0 ? nbytes : 1;
    blk *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    void *p = c->raw_alloc(c->ctx, size);
    if (!p) {
        free(b);
        return NULL;
    }
    b->ptr = p;
    b->size = size;
    b->allocated = 1;
    if (table_put(c, b) != 0) {
        c->raw_free(c->ctx, p, size);
        free(b);
        return NULL;
    }
    c->st.reserved += size;
    if (c->st.reserved > c->st.peak_reserved) c->st.peak_reserved = c->st.reserved;
    c->st.segments++;
    c->st.raw_allocs++;
    note_alloc(c, size);
    if (rounded) *rounded = size;
    return p;
}

int lt_cache_set_passthrough(lt_cache *c, int on) {
    pthread_mutex_lock(&c->mu);
    int ok = c->st.segments == 0;
    if (ok) c->passthrough = on != 0;
    pthread_mutex_unlock(&c->mu);
    return ok ? 0 : -1;
}

void *lt_cache_alloc(lt_cache *c, int64_t nbytes, int64_t *rounded) {
    if (nbytes < 0) return NULL;
    int64_t size = round_up(nbytes > 0 ? nbytes : 1, ROUND);
    int pool = size <= SMALL_MAX ? 0 : 1;
    pthread_mutex_lock(&c->mu);
    if (c->passthrough) {
        void *p = alloc_passthrough_locked(c, nbytes, rounded);
        pthread_mutex_unlock(&c->mu);
        return p;
    }
    blk_vec *v = &c->free_pool[pool];
    int64_t i = lower_bound(v, size, NULL);
    blk *b;
    if (i < v->n) {
        b = v->v[i];
        vec_remove(v, b);
    } else {
        b = new_segment(c, pool, size);
        if (!b) {
            pthread_mutex_unlock(&c->mu);
            return NULL;
        }
    }
    /* split off the rest when it is worth keeping */
    int64_t rest = b->size - size;
    if (rest >= (pool == 0 ? SPLIT_SMALL : SPLIT_LARGE)) {
        blk *r = calloc(1, sizeof *r);
        if (r) {
            r->ptr = b->ptr + size;
            r->size = rest;
            r->pool = pool;
            r->prev = b;
            r->next = b->next;
            if (b->next) b->next->prev = r;
            b->next = r;
            b->size = size;
            if (vec_insert(&c->free_pool[pool], r) != 0) {
                /* cannot track the rest: keep it inside the block */
                b->next = r->next;
                if (r->next) r->next->prev = b;
                b->size += rest;
                free(r);
            }
        }
    }
    b->allocated = 1;
    if (table_put(c, b) != 0) {
        b->allocated = 0;
        vec_insert(&c->free_pool[pool], b);
        pthread_mutex_unlock(&c->mu);
        return NULL;
    }
    note_alloc(c, b->size);
    if (rounded) *rounded = b->size;
    pthread_mutex_unlock(&c->mu);
    return b->ptr;
}

/* Merge b with its free neighbour n (n follows b). */
static void absorb_next(lt_cache *c, blk *b) {
    blk *n = b->next;
    vec_remove(&c->free_pool[n->pool], n);
    b->size += n->size;
    b->next = n->next;
    if (n->next) n->next->prev = b;
    free(n);
}

int lt_cache_free(lt_cache *c, void *ptr) {
    if (!ptr) return 0;
    pthread_mutex_lock(&c->mu);
    blk *b = table_take(c, ptr);
    if (!b) {
        pthread_mutex_unlock(&c->mu);
        return -1;
    }
    b->allocated = 0;
    c->st.allocated -= b->size;
    c->st.num_frees++;
    if (c->passthrough) {
        /* a lone raw allocation: straight back (cudaFree waits for the device, so no
           queued kernel still uses it) */
        c->raw_free(c->ctx, b->ptr, b->size);
        c->st.reserved -= b->size;
        c->st.segments--;
        c->st.raw_frees++;
        free(b);
        pthread_mutex_unlock(&c->mu);
        return 0;
    }
    if (b->next && !b->next->allocated) absorb_next(c, b);
    if (b->prev && !b->prev->allocated) {
        blk *p = b->prev;
        vec_remove(&c->free_pool[p->pool], p);
        absorb_next(c, p); /* b is freed here; p now covers both */
        b = p;
    }
    if (vec_insert(&c->free_pool[b->pool], b) != 0) {
        /* out of host memory for the pool array: the block is lost to reuse, not leaked;
           it is still freed with its segment at destroy */
    }
    pthread_mutex_unlock(&c->mu);
    return 0;
}

static int64_t empty_locked(lt_cache *c) {
    int64_t released = 0;
    for (int pool = 0; pool < 2; pool++) {
        blk_vec *v = &c->free_pool[pool];
        int64_t w = 0;
        for (int64_t i = 0; i < v->n; i++) {
            blk *b = v->v[i];
            if (!b->prev && !b->next) { /* the whole segment, free */
                c->raw_free(c->ctx, b->ptr, b->size);
                c->st.reserved -= b->size;
                c->st.segments--;
                c->st.raw_frees++;
                released += b->size;
                free(b);
            } else {
                v->v[w++] = b;
            }
        }
        v->n = w;
    }
    return released;
}

int64_t lt_cache_empty(lt_cache *c) {
    pthread_mutex_lock(&c->mu);
    int64_t released = empty_locked(c);
    pthread_mutex_unlock(&c->mu);
    return released;
}

void lt_cache_get_stats(lt_cache *c, lt_cache_stats *out) {
    pthread_mutex_lock(&c->mu);
    *out = c->st;
    pthread_mutex_unlock(&c->mu);
}

void lt_cache_reset_peak(lt_cache *c) {
    pthread_mutex_lock(&c->mu);
    c->st.peak_allocated = c->st.allocated;
    c->st.peak_reserved = c->st.reserved;
    pthread_mutex_unlock(&c->mu);
}

void lt_cache_destroy(lt_cache *c) {
    if (!c) return;
    /* collect the heads of all segments: free blocks and handed-out blocks */
    blk **heads = NULL;
    int64_t nh = 0, caph = 0;
    for (int pool = 0; pool < 2; pool++)
        for (int64_t i = 0; i < c->free_pool[pool].n; i++) {
            blk *b = c->free_pool[pool].v[i];
            while (b->prev) b = b->prev;
            if (nh == caph) {
                caph = caph ? 2 * caph : 64;
                blk **nhd = realloc(heads, (size_t)caph * sizeof *nhd);
                if (!nhd) break;
                heads = nhd;
            }
            heads[nh++] = b;
        }
    for (int64_t i = 0; i < c->table_cap; i++) {
        blk *b = c->table[i];
        if (!b || b == TOMB) continue;
        while (b->prev) b = b->prev;
        if (nh == caph) {
            caph = caph ? 2 * caph : 64;
            blk **nhd = realloc(heads, (size_t)caph * sizeof *nhd);
            if (!nhd) break;
            heads = nhd;
        }
        heads[nh++] = b;
    }
    for (int64_t i = 0; i < nh; i++) {
        blk *h = heads[i];
        if (!h) continue;
        for (int64_t j = i + 1; j < nh; j++)
            if (heads[j] == h) heads[j] = NULL; /* one segment, several entries */
        int64_t total = 0;
        for (blk *b = h; b;) {
            blk *n = b->next;
            total += b->size;
            if (b != h) free(b);
            b = n;
        }
        c->raw_free(c->ctx, h->ptr, total);
        free(h);
    }
    free(heads);
    free(c->free_pool[0].v);
    free(c->free_pool[1].v);
    free(c->table);
    pthread_mutex_destroy(&c->mu);
    free(c);
}
