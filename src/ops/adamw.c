/* adamw.c - the AdamW update (PyTorch's arithmetic) and the global gradient norm. */
#include "core/internal.h"
#include "lt_ops.h"
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
