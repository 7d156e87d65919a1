/* lowp.c - bf16/f16 tensors through the CPU's f32 kernels (lowp.h says how and why). */
#include "ops/lowp.h"

void lt_lowp_init(lt_lowp *lp) { memset(lp, 0, sizeof *lp); }

static void add(lt_lowp *lp, void *slot, const lt_tensor *t, int out) {
    if (!lt_lowp_cpu(t)) return;
    if (lp->n == LT_LOWP_MAX) {
        lp->failed = 1;
        return;
    }
    lp->slot[lp->n] = slot;
    lp->orig[lp->n] = t;
    lp->out[lp->n] = out;
    lp->n++;
}

void lt_lowp_in(lt_lowp *lp, const lt_tensor **t) { add(lp, (void *)t, *t, 0); }

void lt_lowp_out(lt_lowp *lp, lt_tensor **t) { add(lp, (void *)t, *t, 1); }

/* The lowest and highest storage elements the view reaches (its offset alone when empty). */
static void extent(const lt_tensor *t, int64_t *lo, int64_t *hi) {
    *lo = *hi = t->offset;
    if (lt_tensor_numel(t) == 0) return;
    for (int d = 0; d < t->ndim; d++) {
        int64_t span = (t->sizes[d] - 1) * t->strides[d];
        if (span < 0)
            *lo += span;
        else
            *hi += span;
    }
}

/* n elements from src (dtype sdt) to dst (dtype ddt); one side is f32. */
static void convert_run(char *dst, int ddt, const char *src, int sdt, int64_t n) {
    if (sdt == LT_DTYPE_F32)
        lt_convert_from_f32(dst, ddt, (const float *)src, n);
    else
        lt_convert_to_f32((float *)dst, src, sdt, n);
}

/* Every element of the view `shape` (sizes and strides in elements) from src to dst, two
   buffers laid out alike around their view's first element. A contiguous view is one run
   cut into chunks for the threads; otherwise runs along the last dim when it has unit
   stride, single elements when not. */
static void convert_view(char *dst, int ddt, const char *src, int sdt, const lt_tensor *shape) {
    int64_t numel = lt_tensor_numel(shape);
    if (numel == 0) return;
    int dsz = lt_dtype_size(ddt), ssz = lt_dtype_size(sdt);
    if (lt_tensor_is_contiguous(shape)) {
        enum { CHUNK = 1 << 16 };
        int64_t nchunk = (numel + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (numel >= LT_PAR_MIN_WORK)
        for (int64_t c = 0; c < nchunk; c++) {
            int64_t i0 = c * CHUNK, len = numel - i0 < CHUNK ? numel - i0 : CHUNK;
            convert_run(dst + i0 * dsz, ddt, src + i0 * ssz, sdt, len);
        }
        return;
    }
    int nd = shape->ndim;
    int unit_last = nd > 0 && shape->strides[nd - 1] == 1;
    int outer_dims = unit_last ? nd - 1 : nd;
    int64_t run = unit_last ? shape->sizes[nd - 1] : 1;
    int64_t outer = numel / run;
#pragma omp parallel for schedule(static) if (numel >= LT_PAR_MIN_WORK)
    for (int64_t o = 0; o < outer; o++) {
        int64_t rem = o, e = 0;
        for (int d = outer_dims - 1; d >= 0; d--) {
            e += (rem % shape->sizes[d]) * shape->strides[d];
            rem /= shape->sizes[d];
        }
        convert_run(dst + e * dsz, ddt, src + e * ssz, sdt, run);
    }
}

static char *first_element(const lt_tensor *t) {
    return (char *)t->storage->data + t->offset * lt_dtype_size(t->dtype_id);
}

int lt_lowp_begin(lt_lowp *lp, const char *fn) {
    if (lp->failed)
        return LT_INTERNAL("%s: more than %d bf16/f16 tensors in one call", fn, LT_LOWP_MAX);
    int64_t hi[LT_LOWP_MAX];
    /* one shadow per storage, over the union of the extents of its views */
    for (int i = 0; i < lp->n; i++) {
        int64_t l, h;
        extent(lp->orig[i], &l, &h);
        int g = 0;
        while (g < lp->nshadow && lp->orig[lp->group_first[g]]->storage != lp->orig[i]->storage)
            g++;
        if (g == lp->nshadow) {
            lp->group_first[g] = i;
            lp->lo[g] = l;
            hi[g] = h;
            lp->nshadow++;
        } else {
            if (l < lp->lo[g]) lp->lo[g] = l;
            if (h > hi[g]) hi[g] = h;
        }
        lp->group[i] = g;
    }
    for (int g = 0; g < lp->nshadow; g++) {
        int64_t len = hi[g] - lp->lo[g] + 1;
        int st = lt_tensor_empty(&lp->shadow[g], LT_DTYPE_F32, 1, &len, LT_DEVICE_CPU, 0);
        if (st != LT_OK) {
            lt_lowp_end(lp, st);
            return lt_fail_prefix(st, "%s: the f32 copy of a %s tensor: ", fn,
                                  lt_dtype_info(lp->orig[lp->group_first[g]]->dtype_id)->name);
        }
    }
    for (int i = 0; i < lp->n; i++) {
        const lt_tensor *t = lp->orig[i];
        lt_tensor *w = &lp->twin[i];
        *w = *t; /* sizes, strides, ndim; the shadow's storage is not retained again */
        w->storage = lp->shadow[lp->group[i]].storage;
        w->offset = t->offset - lp->lo[lp->group[i]];
        w->dtype_id = LT_DTYPE_F32;
        convert_view(first_element(w), LT_DTYPE_F32, first_element(t), t->dtype_id, t);
    }
    for (int i = 0; i < lp->n; i++) *(const lt_tensor **)lp->slot[i] = &lp->twin[i];
    return LT_OK;
}

int lt_lowp_end(lt_lowp *lp, int st) {
    if (st == LT_OK)
        for (int i = 0; i < lp->n; i++)
            if (lp->out[i] && lp->twin[i].storage) {
                const lt_tensor *t = lp->orig[i];
                convert_view(first_element(t), t->dtype_id, first_element(&lp->twin[i]),
                             LT_DTYPE_F32, t);
            }
    for (int i = 0; i < lp->n; i++) {
        *(const lt_tensor **)lp->slot[i] = lp->orig[i];
        memset(&lp->twin[i], 0, sizeof lp->twin[i]);
    }
    for (int g = 0; g < lp->nshadow; g++) lt_tensor_release(&lp->shadow[g]);
    lp->nshadow = 0;
    return st;
}
