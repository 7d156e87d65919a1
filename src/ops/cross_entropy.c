/* cross_entropy.c - softmax cross-entropy, plain and fused with the LM head.
 *
 * The fused form never holds (N, V) logits: rows of h go through the LM head a block at a
 * time into a (rows_per_block, V) f32 buffer, and everything that needs the logits (the
 * loss, and in the fused backward the logit gradient and both GEMMs that consume it)
 * happens before the next block overwrites them. */
#include <stdlib.h>

#include "core/internal.h"
#include "lt_ops.h"
#include "ops/lowp.h"
#include "ops/support.h"

/* Logit buffer budget for the fused LM head: 8M floats (32 MB) per block of rows. */
enum { LT_CE_BLOCK_FLOATS = 1 << 23 };

static int check_targets(const lt_tensor *targets, int64_t N, int64_t V, int64_t ignore_index,
                         const char *op, int64_t *count) {
    LT_TRY(lt_check_cpu(targets, op, "targets"));
    if (!lt_is_index_dtype(targets->dtype_id) || !lt_tensor_is_contiguous(targets))
        return lt_fail(LT_ERR_ARG, "%s: targets must be contiguous i32/i64", op);
    if (lt_tensor_numel(targets) != N)
        return lt_fail(LT_ERR_SHAPE, "%s: %lld targets for %lld rows", op,
                       (long long)lt_tensor_numel(targets), (long long)N);
    const void *tp = lt_tensor_data(targets);
    int64_t n = 0;
    for (int64_t i = 0; i < N; i++) {
        int64_t y = lt_load_index(tp, targets->dtype_id, i);
        if (y == ignore_index) continue;
        if (y < 0 || y >= V)
            return lt_fail(LT_ERR_RANGE,
                           "%s: target %lld at row %lld is outside the vocabulary [0, %lld) "
                           "and is not the ignore index %lld",
                           op, (long long)y, (long long)i, (long long)V, (long long)ignore_index);
        n++;
    }
    *count = n;
    return LT_OK;
}

static int check_optional_rows(const lt_tensor *t, int64_t N, const char *op, const char *name) {
    if (!t) return LT_OK;
    LT_TRY(lt_check_f32_contig(t, op, name));
    if (lt_tensor_numel(t) != N)
        return lt_fail(LT_ERR_SHAPE, "%s: %s has %lld entries for %lld rows", op, name,
                       (long long)lt_tensor_numel(t), (long long)N);
    return LT_OK;
}

static int check_scalar_out(const lt_tensor *loss, const char *op) {
    if (!loss) return LT_OK;
    LT_TRY(lt_check_f32_contig(loss, op, "loss"));
    if (lt_tensor_numel(loss) != 1)
        return lt_fail(LT_ERR_SHAPE, "%s: loss must hold one element", op);
    return LT_OK;
}

/* ---- device-agnostic checks (before the CUDA dispatch) ------------------------------------
   The float tensors' dtypes are the support table's (ops/support.c): logits, dlogits, h, dh
   and dw f32, bf16 or f16 (on CUDA dh and dw are f32 or w's dtype; here bf16/f16 ones go
   through f32 twins, ops/lowp.h, and the losses reduce in f32), w any float dtype. loss,
   lse and row_loss are f32 on both sides, each side checking its own. */

static int meta_targets(const lt_tensor *targets, int64_t N, const char *op) {
    LT_TRY(lt_check_tensor(targets, op, "targets"));
    if (!lt_is_index_dtype(targets->dtype_id) || !lt_tensor_is_contiguous(targets))
        return lt_fail(LT_ERR_ARG, "%s: targets must be contiguous i32/i64", op);
    if (lt_tensor_numel(targets) != N)
        return lt_fail(LT_ERR_SHAPE, "%s: %lld targets for %lld rows", op,
                       (long long)lt_tensor_numel(targets), (long long)N);
    return LT_OK;
}

static int meta_rows(const lt_tensor *t, int64_t N, const char *op, const char *name) {
    if (!t) return LT_OK;
    LT_TRY(lt_check_tensor(t, op, name));
    if (lt_tensor_numel(t) != N)
        return lt_fail(LT_ERR_SHAPE, "%s: %s has %lld entries for %lld rows", op, name,
                       (long long)lt_tensor_numel(t), (long long)N);
    return LT_OK;
}

