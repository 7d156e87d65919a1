// reduce.cu - the CUDA side of src/ops/reduce.c: reductions over any set of dims (sum, mean,
// max, min) and their gradients, argmax, the sum of squares, the non-finite check, and
// softmax / log-softmax over the last dim with their gradients.
//
// Shapes: x (any shape, any strides); out in the keepdim form (x's shape with the reduced
// dims set to 1). Softmax: x, out (..., C) with any strides, rows over the leading dims.
// Dtypes: x, out, dout, dx f32, bf16 or f16 each (the CPU too, through f32 twins); argmax writes
// i64. Sums accumulate in f64 as on the CPU (cheap here: the kernels are memory-bound);
// max/min propagate NaN; softmax math is f32.
//
// The reducer. The dims are simplified as on the CPU (size-1 dims dropped, the rest ordered
// by x's strides, neighbours that nest merged), leaving M outputs of R elements each, then:
//   - row shape (x's fastest dim is reduced, or everything is): a group of threads per
//     output walks the reduced elements in order, consecutive threads on consecutive
//     elements (coalesced); a warp per output when R <= 4096, a block of 256 otherwise;
//   - column shape (x's fastest dim is kept, e.g. summing the rows of an (N, C) tensor): a
//     32 x 8 block takes 32 neighbouring outputs, the 32 lanes reading 32 neighbouring
//     elements of one reduced position (coalesced), the 8 rows of the block taking every
//     8th reduced position; the 8 partial results are combined in shared memory.
// When the outputs alone cannot fill the device (fewer blocks than 4 per multiprocessor),
// the reduced range is also cut into C chunks whose partial results go to a scratch buffer
// (M x C doubles) and are combined in chunk order by a second kernel. Every partial is
// combined in a fixed order, so results are the same from run to run (no atomics).
//
// argmax: a group per output as in the row shape, each thread keeping (value, index) and
// the pairs combined by a rule that is associative (NaN first, then larger, then lower
// index), so the answer is the CPU's: first of ties, first NaN if any.
//
// softmax: one warp per row for rows of at most 1024 columns (8 rows per block), one block
// of 512 threads per row beyond. A single pass keeps the running max and the sum of
// exp(x - max) (rescaled when the max grows; the online form), and a second pass writes, so
// x is read twice and out written once. Rows whose columns are contiguous and whose
// pointers are 16-byte aligned use 16-byte loads.
#include <math.h>

#include "common.cuh"

