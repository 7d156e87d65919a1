/* quant.c - blockwise 4-bit (NF4, FP4) and row-wise int8 quantization, in bitsandbytes'
 * layout so that its checkpoints load as they are (see lt_quant.h for the layout).
 *
 * What is matched, and where bitsandbytes' own backends disagree:
 *   - Codes: the nearest code, with the boundaries of the CUDA kernel's decision trees.
 *     NF4's (dQuantizeNF4) are 16-digit decimals of the exact midpoints between adjacent
 *     codes; read as f32 each is one of the two floats nearest its midpoint, and four of them
 *     are one ulp from the torch backend's bounds (a + b) / 2, whose exact ties round to
 *     even. FP4's (dQuantizeFP4) are shorter decimals, up to 14 ulp from the midpoints. The
 *     backends thus differ only for values exactly at (or a few ulp around) a boundary.
 *   - Scaling: x = w * (1/absmax) in f32, as both backends do. Where 1/absmax overflows (a
 *     block whose absmax is below ~2.9e-39) we divide instead; bitsandbytes' CUDA kernel
 *     multiplies by inf there and turns zeros into NaN.
 *   - An all-zero block gets the code of 0.0 (NF4 7, FP4 0), as the torch backend does; the
 *     CUDA kernel computes 0 * inf = NaN and stores NF4 code 0 (-1.0), which dequantizes to
 *     -0.0 all the same.
 *   - An odd element count pads the last low nibble with the code of 0.0.
 *   - Double quantization: offset = mean(absmax) (summed in f64, rounded to f32), then
 *     absmax - offset quantized in blocks of 256 to the nearest entry of the signed dynamic
 *     map by its f32 midpoints (the torch backend's rule; the CUDA binary search breaks an
 *     exact midpoint tie upwards on one side), with an f32 absmax per nested block.
 *   - int8 (LLM.int8 weight format): per row s = max|w|, q = round-half-even(w * (127/s)).
 */
#include <stddef.h>
#include <stdlib.h>

#include "core/internal.h"
#include "lt_quant.h"
#include "ops/quant_internal.h"
#include "ops/support.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* bitsandbytes' NF4 code book (get_4bit_type("nf4"), from create_normal_map(0.9677083,
   use_extra_value=True)): normal quantiles scaled to [-1, 1], 8 negative, 0, 7 positive.
   test_quant.c derives these values from the normal inverse CDF. */
static const float nf4_code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

/* FP4 as bitsandbytes encodes it: bit 3 is the sign, bits 2..0 a 2-bit exponent and 1-bit
   mantissa whose magnitudes are, in code order, 0, 0.0625, 8, 12, 4, 6, 2, 3, all divided
   by 12 (get_4bit_type("fp4")). Code 8 is +0.0 there, not -0.0 (the Python list holds the
   integer -0). */
static const float fp4_raw[16] = {0.0f, 0.0625f,  8.0f,  12.0f,  4.0f,  6.0f,  2.0f,  3.0f,
                                  0.0f, -0.0625f, -8.0f, -12.0f, -4.0f, -6.0f, -2.0f, -3.0f};

/* dQuantizeNF4's thresholds between codes k and k + 1, as f32 (see the top of the file). */
const float lt_quant_nf4_bounds[15] = {
    -0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f,   -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,    0.3893125355243683f,
    0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f};

/* dQuantizeFP4's thresholds on |x| between the magnitudes in increasing order, and the
   3-bit code of each magnitude rank (0, 0.0052, 0.1667, 0.25, 0.3333, 0.5, 0.6667, 1). */
const float lt_quant_fp4_bounds[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                    0.4166667f,  0.583333f,  0.8333333f};
const uint8_t lt_quant_fp4_rank_code[8] = {0x0, 0x1, 0x6, 0x7, 0x4, 0x5, 0x2, 0x3};

enum { NESTED_BLOCKSIZE = LT_QUANT_NESTED_BLOCKSIZE, MAX_BLOCKSIZE = 4096, ROW_CHUNK = 1024 };

static const char *type_name(int type) {
    switch (type) {
    case LT_QUANT_NF4: return "nf4";
    case LT_QUANT_FP4: return "fp4";
    case LT_QUANT_INT8: return "int8";
    default: return "none";
    }
}

static int is_4bit(int type) { return type == LT_QUANT_NF4 || type == LT_QUANT_FP4; }

