--[[
op_cases.lua - the one table of op cases: every op with a backward is a row here (the
elementwise and reduction rows live in op_cases_elementwise.lua and are appended).

A row:
  name     = "rmsnorm",
  inputs   = function() return { x = ..., w = ... } end,  -- fresh random inputs, awkward sizes
  forward  = function(inp) return out end,                 -- one f32 tensor
  backward = function(inp, dout) return { x = dx, ... } end,
  wrt      = { "x", "w" },                                 -- inputs checked by finite differences
  rtol, atol, h                                            -- optional tolerances / step
test_op_grads.lua checks backward(dout) against central differences of sum(forward * dout).
]]
local lt = require "luatrain"
local F = lt.ops

local cases = {}
local function add(c) cases[#cases + 1] = c end

local function ids(shape, vocab)
    return lt.randint(0, vocab, shape)
end

-- ---- matmul / linear ---------------------------------------------------------------------

for _, tr in ipairs({ { false, false }, { true, false }, { false, true }, { true, true } }) do
    local ta, tb = tr[1], tr[2]
    add {
        name = ("matmul ta=%s tb=%s"):format(tostring(ta), tostring(tb)),
        inputs = function()
            return { a = ta and lt.randn(7, 5) or lt.randn(5, 7), b = tb and lt.randn(3, 7) or lt.randn(7, 3) }
        end,
        forward = function(inp) return F.matmul(inp.a, inp.b, { trans_a = ta, trans_b = tb }) end,
        backward = function(inp, d)
            local da, db = F.matmul_backward(d, inp.a, inp.b, { trans_a = ta, trans_b = tb })
            return { a = da, b = db }
        end,
        wrt = { "a", "b" },
    }
end

add {
    name = "matmul batched, shared b",
    inputs = function() return { a = lt.randn(2, 3, 5, 6), b = lt.randn(6, 4) } end,
    forward = function(inp) return F.matmul(inp.a, inp.b) end,
    backward = function(inp, d)
        local da, db = F.matmul_backward(d, inp.a, inp.b)
        return { a = da, b = db }
    end,
    wrt = { "a", "b" },
}

add {
    name = "matmul batched both, transposed a",
    inputs = function() return { a = lt.randn(3, 6, 5), b = lt.randn(3, 6, 4) } end,
    forward = function(inp) return F.matmul(inp.a, inp.b, { trans_a = true }) end,
    backward = function(inp, d)
        local da, db = F.matmul_backward(d, inp.a, inp.b, { trans_a = true })
        return { a = da, b = db }
    end,
    wrt = { "a", "b" },
}

add {
    name = "linear",
    inputs = function() return { x = lt.randn(2, 5, 7), w = lt.randn(11, 7) } end,
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
    inputs = function() return { w = lt.randn(13, 6), ids = ids({ 3, 5 }, 13) } end,
    forward = function(inp) return F.embedding(inp.w, inp.ids) end,
    backward = function(inp, d) return { w = F.embedding_backward(d, inp.ids, nil, 13) } end,
    wrt = { "w" },
}

add {
    name = "rmsnorm",
    inputs = function() return { x = lt.randn(3, 4, 37), w = lt.randn(37) } end,
    forward = function(inp) return (F.rmsnorm(inp.x, inp.w, 1e-5)) end,
    backward = function(inp, d)
        local _, rstd = F.rmsnorm(inp.x, inp.w, 1e-5)
        local dx, dw = F.rmsnorm_backward(d, inp.x, inp.w, rstd)
        return { x = dx, w = dw }
    end,
    wrt = { "x", "w" },
}

local function rope_tables(D, P, scaling)
    local inv = F.rope_inv_freq(D, { theta = 500000, scaling = scaling })
    return F.rope_table(inv, P)
end

add {
    name = "rope llama3 scaling, positions",
    inputs = function()
        return { x = lt.randn(2, 7, 3, 10), pos = lt.tensor({ { 0, 1, 2, 3, 4, 5, 6 }, { 9, 8, 3, 0, 1, 2, 3 } }, "i64") }
    end,
    forward = function(inp)
        local cos, sin = rope_tables(10, 16, { type = "llama3", factor = 8, low_freq_factor = 1,
            high_freq_factor = 4, original_max_position_embeddings = 8 })
        return F.rope(inp.x, cos, sin, inp.pos)
    end,
    backward = function(inp, d)
        local cos, sin = rope_tables(10, 16, { type = "llama3", factor = 8, low_freq_factor = 1,
            high_freq_factor = 4, original_max_position_embeddings = 8 })
        return { x = F.rope_backward(d, cos, sin, inp.pos) }
    end,
    wrt = { "x" },
}

add {
    name = "swiglu",
    inputs = function() return { g = lt.randn(5, 23), u = lt.randn(5, 23) } end,
    forward = function(inp) return F.swiglu(inp.g, inp.u) end,
    backward = function(inp, d)
        local dg, du = F.swiglu_backward(d, inp.g, inp.u)
        return { g = dg, u = du }
    end,
    wrt = { "g", "u" },
}

-- ---- attention ---------------------------------------------------------------------------

local function attention_case(name, B, T, S, H, Hkv, D, causal, cu)
    add {
        name = name,
        inputs = function()
            return { q = lt.randn(B, T, H, D), k = lt.randn(B, S, Hkv, D), v = lt.randn(B, S, Hkv, D) }
        end,
        forward = function(inp)
            local cs = cu and lt.tensor(cu, "i32")
            return (F.attention(inp.q, inp.k, inp.v, { causal = causal, cu_seqlens = cs }))
        end,
        backward = function(inp, d)
            local cs = cu and lt.tensor(cu, "i32")
            local out, lse = F.attention(inp.q, inp.k, inp.v, { causal = causal, cu_seqlens = cs })
            local dq, dk, dv = F.attention_backward(d, inp.q, inp.k, inp.v, out, lse,
                { causal = causal, cu_seqlens = cs })
            return { q = dq, k = dk, v = dv }
        end,
        wrt = { "q", "k", "v" },
    }
end

attention_case("attention causal GQA", 2, 9, 9, 4, 2, 6, true)
attention_case("attention non-causal MHA", 1, 5, 7, 3, 3, 4, false)
attention_case("attention causal, queries are the last T of S", 2, 3, 8, 2, 1, 6, true)
attention_case("attention causal, long rows (two query blocks)", 1, 70, 70, 2, 1, 4, true)
-- rows spanning several key tiles (64 keys per tile in the backward, 256 in the forward)
attention_case("attention causal, T = S = 300 (several key tiles)", 1, 300, 300, 2, 1, 4, true)
attention_case("attention non-causal GQA, T = 150 of S = 280", 1, 150, 280, 4, 2, 4, false)
attention_case("attention packed sequences (cu_seqlens), causal GQA", 2, 9, 9, 4, 2, 6, true,
    { 0, 3, 4, 9, 11, 18 })
attention_case("attention packed sequences, non-causal", 1, 12, 12, 2, 2, 4, false, { 0, 5, 12 })

-- ---- losses ------------------------------------------------------------------------------

local function targets(N, V)
    local t = lt.randint(0, V, { N })
    t[2] = -100
    return t
end

add {
    name = "cross_entropy with ignore_index",
    inputs = function() return { x = lt.randn(6, 11), y = targets(6, 11) } end,
    forward = function(inp) return (F.cross_entropy(inp.x, inp.y)) end,
    backward = function(inp, d)
        local _, lse = F.cross_entropy(inp.x, inp.y)
        return { x = F.cross_entropy_backward(inp.x, inp.y, lse, d:item()) }
    end,
    wrt = { "x" },
}

add {
    name = "linear_cross_entropy (LM head)",
    inputs = function() return { h = lt.randn(7, 5), w = lt.randn(19, 5), y = targets(7, 19) } end,
    forward = function(inp) return (F.linear_cross_entropy(inp.h, inp.w, inp.y)) end,
    backward = function(inp, d)
        local _, lse = F.linear_cross_entropy(inp.h, inp.w, inp.y)
        local dh, dw = F.linear_cross_entropy_backward(inp.h, inp.w, inp.y, lse, d:item())
        return { h = dh, w = dw }
    end,
    wrt = { "h", "w" },
}

add {
    name = "linear_cross_entropy fused, normalizer",
    inputs = function() return { h = lt.randn(7, 5), w = lt.randn(19, 5), y = targets(7, 19) } end,
    forward = function(inp) return (F.linear_cross_entropy(inp.h, inp.w, inp.y, { normalizer = 10 })) end,
    backward = function(inp, d)
        local _, dh, dw = F.linear_cross_entropy_fused(inp.h, inp.w, inp.y, d:item(), { normalizer = 10 })
        return { h = dh, w = dw }
    end,
    wrt = { "h", "w" },
}

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

local function lora_case(name, opts, wdtype)
    add {
        name = name,
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
