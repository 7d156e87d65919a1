// elementwise.cu - the CUDA side of src/ops/elementwise.c: unary, binary and scalar maps with
// numpy broadcasting, their gradients, and axpby.
//
// What it computes: exactly the CPU's functions (the formulas below are the CPU's, term for
// term, in f32), on tensors of any shape and strides:
//   unary    out (S) = f(x (S))                 dx (S) = dout (S) * f'(x)
//   binary   out (S) = a (Sa) op b (Sb)         S = broadcast(Sa, Sb)
//            da (Sa), db (Sb): the elementwise gradient summed over the broadcast dims
//   scalar   out (S) = x (S) op s, or s op x    dx (S) likewise
//   axpby    y (S) = alpha * x (Sx broadcasting to S) + beta * y
// Dtypes: every operand may be f32, bf16 or f16, independently (the CPU too, through f32 twins);
// values are converted to f32, computed in f32 and rounded once to the output's dtype.
//
// Launch choice. The operands are described over one iteration shape and simplified as the
// CPU does it (size-1 dims dropped, dims ordered by the output's strides, nesting dims
// merged), then:
//   - flat path: one merged dim, unit stride for the output and every input (or stride 0,
//     a broadcast scalar), and one dtype T for all: a grid-stride loop over 16-byte packs
//     (4 f32 or 8 bf16/f16 per thread and load) when every pointer is 16-byte aligned,
//     element by element otherwise. Op and dtype are template arguments here, so the inner
//     loop is straight-line code: this is the path training traffic takes (residual adds,
//     activation maps, gradient accumulation);
//   - general path: any strides and mixed dtypes; each thread turns its flat index into
//     per-operand offsets (32-bit index arithmetic when the sizes allow, 64-bit otherwise,
//     since 64-bit division costs several times more) and the op is a run-time switch
//     (uniform across the grid, so it does not diverge).
// 256 threads per block; grids are capped and grid-stride, so any size is covered.
//
// Broadcast gradients (binary backward) follow the CPU's plan: add/sub reduce dout itself
// (lt_cuda_reduce_forward, f64 accumulation); the other ops write the elementwise gradient
// into an f32 temporary of dout's shape (in slabs of at most EW_GRAD_SLAB elements along
// the outermost dim, so the temporary stays bounded) and reduce that.
//
// Aliasing: an output may be an input exactly (same pointer, shape, strides): each thread
// reads an element (or a whole pack) before it writes that same element.
#include "common.cuh"
#include "ops/elementwise_math.h"

