/* test_cuda_gemm.c - the CUDA GEMM (cuda/matmul.cu) against the CPU matmul, in the cases the
 * op table cannot state.
 *
 * The op table (tests/lua/op_cases.lua, run by tests/lua/test_op_table_cuda.lua) compares
 * lt_matmul and lt_matmul_backward with the CPU on contiguous operands: every trans_a x
 * trans_b layout over every M, N, K in {1, 7, 33, 257, 1000}, alpha and beta, TF32 at its
 * own tolerance, bf16/f16 inputs into f32 and low-precision outputs, strided and shared-b
 * batches. What stays here: a and b of different dtypes and the refused bf16 output
 * for them; views (a transposed view with trans flags, a step-2 slice, an output with a row
 * stride, K = 0); batch dims that do not collapse (a permuted view); gradients that
 * accumulate (beta_a, beta_b) or come one side alone, b or a shared over the batch; the
 * bias epilogue and bf16/f16 outputs of the raw GEMM (lt_cuda_gemm_device); and a refused
 * host output. f32 with TF32 off within 1e-5 relative, low precision per cuda_close_lowp.
 * The bias epilogue and the TF32 switch are reached through lt_cuda_gemm_device and
 * lt_cuda_gemm_allow_tf32, looked up at run time (they exist only in CUDA builds; this
 * test skips before the lookup otherwise). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cuda_check.h"
#include "lt.h"
#include "lt_ops.h"

/* cuda/matmul.cuh's lt_gemm_args, field for field (its size is checked by the callee). */
typedef struct {
    int trans_a, trans_b;
    int64_t M, N, K;
    float alpha, beta;
    const void *A;
    int64_t lda;
    const void *B;
    int64_t ldb;
    void *C;
    int64_t ldc;
    int ab_dtype;
    int c_dtype;
    const void *bias;
    int64_t batch, stride_a, stride_b, stride_c;
} gemm_args;

typedef int (*gemm_device_fn)(int32_t, const gemm_args *, int64_t);
typedef void (*tf32_fn)(int);

static gemm_device_fn gemm_device;
static tf32_fn set_tf32;

static lt_tensor empty_dev(int dtype, int nd, const int64_t *sizes) {
    lt_tensor t = {0};
    if (lt_tensor_empty(&t, dtype, nd, sizes, LT_DEVICE_CUDA, 0) != LT_OK) {
        fprintf(stderr, "empty_dev: %s\n", lt_last_error());
        exit(1);
    }
    return t;
}

/* A device copy of `src` converted to `dtype`. */
static lt_tensor to_dev(const lt_tensor *src, int dtype) {
    lt_tensor t = empty_dev(dtype, src->ndim, src->sizes);
    if (lt_tensor_copy(&t, src) != LT_OK) {
        fprintf(stderr, "to_dev: %s\n", lt_last_error());
        exit(1);
    }
    return t;
}

static lt_tensor clone_cpu(const lt_tensor *src) {
    lt_tensor t = {0};
    lt_tensor_empty(&t, src->dtype_id, src->ndim, src->sizes, LT_DEVICE_CPU, 0);
    lt_tensor_copy(&t, src);
    return t;
}

static int close_tol(const char *what, const lt_tensor *gpu, const lt_tensor *cpu, double tol) {
    if (tol == 1e-5) return cuda_close_f32(what, gpu, cpu); /* the f32 rule */
    lt_tensor g = cuda_host_f32(gpu), c = cuda_host_f32(cpu);
    double e = cuda_rel_err(&g, &c);
    int ok = e <= tol && e == e;
    if (!ok) fprintf(stderr, "%s: relative error %.3g > %.3g\n", what, e, tol);
    lt_tensor_release(&g);
    lt_tensor_release(&c);
    CHECK(ok);
    return ok;
}

