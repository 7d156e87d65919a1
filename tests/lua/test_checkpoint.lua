--[[
test_checkpoint.lua - gradient checkpointing gives the same numbers with less memory, and
stays transparent: names, state dicts and flat memory across steps.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

local CFG = { vocab_size = 300, hidden_size = 64, intermediate_size = 160, num_hidden_layers = 4,
    num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 64,
    tie_word_embeddings = true }

-- Three steps of forward_backward; returns losses, gradients, and the peak bytes above
-- what was allocated before the first step, after each step.
local function run(checkpoint)
    lt.manual_seed(1)
    local m = lt.llama.new(CFG)
    if checkpoint then m:gradient_checkpointing(true) end
    local ids, tg = lt.randint(0, 300, 4, 64), lt.randint(0, 300, 4, 64)
    lt.memory.collect()
    local base = lt.memory.stats().current
    lt.memory.reset_peak()
    local losses, peaks = {}, {}
    for i = 1, 4 do
        m:zero_grad()
        losses[i] = m:forward_backward(ids, tg)
        peaks[i] = lt.memory.stats().peak - base
    end
    local grads = {}
    for _, r in ipairs(m:parameters()) do grads[r.name] = r.grad:clone() end
    return losses, grads, peaks, m
end

local l1, g1, p1 = run(false)
local l2, g2, p2, m2 = run(true)

T.test("checkpointing gives bit-identical losses and gradients", function()
    for i = 1, #l1 do T.eq(l2[i], l1[i], "loss at step " .. i) end
    local n = 0
    for name, g in pairs(g1) do
        T.ok(g2[name] and g2[name]:equal(g), "gradient of " .. name)
        n = n + 1
    end
    T.ok(n > 20)
end)

T.test("checkpointing lowers the activation peak, and memory stays flat", function()
    T.ok(p2[4] < 0.6 * p1[4], ("peak above weights: %d with checkpointing vs %d without"):format(p2[4], p1[4]))
    for i = 3, 4 do
        T.eq(p2[i], p2[2], "checkpointed peak at step " .. i)
        T.eq(p1[i], p1[2], "plain peak at step " .. i)
    end
end)

T.test("names, state dicts and switching back are transparent", function()
    local names = {}
    for name in pairs(m2:state_dict()) do names[#names + 1] = name end
    table.sort(names)
    T.ok(m2:state_dict()["model.layers.3.mlp.down_proj.weight"] ~= nil)
    for _, n in ipairs(names) do T.ok(not n:find("inner", 1, true), n) end
    T.eq(m2.model.layers:get(1).__name, "GradCheckpoint")
    m2:gradient_checkpointing(false)
    T.eq(m2.model.layers:get(1).__name, "LlamaDecoderLayer")
    local ids, tg = lt.randint(0, 300, 4, 64), lt.randint(0, 300, 4, 64)
    m2:zero_grad()
    local a = m2:forward_backward(ids, tg)
    m2:gradient_checkpointing(true)
    m2:zero_grad()
    T.eq(m2:forward_backward(ids, tg), a, "loss with checkpointing on again")
end)

T.done()
