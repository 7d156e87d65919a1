--[[
test_nn.lua - the Module contract (ARCHITECTURE.md, contracts 5 and 6) as users meet it:
Linear, Embedding and RMSNorm forward/backward against references computed here in Lua
doubles; parameter gradients accumulate (+=) while activation gradients are overwritten (=);
owned buffers are reused and memory stays flat; parameter names, trainable sets, freezing,
zero_grad, train/eval, state dicts and their errors; Sequential; printing; and the Llama
model: logits vs loss() vs forward_backward(), gradients of the logits path against the
fused path, GQA against the equivalent MHA model, position ids, ignore_index, normalizer.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local nn = lt.nn

lt.manual_seed(21)

-- ---- helpers --------------------------------------------------------------------------------

-- Nested tables of a 2-D tensor (rows) as Lua doubles.
local function rows(t) return t:contiguous():totable() end

-- Memory growth of fn() run `times` times after one warm-up run, with the collector off
-- (so nothing is freed behind the test's back).
local function growth(fn, times)
    fn()
    lt.memory.collect()
    collectgarbage("stop")
    local base = lt.memory.stats("cpu").current
    local ok, err = pcall(function() for _ = 1, times or 3 do fn() end end)
    local grown = lt.memory.stats("cpu").current - base
    collectgarbage("restart")
    if not ok then error(err, 0) end
    return grown
end

local function names_of(records)
    local out = {}
    for i, r in ipairs(records) do out[i] = r.name end
    return out
end

local function sorted_keys(tbl)
    local out = {}
    for k in pairs(tbl) do out[#out + 1] = k end
    table.sort(out)
    return out
end

-- Relative L2 error of a against b.
local function rel_err(a, b)
    local _, rel = T.diff(a, b)
    return rel
end

-- ---- Linear --------------------------------------------------------------------------------

T.test("Linear forward and backward against hand computation", function()
    local N, I, O = 3, 5, 4
    local l = nn.Linear(I, O, { bias = true })
    l.bias:copy_(lt.tensor({ 0.5, -1, 2, 0.25 }))
    local x = lt.randn(N, I)
    local dy = lt.randn(N, O)
    local W, X, DY, b = rows(l.weight), rows(x), rows(dy), l.bias:totable()
    local y = l:forward(x)
    T.eq(y:shape(), { N, O })
    for n = 1, N do for o = 1, O do
        local s = b[o]
        for i = 1, I do s = s + X[n][i] * W[o][i] end
        T.near(y[n][o], s, 1e-5, 1e-6, ("y[%d][%d]"):format(n, o))
    end end
    local dx = l:backward(x, dy)
    T.eq(dx:shape(), { N, I })
    for n = 1, N do for i = 1, I do
        local s = 0
        for o = 1, O do s = s + DY[n][o] * W[o][i] end
        T.near(dx[n][i], s, 1e-5, 1e-6, ("dx[%d][%d]"):format(n, i))
    end end
    local dw, db = l:grad("weight"), l:grad("bias")
    for o = 1, O do
        local sb = 0
        for n = 1, N do sb = sb + DY[n][o] end
        T.near(db[o], sb, 1e-5, 1e-6, "db " .. o)
        for i = 1, I do
            local s = 0
            for n = 1, N do s = s + DY[n][o] * X[n][i] end
            T.near(dw[o][i], s, 1e-5, 1e-6, ("dw[%d][%d]"):format(o, i))
        end
    end
end)

T.test("Linear takes any leading dims", function()
    local l = nn.Linear(4, 3)
    local x = lt.randn(2, 5, 4)
    local y = l:forward(x)
    T.eq(y:shape(), { 2, 5, 3 })
    T.close(y:view(10, 3), lt.ops.matmul(x:view(10, 4), l.weight, { trans_b = true }), 1e-5, 1e-6)
    local dx = l:backward(x, lt.ones(2, 5, 3))
    T.eq(dx:shape(), { 2, 5, 4 })
end)

T.test("module(x) calls forward (Module.__call)", function()
    local l = nn.Linear(4, 3)
    local x = lt.randn(2, 4)
    local y = l:forward(x):clone()
    local ok, r = pcall(function() return l(x) end)
    T.ok(ok, "nn.Linear instance is not callable: " .. tostring(r))
    T.ok(r:equal(y))
    local s = nn.Sequential(l)
    local ok2, r2 = pcall(function() return s(x) end)
    T.ok(ok2 and r2:equal(y), "Sequential instance call: " .. tostring(r2))
end)

T.test("parameter gradients accumulate (+=); activation gradients are overwritten (=)", function()
    local l = nn.Linear(6, 4, { bias = true })
    local x = lt.randn(3, 6)
    local dy1, dy2 = lt.randn(3, 4), lt.randn(3, 4)
    l:forward(x)
    local dx1 = l:backward(x, dy1):clone()
    local w1, b1 = l:grad("weight"):clone(), l:grad("bias"):clone()
    l:forward(x)
    local dxa = l:backward(x, dy1)
    T.close(l:grad("weight"), w1 * 2, 1e-6, 1e-7, "dw after two backwards")
    T.close(l:grad("bias"), b1 * 2, 1e-6, 1e-7, "db after two backwards")
    T.close(dxa, dx1, 1e-6, 1e-7, "dx is written, not accumulated")
    local dxb = l:backward(x, dy2)
    T.close(dxb, lt.ops.matmul(dy2, l.weight), 1e-5, 1e-6, "dx of the latest call only")
    T.ok(dxb:same_storage(dxa), "grad_input is the module's own buffer")
    l:zero_grad()
    T.eq(l:grad("weight"):sum():item(), 0)
    T.eq(l:grad("bias"):sum():item(), 0)
end)

T.test("a frozen bf16 Linear: forward in f32 from bf16 weights, dx only", function()
    local w = lt.randn(3, 4):to("bf16")
    local l = nn.Linear(4, 3, { weight = w, trainable = false })
    T.eq(#l:parameters(), 0)
    T.eq(l:grad("weight"), nil)
    local x = lt.randn(2, 4)
    local y = l:forward(x)
    T.eq(y.dtype, "f32")
    T.close(y, lt.ops.matmul(x, w:float(), { trans_b = true }), 1e-5, 1e-5)
    local dx = l:backward(x, lt.ones(2, 3))
    T.close(dx, lt.ops.matmul(lt.ones(2, 3), w:float()), 1e-5, 1e-5)
end)

-- ---- Embedding -------------------------------------------------------------------------------

T.test("Embedding forward gathers rows; backward scatter-adds (+=) by id", function()
    local e = nn.Embedding(7, 3)
    local ids = lt.tensor({ { 1, 4, 1 }, { 6, 0, 1 } }, "i64")
    local out = e:forward(ids)
    T.eq(out:shape(), { 2, 3, 3 })
    local W = rows(e.weight)
    local idl = ids:totable()
    for b = 1, 2 do for t = 1, 3 do
        T.eq(out[b][t]:totable(), W[idl[b][t] + 1], ("row %d,%d"):format(b, t))
    end end
    local dout = lt.randn(2, 3, 3)
    T.eq(e:backward(ids, dout), nil, "ids have no gradient")
    local D = dout:totable()
    local want = {}
    for v = 1, 7 do want[v] = { 0, 0, 0 } end
    for b = 1, 2 do for t = 1, 3 do
        local v = idl[b][t] + 1
        for c = 1, 3 do want[v][c] = want[v][c] + D[b][t][c] end
    end end
    local g = e:grad("weight")
    for v = 1, 7 do for c = 1, 3 do T.near(g[v][c], want[v][c], 1e-6, 1e-6, ("dW[%d][%d]"):format(v, c)) end end
    e:backward(ids, dout)
    for c = 1, 3 do T.near(g[2][c], 2 * want[2][c], 1e-6, 1e-6, "accumulates") end
    T.ok(e:forward(ids:to("i32")):equal(out), "i32 ids")
    T.raises(function() e:forward(lt.tensor({ 7 }, "i64")) end, "outside the vocabulary")
    T.raises(function() e:forward(lt.tensor({ 1 })) end, "ids must be i32 or i64")
end)

-- ---- RMSNorm ---------------------------------------------------------------------------------

T.test("RMSNorm forward and backward against the formula", function()
    local N, Cd, eps = 4, 6, 1e-5
    local r = nn.RMSNorm(Cd, eps)
    r.weight:copy_(lt.tensor({ 1, 0.5, -2, 1.5, 0.25, 3 }))
    local x = lt.randn(N, Cd)
    local dy = lt.randn(N, Cd)
    local X, DY, w = rows(x), rows(dy), r.weight:totable()
    local y = r:forward(x)
    local dx = r:backward(x, dy)
    local dw_want = {}
    for c = 1, Cd do dw_want[c] = 0 end
    for n = 1, N do
        local ms = 0
        for c = 1, Cd do ms = ms + X[n][c] ^ 2 end
        local rstd = 1 / math.sqrt(ms / Cd + eps)
        local dot = 0
        for c = 1, Cd do dot = dot + w[c] * DY[n][c] * X[n][c] end
        for c = 1, Cd do
            T.near(y[n][c], X[n][c] * rstd * w[c], 1e-5, 1e-6, ("y[%d][%d]"):format(n, c))
            local want = rstd * w[c] * DY[n][c] - rstd ^ 3 / Cd * X[n][c] * dot
            T.near(dx[n][c], want, 1e-4, 1e-5, ("dx[%d][%d]"):format(n, c))
            dw_want[c] = dw_want[c] + DY[n][c] * X[n][c] * rstd
        end
    end
    for c = 1, Cd do T.near(r:grad("weight")[c], dw_want[c], 1e-5, 1e-6, "dw " .. c) end
    T.eq(r:forward(lt.randn(2, 3, Cd)):shape(), { 2, 3, Cd }, "any leading dims")
end)

T.test("RMSNorm with the wrong last dim says so", function()
    local r = nn.RMSNorm(4)
    local err = T.raises(function() r:forward(lt.randn(3, 5)) end, "")
    T.ok(err:find("4", 1, true) and err:find("5", 1, true) and not err:find("3.75", 1, true),
        "the message should compare the last dim 5 with the weight's 4: " .. err)
end)

-- ---- buffers and memory ------------------------------------------------------------------------

T.test("outputs and gradients live in reused buffers", function()
    local l = nn.Linear(8, 4)
    local x = lt.randn(3, 8)
    local y1 = l:forward(x)
    local y2 = l:forward(lt.randn(3, 8))
    T.ok(y1:same_storage(y2), "two forwards of the same shape share the output buffer")
    local r = nn.RMSNorm(8)
    T.ok(r:forward(x):same_storage(r:forward(x)))
    T.ok(r:backward(x, x):same_storage(r:backward(x, x)))
    local small = l:forward(lt.randn(2, 8))
    T.eq(small:shape(), { 2, 4 })
    T.ok(small:same_storage(y1), "a smaller shape reuses the buffer")
end)

T.test("memory is flat over repeated forward/backward of one shape (no bias)", function()
    local x, dy = lt.randn(3, 8), lt.randn(3, 4)
    local l = nn.Linear(8, 4)
    T.eq(growth(function() l:forward(x); l:backward(x, dy) end), 0, "Linear")
    local r = nn.RMSNorm(8)
    T.eq(growth(function() r:forward(x); r:backward(x, x) end), 0, "RMSNorm")
    local e = nn.Embedding(10, 8)
    local ids, de = lt.randint(0, 10, { 2, 3 }), lt.randn(2, 3, 8)
    T.eq(growth(function() e:forward(ids); e:backward(ids, de) end), 0, "Embedding")
    local s = nn.Sequential(nn.Linear(8, 6), nn.RMSNorm(6), nn.Linear(6, 4))
    T.eq(growth(function() s:forward(x); s:backward(x, dy) end), 0, "Sequential")
end)

T.test("memory is flat over repeated forward/backward of a Linear with bias", function()
    local x, dy = lt.randn(3, 8), lt.randn(3, 4)
    local l = nn.Linear(8, 4, { bias = true })
    T.eq(growth(function() l:forward(x); l:backward(x, dy) end, 4), 0, "Linear with bias")
end)

T.test("a larger shape grows the buffers once", function()
    local l = nn.Linear(8, 4)
    local small, big = lt.randn(2, 8), lt.randn(16, 8)
    local dys, dyb = lt.randn(2, 4), lt.randn(16, 4)
    l:forward(small)
    l:backward(small, dys)
    lt.memory.collect()
    collectgarbage("stop")
    local m0 = lt.memory.stats().current
    l:forward(big)
    l:backward(big, dyb)
    local m1 = lt.memory.stats().current
    for _ = 1, 3 do
        l:forward(big)
        l:backward(big, dyb)
        l:forward(small)
        l:backward(small, dys)
    end
    local m2 = lt.memory.stats().current
    collectgarbage("restart")
    -- output (16, 4) and grad_input (16, 8) replace (2, 4) and (2, 8)
    T.eq(m1 - m0, (16 * 4 + 16 * 8 - 2 * 4 - 2 * 8) * 4, "the grown buffers")
    T.eq(m2, m1, "no growth afterwards, shrinking keeps the storage")
end)

-- ---- parameters, names, freezing ---------------------------------------------------------------

local CFG = { vocab_size = 48, hidden_size = 16, intermediate_size = 24, num_hidden_layers = 2,
    num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 16,
    tie_word_embeddings = true }

local function copy_cfg(over)
    local c = {}
    for k, v in pairs(CFG) do c[k] = v end
    for k, v in pairs(over or {}) do c[k] = v end
    return c
end

local LAYER_NAMES = { "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    "input_layernorm.weight", "post_attention_layernorm.weight" }

local function hf_names(layers, with_head)
    local out = { "model.embed_tokens.weight" }
    for l = 0, layers - 1 do
        for _, n in ipairs(LAYER_NAMES) do out[#out + 1] = ("model.layers.%d.%s"):format(l, n) end
    end
    out[#out + 1] = "model.norm.weight"
    if with_head then out[#out + 1] = "lm_head.weight" end
    return out
end

T.test("Llama parameter names are Hugging Face's; tied lm_head is left out", function()
    local m = lt.llama.new(CFG)
    T.eq(names_of(m:named_parameters()), hf_names(2, false), "named_parameters (tied)")
    local want = hf_names(2, false)
    table.sort(want)
    T.eq(sorted_keys(m:state_dict()), want, "state_dict (tied)")
    T.ok(m.lm_head.weight == m.model.embed_tokens.weight, "the head shares the embedding")
    T.eq(#m:parameters(), #hf_names(2, false), "the tied weight is one trainable parameter")
    local sd = m:state_dict()
    T.eq(sd["model.layers.1.self_attn.k_proj.weight"]:shape(), { 8, 16 }, "k_proj (Hkv * D, C)")
    T.eq(sd["model.layers.0.mlp.down_proj.weight"]:shape(), { 16, 24 })
    T.eq(sd["model.embed_tokens.weight"]:shape(), { 48, 16 })
    local u = lt.llama.new(copy_cfg({ tie_word_embeddings = false }))
    T.eq(names_of(u:named_parameters()), hf_names(2, true), "named_parameters (untied)")
    T.ok(u:state_dict()["lm_head.weight"] ~= nil, "untied lm_head.weight in state_dict")
    T.eq(u:state_dict()["lm_head.weight"]:shape(), { 48, 16 })
    T.eq(u:num_parameters(), m:num_parameters() + 48 * 16)
end)

T.test("parameters() returns only trainable parameters", function()
    local s = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2, { trainable = false }), nn.RMSNorm(2))
    T.eq(names_of(s:named_parameters()), { "0.weight", "1.weight", "2.weight" })
    T.eq(names_of(s:parameters()), { "0.weight", "2.weight" })
    for _, r in ipairs(s:parameters()) do
        T.ok(r.grad ~= nil and r.param ~= nil, r.name)
        T.eq(r.grad:shape(), r.param:shape(), r.name)
    end
    T.eq(s:num_parameters(true), 12 + 2)
    T.eq(s:num_parameters(), 12 + 6 + 2)
end)

T.test("requires_grad(false) frees gradients; parameters() then excludes them", function()
    local s = nn.Sequential(nn.Linear(16, 8), nn.RMSNorm(8))
    lt.memory.collect()
    collectgarbage("stop")
    local before = lt.memory.stats().current
    s:requires_grad(false)
    local freed = before - lt.memory.stats().current
    collectgarbage("restart")
    T.eq(freed, (16 * 8 + 8) * 4, "gradient bytes released")
    T.eq(#s:parameters(), 0)
    T.eq(#s:named_parameters(), 2, "the parameters themselves stay")
    local x = lt.randn(2, 16)
    s:forward(x)
    T.eq(s:backward(x, lt.ones(2, 8)):shape(), { 2, 16 }, "backward still gives grad_input")
    s:requires_grad(true)
    T.eq(#s:parameters(), 2)
    T.eq(s:parameters()[1].grad:sum():item(), 0, "unfrozen gradients start at zero")
    -- freezing part of a model
    s._children["0"]:requires_grad(false)
    T.eq(names_of(s:parameters()), { "1.weight" })
end)

T.test("freezing and unfreezing a tied Llama keeps the tie", function()
    local m = lt.llama.new(CFG)
    local ids = lt.randint(0, 48, { 1, 6 })
    m:requires_grad(false)
    T.eq(#m:parameters(), 0)
    -- a frozen base is how LoRA training starts (and Llama 3.2 1B/3B tie their embeddings):
    T.eq(m.lm_head:grad("weight"), nil, "the frozen head has no gradient")
    local okf, errf = pcall(function() return m:forward_backward(ids, ids) end)
    T.ok(okf, "forward_backward of a frozen tied model: " .. tostring(errf))
    m:requires_grad(true)
    -- the head's gradient must still be the embedding's
    T.ok(m.lm_head:grad("weight") == m.model.embed_tokens:grad("weight"), "lm_head and embed_tokens share one gradient")
    local ok, err = pcall(function() return m:forward_backward(ids, ids) end)
    T.ok(ok, "forward_backward after unfreezing: " .. tostring(err))
end)

T.test("zero_grad, train() and eval() reach every submodule", function()
    local m = lt.llama.new(CFG)
    local ids = lt.randint(0, 48, { 2, 5 })
    m:forward_backward(ids, ids)
    T.ok(lt.optim.grad_norm(m:parameters()) > 0)
    m:zero_grad()
    T.eq(lt.optim.grad_norm(m:parameters()), 0)
    local function all(mod, flag, path)
        T.eq(mod.training, flag, path)
        for _, n in ipairs(mod._child_names) do all(mod._children[n], flag, path .. "." .. n) end
    end
    T.ok(m:eval() == m, "eval returns the module")
    all(m, false, "model")
    m:train()
    all(m, true, "model")
    m:train(false)
    all(m, false, "model")
end)

-- ---- state dicts ---------------------------------------------------------------------------------

T.test("state_dict / load_state_dict round trip", function()
    lt.manual_seed(1)
    local a = lt.llama.new(CFG)
    lt.manual_seed(2)
    local b = lt.llama.new(CFG)
    local ids = lt.randint(0, 48, { 2, 6 })
    local la = a:forward(ids):clone()
    T.ok(not b:forward(ids):equal(la), "different seeds, different models")
    local missing, unexpected = b:load_state_dict(a:state_dict())
    T.eq(missing, {})
    T.eq(unexpected, {})
    T.ok(b:forward(ids):equal(la), "same logits after loading")
    local sd = a:state_dict()
    T.ok(sd["model.norm.weight"] == a.model.norm.weight, "state_dict holds the parameters themselves")
    T.ok(not b.model.norm.weight:same_storage(a.model.norm.weight), "loading copies values")
    -- converting dtypes on the way in
    local bf = {}
    for k, v in pairs(sd) do bf[k] = v:to("bf16") end
    b:load_state_dict(bf)
    T.eq(b.model.norm.weight.dtype, "f32")
    T.ok(b.model.embed_tokens.weight:equal(a.model.embed_tokens.weight:to("bf16")), "bf16 values land in f32")
end)

T.test("load_state_dict strict errors name what is wrong", function()
    local l = nn.Linear(4, 2, { bias = true })
    T.raises(function() l:load_state_dict({ weight = lt.zeros(2, 4) }) end, "load_state_dict: missing: bias", true)
    T.raises(function() l:load_state_dict({ weight = lt.zeros(2, 4), bias = lt.zeros(2), extra = lt.zeros(1) }) end,
        "load_state_dict: unexpected: extra", true)
    T.raises(function() l:load_state_dict({ weight = lt.zeros(2, 4), extra = lt.zeros(1) }) end,
        "load_state_dict: missing: bias; unexpected: extra", true)
    T.raises(function() l:load_state_dict({ weight = lt.zeros(2, 3), bias = lt.zeros(2) }) end,
        "load_state_dict: weight has shape (2, 3) but the model expects (2, 4)", true)
    local m, u = l:load_state_dict({ weight = lt.ones(2, 4), extra = lt.zeros(1) }, false)
    T.eq(m, { "bias" })
    T.eq(u, { "extra" })
    T.eq(l.weight:sum():item(), 8, "non-strict loading copies what matches")
    local t = lt.llama.new(CFG)
    local sd = t:state_dict()
    sd["lm_head.weight"] = lt.zeros(48, 16)
    T.raises(function() t:load_state_dict(sd) end, "unexpected: lm_head.weight", true)
end)

T.test("load_state_dict with a non-tensor value is a clear error", function()
    local l = nn.Linear(4, 2)
    local err = T.raises(function() l:load_state_dict({ weight = { 1, 2 } }) end, "")
    T.ok(err:find("weight", 1, true) and not err:find("attempt to", 1, true),
        "the message should name the entry and say it is not a tensor: " .. err)
end)

-- ---- Sequential and printing ------------------------------------------------------------------------

T.test("Sequential forward/backward equals manual chaining", function()
    lt.manual_seed(3)
    local l1, n1, l2 = nn.Linear(8, 6, { bias = true }), nn.RMSNorm(6), nn.Linear(6, 3)
    l1.bias:copy_(lt.randn(6))
    n1.weight:copy_(lt.rand(6, { low = 0.5, high = 1.5 }))
    local s = nn.Sequential(nn.Linear(8, 6, { bias = true }), nn.RMSNorm(6), nn.Linear(6, 3))
    T.eq(#s:children(), 3)
    s:load_state_dict({ ["0.weight"] = l1.weight, ["0.bias"] = l1.bias, ["1.weight"] = n1.weight,
        ["2.weight"] = l2.weight })
    local x, dy = lt.randn(5, 8), lt.randn(5, 3)
    local h1 = l1:forward(x)
    local h2 = n1:forward(h1)
    local y = l2:forward(h2)
    local g2 = l2:backward(h2, dy)
    local g1 = n1:backward(h1, g2)
    local dx = l1:backward(x, g1)
    local ys = s:forward(x)
    T.ok(ys:equal(y), "forward")
    T.ok(s:backward(x, dy):equal(dx), "grad_input")
    local grads = { l1:grad("weight"), l1:grad("bias"), n1:grad("weight"), l2:grad("weight") }
    for i, r in ipairs(s:parameters()) do T.ok(r.grad:equal(grads[i]), "gradient of " .. r.name) end
    local s2 = nn.Sequential({ nn.Linear(2, 2), nn.Linear(2, 2) })
    T.eq(names_of(s2:named_parameters()), { "0.weight", "1.weight" }, "a list of modules")
    s2:add(nn.RMSNorm(2))
    T.eq(#s2:children(), 3)
end)

T.test("tostring of modules", function()
    T.eq(tostring(nn.Linear(4, 3)), "Linear(4 -> 3, f32)")
    T.eq(tostring(nn.Linear(4, 3, { bias = true })), "Linear(4 -> 3, bias, f32)")
    T.eq(tostring(nn.Embedding(10, 4)), "Embedding(10 x 4, f32)")
    T.eq(tostring(nn.RMSNorm(4, 1e-5)), "RMSNorm(4, eps=1e-05)")
    T.eq(tostring(nn.Sequential(nn.Linear(4, 3), nn.RMSNorm(3))),
        "Sequential\n  0: Linear(4 -> 3, f32)\n  1: RMSNorm(3, eps=1e-06)")
    local s = tostring(lt.llama.new(CFG))
    T.ok(s:find("^LlamaForCausalLM%(layers 2, hidden 16, heads 4/2, vocab 48%)"), s)
    T.ok(s:find("\n      0: LlamaDecoderLayer\n        self_attn: LlamaAttention(heads 4, kv heads 2, head dim 4)\n" ..
        "          q_proj: Linear(16 -> 16, f32)\n          k_proj: Linear(16 -> 8, f32)", 1, true), s)
    T.ok(s:find("\n  lm_head: Linear(16 -> 48, f32)", 1, true), s)
end)

-- ---- the Llama model --------------------------------------------------------------------------------

-- Cross-entropy in Lua doubles from logits (B, T, V): the mean (or sum / normalizer) over
-- targets that are not ignore (-100), and dloss/dlogits for it.
local function ce_reference(logits, targets, normalizer)
    local L = logits:totable()
    local tg = targets:totable()
    local B, Tn, V = #L, #L[1], #L[1][1]
    local total, count = 0, 0
    local dl = {}
    local probs = {}
    for b = 1, B do
        dl[b], probs[b] = {}, {}
        for t = 1, Tn do
            local row = L[b][t]
            local mx = -math.huge
            for v = 1, V do if row[v] > mx then mx = row[v] end end
            local s = 0
            for v = 1, V do s = s + math.exp(row[v] - mx) end
            local lse = mx + math.log(s)
            local p = {}
            for v = 1, V do p[v] = math.exp(row[v] - lse) end
            probs[b][t] = p
            local y = tg[b][t]
            if y ~= -100 then
                total = total + lse - row[y + 1]
                count = count + 1
            end
        end
    end
    local denom = normalizer or count
    for b = 1, B do
        for t = 1, Tn do
            local y = tg[b][t]
            local d = {}
            for v = 1, V do
                if y == -100 then d[v] = 0 else d[v] = (probs[b][t][v] - (v == y + 1 and 1 or 0)) / denom end
            end
            dl[b][t] = d
        end
    end
    return total / denom, lt.tensor(dl)
end

local function grads_of(m)
    local out = {}
    for _, r in ipairs(m:parameters()) do out[r.name] = r.grad:clone() end
    return out
end

T.test("Llama: logits, loss() and forward_backward() agree; gradients of both paths match", function()
    lt.manual_seed(4)
    local m = lt.llama.new(CFG)
    local ids = lt.randint(0, 48, { 2, 6 })
    local targets = lt.randint(0, 48, { 2, 6 })
    local logits = m:forward(ids)
    T.eq(logits:shape(), { 2, 6, 48 })
    T.eq(logits.dtype, "f32")
    local ref_loss, dlogits = ce_reference(logits, targets)
    T.near(m:loss(ids, targets), ref_loss, 1e-5, 0, "loss() vs CE of the logits")
    m:zero_grad()
    local fb = m:forward_backward(ids, targets)
    T.near(fb, ref_loss, 1e-5, 0, "forward_backward() loss")
    local fused = grads_of(m)
    m:zero_grad()
    m:forward(ids)
    m:backward(ids, dlogits)
    local via_logits = grads_of(m)
    for name, g in pairs(fused) do
        T.ok(rel_err(via_logits[name], g) < 1e-5, ("%s: relative error %.3g"):format(name, rel_err(via_logits[name], g)))
    end
    -- parameter gradients accumulate over two forward_backward calls
    m:zero_grad()
    m:forward_backward(ids, targets)
    m:forward_backward(ids, targets)
    for _, r in ipairs(m:parameters()) do
        T.ok(rel_err(r.grad, fused[r.name] * 2) < 1e-6, "accumulated gradient of " .. r.name)
    end
    -- opts.scale multiplies the gradients, not the reported loss
    m:zero_grad()
    local ls = m:forward_backward(ids, targets, { scale = 0.25 })
    T.near(ls, ref_loss, 1e-5, 0)
    for _, r in ipairs(m:parameters()) do
        T.ok(rel_err(r.grad, fused[r.name] * 0.25) < 1e-6, "scaled gradient of " .. r.name)
    end
end)

T.test("Llama: ignore_index -100 and the normalizer option", function()
    lt.manual_seed(5)
    local m = lt.llama.new(copy_cfg({ tie_word_embeddings = false }))
    local ids = lt.randint(0, 48, { 2, 6 })
    local targets = lt.randint(0, 48, { 2, 6 })
    targets[1][1] = -100
    targets[2][4] = -100
    targets[2][6] = -100
    local logits = m:forward(ids)
    local ref, dlogits = ce_reference(logits, targets)
    T.near(m:loss(ids, targets), ref, 1e-5, 0, "mean over the 9 counted targets")
    local ref_n = ce_reference(logits, targets, 4)
    T.near(m:loss(ids, targets, { normalizer = 4 }), ref_n, 1e-5, 0, "sum / normalizer")
    T.near(ref_n, ref * 9 / 4, 1e-12, 0)
    m:zero_grad()
    T.near(m:forward_backward(ids, targets), ref, 1e-5, 0)
    local g = grads_of(m)
    m:zero_grad()
    m:forward(ids)
    m:backward(ids, dlogits)
    for _, r in ipairs(m:parameters()) do
        T.ok(rel_err(r.grad, g[r.name]) < 1e-5, "ignore_index gradient of " .. r.name)
    end
    m:zero_grad()
    T.near(m:forward_backward(ids, targets, { normalizer = 4 }), ref_n, 1e-5, 0)
    for _, r in ipairs(m:parameters()) do
        T.ok(rel_err(r.grad, g[r.name] * (9 / 4)) < 1e-5, "normalizer gradient of " .. r.name)
    end
    T.ok(m:loss(ids, targets:to("i32")) == m:loss(ids, targets), "i32 targets")
    T.raises(function() m:loss(ids, lt.randint(0, 48, { 2, 5 })) end, "targets")
    T.raises(function() m:loss(ids, lt.full({ 2, 6 }, 48, { dtype = "i64" })) end, "outside the vocabulary")
end)

T.test("Llama: GQA equals the MHA model with repeated key/value heads", function()
    lt.manual_seed(6)
    local g = lt.llama.new(copy_cfg({ num_key_value_heads = 1, num_hidden_layers = 1 }))
    local m = lt.llama.new(copy_cfg({ num_key_value_heads = 4, num_hidden_layers = 1 }))
    local H, Hkv, D, Cd = 4, 1, 4, 16
    local sd = {}
    for name, t in pairs(g:state_dict()) do
        if name:find("k_proj") or name:find("v_proj") then
            -- (Hkv * D, C) -> (H * D, C): query head h uses kv head floor(h / (H / Hkv)) (HF's repeat_kv)
            sd[name] = t:view(Hkv, 1, D, Cd):expand(Hkv, H / Hkv, D, Cd):contiguous():view(H * D, Cd)
        else
            sd[name] = t
        end
    end
    m:load_state_dict(sd)
    local ids = lt.randint(0, 48, { 2, 7 })
    local lg = g:forward(ids)
    local lm = m:forward(ids)
    local maxabs = T.diff(lg, lm)
    T.ok(maxabs < 1e-5, ("GQA vs MHA logits differ by %.3g"):format(maxabs))
    local targets = lt.randint(0, 48, { 2, 7 })
    T.near(g:forward_backward(ids, targets), m:forward_backward(ids, targets), 1e-5, 0, "loss")
    -- the GQA k_proj gradient is the sum over the query heads sharing it
    local gk = g.model.layers:get(1).self_attn.k_proj:grad("weight")
    local mk = m.model.layers:get(1).self_attn.k_proj:grad("weight")
    local summed = mk:view(Hkv, H / Hkv, D, Cd):sum(2):view(Hkv * D, Cd)
    T.ok(rel_err(gk, summed) < 1e-4, ("k_proj gradient: relative error %.3g"):format(rel_err(gk, summed)))
end)

T.test("Llama: position ids", function()
    lt.manual_seed(7)
    local m = lt.llama.new(CFG)
    local ids = lt.randint(0, 48, { 2, 6 })
    local base = m:forward(ids):clone()
    T.ok(m:forward(ids, { positions = lt.arange(6) }):equal(base), "(T) i64 0..T-1 equals the default")
    T.ok(m:forward(ids, { positions = lt.arange(6, { dtype = "i32" }) }):equal(base), "(T) i32")
    local bt = lt.arange(6):view(1, 6):expand(2, 6):contiguous()
    T.ok(m:forward(ids, { positions = bt }):equal(base), "(B, T)")
    T.ok(m:forward(ids):equal(base), "positions do not stick to later calls")
    -- RoPE is relative: shifting every position by the same amount keeps the logits
    local shifted = m:forward(ids, { positions = lt.arange(3, 9) })
    local d = T.diff(shifted, base)
    T.ok(d < 1e-6, ("shifted positions change logits by %.3g"):format(d))
    -- (with the 0.02-std initialisation attention is nearly uniform, so effects are small)
    local rev = m:forward(ids, { positions = lt.arange(5, -1, -1) })
    T.ok(T.diff(rev, base) > 1e-4, "other positions give other logits")
    T.near(m:loss(ids, ids, { positions = lt.arange(6) }), m:loss(ids, ids), 0, 0, "loss with positions")
    -- past max_position_embeddings the rotary table grows, as Hugging Face's does
    T.eq(m.model.rope.rows, CFG.max_position_embeddings)
    local long = m:forward(lt.zeros(1, 17, { dtype = "i64" }))
    T.eq(long:size(2), 17)
    T.ok(m.model.rope.rows >= 17)
end)

T.test("Llama: the rotary table covers the positions used, not max_position_embeddings", function()
    lt.manual_seed(7)
    -- a config promising 2^30 positions must not build a 2^30-row table (D8)
    local m = lt.llama.new(copy_cfg({ max_position_embeddings = 2 ^ 30 }))
    T.eq(m.model.rope.rows, 256)
    local layer_cos = m.model.layers:get(1).self_attn.ctx.cos
    local ids = lt.randint(0, 48, { 1, 4 })
    local near = m:forward(ids, { positions = lt.arange(4) }):clone()
    local far = m:forward(ids, { positions = lt.arange(1000, 1004) })
    T.ok(m.model.rope.rows >= 1004, "grown to the positions used")
    T.ok(m.model.layers:get(1).self_attn.ctx.cos == layer_cos and layer_cos:size(1) == m.model.rope.rows,
        "every layer sees the grown table")
    -- RoPE is relative: the shifted window gives the same logits (to rounding)
    T.ok(T.diff(far, near) < 1e-5)
    -- the rows made later equal rows made at once
    local big = lt.llama.new(copy_cfg({ max_position_embeddings = 2048 }))
    big.model:rope_reserve(1004)
    local n = 1004
    T.ok(m.model.rope.cos:narrow(1, 1, n):equal(big.model.rope.cos:narrow(1, 1, n)))
end)

T.test("Llama: a sliding_window is refused only where it would change the result", function()
    local dir = os.tmpname()
    os.remove(dir)
    lt.fs.make_dirs(dir)
    local f = assert(io.open(dir .. "/config.json", "wb"))
    f:write('{"model_type": "mistral", "vocab_size": 48, "hidden_size": 16, "intermediate_size": 24, ' ..
        '"num_hidden_layers": 1, "num_attention_heads": 2, "sliding_window": 8}')
    f:close()
    local cfg = lt.llama.read_config(dir .. "/config.json")
    T.eq(cfg.sliding_window, 8)
    local m = lt.llama.new(cfg)
    m:forward(lt.zeros(1, 8, { dtype = "i64" }))
    T.raises(function() m:forward(lt.zeros(1, 9, { dtype = "i64" })) end,
        "positions up to 8 exceed config.json's sliding_window (8)", true)
    f = assert(io.open(dir .. "/config.json", "wb"))
    f:write('{"vocab_size": 48, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1, ' ..
        '"num_attention_heads": 2, "sliding_window": "big"}')
    f:close()
    T.raises(function() lt.llama.read_config(dir .. "/config.json") end, "sliding_window must be a positive integer or null", true)
    os.execute("rm -rf " .. dir)
end)

T.test("Llama: memory is flat over repeated training steps after the first", function()
    lt.manual_seed(8)
    local m = lt.llama.new(CFG)
    local ids = lt.randint(0, 48, { 2, 6 })
    local tg = lt.randint(0, 48, { 2, 6 })
    local step = function()
        m:forward_backward(ids, tg)
        m:loss(ids, tg)
        m:forward(ids)
    end
    T.eq(growth(step, 3), 0, "bytes grown")
end)

T.test("Llama config errors are clear", function()
    T.raises(function() lt.llama.new(copy_cfg({ num_key_value_heads = 3 })) end,
        "num_attention_heads (4) must be a multiple of num_key_value_heads (3)", true)
    T.raises(function() lt.llama.new(copy_cfg({ intermediate_size = false })) end,
        "intermediate_size must be a positive integer", true)
    T.raises(function() lt.llama.new(copy_cfg({ hidden_size = 18 })) end, "not a multiple of num_attention_heads")
end)

T.test("module tree: named_modules, modules, named_children, get_submodule", function()
    local m = lt.llama.new(CFG)
    local rs = m:named_modules()
    T.eq(rs[1].name, "")
    T.ok(rs[1].module == m and rs[1].parent == nil)
    local by = {}
    for _, r in ipairs(rs) do by[r.name] = r end
    local q = by["model.layers.1.self_attn.q_proj"]
    T.ok(q ~= nil, "q_proj of layer 1 is named")
    T.eq(q.key, "q_proj")
    T.ok(q.parent == m.model.layers:get(2).self_attn, "the parent is the module holding it")
    T.ok(m:get_submodule("model.layers.1.self_attn.q_proj") == q.module)
    T.ok(m:get_submodule("") == m)
    T.raises(function() m:get_submodule("model.layers.7.mlp") end, 'no module "model.layers.7"', true)
    -- depth first, registration order: every name after its parent's
    local pos = {}
    for i, r in ipairs(rs) do pos[r.name] = pos[r.name] or i end
    for _, r in ipairs(rs) do
        local parent = r.name:match("^(.*)%.[^%.]+$") or (r.name ~= "" and "" or nil)
        if parent then T.ok(pos[parent] < pos[r.name], r.name .. " comes after " .. parent) end
    end
    T.eq(#m:modules(), #rs)
    local kids = m.model:named_children()
    T.eq(kids[1].name, "embed_tokens")
    T.ok(kids[1].module == m.model.embed_tokens)
end)

T.test("apply visits children before parents; replace swaps modules in place", function()
    local m = lt.llama.new(CFG)
    local order = {}
    m:apply(function(x) order[#order + 1] = x end)
    T.ok(order[#order] == m, "the root comes last")
    local seen = {}
    for i, x in ipairs(order) do seen[x] = i end
    T.ok(seen[m.model.layers] < seen[m.model], "a child before its parent")
    -- replace every v_proj with a fresh Linear of zeros: v = 0 makes attention output 0
    local replaced = m:replace(function(x, name)
        if name:match("v_proj$") then
            return nn.Linear(x.in_features, x.out_features, { bias = false }):requires_grad(false)
        end
    end)
    T.eq(#replaced, CFG.num_hidden_layers)
    for _, name in ipairs(replaced) do
        local v = m:get_submodule(name)
        v.weight:zero_()
        T.ok(m.model.layers:get(1).self_attn.v_proj == m:get_submodule("model.layers.0.self_attn.v_proj"),
            "the field and the children table agree")
    end
end)

T.test("replace and named_modules see through gradient checkpointing", function()
    lt.manual_seed(3)
    local m = lt.llama.new(CFG)
    local ids = lt.randint(0, CFG.vocab_size, 1, 6)
    m:gradient_checkpointing(true)
    local names = {}
    for _, r in ipairs(m:named_modules()) do names[#names + 1] = r.name end
    local plain = {}
    for _, r in ipairs(lt.llama.new(CFG):named_modules()) do plain[r.name] = true end
    for _, n in ipairs(names) do T.ok(plain[n], n .. " is a name of the plain model") end
    -- a module replaced inside a checkpointed layer is the one its layer runs
    local before = m:forward(ids):clone()
    m:replace(function(x, name)
        if name == "model.layers.0.mlp.down_proj" then
            local z = nn.Linear(x.in_features, x.out_features, { bias = false })
            z.weight:copy_(x.weight):mul_(2)
            return z
        end
    end)
    T.ok(m.model.layers:get(1).inner.mlp.down_proj.weight:equal(m:get_submodule("model.layers.0.mlp.down_proj").weight))
    local after = m:forward(ids)
    T.ok(not after:equal(before), "the replacement took part in the forward")
end)

T.test("flatten_parameters: one buffer per (dtype, device, trainable) group, parameters are views", function()
    lt.manual_seed(5)
    local m = lt.llama.new(copy_cfg({ tie_word_embeddings = true }))
    m.model.layers:get(1):requires_grad(false) -- a frozen group beside the trainable one
    local before, holders = {}, {}
    for _, r in ipairs(m:named_parameters()) do
        before[r.name] = r.param:clone()
        holders[r.name] = r.param
    end
    local groups = m:flatten_parameters()
    T.eq(#groups, 2)
    local total = 0
    for _, g in ipairs(groups) do
        T.eq(g.params:numel(), g.numel)
        T.eq(g.grads ~= nil, g.trainable)
        for _, e in ipairs(g.entries) do
            local r = e.record
            T.ok(r.param.storage == g.params.storage, e.name .. " views the group's buffer")
            T.eq(tonumber(r.param.offset), e.offset)
            T.eq(e.offset % 64, 0)
            T.ok(r.param:equal(before[e.name]), e.name .. " kept its values")
            T.ok(holders[e.name] == r.param, e.name .. " is the same tensor object")
            if g.grads then T.ok(r.grad.storage == g.grads.storage and tonumber(r.grad.offset) == e.offset) end
            total = total + 1
        end
    end
    T.eq(total, #m:named_parameters())
    T.ok(m:flatten_parameters() == groups, "nothing changed: the same groups")
    T.ok(m:flat_parameters() == groups)
end)

T.test("a flattened model trains bit for bit like the unflattened one", function()
    local function run(flat)
        lt.manual_seed(11)
        local m = lt.llama.new(CFG)
        local ids = lt.randint(0, CFG.vocab_size, 2, 7)
        local targets = lt.randint(0, CFG.vocab_size, 2, 7)
        if flat then m:flatten_parameters() end
        local opt = lt.optim.AdamW(m:parameters(), { lr = 1e-2, weight_decay = 0.1 })
        for _ = 1, 3 do
            m:zero_grad()
            m:forward_backward(ids, targets)
            local _, coef = lt.optim.grad_norm_clip_coef(m:parameters(), 0.5)
            opt:step({ grad_scale = coef })
        end
        return m
    end
    local a, b = run(false), run(true)
    local sb = b:state_dict()
    for name, t in pairs(a:state_dict()) do T.ok(t:equal(sb[name]), name .. " differs") end
    -- zero_grad on the flat model is one fill of the gradient buffer
    for _, g in ipairs(b:flat_parameters()) do
        if g.grads then T.ok(g.grads:abs():sum():item() > 0) end
    end
    b:zero_grad()
    for _, g in ipairs(b:flat_parameters()) do
        if g.grads then T.eq(g.grads:abs():sum():item(), 0) end
    end
end)

T.test("flat parameters stay flat across to() and are redone after adapters are added", function()
    lt.manual_seed(2)
    local m = lt.llama.new(CFG)
    local groups = m:flatten_parameters()
    local p1 = m.model.norm.weight
    m:to("cpu")
    T.ok(m.model.norm.weight == p1 and p1.storage == groups[1].params.storage, "to() keeps the views")
    lt.lora.apply(m, { r = 2, target = { "q_proj" } })
    local g2 = m:flatten_parameters({ trainable_only = true })
    T.ok(g2 ~= groups, "new parameters: flattened afresh")
    T.eq(#g2, 1)
    local n = 0
    for _, r in ipairs(m:parameters()) do
        T.ok(r.param.storage == g2[1].params.storage, r.name)
        n = n + 1
    end
    T.eq(#g2[1].entries, n)
    T.eq(n, 2 * CFG.num_hidden_layers)
end)

T.test("the embedding's gradient of two calls is the sum of each call's, bit for bit", function()
    -- what makes one process accumulating micro-batches agree with ranks that sum theirs
    lt.manual_seed(12)
    local V, C = 7, 33
    local ids1 = lt.tensor({ { 1, 3, 3, 5, 3, 0 } }, { dtype = "i64" })
    local ids2 = lt.tensor({ { 3, 5, 5, 6, 1, 3 } }, { dtype = "i64" })
    local d1, d2 = lt.randn(1, 6, C), lt.randn(1, 6, C)
    local acc = lt.zeros(V, C)
    lt.ops.embedding_backward(d1, ids1, acc)
    lt.ops.embedding_backward(d2, ids2, acc)
    local a, b = lt.zeros(V, C), lt.zeros(V, C)
    lt.ops.embedding_backward(d1, ids1, a)
    lt.ops.embedding_backward(d2, ids2, b)
    T.ok(acc:equal(a:add_(b)), "accumulated == added")
end)

T.done()
