/* storage.c - refcounted storage, the CPU allocator with its accounting, file mappings. */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/internal.h"

enum { LT_MAX_DEVICES = 16, LT_ALIGN = 64 };

/* One counter set per device; index 0 is the CPU, 1 + i is CUDA device i. */
typedef struct lt_counters {
    _Atomic int64_t current, peak, mapped, allocs, frees;
    _Atomic int64_t limit; /* the budget for current (0: none), lt_memory_set_limit */
    _Atomic int64_t paged; /* the paged pool's bytes (the CPU's counters only) */
} lt_counters;

static lt_counters lt_mem[1 + LT_MAX_DEVICES];

static lt_counters *lt_counters_for(int device_type, int device_index) {
    if (device_type == LT_DEVICE_CPU) return &lt_mem[0];
    if (device_type == LT_DEVICE_CUDA && device_index >= 0 && device_index < LT_MAX_DEVICES)
        return &lt_mem[1 + device_index];
    return NULL;
}

static const char *lt_device_word(const lt_counters *c) { return c == &lt_mem[0] ? "cpu" : "cuda"; }

/* Counts n bytes in use, unless that would pass the device's budget: then nothing is
   counted and it fails (LT_ERR_NOMEM) with the numbers. */
static int lt_count_reserve(lt_counters *c, int64_t n) {
    int64_t limit = atomic_load(&c->limit);
    int64_t now = atomic_fetch_add(&c->current, n) + n;
    if (limit > 0 && now > limit) {
        atomic_fetch_sub(&c->current, n);
        return lt_fail(LT_ERR_NOMEM,
                       "out of memory under the budget: %lld bytes requested on %s:%d with %lld "
                       "in use of the %lld-byte budget (memory_limit, LT_MEMORY_LIMIT)",
                       (long long)n, lt_device_word(c), c == &lt_mem[0] ? 0 : (int)(c - lt_mem - 1),
                       (long long)(now - n), (long long)limit);
    }
    int64_t peak = atomic_load(&c->peak);
    while (now > peak && !atomic_compare_exchange_weak(&c->peak, &peak, now)) {
    }
    atomic_fetch_add(&c->allocs, 1);
    return LT_OK;
}

/* Gives back a reservation whose allocation then failed. */
static void lt_count_unreserve(lt_counters *c, int64_t n) {
    atomic_fetch_sub(&c->current, n);
    atomic_fetch_sub(&c->allocs, 1);
}

int lt_memory_set_limit(int device_type, int device_index, int64_t bytes) {
    lt_counters *c = lt_counters_for(device_type, device_index);
    if (!c) return lt_fail(LT_ERR_DEVICE, "no such device (type %d, index %d)", device_type,
                           device_index);
    if (bytes < 0) return lt_fail(LT_ERR_RANGE, "memory limit: %lld bytes is negative", (long long)bytes);
    atomic_store(&c->limit, bytes);
    return LT_OK;
}

int lt_memory_get_limit(int device_type, int device_index, int64_t *out) {
    lt_counters *c = lt_counters_for(device_type, device_index);
    if (!c) return lt_fail(LT_ERR_DEVICE, "no such device (type %d, index %d)", device_type,
                           device_index);
    if (!out) return lt_fail(LT_ERR_ARG, "lt_memory_get_limit: out is NULL");
    *out = atomic_load(&c->limit);
    return LT_OK;
}

static void lt_count_free(lt_counters *c, int64_t n) {
    atomic_fetch_sub(&c->current, n);
    atomic_fetch_add(&c->frees, 1);
}

int lt_memory_get_stats(int device_type, int device_index, lt_memory_stats *out) {
    lt_counters *c = lt_counters_for(device_type, device_index);
    if (!c) return lt_fail(LT_ERR_DEVICE, "no such device (type %d, index %d)", device_type,
                           device_index);
    if (!out) return lt_fail(LT_ERR_ARG, "lt_memory_get_stats: out is NULL");
    out->current_bytes = atomic_load(&c->current);
    out->peak_bytes = atomic_load(&c->peak);
    out->reserved_bytes = out->current_bytes;
    /* Without a loaded backend no device memory was ever reserved, and asking must not
       load it (reading statistics is not using a GPU). */
    if (device_type == LT_DEVICE_CUDA && lt_cuda_backend_loaded()) {
        lt_cache_stats cs;
        LT_TRY(lt_cuda_cache_stats(device_index, &cs));
        out->reserved_bytes = cs.reserved; /* segments the cache holds from cudaMalloc */
    }
    out->mapped_bytes = atomic_load(&c->mapped);
    out->num_allocs = atomic_load(&c->allocs);
    out->num_frees = atomic_load(&c->frees);
    out->paged_bytes = atomic_load(&c->paged);
    return LT_OK;
}

