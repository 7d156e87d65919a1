/* test_cuda_quant.c - quantization on CUDA (cuda/quant.cu, cuda/quant_linear.cu) against the
 * CPU (src/ops/quant.c, src/ops/quant_linear.c) on the same inputs.
 *
 *   - lt_quantize on a device weight gives the CPU's state bit for bit: NF4 and FP4, with
 *     and without double quantization, block sizes 32, 64, 128 and 4096, f32/bf16/f16
 *     weights, odd element counts (a padded last nibble), a partial last block, odd
 *     numbers of blocks and of nested blocks, and adversarial blocks: all zero, one
 *     outlier, every threshold exactly and one ulp either side, signed zeros, denormals
 *     (where 1/absmax overflows and the quantizer divides); int8 likewise (zero rows,
 *     outliers, 1-D). inf/NaN are refused naming the element, as on the CPU.
 *   - lt_dequantize / lt_dequantize_rows / lt_quant_absmax equal the CPU's exactly (f32,
 *     and the same rounding to bf16 and f16).
 *   - lt_quant_state_to moves states both ways without changing a byte.
 *   - quant_linear forward / backward against the CPU op: f32 within 1e-5 relative (TF32
 *     off), bf16 / f16 activations per cuda_close_lowp; 1, 3, 8 rows (the fused GEMV) and
 *     37, 300 rows (banded GEMM, several bands for the large weight); in % 32 == 0 (the
 *     16-byte GEMV path) and odd shapes (the per-element path); beta; int8 with and without
 *     outliers (threshold 6) and with the decomposition off; views (leading dims, a row
 *     stride, a transposed input). Outputs are poisoned with NaN first.
 *   - the banded path's scratch stays within one band, not the whole weight.
 * lt_cuda_gemm_allow_tf32 and lt_cuda_cache_stats are looked up at run time (they exist
 * only in CUDA builds; this test skips before the lookup otherwise). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cache_alloc.h"
#include "check.h"
#include "cuda_check.h"
#include "lt.h"
#include "lt_quant.h"

typedef void (*tf32_fn)(int);
typedef int (*cache_stats_fn)(int32_t, lt_cache_stats *);
typedef int (*cache_reset_fn)(int32_t);

static tf32_fn set_tf32;
static cache_stats_fn cache_stats;
static cache_reset_fn cache_reset_peak;

/* ---- tensors -------------------------------------------------------------------------------- */

static lt_tensor host_empty(int dtype, int nd, const int64_t *sizes) {
    lt_tensor t = {0};
    if (lt_tensor_empty(&t, dtype, nd, sizes, LT_DEVICE_CPU, 0) != LT_OK) {
        fprintf(stderr, "host_empty: %s\n", lt_last_error());
        exit(1);
    }
    return t;
}

static lt_tensor dev_empty(int dtype, int nd, const int64_t *sizes) {
    lt_tensor t = {0};
    if (lt_tensor_empty(&t, dtype, nd, sizes, LT_DEVICE_CUDA, 0) != LT_OK) {
        fprintf(stderr, "dev_empty: %s\n", lt_last_error());
        exit(1);
    }
    return t;
}

/* A copy of src (any device) in `dtype`, on the device or the host. */
static lt_tensor copy_as(const lt_tensor *src, int dtype, int to_cuda) {
    lt_tensor t = to_cuda ? dev_empty(dtype, src->ndim, src->sizes)
                          : host_empty(dtype, src->ndim, src->sizes);
    if (lt_tensor_copy(&t, src) != LT_OK) {
        fprintf(stderr, "copy_as: %s\n", lt_last_error());
        exit(1);
    }
    return t;
}

static float *fp(const lt_tensor *t) { return (float *)lt_tensor_data(t); }

/* The same dtype, shape and bytes (either may be on the device). */
static int same_bytes(const lt_tensor *a, const lt_tensor *b, const char *what, const char *piece) {
    if (!a->storage || !b->storage) {
        if (a->storage || b->storage) fprintf(stderr, "%s: %s present on one side only\n", what, piece);
        return !a->storage && !b->storage;
    }
    int64_t n = lt_tensor_numel(a);
    if (a->dtype_id != b->dtype_id || n != lt_tensor_numel(b) || a->ndim != b->ndim) {
        fprintf(stderr, "%s: %s differs in dtype or shape\n", what, piece);
        return 0;
    }
    lt_tensor ha = copy_as(a, a->dtype_id, 0), hb = copy_as(b, b->dtype_id, 0);
    int64_t nbytes = 0;
    lt_dtype_nbytes(a->dtype_id, n, &nbytes);
    const unsigned char *pa = lt_tensor_data(&ha), *pb = lt_tensor_data(&hb);
    int ok = 1;
    for (int64_t i = 0; i < nbytes; i++)
        if (pa[i] != pb[i]) {
            fprintf(stderr, "%s: %s differs first at byte %lld (%02x vs %02x)\n", what, piece,
                    (long long)i, pa[i], pb[i]);
            ok = 0;
            break;
        }
    lt_tensor_release(&ha);
    lt_tensor_release(&hb);
    return ok;
}

