--[[
test_offload.lua - activation offload (gradient_checkpointing(true, { offload = true })):
each checkpointed layer's input waits in the host pool instead of the layer's output on the
device. Losses and gradients are the same bits as checkpointing without offload; the
device's bytes in use fall by the layers' kept outputs, which the pool holds instead.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

local CFG = { vocab_size = 97, hidden_size = 64, intermediate_size = 128, num_hidden_layers = 6,
    num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 64 }
local B, S = 4, 48

local function batch()
    lt.manual_seed(11)
    return lt.randint(0, CFG.vocab_size, { B, S }), lt.randint(0, CFG.vocab_size, { B, S })
end

-- One forward/backward on a fresh model; returns the loss, the gradients, the bytes the
-- device (cpu) held after it beyond the model, and the pool's bytes.
local function step(mode)
    lt.manual_seed(4)
    local model = lt.llama.new(CFG)
    if mode ~= "plain" then model:gradient_checkpointing(true, { offload = mode == "offload" }) end
    local ids, targets = batch()
    lt.memory.collect()
    local before = lt.memory.stats("cpu")
    local loss
    for _ = 1, 2 do -- the second step runs with every buffer already made
        model:zero_grad()
        loss = model:forward_backward(ids, targets)
    end
    lt.memory.collect()
    local after = lt.memory.stats("cpu")
    local grads = {}
    for _, r in ipairs(model:parameters()) do grads[r.name] = r.grad:clone() end
    return loss, grads, after.current - before.current, after.paged - before.paged
end

T.test("offloaded inputs: the same loss and gradients, bit for bit", function()
    local l0, g0 = step("plain")
    local l1, g1, dev1, pool1 = step("checkpoint")
    local l2, g2, dev2, pool2 = step("offload")
    T.eq(l1, l0, "checkpointing")
    T.eq(l2, l0, "offload")
    for name, g in pairs(g0) do
        T.ok(g1[name]:equal(g), "checkpointing: " .. name)
        T.ok(g2[name]:equal(g), "offload: " .. name)
    end
    local act = B * S * CFG.hidden_size * 4 -- one (B, T, C) f32 tensor
    local L = CFG.num_hidden_layers
    T.eq(pool1, 0, "no pool without offload")
    T.eq(pool2, L * act, "the pool holds one input per layer")
    -- per-layer outputs (L) leave the device; the arena's two passing buffers and two
    -- restore buffers (4) come
    T.eq(dev1 - dev2, (L - 4) * act, ("device bytes: checkpointing %d, offload %d"):format(dev1, dev2))
end)

T.test("switching offload off gives the buffers back", function()
    lt.manual_seed(4)
    local model = lt.llama.new(CFG)
    model:gradient_checkpointing(true, { offload = true })
    local ids, targets = batch()
    model:forward_backward(ids, targets)
    model:gradient_checkpointing(false)
    lt.memory.collect()
    T.eq(lt.memory.stats("cpu").paged, 0, "pool empty")
end)

T.done()
