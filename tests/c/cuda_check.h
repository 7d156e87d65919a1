/* cuda_check.h - shared pieces of the C tests that compare an op's CUDA result with its CPU
 * result (tests/c/test_cuda_*.c).
 *
 * Each such test starts with cuda_require(), which exits with status 77 after printing one
 * line saying why ("skipped: built without CUDA" / "skipped: no CUDA device") when there
 * is no device; ctest shows those tests as skipped (SKIP_RETURN_CODE 77), never as passed.
 *
 * Tolerances (ARCHITECTURE.md, "How it is proven"):
 *   f32 kernels: ||gpu - cpu|| / ||cpu|| <= 1e-5 (cuda_close_f32);
 *   bf16 / f16 kernels: the error of the GPU result against the f32 CPU result on the same
 *   (rounded) inputs must be at most twice the error of the naive low-precision result,
 *   which is the CPU result rounded to the low-precision dtype (cuda_close_lowp).
 * tests/lua/test_op_table_cuda.lua holds the op table's rows to the same two rules. */
#ifndef LT_TEST_CUDA_CHECK_H
#define LT_TEST_CUDA_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "lt.h"

static void cuda_require(void) {
    int32_t n = 0;
    int st = lt_cuda_device_count(&n);
    if (st != LT_OK) {
        printf("skipped: %s\n", lt_last_error());
        exit(77);
    }
    if (n == 0) {
        printf("skipped: no CUDA device\n");
        exit(77);
    }
}

static uint64_t cuda_check_seed = 0x1234abcdULL;

/* A CPU tensor of `dtype` filled with normal(0, std) values (rounded to dtype). */
static lt_tensor cuda_randn(int dtype, int ndim, const int64_t *sizes, double std) {
    lt_tensor t = {0};
    lt_rng rng;
    lt_rng_seed(&rng, cuda_check_seed++);
    if (lt_tensor_empty(&t, dtype, ndim, sizes, LT_DEVICE_CPU, 0) != LT_OK ||
        lt_tensor_normal(&t, 0.0, std, &rng) != LT_OK) {
        fprintf(stderr, "cuda_randn: %s\n", lt_last_error());
        exit(1);
    }
    return t;
}

/* A copy of a tensor on device 0 (or on the CPU with to_cuda = 0), same dtype. */
static lt_tensor cuda_copy_to(const lt_tensor *src, int to_cuda) {
    lt_tensor t = {0};
    if (lt_tensor_empty(&t, src->dtype_id, src->ndim, src->sizes,
                        to_cuda ? LT_DEVICE_CUDA : LT_DEVICE_CPU, 0) != LT_OK ||
        lt_tensor_copy(&t, src) != LT_OK) {
        fprintf(stderr, "cuda_copy_to: %s\n", lt_last_error());
        exit(1);
    }
    return t;
}

/* An f32 CPU copy of any tensor (host or device). */
static lt_tensor cuda_host_f32(const lt_tensor *src) {
    lt_tensor t = {0};
    if (lt_tensor_empty(&t, LT_DTYPE_F32, src->ndim, src->sizes, LT_DEVICE_CPU, 0) != LT_OK ||
        lt_tensor_copy(&t, src) != LT_OK) {
        fprintf(stderr, "cuda_host_f32: %s\n", lt_last_error());
        exit(1);
    }
    return t;
}

/* ||a - b|| / max(||b||, tiny), over f32 host tensors of the same shape. */
static double cuda_rel_err(const lt_tensor *a, const lt_tensor *b) {
    int64_t n = lt_tensor_numel(a);
    const float *x = lt_tensor_data(a), *y = lt_tensor_data(b);
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)x[i] - (double)y[i];
        num += d * d;
        den += (double)y[i] * y[i];
    }
    return sqrt(num) / (den > 1e-300 ? sqrt(den) : 1.0);
}

/* f32 GPU result against the CPU one. */
static int cuda_close_f32(const char *what, const lt_tensor *gpu, const lt_tensor *cpu) {
    lt_tensor g = cuda_host_f32(gpu), c = cuda_host_f32(cpu);
    double e = cuda_rel_err(&g, &c);
    int ok = e <= 1e-5;
    if (!ok) fprintf(stderr, "%s: relative error %.3g > 1e-5\n", what, e);
    lt_tensor_release(&g);
    lt_tensor_release(&c);
    CHECK(ok);
    return ok;
}

/* A low-precision GPU result against the f32 CPU result on the same inputs: at most twice
   the error of that CPU result rounded to `dtype` (plus a floor for exact cases). */
static int cuda_close_lowp(const char *what, const lt_tensor *gpu, const lt_tensor *cpu_f32,
                           int dtype) {
    lt_tensor g = cuda_host_f32(gpu), c = cuda_host_f32(cpu_f32), r = {0}, rf = {0};
    lt_tensor_empty(&r, dtype, c.ndim, c.sizes, LT_DEVICE_CPU, 0);
    lt_tensor_copy(&r, &c);
    rf = cuda_host_f32(&r);
    double naive = cuda_rel_err(&rf, &c), e = cuda_rel_err(&g, &c);
    double bound = 2 * naive + 1e-6;
    int ok = e <= bound;
    if (!ok)
        fprintf(stderr, "%s: relative error %.3g > 2 x naive %s error %.3g\n", what, e,
                lt_dtype_info(dtype)->name, naive);
    lt_tensor_release(&g);
    lt_tensor_release(&c);
    lt_tensor_release(&r);
    lt_tensor_release(&rf);
    CHECK(ok);
    return ok;
}

#endif
