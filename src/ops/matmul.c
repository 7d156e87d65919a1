/* matmul.c - batched matrix products through OpenBLAS sgemm.
 *
 * Threads: OpenMP is the only thread pool. A large product is cut into one slab of rows
 * (or columns) per OpenMP thread and each thread calls single-threaded sgemm on its slab.
 * Letting OpenBLAS run its own pthread pool instead makes the two pools spin against each
 * other at every hand-off between a GEMM and an OpenMP loop: on the 2-core dev box a
 * 2048x288x288 product between two OpenMP loops ran at 57 GFLOP/s that way and at
 * 150-195 GFLOP/s split by OpenMP (tools/bench has the whole-step numbers).
 *
 * f32 operands go to sgemm as they lie (a transposed view is a flag, not a copy). bf16/f16
 * operands are converted to f32 one panel at a time: a block of rows of op(a) or a block of
 * columns of op(b), at most LT_PANEL_FLOATS floats, so a large low-precision weight is
 * never held whole in f32. */
#include <cblas.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "lt_ops.h"
#include "ops/dnnl.h"
#include "ops/lowp.h"
#include "ops/support.h"

#ifdef _OPENMP
#include <omp.h>
#endif

enum { LT_PANEL_FLOATS = 1 << 20 }; /* 4 MB of f32 per converted panel */

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

static void blas_single_thread(void) { openblas_set_num_threads(1); }

/* BLAS always runs single-threaded inside our OpenMP threads; `n` is the OpenMP count. */
void lt_blas_set_threads(int n) {
    (void)n;
    pthread_once(&blas_once, blas_single_thread);
}

/* Products below this many multiply-adds run on the calling thread alone. */
enum { LT_GEMM_PAR_MIN = 1 << 21 };

/* One sgemm, split across the OpenMP threads along the larger of M and N. */
static void sgemm_split(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                        const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                        float *C, int64_t ldc) {
    pthread_once(&blas_once, blas_single_thread);
    int nt = 1;
#ifdef _OPENMP
    if (!omp_in_parallel() && (double)M * (double)N * (double)K >= LT_GEMM_PAR_MIN)
        nt = omp_get_max_threads();
#endif
    int split_m = M >= N;
    int64_t extent = split_m ? M : N;
    if (nt > extent / 16) nt = (int)(extent / 16 > 0 ? extent / 16 : 1);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = 0, n_t = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        n_t = omp_get_num_threads();
#endif
        /* slab boundaries on multiples of 16 rows/columns: whole vector tiles for BLAS */
        int64_t lo = (extent * t / n_t) / 16 * 16, hi = (extent * (t + 1) / n_t) / 16 * 16;
        if (t == n_t - 1) hi = extent;
        if (hi > lo) {
            const float *a = A, *b = B;
            float *c = C;
            int64_t m = M, n = N;
            if (split_m) {
                a = ta ? A + lo : A + lo * lda;
                c = C + lo * ldc;
                m = hi - lo;
            } else {
                b = tb ? B + lo * ldb : B + lo;
                c = C + lo;
                n = hi - lo;
            }
            cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                        (int)m, (int)n, (int)K, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
        }
    }
}

/* A 2-D matrix as BLAS sees it: row-major with leading dim `ld`, possibly flagged as
   transposed. `rows`/`cols` are the stored (row-major) extents. */
typedef struct {
    const char *data;
    int dtype;
    int64_t rows, cols, ld;
    int trans; /* op(matrix) = stored^T */
} mat;

/* Describe the 2-D slice (sizes r x c, strides s0, s1) of a tensor as a BLAS operand
   whose logical value is the slice itself (trans_req = 0) or its transpose (1). Returns 0
   when the layout has no unit stride (the caller copies). */
static int describe(mat *m, const char *data, int dtype, int64_t r, int64_t c, int64_t s0,
                    int64_t s1, int trans_req) {
    m->data = data;
    m->dtype = dtype;
    if (s1 == 1 || c == 1) { /* row-major */
        m->rows = r;
        m->cols = c;
        m->ld = (r == 1 || s0 < c) ? (c > 0 ? c : 1) : s0;
        if (r > 1 && s0 < c) return 0;
        m->trans = trans_req;
        return 1;
    }
    if (s0 == 1 || r == 1) { /* column-major: the row-major transpose */
        m->rows = c;
        m->cols = r;
        m->ld = (c == 1 || s1 < r) ? (r > 0 ? r : 1) : s1;
        if (c > 1 && s1 < r) return 0;
        m->trans = !trans_req;
        return 1;
    }
    return 0;
}

