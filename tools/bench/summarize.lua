--[[
summarize.lua - the summary table of tools/bench/cpu_train_step.sh, from the JSON the
two benchmark scripts wrote into one folder.
]]
local lt = require "luatrain"
local dir = assert(arg[1], "usage: summarize.lua FOLDER")
local ours = lt.json.read_file(dir .. "/luatrain.json")
local peers = {
    { name = "default threads", r = lt.json.read_file(dir .. "/torch_default.json") },
    { name = "OMP_WAIT_POLICY=passive", r = lt.json.read_file(dir .. "/torch_passive.json") },
}
table.sort(peers, function(a, b) return a.r.tokens_per_s > b.r.tokens_per_s end)
local best = peers[1]
print("summary (stories15M shape, batch " .. ours.batch .. " x " .. ours.seq .. ", AdamW, f32, " .. ours.threads .. " threads)")
print(("  luatrain          %8.0f tokens/s  %8.1f ms/step  peak %s"):format(ours.tokens_per_s, ours.step_ms,
    lt.memory.format_bytes(ours.peak_bytes)))
for _, p in ipairs(peers) do
    print(("  pytorch %-9s %8.0f tokens/s  %8.1f ms/step  (%s)"):format(p.r.version, p.r.tokens_per_s,
        p.r.step_ms, p.name))
end
print(("  speed-up over PyTorch's best run: %.2fx"):format(ours.tokens_per_s / best.r.tokens_per_s))
print(("  luatrain %.1f GFLOP/s of %.1f GFLOP per step = %.0f%% of the measured sgemm ceiling (%.1f GFLOP/s)"):format(
    ours.gflops, ours.gflop_per_step, 100 * ours.sgemm_fraction, ours.sgemm_gflops))

-- The fine-tuning and bf16 rows, when the run made them.
local function maybe(name)
    local f = io.open(dir .. "/" .. name)
    if not f then return nil end
    f:close()
    return lt.json.read_file(dir .. "/" .. name)
end
if maybe("luatrain_lora.json") then
    print()
    print("by mode and precision (LoRA/QLoRA: r=16 adapters on every decoder linear; the tied head frozen)")
    print(("  %-6s %-5s %10s %10s %8s %16s %10s"):format("mode", "prec", "luatrain", "pytorch", "ratio", "of GEMM ceiling",
        "peak"))
    for _, mode in ipairs({ "full", "lora", "qlora" }) do
        for _, prec in ipairs({ "f32", "bf16" }) do
            local suffix = prec == "bf16" and "_bf16" or ""
            local o = mode == "full" and prec == "f32" and ours or maybe("luatrain_" .. mode .. suffix .. ".json")
            local p = mode == "full" and prec == "f32" and best.r or maybe("torch_" .. mode .. suffix .. ".json")
            if o and p then
                print(("  %-6s %-5s %10.0f %10.0f %7.2fx %15.0f%% %10s"):format(mode, prec, o.tokens_per_s, p.tokens_per_s,
                    o.tokens_per_s / p.tokens_per_s, 100 * o.sgemm_fraction, lt.memory.format_bytes(o.peak_bytes)))
            end
        end
    end
    print("  (tokens/s; the ceiling is the same process's 2048^3 GEMM in the row's precision)")
end
