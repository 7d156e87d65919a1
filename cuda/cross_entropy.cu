// cross_entropy.cu - softmax cross-entropy on CUDA, plain (given logits) and fused with the
// LM head (logits = h @ w^T made a chunk at a time, never (N, V) at once).
//
// Semantics are the CPU's (src/ops/cross_entropy.c): loss = sum over rows whose target is
// not ignore_index of (lse - logit[target]), divided by `normalizer` (<= 0: the count of
// such rows; none gives 0); lse is written for every row, row_loss is 0 at ignored rows;
// dlogits = (softmax - onehot) * dloss / norm on counted rows and 0 on ignored ones;
// dh (=), dw (+=). On CUDA the logits (plain form), h and w may also be bf16 or f16, and
// dlogits, dh and dw may be f32 or the compute dtype (below); lse, row_loss and loss are f32.
//
// Buffers (N rows, V vocabulary, C hidden):
//   targets (N) i32/i64 -> checked on the device by one small kernel whose result (count of
//     counted rows, first bad row) is read back: a target outside [0, V) is an LT_ERR_RANGE
//     naming the row, as on the CPU. That read is the one host synchronisation per call; it
//     comes before the heavy work, so the GPU is busy again right after.
//   run_max, run_sum, tgt_logit (N) f32: the online log-sum-exp state of each row across
//     vocab chunks (max so far, sum of exp(x - max), the target's logit once seen).
//   logits chunk (R, Vc) f32 from lt_cuda_alloc; dlogits chunk (R, Vc) in the compute
//     dtype (in place over the logits when that is f32).
//
// LM head chunking: the compute dtype cd is w's (an h of another dtype is converted a row
// chunk at a time into cd: exact when w is f32, an autocast-style rounding when w is
// bf16/f16 and h is f32; the CPU instead widens w). Each GEMM's operands are in cd with
// f32 accumulation and an f32 logits chunk. The logits chunk plus the dlogits chunk stay
// within LT_CE_BUFFER_BYTES = 256 MiB (64 Mi f32 elements, or 44 Mi with a separate bf16
// dlogits chunk). Full-vocab rows are preferred: Vc = V whenever at least 256 rows fit
// (V <= 256 Ki in f32), because then the fused form needs three GEMMs per row chunk
// (logits, dh, dw) and one pass over the logits for lse and the gradient; a larger V is
// split into vocab chunks of a multiple of 128 columns with the lse carried online, and the
// fused form becomes forward-then-backward (four GEMMs). The row chunk R is then as large
// as the budget allows (a multiple of 64 when it is not all of N), because every row chunk
// re-reads and re-writes all of dw (V x C) in the dw GEMM: fewer, taller chunks mean less
// of that traffic. For tests and tuning, LT_CUDA_CE_ROWS and LT_CUDA_CE_VOCAB in the
// environment override R and Vc.
//
// Row kernels: one block of 256 threads per row (grid-stride over rows), 16-byte loads
// along the row after a scalar head that reaches 16-byte alignment (rows of odd length are
// not aligned alike), online max/sum per thread merged by warp shuffles and shared memory.
#include <math.h>
#include <stdlib.h>

#include "matmul.cuh"

