/* rope.c - rotary position embeddings in Hugging Face's Llama convention.
 *
 * For head dim D and pair index i < D/2, element i and element i + D/2 rotate together by
 * the angle pos * inv_freq[i] (rotate_half): y_i = x_i cos - x_{i+D/2} sin and
 * y_{i+D/2} = x_{i+D/2} cos + x_i sin.
 *
 * The checks below hold on every device; CUDA tensors then go to cuda/rope.cu (positions
 * are range-checked on the device). Dtypes are the support table's (ops/support.c): x and
 * out f32, bf16 or f16 (here through f32 twins, ops/lowp.h); the cos/sin tables f32.
 * lt_rope_inv_freq is CPU only: the table is made once and copied. */
#include "core/internal.h"
#include "lt_ops.h"
#include "ops/lowp.h"
#include "ops/support.h"

int lt_rope_inv_freq(lt_tensor *inv_freq, int32_t head_dim, const lt_rope_config *cfg) {
    const char *op = "rope_inv_freq";
    if (!cfg) return lt_fail(LT_ERR_ARG, "%s: config is NULL", op);
    if (head_dim <= 0 || head_dim % 2)
        return lt_fail(LT_ERR_ARG, "%s: head_dim must be positive and even, got %d", op, head_dim);
    if (!(cfg->theta > 0)) return lt_fail(LT_ERR_ARG, "%s: rope_theta must be positive", op);
    LT_TRY(lt_check_f32_contig(inv_freq, op, "inv_freq"));
    int64_t half = head_dim / 2;
    if (lt_tensor_numel(inv_freq) != half)
        return lt_fail(LT_ERR_SHAPE, "%s: inv_freq needs %lld entries", op, (long long)half);
    float *out = lt_tensor_data(inv_freq);
    switch (cfg->scaling_type) {
    case LT_ROPE_SCALING_NONE: break;
    case LT_ROPE_SCALING_LINEAR:
        if (!(cfg->factor > 0)) return lt_fail(LT_ERR_ARG, "%s: rope_scaling.factor must be positive", op);
        break;
    case LT_ROPE_SCALING_LLAMA3:
        if (!(cfg->factor > 0) || !(cfg->low_freq_factor > 0) ||
            !(cfg->high_freq_factor > cfg->low_freq_factor) || cfg->original_max_position <= 0)
            return lt_fail(LT_ERR_ARG,
                           "%s: llama3 rope_scaling needs factor > 0, 0 < low_freq_factor < "
                           "high_freq_factor and original_max_position_embeddings > 0",
                           op);
        break;
    default:
        return lt_fail(LT_ERR_UNSUPPORTED, "%s: unknown rope scaling type %d", op, cfg->scaling_type);
    }
    for (int64_t i = 0; i < half; i++) {
        double f = 1.0 / pow(cfg->theta, (double)(2 * i) / (double)head_dim);
        if (cfg->scaling_type == LT_ROPE_SCALING_LINEAR) {
            f /= cfg->factor;
        } else if (cfg->scaling_type == LT_ROPE_SCALING_LLAMA3) {
            /* Long wavelengths (low frequencies) are slowed by `factor`, short ones kept,
               and the band between is interpolated. */
            double old_len = cfg->original_max_position;
            double low_wavelen = old_len / cfg->low_freq_factor;
            double high_wavelen = old_len / cfg->high_freq_factor;
            double wavelen = 2.0 * M_PI / f;
            if (wavelen > low_wavelen) {
                f = f / cfg->factor;
            } else if (wavelen >= high_wavelen) {
                double smooth = (old_len / wavelen - cfg->low_freq_factor) /
                                (cfg->high_freq_factor - cfg->low_freq_factor);
                f = (1.0 - smooth) * f / cfg->factor + smooth * f;
            }
        }
        out[i] = (float)f;
    }
    return LT_OK;
}


int lt_rope_table(lt_tensor *cos_t, lt_tensor *sin_t, const lt_tensor *inv_freq) {
    const char *op = "rope_table";
    LT_TRY(lt_check_contig_float(inv_freq, 0, op, "inv_freq"));
    LT_TRY(lt_check_ndim(cos_t, 2, op, "cos"));
    LT_TRY(lt_check_contig_float(cos_t, 0, op, "cos"));
    LT_TRY(lt_check_contig_float(sin_t, 0, op, "sin"));
    LT_TRY(lt_check_same_shape(sin_t, cos_t, op, "sin", "cos"));
    LT_TRY(lt_check_out(cos_t, LT_OUT_ANY_DTYPE, op, "cos", inv_freq, "inv_freq"));
    LT_TRY(lt_check_out(sin_t, LT_OUT_ANY_DTYPE, op, "sin", inv_freq, "inv_freq"));
    int64_t P = cos_t->sizes[0], half = cos_t->sizes[1];
    if (lt_tensor_numel(inv_freq) != half)
        return lt_fail(LT_ERR_SHAPE, "%s: tables have %lld columns but inv_freq has %lld", op,
                       (long long)half, (long long)lt_tensor_numel(inv_freq));
    LT_DISPATCH_CUDA(cos_t, lt_cuda_rope_table(cos_t, sin_t, inv_freq));
    const float *f = lt_tensor_data(inv_freq);
    float *c = lt_tensor_data(cos_t), *s = lt_tensor_data(sin_t);
#pragma omp parallel for schedule(static) if (P * half >= LT_PAR_MIN_WORK)
    for (int64_t p = 0; p < P; p++)
        for (int64_t i = 0; i < half; i++) {
            double a = (double)p * (double)f[i];
            c[p * half + i] = (float)cos(a);
            s[p * half + i] = (float)sin(a);
        }
    return LT_OK;
}

