--[[
ckpt_world.lua - a checkpoint saved at one world size resumes at another (ctest runs it as a
fixture: saved at 2 ranks, then resumed at 3 ranks and in one process).

    mpirun -np 2 luatrain tests/dist/ckpt_world.lua save   DIR 3   (grad_accum 3: 6 micro-batches a step)
    mpirun -np 3 luatrain tests/dist/ckpt_world.lua resume DIR 2   (grad_accum 2: the same 6)
    luatrain tests/dist/ckpt_world.lua resume DIR 6
The run keeps world x grad_accum at 6, so every step reads the same global batches; the
resumed losses must be within 1e-5 of an uninterrupted run of the same steps (one process
with grad_accum 6, computed here). Optional 4th argument: the ZeRO stage.
]]
package.path = "tests/lua/?.lua;tests/dist/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local common = require "common"

local mode, dir, accum, zero = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4] or "0")
assert(mode and dir and accum, "usage: ckpt_world.lua save|resume DIR grad_accum [zero]")
local pg = lt.dist.init({ timeout = 30 })
local SAVED, TOTAL = 4, 8

if mode == "save" then
    T.test(("save at step %d with %d ranks x grad_accum %d (zero=%d)"):format(SAVED, pg.world, accum, zero), function()
        if pg:is_main() then lt.fs.remove_tree(dir) end
        pg:barrier()
        common.train(pg, { steps = SAVED, accum = accum, zero = zero, checkpoint_dir = dir, save_every = SAVED })
        local path, step = lt.checkpoint.latest(dir)
        T.ok(path ~= nil and step == SAVED, "the checkpoint is there")
    end)
else
    T.test(("resume with %d ranks x grad_accum %d (zero=%d)"):format(pg.world, accum, zero), function()
        local straight = common.train(lt.dist.local_group(), { steps = TOTAL, accum = 6 })
        local resumed = common.train(pg, { steps = TOTAL, accum = accum, zero = zero, checkpoint_dir = dir,
            resume = "auto" })
        T.eq(resumed.trainer.first_step, SAVED + 1, "resumed after the saved step")
        for step = SAVED + 1, TOTAL do
            T.near(resumed.losses[step], straight.losses[step], 1e-5, 0, "loss at step " .. step)
        end
    end)
end

lt.dist.shutdown()
T.done()
