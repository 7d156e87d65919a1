/* reduce.c - reductions over any set of dims, argmax, the sum of squares, the non-finite
 * check, and softmax / log-softmax over the last dim.
 *
 * One reducer serves sum, mean, max, min, the tie count of max/min backward, sum_squares
 * and has_nonfinite. It drops size-1 dims, orders the rest by x's strides (so the last dim
 * is x's fastest), merges neighbours that nest, and then runs one of two loop shapes:
 *   - the last dim is reduced ("scalar"): each output element accumulates runs along that
 *     dim, an `omp simd` reduction when it is contiguous;
 *   - the last dim is kept ("vector"): a block of up to RED_VEC neighbouring outputs
 *     accumulates whole contiguous rows, so reducing the leading dim of a (N, C) tensor
 *     streams memory instead of striding across it.
 * Tasks are output elements (or blocks); when there are few of them the reduced range is
 * also cut into chunks whose partial results are combined in a fixed order afterwards.
 * Chunking depends on the shapes only, so results do not change with the thread count.
 * Sums accumulate in f64; max/min propagate NaN.
 *
 * Edge cases: no dims (ndims == 0) copies x; an empty reduced range gives 0 for a sum, NaN
 * for a mean and an LT_ERR_SHAPE for max/min. Max/min backward shares dout equally among
 * the elements equal to the extremum; a NaN extremum matches nothing, so its group gets a
 * zero gradient. Softmax of a row holding a NaN, or only -inf, is NaN (as in PyTorch).
 */
#include <stdio.h>

#include "core/internal.h"
#include "lt_ops.h"
#include "ops/lowp.h"
#include "ops/support.h"

enum red_kind {
    RED_LOAD = 0,      /* x */
    RED_SQUARE = 1,    /* x * x, in f64 */
    RED_NONFINITE = 2, /* 1 where x is inf or NaN */
    RED_EQ = 3         /* 1 where x equals ref (the ties of a max/min) */
};

enum red_acc { ACC_SUM = 0, ACC_MAX = 1, ACC_MIN = 2 };

enum {
    RED_CHUNK = 16384,    /* reduced elements per partial-sum chunk */
    RED_VEC = 256,        /* outputs per block in the vector loop shape */
    RED_FEW_TASKS = 64    /* below this many tasks, the reduced range is chunked too */
};


typedef struct red_plan {
    int kind, acc;
    int ndim;
    int64_t sizes[LT_MAX_DIMS];
    int32_t reduced[LT_MAX_DIMS];
    /* Strides of x, ref and out over x's shape; ref and out have 0 on reduced dims. */
    int64_t st[3][LT_MAX_DIMS];
    const float *x;
    const float *ref; /* RED_EQ only */
    float *out;       /* results written through st[2]; or */
    double *out64;    /* results by flat output index (when every dim is reduced: one) */
    double scale;     /* multiplies sums at the end (1/count for a mean) */
} red_plan;

/* Strides of a keepdim-form tensor over x's shape: 0 where it has size 1. */
static void keepdim_strides(int64_t *dst, const lt_tensor *t, int ndim) {
    for (int d = 0; d < ndim; d++) dst[d] = t && t->sizes[d] != 1 ? t->strides[d] : 0;
}

static void red_plan_init(red_plan *p, const lt_tensor *x, const int32_t *flags,
                          const lt_tensor *ref, lt_tensor *out, int kind, int acc) {
    memset(p, 0, sizeof *p);
    p->kind = kind;
    p->acc = acc;
    p->ndim = x->ndim;
    for (int d = 0; d < x->ndim; d++) {
        p->sizes[d] = x->sizes[d];
        p->reduced[d] = flags[d];
        p->st[0][d] = x->strides[d];
    }
    keepdim_strides(p->st[1], ref, x->ndim);
    keepdim_strides(p->st[2], out, x->ndim);
    p->x = lt_tensor_data(x);
    p->ref = ref ? lt_tensor_data(ref) : NULL;
    p->out = out ? lt_tensor_data(out) : NULL;
    p->scale = 1.0;
}

static void red_swap_dims(red_plan *p, int i, int j) {
    int64_t t = p->sizes[i];
    p->sizes[i] = p->sizes[j];
    p->sizes[j] = t;
    int32_t f = p->reduced[i];
    p->reduced[i] = p->reduced[j];
    p->reduced[j] = f;
    for (int k = 0; k < 3; k++) {
        t = p->st[k][i];
        p->st[k][i] = p->st[k][j];
        p->st[k][j] = t;
    }
}

/* Drop size-1 dims, sort by x's strides (largest first), merge nesting neighbours that are
   both reduced or both kept. */