namespace {

// ---- the reducer ------------------------------------------------------------------------------

enum { RK_LOAD = 0, RK_SQUARE = 1, RK_NONFINITE = 2, RK_EQ = 3 };
enum { ACC_SUM = 0, ACC_MAX = 1, ACC_MIN = 2 };

const int RED_MAX_C = 4096; // most chunks per output

struct RedPlan {
    int nk, nr;                   // kept and reduced dims, outer to inner
    int64_t ksz[LT_MAX_DIMS];     // kept sizes
    int64_t kst[3][LT_MAX_DIMS];  // strides of x, ref, out over the kept dims
    int64_t rsz[LT_MAX_DIMS];     // reduced sizes
    int64_t rst[LT_MAX_DIMS];     // strides of x over the reduced dims
    int64_t M, R;                 // outputs, elements per output
    int r32;                      // R fits 32-bit index arithmetic
    const char *x;
    int xdt;
    const char *ref; // RK_EQ: the value ties are counted against (keepdim form)
    int refdt;
    char *out; // results through kst[2], in outdt; or
    int outdt;
    double *out64; // results by output index (M doubles)
    double scale;  // multiplies sums at the end (1/R for a mean)
    double *part;  // M x C partial results, when C > 1
    int64_t C, chunk;
};

template <int ACC> __device__ __forceinline__ double acc_init() {
    return ACC == ACC_MAX ? -INFINITY : ACC == ACC_MIN ? INFINITY : 0.0;
}

// b after a; NaN wins for max/min (once NaN, always NaN)
template <int ACC> __device__ __forceinline__ double acc_combine(double a, double b) {
    if (ACC == ACC_MAX) return (b > a || b != b) ? b : a;
    if (ACC == ACC_MIN) return (b < a || b != b) ? b : a;
    return a + b;
}

template <int KIND> __device__ __forceinline__ double red_value(float v, float refv) {
    if (KIND == RK_SQUARE) return (double)v * (double)v;
    if (KIND == RK_NONFINITE) return isfinite(v) ? 0.0 : 1.0;
    if (KIND == RK_EQ) return v == refv ? 1.0 : 0.0;
    return (double)v;
}

// Offset of x at reduced index r.
__device__ __forceinline__ int64_t red_off(const RedPlan &p, int64_t r) {
    if (p.nr == 1) return r * p.rst[0];
    int64_t off = 0;
    if (p.r32) {
        uint32_t q = (uint32_t)r;
        for (int j = p.nr - 1; j > 0; j--) {
            uint32_t s = (uint32_t)p.rsz[j];
            off += (int64_t)(q % s) * p.rst[j];
            q /= s;
        }
        if (p.nr > 0) off += (int64_t)q * p.rst[0];
    } else {
        for (int j = p.nr - 1; j > 0; j--) {
            off += (r % p.rsz[j]) * p.rst[j];
            r /= p.rsz[j];
        }
        if (p.nr > 0) off += r * p.rst[0];
    }
    return off;
}

// Offsets of x, ref and out at kept index m, over the first nk kept dims.
__device__ __forceinline__ void kept_off(const RedPlan &p, int nk, int64_t m, int64_t *off) {
    off[0] = off[1] = off[2] = 0;
    for (int j = nk - 1; j >= 0; j--) {
        int64_t idx = j == 0 ? m : m % p.ksz[j];
        m = j == 0 ? 0 : m / p.ksz[j];
        off[0] += idx * p.kst[0][j];
        off[1] += idx * p.kst[1][j];
        off[2] += idx * p.kst[2][j];
    }
}

template <int ACC> __device__ __forceinline__ void red_store(const RedPlan &p, int64_t m,
                                                             int64_t offo, double v) {
    if (ACC == ACC_SUM) v *= p.scale;
    if (p.out64) p.out64[m] = v;
    else st_any(p.out, p.outdt, offo, (float)v);
}

template <int ACC> __device__ __forceinline__ double warp_combine(double a) {
    for (int o = 16; o > 0; o >>= 1) a = acc_combine<ACC>(a, __shfl_xor_sync(0xffffffffu, a, o));
    return a;
}

// Row shape: G threads (32 or 256) per (output, chunk) task.
template <int KIND, int ACC, int G>
__global__ void __launch_bounds__(256) red_row_kernel(RedPlan p) {
    __shared__ double sh[256 / 32];
    const int groups = 256 / G;
    int g = threadIdx.x / G, lane = threadIdx.x % G;
    int64_t tasks = p.M * p.C;
    // every thread of the block runs the same number of iterations (block barriers below)
    for (int64_t base = (int64_t)blockIdx.x * groups; base < tasks;
         base += (int64_t)gridDim.x * groups) {
        int64_t t = base + g;
        double a = acc_init<ACC>();
        int64_t offo = 0;
        if (t < tasks) {
            int64_t m = t / p.C, c = t % p.C;
            int64_t off[3];
            kept_off(p, p.nk, m, off);
            offo = off[2];
            float refv = KIND == RK_EQ ? ld_any(p.ref, p.refdt, off[1]) : 0.0f;
            int64_t r0 = c * p.chunk, r1 = min(p.R, r0 + p.chunk);
            const char *x = p.x;
            for (int64_t r = r0 + lane; r < r1; r += G) {
                float v = ld_any(x, p.xdt, off[0] + red_off(p, r));
                a = acc_combine<ACC>(a, red_value<KIND>(v, refv));
            }
        }
        a = warp_combine<ACC>(a);
        if (G > 32) {
            int w = threadIdx.x >> 5;
            __syncthreads();
            if ((threadIdx.x & 31) == 0) sh[w] = a;
            __syncthreads();
            a = sh[0];
            for (int i = 1; i < G / 32; i++) a = acc_combine<ACC>(a, sh[i]);
        }
        if (lane == 0 && t < tasks) {
            if (p.C > 1) p.part[t] = a;
            else red_store<ACC>(p, t, offo, a);
        }
    }
}

// Column shape: blocks of (32, 8); task = (outer kept index, tile of 32 along the innermost
// kept dim, chunk).
template <int KIND, int ACC> __global__ void __launch_bounds__(256) red_col_kernel(RedPlan p) {
    __shared__ double sh[8][33];
    int tx = threadIdx.x, ty = threadIdx.y;
    int64_t nL = p.ksz[p.nk - 1];
    int64_t tiles = (nL + 31) / 32, Mo = p.M / nL;
    int64_t tasks = Mo * tiles * p.C;
    for (int64_t t = blockIdx.x; t < tasks; t += gridDim.x) {
        int64_t c = t % p.C, b = (t / p.C) % tiles, mo = t / (p.C * tiles);
        int64_t k = b * 32 + tx;
        double a = acc_init<ACC>();
        int64_t off[3];
        kept_off(p, p.nk - 1, mo, off);
        if (k < nL) {
            int64_t ox = off[0] + k * p.kst[0][p.nk - 1];
            float refv =
                KIND == RK_EQ ? ld_any(p.ref, p.refdt, off[1] + k * p.kst[1][p.nk - 1]) : 0.0f;
            int64_t r0 = c * p.chunk, r1 = min(p.R, r0 + p.chunk);
            for (int64_t r = r0 + ty; r < r1; r += 8) {
                float v = ld_any(p.x, p.xdt, ox + red_off(p, r));
                a = acc_combine<ACC>(a, red_value<KIND>(v, refv));
            }
        }
        __syncthreads(); // the previous task's readers are done with sh
        sh[ty][tx] = a;
        __syncthreads();
        if (ty == 0 && k < nL) {
            for (int i = 1; i < 8; i++) a = acc_combine<ACC>(a, sh[i][tx]);
            int64_t m = mo * nL + k;
            if (p.C > 1) p.part[m * p.C + c] = a;
            else red_store<ACC>(p, m, off[2] + k * p.kst[2][p.nk - 1], a);
        }
    }
}

// Partials in chunk order, one thread per output.
template <int ACC> __global__ void red_combine_kernel(RedPlan p) {
    for (int64_t m = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; m < p.M;
         m += (int64_t)gridDim.x * blockDim.x) {
        double a = p.part[m * p.C];
        for (int64_t c = 1; c < p.C; c++) a = acc_combine<ACC>(a, p.part[m * p.C + c]);
        int64_t off[3];
        kept_off(p, p.nk, m, off);
        red_store<ACC>(p, m, off[2], a);
    }
}

// ---- plan (host) ------------------------------------------------------------------------------

// Strides of a keepdim-form tensor over x's shape: 0 where it has size 1.
void keepdim_strides(int64_t *dst, const lt_tensor *t, int ndim) {
    for (int d = 0; d < ndim; d++) dst[d] = t && t->sizes[d] != 1 ? t->strides[d] : 0;
}

// Simplify as src/ops/reduce.c does and split into kept and reduced dims.
void red_plan_make(RedPlan *p, const lt_tensor *x, const int32_t *flags, const lt_tensor *ref,
                   const lt_tensor *out) {
    memset(p, 0, sizeof *p);
    int nd0 = x->ndim, nd = 0;
    int64_t sizes[LT_MAX_DIMS], st[3][LT_MAX_DIMS], s1[LT_MAX_DIMS], s2[LT_MAX_DIMS];
    int32_t red[LT_MAX_DIMS];
    keepdim_strides(s1, ref, nd0);
    keepdim_strides(s2, out, nd0);
    for (int i = 0; i < nd0; i++) {
        if (x->sizes[i] == 1) continue;
        sizes[nd] = x->sizes[i];
        red[nd] = flags[i];
        st[0][nd] = x->strides[i];
        st[1][nd] = s1[i];
        st[2][nd] = s2[i];
        nd++;
    }
    for (int i = 1; i < nd; i++)
        for (int j = i; j > 0 && st[0][j - 1] < st[0][j]; j--) {
            int64_t t = sizes[j];
            sizes[j] = sizes[j - 1];
            sizes[j - 1] = t;
            int32_t f = red[j];
            red[j] = red[j - 1];
            red[j - 1] = f;
            for (int k = 0; k < 3; k++) {
                t = st[k][j];
                st[k][j] = st[k][j - 1];
                st[k][j - 1] = t;
            }
        }
    int m = 0;
    for (int i = 0; i < nd; i++) {
        if (m > 0 && red[m - 1] == red[i]) {
            bool nest = true;
            for (int k = 0; k < 3 && nest; k++) nest = st[k][m - 1] == st[k][i] * sizes[i];
            if (nest) {
                sizes[m - 1] *= sizes[i];
                for (int k = 0; k < 3; k++) st[k][m - 1] = st[k][i];
                continue;
            }
        }
        sizes[m] = sizes[i];
        red[m] = red[i];
        for (int k = 0; k < 3; k++) st[k][m] = st[k][i];
        m++;
    }
    p->M = 1;
    p->R = 1;
    for (int i = 0; i < m; i++) {
        if (red[i]) {
            p->rsz[p->nr] = sizes[i];
            p->rst[p->nr] = st[0][i];
            p->nr++;
            p->R *= sizes[i];
        } else {
            p->ksz[p->nk] = sizes[i];
            for (int k = 0; k < 3; k++) p->kst[k][p->nk] = st[k][i];
            p->nk++;
            p->M *= sizes[i];
        }
    }
    p->r32 = p->R < (int64_t)INT32_MAX;
    p->x = (const char *)lt_tensor_data(x);
    p->xdt = x->dtype_id;
    p->ref = ref ? (const char *)lt_tensor_data(ref) : NULL;
    p->refdt = ref ? ref->dtype_id : LT_DTYPE_F32;
    p->out = out ? (char *)lt_tensor_data(out) : NULL;
    p->outdt = out ? out->dtype_id : LT_DTYPE_F32;
    p->scale = 1.0;
    p->C = 1;
    p->chunk = p->R;
}

// Whether the plan takes the column shape: the innermost remaining dim is kept.
bool red_is_col(const RedPlan &p) {
    if (p.nk == 0) return false;
    // dims are ordered by x's stride, so the innermost kept and reduced dims are the last
    // of each list; the kept one is innermost unless a reduced stride is smaller
    return p.nr == 0 || p.rst[p.nr - 1] >= p.kst[0][p.nk - 1];
}

template <int KIND, int ACC> int red_launch_t(RedPlan *p, lt_cuda_context *c, bool col) {
    int sms = c->prop.multiProcessorCount > 0 ? c->prop.multiProcessorCount : 1;
    int64_t target = 4LL * sms; // blocks that keep every multiprocessor busy
    int dev = c->device;
    if (col) {
        int64_t nL = p->ksz[p->nk - 1];
        int64_t blocks = (p->M / nL) * ((nL + 31) / 32);
        int64_t C = 1;
        if (blocks < target) {
            C = (target + blocks - 1) / blocks;
            int64_t cmax = (p->R + 63) / 64; // at least 64 reduced positions per chunk
            if (C > cmax) C = cmax;
            if (C > RED_MAX_C) C = RED_MAX_C;
            if (C < 1) C = 1;
        }
        p->chunk = (p->R + C - 1) / C;
        p->C = (p->R + p->chunk - 1) / p->chunk;
        if (p->C > 1) LT_TRY(lt_cuda_alloc((void **)&p->part, p->M * p->C * 8, dev));
        red_col_kernel<KIND, ACC><<<lt_blocks_for(blocks * p->C, 1), dim3(32, 8), 0, c->stream>>>(*p);
    } else {
        bool warp = p->R <= 4096;
        int G = warp ? 32 : 256;
        int64_t per_block = 256 / G;
        int64_t blocks = (p->M + per_block - 1) / per_block;
        int64_t C = 1;
        if (blocks < target) {
            C = (target * per_block + p->M - 1) / p->M;
            int64_t cmax = (p->R + 2047) / 2048; // at least 2048 reduced elements per chunk
            if (C > cmax) C = cmax;
            if (C > RED_MAX_C) C = RED_MAX_C;
            if (C < 1) C = 1;
        }
        p->chunk = (p->R + C - 1) / C;
        p->C = (p->R + p->chunk - 1) / p->chunk;
        if (p->C > 1) LT_TRY(lt_cuda_alloc((void **)&p->part, p->M * p->C * 8, dev));
        unsigned grid = lt_blocks_for((p->M * p->C + per_block - 1) / per_block, 1);
        if (warp) red_row_kernel<KIND, ACC, 32><<<grid, 256, 0, c->stream>>>(*p);
        else red_row_kernel<KIND, ACC, 256><<<grid, 256, 0, c->stream>>>(*p);
    }
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess && p->C > 1) {
        red_combine_kernel<ACC><<<lt_blocks_for(p->M, 256), 256, 0, c->stream>>>(*p);
        e = cudaGetLastError();
    }
    // queued work orders any reuse of the scratch block
    if (p->part) lt_cuda_free(p->part, dev);
    p->part = NULL;
    if (e != cudaSuccess)
        return lt_fail(LT_ERR_DEVICE, "%s:%d: launching the reduction: %s", __FILE__, __LINE__,
                       cudaGetErrorString(e));
    return LT_OK;
}

