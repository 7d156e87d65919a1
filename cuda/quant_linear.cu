// quant_linear.cu - the linear layer over quantized weights on the GPU (the CUDA twin of
// src/ops/quant_linear.c; src/lt_quant.h documents the layout and the rounding rules).
//
//   lt_cuda_quant_linear_forward   y (N, out) = x (N, in) @ W^T (+ beta y)
//   lt_cuda_quant_linear_backward  dx (N, in) = dy (N, out) @ W (+ beta dx)
//                         x/dy f32, bf16 or f16 (the CPU takes them all too); y/dx f32 or
//                         the input's dtype (the CPU wants f32: mixed precision is what the
//                         GPU path is for). int8 forward is LLM.int8's mixed decomposition,
//                         as on the CPU: x quantized row-wise to int8 except outlier columns.
//
//
// Two paths for the linear layer, chosen by N (rows of x, i.e. tokens):
//
//  * N <= LT_QGEMV_MAX_ROWS (8): a fused dequantize-GEMV. The packed weight is read once
//    (16-byte loads of 32 codes per lane, the 16-entry code book in shared memory, one scale
//    per 32 codes), dequantized in registers and multiplied with all N rows of x at once.
//    Bytes moved: 0.5 B per weight (+4/64 for the scale) against 2N flops per weight. On an
//    H100 (3.35 TB/s, ~67 TFLOP/s f32 on the CUDA cores) the weight stream alone takes
//    ~0.16 ps per element and the N FMAs (plus ~2 instructions of decoding) ~(N + 2) x
//    0.015 ps: the kernel stays bound by the weight stream up to N ~ 8, and at N = 8 it is
//    still ~4x less time than the banded path below, which moves ~4.5 B per weight
//    (dequantized bf16 written and read back, plus the codes). Beyond that the FMAs on
//    CUDA cores grow linearly while the tensor-core GEMM's cost is nearly flat, so larger N
//    go to the GEMM. This is the decode-time case (generation with a KV cache: 1 token per
//    sequence), and what makes QLoRA generation fast. Each warp owns R (2 or 4) output rows
//    so that one load of x feeds R rows (x is re-read from L1, not HBM; R = 4 for N > 2
//    keeps those re-reads within L1 bandwidth). Shapes with in % 32 != 0 or misaligned
//    buffers take a per-element path with the same arithmetic.
//    Backward (dx = dy W, N <= 8) reads the weight once too: a block owns 256 columns of
//    dx, its 8 warps stride over the weight rows (4-byte loads of 8 codes per lane), and
//    when there are few column tiles the rows are split over blocks (partials in f32,
//    summed in a fixed order by a second kernel: deterministic, no atomics).
//
//  * N > 8: the weight is dequantized a band at a time into a scratch buffer of x's dtype
//    (bounded by LT_QBAND_BYTES = 32 MiB, from the caching allocator) and each band goes
//    through lt_cuda_gemm (cuBLASLt, f32 accumulation): forward bands are rows of W (one
//    slice of y's columns each), backward bands are columns of W (one slice of dx's
//    columns each), so every output element is written by exactly one GEMM and beta
//    applies once; nothing accumulates in low precision across bands. 32 MiB is 16M bf16
//    elements: whole 4096 x 4096 projections in one band, a 14336 x 4096 MLP weight in 4;
//    it is 40% of an H100's 50 MB L2, so a band written by the dequantize kernel is largely
//    read back from L2 by the GEMM, and per-band launch costs (two launches, ~10 us) stay
//    small against each band's GEMM. Dequantizing costs O(out x in) against the GEMM's
//    O(N x out x in). Bands are multiples of 64 rows/columns so every band's pointers keep
//    16-byte alignment. int8 forward runs the integer products as a bf16 GEMM on the raw
//    codes (integers up to 127 are exact in bf16, and their products sum exactly in f32
//    while below 2^24, as the CPU's sgemm on integer-valued floats), then an epilogue
//    applies the scales and adds the outlier columns in f32.
//
// Precision: f32 activations on the banded path run an f32 GEMM, which uses TF32 when
// lt_cuda_gemm_allow_tf32 is on (cuda/matmul.cuh); the GEMV path is always f32.
#include "matmul.cuh"
#include "quant.cuh"

// ---- the linear layer: shared pieces ---------------------------------------------------------------

// A (rows, cols) matrix view: unit stride in cols, row stride ld (>= cols when rows > 1).
struct mat2 {
    void *p;
    int64_t rows, cols, ld;
    int dtype;
};

// t (..., cols) as a matrix view without copying, or fail (0) when its layout does not allow.
static int as_mat2(mat2 *m, const lt_tensor *t, int64_t cols) {
    int64_t rows = 1;
    for (int i = 0; i < t->ndim - 1; i++) rows *= t->sizes[i];
    lt_tensor v = {};
    int64_t s[2] = {rows, cols};
    if (lt_tensor_reshape(&v, t, 2, s) != LT_OK) {
        lt_clear_error();
        return 0;
    }
    bool ok = (cols <= 1 || v.strides[1] == 1) && (rows <= 1 || v.strides[0] >= cols);
    m->p = lt_tensor_data(&v);
    m->rows = rows;
    m->cols = cols;
    m->ld = rows <= 1 ? cols : v.strides[0];
    if (m->ld < cols) m->ld = cols;
    m->dtype = t->dtype_id;
    lt_tensor_release(&v);
    return ok;
}

// The output's view (it must be written in place) and the input's (a contiguous device
// copy in `keep` when its layout cannot be viewed).
static int linear_views(mat2 *om, mat2 *im, lt_tensor *keep, const lt_tensor *out,
                        const lt_tensor *in, int64_t n_out, int64_t n_in, const char *op,
                        const char *out_name) {
    if (!as_mat2(om, out, n_out))
        return lt_fail(LT_ERR_ARG,
                       "%s: %s must have unit stride in its last dim and nested rows "
                       "(make it contiguous)",
                       op, out_name);
    if (as_mat2(im, in, n_in)) return LT_OK;
    LT_TRY(lt_tensor_contiguous(keep, in, -1));
    as_mat2(im, keep, n_in);
    return LT_OK;
}

