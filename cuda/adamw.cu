// adamw.cu - the AdamW update on CUDA, per tensor and for many tensors in one launch, its
// 8-bit form (one launch per tensor), and the global norm of many tensors in two launches.
//
// AdamW: the CPU's arithmetic (src/ops/adamw.c) element by element, in f32, in the same
// order: g' = g * grad_scale; m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g' g';
// p = p * (1 - lr wd) - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps), with the bias
// corrections and scalar factors computed on the host in f64 exactly as the CPU does.
// IEEE sqrtf and division (nvcc's defaults) keep it within an ulp or two of the CPU's
// (both compilers may contract a multiply-add into an FMA differently).
// Buffers: param, grad, exp_avg, exp_avg_sq, f32 contiguous, one shape per parameter.
//
// Multi-tensor launch: the host builds a table of (param, grad, exp_avg, exp_avg_sq,
// numel, first block) for the non-empty tensors, copies it to the device through a pinned
// staging buffer kept per device (reused once the event recorded after its previous copy
// has passed, so the host never waits on the kernels themselves), and launches one block
// per 32K-element chunk of every tensor. A block finds its tensor by binary search over
// the first-block column. 32K elements (128 KB of each of the four arrays) per block makes
// the lookup noise next to the block's streaming, and still gives a LoRA-sized set of
// parameters (tens of millions) more blocks than an H100 holds at once, so small sets
// keep every SM busy. 256 threads per block, 16-byte loads and stores when all four
// pointers are 16-byte aligned (chunk starts are multiples of 4 elements), scalar
// otherwise.
//
// 8-bit AdamW (lt_adamw8_step, bitsandbytes' blockwise 8-bit optimizer): one thread block
// per quantization block of `block` elements (64..4096), min(block, 256) threads, each
// holding up to 16 of the block's elements in registers (thread t takes elements t,
// t + threads, ...: coalesced loads of the f32 and u8 arrays). Both 256-entry maps are
// copied to shared memory first. Each element's moments are dequantized and updated and
// its parameter written (the CPU's arithmetic: the bias corrections and factors from the
// host in f64, IEEE sqrtf and division); the block's new absmax of m and of v is one
// warp-shuffle + shared-memory max reduction; then every element is re-coded by the binary
// search of src/ops/adamw8_math.h over the shared maps (the CPU counts thresholds instead,
// which gives the same code for every f32 value, ties included). Where the CPU's compiler and nvcc contract a multiply-add differently a moment can
// differ in its last bit, and a value that sits at a midpoint between two map entries can
// then take the neighbouring code.
//
// Global norm: the same table shape over any float tensors (non-contiguous ones are
// copied first); each block writes the f64 sum of squares of its chunk, one block adds the
// partials in a fixed order (deterministic), and the host reads one double.
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"
#include "ops/adamw8_math.h"

namespace { // kernels and types stay private to this file

enum { ADAM_CHUNK = 32768, OPT_THREADS = 256, STAGE_DEVICES = 16 };

// ---- pinned staging of host tables -----------------------------------------------------------

struct stage_t {
    void *host;
    size_t cap;
    cudaEvent_t done; // recorded after the last copy out of `host`
    int has_event;
};
static stage_t stages[STAGE_DEVICES];
static pthread_mutex_t stage_mu = PTHREAD_MUTEX_INITIALIZER;

static int upload_locked(lt_cuda_context *c, stage_t *s, const void *src, size_t bytes, void *dev) {
    if (!s->has_event) {
        LT_CU(cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming));
        s->has_event = 1;
    } else {
        LT_CU(cudaEventSynchronize(s->done)); // the previous table has left the buffer
    }
    if (s->cap < bytes) {
        if (s->host) cudaFreeHost(s->host);
        s->host = NULL;
        s->cap = 0;
        size_t cap = 65536;
        while (cap < bytes) cap *= 2;
        LT_CU(cudaHostAlloc(&s->host, cap, cudaHostAllocPortable));
        s->cap = cap;
    }
    memcpy(s->host, src, bytes);
    LT_CU(cudaMemcpyAsync(dev, s->host, bytes, cudaMemcpyHostToDevice, c->stream));
    LT_CU(cudaEventRecord(s->done, c->stream));
    return LT_OK;
}

