/* test_output_check.c - every op refuses an output it cannot write: a broadcast view (a
 * stride-0 dim of size > 1, whose elements share memory) and a read-only tensor, through the
 * one check they share (lt_check_out, src/core/tensor.c).
 *
 * Several ops used to take a broadcast output and write its aliased rows concurrently
 * (matmul, rmsnorm, rope, swiglu, attention, the cross-entropy outputs), and some wrote
 * outputs without asking whether they were writable (attention's out and lse, rmsnorm's
 * rstd, cross entropy's loss, lse and row_loss). Each case names the op and the output;
 * the inputs are valid, so the output is the only thing wrong. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "lt.h"
#include "lt_ops.h"

static lt_tensor make(int dtype, int nd, const int64_t *sizes, double value) {
    lt_tensor t = {0};
    if (lt_tensor_empty(&t, dtype, nd, sizes, LT_DEVICE_CPU, 0) != LT_OK ||
        lt_tensor_fill(&t, value) != LT_OK)
        fprintf(stderr, "make: %s\n", lt_last_error());
    return t;
}

static lt_tensor f32(int nd, const int64_t *sizes) { return make(LT_DTYPE_F32, nd, sizes, 0.5); }

/* A tensor of `sizes` whose dim 0 (size > 1) is a stride-0 broadcast of one row. */
static lt_tensor bcast(int dtype, int nd, const int64_t *sizes) {
    int64_t one[LT_MAX_DIMS];
    memcpy(one, sizes, (size_t)nd * sizeof *one);
    one[0] = 1;
    lt_tensor row = make(dtype, nd, one, 0.0), t = {0};
    if (lt_tensor_expand(&t, &row, nd, sizes) != LT_OK) fprintf(stderr, "%s\n", lt_last_error());
    lt_tensor_release(&row);
    return t;
}

static lt_tensor readonly(int dtype, int nd, const int64_t *sizes) {
    lt_tensor t = make(dtype, nd, sizes, 0.0);
    t.storage->readonly = 1;
    return t;
}

/* The output variants: each case runs once with a broadcast view, once read-only. */
enum { BCAST, READONLY };
static lt_tensor bad(int kind, int dtype, int nd, const int64_t *sizes) {
    return kind == BCAST ? bcast(dtype, nd, sizes) : readonly(dtype, nd, sizes);
}

/* The call failed with LT_ERR_ARG and a message naming op, output and problem. */
static void expect(int st, int kind, const char *op, const char *name) {
    char want[128];
    snprintf(want, sizeof want, "%s: %s is %s", op, name,
             kind == BCAST ? "a broadcast view (stride 0 in dim 0)" : "read-only");
    const char *needle = want;
    CHECK_FAILS(st, LT_ERR_ARG, needle);
}

static void test_elementwise_and_reductions(int kind) {
    int64_t s23[2] = {2, 3}, s21[2] = {2, 1};
    lt_tensor x = f32(2, s23), o = bad(kind, LT_DTYPE_F32, 2, s23);
    expect(lt_unary_forward(&o, &x, LT_UNARY_EXP), kind, "exp", "out");
    expect(lt_softmax_forward(&o, &x), kind, "softmax", "out");
    lt_tensor r = bad(kind, LT_DTYPE_F32, 2, s21), ri = bad(kind, LT_DTYPE_I64, 2, s21);
    int32_t dim = 1;
    expect(lt_reduce_forward(&r, &x, 1, &dim, LT_REDUCE_SUM), kind, "sum", "out");
    expect(lt_argmax(&ri, &x, 1), kind, "argmax", "out");
    lt_tensor_release(&x);
    lt_tensor_release(&o);
    lt_tensor_release(&r);
    lt_tensor_release(&ri);
}

static void test_matmul(int kind) {
    int64_t sa[2] = {4, 3}, sb[2] = {3, 5}, sc[2] = {4, 5};
    lt_tensor a = f32(2, sa), b = f32(2, sb), c = bad(kind, LT_DTYPE_F32, 2, sc);
    expect(lt_matmul(&c, &a, &b, 0, 0, 1.0f, 0.0f), kind, "matmul", "out");
    lt_tensor_release(&a);
    lt_tensor_release(&b);
    lt_tensor_release(&c);
}

static void test_rmsnorm(int kind) {
    int64_t sx[2] = {4, 8}, sw[1] = {8}, sr[1] = {4};
    lt_tensor x = f32(2, sx), w = f32(1, sw), out = bad(kind, LT_DTYPE_F32, 2, sx);
    lt_tensor good = f32(2, sx), rstd = f32(1, sr);
    expect(lt_rmsnorm_forward(&out, &rstd, &x, &w, 1e-5f), kind, "rmsnorm_forward", "out");
    if (kind == READONLY) { /* a broadcast rstd is refused earlier, as not contiguous */
        lt_tensor ro = readonly(LT_DTYPE_F32, 1, sr);
        expect(lt_rmsnorm_forward(&good, &ro, &x, &w, 1e-5f), kind, "rmsnorm_forward", "rstd");
        lt_tensor_release(&ro);
    }
    lt_tensor_release(&x);
    lt_tensor_release(&w);
    lt_tensor_release(&out);
    lt_tensor_release(&good);
    lt_tensor_release(&rstd);
}

