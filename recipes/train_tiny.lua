--[[
train_tiny.lua - train a small Llama from scratch on the CPU.

    luatrain recipes/train_tiny.lua                       # stories15M shape, built-in text
    luatrain recipes/train_tiny.lua steps=50 text=README.md
    luatrain recipes/train_tiny.lua model=path/to/hf_folder out=runs/tiny
    luatrain recipes/train_tiny.lua --help

The model has the shape of llama2.c's stories15M (vocab 32000, dim 288, 6 layers, 6 heads,
FFN 768, context 256) unless `model` names a Hugging Face folder to start from. Text is
read as bytes (token ids 0..255) until the tokenizer pipeline replaces that. Each step
draws random windows of seq_len + 1 bytes, runs the fused forward/backward, clips the
gradient norm inside the AdamW update, and follows a warm-up + cosine learning rate.
The run logs step, loss, lr, grad norm, tokens/s and peak memory to the console and to
<out>/log.jsonl, and saves the model to <out>/model as a Hugging Face folder.
]]
local lt = require "luatrain"

local cfg = lt.config {
    model = { "", "Hugging Face folder to start from (empty: a new stories15M-shaped model)" },
    text = { "", "text file to train on, read as bytes (empty: a built-in story corpus)" },
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
    threads = { 0, "CPU threads (0: all cores)", type = "int" },
    log_every = { 10, "print a line every this many steps", type = "int" },
    out = { "runs/train_tiny", "output folder (log.jsonl, model/)" },
    save = { true, "save the trained model" },
    checkpoint = { false, "gradient checkpointing: re-run each layer's forward in backward to hold one layer's activations" },
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

-- ---- model -------------------------------------------------------------------------------
local model
if cfg.model ~= "" then
    model = lt.llama.from_pretrained(cfg.model)
else
    model = lt.llama.new({
        vocab_size = cfg.vocab_size, hidden_size = cfg.dim, intermediate_size = cfg.ffn_dim,
        num_hidden_layers = cfg.n_layers, num_attention_heads = cfg.n_heads,
        num_key_value_heads = cfg.n_kv_heads, max_position_embeddings = cfg.seq_len,
        rms_norm_eps = 1e-5, tie_word_embeddings = true,
    })
end
if cfg.checkpoint then model:gradient_checkpointing(true) end
if model.config.vocab_size < 256 then
    error(("train_tiny: byte-level text needs a vocabulary of at least 256, the model has %d"):format(
        model.config.vocab_size), 0)
end

-- ---- data --------------------------------------------------------------------------------
local text = cfg.text ~= "" and lt.data.read_file(cfg.text) or lt.data.tiny_stories(4000, cfg.seed)
local stream = lt.data.byte_stream(text)
local batches = lt.data.windows(stream, cfg.batch_size, cfg.seq_len, cfg.seed)

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
print(("  %.2fM parameters, %d threads, %d bytes of text, batch %d x %d"):format(n_params / 1e6,
    lt.get_num_threads(), #text, cfg.batch_size, cfg.seq_len))

-- ---- training loop -----------------------------------------------------------------------
local log = lt.log.open(cfg.out ~= "" and (cfg.out .. "/log.jsonl") or nil)
local tokens_per_step = cfg.batch_size * cfg.seq_len
local wall = require("luatrain.fs").now
local t_start = wall()
local first_loss, last_loss
for step = 1, cfg.steps do
    local t0 = wall()
    local ids, targets = batches:next()
    opt:set_lr_factor(lr_factor(step))
    opt:zero_grad()
    local loss = model:forward_backward(ids, targets)
    local norm, coef = lt.optim.grad_norm_clip_coef(model:parameters(), cfg.grad_clip)
    opt:step({ grad_scale = coef })
    local dt = wall() - t0
    local mem = lt.memory.stats("cpu")
    first_loss = first_loss or loss
    last_loss = loss
    local rec = { step = step, loss = loss, lr = opt:get_lr(), grad_norm = norm,
        tokens_per_s = tokens_per_step / dt, step_ms = dt * 1000, peak_bytes = mem.peak,
        current_bytes = mem.current }
    log:write(rec)
    if step == 1 or step % cfg.log_every == 0 or step == cfg.steps then
        print(lt.log.line({ { "step", step, "%5d" }, { "loss", loss, "%.4f" }, { "lr", rec.lr, "%.2e" },
            { "grad norm", norm, "%.3f" }, { "tok/s", rec.tokens_per_s, "%.0f" },
            { "peak", lt.memory.format_bytes(mem.peak), "%s" } }))
    end
end
log:close()
local elapsed = wall() - t_start
print(("done: loss %.4f -> %.4f in %.1f s (%.0f tokens/s), peak memory %s"):format(first_loss,
    last_loss, elapsed, tokens_per_step * cfg.steps / elapsed,
    lt.memory.format_bytes(lt.memory.stats("cpu").peak)))

if cfg.save and cfg.out ~= "" then
    lt.llama.save_pretrained(model, cfg.out .. "/model")
    print("saved " .. cfg.out .. "/model")
end