template <class T>
__global__ void __launch_bounds__(LT_QTHREADS)
    scale_rows_kernel(T *__restrict__ y, int64_t N, int64_t n, int64_t ld, float beta) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N * n;
         i += (int64_t)gridDim.x * blockDim.x) {
        T *p = y + (i / n) * ld + i % n;
        *p = lt_from_f32<T>(beta == 0.0f ? 0.0f : beta * lt_to_f32(*p));
    }
}

// y = beta * y (no reads when beta is 0): the product of an empty reduction.
static int scale_rows(lt_cuda_context *c, const mat2 &y, float beta) {
    if (y.rows == 0 || y.cols == 0) return LT_OK;
    LT_FLOAT_SWITCH(y.dtype, T, {
        scale_rows_kernel<T><<<grid_for(y.rows * y.cols, LT_QTHREADS), LT_QTHREADS, 0,
                               c->stream>>>((T *)y.p, y.rows, y.cols, y.ld, beta);
    });
    return launch_status("scale_rows_kernel");
}

// Writes the result of output element p: v (+ beta * old).
template <class T> __device__ __forceinline__ void put_out(T *p, float v, float beta) {
    *p = lt_from_f32<T>(beta == 0.0f ? v : v + beta * lt_to_f32(*p));
}

// Rows (or columns) of each band: band x `along` elements of esz bytes within `budget`
// bytes, a multiple of 64 when at least 64 fit, capped at total.
static int64_t band_size(int64_t along, int esz, int64_t total, int64_t budget) {
    const int64_t per = along * esz;
    int64_t b = per > 0 ? budget / per : total;
    b = b >= 64 ? b / 64 * 64 : (b >= 1 ? b : 1);
    return b < total ? b : total;
}

// Blocks of a GEMV launch: one per 8 warps of R rows each (no grid-stride loop).
static int gemv_blocks(int64_t rows, int R, unsigned *out) {
    const int64_t b = (rows + (int64_t)LT_QWARPS * R - 1) / ((int64_t)LT_QWARPS * R);
    if (b > INT32_MAX)
        return lt_fail(LT_ERR_RANGE, "quant GEMV: %lld weight rows are too many for one launch",
                       (long long)rows);
    *out = (unsigned)(b > 0 ? b : 1);
    return LT_OK;
}

// ---- the fused dequantize-GEMV (forward, 4-bit) ------------------------------------------------

