/* test_elementwise.c - the elementwise, reduction and softmax kernels against naive
 * double-precision references.
 *
 * Every kernel runs on awkward layouts: broadcasting both ways (3x1x7 with 5x7), transposed
 * and step-2 strided views, stride-0 expanded inputs, 0-size dims, 0-dim tensors, and sizes
 * large enough to take the threaded and chunked paths. Gradients are compared with the
 * analytic derivative evaluated in double; in-place calls (out == input) with the
 * out-of-place result. Errors are checked for their status and the words in the message. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "lt.h"
#include "lt_ops.h"

static lt_rng rng;

/* ---- tensors and flat access -------------------------------------------------------- */

static lt_tensor make(int nd, const int64_t *sizes) {
    lt_tensor t = {0};
    if (lt_tensor_empty(&t, LT_DTYPE_F32, nd, sizes, LT_DEVICE_CPU, 0) != LT_OK)
        fprintf(stderr, "make: %s\n", lt_last_error());
    return t;
}

static lt_tensor randn(int nd, const int64_t *sizes) {
    lt_tensor t = make(nd, sizes);
    lt_tensor_normal(&t, 0.0, 1.0, &rng);
    return t;
}

static lt_tensor uniform(int nd, const int64_t *sizes, double lo, double hi) {
    lt_tensor t = make(nd, sizes);
    lt_tensor_uniform(&t, lo, hi, &rng);
    return t;
}

/* Row-major values of any view, as doubles (malloc'd; at least one slot). */
static double *values(const lt_tensor *t) {
    int64_t n = lt_tensor_numel(t);
    double *v = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++) lt_tensor_get(t, i, &v[i]);
    return v;
}

/* Fill a view from row-major doubles. */
static void set_values(lt_tensor *t, const double *v) {
    int64_t n = lt_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) lt_tensor_set(t, i, v[i]);
}

/* Flat row-major index into t (right-aligned, broadcast) of position `flat` of shape
   (nd, sizes). */
static int64_t bindex(int64_t flat, int nd, const int64_t *sizes, const lt_tensor *t) {
    int64_t idx = 0, mul = 1;
    for (int i = nd - 1; i >= 0; i--) {
        int64_t c = flat % sizes[i];
        flat /= sizes[i];
        int j = i - (nd - t->ndim);
        if (j >= 0) {
            if (t->sizes[j] != 1) idx += c * mul;
            mul *= t->sizes[j];
        }
    }
    return idx;
}

/* Elementwise |got - want| <= atol + rtol * |want|; NaN must match NaN. Prints the first
   miss. Returns 1 when all match. */
static int close_to(const lt_tensor *got, const double *want, double rtol, double atol,
                    const char *what) {
    int64_t n = lt_tensor_numel(got);
    for (int64_t i = 0; i < n; i++) {
        double g;
        lt_tensor_get(got, i, &g);
        double w = want[i];
        int ok = (isnan(w) && isnan(g)) || (isinf(w) && g == w) ||
                 fabs(g - w) <= atol + rtol * fabs(w);
        if (!ok) {
            fprintf(stderr, "%s: element %lld: got %.9g, want %.9g\n", what, (long long)i, g, w);
            return 0;
        }
    }
    return 1;
}

/* A (rows, cols) view with the given layout over new storage:
   0 contiguous, 1 transposed (column-major), 2 every other column of a wider tensor. */
static lt_tensor layout2d(int64_t rows, int64_t cols, int kind, lt_tensor *base) {
    lt_tensor v = {0};
    if (kind == 0) {
        int64_t s[2] = {rows, cols};
        *base = randn(2, s);
        lt_tensor_share(&v, base);
    } else if (kind == 1) {
        int64_t s[2] = {cols, rows};
        *base = randn(2, s);
        lt_tensor_transpose(&v, base, 0, 1);
    } else {
        int64_t s[2] = {rows, 2 * cols + 1};
        *base = randn(2, s);
        lt_tensor_slice(&v, base, 1, 1, 2 * cols + 1, 2);
    }
    return v;
}

/* ---- references --------------------------------------------------------------------- */

static double ref_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

static double ref_unary(int op, double x) {
    const double k = sqrt(2.0 / M_PI), c = 0.044715;
    switch (op) {
    case LT_UNARY_NEG: return -x;
    case LT_UNARY_EXP: return exp(x);
    case LT_UNARY_LOG: return log(x);
    case LT_UNARY_SQRT: return sqrt(x);
    case LT_UNARY_RSQRT: return 1.0 / sqrt(x);
    case LT_UNARY_ABS: return fabs(x);
    case LT_UNARY_SQUARE: return x * x;
    case LT_UNARY_RECIPROCAL: return 1.0 / x;
    case LT_UNARY_SIGMOID: return ref_sigmoid(x);
    case LT_UNARY_SILU: return x * ref_sigmoid(x);
    case LT_UNARY_TANH: return tanh(x);
    case LT_UNARY_RELU: return x > 0 ? x : 0;
    case LT_UNARY_GELU: return 0.5 * x * (1.0 + tanh(k * (x + c * x * x * x)));
    case LT_UNARY_SIN: return sin(x);
    case LT_UNARY_COS: return cos(x);
    default: return NAN;
    }
}

static double ref_unary_grad(int op, double x) {
    const double k = sqrt(2.0 / M_PI), c = 0.044715;
    double s = ref_sigmoid(x), t;
    switch (op) {
    case LT_UNARY_NEG: return -1;
    case LT_UNARY_EXP: return exp(x);
    case LT_UNARY_LOG: return 1 / x;
    case LT_UNARY_SQRT: return 0.5 / sqrt(x);
    case LT_UNARY_RSQRT: return -0.5 * pow(x, -1.5);
    case LT_UNARY_ABS: return x > 0 ? 1 : x < 0 ? -1 : 0;
    case LT_UNARY_SQUARE: return 2 * x;
    case LT_UNARY_RECIPROCAL: return -1 / (x * x);
    case LT_UNARY_SIGMOID: return s * (1 - s);
    case LT_UNARY_SILU: return s + x * s * (1 - s);
    case LT_UNARY_TANH: t = tanh(x); return 1 - t * t;
    case LT_UNARY_RELU: return x > 0 ? 1 : 0;
    case LT_UNARY_GELU:
        t = tanh(k * (x + c * x * x * x));
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * c * x * x);
    case LT_UNARY_SIN: return cos(x);
    case LT_UNARY_COS: return -sin(x);
    default: return NAN;
    }
}

/* Inputs inside each op's domain. */
static int positive_domain(int op) {
    return op == LT_UNARY_LOG || op == LT_UNARY_SQRT || op == LT_UNARY_RSQRT ||
           op == LT_UNARY_RECIPROCAL;
}

