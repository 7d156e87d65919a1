/*
 * lt_quant.h - quantized weights: 4-bit NormalFloat / FP4 blockwise with optional double
 * quantization (bitsandbytes' layout), and int8 row-wise (LLM.int8's weight format).
 *
 *     lt_quant_state q = {0};
 *     lt_quantize(&q, &weight, LT_QUANT_NF4, 64, 1);   // (out, in) f32/bf16/f16 weight
 *     lt_quant_linear_forward(&y, &x, &q, 0.0f);       // y = x @ dequant(q)^T, tile by tile
 *     lt_quant_state_release(&q);
 *
 * 4-bit layout, as bitsandbytes stores it so its checkpoints load as they are:
 *   packed   u8 (ceil(numel / 2)): two codes per byte, the first element in the high nibble
 *   absmax   per block of `blocksize` elements (row-major over the whole tensor): f32, or,
 *            with double quantization, u8 codes of (absmax - offset) in blocks of
 *            `nested_blocksize` (256) under the signed 8-bit dynamic map `nested_code`,
 *            each nested block scaled by absmax2 (f32)
 *   code     f32 (16): the 4-bit code book (NF4 or FP4 values in [-1, 1])
 * A weight element is code[nibble] * absmax[block]; quantization picks the nearest code
 * (ties resolved by the midpoint thresholds, as bitsandbytes does).
 * int8 layout: packed i8 (rows, cols), absmax f32 (rows): w = packed * absmax / 127.
 */
#ifndef LT_QUANT_H
#define LT_QUANT_H

#include "lt.h"

enum lt_quant_type { LT_QUANT_NONE = 0, LT_QUANT_NF4 = 1, LT_QUANT_FP4 = 2, LT_QUANT_INT8 = 3 };

typedef struct lt_quant_state {
    int32_t type;             /* lt_quant_type */
    int32_t blocksize;        /* elements per absmax block (4-bit types): 32..4096, power of 2 */
    int32_t double_quant;     /* absmax itself quantized to 8 bits */
    int32_t nested_blocksize; /* 256 */
    int32_t orig_dtype;       /* dtype of the weight before quantization */
    int32_t ndim;             /* logical shape of the weight */
    int64_t sizes[2];
    double offset;            /* double quantization: the mean subtracted from absmax */
    lt_tensor packed;
    lt_tensor absmax;
    lt_tensor absmax2;        /* double quantization only */
    lt_tensor code;
    lt_tensor nested_code;    /* double quantization only */
} lt_quant_state;

/* The 16 values of the NF4 or FP4 code book, in code order. */
int lt_quant_codebook(int type, float *out16);
/* The signed 8-bit dynamic map bitsandbytes uses for double quantization (256 values). */
int lt_quant_dynamic_map(float *out256);

/* Quantize a 1-D or 2-D f32/bf16/f16 tensor. q is filled (release it when done); inf or
   NaN in the weight is an LT_ERR_ARG naming the first bad element. */
int lt_quantize(lt_quant_state *q, const lt_tensor *w, int type, int blocksize, int double_quant);
/* Assemble a state from stored tensors (a bitsandbytes checkpoint), checking that every
   size fits the shape and block size. The tensors are shared, not copied. */
int lt_quant_state_init(lt_quant_state *q, int type, int blocksize, int ndim,
                        const int64_t *sizes, int orig_dtype, const lt_tensor *packed,
                        const lt_tensor *absmax, const lt_tensor *code,
                        const lt_tensor *absmax2, const lt_tensor *nested_code,
                        double offset);
void lt_quant_state_release(lt_quant_state *q);
/* out (the logical shape) f32/bf16/f16 = the dequantized weight. */
int lt_dequantize(lt_tensor *out, const lt_quant_state *q);
/* Bytes the state occupies (codes, scales, maps). */
int64_t lt_quant_nbytes(const lt_quant_state *q);

/* y (N, out) f32 = x (N, in) f32 @ W^T (+ beta * y), W the quantized (out, in) weight,
   dequantized a panel of rows at a time (never whole in f32). For int8, x is quantized
   row-wise to int8 except outlier columns (some |x| > outlier_threshold, 6.0 in
   LLM.int8), which multiply in f32: the mixed decomposition of LLM.int8. */
int lt_quant_linear_forward(lt_tensor *y, const lt_tensor *x, const lt_quant_state *w,
                            float beta, float outlier_threshold);
/* dx (N, in) = dy (N, out) @ W (+ beta * dx): the input gradient (the weight is frozen). */
int lt_quant_linear_backward(lt_tensor *dx, const lt_tensor *dy, const lt_quant_state *w,
                             float beta);

#endif
