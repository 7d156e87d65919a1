--[[
attention_memory.lua - a training step's peak memory against the sequence length, to show
that attention adds no T x T term (src/ops/attention.c keeps per-thread tiles only;
cuda/attention.cu tiles in shared memory).

    luatrain tools/bench/attention_memory.lua [seqs=1024,2048,4096,8192 layers=2 out=FILE]
        [device=cuda]   (on the GPU: bf16 activations, f32 master weights, device memory)

For each length T a fresh small Llama (hidden 256, 4 heads of 64, 2 key/value heads, vocab
1000) trains `steps` AdamW steps on one random sequence of T tokens. The allocator's peak
(tensor storage and kernel scratch, lt.memory) over those steps, above what was held before
the model was built, is the step's peak memory. A line peak = a + b * T is fitted through
the first two lengths and extrapolated to the others: a measured/predicted ratio near 1
at 4 and 8 times the first length means no quadratic term. For contrast the table gives the
size one T x T f32 score matrix per head would have.

Also timed at each length (never asserted): the attention kernel's forward + backward at
the model's shape (one layer, causal, best of 3), the scratch the kernel allocates beyond
its inputs and outputs, and the training step.
]]
local lt = require "luatrain"
package.path = "tools/bench/?.lua;" .. package.path
local bench = require "benchutil"
local F = lt.nn.functional

local cfg = lt.config {
    seqs = { "1024,2048,4096,8192", "sequence lengths; the first two fit the line" },
    layers = { 2, "decoder layers", type = "int" },
    steps = { 2, "training steps per length", type = "int" },
    threads = { 0, "CPU threads (0: all cores)", type = "int" },
    out = { "", "also write the report to this file" },
    device = { "cpu", "where the model trains: cpu, or cuda (bf16 compute, f32 master weights)" },
}

lt.set_num_threads(cfg.threads)
-- every allocation is counted on the device that trains
local dev = cfg.device
local on_gpu = dev ~= "cpu"
local function sync() if on_gpu then lt.cuda.synchronize() end end
local act = on_gpu and "bf16" or "f32"
local function rnd(...) return lt.randn({ ... }, { device = dev }):to(act) end
local function emp(...) return lt.empty({ ... }, { device = dev, dtype = act }) end
local now = lt.fs.now
local mem = lt.memory
local MiB = 1024 * 1024