static int meta_loss(const lt_tensor *loss, const char *op) {
    if (!loss) return LT_OK;
    LT_TRY(lt_check_tensor(loss, op, "loss"));
    if (lt_tensor_numel(loss) != 1) return lt_fail(LT_ERR_SHAPE, "%s: loss must hold one element", op);
    return LT_OK;
}

/* Every tensor argument on the device of `ref` (NULL ones skipped). */
static int same_device(const char *op, const lt_tensor *ref, const char *ref_name, int n,
                       const lt_tensor *const *ts, const char *const *names) {
    for (int i = 0; i < n; i++) LT_TRY(lt_check_same_device(ts[i], ref, op, names[i], ref_name));
    return LT_OK;
}

/* Every output (NULL ones skipped) writable, no broadcast view, on the device of `ref`. */
static int check_outs(const char *op, const lt_tensor *ref, const char *ref_name, int n,
                      const lt_tensor *const *ts, const char *const *names) {
    for (int i = 0; i < n; i++)
        if (ts[i]) LT_TRY(lt_check_out(ts[i], LT_OUT_ANY_DTYPE, op, names[i], ref, ref_name));
    return LT_OK;
}

/* h (N, C) and w (V, C) agree; the outputs have their shapes. */
static int meta_lmhead(const lt_tensor *h, const lt_tensor *w, const lt_tensor *targets,
                       const lt_tensor *dh, const lt_tensor *dw, const char *op) {
    LT_TRY(lt_check_ndim(h, 2, op, "h"));
    LT_TRY(lt_op_check_dtype(LT_OP_LINEAR_CROSS_ENTROPY, LT_OP_ROLE_MAIN, h, op, "h"));
    LT_TRY(lt_check_ndim(w, 2, op, "w"));
    LT_TRY(lt_op_check_dtype(LT_OP_LINEAR_CROSS_ENTROPY, LT_OP_ROLE_READ, w, op, "w"));
    if (w->sizes[1] != h->sizes[1]) {
        char sh[128], sw[128];
        return lt_fail(LT_ERR_SHAPE, "%s: h %s and w %s disagree on the hidden size", op,
                       lt_shape_str(h, sh, sizeof sh), lt_shape_str(w, sw, sizeof sw));
    }
    LT_TRY(meta_targets(targets, h->sizes[0], op));
    if (dh) {
        LT_TRY(lt_op_check_dtype(LT_OP_LINEAR_CROSS_ENTROPY, LT_OP_ROLE_MAIN, dh, op, "dh"));
        LT_TRY(lt_check_same_shape(dh, h, op, "dh", "h"));
    }
    if (dw) {
        LT_TRY(lt_op_check_dtype(LT_OP_LINEAR_CROSS_ENTROPY, LT_OP_ROLE_MAIN, dw, op, "dw"));
        LT_TRY(lt_check_same_shape(dw, w, op, "dw", "w"));
    }
    return LT_OK;
}

/* Log-sum-exp of one row, with its max subtracted so exp never overflows. */
static float row_lse(const float *x, int64_t V) {
    float m = -INFINITY;
    for (int64_t j = 0; j < V; j++) m = x[j] > m ? x[j] : m;
    if (m == -INFINITY || m != m) return m;
    float s = 0.0f;
    for (int64_t j = 0; j < V; j++) s += lt_exp_neg(x[j] - m);
    return m + logf(s);
}

/* One block of rows [r0, r0 + R) of logits (R x V, row stride ld): loss terms, lse, and
   when `want_grad` the logit gradient in place: (softmax - onehot) * grad_scale on counted
   rows, 0 on ignored ones. A saved lse_in (indexed like lse_out) skips the max/sum pass.
   Returns the block's loss sum in f64. */
