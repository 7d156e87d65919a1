// matmul.cu - the one GEMM of the CUDA backend (lt_cuda_gemm, over cuBLASLt) and the matmul
// op on top of it (lt_cuda_matmul; lt_matmul_backward is made of lt_matmul calls and needs
// no CUDA side of its own).
//
// What it computes: row-major C (M x N) = alpha * op(A) @ op(B) + beta * C (+ bias over
// rows), `batch` times with element strides stride_a / stride_b / stride_c (matmul.cuh).
// Accumulation is f32: A and B both f32 (CUBLAS_COMPUTE_32F, or _32F_FAST_TF32 while
// lt_cuda_gemm_allow_tf32 is on), both bf16 or both f16 (CUBLAS_COMPUTE_32F); C is f32 or
// the inputs' dtype; bias has C's dtype (cuBLASLt's default bias type is D's).
//
// Row-major through a column-major library: a row-major X (r x c, ld) is, read
// column-major, X^T (c x r, ld). So C^T = op(B)^T @ op(A)^T is the column-major product
// with cuBLASLt's "A" = our B and "B" = our A, m = N, n = M, and each operand's trans flag
// kept: our B untransposed (K x N) reads as N x K = op(B)^T directly (OP_N); with trans_b
// it is stored N x K, reads as K x N, and needs OP_T. Same for A. The bias, a per-column
// vector of row-major C, is per-row of the column-major C^T, which is what
// CUBLASLT_EPILOGUE_BIAS broadcasts.
//
// Algorithm choice: cublasLtMatmulAlgoGetHeuristic is slow (tens of microseconds), so each
// distinct problem (device, dims, leading dims, batch and strides, dtypes, TF32, bias,
// beta == 0, and the alignment of every pointer) gets its descriptors, layouts and the
// heuristic's first algorithm made once and kept in a small open-addressing hash table;
// after the first call a problem costs a lookup and cublasLtMatmul. Alignments are part of
// the key because the heuristic picks vectorised kernels only for 16-byte (and better)
// aligned operands: we tell it the true alignment of each pointer, leading dimension and
// batch stride (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES), so a misaligned view gets a
// kernel that can read it rather than an error or a wrong read.
//
// lt_cuda_matmul maps tensors onto this: each operand's last two dims must have a unit
// stride in one of them (a transposed view is a flag, not a copy; other layouts are copied
// once), batch dims that collapse to one stride go into one strided-batched call, and a
// batch that shares b with rows that nest folds into M (one large GEMM), as on the CPU.
// On CUDA (unlike the CPU) c may also be bf16/f16 when a and b both have that dtype; a
// and b of different dtypes are both run in f32 (the low-precision one is converted, as
// the CPU converts it).
#include <pthread.h>
#include <string.h>

#include "matmul.cuh"

// ---- settings ------------------------------------------------------------------------------

static int allow_tf32 = 1; // PyTorch's float32 matmul precision "high"

extern "C" void lt_cuda_gemm_allow_tf32(int on) {
    __atomic_store_n(&allow_tf32, on ? 1 : 0, __ATOMIC_RELAXED);
}

