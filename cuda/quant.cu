// quant.cu - quantized weights on the GPU: NF4 / FP4 blockwise (bitsandbytes' layout, with
// double-quantized scales) and int8 row-wise (LLM.int8): quantize and dequantize.
// The CUDA twin of src/ops/quant.c; src/lt_quant.h documents the
// layout and the rounding rules, which hold here bit for bit.
//
// What each function computes, and the buffers:
//   lt_cuda_quantize      w (rows, cols) or (n) f32/bf16/f16 on the device -> a state whose
//                         buffers are on that device: packed u8 (ceil(n/2)) or i8 (rows,
//                         cols), absmax f32 (blocks) or, double-quantized, u8 (blocks) +
//                         absmax2 f32 (blocks/256) + nested_code f32 (256), code f32 (16).
//                         The bytes equal the CPU quantizer's: the same thresholds (shared
//                         through quant_internal.h), the same 1/absmax scaling (IEEE division;
//                         nvcc's default -prec-div), no fused multiply-adds where the CPU
//                         rounds twice. The double-quantization offset is a mean summed in f64
//                         in index order: it is computed on the host by the CPU's own function
//                         from the scales read back (one blocks*4-byte transfer), because a
//                         parallel f64 sum would round differently.
//   lt_cuda_dequantize(_rows), lt_cuda_quant_absmax
//                         f32/bf16/f16 out (f32 absmax), each element code[nibble] * scale
//                         with scale = nested_code[q] * absmax2 (rounded) + offset (rounded):
//                         the CPU's bits for f32 out, and the same rounding to bf16/f16.
//
// The linear layer over these weights is in quant_linear.cu; the kernels share the state
// view, the tile dequantizer and the 8-wide loads of quant.cuh.
#include "quant.cuh"

// ---- quantization -------------------------------------------------------------------------------

// The CPU's thresholds (quant_internal.h), passed by value; fp4 rank codes 4 bits each.
struct qenc_tables {
    float nf4[15];
    float fp4[7];
    uint32_t fp4_rank_code;
};

static qenc_tables enc_tables(void) {
    qenc_tables t;
    memcpy(t.nf4, lt_quant_nf4_bounds, sizeof t.nf4);
    memcpy(t.fp4, lt_quant_fp4_bounds, sizeof t.fp4);
    t.fp4_rank_code = 0;
    for (int r = 0; r < 8; r++) t.fp4_rank_code |= (uint32_t)lt_quant_fp4_rank_code[r] << (4 * r);
    return t;
}

// x scaled into [-1, 1] as the CPU's normalise: 0 for an all-zero block, v / m where 1/m
// overflows, else v * (1/m).
__device__ __forceinline__ float normalise1(float v, float m, float inv, bool divide) {
    if (m == 0.0f) return 0.0f;
    return divide ? v / m : v * inv;
}

// Nearest code: the number of thresholds strictly below x (FP4: below |x|, plus the sign).
__device__ __forceinline__ uint32_t encode4(float x, int type, const qenc_tables &t) {
    if (type == LT_QUANT_NF4) {
        uint32_t c = 0;
#pragma unroll
        for (int k = 0; k < 15; k++) c += x > t.nf4[k];
        return c;
    }
    float a = fabsf(x);
    uint32_t r = 0;
#pragma unroll
    for (int k = 0; k < 7; k++) r += a > t.fp4[k];
    return ((t.fp4_rank_code >> (4 * r)) & 15u) | (x < 0.0f ? 8u : 0u);
}