static double block_rows(float *logits, int64_t ld, int64_t R, int64_t V, const void *tp,
                         int tdt, int64_t r0, int64_t ignore_index, float *lse_out,
                         const float *lse_in, float *row_loss, int want_grad,
                         float grad_scale) {
    double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total) if (R * V >= LT_PAR_MIN_WORK)
    for (int64_t i = 0; i < R; i++) {
        float *x = logits + i * ld;
        int64_t y = lt_load_index(tp, tdt, r0 + i);
        float xy = y != ignore_index ? x[y] : 0.0f;
        float l;
        if (want_grad && y != ignore_index && !lse_in) {
            /* One exp per logit: keep exp(x - max) in place, then scale it into the
               gradient (softmax - onehot) * grad_scale. */
            float m = -INFINITY;
            for (int64_t j = 0; j < V; j++) m = x[j] > m ? x[j] : m;
            float s = 0.0f;
            for (int64_t j = 0; j < V; j++) {
                x[j] = lt_exp_neg(x[j] - m);
                s += x[j];
            }
            l = m + logf(s);
            float k = grad_scale / s;
            for (int64_t j = 0; j < V; j++) x[j] *= k;
            x[y] -= grad_scale;
        } else {
            l = lse_in ? lse_in[r0 + i] : row_lse(x, V);
            if (want_grad && y == ignore_index) {
                for (int64_t j = 0; j < V; j++) x[j] = 0.0f;
            } else if (want_grad) {
                for (int64_t j = 0; j < V; j++) x[j] = lt_exp_neg(x[j] - l) * grad_scale;
                x[y] -= grad_scale;
            }
        }
        if (lse_out) lse_out[r0 + i] = l;
        float li = y != ignore_index ? l - xy : 0.0f;
        total += li;
        if (row_loss) row_loss[r0 + i] = li;
    }
    return total;
}

static double norm_of(double normalizer, int64_t count) {
    return normalizer > 0 ? normalizer : (double)count;
}

int lt_cross_entropy_forward(lt_tensor *loss, lt_tensor *lse, lt_tensor *row_loss,
                             const lt_tensor *logits, const lt_tensor *targets,
                             int64_t ignore_index, double normalizer) {
    const char *op = "cross_entropy_forward";
    LT_TRY(lt_check_ndim(logits, 2, op, "logits"));
    LT_TRY(lt_op_check_dtype(LT_OP_CROSS_ENTROPY, LT_OP_ROLE_MAIN, logits, op, "logits"));
    LT_TRY(meta_targets(targets, logits->sizes[0], op));
    LT_TRY(meta_loss(loss, op));
    LT_TRY(meta_rows(lse, logits->sizes[0], op, "lse"));
    LT_TRY(meta_rows(row_loss, logits->sizes[0], op, "row_loss"));
    LT_TRY(lt_check_same_device(targets, logits, op, "targets", "logits"));
    {
        const lt_tensor *outs[] = {loss, lse, row_loss};
        const char *names[] = {"loss", "lse", "row_loss"};
        LT_TRY(check_outs(op, logits, "logits", 3, outs, names));
    }
    LT_DISPATCH_CUDA(logits, lt_cuda_cross_entropy_forward(loss, lse, row_loss, logits, targets,
                                                           ignore_index, normalizer));
    if (lt_lowp_cpu(logits)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &logits);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK)
            st = lt_cross_entropy_forward(loss, lse, row_loss, logits, targets, ignore_index,
                                          normalizer);
        return lt_lowp_end(&lp, st);
    }
    LT_TRY(lt_check_f32_contig(logits, op, "logits"));
    int64_t N = logits->sizes[0], V = logits->sizes[1], count;
    LT_TRY(check_targets(targets, N, V, ignore_index, op, &count));
    LT_TRY(check_scalar_out(loss, op));
    LT_TRY(check_optional_rows(lse, N, op, "lse"));
    LT_TRY(check_optional_rows(row_loss, N, op, "row_loss"));
    double total = block_rows(lt_tensor_data(logits), V, N, V, lt_tensor_data(targets),
                              targets->dtype_id, 0, ignore_index,
                              lse ? lt_tensor_data(lse) : NULL, NULL,
                              row_loss ? lt_tensor_data(row_loss) : NULL, 0, 0.0f);
    double norm = norm_of(normalizer, count);
    if (loss) *(float *)lt_tensor_data(loss) = norm > 0 ? (float)(total / norm) : 0.0f;
    return LT_OK;
}

