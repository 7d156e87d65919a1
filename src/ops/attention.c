/* attention.c - FlashAttention-2 style softmax attention on the CPU, forward and backward,
 * with grouped-query heads, packed variable-length sequences and bottom-right causal masks.
 *
 * Work is split into segments: one per batch row, or one per packed sequence when
 * cu_seqlens is given (queries and keys of a segment never meet another segment's).
 *
 * Forward: a work item is (segment, query head, block of BQ query rows). It walks the
 * segment's keys in tiles of BK with an online softmax: the scores of a tile are one small
 * GEMM Q (BQ x D) @ K^T (D x BK), each row keeps its running max m and sum l, and the f32
 * accumulator O (BQ x D) is rescaled by exp(m_old - m_new) when a row's max grows before
 * P (BQ x BK) @ V (BK x D) is added to it. O is divided by l at the end and
 * lse = m + log(l) is saved per row for the backward.
 *
 * Backward: a work item is (segment, key/value head) and owns everything it writes: dk, dv
 * of that head and dq of the group's query heads over the segment. It walks key tiles in
 * the outer loop (their dK, dV accumulate in BK x D tiles) and, inside, every query head
 * of the group and every query block that sees the tile: P is recomputed from q, k and
 * lse, D_i = rowsum(dO_i * O_i), dV += P^T dO, dP = dO V^T, dS = P * (dP - D_i),
 * dQ += scale dS K (straight into dq, which the item zeroed), dK += scale dS^T Q.
 * Every output element is therefore summed by one thread in one fixed order: results are
 * the same bits run to run and for any thread count.
 *
 * Causal masking is bottom-right aligned: query t sees keys s <= t + (S - T), which is the
 * usual mask when T == S and the KV-cache mask when the queries are the last T of S. Key
 * tiles no row of a query block sees are skipped; only tiles crossing the diagonal are
 * masked element by element.
 *
 * Memory: per thread O(BQ * BK + BK * D + BQ * D) floats of scratch (150 KB for the
 * forward and 112 KB for the backward at D = 64), whatever T and S are; nothing of size
 * T * S exists. */
#include <stdlib.h>

#include "core/internal.h"
#include "lt_ops.h"
#include "ops/lowp.h"
#include "ops/support.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Tile sizes: query rows BQ and key columns BK, chosen apart for the two passes. BQ is a
 * multiple of the micro-kernel's tile height (8) and BK of 16 floats (one AVX-512 vector,
 * two AVX2 ones), so the score GEMMs run on whole register tiles.
 *
 * Measured on the 2-core Zen 5 dev box (AVX-512), causal, one thread, best of 3 interleaved
 * runs, every pair of BQ in {32, 64, 128} and BK in {32, 64, 128, 256}; the shapes are
 * (B, T, H/Hkv, D) = (8, 256, 6/6, 48), the tools/bench train step, then (1, 256, 8/2, 64),
 * (1, 1024, 8/2, 64), (1, 4096, 8/2, 64), (1, 1024, 8/8, 128) and a packed row of 1024
 * with 9 sequences at (4/4, 32), the QLoRA recipe's shape:
 *   forward  64 x 256: 3.18, 0.59, 7.9, 117, 17.0, 0.71 ms   (was 4.29, 0.83, 11.7, 185,
 *                      23.0, 0.99 with the whole-row kernel this replaces)
 *            64 x 128: 3.25, 0.61, 7.9, 117, 17.5, 0.73;  64 x 64: 3.51, 0.63, 8.0, 121, 17.6
 *           128 x 128: 3.56, 0.67, 8.0, 113, 16.5, 0.77 (better only from T = 4096 on)
 *   backward 64 x 64:  6.36, 1.19, 16.7, 296, 36.3, 1.21 ms   (was 7.51, 1.39, 32.2, 511,
 *                      60.3, 1.63)
 *            64 x 128: 7.41, 1.39, 17.1, 273, 37.3, 1.42 (8% better at T = 4096 only)
 *            32 x 32:  6.28, 1.16, 17.4, 326, 37.0, 1.21 (worse with 2 threads: 4.25 vs
 *                      4.06 ms on the train-step shape)
 * Long key tiles pay in the forward, where a query block's softmax state is carried from
 * tile to tile and a longer tile means fewer rescales and K^T transposes per score; the
 * backward's diagonal tiles waste half their work under the causal mask, which favours
 * short tiles there at the sequence lengths training uses. */
enum { FWD_BQ = 64, FWD_BK = 256, BWD_BQ = 64, BWD_BK = 64 };

/* A run of queries [q0, q0 + nq) of batch row b attending keys [k0, k0 + nk) of the same
   row; causally, query i of the run sees keys up to i + (nk - nq). */
