--[[
what_fits.lua - which Llama shapes fine-tune with QLoRA on which GPU, from the planner.

    luatrain tools/what_fits.lua [out=tools/bench/results/what_fits.md] [context_gib=0.5]

For each model (the shapes of its config.json, below) and each setting of LoRA rank (16, 64)
and sequence length (1024, 2048), with micro-batch 1, gradient checkpointing, an NF4 base with
double quantization, LoRA on every linear layer (dropout on) and bf16 compute, lt.plan gives
the training step's peak on the device, and the table says for 16, 24, 48 and 80 GB cards
whether it fits as it is (AdamW with resident moments), with paged_adamw (the moments in host
memory), with offload_activations, or with both. A card's room is its GiB less an estimate of
what the CUDA context and libraries hold (context_gib) and less cuBLASLt's 32 MiB workspace.

These numbers are plans: the CPU's plan equals the CPU's measured peak to the byte
(tests/lua/test_plan.lua), and the CUDA plan replays the same modules with the CUDA kernels'
scratch rules, but it has not been checked against a GPU's measured peak yet.
]]
local lt = require "luatrain"

local cfg = lt.config {
    out = { "tools/bench/results/what_fits.md", "where the table goes (empty: only print it)" },
    context_gib = { 0.5, "GiB the CUDA context, cuBLAS and the caching allocator's slack are taken to hold", min = 0 },
}

-- Hugging Face config.json shapes (hidden, intermediate, layers, heads, kv heads, vocabulary, tied)
local MODELS = {
    { "Llama 3.2 1B", 2048, 8192, 16, 32, 8, 128256, true },
    { "Llama 3.2 3B", 3072, 8192, 28, 24, 8, 128256, true },
    { "Llama 2 7B", 4096, 11008, 32, 32, 32, 32000, false },
    { "Llama 3.1 8B", 4096, 14336, 32, 32, 8, 128256, false },
    { "Llama 2 13B", 5120, 13824, 40, 40, 40, 32000, false },
    { "LLaMA 33B", 6656, 17920, 60, 52, 52, 32000, false },
    { "Code Llama 34B", 8192, 22016, 48, 64, 8, 32000, false },
    { "LLaMA 65B", 8192, 22016, 80, 64, 64, 32000, false },
    { "Llama 3.1 70B", 8192, 28672, 80, 64, 8, 128256, false },
}
local CARDS = { 16, 24, 48, 80 }
local SETTINGS = { { 16, 1024 }, { 16, 2048 }, { 64, 1024 }, { 64, 2048 } }
local OPTIONS = {
    { "fits", { optim = "adamw" } },
    { "paged", { optim = "paged_adamw" } },
    { "offload", { optim = "adamw", offload_activations = true } },
    { "paged+offload", { optim = "paged_adamw", offload_activations = true } },
}

local GiB = 2 ^ 30
-- The plan's device bytes (with cuBLASLt's workspace and the context taken), and the plan.
local function plan(m, r, T, extra)
    local o = { config = { hidden_size = m[2], intermediate_size = m[3], num_hidden_layers = m[4],
        num_attention_heads = m[5], num_key_value_heads = m[6], vocab_size = m[7], tie_word_embeddings = m[8],
        max_position_embeddings = 4096 }, quant = "nf4", double_quant = true, r = r, dropout = 0.05,
        batch_size = 1, seq_len = T, gradient_checkpointing = true, device = "cuda", precision = "bf16" }
    for k, v in pairs(extra) do o[k] = v end
    local p = lt.plan.train(o)
    return p.peak.train + p.outside_allocator + cfg.context_gib * GiB, p
end

