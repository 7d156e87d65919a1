/* test_cuda_loss_optim.c - the CUDA cross-entropy (plain and fused with the LM head), AdamW
 * (per tensor and multi-tensor) and global norm against the CPU ops, in the cases the op
 * table cannot state.
 *
 * The op table (tests/lua/op_cases.lua, run by tests/lua/test_op_table_cuda.lua) compares
 * both cross-entropies with the CPU when h, w and the logits share one dtype: N and V of
 * 1, odd and large, ignored rows, the normalizer given or counted, the loss alone and the
 * backward without the saved lse, all three LM-head forms with and without row_loss, in f32
 * (TF32 off), bf16 and f16. What stays here: every row ignored; a target out of range and
 * a host tensor among device ones, refused as on the CPU; the LM head with h and w of
 * different dtypes (h holds values exact in both); the LM head's row and vocabulary chunks
 * forced small through LT_CUDA_CE_ROWS / LT_CUDA_CE_VOCAB (16 rows and 384 columns over
 * N = 37, V = 1000: three chunks each, the last partial), for all three forms. AdamW: a
 * dozen tensors of odd sizes (one over several 32K chunks, one misaligned) for three steps,
 * per tensor and in one launch, within 1e-6 relative of the CPU. 8-bit AdamW: odd sizes
 * and every block size from 64 to 4096, one step at a time from the CPU's state (weights and
 * absmax within 1e-6, codes equal but at midpoints). Global norm: f32 and bf16 lists with a
 * non-contiguous and an empty tensor. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cuda_check.h"
#include "lt.h"
#include "lt_ops.h"
#include "lt_quant.h"

typedef void (*tf32_fn)(int);

static const int64_t IGNORE = -100;

static lt_tensor empty_dev(int dtype, int nd, const int64_t *sizes) {
    lt_tensor t = {0};
    if (lt_tensor_empty(&t, dtype, nd, sizes, LT_DEVICE_CUDA, 0) != LT_OK) {
        fprintf(stderr, "empty_dev: %s\n", lt_last_error());
        exit(1);
    }
    return t;
}

static lt_tensor empty_cpu(int dtype, int nd, const int64_t *sizes) {
    lt_tensor t = {0};
    if (lt_tensor_empty(&t, dtype, nd, sizes, LT_DEVICE_CPU, 0) != LT_OK) {
        fprintf(stderr, "empty_cpu: %s\n", lt_last_error());
        exit(1);
    }
    return t;
}

/* A device copy of `src` converted to `dtype`. */
static lt_tensor to_dev(const lt_tensor *src, int dtype) {
    lt_tensor t = empty_dev(dtype, src->ndim, src->sizes);
    if (lt_tensor_copy(&t, src) != LT_OK) {
        fprintf(stderr, "to_dev: %s\n", lt_last_error());
        exit(1);
    }
    return t;
}

static int close_tol(const char *what, const lt_tensor *gpu, const lt_tensor *cpu, double tol) {
    lt_tensor g = cuda_host_f32(gpu), c = cuda_host_f32(cpu);
    double e = cuda_rel_err(&g, &c);
    int ok = e <= tol && e == e;
    if (!ok) fprintf(stderr, "%s: relative error %.3g > %.3g\n", what, e, tol);
    lt_tensor_release(&g);
    lt_tensor_release(&c);
    CHECK(ok);
    return ok;
}

/* f32 results within 1e-5; a low-precision result per cuda_close_lowp. */
static void compare(const char *what, const lt_tensor *gpu, const lt_tensor *cpu, int lowp_dtype) {
    if (lowp_dtype == LT_DTYPE_F32)
        cuda_close_f32(what, gpu, cpu);
    else
        cuda_close_lowp(what, gpu, cpu, lowp_dtype);
}

/* i64 targets in [0, V), every third row ignore_index. */
static lt_tensor make_targets(int64_t N, int64_t V, lt_rng *rng) {
    lt_tensor t = empty_cpu(LT_DTYPE_I64, 1, &N);
    CHECK_OK(lt_tensor_randint(&t, 0, V, rng));
    int64_t *p = lt_tensor_data(&t);
    for (int64_t i = 1; i < N; i += 3) p[i] = IGNORE;
    return t;
}

static void release_all(lt_tensor **ts, size_t n) {
    for (size_t i = 0; i < n; i++) lt_tensor_release(ts[i]);
}