static double ref_binary(int op, double a, double b) {
    switch (op) {
    case LT_BINARY_ADD: return a + b;
    case LT_BINARY_SUB: return a - b;
    case LT_BINARY_MUL: return a * b;
    case LT_BINARY_DIV: return a / b;
    case LT_BINARY_MAX: return a > b ? a : b;
    case LT_BINARY_MIN: return a < b ? a : b;
    case LT_BINARY_POW: return pow(a, b);
    default: return NAN;
    }
}

/* d(a op b)/da and /db. */
static void ref_binary_grad(int op, double a, double b, double *ga, double *gb) {
    switch (op) {
    case LT_BINARY_ADD: *ga = 1; *gb = 1; break;
    case LT_BINARY_SUB: *ga = 1; *gb = -1; break;
    case LT_BINARY_MUL: *ga = b; *gb = a; break;
    case LT_BINARY_DIV: *ga = 1 / b; *gb = -a / (b * b); break;
    case LT_BINARY_MAX: *ga = a > b ? 1 : a == b ? 0.5 : 0; *gb = 1 - *ga; break;
    case LT_BINARY_MIN: *ga = a < b ? 1 : a == b ? 0.5 : 0; *gb = 1 - *ga; break;
    case LT_BINARY_POW:
        *ga = b == 0 ? 0 : b * pow(a, b - 1);
        *gb = (a == 0 && b >= 0) ? 0 : pow(a, b) * log(a);
        break;
    default: *ga = *gb = NAN;
    }
}

/* ---- unary -------------------------------------------------------------------------- */

