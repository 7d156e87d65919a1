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
   lt_adamw8_step codes: a moment divided by its block's absmax) nearest to x, by the search
   bitsandbytes' 8-bit kernels run (quantize_2D): seven halvings from entry 127 (up when
   x > the entry probed, else down) end on an entry p whose neighbours p - 1 and p + 1
   bracket x (for every one of the 128 paths; p - 1 is clamped at 0); then x is compared
   with the f32 midpoint between p and the neighbour on x's side, and a value exactly at
   that midpoint keeps p. So it is the nearest entry by f32 midpoints, in 8 probes of a
   map that fits in shared memory. Written with arithmetic on the comparisons, not
   branches: they go either way at random, and mispredicted branches were most of the CPU
   update's time. */
LT_A8_FN uint8_t lt_adamw8_code(const float *map, float x) {
    int p = 127;
    for (int step = 64; step > 0; step >>= 1)
        p += step * (2 * (x > map[p]) - 1);
    float val = map[p];
    int up = x > val;
    int lo = p - (p > 0);
    int nb = up * (p + 1) + (1 - up) * lo;
    float mid = (map[nb] + val) * 0.5f;
    int take = up * (x > mid) + (1 - up) * (x < mid);
    return (uint8_t)(p + take * (nb - p));
}

/* The same codes by counting: the search above returns the number of thresholds t_k below
   x, t_k = (map[k] + map[k + 1]) * 0.5f in f32 for k = 0..254 (a value between k and k + 1
   is nearest to one of them), and at a tie x == t_k the even one of k and k + 1 (the
   search always ends on an even entry: 127 plus seven odd steps). So with odd k's
   threshold lowered by one ulp, the code is #{k : x > t_k}, NaN giving 0 as the search
   does. The CPU counts in two levels of 16 compares (which compilers turn into vector
   compares, where the search's dependent loads cannot be), over thresholds made once per
   map: t[256] (t[255] = +inf, never exceeded) and coarse[j] = t[16 j + 15]. Needs a
   strictly increasing map. */
#if !defined(__CUDACC__)
typedef struct lt_adamw8_bounds {
    float t[256];
    float coarse[16];
} lt_adamw8_bounds;

static inline void lt_adamw8_bounds_init(lt_adamw8_bounds *b, const float *map) {
    for (int k = 0; k < 255; k++) {
        float t = (map[k] + map[k + 1]) * 0.5f;
        b->t[k] = (k & 1) ? nextafterf(t, -INFINITY) : t;
    }
    b->t[255] = INFINITY;
    for (int j = 0; j < 16; j++) b->coarse[j] = b->t[16 * j + 15];
}

/* `omp simd` where OpenMP is on (the core's build): without it GCC keeps these loops
   scalar inside the update's loop, at four times the time */
#if defined(_OPENMP)
#define LT_A8_SIMD_SUM _Pragma("omp simd reduction(+ : c)")
#else
#define LT_A8_SIMD_SUM
#endif

/* #{k < 16 : x > t[k]} */
static inline int lt_adamw8_count16(const float *t, float x) {
    int c = 0;
    LT_A8_SIMD_SUM
    for (int k = 0; k < 16; k++) c += x > t[k];
    return c;
}

static inline uint8_t lt_adamw8_count(const lt_adamw8_bounds *b, float x) {
    int c1 = lt_adamw8_count16(b->coarse, x);
    return (uint8_t)(16 * c1 + lt_adamw8_count16(b->t + 16 * c1, x));
}
#endif

/* The first moment's code c, kept on the sign of the moment m: a small negative moment
   whose nearest entry is 0.0 (or one whose nearest entry has the other sign) takes the next
   entry towards its own sign, as bitsandbytes does so a momentum never turns into zero or
   its opposite by rounding. */
LT_A8_FN uint8_t lt_adamw8_keep_sign(const float *map, int c, float m) {
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