/* Logical extents of op(m). */
static int64_t op_rows(const mat *m) { return m->trans ? m->cols : m->rows; }
static int64_t op_cols(const mat *m) { return m->trans ? m->rows : m->cols; }

/* Convert stored rows [r0, r0+nr) x cols [c0, c0+nc) of m into a dense f32 block. */
static void convert_block(float *dst, const mat *m, int64_t r0, int64_t nr, int64_t c0,
                          int64_t nc) {
    int esz = lt_dtype_size(m->dtype);
#pragma omp parallel for schedule(static) if (nr * nc >= LT_PAR_MIN_WORK)
    for (int64_t i = 0; i < nr; i++)
        lt_convert_to_f32(dst + i * nc, m->data + ((r0 + i) * m->ld + c0) * esz, m->dtype, nc);
}

/* One element of op(m) at logical (i, k), as a bf16 bit pattern (round to nearest even). */
static inline uint16_t load_bf16(const mat *m, int64_t i, int64_t k) {
    int64_t idx = m->trans ? k * m->ld + i : i * m->ld + k;
    switch (m->dtype) {
    case LT_DTYPE_BF16: return ((const uint16_t *)m->data)[idx];
    case LT_DTYPE_F16: return lt_f32_to_bf16_inline(lt_f16_to_f32(((const uint16_t *)m->data)[idx]));
    default: return lt_f32_to_bf16_inline(((const float *)m->data)[idx]);
    }
}

/* op(m) (R x C) into dst as bf16, row-major. Stored rows of an untransposed f32 operand
   convert as whole rows; a transposed one is read in 32 x 32 tiles along its stored rows. */
static void to_bf16(uint16_t *dst, const mat *m, int64_t R, int64_t C) {
    if (!m->trans && m->dtype == LT_DTYPE_F32) {
#pragma omp parallel for schedule(static) if (R * C >= LT_PAR_MIN_WORK)
        for (int64_t i = 0; i < R; i++) lt_f32_row_to_bf16(dst + i * C, (const float *)m->data + i * m->ld, C);
        return;
    }
    enum { TILE = 32 };
    int64_t tr = (R + TILE - 1) / TILE, tc = (C + TILE - 1) / TILE;
#pragma omp parallel for schedule(static) if (R * C >= LT_PAR_MIN_WORK)
    for (int64_t t = 0; t < tr * tc; t++) {
        int64_t i0 = t / tc * TILE, k0 = t % tc * TILE;
        int64_t i1 = i0 + TILE < R ? i0 + TILE : R, k1 = k0 + TILE < C ? k0 + TILE : C;
        if (m->trans && m->dtype == LT_DTYPE_F32) {
            /* op(m)[i][k] = stored[k][i]: convert stored rows k into a tile, then transpose */
            uint16_t tile[TILE][TILE];
            for (int64_t k = k0; k < k1; k++)
                lt_f32_row_to_bf16(tile[k - k0], (const float *)m->data + k * m->ld + i0, i1 - i0);
            for (int64_t i = i0; i < i1; i++)
                for (int64_t k = k0; k < k1; k++) dst[i * C + k] = tile[k - k0][i - i0];
        } else if (m->trans) {
            for (int64_t k = k0; k < k1; k++)
                for (int64_t i = i0; i < i1; i++) dst[i * C + k] = load_bf16(m, i, k);
        } else {
            for (int64_t i = i0; i < i1; i++)
                for (int64_t k = k0; k < k1; k++) dst[i * C + k] = load_bf16(m, i, k);
        }
    }
}


/* The bf16 precision: op(a) and op(b) rounded to bf16 (scratch: M x K and K x N), one
   oneDNN GEMM accumulating in f32 into c. */
