/*
 * lt.h - the luatrain C core: status codes, dtypes, storage, tensors, memory, RNG.
 *
 * A worked example (error handling elided only where noted):
 *
 *     lt_tensor x = {0}, y = {0};
 *     int64_t sizes[2] = {4, 8};
 *     if (lt_tensor_empty(&x, LT_DTYPE_F32, 2, sizes, LT_DEVICE_CPU, 0) != LT_OK)
 *         fprintf(stderr, "%s\n", lt_last_error());
 *     lt_tensor_fill(&x, 1.0);
 *     lt_tensor_transpose(&y, &x, 0, 1);     // (8, 4) view, no copy
 *     lt_tensor_release(&y);
 *     lt_tensor_release(&x);                 // storage freed with its last view
 *
 * Rules every function here keeps:
 *   - It never exits, aborts or longjmps. A failure returns a nonzero LT_ERR_* code and
 *     leaves a message for lt_last_error() on the calling thread.
 *   - Tensor headers (lt_tensor) are plain values owned by the caller: on the stack in C,
 *     ffi.new'd in Lua. A header holds one reference on its storage. Functions that fill a
 *     header (`dst`/`t` parameters of the constructors and view functions) first drop the
 *     reference it held, so a header can be refilled; start headers zeroed.
 *   - Sizes and strides are in elements; dims are 0-based here (Lua adds 1-based sugar).
 *
 * This header is read by tools/gen_cdef.lua and handed to ffi.cdef, so declarations use
 * only what LuaJIT's C parser accepts: no macros inside declarations, constants as enums.
 */
#ifndef LT_H
#define LT_H

#include <stddef.h>
#include <stdint.h>

/* ---- status and errors ------------------------------------------------------------ */

enum lt_status {
    LT_OK = 0,
    LT_ERR_ARG = 1,         /* a bad argument: NULL, out-of-range dim, bad option */
    LT_ERR_SHAPE = 2,       /* shapes that do not fit together */
    LT_ERR_DTYPE = 3,       /* a dtype the function does not take */
    LT_ERR_DEVICE = 4,      /* wrong device, or tensors on different devices */
    LT_ERR_NOMEM = 5,       /* an allocation failed */
    LT_ERR_IO = 6,          /* open/read/write/rename failed */
    LT_ERR_FORMAT = 7,      /* a malformed file or document */
    LT_ERR_RANGE = 8,       /* an index or value out of its valid range */
    LT_ERR_UNSUPPORTED = 9, /* valid, but not built or not implemented (e.g. no CUDA) */
    LT_ERR_INTERNAL = 10    /* a broken invariant: a bug in luatrain (message has file:line) */
};

/* The message of the last failure on this thread ("" if none). Valid until the next call
   into the library from this thread. */
const char *lt_last_error(void);
int lt_last_status(void);
void lt_clear_error(void);
const char *lt_status_name(int status);
const char *lt_version(void);

/* Seconds on a monotonic clock (for timing steps; not wall-clock time of day). */
double lt_now(void);

/* Ctrl-C as a request, for a run that stops at a step boundary to save a checkpoint:
   lt_interrupt_catch(1) installs a SIGINT handler that only counts the signals (from the
   second on, it puts SIGINT's previous action back, so a third Ctrl-C acts as before);
   lt_interrupt_catch(0) restores the previous action. lt_interrupt_pending() is the count
   since catching began. Returns LT_OK or LT_ERR_IO when sigaction fails. */
int lt_interrupt_catch(int on);
int lt_interrupt_pending(void);

/* Threads used by CPU kernels (OpenMP; BLAS runs single-threaded inside them). n = 0: one
   per CPU in this process's affinity mask (lt_available_cpus); else 1..lt_max_threads(),
   4 per online CPU. Anything else fails with LT_ERR_RANGE and changes nothing. */