/* ---- plain cross-entropy ------------------------------------------------------------------ */

static void test_ce_plain(void) {
    /* every row ignored: loss 0, dlogits 0 */
    int64_t N = 5, V = 9, s[2] = {N, V}, one = 1;
    lt_tensor t = empty_cpu(LT_DTYPE_I32, 1, &N);
    lt_tensor_fill(&t, (double)IGNORE);
    lt_tensor x = cuda_randn(LT_DTYPE_F32, 2, s, 1.0);
    lt_tensor xg = cuda_copy_to(&x, 1), tg = cuda_copy_to(&t, 1);
    lt_tensor lossg = empty_dev(LT_DTYPE_F32, 0, &one), dxg = empty_dev(LT_DTYPE_F32, 2, s);
    CHECK_OK(lt_cross_entropy_forward(&lossg, NULL, NULL, &xg, &tg, IGNORE, 0.0));
    CHECK_OK(lt_cross_entropy_backward(&dxg, &xg, &tg, NULL, 1.0f, IGNORE, 0.0));
    double v = -1, sum = 0;
    lt_tensor_get(&lossg, 0, &v);
    CHECK(v == 0.0);
    lt_tensor dxh = cuda_host_f32(&dxg);
    for (int64_t i = 0; i < N * V; i++) sum += fabs(((float *)lt_tensor_data(&dxh))[i]);
    CHECK(sum == 0.0);

    /* a target outside the vocabulary: the CPU's error, naming the row */
    lt_tensor_set(&tg, 2, 12.0);
    CHECK_FAILS(lt_cross_entropy_forward(&lossg, NULL, NULL, &xg, &tg, IGNORE, 0.0), LT_ERR_RANGE,
                "target 12 at row 2");
    CHECK_FAILS(lt_cross_entropy_backward(&dxg, &xg, &tg, NULL, 1.0f, IGNORE, 0.0), LT_ERR_RANGE,
                "at row 2");
    /* a CPU tensor among device ones */
    CHECK_FAILS(lt_cross_entropy_forward(&lossg, NULL, NULL, &xg, &t, IGNORE, 0.0), LT_ERR_DEVICE,
                "targets");
    lt_tensor *all[] = {&t, &x, &xg, &tg, &lossg, &dxg, &dxh};
    release_all(all, sizeof all / sizeof *all);
}

/* ---- fused LM head ------------------------------------------------------------------------- */

/* All three forms on the CPU (h in f32 with the device h's values, w as it is) and on the
   device (h in hdt, w in wdt; dh, dw f32). */
