/* test_tensor.c - the tensor core: errors, dtypes, storage and memory accounting, views,
 * copies and conversions, random numbers, matmul layouts, and the argument checks of the
 * nn kernels. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "lt.h"
#include "lt_ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int64_t cpu_current(void) {
    lt_memory_stats s;
    lt_memory_get_stats(LT_DEVICE_CPU, 0, &s);
    return s.current_bytes;
}

static float *fdata(const lt_tensor *t) { return (float *)lt_tensor_data(t); }

static double at(const lt_tensor *t, int64_t i) {
    double v = NAN;
    lt_tensor_get(t, i, &v);
    return v;
}

static void fill_seq(lt_tensor *t) {
    int64_t n = lt_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) lt_tensor_set(t, i, (double)i);
}

static void test_errors(void) {
    lt_tensor t = {0};
    int64_t sizes[2] = {2, -3};
    CHECK_FAILS(lt_tensor_empty(&t, LT_DTYPE_F32, 2, sizes, LT_DEVICE_CPU, 0), LT_ERR_SHAPE,
                "negative size -3 in dim 1");
    CHECK(lt_last_status() == LT_ERR_SHAPE);
    lt_clear_error();
    CHECK(strcmp(lt_last_error(), "") == 0);
    CHECK_FAILS(lt_tensor_empty(&t, 99, 0, NULL, LT_DEVICE_CPU, 0), LT_ERR_DTYPE, "unknown dtype 99");
    int64_t big[3] = {1LL << 40, 1LL << 20, 1LL << 10};
    CHECK_FAILS(lt_tensor_empty(&t, LT_DTYPE_F32, 3, big, LT_DEVICE_CPU, 0), LT_ERR_RANGE, "overflow");
    /* a CPU-only build says so; a CUDA build answers (0 devices on a machine without one),
     * and a CUDA tensor then fails with the reason rather than crashing */
    int64_t ok[1] = {4};
    int32_t n = -1;
    int st = lt_cuda_device_count(&n);
    CHECK((st == LT_ERR_UNSUPPORTED && strstr(lt_last_error(), "built without CUDA")) ||
          (st == LT_OK && n >= 0));
    if (st == LT_ERR_UNSUPPORTED) {
        CHECK_FAILS(lt_tensor_empty(&t, LT_DTYPE_F32, 1, ok, LT_DEVICE_CUDA, 0),
                    LT_ERR_UNSUPPORTED, "CUDA tensors");
    } else if (n == 0) {
        CHECK_FAILS(lt_tensor_empty(&t, LT_DTYPE_F32, 1, ok, LT_DEVICE_CUDA, 0), LT_ERR_DEVICE,
                    "no CUDA device");
    } else {
        CHECK(lt_tensor_empty(&t, LT_DTYPE_F32, 1, ok, LT_DEVICE_CUDA, 0) == LT_OK);
        lt_tensor_release(&t);
    }
    CHECK(strcmp(lt_status_name(LT_ERR_FORMAT), "malformed input") == 0);
    CHECK(t.storage == NULL);
}

