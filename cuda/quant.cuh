// quant.cuh - what the quantization kernels (quant.cu) and the linear layer over quantized
// weights (quant_linear.cu) share: the quantization state as kernels see it, the code book in
// shared memory, 8-wide loads and stores of f32/bf16/f16, the tile dequantizer, launch checks.
#ifndef LT_CUDA_QUANT_CUH
#define LT_CUDA_QUANT_CUH

#include <limits.h>
#include <math.h>
#include <stdlib.h>

#include "common.cuh"

extern "C" {
#include "ops/quant_internal.h"
}

enum {
    LT_QGEMV_MAX_ROWS = 8,       // rows of x that take the fused GEMV
    LT_QTHREADS = 256,           // threads per block of every kernel here
    LT_QWARPS = LT_QTHREADS / 32,
    LT_QINT8_GEMV_MAX_IN = 131072 // int32 sums of int8 products: 127 * 127 * 131072 < 2^31
};
static const int64_t LT_QBAND_BYTES = 32LL << 20;

// ---- the state as kernels see it -----------------------------------------------------------

struct qdev {
    int type;
    int dq;
    int64_t rows, cols;
    int64_t bs;
    const uint8_t *packed; // 4-bit codes, or the int8 codes as bytes
    const float *absmax;   // plain 4-bit scales; int8 row scales
    const uint8_t *absmax_q;
    const float *absmax2;
    const float *nested_code;
    const float *code;
    float offset;
};

static inline qdev qdev_of(const lt_quant_state *q) {
    qdev d;
    memset(&d, 0, sizeof d);
    d.type = q->type;
    d.dq = q->double_quant;
    d.rows = lt_quant_rows(q);
    d.cols = lt_quant_cols(q);
    d.bs = q->blocksize > 0 ? q->blocksize : 1;
    d.packed = (const uint8_t *)lt_tensor_data(&q->packed);
    if (q->double_quant) {
        d.absmax_q = (const uint8_t *)lt_tensor_data(&q->absmax);
        d.absmax2 = (const float *)lt_tensor_data(&q->absmax2);
        d.nested_code = (const float *)lt_tensor_data(&q->nested_code);
        d.offset = (float)q->offset;
    } else {
        d.absmax = (const float *)lt_tensor_data(&q->absmax);
    }
    if (q->code.storage) d.code = (const float *)lt_tensor_data(&q->code);
    return d;
}

// The code book and the nested map in shared memory: 16 words read by a warp never conflict.
struct qsmem {
    float code[16];
    float nested[256];
};

// Every thread of the block must call this (it synchronises).
__device__ __forceinline__ void qsmem_load(qsmem &s, const qdev &d) {
    if (d.code)
        for (int i = threadIdx.x; i < 16; i += blockDim.x) s.code[i] = d.code[i];
    if (d.dq)
        for (int i = threadIdx.x; i < 256; i += blockDim.x) s.nested[i] = d.nested_code[i];
    __syncthreads();
}

// Scale of 4-bit block b: under double quantization each step rounds to f32, never fused
// (the CPU stores the product through a volatile for the same reason).
__device__ __forceinline__ float qscale(const qdev &d, const qsmem &s, int64_t b) {
    if (!d.dq) return __ldg(d.absmax + b);
    float p = __fmul_rn(s.nested[__ldg(d.absmax_q + b)],
                        __ldg(d.absmax2 + b / LT_QUANT_NESTED_BLOCKSIZE));
    return __fadd_rn(p, d.offset);
}

// The 4-bit code of flat element e: the first element of a byte is its high nibble.
__device__ __forceinline__ int nibble_at(const uint8_t *packed, int64_t e) {
    unsigned b = __ldg(packed + (e >> 1));
    return (e & 1) ? (int)(b & 15u) : (int)(b >> 4);
}

// Element j (0..7) of 8 consecutive codes held in a little-endian 32-bit word.
__device__ __forceinline__ int nibble_of_word(uint32_t word, int j) {
    return (int)((word >> ((j >> 1) * 8 + ((j & 1) ? 0 : 4))) & 15u);
}

// ---- 16-bit float bits and 8-wide loads / stores ----------------------------------------------

