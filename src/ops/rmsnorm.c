/* rmsnorm.c - RMSNorm over the last dim, as Hugging Face's LlamaRMSNorm computes it:
 * y = x * rsqrt(mean(x^2) + eps) * weight.
 *
 * The checks below hold on every device; CUDA tensors then go to cuda/rmsnorm.cu. Dtypes
 * are the support table's (ops/support.c): x, out, dout and dx f32, bf16 or f16 (math in
 * f32; here bf16/f16 go through f32 twins, ops/lowp.h), the weight any float dtype, rstd
 * and dweight f32. */
#include <stdlib.h>

#include "core/internal.h"
#include "lt_ops.h"
#include "ops/lowp.h"
#include "ops/support.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* x viewed as (rows, C) with a row stride; fails when the leading dims do not nest. */
static int rows_view(const lt_tensor *t, const char *op, const char *name, int64_t *rows,
                     int64_t *C, int64_t *rs) {
    LT_TRY(lt_op_check_dtype(LT_OP_RMSNORM, LT_OP_ROLE_MAIN, t, op, name));
    if (t->ndim < 1) return lt_fail(LT_ERR_SHAPE, "%s: %s must have at least 1 dim", op, name);
    *C = t->sizes[t->ndim - 1];
    *rows = *C ? lt_tensor_numel(t) / *C : 0;
    *rs = lt_row_stride(t);
    if (*rs < 0)
        return lt_fail(LT_ERR_ARG, "%s: %s needs unit stride in its last dim and nested rows", op,
                       name);
    return LT_OK;
}

static int check_weight(const lt_tensor *w, int64_t C, const char *op) {
    LT_TRY(lt_check_ndim(w, 1, op, "weight"));
    LT_TRY(lt_op_check_contig(LT_OP_RMSNORM, LT_OP_ROLE_READ, w, op, "weight"));
    if (w->sizes[0] != C)
        return lt_fail(LT_ERR_SHAPE, "%s: weight has %lld entries but the last dim is %lld", op,
                       (long long)w->sizes[0], (long long)C);
    return LT_OK;
}

/* weight as f32 (a copy only when it is stored in bf16/f16). */
static const float *weight_f32(const lt_tensor *w, float **owned) {
    *owned = NULL;
    if (w->dtype_id == LT_DTYPE_F32) return lt_tensor_data(w);
    *owned = lt_scratch_alloc(w->sizes[0] * (int64_t)sizeof(float));
    if (!*owned) return NULL;
    lt_convert_to_f32(*owned, lt_tensor_data(w), w->dtype_id, w->sizes[0]);
    return *owned;
}

int lt_rmsnorm_forward(lt_tensor *out, lt_tensor *rstd, const lt_tensor *x,
                       const lt_tensor *weight, float eps) {
    const char *op = "rmsnorm_forward";
    int64_t rows, C, xs, orows, oC, os;
    LT_TRY(rows_view(x, op, "x", &rows, &C, &xs));
    LT_TRY(rows_view(out, op, "out", &orows, &oC, &os));
    LT_TRY(lt_check_same_shape(out, x, op, "out", "x"));
    LT_TRY(check_weight(weight, C, op));
    if (rstd) {
        LT_TRY(lt_check_contig_float(rstd, 0, op, "rstd"));
        if (lt_tensor_numel(rstd) != rows)
            return lt_fail(LT_ERR_SHAPE, "%s: rstd has %lld entries for %lld rows", op,
                           (long long)lt_tensor_numel(rstd), (long long)rows);
        LT_TRY(lt_check_out(rstd, LT_OUT_ANY_DTYPE, op, "rstd", x, "x"));
    }
    LT_TRY(lt_check_out(out, LT_OUT_ANY_DTYPE, op, "out", x, "x"));
    LT_TRY(lt_check_same_device(weight, out, op, "weight", "out"));
    LT_DISPATCH_CUDA(out, lt_cuda_rmsnorm_forward(out, rstd, x, weight, eps));
    if (lt_lowp_cpu(x) || lt_lowp_cpu(out)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &x);
        lt_lowp_out(&lp, &out);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK) st = lt_rmsnorm_forward(out, rstd, x, weight, eps);
        return lt_lowp_end(&lp, st);
    }
    float *wown;
    const float *w = weight_f32(weight, &wown);
    if (!w) return LT_ERR_NOMEM;
    const float *xp = lt_tensor_data(x);
    float *op_ = lt_tensor_data(out);
    float *rp = rstd ? lt_tensor_data(rstd) : NULL;
#pragma omp parallel for schedule(static) if (rows * C >= LT_PAR_MIN_WORK)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = xp + r * xs;
        float *yr = op_ + r * os;
        float ss = 0.0f;
        for (int64_t c = 0; c < C; c++) ss += xr[c] * xr[c];
        float inv = 1.0f / sqrtf(ss / (float)C + eps);
        for (int64_t c = 0; c < C; c++) yr[c] = xr[c] * inv * w[c];
        if (rp) rp[r] = inv;
    }
    lt_scratch_free(wown);
    return LT_OK;
}