// A device copy of `bytes` of host memory at src, ordered on the context's stream; *dev
// comes from lt_cuda_alloc (free it after queueing its last use).
static int upload(lt_cuda_context *c, const void *src, size_t bytes, void **dev) {
    *dev = NULL;
    if (c->device < 0 || c->device >= STAGE_DEVICES)
        return lt_fail(LT_ERR_DEVICE, "CUDA device %d is out of range for tables", c->device);
    LT_TRY(lt_cuda_alloc(dev, (int64_t)bytes, c->device));
    pthread_mutex_lock(&stage_mu);
    int st = upload_locked(c, &stages[c->device], src, bytes, *dev);
    pthread_mutex_unlock(&stage_mu);
    if (st != LT_OK) {
        lt_cuda_free(*dev, c->device);
        *dev = NULL;
    }
    return st;
}

// ---- AdamW -------------------------------------------------------------------------------

struct adam_hyper {
    float b1, b2, eps, decay, step_size, inv_sqrt_bc2, gs;
};

struct adam_entry {
    float *p;
    const float *g;
    float *m;
    float *v;
    int64_t n;
    int64_t block0; // first block of this tensor in the multi-tensor grid
};

// The host's scalars, computed as src/ops/adamw.c computes them.
static adam_hyper make_hyper(const lt_adamw_params *p) {
    double bc1 = 1.0 - pow(p->beta1, (double)p->step);
    double bc2 = 1.0 - pow(p->beta2, (double)p->step);
    adam_hyper h;
    h.decay = (float)(1.0 - p->lr * p->weight_decay);
    h.step_size = (float)(p->lr / bc1);
    h.inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    h.b1 = (float)p->beta1;
    h.b2 = (float)p->beta2;
    h.eps = (float)p->eps;
    h.gs = (float)p->grad_scale;
    return h;
}

__device__ __forceinline__ void adam_elem(float &w, float g, float &m, float &v,
                                          const adam_hyper &h) {
    float gi = g * h.gs;
    float mi = h.b1 * m + (1.0f - h.b1) * gi;
    float vi = h.b2 * v + (1.0f - h.b2) * gi * gi;
    m = mi;
    v = vi;
    float denom = sqrtf(vi) * h.inv_sqrt_bc2 + h.eps;
    w = w * h.decay - h.step_size * mi / denom;
}

// Elements [lo, hi) of one tensor, thread `t` of `nt` (lo a multiple of 4).
__device__ __forceinline__ void adam_span(const adam_entry &e, int64_t lo, int64_t hi, int64_t t,
                                          int64_t nt, const adam_hyper &h) {
    bool vec = ((((uintptr_t)e.p) | ((uintptr_t)e.g) | ((uintptr_t)e.m) | ((uintptr_t)e.v)) & 15) == 0;
    int64_t j0 = lo;
    if (vec) {
        int64_t nv = (hi - lo) / 4;
        float4 *p4 = (float4 *)(e.p + lo), *m4 = (float4 *)(e.m + lo), *v4 = (float4 *)(e.v + lo);
        const float4 *g4 = (const float4 *)(e.g + lo);
        for (int64_t k = t; k < nv; k += nt) {
            float4 w = p4[k], g = g4[k], m = m4[k], v = v4[k];
            adam_elem(w.x, g.x, m.x, v.x, h);
            adam_elem(w.y, g.y, m.y, v.y, h);
            adam_elem(w.z, g.z, m.z, v.z, h);
            adam_elem(w.w, g.w, m.w, v.w, h);
            p4[k] = w;
            m4[k] = m;
            v4[k] = v;
        }
        j0 = lo + nv * 4;
    }
    for (int64_t j = j0 + t; j < hi; j += nt) {
        float w = e.p[j], m = e.m[j], v = e.v[j];
        adam_elem(w, e.g[j], m, v, h);
        e.p[j] = w;
        e.m[j] = m;
        e.v[j] = v;
    }
}

