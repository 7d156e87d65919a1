/* adamw.c - the AdamW update (PyTorch's arithmetic), its 8-bit form (bitsandbytes'
   blockwise 8-bit optimizer) and the global gradient norm. */
#include "core/internal.h"
#include "lt_ops.h"
#include "ops/adamw8_math.h"
#include "ops/support.h"

/* Device-agnostic checks of the hyperparameters. */
static int check_hyper(const lt_adamw_params *p, const char *op) {
    if (!p) return lt_fail(LT_ERR_ARG, "%s: params is NULL", op);
    if (p->step < 1) return lt_fail(LT_ERR_ARG, "%s: step must be >= 1, got %lld", op, (long long)p->step);
    if (!(p->lr >= 0) || !(p->eps > 0) || !(p->beta1 >= 0 && p->beta1 < 1) ||
        !(p->beta2 >= 0 && p->beta2 < 1) || !(p->weight_decay >= 0))
        return lt_fail(LT_ERR_ARG,
                       "%s: need lr >= 0, eps > 0, 0 <= beta1, beta2 < 1, weight_decay >= 0 "
                       "(got lr %g, eps %g, betas %g %g, weight_decay %g)",
                       op, p->lr, p->eps, p->beta1, p->beta2, p->weight_decay);
    return LT_OK;
}

/* Device-agnostic checks of one parameter's tensors: the support table's dtype (f32 on
   every device: master weights and moments), contiguous, one shape, one device (the loop),
   and the three updated in place writable outputs. */
static int check_set(lt_tensor *param, const lt_tensor *grad, lt_tensor *exp_avg,
                     lt_tensor *exp_avg_sq, const char *op) {
    const lt_tensor *ts[4] = {param, grad, exp_avg, exp_avg_sq};
    const char *names[4] = {"param", "grad", "exp_avg", "exp_avg_sq"};
    for (int i = 0; i < 4; i++) {
        LT_TRY(lt_op_check_dtype(LT_OP_ADAMW, LT_OP_ROLE_MAIN, ts[i], op, names[i]));
        if (!lt_tensor_is_contiguous(ts[i]))
            return lt_fail(LT_ERR_ARG, "%s: %s must be contiguous (call :contiguous())", op,
                           names[i]);
        if (i > 0) {
            LT_TRY(lt_check_same_shape(ts[i], param, op, names[i], "param"));
            LT_TRY(lt_check_same_device(ts[i], param, op, names[i], "param"));
        }
    }
    LT_TRY(lt_check_out(param, LT_OUT_ANY_DTYPE, op, "param", grad, "grad"));
    LT_TRY(lt_check_out(exp_avg, LT_OUT_ANY_DTYPE, op, "exp_avg", grad, "grad"));
    return lt_check_out(exp_avg_sq, LT_OUT_ANY_DTYPE, op, "exp_avg_sq", grad, "grad");
}

