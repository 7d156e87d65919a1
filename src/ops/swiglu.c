/* swiglu.c - the SiLU-gated unit of the Llama MLP: out = silu(gate) * up.
 *
 * The checks below hold on every device; CUDA tensors then go to cuda/swiglu.cu. Dtypes are
 * the support table's (ops/support.c): f32, bf16 or f16 (math in f32; here
 * bf16/f16 go through f32 twins, ops/lowp.h). */
#include "core/internal.h"
#include "lt_ops.h"
#include "ops/lowp.h"
#include "ops/support.h"

/* A (N, F) f32 operand with unit stride in F; rows may be strided. */
static int rows2d(const lt_tensor *t, const char *op, const char *name, int64_t *N, int64_t *F,
                  int64_t *rs) {
    LT_TRY(lt_op_check_dtype(LT_OP_SWIGLU, LT_OP_ROLE_MAIN, t, op, name));
    if (t->ndim < 1) return lt_fail(LT_ERR_SHAPE, "%s: %s must have at least 1 dim", op, name);
    *F = t->sizes[t->ndim - 1];
    *N = *F ? lt_tensor_numel(t) / *F : 0;
    *rs = lt_row_stride(t);
    if (*rs < 0)
        return lt_fail(LT_ERR_ARG, "%s: %s needs unit stride in its last dim and nested rows", op, name);
    return LT_OK;
}

int lt_swiglu_forward(lt_tensor *out, const lt_tensor *gate, const lt_tensor *up) {
    const char *op = "swiglu_forward";
    int64_t N, F, gs, n2, f2, us, n3, f3, os;
    LT_TRY(rows2d(gate, op, "gate", &N, &F, &gs));
    LT_TRY(rows2d(up, op, "up", &n2, &f2, &us));
    LT_TRY(rows2d(out, op, "out", &n3, &f3, &os));
    LT_TRY(lt_check_same_shape(up, gate, op, "up", "gate"));
    LT_TRY(lt_check_same_shape(out, gate, op, "out", "gate"));
    LT_TRY(lt_check_out(out, LT_OUT_ANY_DTYPE, op, "out", gate, "gate"));
    LT_TRY(lt_check_same_device(up, out, op, "up", "out"));
    LT_DISPATCH_CUDA(out, lt_cuda_swiglu_forward(out, gate, up));
    if (lt_lowp_cpu(gate) || lt_lowp_cpu(up) || lt_lowp_cpu(out)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &gate);
        lt_lowp_in(&lp, &up);
        lt_lowp_out(&lp, &out);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK) st = lt_swiglu_forward(out, gate, up);
        return lt_lowp_end(&lp, st);
    }
    const float *g = lt_tensor_data(gate), *u = lt_tensor_data(up);
    float *o = lt_tensor_data(out);
#pragma omp parallel for schedule(static) if (N * F >= LT_PAR_MIN_WORK)
    for (int64_t r = 0; r < N; r++) {
        const float *gr = g + r * gs, *ur = u + r * us;
        float *orow = o + r * os;
        for (int64_t i = 0; i < F; i++) {
            float x = gr[i];
            orow[i] = x / (1.0f + expf(-x)) * ur[i];
        }
    }
    return LT_OK;
}

/* With s = sigmoid(gate): dgate = dout * up * s * (1 + gate * (1 - s)), dup = dout * silu(gate). */
int lt_swiglu_backward(lt_tensor *dgate, lt_tensor *dup, const lt_tensor *dout,
                       const lt_tensor *gate, const lt_tensor *up) {
    const char *op = "swiglu_backward";
    int64_t N, F, gs, n, f, us, ds, dgs, dus;
    LT_TRY(rows2d(gate, op, "gate", &N, &F, &gs));
    LT_TRY(rows2d(up, op, "up", &n, &f, &us));
    LT_TRY(rows2d(dout, op, "dout", &n, &f, &ds));
    LT_TRY(rows2d(dgate, op, "dgate", &n, &f, &dgs));
    LT_TRY(rows2d(dup, op, "dup", &n, &f, &dus));
    LT_TRY(lt_check_same_shape(up, gate, op, "up", "gate"));
    LT_TRY(lt_check_same_shape(dout, gate, op, "dout", "gate"));
    LT_TRY(lt_check_same_shape(dgate, gate, op, "dgate", "gate"));
    LT_TRY(lt_check_same_shape(dup, gate, op, "dup", "gate"));
    LT_TRY(lt_check_out(dgate, LT_OUT_ANY_DTYPE, op, "dgate", dout, "dout"));
    LT_TRY(lt_check_out(dup, LT_OUT_ANY_DTYPE, op, "dup", dout, "dout"));
    LT_TRY(lt_check_same_device(gate, dgate, op, "gate", "dgate"));
    LT_TRY(lt_check_same_device(up, dgate, op, "up", "dgate"));
    LT_DISPATCH_CUDA(dgate, lt_cuda_swiglu_backward(dgate, dup, dout, gate, up));
    if (lt_lowp_cpu(dout) || lt_lowp_cpu(gate) || lt_lowp_cpu(up) || lt_lowp_cpu(dgate) ||
        lt_lowp_cpu(dup)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &dout);
        lt_lowp_in(&lp, &gate);
        lt_lowp_in(&lp, &up);
        lt_lowp_out(&lp, &dgate);
        lt_lowp_out(&lp, &dup);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK) st = lt_swiglu_backward(dgate, dup, dout, gate, up);
        return lt_lowp_end(&lp, st);
    }
    const float *g = lt_tensor_data(gate), *u = lt_tensor_data(up), *d = lt_tensor_data(dout);
    float *dg = lt_tensor_data(dgate), *du = lt_tensor_data(dup);
#pragma omp parallel for schedule(static) if (N * F >= LT_PAR_MIN_WORK)
    for (int64_t r = 0; r < N; r++) {
        const float *gr = g + r * gs, *ur = u + r * us, *dr = d + r * ds;
        float *dgr = dg + r * dgs, *dur = du + r * dus;
        for (int64_t i = 0; i < F; i++) {
            float x = gr[i], y = ur[i], dy = dr[i];
            float s = 1.0f / (1.0f + expf(-x));
            dgr[i] = dy * y * s * (1.0f + x * (1.0f - s));
            dur[i] = dy * x * s;
        }
    }
    return LT_OK;
}