static int gemm2d_bf16(float *c, int64_t ldc, const mat *a, const mat *b, float alpha, float beta,
                       int64_t M, int64_t N, int64_t K) {
    uint16_t *pa = lt_scratch_alloc(M * K * 2), *pb = pa ? lt_scratch_alloc(K * N * 2) : NULL;
    if (!pb) {
        lt_scratch_free(pa);
        return lt_fail_prefix(LT_ERR_NOMEM, "matmul (bf16): ");
    }
    to_bf16(pa, a, M, K);
    to_bf16(pb, b, K, N);
    int st = lt_dnnl_gemm_bf16(c, ldc, pa, K, 0, pb, N, 0, M, N, K, alpha, beta);
    lt_scratch_free(pa);
    lt_scratch_free(pb);
    return st;
}

/* Which f32 GEMMs go to oneDNN's f32 kernels rather than OpenBLAS's sgemm. By measurement
   (tools/bench/f32_gemm.lua, which times both on the shapes a training step runs and prints
   the rule it supports): RULE_MEASURED below. LT_CPU_F32_GEMM=sgemm or =dnnl overrides it
   (read once), for measuring; without oneDNN everything stays with sgemm. */
/* Measured (tools/bench/results/f32_gemm.txt, two runs): on the dev VM's AMD EPYC (avx512f,
   2 threads) oneDNN's f32 GEMM runs 1.04x-1.21x OpenBLAS's sgemm on the training shapes with
   every dimension up to 2048 (C 128, C 288 and C 2048 layers: forward NT, input gradient NN,
   weight gradient TN), while the products with an 8192 side come out even (0.96x-1.07x
   between runs). So: oneDNN for products big enough for several threads whose sides are at
   most 4096; sgemm for the rest (a oneDNN call costs microseconds of setup). */
#define RULE_MEASURED(M, N, K)                                                                     \
    ((double)(M) * (double)(N) * (double)(K) >= LT_GEMM_PAR_MIN && (M) <= 4096 && (N) <= 4096 && \
     (K) <= 4096)

static int use_dnnl_f32(int64_t M, int64_t N, int64_t K) {
    static int mode = -1; /* 0 the rule, 1 sgemm, 2 oneDNN */
    if (mode < 0) {
        const char *v = getenv("LT_CPU_F32_GEMM");
        int m = v && strcmp(v, "sgemm") == 0 ? 1 : v && strcmp(v, "dnnl") == 0 ? 2 : 0;
        if (m != 1 && !lt_dnnl_available()) m = 1;
        mode = m;
    }
    if (mode == 1) return 0;
    if (mode == 2) return 1;
    return RULE_MEASURED(M, N, K);
}

