/* attention.c - softmax attention with grouped-query heads, forward and backward.
 *
 * Work is split into segments: one per batch row, or one per packed sequence when
 * cu_seqlens is given (queries and keys of a segment never meet another segment's). The
 * forward takes (segment, query head) pairs, the backward (segment, key/value head) groups
 * so each thread owns the dk/dv rows it accumulates. Inside,
 * queries go in blocks of BQ rows: scores for a block are one small GEMM against K^T, the
 * softmax runs in place, and the output is one GEMM against V. The forward saves only the
 * log-sum-exp of each row; the backward recomputes the probabilities from it. Memory is
 * therefore per thread O(BQ * S + D * S), never B * H * T * S.
 *
 * Causal masking is bottom-right aligned: query t sees keys s <= t + (S - T), which is the
 * usual mask when T == S and the KV-cache mask when the queries are the last T of S. */
#include <stdlib.h>

#include "internal.h"
#include "lt_ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

enum { BQ = 64 }; /* query rows per block: a multiple of every tile height */

/* A run of queries [q0, q0 + nq) of batch row b attending keys [k0, k0 + nk) of the same
   row; causally, query i of the run sees keys up to i + (nk - nq). */
typedef struct {
    int64_t b, q0, nq, k0, nk;
} attn_seg;

typedef struct {
    int64_t B, T, S, H, Hkv, D, group;
    float scale;
    int causal;
    const float *q, *k, *v;
    int64_t qs[3], ks[3], vs[3]; /* strides of dims B, T|S, H|Hkv (D has unit stride) */
    attn_seg *segs;              /* nseg segments, owned (free with seg_free) */
    int64_t nseg, max_nk;
} attn_shape;

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* Number of keys query i (of its segment) may see. */
static int64_t keys_for(const attn_shape *a, const attn_seg *g, int64_t i) {
    if (!a->causal) return g->nk;
    int64_t n = i + g->nk - g->nq + 1;
    return n < 0 ? 0 : (n > g->nk ? g->nk : n);
}

/* The segments: one per batch row, or the packed sequences of cu_seqlens. */
static int make_segments(attn_shape *a, const lt_tensor *cu, const char *op) {
    a->segs = NULL;
    a->nseg = 0;
    a->max_nk = 0;
    if (!cu) {
        a->segs = lt_scratch_alloc(a->B * (int64_t)sizeof(attn_seg));
        if (!a->segs && a->B) return LT_ERR_NOMEM;
        for (int64_t b = 0; b < a->B; b++) a->segs[b] = (attn_seg){b, 0, a->T, 0, a->S};
        a->nseg = a->B;
        a->max_nk = a->S;
        return LT_OK;
    }
    LT_TRY(lt_check_cpu(cu, op, "cu_seqlens"));
    if (cu->dtype_id != LT_DTYPE_I32 || cu->ndim != 1 || !lt_tensor_is_contiguous(cu))
        return lt_fail(LT_ERR_ARG, "%s: cu_seqlens must be a contiguous 1-D i32 tensor", op);
    if (a->S != a->T)
        return lt_fail(LT_ERR_SHAPE, "%s: packed sequences (cu_seqlens) need as many keys as queries, got T %lld and S %lld",
                       op, (long long)a->T, (long long)a->S);
    int64_t n = cu->sizes[0] - 1, total = a->B * a->T;
    const int32_t *c = lt_tensor_data(cu);
    if (n < 1 || c[0] != 0 || c[n] != total)
        return lt_fail(LT_ERR_ARG, "%s: cu_seqlens must run from 0 to B * T = %lld (got %lld entries)",
                       op, (long long)total, (long long)cu->sizes[0]);
    for (int64_t g = 0; g < n; g++) {
        if (c[g + 1] <= c[g])
            return lt_fail(LT_ERR_ARG, "%s: cu_seqlens must increase: entry %lld is %d, entry %lld is %d",
                           op, (long long)g, c[g], (long long)(g + 1), c[g + 1]);
        if (c[g] / a->T != (c[g + 1] - 1) / a->T)
            return lt_fail(LT_ERR_ARG, "%s: packed sequence %lld ([%d, %d)) crosses a batch row of %lld positions",
                           op, (long long)g, c[g], c[g + 1], (long long)a->T);
    }
    a->segs = lt_scratch_alloc(n * (int64_t)sizeof(attn_seg));
    if (!a->segs) return LT_ERR_NOMEM;
    for (int64_t g = 0; g < n; g++) {
        int64_t b = c[g] / a->T, t0 = c[g] % a->T, len = c[g + 1] - c[g];
        a->segs[g] = (attn_seg){b, t0, len, t0, len};
        if (len > a->max_nk) a->max_nk = len;
    }
    a->nseg = n;
    return LT_OK;
}

