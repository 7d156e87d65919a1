--[[
test_elementwise.lua - the Tensor methods and operators of luatrain.ops.elementwise: values
against plain Lua arithmetic, broadcasting, in-place forms, reductions with dims, softmax,
the functional forms writing into given buffers, and the error messages.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local E = require "luatrain.ops.elementwise"

lt.manual_seed(7)

-- Elementwise check of tensor t against fn(i) (flat 1-based index) with a tolerance.
local function each_near(t, fn, rtol, atol, msg)
    for i = 1, t:numel() do
        T.near(t:get(i), fn(i), rtol or 1e-6, atol or 1e-6, (msg or "") .. " element " .. i)
    end
end

local a = lt.tensor({ { 1, -2, 3 }, { 0.5, 4, -6 } })
local b = lt.tensor({ { 2, 0.25, -1 }, { 3, -0.5, 8 } })
local av, bv = {}, {}
for i = 1, 6 do av[i], bv[i] = a:get(i), b:get(i) end

T.test("operators with tensors and numbers on either side", function()
    each_near(a + 1, function(i) return av[i] + 1 end)
    each_near(1 + a, function(i) return av[i] + 1 end)
    each_near(a - 1, function(i) return av[i] - 1 end)
    each_near(1 - a, function(i) return 1 - av[i] end)
    each_near(2 * a, function(i) return 2 * av[i] end)
    each_near(a * 2, function(i) return 2 * av[i] end)
    each_near(a / b, function(i) return av[i] / bv[i] end)
    each_near(a / 4, function(i) return av[i] / 4 end)
    each_near(2 / b, function(i) return 2 / bv[i] end)
    each_near(-a, function(i) return -av[i] end)
    each_near(a ^ 2, function(i) return av[i] ^ 2 end)
    each_near(2 ^ a, function(i) return 2 ^ av[i] end)
    each_near(b:abs() ^ 0.5, function(i) return math.abs(bv[i]) ^ 0.5 end)
    each_near(a * b - a / 2, function(i) return av[i] * bv[i] - av[i] / 2 end)
    local r = a + b
    T.eq(r.dtype, "f32")
    T.eq(r:shape(), { 2, 3 })
end)

T.test("broadcasting shapes", function()
    local x, y = lt.randn(3, 1), lt.randn(1, 4)
    local z = x + y
    T.eq(z:shape(), { 3, 4 })
    for i = 1, 3 do
        for j = 1, 4 do T.near(z[i][j], x[i][1] + y[1][j], 1e-6, 1e-6) end
    end
    T.eq((lt.randn(2, 3, 1, 5) * lt.randn(4, 1)):shape(), { 2, 3, 4, 5 })
    T.eq((lt.randn(5) - lt.randn(2, 5)):shape(), { 2, 5 })
    local s = lt.tensor(3) -- 0-dim
    each_near(a * s, function(i) return 3 * av[i] end)
    T.raises(function() return lt.randn(2, 3) + lt.randn(4) end,
        "add: shapes (2, 3) and (4) do not broadcast (dim 2: 3 vs 4)", true)
    T.raises(function() return lt.randn(2, 3) * "x" end, "expected a tensor or a number")
end)

T.test("unary methods", function()
    local p = lt.tensor({ 0.5, 1, 2.5 })
    local function sig(x) return 1 / (1 + math.exp(-x)) end
    local function gelu(x)
        return 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ^ 3)))
    end
    local checks = {
        exp = math.exp, log = math.log, sqrt = math.sqrt, rsqrt = function(x) return 1 / math.sqrt(x) end,
        abs = math.abs, square = function(x) return x * x end, reciprocal = function(x) return 1 / x end,
        sigmoid = sig, silu = function(x) return x * sig(x) end, tanh = math.tanh,
        relu = function(x) return math.max(x, 0) end, gelu = gelu, sin = math.sin, cos = math.cos,
        neg = function(x) return -x end,
    }
    for name, fn in pairs(checks) do
        local src = (name == "log" or name:find("sqrt") or name == "reciprocal") and p or a
        local r = src[name](src)
        each_near(r, function(i) return fn(src:get(i)) end, 2e-6, 1e-6, name)
        local c = src:clone()
        T.ok(c[name .. "_"](c) == c, name .. "_ returns self")
        each_near(c, function(i) return fn(src:get(i)) end, 2e-6, 1e-6, name .. "_")
    end
    each_near(a:clamp(-1, 2), function(i) return math.min(math.max(av[i], -1), 2) end)
    each_near(a:clamp(nil, 0), function(i) return math.min(av[i], 0) end)
    each_near(a:maximum(b), function(i) return math.max(av[i], bv[i]) end)
    each_near(a:minimum(0), function(i) return math.min(av[i], 0) end)
    each_near(a:max(b), function(i) return math.max(av[i], bv[i]) end)
end)