static void red_simplify(red_plan *p) {
    int nd = 0;
    for (int i = 0; i < p->ndim; i++) {
        if (p->sizes[i] == 1) continue;
        p->sizes[nd] = p->sizes[i];
        p->reduced[nd] = p->reduced[i];
        for (int k = 0; k < 3; k++) p->st[k][nd] = p->st[k][i];
        nd++;
    }
    for (int i = 1; i < nd; i++)
        for (int j = i; j > 0 && p->st[0][j - 1] < p->st[0][j]; j--) red_swap_dims(p, j, j - 1);
    int m = 0;
    for (int i = 0; i < nd; i++) {
        if (m > 0 && p->reduced[m - 1] == p->reduced[i]) {
            int nest = 1;
            for (int k = 0; k < 3 && nest; k++)
                nest = p->st[k][m - 1] == p->st[k][i] * p->sizes[i];
            if (nest) {
                p->sizes[m - 1] *= p->sizes[i];
                for (int k = 0; k < 3; k++) p->st[k][m - 1] = p->st[k][i];
                continue;
            }
        }
        p->sizes[m] = p->sizes[i];
        p->reduced[m] = p->reduced[i];
        for (int k = 0; k < 3; k++) p->st[k][m] = p->st[k][i];
        m++;
    }
    p->ndim = m;
}

static inline double acc_init(int acc) {
    return acc == ACC_MAX ? -INFINITY : acc == ACC_MIN ? INFINITY : 0.0;
}

/* Combine two partial results (a is the earlier one). */
static inline double acc_combine(int acc, double a, double b) {
    switch (acc) {
    case ACC_MAX: return (b > a || b != b) ? b : a;
    case ACC_MIN: return (b < a || b != b) ? b : a;
    default: return a + b;
    }
}

/* Accumulate n elements of x (stride sx) into acc. refv: the value ties are counted
   against (RED_EQ). */
