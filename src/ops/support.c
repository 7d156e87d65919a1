/* support.c - which dtypes each backend takes, op by op: the one place this is stated.
 *
 * The ops' argument checks ask this table (support.h) before they dispatch, so a tensor of
 * a dtype its op does not take on its device is refused with one message format; the op
 * table's tests ask it (lt_op_supports, through lua/luatrain/ops/support.lua) which rows
 * to run on which device in which dtype.
 *
 * Two roles (lt_op_role in lt_ops.h):
 *   main  the tensors the op computes in: its activations, their gradients and its outputs.
 *         Both devices take f32, bf16 or f16 and compute in f32: the CUDA kernels read and
 *         write the low-precision dtypes directly; the CPU converts bf16/f16 tensors to f32
 *         twins, runs its f32 kernel and rounds the outputs back to nearest even
 *         (ops/lowp.h), so matmuls accumulate and norms, softmax and losses reduce in f32
 *         on both. AdamW keeps f32 everywhere (master weights and moments).
 *   read  operands an op reads through a conversion to f32, so any float dtype will do on
 *         both devices: matmul's a and b, the embedding, RMSNorm and LM-head weights,
 *         quant_linear's x and dy.
 * Pairings inside a device (CUDA matmul's bf16 output needs bf16 a and b; attention's q,
 * k, v and outputs share one dtype) are the backend's own checks. */
#include <stdio.h>

#include "core/internal.h"
#include "ops/support.h"

_Static_assert(LT_DEVICE_CPU == 0 && LT_DEVICE_CUDA == 1, "the table is indexed by device type");
_Static_assert(LT_OP_COS - LT_OP_NEG + 1 == LT_UNARY_COUNT, "unary ops in lt_unary_op order");
_Static_assert(LT_OP_POW - LT_OP_ADD + 1 == LT_BINARY_COUNT, "binary ops in lt_binary_op order");
_Static_assert(LT_OP_MIN - LT_OP_SUM + 1 == LT_REDUCE_COUNT, "reductions in lt_reduce_op order");
_Static_assert(LT_DTYPE_COUNT <= 16, "dtype masks are 16 bits");

enum {
    F32 = 1 << LT_DTYPE_F32,
    FLOAT = 1 << LT_DTYPE_F32 | 1 << LT_DTYPE_BF16 | 1 << LT_DTYPE_F16,
};

typedef struct {
    const char *name;
    uint16_t main[2]; /* by device type: cpu, cuda */
    uint16_t read[2];
} op_support;

/* An elementwise or reduction op: any float dtype on both devices. */
#define EW(name) {name, {FLOAT, FLOAT}, {0, 0}}