static int check_qkv(const lt_tensor *t, const char *op, const char *name) {
    LT_TRY(lt_check_ndim(t, 4, op, name));
    LT_TRY(lt_check_cpu(t, op, name));
    LT_TRY(lt_check_dtype(t, LT_DTYPE_F32, op, name));
    if (t->strides[3] != 1 && t->sizes[3] > 1)
        return lt_fail(LT_ERR_ARG, "%s: %s needs unit stride in the head dim", op, name);
    return LT_OK;
}

static int setup(attn_shape *a, const lt_tensor *q, const lt_tensor *k, const lt_tensor *v,
                 const lt_tensor *cu, float scale, int causal, const char *op) {
    LT_TRY(check_qkv(q, op, "q"));
    LT_TRY(check_qkv(k, op, "k"));
    LT_TRY(check_qkv(v, op, "v"));
    LT_TRY(lt_check_same_shape(v, k, op, "v", "k"));
    a->B = q->sizes[0];
    a->T = q->sizes[1];
    a->H = q->sizes[2];
    a->D = q->sizes[3];
    a->S = k->sizes[1];
    a->Hkv = k->sizes[2];
    if (k->sizes[0] != a->B || k->sizes[3] != a->D || a->Hkv == 0 || a->H % a->Hkv != 0) {
        char sq[128], sk[128];
        return lt_fail(LT_ERR_SHAPE,
                       "%s: q %s must be (B, T, H, D) and k, v %s (B, S, Hkv, D) with H a "
                       "multiple of Hkv",
                       op, lt_shape_str(q, sq, sizeof sq), lt_shape_str(k, sk, sizeof sk));
    }
    if (!(scale > 0) || !isfinite(scale))
        return lt_fail(LT_ERR_ARG, "%s: scale must be a positive finite number, got %g", op,
                       (double)scale);
    a->group = a->H / a->Hkv;
    a->scale = scale;
    a->causal = causal;
    a->q = (const float *)q->storage->data + q->offset;
    a->k = (const float *)k->storage->data + k->offset;
    a->v = (const float *)v->storage->data + v->offset;
    for (int i = 0; i < 3; i++) {
        a->qs[i] = q->strides[i];
        a->ks[i] = k->strides[i];
        a->vs[i] = v->strides[i];
    }
    return make_segments(a, cu, op);
}

static int check_like(const lt_tensor *t, const lt_tensor *ref, const char *op, const char *name,
                      const char *refname) {
    LT_TRY(check_qkv(t, op, name));
    return lt_check_same_shape(t, ref, op, name, refname);
}

static int check_lse(const lt_tensor *lse, const attn_shape *a, const char *op) {
    LT_TRY(lt_check_f32_contig(lse, op, "lse"));
    if (lt_tensor_numel(lse) != a->B * a->H * a->T)
        return lt_fail(LT_ERR_SHAPE, "%s: lse must be (B, H, T) = (%lld, %lld, %lld)", op,
                       (long long)a->B, (long long)a->H, (long long)a->T);
    return LT_OK;
}

/* dst (D x ld) = the rows [0, S) of one head of k or v, transposed; columns past S zeroed. */
static void transpose_head(float *dst, int64_t ld, const float *src, int64_t row_stride,
                           int64_t S, int64_t D) {
    for (int64_t d = 0; d < D; d++) {
        float *out = dst + d * ld;
        for (int64_t s = 0; s < S; s++) out[s] = src[s * row_stride + d];
        for (int64_t s = S; s < ld; s++) out[s] = 0.0f;
    }
}