static double red_run(int kind, int acc, const float *x, int64_t sx, float refv, int64_t n,
                      double a) {
    if (kind == RED_LOAD && acc != ACC_SUM) {
        /* max/min in f32 with a separate NaN flag so the loop stays a plain reduction. */
        float m = (float)a;
        int bad = a != a;
        if (acc == ACC_MAX) {
            if (sx == 1) {
#pragma omp simd reduction(max : m) reduction(| : bad)
                for (int64_t i = 0; i < n; i++) {
                    m = x[i] > m ? x[i] : m;
                    bad |= x[i] != x[i];
                }
            } else {
                for (int64_t i = 0; i < n; i++) {
                    float v = x[i * sx];
                    m = v > m ? v : m;
                    bad |= v != v;
                }
            }
        } else {
            if (sx == 1) {
#pragma omp simd reduction(min : m) reduction(| : bad)
                for (int64_t i = 0; i < n; i++) {
                    m = x[i] < m ? x[i] : m;
                    bad |= x[i] != x[i];
                }
            } else {
                for (int64_t i = 0; i < n; i++) {
                    float v = x[i * sx];
                    m = v < m ? v : m;
                    bad |= v != v;
                }
            }
        }
        return bad ? (double)NAN : (double)m;
    }
    double s = 0.0;
    switch (kind) {
    case RED_LOAD:
        if (sx == 1) {
#pragma omp simd reduction(+ : s)
            for (int64_t i = 0; i < n; i++) s += (double)x[i];
        } else {
            for (int64_t i = 0; i < n; i++) s += (double)x[i * sx];
        }
        break;
    case RED_SQUARE:
        if (sx == 1) {
#pragma omp simd reduction(+ : s)
            for (int64_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
        } else {
            for (int64_t i = 0; i < n; i++) s += (double)x[i * sx] * (double)x[i * sx];
        }
        break;
    case RED_NONFINITE:
        if (sx == 1) {
#pragma omp simd reduction(+ : s)
            for (int64_t i = 0; i < n; i++) s += isfinite(x[i]) ? 0.0 : 1.0;
        } else {
            for (int64_t i = 0; i < n; i++) s += isfinite(x[i * sx]) ? 0.0 : 1.0;
        }
        break;
    case RED_EQ:
        for (int64_t i = 0; i < n; i++) s += x[i * sx] == refv ? 1.0 : 0.0;
        break;
    default: break;
    }
    return a + s;
}

/* acc[k] (+)= value of x[k * sx] for k < n: one reduced position of a block of outputs. */
static void red_step_vec(int kind, int acc, double *a, const float *x, int64_t sx,
                         const float *ref, int64_t sr, int64_t n) {
    switch (kind) {
    case RED_LOAD:
        if (acc == ACC_SUM) {
            if (sx == 1) {
#pragma omp simd
                for (int64_t k = 0; k < n; k++) a[k] += (double)x[k];
            } else {
                for (int64_t k = 0; k < n; k++) a[k] += (double)x[k * sx];
            }
        } else if (acc == ACC_MAX) {
#pragma omp simd
            for (int64_t k = 0; k < n; k++) {
                double v = x[k * sx];
                a[k] = (v > a[k] || v != v) ? v : a[k];
            }
        } else {
#pragma omp simd
            for (int64_t k = 0; k < n; k++) {
                double v = x[k * sx];
                a[k] = (v < a[k] || v != v) ? v : a[k];
            }
        }
        break;
    case RED_SQUARE:
        for (int64_t k = 0; k < n; k++) a[k] += (double)x[k * sx] * (double)x[k * sx];
        break;
    case RED_NONFINITE:
        for (int64_t k = 0; k < n; k++) a[k] += isfinite(x[k * sx]) ? 0.0 : 1.0;
        break;
    case RED_EQ:
        for (int64_t k = 0; k < n; k++) a[k] += x[k * sx] == ref[k * sr] ? 1.0 : 0.0;
        break;
    default: break;
    }
}

static inline void red_store(const red_plan *p, int64_t m, int64_t offo, double v) {
    if (p->acc == ACC_SUM) v *= p->scale;
    if (p->out64)
        p->out64[m] = v;
    else
        p->out[offo] = (float)v;
}

/* Offsets of x, ref and out at flat index m over the dims list (row-major in list order). */
static inline void red_offsets(const red_plan *p, const int *dims, int n, int64_t m,
                               int64_t *off) {
    off[0] = off[1] = off[2] = 0;
    for (int j = n - 1; j >= 0; j--) {
        int d = dims[j];
        int64_t idx = m % p->sizes[d];
        m /= p->sizes[d];
        for (int k = 0; k < 3; k++) off[k] += idx * p->st[k][d];
    }
}

/* Step the reduced-dims odometer by `step` positions along its innermost dim (callers never
   step past the end of that dim). `off` tracks x's offset. */
static inline void red_advance(const red_plan *p, const int *rd, int nr, int64_t *idx,
                               int64_t *off, int64_t step) {
    if (nr == 0) return;
    int d = rd[nr - 1];
    idx[nr - 1] += step;
    *off += step * p->st[0][d];
    if (idx[nr - 1] < p->sizes[d]) return;
    *off -= p->sizes[d] * p->st[0][d];
    idx[nr - 1] = 0;
    for (int j = nr - 2; j >= 0; j--) {
        d = rd[j];
        idx[j]++;
        *off += p->st[0][d];
        if (idx[j] < p->sizes[d]) return;
        *off -= p->sizes[d] * p->st[0][d];
        idx[j] = 0;
    }
}

/* Odometer position (and x offset) of flat reduced index r. */
static inline void red_seek(const red_plan *p, const int *rd, int nr, int64_t r, int64_t *idx,
                            int64_t *off) {
    *off = 0;
    for (int j = nr - 1; j >= 0; j--) {
        int d = rd[j];
        idx[j] = r % p->sizes[d];
        r /= p->sizes[d];
        *off += idx[j] * p->st[0][d];
    }
}

/* Run a simplified plan whose reduced count is nonzero. */
static int red_execute(red_plan *p) {
    int kd[LT_MAX_DIMS], rd[LT_MAX_DIMS], nk = 0, nr = 0;
    int64_t M = 1, R = 1;
    for (int d = 0; d < p->ndim; d++) {
        if (p->reduced[d]) {
            rd[nr++] = d;
            R *= p->sizes[d];
        } else {
            kd[nk++] = d;
            M *= p->sizes[d];
        }
    }
    if (M == 0 || R == 0) return LT_INTERNAL("reducer called with %lld outputs over %lld",
                                             (long long)M, (long long)R);
    int kind = p->kind, acc = p->acc;
    int vector = nk > 0 && !p->reduced[p->ndim - 1];
    int64_t C = 1, chunk = R, nL = 1, NB = 1, Mo = M;
    if (vector) {
        nL = p->sizes[kd[nk - 1]];
        NB = (nL + RED_VEC - 1) / RED_VEC;
        Mo = M / nL;
        if (Mo * NB < RED_FEW_TASKS) {
            int64_t w = nL < RED_VEC ? nL : RED_VEC;
            chunk = RED_CHUNK / w < 16 ? 16 : RED_CHUNK / w;
        }
    } else if (M < RED_FEW_TASKS) {
        chunk = RED_CHUNK;
    }
    if (chunk < R) C = (R + chunk - 1) / chunk;
    else chunk = R;
    double *part = NULL;
    if (C > 1) {
        part = lt_scratch_alloc(M * C * (int64_t)sizeof(double));
        if (!part) return LT_ERR_NOMEM;
    }
    int64_t tasks = (vector ? Mo * NB : M) * C;
    int par = tasks > 1 && M * R >= LT_PAR_MIN_WORK;

    if (!vector) {
        int L = nr > 0 ? rd[nr - 1] : 0;
        int64_t len = nr > 0 ? p->sizes[L] : 1, sxl = nr > 0 ? p->st[0][L] : 0;
#pragma omp parallel for schedule(static) if (par)
        for (int64_t t = 0; t < tasks; t++) {
            int64_t m = t / C, c = t % C;
            int64_t off[3], idx[LT_MAX_DIMS], offr;
            red_offsets(p, kd, nk, m, off);
            int64_t r = c * chunk, r1 = r + chunk < R ? r + chunk : R;
            red_seek(p, rd, nr, r, idx, &offr);
            float refv = p->ref ? p->ref[off[1]] : 0.0f;
            double a = acc_init(acc);
            while (r < r1) {
                int64_t pos = nr > 0 ? idx[nr - 1] : 0;
                int64_t n = len - pos < r1 - r ? len - pos : r1 - r;
                a = red_run(kind, acc, p->x + off[0] + offr, sxl, refv, n, a);
                r += n;
                red_advance(p, rd, nr, idx, &offr, n);
            }
            if (C > 1)
                part[t] = a;
            else
                red_store(p, m, off[2], a);
        }
    } else {
        int L = kd[nk - 1];
        int64_t sxl = p->st[0][L], srl = p->st[1][L], sol = p->st[2][L];
#pragma omp parallel for schedule(static) if (par)
        for (int64_t t = 0; t < tasks; t++) {
            int64_t c = t % C, b = (t / C) % NB, mo = t / (C * NB);
            int64_t off[3], idx[LT_MAX_DIMS], offr;
            double a[RED_VEC];
            red_offsets(p, kd, nk - 1, mo, off);
            int64_t k0 = b * RED_VEC, kn = nL - k0 < RED_VEC ? nL - k0 : RED_VEC;
            for (int64_t k = 0; k < kn; k++) a[k] = acc_init(acc);
            int64_t r = c * chunk, r1 = r + chunk < R ? r + chunk : R;
            red_seek(p, rd, nr, r, idx, &offr);
            const float *xb = p->x + off[0] + k0 * sxl;
            const float *rb = p->ref ? p->ref + off[1] + k0 * srl : NULL;
            for (; r < r1; r++) {
                red_step_vec(kind, acc, a, xb + offr, sxl, rb, srl, kn);
                red_advance(p, rd, nr, idx, &offr, 1);
            }
            for (int64_t k = 0; k < kn; k++) {
                int64_t m = mo * nL + k0 + k;
                if (C > 1)
                    part[m * C + c] = a[k];
                else
                    red_store(p, m, off[2] + (k0 + k) * sol, a[k]);
            }
        }
    }
    if (C > 1) {
        /* Partials in chunk order: the same sum whatever the thread count. */
        for (int64_t m = 0; m < M; m++) {
            double a = part[m * C];
            for (int64_t c = 1; c < C; c++) a = acc_combine(acc, a, part[m * C + c]);
            int64_t off[3];
            red_offsets(p, kd, nk, m, off);
            red_store(p, m, off[2], a);
        }
        lt_scratch_free(part);
    }
    return LT_OK;
}

/* ---- argument checks ---------------------------------------------------------------- */

/* These run before the device dispatch, so they hold on every device. Dtypes are the
   support table's (ops/support.c: f32 on the CPU; f32, bf16 or f16 on a CUDA device, where
   cuda/reduce.cu computes in f32 and sums in f64). Outputs go through lt_op_check_out,
   which also puts them on the device of the op's first input; the other inputs are checked
   against them with lt_check_same_device. */
static int check_in(int id, const lt_tensor *t, const char *fn, const char *name) {
    return lt_op_check_dtype(id, LT_OP_ROLE_MAIN, t, fn, name);
}

/* ---- reductions --------------------------------------------------------------------- */

static int reduce_acc(int op) {
    return op == LT_REDUCE_MAX ? ACC_MAX : op == LT_REDUCE_MIN ? ACC_MIN : ACC_SUM;
}

int lt_reduce_forward(lt_tensor *out, const lt_tensor *x, int32_t ndims, const int32_t *dims,
                      int op) {
    if (op < 0 || op >= LT_REDUCE_COUNT)
        return lt_fail(LT_ERR_ARG, "reduce_forward: unknown op %d (0..%d)", op,
                       LT_REDUCE_COUNT - 1);
    const int id = LT_OP_SUM + op;
    const char *name = lt_op_name(id);
    LT_TRY(check_in(id, x, name, "x"));
    LT_TRY(lt_op_check_out(id, out, name, "out", x, "x"));
    if (ndims < 0 || ndims > x->ndim || (ndims > 0 && !dims))
        return lt_fail(LT_ERR_ARG, "%s: %d dims given for a %d-dim tensor", name, (int)ndims,
                       x->ndim);
    int32_t flags[LT_MAX_DIMS] = {0};
    for (int i = 0; i < ndims; i++) {
        int d = dims[i] < 0 ? dims[i] + x->ndim : dims[i];
        if (d < 0 || d >= x->ndim)
            return lt_fail(LT_ERR_ARG, "%s: dim %d out of range for a %d-dim tensor", name,
                           (int)dims[i], x->ndim);
        if (flags[d])
            return lt_fail(LT_ERR_ARG, "%s: dim %d is listed twice", name, (int)dims[i]);
        flags[d] = 1;
    }
    int ok = out->ndim == x->ndim;
    for (int d = 0; ok && d < x->ndim; d++) ok = out->sizes[d] == (flags[d] ? 1 : x->sizes[d]);
    if (!ok) {
        char so[128], sx[128];
        return lt_fail(LT_ERR_SHAPE,
                       "%s: out has shape %s but x %s needs the keepdim shape (x's with the "
                       "reduced dims set to 1)",
                       name, lt_shape_str(out, so, sizeof so), lt_shape_str(x, sx, sizeof sx));
    }
    int64_t M = lt_tensor_numel(out), R = 1;
    for (int d = 0; d < x->ndim; d++)
        if (flags[d]) R *= x->sizes[d];
    if (M == 0) return LT_OK;
    if (R == 0) {
        if (op == LT_REDUCE_MAX || op == LT_REDUCE_MIN) {
            char sx[128];
            return lt_fail(LT_ERR_SHAPE, "%s: cannot reduce x %s over a dim of size 0", name,
                           lt_shape_str(x, sx, sizeof sx));
        }
        /* An empty sum is 0; an empty mean is 0/0. */
        return lt_tensor_fill(out, op == LT_REDUCE_MEAN ? NAN : 0.0);
    }
    LT_DISPATCH_CUDA(out, lt_cuda_reduce_forward(out, x, ndims, dims, op));
    if (lt_lowp_cpu(x) || lt_lowp_cpu(out)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &x);
        lt_lowp_out(&lp, &out);
        int st = lt_lowp_begin(&lp, name);
        if (st == LT_OK) st = lt_reduce_forward(out, x, ndims, dims, op);
        return lt_lowp_end(&lp, st);
    }
    red_plan p;
    red_plan_init(&p, x, flags, NULL, out, RED_LOAD, reduce_acc(op));
    if (op == LT_REDUCE_MEAN) p.scale = 1.0 / (double)R;
    red_simplify(&p);
    return red_execute(&p);
}