typedef struct {
    int64_t b, q0, nq, k0, nk;
} attn_seg;

typedef struct {
    int64_t B, T, S, H, Hkv, D, group;
    float scale;
    int causal;
    const float *q, *k, *v;
    int64_t qs[3], ks[3], vs[3]; /* strides of dims B, T|S, H|Hkv (D has unit stride) */
    attn_seg *segs;              /* nseg segments, owned (lt_scratch_free) */
    int64_t nseg, max_nk;
} attn_shape;

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* Number of keys query i (of its segment) may see. */
static int64_t keys_for(const attn_shape *a, const attn_seg *g, int64_t i) {
    if (!a->causal) return g->nk;
    int64_t n = i + g->nk - g->nq + 1;
    return n < 0 ? 0 : (n > g->nk ? g->nk : n);
}

/* The segments: one per batch row, or the packed sequences of cu_seqlens. */
static int make_segments(attn_shape *a, const lt_tensor *cu, const char *op) {
    a->segs = NULL;
    a->nseg = 0;
    a->max_nk = 0;
    if (!cu) {
        a->segs = lt_scratch_alloc(a->B * (int64_t)sizeof(attn_seg));
        if (!a->segs && a->B) return LT_ERR_NOMEM;
        for (int64_t b = 0; b < a->B; b++) a->segs[b] = (attn_seg){b, 0, a->T, 0, a->S};
        a->nseg = a->B;
        a->max_nk = a->S;
        return LT_OK;
    }
    LT_TRY(lt_check_cpu(cu, op, "cu_seqlens"));
    if (cu->dtype_id != LT_DTYPE_I32 || cu->ndim != 1 || !lt_tensor_is_contiguous(cu))
        return lt_fail(LT_ERR_ARG, "%s: cu_seqlens must be a contiguous 1-D i32 tensor", op);
    if (a->S != a->T)
        return lt_fail(LT_ERR_SHAPE, "%s: packed sequences (cu_seqlens) need as many keys as queries, got T %lld and S %lld",
                       op, (long long)a->T, (long long)a->S);
    int64_t n = cu->sizes[0] - 1, total = a->B * a->T;
    const int32_t *c = lt_tensor_data(cu);
    if (n < 1 || c[0] != 0 || c[n] != total)
        return lt_fail(LT_ERR_ARG, "%s: cu_seqlens must run from 0 to B * T = %lld (got %lld entries)",
                       op, (long long)total, (long long)cu->sizes[0]);
    for (int64_t g = 0; g < n; g++) {
        if (c[g + 1] <= c[g])
            return lt_fail(LT_ERR_ARG, "%s: cu_seqlens must increase: entry %lld is %d, entry %lld is %d",
                           op, (long long)g, c[g], (long long)(g + 1), c[g + 1]);
        if (c[g] / a->T != (c[g + 1] - 1) / a->T)
            return lt_fail(LT_ERR_ARG, "%s: packed sequence %lld ([%d, %d)) crosses a batch row of %lld positions",
                           op, (long long)g, c[g], c[g + 1], (long long)a->T);
    }
    a->segs = lt_scratch_alloc(n * (int64_t)sizeof(attn_seg));
    if (!a->segs) return LT_ERR_NOMEM;
    for (int64_t g = 0; g < n; g++) {
        int64_t b = c[g] / a->T, t0 = c[g] % a->T, len = c[g + 1] - c[g];
        a->segs[g] = (attn_seg){b, t0, len, t0, len};
        if (len > a->max_nk) a->max_nk = len;
    }
    a->nseg = n;
    return LT_OK;
}

static int check_qkv(const lt_tensor *t, const char *op, const char *name) {
    LT_TRY(lt_check_ndim(t, 4, op, name));
    LT_TRY(lt_check_cpu(t, op, name));
    LT_TRY(lt_op_check_dtype(LT_OP_ATTENTION, LT_OP_ROLE_MAIN, t, op, name));
    if (t->strides[3] != 1 && t->sizes[3] > 1)
        return lt_fail(LT_ERR_ARG, "%s: %s needs unit stride in the head dim", op, name);
    return LT_OK;
}