int lt_cross_entropy_backward(lt_tensor *dlogits, const lt_tensor *logits,
                              const lt_tensor *targets, const lt_tensor *lse, float dloss,
                              int64_t ignore_index, double normalizer) {
    const char *op = "cross_entropy_backward";
    LT_TRY(lt_check_ndim(logits, 2, op, "logits"));
    LT_TRY(lt_op_check_dtype(LT_OP_CROSS_ENTROPY, LT_OP_ROLE_MAIN, logits, op, "logits"));
    LT_TRY(lt_check_tensor(dlogits, op, "dlogits"));
    LT_TRY(lt_check_same_shape(dlogits, logits, op, "dlogits", "logits"));
    LT_TRY(meta_targets(targets, logits->sizes[0], op));
    LT_TRY(meta_rows(lse, logits->sizes[0], op, "lse"));
    {
        const lt_tensor *ts[] = {targets, lse};
        const char *names[] = {"targets", "lse"};
        LT_TRY(same_device(op, logits, "logits", 2, ts, names));
    }
    LT_TRY(lt_op_check_out(LT_OP_CROSS_ENTROPY, dlogits, op, "dlogits", logits, "logits"));
    LT_DISPATCH_CUDA(logits, lt_cuda_cross_entropy_backward(dlogits, logits, targets, lse, dloss,
                                                            ignore_index, normalizer));
    if (lt_lowp_cpu(logits) || lt_lowp_cpu(dlogits)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &logits);
        lt_lowp_out(&lp, &dlogits);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK)
            st = lt_cross_entropy_backward(dlogits, logits, targets, lse, dloss, ignore_index,
                                           normalizer);
        return lt_lowp_end(&lp, st);
    }
    LT_TRY(lt_check_f32_contig(logits, op, "logits"));
    LT_TRY(lt_check_f32_contig(dlogits, op, "dlogits"));
    LT_TRY(lt_check_same_shape(dlogits, logits, op, "dlogits", "logits"));
    int64_t N = logits->sizes[0], V = logits->sizes[1], count;
    LT_TRY(check_targets(targets, N, V, ignore_index, op, &count));
    LT_TRY(check_optional_rows(lse, N, op, "lse"));
    double norm = norm_of(normalizer, count);
    float g = norm > 0 ? (float)(dloss / norm) : 0.0f;
    const float *x = lt_tensor_data(logits), *lp = lse ? lt_tensor_data(lse) : NULL;
    float *dx = lt_tensor_data(dlogits);
    const void *tp = lt_tensor_data(targets);
#pragma omp parallel for schedule(static) if (N * V >= LT_PAR_MIN_WORK)
    for (int64_t i = 0; i < N; i++) {
        const float *xr = x + i * V;
        float *dr = dx + i * V;
        int64_t y = lt_load_index(tp, targets->dtype_id, i);
        if (y == ignore_index) {
            for (int64_t j = 0; j < V; j++) dr[j] = 0.0f;
            continue;
        }
        float l = lp ? lp[i] : row_lse(xr, V);
        for (int64_t j = 0; j < V; j++) dr[j] = lt_exp_neg(xr[j] - l) * g;
        dr[y] -= g;
    }
    return LT_OK;
}

/* ---- fused LM head ----------------------------------------------------------------- */

typedef struct {
    int64_t N, C, V, count, rows_per_block;
} lmhead_shape;

static int lmhead_setup(lmhead_shape *s, const lt_tensor *h, const lt_tensor *w,
                        const lt_tensor *targets, int64_t ignore_index, const char *op) {
    LT_TRY(lt_check_ndim(h, 2, op, "h"));
    LT_TRY(lt_check_f32_contig(h, op, "h"));
    LT_TRY(lt_check_ndim(w, 2, op, "w"));
    LT_TRY(lt_check_cpu(w, op, "w"));
    s->N = h->sizes[0];
    s->C = h->sizes[1];
    s->V = w->sizes[0];
    if (w->sizes[1] != s->C) {
        char sh[128], sw[128];
        return lt_fail(LT_ERR_SHAPE, "%s: h %s and w %s disagree on the hidden size", op,
                       lt_shape_str(h, sh, sizeof sh), lt_shape_str(w, sw, sizeof sw));
    }
    LT_TRY(check_targets(targets, s->N, s->V, ignore_index, op, &s->count));
    int64_t r = s->V > 0 ? LT_CE_BLOCK_FLOATS / s->V : s->N;
    if (r < 1) r = 1;
    s->rows_per_block = r < s->N ? r : s->N;
    return LT_OK;
}

/* logits (R x V) = h[r0 : r0 + R] @ w^T into the block buffer */
static int block_logits(lt_tensor *buf, const lt_tensor *h, const lt_tensor *w, int64_t r0,
                        int64_t R, lt_tensor *hblk) {
    LT_TRY(lt_tensor_narrow(hblk, h, 0, r0, R));
    int64_t sizes[2] = {R, w->sizes[0]};
    LT_TRY(lt_tensor_resize(buf, LT_DTYPE_F32, 2, sizes, LT_DEVICE_CPU, 0));
    return lt_matmul(buf, hblk, w, 0, 1, 1.0f, 0.0f);
}

