/* test_adamw8.c - the two ways lt_adamw8_step codes a moment (src/ops/adamw8_math.h) agree:
 * bitsandbytes' binary search (the CUDA kernel's) and the threshold count (the CPU's), for
 * both dynamic maps, on every f32 within 4 ulp of every midpoint between entries (the ties
 * included), on values spread over every decade of the maps, and on the edges (0, -0, +-1,
 * the end entries, NaN, tiny values). Also the first moment's sign rule. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "lt_quant.h"
#include "ops/adamw8_math.h"

static int disagreements(const float *map, const lt_adamw8_bounds *b, float x) {
    int s = lt_adamw8_code(map, x), c = lt_adamw8_count(b, x);
    if (s != c) {
        fprintf(stderr, "x = %.9g: search %d, count %d\n", (double)x, s, c);
        return 1;
    }
    return 0;
}

static void test_map(const float *map, int is_signed) {
    lt_adamw8_bounds b;
    lt_adamw8_bounds_init(&b, map);
    int bad = 0, ties_even = 1;
    /* every midpoint and the 4 floats either side of it */
    for (int k = 0; k < 255; k++) {
        float mid = (map[k] + map[k + 1]) * 0.5f, x = mid;
        for (int u = 0; u < 4; u++) x = nextafterf(x, -INFINITY);
        for (int u = 0; u < 9; u++, x = nextafterf(x, INFINITY)) bad += disagreements(map, &b, x);
        /* a value exactly at a midpoint takes the even entry of the two */
        int c = lt_adamw8_code(map, mid);
        if (c != (k % 2 == 0 ? k : k + 1)) ties_even = 0;
    }
    /* values spread over the decades the map covers, and uniform ones */
    srand(17);
    for (int i = 0; i < 400000; i++) {
        double u = (double)rand() / RAND_MAX;
        float x = (float)(i % 2 ? u : pow(10.0, -8.0 * u));
        if (is_signed && (rand() & 1)) x = -x;
        bad += disagreements(map, &b, x);
    }
    float edges[] = {0.0f, -0.0f, 1.0f, -1.0f, map[0], map[255], map[127], map[128], 1e-30f,
                     -1e-30f, NAN};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        bad += disagreements(map, &b, edges[i]);
    CHECK(bad == 0);
    CHECK(ties_even);
    /* exact entries code to themselves */
    int self = 1;
    for (int k = 0; k < 256; k++) self &= lt_adamw8_count(&b, map[k]) == k;
    CHECK(self);
}

int main(void) {
    float sm[256], um[256];
    CHECK_OK(lt_quant_dynamic_map(sm));
    CHECK_OK(lt_quant_dynamic_map_unsigned(um));
    test_map(sm, 1);
    test_map(um, 0);
    /* the sign rule: a tiny negative moment coded to the signed map's 0.0 (entry 127)
       takes the entry below; a positive one keeps 0.0; a code of the moment's sign stays */
    CHECK(sm[127] == 0.0f);
    CHECK(lt_adamw8_keep_sign(sm, 127, -1e-12f) == 126);
    CHECK(lt_adamw8_keep_sign(sm, 127, 1e-12f) == 127);
    CHECK(lt_adamw8_keep_sign(sm, 200, 0.5f) == 200);
    CHECK(lt_adamw8_keep_sign(sm, 20, -0.5f) == 20);
    return check_summary();
}