/* With xh = x * rstd and g = dout * weight:
   dx = rstd * (g - xh * mean(g * xh));  dweight += sum over rows of dout * xh.
   dweight is reduced per thread into scratch (threads x C) and then summed in thread
   order, so the result does not depend on scheduling. */
int lt_rmsnorm_backward(lt_tensor *dx, lt_tensor *dweight, const lt_tensor *dout,
                        const lt_tensor *x, const lt_tensor *weight, const lt_tensor *rstd) {
    const char *op = "rmsnorm_backward";
    int64_t rows, C, xs, r2, c2, ds, r3, c3, gs;
    LT_TRY(rows_view(x, op, "x", &rows, &C, &xs));
    LT_TRY(rows_view(dx, op, "dx", &r2, &c2, &ds));
    LT_TRY(rows_view(dout, op, "dout", &r3, &c3, &gs));
    LT_TRY(lt_check_same_shape(dx, x, op, "dx", "x"));
    LT_TRY(lt_check_same_shape(dout, x, op, "dout", "x"));
    LT_TRY(check_weight(weight, C, op));
    LT_TRY(lt_check_contig_float(rstd, 0, op, "rstd"));
    if (lt_tensor_numel(rstd) != rows)
        return lt_fail(LT_ERR_SHAPE, "%s: rstd has %lld entries for %lld rows", op,
                       (long long)lt_tensor_numel(rstd), (long long)rows);
    if (dweight) {
        LT_TRY(lt_check_contig_float(dweight, 0, op, "dweight"));
        LT_TRY(lt_check_out(dweight, LT_OUT_ANY_DTYPE, op, "dweight", dout, "dout"));
        if (lt_tensor_numel(dweight) != C)
            return lt_fail(LT_ERR_SHAPE, "%s: dweight has %lld entries, expected %lld", op,
                           (long long)lt_tensor_numel(dweight), (long long)C);
    }
    LT_TRY(lt_check_out(dx, LT_OUT_ANY_DTYPE, op, "dx", dout, "dout"));
    LT_TRY(lt_check_same_device(x, dx, op, "x", "dx"));
    LT_TRY(lt_check_same_device(weight, dx, op, "weight", "dx"));
    LT_TRY(lt_check_same_device(rstd, dx, op, "rstd", "dx"));
    LT_DISPATCH_CUDA(dx, lt_cuda_rmsnorm_backward(dx, dweight, dout, x, weight, rstd));
    if (lt_lowp_cpu(dout) || lt_lowp_cpu(x) || lt_lowp_cpu(dx)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &dout);
        lt_lowp_in(&lp, &x);
        lt_lowp_out(&lp, &dx);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK) st = lt_rmsnorm_backward(dx, dweight, dout, x, weight, rstd);
        return lt_lowp_end(&lp, st);
    }
    float *wown;
    const float *w = weight_f32(weight, &wown);
    if (!w) return LT_ERR_NOMEM;
    int nthreads = 1;
#ifdef _OPENMP
    nthreads = omp_get_max_threads();
#endif
    float *partial = NULL;
    if (dweight) {
        partial = lt_scratch_alloc((int64_t)nthreads * C * (int64_t)sizeof(float));
        if (!partial) {
            lt_scratch_free(wown);
            return LT_ERR_NOMEM;
        }
        memset(partial, 0, (size_t)nthreads * (size_t)C * sizeof(float));
    }
    const float *xp = lt_tensor_data(x), *gp = lt_tensor_data(dout), *rp = lt_tensor_data(rstd);
    float *dxp = lt_tensor_data(dx);
    int used = 1;
#pragma omp parallel if (rows * C >= LT_PAR_MIN_WORK)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#pragma omp single
        used = omp_get_num_threads();
#endif
        float *acc = partial ? partial + (int64_t)tid * C : NULL;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = xp + r * xs, *gr = gp + r * gs;
            float *dr = dxp + r * ds;
            float inv = rp[r];
            float dot = 0.0f;
            for (int64_t c = 0; c < C; c++) dot += gr[c] * w[c] * xr[c] * inv;
            float m = dot / (float)C;
            if (acc)
                for (int64_t c = 0; c < C; c++) acc[c] += gr[c] * xr[c] * inv;
            for (int64_t c = 0; c < C; c++) dr[c] = inv * (gr[c] * w[c] - xr[c] * inv * m);
        }
    }
    if (dweight) {
        float *dw = lt_tensor_data(dweight);
        for (int t = 0; t < used; t++)
            for (int64_t c = 0; c < C; c++) dw[c] += partial[(int64_t)t * C + c];
    }
    lt_scratch_free(partial);
    lt_scratch_free(wown);
    return LT_OK;
}
