--[[
zero_fast.lua - ZeRO stages 1, 2 and 3 (stage 3 also with CPU and with NVMe offload) over
the ranks of an mpirun job, in the default, fast mode (the collectives sum in MPI's own
order), train like DDP in the same mode: the 20-step loss curves and the trained weights
within 1e-6, with full fine-tuning and with LoRA on an NF4 base (run at 2 and 3 ranks;
zero_equal.lua checks the deterministic mode bit for bit).
]]
package.path = "tests/lua/?.lua;tests/dist/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local common = require "common"

local pg = lt.dist.init({ timeout = 20 })
local W = pg.world
T.ok(W >= 2, "run under mpirun with 2 or more ranks")
T.ok(not pg.deterministic, "the default mode")

local STEPS = 20

local function trained(m, lora)
    local out = {}
    for name, t in pairs(m:state_dict()) do
        if not lora or name:find("lora_") then out[name] = t:clone() end
    end
    return out
end

for _, lora in ipairs({ false, true }) do
    T.test(("%d ranks, %s: ZeRO-1, -2, -3 and -3 with CPU and NVMe offload = DDP within 1e-6 over %d steps"):format(W,
        lora and "LoRA on an NF4 base" or "full fine-tuning", STEPS), function()
        local ddp = common.train(pg, { steps = STEPS, lora = lora })
        local ref = trained(ddp.model, lora)
        T.eq(#ddp.losses, STEPS, "DDP's loss curve")
        -- (host: the layers' shards in host memory, as a GPU's are with offload=cpu)
        for _, case in ipairs({ { 1, "adamw" }, { 2, "adamw" }, { 3, "adamw" }, { 3, "cpu_adamw" },
            { 3, "cpu_adamw", "host" }, { 3, "nvme_adamw" } }) do
            local stage, optim = case[1], case[2]
            local what = ("zero=%d %s%s"):format(stage, optim, case[3] and " host" or "")
            local z = common.train(pg, { steps = STEPS, zero = stage, optim = optim, lora = lora,
                offload_params = case[3] and "cpu" or nil })
            if stage == 3 then z.result.optimizer:gather_params() end
            local worst_loss = 0
            for i = 1, STEPS do
                local d = math.abs(z.losses[i] - ddp.losses[i])
                worst_loss = math.max(worst_loss, d)
                T.ok(d <= 1e-6 * math.max(1, math.abs(ddp.losses[i])),
                    ("%s: step %d loss %.9g vs DDP %.9g"):format(what, i, z.losses[i], ddp.losses[i]))
            end
            local w, worst = trained(z.model, lora), 0
            for name, t in pairs(ref) do
                local r = common.rel(w[name], t)
                worst = math.max(worst, r)
                T.ok(r <= 1e-6, ("%s: %s differs by %.3g (relative L2)"):format(what, name, r))
            end
            if pg:is_main() then
                io.write(("  %s: largest loss difference %.3g, largest weight difference %.3g (relative L2)\n"):format(
                    what, worst_loss, worst))
            end
        end
    end)
end

lt.dist.shutdown()
T.done()