int lt_quant_codebook(int type, float *out16) {
    if (!out16) return lt_fail(LT_ERR_ARG, "lt_quant_codebook: out16 is NULL");
    if (type == LT_QUANT_NF4) {
        memcpy(out16, nf4_code, sizeof nf4_code);
        return LT_OK;
    }
    if (type == LT_QUANT_FP4) {
        for (int i = 0; i < 16; i++)
            out16[i] = fp4_raw[i] / 12.0f;
        return LT_OK;
    }
    return lt_fail(LT_ERR_ARG,
                   "lt_quant_codebook: type %d has no 16-value code book (LT_QUANT_NF4 = 1 or "
                   "LT_QUANT_FP4 = 2)",
                   type);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* create_dynamic_map(signed, max_exponent_bits=7, total_bits=8): for i = 0..6 the midpoints
   of linspace(0.1, 1, k + 1) scaled by 10^(i-6), k = 2^i with both signs (signed) or
   k = 2^(i+1) positive only (unsigned): 254 values either way; then 0 and 1, sorted. */
static void dynamic_map(float *out256, int is_signed) {
    static const double scale[7] = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};
    double v[256];
    int n = 0;
    for (int i = 0; i < 7; i++) {
        int m = is_signed ? 1 << i : 2 << i;
        for (int k = 0; k < m; k++) {
            double b0 = 0.1 + 0.9 * k / m, b1 = 0.1 + 0.9 * (k + 1) / m;
            double mid = scale[i] * (b0 + b1) / 2;
            v[n++] = mid;
            if (is_signed) v[n++] = -mid;
        }
    }
    v[n++] = 0.0;
    v[n++] = 1.0;
    qsort(v, 256, sizeof v[0], cmp_double);
    for (int i = 0; i < 256; i++)
        out256[i] = (float)v[i];
}

int lt_quant_dynamic_map(float *out256) {
    if (!out256) return lt_fail(LT_ERR_ARG, "lt_quant_dynamic_map: out256 is NULL");
    dynamic_map(out256, 1);
    return LT_OK;
}

int lt_quant_dynamic_map_unsigned(float *out256) {
    if (!out256) return lt_fail(LT_ERR_ARG, "lt_quant_dynamic_map_unsigned: out256 is NULL");
    dynamic_map(out256, 0);
    return LT_OK;
}

/* ---- encoding ------------------------------------------------------------------------- */

/* The f32 midpoint of two codes, (a + b) / 2 rounded once. */
static float midpoint_f32(float a, float b) { return (float)(((double)a + (double)b) * 0.5); }

/* x (n) -> codes (n): nearest code, a value at a boundary taking the lower one. */
static void encode_nf4(uint8_t *codes, const float *x, int n) {
    for (int j = 0; j < n; j++) {
        int c = 0;
        for (int k = 0; k < 15; k++)
            c += x[j] > lt_quant_nf4_bounds[k];
        codes[j] = (uint8_t)c;
    }
}

static void encode_fp4(uint8_t *codes, const float *x, int n) {
    for (int j = 0; j < n; j++) {
        float a = fabsf(x[j]);
        int r = 0;
        for (int k = 0; k < 7; k++)
            r += a > lt_quant_fp4_bounds[k];
        codes[j] = (uint8_t)(lt_quant_fp4_rank_code[r] | (x[j] < 0.0f ? 0x8 : 0x0));
    }
}

/* Scale a block into [-1, 1]: x = v * (1/amax), dividing where 1/amax overflows. */
static void normalise(float *x, const float *v, int n, float amax) {
    if (amax == 0.0f) {
        for (int j = 0; j < n; j++)
            x[j] = 0.0f;
        return;
    }
    float inv = 1.0f / amax;
    if (isinf(inv)) {
        for (int j = 0; j < n; j++)
            x[j] = v[j] / amax;
    } else {
        for (int j = 0; j < n; j++)
            x[j] = v[j] * inv;
    }
}

/* Position of the first non-finite value of v (n), or -1. */
static int first_nonfinite(const float *v, int n) {
    for (int j = 0; j < n; j++)
        if (!isfinite(v[j])) return j;
    return -1;
}

int lt_quant_fail_nonfinite(const lt_tensor *w, int64_t flat, float value) {
    const char *what = isnan(value) ? "NaN" : (value > 0 ? "inf" : "-inf");
    if (w->ndim == 2) {
        int64_t cols = w->sizes[1];
        return lt_fail(LT_ERR_ARG,
                       "lt_quantize: weight element (%lld, %lld) (0-based; flat index %lld) is "
                       "%s; quantization needs finite values",
                       (long long)(flat / cols), (long long)(flat % cols), (long long)flat, what);
    }
    return lt_fail(LT_ERR_ARG,
                   "lt_quantize: weight element %lld (0-based) is %s; quantization needs finite "
                   "values",
                   (long long)flat, what);
}

/* ---- state helpers ---------------------------------------------------------------------- */

void lt_quant_state_release(lt_quant_state *q) {
    if (!q) return;
    lt_tensor_release(&q->packed);
    lt_tensor_release(&q->absmax);
    lt_tensor_release(&q->absmax2);
    lt_tensor_release(&q->code);
    lt_tensor_release(&q->nested_code);
    memset(q, 0, sizeof *q);
}

int lt_quant_check_state(const lt_quant_state *q, const char *op) {
    if (!q) return lt_fail(LT_ERR_ARG, "%s: the quantization state is NULL", op);
    if (!is_4bit(q->type) && q->type != LT_QUANT_INT8)
        return lt_fail(LT_ERR_ARG,
                       "%s: the quantization state is empty or released (type %d); quantize "
                       "or load a weight first",
                       op, q->type);
    if (!q->packed.storage || !q->absmax.storage || (is_4bit(q->type) && !q->code.storage) ||
        (q->double_quant && (!q->absmax2.storage || !q->nested_code.storage)))
        return LT_INTERNAL("%s: a %s quantization state lacks one of its tensors", op,
                           type_name(q->type));
    /* lt_quantize, lt_quant_state_init and lt_quant_state_to keep every piece on one
       device; a state assembled by hand might not */
    const lt_tensor *pieces[4] = {&q->absmax, &q->code, &q->absmax2, &q->nested_code};
    for (int i = 0; i < 4; i++)
        if (pieces[i]->storage &&
            lt_check_same_device(pieces[i], &q->packed, op, "a piece of the quantization state",
                                 "its packed codes") != LT_OK)
            return LT_ERR_DEVICE;
    return LT_OK;
}