static void lmhead(int64_t N, int64_t C, int64_t V, int hdt, int wdt, double normalizer,
                   lt_rng *rng) {
    int64_t sh[2] = {N, C}, sw[2] = {V, C}, one = 1;
    /* The device runs the GEMMs in w's dtype (converting h to it), so its rounding is what
       the low-precision rule measures; h holds values exact in both dtypes, so both sides
       multiply the same numbers. */
    int lowp = wdt;
    lt_tensor h = cuda_randn(hdt != LT_DTYPE_F32 ? hdt : wdt, 2, sh, 1.0);
    lt_tensor w = cuda_randn(wdt, 2, sw, 0.5);
    lt_tensor hf = cuda_host_f32(&h);
    lt_tensor t = make_targets(N, V, rng);
    /* dw accumulates: from random values in f32, from zero otherwise (so that the rounding
       under test is not hidden under the initial values) */
    lt_tensor dw0 = cuda_randn(LT_DTYPE_F32, 2, sw, 1.0);
    if (lowp != LT_DTYPE_F32) lt_tensor_fill(&dw0, 0.0);
    float dloss = 1.7f;

    lt_tensor loss = empty_cpu(LT_DTYPE_F32, 0, &one), lse = empty_cpu(LT_DTYPE_F32, 1, &N),
              rl = empty_cpu(LT_DTYPE_F32, 1, &N), dh = empty_cpu(LT_DTYPE_F32, 2, sh),
              dw = cuda_host_f32(&dw0), loss2 = empty_cpu(LT_DTYPE_F32, 0, &one),
              rl2 = empty_cpu(LT_DTYPE_F32, 1, &N), dh2 = empty_cpu(LT_DTYPE_F32, 2, sh),
              dw2 = cuda_host_f32(&dw0);
    CHECK_OK(lt_linear_cross_entropy_forward(&loss, &lse, &rl, &hf, &w, &t, IGNORE, normalizer));
    CHECK_OK(lt_linear_cross_entropy_backward(&dh, &dw, &hf, &w, &t, &lse, dloss, IGNORE,
                                              normalizer));
    CHECK_OK(lt_linear_cross_entropy_fused(&loss2, &rl2, &dh2, &dw2, &hf, &w, &t, dloss, IGNORE,
                                           normalizer));

    lt_tensor hg = to_dev(&h, hdt), wg = to_dev(&w, wdt), tg = cuda_copy_to(&t, 1);
    lt_tensor lossg = empty_dev(LT_DTYPE_F32, 0, &one), lseg = empty_dev(LT_DTYPE_F32, 1, &N),
              rlg = empty_dev(LT_DTYPE_F32, 1, &N), dhg = empty_dev(LT_DTYPE_F32, 2, sh),
              dwg = to_dev(&dw0, LT_DTYPE_F32), loss2g = empty_dev(LT_DTYPE_F32, 0, &one),
              rl2g = empty_dev(LT_DTYPE_F32, 1, &N), dh2g = empty_dev(LT_DTYPE_F32, 2, sh),
              dw2g = to_dev(&dw0, LT_DTYPE_F32);
    CHECK_OK(lt_linear_cross_entropy_forward(&lossg, &lseg, &rlg, &hg, &wg, &tg, IGNORE,
                                             normalizer));
    CHECK_OK(lt_linear_cross_entropy_backward(&dhg, &dwg, &hg, &wg, &tg, &lseg, dloss, IGNORE,
                                              normalizer));
    CHECK_OK(lt_linear_cross_entropy_fused(&loss2g, &rl2g, &dh2g, &dw2g, &hg, &wg, &tg, dloss,
                                           IGNORE, normalizer));

    char w_[160], pre[96];
    snprintf(pre, sizeof pre, "linear_cross_entropy h %s w %s N %lld C %lld V %lld",
             lt_dtype_info(hdt)->name, lt_dtype_info(wdt)->name, (long long)N, (long long)C,
             (long long)V);
#define CMP(name, g, c, dt)                                                                \
    do {                                                                                   \
        snprintf(w_, sizeof w_, "%s %s", pre, name);                                       \
        compare(w_, g, c, dt);                                                             \
    } while (0)
    /* forward: exact products accumulated in f32 on both sides, f32 logits */
    CMP("forward loss", &lossg, &loss, LT_DTYPE_F32);
    CMP("fused loss", &loss2g, &loss2, LT_DTYPE_F32);
    CMP("forward lse", &lseg, &lse, LT_DTYPE_F32);
    CMP("forward row_loss", &rlg, &rl, LT_DTYPE_F32);
    CMP("fused row_loss", &rl2g, &rl2, LT_DTYPE_F32);
    /* gradients: the logit gradient is rounded to the GEMM dtype */
    CMP("backward dh", &dhg, &dh, lowp);
    CMP("backward dw", &dwg, &dw, lowp);
    CMP("fused dh", &dh2g, &dh2, lowp);
    CMP("fused dw", &dw2g, &dw2, lowp);
#undef CMP
    /* only one gradient, and a backward without the saved lse */
    lt_tensor dh3g = empty_dev(LT_DTYPE_F32, 2, sh);
    CHECK_OK(lt_linear_cross_entropy_backward(&dh3g, NULL, &hg, &wg, &tg, NULL, dloss, IGNORE,
                                              normalizer));
    snprintf(w_, sizeof w_, "%s backward dh alone, lse recomputed", pre);
    compare(w_, &dh3g, &dh, lowp);
    /* the fused form as training calls it: no row_loss (the worst case of its scratch when h
       is converted to w's dtype), against the run above that had one */
    lt_tensor loss4g = empty_dev(LT_DTYPE_F32, 0, &one), dh4g = empty_dev(LT_DTYPE_F32, 2, sh),
              dw4g = to_dev(&dw0, LT_DTYPE_F32);
    CHECK_OK(lt_linear_cross_entropy_fused(&loss4g, NULL, &dh4g, &dw4g, &hg, &wg, &tg, dloss,
                                           IGNORE, normalizer));
    snprintf(w_, sizeof w_, "%s fused without row_loss: loss", pre);
    compare(w_, &loss4g, &loss2, LT_DTYPE_F32);
    snprintf(w_, sizeof w_, "%s fused without row_loss: dh", pre);
    compare(w_, &dh4g, &dh2, lowp);
    snprintf(w_, sizeof w_, "%s fused without row_loss: dw", pre);
    compare(w_, &dw4g, &dw2, lowp);

    lt_tensor *all[] = {&h, &w, &hf, &t, &dw0, &loss, &lse, &rl, &dh, &dw, &loss2, &rl2, &dh2,
                        &dw2, &hg, &wg, &tg, &lossg, &lseg, &rlg, &dhg, &dwg, &loss2g, &rl2g,
                        &dh2g, &dw2g, &dh3g, &loss4g, &dh4g, &dw4g};
    release_all(all, sizeof all / sizeof *all);
}

