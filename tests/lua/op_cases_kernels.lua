--[[
op_cases_kernels.lua - the elementwise, reduction and softmax kernels called as the op
table's rows need them: straight through the C functions, every output new in its input's
dtype and on its input's device.

The functional forms of luatrain.ops.elementwise convert a bf16/f16 input to f32 before the
kernel runs (their results are f32 tensors), which would hide the low-precision kernels
from a row run in bf16 on a device; these wrappers leave the dtypes alone. Dims are
1-based as in the Lua API; negative ones count from the end.
]]
local ffi = require "ffi"
local lt = require "luatrain"
local core = require "luatrain.core"
local E = require "luatrain.ops.elementwise"

local C, check = core.C, core.check

local K = {}

-- A new tensor of `shape` (x's by default) in x's dtype (or `dtype`), on x's device.
function K.like(x, shape, dtype)
    return lt.empty(shape or x:shape(), { dtype = dtype or x.dtype, device = x.device })
end

-- The same, filled with NaN: an output element a kernel leaves unwritten shows.
function K.poisoned(x, shape, dtype)
    return K.like(x, shape, dtype):fill_(0 / 0)
end

local function unary_id(op) return (assert(E.unary_ops[op], op)) end
local function binary_id(op) return (assert(E.binary_ops[op], op)) end
local function reduce_id(op) return (assert(E.reduce_ops[op], op)) end

function K.unary(op, x)
    local out = K.like(x)
    check(C.lt_unary_forward(out, x, unary_id(op)))
    return out
end

function K.unary_backward(op, dout, x)
    local dx = K.like(dout)
    check(C.lt_unary_backward(dx, dout, x, unary_id(op)))
    return dx
end

-- numpy's broadcast of two shapes
local function broadcast(sa, sb)
    local n = math.max(#sa, #sb)
    local out = {}
    for i = 1, n do
        local a, b = sa[#sa - n + i] or 1, sb[#sb - n + i] or 1
        out[i] = a == 1 and b or a
    end
    return out
end

function K.binary(op, a, b)
    local out = K.like(a, broadcast(a:shape(), b:shape()))
    check(C.lt_binary_forward(out, a, b, binary_id(op)))
    return out
end

-- want_a / want_b false: that gradient is not asked for (NULL to the kernel).
function K.binary_backward(op, dout, a, b, want_a, want_b)
    local da = want_a ~= false and K.like(dout, a:shape()) or nil
    local db = want_b ~= false and K.like(dout, b:shape()) or nil
    check(C.lt_binary_backward(da, db, dout, a, b, binary_id(op)))
    return da, db
end

function K.scalar(op, x, s, reversed)
    local out = K.like(x)
    check(C.lt_scalar_forward(out, x, s, binary_id(op), reversed and 1 or 0))
    return out
end

function K.scalar_backward(op, dout, x, s, reversed)
    local dx = K.like(dout)
    check(C.lt_scalar_backward(dx, dout, x, s, binary_id(op), reversed and 1 or 0))
    return dx
end

-- dims: a dim, a list of dims, or nil for all of them. Returns the C form (0-based, in a
-- new int32 array), its length, and x's shape with those dims set to 1 (the keepdim shape).
local function reduce_dims(x, dims)
    local nd = x:dim()
    local list = {}
    if dims == nil then
        for d = 1, nd do list[d] = d end
    elseif type(dims) == "number" then
        list[1] = dims
    else
        for i, d in ipairs(dims) do list[i] = d end
    end
    local arr = ffi.new("int32_t[?]", math.max(#list, 1))
    local kshape = x:shape()
    for i, d in ipairs(list) do
        local z = d < 0 and nd + d or d - 1
        arr[i - 1] = z
        kshape[z + 1] = 1
    end
    return arr, #list, kshape
end

-- The shape without the reduced dims (the keepdim = false form).
local function dropped(x, dims)
    local arr, n, kshape = reduce_dims(x, dims)
    local gone, keep = {}, {}
    for i = 0, n - 1 do gone[arr[i] + 1] = true end
    for d = 1, #kshape do
        if not gone[d] then keep[#keep + 1] = kshape[d] end
    end
    return keep
end

function K.reduce(op, x, dims, keepdim)
    local arr, n, kshape = reduce_dims(x, dims)
    local out = K.like(x, kshape)
    check(C.lt_reduce_forward(out, x, n, arr, reduce_id(op)))
    if keepdim then return out end
    return out:view(dropped(x, dims))
end

-- dout and out in either form (keepdim or not).
function K.reduce_backward(op, dout, x, out, dims)
    local _, _, kshape = reduce_dims(x, dims)
    local dx = K.like(dout, x:shape())
    check(C.lt_reduce_backward(dx, dout:view(kshape), x, out and out:view(kshape) or nil,
        reduce_id(op)))
    return dx
end

-- Softmax and log-softmax over the last dim. out / dx: a given output (a view, or the
-- input itself for the in-place form) or nil for a new one.
function K.softmax(x, log_form, out)
    out = out or K.like(x)
    check((log_form and C.lt_log_softmax_forward or C.lt_softmax_forward)(out, x))
    return out
end

function K.softmax_backward(dout, y, log_form, dx)
    dx = dx or K.like(dout)
    check((log_form and C.lt_log_softmax_backward or C.lt_softmax_backward)(dx, dout, y))
    return dx
end

return K
