--[[
optim.lua - AdamW with parameter groups, gradient-norm clipping, learning-rate schedules.

    local opt = lt.optim.AdamW(model:parameters(), { lr = 3e-4, weight_decay = 0.1 })
    -- or groups: lt.optim.AdamW({ { params = decay, weight_decay = 0.1 },
    --                             { params = no_decay, weight_decay = 0 } }, { lr = 3e-4 })
    local norm, coef = lt.optim.grad_norm_clip_coef(model:parameters(), 1.0)
    opt:step({ grad_scale = coef })   -- clipping folded into the update: no extra pass
    opt:zero_grad()

Parameters are the records modules return from parameters(): { name, param, grad }.
Optimizer state (exp_avg, exp_avg_sq) is allocated when the optimizer is made, so steps
allocate nothing.
]]
local tensor = require "luatrain.tensor"
local F = require "luatrain.ops.nn"

local M = {}

local AdamW = {}
AdamW.__index = AdamW

local function is_group_list(list)
    return type(list[1]) == "table" and list[1].params ~= nil
end

-- opts: lr (1e-3), betas ({0.9, 0.999}), eps (1e-8), weight_decay (0.01), as PyTorch.
function M.AdamW(params, opts)
    opts = opts or {}
    if type(params) ~= "table" then error("AdamW: params must be a list of parameter records or groups", 2) end
    local defaults = {
        lr = opts.lr or 1e-3,
        beta1 = opts.betas and opts.betas[1] or 0.9,
        beta2 = opts.betas and opts.betas[2] or 0.999,
        eps = opts.eps or 1e-8,
        weight_decay = opts.weight_decay or 1e-2,
    }
    local groups = is_group_list(params) and params or { { params = params } }
    local self = setmetatable({ groups = {}, state = {}, defaults = defaults }, AdamW)
    local seen = {}
    for gi, g in ipairs(groups) do
        local group = { params = {} }
        for k, v in pairs(defaults) do group[k] = v end
        for k, v in pairs(g) do
            if k == "betas" then
                group.beta1, group.beta2 = v[1], v[2]
            elseif k ~= "params" then
                group[k] = v
            end
        end
        group.initial_lr = group.lr
        for _, r in ipairs(g.params) do
            if not (r.param and r.grad) then
                error(("AdamW: group %d holds an entry without param and grad (frozen parameters have no gradient)"):format(gi), 2)
            end
            if seen[r] then error(("AdamW: parameter %s is in more than one group"):format(r.name or "?"), 2) end
            seen[r] = true
            group.params[#group.params + 1] = r
            self.state[r] = {
                step = 0,
                exp_avg = tensor.zeros(r.param:shape()),
                exp_avg_sq = tensor.zeros(r.param:shape()),
            }
        end
        self.groups[#self.groups + 1] = group
    end
    return self
end

local hyper = {}

-- opts.grad_scale multiplies every gradient first (clipping coefficient, 1/loss scale).
function AdamW:step(opts)
    local gs = opts and opts.grad_scale or 1
    for _, g in ipairs(self.groups) do
        hyper.lr, hyper.beta1, hyper.beta2 = g.lr, g.beta1, g.beta2
        hyper.eps, hyper.weight_decay, hyper.grad_scale = g.eps, g.weight_decay, gs
        for _, r in ipairs(g.params) do
            local st = self.state[r]
            st.step = st.step + 1
            hyper.step = st.step
            F.adamw_step(r.param, r.grad, st.exp_avg, st.exp_avg_sq, hyper)
        end
    end
end

function AdamW:zero_grad()
    for _, g in ipairs(self.groups) do
        for _, r in ipairs(g.params) do r.grad:zero_() end
    end
end

-- Every group's lr becomes its initial lr times `factor` (what a schedule returns).
function AdamW:set_lr_factor(factor)
    for _, g in ipairs(self.groups) do g.lr = g.initial_lr * factor end
end

function AdamW:set_lr(lr)
    for _, g in ipairs(self.groups) do g.lr = lr end
end

function AdamW:get_lr() return self.groups[1] and self.groups[1].lr end

-- Tensors keyed "<param name>.exp_avg" / ".exp_avg_sq", plus steps and hyperparameters.
function AdamW:state_dict()
    local tensors, steps, groups = {}, {}, {}
    for gi, g in ipairs(self.groups) do
        groups[gi] = { lr = g.lr, initial_lr = g.initial_lr, beta1 = g.beta1, beta2 = g.beta2,
            eps = g.eps, weight_decay = g.weight_decay }
        for _, r in ipairs(g.params) do
            local st = self.state[r]
            tensors[r.name .. ".exp_avg"] = st.exp_avg
            tensors[r.name .. ".exp_avg_sq"] = st.exp_avg_sq
            steps[r.name] = st.step
        end
    end
    return { tensors = tensors, steps = steps, groups = groups }
end

function AdamW:load_state_dict(sd)
    for gi, g in ipairs(self.groups) do
        local sg = sd.groups and sd.groups[gi]
        if sg then for k, v in pairs(sg) do g[k] = v end end
        for _, r in ipairs(g.params) do
            local st = self.state[r]
            local m, v = sd.tensors[r.name .. ".exp_avg"], sd.tensors[r.name .. ".exp_avg_sq"]
            if not (m and v and sd.steps[r.name]) then
                error(("AdamW:load_state_dict: no state for parameter %s"):format(r.name), 2)
            end
            st.exp_avg:copy_(m)
            st.exp_avg_sq:copy_(v)
            st.step = sd.steps[r.name]
        end
    end
end

-- ---- gradient norms ---------------------------------------------------------------------

-- The global L2 norm of the gradients of `params` (records with .grad).
function M.grad_norm(params)
    local list = {}
    for _, r in ipairs(params) do list[#list + 1] = r.grad end
    return F.global_norm(list)
end

-- norm, and the factor min(1, max_norm / (norm + 1e-6)) that clipping multiplies by
-- (PyTorch's clip_grad_norm_ rule). Pass the factor to opt:step{grad_scale=...}.
function M.grad_norm_clip_coef(params, max_norm)
    local norm = M.grad_norm(params)
    if not max_norm or max_norm <= 0 then return norm, 1 end
    local coef = max_norm / (norm + 1e-6)
    return norm, coef < 1 and coef or 1
end

-- Clip in place (scales the gradients); returns the norm before clipping.
function M.clip_grad_norm(params, max_norm)
    local norm, coef = M.grad_norm_clip_coef(params, max_norm)
    if coef < 1 then
        for _, r in ipairs(params) do tensor.methods.mul_(r.grad, coef) end
    end
    return norm
end

-- ---- learning-rate schedules --------------------------------------------------------------

-- A function step -> lr factor (multiply the peak lr), for 1-based optimizer steps.
-- kind: "constant", "linear" or "cosine"; opts: warmup_steps (0), total_steps (needed for
-- linear and cosine), min_factor (0: decay to zero). Warm-up is linear from 1/warmup to 1,
-- so the first step already learns.
function M.schedule(kind, opts)
    opts = opts or {}
    local warmup = opts.warmup_steps or 0
    local total = opts.total_steps
    local floor = opts.min_factor or 0
    if kind ~= "constant" and not (total and total > 0) then
        error(("schedule %q needs total_steps"):format(tostring(kind)), 2)
    end
    local decay
    if kind == "constant" then
        decay = function() return 1 end
    elseif kind == "linear" then
        decay = function(p) return 1 - p end
    elseif kind == "cosine" then
        decay = function(p) return 0.5 * (1 + math.cos(math.pi * p)) end
    else
        error(("unknown schedule %q (constant, linear, cosine)"):format(tostring(kind)), 2)
    end
    return function(step)
        if step <= warmup then return step / warmup end
        if kind == "constant" then return 1 end
        local p = (step - warmup) / math.max(1, total - warmup)
        if p > 1 then p = 1 end
        return floor + (1 - floor) * decay(p)
    end
end

return M
