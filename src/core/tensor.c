/* tensor.c - tensor headers: construction, views, resize, copies and conversions. */
#include <stdio.h>
#include <stdlib.h>

#include "core/internal.h"

/* ---- checks and small helpers -------------------------------------------------------- */

int lt_numel_checked(int ndim, const int64_t *sizes, int64_t *out) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (sizes[i] < 0)
            return lt_fail(LT_ERR_SHAPE, "negative size %lld in dim %d", (long long)sizes[i], i);
        if (sizes[i] != 0 && n > INT64_MAX / sizes[i])
            return lt_fail(LT_ERR_RANGE, "tensor shape overflows 64-bit element count");
        n *= sizes[i];
    }
    *out = n;
    return LT_OK;
}

const char *lt_shape_str(const lt_tensor *t, char *buf, size_t len) {
    size_t used = 0;
    int n = snprintf(buf, len, "(");
    used = n > 0 ? (size_t)n : 0;
    for (int i = 0; t && i < t->ndim && used < len; i++) {
        n = snprintf(buf + used, len - used, i ? ", %lld" : "%lld", (long long)t->sizes[i]);
        if (n > 0) used += (size_t)n;
    }
    if (used < len) snprintf(buf + used, len - used, ")");
    return buf;
}

static const char *dtname(int dt) {
    const lt_dtype_traits *tr = lt_dtype_info(dt);
    return tr ? tr->name : "?";
}

int lt_check_tensor(const lt_tensor *t, const char *op, const char *name) {
    if (!t) return lt_fail(LT_ERR_ARG, "%s: %s is NULL", op, name);
    if (!t->storage) return lt_fail(LT_ERR_ARG, "%s: %s is an empty (released) tensor", op, name);
    if (t->ndim < 0 || t->ndim > LT_MAX_DIMS)
        return LT_INTERNAL("%s: %s has ndim %d", op, name, t->ndim);
    return LT_OK;
}

int lt_check_cpu(const lt_tensor *t, const char *op, const char *name) {
    LT_TRY(lt_check_tensor(t, op, name));
    if (t->storage->device_type != LT_DEVICE_CPU)
        return lt_fail(LT_ERR_DEVICE, "%s: %s is on a CUDA device; this kernel runs on the CPU",
                       op, name);
    return LT_OK;
}

int lt_check_dtype(const lt_tensor *t, int dtype, const char *op, const char *name) {
    LT_TRY(lt_check_tensor(t, op, name));
    if (t->dtype_id != dtype)
        return lt_fail(LT_ERR_DTYPE, "%s: %s must be %s, got %s", op, name, dtname(dtype),
                       dtname(t->dtype_id));
    return LT_OK;
}

int lt_check_f32_contig(const lt_tensor *t, const char *op, const char *name) {
    LT_TRY(lt_check_cpu(t, op, name));
    LT_TRY(lt_check_dtype(t, LT_DTYPE_F32, op, name));
    if (!lt_tensor_is_contiguous(t))
        return lt_fail(LT_ERR_ARG, "%s: %s must be contiguous (call :contiguous())", op, name);
    return LT_OK;
}

int lt_check_contig_float(const lt_tensor *t, int lowp_on_cuda, const char *op,
                          const char *name) {
    LT_TRY(lt_check_tensor(t, op, name));
    if (!lt_on_cuda(t)) return lt_check_f32_contig(t, op, name);
    if (lowp_on_cuda ? !lt_is_float_dtype(t->dtype_id) : t->dtype_id != LT_DTYPE_F32)
        return lt_fail(LT_ERR_DTYPE, "%s: %s must be %s, got %s", op, name,
                       lowp_on_cuda ? "f32, bf16 or f16" : "f32", dtname(t->dtype_id));
    if (!lt_tensor_is_contiguous(t))
        return lt_fail(LT_ERR_ARG, "%s: %s must be contiguous (call :contiguous())", op, name);
    return LT_OK;
}

int lt_check_ndim(const lt_tensor *t, int ndim, const char *op, const char *name) {
    LT_TRY(lt_check_tensor(t, op, name));
    if (t->ndim != ndim) {
        char b[128];
        return lt_fail(LT_ERR_SHAPE, "%s: %s must have %d dims, got shape %s", op, name, ndim,
                       lt_shape_str(t, b, sizeof b));
    }
    return LT_OK;
}

int lt_check_same_shape(const lt_tensor *a, const lt_tensor *b, const char *op, const char *na,
                        const char *nb) {
    int same = a->ndim == b->ndim;
    for (int i = 0; same && i < a->ndim; i++) same = a->sizes[i] == b->sizes[i];
    if (!same) {
        char sa[128], sb[128];
        return lt_fail(LT_ERR_SHAPE, "%s: %s has shape %s but %s has shape %s", op, na,
                       lt_shape_str(a, sa, sizeof sa), nb, lt_shape_str(b, sb, sizeof sb));
    }
    return LT_OK;
}

int lt_check_writable(const lt_tensor *t, const char *op, const char *name) {
    LT_TRY(lt_check_tensor(t, op, name));
    if (t->storage->readonly)
        return lt_fail(LT_ERR_ARG, "%s: %s is read-only", op, name);
    return LT_OK;
}

