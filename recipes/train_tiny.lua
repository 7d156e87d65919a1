--[[
train_tiny.lua - train a small Llama from scratch on the CPU.

    luatrain recipes/train_tiny.lua                       # stories15M shape, built-in text
    luatrain recipes/train_tiny.lua steps=50 text=README.md
    luatrain recipes/train_tiny.lua model=path/to/hf_folder out=runs/tiny
    luatrain recipes/train_tiny.lua dataset=chat.jsonl tokenizer=path/to/hf_folder template=llama3
    luatrain recipes/train_tiny.lua save_every=100 ...   then   resume=auto
    luatrain recipes/train_tiny.lua --help

The model has the shape of llama2.c's stories15M (vocab 32000, dim 288, 6 layers, 6 heads,
FFN 768, context 256) unless `model` names a Hugging Face folder to start from.

Data: with `dataset` (JSONL, optionally .gz) the records go through the tokenizer
pipeline: a chat template, completion-only labels, packing several samples into each
batch_size * seq_len row with attention kept inside each sample, shuffled per epoch
(lua/luatrain/data). The tokenizer is `tokenizer`, or the model folder's. Without a
dataset, `text` (or a built-in story corpus) is read as bytes (token ids 0..255) and each
step draws random windows of seq_len + 1 bytes.

Each step runs the fused forward/backward, clips the gradient norm inside the AdamW
update (optim=adamw_8bit: bitsandbytes' 8-bit moments), and follows a warm-up + cosine
learning rate. The run logs step, loss, lr, grad norm, tokens/s and peak memory to the
console and to <out>/log.jsonl, writes a checkpoint (model, optimizer, data position, RNG)
to <out>/checkpoint-<step> every `save_every` steps, keeping the `keep_last` newest, and
saves the model to <out>/model as a Hugging Face folder.
`resume` continues a run from a checkpoint on exactly the trajectory it would have followed.

Under mpirun it trains data-parallel (zero=0 DDP, zero=1/2 ZeRO): the ranks share the
batches, rank 0 prints and writes the log, checkpoints and the model; a checkpoint resumes
at any number of ranks (keep batch_size x ranks x grad_accum the same to continue the same
trajectory).
]]
local lt = require "luatrain"