namespace { // kernels and types stay private to this file

enum { CE_THREADS = 256 };
static const int64_t LT_CE_BUFFER_BYTES = 256LL << 20;

// ---- row traversal with 16-byte loads -----------------------------------------------------

template <class T, int N> struct alignas(sizeof(T) * N) vec_t {
    T v[N];
};

// f(j, value) for every j in [0, n) of row, by the block's threads; 16-byte loads where the
// row allows. `row` must be aligned to sizeof(T) (always true for a tensor element).
template <class T, class F>
__device__ __forceinline__ void row_foreach(const T *row, int64_t n, F f) {
    constexpr int VEC = 16 / sizeof(T);
    int64_t mis = (int64_t)(((uintptr_t)row) & 15) / (int64_t)sizeof(T);
    int64_t head = mis ? VEC - mis : 0;
    if (head > n) head = n;
    for (int64_t j = threadIdx.x; j < head; j += blockDim.x) f(j, lt_to_f32(row[j]));
    int64_t nvec = (n - head) / VEC;
    const vec_t<T, VEC> *vp = (const vec_t<T, VEC> *)(row + head);
    for (int64_t k = threadIdx.x; k < nvec; k += blockDim.x) {
        vec_t<T, VEC> u = vp[k];
#pragma unroll
        for (int e = 0; e < VEC; e++) f(head + k * VEC + e, lt_to_f32(u.v[e]));
    }
    for (int64_t j = head + nvec * VEC + threadIdx.x; j < n; j += blockDim.x) f(j, lt_to_f32(row[j]));
}

// ---- online log-sum-exp ---------------------------------------------------------------------

// Add x to the state (m: max so far, s: sum of exp(v - m)). A -inf adds nothing; a NaN
// makes s NaN (as on the CPU, where it reaches the sum).
__device__ __forceinline__ void lse_add(float &m, float &s, float x) {
    if (x > m) {
        s = s * expf(m - x) + 1.0f;
        m = x;
    } else if (x != -INFINITY) {
        s += expf(x - m);
    }
}

__device__ __forceinline__ void lse_merge(float &m, float &s, float m2, float s2) {
    float mm = fmaxf(m, m2);
    if (mm == -INFINITY) {
        s = s + s2; // both empty (0), or NaN carried
        return;
    }
    s = s * expf(m - mm) + s2 * expf(m2 - mm);
    m = mm;
}

// Merge the block's states; thread 0 gets the result.
__device__ __forceinline__ void block_lse(float &m, float &s) {
    __shared__ float sm[32], ss[32];
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads(); // sm/ss may still be read from the previous row
    if (lane == 0) {
        sm[warp] = m;
        ss[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        m = lane < nw ? sm[lane] : -INFINITY;
        s = lane < nw ? ss[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) {
            float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
            lse_merge(m, s, m2, s2);
        }
    }
}

__device__ __forceinline__ int64_t load_target(const void *t, int tdt, int64_t i) {
    return tdt == LT_DTYPE_I32 ? (int64_t)((const int32_t *)t)[i] : ((const int64_t *)t)[i];
}

// ---- kernels ---------------------------------------------------------------------------------

// info[0] += counted rows; info[1] = min(bad row) (starts at all ones).
__global__ void ce_targets_kernel(const void *targets, int tdt, int64_t N, int64_t V,
                                  int64_t ignore_index, unsigned long long *info) {
    unsigned long long count = 0, bad = ~0ULL;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t y = load_target(targets, tdt, i);
        if (y == ignore_index) continue;
        if (y < 0 || y >= V) {
            if ((unsigned long long)i < bad) bad = (unsigned long long)i;
        } else {
            count++;
        }
    }
    for (int o = 16; o > 0; o >>= 1) count += __shfl_xor_sync(0xffffffffu, count, o);
    if ((threadIdx.x & 31) == 0 && count) atomicAdd(&info[0], count);
    if (bad != ~0ULL) atomicMin(&info[1], bad);
}

// One vocab chunk [v0, v0 + vc) of rows [row0, row0 + R): fold it into each row's online
// state (init: the first chunk starts the state) and pick up the target's logit.
template <class T>
__global__ void ce_update_kernel(const T *x, int64_t ldx, int64_t R, int64_t vc, int64_t v0,
                                 int64_t row0, const void *targets, int tdt, int64_t ignore_index,
                                 float *run_max, float *run_sum, float *tgt_logit, int init) {
    for (int64_t i = blockIdx.x; i < R; i += gridDim.x) {
        const T *row = x + i * ldx;
        float m = -INFINITY, s = 0.0f;
        row_foreach(row, vc, [&](int64_t, float v) { lse_add(m, s, v); });
        block_lse(m, s);
        if (threadIdx.x == 0) {
            int64_t r = row0 + i;
            if (!init) lse_merge(m, s, run_max[r], run_sum[r]);
            run_max[r] = m;
            run_sum[r] = s;
            int64_t y = load_target(targets, tdt, r);
            if (y != ignore_index && y >= v0 && y < v0 + vc) tgt_logit[r] = lt_to_f32(row[y - v0]);
        }
    }
}

// lse and row loss of rows [row0, row0 + R) from their finished state.
__global__ void ce_finalize_kernel(int64_t R, int64_t row0, const float *run_max,
                                   const float *run_sum, const float *tgt_logit,
                                   const void *targets, int tdt, int64_t ignore_index, float *lse,
                                   float *row_loss) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < R;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = row0 + i;
        float m = run_max[r];
        float l = (m == -INFINITY || m != m) ? m : m + logf(run_sum[r]);
        if (lse) lse[r] = l;
        if (row_loss) {
            int64_t y = load_target(targets, tdt, r);
            row_loss[r] = y != ignore_index ? l - tgt_logit[r] : 0.0f;
        }
    }
}