int lt_quant_check_cpu(const lt_quant_state *q, const char *op) {
    if (q->packed.storage->device_type != LT_DEVICE_CPU)
        return lt_fail(LT_ERR_DEVICE,
                       "%s: the quantized weight is on a CUDA device; this kernel "
                       "runs on the CPU",
                       op);
    return LT_OK;
}

static int64_t numel_of(const lt_quant_state *q) { return lt_quant_rows(q) * lt_quant_cols(q); }

static int64_t nblocks_of(const lt_quant_state *q) {
    if (q->type == LT_QUANT_INT8) return lt_quant_rows(q);
    int64_t n = numel_of(q);
    return (n + q->blocksize - 1) / q->blocksize;
}

void lt_quant_decoder_init(lt_quant_decoder *d, const lt_quant_state *q) {
    memset(d, 0, offsetof(lt_quant_decoder, pair));
    d->type = q->type;
    d->cols = lt_quant_cols(q);
    d->blocksize = q->blocksize;
    d->packed = lt_tensor_data(&q->packed);
    if (q->double_quant) {
        d->absmax_q = lt_tensor_data(&q->absmax);
        d->absmax2 = lt_tensor_data(&q->absmax2);
        d->nested_code = lt_tensor_data(&q->nested_code);
        d->nested_blocksize = q->nested_blocksize;
        d->offset = (float)q->offset;
    } else {
        d->absmax = lt_tensor_data(&q->absmax);
    }
    if (is_4bit(q->type)) {
        const float *code = lt_tensor_data(&q->code);
        for (int b = 0; b < 256; b++) {
            d->pair[2 * b] = code[b >> 4];
            d->pair[2 * b + 1] = code[b & 15];
        }
    }
}

/* The scale of 4-bit block b. Under double quantization each step rounds to f32: the
   product is stored through a volatile so that it is not fused with the add. */
static inline float block_scale(const lt_quant_decoder *d, int64_t b) {
    if (!d->absmax_q) return d->absmax[b];
    volatile float prod = d->nested_code[d->absmax_q[b]] * d->absmax2[b / d->nested_blocksize];
    return prod + d->offset;
}

void lt_quant_dequant_span(float *dst, const lt_quant_decoder *d, int64_t e0, int64_t n) {
    if (n <= 0) return;
    if (d->type == LT_QUANT_INT8) {
        const int8_t *p = d->packed;
        int64_t cols = d->cols, e = e0, end = e0 + n;
        while (e < end) {
            int64_t r = e / cols, stop = (r + 1) * cols < end ? (r + 1) * cols : end;
            float scale = d->absmax[r] * (1.0f / 127.0f);
            for (int64_t i = e; i < stop; i++)
                dst[i - e0] = (float)p[i] * scale;
            e = stop;
        }
        return;
    }
    const uint8_t *p = d->packed;
    const float *pair = d->pair;
    int64_t bs = d->blocksize, e = e0, end = e0 + n;
    while (e < end) {
        int64_t blk = e / bs, stop = (blk + 1) * bs < end ? (blk + 1) * bs : end;
        float s = block_scale(d, blk);
        float *o = dst + (e - e0);
        int64_t i = e;
        if (i & 1) { /* a span starting on a low nibble */
            *o++ = pair[2 * p[i >> 1] + 1] * s;
            i++;
        }
        for (; i + 1 < stop; i += 2, o += 2) {
            const float *pr = pair + 2 * p[i >> 1];
            o[0] = pr[0] * s;
            o[1] = pr[1] * s;
        }
        if (i < stop) *o = pair[2 * p[i >> 1]] * s;
        e = stop;
    }
}

void lt_quant_dequant_rows_f32(float *dst, const lt_quant_state *q, int64_t row0, int64_t nrows) {
    int64_t cols = lt_quant_cols(q);
    lt_quant_decoder d;
    lt_quant_decoder_init(&d, q);
#pragma omp parallel for schedule(static) if (nrows * cols >= LT_PAR_MIN_WORK && nrows > 1)
    for (int64_t r = 0; r < nrows; r++)
        lt_quant_dequant_span(dst + r * cols, &d, (row0 + r) * cols, cols);
}

/* ---- quantization ------------------------------------------------------------------------ */

static int new_1d(lt_tensor *t, int dtype, int64_t n) {
    return lt_tensor_empty(t, dtype, 1, &n, LT_DEVICE_CPU, 0);
}

float lt_quant_absmax_mean(const float *amax, int64_t nb) {
    double sum = 0.0;
    for (int64_t i = 0; i < nb; i++)
        sum += amax[i];
    return nb > 0 ? (float)(sum / (double)nb) : 0.0f;
}

