/* elementwise_math.h - the scalar formulas of the elementwise ops and their derivatives,
 * written once for the CPU kernels (src/ops/elementwise.c) and the CUDA ones
 * (cuda/elementwise.cu), so the two compute the same expression term for term in f32.
 *
 * Plain C that nvcc also compiles: under nvcc each function is __host__ __device__ and
 * forced inline; in C it is static inline and always inlined, because the CPU kernels call
 * these with a constant op inside `omp simd` loops and rely on the switch folding away.
 *
 * Edge cases (tested in tests/c/test_elementwise.c): relu(NaN) = NaN, relu'(0) = 0,
 * abs'(0) = 0; maximum/minimum propagate NaN, their gradient goes to the operand picked and
 * a tie splits it half/half; pow's d/da is 0 where b == 0 and its d/db is 0 where a == 0 and
 * b >= 0 (the one-sided limit), NaN where a < 0. */
#ifndef LT_ELEMENTWISE_MATH_H
#define LT_ELEMENTWISE_MATH_H

#include <math.h>

#include "lt_ops.h"

#if defined(__CUDACC__)
#define LT_HOST_DEVICE __host__ __device__
#define LT_EW_INLINE static __forceinline__
#else
#define LT_HOST_DEVICE
#if defined(__GNUC__)
#define LT_EW_INLINE static inline __attribute__((always_inline))
#else
#define LT_EW_INLINE static inline
#endif
#endif

/* sqrt(2 / pi) and the cubic coefficient of the tanh approximation of GELU. */
#define LT_GELU_K 0.7978845608028654f
#define LT_GELU_C 0.044715f

LT_EW_INLINE LT_HOST_DEVICE float lt_ew_sigmoid(float x) {
    /* exp of a non-positive number only, so large |x| never overflows. */
    float e = expf(-fabsf(x));
    float s = 1.0f / (1.0f + e);
    return x >= 0.0f ? s : e * s;
}

/* f(x) of a unary op (LT_UNARY_*). */
LT_EW_INLINE LT_HOST_DEVICE float lt_ew_unary(int op, float x) {
    switch (op) {
    case LT_UNARY_NEG: return -x;
    case LT_UNARY_EXP: return expf(x);
    case LT_UNARY_LOG: return logf(x);
    case LT_UNARY_SQRT: return sqrtf(x);
    case LT_UNARY_RSQRT: return 1.0f / sqrtf(x);
    case LT_UNARY_ABS: return fabsf(x);
    case LT_UNARY_SQUARE: return x * x;
    case LT_UNARY_RECIPROCAL: return 1.0f / x;
    case LT_UNARY_SIGMOID: return lt_ew_sigmoid(x);
    case LT_UNARY_SILU: return x * lt_ew_sigmoid(x);
    case LT_UNARY_TANH: return tanhf(x);
    case LT_UNARY_RELU: return x < 0.0f ? 0.0f : x; /* NaN passes through */
    case LT_UNARY_GELU: {
        float t = tanhf(LT_GELU_K * (x + LT_GELU_C * x * x * x));
        return 0.5f * x * (1.0f + t);
    }
    case LT_UNARY_SIN: return sinf(x);
    case LT_UNARY_COS: return cosf(x);
    default: return 0.0f;
    }
}

/* d * f'(x) of a unary op. */
LT_EW_INLINE LT_HOST_DEVICE float lt_ew_unary_grad(int op, float d, float x) {
    switch (op) {
    case LT_UNARY_NEG: return -d;
    case LT_UNARY_EXP: return d * expf(x);
    case LT_UNARY_LOG: return d / x;
    case LT_UNARY_SQRT: return 0.5f * d / sqrtf(x);
    case LT_UNARY_RSQRT: {
        float r = 1.0f / sqrtf(x);
        return -0.5f * d * r * r * r;
    }
    case LT_UNARY_ABS: return x > 0.0f ? d : (x < 0.0f ? -d : 0.0f);
    case LT_UNARY_SQUARE: return 2.0f * d * x;
    case LT_UNARY_RECIPROCAL: {
        float r = 1.0f / x;
        return -d * r * r;
    }
    case LT_UNARY_SIGMOID: {
        float s = lt_ew_sigmoid(x);
        return d * s * (1.0f - s);
    }
    case LT_UNARY_SILU: {
        float s = lt_ew_sigmoid(x);
        return d * s * (1.0f + x * (1.0f - s));
    }
    case LT_UNARY_TANH: {
        float t = tanhf(x);
        return d * (1.0f - t * t);
    }
    case LT_UNARY_RELU: return x <= 0.0f ? 0.0f : d;
    case LT_UNARY_GELU: {
        float x2 = x * x;
        float t = tanhf(LT_GELU_K * (x + LT_GELU_C * x2 * x));
        float du = LT_GELU_K * (1.0f + 3.0f * LT_GELU_C * x2);
        return d * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du);
    }
    case LT_UNARY_SIN: return d * cosf(x);
    case LT_UNARY_COS: return -d * sinf(x);
    default: return 0.0f;
    }
}

/* a op b of a binary op (LT_BINARY_*). */
LT_EW_INLINE LT_HOST_DEVICE float lt_ew_binary(int op, float a, float b) {
    switch (op) {
    case LT_BINARY_ADD: return a + b;
    case LT_BINARY_SUB: return a - b;
    case LT_BINARY_MUL: return a * b;
    case LT_BINARY_DIV: return a / b;
    case LT_BINARY_MAX: return (a > b || a != a) ? a : b; /* NaN wins either side */
    case LT_BINARY_MIN: return (a < b || a != a) ? a : b;
    case LT_BINARY_POW: return powf(a, b);
    default: return 0.0f;
    }
}

/* d times the partial derivative of (a op b) by a (wrt_b = 0) or by b (wrt_b = 1). */
LT_EW_INLINE LT_HOST_DEVICE float lt_ew_binary_grad(int op, int wrt_b, float d, float a, float b) {
    switch (op) {
    case LT_BINARY_ADD: return d;
    case LT_BINARY_SUB: return wrt_b ? -d : d;
    case LT_BINARY_MUL: return wrt_b ? d * a : d * b;
    case LT_BINARY_DIV: return wrt_b ? -d * ((a / b) / b) : d / b;
    case LT_BINARY_MAX:
    case LT_BINARY_MIN: {
        /* Weight of a: 1 where the forward picked a, 1/2 at a tie (the sum stays d). */
        int a_wins = op == LT_BINARY_MAX ? (a > b || a != a) : (a < b || a != a);
        float wa = a_wins ? 1.0f : (a == b ? 0.5f : 0.0f);
        return d * (wrt_b ? 1.0f - wa : wa);
    }
    case LT_BINARY_POW:
        if (!wrt_b) return b == 0.0f ? 0.0f : d * b * powf(a, b - 1.0f);
        if (a == 0.0f && b >= 0.0f) return 0.0f;
        return d * powf(a, b) * logf(a);
    default: return 0.0f;
    }
}

#endif
