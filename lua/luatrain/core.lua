--[[
core.lua - the FFI binding to the C core.

The declarations come from the generated cdef (tools/gen_cdef.lua). Inside the luatrain
host the core is linked into the process and reached through ffi.C; from a plain luajit the
shared library is loaded from LUATRAIN_LIB, or found next to this Lua tree (build/lua/..
in a build tree, share/luatrain/lua/../../../lib in an install tree).
]]
local ffi = require "ffi"

ffi.cdef(require "luatrain.cdef")

local function find_library()
    local ok = pcall(function() return ffi.C.lt_version end)
    if ok then return ffi.C end
    local env = os.getenv("LUATRAIN_LIB")
    if env and env ~= "" then return ffi.load(env) end
    local here = debug.getinfo(1, "S").source:match("^@(.*)/luatrain/core%.lua$") or "."
    local tried = {}
    for _, rel in ipairs({ "/../libluatrain.so", "/../../../lib/libluatrain.so",
        "/../../../lib/x86_64-linux-gnu/libluatrain.so", "/../build/libluatrain.so" }) do
        local path = here .. rel
        local f = io.open(path, "rb")
        if f then
            f:close()
            return ffi.load(path)
        end
        tried[#tried + 1] = path
    end
    error("luatrain: cannot find libluatrain.so (set LUATRAIN_LIB); tried:\n  " ..
        table.concat(tried, "\n  "), 0)
end

local C = find_library()

local M = { C = C, ffi = ffi }

-- The message of the last failing C call.
function M.last_error()
    return ffi.string(C.lt_last_error())
end

-- Turn a failing status into a Lua error carrying the C message. Level 0: the C message
-- already says what failed and where; a Lua position would point into the library.
function M.check(status)
    if status ~= 0 then
        error(ffi.string(C.lt_last_error()), 0)
    end
end

-- dtype names <-> enum values, read from the C traits table (one source of truth).
M.dtype_id = {}
M.dtype_name = {}
for i = 0, C.LT_DTYPE_COUNT - 1 do
    local tr = C.lt_dtype_info(i)
    local name = ffi.string(tr.name)
    M.dtype_id[name] = i
    M.dtype_name[i] = name
end
local aliases = { float32 = "f32", float = "f32", bfloat16 = "bf16", float16 = "f16",
    half = "f16", int32 = "i32", int64 = "i64", long = "i64", uint8 = "u8", int8 = "i8" }
for alias, name in pairs(aliases) do M.dtype_id[alias] = M.dtype_id[name] end

function M.to_dtype(d, what)
    if d == nil then return C.LT_DTYPE_F32 end
    if type(d) == "number" then
        if M.dtype_name[d] then return d end
    elseif type(d) == "string" then
        local id = M.dtype_id[d] or M.dtype_id[d:lower()]
        if id then return id end
    end
    error(("%sunknown dtype %s (expected one of f32, bf16, f16, i32, i64, u8, i8)"):format(
        what and (what .. ": ") or "", tostring(d)), 3)
end

-- "cpu", "cuda", "cuda:1" -> device type, index
function M.parse_device(d)
    if d == nil or d == "cpu" then return C.LT_DEVICE_CPU, 0 end
    if type(d) == "string" then
        if d == "cuda" then
            -- the current device (lt.cuda.set_device); 0 when the build has no CUDA
            local out = require("ffi").new("int32_t[1]")
            if C.lt_cuda_get_device(out) ~= 0 then return C.LT_DEVICE_CUDA, 0 end
            return C.LT_DEVICE_CUDA, out[0]
        end
        local idx = d:match("^cuda:(%d+)$")
        if idx then return C.LT_DEVICE_CUDA, tonumber(idx) end
    end
    error(("unknown device %s (expected \"cpu\", \"cuda\" or \"cuda:N\")"):format(tostring(d)), 3)
end

function M.device_string(dtype_, index)
    if dtype_ == C.LT_DEVICE_CPU then return "cpu" end
    return "cuda:" .. tostring(index)
end

return M