namespace {

// ---- the math: src/ops/elementwise_math.h, the CPU's formulas ---------------------------

enum { K_UF = 0, K_UG = 1, K_BF = 2, K_BG = 3, K_AX = 4 };

// One output value. y: the output's current value (axpby reads it); v1..v3: the inputs in
// the CPU's operand order. A zero alpha or beta drops its term unread, as on the CPU, so a
// NaN there does not leak.
template <int KIND>
__device__ __forceinline__ float ew_eval(int op, int wrt_b, float y, float v1, float v2, float v3,
                                         float alpha, float beta) {
    if (KIND == K_UF) return lt_ew_unary(op, v1);
    if (KIND == K_UG) return lt_ew_unary_grad(op, v1, v2);
    // t ^ 2 is t * t, as the CPU takes a broadcast exponent of 2 (binary_run): the device's
    // powf is not correctly rounded, and a square should not differ by an ulp
    if (KIND == K_BF) return op == LT_BINARY_POW && v2 == 2.0f ? v1 * v1 : lt_ew_binary(op, v1, v2);
    if (KIND == K_BG) return lt_ew_binary_grad(op, wrt_b, v1, v2, v3);
    if (alpha == 0.0f) return beta == 0.0f ? 0.0f : beta * y;
    if (beta == 0.0f) return alpha * v1;
    return alpha * v1 + beta * y;
}

// Inputs each kind reads (after the output).
__host__ __device__ constexpr int kind_inputs(int kind) {
    return kind == K_UF ? 1 : kind == K_UG ? 2 : kind == K_BF ? 2 : kind == K_BG ? 3 : 1;
}

// ---- geometry (host) ----------------------------------------------------------------------

enum { EW_MAX_OPS = 4 };

// Operands over a common iteration shape; operand 0 is the output. A constant operand (the
// scalar of lt_scalar_*) has base NULL, stride 0 everywhere, and its value in cval.
struct EwArgs {
    int nops;
    int ndim;
    int64_t sizes[LT_MAX_DIMS];
    int64_t strides[EW_MAX_OPS][LT_MAX_DIMS];
    char *base[EW_MAX_OPS];
    int dtype[EW_MAX_OPS];
    float cval[EW_MAX_OPS];
    int op, wrt_b;
    float alpha, beta;
};

void ew_init(EwArgs *g, int ndim, const int64_t *sizes) {
    memset(g, 0, sizeof *g);
    g->ndim = ndim;
    for (int i = 0; i < ndim; i++) g->sizes[i] = sizes[i];
}

// A tensor operand, right-aligned against the iteration shape (numpy broadcasting).
void ew_operand(EwArgs *g, const lt_tensor *t) {
    int k = g->nops++;
    g->base[k] = (char *)lt_tensor_data(t);
    g->dtype[k] = t->dtype_id;
    int lead = g->ndim - t->ndim;
    for (int i = 0; i < g->ndim; i++) {
        int j = i - lead;
        g->strides[k][i] = (j < 0 || t->sizes[j] == 1) ? 0 : t->strides[j];
    }
}

void ew_const(EwArgs *g, float v) {
    int k = g->nops++;
    g->base[k] = NULL;
    g->dtype[k] = LT_DTYPE_F32;
    g->cval[k] = v;
    for (int i = 0; i < g->ndim; i++) g->strides[k][i] = 0;
}

// The CPU's simplification (src/ops/elementwise.c, ew_simplify): drop size-1 dims, order
// the rest by the output's strides (largest first), merge neighbours that nest in every
// operand. Leaves at least one dim.
void ew_simplify(EwArgs *g) {
    int nd = 0;
    for (int i = 0; i < g->ndim; i++) {
        if (g->sizes[i] == 1) continue;
        g->sizes[nd] = g->sizes[i];
        for (int k = 0; k < g->nops; k++) g->strides[k][nd] = g->strides[k][i];
        nd++;
    }
    for (int i = 1; i < nd; i++) {
        for (int j = i; j > 0 && g->strides[0][j - 1] < g->strides[0][j]; j--) {
            int64_t t = g->sizes[j];
            g->sizes[j] = g->sizes[j - 1];
            g->sizes[j - 1] = t;
            for (int k = 0; k < g->nops; k++) {
                t = g->strides[k][j];
                g->strides[k][j] = g->strides[k][j - 1];
                g->strides[k][j - 1] = t;
            }
        }
    }
    int m = 0;
    for (int i = 0; i < nd; i++) {
        if (m > 0) {
            bool nest = true;
            for (int k = 0; k < g->nops && nest; k++)
                nest = g->strides[k][m - 1] == g->strides[k][i] * g->sizes[i];
            if (nest) {
                g->sizes[m - 1] *= g->sizes[i];
                for (int k = 0; k < g->nops; k++) g->strides[k][m - 1] = g->strides[k][i];
                continue;
            }
        }
        g->sizes[m] = g->sizes[i];
        for (int k = 0; k < g->nops; k++) g->strides[k][m] = g->strides[k][i];
        m++;
    }
    if (m == 0) {
        g->sizes[0] = 1;
        for (int k = 0; k < g->nops; k++) g->strides[k][0] = 0;
        m = 1;
    }
    g->ndim = m;
}

// ---- flat path ----------------------------------------------------------------------------

// Operands of a flat run: unit stride, or a broadcast scalar (bc[k]: memory p[k][0], or the
// constant cval[k] when p[k] is NULL).
struct EwFlat {
    void *p[EW_MAX_OPS];
    int bc[EW_MAX_OPS];
    float cval[EW_MAX_OPS];
    int64_t n;
    int vec; // every unit-stride pointer is 16-byte aligned
    float alpha, beta;
};

template <class T, int KIND, int OP, int WRT>
__global__ void __launch_bounds__(256) ew_flat_kernel(EwFlat f) {
    constexpr int NIN = kind_inputs(KIND);
    constexpr int W = 16 / sizeof(T);
    T *out = (T *)f.p[0];
    const T *in[3];
    float bv[3];
#pragma unroll
    for (int k = 0; k < 3; k++) {
        in[k] = (const T *)f.p[k + 1];
        bv[k] = 0.0f;
        if (k < NIN && f.bc[k + 1]) bv[k] = in[k] ? lt_to_f32(in[k][0]) : f.cval[k + 1];
    }
    int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t start = 0;
    if (f.vec) {
        int64_t nv = f.n / W;
        for (int64_t v = tid; v < nv; v += stride) {
            Pack<T> po, pi[3];
            if (KIND == K_AX) po = ((const Pack<T> *)out)[v];
#pragma unroll
            for (int k = 0; k < NIN; k++)
                if (!f.bc[k + 1]) pi[k] = ((const Pack<T> *)in[k])[v];
#pragma unroll
            for (int j = 0; j < W; j++) {
                float x[3];
#pragma unroll
                for (int k = 0; k < 3; k++)
                    x[k] = k < NIN ? (f.bc[k + 1] ? bv[k] : lt_to_f32(pi[k].v[j])) : 0.0f;
                float y = KIND == K_AX ? lt_to_f32(po.v[j]) : 0.0f;
                po.v[j] = lt_from_f32<T>(
                    ew_eval<KIND>(OP, WRT, y, x[0], x[1], x[2], f.alpha, f.beta));
            }
            ((Pack<T> *)out)[v] = po;
        }
        start = nv * W;
    }
    for (int64_t i = start + tid; i < f.n; i += stride) {
        float x[3];
#pragma unroll
        for (int k = 0; k < 3; k++)
            x[k] = k < NIN ? (f.bc[k + 1] ? bv[k] : lt_to_f32(in[k][i])) : 0.0f;
        float y = KIND == K_AX ? lt_to_f32(out[i]) : 0.0f;
        out[i] = lt_from_f32<T>(ew_eval<KIND>(OP, WRT, y, x[0], x[1], x[2], f.alpha, f.beta));
    }
}

template <int KIND> constexpr int kind_ops() {
    return (KIND == K_UF || KIND == K_UG) ? LT_UNARY_COUNT : KIND == K_AX ? 1 : LT_BINARY_COUNT;
}

// op (run time) -> OP (template), one instantiation per op of the kind.
template <class T, int KIND, int WRT, int OP = 0>
void flat_launch(int op, const EwFlat &f, unsigned blocks, cudaStream_t s) {
    if constexpr (OP < kind_ops<KIND>()) {
        if (op == OP)
            ew_flat_kernel<T, KIND, OP, WRT><<<blocks, 256, 0, s>>>(f);
        else
            flat_launch<T, KIND, WRT, OP + 1>(op, f, blocks, s);
    }
}

template <class T> void flat_by_kind(int kind, int op, int wrt, const EwFlat &f, unsigned blocks,
                                     cudaStream_t s) {
    switch (kind) {
    case K_UF: flat_launch<T, K_UF, 0>(op, f, blocks, s); break;
    case K_UG: flat_launch<T, K_UG, 0>(op, f, blocks, s); break;
    case K_BF: flat_launch<T, K_BF, 0>(op, f, blocks, s); break;
    case K_BG:
        if (wrt) flat_launch<T, K_BG, 1>(op, f, blocks, s);
        else flat_launch<T, K_BG, 0>(op, f, blocks, s);
        break;
    default: flat_launch<T, K_AX, 0>(0, f, blocks, s); break;
    }
}

// ---- general path -------------------------------------------------------------------------

template <int KIND, class I> __global__ void __launch_bounds__(256) ew_general_kernel(EwArgs a) {
    constexpr int NIN = kind_inputs(KIND);
    I n = 1;
    for (int d = 0; d < a.ndim; d++) n *= (I)a.sizes[d];
    I stride = (I)gridDim.x * blockDim.x;
    for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < n; i += stride) {
        int64_t off[EW_MAX_OPS] = {0, 0, 0, 0};
        I rem = i;
        for (int d = a.ndim - 1; d >= 0; d--) {
            I sz = (I)a.sizes[d];
            I idx = d == 0 ? rem : rem % sz;
            rem = d == 0 ? 0 : rem / sz;
#pragma unroll
            for (int k = 0; k < EW_MAX_OPS; k++) off[k] += (int64_t)idx * a.strides[k][d];
        }
        float x[3];
#pragma unroll
        for (int k = 0; k < 3; k++)
            x[k] = k < NIN ? (a.base[k + 1] ? ld_any(a.base[k + 1], a.dtype[k + 1], off[k + 1])
                                            : a.cval[k + 1])
                           : 0.0f;
        float y = KIND == K_AX ? ld_any(a.base[0], a.dtype[0], off[0]) : 0.0f;
        st_any(a.base[0], a.dtype[0], off[0],
               ew_eval<KIND>(a.op, a.wrt_b, y, x[0], x[1], x[2], a.alpha, a.beta));
    }
}

