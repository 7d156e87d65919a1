/* test_quant.c - quantization (NF4, FP4, int8) against references written here, apart
 * from the kernels:
 *
 *   - the NF4 code book from the normal quantiles (an inverse normal CDF, Wichura's AS241,
 *     with bitsandbytes' create_normal_map(offset=0.9677083, use_extra_value=True)
 *     construction in f32), the FP4 code book from its bit layout;
 *   - a reference quantizer that searches the nearest code (in f64) and then applies the
 *     boundary rule: between adjacent codes the boundary is their f32 midpoint (NF4) or
 *     bitsandbytes' published dQuantizeFP4 threshold (FP4), and a value at a boundary takes
 *     the lower code. It runs on random blocks and on adversarial ones: all zero, one
 *     outlier, values exactly at every boundary and one ulp either side, denormals (where
 *     1/absmax overflows), signed zeros; inf/NaN must be rejected naming the element;
 *   - double quantization: codes of (absmax - offset) nearest in the dynamic map, and the
 *     dequantized absmax within the bound the map implies;
 *   - bits per parameter of NF4 + double quantization at block size 64: 4.127;
 *   - the quantized linear against x @ dequant(W)^T and dy @ dequant(W) computed in f64
 *     from an explicit dequantization, and the int8 mixed decomposition computed naively;
 *   - peak memory of the linear stays at one panel, not the whole weight in f32.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "lt.h"
#include "lt_quant.h"

static lt_rng rng;

static lt_tensor make(int dtype, int nd, const int64_t *sizes) {
    lt_tensor t = {0};
    if (lt_tensor_empty(&t, dtype, nd, sizes, LT_DEVICE_CPU, 0) != LT_OK)
        fprintf(stderr, "make: %s\n", lt_last_error());
    return t;
}

static lt_tensor randn(int nd, const int64_t *sizes, double std) {
    lt_tensor t = make(LT_DTYPE_F32, nd, sizes);
    lt_tensor_normal(&t, 0.0, std, &rng);
    return t;
}

static float *fp(const lt_tensor *t) { return (float *)lt_tensor_data(t); }

static int64_t nblocks(int64_t n, int bs) { return (n + bs - 1) / bs; }

/* ---- the code books, derived independently ------------------------------------------- */

/* Wichura's AS241 (PPND16): the normal quantile, relative error about 1e-16. */
static double norm_ppf(double p) {
    static const double a[8] = {3.387132872796366608,  133.14166789178437745, 1971.5909503065514427,
                                13731.693765509461125, 45921.953931549871457, 67265.770927008700853,
                                33430.575583588128105, 2509.0809287301226727};
    static const double b[8] = {1.0, 42.313330701600911252, 687.1870074920579083,
                                5394.1960214247511077, 21213.794301586595867,
                                39307.89580009271061, 28729.085735721942674,
                                5226.495278852545925};
    static const double c[8] = {1.42343711074968357734,   4.6303378461565452959,
                                5.7694972214606914055,    3.64784832476320460504,
                                1.27045825245236838258,   0.24178072517745061177,
                                0.0227238449892691845833, 7.7454501427834140764e-4};
    static const double d[8] = {1.0,
                                2.05319162663775882187,
                                1.6763848301838038494,
                                0.68976733498510000455,
                                0.14810397642748007459,
                                0.0151986665636164571966,
                                5.475938084995344946e-4,
                                1.05075007164441684324e-9};
    static const double e[8] = {6.6579046435011037772,     5.4637849111641143699,
                                1.7848265399172913358,     0.29656057182850489123,
                                0.026532189526576123093,   0.0012426609473880784386,
                                2.71155556874348757815e-5, 2.01033439929228813265e-7};
    static const double f[8] = {1.0,
                                0.59983220655588793769,
                                0.13692988092273580531,
                                0.0148753612908506148525,
                                7.868691311456132591e-4,
                                1.8463183175100546818e-5,
                                1.4215117583164458887e-7,
                                2.04426310338993978564e-15};
    double q = p - 0.5, r, num = 0.0, den = 0.0;
    if (fabs(q) <= 0.425) {
        r = 0.180625 - q * q;
        for (int i = 7; i >= 0; i--) {
            num = num * r + a[i];
            den = den * r + b[i];
        }
        return q * num / den;
    }
    r = sqrt(-log(q < 0 ? p : 1.0 - p));
    const double *pn = c, *pd = d;
    if (r <= 5.0) {
        r -= 1.6;
    } else {
        r -= 5.0;
        pn = e;
        pd = f;
    }
    for (int i = 7; i >= 0; i--) {
        num = num * r + pn[i];
        den = den * r + pd[i];
    }
    return q < 0 ? -num / den : num / den;
}

/* torch.linspace(start, end, steps) in f32: step = (end - start) / (steps - 1); the first
   half counts up from start, the second down from end. volatile: no fused multiply-add. */
static float linspace_f32(float start, float end, int steps, int k) {
    volatile float step = (end - start) / (float)(steps - 1);
    volatile float prod = k < steps / 2 ? step * (float)k : step * (float)(steps - 1 - k);
    return k < steps / 2 ? start + prod : end - prod;
}

/* create_normal_map(offset=0.9677083, use_extra_value=True): 8 positive quantiles
   ppf(linspace(offset, 0.5, 9)[:-1]), 7 negative ones -ppf(linspace(offset, 0.5, 8)[:-1]),
   and 0, each rounded to f32, sorted, divided (in f32) by the largest. */
static void build_nf4(float *out) {
    const float offset = 0.9677083f;
    float v[16];
    for (int k = 0; k < 7; k++)
        v[k] = (float)-norm_ppf(linspace_f32(offset, 0.5f, 8, k));
    v[7] = 0.0f;
    for (int k = 0; k < 8; k++)
        v[15 - k] = (float)norm_ppf(linspace_f32(offset, 0.5f, 9, k));
    float mx = v[15];
    for (int i = 0; i < 16; i++)
        out[i] = v[i] / mx;
}

/* FP4: bit 3 the sign, bits 2..1 an exponent field e, bit 0 a mantissa bit m. e = 0 is
   subnormal, m * 2^-4; else (1 + m/2) * 2^(4 - e). All divided by the largest, 12. */
static void build_fp4(float *out) {
    for (int code = 0; code < 16; code++) {
        int s = code >> 3, e = (code >> 1) & 3, m = code & 1;
        double mag = e == 0 ? m * 0.0625 : (1.0 + m / 2.0) * ldexp(1.0, 4 - e);
        out[code] = (float)((s && mag > 0 ? -mag : mag) / 12.0);
    }
}

