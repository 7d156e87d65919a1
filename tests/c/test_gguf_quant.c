/* test_gguf_quant.c - GGUF's tensor encodings (src/io/gguf_quant.c): row sizes per type,
 * quantize then dequantize within each type's rounding (half a step of its block's scale, a
 * whole one at Q4_0's clamped end, plus the rounding of the scales), blocks that are all zero or constant, exact values
 * that sit on the codes, hand-built blocks that decode as the layout says, and bad rows
 * refused with the reason. llama.cpp's own reading of the same bytes is checked by
 * tests/lua/test_gguf.lua. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "lt_io.h"

static float rnd(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return ((float)((*s >> 8) & 0xffff) / 65535.0f - 0.5f) * 2.0f;
}

/* quantize and dequantize rows x cols of x; returns the largest error over the largest
 * |x| of its block of `block` values, per type */
static float round_trip(int type, const float *x, int64_t rows, int64_t cols, int block) {
    int64_t rb = lt_gguf_row_bytes(type, cols);
    uint8_t *q = malloc((size_t)(rows * rb));
    float *y = malloc((size_t)(rows * cols) * 4);
    CHECK_OK(lt_gguf_quantize(type, x, rows, cols, q));
    CHECK_OK(lt_gguf_dequantize(type, q, rows, cols, y));
    float worst = 0;
    for (int64_t b = 0; b < rows * cols / block; b++) {
        float amax = 0, err = 0;
        for (int j = 0; j < block; j++) {
            amax = fmaxf(amax, fabsf(x[b * block + j]));
            err = fmaxf(err, fabsf(x[b * block + j] - y[b * block + j]));
        }
        if (amax > 0) worst = fmaxf(worst, err / amax);
    }
    free(q);
    free(y);
    return worst;
}

