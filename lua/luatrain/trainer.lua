--[[
trainer.lua - the fine-tuning loop shared by the recipes, and the measurements around it.

    local result = lt.trainer.finetune{ model = model, train = train_ds, eval = eval_ds,
        batch_size = 8, seq_len = 128, steps = 200, lr = 2e-3, on_step = print_progress }
    result.loss_curve, result.eval_loss, result.tokens_per_s, result.peak_bytes, ...

One optimizer step: grad_accum packed micro-batches, each loss scaled by 1/grad_accum so
the gradients average; the global gradient norm clipped inside the AdamW update; the
learning rate from a warm-up + decay schedule. Only the model's trainable parameters
(with LoRA applied: the adapters) are optimized.

lt.trainer.eval_loss(model, ds, opts) is the mean loss over every trained token of a
dataset; lt.trainer.questions(path, template) and lt.trainer.accuracy(model, tok,
questions, opts) score exact-match answers generated greedily.
]]
local records = require "luatrain.data.records"
local templates = require "luatrain.data.templates"
local loader_mod = require "luatrain.data.loader"
local optim = require "luatrain.optim"
local memory = require "luatrain.memory"
local fs = require "luatrain.fs"
local log_mod = require "luatrain.log"

local M = {}

-- Mean loss over every trained token of `ds` (eval mode, no gradients).
function M.eval_loss(model, ds, opts)
    opts = opts or {}
    local l = loader_mod.new(ds, { batch_size = opts.batch_size or 8, seq_len = opts.seq_len or 128,
        shuffle = false, epochs = 1, pad_id = opts.pad_id or 0 })
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
    if was then model:train() end
    return count > 0 and sum / count or 0
end

-- The question / answer pairs of a JSONL file: every record whose last message is the
-- assistant's (prompt/completion and alpaca records count as one-turn chats).
function M.questions(path, template, limit)
    local out = {}
    local r = records.open(path)
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

-- Train. opts: model, train (a tokenized dataset), eval (optional), batch_size, seq_len,
-- grad_accum (1), lr, betas, weight_decay (0), schedule ("cosine"), warmup (0), steps, or
-- epochs when steps is 0, grad_clip (1), seed, pad_id, eval_every (0), log (JSONL path),
-- checkpoint_dir, save_every and keep_last (write checkpoint-<step> folders into the run
-- folder checkpoint_dir, keeping the keep_last newest), resume (a checkpoint or run folder
-- to continue from, or "auto": checkpoint_dir's newest, if any; the same trajectory
-- resumes), on_step(record). Returns the measurements.
function M.finetune(opts)
    local model, ds = opts.model, opts.train
    if not model or not ds then error("trainer.finetune: needs model and train", 2) end
    local grad_accum = opts.grad_accum or 1
    local loader = loader_mod.new(ds, { batch_size = opts.batch_size or 8, seq_len = opts.seq_len or 128,
        seed = opts.seed or 0, pad_id = opts.pad_id or 0 })
    local steps = opts.steps or 0
    if steps <= 0 then
        local epochs = opts.epochs or 1
        steps = math.max(1, epochs * math.ceil(loader:estimate_batches_per_epoch() / grad_accum))
    end
    local params = model:parameters()
    local opt = optim.AdamW(params, { lr = opts.lr or 1e-3, betas = opts.betas or { 0.9, 0.999 },
        weight_decay = opts.weight_decay or 0 })
    local lr_factor = optim.schedule(opts.schedule or "cosine", { warmup_steps = opts.warmup or 0,
        total_steps = steps, min_factor = opts.min_lr_factor })
    local first_step = 1
    local resume = opts.resume
    if resume == "auto" then resume = opts.checkpoint_dir and require("luatrain.checkpoint").latest(opts.checkpoint_dir) end
    if resume then
        local st = require("luatrain.checkpoint").load(resume, { model = model, optimizer = opt, loader = loader })
        first_step = st.step + 1
    end
    local log = opts.log and log_mod.open(opts.log, first_step > 1) or nil
    local result = { steps = steps, loss_curve = {}, eval_curve = {}, step_times = {}, first_step = first_step }
    local eval_opts = { batch_size = opts.batch_size, seq_len = opts.seq_len, pad_id = opts.pad_id }
    -- peak memory of the device the model trains on (the host for a CPU model)
    local dev = model.device and model:device() or "cpu"
    memory.reset_peak(dev)
    model:train()
    local t_start, tokens = fs.now(), 0
    for step = first_step, steps do
        local t0 = fs.now()
        opt:set_lr_factor(lr_factor(step))
        opt:zero_grad()
        local loss, step_tokens = 0, 0
        for _ = 1, grad_accum do
            local b = loader:next()
            loss = loss + model:forward_backward(b.ids, b.targets, { positions = b.positions,
                cu_seqlens = b.cu_seqlens, scale = 1 / grad_accum }) / grad_accum
            step_tokens = step_tokens + b.tokens
        end
        local norm, coef = optim.grad_norm_clip_coef(params, opts.grad_clip or 1.0)
        opt:step({ grad_scale = coef })
        local dt = fs.now() - t0
        tokens = tokens + step_tokens
        result.loss_curve[step] = loss
        result.step_times[step] = dt
        local rec = { step = step, loss = loss, lr = opt:get_lr(), grad_norm = norm,
            tokens_per_s = step_tokens / dt, step_ms = dt * 1000, peak_bytes = memory.stats(dev).peak }
        if opts.eval and (opts.eval_every or 0) > 0 and step % opts.eval_every == 0 and step < steps then
            rec.eval_loss = M.eval_loss(model, opts.eval, eval_opts)
            result.eval_curve[#result.eval_curve + 1] = { step, rec.eval_loss }
        end
        if log then log:write(rec) end
        if opts.checkpoint_dir and (opts.save_every or 0) > 0 and step % opts.save_every == 0 then
            require("luatrain.checkpoint").save(opts.checkpoint_dir, { model = model, optimizer = opt,
                loader = loader, step = step, keep_last = opts.keep_last })
        end
        if opts.on_step then opts.on_step(rec, steps) end
    end
    result.train_time = fs.now() - t_start
    result.tokens = tokens
    result.tokens_per_s = tokens / result.train_time
    -- the first steps include one-time buffer allocation; the median is the steady state
    local sorted = {}
    for step = first_step, steps do sorted[#sorted + 1] = result.step_times[step] end
    table.sort(sorted)
    result.step_time = sorted[math.floor((#sorted + 1) / 2)]
    result.peak_bytes = memory.stats(dev).peak
    result.device = dev
    result.first_loss, result.last_loss = result.loss_curve[first_step], result.loss_curve[steps]
    result.trainable = model:num_parameters(true)
    if opts.eval then
        result.eval_loss = M.eval_loss(model, opts.eval, eval_opts)
        result.eval_curve[#result.eval_curve + 1] = { steps, result.eval_loss }
    end
    if log then log:close() end
    result.loader = loader
    result.optimizer = opt
    return result
end

return M
