/* cuda_loader.c - loads the CUDA backend on first use.
 *
 * libluatrain.so links no CUDA library: the CUDA runtime and cuBLASLt come with the
 * backend, libluatrain_cuda.so, which this file dlopens the first time the core needs it
 * (a device count, a device allocation, a setting, ...), once per process. A run that
 * never asks for a GPU therefore starts as fast and as small as a CPU-only build, and runs
 * on a machine without the CUDA runtime (ARCHITECTURE.md, contract 12).
 *
 * Where it looks: LT_CUDA_LIBRARY when set (a path), else libluatrain_cuda.so in the
 * folder libluatrain.so itself was loaded from, which is where the build and the install
 * put it. No file there means the build made no backend: "built without CUDA". A backend
 * that is there but cannot load (usually: the CUDA runtime it needs is missing) is "CUDA
 * runtime not found" with the dynamic loader's reason. Either answer is kept, so every
 * later call fails the same way without touching the file system again.
 *
 * The backend links libluatrain.so (it calls lt_fail, the tensor functions and the caching
 * allocator of src/core/cache_alloc.c), so it binds to this very copy of the core however
 * the core was loaded, and it exports nothing but its entry point, so its lt_cuda_*
 * implementations never interpose on the core's forwarders of the same names. */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/internal.h"

#define LT_CUDA_BACKEND_FILE "libluatrain_cuda.so"

static pthread_once_t backend_once = PTHREAD_ONCE_INIT;
static _Atomic(const lt_cuda_api *) backend;
/* Why the backend is not there; written once, inside pthread_once, read after it. */
static int backend_status;
static char backend_error[1536];

static void LT_PRINTF(2, 3) refuse(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(backend_error, sizeof backend_error, fmt, ap);
    va_end(ap);
    backend_status = status;
}

int lt_core_folder(char *buf, size_t n) {
    Dl_info info;
    if (dladdr((void *)&lt_core_folder, &info) && info.dli_fname && strchr(info.dli_fname, '/')) {
        if (snprintf(buf, n, "%s", info.dli_fname) >= (int)n) return -1;
    } else {
        ssize_t k = readlink("/proc/self/exe", buf, n - 1);
        if (k <= 0) return -1;
        buf[k] = '\0';
    }
    char *slash = strrchr(buf, '/');
    if (!slash) return -1;
    slash[slash == buf] = '\0'; /* "/lib.so" -> "/" */
    return 0;
}

static void load_backend(void) {
    char path[PATH_MAX + sizeof LT_CUDA_BACKEND_FILE + 1];
    const char *env = getenv("LT_CUDA_LIBRARY");
    if (env && *env) {
        snprintf(path, sizeof path, "%s", env);
    } else {
        char folder[PATH_MAX];
        int n = lt_core_folder(folder, sizeof folder) == 0
                    ? snprintf(path, sizeof path, "%s/%s", folder, LT_CUDA_BACKEND_FILE)
                    : -1;
        if (n < 0 || n >= (int)sizeof path || access(path, F_OK) != 0) {
            refuse(LT_ERR_UNSUPPORTED, "built without CUDA");
            return;
        }
    }
    /* RTLD_NOW: a missing symbol is an error here, not a crash at the first call. A
       library that was opened stays open even when it is refused below: it may have run
       the CUDA runtime's initialisers, which are not made to be unloaded. */
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        refuse(LT_ERR_UNSUPPORTED, "CUDA runtime not found: %s (loading the CUDA backend %s%s)",
               dlerror(), path, env && *env ? ", named by LT_CUDA_LIBRARY" : "");
        return;
    }
    void *sym = dlsym(lib, LT_CUDA_BACKEND_ENTRY);
    if (!sym) {
        refuse(LT_ERR_UNSUPPORTED, "%s is not a luatrain CUDA backend: it has no %s", path,
               LT_CUDA_BACKEND_ENTRY);
        return;
    }
    const lt_cuda_api *(*entry)(void);
    memcpy(&entry, &sym, sizeof entry); /* dlsym's object pointer to a function pointer */
    const lt_cuda_api *api = entry();
    if (!api || api->version != LT_CUDA_API_VERSION || api->size != sizeof *api) {
        refuse(LT_ERR_UNSUPPORTED,
               "the CUDA backend %s was built from other headers than this libluatrain "
               "(interface %08x of %u bytes; this core has %08x of %u bytes): rebuild both",
               path, api ? (unsigned)api->version : 0u, api ? (unsigned)api->size : 0u,
               (unsigned)LT_CUDA_API_VERSION, (unsigned)sizeof *api);
        return;
    }
    atomic_store_explicit(&backend, api, memory_order_release);
}

const lt_cuda_api *lt_cuda_backend_loaded(void) {
    return atomic_load_explicit(&backend, memory_order_acquire);
}

const lt_cuda_api *lt_cuda_backend_quiet(void) {
    const lt_cuda_api *api = lt_cuda_backend_loaded();
    if (LT_LIKELY(api != NULL)) return api;
    pthread_once(&backend_once, load_backend);
    return lt_cuda_backend_loaded();
}

int lt_cuda_backend_get(const lt_cuda_api **out) {
    *out = lt_cuda_backend_quiet();
    if (LT_LIKELY(*out != NULL)) return LT_OK;
    return lt_fail(backend_status, "%s", backend_error);
}
