--[[
zero_equal.lua - ZeRO stages 1 and 2 over the ranks of an mpirun job train bit for bit like
DDP in deterministic mode (sums in rank order, the gradient norm over the same partition),
and each rank holds only its shard of the optimizer state (run at 2 and 3 ranks).
]]
package.path = "tests/lua/?.lua;tests/dist/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local common = require "common"

local pg = lt.dist.init({ timeout = 20, deterministic = true })
local W = pg.world
T.ok(W >= 2, "run under mpirun with 2 or more ranks")

local function weights(m)
    local out = {}
    for name, t in pairs(m:state_dict()) do out[name] = t:clone() end
    return out
end

T.test(("ZeRO-1 and ZeRO-2 at %d ranks = DDP, bit for bit"):format(W), function()
    local ddp = weights(common.train(pg, { steps = 5 }).model)
    for _, stage in ipairs({ 1, 2 }) do
        local z = common.train(pg, { steps = 5, zero = stage })
        local w = weights(z.model)
        for name, t in pairs(ddp) do T.ok(w[name]:equal(t), ("zero=%d: %s"):format(stage, name)) end
    end
end)

T.test(("ZeRO-3 at %d ranks = DDP, bit for bit: full fine-tuning, layers gathered as they run"):format(W), function()
    local ddp = weights(common.train(pg, { steps = 5 }).model)
    -- "cpu_adamw host": the layers' shards in host memory, copied up before each gather (a
    -- GPU's are, with offload=cpu)
    for _, case in ipairs({ "adamw", "cpu_adamw", "cpu_adamw host", "nvme_adamw" }) do
        local optim, host = case:match("^(%S+)"), case:find("host") ~= nil
        local z = common.train(pg, { steps = 5, zero = 3, optim = optim, offload_params = host and "cpu" or nil })
        -- each step: the first layer of the forward and of the backward on demand, the
        -- others gathered while the layer before them ran
        local L = common.CFG.num_hidden_layers
        T.eq(z.result.optimizer.gathers, { prefetched = 5 * 2 * (L - 1), waited = 5 * 2 }, "gathers ahead")
        z.result.optimizer:gather_params()
        local w = weights(z.model)
        for name, t in pairs(ddp) do T.ok(w[name]:equal(t), ("zero=3 %s: %s"):format(case, name)) end
    end
end)

T.test(("ZeRO-3 at %d ranks = DDP, bit for bit: LoRA on an NF4 base, with and without CPU offload"):format(W), function()
    local ddp = weights(common.train(pg, { steps = 5, lora = true }).model)
    for _, case in ipairs({ "adamw", "cpu_adamw", "cpu_adamw host" }) do
        local optim, host = case:match("^(%S+)"), case:find("host") ~= nil
        local z = common.train(pg, { steps = 5, zero = 3, optim = optim, lora = true,
            offload_params = host and "cpu" or nil })
        z.result.optimizer:gather_params()
        local w = weights(z.model)
        for name, t in pairs(ddp) do
            if name:find("lora_") then T.ok(w[name]:equal(t), ("zero=3 %s: %s"):format(case, name)) end
        end
    end
end)

-- with offload=nvme the shards live in the file, with "host" in host memory: saving gathers
-- them from there, and loading writes the checkpoint's into it
for _, case in ipairs({ "adamw", "nvme_adamw", "cpu_adamw host" }) do
    local optim, host = case:match("^(%S+)"), case:find("host") ~= nil and "cpu" or nil
    T.test(("ZeRO-3 (%s) at %d ranks: a checkpoint at step 3 resumed to step 5 = the straight run"):format(case, W),
        function()
        local dir = (os.getenv("TMPDIR") or "/tmp") .. "/lt_z3_ckpt"
        if pg:is_main() then os.execute("rm -rf " .. dir) end
        pg:barrier()
        local run = common.train(pg, { steps = 5, zero = 3, optim = optim, offload_params = host })
        run.result.optimizer:gather_params()
        local straight = weights(run.model)
        local first = common.train(pg, { steps = 3, zero = 3, optim = optim, checkpoint_dir = dir, save_every = 3,
            offload_params = host })
        first.result.optimizer:gather_params()
        local resumed = common.train(pg, { steps = 5, zero = 3, optim = optim, checkpoint_dir = dir, resume = "auto",
            offload_params = host })
        resumed.result.optimizer:gather_params()
        local w = weights(resumed.model)
        for name, t in pairs(straight) do T.ok(w[name]:equal(t), "resumed: " .. name) end
        pg:barrier()
        if pg:is_main() then os.execute("rm -rf " .. dir) end
    end)
end