static float ref_nf4[16], ref_fp4[16];
/* bitsandbytes' dQuantizeNF4 thresholds (csrc/kernels.cu), 16-digit decimals of the exact
   midpoints between adjacent codes, read as f32 the way a C compiler reads them: each is one
   of the two f32 values nearest its midpoint (checked below). Where the midpoint lies
   exactly halfway between two f32 values, these decimals decide, not round-half-even. */
static const float nf4_bounds[15] = {
    -0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f,   -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,    0.3893125355243683f,
    0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f};
/* bitsandbytes' dQuantizeFP4 thresholds on |x| (csrc/kernels.cu), decimal approximations
   of the midpoints between the magnitudes 0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1. */
static const float fp4_bounds[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                    0.4166667f,  0.583333f,  0.8333333f};
static float fp4_mags[8];
static const int fp4_mag_code[8] = {0, 1, 6, 7, 4, 5, 2, 3};

static float midpoint(float a, float b) { return (float)(((double)a + b) / 2.0); }

static void test_codebooks(void) {
    float book[16], dyn[256];
    build_nf4(ref_nf4);
    build_fp4(ref_fp4);
    CHECK_OK(lt_quant_codebook(LT_QUANT_NF4, book));
    int same = 1;
    for (int i = 0; i < 16; i++)
        same &= memcmp(&book[i], &ref_nf4[i], 4) == 0; /* bitwise */
    CHECK(same);
    if (!same)
        for (int i = 0; i < 16; i++)
            fprintf(stderr, "nf4[%d]: %.9g, from the quantiles %.9g\n", i, book[i], ref_nf4[i]);
    CHECK_OK(lt_quant_codebook(LT_QUANT_FP4, book));
    same = 1;
    for (int i = 0; i < 16; i++)
        same &= book[i] == ref_fp4[i];
    CHECK(same);
    /* the CUDA kernel's FP4 table, in code order */
    CHECK(book[1] == 0.005208333333f && book[2] == 0.66666667f && book[4] == 0.33333333f &&
          book[6] == 0.16666667f && book[11] == -1.0f);
    CHECK_FAILS(lt_quant_codebook(LT_QUANT_INT8, book), LT_ERR_ARG, "code book");

    for (int k = 0; k < 15; k++) {
        double m = ((double)ref_nf4[k] + ref_nf4[k + 1]) / 2.0, b = nf4_bounds[k];
        int nearest_f32 = b == m || (b > m && (double)nextafterf((float)b, -2.0f) < m) ||
                          (b < m && (double)nextafterf((float)b, 2.0f) > m);
        CHECK(nearest_f32);
    }
    for (int r = 0; r < 8; r++)
        fp4_mags[r] = ref_fp4[fp4_mag_code[r]];
    for (int r = 0; r < 7; r++) {
        CHECK(fp4_mags[r] < fp4_mags[r + 1]);
        float m = midpoint(fp4_mags[r], fp4_mags[r + 1]);
        CHECK(fabsf(fp4_bounds[r] - m) <= 16 * (nextafterf(m, 2.0f) - m));
    }

    /* the dynamic map: 127 negative values, 0, 127 positive, 1; symmetric below 1 */
    CHECK_OK(lt_quant_dynamic_map(dyn));
    int sorted = 1, sym = 1;
    for (int i = 0; i < 255; i++)
        sorted &= dyn[i] < dyn[i + 1];
    for (int k = 0; k < 127; k++)
        sym &= dyn[k] == -dyn[254 - k];
    CHECK(sorted && sym);
    CHECK(dyn[127] == 0.0f && dyn[255] == 1.0f);
    CHECK(dyn[128] == (float)(1e-6 * 0.55)); /* exponent 0: one fraction, mean of 0.1 and 1 */
    CHECK(dyn[254] == (float)((1.0 - 0.9 / 128) - 0.0)); /* top decade: 64 midpoints */
    CHECK(dyn[0] == -dyn[254]);
}

/* ---- the reference quantizer ------------------------------------------------------------- */

/* Index into vals (n, ascending) of the nearest value to x, f64 distances, the lower on a
   tie; then the boundary rule: a value in (boundary k, ...] belongs above code k, a value at
   or below it to code k or lower. */
static int nearest(double x, const float *vals, int n, const float *bounds) {
    int best = 0;
    for (int k = 1; k < n; k++)
        if (fabs(x - vals[k]) < fabs(x - vals[best])) best = k;
    while (best > 0 && x <= bounds[best - 1])
        best--;
    while (best < n - 1 && x > bounds[best])
        best++;
    return best;
}

static int ref_code(float x, int type) {
    if (type == LT_QUANT_NF4) return nearest(x, ref_nf4, 16, nf4_bounds);
    int r = nearest(fabsf(x), fp4_mags, 8, fp4_bounds);
    return fp4_mag_code[r] | (x < 0.0f ? 8 : 0);
}

/* bitsandbytes' normalisation: x = w * (1/absmax) in f32 (w / absmax where 1/absmax
   overflows; 0 for a zero block). */
static float ref_scale(float w, float amax) {
    if (amax == 0.0f) return 0.0f;
    volatile float inv = 1.0f / amax;
    if (isinf(inv)) return w / amax;
    return w * inv;
}

/* w (n) -> packed (ceil(n/2)), amax (nblocks) */
static void ref_quantize(const float *w, int64_t n, int bs, int type, uint8_t *packed,
                         float *amax) {
    int zero = ref_code(0.0f, type);
    memset(packed, 0, (size_t)(n + 1) / 2);
    for (int64_t b = 0; b < nblocks(n, bs); b++) {
        int64_t lo = b * bs, hi = lo + bs < n ? lo + bs : n;
        float m = 0.0f;
        for (int64_t i = lo; i < hi; i++)
            m = fabsf(w[i]) > m ? fabsf(w[i]) : m;
        amax[b] = m;
        for (int64_t i = lo; i < hi; i++) {
            int c = ref_code(ref_scale(w[i], m), type);
            packed[i / 2] |= (uint8_t)(i % 2 == 0 ? c << 4 : c);
        }
    }
    if (n % 2) packed[n / 2] |= (uint8_t)zero;
}

/* Quantize w (f32, shape) with lt_quantize and compare bytes and absmax with the reference.
   Returns the number of mismatching codes. */