int lt_check_out(const lt_tensor *t, int dtype, const char *op, const char *name,
                 const lt_tensor *in, const char *in_name) {
    LT_TRY(lt_check_tensor(t, op, name));
    if (dtype != LT_OUT_ANY_DTYPE) LT_TRY(lt_check_dtype(t, dtype, op, name));
    LT_TRY(lt_check_writable(t, op, name));
    for (int i = 0; i < t->ndim; i++)
        if (t->sizes[i] > 1 && t->strides[i] == 0)
            return lt_fail(LT_ERR_ARG,
                           "%s: %s is a broadcast view (stride 0 in dim %d) whose elements "
                           "alias; it cannot be written",
                           op, name, i);
    return in ? lt_check_same_device(in, t, op, in_name, name) : LT_OK;
}

int64_t lt_row_stride(const lt_tensor *t) {
    if (t->ndim == 0) return 1;
    if (t->strides[t->ndim - 1] != 1 && t->sizes[t->ndim - 1] > 1) return -1;
    if (t->ndim == 1) return t->sizes[0];
    /* leading dims must nest: stride[i] == stride[i+1] * size[i+1] for i < ndim-2 */
    for (int i = 0; i < t->ndim - 2; i++)
        if (t->sizes[i] > 1 && t->strides[i] != t->strides[i + 1] * t->sizes[i + 1]) return -1;
    return t->strides[t->ndim - 2];
}

/* ---- construction -------------------------------------------------------------------- */

void lt_tensor_release(lt_tensor *t) {
    if (!t) return;
    lt_storage_release(t->storage);
    memset(t, 0, sizeof *t);
}

static void set_contiguous_strides(lt_tensor *t) {
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        t->strides[i] = s;
        s *= t->sizes[i] > 0 ? t->sizes[i] : 1;
    }
}

static int check_shape_args(int dtype, int ndim, const int64_t *sizes, int64_t *nbytes) {
    if (!lt_dtype_info(dtype)) return lt_fail(LT_ERR_DTYPE, "unknown dtype %d", dtype);
    if (ndim < 0 || ndim > LT_MAX_DIMS)
        return lt_fail(LT_ERR_SHAPE, "%d dims requested; at most %d are supported", ndim,
                       LT_MAX_DIMS);
    if (ndim > 0 && !sizes) return lt_fail(LT_ERR_ARG, "sizes is NULL");
    int64_t numel;
    LT_TRY(lt_numel_checked(ndim, sizes, &numel));
    return lt_dtype_nbytes(dtype, numel, nbytes);
}

int lt_tensor_empty(lt_tensor *t, int dtype, int ndim, const int64_t *sizes, int device_type,
                    int device_index) {
    if (!t) return lt_fail(LT_ERR_ARG, "lt_tensor_empty: tensor is NULL");
    int64_t nbytes;
    LT_TRY(check_shape_args(dtype, ndim, sizes, &nbytes));
    lt_storage *s;
    LT_TRY(lt_storage_new(&s, nbytes, device_type, device_index));
    lt_tensor_release(t);
    t->storage = s;
    t->ndim = ndim;
    t->dtype_id = dtype;
    for (int i = 0; i < ndim; i++) t->sizes[i] = sizes[i];
    set_contiguous_strides(t);
    return LT_OK;
}

int lt_tensor_zeros(lt_tensor *t, int dtype, int ndim, const int64_t *sizes, int device_type,
                    int device_index) {
    LT_TRY(lt_tensor_empty(t, dtype, ndim, sizes, device_type, device_index));
    LT_DISPATCH_CUDA(t, lt_cuda_fill(t, 0.0));
    if (t->storage->nbytes) memset(t->storage->data, 0, (size_t)t->storage->nbytes);
    return LT_OK;
}

int lt_tensor_empty_pinned(lt_tensor *t, int dtype, int ndim, const int64_t *sizes) {
    if (!t) return lt_fail(LT_ERR_ARG, "lt_tensor_empty_pinned: tensor is NULL");
    int64_t nbytes;
    LT_TRY(check_shape_args(dtype, ndim, sizes, &nbytes));
    lt_storage *s;
    LT_TRY(lt_storage_new_pinned(&s, nbytes));
    lt_tensor_release(t);
    t->storage = s;
    t->ndim = ndim;
    t->dtype_id = dtype;
    for (int i = 0; i < ndim; i++) t->sizes[i] = sizes[i];
    set_contiguous_strides(t);
    return LT_OK;
}

int lt_tensor_empty_paged(lt_tensor *t, int dtype, int ndim, const int64_t *sizes) {
    if (!t) return lt_fail(LT_ERR_ARG, "lt_tensor_empty_paged: tensor is NULL");
    int64_t nbytes;
    LT_TRY(check_shape_args(dtype, ndim, sizes, &nbytes));
    lt_storage *s;
    LT_TRY(lt_storage_new_paged(&s, nbytes));
    lt_tensor_release(t);
    t->storage = s;
    t->ndim = ndim;
    t->dtype_id = dtype;
    for (int i = 0; i < ndim; i++) t->sizes[i] = sizes[i];
    set_contiguous_strides(t);
    return LT_OK;
}