/* From the logit gradient of one block: dh rows (=) and dw (+=). */
static int block_grads(lt_tensor *dh, lt_tensor *dw, const lt_tensor *dlogits,
                       const lt_tensor *hblk, const lt_tensor *w, int64_t r0, int64_t R) {
    if (dh) {
        lt_tensor dhb = {0};
        int st = lt_tensor_narrow(&dhb, dh, 0, r0, R);
        if (st == LT_OK) st = lt_matmul(&dhb, dlogits, w, 0, 0, 1.0f, 0.0f);
        lt_tensor_release(&dhb);
        LT_TRY(st);
    }
    if (dw) LT_TRY(lt_matmul(dw, dlogits, hblk, 1, 0, 1.0f, 1.0f));
    return LT_OK;
}

static int check_grads(const lt_tensor *dh, const lt_tensor *dw, const lt_tensor *h,
                       const lt_tensor *w, const char *op) {
    if (dh) {
        LT_TRY(lt_check_f32_contig(dh, op, "dh"));
        LT_TRY(lt_check_same_shape(dh, h, op, "dh", "h"));
    }
    if (dw) {
        LT_TRY(lt_check_f32_contig(dw, op, "dw"));
        LT_TRY(lt_check_same_shape(dw, w, op, "dw", "w"));
    }
    return LT_OK;
}

/* Shared driver: forward only (want_grad 0), backward from lse (recompute), or fused. */
static int lmhead_run(lt_tensor *loss, lt_tensor *lse, const lt_tensor *lse_in,
                      lt_tensor *row_loss, lt_tensor *dh, lt_tensor *dw, const lt_tensor *h,
                      const lt_tensor *w,
                      const lt_tensor *targets, int want_grad, float dloss,
                      int64_t ignore_index, double normalizer, const char *op) {
    lmhead_shape s;
    LT_TRY(lmhead_setup(&s, h, w, targets, ignore_index, op));
    LT_TRY(check_scalar_out(loss, op));
    LT_TRY(check_optional_rows(lse, s.N, op, "lse"));
    LT_TRY(check_optional_rows(lse_in, s.N, op, "lse"));
    LT_TRY(check_optional_rows(row_loss, s.N, op, "row_loss"));
    LT_TRY(check_grads(dh, dw, h, w, op));
    double norm = norm_of(normalizer, s.count);
    float g = norm > 0 ? (float)(dloss / norm) : 0.0f;
    lt_tensor buf = {0}, hblk = {0};
    double total = 0.0;
    int st = LT_OK;
    const void *tp = lt_tensor_data(targets);
    for (int64_t r0 = 0; r0 < s.N && st == LT_OK; r0 += s.rows_per_block) {
        int64_t R = s.N - r0 < s.rows_per_block ? s.N - r0 : s.rows_per_block;
        st = block_logits(&buf, h, w, r0, R, &hblk);
        if (st != LT_OK) break;
        total += block_rows(lt_tensor_data(&buf), s.V, R, s.V, tp, targets->dtype_id, r0,
                            ignore_index, lse ? lt_tensor_data(lse) : NULL,
                            lse_in ? lt_tensor_data(lse_in) : NULL,
                            row_loss ? lt_tensor_data(row_loss) : NULL, want_grad, g);
        if (want_grad) st = block_grads(dh, dw, &buf, &hblk, w, r0, R);
    }
    lt_tensor_release(&buf);
    lt_tensor_release(&hblk);
    LT_TRY(st);
    if (loss) *(float *)lt_tensor_data(loss) = norm > 0 ? (float)(total / norm) : 0.0f;
    return LT_OK;
}

