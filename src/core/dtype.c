/* dtype.c - the dtype traits table and conversions between float formats. */
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "core/internal.h"

static const lt_dtype_traits lt_traits[LT_DTYPE_COUNT] = {
    [LT_DTYPE_F32] = {"f32", "F32", 32, 1, 1},
    [LT_DTYPE_BF16] = {"bf16", "BF16", 16, 1, 1},
    [LT_DTYPE_F16] = {"f16", "F16", 16, 1, 1},
    [LT_DTYPE_I32] = {"i32", "I32", 32, 0, 1},
    [LT_DTYPE_I64] = {"i64", "I64", 64, 0, 1},
    [LT_DTYPE_U8] = {"u8", "U8", 8, 0, 0},
    [LT_DTYPE_I8] = {"i8", "I8", 8, 0, 1},
};

_Static_assert(sizeof(lt_traits) / sizeof(lt_traits[0]) == LT_DTYPE_COUNT,
               "every dtype has a traits row");

const lt_dtype_traits *lt_dtype_info(int dtype) {
    if (dtype < 0 || dtype >= LT_DTYPE_COUNT) return NULL;
    return &lt_traits[dtype];
}

int lt_dtype_from_name(const char *name) {
    if (!name) return -1;
    for (int i = 0; i < LT_DTYPE_COUNT; i++) {
        if (strcasecmp(name, lt_traits[i].name) == 0) return i;
        if (lt_traits[i].st_name && strcmp(name, lt_traits[i].st_name) == 0) return i;
    }
    /* Common long spellings. */
    if (strcmp(name, "float32") == 0 || strcmp(name, "float") == 0) return LT_DTYPE_F32;
    if (strcmp(name, "bfloat16") == 0) return LT_DTYPE_BF16;
    if (strcmp(name, "float16") == 0 || strcmp(name, "half") == 0) return LT_DTYPE_F16;
    if (strcmp(name, "int32") == 0) return LT_DTYPE_I32;
    if (strcmp(name, "int64") == 0 || strcmp(name, "long") == 0) return LT_DTYPE_I64;
    if (strcmp(name, "uint8") == 0) return LT_DTYPE_U8;
    if (strcmp(name, "int8") == 0) return LT_DTYPE_I8;
    return -1;
}

int lt_dtype_nbytes(int dtype, int64_t numel, int64_t *out) {
    const lt_dtype_traits *tr = lt_dtype_info(dtype);
    if (!tr) return lt_fail(LT_ERR_DTYPE, "unknown dtype %d", dtype);
    if (numel < 0) return lt_fail(LT_ERR_ARG, "negative element count %lld", (long long)numel);
    int64_t size = tr->bits / 8;
    if (numel > INT64_MAX / size)
        return lt_fail(LT_ERR_RANGE, "%lld elements of %s overflow a 64-bit byte count",
                       (long long)numel, tr->name);
    *out = numel * size;
    return LT_OK;
}

/* IEEE half <-> single, by hand, for builds without F16C. Round to nearest even. */
float lt_f16_to_f32_slow(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while ((man & 0x400u) == 0);
            u = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ffu) << 13;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | man << 13;
    } else {
        u = sign | (exp + 112) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t lt_f32_to_f16_slow(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);    /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);   /* overflow (incl. rounding) -> inf */
    if (a < 0x33000001u) return (uint16_t)sign;                /* underflow to zero */
    int32_t exp = (int32_t)(a >> 23) - 127;
    uint32_t man = (a & 0x7fffffu) | 0x800000u;
    if (exp < -14) { /* subnormal half */
        uint32_t shift = (uint32_t)(-exp - 14 + 13);
        uint32_t r = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = (uint32_t)(exp + 15) << 10 | (man >> 13 & 0x3ffu);
    uint32_t rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

float lt_bf16_to_f32(uint16_t h) { return lt_bf16_to_f32_inline(h); }
uint16_t lt_f32_to_bf16(float f) { return lt_f32_to_bf16_inline(f); }
float lt_f16_to_f32(uint16_t h) { return lt_f16_to_f32_inline(h); }
uint16_t lt_f32_to_f16(float f) { return lt_f32_to_f16_inline(f); }

void lt_convert_to_f32(float *dst, const void *src, int dtype, int64_t n) {
    switch (dtype) {
    case LT_DTYPE_F32: memcpy(dst, src, (size_t)n * 4); break;
    case LT_DTYPE_BF16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = lt_bf16_to_f32_inline(s[i]);
        break;
    }
    case LT_DTYPE_F16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = lt_f16_to_f32_inline(s[i]);
        break;
    }
    default: break;
    }
}

void lt_convert_from_f32(void *dst, int dtype, const float *src, int64_t n) {
    switch (dtype) {
    case LT_DTYPE_F32: memcpy(dst, src, (size_t)n * 4); break;
    case LT_DTYPE_BF16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = lt_f32_to_bf16_inline(src[i]);
        break;
    }
    case LT_DTYPE_F16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = lt_f32_to_f16_inline(src[i]);
        break;
    }
    default: break;
    }
}