int lt_tensor_from_buffer(lt_tensor *t, int dtype, int ndim, const int64_t *sizes,
                          const void *data, int64_t nbytes) {
    int64_t need;
    LT_TRY(check_shape_args(dtype, ndim, sizes, &need));
    if (need != nbytes)
        return lt_fail(LT_ERR_SHAPE, "buffer holds %lld bytes but the shape needs %lld",
                       (long long)nbytes, (long long)need);
    if (nbytes && !data) return lt_fail(LT_ERR_ARG, "lt_tensor_from_buffer: data is NULL");
    LT_TRY(lt_tensor_empty(t, dtype, ndim, sizes, LT_DEVICE_CPU, 0));
    if (nbytes) memcpy(t->storage->data, data, (size_t)nbytes);
    return LT_OK;
}

int lt_tensor_resize(lt_tensor *t, int dtype, int ndim, const int64_t *sizes, int device_type,
                     int device_index) {
    if (!t) return lt_fail(LT_ERR_ARG, "lt_tensor_resize: tensor is NULL");
    int64_t nbytes;
    LT_TRY(check_shape_args(dtype, ndim, sizes, &nbytes));
    if (t->storage && t->storage->kind == LT_STORAGE_OWNED && t->storage->nbytes >= nbytes) {
        /* Reuse: same storage, offset 0, contiguous. */
        t->offset = 0;
        t->ndim = ndim;
        t->dtype_id = dtype;
        for (int i = 0; i < ndim; i++) t->sizes[i] = sizes[i];
        set_contiguous_strides(t);
        return LT_OK;
    }
    if (t->storage) {
        device_type = t->storage->device_type;
        device_index = t->storage->device_index;
    }
    return lt_tensor_empty(t, dtype, ndim, sizes, device_type, device_index);
}

/* ---- views --------------------------------------------------------------------------- */

/* Check that every element a view can reach lies inside its storage. */
static int check_view_bounds(const lt_storage *s, int dtype, int ndim, const int64_t *sizes,
                             const int64_t *strides, int64_t offset) {
    if (offset < 0) return lt_fail(LT_ERR_RANGE, "view offset %lld is negative", (long long)offset);
    int64_t last = offset, numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (sizes[i] < 0)
            return lt_fail(LT_ERR_SHAPE, "negative size %lld in dim %d", (long long)sizes[i], i);
        if (strides[i] < 0)
            return lt_fail(LT_ERR_ARG, "negative stride %lld in dim %d", (long long)strides[i], i);
        numel *= sizes[i];
        if (sizes[i] > 0) last += (sizes[i] - 1) * strides[i];
    }
    if (numel == 0) return LT_OK;
    int64_t need;
    LT_TRY(lt_dtype_nbytes(dtype, last + 1, &need));
    if (need > s->nbytes)
        return lt_fail(LT_ERR_RANGE,
                       "view reaches element %lld but its storage holds %lld bytes",
                       (long long)last, (long long)s->nbytes);
    return LT_OK;
}

/* Fill dst as a view with the given geometry. dst may alias src. */
static int make_view(lt_tensor *dst, const lt_tensor *src, int ndim, const int64_t *sizes,
                     const int64_t *strides, int64_t offset) {
    lt_tensor tmp = {0};
    tmp.storage = src->storage;
    tmp.dtype_id = src->dtype_id;
    tmp.ndim = ndim;
    tmp.offset = offset;
    for (int i = 0; i < ndim; i++) {
        tmp.sizes[i] = sizes[i];
        tmp.strides[i] = strides[i];
    }
    lt_storage_retain(src->storage);
    lt_tensor_release(dst);
    *dst = tmp;
    return LT_OK;
}

static int check_dim(const lt_tensor *t, int *dim, const char *op) {
    int d = *dim;
    if (d < 0) d += t->ndim;
    if (d < 0 || d >= t->ndim)
        return lt_fail(LT_ERR_ARG, "%s: dim %d out of range for a %d-dim tensor", op, *dim,
                       t->ndim);
    *dim = d;
    return LT_OK;
}

int lt_tensor_share(lt_tensor *dst, const lt_tensor *src) {
    LT_TRY(lt_check_tensor(src, "share", "src"));
    if (!dst) return lt_fail(LT_ERR_ARG, "share: dst is NULL");
    if (dst == src) return LT_OK;
    return make_view(dst, src, src->ndim, src->sizes, src->strides, src->offset);
}

int lt_tensor_as_strided(lt_tensor *dst, const lt_tensor *src, int ndim, const int64_t *sizes,
                         const int64_t *strides, int64_t offset) {
    LT_TRY(lt_check_tensor(src, "as_strided", "src"));
    if (ndim < 0 || ndim > LT_MAX_DIMS)
        return lt_fail(LT_ERR_SHAPE, "as_strided: %d dims (at most %d)", ndim, LT_MAX_DIMS);
    LT_TRY(check_view_bounds(src->storage, src->dtype_id, ndim, sizes, strides, offset));
    return make_view(dst, src, ndim, sizes, strides, offset);
}