// d = (exp(x - lse) - onehot) * g over vocab chunk [v0, v0 + vc) of rows [row0, row0 + R);
// 0 on ignored rows. d may be x itself (same dtype and ld): each element is read before it
// is written, by the same thread.
template <class TI, class TO>
__global__ void ce_grad_kernel(const TI *x, int64_t ldx, TO *d, int64_t ldd, int64_t R,
                               int64_t vc, int64_t v0, int64_t row0, const void *targets, int tdt,
                               int64_t ignore_index, const float *lse, float g) {
    for (int64_t i = blockIdx.x; i < R; i += gridDim.x) {
        int64_t r = row0 + i;
        int64_t y = load_target(targets, tdt, r);
        TO *drow = d + i * ldd;
        if (y == ignore_index) {
            for (int64_t j = threadIdx.x; j < vc; j += blockDim.x) drow[j] = lt_from_f32<TO>(0.0f);
            continue;
        }
        float l = lse[r];
        int64_t yj = y - v0; // the target's column in this chunk (may be outside it)
        row_foreach(x + i * ldx, vc, [&](int64_t j, float v) {
            float e = expf(v - l) * g;
            if (j == yj) e -= g;
            drow[j] = lt_from_f32<TO>(e);
        });
    }
}

// loss = sum(row_loss) / norm (0 when norm <= 0), summed in f64 by one block in a fixed
// order (deterministic).
__global__ void ce_loss_kernel(const float *row_loss, int64_t N, double norm, float *loss) {
    __shared__ double sh[32];
    double t = 0.0;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) t += (double)row_loss[i];
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0) sh[warp] = t;
    __syncthreads();
    if (warp == 0) {
        t = lane < nw ? sh[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
        if (lane == 0) *loss = norm > 0 ? (float)(t / norm) : 0.0f;
    }
}

__global__ void ce_fill_kernel(float *p, int64_t n, float v) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        p[i] = v;
}

template <class TI, class TO>
__global__ void ce_convert_kernel(TO *out, const TI *in, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = lt_from_f32<TO>(lt_to_f32(in[i]));
}

// ---- host helpers ----------------------------------------------------------------------------

static const char *dtname(int dt) {
    const lt_dtype_traits *tr = lt_dtype_info(dt);
    return tr ? tr->name : "?";
}

static unsigned row_grid(int64_t R) { return (unsigned)(R < 65535LL * 16 ? (R > 0 ? R : 1) : 65535LL * 16); }

// Temporary device buffers released together at the end of a call (stream-ordered reuse).
// At most 9 buffers per call (the fused LM head with a converted h, a separate dlogits
// chunk, a loss without row_loss and no saved lse): info, rl, logits, dl, hbuf, mx, sm, tl,
// lse.
struct scratch {
    int dev;
    void *p[12];
    int n;
    int alloc(void **out, int64_t nbytes) {
        *out = NULL;
        if (n >= 12) return LT_INTERNAL("cross_entropy: too many scratch buffers");
        LT_TRY(lt_cuda_alloc(out, nbytes > 0 ? nbytes : 16, dev));
        p[n++] = *out;
        return LT_OK;
    }
    ~scratch() {
        for (int i = 0; i < n; i++) lt_cuda_free(p[i], dev);
    }
};