void lt_quant_nested_bounds(float *bounds255, const float *map256) {
    for (int k = 0; k < 255; k++)
        bounds255[k] = midpoint_f32(map256[k], map256[k + 1]);
}

/* absmax_f32 (nb) -> double-quantized pieces of s. */
static int double_quantize(lt_quant_state *s, const float *amax, int64_t nb) {
    float offset = lt_quant_absmax_mean(amax, nb);
    int64_t nb2 = (nb + NESTED_BLOCKSIZE - 1) / NESTED_BLOCKSIZE;
    LT_TRY(new_1d(&s->absmax2, LT_DTYPE_F32, nb2));
    LT_TRY(new_1d(&s->nested_code, LT_DTYPE_F32, 256));
    lt_tensor aq = {0};
    LT_TRY(new_1d(&aq, LT_DTYPE_U8, nb));
    float *map = lt_tensor_data(&s->nested_code), *a2 = lt_tensor_data(&s->absmax2);
    uint8_t *codes = lt_tensor_data(&aq);
    lt_quant_dynamic_map(map);
    /* bounds[k]: f32 midpoint between map[k] and map[k + 1]; code = #bounds below x */
    float bounds[255];
    lt_quant_nested_bounds(bounds, map);
#pragma omp parallel for schedule(static) if (nb >= LT_PAR_MIN_WORK)
    for (int64_t c = 0; c < nb2; c++) {
        int64_t lo = c * NESTED_BLOCKSIZE,
                n = nb - lo < NESTED_BLOCKSIZE ? nb - lo : NESTED_BLOCKSIZE;
        float v[NESTED_BLOCKSIZE], x[NESTED_BLOCKSIZE], m = 0.0f;
        for (int64_t j = 0; j < n; j++) {
            v[j] = amax[lo + j] - offset;
            m = fmaxf(m, fabsf(v[j]));
        }
        a2[c] = m;
        normalise(x, v, (int)n, m);
        for (int64_t j = 0; j < n; j++) {
            int left = 0, right = 255; /* first k with bounds[k] >= x */
            while (left < right) {
                int mid = (left + right) / 2;
                if (bounds[mid] < x[j])
                    left = mid + 1;
                else
                    right = mid;
            }
            codes[lo + j] = (uint8_t)left;
        }
    }
    lt_tensor_release(&s->absmax);
    s->absmax = aq;
    s->offset = offset;
    s->double_quant = 1;
    s->nested_blocksize = NESTED_BLOCKSIZE;
    return LT_OK;
}

/* w (n) contiguous float dtype -> the 4-bit pieces of s. */
static int quantize_4bit(lt_quant_state *s, const lt_tensor *w, int type, int bs) {
    int64_t n = lt_tensor_numel(w), nb = (n + bs - 1) / bs;
    LT_TRY(new_1d(&s->packed, LT_DTYPE_U8, (n + 1) / 2));
    LT_TRY(new_1d(&s->absmax, LT_DTYPE_F32, nb));
    LT_TRY(new_1d(&s->code, LT_DTYPE_F32, 16));
    LT_TRY(lt_quant_codebook(type, lt_tensor_data(&s->code)));
    const char *src = lt_tensor_data(w);
    int esz = lt_dtype_size(w->dtype_id), dtype = w->dtype_id;
    uint8_t *packed = lt_tensor_data(&s->packed);
    float *amax = lt_tensor_data(&s->absmax);
    uint8_t zero_code = type == LT_QUANT_NF4 ? 7 : 0;
    int64_t first_bad = n;
#pragma omp parallel for schedule(static) reduction(min : first_bad) if (n >= LT_PAR_MIN_WORK)
    for (int64_t b = 0; b < nb; b++) {
        float v[MAX_BLOCKSIZE], x[MAX_BLOCKSIZE];
        uint8_t codes[MAX_BLOCKSIZE];
        int64_t lo = b * bs;
        int len = (int)(n - lo < bs ? n - lo : bs);
        lt_convert_to_f32(v, src + lo * esz, dtype, len);
        int bad = first_nonfinite(v, len);
        if (bad >= 0) {
            if (lo + bad < first_bad) first_bad = lo + bad;
            continue;
        }
        float m = 0.0f;
        for (int j = 0; j < len; j++)
            m = fmaxf(m, fabsf(v[j]));
        amax[b] = m;
        normalise(x, v, len, m);
        if (type == LT_QUANT_NF4)
            encode_nf4(codes, x, len);
        else
            encode_fp4(codes, x, len);
        /* blocks start on even elements (bs is even), so each owns whole bytes */
        for (int j = 0; j < len; j += 2) {
            uint8_t hi = codes[j], lo4 = j + 1 < len ? codes[j + 1] : zero_code;
            packed[(lo + j) / 2] = (uint8_t)(hi << 4 | lo4);
        }
    }
    if (first_bad < n) {
        float v;
        lt_convert_to_f32(&v, src + first_bad * esz, dtype, 1);
        return lt_quant_fail_nonfinite(w, first_bad, v);
    }
    return LT_OK;
}