static void check_states_equal(const lt_quant_state *a, const lt_quant_state *b, const char *what) {
    int ok = a->type == b->type && a->blocksize == b->blocksize &&
             a->double_quant == b->double_quant && a->nested_blocksize == b->nested_blocksize &&
             a->orig_dtype == b->orig_dtype && a->ndim == b->ndim &&
             a->sizes[0] == b->sizes[0] && a->sizes[1] == b->sizes[1] &&
             memcmp(&a->offset, &b->offset, sizeof a->offset) == 0;
    if (!ok) fprintf(stderr, "%s: the states' scalars differ (offset %.9g vs %.9g)\n", what,
                     a->offset, b->offset);
    ok = same_bytes(&a->packed, &b->packed, what, "packed") && ok;
    ok = same_bytes(&a->absmax, &b->absmax, what, "absmax") && ok;
    ok = same_bytes(&a->absmax2, &b->absmax2, what, "absmax2") && ok;
    ok = same_bytes(&a->code, &b->code, what, "code") && ok;
    ok = same_bytes(&a->nested_code, &b->nested_code, what, "nested_code") && ok;
    CHECK(ok);
}

static int64_t nblocks_of(const lt_quant_state *q) {
    int64_t rows = q->ndim == 2 ? q->sizes[0] : 1, cols = q->sizes[q->ndim - 1];
    if (q->type == LT_QUANT_INT8) return rows;
    return (rows * cols + q->blocksize - 1) / q->blocksize;
}

/* Dequantization, row panels and scales of a CPU and a device state agree exactly. */
static void check_dequant_equal(const lt_quant_state *qc, const lt_quant_state *qd,
                                const char *what) {
    static const int dts[3] = {LT_DTYPE_F32, LT_DTYPE_BF16, LT_DTYPE_F16};
    char w2[160];
    for (int k = 0; k < 3; k++) {
        lt_tensor oc = host_empty(dts[k], qc->ndim, qc->sizes);
        lt_tensor od = dev_empty(dts[k], qc->ndim, qc->sizes);
        lt_tensor_fill(&od, NAN);
        CHECK_OK(lt_dequantize(&oc, qc));
        CHECK_OK(lt_dequantize(&od, qd));
        snprintf(w2, sizeof w2, "%s: dequantize %s", what, lt_dtype_info(dts[k])->name);
        CHECK(same_bytes(&oc, &od, w2, "out"));
        lt_tensor_release(&oc);
        lt_tensor_release(&od);
    }
    if (qc->ndim == 2 && qc->sizes[0] >= 3) {
        int64_t s[2] = {qc->sizes[0] - 2, qc->sizes[1]};
        lt_tensor oc = host_empty(LT_DTYPE_F32, 2, s), od = dev_empty(LT_DTYPE_F32, 2, s);
        lt_tensor_fill(&od, NAN);
        CHECK_OK(lt_dequantize_rows(&oc, qc, 1));
        CHECK_OK(lt_dequantize_rows(&od, qd, 1));
        snprintf(w2, sizeof w2, "%s: dequantize_rows", what);
        CHECK(same_bytes(&oc, &od, w2, "out"));
        lt_tensor_release(&oc);
        lt_tensor_release(&od);
    }
    int64_t nb = nblocks_of(qc);
    lt_tensor ac = host_empty(LT_DTYPE_F32, 1, &nb), ad = dev_empty(LT_DTYPE_F32, 1, &nb);
    CHECK_OK(lt_quant_absmax(&ac, qc));
    CHECK_OK(lt_quant_absmax(&ad, qd));
    snprintf(w2, sizeof w2, "%s: absmax", what);
    CHECK(same_bytes(&ac, &ad, w2, "absmax"));
    lt_tensor_release(&ac);
    lt_tensor_release(&ad);
}