static int64_t compare_with_ref(const lt_tensor *w, int type, int bs, const char *what) {
    int64_t n = lt_tensor_numel(w), nb = nblocks(n, bs);
    uint8_t *ref = malloc((size_t)(n + 2) / 2 + 1);
    float *ramax = malloc((size_t)(nb + 1) * 4);
    lt_tensor wf = {0};
    lt_tensor_contiguous(&wf, w, LT_DTYPE_F32);
    ref_quantize(fp(&wf), n, bs, type, ref, ramax);
    lt_quant_state q = {0};
    int64_t bad = -1;
    CHECK_OK(lt_quantize(&q, w, type, bs, 0));
    if (q.packed.storage) {
        const uint8_t *p = lt_tensor_data(&q.packed);
        const float *a = lt_tensor_data(&q.absmax);
        bad = 0;
        CHECK(lt_tensor_numel(&q.packed) == (n + 1) / 2 && lt_tensor_numel(&q.absmax) == nb);
        for (int64_t i = 0; i < (n + 1) / 2; i++) {
            if (p[i] != ref[i]) {
                if (bad < 3)
                    fprintf(stderr, "%s: byte %lld is 0x%02x, reference 0x%02x (w %.9g %.9g)\n",
                            what, (long long)i, p[i], ref[i], fp(&wf)[2 * i],
                            2 * i + 1 < n ? fp(&wf)[2 * i + 1] : 0.0f);
                bad++;
            }
        }
        for (int64_t b = 0; b < nb; b++)
            bad += memcmp(&a[b], &ramax[b], 4) != 0;
    }
    CHECK(bad == 0);
    lt_quant_state_release(&q);
    lt_tensor_release(&wf);
    free(ref);
    free(ramax);
    return bad;
}

static lt_tensor from_floats(const float *v, int64_t n) {
    lt_tensor t = make(LT_DTYPE_F32, 1, &n);
    memcpy(fp(&t), v, (size_t)n * 4);
    return t;
}

static void test_codes(void) {
    int types[2] = {LT_QUANT_NF4, LT_QUANT_FP4};
    for (int ti = 0; ti < 2; ti++) {
        int type = types[ti];
        const char *tn = type == LT_QUANT_NF4 ? "nf4" : "fp4";
        char what[64];
        /* random blocks, several block sizes, numel not divisible, odd numel */
        int bss[5] = {32, 64, 128, 1024, 4096};
        for (int k = 0; k < 5; k++) {
            int64_t s[2] = {37, 113}; /* 4181: odd, divisible by none of them */
            lt_tensor w = randn(2, s, 0.02);
            snprintf(what, sizeof what, "%s random bs %d", tn, bss[k]);
            compare_with_ref(&w, type, bss[k], what);
            lt_tensor_release(&w);
        }
        /* adversarial block (64): every boundary exactly, one ulp either side, signed zeros */
        float v[4096];
        int n = 0;
        v[n++] = 1.0f; /* absmax 1: x == w exactly */
        const float *bounds = type == LT_QUANT_NF4 ? nf4_bounds : fp4_bounds;
        int nbounds = type == LT_QUANT_NF4 ? 15 : 7;
        for (int k = 0; k < nbounds; k++) {
            float b = bounds[k];
            v[n++] = b;
            v[n++] = nextafterf(b, 2.0f);
            v[n++] = nextafterf(b, -2.0f);
            if (type == LT_QUANT_FP4) {
                v[n++] = -b;
                v[n++] = nextafterf(-b, -2.0f);
                v[n++] = nextafterf(-b, 2.0f);
                /* the exact f32 midpoint, where the kernel's threshold differs from it */
                v[n++] = midpoint(fp4_mags[k], fp4_mags[k + 1]);
            }
        }
        v[n++] = 0.0f;
        v[n++] = -0.0f;
        v[n++] = -1e-3f;
        v[n++] = -1.0f;
        for (int i = n; i < 128; i++)
            v[i] = 0.5f;
        lt_tensor w = from_floats(v, 128);
        snprintf(what, sizeof what, "%s boundaries", tn);
        compare_with_ref(&w, type, 128, what);
        lt_tensor_release(&w);
        /* the same values at another scale: the 1/absmax multiplication decides */
        for (int i = 0; i < 128; i++)
            v[i] *= 3.0f;
        w = from_floats(v, 128);
        compare_with_ref(&w, type, 128, what);
        lt_tensor_release(&w);

        /* all-zero blocks between others, one outlier, denormals */
        for (int i = 0; i < 4096; i++)
            v[i] = 0.0f;
        for (int i = 64; i < 128; i++)
            v[i] = (float)(i - 96) * 1e-3f;
        v[100] = 1000.0f; /* one outlier: the rest of its block collapses to code(0) */
        for (int i = 128; i < 192; i++)
            v[i] = (float)(i - 150) * 1e-41f; /* denormals only */
        for (int i = 192; i < 256; i++)
            v[i] = (i % 3 ? 1e-40f : 3e-39f); /* 1/absmax finite? */
        v[256] = 1.1754944e-38f;              /* smallest normal beside denormals */
        v[257] = 1.4e-45f;                    /* the smallest denormal */
        w = from_floats(v, 320);
        snprintf(what, sizeof what, "%s zero/outlier/denormal", tn);
        compare_with_ref(&w, type, 64, what);
        /* a zero block decodes to zeros, and the denormal block keeps its values' signs */
        lt_quant_state q = {0};
        CHECK_OK(lt_quantize(&q, &w, type, 64, 0));
        lt_tensor d = make(LT_DTYPE_F32, 1, (int64_t[]){320});
        CHECK_OK(lt_dequantize(&d, &q));
        CHECK(fp(&d)[0] == 0.0f && fp(&d)[63] == 0.0f && fp(&d)[100] == 1000.0f);
        CHECK(fp(&d)[128] < 0.0f && fp(&d)[191] > 0.0f);
        CHECK(fabsf(fp(&d)[128] - v[128]) <= 0.17f * fabsf(v[191])); /* half FP4's widest gap */
        lt_tensor_release(&d);
        lt_quant_state_release(&q);
        lt_tensor_release(&w);

        /* bf16 and f16 weights quantize as their f32 values do */
        int64_t s2[2] = {24, 40};
        lt_tensor wr = randn(2, s2, 1.0), wb = make(LT_DTYPE_BF16, 2, s2),
                  wh = make(LT_DTYPE_F16, 2, s2);
        lt_tensor_copy(&wb, &wr);
        lt_tensor_copy(&wh, &wr);
        snprintf(what, sizeof what, "%s bf16", tn);
        compare_with_ref(&wb, type, 64, what);
        snprintf(what, sizeof what, "%s f16", tn);
        compare_with_ref(&wh, type, 32, what);
        lt_quant_state q2 = {0};
        CHECK_OK(lt_quantize(&q2, &wb, type, 64, 1));
        CHECK(q2.orig_dtype == LT_DTYPE_BF16);
        lt_tensor dq = make(LT_DTYPE_BF16, 2, s2);
        CHECK_OK(lt_dequantize(&dq, &q2)); /* into bf16 */
        lt_tensor_release(&dq);
        lt_quant_state_release(&q2);
        lt_tensor_release(&wr);
        lt_tensor_release(&wb);
        lt_tensor_release(&wh);
    }
}

