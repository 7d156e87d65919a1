/* test_cuda_elementwise.c - the CUDA elementwise and reduction ops (cuda/elementwise.cu,
 * cuda/reduce.cu) against the CPU ops, in the cases the op table cannot state.
 *
 * The op table (tests/lua/op_cases*.lua, run by tests/lua/test_op_table_cuda.lua) compares
 * every unary, binary, scalar, reduction and softmax kernel, forward and backward, with the
 * CPU on contiguous inputs of awkward sizes in f32, bf16 and f16 (broadcasting both ways,
 * max/min ties, the slabbed broadcast gradient, reductions over every set of dims and sizes
 * that need chunking, softmax rows of every length and their in-place forms). What stays
 * here: views and dtypes the flat paths do not take (transposed, in-place, misaligned,
 * mixed input/output dtypes, in-place binary gradients, permuted reductions), the ops
 * without a gradient (axpby with zero coefficients that must not let a NaN through,
 * argmax with ties, NaN and long rows, sum of squares, has_nonfinite), special values
 * (empty dims; softmax rows holding NaN, inf and -inf) and refusals. f32 within 1e-5
 * relative (cuda_close_f32), bf16 and f16 per cuda_close_lowp against the CPU result on the
 * same rounded inputs; integer and special-value results exactly.
 *
 * Built with -DLT_CUDA_TEST_ON_CPU the "device" tensors are CPU tensors and only f32 runs:
 * that dry-runs this file's own set-up (shapes, views, references) on a machine without a
 * GPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cuda_check.h"
#include "lt.h"
#include "lt_ops.h"

#ifdef LT_CUDA_TEST_ON_CPU
#define TEST_DEVICE LT_DEVICE_CPU
static const int dtypes[] = {LT_DTYPE_F32};
#else
#define TEST_DEVICE LT_DEVICE_CUDA
static const int dtypes[] = {LT_DTYPE_F32, LT_DTYPE_BF16, LT_DTYPE_F16};
#endif
#define NDT ((int)(sizeof dtypes / sizeof dtypes[0]))

/* ---- helpers ------------------------------------------------------------------------- */

static void die(const char *what) {
    fprintf(stderr, "%s: %s\n", what, lt_last_error());
    exit(1);
}

static lt_tensor cpu_empty(int dtype, int nd, const int64_t *s) {
    lt_tensor t = {0};
    if (lt_tensor_empty(&t, dtype, nd, s, LT_DEVICE_CPU, 0) != LT_OK) die("cpu_empty");
    return t;
}

static lt_tensor dev_empty(int dtype, int nd, const int64_t *s) {
    lt_tensor t = {0};
    if (lt_tensor_empty(&t, dtype, nd, s, TEST_DEVICE, 0) != LT_OK) die("dev_empty");
    return t;
}

/* A device copy of src converted to dtype. */
static lt_tensor to_dev(const lt_tensor *src, int dtype) {
    lt_tensor t = dev_empty(dtype, src->ndim, src->sizes);
    if (lt_tensor_copy(&t, src) != LT_OK) die("to_dev");
    return t;
}

/* src's values rounded through dtype, as a contiguous f32 CPU tensor: the CPU reference's
   inputs when the device reads dtype. */
static lt_tensor rounded(const lt_tensor *src, int dtype) {
    lt_tensor r = cpu_empty(dtype, src->ndim, src->sizes), f;
    if (lt_tensor_copy(&r, src) != LT_OK) die("rounded");
    f = cuda_host_f32(&r);
    lt_tensor_release(&r);
    return f;
}

static lt_tensor randn(int nd, const int64_t *s, double std) {
    return cuda_randn(LT_DTYPE_F32, nd, s, std);
}

/* f applied to every element of a contiguous f32 CPU tensor. */
static void apply(lt_tensor *t, float (*f)(float)) {
    float *p = lt_tensor_data(t);
    int64_t n = lt_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) p[i] = f(p[i]);
}