int main(void) {
    CHECK(lt_gguf_row_bytes(LT_GGUF_F32, 10) == 40);
    CHECK(lt_gguf_row_bytes(LT_GGUF_F16, 10) == 20);
    CHECK(lt_gguf_row_bytes(LT_GGUF_BF16, 10) == 20);
    CHECK(lt_gguf_row_bytes(LT_GGUF_Q8_0, 64) == 68);
    CHECK(lt_gguf_row_bytes(LT_GGUF_Q4_0, 64) == 36);
    CHECK(lt_gguf_row_bytes(LT_GGUF_Q4_K, 512) == 288);
    CHECK(lt_gguf_row_bytes(LT_GGUF_Q6_K, 512) == 420);
    CHECK(lt_gguf_row_bytes(LT_GGUF_Q8_0, 48) == -1);
    CHECK(lt_gguf_row_bytes(LT_GGUF_Q4_K, 128) == -1);
    CHECK(lt_gguf_row_bytes(99, 32) == -1);

    /* random rows: 3 x 512, values of mixed scale per block */
    enum { R = 3, K = 512 };
    static float x[R * K];
    unsigned s = 7;
    for (int i = 0; i < R * K; i++) x[i] = rnd(&s) * (1.0f + (float)((i / 32) % 5));
    /* bounds: half a code step over the block's absmax (codes: 127, 7.5, 15, 31 steps of
     * the block's range), with room for the 6-bit (Q4_K) and 8-bit (Q6_K) sub-scales */
    float e;
    e = round_trip(LT_GGUF_Q8_0, x, R, K, 32);
    CHECK(e <= 0.5f / 127 + 1e-3f);
    /* Q4_0: the block's largest magnitude is code -8 exactly; a value of the other sign as
     * large is clamped to +7, a whole step (1/8 of it) away */
    e = round_trip(LT_GGUF_Q4_0, x, R, K, 32);
    CHECK(e <= 1.0f / 8 + 1e-3f);
    e = round_trip(LT_GGUF_Q4_K, x, R, K, 32);
    CHECK(e <= 2.0f / 15 * 0.5f + 0.08f);
    e = round_trip(LT_GGUF_Q6_K, x, R, K, 16);
    CHECK(e <= 0.5f / 31 + 0.02f);
    e = round_trip(LT_GGUF_F16, x, R, K, 1);
    CHECK(e <= 1e-3f);
    e = round_trip(LT_GGUF_BF16, x, R, K, 1);
    CHECK(e <= 4e-3f);
    CHECK(round_trip(LT_GGUF_F32, x, R, K, 1) == 0);

    /* zeros stay zeros; a value on the codes comes back exactly */
    static float z[256], y[256];
    uint8_t buf[512];
    int types[] = {LT_GGUF_Q8_0, LT_GGUF_Q4_0, LT_GGUF_Q4_K, LT_GGUF_Q6_K};
    for (int t = 0; t < 4; t++) {
        memset(z, 0, sizeof z);
        CHECK_OK(lt_gguf_quantize(types[t], z, 1, 256, buf));
        CHECK_OK(lt_gguf_dequantize(types[t], buf, 1, 256, y));
        int zero = 1;
        for (int i = 0; i < 256; i++) zero &= y[i] == 0;
        CHECK(zero);
    }
    for (int i = 0; i < 32; i++) z[i] = (float)(i - 16) * 0.25f; /* 32 values on Q8_0's grid */
    z[0] = -127 * 0.25f;
    CHECK_OK(lt_gguf_quantize(LT_GGUF_Q8_0, z, 1, 32, buf));
    CHECK_OK(lt_gguf_dequantize(LT_GGUF_Q8_0, buf, 1, 32, y));
    CHECK(memcmp(y, z, 32 * 4) == 0);

    /* hand-built blocks decode as the layouts say */
    /* Q4_0: d = 2 (f16 0x4000), byte j: low nibble 9 (value j -> +2), high 6 (value j+16 -> -4) */
    uint8_t q40[18] = {0x00, 0x40};
    for (int j = 0; j < 16; j++) q40[2 + j] = 9 | (6 << 4);
    CHECK_OK(lt_gguf_dequantize(LT_GGUF_Q4_0, q40, 1, 32, y));
    CHECK(y[0] == 2 && y[15] == 2 && y[16] == -4 && y[31] == -4);
    /* Q4_K: d = 1, dmin = 0.5 (0x3800); sub-block 5 has scale 33 and min 18 (6 bits split:
     * low 4 in scales[9], top 2 in scales[1] and scales[5]); its codes are the high nibbles
     * of bytes 64..95, set to 3: 1 * 33 * 3 - 0.5 * 18 = 90 */
    uint8_t q4k[144] = {0x00, 0x3c, 0x00, 0x38};
    uint8_t *sc = q4k + 4;
    sc[1] = (uint8_t)((33 >> 4) << 6);
    sc[5] = (uint8_t)((18 >> 4) << 6);
    sc[9] = (uint8_t)((33 & 15) | ((18 & 15) << 4));
    for (int l = 0; l < 32; l++) q4k[16 + 64 + l] = 3 << 4;
    float y4[256];
    CHECK_OK(lt_gguf_dequantize(LT_GGUF_Q4_K, q4k, 1, 256, y4));
    CHECK(y4[5 * 32] == 90 && y4[5 * 32 + 31] == 90 && y4[4 * 32] == 0 && y4[6 * 32] == 0);
    /* Q6_K: d = 1; value 64 + 3 (third quarter of the first half, sub-block 4) takes the high
     * nibble of ql[3] and bits 4-5 of qh[3]: code 0x2B - 32 = 11, times scale[4] = 2 -> 22 */
    uint8_t q6k[210] = {0};
    q6k[3] = 0xB << 4;
    q6k[128 + 3] = 2 << 4;
    ((int8_t *)(q6k + 192))[4] = 2;
    q6k[208] = 0x00;
    q6k[209] = 0x3c;
    CHECK_OK(lt_gguf_dequantize(LT_GGUF_Q6_K, q6k, 1, 256, y4));
    CHECK(y4[67] == 22);
    CHECK(y4[66] == -64); /* code 0 is -32, times scale 2 */

    /* bad rows */
    CHECK_FAILS(lt_gguf_quantize(LT_GGUF_Q4_K, x, 1, 100, buf), LT_ERR_ARG, "blocks of 256");
    CHECK_FAILS(lt_gguf_quantize(3, x, 1, 32, buf), LT_ERR_UNSUPPORTED, "type 3");
    CHECK_FAILS(lt_gguf_dequantize(LT_GGUF_Q8_0, NULL, 1, 32, y), LT_ERR_ARG, "NULL");
    return check_summary();
}