static int setup(attn_shape *a, const lt_tensor *q, const lt_tensor *k, const lt_tensor *v,
                 const lt_tensor *cu, float scale, int causal, const char *op) {
    LT_TRY(check_qkv(q, op, "q"));
    LT_TRY(check_qkv(k, op, "k"));
    LT_TRY(check_qkv(v, op, "v"));
    LT_TRY(lt_check_same_shape(v, k, op, "v", "k"));
    a->B = q->sizes[0];
    a->T = q->sizes[1];
    a->H = q->sizes[2];
    a->D = q->sizes[3];
    a->S = k->sizes[1];
    a->Hkv = k->sizes[2];
    if (k->sizes[0] != a->B || k->sizes[3] != a->D || a->Hkv == 0 || a->H % a->Hkv != 0) {
        char sq[128], sk[128];
        return lt_fail(LT_ERR_SHAPE,
                       "%s: q %s must be (B, T, H, D) and k, v %s (B, S, Hkv, D) with H a "
                       "multiple of Hkv",
                       op, lt_shape_str(q, sq, sizeof sq), lt_shape_str(k, sk, sizeof sk));
    }
    if (!(scale > 0) || !isfinite(scale))
        return lt_fail(LT_ERR_ARG, "%s: scale must be a positive finite number, got %g", op,
                       (double)scale);
    a->group = a->H / a->Hkv;
    a->scale = scale;
    a->causal = causal;
    a->q = (const float *)q->storage->data + q->offset;
    a->k = (const float *)k->storage->data + k->offset;
    a->v = (const float *)v->storage->data + v->offset;
    for (int i = 0; i < 3; i++) {
        a->qs[i] = q->strides[i];
        a->ks[i] = k->strides[i];
        a->vs[i] = v->strides[i];
    }
    return make_segments(a, cu, op);
}

static int check_like(const lt_tensor *t, const lt_tensor *ref, const char *op, const char *name,
                      const char *refname) {
    LT_TRY(check_qkv(t, op, name));
    return lt_check_same_shape(t, ref, op, name, refname);
}

/* q, k, v, out, dout, dq, dk and dv share one dtype, as on CUDA (cuda/attention.cu); the
   bf16/f16 ones go through f32 twins together (ops/lowp.h). Missing tensors are left to
   the shape checks, which name them. */
static int check_one_dtype(const char *op, const lt_tensor *q, int n, const lt_tensor *const *ts,
                           const char *const *names) {
    for (int i = 0; i < n; i++)
        if (ts[i] && ts[i]->storage && ts[i]->dtype_id != q->dtype_id)
            return lt_fail(LT_ERR_DTYPE,
                           "%s: %s is %s but q is %s (q, k, v, out, dout, dq, dk and dv share "
                           "one dtype: f32, bf16 or f16)",
                           op, names[i], lt_dtype_info(ts[i]->dtype_id)->name,
                           lt_dtype_info(q->dtype_id)->name);
    return LT_OK;
}

static int check_lse(const lt_tensor *lse, const attn_shape *a, const char *op) {
    LT_TRY(lt_check_f32_contig(lse, op, "lse"));
    if (lt_tensor_numel(lse) != a->B * a->H * a->T)
        return lt_fail(LT_ERR_SHAPE, "%s: lse must be (B, H, T) = (%lld, %lld, %lld)", op,
                       (long long)a->B, (long long)a->H, (long long)a->T);
    return LT_OK;
}

static int num_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Transposes go 8 x 8 at a time through registers (the compiler lowers the shuffles to AVX
   or SSE). The backward transposes two BQ x BK tiles per tile pair; done element by element
   that took 12% of its time on the train-step shape (4.62 -> 4.05 ms, 2-core dev box). */
typedef float f8 __attribute__((vector_size(8 * sizeof(float)), aligned(4)));
typedef int32_t i8 __attribute__((vector_size(8 * sizeof(float))));

/* SHUFFLE8(a, b, i0, ..., i7): lane k of the result is lane ik of the 16 lanes a ++ b.
   GCC's __builtin_shuffle takes the indices as a vector, clang's __builtin_shufflevector
   as constant arguments; GCC keeps its own builtin so its code stays as it was measured. */
#if defined(__clang__)
#define SHUFFLE8(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE8(a, b, ...) __builtin_shuffle(a, b, (i8){__VA_ARGS__})
#endif