static float away_from_0(float x) { return x >= 0.0f ? x + 0.5f : x - 0.5f; }
static float quarter_steps(float x) { return roundf(x * 4.0f) / 4.0f; } /* many ties */

static const char *dtn(int dt) { return lt_dtype_info(dt)->name; }

static const char *shape_str(int nd, const int64_t *s, char *buf, size_t len) {
    size_t k = (size_t)snprintf(buf, len, "(");
    for (int i = 0; i < nd && k < len; i++)
        k += (size_t)snprintf(buf + k, len - k, i ? ", %lld" : "%lld", (long long)s[i]);
    if (k < len) snprintf(buf + k, len - k, ")");
    return buf;
}

/* The f32 rule for f32 results, the low-precision rule otherwise. */
static int close_dt(const char *what, const lt_tensor *gpu, const lt_tensor *cpu, int dtype) {
    if (dtype == LT_DTYPE_F32) return cuda_close_f32(what, gpu, cpu);
    return cuda_close_lowp(what, gpu, cpu, dtype);
}

/* Elementwise: NaN where the CPU has NaN, the same infinities, finite values within
   tol * (1 + |cpu|). */
static int same_special(const char *what, const lt_tensor *gpu, const lt_tensor *cpu, double tol) {
    lt_tensor g = cuda_host_f32(gpu), c = cuda_host_f32(cpu);
    const float *x = lt_tensor_data(&g), *y = lt_tensor_data(&c);
    int64_t n = lt_tensor_numel(&c), bad = -1;
    for (int64_t i = 0; i < n && bad < 0; i++) {
        if (isnan(y[i]) || isnan(x[i])) {
            if (isnan(y[i]) != isnan(x[i])) bad = i;
        } else if (isinf(y[i]) || isinf(x[i])) {
            if (x[i] != y[i]) bad = i;
        } else if (fabs((double)x[i] - y[i]) > tol * (1.0 + fabs((double)y[i]))) {
            bad = i;
        }
    }
    if (bad >= 0)
        fprintf(stderr, "%s: element %lld is %g on the device, %g on the CPU\n", what,
                (long long)bad, (double)x[bad], (double)y[bad]);
    lt_tensor_release(&g);
    lt_tensor_release(&c);
    CHECK(bad < 0);
    return bad < 0;
}

/* Two i64 tensors (any devices) hold the same values. */
static int same_i64(const char *what, const lt_tensor *gpu, const lt_tensor *cpu) {
    lt_tensor h = cpu_empty(LT_DTYPE_I64, gpu->ndim, gpu->sizes);
    int eq = 0;
    if (lt_tensor_copy(&h, gpu) != LT_OK || lt_tensor_equal(&h, cpu, &eq) != LT_OK) die(what);
    if (!eq) fprintf(stderr, "%s: indices differ\n", what);
    lt_tensor_release(&h);
    CHECK(eq);
    return eq;
}

/* ---- unary ----------------------------------------------------------------------------- */

/* Views and dtypes the flat path does not take: transposed input, in place, misaligned
   (offset by one element), mixed input/output dtypes. */