int lt_set_num_threads(int n);
int lt_get_num_threads(void);
/* The precision of f32 matrix products on the CPU: LT_MATMUL_F32 (sgemm; the default) or
   LT_MATMUL_BF16 (both operands rounded to bf16, products accumulated in f32 by oneDNN,
   which uses AVX512-BF16 or AMX where the CPU has them: about twice sgemm's rate on
   AVX512-BF16). Like TF32 on a GPU, a setting of the CPU device, read by every matmul
   from then on; BF16 fails with LT_ERR_UNSUPPORTED when oneDNN cannot be loaded. */
enum lt_matmul_precision { LT_MATMUL_F32 = 0, LT_MATMUL_BF16 = 1 };
int lt_set_cpu_matmul_precision(int precision);
int lt_get_cpu_matmul_precision(void);
/* Settings of one CUDA device's context, set by the precision policy (lt.amp.apply) rather
   than for the whole process: allow_tf32 (f32 products may use TF32 tensor cores) and
   deterministic (attention's backward in a fixed order, bit for bit run to run). Every op on
   that device runs under them. A device never set keeps the backend's defaults (TF32 on,
   deterministic off).
   Fails with LT_ERR_DEVICE for anything but a CUDA device index 0..15. */
int lt_set_device_settings(int device_type, int device_index, int allow_tf32, int deterministic);
int lt_get_device_settings(int device_type, int device_index, int *allow_tf32, int *deterministic);
/* CPUs this process may run on (its affinity mask, as taskset, cpusets or mpirun's binding
   leave it), at least 1. */
int lt_available_cpus(void);
/* The largest thread count lt_set_num_threads accepts. */
int lt_max_threads(void);

/* ---- dtypes ----------------------------------------------------------------------- */

enum lt_dtype {
    LT_DTYPE_F32 = 0,
    LT_DTYPE_BF16 = 1,
    LT_DTYPE_F16 = 2,
    LT_DTYPE_I32 = 3,
    LT_DTYPE_I64 = 4,
    LT_DTYPE_U8 = 5,
    LT_DTYPE_I8 = 6,
    LT_DTYPE_COUNT = 7
};
/* 4-bit weights (NF4, FP4) are not a tensor dtype: a quantized weight is one record,
   lt_quant_state (lt_quant.h), whose packed codes, block scales and double-quantization
   constants are plain u8 / f32 tensors in bitsandbytes' layout. Everything that moves or
   shards a quantized weight (devices, checkpoints, ZeRO) moves those tensors, and a packed
   tensor can never be read as numbers without its state. */

/* One row per dtype: the traits table every size computation goes through. */
typedef struct lt_dtype_traits {
    const char *name;    /* "f32", "bf16", ... (the names Lua uses) */
    const char *st_name; /* safetensors name: "F32", "BF16", ... ; NULL if none */
    int32_t bits;        /* bits per element: 64, 32, 16 or 8 */
    int32_t is_float;
    int32_t is_signed;
} lt_dtype_traits;

const lt_dtype_traits *lt_dtype_info(int dtype); /* NULL when dtype is out of range */
int lt_dtype_from_name(const char *name);        /* accepts "f32" or "F32"; -1 if unknown */
int lt_dtype_nbytes(int dtype, int64_t numel, int64_t *out); /* checked for overflow */

/* Scalar conversions (round to nearest even). */
float lt_bf16_to_f32(uint16_t h);
uint16_t lt_f32_to_bf16(float f);
float lt_f16_to_f32(uint16_t h);
uint16_t lt_f32_to_f16(float f);

/* ---- devices and storage ---------------------------------------------------------- */

enum lt_device_type { LT_DEVICE_CPU = 0, LT_DEVICE_CUDA = 1 };

