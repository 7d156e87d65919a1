--[[
ops/support.lua - which dtypes each backend takes, op by op, as the C core states it
(src/ops/support.c; the ops' own argument checks ask the same table).

    local S = require "luatrain.ops.support"
    S.ops()                                  -- { "neg", "exp", ..., "quant_linear" }
    S.supports("rmsnorm", "cuda", "bf16")    -- true
    S.supports("rmsnorm", "cpu", "bf16")     -- true: computed in f32, rounded to bf16
    S.supports("adamw", "cpu", "bf16")       -- false: master weights and moments are f32
    S.supports("matmul", "cpu", "bf16", "read")  -- true: a and b are converted as read
    S.dtypes("softmax", "cuda:1")            -- { "f32", "bf16", "f16" }

role: "main" (default), the tensors the op computes in (activations, their gradients and
its outputs); "read", the operands it reads through a conversion to f32 (weights). A
device is "cpu", "cuda" or "cuda:N" (the table is per device type). An unknown op, device,
dtype or role is an error.
]]
local ffi = require "ffi"
local core = require "luatrain.core"

local C = core.C

local M = {}

local roles = { main = C.LT_OP_ROLE_MAIN, read = C.LT_OP_ROLE_READ }
local out = ffi.new("int32_t[1]")

local function device_type(device)
    if device == "cpu" then return C.LT_DEVICE_CPU end
    if device == "cuda" or (type(device) == "string" and device:match("^cuda:%d+$")) then
        return C.LT_DEVICE_CUDA
    end
    error(("unknown device %s (expected \"cpu\", \"cuda\" or \"cuda:N\")"):format(tostring(device)), 3)
end

-- The ops of the table, in its order.
function M.ops()
    local list = {}
    for i = 0, C.lt_op_count() - 1 do list[#list + 1] = ffi.string(C.lt_op_name(i)) end
    return list
end

function M.supports(op, device, dtype, role)
    local r = roles[role or "main"]
    if not r then error(("unknown role %s (expected \"main\" or \"read\")"):format(tostring(role)), 2) end
    local dt = core.to_dtype(dtype, "supports")
    core.check(C.lt_op_supports(op, device_type(device), dt, r, out))
    return out[0] == 1
end

-- The dtypes `op` takes in `role` on `device`, in the dtype table's order.
function M.dtypes(op, device, role)
    local list = {}
    for i = 0, C.LT_DTYPE_COUNT - 1 do
        local name = core.dtype_name[i]
        if M.supports(op, device, name, role) then list[#list + 1] = name end
    end
    return list
end

return M
