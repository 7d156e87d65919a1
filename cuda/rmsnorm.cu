// rmsnorm.cu - the CUDA side of src/ops/rmsnorm.c: RMSNorm over the last dim and its gradient.
//
//   forward   out (N, C) = x (N, C) * rstd * weight (C),  rstd (N) = 1 / sqrt(mean(x^2) + eps)
//   backward  with g = dout * weight and xh = x * rstd:
//             dx (N, C) = rstd * (g - xh * mean(g * xh))                      (written)
//             dweight (C) += sum over rows of dout * xh                        (accumulated)
// N is the product of the leading dims; x, out, dout and dx need unit stride in C and rows
// that nest (a row stride, as on the CPU). Dtypes: x, out, dout, dx f32, bf16 or f16 (the
// CPU too, through f32 twins); weight f32/bf16/f16; rstd and dweight f32. Math is f32, in the CPU's
// order of operations.
//
// Launch: one warp per row (8 rows per block) for C <= 1024, one block of 256 threads per
// row beyond; the row is read once to reduce (sum of squares, or the dot product in
// backward) and once more to write, the second read mostly from L1/L2. Rows whose pointers
// are 16-byte aligned, with one dtype for x/out/dout/dx, use 16-byte loads and stores.
//
// dweight is reduced across rows in two passes, never with per-element atomics: pass 1 gives
// each of P row partitions (about 4 blocks per multiprocessor) and each 256-column tile one
// block, whose threads each own one column and sum dout * x * rstd down their partition's
// rows (coalesced across the warp) into partial[P][C]; pass 2 adds the P partials of each
// column to dweight in partition order. Both passes have fixed orders: the result is the
// same on every run.
#include "common.cuh"