static void test_unary_layouts(void) {
    int64_t s[2] = {257, 34}, st[2] = {34, 257};
    lt_tensor x = randn(2, s, 1.0), d = randn(2, st, 1.0);
    lt_tensor xt = {0}, co = cpu_empty(LT_DTYPE_F32, 2, st), cg = cpu_empty(LT_DTYPE_F32, 2, st);
    CHECK_OK(lt_tensor_transpose(&xt, &x, 0, 1));
    CHECK_OK(lt_unary_forward(&co, &xt, LT_UNARY_GELU));
    CHECK_OK(lt_unary_backward(&cg, &d, &xt, LT_UNARY_GELU));
    lt_tensor xd = to_dev(&x, LT_DTYPE_F32), xdt = {0}, dd = to_dev(&d, LT_DTYPE_F32);
    CHECK_OK(lt_tensor_transpose(&xdt, &xd, 0, 1));
    lt_tensor od = dev_empty(LT_DTYPE_F32, 2, st), gd = dev_empty(LT_DTYPE_F32, 2, st);
    CHECK_OK(lt_unary_forward(&od, &xdt, LT_UNARY_GELU));
    cuda_close_f32("gelu of a transposed view", &od, &co);
    CHECK_OK(lt_unary_backward(&gd, &dd, &xdt, LT_UNARY_GELU));
    cuda_close_f32("gelu_backward of a transposed view", &gd, &cg);
    /* the output transposed too: every operand strided */
    lt_tensor ob = dev_empty(LT_DTYPE_F32, 2, s), obt = {0};
    CHECK_OK(lt_tensor_transpose(&obt, &ob, 0, 1));
    CHECK_OK(lt_unary_forward(&obt, &xdt, LT_UNARY_GELU));
    cuda_close_f32("gelu into a transposed output", &obt, &co);

    /* in place */
    lt_tensor c2 = cpu_empty(LT_DTYPE_F32, 2, s), y = to_dev(&x, LT_DTYPE_F32);
    CHECK_OK(lt_unary_forward(&c2, &x, LT_UNARY_SILU));
    CHECK_OK(lt_unary_forward(&y, &y, LT_UNARY_SILU));
    cuda_close_f32("silu in place", &y, &c2);

    /* misaligned: a view starting one element in */
    int64_t n = 1001, m = 1000;
    lt_tensor base = randn(1, &n, 1.0);
    for (int k = 0; k < NDT; k++) {
        int dt = dtypes[k];
        lt_tensor br = rounded(&base, dt), brv = {0}, cr = cpu_empty(LT_DTYPE_F32, 1, &m);
        CHECK_OK(lt_tensor_narrow(&brv, &br, 0, 1, m));
        CHECK_OK(lt_unary_forward(&cr, &brv, LT_UNARY_TANH));
        lt_tensor bd = to_dev(&br, dt), bdv = {0}, ob2 = dev_empty(dt, 1, &n), ob2v = {0};
        CHECK_OK(lt_tensor_narrow(&bdv, &bd, 0, 1, m));
        CHECK_OK(lt_tensor_narrow(&ob2v, &ob2, 0, 1, m));
        CHECK_OK(lt_unary_forward(&ob2v, &bdv, LT_UNARY_TANH));
        close_dt(dt == LT_DTYPE_F32 ? "tanh misaligned f32" : "tanh misaligned lowp", &ob2v, &cr,
                 dt);
        /* mixed: a low-precision input into an f32 output (f32 rule on the rounded input) */
        lt_tensor of = dev_empty(LT_DTYPE_F32, 1, &m);
        CHECK_OK(lt_unary_forward(&of, &bdv, LT_UNARY_TANH));
        cuda_close_f32("tanh into f32 from any dtype", &of, &cr);
        lt_tensor_release(&br);
        lt_tensor_release(&brv);
        lt_tensor_release(&cr);
        lt_tensor_release(&bd);
        lt_tensor_release(&bdv);
        lt_tensor_release(&ob2);
        lt_tensor_release(&ob2v);
        lt_tensor_release(&of);
    }
    lt_tensor_release(&x);
    lt_tensor_release(&d);
    lt_tensor_release(&xt);
    lt_tensor_release(&co);
    lt_tensor_release(&cg);
    lt_tensor_release(&xd);
    lt_tensor_release(&xdt);
    lt_tensor_release(&dd);
    lt_tensor_release(&od);
    lt_tensor_release(&gd);
    lt_tensor_release(&ob);
    lt_tensor_release(&obt);
    lt_tensor_release(&c2);
    lt_tensor_release(&y);
    lt_tensor_release(&base);
}

