// copy.cu - copies between and within devices (any strides, any dtype conversion), fill,
// single-element get/set, equality, and the Philox random fills.
#include <math.h>

#include "common.cuh"

// ---- element access by dtype ------------------------------------------------------------------

__device__ __forceinline__ double load_elem(const char *base, int dt, int64_t i) {
    switch (dt) {
    case LT_DTYPE_F32: return ((const float *)base)[i];
    case LT_DTYPE_BF16: return __bfloat162float(((const __nv_bfloat16 *)base)[i]);
    case LT_DTYPE_F16: return __half2float(((const __half *)base)[i]);
    case LT_DTYPE_I32: return ((const int32_t *)base)[i];
    case LT_DTYPE_I64: return (double)((const int64_t *)base)[i];
    case LT_DTYPE_U8: return ((const uint8_t *)base)[i];
    case LT_DTYPE_I8: return ((const int8_t *)base)[i];
    default: return 0;
    }
}

__device__ __forceinline__ void store_elem(char *base, int dt, int64_t i, double v) {
    switch (dt) {
    case LT_DTYPE_F32: ((float *)base)[i] = (float)v; break;
    case LT_DTYPE_BF16: ((__nv_bfloat16 *)base)[i] = __float2bfloat16_rn((float)v); break;
    case LT_DTYPE_F16: ((__half *)base)[i] = __float2half_rn((float)v); break;
    case LT_DTYPE_I32: ((int32_t *)base)[i] = (int32_t)v; break;
    case LT_DTYPE_I64: ((int64_t *)base)[i] = (int64_t)v; break;
    case LT_DTYPE_U8: ((uint8_t *)base)[i] = (uint8_t)v; break;
    case LT_DTYPE_I8: ((int8_t *)base)[i] = (int8_t)v; break;
    default: break;
    }
}

// General strided copy with conversion; i64 -> i64 goes through integers so no precision
// is lost above 2^53.
__global__ void copy_strided_kernel(char *dst, int ddt, lt_strided ds, const char *src, int sdt,
                                    lt_strided ss, int64_t n, int int64_path) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t od = lt_strided_offset(ds, i), os = lt_strided_offset(ss, i);
        if (int64_path)
            ((int64_t *)dst)[od] = ((const int64_t *)src)[os];
        else
            store_elem(dst, ddt, od, load_elem(src, sdt, os));
    }
}

// Contiguous float conversions, 4 elements per thread.
template <class D, class S>
__global__ void convert_contig_kernel(D *__restrict__ dst, const S *__restrict__ src, int64_t n) {
    for (int64_t i = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) * 4; i < n;
         i += (int64_t)gridDim.x * blockDim.x * 4) {
#pragma unroll
        for (int j = 0; j < 4; j++)
            if (i + j < n) dst[i + j] = lt_from_f32<D>(lt_to_f32(src[i + j]));
    }
}

static int elem_size(int dt) { return lt_dtype_size(dt); }

// dst and src both on device `dev`, same shape (src already expanded).
static int copy_device(lt_cuda_context *c, lt_tensor *dst, const lt_tensor *src) {
    int64_t n = lt_numel(dst);
    if (n == 0) return LT_OK;
    int ddt = dst->dtype_id, sdt = src->dtype_id;
    bool dc = lt_tensor_is_contiguous(dst), sc = lt_tensor_is_contiguous(src);
    if (ddt == sdt && dc && sc) {
        LT_CU(cudaMemcpyAsync(lt_tensor_data(dst), lt_tensor_data(src), (size_t)n * elem_size(ddt),
                              cudaMemcpyDeviceToDevice, c->stream));
        return LT_OK;
    }
    if (dc && sc && lt_is_float_dtype(ddt) && lt_is_float_dtype(sdt)) {
        unsigned blocks = lt_blocks_for((n + 3) / 4, 256);
        LT_FLOAT_SWITCH(ddt, D, {
            LT_FLOAT_SWITCH(sdt, S, {
                convert_contig_kernel<D, S><<<blocks, 256, 0, c->stream>>>(lt_dptr<D>(dst),
                                                                          lt_dptr<S>(src), n);
            });
        });
        LT_CU_LAUNCH("convert_contig_kernel");
        return LT_OK;
    }
    int int64_path = ddt == LT_DTYPE_I64 && sdt == LT_DTYPE_I64;
    copy_strided_kernel<<<lt_blocks_for(n, 256), 256, 0, c->stream>>>(
        (char *)lt_tensor_data(dst), ddt, lt_strided_of(dst), (const char *)lt_tensor_data(src),
        sdt, lt_strided_of(src), n, int64_path);
    LT_CU_LAUNCH("copy_strided_kernel");
    return LT_OK;
}