namespace {

template <class T> __device__ __forceinline__ bool al16(const char *p, int64_t off) {
    return (((uintptr_t)p + (uintptr_t)off * sizeof(T)) & 15u) == 0;
}

template <int G> __device__ __forceinline__ float group_sum(float v, float *sh) {
    v = lt_warp_sum(v);
    if (G > 32) {
        int w = threadIdx.x >> 5;
        __syncthreads();
        if ((threadIdx.x & 31) == 0) sh[w] = v;
        __syncthreads();
        v = 0.0f;
        for (int k = 0; k < G / 32; k++) v += sh[k];
    }
    return v;
}

// Row operands: 0 out/dx, 1 x, 2 dout (backward).
struct NormArgs {
    char *p[3];
    int dt[3];
    int64_t rs[3]; // row strides
    const char *w;
    int wdt;
    float *rstd;
    int64_t rows, C;
    float eps;
};

template <class T, int G> __global__ void __launch_bounds__(G > 32 ? G : 256) rms_fwd_kernel(NormArgs a) {
    constexpr int BLOCK = G > 32 ? G : 256;
    constexpr int W = pack_w<T>();
    __shared__ float sh[BLOCK / 32];
    const int groups = BLOCK / G;
    int g = threadIdx.x / G, lane = threadIdx.x % G;
    for (int64_t base = (int64_t)blockIdx.x * groups; base < a.rows;
         base += (int64_t)gridDim.x * groups) {
        int64_t r = base + g;
        bool live = r < a.rows;
        int64_t n = live ? a.C : 0, ox = r * a.rs[1], oy = r * a.rs[0];
        const char *x = a.p[1];
        char *y = a.p[0];
        int64_t nv = 0;
        if constexpr (W > 1)
            if (al16<T>(x, ox) && al16<T>(y, oy)) nv = n / W;
        float ss = 0.0f;
        if constexpr (W > 1) {
            for (int64_t v = lane; v < nv; v += G) {
                Pack<T> pk = *(const Pack<T> *)(x + (ox + v * W) * (int64_t)sizeof(T));
#pragma unroll
                for (int j = 0; j < W; j++) {
                    float xv = lt_to_f32(pk.v[j]);
                    ss += xv * xv;
                }
            }
        }
        for (int64_t j = nv * W + lane; j < n; j += G) {
            float xv = ldr<T>(x, a.dt[1], ox + j);
            ss += xv * xv;
        }
        ss = group_sum<G>(ss, sh);
        float inv = 1.0f / sqrtf(ss / (float)a.C + a.eps);
        if constexpr (W > 1) {
            for (int64_t v = lane; v < nv; v += G) {
                Pack<T> pk = *(const Pack<T> *)(x + (ox + v * W) * (int64_t)sizeof(T));
#pragma unroll
                for (int j = 0; j < W; j++)
                    pk.v[j] = lt_from_f32<T>(lt_to_f32(pk.v[j]) * inv * ld_any(a.w, a.wdt, v * W + j));
                *(Pack<T> *)(y + (oy + v * W) * (int64_t)sizeof(T)) = pk;
            }
        }
        for (int64_t j = nv * W + lane; j < n; j += G)
            str<T>(y, a.dt[0], oy + j, ldr<T>(x, a.dt[1], ox + j) * inv * ld_any(a.w, a.wdt, j));
        if (live && lane == 0 && a.rstd) a.rstd[r] = inv;
    }
}

// dx = inv * (g * w - x * inv * m), m = sum(g * w * x * inv) / C (the CPU's expressions).
template <class T, int G> __global__ void __launch_bounds__(G > 32 ? G : 256) rms_bwd_kernel(NormArgs a) {
    constexpr int BLOCK = G > 32 ? G : 256;
    constexpr int W = pack_w<T>();
    __shared__ float sh[BLOCK / 32];
    const int groups = BLOCK / G;
    int g = threadIdx.x / G, lane = threadIdx.x % G;
    for (int64_t base = (int64_t)blockIdx.x * groups; base < a.rows;
         base += (int64_t)gridDim.x * groups) {
        int64_t r = base + g;
        bool live = r < a.rows;
        int64_t n = live ? a.C : 0, odx = r * a.rs[0], ox = r * a.rs[1], od = r * a.rs[2];
        char *dx = a.p[0];
        const char *x = a.p[1], *d = a.p[2];
        float inv = live ? a.rstd[r] : 0.0f;
        int64_t nv = 0;
        if constexpr (W > 1)
            if (al16<T>(dx, odx) && al16<T>(x, ox) && al16<T>(d, od)) nv = n / W;
        float dot = 0.0f;
        if constexpr (W > 1) {
            for (int64_t v = lane; v < nv; v += G) {
                Pack<T> px = *(const Pack<T> *)(x + (ox + v * W) * (int64_t)sizeof(T));
                Pack<T> pd = *(const Pack<T> *)(d + (od + v * W) * (int64_t)sizeof(T));
#pragma unroll
                for (int j = 0; j < W; j++)
                    dot += lt_to_f32(pd.v[j]) * ld_any(a.w, a.wdt, v * W + j) *
                           lt_to_f32(px.v[j]) * inv;
            }
        }
        for (int64_t j = nv * W + lane; j < n; j += G)
            dot += ldr<T>(d, a.dt[2], od + j) * ld_any(a.w, a.wdt, j) * ldr<T>(x, a.dt[1], ox + j) *
                   inv;
        dot = group_sum<G>(dot, sh);
        float m = dot / (float)a.C;
        if constexpr (W > 1) {
            for (int64_t v = lane; v < nv; v += G) {
                Pack<T> px = *(const Pack<T> *)(x + (ox + v * W) * (int64_t)sizeof(T));
                Pack<T> pd = *(const Pack<T> *)(d + (od + v * W) * (int64_t)sizeof(T));
                Pack<T> po;
#pragma unroll
                for (int j = 0; j < W; j++) {
                    float gv = lt_to_f32(pd.v[j]), xv = lt_to_f32(px.v[j]);
                    po.v[j] = lt_from_f32<T>(inv * (gv * ld_any(a.w, a.wdt, v * W + j) - xv * inv * m));
                }
                *(Pack<T> *)(dx + (odx + v * W) * (int64_t)sizeof(T)) = po;
            }
        }
        for (int64_t j = nv * W + lane; j < n; j += G) {
            float gv = ldr<T>(d, a.dt[2], od + j), xv = ldr<T>(x, a.dt[1], ox + j);
            str<T>(dx, a.dt[0], odx + j, inv * (gv * ld_any(a.w, a.wdt, j) - xv * inv * m));
        }
    }
}

// Pass 1 of dweight: partial[p][c] = sum over the rows of partition p of dout * x * rstd.
__global__ void __launch_bounds__(256) rms_dw_partial_kernel(NormArgs a, float *partial,
                                                             int64_t rows_per_part) {
    int64_t c = blockIdx.x * 256LL + threadIdx.x;
    int64_t p = blockIdx.y;
    if (c >= a.C) return;
    int64_t r0 = p * rows_per_part, r1 = min(a.rows, r0 + rows_per_part);
    float acc = 0.0f;
#pragma unroll 4
    for (int64_t r = r0; r < r1; r++)
        acc += ld_any(a.p[2], a.dt[2], r * a.rs[2] + c) * ld_any(a.p[1], a.dt[1], r * a.rs[1] + c) *
               a.rstd[r];
    partial[p * a.C + c] = acc;
}

// Pass 2: dweight[c] += partial[0][c] + partial[1][c] + ... in partition order.
__global__ void rms_dw_final_kernel(float *dw, const float *partial, int64_t P, int64_t C) {
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < C;
         c += (int64_t)gridDim.x * blockDim.x) {
        float acc = dw[c];
        for (int64_t p = 0; p < P; p++) acc += partial[p * C + c];
        dw[c] = acc;
    }
}

