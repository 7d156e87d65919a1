// rope.cu - the CUDA side of src/ops/rope.c: rotary position embeddings (Hugging Face's
// Llama convention, rotate_half) and the cos/sin table.
//
// For head dim D, half = D / 2 and pair index i < half, elements i and i + half of each head
// rotate together by the angle of table row p (p = positions[b, t], positions[t], or t):
//   y_i        = x_i cos - x_{i+half} sn        sn = sign * sin  (sign -1: backward, the
//   y_{i+half} = x_{i+half} cos + x_i sn                          inverse rotation)
// x, out (B, T, H, D) with unit stride in D and any other strides, f32/bf16/f16 each (the
// CPU too, through f32 twins); cos, sin (P, half) f32 contiguous; positions (T) or (B, T) i32/i64.
// The expressions are the CPU's, in f32.
//
// Positions outside [0, P) are an error, as on the CPU, reported before anything is
// written: a small kernel records the lowest bad index (atomicMin) and the host reads it
// back (one stream sync per call with positions; none without).
//
// Launch: a block of 128 threads per (b, t) position, grid-stride: the table row is fetched
// once per position and shared by all H heads through L1; the threads take (head, group of
// W pairs) units, W = 8 for bf16/f16 or 4 for f32 with 16-byte loads and stores when x and
// out share a dtype and every row start and half-row is 16-byte aligned, W = 1 otherwise.
//
// The table: computed on the host in f64 exactly as the CPU computes it (the same
// function on a host copy of inv_freq) and copied to the device; it is made once per
// model, so its speed does not matter and the values are bit-identical to the CPU's.
#include "common.cuh"

namespace {

struct RopeArgs {
    const char *x;
    char *y;
    int xdt, ydt;
    int64_t xs[3], ys[3]; // strides of b, t, h
    const float *cos, *sin;
    const void *pos;
    int pos64, pos_per_batch;
    int64_t B, T, H, half;
    float sign;
};

// VEC: T is x's and out's dtype and W = 16 / sizeof(T) pairs per unit; otherwise one pair
// per unit with run-time dtypes.
template <class T, bool VEC> __global__ void __launch_bounds__(128) rope_kernel(RopeArgs a) {
    constexpr int W = VEC ? 16 / sizeof(T) : 1;
    int64_t groups = a.half / W, units = a.H * groups;
    for (int64_t bt = blockIdx.x; bt < a.B * a.T; bt += gridDim.x) {
        int64_t b = bt / a.T, t = bt % a.T;
        int64_t p = a.pos ? lt_dev_load_index(a.pos, a.pos64, a.pos_per_batch ? bt : t) : t;
        const float *c = a.cos + p * a.half, *s = a.sin + p * a.half;
        int64_t xo = b * a.xs[0] + t * a.xs[1], yo = b * a.ys[0] + t * a.ys[1];
        for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
            int64_t h = u / groups, i0 = (u % groups) * W;
            int64_t xr = xo + h * a.xs[2] + i0, yr = yo + h * a.ys[2] + i0;
            if constexpr (VEC) {
                const T *x = (const T *)a.x;
                T *y = (T *)a.y;
                Pack<T> p1 = *(const Pack<T> *)(x + xr), p2 = *(const Pack<T> *)(x + xr + a.half);
                Pack<T> q1, q2;
#pragma unroll
                for (int j = 0; j < W; j++) {
                    float x1 = lt_to_f32(p1.v[j]), x2 = lt_to_f32(p2.v[j]);
                    float cv = c[i0 + j], sn = a.sign * s[i0 + j];
                    q1.v[j] = lt_from_f32<T>(x1 * cv - x2 * sn);
                    q2.v[j] = lt_from_f32<T>(x2 * cv + x1 * sn);
                }
                *(Pack<T> *)(y + yr) = q1;
                *(Pack<T> *)(y + yr + a.half) = q2;
            } else {
                float x1 = ld_any(a.x, a.xdt, xr), x2 = ld_any(a.x, a.xdt, xr + a.half);
                float cv = c[i0], sn = a.sign * s[i0];
                st_any(a.y, a.ydt, yr, x1 * cv - x2 * sn);
                st_any(a.y, a.ydt, yr + a.half, x2 * cv + x1 * sn);
            }
        }
    }
}

