/* dnnl.h - the oneDNN bf16 GEMM behind the CPU's bf16 matmul precision (ops/dnnl.c). */
#ifndef LT_OPS_DNNL_H
#define LT_OPS_DNNL_H

#include <stdint.h>

/* c (M x N f32, leading dimension ldc) = alpha * a @ b + beta * c, with a (M x K) and b
   (K x N) bf16 row-major and contiguous; f32 accumulation. */
int lt_dnnl_gemm_bf16(float *c, int64_t ldc, const uint16_t *a, const uint16_t *b, int64_t M, int64_t N,
                      int64_t K, float alpha, float beta);

#endif
