--[[
optim.lua - AdamW (32-bit or bitsandbytes' 8-bit moments) with parameter groups,
gradient-norm clipping, learning-rate schedules.

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

local AdamW = { kind = "adamw" }
AdamW.__index = AdamW

local function is_group_list(list)
    return type(list[1]) == "table" and list[1].params ~= nil
end

-- The groups of an AdamW-style optimizer: defaults from opts, each group's own settings,
-- every parameter checked (present, trainable, listed once) and given the state
-- new_state(record) makes. `who` names the optimizer in errors.
local function build_groups(self, params, opts, who, new_state)
    local defaults = {
        lr = opts.lr or 1e-3,
        beta1 = opts.betas and opts.betas[1] or 0.9,
        beta2 = opts.betas and opts.betas[2] or 0.999,
        eps = opts.eps or 1e-8,
        weight_decay = opts.weight_decay or 1e-2,
    }
    self.groups, self.state, self.defaults = {}, {}, defaults
    local groups = is_group_list(params) and params or { { params = params } }
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
                error(("%s: group %d, %s has no param"):format(who, gi, name), 3)
            end
            if not r.grad then
                error(("%s: parameter %s (group %d) has no gradient: it is frozen, so leave it out"):format(
                    who, name, gi), 3)
            end
            local id = tostring(r.param.storage) .. ":" .. tostring(r.param.offset)
            if seen[id] then
                error(("%s: parameter %s is listed more than once (also as %s); a parameter belongs in one place in one group"):format(
                    who, name, seen[id]), 3)
            end
            seen[id] = name
            group.params[#group.params + 1] = r
            -- the state lives where the parameter does
            self.state[r] = new_state(r)
        end
        self.groups[#self.groups + 1] = group
    end
end

-- 32-bit moments of a parameter, zero.
local function moments32(r)
    return {
        step = 0,
        exp_avg = tensor.zeros(r.param:shape(), { device = r.param.device }),
        exp_avg_sq = tensor.zeros(r.param:shape(), { device = r.param.device }),
    }
end

-- 32-bit moments of a parameter in the paged pool (zero-filled).
local function moments_paged(r)
    return {
        step = 0,
        exp_avg = tensor.empty(r.param:shape(), { paged = true }),
        exp_avg_sq = tensor.empty(r.param:shape(), { paged = true }),
    }
end

-- opts: lr (1e-3), betas ({0.9, 0.999}), eps (1e-8), weight_decay (0.01), as PyTorch;
-- paged (false): the moments live in the paged pool (host memory outside every device's
-- budget) and stream through page buffers on the parameter's device during the update (two
-- sets, page_mb MiB in all per moment, default 8: one set is updated while the other is
-- filled), which is otherwise the same arithmetic, bit for bit: a run that would not fit
-- its budget with the moments resident fits with them paged.
--
-- offload = "cpu" (ZeRO-Offload's): the moments, and for parameters on a GPU an f32 master copy,
-- live in host memory; the update runs on the host's cores (the OpenMP AdamW kernel) while
-- gradients and new weights travel on the device's copy stream. Bit for bit AdamW.
-- offload = "nvme" (ZeRO-Infinity's): the moments live in a file in opts.offload_dir (made and
-- removed by the optimizer; O_DIRECT where the file system takes it, src/io/aio.c) and are
-- read page by page into host buffers for the update and written back, the next page's read
-- and the last page's write running while a page is updated (io_threads workers, 2 by
-- default; every wait gives up after io_timeout seconds, 600). Nothing of them stays in
-- memory; the arithmetic is AdamW's, bit for bit. CPU parameters only, for now.
function M.AdamW(params, opts)
    opts = opts or {}
    if type(params) ~= "table" then error("AdamW: params must be a list of parameter records or groups", 2) end
    local self = setmetatable({ paged = opts.paged and true or false,
        -- two sets of page buffers (the pipeline), page_mb between them
        page_elems = math.max(1, math.floor((opts.page_mb or 8) * 2 ^ 20 / 4 / 2)) }, AdamW)
    if not ((opts.page_mb or 8) * 2 ^ 20 / 4 >= 1) then error("AdamW: page_mb must be positive", 2) end
    if opts.offload ~= nil and opts.offload ~= "nvme" and opts.offload ~= "cpu" then
        error(("AdamW: offload must be \"cpu\" or \"nvme\" (or nothing), got %s"):format(tostring(opts.offload)), 2)
    end
    if opts.offload == "cpu" then
        if self.paged then error("AdamW: paged and offload=cpu are two places for the moments: pick one", 2) end
        self.host = true
    end
    if opts.offload == "nvme" then
        if self.paged then error("AdamW: paged and offload=nvme are two places for the moments: pick one", 2) end
        if type(opts.offload_dir) ~= "string" or opts.offload_dir == "" then
            error("AdamW: offload=nvme needs offload_dir (a folder on a fast disk)", 2)
        end
        self.nvme = M._nvme_file(opts)
        -- pages of whole 4096-byte blocks (O_DIRECT's alignment)
        self.page_elems = math.max(1024, math.floor(self.page_elems / 1024) * 1024)
    end
    build_groups(self, params, opts, "AdamW", self.nvme and function(r) return M._nvme_moments(self, r) end
        or self.host and M._host_moments or (self.paged and moments_paged or moments32))
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

-- The paged update: each parameter in pages of page_elems elements; a page's state is
-- copied from the pool into buffers on the parameter's device, updated with the
-- parameter's page, and copied back. The buffers live for the update only.

-- A page buffer of `len` elements of `dtype` on `dev`, kept in bufs for the update.
local function page_buffer(bufs, key, dev, dtype, len)
    local k = dev .. ":" .. key
    local b = bufs[k]
    if not b or b:numel() < len then
        if b then b:free() end
        b = tensor.empty({ len }, { device = dev, dtype = dtype })
        bufs[k] = b
    end
    return b
end

-- The pages of an update form a pipeline over two sets of page buffers: while page k is
-- updated in one set, page k + 1's state comes into the other (on a device, on its copy
-- stream: lt_tensor_copy_async), and page k's goes back to the pool behind the update. The
-- compute stream waits for a page's transfer in only when the update needs it; a transfer
-- into a set waits for the kernels queued before it, the last to use that set. On a CPU the
-- same steps are plain copies, in the same order.

-- Run a queued page: wait for its state, update it, send it back.
local function page_run(bufs, job)
    for _, e in ipairs(job.views) do tensor.copy_wait(job.dev, e.ticket, false) end
    job.fn(job.views, job.h)
    for _, e in ipairs(job.views) do
        local t = e.src:copy_async_(e.v)
        if t > (bufs.last[job.dev] or 0) then bufs.last[job.dev] = t end
    end
end

-- Queue pool[start, start + len) of each piece for fn(views, hyper): its transfer starts now,
-- the page queued before it runs.
local function with_pages(bufs, dev, pieces, fn)
    bufs.set = (bufs.set or 0) % 2 + 1
    bufs.last = bufs.last or {}
    bufs.held = bufs.held or {}
    local views = {}
    for i, pc in ipairs(pieces) do
        local v = page_buffer(bufs, pc.key .. bufs.set, dev, pc.pool.dtype, pc.len):narrow(1, 1, pc.len)
        local src = pc.pool:narrow(1, pc.start, pc.len)
        views[i] = { v = v, src = src, ticket = v:copy_async_(src) }
        -- the views stay until the transfers are done (finish_pages)
        bufs.held[#bufs.held + 1] = v
        bufs.held[#bufs.held + 1] = src
    end
    -- the hyperparameters as they are now: the page runs after the next one is queued
    local h = {}
    for k, x in pairs(hyper) do h[k] = x end
    if bufs.pending then page_run(bufs, bufs.pending) end
    bufs.pending = { dev = dev, views = views, fn = fn, h = h }
end

-- One parameter's 32-bit moments in pages.
local function page_moments32(self, bufs, r, st)
    local n = r.param:numel()
    local p, gr = r.param:view(n), r.grad:view(n)
    local m, v = st.exp_avg:view(n), st.exp_avg_sq:view(n)
    for start = 1, n, self.page_elems do
        local len = math.min(self.page_elems, n - start + 1)
        with_pages(bufs, r.param.device, { { key = "m", pool = m, start = start, len = len },
            { key = "v", pool = v, start = start, len = len } }, function(w, h)
            F.adamw_step(p:narrow(1, start, len), gr:narrow(1, start, len), w[1].v, w[2].v, h)
        end)
    end
end

local function finish_pages(bufs)
    -- the last page runs; copies back to the pool may still be in flight on a device's copy
    -- stream: this thread waits for them before the buffers go and before anyone reads the
    -- pool; the buffers are freed now, not when the collector gets to them, so the update's
    -- peak is the only one
    if bufs.pending then page_run(bufs, bufs.pending) end
    for dev, t in pairs(bufs.last or {}) do tensor.copy_wait(dev, t, true) end
    for _, v in ipairs(bufs.held or {}) do v:free() end
    for k, b in pairs(bufs) do
        if type(k) == "string" and k:find(":", 1, true) then b:free() end
    end
end

local function step_paged(self, gs)
    local bufs = {}
    for _, g in ipairs(self.groups) do
        hyper.lr, hyper.beta1, hyper.beta2 = g.lr, g.beta1, g.beta2
        hyper.eps, hyper.weight_decay, hyper.grad_scale = g.eps, g.weight_decay, gs
        for _, r in ipairs(g.params) do
            local st = self.state[r]
            st.step = st.step + 1
            hyper.step = st.step
            page_moments32(self, bufs, r, st)
        end
    end
    finish_pages(bufs)
end

-- ---- the NVMe-offloaded moments ---------------------------------------------------------------

local nvme_count = 0
local C = core.C
pcall(ffi.cdef, "int getpid(void);")

function M._nvme_file(opts)
    local fs = require "luatrain.fs"
    fs.make_dirs(opts.offload_dir)
    nvme_count = nvme_count + 1
    local path = ("%s/adamw-%d-%d.state"):format(opts.offload_dir, ffi.C.getpid(), nvme_count)
    local out = ffi.new("lt_aio *[1]")
    core.check(C.lt_aio_open(out, path, opts.io_threads or 2))
    local f = { aio = ffi.gc(out[0], C.lt_aio_close), path = path, size = 0, timeout = opts.io_timeout or 600,
        direct = C.lt_aio_direct(out[0]) ~= 0, dir = opts.offload_dir }
    return f
end

-- A parameter's two regions in the file (zeros until written: the moments start at zero).
function M._nvme_moments(self, r)
    local f, n = self.nvme, r.param:numel()
    local align = tonumber(C.lt_aio_align())
    local bytes = math.ceil(n * 4 / align) * align
    local st = { step = 0, n = n, shape = r.param:shape(), off_m = f.size, off_v = f.size + bytes }
    f.size = f.size + 2 * bytes
    return st
end

local ticket_buf = ffi.new("int64_t[1]")

local function aio_io(f, write, off, t)
    core.check((write and C.lt_aio_write or C.lt_aio_read)(f.aio, off, t, ticket_buf))
    return tonumber(ticket_buf[0])
end

local function aio_wait(f, t) core.check(C.lt_aio_wait(f.aio, t, f.timeout)) end

-- offload=nvme: parameter record r's values move into the file beside its moments (ZeRO-3's
-- parameter shards: ZeRO-Infinity's offload_param). The update then reads and writes them
-- page by page with the moments; read_param and write_param move them for the caller, who
-- lets go of its own copy (r.param) once this returns: nothing reads it after.
function AdamW:offload_param(r)
    local f, st = self.nvme, self.state[r]
    if not f then error("AdamW:offload_param: the parameters go to the moments' file: offload=nvme", 2) end
    if not st then error("AdamW:offload_param: not a parameter of this optimizer", 2) end
    if st.off_p then return end
    local align = tonumber(C.lt_aio_align())
    st.off_p = f.size
    f.size = f.size + math.ceil(st.n * 4 / align) * align
    self:write_param(r, r.param)
end

-- An offloaded parameter's values into dst (f32, contiguous, its numel): started; the
-- returned ticket goes to wait_io, and dst must live until then.
function AdamW:read_param(r, dst)
    local st = self.state[r]
    if dst:numel() ~= st.n or dst.dtype ~= "f32" or not dst:is_contiguous() then
        error(("AdamW:read_param: %s needs a contiguous f32 tensor of %d elements"):format(r.name or "?", st.n), 2)
    end
    return aio_io(self.nvme, false, st.off_p, dst)
end

-- An offloaded parameter's new values from src (its numel elements); done when it returns.
function AdamW:write_param(r, src)
    local st, f = self.state[r], self.nvme
    if src:numel() ~= st.n then
        error(("AdamW:write_param: %s has %d elements, got %d"):format(r.name or "?", st.n, src:numel()), 2)
    end
    local c = src:contiguous():to("f32")
    aio_wait(f, aio_io(f, true, st.off_p, c))
    if c ~= src then c:free() end
end

function AdamW:wait_io(ticket) aio_wait(self.nvme, ticket) end

-- The update with the moments in the file: pages in order over two sets of host buffers; a
-- set is refilled only once its last page's writes are done.
local function step_nvme(self, gs)
    local f = self.nvme
    local bufs, writes, views = {}, { {}, {} }, { {}, {} }
    local set, pending = 0, nil
    local function run(job)
        aio_wait(f, job.tm)
        aio_wait(f, job.tv)
        if job.tp then aio_wait(f, job.tp) end
        F.adamw_step(job.p, job.g, job.m, job.v, job.h)
        writes[job.set] = { aio_io(f, true, job.off_m, job.m), aio_io(f, true, job.off_v, job.v) }
        if job.tp then table.insert(writes[job.set], aio_io(f, true, job.off_p, job.p)) end
    end
    for _, g in ipairs(self.groups) do
        hyper.lr, hyper.beta1, hyper.beta2 = g.lr, g.beta1, g.beta2
        hyper.eps, hyper.weight_decay, hyper.grad_scale = g.eps, g.weight_decay, gs
        for _, r in ipairs(g.params) do
            local st = self.state[r]
            -- an offloaded parameter (st.off_p) comes page by page from the file as well
            if not st.off_p and r.param.device ~= "cpu" then
                error("AdamW offload=nvme: the parameters must be on the CPU for now (" .. r.param.device .. ")", 0)
            end
            st.step = st.step + 1
            hyper.step = st.step
            local n = st.n
            local p, gr = not st.off_p and r.param:view(n) or nil, r.grad:view(n)
            for start = 1, n, self.page_elems do
                local len = math.min(self.page_elems, n - start + 1)
                set = set % 2 + 1
                -- the set's last page must be in the file before its buffers are refilled; its
                -- views go now, so a buffer that grows gives its old bytes back at once
                for _, t in ipairs(writes[set]) do aio_wait(f, t) end
                for _, x in ipairs(views[set]) do x:free() end
                writes[set], views[set] = {}, {}
                local m = page_buffer(bufs, "m" .. set, "cpu", "f32", len):narrow(1, 1, len)
                local v = page_buffer(bufs, "v" .. set, "cpu", "f32", len):narrow(1, 1, len)
                views[set] = { m, v }
                local off = (start - 1) * 4
                local job = { set = set, m = m, v = v, g = gr:narrow(1, start, len),
                    off_m = st.off_m + off, off_v = st.off_v + off,
                    tm = aio_io(f, false, st.off_m + off, m), tv = aio_io(f, false, st.off_v + off, v), h = {} }
                if st.off_p then
                    job.p = page_buffer(bufs, "p" .. set, "cpu", "f32", len):narrow(1, 1, len)
                    table.insert(views[set], job.p)
                    job.off_p = st.off_p + off
                    job.tp = aio_io(f, false, job.off_p, job.p)
                else
                    job.p = p:narrow(1, start, len)
                end
                for k, x in pairs(hyper) do job.h[k] = x end
                if pending then run(pending) end
                pending = job
            end
        end
    end
    if pending then run(pending) end
    for _, w in ipairs(writes) do for _, t in ipairs(w) do aio_wait(f, t) end end
    for _, vs in ipairs(views) do for _, x in ipairs(vs) do x:free() end end
    for k, b in pairs(bufs) do
        if type(k) == "string" and k:find(":", 1, true) then b:free() end
    end
end

-- A parameter's moments read whole from the file (for checkpoints).
local function nvme_read(self, st)
    local f = self.nvme
    local m, v = tensor.empty({ st.n }), tensor.empty({ st.n })
    local a, b = aio_io(f, false, st.off_m, m), aio_io(f, false, st.off_v, v)
    aio_wait(f, a)
    aio_wait(f, b)
    return m, v
end

-- ---- the CPU-offloaded state (ZeRO-Offload) ---------------------------------------------------

-- The moments in host memory (the paged pool: page-locked once CUDA is in use, outside every
-- device's budget); for a parameter on a GPU also its f32 master copy and a host gradient,
-- and for one kept in host memory whose gradient arrives on a GPU (ZeRO-3's parameter shards
-- with offload=cpu) a host gradient.
local function host_copies(r, st)
    if r.param.device ~= "cpu" then
        st.master = tensor.empty(r.param:shape(), { paged = true })
        st.master:copy_(r.param)
    end
    if st.master or (r.grad and r.grad.device ~= "cpu") then
        st.grad_host = tensor.empty(r.param:shape(), { paged = true })
    end
    return st
end

function M._host_moments(r) return host_copies(r, moments_paged(r)) end

-- The update on the host's cores: every gradient leaves the device first (on its copy
-- stream), then each parameter's is waited for, updated on the host and its new weights sent
-- back (copy stream again), so transfers run while the host computes; the device's next
-- kernels wait for the last weights only. Parameters on the CPU update in place.
local function step_host(self, gs)
    local list = {}
    for _, g in ipairs(self.groups) do
        for _, r in ipairs(g.params) do
            local st = self.state[r]
            if st.grad_host then st.ticket = st.grad_host:copy_async_(r.grad) end
            list[#list + 1] = { g = g, r = r, st = st }
        end
    end
    local last = {}
    for _, e in ipairs(list) do
        local g, r, st = e.g, e.r, e.st
        hyper.lr, hyper.beta1, hyper.beta2 = g.lr, g.beta1, g.beta2
        hyper.eps, hyper.weight_decay, hyper.grad_scale = g.eps, g.weight_decay, gs
        st.step = st.step + 1
        hyper.step = st.step
        -- (AdamW8bit's offload=cpu shares this: its 8-bit state has codes)
        local p, gr = st.master or r.param, r.grad
        if st.grad_host then
            tensor.copy_wait(r.grad.device, st.ticket, true)
            gr = st.grad_host
        end
        if st.m_codes then
            F.adamw8_step(p, gr, st, hyper)
        else
            F.adamw_step(p, gr, st.exp_avg, st.exp_avg_sq, hyper)
        end
        if st.master then last[r.param.device] = r.param:copy_async_(st.master) end
    end
    for dev, t in pairs(last) do tensor.copy_wait(dev, t, false) end
end

-- opts.grad_scale multiplies every gradient first (clipping coefficient, 1/loss scale).
-- Parameters on the CPU are updated one tensor at a time (each in parallel inside); a
-- group on one CUDA device goes in one launch.
function AdamW:step(opts)
    local gs = opts and opts.grad_scale or 1
    if self.nvme then return step_nvme(self, gs) end
    if self.host then return step_host(self, gs) end
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
            local m, v = self:moments(r)
            -- (an offloaded parameter's own tensor is gone: its shape is the state's)
            local shape = st.shape or r.param:shape()
            if self.nvme then m, v = m:view(shape), v:view(shape) end
            tensors[key .. ".exp_avg"], tensors[key .. ".exp_avg_sq"] = m, v
            params[key] = { name = r.name, step = st.step, shape = shape }
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
            if sd.tensors[key .. ".state1"] then
                error(("AdamW:load_state_dict: the saved state of parameter %s (group %d) is 8-bit: it was "
                    .. "saved by lt.optim.AdamW8bit (optim=adamw_8bit); load it with that optimizer"):format(
                    name, gi), 2)
            end
            if not (meta and m and v) then
                error(("AdamW:load_state_dict: no state for group %d parameter %d (%s)"):format(gi, pi, name), 2)
            end
            local want, have = self.state[r].shape or r.param:shape(), m:shape()
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
            self:set_moments(r, sd.tensors[key .. ".exp_avg"], sd.tensors[key .. ".exp_avg_sq"])
            st.step = sd.params[key].step
        end
    end
end

-- Bytes of optimizer state held (the moments; lt.memory counts the same allocations).
function AdamW:state_bytes()
    local n = 0
    for _, st in pairs(self.state) do
        if st.exp_avg then n = n + st.exp_avg:nbytes() + st.exp_avg_sq:nbytes() else n = n + 8 * st.n end
    end
    return n
end

-- A parameter record's moments as tensors (1-D copies read from the file when offloaded;
-- the state's own tensors otherwise), and the setter that puts them back.
function AdamW:moments(r)
    local st = self.state[r]
    if self.nvme then return nvme_read(self, st) end
    return st.exp_avg, st.exp_avg_sq
end

function AdamW:set_moments(r, m, v)
    local st = self.state[r]
    if self.nvme then
        local f = self.nvme
        local mc, vc = m:contiguous():to("f32"), v:contiguous():to("f32")
        aio_wait(f, aio_io(f, true, st.off_m, mc))
        aio_wait(f, aio_io(f, true, st.off_v, vc))
    else
        st.exp_avg:copy_(m)
        st.exp_avg_sq:copy_(v)
    end
end

-- offload=nvme: close and remove the state file now (the collector does it otherwise); the
-- optimizer cannot step after.
function AdamW:close()
    local f = self.nvme
    if f and f.aio ~= nil then
        local a = f.aio
        f.aio = nil
        ffi.gc(a, nil)
        core.check(C.lt_aio_close(a))
    end
end

-- Bytes of the moments held in device memory (none when they live in a file, in the paged
-- pool or on the host).
function AdamW:resident_state_bytes()
    if self.nvme or self.host or self.paged then return 0 end
    return self:state_bytes()
end

-- ---- AdamW8bit --------------------------------------------------------------------------------

--[[ AdamW with 8-bit moments: bitsandbytes' AdamW8bit (its blockwise 8-bit optimizer,
lt_adamw8_step in src/lt_ops.h), as transformers' optim="adamw_8bit" makes it.

    local opt = lt.optim.AdamW8bit(model:parameters(), { lr = 2e-4, weight_decay = 0.01 })
    -- the same groups, options and methods as AdamW, plus
    -- block_size (256) and min_8bit_size (4096)

A parameter of at least min_8bit_size elements keeps each moment as one u8 code per
element into a 256-entry dynamic map (the first moment the signed map, the second the
unsigned one) times an f32 absmax per block of block_size elements: 2 bytes per element
plus 8 per block, instead of AdamW's 8. Smaller parameters (norms, biases, small LoRA
matrices) keep 32-bit moments as in AdamW, as bitsandbytes does below its min_8bit_size
of 4096. The two maps (2 KiB) are made once per device. The update is AdamW's arithmetic
in f32 on the dequantized moments (decoupled weight decay applied as AdamW applies it).

state_dict: bitsandbytes' names for the 8-bit pieces, keyed by position as AdamW keys its
moments: "<g>.<i>.state1" (u8, the parameter's shape), ".absmax1" (f32, blocks),
".state2", ".absmax2", and "qmap1"/"qmap2" once (the maps); parameters with 32-bit state
keep AdamW's ".exp_avg"/".exp_avg_sq". A state loads back bit for bit, maps included, so a
resumed run continues the same trajectory.
]]
local AdamW8bit = setmetatable({ kind = "adamw_8bit" }, { __index = AdamW })
AdamW8bit.__index = AdamW8bit

local function dynamic_map_tensor(signed, device)
    local quant = require "luatrain.quant"
    local t = tensor.tensor(quant.dynamic_map(signed))
    if device and device ~= "cpu" then
        local d = t:to(device)
        t:free()
        t = d
    end
    return t
end

function M.AdamW8bit(params, opts)
    opts = opts or {}
    if type(params) ~= "table" then error("AdamW8bit: params must be a list of parameter records or groups", 2) end
    local block = opts.block_size or 256
    if type(block) ~= "number" or block < 64 or block > 4096 or block ~= math.floor(block) or
        bit.band(block, block - 1) ~= 0 then
        error(("AdamW8bit: block_size must be a power of two from 64 to 4096 (bitsandbytes uses 256), got %s"):format(
            tostring(block)), 2)
    end
    local min_size = opts.min_8bit_size or 4096
    if type(min_size) ~= "number" or min_size < 0 then
        error(("AdamW8bit: min_8bit_size must be a number >= 0, got %s"):format(tostring(min_size)), 2)
    end
    local self = setmetatable({ block_size = block, min_8bit_size = min_size, maps = {},
        paged = opts.paged and true or false, page_elems = math.floor((opts.page_mb or 8) * 2 ^ 20 / 4 / 2) }, AdamW8bit)
    if opts.offload ~= nil and opts.offload ~= "cpu" then
        error(("AdamW8bit: offload must be \"cpu\" (or nothing; offload=nvme moves 32-bit moments: "
            .. "lt.optim.AdamW), got %s"):format(tostring(opts.offload)), 2)
    end
    -- offload = "cpu" (ZeRO-Offload's, in 8 bits): codes, absmax and small parameters'
    -- moments in host memory (the paged pool), the maps on the host, and for a parameter on a
    -- GPU an f32 master copy and a host gradient; the update runs on the host's cores, as
    -- AdamW's offload=cpu does. Bit for bit the resident AdamW8bit.
    if opts.offload == "cpu" then
        if self.paged then error("AdamW8bit: paged and offload=cpu are two places for the state: pick one", 2) end
        self.host = true
    end
    -- pages of whole blocks
    self.page_elems = math.max(block, math.floor(self.page_elems / block) * block)
    -- paged: codes, absmax and small parameters' moments in the paged pool; the maps stay
    local function state_tensor(shape, dtype, dev)
        if self.paged or self.host then return tensor.empty(shape, { dtype = dtype, paged = true }) end
        return tensor.zeros(shape, { dtype = dtype, device = dev })
    end
    build_groups(self, params, opts, "AdamW8bit", function(r)
        local n = r.param:numel()
        if n < min_size or n == 0 then
            if self.host then return M._host_moments(r) end
            return self.paged and moments_paged(r) or moments32(r)
        end
        local dev = self.host and "cpu" or r.param.device
        local maps = self.maps[dev]
        if not maps then
            maps = { m = dynamic_map_tensor(true, dev), v = dynamic_map_tensor(false, dev) }
            self.maps[dev] = maps
        end
        local blocks = math.ceil(n / block)
        local st = {
            step = 0, block = block, m_map = maps.m, v_map = maps.v,
            m_codes = state_tensor(r.param:shape(), "u8", dev),
            m_absmax = state_tensor({ blocks }, "f32", dev),
            v_codes = state_tensor(r.param:shape(), "u8", dev),
            v_absmax = state_tensor({ blocks }, "f32", dev),
        }
        if self.host then host_copies(r, st) end
        return st
    end)
    return self
end

-- opts.grad_scale multiplies every gradient first, as in AdamW:step. One update per
-- parameter tensor (each in parallel inside).
-- One parameter's 8-bit state in pages of whole blocks.
local function page_state8(self, bufs, r, st)
    local n, block = r.param:numel(), st.block
    local p, gr = r.param:view(n), r.grad:view(n)
    local mc, vc = st.m_codes:view(n), st.v_codes:view(n)
    for start = 1, n, self.page_elems do
        local len = math.min(self.page_elems, n - start + 1)
        local b0, nb = (start - 1) / block + 1, math.ceil(len / block)
        with_pages(bufs, r.param.device, { { key = "mc", pool = mc, start = start, len = len },
            { key = "ma", pool = st.m_absmax, start = b0, len = nb },
            { key = "vc", pool = vc, start = start, len = len },
            { key = "va", pool = st.v_absmax, start = b0, len = nb } }, function(w, h)
            F.adamw8_step(p:narrow(1, start, len), gr:narrow(1, start, len), { m_codes = w[1].v, m_absmax = w[2].v,
                v_codes = w[3].v, v_absmax = w[4].v, m_map = st.m_map, v_map = st.v_map, block = block }, h)
        end)
    end
end

function AdamW8bit:step(opts)
    local gs = opts and opts.grad_scale or 1
    if self.host then return step_host(self, gs) end
    local bufs = self.paged and {} or nil
    for _, g in ipairs(self.groups) do
        hyper.lr, hyper.beta1, hyper.beta2 = g.lr, g.beta1, g.beta2
        hyper.eps, hyper.weight_decay, hyper.grad_scale = g.eps, g.weight_decay, gs
        for _, r in ipairs(g.params) do
            local st = self.state[r]
            st.step = st.step + 1
            hyper.step = st.step
            if bufs then
                if st.m_codes then page_state8(self, bufs, r, st) else page_moments32(self, bufs, r, st) end
            elseif st.m_codes then
                F.adamw8_step(r.param, r.grad, st, hyper)
            else
                F.adamw_step(r.param, r.grad, st.exp_avg, st.exp_avg_sq, hyper)
            end
        end
    end
    if bufs then finish_pages(bufs) end
end

-- Bytes of optimizer state held: codes, absmax and 32-bit moments, and the maps.
function AdamW8bit:state_bytes()
    local n = 0
    for _, st in pairs(self.state) do
        if st.m_codes then
            n = n + st.m_codes:nbytes() + st.v_codes:nbytes() + st.m_absmax:nbytes() + st.v_absmax:nbytes()
        else
            n = n + st.exp_avg:nbytes() + st.exp_avg_sq:nbytes()
        end
    end
    for _, maps in pairs(self.maps) do n = n + maps.m:nbytes() + maps.v:nbytes() end
    return n
end

-- See the comment above M.AdamW8bit for the layout.
function AdamW8bit:state_dict()
    local tensors, params, groups = {}, {}, {}
    local maps
    for gi, g in ipairs(self.groups) do
        groups[gi] = { lr = g.lr, initial_lr = g.initial_lr, beta1 = g.beta1, beta2 = g.beta2,
            eps = g.eps, weight_decay = g.weight_decay }
        for pi, r in ipairs(g.params) do
            local st = self.state[r]
            local key = gi .. "." .. pi
            local meta = { name = r.name, step = st.step, shape = r.param:shape() }
            if st.m_codes then
                tensors[key .. ".state1"] = st.m_codes
                tensors[key .. ".absmax1"] = st.m_absmax
                tensors[key .. ".state2"] = st.v_codes
                tensors[key .. ".absmax2"] = st.v_absmax
                meta.block_size = st.block
                maps = maps or { m = st.m_map, v = st.v_map }
            else
                tensors[key .. ".exp_avg"] = st.exp_avg
                tensors[key .. ".exp_avg_sq"] = st.exp_avg_sq
            end
            params[key] = meta
        end
    end
    if maps then tensors.qmap1, tensors.qmap2 = maps.m, maps.v end
    return { tensors = tensors, params = params, groups = groups }
end

local function shape_str(t) return table.concat(t, ", ") end

-- Restore a state_dict made by an AdamW8bit over the same parameters in the same groups
-- with the same block_size and min_8bit_size; everything is checked before anything changes.
function AdamW8bit:load_state_dict(sd)
    local who = "AdamW8bit:load_state_dict"
    if type(sd) ~= "table" or type(sd.tensors) ~= "table" or type(sd.params) ~= "table" then
        error(who .. ": not an optimizer state (need tensors and params)", 2)
    end
    local T = sd.tensors
    local any8 = false
    for gi, g in ipairs(self.groups) do
        for pi, r in ipairs(g.params) do
            local key = gi .. "." .. pi
            local st, meta = self.state[r], sd.params[key]
            local name = r.name or key
            local n = r.param:numel()
            if not meta then
                error(("%s: no state for group %d parameter %d (%s)"):format(who, gi, pi, name), 2)
            end
            if meta.shape and shape_str(meta.shape) ~= shape_str(r.param:shape()) then
                error(("%s: parameter %s has shape (%s) but the saved state (%s)"):format(who, name,
                    shape_str(r.param:shape()), shape_str(meta.shape)), 2)
            end
            if st.m_codes then
                any8 = true
                if not T[key .. ".state1"] then
                    error(("%s: parameter %s (group %d) has 32-bit state in the checkpoint but 8-bit state here "
                        .. "(saved by AdamW, or with a larger min_8bit_size than this optimizer's %d)"):format(
                        who, name, gi, self.min_8bit_size), 2)
                end
                if meta.block_size ~= st.block then
                    error(("%s: parameter %s was saved with block_size %s, this optimizer uses %d"):format(who, name,
                        tostring(meta.block_size), st.block), 2)
                end
                local blocks = math.ceil(n / st.block)
                for _, part in ipairs({ { "state1", "u8", n }, { "state2", "u8", n }, { "absmax1", "f32", blocks },
                    { "absmax2", "f32", blocks } }) do
                    local t = T[key .. "." .. part[1]]
                    if not t or t.dtype ~= part[2] or t:numel() ~= part[3] then
                        error(("%s: parameter %s: %s must be %s with %d elements, got %s"):format(who, name,
                            key .. "." .. part[1], part[2], part[3],
                            t and ("%s with %d"):format(t.dtype, t:numel()) or "nothing"), 2)
                    end
                end
            else
                if T[key .. ".state1"] then
                    error(("%s: parameter %s (group %d) has 8-bit state in the checkpoint but 32-bit state here "
                        .. "(a smaller min_8bit_size when it was saved than this optimizer's %d)"):format(
                        who, name, gi, self.min_8bit_size), 2)
                end
                local m, v = T[key .. ".exp_avg"], T[key .. ".exp_avg_sq"]
                if not (m and v) or m:numel() ~= n or v:numel() ~= n then
                    error(("%s: parameter %s: no 32-bit moments of %d elements"):format(who, name, n), 2)
                end
            end
        end
    end
    if any8 then
        for _, k in ipairs({ "qmap1", "qmap2" }) do
            local t = T[k]
            if not t or t.dtype ~= "f32" or t:numel() ~= 256 then
                error(("%s: %s must be the f32 map of 256 entries the codes index, got %s"):format(who, k,
                    t and ("%s with %d elements"):format(t.dtype, t:numel()) or "nothing"), 2)
            end
        end
    end
    for gi, g in ipairs(self.groups) do
        local sg = sd.groups and sd.groups[gi]
        if sg then for k, val in pairs(sg) do g[k] = val end end
        for pi, r in ipairs(g.params) do
            local key = gi .. "." .. pi
            local st = self.state[r]
            if st.m_codes then
                st.m_codes:view(-1):copy_(T[key .. ".state1"]:contiguous():view(-1))
                st.v_codes:view(-1):copy_(T[key .. ".state2"]:contiguous():view(-1))
                st.m_absmax:copy_(T[key .. ".absmax1"]:contiguous():view(-1))
                st.v_absmax:copy_(T[key .. ".absmax2"]:contiguous():view(-1))
            else
                st.exp_avg:view(-1):copy_(T[key .. ".exp_avg"]:contiguous():view(-1))
                st.exp_avg_sq:view(-1):copy_(T[key .. ".exp_avg_sq"]:contiguous():view(-1))
            end
            st.step = sd.params[key].step
        end
    end
    -- a state carries the maps it was coded with
    if any8 then
        for _, maps in pairs(self.maps) do
            maps.m:copy_(T.qmap1:contiguous():view(-1))
            maps.v:copy_(T.qmap2:contiguous():view(-1))
        end
    end
end

-- The bytes of state `kind` ("adamw" or "adamw_8bit") holds for parameters of the given
-- element counts (a list of numbers, one device), without making it: what its
-- state_bytes() and lt.memory report once it is made. opts: AdamW8bit's block_size and
-- min_8bit_size.
function M.plan_state_bytes(kind, numels, opts)
    opts = opts or {}
    local block, min_size = opts.block_size or 256, opts.min_8bit_size or 4096
    local valid = { adamw = true, adamw_8bit = true, paged_adamw = true, paged_adamw_8bit = true }
    if not valid[kind] then
        error(("plan_state_bytes: unknown optimizer %s (adamw, adamw_8bit, paged_adamw, paged_adamw_8bit)"):format(
            tostring(kind)), 2)
    end
    if kind:match("^paged_") then kind = kind:sub(7) end -- the same bytes, in the host pool
    local total, any8 = 0, false
    for _, n in ipairs(numels) do
        if kind == "adamw_8bit" and n >= min_size and n > 0 then
            total = total + 2 * n + 8 * math.ceil(n / block) -- two u8 codes, two f32 absmax per block
            any8 = true
        else
            total = total + 8 * n -- two f32 moments
        end
    end
    if any8 then total = total + 2 * 256 * 4 end -- the two maps
    return total
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