static void test_lmhead(tf32_fn set_tf32, lt_rng *rng) {
    set_tf32(0); /* f32 GEMMs in f32: the 1e-5 rule */
    /* h and w of different dtypes */
    lmhead(64, 40, 777, LT_DTYPE_F32, LT_DTYPE_BF16, 0.0, rng);
    lmhead(64, 40, 777, LT_DTYPE_BF16, LT_DTYPE_F32, 0.0, rng);
    /* small forced chunks: 3 row chunks (16, 16, 5), 3 vocab chunks (384, 384, 232) */
    setenv("LT_CUDA_CE_ROWS", "16", 1);
    setenv("LT_CUDA_CE_VOCAB", "384", 1);
    lmhead(37, 48, 1000, LT_DTYPE_F32, LT_DTYPE_F32, 0.0, rng);
    lmhead(37, 48, 1000, LT_DTYPE_BF16, LT_DTYPE_BF16, 0.0, rng);
    lmhead(37, 48, 1000, LT_DTYPE_F32, LT_DTYPE_BF16, 0.0, rng);
    unsetenv("LT_CUDA_CE_ROWS");
    unsetenv("LT_CUDA_CE_VOCAB");
    set_tf32(1);
}

/* ---- AdamW -------------------------------------------------------------------------------- */

enum { NT = 12 };
static const int64_t adam_sizes[NT] = {1, 3, 7, 33, 257, 1000, 4099, 31, 100003, 2, 129, 1023};

/* A device copy of `src` that starts one element into its storage: contiguous, but not
   16-byte aligned. */
static lt_tensor dev_misaligned(const lt_tensor *src, lt_tensor *base) {
    int64_t n = lt_tensor_numel(src) + 1;
    *base = empty_dev(LT_DTYPE_F32, 1, &n);
    lt_tensor v = {0};
    CHECK_OK(lt_tensor_narrow(&v, base, 0, 1, n - 1));
    CHECK_OK(lt_tensor_copy(&v, src));
    return v;
}