__global__ void adam_single_kernel(adam_entry e, adam_hyper h) {
    adam_span(e, 0, e.n, blockIdx.x * (int64_t)blockDim.x + threadIdx.x,
              (int64_t)gridDim.x * blockDim.x, h);
}

// The entry whose blocks include block b: the last with block0 <= b (entries are ordered
// and non-empty).
template <class E> __device__ __forceinline__ int find_entry(const E *table, int32_t n, int64_t b) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (table[mid].block0 <= b)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

__global__ void adam_multi_kernel(const adam_entry *table, int32_t n, adam_hyper h) {
    adam_entry e = table[find_entry(table, n, blockIdx.x)];
    int64_t lo = (blockIdx.x - e.block0) * (int64_t)ADAM_CHUNK;
    int64_t hi = lo + ADAM_CHUNK < e.n ? lo + ADAM_CHUNK : e.n;
    adam_span(e, lo, hi, threadIdx.x, blockDim.x, h);
}

} // namespace

extern "C" int lt_cuda_adamw_step(lt_tensor *param, const lt_tensor *grad, lt_tensor *exp_avg,
                                  lt_tensor *exp_avg_sq, const lt_adamw_params *p) {
    LT_CUDA_CTX(c, lt_device_of(param));
    int64_t n = lt_numel(param);
    if (n == 0) return LT_OK;
    adam_entry e;
    e.p = lt_dptr<float>(param);
    e.g = lt_dptr<float>(grad);
    e.m = lt_dptr<float>(exp_avg);
    e.v = lt_dptr<float>(exp_avg_sq);
    e.n = n;
    e.block0 = 0;
    adam_single_kernel<<<lt_blocks_for((n + 3) / 4, OPT_THREADS), OPT_THREADS, 0, c->stream>>>(
        e, make_hyper(p));
    LT_CU_LAUNCH("adam_single_kernel");
    return LT_OK;
}

extern "C" int lt_cuda_adamw_step_multi(lt_tensor *const *params, const lt_tensor *const *grads,
                                        lt_tensor *const *exp_avgs,
                                        lt_tensor *const *exp_avg_sqs, int32_t n,
                                        const lt_adamw_params *p) {
    LT_CUDA_CTX(c, lt_device_of(params[0]));
    adam_entry *table = (adam_entry *)malloc((size_t)(n > 0 ? n : 1) * sizeof(adam_entry));
    if (!table) return lt_fail(LT_ERR_NOMEM, "adamw_step_multi: out of host memory");
    int32_t m = 0;
    int64_t blocks = 0;
    for (int32_t i = 0; i < n; i++) {
        int64_t ne = lt_numel(params[i]);
        if (ne == 0) continue;
        adam_entry *e = &table[m++];
        e->p = lt_dptr<float>(params[i]);
        e->g = lt_dptr<float>(grads[i]);
        e->m = lt_dptr<float>(exp_avgs[i]);
        e->v = lt_dptr<float>(exp_avg_sqs[i]);
        e->n = ne;
        e->block0 = blocks;
        blocks += (ne + ADAM_CHUNK - 1) / ADAM_CHUNK;
    }
    int st = LT_OK;
    if (m > 0 && blocks > INT32_MAX)
        st = lt_fail(LT_ERR_RANGE, "adamw_step_multi: %lld chunks exceed one launch",
                     (long long)blocks);
    void *dev = NULL;
    if (m > 0 && st == LT_OK) st = upload(c, table, (size_t)m * sizeof(adam_entry), &dev);
    free(table);
    if (m == 0 || st != LT_OK) return st;
    adam_multi_kernel<<<(unsigned)blocks, OPT_THREADS, 0, c->stream>>>((const adam_entry *)dev, m,
                                                                       make_hyper(p));
    cudaError_t err = cudaGetLastError();
    lt_cuda_free(dev, c->device); // stream-ordered: reused only after the kernel
    if (err != cudaSuccess)
        return lt_fail(LT_ERR_DEVICE, "%s:%d: launching adam_multi_kernel: %s", __FILE__, __LINE__,
                       cudaGetErrorString(err));
    return LT_OK;
}