static bool on_cuda(const lt_tensor *t) {
    return t->storage->device_type == LT_DEVICE_CUDA;
}

// A contiguous device tensor like `like` in dtype `dtype`, on `dev`.
static int device_temp(lt_tensor *t, int dtype, const lt_tensor *like, int dev) {
    return lt_tensor_empty(t, dtype, like->ndim, like->sizes, LT_DEVICE_CUDA, dev);
}

extern "C" int lt_cuda_copy(lt_tensor *dst, const lt_tensor *src) {
    // the source broadcast to the destination's shape (a borrowed header when equal)
    lt_tensor s = {0};
    bool same = dst->ndim == src->ndim;
    for (int i = 0; same && i < dst->ndim; i++) same = dst->sizes[i] == src->sizes[i];
    if (same) {
        s = *src;
    } else if (lt_tensor_expand(&s, src, dst->ndim, dst->sizes) != LT_OK) {
        char a[128], b[128];
        return lt_fail(LT_ERR_SHAPE, "copy: source shape %s does not match destination %s",
                       lt_shape_str(src, a, sizeof a), lt_shape_str(dst, b, sizeof b));
    }
    int st = LT_OK;
    int64_t n = lt_numel(dst);
    if (n == 0) goto done;
    if (on_cuda(dst) && on_cuda(&s)) {
        int dev = lt_device_of(dst);
        lt_cuda_context *c = lt_cuda_ctx(dev);
        if (!c) {
            st = lt_last_status();
            goto done;
        }
        if (lt_device_of(&s) != dev) {
            // between devices: through a contiguous copy of the source on its own device,
            // then a peer copy into a contiguous temporary on dst's device
            lt_tensor a = {0}, b = {0};
            st = device_temp(&a, s.dtype_id, &s, lt_device_of(&s));
            if (st == LT_OK) st = lt_cuda_copy(&a, &s);
            if (st == LT_OK) st = lt_cuda_runtime_synchronize(lt_device_of(&s));
            if (st == LT_OK) st = device_temp(&b, s.dtype_id, &s, dev);
            if (st == LT_OK &&
                cudaMemcpyPeerAsync(lt_tensor_data(&b), dev, lt_tensor_data(&a), lt_device_of(&s),
                                    (size_t)n * elem_size(s.dtype_id), c->stream) != cudaSuccess)
                st = lt_fail(LT_ERR_DEVICE, "copy between devices: %s",
                             cudaGetErrorString(cudaGetLastError()));
            if (st == LT_OK) st = copy_device(c, dst, &b);
            if (st == LT_OK) st = lt_cuda_runtime_synchronize(dev); // a is freed below
            lt_tensor_release(&a);
            lt_tensor_release(&b);
            goto done;
        }
        st = copy_device(c, dst, &s);
        goto done;
    }
    if (on_cuda(dst)) {
        // host -> device: a contiguous host copy in the source's dtype, one transfer, then
        // conversion and scattering on the device
        int dev = lt_device_of(dst);
        lt_cuda_context *c = lt_cuda_ctx(dev);
        if (!c) {
            st = lt_last_status();
            goto done;
        }
        lt_tensor hc = {0}, dt = {0};
        const lt_tensor *host = &s;
        if (!lt_tensor_is_contiguous(&s)) {
            st = lt_tensor_contiguous(&hc, &s, s.dtype_id);
            host = &hc;
        }
        bool direct = st == LT_OK && lt_tensor_is_contiguous(dst) && dst->dtype_id == s.dtype_id;
        if (st == LT_OK && !direct) st = device_temp(&dt, s.dtype_id, &s, dev);
        if (st == LT_OK) {
            void *to = direct ? lt_tensor_data(dst) : lt_tensor_data(&dt);
            if (cudaMemcpyAsync(to, lt_tensor_data(host), (size_t)n * elem_size(s.dtype_id),
                                cudaMemcpyHostToDevice, c->stream) != cudaSuccess)
                st = lt_fail(LT_ERR_DEVICE, "copy to the device: %s",
                             cudaGetErrorString(cudaGetLastError()));
        }
        if (st == LT_OK && !direct) st = copy_device(c, dst, &dt);
        // the host copy may go now: a transfer from pageable memory returns once the bytes
        // are staged, and a pinned source is only used in place when it is the caller's
        lt_tensor_release(&hc);
        lt_tensor_release(&dt);
        goto done;
    }
    {
        // device -> host: convert on the device into a contiguous tensor of dst's dtype, one
        // transfer, wait, then scatter on the host if dst is strided
        int dev = lt_device_of(&s);
        lt_cuda_context *c = lt_cuda_ctx(dev);
        if (!c) {
            st = lt_last_status();
            goto done;
        }
        lt_tensor dt = {0}, hc = {0};
        const lt_tensor *from = &s;
        if (!lt_tensor_is_contiguous(&s) || s.dtype_id != dst->dtype_id) {
            st = device_temp(&dt, dst->dtype_id, &s, dev);
            if (st == LT_OK) st = copy_device(c, &dt, &s);
            from = &dt;
        }
        bool direct = lt_tensor_is_contiguous(dst);
        if (st == LT_OK && !direct)
            st = lt_tensor_empty(&hc, dst->dtype_id, dst->ndim, dst->sizes, LT_DEVICE_CPU, 0);
        if (st == LT_OK) {
            void *to = direct ? lt_tensor_data(dst) : lt_tensor_data(&hc);
            if (cudaMemcpyAsync(to, lt_tensor_data(from), (size_t)n * elem_size(dst->dtype_id),
                                cudaMemcpyDeviceToHost, c->stream) != cudaSuccess ||
                cudaStreamSynchronize(c->stream) != cudaSuccess)
                st = lt_fail(LT_ERR_DEVICE, "copy to the host: %s",
                             cudaGetErrorString(cudaGetLastError()));
        }
        if (st == LT_OK && !direct) st = lt_tensor_copy(dst, &hc);
        lt_tensor_release(&dt);
        lt_tensor_release(&hc);
    }
done:
    if (!same) lt_tensor_release(&s);
    return st;
}

