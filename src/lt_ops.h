/*
 * lt_ops.h - CPU kernels, each a forward/backward pair.
 *
 * Conventions:
 *   - Outputs come first and are allocated by the caller with the documented shape (the
 *     Lua modules own them and reuse them across steps). Shapes are checked; a mismatch is
 *     an LT_ERR_SHAPE naming both shapes.
 *   - Activation gradients are written (=); parameter gradients accumulate (+=). Each
 *     declaration says which.
 *   - Math runs in f32 with f32 (or wider) accumulation. Inputs are f32 unless a parameter
 *     says bf16/f16 are accepted.
 *   - Dimension letters: B batch, T query positions, S key positions, H heads, Hkv key/value
 *     heads, D head dim, C channels, F feed-forward width, V vocabulary, N rows (B*T).
 */
#ifndef LT_OPS_H
#define LT_OPS_H

#include "lt.h"

/* ---- what each backend takes --------------------------------------------------------- */

/* One table (src/ops/support.c) states, for every op and device type, the dtypes the op
   takes; the ops' own argument checks consult it, so an unsupported (op, device, dtype)
   fails as "<function>: <tensor> must be <dtypes>, got <dtype> on <device>", and the op
   table's tests (tests/lua/test_op_table_cuda.lua) ask it which rows run where. Ops are
   named as the table names them: the unary, binary and reduction ops by their own names
   ("exp", "maximum", "sum"; a binary op's scalar form shares its entry), then "axpby",
   "argmax", "sum_squares", "has_nonfinite", "softmax", "log_softmax", "matmul",
   "embedding", "rmsnorm", "rope", "swiglu", "attention", "dropout", "sample_logits",
   "cross_entropy", "linear_cross_entropy", "adamw", "global_norm", "quantize",
   "dequantize", "quant_linear". A role says which of an op's tensors a rule is about:
   MAIN the tensors it computes in (activations, their gradients, its outputs; f32
   statistics, masks and indices have fixed dtypes), READ the operands it reads through a
   conversion to f32 (weights, matmul's a and b). */
enum lt_op_role { LT_OP_ROLE_MAIN = 0, LT_OP_ROLE_READ = 1 };

/* The number of ops in the table, and the name of op i (NULL outside 0..count-1). */
int32_t lt_op_count(void);
const char *lt_op_name(int32_t i);
/* *out = 1 when `op` takes `dtype` in `role` on devices of `device_type`, else 0. An
   unknown op, device type, dtype or role is an LT_ERR_ARG. */
int lt_op_supports(const char *op, int32_t device_type, int32_t dtype, int32_t role,
                   int32_t *out);

/* ---- elementwise ------------------------------------------------------------------ */

enum lt_unary_op {
    LT_UNARY_NEG = 0,
    LT_UNARY_EXP = 1,
    LT_UNARY_LOG = 2,
    LT_UNARY_SQRT = 3,
    LT_UNARY_RSQRT = 4,
    LT_UNARY_ABS = 5,
    LT_UNARY_SQUARE = 6,
    LT_UNARY_RECIPROCAL = 7,
    LT_UNARY_SIGMOID = 8,
    LT_UNARY_SILU = 9,
    LT_UNARY_TANH = 10,
    LT_UNARY_RELU = 11,
    LT_UNARY_GELU = 12, /* tanh approximation */
    LT_UNARY_SIN = 13,
    LT_UNARY_COS = 14,
    LT_UNARY_COUNT = 15
};

/* out = f(x), same shape; out may be x. */
int lt_unary_forward(lt_tensor *out, const lt_tensor *x, int op);
/* dx = dout * f'(x) (=); dx may be dout. */
int lt_unary_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *x, int op);

enum lt_binary_op {
    LT_BINARY_ADD = 0,
    LT_BINARY_SUB = 1,
    LT_BINARY_MUL = 2,
    LT_BINARY_DIV = 3,
    LT_BINARY_MAX = 4,
    LT_BINARY_MIN = 5,
    LT_BINARY_POW = 6,
    LT_BINARY_COUNT = 7
};

