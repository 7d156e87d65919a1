/* lt_cuda.h - what the C core calls in the CUDA backend (internal; not FFI-visible).
 *
 * The backend (cuda/, built as libluatrain_cuda.so) is loaded on the first call that needs
 * it (src/core/cuda_loader.c), so a run that never touches a GPU never maps the CUDA
 * runtime (ARCHITECTURE.md, contract 12). The core reaches it through one table of
 * function pointers (cuda_api/table.h): for every function declared here and for every op
 * with a CUDA twin (cuda_api/ops.h), the core has a forwarding function of the same name
 * (cuda_api/forward.c) that loads the backend when needed and calls through the table,
 * and the backend has the implementation, hidden inside its library. So the core's call
 * sites read as direct calls (LT_DISPATCH_CUDA(t, lt_cuda_fill(t, 0.0))), and the backend's
 * own calls to these names bind to its own definitions.
 *
 * The C op functions in src/ops/ check their arguments (shapes, dtypes, that every tensor
 * is on one device) and then hand CUDA tensors to the lt_cuda_* function of the same name,
 * so the CPU function stays the single place an op's contract is checked.
 *
 * tools/gen_cuda_api.lua reads the declarations below (one table entry each, in this
 * order) and src/lt_ops.h and src/lt_quant.h (the ops it lists as having a CUDA twin), and
 * writes cuda_api/ops.h, table.h, table_init.h and forward.c. Every int function here
 * returns an lt_status and sets the message through lt_fail, like the core; a forwarder
 * returns the loader's failure ("built without CUDA", "CUDA runtime not found: ...") when
 * the backend cannot load. A void function does nothing then. Declarations here must stay
 * one per statement, without macros. */
#ifndef LT_CUDA_H
#define LT_CUDA_H

#include <stdint.h>

#include "core/cache_alloc.h"
#include "lt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The GEMM's argument record: opaque to the core, defined in cuda/matmul.cuh. */
typedef struct lt_gemm_args lt_gemm_args;

/* ---- context and memory (cuda/context.cu) ------------------------------------------ */

int lt_cuda_runtime_device_count(int32_t *out);
int lt_cuda_runtime_set_device(int32_t index);
int lt_cuda_runtime_get_device(int32_t *out);
int lt_cuda_runtime_synchronize(int32_t index);
int lt_cuda_runtime_empty_cache(int32_t index, int64_t *released);
int lt_cuda_runtime_device_info(int32_t index, lt_cuda_device_info *out);
/* The device's compute stream (a cudaStream_t), on which every kernel and copy of the
   device is queued; made with the device's context on first use. The NCCL back end orders
   its own stream after this one with events (cuda/comm_nccl.c). */
int lt_cuda_runtime_stream(int32_t index, void **out);

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
/* A transfer between a host tensor (pinned, for it to overlap) and a device tensor, both
   contiguous, one dtype, on the device's copy stream, after the work its compute stream has
   queued; *ticket names it for lt_cuda_copy_wait. The caller keeps both tensors until then. */
int lt_cuda_copy_async(lt_tensor *dst, const lt_tensor *src, int64_t *ticket);
/* The device's compute stream (on_host 0) or the calling thread (on_host 1) waits for
   transfer `ticket` (and every earlier one) of `device`; ticket 0 waits for nothing. */
int lt_cuda_copy_wait(int32_t device, int64_t ticket, int on_host);

/* ---- process-wide settings, and a test hook (cuda/matmul.cu, cuda/attention.cu) ------ */

/* TF32 tensor cores for f32 GEMMs (default on, as PyTorch's float32 matmul precision
   "high"). */
void lt_cuda_gemm_allow_tf32(int on);
/* The backend's one GEMM on `device`'s context, for the C tests (the bias epilogue and
   bf16/f16 outputs are reachable only this way). args_size is the caller's
   sizeof(lt_gemm_args); a mismatch is refused. */
int lt_cuda_gemm_device(int32_t device, const lt_gemm_args *g, int64_t args_size);
/* on != 0: later lt_cuda_attention_backward calls are deterministic (cuda_api/attention.h
   says what that costs). */
void lt_cuda_attention_set_deterministic(int on);

#ifdef __cplusplus
}
#endif

/* The op twins (prototypes identical to the CPU functions, with the lt_cuda_ prefix in
   place of lt_) and the table, both generated. */
#include "core/cuda_api/ops.h"
#include "core/cuda_api/table.h"

#endif
