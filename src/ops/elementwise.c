/* elementwise.c - unary, binary and scalar maps with numpy broadcasting, their gradients,
 * and axpby.
 *
 * Every op runs through one strided driver. The operands are described over a common
 * iteration shape (a broadcast input gets stride 0 where it has size 1 or no dim), dims of
 * size 1 are dropped, the rest are ordered by the output's strides and merged wherever every
 * operand nests, and the last dim is the inner run handed to a kernel loop. Contiguous
 * same-shape tensors become one flat run; it is cut into chunks spread over threads, and
 * each chunk is a unit-stride `omp simd` loop the compiler vectorises.
 *
 * Aliasing: an output may be an input exactly (same storage, offset, shape and strides):
 * each element is read before the same element is written. Partial overlap is undefined.
 * An output must not be a broadcast view (stride 0 over a dim of size > 1): LT_ERR_ARG.
 *
 * The per-element formulas and their derivatives are ops/elementwise_math.h, which
 * cuda/elementwise.cu includes too.
 *
 * Edge-case semantics (documented here, tested in tests/c/test_elementwise.c):
 *   - relu(NaN) = NaN; relu'(0) = 0; abs'(0) = 0.
 *   - maximum/minimum propagate NaN; their gradient goes to the larger/smaller operand and
 *     a tie splits dout half/half (the sum of both gradients stays dout).
 *   - pow(a, b) is C's powf: a negative base with a non-integer exponent gives NaN;
 *     d/da = b * a^(b-1), taken as 0 where b == 0 (so 0^0 has gradient 0, not NaN);
 *     d/db = a^b * log(a), taken as 0 where a == 0 and b >= 0 (the one-sided limit), and
 *     NaN where a < 0 (no real derivative exists).
 */
#include <stdio.h>

#include "core/internal.h"
#include "lt_ops.h"
#include "ops/elementwise_math.h"
#include "ops/lowp.h"
#include "ops/support.h"

/* The loops around the formulas are inlined with them (LT_EW_INLINE, elementwise_math.h). */
#define EW_INLINE LT_EW_INLINE

/* Up to four operands (output first): dx, dout, a, b in the gradient maps. */
enum { EW_MAX_OPS = 4 };
/* Elements per task of a flat run: 32 KB of f32, large enough that the per-task index
   arithmetic is noise and small enough to balance threads. */
enum { EW_CHUNK = 8192 };

/* ---- the strided driver ------------------------------------------------------------- */

typedef struct ew_geom {
    int nops;
    int ndim;
    int64_t sizes[LT_MAX_DIMS];
    int64_t strides[EW_MAX_OPS][LT_MAX_DIMS];
    float *base[EW_MAX_OPS];
} ew_geom;

/* One inner run of n elements: operand k starts at p[k] and steps s[k] elements. */
typedef void (*ew_run_fn)(const void *ctx, float *const *p, const int64_t *s, int64_t n);

static void ew_init(ew_geom *g, int ndim, const int64_t *sizes) {
    memset(g, 0, sizeof *g);
    g->ndim = ndim;
    for (int i = 0; i < ndim; i++) g->sizes[i] = sizes[i];
}

/* Add a tensor operand, right-aligned against the iteration shape (numpy broadcasting). */
static void ew_operand(ew_geom *g, const lt_tensor *t) {
    int k = g->nops++;
    g->base[k] = (float *)lt_tensor_data(t);
    int lead = g->ndim - t->ndim;
    for (int i = 0; i < g->ndim; i++) {
        int j = i - lead;
        g->strides[k][i] = (j < 0 || t->sizes[j] == 1) ? 0 : t->strides[j];
    }
}

/* Add one number broadcast everywhere. */
static void ew_scalar(ew_geom *g, const float *p) {
    int k = g->nops++;
    g->base[k] = (float *)p;
    for (int i = 0; i < g->ndim; i++) g->strides[k][i] = 0;
}

/* Drop size-1 dims, order the rest by the output's strides (largest first, so the inner
   run follows the output's memory order), and merge neighbours that nest in every
   operand. Leaves at least one dim. */
static void ew_simplify(ew_geom *g) {
    int nd = 0;
    for (int i = 0; i < g->ndim; i++) {
        if (g->sizes[i] == 1) continue;
        g->sizes[nd] = g->sizes[i];
        for (int k = 0; k < g->nops; k++) g->strides[k][nd] = g->strides[k][i];
        nd++;
    }
    for (int i = 1; i < nd; i++) { /* insertion sort: stable, nd <= 8 */
        for (int j = i; j > 0 && g->strides[0][j - 1] < g->strides[0][j]; j--) {
            int64_t t = g->sizes[j];
            g->sizes[j] = g->sizes[j - 1];
            g->sizes[j - 1] = t;
            for (int k = 0; k < g->nops; k++) {
                t = g->strides[k][j];
                g->strides[k][j] = g->strides[k][j - 1];
                g->strides[k][j - 1] = t;
            }
        }
    }
    int m = 0;
    for (int i = 0; i < nd; i++) {
        if (m > 0) {
            int nest = 1;
            for (int k = 0; k < g->nops && nest; k++)
                nest = g->strides[k][m - 1] == g->strides[k][i] * g->sizes[i];
            if (nest) {
                g->sizes[m - 1] *= g->sizes[i];
                for (int k = 0; k < g->nops; k++) g->strides[k][m - 1] = g->strides[k][i];
                continue;
            }
        }
        g->sizes[m] = g->sizes[i];
        for (int k = 0; k < g->nops; k++) g->strides[k][m] = g->strides[k][i];
        m++;
    }
    if (m == 0) {
        g->sizes[0] = 1;
        for (int k = 0; k < g->nops; k++) g->strides[k][0] = 0;
        m = 1;
    }
    g->ndim = m;
}

