/* adamw8_math.h - the per-element steps of the 8-bit AdamW update (lt_adamw8_step),
 * written once for the CPU kernel (src/ops/adamw.c) and the CUDA one (cuda/adamw.cu), so
 * both code a moment to the same byte for the same f32 value.
 *
 * Plain C that nvcc also compiles (as ops/elementwise_math.h): __host__ __device__ and
 * forced inline under nvcc, static inline in C. */
#ifndef LT_ADAMW8_MATH_H
#define LT_ADAMW8_MATH_H

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define LT_A8_FN static __forceinline__ __host__ __device__
#else
#define LT_A8_FN static inline
#endif

/* The index of the entry of a sorted 256-entry map (map[0] <= x <= map[255] for the values
   lt_adamw8_step codes: a moment divided by its block's absmax) nearest to x. The search
   bitsandbytes' 8-bit kernels run (quantize_2D): seven halvings from entry 127 keep the
   bracket lo < x <= hi (map[0] and map[255] stand for its open ends), then x is compared
   with the f32 midpoint between the entry the search ended on and its bracketing
   neighbour; a value exactly at that midpoint keeps the entry the search ended on. So it
   is the nearest entry by f32 midpoints, computed in 8 probes of a map that fits in shared
   memory. */
LT_A8_FN uint8_t lt_adamw8_code(const float *map, float x) {
    int pivot = 127, lo = 0, hi = 255;
    float lower = map[0], upper = map[255], val = map[127];
    for (int step = 64; step > 0; step >>= 1) {
        if (x > val) {
            lo = pivot;
            lower = val;
            pivot += step;
        } else {
            hi = pivot;
            upper = val;
            pivot -= step;
        }
        val = map[pivot];
    }
    if (x > val) return (uint8_t)(x > (upper + val) * 0.5f ? hi : pivot);
    return (uint8_t)(x < (lower + val) * 0.5f ? lo : pivot);
}

/* The first moment's code, kept on the sign of the moment m: a small negative moment whose
   nearest entry is 0.0 (or one whose nearest entry has the other sign) takes the next
   entry towards its own sign, as bitsandbytes does so a momentum never turns into zero or
   its opposite by rounding. x = m / absmax. */
LT_A8_FN uint8_t lt_adamw8_code_signed(const float *map, float x, float m) {
    int c = lt_adamw8_code(map, x);
    if (!signbit(map[c]) != !signbit(m)) {
        if (m > 0.0f && c < 255)
            c += 1;
        else if (!(m > 0.0f) && c > 0)
            c -= 1;
    }
    return (uint8_t)c;
}

#undef LT_A8_FN

#endif