static const op_support table[LT_OP_COUNT] = {
    [LT_OP_NEG] = EW("neg"),
    [LT_OP_EXP] = EW("exp"),
    [LT_OP_LOG] = EW("log"),
    [LT_OP_SQRT] = EW("sqrt"),
    [LT_OP_RSQRT] = EW("rsqrt"),
    [LT_OP_ABS] = EW("abs"),
    [LT_OP_SQUARE] = EW("square"),
    [LT_OP_RECIPROCAL] = EW("reciprocal"),
    [LT_OP_SIGMOID] = EW("sigmoid"),
    [LT_OP_SILU] = EW("silu"),
    [LT_OP_TANH] = EW("tanh"),
    [LT_OP_RELU] = EW("relu"),
    [LT_OP_GELU] = EW("gelu"),
    [LT_OP_SIN] = EW("sin"),
    [LT_OP_COS] = EW("cos"),
    [LT_OP_ADD] = EW("add"),
    [LT_OP_SUB] = EW("sub"),
    [LT_OP_MUL] = EW("mul"),
    [LT_OP_DIV] = EW("div"),
    [LT_OP_MAXIMUM] = EW("maximum"),
    [LT_OP_MINIMUM] = EW("minimum"),
    [LT_OP_POW] = EW("pow"),
    [LT_OP_AXPBY] = EW("axpby"),
    [LT_OP_SUM] = EW("sum"),
    [LT_OP_MEAN] = EW("mean"),
    [LT_OP_MAX] = EW("max"),
    [LT_OP_MIN] = EW("min"),
    [LT_OP_ARGMAX] = EW("argmax"), /* x; the indices are i64 */
    [LT_OP_SUM_SQUARES] = EW("sum_squares"),
    [LT_OP_HAS_NONFINITE] = EW("has_nonfinite"),
    [LT_OP_SOFTMAX] = EW("softmax"),
    [LT_OP_LOG_SOFTMAX] = EW("log_softmax"),
    /* main: the output c (and the gradients, which are matmuls); read: a and b */
    [LT_OP_MATMUL] = {"matmul", {FLOAT, FLOAT}, {FLOAT, FLOAT}},
    /* main: out and dout; read: the weight; dweight is f32 */
    [LT_OP_EMBEDDING] = {"embedding", {FLOAT, FLOAT}, {FLOAT, FLOAT}},
    /* main: x, out, dout, dx; read: the weight; rstd and dweight are f32 */
    [LT_OP_RMSNORM] = {"rmsnorm", {FLOAT, FLOAT}, {FLOAT, FLOAT}},
    /* main: x and out (dout and dx); the cos/sin tables are f32 */
    [LT_OP_ROPE] = {"rope", {FLOAT, FLOAT}, {0, 0}},
    [LT_OP_SWIGLU] = EW("swiglu"),
    /* main: q, k, v, out and their gradients; lse is f32 */
    [LT_OP_ATTENTION] = {"attention", {FLOAT, FLOAT}, {0, 0}},
    [LT_OP_DROPOUT] = EW("dropout"),
    [LT_OP_SAMPLE_LOGITS] = EW("sample_logits"),
    /* main: logits and dlogits; loss, lse and row_loss are f32 */
    [LT_OP_CROSS_ENTROPY] = {"cross_entropy", {FLOAT, FLOAT}, {0, 0}},
    /* main: h, dh and dw (on CUDA f32 or w's dtype); read: w; loss, lse, row_loss are f32 */
    [LT_OP_LINEAR_CROSS_ENTROPY] = {"linear_cross_entropy", {FLOAT, FLOAT}, {FLOAT, FLOAT}},
    [LT_OP_ADAMW] = {"adamw", {F32, F32}, {0, 0}},
    [LT_OP_GLOBAL_NORM] = EW("global_norm"),
    /* main: the weight to quantize */
    [LT_OP_QUANTIZE] = {"quantize", {FLOAT, FLOAT}, {0, 0}},
    /* main: the dequantized output (dequantize and dequantize_rows) */
    [LT_OP_DEQUANTIZE] = {"dequantize", {FLOAT, FLOAT}, {0, 0}},
    /* main: y and dx (on CUDA f32 or the input's dtype); read: x and dy */
    [LT_OP_QUANT_LINEAR] = {"quant_linear", {FLOAT, FLOAT}, {FLOAT, FLOAT}},
};

#undef EW

static const char *dtype_name(int dt) {
    const lt_dtype_traits *tr = lt_dtype_info(dt);
    return tr ? tr->name : "?";
}

static unsigned mask_of(int op, int role, int device_type) {
    const op_support *e = &table[op];
    return role == LT_OP_ROLE_READ ? e->read[device_type] : e->main[device_type];
}

/* "f32", "f32 or bf16", "f32, bf16 or f16" */
static const char *mask_str(unsigned mask, char *buf, size_t len) {
    int n = 0, total = 0;
    for (int d = 0; d < LT_DTYPE_COUNT; d++) total += (mask >> d) & 1;
    buf[0] = 0;
    for (int d = 0; d < LT_DTYPE_COUNT; d++) {
        if (!((mask >> d) & 1)) continue;
        size_t used = strlen(buf);
        const char *sep = n == 0 ? "" : n == total - 1 ? " or " : ", ";
        snprintf(buf + used, len - used, "%s%s", sep, dtype_name(d));
        n++;
    }
    return buf;
}