/* dx = (x == out) ? dout / count : 0, over x's shape; out, dout and count are in keepdim
   form (broadcast through zero strides). */
static void share_ties(lt_tensor *dx, const lt_tensor *x, const lt_tensor *out,
                       const lt_tensor *dout, const lt_tensor *count) {
    int nd = x->ndim;
    int64_t so[LT_MAX_DIMS], sd[LT_MAX_DIMS], sc[LT_MAX_DIMS];
    keepdim_strides(so, out, nd);
    keepdim_strides(sd, dout, nd);
    keepdim_strides(sc, count, nd);
    float *pdx = lt_tensor_data(dx);
    const float *px = lt_tensor_data(x), *po = lt_tensor_data(out);
    const float *pd = lt_tensor_data(dout), *pc = lt_tensor_data(count);
    int64_t inner = nd > 0 ? x->sizes[nd - 1] : 1;
    int64_t outer = inner > 0 ? lt_tensor_numel(x) / inner : 0;
    int64_t sdx_i = nd > 0 ? dx->strides[nd - 1] : 0, sx_i = nd > 0 ? x->strides[nd - 1] : 0;
    int64_t so_i = nd > 0 ? so[nd - 1] : 0, sd_i = nd > 0 ? sd[nd - 1] : 0;
    int64_t sc_i = nd > 0 ? sc[nd - 1] : 0;
#pragma omp parallel for schedule(static) if (outer > 1 && outer * inner >= LT_PAR_MIN_WORK)
    for (int64_t o = 0; o < outer; o++) {
        int64_t rem = o, odx = 0, ox = 0, oo = 0, od = 0, oc = 0;
        for (int i = nd - 2; i >= 0; i--) {
            int64_t idx = rem % x->sizes[i];
            rem /= x->sizes[i];
            odx += idx * dx->strides[i];
            ox += idx * x->strides[i];
            oo += idx * so[i];
            od += idx * sd[i];
            oc += idx * sc[i];
        }
        for (int64_t j = 0; j < inner; j++) {
            float v = px[ox + j * sx_i], m = po[oo + j * so_i];
            pdx[odx + j * sdx_i] = v == m ? pd[od + j * sd_i] / pc[oc + j * sc_i] : 0.0f;
        }
    }
}