/* w (rows, cols) contiguous float dtype -> int8 pieces of s. */
static int quantize_int8(lt_quant_state *s, const lt_tensor *w, int64_t rows, int64_t cols) {
    int64_t sizes[2] = {rows, cols};
    if (w->ndim == 1) {
        LT_TRY(lt_tensor_empty(&s->packed, LT_DTYPE_I8, 1, &cols, LT_DEVICE_CPU, 0));
    } else {
        LT_TRY(lt_tensor_empty(&s->packed, LT_DTYPE_I8, 2, sizes, LT_DEVICE_CPU, 0));
    }
    LT_TRY(new_1d(&s->absmax, LT_DTYPE_F32, rows));
    const char *src = lt_tensor_data(w);
    int esz = lt_dtype_size(w->dtype_id), dtype = w->dtype_id;
    int8_t *packed = lt_tensor_data(&s->packed);
    float *amax = lt_tensor_data(&s->absmax);
    int64_t n = rows * cols, first_bad = n;
#pragma omp parallel for schedule(static) reduction(min : first_bad) if (n >= LT_PAR_MIN_WORK)
    for (int64_t r = 0; r < rows; r++) {
        float v[ROW_CHUNK];
        const char *row = src + r * cols * esz;
        float m = 0.0f;
        int ok = 1;
        for (int64_t c0 = 0; c0 < cols && ok; c0 += ROW_CHUNK) {
            int len = (int)(cols - c0 < ROW_CHUNK ? cols - c0 : ROW_CHUNK);
            lt_convert_to_f32(v, row + c0 * esz, dtype, len);
            int bad = first_nonfinite(v, len);
            if (bad >= 0) {
                if (r * cols + c0 + bad < first_bad) first_bad = r * cols + c0 + bad;
                ok = 0;
            }
            for (int j = 0; j < len; j++)
                m = fmaxf(m, fabsf(v[j]));
        }
        if (!ok) continue;
        amax[r] = m;
        float scale = m > 0.0f ? 127.0f / m : 0.0f;
        int exact = isfinite(scale);
        for (int64_t c0 = 0; c0 < cols; c0 += ROW_CHUNK) {
            int len = (int)(cols - c0 < ROW_CHUNK ? cols - c0 : ROW_CHUNK);
            lt_convert_to_f32(v, row + c0 * esz, dtype, len);
            for (int j = 0; j < len; j++) {
                float t = exact ? rintf(v[j] * scale) : rintf(v[j] / m * 127.0f);
                t = t > 127.0f ? 127.0f : (t < -127.0f ? -127.0f : t);
                packed[r * cols + c0 + j] = (int8_t)t;
            }
        }
    }
    if (first_bad < n) {
        float v;
        lt_convert_to_f32(&v, src + first_bad * esz, dtype, 1);
        return lt_quant_fail_nonfinite(w, first_bad, v);
    }
    return LT_OK;
}

int lt_quantize(lt_quant_state *q, const lt_tensor *w, int type, int blocksize, int double_quant) {
    const char *op = "lt_quantize";
    if (!q) return lt_fail(LT_ERR_ARG, "%s: the state q is NULL", op);
    LT_TRY(lt_op_check_dtype(LT_OP_QUANTIZE, LT_OP_ROLE_MAIN, w, op, "weight"));
    if (w->ndim != 1 && w->ndim != 2) {
        char b[128];
        return lt_fail(LT_ERR_SHAPE, "%s: the weight must have 1 or 2 dims, got shape %s", op,
                       lt_shape_str(w, b, sizeof b));
    }
    if (is_4bit(type)) {
        if (blocksize < 32 || blocksize > MAX_BLOCKSIZE || (blocksize & (blocksize - 1)))
            return lt_fail(LT_ERR_ARG,
                           "%s: blocksize %d is not a power of two in 32..4096 (bitsandbytes "
                           "uses 64)",
                           op, blocksize);
        if (double_quant != 0 && double_quant != 1)
            return lt_fail(LT_ERR_ARG, "%s: double_quant must be 0 or 1, got %d", op, double_quant);
    } else if (type == LT_QUANT_INT8) {
        if (blocksize != 0 || double_quant != 0)
            return lt_fail(LT_ERR_ARG,
                           "%s: int8 is row-wise: blocksize and double_quant must be 0, got %d "
                           "and %d",
                           op, blocksize, double_quant);
    } else {
        return lt_fail(LT_ERR_ARG,
                       "%s: unknown quantization type %d (LT_QUANT_NF4 = 1, "
                       "LT_QUANT_FP4 = 2, LT_QUANT_INT8 = 3)",
                       op, type);
    }
    /* the state's buffers live where the weight lives */
    LT_DISPATCH_CUDA(w, lt_cuda_quantize(q, w, type, blocksize, double_quant));
    LT_TRY(lt_check_cpu(w, op, "weight"));
    lt_quant_state s;
    memset(&s, 0, sizeof s);
    s.type = type;
    s.blocksize = is_4bit(type) ? blocksize : 0;
    s.orig_dtype = w->dtype_id;
    s.ndim = w->ndim;
    for (int i = 0; i < w->ndim; i++)
        s.sizes[i] = w->sizes[i];
    lt_tensor wc = {0};
    int st = lt_tensor_contiguous(&wc, w, -1);
    if (st == LT_OK) {
        if (is_4bit(type)) {
            st = quantize_4bit(&s, &wc, type, blocksize);
            if (st == LT_OK && double_quant) {
                int64_t nb = lt_tensor_numel(&s.absmax);
                st = double_quantize(&s, lt_tensor_data(&s.absmax), nb);
            }
        } else {
            st = quantize_int8(&s, &wc, lt_quant_rows(&s), lt_quant_cols(&s));
        }
    }
    lt_tensor_release(&wc);
    if (st != LT_OK) {
        lt_quant_state_release(&s);
        return st;
    }
    lt_quant_state_release(q);
    *q = s;
    return LT_OK;
}