/* Run fn over every position. Tasks are (outer position, chunk of the inner dim). */
static void ew_execute(const ew_geom *g, ew_run_fn fn, const void *ctx) {
    int nd = g->ndim;
    int64_t inner = g->sizes[nd - 1];
    int64_t outer = 1;
    for (int i = 0; i < nd - 1; i++) outer *= g->sizes[i];
    if (inner == 0 || outer == 0) return;
    int64_t nchunks = (inner + EW_CHUNK - 1) / EW_CHUNK;
    int64_t tasks = outer * nchunks;
    int par = tasks > 1 && outer * inner >= LT_PAR_MIN_WORK;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t o = t / nchunks, start = (t % nchunks) * EW_CHUNK;
        int64_t n = inner - start < EW_CHUNK ? inner - start : EW_CHUNK;
        int64_t off[EW_MAX_OPS] = {0}, s[EW_MAX_OPS];
        float *p[EW_MAX_OPS];
        for (int i = nd - 2; i >= 0; i--) {
            int64_t idx = o % g->sizes[i];
            o /= g->sizes[i];
            for (int k = 0; k < g->nops; k++) off[k] += idx * g->strides[k][i];
        }
        for (int k = 0; k < g->nops; k++) {
            s[k] = g->strides[k][nd - 1];
            p[k] = g->base[k] + off[k] + start * s[k];
        }
        fn(ctx, p, s, n);
    }
}

/* ---- argument checks ---------------------------------------------------------------- */

/* These run before the device dispatch, so they hold on every device. Dtypes are the
   support table's (ops/support.c: f32 on the CPU; f32, bf16 or f16 on a CUDA device, where
   cuda/elementwise.cu computes in f32 and rounds to each output's dtype). Outputs go
   through lt_op_check_out, which also puts them on the device of the op's first input; the
   other inputs are checked against them with lt_check_same_device. */

/* The numpy broadcast of a's and b's shapes into (nd, sizes). */
static int broadcast_shape(const lt_tensor *a, const lt_tensor *b, const char *op, int *nd,
                           int64_t *sizes) {
    int n = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int i = 0; i < n; i++) {
        int ia = a->ndim - n + i, ib = b->ndim - n + i;
        int64_t sa = ia >= 0 ? a->sizes[ia] : 1, sb = ib >= 0 ? b->sizes[ib] : 1;
        if (sa == sb || sb == 1) {
            sizes[i] = sa;
        } else if (sa == 1) {
            sizes[i] = sb;
        } else {
            char ba[128], bb[128];
            return lt_fail(LT_ERR_SHAPE,
                           "%s: shapes %s (a) and %s (b) do not broadcast (dim %d: %lld vs %lld)",
                           op, lt_shape_str(a, ba, sizeof ba), lt_shape_str(b, bb, sizeof bb), i,
                           (long long)sa, (long long)sb);
        }
    }
    *nd = n;
    return LT_OK;
}

static int has_shape(const lt_tensor *t, int nd, const int64_t *sizes) {
    if (t->ndim != nd) return 0;
    for (int i = 0; i < nd; i++)
        if (t->sizes[i] != sizes[i]) return 0;
    return 1;
}

static const char *sizes_str(int nd, const int64_t *sizes, char *buf, size_t len) {
    lt_tensor tmp;
    tmp.ndim = nd;
    for (int i = 0; i < nd; i++) tmp.sizes[i] = sizes[i];
    return lt_shape_str(&tmp, buf, len);
}

/* ---- unary ops ---------------------------------------------------------------------- */

EW_INLINE void unary_loop(int op, float *o, int64_t so, const float *x, int64_t sx, int64_t n) {
    if (so == 1 && sx == 1) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) o[i] = lt_ew_unary(op, x[i]);
    } else {
        for (int64_t i = 0; i < n; i++) o[i * so] = lt_ew_unary(op, x[i * sx]);
    }
}