namespace { // kernels and types stay private to this file

// ---- 8-bit AdamW -----------------------------------------------------------------------------

enum { A8_THREADS = 256, A8_MAX_BLOCK = 4096, A8_PER_THREAD = A8_MAX_BLOCK / A8_THREADS };

struct adam8_args {
    float *p;         // (n) parameter
    const float *g;   // (n) gradient
    uint8_t *cm;      // (n) first-moment codes
    float *am;        // (blocks) first-moment absmax
    uint8_t *cv;      // (n) second-moment codes
    float *av;        // (blocks) second-moment absmax
    const float *qm;  // (256) signed map
    const float *qv;  // (256) unsigned map
    int64_t n;
    int32_t block;
};

// The max of a and of b over the thread block, in every thread (values are >= 0).
__device__ __forceinline__ void block_max2(float &a, float &b) {
    __shared__ float sa[32], sb[32];
    for (int o = 16; o > 0; o >>= 1) {
        a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
        b = fmaxf(b, __shfl_xor_sync(0xffffffffu, b, o));
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0) {
        sa[warp] = a;
        sb[warp] = b;
    }
    __syncthreads();
    a = lane < nw ? sa[lane] : 0.0f;
    b = lane < nw ? sb[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) {
        a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
        b = fmaxf(b, __shfl_xor_sync(0xffffffffu, b, o));
    }
}

__global__ void adam8_kernel(adam8_args a, adam_hyper h) {
    __shared__ float qm[256], qv[256];
    for (int k = threadIdx.x; k < 256; k += blockDim.x) {
        qm[k] = a.qm[k];
        qv[k] = a.qv[k];
    }
    __syncthreads();
    int64_t b = blockIdx.x, lo = b * a.block;
    int len = a.n - lo < a.block ? (int)(a.n - lo) : a.block;
    // read before thread 0 overwrites them (after the reduction's barrier)
    float scale_m = a.am[b], scale_v = a.av[b], max_m = 0.0f, max_v = 0.0f;
    float ms[A8_PER_THREAD], vs[A8_PER_THREAD];
#pragma unroll
    for (int k = 0; k < A8_PER_THREAD; k++) {
        int j = threadIdx.x + k * blockDim.x;
        ms[k] = 0.0f;
        vs[k] = 0.0f;
        if (j >= len) continue;
        int64_t i = lo + j;
        float gi = a.g[i];
        if (!isfinite(gi)) continue; // moments restart, the weight stays (the CPU's rule)
        gi *= h.gs;
        float mi = h.b1 * (qm[a.cm[i]] * scale_m) + (1.0f - h.b1) * gi;
        float vi = h.b2 * (qv[a.cv[i]] * scale_v) + (1.0f - h.b2) * gi * gi;
        ms[k] = mi;
        vs[k] = vi;
        max_m = fmaxf(max_m, fabsf(mi));
        max_v = fmaxf(max_v, fabsf(vi));
        float denom = sqrtf(vi) * h.inv_sqrt_bc2 + h.eps;
        a.p[i] = a.p[i] * h.decay - h.step_size * mi / denom;
    }
    block_max2(max_m, max_v);
    if (threadIdx.x == 0) {
        a.am[b] = max_m;
        a.av[b] = max_v;
    }
#pragma unroll
    for (int k = 0; k < A8_PER_THREAD; k++) {
        int j = threadIdx.x + k * blockDim.x;
        if (j >= len) continue;
        float xm = max_m > 0.0f ? ms[k] / max_m : 0.0f;
        float xv = max_v > 0.0f ? vs[k] / max_v : 0.0f;
        a.cm[lo + j] = lt_adamw8_keep_sign(qm, lt_adamw8_code(qm, xm), ms[k]);
        a.cv[lo + j] = lt_adamw8_code(qv, xv);
    }
}

} // namespace

