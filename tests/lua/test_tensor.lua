--[[
test_tensor.lua - the Tensor API as users type it: construction (lt.tensor, zeros, ones,
empty, full, randn, rand, randint, arange) with shapes as varargs or tables and options
tables; queries; views that share storage; copies and dtype conversion (every pair, against
a rounding reference written here in Lua doubles); indexing and assignment; item/totable;
operators and reductions; printing; the RNG; memory accounting; released tensors; tensors
with 0-size dims; and the error messages users see.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local ffi = require "ffi"

lt.manual_seed(11)

local DTYPES = { "f32", "bf16", "f16", "i32", "i64", "u8", "i8" }
local BYTES = { f32 = 4, bf16 = 2, f16 = 2, i32 = 4, i64 = 8, u8 = 1, i8 = 1 }

-- Every element of t (any shape) against a flat Lua list, exactly.
local function values_eq(t, list, msg)
    T.eq(t:numel(), #list, (msg or "") .. " numel")
    for i = 1, #list do T.eq(t:get(i), list[i], (msg or "") .. " element " .. i) end
end

-- ---- a rounding reference in Lua doubles --------------------------------------------------

local fbuf = ffi.new("float[1]")
local function to_f32(v)
    fbuf[0] = v
    return fbuf[0]
end

-- Round half to even.
local function rne(q)
    local f = math.floor(q)
    local d = q - f
    if d > 0.5 then return f + 1 end
    if d < 0.5 then return f end
    return f % 2 == 0 and f or f + 1
end

-- A binary float with `bits` significant bits, smallest normal exponent emin (value
-- 2^emin) and largest finite value maxv; values rounding above maxv become inf.
local function round_float(v, bits, emin, maxv)
    if v ~= v or v == 0 or v == math.huge or v == -math.huge then return v end
    local _, e = math.frexp(v) -- v = m * 2^e, 0.5 <= |m| < 1
    local exp = e - 1          -- v = 1.xxx * 2^exp
    if exp < emin then exp = emin end
    local ulp = 2 ^ (exp - (bits - 1))
    local r = rne(v / ulp) * ulp
    if math.abs(r) > maxv then return r > 0 and math.huge or -math.huge end
    return r
end

-- Float to integer: truncation toward zero, saturating, NaN -> 0 (the documented rule).
local function to_int(v, lo, hi)
    if v ~= v then return 0 end
    if v <= lo then return lo end
    if v >= hi then return hi end
    return v >= 0 and math.floor(v) or math.ceil(v)
end

local function round_to(dtype, v)
    if dtype == "f32" then return to_f32(v) end
    if dtype == "bf16" then return round_float(to_f32(v), 8, -126, 3.3895313892515355e38) end
    if dtype == "f16" then return round_float(to_f32(v), 11, -14, 65504) end
    if dtype == "i32" then return to_int(v, -2147483648, 2147483647) end
    -- i64 saturates at the largest double below 2^63 (2^63 - 1 is not a double)
    if dtype == "i64" then return to_int(v, -2 ^ 63, 9223372036854774784) end
    if dtype == "u8" then return to_int(v, 0, 255) end
    if dtype == "i8" then return to_int(v, -128, 127) end
    error("no dtype " .. dtype)
end

local function same_value(a, b)
    if a ~= a then return b ~= b end
    return a == b
end

-- ---- construction ---------------------------------------------------------------------------

T.test("lt.tensor infers the shape from the nesting", function()
    local t = lt.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
    T.eq(t:shape(), { 2, 3 })
    T.eq(t.dtype, "f32")
    T.eq(t.device, "cpu")
    values_eq(t, { 1, 2, 3, 4, 5, 6 })
    local c = lt.tensor({ { { 1 }, { 2 } }, { { 3 }, { 4 } }, { { 5 }, { 6 } } })
    T.eq(c:shape(), { 3, 2, 1 })
    values_eq(c, { 1, 2, 3, 4, 5, 6 })
    local s = lt.tensor(2.5)
    T.eq(s:shape(), {})
    T.eq(s:dim(), 0)
    T.eq(s:numel(), 1)
    T.eq(s:item(), 2.5)
    local e = lt.tensor({})
    T.eq(e:shape(), { 0 })
    T.eq(e:numel(), 0)
    local i = lt.tensor({ 1, 2 ^ 40 + 1, -7 }, "i64")
    T.eq(i.dtype, "i64")
    T.eq(i[2], 2 ^ 40 + 1)
    T.eq(lt.tensor({ 1, 2 }, { dtype = "bf16" }).dtype, "bf16")
    T.eq(lt.tensor({ 1, 2 }, "float16").dtype, "f16", "dtype alias")
    local copy = lt.tensor(t)
    T.ok(copy:equal(t) and not copy:same_storage(t), "lt.tensor(tensor) copies")
end)

T.test("lt.tensor rejects ragged nesting and non-numbers", function()
    T.raises(function() lt.tensor({ { 1, 2 }, { 3 } }) end,
        "lt.tensor: ragged nesting at [2] (expected 2 entries)", true)
    T.raises(function() lt.tensor({ { 1, 2 }, 3 }) end, "ragged nesting at [2]", true)
    T.raises(function() lt.tensor({ 1, "a" }) end, "lt.tensor: element [2] is string, not a number", true)
    T.raises(function() lt.tensor({ { 1, 2 }, { 3, true } }) end, "element [2][2] is boolean, not a number", true)
    T.raises(function() lt.tensor("12") end, "expected a number or a nested table of numbers, got string")
    T.raises(function() lt.tensor({ 1, 2 }, "f64") end, "unknown dtype f64")
end)

T.test("zeros/ones/empty/full with shapes as varargs or tables and an options table", function()
    for _, dt in ipairs(DTYPES) do
        local a = lt.zeros(2, 3, { dtype = dt })
        local b = lt.zeros({ 2, 3 }, { dtype = dt })
        T.eq(a:shape(), { 2, 3 }, dt)
        T.eq(b:shape(), { 2, 3 }, dt)
        T.eq(a.dtype, dt)
        T.eq(b.dtype, dt)
        T.eq(a.device, "cpu")
        values_eq(a, { 0, 0, 0, 0, 0, 0 }, dt)
        local o = lt.ones(3, { dtype = dt })
        values_eq(o, { 1, 1, 1 }, dt .. " ones")
        local o2 = lt.ones({ 1, 2 }, { dtype = dt, device = "cpu" })
        values_eq(o2, { 1, 1 }, dt .. " ones table")
        local e = lt.empty(4, 1, { dtype = dt })
        T.eq(e:shape(), { 4, 1 })
        T.eq(e:nbytes(), 4 * BYTES[dt], dt .. " nbytes")
        local f = lt.full({ 2, 2 }, 7, { dtype = dt })
        values_eq(f, { 7, 7, 7, 7 }, dt .. " full")
    end
    T.eq(lt.zeros(2, 3).dtype, "f32", "default dtype")
    T.eq(lt.zeros().dim(lt.zeros()), 0, "no shape: a 0-dim tensor")
    T.eq(lt.full({ 3 }, -1.5):totable(), { -1.5, -1.5, -1.5 })
    local shp = lt.zeros(4, 5):shape()
    T.eq(lt.ones(shp):shape(), { 4, 5 }, "a :shape() table as the shape")
end)

T.test("full never turns its value or options into part of the shape", function()
    -- lt.full(shape, value, opts): lt.full(2, 2, 7) must not silently make a (2, 7)
    -- tensor of 2s; either it means shape (2, 2) filled with 7, or it is an error.
    local ok, r = pcall(lt.full, 2, 2, 7)
    if ok then
        T.eq(r:shape(), { 2, 2 }, "lt.full(2, 2, 7) shape")
        values_eq(r, { 7, 7, 7, 7 }, "lt.full(2, 2, 7) values")
    else
        T.ok(tostring(r):find("full"), "the error should name full: " .. tostring(r))
    end
end)

T.test("randn/rand/randint/arange shapes, options and ranges", function()
    T.eq(lt.randn(2, 3):shape(), { 2, 3 })
    T.eq(lt.randn({ 2, 3 }):shape(), { 2, 3 })
    T.eq(lt.randn(2, 3, { dtype = "bf16" }).dtype, "bf16")
    T.eq(lt.rand({ 4 }, { dtype = "f16" }).dtype, "f16")
    local r = lt.rand(4000)
    T.ok(r:min():item() >= 0 and r:max():item() < 1, "rand in [0, 1)")
    local r2 = lt.rand(4000, { low = 2, high = 3 })
    T.ok(r2:min():item() >= 2 and r2:max():item() < 3, "rand in [low, high)")
    local n = lt.randn(20000)
    T.near(n:mean():item(), 0, 0, 0.03, "randn mean")
    T.near(math.sqrt((n * n):mean():item()), 1, 0.03, 0, "randn std")
    local n2 = lt.randn(20000, { mean = 3, std = 2 })
    T.near(n2:mean():item(), 3, 0, 0.06, "randn mean option")
    local ri = lt.randint(-2, 3, { 3000 })
    T.eq(ri.dtype, "i64")
    T.eq(ri:min():item(), -2)
    T.eq(ri:max():item(), 2)
    T.eq(lt.randint(0, 5, { 2, 3 }, { dtype = "i32" }).dtype, "i32")
    T.eq(lt.randint(0, 5, { 2, 3 }):shape(), { 2, 3 })
    T.eq(lt.arange(5):totable(), { 0, 1, 2, 3, 4 })
    T.eq(lt.arange(5).dtype, "i64")
    T.eq(lt.arange(2, 5):totable(), { 2, 3, 4 })
    T.eq(lt.arange(5, 0, -2):totable(), { 5, 3, 1 })
    T.eq(lt.arange(0, 1, 0.25):totable(), { 0, 0.25, 0.5, 0.75 })
    T.eq(lt.arange(0, 1, 0.25).dtype, "f32")
    T.eq(lt.arange(3, { dtype = "f32" }).dtype, "f32")
    T.eq(lt.arange(1, 3, { dtype = "i32" }).dtype, "i32")
    T.eq(lt.arange(0):numel(), 0)
    T.raises(function() lt.arange(0, 3, 0) end, "step must not be 0")
end)

T.test("randint takes its shape as varargs too", function()
    local t = lt.randint(0, 5, 3, 4)
    T.eq(t:shape(), { 3, 4 })
    local u = lt.randint(0, 5, 3, 4, { dtype = "i32" })
    T.eq(u:shape(), { 3, 4 })
    T.eq(u.dtype, "i32")
end)

T.test("shape errors and option errors are clear", function()
    T.raises(function() lt.zeros(1.5, 2) end, "shape entry 1 is 1.5, not an integer", true)
    T.raises(function() lt.zeros(2, "x") end, "shape entry 2 is x, not an integer", true)
    T.raises(function() lt.zeros(-1, 2) end, "negative size")
    T.raises(function() lt.zeros(2, { dtype = "f64" }) end,
        "zeros: unknown dtype f64 (expected one of f32, bf16, f16, i32, i64, u8, i8)", true)
    T.raises(function() lt.zeros(2, { device = "tpu" }) end, 'unknown device tpu')
    if not lt.cuda.is_available() then
        T.raises(function() lt.zeros(2, { device = "cuda" }) end, "CUDA")
    end
    T.raises(function() lt.zeros(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1) end,
        "at most")
end)

-- ---- queries --------------------------------------------------------------------------------

T.test("shape, size, stride, dim, numel, dtype, device", function()
    local t = lt.zeros(2, 3, 4)
    T.eq(t:shape(), { 2, 3, 4 })
    T.eq(t:size(), { 2, 3, 4 })
    T.eq(t:size(1), 2)
    T.eq(t:size(-1), 4)
    T.eq(t:size(-3), 2)
    T.eq(t:stride(), { 12, 4, 1 })
    T.eq(t:stride(1), 12)
    T.eq(t:stride(-2), 4)
    T.eq(t:dim(), 3)
    T.eq(t:numel(), 24)
    T.eq(#t, 2)
    T.eq(t.dtype, "f32")
    T.eq(t.device, "cpu")
    T.ok(t:is_contiguous())
    T.eq(lt.zeros(3, { dtype = "i64" }).dtype, "i64")
    T.raises(function() t:size(4) end, "size: dim 4 out of range for a 3-dim tensor (dims are 1..3 or -3..-1)", true)
    T.raises(function() t:size(0) end, "size: dim 0 out of range")
    T.raises(function() t:stride(-4) end, "stride: dim -4 out of range", true)
    T.eq(t.no_such_field, nil)
    T.raises(function() t.foo = 1 end, 'cannot set field "foo" on a tensor', true)
end)

-- ---- views ----------------------------------------------------------------------------------

local function base24()
    return lt.arange(24, { dtype = "f32" }):view(2, 3, 4) -- value = flat index (0-based)
end

T.test("view and reshape (with -1) share storage", function()
    local x = base24()
    local v = x:view(-1, 4)
    T.eq(v:shape(), { 6, 4 })
    T.ok(v:same_storage(x))
    T.eq(v[5][3], 18)
    local v2 = x:view({ 4, -1 })
    T.eq(v2:shape(), { 4, 6 })
    local r = x:reshape(6, -1)
    T.eq(r:shape(), { 6, 4 })
    T.ok(r:same_storage(x), "reshape of a contiguous tensor is a view")
    v[1][1] = 100
    T.eq(x[1][1][1], 100, "writes through a view reach the base")
    T.raises(function() x:view(5, -1) end, "cannot infer -1", true)
    T.raises(function() x:view(-1, -1) end, "only one size may be -1", true)
    T.raises(function() x:view(5, 5) end, "reshape")
end)

T.test("view of a non-viewable tensor fails; reshape copies", function()
    local x = base24()
    local tt = x:transpose(1, 2) -- (3, 2, 4), not contiguous
    T.ok(not tt:is_contiguous())
    T.raises(function() tt:view(-1) end, "do not allow a view")
    local r = tt:reshape(-1)
    T.eq(r:shape(), { 24 })
    T.ok(not r:same_storage(x), "reshape of a non-viewable tensor copies")
    -- tt[i][j][k] = x[j][i][k] = (j-1)*12 + (i-1)*4 + (k-1)
    local expect = {}
    for i = 1, 3 do for j = 1, 2 do for k = 1, 4 do
        expect[#expect + 1] = (j - 1) * 12 + (i - 1) * 4 + (k - 1)
    end end end
    values_eq(r, expect, "reshape copy")
    local f = tt:flatten()
    values_eq(f, expect, "flatten copy")
end)

T.test("permute, transpose, t", function()
    local x = base24()
    local p = x:permute(3, 1, 2)
    T.eq(p:shape(), { 4, 2, 3 })
    T.eq(p:stride(), { 1, 12, 4 })
    T.ok(p:same_storage(x))
    T.eq(p[4][2][3], 23)
    T.eq(p[2][1][3], 9) -- x[1][3][2]
    T.eq(x:permute({ -1, 1, 2 }):shape(), { 4, 2, 3 }, "a table and negative dims")
    local tr = x:transpose(1, -1)
    T.eq(tr:shape(), { 4, 3, 2 })
    T.eq(tr[2][3][2], x[2][3][2])
    T.ok(tr:same_storage(x))
    local m = lt.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
    local mt = m:t()
    T.eq(mt:shape(), { 3, 2 })
    T.eq(mt:totable(), { { 1, 4 }, { 2, 5 }, { 3, 6 } })
    T.ok(mt:same_storage(m) and not mt:is_contiguous())
    T.raises(function() x:t() end, "t(): expects a 2-D tensor, got 3 dims", true)
    T.raises(function() x:permute(1, 2) end, "permute: 2 entries for a 3-dim tensor", true)
    T.raises(function() x:permute(1, 1, 2) end, "permute")
    T.raises(function() x:transpose(1, 4) end, "transpose: dim 4 out of range")
end)

T.test("narrow, slice with step, select", function()
    local x = base24()
    local n = x:narrow(3, 2, 2)
    T.eq(n:shape(), { 2, 3, 2 })
    T.ok(n:same_storage(x))
    values_eq(n:contiguous(), { 1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22 }, "narrow")
    T.eq(x:narrow(3, -2, 2)[1][1][1], 2, "negative start counts from the end")
    local s = x:slice(3, 1, 4, 2)
    T.eq(s:shape(), { 2, 3, 2 })
    T.eq(s:stride(), { 12, 4, 2 })
    T.ok(s:same_storage(x))
    values_eq(s:contiguous(), { 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22 }, "slice step 2")
    local s2 = x:slice(2, -2, -1)
    T.eq(s2:shape(), { 2, 2, 4 })
    T.eq(s2[1][1][1], 4)
    T.eq(x:slice(3, 2):shape(), { 2, 3, 3 }, "slice to the end")
    T.eq(x:slice(1, 1, 2, 3):shape(), { 1, 3, 4 }, "step past the end")
    local sel = x:select(2, -1)
    T.eq(sel:shape(), { 2, 4 })
    T.ok(sel:same_storage(x))
    values_eq(sel:contiguous(), { 8, 9, 10, 11, 20, 21, 22, 23 }, "select")
    sel:fill_(-1)
    T.eq(x[2][3][4], -1, "fill_ through a select view")
    T.eq(x[2][2][4], 19, "only the selected row changed")
    T.raises(function() x:select(2, 4) end, "select: index 4 out of range for dim 2 of size 3", true)
    T.raises(function() x:slice(3, 1, 4, 0) end, "step must be >= 1")
end)

T.test("narrow's range error uses the caller's 1-based dims and indices", function()
    local x = base24()
    -- narrow(3, 3, 5) asks for elements 3..7 of dim 3 (size 4): the message should say
    -- dim 3 (as the caller wrote it), not the C core's 0-based "dim 2" and "[2, 7)".
    local err = T.raises(function() x:narrow(3, 3, 5) end, "narrow")
    T.ok(err:find("dim 3", 1, true), "message should name dim 3: " .. err)
    T.ok(err:find("size 4", 1, true), "message should give the size: " .. err)
end)

T.test("expand, unsqueeze, squeeze, flatten", function()
    local c = lt.tensor({ { 1 }, { 2 } })
    local e = c:expand(2, 3)
    T.eq(e:shape(), { 2, 3 })
    T.eq(e:stride(), { 1, 0 })
    T.ok(e:same_storage(c))
    T.eq(e:totable(), { { 1, 1, 1 }, { 2, 2, 2 } })
    T.eq(c:expand(4, -1, 3):shape(), { 4, 2, 3 }, "new leading dim and -1")
    T.raises(function() lt.zeros(2, 3):expand(2, 4) end, "cannot broadcast")
    local x = base24()
    T.eq(x:unsqueeze(1):shape(), { 1, 2, 3, 4 })
    T.eq(x:unsqueeze(4):shape(), { 2, 3, 4, 1 })
    T.eq(x:unsqueeze(-1):shape(), { 2, 3, 4, 1 })
    T.eq(x:unsqueeze(2):shape(), { 2, 1, 3, 4 })
    T.ok(x:unsqueeze(2):same_storage(x))
    local u = x:transpose(1, 3):unsqueeze(2)
    T.eq(u:shape(), { 4, 1, 3, 2 })
    T.ok(u:same_storage(x), "unsqueeze of a strided tensor is still a view")
    T.raises(function() x:unsqueeze(6) end, "unsqueeze: dim 6 out of range")
    local s = lt.zeros(1, 3, 1, 2)
    T.eq(s:squeeze():shape(), { 3, 2 })
    T.eq(s:squeeze(3):shape(), { 1, 3, 2 })
    T.eq(s:squeeze(-4):shape(), { 3, 1, 2 })
    T.eq(s:squeeze(2):shape(), { 1, 3, 1, 2 }, "squeezing a dim that is not 1 changes nothing")
    T.ok(s:squeeze():same_storage(s))
    local st = lt.zeros(3, 1, 2):transpose(1, 3)
    T.ok(st:squeeze():same_storage(st), "squeeze of a strided tensor is a view")
    local f = x:flatten()
    T.eq(f:shape(), { 24 })
    T.ok(f:same_storage(x))
end)

-- ---- copies and conversion --------------------------------------------------------------

T.test("contiguous and clone", function()
    local x = base24()
    T.ok(x:contiguous():same_storage(x), "contiguous of a contiguous tensor is itself")
    local tt = x:transpose(1, 3)
    local c = tt:contiguous()
    T.ok(c:is_contiguous() and not c:same_storage(x))
    T.eq(c:stride(), { 6, 2, 1 })
    T.ok(c:equal(tt))
    local k = x:clone()
    T.ok(k:equal(x) and not k:same_storage(x))
    k[1][1][1] = 99
    T.eq(x[1][1][1], 0, "a clone is independent")
    local kt = tt:clone()
    T.ok(kt:is_contiguous() and kt:equal(tt), "clone of a strided tensor is contiguous")
    local b = lt.tensor({ 1.5, 2 }, "bf16"):clone()
    T.eq(b.dtype, "bf16", "clone keeps the dtype")
end)

T.test("to(dtype) for every dtype pair rounds as the reference does", function()
    local vals = { 0, 1, -1, 2.5, -2.5, 3.5, 127.7, 200, -129, 300.25, 1000.5, 2049,
        70000, 3.14159, -0.0029296875, 1e-6, 1.00390625, 1.01171875 }
    for _, sd in ipairs(DTYPES) do
        local src = lt.tensor(vals, sd)
        local sv = {}
        for i, v in ipairs(vals) do
            sv[i] = round_to(sd, v)
            T.ok(same_value(src:get(i), sv[i]), ("lt.tensor(%s) of %.17g: got %.17g, expected %.17g"):format(
                sd, v, src:get(i), sv[i]))
        end
        for _, dd in ipairs(DTYPES) do
            local d = src:to(dd)
            T.eq(d.dtype, dd)
            T.eq(d:shape(), { #vals })
            if dd == sd then T.ok(d == src, "to(same dtype) returns the tensor itself") end
            for i = 1, #vals do
                local want = round_to(dd, sv[i])
                T.ok(same_value(d:get(i), want), ("%s -> %s of %.17g: got %.17g, expected %.17g"):format(
                    sd, dd, sv[i], d:get(i), want))
            end
            -- the same conversion from a strided source
            local strided = src:view(#vals / 2, 2):t():to(dd)
            local k = 0
            for j = 1, 2 do for r = 1, #vals / 2 do
                k = k + 1
                local want = round_to(dd, sv[(r - 1) * 2 + j])
                T.ok(same_value(strided:get(k), want), ("strided %s -> %s element %d"):format(sd, dd, k))
            end end
        end
    end
    T.eq(lt.tensor({ 0 / 0 }):to("i32")[1], 0, "NaN to an integer is 0")
    T.ok(lt.tensor({ 0 / 0 }):to("bf16")[1] ~= lt.tensor({ 0 / 0 }):to("bf16")[1], "NaN stays NaN in bf16")
    T.eq(lt.tensor({ 1, 2 }):to({ dtype = "i64" }).dtype, "i64", "to{dtype=}")
    T.eq(lt.tensor({ 1, 2 }):bf16().dtype, "bf16")
    T.eq(lt.tensor({ 1, 2 }):half().dtype, "f16")
    T.eq(lt.tensor({ 1, 2 }):long().dtype, "i64")
    T.eq(lt.tensor({ 1, 2 }):int().dtype, "i32")
    T.eq(lt.tensor({ 1, 2 }, "i32"):float().dtype, "f32")
    local x = lt.zeros(2)
    T.ok(x:to("cpu") == x, "to(\"cpu\") on a CPU tensor is the tensor itself")
    T.raises(function() x:to("f64") end, "to: unknown dtype f64")
end)

T.test("to{device=...} does not silently stay on the CPU", function()
    if lt.cuda.is_available() then return end
    local x = lt.zeros(2)
    T.raises(function() x:to("cuda") end, "CUDA")
    T.raises(function() x:to({ device = "cuda" }) end, "CUDA")
    T.raises(function() x:to({ dtype = "bf16", device = "cuda:0" }) end, "CUDA")
    T.raises(function() x:to({ device = "tpu" }) end, "unknown device tpu")
end)

T.test("slice with index 0 is an error in the 1-based API, not an empty view", function()
    local x = lt.arange(4, { dtype = "f32" })
    T.raises(function() x:slice(1, 0, 3) end, "slice")
end)

T.test("arange infers f32 when any of start, stop, step is fractional (torch's rule)", function()
    local a = lt.arange(0, 2.5)
    T.eq(a.dtype, "f32")
    T.eq(a:totable(), { 0, 1, 2 })
    T.eq(lt.arange(2.5).dtype, "f32")
end)

T.test("copy_ converts and broadcasts; fill_ and zero_", function()
    local d = lt.zeros(2, 3)
    T.ok(d:copy_(lt.tensor({ 1, 2, 3 })) == d, "copy_ returns self")
    T.eq(d:totable(), { { 1, 2, 3 }, { 1, 2, 3 } })
    d:copy_(lt.tensor({ { 10 }, { 20 } }))
    T.eq(d:totable(), { { 10, 10, 10 }, { 20, 20, 20 } })
    d:copy_({ { 1, 2, 3 }, { 4, 5, 6 } })
    T.eq(d:totable(), { { 1, 2, 3 }, { 4, 5, 6 } }, "copy_ from a nested table")
    local i = lt.zeros(2, 3, { dtype = "i32" })
    i:copy_(lt.tensor({ { 1.7, -1.7, 2.5 }, { 3, 4, 5 } }))
    T.eq(i:totable(), { { 1, -1, 2 }, { 3, 4, 5 } }, "copy_ into i32 truncates")
    local tt = lt.zeros(3, 2):t()
    tt:copy_(d)
    T.eq(tt:totable(), d:totable(), "copy_ into a strided destination")
    T.raises(function() d:copy_(lt.tensor({ 1, 2 })) end,
        "copy: source shape (2) does not match destination (2, 3)", true)
    local f = lt.zeros(3, 4)
    T.ok(f:narrow(2, 2, 2):fill_(7) ~= nil)
    T.eq(f:totable(), { { 0, 7, 7, 0 }, { 0, 7, 7, 0 }, { 0, 7, 7, 0 } }, "fill_ of a strided view")
    T.ok(f:zero_() == f)
    T.eq(f:sum():item(), 0)
    local b = lt.zeros(2, { dtype = "bf16" }):fill_(1.00390625)
    T.eq(b[1], 1, "fill_ rounds to the dtype")
end)

T.test("copy_ into a self-overlapping (expanded) destination is refused", function()
    -- Several elements of an expanded tensor share one memory location; writing to it is
    -- order-dependent (PyTorch raises "more than one element of the written-to tensor
    -- refers to a single memory location").
    local base = lt.zeros(2, 1)
    local e = base:expand(2, 3)
    T.raises(function() e:copy_(lt.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })) end, "")
end)

-- ---- elements --------------------------------------------------------------------------------

T.test("indexing: 1-D gives numbers, N-D gives views; negative indices", function()
    local v = lt.tensor({ 10, 20, 30 })
    T.eq(v[1], 10)
    T.eq(v[3], 30)
    T.eq(v[-1], 30)
    T.eq(v[-3], 10)
    T.eq(type(v[2]), "number")
    local m = lt.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
    local row = m[2]
    T.ok(lt.is_tensor(row))
    T.eq(row:shape(), { 3 })
    T.ok(row:same_storage(m))
    T.eq(m[2][3], 6)
    T.eq(m[-1][-1], 6)
    T.eq(m[-2][1], 1)
    T.eq(lt.tensor({ 5, 7 }, "i64")[2], 7)
    T.eq(lt.tensor({ 1.5 }, "bf16")[1], 1.5)
end)

T.test("assignment: numbers, rows from tensors and tables", function()
    local v = lt.zeros(3)
    v[1] = 5
    v[-1] = 7
    T.eq(v:totable(), { 5, 0, 7 })
    local m = lt.zeros(2, 3)
    m[1] = 4
    T.eq(m:totable(), { { 4, 4, 4 }, { 0, 0, 0 } }, "a number fills a row")
    m[2] = { 1, 2, 3 }
    T.eq(m:totable(), { { 4, 4, 4 }, { 1, 2, 3 } }, "a table row")
    m[-2] = lt.tensor({ 7, 8, 9 })
    T.eq(m:totable(), { { 7, 8, 9 }, { 1, 2, 3 } }, "a tensor row")
    m[1] = lt.tensor(0.5)
    T.eq(m[1]:totable(), { 0.5, 0.5, 0.5 }, "a 0-dim tensor broadcasts over a row")
    m[2][2] = -1
    T.eq(m[2]:totable(), { 1, -1, 3 }, "element assignment through a row view")
    local c = lt.zeros(2, 2, 2)
    c[2][1] = { 3, 4 }
    T.eq(c:totable(), { { { 0, 0 }, { 0, 0 } }, { { 3, 4 }, { 0, 0 } } })
    T.raises(function() m[1] = lt.tensor({ 1, 2 }) end, "does not match")
end)

T.test("out-of-range indices give clear messages", function()
    local v = lt.tensor({ 1, 2, 3 })
    T.raises(function() return v[4] end, "index 4 out of range for a tensor of size 3", true)
    T.raises(function() return v[0] end, "index 0 out of range for a tensor of size 3", true)
    T.raises(function() return v[-4] end, "index -4 out of range for a tensor of size 3", true)
    T.raises(function() v[4] = 1 end, "index 4 out of range for a tensor of size 3", true)
    local m = lt.zeros(2, 3)
    T.raises(function() return m[3] end, "index 3 out of range for dim 1 of size 2", true)
    T.raises(function() return m[0] end, "out of range for dim 1 of size 2")
    T.raises(function() m[5] = 1 end, "index 5 out of range for dim 1 of size 2")
    T.raises(function() return lt.tensor(3)[1] end, "a 0-dim tensor cannot be indexed; use :item()", true)
    T.raises(function() return lt.zeros(0)[1] end, "index 1 out of range for a tensor of size 0", true)
end)

T.test("errors from the user's mistakes point at the user's code, not into the library", function()
    -- error(msg, level) should name the caller's line; these point into luatrain/*.lua.
    local cases = {
        { "lt.tensor with a non-number two levels deep", function() lt.tensor({ { 1, 2 }, { 3, "a" } }) end },
        { "row assignment out of range", function() local m = lt.zeros(2, 3); m[5] = 1 end },
    }
    local bad = {}
    for _, c in ipairs(cases) do
        local ok, err = pcall(c[2])
        T.ok(not ok, c[1] .. " should fail")
        if tostring(err):find("lua/luatrain/", 1, true) then bad[#bad + 1] = c[1] .. ": " .. tostring(err) end
    end
    T.ok(#bad == 0, "positions inside the library:\n  " .. table.concat(bad, "\n  "))
end)

T.test("item and totable (f32, i64, bf16, strided, 0-dim, empty)", function()
    T.eq(lt.tensor({ { 4.25 } }):item(), 4.25)
    T.eq(lt.tensor(3, "i64"):item(), 3)
    T.raises(function() lt.zeros(2):item() end, "item(): tensor has 2 elements, not 1", true)
    T.eq(lt.tensor({ { 1, 2 }, { 3, 4 } }):totable(), { { 1, 2 }, { 3, 4 } })
    T.eq(lt.tensor({ { 1, 2 }, { 3, 4 } }):t():totable(), { { 1, 3 }, { 2, 4 } }, "strided f32")
    local big = lt.tensor({ 2 ^ 40 + 1, -(2 ^ 33) - 3 }, "i64")
    T.eq(big:totable(), { 2 ^ 40 + 1, -(2 ^ 33) - 3 }, "i64 above 2^24 survives totable")
    T.eq(lt.tensor({ { 1, 2 }, { 3, 4 } }, "i64"):t():totable(), { { 1, 3 }, { 2, 4 } }, "strided i64")
    T.eq(lt.tensor({ { 1.5, 2 }, { 3, 1.00390625 } }, "bf16"):totable(), { { 1.5, 2 }, { 3, 1 } }, "bf16")
    T.eq(lt.tensor({ 1, 2, 3, 4, 5, 6 }, "bf16"):view(2, 3):t():totable(), { { 1, 4 }, { 2, 5 }, { 3, 6 } })
    T.eq(lt.tensor({ 200, 7 }, "u8"):totable(), { 200, 7 })
    T.eq(lt.tensor(7):totable(), 7, "0-dim totable is a number")
    T.eq(lt.zeros(0, 3):totable(), {}, "empty")
    T.eq(lt.arange(6, { dtype = "f32" }):view(2, 3):slice(2, 1, 3, 2):totable(), { { 0, 2 }, { 3, 5 } })
end)

-- ---- math ------------------------------------------------------------------------------------

T.test("operators with numbers on either side, and broadcasting", function()
    local a = lt.tensor({ { 1, -2, 3 }, { 4, 5, -6 } })
    local row = lt.tensor({ 10, 20, 30 })
    local col = lt.tensor({ { 100 }, { 200 } })
    T.eq((a + 1):totable(), { { 2, -1, 4 }, { 5, 6, -5 } })
    T.eq((1 + a):totable(), { { 2, -1, 4 }, { 5, 6, -5 } })
    T.eq((a - 1):totable(), { { 0, -3, 2 }, { 3, 4, -7 } })
    T.eq((1 - a):totable(), { { 0, 3, -2 }, { -3, -4, 7 } })
    T.eq((a * 2):totable(), { { 2, -4, 6 }, { 8, 10, -12 } })
    T.eq((2 * a):totable(), { { 2, -4, 6 }, { 8, 10, -12 } })
    T.eq((a / 2):totable(), { { 0.5, -1, 1.5 }, { 2, 2.5, -3 } })
    local r = 12 / a
    local want = { 12, -6, 4, 3, 2.4, -2 }
    for k = 1, 6 do T.near(r:get(k), want[k], 1e-7, 0, "12 / a element " .. k) end
    T.eq((a ^ 2):totable(), { { 1, 4, 9 }, { 16, 25, 36 } })
    T.eq((2 ^ lt.tensor({ 1, 2, 3 })):totable(), { 2, 4, 8 })
    T.eq((-a):totable(), { { -1, 2, -3 }, { -4, -5, 6 } })
    T.eq((a + row):totable(), { { 11, 18, 33 }, { 14, 25, 24 } })
    T.eq((col - a):totable(), { { 99, 102, 97 }, { 196, 195, 206 } })
    T.eq((row * col):shape(), { 2, 3 })
    T.eq((a / a):totable(), { { 1, 1, 1 }, { 1, 1, 1 } })
    T.eq((lt.zeros(4, 1, 3) + lt.zeros(2, 1)):shape(), { 4, 2, 3 })
    local i = lt.arange(3) * 2
    T.eq(i.dtype, "f32", "math on i64 gives f32")
    T.eq(i:totable(), { 0, 2, 4 })
    T.raises(function() return a + lt.zeros(2) end, "do not broadcast")
    T.raises(function() return a + { 1, 2, 3 } end, "expected a tensor or a number, got table")
end)

T.test("matmul as a method (t:matmul(u))", function()
    local a = lt.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
    local b = lt.tensor({ { 1, 0 }, { 0, 1 }, { 2, -1 } })
    T.ok(type(a.matmul) == "function", "Tensor has no matmul method (init.lua's own example uses x:matmul(x:t()))")
    T.eq(a:matmul(b):totable(), { { 7, -1 }, { 16, -1 } })
    T.eq(a:matmul(a:t()):totable(), { { 14, 32 }, { 32, 77 } })
    T.eq(lt.randn(5, 2, 3):matmul(lt.randn(3, 4)):shape(), { 5, 2, 4 })
end)

T.test("matmul follows PyTorch's rank rules (vectors, batches, broadcasting)", function()
    local v = lt.tensor({ 1, 2, 3 })
    local m = lt.tensor({ { 1, 0 }, { 0, 1 }, { 2, -1 } })
    local dot = v:matmul(v)
    T.eq(dot:dim(), 0, "1-D @ 1-D is a 0-dim dot product")
    T.eq(dot:item(), 14)
    T.eq(v:matmul(m):totable(), { 7, -1 }, "1-D @ 2-D drops the row dim")
    T.eq(m:t():matmul(v):totable(), { 7, -1 }, "2-D @ 1-D drops the column dim")
    T.eq(lt.ones(2, 2, 3):matmul(v):totable(), { { 6, 6 }, { 6, 6 } })
    T.eq(lt.tensor({ 1, 2 }):matmul(lt.ones(4, 2, 3)):shape(), { 4, 3 })
    local a, b = lt.randn(2, 1, 2, 3), lt.randn(5, 3, 4)
    local c = a:matmul(b)
    T.eq(c:shape(), { 2, 5, 2, 4 }, "batch dims broadcast")
    for i = 1, 2 do for j = 1, 5 do
        T.close(c[i][j], lt.ops.matmul(a[i][1], b[j]), 1e-5, 1e-6, ("batch %d,%d"):format(i, j))
    end end
    local p, q = lt.randn(2, 3), lt.randn(4, 3, 5)
    local pq = p:matmul(q)
    T.eq(pq:shape(), { 4, 2, 5 })
    for i = 1, 4 do T.close(pq[i], lt.ops.matmul(p, q[i]), 1e-5, 1e-6, "2-D @ 3-D batch " .. i) end
    local st = lt.randn(3, 2):t()
    T.close(st:matmul(q[1]), lt.ops.matmul(st:contiguous(), q[1]), 1e-5, 1e-6, "strided operand")
    T.eq(lt.ones(2, 3, { dtype = "bf16" }):matmul(lt.ones(3, 2)):totable(), { { 3, 3 }, { 3, 3 } }, "bf16 operand")
    T.eq(lt.ones(2, 0):matmul(lt.ones(0, 3)):totable(), { { 0, 0, 0 }, { 0, 0, 0 } }, "empty inner dim")
    T.eq(lt.ones(2, 3):mm(lt.ones(3, 1)):shape(), { 2, 1 }, "mm alias")
    T.raises(function() lt.ones(2, 2, 3):matmul(lt.ones(3, 3, 4)) end, "do not broadcast")
    T.raises(function() lt.ones(2, 3):matmul(2) end, "must be a tensor")
    T.raises(function() lt.tensor(2):matmul(v) end, "at least 1 dim")
end)

T.test("matmul with mismatched inner dims says so", function()
    local err = T.raises(function() lt.ones(2, 3):matmul(lt.ones(2, 3)) end, "matmul")
    T.ok(not err:find("output", 1, true), "the message should name the inner dims, not an output: " .. err)
    T.ok(err:find("(2, 3)", 1, true), "the message should give both shapes: " .. err)
end)

T.test("lt.ops.matmul against a hand computation", function()
    local a = lt.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
    local b = lt.tensor({ { 1, 0 }, { 0, 1 }, { 2, -1 } })
    T.eq(lt.ops.matmul(a, b):totable(), { { 7, -1 }, { 16, -1 } })
    T.eq(lt.ops.matmul(a, a, { trans_b = true }):totable(), { { 14, 32 }, { 32, 77 } })
    local x, y = lt.randn(3, 5, 4), lt.randn(4, 6)
    local z = lt.ops.matmul(x, y)
    T.eq(z:shape(), { 3, 5, 6 })
    for bi = 1, 3 do for i = 1, 5 do for j = 1, 6 do
        local s = 0
        for k = 1, 4 do s = s + x[bi][i][k] * y[k][j] end
        T.near(z[bi][i][j], s, 1e-5, 1e-5)
    end end end
    T.raises(function() lt.ops.matmul(lt.randn(3, 4), lt.randn(3, 5)) end, "matmul")
end)

T.test("sum, mean, max, min, argmax with and without dims", function()
    local x = lt.tensor({ { 1, 5, 3 }, { 4, 2, 6 } })
    local s = x:sum()
    T.eq(s:dim(), 0)
    T.eq(s:item(), 21)
    T.eq(x:sum(1):totable(), { 5, 7, 9 })
    T.eq(x:sum(2):totable(), { 9, 12 })
    T.eq(x:sum(-1, true):shape(), { 2, 1 })
    T.eq(x:sum({ 1, 2 }):item(), 21)
    T.eq(x:mean():item(), 3.5)
    T.eq(x:mean(2):totable(), { 3, 4 })
    T.eq(x:max():item(), 6)
    T.eq(x:min():item(), 1)
    local v, i = x:max(2)
    T.eq(v:totable(), { 5, 6 })
    T.eq(i:totable(), { 1, 2 }, "indices are 0-based i64, as torch returns them")
    T.eq(i.dtype, "i64")
    local v1, i1 = x:max(1, true)
    T.eq(v1:shape(), { 1, 3 })
    T.eq(i1:totable(), { { 1, 0, 1 } })
    local mv, mi = x:min(-1)
    T.eq(mv:totable(), { 1, 2 })
    T.eq(mi:totable(), { 0, 1 })
    T.eq(x:argmax():item(), 5)
    T.eq(x:argmax(1):totable(), { 1, 0, 1 })
    T.eq(lt.tensor({ 3, 1, 3 }):argmax():item(), 0, "first of ties")
    T.eq(x:amax(1):totable(), { 4, 5, 6 })
    T.eq(lt.arange(5):sum():item(), 10, "sum of i64")
    T.raises(function() x:sum(3) end, "dim 3 out of range")
    T.raises(function() x:max({ 1, 2 }) end, "use amax")
end)

-- ---- printing --------------------------------------------------------------------------------

T.test("tostring: values, shape/dtype footer, integers without decimals", function()
    T.eq(tostring(lt.tensor({ 1.5, -2 })), "[ 1.5000, -2.0000]\n[f32 tensor of shape (2) on cpu]")
    T.eq(tostring(lt.tensor({ { 1, 2 }, { 3, 4 } }, "i64")), "[[1, 2],\n [3, 4]]\n[i64 tensor of shape (2, 2) on cpu]")
    T.eq(tostring(lt.tensor({ -3, 12 }, "i32")), "[-3, 12]\n[i32 tensor of shape (2) on cpu]")
    T.eq(tostring(lt.tensor({ 1, 2 }, "u8")), "[1, 2]\n[u8 tensor of shape (2) on cpu]")
    T.eq(tostring(lt.tensor(2.5)), "2.5000\n[f32 tensor of shape () on cpu]")
    T.eq(tostring(lt.tensor({ 1.5, 2 }, "bf16")), "[1.5000, 2.0000]\n[bf16 tensor of shape (2) on cpu]")
    T.eq(tostring(lt.tensor({ 1e-5, 1 })), "[1.0000e-05, 1.0000e+00]\n[f32 tensor of shape (2) on cpu]")
    local nf = tostring(lt.tensor({ 0 / 0, 1 / 0, -1 / 0, 1.5 }))
    T.ok(nf:find("nan", 1, true) and nf:find("-inf", 1, true), nf)
    T.eq(tostring(lt.tensor({ { 1, 2 }, { 3, 4 } }):t()), "[[1., 3.],\n [2., 4.]]\n[f32 tensor of shape (2, 2) on cpu]",
        "strided tensors print in logical order")
    T.eq(tostring(lt.tensor({ 2 ^ 40, 2 }, "i64")), "[1099511627776,             2]\n[i64 tensor of shape (2) on cpu]")
    T.ok(tostring(lt.zeros(0, 3)):find("[f32 tensor of shape (0, 3) on cpu]", 1, true))
end)

T.test("tostring summarises large tensors with '...'", function()
    local s = tostring(lt.arange(2000))
    T.ok(s:find("...", 1, true), s)
    T.ok(s:find("[   0,    1,    2, ..., 1997, 1998, 1999]", 1, true), s)
    T.ok(s:find("[i64 tensor of shape (2000) on cpu]", 1, true), s)
    T.ok(#s < 200, "summary is short")
    local m = tostring(lt.arange(2000, { dtype = "f32" }):view(40, 50))
    local lines = {}
    for line in m:gmatch("[^\n]+") do lines[#lines + 1] = line end
    T.eq(#lines, 8, "3 rows, '...', 3 rows and the footer:\n" .. m)
    T.eq(lines[4], " ...,")
    T.ok(lines[1]:find("...", 1, true))
    T.eq(lines[8], "[f32 tensor of shape (40, 50) on cpu]")
    T.ok(not tostring(lt.arange(1000)):find("...", 1, true), "1000 elements print in full")
end)

-- ---- RNG ------------------------------------------------------------------------------------

T.test("manual_seed makes draws repeat; state save and restore", function()
    lt.manual_seed(123)
    local a, b, c = lt.randn(7), lt.rand(7), lt.randint(0, 100, { 7 })
    lt.manual_seed(123)
    T.ok(lt.randn(7):equal(a) and lt.rand(7):equal(b) and lt.randint(0, 100, { 7 }):equal(c),
        "same seed, same draws")
    lt.manual_seed(124)
    T.ok(not lt.randn(7):equal(a), "another seed, other draws")
    local st = lt.get_rng_state()
    local x = lt.randn(5)
    T.ok(not lt.randn(5):equal(x), "the generator advances")
    lt.set_rng_state(st)
    T.ok(lt.randn(5):equal(x), "restored state repeats")
    lt.manual_seed(9)
    local d32 = lt.randn(6, { dtype = "bf16" })
    lt.manual_seed(9)
    T.ok(lt.randn(6, { dtype = "bf16" }):equal(d32), "bf16 draws repeat")
    lt.manual_seed(11)
end)

-- ---- memory -----------------------------------------------------------------------------------

T.test("memory: current moves by exactly a tensor's bytes; views and frees", function()
    lt.memory.collect()
    collectgarbage("stop")
    local ok, err = pcall(function()
        local m0 = lt.memory.stats("cpu")
        T.ok(m0.current >= 0 and m0.peak >= m0.current, "peak >= current")
        local t = lt.empty(100, 10)
        T.eq(lt.memory.stats("cpu").current - m0.current, 4000, "f32 (100, 10)")
        local v = t:view(-1)
        local s = t:narrow(1, 2, 3)
        T.eq(lt.memory.stats().current - m0.current, 4000, "views allocate nothing")
        local b = lt.empty(3, { dtype = "bf16" })
        T.eq(lt.memory.stats().current - m0.current, 4006, "bf16 (3)")
        local i = lt.zeros(5, { dtype = "i64" })
        T.eq(lt.memory.stats().current - m0.current, 4046, "i64 (5)")
        t:free()
        T.eq(lt.memory.stats().current - m0.current, 4046, "views keep the storage alive")
        v:free()
        s:free()
        T.eq(lt.memory.stats().current - m0.current, 46, "the last view's free releases it")
        b:free()
        i:free()
        T.eq(lt.memory.stats().current, m0.current, "back to the start")
        lt.memory.reset_peak("cpu")
        local st = lt.memory.stats()
        T.eq(st.peak, st.current, "reset_peak restarts the peak from current")
        local big = lt.empty(1000)
        T.eq(lt.memory.stats().peak, st.current + 4000)
        big:free()
        local after = lt.memory.stats()
        T.eq(after.current, st.current)
        T.eq(after.peak, st.current + 4000, "peak remembers")
        T.eq(lt.memory.format_bytes(1536), "1.50 KiB")
    end)
    collectgarbage("restart")
    if not ok then error(err, 0) end
end)

-- ---- released tensors ----------------------------------------------------------------------------

T.test("using a released tensor is a clear error, not a crash", function()
    local function freed()
        local t = lt.zeros(2, 3)
        t:free()
        return t
    end
    T.raises(function() return freed():sum() end, "released")
    T.raises(function() return freed() + 1 end, "released")
    T.raises(function() return freed():item() end, "released")
    T.raises(function() return freed():clone() end, "released")
    T.raises(function() return freed():view(6) end, "released")
    T.raises(function() return freed():to("bf16") end, "released")
    T.raises(function() return freed():fill_(1) end, "released")
    T.raises(function() return freed():totable() end, "released")
    T.eq(tostring(freed()), "<released tensor>")
    local t = freed()
    t:free() -- a second free is harmless
    T.ok(t:is_empty())
end)

T.test("indexing a released tensor says it was released", function()
    local t = lt.zeros(2, 3)
    t:free()
    T.raises(function() return t[1] end, "released")
    T.raises(function() t[1] = 2 end, "released")
end)

T.test("a released tensor does not claim to hold one element", function()
    local t = lt.zeros(2, 3)
    t:free()
    local ok, n = pcall(function() return t:numel() end)
    if ok then T.eq(n, 0, "numel of a released tensor") else T.ok(tostring(n):find("released"), tostring(n)) end
end)

-- ---- 0-size dims --------------------------------------------------------------------------------

T.test("tensors with 0-size dims", function()
    local z = lt.zeros(0, 4)
    T.eq(z:shape(), { 0, 4 })
    T.eq(z:numel(), 0)
    T.eq(z:nbytes(), 0)
    T.eq(z:sum():item(), 0)
    T.eq(z:sum(1):totable(), { 0, 0, 0, 0 })
    T.eq(z:sum(2):shape(), { 0 })
    T.ok(z:mean():item() ~= z:mean():item(), "mean of nothing is NaN (torch's answer)")
    T.eq((z + 1):shape(), { 0, 4 })
    T.eq(z:view(-1, 2):shape(), { 0, 2 })
    T.eq(z:t():shape(), { 4, 0 })
    T.eq(z:clone():shape(), { 0, 4 })
    T.eq(z:to("bf16"):shape(), { 0, 4 })
    T.eq(lt.zeros(3, 0):narrow(1, 2, 1):shape(), { 1, 0 })
    T.eq(lt.empty(2, 0, 3):shape(), { 2, 0, 3 })
    T.ok(z:fill_(3) == z)
    T.eq(lt.randn(0):numel(), 0)
    T.eq(lt.ops.matmul(lt.zeros(2, 0), lt.zeros(0, 3)):totable(), { { 0, 0, 0 }, { 0, 0, 0 } })
    T.raises(function() z:max() end, "size 0")
end)

T.done()