enum lt_storage_kind {
    LT_STORAGE_OWNED = 0,   /* allocated by the device allocator, counted in memory stats */
    LT_STORAGE_MAPPED = 1,  /* a window of a memory-mapped file; `owner` keeps the map alive */
    LT_STORAGE_BORROWED = 2, /* memory owned by someone else; never freed here */
    LT_STORAGE_PAGED = 4,    /* host memory of the paged pool (optimizer state that pages into
                                a device for the update): counted in paged_bytes, outside every
                                device's current bytes and budget; page-locked when the CUDA
                                backend is loaded, so its copies run asynchronously */
    LT_STORAGE_PINNED = 3    /* page-locked host memory (the CUDA backend): copies to and from a
                                device run asynchronously on the device's stream */
};

typedef struct lt_storage {
    void *data;
    int64_t nbytes;
    int32_t refcount;
    int16_t device_type;
    int16_t device_index;
    int32_t kind;
    int32_t readonly; /* writes through a view are refused (LT_ERR_ARG) */
    void *owner;      /* LT_STORAGE_MAPPED: the mapping (refcounted) */
} lt_storage;

int lt_storage_new(lt_storage **out, int64_t nbytes, int device_type, int device_index);
void lt_storage_retain(lt_storage *s);
void lt_storage_release(lt_storage *s);

/* ---- tensors ---------------------------------------------------------------------- */

enum { LT_MAX_DIMS = 8 };

typedef struct lt_tensor {
    lt_storage *storage; /* NULL in an empty header */
    int64_t offset;      /* elements from the start of storage */
    int64_t sizes[LT_MAX_DIMS];
    int64_t strides[LT_MAX_DIMS];
    int32_t ndim;
    int32_t dtype_id; /* an lt_dtype (Lua reads the name as t.dtype) */
} lt_tensor;

/* Drop the storage reference and clear the header. Safe on an empty header. */
void lt_tensor_release(lt_tensor *t);

/* New contiguous storage. `t` is refilled (see the rules above). */
int lt_tensor_empty(lt_tensor *t, int dtype, int ndim, const int64_t *sizes, int device_type,
                    int device_index);
int lt_tensor_zeros(lt_tensor *t, int dtype, int ndim, const int64_t *sizes, int device_type,
                    int device_index);
/* A contiguous tensor holding a copy of `nbytes` bytes at `data` (must match the shape). */
int lt_tensor_from_buffer(lt_tensor *t, int dtype, int ndim, const int64_t *sizes,
                          const void *data, int64_t nbytes);

/* Make `t` contiguous with the given dtype and sizes, keeping its storage when it is
   large enough, unshared or not; grow it otherwise. A module's buffers go through this, so
   repeated steps of the same shape allocate nothing. An empty header gets new storage on
   the given device; a filled one stays on its device. Contents are unspecified after a
   resize that changes the shape. */
int lt_tensor_resize(lt_tensor *t, int dtype, int ndim, const int64_t *sizes, int device_type,
                     int device_index);

/* Views: `dst` shares `src`'s storage. dst may be src itself (in-place reshaping). */
int lt_tensor_share(lt_tensor *dst, const lt_tensor *src);
int lt_tensor_as_strided(lt_tensor *dst, const lt_tensor *src, int ndim, const int64_t *sizes,
                         const int64_t *strides, int64_t offset);
/* One size may be -1 (inferred). Fails with LT_ERR_SHAPE when the strides do not allow a
   view; the message says to make a contiguous copy first. */
int lt_tensor_reshape(lt_tensor *dst, const lt_tensor *src, int ndim, const int64_t *sizes);
/* A contiguous `dtype` view of `sizes` starting `byte_offset` bytes into src's data: the
   bytes read as another type (a byte buffer holding several tensors, as a sharded
   quantized layer's does). The offset must suit the dtype's alignment and the view must fit
   in the storage. */
int lt_tensor_view_bytes(lt_tensor *dst, const lt_tensor *src, int dtype, int ndim, const int64_t *sizes,
                         int64_t byte_offset);