local cfg = lt.config {
    model = { "", "Hugging Face folder to start from (empty: a new stories15M-shaped model)" },
    text = { "", "text file to train on, read as bytes (empty: a built-in story corpus)" },
    dataset = { "", "JSONL dataset (alpaca, messages, text or prompt/completion records); needs a tokenizer" },
    tokenizer = { "", "tokenizer.json or its folder (empty: the model folder's)" },
    template = { "none", "chat template for the dataset", choices = { "none", "llama2", "llama3", "chatml" } },
    train_on = { "completion", "train on completions only, or on every token", choices = { "completion", "all" } },
    packing = { true, "pack several samples into each row (padding-free)" },
    epochs = { 0, "stop after this many passes over the dataset (0: run the steps)", type = "int", min = 0 },
    cache_dir = { "", "cache the tokenized dataset here (empty: tokenize every run)" },
    save_every = { 0, "write a checkpoint to <out>/checkpoint-<step> every this many steps (0: never)", type = "int",
        min = 0 },
    keep_last = { 3, "keep this many newest checkpoints (0: all)", type = "int", min = 0 },
    resume = { "", "continue from a checkpoint folder, a run folder's newest, or auto: <out>'s newest (if any)" },
    steps = { 300, "optimizer steps", type = "int", min = 1 },
    batch_size = { 8, "sequences per step", type = "int", min = 1 },
    seq_len = { 256, "tokens per sequence", type = "int", min = 2 },
    lr = { 1e-3, "peak learning rate", above = 0 },
    min_lr_factor = { 0.1, "final learning rate as a fraction of the peak", min = 0, max = 1 },
    warmup = { 20, "linear warm-up steps", type = "int", min = 0 },
    schedule = { "cosine", "learning-rate schedule", choices = { "constant", "linear", "cosine" } },
    weight_decay = { 0.1, "decoupled weight decay on matrices (norms get none)", min = 0 },
    optim = { "adamw", "optimizer (Hugging Face's names): adamw (32-bit moments), paged_adamw (32-bit moments in host memory, "
        .. "paged in for the update), adamw_8bit (bitsandbytes' 8-bit "
        .. "blockwise moments for parameters of 4096+ elements), or paged_adamw_8bit (both)",
        choices = { "adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit" } },
    grad_clip = { 1.0, "clip the global gradient norm to this (0: off)", min = 0 },
    detect_nonfinite = { "step", "on a NaN/inf loss or gradient: name the step, or also the first parameter (slower)",
        choices = { "step", "parameter" } },
    seed = { 1337, "seed for weights and batches", type = "int" },
    threads = { 0, "CPU threads (0: one per CPU this process may run on)", type = "int" },
    device = { "cpu", "where training runs: cpu, cuda or cuda:N" },
    grad_accum = { 1, "micro-batches per optimizer step", type = "int", min = 1 },
    zero = { 0, "data parallelism under mpirun: 0 DDP, 1 or 2 ZeRO stages (optimizer state sharded)",
        type = "int", choices = { 0, 1, 2 } },
    memory_limit = { "", "a budget for the training device's memory, e.g. 6GiB (empty: none; LT_MEMORY_LIMIT "
        .. "sets one for every device): past it an allocation fails as on a full device" },
    precision = { "auto", "f32; bf16 (on a GPU: bf16 activations, f32 master weights; on the CPU: bf16 matmuls with "
        .. "f32 accumulation, through oneDNN); fp16 (f16 activations with dynamic loss scaling); auto: bf16 on "
        .. "a GPU, f32 on the CPU",
        choices = { "auto", "f32", "bf16", "fp16" } },
    log_every = { 10, "print a line every this many steps", type = "int", min = 1 },
    output_dir = { "runs/train_tiny", "output folder (log.jsonl, checkpoints, model/; out= too)" },
    save = { true, "save the trained model" },
    gradient_checkpointing = { false, "gradient checkpointing: re-run each layer's forward in backward to hold one layer's activations" },
    offload_activations = { false, "with gradient checkpointing: keep each layer's input in host memory, not on the "
        .. "device (bit-identical; less device memory for copies)" },
    -- stories15M shape; ignored when `model` is given
    vocab_size = { 32000, "vocabulary size of a new model", type = "int", min = 1 },
    dim = { 288, "hidden size of a new model", type = "int", min = 2 },
    n_layers = { 6, "decoder layers of a new model", type = "int", min = 1 },
    n_heads = { 6, "attention heads of a new model", type = "int", min = 1 },
    n_kv_heads = { 6, "key/value heads of a new model", type = "int", min = 1 },
    ffn_dim = { 768, "MLP width of a new model", type = "int", min = 1 },
}

if cfg.zero > 0 and cfg.optim ~= "adamw" then
    error(lt.config.usage_error(("zero=%d with optim=%s is not supported yet (ZeRO shards resident 32-bit AdamW "
        .. "state; use zero=0 or optim=adamw)"):format(cfg.zero, cfg.optim)), 0)
end

-- the job's processes (one without mpirun): rank 0 prints and writes
if cfg.memory_limit ~= "" then lt.memory.set_limit(cfg.device, cfg.memory_limit) end
-- device=cuda: gradients are reduced by NCCL on the GPU of this rank's local rank
local pg = lt.dist.init({ device = tostring(cfg.device):match("^cuda") and "cuda" or "cpu" })
local main = pg:is_main()
local function say(...) if main then print(...) end end

lt.set_num_threads(cfg.threads)
lt.manual_seed(cfg.seed)