static int num_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int lt_attention_forward(lt_tensor *out, lt_tensor *lse, const lt_tensor *q, const lt_tensor *k,
                         const lt_tensor *v, const lt_tensor *cu_seqlens, float scale,
                         int causal) {
    const char *op = "attention_forward";
    attn_shape a;
    LT_TRY(check_like(out, q, op, "out", "q"));
    LT_TRY(setup(&a, q, k, v, cu_seqlens, scale, causal, op));
    int st = lse ? check_lse(lse, &a, op) : LT_OK;
    int64_t T = a.T, H = a.H, D = a.D, nseg = a.nseg;
    if (st != LT_OK || a.B * T * H == 0) {
        lt_scratch_free(a.segs);
        return st;
    }
    int64_t vw = lt_gemm_vector_floats();
    int64_t Sp = round_up(a.max_nk > 0 ? a.max_nk : 1, vw);
    /* per thread: K^T (D x Sp) and one block of scores (BQ x Sp) */
    int64_t per_thread = D * Sp + BQ * Sp;
    int nt = num_threads();
    float *scratch = lt_scratch_alloc((int64_t)nt * per_thread * (int64_t)sizeof(float));
    if (!scratch) {
        lt_scratch_free(a.segs);
        return LT_ERR_NOMEM;
    }
    float *o = (float *)out->storage->data + out->offset;
    int64_t os[3] = {out->strides[0], out->strides[1], out->strides[2]};
    float *lp = lse ? lt_tensor_data(lse) : NULL;

#pragma omp parallel for schedule(dynamic, 1) if (nseg * H > 1 && nseg * H * T * a.max_nk * D >= LT_PAR_MIN_WORK)
    for (int64_t gh = 0; gh < nseg * H; gh++) {
        const attn_seg *g = &a.segs[gh / H];
        int64_t b = g->b, h = gh % H, hkv = h / a.group;
        float *kt = scratch + (int64_t)thread_id() * per_thread;
        float *sc = kt + D * Sp;
        transpose_head(kt, Sp, a.k + b * a.ks[0] + g->k0 * a.ks[1] + hkv * a.ks[2], a.ks[1], g->nk, D);
        const float *vh = a.v + b * a.vs[0] + g->k0 * a.vs[1] + hkv * a.vs[2];
        for (int64_t i0 = 0; i0 < g->nq; i0 += BQ) {
            int64_t bq = g->nq - i0 < BQ ? g->nq - i0 : BQ;
            int64_t lim = keys_for(&a, g, i0 + bq - 1); /* keys seen by the block's last row */
            int64_t t0 = g->q0 + i0;
            const float *qb = a.q + b * a.qs[0] + t0 * a.qs[1] + h * a.qs[2];
            float *ob = o + b * os[0] + t0 * os[1] + h * os[2];
            if (lim > 0) lt_gemm_nn(bq, round_up(lim, vw), D, qb, a.qs[1], kt, Sp, sc, Sp, 0);
            for (int64_t i = 0; i < bq; i++) {
                int64_t n = keys_for(&a, g, i0 + i);
                float *row = sc + i * Sp;
                if (n == 0) { /* a query with no visible key attends to nothing */
                    for (int64_t j = 0; j < lim; j++) row[j] = 0.0f;
                    if (lp) lp[(b * H + h) * T + t0 + i] = -INFINITY;
                    continue;
                }
                float m = -INFINITY;
                for (int64_t j = 0; j < n; j++) {
                    row[j] *= a.scale;
                    m = row[j] > m ? row[j] : m;
                }
                float sum = 0.0f;
                for (int64_t j = 0; j < n; j++) {
                    row[j] = lt_exp_neg(row[j] - m);
                    sum += row[j];
                }
                float inv = 1.0f / sum;
                for (int64_t j = 0; j < n; j++) row[j] *= inv;
                for (int64_t j = n; j < lim; j++) row[j] = 0.0f;
                if (lp) lp[(b * H + h) * T + t0 + i] = m + logf(sum);
            }
            if (lim > 0) {
                lt_gemm_nn(bq, D, lim, sc, Sp, vh, a.vs[1], ob, os[1], 0);
            } else {
                for (int64_t i = 0; i < bq; i++)
                    for (int64_t d = 0; d < D; d++) ob[i * os[1] + d] = 0.0f;
            }
        }
    }
    lt_scratch_free(scratch);
    lt_scratch_free(a.segs);
    return LT_OK;
}

