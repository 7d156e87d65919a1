--[[
collectives.lua - every collective x dtype x size {0, 1, 7, 1000003} against a serial
computation of the same thing (run by ctest under mpirun at 2 and 3 ranks).

Each rank makes the inputs of every rank from (rank, case), so each can compute the whole
expected result alone. Two kinds of inputs:
  - small integers (-8..8): every sum, average and maximum is exact in every dtype and any
    order, so the back end's own algorithm (MPI's) must give exactly the serial answer;
  - irrational floats, in deterministic mode: sums must equal, bit for bit, the serial sum
    in rank order accumulated in f32 and rounded once, as lt_comm.h promises.
The deterministic communicator is the same process's second run: `luatrain collectives.lua
deterministic`.
]]
package.path = "tests/lua/?.lua;tests/dist/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local ffi = require "ffi"
local C = require("luatrain.core").C

local deterministic = arg and arg[1] == "deterministic"
local c = lt.comm.init({ timeout = 20, deterministic = deterministic })
lt.set_num_threads(1)
local W, R = c.world_size, c.rank
T.ok(W >= 2, "run under mpirun with 2 or more ranks")
T.eq(c.deterministic, deterministic, "deterministic setting")

local SIZES = { 0, 1, 7, 1000003 }
local REDUCED = { "f32", "bf16", "f16", "i32", "i64" }
local ALL = { "f32", "bf16", "f16", "i32", "i64", "u8", "i8" }

-- Values of rank r's input for a case: element i (0-based) as a Lua number.
local function int_value(r, i, salt) return (i * 7 + r * 13 + salt) % 17 - 8 end
local function byte_value(r, i, salt) return (i * 31 + r * 101 + salt) % 256 end
local function float_value(r, i, salt) return math.sin(i * 0.37 + r * 1.3 + salt) * 3.7 end

-- A tensor of n elements of dtype from value(r, i): written as f32 (or i64) and converted,
-- so non-representable floats round exactly as any other conversion would.
local function make(n, dtype, r, value, salt)
    local is_int = dtype == "i32" or dtype == "i64" or dtype == "u8" or dtype == "i8"
    local t = lt.empty({ n }, { dtype = is_int and "i64" or "f32" })
    if n > 0 then
        local p = ffi.cast(is_int and "int64_t *" or "float *", C.lt_tensor_data(t))
        for i = 0, n - 1 do p[i] = value(r, i, salt) end
    end
    return is_int and dtype == "i64" and t or t:to(dtype)
end

-- f32 view of any tensor's values (exact for every dtype tested here) as a pointer.
local function as_f64_reader(t)
    local f = t:to(t.dtype == "i64" and "i64" or (t.dtype == "i32" and "i64" or "f32"))
    local ctype = f.dtype == "i64" and "int64_t *" or "float *"
    return ffi.cast(ctype, C.lt_tensor_data(f)), f
end

-- The serial reduction in rank order (f32 accumulation for floats, as lt_comm.h says).
local function serial(ins, n, dtype, op)
    local acc = ffi.new(dtype:match("^i") and "int64_t[?]" or "float[?]", math.max(n, 1))
    local keep = {} -- luacheck: ignore 241 (the converted tensors behind the pointers, alive until the sums are done)
    for r = 1, W do
        local p, f = as_f64_reader(ins[r])
        keep[r] = f
        if r == 1 then
            for i = 0, n - 1 do acc[i] = p[i] end
        elseif op == "max" then
            for i = 0, n - 1 do if p[i] > acc[i] then acc[i] = p[i] end end
        else
            for i = 0, n - 1 do acc[i] = acc[i] + p[i] end
        end
    end
    if op == "avg" then for i = 0, n - 1 do acc[i] = acc[i] / W end end
    keep = nil -- luacheck: ignore
    local is_int = dtype:match("^i")
    local t = lt.empty({ n }, { dtype = is_int and "i64" or "f32" })
    if n > 0 then ffi.copy(C.lt_tensor_data(t), acc, n * (is_int and 8 or 4)) end
    return t:to(dtype)
end

local function check_equal(got, want, what)
    T.eq(got.dtype, want.dtype, what .. ": dtype")
    T.eq(got:numel(), want:numel(), what .. ": size")
    if got:numel() > 0 then T.ok(got:equal(want), what .. ": values differ from the serial computation") end
end

local function inputs(n, dtype, value, salt)
    local ins = {}
    for r = 0, W - 1 do ins[r + 1] = make(n, dtype, r, value, salt) end
    return ins
end

local cases = 0
for _, n in ipairs(SIZES) do
    for _, dtype in ipairs(REDUCED) do
        local ops = dtype:match("^f") and { "sum", "avg", "max" } or { "sum", "max" }
        for _, op in ipairs(ops) do
            local kinds = { { int_value, "integers" } }
            if deterministic and dtype:match("^f") and op ~= "max" then
                kinds[2] = { float_value, "floats" }
            end
            for _, kind in ipairs(kinds) do
                local what = ("%s %s of %d %s (%s)"):format("all_reduce", op, n, dtype, kind[2])
                T.test(what, function()
                    local ins = inputs(n, dtype, kind[1], n % 5)
                    local t = ins[R + 1]:clone()
                    local w = c:all_reduce(t, op, { async = true })
                    c:progress()
                    w:wait()
                    check_equal(t, serial(ins, n, dtype, op), what)

                    -- reduce_scatter: rank r receives the reduction of slice r of W * n
                    local what2 = ("reduce_scatter %s of %d x %d %s (%s)"):format(op, W, n, dtype, kind[2])
                    local big = inputs(W * n, dtype, kind[1], 3)
                    local out = lt.empty({ n }, { dtype = dtype })
                    c:reduce_scatter(out, big[R + 1], op)
                    local want = serial(big, W * n, dtype, op)
                    check_equal(out, n > 0 and want:narrow(1, R * n + 1, n):clone() or lt.empty({ 0 }, { dtype = dtype }), what2)
                    cases = cases + 2
                end)
            end
        end
    end
    for _, dtype in ipairs(ALL) do
        local what = ("all_gather and broadcast of %d %s"):format(n, dtype)
        T.test(what, function()
            local value = (dtype == "u8" or dtype == "i8") and byte_value or int_value
            if dtype == "i8" then value = function(r, i, s) return byte_value(r, i, s) - 128 end end
            local ins = inputs(n, dtype, value, 1)
            local out = lt.empty({ W * n }, { dtype = dtype })
            c:all_gather(out, ins[R + 1])
            for r = 0, W - 1 do
                if n > 0 then T.ok(out:narrow(1, r * n + 1, n):equal(ins[r + 1]), what .. ": slice of rank " .. r) end
            end
            for root = 0, W - 1 do
                local t = R == root and ins[root + 1]:clone() or lt.zeros({ n }, { dtype = dtype })
                c:broadcast(t, root)
                if n > 0 then T.ok(t:equal(ins[root + 1]), what .. ": broadcast from " .. root) end
            end
            cases = cases + 2
        end)
    end
end

T.test("host numbers: f64 and i64 sums, averages and maxima in rank order", function()
    local vals = { 0.1 * (R + 1), 1e-17 * R, -(R + 0.25) }
    local s = c:all_reduce_numbers(vals, "sum")
    local want = { 0, 0, 0 }
    for r = 0, W - 1 do
        local v = { 0.1 * (r + 1), 1e-17 * r, -(r + 0.25) }
        for i = 1, 3 do want[i] = r == 0 and v[i] or want[i] + v[i] end
    end
    for i = 1, 3 do T.eq(s[i], want[i], "f64 sum " .. i) end
    T.eq(c:all_reduce_numbers({ R }, "max")[1], W - 1, "max")
    T.eq(c:all_reduce_numbers({ R + 1 }, "avg")[1], (W + 1) / 2, "avg")
    local big = 2 ^ 52 + R
    T.eq(c:all_reduce_numbers({ big }, "sum", { integer = true })[1], W * 2 ^ 52 + W * (W - 1) / 2, "i64 sum")
    T.raises(function() c:all_reduce_numbers({ 1 }, "avg", { integer = true }) end, "avg of integers")
end)

T.test("misuse is refused before anything is sent, and the communicator stays healthy", function()
    T.raises(function() c:all_reduce(lt.zeros({ 3 }, { dtype = "u8" }), "sum") end, "not reduced")
    T.raises(function() c:all_reduce(lt.zeros({ 3 }, { dtype = "i32" }), "avg") end, "avg of i32")
    T.raises(function() c:all_reduce(lt.zeros({ 3 }), "min") end, "op must be")
    T.raises(function() c:reduce_scatter(lt.zeros({ 3 }), lt.zeros({ 3 * W + 1 }), "sum") end, "not " .. W .. " x 3")
    T.raises(function() c:all_gather(lt.zeros({ 3 * W }), lt.zeros({ 3 }, { dtype = "bf16" })) end, "in is bf16")
    T.raises(function() c:all_reduce(lt.zeros({ 4, 4 }):transpose(1, 2), "sum") end, "not contiguous")
    T.raises(function() c:broadcast(lt.zeros({ 3 }), W) end, "not a rank")
    T.eq(c:failure(), nil, "still healthy")
    c:barrier()
end)

T.test("an asynchronous work holds its tensor: dropping it before the wait is safe", function()
    local t = lt.full({ 1000 }, R + 1)
    local w = c:all_reduce(t, "sum", { async = true })
    t = nil -- luacheck: ignore
    lt.memory.collect()
    w:wait()
    T.ok(w:test(), "done")
end)

T.test("counted every case", function() T.ok(cases > 100, "cases: " .. cases) end)

c:shutdown()
T.done()
