--[[
memory.lua - what the allocators hold, per device.

lt.memory.stats("cpu") -> { current, peak, reserved, mapped, allocs, frees } in bytes
(current/peak count owned tensor storage and kernel scratch; mapped counts file mappings,
which the OS pages in and out on its own). lt.memory.reset_peak(device) restarts the peak
from the current figure, as torch.cuda.reset_peak_memory_stats does.
]]
local ffi = require "ffi"
local core = require "luatrain.core"

local C, check = core.C, core.check

local M = {}
local stats = ffi.new("lt_memory_stats")

function M.stats(device)
    local dt, di = core.parse_device(device)
    check(C.lt_memory_get_stats(dt, di, stats))
    return {
        current = tonumber(stats.current_bytes),
        peak = tonumber(stats.peak_bytes),
        reserved = tonumber(stats.reserved_bytes),
        mapped = tonumber(stats.mapped_bytes),
        allocs = tonumber(stats.num_allocs),
        frees = tonumber(stats.num_frees),
    }
end

function M.reset_peak(device)
    local dt, di = core.parse_device(device)
    check(C.lt_memory_reset_peak(dt, di))
end

-- "1.50 MiB"-style text for a byte count.
function M.format_bytes(n)
    local units = { "B", "KiB", "MiB", "GiB", "TiB" }
    local u = 1
    while math.abs(n) >= 1024 and u < #units do
        n = n / 1024
        u = u + 1
    end
    return u == 1 and ("%d B"):format(n) or ("%.2f %s"):format(n, units[u])
end

return M
