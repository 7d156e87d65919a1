// swiglu.cu - the CUDA side of src/ops/swiglu.c: the SiLU-gated unit of the Llama MLP.
//
//   forward   out (N, F) = gate / (1 + exp(-gate)) * up
//   backward  with s = 1 / (1 + exp(-gate)):
//             dgate (N, F) = dout * up * s * (1 + gate * (1 - s));  dup (N, F) = dout * gate * s
// Every operand has unit stride in F and its own row stride (the gate and up halves of a
// fused projection are strided views), f32/bf16/f16 each (the CPU too, through f32 twins); math in
// f32 with the CPU's expressions.
//
// Launch: a grid-stride loop over units, one unit per 16-byte pack (4 f32 or 8 bf16/f16 of
// a row) when all operands share a dtype, F is a multiple of the pack and every row start is
// 16-byte aligned, otherwise one element. The row of a unit is found with a 32-bit division
// when the unit count fits in 31 bits, 64-bit otherwise. 256 threads per block.
#include "common.cuh"

namespace {

// Operands: forward 0 out, 1 gate, 2 up; backward 0 dgate, 1 dup, 2 dout, 3 gate, 4 up.
struct SwiArgs {
    char *p[5];
    int dt[5];
    int64_t rs[5];
    int64_t N, F;
};

__device__ __forceinline__ void swi_fwd(float x, float u, float &o) { o = x / (1.0f + expf(-x)) * u; }

__device__ __forceinline__ void swi_bwd(float x, float y, float dy, float &dg, float &du) {
    float s = 1.0f / (1.0f + expf(-x));
    dg = dy * y * s * (1.0f + x * (1.0f - s));
    du = dy * x * s;
}

// VEC: T is every operand's dtype, one pack per unit; else one element with run-time dtypes.
template <class T, bool VEC, bool BWD, class I>
__global__ void __launch_bounds__(256) swiglu_kernel(SwiArgs a) {
    constexpr int W = VEC ? 16 / sizeof(T) : 1;
    I per_row = (I)(a.F / W);
    I units = (I)a.N * per_row;
    for (I u = blockIdx.x * (I)blockDim.x + threadIdx.x; u < units; u += (I)gridDim.x * blockDim.x) {
        int64_t r = u / per_row, col = (int64_t)(u % per_row) * W;
        if constexpr (VEC) {
            if constexpr (!BWD) {
                Pack<T> g = *(const Pack<T> *)((const T *)a.p[1] + r * a.rs[1] + col);
                Pack<T> up = *(const Pack<T> *)((const T *)a.p[2] + r * a.rs[2] + col);
                Pack<T> o;
#pragma unroll
                for (int j = 0; j < W; j++) {
                    float v;
                    swi_fwd(lt_to_f32(g.v[j]), lt_to_f32(up.v[j]), v);
                    o.v[j] = lt_from_f32<T>(v);
                }
                *(Pack<T> *)((T *)a.p[0] + r * a.rs[0] + col) = o;
            } else {
                Pack<T> d = *(const Pack<T> *)((const T *)a.p[2] + r * a.rs[2] + col);
                Pack<T> g = *(const Pack<T> *)((const T *)a.p[3] + r * a.rs[3] + col);
                Pack<T> up = *(const Pack<T> *)((const T *)a.p[4] + r * a.rs[4] + col);
                Pack<T> og, ou;
#pragma unroll
                for (int j = 0; j < W; j++) {
                    float dg, du;
                    swi_bwd(lt_to_f32(g.v[j]), lt_to_f32(up.v[j]), lt_to_f32(d.v[j]), dg, du);
                    og.v[j] = lt_from_f32<T>(dg);
                    ou.v[j] = lt_from_f32<T>(du);
                }
                *(Pack<T> *)((T *)a.p[0] + r * a.rs[0] + col) = og;
                *(Pack<T> *)((T *)a.p[1] + r * a.rs[1] + col) = ou;
            }
        } else {
            if constexpr (!BWD) {
                float v;
                swi_fwd(ld_any(a.p[1], a.dt[1], r * a.rs[1] + col),
                        ld_any(a.p[2], a.dt[2], r * a.rs[2] + col), v);
                st_any(a.p[0], a.dt[0], r * a.rs[0] + col, v);
            } else {
                float dg, du;
                swi_bwd(ld_any(a.p[3], a.dt[3], r * a.rs[3] + col),
                        ld_any(a.p[4], a.dt[4], r * a.rs[4] + col),
                        ld_any(a.p[2], a.dt[2], r * a.rs[2] + col), dg, du);
                st_any(a.p[0], a.dt[0], r * a.rs[0] + col, dg);
                st_any(a.p[1], a.dt[1], r * a.rs[1] + col, du);
            }
        }
    }
}

template <class T, bool VEC, bool BWD> void swi_launch(const SwiArgs &a, int64_t units,
                                                       cudaStream_t s) {
    unsigned blocks = lt_blocks_for(units, 256);
    if (units < (int64_t)INT32_MAX) swiglu_kernel<T, VEC, BWD, uint32_t><<<blocks, 256, 0, s>>>(a);
    else swiglu_kernel<T, VEC, BWD, int64_t><<<blocks, 256, 0, s>>>(a);
}

int swi_run(int nops, const lt_tensor *const *t, bool bwd) {
    SwiArgs a;
    memset(&a, 0, sizeof a);
    const lt_tensor *t0 = t[0];
    a.F = t0->sizes[t0->ndim - 1];
    a.N = a.F ? lt_tensor_numel(t0) / a.F : 0;
    if (a.N == 0 || a.F == 0) return LT_OK;
    LT_CUDA_CTX(c, lt_device_of(t0));
    int dt = t0->dtype_id, esz = lt_dtype_size(dt);
    int64_t W = 16 / esz;
    bool vec = a.F % W == 0;
    for (int k = 0; k < nops; k++) {
        a.p[k] = (char *)lt_tensor_data(t[k]);
        a.dt[k] = t[k]->dtype_id;
        a.rs[k] = lt_row_stride(t[k]);
        vec = vec && a.dt[k] == dt && ((uintptr_t)a.p[k] & 15u) == 0 && (a.rs[k] * esz) % 16 == 0;
    }
    if (vec) {
        int64_t units = a.N * (a.F / W);
        LT_FLOAT_SWITCH(dt, T, {
            if (bwd) swi_launch<T, true, true>(a, units, c->stream);
            else swi_launch<T, true, false>(a, units, c->stream);
        });
    } else {
        int64_t units = a.N * a.F;
        if (bwd) swi_launch<float, false, true>(a, units, c->stream);
        else swi_launch<float, false, false>(a, units, c->stream);
    }
    LT_CU_LAUNCH("swiglu_kernel");
    return LT_OK;
}

} // namespace

extern "C" int lt_cuda_swiglu_forward(lt_tensor *out, const lt_tensor *gate, const lt_tensor *up) {
    const lt_tensor *t[3] = {out, gate, up};
    return swi_run(3, t, false);
}

extern "C" int lt_cuda_swiglu_backward(lt_tensor *dgate, lt_tensor *dup, const lt_tensor *dout,
                                       const lt_tensor *gate, const lt_tensor *up) {
    const lt_tensor *t[5] = {dgate, dup, dout, gate, up};
    return swi_run(5, t, true);
}