// The count of counted rows; a target outside [0, V) is the CPU's LT_ERR_RANGE.
static int check_targets(lt_cuda_context *c, scratch &sc, const lt_tensor *targets, int64_t N,
                         int64_t V, int64_t ignore_index, const char *op, int64_t *count) {
    *count = 0;
    if (N == 0) return LT_OK;
    unsigned long long *info = NULL;
    LT_TRY(sc.alloc((void **)&info, 2 * sizeof(unsigned long long)));
    LT_CU(cudaMemsetAsync(info, 0, sizeof(unsigned long long), c->stream));
    LT_CU(cudaMemsetAsync(info + 1, 0xff, sizeof(unsigned long long), c->stream));
    ce_targets_kernel<<<lt_blocks_for(N, 256, 1024), 256, 0, c->stream>>>(
        lt_tensor_data(targets), targets->dtype_id, N, V, ignore_index, info);
    LT_CU_LAUNCH("ce_targets_kernel");
    unsigned long long host[2];
    LT_CU(cudaMemcpyAsync(host, info, sizeof host, cudaMemcpyDeviceToHost, c->stream));
    LT_CU(cudaStreamSynchronize(c->stream));
    if (host[1] != ~0ULL) {
        int64_t row = (int64_t)host[1], y = 0;
        int esz = lt_dtype_size(targets->dtype_id);
        char buf[8] = {0};
        LT_CU(cudaMemcpyAsync(buf, (const char *)lt_tensor_data(targets) + row * esz, esz,
                              cudaMemcpyDeviceToHost, c->stream));
        LT_CU(cudaStreamSynchronize(c->stream));
        if (targets->dtype_id == LT_DTYPE_I32) {
            int32_t v;
            memcpy(&v, buf, 4);
            y = v;
        } else {
            memcpy(&y, buf, 8);
        }
        return lt_fail(LT_ERR_RANGE,
                       "%s: target %lld at row %lld is outside the vocabulary [0, %lld) and is "
                       "not the ignore index %lld",
                       op, (long long)y, (long long)row, (long long)V, (long long)ignore_index);
    }
    *count = (int64_t)host[0];
    return LT_OK;
}

static double norm_of(double normalizer, int64_t count) {
    return normalizer > 0 ? normalizer : (double)count;
}

static int check_rows_out(const lt_tensor *t, const char *op, const char *name) {
    if (!t) return LT_OK;
    if (t->dtype_id != LT_DTYPE_F32 || !lt_tensor_is_contiguous(t))
        return lt_fail(LT_ERR_ARG, "%s: %s must be f32 and contiguous (call :contiguous())", op,
                       name);
    return LT_OK;
}

static int check_float_contig(const lt_tensor *t, const char *op, const char *name) {
    if (!lt_is_float_dtype(t->dtype_id))
        return lt_fail(LT_ERR_DTYPE, "%s: %s must be f32, bf16 or f16 on CUDA, got %s", op, name,
                       dtname(t->dtype_id));
    if (!lt_tensor_is_contiguous(t))
        return lt_fail(LT_ERR_ARG, "%s: %s must be contiguous (call :contiguous())", op, name);
    return LT_OK;
}

static int launch_loss(lt_cuda_context *c, const float *row_loss, int64_t N, double norm,
                       lt_tensor *loss) {
    ce_loss_kernel<<<1, 1024, 0, c->stream>>>(row_loss, N, norm, lt_dptr<float>(loss));
    LT_CU_LAUNCH("ce_loss_kernel");
    return LT_OK;
}

// Online state of rows [row0, row0 + R) over one chunk of logits x (any float dtype).
static int launch_update(lt_cuda_context *c, const void *x, int xdt, int64_t ldx, int64_t R,
                         int64_t vc, int64_t v0, int64_t row0, const lt_tensor *targets,
                         int64_t ignore_index, float *mx, float *sm, float *tl, int init) {
    LT_FLOAT_SWITCH(xdt, T, {
        ce_update_kernel<T><<<row_grid(R), CE_THREADS, 0, c->stream>>>(
            (const T *)x, ldx, R, vc, v0, row0, lt_tensor_data(targets), targets->dtype_id,
            ignore_index, mx, sm, tl, init);
    });
    LT_CU_LAUNCH("ce_update_kernel");
    return LT_OK;
}

static int launch_finalize(lt_cuda_context *c, int64_t R, int64_t row0, const float *mx,
                           const float *sm, const float *tl, const lt_tensor *targets,
                           int64_t ignore_index, float *lse, float *row_loss) {
    ce_finalize_kernel<<<lt_blocks_for(R, 256), 256, 0, c->stream>>>(
        R, row0, mx, sm, tl, lt_tensor_data(targets), targets->dtype_id, ignore_index, lse,
        row_loss);
    LT_CU_LAUNCH("ce_finalize_kernel");
    return LT_OK;
}

