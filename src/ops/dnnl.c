/* dnnl.c - bf16 (and some f32) GEMMs through oneDNN, loaded on first use (ARCHITECTURE.md,
 * contract 12).
 *
 * With the CPU's matmul precision set to bf16 (lt_set_cpu_matmul_precision), matmul.c
 * rounds both operands to bf16 and multiplies them here, accumulating in f32: oneDNN's
 * brgemm kernels use AVX512-BF16 or AMX where the CPU has them. Measured on the 2-core dev
 * VM (AMD EPYC, avx512_bf16), 2048 x 288 x 288: OpenBLAS sgemm 202 GFLOP/s, oneDNN f32 233,
 * oneDNN bf16 444; 2048^3: 207, 192, 415. bf16 x bf16 products are exact in f32, so the
 * only differences from an f32 GEMM on the rounded operands are the order of the sums.
 *
 * f32 products whose sides are at most 4096 come here too (lt_dnnl_gemm_f32): oneDNN's f32
 * kernels measured faster than sgemm on those (matmul.c, use_dnnl_f32).
 *
 * libdnnl.so.2 is dlopened the first time it is wanted: the first bf16 GEMM, or the first
 * f32 product big enough for several threads (about 10 ms and 5 MB of resident memory; a
 * process that never multiplies such matrices never maps it). The header is only needed at
 * build time, for the types; without it the build says "built without oneDNN" when bf16
 * GEMMs are asked for, and f32 GEMMs stay with sgemm.
 *
 * Primitives are cached by shape (M, N, K, ldc, alpha, beta): a training step repeats the
 * same few dozen shapes, and creating one costs about a millisecond. The cache is used
 * from the thread that runs Lua only (matmul is called outside OpenMP regions). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "core/internal.h"
#include "ops/dnnl.h"

#if __has_include(<oneapi/dnnl/dnnl.h>)
#include <oneapi/dnnl/dnnl.h>
#define LT_HAVE_DNNL 1
#else
#define LT_HAVE_DNNL 0
#endif

static int cpu_matmul_precision = LT_MATMUL_F32;

int lt_get_cpu_matmul_precision(void) { return cpu_matmul_precision; }

#if LT_HAVE_DNNL

/* The oneDNN functions used, resolved from the library once. */
static struct {
    dnnl_status_t (*engine_create)(dnnl_engine_t *, dnnl_engine_kind_t, size_t);
    dnnl_status_t (*stream_create)(dnnl_stream_t *, dnnl_engine_t, unsigned);
    dnnl_status_t (*stream_wait)(dnnl_stream_t);
    dnnl_status_t (*md_init_by_strides)(dnnl_memory_desc_t *, int, const dnnl_dims_t, dnnl_data_type_t,
                                        const dnnl_dims_t);
    dnnl_status_t (*matmul_desc_init)(dnnl_matmul_desc_t *, const dnnl_memory_desc_t *,
                                      const dnnl_memory_desc_t *, const dnnl_memory_desc_t *,
                                      const dnnl_memory_desc_t *);
    dnnl_status_t (*attr_create)(dnnl_primitive_attr_t *);
    dnnl_status_t (*attr_destroy)(dnnl_primitive_attr_t);
    dnnl_status_t (*attr_set_output_scales)(dnnl_primitive_attr_t, dnnl_dim_t, int, const float *);
    dnnl_status_t (*attr_set_post_ops)(dnnl_primitive_attr_t, const_dnnl_post_ops_t);
    dnnl_status_t (*post_ops_create)(dnnl_post_ops_t *);
    dnnl_status_t (*post_ops_destroy)(dnnl_post_ops_t);
    dnnl_status_t (*post_ops_append_sum)(dnnl_post_ops_t, float);
    dnnl_status_t (*pd_create)(dnnl_primitive_desc_t *, const_dnnl_op_desc_t, const_dnnl_primitive_attr_t,
                               dnnl_engine_t, const_dnnl_primitive_desc_t);
    dnnl_status_t (*pd_destroy)(dnnl_primitive_desc_t);
    dnnl_status_t (*primitive_create)(dnnl_primitive_t *, const_dnnl_primitive_desc_t);
    dnnl_status_t (*primitive_destroy)(dnnl_primitive_t);
    dnnl_status_t (*primitive_execute)(const_dnnl_primitive_t, dnnl_stream_t, int, const dnnl_exec_arg_t *);
    dnnl_status_t (*memory_create)(dnnl_memory_t *, const dnnl_memory_desc_t *, dnnl_engine_t, void *);
    dnnl_status_t (*memory_destroy)(dnnl_memory_t);
} dn;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static char load_error[512];
static dnnl_engine_t engine;
static dnnl_stream_t stream;

