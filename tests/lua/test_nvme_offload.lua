--[[
test_nvme_offload.lua - AdamW with its moments in a file (offload = "nvme", src/io/aio.c), and
in host memory (offload = "cpu", ZeRO-Offload's, also in 8 bits; its GPU half is in
test_cuda.lua):
the same trajectory bit for bit as the moments in memory, whatever the page size; none of
them held in memory (lt.memory); checkpoints carry them both ways; the file goes with the
optimizer; bad settings say what is wrong. (ZeRO with the shards' moments in files:
tests/dist/zero_equal.lua.)
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

local DIR = (os.getenv("TMPDIR") or "/tmp") .. "/lt_nvme_" .. tostring(os.time())
local CFG = { vocab_size = 61, hidden_size = 64, intermediate_size = 96, num_hidden_layers = 2,
    num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 32 }

local function train(opts, steps, start, make)
    lt.manual_seed(3)
    local m = lt.llama.new(CFG)
    local opt = start and start.opt or (make or lt.optim.AdamW)(m:parameters(), opts)
    if start then m:load_state_dict(start.weights) end
    local ids = lt.randint(0, 61, 2, 16)
    local losses = {}
    for s = 1, steps do
        opt:zero_grad()
        losses[s] = m:forward_backward(ids, ids)
        opt:step()
    end
    return losses, m, opt
end

local function same_weights(a, b)
    local sa, sb = a:state_dict(), b:state_dict()
    for k, t in pairs(sa) do if not sb[k]:equal(t) then return false, k end end
    return true
end

T.test("the moments in a file train bit for bit like the moments in memory", function()
    local l0, m0 = train({ lr = 1e-3, weight_decay = 0.1 }, 4)
    for _, page_mb in ipairs({ 8, 0.01 }) do
        local l1, m1, o1 = train({ lr = 1e-3, weight_decay = 0.1, offload = "nvme", offload_dir = DIR, page_mb = page_mb }, 4)
        T.eq(l1, l0, ("losses (page_mb %g)"):format(page_mb))
        T.ok(same_weights(m0, m1), "weights")
        T.eq(o1:resident_state_bytes(), 0, "no moments in memory")
        T.eq(o1:state_bytes(), 8 * m1:num_parameters(true), "8 bytes a parameter, in the file")
        print(("  page_mb %g: O_DIRECT %s"):format(page_mb, tostring(o1.nvme.direct)))
    end
end)

T.test("lt.memory holds none of them: the step's peak falls by the moments less the page buffers", function()
    local function peak(opts)
        lt.memory.collect()
        local base = lt.memory.stats("cpu").current
        lt.memory.reset_peak("cpu")
        local _, m = train(opts, 2)
        local p = lt.memory.stats("cpu").peak - base
        return p, m:num_parameters(true)
    end
    local resident, n = peak({ lr = 1e-3 })
    local offloaded = peak({ lr = 1e-3, offload = "nvme", offload_dir = DIR, page_mb = 0.01 })
    -- the moments (8 bytes a parameter) are gone; the update's two sets of two page buffers
    -- of 1024 floats (page_mb 0.01 rounds up to whole blocks) add to the peak only when it
    -- falls in the update (with few threads the backward's scratch peaks higher)
    local d = resident - offloaded
    T.ok(d >= 8 * n - 4 * 1024 * 4 and d <= 8 * n, ("peaks: resident %d, offloaded %d (%d parameters)"):format(
        resident, offloaded, n))
end)

T.test("checkpoints: a file-backed state saves as AdamW's and loads either way", function()
    local _, m1, o1 = train({ lr = 1e-3, offload = "nvme", offload_dir = DIR, page_mb = 0.01 }, 3)
    local sd = o1:state_dict()
    local weights = {}
    for k, t in pairs(m1:state_dict()) do weights[k] = t:clone() end
    -- continue in memory from the file's state, and in a file from it again
    local resident = lt.optim.AdamW(lt.llama.new(CFG):parameters(), { lr = 1e-3 })
    local function continue(opt_opts)
        lt.manual_seed(3)
        local m = lt.llama.new(CFG)
        m:load_state_dict(weights)
        local opt = lt.optim.AdamW(m:parameters(), opt_opts)
        opt:load_state_dict(sd)
        local ids = lt.randint(0, 61, 2, 16)
        opt:zero_grad()
        local l = m:forward_backward(ids, ids)
        opt:step()
        return l, m
    end
    local la, ma = continue({ lr = 1e-3 })
    local lb, mb = continue({ lr = 1e-3, offload = "nvme", offload_dir = DIR, page_mb = 0.01 })
    T.eq(lb, la, "the same next loss")
    T.ok(same_weights(ma, mb), "the same next weights")
    T.ok(resident ~= nil)
end)

T.test("the file goes with the optimizer; bad settings say what is wrong", function()
    local _, _, o = train({ lr = 1e-3, offload = "nvme", offload_dir = DIR }, 1)
    local path = o.nvme.path
    T.ok(io.open(path) ~= nil, "the state file exists while the optimizer does")
    o:close()
    T.ok(io.open(path) == nil, "close() removes it")
    local params = lt.llama.new(CFG):parameters()
    T.raises(function() lt.optim.AdamW(params, { offload = "nvme" }) end, "offload=nvme needs offload_dir")
    T.raises(function() lt.optim.AdamW(params, { offload = "disk", offload_dir = DIR }) end, 'offload must be "cpu" or "nvme"')
    T.raises(function() lt.optim.AdamW(params, { paged = true, offload = "nvme", offload_dir = DIR }) end, "pick one")
    T.raises(function() lt.optim.AdamW(params, { offload = "nvme", offload_dir = "/proc/no/such" }) end, "/proc/no")
end)

T.test("offload=cpu: the moments in host memory (the paged pool), AdamW bit for bit", function()
    local l0, m0 = train({ lr = 1e-3, weight_decay = 0.1 }, 4)
    lt.memory.collect()
    local pool0 = lt.memory.stats("cpu").paged
    local l1, m1, o1 = train({ lr = 1e-3, weight_decay = 0.1, offload = "cpu" }, 4)
    T.eq(l1, l0, "losses")
    T.ok(same_weights(m0, m1), "weights")
    T.eq(o1:resident_state_bytes(), 0, "no moments beside the weights")
    T.eq(lt.memory.stats("cpu").paged - pool0, 8 * m1:num_parameters(true), "8 bytes a parameter in the pool")
    T.raises(function() lt.optim.AdamW(m1:parameters(), { paged = true, offload = "cpu" }) end, "pick one")
end)

T.test("offload=cpu in 8 bits: AdamW8bit's codes, scales and small moments in the pool, bit for bit", function()
    local opts = { lr = 1e-3, weight_decay = 0.1 }
    local l0, m0, o0 = train(opts, 4, nil, lt.optim.AdamW8bit)
    lt.memory.collect()
    local pool0 = lt.memory.stats("cpu").paged
    local l1, m1, o1 = train({ lr = 1e-3, weight_decay = 0.1, offload = "cpu" }, 4, nil, lt.optim.AdamW8bit)
    T.eq(l1, l0, "losses")
    T.ok(same_weights(m0, m1), "weights")
    T.eq(o1:resident_state_bytes(), 0, "no state beside the weights")
    -- all of the state but the two 256-entry maps, which stay in memory (the host's)
    local maps = 2 * 256 * 4
    T.eq(lt.memory.stats("cpu").paged - pool0, o0:state_bytes() - maps, "the state in the pool")
    T.eq(o1:state_bytes(), o0:state_bytes(), "the same state")
    local s0, s1 = o0:state_dict(), o1:state_dict()
    for k, t in pairs(s0.tensors) do T.ok(s1.tensors[k]:equal(t), "state_dict " .. k) end
    T.raises(function() lt.optim.AdamW8bit(m1:parameters(), { paged = true, offload = "cpu" }) end, "pick one")
    T.raises(function() lt.optim.AdamW8bit(m1:parameters(), { offload = "nvme", offload_dir = DIR }) end,
        "offload must be \"cpu\"")
end)

os.execute("rm -rf " .. DIR)
T.done()
