/* embedding.c - token embedding lookup and its scatter-add gradient.
 *
 * The gradient of a row is added to dweight once per call: the contributions of every token
 * with that id are summed first, in token order, then added. So the gradient of several
 * calls (micro-batches, or ranks whose gradients are summed afterwards) is the sum of each
 * call's gradient, rounded the same whichever way the calls are split or added: one
 * process accumulating two micro-batches and two ranks summing one each agree bit for bit.
 *
 * CUDA tensors go to cuda/embedding.cu after the checks below, which hold on every device;
 * the dtypes are the support table's (ops/support.c: out and dout f32, bf16 or f16, here
 * through f32 twins, ops/lowp.h; the weight any float dtype; dweight f32), and ids are
 * range-checked on the device. */
#include <stdlib.h>

#include "core/internal.h"
#include "lt_ops.h"
#include "ops/lowp.h"
#include "ops/support.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* ids must be contiguous i32/i64; returns the flat count. */
static int check_ids(const lt_tensor *ids, const char *op, int64_t *n) {
    LT_TRY(lt_check_tensor(ids, op, "ids"));
    if (!lt_is_index_dtype(ids->dtype_id))
        return lt_fail(LT_ERR_DTYPE, "%s: ids must be i32 or i64, got %s", op,
                       lt_dtype_info(ids->dtype_id)->name);
    if (!lt_tensor_is_contiguous(ids)) return lt_fail(LT_ERR_ARG, "%s: ids must be contiguous", op);
    *n = lt_tensor_numel(ids);
    return LT_OK;
}

/* The first id outside [0, V), reported with its flat position. */
static int check_id_range(const void *ids, int dt, int64_t n, int64_t V, const char *op) {
    for (int64_t i = 0; i < n; i++) {
        int64_t id = lt_load_index(ids, dt, i);
        if (id < 0 || id >= V)
            return lt_fail(LT_ERR_RANGE, "%s: id %lld at position %lld is outside the vocabulary [0, %lld)",
                           op, (long long)id, (long long)i, (long long)V);
    }
    return LT_OK;
}

/* out (..., C) f32 = weight[ids] with weight (V, C) f32/bf16/f16 */
int lt_embedding_forward(lt_tensor *out, const lt_tensor *weight, const lt_tensor *ids) {
    const char *op = "embedding_forward";
    int64_t n;
    LT_TRY(check_ids(ids, op, &n));
    LT_TRY(lt_check_ndim(weight, 2, op, "weight"));
    LT_TRY(lt_op_check_dtype(LT_OP_EMBEDDING, LT_OP_ROLE_READ, weight, op, "weight"));
    if (weight->strides[1] != 1)
        return lt_fail(LT_ERR_ARG, "%s: weight must have unit stride in its rows", op);
    LT_TRY(lt_op_check_contig(LT_OP_EMBEDDING, LT_OP_ROLE_MAIN, out, op, "out"));
    LT_TRY(lt_op_check_out(LT_OP_EMBEDDING, out, op, "out", weight, "weight"));
    int64_t V = weight->sizes[0], C = weight->sizes[1];
    if (lt_tensor_numel(out) != n * C || out->ndim == 0 || out->sizes[out->ndim - 1] != C) {
        char so[128], si[128];
        return lt_fail(LT_ERR_SHAPE, "%s: out %s must be ids %s plus a last dim of %lld", op,
                       lt_shape_str(out, so, sizeof so), lt_shape_str(ids, si, sizeof si),
                       (long long)C);
    }
    LT_TRY(lt_check_same_device(ids, out, op, "ids", "out"));
    LT_DISPATCH_CUDA(out, lt_cuda_embedding_forward(out, weight, ids));
    if (lt_lowp_cpu(out)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_out(&lp, &out);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK) st = lt_embedding_forward(out, weight, ids);
        return lt_lowp_end(&lp, st);
    }
    const void *idp = lt_tensor_data(ids);
    LT_TRY(check_id_range(idp, ids->dtype_id, n, V, op));
    const char *w = lt_tensor_data(weight);
    int esz = lt_dtype_size(weight->dtype_id);
    int64_t ws = weight->strides[0];
    float *o = lt_tensor_data(out);
#pragma omp parallel for schedule(static) if (n * C >= LT_PAR_MIN_WORK)
    for (int64_t i = 0; i < n; i++) {
        int64_t id = lt_load_index(idp, ids->dtype_id, i);
        lt_convert_to_f32(o + i * C, w + id * ws * esz, weight->dtype_id, C);
    }
    return LT_OK;
}