static void load(void) {
    void *h = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(load_error, sizeof load_error, "oneDNN not found (install libdnnl2): %s", dlerror());
        return;
    }
    struct {
        void **slot;
        const char *name;
    } syms[] = {
        { (void **)&dn.engine_create, "dnnl_engine_create" },
        { (void **)&dn.stream_create, "dnnl_stream_create" },
        { (void **)&dn.stream_wait, "dnnl_stream_wait" },
        { (void **)&dn.md_init_by_strides, "dnnl_memory_desc_init_by_strides" },
        { (void **)&dn.matmul_desc_init, "dnnl_matmul_desc_init" },
        { (void **)&dn.attr_create, "dnnl_primitive_attr_create" },
        { (void **)&dn.attr_destroy, "dnnl_primitive_attr_destroy" },
        { (void **)&dn.attr_set_output_scales, "dnnl_primitive_attr_set_output_scales" },
        { (void **)&dn.attr_set_post_ops, "dnnl_primitive_attr_set_post_ops" },
        { (void **)&dn.post_ops_create, "dnnl_post_ops_create" },
        { (void **)&dn.post_ops_destroy, "dnnl_post_ops_destroy" },
        { (void **)&dn.post_ops_append_sum, "dnnl_post_ops_append_sum" },
        { (void **)&dn.pd_create, "dnnl_primitive_desc_create" },
        { (void **)&dn.pd_destroy, "dnnl_primitive_desc_destroy" },
        { (void **)&dn.primitive_create, "dnnl_primitive_create" },
        { (void **)&dn.primitive_destroy, "dnnl_primitive_destroy" },
        { (void **)&dn.primitive_execute, "dnnl_primitive_execute" },
        { (void **)&dn.memory_create, "dnnl_memory_create" },
        { (void **)&dn.memory_destroy, "dnnl_memory_destroy" },
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        *syms[i].slot = dlsym(h, syms[i].name);
        if (!*syms[i].slot) {
            snprintf(load_error, sizeof load_error, "oneDNN: libdnnl.so.2 has no %s (version 2.x needed)",
                     syms[i].name);
            return;
        }
    }
    if (dn.engine_create(&engine, dnnl_cpu, 0) != dnnl_success ||
        dn.stream_create(&stream, engine, dnnl_stream_default_flags) != dnnl_success) {
        snprintf(load_error, sizeof load_error, "oneDNN: cannot make a CPU engine and stream");
        engine = NULL;
    }
}

static int ready(void) {
    pthread_once(&load_once, load);
    if (!engine) return lt_fail(LT_ERR_UNSUPPORTED, "%s", load_error);
    return LT_OK;
}

/* The primitive cache: a ring of recent shapes. */
enum { CACHE_SIZE = 64 };
typedef struct {
    int64_t M, N, K, ldc, lda, ldb;
    int ta, tb, f32; /* f32: the operands are f32 (else bf16) */
    float alpha, beta;
    dnnl_primitive_t prim;
    dnnl_memory_desc_t a, b, c;
} entry;
static entry cache[CACHE_SIZE];
static int cache_next;

