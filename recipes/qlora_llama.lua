--[[
qlora_llama.lua - fine-tune a Llama with QLoRA: the base frozen in 4-bit NormalFloat
(double-quantized scales), LoRA adapters trained in f32, and an adapter written in PEFT's
format that the Hugging Face ecosystem loads as its own.

    luatrain recipes/qlora_llama.lua                     # the small built-in example
    luatrain recipes/qlora_llama.lua model=path/to/llama dataset=chat.jsonl template=llama3 \
        r=16 alpha=32 steps=1000 batch_size=4 seq_len=1024 output_dir=runs/my_adapter
    luatrain recipes/qlora_llama.lua --help

With no model or dataset it runs on recipes/assets/tiny_facts: a tiny Llama that was
pretrained on statements about made-up people, and questions about them in the Llama 3
chat format (tools/make_tiny_facts.lua made both). The evaluation questions are about
people the fine-tune never sees, so exact-match accuracy on them shows whether the
adapters learned to answer from what the frozen 4-bit base knows.

The run: load and quantize the base layer by layer, put LoRA on the chosen linears,
show a sample answer and the accuracy before training, train (packed batches, gradient
accumulation, warm-up + cosine schedule, clipping), report the held-out loss, show the
sample and accuracy after, and save the adapter (atomically) with a summary.

Under mpirun (mpirun -np N luatrain recipes/qlora_llama.lua ...) it trains data-parallel:
every rank holds the model, the batches are shared out, gradients are summed (zero=0: DDP)
or the optimizer state is sharded (zero=1, zero=2); rank 0 alone prints, evaluates answers
and writes the adapter and the log.
]]
local lt = require "luatrain"

-- the built-in example beside this file, wherever the run starts
local ASSETS = lt.recipes.path(lt.recipes.here() .. "/assets/tiny_facts")

