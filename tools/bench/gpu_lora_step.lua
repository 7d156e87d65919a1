--[[
gpu_lora_step.lua - one LoRA (or QLoRA) training step of a Llama on the GPU, timed; the
luatrain side of tools/bench/gpu_lora_step.sh, whose peer is gpu_lora_step_torch.py.

    luatrain tools/bench/gpu_lora_step.lua shape=llama-3.2-1b [base=bf16|nf4] [steps=10]
        [batch=4] [seq=2048] [rank=16] [checkpointing=true] [json=out.json]

The same work as the peer: random weights of the named shape on the GPU (the base frozen in
bf16, or quantized to NF4 with double quantization for base=nf4), LoRA r=16 (alpha 32, no
dropout) on every linear layer but lm_head with f32 adapters, bf16 compute with f32
accumulation, AdamW on the adapters, batch x seq tokens of random ids packed as one
sequence per row, causal attention, gradient checkpointing as asked. The median of
`steps` steps after 3 warm-up steps (each step ends with the loss read back, so the host
clock sees finished work); peak memory is the device allocator's high-water mark over the
timed steps (what torch.cuda.max_memory_allocated reports). Prints one JSON line.
]]
local lt = require "luatrain"

local cfg = lt.config {
    shape = { "llama-3.2-1b", "model shape", choices = { "llama-3.2-1b", "llama-3-8b", "tiny" } },
    base = { "bf16", "frozen base format", choices = { "bf16", "nf4" } },
    steps = { 10, "timed steps", type = "int" },
    batch = { 4, "sequences per step", type = "int" },
    seq = { 2048, "tokens per sequence", type = "int" },
    rank = { 16, "LoRA rank", type = "int" },
    checkpointing = { true, "gradient checkpointing" },
    json = { "", "also write the JSON line here" },
}

local SHAPES = {
    ["llama-3.2-1b"] = { vocab_size = 128256, hidden_size = 2048, intermediate_size = 8192,
        num_hidden_layers = 16, num_attention_heads = 32, num_key_value_heads = 8,
        max_position_embeddings = 8192, rope_theta = 500000, tie_word_embeddings = true },
    ["llama-3-8b"] = { vocab_size = 128256, hidden_size = 4096, intermediate_size = 14336,
        num_hidden_layers = 32, num_attention_heads = 32, num_key_value_heads = 8,
        max_position_embeddings = 8192, rope_theta = 500000, tie_word_embeddings = false },
    -- for trying the script out
    tiny = { vocab_size = 1024, hidden_size = 256, intermediate_size = 688, num_hidden_layers = 2,
        num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 4096 },
}

if not lt.cuda.is_available() then
    io.stderr:write("gpu_lora_step: no CUDA device\n")
    os.exit(2)
end
local shape = SHAPES[cfg.shape]
local info = lt.cuda.device_info()

lt.manual_seed(0)
local model
if cfg.base == "nf4" then
    model = lt.llama.new(shape, { quant = { type = "nf4", blocksize = 64, double_quant = true },
        dtype = "bf16", device = "cuda" })
else
    model = lt.llama.new(shape, { dtype = "bf16", trainable = false, device = "cuda" })
end
local n_params = 0
for _, r in ipairs(model:named_parameters()) do n_params = n_params + r.param:numel() end
for _, e in ipairs(model:quant_layers()) do n_params = n_params + e[2].in_features * e[2].out_features end
if cfg.checkpointing then model:gradient_checkpointing(true) end
lt.lora.apply(model, { r = cfg.rank, alpha = 2 * cfg.rank, dropout = 0, target = "all-linear" })
model:to("cuda")
model:set_compute_dtype("bf16")
local trainable = model:num_parameters(true)
local opt = lt.optim.AdamW(model:parameters(), { lr = 1e-4 })

local ids = lt.randint(0, shape.vocab_size, cfg.batch, cfg.seq, { device = "cuda" })
local targets = lt.randint(0, shape.vocab_size, cfg.batch, cfg.seq, { device = "cuda" })

local function step()
    opt:zero_grad()
    local loss = model:forward_backward(ids, targets)
    opt:step()
    return loss
end

for _ = 1, 3 do step() end
lt.cuda.synchronize()
lt.cuda.reset_peak()
local times, losses = {}, {}
for i = 1, cfg.steps do
    local t0 = lt.fs.now()
    losses[i] = step() -- reads the loss back: the step's work is done when it returns
    times[i] = lt.fs.now() - t0
end
table.sort(times)
local t = times[math.floor((#times + 1) / 2)]
local tokens = cfg.batch * cfg.seq
-- model FLOPs per token, as the peer counts them: 4N plus causal attention 6*T*d per layer
local flops_per_token = 4 * n_params + 6 * shape.num_hidden_layers * cfg.seq * shape.hidden_size
local rec = {
    engine = "luatrain", base = cfg.base, shape = cfg.shape, device = info.name, batch = cfg.batch,
    seq = cfg.seq, rank = cfg.rank, checkpointing = cfg.checkpointing, params = n_params,
    trainable = trainable, step_s = t, tokens_per_s = tokens / t,
    peak_bytes = lt.cuda.memory_stats().peak, flops_per_token = flops_per_token,
    attention_paths = table.concat(model:attention_paths(), ","),
    loss_first = losses[1], loss_last = losses[#losses],
}
local line = lt.json.encode(rec)
print(line)
if cfg.json ~= "" then lt.fs.write_atomic(cfg.json, line .. "\n") end