/* ---- assembling a stored state ------------------------------------------------------------ */

static int check_piece(const lt_tensor *t, const char *name, int dtype, int64_t numel) {
    const char *op = "lt_quant_state_init";
    LT_TRY(lt_check_cpu(t, op, name));
    if (t->dtype_id != dtype)
        return lt_fail(LT_ERR_DTYPE, "%s: %s must be %s, got %s", op, name,
                       lt_dtype_info(dtype)->name, lt_dtype_info(t->dtype_id)->name);
    if (!lt_tensor_is_contiguous(t))
        return lt_fail(LT_ERR_ARG, "%s: %s must be contiguous", op, name);
    if (lt_tensor_numel(t) != numel) {
        char b[128];
        return lt_fail(
            LT_ERR_SHAPE, "%s: %s has %lld elements (shape %s) but the weight needs %lld", op, name,
            (long long)lt_tensor_numel(t), lt_shape_str(t, b, sizeof b), (long long)numel);
    }
    return LT_OK;
}

static int check_finite(const lt_tensor *t, const char *name) {
    const float *p = lt_tensor_data(t);
    int64_t n = lt_tensor_numel(t);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(p[i]))
            return lt_fail(LT_ERR_RANGE, "lt_quant_state_init: %s[%lld] is %g; it must be finite",
                           name, (long long)i, (double)p[i]);
    return LT_OK;
}

int lt_quant_state_init(lt_quant_state *q, int type, int blocksize, int ndim, const int64_t *sizes,
                        int orig_dtype, const lt_tensor *packed, const lt_tensor *absmax,
                        const lt_tensor *code, const lt_tensor *absmax2,
                        const lt_tensor *nested_code, double offset) {
    const char *op = "lt_quant_state_init";
    if (!q) return lt_fail(LT_ERR_ARG, "%s: the state q is NULL", op);
    if (!is_4bit(type) && type != LT_QUANT_INT8)
        return lt_fail(LT_ERR_ARG, "%s: unknown quantization type %d", op, type);
    if ((ndim != 1 && ndim != 2) || !sizes)
        return lt_fail(LT_ERR_SHAPE, "%s: the weight must have 1 or 2 dims, got %d", op, ndim);
    for (int i = 0; i < ndim; i++)
        if (sizes[i] < 0)
            return lt_fail(LT_ERR_SHAPE, "%s: negative size %lld in dim %d", op,
                           (long long)sizes[i], i);
    if (!lt_is_float_dtype(orig_dtype))
        return lt_fail(LT_ERR_DTYPE, "%s: the original dtype must be f32, bf16 or f16, got %d", op,
                       orig_dtype);
    int64_t n;
    LT_TRY(lt_numel_checked(ndim, sizes, &n));
    lt_quant_state s;
    memset(&s, 0, sizeof s);
    s.type = type;
    s.ndim = ndim;
    s.orig_dtype = orig_dtype;
    for (int i = 0; i < ndim; i++)
        s.sizes[i] = sizes[i];
    if (type == LT_QUANT_INT8) {
        if (blocksize != 0 || absmax2 || nested_code || code)
            return lt_fail(LT_ERR_ARG,
                           "%s: int8 is row-wise: blocksize must be 0 and code, absmax2, "
                           "nested_code NULL",
                           op);
        LT_TRY(check_piece(packed, "packed", LT_DTYPE_I8, n));
        LT_TRY(check_piece(absmax, "absmax", LT_DTYPE_F32, lt_quant_rows(&s)));
        LT_TRY(check_finite(absmax, "absmax"));
    } else {
        if (blocksize < 32 || blocksize > MAX_BLOCKSIZE || (blocksize & (blocksize - 1)))
            return lt_fail(LT_ERR_ARG, "%s: blocksize %d is not a power of two in 32..4096", op,
                           blocksize);
        s.blocksize = blocksize;
        int64_t nb = (n + blocksize - 1) / blocksize;
        int dq = absmax2 != NULL || nested_code != NULL;
        if (dq && (!absmax2 || !nested_code))
            return lt_fail(LT_ERR_ARG,
                           "%s: double quantization needs both absmax2 (nested_absmax) and "
                           "nested_code (nested_quant_map)",
                           op);
        LT_TRY(check_piece(packed, "packed", LT_DTYPE_U8, (n + 1) / 2));
        LT_TRY(check_piece(code, "code", LT_DTYPE_F32, 16));
        float book[16];
        lt_quant_codebook(type, book);
        const float *c = lt_tensor_data(code);
        for (int i = 0; i < 16; i++)
            if (c[i] != book[i])
                return lt_fail(LT_ERR_FORMAT,
                               "%s: code[%d] is %.9g but the %s code book has %.9g there (a "
                               "quant_map of another type?)",
                               op, i, (double)c[i], type_name(type), (double)book[i]);
        if (dq) {
            LT_TRY(check_piece(absmax, "absmax", LT_DTYPE_U8, nb));
            int64_t nb2 = (nb + NESTED_BLOCKSIZE - 1) / NESTED_BLOCKSIZE;
            LT_TRY(check_piece(absmax2, "absmax2", LT_DTYPE_F32, nb2));
            LT_TRY(check_piece(nested_code, "nested_code", LT_DTYPE_F32, 256));
            LT_TRY(check_finite(absmax2, "absmax2"));
            LT_TRY(check_finite(nested_code, "nested_code"));
            if (!isfinite(offset))
                return lt_fail(LT_ERR_RANGE,
                               "%s: the double-quantization offset is %g; it must "
                               "be finite",
                               op, offset);
            s.double_quant = 1;
            s.nested_blocksize = NESTED_BLOCKSIZE;
            s.offset = (double)(float)offset;
        } else {
            LT_TRY(check_piece(absmax, "absmax", LT_DTYPE_F32, nb));
            LT_TRY(check_finite(absmax, "absmax"));
        }
    }
    int st = lt_tensor_share(&s.packed, packed);
    if (st == LT_OK) st = lt_tensor_share(&s.absmax, absmax);
    if (st == LT_OK && code) st = lt_tensor_share(&s.code, code);
    if (st == LT_OK && s.double_quant) st = lt_tensor_share(&s.absmax2, absmax2);
    if (st == LT_OK && s.double_quant) st = lt_tensor_share(&s.nested_code, nested_code);
    if (st != LT_OK) {
        lt_quant_state_release(&s);
        return st;
    }
    lt_quant_state_release(q);
    *q = s;
    return LT_OK;
}

