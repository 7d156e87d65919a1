--[[
f32_gemm.lua - OpenBLAS sgemm against oneDNN's f32 GEMM on the shapes a training step runs,
to decide which f32 products go to oneDNN (src/ops/matmul.c, use_dnnl_f32).

    luatrain tools/bench/f32_gemm.lua [threads=0] [reps=0]

It runs itself twice more as a child, once with LT_CPU_F32_GEMM=sgemm and once with
LT_CPU_F32_GEMM=dnnl (the setting is read once per process), and prints per shape both
rates in GFLOP/s, their ratio and the CPU. The shapes: each decoder linear of a Llama at a
given hidden size, forward (N x in @ in x out), input gradient (N x out @ out x in) and
weight gradient (out x N @ N x in), for the tiny_facts model (C 128), stories15M (C 288),
a 1B-class layer (C 2048) and a square 2048^3 product.
]]
local lt = require "luatrain"

local cfg = lt.config {
    threads = { 0, "CPU threads (0: every CPU this process may run on)", type = "int" },
    reps = { 0, "repetitions per shape (0: as many as fit in about 0.3 s)", type = "int" },
    child = { "", "internal: sgemm or dnnl, the path this child times" },
}

-- { label, M, N, K, trans_a, trans_b }: op(a) (M, K) @ op(b) (K, N), transposed as the
-- layers call them (forward x @ W^T, input gradient dy @ W, weight gradient dy^T @ x)
local SHAPES = {}
local function linear(name, tokens, in_f, out_f)
    SHAPES[#SHAPES + 1] = { name .. " fwd", tokens, out_f, in_f, false, true }
    SHAPES[#SHAPES + 1] = { name .. " dx", tokens, in_f, out_f, false, false }
    SHAPES[#SHAPES + 1] = { name .. " dw", out_f, in_f, tokens, true, false }
end
linear("C128 qkv", 1024, 128, 128)
linear("C128 mlp", 1024, 128, 344)
linear("C288 qkv", 2048, 288, 288)
linear("C288 mlp", 2048, 288, 768)
linear("C2048 qkv", 1024, 2048, 2048)
linear("C2048 mlp", 1024, 2048, 8192)
SHAPES[#SHAPES + 1] = { "square 2048", 2048, 2048, 2048, false, false }

if cfg.child ~= "" then
    lt.set_num_threads(cfg.threads)
    for _, s in ipairs(SHAPES) do
        local a = s[5] and lt.randn(s[4], s[2]) or lt.randn(s[2], s[4])
        local b = s[6] and lt.randn(s[3], s[4]) or lt.randn(s[4], s[3])
        local c = lt.empty(s[2], s[3])
        local function once() lt.ops.matmul(a, b, { out = c, trans_a = s[5], trans_b = s[6] }) end
        once()
        local reps = cfg.reps
        if reps == 0 then
            local t0 = lt.fs.now()
            once()
            reps = math.max(3, math.floor(0.3 / math.max(lt.fs.now() - t0, 1e-6)))
        end
        local best = math.huge
        for _ = 1, reps do
            local t0 = lt.fs.now()
            once()
            best = math.min(best, lt.fs.now() - t0)
        end
        print(("%s\t%.1f"):format(s[1], 2 * s[2] * s[3] * s[4] / best / 1e9))
    end
    return
end

local function cpu()
    local model, flags = "?", ""
    for line in io.lines("/proc/cpuinfo") do
        model = line:match("^model name%s*:%s*(.+)") or model
        local f = line:match("^flags%s*:%s*(.+)")
        if f then
            local keep = {}
            for w in f:gmatch("%S+") do
                if w:match("^avx512") or w:match("^amx") or w == "avx2" or w == "fma" then keep[#keep + 1] = w end
            end
            flags = table.concat(keep, " ")
            break
        end
    end
    return model, flags
end

local function run(path)
    local cmd = ("LT_CPU_F32_GEMM=%s %q %q child=%s threads=%d reps=%d"):format(path, arg[-1] or "luatrain",
        arg[0], path, cfg.threads, cfg.reps)
    local p = io.popen(cmd)
    local out = {}
    for line in p:lines() do
        local name, rate = line:match("^(.-)\t([%d.]+)$")
        if name then out[name] = tonumber(rate) end
    end
    p:close()
    return out
end

local model, flags = cpu()
print(("CPU: %s (%s), %d threads"):format(model, flags, cfg.threads == 0 and lt.get_num_threads() or cfg.threads))
local s, d = run("sgemm"), run("dnnl")
print(("%-18s %6s %6s %6s %3s   %s"):format("shape", "M", "N", "K", "op", "sgemm   oneDNN f32  ratio (GFLOP/s)"))
for _, sh in ipairs(SHAPES) do
    local a, b = s[sh[1]], d[sh[1]]
    print(("%-18s %6d %6d %6d %3s   %6.1f %9.1f %7.2fx"):format(sh[1], sh[2], sh[3], sh[4],
        (sh[5] and "T" or "N") .. (sh[6] and "T" or "N"), a or 0, b or 0, (a and b) and b / a or 0))
end
