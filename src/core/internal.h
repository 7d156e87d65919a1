/* internal.h - helpers shared by the C core; not part of the FFI-visible API. */
#ifndef LT_INTERNAL_H
#define LT_INTERNAL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "lt.h"

#if defined(__GNUC__)
#define LT_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define LT_LIKELY(x) __builtin_expect(!!(x), 1)
#define LT_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define LT_PRINTF(a, b)
#define LT_LIKELY(x) (x)
#define LT_UNLIKELY(x) (x)
#endif

/* Record a failure for lt_last_error() and return `status`. */
int lt_fail(int status, const char *fmt, ...) LT_PRINTF(2, 3);
/* A broken invariant: the message carries file:line so the bug can be found. */
int lt_fail_internal(const char *file, int line, const char *fmt, ...) LT_PRINTF(3, 4);
#define LT_INTERNAL(...) lt_fail_internal(__FILE__, __LINE__, __VA_ARGS__)

/* Propagate a failing status. */
#define LT_TRY(expr)                                                                     \
    do {                                                                                 \
        int lt_try_status_ = (expr);                                                     \
        if (lt_try_status_ != LT_OK) return lt_try_status_;                              \
    } while (0)

/* Prefix the current message with context ("loading x.safetensors: ..."). */
int lt_fail_prefix(int status, const char *fmt, ...) LT_PRINTF(2, 3);

/* The folder of the file the core was loaded from: libluatrain.so's, where the optional
   back end libraries lie (libluatrain_cuda.so, libluatrain_mpi.so, ...), or the program's
   when the core is linked in statically (the sanitizer tests). 0 on success. */
int lt_core_folder(char *buf, size_t n);

/* CPU threads a rank gets when threads=0 (set by the comm layer from the ranks sharing
   its machine's cores); 0 restores one per CPU of the affinity mask. */
void lt_threads_set_share(int n);

/* ---- dtype helpers ------------------------------------------------------------------ */