/* c (M x N, row-major, ldc) = alpha * op(a) @ op(b) + beta * c, with panel conversion. */
static int gemm2d(float *c, int64_t ldc, const mat *a, const mat *b, float alpha, float beta) {
    int64_t M = op_rows(a), K = op_cols(a), N = op_cols(b);
    if (M == 0 || N == 0) return LT_OK;
    if (K == 0) {
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
        return LT_OK;
    }
    if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX || a->ld > INT32_MAX ||
        b->ld > INT32_MAX || ldc > INT32_MAX)
        return lt_fail(LT_ERR_RANGE, "matmul: a dimension exceeds the 32-bit BLAS interface");
    if (lt_get_cpu_matmul_precision() == LT_MATMUL_BF16 && (double)M * (double)N * (double)K >= LT_BF16_GEMM_MIN)
        return gemm2d_bf16(c, ldc, a, b, alpha, beta, M, N, K);
    int a_f32 = a->dtype == LT_DTYPE_F32, b_f32 = b->dtype == LT_DTYPE_F32;
    if (a_f32 && b_f32) {
        if (use_dnnl_f32(M, N, K)) {
            int st = lt_dnnl_gemm_f32(c, ldc, (const float *)a->data, a->ld, a->trans, (const float *)b->data, b->ld,
                                      b->trans, M, N, K, alpha, beta);
            if (st == LT_OK) return LT_OK;
            lt_clear_error(); /* sgemm below */
        }
        sgemm_split(a->trans, b->trans, M, N, K, alpha, (const float *)a->data, a->ld,
                    (const float *)b->data, b->ld, beta, c, ldc);
        return LT_OK;
    }
    /* Block over M for a low-precision a and over N for a low-precision b. */
    int64_t mb = a_f32 ? M : LT_PANEL_FLOATS / K, nb = b_f32 ? N : LT_PANEL_FLOATS / K;
    if (mb < 16) mb = 16;
    if (nb < 16) nb = 16;
    if (mb > M) mb = M;
    if (nb > N) nb = N;
    float *pa = a_f32 ? NULL : lt_scratch_alloc(mb * K * (int64_t)sizeof(float));
    float *pb = b_f32 ? NULL : lt_scratch_alloc(nb * K * (int64_t)sizeof(float));
    if ((!a_f32 && !pa) || (!b_f32 && !pb)) {
        lt_scratch_free(pa);
        lt_scratch_free(pb);
        return LT_ERR_NOMEM;
    }
    for (int64_t n0 = 0; n0 < N; n0 += nb) {
        int64_t nn = N - n0 < nb ? N - n0 : nb;
        const float *bp;
        int64_t ldb;
        if (b_f32) {
            bp = (const float *)b->data + (b->trans ? n0 * b->ld : n0);
            ldb = b->ld;
        } else if (b->trans) { /* op(b) columns are stored rows */
            convert_block(pb, b, n0, nn, 0, K);
            bp = pb;
            ldb = K;
        } else {
            convert_block(pb, b, 0, K, n0, nn);
            bp = pb;
            ldb = nn;
        }
        for (int64_t m0 = 0; m0 < M; m0 += mb) {
            int64_t mm = M - m0 < mb ? M - m0 : mb;
            const float *ap;
            int64_t lda;
            if (a_f32) {
                ap = (const float *)a->data + (a->trans ? m0 : m0 * a->ld);
                lda = a->ld;
            } else if (a->trans) { /* op(a) rows are stored columns */
                convert_block(pa, a, 0, K, m0, mm);
                ap = pa;
                lda = mm;
            } else {
                convert_block(pa, a, m0, mm, 0, K);
                ap = pa;
                lda = K;
            }
            sgemm_split(a->trans, b->trans, mm, nn, K, alpha, ap, lda, bp, ldb, beta,
                        c + m0 * ldc + n0, ldc);
        }
    }
    lt_scratch_free(pa);
    lt_scratch_free(pb);
    return LT_OK;
}

/* Device-agnostic: an operand of a dtype the support table takes for matmul's inputs (any
   float dtype, converted as it is read), with at least 2 dims (the device is checked
   later). */
static int check_operand(const lt_tensor *t, const char *name) {
    LT_TRY(lt_op_check_dtype(LT_OP_MATMUL, LT_OP_ROLE_READ, t, "matmul", name));
    if (t->ndim < 2) {
        char b[64];
        return lt_fail(LT_ERR_SHAPE, "matmul: %s must have at least 2 dims, got shape %s", name,
                       lt_shape_str(t, b, sizeof b));
    }
    return LT_OK;
}

/* Batch dims of t must be absent or equal c's. */
static int check_batch(const lt_tensor *t, const lt_tensor *c, const char *name) {
    if (t->ndim == 2) return LT_OK;
    int ok = t->ndim == c->ndim;
    for (int i = 0; ok && i < c->ndim - 2; i++) ok = t->sizes[i] == c->sizes[i];
    if (!ok) {
        char bt[128], bc[128];
        return lt_fail(LT_ERR_SHAPE,
                       "matmul: batch dims of %s %s must equal those of the output %s or be "
                       "absent",
                       name, lt_shape_str(t, bt, sizeof bt), lt_shape_str(c, bc, sizeof bc));
    }
    return LT_OK;
}

/* Element offset of batch `i` (flat over c's batch dims) in t (0 if t has none). */
static int64_t batch_offset(const lt_tensor *t, const lt_tensor *c, int64_t i) {
    if (t->ndim == 2) return t->offset;
    int64_t off = t->offset;
    for (int d = c->ndim - 3; d >= 0; d--) {
        int64_t idx = i % c->sizes[d];
        i /= c->sizes[d];
        off += idx * t->strides[d];
    }
    return off;
}

