/* dnnl.h - the oneDNN bf16 GEMM behind the CPU's bf16 matmul precision (ops/dnnl.c). */
#ifndef LT_OPS_DNNL_H
#define LT_OPS_DNNL_H

#include <stdint.h>

#include <string.h>

/* Products below this many multiply-adds stay in f32 under the bf16 precision: converting
   and calling oneDNN costs more than they take. */
enum { LT_BF16_GEMM_MIN = 1 << 18 };

/* c (M x N f32, leading dimension ldc) = alpha * op(a) @ op(b) + beta * c, f32
   accumulation. op(a) is M x K: a row-major with leading dimension lda, or (ta) its
   transpose, a stored K x M; op(b) is K x N likewise (tb: b stored N x K). */
int lt_dnnl_gemm_bf16(float *c, int64_t ldc, const uint16_t *a, int64_t lda, int ta, const uint16_t *b,
                      int64_t ldb, int tb, int64_t M, int64_t N, int64_t K, float alpha, float beta);
/* The same with f32 operands (oneDNN's f32 kernels, where they beat sgemm: matmul.c). */
int lt_dnnl_gemm_f32(float *c, int64_t ldc, const float *a, int64_t lda, int ta, const float *b, int64_t ldb,
                     int tb, int64_t M, int64_t N, int64_t K, float alpha, float beta);
/* Whether libdnnl.so.2 loads here (loading it on the first call); sets no error. */
int lt_dnnl_available(void);

/* n floats to bf16 (round to nearest even, NaN kept NaN), in a loop the compiler vectorises. */
static inline void lt_f32_row_to_bf16(uint16_t *restrict d, const float *restrict s, int64_t n) {
    for (int64_t k = 0; k < n; k++) {
        uint32_t u;
        memcpy(&u, &s[k], 4);
        uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        uint32_t nan = (u >> 16) | 0x40u;
        d[k] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? nan : r);
    }
}

#endif
