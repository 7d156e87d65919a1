--[[
op_cases.lua - the one table of op cases: every op with a backward has rows here (the
elementwise, reduction and softmax rows live in op_cases_elementwise.lua and are appended).
tests/lua/test_op_table_cuda.lua runs them: backward against central finite differences on
the CPU in f32, and every CUDA device present against the CPU in each dtype the support
table (src/ops/support.c) lists for the row's op on that device.

A row:
  name     = "rmsnorm",
  op       = "rmsnorm",              -- the support table's name for the op under test
  shapes   = { { dims = { 3, 37 } }, { dims = { 300, 257 }, big = true } },
             -- records handed to inputs(); awkward sizes. Finite differences run on those
             -- not marked big; devices run all of them. Default: one empty record.
  inputs   = function(shape) return { x = ..., w = ... } end,
             -- fresh random CPU inputs: f32 floats, index tensors, and plain Lua values
             -- (options) that pass through untouched
  forward  = function(inp) return out, saved end,
             -- out: one tensor; saved (optional): named tensors the backward reads, and
             -- any other outputs to compare on devices
  backward = function(inp, dout, saved) return { x = dx, ... } end,
             -- gradients by input name, and any other backward outputs to compare
  wrt      = { "x", "w" },           -- the inputs checked by finite differences
  rtol, atol, h                      -- finite-difference tolerances and step (optional)
  dtypes   = { "f32" },              -- the dtypes the row may run in on devices (default
                                     -- f32, bf16, f16; the support table cuts it further);
                                     -- the CPU runs every row in bf16 and f16 regardless
  keep     = { "cos", "sin" },       -- float inputs that stay f32 in bf16/f16 runs
  tol      = { f32 = 1e-5, lowp = 2 },  -- f32: ||gpu - cpu|| / ||cpu|| at most this;
                                     -- bf16/f16: at most lowp times the error of the CPU
                                     -- result rounded to the dtype (the defaults shown)
  f32_outputs = { "lse" },           -- outputs held to tol.f32 in every dtype (computed in
                                     -- f32 from inputs exact in the dtype); true: all
  close    = { lse = { rtol, atol } },  -- outputs also compared element by element
  tf32     = true,                   -- the row's f32 GEMMs may use TF32 on CUDA (tests
                                     -- run with it off otherwise)
Rows build their outputs on their inputs' device in their inputs' dtype (the functional
forms of luatrain.ops do), so one row runs anywhere.
]]
local lt = require "luatrain"
local core = require "luatrain.core"
local tensor = require "luatrain.tensor"
local K = require "op_cases_kernels"
local F = lt.ops

local C, check = core.C, core.check