/* ---- binary ---------------------------------------------------------------------------- */

/* In-place backward: da written over a, db over b (the CPU routes one through a
   temporary), and mixed dtypes. */
static void test_binary_aliasing(void) {
    int64_t s[2] = {31, 17}, sv[1] = {17};
    lt_tensor a = randn(2, s, 1.0), b = randn(1, sv, 1.0), d = randn(2, s, 1.0);
    apply(&b, away_from_0);
    lt_tensor cda = cpu_empty(LT_DTYPE_F32, 2, s), cdb = cpu_empty(LT_DTYPE_F32, 1, sv);
    CHECK_OK(lt_binary_backward(&cda, &cdb, &d, &a, &b, LT_BINARY_DIV));
    lt_tensor ad = to_dev(&a, LT_DTYPE_F32), bd = to_dev(&b, LT_DTYPE_F32);
    lt_tensor dd = to_dev(&d, LT_DTYPE_F32);
    CHECK_OK(lt_binary_backward(&ad, &bd, &dd, &ad, &bd, LT_BINARY_DIV));
    cuda_close_f32("div_backward da over a", &ad, &cda);
    cuda_close_f32("div_backward db over b", &bd, &cdb);
    lt_tensor ad2 = to_dev(&a, LT_DTYPE_F32), bd2 = to_dev(&b, LT_DTYPE_F32);
    lt_tensor dd2 = to_dev(&d, LT_DTYPE_F32);
    CHECK_OK(lt_binary_backward(&dd2, NULL, &dd2, &ad2, &bd2, LT_BINARY_DIV));
    cuda_close_f32("div_backward da over dout", &dd2, &cda);
#ifndef LT_CUDA_TEST_ON_CPU
    /* mixed: bf16 a, f32 b, f32 out */
    lt_tensor ar = rounded(&a, LT_DTYPE_BF16), co = cpu_empty(LT_DTYPE_F32, 2, s);
    CHECK_OK(lt_binary_forward(&co, &ar, &b, LT_BINARY_MUL));
    lt_tensor am = to_dev(&a, LT_DTYPE_BF16), bm = to_dev(&b, LT_DTYPE_F32);
    lt_tensor om = dev_empty(LT_DTYPE_F32, 2, s);
    CHECK_OK(lt_binary_forward(&om, &am, &bm, LT_BINARY_MUL));
    cuda_close_f32("mul bf16 x f32 into f32", &om, &co);
    lt_tensor_release(&ar);
    lt_tensor_release(&co);
    lt_tensor_release(&am);
    lt_tensor_release(&bm);
    lt_tensor_release(&om);
#endif
    lt_tensor *all[] = {&a, &b, &d, &cda, &cdb, &ad, &bd, &dd, &ad2, &bd2, &dd2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) lt_tensor_release(all[i]);
}

/* ---- axpby ----------------------------------------------------------------------------- */