static int launch_grad(lt_cuda_context *c, const void *x, int xdt, int64_t ldx, void *d, int ddt,
                       int64_t ldd, int64_t R, int64_t vc, int64_t v0, int64_t row0,
                       const lt_tensor *targets, int64_t ignore_index, const float *lse, float g) {
    LT_FLOAT_SWITCH(xdt, TI, {
        LT_FLOAT_SWITCH(ddt, TO, {
            ce_grad_kernel<TI, TO><<<row_grid(R), CE_THREADS, 0, c->stream>>>(
                (const TI *)x, ldx, (TO *)d, ldd, R, vc, v0, row0, lt_tensor_data(targets),
                targets->dtype_id, ignore_index, lse, g);
        });
    });
    LT_CU_LAUNCH("ce_grad_kernel");
    return LT_OK;
}

// ---- plain form ------------------------------------------------------------------------------

// lse (and row losses when asked) of all rows of logits (N, V).
static int plain_stats(lt_cuda_context *c, scratch &sc, const lt_tensor *logits,
                       const lt_tensor *targets, int64_t ignore_index, float *lse,
                       float *row_loss) {
    int64_t N = logits->sizes[0], V = logits->sizes[1];
    float *mx, *sm, *tl;
    LT_TRY(sc.alloc((void **)&mx, N * 4));
    LT_TRY(sc.alloc((void **)&sm, N * 4));
    LT_TRY(sc.alloc((void **)&tl, N * 4));
    LT_TRY(launch_update(c, lt_tensor_data(logits), logits->dtype_id, V, N, V, 0, 0, targets,
                         ignore_index, mx, sm, tl, 1));
    return launch_finalize(c, N, 0, mx, sm, tl, targets, ignore_index, lse, row_loss);
}

} // namespace

extern "C" int lt_cuda_cross_entropy_forward(lt_tensor *loss, lt_tensor *lse, lt_tensor *row_loss,
                                             const lt_tensor *logits, const lt_tensor *targets,
                                             int64_t ignore_index, double normalizer) {
    const char *op = "cross_entropy_forward";
    LT_TRY(check_float_contig(logits, op, "logits"));
    LT_TRY(check_rows_out(lse, op, "lse"));
    LT_TRY(check_rows_out(row_loss, op, "row_loss"));
    LT_TRY(check_rows_out(loss, op, "loss"));
    LT_CUDA_CTX(c, lt_device_of(logits));
    scratch sc = {lt_device_of(logits), {}, 0};
    int64_t N = logits->sizes[0], V = logits->sizes[1], count;
    LT_TRY(check_targets(c, sc, targets, N, V, ignore_index, op, &count));
    float *rl = row_loss ? lt_dptr<float>(row_loss) : NULL;
    if (!rl && loss) LT_TRY(sc.alloc((void **)&rl, N * 4));
    if (N > 0)
        LT_TRY(plain_stats(c, sc, logits, targets, ignore_index, lse ? lt_dptr<float>(lse) : NULL,
                           rl));
    if (loss) LT_TRY(launch_loss(c, rl, N, norm_of(normalizer, count), loss));
    return LT_OK;
}

extern "C" int lt_cuda_cross_entropy_backward(lt_tensor *dlogits, const lt_tensor *logits,
                                              const lt_tensor *targets, const lt_tensor *lse,
                                              float dloss, int64_t ignore_index,
                                              double normalizer) {
    const char *op = "cross_entropy_backward";
    LT_TRY(check_float_contig(logits, op, "logits"));
    LT_TRY(check_float_contig(dlogits, op, "dlogits"));
    LT_TRY(check_rows_out(lse, op, "lse"));
    LT_CUDA_CTX(c, lt_device_of(logits));
    scratch sc = {lt_device_of(logits), {}, 0};
    int64_t N = logits->sizes[0], V = logits->sizes[1], count;
    LT_TRY(check_targets(c, sc, targets, N, V, ignore_index, op, &count));
    if (N == 0 || V == 0) return LT_OK;
    double norm = norm_of(normalizer, count);
    float g = norm > 0 ? (float)(dloss / norm) : 0.0f;
    const float *l = lse ? lt_dptr<float>(lse) : NULL;
    if (!l) {
        float *tmp;
        LT_TRY(sc.alloc((void **)&tmp, N * 4));
        LT_TRY(plain_stats(c, sc, logits, targets, ignore_index, tmp, NULL));
        l = tmp;
    }
    return launch_grad(c, lt_tensor_data(logits), logits->dtype_id, V, lt_tensor_data(dlogits),
                       dlogits->dtype_id, V, N, V, 0, 0, targets, ignore_index, l, g);
}

