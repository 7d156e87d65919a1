// dropout.cu - the CUDA side of src/ops/dropout.c: inverted dropout with a stored mask, and
// token sampling from one row of logits.
//
//   forward   mask (n) u8 = (u_i >= p), out (n) = mask ? x * (1 / (1 - p)) : 0
//   backward  dx (n) = mask ? dout * (1 / (1 - p)) : 0
// x, out, dout, dx contiguous f32/bf16/f16 each (the CPU too, through f32 twins); mask
// contiguous u8.
//
// The mask is the CPU's, bit for bit, for the same generator state: element i draws lane
// i % 4 of Philox-4x32-10 block (rng->offset + i / 4) under rng->seed (src/core/rng.c), and the
// CPU's uniform value (0 + 1 * (u01(r) - 2^-32), computed in f64 and rounded to f32) is
// exactly r * 2^-32 rounded to f32, which is what is computed here; the comparison with p is
// the same f32 comparison. The generator then advances by ceil(n / 4) blocks, as the CPU's
// uniform fill does.
//
// Launch: one thread per Philox block (4 elements), grid-stride; the 4 elements move as one
// 4-element load/store (16 bytes of f32, 8 of bf16/f16) and the 4 mask bytes as one 32-bit
// store when the pointers are aligned for it, element by element otherwise. x and out may
// differ in dtype.
//
// Sampling copies the row to the host as f32 (one transfer of V values) and runs the CPU's
// lt_sample_logits on it with the same generator, so the same seed picks the same token
// exactly: the sort, top-k / top-p cut and draw are the CPU's own code. A row is at most a
// vocabulary (~0.5 MB), and generation reads one token back per step anyway.
#include "common.cuh"

namespace {

// The CPU's uniform [0, 1) draw from 32 random bits, as an f32 (exact in f64 first).
__device__ __forceinline__ float uniform01(uint32_t r) {
    return (float)((double)r * (1.0 / 4294967296.0));
}

template <class T> struct alignas(4 * sizeof(T)) Quad {
    T v[4];
};

template <class TX, class TO>
__global__ void __launch_bounds__(256) dropout_fwd_kernel(TO *out, uint8_t *mask, const TX *x,
                                                          int64_t n, float p, float keep,
                                                          uint64_t seed, uint64_t offset,
                                                          int vec) {
    int64_t blocks = (n + 3) / 4;
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < blocks;
         k += (int64_t)gridDim.x * blockDim.x) {
        uint4 r4 = lt_philox4x32_10(offset + (uint64_t)k, seed);
        uint32_t r[4] = {r4.x, r4.y, r4.z, r4.w};
        int64_t i0 = k * 4;
        if (vec && i0 + 4 <= n) {
            Quad<TX> xv = *(const Quad<TX> *)(x + i0);
            Quad<TO> ov;
            uint32_t mw = 0;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                bool m = uniform01(r[j]) >= p;
                mw |= (uint32_t)m << (8 * j); // little-endian: byte j is element i0 + j
                ov.v[j] = lt_from_f32<TO>(m ? lt_to_f32(xv.v[j]) * keep : 0.0f);
            }
            *(Quad<TO> *)(out + i0) = ov;
            *(uint32_t *)(mask + i0) = mw;
        } else {
            for (int j = 0; j < 4 && i0 + j < n; j++) {
                bool m = uniform01(r[j]) >= p;
                mask[i0 + j] = m;
                out[i0 + j] = lt_from_f32<TO>(m ? lt_to_f32(x[i0 + j]) * keep : 0.0f);
            }
        }
    }
}

template <class TD, class TX>
__global__ void __launch_bounds__(256) dropout_bwd_kernel(TX *dx, const TD *dout,
                                                          const uint8_t *mask, int64_t n,
                                                          float keep) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dx[i] = lt_from_f32<TX>(mask[i] ? lt_to_f32(dout[i]) * keep : 0.0f);
}

bool aligned(const void *p, size_t a) { return ((uintptr_t)p % a) == 0; }

} // namespace

extern "C" int lt_cuda_dropout_forward(lt_tensor *out, lt_tensor *mask, const lt_tensor *x,
                                       float p, lt_rng *rng) {
    int64_t n = lt_tensor_numel(x);
    uint64_t seed = rng->seed, offset = rng->offset;
    if (n > 0) {
        LT_CUDA_CTX(c, lt_device_of(out));
        float keep = 1.0f / (1.0f - p);
        int vec = aligned(lt_tensor_data(x), 4 * lt_dtype_size(x->dtype_id)) &&
                  aligned(lt_tensor_data(out), 4 * lt_dtype_size(out->dtype_id)) &&
                  aligned(lt_tensor_data(mask), 4);
        unsigned blocks = lt_blocks_for((n + 3) / 4, 256);
        LT_FLOAT_SWITCH(x->dtype_id, TX, {
            LT_FLOAT_SWITCH(out->dtype_id, TO, {
                dropout_fwd_kernel<TX, TO><<<blocks, 256, 0, c->stream>>>(
                    lt_dptr<TO>(out), lt_dptr<uint8_t>(mask), lt_dptr<TX>(x), n, p, keep, seed,
                    offset, vec);
            });
        });
        LT_CU_LAUNCH("dropout_fwd_kernel");
    }
    rng->offset = offset + (uint64_t)((n + 3) / 4);
    return LT_OK;
}

extern "C" int lt_cuda_dropout_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *mask,
                                        float p) {
    if (!lt_tensor_is_contiguous(mask))
        return lt_fail(LT_ERR_ARG, "dropout_backward: mask must be contiguous on CUDA");
    int64_t n = lt_tensor_numel(dout);
    if (n == 0) return LT_OK;
    LT_CUDA_CTX(c, lt_device_of(dx));
    float keep = 1.0f / (1.0f - p);
    unsigned blocks = lt_blocks_for(n, 256);
    LT_FLOAT_SWITCH(dout->dtype_id, TD, {
        LT_FLOAT_SWITCH(dx->dtype_id, TX, {
            dropout_bwd_kernel<TD, TX><<<blocks, 256, 0, c->stream>>>(
                lt_dptr<TX>(dx), lt_dptr<TD>(dout), lt_dptr<uint8_t>(mask), n, keep);
        });
    });
    LT_CU_LAUNCH("dropout_bwd_kernel");
    return LT_OK;
}

extern "C" int lt_cuda_sample_logits(const lt_tensor *logits, float temperature, int32_t top_k,
                                     float top_p, lt_rng *rng, int32_t *out) {
    // the row as f32 on the host (lt_cuda_copy converts on the device and waits), then the
    // CPU's sampler: the same code and the same generator give the same token
    lt_tensor h = {};
    LT_TRY(lt_tensor_empty(&h, LT_DTYPE_F32, logits->ndim, logits->sizes, LT_DEVICE_CPU, 0));
    int st = lt_cuda_copy(&h, logits);
    if (st == LT_OK) st = lt_sample_logits(&h, temperature, top_k, top_p, rng, out);
    lt_tensor_release(&h);
    return st;
}