static void test_dtypes(void) {
    CHECK(lt_dtype_from_name("bf16") == LT_DTYPE_BF16);
    CHECK(lt_dtype_from_name("BF16") == LT_DTYPE_BF16);
    CHECK(lt_dtype_from_name("float16") == LT_DTYPE_F16);
    CHECK(lt_dtype_from_name("F64") == -1);
    /* 4-bit weights are quantization states (lt_quant.h), never tensor dtypes */
    CHECK(lt_dtype_from_name("nf4") == -1);
    CHECK(lt_dtype_from_name("fp4") == -1);
    CHECK(lt_dtype_info(LT_DTYPE_COUNT) == NULL);
    for (int d = 0; d < LT_DTYPE_COUNT; d++) CHECK(lt_dtype_info(d)->bits % 8 == 0);
    int64_t nb = 0;
    CHECK_OK(lt_dtype_nbytes(LT_DTYPE_I8, 7, &nb));
    CHECK(nb == 7);
    CHECK_FAILS(lt_dtype_nbytes(LT_DTYPE_I64, INT64_MAX / 4, &nb), LT_ERR_RANGE, "overflow");

    /* bf16: round to nearest even, NaN stays NaN, exact for representable values */
    CHECK(lt_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(lt_f32_to_bf16(1.00390625f) == 0x3f80); /* halfway, rounds to even */
    CHECK(lt_f32_to_bf16(1.01171875f) == 0x3f82); /* halfway, rounds up to even */
    CHECK(isnan(lt_bf16_to_f32(lt_f32_to_bf16(NAN))));
    CHECK(lt_bf16_to_f32(lt_f32_to_bf16(-INFINITY)) == -INFINITY);
    /* f16: every half value survives f16 -> f32 -> f16, and rounding matches the hardware
       conversion where the compiler has one */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = lt_f16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        if (lt_f32_to_f16(f) != h) bad++;
    }
    CHECK(bad == 0);
    CHECK(lt_f32_to_f16(65504.0f) == 0x7bff);
    CHECK(lt_f32_to_f16(65520.0f) == 0x7c00);   /* rounds to inf */
    CHECK(lt_f32_to_f16(5.960464477539063e-08f) == 0x0001); /* smallest subnormal */
    CHECK(lt_f32_to_f16(2.9802322387695312e-08f) == 0x0000); /* half of it: ties to even */
    CHECK(lt_f32_to_f16(1.0009765625f) == 0x3c01);
    CHECK(lt_f32_to_f16(1.00048828125f) == 0x3c00); /* halfway: even */
}

static void test_storage_and_memory(void) {
    int64_t before = cpu_current();
    lt_tensor a = {0}, v = {0};
    int64_t s[2] = {4, 6};
    CHECK_OK(lt_tensor_zeros(&a, LT_DTYPE_F32, 2, s, LT_DEVICE_CPU, 0));
    CHECK(cpu_current() - before == 96);
    CHECK(a.storage->refcount == 1);
    CHECK_OK(lt_tensor_transpose(&v, &a, 0, 1));
    CHECK(a.storage->refcount == 2 && v.storage == a.storage);
    lt_tensor_release(&a);
    CHECK(a.storage == NULL);
    CHECK(cpu_current() - before == 96); /* the view keeps the storage alive */
    CHECK(at(&v, 5) == 0.0);
    lt_tensor_release(&v);
    CHECK(cpu_current() == before);

    /* resize keeps storage while it fits, grows when not */
    lt_tensor b = {0};
    int64_t big[1] = {100}, small[2] = {3, 5}, bigger[1] = {101};
    CHECK_OK(lt_tensor_resize(&b, LT_DTYPE_F32, 1, big, LT_DEVICE_CPU, 0));
    lt_storage *st = b.storage;
    CHECK_OK(lt_tensor_resize(&b, LT_DTYPE_F32, 2, small, LT_DEVICE_CPU, 0));
    CHECK(b.storage == st && b.ndim == 2 && b.strides[0] == 5 && lt_tensor_is_contiguous(&b));
    CHECK_OK(lt_tensor_resize(&b, LT_DTYPE_I64, 1, big, LT_DEVICE_CPU, 0));
    CHECK(b.storage != st || b.storage->nbytes >= 800);
    CHECK_OK(lt_tensor_resize(&b, LT_DTYPE_I64, 1, bigger, LT_DEVICE_CPU, 0));
    CHECK(b.storage->nbytes == 808);
    lt_tensor_release(&b);
    CHECK(cpu_current() == before);

    /* peak tracks the high-water mark and resets to the current figure */
    lt_memory_reset_peak(LT_DEVICE_CPU, 0);
    lt_tensor c = {0};
    int64_t n1[1] = {1000};
    CHECK_OK(lt_tensor_empty(&c, LT_DTYPE_F32, 1, n1, LT_DEVICE_CPU, 0));
    lt_tensor_release(&c);
    lt_memory_stats ms;
    CHECK_OK(lt_memory_get_stats(LT_DEVICE_CPU, 0, &ms));
    CHECK(ms.peak_bytes - ms.current_bytes == 4000);
    CHECK_OK(lt_memory_reset_peak(LT_DEVICE_CPU, 0));
    CHECK_OK(lt_memory_get_stats(LT_DEVICE_CPU, 0, &ms));
    CHECK(ms.peak_bytes == ms.current_bytes);
    CHECK_FAILS(lt_memory_get_stats(7, 0, &ms), LT_ERR_DEVICE, "no such device");
}

