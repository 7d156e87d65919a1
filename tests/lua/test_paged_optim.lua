--[[
test_paged_optim.lua - AdamW with paged state (lt.optim.AdamW{paged = true}): the moments
live in the paged pool, outside the device's budget, and visit the device in pages during
the update. The same arithmetic as resident moments, bit for bit, however small the pages;
the pool's bytes in lt.memory; and a run that stops with "out of memory" under a budget
with resident moments completes under the same budget with paged ones, with the same
losses as an unconstrained run.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

local CFG = { vocab_size = 512, hidden_size = 128, intermediate_size = 256, num_hidden_layers = 2,
    num_attention_heads = 4, num_key_value_heads = 4, max_position_embeddings = 32 }

local function dataset()
    local samples = {}
    for i = 1, 12 do
        local ids = {}
        for j = 1, 20 do ids[j] = (i * 37 + j * 11) % 511 + 1 end
        samples[i] = { ids = ids }
    end
    return lt.data.tokens.from_samples(samples)
end

-- Trains 4 steps; optim_opts go to AdamW; limit: a budget for the bytes this run adds to
-- what is in use when it starts. Returns the result (or nil, the error), the model, and the
-- peak of the bytes the run added (model, optimizer, training).
local function train(optim_opts, limit)
    lt.memory.collect()
    lt.memory.reset_peak("cpu")
    local base = lt.memory.stats("cpu").current
    lt.manual_seed(9)
    local model = lt.llama.new(CFG)
    local o = { lr = 1e-2, weight_decay = 0.1 }
    for k, v in pairs(optim_opts or {}) do o[k] = v end
    local ok, res = pcall(function()
        if limit then lt.memory.set_limit("cpu", base + limit) end
        local opt = lt.optim.AdamW(model:parameters(), o)
        return lt.trainer.finetune{ model = model, train = dataset(), batch_size = 2, seq_len = 16, steps = 4,
            optimizer = opt, flatten = false, schedule = "constant" }
    end)
    lt.memory.set_limit("cpu", 0)
    local peak = lt.memory.stats("cpu").peak - base
    if not ok then return nil, res end
    return res, model, peak
end

T.test("paged moments: the same update bit for bit, in pages of any size", function()
    local plain, m1 = train()
    for _, page_mb in ipairs({ 8, 0.01, 1 / 2 ^ 20 * 4 * 777 }) do
        local paged, m2 = train({ paged = true, page_mb = page_mb })
        for step = 1, 4 do T.eq(paged.loss_curve[step], plain.loss_curve[step], ("page_mb %g: loss at step %d"):format(page_mb, step)) end
        local p1, p2 = m1:parameters(), m2:parameters()
        for i, r in ipairs(p1) do T.ok(p2[i].param:equal(r.param), r.name) end
    end
end)

T.test("the moments are in the paged pool, not in the CPU's bytes in use", function()
    lt.manual_seed(1)
    local model = lt.llama.new(CFG)
    local n = model:num_parameters(true)
    lt.memory.collect()
    local before = lt.memory.stats("cpu")
    local opt = lt.optim.AdamW(model:parameters(), { paged = true })
    local after = lt.memory.stats("cpu")
    T.eq(after.paged - before.paged, 8 * n, "two f32 moments per parameter in the pool")
    T.eq(after.current, before.current, "nothing resident")
    local sd = opt:state_dict()
    T.eq(sd.tensors["1.1.exp_avg"]:sum():item(), 0, "zero-filled")
    opt, sd = nil, nil -- luacheck: ignore
    lt.memory.collect()
    T.eq(lt.memory.stats("cpu").paged, before.paged, "given back with the optimizer")
end)

T.test("a budget that resident moments break is met with paged ones, with the same losses", function()
    local plain, _, peak_resident = train()
    local _, _, peak_paged = train({ paged = true, page_mb = 0.25 })
    local moments = 8 * lt.llama.new(CFG):num_parameters(true)
    T.ok(peak_resident - peak_paged > moments / 2, ("peaks: resident %d, paged %d"):format(peak_resident, peak_paged))
    local budget = math.floor((peak_resident + peak_paged) / 2)
    local res, err = train(nil, budget)
    T.ok(res == nil and err:find("out of memory under the budget", 1, true), "resident moments fit: " .. tostring(err))
    local paged = train({ paged = true, page_mb = 0.25 }, budget)
    T.ok(paged ~= nil, "the paged run failed under the budget")
    for step = 1, 4 do T.eq(paged.loss_curve[step], plain.loss_curve[step], "loss at step " .. step) end
end)

-- Trains 4 steps with AdamW8bit (small min_8bit_size, so every matrix has 8-bit state).
local function train8(optim_opts, limit)
    lt.memory.collect()
    local base = lt.memory.stats("cpu").current
    lt.memory.reset_peak("cpu")
    lt.manual_seed(9)
    local model = lt.llama.new(CFG)
    local o = { lr = 1e-2, weight_decay = 0.1, min_8bit_size = 1000 }
    for k, v in pairs(optim_opts or {}) do o[k] = v end
    local ok, res = pcall(function()
        if limit then lt.memory.set_limit("cpu", base + limit) end
        local opt = lt.optim.AdamW8bit(model:parameters(), o)
        return lt.trainer.finetune{ model = model, train = dataset(), batch_size = 2, seq_len = 16, steps = 4,
            optimizer = opt, flatten = false, schedule = "constant" }
    end)
    lt.memory.set_limit("cpu", 0)
    local peak = lt.memory.stats("cpu").peak - base
    if not ok then return nil, res end
    return res, model, peak
end

T.test("paged 8-bit state: the same update bit for bit, pages of whole blocks", function()
    local plain, m1, peak_resident = train8()
    for _, page_mb in ipairs({ 8, 0.002 }) do
        local paged, m2, peak_paged = train8({ paged = true, page_mb = page_mb })
        for step = 1, 4 do T.eq(paged.loss_curve[step], plain.loss_curve[step], ("page_mb %g: loss at step %d"):format(page_mb, step)) end
        local p1, p2 = m1:parameters(), m2:parameters()
        for i, r in ipairs(p1) do T.ok(p2[i].param:equal(r.param), r.name) end
        T.ok(peak_paged < peak_resident, ("peaks: resident %d, paged %d"):format(peak_resident, peak_paged))
    end
    local _, _, peak_paged = train8({ paged = true, page_mb = 0.002 })
    local budget = math.floor((peak_resident + peak_paged) / 2)
    local res, err = train8(nil, budget)
    T.ok(res == nil and err:find("out of memory under the budget", 1, true), "resident 8-bit state fit: " .. tostring(err))
    local paged = train8({ paged = true, page_mb = 0.002 }, budget)
    T.ok(paged ~= nil, "the paged 8-bit run failed under the budget")
    for step = 1, 4 do T.eq(paged.loss_curve[step], plain.loss_curve[step], "under the budget: loss at step " .. step) end
end)

T.test("a paged optimizer's state saves and loads like a resident one's", function()
    local _, m = train({ paged = true })
    local a = lt.optim.AdamW(m:parameters(), { paged = true })
    a:step()
    local b = lt.optim.AdamW(m:parameters(), {})
    b:load_state_dict(a:state_dict())
    local sa, sb = a:state_dict(), b:state_dict()
    for k, t in pairs(sa.tensors) do T.ok(sb.tensors[k]:equal(t), k) end
    T.raises(function() lt.empty({ 3 }, { paged = true, device = "cuda" }) end, "the paged pool is host memory")
end)

T.done()