// One warp per quantization block (32..4096 elements): max |w| over the block, then codes
// two at a time so that each lane writes whole bytes (blocks start on even elements). A
// block holding inf/NaN records its first bad element in *first_bad and writes nothing.
template <class T>
__global__ void __launch_bounds__(LT_QTHREADS)
    quantize4_kernel(const T *__restrict__ w, int64_t n, int bs, int type, qenc_tables tab,
                     uint8_t *__restrict__ packed, float *__restrict__ amax,
                     unsigned long long *first_bad) {
    const int lane = threadIdx.x & 31;
    const int64_t nb = (n + bs - 1) / bs;
    const int64_t nwarps = (int64_t)gridDim.x * LT_QWARPS;
    const uint32_t zero_code = type == LT_QUANT_NF4 ? 7u : 0u;
    for (int64_t b = (int64_t)blockIdx.x * LT_QWARPS + (threadIdx.x >> 5); b < nb; b += nwarps) {
        const int64_t lo = b * bs;
        const int len = (int)(n - lo < bs ? n - lo : bs);
        float m = 0.0f;
        unsigned long long bad = ULLONG_MAX;
        for (int j = lane; j < len; j += 32) {
            float v = lt_to_f32(w[lo + j]);
            if (!isfinite(v) && bad == ULLONG_MAX) bad = (unsigned long long)(lo + j);
            m = fmaxf(m, fabsf(v));
        }
        for (int o = 16; o > 0; o >>= 1) {
            unsigned long long other = __shfl_xor_sync(0xffffffffu, bad, o);
            bad = other < bad ? other : bad;
        }
        m = lt_warp_max(m);
        if (bad != ULLONG_MAX) {
            if (lane == 0) atomicMin(first_bad, bad);
            continue;
        }
        if (lane == 0) amax[b] = m;
        const float inv = 1.0f / m;
        const bool divide = isinf(inv);
        for (int j = 2 * lane; j < len; j += 64) {
            uint32_t c0 = encode4(normalise1(lt_to_f32(w[lo + j]), m, inv, divide), type, tab);
            uint32_t c1 = zero_code;
            if (j + 1 < len)
                c1 = encode4(normalise1(lt_to_f32(w[lo + j + 1]), m, inv, divide), type, tab);
            packed[(lo + j) >> 1] = (uint8_t)(c0 << 4 | c1);
        }
    }
}

// One block per row (grid-stride): s = max |w|, q = round-half-even(w * (127 / s)).
template <class T>
__global__ void __launch_bounds__(LT_QTHREADS)
    quantize8_kernel(const T *__restrict__ w, int64_t rows, int64_t cols,
                     int8_t *__restrict__ packed, float *__restrict__ amax,
                     unsigned long long *first_bad) {
    __shared__ float red[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const T *row = w + r * cols;
        float m = 0.0f;
        unsigned long long bad = ULLONG_MAX;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            float v = lt_to_f32(row[j]);
            if (!isfinite(v) && bad == ULLONG_MAX) bad = (unsigned long long)(r * cols + j);
            m = fmaxf(m, fabsf(v));
        }
        if (bad != ULLONG_MAX) atomicMin(first_bad, bad);
        m = lt_block_max(m, red);
        if (__syncthreads_or(bad != ULLONG_MAX)) continue; // the same for the whole block
        if (threadIdx.x == 0) amax[r] = m;
        const float scale = m > 0.0f ? 127.0f / m : 0.0f;
        const bool exact = isfinite(scale);
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            float v = lt_to_f32(row[j]);
            float t = exact ? rintf(v * scale) : rintf(v / m * 127.0f);
            t = t > 127.0f ? 127.0f : (t < -127.0f ? -127.0f : t);
            packed[r * cols + j] = (int8_t)t;
        }
    }
}

struct nested_bounds {
    float b[255];
};

// Double quantization, one block per 256 scales: v = absmax - offset, a2 = max |v|, code =
// the first k with bounds[k] >= v / a2 (the CPU's binary search, same comparisons).
__global__ void __launch_bounds__(LT_QTHREADS)
    nested_kernel(const float *__restrict__ amax, int64_t nb, float offset, nested_bounds bounds,
                  uint8_t *__restrict__ codes, float *__restrict__ a2) {
    __shared__ float sb[256];
    __shared__ float red[32];
    for (int i = threadIdx.x; i < 255; i += blockDim.x) sb[i] = bounds.b[i];
    __syncthreads();
    const int64_t nb2 = (nb + LT_QUANT_NESTED_BLOCKSIZE - 1) / LT_QUANT_NESTED_BLOCKSIZE;
    for (int64_t c = blockIdx.x; c < nb2; c += gridDim.x) {
        const int64_t i = c * LT_QUANT_NESTED_BLOCKSIZE + threadIdx.x;
        const bool here = threadIdx.x < LT_QUANT_NESTED_BLOCKSIZE && i < nb;
        const float v = here ? amax[i] - offset : 0.0f;
        const float m = lt_block_max(fabsf(v), red);
        if (threadIdx.x == 0) a2[c] = m;
        if (here) {
            const float inv = 1.0f / m;
            const float x = normalise1(v, m, inv, isinf(inv));
            int left = 0, right = 255;
            while (left < right) {
                int mid = (left + right) >> 1;
                if (sb[mid] < x)
                    left = mid + 1;
                else
                    right = mid;
            }
            codes[i] = (uint8_t)left;
        }
    }
}

