/* test_adamw_multi.c - lt_adamw_step_multi on the CPU: bit-identical to lt_adamw_step over
 * the same tensors (a dozen of odd sizes, three steps, weight decay and a grad scale), and
 * its argument errors name the offending parameter. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "lt.h"
#include "lt_ops.h"

enum { NT = 12 };

static const int64_t sizes[NT] = {1, 3, 7, 33, 257, 1000, 4099, 31, 65537, 2, 129, 1023};

static lt_rng rng;

static lt_tensor make(int64_t n, int normal) {
    lt_tensor t = {0};
    CHECK_OK(lt_tensor_empty(&t, LT_DTYPE_F32, 1, &n, LT_DEVICE_CPU, 0));
    if (normal)
        CHECK_OK(lt_tensor_normal(&t, 0.0, 1.0, &rng));
    else
        CHECK_OK(lt_tensor_fill(&t, 0.0));
    return t;
}

static lt_tensor clone(const lt_tensor *src) {
    lt_tensor t = {0};
    CHECK_OK(lt_tensor_empty(&t, src->dtype_id, src->ndim, src->sizes, LT_DEVICE_CPU, 0));
    CHECK_OK(lt_tensor_copy(&t, src));
    return t;
}

static int same_bits(const lt_tensor *a, const lt_tensor *b) {
    return memcmp(lt_tensor_data(a), lt_tensor_data(b),
                  (size_t)lt_tensor_numel(a) * sizeof(float)) == 0;
}

static void test_matches_single(void) {
    lt_tensor p1[NT], g[NT], m1[NT], v1[NT], p2[NT], m2[NT], v2[NT];
    for (int i = 0; i < NT; i++) {
        p1[i] = make(sizes[i], 1);
        g[i] = make(sizes[i], 1);
        m1[i] = make(sizes[i], 0);
        v1[i] = make(sizes[i], 0);
        p2[i] = clone(&p1[i]);
        m2[i] = clone(&m1[i]);
        v2[i] = clone(&v1[i]);
    }
    lt_tensor *pp[NT], *mp[NT], *vp[NT];
    const lt_tensor *gp[NT];
    for (int i = 0; i < NT; i++) {
        pp[i] = &p2[i];
        gp[i] = &g[i];
        mp[i] = &m2[i];
        vp[i] = &v2[i];
    }
    lt_tensor init = clone(&p1[6]);
    lt_adamw_params h = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8,
                         .weight_decay = 0.1, .grad_scale = 0.5, .step = 0};
    for (int s = 1; s <= 3; s++) {
        h.step = s;
        for (int i = 0; i < NT; i++) CHECK_OK(lt_adamw_step(&p1[i], &g[i], &m1[i], &v1[i], &h));
        CHECK_OK(lt_adamw_step_multi(pp, gp, mp, vp, NT, &h));
    }
    int same = 1;
    for (int i = 0; i < NT; i++)
        same = same && same_bits(&p1[i], &p2[i]) && same_bits(&m1[i], &m2[i]) &&
               same_bits(&v1[i], &v2[i]);
    CHECK(same);
    CHECK(!same_bits(&init, &p2[6])); /* the update did move the parameters */
    lt_tensor_release(&init);

    /* an empty list is a no-op */
    CHECK_OK(lt_adamw_step_multi(NULL, NULL, NULL, NULL, 0, &h));

    /* errors name the parameter */
    lt_tensor bad = make(5, 1);
    gp[3] = &bad;
    CHECK_FAILS(lt_adamw_step_multi(pp, gp, mp, vp, NT, &h), LT_ERR_SHAPE, "parameter 4");
    gp[3] = &g[3];
    h.step = 0;
    CHECK_FAILS(lt_adamw_step_multi(pp, gp, mp, vp, NT, &h), LT_ERR_ARG, "step must be >= 1");
    CHECK_FAILS(lt_adamw_step_multi(pp, gp, mp, vp, NT, NULL), LT_ERR_ARG, "params is NULL");
    h.step = 1;
    CHECK_FAILS(lt_adamw_step_multi(NULL, gp, mp, vp, NT, &h), LT_ERR_ARG, "bad tensor lists");
    lt_tensor_release(&bad);

    for (int i = 0; i < NT; i++) {
        lt_tensor_release(&p1[i]);
        lt_tensor_release(&g[i]);
        lt_tensor_release(&m1[i]);
        lt_tensor_release(&v1[i]);
        lt_tensor_release(&p2[i]);
        lt_tensor_release(&m2[i]);
        lt_tensor_release(&v2[i]);
    }
}

int main(void) {
    lt_rng_seed(&rng, 777);
    test_matches_single();
    lt_memory_stats st;
    lt_memory_get_stats(LT_DEVICE_CPU, 0, &st);
    CHECK(st.current_bytes == 0);
    return check_summary();
}
