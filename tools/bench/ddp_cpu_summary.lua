--[[
ddp_cpu_summary.lua DIR - the table tools/bench/ddp_cpu.sh prints from the JSON lines its
runs left in DIR: lt1_<mode> (luatrain, 1 rank x 2 threads), lt2_<mode> (2 ranks x 1 thread),
pt2_<mode> (PyTorch DDP, gloo), bare (MPI_Allreduce of the full model's gradient bytes).
]]
local lt = require "luatrain"
local dir = assert(arg[1], "usage: ddp_cpu_summary.lua DIR")

local function read(name)
    local f = assert(io.open(dir .. "/" .. name .. ".json"))
    local rec = lt.json.decode(f:read("*a"))
    f:close()
    return rec
end

print(("%-5s %-48s %10s %9s"):format("mode", "run", "tokens/s", "step s"))
for _, mode in ipairs({ "full", "lora" }) do
    local one, two, torch = read("lt1_" .. mode), read("lt2_" .. mode), read("pt2_" .. mode)
    for _, r in ipairs({ { "luatrain 1 rank x 2 threads", one }, { "luatrain 2 ranks x 1 thread (DDP)", two },
        { "PyTorch " .. torch.torch .. " DDP gloo, 2 ranks x 1 thread", torch } }) do
        print(("%-5s %-48s %10.0f %9.3f"):format(mode, r[1], r[2].tokens_per_s, r[2].step_s))
    end
    print(("%-5s   luatrain DDP / PyTorch DDP = %.2fx; luatrain 2 ranks / 1 rank = %.2fx (%d trainable)"):format(
        mode, two.tokens_per_s / torch.tokens_per_s, two.tokens_per_s / one.tokens_per_s, two.trainable))
end
local two, bare = read("lt2_full"), read("bare")
print(("all-reduce of %d bytes (the full model's gradients), 2 ranks: luatrain %.2f GB/s (%.1f ms), "
    .. "bare MPI_Allreduce %.2f GB/s (%.1f ms): %.2fx of the bare call"):format(bare.bytes, two.allreduce_gbps,
    two.allreduce_s * 1e3, bare.allreduce_gbps, bare.allreduce_s * 1e3, two.allreduce_gbps / bare.allreduce_gbps))