// ---- fill --------------------------------------------------------------------------------------

__global__ void fill_kernel(char *dst, int dt, lt_strided ds, int64_t n, double v, int contig) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        store_elem(dst, dt, contig ? i : lt_strided_offset(ds, i), v);
}

template <class T> __global__ void fill_contig_kernel(T *dst, int64_t n, T v) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = v;
}

extern "C" int lt_cuda_fill(lt_tensor *t, double value) {
    int64_t n = lt_numel(t);
    if (n == 0) return LT_OK;
    LT_CUDA_CTX(c, lt_device_of(t));
    int contig = lt_tensor_is_contiguous(t);
    if (contig && value == 0.0 && !signbit(value)) {
        LT_CU(cudaMemsetAsync(lt_tensor_data(t), 0, (size_t)n * elem_size(t->dtype_id), c->stream));
        return LT_OK;
    }
    if (contig && t->dtype_id == LT_DTYPE_F32) {
        fill_contig_kernel<float><<<lt_blocks_for(n, 256), 256, 0, c->stream>>>(
            lt_dptr<float>(t), n, (float)value);
    } else {
        fill_kernel<<<lt_blocks_for(n, 256), 256, 0, c->stream>>>(
            (char *)lt_tensor_data(t), t->dtype_id, lt_strided_of(t), n, value, contig);
    }
    LT_CU_LAUNCH("fill_kernel");
    return LT_OK;
}