extern "C" int lt_cuda_adamw8_step(lt_tensor *param, const lt_tensor *grad, lt_tensor *m_codes,
                                   lt_tensor *m_absmax, lt_tensor *v_codes, lt_tensor *v_absmax,
                                   const lt_tensor *m_map, const lt_tensor *v_map, int32_t block,
                                   const lt_adamw_params *p) {
    LT_CUDA_CTX(c, lt_device_of(param));
    int64_t n = lt_numel(param);
    if (n == 0) return LT_OK;
    if (block < 32 || block > A8_MAX_BLOCK)
        return LT_INTERNAL("adamw8_step: block %d outside the kernel's 32..%d", (int)block,
                           (int)A8_MAX_BLOCK);
    int64_t blocks = (n + block - 1) / block;
    if (blocks > INT32_MAX)
        return lt_fail(LT_ERR_RANGE, "adamw8_step: %lld blocks exceed one launch",
                       (long long)blocks);
    adam8_args a;
    a.p = lt_dptr<float>(param);
    a.g = lt_dptr<float>(grad);
    a.cm = lt_dptr<uint8_t>(m_codes);
    a.am = lt_dptr<float>(m_absmax);
    a.cv = lt_dptr<uint8_t>(v_codes);
    a.av = lt_dptr<float>(v_absmax);
    a.qm = lt_dptr<float>(m_map);
    a.qv = lt_dptr<float>(v_map);
    a.n = n;
    a.block = block;
    int threads = block < A8_THREADS ? block : A8_THREADS;
    adam8_kernel<<<(unsigned)blocks, threads, 0, c->stream>>>(a, make_hyper(p));
    LT_CU_LAUNCH("adam8_kernel");
    return LT_OK;
}