int lt_reduce_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *x,
                       const lt_tensor *out, int op) {
    if (op < 0 || op >= LT_REDUCE_COUNT)
        return lt_fail(LT_ERR_ARG, "reduce_backward: unknown op %d (0..%d)", op,
                       LT_REDUCE_COUNT - 1);
    char name[64];
    const int id = LT_OP_SUM + op;
    snprintf(name, sizeof name, "%s_backward", lt_op_name(id));
    LT_TRY(check_in(id, x, name, "x"));
    LT_TRY(check_in(id, dout, name, "dout"));
    LT_TRY(lt_op_check_out(id, dx, name, "dx", dout, "dout"));
    LT_TRY(lt_check_same_shape(dx, x, name, "dx", "x"));
    int ok = dout->ndim == x->ndim;
    for (int d = 0; ok && d < x->ndim; d++)
        ok = dout->sizes[d] == x->sizes[d] || dout->sizes[d] == 1;
    if (!ok) {
        char sd[128], sx[128];
        return lt_fail(LT_ERR_SHAPE,
                       "%s: dout has shape %s, which is not a keepdim reduction of x %s (same "
                       "rank, reduced dims of size 1)",
                       name, lt_shape_str(dout, sd, sizeof sd), lt_shape_str(x, sx, sizeof sx));
    }
    if (op == LT_REDUCE_MAX || op == LT_REDUCE_MIN) {
        LT_TRY(check_in(id, out, name, "out"));
        LT_TRY(lt_check_same_shape(out, dout, name, "out", "dout"));
    }
    LT_TRY(lt_check_same_device(x, dx, name, "x", "dx"));
    if (op == LT_REDUCE_MAX || op == LT_REDUCE_MIN)
        LT_TRY(lt_check_same_device(out, dx, name, "out", "dx"));
    LT_DISPATCH_CUDA(dx, lt_cuda_reduce_backward(dx, dout, x, out, op));
    if (lt_lowp_cpu(dout) || lt_lowp_cpu(x) || lt_lowp_cpu(out) || lt_lowp_cpu(dx)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &dout);
        lt_lowp_in(&lp, &x);
        lt_lowp_in(&lp, &out);
        lt_lowp_out(&lp, &dx);
        int st = lt_lowp_begin(&lp, name);
        if (st == LT_OK) st = lt_reduce_backward(dx, dout, x, out, op);
        return lt_lowp_end(&lp, st);
    }
    if (op == LT_REDUCE_SUM || op == LT_REDUCE_MEAN) {
        double count = 1.0;
        for (int d = 0; d < x->ndim; d++)
            if (dout->sizes[d] == 1) count *= (double)x->sizes[d];
        if (lt_tensor_numel(x) == 0) return LT_OK;
        return lt_axpby(dx, op == LT_REDUCE_MEAN ? 1.0 / count : 1.0, dout, 0.0);
    }
    if (lt_tensor_numel(x) == 0) return LT_OK;
    /* Count the elements equal to each extremum, then share dout among them. */
    int32_t flags[LT_MAX_DIMS] = {0};
    for (int d = 0; d < x->ndim; d++) flags[d] = dout->sizes[d] == 1;
    lt_tensor count = {0};
    LT_TRY(lt_tensor_empty(&count, LT_DTYPE_F32, dout->ndim, dout->sizes, LT_DEVICE_CPU, 0));
    red_plan p;
    red_plan_init(&p, x, flags, out, &count, RED_EQ, ACC_SUM);
    red_simplify(&p);
    int st = red_execute(&p);
    if (st == LT_OK) share_ties(dx, x, out, dout, &count);
    lt_tensor_release(&count);
    return st;
}