/* p: out, x. */
static void unary_run(const void *ctx, float *const *p, const int64_t *s, int64_t n) {
    switch (*(const int *)ctx) {
    case LT_UNARY_NEG: unary_loop(LT_UNARY_NEG, p[0], s[0], p[1], s[1], n); break;
    case LT_UNARY_EXP: unary_loop(LT_UNARY_EXP, p[0], s[0], p[1], s[1], n); break;
    case LT_UNARY_LOG: unary_loop(LT_UNARY_LOG, p[0], s[0], p[1], s[1], n); break;
    case LT_UNARY_SQRT: unary_loop(LT_UNARY_SQRT, p[0], s[0], p[1], s[1], n); break;
    case LT_UNARY_RSQRT: unary_loop(LT_UNARY_RSQRT, p[0], s[0], p[1], s[1], n); break;
    case LT_UNARY_ABS: unary_loop(LT_UNARY_ABS, p[0], s[0], p[1], s[1], n); break;
    case LT_UNARY_SQUARE: unary_loop(LT_UNARY_SQUARE, p[0], s[0], p[1], s[1], n); break;
    case LT_UNARY_RECIPROCAL: unary_loop(LT_UNARY_RECIPROCAL, p[0], s[0], p[1], s[1], n); break;
    case LT_UNARY_SIGMOID: unary_loop(LT_UNARY_SIGMOID, p[0], s[0], p[1], s[1], n); break;
    case LT_UNARY_SILU: unary_loop(LT_UNARY_SILU, p[0], s[0], p[1], s[1], n); break;
    case LT_UNARY_TANH: unary_loop(LT_UNARY_TANH, p[0], s[0], p[1], s[1], n); break;
    case LT_UNARY_RELU: unary_loop(LT_UNARY_RELU, p[0], s[0], p[1], s[1], n); break;
    case LT_UNARY_GELU: unary_loop(LT_UNARY_GELU, p[0], s[0], p[1], s[1], n); break;
    case LT_UNARY_SIN: unary_loop(LT_UNARY_SIN, p[0], s[0], p[1], s[1], n); break;
    case LT_UNARY_COS: unary_loop(LT_UNARY_COS, p[0], s[0], p[1], s[1], n); break;
    default: break;
    }
}

EW_INLINE void unary_grad_loop(int op, float *dx, int64_t sdx, const float *d, int64_t sd,
                               const float *x, int64_t sx, int64_t n) {
    if (sdx == 1 && sd == 1 && sx == 1) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) dx[i] = lt_ew_unary_grad(op, d[i], x[i]);
    } else {
        for (int64_t i = 0; i < n; i++) dx[i * sdx] = lt_ew_unary_grad(op, d[i * sd], x[i * sx]);
    }
}

/* p: dx, dout, x. */
static void unary_grad_run(const void *ctx, float *const *p, const int64_t *s, int64_t n) {
    switch (*(const int *)ctx) {
#define UG(OP) unary_grad_loop(OP, p[0], s[0], p[1], s[1], p[2], s[2], n)
    case LT_UNARY_NEG: UG(LT_UNARY_NEG); break;
    case LT_UNARY_EXP: UG(LT_UNARY_EXP); break;
    case LT_UNARY_LOG: UG(LT_UNARY_LOG); break;
    case LT_UNARY_SQRT: UG(LT_UNARY_SQRT); break;
    case LT_UNARY_RSQRT: UG(LT_UNARY_RSQRT); break;
    case LT_UNARY_ABS: UG(LT_UNARY_ABS); break;
    case LT_UNARY_SQUARE: UG(LT_UNARY_SQUARE); break;
    case LT_UNARY_RECIPROCAL: UG(LT_UNARY_RECIPROCAL); break;
    case LT_UNARY_SIGMOID: UG(LT_UNARY_SIGMOID); break;
    case LT_UNARY_SILU: UG(LT_UNARY_SILU); break;
    case LT_UNARY_TANH: UG(LT_UNARY_TANH); break;
    case LT_UNARY_RELU: UG(LT_UNARY_RELU); break;
    case LT_UNARY_GELU: UG(LT_UNARY_GELU); break;
    case LT_UNARY_SIN: UG(LT_UNARY_SIN); break;
    case LT_UNARY_COS: UG(LT_UNARY_COS); break;
#undef UG
    default: break;
    }
}

static int check_unary_op(int op, const char *fn) {
    if (op < 0 || op >= LT_UNARY_COUNT)
        return lt_fail(LT_ERR_ARG, "%s: unknown unary op %d (0..%d)", fn, op, LT_UNARY_COUNT - 1);
    return LT_OK;
}

int lt_unary_forward(lt_tensor *out, const lt_tensor *x, int op) {
    LT_TRY(check_unary_op(op, "unary_forward"));
    const int id = LT_OP_NEG + op;
    const char *name = lt_op_name(id);
    LT_TRY(lt_op_check_dtype(id, LT_OP_ROLE_MAIN, x, name, "x"));
    LT_TRY(lt_op_check_out(id, out, name, "out", x, "x"));
    LT_TRY(lt_check_same_shape(out, x, name, "out", "x"));
    LT_DISPATCH_CUDA(out, lt_cuda_unary_forward(out, x, op));
    if (lt_lowp_cpu(x) || lt_lowp_cpu(out)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &x);
        lt_lowp_out(&lp, &out);
        int st = lt_lowp_begin(&lp, name);
        if (st == LT_OK) st = lt_unary_forward(out, x, op);
        return lt_lowp_end(&lp, st);
    }
    if (lt_tensor_numel(x) == 0) return LT_OK;
    ew_geom g;
    ew_init(&g, out->ndim, out->sizes);
    ew_operand(&g, out);
    ew_operand(&g, x);
    ew_simplify(&g);
    ew_execute(&g, unary_run, &op);
    return LT_OK;
}