// ---- launcher -----------------------------------------------------------------------------

bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

// Run a simplified geometry. kind picks the formula; op/wrt_b/alpha/beta in g.
int ew_run(EwArgs *g, int kind, int device) {
    int64_t n = 1;
    for (int d = 0; d < g->ndim; d++) n *= g->sizes[d];
    if (n == 0) return LT_OK;
    LT_CUDA_CTX(c, device);
    int nin = kind_inputs(kind);
    g->nops = nin + 1;

    // flat: one dim, output and inputs unit stride or broadcast, one dtype
    bool flat = g->ndim == 1 && g->strides[0][0] == 1;
    int dt = g->dtype[0];
    for (int k = 1; flat && k <= nin; k++) {
        if (!g->base[k]) continue;
        flat = (g->strides[k][0] == 1 || g->strides[k][0] == 0) && g->dtype[k] == dt;
    }
    if (flat) {
        EwFlat f;
        memset(&f, 0, sizeof f);
        f.n = n;
        f.alpha = g->alpha;
        f.beta = g->beta;
        f.vec = 1;
        for (int k = 0; k <= nin; k++) {
            f.p[k] = g->base[k];
            f.cval[k] = g->cval[k];
            f.bc[k] = k > 0 && (!g->base[k] || g->strides[k][0] == 0);
            if (!f.bc[k] && !aligned16(g->base[k])) f.vec = 0;
        }
        int w = 16 / lt_dtype_size(dt);
        unsigned blocks = lt_blocks_for(f.vec ? (n + w - 1) / w : n, 256);
        LT_FLOAT_SWITCH(dt, T, { flat_by_kind<T>(kind, g->op, g->wrt_b, f, blocks, c->stream); });
        LT_CU_LAUNCH("ew_flat_kernel");
        return LT_OK;
    }
    // 32-bit index arithmetic when every index fits
    bool small = n < (int64_t)INT32_MAX;
    unsigned blocks = lt_blocks_for(n, 256);
    switch (kind) {
#define EW_GEN(K)                                                                          \
    case K:                                                                                \
        if (small) ew_general_kernel<K, uint32_t><<<blocks, 256, 0, c->stream>>>(*g);      \
        else ew_general_kernel<K, int64_t><<<blocks, 256, 0, c->stream>>>(*g);             \
        break;
        EW_GEN(K_UF)
        EW_GEN(K_UG)
        EW_GEN(K_BF)
        EW_GEN(K_BG)
        EW_GEN(K_AX)
#undef EW_GEN
    default: return LT_INTERNAL("elementwise: unknown kind %d", kind);
    }
    LT_CU_LAUNCH("ew_general_kernel");
    return LT_OK;
}

