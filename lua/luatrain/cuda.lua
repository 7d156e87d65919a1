--[[
cuda.lua - the GPUs from Lua.

    lt.cuda.is_available()          -- false without a CUDA build, runtime or GPU; never raises
    lt.cuda.device_count()
    lt.cuda.set_device(1)           -- where a bare "cuda" (t:cuda(), device = "cuda") goes
    lt.cuda.current_device()
    lt.cuda.synchronize([i])        -- wait for the device's queued work (timing: use events
                                    -- on the device, or synchronize before reading a clock)
    lt.cuda.empty_cache([i])        -- give cached, entirely free segments back; returns bytes
    lt.cuda.device_info([i])        -- { name, major, minor, sm_count, total_bytes, free_bytes }
    lt.cuda.memory_stats([i])       -- lt.memory.stats("cuda:i"): current, peak, reserved, ...
    lt.cuda.reset_peak([i])

Tensors move with t:cuda([i]), t:cpu(), t:to("cuda:1"); modules with model:to("cuda").
The CUDA backend (libluatrain_cuda.so and the CUDA runtime) is loaded by the first of these
calls, not by require "luatrain": a script that never asks for a GPU never loads it. Where
it cannot be used, every call raises the reason, "built without CUDA" or "CUDA runtime not
found: ..." (LT_CUDA_LIBRARY names another backend file); is_available and device_count
answer false and 0 instead.
]]
local ffi = require "ffi"
local core = require "luatrain.core"

local C, check = core.C, core.check

local M = {}
local n_buf = ffi.new("int32_t[1]")
local i64_buf = ffi.new("int64_t[1]")
local info = ffi.new("lt_cuda_device_info")

function M.device_count()
    if C.lt_cuda_device_count(n_buf) ~= 0 then return 0 end
    return n_buf[0]
end

function M.is_available() return M.device_count() > 0 end

function M.set_device(i)
    check(C.lt_cuda_set_device(i or 0))
end

function M.current_device()
    check(C.lt_cuda_get_device(n_buf))
    return n_buf[0]
end

local function index(i)
    if i == nil then return -1 end
    if type(i) == "string" then
        local _, idx = core.parse_device(i)
        return idx
    end
    return i
end

function M.synchronize(i)
    check(C.lt_cuda_synchronize(index(i)))
end

function M.empty_cache(i)
    check(C.lt_cuda_empty_cache(index(i), i64_buf))
    return tonumber(i64_buf[0])
end

function M.device_info(i)
    local idx = index(i)
    if idx < 0 then idx = M.current_device() end
    check(C.lt_cuda_get_device_info(idx, info))
    return { index = idx, name = ffi.string(info.name), major = info.major, minor = info.minor,
        sm_count = info.sm_count, total_bytes = tonumber(info.total_bytes),
        free_bytes = tonumber(info.free_bytes) }
end

local function dev(i)
    local idx = index(i)
    if idx < 0 then idx = M.current_device() end
    return "cuda:" .. idx
end

function M.memory_stats(i) return require("luatrain.memory").stats(dev(i)) end
function M.reset_peak(i) return require("luatrain.memory").reset_peak(dev(i)) end

return M