/* Dense row-major copy of a 2-D slice that BLAS cannot take as it is. */
static float *dense_copy(const lt_tensor *t, int64_t off, int64_t *ld_out) {
    int64_t r = t->sizes[t->ndim - 2], c = t->sizes[t->ndim - 1];
    int64_t s0 = t->strides[t->ndim - 2], s1 = t->strides[t->ndim - 1];
    float *p = lt_scratch_alloc(r * c * (int64_t)sizeof(float));
    if (!p) return NULL;
    int esz = lt_dtype_size(t->dtype_id);
    const char *base = (const char *)t->storage->data;
    for (int64_t i = 0; i < r; i++)
        for (int64_t j = 0; j < c; j++) {
            float v;
            lt_convert_to_f32(&v, base + (off + i * s0 + j * s1) * esz, t->dtype_id, 1);
            p[i * c + j] = v;
        }
    *ld_out = c;
    return p;
}

int lt_matmul(lt_tensor *c, const lt_tensor *a, const lt_tensor *b, int trans_a, int trans_b,
              float alpha, float beta) {
    /* the support table's output dtypes: f32, bf16 or f16. Here a bf16/f16 c is an f32 twin
       for the f32 GEMM, rounded once at the end (ops/lowp.h); CUDA writes it directly
       (lt_cuda_matmul checks the pairing with a and b) */
    LT_TRY(lt_op_check_dtype(LT_OP_MATMUL, LT_OP_ROLE_MAIN, c, "matmul", "out"));
    LT_TRY(check_operand(a, "a"));
    LT_TRY(check_operand(b, "b"));
    LT_TRY(lt_op_check_out(LT_OP_MATMUL, c, "matmul", "out", a, "a"));
    if (c->ndim < 2) return lt_fail(LT_ERR_SHAPE, "matmul: the output must have at least 2 dims");
    int nd = c->ndim;
    int64_t M = c->sizes[nd - 2], N = c->sizes[nd - 1];
    int64_t am = trans_a ? a->sizes[a->ndim - 1] : a->sizes[a->ndim - 2];
    int64_t ak = trans_a ? a->sizes[a->ndim - 2] : a->sizes[a->ndim - 1];
    int64_t bk = trans_b ? b->sizes[b->ndim - 1] : b->sizes[b->ndim - 2];
    int64_t bn = trans_b ? b->sizes[b->ndim - 2] : b->sizes[b->ndim - 1];
    if (am != M || bn != N || ak != bk) {
        char sa[128], sb[128], sc[128];
        return lt_fail(LT_ERR_SHAPE,
                       "matmul: op(a) is %lldx%lld and op(b) is %lldx%lld but the output is "
                       "%lldx%lld (a %s%s, b %s%s, out %s)",
                       (long long)am, (long long)ak, (long long)bk, (long long)bn, (long long)M,
                       (long long)N, lt_shape_str(a, sa, sizeof sa), trans_a ? " transposed" : "",
                       lt_shape_str(b, sb, sizeof sb), trans_b ? " transposed" : "",
                       lt_shape_str(c, sc, sizeof sc));
    }
    LT_TRY(check_batch(a, c, "a"));
    LT_TRY(check_batch(b, c, "b"));
    if (c->strides[nd - 1] != 1 && N > 1)
        return lt_fail(LT_ERR_ARG, "matmul: the output needs unit stride in its last dim");
    LT_TRY(lt_check_same_device(b, c, "matmul", "b", "out"));
    LT_DISPATCH_CUDA(c, lt_cuda_matmul(c, a, b, trans_a, trans_b, alpha, beta));
    if (lt_lowp_cpu(c)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_out(&lp, &c);
        int st = lt_lowp_begin(&lp, "matmul");
        if (st == LT_OK) st = lt_matmul(c, a, b, trans_a, trans_b, alpha, beta);
        return lt_lowp_end(&lp, st);
    }
    LT_TRY(lt_check_cpu(c, "matmul", "out"));
    LT_TRY(lt_check_cpu(a, "matmul", "a"));
    LT_TRY(lt_check_cpu(b, "matmul", "b"));
    int64_t K = ak;
    int64_t batch = 1;
    for (int i = 0; i < nd - 2; i++) batch *= c->sizes[i];

    /* Fold batch into M when b is shared and the rows of a and c nest: one large GEMM. */
    if (batch > 1 && b->ndim == 2 && a->ndim == nd && !trans_a) {
        lt_tensor a2 = {0}, c2 = {0};
        int64_t sa2[2] = {batch * M, K}, sc2[2] = {batch * M, N};
        int st = LT_ERR_SHAPE;
        if (lt_tensor_reshape(&a2, a, 2, sa2) == LT_OK && lt_tensor_reshape(&c2, c, 2, sc2) == LT_OK)
            st = lt_matmul(&c2, &a2, b, 0, trans_b, alpha, beta);
        lt_tensor_release(&a2);
        lt_tensor_release(&c2);
        if (st != LT_ERR_SHAPE) return st;
        lt_clear_error(); /* not viewable as 2-D: go batch by batch */
    }

    int asz = lt_dtype_size(a->dtype_id), bsz = lt_dtype_size(b->dtype_id);
    int64_t ldc = N > 1 ? c->strides[nd - 2] : (M > 1 ? c->strides[nd - 2] : 1);
    if (ldc < N) ldc = N;
    for (int64_t i = 0; i < batch; i++) {
        int64_t aoff = batch_offset(a, c, i), boff = batch_offset(b, c, i);
        float *cp = (float *)c->storage->data + batch_offset(c, c, i);
        mat ma, mb;
        float *tmp_a = NULL, *tmp_b = NULL;
        int ok_a = describe(&ma, (const char *)a->storage->data + aoff * asz, a->dtype_id,
                            a->sizes[a->ndim - 2], a->sizes[a->ndim - 1],
                            a->strides[a->ndim - 2], a->strides[a->ndim - 1], trans_a);
        int ok_b = describe(&mb, (const char *)b->storage->data + boff * bsz, b->dtype_id,
                            b->sizes[b->ndim - 2], b->sizes[b->ndim - 1],
                            b->strides[b->ndim - 2], b->strides[b->ndim - 1], trans_b);
        if (!ok_a) {
            int64_t ld;
            tmp_a = dense_copy(a, aoff, &ld);
            if (!tmp_a) return LT_ERR_NOMEM;
            describe(&ma, (const char *)tmp_a, LT_DTYPE_F32, a->sizes[a->ndim - 2],
                     a->sizes[a->ndim - 1], ld, 1, trans_a);
        }
        if (!ok_b) {
            int64_t ld;
            tmp_b = dense_copy(b, boff, &ld);
            if (!tmp_b) {
                lt_scratch_free(tmp_a);
                return LT_ERR_NOMEM;
            }
            describe(&mb, (const char *)tmp_b, LT_DTYPE_F32, b->sizes[b->ndim - 2],
                     b->sizes[b->ndim - 1], ld, 1, trans_b);
        }
        int st = gemm2d(cp, ldc, &ma, &mb, alpha, beta);
        lt_scratch_free(tmp_a);
        lt_scratch_free(tmp_b);
        LT_TRY(st);
    }
    return LT_OK;
}