namespace { // kernels and types stay private to this file

// ---- global norm -----------------------------------------------------------------------------

struct norm_entry {
    const void *x;
    int64_t n;
    int64_t block0;
    int32_t dtype;
};

template <class T>
__device__ __forceinline__ double sumsq_span(const T *x, int64_t lo, int64_t hi) {
    constexpr int VEC = 16 / sizeof(T);
    struct alignas(16) pack {
        T v[VEC];
    };
    double acc = 0.0;
    int64_t j0 = lo;
    if ((((uintptr_t)(x + lo)) & 15) == 0) {
        int64_t nv = (hi - lo) / VEC;
        const pack *pp = (const pack *)(x + lo);
        for (int64_t k = threadIdx.x; k < nv; k += blockDim.x) {
            pack u = pp[k];
#pragma unroll
            for (int e = 0; e < VEC; e++) {
                double d = (double)lt_to_f32(u.v[e]);
                acc += d * d;
            }
        }
        j0 = lo + nv * VEC;
    }
    for (int64_t j = j0 + threadIdx.x; j < hi; j += blockDim.x) {
        double d = (double)lt_to_f32(x[j]);
        acc += d * d;
    }
    return acc;
}

__device__ __forceinline__ double block_sum_f64(double v) {
    __shared__ double sh[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = 0.0;
    if (warp == 0) {
        v = lane < nw ? sh[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    return v; // valid in thread 0
}

__global__ void sumsq_multi_kernel(const norm_entry *table, int32_t n, double *partial) {
    norm_entry e = table[find_entry(table, n, blockIdx.x)];
    int64_t lo = (blockIdx.x - e.block0) * (int64_t)ADAM_CHUNK;
    int64_t hi = lo + ADAM_CHUNK < e.n ? lo + ADAM_CHUNK : e.n;
    double acc;
    if (e.dtype == LT_DTYPE_BF16)
        acc = sumsq_span((const __nv_bfloat16 *)e.x, lo, hi);
    else if (e.dtype == LT_DTYPE_F16)
        acc = sumsq_span((const __half *)e.x, lo, hi);
    else
        acc = sumsq_span((const float *)e.x, lo, hi);
    acc = block_sum_f64(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_partials_kernel(const double *partial, int64_t n, double *out) {
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += partial[i];
    acc = block_sum_f64(acc);
    if (threadIdx.x == 0) *out = acc;
}

} // namespace

extern "C" int lt_cuda_global_norm(const lt_tensor *const *tensors, int32_t n, double *out) {
    *out = 0.0;
    LT_CUDA_CTX(c, lt_device_of(tensors[0]));
    // non-contiguous tensors are reduced from contiguous copies, held until the launch
    lt_tensor *copies = (lt_tensor *)calloc((size_t)n, sizeof(lt_tensor));
    norm_entry *table = (norm_entry *)malloc((size_t)n * sizeof(norm_entry));
    int st = (copies && table) ? LT_OK : lt_fail(LT_ERR_NOMEM, "global_norm: out of host memory");
    int32_t m = 0;
    int64_t blocks = 0;
    for (int32_t i = 0; i < n && st == LT_OK; i++) {
        const lt_tensor *t = tensors[i];
        if (!lt_is_float_dtype(t->dtype_id)) {
            st = lt_fail(LT_ERR_DTYPE, "global_norm: tensor %d must be f32, bf16 or f16, got %s",
                         (int)i + 1, lt_dtype_info(t->dtype_id)->name);
            break;
        }
        int64_t ne = lt_numel(t);
        if (ne == 0) continue;
        if (!lt_tensor_is_contiguous(t)) {
            st = lt_tensor_contiguous(&copies[i], t, -1);
            if (st != LT_OK) break;
            t = &copies[i];
        }
        norm_entry *e = &table[m++];
        e->x = lt_tensor_data(t);
        e->n = ne;
        e->dtype = t->dtype_id;
        e->block0 = blocks;
        blocks += (ne + ADAM_CHUNK - 1) / ADAM_CHUNK;
    }
    if (st == LT_OK && blocks > INT32_MAX)
        st = lt_fail(LT_ERR_RANGE, "global_norm: %lld chunks exceed one launch", (long long)blocks);
    void *dev = NULL;
    double *partial = NULL;
    if (st == LT_OK && m > 0) st = upload(c, table, (size_t)m * sizeof(norm_entry), &dev);
    if (st == LT_OK && m > 0) st = lt_cuda_alloc((void **)&partial, (blocks + 1) * 8, c->device);
    if (st == LT_OK && m > 0) {
        sumsq_multi_kernel<<<(unsigned)blocks, OPT_THREADS, 0, c->stream>>>(
            (const norm_entry *)dev, m, partial);
        cudaError_t e1 = cudaGetLastError();
        if (e1 == cudaSuccess) sum_partials_kernel<<<1, 1024, 0, c->stream>>>(partial, blocks,
                                                                              partial + blocks);
        cudaError_t e2 = e1 == cudaSuccess ? cudaGetLastError() : e1;
        double total = 0.0;
        if (e2 == cudaSuccess)
            e2 = cudaMemcpyAsync(&total, partial + blocks, sizeof total, cudaMemcpyDeviceToHost,
                                 c->stream);
        if (e2 == cudaSuccess) e2 = cudaStreamSynchronize(c->stream);
        if (e2 != cudaSuccess)
            st = lt_fail(LT_ERR_DEVICE, "%s:%d: global_norm: %s", __FILE__, __LINE__,
                         cudaGetErrorString(e2));
        else
            *out = sqrt(total);
    }
    if (partial) lt_cuda_free(partial, c->device);
    if (dev) lt_cuda_free(dev, c->device);
    if (copies)
        for (int32_t i = 0; i < n; i++) lt_tensor_release(&copies[i]);
    free(copies);
    free(table);
    return st;
}