// ---- single elements --------------------------------------------------------------------------

static int64_t flat_offset(const lt_tensor *t, int64_t index) {
    int64_t off = 0;
    for (int i = t->ndim - 1; i >= 0; i--) {
        int64_t idx = index % t->sizes[i];
        index /= t->sizes[i];
        off += idx * t->strides[i];
    }
    return off;
}

extern "C" int lt_cuda_get(const lt_tensor *t, int64_t index, double *out) {
    LT_CUDA_CTX(c, lt_device_of(t));
    int sz = elem_size(t->dtype_id);
    const char *p = (const char *)lt_tensor_data(t) + flat_offset(t, index) * sz;
    LT_CU(cudaMemcpyAsync(c->staging, p, (size_t)sz, cudaMemcpyDeviceToHost, c->stream));
    LT_CU(cudaStreamSynchronize(c->stream));
    const char *h = (const char *)c->staging;
    switch (t->dtype_id) {
    case LT_DTYPE_F32: *out = *(const float *)h; break;
    case LT_DTYPE_BF16: *out = lt_bf16_to_f32_inline(*(const uint16_t *)h); break;
    case LT_DTYPE_F16: *out = lt_f16_to_f32_inline(*(const uint16_t *)h); break;
    case LT_DTYPE_I32: *out = *(const int32_t *)h; break;
    case LT_DTYPE_I64: *out = (double)*(const int64_t *)h; break;
    case LT_DTYPE_U8: *out = *(const uint8_t *)h; break;
    case LT_DTYPE_I8: *out = *(const int8_t *)h; break;
    default: return lt_fail(LT_ERR_DTYPE, "get: unsupported dtype on CUDA");
    }
    return LT_OK;
}

extern "C" int lt_cuda_set(lt_tensor *t, int64_t index, double value) {
    LT_CUDA_CTX(c, lt_device_of(t));
    int sz = elem_size(t->dtype_id);
    char *p = (char *)lt_tensor_data(t) + flat_offset(t, index) * sz;
    // wait until the staging buffer is no longer read by an earlier transfer
    LT_CU(cudaStreamSynchronize(c->stream));
    char *h = (char *)c->staging;
    switch (t->dtype_id) {
    case LT_DTYPE_F32: *(float *)h = (float)value; break;
    case LT_DTYPE_BF16: *(uint16_t *)h = lt_f32_to_bf16_inline((float)value); break;
    case LT_DTYPE_F16: *(uint16_t *)h = lt_f32_to_f16_inline((float)value); break;
    case LT_DTYPE_I32: *(int32_t *)h = (int32_t)value; break;
    case LT_DTYPE_I64: *(int64_t *)h = (int64_t)value; break;
    case LT_DTYPE_U8: *(uint8_t *)h = (uint8_t)value; break;
    case LT_DTYPE_I8: *(int8_t *)h = (int8_t)value; break;
    default: return lt_fail(LT_ERR_DTYPE, "set: unsupported dtype on CUDA");
    }
    LT_CU(cudaMemcpyAsync(p, h, (size_t)sz, cudaMemcpyHostToDevice, c->stream));
    LT_CU(cudaStreamSynchronize(c->stream)); // the staging buffer is reused by the next call
    return LT_OK;
}

// ---- equality ------------------------------------------------------------------------------------