static void test_nonfinite(void) {
    int64_t s[2] = {5, 70};
    lt_tensor w = randn(2, s, 1.0);
    fp(&w)[3 * 70 + 17] = NAN;
    fp(&w)[4 * 70 + 1] = INFINITY; /* later: the first bad one is named */
    lt_quant_state q = {0};
    CHECK_FAILS(lt_quantize(&q, &w, LT_QUANT_NF4, 64, 1), LT_ERR_ARG, "(3, 17)");
    CHECK(strstr(lt_last_error(), "NaN") != NULL);
    CHECK(q.packed.storage == NULL); /* nothing half-made is handed back */
    CHECK_FAILS(lt_quantize(&q, &w, LT_QUANT_INT8, 0, 0), LT_ERR_ARG, "(3, 17)");
    fp(&w)[3 * 70 + 17] = 0.0f;
    CHECK_FAILS(lt_quantize(&q, &w, LT_QUANT_FP4, 32, 0), LT_ERR_ARG, "(4, 1)");
    CHECK(strstr(lt_last_error(), "inf") != NULL);
    lt_tensor wb = make(LT_DTYPE_BF16, 2, s);
    lt_tensor_copy(&wb, &w);
    CHECK_FAILS(lt_quantize(&q, &wb, LT_QUANT_NF4, 64, 0), LT_ERR_ARG, "(4, 1)");
    lt_tensor_release(&wb);
    lt_tensor_release(&w);
}

/* ---- dequantization and double quantization ---------------------------------------------- */

static void test_dequantize(void) {
    int64_t s[2] = {70, 90}; /* 6300: 98.4 blocks of 64 */
    lt_tensor w = randn(2, s, 0.05);
    int64_t n = 6300;
    lt_tensor d = make(LT_DTYPE_F32, 2, s), rows = make(LT_DTYPE_F32, 2, (int64_t[]){7, 90});
    int types[2] = {LT_QUANT_NF4, LT_QUANT_FP4};
    for (int ti = 0; ti < 2; ti++) {
        lt_quant_state q = {0};
        CHECK_OK(lt_quantize(&q, &w, types[ti], 64, 0));
        CHECK_OK(lt_dequantize(&d, &q));
        const uint8_t *p = lt_tensor_data(&q.packed);
        const float *a = lt_tensor_data(&q.absmax),
                    *book = types[ti] == LT_QUANT_NF4 ? ref_nf4 : ref_fp4;
        int exact = 1;
        for (int64_t i = 0; i < n; i++) {
            int c = i % 2 ? p[i / 2] & 15 : p[i / 2] >> 4;
            exact &= fp(&d)[i] == book[c] * a[i / 64];
        }
        CHECK(exact);
        /* rows 31..37 alone, as a panel */
        CHECK_OK(lt_dequantize_rows(&rows, &q, 31));
        CHECK(memcmp(fp(&rows), fp(&d) + 31 * 90, 7 * 90 * 4) == 0);
        CHECK_FAILS(lt_dequantize_rows(&rows, &q, 64), LT_ERR_RANGE, "outside");
        lt_quant_state_release(&q);
    }
    lt_tensor_release(&rows);
    lt_tensor_release(&d);
    lt_tensor_release(&w);
}

static void test_double_quant(void) {
    /* 300 x 130 = 39000 elements: 610 blocks of 64 -> 3 nested blocks (the last partial);
       scales spread over two decades so that absmax - offset takes both signs */
    int64_t s[2] = {300, 130}, n = 39000, nb = 610;
    lt_tensor w = randn(2, s, 1.0);
    for (int64_t i = 0; i < n; i++)
        fp(&w)[i] *= (float)(0.01 + 0.5 * ((i / 700) % 7));
    lt_quant_state q = {0}, p = {0};
    CHECK_OK(lt_quantize(&q, &w, LT_QUANT_NF4, 64, 1));
    CHECK_OK(lt_quantize(&p, &w, LT_QUANT_NF4, 64, 0));
    CHECK(q.double_quant == 1 && q.nested_blocksize == 256);
    CHECK(q.absmax.dtype_id == LT_DTYPE_U8 && lt_tensor_numel(&q.absmax) == nb);
    CHECK(lt_tensor_numel(&q.absmax2) == 3 && lt_tensor_numel(&q.nested_code) == 256);
    /* the packed codes do not depend on how the scales are stored */
    CHECK(memcmp(lt_tensor_data(&q.packed), lt_tensor_data(&p.packed), (size_t)n / 2) == 0);
    const float *amax = lt_tensor_data(&p.absmax), *map = lt_tensor_data(&q.nested_code);
    const float *a2 = lt_tensor_data(&q.absmax2);
    const uint8_t *aq = lt_tensor_data(&q.absmax);
    double sum = 0.0;
    for (int64_t b = 0; b < nb; b++)
        sum += amax[b];
    CHECK((float)q.offset == (float)(sum / nb));
    float off = (float)q.offset, bounds[255];
    for (int k = 0; k < 255; k++)
        bounds[k] = midpoint(map[k], map[k + 1]);
    /* The map's widest gaps are 0.9/64 (the top decade, and -1 to its lowest entry
       -0.99296875), so a normalised value is at most 0.00703125 from its code: the error
       of a dequantized absmax is at most 0.00703125 * absmax2 of its nested block, plus
       f32 rounding (2^-23 relative to absmax2 and to the result). */
    int codes_ok = 1, bound_ok = 1, has_neg = 0, has_pos = 0;
    double worst = 0.0;
    lt_tensor scales = make(LT_DTYPE_F32, 1, &nb);
    CHECK_OK(lt_quant_absmax(&scales, &q));
    for (int64_t b = 0; b < nb; b++) {
        float v = amax[b] - off, s2 = a2[b / 256];
        has_neg |= v < 0;
        has_pos |= v > 0;
        float x = ref_scale(v, s2);
        int ref = nearest(x, map, 256, bounds);
        codes_ok &= aq[b] == ref;
        volatile float prod = map[aq[b]] * s2;
        float deq = prod + off;
        bound_ok &= fp(&scales)[b] == deq;
        double err = fabs((double)deq - amax[b]);
        double lim = 0.00703125 * s2 + ldexp(fabs(s2) + fabs(deq), -23);
        if (err / s2 > worst) worst = err / s2;
        bound_ok &= err <= lim;
    }
    CHECK(codes_ok && bound_ok && has_neg && has_pos);
    if (!bound_ok || worst > 0.00703125)
        fprintf(stderr, "double quant: worst error %.6g * absmax2\n", worst);
    /* dequantization uses exactly those scales */
    lt_tensor d = make(LT_DTYPE_F32, 2, s);
    CHECK_OK(lt_dequantize(&d, &q));
    const uint8_t *pk = lt_tensor_data(&q.packed);
    int exact = 1;
    for (int64_t i = 0; i < n; i++) {
        int c = i % 2 ? pk[i / 2] & 15 : pk[i / 2] >> 4;
        exact &= fp(&d)[i] == ref_nf4[c] * fp(&scales)[i / 64];
    }
    CHECK(exact);
    lt_tensor_release(&d);
    lt_tensor_release(&scales);
    lt_quant_state_release(&q);
    lt_quant_state_release(&p);
    lt_tensor_release(&w);
}