static void test_unary_layout(int op, int64_t rows, int64_t cols, int kind) {
    char what[128];
    snprintf(what, sizeof what, "unary op %d, %lldx%lld layout %d", op, (long long)rows,
             (long long)cols, kind);
    lt_tensor xb = {0}, db = {0};
    lt_tensor x = layout2d(rows, cols, kind, &xb);
    lt_tensor d = layout2d(rows, cols, (kind + 1) % 3, &db);
    int64_t n = rows * cols;
    double *xv = values(&x);
    for (int64_t i = 0; i < n; i++) {
        if (positive_domain(op)) xv[i] = 0.25 + fabs(xv[i]);
        if (op == LT_UNARY_ABS || op == LT_UNARY_RELU) /* away from the kink */
            xv[i] = xv[i] >= 0 ? xv[i] + 0.01 : xv[i] - 0.01;
    }
    set_values(&x, xv);
    for (int64_t i = 0; i < n; i++) lt_tensor_get(&x, i, &xv[i]); /* exact f32 inputs */
    double *dv = values(&d);
    double *want = malloc((size_t)(n + 1) * sizeof(double));
    double *wantg = malloc((size_t)(n + 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        want[i] = ref_unary(op, xv[i]);
        wantg[i] = dv[i] * ref_unary_grad(op, xv[i]);
    }
    int64_t s[2] = {rows, cols};
    lt_tensor out = make(2, s), dx = make(2, s);
    CHECK_OK(lt_unary_forward(&out, &x, op));
    CHECK(close_to(&out, want, 2e-6, 1e-6, what));
    CHECK_OK(lt_unary_backward(&dx, &d, &x, op));
    CHECK(close_to(&dx, wantg, 2e-5, 2e-6, what));
    /* In place: x itself (a strided view when kind != 0), then dout itself. */
    CHECK_OK(lt_unary_backward(&d, &d, &x, op));
    CHECK(close_to(&d, wantg, 2e-5, 2e-6, what));
    CHECK_OK(lt_unary_forward(&x, &x, op));
    CHECK(close_to(&x, want, 2e-6, 1e-6, what));
    free(xv);
    free(dv);
    free(want);
    free(wantg);
    lt_tensor_release(&x);
    lt_tensor_release(&d);
    lt_tensor_release(&xb);
    lt_tensor_release(&db);
    lt_tensor_release(&out);
    lt_tensor_release(&dx);
}

static void test_unary(void) {
    for (int op = 0; op < LT_UNARY_COUNT; op++) {
        test_unary_layout(op, 5, 7, 0);
        test_unary_layout(op, 7, 3, 1);
        test_unary_layout(op, 4, 9, 2);
        test_unary_layout(op, 1, 1, 0);
        test_unary_layout(op, 0, 5, 1);
        test_unary_layout(op, 300, 170, op % 3); /* threaded */
    }
    /* 0-dim tensors. */
    lt_tensor x = make(0, NULL), y = make(0, NULL);
    lt_tensor_fill(&x, 0.5);
    CHECK_OK(lt_unary_forward(&y, &x, LT_UNARY_EXP));
    double v;
    lt_tensor_get(&y, 0, &v);
    CHECK(fabs(v - exp(0.5)) < 1e-6);
    /* Special values. */
    int64_t s1[1] = {4};
    lt_tensor z = make(1, s1), o = make(1, s1);
    double zin[4] = {NAN, -INFINITY, 1e30, -1e30};
    set_values(&z, zin);
    CHECK_OK(lt_unary_forward(&o, &z, LT_UNARY_RELU));
    double w_relu[4] = {NAN, 0, 1e30, 0};
    CHECK(close_to(&o, w_relu, 1e-6, 0, "relu special"));
    CHECK_OK(lt_unary_forward(&o, &z, LT_UNARY_SIGMOID));
    double w_sig[4] = {NAN, 0, 1, 0};
    CHECK(close_to(&o, w_sig, 1e-6, 0, "sigmoid special"));
    CHECK_OK(lt_unary_forward(&o, &z, LT_UNARY_SILU));
    lt_tensor_get(&o, 3, &v); /* -1e30 * sigmoid(-1e30): no overflow, no NaN */
    CHECK(v == 0.0);
    lt_tensor_release(&x);
    lt_tensor_release(&y);
    lt_tensor_release(&z);
    lt_tensor_release(&o);
}

/* ---- binary ------------------------------------------------------------------------- */

static int64_t prod(int nd, const int64_t *s) {
    int64_t n = 1;
    for (int i = 0; i < nd; i++) n *= s[i];
    return n;
}

/* Inputs for op: positive bases for pow, divisors away from 0, distinct values for max/min. */
static lt_tensor binary_input(int op, int which, int nd, const int64_t *s) {
    if (op == LT_BINARY_POW && which == 0) return uniform(nd, s, 0.3, 2.0);
    if (op == LT_BINARY_POW && which == 1) return uniform(nd, s, -2.0, 2.0);
    if (op == LT_BINARY_DIV && which == 1) return uniform(nd, s, 0.5, 2.0);
    return randn(nd, s);
}

/* Reference forward and gradients over the broadcast shape (bn, bs). */
static void binary_reference(int op, const lt_tensor *a, const lt_tensor *b, const lt_tensor *d,
                             int bn, const int64_t *bs, double *out, double *ga, double *gb) {
    double *av = values(a), *bv = values(b), *dv = d ? values(d) : NULL;
    int64_t n = prod(bn, bs);
    memset(ga, 0, (size_t)(lt_tensor_numel(a) + 1) * sizeof(double));
    memset(gb, 0, (size_t)(lt_tensor_numel(b) + 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        int64_t ia = bindex(i, bn, bs, a), ib = bindex(i, bn, bs, b);
        out[i] = ref_binary(op, av[ia], bv[ib]);
        if (dv) {
            double da, db;
            ref_binary_grad(op, av[ia], bv[ib], &da, &db);
            ga[ia] += dv[i] * da;
            gb[ib] += dv[i] * db;
        }
    }
    free(av);
    free(bv);
    free(dv);
}

static void test_binary_shapes(int op, int na, const int64_t *sa, int nb, const int64_t *sb,
                               int bn, const int64_t *bs) {
    char what[96];
    snprintf(what, sizeof what, "binary op %d (a %dd, b %dd)", op, na, nb);
    lt_tensor a = binary_input(op, 0, na, sa), b = binary_input(op, 1, nb, sb);
    lt_tensor out = make(bn, bs), d = randn(bn, bs);
    lt_tensor da = make(na, sa), db = make(nb, sb);
    int64_t n = prod(bn, bs);
    double *want = malloc((size_t)(n + 1) * sizeof(double));
    double *ga = malloc((size_t)(lt_tensor_numel(&a) + 1) * sizeof(double));
    double *gb = malloc((size_t)(lt_tensor_numel(&b) + 1) * sizeof(double));
    binary_reference(op, &a, &b, &d, bn, bs, want, ga, gb);
    CHECK_OK(lt_binary_forward(&out, &a, &b, op));
    CHECK(close_to(&out, want, 2e-6, 1e-6, what));
    CHECK_OK(lt_binary_backward(&da, &db, &d, &a, &b, op));
    CHECK(close_to(&da, ga, 1e-4, 1e-5, what));
    CHECK(close_to(&db, gb, 1e-4, 1e-5, what));
    /* One side only. */
    lt_tensor_fill(&da, 7.0);
    CHECK_OK(lt_binary_backward(NULL, &db, &d, &a, &b, op));
    CHECK(close_to(&db, gb, 1e-4, 1e-5, what));
    CHECK_OK(lt_binary_backward(&da, NULL, &d, &a, &b, op));
    CHECK(close_to(&da, ga, 1e-4, 1e-5, what));
    /* In place into a when a already has the broadcast shape. */
    if (na == bn && prod(na, sa) == n) {
        CHECK_OK(lt_binary_forward(&a, &a, &b, op));
        CHECK(close_to(&a, want, 2e-6, 1e-6, what));
    }
    free(want);
    free(ga);
    free(gb);
    lt_tensor_release(&a);
    lt_tensor_release(&b);
    lt_tensor_release(&out);
    lt_tensor_release(&d);
    lt_tensor_release(&da);
    lt_tensor_release(&db);
}

static void test_binary(void) {
    for (int op = 0; op < LT_BINARY_COUNT; op++) {
        int64_t a1[3] = {3, 1, 7}, b1[2] = {5, 7}, o1[3] = {3, 5, 7};
        test_binary_shapes(op, 3, a1, 2, b1, 3, o1);
        test_binary_shapes(op, 2, b1, 3, a1, 3, o1);
        int64_t a2[2] = {4, 1}, b2[2] = {1, 6}, o2[2] = {4, 6};
        test_binary_shapes(op, 2, a2, 2, b2, 2, o2);
        int64_t s3[2] = {6, 5};
        test_binary_shapes(op, 2, s3, 2, s3, 2, s3);
        test_binary_shapes(op, 0, NULL, 2, s3, 2, s3);
        test_binary_shapes(op, 2, s3, 0, NULL, 2, s3);
        int64_t a4[2] = {0, 3}, b4[2] = {1, 3};
        test_binary_shapes(op, 2, a4, 2, b4, 2, a4);
        test_binary_shapes(op, 2, b4, 2, a4, 2, a4); /* gradient of b sums over nothing */
        int64_t a5[2] = {400, 130}, b5[1] = {130};
        test_binary_shapes(op, 2, a5, 1, b5, 2, a5); /* threaded map, vector reduction */
        int64_t a6[2] = {130, 1}, b6[2] = {130, 300};
        test_binary_shapes(op, 2, a6, 2, b6, 2, b6);
    }

    /* Gradients of broadcast operands over more than one slab of the temporary: b summed
       over 1100 rows in two slabs, a (3, 1, 1000) one slab per leading index. */
    int big_ops[3] = {LT_BINARY_MUL, LT_BINARY_POW, LT_BINARY_MAX};
    for (int k = 0; k < 3; k++) {
        int64_t a7[2] = {1100, 1000}, b7[1] = {1000};
        test_binary_shapes(big_ops[k], 2, a7, 1, b7, 2, a7);
        int64_t a8[3] = {3, 1, 1000}, b8[3] = {3, 700, 1000};
        test_binary_shapes(big_ops[k], 3, a8, 3, b8, 3, b8);
    }

    /* Strided and expanded operands: a transposed (7, 5), b a (5)-vector expanded to (7, 5),
       out a strided view. */
    for (int op = 0; op < LT_BINARY_COUNT; op++) {
        int64_t st[2] = {5, 7}, sv[1] = {5}, sw[2] = {7, 11}, se[2] = {7, 5};
        lt_tensor base = binary_input(op, 0, 2, st), a = {0};
        lt_tensor_transpose(&a, &base, 0, 1);
        lt_tensor bvec = binary_input(op, 1, 1, sv), b = {0};
        CHECK_OK(lt_tensor_expand(&b, &bvec, 2, se));
        lt_tensor wide = make(2, sw), out = {0};
        lt_tensor_slice(&out, &wide, 1, 0, 10, 2);
        double *want = malloc(36 * sizeof(double)), ga[36], gb[36];
        binary_reference(op, &a, &b, NULL, 2, se, want, ga, gb);
        CHECK_OK(lt_binary_forward(&out, &a, &b, op));
        CHECK(close_to(&out, want, 2e-6, 1e-6, "strided binary"));
        /* Gradients into strided views of the same layouts. */
        lt_tensor d = randn(2, se), dab = make(2, st), da = {0}, dbv = make(1, sv);
        lt_tensor_transpose(&da, &dab, 0, 1);
        double *gav = malloc(36 * sizeof(double)), *gbv = malloc(8 * sizeof(double));
        binary_reference(op, &a, &bvec, &d, 2, se, want, gav, gbv);
        CHECK_OK(lt_binary_backward(&da, &dbv, &d, &a, &bvec, op));
        CHECK(close_to(&da, gav, 1e-4, 1e-5, "strided binary da"));
        CHECK(close_to(&dbv, gbv, 1e-4, 1e-5, "strided binary db"));
        free(want);
        free(gav);
        free(gbv);
        lt_tensor_release(&base);
        lt_tensor_release(&a);
        lt_tensor_release(&bvec);
        lt_tensor_release(&b);
        lt_tensor_release(&wide);
        lt_tensor_release(&out);
        lt_tensor_release(&d);
        lt_tensor_release(&dab);
        lt_tensor_release(&da);
        lt_tensor_release(&dbv);
    }

    /* max/min ties split the gradient; NaN propagates. */
    int64_t s4[1] = {4};
    lt_tensor a = make(1, s4), b = make(1, s4), o = make(1, s4), d = make(1, s4);
    lt_tensor da = make(1, s4), db = make(1, s4);
    double av[4] = {1, 2, 3, NAN}, bv[4] = {1, 5, -1, 0};
    set_values(&a, av);
    set_values(&b, bv);
    lt_tensor_fill(&d, 2.0);
    CHECK_OK(lt_binary_forward(&o, &a, &b, LT_BINARY_MAX));
    double wmax[4] = {1, 5, 3, NAN};
    CHECK(close_to(&o, wmax, 0, 0, "max NaN"));
    CHECK_OK(lt_binary_forward(&o, &b, &a, LT_BINARY_MIN));
    double wmin[4] = {1, 2, -1, NAN};
    CHECK(close_to(&o, wmin, 0, 0, "min NaN"));
    CHECK_OK(lt_binary_backward(&da, &db, &d, &a, &b, LT_BINARY_MAX));
    double wda[4] = {1, 0, 2, 2}, wdb[4] = {1, 2, 0, 0};
    CHECK(close_to(&da, wda, 0, 0, "max tie da"));
    CHECK(close_to(&db, wdb, 0, 0, "max tie db"));
    /* pow at a zero base: d/db = 0 there, d/da = 0 at b = 0. */
    double pa[4] = {0, 0, 2, -2}, pb[4] = {2, 0, 0, 2};
    set_values(&a, pa);
    set_values(&b, pb);
    lt_tensor_fill(&d, 1.0);
    CHECK_OK(lt_binary_forward(&o, &a, &b, LT_BINARY_POW));
    double wp[4] = {0, 1, 1, 4};
    CHECK(close_to(&o, wp, 1e-6, 0, "pow edge"));
    CHECK_OK(lt_binary_backward(&da, &db, &d, &a, &b, LT_BINARY_POW));
    double wpa[4] = {0, 0, 0, -4}, wpb[4] = {0, 0, log(2.0), NAN};
    CHECK(close_to(&da, wpa, 1e-6, 0, "pow edge da"));
    CHECK(close_to(&db, wpb, 1e-6, 0, "pow edge db"));

    /* Backward written over its own inputs: da over a and db over b. */
    int64_t s2[2] = {3, 4};
    lt_tensor x = randn(2, s2), y = uniform(2, s2, 0.5, 2), g = randn(2, s2);
    double *want = malloc(13 * sizeof(double)), ga[13], gb[13];
    binary_reference(LT_BINARY_DIV, &x, &y, &g, 2, s2, want, ga, gb);
    CHECK_OK(lt_binary_backward(&x, &y, &g, &x, &y, LT_BINARY_DIV));
    CHECK(close_to(&x, ga, 1e-5, 1e-6, "in-place backward da"));
    CHECK(close_to(&y, gb, 1e-5, 1e-6, "in-place backward db"));
    /* Only da over an input: db must be computed from a before a is overwritten. */
    lt_tensor x2 = randn(2, s2), y2 = uniform(2, s2, 0.5, 2), dy2 = make(2, s2);
    binary_reference(LT_BINARY_DIV, &x2, &y2, &g, 2, s2, want, ga, gb);
    CHECK_OK(lt_binary_backward(&x2, &dy2, &g, &x2, &y2, LT_BINARY_DIV));
    CHECK(close_to(&x2, ga, 1e-5, 1e-6, "da over a"));
    CHECK(close_to(&dy2, gb, 1e-5, 1e-6, "db beside da over a"));
    free(want);
    lt_tensor_release(&x2);
    lt_tensor_release(&y2);
    lt_tensor_release(&dy2);
    lt_tensor_release(&x);
    lt_tensor_release(&y);
    lt_tensor_release(&g);
    lt_tensor_release(&a);
    lt_tensor_release(&b);
    lt_tensor_release(&o);
    lt_tensor_release(&d);
    lt_tensor_release(&da);
    lt_tensor_release(&db);
}

/* ---- scalar ------------------------------------------------------------------------- */

static void test_scalar(void) {
    double scalars[3] = {2.0, 0.75, -1.5};
    for (int op = 0; op < LT_BINARY_COUNT; op++)
        for (int rev = 0; rev < 2; rev++)
            for (int k = 0; k < 3; k++) {
                double s = scalars[k];
                if (op == LT_BINARY_POW && rev && s < 0) continue; /* negative base */
                lt_tensor base = {0};
                lt_tensor x = layout2d(6, 9, k, &base);
                double *xv = values(&x);
                for (int i = 0; i < 54; i++) {
                    if (op == LT_BINARY_POW && !rev) xv[i] = 0.3 + fabs(xv[i]);
                    if (op == LT_BINARY_DIV && rev) xv[i] = xv[i] >= 0 ? xv[i] + 0.5 : xv[i] - 0.5;
                }
                set_values(&x, xv);
                for (int i = 0; i < 54; i++) lt_tensor_get(&x, i, &xv[i]);
                int64_t sh[2] = {6, 9};
                lt_tensor out = make(2, sh), d = randn(2, sh), dx = make(2, sh);
                double *dv = values(&d), want[54], wantg[54];
                float sf = (float)s;
                for (int i = 0; i < 54; i++) {
                    double a = rev ? sf : xv[i], b = rev ? xv[i] : sf, ga, gb;
                    want[i] = ref_binary(op, a, b);
                    ref_binary_grad(op, a, b, &ga, &gb);
                    wantg[i] = dv[i] * (rev ? gb : ga);
                }
                char what[64];
                snprintf(what, sizeof what, "scalar op %d rev %d s %g", op, rev, s);
                CHECK_OK(lt_scalar_forward(&out, &x, s, op, rev));
                CHECK(close_to(&out, want, 2e-6, 1e-6, what));
                CHECK_OK(lt_scalar_backward(&dx, &d, &x, s, op, rev));
                CHECK(close_to(&dx, wantg, 2e-5, 2e-6, what));
                CHECK_OK(lt_scalar_forward(&x, &x, s, op, rev));
                CHECK(close_to(&x, want, 2e-6, 1e-6, what));
                free(xv);
                free(dv);
                lt_tensor_release(&base);
                lt_tensor_release(&x);
                lt_tensor_release(&out);
                lt_tensor_release(&d);
                lt_tensor_release(&dx);
            }
}

/* ---- axpby -------------------------------------------------------------------------- */

static void test_axpby(void) {
    int64_t s[2] = {300, 257}, sv[1] = {257};
    lt_tensor y = randn(2, s), x = randn(2, s), v = randn(1, sv);
    int64_t n = 300 * 257;
    double *yv = values(&y), *xv = values(&x), *vv = values(&v);
    double *want = malloc((size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; i++) want[i] = 0.5 * xv[i] - 2.0 * yv[i];
    CHECK_OK(lt_axpby(&y, 0.5, &x, -2.0));
    CHECK(close_to(&y, want, 1e-6, 1e-6, "axpby"));
    /* x broadcast along rows. */
    for (int64_t i = 0; i < n; i++) want[i] = want[i] + 3.0 * vv[i % 257];
    CHECK_OK(lt_axpby(&y, 3.0, &v, 1.0));
    CHECK(close_to(&y, want, 1e-6, 1e-6, "axpby broadcast"));
    /* beta == 0 never reads y; alpha == 0 never reads x. */
    lt_tensor_fill(&y, NAN);
    CHECK_OK(lt_axpby(&y, 2.0, &x, 0.0));
    for (int64_t i = 0; i < n; i++) want[i] = 2.0 * xv[i];
    CHECK(close_to(&y, want, 1e-6, 0, "axpby beta 0"));
    lt_tensor_fill(&x, NAN);
    CHECK_OK(lt_axpby(&y, 0.0, &x, 0.5));
    for (int64_t i = 0; i < n; i++) want[i] = xv[i];
    CHECK(close_to(&y, want, 1e-6, 0, "axpby alpha 0"));
    /* A strided y. */
    lt_tensor yt = {0}, xs = randn(2, (int64_t[2]){257, 300});
    lt_tensor_transpose(&yt, &y, 0, 1);
    double *ysv = values(&yt), *xsv = values(&xs);
    for (int64_t i = 0; i < n; i++) want[i] = xsv[i] + ysv[i];
    CHECK_OK(lt_axpby(&yt, 1.0, &xs, 1.0));
    CHECK(close_to(&yt, want, 1e-6, 1e-6, "axpby strided"));
    CHECK_FAILS(lt_axpby(&v, 1.0, &x, 1.0), LT_ERR_SHAPE, "(300, 257)");
    free(yv);
    free(xv);
    free(vv);
    free(ysv);
    free(xsv);
    free(want);
    lt_tensor_release(&y);
    lt_tensor_release(&x);
    lt_tensor_release(&v);
    lt_tensor_release(&yt);
    lt_tensor_release(&xs);
}

/* ---- reductions --------------------------------------------------------------------- */

/* Reference reduction of values xv (shape nd, s) over flags into keepdim form. */
static void ref_reduce(int op, const double *xv, int nd, const int64_t *s, const int *flags,
                       double *out, int64_t *count_out) {
    int64_t ks[LT_MAX_DIMS], n = prod(nd, s);
    for (int i = 0; i < nd; i++) ks[i] = flags[i] ? 1 : s[i];
    int64_t m = prod(nd, ks), R = m ? n / m : 0;
    for (int64_t i = 0; i < m; i++)
        out[i] = op == LT_REDUCE_MAX ? -INFINITY : op == LT_REDUCE_MIN ? INFINITY : 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t rem = i, k = 0, mul = 1;
        for (int d = nd - 1; d >= 0; d--) {
            int64_t c = rem % s[d];
            rem /= s[d];
            if (!flags[d]) k += c * mul;
            mul *= ks[d];
        }
        double v = xv[i];
        if (op == LT_REDUCE_MAX) out[k] = v > out[k] ? v : out[k];
        else if (op == LT_REDUCE_MIN) out[k] = v < out[k] ? v : out[k];
        else out[k] += v;
    }
    if (op == LT_REDUCE_MEAN)
        for (int64_t i = 0; i < m; i++) out[i] /= (double)R;
    if (count_out) *count_out = R;
}

/* Reduce x (any layout, shape nd/s) over `flags` with every op, forward and backward. */
static void check_reduce(const lt_tensor *x, const int *flags, const char *what) {
    int nd = x->ndim;
    int64_t ks[LT_MAX_DIMS], n = lt_tensor_numel(x);
    int32_t dims[LT_MAX_DIMS];
    int nr = 0;
    for (int i = 0; i < nd; i++) {
        ks[i] = flags[i] ? 1 : x->sizes[i];
        if (flags[i]) {
            dims[nr] = (nr % 2) ? i - nd : i; /* mix negative dims in */
            nr++;
        }
    }
    int64_t m = prod(nd, ks);
    double *xv = values(x);
    double *want = malloc((size_t)(m + 1) * sizeof(double));
    double *wantg = malloc((size_t)(n + 1) * sizeof(double));
    for (int op = 0; op < LT_REDUCE_COUNT; op++) {
        char w[160];
        snprintf(w, sizeof w, "%s op %d", what, op);
        ref_reduce(op, xv, nd, x->sizes, flags, want, NULL);
        lt_tensor out = make(nd, ks), d = randn(nd, ks), dx = make(nd, x->sizes);
        CHECK_OK(lt_reduce_forward(&out, x, nr, dims, op));
        CHECK(close_to(&out, want, 1e-6, 1e-5, w));
        /* Backward: every element of a reduced group gets dout (sum), dout / R (mean), or
           dout / ties at the extrema (max/min). */
        double *dv = values(&d), *ov = values(&out);
        int64_t R = m ? n / m : 0;
        double *ties = calloc((size_t)(m + 1), sizeof(double));
        for (int pass = 0; pass < 2; pass++)
            for (int64_t i = 0; i < n; i++) {
                int64_t rem = i, k = 0, mul = 1;
                for (int dd = nd - 1; dd >= 0; dd--) {
                    int64_t c = rem % x->sizes[dd];
                    rem /= x->sizes[dd];
                    if (!flags[dd]) k += c * mul;
                    mul *= ks[dd];
                }
                if (op == LT_REDUCE_SUM) wantg[i] = dv[k];
                else if (op == LT_REDUCE_MEAN) wantg[i] = dv[k] / (double)R;
                else if (pass == 0) ties[k] += (float)xv[i] == (float)ov[k];
                else wantg[i] = (float)xv[i] == (float)ov[k] ? dv[k] / ties[k] : 0;
            }
        CHECK_OK(lt_reduce_backward(&dx, &d, x, &out, op));
        CHECK(close_to(&dx, wantg, 1e-6, 1e-7, w));
        free(dv);
        free(ov);
        free(ties);
        lt_tensor_release(&out);
        lt_tensor_release(&d);
        lt_tensor_release(&dx);
    }
    free(xv);
    free(want);
    free(wantg);
}

static void test_reduce(void) {
    /* Every subset of dims of a 3-d tensor, contiguous and permuted. */
    int64_t s[3] = {4, 5, 6};
    lt_tensor x = randn(3, s), p = {0};
    int32_t perm[3] = {2, 0, 1};
    lt_tensor_permute(&p, &x, perm);
    for (int mask = 0; mask < 8; mask++) {
        int flags[3] = {mask & 1, (mask >> 1) & 1, (mask >> 2) & 1};
        char w[64];
        snprintf(w, sizeof w, "reduce 4x5x6 mask %d", mask);
        check_reduce(&x, flags, w);
        snprintf(w, sizeof w, "reduce permuted mask %d", mask);
        check_reduce(&p, flags, w);
    }
    /* Ties: small integers, so max/min backward shares dout. */
    int64_t st[2] = {6, 8};
    lt_tensor t = make(2, st);
    for (int i = 0; i < 48; i++) lt_tensor_set(&t, i, (double)((i * 7) % 3));
    int f01[2] = {1, 0}, f10[2] = {0, 1}, f11[2] = {1, 1};
    check_reduce(&t, f01, "ties dim 0");
    check_reduce(&t, f10, "ties dim 1");
    check_reduce(&t, f11, "ties all");
    /* Big shapes: chunked partial sums (few outputs), the vector loop (last dim kept), a
       stride-0 expanded input, threads. */
    int64_t b1[2] = {3, 70001}, b2[2] = {50003, 3}, b3[2] = {700, 301};
    lt_tensor big1 = randn(2, b1), big2 = randn(2, b2), big3 = randn(2, b3);
    check_reduce(&big1, f10, "3x70001 over dim 1");
    check_reduce(&big1, f11, "3x70001 over all");
    check_reduce(&big2, f01, "50003x3 over dim 0");
    check_reduce(&big3, f01, "700x301 over dim 0");
    check_reduce(&big3, f10, "700x301 over dim 1");
    int64_t b4[3] = {40, 5, 300};
    int f010[3] = {0, 1, 0};
    lt_tensor big4 = randn(3, b4);
    check_reduce(&big4, f010, "40x5x300 over dim 1 (blocks of outputs, unchunked)");
    lt_tensor_release(&big4);
    int64_t ev[1] = {301}, es[2] = {600, 301};
    lt_tensor vec = randn(1, ev), ex = {0};
    lt_tensor_expand(&ex, &vec, 2, es);
    check_reduce(&ex, f01, "expanded over dim 0");
    check_reduce(&ex, f10, "expanded over dim 1");
    /* 0-dim and 1-element. */
    lt_tensor z = make(0, NULL), zo = make(0, NULL);
    lt_tensor_fill(&z, 2.5);
    CHECK_OK(lt_reduce_forward(&zo, &z, 0, NULL, LT_REDUCE_SUM));
    double v;
    lt_tensor_get(&zo, 0, &v);
    CHECK(v == 2.5);
    /* Empty reductions: a sum is 0, a mean NaN, max an error. */
    int64_t e0[2] = {3, 0}, k0[2] = {3, 1};
    lt_tensor e = make(2, e0), eo = make(2, k0);
    int32_t d1[1] = {1};
    CHECK_OK(lt_reduce_forward(&eo, &e, 1, d1, LT_REDUCE_SUM));
    lt_tensor_get(&eo, 2, &v);
    CHECK(v == 0.0);
    CHECK_OK(lt_reduce_forward(&eo, &e, 1, d1, LT_REDUCE_MEAN));
    lt_tensor_get(&eo, 0, &v);
    CHECK(isnan(v));
    CHECK_FAILS(lt_reduce_forward(&eo, &e, 1, d1, LT_REDUCE_MAX), LT_ERR_SHAPE, "size 0");
    /* NaN propagates through max. */
    lt_tensor_set(&t, 13, NAN);
    int64_t k1[2] = {6, 1};
    lt_tensor to = make(2, k1);
    CHECK_OK(lt_reduce_forward(&to, &t, 1, d1, LT_REDUCE_MAX));
    lt_tensor_get(&to, 1, &v);
    CHECK(isnan(v));
    lt_tensor_get(&to, 0, &v);
    CHECK(v == 2.0);
    /* Argument errors. */
    int32_t dup[2] = {1, -1}, bad[1] = {3};
    CHECK_FAILS(lt_reduce_forward(&to, &t, 2, dup, LT_REDUCE_SUM), LT_ERR_ARG, "twice");
    CHECK_FAILS(lt_reduce_forward(&to, &t, 1, bad, LT_REDUCE_SUM), LT_ERR_ARG, "out of range");
    int32_t d0[1] = {0};
    CHECK_FAILS(lt_reduce_forward(&to, &t, 1, d0, LT_REDUCE_SUM), LT_ERR_SHAPE, "(6, 1)");
    lt_tensor_release(&x);
    lt_tensor_release(&p);
    lt_tensor_release(&t);
    lt_tensor_release(&big1);
    lt_tensor_release(&big2);
    lt_tensor_release(&big3);
    lt_tensor_release(&vec);
    lt_tensor_release(&ex);
    lt_tensor_release(&z);
    lt_tensor_release(&zo);
    lt_tensor_release(&e);
    lt_tensor_release(&eo);
    lt_tensor_release(&to);
}

static void test_argmax(void) {
    int64_t s[2] = {5, 7};
    lt_tensor x = make(2, s);
    double xv[35];
    for (int i = 0; i < 35; i++) xv[i] = (double)((i * 11) % 6); /* ties everywhere */
    xv[8] = NAN; /* row 1 holds two NaNs: the first one wins */
    xv[10] = NAN;
    set_values(&x, xv);
    for (int dim = 0; dim < 2; dim++) {
        int64_t os[2] = {dim ? 5 : 1, dim ? 1 : 7};
        lt_tensor o = {0};
        lt_tensor_empty(&o, LT_DTYPE_I64, 2, os, LT_DEVICE_CPU, 0);
        CHECK_OK(lt_argmax(&o, &x, dim - 2));
        int ok = 1;
        for (int64_t m = 0; m < os[0] * os[1]; m++) {
            int64_t best = -1;
            double bv = 0;
            for (int64_t j = 0; j < s[dim]; j++) {
                int64_t i = dim ? m * 7 + j : j * 7 + m;
                if (best < 0 || (!isnan(bv) && (xv[i] > bv || isnan(xv[i])))) {
                    best = j;
                    bv = xv[i];
                }
            }
            double got;
            lt_tensor_get(&o, m, &got);
            if ((int64_t)got != best) {
                fprintf(stderr, "argmax dim %d, output %lld: got %g, want %lld\n", dim,
                        (long long)m, got, (long long)best);
                ok = 0;
            }
        }
        CHECK(ok);
        lt_tensor_release(&o);
    }
    /* A transposed view, a big row. */
    lt_tensor t = {0}, o = {0};
    lt_tensor_transpose(&t, &x, 0, 1);
    int64_t os[2] = {7, 1};
    lt_tensor_empty(&o, LT_DTYPE_I64, 2, os, LT_DEVICE_CPU, 0);
    CHECK_OK(lt_argmax(&o, &t, 1));
    double got;
    lt_tensor_get(&o, 1, &got); /* column 1: values 5, 4, NaN, ... -> the NaN at row 1 */
    CHECK(got == 1.0);
    int64_t bs[1] = {100003}, bo[1] = {1};
    lt_tensor big = randn(1, bs), bout = {0};
    lt_tensor_set(&big, 77777, 100.0);
    lt_tensor_empty(&bout, LT_DTYPE_I64, 1, bo, LT_DEVICE_CPU, 0);
    CHECK_OK(lt_argmax(&bout, &big, 0));
    lt_tensor_get(&bout, 0, &got);
    CHECK(got == 77777.0);
    CHECK_FAILS(lt_argmax(&o, &t, 0), LT_ERR_SHAPE, "(7, 1)");
    lt_tensor f = make(2, os);
    CHECK_FAILS(lt_argmax(&f, &t, 1), LT_ERR_DTYPE, "i64");
    lt_tensor_release(&x);
    lt_tensor_release(&t);
    lt_tensor_release(&o);
    lt_tensor_release(&big);
    lt_tensor_release(&bout);
    lt_tensor_release(&f);
}

static void test_sum_squares_nonfinite(void) {
    int64_t s[3] = {37, 41, 43};
    lt_tensor x = randn(3, s), p = {0};
    int32_t perm[3] = {1, 2, 0};
    lt_tensor_permute(&p, &x, perm);
    lt_tensor sl = {0};
    lt_tensor_slice(&sl, &p, 1, 1, 43, 3);
    const lt_tensor *views[3] = {&x, &p, &sl};
    for (int k = 0; k < 3; k++) {
        double *v = values(views[k]), want = 0, got = -1;
        int64_t n = lt_tensor_numel(views[k]);
        for (int64_t i = 0; i < n; i++) want += v[i] * v[i];
        CHECK_OK(lt_sum_squares(views[k], &got));
        CHECK(fabs(got - want) <= 1e-12 * want);
        int32_t bad = -1;
        CHECK_OK(lt_has_nonfinite(views[k], &bad));
        CHECK(bad == 0);
        free(v);
    }
    int32_t bad = 0;
    lt_tensor_set(&sl, 1000, INFINITY);
    CHECK_OK(lt_has_nonfinite(&sl, &bad));
    CHECK(bad == 1);
    lt_tensor_set(&sl, 1000, 0.0);
    lt_tensor_set(&x, 5, NAN);
    CHECK_OK(lt_has_nonfinite(&x, &bad));
    CHECK(bad == 1);
    double ss = 0;
    CHECK_OK(lt_sum_squares(&x, &ss));
    CHECK(isnan(ss));
    lt_tensor e = make(1, (int64_t[1]){0});
    CHECK_OK(lt_sum_squares(&e, &ss));
    CHECK(ss == 0.0);
    CHECK_OK(lt_has_nonfinite(&e, &bad));
    CHECK(bad == 0);
    lt_tensor_release(&x);
    lt_tensor_release(&p);
    lt_tensor_release(&sl);
    lt_tensor_release(&e);
}

/* ---- softmax ------------------------------------------------------------------------ */

static void check_softmax(const lt_tensor *x, const char *what) {
    int nd = x->ndim;
    int64_t n = lt_tensor_numel(x), cols = nd ? x->sizes[nd - 1] : 1;
    int64_t rows = cols ? n / cols : 0;
    double *xv = values(x);
    double *ys = malloc((size_t)(n + 1) * sizeof(double)), *yl = malloc((size_t)(n + 1) * sizeof(double));
    double *gs = malloc((size_t)(n + 1) * sizeof(double)), *gl = malloc((size_t)(n + 1) * sizeof(double));
    lt_tensor d = randn(nd, x->sizes);
    double *dv = values(&d);
    for (int64_t r = 0; r < rows; r++) {
        const double *xr = xv + r * cols;
        double m = -INFINITY, s = 0, dot = 0, sd = 0;
        for (int64_t j = 0; j < cols; j++) m = xr[j] > m ? xr[j] : m;
        for (int64_t j = 0; j < cols; j++) s += exp(xr[j] - m);
        for (int64_t j = 0; j < cols; j++) {
            ys[r * cols + j] = exp(xr[j] - m) / s;
            yl[r * cols + j] = xr[j] - m - log(s);
            dot += dv[r * cols + j] * ys[r * cols + j];
            sd += dv[r * cols + j];
        }
        for (int64_t j = 0; j < cols; j++) {
            gs[r * cols + j] = ys[r * cols + j] * (dv[r * cols + j] - dot);
            gl[r * cols + j] = dv[r * cols + j] - ys[r * cols + j] * sd;
        }
    }
    lt_tensor y = make(nd, x->sizes), g = make(nd, x->sizes);
    CHECK_OK(lt_softmax_forward(&y, x));
    CHECK(close_to(&y, ys, 1e-5, 1e-7, what));
    CHECK_OK(lt_softmax_backward(&g, &d, &y));
    CHECK(close_to(&g, gs, 1e-4, 1e-6, what));
    CHECK_OK(lt_log_softmax_forward(&y, x));
    CHECK(close_to(&y, yl, 1e-5, 1e-5, what));
    CHECK_OK(lt_log_softmax_backward(&g, &d, &y));
    CHECK(close_to(&g, gl, 1e-4, 1e-6, what));
    /* In place: dout overwritten by its gradient, then x by its log-softmax. */
    CHECK_OK(lt_log_softmax_backward(&d, &d, &y));
    CHECK(close_to(&d, gl, 1e-4, 1e-6, what));
    lt_tensor xc = make(nd, x->sizes);
    lt_tensor_copy(&xc, x);
    CHECK_OK(lt_softmax_forward(&xc, &xc));
    CHECK(close_to(&xc, ys, 1e-5, 1e-7, what));
    free(xv);
    free(ys);
    free(yl);
    free(gs);
    free(gl);
    free(dv);
    lt_tensor_release(&d);
    lt_tensor_release(&y);
    lt_tensor_release(&g);
    lt_tensor_release(&xc);
}

static void test_softmax(void) {
    int64_t s1[3] = {2, 3, 7}, s2[2] = {3, 1}, s3[2] = {2, 0}, s4[2] = {80, 1000};
    lt_tensor a = randn(3, s1), b = randn(2, s2), c = make(2, s3), d = randn(2, s4);
    check_softmax(&a, "softmax 2x3x7");
    check_softmax(&b, "softmax 3x1");
    check_softmax(&c, "softmax 2x0");
    check_softmax(&d, "softmax 80x1000 (threads)");
    lt_tensor z = make(0, NULL);
    lt_tensor_fill(&z, 3.0);
    check_softmax(&z, "softmax 0-dim");
    /* Strided rows and a transposed (non-unit column stride) view. */
    lt_tensor base = {0}, tr = {0}, big = {0}, rows = {0};
    lt_tensor v = layout2d(9, 13, 2, &base);
    check_softmax(&v, "softmax step-2 columns");
    lt_tensor_transpose(&tr, &a, 1, 2);
    check_softmax(&tr, "softmax transposed");
    int64_t sb[2] = {11, 40};
    big = randn(2, sb);
    lt_tensor_narrow(&rows, &big, 1, 3, 17);
    check_softmax(&rows, "softmax row stride 40");
    /* Large logits stay finite. */
    int64_t s5[1] = {3};
    lt_tensor e = make(1, s5), y = make(1, s5);
    double ev[3] = {1000, -1000, 999};
    set_values(&e, ev);
    CHECK_OK(lt_softmax_forward(&y, &e));
    double w[3] = {1 / (1 + exp(-1.0)), 0, exp(-1.0) / (1 + exp(-1.0))};
    CHECK(close_to(&y, w, 1e-6, 1e-30, "softmax large"));
    CHECK_OK(lt_log_softmax_forward(&y, &e));
    double wl[3] = {-log1p(exp(-1.0)), -2000 - log1p(exp(-1.0)), -1 - log1p(exp(-1.0))};
    CHECK(close_to(&y, wl, 1e-6, 1e-4, "log_softmax large"));
    lt_tensor_release(&a);
    lt_tensor_release(&b);
    lt_tensor_release(&c);
    lt_tensor_release(&d);
    lt_tensor_release(&z);
    lt_tensor_release(&base);
    lt_tensor_release(&v);
    lt_tensor_release(&tr);
    lt_tensor_release(&big);
    lt_tensor_release(&rows);
    lt_tensor_release(&e);
    lt_tensor_release(&y);
}

/* ---- errors ------------------------------------------------------------------------- */

static void test_errors(void) {
    int64_t s[2] = {3, 4}, s2[2] = {2, 4}, s5[2] = {3, 5};
    lt_tensor a = randn(2, s), b = randn(2, s2), o = make(2, s), o5 = make(2, s5);
    lt_tensor i = {0};
    lt_tensor_zeros(&i, LT_DTYPE_I64, 2, s, LT_DEVICE_CPU, 0);
    CHECK_FAILS(lt_binary_forward(&o, &a, &b, LT_BINARY_ADD), LT_ERR_SHAPE, "(3, 4) (a) and (2, 4)");
    CHECK_FAILS(lt_binary_forward(&o5, &a, &a, LT_BINARY_MUL), LT_ERR_SHAPE,
                "out has shape (3, 5) but a (3, 4) and b (3, 4) broadcast to (3, 4)");
    CHECK_FAILS(lt_binary_forward(&o, &a, &i, LT_BINARY_MUL), LT_ERR_DTYPE,
                "mul: b must be f32, bf16 or f16, got i64");
    CHECK_FAILS(lt_unary_forward(&o, &i, LT_UNARY_EXP), LT_ERR_DTYPE, "exp: x must be f32");
    CHECK_FAILS(lt_unary_forward(&i, &a, LT_UNARY_EXP), LT_ERR_DTYPE, "exp: out must be f32");
    CHECK_FAILS(lt_unary_forward(&o, &a, 99), LT_ERR_ARG, "unknown unary op");
    CHECK_FAILS(lt_binary_forward(&o, &a, &a, -1), LT_ERR_ARG, "unknown binary op");
    CHECK_FAILS(lt_unary_forward(&o5, &a, LT_UNARY_NEG), LT_ERR_SHAPE, "(3, 5)");
    CHECK_FAILS(lt_unary_forward(&o, NULL, LT_UNARY_NEG), LT_ERR_ARG, "x is NULL");
    CHECK_FAILS(lt_scalar_forward(&o, &i, 1.0, LT_BINARY_ADD, 0), LT_ERR_DTYPE, "add: x must be f32");
    CHECK_FAILS(lt_softmax_forward(&o5, &a), LT_ERR_SHAPE, "(3, 5)");
    CHECK_FAILS(lt_sum_squares(&i, &(double){0}), LT_ERR_DTYPE, "sum_squares: x must be f32");
    /* A broadcast (stride-0) output is refused. */
    lt_tensor row = randn(1, (int64_t[1]){4}), ex = {0};
    lt_tensor_expand(&ex, &row, 2, s);
    CHECK_FAILS(lt_unary_forward(&ex, &a, LT_UNARY_NEG), LT_ERR_ARG, "broadcast view");
    /* Gradient shapes. */
    lt_tensor d = randn(2, s), db = make(2, s2);
    CHECK_FAILS(lt_binary_backward(NULL, &db, &d, &a, &a, LT_BINARY_MUL), LT_ERR_SHAPE, "db has shape (2, 4)");
    CHECK_FAILS(lt_binary_backward(NULL, NULL, &o5, &a, &a, LT_BINARY_MUL), LT_ERR_SHAPE, "dout has shape (3, 5)");
    int64_t k[2] = {1, 5};
    lt_tensor dk = randn(2, k);
    CHECK_FAILS(lt_reduce_backward(&o, &dk, &a, NULL, LT_REDUCE_SUM), LT_ERR_SHAPE, "keepdim");
    CHECK_FAILS(lt_reduce_backward(&o, &dk, &a, NULL, LT_REDUCE_MAX), LT_ERR_SHAPE, "keepdim");
    lt_tensor_release(&a);
    lt_tensor_release(&b);
    lt_tensor_release(&o);
    lt_tensor_release(&o5);
    lt_tensor_release(&i);
    lt_tensor_release(&row);
    lt_tensor_release(&ex);
    lt_tensor_release(&d);
    lt_tensor_release(&db);
    lt_tensor_release(&dk);
}

/* Results must not depend on the thread count (fixed chunking, ordered partials). */
static void test_thread_invariance(void) {
    int64_t s[2] = {2, 200003}, k[2] = {2, 1};
    lt_tensor x = randn(2, s), o1 = make(2, k), o2 = make(2, k);
    int32_t d[1] = {1};
    int nt = lt_get_num_threads();
    lt_set_num_threads(1);
    CHECK_OK(lt_reduce_forward(&o1, &x, 1, d, LT_REDUCE_SUM));
    double s1 = 0, s2 = 0;
    lt_sum_squares(&x, &s1);
    lt_set_num_threads(4);
    CHECK_OK(lt_reduce_forward(&o2, &x, 1, d, LT_REDUCE_SUM));
    lt_sum_squares(&x, &s2);
    lt_set_num_threads(nt);
    int eq = 0;
    CHECK_OK(lt_tensor_equal(&o1, &o2, &eq));
    CHECK(eq == 1);
    CHECK(s1 == s2);
    lt_tensor_release(&x);
    lt_tensor_release(&o1);
    lt_tensor_release(&o2);
}

int main(void) {
    lt_rng_seed(&rng, 20240611);
    test_unary();
    test_binary();
    test_scalar();
    test_axpby();
    test_reduce();
    test_argmax();
    test_sum_squares_nonfinite();
    test_softmax();
    test_errors();
    test_thread_invariance();
    lt_memory_stats st;
    lt_memory_get_stats(LT_DEVICE_CPU, 0, &st);
    CHECK(st.current_bytes == 0); /* every tensor and scratch buffer released */
    if (st.current_bytes) fprintf(stderr, "leaked %lld bytes\n", (long long)st.current_bytes);
    return check_summary();
}