int lt_adamw_step(lt_tensor *param, const lt_tensor *grad, lt_tensor *exp_avg,
                  lt_tensor *exp_avg_sq, const lt_adamw_params *p) {
    const char *op = "adamw_step";
    LT_TRY(check_hyper(p, op));
    LT_TRY(check_set(param, grad, exp_avg, exp_avg_sq, op));
    LT_DISPATCH_CUDA(param, lt_cuda_adamw_step(param, grad, exp_avg, exp_avg_sq, p));
    LT_TRY(lt_check_f32_contig(param, op, "param"));
    LT_TRY(lt_check_f32_contig(grad, op, "grad"));
    LT_TRY(lt_check_f32_contig(exp_avg, op, "exp_avg"));
    LT_TRY(lt_check_f32_contig(exp_avg_sq, op, "exp_avg_sq"));
    LT_TRY(lt_check_same_shape(grad, param, op, "grad", "param"));
    LT_TRY(lt_check_same_shape(exp_avg, param, op, "exp_avg", "param"));
    LT_TRY(lt_check_same_shape(exp_avg_sq, param, op, "exp_avg_sq", "param"));
    if (p->step < 1) return lt_fail(LT_ERR_ARG, "%s: step must be >= 1, got %lld", op, (long long)p->step);
    if (!(p->lr >= 0) || !(p->eps > 0) || !(p->beta1 >= 0 && p->beta1 < 1) ||
        !(p->beta2 >= 0 && p->beta2 < 1) || !(p->weight_decay >= 0))
        return lt_fail(LT_ERR_ARG,
                       "%s: need lr >= 0, eps > 0, 0 <= beta1, beta2 < 1, weight_decay >= 0 "
                       "(got lr %g, eps %g, betas %g %g, weight_decay %g)",
                       op, p->lr, p->eps, p->beta1, p->beta2, p->weight_decay);
    double bc1 = 1.0 - pow(p->beta1, (double)p->step);
    double bc2 = 1.0 - pow(p->beta2, (double)p->step);
    float decay = (float)(1.0 - p->lr * p->weight_decay);
    float step_size = (float)(p->lr / bc1);
    float inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    float b1 = (float)p->beta1, b2 = (float)p->beta2, eps = (float)p->eps;
    float gs = (float)p->grad_scale;
    int64_t n = lt_tensor_numel(param);
    float *w = lt_tensor_data(param), *m = lt_tensor_data(exp_avg), *v = lt_tensor_data(exp_avg_sq);
    const float *g = lt_tensor_data(grad);
#pragma omp parallel for schedule(static) if (n >= LT_PAR_MIN_WORK)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i] * gs;
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) * inv_sqrt_bc2 + eps;
        w[i] = w[i] * decay - step_size * mi / denom;
    }
    return LT_OK;
}

int lt_adamw_step_multi(lt_tensor *const *params, const lt_tensor *const *grads,
                        lt_tensor *const *exp_avgs, lt_tensor *const *exp_avg_sqs, int32_t n,
                        const lt_adamw_params *p) {
    const char *op = "adamw_step_multi";
    LT_TRY(check_hyper(p, op));
    if (n < 0 || (n > 0 && (!params || !grads || !exp_avgs || !exp_avg_sqs)))
        return lt_fail(LT_ERR_ARG, "%s: bad tensor lists (n %d)", op, (int)n);
    if (n == 0) return LT_OK;
    for (int32_t i = 0; i < n; i++) {
        int st = check_set(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], op);
        if (st == LT_OK) st = lt_check_same_device(params[i], params[0], op, "param", "param 1");
        if (st != LT_OK) return lt_fail_prefix(st, "parameter %d: ", (int)i + 1);
    }
    LT_DISPATCH_CUDA(params[0],
                     lt_cuda_adamw_step_multi(params, grads, exp_avgs, exp_avg_sqs, n, p));
    /* the CPU update is the per-tensor one (each parallel inside): identical results */
    for (int32_t i = 0; i < n; i++) {
        int st = lt_adamw_step(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], p);
        if (st != LT_OK) return lt_fail_prefix(st, "%s: parameter %d: ", op, (int)i + 1);
    }
    return LT_OK;
}

/* ---- 8-bit AdamW -------------------------------------------------------------------- */

enum { ADAMW8_MIN_BLOCK = 64, ADAMW8_MAX_BLOCK = 4096 };

/* A u8 or f32 state tensor of exactly `numel` elements, contiguous, writable when `out`,
   on the device of `param`. */
static int check_state(const lt_tensor *t, int dtype, int64_t numel, int out, const char *op,
                       const char *name, const lt_tensor *param, const char *what) {
    LT_TRY(lt_check_tensor(t, op, name));
    if (t->dtype_id != dtype)
        return lt_fail(LT_ERR_DTYPE, "%s: %s must be %s (%s), got %s", op, name,
                       lt_dtype_info(dtype)->name, what, lt_dtype_info(t->dtype_id)->name);
    if (lt_tensor_numel(t) != numel) {
        char buf[64];
        return lt_fail(LT_ERR_SHAPE, "%s: %s must have %lld elements (%s), got shape %s", op,
                       name, (long long)numel, what, lt_shape_str(t, buf, sizeof buf));
    }
    if (!lt_tensor_is_contiguous(t))
        return lt_fail(LT_ERR_ARG, "%s: %s must be contiguous (call :contiguous())", op, name);
    if (out) return lt_check_out(t, LT_OUT_ANY_DTYPE, op, name, param, "param");
    return lt_check_same_device(t, param, op, name, "param");
}