namespace { // kernels and types stay private to this file

// ---- the problem cache ---------------------------------------------------------------------

// Everything the descriptors and the chosen algorithm depend on. memset before filling, so
// padding bytes compare equal.
struct gemm_key {
    int32_t device, trans_a, trans_b, ab_dtype, c_dtype, tf32, has_bias, beta_zero;
    int64_t M, N, K, lda, ldb, ldc, batch, stride_a, stride_b, stride_c;
    uint32_t align_a, align_b, align_c, align_bias;
};

struct gemm_plan {
    int used;
    gemm_key key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc; // cuBLASLt's A (our B), B (our A), C = D
    cublasLtMatmulAlgo_t algo;
};

// A training step touches a few dozen shapes; 1024 slots keep the table sparse. When it
// fills past 3/4 (shapes that keep changing), every plan is dropped and rebuilt on demand.
enum { PLAN_SLOTS = 1024, PLAN_MAX_USED = PLAN_SLOTS * 3 / 4 };
static gemm_plan plans[PLAN_SLOTS];
static int plans_used;
// Plans are shared by all threads; the bias pointer is set on a cached descriptor right
// before its matmul, so lookup, that set and the enqueue happen under one lock (all host
// work, microseconds).
static pthread_mutex_t plans_mu = PTHREAD_MUTEX_INITIALIZER;

static uint64_t key_hash(const gemm_key *k) {
    const unsigned char *p = (const unsigned char *)k;
    uint64_t h = 1469598103934665603ULL; // FNV-1a
    for (size_t i = 0; i < sizeof *k; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static void plan_destroy(gemm_plan *p) {
    if (p->lc) cublasLtMatrixLayoutDestroy(p->lc);
    if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
    if (p->la) cublasLtMatrixLayoutDestroy(p->la);
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
    memset(p, 0, sizeof *p);
}

static void plans_clear(void) {
    for (int i = 0; i < PLAN_SLOTS; i++)
        if (plans[i].used) plan_destroy(&plans[i]);
    plans_used = 0;
}

static cudaDataType_t cuda_type(int dtype) {
    return dtype == LT_DTYPE_BF16 ? CUDA_R_16BF : dtype == LT_DTYPE_F16 ? CUDA_R_16F : CUDA_R_32F;
}

// Largest power of two (<= 256) dividing the address and every byte step taken from it.
static uint32_t alignment(const void *p, int64_t ld_bytes, int64_t stride_bytes) {
    uint64_t a = (uint64_t)(uintptr_t)p | (uint64_t)ld_bytes | (uint64_t)stride_bytes;
    uint32_t al = 256;
    while (al > 1 && (a & (al - 1))) al >>= 1;
    return al;
}

static int layout_make(cublasLtMatrixLayout_t *l, cudaDataType_t t, int64_t rows, int64_t cols,
                       int64_t ld, int64_t batch, int64_t stride) {
    LT_CUBLAS(cublasLtMatrixLayoutCreate(l, t, (uint64_t)rows, (uint64_t)cols, ld));
    if (batch > 1) {
        int32_t bc = (int32_t)batch;
        LT_CUBLAS(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc,
                                                   sizeof bc));
        LT_CUBLAS(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                   &stride, sizeof stride));
    }
    return LT_OK;
}

// Descriptors, layouts and the heuristic's algorithm for one problem.
static int plan_build(gemm_plan *p, const gemm_key *k, lt_cuda_context *c, const void *bias) {
    memset(p, 0, sizeof *p);
    p->key = *k;
    cublasComputeType_t compute =
        k->ab_dtype == LT_DTYPE_F32 && k->tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    LT_CUBLAS(cublasLtMatmulDescCreate(&p->desc, compute, CUDA_R_32F));
    // cuBLASLt's A is our B, its B our A (see the header comment)
    cublasOperation_t op_a = k->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_b = k->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    LT_CUBLAS(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
    LT_CUBLAS(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
    if (k->has_bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        LT_CUBLAS(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                                 sizeof epi));
        // the heuristic reads the pointer's alignment from the descriptor
        LT_CUBLAS(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                 &bias, sizeof bias));
        int64_t zero = 0; // one bias vector for every batch
        LT_CUBLAS(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE,
                                                 &zero, sizeof zero));
    }
    cudaDataType_t tab = cuda_type(k->ab_dtype), tc = cuda_type(k->c_dtype);
    // column-major extents of each stored operand
    int64_t a_rows = k->trans_b ? k->K : k->N, a_cols = k->trans_b ? k->N : k->K;
    int64_t b_rows = k->trans_a ? k->M : k->K, b_cols = k->trans_a ? k->K : k->M;
    LT_TRY(layout_make(&p->la, tab, a_rows, a_cols, k->ldb, k->batch, k->stride_b));
    LT_TRY(layout_make(&p->lb, tab, b_rows, b_cols, k->lda, k->batch, k->stride_a));
    LT_TRY(layout_make(&p->lc, tc, k->N, k->M, k->ldc, k->batch, k->stride_c));