local cfg = lt.config {
    model = { ASSETS .. "/model", "Hugging Face Llama folder (config.json, safetensors, tokenizer.json)", nonempty = true },
    dataset = { ASSETS .. "/train.jsonl", "training data (JSONL: alpaca, messages, sharegpt, text or prompt/completion); "
        .. "several files mixed by weight: a.jsonl:0.7,b.jsonl:0.3", nonempty = true },
    eval_dataset = { ASSETS .. "/eval.jsonl", "held-out data (empty: carve eval_split out of the dataset)" },
    eval_split = { 0.1, "fraction of the dataset held out when eval_dataset is empty", above = 0, below = 1 },
    template = { "llama3", "chat template (auto: the model's own, tokenizer_config.json's chat_template)",
        choices = { "auto", "none", "llama2", "llama3", "chatml" } },
    train_on = { "completion", "which tokens are trained", choices = { "completion", "all" } },
    long_samples = { "truncate", "a sample longer than seq_len: cut it, drop it, or stop with an error naming it",
        choices = { "truncate", "drop", "error" } },
    quant = { "nf4", "base weight format", choices = { "nf4", "fp4", "int8", "none" } },
    double_quant = { true, "quantize the 4-bit scales too (bitsandbytes' double quantization)" },
    blocksize = { 64, "elements per 4-bit scale", type = "int", min = 16 },
    r = { 8, "LoRA rank", type = "int", min = 1 },
    alpha = { 32, "LoRA alpha (scaling alpha / r)", above = 0 },
    dropout = { 0.1, "LoRA dropout", min = 0, below = 1 },
    target = { "all-linear", "adapted layers: all-linear, a comma list (q_proj,v_proj) or a Lua pattern" },
    rslora = { false, "scale by alpha / sqrt(r) (rsLoRA)" },
    dora = { false, "DoRA: learn a magnitude per output as well" },
    modules_to_save = { "", "modules trained whole beside the adapters and saved with them, a comma list "
        .. "(lm_head,embed_tokens: for a new chat format or new tokens)" },
    init = { "kaiming", "how adapters start: B = 0 beside a kaiming or gaussian A, or from the weight's own "
        .. "directions (olora: its QR, pissa: its top singular triplets; these rewrite the base, so quant=none)",
        choices = { "kaiming", "gaussian", "olora", "pissa" } },
    batch_size = { 8, "sequences per micro-batch (packed into one row)", type = "int", min = 1 },
    seq_len = { 128, "tokens per sequence slot", type = "int", min = 2 },
    gradient_checkpointing = { true, "gradient checkpointing: keep one decoder layer's activations, re-run its forward in backward" },
    offload_activations = { false, "with gradient checkpointing: keep each layer's input in host memory, not on the "
        .. "device (bit-identical; less device memory for copies)" },
    grad_accum = { 1, "micro-batches per optimizer step", type = "int", min = 1 },
    lr = { 3e-3, "peak learning rate", above = 0 },
    lora_plus_ratio = { 0, "LoRA+: the B matrices learn this many times faster (0: off; 16 in the paper)", min = 0 },
    schedule = { "cosine", "learning-rate schedule", choices = { "constant", "linear", "cosine" } },
    warmup = { 10, "warm-up steps", type = "int", min = 0 },
    steps = { 150, "optimizer steps (0: run `epochs`)", type = "int", min = 0 },
    epochs = { 0, "passes over the dataset when steps is 0", type = "int", min = 0 },
    weight_decay = { 0.0, "AdamW weight decay on the adapters", min = 0 },
    optim = { "adamw", "optimizer (Hugging Face's names): adamw (32-bit moments), paged_adamw (32-bit moments in host memory, "
        .. "paged in for the update), adamw_8bit (bitsandbytes' 8-bit "
        .. "blockwise moments for adapters of 4096+ elements), or paged_adamw_8bit (both)",
        choices = { "adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit" } },
    offload = { "none", "where the optimizer's state lives: none (with the weights), cpu (host memory, updated by the "
        .. "host's cores, with an f32 master copy of GPU weights; adamw or adamw_8bit) or nvme (AdamW's moments in a file "
        .. "in offload_dir, read and written page by page around the update; at zero=3 the layers' parameter shards "
        .. "too); with zero each rank's shard", choices = { "none", "cpu", "nvme" } },
    offload_dir = { "", "the folder for offload=nvme (a fast local disk)" },
    grad_clip = { 1.0, "clip the global gradient norm (0: off)", min = 0 },
    detect_nonfinite = { "step", "on a NaN/inf loss or gradient: name the step, or also the first parameter (slower)",
        choices = { "step", "parameter" } },
    eval_every = { 50, "held-out loss every this many steps (0: only at the end)", type = "int", min = 0 },
    eval_samples = { 0, "questions for the accuracy check (0: all of the held-out set)", type = "int", min = 0 },
    max_new_tokens = { 16, "tokens generated per answer", type = "int", min = 1 },
    output_dir = { "runs/qlora", "where the adapter (and log.jsonl) go", nonempty = true },
    save_every = { 0, "save a checkpoint (checkpoint-N in output_dir) every N steps (0: at the end and on Ctrl-C)",
        type = "int", min = 0 },
    keep_last = { 2, "checkpoints kept (the oldest go)", type = "int", min = 1 },
    resume = { "", "go on from a checkpoint: auto (the newest in output_dir) or its folder" },
    preview = { 0, "print N training samples as rendered, trained tokens between « and », and stop", type = "int",
        min = 0 },
    tensorboard = { true, "TensorBoard event files in output_dir/tensorboard: loss, lr, grad norm, tokens/s, memory, "
        .. "evaluation and accuracy, sample answers and these settings" },
    seed = { 1234, "seed for adapters, dropout, shuffling", type = "int" },
    threads = { 0, "CPU threads (0: one per CPU this process may run on)", type = "int" },
    device = { "cpu", "where training runs: cpu, cuda or cuda:N (the base is quantized on the host, then moved)" },
    zero = { 0, "data parallelism under mpirun: 0 DDP (every rank holds the optimizer state), 1, 2 or 3 ZeRO stages "
        .. "(state sharded; 2 also shards the accumulated gradients; 3 also the trained parameters, each decoder "
        .. "layer gathered as it runs)", type = "int", choices = { 0, 1, 2, 3 } },
    memory_limit = { "", "a budget for the training device's memory, e.g. 6GiB (empty: none; LT_MEMORY_LIMIT "
        .. "sets one for every device): past it an allocation fails as on a full device" },
    shard_base = { false, "under mpirun with a quantized base: each rank keeps 1/world of the base and "
        .. "all-gathers a layer's bytes as it runs (the same numbers, bit for bit)" },
    vocab_parallel = { false, "under mpirun: the embedding and LM head split by vocabulary rows over the ranks "
        .. "(their loss and gradients combined across them)" },
    auto_fit = { false, "with memory_limit: choose the micro-batch (keeping batch_size x grad_accum), gradient "
        .. "checkpointing, the paged optimizer and activation offload so that the planned training step fits" },
    precision = { "auto", "f32; bf16 (on a GPU: bf16 activations, f32 master weights; on the CPU: bf16 matmuls with "
        .. "f32 accumulation, through oneDNN); fp16 (f16 activations, f32 master weights, dynamic loss scaling; on "
        .. "the CPU the f32 kernels on f16 tensors: a test of the policy, not a speed-up); auto: bf16 on a GPU, f32 "
        .. "on the CPU",
        choices = { "auto", "f32", "bf16", "fp16" } },
}