-- ---- tokenizer and data --------------------------------------------------------------
local tok, ds, batches
if cfg.dataset ~= "" then
    local tpath = cfg.tokenizer ~= "" and cfg.tokenizer or cfg.model
    if tpath == "" then
        error("train_tiny: dataset= needs a tokenizer: give tokenizer= or model=", 0)
    end
    tok = lt.tokenizer.load(tpath)
    local data_opts = { template = cfg.template, train_on = cfg.train_on, max_len = cfg.seq_len,
        cache_dir = cfg.cache_dir ~= "" and cfg.cache_dir or nil }
    -- several ranks: rank 0 tokenizes into a cache the others then map
    if pg.world > 1 and not data_opts.cache_dir then data_opts.cache_dir = cfg.output_dir .. "/.token_cache" end
    if main then ds = lt.data.load(cfg.dataset, tok, data_opts) end
    pg:barrier()
    ds = ds or lt.data.load(cfg.dataset, tok, data_opts)
    batches = lt.data.loader(ds, { batch_size = cfg.batch_size, seq_len = cfg.seq_len,
        packing = cfg.packing, seed = cfg.seed, epochs = cfg.epochs > 0 and cfg.epochs or nil,
        pad_id = tok.pad_id or tok.eos_id or 0, rank = pg.rank, world = pg.world })
end

-- ---- model -------------------------------------------------------------------------------
local model
if cfg.model ~= "" then
    model = lt.llama.from_pretrained(cfg.model)
else
    model = lt.llama.new({
        vocab_size = tok and tok.vocab_size or cfg.vocab_size, hidden_size = cfg.dim,
        intermediate_size = cfg.ffn_dim, num_hidden_layers = cfg.n_layers,
        num_attention_heads = cfg.n_heads, num_key_value_heads = cfg.n_kv_heads,
        max_position_embeddings = cfg.seq_len, rms_norm_eps = 1e-5, tie_word_embeddings = true,
    })
end
if cfg.offload_activations and not cfg.gradient_checkpointing then
    error(lt.config.usage_error("offload_activations=true needs gradient_checkpointing=true (it offloads the checkpointed inputs)"), 0)
end
if cfg.gradient_checkpointing then model:gradient_checkpointing(true, { offload = cfg.offload_activations }) end
model:to(cfg.device)
-- the precision policy (lt.amp): compute and matmul dtypes, and fp16's loss scaling
local policy = lt.amp.apply(model, lt.amp.policy(cfg.precision, cfg.device))
local loss_scale = policy.loss_scale
if tok and tok.vocab_size > model.config.vocab_size then
    error(("train_tiny: the tokenizer has %d tokens but the model's vocabulary is %d"):format(
        tok.vocab_size, model.config.vocab_size), 0)
end

local text
if not ds then
    if model.config.vocab_size < 256 then
        error(("train_tiny: byte-level text needs a vocabulary of at least 256, the model has %d"):format(
            model.config.vocab_size), 0)
    end
    text = cfg.text ~= "" and lt.data.read_file(cfg.text) or lt.data.tiny_stories(4000, cfg.seed)
    batches = lt.data.windows(lt.data.byte_stream(text), cfg.batch_size, cfg.seq_len, cfg.seed,
        { rank = pg.rank, world = pg.world })
end