int lt_memory_reset_peak(int device_type, int device_index) {
    lt_counters *c = lt_counters_for(device_type, device_index);
    if (!c) return lt_fail(LT_ERR_DEVICE, "no such device (type %d, index %d)", device_type,
                           device_index);
    atomic_store(&c->peak, atomic_load(&c->current));
    if (device_type == LT_DEVICE_CUDA && lt_cuda_backend_loaded())
        LT_TRY(lt_cuda_cache_reset_peak(device_index));
    return LT_OK;
}

int lt_storage_new_pinned(lt_storage **out, int64_t nbytes) {
    if (!out) return lt_fail(LT_ERR_ARG, "lt_storage_new_pinned: out is NULL");
    *out = NULL;
    if (nbytes < 0) return lt_fail(LT_ERR_ARG, "negative storage size %lld", (long long)nbytes);
    const lt_cuda_api *api;
    int st = lt_cuda_backend_get(&api);
    if (st != LT_OK) return lt_fail_prefix(st, "pinned memory: ");
    LT_TRY(lt_count_reserve(&lt_mem[0], nbytes));
    lt_storage *s = calloc(1, sizeof *s);
    if (!s) {
        lt_count_unreserve(&lt_mem[0], nbytes);
        return lt_fail(LT_ERR_NOMEM, "could not allocate a storage record");
    }
    st = lt_cuda_host_alloc(&s->data, nbytes);
    if (st != LT_OK) {
        lt_count_unreserve(&lt_mem[0], nbytes);
        free(s);
        return st;
    }
    s->nbytes = nbytes;
    s->refcount = 1;
    s->device_type = LT_DEVICE_CPU;
    s->kind = LT_STORAGE_PINNED;
    *out = s;
    return LT_OK;
}

/* The paged pool: host memory outside every budget, zero-filled. Page-locked through the
   CUDA backend when it is already loaded (a CPU run never loads it for this); s->owner is
   non-NULL for page-locked memory, so the release frees it the same way. */
int lt_storage_new_paged(lt_storage **out, int64_t nbytes) {
    if (!out) return lt_fail(LT_ERR_ARG, "lt_storage_new_paged: out is NULL");
    *out = NULL;
    if (nbytes < 0) return lt_fail(LT_ERR_ARG, "negative storage size %lld", (long long)nbytes);
    lt_storage *s = calloc(1, sizeof *s);
    if (!s) return lt_fail(LT_ERR_NOMEM, "could not allocate a storage record");
    if (lt_cuda_backend_loaded()) {
        int st = lt_cuda_host_alloc(&s->data, nbytes > 0 ? nbytes : 1);
        if (st != LT_OK) {
            free(s);
            return lt_fail_prefix(st, "paged pool: ");
        }
        s->owner = s; /* page-locked */
    } else {
        size_t total = (size_t)(nbytes + LT_ALIGN - 1) / LT_ALIGN * LT_ALIGN;
        s->data = aligned_alloc(LT_ALIGN, total > 0 ? total : LT_ALIGN);
        if (!s->data) {
            free(s);
            return lt_fail(LT_ERR_NOMEM, "paged pool: out of host memory for %lld bytes",
                           (long long)nbytes);
        }
    }
    memset(s->data, 0, (size_t)nbytes);
    atomic_fetch_add(&lt_mem[0].paged, nbytes);
    s->nbytes = nbytes;
    s->refcount = 1;
    s->device_type = LT_DEVICE_CPU;
    s->kind = LT_STORAGE_PAGED;
    *out = s;
    return LT_OK;
}

/* Host allocations carry their size in a 64-byte prefix so frees can be counted. NULL
   with the error set when the budget or the system refuses. */