    cublasLtMatmulPreference_t pref = NULL;
    LT_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = c->workspace_bytes;
    uint32_t al_a = k->align_b, al_b = k->align_a, al_c = k->align_c; // swapped roles
    cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                  &al_a, sizeof al_a);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                  &al_b, sizeof al_b);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                  &al_c, sizeof al_c);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                  &al_c, sizeof al_c);
    cublasLtMatmulHeuristicResult_t res[4];
    int found = 0;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulAlgoGetHeuristic(c->lt, p->desc, p->la, p->lb, p->lc, p->lc, pref, 4,
                                            res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED)
        return lt_fail(LT_ERR_DEVICE, "gemm: cublasLtMatmulAlgoGetHeuristic: cuBLAS status %d",
                       (int)st);
    int pick = -1;
    for (int i = 0; i < found && pick < 0; i++)
        if (res[i].state == CUBLAS_STATUS_SUCCESS) pick = i; // the list is fastest first
    if (st != CUBLAS_STATUS_SUCCESS || pick < 0)
        return lt_fail(LT_ERR_UNSUPPORTED,
                       "gemm: cuBLASLt has no algorithm for %lldx%lldx%lld (%s%s, %s -> %s, batch "
                       "%lld, alignments %u/%u/%u bytes%s)",
                       (long long)k->M, (long long)k->N, (long long)k->K, k->trans_a ? "T" : "N",
                       k->trans_b ? "T" : "N", lt_dtype_info(k->ab_dtype)->name,
                       lt_dtype_info(k->c_dtype)->name, (long long)k->batch, k->align_a,
                       k->align_b, k->align_c, k->has_bias ? ", bias" : "");
    p->algo = res[pick].algo;
    p->used = 1;
    return LT_OK;
}

// The plan for `k` (built on a miss); called with plans_mu held.
static int plan_get(const gemm_key *k, lt_cuda_context *c, const void *bias, gemm_plan **out) {
    uint64_t h = key_hash(k);
    for (int probe = 0; probe < PLAN_SLOTS; probe++) {
        gemm_plan *p = &plans[(h + (uint64_t)probe) & (PLAN_SLOTS - 1)];
        if (!p->used) break;
        if (memcmp(&p->key, k, sizeof *k) == 0) {
            *out = p;
            return LT_OK;
        }
    }
    if (plans_used >= PLAN_MAX_USED) plans_clear();
    gemm_plan *slot = NULL;
    for (int probe = 0; probe < PLAN_SLOTS && !slot; probe++) {
        gemm_plan *p = &plans[(h + (uint64_t)probe) & (PLAN_SLOTS - 1)];
        if (!p->used) slot = p;
    }
    if (!slot) return LT_INTERNAL("gemm: plan table full");
    int st = plan_build(slot, k, c, bias);
    if (st != LT_OK) {
        plan_destroy(slot); // leaves the slot unused
        return st;
    }
    plans_used++;
    *out = slot;
    return LT_OK;
}

// ---- K == 0: C = beta * C (+ bias) -------------------------------------------------------

template <class T>
__global__ void scale_c_kernel(T *c, int64_t M, int64_t N, int64_t ldc, int64_t batch,
                               int64_t stride_c, float beta, const T *bias) {
    int64_t total = batch * M * N;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t j = i % N, r = (i / N) % M, b = i / (N * M);
        T *p = c + b * stride_c + r * ldc + j;
        float v = beta == 0.0f ? 0.0f : beta * lt_to_f32(*p); // beta 0 never reads C
        if (bias) v += lt_to_f32(bias[j]);
        *p = lt_from_f32<T>(v);
    }
}

} // namespace

// ---- the entry point -------------------------------------------------------------------------

