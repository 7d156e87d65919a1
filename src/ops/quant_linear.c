/* quant_linear.c - the linear layer of a frozen quantized weight W (out, in):
 * forward y = x @ W^T, backward dx = dy @ W (no weight gradient: the base is frozen).
 *
 * W is never held whole in f32. The work is split across the OpenMP threads by weight rows
 * (forward: each thread owns a slice of y's columns) or weight columns (backward: each owns
 * a slice of dx's columns), so the threads never wait on each other until the end. Each
 * thread dequantizes a panel of its slice into its own scratch (all panels together about
 * 4 MB of f32) and multiplies it with single-threaded OpenBLAS sgemm, as matmul.c runs BLAS
 * inside OpenMP. Dequantizing costs O(out * in) against the product's O(N * out * in), so
 * for N in the hundreds the kernel runs at sgemm speed.
 *
 * int8 (LLM.int8): x is quantized row-wise to int8 values (held as f32, exactly), except
 * the outlier columns, which multiply the dequantized weight columns in f32. The products of
 * int8 values are summed by sgemm on integer-valued f32 panels: exact while in <= 1040
 * (127 * 127 * 1040 < 2^24), and within f32 rounding beyond.
 */
#include <cblas.h>

#include "core/internal.h"
#include "lt_quant.h"
#include "ops/dnnl.h"
#include "ops/lowp.h"
#include "ops/quant_internal.h"
#include "ops/support.h"

#ifdef _OPENMP
#include <omp.h>
#endif

enum { LT_QPANEL_FLOATS = 1 << 20 }; /* 4 MB of f32 of dequantized panels per call */
enum { LT_QGEMM_PAR_MIN = 1 << 21 }; /* fewer multiply-adds run on one thread (as matmul.c) */

/* t (..., last) as a 2-D (rows, last) f32 view with unit stride in its last dim into dst:
   a view of t when its layout allows, else a contiguous f32 copy. */
static int rows_f32(lt_tensor *dst, const lt_tensor *t, int64_t rows, int64_t last) {
    int64_t s[2] = {rows, last};
    if (t->dtype_id == LT_DTYPE_F32 && lt_tensor_reshape(dst, t, 2, s) == LT_OK &&
        (last <= 1 || dst->strides[1] == 1) && (rows <= 1 || dst->strides[0] >= last))
        return LT_OK;
    lt_clear_error();
    lt_tensor c = {0};
    LT_TRY(lt_tensor_contiguous(&c, t, LT_DTYPE_F32));
    int st = lt_tensor_reshape(dst, &c, 2, s);
    lt_tensor_release(&c);
    return st;
}

/* Checks that hold on every device, shared by forward and backward: `out` (..., n_out) and
   `in` (..., n_in) with equal leading dims and the support table's dtypes (out f32, bf16
   or f16: on CUDA f32 or in's dtype, here bf16/f16 through an f32 twin, ops/lowp.h; in any
   float dtype), out
   writable, no broadcast view and not sharing in's storage, both on the quantized weight's
   device. */
static int check_args(const lt_tensor *out, const lt_tensor *in, int64_t n_out, int64_t n_in,
                      const lt_quant_state *w, const char *op, const char *out_name,
                      const char *in_name) {
    LT_TRY(lt_op_check_out(LT_OP_QUANT_LINEAR, out, op, out_name, &w->packed,
                           "the quantized weight"));
    LT_TRY(lt_op_check_dtype(LT_OP_QUANT_LINEAR, LT_OP_ROLE_READ, in, op, in_name));
    if (in->ndim < 1 || out->ndim != in->ndim) {
        char a[128], b[128];
        return lt_fail(LT_ERR_SHAPE,
                       "%s: %s %s and %s %s must have the same number of dims "
                       "(at least 1)",
                       op, out_name, lt_shape_str(out, a, sizeof a), in_name,
                       lt_shape_str(in, b, sizeof b));
    }
    int nd = in->ndim, ok = in->sizes[nd - 1] == n_in && out->sizes[nd - 1] == n_out;
    for (int i = 0; ok && i < nd - 1; i++)
        ok = in->sizes[i] == out->sizes[i];
    if (!ok) {
        char a[128], b[128];
        return lt_fail(LT_ERR_SHAPE,
                       "%s: for a (%lld, %lld) weight %s must be (..., %lld) and %s (..., %lld) "
                       "with the same leading dims; got %s %s and %s %s",
                       op, (long long)w->sizes[0], (long long)w->sizes[1], in_name, (long long)n_in,
                       out_name, (long long)n_out, in_name, lt_shape_str(in, a, sizeof a), out_name,
                       lt_shape_str(out, b, sizeof b));
    }
    if (out->storage == in->storage)
        return lt_fail(LT_ERR_ARG, "%s: %s must not share storage with %s", op, out_name, in_name);
    return lt_check_same_device(in, &w->packed, op, in_name, "the quantized weight");
}