/* A 2-D view of batch i of t (t itself when it has no batch dims). */
static int batch_view(lt_tensor *dst, const lt_tensor *t, const lt_tensor *ref, int64_t i) {
    int64_t sizes[2] = {t->sizes[t->ndim - 2], t->sizes[t->ndim - 1]};
    int64_t strides[2] = {t->strides[t->ndim - 2], t->strides[t->ndim - 1]};
    return lt_tensor_as_strided(dst, t, 2, sizes, strides, batch_offset(t, ref, i));
}

/* out = beta * out + sum over batch of op(x_i) @ op(y_i), for a 2-D out and batched x, y
   (the gradient of an operand that was broadcast over the batch). */
static int matmul_sum_batches(lt_tensor *out, const lt_tensor *x, const lt_tensor *y, int tx,
                              int ty, float beta, const lt_tensor *ref) {
    int64_t batch = 1;
    for (int i = 0; i < ref->ndim - 2; i++) batch *= ref->sizes[i];
    for (int64_t i = 0; i < batch; i++) {
        lt_tensor xv = {0}, yv = {0};
        int st = batch_view(&xv, x, ref, i);
        if (st == LT_OK) st = batch_view(&yv, y, ref, i);
        if (st == LT_OK) st = lt_matmul(out, &xv, &yv, tx, ty, 1.0f, i == 0 ? beta : 1.0f);
        lt_tensor_release(&xv);
        lt_tensor_release(&yv);
        LT_TRY(st);
    }
    return LT_OK;
}