template <class T> struct bits16;
template <> struct bits16<__nv_bfloat16> {
    static __device__ __forceinline__ float to_f32(unsigned short b) {
        return __uint_as_float((unsigned)b << 16);
    }
    static __device__ __forceinline__ unsigned short from_f32(float x) {
        return __bfloat16_as_ushort(__float2bfloat16_rn(x));
    }
};
template <> struct bits16<__half> {
    static __device__ __forceinline__ float to_f32(unsigned short b) {
        return __half2float(__ushort_as_half(b));
    }
    static __device__ __forceinline__ unsigned short from_f32(float x) {
        return __half_as_ushort(__float2half_rn(x));
    }
};

// v[0..8) = p[0..8) as f32; vec: p is 16-byte aligned (checked by the launcher).
__device__ __forceinline__ void load8(const float *p, float *v, bool vec) {
    if (vec) {
        float4 a = __ldg((const float4 *)p), b = __ldg((const float4 *)p + 1);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
        v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = p[j];
    }
}

template <class T> __device__ __forceinline__ void load8(const T *p, float *v, bool vec) {
    if (vec) {
        uint4 u = __ldg((const uint4 *)p);
        uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[2 * j] = bits16<T>::to_f32((unsigned short)(w[j] & 0xffffu));
            v[2 * j + 1] = bits16<T>::to_f32((unsigned short)(w[j] >> 16));
        }
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = lt_to_f32(p[j]);
    }
}

// p[0..cnt) = v (cnt <= 8), with 16-byte stores when all 8 go to an aligned address.
__device__ __forceinline__ void store8(float *p, const float *v, int cnt) {
    if (cnt == 8 && ((uintptr_t)p & 15) == 0) {
        ((float4 *)p)[0] = make_float4(v[0], v[1], v[2], v[3]);
        ((float4 *)p)[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (j < cnt) p[j] = v[j]; // constant indices keep v in registers
    }
}

template <class T> __device__ __forceinline__ void store8(T *p, const float *v, int cnt) {
    if (cnt == 8 && ((uintptr_t)p & 15) == 0) {
        uint32_t w[4];
#pragma unroll
        for (int j = 0; j < 4; j++)
            w[j] = (uint32_t)bits16<T>::from_f32(v[2 * j]) |
                   ((uint32_t)bits16<T>::from_f32(v[2 * j + 1]) << 16);
        *(uint4 *)p = make_uint4(w[0], w[1], w[2], w[3]);
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (j < cnt) p[j] = lt_from_f32<T>(v[j]);
    }
}

__device__ __forceinline__ int warp_sum_int(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static inline bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

static inline int launch_status(const char *what) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return lt_fail(LT_ERR_DEVICE, "%s:%d: launching %s: %s", __FILE__, __LINE__, what,
                       cudaGetErrorString(e));
    return LT_OK;
}

static inline int cuda_status(cudaError_t e, const char *what) {
    if (e != cudaSuccess)
        return lt_fail(LT_ERR_DEVICE, "%s:%d: %s: %s", __FILE__, __LINE__, what,
                       cudaGetErrorString(e));
    return LT_OK;
}

static unsigned grid_for(int64_t items, int64_t per_block) {
    int64_t b = (items + per_block - 1) / per_block;
    if (b < 1) b = 1;
    if (b > 65535LL * 16) b = 65535LL * 16; // grid-stride loops cover the rest
    return (unsigned)b;
}

// ---- the tile dequantizer (quant.cu) ---------------------------------------------------------

enum { DQ_4BIT = 0, DQ_INT8 = 1, DQ_INT8_RAW = 2 };

// dst (R, C) with leading dim ldd, in `dtype` = W[r0 : r0 + R, c0 : c0 + C]: 4-bit code * scale,
// int8 code * (row scale / 127), or the raw int8 code (mode DQ_*), on c's stream.
int dequant_tile(lt_cuda_context *c, const qdev &d, int mode, int64_t r0, int64_t R, int64_t c0,
                 int64_t C, void *dst, int dtype, int64_t ldd);
// DQ_INT8 for int8 weights, DQ_4BIT for NF4 / FP4.
int dequant_mode(const lt_quant_state *q);

#endif