int lt_unary_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *x, int op) {
    LT_TRY(check_unary_op(op, "unary_backward"));
    char name[64];
    const int id = LT_OP_NEG + op;
    snprintf(name, sizeof name, "%s_backward", lt_op_name(id));
    LT_TRY(lt_op_check_dtype(id, LT_OP_ROLE_MAIN, dout, name, "dout"));
    LT_TRY(lt_op_check_dtype(id, LT_OP_ROLE_MAIN, x, name, "x"));
    LT_TRY(lt_op_check_out(id, dx, name, "dx", dout, "dout"));
    LT_TRY(lt_check_same_shape(dout, x, name, "dout", "x"));
    LT_TRY(lt_check_same_shape(dx, x, name, "dx", "x"));
    LT_TRY(lt_check_same_device(x, dx, name, "x", "dx"));
    LT_DISPATCH_CUDA(dx, lt_cuda_unary_backward(dx, dout, x, op));
    if (lt_lowp_cpu(dout) || lt_lowp_cpu(x) || lt_lowp_cpu(dx)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &dout);
        lt_lowp_in(&lp, &x);
        lt_lowp_out(&lp, &dx);
        int st = lt_lowp_begin(&lp, name);
        if (st == LT_OK) st = lt_unary_backward(dx, dout, x, op);
        return lt_lowp_end(&lp, st);
    }
    if (lt_tensor_numel(x) == 0) return LT_OK;
    ew_geom g;
    ew_init(&g, dx->ndim, dx->sizes);
    ew_operand(&g, dx);
    ew_operand(&g, dout);
    ew_operand(&g, x);
    ew_simplify(&g);
    ew_execute(&g, unary_grad_run, &op);
    return LT_OK;
}

/* ---- binary ops --------------------------------------------------------------------- */

EW_INLINE void binary_loop(int op, float *o, int64_t so, const float *a, int64_t sa,
                           const float *b, int64_t sb, int64_t n) {
    if (so == 1 && sa == 1 && sb == 1) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) o[i] = lt_ew_binary(op, a[i], b[i]);
    } else if (so == 1 && sa == 1 && sb == 0) {
        float bv = b[0];
#pragma omp simd
        for (int64_t i = 0; i < n; i++) o[i] = lt_ew_binary(op, a[i], bv);
    } else if (so == 1 && sa == 0 && sb == 1) {
        float av = a[0];
#pragma omp simd
        for (int64_t i = 0; i < n; i++) o[i] = lt_ew_binary(op, av, b[i]);
    } else {
        for (int64_t i = 0; i < n; i++) o[i * so] = lt_ew_binary(op, a[i * sa], b[i * sb]);
    }
}

/* p: out, a, b. */
static void binary_run(const void *ctx, float *const *p, const int64_t *s, int64_t n) {
    int op = *(const int *)ctx;
    /* t ^ 2 (a broadcast exponent of 2) is a square: skip powf, same values. */
    if (op == LT_BINARY_POW && s[2] == 0 && p[2][0] == 2.0f) {
        binary_loop(LT_BINARY_MUL, p[0], s[0], p[1], s[1], p[1], s[1], n);
        return;
    }
    switch (op) {
    case LT_BINARY_ADD: binary_loop(LT_BINARY_ADD, p[0], s[0], p[1], s[1], p[2], s[2], n); break;
    case LT_BINARY_SUB: binary_loop(LT_BINARY_SUB, p[0], s[0], p[1], s[1], p[2], s[2], n); break;
    case LT_BINARY_MUL: binary_loop(LT_BINARY_MUL, p[0], s[0], p[1], s[1], p[2], s[2], n); break;
    case LT_BINARY_DIV: binary_loop(LT_BINARY_DIV, p[0], s[0], p[1], s[1], p[2], s[2], n); break;
    case LT_BINARY_MAX: binary_loop(LT_BINARY_MAX, p[0], s[0], p[1], s[1], p[2], s[2], n); break;
    case LT_BINARY_MIN: binary_loop(LT_BINARY_MIN, p[0], s[0], p[1], s[1], p[2], s[2], n); break;
    case LT_BINARY_POW: binary_loop(LT_BINARY_POW, p[0], s[0], p[1], s[1], p[2], s[2], n); break;
    default: break;
    }
}

EW_INLINE void binary_grad_loop(int op, int wrt_b, float *dx, int64_t sdx, const float *d,
                                int64_t sd, const float *a, int64_t sa, const float *b,
                                int64_t sb, int64_t n) {
    if (sdx == 1 && sd == 1 && sa == 1 && sb == 1) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) dx[i] = lt_ew_binary_grad(op, wrt_b, d[i], a[i], b[i]);
    } else if (sdx == 1 && sd == 1 && sa == 1 && sb == 0) {
        float bv = b[0];
#pragma omp simd
        for (int64_t i = 0; i < n; i++) dx[i] = lt_ew_binary_grad(op, wrt_b, d[i], a[i], bv);
    } else if (sdx == 1 && sd == 1 && sa == 0 && sb == 1) {
        float av = a[0];
#pragma omp simd
        for (int64_t i = 0; i < n; i++) dx[i] = lt_ew_binary_grad(op, wrt_b, d[i], av, b[i]);
    } else {
        for (int64_t i = 0; i < n; i++)
            dx[i * sdx] = lt_ew_binary_grad(op, wrt_b, d[i * sd], a[i * sa], b[i * sb]);
    }
}