namespace { // kernels and types stay private to this file

// ---- fused LM head ---------------------------------------------------------------------------

enum lmhead_mode { LM_FORWARD, LM_BACKWARD, LM_FUSED };

static int64_t env_int(const char *name) {
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    return (end && *end == 0 && v > 0) ? (int64_t)v : 0;
}

// Row chunk R and vocab chunk Vc for N rows and V columns (see the header comment).
static void choose_chunks(int64_t N, int64_t V, int64_t bytes_per_elem, int64_t *R_out,
                          int64_t *vc_out) {
    int64_t E = LT_CE_BUFFER_BYTES / bytes_per_elem;
    const int64_t min_rows = 256;
    int64_t rows_min = N < min_rows ? N : min_rows;
    if (rows_min < 1) rows_min = 1;
    int64_t vc = V;
    if (V > E / rows_min) {
        vc = (E / rows_min) / 128 * 128;
        if (vc < 128) vc = 128;
        if (vc > V) vc = V;
    }
    int64_t R = E / (vc > 0 ? vc : 1);
    if (R < 1) R = 1;
    if (R < N && R >= 64) R = R / 64 * 64;
    if (R > N) R = N;
    int64_t er = env_int("LT_CUDA_CE_ROWS"), ev = env_int("LT_CUDA_CE_VOCAB");
    if (er) R = er < N ? er : N;
    if (ev) vc = ev < V ? ev : V;
    if (R < 1) R = 1;
    if (vc < 1) vc = 1;
    *R_out = R;
    *vc_out = vc;
}

static int lmhead_cuda(lt_tensor *loss, lt_tensor *lse_out, const lt_tensor *lse_in,
                       lt_tensor *row_loss, lt_tensor *dh, lt_tensor *dw, const lt_tensor *h,
                       const lt_tensor *w, const lt_tensor *targets, int mode, float dloss,
                       int64_t ignore_index, double normalizer, const char *op) {
    LT_TRY(check_float_contig(h, op, "h"));
    if (!lt_is_float_dtype(w->dtype_id))
        return lt_fail(LT_ERR_DTYPE, "%s: w must be f32, bf16 or f16 on CUDA, got %s", op,
                       dtname(w->dtype_id));
    int64_t N = h->sizes[0], C = h->sizes[1], V = w->sizes[0];
    // w rows need unit stride (row-major with any row stride >= C)
    int64_t ldw = V > 1 ? w->strides[0] : C;
    if ((C > 1 && w->strides[1] != 1) || ldw < C)
        return lt_fail(LT_ERR_ARG, "%s: w must have unit stride in its last dim (call "
                                   ":contiguous())",
                       op);
    int cd = w->dtype_id; // the GEMMs' input dtype
    if (dh) {
        LT_TRY(check_float_contig(dh, op, "dh"));
        if (dh->dtype_id != LT_DTYPE_F32 && dh->dtype_id != cd)
            return lt_fail(LT_ERR_DTYPE, "%s: dh must be f32 or w's dtype %s, got %s", op,
                           dtname(cd), dtname(dh->dtype_id));
    }
    if (dw) {
        LT_TRY(check_float_contig(dw, op, "dw"));
        if (dw->dtype_id != LT_DTYPE_F32 && dw->dtype_id != cd)
            return lt_fail(LT_ERR_DTYPE, "%s: dw must be f32 or w's dtype %s, got %s", op,
                           dtname(cd), dtname(dw->dtype_id));
    }
    LT_TRY(check_rows_out(lse_out, op, "lse"));
    LT_TRY(check_rows_out(lse_in, op, "lse"));
    LT_TRY(check_rows_out(row_loss, op, "row_loss"));
    LT_TRY(check_rows_out(loss, op, "loss"));

    int dev = lt_device_of(h);
    LT_CUDA_CTX(c, dev);
    scratch sc = {dev, {}, 0};
    int64_t count;
    LT_TRY(check_targets(c, sc, targets, N, V, ignore_index, op, &count));
    double norm = norm_of(normalizer, count);
    float g = norm > 0 ? (float)(dloss / norm) : 0.0f;
    int grads = mode != LM_FORWARD && (dh || dw);
    // backward without a saved lse recomputes it, as the CPU does
    int need_stats = mode == LM_BACKWARD ? (grads && !lse_in) : 1;
    int want_loss = mode != LM_BACKWARD && loss;

    float *rl = row_loss ? lt_dptr<float>(row_loss) : NULL;
    if (!rl && want_loss) LT_TRY(sc.alloc((void **)&rl, N * 4));
    if (N == 0 || V == 0) {
        // no logits: lse -inf, every target is the ignore index (others were refused), so
        // row losses, the loss and dh are 0 -- what the CPU gives
        if (N > 0 && rl) LT_CU(cudaMemsetAsync(rl, 0, N * 4, c->stream));
        if (N > 0 && lse_out) {
            ce_fill_kernel<<<lt_blocks_for(N, 256), 256, 0, c->stream>>>(lt_dptr<float>(lse_out),
                                                                         N, -INFINITY);
            LT_CU_LAUNCH("ce_fill_kernel");
        }
        if (N > 0 && dh && grads)
            LT_CU(cudaMemsetAsync(lt_tensor_data(dh), 0,
                                  (size_t)(N * C * lt_dtype_size(dh->dtype_id)), c->stream));
        if (want_loss) LT_TRY(launch_loss(c, rl, N, norm, loss));
        return LT_OK;
    }
    if (!need_stats && !grads) return LT_OK;

    int cz = lt_dtype_size(cd);
    int separate_dl = grads && cd != LT_DTYPE_F32; // f32 gradients overwrite the logits
    int64_t R, vc;
    choose_chunks(N, V, 4 + (separate_dl ? cz : 0), &R, &vc);
    int single = vc >= V;

    float *logits, *mx = NULL, *sm = NULL, *tl = NULL, *lse = NULL;
    void *dl = NULL, *hbuf = NULL;
    LT_TRY(sc.alloc((void **)&logits, R * vc * 4));
    if (separate_dl) LT_TRY(sc.alloc(&dl, R * vc * cz));
    if (h->dtype_id != cd) LT_TRY(sc.alloc(&hbuf, R * C * cz));
    if (need_stats) {
        LT_TRY(sc.alloc((void **)&mx, N * 4));
        LT_TRY(sc.alloc((void **)&sm, N * 4));
        LT_TRY(sc.alloc((void **)&tl, N * 4));
    }
    if (mode == LM_BACKWARD && lse_in)
        lse = (float *)lt_dptr<float>(lse_in);
    else if (lse_out)
        lse = lt_dptr<float>(lse_out);
    else if (grads)
        LT_TRY(sc.alloc((void **)&lse, N * 4));
    if (!dl) dl = logits;

    const char *hp = (const char *)lt_tensor_data(h), *wp = (const char *)lt_tensor_data(w);
    int hz = lt_dtype_size(h->dtype_id);
    lt_gemm_args lg;
    memset(&lg, 0, sizeof lg);
    lg.trans_a = 0;
    lg.trans_b = 1;
    lg.K = C;
    lg.alpha = 1.0f;
    lg.beta = 0.0f;
    lg.ab_dtype = cd;
    lg.c_dtype = LT_DTYPE_F32;
    lg.ldb = ldw;
    lg.batch = 1;

    for (int64_t r0 = 0; r0 < N; r0 += R) {
        int64_t rn = N - r0 < R ? N - r0 : R;
        const void *hc = hp + r0 * C * hz;
        if (hbuf) {
            LT_FLOAT_SWITCH(h->dtype_id, TI, {
                LT_FLOAT_SWITCH(cd, TO, {
                    ce_convert_kernel<TI, TO><<<lt_blocks_for(rn * C, 256), 256, 0, c->stream>>>(
                        (TO *)hbuf, (const TI *)hc, rn * C);
                });
            });
            LT_CU_LAUNCH("ce_convert_kernel");
            hc = hbuf;
        }
        lg.A = hc;
        lg.lda = C;
        lg.M = rn;
        // pass 1: lse (and the loss terms) of these rows over every vocab chunk
        if (need_stats) {
            for (int64_t v0 = 0; v0 < V; v0 += vc) {
                int64_t vn = V - v0 < vc ? V - v0 : vc;
                lg.N = vn;
                lg.B = wp + v0 * ldw * cz;
                lg.C = logits;
                lg.ldc = vn;
                LT_TRY(lt_cuda_gemm(c, &lg));
                LT_TRY(launch_update(c, logits, LT_DTYPE_F32, vn, rn, vn, v0, r0, targets,
                                     ignore_index, mx, sm, tl, v0 == 0));
            }
            LT_TRY(launch_finalize(c, rn, r0, mx, sm, tl, targets, ignore_index, lse, rl));
        }
        if (!grads) continue;
        // pass 2: the logit gradient chunk by chunk, into dh (=) and dw (+=); a single
        // vocab chunk still holds its logits from pass 1
        for (int64_t v0 = 0; v0 < V; v0 += vc) {
            int64_t vn = V - v0 < vc ? V - v0 : vc;
            const char *wc = wp + v0 * ldw * cz;
            if (!(single && need_stats)) {
                lg.N = vn;
                lg.B = wc;
                lg.C = logits;
                lg.ldc = vn;
                LT_TRY(lt_cuda_gemm(c, &lg));
            }
            LT_TRY(launch_grad(c, logits, LT_DTYPE_F32, vn, dl, separate_dl ? cd : LT_DTYPE_F32,
                               vn, rn, vn, v0, r0, targets, ignore_index, lse, g));
            if (dh) { // dh rows (rn x C) (+)= dl (rn x vn) @ w chunk (vn x C)
                lt_gemm_args a;
                memset(&a, 0, sizeof a);
                a.M = rn;
                a.N = C;
                a.K = vn;
                a.alpha = 1.0f;
                a.beta = v0 == 0 ? 0.0f : 1.0f;
                a.A = dl;
                a.lda = vn;
                a.B = wc;
                a.ldb = ldw;
                a.C = (char *)lt_tensor_data(dh) + r0 * C * lt_dtype_size(dh->dtype_id);
                a.ldc = C;
                a.ab_dtype = cd;
                a.c_dtype = dh->dtype_id;
                a.batch = 1;
                LT_TRY(lt_cuda_gemm(c, &a));
            }
            if (dw) { // dw chunk (vn x C) += dl^T (vn x rn) @ h rows (rn x C)
                lt_gemm_args a;
                memset(&a, 0, sizeof a);
                a.trans_a = 1;
                a.M = vn;
                a.N = C;
                a.K = rn;
                a.alpha = 1.0f;
                a.beta = 1.0f;
                a.A = dl;
                a.lda = vn;
                a.B = hc;
                a.ldb = C;
                a.C = (char *)lt_tensor_data(dw) + v0 * C * lt_dtype_size(dw->dtype_id);
                a.ldc = C;
                a.ab_dtype = cd;
                a.c_dtype = dw->dtype_id;
                a.batch = 1;
                LT_TRY(lt_cuda_gemm(c, &a));
            }
        }
    }
    if (want_loss) LT_TRY(launch_loss(c, rl, N, norm, loss));
    return LT_OK;
}

} // namespace

