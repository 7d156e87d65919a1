/* quant_internal.h - what quant.c shares with ops/quant_linear.c; not FFI-visible. */
#ifndef LT_QUANT_INTERNAL_H
#define LT_QUANT_INTERNAL_H

#include <stdint.h>

#include "lt_quant.h"

/* The weight of a state viewed as (rows, cols): a 1-D weight is one row. */
static inline int64_t lt_quant_rows(const lt_quant_state *q) {
    return q->ndim == 2 ? q->sizes[0] : 1;
}
static inline int64_t lt_quant_cols(const lt_quant_state *q) {
    return q->ndim == 2 ? q->sizes[1] : q->sizes[0];
}

enum { LT_QUANT_NESTED_BLOCKSIZE = 256 };

/* A state that lt_quantize, lt_quant_state_init or lt_quant_state_to filled (not
   released, not zeroed), its pieces on one device. */
int lt_quant_check_state(const lt_quant_state *q, const char *op);
/* The state's buffers are in host memory (the CPU kernels' check, after the dispatch). */
int lt_quant_check_cpu(const lt_quant_state *q, const char *op);

/* ---- what the CPU and CUDA quantizers share, so that they agree bit for bit ---------- */

/* dQuantizeNF4's thresholds between codes k and k + 1; dQuantizeFP4's on |x| between the
   magnitude ranks, and the 3-bit code of each rank (quant.c explains them). A value takes
   the number of thresholds strictly below it (NF4: x, FP4: |x|). */
extern const float lt_quant_nf4_bounds[15];
extern const float lt_quant_fp4_bounds[7];
extern const uint8_t lt_quant_fp4_rank_code[8];
/* The double-quantization offset: mean(absmax (nb)) summed in f64 in index order, rounded
   to f32. Both quantizers compute it on the host with this function. */
float lt_quant_absmax_mean(const float *amax, int64_t nb);
/* bounds255[k] = the f32 midpoint of map256[k] and map256[k + 1]; a nested code is the
   number of bounds below x (the first k with bounds[k] >= x). */
void lt_quant_nested_bounds(float *bounds255, const float *map256);
/* The LT_ERR_ARG for a non-finite weight element (flat row-major index into w). */
int lt_quant_fail_nonfinite(const lt_tensor *w, int64_t flat, float value);

/* The raw pointers and tables dequantization reads, gathered once per call instead of once
   per block. */
typedef struct lt_quant_decoder {
    int type;
    int64_t cols, blocksize, nested_blocksize;
    const void *packed;      /* u8 (4-bit) or i8 (int8) */
    const float *absmax;     /* f32 scales (plain 4-bit, int8) */
    const uint8_t *absmax_q; /* double quantization: u8 codes of the scales */
    const float *absmax2, *nested_code;
    float offset;
    float pair[512]; /* 4-bit: pair[2 * byte + k] = code of the high (k = 0) / low nibble */
} lt_quant_decoder;

void lt_quant_decoder_init(lt_quant_decoder *d, const lt_quant_state *q);

/* dst (n) f32 = elements [e0, e0 + n) of the weight, flat row-major. Single-threaded: callers
   split the work. */
void lt_quant_dequant_span(float *dst, const lt_quant_decoder *d, int64_t e0, int64_t n);

/* Dequantize weight rows [row0, row0 + nrows) into dst (nrows, cols) f32, rows split over
   the OpenMP threads when there is enough work. */
void lt_quant_dequant_rows_f32(float *dst, const lt_quant_state *q, int64_t row0, int64_t nrows);

#endif