typedef struct grad_ctx {
    int op;
    int wrt_b;
} grad_ctx;

/* p: dx, dout, a, b. */
static void binary_grad_run(const void *ctx, float *const *p, const int64_t *s, int64_t n) {
    const grad_ctx *c = ctx;
#define BG(OP, W) binary_grad_loop(OP, W, p[0], s[0], p[1], s[1], p[2], s[2], p[3], s[3], n)
    switch (c->op) {
    case LT_BINARY_ADD: BG(LT_BINARY_ADD, 0); break;
    case LT_BINARY_SUB: c->wrt_b ? BG(LT_BINARY_SUB, 1) : BG(LT_BINARY_SUB, 0); break;
    case LT_BINARY_MUL: c->wrt_b ? BG(LT_BINARY_MUL, 1) : BG(LT_BINARY_MUL, 0); break;
    case LT_BINARY_DIV: c->wrt_b ? BG(LT_BINARY_DIV, 1) : BG(LT_BINARY_DIV, 0); break;
    case LT_BINARY_MAX: c->wrt_b ? BG(LT_BINARY_MAX, 1) : BG(LT_BINARY_MAX, 0); break;
    case LT_BINARY_MIN: c->wrt_b ? BG(LT_BINARY_MIN, 1) : BG(LT_BINARY_MIN, 0); break;
    case LT_BINARY_POW: c->wrt_b ? BG(LT_BINARY_POW, 1) : BG(LT_BINARY_POW, 0); break;
    default: break;
    }
#undef BG
}

static int check_binary_op(int op, const char *fn) {
    if (op < 0 || op >= LT_BINARY_COUNT)
        return lt_fail(LT_ERR_ARG, "%s: unknown binary op %d (0..%d)", fn, op,
                       LT_BINARY_COUNT - 1);
    return LT_OK;
}

int lt_binary_forward(lt_tensor *out, const lt_tensor *a, const lt_tensor *b, int op) {
    LT_TRY(check_binary_op(op, "binary_forward"));
    const int id = LT_OP_ADD + op;
    const char *name = lt_op_name(id);
    LT_TRY(lt_op_check_dtype(id, LT_OP_ROLE_MAIN, a, name, "a"));
    LT_TRY(lt_op_check_dtype(id, LT_OP_ROLE_MAIN, b, name, "b"));
    LT_TRY(lt_op_check_out(id, out, name, "out", a, "a"));
    int nd;
    int64_t sizes[LT_MAX_DIMS];
    LT_TRY(broadcast_shape(a, b, name, &nd, sizes));
    if (!has_shape(out, nd, sizes)) {
        char so[128], sa[128], sb[128], sw[128];
        return lt_fail(LT_ERR_SHAPE, "%s: out has shape %s but a %s and b %s broadcast to %s",
                       name, lt_shape_str(out, so, sizeof so), lt_shape_str(a, sa, sizeof sa),
                       lt_shape_str(b, sb, sizeof sb), sizes_str(nd, sizes, sw, sizeof sw));
    }
    LT_TRY(lt_check_same_device(b, out, name, "b", "out"));
    LT_DISPATCH_CUDA(out, lt_cuda_binary_forward(out, a, b, op));
    if (lt_lowp_cpu(a) || lt_lowp_cpu(b) || lt_lowp_cpu(out)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &a);
        lt_lowp_in(&lp, &b);
        lt_lowp_out(&lp, &out);
        int st = lt_lowp_begin(&lp, name);
        if (st == LT_OK) st = lt_binary_forward(out, a, b, op);
        return lt_lowp_end(&lp, st);
    }
    if (lt_tensor_numel(out) == 0) return LT_OK;
    ew_geom g;
    ew_init(&g, nd, sizes);
    ew_operand(&g, out);
    ew_operand(&g, a);
    ew_operand(&g, b);
    ew_simplify(&g);
    ew_execute(&g, binary_run, &op);
    return LT_OK;
}

/* Floats in the dout-shaped temporary of a broadcast gradient (4 MB): dout is processed
   in slabs of this size, so the temporary stays small and is reused across slabs. */
enum { EW_GRAD_SLAB = 1 << 20 };

/* dst = dout * d(a op b)/d(a or b), elementwise; dst has dout's shape. */
static void grad_map(lt_tensor *dst, const lt_tensor *dout, const lt_tensor *a,
                     const lt_tensor *b, const grad_ctx *ctx) {
    if (lt_tensor_numel(dst) == 0) return;
    ew_geom geo;
    ew_init(&geo, dst->ndim, dst->sizes);
    ew_operand(&geo, dst);
    ew_operand(&geo, dout);
    ew_operand(&geo, a);
    ew_operand(&geo, b);
    ew_simplify(&geo);
    ew_execute(&geo, binary_grad_run, ctx);
}

/* t narrowed to [i0, i0 + len) along dim d of an nd-dim broadcast shape (t right-aligned);
   a plain view where t has size 1 there or no such dim. */
static int narrow_aligned(lt_tensor *dst, const lt_tensor *t, int nd, int d, int64_t i0,
                          int64_t len) {
    int j = d - (nd - t->ndim);
    if (j < 0 || t->sizes[j] == 1) return lt_tensor_share(dst, t);
    return lt_tensor_narrow(dst, t, j, i0, len);
}