/* Quantize w (host f32) as `wdtype` on the CPU and on the device; compare everything. */
static void quant_case(const lt_tensor *w32, int wdtype, int type, int bs, int dq,
                       const char *what) {
    lt_tensor wc = copy_as(w32, wdtype, 0), wd = cuda_copy_to(&wc, 1);
    lt_quant_state qc = {0}, qd = {0};
    CHECK_OK(lt_quantize(&qc, &wc, type, bs, dq));
    CHECK_OK(lt_quantize(&qd, &wd, type, bs, dq));
    if (qd.packed.storage) {
        CHECK(lt_tensor_device_type(&qd.packed) == LT_DEVICE_CUDA);
        CHECK(lt_tensor_device_type(&qd.absmax) == LT_DEVICE_CUDA);
        check_states_equal(&qc, &qd, what);
        check_dequant_equal(&qc, &qd, what);
    }
    lt_quant_state_release(&qc);
    lt_quant_state_release(&qd);
    lt_tensor_release(&wc);
    lt_tensor_release(&wd);
}

static lt_tensor randn_host(int nd, const int64_t *sizes, double std) {
    return cuda_randn(LT_DTYPE_F32, nd, sizes, std);
}

/* ---- quantization ----------------------------------------------------------------------------- */

/* A (rows, 64 * blocks_wide)-ish weight whose first 64-element blocks are adversarial. */
static lt_tensor adversarial(int64_t rows, int64_t cols) {
    int64_t s[2] = {rows, cols};
    lt_tensor w = randn_host(2, s, 0.02);
    float *v = fp(&w);
    int64_t n = rows * cols, b = 0;
    /* block 0: all zero (negative zeros too) */
    for (int64_t j = 0; j < 64 && b * 64 + j < n; j++) v[b * 64 + j] = (j & 1) ? -0.0f : 0.0f;
    b++;
    /* block 1: zeros and one outlier */
    for (int64_t j = 0; j < 64 && b * 64 + j < n; j++) v[b * 64 + j] = j == 17 ? -300.0f : 1e-3f;
    b++;
    /* blocks 2, 3: absmax 1, every NF4 / FP4 threshold exactly and one ulp either side */
    static const float nf4b[15] = {
        -0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f,
        -0.33967943489551544f, -0.23460740596055984f, -0.13791173323988914f,
        -0.045525018125772476f, 0.03979014977812767f, 0.1202552504837513f,
        0.2035212516784668f,   0.2920137718319893f,   0.3893125355243683f,
        0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f};
    static const float fp4b[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                  0.4166667f,  0.583333f,  0.8333333f};
    for (int t = 0; t < 2; t++, b++) {
        float *p = v + b * 64;
        if (b * 64 + 64 > n) break;
        int k = 0;
        p[k++] = 1.0f;
        const float *bd = t == 0 ? nf4b : fp4b;
        int nbd = t == 0 ? 15 : 7;
        for (int i = 0; i < nbd && k + 3 <= 64; i++) {
            p[k++] = bd[i];
            p[k++] = nextafterf(bd[i], 2.0f);
            p[k++] = nextafterf(bd[i], -2.0f);
            if (t == 1 && k + 3 <= 64) {
                p[k++] = -bd[i];
                p[k++] = -nextafterf(bd[i], 2.0f);
                p[k++] = -nextafterf(bd[i], -2.0f);
            }
        }
        for (; k < 64; k++) p[k] = (k & 1) ? -0.0f : 0.5f;
    }
    /* block 4: denormals, so that 1/absmax overflows */
    if (b * 64 + 64 <= n)
        for (int j = 0; j < 64; j++) v[b * 64 + j] = (j % 3 - 1) * 1e-39f * (float)(j + 1) / 64.0f;
    b++;
    /* block 5: signed zeros and one value */
    if (b * 64 + 64 <= n)
        for (int j = 0; j < 64; j++) v[b * 64 + j] = j == 40 ? 0.25f : ((j & 1) ? -0.0f : 0.0f);
    return w;
}