static void test_adamw(void) {
    lt_tensor p[NT], g[NT], m[NT], v[NT];       /* CPU */
    lt_tensor p1[NT], g1[NT], m1[NT], v1[NT];   /* device, per tensor */
    lt_tensor p2[NT], m2[NT], v2[NT], base[2];  /* device, multi-tensor */
    for (int i = 0; i < NT; i++) {
        p[i] = cuda_randn(LT_DTYPE_F32, 1, &adam_sizes[i], 1.0);
        g[i] = cuda_randn(LT_DTYPE_F32, 1, &adam_sizes[i], 1.0);
        m[i] = cuda_randn(LT_DTYPE_F32, 1, &adam_sizes[i], 0.1);
        v[i] = cuda_randn(LT_DTYPE_F32, 1, &adam_sizes[i], 1.0);
        float *vp0 = lt_tensor_data(&v[i]); /* a second moment: small and >= 0 */
        for (int64_t k = 0; k < adam_sizes[i]; k++) vp0[k] = 0.01f * fabsf(vp0[k]);
        if (i == 4) {
            p1[i] = dev_misaligned(&p[i], &base[0]);
            p2[i] = dev_misaligned(&p[i], &base[1]);
        } else {
            p1[i] = cuda_copy_to(&p[i], 1);
            p2[i] = cuda_copy_to(&p[i], 1);
        }
        g1[i] = cuda_copy_to(&g[i], 1);
        m1[i] = cuda_copy_to(&m[i], 1);
        v1[i] = cuda_copy_to(&v[i], 1);
        m2[i] = cuda_copy_to(&m[i], 1);
        v2[i] = cuda_copy_to(&v[i], 1);
    }
    lt_tensor *pp[NT], *mp[NT], *vp[NT];
    const lt_tensor *gp[NT];
    for (int i = 0; i < NT; i++) {
        pp[i] = &p2[i];
        gp[i] = &g1[i];
        mp[i] = &m2[i];
        vp[i] = &v2[i];
    }
    lt_adamw_params h = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8,
                         .weight_decay = 0.1, .grad_scale = 0.5, .step = 0};
    for (int s = 1; s <= 3; s++) {
        h.step = s;
        for (int i = 0; i < NT; i++) {
            CHECK_OK(lt_adamw_step(&p[i], &g[i], &m[i], &v[i], &h));
            CHECK_OK(lt_adamw_step(&p1[i], &g1[i], &m1[i], &v1[i], &h));
        }
        CHECK_OK(lt_adamw_step_multi(pp, gp, mp, vp, NT, &h));
    }
    for (int i = 0; i < NT; i++) {
        char w[96];
        snprintf(w, sizeof w, "adamw param %d (%lld)", i, (long long)adam_sizes[i]);
        close_tol(w, &p1[i], &p[i], 1e-6);
        snprintf(w, sizeof w, "adamw_multi param %d (%lld)", i, (long long)adam_sizes[i]);
        close_tol(w, &p2[i], &p[i], 1e-6);
        snprintf(w, sizeof w, "adamw exp_avg %d", i);
        close_tol(w, &m1[i], &m[i], 1e-6);
        snprintf(w, sizeof w, "adamw_multi exp_avg %d", i);
        close_tol(w, &m2[i], &m[i], 1e-6);
        snprintf(w, sizeof w, "adamw exp_avg_sq %d", i);
        close_tol(w, &v1[i], &v[i], 1e-6);
        snprintf(w, sizeof w, "adamw_multi exp_avg_sq %d", i);
        close_tol(w, &v2[i], &v[i], 1e-6);
    }
    /* a CPU tensor in a device list */
    gp[5] = &g[5];
    CHECK_FAILS(lt_adamw_step_multi(pp, gp, mp, vp, NT, &h), LT_ERR_DEVICE, "parameter 6");
    for (int i = 0; i < NT; i++) {
        lt_tensor *all[] = {&p[i], &g[i], &m[i], &v[i], &p1[i], &g1[i], &m1[i], &v1[i], &p2[i],
                            &m2[i], &v2[i]};
        release_all(all, sizeof all / sizeof *all);
    }
    lt_tensor_release(&base[0]);
    lt_tensor_release(&base[1]);
}

/* ---- 8-bit AdamW ---------------------------------------------------------------------------- */

static lt_tensor map_tensor(int is_signed) {
    int64_t n = 256;
    lt_tensor t = empty_cpu(LT_DTYPE_F32, 1, &n);
    float *d = lt_tensor_data(&t);
    CHECK_OK(is_signed ? lt_quant_dynamic_map(d) : lt_quant_dynamic_map_unsigned(d));
    return t;
}

/* Each step starts the device from the CPU's state (weights, codes, absmax), so every
   comparison is one step's: weights and absmax within 1e-6 relative; codes equal but where
   the two compilers' multiply-add contractions put a moment on the other side of a
   midpoint (then the codes are neighbours). Sizes with a partial last block, every block
   size the kernel takes at its ends and bitsandbytes' two; gradients over four decades,
   a NaN and an infinity among them at step 3. */