local cases = {}
local function add(c) cases[#cases + 1] = c end

local function cat(a, b)
    local t = {}
    for _, v in ipairs(a) do t[#t + 1] = v end
    for _, v in ipairs(b) do t[#t + 1] = v end
    return t
end

-- A shape record marked big (device comparisons only).
local function big(s)
    s.big = true
    return s
end

-- ---- matmul / linear ---------------------------------------------------------------------

-- c = alpha * op(a) @ op(b) + beta * c. A shape record: M, N, K, batch (leading dims of a
-- and c; of b too unless shared_b), alpha, beta (then c is an input).
local function mm_inputs(s, ta, tb, shared_b)
    local batch = s.batch or {}
    local inp = {
        a = lt.randn(cat(batch, ta and { s.K, s.M } or { s.M, s.K })),
        b = lt.randn(cat(shared_b and {} or batch, tb and { s.N, s.K } or { s.K, s.N })),
        alpha = s.alpha, beta = s.beta,
    }
    if s.beta then inp.c = lt.randn(cat(batch, { s.M, s.N })) end
    return inp
end

local function mm_out_shape(a, b, ta, tb)
    local sa = a:shape()
    local shape = {}
    for i = 1, #sa - 2 do shape[i] = sa[i] end
    shape[#shape + 1] = ta and sa[#sa] or sa[#sa - 1]
    shape[#shape + 1] = tb and b:size(-2) or b:size(-1)
    return shape
end

-- opts: shapes, shared_b, f32_out (the output is f32 whatever the inputs' dtype), and
-- dtypes, keep, tol, tf32 as in a row.
local function mm_case(name, ta, tb, opts)
    add {
        name = name,
        op = "matmul",
        shapes = opts.shapes,
        inputs = function(s) return mm_inputs(s, ta, tb, opts.shared_b) end,
        forward = function(inp)
            local out = inp.c and inp.c:clone()
            if out == nil and opts.f32_out then
                out = lt.empty(mm_out_shape(inp.a, inp.b, ta, tb), { device = inp.a.device })
            end
            return F.matmul(inp.a, inp.b, { trans_a = ta, trans_b = tb, alpha = inp.alpha,
                beta = inp.beta, out = out })
        end,
        backward = function(inp, d)
            local ds = (inp.alpha or 1) ~= 1 and K.scalar("mul", d, inp.alpha) or d
            local da, db = F.matmul_backward(ds, inp.a, inp.b, { trans_a = ta, trans_b = tb })
            local g = { a = da, b = db }
            if inp.c then g.c = K.scalar("mul", d, inp.beta) end
            return g
        end,
        -- c is an input (and has a gradient) where the first shape gives beta
        wrt = opts.shapes[1].beta and { "a", "b", "c" } or { "a", "b" },
        dtypes = opts.dtypes, keep = opts.keep, tol = opts.tol, tf32 = opts.tf32,
    }
end

-- Sizes that are 1, odd and not a multiple of any tile, in every combination.
local ODD = { 1, 7, 33, 257, 1000 }

for _, tr in ipairs({ { false, false }, { true, false }, { false, true }, { true, true } }) do
    local ta, tb = tr[1], tr[2]
    local lay = ("ta=%s tb=%s"):format(tostring(ta), tostring(tb))
    local shapes = { { M = 5, N = 3, K = 7 } }
    for _, M in ipairs(ODD) do
        for _, N in ipairs(ODD) do
            for _, Kd in ipairs(ODD) do shapes[#shapes + 1] = big { M = M, N = N, K = Kd } end
        end
    end
    mm_case("matmul " .. lay, ta, tb, { shapes = shapes })
    -- alpha scales dout in the backward: a rounding of its own in bf16, so f32 only on
    -- devices; the CPU's bf16/f16 run (which ignores `dtypes`) allows 3x the naive error
    -- for that second rounding
    mm_case("matmul " .. lay .. ", alpha and beta", ta, tb, {
        shapes = { { M = 4, N = 6, K = 5, alpha = 0.5, beta = -1.25 },
            big { M = 33, N = 257, K = 7, alpha = 0.5, beta = -1.25 },
            big { M = 1000, N = 1, K = 33, alpha = -2, beta = 1 } },
        dtypes = { "f32" }, tol = { lowp = 3 },
    })
    -- bf16/f16 a and b into an f32 output (c kept in f32 where beta reads it)
    mm_case("matmul " .. lay .. ", f32 output", ta, tb, {
        shapes = { { M = 3, N = 4, K = 5, beta = 1 }, big { M = 33, N = 257, K = 1000 },
            big { M = 257, N = 7, K = 33, beta = 1 } },
        f32_out = true, keep = { "c" }, dtypes = { "bf16", "f16" },
    })
    -- TF32 tensor cores for f32 inputs: TF32's own tolerance (and alpha's second rounding
    -- in the CPU's bf16/f16 run, as above)
    mm_case("matmul " .. lay .. ", TF32", ta, tb, {
        shapes = { { M = 3, N = 5, K = 4, alpha = 0.75, beta = 0.5 },
            big { M = 257, N = 1000, K = 257 }, big { M = 7, N = 33, K = 1000, alpha = 0.75, beta = 0.5 } },
        dtypes = { "f32" }, tf32 = true, tol = { f32 = 5e-3, lowp = 3 },
    })
end

-- Batched: strided batches, b shared over the batch (its gradient sums the batch).
local BIG_BATCH = { batch = { 2, 3 }, M = 33, N = 7, K = 257 }
mm_case("matmul batched", false, false, {
    shapes = { { batch = { 2, 3 }, M = 5, N = 4, K = 6 }, big(BIG_BATCH) } })
mm_case("matmul batched, b transposed", false, true, {
    shapes = { { batch = { 3 }, M = 5, N = 4, K = 6 }, big(BIG_BATCH) } })
mm_case("matmul batched both, transposed a", true, false, {
    shapes = { { batch = { 3 }, M = 5, N = 4, K = 6 }, big(BIG_BATCH) } })
for _, ta in ipairs({ false, true }) do
    mm_case(("matmul batched, shared b%s"):format(ta and ", transposed a" or ""), ta, false, {
        shapes = { { batch = { 2, 3 }, M = 5, N = 4, K = 6 },
            big { batch = { 2, 3 }, M = 33, N = 7, K = 257, beta = 1 } },
        shared_b = true,
    })
end

add {
    name = "linear",
    op = "matmul",
    shapes = { { x = { 2, 5, 7 }, w = { 11, 7 } }, big { x = { 3, 33, 257 }, w = { 1000, 257 } } },
    inputs = function(s) return { x = lt.randn(s.x), w = lt.randn(s.w) } end,
    forward = function(inp) return F.linear(inp.x, inp.w) end,
    backward = function(inp, d)
        local dx, dw = F.linear_backward(d, inp.x, inp.w)
        return { x = dx, w = dw }
    end,
    wrt = { "x", "w" },
}

-- ---- embedding, norms, rope, gating ------------------------------------------------------

add {
    name = "embedding",
    op = "embedding",
    -- big: many positions per row of a small vocabulary (scatter-adds that collide)
    shapes = { { V = 13, C = 6, ids = { 3, 5 } }, big { V = 1000, C = 257, ids = { 7, 33 } },
        big { V = 3, C = 1, ids = { 2 } }, big { V = 50, C = 4099, ids = { 3, 37 } } },
    inputs = function(s) return { w = lt.randn(s.V, s.C), ids = lt.randint(0, s.V, s.ids), V = s.V } end,
    forward = function(inp) return F.embedding(inp.w, inp.ids) end,
    backward = function(inp, d) return { w = F.embedding_backward(d, inp.ids, nil, inp.V) } end,
    wrt = { "w" },
}

add {
    name = "rmsnorm",
    op = "rmsnorm",
    shapes = { { x = { 3, 4, 37 } }, big { x = { 1, 1 } }, big { x = { 7, 33 } },
        big { x = { 2, 17, 1000 } }, big { x = { 300, 257 } }, big { x = { 5, 4099 } } },
    inputs = function(s) return { x = lt.randn(s.x), w = lt.randn(s.x[#s.x]) } end,
    forward = function(inp)
        local out, rstd = F.rmsnorm(inp.x, inp.w, 1e-5)
        return out, { rstd = rstd }
    end,
    backward = function(inp, d, saved)
        local dx, dw = F.rmsnorm_backward(d, inp.x, inp.w, saved.rstd)
        return { x = dx, w = dw }
    end,
    wrt = { "x", "w" },
}

-- x (B, T, H, D); positions (B, T), (T) or none (0..T-1); the cos/sin tables of P positions
-- with Llama 3.1's frequency scaling, f32 on every device.
local function rope_inputs(s)
    local inv = F.rope_inv_freq(s.D, { theta = 500000, scaling = { type = "llama3", factor = 8,
        low_freq_factor = 1, high_freq_factor = 4, original_max_position_embeddings = 8 } })
    local cos, sin = F.rope_table(inv, s.P)
    local inp = { x = lt.randn(s.B, s.T, s.H, s.D), cos = cos, sin = sin }
    if s.pos == "table" then
        inp.pos = lt.tensor({ { 0, 1, 2, 3, 4, 5, 6 }, { 9, 8, 3, 0, 1, 2, 3 } }, "i64")
    elseif s.pos == "BT" then
        inp.pos = lt.randint(0, s.P, s.B, s.T)
    elseif s.pos == "T" then
        inp.pos = lt.randint(0, s.P, s.T, { dtype = "i32" })
    end
    return inp
end

add {
    name = "rope llama3 scaling, positions",
    op = "rope",
    shapes = { { B = 2, T = 7, H = 3, D = 10, P = 16, pos = "table" },
        big { B = 2, T = 33, H = 5, D = 64, P = 64, pos = "BT" },
        big { B = 1, T = 1000, H = 3, D = 128, P = 1000 },
        big { B = 3, T = 17, H = 1, D = 2, P = 40, pos = "T" } },
    inputs = rope_inputs,
    forward = function(inp) return F.rope(inp.x, inp.cos, inp.sin, inp.pos) end,
    backward = function(inp, d) return { x = F.rope_backward(d, inp.cos, inp.sin, inp.pos) } end,
    wrt = { "x" },
    keep = { "cos", "sin" },
}

add {
    name = "swiglu",
    op = "swiglu",
    shapes = { { dims = { 5, 23 } }, big { dims = { 1, 1 } }, big { dims = { 257, 1001 } },
        big { dims = { 33, 4096 } }, big { dims = { 3, 7, 33 } } },
    inputs = function(s) return { g = lt.randn(s.dims), u = lt.randn(s.dims) } end,
    forward = function(inp) return F.swiglu(inp.g, inp.u) end,
    backward = function(inp, d)
        local dg, du = F.swiglu_backward(d, inp.g, inp.u)
        return { g = dg, u = du }
    end,
    wrt = { "g", "u" },
}

-- gate and up as the two halves of one (N, 2F) projection: rows strided by 2F
add {
    name = "swiglu on the halves of one projection",
    op = "swiglu",
    shapes = { { N = 5, F = 9 }, big { N = 257, F = 1001 } },
    inputs = function(s) return { gu = lt.randn(s.N, 2 * s.F), F = s.F } end,
    forward = function(inp)
        local f = inp.F
        return F.swiglu(inp.gu:narrow(2, 1, f), inp.gu:narrow(2, f + 1, f))
    end,
    backward = function(inp, d)
        local f = inp.F
        local dgu = K.like(d, inp.gu:shape())
        F.swiglu_backward(d, inp.gu:narrow(2, 1, f), inp.gu:narrow(2, f + 1, f),
            dgu:narrow(2, 1, f), dgu:narrow(2, f + 1, f))
        return { gu = dgu }
    end,
    wrt = { "gu" },
}

add {
    name = "dropout p = 0.3",
    op = "dropout",
    shapes = { { dims = { 4, 9 }, p = 0.3 }, big { dims = { 1 }, p = 0.3 },
        big { dims = { 1000, 33 }, p = 0.3 }, big { dims = { 70001 }, p = 0.1 } },
    inputs = function(s) return { x = lt.randn(s.dims), p = s.p } end,
    -- the same seed draws the same mask on every device (a Philox stream)
    forward = function(inp)
        lt.manual_seed(77)
        local out = K.like(inp.x)
        local mask = K.like(inp.x, nil, "u8")
        check(C.lt_dropout_forward(out, mask, inp.x, inp.p, tensor.default_rng))
        return out, { mask = mask }
    end,
    backward = function(inp, d, saved)
        local dx = K.like(d)
        check(C.lt_dropout_backward(dx, d, saved.mask, inp.p))
        return { x = dx }
    end,
    wrt = { "x" },
}

-- ---- attention ---------------------------------------------------------------------------

-- Outputs are poisoned with NaN first: an element the kernels leave unwritten fails. The
-- bf16/f16 attention kernels round P before P V, so they are held to a naive low-precision
-- attention's error (tests/c/test_cuda_attention.c), a rule this table does not state: the
-- rows run in f32. A shape record: B, T, S, H, Hkv, D, causal, lens (packed sequences).
local function attention_case(name, shapes)
    add {
        name = name,
        op = "attention",
        shapes = shapes,
        inputs = function(s)
            local inp = { q = lt.randn(s.B, s.T, s.H, s.D), k = lt.randn(s.B, s.S, s.Hkv, s.D),
                v = lt.randn(s.B, s.S, s.Hkv, s.D), causal = s.causal }
            if s.lens then
                local cu = { 0 }
                for i, n in ipairs(s.lens) do cu[i + 1] = cu[i] + n end
                inp.cu = lt.tensor(cu, "i32")
            end
            return inp
        end,
        forward = function(inp)
            local q = inp.q
            local out = K.poisoned(q)
            local lse = K.poisoned(q, { q:size(1), q:size(3), q:size(2) }, "f32")
            F.attention(q, inp.k, inp.v, { causal = inp.causal, cu_seqlens = inp.cu, out = out, lse = lse })
            return out, { out = out, lse = lse }
        end,
        backward = function(inp, d, saved)
            local dq, dk, dv = K.poisoned(inp.q), K.poisoned(inp.k), K.poisoned(inp.v)
            F.attention_backward(d, inp.q, inp.k, inp.v, saved.out, saved.lse,
                { causal = inp.causal, cu_seqlens = inp.cu, dq = dq, dk = dk, dv = dv })
            return { q = dq, k = dk, v = dv }
        end,
        wrt = { "q", "k", "v" },
        dtypes = { "f32" },
        close = { lse = { 1e-5, 1e-5 } },
    }
end

local function att(B, T, S, H, Hkv, D, causal, lens)
    return { B = B, T = T, S = S, H = H, Hkv = Hkv, D = D, causal = causal, lens = lens }
end

attention_case("attention causal GQA", { att(2, 9, 9, 4, 2, 6, true),
    big(att(2, 1000, 1000, 8, 2, 64, true)), big(att(1, 4097, 4097, 2, 1, 64, true)) })
attention_case("attention non-causal MHA", { att(1, 5, 7, 3, 3, 4, false),
    big(att(2, 17, 17, 2, 2, 64, false)), big(att(1, 17, 1000, 2, 1, 128, false)) })
attention_case("attention causal, queries are the last T of S", { att(2, 3, 8, 2, 1, 6, true),
    big(att(1, 17, 1000, 4, 1, 128, true)) })
-- more queries than keys: the first T - S see no key (a zero output, lse -inf)
attention_case("attention causal, more queries than keys", { att(1, 5, 3, 2, 1, 4, true),
    big(att(2, 100, 30, 2, 2, 64, true)) })
attention_case("attention causal, long rows (two query blocks)", { att(1, 70, 70, 2, 1, 4, true) })
-- rows spanning several key tiles (64 keys per tile in the backward, 256 in the forward)
attention_case("attention causal, T = S = 300 (several key tiles)", { att(1, 300, 300, 2, 1, 4, true) })
attention_case("attention non-causal GQA, T = 150 of S = 280", { att(1, 150, 280, 4, 2, 4, false) })
attention_case("attention packed sequences (cu_seqlens), causal GQA", {
    att(2, 9, 9, 4, 2, 6, true, { 3, 1, 5, 2, 7 }),
    big(att(1, 1023, 1023, 4, 2, 64, true, { 1, 17, 300, 5, 700 })) })
attention_case("attention packed sequences, non-causal", { att(1, 12, 12, 2, 2, 4, false, { 5, 7 }),
    big(att(2, 512, 512, 2, 1, 64, false, { 100, 412, 1, 511 })) })

-- ---- losses ------------------------------------------------------------------------------

-- Targets in [0, V) with every third row (the 2nd, 5th, ...) the ignore index.
local function targets(N, V)
    local t = lt.randint(0, V, { N })
    for i = 2, N, 3 do t[i] = -100 end
    return t
end

local CE_SHAPES = { { N = 6, V = 11, std = 1 } }
for _, N in ipairs({ 1, 7, 300 }) do
    for _, V in ipairs({ 1, 5, 1000, 3001 }) do CE_SHAPES[#CE_SHAPES + 1] = big { N = N, V = V } end
end
CE_SHAPES[#CE_SHAPES + 1] = big { N = 300, V = 3001, normalizer = 25 }

add {
    name = "cross_entropy with ignore_index",
    op = "cross_entropy",
    shapes = CE_SHAPES,
    inputs = function(s)
        return { x = lt.randn(s.N, s.V) * (s.std or 3), y = targets(s.N, s.V), norm = s.normalizer or 0 }
    end,
    forward = function(inp)
        local x = inp.x
        local row_loss = lt.empty({ x:size(1) }, { device = x.device })
        local loss, lse = F.cross_entropy(x, inp.y, { normalizer = inp.norm, row_loss = row_loss })
        local alone = lt.empty({}, { device = x.device })
        check(C.lt_cross_entropy_forward(alone, nil, nil, x, inp.y, -100, inp.norm))
        return loss, { lse = lse, row_loss = row_loss, ["loss alone"] = alone }
    end,
    backward = function(inp, d, saved)
        local o = { normalizer = inp.norm }
        return { x = F.cross_entropy_backward(inp.x, inp.y, saved.lse, d:item(), o),
            ["x, lse recomputed"] = F.cross_entropy_backward(inp.x, inp.y, nil, d:item(), o) }
    end,
    wrt = { "x" },
    -- from logits exact in the dtype, the loss and its statistics are f32 computations
    f32_outputs = { "out", "lse", "row_loss", "loss alone" },
}

-- The fused LM head. dh and dw are f32 (the device computes them in w's dtype from logit
-- gradients rounded to it: the low-precision rule measures that). dw accumulates: from zero,
-- and into random values (dw0, kept in f32).
local LM_SHAPES = { big { N = 37, C = 48, V = 1000 }, big { N = 37, C = 48, V = 1000, normalizer = 30 },
    big { N = 1, C = 7, V = 1 }, big { N = 64, C = 40, V = 777 } }

local function lm_inputs(s)
    return { h = lt.randn(s.N, s.C), w = lt.randn(s.V, s.C) * 0.5, y = targets(s.N, s.V),
        norm = s.normalizer or 0, dw0 = lt.randn(s.V, s.C) }
end

local function lm_forward(inp)
    local h = inp.h
    local row_loss = lt.empty({ h:size(1) }, { device = h.device })
    local loss, lse = F.linear_cross_entropy(h, inp.w, inp.y, { normalizer = inp.norm, row_loss = row_loss })
    return loss, { lse = lse, row_loss = row_loss }
end

local function f32_like(t) return lt.empty(t:shape(), { device = t.device }) end

add {
    name = "linear_cross_entropy (LM head)",
    op = "linear_cross_entropy",
    shapes = cat({ { N = 7, C = 5, V = 19 } }, LM_SHAPES),
    inputs = lm_inputs,
    forward = lm_forward,
    backward = function(inp, d, saved)
        local o = { normalizer = inp.norm, dh = f32_like(inp.h) }
        local dh, dw = F.linear_cross_entropy_backward(inp.h, inp.w, inp.y, saved.lse, d:item(), o)
        local alone = F.linear_cross_entropy_backward(inp.h, inp.w, inp.y, nil, d:item(),
            { normalizer = inp.norm, dh = f32_like(inp.h), dw = false })
        local acc = inp.dw0:clone()
        F.linear_cross_entropy_backward(inp.h, inp.w, inp.y, saved.lse, d:item(),
            { normalizer = inp.norm, dh = false, dw = acc })
        return { h = dh, w = dw, ["h alone, lse recomputed"] = alone, ["w, accumulated"] = acc }
    end,
    wrt = { "h", "w" },
    keep = { "dw0" },
    f32_outputs = { "out", "lse", "row_loss" },
}

add {
    name = "linear_cross_entropy fused, normalizer",
    op = "linear_cross_entropy",
    shapes = cat({ { N = 7, C = 5, V = 19, normalizer = 10 } }, LM_SHAPES),
    inputs = lm_inputs,
    forward = lm_forward,
    -- as training calls it (no row_loss), and with row_loss
    backward = function(inp, d, _)
        local h = inp.h
        local loss, dh, dw = F.linear_cross_entropy_fused(h, inp.w, inp.y, d:item(),
            { normalizer = inp.norm, dh = f32_like(h) })
        local rl = lt.empty({ h:size(1) }, { device = h.device })
        local loss2, dh2, dw2 = F.linear_cross_entropy_fused(h, inp.w, inp.y, d:item(),
            { normalizer = inp.norm, dh = f32_like(h), dw = inp.dw0:clone(), row_loss = rl })
        return { h = dh, w = dw, ["fused loss"] = loss, ["h, with row_loss"] = dh2,
            ["w, with row_loss, accumulated"] = dw2, ["fused loss, with row_loss"] = loss2,
            ["fused row_loss"] = rl }
    end,
    wrt = { "h", "w" },
    keep = { "dw0" },
    f32_outputs = { "out", "lse", "row_loss", "fused loss", "fused loss, with row_loss", "fused row_loss" },
}

-- ---- the quantized linear layer -----------------------------------------------------------

-- y = x @ dequant(W)^T and dx = dy @ dequant(W), outputs poisoned with NaN and in x's dtype.
-- The weight stays f32 and is quantized on the CPU, then moved (quantization is bit-exact
-- across devices: tests/c/test_cuda_quant.c). int8 quantizes x itself, so its forward has no
-- useful finite differences: the C test covers it, with the GEMV and banded paths.
for _, qc in ipairs({ { "nf4", 64, true }, { "fp4", 64, false }, { "nf4", 4096, false } }) do
    add {
        name = ("quant_linear %s blocksize %d%s"):format(qc[1], qc[2], qc[3] and " double-quantized" or ""),
        op = "quant_linear",
        shapes = { { out = 6, ["in"] = 70, N = 3 }, big { out = 96, ["in"] = 160, N = 37 },
            big { out = 75, ["in"] = 77, N = 5 } },
        inputs = function(s)
            return { x = lt.randn(s.N, s["in"]), W = lt.randn(s.out, s["in"]) * 0.05 }
        end,
        forward = function(inp)
            local x = inp.x
            local q = lt.quant.quantize(inp.W, { type = qc[1], blocksize = qc[2], double_quant = qc[3] })
            q = q:to(x.device)
            return lt.quant.linear_forward(x, q, { out = K.poisoned(x, { x:size(1), q.shape[1] }),
                outlier_threshold = 0 })
        end,
        backward = function(inp, d)
            local q = lt.quant.quantize(inp.W, { type = qc[1], blocksize = qc[2], double_quant = qc[3] })
            q = q:to(d.device)
            return { x = lt.quant.linear_backward(d, q, { out = K.poisoned(d, inp.x:shape()) }) }
        end,
        wrt = { "x" },
        keep = { "W" },
    }
end

-- ---- LoRA ----------------------------------------------------------------------------------

-- A LoRALinear whose base weight, A, B (and DoRA magnitude) are the case's input tensors.
local function lora_module(inp, opts)
    local base = lt.nn.Linear(inp.W:size(2), inp.W:size(1), { weight = inp.W, trainable = false })
    local m = lt.nn.LoRALinear(base, opts)
    m.lora_A.weight:set_(inp.A)
    m.lora_B.weight:set_(inp.B)
    if opts.dora then m.lora_magnitude_vector:set_(inp.mag) end
    return m
end

-- Module rows: their kernels (matmul, dropout) have rows of their own, and the LoRA layer's
-- GPU runs are test_cuda.lua's (training beside the CPU), so these run on the CPU only.
local function lora_case(name, opts, wdtype)
    add {
        name = name,
        op = "matmul",
        dtypes = {},
        inputs = function()
            local t = { x = lt.randn(2, 3, 7), W = lt.randn(5, 7), A = lt.randn(4, 7), B = lt.randn(5, 4) }
            if wdtype then t.W = t.W:to(wdtype) end
            if opts.dora then t.mag = lt.rand(5, { low = 0.5, high = 1.5 }) end
            return t
        end,
        forward = function(inp)
            lt.manual_seed(77) -- the same dropout mask on every call
            return lora_module(inp, opts):forward(inp.x):clone()
        end,
        backward = function(inp, d)
            lt.manual_seed(77)
            local m = lora_module(inp, opts)
            m:forward(inp.x)
            local dx = m:backward(inp.x, d)
            return { x = dx, A = m.lora_A:grad("weight"), B = m.lora_B:grad("weight"),
                mag = opts.dora and m:grad("lora_magnitude_vector") or nil }
        end,
        -- DoRA holds its row norm constant in backward (DoRA paper, section 4.3; PEFT does the
        -- same), so only x and the magnitude have exact gradients of the forward function;
        -- test_lora.lua checks A and B against that rule
        wrt = opts.dora and { "x", "mag" } or { "x", "A", "B" },
    }
end

lora_case("lora linear, f32 base", { r = 4, alpha = 8 })
lora_case("lora linear, bf16 base, dropout 0.3", { r = 4, alpha = 8, dropout = 0.3 }, "bf16")
lora_case("lora linear, rslora", { r = 4, alpha = 8, rslora = true })
lora_case("dora linear (magnitude gradient with the norm held constant)", { r = 4, alpha = 8, dora = true })

-- ---- the elementwise and reduction rows --------------------------------------------------

local ok, ew = pcall(require, "op_cases_elementwise")
if ok then
    for _, c in ipairs(ew) do add(c) end
elseif not tostring(ew):find("module 'op_cases_elementwise' not found", 1, true) then
    error(ew, 0)
end

return cases