/* out = a op b with numpy broadcasting; out has the broadcast shape and may be a or b. */
int lt_binary_forward(lt_tensor *out, const lt_tensor *a, const lt_tensor *b, int op);
/* da, db (=, either may be NULL) have a's and b's shapes: broadcast dims are summed. */
int lt_binary_backward(lt_tensor *da, lt_tensor *db, const lt_tensor *dout, const lt_tensor *a,
                       const lt_tensor *b, int op);
/* out = x op s, or s op x when `reversed`; out may be x. */
int lt_scalar_forward(lt_tensor *out, const lt_tensor *x, double s, int op, int reversed);
/* dx = dout * d(x op s)/dx (=). */
int lt_scalar_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *x, double s,
                       int op, int reversed);
/* y = alpha * x + beta * y (the accumulate-into primitive); x has y's shape or broadcasts
   to it. A zero alpha or beta leaves its operand unread (a NaN there does not leak). */
int lt_axpby(lt_tensor *y, double alpha, const lt_tensor *x, double beta);

/* ---- reductions ------------------------------------------------------------------- */

enum lt_reduce_op {
    LT_REDUCE_SUM = 0,
    LT_REDUCE_MEAN = 1,
    LT_REDUCE_MAX = 2,
    LT_REDUCE_MIN = 3,
    LT_REDUCE_COUNT = 4
};

/* Reduce x over the dims flagged in `dims` (ndims entries, any order). out has x's shape
   with those dims set to 1 (the keepdim form; reshape for the other). Sums accumulate in
   f64. */
int lt_reduce_forward(lt_tensor *out, const lt_tensor *x, int32_t ndims, const int32_t *dims,
                      int op);
/* dx (=): SUM/MEAN broadcast dout back (out may be NULL); MAX/MIN share dout equally among
   the tied maxima. dout and out are in the keepdim form. */
int lt_reduce_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *x,
                       const lt_tensor *out, int op);
/* Index of the max along `dim` (i64 out with that dim set to 1); first of ties, a NaN
   counting as the largest. */
int lt_argmax(lt_tensor *out, const lt_tensor *x, int dim);
/* Sum of squares in f64 (grad norms). */
int lt_sum_squares(const lt_tensor *x, double *out);
/* 1 if any element is inf or NaN. */
int lt_has_nonfinite(const lt_tensor *x, int32_t *out);

/* Softmax and log-softmax over the last dim; out may be x. */
int lt_softmax_forward(lt_tensor *out, const lt_tensor *x);
int lt_softmax_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *out);
int lt_log_softmax_forward(lt_tensor *out, const lt_tensor *x);
int lt_log_softmax_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *out);

/* ---- matmul ----------------------------------------------------------------------- */

/* c = alpha * op(a) @ op(b) + beta * c, batched.
   a: (..., M, K), or (..., K, M) when trans_a;  b: (..., K, N), or (..., N, K) when trans_b;
   c: (..., M, N) f32. a and b may be f32, bf16 or f16 (converted to f32 panel by panel,
   never whole). On CUDA (cuBLASLt, f32 accumulation; f32 inputs use TF32 while
   lt_cuda_gemm_allow_tf32 is on) c may also be bf16/f16 when a and b both have its dtype,
   and a and b of different dtypes are multiplied in f32. Batch dims of a and b must equal c's or be absent (broadcast). The last
   two dims of each operand need unit stride in one of them (transposed views are free);
   other layouts are copied. */
int lt_matmul(lt_tensor *c, const lt_tensor *a, const lt_tensor *b, int trans_a, int trans_b,
              float alpha, float beta);
/* For c = op(a) @ op(b): da = beta_a * da + dc @ op(b)^T (in op(a)'s layout), and
   db = beta_b * db + op(a)^T @ dc, summed over batch dims that b broadcast. Either output
   may be NULL. */
int lt_matmul_backward(lt_tensor *da, lt_tensor *db, const lt_tensor *dc, const lt_tensor *a,
                       const lt_tensor *b, int trans_a, int trans_b, float beta_a, float beta_b);

/* ---- embedding -------------------------------------------------------------------- */

/* out (..., C) f32 = weight[ids]; weight (V, C) f32/bf16/f16; ids (...) i32/i64. An id
   outside [0, V) is an LT_ERR_RANGE naming its position and value. */