static void test_adamw8(void) {
    static const int64_t sizes[] = {1, 257, 4099, 100003};
    static const int32_t blocks[] = {64, 256, 2048, 4096};
    lt_tensor qm = map_tensor(1), qv = map_tensor(0);
    lt_tensor qm_d = cuda_copy_to(&qm, 1), qv_d = cuda_copy_to(&qv, 1);
    int64_t mismatched = 0, far = 0, coded = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        for (size_t bi = 0; bi < sizeof blocks / sizeof *blocks; bi++) {
            int64_t n = sizes[si], nb = (n + blocks[bi] - 1) / blocks[bi];
            lt_tensor p = cuda_randn(LT_DTYPE_F32, 1, &n, 1.0);
            lt_tensor cm = empty_cpu(LT_DTYPE_U8, 1, &n), cv = empty_cpu(LT_DTYPE_U8, 1, &n);
            lt_tensor am = empty_cpu(LT_DTYPE_F32, 1, &nb), av = empty_cpu(LT_DTYPE_F32, 1, &nb);
            CHECK_OK(lt_tensor_fill(&cm, 0));
            CHECK_OK(lt_tensor_fill(&cv, 0));
            CHECK_OK(lt_tensor_fill(&am, 0));
            CHECK_OK(lt_tensor_fill(&av, 0));
            lt_tensor pd = empty_dev(LT_DTYPE_F32, 1, &n), gd = empty_dev(LT_DTYPE_F32, 1, &n);
            lt_tensor cmd = empty_dev(LT_DTYPE_U8, 1, &n), cvd = empty_dev(LT_DTYPE_U8, 1, &n);
            lt_tensor amd = empty_dev(LT_DTYPE_F32, 1, &nb), avd = empty_dev(LT_DTYPE_F32, 1, &nb);
            lt_adamw_params h = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                                 .weight_decay = 0.1, .grad_scale = 0.5, .step = 0};
            for (int s = 1; s <= 4; s++) {
                lt_tensor g = cuda_randn(LT_DTYPE_F32, 1, &n, 1.0);
                float *gp = lt_tensor_data(&g);
                for (int64_t i = 0; i < n; i++) gp[i] *= powf(10.0f, (float)(i % 5) - 4.0f);
                if (s == 3 && n > 200) {
                    gp[7] = NAN;
                    gp[n - 2] = INFINITY;
                }
                CHECK_OK(lt_tensor_copy(&pd, &p));
                CHECK_OK(lt_tensor_copy(&gd, &g));
                CHECK_OK(lt_tensor_copy(&cmd, &cm));
                CHECK_OK(lt_tensor_copy(&cvd, &cv));
                CHECK_OK(lt_tensor_copy(&amd, &am));
                CHECK_OK(lt_tensor_copy(&avd, &av));
                h.step = s;
                CHECK_OK(lt_adamw8_step(&p, &g, &cm, &am, &cv, &av, &qm, &qv, blocks[bi], &h));
                CHECK_OK(lt_adamw8_step(&pd, &gd, &cmd, &amd, &cvd, &avd, &qm_d, &qv_d, blocks[bi],
                                        &h));
                char w[96];
                snprintf(w, sizeof w, "adamw8 param (%lld, block %d, step %d)", (long long)n,
                         (int)blocks[bi], s);
                close_tol(w, &pd, &p, 1e-6);
                snprintf(w, sizeof w, "adamw8 absmax (%lld, block %d, step %d)", (long long)n,
                         (int)blocks[bi], s);
                close_tol(w, &amd, &am, 1e-6);
                close_tol(w, &avd, &av, 1e-6);
                lt_tensor cmh = cuda_copy_to(&cmd, 0), cvh = cuda_copy_to(&cvd, 0);
                const uint8_t *a1 = lt_tensor_data(&cmh), *a2 = lt_tensor_data(&cvh);
                const uint8_t *b1 = lt_tensor_data(&cm), *b2 = lt_tensor_data(&cv);
                for (int64_t i = 0; i < n; i++) {
                    mismatched += (a1[i] != b1[i]) + (a2[i] != b2[i]);
                    far += abs((int)a1[i] - (int)b1[i]) > 1 || abs((int)a2[i] - (int)b2[i]) > 1;
                }
                coded += 2 * n;
                lt_tensor_release(&cmh);
                lt_tensor_release(&cvh);
                lt_tensor_release(&g);
            }
            lt_tensor *all[] = {&p, &cm, &cv, &am, &av, &pd, &gd, &cmd, &cvd, &amd, &avd};
            release_all(all, sizeof all / sizeof *all);
        }
    }
    printf("adamw8: %lld of %lld codes differ from the CPU's\n", (long long)mismatched,
           (long long)coded);
    CHECK(far == 0);
    CHECK(mismatched <= coded / 10000);

    /* a host tensor among device ones is refused, naming it */
    int64_t n = 300, nb = 2;
    lt_tensor pd = empty_dev(LT_DTYPE_F32, 1, &n), gd = empty_dev(LT_DTYPE_F32, 1, &n);
    lt_tensor cmd = empty_dev(LT_DTYPE_U8, 1, &n), cvh = empty_cpu(LT_DTYPE_U8, 1, &n);
    lt_tensor amd = empty_dev(LT_DTYPE_F32, 1, &nb), avd = empty_dev(LT_DTYPE_F32, 1, &nb);
    lt_adamw_params h = {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .step = 1,
                         .grad_scale = 1};
    CHECK_FAILS(lt_adamw8_step(&pd, &gd, &cmd, &amd, &cvh, &avd, &qm_d, &qv_d, 256, &h),
                LT_ERR_DEVICE, "v_codes");
    CHECK_FAILS(lt_adamw8_step(&pd, &gd, &cmd, &amd, &cmd, &avd, &qm, &qv_d, 256, &h),
                LT_ERR_DEVICE, "m_map");
    lt_tensor *all[] = {&pd, &gd, &cmd, &cvh, &amd, &avd, &qm, &qv, &qm_d, &qv_d};
    release_all(all, sizeof all / sizeof *all);
}