int lt_argmax(lt_tensor *out, const lt_tensor *x, int dim) {
    LT_TRY(check_in(LT_OP_ARGMAX, x, "argmax", "x"));
    LT_TRY(lt_check_out(out, LT_DTYPE_I64, "argmax", "out", x, "x"));
    int d = dim < 0 ? dim + x->ndim : dim;
    if (d < 0 || d >= x->ndim)
        return lt_fail(LT_ERR_ARG, "argmax: dim %d out of range for a %d-dim tensor", dim,
                       x->ndim);
    int ok = out->ndim == x->ndim;
    for (int i = 0; ok && i < x->ndim; i++) ok = out->sizes[i] == (i == d ? 1 : x->sizes[i]);
    if (!ok) {
        char so[128], sx[128];
        return lt_fail(LT_ERR_SHAPE, "argmax: out has shape %s but x %s needs dim %d set to 1",
                       lt_shape_str(out, so, sizeof so), lt_shape_str(x, sx, sizeof sx), d);
    }
    int64_t n = x->sizes[d], M = lt_tensor_numel(out);
    if (M == 0) return LT_OK;
    if (n == 0) {
        char sx[128];
        return lt_fail(LT_ERR_SHAPE, "argmax: dim %d of x %s is empty", d,
                       lt_shape_str(x, sx, sizeof sx));
    }
    LT_DISPATCH_CUDA(out, lt_cuda_argmax(out, x, dim));
    if (lt_lowp_cpu(x)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &x);
        int st = lt_lowp_begin(&lp, "argmax");
        if (st == LT_OK) st = lt_argmax(out, x, dim);
        return lt_lowp_end(&lp, st);
    }
    const float *px = lt_tensor_data(x);
    int64_t *po = lt_tensor_data(out);
    int64_t sd = x->strides[d];
#pragma omp parallel for schedule(static) if (M > 1 && M * n >= LT_PAR_MIN_WORK)
    for (int64_t m = 0; m < M; m++) {
        int64_t rem = m, ox = 0, oo = 0;
        for (int i = x->ndim - 1; i >= 0; i--) {
            if (i == d) continue;
            int64_t idx = rem % x->sizes[i];
            rem /= x->sizes[i];
            ox += idx * x->strides[i];
            oo += idx * out->strides[i];
        }
        const float *row = px + ox;
        /* First of ties; a NaN counts as the largest value (its first occurrence wins). */
        float best = row[0];
        int64_t bi = 0;
        for (int64_t j = 1; j < n && best == best; j++) {
            float v = row[j * sd];
            if (v > best || v != v) {
                best = v;
                bi = j;
            }
        }
        po[oo] = bi;
    }
    return LT_OK;
}