int lt_embedding_forward(lt_tensor *out, const lt_tensor *weight, const lt_tensor *ids);
/* dweight (V, C) f32 += scatter of dout (..., C) by ids. */
int lt_embedding_backward(lt_tensor *dweight, const lt_tensor *dout, const lt_tensor *ids);

/* ---- RMSNorm ---------------------------------------------------------------------- */

/* out = x / sqrt(mean(x^2) + eps) * weight over the last dim C.
   x, out (..., C); weight (C) f32/bf16/f16; rstd (rows) f32 saved for backward, or NULL. */
int lt_rmsnorm_forward(lt_tensor *out, lt_tensor *rstd, const lt_tensor *x,
                       const lt_tensor *weight, float eps);
/* dx (=) (..., C); dweight (C) f32 (+=) or NULL. */
int lt_rmsnorm_backward(lt_tensor *dx, lt_tensor *dweight, const lt_tensor *dout,
                        const lt_tensor *x, const lt_tensor *weight, const lt_tensor *rstd);

/* ---- rotary position embedding (Hugging Face Llama convention) ------------------- */

enum lt_rope_scaling_type {
    LT_ROPE_SCALING_NONE = 0,
    LT_ROPE_SCALING_LINEAR = 1, /* positions divided by factor */
    LT_ROPE_SCALING_LLAMA3 = 2  /* Llama 3.1 frequency-band rescaling */
};

typedef struct lt_rope_config {
    double theta; /* rope_theta */
    int32_t scaling_type;
    int32_t original_max_position; /* llama3: original_max_position_embeddings */
    double factor;
    double low_freq_factor;
    double high_freq_factor;
} lt_rope_config;

/* inv_freq (D/2) f32 for an even head dim D. */
int lt_rope_inv_freq(lt_tensor *inv_freq, int32_t head_dim, const lt_rope_config *cfg);
/* cos, sin (P, D/2) f32 for positions 0..P-1, computed in f64. */
int lt_rope_table(lt_tensor *cos, lt_tensor *sin, const lt_tensor *inv_freq);
/* x, out (B, T, H, D), unit stride in D; positions (B, T) or (T) i32/i64, or NULL for
   0..T-1. Pairs (i, i + D/2) rotate by the angle of row `position` of the table
   (rotate_half). out may be x. */
int lt_rope_forward(lt_tensor *out, const lt_tensor *x, const lt_tensor *cos,
                    const lt_tensor *sin, const lt_tensor *positions);
/* dx (=) is dout rotated back. dx may be dout. */
int lt_rope_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *cos,
                     const lt_tensor *sin, const lt_tensor *positions);

/* ---- SiLU-gated linear unit ------------------------------------------------------- */

/* out = silu(gate) * up; all (N, F), unit stride in F (rows may be strided, e.g. the two
   halves of a fused gate/up projection). */
int lt_swiglu_forward(lt_tensor *out, const lt_tensor *gate, const lt_tensor *up);
/* dgate, dup (=) (N, F). */
int lt_swiglu_backward(lt_tensor *dgate, lt_tensor *dup, const lt_tensor *dout,
                       const lt_tensor *gate, const lt_tensor *up);

/* ---- attention -------------------------------------------------------------------- */

/* Softmax attention with grouped-query heads (H a multiple of Hkv; query head h reads
   key/value head h / (H / Hkv)).
   q, out (B, T, H, D); k, v (B, S, Hkv, D); unit stride in D, any other strides.
   causal: query t sees keys s <= t + (S - T) (bottom-right aligned, as with a KV cache).
   cu_seqlens: NULL, or packed sequences: an i32 vector (n + 1) of increasing offsets into
   the B * T positions, from 0 to B * T, none crossing a batch row (S must equal T). Each
   position then attends only within its own sequence (causally when causal is set), as
   FlashAttention's varlen form does.
   lse (B, H, T) f32: log-sum-exp of each row of scaled scores, saved for backward; or NULL
   (a position that sees no key gets -inf and a zero output).
   Memory: O(threads * tile * S), never B * H * T * S. */
int lt_attention_forward(lt_tensor *out, lt_tensor *lse, const lt_tensor *q, const lt_tensor *k,
                         const lt_tensor *v, const lt_tensor *cu_seqlens, float scale,
                         int causal);