/* ---- global norm -------------------------------------------------------------------------- */

static void test_global_norm(void) {
    int64_t s2[2] = {33, 257}, z = 0;
    lt_tensor a = cuda_randn(LT_DTYPE_F32, 1, &adam_sizes[8], 1.0);
    lt_tensor b = cuda_randn(LT_DTYPE_F32, 2, s2, 2.0);
    lt_tensor c = cuda_randn(LT_DTYPE_F32, 1, &adam_sizes[2], 3.0);
    lt_tensor e = empty_cpu(LT_DTYPE_F32, 1, &z);
    lt_tensor bt = {0};
    CHECK_OK(lt_tensor_transpose(&bt, &b, 0, 1)); /* not contiguous */
    const lt_tensor *cpu[4] = {&a, &bt, &e, &c};
    double ref = 0, got = 0;
    CHECK_OK(lt_global_norm(cpu, 4, &ref));

    lt_tensor ag = cuda_copy_to(&a, 1), bg = cuda_copy_to(&b, 1), cg = cuda_copy_to(&c, 1);
    lt_tensor eg = empty_dev(LT_DTYPE_F32, 1, &z), btg = {0};
    CHECK_OK(lt_tensor_transpose(&btg, &bg, 0, 1));
    const lt_tensor *dev[4] = {&ag, &btg, &eg, &cg};
    CHECK_OK(lt_global_norm(dev, 4, &got));
    CHECK(fabs(got - ref) <= 1e-10 * ref);
    if (!(fabs(got - ref) <= 1e-10 * ref)) fprintf(stderr, "global_norm %.17g vs %.17g\n", got, ref);

    /* bf16 on the device against the same values in f32 on the CPU */
    lt_tensor ab = to_dev(&a, LT_DTYPE_BF16), cb = to_dev(&c, LT_DTYPE_BF16);
    lt_tensor af = cuda_host_f32(&ab), cf = cuda_host_f32(&cb);
    const lt_tensor *cpu2[2] = {&af, &cf}, *dev2[2] = {&ab, &cb};
    CHECK_OK(lt_global_norm(cpu2, 2, &ref));
    CHECK_OK(lt_global_norm(dev2, 2, &got));
    CHECK(fabs(got - ref) <= 1e-10 * ref);

    /* an empty list, and a CPU tensor in a device list */
    CHECK_OK(lt_global_norm(dev, 0, &got));
    CHECK(got == 0.0);
    const lt_tensor *mixed[2] = {&ag, &a};
    CHECK_FAILS(lt_global_norm(mixed, 2, &got), LT_ERR_DEVICE, "tensor 2");

    lt_tensor *all[] = {&a, &b, &c, &e, &bt, &ag, &bg, &cg, &eg, &btg, &ab, &cb, &af, &cf};
    release_all(all, sizeof all / sizeof *all);
}

int main(void) {
    cuda_require();
    tf32_fn set_tf32 = (tf32_fn)dlsym(RTLD_DEFAULT, "lt_cuda_gemm_allow_tf32");
    CHECK(set_tf32 != NULL);
    if (!set_tf32) return check_summary();
    lt_rng rng;
    lt_rng_seed(&rng, 4242);
    test_ce_plain();
    test_lmhead(set_tf32, &rng);
    test_adamw();
    test_adamw8();
    test_global_norm();
    lt_memory_stats st;
    lt_memory_get_stats(LT_DEVICE_CUDA, 0, &st);
    CHECK(st.current_bytes == 0); /* every device tensor released */
    return check_summary();
}