// Run a plan (M > 0, R > 0) of the given kind and accumulator.
int red_run(RedPlan *p, int kind, int acc, bool col, int device) {
    LT_CUDA_CTX(c, device);
    if (kind == RK_LOAD && acc == ACC_SUM) return red_launch_t<RK_LOAD, ACC_SUM>(p, c, col);
    if (kind == RK_LOAD && acc == ACC_MAX) return red_launch_t<RK_LOAD, ACC_MAX>(p, c, col);
    if (kind == RK_LOAD && acc == ACC_MIN) return red_launch_t<RK_LOAD, ACC_MIN>(p, c, col);
    if (kind == RK_SQUARE) return red_launch_t<RK_SQUARE, ACC_SUM>(p, c, col);
    if (kind == RK_NONFINITE) return red_launch_t<RK_NONFINITE, ACC_SUM>(p, c, col);
    if (kind == RK_EQ) return red_launch_t<RK_EQ, ACC_SUM>(p, c, col);
    return LT_INTERNAL("reduce: unknown kind %d / accumulator %d", kind, acc);
}

// Everything of x reduced into one double, read back to the host.
int red_all_to_host(const lt_tensor *x, int kind, double *out) {
    int dev = lt_device_of(x);
    LT_CUDA_CTX(c, dev);
    int32_t flags[LT_MAX_DIMS];
    for (int i = 0; i < LT_MAX_DIMS; i++) flags[i] = 1;
    RedPlan p;
    red_plan_make(&p, x, flags, NULL, NULL);
    double *d = NULL;
    LT_TRY(lt_cuda_alloc((void **)&d, sizeof(double), dev));
    p.out64 = d;
    int st = red_run(&p, kind, ACC_SUM, false, dev);
    if (st == LT_OK) {
        cudaError_t e = cudaMemcpyAsync(c->staging, d, sizeof(double), cudaMemcpyDeviceToHost,
                                        c->stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
        if (e != cudaSuccess)
            st = lt_fail(LT_ERR_DEVICE, "%s:%d: reading a reduction back: %s", __FILE__, __LINE__,
                         cudaGetErrorString(e));
        else *out = *(const double *)c->staging;
    }
    lt_cuda_free(d, dev);
    return st;
}

// ---- max/min backward: share dout among the tied extrema ------------------------------------

struct ShareArgs {
    int ndim;
    int64_t sizes[LT_MAX_DIMS];
    int64_t st[5][LT_MAX_DIMS]; // dx, x, out, dout, count (the last three in keepdim form)
    char *p[5];
    int dt[5];
};

__global__ void share_ties_kernel(ShareArgs a, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t off[5] = {0, 0, 0, 0, 0}, rem = i;
        for (int d = a.ndim - 1; d >= 0; d--) {
            int64_t idx = rem % a.sizes[d];
            rem /= a.sizes[d];
#pragma unroll
            for (int k = 0; k < 5; k++) off[k] += idx * a.st[k][d];
        }
        float v = ld_any(a.p[1], a.dt[1], off[1]), m = ld_any(a.p[2], a.dt[2], off[2]);
        float g = v == m ? ld_any(a.p[3], a.dt[3], off[3]) / ld_any(a.p[4], a.dt[4], off[4])
                         : 0.0f;
        st_any(a.p[0], a.dt[0], off[0], g);
    }
}