int lt_tensor_view_bytes(lt_tensor *dst, const lt_tensor *src, int dtype, int ndim, const int64_t *sizes,
                         int64_t byte_offset) {
    LT_TRY(lt_check_tensor(src, "view_bytes", "src"));
    if (ndim < 0 || ndim > LT_MAX_DIMS)
        return lt_fail(LT_ERR_SHAPE, "view_bytes: %d dims (at most %d)", ndim, LT_MAX_DIMS);
    int64_t nbytes;
    LT_TRY(check_shape_args(dtype, ndim, sizes, &nbytes));
    int esz = lt_dtype_size(dtype);
    int64_t start = src->offset * lt_dtype_size(src->dtype_id) + byte_offset;
    if (byte_offset < 0 || start % esz != 0)
        return lt_fail(LT_ERR_ARG, "view_bytes: byte offset %lld is not a multiple of the %d-byte %s",
                       (long long)byte_offset, esz, lt_dtype_info(dtype)->name);
    if (start + nbytes > src->storage->nbytes)
        return lt_fail(LT_ERR_RANGE, "view_bytes: %lld bytes at %lld pass the storage's %lld", (long long)nbytes,
                       (long long)start, (long long)src->storage->nbytes);
    lt_tensor tmp = {0};
    tmp.storage = src->storage;
    tmp.dtype_id = dtype;
    tmp.ndim = ndim;
    tmp.offset = start / esz;
    for (int i = 0; i < ndim; i++) tmp.sizes[i] = sizes[i];
    set_contiguous_strides(&tmp);
    lt_storage_retain(src->storage);
    lt_tensor_release(dst);
    *dst = tmp;
    return LT_OK;
}

int lt_tensor_reshape(lt_tensor *dst, const lt_tensor *src, int ndim, const int64_t *sizes_in) {
    LT_TRY(lt_check_tensor(src, "reshape", "src"));
    if (ndim < 0 || ndim > LT_MAX_DIMS)
        return lt_fail(LT_ERR_SHAPE, "reshape: %d dims (at most %d)", ndim, LT_MAX_DIMS);
    int64_t sizes[LT_MAX_DIMS];
    int infer = -1;
    int64_t known = 1;
    for (int i = 0; i < ndim; i++) {
        sizes[i] = sizes_in[i];
        if (sizes[i] == -1) {
            if (infer >= 0) return lt_fail(LT_ERR_SHAPE, "reshape: only one size may be -1");
            infer = i;
        } else if (sizes[i] < 0) {
            return lt_fail(LT_ERR_SHAPE, "reshape: invalid size %lld", (long long)sizes[i]);
        } else {
            if (sizes[i] != 0 && known > INT64_MAX / sizes[i])
                return lt_fail(LT_ERR_RANGE, "reshape: shape overflows");
            known *= sizes[i];
        }
    }
    int64_t numel = lt_tensor_numel(src);
    if (infer >= 0) {
        if (known == 0 || numel % known != 0) {
            char b[128];
            return lt_fail(LT_ERR_SHAPE, "reshape: cannot infer -1 for %lld elements of shape %s",
                           (long long)numel, lt_shape_str(src, b, sizeof b));
        }
        sizes[infer] = numel / known;
        known = numel;
    }
    if (known != numel) {
        char b[128];
        return lt_fail(LT_ERR_SHAPE, "reshape: shape %s has %lld elements, new shape has %lld",
                       lt_shape_str(src, b, sizeof b), (long long)numel, (long long)known);
    }
    /* Find strides: walk the old dims in chunks that are contiguous among themselves and
       split each chunk over the new dims it covers (the algorithm torch calls computeStride). */
    int64_t strides[LT_MAX_DIMS];
    if (numel == 0 || lt_tensor_is_contiguous(src)) {
        int64_t s = 1;
        for (int i = ndim - 1; i >= 0; i--) {
            strides[i] = s;
            s *= sizes[i] > 0 ? sizes[i] : 1;
        }
        return make_view(dst, src, ndim, sizes, strides, src->offset);
    }
    int view_d = ndim - 1;
    int64_t chunk_base_stride = src->ndim ? src->strides[src->ndim - 1] : 1;
    int64_t tensor_numel = 1, view_numel = 1;
    for (int tensor_d = src->ndim - 1; tensor_d >= 0; tensor_d--) {
        tensor_numel *= src->sizes[tensor_d];
        if (tensor_d == 0 ||
            (src->sizes[tensor_d - 1] != 1 &&
             src->strides[tensor_d - 1] != tensor_numel * chunk_base_stride)) {
            while (view_d >= 0 && (view_numel < tensor_numel || sizes[view_d] == 1)) {
                strides[view_d] = view_numel * chunk_base_stride;
                view_numel *= sizes[view_d];
                view_d--;
            }
            if (view_numel != tensor_numel)
                return lt_fail(LT_ERR_SHAPE,
                               "reshape: the tensor's strides do not allow a view of this "
                               "shape; make a contiguous copy first (:contiguous())");
            if (tensor_d > 0) {
                chunk_base_stride = src->strides[tensor_d - 1];
                tensor_numel = 1;
                view_numel = 1;
            }
        }
    }
    if (view_d != -1) return LT_INTERNAL("reshape stride computation left dim %d", view_d);
    return make_view(dst, src, ndim, sizes, strides, src->offset);
}