// y (NT, out) = x (NT, in) @ W^T (+ beta y). Warp w of block b owns rows
// [(8 b + w) R, + R). fast: in % 32 == 0 and the packed codes 16-byte aligned, so a lane's
// 32 codes are one 16-byte load inside one block; xvec: x's rows 16-byte aligned.
template <int NT, int R, class TX, class TY>
__global__ void __launch_bounds__(LT_QTHREADS)
    gemv4_fwd_kernel(qdev d, const TX *__restrict__ x, int64_t ldx, TY *__restrict__ y,
                     int64_t ldy, float beta, int fast, int xvec) {
    __shared__ qsmem sm;
    qsmem_load(sm, d);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t out = d.rows, in = d.cols;
    const int64_t o0 = ((int64_t)blockIdx.x * LT_QWARPS + warp) * R;
    if (o0 >= out) return; // no barrier follows
    float acc[R][NT];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int n = 0; n < NT; n++) acc[r][n] = 0.0f;
    if (fast) {
        for (int64_t k = (int64_t)lane * 32; k < in; k += 32 * 32) {
            uint4 q[R];
            float s[R];
#pragma unroll
            for (int r = 0; r < R; r++) {
                if (o0 + r < out) {
                    const int64_t e = (o0 + r) * in + k;
                    q[r] = __ldg((const uint4 *)(d.packed + (e >> 1)));
                    s[r] = qscale(d, sm, e / d.bs);
                } else {
                    q[r] = make_uint4(0, 0, 0, 0);
                    s[r] = 0.0f;
                }
            }
#pragma unroll
            for (int sub = 0; sub < 4; sub++) {
                float xv[NT][8];
#pragma unroll
                for (int n = 0; n < NT; n++) load8(x + n * ldx + k + sub * 8, xv[n], xvec);
#pragma unroll
                for (int r = 0; r < R; r++) {
                    const uint32_t word =
                        sub == 0 ? q[r].x : (sub == 1 ? q[r].y : (sub == 2 ? q[r].z : q[r].w));
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        const float wv = sm.code[nibble_of_word(word, j)] * s[r];
#pragma unroll
                        for (int n = 0; n < NT; n++) acc[r][n] = fmaf(wv, xv[n][j], acc[r][n]);
                    }
                }
            }
        }
    } else {
        for (int64_t k = lane; k < in; k += 32) {
            float xv[NT];
#pragma unroll
            for (int n = 0; n < NT; n++) xv[n] = lt_to_f32(x[n * ldx + k]);
#pragma unroll
            for (int r = 0; r < R; r++) {
                if (o0 + r >= out) continue;
                const int64_t e = (o0 + r) * in + k;
                const float wv = sm.code[nibble_at(d.packed, e)] * qscale(d, sm, e / d.bs);
#pragma unroll
                for (int n = 0; n < NT; n++) acc[r][n] = fmaf(wv, xv[n], acc[r][n]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int n = 0; n < NT; n++) {
            const float v = lt_warp_sum(acc[r][n]);
            if (lane == 0 && o0 + r < out) put_out(y + n * ldy + o0 + r, v, beta);
        }
}

// Rows of W per warp: one load of x feeds R rows (R = 4 once x's re-reads would outweigh
// the weight stream).
template <int NT> struct gemv_rows {
    static constexpr int R = NT <= 2 ? 2 : 4;
};

template <int NT, class TX, class TY>
static void launch_gemv4_fwd(lt_cuda_context *c, unsigned grid, const qdev &d, const mat2 &x,
                             const mat2 &y, float beta, int fast, int xvec) {
    gemv4_fwd_kernel<NT, gemv_rows<NT>::R, TX, TY><<<grid, LT_QTHREADS, 0, c->stream>>>(
        d, (const TX *)x.p, x.ld, (TY *)y.p, y.ld, beta, fast, xvec);
}

// Runs body with NT a compile-time constant equal to n (1..8).
#define LT_NT_SWITCH(n, NT, ...)                                                           \
    switch (n) {                                                                           \
    case 1: { constexpr int NT = 1; __VA_ARGS__; } break;                                   \
    case 2: { constexpr int NT = 2; __VA_ARGS__; } break;                                   \
    case 3: { constexpr int NT = 3; __VA_ARGS__; } break;                                   \
    case 4: { constexpr int NT = 4; __VA_ARGS__; } break;                                   \
    case 5: { constexpr int NT = 5; __VA_ARGS__; } break;                                   \
    case 6: { constexpr int NT = 6; __VA_ARGS__; } break;                                   \
    case 7: { constexpr int NT = 7; __VA_ARGS__; } break;                                   \
    case 8: { constexpr int NT = 8; __VA_ARGS__; } break;                                   \
    default: return LT_INTERNAL("quant GEMV: %lld rows of x", (long long)(n));             \
    }

// x's rows can be read 8 elements at a time with 16-byte loads.
static int x_vectorisable(const mat2 &x) {
    const int esz = lt_dtype_size(x.dtype);
    return aligned16(x.p) && (x.rows <= 1 || (x.ld * esz) % 16 == 0);
}

static int gemv4_forward(lt_cuda_context *c, const qdev &d, const mat2 &x, const mat2 &y,
                         float beta) {
    const int fast = d.cols % 32 == 0 && aligned16(d.packed) && d.bs % 32 == 0;
    const int xvec = fast && x_vectorisable(x);
    const bool yf32 = y.dtype == LT_DTYPE_F32;
    unsigned grid = 1;
    LT_TRY(gemv_blocks(d.rows, x.rows <= 2 ? 2 : 4, &grid));
    LT_FLOAT_SWITCH(x.dtype, TX, {
        LT_NT_SWITCH(x.rows, NT, {
            if (yf32)
                launch_gemv4_fwd<NT, TX, float>(c, grid, d, x, y, beta, fast, xvec);
            else
                launch_gemv4_fwd<NT, TX, TX>(c, grid, d, x, y, beta, fast, xvec);
        });
    });
    return launch_status("gemv4_fwd_kernel");
}

// ---- the fused GEMV (backward, 4-bit and int8) -----------------------------------------------

// dx (NT, in) = dy (NT, out) @ W: block (bx, by) owns columns [256 bx, + 256) and weight rows
// [by rows_per, + rows_per); its 8 warps take every 8th row. fast: in % 8 == 0 and the codes
// aligned for one 4-byte (4-bit) or 8-byte (int8) load of a lane's 8 columns. final: write
// dx (+ beta dx); else write the f32 partial sums of this row split to part.
template <int NT, int MODE, class TG, class TO>
__global__ void __launch_bounds__(LT_QTHREADS)
    gemv_bwd_kernel(qdev d, const TG *__restrict__ dy, int64_t lddy, int64_t rows_per,
                    TO *__restrict__ dx, int64_t lddx, float *__restrict__ part, float beta,
                    int final_out, int fast) {
    __shared__ qsmem sm;
    __shared__ float red[LT_QWARPS][256];
    qsmem_load(sm, d);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t out = d.rows, in = d.cols;
    const int64_t c_base = (int64_t)blockIdx.x * 256;
    const int64_t o_lo = (int64_t)blockIdx.y * rows_per;
    const int64_t o_hi = o_lo + rows_per < out ? o_lo + rows_per : out;
    float acc[NT][8];
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[n][j] = 0.0f;
    if (fast) {
        const int64_t col = c_base + lane * 8;
        if (col < in) {
            for (int64_t o = o_lo + warp; o < o_hi; o += LT_QWARPS) {
                float g[NT];
#pragma unroll
                for (int n = 0; n < NT; n++) g[n] = lt_to_f32(dy[n * lddy + o]);
                const int64_t e = o * in + col;
                float wv[8];
                if (MODE == DQ_4BIT) {
                    const uint32_t word = __ldg((const uint32_t *)(d.packed + (e >> 1)));
                    const float s = qscale(d, sm, e / d.bs);
#pragma unroll
                    for (int j = 0; j < 8; j++) wv[j] = sm.code[nibble_of_word(word, j)] * s;
                } else {
                    const uint2 word = __ldg((const uint2 *)(d.packed + e));
                    const float s = __ldg(d.absmax + o) * (1.0f / 127.0f);
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        const uint32_t wd = j < 4 ? word.x : word.y;
                        wv[j] = (float)(int8_t)((wd >> (8 * (j & 3))) & 0xffu) * s;
                    }
                }
#pragma unroll
                for (int n = 0; n < NT; n++)
#pragma unroll
                    for (int j = 0; j < 8; j++) acc[n][j] = fmaf(wv[j], g[n], acc[n][j]);
            }
        }
    } else {
        for (int64_t o = o_lo + warp; o < o_hi; o += LT_QWARPS) {
            float g[NT];
#pragma unroll
            for (int n = 0; n < NT; n++) g[n] = lt_to_f32(dy[n * lddy + o]);
            const float s8 = MODE == DQ_4BIT ? 0.0f : __ldg(d.absmax + o) * (1.0f / 127.0f);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int64_t col = c_base + lane + 32 * j;
                if (col >= in) continue;
                const int64_t e = o * in + col;
                const float wv =
                    MODE == DQ_4BIT
                        ? sm.code[nibble_at(d.packed, e)] * qscale(d, sm, e / d.bs)
                        : (float)__ldg((const int8_t *)d.packed + e) * s8;
#pragma unroll
                for (int n = 0; n < NT; n++) acc[n][j] = fmaf(wv, g[n], acc[n][j]);
            }
        }
    }
    // the 8 warps' sums of each column, added in warp order
#pragma unroll
    for (int n = 0; n < NT; n++) {
#pragma unroll
        for (int j = 0; j < 8; j++) red[warp][fast ? lane * 8 + j : lane + 32 * j] = acc[n][j];
        __syncthreads();
        float v = 0.0f;
#pragma unroll
        for (int w = 0; w < LT_QWARPS; w++) v += red[w][threadIdx.x];
        const int64_t col = c_base + threadIdx.x;
        if (col < in) {
            if (final_out)
                put_out(dx + n * lddx + col, v, beta);
            else
                part[((int64_t)blockIdx.y * NT + n) * in + col] = v;
        }
        __syncthreads();
    }
}