static void *lt_host_alloc(int64_t nbytes) {
    if (nbytes < 0 || nbytes > INT64_MAX - 2 * LT_ALIGN) {
        lt_fail(LT_ERR_NOMEM, "cannot allocate %lld bytes", (long long)nbytes);
        return NULL;
    }
    if (lt_count_reserve(&lt_mem[0], nbytes) != LT_OK) return NULL;
    size_t total = (size_t)(nbytes + LT_ALIGN + LT_ALIGN - 1) / LT_ALIGN * LT_ALIGN;
    char *base = aligned_alloc(LT_ALIGN, total);
    if (!base) {
        lt_count_unreserve(&lt_mem[0], nbytes);
        lt_fail(LT_ERR_NOMEM, "out of host memory: requested %lld bytes with %lld bytes already "
                              "allocated",
                (long long)nbytes, (long long)atomic_load(&lt_mem[0].current));
        return NULL;
    }
    memcpy(base, &nbytes, sizeof nbytes);
    return base + LT_ALIGN;
}

static void lt_host_free(void *p) {
    if (!p) return;
    char *base = (char *)p - LT_ALIGN;
    int64_t nbytes;
    memcpy(&nbytes, base, sizeof nbytes);
    lt_count_free(&lt_mem[0], nbytes);
    free(base);
}

void *lt_scratch_alloc(int64_t nbytes) {
    void *p = lt_host_alloc(nbytes);
    if (!p) lt_fail_prefix(LT_ERR_NOMEM, "kernel scratch memory: ");
    return p;
}

void lt_scratch_free(void *p) { lt_host_free(p); }

int lt_storage_new(lt_storage **out, int64_t nbytes, int device_type, int device_index) {
    if (!out) return lt_fail(LT_ERR_ARG, "lt_storage_new: out is NULL");
    *out = NULL;
    if (nbytes < 0) return lt_fail(LT_ERR_ARG, "negative storage size %lld", (long long)nbytes);
    if (device_type == LT_DEVICE_CUDA) {
        const lt_cuda_api *api;
        int st = lt_cuda_backend_get(&api);
        if (st != LT_OK) return lt_fail_prefix(st, "CUDA tensors: ");
        if (device_index < 0 || device_index >= LT_MAX_DEVICES)
            return lt_fail(LT_ERR_DEVICE, "CUDA device index %d is out of range", device_index);
        LT_TRY(lt_count_reserve(&lt_mem[1 + device_index], nbytes));
        lt_storage *s = calloc(1, sizeof *s);
        if (!s) {
            lt_count_unreserve(&lt_mem[1 + device_index], nbytes);
            return lt_fail(LT_ERR_NOMEM, "could not allocate a storage record");
        }
        st = lt_cuda_alloc(&s->data, nbytes, device_index);
        if (st != LT_OK) {
            lt_count_unreserve(&lt_mem[1 + device_index], nbytes);
            free(s);
            return st;
        }
        s->nbytes = nbytes;
        s->refcount = 1;
        s->device_type = LT_DEVICE_CUDA;
        s->device_index = (int16_t)device_index;
        s->kind = LT_STORAGE_OWNED;
        *out = s;
        return LT_OK;
    }
    if (device_type != LT_DEVICE_CPU)
        return lt_fail(LT_ERR_DEVICE, "unknown device type %d", device_type);
    lt_storage *s = calloc(1, sizeof *s);
    if (!s) return lt_fail(LT_ERR_NOMEM, "could not allocate a storage record");
    s->data = lt_host_alloc(nbytes);
    if (!s->data) {
        free(s);
        return lt_last_status();
    }
    s->nbytes = nbytes;
    s->refcount = 1;
    s->device_type = LT_DEVICE_CPU;
    s->device_index = 0;
    s->kind = LT_STORAGE_OWNED;
    *out = s;
    return LT_OK;
}

void lt_storage_retain(lt_storage *s) {
    if (s) __atomic_add_fetch(&s->refcount, 1, __ATOMIC_RELAXED);
}

