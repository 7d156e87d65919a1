/* test_cuda_attention.c - attention on CUDA (cuda/attention.cu) against the CPU op and a
 * naive f64 attention.
 *
 * The op table (tests/lua/op_cases.lua, run by tests/lua/test_op_table_cuda.lua) compares
 * f32 attention on contiguous q, k, v with head dims 64 and 128 against the CPU op, outputs
 * poisoned with NaN: MHA, GQA and MQA, causal and not, T < S and T > S, packed sequences in
 * one and two batch rows, T up to 4097. Here: the small f32 cases of those head dims (so
 * that the sanitizers, which run this file with ATTN_QUICK, see the f32 kernels), one key
 * per query, the generic head dims in padded and misaligned layouts, and everything the
 * table cannot state.
 *
 * f32: output, lse and every gradient within 1e-5 (relative L2) of the CPU op on the
 * same inputs. bf16 / f16: the error of the GPU result against a naive f64 attention must be at
 * most twice the error of a naive low-precision attention on the same (rounded) inputs:
 * scores and softmax in f32, P rounded to the dtype before P V, the output rounded; in the
 * backward P and dS rounded before their products, every gradient rounded. lse (f32) is
 * held to 1e-4 absolute against f64.
 * Cases: causal and not; MHA, GQA (H 8, Hkv 2) and MQA; packed sequences (cu_seqlens),
 * which must give the bits of running each sample alone; lengths 1, 17, 1000 and 4097 for
 * T and S; head dims 64 and 128 (tensor cores) and 40, 256 (the generic path); T < S and
 * T > S under the causal mask (queries that see no key: zero output, lse -inf, zero dq);
 * padded and misaligned (element-copy) layouts; the deterministic backward gives the
 * same bits twice; the split and unsplit GQA dK / dV paths agree. Outputs are poisoned
 * with NaN first, so an element the kernels do not write fails.
 *
 * Hooks, for running this file against a CPU emulation of the kernels: ATTN_DEV_FORWARD /
 * ATTN_DEV_BACKWARD (default: the public ops), ATTN_DEV_TYPE (default LT_DEVICE_CUDA),
 * ATTN_NO_REQUIRE (do not skip without a device).
 *
 * The environment variable ATTN_QUICK keeps only the small cases, for the race and memory
 * checkers (which slow kernels down a hundredfold): ATTN_QUICK=1 runs cases of at most
 * 262,144 score entries (B * H * T * S), ATTN_QUICK=N (N > 1) cases of at most N. The small
 * cases still cover every kernel path: f32, bf16 and f16, head dims 40, 64, 128 and 256,
 * causal and not, T < S and T > S, GQA and MQA, packed rows, the deterministic backward,
 * and the padded and misaligned layouts. */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_check.h"
#include "lt_ops.h"

#ifndef ATTN_DEV_FORWARD
#define ATTN_DEV_FORWARD lt_attention_forward
#endif
#ifndef ATTN_DEV_BACKWARD
#define ATTN_DEV_BACKWARD lt_attention_backward
#endif
#ifndef ATTN_DEV_TYPE
#define ATTN_DEV_TYPE LT_DEVICE_CUDA
#endif

/* ---- a case ----------------------------------------------------------------------------- */

enum { LAYOUT_CONTIG = 0, LAYOUT_PADDED = 1, LAYOUT_MISALIGNED = 2 };

typedef struct {
    const char *name;
    int dtype;
    int64_t B, T, S, H, Hkv, D;
    int causal;
    int nlens;        /* packed sequences: lens[0..nlens) sum to B * T; 0: none */
    const int *lens;
    int layout;
} acase;

/* Host copies of a case's inputs and outputs: f32, contiguous (B, T|S, H|Hkv, D). */
typedef struct {
    float *q, *k, *v, *dout;
    float *out, *lse, *dq, *dk, *dv; /* device results (forward and backward) */
} host_data;

typedef struct {
    int64_t b, q0, nq, k0, nk;
} seg;

static int64_t make_segs(const acase *c, seg *s) {
    if (!c->nlens) {
        for (int64_t b = 0; b < c->B; b++) s[b] = (seg){b, 0, c->T, 0, c->S};
        return c->B;
    }
    int64_t off = 0;
    for (int i = 0; i < c->nlens; i++) {
        int64_t b = off / c->T, t0 = off % c->T;
        s[i] = (seg){b, t0, c->lens[i], t0, c->lens[i]};
        off += c->lens[i];
    }
    return c->nlens;
}

static int64_t keys_seen(const acase *c, const seg *g, int64_t i) {
    if (!c->causal) return g->nk;
    int64_t n = i + g->nk - g->nq + 1;
    return n < 0 ? 0 : (n > g->nk ? g->nk : n);
}

/* The ATTN_QUICK limit on B * H * T * S (0: none), read once in main. */
static int64_t quick_limit;

static int64_t quick_limit_from_env(void) {
    const char *v = getenv("ATTN_QUICK");
    if (!v || !*v || !strcmp(v, "0")) return 0;
    char *end = NULL;
    long long n = strtoll(v, &end, 10);
    if (!end || *end || n < 1) {
        fprintf(stderr, "ATTN_QUICK=%s: expected 1 (the small cases) or a score-entry limit\n", v);
        exit(2);
    }
    return n == 1 ? 262144 : (int64_t)n;
}