// dx (N, in) = the sum over splits of part (splits, N, in) (+ beta dx), in split order.
template <class TO>
__global__ void __launch_bounds__(LT_QTHREADS)
    sum_splits_kernel(const float *__restrict__ part, int64_t splits, int64_t N, int64_t in,
                      TO *__restrict__ dx, int64_t lddx, float beta) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N * in;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = 0.0f;
        for (int64_t s = 0; s < splits; s++) v += part[s * N * in + i];
        put_out(dx + (i / in) * lddx + i % in, v, beta);
    }
}

static int gemv_backward(lt_cuda_context *c, const qdev &d, int mode, const mat2 &dy,
                         const mat2 &dx, float beta) {
    const int dev = c->device;
    const int64_t N = dy.rows, out = d.rows, in = d.cols;
    const int64_t tiles = (in + 255) / 256;
    // enough blocks for ~4 per SM; each split keeps >= 64 rows (8 per warp)
    const int64_t want = 4LL * c->prop.multiProcessorCount;
    int64_t splits = (want + tiles - 1) / tiles, max_splits = (out + 63) / 64;
    if (splits > max_splits) splits = max_splits;
    if (splits > 65535) splits = 65535;
    if (splits < 1) splits = 1;
    const int64_t rows_per = (out + splits - 1) / splits;
    splits = (out + rows_per - 1) / rows_per;
    const int align = mode == DQ_4BIT ? 4 : 8;
    const int fast = in % 8 == 0 && ((uintptr_t)d.packed % align) == 0;
    const int final_out = splits == 1;
    float *part = NULL;
    if (!final_out) LT_TRY(lt_cuda_alloc((void **)&part, splits * N * in * 4, dev));
    const dim3 grid((unsigned)tiles, (unsigned)splits);
    const bool of32 = dx.dtype == LT_DTYPE_F32;
    int st = LT_OK;
    // the lambda-free dispatch: TG from dy, TO f32 or TG, MODE from the state
#define LT_BWD_LAUNCH(TG, TO, MODE_)                                                       \
    gemv_bwd_kernel<NT, MODE_, TG, TO><<<grid, LT_QTHREADS, 0, c->stream>>>(               \
        d, (const TG *)dy.p, dy.ld, rows_per, (TO *)dx.p, dx.ld, part, beta, final_out, fast)
    switch (dy.dtype) {
    case LT_DTYPE_F32:
        LT_NT_SWITCH(N, NT, {
            if (mode == DQ_4BIT)
                LT_BWD_LAUNCH(float, float, DQ_4BIT);
            else
                LT_BWD_LAUNCH(float, float, DQ_INT8);
        });
        break;
    case LT_DTYPE_BF16:
        LT_NT_SWITCH(N, NT, {
            if (mode == DQ_4BIT) {
                if (of32)
                    LT_BWD_LAUNCH(__nv_bfloat16, float, DQ_4BIT);
                else
                    LT_BWD_LAUNCH(__nv_bfloat16, __nv_bfloat16, DQ_4BIT);
            } else {
                if (of32)
                    LT_BWD_LAUNCH(__nv_bfloat16, float, DQ_INT8);
                else
                    LT_BWD_LAUNCH(__nv_bfloat16, __nv_bfloat16, DQ_INT8);
            }
        });
        break;
    case LT_DTYPE_F16:
        LT_NT_SWITCH(N, NT, {
            if (mode == DQ_4BIT) {
                if (of32)
                    LT_BWD_LAUNCH(__half, float, DQ_4BIT);
                else
                    LT_BWD_LAUNCH(__half, __half, DQ_4BIT);
            } else {
                if (of32)
                    LT_BWD_LAUNCH(__half, float, DQ_INT8);
                else
                    LT_BWD_LAUNCH(__half, __half, DQ_INT8);
            }
        });
        break;
    default:
        st = lt_fail(LT_ERR_DTYPE, "quant_linear_backward: dy dtype %d on CUDA", dy.dtype);
    }
#undef LT_BWD_LAUNCH
    if (st == LT_OK) st = launch_status("gemv_bwd_kernel");
    if (st == LT_OK && !final_out) {
        const unsigned g = grid_for(N * in, LT_QTHREADS);
        if (of32)
            sum_splits_kernel<float><<<g, LT_QTHREADS, 0, c->stream>>>(part, splits, N, in,
                                                                       (float *)dx.p, dx.ld, beta);
        else if (dx.dtype == LT_DTYPE_BF16)
            sum_splits_kernel<__nv_bfloat16><<<g, LT_QTHREADS, 0, c->stream>>>(
                part, splits, N, in, (__nv_bfloat16 *)dx.p, dx.ld, beta);
        else
            sum_splits_kernel<__half><<<g, LT_QTHREADS, 0, c->stream>>>(
                part, splits, N, in, (__half *)dx.p, dx.ld, beta);
        st = launch_status("sum_splits_kernel");
    }
    lt_cuda_free(part, dev);
    return st;
}