// ---- argmax -------------------------------------------------------------------------------------

struct ArgmaxArgs {
    int ndim, dim;
    int64_t sizes[LT_MAX_DIMS];
    int64_t xst[LT_MAX_DIMS], ost[LT_MAX_DIMS];
    const char *x;
    int xdt;
    int64_t *out;
    int64_t M, n;
};

// The better of two candidates (index < 0: none): NaN first, then the larger, then the
// lower index. Associative and commutative, so any combining order gives the CPU's answer.
__device__ __forceinline__ void am_better(float &v, int64_t &i, float v2, int64_t i2) {
    if (i2 < 0) return;
    bool take;
    if (i < 0) take = true;
    else {
        bool n1 = v != v, n2 = v2 != v2;
        if (n1 != n2) take = n2;
        else if (!n1 && v2 != v) take = v2 > v;
        else take = i2 < i;
    }
    if (take) {
        v = v2;
        i = i2;
    }
}

template <int G> __global__ void __launch_bounds__(256) argmax_kernel(ArgmaxArgs a) {
    __shared__ float shv[256 / 32];
    __shared__ int64_t shi[256 / 32];
    const int groups = 256 / G;
    int g = threadIdx.x / G, lane = threadIdx.x % G;
    for (int64_t base = (int64_t)blockIdx.x * groups; base < a.M;
         base += (int64_t)gridDim.x * groups) {
        int64_t m = base + g;
        float bv = 0.0f;
        int64_t bi = -1, ox = 0, oo = 0;
        if (m < a.M) {
            int64_t rem = m;
            for (int d = a.ndim - 1; d >= 0; d--) {
                if (d == a.dim) continue;
                int64_t idx = rem % a.sizes[d];
                rem /= a.sizes[d];
                ox += idx * a.xst[d];
                oo += idx * a.ost[d];
            }
            int64_t sd = a.xst[a.dim];
            for (int64_t j = lane; j < a.n; j += G) {
                float v = ld_any(a.x, a.xdt, ox + j * sd);
                am_better(bv, bi, v, j);
                if (bv != bv) break; // the first NaN of this thread's elements is final
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            float v2 = __shfl_xor_sync(0xffffffffu, bv, o);
            int64_t i2 = __shfl_xor_sync(0xffffffffu, bi, o);
            am_better(bv, bi, v2, i2);
        }
        if (G > 32) {
            int w = threadIdx.x >> 5;
            __syncthreads();
            if ((threadIdx.x & 31) == 0) {
                shv[w] = bv;
                shi[w] = bi;
            }
            __syncthreads();
            for (int k = 0; k < G / 32; k++) am_better(bv, bi, shv[k], shi[k]);
        }
        if (lane == 0 && m < a.M) a.out[oo] = bi;
    }
}

// ---- softmax ----------------------------------------------------------------------------------

// Up to three row-wise operands: (out, x) forward, (dx, dout, y) backward.
struct RowArgs {
    int nlead;                        // leading dims
    int64_t sizes[LT_MAX_DIMS];       // leading sizes
    int64_t st[3][LT_MAX_DIMS];       // leading strides
    int64_t cs[3];                    // column strides
    char *p[3];
    int dt[3];
    int64_t rows, cols;
    int vec; // contiguous columns and one dtype: 16-byte loads where a row is aligned
};

__device__ __forceinline__ void row_offsets(const RowArgs &a, int64_t r, int64_t *off) {
    off[0] = off[1] = off[2] = 0;
    for (int d = a.nlead - 1; d >= 0; d--) {
        int64_t idx = r % a.sizes[d];
        r /= a.sizes[d];
        off[0] += idx * a.st[0][d];
        off[1] += idx * a.st[1][d];
        off[2] += idx * a.st[2][d];
    }
}

// Running (max, sum of exp(x - max)). A -inf element adds nothing; a NaN or +inf makes the
// sum NaN (the CPU's result for such rows); the caller turns a row whose max stays -inf
// into NaN.
__device__ __forceinline__ void ms_add(float &m, float &s, float x) {
    if (x > m) {
        s = s == 0.0f ? 0.0f : s * expf(m - x);
        m = x;
    }
    if (x != -INFINITY) s += expf(x - m);
}

__device__ __forceinline__ void ms_combine(float &m, float &s, float m2, float s2) {
    float mn = fmaxf(m, m2);
    float a = s == 0.0f ? 0.0f : s * expf(m - mn);
    float b = s2 == 0.0f ? 0.0f : s2 * expf(m2 - mn);
    m = mn;
    s = a + b;
}

// (m, s) over the G threads of a group; every thread of the group gets the result.
template <int G> __device__ __forceinline__ void ms_group(float &m, float &s, float *shm, float *shs) {
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        ms_combine(m, s, m2, s2);
    }
    if (G > 32) {
        int w = threadIdx.x >> 5;
        __syncthreads();
        if ((threadIdx.x & 31) == 0) {
            shm[w] = m;
            shs[w] = s;
        }
        __syncthreads();
        m = shm[0];
        s = shs[0];
        for (int k = 1; k < G / 32; k++) ms_combine(m, s, shm[k], shs[k]);
    }
}