/* dst rows 0..7 (stride ldd) = columns 0..7 of the 8 rows at src (stride lds). */
static inline void transpose8(float *restrict dst, int64_t ldd, const float *restrict src,
                              int64_t lds) {
    f8 r[8], t[8], u[8];
    for (int i = 0; i < 8; i++) r[i] = *(const f8 *)(src + i * lds);
    for (int i = 0; i < 8; i += 2) {
        t[i] = SHUFFLE8(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[i + 1] = SHUFFLE8(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int i = 0; i < 8; i += 4)
        for (int k = 0; k < 2; k++) {
            f8 x = t[i + k], y = t[i + k + 2];
            u[i + 2 * k] = SHUFFLE8(x, y, 0, 1, 8, 9, 4, 5, 12, 13);
            u[i + 2 * k + 1] = SHUFFLE8(x, y, 2, 3, 10, 11, 6, 7, 14, 15);
        }
    for (int i = 0; i < 4; i++) {
        *(f8 *)(dst + i * ldd) = SHUFFLE8(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        *(f8 *)(dst + (i + 4) * ldd) = SHUFFLE8(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
}

/* dst (cols x ldd) = src (rows x cols, row stride lds) transposed. */
static void transpose(float *restrict dst, int64_t ldd, const float *restrict src, int64_t lds,
                      int64_t rows, int64_t cols) {
    int64_t r8 = rows / 8 * 8, c8 = cols / 8 * 8;
    for (int64_t c = 0; c < c8; c += 8)
        for (int64_t r = 0; r < r8; r += 8)
            transpose8(dst + c * ldd + r, ldd, src + r * lds + c, lds);
    for (int64_t r = r8; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) dst[c * ldd + r] = src[r * lds + c];
    for (int64_t r = 0; r < r8; r++)
        for (int64_t c = c8; c < cols; c++) dst[c * ldd + r] = src[r * lds + c];
}

/* dst (D x ld) = rows [0, n) of a K or V tile (n x D, row stride rs), transposed; the
   columns [n, ld) are zeroed so the score GEMM may run on whole vectors. */
static void transpose_tile(float *restrict dst, int64_t ld, const float *restrict src,
                           int64_t rs, int64_t n, int64_t D) {
    transpose(dst, ld, src, rs, n, D);
    for (int64_t d = 0; d < D; d++)
        for (int64_t c = n; c < ld; c++) dst[d * ld + c] = 0.0f;
}

/* Row reductions keep LANES partial results in one vector and fold them in a fixed tree
   at the end: the loops vectorise (a running scalar sum cannot be reordered without
   -ffast-math), and the result depends on nothing but the row. LANES is a multiple of the
   GEMM vector width on every target, so rows padded to LANES also suit the micro-kernel. */
enum { LANES = 16 };
_Static_assert(FWD_BK % LANES == 0 && BWD_BK % LANES == 0, "key tiles are whole lane vectors");

/* Without AVX-512 a 64-byte vector argument is passed in memory, and both compilers warn
   that this ABI differs from an AVX-512 build's (-Wpsabi). These vectors only cross static
   functions of this file, so no call between differently built objects ever sees them. */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float lanes_f __attribute__((vector_size(LANES * sizeof(float)), aligned(4)));
typedef int32_t lanes_i __attribute__((vector_size(LANES * sizeof(float)), aligned(4)));

/* lane-wise a > b ? a : b (GCC does not vectorise the scalar ternary in a reduction) */
static inline lanes_f lanes_max(lanes_f a, lanes_f b) {
    lanes_i gt = a > b;
    return (lanes_f)(((lanes_i)a & gt) | ((lanes_i)b & ~gt));
}

static inline float lanes_hmax(lanes_f v) {
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int u = 0; u < w; u++) v[u] = v[u] > v[u + w] ? v[u] : v[u + w];
    return v[0];
}

static inline float lanes_hsum(lanes_f v) {
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int u = 0; u < w; u++) v[u] += v[u + w];
    return v[0];
}

static float row_max(const float *x, int64_t n) {
    lanes_f part = (lanes_f){0} - INFINITY;
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES) part = lanes_max(*(const lanes_f *)(x + j), part);
    float mx = lanes_hmax(part);
    for (; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    return mx;
}

/* acc += x[0, n) folded onto LANES lanes; x must hold zeros up to round_up(n, LANES). */
static inline lanes_f lanes_add_row(lanes_f acc, const float *x, int64_t n) {
    for (int64_t j = 0; j < n; j += LANES) acc += *(const lanes_f *)(x + j);
    return acc;
}

static float row_dot(const float *x, const float *y, int64_t n) {
    lanes_f part = {0};
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
        part += *(const lanes_f *)(x + j) * *(const lanes_f *)(y + j);
    float sum = lanes_hsum(part);
    for (; j < n; j++) sum += x[j] * y[j];
    return sum;
}

/* Keys of the tile [j0, j0 + bk) that query i of the segment sees. */
static int64_t tile_keys(const attn_shape *a, const attn_seg *g, int64_t i, int64_t j0,
                         int64_t bk) {
    int64_t n = keys_for(a, g, i) - j0;
    return n < 0 ? 0 : (n > bk ? bk : n);
}

/* floats of per-thread scratch */
static int64_t forward_scratch(int64_t D) {
    return D * FWD_BK + FWD_BQ * FWD_BK + FWD_BQ * D + FWD_BQ + FWD_BQ * LANES;
}

/* One query block: rows [i0, i0 + bq) of segment g, query head h. */
static void forward_block(const attn_shape *a, const attn_seg *g, int64_t h, int64_t i0,
                          float *o, const int64_t os[3], float *lp, float *scratch) {
    int64_t D = a->D, b = g->b, hkv = h / a->group;
    const float scale = a->scale;
    int64_t bq = g->nq - i0 < FWD_BQ ? g->nq - i0 : FWD_BQ;
    int64_t lim = keys_for(a, g, i0 + bq - 1); /* keys the block's last row sees */
    int64_t t0 = g->q0 + i0;
    const float *qb = a->q + b * a->qs[0] + t0 * a->qs[1] + h * a->qs[2];
    const float *kh = a->k + b * a->ks[0] + g->k0 * a->ks[1] + hkv * a->ks[2];
    const float *vh = a->v + b * a->vs[0] + g->k0 * a->vs[1] + hkv * a->vs[2];
    float *kt = scratch;                        /* K^T tile (D x BK) */
    float *s = kt + D * FWD_BK;                 /* scores, then probabilities (BQ x BK) */
    float *acc = s + FWD_BQ * FWD_BK;           /* unnormalised output (BQ x D) */
    lanes_f *l = (lanes_f *)(acc + FWD_BQ * D); /* running row sums, in LANES parts (BQ) */
    float *m = (float *)(l + FWD_BQ);           /* running row max (BQ) */
    for (int64_t i = 0; i < bq; i++) {
        m[i] = -INFINITY;
        l[i] = (lanes_f){0};
    }
    memset(acc, 0, (size_t)(bq * D) * sizeof(float));
    for (int64_t j0 = 0; j0 < lim; j0 += FWD_BK) {
        int64_t bk = lim - j0 < FWD_BK ? lim - j0 : FWD_BK, bkp = round_up(bk, LANES);
        transpose_tile(kt, bkp, kh + j0 * a->ks[1], a->ks[1], bk, D);
        lt_gemm_nn(bq, bkp, D, qb, a->qs[1], kt, bkp, s, bkp, 0);
        for (int64_t i = 0; i < bq; i++) {
            int64_t n = tile_keys(a, g, i0 + i, j0, bk);
            float *row = s + i * bkp;
            if (n == 0) {
                memset(row, 0, (size_t)bkp * sizeof(float));
                continue;
            }
            /* scaling is monotonic, so the max of the scaled scores is the scaled max */
            float mx = row_max(row, n) * scale;
            if (mx > m[i]) { /* the max grew: rescale what was summed under the old one */
                float alpha = m[i] == -INFINITY ? 0.0f : lt_exp_neg(m[i] - mx);
                float *ar = acc + i * D;
                for (int64_t d = 0; d < D; d++) ar[d] *= alpha;
                l[i] *= alpha;
                m[i] = mx;
            }
            float mi = m[i];
            for (int64_t j = 0; j < n; j++) row[j] = lt_exp_neg(row[j] * scale - mi);
            for (int64_t j = n; j < bkp; j++) row[j] = 0.0f;
            l[i] = lanes_add_row(l[i], row, n);
        }
        lt_gemm_nn(bq, D, bk, s, bkp, vh + j0 * a->vs[1], a->vs[1], acc, D, 1);
    }
    float *ob = o + b * os[0] + t0 * os[1] + h * os[2];
    for (int64_t i = 0; i < bq; i++) {
        float *orow = ob + i * os[1];
        const float *ar = acc + i * D;
        float sum = lanes_hsum(l[i]);
        /* a query with no visible key attends to nothing: zero output, lse -inf */
        float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        for (int64_t d = 0; d < D; d++) orow[d] = ar[d] * inv;
        if (lp) lp[(b * a->H + h) * a->T + t0 + i] = sum > 0.0f ? m[i] + logf(sum) : -INFINITY;
    }
}

/* The query blocks of all segments, as (segment, first row) pairs. */
typedef struct {
    int64_t seg, i0;
} attn_block;

int lt_attention_forward(lt_tensor *out, lt_tensor *lse, const lt_tensor *q, const lt_tensor *k,
                         const lt_tensor *v, const lt_tensor *cu_seqlens, float scale,
                         int causal) {
    const char *op = "attention_forward";
    /* q's dtype against the support table on every device; CUDA tensors then go to
       cuda/attention.cu, which makes the other checks (k, v and out share q's dtype) */
    LT_TRY(lt_op_check_dtype(LT_OP_ATTENTION, LT_OP_ROLE_MAIN, q, op, "q"));
    LT_DISPATCH_CUDA(q, lt_cuda_attention_forward(out, lse, q, k, v, cu_seqlens, scale, causal));
    {
        const lt_tensor *ts[] = {k, v, out};
        const char *names[] = {"k", "v", "out"};
        LT_TRY(check_one_dtype(op, q, 3, ts, names));
    }
    if (lt_lowp_cpu(q)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &q);
        lt_lowp_in(&lp, &k);
        lt_lowp_in(&lp, &v);
        lt_lowp_out(&lp, &out);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK) st = lt_attention_forward(out, lse, q, k, v, cu_seqlens, scale, causal);
        return lt_lowp_end(&lp, st);
    }
    attn_shape a;
    LT_TRY(check_like(out, q, op, "out", "q"));
    LT_TRY(lt_op_check_out(LT_OP_ATTENTION, out, op, "out", q, "q"));
    if (lse) LT_TRY(lt_check_out(lse, LT_DTYPE_F32, op, "lse", q, "q"));
    LT_TRY(setup(&a, q, k, v, cu_seqlens, scale, causal, op));
    int st = lse ? check_lse(lse, &a, op) : LT_OK;
    int64_t T = a.T, H = a.H, D = a.D, nseg = a.nseg;
    if (st != LT_OK || a.B * T * H == 0) {
        lt_scratch_free(a.segs);
        return st;
    }
    int64_t nblk = 0;
    for (int64_t g = 0; g < nseg; g++) nblk += (a.segs[g].nq + FWD_BQ - 1) / FWD_BQ;
    int64_t per_thread = forward_scratch(D);
    int nt = num_threads();
    attn_block *blocks = lt_scratch_alloc(nblk * (int64_t)sizeof(attn_block));
    float *scratch = lt_scratch_alloc((int64_t)nt * per_thread * (int64_t)sizeof(float));
    if (!blocks || !scratch) {
        lt_scratch_free(blocks);
        lt_scratch_free(scratch);
        lt_scratch_free(a.segs);
        return LT_ERR_NOMEM;
    }
    for (int64_t g = 0, n = 0; g < nseg; g++)
        for (int64_t i0 = 0; i0 < a.segs[g].nq; i0 += FWD_BQ) blocks[n++] = (attn_block){g, i0};
    float *o = (float *)out->storage->data + out->offset;
    int64_t os[3] = {out->strides[0], out->strides[1], out->strides[2]};
    float *lp = lse ? lt_tensor_data(lse) : NULL;
    int64_t nitems = nblk * H;

    /* Items run last block first: under a causal mask the later blocks of a segment see
       more keys, and starting with them leaves the cheap ones to even out the threads. */
#pragma omp parallel for schedule(dynamic, 1) \
    if (nitems > 1 && nseg * H * T * a.max_nk * D >= LT_PAR_MIN_WORK)
    for (int64_t it = 0; it < nitems; it++) {
        int64_t r = nitems - 1 - it;
        const attn_block *blk = &blocks[r / H];
        forward_block(&a, &a.segs[blk->seg], r % H, blk->i0, o, os, lp,
                      scratch + (int64_t)thread_id() * per_thread);
    }
    lt_scratch_free(scratch);
    lt_scratch_free(blocks);
    lt_scratch_free(a.segs);
    return LT_OK;
}

/* Output tensors and their strides, for the backward. */
typedef struct {
    const float *go, *fo; /* dout, out */
    float *gq, *gk, *gv;
    const float *lp;
    int64_t gos[3], fos[3], gqs[3], gks[3], gvs[3];
} attn_grads;

/* floats of per-thread scratch */
static int64_t backward_scratch(int64_t D) {
    return 2 * D * BWD_BK + 3 * BWD_BQ * BWD_BK + 2 * BWD_BK * D;
}

/* Segment g, key/value head hkv: dk and dv of the head, dq of its query heads. */
static void backward_group(const attn_shape *a, const attn_grads *gr, const attn_seg *g,
                           int64_t hkv, float *scratch) {
    int64_t D = a->D, b = g->b, nk = g->nk, nq = g->nq;
    const float scale = a->scale;
    int64_t h0 = hkv * a->group, h1 = h0 + a->group;
    float *kt = scratch;                  /* K^T tile (D x BK) */
    float *vt = kt + D * BWD_BK;          /* V^T tile (D x BK) */
    float *p = vt + D * BWD_BK;           /* probabilities (BQ x BK) */
    float *ds = p + BWD_BQ * BWD_BK;      /* dP, then dS (BQ x BK) */
    float *tr = ds + BWD_BQ * BWD_BK;     /* P^T or dS^T (BK x BQ) */
    float *dk_acc = tr + BWD_BK * BWD_BQ; /* dK tile (BK x D) */
    float *dv_acc = dk_acc + BWD_BK * D;  /* dV tile (BK x D) */
    const float *kh = a->k + b * a->ks[0] + g->k0 * a->ks[1] + hkv * a->ks[2];
    const float *vh = a->v + b * a->vs[0] + g->k0 * a->vs[1] + hkv * a->vs[2];
    float *gkh = gr->gk + b * gr->gks[0] + g->k0 * gr->gks[1] + hkv * gr->gks[2];
    float *gvh = gr->gv + b * gr->gvs[0] + g->k0 * gr->gvs[1] + hkv * gr->gvs[2];
    for (int64_t h = h0; h < h1; h++) {
        float *gqh = gr->gq + b * gr->gqs[0] + g->q0 * gr->gqs[1] + h * gr->gqs[2];
        for (int64_t i = 0; i < nq; i++)
            memset(gqh + i * gr->gqs[1], 0, (size_t)D * sizeof(float));
    }
    for (int64_t j0 = 0; j0 < nk; j0 += BWD_BK) {
        int64_t bk = nk - j0 < BWD_BK ? nk - j0 : BWD_BK, bkp = round_up(bk, LANES);
        memset(dk_acc, 0, (size_t)(2 * BWD_BK * D) * sizeof(float));
        /* causally, query i sees key j0 when j0 < i + (nk - nq) + 1 */
        int64_t ifirst = a->causal ? j0 - (nk - nq) : 0;
        if (ifirst < 0) ifirst = 0;
        if (ifirst < nq) {
            transpose_tile(kt, bkp, kh + j0 * a->ks[1], a->ks[1], bk, D);
            transpose_tile(vt, bkp, vh + j0 * a->vs[1], a->vs[1], bk, D);
        }
        for (int64_t h = h0; h < h1 && ifirst < nq; h++) {
            for (int64_t i0 = ifirst / BWD_BQ * BWD_BQ; i0 < nq; i0 += BWD_BQ) {
                int64_t bq = nq - i0 < BWD_BQ ? nq - i0 : BWD_BQ, t0 = g->q0 + i0;
                /* the tile's first nb keys: those the block's last row sees (>= 1 here) */
                int64_t nb = tile_keys(a, g, i0 + bq - 1, j0, bk), nbp = round_up(nb, LANES);
                const float *qb = a->q + b * a->qs[0] + t0 * a->qs[1] + h * a->qs[2];
                const float *gob = gr->go + b * gr->gos[0] + t0 * gr->gos[1] + h * gr->gos[2];
                const float *fob = gr->fo + b * gr->fos[0] + t0 * gr->fos[1] + h * gr->fos[2];
                float *gqb = gr->gq + b * gr->gqs[0] + t0 * gr->gqs[1] + h * gr->gqs[2];
                const float *lrow = gr->lp + (b * a->H + h) * a->T + t0;
                lt_gemm_nn(bq, nbp, D, qb, a->qs[1], kt, bkp, p, bkp, 0);
                lt_gemm_nn(bq, nbp, D, gob, gr->gos[1], vt, bkp, ds, bkp, 0);
                for (int64_t i = 0; i < bq; i++) {
                    int64_t n = tile_keys(a, g, i0 + i, j0, bk);
                    float *prow = p + i * bkp, *dsrow = ds + i * bkp;
                    const float *gor = gob + i * gr->gos[1], *forow = fob + i * gr->fos[1];
                    /* D_i = rowsum(dO_i * O_i), first: dS needs it */
                    float delta = n > 0 ? row_dot(gor, forow, D) : 0.0f, lse_i = lrow[i];
                    for (int64_t j = 0; j < n; j++) {
                        float pj = lt_exp_neg(prow[j] * scale - lse_i);
                        prow[j] = pj;
                        dsrow[j] = pj * (dsrow[j] - delta) * scale;
                    }
                    for (int64_t j = n; j < nb; j++) {
                        prow[j] = 0.0f;
                        dsrow[j] = 0.0f;
                    }
                }
                /* dQ (bq x D) += dS (bq x nb) @ K (nb x D) */
                lt_gemm_nn(bq, D, nb, ds, bkp, kh + j0 * a->ks[1], a->ks[1], gqb, gr->gqs[1], 1);
                /* dK (nb x D) += dS^T (nb x bq) @ Q (bq x D) */
                transpose(tr, BWD_BQ, ds, bkp, bq, nb);
                lt_gemm_nn(nb, D, bq, tr, BWD_BQ, qb, a->qs[1], dk_acc, D, 1);
                /* dV (nb x D) += P^T (nb x bq) @ dO (bq x D) */
                transpose(tr, BWD_BQ, p, bkp, bq, nb);
                lt_gemm_nn(nb, D, bq, tr, BWD_BQ, gob, gr->gos[1], dv_acc, D, 1);
            }
        }
        for (int64_t j = 0; j < bk; j++) {
            memcpy(gkh + (j0 + j) * gr->gks[1], dk_acc + j * D, (size_t)D * sizeof(float));
            memcpy(gvh + (j0 + j) * gr->gvs[1], dv_acc + j * D, (size_t)D * sizeof(float));
        }
    }
}

int lt_attention_backward(lt_tensor *dq, lt_tensor *dk, lt_tensor *dv, const lt_tensor *dout,
                          const lt_tensor *q, const lt_tensor *k, const lt_tensor *v,
                          const lt_tensor *out, const lt_tensor *lse,
                          const lt_tensor *cu_seqlens, float scale, int causal) {
    const char *op = "attention_backward";
    LT_TRY(lt_op_check_dtype(LT_OP_ATTENTION, LT_OP_ROLE_MAIN, q, op, "q"));
    LT_DISPATCH_CUDA(q, lt_cuda_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens,
                                                   scale, causal));
    {
        const lt_tensor *ts[] = {k, v, out, dout, dq, dk, dv};
        const char *names[] = {"k", "v", "out", "dout", "dq", "dk", "dv"};
        LT_TRY(check_one_dtype(op, q, 7, ts, names));
    }
    if (lt_lowp_cpu(q)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &dout);
        lt_lowp_in(&lp, &q);
        lt_lowp_in(&lp, &k);
        lt_lowp_in(&lp, &v);
        lt_lowp_in(&lp, &out);
        lt_lowp_out(&lp, &dq);
        lt_lowp_out(&lp, &dk);
        lt_lowp_out(&lp, &dv);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK)
            st = lt_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, scale,
                                       causal);
        return lt_lowp_end(&lp, st);
    }
    attn_shape a;
    LT_TRY(check_like(dout, q, op, "dout", "q"));
    LT_TRY(check_like(out, q, op, "out", "q"));
    LT_TRY(check_like(dq, q, op, "dq", "q"));
    LT_TRY(check_like(dk, k, op, "dk", "k"));
    LT_TRY(check_like(dv, v, op, "dv", "v"));
    LT_TRY(lt_op_check_out(LT_OP_ATTENTION, dq, op, "dq", dout, "dout"));
    LT_TRY(lt_op_check_out(LT_OP_ATTENTION, dk, op, "dk", dout, "dout"));
    LT_TRY(lt_op_check_out(LT_OP_ATTENTION, dv, op, "dv", dout, "dout"));
    LT_TRY(setup(&a, q, k, v, cu_seqlens, scale, causal, op));
    int st = check_lse(lse, &a, op);
    if (st != LT_OK) {
        lt_scratch_free(a.segs);
        return st;
    }
    int64_t T = a.T, H = a.H, Hkv = a.Hkv, D = a.D, nseg = a.nseg;
    int64_t per_thread = backward_scratch(D);
    int nt = num_threads();
    float *scratch = lt_scratch_alloc((int64_t)nt * per_thread * (int64_t)sizeof(float));
    if (!scratch) {
        lt_scratch_free(a.segs);
        return LT_ERR_NOMEM;
    }
    attn_grads gr = {
        .go = (const float *)dout->storage->data + dout->offset,
        .fo = (const float *)out->storage->data + out->offset,
        .gq = (float *)dq->storage->data + dq->offset,
        .gk = (float *)dk->storage->data + dk->offset,
        .gv = (float *)dv->storage->data + dv->offset,
        .lp = lt_tensor_data(lse),
    };
    for (int i = 0; i < 3; i++) {
        gr.gos[i] = dout->strides[i];
        gr.fos[i] = out->strides[i];
        gr.gqs[i] = dq->strides[i];
        gr.gks[i] = dk->strides[i];
        gr.gvs[i] = dv->strides[i];
    }

#pragma omp parallel for schedule(dynamic, 1) \
    if (nseg * Hkv > 1 && nseg * H * T * a.max_nk * D >= LT_PAR_MIN_WORK)
    for (int64_t gg = 0; gg < nseg * Hkv; gg++)
        backward_group(&a, &gr, &a.segs[gg / Hkv], gg % Hkv,
                       scratch + (int64_t)thread_id() * per_thread);
    lt_scratch_free(scratch);
    lt_scratch_free(a.segs);
    return LT_OK;
}