-- ---- optimizer: weight decay on matrices only ------------------------------------------
local trainer_first = 1
local decay, no_decay = {}, {}
for _, r in ipairs(model:parameters()) do
    if r.param:dim() >= 2 then decay[#decay + 1] = r else no_decay[#no_decay + 1] = r end
end
local make_optimizer = cfg.optim:match("adamw_8bit$") and lt.optim.AdamW8bit or lt.optim.AdamW
local opt = make_optimizer({
    { params = decay, weight_decay = cfg.weight_decay },
    { params = no_decay, weight_decay = 0 },
}, { lr = cfg.lr, betas = { 0.9, 0.95 }, eps = 1e-8, paged = cfg.optim:match("^paged_") ~= nil })

local n_params = model:num_parameters()
say(("train_tiny: %s"):format(model:extra_repr()))
if ds then
    say(("  %.2fM parameters, %d threads, %s: %d samples, %d tokens (%d trained per epoch), %s template, batch %d x %d%s"):format(
        n_params / 1e6, lt.get_num_threads(), cfg.dataset, ds.n, ds.total, ds.total, cfg.template,
        cfg.batch_size, cfg.seq_len, cfg.packing and " packed" or ""))
    if (ds.meta.bad_lines or 0) > 0 then say(("  %d bad lines skipped"):format(ds.meta.bad_lines)) end
else
    say(("  %.2fM parameters, %d threads, %d bytes of text, batch %d x %d"):format(n_params / 1e6,
        lt.get_num_threads(), #text, cfg.batch_size, cfg.seq_len))
end

-- the folder records the run (run_config.json: settings, versions, commit, machine)
if main and cfg.output_dir ~= "" then lt.runinfo.write(cfg.output_dir, cfg, { recipe = arg and arg[0], command = arg and { unpack(arg) } }) end

-- ---- training: the trainer's stages (lua/luatrain/trainer.lua) with this optimizer ------
local wall = lt.fs.now
local t_start = wall()
local trainer = lt.trainer.new{
    model = model, train = batches, optimizer = opt, steps = cfg.steps, schedule = cfg.schedule,
    warmup = cfg.warmup, min_lr_factor = cfg.min_lr_factor, grad_clip = cfg.grad_clip,
    detect_nonfinite = cfg.detect_nonfinite, grad_accum = cfg.grad_accum, zero = cfg.zero, loss_scale = loss_scale,
    log = cfg.output_dir ~= "" and (cfg.output_dir .. "/log.jsonl") or nil,
    checkpoint_dir = cfg.output_dir ~= "" and cfg.output_dir or nil, save_every = cfg.save_every, keep_last = cfg.keep_last,
    resume = cfg.resume ~= "" and cfg.resume or nil,
    on_step = function(rec, total)
        if rec.step == trainer_first or rec.step % cfg.log_every == 0 or rec.step == total then
            say(lt.log.line({ { "step", rec.step, "%5d" }, { "loss", rec.loss, "%.4f" }, { "lr", rec.lr, "%.2e" },
                { "grad norm", rec.grad_norm or 0, "%.3f" }, { "tok/s", rec.tokens_per_s, "%.0f" },
                { "peak", lt.memory.format_bytes(rec.peak_bytes), "%s" } }))
        end
    end,
}
trainer_first = trainer.first_step
if trainer.resumed_from then say(("resumed from %s at step %d"):format(trainer.resumed_from, trainer.first_step - 1)) end
local result = trainer:run()
if ds and result.steps < cfg.steps then
    say(("the dataset's %d epochs are done at step %d"):format(cfg.epochs, result.steps))
end
if result.steps >= result.first_step then
    say(("done: loss %.4f -> %.4f in %.1f s (%.0f tokens/s), peak memory %s"):format(result.first_loss,
        result.last_loss, wall() - t_start, result.tokens_per_s, lt.memory.format_bytes(result.peak_bytes)))
end

if cfg.output_dir ~= "" and main and result.steps >= result.first_step then
    lt.report.write_run_report(cfg.output_dir)
    say(("report: %s/report.html"):format(cfg.output_dir))
end
if cfg.save and cfg.output_dir ~= "" and main then
    lt.llama.save_pretrained(model, cfg.output_dir .. "/model")
    say("saved " .. cfg.output_dir .. "/model")
end
-- for `luatrain -i recipes/train_tiny.lua`: the REPL's globals
lt.last_run = { model = model, config = cfg, result = result, optimizer = opt }
lt.dist.shutdown()