template <int G> __device__ __forceinline__ float sum_group(float v, float *sh) {
    v = lt_warp_sum(v);
    if (G > 32) {
        int w = threadIdx.x >> 5;
        __syncthreads();
        if ((threadIdx.x & 31) == 0) sh[w] = v;
        __syncthreads();
        v = 0.0f;
        for (int k = 0; k < G / 32; k++) v += sh[k];
    }
    return v;
}

template <class T> __device__ __forceinline__ bool row_aligned(const char *p, int64_t off) {
    return (((uintptr_t)p + (uintptr_t)off * sizeof(T)) & 15u) == 0;
}
template <> __device__ __forceinline__ bool row_aligned<AnyT>(const char *, int64_t) { return false; }

// Forward: G threads per row (32: a warp, 8 rows per block; else the whole block).
template <class T, int G, int LOG>
__global__ void __launch_bounds__(G > 32 ? G : 256) softmax_fwd_kernel(RowArgs a) {
    constexpr int BLOCK = G > 32 ? G : 256;
    constexpr int W = pack_w<T>();
    __shared__ float shm[BLOCK / 32], shs[BLOCK / 32];
    const int groups = BLOCK / G;
    int g = threadIdx.x / G, lane = threadIdx.x % G;
    for (int64_t base = (int64_t)blockIdx.x * groups; base < a.rows;
         base += (int64_t)gridDim.x * groups) {
        int64_t r = base + g;
        bool live = r < a.rows;
        int64_t off[3] = {0, 0, 0};
        if (live) row_offsets(a, r, off);
        const char *x = a.p[1];
        char *y = a.p[0];
        int64_t n = live ? a.cols : 0;
        bool vec = a.vec && W > 1 && row_aligned<T>(x, off[1]) && row_aligned<T>(y, off[0]);
        int64_t nv = vec ? n / W : 0;
        float m = -INFINITY, s = 0.0f;
        if constexpr (W > 1) {
            for (int64_t v = lane; v < nv; v += G) {
                Pack<T> pk = *(const Pack<T> *)(x + (off[1] + v * W) * (int64_t)sizeof(T));
#pragma unroll
                for (int j = 0; j < W; j++) ms_add(m, s, lt_to_f32(pk.v[j]));
            }
        }
        for (int64_t j = nv * W + lane; j < n; j += G)
            ms_add(m, s, ldr<T>(x, a.dt[1], off[1] + j * a.cs[1]));
        ms_group<G>(m, s, shm, shs);
        if (m == -INFINITY) s = NAN; // only -inf (or NaN) in the row: NaN, as on the CPU
        float inv = 1.0f / s, lse = logf(s);
        if constexpr (W > 1) {
            for (int64_t v = lane; v < nv; v += G) {
                Pack<T> pk = *(const Pack<T> *)(x + (off[1] + v * W) * (int64_t)sizeof(T));
#pragma unroll
                for (int j = 0; j < W; j++) {
                    float xv = lt_to_f32(pk.v[j]);
                    pk.v[j] = lt_from_f32<T>(LOG ? (xv - m) - lse : expf(xv - m) * inv);
                }
                *(Pack<T> *)(y + (off[0] + v * W) * (int64_t)sizeof(T)) = pk;
            }
        }
        for (int64_t j = nv * W + lane; j < n; j += G) {
            float xv = ldr<T>(x, a.dt[1], off[1] + j * a.cs[1]);
            str<T>(y, a.dt[0], off[0] + j * a.cs[0], LOG ? (xv - m) - lse : expf(xv - m) * inv);
        }
    }
}