/* g (the shape of a, or of b when wrt_b) = dout * d(a op b)/d(a or b), summed over the
   dims along which that operand was broadcast. dout has the broadcast shape. */
static int binary_grad_one(lt_tensor *g, const lt_tensor *dout, const lt_tensor *a,
                           const lt_tensor *b, int op, int wrt_b) {
    grad_ctx ctx = {op, wrt_b};
    int nd = dout->ndim;
    int64_t n = lt_tensor_numel(dout);
    if (lt_tensor_numel(g) == n) {
        /* Not broadcast (equal counts leave no expanded dim): a plain map. */
        grad_map(g, dout, a, b, &ctx);
        return LT_OK;
    }
    /* Broadcast: view g at dout's rank (leading size-1 dims) so a keepdim reduction over
       the expanded dims writes it. */
    int64_t sizes[LT_MAX_DIMS], strides[LT_MAX_DIMS];
    int32_t dims[LT_MAX_DIMS];
    int nr = 0, lead = nd - g->ndim;
    for (int i = 0; i < nd; i++) {
        int j = i - lead;
        sizes[i] = j < 0 ? 1 : g->sizes[j];
        strides[i] = j < 0 ? 0 : g->strides[j];
        if (sizes[i] == 1 && dout->sizes[i] != 1) dims[nr++] = i;
    }
    lt_tensor gv = {0};
    LT_TRY(lt_tensor_as_strided(&gv, g, nd, sizes, strides, g->offset));
    int st = LT_OK;
    if (op == LT_BINARY_ADD || op == LT_BINARY_SUB || n == 0) {
        /* The gradient is dout itself (up to sign): reduce it directly. */
        st = lt_reduce_forward(&gv, dout, nr, dims, LT_REDUCE_SUM);
        if (st == LT_OK && op == LT_BINARY_SUB && wrt_b)
            st = lt_unary_forward(&gv, &gv, LT_UNARY_NEG);
        lt_tensor_release(&gv);
        return st;
    }
    /* Slabs along the outermost dim d of size > 1: tmp (dout's shape with s rows at d)
       holds the elementwise gradient of one slab, then is reduced into g's slab (g not
       broadcast along d) or into `part` and added (g broadcast along d). */
    int d = 0;
    while (dout->sizes[d] == 1) d++;
    int64_t rows = dout->sizes[d], inner = n / rows;
    int64_t S = EW_GRAD_SLAB / inner;
    if (S < 1) S = 1;
    if (S > rows) S = rows;
    int g_bcast = sizes[d] == 1;
    int64_t tsizes[LT_MAX_DIMS];
    for (int i = 0; i < nd; i++) tsizes[i] = i == d ? S : dout->sizes[i];
    lt_tensor tmp = {0}, part = {0};
    st = lt_tensor_empty(&tmp, LT_DTYPE_F32, nd, tsizes, LT_DEVICE_CPU, 0);
    if (st == LT_OK && g_bcast && S < rows)
        st = lt_tensor_empty(&part, LT_DTYPE_F32, nd, sizes, LT_DEVICE_CPU, 0);
    for (int64_t i0 = 0; st == LT_OK && i0 < rows; i0 += S) {
        int64_t s = rows - i0 < S ? rows - i0 : S;
        lt_tensor ds = {0}, as = {0}, bs = {0}, ts = {0}, gs = {0};
        st = lt_tensor_narrow(&ds, dout, d, i0, s);
        if (st == LT_OK) st = narrow_aligned(&as, a, nd, d, i0, s);
        if (st == LT_OK) st = narrow_aligned(&bs, b, nd, d, i0, s);
        if (st == LT_OK) st = lt_tensor_narrow(&ts, &tmp, d, 0, s);
        if (st == LT_OK) {
            grad_map(&ts, &ds, &as, &bs, &ctx);
            if (!g_bcast) {
                st = lt_tensor_narrow(&gs, &gv, d, i0, s);
                if (st == LT_OK) st = lt_reduce_forward(&gs, &ts, nr, dims, LT_REDUCE_SUM);
            } else if (i0 == 0) {
                st = lt_reduce_forward(&gv, &ts, nr, dims, LT_REDUCE_SUM);
            } else {
                st = lt_reduce_forward(&part, &ts, nr, dims, LT_REDUCE_SUM);
                if (st == LT_OK) st = lt_axpby(&gv, 1.0, &part, 1.0);
            }
        }
        lt_tensor_release(&ds);
        lt_tensor_release(&as);
        lt_tensor_release(&bs);
        lt_tensor_release(&ts);
        lt_tensor_release(&gs);
    }
    lt_tensor_release(&tmp);
    lt_tensor_release(&part);
    lt_tensor_release(&gv);
    return st;
}

static int shares_storage(const lt_tensor *t, const lt_tensor *a, const lt_tensor *b,
                          const lt_tensor *c) {
    return t->storage == a->storage || t->storage == b->storage || t->storage == c->storage;
}