void norm_args(NormArgs *a, const lt_tensor *t0, const lt_tensor *t1, const lt_tensor *t2,
               const lt_tensor *weight, const lt_tensor *rstd, float eps) {
    memset(a, 0, sizeof *a);
    const lt_tensor *t[3] = {t0, t1, t2};
    for (int k = 0; k < 3; k++) {
        if (!t[k]) continue;
        a->p[k] = (char *)lt_tensor_data(t[k]);
        a->dt[k] = t[k]->dtype_id;
        a->rs[k] = lt_row_stride(t[k]);
    }
    a->C = t1->ndim > 0 ? t1->sizes[t1->ndim - 1] : 1;
    a->rows = a->C ? lt_tensor_numel(t1) / a->C : 0;
    a->w = (const char *)lt_tensor_data(weight);
    a->wdt = weight->dtype_id;
    a->rstd = rstd ? (float *)lt_tensor_data(rstd) : NULL;
    a->eps = eps;
}

template <int G> int rms_launch(NormArgs *a, bool fwd, bool same, int dtype, cudaStream_t s) {
    const int block = G > 32 ? G : 256;
    const int per = block / G;
    unsigned grid = lt_blocks_for((a->rows + per - 1) / per, 1);
    if (!same) {
        if (fwd) rms_fwd_kernel<AnyT, G><<<grid, block, 0, s>>>(*a);
        else rms_bwd_kernel<AnyT, G><<<grid, block, 0, s>>>(*a);
        return LT_OK;
    }
    LT_FLOAT_SWITCH(dtype, T, {
        if (fwd) rms_fwd_kernel<T, G><<<grid, block, 0, s>>>(*a);
        else rms_bwd_kernel<T, G><<<grid, block, 0, s>>>(*a);
    });
    return LT_OK;
}

int rms_rows(NormArgs *a, bool fwd, int nops, lt_cuda_context *c) {
    bool same = true;
    for (int k = 1; k < nops; k++) same = same && a->dt[k] == a->dt[0];
    int st = a->C <= 1024 ? rms_launch<32>(a, fwd, same, a->dt[0], c->stream)
                          : rms_launch<256>(a, fwd, same, a->dt[0], c->stream);
    LT_TRY(st);
    LT_CU_LAUNCH(fwd ? "rms_fwd_kernel" : "rms_bwd_kernel");
    return LT_OK;
}

// The two dweight passes (see the header).
int dweight_reduce(const NormArgs *ap, float *dw, lt_cuda_context *c) {
    const NormArgs &a = *ap;
    int dev = c->device;
    int sms = c->prop.multiProcessorCount > 0 ? c->prop.multiProcessorCount : 1;
    int64_t tiles = (a.C + 255) / 256;
    int64_t P = (4LL * sms + tiles - 1) / tiles;
    if (P > a.rows) P = a.rows;
    if (P > 65535) P = 65535;
    if (P < 1) P = 1;
    int64_t per = (a.rows + P - 1) / P;
    P = (a.rows + per - 1) / per;
    float *partial = NULL;
    LT_TRY(lt_cuda_alloc((void **)&partial, P * a.C * (int64_t)sizeof(float), dev));
    rms_dw_partial_kernel<<<dim3((unsigned)tiles, (unsigned)P), 256, 0, c->stream>>>(a, partial, per);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) {
        rms_dw_final_kernel<<<lt_blocks_for(a.C, 256), 256, 0, c->stream>>>(
            dw, partial, P, a.C);
        e = cudaGetLastError();
    }
    lt_cuda_free(partial, dev); // the stream orders its reuse after the two kernels
    if (e != cudaSuccess)
        return lt_fail(LT_ERR_DEVICE, "%s:%d: launching the dweight reduction: %s", __FILE__,
                       __LINE__, cudaGetErrorString(e));
    return LT_OK;
}

} // namespace

extern "C" int lt_cuda_rmsnorm_forward(lt_tensor *out, lt_tensor *rstd, const lt_tensor *x,
                                       const lt_tensor *weight, float eps) {
    NormArgs a;
    norm_args(&a, out, x, NULL, weight, rstd, eps);
    if (a.rows == 0) return LT_OK;
    LT_CUDA_CTX(c, lt_device_of(out));
    return rms_rows(&a, true, 2, c);
}

extern "C" int lt_cuda_rmsnorm_backward(lt_tensor *dx, lt_tensor *dweight, const lt_tensor *dout,
                                        const lt_tensor *x, const lt_tensor *weight,
                                        const lt_tensor *rstd) {
    NormArgs a;
    norm_args(&a, dx, x, dout, weight, rstd, 0.0f);
    if (a.rows == 0 || a.C == 0) return LT_OK;
    int dev = lt_device_of(dx);
    LT_CUDA_CTX(c, dev);
    // dweight first: dx may be written over dout or x (as the CPU allows), and the partial
    // sums read both
    if (dweight) LT_TRY(dweight_reduce(&a, (float *)lt_tensor_data(dweight), c));
    return rms_rows(&a, false, 3, c);
}