/* ---- dequantization and accounting ------------------------------------------------------ */

/* out must be a writable contiguous tensor of a dtype the support table takes (any float
   dtype), on the quantized weight's device. */
static int check_float_out(const lt_tensor *out, const lt_quant_state *q, const char *op) {
    LT_TRY(lt_op_check_out(LT_OP_DEQUANTIZE, out, op, "out", &q->packed, "the quantized weight"));
    if (!lt_tensor_is_contiguous(out)) return lt_fail(LT_ERR_ARG, "%s: out must be contiguous", op);
    return LT_OK;
}

/* dst (n elements of dtype) = weight elements [e0, e0 + n), in parallel chunks. */
static void dequant_into(void *dst, int dtype, const lt_quant_state *q, int64_t e0, int64_t n) {
    enum { CHUNK = 4096 };
    int esz = lt_dtype_size(dtype);
    lt_quant_decoder d;
    lt_quant_decoder_init(&d, q);
    int64_t nchunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (n >= LT_PAR_MIN_WORK)
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t lo = c * CHUNK, len = n - lo < CHUNK ? n - lo : CHUNK;
        if (dtype == LT_DTYPE_F32) {
            lt_quant_dequant_span((float *)dst + lo, &d, e0 + lo, len);
        } else {
            float buf[CHUNK];
            lt_quant_dequant_span(buf, &d, e0 + lo, len);
            lt_convert_from_f32((char *)dst + lo * esz, dtype, buf, len);
        }
    }
}

int lt_dequantize(lt_tensor *out, const lt_quant_state *q) {
    const char *op = "lt_dequantize";
    LT_TRY(lt_quant_check_state(q, op));
    LT_TRY(check_float_out(out, q, op));
    int same = out->ndim == q->ndim;
    for (int i = 0; same && i < q->ndim; i++)
        same = out->sizes[i] == q->sizes[i];
    if (!same) {
        char b[128];
        if (q->ndim == 2)
            return lt_fail(LT_ERR_SHAPE, "%s: out has shape %s but the weight is (%lld, %lld)", op,
                           lt_shape_str(out, b, sizeof b), (long long)q->sizes[0],
                           (long long)q->sizes[1]);
        return lt_fail(LT_ERR_SHAPE, "%s: out has shape %s but the weight is (%lld)", op,
                       lt_shape_str(out, b, sizeof b), (long long)q->sizes[0]);
    }
    LT_DISPATCH_CUDA(out, lt_cuda_dequantize(out, q));
    LT_TRY(lt_quant_check_cpu(q, op));
    dequant_into(lt_tensor_data(out), out->dtype_id, q, 0, numel_of(q));
    return LT_OK;
}