// Backward: softmax dx = y * (dout - sum(dout * y)); log-softmax dx = dout - exp(y) * sum(dout).
template <class T, int G, int LOG>
__global__ void __launch_bounds__(G > 32 ? G : 256) softmax_bwd_kernel(RowArgs a) {
    constexpr int BLOCK = G > 32 ? G : 256;
    constexpr int W = pack_w<T>();
    __shared__ float sh[BLOCK / 32];
    const int groups = BLOCK / G;
    int g = threadIdx.x / G, lane = threadIdx.x % G;
    for (int64_t base = (int64_t)blockIdx.x * groups; base < a.rows;
         base += (int64_t)gridDim.x * groups) {
        int64_t r = base + g;
        bool live = r < a.rows;
        int64_t off[3] = {0, 0, 0};
        if (live) row_offsets(a, r, off);
        char *dx = a.p[0];
        const char *d = a.p[1], *y = a.p[2];
        int64_t n = live ? a.cols : 0;
        bool vec = a.vec && W > 1 && row_aligned<T>(dx, off[0]) && row_aligned<T>(d, off[1]) &&
                   row_aligned<T>(y, off[2]);
        int64_t nv = vec ? n / W : 0;
        float acc = 0.0f;
        if constexpr (W > 1) {
            for (int64_t v = lane; v < nv; v += G) {
                Pack<T> pd = *(const Pack<T> *)(d + (off[1] + v * W) * (int64_t)sizeof(T));
                Pack<T> py = *(const Pack<T> *)(y + (off[2] + v * W) * (int64_t)sizeof(T));
#pragma unroll
                for (int j = 0; j < W; j++)
                    acc += LOG ? lt_to_f32(pd.v[j]) : lt_to_f32(pd.v[j]) * lt_to_f32(py.v[j]);
            }
        }
        for (int64_t j = nv * W + lane; j < n; j += G) {
            float dv = ldr<T>(d, a.dt[1], off[1] + j * a.cs[1]);
            acc += LOG ? dv : dv * ldr<T>(y, a.dt[2], off[2] + j * a.cs[2]);
        }
        acc = sum_group<G>(acc, sh);
        if constexpr (W > 1) {
            for (int64_t v = lane; v < nv; v += G) {
                Pack<T> pd = *(const Pack<T> *)(d + (off[1] + v * W) * (int64_t)sizeof(T));
                Pack<T> py = *(const Pack<T> *)(y + (off[2] + v * W) * (int64_t)sizeof(T));
                Pack<T> po;
#pragma unroll
                for (int j = 0; j < W; j++) {
                    float dv = lt_to_f32(pd.v[j]), yv = lt_to_f32(py.v[j]);
                    po.v[j] = lt_from_f32<T>(LOG ? dv - expf(yv) * acc : yv * (dv - acc));
                }
                *(Pack<T> *)(dx + (off[0] + v * W) * (int64_t)sizeof(T)) = po;
            }
        }
        for (int64_t j = nv * W + lane; j < n; j += G) {
            float dv = ldr<T>(d, a.dt[1], off[1] + j * a.cs[1]);
            float yv = ldr<T>(y, a.dt[2], off[2] + j * a.cs[2]);
            str<T>(dx, a.dt[0], off[0] + j * a.cs[0], LOG ? dv - expf(yv) * acc : yv * (dv - acc));
        }
    }
}