static void test_axpby(void) {
    static const double coef[][2] = {{1.5, 0.5}, {0.0, 2.0}, {2.0, 0.0}, {0.0, 0.0}, {1.0, 1.0}};
    int64_t s[2] = {257, 33}, sv[1] = {33}, n1 = 70001;
    char what[200];
    for (int xb = 0; xb < 3; xb++) {
        int nd = xb == 2 ? 1 : 2;
        const int64_t *ys = xb == 2 ? &n1 : s;
        for (int ci = 0; ci < 5; ci++)
            for (int k = 0; k < NDT; k++)
                for (int xk = 0; xk < NDT; xk++) {
                    int dt = dtypes[k], xdt = dtypes[xk];
                    double al = coef[ci][0], be = coef[ci][1];
                    lt_tensor y = randn(nd, ys, 1.0);
                    lt_tensor x = xb == 1 ? randn(1, sv, 1.0) : randn(nd, ys, 1.0);
                    lt_tensor yr = rounded(&y, dt), xr = rounded(&x, xdt);
                    lt_tensor yd = to_dev(&yr, dt), xd = to_dev(&xr, xdt);
                    CHECK_OK(lt_axpby(&yr, al, &xr, be));
                    CHECK_OK(lt_axpby(&yd, al, &xd, be));
                    snprintf(what, sizeof what, "axpby %g %g y %s x %s%s", al, be, dtn(dt), dtn(xdt),
                             xb == 1 ? " broadcast" : "");
                    close_dt(what, &yd, &yr, dt);
                    lt_tensor *all[] = {&y, &x, &yr, &xr, &yd, &xd};
                    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) lt_tensor_release(all[i]);
                }
    }
    /* a zero coefficient leaves its operand unread: NaN there does not leak */
    lt_tensor y = randn(2, s, 1.0), x = cpu_empty(LT_DTYPE_F32, 2, s);
    CHECK_OK(lt_tensor_fill(&x, NAN));
    lt_tensor yd = to_dev(&y, LT_DTYPE_F32), xd = to_dev(&x, LT_DTYPE_F32);
    CHECK_OK(lt_axpby(&y, 0.0, &x, 0.5));
    CHECK_OK(lt_axpby(&yd, 0.0, &xd, 0.5));
    same_special("axpby alpha 0 with NaN x", &yd, &y, 0.0);
    lt_tensor y2 = cpu_empty(LT_DTYPE_F32, 2, s), x2 = randn(2, s, 1.0);
    CHECK_OK(lt_tensor_fill(&y2, NAN));
    lt_tensor y2d = to_dev(&y2, LT_DTYPE_F32), x2d = to_dev(&x2, LT_DTYPE_F32);
    CHECK_OK(lt_axpby(&y2, 3.0, &x2, 0.0));
    CHECK_OK(lt_axpby(&y2d, 3.0, &x2d, 0.0));
    same_special("axpby beta 0 with NaN y", &y2d, &y2, 0.0);
    lt_tensor *all[] = {&y, &x, &yd, &xd, &y2, &x2, &y2d, &x2d};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) lt_tensor_release(all[i]);
}

/* ---- reductions ------------------------------------------------------------------------ */

static const char *const reduce_names[LT_REDUCE_COUNT] = {"sum", "mean", "max", "min"};

/* The same reduction on a strided device view (a permutation of a contiguous buffer). */
static void reduce_permuted(void) {
    int64_t s[3] = {7, 33, 257};
    int32_t perm[3] = {2, 0, 1};
    lt_tensor x = randn(3, s, 1.0), xp = {0};
    CHECK_OK(lt_tensor_permute(&xp, &x, perm));
    static const int32_t dsets[][2] = {{0}, {2}, {0, 1}, {1, 2}};
    static const int dn[] = {1, 1, 2, 2};
    char what[200];
    for (int di = 0; di < 4; di++)
        for (int op = 0; op < LT_REDUCE_COUNT; op++) {
            int64_t os[3] = {xp.sizes[0], xp.sizes[1], xp.sizes[2]};
            for (int i = 0; i < dn[di]; i++) os[dsets[di][i]] = 1;
            lt_tensor co = cpu_empty(LT_DTYPE_F32, 3, os), od = dev_empty(LT_DTYPE_F32, 3, os);
            CHECK_OK(lt_reduce_forward(&co, &xp, dn[di], dsets[di], op));
            lt_tensor xd = to_dev(&x, LT_DTYPE_F32), xdp = {0};
            CHECK_OK(lt_tensor_permute(&xdp, &xd, perm));
            CHECK_OK(lt_reduce_forward(&od, &xdp, dn[di], dsets[di], op));
            snprintf(what, sizeof what, "%s of a permuted view, dim set %d", reduce_names[op], di);
            cuda_close_f32(what, &od, &co);
            lt_tensor_release(&co);
            lt_tensor_release(&od);
            lt_tensor_release(&xd);
            lt_tensor_release(&xdp);
        }
    lt_tensor_release(&x);
    lt_tensor_release(&xp);
}