int lt_sum_squares(const lt_tensor *x, double *out) {
    LT_TRY(check_in(LT_OP_SUM_SQUARES, x, "sum_squares", "x"));
    if (!out) return lt_fail(LT_ERR_ARG, "sum_squares: out is NULL");
    LT_DISPATCH_CUDA(x, lt_cuda_sum_squares(x, out));
    if (lt_lowp_cpu(x)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &x);
        int st = lt_lowp_begin(&lp, "sum_squares");
        if (st == LT_OK) st = lt_sum_squares(x, out);
        return lt_lowp_end(&lp, st);
    }
    *out = 0.0;
    if (lt_tensor_numel(x) == 0) return LT_OK;
    int32_t flags[LT_MAX_DIMS] = {1, 1, 1, 1, 1, 1, 1, 1};
    red_plan p;
    red_plan_init(&p, x, flags, NULL, NULL, RED_SQUARE, ACC_SUM);
    p.out64 = out;
    red_simplify(&p);
    return red_execute(&p);
}

int lt_has_nonfinite(const lt_tensor *x, int32_t *out) {
    LT_TRY(check_in(LT_OP_HAS_NONFINITE, x, "has_nonfinite", "x"));
    if (!out) return lt_fail(LT_ERR_ARG, "has_nonfinite: out is NULL");
    LT_DISPATCH_CUDA(x, lt_cuda_has_nonfinite(x, out));
    if (lt_lowp_cpu(x)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &x);
        int st = lt_lowp_begin(&lp, "has_nonfinite");
        if (st == LT_OK) st = lt_has_nonfinite(x, out);
        return lt_lowp_end(&lp, st);
    }
    *out = 0;
    if (lt_tensor_numel(x) == 0) return LT_OK;
    int32_t flags[LT_MAX_DIMS] = {1, 1, 1, 1, 1, 1, 1, 1};
    double count = 0.0;
    red_plan p;
    red_plan_init(&p, x, flags, NULL, NULL, RED_NONFINITE, ACC_SUM);
    p.out64 = &count;
    red_simplify(&p);
    LT_TRY(red_execute(&p));
    *out = count > 0.0;
    return LT_OK;
}

/* ---- softmax and log-softmax over the last dim -------------------------------------- */

/* Element offset of row r (flat over the leading dims) of t. */
static inline int64_t row_offset(const lt_tensor *t, int64_t r) {
    int64_t off = 0;
    for (int i = t->ndim - 2; i >= 0; i--) {
        int64_t idx = r % t->sizes[i];
        r /= t->sizes[i];
        off += idx * t->strides[i];
    }
    return off;
}

/* Rows and columns of t viewed as (rows, last dim); a 0-dim tensor is one 1-element row. */
static void row_shape(const lt_tensor *t, int64_t *rows, int64_t *cols, int64_t *col_stride) {
    *cols = t->ndim > 0 ? t->sizes[t->ndim - 1] : 1;
    *col_stride = t->ndim > 0 ? t->strides[t->ndim - 1] : 1;
    *rows = *cols > 0 ? lt_tensor_numel(t) / *cols : 0;
}

static float row_max(const float *x, int64_t sx, int64_t n) {
    float m = -INFINITY;
    if (sx == 1) {
#pragma omp simd reduction(max : m)
        for (int64_t j = 0; j < n; j++) m = x[j] > m ? x[j] : m;
    } else {
        for (int64_t j = 0; j < n; j++) m = x[j * sx] > m ? x[j * sx] : m;
    }
    return m;
}

/* y = exp(x - max) / sum. A NaN in the row makes the whole row NaN (through the sum); a row
   of -inf only is NaN, as in PyTorch. */
static void softmax_row(float *y, int64_t sy, const float *x, int64_t sx, int64_t n) {
    float m = row_max(x, sx, n);
    double s = 0.0;
    for (int64_t j = 0; j < n; j++) {
        float e = expf(x[j * sx] - m);
        y[j * sy] = e;
        s += e;
    }
    float inv = (float)(1.0 / s);
    if (sy == 1) {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) y[j] *= inv;
    } else {
        for (int64_t j = 0; j < n; j++) y[j * sy] *= inv;
    }
}

/* y = (x - max) - log(sum exp(x - max)). */
static void log_softmax_row(float *y, int64_t sy, const float *x, int64_t sx, int64_t n) {
    float m = row_max(x, sx, n);
    double s = 0.0;
    for (int64_t j = 0; j < n; j++) s += expf(x[j * sx] - m);
    float lse = (float)log(s);
    if (sy == 1 && sx == 1) {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) y[j] = (x[j] - m) - lse;
    } else {
        for (int64_t j = 0; j < n; j++) y[j * sy] = (x[j * sx] - m) - lse;
    }
}