static void test_views(void) {
    lt_tensor a = {0}, v = {0}, w = {0};
    int64_t s[3] = {2, 3, 4};
    CHECK_OK(lt_tensor_empty(&a, LT_DTYPE_F32, 3, s, LT_DEVICE_CPU, 0));
    fill_seq(&a);

    int64_t r1[2] = {6, -1};
    CHECK_OK(lt_tensor_reshape(&v, &a, 2, r1));
    CHECK(v.sizes[0] == 6 && v.sizes[1] == 4 && at(&v, 23) == 23.0);
    CHECK_FAILS(lt_tensor_reshape(&v, &a, 2, (int64_t[]){5, -1}), LT_ERR_SHAPE, "cannot infer");

    /* (2,3,4) permuted to (4,2,3): element [k][i][j] = a[i][j][k] */
    int32_t perm[3] = {2, 0, 1};
    CHECK_OK(lt_tensor_permute(&v, &a, perm));
    CHECK(v.sizes[0] == 4 && v.strides[0] == 1 && !lt_tensor_is_contiguous(&v));
    CHECK(at(&v, 1 * 6 + 1 * 3 + 2) == (1 * 12 + 2 * 4 + 1));
    /* a permuted tensor's dims (4, 2*3) merge only where strides nest */
    CHECK_FAILS(lt_tensor_reshape(&w, &v, 1, (int64_t[]){24}), LT_ERR_SHAPE, "contiguous");
    CHECK_OK(lt_tensor_reshape(&w, &v, 2, (int64_t[]){4, 6}));
    CHECK(w.strides[0] == 1 && w.strides[1] == 4);
    CHECK_FAILS(lt_tensor_permute(&w, &a, (int32_t[]){0, 0, 1}), LT_ERR_ARG, "permutation");

    /* slice with a step, narrow, select */
    CHECK_OK(lt_tensor_slice(&v, &a, 2, 1, 100, 2)); /* [..., 1:100:2] -> 2 columns */
    CHECK(v.sizes[2] == 2 && v.strides[2] == 2 && at(&v, 0) == 1.0 && at(&v, 1) == 3.0);
    CHECK_OK(lt_tensor_narrow(&w, &a, 1, 1, 2));
    CHECK(w.sizes[1] == 2 && at(&w, 0) == 4.0);
    CHECK_FAILS(lt_tensor_narrow(&w, &a, 1, 2, 2), LT_ERR_RANGE, "outside dim 1");
    CHECK_OK(lt_tensor_select(&w, &a, -1, -1));
    CHECK(w.ndim == 2 && at(&w, 0) == 3.0 && at(&w, 5) == 23.0);
    CHECK_FAILS(lt_tensor_select(&w, &a, 3, 0), LT_ERR_ARG, "dim 3 out of range");

    /* expand broadcasts with stride 0, and copy through it */
    lt_tensor row = {0}, big = {0};
    CHECK_OK(lt_tensor_select(&row, &a, 0, 1));
    CHECK_OK(lt_tensor_narrow(&row, &row, 0, 0, 1)); /* (1, 4), in place */
    CHECK_OK(lt_tensor_expand(&w, &row, 3, (int64_t[]){5, 3, -1}));
    CHECK(w.strides[0] == 0 && w.strides[1] == 0 && at(&w, 59) == 15.0);
    CHECK_FAILS(lt_tensor_expand(&w, &a, 3, (int64_t[]){2, 5, 4}), LT_ERR_SHAPE, "cannot broadcast");
    CHECK_OK(lt_tensor_zeros(&big, LT_DTYPE_F32, 2, (int64_t[]){3, 4}, LT_DEVICE_CPU, 0));
    CHECK_OK(lt_tensor_copy(&big, &row));
    CHECK(at(&big, 8) == 12.0 && at(&big, 11) == 15.0);

    /* as_strided refuses to reach outside the storage */
    CHECK_FAILS(lt_tensor_as_strided(&w, &a, 2, (int64_t[]){2, 13}, (int64_t[]){12, 1}, 0),
                LT_ERR_RANGE, "storage holds 96 bytes");
    CHECK_OK(lt_tensor_as_strided(&w, &a, 2, (int64_t[]){4, 2}, (int64_t[]){5, 1}, 3));
    CHECK(at(&w, 7) == 19.0);

    lt_tensor_release(&a);
    lt_tensor_release(&v);
    lt_tensor_release(&w);
    lt_tensor_release(&row);
    lt_tensor_release(&big);
}

