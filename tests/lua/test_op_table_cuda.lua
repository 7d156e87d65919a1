--[[
test_op_table_cuda.lua - the op table (op_cases.lua) on every backend.

1. Finite differences, on the CPU in f32, every row and every shape not marked big:
   L(inputs) = sum(forward(inputs) * R) for a fixed random R, accumulated in f64.
   backward(inputs, R) must equal dL/dinput, checked at up to 40 elements of each input in
   `wrt` (all of them for small inputs) by
       |fd - grad| <= atol + rtol * max(|fd|, |grad|)
   The forward runs in f32, so the differences carry f32 rounding of the outputs a
   perturbation touches, divided by 2h: the defaults h = 1e-2, rtol = 1e-2, atol = 2e-3 sit
   well above that noise and far below the size of any real error (a wrong sign, a missing
   term or a wrong index changes a gradient entry by O(1)).

2. Every CUDA device present against the CPU, every row, every shape, in every dtype the
   support table (src/ops/support.c, asked through luatrain.ops.support) lists for the
   row's op on CUDA and the row allows. The inputs are the same numbers on both sides: the
   row's f32 inputs rounded to the dtype (except those it keeps in f32) are the CPU's
   inputs, in f32, and the device's, in the dtype. dout is random, rounded the same way.
   The device's backward reads the CPU forward's saved tensors (rounded to the dtype its
   own forward made them in, as the CPU's backward does), so each kernel is measured by
   itself. Every output, saved tensor and gradient is compared:
     f32:      ||gpu - cpu|| / ||cpu|| <= 1e-5 (tests run with TF32 off; rows may say
               otherwise);
     bf16/f16: at most twice the error of the naive low-precision result, the CPU result
               rounded to the dtype (plus 1e-6), as tests/c/cuda_check.h states it;
   NaN and infinities must sit where the CPU has them; integer outputs must be equal.
   Without a device this part prints one "skipped: GPU part" line, and runs once with the
   CPU standing in for the device (f32 only, the small shapes; part 3 runs bf16 and f16): a dry run of the
   comparison's own plumbing, so that a row that cannot run that way fails here first.
   LT_OP_TABLE_BIG=1 adds the big shapes to that dry run (seconds on 2 cores), to try new
   device shapes out before a GPU session. LT_OP_TABLE_SMALL=1 keeps the device runs to the
   small shapes, for compute-sanitizer (which slows kernels down a hundredfold).

3. The CPU in bf16 and f16, always: every row, every shape not marked big (all of them with
   LT_OP_TABLE_BIG=1), with the CPU as the device in part 2's comparison and part 2's
   low-precision rule, whatever `dtypes` the row gives for devices. The CPU computes these
   through its f32 kernels on f32 twins of the bf16/f16 tensors (src/ops/lowp.h), so the
   rule holds it to its inputs' and outputs' rounding: what the CPU side of the precision
   policy (ARCHITECTURE.md, contract 7) promises. The largest error found, as a fraction of
   its bound, is printed per dtype.

4. The table itself: every op it lists has rows or names where it is tested, and the CPU
   refuses a dtype the table does not list for it in the table's words.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local ffi = require "ffi"
local core = require "luatrain.core"
local S = require "luatrain.ops.support"

lt.manual_seed(1234)
local cases = require "op_cases"
math.randomseed(99)

local ALL_DTYPES = { "f32", "bf16", "f16" }

local function shapes_of(case) return case.shapes or { {} } end

local function shape_label(s)
    local parts = {}
    for k, v in pairs(s) do
        if k ~= "big" then
            if type(v) == "table" then v = "{" .. table.concat(v, ",") .. "}" end
            parts[#parts + 1] = k .. "=" .. tostring(v)
        end
    end
    table.sort(parts)
    return "{" .. table.concat(parts, " ") .. "}"
end

-- ---- 1. finite differences ------------------------------------------------------------------

local function dot(out, R)
    local o, r = out:contiguous():float(), R
    local po, pr = ffi.cast("float*", o:data_ptr()), ffi.cast("float*", r:data_ptr())
    local s = 0
    for i = 0, o:numel() - 1 do s = s + po[i] * pr[i] end
    return s
end

local function pick_indices(n, k)
    if n <= k then
        local all = {}
        for i = 1, n do all[i] = i end
        return all
    end
    local idx, seen = { 1, n }, { [1] = true, [n] = true }
    while #idx < k do
        local i = math.random(1, n)
        if not seen[i] then
            seen[i] = true
            idx[#idx + 1] = i
        end
    end
    return idx
end

local fd_shapes, checked = 0, 0
for _, case in ipairs(cases) do
    T.test(case.name, function()
        T.ok(S.supports(case.op, "cpu", "f32"), case.op .. " must run on the CPU in f32")
        for _, shape in ipairs(shapes_of(case)) do
            if not shape.big then
                fd_shapes = fd_shapes + 1
                local inp = case.inputs(shape)
                local out, saved = case.forward(inp)
                T.ok(lt.is_tensor(out), "forward must return a tensor")
                local R = lt.randn(out:shape())
                local grads = case.backward(inp, R, saved)
                local h = case.h or 1e-2
                local rtol, atol = case.rtol or 1e-2, case.atol or 2e-3
                for _, name in ipairs(case.wrt) do
                    local x = inp[name]
                    local g = grads[name]
                    T.ok(g ~= nil, "backward returned no gradient for " .. name)
                    T.eq(g:shape(), x:shape(), name .. " gradient shape")
                    T.ok(x:is_contiguous() and x.dtype == "f32", name .. " must be a contiguous f32 input")
                    local px = ffi.cast("float*", x:data_ptr())
                    local gc = g:contiguous():float()
                    local pg = ffi.cast("float*", gc:data_ptr())
                    for _, i in ipairs(pick_indices(x:numel(), 40)) do
                        local orig = px[i - 1]
                        px[i - 1] = orig + h
                        local lp = dot(case.forward(inp), R)
                        px[i - 1] = orig - h
                        local lm = dot(case.forward(inp), R)
                        px[i - 1] = orig
                        local fd = (lp - lm) / (2 * h)
                        local an = pg[i - 1]
                        local tol = atol + rtol * math.max(math.abs(fd), math.abs(an))
                        if not (math.abs(fd - an) <= tol) then
                            error(("%s %s: d/d%s[%d]: finite difference %.6g, backward %.6g (tolerance %.2g)"):format(
                                case.name, shape_label(shape), name, i, fd, an, tol), 0)
                        end
                        checked = checked + 1
                    end
                end
            end
        end
    end)
end
print(("%d op rows: finite differences on %d shapes, %d gradient entries checked"):format(
    #cases, fd_shapes, checked))

-- ---- 2. every device against the CPU ----------------------------------------------------------

local function is_float(t) return t.dtype == "f32" or t.dtype == "bf16" or t.dtype == "f16" end

local function set_of(list)
    local s = {}
    for _, v in ipairs(list or {}) do s[v] = true end
    return s
end

-- ||a - b|| / ||b|| over the elements where b is finite (a must be finite there); NaN and
-- infinities of b must be matched exactly by a. a, b: contiguous f32 CPU tensors. Returns the
-- error, or nil and what is wrong.
local function rel_err(a, b)
    local pa, pb = ffi.cast("float*", a:data_ptr()), ffi.cast("float*", b:data_ptr())
    local num, den = 0, 0
    for i = 0, b:numel() - 1 do
        local x, y = pa[i], pb[i]
        if y ~= y then
            if x == x then return nil, ("element %d is %.9g, the CPU's is NaN"):format(i + 1, x) end
        elseif y == math.huge or y == -math.huge then
            if x ~= y then return nil, ("element %d is %.9g, the CPU's is %.9g"):format(i + 1, x, y) end
        else
            local d = x - y
            if d ~= d or d == math.huge or d == -math.huge then
                return nil, ("element %d is %.9g, the CPU's is %.9g"):format(i + 1, x, y)
            end
            num = num + d * d
            den = den + y * y
        end
    end
    return math.sqrt(num) / (den > 1e-300 and math.sqrt(den) or 1)
end

-- |a - b| <= atol + rtol |b| wherever b is finite.
local function close_each(a, b, rtol, atol)
    local pa, pb = ffi.cast("float*", a:data_ptr()), ffi.cast("float*", b:data_ptr())
    for i = 0, b:numel() - 1 do
        local x, y = pa[i], pb[i]
        if y == y and y ~= math.huge and y ~= -math.huge and not (math.abs(x - y) <= atol + rtol * math.abs(y)) then
            return ("element %d is %.9g, the CPU's %.9g (rtol %g, atol %g)"):format(i + 1, x, y, rtol, atol)
        end
    end
end

-- By low-precision dtype: the largest error against its bound met so far (part 3 prints it).
local worst = {}

-- One output of a device run (got) against the CPU's (want).
local function compare(case, what, name, got, want, dtype, device)
    local where = ("%s: %s"):format(what, name)
    T.ok(lt.is_tensor(got), where .. ": missing on the device")
    T.ok(got.device == device, ("%s is on %s, not %s"):format(where, got.device, device))
    T.eq(got:shape(), want:shape(), where .. " shape")
    if not is_float(want) then
        T.ok(got:to(want.dtype):cpu():equal(want), where .. ": differs from the CPU's")
        return
    end
    local g, c = got:cpu():contiguous():float(), want:contiguous():float()
    local e, bad = rel_err(g, c)
    if not e then error(where .. ": " .. bad, 0) end
    local tol = case.tol or {}
    local f32_rule = dtype == "f32" or case.f32_outputs == true or set_of(case.f32_outputs)[name]
    if f32_rule then
        local bound = tol.f32 or 1e-5
        if not (e <= bound) then
            error(("%s: relative error %.3g > %.3g"):format(where, e, bound), 0)
        end
    else
        local naive = rel_err(c:to(dtype):float(), c)
        local bound = (tol.lowp or 2) * naive + 1e-6
        if worst[dtype] == nil or e / bound > worst[dtype].ratio then
            worst[dtype] = { ratio = e / bound, err = e, bound = bound, where = where }
        end
        if not (e <= bound) then
            error(("%s: relative error %.3g > %g x the naive %s error %.3g"):format(where, e,
                tol.lowp or 2, dtype, naive), 0)
        end
    end
    local cl = case.close and case.close[name]
    if cl then
        local msg = close_each(g, c, cl[1], cl[2])
        if msg then error(where .. ": " .. msg, 0) end
    end
end

-- TF32 is a process-wide switch of the CUDA GEMMs (on by default, as PyTorch's "high"
-- float32 matmul precision); the f32 rule needs it off. The core exports the setter for the
-- C tests; it is not part of the FFI API, so it is declared here (unless it is one day).
pcall(ffi.cdef, [[void lt_cuda_gemm_allow_tf32(int on);]])
local function set_tf32(device, on)
    if device ~= "cpu" then core.C.lt_cuda_gemm_allow_tf32(on and 1 or 0) end
end

-- One row, one shape, one device, one dtype.
local function device_run(case, shape, device, dtype)
    local keep = set_of(case.keep)
    local inp = case.inputs(shape)
    local cin, din = {}, {}
    for k, t in pairs(inp) do
        if not lt.is_tensor(t) then
            cin[k], din[k] = t, t
        elseif is_float(t) and not keep[k] then
            local r = t:to(dtype)
            cin[k], din[k] = r:float(), r:to(device)
        else
            cin[k], din[k] = t, t:to(device)
        end
    end
    local cout, csaved = case.forward(cin)
    local dout, dsaved = case.forward(din)
    csaved, dsaved = csaved or {}, dsaved or {}
    -- dout: the same values on both sides, in the dtype of the device's output
    local r = lt.randn(cout:shape()):to(dtype)
    local cd, dd = r:float(), r:to({ dtype = dout.dtype, device = device })
    -- the backward on both sides reads the CPU forward's saved tensors, in the dtypes of the
    -- device forward's
    local csv, dsv = {}, {}
    for k, t in pairs(csaved) do
        local dt = dsaved[k] and dsaved[k].dtype or t.dtype
        local rt = t:to(dt)
        csv[k] = is_float(t) and rt:float() or t
        dsv[k] = rt:to(device)
    end
    local cg = case.backward(cin, cd, csv)
    local dg = case.backward(din, dd, dsv)
    local what = ("%s %s on %s in %s"):format(case.name, shape_label(shape), device, dtype)
    compare(case, what, "out", dout, cout, dtype, device)
    for k, t in pairs(csaved) do
        if not rawequal(t, cout) then compare(case, what, k, dsaved[k], t, dtype, device) end
    end
    for k, t in pairs(cg) do compare(case, what, k, dg[k], t, dtype, device) end
end

local ndev = lt.cuda.device_count()
local devices, dry_run = {}, ndev == 0
local dry_big = os.getenv("LT_OP_TABLE_BIG") == "1"
local small_only = os.getenv("LT_OP_TABLE_SMALL") == "1"
for i = 0, ndev - 1 do devices[#devices + 1] = "cuda:" .. i end
if dry_run then
    local _, why = pcall(lt.cuda.device_info, 0)
    print("skipped: GPU part (" .. tostring(why):gsub("^.-: ", "") .. "); the comparison runs on the CPU")
    devices = { "cpu" }
end

local runs = {}
for _, device in ipairs(devices) do
    set_tf32(device, false)
    for _, case in ipairs(cases) do
        for _, dtype in ipairs(case.dtypes or ALL_DTYPES) do
            -- the support table is per device type; the CPU stands in for a device in f32
            -- (part 3 runs it in bf16 and f16)
            if S.supports(case.op, device, dtype) and (device ~= "cpu" or dtype == "f32") then
                T.test(("%s on %s in %s"):format(case.name, device, dtype), function()
                    set_tf32(device, case.tf32)
                    local ok, err = pcall(function()
                        for _, shape in ipairs(shapes_of(case)) do
                            local skip = shape.big and (small_only or (dry_run and not dry_big))
                            if not skip then
                                device_run(case, shape, device, dtype)
                                if not dry_run then collectgarbage() end
                                local key = device .. " " .. dtype
                                runs[key] = (runs[key] or 0) + 1
                            end
                        end
                    end)
                    set_tf32(device, false)
                    collectgarbage() -- the device's copies go back to its cache now
                    if not ok then error(err, 0) end
                end)
            end
        end
    end
    set_tf32(device, true)
end
local summary = {}
for key, n in pairs(runs) do summary[#summary + 1] = ("%s: %d"):format(key, n) end
table.sort(summary)
print(("%s against the CPU (row x shape runs): %s"):format(dry_run and "the CPU as a device" or "devices",
    table.concat(summary, ", ")))

-- ---- 3. the CPU in bf16 and f16 --------------------------------------------------------------

local cpu_runs = {}
for _, dtype in ipairs({ "bf16", "f16" }) do
    worst[dtype] = nil
    for _, case in ipairs(cases) do
        T.test(("%s on the CPU in %s"):format(case.name, dtype), function()
            T.ok(S.supports(case.op, "cpu", dtype), case.op .. " must run on the CPU in " .. dtype)
            for _, shape in ipairs(shapes_of(case)) do
                if not shape.big or dry_big then
                    device_run(case, shape, "cpu", dtype)
                    cpu_runs[dtype] = (cpu_runs[dtype] or 0) + 1
                end
            end
        end)
    end
    local w = worst[dtype]
    print(("the CPU in %s: %d row x shape runs; largest error %.3g against its bound %.3g (%.2f of it), at %s"):format(
        dtype, cpu_runs[dtype] or 0, w and w.err or 0, w and w.bound or 0, w and w.ratio or 0,
        w and w.where or "-"))
end

-- ---- 4. the support table ------------------------------------------------------------------

-- Ops with no row, and where they are tested instead.
local ELSEWHERE = {
    axpby = "no gradient: tests/c/test_elementwise.c, tests/c/test_cuda_elementwise.c",
    argmax = "no gradient: tests/c/test_elementwise.c, tests/c/test_cuda_elementwise.c",
    sum_squares = "no gradient: tests/c/test_elementwise.c, tests/c/test_cuda_elementwise.c",
    has_nonfinite = "no gradient: tests/c/test_elementwise.c, tests/c/test_cuda_elementwise.c",
    sample_logits = "no gradient: tests/lua/test_generate.lua",
    adamw = "an update, not a function with a gradient (adamw_step, adamw8_step): tests/lua/test_optim.lua, "
        .. "tests/lua/test_adamw8.lua, tests/c/test_adamw8.c, tests/c/test_cuda_loss_optim.c",
    global_norm = "no gradient: tests/lua/test_optim.lua, tests/c/test_cuda_loss_optim.c",
    quantize = "bit-exact states: tests/c/test_quant.c, tests/c/test_cuda_quant.c",
    dequantize = "bit-exact values: tests/c/test_quant.c, tests/c/test_cuda_quant.c",
}

T.test("every op of the support table has rows, or says where it is tested", function()
    local rows = {}
    for _, case in ipairs(cases) do rows[case.op] = (rows[case.op] or 0) + 1 end
    for _, op in ipairs(S.ops()) do
        T.ok(rows[op] or ELSEWHERE[op], op .. ": no row, and no note of where it is tested")
        T.ok(not (rows[op] and ELSEWHERE[op]), op .. ": has rows; drop its note")
    end
end)

T.test("the support table answers by op, device, dtype and role", function()
    T.eq(S.dtypes("rmsnorm", "cpu"), { "f32", "bf16", "f16" })
    T.eq(S.dtypes("adamw", "cpu"), { "f32" })
    T.eq(S.dtypes("rmsnorm", "cuda"), { "f32", "bf16", "f16" })
    T.eq(S.dtypes("rmsnorm", "cuda:3", "read"), { "f32", "bf16", "f16" })
    T.eq(S.dtypes("matmul", "cpu", "read"), { "f32", "bf16", "f16" })
    T.eq(S.dtypes("adamw", "cuda"), { "f32" })
    T.eq(S.dtypes("swiglu", "cpu", "read"), {})
    T.ok(not S.supports("exp", "cuda", "i32"))
    T.raises(function() S.supports("no_such_op", "cpu", "f32") end, "unknown op \"no_such_op\"", true)
    T.raises(function() S.supports("exp", "tpu", "f32") end, "unknown device tpu", true)
    T.raises(function() S.supports("exp", "cpu", "f64") end, "unknown dtype f64", true)
    T.raises(function() S.supports("exp", "cpu", "f32", "write") end, "unknown role write", true)
end)

-- What the CPU does not take, refused in the table's words: AdamW's tensors in bf16 (master
-- weights and moments stay f32), integers where an op computes.
T.test("the CPU refuses what the support table does not list, in the table's words", function()
    local p = lt.zeros(4):bf16()
    T.raises(function() lt.ops.adamw_step(p, p, lt.zeros(4), lt.zeros(4), { lr = 1e-3, step = 1 }) end,
        "must be f32, got bf16 on cpu", true)
    local i = lt.zeros({ 3 }, { dtype = "i32" })
    T.raises(function() core.check(core.C.lt_unary_forward(lt.zeros(3), i, core.C.LT_UNARY_EXP)) end,
        "exp: x must be f32, bf16 or f16, got i32 on cpu", true)
end)

-- The comparison's rules on made-up results.
T.test("the device comparison's rules", function()
    local case = { f32_outputs = { "stat" }, close = { lse = { 1e-5, 1e-5 } } }
    local want = lt.randn(1000)
    local function cmp(name, got, dtype) return pcall(compare, case, "rule", name, got, want, dtype, "cpu") end
    T.ok(cmp("out", want:clone(), "f32"), "equal results pass")
    T.ok(cmp("out", want * (1 + 5e-6), "f32"), "5e-6 relative passes f32")
    T.ok(not cmp("out", want * (1 + 5e-5), "f32"), "5e-5 relative fails f32")
    T.ok(cmp("out", want:to("bf16"), "bf16"), "the naive bf16 result passes")
    T.ok(cmp("out", want * (1 + 2 ^ -10), "bf16"), "an error below the naive one passes")
    T.ok(not cmp("out", want * (1 + 2 ^ -6), "bf16"), "several times the naive error fails")
    T.ok(not cmp("stat", want:to("bf16"), "bf16"), "an f32 output is held to f32 in bf16 runs")
    T.ok(not cmp("lse", want + 1e-4, "f32"), "an output compared element by element fails on one element")
    local nan = want:clone()
    nan:set(7, 0 / 0)
    T.ok(not cmp("out", nan, "f32"), "NaN where the CPU has a number fails")
    local w2 = want
    want = nan:clone()
    T.ok(cmp("out", nan:clone(), "f32"), "NaN where the CPU has NaN passes")
    want:set(9, -math.huge)
    local inf = want:clone()
    T.ok(cmp("out", inf, "f32"), "-inf where the CPU has -inf passes")
    inf:set(9, 0)
    T.ok(not cmp("out", inf, "f32"), "a number where the CPU has -inf fails")
    want = w2
    local ids = lt.randint(0, 9, 20)
    T.ok(pcall(compare, case, "rule", "ids", ids:clone(), ids, "f32", "cpu"), "equal integers pass")
    local other = ids:clone()
    other:set(3, other:get(3) + 1)
    T.ok(not pcall(compare, case, "rule", "ids", other, ids, "f32", "cpu"), "integers must be equal")
    T.ok(not cmp("out", want:view(10, 100), "f32"), "another shape fails")
end)

T.done()