// ---- banded GEMM paths ---------------------------------------------------------------------------

// y (N, out) = x (N, in) @ W^T (+ beta y): bands of W's rows dequantized to x's dtype.
static int banded_forward(lt_cuda_context *c, const qdev &d, const mat2 &x, const mat2 &y,
                          float beta) {
    const int dev = c->device, esz = lt_dtype_size(x.dtype), ysz = lt_dtype_size(y.dtype);
    const int64_t out = d.rows, in = d.cols;
    const int64_t R = band_size(in, esz, out, LT_QBAND_BYTES);
    void *band = NULL;
    LT_TRY(lt_cuda_alloc(&band, R * in * esz, dev));
    int st = LT_OK;
    for (int64_t r0 = 0; r0 < out && st == LT_OK; r0 += R) {
        const int64_t rr = out - r0 < R ? out - r0 : R;
        st = dequant_tile(c, d, DQ_4BIT, r0, rr, 0, in, band, x.dtype, in);
        if (st != LT_OK) break;
        // y[:, r0:r0+rr] (N, rr) = x (N, in) @ band^T, band stored (rr, in)
        lt_gemm_args g;
        memset(&g, 0, sizeof g);
        g.trans_a = 0;
        g.trans_b = 1;
        g.M = x.rows;
        g.N = rr;
        g.K = in;
        g.alpha = 1.0f;
        g.beta = beta;
        g.A = x.p;
        g.lda = x.ld;
        g.B = band;
        g.ldb = in;
        g.C = (char *)y.p + r0 * ysz;
        g.ldc = y.ld;
        g.ab_dtype = x.dtype;
        g.c_dtype = y.dtype;
        g.batch = 1;
        st = lt_cuda_gemm(c, &g);
    }
    lt_cuda_free(band, dev);
    return st;
}

// dx (N, in) = dy (N, out) @ W (+ beta dx): bands of W's columns (out, cc) dequantized to
// dy's dtype, each giving dx[:, c0 : c0 + cc] whole.
static int banded_backward(lt_cuda_context *c, const qdev &d, int mode, const mat2 &dy,
                           const mat2 &dx, float beta) {
    const int dev = c->device, esz = lt_dtype_size(dy.dtype), osz = lt_dtype_size(dx.dtype);
    const int64_t out = d.rows, in = d.cols;
    const int64_t CC = band_size(out, esz, in, LT_QBAND_BYTES);
    void *band = NULL;
    LT_TRY(lt_cuda_alloc(&band, CC * out * esz, dev));
    int st = LT_OK;
    for (int64_t c0 = 0; c0 < in && st == LT_OK; c0 += CC) {
        const int64_t cc = in - c0 < CC ? in - c0 : CC;
        st = dequant_tile(c, d, mode, 0, out, c0, cc, band, dy.dtype, cc);
        if (st != LT_OK) break;
        // dx[:, c0:c0+cc] (N, cc) = dy (N, out) @ band (out, cc)
        lt_gemm_args g;
        memset(&g, 0, sizeof g);
        g.M = dy.rows;
        g.N = cc;
        g.K = out;
        g.alpha = 1.0f;
        g.beta = beta;
        g.A = dy.p;
        g.lda = dy.ld;
        g.B = band;
        g.ldb = cc;
        g.C = (char *)dx.p + c0 * osz;
        g.ldc = dx.ld;
        g.ab_dtype = dy.dtype;
        g.c_dtype = dx.dtype;
        g.batch = 1;
        st = lt_cuda_gemm(c, &g);
    }
    lt_cuda_free(band, dev);
    return st;
}

// ---- int8: LLM.int8's mixed decomposition ----------------------------------------------------------

// flags[j] = 1 where some |x[i, j]| >= thr; block (bx, by) scans columns [256 bx, + 256) of
// rows [by rows_per, + rows_per). Every writer writes 1: the result does not depend on order.
template <class TX>
__global__ void __launch_bounds__(LT_QTHREADS)
    int8_outlier_kernel(const TX *__restrict__ x, int64_t N, int64_t in, int64_t ldx, float thr,
                        int64_t rows_per, int *__restrict__ flags) {
    const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= in) return;
    const int64_t i0 = (int64_t)blockIdx.y * rows_per;
    const int64_t i1 = i0 + rows_per < N ? i0 + rows_per : N;
    for (int64_t i = i0; i < i1; i++)
        if (fabsf(lt_to_f32(x[i * ldx + j])) >= thr) {
            flags[j] = 1;
            return;
        }
}

template <class TQ> __device__ __forceinline__ TQ int8_value(float v);
template <> __device__ __forceinline__ int8_t int8_value<int8_t>(float v) { return (int8_t)v; }
template <> __device__ __forceinline__ __nv_bfloat16 int8_value<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v); // integers up to 127: exact
}