static int too_big(const acase *c) {
    return quick_limit > 0 && c->B * c->H * c->T * c->S > quick_limit;
}

static float round_to(float x, int dtype) {
    if (dtype == LT_DTYPE_BF16) return lt_bf16_to_f32(lt_f32_to_bf16(x));
    if (dtype == LT_DTYPE_F16) return lt_f16_to_f32(lt_f32_to_f16(x));
    return x;
}

/* ---- tensors ------------------------------------------------------------------------------ */

static lt_tensor host_tensor(int dtype, const int64_t *sizes) {
    lt_tensor t = {0};
    if (lt_tensor_empty(&t, dtype, 4, sizes, LT_DEVICE_CPU, 0) != LT_OK) {
        fprintf(stderr, "host_tensor: %s\n", lt_last_error());
        exit(1);
    }
    return t;
}

/* A device tensor of `sizes` in the given layout, filled with NaN: contiguous; rows padded
   (head dim stride D + 8: still 16-byte aligned rows, not a dense tensor); or misaligned
   (D + 3, starting one element in: the kernels' element-copy path). */
static lt_tensor dev_tensor(int dtype, const int64_t *sizes, int layout) {
    int64_t pad = layout == LAYOUT_PADDED ? 8 : layout == LAYOUT_MISALIGNED ? 3 : 0;
    int64_t start = layout == LAYOUT_MISALIGNED ? 1 : 0;
    int64_t big[4] = {sizes[0], sizes[1], sizes[2], sizes[3] + pad};
    lt_tensor base = {0}, view = {0};
    if (lt_tensor_empty(&base, dtype, 4, big, ATTN_DEV_TYPE, 0) != LT_OK ||
        lt_tensor_fill(&base, NAN) != LT_OK ||
        lt_tensor_narrow(&view, &base, 3, start, sizes[3]) != LT_OK) {
        fprintf(stderr, "dev_tensor: %s\n", lt_last_error());
        exit(1);
    }
    lt_tensor_release(&base);
    return view;
}

/* A device tensor holding f32 host values (contiguous, `sizes`), rounded to dtype. */
static lt_tensor dev_from(const float *x, int dtype, const int64_t *sizes, int layout) {
    lt_tensor h = host_tensor(LT_DTYPE_F32, sizes);
    memcpy(lt_tensor_data(&h), x, (size_t)lt_tensor_numel(&h) * sizeof(float));
    lt_tensor d = dev_tensor(dtype, sizes, layout);
    if (lt_tensor_copy(&d, &h) != LT_OK) {
        fprintf(stderr, "dev_from: %s\n", lt_last_error());
        exit(1);
    }
    lt_tensor_release(&h);
    return d;
}

/* f32 host values (contiguous) of any tensor, malloc'd. */
static float *host_values(const lt_tensor *t) {
    lt_tensor h = {0};
    if (lt_tensor_empty(&h, LT_DTYPE_F32, t->ndim, t->sizes, LT_DEVICE_CPU, 0) != LT_OK ||
        lt_tensor_copy(&h, t) != LT_OK) {
        fprintf(stderr, "host_values: %s\n", lt_last_error());
        exit(1);
    }
    int64_t n = lt_tensor_numel(&h);
    float *v = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    memcpy(v, lt_tensor_data(&h), (size_t)n * sizeof(float));
    lt_tensor_release(&h);
    return v;
}

static float *randn_values(int64_t n, int dtype, double std) {
    int64_t sz[4] = {n, 1, 1, 1};
    lt_tensor t = cuda_randn(LT_DTYPE_F32, 4, sz, std);
    float *v = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    const float *p = lt_tensor_data(&t);
    for (int64_t i = 0; i < n; i++) v[i] = round_to(p[i], dtype);
    lt_tensor_release(&t);
    return v;
}

/* ---- references ---------------------------------------------------------------------------- */

/* Naive attention. lowp < 0: f64 throughout. Otherwise f32 arithmetic with the roundings
   of a straightforward implementation in dtype `lowp`: P (normalised) rounded before P V and
   before dV, dS rounded before dQ and dK, outputs rounded; Delta from the rounded output.
   Outputs (any may be NULL): out, lse (f64 / f32 by mode, stored as double), dq, dk, dv. */
typedef struct {
    double *out, *lse, *dq, *dk, *dv;
} ref_out;

