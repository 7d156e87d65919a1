--[[
train_tiny.lua - train a small Llama from scratch on the CPU.

    luatrain recipes/train_tiny.lua                       # stories15M shape, built-in text
    luatrain recipes/train_tiny.lua steps=50 text=README.md
    luatrain recipes/train_tiny.lua model=path/to/hf_folder out=runs/tiny
    luatrain recipes/train_tiny.lua dataset=chat.jsonl tokenizer=path/to/hf_folder template=llama3
    luatrain recipes/train_tiny.lua save_every=100 ...   then   resume=runs/train_tiny/checkpoint
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
update, and follows a warm-up + cosine learning rate. The run logs step, loss, lr, grad
norm, tokens/s and peak memory to the console and to <out>/log.jsonl, writes a checkpoint
(model, optimizer, data position, RNG) every `save_every` steps, and saves the model to
<out>/model as a Hugging Face folder. `resume` continues a run from its checkpoint on
exactly the trajectory it would have followed.
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
    epochs = { 0, "stop after this many passes over the dataset (0: run the steps)", type = "int" },
    cache_dir = { "", "cache the tokenized dataset here (empty: tokenize every run)" },
    save_every = { 0, "write a checkpoint to <out>/checkpoint every this many steps (0: never)", type = "int" },
    resume = { "", "continue from this checkpoint folder" },
    steps = { 300, "optimizer steps", type = "int" },
    batch_size = { 8, "sequences per step", type = "int" },
    seq_len = { 256, "tokens per sequence", type = "int" },
    lr = { 1e-3, "peak learning rate" },
    min_lr_factor = { 0.1, "final learning rate as a fraction of the peak" },
    warmup = { 20, "linear warm-up steps", type = "int" },
    schedule = { "cosine", "learning-rate schedule", choices = { "constant", "linear", "cosine" } },
    weight_decay = { 0.1, "decoupled weight decay on matrices (norms get none)" },
    grad_clip = { 1.0, "clip the global gradient norm to this (0: off)" },
    seed = { 1337, "seed for weights and batches", type = "int" },
    threads = { 0, "CPU threads (0: one per CPU this process may run on)", type = "int" },
    device = { "cpu", "where training runs: cpu, cuda or cuda:N" },
    precision = { "auto", "activations' dtype: f32, or bf16 with f32 master weights (CUDA only); auto: bf16 on a GPU, f32 on the CPU",
        choices = { "auto", "f32", "bf16" } },
    log_every = { 10, "print a line every this many steps", type = "int" },
    out = { "runs/train_tiny", "output folder (log.jsonl, model/)" },
    save = { true, "save the trained model" },
    gradient_checkpointing = { false, "gradient checkpointing: re-run each layer's forward in backward to hold one layer's activations" },
    -- stories15M shape; ignored when `model` is given
    vocab_size = { 32000, "vocabulary size of a new model", type = "int" },
    dim = { 288, "hidden size of a new model", type = "int" },
    n_layers = { 6, "decoder layers of a new model", type = "int" },
    n_heads = { 6, "attention heads of a new model", type = "int" },
    n_kv_heads = { 6, "key/value heads of a new model", type = "int" },
    ffn_dim = { 768, "MLP width of a new model", type = "int" },
}

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
    ds = lt.data.load(cfg.dataset, tok, { template = cfg.template, train_on = cfg.train_on,
        max_len = cfg.seq_len, cache_dir = cfg.cache_dir ~= "" and cfg.cache_dir or nil })
    batches = lt.data.loader(ds, { batch_size = cfg.batch_size, seq_len = cfg.seq_len,
        packing = cfg.packing, seed = cfg.seed, epochs = cfg.epochs > 0 and cfg.epochs or nil,
        pad_id = tok.pad_id or tok.eos_id or 0 })
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
if cfg.gradient_checkpointing then model:gradient_checkpointing(true) end
model:to(cfg.device)
model:set_compute_dtype(cfg.precision ~= "auto" and cfg.precision or (cfg.device == "cpu" and "f32" or "bf16"))
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
    batches = lt.data.windows(lt.data.byte_stream(text), cfg.batch_size, cfg.seq_len, cfg.seed)
end

-- ---- optimizer: weight decay on matrices only ------------------------------------------
local decay, no_decay = {}, {}
for _, r in ipairs(model:parameters()) do
    if r.param:dim() >= 2 then decay[#decay + 1] = r else no_decay[#no_decay + 1] = r end
end
local opt = lt.optim.AdamW({
    { params = decay, weight_decay = cfg.weight_decay },
    { params = no_decay, weight_decay = 0 },
}, { lr = cfg.lr, betas = { 0.9, 0.95 }, eps = 1e-8 })
local lr_factor = lt.optim.schedule(cfg.schedule, { warmup_steps = cfg.warmup,
    total_steps = cfg.steps, min_factor = cfg.min_lr_factor })

local n_params = model:num_parameters()
print(("train_tiny: %s"):format(model:extra_repr()))
if ds then
    print(("  %.2fM parameters, %d threads, %s: %d samples, %d tokens (%d trained per epoch), %s template, batch %d x %d%s"):format(
        n_params / 1e6, lt.get_num_threads(), cfg.dataset, ds.n, ds.total, ds.total, cfg.template,
        cfg.batch_size, cfg.seq_len, cfg.packing and " packed" or ""))
    if (ds.meta.bad_lines or 0) > 0 then print(("  %d bad lines skipped"):format(ds.meta.bad_lines)) end
else
    print(("  %.2fM parameters, %d threads, %d bytes of text, batch %d x %d"):format(n_params / 1e6,
        lt.get_num_threads(), #text, cfg.batch_size, cfg.seq_len))
end

local first_step = 1
if cfg.resume ~= "" then
    local st = lt.checkpoint.load(cfg.resume, { model = model, optimizer = opt, loader = batches })
    first_step = st.step + 1
    print(("resumed from %s at step %d"):format(cfg.resume, st.step))
end

-- ---- training loop -----------------------------------------------------------------------
local log = lt.log.open(cfg.out ~= "" and (cfg.out .. "/log.jsonl") or nil, first_step > 1)
local wall = lt.fs.now
local t_start = wall()
local first_loss, last_loss, tokens_seen, steps_done = nil, nil, 0, 0
for step = first_step, cfg.steps do
    local t0 = wall()
    local ids, targets, opts
    if ds then
        local b = batches:next()
        if not b then
            print(("the dataset's %d epochs are done at step %d"):format(cfg.epochs, step - 1))
            break
        end
        ids, targets, opts = b.ids, b.targets, b
    else
        ids, targets = batches:next()
    end
    opt:set_lr_factor(lr_factor(step))
    opt:zero_grad()
    local loss = model:forward_backward(ids, targets, opts)
    local norm, coef = lt.optim.grad_norm_clip_coef(model:parameters(), cfg.grad_clip)
    opt:step({ grad_scale = coef })
    local dt = wall() - t0
    local mem = lt.memory.stats(model:device())
    first_loss = first_loss or loss
    last_loss = loss
    local ntok = ids:numel()
    tokens_seen = tokens_seen + ntok
    steps_done = steps_done + 1
    local rec = { step = step, loss = loss, lr = opt:get_lr(), grad_norm = norm,
        tokens_per_s = ntok / dt, step_ms = dt * 1000, peak_bytes = mem.peak,
        current_bytes = mem.current }
    log:write(rec)
    if step == first_step or step % cfg.log_every == 0 or step == cfg.steps then
        print(lt.log.line({ { "step", step, "%5d" }, { "loss", loss, "%.4f" }, { "lr", rec.lr, "%.2e" },
            { "grad norm", norm, "%.3f" }, { "tok/s", rec.tokens_per_s, "%.0f" },
            { "peak", lt.memory.format_bytes(mem.peak), "%s" } }))
    end
    if cfg.save_every > 0 and cfg.out ~= "" and step % cfg.save_every == 0 then
        lt.checkpoint.save(cfg.out .. "/checkpoint", { model = model, optimizer = opt,
            loader = batches, step = step })
    end
end
log:close()
local elapsed = wall() - t_start
if steps_done > 0 then
    print(("done: loss %.4f -> %.4f in %.1f s (%.0f tokens/s), peak memory %s"):format(first_loss,
        last_loss, elapsed, tokens_seen / elapsed, lt.memory.format_bytes(lt.memory.stats(model:device()).peak)))
end

if cfg.save and cfg.out ~= "" then
    lt.llama.save_pretrained(model, cfg.out .. "/model")
    print("saved " .. cfg.out .. "/model")
end
