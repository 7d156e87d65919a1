// attention.cu - softmax attention on the GPU, forward and backward, in the
// FlashAttention-2 manner: exact attention computed tile by tile with an online softmax,
// so nothing of size T x S is ever stored.
//
// Contract: src/lt_ops.h (lt_attention_forward / lt_attention_backward), with the same
// semantics as the CPU op in src/ops/attention.c:
//   q, out, dout, dq (B, T, H, D); k, v, dk, dv (B, S, Hkv, D); unit stride in D, any other
//   strides; query head h reads key/value head h / (H / Hkv) (GQA / MQA: K and V are
//   indexed, never copied). lse (B, H, T) f32 contiguous. cu_seqlens: NULL, or (n + 1)
//   increasing i32 offsets of packed sequences over the B * T positions (S == T), each
//   inside one batch row; a sequence attends only to itself. Causal is bottom-right
//   aligned: query i of a segment of nq queries over nk keys sees keys j <= i + (nk - nq);
//   a query that sees no key gets a zero output and lse -inf. dq, dk, dv are overwritten.
//   Dtypes on CUDA: q, k, v, out (and dout, dq, dk, dv) all f32, all bf16 or all f16, as on
//   the CPU (which computes bf16/f16 through f32 twins, src/ops/lowp.h). Arithmetic is f32
//   whatever the dtype.
//
// Paths.
//  * Tensor cores (bf16 / f16, D = 64 or 128): mma.sync m16n8k16 with f32 accumulation on
//    tiles staged in shared memory by cp.async (16-byte copies when every row is 16-byte
//    aligned, element copies otherwise), fragments read with ldmatrix.
//  * SIMT (f32 for every D, and bf16 / f16 for the other head dims up to 256): the same
//    tiling and online softmax in f32 FMAs, one key per lane for scores and one head-dim
//    slice per lane for the products. Its f32 results stay within 1e-5 of the CPU op's.
//  Head dims above 256 are refused.
//
// Work items. A segment is a batch row (no cu_seqlens) or one packed sequence; blocks never
// cross segments, so samples never attend to each other. grid.x runs over (segment, tile)
// with tiles per segment set by the longest segment (blocks past a shorter segment's end
// return at once); grid.y over heads.
//
// Forward (fa_fwd): a CTA owns BR = 16 * MT * NW query rows of one head; each warp owns
// MT m16 row tiles, keeps its rows' running max m and partial sums l in registers, and
// walks the key tiles (BC keys, double-buffered K and V) the block's last row can see:
// S = Q K^T (f32), masked only on tiles that cross the causal diagonal or the segment's
// end, P = exp2(S * scale * log2 e - m) (the scale folded into the exponent's base-2
// factor), O = O * exp2(m_old - m_new) + P V with P rounded to bf16 / f16 as the A operand.
// At the end O / l is written and lse = m * scale + log(l).
//
// Backward, FA2 style: fa_bwd_delta computes Delta = rowsum(dO * O) (B, H, T) (and zeroes
// the f32 dQ accumulator). fa_bwd_dkdv: a CTA owns BC = 16 * NW keys of one key/value head
// (each warp 16 key rows) and walks every query block of every query head of its group
// that sees them (Q, dO, lse, Delta double-buffered): S^T = K Q^T, P^T = exp2(S^T scale
// log2 e - lse log2 e), dP^T = V dO^T, dS^T = P^T (dP^T - Delta), dV += P^T dO,
// dK += dS^T Q; dK and dV stay in registers and are written once (scaled), so the group's
// heads are summed without races. dQ = scale dS K:
//   default: the same CTA writes dS^T to shared memory and adds its dQ tile into an f32
//   (B, T, H, D) accumulator with atomics; fa_dq_convert casts it to dq's dtype.
//   deterministic (lt_cuda_attention_set_deterministic): fa_bwd_dq, a CTA per query block
//   walking the key blocks in order (recomputing S and dP), writes dq directly.
// When a group's heads would leave the GPU underfilled (few key blocks times few kv
// heads), fa_bwd_dkdv runs one CTA per query head instead and writes f32 per-head partials
// that fa_dkdv_reduce sums over the group in a fixed order (still race-free, still
// deterministic).
//
// Shared memory rows of D elements are padded by 8 elements (16 bytes): the 8 row
// addresses of an ldmatrix then fall in 8 different 16-byte bank groups, and cp.async
// destinations stay 16-byte aligned.
//
// Tile sizes (the tables in pick_fwd / pick_bwd / pick_dq) are chosen per architecture by
// shared memory and register budget; none is measured yet: to be measured on the H100.
// The compiler's resource report for each kernel is quoted next to its choice.

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#include "common.cuh"
#include "core/cuda_api/attention.h"

namespace {

constexpr float LOG2E = 1.4426950408889634f;

// Everything a kernel needs, passed by value (one struct for every kernel).
struct attn_params {
    const void *q, *k, *v; // (B, T, H, D), (B, S, Hkv, D) x 2
    const void *o, *dout;  // backward: the forward's output and its gradient (B, T, H, D)
    void *out;             // forward output (B, T, H, D)
    void *dq, *dk, *dv;    // backward outputs
    float *lse;            // (B, H, T): written by the forward (may be NULL), read by the backward
    float *delta;          // (B, H, T): rowsum(dO * O)
    float *dq_acc;         // (B, T, H, D) f32, contiguous: dQ (already scaled), atomic path
    float *dk_part, *dv_part; // (B, S, H, D) f32, contiguous: per-query-head dK, dV (split)
    const int32_t *cu;     // (nseg + 1) device offsets, or NULL: one segment per batch row
    int64_t qs[3], ks[3], vs[3], os[3], dos[3], outs[3], dqs[3], dks[3], dvs[3]; // strides of
                                                    // dims 0..2 (B, T|S, H|Hkv), in elements
    int B, T, S, H, Hkv, group, D;
    int nseg;              // number of segments
    int nblk;              // tiles per segment along grid.x (set per launch)
    float scale, scale_log2; // softmax scale; scale * log2(e)
    int causal;
    int vec_in, vec_out;   // 16-byte global loads / stores are aligned
    int atomic_dq;         // fa_bwd_dkdv also accumulates dQ into dq_acc
    int split_heads;       // fa_bwd_dkdv: grid.y runs over query heads, writing *_part
};

// A run of nq queries starting at position q0 of batch row b, over nk keys from k0.
struct seg_t {
    int b, q0, nq, k0, nk;
};

__device__ __forceinline__ seg_t seg_of(const attn_params &p, int s) {
    seg_t g;
    if (p.cu) {
        int c0 = p.cu[s], c1 = p.cu[s + 1];
        g.b = c0 / p.T;
        g.q0 = c0 - g.b * p.T;
        g.nq = c1 - c0;
        g.k0 = g.q0;
        g.nk = g.nq;
    } else {
        g.b = s;
        g.q0 = 0;
        g.nq = p.T;
        g.k0 = 0;
        g.nk = p.S;
    }
    return g;
}

// Keys [0, n) of the segment that query i (segment-relative) sees.
__device__ __forceinline__ int keys_seen(int causal, const seg_t &g, int i) {
    if (!causal) return g.nk;
    long long n = (long long)i + g.nk - g.nq + 1;
    return n < 0 ? 0 : (n > g.nk ? g.nk : (int)n);
}

// ---- PTX wrappers -----------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_u32(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(smem)), "l"(gmem));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8x8 b16 matrices; lanes 8m..8m+7 give the row addresses of matrix m, register m
// receives matrix m (thread l: row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// The same, each matrix transposed (thread l: rows 2 (l % 4) and 2 (l % 4) + 1 of column l / 4).
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// D (16x8 f32) += A (16x16, row-major fragments) B (16x8, column fragments).
template <class T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1);

template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4],
                                                        uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4],
                                                 uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as one register of two 16-bit values, lo in the low half.
template <class T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);

template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t r;
    memcpy(&r, &v, 4);
    return r;
}

template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    uint32_t r;
    memcpy(&r, &v, 4);
    return r;
}

// 2^x; ex2.approx is within 2 ulp, below what bf16 / f16 operands can show; 2^-inf = 0.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// ---- tiles between global and shared memory ---------------------------------------------------

// Rows [0, ROWS) of a tile into shared memory (row stride D + 8): rows below `valid` from
// global (row stride `stride`), the others zero (masked keys then multiply zeros, never
// stale data that could be inf or NaN).
template <class T, int D, int ROWS, int NT>
__device__ __forceinline__ void load_tile(T *s, const T *g, int64_t stride, int valid, int vec) {
    constexpr int LD = D + 8, CPR = D / 8;
    for (int c = threadIdx.x; c < ROWS * CPR; c += NT) {
        int r = c / CPR, cc = (c % CPR) * 8;
        T *dst = s + r * LD + cc;
        if (r < valid) {
            const T *src = g + r * stride + cc;
            if (vec) {
                cp_async16(dst, src);
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++) dst[e] = src[e];
            }
        } else {
            *(uint4 *)dst = make_uint4(0, 0, 0, 0);
        }
    }
}

// Rows [0, valid) of a shared tile (row stride D + 8) out to global memory.
template <class T, int D, int NT>
__device__ __forceinline__ void store_tile(T *g, int64_t stride, const T *s, int valid, int vec) {
    constexpr int LD = D + 8, CPR = D / 8;
    for (int c = threadIdx.x; c < valid * CPR; c += NT) {
        int r = c / CPR, cc = (c % CPR) * 8;
        const T *src = s + r * LD + cc;
        T *dst = g + r * stride + cc;
        if (vec) {
            *(uint4 *)dst = *(const uint4 *)src;
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) dst[e] = src[e];
        }
    }
}

template <class T> __device__ __forceinline__ const T *at(const void *base, const int64_t (&st)[3],
                                                          int64_t i0, int64_t i1, int64_t i2) {
    return (const T *)base + i0 * st[0] + i1 * st[1] + i2 * st[2];
}

template <class T> __device__ __forceinline__ T *at_mut(void *base, const int64_t (&st)[3],
                                                        int64_t i0, int64_t i1, int64_t i2) {
    return (T *)base + i0 * st[0] + i1 * st[1] + i2 * st[2];
}

// ---- forward (tensor cores) -------------------------------------------------------------------

template <int D, int BC, int NW, int MT, int ST> constexpr size_t fwd_smem() {
    return (size_t)(16 * MT * NW + 2 * ST * BC) * (D + 8) * 2; // Q, then ST stages of K and V
}