static void reference(const acase *c, const host_data *in, int lowp, ref_out *r, int backward) {
    const int64_t T = c->T, S = c->S, H = c->H, Hkv = c->Hkv, D = c->D, group = H / Hkv;
    const double scale = 1.0 / sqrt((double)D);
    seg *segs = malloc((size_t)(c->nlens ? c->nlens : c->B) * sizeof(seg));
    int64_t nseg = make_segs(c, segs);
    int64_t maxk = c->nlens ? T : S;
    double *p = malloc((size_t)(maxk > 0 ? maxk : 1) * sizeof(double));
    double *dp = malloc((size_t)(maxk > 0 ? maxk : 1) * sizeof(double));
    double *o = malloc((size_t)D * sizeof(double));
    if (backward) {
        memset(r->dk, 0, (size_t)(c->B * S * Hkv * D) * sizeof(double));
        memset(r->dv, 0, (size_t)(c->B * S * Hkv * D) * sizeof(double));
    }
#define RND(x) (lowp < 0 ? (double)(x) : (double)round_to((float)(x), lowp))
#define QI(b, t, h) (in->q + (((b) * T + (t)) * H + (h)) * D)
#define DOI(b, t, h) (in->dout + (((b) * T + (t)) * H + (h)) * D)
#define KI(b, s, h) (in->k + (((b) * S + (s)) * Hkv + (h)) * D)
#define VI(b, s, h) (in->v + (((b) * S + (s)) * Hkv + (h)) * D)
    for (int64_t sg = 0; sg < nseg; sg++) {
        const seg *g = &segs[sg];
        for (int64_t h = 0; h < H; h++) {
            const int64_t hk = h / group;
            for (int64_t i = 0; i < g->nq; i++) {
                const int64_t t = g->q0 + i, n = keys_seen(c, g, i);
                const float *qi = QI(g->b, t, h), *doi = DOI(g->b, t, h);
                double m = -INFINITY, l = 0;
                for (int64_t j = 0; j < n; j++) {
                    const float *kj = KI(g->b, g->k0 + j, hk);
                    if (lowp < 0) {
                        double s = 0;
                        for (int64_t d = 0; d < D; d++) s += (double)qi[d] * kj[d];
                        p[j] = s * scale;
                    } else {
                        float s = 0;
                        for (int64_t d = 0; d < D; d++) s += qi[d] * kj[d];
                        p[j] = (double)(s * (float)scale);
                    }
                    if (p[j] > m) m = p[j];
                }
                for (int64_t j = 0; j < n; j++) {
                    p[j] = lowp < 0 ? exp(p[j] - m) : (double)expf((float)(p[j] - m));
                    l += p[j];
                }
                if (lowp >= 0) l = (double)(float)l;
                const double lse = n > 0 ? m + log(l) : -INFINITY;
                for (int64_t d = 0; d < D; d++) o[d] = 0;
                for (int64_t j = 0; j < n; j++) {
                    p[j] = lowp < 0 ? p[j] / l : (double)((float)p[j] / (float)l); /* P */
                    const double pr = RND(p[j]);
                    const float *vj = VI(g->b, g->k0 + j, hk);
                    for (int64_t d = 0; d < D; d++) o[d] += pr * vj[d];
                }
                const int64_t row = ((g->b * T + t) * H + h) * D;
                for (int64_t d = 0; d < D; d++) o[d] = RND(o[d]);
                if (r->out)
                    for (int64_t d = 0; d < D; d++) r->out[row + d] = o[d];
                if (r->lse) r->lse[(g->b * H + h) * T + t] = lse;
                if (!backward) continue;
                double delta = 0;
                for (int64_t d = 0; d < D; d++) delta += (double)doi[d] * o[d];
                if (lowp >= 0) delta = (double)(float)delta;
                double *dqi = r->dq + row;
                for (int64_t d = 0; d < D; d++) dqi[d] = 0;
                for (int64_t j = 0; j < n; j++) {
                    const float *kj = KI(g->b, g->k0 + j, hk), *vj = VI(g->b, g->k0 + j, hk);
                    double dpj = 0;
                    for (int64_t d = 0; d < D; d++) dpj += (double)doi[d] * vj[d];
                    if (lowp >= 0) dpj = (double)(float)dpj;
                    dp[j] = RND(p[j] * (dpj - delta)); /* dS */
                    const double pr = RND(p[j]);
                    const int64_t kr = ((g->b * S + g->k0 + j) * Hkv + hk) * D;
                    for (int64_t d = 0; d < D; d++) {
                        dqi[d] += scale * dp[j] * kj[d];
                        r->dk[kr + d] += scale * dp[j] * qi[d];
                        r->dv[kr + d] += pr * doi[d];
                    }
                }
                for (int64_t d = 0; d < D; d++) dqi[d] = RND(dqi[d]);
            }
        }
    }
    if (backward && lowp >= 0) {
        for (int64_t i = 0; i < c->B * S * Hkv * D; i++) {
            r->dk[i] = RND(r->dk[i]);
            r->dv[i] = RND(r->dv[i]);
        }
    }
#undef RND
#undef QI
#undef DOI
#undef KI
#undef VI
    free(segs);
    free(p);
    free(dp);
    free(o);
}