extern "C" int lt_cuda_linear_cross_entropy_forward(lt_tensor *loss, lt_tensor *lse,
                                                    lt_tensor *row_loss, const lt_tensor *h,
                                                    const lt_tensor *w, const lt_tensor *targets,
                                                    int64_t ignore_index, double normalizer) {
    return lmhead_cuda(loss, lse, NULL, row_loss, NULL, NULL, h, w, targets, LM_FORWARD, 0.0f,
                       ignore_index, normalizer, "linear_cross_entropy_forward");
}

extern "C" int lt_cuda_linear_cross_entropy_backward(lt_tensor *dh, lt_tensor *dw,
                                                     const lt_tensor *h, const lt_tensor *w,
                                                     const lt_tensor *targets,
                                                     const lt_tensor *lse, float dloss,
                                                     int64_t ignore_index, double normalizer) {
    return lmhead_cuda(NULL, NULL, lse, NULL, dh, dw, h, w, targets, LM_BACKWARD, dloss,
                       ignore_index, normalizer, "linear_cross_entropy_backward");
}

extern "C" int lt_cuda_linear_cross_entropy_fused(lt_tensor *loss, lt_tensor *row_loss,
                                                  lt_tensor *dh, lt_tensor *dw, const lt_tensor *h,
                                                  const lt_tensor *w, const lt_tensor *targets,
                                                  float dloss, int64_t ignore_index,
                                                  double normalizer) {
    return lmhead_cuda(loss, NULL, NULL, row_loss, dh, dw, h, w, targets, LM_FUSED, dloss,
                       ignore_index, normalizer, "linear_cross_entropy_fused");
}