/* Shared by forward (sign = +1) and backward (sign = -1: the inverse rotation). */
static int rope_apply(lt_tensor *out, const lt_tensor *x, const lt_tensor *cos_t,
                      const lt_tensor *sin_t, const lt_tensor *positions, float sign,
                      const char *op) {
    LT_TRY(lt_check_ndim(x, 4, op, "x"));
    LT_TRY(lt_op_check_dtype(LT_OP_ROPE, LT_OP_ROLE_MAIN, x, op, "x"));
    LT_TRY(lt_op_check_out(LT_OP_ROPE, out, op, "out", x, "x"));
    LT_TRY(lt_check_same_shape(out, x, op, "out", "x"));
    LT_TRY(lt_check_contig_float(cos_t, 0, op, "cos"));
    LT_TRY(lt_check_contig_float(sin_t, 0, op, "sin"));
    LT_TRY(lt_check_same_shape(sin_t, cos_t, op, "sin", "cos"));
    int64_t B = x->sizes[0], T = x->sizes[1], H = x->sizes[2], D = x->sizes[3];
    if (D % 2) return lt_fail(LT_ERR_SHAPE, "%s: head dim %lld is odd", op, (long long)D);
    if (x->strides[3] != 1 || out->strides[3] != 1)
        return lt_fail(LT_ERR_ARG, "%s: x and out need unit stride in the head dim", op);
    int64_t half = D / 2, P = cos_t->sizes[0];
    if (cos_t->ndim != 2 || cos_t->sizes[1] != half)
        return lt_fail(LT_ERR_SHAPE, "%s: cos/sin must be (positions, %lld)", op, (long long)half);
    const void *pos = NULL;
    int pdt = 0, pos_per_batch = 0;
    if (positions) {
        LT_TRY(lt_check_tensor(positions, op, "positions"));
        if (!lt_is_index_dtype(positions->dtype_id) || !lt_tensor_is_contiguous(positions))
            return lt_fail(LT_ERR_ARG, "%s: positions must be contiguous i32/i64", op);
        int64_t np = lt_tensor_numel(positions);
        if (np != T && np != B * T)
            return lt_fail(LT_ERR_SHAPE, "%s: positions has %lld entries; expected (T) = %lld or (B, T) = %lld",
                           op, (long long)np, (long long)T, (long long)(B * T));
    } else if (T > P) {
        return lt_fail(LT_ERR_RANGE, "%s: %lld positions but the table holds %lld", op,
                       (long long)T, (long long)P);
    }
    LT_TRY(lt_check_same_device(cos_t, out, op, "cos", "out"));
    LT_TRY(lt_check_same_device(sin_t, out, op, "sin", "out"));
    LT_TRY(lt_check_same_device(positions, out, op, "positions", "out"));
    LT_DISPATCH_CUDA(out, sign > 0 ? lt_cuda_rope_forward(out, x, cos_t, sin_t, positions)
                                   : lt_cuda_rope_backward(out, x, cos_t, sin_t, positions));
    if (lt_lowp_cpu(x) || lt_lowp_cpu(out)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &x);
        lt_lowp_out(&lp, &out);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK) st = rope_apply(out, x, cos_t, sin_t, positions, sign, op);
        return lt_lowp_end(&lp, st);
    }
    if (positions) {
        int64_t np = lt_tensor_numel(positions);
        pos = lt_tensor_data(positions);
        pdt = positions->dtype_id;
        pos_per_batch = np == B * T;
        for (int64_t i = 0; i < np; i++) {
            int64_t p = lt_load_index(pos, pdt, i);
            if (p < 0 || p >= P)
                return lt_fail(LT_ERR_RANGE, "%s: position %lld at index %lld is outside the table of %lld positions",
                               op, (long long)p, (long long)i, (long long)P);
        }
    }
    const float *ct = lt_tensor_data(cos_t), *st = lt_tensor_data(sin_t);
    const float *xb = (const float *)x->storage->data + x->offset;
    float *ob = (float *)out->storage->data + out->offset;
#pragma omp parallel for collapse(2) schedule(static) if (B * T * H * D >= LT_PAR_MIN_WORK)
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            int64_t p = !pos ? t : lt_load_index(pos, pdt, pos_per_batch ? b * T + t : t);
            const float *c = ct + p * half, *s = st + p * half;
            for (int64_t h = 0; h < H; h++) {
                const float *xr = xb + b * x->strides[0] + t * x->strides[1] + h * x->strides[2];
                float *yr = ob + b * out->strides[0] + t * out->strides[1] + h * out->strides[2];
                for (int64_t i = 0; i < half; i++) {
                    float x1 = xr[i], x2 = xr[i + half], sn = sign * s[i];
                    yr[i] = x1 * c[i] - x2 * sn;
                    yr[i + half] = x2 * c[i] + x1 * sn;
                }
            }
        }
    return LT_OK;
}

int lt_rope_forward(lt_tensor *out, const lt_tensor *x, const lt_tensor *cos_t,
                    const lt_tensor *sin_t, const lt_tensor *positions) {
    return rope_apply(out, x, cos_t, sin_t, positions, 1.0f, "rope_forward");
}

int lt_rope_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *cos_t,
                     const lt_tensor *sin_t, const lt_tensor *positions) {
    return rope_apply(dx, dout, cos_t, sin_t, positions, -1.0f, "rope_backward");
}