static void test_nbytes(void) {
    /* NF4 + double quantization at block size 64: 4 + 8/64 + 32/(64*256) = 4.12695 bits per
       parameter, plus the two maps (16 + 256 f32) amortised over 4096 x 4096: 4.1275 */
    int64_t s[2] = {4096, 4096}, n = 4096 * 4096;
    lt_tensor w = randn(2, s, 0.02);
    lt_quant_state q = {0};
    CHECK_OK(lt_quantize(&q, &w, LT_QUANT_NF4, 64, 1));
    int64_t nb = n / 64, want = n / 2 + nb + 4 * (nb / 256) + 4 * 16 + 4 * 256;
    CHECK(lt_quant_nbytes(&q) == want);
    char buf[32];
    snprintf(buf, sizeof buf, "%.3f", 8.0 * (double)lt_quant_nbytes(&q) / (double)n);
    CHECK(strcmp(buf, "4.127") == 0);
    if (strcmp(buf, "4.127") != 0) fprintf(stderr, "NF4+DQ bits per parameter: %s\n", buf);
    lt_quant_state_release(&q);
    CHECK_OK(lt_quantize(&q, &w, LT_QUANT_FP4, 64, 0));
    CHECK(lt_quant_nbytes(&q) == n / 2 + 4 * nb + 64); /* 4.5 bits */
    lt_quant_state_release(&q);
    lt_tensor_release(&w);
    int64_t s8[2] = {40, 64};
    w = randn(2, s8, 1.0);
    CHECK_OK(lt_quantize(&q, &w, LT_QUANT_INT8, 0, 0));
    CHECK(lt_quant_nbytes(&q) == 40 * 64 + 40 * 4); /* 8 + 32/64 bits */
    lt_quant_state_release(&q);
    lt_tensor_release(&w);
    CHECK(lt_quant_nbytes(&q) == 0);
}

/* ---- int8 -------------------------------------------------------------------------------- */

static void test_int8(void) {
    int64_t s[2] = {33, 50};
    lt_tensor w = randn(2, s, 0.3);
    fp(&w)[5 * 50 + 7] = 0.0f;
    for (int j = 0; j < 50; j++)
        fp(&w)[9 * 50 + j] = 0.0f; /* a zero row */
    /* row 11: absmax 127, so the scale is 1 and halves round to even */
    fp(&w)[11 * 50 + 0] = 127.0f;
    fp(&w)[11 * 50 + 3] = 2.5f;
    fp(&w)[11 * 50 + 4] = 3.5f;
    fp(&w)[11 * 50 + 5] = -2.5f;
    for (int j = 6; j < 50; j++)
        fp(&w)[11 * 50 + j] = 1.0f;
    lt_tensor wb = make(LT_DTYPE_BF16, 2, s);
    lt_tensor_copy(&wb, &w);
    lt_tensor_copy(&w, &wb); /* the bf16 values, for the reference */
    lt_quant_state q = {0};
    CHECK_OK(lt_quantize(&q, &wb, LT_QUANT_INT8, 0, 0));
    CHECK(q.packed.dtype_id == LT_DTYPE_I8 && q.packed.ndim == 2 && q.blocksize == 0);
    const int8_t *c = lt_tensor_data(&q.packed);
    const float *a = lt_tensor_data(&q.absmax);
    int ok = 1;
    for (int r = 0; r < 33; r++) {
        float m = 0.0f;
        for (int j = 0; j < 50; j++)
            m = fmaxf(m, fabsf(fp(&w)[r * 50 + j]));
        ok &= a[r] == m;
        for (int j = 0; j < 50; j++) {
            volatile float scale = m > 0 ? 127.0f / m : 0.0f;
            float want = m > 0 ? nearbyintf(fp(&w)[r * 50 + j] * scale) : 0.0f;
            ok &= c[r * 50 + j] == (int8_t)want;
        }
    }
    CHECK(ok);
    CHECK(c[11 * 50 + 3] == 2 && c[11 * 50 + 4] == 4 && c[11 * 50 + 5] == -2);
    CHECK(c[9 * 50 + 2] == 0 && a[9] == 0.0f);
    lt_tensor d = make(LT_DTYPE_F32, 2, s);
    CHECK_OK(lt_dequantize(&d, &q));
    ok = 1;
    for (int64_t i = 0; i < 33 * 50; i++) {
        ok &= fp(&d)[i] == (float)c[i] * (a[i / 50] * (1.0f / 127.0f));
        ok &= fabsf(fp(&d)[i] - fp(&w)[i]) <= a[i / 50] / 254.0f * 1.0001f;
    }
    CHECK(ok);
    CHECK_FAILS(lt_quantize(&q, &w, LT_QUANT_INT8, 64, 0), LT_ERR_ARG, "row-wise");
    lt_tensor_release(&d);
    lt_quant_state_release(&q);
    lt_tensor_release(&w);
    lt_tensor_release(&wb);
}

/* ---- the linear layer -------------------------------------------------------------------- */

/* y (N, out) compared with x @ dq^T in f64: |y - ref| <= tol * sum |x_k w_k| per element */
static int check_gemm(const float *y, const float *x, const float *w, int64_t N, int64_t out,
                      int64_t in, int trans_w, const float *y0, float beta, double tol,
                      const char *what) {
    int bad = 0;
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < out; j++) {
            double s = 0.0, mag = 0.0;
            for (int64_t k = 0; k < in; k++) {
                double t = (double)x[i * in + k] * (trans_w ? w[k * out + j] : w[j * in + k]);
                s += t;
                mag += fabs(t);
            }
            if (y0) {
                s += (double)beta * y0[i * out + j];
                mag += fabs((double)beta * y0[i * out + j]);
            }
            double got = y[i * out + j];
            if (!(fabs(got - s) <= tol * mag + 1e-30)) {
                if (bad < 3)
                    fprintf(stderr, "%s: [%lld, %lld] = %.9g, reference %.9g\n", what, (long long)i,
                            (long long)j, got, s);
                bad++;
            }
        }
    return bad;
}