/* dst (rows x ld) = src (cols x rows, leading dim lds) transposed. */
static void transpose_block(float *dst, int64_t ld, const float *src, int64_t lds, int64_t rows,
                            int64_t cols) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) dst[r * ld + c] = src[c * lds + r];
}

/* With P the probabilities, dO the output gradient and delta_i = sum_d dO_id O_id:
   dV = P^T dO;  dS = P * (dO V^T - delta);  dQ = scale dS K;  dK = scale dS^T Q. */
int lt_attention_backward(lt_tensor *dq, lt_tensor *dk, lt_tensor *dv, const lt_tensor *dout,
                          const lt_tensor *q, const lt_tensor *k, const lt_tensor *v,
                          const lt_tensor *out, const lt_tensor *lse,
                          const lt_tensor *cu_seqlens, float scale, int causal) {
    const char *op = "attention_backward";
    attn_shape a;
    LT_TRY(check_like(dout, q, op, "dout", "q"));
    LT_TRY(check_like(out, q, op, "out", "q"));
    LT_TRY(check_like(dq, q, op, "dq", "q"));
    LT_TRY(check_like(dk, k, op, "dk", "k"));
    LT_TRY(check_like(dv, v, op, "dv", "v"));
    LT_TRY(setup(&a, q, k, v, cu_seqlens, scale, causal, op));
    int st = check_lse(lse, &a, op);
    if (st != LT_OK) {
        lt_scratch_free(a.segs);
        return st;
    }
    int64_t T = a.T, H = a.H, Hkv = a.Hkv, D = a.D, nseg = a.nseg, maxk = a.max_nk;
    int64_t vw = lt_gemm_vector_floats();
    int64_t Sp = round_up(maxk > 0 ? maxk : 1, vw);
    /* per thread: K^T, V^T (D x Sp); P, dP (BQ x Sp); a transposed block (Sp x BQ);
       dK, dV accumulators (max keys x D) */
    int64_t per_thread = 2 * D * Sp + 2 * BQ * Sp + Sp * BQ + 2 * maxk * D;
    int nt = num_threads();
    float *scratch = lt_scratch_alloc((int64_t)nt * per_thread * (int64_t)sizeof(float));
    if (!scratch) {
        lt_scratch_free(a.segs);
        return LT_ERR_NOMEM;
    }
    const float *go = (const float *)dout->storage->data + dout->offset;
    const float *fo = (const float *)out->storage->data + out->offset;
    float *gq = (float *)dq->storage->data + dq->offset;
    float *gk = (float *)dk->storage->data + dk->offset;
    float *gv = (float *)dv->storage->data + dv->offset;
    const float *lp = lt_tensor_data(lse);
    int64_t gos = dout->strides[1], fos = out->strides[1], gqs = dq->strides[1];

#pragma omp parallel for schedule(dynamic, 1) if (nseg * Hkv > 1 && nseg * H * T * maxk * D >= LT_PAR_MIN_WORK)
    for (int64_t gg = 0; gg < nseg * Hkv; gg++) {
        const attn_seg *g = &a.segs[gg / Hkv];
        int64_t b = g->b, hkv = gg % Hkv, nk = g->nk;
        float *kt = scratch + (int64_t)thread_id() * per_thread;
        float *vt = kt + D * Sp;
        float *p = vt + D * Sp;
        float *dp = p + BQ * Sp;
        float *tr = dp + BQ * Sp;
        float *dk_acc = tr + Sp * BQ;
        float *dv_acc = dk_acc + maxk * D;
        const float *kh = a.k + b * a.ks[0] + g->k0 * a.ks[1] + hkv * a.ks[2];
        const float *vh = a.v + b * a.vs[0] + g->k0 * a.vs[1] + hkv * a.vs[2];
        transpose_head(kt, Sp, kh, a.ks[1], nk, D);
        transpose_head(vt, Sp, vh, a.vs[1], nk, D);
        memset(dk_acc, 0, (size_t)(2 * maxk * D) * sizeof(float));
        for (int64_t h = hkv * a.group; h < (hkv + 1) * a.group; h++) {
            for (int64_t i0 = 0; i0 < g->nq; i0 += BQ) {
                int64_t bq = g->nq - i0 < BQ ? g->nq - i0 : BQ;
                int64_t lim = keys_for(&a, g, i0 + bq - 1);
                int64_t t0 = g->q0 + i0;
                const float *qb = a.q + b * a.qs[0] + t0 * a.qs[1] + h * a.qs[2];
                const float *gob = go + b * dout->strides[0] + t0 * gos + h * dout->strides[2];
                const float *fob = fo + b * out->strides[0] + t0 * fos + h * out->strides[2];
                float *gqb = gq + b * dq->strides[0] + t0 * gqs + h * dq->strides[2];
                if (lim == 0) {
                    for (int64_t i = 0; i < bq; i++)
                        for (int64_t d = 0; d < D; d++) gqb[i * gqs + d] = 0.0f;
                    continue;
                }
                int64_t limp = round_up(lim, vw);
                lt_gemm_nn(bq, limp, D, qb, a.qs[1], kt, Sp, p, Sp, 0);
                lt_gemm_nn(bq, limp, D, gob, gos, vt, Sp, dp, Sp, 0);
                for (int64_t i = 0; i < bq; i++) {
                    int64_t n = keys_for(&a, g, i0 + i);
                    float *prow = p + i * Sp, *dprow = dp + i * Sp;
                    float l = lp[(b * H + h) * T + t0 + i];
                    float delta = 0.0f;
                    const float *gor = gob + i * gos, *forow = fob + i * fos;
                    for (int64_t d = 0; d < D; d++) delta += gor[d] * forow[d];
                    for (int64_t j = 0; j < n; j++) {
                        float pj = lt_exp_neg(prow[j] * a.scale - l);
                        prow[j] = pj;
                        dprow[j] = pj * (dprow[j] - delta) * a.scale;
                    }
                    for (int64_t j = n; j < lim; j++) {
                        prow[j] = 0.0f;
                        dprow[j] = 0.0f;
                    }
                }
                /* dQ (bq x D) = dS (bq x lim) @ K (lim x D) */
                lt_gemm_nn(bq, D, lim, dp, Sp, kh, a.ks[1], gqb, gqs, 0);
                /* dK (lim x D) += dS^T (lim x bq) @ Q (bq x D) */
                transpose_block(tr, BQ, dp, Sp, lim, bq);
                lt_gemm_nn(lim, D, bq, tr, BQ, qb, a.qs[1], dk_acc, D, 1);
                /* dV (lim x D) += P^T (lim x bq) @ dO (bq x D) */
                transpose_block(tr, BQ, p, Sp, lim, bq);
                lt_gemm_nn(lim, D, bq, tr, BQ, gob, gos, dv_acc, D, 1);
            }
        }
        float *gkh = gk + b * dk->strides[0] + g->k0 * dk->strides[1] + hkv * dk->strides[2];
        float *gvh = gv + b * dv->strides[0] + g->k0 * dv->strides[1] + hkv * dv->strides[2];
        for (int64_t s = 0; s < nk; s++) {
            memcpy(gkh + s * dk->strides[1], dk_acc + s * D, (size_t)D * sizeof(float));
            memcpy(gvh + s * dv->strides[1], dv_acc + s * D, (size_t)D * sizeof(float));
        }
    }
    lt_scratch_free(scratch);
    lt_scratch_free(a.segs);
    return LT_OK;
}