static int new_device_1d(lt_tensor *t, int dtype, int64_t n, int dev) {
    return lt_tensor_empty(t, dtype, 1, &n, LT_DEVICE_CUDA, dev);
}

// s (4-bit, plain scales) -> double-quantized scales, on the device of s.
static int double_quantize_device(lt_cuda_context *c, lt_quant_state *s, int dev) {
    const int64_t nb = lt_tensor_numel(&s->absmax);
    const int64_t nb2 = (nb + LT_QUANT_NESTED_BLOCKSIZE - 1) / LT_QUANT_NESTED_BLOCKSIZE;
    float *host = (float *)malloc((size_t)(nb > 0 ? nb : 1) * sizeof(float));
    if (!host) return lt_fail(LT_ERR_NOMEM, "lt_quantize: no host memory for %lld scales",
                              (long long)nb);
    int st = LT_OK;
    if (nb > 0) {
        st = cuda_status(cudaMemcpyAsync(host, lt_tensor_data(&s->absmax), (size_t)nb * 4,
                                         cudaMemcpyDeviceToHost, c->stream),
                         "reading the scales back");
        if (st == LT_OK)
            st = cuda_status(cudaStreamSynchronize(c->stream), "reading the scales back");
    }
    const float offset = st == LT_OK ? lt_quant_absmax_mean(host, nb) : 0.0f;
    free(host);
    if (st != LT_OK) return st;
    float map[256];
    nested_bounds nbounds;
    lt_quant_dynamic_map(map);
    lt_quant_nested_bounds(nbounds.b, map);
    lt_tensor aq = {};
    st = new_device_1d(&s->absmax2, LT_DTYPE_F32, nb2, dev);
    if (st == LT_OK) st = new_device_1d(&s->nested_code, LT_DTYPE_F32, 256, dev);
    if (st == LT_OK) st = new_device_1d(&aq, LT_DTYPE_U8, nb, dev);
    if (st == LT_OK)
        st = cuda_status(cudaMemcpyAsync(lt_tensor_data(&s->nested_code), map, sizeof map,
                                         cudaMemcpyHostToDevice, c->stream),
                         "uploading the nested map");
    if (st == LT_OK && nb > 0) {
        nested_kernel<<<grid_for(nb2, 1), LT_QTHREADS, 0, c->stream>>>(
            (const float *)lt_tensor_data(&s->absmax), nb, offset, nbounds,
            (uint8_t *)lt_tensor_data(&aq), (float *)lt_tensor_data(&s->absmax2));
        st = launch_status("nested_kernel");
    }
    if (st != LT_OK) {
        lt_tensor_release(&aq);
        return st;
    }
    lt_tensor_release(&s->absmax); // the stream orders the kernel's reads before any reuse
    s->absmax = aq;
    s->offset = offset;
    s->double_quant = 1;
    s->nested_blocksize = LT_QUANT_NESTED_BLOCKSIZE;
    return LT_OK;
}

