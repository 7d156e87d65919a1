--[[
ddp_equal.lua - DDP over the ranks of an mpirun job computes what one process computes with
grad_accum = world on the same samples (run by ctest under mpirun at 2 and 3 ranks).

At 2 ranks every summed gradient is bit-identical and the 20-step loss trajectory identical
(a sum of two numbers does not depend on their order); at 3 ranks within 1e-6 (MPI may sum
three in another order than one process accumulates them). Once with SGD, whose update is
proportional to the gradient (a wrong scale shows), once with AdamW.
]]
package.path = "tests/lua/?.lua;tests/dist/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local common = require "common"

local pg = lt.dist.init({ timeout = 20 })
local W = pg.world
T.ok(W >= 2, "run under mpirun with 2 or more ranks")

for _, optim in ipairs({ "sgd", "adamw" }) do
    T.test(("%s: DDP at %d ranks = one process with grad_accum = %d"):format(optim, W, W), function()
        local one = common.train(lt.dist.local_group(), { steps = 20, accum = W, optim = optim, grads_at = 1 })
        local dp = common.train(pg, { steps = 20, accum = 1, optim = optim, grads_at = 1 })
        local n = 0
        for name, g in pairs(one.grads) do
            if W == 2 then
                T.ok(dp.grads[name]:equal(g), name .. ": the summed gradient differs")
            else
                T.ok(common.rel(dp.grads[name], g) <= 1e-6, ("%s: %.3g"):format(name, common.rel(dp.grads[name], g)))
            end
            n = n + 1
        end
        T.ok(n > 20, "every parameter compared")
        for step = 1, 20 do
            if W == 2 then
                T.eq(dp.losses[step], one.losses[step], "loss at step " .. step)
            else
                T.near(dp.losses[step], one.losses[step], 1e-6, 0, "loss at step " .. step)
            end
        end
    end)
end

T.test("the same with grad_accum 2 per rank: the micro-batches before the last stay local", function()
    local one = common.train(lt.dist.local_group(), { steps = 6, accum = 2 * W })
    local dp = common.train(pg, { steps = 6, accum = 2 })
    for step = 1, 6 do T.near(dp.losses[step], one.losses[step], 1e-6, 0, "loss at step " .. step) end
end)

lt.dist.shutdown()
T.done()