static void test_quantize(void) {
    static const int types[2] = {LT_QUANT_NF4, LT_QUANT_FP4};
    static const int dts[3] = {LT_DTYPE_F32, LT_DTYPE_BF16, LT_DTYPE_F16};
    /* shapes: odd numel with a partial last block; exactly 15 blocks of 64; 129 blocks of
       4096 (odd, and a partial nested block); 1-D odd; enough blocks for several nested
       blocks with a partial last one */
    static const int64_t shapes[5][2] = {{37, 113}, {15, 64}, {129, 4096}, {1, 4095}, {300, 700}};
    static const int bss[4] = {32, 64, 128, 4096};
    char what[128];
    for (int si = 0; si < 5; si++) {
        int nd = shapes[si][0] == 1 ? 1 : 2;
        int64_t s1[1] = {shapes[si][1]};
        lt_tensor w = nd == 1 ? randn_host(1, s1, 0.02) : randn_host(2, shapes[si], 0.02);
        for (int ti = 0; ti < 2; ti++)
            for (int bi = 0; bi < 4; bi++)
                for (int dq = 0; dq < 2; dq++)
                    for (int di = 0; di < 3; di++) {
                        /* keep the big shape to a few combinations */
                        if (si == 2 && (bss[bi] == 32 || bss[bi] == 128 || di == 2)) continue;
                        snprintf(what, sizeof what, "%s bs %d dq %d %s (%lld x %lld)",
                                 types[ti] == LT_QUANT_NF4 ? "nf4" : "fp4", bss[bi], dq,
                                 lt_dtype_info(dts[di])->name, (long long)shapes[si][0],
                                 (long long)shapes[si][1]);
                        quant_case(&w, dts[di], types[ti], bss[bi], dq, what);
                    }
        snprintf(what, sizeof what, "int8 (%lld x %lld)", (long long)shapes[si][0],
                 (long long)shapes[si][1]);
        for (int di = 0; di < 3; di++) quant_case(&w, dts[di], LT_QUANT_INT8, 0, 0, what);
        lt_tensor_release(&w);
    }
    /* adversarial blocks, block sizes 64 and 4096, both types, with double quantization */
    lt_tensor a = adversarial(9, 448); /* 63 blocks of 64 */
    for (int ti = 0; ti < 2; ti++)
        for (int dq = 0; dq < 2; dq++) {
            snprintf(what, sizeof what, "adversarial %s dq %d",
                     types[ti] == LT_QUANT_NF4 ? "nf4" : "fp4", dq);
            quant_case(&a, LT_DTYPE_F32, types[ti], 64, dq, what);
            quant_case(&a, LT_DTYPE_F32, types[ti], 4096, dq, what);
        }
    /* int8: a zero row, a row with one outlier, a row of denormals */
    float *v = fp(&a);
    for (int j = 0; j < 448; j++) {
        v[j] = 0.0f;
        v[448 + j] = j == 5 ? 1e4f : 0.01f;
        v[2 * 448 + j] = 1e-39f * (float)(j % 7 - 3);
    }
    quant_case(&a, LT_DTYPE_F32, LT_QUANT_INT8, 0, 0, "adversarial int8");
    lt_tensor_release(&a);

    /* non-finite weights: the CPU's error, naming the element */
    int64_t s[2] = {5, 90};
    lt_tensor w = randn_host(2, s, 0.02);
    fp(&w)[2 * 90 + 3] = NAN;
    fp(&w)[4 * 90 + 1] = INFINITY;
    lt_tensor wd = copy_as(&w, LT_DTYPE_F32, 1);
    lt_quant_state q = {0};
    CHECK_FAILS(lt_quantize(&q, &wd, LT_QUANT_NF4, 64, 1), LT_ERR_ARG, "element (2, 3)");
    CHECK_FAILS(lt_quantize(&q, &wd, LT_QUANT_INT8, 0, 0), LT_ERR_ARG, "is NaN");
    CHECK(q.packed.storage == NULL);
    lt_tensor_release(&w);
    lt_tensor_release(&wd);
}

/* ---- moving states ----------------------------------------------------------------------------- */