/* a and b of different dtypes: run in f32 on the device, as the CPU converts them. */
static void test_mixed(void) {
    set_tf32(0);
    int64_t sa[2] = {33, 257}, sb[2] = {257, 7}, sc[2] = {33, 7};
    lt_tensor a = cuda_randn(LT_DTYPE_F32, 2, sa, 1.0), b = cuda_randn(LT_DTYPE_BF16, 2, sb, 1.0);
    lt_tensor cc = {0};
    lt_tensor_empty(&cc, LT_DTYPE_F32, 2, sc, LT_DEVICE_CPU, 0);
    CHECK_OK(lt_matmul(&cc, &a, &b, 0, 0, 1.0f, 0.0f));
    lt_tensor ag = to_dev(&a, LT_DTYPE_F32), bg = to_dev(&b, LT_DTYPE_BF16);
    lt_tensor cg = empty_dev(LT_DTYPE_F32, 2, sc);
    CHECK_OK(lt_matmul(&cg, &ag, &bg, 0, 0, 1.0f, 0.0f));
    close_tol("matmul f32 x bf16", &cg, &cc, 1e-5);
    /* a bf16 output needs bf16 inputs */
    lt_tensor cb = empty_dev(LT_DTYPE_BF16, 2, sc);
    CHECK_FAILS(lt_matmul(&cb, &ag, &bg, 0, 0, 1.0f, 0.0f), LT_ERR_DTYPE, "dtype of a and b");
    lt_tensor_release(&a);
    lt_tensor_release(&b);
    lt_tensor_release(&cc);
    lt_tensor_release(&ag);
    lt_tensor_release(&bg);
    lt_tensor_release(&cg);
    lt_tensor_release(&cb);
}

/* Views: a transposed view with trans flags, a step-2 slice (copied), an output whose rows
   are longer than N, K = 0. */
static void test_views(void) {
    set_tf32(0);
    int64_t sa[2] = {257, 33}, sc[2] = {33, 45}, sw[2] = {257, 80};
    lt_tensor a = cuda_randn(LT_DTYPE_F32, 2, sa, 1.0), w = cuda_randn(LT_DTYPE_F32, 2, sw, 1.0);
    lt_tensor c0 = cuda_randn(LT_DTYPE_F32, 2, sc, 1.0);
    lt_tensor ag = cuda_copy_to(&a, 1), wg = cuda_copy_to(&w, 1), cg = cuda_copy_to(&c0, 1);
    lt_tensor cc = clone_cpu(&c0);
    lt_tensor at = {0}, atg = {0}, ws = {0}, wsg = {0}, cv = {0}, cvg = {0};
    /* a^T as a view: 33 x 257, unit stride down the columns */
    CHECK_OK(lt_tensor_transpose(&at, &a, 0, 1));
    CHECK_OK(lt_tensor_transpose(&atg, &ag, 0, 1));
    /* every other column of w: 257 x 40 with no unit stride (copied once) */
    CHECK_OK(lt_tensor_slice(&ws, &w, 1, 0, 80, 2));
    CHECK_OK(lt_tensor_slice(&wsg, &wg, 1, 0, 80, 2));
    /* columns 2..41 of c: 33 x 40 with row stride 45 */
    CHECK_OK(lt_tensor_narrow(&cv, &cc, 1, 2, 40));
    CHECK_OK(lt_tensor_narrow(&cvg, &cg, 1, 2, 40));
    CHECK_OK(lt_matmul(&cv, &at, &ws, 0, 0, 1.0f, 0.5f));
    CHECK_OK(lt_matmul(&cvg, &atg, &wsg, 0, 0, 1.0f, 0.5f));
    close_tol("matmul transposed view x strided slice into a row-strided output", &cg, &cc, 1e-5);
    /* the same product through trans_a on the stored K x M */
    CHECK_OK(lt_matmul(&cv, &a, &ws, 1, 0, 1.0f, 0.0f));
    CHECK_OK(lt_matmul(&cvg, &ag, &wsg, 1, 0, 1.0f, 0.0f));
    close_tol("matmul trans_a on a stored K x M", &cg, &cc, 1e-5);

    /* K = 0: c = beta * c */
    int64_t sk[2] = {33, 0}, sk2[2] = {0, 45};
    lt_tensor z1 = empty_dev(LT_DTYPE_F32, 2, sk), z2 = empty_dev(LT_DTYPE_F32, 2, sk2);
    lt_tensor z1c = {0}, z2c = {0};
    lt_tensor_empty(&z1c, LT_DTYPE_F32, 2, sk, LT_DEVICE_CPU, 0);
    lt_tensor_empty(&z2c, LT_DTYPE_F32, 2, sk2, LT_DEVICE_CPU, 0);
    CHECK_OK(lt_matmul(&cc, &z1c, &z2c, 0, 0, 1.0f, 0.25f));
    CHECK_OK(lt_matmul(&cg, &z1, &z2, 0, 0, 1.0f, 0.25f));
    close_tol("matmul K = 0", &cg, &cc, 1e-6);

    lt_tensor *all[] = {&a, &w, &c0, &ag, &wg, &cg, &cc, &at, &atg, &ws, &wsg,
                        &cv, &cvg, &z1, &z2, &z1c, &z2c};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) lt_tensor_release(all[i]);
}

