--[[
op_cases_elementwise.lua - rows of the op-case table (op_cases.lua appends them) for the
elementwise, scalar, reduction and softmax kernels. Each backward goes through the
functional forms of luatrain.ops.elementwise, i.e. through the C backward kernels.

Inputs stay away from kinks and domain edges by more than the finite-difference step
(0.01): log/sqrt/rsqrt/reciprocal/pow see positive numbers, abs/relu numbers with
|x| >= 0.1, and max/min compare values drawn from two interleaved grids 0.1 apart, so no
perturbation changes which operand (or which element) wins.
]]
local lt = require "luatrain"
local E = require "luatrain.ops.elementwise"

local cases = {}
local function add(c) cases[#cases + 1] = c end

-- Shape helpers take (3, 4) or ({3, 4}).
local function shape_of(...)
    if type(...) == "table" then return ... end
    return { ... }
end

local function positive(...) return lt.rand(shape_of(...), { low = 0.5, high = 2 }) end

-- randn pushed away from 0: |x| >= 0.1.
local function away_from_zero(...)
    local x = lt.randn(...)
    for i = 1, x:numel() do
        local v = x:get(i)
        x:set(i, v >= 0 and v + 0.1 or v - 0.1)
    end
    return x
end

-- Values on the grid 0.2 k + offset (k in -10..9): two offsets 0.1 apart never tie.
local function grid(offset, shape)
    local x = lt.empty(shape)
    for i = 1, x:numel() do x:set(i, 0.2 * math.random(-10, 9) + offset) end
    return x
end

-- Distinct values 0.05 apart in random order (max/min of a reduction is unique).
local function distinct(shape)
    local x = lt.empty(shape)
    local n = x:numel()
    local perm = {}
    for i = 1, n do perm[i] = i end
    for i = n, 2, -1 do
        local j = math.random(1, i)
        perm[i], perm[j] = perm[j], perm[i]
    end
    for i = 1, n do x:set(i, 0.05 * perm[i] - 0.025 * n) end
    return x
end

-- ---- unary ------------------------------------------------------------------------------

local unary_inputs = {
    neg = lt.randn, exp = lt.randn, log = positive, sqrt = positive, rsqrt = positive,
    abs = away_from_zero, square = lt.randn, reciprocal = positive, sigmoid = lt.randn,
    silu = lt.randn, tanh = lt.randn, relu = away_from_zero, gelu = lt.randn,
    sin = lt.randn, cos = lt.randn,
}
local unary_names = {}
for name in pairs(E.unary_ops) do unary_names[#unary_names + 1] = name end
table.sort(unary_names)

for _, name in ipairs(unary_names) do
    local make = unary_inputs[name]
    add {
        name = "unary " .. name,
        inputs = function() return { x = make(3, 1, 7) } end,
        forward = function(inp) return E.unary_forward(name, inp.x) end,
        backward = function(inp, d) return { x = E.unary_backward(name, d, inp.x) } end,
        wrt = { "x" },
    }
end

-- ---- binary (broadcasting both ways) -------------------------------------------------------

local function binary_inputs(op, sa, sb)
    if op == "div" then return lt.randn(sa), positive(sb) end
    if op == "pow" then return positive(sa), lt.rand(sb, { low = -1.5, high = 1.5 }) end
    if op == "maximum" or op == "minimum" then return grid(0.05, sa), grid(0.15, sb) end
    return lt.randn(sa), lt.randn(sb)
end

local binary_shapes = {
    { "a (3,1,5) b (4,5)", { 3, 1, 5 }, { 4, 5 } },
    { "a (4,5) b (2,4,1)", { 4, 5 }, { 2, 4, 1 } },
    { "same shape (2,3,4)", { 2, 3, 4 }, { 2, 3, 4 } },
}

for _, op in ipairs({ "add", "sub", "mul", "div", "maximum", "minimum", "pow" }) do
    for _, sh in ipairs(binary_shapes) do
        add {
            name = ("binary %s, %s"):format(op, sh[1]),
            inputs = function()
                local a, b = binary_inputs(op, sh[2], sh[3])
                return { a = a, b = b }
            end,
            forward = function(inp) return E.binary_forward(op, inp.a, inp.b) end,
            backward = function(inp, d)
                local da, db = E.binary_backward(op, d, inp.a, inp.b)
                return { a = da, b = db }
            end,
            wrt = { "a", "b" },
        }
    end
end

-- ---- scalar (both orientations) ----------------------------------------------------------

local scalar_inputs = {
    add = { lt.randn, lt.randn }, sub = { lt.randn, lt.randn }, mul = { lt.randn, lt.randn },
    div = { lt.randn, positive }, pow = { positive, lt.randn },
    maximum = { function(...) return grid(0.05, shape_of(...)) end, function(...) return grid(0.05, shape_of(...)) end },
    minimum = { function(...) return grid(0.05, shape_of(...)) end, function(...) return grid(0.05, shape_of(...)) end },
}

for _, op in ipairs({ "add", "sub", "mul", "div", "maximum", "minimum", "pow" }) do
    for rev = 0, 1 do
        local s = (op == "maximum" or op == "minimum") and 0.1 or 1.7
        local reversed = rev == 1
        add {
            name = ("scalar %s, %s"):format(op, reversed and "s op x" or "x op s"),
            inputs = function() return { x = scalar_inputs[op][rev + 1](4, 6) } end,
            forward = function(inp) return E.scalar_forward(op, inp.x, s, reversed) end,
            backward = function(inp, d) return { x = E.scalar_backward(op, d, inp.x, s, reversed) } end,
            wrt = { "x" },
        }
    end
end

-- ---- reductions --------------------------------------------------------------------------

local reduce_dims = {
    { "dim 2", 2, false },
    { "dim -1 keepdim", -1, true },
    { "dims {1, 3}", { 1, 3 }, false },
    { "dims {3, -3} keepdim", { 3, -3 }, true },
    { "all dims", nil, false },
}

for _, op in ipairs({ "sum", "mean", "max", "min" }) do
    for _, rd in ipairs(reduce_dims) do
        local dims, keepdim = rd[2], rd[3]
        add {
            name = ("reduce %s, %s"):format(op, rd[1]),
            inputs = function() return { x = distinct({ 3, 4, 5 }) } end,
            forward = function(inp) return E.reduce_forward(op, inp.x, dims, keepdim) end,
            backward = function(inp, d)
                local out = E.reduce_forward(op, inp.x, dims, keepdim)
                return { x = E.reduce_backward(op, d, inp.x, out, dims) }
            end,
            wrt = { "x" },
        }
    end
end

-- ---- softmax ------------------------------------------------------------------------------

add {
    name = "softmax last dim",
    inputs = function() return { x = lt.randn(3, 2, 7) } end,
    forward = function(inp) return E.softmax_forward(inp.x) end,
    backward = function(inp, d)
        return { x = E.softmax_backward(d, E.softmax_forward(inp.x)) }
    end,
    wrt = { "x" },
}

add {
    name = "log_softmax last dim",
    inputs = function() return { x = lt.randn(3, 2, 7) * 3 } end,
    forward = function(inp) return E.log_softmax_forward(inp.x) end,
    backward = function(inp, d)
        return { x = E.log_softmax_backward(d, E.log_softmax_forward(inp.x)) }
    end,
    wrt = { "x" },
}

-- Over a middle dim: the method's transpose-contiguous-transpose path, and the backward
-- kernel applied in the same transposed layout.
for _, kind in ipairs({ "softmax", "log_softmax" }) do
    add {
        name = kind .. " over dim 1 of (5, 2, 3)",
        inputs = function() return { x = lt.randn(5, 2, 3) } end,
        forward = function(inp) return inp.x[kind](inp.x, 1) end,
        backward = function(inp, d)
            local y = inp.x[kind](inp.x, 1):transpose(1, -1):contiguous()
            local dt = d:transpose(1, -1):contiguous()
            local g = kind == "softmax" and E.softmax_backward(dt, y) or E.log_softmax_backward(dt, y)
            return { x = g:transpose(1, -1):contiguous() }
        end,
        wrt = { "x" },
    }
end

return cases