int lt_tensor_permute(lt_tensor *dst, const lt_tensor *src, const int32_t *perm) {
    LT_TRY(lt_check_tensor(src, "permute", "src"));
    int64_t sizes[LT_MAX_DIMS], strides[LT_MAX_DIMS];
    int seen[LT_MAX_DIMS] = {0};
    for (int i = 0; i < src->ndim; i++) {
        int p = perm[i];
        if (p < 0) p += src->ndim;
        if (p < 0 || p >= src->ndim || seen[p])
            return lt_fail(LT_ERR_ARG, "permute: entry %d (%d) is not a permutation of 0..%d", i,
                           perm[i], src->ndim - 1);
        seen[p] = 1;
        sizes[i] = src->sizes[p];
        strides[i] = src->strides[p];
    }
    return make_view(dst, src, src->ndim, sizes, strides, src->offset);
}

int lt_tensor_transpose(lt_tensor *dst, const lt_tensor *src, int dim0, int dim1) {
    LT_TRY(lt_check_tensor(src, "transpose", "src"));
    LT_TRY(check_dim(src, &dim0, "transpose"));
    LT_TRY(check_dim(src, &dim1, "transpose"));
    int64_t sizes[LT_MAX_DIMS], strides[LT_MAX_DIMS];
    memcpy(sizes, src->sizes, sizeof sizes);
    memcpy(strides, src->strides, sizeof strides);
    sizes[dim0] = src->sizes[dim1];
    sizes[dim1] = src->sizes[dim0];
    strides[dim0] = src->strides[dim1];
    strides[dim1] = src->strides[dim0];
    return make_view(dst, src, src->ndim, sizes, strides, src->offset);
}

int lt_tensor_slice(lt_tensor *dst, const lt_tensor *src, int dim, int64_t start, int64_t stop,
                    int64_t step) {
    LT_TRY(lt_check_tensor(src, "slice", "src"));
    LT_TRY(check_dim(src, &dim, "slice"));
    if (step < 1) return lt_fail(LT_ERR_ARG, "slice: step must be >= 1, got %lld", (long long)step);
    int64_t n = src->sizes[dim];
    if (start < 0) start += n;
    if (stop < 0) stop += n;
    if (start < 0) start = 0;
    if (start > n) start = n;
    if (stop > n) stop = n;
    if (stop < start) stop = start;
    int64_t sizes[LT_MAX_DIMS], strides[LT_MAX_DIMS];
    memcpy(sizes, src->sizes, sizeof sizes);
    memcpy(strides, src->strides, sizeof strides);
    sizes[dim] = (stop - start + step - 1) / step;
    strides[dim] = src->strides[dim] * step;
    return make_view(dst, src, src->ndim, sizes, strides, src->offset + start * src->strides[dim]);
}

int lt_tensor_narrow(lt_tensor *dst, const lt_tensor *src, int dim, int64_t start,
                     int64_t length) {
    LT_TRY(lt_check_tensor(src, "narrow", "src"));
    LT_TRY(check_dim(src, &dim, "narrow"));
    int64_t n = src->sizes[dim];
    if (start < 0 || length < 0 || start > n || length > n - start)
        return lt_fail(LT_ERR_RANGE,
                       "narrow: [%lld, %lld) is outside dim %d of size %lld", (long long)start,
                       (long long)(start + length), dim, (long long)n);
    return lt_tensor_slice(dst, src, dim, start, start + length, 1);
}

int lt_tensor_select(lt_tensor *dst, const lt_tensor *src, int dim, int64_t index) {
    LT_TRY(lt_check_tensor(src, "select", "src"));
    LT_TRY(check_dim(src, &dim, "select"));
    int64_t n = src->sizes[dim];
    if (index < 0) index += n;
    if (index < 0 || index >= n)
        return lt_fail(LT_ERR_RANGE, "select: index %lld out of range for dim %d of size %lld",
                       (long long)index, dim, (long long)n);
    int64_t sizes[LT_MAX_DIMS], strides[LT_MAX_DIMS];
    int k = 0;
    for (int i = 0; i < src->ndim; i++) {
        if (i == dim) continue;
        sizes[k] = src->sizes[i];
        strides[k] = src->strides[i];
        k++;
    }
    return make_view(dst, src, src->ndim - 1, sizes, strides,
                     src->offset + index * src->strides[dim]);
}

int lt_tensor_expand(lt_tensor *dst, const lt_tensor *src, int ndim, const int64_t *sizes) {
    LT_TRY(lt_check_tensor(src, "expand", "src"));
    if (ndim < src->ndim || ndim > LT_MAX_DIMS)
        return lt_fail(LT_ERR_SHAPE, "expand: cannot expand %d dims to %d", src->ndim, ndim);
    int64_t out_sizes[LT_MAX_DIMS], strides[LT_MAX_DIMS];
    int lead = ndim - src->ndim;
    for (int i = 0; i < ndim; i++) {
        int64_t want = sizes[i];
        if (i < lead) {
            if (want < 0) return lt_fail(LT_ERR_SHAPE, "expand: size -1 for a new dim %d", i);
            out_sizes[i] = want;
            strides[i] = 0;
            continue;
        }
        int64_t have = src->sizes[i - lead];
        if (want == -1) want = have;
        if (have == want) {
            out_sizes[i] = have;
            strides[i] = src->strides[i - lead];
        } else if (have == 1) {
            out_sizes[i] = want;
            strides[i] = 0;
        } else {
            char b[128];
            return lt_fail(LT_ERR_SHAPE, "expand: shape %s cannot broadcast to size %lld in dim %d",
                           lt_shape_str(src, b, sizeof b), (long long)want, i);
        }
    }
    return make_view(dst, src, ndim, out_sizes, strides, src->offset);
}