-- settings whose range the declaration cannot say, checked before anything loads
local function need(ok, what) if not ok then error(lt.config.usage_error(what), 0) end end
need(cfg.steps > 0 or cfg.epochs > 0, "give steps or epochs a positive value")
need(cfg.offload ~= "nvme" or cfg.optim == "adamw", "offload=nvme moves AdamW's 32-bit moments: use optim=adamw")
need(cfg.offload ~= "cpu" or cfg.optim == "adamw" or cfg.optim == "adamw_8bit",
    "offload=cpu updates the optimizer on the host: use optim=adamw or adamw_8bit (the paged ones live there already)")
need(cfg.offload ~= "nvme" or cfg.offload_dir ~= "", "offload=nvme needs offload_dir= (a folder on a fast disk)")
need(not (cfg.init == "olora" or cfg.init == "pissa") or (cfg.quant == "none" and not cfg.shard_base and not cfg.dora),
    ("init=%s moves the weight's leading directions into the adapter and rewrites the base: it needs quant=none, "
    .. "and neither shard_base nor dora"):format(cfg.init))
need(not (cfg.vocab_parallel and cfg.zero > 0), "vocab_parallel=true makes the ranks one model: zero=0 with it")
need(cfg.zero == 0 or cfg.optim == "adamw" or cfg.optim == "paged_adamw", ("zero=%d with optim=%s is not supported "
    .. "yet (ZeRO shards 32-bit AdamW state, resident or paged; use zero=0, optim=adamw or optim=paged_adamw)"):format(
    cfg.zero, cfg.optim))
-- the files named exist, and a GPU is there if one is asked for: found out now, not after
-- the weights are loaded and quantized
local function readable(path)
    local f = io.open(path, "rb")
    if f then f:close() end
    return f ~= nil
end
need(readable(cfg.model .. "/config.json"), ("model=%s: no config.json there (a Hugging Face Llama folder)"):format(
    cfg.model))
