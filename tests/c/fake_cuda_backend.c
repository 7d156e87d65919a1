/* fake_cuda_backend.c - libraries that look like the CUDA backend from outside but must be
 * refused by src/core/cuda_loader.c, each with a message saying why
 * (tests/lua/test_cuda_loader.lua loads them through LT_CUDA_LIBRARY):
 *   FAKE_OLD_VERSION  exports lt_cuda_backend_api, whose table has another interface
 *                     version, as a backend built from older headers would;
 *   FAKE_NO_ENTRY     a shared library without the entry point. */
#include "core/lt_cuda.h"

#ifdef FAKE_OLD_VERSION
/* Only version and size are read before the check refuses it; the pointers stay NULL. */
static const lt_cuda_api old_table = {.version = LT_CUDA_API_VERSION ^ 1u,
                                      .size = (uint32_t)sizeof(lt_cuda_api)};

const lt_cuda_api *lt_cuda_backend_api(void) { return &old_table; }
#endif

#ifdef FAKE_NO_ENTRY
int fake_cuda_backend_marker(void);
int fake_cuda_backend_marker(void) { return 1; }
#endif