int lt_dequantize_rows(lt_tensor *out, const lt_quant_state *q, int64_t row0) {
    const char *op = "lt_dequantize_rows";
    LT_TRY(lt_quant_check_state(q, op));
    LT_TRY(check_float_out(out, q, op));
    int64_t rows = lt_quant_rows(q), cols = lt_quant_cols(q);
    int64_t R = out->ndim == 2 ? out->sizes[0] : 1;
    if ((out->ndim != 1 && out->ndim != 2) || out->sizes[out->ndim - 1] != cols) {
        char b[128];
        return lt_fail(LT_ERR_SHAPE,
                       "%s: out has shape %s; it must be (R, %lld) (or (%lld) for one "
                       "row)",
                       op, lt_shape_str(out, b, sizeof b), (long long)cols, (long long)cols);
    }
    if (row0 < 0 || row0 > rows || R > rows - row0)
        return lt_fail(LT_ERR_RANGE, "%s: rows %lld..%lld are outside the weight's %lld rows", op,
                       (long long)row0, (long long)(row0 + R - 1), (long long)rows);
    LT_DISPATCH_CUDA(out, lt_cuda_dequantize_rows(out, q, row0));
    LT_TRY(lt_quant_check_cpu(q, op));
    dequant_into(lt_tensor_data(out), out->dtype_id, q, row0 * cols, R * cols);
    return LT_OK;
}

int lt_quant_absmax(lt_tensor *out, const lt_quant_state *q) {
    const char *op = "lt_quant_absmax";
    LT_TRY(lt_quant_check_state(q, op));
    LT_TRY(lt_check_out(out, LT_OUT_ANY_DTYPE, op, "out", &q->packed, "the quantized weight"));
    int64_t nb = nblocks_of(q);
    if (out->dtype_id != LT_DTYPE_F32 || !lt_tensor_is_contiguous(out) ||
        lt_tensor_numel(out) != nb)
        return lt_fail(LT_ERR_SHAPE,
                       "%s: out must be a contiguous f32 tensor of %lld elements "
                       "(one per block)",
                       op, (long long)nb);
    LT_DISPATCH_CUDA(out, lt_cuda_quant_absmax(out, q));
    LT_TRY(lt_quant_check_cpu(q, op));
    float *o = lt_tensor_data(out);
    if (q->type == LT_QUANT_INT8 || !q->double_quant) {
        memcpy(o, lt_tensor_data(&q->absmax), (size_t)nb * sizeof(float));
        return LT_OK;
    }
    lt_quant_decoder d;
    lt_quant_decoder_init(&d, q);
    for (int64_t b = 0; b < nb; b++)
        o[b] = block_scale(&d, b);
    return LT_OK;
}

static int64_t tensor_bytes(const lt_tensor *t) {
    int64_t n = 0;
    if (!t->storage) return 0;
    if (lt_dtype_nbytes(t->dtype_id, lt_tensor_numel(t), &n) != LT_OK) return 0;
    return n;
}

int64_t lt_quant_nbytes(const lt_quant_state *q) {
    if (!q) return 0;
    return tensor_bytes(&q->packed) + tensor_bytes(&q->absmax) + tensor_bytes(&q->absmax2) +
           tensor_bytes(&q->code) + tensor_bytes(&q->nested_code);
}

/* ---- moving a state between devices ------------------------------------------------------ */

/* dst <- a contiguous copy of src on the device (an empty src stays empty). */
static int copy_piece(lt_tensor *dst, const lt_tensor *src, int device_type, int device_index) {
    if (!src->storage) return LT_OK;
    LT_TRY(lt_tensor_empty(dst, src->dtype_id, src->ndim, src->sizes, device_type, device_index));
    return lt_tensor_copy(dst, src);
}

int lt_quant_state_to(lt_quant_state *dst, const lt_quant_state *src, int device_type,
                      int device_index) {
    const char *op = "lt_quant_state_to";
    if (!dst) return lt_fail(LT_ERR_ARG, "%s: the state dst is NULL", op);
    LT_TRY(lt_quant_check_state(src, op));
    if (device_type != LT_DEVICE_CPU && device_type != LT_DEVICE_CUDA)
        return lt_fail(LT_ERR_ARG, "%s: unknown device type %d (LT_DEVICE_CPU = 0, "
                                   "LT_DEVICE_CUDA = 1)",
                       op, device_type);
    if (device_type == LT_DEVICE_CPU) device_index = 0;
    /* scalars as they are; every tensor copied, so dst may be src */
    lt_quant_state s = *src;
    memset(&s.packed, 0, sizeof s.packed);
    memset(&s.absmax, 0, sizeof s.absmax);
    memset(&s.absmax2, 0, sizeof s.absmax2);
    memset(&s.code, 0, sizeof s.code);
    memset(&s.nested_code, 0, sizeof s.nested_code);
    int st = copy_piece(&s.packed, &src->packed, device_type, device_index);
    if (st == LT_OK) st = copy_piece(&s.absmax, &src->absmax, device_type, device_index);
    if (st == LT_OK) st = copy_piece(&s.absmax2, &src->absmax2, device_type, device_index);
    if (st == LT_OK) st = copy_piece(&s.code, &src->code, device_type, device_index);
    if (st == LT_OK) st = copy_piece(&s.nested_code, &src->nested_code, device_type, device_index);
    if (st != LT_OK) {
        lt_quant_state_release(&s);
        return st;
    }
    lt_quant_state_release(dst);
    *dst = s;
    return LT_OK;
}