/* dq (=) like q; dk, dv (=) like k, v (summed over the query heads of each group).
   Probabilities are recomputed from lse. */
int lt_attention_backward(lt_tensor *dq, lt_tensor *dk, lt_tensor *dv, const lt_tensor *dout,
                          const lt_tensor *q, const lt_tensor *k, const lt_tensor *v,
                          const lt_tensor *out, const lt_tensor *lse,
                          const lt_tensor *cu_seqlens, float scale, int causal);

/* ---- dropout ---------------------------------------------------------------------- */

/* out = x * mask / (1 - p) with mask (u8, x's shape) drawn Bernoulli(1 - p) from the
   generator (counter-based: the same (seed, offset) gives the same mask). out may be x. */
int lt_dropout_forward(lt_tensor *out, lt_tensor *mask, const lt_tensor *x, float p, lt_rng *rng);
/* dx = dout * mask / (1 - p). dx may be dout. */
int lt_dropout_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *mask, float p);

/* ---- sampling --------------------------------------------------------------------- */

/* One token id from logits (V) f32: greedy when temperature <= 0; otherwise softmax of
   logits / temperature restricted to the top_k most likely (top_k <= 0: all) and then to
   the smallest set whose probability reaches top_p (top_p >= 1: all), drawn with rng. */
int lt_sample_logits(const lt_tensor *logits, float temperature, int32_t top_k, float top_p,
                     lt_rng *rng, int32_t *out);

/* ---- cross-entropy ---------------------------------------------------------------- */

/* Loss over rows whose target is not ignore_index, summed and divided by `normalizer`
   (normalizer <= 0: the count of such rows; a batch with none gives loss 0).
   Targets outside [0, V) (other than ignore_index) are an LT_ERR_RANGE. */

/* Plain form on given logits (N, V) f32 (on CUDA also bf16/f16). loss () f32; lse (N) f32
   or NULL; row_loss (N) f32 or NULL (0 at ignored rows). On CUDA the targets are checked
   on the device and the result read back (one synchronisation per call). */
int lt_cross_entropy_forward(lt_tensor *loss, lt_tensor *lse, lt_tensor *row_loss,
                             const lt_tensor *logits, const lt_tensor *targets,
                             int64_t ignore_index, double normalizer);
/* dlogits (=) (N, V) for d loss = dloss (on CUDA f32, bf16 or f16). lse NULL: recomputed. */
int lt_cross_entropy_backward(lt_tensor *dlogits, const lt_tensor *logits,
                              const lt_tensor *targets, const lt_tensor *lse, float dloss,
                              int64_t ignore_index, double normalizer);

/* Fused LM head: logits = h @ w^T are made a block of rows at a time, so memory holds
   (rows_per_block, V) f32, never (N, V). h (N, C) f32; w (V, C) f32/bf16/f16.
   On CUDA: h may be bf16/f16 too and the GEMMs run in w's dtype (an h of another dtype is
   converted to it a block at a time); dh and dw may be f32 or w's dtype; the logits block
   stays within 256 MiB, split over the vocabulary too when V is very large (lse carried
   online across vocab blocks). */
int lt_linear_cross_entropy_forward(lt_tensor *loss, lt_tensor *lse, lt_tensor *row_loss,
                                    const lt_tensor *h, const lt_tensor *w,
                                    const lt_tensor *targets, int64_t ignore_index,
                                    double normalizer);
/* Recomputes logits from lse: dh (N, C) (=) and/or dw (V, C) f32 (+=), for d loss = dloss. */
int lt_linear_cross_entropy_backward(lt_tensor *dh, lt_tensor *dw, const lt_tensor *h,
                                     const lt_tensor *w, const lt_tensor *targets,
                                     const lt_tensor *lse, float dloss, int64_t ignore_index,
                                     double normalizer);
/* Forward and backward in one pass over the logits (three GEMMs instead of four): loss,
   row_loss as in forward; dh (=) and dw (+=) as in backward, for d loss = dloss. */
int lt_linear_cross_entropy_fused(lt_tensor *loss, lt_tensor *row_loss, lt_tensor *dh,
                                  lt_tensor *dw, const lt_tensor *h, const lt_tensor *w,
                                  const lt_tensor *targets, float dloss, int64_t ignore_index,
                                  double normalizer);

