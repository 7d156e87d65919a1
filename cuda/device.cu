// device.cu - CUDA runtime queries behind the C core's device functions.
#include <cuda_runtime.h>

#include <stdint.h>

extern "C" {
#include "internal.h"

int lt_cuda_runtime_device_count(int32_t *out) {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
        *out = 0;
        return LT_OK;
    }
    if (err != cudaSuccess)
        return lt_fail(LT_ERR_DEVICE, "cudaGetDeviceCount: %s", cudaGetErrorString(err));
    *out = n;
    return LT_OK;
}
}