// ---- binary gradients -----------------------------------------------------------------------

// Elements of the f32 temporary of a broadcast gradient (64 MiB): dout is processed in slabs
// of at most this many, as the CPU does with its smaller slab.
const int64_t EW_GRAD_SLAB = (int64_t)1 << 24;

// dst (dout's shape, or fewer leading dims) = dout * d(a op b)/d(a or b).
int grad_map(lt_tensor *dst, const lt_tensor *dout, const lt_tensor *a, const lt_tensor *b, int op,
             int wrt_b) {
    if (lt_tensor_numel(dout) == 0) return LT_OK;
    EwArgs g;
    ew_init(&g, dout->ndim, dout->sizes);
    ew_operand(&g, dst);
    ew_operand(&g, dout);
    ew_operand(&g, a);
    ew_operand(&g, b);
    g.op = op;
    g.wrt_b = wrt_b;
    ew_simplify(&g);
    return ew_run(&g, K_BG, lt_device_of(dout));
}

// t narrowed to [i0, i0 + len) along dim d of an nd-dim broadcast shape (t right-aligned); a
// plain view where t has size 1 there or no such dim.
int narrow_aligned(lt_tensor *dst, const lt_tensor *t, int nd, int d, int64_t i0, int64_t len) {
    int j = d - (nd - t->ndim);
    if (j < 0 || t->sizes[j] == 1) return lt_tensor_share(dst, t);
    return lt_tensor_narrow(dst, t, j, i0, len);
}

