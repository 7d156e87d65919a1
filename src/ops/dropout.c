/* dropout.c - inverted dropout with a stored mask, and token sampling from logits.
 *
 * The checks below hold on every device; CUDA tensors then go to cuda/dropout.cu, which
 * draws the same Philox stream as the CPU (the same seed drops the same elements). Dtypes
 * are the support table's (ops/support.c): x, out, dout and dx f32, bf16 or f16 (here
 * bf16/f16 go through f32 twins, ops/lowp.h); the mask u8. */
#include <stdlib.h>

#include "core/internal.h"
#include "lt_ops.h"
#include "ops/lowp.h"
#include "ops/support.h"

int lt_dropout_forward(lt_tensor *out, lt_tensor *mask, const lt_tensor *x, float p, lt_rng *rng) {
    const char *op = "dropout_forward";
    LT_TRY(lt_op_check_contig(LT_OP_DROPOUT, LT_OP_ROLE_MAIN, x, op, "x"));
    LT_TRY(lt_op_check_contig(LT_OP_DROPOUT, LT_OP_ROLE_MAIN, out, op, "out"));
    LT_TRY(lt_check_same_shape(out, x, op, "out", "x"));
    LT_TRY(lt_check_tensor(mask, op, "mask"));
    if (mask->dtype_id != LT_DTYPE_U8 || !lt_tensor_is_contiguous(mask) ||
        lt_tensor_numel(mask) != lt_tensor_numel(x))
        return lt_fail(LT_ERR_ARG, "%s: mask must be a contiguous u8 tensor with x's element count", op);
    if (!(p >= 0.0f && p < 1.0f)) return lt_fail(LT_ERR_ARG, "%s: p must be in [0, 1), got %g", op, (double)p);
    if (!rng) return lt_fail(LT_ERR_ARG, "%s: rng is NULL", op);
    LT_TRY(lt_check_out(out, LT_OUT_ANY_DTYPE, op, "out", x, "x"));
    LT_TRY(lt_check_out(mask, LT_OUT_ANY_DTYPE, op, "mask", x, "x"));
    LT_DISPATCH_CUDA(out, lt_cuda_dropout_forward(out, mask, x, p, rng));
    if (lt_lowp_cpu(x) || lt_lowp_cpu(out)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &x);
        lt_lowp_out(&lp, &out);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK) st = lt_dropout_forward(out, mask, x, p, rng);
        return lt_lowp_end(&lp, st);
    }
    int64_t n = lt_tensor_numel(x);
    /* uniform draws in [0, 1) staged in out itself, then thresholded into the mask */
    lt_tensor u = {0};
    LT_TRY(lt_tensor_empty(&u, LT_DTYPE_F32, 1, &n, LT_DEVICE_CPU, 0));
    int st = lt_tensor_uniform(&u, 0.0, 1.0, rng);
    if (st == LT_OK) {
        const float *up = lt_tensor_data(&u), *xp = lt_tensor_data(x);
        float *op_ = lt_tensor_data(out);
        uint8_t *m = lt_tensor_data(mask);
        float keep = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (n >= LT_PAR_MIN_WORK)
        for (int64_t i = 0; i < n; i++) {
            m[i] = up[i] >= p;
            op_[i] = m[i] ? xp[i] * keep : 0.0f;
        }
    }
    lt_tensor_release(&u);
    return st;
}

int lt_dropout_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *mask, float p) {
    const char *op = "dropout_backward";
    LT_TRY(lt_op_check_contig(LT_OP_DROPOUT, LT_OP_ROLE_MAIN, dout, op, "dout"));
    LT_TRY(lt_op_check_contig(LT_OP_DROPOUT, LT_OP_ROLE_MAIN, dx, op, "dx"));
    LT_TRY(lt_check_same_shape(dx, dout, op, "dx", "dout"));
    LT_TRY(lt_check_tensor(mask, op, "mask"));
    if (mask->dtype_id != LT_DTYPE_U8 || lt_tensor_numel(mask) != lt_tensor_numel(dout))
        return lt_fail(LT_ERR_ARG, "%s: mask must be u8 with dout's element count", op);
    if (!(p >= 0.0f && p < 1.0f)) return lt_fail(LT_ERR_ARG, "%s: p must be in [0, 1), got %g", op, (double)p);
    LT_TRY(lt_check_out(dx, LT_OUT_ANY_DTYPE, op, "dx", dout, "dout"));
    LT_TRY(lt_check_same_device(mask, dx, op, "mask", "dx"));
    LT_DISPATCH_CUDA(dx, lt_cuda_dropout_backward(dx, dout, mask, p));
    if (lt_lowp_cpu(dout) || lt_lowp_cpu(dx)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &dout);
        lt_lowp_out(&lp, &dx);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK) st = lt_dropout_backward(dx, dout, mask, p);
        return lt_lowp_end(&lp, st);
    }
    int64_t n = lt_tensor_numel(dout);
    const float *g = lt_tensor_data(dout);
    const uint8_t *m = lt_tensor_data(mask);
    float *d = lt_tensor_data(dx);
    float keep = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (n >= LT_PAR_MIN_WORK)
    for (int64_t i = 0; i < n; i++) d[i] = m[i] ? g[i] * keep : 0.0f;
    return LT_OK;
}