-- dataset=a.jsonl:0.7,b.jsonl:0.3 (weights optional: equal)
local sources = {}
for item in cfg.dataset:gmatch("[^,]+") do
    local path, w = item:match("^(.*):([%d.eE+-]+)$")
    if not path then path, w = item, "1" end
    need(tonumber(w) and tonumber(w) > 0, ("dataset: %q: the weight after ':' must be a positive number"):format(item))
    need(readable(path), ("dataset=%s: no such file"):format(path))
    sources[#sources + 1] = { path = path, weight = tonumber(w) }
end
need(#sources == 1 or cfg.eval_dataset ~= "", "several datasets: give eval_dataset= (a held-out file)")
need(cfg.eval_dataset == "" or readable(cfg.eval_dataset), ("eval_dataset=%s: no such file"):format(cfg.eval_dataset))
if cfg.device ~= "cpu" then
    local ok, n = pcall(lt.cuda.device_count)
    need(ok and n > 0, ("device=%s: no CUDA device here (%s)"):format(cfg.device,
        ok and "none found" or tostring(n):gsub("\n.*", "")))
end
if cfg.steps > 0 and cfg.warmup >= cfg.steps then
    io.stderr:write(("warning: warmup=%d is not below steps=%d: the learning rate never reaches lr=%g\n"):format(
        cfg.warmup, cfg.steps, cfg.lr))
end
-- config.json is read (and checked) before the weights: a rank the model's layers cannot
-- hold is refused before gigabytes of adapters are allocated
local model_cfg = lt.llama.read_config(cfg.model .. "/config.json")
local smallest = math.min(model_cfg.hidden_size, model_cfg.intermediate_size,
    model_cfg.num_key_value_heads * model_cfg.head_dim)
need(cfg.r <= smallest, ("r=%d is larger than the model's smallest linear dimension (%d): a rank above it "
    .. "adds parameters, not expressiveness"):format(cfg.r, smallest))

-- auto_fit: the fastest settings whose planned step fits the budget (lt.plan.fit), chosen
-- before anything loads. 2% of the budget is left for what the plan does not count: the
-- evaluation before training leaves a few buffers (0.25% of the default run's peak).
if cfg.auto_fit then
    need(cfg.memory_limit ~= "", "auto_fit=true needs memory_limit= (the budget to fit)")
    local limit = lt.memory.parse_bytes(cfg.memory_limit, "memory_limit")
    local fit, plan = lt.plan.fit(lt.config.values(cfg), math.floor(limit * 0.98))
    if not fit then
        need(false, ("auto_fit: nothing fits memory_limit=%s: the smallest plan (micro-batch %d, "
            .. "checkpointing %s, %s%s) needs %s"):format(cfg.memory_limit, plan.settings.batch_size,
            plan.settings.gradient_checkpointing and "on" or "off", plan.settings.optim,
            plan.settings.offload and ", activations offloaded" or "", lt.memory.format_bytes(plan.peak.train)))
    end
    for _, k in ipairs({ "batch_size", "grad_accum", "gradient_checkpointing", "optim", "offload_activations" }) do
        cfg[k] = fit[k]
    end
    print(("auto_fit: batch_size=%d grad_accum=%d gradient_checkpointing=%s optim=%s offload_activations=%s "
        .. "(planned peak %s of a %s budget)"):format(cfg.batch_size, cfg.grad_accum, tostring(cfg.gradient_checkpointing),
        cfg.optim, tostring(cfg.offload_activations), lt.memory.format_bytes(plan.peak.train),
        lt.memory.format_bytes(limit)))
end

-- preview=N (or --preview N): N training samples as the template renders them, the
-- trained tokens between « and », then stop, before any weight is loaded
if cfg.preview > 0 then
    local ptok = lt.tokenizer.load(cfg.model)
    local ptemplate = cfg.template == "auto" and lt.data.templates.from_model(cfg.model, ptok) or cfg.template
    local pds = lt.data.build(cfg.dataset:match("^[^,]+"):gsub(":[%d.eE+-]+$", ""), ptok, { template = ptemplate, train_on = cfg.train_on,
        max_len = cfg.seq_len, long_samples = cfg.long_samples })
    print(("preview: %d of %d samples of %s, template %s, trained on %s (trained tokens between « and »)"):format(
        math.min(cfg.preview, pds.n), pds.n, cfg.dataset, cfg.template, cfg.train_on))
    for i = 1, math.min(cfg.preview, pds.n) do
        local text, n = pds:render(i, ptok)
        print(("\n--- sample %d (%d tokens)\n%s"):format(i, n, text))
    end
    return
end

-- the job's processes (one without mpirun): rank 0 prints and writes
if cfg.memory_limit ~= "" then lt.memory.set_limit(cfg.device, cfg.memory_limit) end
-- device=cuda: gradients are reduced by NCCL on the GPU of this rank's local rank
local pg = lt.dist.init({ device = tostring(cfg.device):match("^cuda") and "cuda" or "cpu" })
local main = pg:is_main()
local function say(...) if main then print(...) end end

lt.set_num_threads(cfg.threads)
lt.manual_seed(cfg.seed)
local wall = lt.fs.now
local t_start = wall()
local mb = lt.memory.format_bytes

-- ---- the base, quantized while it loads ----------------------------------------------------
lt.memory.reset_peak("cpu")
-- the precision policy (lt.amp): compute, matmul and storage dtypes for this device
local policy = lt.amp.policy(cfg.precision, cfg.device)
local quant = cfg.quant ~= "none" and { type = cfg.quant, blocksize = cfg.blocksize, double_quant = cfg.double_quant } or nil
-- shard_base: each rank keeps 1/world of the base, cut layer by layer as it loads
if cfg.shard_base and pg.world > 1 then
    need(quant ~= nil, "shard_base=true needs a quantized base (quant=nf4, fp4 or int8)")
end
local sharded = cfg.shard_base and pg.world > 1
local model = lt.llama.from_pretrained(cfg.model, { quant = quant, dtype = quant and "bf16" or policy.frozen,
    shard = sharded and pg or nil })
local load_peak = lt.memory.stats("cpu").peak
local tok = lt.tokenizer.load(cfg.model)
local c = model.config

local n_total, n_quant_bytes, n_plain_bytes = 0, 0, 0
for _, e in ipairs(model.quant_layers and model:quant_layers() or {}) do
    n_total = n_total + e[2].in_features * e[2].out_features
    if not sharded then n_quant_bytes = n_quant_bytes + e[2].qweight:nbytes() end
end
-- a sharded base: the whole base's bytes (each rank holds 1/world of them and two layers)
if sharded then n_quant_bytes = model.model._sharded_base.bytes.unsharded end
for _, r in ipairs(model:named_parameters()) do
    n_total = n_total + r.param:numel()
    n_plain_bytes = n_plain_bytes + r.param:nbytes()
end

if cfg.offload_activations and not cfg.gradient_checkpointing then
    error(lt.config.usage_error("offload_activations=true needs gradient_checkpointing=true (it offloads the checkpointed inputs)"), 0)
end
if cfg.gradient_checkpointing then model:gradient_checkpointing(true, { offload = cfg.offload_activations }) end

-- ---- adapters -----------------------------------------------------------------------------
local target = cfg.target
if target ~= "all-linear" and target:find(",") then
    local list = {}
    for t in target:gmatch("[^,%s]+") do list[#list + 1] = t end
    target = list
elseif target:match("^[%w_]+$") and target ~= "all-linear" then
    target = { target }
end
local whole = nil
for name in cfg.modules_to_save:gmatch("[^,%s]+") do
    whole = whole or {}
    whole[#whole + 1] = name
end
local adapted = lt.lora.apply(model, { r = cfg.r, alpha = cfg.alpha, dropout = cfg.dropout,
    target = target, rslora = cfg.rslora, dora = cfg.dora, init = cfg.init, modules_to_save = whole })
model:to(cfg.device)
lt.amp.apply(model, policy)
-- vocab_parallel: each rank keeps its rows of the vocabulary matrices
local vocab_split = cfg.vocab_parallel and pg.world > 1
if vocab_split then require("luatrain.dist.vocab_parallel").new(model, pg) end
-- ranks that compute together (a sharded base, a split vocabulary, ZeRO-3's gathered layers)
-- run every forward
local together = sharded or vocab_split or cfg.zero == 3
-- shard_base: every rank runs every forward the others run (the layers gather across
-- them), so evaluation and the sample answers run on every rank, rank 0 alone printing
-- fp16's narrow range: the backward runs on a scaled loss (lt.amp.GradScaler)
local loss_scale = policy.loss_scale
local n_train = model:num_parameters(true)
local train_sizes = {}
for _, r in ipairs(model:parameters()) do train_sizes[#train_sizes + 1] = r.param:numel() end
local opt_bytes = lt.optim.plan_state_bytes(cfg.optim, train_sizes)

say(("qlora_llama: %s on %s"):format(cfg.model, cfg.device))
say(("  %s; %d decoder layers, hidden %d, vocabulary %d"):format(model:extra_repr(), c.num_hidden_layers,
    c.hidden_size, c.vocab_size))
say(("  parameters: %.2fM, trainable %.3fM (%.2f%%) in %d LoRA layers (r=%d, alpha=%g%s%s)"):format(
    n_total / 1e6, n_train / 1e6, 100 * n_train / n_total, #adapted, cfg.r, cfg.alpha,
    cfg.rslora and ", rsLoRA" or "", cfg.dora and ", DoRA" or ""))
say(("  weights: base %s as f32 -> %s %s (%.3f bits/weight) + %s unquantized; adapters and gradients %s, "
    .. "%s state %s; loading peaked at %s"):format(
    mb(4 * n_total), mb(n_quant_bytes + n_plain_bytes), quant and cfg.quant or "f32",
    n_quant_bytes > 0 and 8 * n_quant_bytes / (n_total - n_plain_bytes / 2) or 32,
    mb(n_plain_bytes), mb(8 * n_train), cfg.optim, mb(opt_bytes), mb(load_peak)))
-- what the training step will hold (lt.plan; `luatrain plan` prints the same without training)
if main then
    local st = lt.config.values(cfg)
    st.world, st.rank = pg.world, pg.rank
    local ok, plan = pcall(lt.plan.from_settings, st)
    if ok then
        say("  memory plan, at the training step's peak (the log's peak_bytes):")
        say(lt.plan.format(plan))
    else
        say(("  memory plan: none (%s)"):format(tostring(plan)))
    end
end

-- ---- data ----------------------------------------------------------------------------------
-- template=auto: the model folder's own Jinja chat template
local template = cfg.template == "auto" and lt.data.templates.from_model(cfg.model, tok) or cfg.template
local data_opts = { template = template, train_on = cfg.train_on, max_len = cfg.seq_len,
    long_samples = cfg.long_samples }
local train_path, eval_path = sources[1].path, cfg.eval_dataset
-- no eval_dataset: every k-th record of the dataset is held out, read in place (errors name
-- the dataset's own lines)
local train_split, eval_split
if eval_path == "" then
    local every = math.max(2, math.floor(1 / math.max(cfg.eval_split, 1e-6) + 0.5))
    eval_path = train_path
    train_split, eval_split = { every = every, part = "train" }, { every = every, part = "eval" }
end
-- several ranks: rank 0 tokenizes into a cache the others then map
if pg.world > 1 then data_opts.cache_dir = cfg.output_dir .. "/.token_cache" end
local function build(path, split)
    local o = {}
    for k, v in pairs(data_opts) do o[k] = v end
    o.split = split
    -- a cache per part when both come from one file
    if o.cache_dir and split then o.cache_dir = o.cache_dir .. "/" .. split.part end
    if pg.world == 1 then return lt.data.build(path, tok, o) end
    local ds
    if main then ds = lt.data.load(path, tok, o) end
    pg:barrier()
    return ds or lt.data.load(path, tok, o)
end
local train_ds
if #sources == 1 then
    train_ds = build(train_path, train_split)
else
    local parts = {}
    for i, src in ipairs(sources) do parts[i] = { ds = build(src.path), weight = src.weight, name = src.path } end
    train_ds = lt.data.mix(parts, cfg.seed)
    train_ds.meta.truncated, train_ds.meta.too_long = 0, 0
    for _, p in ipairs(parts) do
        train_ds.meta.truncated = train_ds.meta.truncated + (p.ds.meta.truncated or 0)
        train_ds.meta.too_long = train_ds.meta.too_long + (p.ds.meta.too_long or 0)
    end
end
local eval_ds = build(eval_path, eval_split)
say(("  data: %d training samples (%d tokens), %d held out; template %s, trained on %s"):format(
    train_ds.n, train_ds.total, eval_ds.n, cfg.template, cfg.train_on))
if train_ds.meta.parts then
    for _, p in ipairs(train_ds.meta.parts) do
        say(("    %s: %d of %d samples (%.0f%% of the mixture)"):format(p.name, p.samples, p.of, 100 * p.share))
    end
end
-- what long_samples did to samples longer than seq_len
local long_t = (train_ds.meta.truncated or 0) + (eval_ds.meta.truncated or 0)
local long_d = (train_ds.meta.too_long or 0) + (eval_ds.meta.too_long or 0)
say(("  long samples (over seq_len=%d): %d truncated, %d dropped (long_samples=%s)"):format(cfg.seq_len, long_t,
    long_d, cfg.long_samples))

-- ---- evaluation -------------------------------------------------------------------------------
local questions = lt.trainer.questions(eval_path, template, cfg.eval_samples, { split = eval_split })
local gen_opts = { max_new_tokens = cfg.max_new_tokens, stop_ids = { lt.data.templates.end_of_turn(template, tok) } }
local eval_opts = { batch_size = cfg.batch_size, seq_len = cfg.seq_len, pad_id = tok.pad_id or tok.eos_id or 0,
    group = not together and pg or nil }
local function show(when, q)
    if not q or not (main or together) then return end
    local out = main and io.write or function() end
    out(("\n%s training, %q\n  -> "):format(when, q.question))
    lt.trainer.answer(model, tok, q, { max_new_tokens = cfg.max_new_tokens, stop_ids = gen_opts.stop_ids,
        on_text = function(piece) out(piece) io.flush() end })
    out(("   (expected %q)\n"):format(q.answer))
end

-- the folder records the run: every setting, versions, commit, machine (run_config.json)
if main then lt.runinfo.write(cfg.output_dir, cfg, { recipe = arg and arg[0], command = arg and { unpack(arg) } }) end

-- TensorBoard (rank 0): the settings now, the trainer's records each step, answers beside
local tb = main and cfg.tensorboard and lt.tensorboard.open(cfg.output_dir .. "/tensorboard") or nil
if tb then
    local lines = { "| setting | value |", "|---|---|" }
    local names = {}
    for k in pairs(lt.config.values(cfg)) do names[#names + 1] = k end
    table.sort(names)
    for _, k in ipairs(names) do lines[#lines + 1] = ("| %s | %s |"):format(k, tostring(cfg[k])) end
    tb:text("settings", table.concat(lines, "\n"), 0)
end

show("before", questions[1])
-- generated answers are scored on rank 0 (the others go on to the held-out loss, shared out)
local acc_before, right_before = 0, 0
if main or together then acc_before, right_before = lt.trainer.accuracy(model, tok, questions, gen_opts) end
local loss_before = lt.trainer.eval_loss(model, eval_ds, eval_opts)
say(("held-out: loss %.4f, exact-match accuracy %.1f%% (%d/%d)\n"):format(loss_before, 100 * acc_before,
    right_before, #questions))
if tb then
    tb:scalar("eval/loss", loss_before, 0)
    tb:scalar("eval/accuracy", acc_before, 0)
end

-- ---- training --------------------------------------------------------------------------------
local bar = main and lt.log.progress("training")
local result = lt.trainer.finetune{
    model = model, train = train_ds, eval = eval_ds, batch_size = cfg.batch_size, seq_len = cfg.seq_len,
    grad_accum = cfg.grad_accum, lr = cfg.lr, weight_decay = cfg.weight_decay, schedule = cfg.schedule,
    lora_plus_ratio = cfg.lora_plus_ratio, detect_nonfinite = cfg.detect_nonfinite, optim = cfg.optim,
    offload = cfg.offload, offload_dir = cfg.offload_dir,
    loss_scale = loss_scale,
    warmup = cfg.warmup, steps = cfg.steps, epochs = cfg.epochs, grad_clip = cfg.grad_clip, seed = cfg.seed,
    pad_id = eval_opts.pad_id, eval_every = cfg.eval_every, zero = cfg.zero,
    -- a split vocabulary makes the ranks one model: each trains on the same batches (its own
    -- trainer, no data parallelism; the adapters' gradients come out the same on every rank)
    group = vocab_split and lt.dist.local_group() or nil,
    log = (main or not vocab_split) and cfg.output_dir .. "/log.jsonl" or nil,
    -- checkpoints in output_dir (every save_every steps, at the end and on Ctrl-C),
    -- resume=auto|folder; with a split vocabulary every rank runs a trainer of its own on the
    -- same adapters, and rank 0 alone saves (Ctrl-C then stops the job as it would anyway)
    checkpoint_dir = cfg.output_dir, keep_last = cfg.keep_last,
    save_every = (main or not vocab_split) and cfg.save_every or 0, save_final = main or not vocab_split,
    save_on_interrupt = not vocab_split,
    resume = cfg.resume ~= "" and cfg.resume or nil,
    tensorboard = tb,
    eval_shared = not together,
    on_step = function(rec, total)
        if not bar then return end
        bar:update(rec.step / total, ("step %d loss %.4f lr %.2e %.0f tok/s peak %s%s"):format(rec.step, rec.loss,
            rec.lr, rec.tokens_per_s, mb(rec.peak_bytes), rec.eval_loss and (" eval %.4f"):format(rec.eval_loss) or ""))
    end,
}
if bar then bar:finish(("%d steps, loss %.4f -> %.4f"):format(result.steps, result.first_loss, result.last_loss)) end

-- ---- after ------------------------------------------------------------------------------------
-- ZeRO-3: every layer whole again before the adapters are read (answers, saving)
if cfg.zero == 3 and result.optimizer.gather_params then result.optimizer:gather_params() end
show("after", questions[1])
local acc_after, right_after = 0, 0
if main or together then acc_after, right_after = lt.trainer.accuracy(model, tok, questions, gen_opts) end
-- sample answers after training for TensorBoard, generated where answers are (every rank
-- when the ranks generate together), written by rank 0
local samples
if cfg.tensorboard and (main or together) then
    samples = { "| question | answer | expected |", "|---|---|---|" }
    for i = 1, math.min(8, #questions) do
        local q = questions[i]
        samples[#samples + 1] = ("| %s | %s | %s |"):format(q.question, lt.trainer.answer(model, tok, q, gen_opts),
            q.answer)
    end
end
if tb then
    tb:scalar("eval/loss", result.eval_loss, result.steps)
    tb:scalar("eval/accuracy", acc_after, result.steps)
    tb:text("samples", table.concat(samples, "\n"), result.steps)
    tb:close()
end
if main then
    lt.lora.save(model, cfg.output_dir, { base_model_name_or_path = cfg.model })
    -- the tokenizer beside the adapter, and the run's end in its log
    lt.runinfo.copy_tokenizer(cfg.model, cfg.output_dir)
    local log = lt.log.open(cfg.output_dir .. "/log.jsonl", true)
    log:write({ event = "end", steps = result.steps, eval_loss = result.eval_loss, eval_loss_before = loss_before,
        accuracy = acc_after, accuracy_before = acc_before, train_time = result.train_time,
        time = lt.fs.wall_time() })
    log:close()
    -- the run on one page: loss, lr, grad norm, memory and throughput over steps
    lt.report.write_run_report(cfg.output_dir)
end
pg:barrier()

-- for `luatrain -i recipes/qlora_llama.lua`: the REPL's globals
lt.last_run = { model = model, tokenizer = tok, config = cfg, result = result, questions = questions,
    train_data = train_ds, eval_data = eval_ds }

say("\nsummary")
say(("  held-out loss       %.4f -> %.4f"):format(loss_before, result.eval_loss))
say(("  exact-match         %.1f%% -> %.1f%% (%d -> %d of %d)"):format(100 * acc_before, 100 * acc_after,
    right_before, right_after, #questions))
say(("  training            %d steps in %.1f s, %.0f tokens/s, peak memory %s"):format(result.steps,
    result.train_time, result.tokens_per_s, mb(result.peak_bytes)))
say(("  adapter             %s (PEFT: adapter_config.json, adapter_model.safetensors)"):format(cfg.output_dir))
say(("  report              %s/report.html, log.jsonl, tensorboard/"):format(cfg.output_dir))
say(("  total time          %.1f s"):format(wall() - t_start))
if pg.world > 1 then say(("  ranks               %d (zero=%d)"):format(pg.world, cfg.zero)) end
lt.dist.shutdown()