/* forward, forward with beta, backward on one weight shape; x of ndim 2 or 3. */
static void linear_case(int type, int bs, int dq, int64_t out, int64_t in, int64_t N, int split,
                        int xdtype) {
    char what[96];
    snprintf(what, sizeof what, "linear type %d bs %d dq %d (%lld, %lld) N %lld", type, bs, dq,
             (long long)out, (long long)in, (long long)N);
    int64_t sw[2] = {out, in};
    lt_tensor w = randn(2, sw, 0.05);
    lt_quant_state q = {0};
    CHECK_OK(lt_quantize(&q, &w, type, type == LT_QUANT_INT8 ? 0 : bs, dq));
    lt_tensor dw = make(LT_DTYPE_F32, 2, sw);
    CHECK_OK(lt_dequantize(&dw, &q));
    int64_t sx3[3] = {split, N / split, in}, sy3[3] = {split, N / split, out};
    int64_t sx2[2] = {N, in}, sy2[2] = {N, out};
    int nd = split > 1 ? 3 : 2;
    lt_tensor x = randn(nd, nd == 3 ? sx3 : sx2, 1.0);
    lt_tensor xin = x;
    lt_tensor xl = {0};
    if (xdtype != LT_DTYPE_F32) { /* a bf16 input; the reference uses its values */
        xl = make(xdtype, nd, nd == 3 ? sx3 : sx2);
        lt_tensor_copy(&xl, &x);
        lt_tensor_copy(&x, &xl);
        xin = xl;
    }
    lt_tensor y = randn(nd, nd == 3 ? sy3 : sy2, 1.0),
              y0 = make(LT_DTYPE_F32, nd, nd == 3 ? sy3 : sy2);
    lt_tensor_copy(&y0, &y);
    CHECK_OK(lt_quant_linear_forward(&y, &xin, &q, 0.0f, 6.0f));
    CHECK(check_gemm(fp(&y), fp(&x), fp(&dw), N, out, in, 0, NULL, 0.0f, 1e-5, what) == 0);
    lt_tensor_copy(&y, &y0);
    CHECK_OK(lt_quant_linear_forward(&y, &xin, &q, 0.5f, 0.0f));
    CHECK(check_gemm(fp(&y), fp(&x), fp(&dw), N, out, in, 0, fp(&y0), 0.5f, 1e-5, what) == 0);
    /* backward: dx (N, in) = dy (N, out) @ W */
    lt_tensor dx = make(LT_DTYPE_F32, nd, nd == 3 ? sx3 : sx2);
    lt_tensor_fill(&dx, NAN); /* beta 0 must not read it */
    CHECK_OK(lt_quant_linear_backward(&dx, &y0, &q, 0.0f));
    CHECK(check_gemm(fp(&dx), fp(&y0), fp(&dw), N, in, out, 1, NULL, 0.0f, 1e-5, what) == 0);
    lt_tensor dx0 = make(LT_DTYPE_F32, nd, nd == 3 ? sx3 : sx2);
    lt_tensor_copy(&dx0, &dx);
    CHECK_OK(lt_quant_linear_backward(&dx, &y0, &q, 1.0f));
    CHECK(check_gemm(fp(&dx), fp(&y0), fp(&dw), N, in, out, 1, fp(&dx0), 1.0f, 1e-5, what) == 0);
    lt_tensor_release(&dx0);
    lt_tensor_release(&dx);
    lt_quant_state_release(&q);
    lt_tensor_release(&w);
    lt_tensor_release(&dw);
    lt_tensor_release(&x);
    lt_tensor_release(&xl);
    lt_tensor_release(&y);
    lt_tensor_release(&y0);
}

static void test_linear(void) {
    linear_case(LT_QUANT_NF4, 64, 1, 37, 192, 5, 1, LT_DTYPE_F32);
    linear_case(LT_QUANT_NF4, 64, 0, 37, 100, 6, 2, LT_DTYPE_F32);  /* 3700: 57.8 blocks */
    linear_case(LT_QUANT_FP4, 32, 0, 37, 101, 5, 1, LT_DTYPE_BF16); /* odd numel */
    linear_case(LT_QUANT_FP4, 128, 1, 1, 7, 3, 3, LT_DTYPE_F16);
    linear_case(LT_QUANT_NF4, 64, 1, 300, 4000, 4, 2, LT_DTYPE_F32); /* 2 panels of 256 */
    linear_case(LT_QUANT_NF4, 4096, 0, 70, 64, 33, 1, LT_DTYPE_F32);
}

static void int8_linear_case(int64_t out, int64_t in, int64_t N) {
    int64_t sw[2] = {out, in}, sx[2] = {N, in}, sy[2] = {N, out};
    lt_tensor w = randn(2, sw, 0.2), x = randn(2, sx, 1.0);
    fp(&x)[1 * in + 4] = 9.0f;   /* outlier column 4 */
    fp(&x)[3 * in + 4] = -0.5f;  /* a small value in the outlier column */
    fp(&x)[2 * in + 31] = -6.0f; /* exactly the threshold: an outlier */
    fp(&x)[5 * in + 30] = 5.99f; /* just below: quantized */
    for (int64_t k = 0; k < in; k++)
        fp(&x)[4 * in + k] = 0.0f;
    fp(&x)[4 * in + 31] = 7.0f; /* a row of zeros and one outlier: its scale is 0 */
    lt_quant_state q = {0};
    CHECK_OK(lt_quantize(&q, &w, LT_QUANT_INT8, 0, 0));
    const int8_t *cb = lt_tensor_data(&q.packed);
    const float *sc = lt_tensor_data(&q.absmax);
    float ths[2] = {6.0f, 0.0f};
    int *is_out = calloc((size_t)in, sizeof(int)), *xq = calloc((size_t)in, sizeof(int));
    for (int t = 0; t < 2; t++) {
        float th = ths[t];
        lt_tensor y = randn(2, sy, 1.0), y0 = make(LT_DTYPE_F32, 2, sy);
        lt_tensor_copy(&y0, &y);
        float beta = t == 0 ? 0.0f : 0.25f;
        CHECK_OK(lt_quant_linear_forward(&y, &x, &q, beta, th));
        int bad = 0;
        for (int64_t k = 0; k < in; k++)
            is_out[k] = 0;
        for (int64_t i = 0; i < N; i++)
            for (int64_t k = 0; k < in; k++)
                if (th > 0 && fabsf(fp(&x)[i * in + k]) >= th) is_out[k] = 1;
        if (t == 0) CHECK(is_out[4] && is_out[31] && !is_out[30]);
        for (int64_t i = 0; i < N; i++) {
            const float *xr = fp(&x) + i * in;
            float s = 0.0f;
            for (int64_t k = 0; k < in; k++)
                if (!(th > 0) || fabsf(xr[k]) < th) s = fmaxf(s, fabsf(xr[k]));
            for (int64_t k = 0; k < in; k++) {
                volatile float scale = s > 0 ? 127.0f / s : 0.0f;
                xq[k] = is_out[k] || s == 0 ? 0 : (int)nearbyintf(xr[k] * scale);
            }
            for (int64_t j = 0; j < out; j++) {
                long long acc = 0;
                double outl = 0.0, mag = 0.0;
                for (int64_t k = 0; k < in; k++) {
                    acc += (long long)xq[k] * cb[j * in + k];
                    mag += fabs((double)xq[k] * cb[j * in + k]) * s * sc[j] / 16129.0;
                    if (is_out[k]) {
                        double wv = (double)cb[j * in + k] * (sc[j] * (1.0f / 127.0f));
                        outl += xr[k] * wv;
                        mag += fabs(xr[k] * wv);
                    }
                }
                double yb = beta * (double)fp(&y0)[i * out + j];
                double ref = (double)acc * s * sc[j] / 16129.0 + outl + yb;
                mag += fabs(yb);
                double got = fp(&y)[i * out + j];
                if (!(fabs(got - ref) <= 1e-5 * mag + 1e-30)) {
                    if (bad < 3)
                        fprintf(stderr, "int8 linear (%lld, %lld) N %lld threshold %g: [%lld, "
                                        "%lld] = %.9g, naive %.9g\n",
                                (long long)out, (long long)in, (long long)N, th, (long long)i,
                                (long long)j, got, ref);
                    bad++;
                }
            }
        }
        CHECK(bad == 0);
        lt_tensor_release(&y);
        lt_tensor_release(&y0);
    }
    /* the input gradient goes through the dequantized weight */
    lt_tensor dy = randn(2, sy, 1.0), dx = make(LT_DTYPE_F32, 2, sx),
              dw = make(LT_DTYPE_F32, 2, sw);
    CHECK_OK(lt_dequantize(&dw, &q));
    CHECK_OK(lt_quant_linear_backward(&dx, &dy, &q, 0.0f));
    CHECK(check_gemm(fp(&dx), fp(&dy), fp(&dw), N, in, out, 1, NULL, 0.0f, 1e-5,
                     "int8 backward") == 0);
    free(is_out);
    free(xq);
    lt_tensor_release(&dy);
    lt_tensor_release(&dx);
    lt_tensor_release(&dw);
    lt_quant_state_release(&q);
    lt_tensor_release(&w);
    lt_tensor_release(&x);
}

