/* test_aio.c - the asynchronous file I/O behind offload=nvme (src/io/aio.c): tensors written
 * at aligned offsets read back exactly (lengths that are not whole blocks included), a read
 * past the end gives zeros, many requests in flight finish in any order, bad requests are
 * refused with the reason, a never-issued ticket is an error, and closing removes the file.
 * Built a second time under AddressSanitizer (threads, bounce buffers, the request queue). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "lt_io.h"

static void fill(lt_tensor *t, float base) {
    float *p = lt_tensor_data(t);
    for (int64_t i = 0; i < lt_tensor_numel(t); i++) p[i] = base + (float)i * 0.5f;
}

static int same(const lt_tensor *a, const lt_tensor *b) {
    return lt_tensor_numel(a) == lt_tensor_numel(b) &&
           memcmp(lt_tensor_data(a), lt_tensor_data(b), (size_t)lt_tensor_numel(a) * 4) == 0;
}

int main(void) {
    char path[256];
    const char *tmp = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/lt_test_aio_%d.bin", tmp && *tmp ? tmp : "/tmp", (int)getpid());
    lt_aio *a = NULL;
    CHECK_OK(lt_aio_open(&a, path, 3));
    CHECK(a != NULL && access(path, F_OK) == 0);
    int64_t align = lt_aio_align();
    CHECK(align == 4096);

    /* three regions: 1000 floats (not a whole block), 2 MiB + 12 bytes, 1024 floats */
    int64_t sizes[3] = {1000, (2 << 20) / 4 + 3, 1024};
    int64_t offs[3];
    lt_tensor src[3] = {{0}}, dst[3] = {{0}};
    int64_t at = 0, tick[3];
    for (int i = 0; i < 3; i++) {
        CHECK_OK(lt_tensor_empty(&src[i], LT_DTYPE_F32, 1, &sizes[i], LT_DEVICE_CPU, 0));
        CHECK_OK(lt_tensor_zeros(&dst[i], LT_DTYPE_F32, 1, &sizes[i], LT_DEVICE_CPU, 0));
        fill(&src[i], (float)(i + 1) * 100.0f);
        offs[i] = at;
        at += (sizes[i] * 4 + align - 1) / align * align;
        CHECK_OK(lt_aio_write(a, offs[i], &src[i], &tick[i]));
        CHECK(tick[i] == i + 1);
    }
    /* waited for out of order */
    CHECK_OK(lt_aio_wait(a, tick[2], 30));
    CHECK_OK(lt_aio_wait(a, tick[0], 30));
    CHECK_OK(lt_aio_wait(a, tick[1], 30));
    for (int i = 0; i < 3; i++) CHECK_OK(lt_aio_read(a, offs[i], &dst[i], &tick[i]));
    for (int i = 2; i >= 0; i--) CHECK_OK(lt_aio_wait(a, tick[i], 30));
    for (int i = 0; i < 3; i++) CHECK(same(&src[i], &dst[i]));

    /* past the end of the file: zeros */
    lt_tensor far = {0};
    int64_t n = 300, t;
    CHECK_OK(lt_tensor_empty(&far, LT_DTYPE_F32, 1, &n, LT_DEVICE_CPU, 0));
    fill(&far, 7.0f);
    CHECK_OK(lt_aio_read(a, at + 16 * align, &far, &t));
    CHECK_OK(lt_aio_wait(a, t, 30));
    int zeros = 1;
    for (int64_t i = 0; i < n; i++) zeros = zeros && ((float *)lt_tensor_data(&far))[i] == 0.0f;
    CHECK(zeros);

    /* many in flight */
    int64_t many[64];
    for (int i = 0; i < 64; i++) CHECK_OK(lt_aio_write(a, offs[0], &src[0], &many[i]));
    for (int i = 63; i >= 0; i--) CHECK_OK(lt_aio_wait(a, many[i], 30));

    /* refusals */
    CHECK_FAILS(lt_aio_write(a, 100, &src[0], &t), LT_ERR_ARG, "not a multiple of 4096");
    lt_tensor view = {0};
    int64_t two = 2, strided[1] = {2};
    CHECK_OK(lt_tensor_as_strided(&view, &src[0], 1, &two, strided, 0));
    CHECK_FAILS(lt_aio_write(a, 0, &view, &t), LT_ERR_ARG, "contiguous");
    CHECK_FAILS(lt_aio_wait(a, 100000, 1), LT_ERR_ARG, "never issued");
    CHECK_OK(lt_aio_wait(a, 0, 1)); /* ticket 0: nothing to wait for */
    lt_aio *b = NULL;
    CHECK_FAILS(lt_aio_open(&b, "/proc/no/such/dir/file", 2), LT_ERR_IO, "/proc/no/such/dir/file");
    CHECK_FAILS(lt_aio_open(&b, path, 0), LT_ERR_RANGE, "threads");

    CHECK_OK(lt_aio_close(a));
    CHECK(access(path, F_OK) != 0);
    for (int i = 0; i < 3; i++) {
        lt_tensor_release(&src[i]);
        lt_tensor_release(&dst[i]);
    }
    lt_tensor_release(&far);
    lt_tensor_release(&view);
    return check_summary();
}