static void test_state_to(void) {
    int64_t s[2] = {70, 90};
    lt_tensor w = randn_host(2, s, 0.05);
    static const int types[3] = {LT_QUANT_NF4, LT_QUANT_FP4, LT_QUANT_INT8};
    for (int ti = 0; ti < 3; ti++)
        for (int dq = 0; dq < (types[ti] == LT_QUANT_INT8 ? 1 : 2); dq++) {
            lt_quant_state qc = {0}, qd = {0}, back = {0};
            int bs = types[ti] == LT_QUANT_INT8 ? 0 : 64;
            CHECK_OK(lt_quantize(&qc, &w, types[ti], bs, dq));
            CHECK_OK(lt_quant_state_to(&qd, &qc, LT_DEVICE_CUDA, 0));
            CHECK(lt_tensor_device_type(&qd.packed) == LT_DEVICE_CUDA);
            CHECK_OK(lt_quant_state_to(&back, &qd, LT_DEVICE_CPU, 0));
            CHECK(lt_tensor_device_type(&back.packed) == LT_DEVICE_CPU);
            check_states_equal(&qc, &back, "state_to round trip");
            check_states_equal(&qc, &qd, "state_to cuda");
            check_dequant_equal(&qc, &qd, "state_to cuda");
            /* in place, to the device and back */
            CHECK_OK(lt_quant_state_to(&back, &back, LT_DEVICE_CUDA, 0));
            CHECK_OK(lt_quant_state_to(&back, &back, LT_DEVICE_CPU, 0));
            check_states_equal(&qc, &back, "state_to in place");
            lt_quant_state_release(&qc);
            lt_quant_state_release(&qd);
            lt_quant_state_release(&back);
        }
    /* a state quantized on the device, brought to the host, equals the CPU's */
    lt_tensor wd = copy_as(&w, LT_DTYPE_F32, 1);
    lt_quant_state qc = {0}, qd = {0}, qh = {0};
    CHECK_OK(lt_quantize(&qc, &w, LT_QUANT_NF4, 64, 1));
    CHECK_OK(lt_quantize(&qd, &wd, LT_QUANT_NF4, 64, 1));
    CHECK_OK(lt_quant_state_to(&qh, &qd, LT_DEVICE_CPU, 0));
    check_states_equal(&qc, &qh, "device quantized, to the host");
    /* mixed devices are refused */
    lt_tensor out = host_empty(LT_DTYPE_F32, 2, s);
    CHECK_FAILS(lt_dequantize(&out, &qd), LT_ERR_DEVICE, "cuda:0");
    lt_quant_state_release(&qc);
    lt_quant_state_release(&qd);
    lt_quant_state_release(&qh);
    lt_tensor_release(&out);
    lt_tensor_release(&wd);
    lt_tensor_release(&w);
}

/* ---- the linear layer ---------------------------------------------------------------------------- */

typedef struct {
    int type, bs, dq;
    float thr;    /* int8 outlier threshold */
    int outliers; /* put values above the threshold in a few columns of x */
} lcfg;

static const char *cfg_name(const lcfg *c, char *buf, size_t n) {
    if (c->type == LT_QUANT_INT8)
        snprintf(buf, n, "int8 thr %g%s", (double)c->thr, c->outliers ? " with outliers" : "");
    else
        snprintf(buf, n, "%s bs %d dq %d", c->type == LT_QUANT_NF4 ? "nf4" : "fp4", c->bs, c->dq);
    return buf;
}

/* x (N, in) with, when asked, |x| = 7.5 in columns 3, in / 2 and in - 1 of every third row. */
static lt_tensor make_x(int64_t N, int64_t in, int outliers) {
    int64_t s[2] = {N, in};
    lt_tensor x = randn_host(2, s, 1.0);
    float *v = fp(&x);
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < in; j++)
            if (fabsf(v[i * in + j]) >= 5.0f) v[i * in + j] *= 0.5f; /* no accidental outliers */
    if (outliers) {
        int64_t cols[3] = {3 % in, in / 2, in - 1};
        for (int64_t i = 0; i < N; i += 3)
            for (int k = 0; k < 3; k++) v[i * in + cols[k]] = (i % 2 ? -7.5f : 7.5f);
    }
    return x;
}

