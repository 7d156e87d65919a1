/*
 * lt_quant.h - quantized weights: 4-bit NormalFloat / FP4 blockwise with optional double
 * quantization (bitsandbytes' layout), and int8 row-wise (LLM.int8's weight format).
 *
 *     lt_quant_state q = {0};
 *     lt_quantize(&q, &weight, LT_QUANT_NF4, 64, 1);   // (out, in) f32/bf16/f16 weight
 *     lt_quant_linear_forward(&y, &x, &q, 0.0f, 0.0f); // y = x @ dequant(q)^T, tile by tile
 *     lt_quant_state_release(&q);
 *
 * 4-bit layout, as bitsandbytes stores it so its checkpoints load as they are:
 *   packed   u8 (ceil(numel / 2)): two codes per byte, the first element in the high nibble;
 *            an odd numel pads the last low nibble with the code of 0.0
 *   absmax   per block of `blocksize` elements (row-major over the whole tensor, the last
 *            block possibly partial): f32, or, with double quantization, u8 codes of
 *            (absmax - offset) in blocks of `nested_blocksize` (256) under the signed 8-bit
 *            dynamic map `nested_code`, each nested block scaled by absmax2 (f32)
 *   code     f32 (16): the 4-bit code book (NF4 or FP4 values in [-1, 1]), in code order
 * A weight element is code[nibble] * absmax[block], with, under double quantization,
 * absmax[block] = nested_code[absmax_q[block]] * absmax2[block / 256] + offset, each step
 * rounded to f32 (no fused multiply-add), as bitsandbytes computes it.
 * Quantization scales a block by 1/absmax (f32; it divides where 1/absmax overflows) and
 * picks the nearest code by the thresholds of bitsandbytes' CUDA kernels: dQuantizeNF4's
 * (the midpoints between adjacent codes, rounded to f32) and dQuantizeFP4's (within 14 ulp
 * of the midpoints); a value at a threshold takes the lower code. An all-zero block gets the
 * code of 0.0.
 * int8 layout: packed i8 (rows, cols), absmax f32 (rows): w = packed * (absmax * (1/127)).
 */
#ifndef LT_QUANT_H
#define LT_QUANT_H

#include "lt.h"

enum lt_quant_type { LT_QUANT_NONE = 0, LT_QUANT_NF4 = 1, LT_QUANT_FP4 = 2, LT_QUANT_INT8 = 3 };

typedef struct lt_quant_state {
    int32_t type;             /* lt_quant_type */
    int32_t blocksize;        /* elements per absmax block: 32..4096, power of 2; int8: 0 */
    int32_t double_quant;     /* absmax itself quantized to 8 bits */
    int32_t nested_blocksize; /* 256 with double quantization, else 0 */
    int32_t orig_dtype;       /* dtype of the weight before quantization */
    int32_t ndim;             /* logical shape of the weight: 1 or 2 dims */
    int64_t sizes[2];
    double offset;            /* double quantization: the mean subtracted from absmax (f32) */
    lt_tensor packed;
    lt_tensor absmax;
    lt_tensor absmax2;        /* double quantization only */
    lt_tensor code;
    lt_tensor nested_code;    /* double quantization only */
} lt_quant_state;

/* The 16 values of the NF4 or FP4 code book, in code order (bitsandbytes' get_4bit_type). */
int lt_quant_codebook(int type, float *out16);
/* The signed 8-bit dynamic map bitsandbytes uses for double quantization (256 values,
   sorted): create_dynamic_map(signed=True) evaluated in f64 and rounded once to f32 (torch's
   f32 linspace makes some of bitsandbytes' own entries differ from these by 1 ulp; a state
   always carries the map it was made with). */
int lt_quant_dynamic_map(float *out256);
/* The unsigned 8-bit dynamic map (256 values in [0, 1], sorted), create_dynamic_map(
   signed=False) evaluated the same way: for i = 0..6 the 2^(i+1) midpoints of
   linspace(0.1, 1, 2^(i+1) + 1) scaled by 10^(i-6) (254 values), then 0 and 1. bitsandbytes'
   8-bit optimizers code the second moment (never negative) with it, the first moment with
   the signed map. */