void lt_storage_release(lt_storage *s) {
    if (!s) return;
    if (__atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    switch (s->kind) {
    case LT_STORAGE_OWNED:
        if (s->device_type == LT_DEVICE_CUDA) {
            lt_cuda_free(s->data, s->device_index);
            lt_count_free(&lt_mem[1 + s->device_index], s->nbytes);
            break;
        }
        lt_host_free(s->data);
        break;
    case LT_STORAGE_PINNED:
        lt_cuda_host_free(s->data);
        lt_count_free(&lt_mem[0], s->nbytes);
        break;
    case LT_STORAGE_MAPPED: lt_mapping_release(s->owner); break;
    case LT_STORAGE_PAGED:
        if (s->owner) lt_cuda_host_free(s->data);
        else free(s->data);
        atomic_fetch_sub(&lt_mem[0].paged, s->nbytes);
        break;
    default: break;
    }
    free(s);
}

/* ---- file mappings ----------------------------------------------------------------- */

struct lt_mapping {
    void *addr;
    int64_t size;
    int32_t refcount;
};

int lt_mapping_open(lt_mapping **out, const char *path, int64_t *size_out) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lt_fail(LT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return lt_fail(LT_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return lt_fail(LT_ERR_IO, "%s: not a regular file", path);
    }
    lt_mapping *m = calloc(1, sizeof *m);
    if (!m) {
        close(fd);
        return lt_fail(LT_ERR_NOMEM, "%s: out of memory", path);
    }
    m->size = st.st_size;
    m->refcount = 1;
    if (m->size > 0) {
        /* Private and writable: a model trained in place copies the pages it touches and
           never changes the file. */
        m->addr = mmap(NULL, (size_t)m->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        if (m->addr == MAP_FAILED) {
            int e = errno;
            close(fd);
            free(m);
            return lt_fail(LT_ERR_IO, "%s: cannot map: %s", path, strerror(e));
        }
    }
    close(fd);
    atomic_fetch_add(&lt_mem[0].mapped, m->size);
    *out = m;
    if (size_out) *size_out = m->size;
    return LT_OK;
}

const void *lt_mapping_data(const lt_mapping *m) { return m->addr; }

void lt_mapping_retain(lt_mapping *m) {
    if (m) __atomic_add_fetch(&m->refcount, 1, __ATOMIC_RELAXED);
}

void lt_mapping_release(lt_mapping *m) {
    if (!m) return;
    if (__atomic_sub_fetch(&m->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    if (m->addr) munmap(m->addr, (size_t)m->size);
    atomic_fetch_sub(&lt_mem[0].mapped, m->size);
    free(m);
}

int lt_mapping_drop_pages(lt_mapping *m, int64_t offset, int64_t nbytes) {
    if (!m || offset < 0 || nbytes < 0 || offset > m->size || nbytes > m->size - offset)
        return LT_INTERNAL("page window outside the mapping");
    if (!m->addr || nbytes == 0) return LT_OK;
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) page = 4096;
    uintptr_t base = (uintptr_t)m->addr;
    uintptr_t lo = base + (uintptr_t)offset, hi = lo + (uintptr_t)nbytes;
    /* only pages wholly inside the window: the neighbouring tensors' bytes stay resident */
    lo = (lo + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    hi &= ~((uintptr_t)page - 1);
    if (hi <= lo) return LT_OK;
    if (madvise((void *)lo, hi - lo, MADV_DONTNEED) != 0)
        return lt_fail(LT_ERR_IO, "madvise: %s", strerror(errno));
    return LT_OK;
}

int lt_storage_new_mapped(lt_storage **out, lt_mapping *m, int64_t offset, int64_t nbytes) {
    *out = NULL;
    if (offset < 0 || nbytes < 0 || offset > m->size || nbytes > m->size - offset)
        return LT_INTERNAL("mapped window [%lld, +%lld) outside a %lld-byte file",
                           (long long)offset, (long long)nbytes, (long long)m->size);
    lt_storage *s = calloc(1, sizeof *s);
    if (!s) return lt_fail(LT_ERR_NOMEM, "could not allocate a storage record");
    s->data = (char *)m->addr + offset;
    s->nbytes = nbytes;
    s->refcount = 1;
    s->device_type = LT_DEVICE_CPU;
    s->kind = LT_STORAGE_MAPPED;
    s->owner = m;
    lt_mapping_retain(m);
    *out = s;
    return LT_OK;
}