local lines = {}
local function out(s) lines[#lines + 1] = s print(s) end
out("# What fits where: QLoRA (NF4 + double quantization), micro-batch 1, gradient checkpointing, bf16")
out("")
out(("Planned by `luatrain tools/what_fits.lua` (lt.plan, device=cuda). A cell gives the plan's device bytes "
    .. "with AdamW (the training step's peak + cuBLASLt's 32 MiB + %.1f GiB taken for the CUDA context) and, "
    .. "per card, what makes it fit: `fits` as it is, `paged` with optim=paged_adamw, `offload` with "
    .. "offload_activations=true, `paged+offload` with both, `-` not at all. Not yet checked against a GPU's "
    .. "measured peak."):format(cfg.context_gib))
out("")
local head = "| model | base (NF4 + DQ) | r | seq | planned GiB |"
local rule = "|---|---|---|---|---|"
for _, c in ipairs(CARDS) do
    head = head .. (" %d GB |"):format(c)
    rule = rule .. "---|"
end
out(head)
out(rule)
for _, m in ipairs(MODELS) do
    for _, st in ipairs(SETTINGS) do
        local r, T = st[1], st[2]
        local total, p = plan(m, r, T, {})
        local base = 0
        for _, row in ipairs(p.rows) do
            if row[1] == "quantized base" or row[1] == "weights (not quantized)" then base = base + row[2] end
        end
        local cells = {}
        for _, card in ipairs(CARDS) do
            local verdict = "-"
            for _, opt in ipairs(OPTIONS) do
                if plan(m, r, T, opt[2]) <= card * GiB then
                    verdict = opt[1]
                    break
                end
            end
            cells[#cells + 1] = verdict
        end
        out(("| %s | %.2f GiB | %d | %d | %.2f | %s |"):format(m[1], base / GiB, r, T, total / GiB,
            table.concat(cells, " | ")))
    end
end
out("")
out("## Across GPUs, and with the host's help")
out("")
out("Rank 0 of 2 GPUs with `shard_base=true` (each GPU keeps half of the 4-bit base and gathers a layer "
    .. "at a time, bit for bit) and `zero=1` (half of the optimizer state each), or as one model with "
    .. "`vocab_parallel=true` too (the embedding and head split by rows; no data parallelism); and one GPU with "
    .. "`optim=paged_adamw offload_activations=true`. Host: the paged optimizer state and offloaded layer "
    .. "inputs the process keeps in host memory (per process), beside the weights' file mappings.")
out("")
out("| model | r | seq | setup | per GPU GiB | host GiB | 16 GB | 24 GB | 48 GB |")
out("|---|---|---|---|---|---|---|---|---|")
local SETUPS = {
    { "2 GPUs, shard_base, zero=1", { world = 2, rank = 0, shard_base = true, zero = 1 } },
    { "2 GPUs as one model: shard_base, vocab_parallel", { world = 2, rank = 0, shard_base = true,
        vocab_parallel = true } },
    { "2 GPUs as one model, paged, offload", { world = 2, rank = 0, shard_base = true, vocab_parallel = true,
        optim = "paged_adamw", offload_activations = true } },
    { "2 GPUs, shard_base, zero=1, paged, offload", { world = 2, rank = 0, shard_base = true, zero = 1,
        optim = "paged_adamw", offload_activations = true } },
    { "1 GPU, paged, offload", { optim = "paged_adamw", offload_activations = true } },
}
for _, m in ipairs(MODELS) do
    if m[4] >= 48 then -- 33B and up: where the single cards run out
        for _, st in ipairs(SETTINGS) do
            for _, su in ipairs(SETUPS) do
                local total, p = plan(m, st[1], st[2], su[2])
                local cells = {}
                for _, card in ipairs({ 16, 24, 48 }) do cells[#cells + 1] = total <= card * GiB and "fits" or "-" end
                out(("| %s | %d | %d | %s | %.2f | %.2f | %s |"):format(m[1], st[1], st[2], su[1], total / GiB,
                    (p.host.paged + p.host.offload) / GiB, table.concat(cells, " | ")))
            end
        end
    end
end
out("")
out("The QLoRA paper's claims, for comparison: 33B fine-tunes on a 24 GB card and 65B on a 48 GB card (with "
    .. "paged optimizers); its 7B base takes 5,048 MB in NF4 with double quantization. A card's GB are "
    .. "counted as GiB (a 24 GB card has 24,576 MiB).")
if cfg.out ~= "" then
    lt.fs.write_atomic(cfg.out, table.concat(lines, "\n") .. "\n")
    print("written to " .. cfg.out)
end