// One block per row of x (grid-stride): sx = max |x| over the values below thr (all values
// when thr <= 0), xq = round-half-even(x * 127 / sx) with 0 in outlier columns, and xo the
// outlier columns as they are: the CPU's forward_int8 step by step.
template <class TX, class TQ>
__global__ void __launch_bounds__(LT_QTHREADS)
    int8_xprep_kernel(const TX *__restrict__ x, int64_t N, int64_t in, int64_t ldx, float thr,
                      const int *__restrict__ flags, const int *__restrict__ cols, int n_out,
                      TQ *__restrict__ xq, float *__restrict__ sx, float *__restrict__ xo) {
    __shared__ float red[32];
    for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
        const TX *xr = x + i * ldx;
        float m = 0.0f;
        for (int64_t j = threadIdx.x; j < in; j += blockDim.x) {
            const float a = fabsf(lt_to_f32(xr[j]));
            if (!(thr > 0.0f) || a < thr) m = fmaxf(m, a);
        }
        m = lt_block_max(m, red);
        if (threadIdx.x == 0) sx[i] = m;
        const float scale = m > 0.0f ? 127.0f / m : 0.0f;
        const bool exact = isfinite(scale);
        for (int64_t j = threadIdx.x; j < in; j += blockDim.x) {
            const float xv = lt_to_f32(xr[j]);
            float v = m > 0.0f ? (exact ? rintf(xv * scale) : rintf(xv / m * 127.0f)) : 0.0f;
            if (flags && flags[j]) v = 0.0f;
            xq[i * in + j] = int8_value<TQ>(v);
        }
        for (int k = threadIdx.x; k < n_out; k += blockDim.x)
            xo[i * n_out + k] = lt_to_f32(xr[cols[k]]);
    }
}

// y[n, o] = isum * (sx[n] sw[o]) / 127^2 (+ beta y) + sum_k xo[n, k] * (c[o, cols[k]] * sw[o] / 127)
template <class TY>
__device__ __forceinline__ void int8_finish(TY *p, float isum, int64_t n, int64_t o,
                                            const float *sx, const float *sw,
                                            const int8_t *codes, int64_t in, const int *cols,
                                            const float *xo, int n_out, float beta) {
    const float v = isum * (sx[n] * sw[o]) * (1.0f / 16129.0f);
    float t = beta == 0.0f ? v : v + beta * lt_to_f32(*p);
    if (n_out > 0) {
        const float s = sw[o] * (1.0f / 127.0f);
        float f = 0.0f;
        for (int k = 0; k < n_out; k++)
            f = fmaf(xo[n * n_out + k], (float)codes[o * in + cols[k]] * s, f);
        t += f;
    }
    *p = lt_from_f32<TY>(t);
}

// The int8 GEMV: exact int32 sums of int8 products (dp4a), 16 codes per lane per load when
// in % 16 == 0 and both operands are 16-byte aligned; the outlier columns per output row.
template <int NT, int R, class TY>
__global__ void __launch_bounds__(LT_QTHREADS)
    gemv8_fwd_kernel(const int8_t *__restrict__ codes, const float *__restrict__ sw, int64_t out,
                     int64_t in, const int8_t *__restrict__ xq, const float *__restrict__ sx,
                     const int *__restrict__ cols, const float *__restrict__ xo, int n_out,
                     TY *__restrict__ y, int64_t ldy, float beta, int fast) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t o0 = ((int64_t)blockIdx.x * LT_QWARPS + warp) * R;
    if (o0 >= out) return;
    int iacc[R][NT];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int n = 0; n < NT; n++) iacc[r][n] = 0;
    if (fast) {
        for (int64_t k = (int64_t)lane * 16; k < in; k += 32 * 16) {
            int4 cw[R];
#pragma unroll
            for (int r = 0; r < R; r++)
                cw[r] = o0 + r < out ? __ldg((const int4 *)(codes + (o0 + r) * in + k))
                                     : make_int4(0, 0, 0, 0);
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const int4 xv = __ldg((const int4 *)(xq + n * in + k));
#pragma unroll
                for (int r = 0; r < R; r++) {
                    int a = iacc[r][n];
                    a = __dp4a(cw[r].x, xv.x, a);
                    a = __dp4a(cw[r].y, xv.y, a);
                    a = __dp4a(cw[r].z, xv.z, a);
                    a = __dp4a(cw[r].w, xv.w, a);
                    iacc[r][n] = a;
                }
            }
        }
    } else {
        for (int64_t k = lane; k < in; k += 32) {
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const int xv = xq[n * in + k];
#pragma unroll
                for (int r = 0; r < R; r++)
                    if (o0 + r < out) iacc[r][n] += (int)codes[(o0 + r) * in + k] * xv;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int n = 0; n < NT; n++) {
            const int isum = warp_sum_int(iacc[r][n]);
            if (lane == 0 && o0 + r < out)
                int8_finish(y + n * ldy + o0 + r, (float)isum, n, o0 + r, sx, sw, codes, in, cols,
                            xo, n_out, beta);
        }
}

// The banded int8 path's epilogue: acc (mm, rr) f32 holds rows [m0, +mm) x weight rows
// [r0, +rr) of the integer products.
template <class TY>
__global__ void __launch_bounds__(LT_QTHREADS)
    int8_epilogue_kernel(const float *__restrict__ acc, int64_t mm, int64_t rr, int64_t m0,
                         int64_t r0, const float *__restrict__ sx, const float *__restrict__ sw,
                         const int8_t *__restrict__ codes, int64_t in,
                         const int *__restrict__ cols, const float *__restrict__ xo, int n_out,
                         TY *__restrict__ y, int64_t ldy, float beta) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < mm * rr;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t a = i / rr, j = i - a * rr, n = m0 + a, o = r0 + j;
        int8_finish(y + n * ldy + o, acc[i], n, o, sx, sw, codes, in, cols, xo, n_out, beta);
    }
}

template <class TY>
static void launch_int8_epilogue(lt_cuda_context *c, const float *acc, int64_t mm, int64_t rr,
                                 int64_t m0, int64_t r0, const float *sx, const qdev &d,
                                 const int *cols, const float *xo, int n_out, const mat2 &y,
                                 float beta) {
    int8_epilogue_kernel<TY><<<grid_for(mm * rr, LT_QTHREADS), LT_QTHREADS, 0, c->stream>>>(
        acc, mm, rr, m0, r0, sx, d.absmax, (const int8_t *)d.packed, d.cols, cols, xo, n_out,
        (TY *)y.p, y.ld, beta);
}