int lt_quant_dynamic_map_unsigned(float *out256);

/* Quantize a 1-D or 2-D f32/bf16/f16 tensor. q is filled (release it when done); inf or
   NaN in the weight is an LT_ERR_ARG naming the first bad element. For int8, blocksize and
   double_quant must be 0. A weight on a CUDA device gives a state whose buffers are on that
   device, bit for bit the state the CPU makes from the same weight. */
int lt_quantize(lt_quant_state *q, const lt_tensor *w, int type, int blocksize, int double_quant);
/* Assemble a state from stored tensors (a bitsandbytes checkpoint), checking that every
   size fits the shape and block size and that `code` is the type's code book. The tensors
   are shared, not copied; they must be contiguous CPU tensors. absmax2 and nested_code are
   NULL without double quantization (then absmax is f32, else u8). For int8: packed i8 of
   the shape, absmax f32 (rows), blocksize 0, code and the nested pieces NULL. */
int lt_quant_state_init(lt_quant_state *q, int type, int blocksize, int ndim,
                        const int64_t *sizes, int orig_dtype, const lt_tensor *packed,
                        const lt_tensor *absmax, const lt_tensor *code,
                        const lt_tensor *absmax2, const lt_tensor *nested_code,
                        double offset);
void lt_quant_state_release(lt_quant_state *q);
/* dst = a copy of src with every buffer on the given device (LT_DEVICE_CPU / LT_DEVICE_CUDA
   and its index): the same layout, bytes and scalars, so a state quantized on one device
   (or loaded from a checkpoint on the CPU) runs on another. Always a copy, also to src's
   own device; dst may be src (its old buffers are released). */
int lt_quant_state_to(lt_quant_state *dst, const lt_quant_state *src, int device_type,
                      int device_index);
/* The functions below run where the state is (out, x, y on the same device): a CUDA state
   dequantizes to the same bits as the CPU.
   out (the logical shape, contiguous) f32/bf16/f16 = the dequantized weight. */
int lt_dequantize(lt_tensor *out, const lt_quant_state *q);
/* out (R, cols) contiguous f32/bf16/f16 = rows [row0, row0 + R) of a 2-D weight (a 1-D
   weight is one row), dequantized: a panel at a time, without the whole weight. */
int lt_dequantize_rows(lt_tensor *out, const lt_quant_state *q, int64_t row0);
/* out f32 (number of blocks; rows for int8) = the scale of each block, the double-quantized
   ones dequantized. */
int lt_quant_absmax(lt_tensor *out, const lt_quant_state *q);
/* Bytes the state occupies (codes, scales, maps). */
int64_t lt_quant_nbytes(const lt_quant_state *q);

/* y (..., out) f32 = x (..., in) @ W^T (+ beta * y), W the quantized (out, in) weight,
   dequantized a panel of rows at a time (never whole in f32); the leading dims of x and y
   are equal and flattened into rows. x may be f32, bf16 or f16. For int8 with
   outlier_threshold > 0, x is quantized row-wise to int8 except the outlier columns (those
   holding some |x| >= outlier_threshold, 6.0 in LLM.int8), which multiply in f32: the mixed
   decomposition of LLM.int8. Row scales of x skip the outlier values; the int8 products sum
   exactly and are scaled by (sx * sw) / 127^2. outlier_threshold <= 0: no outliers. The
   threshold is ignored for 4-bit weights.
   On CUDA, x may be f32, bf16 or f16 and y f32 or x's dtype; up to 8 rows of x take a fused
   dequantize-GEMV that reads the packed weight once, more rows a GEMM on bands of the
   weight dequantized to x's dtype (f32 GEMMs follow the GEMM's TF32 setting). */
int lt_quant_linear_forward(lt_tensor *y, const lt_tensor *x, const lt_quant_state *w,
                            float beta, float outlier_threshold);
/* dx (..., in) f32 = dy (..., out) @ W (+ beta * dx): the input gradient (the weight is
   frozen). dy may be f32, bf16 or f16. On CUDA, dx may also be dy's dtype (as forward). */
int lt_quant_linear_backward(lt_tensor *dx, const lt_tensor *dy, const lt_quant_state *w,
                             float beta);

#endif
