--[[
trainer.lua - the training loop shared by the recipes, as explicit stages with hooks, and
the measurements around it.

    local tr = lt.trainer.new{ model = model, train = train_ds, eval = eval_ds,
        batch_size = 8, seq_len = 128, steps = 200, lr = 2e-3, on_step = print_progress }
    tr:hook("reduce_gradients", function(tr, st) ... end)   -- e.g. data parallel
    local result = tr:run()
    result.loss_curve, result.eval_loss, result.tokens_per_s, result.peak_bytes, ...
    -- or in one call: lt.trainer.finetune{ ...the same options... }

One optimizer step runs these stages, in order (lt.trainer.STAGES); hooks run after the
stage they name (tr:hook) or before it (tr:hook_before), with (trainer, state):
  forward_backward   grad_accum micro-batches, forward and backward; the step's loss is
                     the sum of every micro-batch's summed token losses divided by the
                     number of trained (non -100) targets in the whole step, and so are the
                     gradients: micro-batches of different sizes weigh by their tokens, and
                     grad_accum = 4 x batch 2 gives the gradients of one batch of 8
  reduce_gradients   nothing in one process (data-parallel training averages here)
  unscale_check      gradients unscaled (by state.grad_scale, 1 without loss scaling), the
                     global gradient norm measured, and the loss and the norm checked. Under
                     loss scaling (loss_scale = "dynamic": lt.amp.GradScaler) a non-finite
                     norm is an overflow: the step is skipped (state.overflow), the scale
                     halves and the log says so. Otherwise a non-finite loss or norm stops
                     the run with a message naming the step (with
                     detect_nonfinite = "parameter", also the first parameter whose
                     gradient is not finite) before anything is updated or written
  clip               the clipping factor min(1, grad_clip / (norm + 1e-6)) (PyTorch's rule)
  optimizer_step     the learning rate from the schedule, then the optimizer's update with
                     the unscale and clip factors folded in (no extra pass over gradients)
  log                the step's record to the log and on_step; evaluation and checkpoints
                     when due
state: { step, loss, trained, tokens, micro_batches, loss_scale, grad_scale, grad_norm,
clip_coef, overflow, record }. A step whose micro-batches hold no trained target updates nothing (state.skipped).

Run checkpoints: checkpoint_dir is a run folder that gets checkpoint-<step> folders every
save_every steps (the keep_last newest kept); resume is a checkpoint or run folder to
continue from, or "auto" (checkpoint_dir's newest, if any): the same trajectory resumes.

The optimizer is the caller's (opts.optimizer, e.g. with parameter groups), or one made
here over the trainable parameters, named as Hugging Face's Trainer names them: optim =
"adamw" (lt.optim.AdamW, the default) or "adamw_8bit" (lt.optim.AdamW8bit, bitsandbytes'
8-bit moments); lr, betas, eps, weight_decay, and lora_plus_ratio (LoRA+: the B matrices
learn lora_plus_ratio times faster than the rest). ZeRO (zero = 1, 2 or 3) shards 32-bit
AdamW only; at zero = 3 with offload = "cpu" a GPU's layer shards live in host memory
(offload_params = "cpu" puts CPU weights' there too, which only tests use). The trainable
parameters are flattened first (Module:flatten_parameters) unless opts.flatten is false.

lt.trainer.eval_loss(model, ds, opts) is the mean loss over every trained token of a
dataset; lt.trainer.questions(path, template) and lt.trainer.accuracy(model, tok,
questions, opts) score exact-match answers generated greedily.
]]
local ffi = require "ffi"
local records = require "luatrain.data.records"
local templates = require "luatrain.data.templates"
local loader_mod = require "luatrain.data.loader"
local optim = require "luatrain.optim"
local memory = require "luatrain.memory"
local fs = require "luatrain.fs"
local log_mod = require "luatrain.log"
local core = require "luatrain.core"

local M = {}

M.STAGES = { "forward_backward", "reduce_gradients", "unscale_check", "clip", "optimizer_step", "log" }
local STAGE_SET = {}
for _, s in ipairs(M.STAGES) do STAGE_SET[s] = true end

local IGNORE = -100

-- Mean loss over every trained token of `ds` (eval mode, no gradients).
-- opts.group: a process group (lt.dist) whose ranks share the batches; every rank gets
-- the same mean.
function M.eval_loss(model, ds, opts)
    opts = opts or {}
    local pg = opts.group
    local l = loader_mod.new(ds, { batch_size = opts.batch_size or 8, seq_len = opts.seq_len or 128,
        shuffle = false, epochs = 1, pad_id = opts.pad_id or 0, rank = pg and pg.rank or 0,
        world = pg and pg.world or 1, whole_rounds = false })
    local was = model.training
    model:eval()
    local sum, count = 0, 0
    while true do
        local b = l:next()
        if not b then break end
        local loss = model:loss(b.ids, b.targets, b)
        sum = sum + loss * b.trained
        count = count + b.trained
    end
    -- its buffers go now: what an evaluation leaves behind is the model's buffers alone
    l:free()
    if was then model:train() end
    if pg and pg.world > 1 then
        local t = pg:sum_numbers({ sum, count })
        sum, count = t[1], t[2]
    end
    return count > 0 and sum / count or 0
end

-- The question / answer pairs of a JSONL file: every record whose last message is the
-- assistant's (prompt/completion and alpaca records count as one-turn chats).
function M.questions(path, template, limit, opts)
    local out = {}
    local r = records.open(path, opts) -- opts.split: one part of a file (records.open)
    for rec in r:iter() do
        local msgs
        if rec.kind == "chat" then
            msgs = rec.messages
        elseif rec.kind == "pair" then
            msgs = { { role = "user", content = rec.prompt }, { role = "assistant", content = rec.completion } }
        end
        if msgs and #msgs >= 2 and msgs[#msgs].role == "assistant" then
            local ask = {}
            for i = 1, #msgs - 1 do ask[i] = msgs[i] end
            out[#out + 1] = { prompt = templates.generation_prompt(template, ask),
                answer = msgs[#msgs].content:match("^%s*(.-)%s*$"), question = msgs[#msgs - 1].content }
            if limit and limit > 0 and #out >= limit then break end
        end
    end
    r:close()
    return out
end

-- The model's greedy answer to one question (trimmed); opts.on_text streams it.
function M.answer(model, tok, q, opts)
    opts = opts or {}
    local text = require("luatrain.generate").generate(model, tok,
        tok:encode(q.prompt, { add_special_tokens = false }),
        { max_new_tokens = opts.max_new_tokens or 16, stop_ids = opts.stop_ids, on_text = opts.on_text })
    return text:match("^%s*(.-)%s*$")
end

-- Fraction of questions answered exactly, and the count.
function M.accuracy(model, tok, questions, opts)
    local right = 0
    for _, q in ipairs(questions) do
        if M.answer(model, tok, q, opts) == q.answer then right = right + 1 end
    end
    return #questions > 0 and right / #questions or 0, right
end

-- ---- the trainer --------------------------------------------------------------------------

local Trainer = {}
Trainer.__index = Trainer
M.Trainer = Trainer

local function finite(x) return x == x and x ~= math.huge and x ~= -math.huge end

-- Trained targets of a batch: the loader counts them; other sources (byte windows) are
-- counted here, on the host tensor.
local function trained_of(b)
    if b.trained then return b.trained end
    local t = b.targets
    if t.device ~= "cpu" or t.dtype ~= "i64" then t = t:to({ dtype = "i64", device = "cpu" }) end
    t = t:contiguous()
    local p = ffi.cast("int64_t*", t:data_ptr())
    local n = 0
    for i = 0, t:numel() - 1 do
        if p[i] ~= IGNORE then n = n + 1 end
    end
    return n
end

-- A batch source gives batches { ids, targets, positions?, cu_seqlens?, trained?, tokens? }
-- from next(); a tokenized dataset gets a packing loader. Sources whose next() returns
-- (ids, targets) (lt.data.windows) are wrapped.
local function batch_source(opts, pg)
    local src = opts.train
    if src.next and src.sample == nil then
        if (src.world or 1) ~= pg.world then
            error(("trainer: a job of %d processes needs a batch source sharded over them (made with rank and "
                .. "world; this one has world %s)"):format(pg.world, tostring(src.world or 1)), 3)
        end
        return {
            inner = src,
            next = function(self)
                local a, b = self.inner:next()
                if a == nil then return nil end
                if b ~= nil then return { ids = a, targets = b } end
                return a
            end,
            state = function(self) return self.inner.state and self.inner:state() end,
            set_state = function(self, st) return self.inner:set_state(st) end,
            estimate_batches_per_epoch = src.estimate_batches_per_epoch and function(self)
                return self.inner:estimate_batches_per_epoch()
            end or nil,
        }
    end
    return loader_mod.new(src, { batch_size = opts.batch_size or 8, seq_len = opts.seq_len or 128,
        seed = opts.seed or 0, pad_id = opts.pad_id or 0, packing = opts.packing, shuffle = opts.shuffle,
        rank = pg.rank, world = pg.world })
end

local function need(ok, msg)
    if not ok then error("trainer: " .. msg, 3) end
end

-- opts: see the comment at the top. Required: model, train.
function M.new(opts)
    need(type(opts) == "table", "needs an options table")
    local model = opts.model
    need(model and opts.train, "needs model and train")
    local grad_accum = opts.grad_accum or 1
    need(type(grad_accum) == "number" and grad_accum >= 1 and grad_accum == math.floor(grad_accum),
        ("grad_accum must be a positive integer, got %s"):format(tostring(grad_accum)))
    local grad_clip = opts.grad_clip or 1.0
    need(type(grad_clip) == "number" and grad_clip >= 0, ("grad_clip must be >= 0, got %s"):format(tostring(grad_clip)))
    local self = setmetatable({ model = model, opts = opts, grad_accum = grad_accum, grad_clip = grad_clip,
        hooks_after = {}, hooks_before = {}, detect = opts.detect_nonfinite or "step" }, Trainer)
    need(self.detect == "step" or self.detect == "parameter",
        ("detect_nonfinite must be \"step\" or \"parameter\", got %s"):format(tostring(self.detect)))
    -- the job's processes (a world of 1 without a launcher): data parallelism, DDP or ZeRO
    local pg = opts.group or require("luatrain.dist").group()
    self.pg = pg
    self.zero = opts.zero or 0
    need(self.zero == 0 or self.zero == 1 or self.zero == 2 or self.zero == 3,
        ("zero must be 0, 1, 2 or 3, got %s"):format(tostring(self.zero)))
    local optim_name = opts.optim or "adamw"
    need(M.OPTIMIZERS[optim_name] ~= nil, ("optim must be %s, got %s"):format(M.OPTIMIZER_NAMES, tostring(optim_name)))
    if opts.optimizer then optim_name = opts.optimizer.kind or optim_name end
    need(self.zero == 0 or optim_name ~= "adamw_8bit",
        ("zero=%d with optim=adamw_8bit is not supported yet (ZeRO shards 32-bit AdamW state; use zero=0 or optim=adamw)"):format(
            self.zero))
    self.is_main = pg:is_main()
    self.batches = batch_source(opts, pg)
    local steps = opts.steps or 0
    if steps <= 0 then
        local epochs = opts.epochs or 1
        local per_epoch = self.batches.estimate_batches_per_epoch and self.batches:estimate_batches_per_epoch()
        need(per_epoch, "give steps: the batch source cannot say how many batches an epoch has")
        steps = math.max(1, epochs * math.ceil(per_epoch / grad_accum))
    end
    self.steps = steps
    local parallel = pg.world > 1 or self.zero > 0
    need(opts.flatten ~= false or not parallel, "data parallelism and ZeRO need flat parameters (flatten = false given)")
    -- ZeRO-3 shards and gathers layer by layer: each decoder layer's parameters a group
    if opts.flatten ~= false then
        model:flatten_parameters({ trainable_only = true, pad_multiple = pg.world, per_layer = self.zero == 3 })
    end
    self.params = model:parameters()
    need(#self.params > 0, "the model has no trainable parameters")
    -- the gradient norm over the flat gradient buffers when they hold every gradient (one
    -- reduction per buffer; the gaps between parameters are zeros)
    local in_flat, list = {}, {}
    for _, g in ipairs(model:flat_parameters() or {}) do
        if g.grads then
            list[#list + 1] = g.grads
            for _, e in ipairs(g.entries) do in_flat[e.record.grad] = true end
        end
    end
    local all = #list > 0
    for _, r in ipairs(self.params) do all = all and in_flat[r.grad] == true end
    self.norm_tensors = all and list or nil
    self.optimizer = opts.optimizer or M.default_optimizer(model, opts)
    self.scaler = M.loss_scaler(opts.loss_scale)
    if self.zero > 0 then
        self.optimizer = require("luatrain.dist.zero").new(model, pg, self.optimizer, { stage = self.zero,
            offload_params = opts.offload_params })
    elseif pg.world > 1 then
        self.ddp = require("luatrain.dist.ddp").new(model, pg, { bucket_mb = opts.bucket_mb })
    end
    self.lr_factor = optim.schedule(opts.schedule or "cosine", { warmup_steps = opts.warmup or 0,
        total_steps = steps, min_factor = opts.min_lr_factor })
    self.first_step = 1
    local resume = opts.resume
    if resume == "auto" then
        resume = opts.checkpoint_dir and require("luatrain.checkpoint").latest(opts.checkpoint_dir) or nil
    end
    if resume then
        local st = require("luatrain.checkpoint").load(resume, { model = model, optimizer = self.optimizer,
            loader = self.batches, scaler = self.scaler })
        self.first_step = st.step + 1
        self.resumed_from = st.path or resume
    end
    return self
end

M.Trainer.new = M.new

-- loss_scale: nil or "none" (no scaling), "dynamic" (lt.amp.GradScaler's defaults), a number
-- (a static scale: overflowing steps are still skipped), or a GradScaler.
function M.loss_scaler(v)
    local amp = require "luatrain.amp"
    if v == nil or v == "none" or v == false then return nil end
    if v == "dynamic" then return amp.GradScaler() end
    if type(v) == "number" then return amp.GradScaler({ init_scale = v, dynamic = false }) end
    if amp.is_scaler(v) then return v end
    error(("trainer: loss_scale must be \"none\", \"dynamic\", a number or an lt.amp.GradScaler, got %s"):format(
        tostring(v)), 3)
end

-- The optimizers opts.optim names (Hugging Face's names), and the list for messages.
M.OPTIMIZERS = { adamw = optim.AdamW, adamw_8bit = optim.AdamW8bit,
    paged_adamw = function(params, o)
        o.paged = true
        return optim.AdamW(params, o)
    end,
    paged_adamw_8bit = function(params, o)
        o.paged = true
        return optim.AdamW8bit(params, o)
    end }
M.OPTIMIZER_NAMES = '"adamw", "adamw_8bit", "paged_adamw" or "paged_adamw_8bit"'

-- opts.optim's optimizer (AdamW unless told) over the model's trainable parameters; with
-- lora_plus_ratio, LoRA+'s two groups (the B matrices at ratio x lr).
function M.default_optimizer(model, opts)
    local make = M.OPTIMIZERS[opts.optim or "adamw"]
    if not make then
        error(("trainer: optim must be %s, got %s"):format(M.OPTIMIZER_NAMES, tostring(opts.optim)), 2)
    end
    local base = { lr = opts.lr or 1e-3, betas = opts.betas or { 0.9, 0.999 }, eps = opts.eps,
        weight_decay = opts.weight_decay or 0 }
    -- offload = "cpu" (the optimizer state and master weights in host memory: AdamW or its
    -- 8-bit form) or "nvme" (the moments in files in offload_dir: AdamW)
    if opts.offload and opts.offload ~= "none" then
        local o = opts.optim or "adamw"
        if opts.offload == "nvme" and o ~= "adamw" then
            error(("trainer: offload=nvme moves AdamW's 32-bit moments; use optim=adamw (got %s)"):format(
                tostring(opts.optim)), 2)
        end
        if opts.offload == "cpu" and o ~= "adamw" and o ~= "adamw_8bit" then
            error(("trainer: offload=cpu updates AdamW's state on the host; use optim=adamw or adamw_8bit "
                .. "(got %s: the paged optimizers keep theirs in host memory already)"):format(tostring(opts.optim)), 2)
        end
        base.offload, base.offload_dir = opts.offload, opts.offload_dir
    end
    local ratio = opts.lora_plus_ratio or 0
    if ratio > 0 then
        return make(optim.lora_plus_groups(model, { lr = base.lr, ratio = ratio,
            weight_decay = base.weight_decay }), base)
    end
    return make(model:parameters(), base)
end

-- fn(trainer, state) after (hook) or before (hook_before) the named stage.
function Trainer:hook(stage, fn)
    if not STAGE_SET[stage] then
        error(("trainer:hook: unknown stage %q (stages: %s)"):format(tostring(stage), table.concat(M.STAGES, ", ")), 2)
    end
    local list = self.hooks_after[stage] or {}
    list[#list + 1] = fn
    self.hooks_after[stage] = list
    return self
end

function Trainer:hook_before(stage, fn)
    if not STAGE_SET[stage] then
        error(("trainer:hook_before: unknown stage %q (stages: %s)"):format(tostring(stage), table.concat(M.STAGES, ", ")), 2)
    end
    local list = self.hooks_before[stage] or {}
    list[#list + 1] = fn
    self.hooks_before[stage] = list
    return self
end

-- ---- the stages ----------------------------------------------------------------------------

local stages = {}

function stages.forward_backward(self, st)
    local model = self.model
    -- the whole step's batches first: every micro-batch's loss is divided by the step's
    -- trained-target count, so the step's loss and gradients are per token
    local batches, trained, tokens = {}, 0, 0
    for i = 1, self.grad_accum do
        local b = self.batches:next()
        if not b then break end
        -- the trained targets of the step on every rank (the loader's rounds count them)
        local n = b.round_trained or trained_of(b)
        -- a source refills the same tensors on every call: with several micro-batches in
        -- hand, each is kept in buffers of its own
        if self.grad_accum > 1 then b = self:_hold(i, b) end
        batches[i] = { b = b, trained = n }
        trained = trained + n
        tokens = tokens + (b.tokens or b.ids:numel())
    end
    st.micro_batches, st.trained, st.tokens = #batches, trained, tokens
    if #batches == 0 then
        st.exhausted = true
        return
    end
    if trained == 0 then
        st.skipped, st.loss = true, 0
        return
    end
    local loss = 0
    for k, e in ipairs(batches) do
        local b = e.b
        local last = k == #batches
        -- DDP: only the last micro-batch's backward communicates (its buckets start as it goes)
        if self.ddp and last then self.ddp:arm() end
        -- loss scaling: the backward runs on loss x scale (a power of two, so exactly)
        loss = loss + model:forward_backward(b.ids, b.targets, { positions = b.positions,
            cu_seqlens = b.cu_seqlens, normalizer = trained / st.loss_scale })
        -- ZeRO-2: every micro-batch but the last is reduce-scattered into the shards at once
        if self.zero == 2 and not last then self.optimizer:reduce(false) end
    end
    st.loss = loss / st.loss_scale
end

-- Copies of a micro-batch's tensors (the loader refills one set of tensors per call).
function Trainer:_hold(i, b)
    self._held = self._held or {}
    local h = self._held[i] or {}
    self._held[i] = h
    local out = { trained = b.trained, tokens = b.tokens }
    for _, k in ipairs({ "ids", "targets", "positions", "cu_seqlens" }) do
        local t = b[k]
        if t then
            local keep = h[k]
            if keep == nil then
                keep = require("luatrain.tensor").new_header()
                h[k] = keep
            end
            keep:resize_(t:shape(), { dtype = t.dtype, device = t.device })
            keep:copy_(t)
            out[k] = keep
        end
    end
    return out
end

-- DDP: the buckets still running are waited for; ZeRO: the last micro-batch's gradients are
-- reduce-scattered into the shards. Nothing in a world of 1.
function stages.reduce_gradients(self)
    if self.ddp then self.ddp:finish() end
    if self.zero > 0 then self.optimizer:reduce(true) end
end

-- This rank's part of the gradient's sum of squares, for a norm every rank computes the
-- same: ZeRO's shard; DDP's equal partition of the whole buffers in deterministic mode (so
-- DDP and ZeRO round alike), else nil (every rank holds the whole summed gradient).
function Trainer:_partition_sum_squares()
    if self.zero > 0 then return self.optimizer:shard_sum_squares() end
    if not self.pg.deterministic then return nil end
    local s, W, r = 0, self.pg.world, self.pg.rank
    for _, g in ipairs(self.model:flat_parameters()) do
        if g.grads then
            local S = g.numel / W
            s = s + g.grads:narrow(1, r * S + 1, S):sum_squares()
        end
    end
    return s
end

-- The first trainable parameter whose gradient holds a NaN or an infinity.
function Trainer:first_nonfinite_gradient()
    for _, r in ipairs(self.params) do
        if r.grad:has_nonfinite() then return r.name end
    end
    return nil
end

function stages.unscale_check(self, st)
    st.grad_scale = 1 / st.loss_scale
    local norm
    if self.pg.world > 1 then
        -- the job's loss, tokens and (partitioned) sum of squares in one reduction: every
        -- rank sees the same numbers, so a non-finite one stops every rank at this step
        local part = self:_partition_sum_squares()
        local t = self.pg:sum_numbers({ st.loss, st.tokens, part or 0 })
        st.local_loss, st.local_tokens = st.loss, st.tokens
        st.loss, st.tokens = t[1], t[2]
        if part then norm = math.sqrt(t[3]) end
    elseif self.zero > 0 then
        norm = math.sqrt(self.optimizer:shard_sum_squares())
    end
    norm = norm or (self.norm_tensors and require("luatrain.ops.nn").global_norm(self.norm_tensors)
        or optim.grad_norm(self.params))
    if st.grad_scale ~= 1 then norm = norm * st.grad_scale end
    st.grad_norm = norm
    local scaler = self.scaler
    if scaler then
        -- an inf or NaN gradient under loss scaling is an overflow, not a broken run: the
        -- step is skipped and the scale backs off (every rank sees the same norm)
        st.overflow = not finite(norm)
        scaler:update(st.overflow)
        if st.overflow then return end
    end
    if finite(st.loss) and finite(norm) then return end
    local what = not finite(st.loss) and ("the loss is %s"):format(tostring(st.loss))
        or ("the gradient norm is %s"):format(tostring(norm))
    local where
    if self.detect == "parameter" then
        local name = self:first_nonfinite_gradient()
        where = name and ("; the first non-finite gradient is %s's"):format(name) or
            "; every gradient is finite (the loss alone is not)"
    else
        where = "; detect_nonfinite=parameter names the first parameter whose gradient is not finite"
    end
    error(("step %d: %s%s. Training stopped before the update: the weights, the log and the checkpoints hold step %d's state"):format(
        st.step, what, where, st.step - 1), 0)
end

function stages.clip(self, st)
    local norm = st.grad_norm
    if self.grad_clip > 0 then
        local coef = self.grad_clip / (norm + 1e-6)
        st.clip_coef = coef < 1 and coef or 1
    else
        st.clip_coef = 1
    end
end

function stages.optimizer_step(self, st)
    local opt = self.optimizer
    opt:set_lr_factor(self.lr_factor(st.step))
    opt:step({ grad_scale = st.clip_coef * st.grad_scale })
end

function stages.log(self, st)
    local opts = self.opts
    local rec = { step = st.step, loss = st.loss, lr = self.optimizer:get_lr(), grad_norm = st.grad_norm,
        tokens = st.tokens, trained_tokens = st.trained, tokens_per_s = st.tokens / st.dt,
        step_ms = st.dt * 1000, time = fs.wall_time() }
    local mem = memory.stats(self.device)
    rec.peak_bytes, rec.current_bytes = mem.peak, mem.current
    if self.pg.world > 1 then
        -- peak_bytes is this rank's (rank 0); the largest over the ranks beside it
        rec.peak_bytes_max = self.pg:max_numbers({ mem.peak })[1]
        rec.world = self.pg.world
    end
    if st.skipped then rec.skipped = true end
    if self.scaler then
        -- the scale this step ran with, and the steps skipped for overflow so far
        rec.loss_scale, rec.overflow_steps = st.loss_scale, self.scaler.skipped
        if st.overflow then rec.overflow = true end
    end
    if opts.eval and (opts.eval_every or 0) > 0 and st.step % opts.eval_every == 0 and st.step < self.steps then
        rec.eval_loss = M.eval_loss(self.model, opts.eval, self.eval_opts)
        self.result.eval_curve[#self.result.eval_curve + 1] = { st.step, rec.eval_loss }
    end
    st.record = rec
    if self.log then self.log:write(rec) end
    -- TensorBoard: every number of the record as train/<name>, the evaluation's as eval/loss
    if self.tb then
        local ev = rec.eval_loss
        rec.eval_loss = nil
        self.tb:record(rec, "train")
        rec.eval_loss = ev
        if ev then self.tb:scalar("eval/loss", ev, st.step) end
        if st.skipped or st.overflow then self.tb:scalar("train/skipped_steps", self.result.skipped_steps + 1, st.step) end
    end
    if opts.checkpoint_dir and (opts.save_every or 0) > 0 and st.step % opts.save_every == 0 then
        self:save_checkpoint(st.step)
    end
    if opts.on_step and self.is_main then opts.on_step(rec, self.steps) end
end

M.stages = stages

-- A run checkpoint in checkpoint_dir, in the single-process layout, written by rank 0; every
-- rank takes part (ZeRO's shards travel to rank 0), and the others wait until it is written.
function Trainer:save_checkpoint(step)
    local opts = self.opts
    local opt = self.optimizer
    -- ZeRO-3: every rank makes the layers whole for the save (a collective), then shards again
    local z3 = opt.layer_shards and opt
    if z3 then z3:gather_params() end
    if self.pg.world > 1 then
        local sd = opt:state_dict() -- collective under ZeRO; nil on ranks but 0
        opt = { state_dict = function() return sd end }
    end
    if self.is_main then
        require("luatrain.checkpoint").save(opts.checkpoint_dir, { model = self.model, optimizer = opt,
            loader = self.batches, step = step, keep_last = opts.keep_last, scaler = self.scaler })
    end
    self.pg:barrier()
    if z3 then z3:reshard() end
end

local function run_stage(self, name, st)
    for _, fn in ipairs(self.hooks_before[name] or {}) do fn(self, st) end
    stages[name](self, st)
    for _, fn in ipairs(self.hooks_after[name] or {}) do fn(self, st) end
end

-- One optimizer step through the stages; returns its state (state.record is what was
-- logged), or nil when the batch source is exhausted.
function Trainer:step(step)
    local st = { step = step, grad_scale = 1, loss_scale = self.scaler and self.scaler.scale or 1 }
    local t0 = fs.now()
    self.optimizer:zero_grad()
    run_stage(self, "forward_backward", st)
    if st.exhausted then return nil end
    if not st.skipped then
        run_stage(self, "reduce_gradients", st)
        run_stage(self, "unscale_check", st)
        if not st.overflow then
            run_stage(self, "clip", st)
            run_stage(self, "optimizer_step", st)
        end
    end
    st.dt = fs.now() - t0
    run_stage(self, "log", st)
    return st
end

-- Train from first_step to steps. Returns the measurements.
function Trainer:run()
    local opts, model = self.opts, self.model
    -- rank 0 writes the log (its records hold the job's numbers)
    self.log = opts.log and self.is_main and log_mod.open(opts.log, self.first_step > 1) or nil
    -- opts.tensorboard: a folder for TensorBoard event files (rank 0's; a resumed run adds a
    -- file), or a writer of the caller's (lt.tensorboard.open), left open
    local tbo = opts.tensorboard
    if type(tbo) == "table" then
        self.tb = self.is_main and tbo or nil
    elseif type(tbo) == "string" and tbo ~= "" and self.is_main then
        self.tb, self.tb_owned = require("luatrain.tensorboard").open(tbo), true
    end
    local result = { steps = self.steps, loss_curve = {}, eval_curve = {}, step_times = {},
        first_step = self.first_step, skipped_steps = 0 }
    self.result = result
    -- eval_shared = false: every rank evaluates every held-out batch (a model whose layers
    -- gather across the ranks needs each rank to run as many forwards as the others)
    self.eval_opts = { batch_size = opts.batch_size, seq_len = opts.seq_len, pad_id = opts.pad_id,
        group = opts.eval_shared ~= false and self.pg or nil }
    -- peak memory of the device the model trains on (the host for a CPU model)
    self.device = model.device and model:device() or "cpu"
    -- tensors dropped before the run (replaced parameter storages, loading's leftovers, an
    -- earlier run's model) are released now, not whenever the collector gets to them: the
    -- peak then starts from the same bytes every run, which is what the planner (lt.plan)
    -- predicts. Compiled traces hold the objects they specialised on (an earlier model's
    -- tables, and through them its tensors): memory.collect flushes them first
    memory.collect()
    memory.reset_peak(self.device)
    model:train()
    local t_start, tokens, last = fs.now(), 0, self.first_step - 1
    -- Ctrl-C with a checkpoint folder (one process): the step under way finishes, a
    -- checkpoint of it is saved, and the run stops with an error saying where to resume
    local catch = opts.checkpoint_dir and opts.save_on_interrupt ~= false and self.pg.world == 1
    if catch then core.check(core.C.lt_interrupt_catch(1)) end
    local interrupted
    local ok, err = pcall(function()
        for step = self.first_step, self.steps do
            local st = self:step(step)
            if not st then break end
            last = step
            tokens = tokens + st.tokens
            result.loss_curve[step] = st.loss
            result.step_times[step] = st.dt
            if st.skipped or st.overflow then result.skipped_steps = result.skipped_steps + 1 end
            if catch and core.C.lt_interrupt_pending() > 0 then
                if (opts.save_every or 0) <= 0 or step % opts.save_every ~= 0 then self:save_checkpoint(step) end
                interrupted = step
                break
            end
        end
    end)
    if catch then core.C.lt_interrupt_catch(0) end
    -- save_final: the last step's checkpoint too (what the run produced survives a failure
    -- of whatever the caller does after, such as its final save)
    if ok and not interrupted and opts.save_final and opts.checkpoint_dir and last >= self.first_step
        and not ((opts.save_every or 0) > 0 and last % opts.save_every == 0) then
        ok, err = pcall(self.save_checkpoint, self, last)
    end
    if self.log then self.log:close() end
    if self.tb_owned then self.tb:close() end
    if not ok then error(err, 0) end
    if interrupted then
        error(("interrupted (Ctrl-C) after step %d of %d: checkpoint-%d saved in %s; resume=auto goes on from it"):format(
            interrupted, self.steps, interrupted, opts.checkpoint_dir), 0)
    end
    result.steps = last
    result.train_time = fs.now() - t_start
    result.tokens = tokens
    result.tokens_per_s = tokens / result.train_time
    -- the first steps include one-time buffer allocation; the median is the steady state
    local sorted = {}
    for step = self.first_step, last do sorted[#sorted + 1] = result.step_times[step] end
    table.sort(sorted)
    result.step_time = sorted[math.floor((#sorted + 1) / 2)]
    result.peak_bytes = memory.stats(self.device).peak
    result.device = self.device
    result.first_loss, result.last_loss = result.loss_curve[self.first_step], result.loss_curve[last]
    result.trainable = model:num_parameters(true)
    if self.scaler then result.loss_scale, result.overflow_steps = self.scaler.scale, self.scaler.skipped end
    if opts.eval then
        result.eval_loss = M.eval_loss(model, opts.eval, self.eval_opts)
        result.eval_curve[#result.eval_curve + 1] = { last, result.eval_loss }
    end
    result.loader = self.batches
    result.optimizer = self.optimizer
    result.trainer = self
    return result
end

-- Train in one call: lt.trainer.new(opts):run().
function M.finetune(opts)
    return M.new(opts):run()
end

return M