static void test_copy_convert(void) {
    lt_tensor a = {0}, t = {0}, c = {0}, d = {0};
    int64_t s[2] = {37, 53};
    CHECK_OK(lt_tensor_empty(&a, LT_DTYPE_F32, 2, s, LT_DEVICE_CPU, 0));
    lt_rng rng;
    lt_rng_seed(&rng, 3);
    CHECK_OK(lt_tensor_normal(&a, 0, 3, &rng));
    CHECK_OK(lt_tensor_transpose(&t, &a, 0, 1));
    CHECK_OK(lt_tensor_contiguous(&c, &t, LT_DTYPE_BF16)); /* strided f32 -> contiguous bf16 */
    CHECK(c.dtype_id == LT_DTYPE_BF16 && lt_tensor_is_contiguous(&c));
    int bad = 0;
    for (int64_t i = 0; i < 37; i++)
        for (int64_t j = 0; j < 53; j++) {
            float want = lt_bf16_to_f32(lt_f32_to_bf16(fdata(&a)[i * 53 + j]));
            if (at(&c, j * 37 + i) != want) bad++;
        }
    CHECK(bad == 0);
    /* contiguous() of an already contiguous tensor of the same dtype is a view */
    CHECK_OK(lt_tensor_contiguous(&d, &a, -1));
    CHECK(d.storage == a.storage);
    /* integer conversions truncate toward zero and saturate */
    lt_tensor f = {0}, i8 = {0};
    CHECK_OK(lt_tensor_empty(&f, LT_DTYPE_F32, 1, (int64_t[]){4}, LT_DEVICE_CPU, 0));
    float vals[4] = {-1.7f, 300.0f, -300.0f, NAN};
    memcpy(fdata(&f), vals, sizeof vals);
    CHECK_OK(lt_tensor_contiguous(&i8, &f, LT_DTYPE_I8));
    CHECK(at(&i8, 0) == -1 && at(&i8, 1) == 127 && at(&i8, 2) == -128 && at(&i8, 3) == 0);
    int eq = 0;
    CHECK_OK(lt_tensor_equal(&a, &d, &eq));
    CHECK(eq == 1);
    CHECK_FAILS(lt_tensor_copy(&f, &a), LT_ERR_SHAPE, "does not match");
    lt_tensor_release(&a);
    lt_tensor_release(&t);
    lt_tensor_release(&c);
    lt_tensor_release(&d);
    lt_tensor_release(&f);
    lt_tensor_release(&i8);
}