static inline float lt_bf16_to_f32_inline(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t lt_f32_to_bf16_inline(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float lt_f16_to_f32_slow(uint16_t h);
uint16_t lt_f32_to_f16_slow(float f);

/* A half-precision scalar that F16C converts in one instruction either way (vcvtph2ps,
   vcvtps2ph rounding to nearest even). GCC spells it _Float16; clang 14 accepts _Float16
   on x86 only with AVX512-FP16, but its storage-only __fp16 compiles to the same two
   instructions. */
#if defined(__F16C__) || defined(__AVX512F__)
#if defined(__clang__)
typedef __fp16 lt_half_hw;
#else
typedef _Float16 lt_half_hw;
#endif
#endif

static inline float lt_f16_to_f32_inline(uint16_t h) {
#if defined(__F16C__) || defined(__AVX512F__)
    lt_half_hw x;
    memcpy(&x, &h, 2);
    return (float)x;
#else
    return lt_f16_to_f32_slow(h);
#endif
}

static inline uint16_t lt_f32_to_f16_inline(float f) {
#if defined(__F16C__) || defined(__AVX512F__)
    lt_half_hw x = (lt_half_hw)f;
    uint16_t h;
    memcpy(&h, &x, 2);
    return h;
#else
    return lt_f32_to_f16_slow(f);
#endif
}

/* Convert `n` contiguous elements of a float dtype (f32/bf16/f16) to f32. */
void lt_convert_to_f32(float *dst, const void *src, int dtype, int64_t n);
void lt_convert_from_f32(void *dst, int dtype, const float *src, int64_t n);

static inline int lt_dtype_size(int dtype) {
    const lt_dtype_traits *tr = lt_dtype_info(dtype);
    return tr ? tr->bits / 8 : 0;
}

static inline int lt_is_float_dtype(int dtype) {
    return dtype == LT_DTYPE_F32 || dtype == LT_DTYPE_BF16 || dtype == LT_DTYPE_F16;
}

static inline int lt_is_index_dtype(int dtype) {
    return dtype == LT_DTYPE_I32 || dtype == LT_DTYPE_I64;
}

/* Read index i of a contiguous i32/i64 array. */
static inline int64_t lt_load_index(const void *p, int dtype, int64_t i) {
    return dtype == LT_DTYPE_I32 ? (int64_t)((const int32_t *)p)[i] : ((const int64_t *)p)[i];
}

/* ---- argument checks used by every op --------------------------------------------- */

/* "name": a human name for messages ("x", "weight"). Each returns LT_OK or fails. */
int lt_check_tensor(const lt_tensor *t, const char *op, const char *name);
int lt_check_cpu(const lt_tensor *t, const char *op, const char *name);
int lt_check_f32_contig(const lt_tensor *t, const char *op, const char *name);
/* The same before an op's device dispatch: f32 contiguous on the CPU (the message above);
   contiguous on a CUDA device, f32, or f32/bf16/f16 when lowp_on_cuda. */
int lt_check_contig_float(const lt_tensor *t, int lowp_on_cuda, const char *op,
                          const char *name);
int lt_check_dtype(const lt_tensor *t, int dtype, const char *op, const char *name);
int lt_check_ndim(const lt_tensor *t, int ndim, const char *op, const char *name);
int lt_check_same_shape(const lt_tensor *a, const lt_tensor *b, const char *op, const char *na,
                        const char *nb);
int lt_check_writable(const lt_tensor *t, const char *op, const char *name);

/* lt_check_out's dtype when the op checks an output's dtype itself: through the support
   table (src/ops/support.c), beside its inputs' dtypes. */
enum { LT_OUT_ANY_DTYPE = -1 };
/* The one check of a tensor an op writes, on any device, before the op dispatches: a
   tensor, of the dtype `dtype` asks for, writable, not a broadcast view (a stride-0 dim of
   size > 1 makes several elements one), and, when `in` is not NULL, on the device of the
   op's input `in` (lt_check_same_device(in, t, ...): "x is on cuda:0 but out is on cpu"). */
int lt_check_out(const lt_tensor *t, int dtype, const char *op, const char *name,
                 const lt_tensor *in, const char *in_name);
/* Formats "(2, 3, 4)" into buf. */
const char *lt_shape_str(const lt_tensor *t, char *buf, size_t len);

/* Product of sizes[0..ndim) with overflow check. */
int lt_numel_checked(int ndim, const int64_t *sizes, int64_t *out);

/* BLAS threads follow lt_set_num_threads (ops/matmul.c). */
void lt_blas_set_threads(int n);

/* C (M x N) = (accumulate ? C : 0) + A (M x K) @ B (K x N), all f32 row-major with leading
   dims (ops/gemm_small.c). For small blocks inside kernels; single-threaded. Columns beyond
   the last multiple of lt_gemm_vector_floats() take a slow scalar path, so callers pad N. */
void lt_gemm_nn(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                int64_t ldb, float *C, int64_t ldc, int accumulate);
int lt_gemm_vector_floats(void);

/* exp(x) for x <= 0 (softmax after subtracting the max), within 2 ulp of expf, written so
   the compiler vectorises loops over it (libm's expf does not vectorise without
   -ffast-math). Inputs below -87 give 0. */
static inline float lt_exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = __builtin_rintf(x * 1.44269504088896341f);
    float r = x - n * 0.693145751953125f - n * 1.42860682030941723e-6f; /* |r| <= ln2/2 */
    /* exp(r) by its Taylor polynomial to degree 7 in Horner form */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t e = (int32_t)n + 127;
    uint32_t bits = (uint32_t)(e < 1 ? 0 : e) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

/* OpenMP: run a loop in parallel only when it has enough work to pay for the threads. */
#define LT_PAR_MIN_WORK 32768

/* Row stride of a tensor viewed as (rows, cols) with unit stride in its last dim and rows
   flattened over the leading dims; -1 if the leading dims cannot be flattened. */
int64_t lt_row_stride(const lt_tensor *t);

/* ---- devices -------------------------------------------------------------------------- */

static inline int lt_on_cuda(const lt_tensor *t) {
    return t && t->storage && t->storage->device_type == LT_DEVICE_CUDA;
}

/* `t` (when not NULL) must be on the device of `ref`. */
int lt_check_same_device(const lt_tensor *t, const lt_tensor *ref, const char *op,
                         const char *name, const char *ref_name);

/* Hand an op to its CUDA twin when `t` is on a device (after the device-agnostic checks).
   Every build compiles this in: device tensors exist only once the CUDA backend has loaded
   (core/cuda_loader.c), so a run without them never reaches it. */
#include "core/lt_cuda.h"
/* Before an op runs on CUDA device i: the device's settings (lt_set_device_settings: TF32,
   deterministic attention) are handed to the backend when they differ from what it holds.
   A device whose settings were never set leaves the backend as it is. */
void lt_cuda_apply_settings(int device_index);

#define LT_DISPATCH_CUDA(t, call)                                                        \
    do {                                                                                 \
        if (lt_on_cuda(t)) {                                                             \
            lt_cuda_apply_settings((t)->storage->device_index);                          \
            return (call);                                                               \
        }                                                                                \
    } while (0)

/* The CUDA backend's table (core/cuda_loader.c). lt_cuda_backend_get loads the backend on
   its first call (once per process, thread-safe) and fails with the reason when it cannot
   ("built without CUDA", "CUDA runtime not found: ..."); lt_cuda_backend_quiet does the
   same but returns NULL and leaves the last error alone; lt_cuda_backend_loaded never
   loads (NULL until something else has). */
int lt_cuda_backend_get(const lt_cuda_api **out);
const lt_cuda_api *lt_cuda_backend_quiet(void);
const lt_cuda_api *lt_cuda_backend_loaded(void);

/* Page-locked host storage (storage.c; needs the CUDA backend). */
int lt_storage_new_pinned(lt_storage **out, int64_t nbytes);
int lt_storage_new_paged(lt_storage **out, int64_t nbytes);

/* ---- file mappings (storage.c) ------------------------------------------------------ */

/* A private (copy-on-write) mmap of a whole file, refcounted; storages made from it keep it alive. */
typedef struct lt_mapping lt_mapping;
int lt_mapping_open(lt_mapping **out, const char *path, int64_t *size_out);
const void *lt_mapping_data(const lt_mapping *m);
void lt_mapping_retain(lt_mapping *m);
void lt_mapping_release(lt_mapping *m);
/* madvise(MADV_DONTNEED) on the whole pages inside [offset, offset + nbytes) of a mapping. */
int lt_mapping_drop_pages(lt_mapping *m, int64_t offset, int64_t nbytes);
/* A storage viewing [offset, offset+nbytes) of the mapping. */
int lt_storage_new_mapped(lt_storage **out, lt_mapping *m, int64_t offset, int64_t nbytes);

#endif