/* ||got - want|| / ||want|| over n values; NaN in got counts as infinite error. */
static double rel_err(const float *got, const double *want, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(got[i])) return INFINITY;
        double d = (double)got[i] - want[i];
        num += d * d;
        den += want[i] * want[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static double rel_err_dd(const double *got, const double *want, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = got[i] - want[i];
        num += d * d;
        den += want[i] * want[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* lse: -inf where want is -inf, else within atol + rtol |want|. */
static int lse_close(const char *what, const float *got, const double *want, int64_t n,
                     double atol, double rtol) {
    for (int64_t i = 0; i < n; i++) {
        int ok = isinf(want[i]) ? (isinf(got[i]) && got[i] < 0)
                                : fabs((double)got[i] - want[i]) <= atol + rtol * fabs(want[i]);
        if (!ok) {
            fprintf(stderr, "%s: lse[%lld] = %.9g, want %.9g\n", what, (long long)i,
                    (double)got[i], want[i]);
            CHECK(0);
            return 0;
        }
    }
    CHECK(1);
    return 1;
}

/* With one key per query softmax has no gradient: dq and dk are exactly 0, and only the
   rounding noise of dP - Delta remains, for which no relative error means anything. */
static int check_zero(const char *what, const float *got, int64_t n) {
    double mx = 0;
    for (int64_t i = 0; i < n; i++) mx = fmax(mx, isnan(got[i]) ? INFINITY : fabs(got[i]));
    int ok = mx <= 1e-4;
    if (!ok) fprintf(stderr, "%s: max |value| %.3g, want 0 (single key)\n", what, mx);
    CHECK(ok);
    return ok;
}

static int single_key(const acase *c) {
    if (!c->nlens) return c->S == 1;
    for (int i = 0; i < c->nlens; i++)
        if (c->lens[i] != 1) return 0;
    return 1;
}

static int check_lowp(const char *what, const float *got, const double *want,
                      const double *naive, int64_t n, int dtype) {
    double e = rel_err(got, want, n), en = rel_err_dd(naive, want, n);
    double bound = 2 * en + 1e-6;
    int ok = e <= bound;
    if (!ok)
        fprintf(stderr, "%s: relative error %.3g > 2 x naive %s error %.3g\n", what, e,
                lt_dtype_info(dtype)->name, en);
    CHECK(ok);
    return ok;
}

/* ---- running a case on the device ------------------------------------------------------------ */

typedef void (*set_det_fn)(int);
static set_det_fn set_deterministic;

static lt_tensor dev_cu(const acase *c) {
    lt_tensor cu = {0};
    int64_t n = c->nlens + 1;
    lt_tensor h = {0};
    if (lt_tensor_empty(&h, LT_DTYPE_I32, 1, &n, LT_DEVICE_CPU, 0) != LT_OK) exit(1);
    int32_t *p = lt_tensor_data(&h);
    p[0] = 0;
    for (int i = 0; i < c->nlens; i++) p[i + 1] = p[i] + c->lens[i];
    if (lt_tensor_empty(&cu, LT_DTYPE_I32, 1, &n, ATTN_DEV_TYPE, 0) != LT_OK ||
        lt_tensor_copy(&cu, &h) != LT_OK) {
        fprintf(stderr, "dev_cu: %s\n", lt_last_error());
        exit(1);
    }
    lt_tensor_release(&h);
    return cu;
}

/* Forward then backward on the device; results into d (malloc'd host f32). */
static int run_device(const acase *c, host_data *d, int backward) {
    const int64_t qs[4] = {c->B, c->T, c->H, c->D}, ks[4] = {c->B, c->S, c->Hkv, c->D};
    const int64_t ls[4] = {c->B, c->H, c->T, 1};
    const float scale = (float)(1.0 / sqrt((double)c->D));
    lt_tensor q = dev_from(d->q, c->dtype, qs, c->layout), k = dev_from(d->k, c->dtype, ks, c->layout);
    lt_tensor v = dev_from(d->v, c->dtype, ks, c->layout);
    lt_tensor out = dev_tensor(c->dtype, qs, c->layout), lse = {0}, cu = {0};
    if (lt_tensor_empty(&lse, LT_DTYPE_F32, 3, ls, ATTN_DEV_TYPE, 0) != LT_OK ||
        lt_tensor_fill(&lse, NAN) != LT_OK)
        exit(1);
    if (c->nlens) cu = dev_cu(c);
    int ok = 1;
    int st = ATTN_DEV_FORWARD(&out, &lse, &q, &k, &v, c->nlens ? &cu : NULL, scale, c->causal);
    if (st != LT_OK) {
        fprintf(stderr, "%s: forward: %s\n", c->name, lt_last_error());
        ok = 0;
    }
    d->out = host_values(&out);
    d->lse = host_values(&lse);
    if (ok && backward) {
        lt_tensor dout = dev_from(d->dout, c->dtype, qs, c->layout);
        lt_tensor dq = dev_tensor(c->dtype, qs, c->layout), dk = dev_tensor(c->dtype, ks, c->layout);
        lt_tensor dv = dev_tensor(c->dtype, ks, c->layout);
        st = ATTN_DEV_BACKWARD(&dq, &dk, &dv, &dout, &q, &k, &v, &out, &lse,
                               c->nlens ? &cu : NULL, scale, c->causal);
        if (st != LT_OK) {
            fprintf(stderr, "%s: backward: %s\n", c->name, lt_last_error());
            ok = 0;
        }
        d->dq = host_values(&dq);
        d->dk = host_values(&dk);
        d->dv = host_values(&dv);
        lt_tensor_release(&dout);
        lt_tensor_release(&dq);
        lt_tensor_release(&dk);
        lt_tensor_release(&dv);
    }
    lt_tensor_release(&q);
    lt_tensor_release(&k);
    lt_tensor_release(&v);
    lt_tensor_release(&out);
    lt_tensor_release(&lse);
    lt_tensor_release(&cu);
    CHECK(ok);
    return ok;
}

static void make_inputs(const acase *c, host_data *d) {
    memset(d, 0, sizeof *d);
    int64_t nq = c->B * c->T * c->H * c->D, nk = c->B * c->S * c->Hkv * c->D;
    d->q = randn_values(nq, c->dtype, 1.0);
    d->k = randn_values(nk, c->dtype, 1.0);
    d->v = randn_values(nk, c->dtype, 1.0);
    d->dout = randn_values(nq, c->dtype, 1.0);
}

static void free_data(host_data *d) {
    free(d->q);
    free(d->k);
    free(d->v);
    free(d->dout);
    free(d->out);
    free(d->lse);
    free(d->dq);
    free(d->dk);
    free(d->dv);
    memset(d, 0, sizeof *d);
}

static ref_out ref_alloc(const acase *c) {
    int64_t nq = c->B * c->T * c->H * c->D, nk = c->B * c->S * c->Hkv * c->D;
    int64_t nl = c->B * c->H * c->T;
    ref_out r;
    r.out = calloc((size_t)(nq + 1), sizeof(double));
    r.lse = calloc((size_t)(nl + 1), sizeof(double));
    r.dq = calloc((size_t)(nq + 1), sizeof(double));
    r.dk = calloc((size_t)(nk + 1), sizeof(double));
    r.dv = calloc((size_t)(nk + 1), sizeof(double));
    return r;
}

static void ref_free(ref_out *r) {
    free(r->out);
    free(r->lse);
    free(r->dq);
    free(r->dk);
    free(r->dv);
}

/* f32: the device against the CPU op on the same inputs. */
static void check_f32_case(const acase *c) {
    host_data d;
    make_inputs(c, &d);
    if (!run_device(c, &d, 1)) {
        free_data(&d);
        return;
    }
    const int64_t qs[4] = {c->B, c->T, c->H, c->D}, ks[4] = {c->B, c->S, c->Hkv, c->D};
    const int64_t ls[3] = {c->B, c->H, c->T};
    const int64_t nq = c->B * c->T * c->H * c->D, nk = c->B * c->S * c->Hkv * c->D;
    const int64_t nl = c->B * c->H * c->T;
    lt_tensor q = host_tensor(LT_DTYPE_F32, qs), k = host_tensor(LT_DTYPE_F32, ks);
    lt_tensor v = host_tensor(LT_DTYPE_F32, ks), dout = host_tensor(LT_DTYPE_F32, qs);
    lt_tensor out = host_tensor(LT_DTYPE_F32, qs), dq = host_tensor(LT_DTYPE_F32, qs);
    lt_tensor dk = host_tensor(LT_DTYPE_F32, ks), dv = host_tensor(LT_DTYPE_F32, ks);
    lt_tensor lse = {0}, cu = {0};
    lt_tensor_empty(&lse, LT_DTYPE_F32, 3, ls, LT_DEVICE_CPU, 0);
    memcpy(lt_tensor_data(&q), d.q, (size_t)nq * 4);
    memcpy(lt_tensor_data(&k), d.k, (size_t)nk * 4);
    memcpy(lt_tensor_data(&v), d.v, (size_t)nk * 4);
    memcpy(lt_tensor_data(&dout), d.dout, (size_t)nq * 4);
    if (c->nlens) {
        int64_t n = c->nlens + 1;
        lt_tensor_empty(&cu, LT_DTYPE_I32, 1, &n, LT_DEVICE_CPU, 0);
        int32_t *p = lt_tensor_data(&cu);
        p[0] = 0;
        for (int i = 0; i < c->nlens; i++) p[i + 1] = p[i] + c->lens[i];
    }
    const float scale = (float)(1.0 / sqrt((double)c->D));
    CHECK_OK(lt_attention_forward(&out, &lse, &q, &k, &v, c->nlens ? &cu : NULL, scale, c->causal));
    CHECK_OK(lt_attention_backward(&dq, &dk, &dv, &dout, &q, &k, &v, &out, &lse,
                                   c->nlens ? &cu : NULL, scale, c->causal));
    char what[160];
    const float *got[4] = {d.out, d.dq, d.dk, d.dv};
    const lt_tensor *cpu[4] = {&out, &dq, &dk, &dv};
    const char *names[4] = {"out", "dq", "dk", "dv"};
    for (int i = 0; i < 4; i++) {
        lt_tensor g = {0};
        lt_tensor_from_buffer(&g, LT_DTYPE_F32, 4, cpu[i]->sizes, got[i],
                              lt_tensor_numel(cpu[i]) * (int64_t)sizeof(float));
        snprintf(what, sizeof what, "%s: %s", c->name, names[i]);
        if ((i == 1 || i == 2) && single_key(c))
            check_zero(what, got[i], lt_tensor_numel(cpu[i]));
        else
            cuda_close_f32(what, &g, cpu[i]);
        lt_tensor_release(&g);
    }
    double *w = malloc((size_t)(nl + 1) * sizeof(double));
    const float *cl = lt_tensor_data(&lse);
    for (int64_t i = 0; i < nl; i++) w[i] = cl[i];
    snprintf(what, sizeof what, "%s: lse", c->name);
    lse_close(what, d.lse, w, nl, 1e-5, 1e-5);
    free(w);
    lt_tensor_release(&q);
    lt_tensor_release(&k);
    lt_tensor_release(&v);
    lt_tensor_release(&dout);
    lt_tensor_release(&out);
    lt_tensor_release(&dq);
    lt_tensor_release(&dk);
    lt_tensor_release(&dv);
    lt_tensor_release(&lse);
    lt_tensor_release(&cu);
    free_data(&d);
}

/* bf16 / f16: the device and a naive low-precision attention against f64. */
static void check_lowp_case(const acase *c) {
    host_data d;
    make_inputs(c, &d);
    if (!run_device(c, &d, 1)) {
        free_data(&d);
        return;
    }
    const int64_t nq = c->B * c->T * c->H * c->D, nk = c->B * c->S * c->Hkv * c->D;
    const int64_t nl = c->B * c->H * c->T;
    ref_out exact = ref_alloc(c), naive = ref_alloc(c);
    reference(c, &d, -1, &exact, 1);
    reference(c, &d, c->dtype, &naive, 1);
    char what[160];
    snprintf(what, sizeof what, "%s: out", c->name);
    check_lowp(what, d.out, exact.out, naive.out, nq, c->dtype);
    snprintf(what, sizeof what, "%s: lse", c->name);
    lse_close(what, d.lse, exact.lse, nl, 1e-4, 1e-5);
    snprintf(what, sizeof what, "%s: dq", c->name);
    if (single_key(c))
        check_zero(what, d.dq, nq);
    else
        check_lowp(what, d.dq, exact.dq, naive.dq, nq, c->dtype);
    snprintf(what, sizeof what, "%s: dk", c->name);
    if (single_key(c))
        check_zero(what, d.dk, nk);
    else
        check_lowp(what, d.dk, exact.dk, naive.dk, nk, c->dtype);
    snprintf(what, sizeof what, "%s: dv", c->name);
    check_lowp(what, d.dv, exact.dv, naive.dv, nk, c->dtype);
    ref_free(&exact);
    ref_free(&naive);
    free_data(&d);
}

/* Packed sequences give the bits of each sample run alone (B = 1, T = its length), forward
   and deterministic backward (MHA, so no head split changes the summation order). */
static void check_packed_equals_alone(int dtype, int64_t D, int causal) {
    static const int lens[] = {1, 17, 130, 5, 111};
    const int n = 5;
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += lens[i];
    acase packed = {"packed", dtype, 1, total, total, 2, 2, D, causal, n, lens, LAYOUT_CONTIG};
    if (too_big(&packed)) return;
    host_data dp;
    make_inputs(&packed, &dp);
    if (set_deterministic) set_deterministic(1);
    if (!run_device(&packed, &dp, 1)) {
        if (set_deterministic) set_deterministic(0);
        free_data(&dp);
        return;
    }
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        acase one = {"alone", dtype, 1, lens[i], lens[i], 2, 2, D, causal, 0, NULL, LAYOUT_CONTIG};
        host_data d1;
        memset(&d1, 0, sizeof d1);
        const int64_t row = 2 * D, m = lens[i] * row;
        d1.q = dp.q + off * row;
        d1.k = dp.k + off * row;
        d1.v = dp.v + off * row;
        d1.dout = dp.dout + off * row;
        if (run_device(&one, &d1, 1)) {
            int same = !memcmp(d1.out, dp.out + off * row, (size_t)m * 4) &&
                       !memcmp(d1.dq, dp.dq + off * row, (size_t)m * 4) &&
                       !memcmp(d1.dk, dp.dk + off * row, (size_t)m * 4) &&
                       !memcmp(d1.dv, dp.dv + off * row, (size_t)m * 4);
            for (int h = 0; h < 2; h++)
                same = same && !memcmp(d1.lse + h * lens[i], dp.lse + h * total + off,
                                       (size_t)lens[i] * 4);
            if (!same)
                fprintf(stderr, "packed %s D %lld causal %d: sample %d differs from running it alone\n",
                        lt_dtype_info(dtype)->name, (long long)D, causal, i);
            CHECK(same);
        }
        free(d1.out);
        free(d1.lse);
        free(d1.dq);
        free(d1.dk);
        free(d1.dv);
        off += lens[i];
    }
    if (set_deterministic) set_deterministic(0);
    free_data(&dp);
}

/* The deterministic backward gives the same bits on two runs. */
static void check_deterministic(int dtype, int64_t D) {
    acase c = {"deterministic", dtype, 2, 300, 300, 8, 2, D, 1, 0, NULL, LAYOUT_CONTIG};
    if (too_big(&c)) return;
    host_data a, b;
    make_inputs(&c, &a);
    b = a;
    b.out = b.lse = b.dq = b.dk = b.dv = NULL;
    set_deterministic(1);
    int ok = run_device(&c, &a, 1) && run_device(&c, &b, 1);
    set_deterministic(0);
    if (ok) {
        int64_t nq = c.B * c.T * c.H * c.D, nk = c.B * c.S * c.Hkv * c.D;
        int same = !memcmp(a.dq, b.dq, (size_t)nq * 4) && !memcmp(a.dk, b.dk, (size_t)nk * 4) &&
                   !memcmp(a.dv, b.dv, (size_t)nk * 4);
        if (!same) fprintf(stderr, "deterministic %s D %lld: two runs differ\n",
                           lt_dtype_info(dtype)->name, (long long)D);
        CHECK(same);
    }
    free(b.out);
    free(b.lse);
    free(b.dq);
    free(b.dk);
    free(b.dv);
    free_data(&a);
}

/* GQA against MHA on K and V repeated over each group: with enough key blocks the GQA
   backward keeps the group in one CTA (no split); dK, dV must be the group sums of the
   MHA gradients (up to one rounding of the dtype), dq and out equal up to rounding. */
static void check_gqa_vs_expanded(int dtype, int64_t D) {
    const int64_t B = 1, T = 2049, H = 32, Hkv = 16, group = H / Hkv;
    acase g = {"gqa", dtype, B, T, T, H, Hkv, D, 1, 0, NULL, LAYOUT_CONTIG};
    acase m = {"mha", dtype, B, T, T, H, H, D, 1, 0, NULL, LAYOUT_CONTIG};
    host_data dg, dm;
    if (too_big(&g)) return;
    make_inputs(&g, &dg);
    memset(&dm, 0, sizeof dm);
    dm.q = dg.q;
    dm.dout = dg.dout;
    dm.k = malloc((size_t)(B * T * H * D) * 4);
    dm.v = malloc((size_t)(B * T * H * D) * 4);
    for (int64_t t = 0; t < B * T; t++)
        for (int64_t h = 0; h < H; h++) {
            memcpy(dm.k + (t * H + h) * D, dg.k + (t * Hkv + h / group) * D, (size_t)D * 4);
            memcpy(dm.v + (t * H + h) * D, dg.v + (t * Hkv + h / group) * D, (size_t)D * 4);
        }
    if (run_device(&g, &dg, 1) && run_device(&m, &dm, 1)) {
        const int64_t nk = B * T * Hkv * D;
        double *sk = calloc((size_t)nk, sizeof(double)), *sv = calloc((size_t)nk, sizeof(double));
        double *o = malloc((size_t)(B * T * H * D) * sizeof(double));
        for (int64_t t = 0; t < B * T; t++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t d = 0; d < D; d++) {
                    sk[(t * Hkv + h / group) * D + d] += dm.dk[(t * H + h) * D + d];
                    sv[(t * Hkv + h / group) * D + d] += dm.dv[(t * H + h) * D + d];
                }
        /* a few dtype roundings apart at most */
        const double tol = dtype == LT_DTYPE_BF16 ? 1e-2 : 2e-3;
        double e1 = rel_err(dg.dk, sk, nk), e2 = rel_err(dg.dv, sv, nk);
        for (int64_t i = 0; i < B * T * H * D; i++) o[i] = dm.out[i];
        double e3 = rel_err(dg.out, o, B * T * H * D);
        for (int64_t i = 0; i < B * T * H * D; i++) o[i] = dm.dq[i];
        double e4 = rel_err(dg.dq, o, B * T * H * D);
        if (!(e1 <= tol && e2 <= tol && e3 <= tol && e4 <= tol))
            fprintf(stderr, "gqa vs expanded %s D %lld: dk %.3g dv %.3g out %.3g dq %.3g (tol %.3g)\n",
                    lt_dtype_info(dtype)->name, (long long)D, e1, e2, e3, e4, tol);
        CHECK(e1 <= tol && e2 <= tol && e3 <= tol && e4 <= tol);
        free(sk);
        free(sv);
        free(o);
    }
    free(dm.k);
    free(dm.v);
    free(dm.out);
    free(dm.lse);
    free(dm.dq);
    free(dm.dk);
    free(dm.dv);
    free_data(&dg);
}

/* Refusals: mismatched dtypes, an unsupported head dim. */
static void check_errors(void) {
    const int64_t qs[4] = {1, 4, 2, 64}, ks[4] = {1, 4, 2, 64}, big[4] = {1, 4, 2, 320};
    const int64_t ls[3] = {1, 2, 4};
    lt_tensor q = dev_tensor(LT_DTYPE_BF16, qs, 0), k = dev_tensor(LT_DTYPE_F16, ks, 0);
    lt_tensor v = dev_tensor(LT_DTYPE_BF16, ks, 0), out = dev_tensor(LT_DTYPE_BF16, qs, 0);
    lt_tensor lse = {0};
    lt_tensor_empty(&lse, LT_DTYPE_F32, 3, ls, ATTN_DEV_TYPE, 0);
    int st = ATTN_DEV_FORWARD(&out, &lse, &q, &k, &v, NULL, 0.125f, 0);
    CHECK(st != LT_OK);
    lt_tensor bq = dev_tensor(LT_DTYPE_F32, big, 0), bk = dev_tensor(LT_DTYPE_F32, big, 0);
    lt_tensor bv = dev_tensor(LT_DTYPE_F32, big, 0), bo = dev_tensor(LT_DTYPE_F32, big, 0);
    lt_tensor_fill(&bq, 0.5);
    lt_tensor_fill(&bk, 0.5);
    lt_tensor_fill(&bv, 0.5);
    st = ATTN_DEV_FORWARD(&bo, &lse, &bq, &bk, &bv, NULL, 0.125f, 0);
    CHECK(st != LT_OK && strstr(lt_last_error(), "head dim") != NULL);
    lt_tensor_release(&q);
    lt_tensor_release(&k);
    lt_tensor_release(&v);
    lt_tensor_release(&out);
    lt_tensor_release(&lse);
    lt_tensor_release(&bq);
    lt_tensor_release(&bk);
    lt_tensor_release(&bv);
    lt_tensor_release(&bo);
}

int main(void) {
    /* the low-precision criterion here is the naive attention's (P rounded before P V),
       not cuda_close_lowp's rounding of the f32 result; device copies are made per layout */
    (void)cuda_close_lowp;
    (void)cuda_copy_to;
#ifndef ATTN_NO_REQUIRE
    cuda_require();
#else
    (void)cuda_require;
#endif
    quick_limit = quick_limit_from_env();
    if (quick_limit) printf("ATTN_QUICK: only cases of at most %lld score entries\n", (long long)quick_limit);
    set_deterministic = (set_det_fn)dlsym(RTLD_DEFAULT, "lt_cuda_attention_set_deterministic");
    if (!set_deterministic) {
        fprintf(stderr, "lt_cuda_attention_set_deterministic is not exported\n");
        CHECK(0);
    }
    static const int lens_row[] = {1, 17, 300, 5, 700};   /* one row of 1023 */
    static const int lens_two[] = {100, 412, 1, 511};      /* two rows of 512 */
    const int F32 = LT_DTYPE_F32, BF16 = LT_DTYPE_BF16, F16 = LT_DTYPE_F16;

    /* f32 against the CPU op (the op table runs the large contiguous f32 cases) */
    const acase f32_cases[] = {
        {"f32 mha T17", F32, 2, 17, 17, 2, 2, 64, 0, 0, NULL, 0},
        {"f32 one", F32, 1, 1, 1, 1, 1, 64, 1, 0, NULL, 0},
        {"f32 mqa causal T<S", F32, 1, 17, 1000, 4, 1, 128, 1, 0, NULL, 0},
        {"f32 causal T>S", F32, 2, 100, 30, 2, 2, 64, 1, 0, NULL, 0},
        {"f32 noncausal S1000", F32, 1, 17, 1000, 2, 1, 128, 0, 0, NULL, 0},
        {"f32 D40 padded", F32, 2, 77, 77, 4, 2, 40, 1, 0, NULL, LAYOUT_PADDED},
        {"f32 D256 misaligned", F32, 1, 65, 65, 2, 1, 256, 0, 0, NULL, LAYOUT_MISALIGNED},
    };
    for (size_t i = 0; i < sizeof f32_cases / sizeof f32_cases[0]; i++)
        if (!too_big(&f32_cases[i])) check_f32_case(&f32_cases[i]);

    /* bf16 / f16 against f64, within twice a naive low-precision attention's error */
    for (int di = 0; di < 2; di++) {
        const int dt = di ? F16 : BF16;
        const acase lowp_cases[] = {
            {"mha D64", dt, 2, 17, 17, 2, 2, 64, 0, 0, NULL, 0},
            {"mha D128 causal", dt, 2, 17, 17, 2, 2, 128, 1, 0, NULL, 0},
            {"one", dt, 1, 1, 1, 2, 1, 64, 1, 0, NULL, 0},
            {"gqa D64 causal T1000", dt, 1, 1000, 1000, 8, 2, 64, 1, 0, NULL, 0},
            {"gqa D128 T1000", dt, 1, 1000, 1000, 8, 2, 128, di, 0, NULL, 0},
            {"mqa D128 causal", dt, 2, 200, 200, 4, 1, 128, 1, 0, NULL, 0},
            {"causal T<S D128", dt, 1, 17, 1000, 4, 2, 128, 1, 0, NULL, 0},
            {"causal T<S D64", dt, 2, 33, 300, 2, 1, 64, 1, 0, NULL, 0},
            {"causal T>S", dt, 2, 100, 30, 2, 2, 64, 1, 0, NULL, 0},
            {"noncausal T>S D128", dt, 1, 300, 17, 2, 2, 128, 0, 0, NULL, 0},
            {"packed gqa D64", dt, 1, 1023, 1023, 8, 2, 64, 1, 5, lens_row, 0},
            {"packed two rows D128", dt, 2, 512, 512, 4, 4, 128, 1, 4, lens_two, 0},
            {"padded D64", dt, 2, 77, 77, 4, 2, 64, 1, 0, NULL, LAYOUT_PADDED},
            {"misaligned D128", dt, 1, 77, 90, 4, 1, 128, 1, 0, NULL, LAYOUT_MISALIGNED},
            {"generic D40", dt, 2, 77, 77, 4, 2, 40, 1, 0, NULL, 0},
            {"generic D256", dt, 1, 65, 65, 2, 1, 256, 0, 0, NULL, 0},
            {di ? "causal T4097 D128" : "causal T4097 D64", dt, 1, 4097, 4097, di ? 1 : 2, 1,
             di ? 128 : 64, 1, 0, NULL, 0},
        };
        for (size_t i = 0; i < sizeof lowp_cases / sizeof lowp_cases[0]; i++) {
            const acase *c = &lowp_cases[i];
            if (too_big(c)) continue;
            check_lowp_case(c);
            /* the smaller cases again through the deterministic backward (the f64
               references of the large ones cost most of the test's time) */
            if (set_deterministic && c->T * c->S <= 1024 * 1024 / 4) {
                set_deterministic(1);
                check_lowp_case(c);
                set_deterministic(0);
            }
        }
        for (int64_t D = 64; D <= 128; D += 64) {
            check_packed_equals_alone(dt, D, 1);
            check_packed_equals_alone(dt, D, 0);
            if (set_deterministic) check_deterministic(dt, D);
            check_gqa_vs_expanded(dt, D);
        }
    }
    check_errors();
    return check_summary();
}
