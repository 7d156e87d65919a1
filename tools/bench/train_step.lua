--[[
train_step.lua - time a full training step (forward, backward, clip, AdamW) of a
stories15M-shaped Llama in luatrain, and the machine's sgemm rate in the same process.

    luatrain tools/bench/train_step.lua [mode=full|lora|qlora batch=8 seq=256 steps=5 warmup=2 json=out.json]

mode=full trains every weight; mode=lora freezes the model and trains r=16 adapters (alpha
32) on every linear layer of the decoder (the tied head stays frozen); mode=qlora does the
same over a base quantized to NF4 with double quantization (blocks of 64).

Prints one line per timed step and a summary; with json=PATH also writes the summary as
JSON for tools/bench/cpu_train_step.sh. FLOPs counted per step: 6 * tokens * (matmul
parameters, LM head included) + 6 * B * H * T^2 * D per layer for causal attention (the
useful half of the score matrix). With adapters the frozen weights need no weight gradient:
4 * tokens * (frozen matmul parameters) + 6 * tokens * (adapter parameters) + attention.
]]
local lt = require "luatrain"

local cfg = lt.config {
    mode = { "full", "what trains", choices = { "full", "lora", "qlora" } },
    precision = { "f32", "matmul precision: f32, or bf16 (operands rounded to bf16, f32 accumulation, oneDNN); "
        .. "the ceiling is then the bf16 GEMM's rate", choices = { "f32", "bf16" } },
    batch = { 8, "sequences per step", type = "int" },
    seq = { 256, "tokens per sequence", type = "int" },
    steps = { 5, "timed steps", type = "int" },
    warmup = { 2, "untimed steps first", type = "int" },
    threads = { 0, "CPU threads (0: all cores)", type = "int" },
    sgemm_n = { 2048, "size of the square sgemm that measures the ceiling", type = "int" },
    json = { "", "write the summary to this file" },
    profile = { false, "time forward/backward/optimizer phases separately" },
}

if cfg.profile and cfg.mode ~= "full" then error(lt.config.usage_error("profile=true times mode=full only"), 0) end
lt.set_num_threads(cfg.threads)
lt.set_cpu_matmul_precision(cfg.precision)
lt.manual_seed(0)
local now = lt.fs.now

-- ---- sgemm ceiling -------------------------------------------------------------------------
local function sgemm_rate(n)
    local a, b, c = lt.randn(n, n), lt.randn(n, n), lt.empty(n, n)
    lt.ops.matmul(a, b, { out = c })
    local best = math.huge
    for _ = 1, 5 do
        local t0 = now()
        lt.ops.matmul(a, b, { out = c })
        best = math.min(best, now() - t0)
    end
    a:free() b:free() c:free()
    return 2 * n ^ 3 / best / 1e9
end

-- ---- model and data --------------------------------------------------------------------------
local model = lt.llama.new({ vocab_size = 32000, hidden_size = 288, intermediate_size = 768,
    num_hidden_layers = 6, num_attention_heads = 6, num_key_value_heads = 6,
    max_position_embeddings = cfg.seq, rms_norm_eps = 1e-5, tie_word_embeddings = true },
    { quant = cfg.mode == "qlora" and { type = "nf4", blocksize = 64, double_quant = true } or nil })
local adapter_params = 0
if cfg.mode ~= "full" then
    lt.lora.apply(model, { r = 16, alpha = 32, target = "all-linear" })
    adapter_params = model:num_parameters(true)
end
local c = model.config
local ids = lt.randint(0, c.vocab_size, { cfg.batch, cfg.seq })
local targets = lt.randint(0, c.vocab_size, { cfg.batch, cfg.seq })
local opt = lt.optim.AdamW(model:parameters(), { lr = 1e-4, betas = { 0.9, 0.95 }, weight_decay = 0.1 })

local tokens = cfg.batch * cfg.seq
local per_layer = c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads) +
    3 * c.hidden_size * c.intermediate_size
local matmul_params = c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size
local attn_flops = 6 * cfg.batch * c.num_attention_heads * cfg.seq ^ 2 * c.head_dim * c.num_hidden_layers
local flops = cfg.mode == "full" and 6 * tokens * matmul_params + attn_flops
    or 4 * tokens * matmul_params + 6 * tokens * adapter_params + attn_flops

local function step(prof)
    local t0 = now()
    opt:zero_grad()
    local loss
    if prof then
        local h = model.model:forward(ids)
        local t1 = now()
        local N = h:numel() / h:size(-1)
        local h2 = h:view(N, h:size(-1))
        local l, dh = lt.ops.linear_cross_entropy_fused(h2, model.lm_head.weight, targets:view(N), 1,
            { dw = model.lm_head:grad("weight") })
        local t2 = now()
        model.model:backward(ids, dh:view(h:shape()))
        local t3 = now()
        loss = l:item()
        prof.forward = (prof.forward or 0) + (t1 - t0)
        prof.head = (prof.head or 0) + (t2 - t1)
        prof.backward = (prof.backward or 0) + (t3 - t2)
        local _, coef = lt.optim.grad_norm_clip_coef(model:parameters(), 1.0)
        opt:step({ grad_scale = coef })
        prof.optimizer = (prof.optimizer or 0) + (now() - t3)
    else
        loss = model:forward_backward(ids, targets)
        local _, coef = lt.optim.grad_norm_clip_coef(model:parameters(), 1.0)
        opt:step({ grad_scale = coef })
    end
    return loss, now() - t0
end

local gemm = sgemm_rate(cfg.sgemm_n)
for _ = 1, cfg.warmup do step() end
local times, prof = {}, cfg.profile and {} or nil
for i = 1, cfg.steps do
    local loss, dt = step(prof)
    times[i] = dt
    print(("step %d: %.1f ms, loss %.4f"):format(i, dt * 1000, loss))
end
table.sort(times)
local median = times[math.floor((#times + 1) / 2)]
local gemm2 = sgemm_rate(cfg.sgemm_n)
gemm = math.max(gemm, gemm2)
local achieved = flops / median / 1e9
local summary = {
    impl = "luatrain", mode = cfg.mode, precision = cfg.precision, threads = lt.get_num_threads(), batch = cfg.batch, seq = cfg.seq,
    step_ms = median * 1000, tokens_per_s = tokens / median, gflop_per_step = flops / 1e9,
    gflops = achieved, sgemm_gflops = gemm, sgemm_fraction = achieved / gemm,
    peak_bytes = lt.memory.stats("cpu").peak,
}
print(("luatrain %s %s: %.0f tokens/s (median step %.1f ms), %.1f GFLOP/s = %.0f%% of the %s GEMM's %.1f GFLOP/s (n=%d), peak %s"):format(
    cfg.mode, cfg.precision, summary.tokens_per_s, summary.step_ms, achieved, 100 * summary.sgemm_fraction, cfg.precision,
    gemm, cfg.sgemm_n,
    lt.memory.format_bytes(summary.peak_bytes)))
if prof then
    local total = 0
    for _, v in pairs(prof) do total = total + v end
    for _, k in ipairs({ "forward", "head", "backward", "optimizer" }) do
        print(("  %-9s %6.1f ms  %4.1f%%"):format(k, prof[k] / cfg.steps * 1000, 100 * prof[k] / total))
    end
end
if cfg.json ~= "" then lt.fs.write_atomic(cfg.json, lt.json.encode(summary) .. "\n") end