static int gemm_one(lt_cuda_context *c, const lt_gemm_args *g, int64_t batch, int64_t sa,
                    int64_t sb, int64_t sc, const char *A, const char *B, char *C) {
    int abz = lt_dtype_size(g->ab_dtype), cz = lt_dtype_size(g->c_dtype);
    gemm_key k;
    memset(&k, 0, sizeof k);
    k.device = c->device;
    k.trans_a = g->trans_a ? 1 : 0;
    k.trans_b = g->trans_b ? 1 : 0;
    k.ab_dtype = g->ab_dtype;
    k.c_dtype = g->c_dtype;
    k.tf32 = g->ab_dtype == LT_DTYPE_F32 && __atomic_load_n(&allow_tf32, __ATOMIC_RELAXED);
    k.has_bias = g->bias != NULL;
    k.beta_zero = g->beta == 0.0f;
    k.M = g->M;
    k.N = g->N;
    k.K = g->K;
    k.lda = g->lda;
    k.ldb = g->ldb;
    k.ldc = g->ldc;
    k.batch = batch;
    k.stride_a = batch > 1 ? sa : 0;
    k.stride_b = batch > 1 ? sb : 0;
    k.stride_c = batch > 1 ? sc : 0;
    k.align_a = alignment(A, g->lda * abz, k.stride_a * abz);
    k.align_b = alignment(B, g->ldb * abz, k.stride_b * abz);
    k.align_c = alignment(C, g->ldc * cz, k.stride_c * cz);
    k.align_bias = g->bias ? alignment(g->bias, 0, 0) : 0;

    pthread_mutex_lock(&plans_mu);
    gemm_plan *p = NULL;
    int st = plan_get(&k, c, g->bias, &p);
    if (st == LT_OK && g->bias) {
        const void *bias = g->bias;
        cublasStatus_t cs = cublasLtMatmulDescSetAttribute(
            p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
        if (cs != CUBLAS_STATUS_SUCCESS)
            st = lt_fail(LT_ERR_DEVICE, "gemm: setting the bias pointer: cuBLAS status %d", (int)cs);
    }
    if (st == LT_OK) {
        float alpha = g->alpha, beta = g->beta;
        cublasStatus_t cs = cublasLtMatmul(c->lt, p->desc, &alpha, B, p->la, A, p->lb, &beta, C,
                                           p->lc, C, p->lc, &p->algo, c->workspace,
                                           c->workspace_bytes, c->stream);
        if (cs != CUBLAS_STATUS_SUCCESS)
            st = lt_fail(LT_ERR_DEVICE,
                         "gemm: cublasLtMatmul failed for %lldx%lldx%lld (batch %lld): cuBLAS "
                         "status %d",
                         (long long)g->M, (long long)g->N, (long long)g->K, (long long)batch,
                         (int)cs);
    }
    pthread_mutex_unlock(&plans_mu);
    return st;
}

int lt_cuda_gemm(lt_cuda_context *c, const lt_gemm_args *g) {
    if (!c || !g) return LT_INTERNAL("gemm: NULL context or arguments");
    int abd = g->ab_dtype, cd = g->c_dtype;
    if (!lt_is_float_dtype(abd) || !(cd == LT_DTYPE_F32 || cd == abd))
        return LT_INTERNAL("gemm: inputs %d and output %d are not a supported pair", abd, cd);
    int64_t batch = g->batch < 1 ? 1 : g->batch;
    if (g->M < 0 || g->N < 0 || g->K < 0 || batch > INT32_MAX)
        return LT_INTERNAL("gemm: bad sizes %lld x %lld x %lld, batch %lld", (long long)g->M,
                           (long long)g->N, (long long)g->K, (long long)batch);
    if (g->M == 0 || g->N == 0) return LT_OK;
    // stored row-major extents: A is M x K (K x M with trans_a), B is K x N (N x K)
    int64_t a_cols = g->trans_a ? g->M : g->K, b_cols = g->trans_b ? g->K : g->N;
    if ((g->K > 0 && (g->lda < a_cols || g->ldb < b_cols || !g->A || !g->B)) || g->ldc < g->N ||
        !g->C)
        return LT_INTERNAL("gemm: leading dims %lld/%lld/%lld are below the rows %lld/%lld/%lld",
                           (long long)g->lda, (long long)g->ldb, (long long)g->ldc,
                           (long long)a_cols, (long long)b_cols, (long long)g->N);
    if (batch > 1 && g->stride_c == 0)
        return LT_INTERNAL("gemm: batched output with stride 0");
    int abz = lt_dtype_size(abd), cz = lt_dtype_size(cd);
    if (g->K == 0) {
        // no product: cuBLASLt does not take k = 0
        int64_t total = batch * g->M * g->N;
        LT_FLOAT_SWITCH(cd, T, {
            scale_c_kernel<T><<<lt_blocks_for(total, 256), 256, 0, c->stream>>>(
                (T *)g->C, g->M, g->N, g->ldc, batch, batch > 1 ? g->stride_c : 0, g->beta,
                (const T *)g->bias);
        });
        LT_CU_LAUNCH("scale_c_kernel");
        return LT_OK;
    }
    const char *A = (const char *)g->A, *B = (const char *)g->B;
    char *C = (char *)g->C;
    if (batch > 1 && (g->stride_a == 0 || g->stride_b == 0)) {
        // an operand shared by every batch: one call per batch (rare; keeps to layouts
        // cuBLASLt documents for strided batches)
        for (int64_t i = 0; i < batch; i++)
            LT_TRY(gemm_one(c, g, 1, 0, 0, 0, A + i * g->stride_a * abz, B + i * g->stride_b * abz,
                            C + i * g->stride_c * cz));
        return LT_OK;
    }
    return gemm_one(c, g, batch, g->stride_a, g->stride_b, g->stride_c, A, B, C);
}

// The GEMM for code outside cuda/ that has no context at hand (the tests reach the bias
// epilogue and bf16/f16 outputs through this): `args_size` must be sizeof(lt_gemm_args),
// which catches a caller built against another layout of the struct.
extern "C" int lt_cuda_gemm_device(int32_t device, const lt_gemm_args *g, int64_t args_size) {
    if (args_size != (int64_t)sizeof(lt_gemm_args))
        return lt_fail(LT_ERR_ARG, "lt_cuda_gemm_device: lt_gemm_args is %lld bytes here, %lld "
                                   "at the caller",
                       (long long)sizeof(lt_gemm_args), (long long)args_size);
    LT_CUDA_CTX(c, device);
    return lt_cuda_gemm(c, g);
}

// ---- matmul on tensors ---------------------------------------------------------------------

namespace { // kernels and types stay private to this file

// A 2-D slice as a GEMM operand: row-major with leading dim `ld`, transposed or not.
struct operand {
    int64_t ld;
    int trans;
};

} // namespace

// The slice (r x c, strides s0, s1) as an operand whose value is the slice (trans_req 0) or
// its transpose (1); false when neither dim has unit stride (the caller copies).
static bool describe(operand *o, int64_t r, int64_t c, int64_t s0, int64_t s1, int trans_req) {
    if (s1 == 1 || c == 1) { // row-major
        if (r > 1 && s0 < c) return false;
        o->ld = (r == 1) ? (c > 0 ? c : 1) : s0;
        o->trans = trans_req;
        return true;
    }
    if (s0 == 1 || r == 1) { // column-major: the row-major transpose
        if (c > 1 && s1 < r) return false;
        o->ld = (c == 1) ? (r > 0 ? r : 1) : s1;
        o->trans = !trans_req;
        return true;
    }
    return false;
}

// The one element stride between consecutive batches (flat over c's batch dims) of t, or
// false when t's batch dims do not collapse to one. A 2-D t is shared: stride 0.
static bool batch_stride(const lt_tensor *t, const lt_tensor *c, int64_t *out) {
    *out = 0;
    if (t->ndim == 2) return true;
    int nb = c->ndim - 2;
    int64_t s = 0, inner = 1;
    bool have = false;
    for (int d = nb - 1; d >= 0; d--) {
        if (c->sizes[d] == 1) continue;
        if (!have) { // the innermost batch dim of size > 1 sets the step
            s = t->strides[d];
            have = true;
        } else if (t->strides[d] != s * inner) {
            return false;
        }
        inner *= c->sizes[d];
    }
    *out = s;
    return true;
}

// Element offset of batch i (flat over c's batch dims) in t.
static int64_t batch_offset(const lt_tensor *t, const lt_tensor *c, int64_t i) {
    if (t->ndim == 2) return 0;
    int64_t off = 0;
    for (int d = c->ndim - 3; d >= 0; d--) {
        int64_t idx = i % c->sizes[d];
        i /= c->sizes[d];
        off += idx * t->strides[d];
    }
    return off;
}

static const char *dtname(int dt) {
    const lt_dtype_traits *tr = lt_dtype_info(dt);
    return tr ? tr->name : "?";
}

static int matmul_run(lt_cuda_context *ctx, lt_tensor *c, const lt_tensor *a, const lt_tensor *b,
                      int trans_a, int trans_b, float alpha, float beta);

extern "C" int lt_cuda_matmul(lt_tensor *c, const lt_tensor *a, const lt_tensor *b, int trans_a,
                              int trans_b, float alpha, float beta) {
    LT_CUDA_CTX(ctx, lt_device_of(c));
    int cd = c->dtype_id;
    if (!lt_is_float_dtype(a->dtype_id) || !lt_is_float_dtype(b->dtype_id) ||
        !lt_is_float_dtype(cd))
        return lt_fail(LT_ERR_DTYPE, "matmul: a, b and out must be f32, bf16 or f16 (got %s, %s, "
                                     "%s)",
                       dtname(a->dtype_id), dtname(b->dtype_id), dtname(cd));
    // a and b of different dtypes: the low-precision one goes to f32 (exact), as on the CPU
    lt_tensor ca = {}, cb = {};
    int st = LT_OK;
    const lt_tensor *A = a, *B = b;
    if (a->dtype_id != b->dtype_id) {
        if (a->dtype_id != LT_DTYPE_F32) {
            st = lt_tensor_contiguous(&ca, a, LT_DTYPE_F32);
            A = &ca;
        }
        if (st == LT_OK && b->dtype_id != LT_DTYPE_F32) {
            st = lt_tensor_contiguous(&cb, b, LT_DTYPE_F32);
            B = &cb;
        }
    }
    if (st == LT_OK && cd != LT_DTYPE_F32 && cd != A->dtype_id)
        st = lt_fail(LT_ERR_DTYPE,
                     "matmul: on CUDA the output must be f32 or the dtype of a and b; got %s for "
                     "a %s and b %s",
                     dtname(cd), dtname(a->dtype_id), dtname(b->dtype_id));
    if (st == LT_OK) st = matmul_run(ctx, c, A, B, trans_a, trans_b, alpha, beta);
    lt_tensor_release(&ca);
    lt_tensor_release(&cb);
    return st;
}

// a and b have one dtype here; shapes were checked by lt_matmul.
static int matmul_run(lt_cuda_context *ctx, lt_tensor *c, const lt_tensor *a, const lt_tensor *b,
                      int trans_a, int trans_b, float alpha, float beta) {
    int nd = c->ndim;
    int64_t M = c->sizes[nd - 2], N = c->sizes[nd - 1];
    int64_t K = trans_a ? a->sizes[a->ndim - 2] : a->sizes[a->ndim - 1];
    int64_t batch = 1;
    for (int i = 0; i < nd - 2; i++) batch *= c->sizes[i];
    if (batch == 0 || M == 0 || N == 0) return LT_OK;
    for (int i = 0; i < nd; i++)
        if (c->sizes[i] > 1 && c->strides[i] == 0)
            return lt_fail(LT_ERR_ARG,
                           "matmul: out is a broadcast view (stride 0 in dim %d) whose elements "
                           "alias; it cannot be written",
                           i);

    // Fold the batch into M when b is shared and the rows of a and c nest: one large GEMM.
    if (batch > 1 && b->ndim == 2 && a->ndim == nd && !trans_a) {
        lt_tensor a2 = {}, c2 = {};
        int64_t sa2[2] = {batch * M, K}, sc2[2] = {batch * M, N};
        int st = LT_ERR_SHAPE;
        if (lt_tensor_reshape(&a2, a, 2, sa2) == LT_OK && lt_tensor_reshape(&c2, c, 2, sc2) == LT_OK)
            st = matmul_run(ctx, &c2, &a2, b, 0, trans_b, alpha, beta);
        lt_tensor_release(&a2);
        lt_tensor_release(&c2);
        if (st != LT_ERR_SHAPE) return st;
        lt_clear_error(); // not viewable as 2-D: batched below
    }

    // Operands the GEMM cannot read as they lie become contiguous copies (whole tensor).
    lt_tensor da = {}, db = {};
    const lt_tensor *A = a, *B = b;
    operand oa, ob;
    int st = LT_OK;
    if (!describe(&oa, a->sizes[a->ndim - 2], a->sizes[a->ndim - 1], a->strides[a->ndim - 2],
                  a->strides[a->ndim - 1], trans_a)) {
        st = lt_tensor_contiguous(&da, a, -1);
        A = &da;
        if (st == LT_OK)
            describe(&oa, A->sizes[A->ndim - 2], A->sizes[A->ndim - 1], A->strides[A->ndim - 2],
                     A->strides[A->ndim - 1], trans_a);
    }
    if (st == LT_OK && !describe(&ob, b->sizes[b->ndim - 2], b->sizes[b->ndim - 1],
                                 b->strides[b->ndim - 2], b->strides[b->ndim - 1], trans_b)) {
        st = lt_tensor_contiguous(&db, b, -1);
        B = &db;
        if (st == LT_OK)
            describe(&ob, B->sizes[B->ndim - 2], B->sizes[B->ndim - 1], B->strides[B->ndim - 2],
                     B->strides[B->ndim - 1], trans_b);
    }
    if (st != LT_OK) {
        lt_tensor_release(&da);
        lt_tensor_release(&db);
        return st;
    }
    int64_t ldc = M > 1 ? c->strides[nd - 2] : (N > 0 ? N : 1);
    if (ldc < N) {
        lt_tensor_release(&da);
        lt_tensor_release(&db);
        return lt_fail(LT_ERR_ARG, "matmul: the rows of out overlap (row stride %lld < %lld "
                                   "columns); it cannot be written",
                       (long long)ldc, (long long)N);
    }

    lt_gemm_args g;
    memset(&g, 0, sizeof g);
    g.trans_a = oa.trans;
    g.trans_b = ob.trans;
    g.M = M;
    g.N = N;
    g.K = K;
    g.alpha = alpha;
    g.beta = beta;
    g.lda = oa.ld;
    g.ldb = ob.ld;
    g.ldc = ldc;
    g.ab_dtype = A->dtype_id;
    g.c_dtype = c->dtype_id;
    g.bias = NULL;
    int abz = lt_dtype_size(A->dtype_id), cz = lt_dtype_size(c->dtype_id);
    const char *pa = (const char *)lt_tensor_data(A), *pb = (const char *)lt_tensor_data(B);
    char *pc = (char *)lt_tensor_data(c);
    int64_t sa, sb, sc;
    if (batch == 1 || (batch_stride(A, c, &sa) && batch_stride(B, c, &sb) &&
                       batch_stride(c, c, &sc) && (batch == 1 || sc != 0))) {
        g.A = pa;
        g.B = pb;
        g.C = pc;
        g.batch = batch;
        g.stride_a = batch > 1 ? sa : 0;
        g.stride_b = batch > 1 ? sb : 0;
        g.stride_c = batch > 1 ? sc : 0;
        st = lt_cuda_gemm(ctx, &g);
    } else {
        // batch dims that do not collapse: one GEMM per batch (each after the first is a
        // plan-cache hit)
        g.batch = 1;
        for (int64_t i = 0; i < batch && st == LT_OK; i++) {
            g.A = pa + batch_offset(A, c, i) * abz;
            g.B = pb + batch_offset(B, c, i) * abz;
            g.C = pc + batch_offset(c, c, i) * cz;
            st = lt_cuda_gemm(ctx, &g);
        }
    }
    // the stream orders the GEMM before any reuse of the copies' memory
    lt_tensor_release(&da);
    lt_tensor_release(&db);
    return st;
}