extern "C" int lt_cuda_quantize(lt_quant_state *q, const lt_tensor *w, int type, int blocksize,
                                int double_quant) {
    const int dev = lt_device_of(w);
    LT_CUDA_CTX(c, dev);
    const bool four = type == LT_QUANT_NF4 || type == LT_QUANT_FP4;
    lt_quant_state s;
    memset(&s, 0, sizeof s);
    s.type = type;
    s.blocksize = four ? blocksize : 0;
    s.orig_dtype = w->dtype_id;
    s.ndim = w->ndim;
    for (int i = 0; i < w->ndim; i++) s.sizes[i] = w->sizes[i];
    const int64_t rows = lt_quant_rows(&s), cols = lt_quant_cols(&s), n = rows * cols;

    lt_tensor wc = {};
    unsigned long long *bad_d = NULL, bad = ULLONG_MAX;
    int st = lt_tensor_contiguous(&wc, w, -1);
    if (st == LT_OK) st = lt_cuda_alloc((void **)&bad_d, sizeof *bad_d, dev);
    if (st == LT_OK)
        st = cuda_status(cudaMemsetAsync(bad_d, 0xff, sizeof *bad_d, c->stream), "lt_quantize");
    if (st == LT_OK && four) {
        const int64_t nb = (n + blocksize - 1) / blocksize;
        float book[16];
        lt_quant_codebook(type, book);
        st = new_device_1d(&s.packed, LT_DTYPE_U8, (n + 1) / 2, dev);
        if (st == LT_OK) st = new_device_1d(&s.absmax, LT_DTYPE_F32, nb, dev);
        if (st == LT_OK) st = new_device_1d(&s.code, LT_DTYPE_F32, 16, dev);
        if (st == LT_OK)
            st = cuda_status(cudaMemcpyAsync(lt_tensor_data(&s.code), book, sizeof book,
                                             cudaMemcpyHostToDevice, c->stream),
                             "uploading the code book");
        if (st == LT_OK && nb > 0) {
            const qenc_tables tab = enc_tables();
            const unsigned grid = grid_for(nb, LT_QWARPS);
            uint8_t *pk = (uint8_t *)lt_tensor_data(&s.packed);
            float *am = (float *)lt_tensor_data(&s.absmax);
            LT_FLOAT_SWITCH(wc.dtype_id, T, {
                quantize4_kernel<T><<<grid, LT_QTHREADS, 0, c->stream>>>(
                    lt_dptr<T>(&wc), n, blocksize, type, tab, pk, am, bad_d);
            });
            st = launch_status("quantize4_kernel");
        }
    } else if (st == LT_OK) {
        int64_t sizes2[2] = {rows, cols};
        st = s.ndim == 2 ? lt_tensor_empty(&s.packed, LT_DTYPE_I8, 2, sizes2, LT_DEVICE_CUDA, dev)
                         : new_device_1d(&s.packed, LT_DTYPE_I8, cols, dev);
        if (st == LT_OK) st = new_device_1d(&s.absmax, LT_DTYPE_F32, rows, dev);
        if (st == LT_OK && n > 0) {
            int8_t *pk = (int8_t *)lt_tensor_data(&s.packed);
            float *am = (float *)lt_tensor_data(&s.absmax);
            LT_FLOAT_SWITCH(wc.dtype_id, T, {
                quantize8_kernel<T><<<grid_for(rows, 1), LT_QTHREADS, 0, c->stream>>>(
                    lt_dptr<T>(&wc), rows, cols, pk, am, bad_d);
            });
            st = launch_status("quantize8_kernel");
        }
    }
    // the first non-finite element, if any (the one host wait of a plain quantization)
    if (st == LT_OK)
        st = cuda_status(cudaMemcpyAsync(&bad, bad_d, sizeof bad, cudaMemcpyDeviceToHost,
                                         c->stream),
                         "lt_quantize");
    if (st == LT_OK) st = cuda_status(cudaStreamSynchronize(c->stream), "lt_quantize");
    if (st == LT_OK && bad != ULLONG_MAX) {
        double v = 0.0;
        st = lt_tensor_get(&wc, (int64_t)bad, &v);
        if (st == LT_OK) st = lt_quant_fail_nonfinite(w, (int64_t)bad, (float)v);
    }
    if (st == LT_OK && four && double_quant) st = double_quantize_device(c, &s, dev);
    lt_cuda_free(bad_d, dev);
    lt_tensor_release(&wc);
    if (st != LT_OK) {
        lt_quant_state_release(&s);
        return st;
    }
    lt_quant_state_release(q);
    *q = s;
    return LT_OK;
}

// ---- dequantization ---------------------------------------------------------------------------

// dst (R, C) with leading dim ldd = W[r0 : r0 + R, c0 : c0 + C] in TS: 4-bit code * scale,
// int8 code * (row scale / 127), or the raw int8 code. Each thread makes 8 consecutive
// elements of a row (one 16-byte store of bf16, two of f32, when aligned).
template <class TS, int MODE>
__global__ void __launch_bounds__(LT_QTHREADS)
    dequant_tile_kernel(qdev d, int64_t r0, int64_t R, int64_t c0, int64_t C, TS *__restrict__ dst,
                        int64_t ldd) {
    __shared__ qsmem sm;
    if (MODE == DQ_4BIT) qsmem_load(sm, d);
    const int64_t per_row = (C + 7) / 8, items = R * per_row;
    for (int64_t it = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; it < items;
         it += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = it / per_row, cc = (it - r * per_row) * 8;
        const int cnt = (int)(C - cc < 8 ? C - cc : 8);
        const int64_t row = r0 + r, e = row * d.cols + c0 + cc;
        float v[8];
        if (MODE == DQ_4BIT) {
            // 8 elements span at most two blocks (blocks hold >= 32)
            const int64_t b0 = e / d.bs, b1 = (e + cnt - 1) / d.bs, next = (b0 + 1) * d.bs;
            const float s0 = qscale(d, sm, b0), s1 = b1 != b0 ? qscale(d, sm, b1) : s0;
#pragma unroll
            for (int j = 0; j < 8; j++)
                v[j] = j < cnt ? sm.code[nibble_at(d.packed, e + j)] * (e + j < next ? s0 : s1)
                               : 0.0f;
        } else {
            const int8_t *p = (const int8_t *)d.packed;
            const float s = MODE == DQ_INT8 ? __ldg(d.absmax + row) * (1.0f / 127.0f) : 1.0f;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float code = j < cnt ? (float)__ldg(p + e + j) : 0.0f;
                v[j] = MODE == DQ_INT8 ? code * s : code;
            }
        }
        store8(dst + r * ldd + cc, v, cnt);
    }
}

