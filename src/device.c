/* device.c - what the build knows about accelerators. */
#include "internal.h"

#ifdef LT_WITH_CUDA
int lt_cuda_runtime_device_count(int32_t *out); /* cuda/device.cu */
#endif

int lt_cuda_device_count(int32_t *out) {
    if (!out) return lt_fail(LT_ERR_ARG, "lt_cuda_device_count: out is NULL");
    *out = 0;
#ifdef LT_WITH_CUDA
    return lt_cuda_runtime_device_count(out);
#else
    return lt_fail(LT_ERR_UNSUPPORTED, "built without CUDA");
#endif
}