template <int NT, class TY>
static void launch_gemv8(lt_cuda_context *c, unsigned grid, const qdev &d, const int8_t *xq,
                         const float *sx, const int *cols, const float *xo, int n_out,
                         const mat2 &y, float beta, int fast) {
    gemv8_fwd_kernel<NT, gemv_rows<NT>::R, TY><<<grid, LT_QTHREADS, 0, c->stream>>>(
        (const int8_t *)d.packed, d.absmax, d.rows, d.cols, xq, sx, cols, xo, n_out, (TY *)y.p,
        y.ld, beta, fast);
}

static int int8_forward(lt_cuda_context *c, const qdev &d, const mat2 &x, const mat2 &y,
                        float beta, float thr) {
    const char *op = "quant_linear_forward";
    const int dev = c->device;
    const int64_t N = x.rows, in = d.cols, out = d.rows;
    if (in > INT32_MAX)
        return lt_fail(LT_ERR_RANGE, "%s: an int8 weight with %lld columns is beyond the CUDA "
                                     "kernel's 32-bit column indices",
                       op, (long long)in);
    int st = LT_OK, n_out = 0;
    int *flags = NULL, *cols = NULL, *flags_h = NULL, *cols_h = NULL;
    float *sx = NULL, *xo = NULL, *acc = NULL;
    void *xq = NULL, *band = NULL;
    const bool gemv = N <= LT_QGEMV_MAX_ROWS && in <= LT_QINT8_GEMV_MAX_IN;

    // outlier columns: flags on the device, compacted on the host (their count sizes xo)
    if (thr > 0.0f) {
        st = lt_cuda_alloc((void **)&flags, in * 4, dev);
        if (st == LT_OK)
            st = cuda_status(cudaMemsetAsync(flags, 0, (size_t)in * 4, c->stream), op);
        if (st == LT_OK) {
            int64_t ychunks = (N + 63) / 64;
            if (ychunks > 1024) ychunks = 1024;
            const int64_t rows_per = (N + ychunks - 1) / ychunks;
            ychunks = (N + rows_per - 1) / rows_per;
            const dim3 grid((unsigned)((in + LT_QTHREADS - 1) / LT_QTHREADS), (unsigned)ychunks);
            LT_FLOAT_SWITCH(x.dtype, TX, {
                int8_outlier_kernel<TX><<<grid, LT_QTHREADS, 0, c->stream>>>(
                    (const TX *)x.p, N, in, x.ld, thr, rows_per, flags);
            });
            st = launch_status("int8_outlier_kernel");
        }
        if (st == LT_OK && !(flags_h = (int *)malloc((size_t)in * 4)))
            st = lt_fail(LT_ERR_NOMEM, "%s: no host memory for %lld column flags", op,
                         (long long)in);
        if (st == LT_OK)
            st = cuda_status(cudaMemcpyAsync(flags_h, flags, (size_t)in * 4,
                                             cudaMemcpyDeviceToHost, c->stream),
                             op);
        if (st == LT_OK) st = cuda_status(cudaStreamSynchronize(c->stream), op);
        if (st == LT_OK) {
            for (int64_t j = 0; j < in; j++) n_out += flags_h[j] != 0;
            if (n_out > 0) {
                cols_h = (int *)malloc((size_t)n_out * 4);
                if (!cols_h) st = lt_fail(LT_ERR_NOMEM, "%s: no host memory", op);
                for (int64_t j = 0, k = 0; cols_h && j < in; j++)
                    if (flags_h[j]) cols_h[k++] = (int)j;
                if (st == LT_OK) st = lt_cuda_alloc((void **)&cols, (int64_t)n_out * 4, dev);
                if (st == LT_OK)
                    st = cuda_status(cudaMemcpyAsync(cols, cols_h, (size_t)n_out * 4,
                                                     cudaMemcpyHostToDevice, c->stream),
                                     op);
            }
        }
    }

    // x -> xq (int8 for the GEMV, bf16 for the GEMM), sx, xo
    if (st == LT_OK) st = lt_cuda_alloc((void **)&sx, N * 4, dev);
    if (st == LT_OK && n_out > 0) st = lt_cuda_alloc((void **)&xo, N * n_out * 4, dev);
    if (st == LT_OK) st = lt_cuda_alloc(&xq, N * in * (gemv ? 1 : 2), dev);
    if (st == LT_OK) {
        const unsigned grid = grid_for(N, 1);
        LT_FLOAT_SWITCH(x.dtype, TX, {
            if (gemv)
                int8_xprep_kernel<TX, int8_t><<<grid, LT_QTHREADS, 0, c->stream>>>(
                    (const TX *)x.p, N, in, x.ld, thr, flags, cols, n_out, (int8_t *)xq, sx, xo);
            else
                int8_xprep_kernel<TX, __nv_bfloat16><<<grid, LT_QTHREADS, 0, c->stream>>>(
                    (const TX *)x.p, N, in, x.ld, thr, flags, cols, n_out, (__nv_bfloat16 *)xq,
                    sx, xo);
        });
        st = launch_status("int8_xprep_kernel");
    }

    unsigned ggrid = 1;
    if (st == LT_OK && gemv) st = gemv_blocks(out, N <= 2 ? 2 : 4, &ggrid);
    if (st == LT_OK && gemv) {
        const int fast = in % 16 == 0 && aligned16(d.packed) && aligned16(xq);
        const int ydt = y.dtype;
        const int8_t *q8 = (const int8_t *)xq;
        LT_NT_SWITCH(N, NT, {
            if (ydt == LT_DTYPE_F32)
                launch_gemv8<NT, float>(c, ggrid, d, q8, sx, cols, xo, n_out, y, beta, fast);
            else if (ydt == LT_DTYPE_BF16)
                launch_gemv8<NT, __nv_bfloat16>(c, ggrid, d, q8, sx, cols, xo, n_out, y, beta,
                                                fast);
            else
                launch_gemv8<NT, __half>(c, ggrid, d, q8, sx, cols, xo, n_out, y, beta, fast);
        });
        st = launch_status("gemv8_fwd_kernel");
    } else if (st == LT_OK) {
        // bands of raw codes (R, in) bf16 and the products acc (mc, R) f32: half the budget
        // each (the CPU's forward_int8 splits its panels the same way)
        const int64_t R = band_size(in, 2, out, LT_QBAND_BYTES / 2);
        int64_t mc = (LT_QBAND_BYTES / 2) / (R * 4);
        if (mc < 16) mc = 16;
        if (mc > N) mc = N;
        st = lt_cuda_alloc(&band, R * in * 2, dev);
        if (st == LT_OK) st = lt_cuda_alloc((void **)&acc, mc * R * 4, dev);
        for (int64_t r0 = 0; r0 < out && st == LT_OK; r0 += R) {
            const int64_t rr = out - r0 < R ? out - r0 : R;
            st = dequant_tile(c, d, DQ_INT8_RAW, r0, rr, 0, in, band, LT_DTYPE_BF16, in);
            for (int64_t m0 = 0; m0 < N && st == LT_OK; m0 += mc) {
                const int64_t mm = N - m0 < mc ? N - m0 : mc;
                // acc (mm, rr) = xq[m0:m0+mm] (mm, in) @ band^T: sums of int8 products
                lt_gemm_args g;
                memset(&g, 0, sizeof g);
                g.trans_b = 1;
                g.M = mm;
                g.N = rr;
                g.K = in;
                g.alpha = 1.0f;
                g.beta = 0.0f;
                g.A = (const __nv_bfloat16 *)xq + m0 * in;
                g.lda = in;
                g.B = band;
                g.ldb = in;
                g.C = acc;
                g.ldc = rr;
                g.ab_dtype = LT_DTYPE_BF16;
                g.c_dtype = LT_DTYPE_F32;
                g.batch = 1;
                st = lt_cuda_gemm(c, &g);
                if (st != LT_OK) break;
                if (y.dtype == LT_DTYPE_F32)
                    launch_int8_epilogue<float>(c, acc, mm, rr, m0, r0, sx, d, cols, xo, n_out, y,
                                                beta);
                else if (y.dtype == LT_DTYPE_BF16)
                    launch_int8_epilogue<__nv_bfloat16>(c, acc, mm, rr, m0, r0, sx, d, cols, xo,
                                                        n_out, y, beta);
                else
                    launch_int8_epilogue<__half>(c, acc, mm, rr, m0, r0, sx, d, cols, xo, n_out,
                                                 y, beta);
                st = launch_status("int8_epilogue_kernel");
            }
        }
    }
    lt_cuda_free(flags, dev);
    lt_cuda_free(cols, dev);
    lt_cuda_free(sx, dev);
    lt_cuda_free(xo, dev);
    lt_cuda_free(xq, dev);
    lt_cuda_free(band, dev);
    lt_cuda_free(acc, dev);
    free(flags_h);
    free(cols_h);
    return st;
}