typedef struct {
    float p;
    int32_t id;
} cand;

static int by_prob_desc(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id - y->id; /* ties: the lower id first, so results do not depend on qsort */
}

int lt_sample_logits(const lt_tensor *logits, float temperature, int32_t top_k, float top_p,
                     lt_rng *rng, int32_t *out) {
    const char *op = "sample_logits";
    LT_TRY(lt_check_tensor(logits, op, "logits"));
    if (!out) return lt_fail(LT_ERR_ARG, "%s: out is NULL", op);
    LT_TRY(lt_op_check_dtype(LT_OP_SAMPLE_LOGITS, LT_OP_ROLE_MAIN, logits, op, "logits"));
    LT_DISPATCH_CUDA(logits, lt_cuda_sample_logits(logits, temperature, top_k, top_p, rng, out));
    if (lt_lowp_cpu(logits)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &logits);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK) st = lt_sample_logits(logits, temperature, top_k, top_p, rng, out);
        return lt_lowp_end(&lp, st);
    }
    LT_TRY(lt_check_f32_contig(logits, op, "logits"));
    int64_t V = lt_tensor_numel(logits);
    if (V < 1 || V > INT32_MAX) return lt_fail(LT_ERR_SHAPE, "%s: %lld logits", op, (long long)V);
    const float *x = lt_tensor_data(logits);
    int64_t best = 0;
    for (int64_t i = 0; i < V; i++) {
        if (x[i] != x[i]) return lt_fail(LT_ERR_ARG, "%s: logit %lld is NaN", op, (long long)i);
        if (x[i] > x[best]) best = i;
    }
    if (!(temperature > 0.0f)) {
        *out = (int32_t)best;
        return LT_OK;
    }
    if (!rng) return lt_fail(LT_ERR_ARG, "%s: sampling needs an rng", op);
    cand *c = lt_scratch_alloc(V * (int64_t)sizeof(cand));
    if (!c) return LT_ERR_NOMEM;
    double m = x[best], sum = 0.0;
    for (int64_t i = 0; i < V; i++) {
        c[i].p = (float)exp(((double)x[i] - m) / temperature);
        c[i].id = (int32_t)i;
        sum += c[i].p;
    }
    for (int64_t i = 0; i < V; i++) c[i].p = (float)(c[i].p / sum);
    qsort(c, (size_t)V, sizeof *c, by_prob_desc);
    int64_t keep = V;
    if (top_k > 0 && top_k < keep) keep = top_k;
    if (top_p < 1.0f) {
        double acc = 0.0;
        int64_t k = 0;
        while (k < keep) {
            acc += c[k].p;
            k++;
            if (acc >= top_p) break;
        }
        keep = k > 0 ? k : 1;
    }
    double total = 0.0;
    for (int64_t i = 0; i < keep; i++) total += c[i].p;
    lt_tensor u = {0};
    int64_t one = 1;
    int st = lt_tensor_empty(&u, LT_DTYPE_F32, 1, &one, LT_DEVICE_CPU, 0);
    if (st == LT_OK) st = lt_tensor_uniform(&u, 0.0, 1.0, rng);
    if (st == LT_OK) {
        double r = *(float *)lt_tensor_data(&u) * total, acc = 0.0;
        int64_t pick = keep - 1;
        for (int64_t i = 0; i < keep; i++) {
            acc += c[i].p;
            if (r < acc) {
                pick = i;
                break;
            }
        }
        *out = c[pick].id;
    }
    lt_tensor_release(&u);
    lt_scratch_free(c);
    return st;
}