// Fails with the CPU's message when a position is outside the table.
int check_positions(lt_cuda_context *c, const lt_tensor *positions, int64_t P, const char *op) {
    int64_t bad, p;
    LT_TRY(lt_cuda_first_out_of_range(c, positions, lt_tensor_numel(positions), P, &bad, &p, op,
                                      "positions"));
    if (bad < 0) return LT_OK;
    return lt_fail(LT_ERR_RANGE, "%s: position %lld at index %lld is outside the table of %lld positions",
                   op, (long long)p, (long long)bad, (long long)P);
}

bool al16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

int rope_run(lt_tensor *out, const lt_tensor *x, const lt_tensor *cos_t, const lt_tensor *sin_t,
             const lt_tensor *positions, float sign, const char *op) {
    LT_CUDA_CTX(c, lt_device_of(out));
    int64_t P = cos_t->sizes[0];
    if (positions) LT_TRY(check_positions(c, positions, P, op));
    RopeArgs a;
    memset(&a, 0, sizeof a);
    a.x = (const char *)lt_tensor_data(x);
    a.y = (char *)lt_tensor_data(out);
    a.xdt = x->dtype_id;
    a.ydt = out->dtype_id;
    for (int k = 0; k < 3; k++) {
        a.xs[k] = x->strides[k];
        a.ys[k] = out->strides[k];
    }
    a.cos = (const float *)lt_tensor_data(cos_t);
    a.sin = (const float *)lt_tensor_data(sin_t);
    a.B = x->sizes[0];
    a.T = x->sizes[1];
    a.H = x->sizes[2];
    a.half = x->sizes[3] / 2;
    a.sign = sign;
    if (positions) {
        a.pos = lt_tensor_data(positions);
        a.pos64 = positions->dtype_id == LT_DTYPE_I64;
        a.pos_per_batch = lt_tensor_numel(positions) == a.B * a.T;
    }
    if (a.B * a.T * a.H * a.half == 0) return LT_OK;
    int esz = lt_dtype_size(x->dtype_id);
    int64_t W = 16 / esz;
    bool vec = x->dtype_id == out->dtype_id && a.half % W == 0 && al16(a.x) && al16(a.y);
    for (int k = 0; k < 3 && vec; k++) vec = (a.xs[k] * esz) % 16 == 0 && (a.ys[k] * esz) % 16 == 0;
    unsigned blocks = lt_blocks_for(a.B * a.T, 1);
    if (vec) {
        LT_FLOAT_SWITCH(x->dtype_id, T, { rope_kernel<T, true><<<blocks, 128, 0, c->stream>>>(a); });
    } else {
        rope_kernel<float, false><<<blocks, 128, 0, c->stream>>>(a);
    }
    LT_CU_LAUNCH("rope_kernel");
    return LT_OK;
}

} // namespace

extern "C" int lt_cuda_rope_table(lt_tensor *cos_t, lt_tensor *sin_t, const lt_tensor *inv_freq) {
    // the CPU function on host copies, then one copy each way (see the header)
    lt_tensor f = {}, hc = {}, hs = {};
    int st = lt_tensor_empty(&f, LT_DTYPE_F32, inv_freq->ndim, inv_freq->sizes, LT_DEVICE_CPU, 0);
    if (st == LT_OK) st = lt_cuda_copy(&f, inv_freq);
    if (st == LT_OK) st = lt_tensor_empty(&hc, LT_DTYPE_F32, 2, cos_t->sizes, LT_DEVICE_CPU, 0);
    if (st == LT_OK) st = lt_tensor_empty(&hs, LT_DTYPE_F32, 2, sin_t->sizes, LT_DEVICE_CPU, 0);
    if (st == LT_OK) st = lt_rope_table(&hc, &hs, &f);
    if (st == LT_OK) st = lt_cuda_copy(cos_t, &hc);
    if (st == LT_OK) st = lt_cuda_copy(sin_t, &hs);
    if (st == LT_OK) st = lt_cuda_runtime_synchronize(lt_device_of(cos_t)); // hc, hs go now
    lt_tensor_release(&f);
    lt_tensor_release(&hc);
    lt_tensor_release(&hs);
    return st;
}

extern "C" int lt_cuda_rope_forward(lt_tensor *out, const lt_tensor *x, const lt_tensor *cos_t,
                                    const lt_tensor *sin_t, const lt_tensor *positions) {
    return rope_run(out, x, cos_t, sin_t, positions, 1.0f, "rope_forward");
}

extern "C" int lt_cuda_rope_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *cos_t,
                                     const lt_tensor *sin_t, const lt_tensor *positions) {
    return rope_run(dx, dout, cos_t, sin_t, positions, -1.0f, "rope_backward");
}
