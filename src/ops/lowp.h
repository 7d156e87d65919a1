/* lowp.h - bf16/f16 tensors through the CPU's f32 kernels; not FFI-visible.
 *
 * The CPU kernels compute in f32. An op handed bf16/f16 "main" tensors (support.c) on the
 * CPU converts them to f32 twins, calls itself again on the twins (the f32 path, checks
 * and all), and rounds the outputs back to their dtype, round-to-nearest-even. So the math
 * is the f32 kernel's, f32 accumulation included, and the result differs from the f32
 * op's by the rounding of its inputs and outputs alone: what ARCHITECTURE.md contract 7
 * asks of low-precision compute (norms, softmax and losses reduce in f32), and what the op
 * table's low-precision rule measures (tests/lua/test_op_table_cuda.lua, part 2).
 *
 * One shadow per storage: every registered tensor that lies in storage S is a view of one
 * f32 buffer covering the elements of S those tensors reach (from the lowest to the highest
 * element any of them touches), laid out as S is. Views that alias in S alias in the
 * shadow, so in-place forms (softmax's out over x, dx over dout) and the two halves of one
 * projection keep working. The buffers are tensor storage, counted by lt.memory, and live
 * for the one call.
 *
 * Use, after the op's own checks and its CUDA dispatch:
 *
 *     if (lt_lowp_cpu(x) || lt_lowp_cpu(out)) {
 *         lt_lowp lp;
 *         lt_lowp_init(&lp);
 *         lt_lowp_in(&lp, &x);      // read only: converted to f32
 *         lt_lowp_out(&lp, &out);   // converted too (a kernel may read or keep elements),
 *                                   // and rounded back when the op succeeds
 *         int st = lt_lowp_begin(&lp, "rmsnorm_forward");
 *         if (st == LT_OK) st = lt_rmsnorm_forward(out, rstd, x, weight, eps);
 *         return lt_lowp_end(&lp, st);
 *     }
 *
 * lt_lowp_in / lt_lowp_out take the address of the caller's tensor pointer and, in
 * lt_lowp_begin, point it at the f32 twin; tensors that are NULL, f32, not floats or not
 * on the CPU are left as they are. */
#ifndef LT_OPS_LOWP_H
#define LT_OPS_LOWP_H

#include "core/internal.h"

enum { LT_LOWP_MAX = 8 }; /* tensors one call registers (attention's backward has 8) */

typedef struct {
    int n;                   /* registered tensors */
    int failed;              /* more than LT_LOWP_MAX were registered */
    void *slot[LT_LOWP_MAX]; /* the caller's pointer variable (const lt_tensor **) */
    const lt_tensor *orig[LT_LOWP_MAX];
    int out[LT_LOWP_MAX];          /* rounded back at the end */
    int group[LT_LOWP_MAX];        /* index of its shadow */
    lt_tensor twin[LT_LOWP_MAX];   /* f32 view on the shadow, laid out as orig */
    lt_tensor shadow[LT_LOWP_MAX]; /* 1-D f32, one per storage */
    int group_first[LT_LOWP_MAX];  /* by shadow: the first tensor in its storage */
    int64_t lo[LT_LOWP_MAX];       /* by shadow: its element 0 is this element of the storage */
    int nshadow;
} lt_lowp;

/* t is a bf16 or f16 tensor on the CPU. */
static inline int lt_lowp_cpu(const lt_tensor *t) {
    return t && t->storage && t->storage->device_type == LT_DEVICE_CPU &&
           (t->dtype_id == LT_DTYPE_BF16 || t->dtype_id == LT_DTYPE_F16);
}

void lt_lowp_init(lt_lowp *lp);
void lt_lowp_in(lt_lowp *lp, const lt_tensor **t);
void lt_lowp_out(lt_lowp *lp, lt_tensor **t);
/* Allocates the shadows, converts, swaps the pointers. fn names the op in errors. */
int lt_lowp_begin(lt_lowp *lp, const char *fn);
/* When st is LT_OK, rounds the outputs back; frees the shadows either way. Returns st. */
int lt_lowp_end(lt_lowp *lp, int st);

#endif