int lt_matmul_backward(lt_tensor *da, lt_tensor *db, const lt_tensor *dc, const lt_tensor *a,
                       const lt_tensor *b, int trans_a, int trans_b, float beta_a,
                       float beta_b) {
    LT_TRY(lt_op_check_dtype(LT_OP_MATMUL, LT_OP_ROLE_READ, dc, "matmul_backward", "dout"));
    LT_TRY(check_operand(a, "a"));
    LT_TRY(check_operand(b, "b"));
    if (dc->ndim < 2) return lt_fail(LT_ERR_SHAPE, "matmul_backward: dout must have >= 2 dims");
    if (da) LT_TRY(lt_op_check_out(LT_OP_MATMUL, da, "matmul_backward", "da", dc, "dout"));
    if (db) LT_TRY(lt_op_check_out(LT_OP_MATMUL, db, "matmul_backward", "db", dc, "dout"));
    if (da) LT_TRY(lt_check_same_shape(da, a, "matmul_backward", "da", "a"));
    if (db) LT_TRY(lt_check_same_shape(db, b, "matmul_backward", "db", "b"));
    LT_TRY(lt_check_same_device(a, dc, "matmul_backward", "a", "dout"));
    LT_TRY(lt_check_same_device(b, dc, "matmul_backward", "b", "dout"));
    if (lt_lowp_cpu(da) || lt_lowp_cpu(db)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_out(&lp, &da);
        lt_lowp_out(&lp, &db);
        int st = lt_lowp_begin(&lp, "matmul_backward");
        if (st == LT_OK)
            st = lt_matmul_backward(da, db, dc, a, b, trans_a, trans_b, beta_a, beta_b);
        return lt_lowp_end(&lp, st);
    }
    /* Device-agnostic from here: every product is an lt_matmul, which runs where its
       operands are. */
    int batched = dc->ndim > 2;
    if (da) {
        if (batched && a->ndim == 2) {
            /* a was broadcast over the batch: sum its gradient. */
            if (!trans_a)
                LT_TRY(matmul_sum_batches(da, dc, b, 0, !trans_b, beta_a, dc));
            else
                LT_TRY(matmul_sum_batches(da, b, dc, trans_b, 1, beta_a, dc));
        } else if (!trans_a) {
            LT_TRY(lt_matmul(da, dc, b, 0, !trans_b, 1.0f, beta_a));
        } else {
            LT_TRY(lt_matmul(da, b, dc, trans_b, 1, 1.0f, beta_a));
        }
    }
    if (db) {
        if (batched && b->ndim == 2) {
            /* Fold the batch into the reduction when rows nest, else sum batch by batch. */
            int64_t rows = 1;
            for (int i = 0; i < dc->ndim - 1; i++) rows *= dc->sizes[i];
            lt_tensor a2 = {0}, dc2 = {0};
            int64_t sa2[2] = {rows, a->sizes[a->ndim - 1]}, sd2[2] = {rows, dc->sizes[dc->ndim - 1]};
            int folded = !trans_a && a->ndim == dc->ndim &&
                         lt_tensor_reshape(&a2, a, 2, sa2) == LT_OK &&
                         lt_tensor_reshape(&dc2, dc, 2, sd2) == LT_OK;
            int st = LT_OK;
            if (folded) {
                st = !trans_b ? lt_matmul(db, &a2, &dc2, 1, 0, 1.0f, beta_b)
                              : lt_matmul(db, &dc2, &a2, 1, 0, 1.0f, beta_b);
            } else {
                lt_clear_error();
                st = !trans_b ? matmul_sum_batches(db, a, dc, !trans_a, 0, beta_b, dc)
                              : matmul_sum_batches(db, dc, a, 1, trans_a, beta_b, dc);
            }
            lt_tensor_release(&a2);
            lt_tensor_release(&dc2);
            LT_TRY(st);
        } else if (!trans_b) {
            LT_TRY(lt_matmul(db, a, dc, !trans_a, 0, 1.0f, beta_b));
        } else {
            LT_TRY(lt_matmul(db, dc, a, 1, trans_a, 1.0f, beta_b));
        }
    }
    return LT_OK;
}