/* The LLM.int8 decomposition, naively: outlier columns hold some |x| >= t; row scales of
   x skip the values >= t; xq = round(x * 127 / s) outside the outlier columns, exact int
   products, scaled by s * sw / 127^2, plus the outlier columns times the dequantized
   weight columns, plus beta * y. Small, then large enough for threads, panels of weight
   rows and chunks of x rows. */
static void test_int8_linear(void) {
    int8_linear_case(29, 70, 6);
    int8_linear_case(3000, 50, 500);
}

/* The linear never holds the weight in f32: its peak is one 4 MB panel (plus the x copy
   for a non-f32 input), against 16 MB for this weight whole. */
static void test_linear_memory(void) {
    int64_t sw[2] = {2048, 2048}, sx[2] = {8, 2048}, sy[2] = {8, 2048};
    lt_tensor w = randn(2, sw, 0.02), x = randn(2, sx, 1.0), y = make(LT_DTYPE_F32, 2, sy);
    lt_quant_state q = {0};
    CHECK_OK(lt_quantize(&q, &w, LT_QUANT_NF4, 64, 1));
    lt_tensor_release(&w);
    lt_memory_stats before, after;
    lt_memory_reset_peak(LT_DEVICE_CPU, 0);
    lt_memory_get_stats(LT_DEVICE_CPU, 0, &before);
    CHECK_OK(lt_quant_linear_forward(&y, &x, &q, 0.0f, 0.0f));
    CHECK_OK(lt_quant_linear_backward(&x, &y, &q, 0.0f));
    lt_memory_get_stats(LT_DEVICE_CPU, 0, &after);
    int64_t extra = after.peak_bytes - before.current_bytes;
    CHECK(extra <= 4 * 1024 * 1024 + 4096);
    if (extra > 4 * 1024 * 1024 + 4096)
        fprintf(stderr, "linear peak scratch %lld bytes\n", (long long)extra);
    CHECK(after.current_bytes == before.current_bytes);
    lt_quant_state_release(&q);
    lt_tensor_release(&x);
    lt_tensor_release(&y);
}

/* ---- assembling states, and errors ------------------------------------------------------- */