__global__ void differ_kernel(const char *a, int adt, lt_strided as, const char *b, int bdt,
                              lt_strided bs, int64_t n, int int64_path, int *flag) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t oa = lt_strided_offset(as, i), ob = lt_strided_offset(bs, i);
        bool diff = int64_path ? ((const int64_t *)a)[oa] != ((const int64_t *)b)[ob]
                               : load_elem(a, adt, oa) != load_elem(b, bdt, ob);
        if (diff) {
            *flag = 1;
            return;
        }
    }
}

extern "C" int lt_cuda_equal(const lt_tensor *a, const lt_tensor *b, int *out) {
    *out = 0;
    if (a->ndim != b->ndim) return LT_OK;
    for (int i = 0; i < a->ndim; i++)
        if (a->sizes[i] != b->sizes[i]) return LT_OK;
    // both on one device: compare there; otherwise bring the device one to the host
    if (!on_cuda(a) || !on_cuda(b) || lt_device_of(a) != lt_device_of(b)) {
        const lt_tensor *d = on_cuda(a) ? a : b;
        lt_tensor h = {0};
        LT_TRY(lt_tensor_empty(&h, d->dtype_id, d->ndim, d->sizes, LT_DEVICE_CPU, 0));
        int st = lt_cuda_copy(&h, d);
        if (st == LT_OK) {
            const lt_tensor *other = d == a ? b : a;
            if (on_cuda(other)) {
                lt_tensor h2 = {0};
                st = lt_tensor_empty(&h2, other->dtype_id, other->ndim, other->sizes, LT_DEVICE_CPU, 0);
                if (st == LT_OK) st = lt_cuda_copy(&h2, other);
                if (st == LT_OK) st = lt_tensor_equal(&h, &h2, out);
                lt_tensor_release(&h2);
            } else {
                st = lt_tensor_equal(&h, other, out);
            }
        }
        lt_tensor_release(&h);
        return st;
    }
    int64_t n = lt_numel(a);
    if (n == 0) {
        *out = 1;
        return LT_OK;
    }
    LT_CUDA_CTX(c, lt_device_of(a));
    int *flag = NULL;
    LT_TRY(lt_cuda_alloc((void **)&flag, sizeof(int), lt_device_of(a)));
    int st = LT_OK;
    if (cudaMemsetAsync(flag, 0, sizeof(int), c->stream) != cudaSuccess) {
        st = lt_fail(LT_ERR_DEVICE, "equal: %s", cudaGetErrorString(cudaGetLastError()));
    } else {
        int int64_path = a->dtype_id == LT_DTYPE_I64 && b->dtype_id == LT_DTYPE_I64;
        differ_kernel<<<lt_blocks_for(n, 256), 256, 0, c->stream>>>(
            (const char *)lt_tensor_data(a), a->dtype_id, lt_strided_of(a),
            (const char *)lt_tensor_data(b), b->dtype_id, lt_strided_of(b), n, int64_path, flag);
        cudaError_t e = cudaGetLastError();
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(c->staging, flag, sizeof(int), cudaMemcpyDeviceToHost, c->stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
        if (e != cudaSuccess) st = lt_fail(LT_ERR_DEVICE, "equal: %s", cudaGetErrorString(e));
        else *out = *(int *)c->staging == 0;
    }
    lt_cuda_free(flag, lt_device_of(a));
    return st;
}

// ---- Philox fills --------------------------------------------------------------------------------

// Element i of a fill is lane i % 4 of Philox block (offset + i / 4) (lt_philox4x32_10).

__device__ __forceinline__ double u01(uint32_t x) { return ((double)x + 1.0) * (1.0 / 4294967296.0); }

__global__ void rng_kernel(char *dst, int dt, lt_strided ds, int contig, int64_t n, int kind,
                           double a, double b, uint64_t seed, uint64_t base) {
    int64_t blocks = (n + 3) / 4;
    for (int64_t blk = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; blk < blocks;
         blk += (int64_t)gridDim.x * blockDim.x) {
        uint4 r4 = lt_philox4x32_10(base + (uint64_t)blk, seed);
        uint32_t r[4] = {r4.x, r4.y, r4.z, r4.w};
        double v[4];
        if (kind == 1) {
            for (int j = 0; j < 4; j += 2) {
                double rad = sqrt(-2.0 * log(u01(r[j])));
                double th = 6.283185307179586 * u01(r[j + 1]);
                v[j] = a + b * rad * cos(th);
                v[j + 1] = a + b * rad * sin(th);
            }
        } else if (kind == 0) {
            for (int j = 0; j < 4; j++) v[j] = a + (b - a) * (u01(r[j]) - 1.0 / 4294967296.0);
        }
        for (int j = 0; j < 4; j++) {
            int64_t i = blk * 4 + j;
            if (i >= n) break;
            int64_t o = contig ? i : lt_strided_offset(ds, i);
            if (kind == 2) {
                uint64_t range = (uint64_t)(b - a);
                int64_t x = (int64_t)a + (int64_t)(((uint64_t)r[j] * range) >> 32);
                if (dt == LT_DTYPE_I64) ((int64_t *)dst)[o] = x;
                else store_elem(dst, dt, o, (double)x);
            } else {
                store_elem(dst, dt, o, (double)(float)v[j]);
            }
        }
    }
}

extern "C" int lt_cuda_rng_fill(lt_tensor *t, int kind, double a, double b, uint64_t seed,
                                uint64_t offset) {
    int64_t n = lt_numel(t);
    if (n == 0) return LT_OK;
    LT_CUDA_CTX(c, lt_device_of(t));
    rng_kernel<<<lt_blocks_for((n + 3) / 4, 256), 256, 0, c->stream>>>(
        (char *)lt_tensor_data(t), t->dtype_id, lt_strided_of(t), lt_tensor_is_contiguous(t), n,
        kind, a, b, seed, offset);
    LT_CU_LAUNCH("rng_kernel");
    return LT_OK;
}

// ---- index range checks --------------------------------------------------------------------

namespace {

__global__ void first_out_of_range_kernel(const void *idx, int is64, int64_t n, int64_t limit,
                                          unsigned long long *first) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t v = lt_dev_load_index(idx, is64, i);
        if (v < 0 || v >= limit) atomicMin(first, (unsigned long long)i);
    }
}

} // namespace