/* The CPU side after check_args: `out` f32 on the CPU; fills the 2-D views of out and in. */
static int prepare(lt_tensor *out2, lt_tensor *in2, const lt_tensor *out, const lt_tensor *in,
                   int64_t n_out, int64_t n_in, const lt_quant_state *w, const char *op,
                   const char *out_name, const char *in_name) {
    LT_TRY(lt_quant_check_cpu(w, op));
    LT_TRY(lt_check_out(out, LT_DTYPE_F32, op, out_name, NULL, NULL));
    LT_TRY(lt_check_cpu(in, op, in_name));
    int nd = in->ndim;
    int64_t rows = 1;
    for (int i = 0; i < nd - 1; i++)
        rows *= in->sizes[i];
    int64_t s[2] = {rows, n_out};
    if (lt_tensor_reshape(out2, out, 2, s) != LT_OK || (n_out > 1 && out2->strides[1] != 1) ||
        (rows > 1 && out2->strides[0] < n_out)) {
        lt_clear_error();
        return lt_fail(LT_ERR_ARG,
                       "%s: %s must have unit stride in its last dim and nested rows "
                       "(make it contiguous)",
                       op, out_name);
    }
    return rows_f32(in2, in, rows, n_in);
}

/* y2 (N, n) = beta * y2 (no reads when beta is 0). */
static void scale_rows(lt_tensor *y2, float beta) {
    int64_t N = y2->sizes[0], n = y2->sizes[1], ld = y2->strides[0];
    float *y = lt_tensor_data(y2);
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < n; j++)
            y[i * ld + j] = beta == 0.0f ? 0.0f : beta * y[i * ld + j];
}

/* Threads for a split of `extent` weight rows or columns (whole 16-wide slices each) in a
   product of `macs` multiply-adds. */
static int split_threads(int64_t extent, double macs) {
    int nt = 1;
#ifdef _OPENMP
    if (!omp_in_parallel() && macs >= LT_QGEMM_PAR_MIN) nt = omp_get_max_threads();
#endif
    if (nt > extent / 16) nt = extent / 16 > 0 ? (int)(extent / 16) : 1;
    return nt;
}

/* Thread t's slice [lo, hi) of extent, on multiples of 16. */
static void slice(int64_t extent, int t, int nt, int64_t *lo, int64_t *hi) {
    *lo = (extent * t / nt) / 16 * 16;
    *hi = t == nt - 1 ? extent : (extent * (t + 1) / nt) / 16 * 16;
}

static int check_blas_dims(int64_t a, int64_t b, int64_t c, int64_t d, int64_t e, const char *op) {
    if (a > INT32_MAX || b > INT32_MAX || c > INT32_MAX || d > INT32_MAX || e > INT32_MAX)
        return lt_fail(LT_ERR_RANGE, "%s: a dimension exceeds the 32-bit BLAS interface", op);
    return LT_OK;
}

/* Under the CPU's bf16 matmul precision: the 4-bit weight is dequantized R rows at a time
   by all threads into an f32 row and rounded into a bf16 panel (R, in), and one oneDNN
   GEMM per panel multiplies it with the activations, rounded to bf16 once per call.
   `mode` 0: y2 (N, out) = x2 (N, in) @ W^T + beta * y2; 1: x2 is dy (N, out) and y2 is
   dx (N, in) = dy @ W + beta * dx. */