/* Batch dims that do not collapse: a stored (3, 2, M, K) viewed as (2, 3, M, K). */
static void test_batched(void) {
    set_tf32(0);
    int64_t M = 33, N = 7, K = 257;
    int64_t sp[4] = {3, 2, M, K}, sb[4] = {2, 3, K, N}, sc[4] = {2, 3, M, N};
    int32_t perm[4] = {1, 0, 2, 3};
    lt_tensor a = cuda_randn(LT_DTYPE_F32, 4, sp, 1.0), b = cuda_randn(LT_DTYPE_F32, 4, sb, 1.0);
    lt_tensor ap = {0};
    CHECK_OK(lt_tensor_permute(&ap, &a, perm));
    lt_tensor cc = {0};
    lt_tensor_empty(&cc, LT_DTYPE_F32, 4, sc, LT_DEVICE_CPU, 0);
    CHECK_OK(lt_matmul(&cc, &ap, &b, 0, 0, 1.0f, 0.0f));
    lt_tensor ag = to_dev(&a, LT_DTYPE_F32), bg = to_dev(&b, LT_DTYPE_F32), apg = {0};
    CHECK_OK(lt_tensor_permute(&apg, &ag, perm));
    lt_tensor cg = empty_dev(LT_DTYPE_F32, 4, sc);
    CHECK_OK(lt_matmul(&cg, &apg, &bg, 0, 0, 1.0f, 0.0f));
    close_tol("batched matmul over permuted batch dims", &cg, &cc, 1e-5);
    lt_tensor *all[] = {&a, &b, &ap, &cc, &ag, &bg, &apg, &cg};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) lt_tensor_release(all[i]);
}

/* da and db accumulate (beta_a, beta_b) as on the CPU. */
static void one_backward(int nda, const int64_t *sa, int ndb, const int64_t *sb, int ndc,
                         const int64_t *sc, int ta, int tb, float beta_a, float beta_b,
                         const char *what) {
    lt_tensor a = cuda_randn(LT_DTYPE_F32, nda, sa, 1.0), b = cuda_randn(LT_DTYPE_F32, ndb, sb, 1.0);
    lt_tensor dc = cuda_randn(LT_DTYPE_F32, ndc, sc, 1.0);
    lt_tensor da0 = cuda_randn(LT_DTYPE_F32, nda, sa, 1.0), db0 = cuda_randn(LT_DTYPE_F32, ndb, sb, 1.0);
    lt_tensor da = clone_cpu(&da0), db = clone_cpu(&db0);
    CHECK_OK(lt_matmul_backward(&da, &db, &dc, &a, &b, ta, tb, beta_a, beta_b));
    lt_tensor ag = to_dev(&a, LT_DTYPE_F32), bg = to_dev(&b, LT_DTYPE_F32);
    lt_tensor dcg = to_dev(&dc, LT_DTYPE_F32), dag = to_dev(&da0, LT_DTYPE_F32),
              dbg = to_dev(&db0, LT_DTYPE_F32);
    CHECK_OK(lt_matmul_backward(&dag, &dbg, &dcg, &ag, &bg, ta, tb, beta_a, beta_b));
    char w[160];
    snprintf(w, sizeof w, "%s da (ta %d tb %d)", what, ta, tb);
    close_tol(w, &dag, &da, 1e-5);
    snprintf(w, sizeof w, "%s db (ta %d tb %d)", what, ta, tb);
    close_tol(w, &dbg, &db, 1e-5);
    /* one side only */
    CHECK_OK(lt_matmul_backward(NULL, &dbg, &dcg, &ag, &bg, ta, tb, 0.0f, 0.0f));
    CHECK_OK(lt_matmul_backward(NULL, &db, &dc, &a, &b, ta, tb, 0.0f, 0.0f));
    snprintf(w, sizeof w, "%s db alone (ta %d tb %d)", what, ta, tb);
    close_tol(w, &dbg, &db, 1e-5);
    lt_tensor *all[] = {&a, &b, &dc, &da0, &db0, &da, &db, &ag, &bg, &dcg, &dag, &dbg};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) lt_tensor_release(all[i]);
}

