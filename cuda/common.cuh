// common.cuh - what every CUDA file of luatrain shares: the per-device context, error
// checking that turns CUDA failures into lt_fail statuses, tensor pointers, launch sizes,
// and bf16/f16 helpers.
//
// Rules for kernels (ARCHITECTURE.md, and the device notes):
//  - launch on the context's stream (lt_cuda_stream(dev)), never the default stream;
//  - check every runtime call with LT_CU and every launch with LT_CU_LAUNCH;
//  - no host synchronisation except where a result must be read on the host;
//  - temporary device memory comes from lt_cuda_alloc (the caching allocator) and goes
//    back with lt_cuda_free; the stream orders reuse, so freeing right after queueing the
//    kernel that uses it is safe.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cublasLt.h>
#include <stdint.h>

extern "C" {
#include "core/internal.h"
#include "core/lt_cuda.h"
}

// ---- errors -------------------------------------------------------------------------------

// Return an lt status from a failing CUDA runtime call, naming the call.
#define LT_CU(call)                                                                        \
    do {                                                                                   \
        cudaError_t lt_cu_err_ = (call);                                                   \
        if (lt_cu_err_ != cudaSuccess)                                                     \
            return lt_fail(LT_ERR_DEVICE, "%s:%d: %s: %s", __FILE__, __LINE__, #call,      \
                           cudaGetErrorString(lt_cu_err_));                                \
    } while (0)

// After a kernel launch: a bad configuration shows here, not at the next sync.
#define LT_CU_LAUNCH(what)                                                                 \
    do {                                                                                   \
        cudaError_t lt_cu_err_ = cudaGetLastError();                                       \
        if (lt_cu_err_ != cudaSuccess)                                                     \
            return lt_fail(LT_ERR_DEVICE, "%s:%d: launching %s: %s", __FILE__, __LINE__,   \
                           what, cudaGetErrorString(lt_cu_err_));                          \
    } while (0)

#define LT_CUBLAS(call)                                                                    \
    do {                                                                                   \
        cublasStatus_t lt_cb_st_ = (call);                                                 \
        if (lt_cb_st_ != CUBLAS_STATUS_SUCCESS)                                            \
            return lt_fail(LT_ERR_DEVICE, "%s:%d: %s: cuBLAS status %d", __FILE__,         \
                           __LINE__, #call, (int)lt_cb_st_);                               \
    } while (0)

// ---- the per-device context ---------------------------------------------------------------

struct lt_cuda_context {
    int device;
    cudaStream_t stream;            // every kernel and copy of the device
    cublasLtHandle_t lt;            // cuBLASLt
    void *workspace;                // cuBLASLt workspace, workspace_bytes long
    size_t workspace_bytes;
    lt_cache *cache;                // the caching allocator
    void *staging;                  // pinned host staging buffer for small reads (get/equal)
    cudaDeviceProp prop;
    // the copy stream (lt_cuda_copy_async): transfers between pinned host memory and the
    // device that overlap the compute stream's kernels; made on first use
    cudaStream_t copy_stream;
    cudaEvent_t compute_mark;       // recorded on `stream` before each transfer is queued
    cudaEvent_t copy_done[64];      // copy k's completion, in a ring (tickets count copies)
    int64_t copies;                 // transfers queued so far (the newest ticket)
};

// The context of `device` (made on first use; the device becomes current for the calling
// thread). NULL with an error set when the device cannot be initialised.
extern "C" lt_cuda_context *lt_cuda_ctx(int device);

// Status-returning form: LT_TRY-style.
#define LT_CUDA_CTX(var, device)                                                           \
    lt_cuda_context *var = lt_cuda_ctx(device);                                            \
    if (!var) return lt_last_status()

static inline int lt_device_of(const lt_tensor *t) { return t->storage->device_index; }

// Element i of an i32 (is64 = 0) or i64 index buffer, as int64 (internal.h has the host
// form, lt_load_index).
__device__ __forceinline__ int64_t lt_dev_load_index(const void *p, int is64, int64_t i) {
    return is64 ? ((const int64_t *)p)[i] : (int64_t)((const int32_t *)p)[i];
}

// The first of the n indices of a contiguous i32/i64 device tensor outside [0, limit):
// *first = its position and *value = the index, or *first = -1 when all are in range. One
// small kernel and one stream synchronisation (two when one is out of range), the price of
// naming the bad index in the error as the CPU does. `op` and `what` ("ids") name the check
// in a device error.
int lt_cuda_first_out_of_range(lt_cuda_context *c, const lt_tensor *idx, int64_t n,
                               int64_t limit, int64_t *first, int64_t *value,
                               const char *op, const char *what);

// ---- tensors --------------------------------------------------------------------------------

template <class T> static inline T *lt_dptr(const lt_tensor *t) {
    return (T *)lt_tensor_data(t);
}

static inline int64_t lt_numel(const lt_tensor *t) { return lt_tensor_numel(t); }

// A small by-value description of a strided tensor for kernels (up to LT_MAX_DIMS dims).
struct lt_strided {
    int32_t ndim;
    int64_t sizes[LT_MAX_DIMS];
    int64_t strides[LT_MAX_DIMS];
};

static inline lt_strided lt_strided_of(const lt_tensor *t) {
    lt_strided s;
    s.ndim = t->ndim;
    for (int i = 0; i < LT_MAX_DIMS; i++) {
        s.sizes[i] = i < t->ndim ? t->sizes[i] : 1;
        s.strides[i] = i < t->ndim ? t->strides[i] : 0;
    }
    return s;
}

// Element offset of flat (row-major) index i.
__device__ __forceinline__ int64_t lt_strided_offset(const lt_strided &s, int64_t i) {
    int64_t off = 0;
    for (int d = s.ndim - 1; d >= 0; d--) {
        int64_t idx = i % s.sizes[d];
        i /= s.sizes[d];
        off += idx * s.strides[d];
    }
    return off;
}

// ---- launch sizes ---------------------------------------------------------------------------

static inline unsigned lt_blocks_for(int64_t n, int threads, int64_t cap = 65535LL * 8) {
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > cap) b = cap; // kernels use grid-stride loops
    return (unsigned)b;
}

