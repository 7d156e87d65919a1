--[[
qlora_load.lua - peak host memory of loading a Llama base quantized to 4 bits, against the
model's f32 size and its quantized size.

    luatrain tools/bench/qlora_load.lua [shape=tinyllama dir=/tmp/lt_bench_llama quant=nf4]

The first run writes a randomly initialised checkpoint of the chosen shape as a Hugging Face
folder in bf16 (in a child process, so its memory does not count here); later runs reuse
it. Then the base is loaded the way recipes/qlora_llama.lua loads it: the safetensors file
is mapped, and each linear weight is quantized from the mapping as it is read, so the f32
(or bf16) copy of the whole model never exists.

Printed: the allocator's peak (tensor storage and kernel scratch), the process's peak
resident anonymous memory (RssAnon sampled after each layer and VmHWM minus the mapped
file pages it touched), the f32 and bf16 sizes of the model, and the quantized size, so
the peak reads as "quantized size plus about one layer".
]]
local lt = require "luatrain"

local cfg = lt.config {
    shape = { "tinyllama", "model shape", choices = { "tinyllama", "small" } },
    dir = { "/tmp/lt_bench_llama", "checkpoint folder (written on the first run)" },
    quant = { "nf4", "4-bit type", choices = { "nf4", "fp4" } },
    double_quant = { true, "double quantization of the block scales" },
    make = { false, "internal: write the checkpoint and exit" },
}

local SHAPES = {
    -- TinyLlama-1.1B's shape
    tinyllama = { vocab_size = 32000, hidden_size = 2048, intermediate_size = 5632, num_hidden_layers = 22,
        num_attention_heads = 32, num_key_value_heads = 4, max_position_embeddings = 2048 },
    small = { vocab_size = 8000, hidden_size = 512, intermediate_size = 1376, num_hidden_layers = 8,
        num_attention_heads = 8, num_key_value_heads = 4, max_position_embeddings = 1024 },
}
local shape = SHAPES[cfg.shape]
local dir = cfg.dir .. "_" .. cfg.shape
local mb = lt.memory.format_bytes

if cfg.make then
    lt.manual_seed(1)
    local model = lt.llama.new(shape)
    for _, r in ipairs(model:named_parameters()) do
        if r.param:dim() == 2 then r.param:normal_(0, 0.02) end
    end
    lt.llama.save_pretrained(model, dir, { dtype = "bf16" })
    os.exit(0)
end

local function exists(p)
    local f = io.open(p)
    if f then f:close() end
    return f ~= nil
end
if not exists(dir .. "/model.safetensors") then
    io.write(("writing a random %s-shaped checkpoint to %s ... "):format(cfg.shape, dir))
    io.flush()
    local cmd = ("%q %q shape=%s dir=%q make=true"):format(arg[-1], arg[0], cfg.shape, cfg.dir)
    assert(os.execute(cmd) == 0, "could not write the checkpoint")
    print("done")
end

local function status(key)
    local f = io.open("/proc/self/status")
    local text = f:read("*a")
    f:close()
    return tonumber(text:match(key .. ":%s+(%d+) kB")) * 1024
end
local function smaps_file_rss()
    -- resident pages of the mapped checkpoint (file-backed, given back under pressure)
    local f = io.open("/proc/self/smaps")
    local total, inside = 0, false
    for line in f:lines() do
        if line:match("^%x+%-%x+ ") then
            inside = line:find("model.safetensors", 1, true) ~= nil
        elseif inside then
            local kb = line:match("^Rss:%s+(%d+) kB")
            if kb then total = total + tonumber(kb) * 1024 end
        end
    end
    f:close()
    return total
end

lt.memory.collect()
local anon0 = status("RssAnon")
lt.memory.reset_peak("cpu")
local t0 = lt.fs.now()
local model = lt.llama.from_pretrained(dir, { quant = { type = cfg.quant, blocksize = 64,
    double_quant = cfg.double_quant }, dtype = "bf16" })
local load_s = lt.fs.now() - t0
local peak = lt.memory.stats("cpu").peak
local anon1 = status("RssAnon")
local hwm = status("VmHWM")
local file_rss = smaps_file_rss()

local n_total, n_quant, q_bytes, plain_bytes = 0, 0, 0, 0
for _, e in ipairs(model:quant_layers()) do
    local n = e[2].in_features * e[2].out_features
    n_total, n_quant = n_total + n, n_quant + n
    q_bytes = q_bytes + e[2].qweight:nbytes()
end
for _, r in ipairs(model:named_parameters()) do
    n_total = n_total + r.param:numel()
    plain_bytes = plain_bytes + r.param:nbytes()
end
local largest_layer = 0
for i = 1, shape.num_hidden_layers do
    local n = 0
    for _, e in ipairs(model:quant_layers()) do
        if e[1]:find("layers%." .. (i - 1) .. "%.") then n = n + e[2].in_features * e[2].out_features end
    end
    largest_layer = math.max(largest_layer, n)
end

print(("qlora_load: %s shape, %.3fB parameters, %s with %s, loaded in %.1f s"):format(cfg.shape, n_total / 1e9,
    cfg.quant, cfg.double_quant and "double quantization" or "f32 scales", load_s))
print(("  f32 size                       %s"):format(mb(4 * n_total)))
print(("  bf16 size (the file)           %s"):format(mb(2 * n_total)))
print(("  quantized size                 %s  (%s 4-bit linears at %.3f bits/weight + %s bf16 embeddings and norms)"):format(
    mb(q_bytes + plain_bytes), mb(q_bytes), 8 * q_bytes / n_quant, mb(plain_bytes)))
print(("  one decoder layer in f32       %s"):format(mb(4 * largest_layer)))
print(("  allocator peak while loading   %s  = quantized size + %s"):format(mb(peak), mb(peak - q_bytes - plain_bytes)))
print(("  resident anonymous memory      %s after loading (%s before)"):format(mb(anon1), mb(anon0)))
print(("  process peak (VmHWM)           %s, of which %s are pages of the mapped checkpoint still resident"):format(
    mb(hwm), mb(file_rss)))
print(("  process peak / quantized size  %.3f   (1.000 is the floor)"):format(hwm / (q_bytes + plain_bytes)))
print(("  process peak / f32 size        %.3f"):format(hwm / (4 * n_total)))