static void test_backward(void) {
    set_tf32(0);
    int64_t M = 33, N = 257, K = 7;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int64_t sa[2] = {ta ? K : M, ta ? M : K}, sb[2] = {tb ? N : K, tb ? K : N}, sc[2] = {M, N};
            one_backward(2, sa, 2, sb, 2, sc, ta, tb, 0.0f, 1.0f, "matmul_backward 2-D");
            int64_t sa3[3] = {3, ta ? K : M, ta ? M : K}, sb3[3] = {3, tb ? N : K, tb ? K : N},
                    sc3[3] = {3, M, N};
            /* b shared over the batch: its gradient sums the batch */
            one_backward(3, sa3, 2, sb, 3, sc3, ta, tb, 1.0f, 1.0f, "matmul_backward shared b");
            one_backward(3, sa3, 3, sb3, 3, sc3, ta, tb, 0.5f, 0.0f, "matmul_backward batched");
            /* a shared over the batch */
            one_backward(2, sa, 3, sb3, 3, sc3, ta, tb, 1.0f, 0.0f, "matmul_backward shared a");
        }
}

/* The bias epilogue through the raw GEMM: row-major C (M x N) = A @ B + bias, batched. */
static void test_bias(void) {
    set_tf32(0);
    int dts[3] = {LT_DTYPE_F32, LT_DTYPE_BF16, LT_DTYPE_F16};
    for (int d = 0; d < 3; d++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                int dt = dts[d];
                int64_t B = 3, M = 33, N = 257, K = 7;
                int64_t sa[3] = {B, ta ? K : M, ta ? M : K}, sb[3] = {B, tb ? N : K, tb ? K : N},
                        sc[3] = {B, M, N}, sbias[1] = {N};
                /* C in f32 with a bias in f32; and in the input dtype with its bias */
                for (int cdt_i = 0; cdt_i < 2; cdt_i++) {
                    int cdt = cdt_i ? dt : LT_DTYPE_F32;
                    lt_tensor a = cuda_randn(dt, 3, sa, 1.0), b = cuda_randn(dt, 3, sb, 1.0);
                    lt_tensor bias = cuda_randn(cdt, 1, sbias, 1.0);
                    lt_tensor c0 = cuda_randn(cdt, 3, sc, 1.0);
                    float beta = cdt_i ? 0.0f : 0.5f;
                    /* CPU: matmul, then add the bias to every row */
                    lt_tensor cc = {0};
                    lt_tensor_empty(&cc, LT_DTYPE_F32, 3, sc, LT_DEVICE_CPU, 0);
                    lt_tensor_copy(&cc, &c0);
                    CHECK_OK(lt_matmul(&cc, &a, &b, ta, tb, 1.0f, beta));
                    lt_tensor bf = cuda_host_f32(&bias);
                    float *cp = lt_tensor_data(&cc);
                    const float *bp = lt_tensor_data(&bf);
                    for (int64_t i = 0; i < B * M; i++)
                        for (int64_t j = 0; j < N; j++) cp[i * N + j] += bp[j];
                    lt_tensor ag = to_dev(&a, dt), bg = to_dev(&b, dt), biasg = to_dev(&bias, cdt);
                    lt_tensor cg = to_dev(&c0, cdt);
                    gemm_args g;
                    memset(&g, 0, sizeof g);
                    g.trans_a = ta;
                    g.trans_b = tb;
                    g.M = M;
                    g.N = N;
                    g.K = K;
                    g.alpha = 1.0f;
                    g.beta = beta;
                    g.A = lt_tensor_data(&ag);
                    g.lda = ta ? M : K;
                    g.B = lt_tensor_data(&bg);
                    g.ldb = tb ? K : N;
                    g.C = lt_tensor_data(&cg);
                    g.ldc = N;
                    g.ab_dtype = dt;
                    g.c_dtype = cdt;
                    g.bias = lt_tensor_data(&biasg);
                    g.batch = B;
                    g.stride_a = M * K;
                    g.stride_b = K * N;
                    g.stride_c = M * N;
                    CHECK_OK(gemm_device(0, &g, (int64_t)sizeof g));
                    char w[128];
                    snprintf(w, sizeof w, "gemm + bias %s%s %s -> %s", ta ? "T" : "N",
                             tb ? "T" : "N", lt_dtype_info(dt)->name, lt_dtype_info(cdt)->name);
                    if (cdt != LT_DTYPE_F32)
                        cuda_close_lowp(w, &cg, &cc, cdt);
                    else if (dt != LT_DTYPE_F32)
                        cuda_close_lowp(w, &cg, &cc, dt);
                    else
                        close_tol(w, &cg, &cc, 1e-5);
                    /* the second call of a shape takes the cached plan */
                    lt_tensor_copy(&cg, &c0);
                    CHECK_OK(gemm_device(0, &g, (int64_t)sizeof g));
                    if (cdt == LT_DTYPE_F32 && dt == LT_DTYPE_F32) close_tol(w, &cg, &cc, 1e-5);
                    lt_tensor *all[] = {&a, &b, &bias, &c0, &cc, &bf, &ag, &bg, &biasg, &cg};
                    for (size_t i = 0; i < sizeof all / sizeof *all; i++) lt_tensor_release(all[i]);
                }
            }
    /* a caller with another struct layout is refused */
    gemm_args g;
    memset(&g, 0, sizeof g);
    CHECK_FAILS(gemm_device(0, &g, (int64_t)sizeof g + 8), LT_ERR_ARG, "lt_gemm_args");
}