int dequant_tile(lt_cuda_context *c, const qdev &d, int mode, int64_t r0, int64_t R, int64_t c0,
                 int64_t C, void *dst, int dtype, int64_t ldd) {
    if (R <= 0 || C <= 0) return LT_OK;
    const unsigned grid = grid_for(R * ((C + 7) / 8), LT_QTHREADS);
    LT_FLOAT_SWITCH(dtype, TS, {
        TS *o = (TS *)dst;
        if (mode == DQ_4BIT)
            dequant_tile_kernel<TS, DQ_4BIT><<<grid, LT_QTHREADS, 0, c->stream>>>(d, r0, R, c0, C,
                                                                                 o, ldd);
        else if (mode == DQ_INT8)
            dequant_tile_kernel<TS, DQ_INT8><<<grid, LT_QTHREADS, 0, c->stream>>>(d, r0, R, c0, C,
                                                                                 o, ldd);
        else
            dequant_tile_kernel<TS, DQ_INT8_RAW><<<grid, LT_QTHREADS, 0, c->stream>>>(
                d, r0, R, c0, C, o, ldd);
    });
    return launch_status("dequant_tile_kernel");
}

int dequant_mode(const lt_quant_state *q) {
    return q->type == LT_QUANT_INT8 ? DQ_INT8 : DQ_4BIT;
}

extern "C" int lt_cuda_dequantize(lt_tensor *out, const lt_quant_state *q) {
    LT_CUDA_CTX(c, lt_device_of(out));
    const qdev d = qdev_of(q);
    return dequant_tile(c, d, dequant_mode(q), 0, d.rows, 0, d.cols, lt_tensor_data(out),
                        out->dtype_id, d.cols);
}

extern "C" int lt_cuda_dequantize_rows(lt_tensor *out, const lt_quant_state *q, int64_t row0) {
    LT_CUDA_CTX(c, lt_device_of(out));
    const qdev d = qdev_of(q);
    const int64_t R = out->ndim == 2 ? out->sizes[0] : 1;
    return dequant_tile(c, d, dequant_mode(q), row0, R, 0, d.cols, lt_tensor_data(out),
                        out->dtype_id, d.cols);
}

__global__ void __launch_bounds__(LT_QTHREADS)
    absmax_kernel(qdev d, int64_t nb, float *__restrict__ out) {
    __shared__ qsmem sm;
    qsmem_load(sm, d);
    for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b < nb;
         b += (int64_t)gridDim.x * blockDim.x)
        out[b] = qscale(d, sm, b);
}

extern "C" int lt_cuda_quant_absmax(lt_tensor *out, const lt_quant_state *q) {
    LT_CUDA_CTX(c, lt_device_of(out));
    const int64_t nb = lt_tensor_numel(out);
    if (nb == 0) return LT_OK;
    if (q->type == LT_QUANT_INT8 || !q->double_quant) {
        LT_CU(cudaMemcpyAsync(lt_tensor_data(out), lt_tensor_data(&q->absmax), (size_t)nb * 4,
                              cudaMemcpyDeviceToDevice, c->stream));
        return LT_OK;
    }
    absmax_kernel<<<grid_for(nb, LT_QTHREADS), LT_QTHREADS, 0, c->stream>>>(
        qdev_of(q), nb, (float *)lt_tensor_data(out));
    LT_CU_LAUNCH("absmax_kernel");
    return LT_OK;
}
