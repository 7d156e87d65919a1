--[[
faults.lua - a failing rank ends the whole job (ctest runs this in one process; it starts
the jobs with tests/dist/mpirun.sh at 3 ranks). For a rank killed with -9, a rank stuck in
a loop, a Lua error on one rank and a rank that shuts down while the others are in a
collective: the job exits non-zero well within the 30 s the test allows (the collectives'
timeout is 5 s), the output names the failing rank and, where a survivor detected it, the
collective, and no process of the job is left behind.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"

local _, has_mpirun = T.run("command -v mpirun")
if has_mpirun ~= 0 then
    print("SKIP: mpirun not found (install openmpi-bin; tools/run.sh test does)")
    os.exit(77)
end

local function job(fault)
    local marker = ("lt-fault-%s-%d"):format(fault, os.time() % 100000 + math.random(1, 99999))
    local t0 = require("luatrain.core").C.lt_now()
    local out, code = T.run(("tests/dist/mpirun.sh 3 30 %s tests/dist/fault_job.lua %s %s"):format(
        T.shell_quote(T.luatrain()), fault, marker))
    local elapsed = require("luatrain.core").C.lt_now() - t0
    -- give the launcher's children a moment to be reaped, then look for any left
    os.execute("sleep 1")
    local left = T.run("pgrep -f " .. marker .. " | grep -v $$ || true")
    return out, code, elapsed, left
end

for _, case in ipairs({
    { "kill", "signal 9" },
    { "hang", "rank [02]: all_reduce sum of 1000 f32 timed out after 5 s" },
    { "error", "rank 1: tests/dist/fault_job.lua:%d+: injected failure" },
    -- MPI_Finalize would wait for the others forever: shutdown's own barrier fails first
    { "finish", "rank 1: the barrier before shutdown" },
}) do
    T.test("a job whose rank 1 fails (" .. case[1] .. ") ends", function()
        local out, code, elapsed, left = job(case[1])
        T.ok(code ~= 0, "the job succeeded:\n" .. out)
        T.ok(code ~= 124, "the job was stopped by the test's timeout, not by itself:\n" .. out)
        T.ok(elapsed < 30, ("the job took %.1f s"):format(elapsed))
        T.ok(out:find(case[2]) ~= nil, "no message matching '" .. case[2] .. "' in:\n" .. out)
        T.ok(not left:match("%d"), "processes left behind: " .. left)
        io.write(("  %s: exit %d after %.1f s\n"):format(case[1], code, elapsed))
    end)
end

T.done()