/* ---- queries ------------------------------------------------------------------------- */

int lt_tensor_is_contiguous(const lt_tensor *t) {
    if (!t) return 0;
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->sizes[i] == 0) return 1;
        if (t->sizes[i] != 1 && t->strides[i] != s) return 0;
        s *= t->sizes[i];
    }
    return 1;
}

int64_t lt_tensor_numel(const lt_tensor *t) {
    if (!t || !t->storage) return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->sizes[i];
    return n;
}

void *lt_tensor_data(const lt_tensor *t) {
    if (!t || !t->storage) return NULL;
    const lt_dtype_traits *tr = lt_dtype_info(t->dtype_id);
    int64_t byte_off = tr->bits == 4 ? t->offset / 2 : t->offset * (tr->bits / 8);
    return (char *)t->storage->data + byte_off;
}

int lt_tensor_device_type(const lt_tensor *t) {
    return t && t->storage ? t->storage->device_type : LT_DEVICE_CPU;
}

/* ---- elementwise copy with conversion ------------------------------------------------ */

static double load_as_double(const char *p, int dt) {
    switch (dt) {
    case LT_DTYPE_F32: return *(const float *)p;
    case LT_DTYPE_BF16: return lt_bf16_to_f32_inline(*(const uint16_t *)p);
    case LT_DTYPE_F16: return lt_f16_to_f32_inline(*(const uint16_t *)p);
    case LT_DTYPE_I32: return *(const int32_t *)p;
    case LT_DTYPE_I64: return (double)*(const int64_t *)p;
    case LT_DTYPE_U8: return *(const uint8_t *)p;
    case LT_DTYPE_I8: return *(const int8_t *)p;
    default: return 0.0;
    }
}

/* Float to integer: truncation toward zero, saturating, NaN -> 0. */
static int64_t sat_i64(double v, double lo, double hi) {
    if (v != v) return 0;
    if (v <= lo) return (int64_t)lo;
    if (v >= hi) return (int64_t)hi;
    return (int64_t)v;
}

static void store_from_double(char *p, int dt, double v) {
    switch (dt) {
    case LT_DTYPE_F32: *(float *)p = (float)v; break;
    case LT_DTYPE_BF16: *(uint16_t *)p = lt_f32_to_bf16_inline((float)v); break;
    case LT_DTYPE_F16: *(uint16_t *)p = lt_f32_to_f16_inline((float)v); break;
    case LT_DTYPE_I32: *(int32_t *)p = (int32_t)sat_i64(v, INT32_MIN, INT32_MAX); break;
    case LT_DTYPE_I64:
        *(int64_t *)p = sat_i64(v, -9223372036854775808.0, 9223372036854774784.0);
        break;
    case LT_DTYPE_U8: *(uint8_t *)p = (uint8_t)sat_i64(v, 0, 255); break;
    case LT_DTYPE_I8: *(int8_t *)p = (int8_t)sat_i64(v, -128, 127); break;
    default: break;
    }
}

/* Copy n elements along one dim. Strides in elements. */
static void copy_run(char *dst, int ddt, int64_t dstride, const char *src, int sdt,
                     int64_t sstride, int64_t n) {
    int dsz = lt_dtype_size(ddt), ssz = lt_dtype_size(sdt);
    if (ddt == sdt) {
        if (dstride == 1 && sstride == 1) {
            memcpy(dst, src, (size_t)(n * dsz));
            return;
        }
        for (int64_t i = 0; i < n; i++)
            memcpy(dst + i * dstride * dsz, src + i * sstride * ssz, (size_t)dsz);
        return;
    }
    if (dstride == 1 && sstride == 1) {
        if (ddt == LT_DTYPE_F32 && lt_is_float_dtype(sdt)) {
            lt_convert_to_f32((float *)dst, src, sdt, n);
            return;
        }
        if (sdt == LT_DTYPE_F32 && lt_is_float_dtype(ddt)) {
            lt_convert_from_f32(dst, ddt, (const float *)src, n);
            return;
        }
    }
    if (ddt == LT_DTYPE_I64 && sdt == LT_DTYPE_I32) {
        for (int64_t i = 0; i < n; i++)
            ((int64_t *)dst)[i * dstride] = ((const int32_t *)src)[i * sstride];
        return;
    }
    for (int64_t i = 0; i < n; i++)
        store_from_double(dst + i * dstride * dsz, ddt, load_as_double(src + i * sstride * ssz, sdt));
}

/* Visit every position of `sizes` (ndim >= 1) with two stride sets, calling copy_run on
   runs of the last dim. The outer positions are split across threads when large. */