static int dequant_bf16(lt_tensor *y2, const lt_tensor *x2, const lt_quant_state *w, float beta, int mode) {
    int64_t N = x2->sizes[0], out = w->sizes[0], in = w->sizes[1];
    int64_t ldx = x2->strides[0], ldy = y2->strides[0], xw = x2->sizes[1];
    int64_t R = LT_QPANEL_FLOATS / in;
    if (R < 1) R = 1;
    if (R >= 16) R = R / 16 * 16;
    if (R > out) R = out;
    uint16_t *xb = lt_scratch_alloc(N * xw * 2);
    uint16_t *pb = xb ? lt_scratch_alloc(R * in * 2) : NULL;
    int nt = 1;
#ifdef _OPENMP
    nt = omp_get_max_threads();
#endif
    float *rows = pb ? lt_scratch_alloc((int64_t)nt * in * 4) : NULL; /* one f32 row per thread */
    if (!rows) {
        lt_scratch_free(xb);
        lt_scratch_free(pb);
        return lt_fail_prefix(LT_ERR_NOMEM, "quant_linear (bf16): ");
    }
    const float *x = lt_tensor_data(x2);
    float *y = lt_tensor_data(y2);
#pragma omp parallel for schedule(static) if (N * xw >= LT_PAR_MIN_WORK)
    for (int64_t i = 0; i < N; i++) lt_f32_row_to_bf16(xb + i * xw, x + i * ldx, xw);
    lt_quant_decoder d;
    lt_quant_decoder_init(&d, w);
    int st = LT_OK;
    for (int64_t r0 = 0; r0 < out && st == LT_OK; r0 += R) {
        int64_t rr = out - r0 < R ? out - r0 : R;
#pragma omp parallel for schedule(static) if (rr * in >= LT_PAR_MIN_WORK)
        for (int64_t r = 0; r < rr; r++) {
            int t = 0;
#ifdef _OPENMP
            t = omp_get_thread_num();
#endif
            float *row = rows + (int64_t)t * in;
            lt_quant_dequant_span(row, &d, (r0 + r) * in, in);
            lt_f32_row_to_bf16(pb + r * in, row, in);
        }
        if (mode == 0) /* y[:, r0:r0+rr] (N, rr) = xb (N, in) @ panel^T */
            st = lt_dnnl_gemm_bf16(y + r0, ldy, xb, in, 0, pb, in, 1, N, rr, in, 1.0f, beta);
        else /* dx (N, in) += dy[:, r0:r0+rr] (N, rr) @ panel (rr, in) */
            st = lt_dnnl_gemm_bf16(y, ldy, xb + r0, xw, 0, pb, in, 0, N, in, rr, 1.0f, r0 == 0 ? beta : 1.0f);
    }
    lt_scratch_free(rows);
    lt_scratch_free(pb);
    lt_scratch_free(xb);
    return st;
}

static int use_bf16(int64_t N, int64_t out, int64_t in) {
    return lt_get_cpu_matmul_precision() == LT_MATMUL_BF16 && N > 0 && out > 0 && in > 0 &&
           (double)N * (double)out * (double)in >= LT_BF16_GEMM_MIN;
}

/* y2 (N, out) = x2 (N, in) @ W^T + beta * y2. Thread t owns weight rows [lo, hi) (y's
   columns) and walks them R rows at a time through its panel (R, in). */