static void test_rng(void) {
    /* the same draws whatever the thread count */
    lt_tensor a = {0}, b = {0};
    int64_t n[1] = {100003};
    CHECK_OK(lt_tensor_empty(&a, LT_DTYPE_F32, 1, n, LT_DEVICE_CPU, 0));
    CHECK_OK(lt_tensor_empty(&b, LT_DTYPE_F32, 1, n, LT_DEVICE_CPU, 0));
    lt_rng r1, r2;
    lt_rng_seed(&r1, 42);
    lt_rng_seed(&r2, 42);
#ifdef _OPENMP
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    CHECK_OK(lt_tensor_normal(&a, 1.0, 2.0, &r1));
#ifdef _OPENMP
    omp_set_num_threads(threads > 1 ? threads : 2);
#endif
    CHECK_OK(lt_tensor_normal(&b, 1.0, 2.0, &r2));
    CHECK(memcmp(fdata(&a), fdata(&b), (size_t)n[0] * 4) == 0);
    CHECK(r1.offset == r2.offset && r1.offset == (uint64_t)(n[0] + 3) / 4);
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n[0]; i++) mean += fdata(&a)[i];
    mean /= (double)n[0];
    for (int64_t i = 0; i < n[0]; i++) var += (fdata(&a)[i] - mean) * (fdata(&a)[i] - mean);
    var /= (double)n[0];
    CHECK(fabs(mean - 1.0) < 0.03 && fabs(sqrt(var) - 2.0) < 0.03);
    /* the next draw differs (the offset moved on) */
    CHECK_OK(lt_tensor_normal(&b, 1.0, 2.0, &r2));
    CHECK(memcmp(fdata(&a), fdata(&b), 64) != 0);
    lt_tensor ints = {0};
    CHECK_OK(lt_tensor_empty(&ints, LT_DTYPE_I64, 1, (int64_t[]){5000}, LT_DEVICE_CPU, 0));
    CHECK_OK(lt_tensor_randint(&ints, -3, 4, &r1));
    int seen[7] = {0}, out = 0;
    for (int64_t i = 0; i < 5000; i++) {
        int64_t v = ((int64_t *)lt_tensor_data(&ints))[i];
        if (v < -3 || v >= 4) out++;
        else seen[v + 3] = 1;
    }
    CHECK(out == 0);
    for (int i = 0; i < 7; i++) CHECK(seen[i]);
    CHECK_FAILS(lt_tensor_randint(&ints, 4, 4, &r1), LT_ERR_ARG, "empty");
    /* fills that go through a staging buffer: bf16, i32 and transposed views, N-d */
    lt_tensor h = {0}, tv = {0}, i32 = {0};
    CHECK_OK(lt_tensor_zeros(&h, LT_DTYPE_BF16, 2, (int64_t[]){3, 5}, LT_DEVICE_CPU, 0));
    CHECK_OK(lt_tensor_normal(&h, 0, 1, &r1));
    CHECK(at(&h, 14) != 0.0 && at(&h, 0) != 0.0);
    CHECK_OK(lt_tensor_transpose(&tv, &a, 0, 0)); /* a 1-D view is its own transpose */
    CHECK_OK(lt_tensor_zeros(&i32, LT_DTYPE_I32, 3, (int64_t[]){2, 3, 4}, LT_DEVICE_CPU, 0));
    CHECK_OK(lt_tensor_randint(&i32, 1, 3, &r1));
    int in_range = 1;
    for (int64_t i = 0; i < 24; i++) in_range &= at(&i32, i) == 1 || at(&i32, i) == 2;
    CHECK(in_range);
    lt_tensor_release(&h);
    lt_tensor_release(&tv);
    lt_tensor_release(&i32);
    lt_tensor_release(&a);
    lt_tensor_release(&b);
    lt_tensor_release(&ints);
}

/* naive f64 reference of op(a) @ op(b) for 2-D row-major f32 a, b */
static double ref_mm(const lt_tensor *a, const lt_tensor *b, int ta, int tb, int64_t i, int64_t j) {
    int64_t K = ta ? a->sizes[0] : a->sizes[1];
    double s = 0;
    for (int64_t k = 0; k < K; k++) {
        double x = ta ? at(a, k * a->sizes[1] + i) : at(a, i * a->sizes[1] + k);
        double y = tb ? at(b, j * b->sizes[1] + k) : at(b, k * b->sizes[1] + j);
        s += x * y;
    }
    return s;
}