static entry *primitive_for(int f32, int64_t M, int64_t N, int64_t K, int64_t ldc, int64_t lda, int ta,
                            int64_t ldb, int tb, float alpha, float beta) {
    for (int i = 0; i < CACHE_SIZE; i++) {
        entry *e = &cache[i];
        if (e->prim && e->f32 == f32 && e->M == M && e->N == N && e->K == K && e->ldc == ldc && e->lda == lda &&
            e->ta == ta && e->ldb == ldb && e->tb == tb && e->alpha == alpha && e->beta == beta)
            return e;
    }
    entry *e = &cache[cache_next];
    cache_next = (cache_next + 1) % CACHE_SIZE;
    if (e->prim) dn.primitive_destroy(e->prim);
    memset(e, 0, sizeof *e);
    /* op(a) (M, K) and op(b) (K, N) bf16 (or f32), by strides (a transposed operand is a
       column-major view); c (M, N) f32 with leading dimension ldc */
    dnnl_dims_t da = { M, K }, db = { K, N }, dc = { M, N };
    dnnl_dims_t sa = { ta ? 1 : lda, ta ? lda : 1 }, sb = { tb ? 1 : ldb, tb ? ldb : 1 }, sc = { ldc, 1 };
    dnnl_data_type_t dt = f32 ? dnnl_f32 : dnnl_bf16;
    if (dn.md_init_by_strides(&e->a, 2, da, dt, sa) != dnnl_success ||
        dn.md_init_by_strides(&e->b, 2, db, dt, sb) != dnnl_success ||
        dn.md_init_by_strides(&e->c, 2, dc, dnnl_f32, sc) != dnnl_success)
        return lt_fail(LT_ERR_INTERNAL, "oneDNN: a memory descriptor for %lld x %lld x %lld was refused",
                       (long long)M, (long long)N, (long long)K), NULL;
    dnnl_matmul_desc_t md;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;
    int ok = dn.matmul_desc_init(&md, &e->a, &e->b, NULL, &e->c) == dnnl_success &&
             dn.attr_create(&attr) == dnnl_success;
    if (ok && alpha != 1.0f) ok = dn.attr_set_output_scales(attr, 1, 0, &alpha) == dnnl_success;
    if (ok && beta != 0.0f) {
        /* c = alpha * a @ b + beta * c: oneDNN's sum post-op adds scale * (c before) */
        ok = dn.post_ops_create(&po) == dnnl_success && dn.post_ops_append_sum(po, beta) == dnnl_success &&
             dn.attr_set_post_ops(attr, po) == dnnl_success;
    }
    if (ok) ok = dn.pd_create(&pd, &md, attr, engine, NULL) == dnnl_success;
    if (ok) ok = dn.primitive_create(&e->prim, pd) == dnnl_success;
    if (pd) dn.pd_destroy(pd);
    if (po) dn.post_ops_destroy(po);
    if (attr) dn.attr_destroy(attr);
    if (!ok) {
        e->prim = NULL;
        return lt_fail(LT_ERR_INTERNAL, "oneDNN: no %s matmul for %lld x %lld x %lld", f32 ? "f32" : "bf16",
                       (long long)M, (long long)N, (long long)K), NULL;
    }
    e->M = M, e->N = N, e->K = K, e->ldc = ldc, e->lda = lda, e->ta = ta, e->ldb = ldb, e->tb = tb;
    e->f32 = f32;
    e->alpha = alpha, e->beta = beta;
    return e;
}

int lt_set_cpu_matmul_precision(int precision) {
    if (precision != LT_MATMUL_F32 && precision != LT_MATMUL_BF16)
        return lt_fail(LT_ERR_ARG, "cpu matmul precision: %d is not LT_MATMUL_F32 or LT_MATMUL_BF16", precision);
    if (precision == LT_MATMUL_BF16) LT_TRY(ready());
    cpu_matmul_precision = precision;
    return LT_OK;
}