static int forward_dequant(lt_tensor *y2, const lt_tensor *x2, const lt_quant_state *w,
                           float beta) {
    int64_t N = x2->sizes[0], out = w->sizes[0], in = w->sizes[1];
    int64_t ldx = x2->strides[0], ldy = y2->strides[0];
    if (out == 0 || N == 0) return LT_OK;
    if (in == 0) {
        scale_rows(y2, beta);
        return LT_OK;
    }
    LT_TRY(check_blas_dims(N, out, in, ldx, ldy, "quant_linear_forward"));
    int nt = split_threads(out, (double)N * out * in);
    int64_t R = LT_QPANEL_FLOATS / nt / in;
    if (R < 1) R = 1;
    if (R >= 16) R = R / 16 * 16;
    float *scratch = lt_scratch_alloc((int64_t)nt * R * in * (int64_t)sizeof(float));
    if (!scratch) return LT_ERR_NOMEM;
    lt_quant_decoder d;
    lt_quant_decoder_init(&d, w);
    const float *x = lt_tensor_data(x2);
    float *y = lt_tensor_data(y2);
    lt_blas_set_threads(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        int64_t lo, hi;
        slice(out, t, nt, &lo, &hi);
        float *panel = scratch + (int64_t)t * R * in; /* (R, in) */
        for (int64_t r0 = lo; r0 < hi; r0 += R) {
            int64_t rr = hi - r0 < R ? hi - r0 : R;
            for (int64_t r = 0; r < rr; r++)
                lt_quant_dequant_span(panel + r * in, &d, (r0 + r) * in, in);
            /* y[:, r0:r0+rr] (N, rr) = x (N, in) @ panel^T + beta * y[:, r0:r0+rr] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)rr, (int)in, 1.0f,
                        x, (int)ldx, panel, (int)in, beta, y + r0, (int)ldy);
        }
    }
    lt_scratch_free(scratch);
    return LT_OK;
}

/* dx2 (N, in) = dy2 (N, out) @ W + beta * dx2. Thread t owns weight columns [lo, hi) (dx's
   columns) and sums over the weight rows R at a time through its panel (R, hi - lo). */
static int backward_dequant(lt_tensor *dx2, const lt_tensor *dy2, const lt_quant_state *w,
                            float beta) {
    int64_t N = dy2->sizes[0], out = w->sizes[0], in = w->sizes[1];
    int64_t lddy = dy2->strides[0], lddx = dx2->strides[0];
    if (in == 0 || N == 0) return LT_OK;
    if (out == 0) {
        scale_rows(dx2, beta);
        return LT_OK;
    }
    LT_TRY(check_blas_dims(N, out, in, lddy, lddx, "quant_linear_backward"));
    int nt = split_threads(in, (double)N * out * in);
    int64_t width = (in + nt - 1) / nt + 16; /* the widest slice */
    int64_t R = LT_QPANEL_FLOATS / nt / width;
    if (R < 1) R = 1;
    if (R >= 16) R = R / 16 * 16;
    float *scratch = lt_scratch_alloc((int64_t)nt * R * width * (int64_t)sizeof(float));
    if (!scratch) return LT_ERR_NOMEM;
    lt_quant_decoder d;
    lt_quant_decoder_init(&d, w);
    const float *dy = lt_tensor_data(dy2);
    float *dx = lt_tensor_data(dx2);
    lt_blas_set_threads(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        int64_t lo, hi;
        slice(in, t, nt, &lo, &hi);
        int64_t cw = hi - lo;
        float *panel = scratch + (int64_t)t * R * width; /* (R, cw) */
        for (int64_t r0 = 0; r0 < out && cw > 0; r0 += R) {
            int64_t rr = out - r0 < R ? out - r0 : R;
            for (int64_t r = 0; r < rr; r++)
                lt_quant_dequant_span(panel + r * cw, &d, (r0 + r) * in + lo, cw);
            /* dx[:, lo:hi] (N, cw) += dy[:, r0:r0+rr] (N, rr) @ panel (rr, cw) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)cw, (int)rr,
                        1.0f, dy + r0, (int)lddy, panel, (int)cw, r0 == 0 ? beta : 1.0f, dx + lo,
                        (int)lddx);
        }
    }
    lt_scratch_free(scratch);
    return LT_OK;
}

/* The LLM.int8 mixed decomposition; y2 (N, out), x2 (N, in) f32. */
static int forward_int8(lt_tensor *y2, const lt_tensor *x2, const lt_quant_state *w, float beta,
                        float threshold) {
    int64_t N = x2->sizes[0], in = w->sizes[1], out = w->sizes[0], ldx = x2->strides[0];
    if (out == 0 || N == 0) return LT_OK;
    if (in == 0) {
        scale_rows(y2, beta);
        return LT_OK;
    }
    const float *x = lt_tensor_data(x2);
    const int8_t *cb = lt_tensor_data(&w->packed);
    const float *sw = lt_tensor_data(&w->absmax);
    int st = LT_OK;
    float *xq_rows = NULL, *xo_rows = NULL, *scratch = NULL;
    uint8_t *is_out = lt_scratch_alloc(in);   /* (in) outlier column flags */
    int64_t *cols = lt_scratch_alloc(in * 8); /* (n_out) outlier column indices */
    float *sx = lt_scratch_alloc(N * 4);      /* (N) row scales of x */
    if (!is_out || !cols || !sx) {
        st = LT_ERR_NOMEM;
        goto done;
    }
    memset(is_out, 0, (size_t)in);
    if (threshold > 0.0f) {
        enum { TILE = 256 };
#pragma omp parallel for schedule(static) if (N * in >= LT_PAR_MIN_WORK)
        for (int64_t j0 = 0; j0 < in; j0 += TILE) {
            int64_t j1 = j0 + TILE < in ? j0 + TILE : in;
            for (int64_t i = 0; i < N; i++)
                for (int64_t j = j0; j < j1; j++)
                    is_out[j] |= fabsf(x[i * ldx + j]) >= threshold;
        }
    }
    int64_t n_out = 0;
    for (int64_t j = 0; j < in; j++)
        if (is_out[j]) cols[n_out++] = j;

    /* x -> xq (N, in): int8 values in f32, 0 in outlier columns; xo (N, n_out) the outlier
       columns as they are. The row scale skips values at or above the threshold. */
    xq_rows = lt_scratch_alloc(N * in * (int64_t)sizeof(float));
    xo_rows = lt_scratch_alloc(N * n_out * (int64_t)sizeof(float));
    if (!xq_rows || !xo_rows) {
        st = LT_ERR_NOMEM;
        goto done;
    }
#pragma omp parallel for schedule(static) if (N * in >= LT_PAR_MIN_WORK)
    for (int64_t i = 0; i < N; i++) {
        const float *xr = x + i * ldx;
        float m = 0.0f;
        for (int64_t j = 0; j < in; j++) {
            float a = fabsf(xr[j]);
            if (!(threshold > 0.0f) || a < threshold) m = fmaxf(m, a);
        }
        sx[i] = m;
        float scale = m > 0.0f ? 127.0f / m : 0.0f;
        int exact = isfinite(scale);
        float *q = xq_rows + i * in;
        for (int64_t j = 0; j < in; j++) {
            float v = m > 0.0f ? (exact ? rintf(xr[j] * scale) : rintf(xr[j] / m * 127.0f)) : 0.0f;
            q[j] = is_out[j] ? 0.0f : v;
        }
        for (int64_t k = 0; k < n_out; k++)
            xo_rows[i * n_out + k] = xr[cols[k]];
    }

    /* Thread t owns weight rows [lo, hi) (y's columns), R at a time, and x's rows mc at a
       time. Its scratch: cbp (R, in) the int8 codes as f32, wop (R, n_out) the outlier
       columns dequantized, acc (mc, R) the int8 products; all threads' together within
       LT_QPANEL_FLOATS. */
    const float inv = 1.0f / 16129.0f; /* 1 / 127^2 */
    float *y = lt_tensor_data(y2);
    int64_t ldy = y2->strides[0];
    st = check_blas_dims(N, out, in, ldy, n_out, "quant_linear_forward");
    if (st != LT_OK) goto done;
    int nt = split_threads(out, (double)N * out * in);
    int64_t per = LT_QPANEL_FLOATS / nt, R = per / 2 / (in + n_out);
    if (R < 1) R = 1;
    if (R >= 16) R = R / 16 * 16;
    if (R > out) R = out;
    int64_t mc = per / 2 / R;
    if (mc < 16) mc = 16;
    if (mc > N) mc = N;
    int64_t each = R * (in + n_out) + mc * R;
    scratch = lt_scratch_alloc((int64_t)nt * each * (int64_t)sizeof(float));
    if (!scratch) {
        st = LT_ERR_NOMEM;
        goto done;
    }
    lt_blas_set_threads(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        int64_t lo, hi;
        slice(out, t, nt, &lo, &hi);
        float *cbp = scratch + (int64_t)t * each, *wop = cbp + R * in, *acc = wop + R * n_out;
        for (int64_t r0 = lo; r0 < hi; r0 += R) {
            int64_t rr = hi - r0 < R ? hi - r0 : R;
            for (int64_t r = 0; r < rr; r++) {
                const int8_t *c = cb + (r0 + r) * in;
                for (int64_t j = 0; j < in; j++)
                    cbp[r * in + j] = (float)c[j];
                float s = sw[r0 + r] * (1.0f / 127.0f);
                for (int64_t k = 0; k < n_out; k++)
                    wop[r * n_out + k] = (float)c[cols[k]] * s;
            }
            for (int64_t m0 = 0; m0 < N; m0 += mc) {
                int64_t mm = N - m0 < mc ? N - m0 : mc;
                /* acc (mm, rr) = xq[m0:m0+mm] (mm, in) @ cbp^T: sums of int8 products */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)mm, (int)rr, (int)in,
                            1.0f, xq_rows + m0 * in, (int)in, cbp, (int)in, 0.0f, acc, (int)rr);
                for (int64_t i = 0; i < mm; i++) {
                    float *yr = y + (m0 + i) * ldy + r0;
                    float si = sx[m0 + i];
                    for (int64_t j = 0; j < rr; j++) {
                        float v = acc[i * rr + j] * (si * sw[r0 + j]) * inv;
                        yr[j] = beta == 0.0f ? v : v + beta * yr[j];
                    }
                }
                /* y[m0:, r0:r0+rr] += xo[m0:m0+mm] (mm, n_out) @ wop^T */
                if (n_out > 0)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)mm, (int)rr,
                                (int)n_out, 1.0f, xo_rows + m0 * n_out, (int)n_out, wop, (int)n_out,
                                1.0f, y + m0 * ldy + r0, (int)ldy);
            }
        }
    }
done:
    lt_scratch_free(scratch);
    lt_scratch_free(xq_rows);
    lt_scratch_free(xo_rows);
    lt_scratch_free(is_out);
    lt_scratch_free(cols);
    lt_scratch_free(sx);
    return st;
}

int lt_quant_linear_forward(lt_tensor *y, const lt_tensor *x, const lt_quant_state *w, float beta,
                            float outlier_threshold) {
    const char *op = "quant_linear_forward";
    LT_TRY(lt_quant_check_state(w, op));
    if (w->ndim != 2)
        return lt_fail(LT_ERR_SHAPE, "%s: the quantized weight must be 2-D (out, in)", op);
    if (isnan(outlier_threshold)) return lt_fail(LT_ERR_ARG, "%s: outlier_threshold is NaN", op);
    LT_TRY(check_args(y, x, w->sizes[0], w->sizes[1], w, op, "y", "x"));
    LT_DISPATCH_CUDA(y, lt_cuda_quant_linear_forward(y, x, w, beta, outlier_threshold));
    if (lt_lowp_cpu(y)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_out(&lp, &y);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK) st = lt_quant_linear_forward(y, x, w, beta, outlier_threshold);
        return lt_lowp_end(&lp, st);
    }
    lt_tensor y2 = {0}, x2 = {0};
    int st = prepare(&y2, &x2, y, x, w->sizes[0], w->sizes[1], w, op, "y", "x");
    if (st == LT_OK) {
        if (w->type == LT_QUANT_INT8)
            st = forward_int8(&y2, &x2, w, beta, outlier_threshold);
        else if (use_bf16(x2.sizes[0], w->sizes[0], w->sizes[1]))
            st = dequant_bf16(&y2, &x2, w, beta, 0);
        else
            st = forward_dequant(&y2, &x2, w, beta);
    }
    lt_tensor_release(&y2);
    lt_tensor_release(&x2);
    return st;
}

int lt_quant_linear_backward(lt_tensor *dx, const lt_tensor *dy, const lt_quant_state *w,
                             float beta) {
    const char *op = "quant_linear_backward";
    LT_TRY(lt_quant_check_state(w, op));
    if (w->ndim != 2)
        return lt_fail(LT_ERR_SHAPE, "%s: the quantized weight must be 2-D (out, in)", op);
    LT_TRY(check_args(dx, dy, w->sizes[1], w->sizes[0], w, op, "dx", "dy"));
    LT_DISPATCH_CUDA(dx, lt_cuda_quant_linear_backward(dx, dy, w, beta));
    if (lt_lowp_cpu(dx)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_out(&lp, &dx);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK) st = lt_quant_linear_backward(dx, dy, w, beta);
        return lt_lowp_end(&lp, st);
    }
    lt_tensor dx2 = {0}, dy2 = {0};
    int st = prepare(&dx2, &dy2, dx, dy, w->sizes[1], w->sizes[0], w, op, "dx", "dy");
    if (st == LT_OK)
        st = use_bf16(dy2.sizes[0], w->sizes[0], w->sizes[1]) ? dequant_bf16(&dx2, &dy2, w, beta, 1)
                                                              : backward_dequant(&dx2, &dy2, w, beta);
    lt_tensor_release(&dx2);
    lt_tensor_release(&dy2);
    return st;
}