static void test_state_init(void) {
    int64_t s[2] = {48, 48};
    lt_tensor w = randn(2, s, 0.1);
    lt_quant_state q = {0}, r = {0};
    CHECK_OK(lt_quantize(&q, &w, LT_QUANT_NF4, 64, 1));
    CHECK_OK(lt_quant_state_init(&r, LT_QUANT_NF4, 64, 2, s, LT_DTYPE_F32, &q.packed, &q.absmax,
                                 &q.code, &q.absmax2, &q.nested_code, q.offset));
    CHECK(r.packed.storage == q.packed.storage); /* shared, not copied */
    lt_tensor a = make(LT_DTYPE_F32, 2, s), b = make(LT_DTYPE_F32, 2, s);
    CHECK_OK(lt_dequantize(&a, &q));
    lt_quant_state_release(&q); /* r keeps the storage alive */
    CHECK_OK(lt_dequantize(&b, &r));
    int eq = 0;
    lt_tensor_equal(&a, &b, &eq);
    CHECK(eq);
    /* mismatches name the piece */
    int64_t bad[2] = {48, 49};
    CHECK_FAILS(lt_quant_state_init(&q, LT_QUANT_NF4, 64, 2, bad, LT_DTYPE_F32, &r.packed,
                                    &r.absmax, &r.code, &r.absmax2, &r.nested_code, r.offset),
                LT_ERR_SHAPE, "packed");
    CHECK_FAILS(lt_quant_state_init(&q, LT_QUANT_NF4, 32, 2, s, LT_DTYPE_F32, &r.packed, &r.absmax,
                                    &r.code, &r.absmax2, &r.nested_code, r.offset),
                LT_ERR_SHAPE, "absmax");
    CHECK_FAILS(lt_quant_state_init(&q, LT_QUANT_FP4, 64, 2, s, LT_DTYPE_F32, &r.packed, &r.absmax,
                                    &r.code, &r.absmax2, &r.nested_code, r.offset),
                LT_ERR_FORMAT, "code book");
    CHECK_FAILS(lt_quant_state_init(&q, LT_QUANT_NF4, 64, 2, s, LT_DTYPE_F32, &r.packed, &r.absmax,
                                    &r.code, NULL, NULL, 0.0),
                LT_ERR_DTYPE, "absmax");
    CHECK_FAILS(lt_quant_state_init(&q, LT_QUANT_NF4, 64, 2, s, LT_DTYPE_F32, &r.packed, &r.absmax,
                                    &r.code, &r.absmax2, NULL, 0.0),
                LT_ERR_ARG, "nested_code");
    CHECK_FAILS(lt_quant_state_init(&q, LT_QUANT_NF4, 48, 2, s, LT_DTYPE_F32, &r.packed, &r.absmax,
                                    &r.code, &r.absmax2, &r.nested_code, 0.0),
                LT_ERR_ARG, "power of two");
    CHECK_FAILS(lt_quant_state_init(&q, LT_QUANT_NF4, 64, 2, s, LT_DTYPE_F32, &r.packed, &r.absmax,
                                    &r.code, &r.absmax2, &r.nested_code, NAN),
                LT_ERR_RANGE, "offset");
    CHECK(q.packed.storage == NULL);
    lt_quant_state_release(&r);

    /* quantize errors */
    CHECK_FAILS(lt_quantize(&q, &w, LT_QUANT_NF4, 48, 0), LT_ERR_ARG, "power of two");
    CHECK_FAILS(lt_quantize(&q, &w, LT_QUANT_NF4, 8192, 0), LT_ERR_ARG, "32..4096");
    CHECK_FAILS(lt_quantize(&q, &w, 7, 64, 0), LT_ERR_ARG, "unknown");
    int64_t s3[3] = {2, 3, 4};
    lt_tensor w3 = make(LT_DTYPE_F32, 3, s3), wi = make(LT_DTYPE_I32, 2, s);
    CHECK_FAILS(lt_quantize(&q, &w3, LT_QUANT_NF4, 64, 0), LT_ERR_SHAPE, "1 or 2 dims");
    CHECK_FAILS(lt_quantize(&q, &wi, LT_QUANT_NF4, 64, 0), LT_ERR_DTYPE, "f32, bf16 or f16");
    /* a released state, wrong shapes in the linear */
    lt_tensor x = make(LT_DTYPE_F32, 2, (int64_t[]){3, 48}),
              y = make(LT_DTYPE_F32, 2, (int64_t[]){3, 47});
    CHECK_FAILS(lt_quant_linear_forward(&y, &x, &q, 0.0f, 0.0f), LT_ERR_ARG, "released");
    CHECK_FAILS(lt_dequantize(&a, &q), LT_ERR_ARG, "released");
    CHECK_OK(lt_quantize(&q, &w, LT_QUANT_FP4, 64, 0));
    CHECK_FAILS(lt_quant_linear_forward(&y, &x, &q, 0.0f, 0.0f), LT_ERR_SHAPE, "(3, 47)");
    CHECK_FAILS(lt_quant_linear_backward(&x, &y, &q, 0.0f), LT_ERR_SHAPE, "dy");
    CHECK_FAILS(lt_quant_linear_forward(&x, &x, &q, 0.0f, 0.0f), LT_ERR_ARG, "share");
    CHECK_FAILS(lt_quant_linear_forward(&y, &x, &q, 0.0f, NAN), LT_ERR_ARG, "NaN");
    /* a transposed output cannot be written row by row */
    lt_tensor yt = make(LT_DTYPE_F32, 2, (int64_t[]){48, 3}), ytv = {0};
    lt_tensor_transpose(&ytv, &yt, 0, 1);
    CHECK_FAILS(lt_quant_linear_forward(&ytv, &x, &q, 0.0f, 0.0f), LT_ERR_ARG, "unit stride");
    lt_tensor_release(&ytv);
    lt_tensor_release(&yt);
    lt_tensor d3 = make(LT_DTYPE_F32, 2, (int64_t[]){48, 47});
    CHECK_FAILS(lt_dequantize(&d3, &q), LT_ERR_SHAPE, "(48, 48)");
    lt_quant_state_release(&q);
    lt_tensor_release(&d3);
    lt_tensor_release(&x);
    lt_tensor_release(&y);
    lt_tensor_release(&w3);
    lt_tensor_release(&wi);
    lt_tensor_release(&a);
    lt_tensor_release(&b);
    lt_tensor_release(&w);
}

/* Results do not depend on the thread count. */
static void test_threads(void) {
    int64_t s[2] = {300, 700}, sx[2] = {40, 700}, sy[2] = {40, 300};
    lt_tensor w = randn(2, s, 0.02), x = randn(2, sx, 1.0);
    lt_tensor y1 = make(LT_DTYPE_F32, 2, sy), y2 = make(LT_DTYPE_F32, 2, sy);
    lt_quant_state q1 = {0}, q2 = {0};
    int nt = lt_get_num_threads();
    lt_set_num_threads(1);
    CHECK_OK(lt_quantize(&q1, &w, LT_QUANT_NF4, 64, 1));
    lt_set_num_threads(nt > 1 ? nt : 2);
    CHECK_OK(lt_quantize(&q2, &w, LT_QUANT_NF4, 64, 1));
    CHECK(memcmp(lt_tensor_data(&q1.packed), lt_tensor_data(&q2.packed), 300 * 350) == 0);
    CHECK(memcmp(lt_tensor_data(&q1.absmax), lt_tensor_data(&q2.absmax), 300 * 700 / 64 + 1) == 0);
    CHECK_OK(lt_quant_linear_forward(&y1, &x, &q1, 0.0f, 0.0f));
    lt_set_num_threads(1);
    CHECK_OK(lt_quant_linear_forward(&y2, &x, &q1, 0.0f, 0.0f));
    lt_set_num_threads(nt);
    double maxd = 0.0;
    for (int64_t i = 0; i < 40 * 300; i++)
        maxd = fmax(maxd, fabs(fp(&y1)[i] - fp(&y2)[i]));
    CHECK(maxd < 1e-4);
    lt_quant_state_release(&q1);
    lt_quant_state_release(&q2);
    lt_tensor_release(&w);
    lt_tensor_release(&x);
    lt_tensor_release(&y1);
    lt_tensor_release(&y2);
}

int main(void) {
    lt_rng_seed(&rng, 20240917);
    test_codebooks();
    test_codes();
    test_nonfinite();
    test_dequantize();
    test_double_quant();
    test_nbytes();
    test_int8();
    test_linear();
    test_int8_linear();
    test_linear_memory();
    test_state_init();
    test_threads();
    lt_memory_stats st;
    lt_memory_get_stats(LT_DEVICE_CPU, 0, &st);
    CHECK(st.current_bytes == 0); /* every tensor and scratch buffer released */
    if (st.current_bytes) fprintf(stderr, "leaked %lld bytes\n", (long long)st.current_bytes);
    return check_summary();
}