// ---- entry points ---------------------------------------------------------------------------------

// The output dtype the GEMM can write: f32 or the input's.
static int check_out_dtype(const lt_tensor *out, const lt_tensor *in, const char *op,
                           const char *out_name, const char *in_name) {
    if (out->dtype_id == LT_DTYPE_F32 || out->dtype_id == in->dtype_id) return LT_OK;
    return lt_fail(LT_ERR_DTYPE, "%s: on CUDA %s must be f32 or %s's dtype (%s), got %s", op,
                   out_name, in_name, lt_dtype_info(in->dtype_id)->name,
                   lt_dtype_info(out->dtype_id)->name);
}

extern "C" int lt_cuda_quant_linear_forward(lt_tensor *y, const lt_tensor *x,
                                            const lt_quant_state *w, float beta,
                                            float outlier_threshold) {
    const char *op = "quant_linear_forward";
    LT_TRY(check_out_dtype(y, x, op, "y", "x"));
    LT_CUDA_CTX(c, lt_device_of(y));
    const qdev d = qdev_of(w);
    mat2 ym, xm;
    lt_tensor keep = {};
    LT_TRY(linear_views(&ym, &xm, &keep, y, x, d.rows, d.cols, op, "y"));
    int st = LT_OK;
    if (xm.rows == 0 || d.rows == 0)
        st = LT_OK;
    else if (d.cols == 0)
        st = scale_rows(c, ym, beta);
    else if (w->type == LT_QUANT_INT8)
        st = int8_forward(c, d, xm, ym, beta, outlier_threshold);
    else if (xm.rows <= LT_QGEMV_MAX_ROWS)
        st = gemv4_forward(c, d, xm, ym, beta);
    else
        st = banded_forward(c, d, xm, ym, beta);
    lt_tensor_release(&keep); // the stream orders the kernels' reads before any reuse
    return st;
}

extern "C" int lt_cuda_quant_linear_backward(lt_tensor *dx, const lt_tensor *dy,
                                             const lt_quant_state *w, float beta) {
    const char *op = "quant_linear_backward";
    LT_TRY(check_out_dtype(dx, dy, op, "dx", "dy"));
    LT_CUDA_CTX(c, lt_device_of(dx));
    const qdev d = qdev_of(w);
    mat2 dxm, dym;
    lt_tensor keep = {};
    LT_TRY(linear_views(&dxm, &dym, &keep, dx, dy, d.cols, d.rows, op, "dx"));
    const int mode = dequant_mode(w);
    int st = LT_OK;
    if (dym.rows == 0 || d.cols == 0)
        st = LT_OK;
    else if (d.rows == 0)
        st = scale_rows(c, dxm, beta);
    else if (dym.rows <= LT_QGEMV_MAX_ROWS)
        st = gemv_backward(c, d, mode, dym, dxm, beta);
    else
        st = banded_backward(c, d, mode, dym, dxm, beta);
    lt_tensor_release(&keep);
    return st;
}