int lt_linear_cross_entropy_forward(lt_tensor *loss, lt_tensor *lse, lt_tensor *row_loss,
                                    const lt_tensor *h, const lt_tensor *w,
                                    const lt_tensor *targets, int64_t ignore_index,
                                    double normalizer) {
    const char *op = "linear_cross_entropy_forward";
    LT_TRY(meta_lmhead(h, w, targets, NULL, NULL, op));
    LT_TRY(meta_loss(loss, op));
    LT_TRY(meta_rows(lse, h->sizes[0], op, "lse"));
    LT_TRY(meta_rows(row_loss, h->sizes[0], op, "row_loss"));
    {
        const lt_tensor *ts[] = {w, targets}, *outs[] = {loss, lse, row_loss};
        const char *names[] = {"w", "targets"}, *out_names[] = {"loss", "lse", "row_loss"};
        LT_TRY(same_device(op, h, "h", 2, ts, names));
        LT_TRY(check_outs(op, h, "h", 3, outs, out_names));
    }
    LT_DISPATCH_CUDA(h, lt_cuda_linear_cross_entropy_forward(loss, lse, row_loss, h, w, targets,
                                                             ignore_index, normalizer));
    if (lt_lowp_cpu(h)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &h);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK)
            st = lt_linear_cross_entropy_forward(loss, lse, row_loss, h, w, targets, ignore_index,
                                                 normalizer);
        return lt_lowp_end(&lp, st);
    }
    return lmhead_run(loss, lse, NULL, row_loss, NULL, NULL, h, w, targets, 0, 0.0f,
                      ignore_index, normalizer, op);
}

int lt_linear_cross_entropy_backward(lt_tensor *dh, lt_tensor *dw, const lt_tensor *h,
                                     const lt_tensor *w, const lt_tensor *targets,
                                     const lt_tensor *lse, float dloss, int64_t ignore_index,
                                     double normalizer) {
    const char *op = "linear_cross_entropy_backward";
    LT_TRY(meta_lmhead(h, w, targets, dh, dw, op));
    LT_TRY(meta_rows(lse, h->sizes[0], op, "lse"));
    {
        const lt_tensor *ts[] = {w, targets, lse}, *outs[] = {dh, dw};
        const char *names[] = {"w", "targets", "lse"}, *out_names[] = {"dh", "dw"};
        LT_TRY(same_device(op, h, "h", 3, ts, names));
        LT_TRY(check_outs(op, h, "h", 2, outs, out_names));
    }
    LT_DISPATCH_CUDA(h, lt_cuda_linear_cross_entropy_backward(dh, dw, h, w, targets, lse, dloss,
                                                              ignore_index, normalizer));
    if (lt_lowp_cpu(h) || lt_lowp_cpu(dh) || lt_lowp_cpu(dw)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &h);
        lt_lowp_out(&lp, &dh);
        lt_lowp_out(&lp, &dw);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK)
            st = lt_linear_cross_entropy_backward(dh, dw, h, w, targets, lse, dloss, ignore_index,
                                                  normalizer);
        return lt_lowp_end(&lp, st);
    }
    /* The logits are recomputed block by block; the saved lse spares the max/sum pass. */
    return lmhead_run(NULL, NULL, lse, NULL, dh, dw, h, w, targets, 1, dloss, ignore_index,
                      normalizer, op);
}

int lt_linear_cross_entropy_fused(lt_tensor *loss, lt_tensor *row_loss, lt_tensor *dh,
                                  lt_tensor *dw, const lt_tensor *h, const lt_tensor *w,
                                  const lt_tensor *targets, float dloss, int64_t ignore_index,
                                  double normalizer) {
    const char *op = "linear_cross_entropy_fused";
    LT_TRY(meta_lmhead(h, w, targets, dh, dw, op));
    LT_TRY(meta_loss(loss, op));
    LT_TRY(meta_rows(row_loss, h->sizes[0], op, "row_loss"));
    {
        const lt_tensor *ts[] = {w, targets}, *outs[] = {loss, row_loss, dh, dw};
        const char *names[] = {"w", "targets"}, *out_names[] = {"loss", "row_loss", "dh", "dw"};
        LT_TRY(same_device(op, h, "h", 2, ts, names));
        LT_TRY(check_outs(op, h, "h", 4, outs, out_names));
    }
    LT_DISPATCH_CUDA(h, lt_cuda_linear_cross_entropy_fused(loss, row_loss, dh, dw, h, w, targets,
                                                           dloss, ignore_index, normalizer));
    if (lt_lowp_cpu(h) || lt_lowp_cpu(dh) || lt_lowp_cpu(dw)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &h);
        lt_lowp_out(&lp, &dh);
        lt_lowp_out(&lp, &dw);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK)
            st = lt_linear_cross_entropy_fused(loss, row_loss, dh, dw, h, w, targets, dloss,
                                               ignore_index, normalizer);
        return lt_lowp_end(&lp, st);
    }
    return lmhead_run(loss, NULL, NULL, row_loss, dh, dw, h, w, targets, 1, dloss,
                      ignore_index, normalizer, op);
}
