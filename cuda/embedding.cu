// embedding.cu - the CUDA side of src/ops/embedding.c: token embedding lookup (a gather) and
// its gradient (a scatter-add).
//
// Shapes: weight (V, C) f32/bf16/f16 with unit stride in its rows (any row stride);
// ids (...) i32/i64 contiguous, n of them; out (..., C) contiguous f32/bf16/f16 (the CPU
// too, through an f32 twin); dout (..., C) contiguous f32/bf16/f16; dweight (V, C) f32 contiguous.
//
// Ids outside [0, V) are an error, as on the CPU, and leave out / dweight untouched: a small
// kernel checks every id first and records the lowest bad position with atomicMin; the
// result is read back (one 8-byte transfer and a stream sync per call, the price of
// reporting the error the CPU reports: "id %lld at position %lld is outside ...").
//
// Forward: one warp per id (8 per block), 16-byte loads of the weight row and 16-byte
// stores when the dtypes match and every row start is 16-byte aligned; element by element
// otherwise. Math is a dtype conversion only.
//
// Backward, deterministic by ownership instead of atomics: block (bx, by) owns the vocabulary
// rows [bx * rpb, (bx + 1) * rpb) and the 256 columns [by * 256, by * 256 + 256), one per
// thread, so no two threads ever add into one element. Each block scans every id in tiles
// of 256, keeps those in its rows (compacted in position order with warp ballots), sorts
// the tile's hits by id without reordering equal ids (a rank count), and adds runs of equal
// ids in a register before one read-modify-write of dweight. Each element of dweight thus
// receives its gradients in position order, the CPU's order: the result is bit-identical to
// the CPU's and the same on every run. Atomics in f32 were rejected because their order,
// hence the rounding, changes from run to run. The id scans cost blocks x n reads of
// 4-8 bytes from L2, kept small by using about 4 blocks per multiprocessor in all.
#include "common.cuh"

namespace {

// Fails with the CPU's message when an id is outside [0, V).
int check_ids(lt_cuda_context *c, const lt_tensor *ids, int64_t n, int64_t V, const char *op) {
    int64_t bad, id;
    LT_TRY(lt_cuda_first_out_of_range(c, ids, n, V, &bad, &id, op, "ids"));
    if (bad < 0) return LT_OK;
    return lt_fail(LT_ERR_RANGE, "%s: id %lld at position %lld is outside the vocabulary [0, %lld)",
                   op, (long long)id, (long long)bad, (long long)V);
}

// out row i = weight row ids[i]; a warp per row.
template <class TW, class TO>
__global__ void __launch_bounds__(256) emb_fwd_kernel(TO *out, const TW *w, int64_t ws,
                                                      const void *ids, int is64, int64_t n,
                                                      int64_t C, int vec) {
    constexpr int W = 16 / sizeof(TW);
    int lane = threadIdx.x & 31;
    int64_t warps = (int64_t)gridDim.x * 8;
    for (int64_t i = blockIdx.x * 8LL + (threadIdx.x >> 5); i < n; i += warps) {
        int64_t id = lt_dev_load_index(ids, is64, i);
        const TW *src = w + id * ws;
        TO *dst = out + i * C;
        if (vec) {
            for (int64_t v = lane; v < C / W; v += 32) {
                Pack<TW> p = ((const Pack<TW> *)src)[v];
                if constexpr (sizeof(TW) == sizeof(TO) && W == 16 / sizeof(TO)) {
                    Pack<TO> q;
#pragma unroll
                    for (int j = 0; j < W; j++) q.v[j] = lt_from_f32<TO>(lt_to_f32(p.v[j]));
                    ((Pack<TO> *)dst)[v] = q;
                } else {
#pragma unroll
                    for (int j = 0; j < W; j++) dst[v * W + j] = lt_from_f32<TO>(lt_to_f32(p.v[j]));
                }
            }
        } else {
            for (int64_t c = lane; c < C; c += 32) dst[c] = lt_from_f32<TO>(lt_to_f32(src[c]));
        }
    }
}

const int EMB_TILE = 256; // ids per scan tile = threads per block = columns per block

// dweight (V, C) += scatter of dout by ids; see the header for the ownership scheme.
template <class TD>
__global__ void __launch_bounds__(EMB_TILE) emb_bwd_kernel(float *dw, const TD *dout,
                                                           const void *ids, int is64, int64_t n,
                                                           int64_t V, int64_t C, int64_t rpb) {
    __shared__ int64_t hit_pos[EMB_TILE], hit_id[EMB_TILE];
    __shared__ int64_t srt_pos[EMB_TILE], srt_id[EMB_TILE];
    __shared__ int warp_cnt[EMB_TILE / 32];
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int64_t lo = blockIdx.x * rpb, hi = min(V, lo + rpb);
    int64_t c = blockIdx.y * (int64_t)EMB_TILE + tid;
    bool col = c < C;
    for (int64_t tile = 0; tile < n; tile += EMB_TILE) {
        int64_t i = tile + tid, id = -1;
        if (i < n) id = lt_dev_load_index(ids, is64, i);
        bool hit = i < n && id >= lo && id < hi;
        unsigned mask = __ballot_sync(0xffffffffu, hit);
        if (lane == 0) warp_cnt[warp] = __popc(mask);
        __syncthreads();
        int base = 0, total = 0;
        for (int k = 0; k < EMB_TILE / 32; k++) {
            if (k < warp) base += warp_cnt[k];
            total += warp_cnt[k];
        }
        if (hit) {
            int at = base + __popc(mask & ((1u << lane) - 1u));
            hit_pos[at] = i;
            hit_id[at] = id;
        }
        __syncthreads();
        if (total == 0) continue; // uniform: every thread saw the same counts
        // stable sort of the hits by id: rank = hits with a smaller id, or the same id at an
        // earlier position
        if (tid < total) {
            int64_t my = hit_id[tid];
            int rank = 0;
            for (int k = 0; k < total; k++) {
                int64_t o = hit_id[k];
                rank += (o < my) || (o == my && k < tid);
            }
            srt_pos[rank] = hit_pos[tid];
            srt_id[rank] = my;
        }
        __syncthreads();
        if (col) {
            int64_t cur = -1;
            float acc = 0.0f;
            for (int h = 0; h < total; h++) {
                int64_t r = srt_id[h];
                if (r != cur) {
                    if (cur >= 0) dw[cur * C + c] = acc;
                    cur = r;
                    acc = dw[r * C + c];
                }
                acc += lt_to_f32(dout[srt_pos[h] * C + c]);
            }
            dw[cur * C + c] = acc;
        }
        __syncthreads(); // the next tile rewrites the shared lists
    }
}

} // namespace

