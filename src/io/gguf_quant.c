/* gguf_quant.c - the tensor encodings of GGUF files (llama.cpp's ggml types), written from
 * their block layouts: a row of `cols` f32 values becomes consecutive blocks along the row.
 *
 *   F32, F16, BF16   one value each
 *   Q8_0   32 values: f16 d, int8 q[32]                 x = d * q
 *   Q4_0   32 values: f16 d, u8 q[16] (two codes each)  x = d * (code - 8); value j in the low
 *          nibble of byte j, value j + 16 in its high nibble
 *   Q4_K   256 values: f16 d, f16 dmin, u8 scales[12], u8 q[128]; eight sub-blocks of 32 with
 *          a 6-bit scale s and a 6-bit min m each: x = d * s * code - dmin * m. Each 64 values
 *          share 32 bytes: the first 32 in the low nibbles, the next 32 in the high ones.
 *          scales[0..3] hold s0..s3 (low 6 bits) and s4..s7's top 2 bits; scales[4..7] the
 *          same for the mins; scales[8..11] s4..s7's and m4..m7's low 4 bits.
 *   Q6_K   256 values: u8 ql[128], u8 qh[64], int8 scales[16], f16 d; sixteen sub-blocks of
 *          16 with an 8-bit signed scale: x = d * scale * (code - 32), code 6 bits: its low 4
 *          in ql, its high 2 in qh, interleaved as in the dequantizer below.
 *
 * The quantizers choose the scales by absmax (Q8_0, Q4_0, Q6_K) and min/max (Q4_K), each
 * value rounded to the nearest code; a reader needs only the layout, which the dequantizers
 * here state and the tests check against llama.cpp itself (tests/lua/test_gguf.lua). Rows
 * are independent, so both directions run rows in parallel.
 */
#include <math.h>
#include <string.h>

#include "core/internal.h"
#include "lt_io.h"

#define QK 32
#define QKK 256

/* bytes of one block and values in it, per type; 0 for a type not handled here */
static int block_values(int type) {
    switch (type) {
    case LT_GGUF_F32: case LT_GGUF_F16: case LT_GGUF_BF16: return 1;
    case LT_GGUF_Q8_0: case LT_GGUF_Q4_0: return QK;
    case LT_GGUF_Q4_K: case LT_GGUF_Q6_K: return QKK;
    default: return 0;
    }
}

static int block_bytes(int type) {
    switch (type) {
    case LT_GGUF_F32: return 4;
    case LT_GGUF_F16: case LT_GGUF_BF16: return 2;
    case LT_GGUF_Q8_0: return 2 + QK;
    case LT_GGUF_Q4_0: return 2 + QK / 2;
    case LT_GGUF_Q4_K: return 2 + 2 + 12 + QKK / 2;
    case LT_GGUF_Q6_K: return QKK / 2 + QKK / 4 + QKK / 16 + 2;
    default: return 0;
    }
}

int64_t lt_gguf_row_bytes(int type, int64_t cols) {
    int bv = block_values(type);
    if (bv == 0 || cols < 0 || cols % bv != 0) return -1;
    return cols / bv * block_bytes(type);
}

static inline void put_f16(uint8_t *p, float v) {
    uint16_t h = lt_f32_to_f16_inline(v);
    memcpy(p, &h, 2);
}

static inline float get_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return lt_f16_to_f32_inline(h);
}

static inline int nearest(float x) { return (int)lrintf(x); }

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* ---- one row each way ----------------------------------------------------------------- */

static void q8_0_row(const float *x, uint8_t *out, int64_t cols) {
    for (int64_t b = 0; b < cols / QK; b++, x += QK, out += 2 + QK) {
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f;
        put_f16(out, d);
        d = get_f16(out); /* the codes against the scale the reader sees */
        float id = d != 0 ? 1.0f / d : 0;
        for (int j = 0; j < QK; j++) out[2 + j] = (uint8_t)(int8_t)clampi(nearest(x[j] * id), -127, 127);
    }
}

static void q4_0_row(const float *x, uint8_t *out, int64_t cols) {
    for (int64_t b = 0; b < cols / QK; b++, x += QK, out += 2 + QK / 2) {
        /* the value of largest magnitude maps to code 0 (-8), so its sign sets d's */
        float amax = 0, vmax = 0;
        for (int j = 0; j < QK; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                vmax = x[j];
            }
        float d = vmax / -8.0f;
        put_f16(out, d);
        d = get_f16(out);
        float id = d != 0 ? 1.0f / d : 0;
        for (int j = 0; j < QK / 2; j++) {
            int a = clampi(nearest(x[j] * id) + 8, 0, 15);
            int c = clampi(nearest(x[j + QK / 2] * id) + 8, 0, 15);
            out[2 + j] = (uint8_t)(a | (c << 4));
        }
    }
}