/* Permuted views, and empty dims (the op table's reductions are over contiguous inputs). */
static void test_reduce(void) {
    reduce_permuted();
    int32_t d0[1] = {0};
    /* empty dims: a sum of nothing is 0, a mean NaN, a max an error; no outputs at all */
    int64_t se[2] = {0, 5}, so[2] = {1, 5}, sz[2] = {3, 0}, szo[2] = {1, 0};
    lt_tensor e = dev_empty(LT_DTYPE_F32, 2, se), eo = dev_empty(LT_DTYPE_F32, 2, so);
    CHECK_OK(lt_reduce_forward(&eo, &e, 1, d0, LT_REDUCE_SUM));
    lt_tensor zero = cpu_empty(LT_DTYPE_F32, 2, so), nan5 = cpu_empty(LT_DTYPE_F32, 2, so);
    lt_tensor_fill(&zero, 0.0);
    lt_tensor_fill(&nan5, NAN);
    same_special("sum over an empty dim", &eo, &zero, 0.0);
    CHECK_OK(lt_reduce_forward(&eo, &e, 1, d0, LT_REDUCE_MEAN));
    same_special("mean over an empty dim", &eo, &nan5, 0.0);
    CHECK_FAILS(lt_reduce_forward(&eo, &e, 1, d0, LT_REDUCE_MAX), LT_ERR_SHAPE, "size 0");
    lt_tensor z = dev_empty(LT_DTYPE_F32, 2, sz), zo = dev_empty(LT_DTYPE_F32, 2, szo);
    CHECK_OK(lt_reduce_forward(&zo, &z, 1, d0, LT_REDUCE_MAX));
    lt_tensor *all[] = {&e, &eo, &zero, &nan5, &z, &zo};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) lt_tensor_release(all[i]);
}

/* ---- argmax ---------------------------------------------------------------------------- */

static void argmax_case(const lt_tensor *x, int dim, const char *label) {
    char what[200];
    int d = dim < 0 ? dim + x->ndim : dim;
    int64_t os[LT_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) os[i] = i == d ? 1 : x->sizes[i];
    for (int k = 0; k < NDT; k++) {
        int dt = dtypes[k];
        lt_tensor xr = rounded(x, dt), co = cpu_empty(LT_DTYPE_I64, x->ndim, os);
        CHECK_OK(lt_argmax(&co, &xr, dim));
        lt_tensor xd = to_dev(&xr, dt), od = dev_empty(LT_DTYPE_I64, x->ndim, os);
        CHECK_OK(lt_argmax(&od, &xd, dim));
        snprintf(what, sizeof what, "argmax %s dim %d %s", label, dim, dtn(dt));
        same_i64(what, &od, &co);
        lt_tensor_release(&xr);
        lt_tensor_release(&co);
        lt_tensor_release(&xd);
        lt_tensor_release(&od);
    }
}

static void test_argmax(void) {
    int64_t s[3] = {7, 33, 1000};
    lt_tensor x = randn(3, s, 1.0);
    apply(&x, quarter_steps); /* ties: the first index must win */
    float *p = lt_tensor_data(&x);
    p[(3 * 33 + 5) * 1000 + 500] = NAN; /* a NaN wins its row, the first NaN of two */
    p[(3 * 33 + 5) * 1000 + 100] = NAN;
    p[(6 * 33 + 32) * 1000 + 999] = NAN;
    p[(0 * 33 + 0) * 1000 + 0] = NAN;
    for (int dim = -1; dim < 3; dim++) argmax_case(&x, dim, "(7, 33, 1000)");
    int64_t sl[2] = {3, 5001};
    lt_tensor l = randn(2, sl, 1.0);
    apply(&l, quarter_steps);
    float *q = lt_tensor_data(&l);
    q[5001 + 4000] = NAN;
    q[5001 + 4999] = NAN;
    q[2 * 5001 + 5000] = 100.0f; /* the last element of a row */
    argmax_case(&l, 1, "(3, 5001)");
    argmax_case(&l, 0, "(3, 5001)");
    lt_tensor_release(&x);
    lt_tensor_release(&l);
}

