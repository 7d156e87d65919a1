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
local ffi = require "ffi"
local core = require "luatrain.core"
local tensor = require "luatrain.tensor"
local F = require "luatrain.ops.nn"

local M = {}

local AdamW = {}
AdamW.__index = AdamW

local function is_group_list(list)
    return type(list[1]) == "table" and list[1].params ~= nil
end

-- opts: lr (1e-3), betas ({0.9, 0.999}), eps (1e-8), weight_decay (0.01), as PyTorch;
-- paged (false): the moments live in the paged pool (host memory outside every device's
-- budget) and stream through two page buffers of page_mb MiB (default 8) on the
-- parameter's device during the update, which is otherwise the same arithmetic, bit for
-- bit: a run that would not fit its budget with the moments resident fits with them paged.
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
    local self = setmetatable({ groups = {}, state = {}, defaults = defaults, paged = opts.paged and true or false,
        page_elems = math.floor((opts.page_mb or 8) * 2 ^ 20 / 4) }, AdamW)
    if self.page_elems < 1 then error("AdamW: page_mb must be positive", 2) end
    local seen = {} -- parameter storage key -> name, to catch one parameter listed twice
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
        for pi, r in ipairs(g.params) do
            local name = r.name or ("entry " .. pi)
            if not r.param then
                error(("AdamW: group %d, %s has no param"):format(gi, name), 2)
            end
            if not r.grad then
                error(("AdamW: parameter %s (group %d) has no gradient: it is frozen, so leave it out"):format(
                    name, gi), 2)
            end
            local id = tostring(r.param.storage) .. ":" .. tostring(r.param.offset)
            if seen[id] then
                error(("AdamW: parameter %s is listed more than once (also as %s); a parameter belongs in one place in one group"):format(
                    name, seen[id]), 2)
            end
            seen[id] = name
            group.params[#group.params + 1] = r
            -- the state lives where the parameter does, or in the paged pool
            local where = self.paged and { paged = true } or { device = r.param.device }
            self.state[r] = {
                step = 0,
                exp_avg = self.paged and tensor.empty(r.param:shape(), where) or tensor.zeros(r.param:shape(), where),
                exp_avg_sq = self.paged and tensor.empty(r.param:shape(), where) or tensor.zeros(r.param:shape(), where),
            }
        end
        self.groups[#self.groups + 1] = group
    end
    return self
end

local hyper = {}
local multi_params = ffi.new("lt_adamw_params")

-- A group whose parameters all sit on one CUDA device at one step count is updated by one
-- lt_adamw_step_multi launch; the pointer arrays are made once per group and refilled.
local function step_group_multi(self, g, gs)
    local list = g.params
    local n = #list
    if n == 0 then return true end
    local s0 = list[1].param.storage
    if s0 == nil or s0.device_type ~= core.C.LT_DEVICE_CUDA then return false end
    local step = self.state[list[1]].step
    for i = 2, n do
        local s = list[i].param.storage
        if s == nil or s.device_type ~= s0.device_type or s.device_index ~= s0.device_index or
            self.state[list[i]].step ~= step then
            return false
        end
    end
    local arr = g._multi
    if not arr or arr.n ~= n then
        arr = { n = n, p = ffi.new("lt_tensor*[?]", n), g = ffi.new("const lt_tensor*[?]", n),
            m = ffi.new("lt_tensor*[?]", n), v = ffi.new("lt_tensor*[?]", n) }
        g._multi = arr
    end
    for i = 1, n do
        local r = list[i]
        local st = self.state[r]
        arr.p[i - 1], arr.g[i - 1], arr.m[i - 1], arr.v[i - 1] = r.param, r.grad, st.exp_avg, st.exp_avg_sq
    end
    local h = multi_params
    h.lr, h.beta1, h.beta2, h.eps = g.lr, g.beta1, g.beta2, g.eps
    h.weight_decay, h.grad_scale, h.step = g.weight_decay, gs, step + 1
    core.check(core.C.lt_adamw_step_multi(arr.p, arr.g, arr.m, arr.v, n, h))
    for i = 1, n do self.state[list[i]].step = step + 1 end
    return true
end

-- The paged update: each parameter in pages of page_elems elements; a page's moments are
-- copied from the pool into two buffers on the parameter's device, updated with the
-- parameter's page, and copied back. The buffers live for the update only.
local function step_paged(self, gs)
    local bufs = {}
    for _, g in ipairs(self.groups) do
        hyper.lr, hyper.beta1, hyper.beta2 = g.lr, g.beta1, g.beta2
        hyper.eps, hyper.weight_decay, hyper.grad_scale = g.eps, g.weight_decay, gs
        for _, r in ipairs(g.params) do
            local st = self.state[r]
            st.step = st.step + 1
            hyper.step = st.step
            local n = r.param:numel()
            local dev = r.param.device
            local b = bufs[dev]
            if not b then
                local size = math.min(self.page_elems, self.max_numel)
                b = { m = tensor.empty({ size }, { device = dev }), v = tensor.empty({ size }, { device = dev }) }
                bufs[dev] = b
            end
            local p, gr = r.param:view(n), r.grad:view(n)
            local m, v = st.exp_avg:view(n), st.exp_avg_sq:view(n)
            for start = 1, n, self.page_elems do
                local len = math.min(self.page_elems, n - start + 1)
                local bm, bv = b.m:narrow(1, 1, len), b.v:narrow(1, 1, len)
                local pm, pv = m:narrow(1, start, len), v:narrow(1, start, len)
                bm:copy_(pm)
                bv:copy_(pv)
                F.adamw_step(p:narrow(1, start, len), gr:narrow(1, start, len), bm, bv, hyper)
                pm:copy_(bm)
                pv:copy_(bv)
                -- views hold their storage until collected: drop them now (see below)
                bm:free()
                bv:free()
            end
        end
    end
    -- copies back to the pool may still be in flight on a device's stream: finish them
    -- before the buffers go and before anyone reads the pool; the buffers are freed now,
    -- not when the collector gets to them, so the update's peak is the only one
    for dev, b in pairs(bufs) do
        if dev ~= "cpu" then require("luatrain.cuda").synchronize(dev) end
        b.m:free()
        b.v:free()
    end
end

-- opts.grad_scale multiplies every gradient first (clipping coefficient, 1/loss scale).
-- Parameters on the CPU are updated one tensor at a time (each in parallel inside); a
-- group on one CUDA device goes in one launch.
function AdamW:step(opts)
    local gs = opts and opts.grad_scale or 1
    if self.paged then
        if not self.max_numel then
            self.max_numel = 1
            for _, g in ipairs(self.groups) do
                for _, r in ipairs(g.params) do self.max_numel = math.max(self.max_numel, r.param:numel()) end
            end
        end
        return step_paged(self, gs)
    end
    for _, g in ipairs(self.groups) do
        hyper.lr, hyper.beta1, hyper.beta2 = g.lr, g.beta1, g.beta2
        hyper.eps, hyper.weight_decay, hyper.grad_scale = g.eps, g.weight_decay, gs
        if not step_group_multi(self, g, gs) then
            for _, r in ipairs(g.params) do
                local st = self.state[r]
                st.step = st.step + 1
                hyper.step = st.step
                F.adamw_step(r.param, r.grad, st.exp_avg, st.exp_avg_sq, hyper)
            end
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

-- The optimizer state, keyed by position ("<group>.<index>") as PyTorch keys it, so two
-- parameters with the same name from different modules never collide:
-- { tensors = { ["1.3.exp_avg"] = t, ... }, params = { ["1.3"] = { name, step, shape } },
--   groups = { { lr, initial_lr, beta1, beta2, eps, weight_decay }, ... } }
function AdamW:state_dict()
    local tensors, params, groups = {}, {}, {}
    for gi, g in ipairs(self.groups) do
        groups[gi] = { lr = g.lr, initial_lr = g.initial_lr, beta1 = g.beta1, beta2 = g.beta2,
            eps = g.eps, weight_decay = g.weight_decay }
        for pi, r in ipairs(g.params) do
            local st = self.state[r]
            local key = gi .. "." .. pi
            tensors[key .. ".exp_avg"] = st.exp_avg
            tensors[key .. ".exp_avg_sq"] = st.exp_avg_sq
            params[key] = { name = r.name, step = st.step, shape = r.param:shape() }
        end
    end
    return { tensors = tensors, params = params, groups = groups }
end

-- Restore a state_dict made by an optimizer over the same parameters in the same groups.
function AdamW:load_state_dict(sd)
    if type(sd) ~= "table" or type(sd.tensors) ~= "table" or type(sd.params) ~= "table" then
        error("AdamW:load_state_dict: not an AdamW state (need tensors and params)", 2)
    end
    for gi, g in ipairs(self.groups) do
        for pi, r in ipairs(g.params) do
            local key = gi .. "." .. pi
            local meta = sd.params[key]
            local m, v = sd.tensors[key .. ".exp_avg"], sd.tensors[key .. ".exp_avg_sq"]
            local name = r.name or key
            if not (meta and m and v) then
                error(("AdamW:load_state_dict: no state for group %d parameter %d (%s)"):format(gi, pi, name), 2)
            end
            local want, have = r.param:shape(), m:shape()
            if table.concat(want, ",") ~= table.concat(have, ",") then
                error(("AdamW:load_state_dict: parameter %s has shape (%s) but the saved state (%s)"):format(
                    name, table.concat(want, ", "), table.concat(have, ", ")), 2)
            end
        end
    end
    for gi, g in ipairs(self.groups) do
        local sg = sd.groups and sd.groups[gi]
        if sg then for k, val in pairs(sg) do g[k] = val end end
        for pi, r in ipairs(g.params) do
            local key = gi .. "." .. pi
            local st = self.state[r]
            st.exp_avg:copy_(sd.tensors[key .. ".exp_avg"])
            st.exp_avg_sq:copy_(sd.tensors[key .. ".exp_avg_sq"])
            st.step = sd.params[key].step
        end
    end
end

-- ---- SGD -------------------------------------------------------------------------------------

-- Plain SGD: p -= lr * (grad_scale * grad + weight_decay * p). No momentum: its update is
-- proportional to the gradient, so a test that trains with it sees a wrong gradient scale
-- (AdamW's update divides it out). opts: lr (1e-2), weight_decay (0); groups as AdamW's.
local SGD = {}
SGD.__index = SGD

function M.SGD(params, opts)
    opts = opts or {}
    if type(params) ~= "table" then error("SGD: params must be a list of parameter records or groups", 2) end
    local groups = is_group_list(params) and params or { { params = params } }
    local self = setmetatable({ groups = {}, state = {} }, SGD)
    for gi, g in ipairs(groups) do
        local group = { params = {}, lr = g.lr or opts.lr or 1e-2, weight_decay = g.weight_decay or opts.weight_decay or 0 }
        group.initial_lr = group.lr
        for pi, r in ipairs(g.params) do
            if not r.grad then
                error(("SGD: parameter %s (group %d) has no gradient: it is frozen, so leave it out"):format(
                    r.name or ("entry " .. pi), gi), 2)
            end
            group.params[#group.params + 1] = r
        end
        self.groups[gi] = group
    end
    return self
end

function SGD:step(opts)
    local gs = opts and opts.grad_scale or 1
    for _, g in ipairs(self.groups) do
        for _, r in ipairs(g.params) do
            if g.weight_decay ~= 0 then r.param:mul_(1 - g.lr * g.weight_decay) end
            r.param:add_(r.grad, -g.lr * gs)
        end
    end
end

function SGD:zero_grad()
    for _, g in ipairs(self.groups) do
        for _, r in ipairs(g.params) do r.grad:zero_() end
    end
end

function SGD:set_lr_factor(factor)
    for _, g in ipairs(self.groups) do g.lr = g.initial_lr * factor end
end

function SGD:get_lr() return self.groups[1] and self.groups[1].lr end

-- SGD keeps no state but its learning rates.
function SGD:state_dict()
    local groups = {}
    for gi, g in ipairs(self.groups) do groups[gi] = { lr = g.lr, initial_lr = g.initial_lr, weight_decay = g.weight_decay } end
    return { tensors = {}, params = {}, groups = groups }
end

function SGD:load_state_dict(sd)
    for gi, g in ipairs(self.groups) do
        local sg = sd.groups and sd.groups[gi]
        if sg then for k, v in pairs(sg) do g[k] = v end end
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
-- (PyTorch's clip_grad_norm_ rule). Pass the factor to opt:step{grad_scale=...}. A NaN or
-- infinite norm is an error: no factor makes such gradients usable, and clipping must never
-- turn them into an update of ordinary size.
function M.grad_norm_clip_coef(params, max_norm)
    local norm = M.grad_norm(params)
    if norm ~= norm or norm == math.huge then
        error(("grad_norm_clip_coef: the gradient norm is %s; the gradients hold a NaN or an infinity"):format(
            tostring(norm)), 2)
    end
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

-- ---- LoRA+ ---------------------------------------------------------------------------------

-- Parameter groups for LoRA+ (Hayou, Ghosh and Yu, 2024): the adapters' B matrices learn
-- `ratio` times faster than everything else (A matrices, DoRA magnitudes, any other
-- trainable parameter). opts: lr, ratio (16 in the paper's experiments), weight_decay.
function M.lora_plus_groups(model, opts)
    opts = opts or {}
    local ratio = opts.ratio or 16
    if type(ratio) ~= "number" or ratio <= 0 then
        error(("lora_plus_groups: ratio must be a positive number, got %s"):format(tostring(ratio)), 2)
    end
    local lr = opts.lr or 1e-3
    local b, rest = {}, {}
    for _, r in ipairs(model:parameters()) do
        if r.name:find("%.lora_B%.weight$") then b[#b + 1] = r else rest[#rest + 1] = r end
    end
    if #b == 0 then error("lora_plus_groups: the model has no LoRA B matrices (lt.lora.apply first)", 2) end
    local groups = { { params = b, lr = lr * ratio, weight_decay = opts.weight_decay } }
    if #rest > 0 then table.insert(groups, 1, { params = rest, lr = lr, weight_decay = opts.weight_decay }) end
    return groups
end

-- ---- learning-rate schedules --------------------------------------------------------------

-- A function step -> lr factor (multiply the peak lr), for 1-based optimizer steps.
-- kind: "constant", "linear" or "cosine"; opts: warmup_steps W (0), total_steps T (needed
-- for linear and cosine), min_factor (0: decay to zero).
--   steps 1..W        factor s / W: linear warm-up, so the first step already learns
--   steps W+1..T      progress p = (s - W - 1) / (T - W) from 0 towards 1, so the first
--                     decay step runs at the peak and the last one still learns (the same
--                     factors as Hugging Face's schedules, which count steps from 0)
--   after T           min_factor
function M.schedule(kind, opts)
    opts = opts or {}
    local warmup = opts.warmup_steps or 0
    local total = opts.total_steps
    local floor = opts.min_factor or 0
    if kind ~= "constant" and kind ~= "linear" and kind ~= "cosine" then
        error(("unknown schedule %q (constant, linear, cosine)"):format(tostring(kind)), 2)
    end
    if kind ~= "constant" and not (total and total > 0) then
        error(("schedule %q needs total_steps"):format(tostring(kind)), 2)
    end
    local decay
    if kind == "constant" then
        decay = function() return 1 end
    elseif kind == "linear" then
        decay = function(p) return 1 - p end
    else
        decay = function(p) return 0.5 * (1 + math.cos(math.pi * p)) end
    end
    return function(step)
        if step <= warmup then return step / warmup end
        if kind == "constant" then return 1 end
        local p = (step - warmup - 1) / math.max(1, total - warmup)
        if p > 1 then p = 1 end
        return floor + (1 - floor) * decay(p)
    end
end

return M
