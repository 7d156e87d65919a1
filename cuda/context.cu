// context.cu - devices, their contexts (stream, cuBLASLt, workspace, caching allocator),
// pinned host memory, and the backend's entry point (the table the core calls through).
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"

enum { LT_CUDA_MAX_DEVICES = 16 };

// cuBLASLt's workspace: 32 MiB lets it pick its split-K and stream-K kernels on Hopper
// (NVIDIA's guidance for sm_90 is at least 32 MiB).
static const size_t WORKSPACE_BYTES = 32u << 20;

static lt_cuda_context *contexts[LT_CUDA_MAX_DEVICES];
static pthread_mutex_t contexts_mu = PTHREAD_MUTEX_INITIALIZER;
static int current_device = 0;

extern "C" int lt_cuda_runtime_device_count(int32_t *out) {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
        cudaGetLastError(); // clear the sticky "no device" error
        *out = 0;
        return LT_OK;
    }
    if (err != cudaSuccess)
        return lt_fail(LT_ERR_DEVICE, "cudaGetDeviceCount: %s", cudaGetErrorString(err));
    *out = n;
    return LT_OK;
}

static int check_index(int32_t index, const char *what) {
    int32_t n = 0;
    LT_TRY(lt_cuda_runtime_device_count(&n));
    if (n == 0) return lt_fail(LT_ERR_DEVICE, "%s: no CUDA device is present", what);
    if (index < 0 || index >= n || index >= LT_CUDA_MAX_DEVICES)
        return lt_fail(LT_ERR_DEVICE, "%s: CUDA device %d does not exist (%d present)", what,
                       (int)index, (int)n);
    return LT_OK;
}

// ---- the caching allocator's raw side ------------------------------------------------------

static void *raw_alloc(void *ctx, int64_t nbytes) {
    lt_cuda_context *c = (lt_cuda_context *)ctx;
    void *p = NULL;
    if (cudaSetDevice(c->device) != cudaSuccess) return NULL;
    if (cudaMalloc(&p, (size_t)nbytes) != cudaSuccess) {
        cudaGetLastError(); // an out-of-memory is not sticky; clear it for the retry
        return NULL;
    }
    return p;
}

static void raw_free(void *ctx, void *p, int64_t nbytes) {
    (void)nbytes;
    lt_cuda_context *c = (lt_cuda_context *)ctx;
    // cudaFree waits for the device; it is only reached from empty_cache and the
    // out-of-memory retry, never from a tensor's release
    cudaSetDevice(c->device);
    cudaFree(p);
}

// ---- contexts ----------------------------------------------------------------------------

// LT_CUDA_NO_CACHE=1 (read when a device is first used): every device allocation is a real
// cudaMalloc of exactly its size and every release a cudaFree, so compute-sanitizer's memcheck
// sees each tensor's bounds. Slow (cudaFree waits for the device); for checking, not training.
static int no_cache_requested(void) {
    const char *v = getenv("LT_CUDA_NO_CACHE");
    return v && *v && strcmp(v, "0") != 0;
}

static int make_context(int device, lt_cuda_context **out) {
    lt_cuda_context *c = (lt_cuda_context *)calloc(1, sizeof *c);
    if (!c) return lt_fail(LT_ERR_NOMEM, "CUDA context: out of host memory");
    c->device = device;
    int st = LT_OK;
    cudaError_t e;
    if ((e = cudaSetDevice(device)) != cudaSuccess ||
        (e = cudaGetDeviceProperties(&c->prop, device)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaMalloc(&c->workspace, WORKSPACE_BYTES)) != cudaSuccess ||
        (e = cudaMallocHost(&c->staging, 4096)) != cudaSuccess) {
        st = lt_fail(LT_ERR_DEVICE, "initialising CUDA device %d: %s", device,
                     cudaGetErrorString(e));
    } else if (cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS) {
        st = lt_fail(LT_ERR_DEVICE, "initialising CUDA device %d: cublasLtCreate failed", device);
    } else if (!(c->cache = lt_cache_new(raw_alloc, raw_free, c))) {
        st = lt_fail(LT_ERR_NOMEM, "CUDA device %d: cannot make the allocator", device);
    } else if (no_cache_requested()) {
        lt_cache_set_passthrough(c->cache, 1); // a new cache holds nothing: cannot fail
    }
    if (st != LT_OK) {
        if (c->lt) cublasLtDestroy(c->lt);
        if (c->staging) cudaFreeHost(c->staging);
        if (c->workspace) cudaFree(c->workspace);
        if (c->stream) cudaStreamDestroy(c->stream);
        free(c);
        return st;
    }
    c->workspace_bytes = WORKSPACE_BYTES;
    *out = c;
    return LT_OK;
}

