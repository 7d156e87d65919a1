--[[
test_optim.lua - lt.optim: AdamW against PyTorch's AdamW arithmetic written out here in
Lua doubles (decoupled decay, moments, bias corrections, eps outside the corrected sqrt);
parameter groups; grad_scale folding; gradient-norm clipping (PyTorch's rule);
learning-rate setters; optimizer state round trips that continue the same trajectory bit
for bit; learning-rate schedules; and the errors users see.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local nn = lt.nn
local optim = lt.optim

lt.manual_seed(31)

-- ---- helpers --------------------------------------------------------------------------------

-- A parameter record as modules return them: { name, param, grad }.
local function record(name, values)
    return { name = name, param = lt.tensor(values), grad = lt.zeros(#values) }
end

-- The gradient for element i at step s: varied signs and magnitudes, including a zero
-- and ones small enough that eps matters.
local function grad_value(i, s)
    local base = { 0.5, -1.25, 0, 3e-8, -2e-7, 0.03 }
    local b = base[(i - 1) % #base + 1]
    return b * (1 + 0.3 * math.sin(s * 1.7 + i)) + (b == 0 and 0 or 0.01 * b * s)
end

-- PyTorch's AdamW (torch.optim.AdamW, foreach=False, amsgrad=False) in doubles.
local function adamw_ref(p, state, g, h)
    state.step = (state.step or 0) + 1
    state.m = state.m or {}
    state.v = state.v or {}
    local t = state.step
    local bc1 = 1 - h.beta1 ^ t
    local bc2 = 1 - h.beta2 ^ t
    for i = 1, #p do
        local gi = g[i] * (h.grad_scale or 1)
        p[i] = p[i] * (1 - h.lr * h.weight_decay)
        local m = h.beta1 * (state.m[i] or 0) + (1 - h.beta1) * gi
        local v = h.beta2 * (state.v[i] or 0) + (1 - h.beta2) * gi * gi
        state.m[i], state.v[i] = m, v
        local denom = math.sqrt(v) / math.sqrt(bc2) + h.eps
        p[i] = p[i] - (h.lr / bc1) * m / denom
    end
end

local function list_near(t, list, rtol, atol, msg)
    T.eq(t:numel(), #list, msg .. " numel")
    for i = 1, #list do T.near(t:get(i), list[i], rtol, atol, msg .. " element " .. i) end
end

local function set_grads(records, s)
    for _, r in ipairs(records) do
        for i = 1, r.grad:numel() do r.grad:set(i, grad_value(i + 7 * #r.name, s)) end
    end
end

local function as_list(t)
    local out = {}
    for i = 1, t:numel() do out[i] = t:get(i) end
    return out
end

-- ---- AdamW ----------------------------------------------------------------------------------

T.test("AdamW matches PyTorch's formula over 5 steps", function()
    local init = { 1.0, -0.5, 0.25, 2.0, -3.0, 0.0 }
    local r = record("w", init)
    local h = { lr = 1e-2, beta1 = 0.9, beta2 = 0.99, eps = 1e-8, weight_decay = 0.1 }
    local opt = optim.AdamW({ r }, { lr = h.lr, betas = { h.beta1, h.beta2 }, eps = h.eps,
        weight_decay = h.weight_decay })
    local ref, st = {}, {}
    for i, v in ipairs(init) do ref[i] = v end
    for s = 1, 5 do
        local g = {}
        for i = 1, 6 do
            g[i] = grad_value(i, s)
            r.grad:set(i, g[i])
        end
        g = as_list(r.grad) -- the f32 gradients the kernel sees
        opt:step()
        adamw_ref(ref, st, g, h)
        list_near(r.param, ref, 2e-6, 1e-7, "param after step " .. s)
    end
    local sd = opt:state_dict()
    T.eq(sd.params["1.1"].step, 5)
    T.eq(sd.params["1.1"].name, "w")
    list_near(sd.tensors["1.1.exp_avg"], st.m, 1e-5, 1e-12, "exp_avg")
    list_near(sd.tensors["1.1.exp_avg_sq"], st.v, 1e-5, 1e-20, "exp_avg_sq")
end)

T.test("AdamW defaults are PyTorch's (lr 1e-3, betas 0.9/0.999, eps 1e-8, weight_decay 1e-2)", function()
    local r = record("w", { 1, -2, 3 })
    local opt = optim.AdamW({ r })
    local g = opt.groups[1]
    T.eq({ g.lr, g.beta1, g.beta2, g.eps, g.weight_decay }, { 1e-3, 0.9, 0.999, 1e-8, 1e-2 })
    local ref, st = { 1, -2, 3 }, {}
    for s = 1, 3 do
        set_grads({ r }, s)
        adamw_ref(ref, st, as_list(r.grad), { lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 1e-2 })
        opt:step()
        list_near(r.param, ref, 1e-6, 1e-8, "step " .. s)
    end
    T.eq(opt:get_lr(), 1e-3)
end)

T.test("parameter groups keep their own lr, weight decay and betas", function()
    local a1, a2 = record("a1", { 1, 2 }), record("a2", { -1, 0.5, 4 })
    local b1 = record("b1", { 3, -3 })
    local opt = optim.AdamW({
        { params = { a1, a2 }, lr = 0.1, weight_decay = 0 },
        { params = { b1 }, weight_decay = 0.5, betas = { 0.8, 0.9 } },
    }, { lr = 0.01, eps = 1e-6 })
    T.eq(#opt.groups, 2)
    T.eq(opt.groups[2].lr, 0.01, "group 2 takes the default lr")
    T.eq(opt.groups[1].eps, 1e-6, "defaults fill every group")
    local ha = { lr = 0.1, weight_decay = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-6 }
    local hb = { lr = 0.01, weight_decay = 0.5, beta1 = 0.8, beta2 = 0.9, eps = 1e-6 }
    local refs = { a1 = { 1, 2 }, a2 = { -1, 0.5, 4 }, b1 = { 3, -3 } }
    local sts = { a1 = {}, a2 = {}, b1 = {} }
    for s = 1, 4 do
        set_grads({ a1, a2, b1 }, s)
        adamw_ref(refs.a1, sts.a1, as_list(a1.grad), ha)
        adamw_ref(refs.a2, sts.a2, as_list(a2.grad), ha)
        adamw_ref(refs.b1, sts.b1, as_list(b1.grad), hb)
        opt:step()
        list_near(a1.param, refs.a1, 2e-6, 1e-7, "a1 step " .. s)
        list_near(a2.param, refs.a2, 2e-6, 1e-7, "a2 step " .. s)
        list_near(b1.param, refs.b1, 2e-6, 1e-7, "b1 step " .. s)
    end
end)

T.test("grad_scale folds into the step: same as multiplying the gradients first", function()
    local c = 0.37
    local ra, rb = record("w", { 1, -2, 0.5, 4 }), record("w", { 1, -2, 0.5, 4 })
    local oa = optim.AdamW({ ra }, { lr = 0.05, weight_decay = 0.1 })
    local ob = optim.AdamW({ rb }, { lr = 0.05, weight_decay = 0.1 })
    for s = 1, 4 do
        set_grads({ ra }, s)
        set_grads({ rb }, s)
        oa:step({ grad_scale = c })
        rb.grad:mul_(c)
        ob:step()
        T.ok(ra.param:equal(rb.param), "bit-for-bit equal params at step " .. s)
    end
    -- the reference agrees too
    local ref, st = { 1, -2, 0.5, 4 }, {}
    local rc = record("w", { 1, -2, 0.5, 4 })
    local oc = optim.AdamW({ rc }, { lr = 0.05, weight_decay = 0.1 })
    for s = 1, 3 do
        set_grads({ rc }, s)
        adamw_ref(ref, st, as_list(rc.grad), { lr = 0.05, beta1 = 0.9, beta2 = 0.999, eps = 1e-8,
            weight_decay = 0.1, grad_scale = c })
        oc:step({ grad_scale = c })
        list_near(rc.param, ref, 2e-6, 1e-7, "scaled step " .. s)
    end
end)

T.test("AdamW:zero_grad and a step allocate nothing new", function()
    local l = nn.Linear(16, 8, { bias = true })
    lt.memory.collect()
    collectgarbage("stop")
    local m0 = lt.memory.stats().current
    local opt = optim.AdamW(l:parameters(), { lr = 1e-2 })
    local m1 = lt.memory.stats().current
    for s = 1, 3 do
        set_grads(l:parameters(), s)
        opt:step()
        opt:zero_grad()
    end
    local m2 = lt.memory.stats().current
    collectgarbage("restart")
    T.eq(m1 - m0, 2 * (16 * 8 + 8) * 4, "state: two moments per parameter, made up front")
    T.eq(m2, m1, "steps allocate nothing")
    for _, r in ipairs(l:parameters()) do T.eq(r.grad:abs():sum():item(), 0, "zero_grad " .. r.name) end
end)

-- ---- clipping --------------------------------------------------------------------------------

T.test("grad_norm, grad_norm_clip_coef and clip_grad_norm follow PyTorch's rule", function()
    local a, b = record("a", { 0, 0 }), record("b", { 0 })
    a.grad:copy_(lt.tensor({ 3, 4 }))
    b.grad:copy_(lt.tensor({ 12 }))
    local params = { a, b }
    T.eq(optim.grad_norm(params), 13)
    local norm, coef = optim.grad_norm_clip_coef(params, 1.0)
    T.eq(norm, 13)
    T.near(coef, 1 / (13 + 1e-6), 1e-15, 0, "min(1, max / (norm + 1e-6))")
    local _, c2 = optim.grad_norm_clip_coef(params, 100)
    T.eq(c2, 1, "no clipping below the limit")
    local _, c3 = optim.grad_norm_clip_coef(params)
    T.eq(c3, 1, "no max_norm: no clipping")
    local _, c4 = optim.grad_norm_clip_coef(params, 0)
    T.eq(c4, 1, "max_norm 0: no clipping")
    local before = a.grad:clone()
    T.eq(optim.clip_grad_norm(params, 100), 13)
    T.ok(a.grad:equal(before), "unclipped gradients are untouched")
    T.eq(optim.clip_grad_norm(params, 6.5), 13, "returns the norm before clipping")
    local k = 6.5 / (13 + 1e-6)
    list_near(a.grad, { 3 * k, 4 * k }, 1e-6, 0, "clipped a")
    list_near(b.grad, { 12 * k }, 1e-6, 0, "clipped b")
    T.near(optim.grad_norm(params), 6.5, 1e-6, 0, "norm after clipping")
    T.eq(optim.grad_norm({}), 0)
end)

T.test("clipping through grad_scale equals clipping the gradients in place", function()
    local ra, rb = record("w", { 1, 2, 3 }), record("w", { 1, 2, 3 })
    local oa = optim.AdamW({ ra }, { lr = 0.1 })
    local ob = optim.AdamW({ rb }, { lr = 0.1 })
    for s = 1, 3 do
        set_grads({ ra }, s)
        set_grads({ rb }, s)
        ra.grad:mul_(10)
        rb.grad:mul_(10)
        local _, coef = optim.grad_norm_clip_coef({ ra }, 1e-3)
        oa:step({ grad_scale = coef })
        optim.clip_grad_norm({ rb }, 1e-3)
        ob:step()
        T.ok(ra.param:equal(rb.param), "step " .. s)
    end
end)

-- ---- learning rates -----------------------------------------------------------------------------

T.test("set_lr, set_lr_factor and get_lr", function()
    local a, b = record("a", { 1 }), record("b", { 1 })
    local opt = optim.AdamW({ { params = { a }, lr = 0.1 }, { params = { b }, lr = 0.02 } })
    T.eq(opt:get_lr(), 0.1, "get_lr is the first group's lr")
    opt:set_lr_factor(0.5)
    T.eq(opt.groups[1].lr, 0.05)
    T.eq(opt.groups[2].lr, 0.01)
    opt:set_lr_factor(1)
    T.eq(opt.groups[2].lr, 0.02, "factors apply to the initial lr, not compound")
    opt:set_lr(0.3)
    T.eq(opt.groups[1].lr, 0.3)
    T.eq(opt.groups[2].lr, 0.3)
    T.eq(opt:get_lr(), 0.3)
    opt:set_lr_factor(0.1)
    T.near(opt.groups[2].lr, 0.002, 1e-15, 0, "set_lr_factor still scales the initial lr")
    -- the step uses the lr in force
    local r = record("w", { 1, -1 })
    local o = optim.AdamW({ r }, { lr = 0.2, weight_decay = 0.5 })
    o:set_lr_factor(0.25)
    set_grads({ r }, 1)
    local ref, st = { 1, -1 }, {}
    adamw_ref(ref, st, as_list(r.grad), { lr = 0.05, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.5 })
    o:step()
    list_near(r.param, ref, 2e-6, 1e-7, "step at the scaled lr")
end)

-- ---- optimizer state ------------------------------------------------------------------------------

-- Deep copy of a state dict (what saving it and loading it back gives).
local function snapshot(sd)
    local out = { tensors = {}, params = {}, groups = {} }
    for k, v in pairs(sd.tensors) do out.tensors[k] = v:clone() end
    for k, v in pairs(sd.params) do out.params[k] = { name = v.name, step = v.step, shape = v.shape } end
    for i, g in ipairs(sd.groups) do
        out.groups[i] = {}
        for k, v in pairs(g) do out.groups[i][k] = v end
    end
    return out
end

local function fill_grads(model, s)
    lt.manual_seed(1000 + s)
    for _, r in ipairs(model:parameters()) do r.grad:copy_(lt.randn(r.grad:shape())) end
end

T.test("state_dict / load_state_dict continue the same trajectory bit for bit", function()
    local function make()
        lt.manual_seed(40)
        return nn.Sequential(nn.Linear(6, 4, { bias = true }), nn.RMSNorm(4), nn.Linear(4, 3))
    end
    local m = make()
    local decay, no_decay = {}, {}
    for _, r in ipairs(m:parameters()) do
        if r.param:dim() >= 2 then decay[#decay + 1] = r else no_decay[#no_decay + 1] = r end
    end
    local opt = optim.AdamW({ { params = decay, weight_decay = 0.1 }, { params = no_decay, weight_decay = 0 } },
        { lr = 0.01 })
    local sched = optim.schedule("cosine", { warmup_steps = 2, total_steps = 8 })
    for s = 1, 3 do
        fill_grads(m, s)
        opt:set_lr_factor(sched(s))
        opt:step()
    end
    local saved_opt = snapshot(opt:state_dict())
    local saved_params = {}
    for k, v in pairs(m:state_dict()) do saved_params[k] = v:clone() end
    for s = 4, 6 do
        fill_grads(m, s)
        opt:set_lr_factor(sched(s))
        opt:step()
    end
    -- a fresh model and optimizer, restored
    local m2 = make()
    m2:load_state_dict(saved_params)
    local d2, n2 = {}, {}
    for _, r in ipairs(m2:parameters()) do
        if r.param:dim() >= 2 then d2[#d2 + 1] = r else n2[#n2 + 1] = r end
    end
    local opt2 = optim.AdamW({ { params = d2, weight_decay = 0.1 }, { params = n2, weight_decay = 0 } },
        { lr = 0.5 })
    opt2:load_state_dict(saved_opt)
    T.eq(opt2.groups[1].initial_lr, 0.01, "hyperparameters come back")
    T.eq(opt2.groups[1].lr, opt.groups[1].initial_lr * sched(3))
    for s = 4, 6 do
        fill_grads(m2, s)
        opt2:set_lr_factor(sched(s))
        opt2:step()
    end
    local a, b = m:state_dict(), m2:state_dict()
    for k, v in pairs(a) do T.ok(v:equal(b[k]), "bit-for-bit " .. k) end
    local sa, sb = opt:state_dict(), opt2:state_dict()
    for k, v in pairs(sa.tensors) do T.ok(v:equal(sb.tensors[k]), "state " .. k) end
    for _, meta in pairs(sb.params) do T.eq(meta.step, 6) end
end)

T.test("optimizer state round trip with same-named parameters from different modules", function()
    -- Two separate modules both call their weight "weight"; the state dict must still keep
    -- one state per parameter.
    local function make()
        lt.manual_seed(41)
        local l1, l2 = nn.Linear(3, 2), nn.Linear(3, 2)
        local opt = optim.AdamW({ { params = l1:parameters(), lr = 0.1 }, { params = l2:parameters(), lr = 0.01 } })
        return l1, l2, opt
    end
    local l1, l2, opt = make()
    local function steps(a, b, o, from, to)
        for s = from, to do
            lt.manual_seed(s)
            a:grad("weight"):copy_(lt.randn(2, 3))
            b:grad("weight"):copy_(lt.randn(2, 3))
            o:step()
        end
    end
    steps(l1, l2, opt, 1, 2)
    local saved = snapshot(opt:state_dict())
    local w1, w2 = l1.weight:clone(), l2.weight:clone()
    steps(l1, l2, opt, 3, 4)
    local k1, k2, opt2 = make()
    k1.weight:copy_(w1)
    k2.weight:copy_(w2)
    opt2:load_state_dict(saved)
    steps(k1, k2, opt2, 3, 4)
    T.ok(k1.weight:equal(l1.weight), "first module's trajectory continues")
    T.ok(k2.weight:equal(l2.weight), "second module's trajectory continues")
end)

T.test("load_state_dict errors", function()
    local r = record("w", { 1 })
    local opt = optim.AdamW({ r })
    T.raises(function() opt:load_state_dict({ tensors = {}, steps = {} }) end,
        "AdamW:load_state_dict: not an AdamW state", true)
    T.raises(function() opt:load_state_dict({ tensors = {}, params = {} }) end,
        "AdamW:load_state_dict: no state for group 1 parameter 1 (w)", true)
    local other = optim.AdamW({ record("w", { 1, 2 }) })
    T.raises(function() opt:load_state_dict(other:state_dict()) end,
        "parameter w has shape (1) but the saved state (2)", true)
end)

-- ---- schedules ------------------------------------------------------------------------------------

T.test("constant schedule with and without warm-up", function()
    local c = optim.schedule("constant")
    T.eq({ c(1), c(2), c(1000) }, { 1, 1, 1 })
    local w = optim.schedule("constant", { warmup_steps = 4 })
    T.eq({ w(1), w(2), w(4), w(5), w(1000) }, { 0.25, 0.5, 1, 1, 1 })
end)

T.test("linear schedule: warm-up, midway, end, past the end, min_factor", function()
    local s = optim.schedule("linear", { warmup_steps = 2, total_steps = 10 })
    T.eq(s(1), 0.5, "step 1 already learns")
    T.eq(s(2), 1, "end of warm-up")
    T.eq(s(3), 1, "the first decay step runs at the peak")
    T.near(s(6), 1 - 3 / 8, 1e-15, 0, "midway")
    T.near(s(10), 1 / 8, 1e-15, 0, "the last step still learns")
    T.near(s(11), 0, 0, 1e-15, "past the end")
    T.near(s(1000), 0, 0, 1e-15, "long past the end")
    local f = optim.schedule("linear", { warmup_steps = 2, total_steps = 10, min_factor = 0.1 })
    T.eq(f(1), 0.5, "warm-up ignores min_factor")
    T.near(f(6), 0.1 + 0.9 * (1 - 3 / 8), 1e-15, 0)
    T.near(f(10), 0.1 + 0.9 / 8, 1e-15, 0)
    T.near(f(50), 0.1, 1e-15, 0)
    local nw = optim.schedule("linear", { total_steps = 4 })
    T.eq(nw(1), 1, "no warm-up: the first step at the peak")
    T.near(nw(4), 0.25, 1e-15, 0)
end)

T.test("cosine schedule: warm-up, midway, end, past the end, min_factor", function()
    local s = optim.schedule("cosine", { warmup_steps = 2, total_steps = 10 })
    T.eq(s(1), 0.5)
    T.eq(s(2), 1)
    local function cosf(p) return 0.5 * (1 + math.cos(math.pi * p)) end
    T.eq(s(3), 1)
    T.near(s(4), cosf(1 / 8), 1e-15, 0)
    T.near(s(6), cosf(3 / 8), 1e-15, 0)
    T.near(s(10), cosf(7 / 8), 1e-15, 0, "the last step still learns")
    T.ok(s(10) > 0)
    T.near(s(25), 0, 0, 1e-15, "past the end")
    local f = optim.schedule("cosine", { warmup_steps = 2, total_steps = 10, min_factor = 0.2 })
    T.near(f(6), 0.2 + 0.8 * cosf(3 / 8), 1e-15, 0)
    T.near(f(10), 0.2 + 0.8 * cosf(7 / 8), 1e-15, 0)
    T.near(f(30), 0.2, 1e-15, 0)
    for step = 3, 9 do T.ok(f(step + 1) < f(step), "decreasing after warm-up at " .. step) end
    local nw = optim.schedule("cosine", { total_steps = 4 })
    T.eq(nw(1), 1)
    T.near(nw(2), cosf(1 / 4), 1e-15, 0)
end)

T.test("schedule errors: missing total_steps, bad kind", function()
    T.raises(function() optim.schedule("linear") end, 'schedule "linear" needs total_steps', true)
    T.raises(function() optim.schedule("cosine", { total_steps = 0 }) end, 'schedule "cosine" needs total_steps', true)
    T.raises(function() optim.schedule("cosin", { total_steps = 10 }) end,
        'unknown schedule "cosin" (constant, linear, cosine)', true)
end)

T.test("a misspelled schedule kind is reported as unknown even without total_steps", function()
    T.raises(function() optim.schedule("cosin") end, 'unknown schedule "cosin"', true)
end)

-- ---- errors -----------------------------------------------------------------------------------------

T.test("AdamW refuses frozen parameters and a parameter in two groups", function()
    local l = nn.Linear(3, 2, { trainable = false })
    T.raises(function() optim.AdamW(l:named_parameters()) end, "has no gradient: it is frozen")
    local r = record("w", { 1, 2 })
    T.raises(function() optim.AdamW({ { params = { r } }, { params = { r } } }) end,
        "AdamW: parameter w is listed more than once", true)
    T.raises(function() optim.AdamW({ r, r }) end, "listed more than once")
    T.raises(function() optim.AdamW("params") end, "params must be a list")
end)

T.test("the frozen-parameter error names the parameter", function()
    local s = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2, { trainable = false }))
    local err = T.raises(function() optim.AdamW(s:named_parameters()) end, "frozen")
    T.ok(err:find("1.weight", 1, true), "the message should name 1.weight: " .. err)
end)

T.test("the same parameter reached through two parameters() calls is caught", function()
    local l = nn.Linear(3, 2)
    T.raises(function() optim.AdamW({ { params = l:parameters() }, { params = l:parameters() } }) end,
        "listed more than once")
end)

T.test("bad hyperparameters are reported", function()
    local r = record("w", { 1, 2 })
    local opt = optim.AdamW({ r }, { lr = -1 })
    T.raises(function() opt:step() end, "lr >= 0")
    local o2 = optim.AdamW({ r }, { betas = { 1, 0.999 } })
    T.raises(function() o2:step() end, "beta")
end)

T.done()