int lt_tensor_permute(lt_tensor *dst, const lt_tensor *src, const int32_t *perm);
int lt_tensor_transpose(lt_tensor *dst, const lt_tensor *src, int dim0, int dim1);
int lt_tensor_narrow(lt_tensor *dst, const lt_tensor *src, int dim, int64_t start,
                     int64_t length);
/* Python-style slice [start:stop:step] along dim, step >= 1; start/stop are clamped. */
int lt_tensor_slice(lt_tensor *dst, const lt_tensor *src, int dim, int64_t start, int64_t stop,
                    int64_t step);
/* Drops `dim`, keeping element `index` of it. */
int lt_tensor_select(lt_tensor *dst, const lt_tensor *src, int dim, int64_t index);
/* Broadcast view to `sizes` (size-1 dims get stride 0; new leading dims allowed). */
int lt_tensor_expand(lt_tensor *dst, const lt_tensor *src, int ndim, const int64_t *sizes);

int lt_tensor_is_contiguous(const lt_tensor *t);
int64_t lt_tensor_numel(const lt_tensor *t); /* 0 for an empty (released) header */
void *lt_tensor_data(const lt_tensor *t); /* address of the first element; NULL if empty */
int lt_tensor_device_type(const lt_tensor *t);

/* dst <- src, elementwise, any strides, converting dtypes. Shapes must match, or src must
   broadcast to dst. */
int lt_tensor_copy(lt_tensor *dst, const lt_tensor *src);
/* dst <- src as lt_tensor_copy; when one side is on a CUDA device and the other in host
   memory (both contiguous, of one dtype and size), the transfer goes on the device's copy
   stream, after the kernels already queued, and runs alongside later ones: *ticket (from 1)
   names it for lt_copy_wait, and both tensors must live until it is waited for. Any other
   copy is complete when this returns and *ticket is 0. */
int lt_tensor_copy_async(lt_tensor *dst, const lt_tensor *src, int64_t *ticket);
/* Waits for transfer `ticket` of a device (and every earlier one): on_host 0 orders the
   device's later kernels after it, 1 blocks the calling thread until it is done. Ticket 0,
   or a CPU device, waits for nothing. */
int lt_copy_wait(int device_type, int device_index, int64_t ticket, int on_host);
/* dst <- a contiguous tensor with src's values in `dtype` (-1 keeps src's dtype). When src
   is already contiguous in that dtype, dst becomes a view of it, not a copy. */
int lt_tensor_contiguous(lt_tensor *dst, const lt_tensor *src, int dtype);
int lt_tensor_fill(lt_tensor *t, double value);
/* Read / write one element by flat row-major index (for printing and small tests). */
int lt_tensor_get(const lt_tensor *t, int64_t index, double *out);
int lt_tensor_set(lt_tensor *t, int64_t index, double value);
/* 1 if every element of the two tensors is equal (same shape required), else 0. */
int lt_tensor_equal(const lt_tensor *a, const lt_tensor *b, int *out);

/* ---- random numbers --------------------------------------------------------------- */

/* Philox-4x32-10, counter based: (seed, offset) is the whole state, so a checkpoint saves
   it as two integers and any element can be drawn independently of thread count. */
typedef struct lt_rng {
    uint64_t seed;
    uint64_t offset; /* 128-bit blocks consumed so far */
} lt_rng;

void lt_rng_seed(lt_rng *rng, uint64_t seed);
int lt_tensor_uniform(lt_tensor *t, double low, double high, lt_rng *rng);
int lt_tensor_normal(lt_tensor *t, double mean, double std, lt_rng *rng);
/* Integers uniform in [low, high). */
int lt_tensor_randint(lt_tensor *t, int64_t low, int64_t high, lt_rng *rng);
/* A uniformly random permutation of 0..n-1 into a contiguous 1-D i32/i64 tensor of n
   (Fisher-Yates driven by the generator; the same (seed, offset) gives the same order). */
int lt_tensor_randperm(lt_tensor *t, lt_rng *rng);

/* ---- memory accounting ------------------------------------------------------------ */

