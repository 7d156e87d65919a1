/* rng.c - Philox-4x32-10 random numbers: uniform, normal and integer fills.
 *
 * Element i of a fill reads block (offset + i / 4), lane i % 4, so the result depends only
 * on (seed, offset) and never on how the loop is split across threads. */
#include "core/internal.h"

typedef struct {
    uint32_t v[4];
} philox_block;

static philox_block philox4x32_10(uint64_t counter, uint64_t seed) {
    uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32), c2 = 0, c3 = 0;
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    philox_block b = {{c0, c1, c2, c3}};
    return b;
}

/* Uniform in (0, 1]: never 0, so log() in Box-Muller is finite. */
static inline double u01(uint32_t x) { return ((double)x + 1.0) * (1.0 / 4294967296.0); }

void lt_rng_seed(lt_rng *rng, uint64_t seed) {
    if (!rng) return;
    rng->seed = seed;
    rng->offset = 0;
}

typedef enum { FILL_UNIFORM, FILL_NORMAL, FILL_INT } fill_kind;

static int rng_fill(lt_tensor *t, fill_kind kind, double a, double b, lt_rng *rng,
                    const char *op) {
    LT_TRY(lt_check_writable(t, op, "tensor"));
    if (!rng) return lt_fail(LT_ERR_ARG, "%s: rng is NULL", op);
    if (kind != FILL_INT && !lt_is_float_dtype(t->dtype_id))
        return lt_fail(LT_ERR_DTYPE, "%s: needs a float tensor", op);
    int64_t n = lt_tensor_numel(t);
    if (lt_on_cuda(t)) {
        /* the same Philox stream as the CPU's, drawn on the device */
        LT_TRY(lt_cuda_rng_fill(t, (int)kind, a, b, rng->seed, rng->offset));
        rng->offset += (uint64_t)((n + 3) / 4);
        return LT_OK;
    }
    if (n == 0) return LT_OK;
    /* Draw into a contiguous f32 (or i64) buffer, then copy (handles strides, dtypes). */
    int direct_dtype = kind == FILL_INT ? LT_DTYPE_I64 : LT_DTYPE_F32;
    int direct = t->dtype_id == direct_dtype && lt_tensor_is_contiguous(t);
    lt_tensor tmp = {0};
    float *out;
    if (direct) {
        out = lt_tensor_data(t);
    } else {
        /* contiguous, with t's shape, so the copy below is elementwise */
        LT_TRY(lt_tensor_empty(&tmp, direct_dtype, t->ndim, t->sizes, LT_DEVICE_CPU, 0));
        out = lt_tensor_data(&tmp);
    }
    uint64_t base = rng->offset, seed = rng->seed;
    int64_t blocks = (n + 3) / 4;
#pragma omp parallel for schedule(static) if (n >= LT_PAR_MIN_WORK)
    for (int64_t blk = 0; blk < blocks; blk++) {
        philox_block r = philox4x32_10(base + (uint64_t)blk, seed);
        double v[4];
        if (kind == FILL_NORMAL) {
            for (int j = 0; j < 4; j += 2) {
                double rad = sqrt(-2.0 * log(u01(r.v[j])));
                double th = 6.283185307179586 * u01(r.v[j + 1]);
                v[j] = a + b * rad * cos(th);
                v[j + 1] = a + b * rad * sin(th);
            }
        } else if (kind == FILL_UNIFORM) {
            for (int j = 0; j < 4; j++) v[j] = a + (b - a) * (u01(r.v[j]) - 1.0 / 4294967296.0);
        }
        for (int j = 0; j < 4; j++) {
            int64_t i = blk * 4 + j;
            if (i >= n) break;
            if (kind == FILL_INT) {
                uint64_t range = (uint64_t)(b - a);
                ((int64_t *)out)[i] = (int64_t)a + (int64_t)(((uint64_t)r.v[j] * range) >> 32);
            } else {
                out[i] = (float)v[j];
            }
        }
    }
    rng->offset += (uint64_t)blocks;
    if (!direct) {
        int st = lt_tensor_copy(t, &tmp);
        lt_tensor_release(&tmp);
        return st;
    }
    return LT_OK;
}

int lt_tensor_uniform(lt_tensor *t, double low, double high, lt_rng *rng) {
    if (!(low <= high)) return lt_fail(LT_ERR_ARG, "uniform: low %g > high %g", low, high);
    return rng_fill(t, FILL_UNIFORM, low, high, rng, "uniform");
}

int lt_tensor_normal(lt_tensor *t, double mean, double std, lt_rng *rng) {
    if (!(std >= 0)) return lt_fail(LT_ERR_ARG, "normal: std %g is negative or NaN", std);
    return rng_fill(t, FILL_NORMAL, mean, std, rng, "normal");
}

int lt_tensor_randint(lt_tensor *t, int64_t low, int64_t high, lt_rng *rng) {
    if (high <= low || (uint64_t)(high - low) > 0xffffffffu)
        return lt_fail(LT_ERR_ARG, "randint: empty or too wide range [%lld, %lld)",
                       (long long)low, (long long)high);
    return rng_fill(t, FILL_INT, (double)low, (double)high, rng, "randint");
}

int lt_tensor_randperm(lt_tensor *t, lt_rng *rng) {
    LT_TRY(lt_check_cpu(t, "randperm", "tensor"));
    LT_TRY(lt_check_writable(t, "randperm", "tensor"));
    if (!rng) return lt_fail(LT_ERR_ARG, "randperm: rng is NULL");
    if (t->ndim != 1 || !lt_tensor_is_contiguous(t) || !lt_is_index_dtype(t->dtype_id))
        return lt_fail(LT_ERR_ARG, "randperm: needs a contiguous 1-D i32 or i64 tensor");
    int64_t n = t->sizes[0];
    if (t->dtype_id == LT_DTYPE_I32 && n > INT32_MAX)
        return lt_fail(LT_ERR_RANGE, "randperm: %lld values do not fit i32", (long long)n);
    void *p = lt_tensor_data(t);
    int is32 = t->dtype_id == LT_DTYPE_I32;
    for (int64_t i = 0; i < n; i++) {
        if (is32) ((int32_t *)p)[i] = (int32_t)i;
        else ((int64_t *)p)[i] = i;
    }
    /* Fisher-Yates from the top; j is drawn from 64 random bits, so the modulo bias is
       below 2^-40 for any n a dataset has */
    for (int64_t i = n - 1; i > 0; i--) {
        uint64_t block = rng->offset++;
        philox_block r = philox4x32_10(block, rng->seed);
        uint64_t bits = (uint64_t)r.v[0] << 32 | r.v[1];
        int64_t j = (int64_t)(bits % (uint64_t)(i + 1));
        if (is32) {
            int32_t *a = p, tmp = a[i];
            a[i] = a[j];
            a[j] = tmp;
        } else {
            int64_t *a = p, tmp = a[i];
            a[i] = a[j];
            a[j] = tmp;
        }
    }
    return LT_OK;
}