// ST-stage pipeline: tile jt + ST - 1 is copied while tile jt is computed on.
template <class T, int D, int BC, int NW, int MT, int ST>
__global__ void __launch_bounds__(NW * 32) fa_fwd(const attn_params p) {
    constexpr int BR = 16 * MT * NW, LD = D + 8, NT = NW * 32;
    static_assert(D % 16 == 0 && BC % 16 == 0 && ST >= 2, "whole mma tiles, two stages at least");
    extern __shared__ __align__(16) unsigned char smem[];
    T *sQ = (T *)smem;
    T *sK = sQ + BR * LD; // [ST][BC][LD]
    T *sV = sK + ST * BC * LD;

    const int seg = blockIdx.x / p.nblk;
    // heavier (later, under a causal mask) query blocks of a segment start first
    const int qb = p.nblk - 1 - (int)(blockIdx.x % p.nblk);
    const seg_t g = seg_of(p, seg);
    const int i0 = qb * BR;
    if (i0 >= g.nq) return;
    const int h = blockIdx.y, hkv = h / p.group;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;

    const T *qg = at<T>(p.q, p.qs, g.b, g.q0 + i0, h);
    const T *kg = at<T>(p.k, p.ks, g.b, g.k0, hkv);
    const T *vg = at<T>(p.v, p.vs, g.b, g.k0, hkv);
    const int nrows = min(BR, g.nq - i0);
    const int lim = keys_seen(p.causal, g, i0 + nrows - 1); // keys the block's last row sees
    const int n_first = keys_seen(p.causal, g, i0);         // keys every row of the block sees
    const int ntiles = (lim + BC - 1) / BC;
    // keys [0, lim) only: the rest are zero-filled (and masked)
    auto load_kv = [&](int jt) {
        const int j = jt * BC, sb = jt % ST;
        load_tile<T, D, BC, NT>(sK + sb * BC * LD, kg + j * p.ks[1], p.ks[1], min(BC, lim - j),
                                p.vec_in);
        load_tile<T, D, BC, NT>(sV + sb * BC * LD, vg + j * p.vs[1], p.vs[1], min(BC, lim - j),
                                p.vec_in);
    };

    load_tile<T, D, BR, NT>(sQ, qg, p.qs[1], nrows, p.vec_in);
#pragma unroll
    for (int s0 = 0; s0 < ST - 1; s0++) {
        if (s0 < ntiles) load_kv(s0);
        cp_async_commit(); // one group per stage, empty or not, so the waits count right
    }

    float o[MT][D / 8][4], m[MT][2], l[MT][2];
    int seen[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[mt][dt][e] = 0.0f;
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            m[mt][hf] = -INFINITY;
            l[mt][hf] = 0.0f;
            seen[mt][hf] = keys_seen(p.causal, g, i0 + (warp * MT + mt) * 16 + gq + 8 * hf);
        }
    }

    for (int jt = 0; jt < ntiles; jt++) {
        const int j0 = jt * BC;
        cp_async_wait<ST - 2>(); // tile jt (and Q) arrived
        __syncthreads();         // ... for every thread; and tile jt - 1 is no longer read
        if (jt + ST - 1 < ntiles) load_kv(jt + ST - 1);
        cp_async_commit();
        const T *Kb = sK + (jt % ST) * BC * LD, *Vb = sV + (jt % ST) * BC * LD;

        float s[MT][BC / 8][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < BC / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[mt][nt][e] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++) {
            uint32_t qa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
                ldsm_x4(qa[mt], sQ + ((warp * MT + mt) * 16 + (lane & 15)) * LD + ks * 16 +
                                    (lane >> 4) * 8);
#pragma unroll
            for (int np = 0; np < BC / 16; np++) {
                uint32_t kb[4];
                ldsm_x4(kb, Kb + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + ks * 16 +
                                ((lane >> 3) & 1) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma16816<T>(s[mt][2 * np], qa[mt], kb[0], kb[1]);
                    mma16816<T>(s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
                }
            }
        }

        // only tiles reaching past what the block's first row sees hold masked keys
        if (j0 + BC > n_first) {
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int nt = 0; nt < BC / 8; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        if (j0 + nt * 8 + 2 * tq + (e & 1) >= seen[mt][e >> 1])
                            s[mt][nt][e] = -INFINITY;
        }

        // online softmax; a row's 8 x BC/8 scores are spread over the 4 threads of a quad
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                float mx = m[mt][hf];
#pragma unroll
                for (int nt = 0; nt < BC / 8; nt++)
                    mx = fmaxf(mx, fmaxf(s[mt][nt][2 * hf], s[mt][nt][2 * hf + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                // a row with no visible key so far keeps max -inf: use 0 as the base so
                // exp2(-inf - base) is 0, not NaN
                const float base = mx == -INFINITY ? 0.0f : mx * p.scale_log2;
                const float alpha = fast_exp2(m[mt][hf] * p.scale_log2 - base);
                m[mt][hf] = mx;
                float sum = 0.0f;
#pragma unroll
                for (int nt = 0; nt < BC / 8; nt++)
#pragma unroll
                    for (int e = 2 * hf; e < 2 * hf + 2; e++) {
                        float pv = fast_exp2(fmaf(s[mt][nt][e], p.scale_log2, -base));
                        s[mt][nt][e] = pv;
                        sum += pv;
                    }
                // partial sums stay per thread; the quad adds them once at the end
                l[mt][hf] = l[mt][hf] * alpha + sum;
#pragma unroll
                for (int dt = 0; dt < D / 8; dt++) {
                    o[mt][dt][2 * hf] *= alpha;
                    o[mt][dt][2 * hf + 1] *= alpha;
                }
            }
        }

        // O += P V: the score accumulators are the A fragments of P (rows, keys)
#pragma unroll
        for (int kk = 0; kk < BC / 16; kk++) {
            uint32_t pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                pa[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                pa[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                pa[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                pa[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                uint32_t vb[4];
                ldsm_x4_t(vb, Vb + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD +
                                  dp * 16 + (lane >> 4) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma16816<T>(o[mt][2 * dp], pa[mt], vb[0], vb[1]);
                    mma16816<T>(o[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
                }
            }
        }
    }

    cp_async_wait<0>(); // with no key tile, the Q copy may still be in flight
    __syncthreads();    // every warp is done with its ldmatrix reads of sQ
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            float L = l[mt][hf];
            L += __shfl_xor_sync(0xffffffffu, L, 1);
            L += __shfl_xor_sync(0xffffffffu, L, 2);
            const float inv = L > 0.0f ? 1.0f / L : 0.0f;
#pragma unroll
            for (int dt = 0; dt < D / 8; dt++) {
                o[mt][dt][2 * hf] *= inv;
                o[mt][dt][2 * hf + 1] *= inv;
            }
            const int i = i0 + (warp * MT + mt) * 16 + gq + 8 * hf;
            if (p.lse && tq == 0 && i < g.nq)
                p.lse[((int64_t)g.b * p.H + h) * p.T + g.q0 + i] =
                    L > 0.0f ? m[mt][hf] * p.scale + logf(L) : -INFINITY;
        }
        // stage the rows in the Q tile (no longer read) for 16-byte stores
        const int r = (warp * MT + mt) * 16 + gq;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
            *(uint32_t *)(sQ + r * LD + dt * 8 + 2 * tq) = pack2<T>(o[mt][dt][0], o[mt][dt][1]);
            *(uint32_t *)(sQ + (r + 8) * LD + dt * 8 + 2 * tq) =
                pack2<T>(o[mt][dt][2], o[mt][dt][3]);
        }
    }
    __syncthreads();
    store_tile<T, D, NT>(at_mut<T>(p.out, p.outs, g.b, g.q0 + i0, h), p.outs[1], sQ, nrows,
                         p.vec_out);
}

// ---- backward: Delta = rowsum(dO * O) ---------------------------------------------------------

// One warp per (b, t, h) row; also zeroes the row of the f32 dQ accumulator when there is one.
template <class T> __global__ void fa_bwd_delta(const attn_params p) {
    const int64_t rows = (int64_t)p.B * p.T * p.H;
    const int lane = threadIdx.x & 31;
    for (int64_t r = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; r < rows;
         r += ((int64_t)gridDim.x * blockDim.x) >> 5) {
        const int h = (int)(r % p.H);
        const int64_t bt = r / p.H;
        const int t = (int)(bt % p.T), b = (int)(bt / p.T);
        const T *o = at<T>(p.o, p.os, b, t, h), *d = at<T>(p.dout, p.dos, b, t, h);
        float acc = 0.0f;
        for (int c = lane; c < p.D; c += 32) acc += lt_to_f32(o[c]) * lt_to_f32(d[c]);
        acc = lt_warp_sum(acc);
        if (lane == 0) p.delta[((int64_t)b * p.H + h) * p.T + t] = acc;
        if (p.dq_acc)
            for (int c = lane; c < p.D; c += 32) p.dq_acc[r * p.D + c] = 0.0f;
    }
}

// dq = the f32 accumulator (B, T, H, D), cast to dq's dtype and strides.
template <class T> __global__ void fa_dq_convert(const attn_params p) {
    const int64_t n = (int64_t)p.B * p.T * p.H * p.D;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int c = (int)(i % p.D);
        const int64_t r = i / p.D;
        const int h = (int)(r % p.H);
        const int64_t bt = r / p.H;
        at_mut<T>(p.dq, p.dqs, bt / p.T, bt % p.T, h)[c] = lt_from_f32<T>(p.dq_acc[i]);
    }
}

// dk, dv = the per-query-head partials (B, S, H, D) summed over each group, heads in order.
template <class T> __global__ void fa_dkdv_reduce(const attn_params p) {
    const int64_t n = (int64_t)p.B * p.S * p.Hkv * p.D;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int c = (int)(i % p.D);
        const int64_t r = i / p.D;
        const int hk = (int)(r % p.Hkv);
        const int64_t bs = r / p.Hkv;
        const float *pk = p.dk_part + (bs * p.H + (int64_t)hk * p.group) * p.D + c;
        const float *pv = p.dv_part + (bs * p.H + (int64_t)hk * p.group) * p.D + c;
        float sk = 0.0f, sv = 0.0f;
        for (int j = 0; j < p.group; j++) {
            sk += pk[(int64_t)j * p.D];
            sv += pv[(int64_t)j * p.D];
        }
        at_mut<T>(p.dk, p.dks, bs / p.S, bs % p.S, hk)[c] = lt_from_f32<T>(sk);
        at_mut<T>(p.dv, p.dvs, bs / p.S, bs % p.S, hk)[c] = lt_from_f32<T>(sv);
    }
}

// ---- backward: dK, dV (and atomically dQ) ----------------------------------------------------

template <int D, int BR, int NW> constexpr size_t bwd_smem() {
    return (size_t)(2 * 16 * NW + 4 * BR) * (D + 8) * 2 // K, V; Q, dO double-buffered
           + (size_t)16 * NW * (BR + 8) * 2             // dS^T
           + (size_t)4 * BR * 4;                        // lse, Delta double-buffered
}

template <class T, int D, int BR, int NW>
__global__ void __launch_bounds__(NW * 32, 1) fa_bwd_dkdv(const attn_params p) {
    constexpr int BC = 16 * NW, LD = D + 8, LDS = BR + 8, NT = NW * 32;
    constexpr int MTQ = BR / 16, WPM = NW / MTQ, DW = D / WPM; // the dQ tile's warp split
    static_assert(D % 16 == 0 && BR % 16 == 0, "whole mma tiles");
    static_assert(NW % MTQ == 0 && DW % 16 == 0, "each warp owns one m16 slice of dQ");
    extern __shared__ __align__(16) unsigned char smem[];
    T *sK = (T *)smem;
    T *sV = sK + BC * LD;
    T *sQ = sV + BC * LD;     // [2][BR][LD]
    T *sdO = sQ + 2 * BR * LD; // [2][BR][LD]
    T *sdS = sdO + 2 * BR * LD; // [BC][LDS], dS^T
    float *sL = (float *)(sdS + BC * LDS); // [2][BR] lse * log2 e
    float *sDt = sL + 2 * BR;              // [2][BR] Delta

    const int seg = blockIdx.x / p.nblk, kb = blockIdx.x % p.nblk;
    const seg_t g = seg_of(p, seg);
    const int j0 = kb * BC;
    if (j0 >= g.nk) return;
    int hkv, h_first, nh;
    if (p.split_heads) {
        h_first = blockIdx.y;
        hkv = h_first / p.group;
        nh = 1;
    } else {
        hkv = blockIdx.y;
        h_first = hkv * p.group;
        nh = p.group;
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
    const int kvalid = min(BC, g.nk - j0);
    const int shift = g.nk - g.nq; // query i sees key j when j <= i + shift (causal)
    // the first query that sees key j0, and the query blocks from its block on
    long long ifirst = p.causal ? (long long)j0 - shift : 0;
    if (ifirst < 0) ifirst = 0;
    const int qb0 = ifirst < g.nq ? (int)(ifirst / BR) : 0;
    const int nqb = ifirst < g.nq ? (g.nq + BR - 1) / BR - qb0 : 0;
    const int nitems = nh * nqb;

    load_tile<T, D, BC, NT>(sK, at<T>(p.k, p.ks, g.b, g.k0 + j0, hkv), p.ks[1], kvalid, p.vec_in);
    load_tile<T, D, BC, NT>(sV, at<T>(p.v, p.vs, g.b, g.k0 + j0, hkv), p.vs[1], kvalid, p.vec_in);

    // queue the copies of item it (query head, query block) into buffer it & 1
    auto load_item = [&](int it) {
        const int h = h_first + it / nqb, i0 = (qb0 + it % nqb) * BR, buf = it & 1;
        const int valid = min(BR, g.nq - i0);
        load_tile<T, D, BR, NT>(sQ + buf * BR * LD, at<T>(p.q, p.qs, g.b, g.q0 + i0, h), p.qs[1],
                                valid, p.vec_in);
        load_tile<T, D, BR, NT>(sdO + buf * BR * LD, at<T>(p.dout, p.dos, g.b, g.q0 + i0, h),
                                p.dos[1], valid, p.vec_in);
        const int64_t lrow = ((int64_t)g.b * p.H + h) * p.T + g.q0 + i0;
        for (int r = threadIdx.x; r < BR; r += NT) {
            sL[buf * BR + r] = r < valid ? p.lse[lrow + r] * LOG2E : 0.0f;
            sDt[buf * BR + r] = r < valid ? p.delta[lrow + r] : 0.0f;
        }
    };
    if (nitems > 0) load_item(0);
    cp_async_commit();

    float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[dt][e] = dv[dt][e] = 0.0f;
    const int kr0 = j0 + warp * 16 + gq; // this thread's key rows kr0, kr0 + 8

    for (int it = 0; it < nitems; it++) {
        const int buf = it & 1;
        const int h = h_first + it / nqb, i0 = (qb0 + it % nqb) * BR;
        if (it + 1 < nitems) {
            load_item(it + 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const T *Qb = sQ + buf * BR * LD, *dOb = sdO + buf * BR * LD;
        const float *Lb = sL + buf * BR, *Db = sDt + buf * BR;

        // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys (rows) x BR queries
        float st[BR / 8][4], dpt[BR / 8][4];
#pragma unroll
        for (int nt = 0; nt < BR / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) st[nt][e] = dpt[nt][e] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++) {
            uint32_t ka[4], va[4];
            ldsm_x4(ka, sK + (warp * 16 + (lane & 15)) * LD + ks * 16 + (lane >> 4) * 8);
            ldsm_x4(va, sV + (warp * 16 + (lane & 15)) * LD + ks * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int np = 0; np < BR / 16; np++) {
                const int off = (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + ks * 16 +
                                ((lane >> 3) & 1) * 8;
                uint32_t qf[4], df[4];
                ldsm_x4(qf, Qb + off);
                ldsm_x4(df, dOb + off);
                mma16816<T>(st[2 * np], ka, qf[0], qf[1]);
                mma16816<T>(st[2 * np + 1], ka, qf[2], qf[3]);
                mma16816<T>(dpt[2 * np], va, df[0], df[1]);
                mma16816<T>(dpt[2 * np + 1], va, df[2], df[3]);
            }
        }

        // P^T and dS^T; masked (and padding) entries are exactly 0, selected, never computed
        // from a -inf lse
        const bool need_mask = i0 + BR > g.nq || j0 + BC > g.nk ||
                               (p.causal && (long long)j0 + BC - 1 > (long long)i0 + shift);
#pragma unroll
        for (int nt = 0; nt < BR / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int ql = nt * 8 + 2 * tq + (e & 1), qi = i0 + ql;
                const int kr = kr0 + (e >> 1) * 8;
                const bool vis = !need_mask || (qi < g.nq && kr < g.nk &&
                                                (!p.causal || (long long)kr <= (long long)qi + shift));
                const float pv = fast_exp2(fmaf(st[nt][e], p.scale_log2, -Lb[ql]));
                st[nt][e] = vis ? pv : 0.0f;
                dpt[nt][e] = vis ? pv * (dpt[nt][e] - Db[ql]) : 0.0f;
            }

        // dV += P^T dO and dK += dS^T Q (rows: keys; k: queries)
#pragma unroll
        for (int kq = 0; kq < BR / 16; kq++) {
            uint32_t pa[4], da[4];
            pa[0] = pack2<T>(st[2 * kq][0], st[2 * kq][1]);
            pa[1] = pack2<T>(st[2 * kq][2], st[2 * kq][3]);
            pa[2] = pack2<T>(st[2 * kq + 1][0], st[2 * kq + 1][1]);
            pa[3] = pack2<T>(st[2 * kq + 1][2], st[2 * kq + 1][3]);
            da[0] = pack2<T>(dpt[2 * kq][0], dpt[2 * kq][1]);
            da[1] = pack2<T>(dpt[2 * kq][2], dpt[2 * kq][3]);
            da[2] = pack2<T>(dpt[2 * kq + 1][0], dpt[2 * kq + 1][1]);
            da[3] = pack2<T>(dpt[2 * kq + 1][2], dpt[2 * kq + 1][3]);
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                const int off = (kq * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dp * 16 +
                                (lane >> 4) * 8;
                uint32_t ob[4], qf[4];
                ldsm_x4_t(ob, dOb + off);
                ldsm_x4_t(qf, Qb + off);
                mma16816<T>(dv[2 * dp], pa, ob[0], ob[1]);
                mma16816<T>(dv[2 * dp + 1], pa, ob[2], ob[3]);
                mma16816<T>(dk[2 * dp], da, qf[0], qf[1]);
                mma16816<T>(dk[2 * dp + 1], da, qf[2], qf[3]);
            }
        }

        if (p.atomic_dq) {
            // dS^T (keys x queries) to shared memory, then dQ (BR x D) = dS K, each warp one
            // m16 row slice and DW columns, added into the f32 accumulator
#pragma unroll
            for (int nt = 0; nt < BR / 8; nt++) {
                const int r = warp * 16 + gq, c = nt * 8 + 2 * tq;
                *(uint32_t *)(sdS + r * LDS + c) = pack2<T>(dpt[nt][0], dpt[nt][1]);
                *(uint32_t *)(sdS + (r + 8) * LDS + c) = pack2<T>(dpt[nt][2], dpt[nt][3]);
            }
            __syncthreads();
            const int mq = warp % MTQ, c0 = (warp / MTQ) * DW;
            float dqa[DW / 8][4];
#pragma unroll
            for (int dt = 0; dt < DW / 8; dt++)
#pragma unroll
                for (int e = 0; e < 4; e++) dqa[dt][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++) {
                uint32_t a[4];
                ldsm_x4_t(a, sdS + (kk * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDS + mq * 16 +
                                 ((lane >> 3) & 1) * 8);
#pragma unroll
                for (int dp = 0; dp < DW / 16; dp++) {
                    uint32_t b[4];
                    ldsm_x4_t(b, sK + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + c0 +
                                     dp * 16 + (lane >> 4) * 8);
                    mma16816<T>(dqa[2 * dp], a, b[0], b[1]);
                    mma16816<T>(dqa[2 * dp + 1], a, b[2], b[3]);
                }
            }
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                const int qi = i0 + mq * 16 + gq + 8 * hf;
                if (qi < g.nq) {
                    float *row = p.dq_acc +
                                 (((int64_t)g.b * p.T + g.q0 + qi) * p.H + h) * D + c0 + 2 * tq;
#pragma unroll
                    for (int dt = 0; dt < DW / 8; dt++) {
                        atomicAdd(row + dt * 8, dqa[dt][2 * hf] * p.scale);
                        atomicAdd(row + dt * 8 + 1, dqa[dt][2 * hf + 1] * p.scale);
                    }
                }
            }
        }
        __syncthreads(); // buffer buf and dS^T are rewritten next
    }

    cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[dt][e] *= p.scale;

    if (p.split_heads) {
        // f32 partial of this query head, straight from registers
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int kr = kr0 + 8 * hf;
            if (kr < g.nk) {
                const int64_t row = (((int64_t)g.b * p.S + g.k0 + kr) * p.H + h_first) * D;
#pragma unroll
                for (int dt = 0; dt < D / 8; dt++) {
                    const int c = dt * 8 + 2 * tq;
                    *(float2 *)(p.dk_part + row + c) = make_float2(dk[dt][2 * hf], dk[dt][2 * hf + 1]);
                    *(float2 *)(p.dv_part + row + c) = make_float2(dv[dt][2 * hf], dv[dt][2 * hf + 1]);
                }
            }
        }
        return;
    }
    const int r = warp * 16 + gq;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
        const int c = dt * 8 + 2 * tq;
        *(uint32_t *)(sK + r * LD + c) = pack2<T>(dk[dt][0], dk[dt][1]);
        *(uint32_t *)(sK + (r + 8) * LD + c) = pack2<T>(dk[dt][2], dk[dt][3]);
        *(uint32_t *)(sV + r * LD + c) = pack2<T>(dv[dt][0], dv[dt][1]);
        *(uint32_t *)(sV + (r + 8) * LD + c) = pack2<T>(dv[dt][2], dv[dt][3]);
    }
    __syncthreads();
    store_tile<T, D, NT>(at_mut<T>(p.dk, p.dks, g.b, g.k0 + j0, hkv), p.dks[1], sK, kvalid,
                         p.vec_out);
    store_tile<T, D, NT>(at_mut<T>(p.dv, p.dvs, g.b, g.k0 + j0, hkv), p.dvs[1], sV, kvalid,
                         p.vec_out);
}

// ---- backward: deterministic dQ ----------------------------------------------------------------

template <int D, int BC, int NW> constexpr size_t dq_smem() {
    return (size_t)(2 * 16 * NW + 4 * BC) * (D + 8) * 2; // Q, dO; K, V double-buffered
}

template <class T, int D, int BC, int NW>
__global__ void __launch_bounds__(NW * 32) fa_bwd_dq(const attn_params p) {
    constexpr int BR = 16 * NW, LD = D + 8, NT = NW * 32;
    static_assert(D % 16 == 0 && BC % 16 == 0, "whole mma tiles");
    extern __shared__ __align__(16) unsigned char smem[];
    T *sQ = (T *)smem;
    T *sdO = sQ + BR * LD;
    T *sK = sdO + BR * LD; // [2][BC][LD]
    T *sV = sK + 2 * BC * LD;

    const int seg = blockIdx.x / p.nblk, qb = p.nblk - 1 - (int)(blockIdx.x % p.nblk);
    const seg_t g = seg_of(p, seg);
    const int i0 = qb * BR;
    if (i0 >= g.nq) return;
    const int h = blockIdx.y, hkv = h / p.group;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
    const T *kg = at<T>(p.k, p.ks, g.b, g.k0, hkv);
    const T *vg = at<T>(p.v, p.vs, g.b, g.k0, hkv);
    const int nrows = min(BR, g.nq - i0);
    const int lim = keys_seen(p.causal, g, i0 + nrows - 1);
    const int n_first = keys_seen(p.causal, g, i0);
    const int ntiles = (lim + BC - 1) / BC;

    load_tile<T, D, BR, NT>(sQ, at<T>(p.q, p.qs, g.b, g.q0 + i0, h), p.qs[1], nrows, p.vec_in);
    load_tile<T, D, BR, NT>(sdO, at<T>(p.dout, p.dos, g.b, g.q0 + i0, h), p.dos[1], nrows,
                            p.vec_in);
    cp_async_commit();
    if (ntiles > 0) {
        load_tile<T, D, BC, NT>(sK, kg, p.ks[1], min(BC, lim), p.vec_in);
        load_tile<T, D, BC, NT>(sV, vg, p.vs[1], min(BC, lim), p.vec_in);
    }
    cp_async_commit();

    float lse2[2], dl[2];
    int seen[2];
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int i = i0 + warp * 16 + gq + 8 * hf;
        const int64_t li = ((int64_t)g.b * p.H + h) * p.T + g.q0 + i;
        lse2[hf] = i < g.nq ? p.lse[li] * LOG2E : 0.0f;
        dl[hf] = i < g.nq ? p.delta[li] : 0.0f;
        seen[hf] = i < g.nq ? keys_seen(p.causal, g, i) : 0;
    }
    float dq[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
        for (int e = 0; e < 4; e++) dq[dt][e] = 0.0f;

    for (int jt = 0; jt < ntiles; jt++) {
        const int j0 = jt * BC, buf = jt & 1;
        if (jt + 1 < ntiles) {
            const int j1 = j0 + BC;
            load_tile<T, D, BC, NT>(sK + (buf ^ 1) * BC * LD, kg + j1 * p.ks[1], p.ks[1],
                                    min(BC, lim - j1), p.vec_in);
            load_tile<T, D, BC, NT>(sV + (buf ^ 1) * BC * LD, vg + j1 * p.vs[1], p.vs[1],
                                    min(BC, lim - j1), p.vec_in);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const T *Kb = sK + buf * BC * LD, *Vb = sV + buf * BC * LD;

        float s[BC / 8][4], dp[BC / 8][4];
#pragma unroll
        for (int nt = 0; nt < BC / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++) {
            uint32_t qa[4], da[4];
            const int aoff = (warp * 16 + (lane & 15)) * LD + ks * 16 + (lane >> 4) * 8;
            ldsm_x4(qa, sQ + aoff);
            ldsm_x4(da, sdO + aoff);
#pragma unroll
            for (int np = 0; np < BC / 16; np++) {
                const int off = (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + ks * 16 +
                                ((lane >> 3) & 1) * 8;
                uint32_t kf[4], vf[4];
                ldsm_x4(kf, Kb + off);
                ldsm_x4(vf, Vb + off);
                mma16816<T>(s[2 * np], qa, kf[0], kf[1]);
                mma16816<T>(s[2 * np + 1], qa, kf[2], kf[3]);
                mma16816<T>(dp[2 * np], da, vf[0], vf[1]);
                mma16816<T>(dp[2 * np + 1], da, vf[2], vf[3]);
            }
        }
        const bool need_mask = j0 + BC > n_first || i0 + BR > g.nq;
#pragma unroll
        for (int nt = 0; nt < BC / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int hf = e >> 1;
                const bool vis = !need_mask || j0 + nt * 8 + 2 * tq + (e & 1) < seen[hf];
                const float pv = fast_exp2(fmaf(s[nt][e], p.scale_log2, -lse2[hf]));
                dp[nt][e] = vis ? pv * (dp[nt][e] - dl[hf]) : 0.0f;
            }
        // dQ += dS K (rows: queries; k: keys)
#pragma unroll
        for (int kk = 0; kk < BC / 16; kk++) {
            uint32_t a[4];
            a[0] = pack2<T>(dp[2 * kk][0], dp[2 * kk][1]);
            a[1] = pack2<T>(dp[2 * kk][2], dp[2 * kk][3]);
            a[2] = pack2<T>(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
            a[3] = pack2<T>(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
            for (int dd = 0; dd < D / 16; dd++) {
                uint32_t b[4];
                ldsm_x4_t(b, Kb + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dd * 16 +
                                 (lane >> 4) * 8);
                mma16816<T>(dq[2 * dd], a, b[0], b[1]);
                mma16816<T>(dq[2 * dd + 1], a, b[2], b[3]);
            }
        }
        __syncthreads();
    }

    cp_async_wait<0>();
    __syncthreads();
    const int r = warp * 16 + gq;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
        const int c = dt * 8 + 2 * tq;
        *(uint32_t *)(sQ + r * LD + c) = pack2<T>(dq[dt][0] * p.scale, dq[dt][1] * p.scale);
        *(uint32_t *)(sQ + (r + 8) * LD + c) = pack2<T>(dq[dt][2] * p.scale, dq[dt][3] * p.scale);
    }
    __syncthreads();
    store_tile<T, D, NT>(at_mut<T>(p.dq, p.dqs, g.b, g.q0 + i0, h), p.dqs[1], sQ, nrows,
                         p.vec_out);
}

// ---- SIMT path (f32 arithmetic, any D up to 32 * DPL) ------------------------------------------
//
// 4 warps; in the forward and dQ kernels each warp owns R = 4 query rows and a key tile is
// 32 keys, one per lane for the scores (K rows padded to D + 1 floats so the 32 lanes read
// 32 different banks), while each lane owns head-dim columns lane, lane + 32, ... of the
// outputs. In the dK / dV kernel each warp owns R = 4 key rows and a query tile is 32
// queries, one per lane.

constexpr int SIMT_NW = 4, SIMT_R = 4, SIMT_BR = SIMT_NW * SIMT_R, SIMT_BC = 32;

static size_t simt_fwd_smem(int D) {
    return ((size_t)SIMT_BR * D + (size_t)SIMT_BC * (D + 1) + (size_t)SIMT_BC * D) * 4;
}
static size_t simt_dq_smem(int D) {
    return ((size_t)2 * SIMT_BR * D + (size_t)2 * SIMT_BC * (D + 1)) * 4;
}
static size_t simt_dkdv_smem(int D) {
    return ((size_t)2 * SIMT_BR * D + (size_t)2 * SIMT_BC * (D + 1) + 2 * SIMT_BC) * 4;
}

// rows [0, ROWS) x D of a strided tensor into f32 shared memory (row stride ld); rows at or
// past `valid` are zero
template <class T>
__device__ __forceinline__ void simt_load(float *s, int ld, const T *g, int64_t stride, int rows,
                                          int valid, int D) {
    for (int i = threadIdx.x; i < rows * D; i += SIMT_NW * 32) {
        int r = i / D, c = i % D;
        s[r * ld + c] = r < valid ? lt_to_f32(g[r * stride + c]) : 0.0f;
    }
}

template <class T, int DPL>
__global__ void __launch_bounds__(SIMT_NW * 32) fa_simt_fwd(const attn_params p) {
    extern __shared__ float fsm[];
    const int D = p.D;
    float *sQ = fsm, *sK = sQ + SIMT_BR * D, *sV = sK + SIMT_BC * (D + 1);
    const int seg = blockIdx.x / p.nblk, qb = p.nblk - 1 - (int)(blockIdx.x % p.nblk);
    const seg_t g = seg_of(p, seg);
    const int i0 = qb * SIMT_BR;
    if (i0 >= g.nq) return;
    const int h = blockIdx.y, hkv = h / p.group;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int nrows = min(SIMT_BR, g.nq - i0);
    const int lim = keys_seen(p.causal, g, i0 + nrows - 1);
    const T *kg = at<T>(p.k, p.ks, g.b, g.k0, hkv), *vg = at<T>(p.v, p.vs, g.b, g.k0, hkv);
    simt_load<T>(sQ, D, at<T>(p.q, p.qs, g.b, g.q0 + i0, h), p.qs[1], SIMT_BR, nrows, D);

    float o[SIMT_R][DPL], m[SIMT_R], l[SIMT_R];
    int seen[SIMT_R];
#pragma unroll
    for (int r = 0; r < SIMT_R; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        seen[r] = keys_seen(p.causal, g, i0 + warp * SIMT_R + r);
#pragma unroll
        for (int c = 0; c < DPL; c++) o[r][c] = 0.0f;
    }
    for (int j0 = 0; j0 < lim; j0 += SIMT_BC) {
        __syncthreads(); // the previous tile is no longer read
        const int kv = min(SIMT_BC, lim - j0);
        simt_load<T>(sK, D + 1, kg + j0 * p.ks[1], p.ks[1], SIMT_BC, kv, D);
        simt_load<T>(sV, D, vg + j0 * p.vs[1], p.vs[1], SIMT_BC, kv, D);
        __syncthreads();
        float s[SIMT_R];
#pragma unroll
        for (int r = 0; r < SIMT_R; r++) s[r] = 0.0f;
        const float *krow = sK + lane * (D + 1);
        for (int c = 0; c < D; c++) {
            const float kc = krow[c];
#pragma unroll
            for (int r = 0; r < SIMT_R; r++) s[r] = fmaf(sQ[(warp * SIMT_R + r) * D + c], kc, s[r]);
        }
#pragma unroll
        for (int r = 0; r < SIMT_R; r++) {
            const bool vis = j0 + lane < seen[r];
            const float x = vis ? s[r] * p.scale : -INFINITY;
            const float mx = fmaxf(m[r], lt_warp_max(x));
            const float base = mx == -INFINITY ? 0.0f : mx;
            const float alpha = expf(m[r] - base);
            const float pv = vis ? expf(x - base) : 0.0f;
            l[r] = l[r] * alpha + pv;
            m[r] = mx;
            s[r] = pv;
#pragma unroll
            for (int c = 0; c < DPL; c++) o[r][c] *= alpha;
        }
        for (int jj = 0; jj < kv; jj++) {
            float vv[DPL];
#pragma unroll
            for (int c = 0; c < DPL; c++) {
                const int d = lane + 32 * c;
                vv[c] = d < D ? sV[jj * D + d] : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < SIMT_R; r++) {
                const float pj = __shfl_sync(0xffffffffu, s[r], jj);
#pragma unroll
                for (int c = 0; c < DPL; c++) o[r][c] = fmaf(pj, vv[c], o[r][c]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < SIMT_R; r++) {
        const float L = lt_warp_sum(l[r]);
        const int i = i0 + warp * SIMT_R + r;
        if (i >= g.nq) continue;
        const float inv = L > 0.0f ? 1.0f / L : 0.0f;
        T *orow = at_mut<T>(p.out, p.outs, g.b, g.q0 + i, h);
#pragma unroll
        for (int c = 0; c < DPL; c++) {
            const int d = lane + 32 * c;
            if (d < D) orow[d] = lt_from_f32<T>(o[r][c] * inv);
        }
        if (p.lse && lane == 0)
            p.lse[((int64_t)g.b * p.H + h) * p.T + g.q0 + i] = L > 0.0f ? m[r] + logf(L) : -INFINITY;
    }
}

template <class T, int DPL>
__global__ void __launch_bounds__(SIMT_NW * 32) fa_simt_dq(const attn_params p) {
    extern __shared__ float fsm[];
    const int D = p.D;
    float *sQ = fsm, *sdO = sQ + SIMT_BR * D, *sK = sdO + SIMT_BR * D, *sV = sK + SIMT_BC * (D + 1);
    const int seg = blockIdx.x / p.nblk, qb = p.nblk - 1 - (int)(blockIdx.x % p.nblk);
    const seg_t g = seg_of(p, seg);
    const int i0 = qb * SIMT_BR;
    if (i0 >= g.nq) return;
    const int h = blockIdx.y, hkv = h / p.group;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int nrows = min(SIMT_BR, g.nq - i0);
    const int lim = keys_seen(p.causal, g, i0 + nrows - 1);
    const T *kg = at<T>(p.k, p.ks, g.b, g.k0, hkv), *vg = at<T>(p.v, p.vs, g.b, g.k0, hkv);
    simt_load<T>(sQ, D, at<T>(p.q, p.qs, g.b, g.q0 + i0, h), p.qs[1], SIMT_BR, nrows, D);
    simt_load<T>(sdO, D, at<T>(p.dout, p.dos, g.b, g.q0 + i0, h), p.dos[1], SIMT_BR, nrows, D);

    float dq[SIMT_R][DPL], lse[SIMT_R], dl[SIMT_R];
    int seen[SIMT_R];
#pragma unroll
    for (int r = 0; r < SIMT_R; r++) {
        const int i = i0 + warp * SIMT_R + r;
        const int64_t li = ((int64_t)g.b * p.H + h) * p.T + g.q0 + i;
        lse[r] = i < g.nq ? p.lse[li] : 0.0f;
        dl[r] = i < g.nq ? p.delta[li] : 0.0f;
        seen[r] = i < g.nq ? keys_seen(p.causal, g, i) : 0;
#pragma unroll
        for (int c = 0; c < DPL; c++) dq[r][c] = 0.0f;
    }
    for (int j0 = 0; j0 < lim; j0 += SIMT_BC) {
        __syncthreads();
        const int kv = min(SIMT_BC, lim - j0);
        simt_load<T>(sK, D + 1, kg + j0 * p.ks[1], p.ks[1], SIMT_BC, kv, D);
        simt_load<T>(sV, D + 1, vg + j0 * p.vs[1], p.vs[1], SIMT_BC, kv, D);
        __syncthreads();
        float s[SIMT_R], dp[SIMT_R];
#pragma unroll
        for (int r = 0; r < SIMT_R; r++) s[r] = dp[r] = 0.0f;
        const float *krow = sK + lane * (D + 1), *vrow = sV + lane * (D + 1);
        for (int c = 0; c < D; c++) {
            const float kc = krow[c], vc = vrow[c];
#pragma unroll
            for (int r = 0; r < SIMT_R; r++) {
                s[r] = fmaf(sQ[(warp * SIMT_R + r) * D + c], kc, s[r]);
                dp[r] = fmaf(sdO[(warp * SIMT_R + r) * D + c], vc, dp[r]);
            }
        }
#pragma unroll
        for (int r = 0; r < SIMT_R; r++) {
            const bool vis = j0 + lane < seen[r];
            const float pv = vis ? expf(s[r] * p.scale - lse[r]) : 0.0f;
            s[r] = vis ? pv * (dp[r] - dl[r]) : 0.0f; // dS
        }
        for (int jj = 0; jj < kv; jj++) {
            float kk[DPL];
#pragma unroll
            for (int c = 0; c < DPL; c++) {
                const int d = lane + 32 * c;
                kk[c] = d < D ? sK[jj * (D + 1) + d] : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < SIMT_R; r++) {
                const float dsj = __shfl_sync(0xffffffffu, s[r], jj);
#pragma unroll
                for (int c = 0; c < DPL; c++) dq[r][c] = fmaf(dsj, kk[c], dq[r][c]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < SIMT_R; r++) {
        const int i = i0 + warp * SIMT_R + r;
        if (i >= g.nq) continue;
        T *row = at_mut<T>(p.dq, p.dqs, g.b, g.q0 + i, h);
#pragma unroll
        for (int c = 0; c < DPL; c++) {
            const int d = lane + 32 * c;
            if (d < D) row[d] = lt_from_f32<T>(dq[r][c] * p.scale);
        }
    }
}

template <class T, int DPL>
__global__ void __launch_bounds__(SIMT_NW * 32) fa_simt_dkdv(const attn_params p) {
    extern __shared__ float fsm[];
    const int D = p.D;
    float *sK = fsm, *sV = sK + SIMT_BR * D, *sQ = sV + SIMT_BR * D, *sdO = sQ + SIMT_BC * (D + 1);
    float *sL = sdO + SIMT_BC * (D + 1), *sDt = sL + SIMT_BC;
    const int seg = blockIdx.x / p.nblk, kb = blockIdx.x % p.nblk;
    const seg_t g = seg_of(p, seg);
    const int j0 = kb * SIMT_BR; // SIMT_BR keys per block here
    if (j0 >= g.nk) return;
    const int hkv = blockIdx.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kvalid = min(SIMT_BR, g.nk - j0), shift = g.nk - g.nq;
    simt_load<T>(sK, D, at<T>(p.k, p.ks, g.b, g.k0 + j0, hkv), p.ks[1], SIMT_BR, kvalid, D);
    simt_load<T>(sV, D, at<T>(p.v, p.vs, g.b, g.k0 + j0, hkv), p.vs[1], SIMT_BR, kvalid, D);
    long long ifirst = p.causal ? (long long)j0 - shift : 0;
    if (ifirst < 0) ifirst = 0;

    float dk[SIMT_R][DPL], dv[SIMT_R][DPL];
#pragma unroll
    for (int r = 0; r < SIMT_R; r++)
#pragma unroll
        for (int c = 0; c < DPL; c++) dk[r][c] = dv[r][c] = 0.0f;

    for (int h = hkv * p.group; h < (hkv + 1) * p.group; h++) {
        for (long long i0l = ifirst / SIMT_BC * SIMT_BC; i0l < g.nq; i0l += SIMT_BC) {
            const int i0 = (int)i0l, valid = min(SIMT_BC, g.nq - i0);
            __syncthreads();
            simt_load<T>(sQ, D + 1, at<T>(p.q, p.qs, g.b, g.q0 + i0, h), p.qs[1], SIMT_BC, valid, D);
            simt_load<T>(sdO, D + 1, at<T>(p.dout, p.dos, g.b, g.q0 + i0, h), p.dos[1], SIMT_BC,
                         valid, D);
            const int64_t lrow = ((int64_t)g.b * p.H + h) * p.T + g.q0 + i0;
            for (int r = threadIdx.x; r < SIMT_BC; r += SIMT_NW * 32) {
                sL[r] = r < valid ? p.lse[lrow + r] : 0.0f;
                sDt[r] = r < valid ? p.delta[lrow + r] : 0.0f;
            }
            __syncthreads();
            float s[SIMT_R], dp[SIMT_R];
#pragma unroll
            for (int r = 0; r < SIMT_R; r++) s[r] = dp[r] = 0.0f;
            const float *qrow = sQ + lane * (D + 1), *orow = sdO + lane * (D + 1);
            for (int c = 0; c < D; c++) {
                const float qc = qrow[c], oc = orow[c];
#pragma unroll
                for (int r = 0; r < SIMT_R; r++) {
                    s[r] = fmaf(qc, sK[(warp * SIMT_R + r) * D + c], s[r]);
                    dp[r] = fmaf(oc, sV[(warp * SIMT_R + r) * D + c], dp[r]);
                }
            }
            const int qi = i0 + lane;
#pragma unroll
            for (int r = 0; r < SIMT_R; r++) {
                const int kr = j0 + warp * SIMT_R + r;
                const bool vis = qi < g.nq && kr < g.nk &&
                                 (!p.causal || (long long)kr <= (long long)qi + shift);
                const float pv = vis ? expf(s[r] * p.scale - sL[lane]) : 0.0f;
                dp[r] = vis ? pv * (dp[r] - sDt[lane]) : 0.0f; // dS
                s[r] = pv;
            }
            for (int jj = 0; jj < valid; jj++) {
                float qv[DPL], ov[DPL];
#pragma unroll
                for (int c = 0; c < DPL; c++) {
                    const int d = lane + 32 * c;
                    qv[c] = d < D ? sQ[jj * (D + 1) + d] : 0.0f;
                    ov[c] = d < D ? sdO[jj * (D + 1) + d] : 0.0f;
                }
#pragma unroll
                for (int r = 0; r < SIMT_R; r++) {
                    const float pj = __shfl_sync(0xffffffffu, s[r], jj);
                    const float dsj = __shfl_sync(0xffffffffu, dp[r], jj);
#pragma unroll
                    for (int c = 0; c < DPL; c++) {
                        dv[r][c] = fmaf(pj, ov[c], dv[r][c]);
                        dk[r][c] = fmaf(dsj, qv[c], dk[r][c]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < SIMT_R; r++) {
        const int kr = j0 + warp * SIMT_R + r;
        if (kr >= g.nk) continue;
        T *dkr = at_mut<T>(p.dk, p.dks, g.b, g.k0 + kr, hkv);
        T *dvr = at_mut<T>(p.dv, p.dvs, g.b, g.k0 + kr, hkv);
#pragma unroll
        for (int c = 0; c < DPL; c++) {
            const int d = lane + 32 * c;
            if (d < D) {
                dkr[d] = lt_from_f32<T>(dk[r][c] * p.scale);
                dvr[d] = lt_from_f32<T>(dv[r][c]);
            }
        }
    }
}

// ---- host side -----------------------------------------------------------------------------------

int g_deterministic = 0;

// A kernel launch with `smem` bytes of dynamic shared memory, raising the kernel's limit
// when it is over the default 48 KB.
template <class K>
int launch(const lt_cuda_context *c, K kernel, unsigned grid_x, unsigned grid_y, int threads,
           size_t smem, const attn_params &p, const char *name) {
    if (grid_x == 0 || grid_y == 0) return LT_OK;
    if (smem > (size_t)c->prop.sharedMemPerBlockOptin)
        return lt_fail(LT_ERR_DEVICE,
                       "%s: needs %zu bytes of shared memory per block, device %d allows %zu",
                       name, smem, c->device, (size_t)c->prop.sharedMemPerBlockOptin);
    if (smem > 48 * 1024)
        LT_CU(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    kernel<<<dim3(grid_x, grid_y), threads, smem, c->stream>>>(p);
    LT_CU_LAUNCH(name);
    return LT_OK;
}

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

static int grid_of(int64_t nseg, int64_t per_seg, unsigned *out, const char *op) {
    int64_t n = nseg * per_seg;
    if (n > 0x7fffffffLL)
        return lt_fail(LT_ERR_SHAPE, "%s: %lld blocks exceed the CUDA grid", op, (long long)n);
    *out = (unsigned)n;
    return LT_OK;
}

// 16-byte accesses to every row of t are aligned: base address and the strides of dims 0..2.
static int rows_aligned(const lt_tensor *t) {
    if ((uintptr_t)lt_tensor_data(t) % 16) return 0;
    int per16 = 16 / lt_dtype_size(t->dtype_id);
    for (int d = 0; d < 3; d++)
        if (t->sizes[d] > 1 && t->strides[d] % per16) return 0;
    return 1;
}

static const char *dtype_name(int dt) {
    const lt_dtype_traits *tr = lt_dtype_info(dt);
    return tr ? tr->name : "?";
}

static int check_tensor(const lt_tensor *t, int dtype, const lt_tensor *ref, const char *op,
                        const char *name) {
    if (!t || !t->storage) return lt_fail(LT_ERR_ARG, "%s: %s is missing", op, name);
    if (!lt_on_cuda(t) || lt_device_of(t) != lt_device_of(ref))
        return lt_fail(LT_ERR_DEVICE, "%s: %s must be on the same CUDA device as q", op, name);
    if (t->dtype_id != dtype)
        return lt_fail(LT_ERR_DTYPE,
                       "%s: %s is %s but q is %s (on CUDA q, k, v, out, dout, dq, dk and dv "
                       "share one dtype: f32, bf16 or f16)",
                       op, name, dtype_name(t->dtype_id), dtype_name(dtype));
    if (t->ndim != 4) return lt_fail(LT_ERR_SHAPE, "%s: %s must have 4 dims", op, name);
    if (t->strides[3] != 1 && t->sizes[3] > 1)
        return lt_fail(LT_ERR_ARG, "%s: %s needs unit stride in the head dim", op, name);
    return LT_OK;
}

static int check_lse(const lt_tensor *lse, const lt_tensor *q, int64_t n, const char *op) {
    if (!lt_on_cuda(lse) || lt_device_of(lse) != lt_device_of(q))
        return lt_fail(LT_ERR_DEVICE, "%s: lse must be on the same CUDA device as q", op);
    if (lse->dtype_id != LT_DTYPE_F32 || !lt_tensor_is_contiguous(lse))
        return lt_fail(LT_ERR_ARG, "%s: lse must be a contiguous f32 tensor", op);
    if (lt_tensor_numel(lse) != n)
        return lt_fail(LT_ERR_SHAPE, "%s: lse must be (B, H, T) = %lld elements, got %lld", op,
                       (long long)n, (long long)lt_tensor_numel(lse));
    return LT_OK;
}

// The segments, checked as the CPU op checks them. cu_seqlens may be a CUDA tensor (it is
// copied to the host to be checked: one small synchronous copy) or a CPU tensor (copied to
// the device). *dev_cu is the device array (NULL without cu_seqlens); *tmp is what to free.
struct segments {
    const int32_t *dev_cu;
    void *tmp;
    int nseg;
    int max_nq, max_nk;
};

static int make_segments(const lt_cuda_context *c, const lt_tensor *cu, int64_t B, int64_t T,
                         int64_t S, segments *sg, const char *op) {
    sg->dev_cu = NULL;
    sg->tmp = NULL;
    if (!cu) {
        sg->nseg = (int)B;
        sg->max_nq = (int)T;
        sg->max_nk = (int)S;
        return LT_OK;
    }
    if (!cu->storage || cu->dtype_id != LT_DTYPE_I32 || cu->ndim != 1 ||
        !lt_tensor_is_contiguous(cu))
        return lt_fail(LT_ERR_ARG, "%s: cu_seqlens must be a contiguous 1-D i32 tensor", op);
    if (S != T)
        return lt_fail(LT_ERR_SHAPE,
                       "%s: packed sequences (cu_seqlens) need as many keys as queries, got T "
                       "%lld and S %lld",
                       op, (long long)T, (long long)S);
    const int64_t n = cu->sizes[0] - 1, total = B * T;
    if (n < 1 || n > 0x7fffffffLL)
        return lt_fail(LT_ERR_ARG, "%s: cu_seqlens must run from 0 to B * T = %lld (got %lld entries)",
                       op, (long long)total, (long long)cu->sizes[0]);
    const int on_dev = lt_on_cuda(cu);
    if (on_dev && lt_device_of(cu) != c->device)
        return lt_fail(LT_ERR_DEVICE, "%s: cu_seqlens must be on the same CUDA device as q", op);
    int32_t *h = (int32_t *)malloc((size_t)(n + 1) * sizeof(int32_t));
    if (!h) return lt_fail(LT_ERR_NOMEM, "%s: out of host memory", op);
    if (on_dev) {
        cudaError_t e = cudaMemcpyAsync(h, lt_tensor_data(cu), (size_t)(n + 1) * sizeof(int32_t),
                                        cudaMemcpyDeviceToHost, c->stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
        if (e != cudaSuccess) {
            free(h);
            return lt_fail(LT_ERR_DEVICE, "%s: reading cu_seqlens: %s", op, cudaGetErrorString(e));
        }
    } else {
        memcpy(h, lt_tensor_data(cu), (size_t)(n + 1) * sizeof(int32_t));
    }
    int st = LT_OK;
    int max_len = 0;
    if (h[0] != 0 || h[n] != total) {
        st = lt_fail(LT_ERR_ARG, "%s: cu_seqlens must run from 0 to B * T = %lld (got %lld entries)",
                     op, (long long)total, (long long)cu->sizes[0]);
    } else {
        for (int64_t s = 0; s < n; s++) {
            if (h[s + 1] <= h[s]) {
                st = lt_fail(LT_ERR_ARG,
                             "%s: cu_seqlens must increase: entry %lld is %d, entry %lld is %d", op,
                             (long long)s, h[s], (long long)(s + 1), h[s + 1]);
                break;
            }
            if (h[s] / T != (h[s + 1] - 1) / T) {
                st = lt_fail(LT_ERR_ARG,
                             "%s: packed sequence %lld ([%d, %d)) crosses a batch row of %lld positions",
                             op, (long long)s, h[s], h[s + 1], (long long)T);
                break;
            }
            if (h[s + 1] - h[s] > max_len) max_len = h[s + 1] - h[s];
        }
    }
    if (st == LT_OK && on_dev) {
        sg->dev_cu = (const int32_t *)lt_tensor_data(cu);
    } else if (st == LT_OK) {
        st = lt_cuda_alloc(&sg->tmp, (n + 1) * (int64_t)sizeof(int32_t), c->device);
        if (st == LT_OK) {
            // from pageable memory: returns once h is staged, so freeing it next is safe
            cudaError_t e = cudaMemcpyAsync(sg->tmp, h, (size_t)(n + 1) * sizeof(int32_t),
                                            cudaMemcpyHostToDevice, c->stream);
            if (e != cudaSuccess) {
                lt_cuda_free(sg->tmp, c->device);
                sg->tmp = NULL;
                st = lt_fail(LT_ERR_DEVICE, "%s: copying cu_seqlens: %s", op, cudaGetErrorString(e));
            }
            sg->dev_cu = (const int32_t *)sg->tmp;
        }
    }
    free(h);
    sg->nseg = (int)n;
    sg->max_nq = sg->max_nk = max_len;
    return st;
}

// Shapes and pointers shared by the forward and the backward.
static int setup(attn_params *p, const lt_cuda_context *c, const lt_tensor *q,
                 const lt_tensor *k, const lt_tensor *v, float scale, int causal,
                 const char *op) {
    memset(p, 0, sizeof *p);
    const int dt = q->dtype_id;
    if (dt != LT_DTYPE_F32 && dt != LT_DTYPE_BF16 && dt != LT_DTYPE_F16)
        return lt_fail(LT_ERR_DTYPE, "%s: q is %s; attention on CUDA takes f32, bf16 or f16", op,
                       dtype_name(dt));
    LT_TRY(check_tensor(q, dt, q, op, "q"));
    LT_TRY(check_tensor(k, dt, q, op, "k"));
    LT_TRY(check_tensor(v, dt, q, op, "v"));
    const int64_t B = q->sizes[0], T = q->sizes[1], H = q->sizes[2], D = q->sizes[3];
    const int64_t S = k->sizes[1], Hkv = k->sizes[2];
    for (int d = 0; d < 4; d++)
        if (k->sizes[d] != v->sizes[d])
            return lt_fail(LT_ERR_SHAPE, "%s: k and v must have the same shape", op);
    if (k->sizes[0] != B || k->sizes[3] != D || Hkv == 0 || H % Hkv != 0)
        return lt_fail(LT_ERR_SHAPE,
                       "%s: q must be (B, T, H, D) and k, v (B, S, Hkv, D) with H a multiple of Hkv",
                       op);
    if (D > 256)
        return lt_fail(LT_ERR_UNSUPPORTED,
                       "%s: head dim %lld is not supported on CUDA (at most 256)", op, (long long)D);
    if (T >= (1LL << 30) || S >= (1LL << 30) || B * T >= (1LL << 31) || B * S >= (1LL << 31) ||
        H > 65535)
        return lt_fail(LT_ERR_SHAPE,
                       "%s: sizes out of range on CUDA (B * T and B * S below 2^31, T and S "
                       "below 2^30, H at most 65535)",
                       op);
    if (!(scale > 0) || !isfinite(scale))
        return lt_fail(LT_ERR_ARG, "%s: scale must be a positive finite number, got %g", op,
                       (double)scale);
    p->q = lt_tensor_data(q);
    p->k = lt_tensor_data(k);
    p->v = lt_tensor_data(v);
    for (int d = 0; d < 3; d++) {
        p->qs[d] = q->strides[d];
        p->ks[d] = k->strides[d];
        p->vs[d] = v->strides[d];
    }
    p->B = (int)B;
    p->T = (int)T;
    p->S = (int)S;
    p->H = (int)H;
    p->Hkv = (int)Hkv;
    p->group = (int)(H / Hkv);
    p->D = (int)D;
    p->scale = scale;
    p->scale_log2 = scale * LOG2E;
    p->causal = causal ? 1 : 0;
    (void)c;
    return LT_OK;
}

// The shared memory a block may have on this device.
static size_t smem_optin(const lt_cuda_context *c) {
    return (size_t)c->prop.sharedMemPerBlockOptin;
}

// ---- forward launchers ----

// Forward tiles: BR 128 query rows (4 warps x 2 m16 tiles), BC keys per tile, ST stages.
// Two m16 tiles per warp let each K / V fragment read from shared memory feed two mma,
// halving the shared-memory traffic per mma, which is what bounds mma.sync kernels on
// Hopper and close to it on Ampere. Resource report (nvcc 13.0, -Xptxas -v, sm_90, bf16;
// f16 the same) is quoted at each; every choice is to be measured on the H100.
//  D = 128: BC 32. BC 64 needs 255 registers and spills (64 B stores / 104 B loads per
//    thread) with O (128 f32) and S (64 f32) both held per thread; BC 32 uses 242, no spill,
//    two CTAs (8 warps) per SM by registers.
//    sm_90: 3 stages, 85 KB: two CTAs use 170 of the 227 KB per SM; the third stage hides
//    more of the copy latency.
//    sm_80 and the others: 2 stages, 68 KB: two CTAs fit the A100's 164 KB (three stages
//    would not), and one fits the 99 KB of sm_86 / sm_89.
//  D = 64: BC 64 (218 registers, no spill, two CTAs per SM by registers).
//    sm_90: 3 stages, 72 KB; others: 2 stages, 54 KB.
template <class T, int D, int BC, int ST>
int fwd_launch(const lt_cuda_context *c, attn_params &p, const segments &sg) {
    unsigned gx;
    p.nblk = (int)cdiv(sg.max_nq, 128);
    LT_TRY(grid_of(sg.nseg, p.nblk, &gx, "attention_forward"));
    return launch(c, fa_fwd<T, D, BC, 4, 2, ST>, gx, p.H, 128, fwd_smem<D, BC, 4, 2, ST>(), p,
                  "fa_fwd");
}

template <class T> int fwd_tc(const lt_cuda_context *c, attn_params &p, const segments &sg) {
    const size_t lim = smem_optin(c);
    const bool sm90 = c->prop.major >= 9;
    if (p.D == 128) {
        if (sm90 && fwd_smem<128, 32, 4, 2, 3>() <= lim) return fwd_launch<T, 128, 32, 3>(c, p, sg);
        if (fwd_smem<128, 32, 4, 2, 2>() <= lim) return fwd_launch<T, 128, 32, 2>(c, p, sg);
    } else if (p.D == 64) {
        if (sm90 && fwd_smem<64, 64, 4, 2, 3>() <= lim) return fwd_launch<T, 64, 64, 3>(c, p, sg);
        if (fwd_smem<64, 64, 4, 2, 2>() <= lim) return fwd_launch<T, 64, 64, 2>(c, p, sg);
    }
    return LT_ERR_UNSUPPORTED; // no tile fits: the caller takes the SIMT path
}

template <class T> int fwd_simt(const lt_cuda_context *c, attn_params &p, const segments &sg) {
    unsigned gx;
    p.nblk = (int)cdiv(sg.max_nq, SIMT_BR);
    LT_TRY(grid_of(sg.nseg, p.nblk, &gx, "attention_forward"));
    const size_t sm = simt_fwd_smem(p.D);
    if (p.D <= 64) return launch(c, fa_simt_fwd<T, 2>, gx, p.H, 128, sm, p, "fa_simt_fwd<2>");
    if (p.D <= 128) return launch(c, fa_simt_fwd<T, 4>, gx, p.H, 128, sm, p, "fa_simt_fwd<4>");
    return launch(c, fa_simt_fwd<T, 8>, gx, p.H, 128, sm, p, "fa_simt_fwd<8>");
}

template <class T> int forward(const lt_cuda_context *c, attn_params &p, const segments &sg) {
    if constexpr (!std::is_same<T, float>::value) {
        if (p.D == 64 || p.D == 128) {
            int st = fwd_tc<T>(c, p, sg);
            if (st != LT_ERR_UNSUPPORTED) return st;
        }
    }
    return fwd_simt<T>(c, p, sg);
}

// ---- backward launchers ----

// Temporary device buffers of one backward call, given back when it returns (the stream
// orders their reuse after the kernels queued here).
struct temps {
    int device;
    void *ptr[4];
    int n;
    explicit temps(int dev) : device(dev), n(0) {}
    ~temps() {
        for (int i = 0; i < n; i++) lt_cuda_free(ptr[i], device);
    }
    int get(float **out, int64_t count) {
        void *q = NULL;
        LT_TRY(lt_cuda_alloc(&q, (count > 0 ? count : 1) * (int64_t)sizeof(float), device));
        ptr[n++] = q;
        *out = (float *)q;
        return LT_OK;
    }
};

template <class T> int launch_delta(const lt_cuda_context *c, const attn_params &p) {
    const int64_t rows = (int64_t)p.B * p.T * p.H;
    return launch(c, fa_bwd_delta<T>, lt_blocks_for(rows * 32, 256), 1, 256, 0, p, "fa_bwd_delta");
}

// dK / dV tiles (resource report at each, sm_90; "to be measured on the H100"):
//  D = 128, >= 113 KB (A100, H100): BC 128 keys (8 warps x 16), BR 32 queries, 113 KB.
//    Each warp holds dK and dV of its 16 keys (128 f32 registers) plus S^T and dP^T of
//    16 x BR; BR 32 keeps that under the 255-register cap, and BC 128 halves how often Q
//    and dO are re-read from global memory compared with 64 keys. One CTA per SM on both
//    architectures (two would need 226 KB).
//  D = 128, small shared memory (sm_86 / sm_89): BC 64 (4 warps), BR 32, 74 KB.
//  D = 64: BC 128 (8 warps), BR 64, 91 KB; fits every sm_8x / sm_90 part.
// Deterministic dQ tiles: BR 64 queries (4 warps x 16) and BC 64 keys (102 KB) at D = 128,
// BC 32 (68 KB) where that does not fit; BR 64, BC 64 (54 KB) at D = 64.
template <class T>
int bwd_tc(const lt_cuda_context *c, attn_params &p, const segments &sg, int deterministic,
           temps &tmp) {
    typedef void (*kernel_t)(attn_params);
    const size_t lim = smem_optin(c);
    kernel_t dkdv = NULL, dq = NULL;
    int bc = 0, br_dq = 64, threads = 0;
    size_t sm_dkdv = 0, sm_dq = 0;
    if (p.D == 128) {
        if (bwd_smem<128, 32, 8>() <= lim) {
            dkdv = fa_bwd_dkdv<T, 128, 32, 8>, bc = 128, threads = 256, sm_dkdv = bwd_smem<128, 32, 8>();
        } else if (bwd_smem<128, 32, 4>() <= lim) {
            dkdv = fa_bwd_dkdv<T, 128, 32, 4>, bc = 64, threads = 128, sm_dkdv = bwd_smem<128, 32, 4>();
        }
        if (dq_smem<128, 64, 4>() <= lim)
            dq = fa_bwd_dq<T, 128, 64, 4>, sm_dq = dq_smem<128, 64, 4>();
        else if (dq_smem<128, 32, 4>() <= lim)
            dq = fa_bwd_dq<T, 128, 32, 4>, sm_dq = dq_smem<128, 32, 4>();
    } else if (p.D == 64) {
        if (bwd_smem<64, 64, 8>() <= lim)
            dkdv = fa_bwd_dkdv<T, 64, 64, 8>, bc = 128, threads = 256, sm_dkdv = bwd_smem<64, 64, 8>();
        if (dq_smem<64, 64, 4>() <= lim) dq = fa_bwd_dq<T, 64, 64, 4>, sm_dq = dq_smem<64, 64, 4>();
    }
    if (!dkdv || (deterministic && !dq)) return LT_ERR_UNSUPPORTED;

    const char *op = "attention_backward";
    const int64_t nkb = cdiv(sg.max_nk, bc);
    // Few CTAs (a long group, few kv heads, few sequences) would leave SMs idle while each
    // CTA walks `group` heads: then one CTA per query head, partials summed afterwards.
    // Threshold: two waves of one CTA per SM (to be measured on the H100).
    p.split_heads = 0;
    if (p.group > 1 && (int64_t)sg.nseg * nkb * p.Hkv < 2LL * c->prop.multiProcessorCount) {
        const int64_t n = (int64_t)p.B * p.S * p.H * p.D;
        if (tmp.get(&p.dk_part, n) == LT_OK && tmp.get(&p.dv_part, n) == LT_OK)
            p.split_heads = 1;
        else
            lt_clear_error(); // not enough memory for the partials: the unsplit kernel is fine
    }
    p.atomic_dq = !deterministic;
    if (p.atomic_dq) LT_TRY(tmp.get(&p.dq_acc, (int64_t)p.B * p.T * p.H * p.D));
    LT_TRY(launch_delta<T>(c, p));

    unsigned gx;
    p.nblk = (int)nkb;
    LT_TRY(grid_of(sg.nseg, p.nblk, &gx, op));
    LT_TRY(launch(c, dkdv, gx, p.split_heads ? p.H : p.Hkv, threads, sm_dkdv, p, "fa_bwd_dkdv"));
    if (p.atomic_dq) {
        const int64_t n = (int64_t)p.B * p.T * p.H * p.D;
        LT_TRY(launch(c, fa_dq_convert<T>, lt_blocks_for(n, 256), 1, 256, 0, p, "fa_dq_convert"));
    } else {
        p.nblk = (int)cdiv(sg.max_nq, br_dq);
        LT_TRY(grid_of(sg.nseg, p.nblk, &gx, op));
        LT_TRY(launch(c, dq, gx, p.H, 128, sm_dq, p, "fa_bwd_dq"));
    }
    if (p.split_heads) {
        const int64_t n = (int64_t)p.B * p.S * p.Hkv * p.D;
        LT_TRY(launch(c, fa_dkdv_reduce<T>, lt_blocks_for(n, 256), 1, 256, 0, p, "fa_dkdv_reduce"));
    }
    return LT_OK;
}

// SIMT backward: deterministic by construction (no atomics; dK / dV walk the group's heads).
template <class T> int bwd_simt(const lt_cuda_context *c, attn_params &p, const segments &sg) {
    const char *op = "attention_backward";
    p.atomic_dq = 0;
    p.split_heads = 0;
    p.dq_acc = NULL;
    LT_TRY(launch_delta<T>(c, p));
    unsigned gx;
    p.nblk = (int)cdiv(sg.max_nq, SIMT_BR);
    LT_TRY(grid_of(sg.nseg, p.nblk, &gx, op));
    const size_t smq = simt_dq_smem(p.D), smk = simt_dkdv_smem(p.D);
    if (p.D <= 64)
        LT_TRY(launch(c, fa_simt_dq<T, 2>, gx, p.H, 128, smq, p, "fa_simt_dq<2>"));
    else if (p.D <= 128)
        LT_TRY(launch(c, fa_simt_dq<T, 4>, gx, p.H, 128, smq, p, "fa_simt_dq<4>"));
    else
        LT_TRY(launch(c, fa_simt_dq<T, 8>, gx, p.H, 128, smq, p, "fa_simt_dq<8>"));
    p.nblk = (int)cdiv(sg.max_nk, SIMT_BR);
    LT_TRY(grid_of(sg.nseg, p.nblk, &gx, op));
    if (p.D <= 64) return launch(c, fa_simt_dkdv<T, 2>, gx, p.Hkv, 128, smk, p, "fa_simt_dkdv<2>");
    if (p.D <= 128) return launch(c, fa_simt_dkdv<T, 4>, gx, p.Hkv, 128, smk, p, "fa_simt_dkdv<4>");
    return launch(c, fa_simt_dkdv<T, 8>, gx, p.Hkv, 128, smk, p, "fa_simt_dkdv<8>");
}

template <class T>
int backward(const lt_cuda_context *c, attn_params &p, const segments &sg, temps &tmp) {
    const int det = __atomic_load_n(&g_deterministic, __ATOMIC_RELAXED);
    if constexpr (!std::is_same<T, float>::value) {
        if (p.D == 64 || p.D == 128) {
            int st = bwd_tc<T>(c, p, sg, det, tmp);
            if (st != LT_ERR_UNSUPPORTED) return st;
        }
    }
    (void)det;
    return bwd_simt<T>(c, p, sg);
}

int check_like(const lt_tensor *t, const lt_tensor *ref, const char *op, const char *name,
               const char *ref_name) {
    LT_TRY(check_tensor(t, ref->dtype_id, ref, op, name));
    for (int d = 0; d < 4; d++)
        if (t->sizes[d] != ref->sizes[d])
            return lt_fail(LT_ERR_SHAPE, "%s: %s must have the shape of %s", op, name, ref_name);
    return LT_OK;
}

void set_strides(int64_t (&dst)[3], const lt_tensor *t) {
    for (int d = 0; d < 3; d++) dst[d] = t->strides[d];
}

} // namespace

extern "C" void lt_cuda_attention_set_deterministic(int on) {
    __atomic_store_n(&g_deterministic, on ? 1 : 0, __ATOMIC_RELAXED);
}

extern "C" int lt_cuda_attention_get_deterministic(void) {
    return __atomic_load_n(&g_deterministic, __ATOMIC_RELAXED);
}

extern "C" int lt_cuda_attention_forward(lt_tensor *out, lt_tensor *lse, const lt_tensor *q,
                                         const lt_tensor *k, const lt_tensor *v,
                                         const lt_tensor *cu_seqlens, float scale, int causal) {
    const char *op = "attention_forward";
    LT_CUDA_CTX(c, lt_device_of(q));
    attn_params p;
    LT_TRY(setup(&p, c, q, k, v, scale, causal, op));
    LT_TRY(check_like(out, q, op, "out", "q"));
    const int64_t rows = (int64_t)p.B * p.T * p.H;
    if (lse) LT_TRY(check_lse(lse, q, rows, op));
    if (rows == 0) return LT_OK;
    segments sg;
    LT_TRY(make_segments(c, cu_seqlens, p.B, p.T, p.S, &sg, op));
    p.cu = sg.dev_cu;
    p.nseg = sg.nseg;
    p.out = lt_tensor_data(out);
    set_strides(p.outs, out);
    p.lse = lse ? (float *)lt_tensor_data(lse) : NULL;
    p.vec_in = rows_aligned(q) && rows_aligned(k) && rows_aligned(v);
    p.vec_out = rows_aligned(out);
    int st = LT_OK;
    switch (q->dtype_id) {
    case LT_DTYPE_F32: st = forward<float>(c, p, sg); break;
    case LT_DTYPE_BF16: st = forward<__nv_bfloat16>(c, p, sg); break;
    default: st = forward<__half>(c, p, sg); break;
    }
    if (sg.tmp) lt_cuda_free(sg.tmp, c->device);
    return st;
}

extern "C" int lt_cuda_attention_backward(lt_tensor *dq, lt_tensor *dk, lt_tensor *dv,
                                          const lt_tensor *dout, const lt_tensor *q,
                                          const lt_tensor *k, const lt_tensor *v,
                                          const lt_tensor *out, const lt_tensor *lse,
                                          const lt_tensor *cu_seqlens, float scale, int causal) {
    const char *op = "attention_backward";
    LT_CUDA_CTX(c, lt_device_of(q));
    attn_params p;
    LT_TRY(setup(&p, c, q, k, v, scale, causal, op));
    LT_TRY(check_like(dout, q, op, "dout", "q"));
    LT_TRY(check_like(out, q, op, "out", "q"));
    LT_TRY(check_like(dq, q, op, "dq", "q"));
    LT_TRY(check_like(dk, k, op, "dk", "k"));
    LT_TRY(check_like(dv, v, op, "dv", "v"));
    if (!lse) return lt_fail(LT_ERR_ARG, "%s: lse (from the forward) is required", op);
    const int64_t rows = (int64_t)p.B * p.T * p.H;
    LT_TRY(check_lse(lse, q, rows, op));
    if ((int64_t)p.B * p.S * p.Hkv * p.D == 0 && rows * p.D == 0) return LT_OK;
    segments sg;
    LT_TRY(make_segments(c, cu_seqlens, p.B, p.T, p.S, &sg, op));
    p.cu = sg.dev_cu;
    p.nseg = sg.nseg;
    p.o = lt_tensor_data(out);
    p.dout = lt_tensor_data(dout);
    p.dq = lt_tensor_data(dq);
    p.dk = lt_tensor_data(dk);
    p.dv = lt_tensor_data(dv);
    set_strides(p.os, out);
    set_strides(p.dos, dout);
    set_strides(p.dqs, dq);
    set_strides(p.dks, dk);
    set_strides(p.dvs, dv);
    p.lse = (float *)lt_tensor_data(lse);
    p.vec_in = rows_aligned(q) && rows_aligned(k) && rows_aligned(v) && rows_aligned(dout);
    p.vec_out = rows_aligned(dq) && rows_aligned(dk) && rows_aligned(dv);
    int st;
    {
        temps tmp(c->device);
        st = tmp.get(&p.delta, rows > 0 ? rows : 1);
        if (st == LT_OK) {
            switch (q->dtype_id) {
            case LT_DTYPE_F32: st = backward<float>(c, p, sg, tmp); break;
            case LT_DTYPE_BF16: st = backward<__nv_bfloat16>(c, p, sg, tmp); break;
            default: st = backward<__half>(c, p, sg, tmp); break;
            }
        }
    }
    if (sg.tmp) lt_cuda_free(sg.tmp, c->device);
    return st;
}