void row_args(RowArgs *a, int nops, const lt_tensor *const *t) {
    memset(a, 0, sizeof *a);
    const lt_tensor *t0 = t[0];
    int nd = t0->ndim;
    a->nlead = nd > 0 ? nd - 1 : 0;
    a->cols = nd > 0 ? t0->sizes[nd - 1] : 1;
    a->rows = a->cols > 0 ? lt_tensor_numel(t0) / a->cols : 0;
    for (int i = 0; i < a->nlead; i++) a->sizes[i] = t0->sizes[i];
    bool same = true;
    for (int k = 0; k < nops; k++) {
        for (int i = 0; i < a->nlead; i++) a->st[k][i] = t[k]->strides[i];
        a->cs[k] = nd > 0 ? t[k]->strides[nd - 1] : 1;
        a->p[k] = (char *)lt_tensor_data(t[k]);
        a->dt[k] = t[k]->dtype_id;
        if (a->cs[k] != 1 && a->cols > 1) same = false;
        if (t[k]->dtype_id != t0->dtype_id) same = false;
    }
    a->vec = same;
}

template <int G, int LOG> int softmax_launch(RowArgs *a, bool fwd, bool any, cudaStream_t s,
                                             int dtype) {
    const int block = G > 32 ? G : 256;
    const int per = block / G;
    unsigned grid = lt_blocks_for((a->rows + per - 1) / per, 1);
    if (any) {
        if (fwd) softmax_fwd_kernel<AnyT, G, LOG><<<grid, block, 0, s>>>(*a);
        else softmax_bwd_kernel<AnyT, G, LOG><<<grid, block, 0, s>>>(*a);
        return LT_OK;
    }
    LT_FLOAT_SWITCH(dtype, T, {
        if (fwd) softmax_fwd_kernel<T, G, LOG><<<grid, block, 0, s>>>(*a);
        else softmax_bwd_kernel<T, G, LOG><<<grid, block, 0, s>>>(*a);
    });
    return LT_OK;
}

int softmax_run(int nops, const lt_tensor *const *t, bool fwd, int log_form) {
    RowArgs a;
    row_args(&a, nops, t);
    if (a.rows == 0 || a.cols == 0) return LT_OK;
    LT_CUDA_CTX(c, lt_device_of(t[0]));
    bool any = !a.vec; // mixed dtypes or strided columns: run-time dtypes, scalar loads
    bool warp = a.cols <= 1024;
    int dt = t[0]->dtype_id;
    int st;
    if (warp) st = log_form ? softmax_launch<32, 1>(&a, fwd, any, c->stream, dt)
                            : softmax_launch<32, 0>(&a, fwd, any, c->stream, dt);
    else st = log_form ? softmax_launch<512, 1>(&a, fwd, any, c->stream, dt)
                       : softmax_launch<512, 0>(&a, fwd, any, c->stream, dt);
    LT_TRY(st);
    LT_CU_LAUNCH("softmax kernel");
    return LT_OK;
}

int reduce_acc(int op) {
    return op == LT_REDUCE_MAX ? ACC_MAX : op == LT_REDUCE_MIN ? ACC_MIN : ACC_SUM;
}

} // namespace

// ---- entry points (arguments checked by src/ops/reduce.c) ------------------------------------

extern "C" int lt_cuda_reduce_forward(lt_tensor *out, const lt_tensor *x, int32_t ndims,
                                      const int32_t *dims, int op) {
    int32_t flags[LT_MAX_DIMS] = {0};
    for (int i = 0; i < ndims; i++) flags[dims[i] < 0 ? dims[i] + x->ndim : dims[i]] = 1;
    int64_t M = lt_tensor_numel(out), R = 1;
    for (int d = 0; d < x->ndim; d++)
        if (flags[d]) R *= x->sizes[d];
    if (M == 0) return LT_OK;
    if (R == 0) return lt_cuda_fill(out, op == LT_REDUCE_MEAN ? NAN : 0.0);
    // one element per output: the value itself (the sum, mean, max and min of one number)
    if (R == 1) return lt_cuda_copy(out, x);
    RedPlan p;
    red_plan_make(&p, x, flags, NULL, out);
    if (op == LT_REDUCE_MEAN) p.scale = 1.0 / (double)R;
    return red_run(&p, RK_LOAD, reduce_acc(op), red_is_col(p), lt_device_of(x));
}