static void test_errors(void) {
    int64_t s[2] = {4, 4};
    lt_tensor a = empty_dev(LT_DTYPE_F32, 2, s), c = {0};
    lt_tensor_empty(&c, LT_DTYPE_F32, 2, s, LT_DEVICE_CPU, 0);
    CHECK_FAILS(lt_matmul(&c, &a, &a, 0, 0, 1.0f, 0.0f), LT_ERR_DEVICE, "cuda:0");
    lt_tensor_release(&a);
    lt_tensor_release(&c);
}

int main(void) {
    cuda_require();
    gemm_device = (gemm_device_fn)dlsym(RTLD_DEFAULT, "lt_cuda_gemm_device");
    set_tf32 = (tf32_fn)dlsym(RTLD_DEFAULT, "lt_cuda_gemm_allow_tf32");
    CHECK(gemm_device != NULL && set_tf32 != NULL);
    if (!gemm_device || !set_tf32) {
        fprintf(stderr, "lt_cuda_gemm_device / lt_cuda_gemm_allow_tf32 are not exported\n");
        return check_summary();
    }
    test_mixed();
    test_views();
    test_batched();
    test_backward();
    test_bias();
    test_errors();
    set_tf32(1);
    lt_memory_stats st;
    lt_memory_get_stats(LT_DEVICE_CUDA, 0, &st);
    CHECK(st.current_bytes == 0); /* every device tensor released */
    return check_summary();
}