/* ---- optimizer -------------------------------------------------------------------- */

typedef struct lt_adamw_params {
    double lr;
    double beta1;
    double beta2;
    double eps;
    double weight_decay; /* decoupled: p -= lr * weight_decay * p */
    double grad_scale;   /* the gradient is multiplied by this first (clipping, unscaling) */
    int64_t step;        /* 1 on the first update (bias correction) */
} lt_adamw_params;

/* One AdamW update in PyTorch's arithmetic. param, grad, exp_avg, exp_avg_sq: same shape,
   f32 contiguous (param may be a view of a larger buffer only if contiguous). */
int lt_adamw_step(lt_tensor *param, const lt_tensor *grad, lt_tensor *exp_avg,
                  lt_tensor *exp_avg_sq, const lt_adamw_params *p);
/* lt_adamw_step over n parameters with one set of hyperparameters (one group, one step
   count), each element updated with the same arithmetic. Every tensor on one device: on
   the CPU it is the per-tensor update in turn (bit-identical to it); on CUDA all n
   tensors are updated by one kernel launch (a table of tensors cut into 64K-element
   chunks, one block per chunk). */
int lt_adamw_step_multi(lt_tensor *const *params, const lt_tensor *const *grads,
                        lt_tensor *const *exp_avgs, lt_tensor *const *exp_avg_sqs, int32_t n,
                        const lt_adamw_params *p);

/* AdamW with both moments held in 8 bits: bitsandbytes' blockwise 8-bit optimizer
   (optimizer_update_8bit_blockwise; its kernel kOptimizer8bit2StateBlockwise), in its
   layout: the codes, absmax and maps are its state1/absmax1/qmap1 and state2/absmax2/qmap2.
   Buffers, n = numel(param), blocks = ceil(n / block):
     param     f32 (any shape, contiguous), updated in place
     grad      f32, param's shape; multiplied by p->grad_scale first
     m_codes   u8 (n elements, contiguous): the first moment, codes into m_map
     m_absmax  f32 (blocks): the first moment's scale per block of `block` elements
     v_codes   u8 (n): the second moment, codes into v_map
     v_absmax  f32 (blocks)
     m_map     f32 (256), strictly increasing: the signed dynamic map (lt_quant_dynamic_map)
     v_map     f32 (256), strictly increasing: the unsigned dynamic map
               (lt_quant_dynamic_map_unsigned)
   A moment element is map[code] * absmax[block]. One pass per block: dequantize m and v,
   the AdamW update in f32 with lt_adamw_step's arithmetic (decoupled decay applied as
   PyTorch applies it, before the step; bitsandbytes decays after it, a difference of
   lr * wd times the step), the new absmax = max |m| and max |v| over the block, then each
   moment divided by its absmax and re-coded to the nearest map entry (bitsandbytes' binary
   search over the map: nearest by f32 midpoints, a value exactly at a midpoint taking the
   even entry; no stochastic rounding). As in bitsandbytes, a first moment that the
   nearest code would flip in sign (a tiny negative one rounding to 0.0) takes the
   neighbouring code of its own sign, and an element whose gradient is inf or NaN gets zero
   moments and keeps its parameter. A block whose moments are all zero gets absmax 0 and
   the codes of 0.0; zero codes and absmax are the fresh state. block: a power of two from
   64 to 4096 (bitsandbytes uses 256; releases before 0.44 used 2048). Every tensor on one
   device; the CPU runs the blocks in parallel, CUDA one thread block per quantization
   block, and both give the same codes for the same moments. */
int lt_adamw8_step(lt_tensor *param, const lt_tensor *grad, lt_tensor *m_codes,
                   lt_tensor *m_absmax, lt_tensor *v_codes, lt_tensor *v_absmax,
                   const lt_tensor *m_map, const lt_tensor *v_map, int32_t block,
                   const lt_adamw_params *p);

/* sqrt(sum of squares) over n tensors, in f64. Every tensor on one device; on CUDA they
   may also be bf16/f16, and all are reduced in two launches with one read-back. */
int lt_global_norm(const lt_tensor *const *tensors, int32_t n, double *out);

#endif
