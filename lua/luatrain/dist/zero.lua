--[[
dist/zero.lua - ZeRO stages 1, 2 and 3: the optimizer's state, the gradients and the layers'
parameters sharded over the ranks.

    local opt = require("luatrain.dist.zero").new(model, pg, caller_adamw, { stage = 2 })
    -- opt has the optimizer interface: zero_grad, step{grad_scale}, set_lr_factor, get_lr,
    -- state_dict, load_state_dict; the trainer drives it like any optimizer

Each flat trainable buffer (Module:flatten_parameters, padded to a multiple of world x 64
elements) is cut into `world` equal shards; rank r owns elements [r*S, (r+1)*S). AdamW's
moments (8 bytes per element) exist only for the rank's shard: 1/world of them, plus the
padding; with a paged AdamW (optim=paged_adamw) they live in the paged pool, host
memory. After the backward the gradients are reduce-scattered, so rank r holds the sum
over all ranks of its shard: stage 1 once per step, after the last micro-batch; stage 2
after every micro-batch, into a shard accumulator. Rank r then updates its shard of the
parameters with the caller's AdamW hyperparameters (each parameter group's own lr, betas,
eps and weight decay, applied to the pieces of that group's parameters the shard holds),
and the updated shards are all-gathered into every rank's parameters.

Stages 1 and 2 keep the trainable f32 parameters (luatrain's master weights) whole on
every rank. Stage 3 shards them too: each decoder layer's flat group keeps only the rank's
shard, and the layer is all-gathered into one of two layer buffers before its forward and
again before its backward (inside the recomputation of a checkpointed layer), while the
next layer in that direction is gathered into the other buffer; after its backward the
layer's gradients (one gradient buffer) are reduce-scattered into the shard. Groups outside
the layers (embeddings, final norm, head) stay whole, as stage 1 treats them. Between uses a
layer's shard stays here, or goes where the optimizer's state goes: with offload=nvme into
its file (read back a layer ahead of use), with offload=cpu into host memory when the
weights are on a GPU (copied up a layer ahead); either way into one of two staging buffers.

Checkpoints: state_dict gathers the shards to rank 0 in the single-process layout (the
caller's optimizer's groups and positions); load_state_dict takes that layout and every
rank copies out its shard, so a checkpoint saved at one world size loads at any other.
]]
local optim = require "luatrain.optim"
local tensor = require "luatrain.tensor"

local M = {}
local Zero = {}
Zero.__index = Zero

-- opts: stage (1, 2 or 3).
function M.new(model, pg, base, opts)
    opts = opts or {}
    local stage = opts.stage or 1
    if stage ~= 1 and stage ~= 2 and stage ~= 3 then
        error(("zero: stage must be 1, 2 or 3, got %s"):format(tostring(stage)), 2)
    end
    if type(base) == "table" and base.kind == "adamw_8bit" then
        error(("zero=%d with optim=adamw_8bit is not supported yet (ZeRO shards 32-bit AdamW state; use zero=0 or "
            .. "optim=adamw)"):format(stage), 2)
    end
    if type(base) ~= "table" or not base.groups or not base.state then
        error("zero: needs the AdamW optimizer to shard (lt.optim.AdamW)", 2)
    end
    local flat = model:flat_parameters()
    if not flat then error("zero: flatten the model's parameters first (Module:flatten_parameters)", 2) end
    local W, r = pg.world, pg.rank
    local self = setmetatable({ model = model, pg = pg, base = base, stage = stage, shards = {},
        micro = 0 }, Zero)
    -- the caller's groups, by parameter tensor (records are made afresh by every
    -- parameters() call; the tensors are the same objects): where each parameter's
    -- hyperparameters live
    local group_of = {}
    for gi, g in ipairs(base.groups) do
        for pi, rec in ipairs(g.params) do group_of[rec.param] = { gi = gi, pi = pi } end
    end
    local seg_groups = {}
    for gi in ipairs(base.groups) do seg_groups[gi] = {} end
    for _, g in ipairs(flat) do
        if g.grads then
            if g.numel % W ~= 0 then
                error(("zero: a flat buffer of %d elements does not split into %d shards (flatten with pad_multiple = %d)"):format(
                    g.numel, W, W), 2)
            end
            local S = g.numel / W
            local lo, hi = r * S, (r + 1) * S
            -- stage 3, a decoder layer's group: the rank's shard of its parameters is its own
            -- storage; the whole layer exists only while it runs (gathered into a layer buffer)
            local layered = stage == 3 and g.layer ~= nil
            -- offload=cpu: a GPU layer's shard lives in host memory (the paged pool), where the
            -- host's AdamW updates it, and is copied up before its gather (opts.offload_params
            -- = "cpu" does the same for CPU weights: a test of the path without a GPU)
            local host_shard = layered and base.host and (g.params.device ~= "cpu" or opts.offload_params == "cpu")
            local param
            if layered then
                param = tensor.empty({ S }, { dtype = g.params.dtype, device = not host_shard and g.params.device or nil,
                    paged = host_shard or nil })
                param:copy_(g.params:narrow(1, lo + 1, S))
            else
                param = g.params:narrow(1, lo + 1, S)
            end
            local sh = { group = g, lo = lo, hi = hi, S = S, layer = layered and g.layer or nil,
                offloaded = host_shard and "host" or nil,
                grad = tensor.zeros({ S }, { device = g.grads.device }),
                param = param,
                send = not layered and tensor.empty({ S }, { dtype = g.params.dtype, device = g.params.device }) or nil,
                segments = {}, acc = 0 }
            if stage == 2 or layered then sh.scratch = tensor.zeros({ S }, { device = g.grads.device }) end
            for _, e in ipairs(g.entries) do
                local a, b = math.max(lo, e.offset), math.min(hi, e.offset + e.numel)
                local where = group_of[e.record.param]
                if b > a then
                    if not where then
                        error(("zero: parameter %s is trainable but not in the optimizer"):format(e.name), 2)
                    end
                    local seg = { entry = e, gi = where.gi, pi = where.pi, start = a - e.offset, n = b - a,
                        record = { name = ("%s[%d:%d]"):format(e.name, a - e.offset, b - e.offset),
                            param = layered and param:narrow(1, a - lo + 1, b - a) or g.params:narrow(1, a + 1, b - a),
                            grad = sh.grad:narrow(1, a - lo + 1, b - a) } }
                    sh.segments[#sh.segments + 1] = seg
                    local list = seg_groups[where.gi]
                    list[#list + 1] = seg
                end
            end
            self.shards[#self.shards + 1] = sh
        end
    end
    -- the rank's optimizer: AdamW over its segments, group by group as the caller's
    local groups = {}
    for gi, g in ipairs(base.groups) do
        local recs = {}
        for i, seg in ipairs(seg_groups[gi]) do recs[i] = seg.record end
        groups[gi] = { params = recs, lr = g.initial_lr, beta1 = g.beta1, beta2 = g.beta2, eps = g.eps,
            weight_decay = g.weight_decay }
    end
    -- paged (optim=paged_adamw): the shard's moments live in the paged pool too
    -- offload=nvme: the shard's moments in a file of this rank's own (ZeRO-Infinity)
    self.inner = optim.AdamW(groups, { paged = base.paged,
        offload = base.nvme and "nvme" or (base.host and "cpu") or nil, offload_dir = base.nvme and base.nvme.dir or nil })
    -- the moments the caller's optimizer allocated for whole parameters are not needed
    for rec, st in pairs(base.state) do
        if st.exp_avg then
            st.exp_avg:free()
            st.exp_avg_sq:free()
        end
        base.state[rec] = nil
    end
    self.segments_by_group = seg_groups
    self.group_of = group_of
    if stage == 3 and self.inner.nvme then self:_offload_layer_params() end
    -- the host's shards are copied into two staging buffers on the weights' device
    local host_biggest, dev, dt = 0, nil, nil
    for _, sh in ipairs(self.shards) do
        if sh.offloaded == "host" then
            host_biggest = math.max(host_biggest, sh.S)
            dev, dt = sh.group.params.device, sh.group.params.dtype
        end
    end
    if host_biggest > 0 then
        self.staging = { tensor.zeros({ host_biggest }, { dtype = dt, device = dev }),
            tensor.zeros({ host_biggest }, { dtype = dt, device = dev }) }
    end
    if stage == 3 then self:_stage3_install() end
    return self
end

-- Stage 3 with offload=nvme: every layer's shard of the parameters goes into the optimizer's
-- file beside its moments (ZeRO-Infinity), so the rank holds no layer's parameters at all
-- between uses: a layer's shard is read into one of two staging buffers (the largest shard's
-- size) before its all-gather, the next layer's read running while a layer computes, and the
-- step reads, updates and writes it page by page with the moments.
function Zero:_offload_layer_params()
    local biggest = 0
    for _, sh in ipairs(self.shards) do
        if sh.layer and sh.param.dtype ~= "f32" then
            error(("zero=3 offload=nvme: the parameter shards go to the file in f32, and %s's are %s"):format(
                sh.group.entries[1].name, sh.param.dtype), 3)
        end
    end
    for _, sh in ipairs(self.shards) do
        if sh.layer then
            for _, seg in ipairs(sh.segments) do
                self.inner:offload_param(seg.record)
                seg.record.param:free()
            end
            sh.param:free()
            sh.param = nil
            sh.offloaded = "nvme"
            biggest = math.max(biggest, sh.S)
        end
    end
    if biggest > 0 then self.staging = { tensor.zeros({ biggest }), tensor.zeros({ biggest }) } end
end

-- Start bringing layer shard sh into `buf`: from the file, { layer, reads = { {ticket, view} } };
-- from host memory, { layer, copy = ticket, view }.
function Zero:_read_shard(sh, buf)
    if sh.offloaded == "host" then
        local dst = buf:narrow(1, 1, sh.S)
        return { layer = sh.layer, copy = dst:copy_async_(sh.param), view = dst }
    end
    local job = { layer = sh.layer, reads = {} }
    for _, seg in ipairs(sh.segments) do
        local dst = buf:narrow(1, seg.entry.offset + seg.start - sh.lo + 1, seg.n)
        job.reads[#job.reads + 1] = { self.inner:read_param(seg.record, dst), dst }
    end
    return job
end

function Zero:_finish_read(job)
    if job.view then
        tensor.copy_wait(job.view.device, job.copy, true)
        job.view:free()
        return
    end
    for _, rd in ipairs(job.reads) do
        self.inner:wait_io(rd[1])
        rd[2]:free()
    end
end

-- Layer i's shard of the parameters, present in memory: its own tensor, or (offloaded) read
-- into staging buffer `k`, with a read already started for it used when there is one.
function Zero:_shard_params(i, k)
    local sh = self.layer_shards[i]
    if not sh.offloaded then return sh.param, false end
    local r = self.reading
    self.reading = nil
    if r then self:_finish_read(r) end
    local buf = self.staging[k]
    if not (r and r.layer == i) then self:_finish_read(self:_read_shard(sh, buf)) end
    return buf:narrow(1, 1, sh.S), r ~= nil and r.layer == i
end

-- ---- stage 3: parameters gathered layer by layer ---------------------------------------------

-- Point every parameter (and gradient) of a layer's group at `buf` (and `gbuf`), laid out as
-- the group's flat buffer.
local function point(sh, buf, gbuf)
    for _, e in ipairs(sh.group.entries) do
        local shape = e.record.param:shape()
        local pv = buf:narrow(1, e.offset + 1, e.numel):view(shape)
        e.record.param:set_(pv)
        pv:free()
        if gbuf then
            local gv = gbuf:narrow(1, e.offset + 1, e.numel):view(shape)
            e.record.grad:set_(gv)
            gv:free()
        end
    end
end

-- The layer groups' whole buffers go; two parameter buffers and one gradient buffer (the
-- largest layer's size) take their place, and hooks gather each layer before it runs and
-- reduce-scatter its gradients into the shard after its backward.
function Zero:_stage3_install()
    local lm = self.model.model or self.model
    if not lm.add_layer_hook then error("zero=3: the model has no decoder layers to gather (a Llama)", 3) end
    local biggest = 0
    self.layer_shards = {}
    for _, sh in ipairs(self.shards) do
        if sh.layer then
            self.layer_shards[sh.layer] = sh
            biggest = math.max(biggest, sh.group.numel)
        end
    end
    if biggest == 0 then return end
    local dev, dt = nil, nil
    for _, sh in pairs(self.layer_shards) do dev, dt = sh.group.params.device, sh.group.params.dtype end
    self.pbufs = { tensor.empty({ biggest }, { dtype = dt, device = dev }),
        tensor.empty({ biggest }, { dtype = dt, device = dev }) }
    self.gbuf = tensor.zeros({ biggest }, { device = dev })
    for i, sh in pairs(self.layer_shards) do
        local g = sh.group
        point(sh, self.pbufs[i % 2 + 1], self.gbuf)
        g.params:set_(self.pbufs[i % 2 + 1]:narrow(1, 1, g.numel))
        g.grads:set_(self.gbuf:narrow(1, 1, g.numel))
    end
    local W = self.pg.world
    -- layers gathered ahead, while the layer before them ran, and gathered on demand
    self.gathers = self.gathers or { prefetched = 0, waited = 0 }
    -- layer i's all-gather into its buffer, started (async) or done
    local function start(i, async)
        local sh = self.layer_shards[i]
        return self.pg:all_gather(self.pbufs[i % 2 + 1]:narrow(1, 1, sh.S * W), sh.param, { async = async })
    end
    -- Layer i whole in its buffer and its parameters pointing there; then layer nxt's gather
    -- begins into the other buffer, whose layer (the one before i in this direction) is done
    -- with it, and runs while layer i computes. False for a layer with nothing sharded.
    -- Offloaded shards: layer i's shard is read (or was read ahead) into its staging buffer
    -- and gathered, and layer nxt's read starts into the other one.
    local function ensure_offloaded(i, nxt)
        local sh = self.layer_shards[i]
        local k = i % 2 + 1
        local shard, ahead = self:_shard_params(i, k)
        self.gathers[ahead and "prefetched" or "waited"] = self.gathers[ahead and "prefetched" or "waited"] + 1
        self.pg:all_gather(self.pbufs[k]:narrow(1, 1, sh.S * W), shard):wait()
        shard:free()
        point(sh, self.pbufs[k], nil)
        local nsh = self.layer_shards[nxt]
        if nsh then self.reading = self:_read_shard(nsh, self.staging[nxt % 2 + 1]) end
        return true
    end
    local function ensure(i, nxt)
        local sh = self.layer_shards[i]
        if not sh then return false end
        if sh.offloaded then return ensure_offloaded(i, nxt) end
        local p = self.pending
        self.pending = nil
        -- the prefetch of i, or of another layer (an evaluation that stopped early), which
        -- may be filling the buffer wanted now: either way it finishes first
        if p then p.work:wait() end
        if p and p.layer == i then
            self.gathers.prefetched = self.gathers.prefetched + 1
        else
            start(i, false):wait()
            self.gathers.waited = self.gathers.waited + 1
        end
        point(sh, self.pbufs[i % 2 + 1], nil)
        if self.layer_shards[nxt] then self.pending = { layer = nxt, work = start(nxt, true) } end
        return true
    end
    self.unhook = {
        lm:add_layer_hook("pre_forward", function(i) ensure(i, i + 1) end),
        lm:add_layer_hook("pre_backward", function(i)
            if ensure(i, i - 1) then
                local sh = self.layer_shards[i]
                self.gbuf:narrow(1, 1, sh.group.numel):zero_()
                point(sh, self.pbufs[i % 2 + 1], self.gbuf)
            end
        end),
        lm:add_layer_hook("post_backward", function(i)
            local sh = self.layer_shards[i]
            if not sh then return end
            local whole = self.gbuf:narrow(1, 1, sh.group.numel)
            if sh.acc == 0 then
                self.pg:reduce_scatter(sh.grad, whole, "sum"):wait()
            else
                self.pg:reduce_scatter(sh.scratch, whole, "sum"):wait()
                sh.grad:add_(sh.scratch)
            end
            sh.acc = sh.acc + 1
        end),
    }
end

-- A layer's gather still in flight (the forward of an evaluation that stopped early) ends.
function Zero:_finish_prefetch()
    if self.pending then
        self.pending.work:wait()
        self.pending = nil
    end
    if self.reading then
        self:_finish_read(self.reading)
        self.reading = nil
    end
end

-- After gather_params: each layer's shard taken from its (possibly rewritten) whole weights,
-- and stage 3 back in place (checkpoints gather to save and to load, then reshard).
function Zero:reshard()
    if self.stage ~= 3 or self.layer_shards then return end
    for _, sh in ipairs(self.shards) do
        if sh.offloaded == "nvme" then
            for _, seg in ipairs(sh.segments) do
                local a = seg.entry.offset + seg.start
                local src = sh.group.params:narrow(1, a + 1, seg.n)
                self.inner:write_param(seg.record, src)
                src:free()
            end
        elseif sh.layer then
            sh.param:copy_(sh.group.params:narrow(1, sh.lo + 1, sh.S))
        end
    end
    self:_stage3_install()
end

-- Every layer whole again in its own buffer on every rank (for saving or exporting the
-- weights), the hooks removed: stage 3 ends (reshard() resumes it).
function Zero:gather_params()
    if not self.layer_shards then return end
    self:_finish_prefetch()
    for i, sh in pairs(self.layer_shards) do
        local g = sh.group
        local shard = self:_shard_params(i, 1)
        local full = tensor.empty({ g.numel }, { dtype = shard.dtype, device = shard.device })
        self.pg:all_gather(full, shard):wait()
        if sh.offloaded then shard:free() end
        local grads = tensor.zeros({ g.numel }, { device = shard.device })
        point(sh, full, grads)
        g.params:set_(full)
        g.grads:set_(grads)
        full:free()
        grads:free()
    end
    for _, f in ipairs(self.unhook or {}) do f() end
    self.layer_shards, self.unhook = nil, nil
    for _, b in ipairs(self.pbufs or {}) do b:free() end
    if self.gbuf then self.gbuf:free() end
    self.pbufs, self.gbuf = nil, nil
end

-- The optimizer interface -------------------------------------------------------------------

function Zero:zero_grad()
    self.model:zero_grad()
    for _, sh in ipairs(self.shards) do
        sh.grad:zero_()
        sh.acc = 0
    end
    self.micro = 0
end

function Zero:set_lr_factor(f)
    self.inner:set_lr_factor(f)
    self.base:set_lr_factor(f)
end

function Zero:get_lr() return self.inner:get_lr() end

-- Reduce-scatter the micro-batch's gradients into the shards. Stage 1 calls it once, after
-- the last micro-batch; stage 2 after every one (and clears the whole-model gradients the
-- next micro-batch accumulates into).
function Zero:reduce(last)
    for _, sh in ipairs(self.shards) do
        local g = sh.group
        if sh.layer then -- luacheck: ignore 542 (stage 3: reduced by its post_backward hook)
        elseif self.stage == 1 or self.stage == 3 then
            self.pg:reduce_scatter(sh.grad, g.grads, "sum"):wait()
        elseif self.micro == 0 then
            self.pg:reduce_scatter(sh.grad, g.grads, "sum"):wait()
        else
            self.pg:reduce_scatter(sh.scratch, g.grads, "sum"):wait()
            sh.grad:add_(sh.scratch)
        end
        if self.stage == 2 and not last then g.grads:zero_() end
    end
    self.micro = self.micro + 1
end

-- Sum of squares of this rank's shard of the gradients (f64 on the host).
function Zero:shard_sum_squares()
    local s = 0
    for _, sh in ipairs(self.shards) do s = s + sh.grad:sum_squares() end
    return s
end

-- AdamW on the rank's shard, then every rank's parameters made whole again.
function Zero:step(opts)
    self:_finish_prefetch() -- it reads the shards the step rewrites
    self.inner:step(opts)
    for _, sh in ipairs(self.shards) do
        -- stage 3's layers stay sharded: the next forward gathers them
        if not sh.layer then
            sh.send:copy_(sh.param)
            self.pg:all_gather(sh.group.params, sh.send):wait()
        end
    end
end

-- Bytes of optimizer state this rank holds (the moments of its shard).
function Zero:state_bytes() return self.inner:state_bytes() end

-- Checkpoints ---------------------------------------------------------------------------------

-- The moments of flat buffer `sh` (one per kind), gathered to rank 0 shard by shard: returns
-- on rank 0 a whole-buffer tensor per kind, elsewhere nil.
local function gather_moments(self, sh, kind)
    local S, W = sh.S, self.pg.world
    local mine = tensor.zeros({ S }, { device = sh.grad.device })
    for _, seg in ipairs(sh.segments) do
        local m, v = self.inner:moments(seg.record)
        mine:narrow(1, seg.entry.offset + seg.start - sh.lo + 1, seg.n):copy_(kind == "exp_avg" and m or v)
    end
    local full = self.pg:is_main() and tensor.zeros({ sh.group.numel }, { device = sh.grad.device }) or nil
    local buf = tensor.empty({ S }, { device = sh.grad.device })
    for root = 0, W - 1 do
        buf:copy_(mine)
        self.pg:broadcast(buf, root):wait()
        if full then full:narrow(1, root * S + 1, S):copy_(buf) end
    end
    mine:free()
    buf:free()
    return full
end

-- The single-process layout of the caller's optimizer, on rank 0 (nil elsewhere); every rank
-- must call it (the shards travel to rank 0).
function Zero:state_dict()
    local tensors, params, groups = {}, {}, {}
    local is_main = self.pg:is_main()
    local steps = {}
    for _, st in pairs(self.inner.state) do steps[#steps + 1] = st.step end
    local step = steps[1] or 0
    for _, sh in ipairs(self.shards) do
        local m = gather_moments(self, sh, "exp_avg")
        local v = gather_moments(self, sh, "exp_avg_sq")
        if is_main then
            for _, e in ipairs(sh.group.entries) do
                local w = self.group_of[e.record.param]
                local where = w.gi .. "." .. w.pi
                local shape = e.record.param:shape()
                tensors[where .. ".exp_avg"] = m:narrow(1, e.offset + 1, e.numel):view(shape):clone()
                tensors[where .. ".exp_avg_sq"] = v:narrow(1, e.offset + 1, e.numel):view(shape):clone()
                params[where] = { name = e.name, step = step, shape = shape }
            end
            m:free()
            v:free()
        end
    end
    if not is_main then return nil end
    for gi, g in ipairs(self.inner.groups) do
        groups[gi] = { lr = g.lr, initial_lr = g.initial_lr, beta1 = g.beta1, beta2 = g.beta2, eps = g.eps,
            weight_decay = g.weight_decay }
    end
    return { tensors = tensors, params = params, groups = groups }
end

-- Restore from the single-process layout: every rank copies out the pieces of its shard.
function Zero:load_state_dict(sd)
    if type(sd) ~= "table" or type(sd.tensors) ~= "table" or type(sd.params) ~= "table" then
        error("zero:load_state_dict: not an AdamW state (need tensors and params)", 2)
    end
    for gi, list in ipairs(self.segments_by_group) do
        for _, seg in ipairs(list) do
            local key = gi .. "." .. seg.pi
            local meta, m, v = sd.params[key], sd.tensors[key .. ".exp_avg"], sd.tensors[key .. ".exp_avg_sq"]
            if not (meta and m and v) then
                error(("zero:load_state_dict: no state for group %d parameter %d (%s)"):format(gi, seg.pi,
                    seg.entry.name), 2)
            end
            if m:numel() ~= seg.entry.numel then
                error(("zero:load_state_dict: parameter %s has %d elements but the saved state %d"):format(
                    seg.entry.name, seg.entry.numel, m:numel()), 2)
            end
            local st = self.inner.state[seg.record]
            self.inner:set_moments(seg.record, m:contiguous():view(m:numel()):narrow(1, seg.start + 1, seg.n),
                v:contiguous():view(v:numel()):narrow(1, seg.start + 1, seg.n))
            st.step = meta.step
        end
    end
    for gi, g in ipairs(self.inner.groups) do
        local sg = sd.groups and sd.groups[gi]
        if sg then
            for k, val in pairs(sg) do g[k] = val end
        end
    end
end

return M