-- where the layers' parameter shards live: in memory beside everything else, in the
-- optimizer's file (offload=nvme), or in host memory, the paged pool (offload=cpu; a GPU's by
-- default, here forced with offload_params)
for _, where in ipairs({ "memory", "nvme", "host" }) do
    T.test(("ZeRO-3 holds each layer's shard and three layer buffers in place of the whole layers; the shards "
        .. "in %s"):format(where), function()
        lt.manual_seed(1)
        local model = lt.llama.new(common.CFG)
        local groups = model:flatten_parameters({ trainable_only = true, pad_multiple = W, per_layer = true })
        local offload = ({ nvme = "nvme", host = "cpu" })[where]
        local base = lt.optim.AdamW(model:parameters(), { lr = 1e-3, offload = offload,
            offload_dir = where == "nvme" and (os.getenv("TMPDIR") or "/tmp") .. "/lt_nvme_test" or nil })
        local before = lt.memory.collect()
        local pool = lt.memory.stats("cpu").paged
        local zopt = require("luatrain.dist.zero").new(model, pg, base, { stage = 3,
            offload_params = where == "host" and "cpu" or nil })
        local after = lt.memory.collect()
        local want, want_pool, biggest, layers, biggest_shard = 0, 0, 0, 0, 0
        for _, g in ipairs(groups) do
            local S = g.numel / W
            local lo, hi = pg.rank * S, (pg.rank + 1) * S
            local mine, all = 0, 0
            for _, e in ipairs(g.entries) do
                mine = mine + math.max(0, math.min(hi, e.offset + e.numel) - math.max(lo, e.offset))
                all = all + e.numel
            end
            -- the shard's gradient, moments of its pieces; the whole moments go (both only
            -- in memory when they live there)
            want = want + 4 * S + (where == "memory" and 8 * mine - 8 * all or 0)
            if where == "host" then want_pool = want_pool + 8 * mine - 8 * all end
            if g.layer then
                layers = layers + 1
                biggest = math.max(biggest, g.numel)
                biggest_shard = math.max(biggest_shard, S)
                -- its own parameter shard (in memory only there) and a scratch; the whole
                -- parameters and gradients go
                want = want + (where == "memory" and 8 or 4) * S - 8 * g.numel
                if where == "host" then want_pool = want_pool + 4 * S end
            else
                want = want + 4 * S -- the send buffer
            end
        end
        want = want + 3 * 4 * biggest -- two parameter buffers and one gradient buffer
        if where ~= "memory" then want = want + 2 * 4 * biggest_shard end -- two staging buffers
        T.ok(layers == common.CFG.num_hidden_layers, "a group per decoder layer")
        T.eq(after - before, want, "what stage 3 holds, to the byte")
        T.eq(lt.memory.stats("cpu").paged - pool, want_pool, "what it keeps in the paged pool")
        for _, sh in ipairs(zopt.shards) do
            T.eq(sh.offloaded, sh.layer and ({ nvme = "nvme", host = "host" })[where] or nil,
                "offloaded: every layer's shard, nothing else")
        end
        zopt:gather_params()
        if where == "nvme" then zopt.inner:close() end
    end)
end

T.test(("ZeRO-1 and ZeRO-2 with paged moments (optim=paged_adamw) at %d ranks = DDP, bit for bit"):format(W),
    function()
    local ddp = weights(common.train(pg, { steps = 5 }).model)
    for _, stage in ipairs({ 1, 2 }) do
        local z = common.train(pg, { steps = 5, zero = stage, optim = "paged_adamw" })
        local w = weights(z.model)
        for name, t in pairs(ddp) do T.ok(w[name]:equal(t), ("zero=%d paged: %s"):format(stage, name)) end
        -- the shard's moments are in the pool, none on the device
        local st = z.result.optimizer.inner
        T.ok(st.paged, "the shard's optimizer pages")
        T.ok(lt.memory.stats("cpu").paged >= st:state_bytes(), "moments in the paged pool")
    end
end)

T.test(("ZeRO-1 and ZeRO-2 with the shard's moments in files (offload=nvme) or host memory (offload=cpu) at %d "
    .. "ranks = DDP, bit for bit"):format(W), function()
    local ddp = weights(common.train(pg, { steps = 5 }).model)
    for _, optim in ipairs({ "nvme_adamw", "cpu_adamw" }) do
        for _, stage in ipairs({ 1, 2 }) do
            local z = common.train(pg, { steps = 5, zero = stage, optim = optim })
            local w = weights(z.model)
            for name, t in pairs(ddp) do T.ok(w[name]:equal(t), ("zero=%d %s: %s"):format(stage, optim, name)) end
            T.eq(z.result.optimizer.inner:resident_state_bytes(), 0, "no moments beside the weights")
        end
    end
end)

T.test("each rank holds the moments of its shard only: 1/world of them", function()
    local z = common.train(pg, { steps = 1, zero = 1 })
    local total, mine = 0, 0
    for _, g in ipairs(z.model:flat_parameters()) do
        if g.grads then
            local S = g.numel / W
            local lo, hi = pg.rank * S, (pg.rank + 1) * S
            for _, e in ipairs(g.entries) do
                total = total + e.numel
                mine = mine + math.max(0, math.min(hi, e.offset + e.numel) - math.max(lo, e.offset))
            end
            T.ok(S * W == g.numel and g.numel - total < 64 * W * (#g.entries + 1), "shards of equal size")
        end
    end
    local bytes = z.result.optimizer:state_bytes()
    T.eq(bytes, 8 * mine, "8 bytes of moments per element of the shard")
    local all = pg:sum_numbers({ bytes })[1]
    T.eq(all, 8 * total, "the shards together hold every element once")
    -- and the allocator agrees: building the sharded optimizer over a whole-model AdamW frees
    -- the whole moments and allocates the shard's
    lt.manual_seed(1)
    local model = lt.llama.new(common.CFG)
    model:flatten_parameters({ trainable_only = true, pad_multiple = W })
    local base = lt.optim.AdamW(model:parameters(), { lr = 1e-3 })
    lt.memory.collect()
    local before = lt.memory.stats("cpu").current
    local zopt = require("luatrain.dist.zero").new(model, pg, base, { stage = 1 })
    local after = lt.memory.stats("cpu").current
    local S = 0
    for _, g in ipairs(model:flat_parameters()) do if g.grads then S = S + g.numel / W end end
    -- moments: -8 x total + 8 x mine; the shard's gradient and send buffers: 8 x S
    T.eq(after - before, -8 * total + 8 * mine + 8 * S)
    T.ok(zopt:state_bytes() == 8 * mine)
end)

lt.dist.shutdown()
T.done()
