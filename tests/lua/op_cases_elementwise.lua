--[[
op_cases_elementwise.lua - rows of the op table (op_cases.lua appends them, and describes a
row) for the elementwise, scalar, reduction and softmax kernels. The rows call the kernels
through op_cases_kernels.lua, which keeps every output in its input's dtype, so a row run in
bf16 on a device runs the bf16 kernels.

Shapes: the first of each row's list is small, for the finite differences; the ones marked
big run only against the CPU on devices. They are the awkward sizes the kernels' paths
turn on: 1, odd, not a multiple of any block, long rows and columns, a gradient large enough
for several slabs of its temporary (over 2^24 elements), reductions that need chunking.

Inputs stay away from kinks and domain edges by more than the finite-difference step
(0.01): log/sqrt/rsqrt see positive numbers, reciprocal and division |x| >= 0.5, abs/relu
|x| >= 0.1, and max/min compare values drawn from two interleaved grids 0.1 apart, so no
perturbation changes which operand (or which element) wins. Shapes marked ties draw
quarter steps instead (many equal values), where max/min share their gradient: those run
on devices only.
]]
local ffi = require "ffi"
local lt = require "luatrain"
local K = require "op_cases_kernels"

local cases = {}
local function add(c) cases[#cases + 1] = c end

-- ---- inputs -------------------------------------------------------------------------------

-- f applied to every element of a new contiguous f32 CPU tensor t.
local function map(t, f)
    local p = ffi.cast("float*", t:data_ptr())
    for i = 0, t:numel() - 1 do p[i] = f(p[i]) end
    return t
end

local function randn(shape) return lt.randn(shape) end
local function positive(shape) return lt.rand(shape, { low = 0.5, high = 2 }) end

-- randn pushed away from 0: |x| >= m.
local function away(m)
    return function(shape)
        return map(lt.randn(shape), function(v) return v >= 0 and v + m or v - m end)
    end
end

-- Quarter steps: many equal values.
local function ties(shape)
    return map(lt.randn(shape), function(v) return math.floor(v * 4 + 0.5) / 4 end)
end

-- Values on the grid 0.2 k + offset (k in -10..9): two offsets 0.1 apart never tie.
local function grid(offset)
    return function(shape)
        return map(lt.empty(shape), function() return 0.2 * math.random(-10, 9) + offset end)
    end
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
    local p = ffi.cast("float*", x:data_ptr())
    for i = 1, n do p[i - 1] = 0.05 * perm[i] - 0.025 * n end
    return x
end

local function big(dims, extra)
    local s = { dims = dims, big = true }
    for k, v in pairs(extra or {}) do s[k] = v end
    return s
end

-- ---- unary ------------------------------------------------------------------------------

local unary_inputs = {
    neg = randn, exp = randn, log = positive, sqrt = positive, rsqrt = positive,
    abs = away(0.1), square = randn, reciprocal = away(0.5), sigmoid = randn,
    silu = randn, tanh = randn, relu = away(0.1), gelu = randn, sin = randn, cos = randn,
}

local unary_shapes = {
    { dims = { 3, 1, 7 } },
    big { 1 }, big { 7 }, big { 33 }, big { 1000 }, big { 257, 33 }, big { 3, 1, 5, 7 },
    big { 70001 },
}

local unary_names = {}
for name in pairs(unary_inputs) do unary_names[#unary_names + 1] = name end
table.sort(unary_names)

for _, name in ipairs(unary_names) do
    local make = unary_inputs[name]
    add {
        name = "unary " .. name,
        op = name,
        shapes = unary_shapes,
        inputs = function(s) return { x = make(s.dims) } end,
        forward = function(inp) return K.unary(name, inp.x) end,
        backward = function(inp, d) return { x = K.unary_backward(name, d, inp.x) } end,
        wrt = { "x" },
    }
end

-- ---- binary (broadcasting both ways) -------------------------------------------------------

local function binary_inputs(op, s)
    if s.ties then return ties(s.a), ties(s.b) end
    if op == "div" then return randn(s.a), away(0.5)(s.b) end
    if op == "pow" then return positive(s.a), lt.rand(s.b, { low = -1.5, high = 1.5 }) end
    if op == "maximum" or op == "minimum" then return grid(0.05)(s.a), grid(0.15)(s.b) end
    return randn(s.a), randn(s.b)
end

local function pair(a, b, extra)
    local s = { a = a, b = b, big = true }
    for k, v in pairs(extra or {}) do s[k] = v end
    return s
end

local binary_shapes = {
    { a = { 3, 1, 5 }, b = { 4, 5 } },
    { a = { 4, 5 }, b = { 2, 4, 1 } },
    { a = { 2, 3, 4 }, b = { 2, 3, 4 } },
    pair({ 257, 33 }, { 257, 33 }), pair({ 257, 33 }, { 33 }), pair({ 3, 1, 5 }, { 4, 1 }),
    pair({ 1 }, { 1000 }), pair({ 6, 1, 7 }, { 1, 5, 1 }), pair({ 70001 }, { 1 }),
    pair({ 2, 3, 4, 5 }, { 3, 1, 5 }), pair({ 33 }, { 257, 33 }),
}

local function shapes_plus(list, more)
    local out = {}
    for _, s in ipairs(list) do out[#out + 1] = s end
    for _, s in ipairs(more) do out[#out + 1] = s end
    return out
end

local binary_extra = {
    -- ties: the gradient splits half/half
    maximum = { pair({ 65, 33 }, { 65, 33 }, { ties = true }), pair({ 65, 33 }, { 33 }, { ties = true }) },
    minimum = { pair({ 65, 33 }, { 65, 33 }, { ties = true }), pair({ 65, 33 }, { 33 }, { ties = true }) },
    -- gradients of over 2^24 elements, several slabs of the temporary: b broadcast along
    -- the slabbed dim (partial sums added), and a broadcast along another dim
    mul = { pair({ 4100, 4096 }, { 4096 }), pair({ 4100, 1 }, { 4100, 4096 }) },
}

for _, op in ipairs({ "add", "sub", "mul", "div", "maximum", "minimum", "pow" }) do
    add {
        name = "binary " .. op,
        op = op,
        shapes = shapes_plus(binary_shapes, binary_extra[op] or {}),
        inputs = function(s)
            local a, b = binary_inputs(op, s)
            return { a = a, b = b }
        end,
        forward = function(inp) return K.binary(op, inp.a, inp.b) end,
        backward = function(inp, d)
            local da, db = K.binary_backward(op, d, inp.a, inp.b)
            local _, db_alone = K.binary_backward(op, d, inp.a, inp.b, false, true)
            return { a = da, b = db, ["b alone"] = db_alone }
        end,
        wrt = { "a", "b" },
    }
end

-- ---- scalar (both orientations) ----------------------------------------------------------

local scalar_inputs = {
    add = { randn, randn }, sub = { randn, randn }, mul = { randn, randn },
    div = { randn, away(0.5) }, pow = { positive, randn },
    maximum = { grid(0.05), grid(0.05) }, minimum = { grid(0.05), grid(0.05) },
}

-- The scalars of the device shapes: 2 takes pow's square shortcut.
local function scalar_values(op, reversed)
    if op == "pow" then return reversed and { 1.7, 0.6 } or { 2.0, 1.5 } end
    return { -1.25, 0.75 }
end

for _, op in ipairs({ "add", "sub", "mul", "div", "maximum", "minimum", "pow" }) do
    for rev = 0, 1 do
        local reversed = rev == 1
        local shapes = { { dims = { 4, 6 }, s = (op == "maximum" or op == "minimum") and 0.1 or 1.7 } }
        for _, dims in ipairs({ { 1 }, { 1001 }, { 257, 33 } }) do
            for _, s in ipairs(scalar_values(op, reversed)) do shapes[#shapes + 1] = big(dims, { s = s }) end
        end
        add {
            name = ("scalar %s, %s"):format(op, reversed and "s op x" or "x op s"),
            op = op,
            shapes = shapes,
            inputs = function(s) return { x = scalar_inputs[op][rev + 1](s.dims), s = s.s } end,
            forward = function(inp) return K.scalar(op, inp.x, inp.s, reversed) end,
            backward = function(inp, d) return { x = K.scalar_backward(op, d, inp.x, inp.s, reversed) } end,
            wrt = { "x" },
        }
    end
end

-- ---- reductions --------------------------------------------------------------------------

local reduce_dims = {
    { "dim 1", 1, false, { { 4096, 1000 }, { 3, 300001 }, { 2000001 } } },
    { "dim 2", 2, false, { { 4096, 1000 }, { 3, 300001 } } },
    { "dim 3", 3, false },
    { "dim -1 keepdim", -1, true },
    { "dims {1, 3}", { 1, 3 }, false, { { 64, 3, 5000 } } },
    { "dims {2, 3}", { 2, 3 }, false },
    { "dims {1, 2, 3}", { 1, 2, 3 }, false },
    { "dims {3, 1}", { 3, 1 }, false },
    { "no dims", {}, false },
    { "dims {3, -3} keepdim", { 3, -3 }, true },
    { "all dims", nil, false },
}

for _, op in ipairs({ "sum", "mean", "max", "min" }) do
    for _, rd in ipairs(reduce_dims) do
        local dims, keepdim = rd[2], rd[3]
        -- big ones: random values and ties over (7, 33, 257); sizes that need chunking
        local shapes = { { dims = { 3, 4, 5 } }, big { 7, 33, 257 }, big({ 7, 33, 257 }, { ties = true }) }
        for _, s in ipairs(rd[4] or {}) do shapes[#shapes + 1] = big(s) end
        add {
            name = ("reduce %s, %s"):format(op, rd[1]),
            op = op,
            shapes = shapes,
            inputs = function(s)
                if not s.big then return { x = distinct(s.dims) } end
                return { x = s.ties and ties(s.dims) or randn(s.dims) }
            end,
            forward = function(inp)
                local out = K.reduce(op, inp.x, dims, keepdim)
                return out, { out = out }
            end,
            backward = function(inp, d, saved)
                return { x = K.reduce_backward(op, d, inp.x, saved.out, dims) }
            end,
            wrt = { "x" },
        }
    end
end

-- ---- softmax ------------------------------------------------------------------------------

local softmax_shapes = {
    big { 1, 1 }, big { 5, 7 }, big { 33, 1000 }, big { 4, 1025 }, big { 3, 50001 },
    big { 2, 3, 257 }, big { 1, 1024 },
}

for _, kind in ipairs({ "softmax", "log_softmax" }) do
    local log_form = kind == "log_softmax"
    local shapes = shapes_plus({ { dims = { 3, 2, 7 }, std = log_form and 3 or 1 } }, softmax_shapes)
    add {
        name = kind .. " last dim",
        op = kind,
        shapes = shapes,
        inputs = function(s) return { x = lt.randn(s.dims) * (s.std or 2) } end,
        -- the in-place forms (out over x, dx over dout) are outputs too
        forward = function(inp)
            local y = K.softmax(inp.x, log_form)
            local x2 = inp.x:clone()
            K.softmax(x2, log_form, x2)
            return y, { y = y, ["out in place"] = x2 }
        end,
        backward = function(_, d, saved)
            local d2 = d:clone()
            K.softmax_backward(d2, saved.y, log_form, d2)
            return { x = K.softmax_backward(d, saved.y, log_form), ["x in place"] = d2 }
        end,
        wrt = { "x" },
    }

    -- Over the last dim of a transposed view, into a transposed output: strided rows and
    -- columns on both sides.
    add {
        name = kind .. " of a transposed view",
        op = kind,
        shapes = { { dims = { 6, 4 } }, big { 1000, 33 }, big { 1500, 7 } },
        inputs = function(s) return { x = lt.randn(s.dims) * 2 } end,
        forward = function(inp)
            local y = K.like(inp.x):t()
            K.softmax(inp.x:t(), log_form, y)
            return y, { y = y }
        end,
        backward = function(_, d, saved)
            return { x = K.softmax_backward(d, saved.y, log_form):t() }
        end,
        wrt = { "x" },
    }

    -- Over a middle dim: the method's transpose-contiguous-transpose path, and the backward
    -- kernel applied in the same transposed layout. The method computes in f32 whatever its
    -- input, so this row runs in f32 only.
    add {
        name = kind .. " over dim 1 of (5, 2, 3)",
        op = kind,
        dtypes = { "f32" },
        inputs = function() return { x = lt.randn(5, 2, 3) } end,
        forward = function(inp) return inp.x[kind](inp.x, 1) end,
        backward = function(inp, d)
            local y = inp.x[kind](inp.x, 1):transpose(1, -1):contiguous()
            local dt = d:transpose(1, -1):contiguous()
            return { x = K.softmax_backward(dt, y, log_form):transpose(1, -1):contiguous() }
        end,
        wrt = { "x" },
    }
end

return cases