static void q4_k_row(const float *x, uint8_t *out, int64_t cols) {
    for (int64_t b = 0; b < cols / QKK; b++, x += QKK, out += block_bytes(LT_GGUF_Q4_K)) {
        /* per sub-block of 32: step (max - min) / 15 and offset -min, min clamped to <= 0 */
        float step[8], off[8], smax = 0, omax = 0;
        for (int s = 0; s < 8; s++) {
            float lo = 0, hi = -INFINITY;
            for (int j = 0; j < 32; j++) {
                lo = fminf(lo, x[32 * s + j]);
                hi = fmaxf(hi, x[32 * s + j]);
            }
            step[s] = fmaxf(hi - lo, 0) / 15.0f;
            off[s] = -lo;
            smax = fmaxf(smax, step[s]);
            omax = fmaxf(omax, off[s]);
        }
        float d = smax / 63.0f, dmin = omax / 63.0f;
        put_f16(out, d);
        put_f16(out + 2, dmin);
        d = get_f16(out);
        dmin = get_f16(out + 2);
        uint8_t sc[8], mn[8];
        for (int s = 0; s < 8; s++) {
            sc[s] = (uint8_t)(d > 0 ? clampi(nearest(step[s] / d), 0, 63) : 0);
            mn[s] = (uint8_t)(dmin > 0 ? clampi(nearest(off[s] / dmin), 0, 63) : 0);
        }
        uint8_t *scales = out + 4;
        for (int j = 0; j < 4; j++) {
            scales[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
            scales[j + 4] = (uint8_t)((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
            scales[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
        }
        uint8_t *q = out + 16;
        for (int c = 0; c < 4; c++) { /* 64 values: sub-blocks 2c (low nibbles), 2c + 1 (high) */
            for (int half = 0; half < 2; half++) {
                int s = 2 * c + half;
                float ds = d * sc[s], ms = dmin * mn[s];
                float id = ds > 0 ? 1.0f / ds : 0;
                for (int l = 0; l < 32; l++) {
                    int code = clampi(nearest((x[32 * s + l] + ms) * id), 0, 15);
                    if (half == 0) q[32 * c + l] = (uint8_t)code;
                    else q[32 * c + l] |= (uint8_t)(code << 4);
                }
            }
        }
    }
}

static void q6_k_row(const float *x, uint8_t *out, int64_t cols) {
    for (int64_t b = 0; b < cols / QKK; b++, x += QKK, out += block_bytes(LT_GGUF_Q6_K)) {
        uint8_t *ql = out, *qh = out + QKK / 2;
        int8_t *scales = (int8_t *)(out + QKK / 2 + QKK / 4);
        uint8_t *dp = out + QKK / 2 + QKK / 4 + QKK / 16;
        /* per sub-block of 16: the step that maps its absmax to code 31 */
        float step[16], smax = 0;
        for (int s = 0; s < 16; s++) {
            float amax = 0;
            for (int j = 0; j < 16; j++) amax = fmaxf(amax, fabsf(x[16 * s + j]));
            step[s] = amax / 31.0f;
            smax = fmaxf(smax, step[s]);
        }
        float d = smax / 127.0f;
        put_f16(dp, d);
        d = get_f16(dp);
        uint8_t L[QKK];
        for (int s = 0; s < 16; s++) {
            int sc = d > 0 ? clampi(nearest(step[s] / d), 0, 127) : 0;
            scales[s] = (int8_t)sc;
            float ds = d * sc;
            float id = ds > 0 ? 1.0f / ds : 0;
            for (int j = 0; j < 16; j++) L[16 * s + j] = (uint8_t)(clampi(nearest(x[16 * s + j] * id), -32, 31) + 32);
        }
        for (int n = 0; n < QKK; n += 128) {
            for (int l = 0; l < 32; l++) {
                int q1 = L[n + l], q2 = L[n + l + 32], q3 = L[n + l + 64], q4 = L[n + l + 96];
                ql[l] = (uint8_t)((q1 & 15) | ((q3 & 15) << 4));
                ql[l + 32] = (uint8_t)((q2 & 15) | ((q4 & 15) << 4));
                qh[l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
            }
            ql += 64;
            qh += 32;
        }
    }
}

static void q8_0_deq(const uint8_t *in, float *y, int64_t cols) {
    for (int64_t b = 0; b < cols / QK; b++, in += 2 + QK, y += QK) {
        float d = get_f16(in);
        for (int j = 0; j < QK; j++) y[j] = d * (float)(int8_t)in[2 + j];
    }
}

static void q4_0_deq(const uint8_t *in, float *y, int64_t cols) {
    for (int64_t b = 0; b < cols / QK; b++, in += 2 + QK / 2, y += QK) {
        float d = get_f16(in);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = d * (float)((in[2 + j] & 15) - 8);
            y[j + QK / 2] = d * (float)((in[2 + j] >> 4) - 8);
        }
    }
}

static void scale_min_k4(int j, const uint8_t *q, int *s, int *m) {
    if (j < 4) {
        *s = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *s = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

static void q4_k_deq(const uint8_t *in, float *y, int64_t cols) {
    for (int64_t b = 0; b < cols / QKK; b++, in += block_bytes(LT_GGUF_Q4_K)) {
        float d = get_f16(in), dmin = get_f16(in + 2);
        const uint8_t *scales = in + 4, *q = in + 16;
        for (int c = 0; c < 4; c++, q += 32) {
            int s0, m0, s1, m1;
            scale_min_k4(2 * c, scales, &s0, &m0);
            scale_min_k4(2 * c + 1, scales, &s1, &m1);
            for (int l = 0; l < 32; l++) *y++ = d * s0 * (q[l] & 15) - dmin * m0;
            for (int l = 0; l < 32; l++) *y++ = d * s1 * (q[l] >> 4) - dmin * m1;
        }
    }
}

static void q6_k_deq(const uint8_t *in, float *y, int64_t cols) {
    for (int64_t b = 0; b < cols / QKK; b++, in += block_bytes(LT_GGUF_Q6_K)) {
        const uint8_t *ql = in, *qh = in + QKK / 2;
        const int8_t *sc = (const int8_t *)(in + QKK / 2 + QKK / 4);
        float d = get_f16(in + QKK / 2 + QKK / 4 + QKK / 16);
        for (int n = 0; n < QKK; n += 128) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * sc[is] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

/* ---- whole matrices --------------------------------------------------------------------- */

static int check_args(const char *op, int type, int64_t rows, int64_t cols, const void *a, const void *b) {
    if (!a || !b) return lt_fail(LT_ERR_ARG, "%s: NULL buffer", op);
    if (rows < 0 || cols < 0) return lt_fail(LT_ERR_ARG, "%s: negative size (%lld, %lld)", op,
                                            (long long)rows, (long long)cols);
    int bv = block_values(type);
    if (bv == 0) return lt_fail(LT_ERR_UNSUPPORTED, "%s: GGUF tensor type %d is not one luatrain writes", op, type);
    if (cols % bv != 0)
        return lt_fail(LT_ERR_ARG, "%s: rows of %lld values do not split into blocks of %d", op,
                       (long long)cols, bv);
    return LT_OK;
}

int lt_gguf_quantize(int type, const float *src, int64_t rows, int64_t cols, void *dst) {
    LT_TRY(check_args("lt_gguf_quantize", type, rows, cols, src, dst));
    int64_t rb = lt_gguf_row_bytes(type, cols);
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (int64_t r = 0; r < rows; r++) {
        const float *x = src + r * cols;
        uint8_t *o = (uint8_t *)dst + r * rb;
        switch (type) {
        case LT_GGUF_F32: memcpy(o, x, (size_t)cols * 4); break;
        case LT_GGUF_F16:
            for (int64_t j = 0; j < cols; j++) put_f16(o + 2 * j, x[j]);
            break;
        case LT_GGUF_BF16:
            for (int64_t j = 0; j < cols; j++) {
                uint16_t h = lt_f32_to_bf16_inline(x[j]);
                memcpy(o + 2 * j, &h, 2);
            }
            break;
        case LT_GGUF_Q8_0: q8_0_row(x, o, cols); break;
        case LT_GGUF_Q4_0: q4_0_row(x, o, cols); break;
        case LT_GGUF_Q4_K: q4_k_row(x, o, cols); break;
        case LT_GGUF_Q6_K: q6_k_row(x, o, cols); break;
        default: break;
        }
    }
    return LT_OK;
}

int lt_gguf_dequantize(int type, const void *src, int64_t rows, int64_t cols, float *dst) {
    LT_TRY(check_args("lt_gguf_dequantize", type, rows, cols, src, dst));
    int64_t rb = lt_gguf_row_bytes(type, cols);
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *in = (const uint8_t *)src + r * rb;
        float *y = dst + r * cols;
        switch (type) {
        case LT_GGUF_F32: memcpy(y, in, (size_t)cols * 4); break;
        case LT_GGUF_F16:
            for (int64_t j = 0; j < cols; j++) y[j] = get_f16(in + 2 * j);
            break;
        case LT_GGUF_BF16:
            for (int64_t j = 0; j < cols; j++) {
                uint16_t h;
                memcpy(&h, in + 2 * j, 2);
                y[j] = lt_bf16_to_f32_inline(h);
            }
            break;
        case LT_GGUF_Q8_0: q8_0_deq(in, y, cols); break;
        case LT_GGUF_Q4_0: q4_0_deq(in, y, cols); break;
        case LT_GGUF_Q4_K: q4_k_deq(in, y, cols); break;
        case LT_GGUF_Q6_K: q6_k_deq(in, y, cols); break;
        default: break;
        }
    }
    return LT_OK;
}