T.test("in-place forms", function()
    local x = a:clone()
    T.ok(x:add_(b) == x)
    each_near(x, function(i) return av[i] + bv[i] end)
    x:sub_(b):mul_(2):div_(4)
    each_near(x, function(i) return av[i] / 2 end)
    x:add_(1):sub_(0.5):mul_(b):div_(b)
    each_near(x, function(i) return av[i] / 2 + 0.5 end, 1e-6, 1e-6)
    local y = a:clone()
    y:add_(b, 0.5)
    each_near(y, function(i) return av[i] + 0.5 * bv[i] end)
    y:sub_(b, 0.5)
    each_near(y, function(i) return av[i] end)
    y:axpby_(2, b, -1)
    each_near(y, function(i) return 2 * bv[i] - av[i] end)
    local row = lt.tensor({ 10, 20, 30 })
    local z = a:clone():add_(row) -- (2, 3) += (3)
    each_near(z, function(i) return av[i] + row:get((i - 1) % 3 + 1) end)
    z:pow_(2)
    each_near(z, function(i) return (av[i] + row:get((i - 1) % 3 + 1)) ^ 2 end, 1e-6)
    -- The broadcast result must fit self.
    T.raises(function() row:clone():add_(a) end, "add: out has shape (3) but a (3) and b (2, 3)", true)
    T.raises(function() lt.arange(3):add_(1) end, "add_: in-place ops need an f32, bf16 or f16 tensor, got i64", true)
    T.raises(function() lt.arange(3):exp_() end, "exp_: in-place ops need an f32, bf16 or f16 tensor", true)
end)

T.test("integer inputs become f32", function()
    local i = lt.arange(5)
    local r = i * 2
    T.eq(r.dtype, "f32")
    T.eq(r:totable(), { 0, 2, 4, 6, 8 })
    T.eq((i + i).dtype, "f32")
    T.eq(i:sum():item(), 10)
    T.eq(i:sum().dtype, "f32")
    T.eq(i:argmax():item(), 4)
    T.eq(lt.tensor({ 1, 2 }, "bf16"):exp().dtype, "f32")
end)

T.test("sum / mean over dims", function()
    local x = lt.tensor({ { { 1, 2 }, { 3, 4 }, { 5, 6 } }, { { 7, 8 }, { 9, 10 }, { 11, 12 } } })
    local s = x:sum()
    T.eq(s:dim(), 0)
    T.eq(s:item(), 78)
    T.eq(x:sum(1):totable(), { { 8, 10 }, { 12, 14 }, { 16, 18 } })
    T.eq(x:sum(-1):totable(), { { 3, 7, 11 }, { 15, 19, 23 } })
    T.eq(x:sum(2, true):shape(), { 2, 1, 2 })
    T.eq(x:sum({ 1, 3 }):totable(), { 18, 26, 34 })
    T.eq(x:sum({ 1, 3 }, true):shape(), { 1, 3, 1 })
    T.eq(x:mean():item(), 6.5)
    T.eq(x:mean(2):totable(), { { 3, 4 }, { 9, 10 } })
    T.eq(x:mean({ -1, -2 }):totable(), { 3.5, 9.5 })
    -- A transposed view reduces the same numbers.
    T.eq(x:transpose(1, 3):sum(3):totable(), { { 8, 12, 16 }, { 10, 14, 18 } })
    T.raises(function() x:sum(4) end, "dim 4 out of range")
    T.raises(function() x:sum({ 1, -3 }) end, "sum: dim -3 is listed twice (it is dim 1)", true)
    T.raises(function() x:sum("a") end, "dim must be a number or a table")
end)

T.test("max / min / argmax", function()
    local x = lt.tensor({ { 3, 7, 7, 1 }, { -2, -2, 5, 0 }, { 4, 9, 2, 9 } })
    T.eq(x:max():dim(), 0)
    T.eq(x:max():item(), 9)
    T.eq(x:min():item(), -2)
    local v, idx = x:max(2)
    T.eq(v:totable(), { 7, 5, 9 })
    T.eq(idx.dtype, "i64")
    T.eq(idx:totable(), { 1, 2, 1 }) -- 0-based indices as torch gives, first of ties
    local vm, im = x:min(1)
    T.eq(vm:totable(), { -2, -2, 2, 0 })
    T.eq(im:totable(), { 1, 1, 2, 1 })
    local vk, ik = x:max(-1, true)
    T.eq(vk:shape(), { 3, 1 })
    T.eq(ik:shape(), { 3, 1 })
    T.eq(x:argmax(1):totable(), { 2, 2, 0, 2 })
    T.eq(x:argmin(2):totable(), { 3, 0, 2 })
    T.eq(x:argmax():item(), 9) -- flat index of the first 9
    T.eq(x:amax({ 1, 2 }):item(), 9)
    T.eq(x:amin(1, true):totable(), { { -2, -2, 2, 0 } })
    local n = lt.tensor({ 1, 0 / 0, 3 })
    T.ok(n:max():item() ~= n:max():item(), "max propagates NaN")
    T.eq(n:argmax():item(), 1)
    T.raises(function() x:max({ 1, 2 }) end, "use amax")
    T.raises(function() lt.empty(0):max() end, "over a dim of size 0")
end)

