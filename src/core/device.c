/* device.c - the public CUDA entry points. Each goes to the CUDA backend (cuda/context.cu),
 * which the first of them loads (core/cuda_loader.c); where it cannot load, each fails with
 * the reason: "built without CUDA", or "CUDA runtime not found: ..." with the loader's. */
#include <stdio.h>

#include "core/internal.h"

int lt_cuda_device_count(int32_t *out) {
    if (!out) return lt_fail(LT_ERR_ARG, "lt_cuda_device_count: out is NULL");
    *out = 0;
    return lt_cuda_runtime_device_count(out);
}

int lt_cuda_set_device(int32_t index) { return lt_cuda_runtime_set_device(index); }

int lt_cuda_get_device(int32_t *out) {
    if (!out) return lt_fail(LT_ERR_ARG, "lt_cuda_get_device: out is NULL");
    *out = 0;
    return lt_cuda_runtime_get_device(out);
}

int lt_cuda_synchronize(int32_t index) { return lt_cuda_runtime_synchronize(index); }

int lt_cuda_empty_cache(int32_t index, int64_t *released_bytes) {
    if (released_bytes) *released_bytes = 0;
    return lt_cuda_runtime_empty_cache(index, released_bytes);
}

int lt_cuda_get_device_info(int32_t index, lt_cuda_device_info *out) {
    if (!out) return lt_fail(LT_ERR_ARG, "lt_cuda_get_device_info: out is NULL");
    memset(out, 0, sizeof *out);
    return lt_cuda_runtime_device_info(index, out);
}

int lt_check_same_device(const lt_tensor *t, const lt_tensor *ref, const char *op,
                         const char *name, const char *ref_name) {
    if (!t || !t->storage || !ref || !ref->storage) return LT_OK;
    if (t->storage->device_type == ref->storage->device_type &&
        (t->storage->device_type == LT_DEVICE_CPU ||
         t->storage->device_index == ref->storage->device_index))
        return LT_OK;
    char a[16], b[16];
    if (t->storage->device_type == LT_DEVICE_CPU) snprintf(a, sizeof a, "cpu");
    else snprintf(a, sizeof a, "cuda:%d", t->storage->device_index);
    if (ref->storage->device_type == LT_DEVICE_CPU) snprintf(b, sizeof b, "cpu");
    else snprintf(b, sizeof b, "cuda:%d", ref->storage->device_index);
    return lt_fail(LT_ERR_DEVICE, "%s: %s is on %s but %s is on %s", op, name, a, ref_name, b);
}