/* Forward and backward of one configuration, one weight shape and one N. */
static void linear_case(const lcfg *cfg, int64_t out, int64_t in, int64_t N) {
    char name[96], what[192];
    cfg_name(cfg, name, sizeof name);
    int64_t ws[2] = {out, in}, ys[2] = {N, out}, xs[2] = {N, in};
    lt_tensor w = randn_host(2, ws, 0.05);
    lt_quant_state qc = {0}, qd = {0};
    CHECK_OK(lt_quantize(&qc, &w, cfg->type, cfg->bs, cfg->dq));
    CHECK_OK(lt_quant_state_to(&qd, &qc, LT_DEVICE_CUDA, 0));
    lt_tensor x = make_x(N, in, cfg->outliers), dy = randn_host(2, ys, 1.0);
    lt_tensor y0 = randn_host(2, ys, 1.0), dx0 = randn_host(2, xs, 1.0);

    /* f32, beta 0 and 0.5 */
    for (int bi = 0; bi < 2; bi++) {
        float beta = bi ? 0.5f : 0.0f;
        lt_tensor yc = copy_as(&y0, LT_DTYPE_F32, 0), xd = copy_as(&x, LT_DTYPE_F32, 1);
        lt_tensor yd = copy_as(&y0, LT_DTYPE_F32, 1);
        if (beta == 0.0f) lt_tensor_fill(&yd, NAN);
        CHECK_OK(lt_quant_linear_forward(&yc, &x, &qc, beta, cfg->thr));
        CHECK_OK(lt_quant_linear_forward(&yd, &xd, &qd, beta, cfg->thr));
        snprintf(what, sizeof what, "%s (%lld, %lld) N %lld f32 forward beta %g", name,
                 (long long)out, (long long)in, (long long)N, (double)beta);
        cuda_close_f32(what, &yd, &yc);
        lt_tensor dxc = copy_as(&dx0, LT_DTYPE_F32, 0), dyd = copy_as(&dy, LT_DTYPE_F32, 1);
        lt_tensor dxd = copy_as(&dx0, LT_DTYPE_F32, 1);
        if (beta == 0.0f) lt_tensor_fill(&dxd, NAN);
        CHECK_OK(lt_quant_linear_backward(&dxc, &dy, &qc, beta));
        CHECK_OK(lt_quant_linear_backward(&dxd, &dyd, &qd, beta));
        snprintf(what, sizeof what, "%s (%lld, %lld) N %lld f32 backward beta %g", name,
                 (long long)out, (long long)in, (long long)N, (double)beta);
        cuda_close_f32(what, &dxd, &dxc);
        lt_tensor_release(&yc);
        lt_tensor_release(&xd);
        lt_tensor_release(&yd);
        lt_tensor_release(&dxc);
        lt_tensor_release(&dyd);
        lt_tensor_release(&dxd);
    }

    /* bf16 and f16 activations: outputs in the activations' dtype and in f32, against the
       CPU op on the same (rounded) inputs */
    static const int lows[2] = {LT_DTYPE_BF16, LT_DTYPE_F16};
    for (int li = 0; li < 2; li++) {
        int lt = lows[li];
        const char *ln = lt_dtype_info(lt)->name;
        lt_tensor xl = copy_as(&x, lt, 0), dyl = copy_as(&dy, lt, 0);
        lt_tensor yc = host_empty(LT_DTYPE_F32, 2, ys), dxc = host_empty(LT_DTYPE_F32, 2, xs);
        CHECK_OK(lt_quant_linear_forward(&yc, &xl, &qc, 0.0f, cfg->thr));
        CHECK_OK(lt_quant_linear_backward(&dxc, &dyl, &qc, 0.0f));
        lt_tensor xd = copy_as(&xl, lt, 1), dyd = copy_as(&dyl, lt, 1);
        for (int of = 0; of < 2; of++) {
            int odt = of ? LT_DTYPE_F32 : lt;
            lt_tensor yd = dev_empty(odt, 2, ys), dxd = dev_empty(odt, 2, xs);
            lt_tensor_fill(&yd, NAN);
            lt_tensor_fill(&dxd, NAN);
            CHECK_OK(lt_quant_linear_forward(&yd, &xd, &qd, 0.0f, cfg->thr));
            CHECK_OK(lt_quant_linear_backward(&dxd, &dyd, &qd, 0.0f));
            snprintf(what, sizeof what, "%s (%lld, %lld) N %lld %s forward, %s out", name,
                     (long long)out, (long long)in, (long long)N, ln, of ? "f32" : ln);
            cuda_close_lowp(what, &yd, &yc, lt);
            snprintf(what, sizeof what, "%s (%lld, %lld) N %lld %s backward, %s out", name,
                     (long long)out, (long long)in, (long long)N, ln, of ? "f32" : ln);
            cuda_close_lowp(what, &dxd, &dxc, lt);
            lt_tensor_release(&yd);
            lt_tensor_release(&dxd);
        }
        lt_tensor_release(&xl);
        lt_tensor_release(&dyl);
        lt_tensor_release(&yc);
        lt_tensor_release(&dxc);
        lt_tensor_release(&xd);
        lt_tensor_release(&dyd);
    }
    lt_quant_state_release(&qc);
    lt_quant_state_release(&qd);
    lt_tensor_release(&w);
    lt_tensor_release(&x);
    lt_tensor_release(&dy);
    lt_tensor_release(&y0);
    lt_tensor_release(&dx0);
}