extern "C" lt_cuda_context *lt_cuda_ctx(int device) {
    if (device < 0 || device >= LT_CUDA_MAX_DEVICES) {
        lt_fail(LT_ERR_DEVICE, "CUDA device index %d is out of range", device);
        return NULL;
    }
    lt_cuda_context *c = __atomic_load_n(&contexts[device], __ATOMIC_ACQUIRE);
    if (!c) {
        pthread_mutex_lock(&contexts_mu);
        c = contexts[device];
        if (!c) {
            if (check_index(device, "CUDA") != LT_OK || make_context(device, &c) != LT_OK) {
                pthread_mutex_unlock(&contexts_mu);
                return NULL;
            }
            __atomic_store_n(&contexts[device], c, __ATOMIC_RELEASE);
        }
        pthread_mutex_unlock(&contexts_mu);
    }
    // kernels launch on the calling thread's current device
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess || cur != device) {
        cudaError_t e = cudaSetDevice(device);
        if (e != cudaSuccess) {
            lt_fail(LT_ERR_DEVICE, "cudaSetDevice(%d): %s", device, cudaGetErrorString(e));
            return NULL;
        }
    }
    return c;
}

extern "C" int lt_cuda_runtime_set_device(int32_t index) {
    LT_TRY(check_index(index, "set_device"));
    current_device = index;
    LT_CU(cudaSetDevice(index));
    return LT_OK;
}

extern "C" int lt_cuda_runtime_get_device(int32_t *out) {
    *out = current_device;
    return LT_OK;
}

extern "C" int lt_cuda_runtime_synchronize(int32_t index) {
    if (index < 0) index = current_device;
    LT_CUDA_CTX(c, index);
    LT_CU(cudaStreamSynchronize(c->stream));
    return LT_OK;
}

extern "C" int lt_cuda_runtime_empty_cache(int32_t index, int64_t *released) {
    if (index < 0) index = current_device;
    LT_CUDA_CTX(c, index);
    // blocks freed while kernels that used them are still queued must not be released
    // under those kernels
    LT_CU(cudaStreamSynchronize(c->stream));
    int64_t n = lt_cache_empty(c->cache);
    if (released) *released = n;
    return LT_OK;
}

extern "C" int lt_cuda_runtime_device_info(int32_t index, lt_cuda_device_info *out) {
    LT_CUDA_CTX(c, index);
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", c->prop.name);
    out->major = c->prop.major;
    out->minor = c->prop.minor;
    out->sm_count = c->prop.multiProcessorCount;
    size_t free_b = 0, total_b = 0;
    LT_CU(cudaMemGetInfo(&free_b, &total_b));
    out->total_bytes = (int64_t)total_b;
    out->free_bytes = (int64_t)free_b;
    return LT_OK;
}

extern "C" int lt_cuda_runtime_stream(int32_t index, void **out) {
    *out = NULL;
    LT_TRY(check_index(index, "stream"));
    LT_CUDA_CTX(c, index);
    *out = (void *)c->stream;
    return LT_OK;
}

// ---- device memory ------------------------------------------------------------------------

static void format_bytes(char *buf, size_t n, int64_t b) {
    if (b >= (1LL << 30))
        snprintf(buf, n, "%.2f GiB", (double)b / (1LL << 30));
    else if (b >= (1LL << 20))
        snprintf(buf, n, "%.2f MiB", (double)b / (1LL << 20));
    else
        snprintf(buf, n, "%lld bytes", (long long)b);
}