static void copy_strided(char *dbase, int ddt, const int64_t *dstr, const char *sbase, int sdt,
                         const int64_t *sstr, int ndim, const int64_t *sizes) {
    int dsz = lt_dtype_size(ddt), ssz = lt_dtype_size(sdt);
    int64_t inner = sizes[ndim - 1];
    int64_t outer = 1;
    for (int i = 0; i < ndim - 1; i++) outer *= sizes[i];
    int par = outer > 1 && outer * inner >= LT_PAR_MIN_WORK;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t o = 0; o < outer; o++) {
        int64_t rem = o, doff = 0, soff = 0;
        for (int i = ndim - 2; i >= 0; i--) {
            int64_t idx = rem % sizes[i];
            rem /= sizes[i];
            doff += idx * dstr[i];
            soff += idx * sstr[i];
        }
        copy_run(dbase + doff * dsz, ddt, dstr[ndim - 1], sbase + soff * ssz, sdt,
                 sstr[ndim - 1], inner);
    }
}

int lt_tensor_copy_async(lt_tensor *dst, const lt_tensor *src, int64_t *ticket) {
    if (!ticket) return lt_fail(LT_ERR_ARG, "lt_tensor_copy_async: ticket is NULL");
    *ticket = 0;
    if (!dst || !src || !dst->storage || !src->storage)
        return lt_fail(LT_ERR_ARG, "lt_tensor_copy_async: a tensor is NULL or released");
    int dev_dst = lt_on_cuda(dst), dev_src = lt_on_cuda(src);
    if (dev_dst != dev_src && dst->dtype_id == src->dtype_id && lt_tensor_numel(dst) == lt_tensor_numel(src) &&
        dst->ndim == src->ndim && lt_tensor_is_contiguous(dst) && lt_tensor_is_contiguous(src)) {
        int same = 1;
        for (int i = 0; i < dst->ndim; i++) same = same && dst->sizes[i] == src->sizes[i];
        if (same) return lt_cuda_copy_async(dst, src, ticket);
    }
    return lt_tensor_copy(dst, src);
}

int lt_copy_wait(int device_type, int device_index, int64_t ticket, int on_host) {
    if (ticket < 0) return lt_fail(LT_ERR_ARG, "lt_copy_wait: ticket %lld is negative", (long long)ticket);
    if (ticket == 0 || device_type == LT_DEVICE_CPU) return LT_OK;
    if (device_type != LT_DEVICE_CUDA)
        return lt_fail(LT_ERR_DEVICE, "lt_copy_wait: no such device type %d", device_type);
    return lt_cuda_copy_wait(device_index, ticket, on_host);
}

int lt_tensor_copy(lt_tensor *dst, const lt_tensor *src) {
    LT_TRY(lt_check_tensor(dst, "copy", "dst"));
    LT_TRY(lt_check_tensor(src, "copy", "src"));
    LT_TRY(lt_check_writable(dst, "copy", "dst"));
    for (int i = 0; i < dst->ndim; i++)
        if (dst->sizes[i] > 1 && dst->strides[i] == 0)
            return lt_fail(LT_ERR_ARG,
                           "copy: the destination is a broadcast view (stride 0 in dim %d): "
                           "several of its elements are one memory location",
                           i);
    LT_DISPATCH_CUDA(dst, lt_cuda_copy(dst, src));
    LT_DISPATCH_CUDA(src, lt_cuda_copy(dst, src));
    lt_tensor s = {0};
    int same = dst->ndim == src->ndim;
    for (int i = 0; same && i < dst->ndim; i++) same = dst->sizes[i] == src->sizes[i];
    if (same) {
        s = *src; /* borrowed header: no retain, never released */
    } else {
        int st = lt_tensor_expand(&s, src, dst->ndim, dst->sizes);
        if (st != LT_OK) {
            char a[128], b[128];
            return lt_fail(LT_ERR_SHAPE, "copy: source shape %s does not match destination %s",
                           lt_shape_str(src, a, sizeof a), lt_shape_str(dst, b, sizeof b));
        }
    }
    int64_t n = lt_tensor_numel(dst);
    if (n > 0) {
        char *d = lt_tensor_data(dst);
        const char *sp = lt_tensor_data(&s);
        if (lt_tensor_is_contiguous(dst) && lt_tensor_is_contiguous(&s)) {
            /* Chunks so large conversions use every thread. */
            enum { CHUNK = 65536 };
            int dsz = lt_dtype_size(dst->dtype_id), ssz = lt_dtype_size(s.dtype_id);
            int64_t chunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (chunks > 1)
            for (int64_t c = 0; c < chunks; c++) {
                int64_t off = c * CHUNK, len = n - off < CHUNK ? n - off : CHUNK;
                copy_run(d + off * dsz, dst->dtype_id, 1, sp + off * ssz, s.dtype_id, 1, len);
            }
        } else if (dst->ndim == 0) {
            copy_run(d, dst->dtype_id, 1, sp, s.dtype_id, 1, 1);
        } else {
            copy_strided(d, dst->dtype_id, dst->strides, sp, s.dtype_id, s.strides, dst->ndim,
                         dst->sizes);
        }
    }
    if (!same) lt_tensor_release(&s);
    return LT_OK;
}