static void test_matmul(void) {
    lt_rng rng;
    lt_rng_seed(&rng, 9);
    const int64_t M = 19, K = 33, N = 7;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int dt = 0; dt < 3; dt++) {
                int dtype = dt == 0 ? LT_DTYPE_F32 : dt == 1 ? LT_DTYPE_BF16 : LT_DTYPE_F16;
                lt_tensor a = {0}, b = {0}, a2 = {0}, b2 = {0}, c = {0};
                int64_t sa[2] = {ta ? K : M, ta ? M : K}, sb[2] = {tb ? N : K, tb ? K : N};
                lt_tensor_empty(&a, LT_DTYPE_F32, 2, sa, LT_DEVICE_CPU, 0);
                lt_tensor_empty(&b, LT_DTYPE_F32, 2, sb, LT_DEVICE_CPU, 0);
                lt_tensor_normal(&a, 0, 1, &rng);
                lt_tensor_normal(&b, 0, 1, &rng);
                /* round through the low-precision dtype so the reference sees the same values */
                lt_tensor_contiguous(&a2, &a, dtype);
                lt_tensor_contiguous(&b2, &b, dtype);
                lt_tensor_copy(&a, &a2);
                lt_tensor_copy(&b, &b2);
                lt_tensor_empty(&c, LT_DTYPE_F32, 2, (int64_t[]){M, N}, LT_DEVICE_CPU, 0);
                CHECK_OK(lt_matmul(&c, &a2, &b2, ta, tb, 1.0f, 0.0f));
                double worst = 0;
                for (int64_t i = 0; i < M; i++)
                    for (int64_t j = 0; j < N; j++) {
                        double e = fabs(fdata(&c)[i * N + j] - ref_mm(&a, &b, ta, tb, i, j));
                        worst = e > worst ? e : worst;
                    }
                CHECK(worst < 1e-4);
                if (worst >= 1e-4) fprintf(stderr, "  matmul ta=%d tb=%d dtype=%d err %g\n", ta, tb, dtype, worst);
                lt_tensor_release(&a);
                lt_tensor_release(&b);
                lt_tensor_release(&a2);
                lt_tensor_release(&b2);
                lt_tensor_release(&c);
            }

    /* a layout with no unit stride is copied; batched output with shared b folds */
    lt_tensor x = {0}, xs = {0}, w = {0}, y = {0}, bad = {0};
    lt_tensor_empty(&x, LT_DTYPE_F32, 3, (int64_t[]){4, 6, 10}, LT_DEVICE_CPU, 0);
    lt_tensor_normal(&x, 0, 1, &rng);
    CHECK_OK(lt_tensor_slice(&xs, &x, 2, 0, 10, 2)); /* (4, 6, 5) with stride 2 in K */
    lt_tensor_empty(&w, LT_DTYPE_F32, 2, (int64_t[]){3, 5}, LT_DEVICE_CPU, 0);
    lt_tensor_normal(&w, 0, 1, &rng);
    lt_tensor_empty(&y, LT_DTYPE_F32, 3, (int64_t[]){4, 6, 3}, LT_DEVICE_CPU, 0);
    CHECK_OK(lt_matmul(&y, &xs, &w, 0, 1, 1.0f, 0.0f));
    double worst = 0;
    for (int64_t bb = 0; bb < 4; bb++)
        for (int64_t i = 0; i < 6; i++)
            for (int64_t j = 0; j < 3; j++) {
                double s = 0;
                for (int64_t k = 0; k < 5; k++)
                    s += (double)fdata(&x)[bb * 60 + i * 10 + 2 * k] * fdata(&w)[j * 5 + k];
                double e = fabs(fdata(&y)[bb * 18 + i * 3 + j] - s);
                worst = e > worst ? e : worst;
            }
    CHECK(worst < 1e-5);
    lt_tensor_empty(&bad, LT_DTYPE_F32, 3, (int64_t[]){4, 6, 4}, LT_DEVICE_CPU, 0);
    CHECK_FAILS(lt_matmul(&bad, &xs, &w, 0, 1, 1.0f, 0.0f), LT_ERR_SHAPE, "output is 6x4");
    lt_tensor_release(&x);
    lt_tensor_release(&xs);
    lt_tensor_release(&w);
    lt_tensor_release(&y);
    lt_tensor_release(&bad);
}