static void test_linear(void) {
    static const lcfg cfgs[] = {
        {LT_QUANT_NF4, 64, 1, 0.0f, 0},  {LT_QUANT_FP4, 64, 0, 0.0f, 0},
        {LT_QUANT_NF4, 4096, 0, 0.0f, 0}, {LT_QUANT_INT8, 0, 0, 0.0f, 0},
        {LT_QUANT_INT8, 0, 0, 6.0f, 0},   {LT_QUANT_INT8, 0, 0, 6.0f, 1},
    };
    /* (96, 160): in % 32 == 0 (16-byte GEMV loads), 2 row splits in the backward GEMV;
       (40, 264): in % 8 == 0 only, one split; (75, 77): odd everything (an odd numel, so
       rows start mid-byte) */
    static const int64_t shapes[3][2] = {{96, 160}, {40, 264}, {75, 77}};
    static const int64_t Ns[5] = {1, 3, 8, 37, 300};
    for (size_t ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++)
        for (int si = 0; si < 3; si++)
            for (int ni = 0; ni < 5; ni++) linear_case(&cfgs[ci], shapes[si][0], shapes[si][1], Ns[ni]);
    /* several bands: f32 forward bands of 3968 rows and backward bands of 2048 columns */
    static const lcfg big[3] = {{LT_QUANT_NF4, 64, 1, 0.0f, 0},
                                {LT_QUANT_INT8, 0, 0, 6.0f, 1},
                                {LT_QUANT_FP4, 128, 1, 0.0f, 0}};
    for (int i = 0; i < 3; i++) linear_case(&big[i], 4096, 2112, 37);
    linear_case(&big[0], 4096, 2112, 5);
}

/* Leading dims, a row stride, a transposed input. */
static void test_views(void) {
    int64_t ws[2] = {48, 96};
    lt_tensor w = randn_host(2, ws, 0.05);
    lt_quant_state qc = {0}, qd = {0};
    CHECK_OK(lt_quantize(&qc, &w, LT_QUANT_NF4, 64, 1));
    CHECK_OK(lt_quant_state_to(&qd, &qc, LT_DEVICE_CUDA, 0));
    for (int big = 0; big < 2; big++) {
        int64_t B = big ? 5 : 2, T = big ? 9 : 3; /* 6 rows (GEMV) or 45 (GEMM) */
        int64_t xs3[3] = {B, T, 96}, ys3[3] = {B, T, 48};
        lt_tensor x = randn_host(3, xs3, 1.0);
        lt_tensor yc = host_empty(LT_DTYPE_F32, 3, ys3), xd = copy_as(&x, LT_DTYPE_F32, 1);
        lt_tensor yd = dev_empty(LT_DTYPE_F32, 3, ys3);
        lt_tensor_fill(&yd, NAN);
        CHECK_OK(lt_quant_linear_forward(&yc, &x, &qc, 0.0f, 0.0f));
        CHECK_OK(lt_quant_linear_forward(&yd, &xd, &qd, 0.0f, 0.0f));
        cuda_close_f32("3-D x", &yd, &yc);
        /* x with a row stride: a narrow view of a wider tensor */
        int64_t ws2[2] = {B * T, 104};
        lt_tensor wide = randn_host(2, ws2, 1.0), wided = copy_as(&wide, LT_DTYPE_F32, 1);
        lt_tensor xv = {0}, xvd = {0};
        lt_tensor_narrow(&xv, &wide, 1, 4, 96);
        lt_tensor_narrow(&xvd, &wided, 1, 4, 96);
        int64_t ys2[2] = {B * T, 48};
        lt_tensor yc2 = host_empty(LT_DTYPE_F32, 2, ys2), yd2 = dev_empty(LT_DTYPE_F32, 2, ys2);
        lt_tensor_fill(&yd2, NAN);
        CHECK_OK(lt_quant_linear_forward(&yc2, &xv, &qc, 0.0f, 0.0f));
        CHECK_OK(lt_quant_linear_forward(&yd2, &xvd, &qd, 0.0f, 0.0f));
        cuda_close_f32("row-strided x", &yd2, &yc2);
        /* a transposed x (copied on the device) */
        int64_t ts[2] = {96, B * T};
        lt_tensor xt = randn_host(2, ts, 1.0), xtd = copy_as(&xt, LT_DTYPE_F32, 1);
        lt_tensor xtv = {0}, xtvd = {0};
        lt_tensor_transpose(&xtv, &xt, 0, 1);
        lt_tensor_transpose(&xtvd, &xtd, 0, 1);
        lt_tensor_fill(&yd2, NAN);
        CHECK_OK(lt_quant_linear_forward(&yc2, &xtv, &qc, 0.0f, 0.0f));
        CHECK_OK(lt_quant_linear_forward(&yd2, &xtvd, &qd, 0.0f, 0.0f));
        cuda_close_f32("transposed x", &yd2, &yc2);
        /* and its backward into a 3-D dx */
        lt_tensor dy = randn_host(3, ys3, 1.0), dyd = copy_as(&dy, LT_DTYPE_F32, 1);
        lt_tensor dxc = host_empty(LT_DTYPE_F32, 3, xs3), dxd = dev_empty(LT_DTYPE_F32, 3, xs3);
        lt_tensor_fill(&dxd, NAN);
        CHECK_OK(lt_quant_linear_backward(&dxc, &dy, &qc, 0.0f));
        CHECK_OK(lt_quant_linear_backward(&dxd, &dyd, &qd, 0.0f));
        cuda_close_f32("3-D dx", &dxd, &dxc);
        lt_tensor *all[] = {&x,  &yc,  &xd,   &yd,  &wide, &wided, &xv,  &xvd, &yc2,
                            &yd2, &xt, &xtd, &xtv, &xtvd, &dy,   &dyd,   &dxc, &dxd};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) lt_tensor_release(all[i]);
    }
    /* errors: a host output for a device weight; a bf16 y for f32 x */
    int64_t xs[2] = {3, 96}, ys[2] = {3, 48};
    lt_tensor xd = dev_empty(LT_DTYPE_F32, 2, xs), yh = host_empty(LT_DTYPE_F32, 2, ys);
    lt_tensor yb = dev_empty(LT_DTYPE_BF16, 2, ys);
    lt_tensor_fill(&xd, 1.0);
    CHECK_FAILS(lt_quant_linear_forward(&yh, &xd, &qd, 0.0f, 0.0f), LT_ERR_DEVICE, "cuda:0");
    CHECK_FAILS(lt_quant_linear_forward(&yb, &xd, &qd, 0.0f, 0.0f), LT_ERR_DTYPE, "x's dtype");
    lt_tensor_release(&xd);
    lt_tensor_release(&yh);
    lt_tensor_release(&yb);
    lt_quant_state_release(&qc);
    lt_quant_state_release(&qd);
    lt_tensor_release(&w);
}

