--[[
test_op_grads.lua - every op's backward against central finite differences.

For each row of op_cases.lua: L(inputs) = sum(forward(inputs) * R) for a fixed random R,
accumulated in f64. backward(inputs, R) must equal dL/dinput, checked at up to 40
elements of each input (all of them for small inputs) by
    |fd - grad| <= atol + rtol * max(|fd|, |grad|)
The forward runs in f32, so the differences carry f32 rounding of the outputs a
perturbation touches, divided by 2h: the defaults h = 1e-2, rtol = 1e-2, atol = 2e-3
sit well above that noise and far below the size of any real error (a wrong sign, a missing
term or a wrong index changes a gradient entry by O(1)).
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local ffi = require "ffi"

lt.manual_seed(1234)
local cases = require "op_cases"

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

math.randomseed(99)
local checked = 0
for _, case in ipairs(cases) do
    T.test(case.name, function()
        local inp = case.inputs()
        local out = case.forward(inp)
        T.ok(lt.is_tensor(out), "forward must return a tensor")
        local R = lt.randn(out:shape())
        local grads = case.backward(inp, R)
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
                    error(("%s: d/d%s[%d]: finite difference %.6g, backward %.6g (tolerance %.2g)"):format(
                        case.name, name, i, fd, an, tol), 0)
                end
                checked = checked + 1
            end
        end
    end)
end
print(("%d op cases, %d gradient entries checked"):format(#cases, checked))
T.done()