/* dx = y * (dout - sum(dout * y)). */
static void softmax_grad_row(float *dx, int64_t sdx, const float *d, int64_t sd, const float *y,
                             int64_t sy, int64_t n) {
    double dot = 0.0;
    for (int64_t j = 0; j < n; j++) dot += (double)d[j * sd] * (double)y[j * sy];
    float fdot = (float)dot;
    for (int64_t j = 0; j < n; j++) dx[j * sdx] = y[j * sy] * (d[j * sd] - fdot);
}

/* dx = dout - exp(y) * sum(dout). */
static void log_softmax_grad_row(float *dx, int64_t sdx, const float *d, int64_t sd,
                                 const float *y, int64_t sy, int64_t n) {
    double s = 0.0;
    for (int64_t j = 0; j < n; j++) s += d[j * sd];
    float fs = (float)s;
    for (int64_t j = 0; j < n; j++) dx[j * sdx] = d[j * sd] - expf(y[j * sy]) * fs;
}

static int softmax_fwd(lt_tensor *out, const lt_tensor *x, int log_form) {
    const int id = log_form ? LT_OP_LOG_SOFTMAX : LT_OP_SOFTMAX;
    const char *name = lt_op_name(id);
    LT_TRY(check_in(id, x, name, "x"));
    LT_TRY(lt_op_check_out(id, out, name, "out", x, "x"));
    LT_TRY(lt_check_same_shape(out, x, name, "out", "x"));
    LT_DISPATCH_CUDA(out, log_form ? lt_cuda_log_softmax_forward(out, x)
                                   : lt_cuda_softmax_forward(out, x));
    if (lt_lowp_cpu(x) || lt_lowp_cpu(out)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &x);
        lt_lowp_out(&lp, &out);
        int st = lt_lowp_begin(&lp, name);
        if (st == LT_OK) st = softmax_fwd(out, x, log_form);
        return lt_lowp_end(&lp, st);
    }
    int64_t rows, cols, sx, so;
    row_shape(x, &rows, &cols, &sx);
    row_shape(out, &rows, &cols, &so);
    float *po = lt_tensor_data(out);
    const float *px = lt_tensor_data(x);
#pragma omp parallel for schedule(static) if (rows > 1 && rows * cols >= LT_PAR_MIN_WORK)
    for (int64_t r = 0; r < rows; r++) {
        float *y = po + row_offset(out, r);
        const float *xr = px + row_offset(x, r);
        if (log_form)
            log_softmax_row(y, so, xr, sx, cols);
        else
            softmax_row(y, so, xr, sx, cols);
    }
    return LT_OK;
}

static int softmax_bwd(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *y, int log_form) {
    const char *name = log_form ? "log_softmax_backward" : "softmax_backward";
    const int id = log_form ? LT_OP_LOG_SOFTMAX : LT_OP_SOFTMAX;
    LT_TRY(check_in(id, dout, name, "dout"));
    LT_TRY(check_in(id, y, name, "out"));
    LT_TRY(lt_op_check_out(id, dx, name, "dx", dout, "dout"));
    LT_TRY(lt_check_same_shape(dout, y, name, "dout", "out"));
    LT_TRY(lt_check_same_shape(dx, y, name, "dx", "out"));
    LT_TRY(lt_check_same_device(y, dx, name, "out", "dx"));
    LT_DISPATCH_CUDA(dx, log_form ? lt_cuda_log_softmax_backward(dx, dout, y)
                                  : lt_cuda_softmax_backward(dx, dout, y));
    if (lt_lowp_cpu(dout) || lt_lowp_cpu(y) || lt_lowp_cpu(dx)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &dout);
        lt_lowp_in(&lp, &y);
        lt_lowp_out(&lp, &dx);
        int st = lt_lowp_begin(&lp, name);
        if (st == LT_OK) st = softmax_bwd(dx, dout, y, log_form);
        return lt_lowp_end(&lp, st);
    }
    int64_t rows, cols, sdx, sd, sy;
    row_shape(dx, &rows, &cols, &sdx);
    row_shape(dout, &rows, &cols, &sd);
    row_shape(y, &rows, &cols, &sy);
    float *pdx = lt_tensor_data(dx);
    const float *pd = lt_tensor_data(dout), *py = lt_tensor_data(y);
#pragma omp parallel for schedule(static) if (rows > 1 && rows * cols >= LT_PAR_MIN_WORK)
    for (int64_t r = 0; r < rows; r++) {
        float *g = pdx + row_offset(dx, r);
        const float *dr = pd + row_offset(dout, r), *yr = py + row_offset(y, r);
        if (log_form)
            log_softmax_grad_row(g, sdx, dr, sd, yr, sy, cols);
        else
            softmax_grad_row(g, sdx, dr, sd, yr, sy, cols);
    }
    return LT_OK;
}

int lt_softmax_forward(lt_tensor *out, const lt_tensor *x) { return softmax_fwd(out, x, 0); }

int lt_softmax_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *out) {
    return softmax_bwd(dx, dout, out, 0);
}

int lt_log_softmax_forward(lt_tensor *out, const lt_tensor *x) { return softmax_fwd(out, x, 1); }

int lt_log_softmax_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *out) {
    return softmax_bwd(dx, dout, out, 1);
}