extern "C" int lt_cuda_reduce_backward(lt_tensor *dx, const lt_tensor *dout, const lt_tensor *x,
                                       const lt_tensor *out, int op) {
    if (op == LT_REDUCE_SUM || op == LT_REDUCE_MEAN) {
        double count = 1.0;
        for (int d = 0; d < x->ndim; d++)
            if (dout->sizes[d] == 1) count *= (double)x->sizes[d];
        if (lt_tensor_numel(x) == 0) return LT_OK;
        return lt_cuda_axpby(dx, op == LT_REDUCE_MEAN ? 1.0 / count : 1.0, dout, 0.0);
    }
    int64_t n = lt_tensor_numel(x);
    if (n == 0) return LT_OK;
    int dev = lt_device_of(x);
    LT_CUDA_CTX(c, dev);
    int32_t flags[LT_MAX_DIMS] = {0};
    for (int d = 0; d < x->ndim; d++) flags[d] = dout->sizes[d] == 1;
    // count the elements equal to each extremum, then share dout among them
    lt_tensor count = {};
    LT_TRY(lt_tensor_empty(&count, LT_DTYPE_F32, dout->ndim, dout->sizes, LT_DEVICE_CUDA, dev));
    RedPlan p;
    red_plan_make(&p, x, flags, out, &count);
    int st = red_run(&p, RK_EQ, ACC_SUM, red_is_col(p), dev);
    if (st == LT_OK) {
        ShareArgs a;
        memset(&a, 0, sizeof a);
        a.ndim = x->ndim;
        const lt_tensor *ts[5] = {dx, x, out, dout, &count};
        for (int d = 0; d < x->ndim; d++) a.sizes[d] = x->sizes[d];
        for (int k = 0; k < 5; k++) {
            if (k < 2)
                for (int d = 0; d < x->ndim; d++) a.st[k][d] = ts[k]->strides[d];
            else keepdim_strides(a.st[k], ts[k], x->ndim);
            a.p[k] = (char *)lt_tensor_data(ts[k]);
            a.dt[k] = ts[k]->dtype_id;
        }
        share_ties_kernel<<<lt_blocks_for(n, 256), 256, 0, c->stream>>>(a, n);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            st = lt_fail(LT_ERR_DEVICE, "%s:%d: launching share_ties_kernel: %s", __FILE__,
                         __LINE__, cudaGetErrorString(e));
    }
    lt_tensor_release(&count); // the stream orders its reuse after the kernels above
    return st;
}

extern "C" int lt_cuda_argmax(lt_tensor *out, const lt_tensor *x, int dim) {
    int d = dim < 0 ? dim + x->ndim : dim;
    ArgmaxArgs a;
    memset(&a, 0, sizeof a);
    a.ndim = x->ndim;
    a.dim = d;
    for (int i = 0; i < x->ndim; i++) {
        a.sizes[i] = x->sizes[i];
        a.xst[i] = x->strides[i];
        a.ost[i] = out->strides[i];
    }
    a.x = (const char *)lt_tensor_data(x);
    a.xdt = x->dtype_id;
    a.out = (int64_t *)lt_tensor_data(out);
    a.M = lt_tensor_numel(out);
    a.n = x->sizes[d];
    if (a.M == 0) return LT_OK;
    LT_CUDA_CTX(c, lt_device_of(x));
    if (a.n <= 2048)
        argmax_kernel<32><<<lt_blocks_for((a.M + 7) / 8, 1), 256, 0, c->stream>>>(a);
    else
        argmax_kernel<256><<<lt_blocks_for(a.M, 1), 256, 0, c->stream>>>(a);
    LT_CU_LAUNCH("argmax_kernel");
    return LT_OK;
}

extern "C" int lt_cuda_sum_squares(const lt_tensor *x, double *out) {
    *out = 0.0;
    if (lt_tensor_numel(x) == 0) return LT_OK;
    return red_all_to_host(x, RK_SQUARE, out);
}

extern "C" int lt_cuda_has_nonfinite(const lt_tensor *x, int32_t *out) {
    *out = 0;
    if (lt_tensor_numel(x) == 0) return LT_OK;
    double count = 0.0;
    LT_TRY(red_all_to_host(x, RK_NONFINITE, &count));
    *out = count > 0.0;
    return LT_OK;
}

extern "C" int lt_cuda_softmax_forward(lt_tensor *out, const lt_tensor *x) {
    const lt_tensor *t[2] = {out, x};
    return softmax_run(2, t, true, 0);
}

extern "C" int lt_cuda_softmax_backward(lt_tensor *dx, const lt_tensor *dout,
                                        const lt_tensor *out) {
    const lt_tensor *t[3] = {dx, dout, out};
    return softmax_run(3, t, false, 0);
}

extern "C" int lt_cuda_log_softmax_forward(lt_tensor *out, const lt_tensor *x) {
    const lt_tensor *t[2] = {out, x};
    return softmax_run(2, t, true, 1);
}

extern "C" int lt_cuda_log_softmax_backward(lt_tensor *dx, const lt_tensor *dout,
                                            const lt_tensor *out) {
    const lt_tensor *t[3] = {dx, dout, out};
    return softmax_run(3, t, false, 1);
}