int lt_binary_backward(lt_tensor *da, lt_tensor *db, const lt_tensor *dout, const lt_tensor *a,
                       const lt_tensor *b, int op) {
    LT_TRY(check_binary_op(op, "binary_backward"));
    char name[64];
    const int id = LT_OP_ADD + op;
    snprintf(name, sizeof name, "%s_backward", lt_op_name(id));
    LT_TRY(lt_op_check_dtype(id, LT_OP_ROLE_MAIN, a, name, "a"));
    LT_TRY(lt_op_check_dtype(id, LT_OP_ROLE_MAIN, b, name, "b"));
    LT_TRY(lt_op_check_dtype(id, LT_OP_ROLE_MAIN, dout, name, "dout"));
    int nd;
    int64_t sizes[LT_MAX_DIMS];
    LT_TRY(broadcast_shape(a, b, name, &nd, sizes));
    if (!has_shape(dout, nd, sizes)) {
        char so[128], sa[128], sb[128], sw[128];
        return lt_fail(LT_ERR_SHAPE, "%s: dout has shape %s but a %s and b %s broadcast to %s",
                       name, lt_shape_str(dout, so, sizeof so), lt_shape_str(a, sa, sizeof sa),
                       lt_shape_str(b, sb, sizeof sb), sizes_str(nd, sizes, sw, sizeof sw));
    }
    if (da) {
        LT_TRY(lt_op_check_out(id, da, name, "da", dout, "dout"));
        LT_TRY(lt_check_same_shape(da, a, name, "da", "a"));
    }
    if (db) {
        LT_TRY(lt_op_check_out(id, db, name, "db", dout, "dout"));
        LT_TRY(lt_check_same_shape(db, b, name, "db", "b"));
    }
    LT_TRY(lt_check_same_device(a, dout, name, "a", "dout"));
    LT_TRY(lt_check_same_device(b, dout, name, "b", "dout"));
    LT_DISPATCH_CUDA(dout, lt_cuda_binary_backward(da, db, dout, a, b, op));
    if (lt_lowp_cpu(dout) || lt_lowp_cpu(a) || lt_lowp_cpu(b) || lt_lowp_cpu(da) ||
        lt_lowp_cpu(db)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &dout);
        lt_lowp_in(&lp, &a);
        lt_lowp_in(&lp, &b);
        lt_lowp_out(&lp, &da);
        lt_lowp_out(&lp, &db);
        int st = lt_lowp_begin(&lp, name);
        if (st == LT_OK) st = lt_binary_backward(da, db, dout, a, b, op);
        return lt_lowp_end(&lp, st);
    }
    /* A gradient written over an input (in-place backward) must come last; when both do,
       da goes through a temporary. */
    int da_alias = da && shares_storage(da, dout, a, b);
    int db_alias = db && shares_storage(db, dout, a, b);
    if (da && db && da_alias && db_alias) {
        lt_tensor tmp = {0};
        int st = lt_tensor_empty(&tmp, LT_DTYPE_F32, a->ndim, a->sizes, LT_DEVICE_CPU, 0);
        if (st == LT_OK) st = binary_grad_one(&tmp, dout, a, b, op, 0);
        if (st == LT_OK) st = binary_grad_one(db, dout, a, b, op, 1);
        if (st == LT_OK) st = lt_tensor_copy(da, &tmp);
        lt_tensor_release(&tmp);
        return st;
    }
    if (da_alias) {
        if (db) LT_TRY(binary_grad_one(db, dout, a, b, op, 1));
        return binary_grad_one(da, dout, a, b, op, 0);
    }
    if (da) LT_TRY(binary_grad_one(da, dout, a, b, op, 0));
    if (db) LT_TRY(binary_grad_one(db, dout, a, b, op, 1));
    return LT_OK;
}

/* ---- scalar ops --------------------------------------------------------------------- */

/* The scalar rides through the binary kernels as a stride-0 operand, rounded to f32. */

int lt_scalar_forward(lt_tensor *out, const lt_tensor *x, double s, int op, int reversed) {
    LT_TRY(check_binary_op(op, "scalar_forward"));
    const int id = LT_OP_ADD + op;
    const char *name = lt_op_name(id);
    LT_TRY(lt_op_check_dtype(id, LT_OP_ROLE_MAIN, x, name, "x"));
    LT_TRY(lt_op_check_out(id, out, name, "out", x, "x"));
    LT_TRY(lt_check_same_shape(out, x, name, "out", "x"));
    LT_DISPATCH_CUDA(out, lt_cuda_scalar_forward(out, x, s, op, reversed));
    if (lt_lowp_cpu(x) || lt_lowp_cpu(out)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &x);
        lt_lowp_out(&lp, &out);
        int st = lt_lowp_begin(&lp, name);
        if (st == LT_OK) st = lt_scalar_forward(out, x, s, op, reversed);
        return lt_lowp_end(&lp, st);
    }
    if (lt_tensor_numel(x) == 0) return LT_OK;
    float sv = (float)s;
    ew_geom g;
    ew_init(&g, out->ndim, out->sizes);
    ew_operand(&g, out);
    if (reversed) {
        ew_scalar(&g, &sv);
        ew_operand(&g, x);
    } else {
        ew_operand(&g, x);
        ew_scalar(&g, &sv);
    }
    ew_simplify(&g);
    ew_execute(&g, binary_run, &op);
    return LT_OK;
}