/* dweight (V, C) f32 += sum over positions i of dout[i] into row ids[i].
   Threads own disjoint ranges of vocabulary rows, so no two threads add into one row and
   the sum order per row is the position order: deterministic for any thread count. */
int lt_embedding_backward(lt_tensor *dweight, const lt_tensor *dout, const lt_tensor *ids) {
    const char *op = "embedding_backward";
    int64_t n;
    LT_TRY(check_ids(ids, op, &n));
    LT_TRY(lt_check_ndim(dweight, 2, op, "dweight"));
    LT_TRY(lt_check_contig_float(dweight, 0, op, "dweight"));
    LT_TRY(lt_op_check_contig(LT_OP_EMBEDDING, LT_OP_ROLE_MAIN, dout, op, "dout"));
    LT_TRY(lt_check_out(dweight, LT_OUT_ANY_DTYPE, op, "dweight", dout, "dout"));
    int64_t V = dweight->sizes[0], C = dweight->sizes[1];
    if (lt_tensor_numel(dout) != n * C) {
        char sd[128], si[128];
        return lt_fail(LT_ERR_SHAPE, "%s: dout %s must be ids %s plus a last dim of %lld", op,
                       lt_shape_str(dout, sd, sizeof sd), lt_shape_str(ids, si, sizeof si),
                       (long long)C);
    }
    LT_TRY(lt_check_same_device(ids, dweight, op, "ids", "dweight"));
    LT_DISPATCH_CUDA(dweight, lt_cuda_embedding_backward(dweight, dout, ids));
    if (lt_lowp_cpu(dout)) {
        lt_lowp lp;
        lt_lowp_init(&lp);
        lt_lowp_in(&lp, &dout);
        int st = lt_lowp_begin(&lp, op);
        if (st == LT_OK) st = lt_embedding_backward(dweight, dout, ids);
        return lt_lowp_end(&lp, st);
    }
    const void *idp = lt_tensor_data(ids);
    LT_TRY(check_id_range(idp, ids->dtype_id, n, V, op));
    float *dw = lt_tensor_data(dweight);
    const float *d = lt_tensor_data(dout);
    if (n == 0 || C == 0) return LT_OK;
    /* the tokens of each id as a chain in token order: first[id] (V), then next[i] (n);
       the chain of an id is summed into a row of scratch before dweight's row is touched */
    int nthr = 1;
#ifdef _OPENMP
    nthr = omp_get_max_threads();
#endif
    int64_t *first = malloc((size_t)V * sizeof *first), *next = malloc((size_t)n * sizeof *next),
            *last = malloc((size_t)V * sizeof *last);
    float *accs = malloc((size_t)nthr * (size_t)C * sizeof *accs); /* a row per thread */
    if (!first || !next || !last || !accs) {
        free(first);
        free(next);
        free(last);
        free(accs);
        return lt_fail(LT_ERR_NOMEM, "%s: cannot allocate the token chains of %lld ids", op,
                       (long long)V);
    }
    for (int64_t v = 0; v < V; v++) first[v] = -1;
    for (int64_t i = 0; i < n; i++) {
        int64_t id = lt_load_index(idp, ids->dtype_id, i);
        next[i] = -1;
        if (first[id] < 0) first[id] = i;
        else next[last[id]] = i;
        last[id] = i;
    }
#pragma omp parallel num_threads(nthr) if (n * C >= LT_PAR_MIN_WORK)
    {
        int nt = 1, tid = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads();
        tid = omp_get_thread_num();
#endif
        int64_t lo = V * tid / nt, hi = V * (tid + 1) / nt;
        float *acc = accs + (size_t)tid * (size_t)C;
        for (int64_t i = 0; i < n; i++) {
            int64_t id = lt_load_index(idp, ids->dtype_id, i);
            if (id < lo || id >= hi || first[id] != i) continue;
            const float *src = d + i * C;
            for (int64_t c = 0; c < C; c++) acc[c] = src[c];
            for (int64_t j = next[i]; j >= 0; j = next[j]) {
                const float *more = d + j * C;
                for (int64_t c = 0; c < C; c++) acc[c] += more[c];
            }
            float *row = dw + id * C;
            for (int64_t c = 0; c < C; c++) row[c] += acc[c];
        }
    }
    free(first);
    free(next);
    free(last);
    free(accs);
    return LT_OK;
}