extern "C" int lt_cuda_alloc(void **out, int64_t nbytes, int32_t device) {
    *out = NULL;
    LT_CUDA_CTX(c, device);
    void *p = lt_cache_alloc(c->cache, nbytes, NULL);
    if (!p) {
        lt_cache_stats s;
        lt_cache_get_stats(c->cache, &s);
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        cudaGetLastError();
        char req[32], alloc[32], res[32], fr[32], tot[32];
        format_bytes(req, sizeof req, nbytes);
        format_bytes(alloc, sizeof alloc, s.allocated);
        format_bytes(res, sizeof res, s.reserved);
        format_bytes(fr, sizeof fr, (int64_t)free_b);
        format_bytes(tot, sizeof tot, (int64_t)total_b);
        return lt_fail(LT_ERR_NOMEM,
                       "CUDA out of memory on device %d (%s): tried to allocate %s; luatrain "
                       "has %s allocated and %s reserved; the device has %s free of %s "
                       "(cached blocks were already released and the allocation retried)",
                       device, c->prop.name, req, alloc, res, fr, tot);
    }
    *out = p;
    return LT_OK;
}

extern "C" void lt_cuda_free(void *p, int32_t device) {
    if (!p || device < 0 || device >= LT_CUDA_MAX_DEVICES) return;
    lt_cuda_context *c = __atomic_load_n(&contexts[device], __ATOMIC_ACQUIRE);
    if (c) lt_cache_free(c->cache, p); // back to the cache: no cudaFree, no sync
}

extern "C" int lt_cuda_cache_stats(int32_t device, lt_cache_stats *out) {
    memset(out, 0, sizeof *out);
    if (device < 0 || device >= LT_CUDA_MAX_DEVICES)
        return lt_fail(LT_ERR_DEVICE, "CUDA device index %d is out of range", device);
    lt_cuda_context *c = __atomic_load_n(&contexts[device], __ATOMIC_ACQUIRE);
    if (c) lt_cache_get_stats(c->cache, out); // a device never used has nothing cached
    return LT_OK;
}

extern "C" int lt_cuda_cache_reset_peak(int32_t device) {
    if (device < 0 || device >= LT_CUDA_MAX_DEVICES)
        return lt_fail(LT_ERR_DEVICE, "CUDA device index %d is out of range", device);
    lt_cuda_context *c = __atomic_load_n(&contexts[device], __ATOMIC_ACQUIRE);
    if (c) lt_cache_reset_peak(c->cache);
    return LT_OK;
}

// ---- pinned host memory -----------------------------------------------------------------------

extern "C" int lt_cuda_host_alloc(void **out, int64_t nbytes) {
    *out = NULL;
    int32_t n = 0;
    LT_TRY(lt_cuda_runtime_device_count(&n));
    if (n == 0) return lt_fail(LT_ERR_DEVICE, "pinned memory: no CUDA device is present");
    LT_CUDA_CTX(c, current_device);
    (void)c;
    cudaError_t e = cudaHostAlloc(out, (size_t)(nbytes > 0 ? nbytes : 1), cudaHostAllocPortable);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return lt_fail(LT_ERR_NOMEM, "cannot allocate %lld bytes of pinned host memory: %s",
                       (long long)nbytes, cudaGetErrorString(e));
    }
    return LT_OK;
}

extern "C" void lt_cuda_host_free(void *p) {
    if (p) cudaFreeHost(p);
}

// ---- the backend's entry point --------------------------------------------------------------

// The one symbol this library exports (it is built with hidden visibility): the table through
// which the core calls every function of core/lt_cuda.h and every op twin
// (src/core/cuda_loader.c loads the library and checks the table's version).
#include "core/cuda_api/table_init.h"

extern "C" const lt_cuda_api *lt_cuda_backend_api(void) { return &lt_cuda_api_table; }