/* ---- sum of squares and the non-finite check ----------------------------------------------- */

static void test_sum_squares_nonfinite(void) {
    static const int64_t shapes[][2] = {{1}, {7, 33}, {3000001}, {257, 33}};
    static const int nds[] = {1, 2, 1, 2};
    char what[200], sb[64];
    for (int si = 0; si < 4; si++) {
        int nd = nds[si];
        const int64_t *s = shapes[si];
        lt_tensor x = randn(nd, s, 1.0);
        for (int k = 0; k < NDT; k++) {
            int dt = dtypes[k];
            lt_tensor xr = rounded(&x, dt), xd = to_dev(&xr, dt), view = {0}, cview = {0};
            double c = 0, g = 0;
            int32_t cf = -1, gf = -1;
            const lt_tensor *cin = &xr, *gin = &xd;
            if (nd == 2 && si == 3) { /* a transposed view */
                CHECK_OK(lt_tensor_transpose(&cview, &xr, 0, 1));
                CHECK_OK(lt_tensor_transpose(&view, &xd, 0, 1));
                cin = &cview;
                gin = &view;
            }
            CHECK_OK(lt_sum_squares(cin, &c));
            CHECK_OK(lt_sum_squares(gin, &g));
            snprintf(what, sizeof what, "sum_squares %s %s", dtn(dt), shape_str(nd, s, sb, sizeof sb));
            if (!(fabs(g - c) <= 1e-9 * c)) fprintf(stderr, "%s: %.17g vs %.17g\n", what, g, c);
            CHECK(fabs(g - c) <= 1e-9 * c);
            CHECK_OK(lt_has_nonfinite(gin, &gf));
            CHECK_OK(lt_has_nonfinite(cin, &cf));
            CHECK(gf == 0 && cf == 0);
            /* one non-finite value: first, last, deep inside */
            int64_t n = lt_tensor_numel(&xr), at[3] = {0, n - 1, n / 2 + 1};
            double bad[3] = {NAN, INFINITY, -INFINITY};
            for (int b = 0; b < 3; b++) {
                int64_t i = at[b] < n ? at[b] : n - 1;
                double old = 0;
                CHECK_OK(lt_tensor_get(&xd, i, &old));
                CHECK_OK(lt_tensor_set(&xd, i, bad[b]));
                gf = -1;
                CHECK_OK(lt_has_nonfinite(&xd, &gf));
                if (gf != 1) fprintf(stderr, "has_nonfinite %s missed %g at %lld\n", dtn(dt), bad[b], (long long)i);
                CHECK(gf == 1);
                CHECK_OK(lt_tensor_set(&xd, i, old));
            }
            gf = -1;
            CHECK_OK(lt_has_nonfinite(&xd, &gf));
            CHECK(gf == 0);
            lt_tensor_release(&xr);
            lt_tensor_release(&xd);
            lt_tensor_release(&view);
            lt_tensor_release(&cview);
        }
        lt_tensor_release(&x);
    }
}

/* ---- softmax --------------------------------------------------------------------------- */