int lt_scalar_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *x, double s,
                       int op, int reversed) {
    LT_TRY(check_binary_op(op, "scalar_backward"));
    char name[64];
    const int id = LT_OP_ADD + op;
    snprintf(name, sizeof name, "%s_backward", lt_op_name(id));
    LT_TRY(lt_op_check_dtype(id, LT_OP_ROLE_MAIN, dout, name, "dout"));
    LT_TRY(lt_op_check_dtype(id, LT_OP_ROLE_MAIN, x, name, "x"));
    LT_TRY(lt_op_check_out(id, dx, name, "dx", dout, "dout"));
    LT_TRY(lt_check_same_shape(dout, x, name, "dout", "x"));
    LT_TRY(lt_check_same_shape(dx, x, name, "dx", "x"));
    LT_TRY(lt_check_same_device(x, dx, name, "x", "dx"));
    LT_DISPATCH_CUDA(dx, lt_cuda_scalar_backward(dx, dout, x, s, op, reversed));
    if (lt_lowp_cpu(dout) || lt_lowp_cpu(x) || lt_lowp_cpu(dx)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &dout);
        lt_lowp_in(&lp, &x);
        lt_lowp_out(&lp, &dx);
        int st = lt_lowp_begin(&lp, name);
        if (st == LT_OK) st = lt_scalar_backward(dx, dout, x, s, op, reversed);
        return lt_lowp_end(&lp, st);
    }
    if (lt_tensor_numel(x) == 0) return LT_OK;
    float sv = (float)s;
    grad_ctx ctx = {op, reversed ? 1 : 0};
    ew_geom g;
    ew_init(&g, dx->ndim, dx->sizes);
    ew_operand(&g, dx);
    ew_operand(&g, dout);
    if (reversed) {
        ew_scalar(&g, &sv);
        ew_operand(&g, x);
    } else {
        ew_operand(&g, x);
        ew_scalar(&g, &sv);
    }
    ew_simplify(&g);
    ew_execute(&g, binary_grad_run, &ctx);
    return LT_OK;
}

/* ---- axpby -------------------------------------------------------------------------- */

typedef struct axpby_ctx {
    float alpha, beta;
} axpby_ctx;

/* p: y, x. A zero coefficient drops its operand unread, so a NaN there cannot leak. */
static void axpby_run(const void *ctx, float *const *p, const int64_t *s, int64_t n) {
    const axpby_ctx *c = ctx;
    float alpha = c->alpha, beta = c->beta;
    float *y = p[0];
    const float *x = p[1];
    int64_t sy = s[0], sx = s[1];
    if (alpha == 0.0f) {
        if (sy == 1) {
#pragma omp simd
            for (int64_t i = 0; i < n; i++) y[i] = beta == 0.0f ? 0.0f : beta * y[i];
        } else {
            for (int64_t i = 0; i < n; i++) y[i * sy] = beta == 0.0f ? 0.0f : beta * y[i * sy];
        }
    } else if (beta == 0.0f) {
        if (sy == 1 && sx == 1) {
#pragma omp simd
            for (int64_t i = 0; i < n; i++) y[i] = alpha * x[i];
        } else {
            for (int64_t i = 0; i < n; i++) y[i * sy] = alpha * x[i * sx];
        }
    } else if (sy == 1 && sx == 1) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) y[i] = alpha * x[i] + beta * y[i];
    } else {
        for (int64_t i = 0; i < n; i++) y[i * sy] = alpha * x[i * sx] + beta * y[i * sy];
    }
}

int lt_axpby(lt_tensor *y, double alpha, const lt_tensor *x, double beta) {
    LT_TRY(lt_op_check_dtype(LT_OP_AXPBY, LT_OP_ROLE_MAIN, x, "axpby", "x"));
    LT_TRY(lt_op_check_out(LT_OP_AXPBY, y, "axpby", "y", x, "x"));
    int nd;
    int64_t sizes[LT_MAX_DIMS];
    int st = broadcast_shape(y, x, "axpby", &nd, sizes);
    if (st != LT_OK || !has_shape(y, nd, sizes)) {
        char sx[128], sy[128];
        return lt_fail(LT_ERR_SHAPE, "axpby: x has shape %s, which does not broadcast to y's %s",
                       lt_shape_str(x, sx, sizeof sx), lt_shape_str(y, sy, sizeof sy));
    }
    LT_DISPATCH_CUDA(y, lt_cuda_axpby(y, alpha, x, beta));
    if (lt_lowp_cpu(x) || lt_lowp_cpu(y)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &x);
        lt_lowp_out(&lp, &y);
        st = lt_lowp_begin(&lp, "axpby");
        if (st == LT_OK) st = lt_axpby(y, alpha, x, beta);
        return lt_lowp_end(&lp, st);
    }
    if (lt_tensor_numel(y) == 0) return LT_OK;
    axpby_ctx ctx = {(float)alpha, (float)beta};
    ew_geom g;
    ew_init(&g, y->ndim, y->sizes);
    ew_operand(&g, y);
    ew_operand(&g, x);
    ew_simplify(&g);
    ew_execute(&g, axpby_run, &ctx);
    return LT_OK;
}