// g (a's shape, or b's when wrt_b) = the gradient summed over the dims that operand was
// broadcast along (src/ops/elementwise.c, binary_grad_one, step for step).
int binary_grad_one(lt_tensor *g, const lt_tensor *dout, const lt_tensor *a, const lt_tensor *b,
                    int op, int wrt_b) {
    int nd = dout->ndim;
    int64_t n = lt_tensor_numel(dout);
    if (lt_tensor_numel(g) == n) return grad_map(g, dout, a, b, op, wrt_b);
    int64_t sizes[LT_MAX_DIMS], strides[LT_MAX_DIMS];
    int32_t dims[LT_MAX_DIMS];
    int nr = 0, lead = nd - g->ndim;
    for (int i = 0; i < nd; i++) {
        int j = i - lead;
        sizes[i] = j < 0 ? 1 : g->sizes[j];
        strides[i] = j < 0 ? 0 : g->strides[j];
        if (sizes[i] == 1 && dout->sizes[i] != 1) dims[nr++] = i;
    }
    lt_tensor gv = {};
    LT_TRY(lt_tensor_as_strided(&gv, g, nd, sizes, strides, g->offset));
    int st = LT_OK;
    if (op == LT_BINARY_ADD || op == LT_BINARY_SUB || n == 0) {
        st = lt_cuda_reduce_forward(&gv, dout, nr, dims, LT_REDUCE_SUM);
        if (st == LT_OK && op == LT_BINARY_SUB && wrt_b)
            st = lt_cuda_unary_forward(&gv, &gv, LT_UNARY_NEG);
        lt_tensor_release(&gv);
        return st;
    }
    int dev = lt_device_of(dout);
    int d = 0;
    while (dout->sizes[d] == 1) d++;
    int64_t rows = dout->sizes[d], inner = n / rows;
    int64_t S = EW_GRAD_SLAB / inner;
    if (S < 1) S = 1;
    if (S > rows) S = rows;
    int g_bcast = sizes[d] == 1;
    int64_t tsizes[LT_MAX_DIMS];
    for (int i = 0; i < nd; i++) tsizes[i] = i == d ? S : dout->sizes[i];
    lt_tensor tmp = {}, part = {};
    st = lt_tensor_empty(&tmp, LT_DTYPE_F32, nd, tsizes, LT_DEVICE_CUDA, dev);
    if (st == LT_OK && g_bcast && S < rows)
        st = lt_tensor_empty(&part, LT_DTYPE_F32, nd, sizes, LT_DEVICE_CUDA, dev);
    for (int64_t i0 = 0; st == LT_OK && i0 < rows; i0 += S) {
        int64_t s = rows - i0 < S ? rows - i0 : S;
        lt_tensor ds = {}, as = {}, bs = {}, ts = {}, gs = {};
        st = lt_tensor_narrow(&ds, dout, d, i0, s);
        if (st == LT_OK) st = narrow_aligned(&as, a, nd, d, i0, s);
        if (st == LT_OK) st = narrow_aligned(&bs, b, nd, d, i0, s);
        if (st == LT_OK) st = lt_tensor_narrow(&ts, &tmp, d, 0, s);
        if (st == LT_OK) st = grad_map(&ts, &ds, &as, &bs, op, wrt_b);
        if (st == LT_OK) {
            if (!g_bcast) {
                st = lt_tensor_narrow(&gs, &gv, d, i0, s);
                if (st == LT_OK) st = lt_cuda_reduce_forward(&gs, &ts, nr, dims, LT_REDUCE_SUM);
            } else if (i0 == 0) {
                st = lt_cuda_reduce_forward(&gv, &ts, nr, dims, LT_REDUCE_SUM);
            } else {
                st = lt_cuda_reduce_forward(&part, &ts, nr, dims, LT_REDUCE_SUM);
                if (st == LT_OK) st = lt_cuda_axpby(&gv, 1.0, &part, 1.0);
            }
        }
        lt_tensor_release(&ds);
        lt_tensor_release(&as);
        lt_tensor_release(&bs);
        lt_tensor_release(&ts);
        lt_tensor_release(&gs);
    }
    // the stream orders the kernels that still read tmp before any reuse of its memory
    lt_tensor_release(&tmp);
    lt_tensor_release(&part);
    lt_tensor_release(&gv);
    return st;
}

bool shares_storage(const lt_tensor *t, const lt_tensor *a, const lt_tensor *b,
                    const lt_tensor *c) {
    return t->storage == a->storage || t->storage == b->storage || t->storage == c->storage;
}

} // namespace

// ---- entry points (arguments checked by src/ops/elementwise.c) -------------------------------