static void test_rope_swiglu(int kind) {
    int64_t sx[4] = {2, 3, 2, 4}, st[2] = {3, 2}, sg[2] = {4, 6};
    lt_tensor x = f32(4, sx), cs = f32(2, st), sn = f32(2, st);
    lt_tensor out = bad(kind, LT_DTYPE_F32, 4, sx);
    expect(lt_rope_forward(&out, &x, &cs, &sn, NULL), kind, "rope_forward", "out");
    lt_tensor g = f32(2, sg), u = f32(2, sg), o = bad(kind, LT_DTYPE_F32, 2, sg);
    expect(lt_swiglu_forward(&o, &g, &u), kind, "swiglu_forward", "out");
    lt_tensor all[] = {x, cs, sn, out, g, u, o};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) lt_tensor_release(&all[i]);
}

static void test_attention(int kind) {
    int64_t sq[4] = {2, 5, 2, 4}, sl[3] = {2, 2, 5};
    lt_tensor q = f32(4, sq), k = f32(4, sq), v = f32(4, sq);
    lt_tensor out = bad(kind, LT_DTYPE_F32, 4, sq), good = f32(4, sq);
    lt_tensor lse = bad(kind, LT_DTYPE_F32, 3, sl);
    expect(lt_attention_forward(&out, NULL, &q, &k, &v, NULL, 0.5f, 1), kind, "attention_forward",
           "out");
    expect(lt_attention_forward(&good, &lse, &q, &k, &v, NULL, 0.5f, 1), kind, "attention_forward",
           "lse");
    lt_tensor all[] = {q, k, v, out, good, lse};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) lt_tensor_release(&all[i]);
}

static void test_cross_entropy(int kind) {
    int64_t sl[2] = {3, 7}, sn[1] = {3}, sh[2] = {3, 4}, sw[2] = {7, 4};
    lt_tensor logits = f32(2, sl), targets = make(LT_DTYPE_I64, 1, sn, 2.0);
    lt_tensor rows = bad(kind, LT_DTYPE_F32, 1, sn);
    expect(lt_cross_entropy_forward(NULL, NULL, &rows, &logits, &targets, -100, 0.0), kind,
           "cross_entropy_forward", "row_loss");
    lt_tensor h = f32(2, sh), w = f32(2, sw), lse = f32(1, sn);
    lt_tensor dh = bad(kind, LT_DTYPE_F32, 2, sh);
    expect(lt_linear_cross_entropy_backward(&dh, NULL, &h, &w, &targets, &lse, 1.0f, -100, 0.0),
           kind, "linear_cross_entropy_backward", "dh");
    if (kind == READONLY) {
        int64_t s1[1] = {1};
        lt_tensor loss = readonly(LT_DTYPE_F32, 1, s1);
        expect(lt_cross_entropy_forward(&loss, NULL, NULL, &logits, &targets, -100, 0.0), kind,
               "cross_entropy_forward", "loss");
        lt_tensor_release(&loss);
    }
    lt_tensor all[] = {logits, targets, rows, h, w, lse, dh};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) lt_tensor_release(&all[i]);
}

/* The dtype rules and the broadcast rule of the one check, seen through elementwise ops. */
static void test_dtype_and_size1_stride0(void) {
    int64_t s23[2] = {2, 3}, s13[2] = {1, 3};
    lt_tensor x = f32(2, s23), oi = make(LT_DTYPE_I64, 2, s23, 0.0);
    CHECK_FAILS(lt_unary_forward(&oi, &x, LT_UNARY_EXP), LT_ERR_DTYPE,
                "exp: out must be f32, bf16 or f16, got i64");
    lt_tensor of = f32(2, s13);
    int64_t s21[2] = {2, 1};
    lt_tensor amax = make(LT_DTYPE_F32, 2, s21, 0.0);
    CHECK_FAILS(lt_argmax(&amax, &x, 1), LT_ERR_DTYPE, "argmax: out must be i64, got f32");
    /* a stride-0 dim of size 1 aliases nothing: such an output is fine */
    lt_tensor row = f32(2, s13), y = {0};
    int64_t strides[2] = {0, 1};
    CHECK_OK(lt_tensor_as_strided(&y, &row, 2, s13, strides, 0));
    CHECK_OK(lt_unary_forward(&y, &of, LT_UNARY_NEG));
    lt_tensor all[] = {x, oi, of, amax, row, y};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) lt_tensor_release(&all[i]);
}

int main(void) {
    for (int kind = BCAST; kind <= READONLY; kind++) {
        test_elementwise_and_reductions(kind);
        test_matmul(kind);
        test_rmsnorm(kind);
        test_rope_swiglu(kind);
        test_attention(kind);
        test_cross_entropy(kind);
    }
    test_dtype_and_size1_stride0();
    return check_summary();
}
