// matmul.cuh - the one GEMM entry point every CUDA file uses (implemented in matmul.cu over
// cuBLASLt), so layouts, epilogues and algorithm choice live in one place.
#pragma once

#include "common.cuh"

// Row-major C (M x N) = alpha * op(A) @ op(B) + beta * C (+ bias broadcast over rows),
// for `batch` independent problems whose operands sit stride_a / stride_b / stride_c
// elements apart (batch 1: strides ignored).
//   op(A) is A (M x K, leading dim lda) or, with trans_a, A^T where A is stored K x M;
//   op(B) is B (K x N, ldb) or, with trans_b, B^T where B is stored N x K.
//   dtypes: A and B both f32, both bf16 or both f16; C f32, or the inputs' dtype.
//   Accumulation is f32. f32 inputs use TF32 tensor cores when lt_cuda_gemm_allow_tf32 is on.
//   bias: NULL or N elements of C's dtype (cuBLASLt's bias epilogue).
struct lt_gemm_args {
    int trans_a, trans_b;
    int64_t M, N, K;
    float alpha, beta;
    const void *A;
    int64_t lda;
    const void *B;
    int64_t ldb;
    void *C;
    int64_t ldc;
    int ab_dtype; // LT_DTYPE_F32 / BF16 / F16
    int c_dtype;
    const void *bias;
    int64_t batch, stride_a, stride_b, stride_c;
};

int lt_cuda_gemm(lt_cuda_context *c, const lt_gemm_args *g);

// TF32 for f32 GEMMs (default on, as PyTorch's matmul precision "high").
extern "C" void lt_cuda_gemm_allow_tf32(int on);

// lt_cuda_gemm on `device`'s context, for callers without one (tests: the bias epilogue and
// bf16/f16 outputs are reachable only this way). args_size is the caller's
// sizeof(lt_gemm_args); a mismatch is refused.
extern "C" int lt_cuda_gemm_device(int32_t device, const lt_gemm_args *g, int64_t args_size);
