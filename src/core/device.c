/* device.c - the public CUDA entry points. Each goes to the CUDA backend (cuda/context.cu),
 * which the first of them loads (core/cuda_loader.c); where it cannot load, each fails with
 * the reason: "built without CUDA", or "CUDA runtime not found: ..." with the loader's. */
#include <stdatomic.h>
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

/* ---- per-device settings ------------------------------------------------------------- */

/* What lt_set_device_settings gave each CUDA device; `set` 0 for a device never given any.
   `applied_*` is what the backend holds now (its switches are the backend's process-wide
   state, so the device an op runs on hands its own over before the op: -1 when unknown). */
enum { LT_SETTINGS_DEVICES = 16 };
static struct {
    _Atomic int set, tf32, deterministic;
} lt_dev_settings[LT_SETTINGS_DEVICES];
static _Atomic int applied_tf32 = -1, applied_det = -1;

int lt_set_device_settings(int device_type, int device_index, int allow_tf32, int deterministic) {
    if (device_type != LT_DEVICE_CUDA || device_index < 0 || device_index >= LT_SETTINGS_DEVICES)
        return lt_fail(LT_ERR_DEVICE,
                       "device settings (TF32, deterministic attention) are a CUDA device's; got "
                       "device type %d, index %d",
                       device_type, device_index);
    lt_dev_settings[device_index].tf32 = allow_tf32 != 0;
    lt_dev_settings[device_index].deterministic = deterministic != 0;
    lt_dev_settings[device_index].set = 1;
    return LT_OK;
}

int lt_get_device_settings(int device_type, int device_index, int *allow_tf32, int *deterministic) {
    if (device_type != LT_DEVICE_CUDA || device_index < 0 || device_index >= LT_SETTINGS_DEVICES)
        return lt_fail(LT_ERR_DEVICE, "device settings: no CUDA device index %d (type %d)", device_index,
                       device_type);
    if (allow_tf32) *allow_tf32 = lt_dev_settings[device_index].tf32;
    if (deterministic) *deterministic = lt_dev_settings[device_index].deterministic;
    return LT_OK;
}

void lt_cuda_apply_settings(int device_index) {
    if (device_index < 0 || device_index >= LT_SETTINGS_DEVICES || !lt_dev_settings[device_index].set) return;
    int tf32 = lt_dev_settings[device_index].tf32, det = lt_dev_settings[device_index].deterministic;
    if (applied_tf32 != tf32) {
        lt_cuda_gemm_allow_tf32(tf32);
        applied_tf32 = tf32;
    }
    if (applied_det != det) {
        lt_cuda_attention_set_deterministic(det);
        applied_det = det;
    }
}