T.test("softmax / log_softmax", function()
    local x = lt.randn(4, 5, 6)
    local y = x:softmax()
    local rows = y:sum(-1)
    each_near(rows, function() return 1 end, 1e-6, 1e-6, "rows sum to 1")
    T.ok(y:allclose(x:softmax(-1)) and y:allclose(x:softmax(3)))
    T.ok(x:log_softmax():exp():allclose(y, 1e-5, 1e-7))
    -- A middle dim: the same as the last dim of the transposed tensor.
    local y2 = x:softmax(2)
    T.eq(y2:shape(), { 4, 5, 6 })
    T.ok(y2:is_contiguous())
    T.ok(y2:transpose(2, 3):allclose(x:transpose(2, 3):softmax(-1), 1e-6, 1e-7))
    each_near(y2:sum(2), function() return 1 end, 1e-6, 1e-6)
    local big = lt.tensor({ 1000, -1000, 999 })
    T.ok(not big:softmax():has_nonfinite())
    T.near(big:log_softmax():get(1), -math.log(1 + math.exp(-1)), 1e-6)
    T.raises(function() x:softmax(4) end, "dim 4 out of range")
end)

T.test("norm, sum_squares, allclose, has_nonfinite", function()
    T.near(a:norm(), math.sqrt(1 + 4 + 9 + 0.25 + 16 + 36), 1e-12)
    T.near(a:t():norm(), a:norm(), 1e-12)
    T.eq(type(a:norm()), "number")
    T.ok(a:allclose(a:clone()))
    T.ok(a:allclose(a + 1e-7))
    T.ok(not a:allclose(a + 1e-3))
    T.ok(a:allclose(a + 1e-3, 0, 2e-3))
    T.ok(lt.ones(2, 3):allclose(lt.ones(3)), "broadcast other")
    T.ok(lt.ones(2, 3):allclose(1))
    local n = a:clone()
    n[1][2] = 0 / 0
    T.ok(not n:allclose(n), "NaN is never close")
    T.ok(n:has_nonfinite())
    T.ok(not a:has_nonfinite())
    T.ok((a / 0):has_nonfinite())
    T.ok(not lt.empty(0):has_nonfinite())
end)

T.test("functional forms write into given buffers", function()
    local x, y = lt.randn(8, 16), lt.randn(16)
    local out = lt.empty(8, 16)
    local r = E.binary_forward("mul", x, y, out)
    T.ok(r == out)
    T.ok((x * y):allclose(out))
    T.ok(E.unary_forward("exp", x, out) == out)
    T.ok(x:exp():allclose(out))
    local buf = lt.empty(8, 1)
    local s = E.reduce_forward("sum", x, 2, true, buf)
    T.ok(s == buf)
    T.ok(s:allclose(x:sum(2, true)))
    -- Backward with one side skipped, a scalar side, squeezed dout for a reduction.
    local d = lt.randn(8, 16)
    local da, db = E.binary_backward("mul", d, x, y, nil, false)
    T.ok(db == nil)
    T.ok(da:allclose(d * y))
    local _, dbo = E.binary_backward("mul", d, x, y, false)
    T.ok(dbo:allclose((d * x):sum(1), 1e-5, 1e-5))
    local ds = E.binary_backward("pow", d, x:abs() + 0.5, 3)
    T.ok(ds:allclose(d * 3 * (x:abs() + 0.5) ^ 2, 1e-5, 1e-5))
    local g = E.reduce_backward("mean", lt.ones(8), x, nil, 2)
    each_near(g, function() return 1 / 16 end)
    local m = x:amax(1)
    local gm = E.reduce_backward("max", lt.ones(16), x, m, 1)
    T.ok(gm:sum():item() == 16)
    local yv = x:softmax()
    local gs = E.softmax_backward(d, yv)
    T.ok(gs:sum(-1):allclose(lt.zeros(8), 0, 1e-5), "softmax gradient rows sum to 0")
    local acc = lt.zeros(8, 16)
    E.axpby(acc, 2, x, 1)
    E.axpby(acc, 1, x, 1)
    T.ok(acc:allclose(x * 3))
end)

T.test("error messages from the kernels", function()
    local x = lt.randn(2, 3)
    T.raises(function() E.binary_forward("mul", x, x, lt.empty(3, 2)) end,
        "mul: out has shape (3, 2) but a (2, 3) and b (2, 3) broadcast to (2, 3)", true)
    T.raises(function() E.unary_forward("exp", x, lt.empty({ 2, 3 }, { dtype = "i64" })) end,
        "exp: out must be f32, bf16 or f16, got i64", true)
    T.raises(function() E.unary_forward("nope", x) end, "unknown unary op nope")
    T.raises(function() E.reduce_forward("sum", x, 1, true, lt.empty(2, 1)) end,
        "sum: out has shape (2, 1) but x (2, 3) needs the keepdim shape", true)
    T.raises(function() E.softmax_backward(lt.randn(2, 4), x) end,
        "softmax_backward: dout has shape (2, 4) but out has shape (2, 3)", true)
    T.raises(function() E.axpby(x, 1, lt.randn(4), 1) end, "axpby: x has shape (4)", true)
    T.raises(function() x:expand(4, 2, 3):add_(1) end, "broadcast view")
end)

T.done()
