--[[
memory.lua - what the allocators hold, per device.

lt.memory.stats("cpu") -> { current, peak, reserved, mapped, allocs, frees, paged } in bytes
(current/peak count owned tensor storage and kernel scratch; mapped counts file mappings,
which the OS pages in and out on its own; paged, the CPU's figure only, is the paged pool of
the paged optimizers, outside every budget). lt.memory.reset_peak(device) restarts the peak
from the current figure, as torch.cuda.reset_peak_memory_stats does.

lt.memory.collect() releases what nothing uses any more and returns the CPU's current
figure: compiled traces go first (a trace holds the objects it specialised on, such as an
earlier model's tables and through them its tensors, for as long as it lives), then the
collector runs until a full cycle frees nothing more (a finalizer can release what a second
cycle frees). Call it before reading `current` as a baseline.

lt.memory.set_limit(device, size) gives a device a budget for its bytes in use (a number of
bytes or text such as "512MiB", "1.5GB", "2e9"; 0 or nil removes it): an allocation that
would pass it fails with "out of memory under the budget" and the numbers, as a full
device would. LT_MEMORY_LIMIT in the environment sets the same budget for every device
when the library loads; recipes take memory_limit=. lt.memory.limit(device) reads it.
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
        paged = tonumber(stats.paged_bytes),
    }
end

function M.collect()
    jit.flush()
    local before
    repeat
        before = collectgarbage("count")
        collectgarbage("collect")
    until collectgarbage("count") >= before
    return M.stats("cpu").current
end

function M.reset_peak(device)
    local dt, di = core.parse_device(device)
    check(C.lt_memory_reset_peak(dt, di))
end

local UNITS = { [""] = 1, b = 1, k = 1e3, kb = 1e3, m = 1e6, mb = 1e6, g = 1e9, gb = 1e9, t = 1e12, tb = 1e12,
    kib = 2 ^ 10, mib = 2 ^ 20, gib = 2 ^ 30, tib = 2 ^ 40 }

-- Bytes from a number or text ("512MiB", "1.5 GB", "2e9"); errors name `what`.
function M.parse_bytes(v, what)
    if type(v) == "number" then
        if v < 0 or v ~= math.floor(v) then error(("%s: %s is not a whole number of bytes"):format(what, v), 3) end
        return v
    end
    local num, unit = tostring(v):lower():match("^%s*([%d%.e%+]+)%s*(%a*)%s*$")
    local n, mult = tonumber(num), UNITS[unit or ""]
    if not n or not mult or n < 0 then
        error(("%s: %q is not a size (bytes, or a number with B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"):format(
            what, tostring(v)), 3)
    end
    return math.floor(n * mult)
end

function M.set_limit(device, size)
    local dt, di = core.parse_device(device)
    check(C.lt_memory_set_limit(dt, di, size and M.parse_bytes(size, "memory limit") or 0))
end

function M.limit(device)
    local dt, di = core.parse_device(device)
    local out = ffi.new("int64_t[1]")
    check(C.lt_memory_get_limit(dt, di, out))
    return tonumber(out[0])
end

do
    local env = os.getenv("LT_MEMORY_LIMIT")
    if env and env ~= "" then
        local bytes = M.parse_bytes(env, "LT_MEMORY_LIMIT")
        check(C.lt_memory_set_limit(C.LT_DEVICE_CPU, 0, bytes))
        for i = 0, 15 do check(C.lt_memory_set_limit(C.LT_DEVICE_CUDA, i, bytes)) end
    end
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