/* Rows holding NaN, inf and -inf: the CPU's NaN rows, zeros and -inf exactly. */
static void softmax_special(int64_t cols) {
    int64_t s[2] = {6, cols};
    lt_tensor x = randn(2, s, 1.0);
    float *p = lt_tensor_data(&x);
    p[1 * cols + cols / 2] = NAN;                    /* row 1: a NaN */
    for (int64_t j = 0; j < cols; j++) p[2 * cols + j] = -INFINITY; /* row 2: only -inf */
    p[3 * cols + 1] = INFINITY;                      /* row 3: +inf */
    for (int64_t j = 0; j < cols; j += 3) p[4 * cols + j] = -INFINITY; /* row 4: some -inf */
    for (int64_t j = 0; j < cols; j++) p[5 * cols + j] = 0.25f;        /* row 5: all equal */
    char what[120];
    for (int lf = 0; lf <= 1; lf++) {
        lt_tensor co = cpu_empty(LT_DTYPE_F32, 2, s), xd = to_dev(&x, LT_DTYPE_F32);
        lt_tensor od = dev_empty(LT_DTYPE_F32, 2, s);
        CHECK_OK(lf ? lt_log_softmax_forward(&co, &x) : lt_softmax_forward(&co, &x));
        CHECK_OK(lf ? lt_log_softmax_forward(&od, &xd) : lt_softmax_forward(&od, &xd));
        snprintf(what, sizeof what, "%s special rows, %lld columns", lf ? "log_softmax" : "softmax",
                 (long long)cols);
        same_special(what, &od, &co, 1e-5);
        lt_tensor_release(&co);
        lt_tensor_release(&xd);
        lt_tensor_release(&od);
    }
    lt_tensor_release(&x);
}

/* Special rows, and a low-precision input into an f32 output (the op table's rows keep
   each output in its input's dtype). */
static void test_softmax(void) {
    softmax_special(9);
    softmax_special(2000);
#ifndef LT_CUDA_TEST_ON_CPU
    /* mixed: bf16 x into an f32 out */
    int64_t s[2] = {9, 1500};
    lt_tensor x = randn(2, s, 2.0), xr = rounded(&x, LT_DTYPE_BF16);
    lt_tensor co = cpu_empty(LT_DTYPE_F32, 2, s);
    CHECK_OK(lt_softmax_forward(&co, &xr));
    lt_tensor xd = to_dev(&x, LT_DTYPE_BF16), od = dev_empty(LT_DTYPE_F32, 2, s);
    CHECK_OK(lt_softmax_forward(&od, &xd));
    cuda_close_f32("softmax bf16 into f32", &od, &co);
    lt_tensor_release(&x);
    lt_tensor_release(&xr);
    lt_tensor_release(&co);
    lt_tensor_release(&xd);
    lt_tensor_release(&od);
#endif
}

/* ---- errors ---------------------------------------------------------------------------- */

static void test_errors(void) {
#ifndef LT_CUDA_TEST_ON_CPU
    int64_t s[2] = {3, 4};
    lt_tensor oc = cpu_empty(LT_DTYPE_F32, 2, s), xd = cuda_copy_to(&oc, 1);
    lt_tensor id = dev_empty(LT_DTYPE_I32, 2, s), od = dev_empty(LT_DTYPE_F32, 2, s);
    CHECK_FAILS(lt_unary_forward(&oc, &xd, LT_UNARY_EXP), LT_ERR_DEVICE, "x is on cuda:0 but out is on cpu");
    CHECK_FAILS(lt_unary_forward(&od, &id, LT_UNARY_EXP), LT_ERR_DTYPE, "exp: x must be f32, bf16 or f16");
    CHECK_FAILS(lt_softmax_forward(&od, &id), LT_ERR_DTYPE, "softmax: x must be f32, bf16 or f16");
    lt_tensor_release(&xd);
    lt_tensor_release(&oc);
    lt_tensor_release(&id);
    lt_tensor_release(&od);
#endif
}

int main(void) {
#ifndef LT_CUDA_TEST_ON_CPU
    cuda_require();
#endif
    test_unary_layouts();
    test_binary_aliasing();
    test_axpby();
    test_reduce();
    test_argmax();
    test_sum_squares_nonfinite();
    test_softmax();
    test_errors();
    return check_summary();
}
