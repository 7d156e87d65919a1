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

-- The fine-tuning rows, when the run made them.
local function maybe(name)
    local f = io.open(dir .. "/" .. name)
    if not f then return nil end
    f:close()
    return lt.json.read_file(dir .. "/" .. name)
end
if maybe("luatrain_lora.json") then
    print()
    print("fine-tuning rows (r=16 adapters on every decoder linear; the tied head frozen)")
    print(("  %-6s %-10s %10s %10s %8s %12s %10s"):format("mode", "precision", "luatrain", "pytorch", "ratio",
        "of sgemm", "peak"))
    local full_bf16 = maybe("torch_full_bf16.json")
    if full_bf16 then
        print(("  %-6s %-10s %10s %10.0f %8s %12s %10s"):format("full", "bf16", "-", full_bf16.tokens_per_s, "-", "-", "-"))
    end
    for _, mode in ipairs({ "lora", "qlora" }) do
        local o, p = maybe("luatrain_" .. mode .. ".json"), maybe("torch_" .. mode .. ".json")
        if o and p then
            print(("  %-6s %-10s %10.0f %10.0f %7.2fx %11.0f%% %10s"):format(mode, "f32", o.tokens_per_s, p.tokens_per_s,
                o.tokens_per_s / p.tokens_per_s, 100 * o.sgemm_fraction, lt.memory.format_bytes(o.peak_bytes)))
        end
        local b = maybe("torch_" .. mode .. "_bf16.json")
        if b then
            print(("  %-6s %-10s %10s %10.0f %8s %12s %10s"):format(mode, "bf16", "-", b.tokens_per_s, "-", "-", "-"))
        end
    end
    print("  (tokens/s; luatrain's bf16 CPU path does not exist yet: its rows show PyTorch's alone)")
end
