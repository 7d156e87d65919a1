/* lt_cuda.h - what the C core calls in cuda/ (internal; not FFI-visible).
 *
 * Built only with LT_WITH_CUDA. The C op functions in src/ops/ check their arguments
 * (shapes, dtypes, that every tensor is on one device) and then hand CUDA tensors to the
 * lt_cuda_* function of the same name, declared in the per-family headers included at the
 * end, so the CPU function stays the single place an op's contract is checked. Every
 * function here returns an lt_status and sets the message through lt_fail, like the core. */
#ifndef LT_CUDA_H
#define LT_CUDA_H

#include <stdint.h>

#include "core/cache_alloc.h"
#include "lt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- context and memory (cuda/context.cu) ------------------------------------------ */

int lt_cuda_runtime_device_count(int32_t *out);
int lt_cuda_runtime_set_device(int32_t index);
int lt_cuda_runtime_get_device(int32_t *out);
int lt_cuda_runtime_synchronize(int32_t index);
int lt_cuda_runtime_empty_cache(int32_t index, int64_t *released);
int lt_cuda_runtime_device_info(int32_t index, lt_cuda_device_info *out);

/* Device memory from the device's cache. On failure after the cache's retry, the message
   states the bytes requested, allocated, reserved, and free/total on the device. */
int lt_cuda_alloc(void **out, int64_t nbytes, int32_t device);
void lt_cuda_free(void *p, int32_t device);
int lt_cuda_cache_stats(int32_t device, lt_cache_stats *out);
int lt_cuda_cache_reset_peak(int32_t device);

/* Page-locked host memory. */
int lt_cuda_host_alloc(void **out, int64_t nbytes);
void lt_cuda_host_free(void *p);

/* ---- tensors (cuda/copy.cu) ---------------------------------------------------------- */

/* Any copy where dst or src (or both) is on a device: same shape (src may broadcast),
   any float/int dtypes, any strides. Host <-> device copies stage through a contiguous
   buffer when a side is strided or the dtypes differ. */
int lt_cuda_copy(lt_tensor *dst, const lt_tensor *src);
int lt_cuda_fill(lt_tensor *t, double value);
int lt_cuda_get(const lt_tensor *t, int64_t index, double *out);
int lt_cuda_set(lt_tensor *t, int64_t index, double value);
int lt_cuda_equal(const lt_tensor *a, const lt_tensor *b, int *out);
/* Philox fills identical to the CPU's for the same (seed, offset): kind 0 uniform [a, b),
   1 normal (mean a, std b), 2 integers in [a, b). */
int lt_cuda_rng_fill(lt_tensor *t, int kind, double a, double b, uint64_t seed, uint64_t offset);

#ifdef __cplusplus
}
#endif

/* The op families, one header each (prototypes identical to the CPU functions, with the
   lt_cuda_ prefix in place of lt_). */
#include "core/cuda_api/ops.h"

#endif