// ---- element types --------------------------------------------------------------------------

__device__ __forceinline__ float lt_to_f32(float x) { return x; }
__device__ __forceinline__ float lt_to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float lt_to_f32(__half x) { return __half2float(x); }

template <class T> __device__ __forceinline__ T lt_from_f32(float x);
template <> __device__ __forceinline__ float lt_from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 lt_from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half lt_from_f32<__half>(float x) {
    return __float2half_rn(x);
}

// Element i of a float buffer whose dtype is known only at run time (the general paths of
// kernels taking mixed dtypes, e.g. a bf16 activation with an f32 weight), read as f32 and
// written rounded to nearest.
__device__ __forceinline__ float ld_any(const char *p, int dt, int64_t i) {
    switch (dt) {
    case LT_DTYPE_BF16: return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    case LT_DTYPE_F16: return __half2float(((const __half *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

__device__ __forceinline__ void st_any(char *p, int dt, int64_t i, float v) {
    switch (dt) {
    case LT_DTYPE_BF16: ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v); break;
    case LT_DTYPE_F16: ((__half *)p)[i] = __float2half_rn(v); break;
    default: ((float *)p)[i] = v; break;
    }
}

// Dispatch on a float dtype: LT_FLOAT_SWITCH(t->dtype_id, T, { kernel<T><<<...>>>(...); })
#define LT_FLOAT_SWITCH(dtype, T, ...)                                                     \
    switch (dtype) {                                                                       \
    case LT_DTYPE_F32: {                                                                   \
        typedef float T;                                                                   \
        __VA_ARGS__;                                                                       \
    } break;                                                                               \
    case LT_DTYPE_BF16: {                                                                  \
        typedef __nv_bfloat16 T;                                                           \
        __VA_ARGS__;                                                                       \
    } break;                                                                               \
    case LT_DTYPE_F16: {                                                                   \
        typedef __half T;                                                                  \
        __VA_ARGS__;                                                                       \
    } break;                                                                               \
    default:                                                                               \
        return lt_fail(LT_ERR_DTYPE, "%s: dtype %s is not supported on CUDA", __func__,    \
                       lt_dtype_info(dtype) ? lt_dtype_info(dtype)->name : "?");           \
    }

// 16 bytes of T, for vectorised loads and stores (the pointer must be 16-byte aligned).
template <class T> struct alignas(16) Pack {
    T v[16 / sizeof(T)];
};

// A kernel's element type: one dtype for every operand (T), or AnyT (each operand's own
// dtype, read at run time). ldr / str read and write element i as f32; pack_w is how many
// elements one 16-byte access moves (1 for AnyT: no vector path).
struct AnyT {};

template <class T> __device__ __forceinline__ float ldr(const char *p, int dt, int64_t i) {
    (void)dt;
    return lt_to_f32(((const T *)p)[i]);
}
template <> __device__ __forceinline__ float ldr<AnyT>(const char *p, int dt, int64_t i) {
    return ld_any(p, dt, i);
}
template <class T> __device__ __forceinline__ void str(char *p, int dt, int64_t i, float v) {
    (void)dt;
    ((T *)p)[i] = lt_from_f32<T>(v);
}
template <> __device__ __forceinline__ void str<AnyT>(char *p, int dt, int64_t i, float v) {
    st_any(p, dt, i, v);
}
template <class T> constexpr int pack_w() { return 16 / sizeof(T); }
template <> constexpr int pack_w<AnyT>() { return 1; }

// ---- block reductions -----------------------------------------------------------------------

__device__ __forceinline__ float lt_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float lt_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ __forceinline__ float lt_block_sum(float v, float *shared32) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = lt_warp_sum(v);
    __syncthreads(); // shared32 may still be read by a previous call
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    v = lane < nw ? shared32[lane] : 0.0f;
    return lt_warp_sum(v);
}

__device__ __forceinline__ float lt_block_max(float v, float *shared32) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = lt_warp_max(v);
    __syncthreads();
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    v = lane < nw ? shared32[lane] : -INFINITY;
    return lt_warp_max(v);
}

// ---- random numbers ------------------------------------------------------------------------

// The CPU's random generator (src/core/rng.c): Philox-4x32-10 with counter (lo, hi, 0, 0) and
// key = seed. Device fills and dropout draw from it, so a seed gives the host's numbers.
__device__ __forceinline__ uint4 lt_philox4x32_10(uint64_t counter, uint64_t seed) {
    uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32), c2 = 0, c3 = 0;
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
#pragma unroll
    for (int r = 0; r < 10; r++) {
        uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return make_uint4(c0, c1, c2, c3);
}
