--[[
test_memory_limit.lua - a per-device memory budget (lt.memory.set_limit, LT_MEMORY_LIMIT,
memory_limit=): an allocation that would pass it fails like one on a full device, with the
request, the use and the budget in the message, and leaves nothing counted or half-made;
raising or removing the budget lets the same work complete with the same numbers.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

T.test("sizes in bytes or text", function()
    T.eq(lt.memory.parse_bytes(4096), 4096)
    T.eq(lt.memory.parse_bytes("512MiB"), 512 * 2 ^ 20)
    T.eq(lt.memory.parse_bytes("1.5 GB"), 1.5e9)
    T.eq(lt.memory.parse_bytes("2e9"), 2e9)
    T.eq(lt.memory.parse_bytes("7kib"), 7168)
    T.raises(function() lt.memory.parse_bytes("lots", "memory_limit") end, 'memory_limit: "lots" is not a size')
    T.raises(function() lt.memory.set_limit("cpu", -1) end, "not a whole number of bytes")
end)

T.test("an allocation past the budget fails with the numbers and leaves nothing behind", function()
    local ok_all, e = pcall(function()
        lt.memory.collect()
        local base = lt.memory.stats("cpu").current
        lt.memory.set_limit("cpu", base + 1000000)
        T.eq(lt.memory.limit("cpu"), base + 1000000)
        local a = lt.zeros({ 100000 }) -- luacheck: ignore 231 (400 KB that fit, held)
        local before = lt.memory.stats("cpu")
        local ok, err = pcall(lt.zeros, { 200000 }) -- 800 KB more: does not
        T.ok(not ok, "allocated past the budget")
        local want = ("out of memory under the budget: 800000 bytes requested on cpu:0 with %d in use of the %d-byte budget")
            :format(before.current, base + 1000000)
        T.ok(err:find(want, 1, true), err)
        local after = lt.memory.stats("cpu")
        T.eq({ after.current, after.allocs }, { before.current, before.allocs }, "nothing counted")
        -- an op whose output does not fit fails the same way, its inputs intact
        local x = lt.ones({ 100, 100 })
        T.raises(function() return x:matmul(lt.ones({ 100, 3000 })) end, "out of memory under the budget")
        T.eq(x:sum():item(), 10000, "input intact")
        lt.memory.set_limit("cpu", 0)
        T.eq(lt.memory.limit("cpu"), 0, "removed")
        T.eq(#lt.zeros({ 200000 }):shape(), 1, "fits without the budget")
        a = nil -- luacheck: ignore
    end)
    lt.memory.set_limit("cpu", 0) -- whatever happened, the later tests run without it
    if not ok_all then error(e, 0) end
end)

-- A few training steps of a small Llama; returns the losses, or the error.
local function train(limit)
    lt.manual_seed(3)
    local model = lt.llama.new({ vocab_size = 97, hidden_size = 64, intermediate_size = 128, num_hidden_layers = 2,
        num_attention_heads = 4, num_key_value_heads = 4, max_position_embeddings = 64 })
    local samples = {}
    for i = 1, 16 do
        local ids = {}
        for j = 1, 40 do ids[j] = (i * 7 + j * 3) % 96 + 1 end
        samples[i] = { ids = ids }
    end
    lt.memory.collect()
    lt.memory.set_limit("cpu", limit and (lt.memory.stats("cpu").current + limit) or 0)
    local ok, res = pcall(lt.trainer.finetune, { model = model, train = lt.data.tokens.from_samples(samples),
        batch_size = 4, seq_len = 32, steps = 3, lr = 1e-3 })
    lt.memory.set_limit("cpu", 0)
    if not ok then return nil, res end
    return res
end

T.test("a run under too small a budget stops with the message; with room it trains the same numbers", function()
    local free = train(nil)
    local _, err = train(200000)
    T.ok(err and err:find("out of memory under the budget", 1, true), tostring(err))
    local roomy = train(free.peak_bytes * 4)
    for step = 1, 3 do T.eq(roomy.loss_curve[step], free.loss_curve[step], "loss at step " .. step) end
end)

T.test("LT_MEMORY_LIMIT holds from the start, for every device", function()
    local out, code = T.run(("LT_MEMORY_LIMIT=3MiB %s -e %s"):format(T.shell_quote(T.luatrain()),
        T.shell_quote("local lt = require 'luatrain' print(lt.memory.limit('cpu'), lt.memory.limit('cuda:1')) " ..
            "print(pcall(lt.zeros, { 1000000 }))")))
    T.eq(code, 0, out)
    T.ok(out:find("3145728\t3145728", 1, true), out)
    T.ok(out:find("false\tout of memory under the budget: 4000000 bytes", 1, true), out)
    out, code = T.run(("LT_MEMORY_LIMIT=plenty %s -e %s"):format(T.shell_quote(T.luatrain()),
        T.shell_quote("require 'luatrain'")))
    T.ok(code ~= 0 and out:find('LT_MEMORY_LIMIT: "plenty" is not a size', 1, true), out)
end)

T.done()