/* The banded path holds one band of scratch, not the weight: an 8192 x 4096 NF4 weight
   (64 MiB in bf16) with 37 bf16 rows of x allocates at most one 32 MiB band. */
static void test_band_memory(void) {
    if (!cache_stats || !cache_reset_peak) {
        fprintf(stderr, "lt_cuda_cache_stats is not exported; band memory not checked\n");
        return;
    }
    int64_t ws[2] = {8192, 4096}, xs[2] = {37, 4096}, ys[2] = {37, 8192};
    lt_tensor w = dev_empty(LT_DTYPE_BF16, 2, ws);
    lt_rng rng;
    lt_rng_seed(&rng, 7);
    CHECK_OK(lt_tensor_normal(&w, 0.0, 0.02, &rng));
    lt_quant_state q = {0};
    CHECK_OK(lt_quantize(&q, &w, LT_QUANT_NF4, 64, 1));
    lt_tensor_release(&w);
    lt_tensor x = dev_empty(LT_DTYPE_BF16, 2, xs), y = dev_empty(LT_DTYPE_BF16, 2, ys);
    CHECK_OK(lt_tensor_normal(&x, 0.0, 1.0, &rng));
    lt_cache_stats before, after;
    CHECK_OK(lt_cuda_synchronize(0));
    cache_reset_peak(0);
    cache_stats(0, &before);
    CHECK_OK(lt_quant_linear_forward(&y, &x, &q, 0.0f, 0.0f));
    CHECK_OK(lt_cuda_synchronize(0));
    cache_stats(0, &after);
    int64_t grew = after.peak_allocated - before.allocated;
    printf("banded forward, 8192 x 4096 NF4, 37 bf16 rows: peak scratch %.1f MiB (weight in "
           "bf16: 64 MiB)\n",
           (double)grew / (1 << 20));
    CHECK(grew <= (32LL << 20) + (1LL << 20));
    lt_tensor_release(&x);
    lt_tensor_release(&y);
    lt_quant_state_release(&q);
}

int main(void) {
    cuda_require();
    set_tf32 = (tf32_fn)dlsym(RTLD_DEFAULT, "lt_cuda_gemm_allow_tf32");
    cache_stats = (cache_stats_fn)dlsym(RTLD_DEFAULT, "lt_cuda_cache_stats");
    cache_reset_peak = (cache_reset_fn)dlsym(RTLD_DEFAULT, "lt_cuda_cache_reset_peak");
    CHECK(set_tf32 != NULL);
    if (!set_tf32) {
        fprintf(stderr, "lt_cuda_gemm_allow_tf32 is not exported\n");
        return check_summary();
    }
    set_tf32(0); /* f32 within 1e-5 needs full f32 GEMMs */
    test_quantize();
    test_state_to();
    test_linear();
    test_views();
    test_band_memory();
    set_tf32(1);
    lt_memory_stats st;
    lt_memory_get_stats(LT_DEVICE_CUDA, 0, &st);
    CHECK(st.current_bytes == 0); /* every device tensor released */
    return check_summary();
}