extern "C" int lt_cuda_embedding_forward(lt_tensor *out, const lt_tensor *weight,
                                         const lt_tensor *ids) {
    const char *op = "embedding_forward";
    int64_t n = lt_tensor_numel(ids), V = weight->sizes[0], C = weight->sizes[1];
    LT_CUDA_CTX(c, lt_device_of(out));
    LT_TRY(check_ids(c, ids, n, V, op));
    if (n == 0 || C == 0) return LT_OK;
    int is64 = ids->dtype_id == LT_DTYPE_I64;
    int wsz = lt_dtype_size(weight->dtype_id), osz = lt_dtype_size(out->dtype_id);
    int W = 16 / wsz;
    int64_t ws = weight->strides[0];
    int vec = ((uintptr_t)lt_tensor_data(weight) % 16 == 0) && (ws * wsz) % 16 == 0 &&
              ((uintptr_t)lt_tensor_data(out) % 16 == 0) && (C * osz) % 16 == 0 && C % W == 0;
    unsigned blocks = lt_blocks_for((n + 7) / 8, 1);
    LT_FLOAT_SWITCH(weight->dtype_id, TW, {
        LT_FLOAT_SWITCH(out->dtype_id, TO, {
            emb_fwd_kernel<TW, TO><<<blocks, 256, 0, c->stream>>>(
                lt_dptr<TO>(out), lt_dptr<TW>(weight), ws, lt_tensor_data(ids), is64, n, C, vec);
        });
    });
    LT_CU_LAUNCH("emb_fwd_kernel");
    return LT_OK;
}

extern "C" int lt_cuda_embedding_backward(lt_tensor *dweight, const lt_tensor *dout,
                                          const lt_tensor *ids) {
    const char *op = "embedding_backward";
    int64_t n = lt_tensor_numel(ids), V = dweight->sizes[0], C = dweight->sizes[1];
    LT_CUDA_CTX(c, lt_device_of(dweight));
    LT_TRY(check_ids(c, ids, n, V, op));
    if (n == 0 || C == 0 || V == 0) return LT_OK;
    int64_t cb = (C + EMB_TILE - 1) / EMB_TILE;
    if (cb > 65535)
        return lt_fail(LT_ERR_UNSUPPORTED, "%s: %lld columns exceed the CUDA kernel's limit of %lld",
                       op, (long long)C, 65535LL * EMB_TILE);
    int sms = c->prop.multiProcessorCount > 0 ? c->prop.multiProcessorCount : 1;
    int64_t rb = (4LL * sms + cb - 1) / cb;
    if (rb > V) rb = V;
    if (rb < 1) rb = 1;
    int64_t rpb = (V + rb - 1) / rb;
    rb = (V + rpb - 1) / rpb;
    dim3 grid((unsigned)rb, (unsigned)cb);
    int is64 = ids->dtype_id == LT_DTYPE_I64;
    LT_FLOAT_SWITCH(dout->dtype_id, TD, {
        emb_bwd_kernel<TD><<<grid, EMB_TILE, 0, c->stream>>>(
            lt_dptr<float>(dweight), lt_dptr<TD>(dout), lt_tensor_data(ids), is64, n, V, C, rpb);
    });
    LT_CU_LAUNCH("emb_bwd_kernel");
    return LT_OK;
}
