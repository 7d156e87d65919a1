/* support.h - the ops' side of the support table (support.c); not FFI-visible.
 *
 * Every op names itself by an lt_op_id; its argument checks ask the table whether a
 * tensor's dtype is one the op takes on that tensor's device, so the rules live in one
 * place and every refusal reads the same:
 *     "<function>: <tensor> must be <dtypes>, got <dtype> on <device>"
 * Tensors whose dtype is fixed on every device (f32 statistics such as rstd and lse, u8
 * masks, i32/i64 indices, f32 parameter gradients) keep their own exact checks. */
#ifndef LT_OPS_SUPPORT_H
#define LT_OPS_SUPPORT_H

#include "lt_ops.h"

/* The table's ops, in its order. The unary, binary and reduction runs follow the order of
   lt_unary_op, lt_binary_op and lt_reduce_op (support.c asserts it), so an op code maps to
   its entry by an offset: LT_OP_NEG + op. The scalar forms of the binary ops share their
   entries. */
enum lt_op_id {
    LT_OP_NEG = 0,
    LT_OP_EXP,
    LT_OP_LOG,
    LT_OP_SQRT,
    LT_OP_RSQRT,
    LT_OP_ABS,
    LT_OP_SQUARE,
    LT_OP_RECIPROCAL,
    LT_OP_SIGMOID,
    LT_OP_SILU,
    LT_OP_TANH,
    LT_OP_RELU,
    LT_OP_GELU,
    LT_OP_SIN,
    LT_OP_COS,
    LT_OP_ADD,
    LT_OP_SUB,
    LT_OP_MUL,
    LT_OP_DIV,
    LT_OP_MAXIMUM,
    LT_OP_MINIMUM,
    LT_OP_POW,
    LT_OP_AXPBY,
    LT_OP_SUM,
    LT_OP_MEAN,
    LT_OP_MAX,
    LT_OP_MIN,
    LT_OP_ARGMAX,
    LT_OP_SUM_SQUARES,
    LT_OP_HAS_NONFINITE,
    LT_OP_SOFTMAX,
    LT_OP_LOG_SOFTMAX,
    LT_OP_MATMUL,
    LT_OP_EMBEDDING,
    LT_OP_RMSNORM,
    LT_OP_ROPE,
    LT_OP_SWIGLU,
    LT_OP_ATTENTION,
    LT_OP_DROPOUT,
    LT_OP_SAMPLE_LOGITS,
    LT_OP_CROSS_ENTROPY,
    LT_OP_LINEAR_CROSS_ENTROPY,
    LT_OP_ADAMW,
    LT_OP_GLOBAL_NORM,
    LT_OP_QUANTIZE,
    LT_OP_DEQUANTIZE,
    LT_OP_QUANT_LINEAR,
    LT_OP_COUNT
};

/* t is a tensor whose dtype `op` takes in `role` (an lt_op_role) on t's device; otherwise
   LT_ERR_DTYPE with the message above. fn names the function in the message
   ("rmsnorm_backward"), name the argument ("dout"). */
int lt_op_check_dtype(int op, int role, const lt_tensor *t, const char *fn, const char *name);
/* The same, and t is contiguous. */
int lt_op_check_contig(int op, int role, const lt_tensor *t, const char *fn, const char *name);
/* An output of `op`: a main-role dtype as above, then lt_check_out's checks (writable, not
   a broadcast view, on the device of `in` when in is not NULL). */
int lt_op_check_out(int op, const lt_tensor *t, const char *fn, const char *name,
                    const lt_tensor *in, const char *in_name);

#endif