int lt_tensor_contiguous(lt_tensor *dst, const lt_tensor *src, int dtype) {
    LT_TRY(lt_check_tensor(src, "contiguous", "src"));
    if (!dst) return lt_fail(LT_ERR_ARG, "contiguous: dst is NULL");
    if (dtype < 0) dtype = src->dtype_id;
    if (!lt_dtype_info(dtype)) return lt_fail(LT_ERR_DTYPE, "contiguous: unknown dtype %d", dtype);
    if (dtype == src->dtype_id && lt_tensor_is_contiguous(src)) return lt_tensor_share(dst, src);
    lt_tensor out = {0};
    LT_TRY(lt_tensor_empty(&out, dtype, src->ndim, src->sizes, src->storage->device_type,
                           src->storage->device_index));
    int st = lt_tensor_copy(&out, src);
    if (st != LT_OK) {
        lt_tensor_release(&out);
        return st;
    }
    lt_tensor_release(dst);
    *dst = out;
    return LT_OK;
}

int lt_tensor_fill(lt_tensor *t, double value) {
    LT_TRY(lt_check_writable(t, "fill", "tensor"));
    for (int i = 0; i < t->ndim; i++)
        if (t->sizes[i] > 1 && t->strides[i] == 0 && lt_on_cuda(t))
            return lt_fail(LT_ERR_ARG, "fill: a broadcast view (stride 0 in dim %d) cannot be "
                                       "filled on a device", i);
    LT_DISPATCH_CUDA(t, lt_cuda_fill(t, value));
    int64_t n = lt_tensor_numel(t);
    if (n == 0) return LT_OK;
    int sz = lt_dtype_size(t->dtype_id);
    char one[8];
    store_from_double(one, t->dtype_id, value);
    if (lt_tensor_is_contiguous(t)) {
        char *d = lt_tensor_data(t);
        if (t->dtype_id == LT_DTYPE_F32) {
            float v;
            memcpy(&v, one, 4);
            float *f = (float *)d;
#pragma omp parallel for schedule(static) if (n >= 4 * LT_PAR_MIN_WORK)
            for (int64_t i = 0; i < n; i++) f[i] = v;
        } else {
            for (int64_t i = 0; i < n; i++) memcpy(d + i * sz, one, (size_t)sz);
        }
        return LT_OK;
    }
    /* A one-element source broadcast over t through zero strides. */
    int64_t zero_strides[LT_MAX_DIMS] = {0};
    copy_strided(lt_tensor_data(t), t->dtype_id, t->strides, one, t->dtype_id, zero_strides, t->ndim,
                 t->sizes);
    return LT_OK;
}

/* Storage address of flat (row-major) element `index`. */
static char *element_ptr(const lt_tensor *t, int64_t index) {
    int64_t off = 0;
    for (int i = t->ndim - 1; i >= 0; i--) {
        int64_t idx = index % t->sizes[i];
        index /= t->sizes[i];
        off += idx * t->strides[i];
    }
    return (char *)t->storage->data + (t->offset + off) * lt_dtype_size(t->dtype_id);
}

int lt_tensor_get(const lt_tensor *t, int64_t index, double *out) {
    LT_TRY(lt_check_tensor(t, "get", "tensor"));
    int64_t n = lt_tensor_numel(t);
    if (index < 0 || index >= n)
        return lt_fail(LT_ERR_RANGE, "get: flat index %lld out of range for %lld elements",
                       (long long)index, (long long)n);
    LT_DISPATCH_CUDA(t, lt_cuda_get(t, index, out));
    *out = load_as_double(element_ptr(t, index), t->dtype_id);
    return LT_OK;
}

int lt_tensor_set(lt_tensor *t, int64_t index, double value) {
    LT_TRY(lt_check_writable(t, "set", "tensor"));
    int64_t n = lt_tensor_numel(t);
    if (index < 0 || index >= n)
        return lt_fail(LT_ERR_RANGE, "set: flat index %lld out of range for %lld elements",
                       (long long)index, (long long)n);
    LT_DISPATCH_CUDA(t, lt_cuda_set(t, index, value));
    store_from_double(element_ptr(t, index), t->dtype_id, value);
    return LT_OK;
}

int lt_tensor_equal(const lt_tensor *a, const lt_tensor *b, int *out) {
    LT_TRY(lt_check_tensor(a, "equal", "a"));
    LT_TRY(lt_check_tensor(b, "equal", "b"));
    LT_DISPATCH_CUDA(a, lt_cuda_equal(a, b, out));
    LT_DISPATCH_CUDA(b, lt_cuda_equal(a, b, out));
    *out = 0;
    if (a->ndim != b->ndim) return LT_OK;
    for (int i = 0; i < a->ndim; i++)
        if (a->sizes[i] != b->sizes[i]) return LT_OK;
    int64_t n = lt_tensor_numel(a);
    for (int64_t i = 0; i < n; i++) {
        char *pa = element_ptr(a, i), *pb = element_ptr(b, i);
        if (a->dtype_id == b->dtype_id && a->dtype_id == LT_DTYPE_I64) {
            if (*(int64_t *)pa != *(int64_t *)pb) return LT_OK;
        } else if (load_as_double(pa, a->dtype_id) != load_as_double(pb, b->dtype_id)) {
            return LT_OK;
        }
    }
    *out = 1;
    return LT_OK;
}