local lines = {}
local function say(fmt, ...)
    local s = select("#", ...) > 0 and fmt:format(...) or fmt
    print(s)
    lines[#lines + 1] = s
end

local seqs = {}
for s in cfg.seqs:gmatch("%d+") do seqs[#seqs + 1] = tonumber(s) end
assert(#seqs >= 2, "give at least two lengths")
local maxT = math.max(unpack(seqs))

local model_cfg = { vocab_size = 1000, hidden_size = 256, intermediate_size = 688,
    num_hidden_layers = cfg.layers, num_attention_heads = 4, num_key_value_heads = 2,
    max_position_embeddings = maxT, rms_norm_eps = 1e-5, tie_word_embeddings = false }
local H, Hkv, D = 4, 2, 64

-- The attention kernel alone at (1, T, H, D): best forward + backward time, and the peak
-- allocation beyond the preallocated inputs and outputs (the kernel's scratch).
local function attention_alone(T)
    local q, k, v = rnd(1, T, H, D), rnd(1, T, Hkv, D), rnd(1, T, Hkv, D)
    local dout, out, lse = rnd(1, T, H, D), emp(1, T, H, D), lt.empty({ 1, H, T }, { device = dev })
    local dq, dk, dv = emp(1, T, H, D), emp(1, T, Hkv, D), emp(1, T, Hkv, D)
    local best, scratch = math.huge, 0
    for _ = 1, 3 do
        mem.reset_peak(dev)
        local before = mem.stats(dev).current
        sync()
        local t0 = now()
        F.flash_attention(q, k, v, { out = out, lse = lse })
        F.flash_attention_backward(dout, q, k, v, out, lse, { dq = dq, dk = dk, dv = dv })
        sync()
        best = math.min(best, now() - t0)
        scratch = math.max(scratch, mem.stats(dev).peak - before)
    end
    for _, t in ipairs({ q, k, v, dout, out, lse, dq, dk, dv }) do t:free() end
    return best, scratch
end

local function run(T)
    lt.memory.collect()
    local held = mem.stats(dev).current
    lt.manual_seed(0)
    local model = lt.llama.new(model_cfg, on_gpu and { device = dev } or nil)
    if on_gpu then model:set_compute_dtype("bf16") end
    local opt = lt.optim.AdamW(model:parameters(), { lr = 1e-4 })
    local ids = lt.randint(0, model_cfg.vocab_size, { 1, T }, { device = dev })
    local targets = lt.randint(0, model_cfg.vocab_size, { 1, T }, { device = dev })
    mem.reset_peak(dev)
    local step_best = math.huge
    for _ = 1, cfg.steps do
        local t0 = now()
        opt:zero_grad()
        model:forward_backward(ids, targets)
        opt:step()
        sync()
        step_best = math.min(step_best, now() - t0)
    end
    local peak = mem.stats(dev).peak - held
    local paths = table.concat(model:attention_paths(), ",")
    -- dropped so the collector frees the model before the kernel is measured alone
    model, opt, ids, targets = nil, nil, nil, nil -- luacheck: ignore 311
    lt.memory.collect()
    local attn, scratch = attention_alone(T)
    return { T = T, peak = peak, step = step_best, attn = attn, scratch = scratch, paths = paths }
end

say("# luatrain tools/bench/attention_memory.lua (seqs=%s, layers=%d, steps=%d), %s",
    cfg.seqs, cfg.layers, cfg.steps, os.date("!%Y-%m-%dT%H:%MZ"))
say("# machine: %s; %d threads; commit %s", bench.cpu_description(), lt.get_num_threads(), bench.commit())
if on_gpu then
    local info = lt.cuda.device_info()
    say("# device: %s (%.0f GiB); bf16 activations, f32 master weights", info.name, info.total_bytes / 2 ^ 30)
end
say("# model: Llama, hidden 256, %d layers, %d heads of %d, %d kv heads, vocab 1000, batch 1, AdamW",
    cfg.layers, H, D, Hkv)
say("# peak: lt.memory peak over the steps above what was held before the model was built")

local rows = {}
for i, T in ipairs(seqs) do rows[i] = run(T) end
local b = (rows[2].peak - rows[1].peak) / (rows[2].T - rows[1].T)
local a = rows[1].peak - b * rows[1].T
say("")
say("fit through T = %d and %d: peak = %.1f MiB + %.1f KiB * T", rows[1].T, rows[2].T, a / MiB, b / 1024)
say("")
say("%6s %12s %12s %9s %16s %18s %14s %10s", "T", "peak MiB", "line MiB", "meas/line",
    "TxT f32 / head", "attn fwd+bwd ms", "attn scratch", "step ms")
for _, r in ipairs(rows) do
    local fit = a + b * r.T
    say("%6d %12.1f %12.1f %9.3f %12.1f MiB %18.1f %10.1f KiB %10.0f", r.T, r.peak / MiB, fit / MiB,
        r.peak / fit, r.T * r.T * 4 / MiB, r.attn * 1e3, r.scratch / 1024, r.step * 1e3)
end
say("")
say("attention path: %s. 'attn fwd+bwd' is one layer's kernel alone at (1, T, %d/%d, %d), causal, best of 3;",
    rows[1].paths, H, Hkv, D)
say("'attn scratch' is what that call allocated beyond its inputs and outputs. Times are not asserted.")
local last = rows[#rows]
say("At T = %d the %d score matrices of one layer would hold %.0f MiB in f32; the step's whole peak is %.0f MiB.",
    last.T, H, H * last.T * last.T * 4 / MiB, last.peak / MiB)
if cfg.out ~= "" then lt.fs.write_atomic(cfg.out, table.concat(lines, "\n") .. "\n") end