/* The map increases strictly, what coding by search or by count needs (checked on the
   host, where it costs 255 compares; a device map comes from the same generator through
   the Lua optimizer). */
static int check_sorted(const float *map, const char *op, const char *name) {
    for (int i = 0; i < 255; i++)
        if (!(map[i] < map[i + 1]))
            return lt_fail(LT_ERR_ARG,
                           "%s: %s must increase strictly (a dynamic map from "
                           "lt_quant_dynamic_map), but entry %d is %g and entry %d is %g",
                           op, name, i, (double)map[i], i + 1, (double)map[i + 1]);
    return LT_OK;
}

int lt_adamw8_step(lt_tensor *param, const lt_tensor *grad, lt_tensor *m_codes,
                   lt_tensor *m_absmax, lt_tensor *v_codes, lt_tensor *v_absmax,
                   const lt_tensor *m_map, const lt_tensor *v_map, int32_t block,
                   const lt_adamw_params *p) {
    const char *op = "adamw8_step";
    LT_TRY(check_hyper(p, op));
    if (block < ADAMW8_MIN_BLOCK || block > ADAMW8_MAX_BLOCK || (block & (block - 1)) != 0)
        return lt_fail(LT_ERR_ARG,
                       "%s: block must be a power of two from %d to %d (bitsandbytes uses 256), "
                       "got %d",
                       op, ADAMW8_MIN_BLOCK, ADAMW8_MAX_BLOCK, (int)block);
    LT_TRY(lt_op_check_contig(LT_OP_ADAMW, LT_OP_ROLE_MAIN, param, op, "param"));
    LT_TRY(lt_op_check_contig(LT_OP_ADAMW, LT_OP_ROLE_MAIN, grad, op, "grad"));
    LT_TRY(lt_check_same_shape(grad, param, op, "grad", "param"));
    LT_TRY(lt_check_out(param, LT_OUT_ANY_DTYPE, op, "param", grad, "grad"));
    int64_t n = lt_tensor_numel(param), nblocks = (n + block - 1) / block;
    LT_TRY(check_state(m_codes, LT_DTYPE_U8, n, 1, op, "m_codes", param, "one code per element"));
    LT_TRY(check_state(v_codes, LT_DTYPE_U8, n, 1, op, "v_codes", param, "one code per element"));
    LT_TRY(check_state(m_absmax, LT_DTYPE_F32, nblocks, 1, op, "m_absmax", param,
                       "one per block of the parameter"));
    LT_TRY(check_state(v_absmax, LT_DTYPE_F32, nblocks, 1, op, "v_absmax", param,
                       "one per block of the parameter"));
    LT_TRY(check_state(m_map, LT_DTYPE_F32, 256, 0, op, "m_map", param, "the signed dynamic map"));
    LT_TRY(check_state(v_map, LT_DTYPE_F32, 256, 0, op, "v_map", param,
                       "the unsigned dynamic map"));
    LT_DISPATCH_CUDA(param, lt_cuda_adamw8_step(param, grad, m_codes, m_absmax, v_codes,
                                                v_absmax, m_map, v_map, block, p));
    const float *qm = lt_tensor_data(m_map), *qv = lt_tensor_data(v_map);
    LT_TRY(check_sorted(qm, op, "m_map"));
    LT_TRY(check_sorted(qv, op, "v_map"));
    /* the codes by counting thresholds (ops/adamw8_math.h): the search's codes, faster */
    lt_adamw8_bounds tm, tv;
    lt_adamw8_bounds_init(&tm, qm);
    lt_adamw8_bounds_init(&tv, qv);
    /* the scalars as lt_adamw_step computes them, so the update is its arithmetic */
    double bc1 = 1.0 - pow(p->beta1, (double)p->step);
    double bc2 = 1.0 - pow(p->beta2, (double)p->step);
    float decay = (float)(1.0 - p->lr * p->weight_decay);
    float step_size = (float)(p->lr / bc1);
    float inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    float b1 = (float)p->beta1, b2 = (float)p->beta2, eps = (float)p->eps;
    float gs = (float)p->grad_scale;
    float *w = lt_tensor_data(param), *am = lt_tensor_data(m_absmax), *av = lt_tensor_data(v_absmax);
    const float *g = lt_tensor_data(grad);
    uint8_t *cm = lt_tensor_data(m_codes), *cv = lt_tensor_data(v_codes);
#pragma omp parallel for schedule(static) if (n >= LT_PAR_MIN_WORK)
    for (int64_t b = 0; b < nblocks; b++) {
        /* the block's new moments (block) in f32, between the update and the re-coding */
        float mb[ADAMW8_MAX_BLOCK], vb[ADAMW8_MAX_BLOCK];
        int64_t lo = b * block, len = n - lo < block ? n - lo : block;
        float scale_m = am[b], scale_v = av[b], max_m = 0.0f, max_v = 0.0f;
        for (int64_t j = 0; j < len; j++) {
            int64_t i = lo + j;
            float gi = g[i];
            if (!isfinite(gi)) {
                /* bitsandbytes' rule: the element's moments restart, its weight stays */
                mb[j] = 0.0f;
                vb[j] = 0.0f;
                continue;
            }
            gi *= gs;
            float mi = b1 * (qm[cm[i]] * scale_m) + (1.0f - b1) * gi;
            float vi = b2 * (qv[cv[i]] * scale_v) + (1.0f - b2) * gi * gi;
            mb[j] = mi;
            vb[j] = vi;
            max_m = fmaxf(max_m, fabsf(mi));
            max_v = fmaxf(max_v, fabsf(vi));
            float denom = sqrtf(vi) * inv_sqrt_bc2 + eps;
            w[i] = w[i] * decay - step_size * mi / denom;
        }
        am[b] = max_m;
        av[b] = max_v;
        /* an all-zero block codes 0 / 0 as 0 (the codes of 0.0), never as NaN */
        for (int64_t j = 0; j < len; j++) {
            float xm = max_m > 0.0f ? mb[j] / max_m : 0.0f;
            float xv = max_v > 0.0f ? vb[j] / max_v : 0.0f;
            cm[lo + j] = lt_adamw8_keep_sign(qm, lt_adamw8_count(&tm, xm), mb[j]);
            cv[lo + j] = lt_adamw8_count(&tv, xv);
        }
    }
    return LT_OK;
}

int lt_global_norm(const lt_tensor *const *tensors, int32_t n, double *out) {
    if (!out) return lt_fail(LT_ERR_ARG, "global_norm: out is NULL");
    if (n < 0 || (n > 0 && !tensors)) return lt_fail(LT_ERR_ARG, "global_norm: bad tensor list");
    for (int32_t i = 0; i < n; i++) {
        int st = lt_op_check_dtype(LT_OP_GLOBAL_NORM, LT_OP_ROLE_MAIN, tensors[i], "global_norm",
                                   "tensor");
        if (st == LT_OK)
            st = lt_check_same_device(tensors[i], tensors[0], "global_norm", "tensor", "tensor 1");
        if (st != LT_OK) return lt_fail_prefix(st, "tensor %d: ", i + 1);
    }
    if (n > 0) LT_DISPATCH_CUDA(tensors[0], lt_cuda_global_norm(tensors, n, out));
    double total = 0.0;
    for (int32_t i = 0; i < n; i++) {
        double s;
        int st = lt_sum_squares(tensors[i], &s);
        if (st != LT_OK) return lt_fail_prefix(st, "global_norm: tensor %d: ", i + 1);
        total += s;
    }
    *out = sqrt(total);
    return LT_OK;
}