extern "C" int lt_cuda_unary_forward(lt_tensor *out, const lt_tensor *x, int op) {
    if (lt_tensor_numel(x) == 0) return LT_OK;
    EwArgs g;
    ew_init(&g, out->ndim, out->sizes);
    ew_operand(&g, out);
    ew_operand(&g, x);
    g.op = op;
    ew_simplify(&g);
    return ew_run(&g, K_UF, lt_device_of(out));
}

extern "C" int lt_cuda_unary_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *x,
                                      int op) {
    if (lt_tensor_numel(x) == 0) return LT_OK;
    EwArgs g;
    ew_init(&g, dx->ndim, dx->sizes);
    ew_operand(&g, dx);
    ew_operand(&g, dout);
    ew_operand(&g, x);
    g.op = op;
    ew_simplify(&g);
    return ew_run(&g, K_UG, lt_device_of(dx));
}

extern "C" int lt_cuda_binary_forward(lt_tensor *out, const lt_tensor *a, const lt_tensor *b,
                                      int op) {
    if (lt_tensor_numel(out) == 0) return LT_OK;
    EwArgs g;
    ew_init(&g, out->ndim, out->sizes);
    ew_operand(&g, out);
    ew_operand(&g, a);
    ew_operand(&g, b);
    g.op = op;
    ew_simplify(&g);
    return ew_run(&g, K_BF, lt_device_of(out));
}

extern "C" int lt_cuda_binary_backward(lt_tensor *da, lt_tensor *db, const lt_tensor *dout,
                                       const lt_tensor *a, const lt_tensor *b, int op) {
    // a gradient written over an input must come last; when both are, da goes through a
    // temporary (the CPU's order)
    bool da_alias = da && shares_storage(da, dout, a, b);
    bool db_alias = db && shares_storage(db, dout, a, b);
    if (da && db && da_alias && db_alias) {
        lt_tensor tmp = {};
        int st = lt_tensor_empty(&tmp, da->dtype_id, a->ndim, a->sizes, LT_DEVICE_CUDA,
                                 lt_device_of(dout));
        if (st == LT_OK) st = binary_grad_one(&tmp, dout, a, b, op, 0);
        if (st == LT_OK) st = binary_grad_one(db, dout, a, b, op, 1);
        if (st == LT_OK) st = lt_cuda_copy(da, &tmp);
        lt_tensor_release(&tmp);
        return st;
    }
    if (da_alias) {
        if (db) LT_TRY(binary_grad_one(db, dout, a, b, op, 1));
        return binary_grad_one(da, dout, a, b, op, 0);
    }
    if (da) LT_TRY(binary_grad_one(da, dout, a, b, op, 0));
    if (db) LT_TRY(binary_grad_one(db, dout, a, b, op, 1));
    return LT_OK;
}

extern "C" int lt_cuda_scalar_forward(lt_tensor *out, const lt_tensor *x, double s, int op,
                                      int reversed) {
    if (lt_tensor_numel(x) == 0) return LT_OK;
    EwArgs g;
    ew_init(&g, out->ndim, out->sizes);
    ew_operand(&g, out);
    if (reversed) {
        ew_const(&g, (float)s);
        ew_operand(&g, x);
    } else {
        ew_operand(&g, x);
        ew_const(&g, (float)s);
    }
    g.op = op;
    ew_simplify(&g);
    return ew_run(&g, K_BF, lt_device_of(out));
}

extern "C" int lt_cuda_scalar_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *x,
                                       double s, int op, int reversed) {
    if (lt_tensor_numel(x) == 0) return LT_OK;
    EwArgs g;
    ew_init(&g, dx->ndim, dx->sizes);
    ew_operand(&g, dx);
    ew_operand(&g, dout);
    if (reversed) {
        ew_const(&g, (float)s);
        ew_operand(&g, x);
    } else {
        ew_operand(&g, x);
        ew_const(&g, (float)s);
    }
    g.op = op;
    g.wrt_b = reversed ? 1 : 0;
    ew_simplify(&g);
    return ew_run(&g, K_BG, lt_device_of(dx));
}

extern "C" int lt_cuda_axpby(lt_tensor *y, double alpha, const lt_tensor *x, double beta) {
    if (lt_tensor_numel(y) == 0) return LT_OK;
    EwArgs g;
    ew_init(&g, y->ndim, y->sizes);
    ew_operand(&g, y);
    ew_operand(&g, x);
    g.alpha = (float)alpha;
    g.beta = (float)beta;
    ew_simplify(&g);
    return ew_run(&g, K_AX, lt_device_of(y));
}