static int gemm(int f32, float *c, int64_t ldc, const void *a, int64_t lda, int ta, const void *b, int64_t ldb,
                int tb, int64_t M, int64_t N, int64_t K, float alpha, float beta) {
    LT_TRY(ready());
    entry *e = primitive_for(f32, M, N, K, ldc, lda, ta ? 1 : 0, ldb, tb ? 1 : 0, alpha, beta);
    if (!e) return lt_last_status();
    dnnl_memory_t ma = NULL, mb = NULL, mc = NULL;
    int ok = dn.memory_create(&ma, &e->a, engine, (void *)a) == dnnl_success &&
             dn.memory_create(&mb, &e->b, engine, (void *)b) == dnnl_success &&
             dn.memory_create(&mc, &e->c, engine, c) == dnnl_success;
    if (ok) {
        dnnl_exec_arg_t args[3] = { { DNNL_ARG_SRC, ma }, { DNNL_ARG_WEIGHTS, mb }, { DNNL_ARG_DST, mc } };
        ok = dn.primitive_execute(e->prim, stream, 3, args) == dnnl_success && dn.stream_wait(stream) == dnnl_success;
    }
    if (ma) dn.memory_destroy(ma);
    if (mb) dn.memory_destroy(mb);
    if (mc) dn.memory_destroy(mc);
    if (!ok) return lt_fail(LT_ERR_INTERNAL, "oneDNN: the %s matmul %lld x %lld x %lld failed", f32 ? "f32" : "bf16",
                            (long long)M, (long long)N, (long long)K);
    return LT_OK;
}

int lt_dnnl_gemm_bf16(float *c, int64_t ldc, const uint16_t *a, int64_t lda, int ta, const uint16_t *b,
                      int64_t ldb, int tb, int64_t M, int64_t N, int64_t K, float alpha, float beta) {
    return gemm(0, c, ldc, a, lda, ta, b, ldb, tb, M, N, K, alpha, beta);
}

int lt_dnnl_gemm_f32(float *c, int64_t ldc, const float *a, int64_t lda, int ta, const float *b, int64_t ldb,
                     int tb, int64_t M, int64_t N, int64_t K, float alpha, float beta) {
    return gemm(1, c, ldc, a, lda, ta, b, ldb, tb, M, N, K, alpha, beta);
}

int lt_dnnl_available(void) {
    pthread_once(&load_once, load);
    return engine != NULL;
}

#else

int lt_dnnl_gemm_f32(float *c, int64_t ldc, const float *a, int64_t lda, int ta, const float *b, int64_t ldb,
                     int tb, int64_t M, int64_t N, int64_t K, float alpha, float beta) {
    (void)c, (void)ldc, (void)a, (void)lda, (void)ta, (void)b, (void)ldb, (void)tb;
    (void)M, (void)N, (void)K, (void)alpha, (void)beta;
    return lt_fail(LT_ERR_UNSUPPORTED, "oneDNN f32 GEMMs: built without oneDNN (install libdnnl-dev)");
}

int lt_dnnl_available(void) { return 0; }

int lt_set_cpu_matmul_precision(int precision) {
    if (precision == LT_MATMUL_F32) return LT_OK;
    if (precision != LT_MATMUL_BF16)
        return lt_fail(LT_ERR_ARG, "cpu matmul precision: %d is not LT_MATMUL_F32 or LT_MATMUL_BF16", precision);
    return lt_fail(LT_ERR_UNSUPPORTED, "bf16 matmuls on the CPU: built without oneDNN (install libdnnl-dev)");
}

int lt_dnnl_gemm_bf16(float *c, int64_t ldc, const uint16_t *a, int64_t lda, int ta, const uint16_t *b,
                      int64_t ldb, int tb, int64_t M, int64_t N, int64_t K, float alpha, float beta) {
    (void)c, (void)ldc, (void)a, (void)lda, (void)ta, (void)b, (void)ldb, (void)tb;
    (void)M, (void)N, (void)K, (void)alpha, (void)beta;
    return lt_fail(LT_ERR_UNSUPPORTED, "bf16 matmuls on the CPU: built without oneDNN (install libdnnl-dev)");
}

#endif