typedef struct lt_memory_stats {
    int64_t current_bytes;  /* owned storage alive now */
    int64_t peak_bytes;     /* high-water mark of current_bytes since the last reset */
    int64_t reserved_bytes; /* held by the allocator (equals current on the CPU) */
    int64_t mapped_bytes;   /* file mappings alive now (not in current/peak) */
    int64_t num_allocs;
    int64_t num_frees;
    int64_t paged_bytes;    /* the paged pool's host memory (the CPU's figure; 0 for devices) */
} lt_memory_stats;

int lt_memory_get_stats(int device_type, int device_index, lt_memory_stats *out);
int lt_memory_reset_peak(int device_type, int device_index);
/* A budget for a device's bytes in use (current_bytes): an allocation that would pass it
   fails with LT_ERR_NOMEM and a message giving the request, the use and the budget, as a
   full device would. 0 removes it. On CUDA it bounds the tensors' bytes, not the cache's. */
int lt_memory_set_limit(int device_type, int device_index, int64_t bytes);
int lt_memory_get_limit(int device_type, int device_index, int64_t *out);

/* Scratch memory for kernels, counted like storage. Returns NULL (with an error set) on
   failure. Aligned to 64 bytes. */
void *lt_scratch_alloc(int64_t nbytes);
void lt_scratch_free(void *p);

/* ---- CUDA ----------------------------------------------------------------------------
   The CUDA backend is a library of its own (libluatrain_cuda.so, beside libluatrain.so, or
   the file LT_CUDA_LIBRARY names), loaded by the first call that needs it: any function
   here, a CUDA tensor, pinned memory. Until then no CUDA library is in the process, so a
   run that uses no GPU starts as a CPU-only build does and needs no CUDA runtime.
   Where the backend cannot be used every function here fails with LT_ERR_UNSUPPORTED and
   the reason: "built without CUDA" (no backend was built), or "CUDA runtime not found: "
   with the dynamic loader's message (it or a library it needs cannot load; a backend built
   from other headers is refused as well). lt_cuda_device_count succeeds with 0 when the
   backend loads but no device (or no driver) is present.

   Each device has one context, made on first use: a non-blocking stream that every kernel,
   copy and cuBLASLt call for the device runs on (never the default stream), a cuBLASLt
   handle with its workspace, and a caching allocator (device storage is returned to the
   cache, not to cudaFree; lt_cuda_empty_cache gives entirely free segments back). Host code
   waits only where it must read a result (a copy to pageable host memory, get, equal,
   lt_cuda_synchronize). */
int lt_cuda_device_count(int32_t *out);
/* The device new CUDA tensors go to when no index is given. */
int lt_cuda_set_device(int32_t index);
int lt_cuda_get_device(int32_t *out);
/* Wait for all work queued on the device's stream (index < 0: the current device). */
int lt_cuda_synchronize(int32_t index);
/* Release the cached, entirely free segments of a device; *released_bytes may be NULL. */
int lt_cuda_empty_cache(int32_t index, int64_t *released_bytes);

typedef struct lt_cuda_device_info {
    char name[256];
    int32_t major, minor; /* compute capability */
    int32_t sm_count;
    int32_t reserved;
    int64_t total_bytes; /* device memory */
    int64_t free_bytes;  /* free now, as the driver sees it */
} lt_cuda_device_info;

int lt_cuda_get_device_info(int32_t index, lt_cuda_device_info *out);

/* A CPU tensor in page-locked memory (LT_STORAGE_PINNED), for batches bound for a device. */
int lt_tensor_empty_pinned(lt_tensor *t, int dtype, int ndim, const int64_t *sizes);
/* A CPU tensor in the paged pool (LT_STORAGE_PAGED), zero-filled: state that lives on the
   host and visits a device in pages (lt.optim's paged optimizers). */
int lt_tensor_empty_paged(lt_tensor *t, int dtype, int ndim, const int64_t *sizes);

#endif