int lt_cuda_first_out_of_range(lt_cuda_context *c, const lt_tensor *idx, int64_t n,
                               int64_t limit, int64_t *first, int64_t *value,
                               const char *op, const char *what) {
    *first = -1;
    *value = 0;
    if (n == 0) return LT_OK;
    int is64 = idx->dtype_id == LT_DTYPE_I64;
    const void *p = lt_tensor_data(idx);
    unsigned long long *flag = NULL;
    LT_TRY(lt_cuda_alloc((void **)&flag, sizeof *flag, c->device));
    cudaError_t e = cudaMemsetAsync(flag, 0xff, sizeof *flag, c->stream);
    if (e == cudaSuccess) {
        first_out_of_range_kernel<<<lt_blocks_for(n, 256, 1024), 256, 0, c->stream>>>(
            p, is64, n, limit, flag);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(c->staging, flag, sizeof *flag, cudaMemcpyDeviceToHost, c->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    lt_cuda_free(flag, c->device);
    if (e != cudaSuccess)
        return lt_fail(LT_ERR_DEVICE, "%s:%d: %s: checking %s: %s", __FILE__, __LINE__, op, what,
                       cudaGetErrorString(e));
    unsigned long long bad = *(const unsigned long long *)c->staging;
    if (bad == ~0ULL) return LT_OK;
    // the error path: fetch the offending index for the caller's message
    size_t esz = is64 ? 8 : 4;
    e = cudaMemcpyAsync(c->staging, (const char *)p + bad * esz, esz, cudaMemcpyDeviceToHost,
                        c->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    if (e != cudaSuccess)
        return lt_fail(LT_ERR_DEVICE, "%s:%d: %s: reading a bad %s entry: %s", __FILE__,
                       __LINE__, op, what, cudaGetErrorString(e));
    *first = (int64_t)bad;
    *value = is64 ? *(const int64_t *)c->staging : (int64_t) * (const int32_t *)c->staging;
    return LT_OK;
}

// ---- transfers on the copy stream ----------------------------------------------------------
//
// The offloaded activations and the paged optimizer state move between pinned host memory and
// the device on a stream of their own, so a transfer runs while the compute stream works. A
// transfer first waits for everything the compute stream had queued when it was asked for (its
// source may be the output of those kernels), and the compute stream waits for it only where a
// kernel needs its bytes (lt_cuda_copy_wait). Tickets number the transfers of a device from 1;
// the copy stream runs them in order, so a transfer's completion implies every earlier one's,
// and a ticket older than the ring's 64 events is waited for through the newest event.

enum { COPY_RING = 64 };

static int copy_stream_ready(lt_cuda_context *c) {
    if (c->copy_stream) return LT_OK;
    LT_CU(cudaStreamCreateWithFlags(&c->copy_stream, cudaStreamNonBlocking));
    LT_CU(cudaEventCreateWithFlags(&c->compute_mark, cudaEventDisableTiming));
    for (int i = 0; i < COPY_RING; i++) LT_CU(cudaEventCreateWithFlags(&c->copy_done[i], cudaEventDisableTiming));
    return LT_OK;
}

extern "C" int lt_cuda_copy_async(lt_tensor *dst, const lt_tensor *src, int64_t *ticket) {
    *ticket = 0;
    const bool to_dev = on_cuda(dst);
    const lt_tensor *dev_side = to_dev ? dst : src, *host_side = to_dev ? src : dst;
    if (on_cuda(host_side) || !on_cuda(dev_side) || dst->dtype_id != src->dtype_id ||
        lt_numel(dst) != lt_numel(src) || !lt_tensor_is_contiguous(dst) || !lt_tensor_is_contiguous(src))
        return lt_fail(LT_ERR_ARG, "copy_async: one host and one device tensor, contiguous, of one dtype and "
                                   "size");
    int64_t n = lt_numel(dst);
    if (n == 0) return LT_OK;
    LT_CUDA_CTX(c, lt_device_of(dev_side));
    LT_TRY(copy_stream_ready(c));
    LT_CU(cudaEventRecord(c->compute_mark, c->stream));
    LT_CU(cudaStreamWaitEvent(c->copy_stream, c->compute_mark, 0));
    LT_CU(cudaMemcpyAsync(lt_tensor_data(dst), lt_tensor_data(src), (size_t)n * elem_size(dst->dtype_id),
                          to_dev ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost, c->copy_stream));
    int64_t k = c->copies++;
    LT_CU(cudaEventRecord(c->copy_done[k % COPY_RING], c->copy_stream));
    *ticket = k + 1;
    return LT_OK;
}

extern "C" int lt_cuda_copy_wait(int32_t device, int64_t ticket, int on_host) {
    if (ticket <= 0) return LT_OK;
    LT_CUDA_CTX(c, device);
    if (ticket > c->copies)
        return lt_fail(LT_ERR_ARG, "copy_wait: ticket %lld was never issued on CUDA device %d",
                       (long long)ticket, (int)device);
    int64_t k = c->copies - ticket >= COPY_RING ? c->copies - 1 : ticket - 1;
    cudaEvent_t e = c->copy_done[k % COPY_RING];
    if (on_host) LT_CU(cudaEventSynchronize(e));
    else LT_CU(cudaStreamWaitEvent(c->stream, e, 0));
    return LT_OK;
}
