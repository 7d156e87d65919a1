--[[
fault_job.lua FAULT MARKER - a job in which rank 1 fails while the others are in collectives
(driven by tests/dist/faults.lua). FAULT: "kill" (rank 1 is killed with -9), "hang" (rank 1
loops forever before its collective), "error" (a Lua error on rank 1), "finish" (rank 1
ends its script early, as a rank whose test failed does: lt.dist.shutdown() and exit 0). MARKER is only on
the command line, for finding leftover processes.
]]
local lt = require "luatrain"
local ffi = require "ffi"
ffi.cdef "int getpid(void);"

local fault = arg[1]
local pg = lt.dist.init({ timeout = 5 })
lt.set_num_threads(1)
local t = lt.ones({ 1000 })
for step = 1, 1000000 do
    if pg.rank == 1 and step == 3 then
        if fault == "kill" then os.execute("kill -9 " .. ffi.C.getpid()) end
        if fault == "hang" then
            local x = 0
            while true do x = x + 1 end
        end
        if fault == "error" then error("injected failure at step " .. step) end
        if fault == "finish" then
            lt.dist.shutdown()
            os.exit(0)
        end
    end
    pg:all_reduce(t, "sum"):wait()
    t:fill_(1)
end