static void test_kernel_checks(void) {
    lt_tensor w = {0}, ids = {0}, out = {0}, t = {0}, lg = {0}, loss = {0};
    lt_tensor_zeros(&w, LT_DTYPE_F32, 2, (int64_t[]){10, 4}, LT_DEVICE_CPU, 0);
    lt_tensor_zeros(&ids, LT_DTYPE_I64, 1, (int64_t[]){3}, LT_DEVICE_CPU, 0);
    lt_tensor_set(&ids, 1, 10);
    lt_tensor_empty(&out, LT_DTYPE_F32, 2, (int64_t[]){3, 4}, LT_DEVICE_CPU, 0);
    CHECK_FAILS(lt_embedding_forward(&out, &w, &ids), LT_ERR_RANGE, "id 10 at position 1");
    lt_tensor_zeros(&lg, LT_DTYPE_F32, 2, (int64_t[]){3, 10}, LT_DEVICE_CPU, 0);
    lt_tensor_empty(&loss, LT_DTYPE_F32, 0, NULL, LT_DEVICE_CPU, 0);
    lt_tensor_set(&ids, 1, -100);
    CHECK_OK(lt_cross_entropy_forward(&loss, NULL, NULL, &lg, &ids, -100, 0));
    CHECK(fabs(at(&loss, 0) - log(10.0)) < 1e-6); /* uniform logits, two counted rows */
    lt_tensor_set(&ids, 2, 11);
    CHECK_FAILS(lt_cross_entropy_forward(&loss, NULL, NULL, &lg, &ids, -100, 0), LT_ERR_RANGE,
                "target 11 at row 2");
    lt_tensor_set(&ids, 0, -100);
    lt_tensor_set(&ids, 2, -100);
    CHECK_OK(lt_cross_entropy_forward(&loss, NULL, NULL, &lg, &ids, -100, 0));
    CHECK(at(&loss, 0) == 0.0); /* nothing counted: loss 0, not NaN */
    lt_tensor q = {0}, k = {0};
    lt_tensor_zeros(&q, LT_DTYPE_F32, 4, (int64_t[]){1, 2, 3, 4}, LT_DEVICE_CPU, 0);
    lt_tensor_zeros(&k, LT_DTYPE_F32, 4, (int64_t[]){1, 2, 2, 4}, LT_DEVICE_CPU, 0);
    lt_tensor_zeros(&t, LT_DTYPE_F32, 4, (int64_t[]){1, 2, 3, 4}, LT_DEVICE_CPU, 0);
    CHECK_FAILS(lt_attention_forward(&t, NULL, &q, &k, &k, NULL, 0.5f, 1), LT_ERR_SHAPE,
                "H a multiple of Hkv");
    /* packed sequences must cover B * T and stay inside a batch row */
    lt_tensor k3 = {0}, cu = {0};
    lt_tensor_zeros(&k3, LT_DTYPE_F32, 4, (int64_t[]){1, 2, 3, 4}, LT_DEVICE_CPU, 0);
    lt_tensor_zeros(&cu, LT_DTYPE_I32, 1, (int64_t[]){2}, LT_DEVICE_CPU, 0);
    lt_tensor_set(&cu, 1, 3);
    CHECK_FAILS(lt_attention_forward(&t, NULL, &q, &k3, &k3, &cu, 0.5f, 1), LT_ERR_ARG,
                "from 0 to B * T = 2");
    lt_tensor_set(&cu, 1, 2);
    CHECK_OK(lt_attention_forward(&t, NULL, &q, &k3, &k3, &cu, 0.5f, 1));
    lt_tensor_release(&k3);
    lt_tensor_release(&cu);
    lt_tensor cs = {0}, sn = {0}, pos = {0};
    lt_tensor_zeros(&cs, LT_DTYPE_F32, 2, (int64_t[]){4, 2}, LT_DEVICE_CPU, 0);
    lt_tensor_zeros(&sn, LT_DTYPE_F32, 2, (int64_t[]){4, 2}, LT_DEVICE_CPU, 0);
    lt_tensor_zeros(&pos, LT_DTYPE_I32, 1, (int64_t[]){2}, LT_DEVICE_CPU, 0);
    lt_tensor_set(&pos, 1, 4);
    CHECK_FAILS(lt_rope_forward(&t, &q, &cs, &sn, &pos), LT_ERR_RANGE, "position 4 at index 1");
    lt_tensor_release(&w);
    lt_tensor_release(&ids);
    lt_tensor_release(&out);
    lt_tensor_release(&t);
    lt_tensor_release(&lg);
    lt_tensor_release(&loss);
    lt_tensor_release(&q);
    lt_tensor_release(&k);
    lt_tensor_release(&cs);
    lt_tensor_release(&sn);
    lt_tensor_release(&pos);
}

int main(void) {
    int64_t start = cpu_current();
    test_errors();
    test_dtypes();
    test_storage_and_memory();
    test_views();
    test_copy_convert();
    test_rng();
    test_matmul();
    test_kernel_checks();
    CHECK(cpu_current() == start); /* every tensor above was released */
    return check_summary();
}