int lt_op_check_dtype(int op, int role, const lt_tensor *t, const char *fn, const char *name) {
    LT_TRY(lt_check_tensor(t, fn, name));
    if (op < 0 || op >= LT_OP_COUNT || (role != LT_OP_ROLE_MAIN && role != LT_OP_ROLE_READ))
        return LT_INTERNAL("%s: no support entry %d (role %d)", fn, op, role);
    int dev = t->storage->device_type == LT_DEVICE_CUDA ? LT_DEVICE_CUDA : LT_DEVICE_CPU;
    unsigned mask = mask_of(op, role, dev);
    if (t->dtype_id >= 0 && t->dtype_id < LT_DTYPE_COUNT && ((mask >> t->dtype_id) & 1))
        return LT_OK;
    char where[32];
    if (dev == LT_DEVICE_CUDA)
        snprintf(where, sizeof where, "cuda:%d", (int)t->storage->device_index);
    else
        snprintf(where, sizeof where, "cpu");
    if (!mask)
        return lt_fail(LT_ERR_DTYPE, "%s: %s is %s on %s, where %s does not run", fn, name,
                       dtype_name(t->dtype_id), where, table[op].name);
    char allowed[64];
    return lt_fail(LT_ERR_DTYPE, "%s: %s must be %s, got %s on %s", fn, name,
                   mask_str(mask, allowed, sizeof allowed), dtype_name(t->dtype_id), where);
}

int lt_op_check_contig(int op, int role, const lt_tensor *t, const char *fn, const char *name) {
    LT_TRY(lt_op_check_dtype(op, role, t, fn, name));
    if (!lt_tensor_is_contiguous(t))
        return lt_fail(LT_ERR_ARG, "%s: %s must be contiguous (call :contiguous())", fn, name);
    return LT_OK;
}

int lt_op_check_out(int op, const lt_tensor *t, const char *fn, const char *name,
                    const lt_tensor *in, const char *in_name) {
    LT_TRY(lt_op_check_dtype(op, LT_OP_ROLE_MAIN, t, fn, name));
    return lt_check_out(t, LT_OUT_ANY_DTYPE, fn, name, in, in_name);
}

/* ---- the public view ------------------------------------------------------------------- */

int32_t lt_op_count(void) { return LT_OP_COUNT; }

const char *lt_op_name(int32_t i) { return i >= 0 && i < LT_OP_COUNT ? table[i].name : NULL; }

int lt_op_supports(const char *op, int32_t device_type, int32_t dtype, int32_t role, int32_t *out) {
    if (!op || !out) return lt_fail(LT_ERR_ARG, "op_supports: op or out is NULL");
    int id = -1;
    for (int i = 0; i < LT_OP_COUNT && id < 0; i++)
        if (strcmp(table[i].name, op) == 0) id = i;
    if (id < 0) return lt_fail(LT_ERR_ARG, "op_supports: unknown op \"%s\"", op);
    if (device_type != LT_DEVICE_CPU && device_type != LT_DEVICE_CUDA)
        return lt_fail(LT_ERR_ARG,
                       "op_supports: unknown device type %d (LT_DEVICE_CPU = 0, "
                       "LT_DEVICE_CUDA = 1)",
                       (int)device_type);
    if (dtype < 0 || dtype >= LT_DTYPE_COUNT)
        return lt_fail(LT_ERR_ARG, "op_supports: unknown dtype %d", (int)dtype);
    if (role != LT_OP_ROLE_MAIN && role != LT_OP_ROLE_READ)
        return lt_fail(LT_ERR_ARG,
                       "op_supports: unknown role %d (LT_OP_ROLE_MAIN = 0, LT_OP_ROLE_READ = 1)",
                       (int)role);
    *out = (int32_t)((mask_of(id, role, device_type) >> dtype) & 1);
    return LT_OK;
}
