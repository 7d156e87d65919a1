--[[
test_cuda.lua - the GPU from Lua: tensors to and from devices, modules moved with model:to,
and a Llama that trains on the GPU with losses that track the CPU run's.

Without a device the GPU part prints one "skipped: ..." line; what does not need a device
(errors that say why, model:to("cpu") keeping everything in place) runs everywhere.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

local CFG = { vocab_size = 97, hidden_size = 32, intermediate_size = 88, num_hidden_layers = 2,
    num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 64 }

T.test("model:to(\"cpu\") keeps every tensor in place", function()
    lt.manual_seed(1)
    local m = lt.llama.new(CFG)
    local before = {}
    for _, r in ipairs(m:named_parameters()) do before[r.name] = r.param end
    m:to("cpu")
    for _, r in ipairs(m:named_parameters()) do T.ok(before[r.name] == r.param, r.name .. " moved") end
    T.eq(m:device(), "cpu")
end)

T.test("without a device, asking for one says why", function()
    if lt.cuda.is_available() then return end
    T.eq(lt.cuda.device_count(), 0)
    T.raises(function() lt.zeros(2, { device = "cuda" }) end, "CUDA")
    T.raises(function() lt.zeros(2):cuda() end, "CUDA")
    T.raises(function() lt.llama.new(CFG):to("cuda") end, "CUDA")
    T.raises(function() lt.cuda.device_info(0) end, "CUDA")
    T.raises(function() lt.quant.quantize(lt.randn(4, 64)):to("cuda") end, "CUDA")
end)

T.test("compute precision: f32, bf16 or f16 on every device, errors say why", function()
    local m = lt.llama.new(CFG)
    T.eq(m:compute_dtype(), "f32")
    m:set_compute_dtype("float32")
    T.eq(m:compute_dtype(), "f32")
    T.raises(function() m:set_compute_dtype("i32") end, "must be \"f32\", \"bf16\" or \"f16\"", true)
    T.eq(m:compute_dtype(), "f32")
    local ids = lt.randint(0, CFG.vocab_size, 1, 8)
    T.eq(m:forward(ids).dtype, "f32")
    m:set_compute_dtype("bf16")
    T.eq(m:compute_dtype(), "bf16")
    T.eq(m:forward(ids).dtype, "f32", "logits come back in f32")
    T.eq(m.model.norm.output.dtype, "bf16", "activations in bf16 on the CPU")
end)

T.test("copies off the copy stream: on the host they are done at once (ticket 0)", function()
    local a, b = lt.randn(1000), lt.empty(1000)
    T.eq(b:copy_async_(a), 0)
    T.ok(b:equal(a))
    lt.copy_wait("cpu", 0, true)
    local C = require("luatrain.core").C
    T.ok(C.lt_copy_wait(C.LT_DEVICE_CPU, 0, -1, 0) ~= 0, "a negative ticket is refused")
end)

T.test("a quantized weight says where it lives; to() its own device is itself", function()
    local q = lt.quant.quantize(lt.randn(8, 128), { type = "nf4" })
    T.eq(q.device, "cpu")
    T.ok(q:to("cpu") == q and q:cpu() == q)
    T.raises(function() q:to("gpu") end, "unknown device")
end)

if not lt.cuda.is_available() then
    local _, why = pcall(lt.cuda.device_info, 0)
    print("skipped: GPU part (" .. tostring(why):gsub("^.-: ", "") .. ")")
    T.done()
end

T.test("tensors: round trips in every dtype, strided copies, views, get/set, equal", function()
    for _, dt in ipairs({ "f32", "bf16", "f16", "i32", "i64", "u8", "i8" }) do
        local x = (dt == "u8" and lt.randint(0, 200, 7, 33) or lt.randint(-100, 100, 7, 33)):to(dt)
        local g = x:cuda()
        T.eq(g.device, "cuda:0")
        T.ok(g:cpu():equal(x), dt .. " round trip")
        T.ok(g:equal(x), dt .. " equal across devices")
        T.ok(g:t():contiguous():cpu():equal(x:t():contiguous()), dt .. " strided copy on the device")
    end
    local a = lt.randn(5, 6)
    local g = a:cuda()
    T.near(g:get(8), a:get(8), 0, 0)
    g:set(8, 42)
    T.eq(g:get(8), 42)
    T.ok(g:to("bf16"):cpu():equal(g:cpu():to("bf16")), "conversion on the device = on the host")
    local p = lt.empty({ 4, 4 }, { pin = true })
    p:copy_(lt.randn(4, 4))
    T.ok(p:cuda():cpu():equal(p), "pinned host tensor round trip")
    T.ok(tostring(g):find("on cuda:0", 1, true), "printing names the device")
end)

T.test("the same seed draws the same numbers on the device and the host", function()
    lt.manual_seed(7)
    local c = lt.randn(1001)
    lt.manual_seed(7)
    local g = lt.randn(1001, { device = "cuda" })
    local d = T.diff(g:cpu(), c)
    T.ok(d <= 1e-6, ("normal draws differ by %g"):format(d))
end)

T.test("the copy stream: pinned host <-> device transfers beside the kernels, waited by ticket", function()
    local n = 2 ^ 20
    local host = lt.empty({ n }, { paged = true }) -- page-locked once the backend is loaded
    host:copy_(lt.randn(n))
    local dev = lt.empty({ n }, { device = "cuda" })
    local t1 = dev:copy_async_(host)
    T.ok(t1 > 0, "a device transfer gets a ticket")
    lt.copy_wait("cuda", t1, false)         -- the kernels below run after it
    local twice = dev * 2
    local back = lt.empty({ n }, { paged = true })
    local t2 = back:copy_async_(twice)
    T.ok(t2 > t1, "tickets count up")
    lt.copy_wait("cuda", t2, true)          -- this thread waits for the bytes
    T.ok(back:equal(host * 2), "host -> device -> kernel -> host")
    T.raises(function() lt.copy_wait("cuda", t2 + 100, true) end, "never issued")
end)

T.test("offloaded activations and paged moments on the copy stream train bit for bit like resident ones", function()
    local function run(offload, paged)
        lt.manual_seed(5)
        local m = lt.llama.new(CFG):to("cuda")
        m:gradient_checkpointing(true, { offload = offload })
        local opt = lt.optim.AdamW(m:parameters(), { lr = 1e-3, paged = paged, page_mb = 0.01 })
        local ids = lt.randint(0, CFG.vocab_size, 2, 16)
        local losses = {}
        for s = 1, 3 do
            opt:zero_grad()
            losses[s] = m:forward_backward(ids, ids)
            opt:step()
        end
        return losses, m
    end
    local l0, m0 = run(false, false)
    local l1, m1 = run(true, true)
    T.eq(l1, l0, "losses")
    local w0, w1 = m0:state_dict(), m1:state_dict()
    for k, t in pairs(w0) do T.ok(w1[k]:cpu():equal(t:cpu()), k) end
end)

-- three AdamW steps of a GPU model with optimizer `make`
local function three_steps(make, opts)
    lt.manual_seed(6)
    local m = lt.llama.new(CFG):to("cuda")
    local opt = make(m:parameters(), opts)
    local ids = lt.randint(0, CFG.vocab_size, 2, 16)
    for _ = 1, 3 do
        opt:zero_grad()
        m:forward_backward(ids, ids)
        opt:step()
    end
    return m, opt
end

T.test("offload=cpu: GPU weights updated from an f32 master copy on the host, bit for bit", function()
    local function run(opts) return three_steps(lt.optim.AdamW, opts) end
    local m0 = run({ lr = 1e-3 })
    local before = lt.memory.stats("cuda").current
    local m1, o1 = run({ lr = 1e-3, offload = "cpu" })
    T.eq(o1:resident_state_bytes(), 0)
    local w0, w1 = m0:state_dict(), m1:state_dict()
    for k, t in pairs(w0) do T.ok(w1[k]:cpu():equal(t:cpu()), k) end
    T.ok(before ~= nil)
end)

T.test("offload=cpu in 8 bits: GPU weights updated by the host's AdamW8bit from an f32 master copy", function()
    local function run(opts) return three_steps(lt.optim.AdamW8bit, opts) end
    local m0 = run({ lr = 1e-3 })
    local m1, o1 = run({ lr = 1e-3, offload = "cpu" })
    T.eq(o1:resident_state_bytes(), 0)
    -- the host's 8-bit kernel and the device's round the same arithmetic; a code may land one
    -- step apart, which moves a weight by far less than the learning rate
    local w0, w1 = m0:state_dict(), m1:state_dict()
    for k, t in pairs(w0) do
        local d = (w1[k]:cpu():to("f32") - t:cpu():to("f32")):abs():max():item()
        T.ok(d <= 1e-4, ("%s: %g"):format(k, d))
    end
end)

T.test("memory: allocations show in the device's statistics and go back to its cache", function()
    lt.cuda.synchronize()
    local s0 = lt.cuda.memory_stats()
    local x = lt.empty(1024, 1024, { device = "cuda" })
    local s1 = lt.cuda.memory_stats()
    T.eq(s1.current - s0.current, 4 * 1024 * 1024)
    T.ok(s1.reserved >= s1.current)
    x:free()
    T.eq(lt.cuda.memory_stats().current, s0.current)
    local released = lt.cuda.empty_cache()
    T.ok(released >= 0)
    local info = lt.cuda.device_info()
    T.ok(info.total_bytes > 0 and info.sm_count > 0, info.name)
end)

T.test("ops called without outputs make them on the inputs' device, in their dtype", function()
    local F = lt.nn.functional
    local q = lt.randn({ 2, 17, 4, 64 }, { device = "cuda" }):bf16()
    local k = lt.randn({ 2, 17, 2, 64 }, { device = "cuda" }):bf16()
    local out, lse = F.flash_attention(q, k, k)
    T.eq({ out.device, out.dtype, lse.device, lse.dtype }, { "cuda:0", "bf16", "cuda:0", "f32" })
    local dq, dk = F.flash_attention_backward(out, q, k, k, out, lse)
    T.eq({ dq.device, dq.dtype, dk.dtype }, { "cuda:0", "bf16", "bf16" })
    local x = lt.randn({ 5, 64 }, { device = "cuda" })
    local w = lt.randn({ 64 }, { device = "cuda" })
    local y, rstd = F.rmsnorm(x, w)
    T.eq({ y.device, rstd.device, rstd.dtype }, { "cuda:0", "cuda:0", "f32" })
    local dx, dw = F.rmsnorm_backward(y, x, w, rstd)
    T.eq({ dx.device, dw.device, dw.dtype }, { "cuda:0", "cuda:0", "f32" })
    local lin = F.linear(x:bf16(), lt.randn({ 8, 64 }, { device = "cuda" }):bf16())
    T.eq({ lin.device, lin.dtype }, { "cuda:0", "bf16" })
end)

T.test("quantized weights move byte for byte and compute where they are", function()
    lt.manual_seed(7)
    for _, opts in ipairs({ { type = "nf4" }, { type = "fp4", double_quant = false, blocksize = 128 },
        { type = "int8" } }) do
        local w = lt.randn(96, 256)
        local q = lt.quant.quantize(w, opts)
        local g = q:cuda()
        T.eq(g.device, "cuda:0")
        T.ok(g:dequantize():cpu():equal(q:dequantize()), opts.type .. ": moved weight dequantizes to the same bits")
        T.ok(lt.quant.quantize(w:cuda(), opts):dequantize():cpu():equal(q:dequantize()),
            opts.type .. ": quantized on the device, the same state as on the host")
        local back = g:cpu()
        T.eq(back.device, "cpu")
        T.ok(back:dequantize():equal(q:dequantize()), opts.type .. ": and back")
        local x = lt.randn(5, 256)
        local d = T.diff(lt.quant.linear_forward(x:cuda(), g):cpu(), lt.quant.linear_forward(x, q))
        T.ok(d < 5e-2, ("%s: linear forward differs by %g"):format(opts.type, d))
    end
end)

T.test("QLoRA on the GPU: a 4-bit Llama with adapters trains like the CPU one", function()
    local FIX = "tests/fixtures"
    local g = lt.safetensors.load(FIX .. "/llama_tiny_gqa/golden.safetensors")
    local function build(device)
        lt.manual_seed(4)
        local m = lt.llama.from_pretrained(FIX .. "/llama_tiny_gqa", { quant = "nf4" })
        lt.lora.apply(m, { r = 8, alpha = 16, target = "all-linear" })
        if device then m:to(device) end
        return m
    end
    local cpu, gpu = build(), build("cuda")
    local oc = lt.optim.AdamW(cpu:parameters(), { lr = 1e-2, weight_decay = 0 })
    local og = lt.optim.AdamW(gpu:parameters(), { lr = 1e-2, weight_decay = 0 })
    local ids, targets = g.input_ids, g.targets
    local gids, gtargets = ids:cuda(), targets:cuda()
    local first, last, worst = nil, nil, 0
    for _ = 1, 15 do
        oc:zero_grad()
        og:zero_grad()
        local lc = cpu:forward_backward(ids, targets)
        local lg = gpu:forward_backward(gids, gtargets)
        first, last = first or lg, lg
        worst = math.max(worst, math.abs(lc - lg) / math.abs(lc))
        oc:step()
        og:step()
    end
    T.ok(last < first - 0.5, ("GPU QLoRA loss %.3f -> %.3f"):format(first, last))
    T.ok(worst < 2e-2, ("GPU and CPU QLoRA losses drift apart by %.3g relative"):format(worst))
end)

T.test("bf16 compute with f32 master weights: LoRA on a bf16 base tracks the f32 CPU run", function()
    local function build(device, precision)
        lt.manual_seed(5)
        local m = lt.llama.new(CFG, { dtype = "bf16", trainable = false })
        m:gradient_checkpointing(true)
        lt.lora.apply(m, { r = 8, alpha = 16, target = "all-linear" })
        if device then
            m:to(device)
            m:set_compute_dtype(precision)
        end
        return m
    end
    local cpu, gpu = build(), build("cuda", "bf16")
    T.eq(gpu:compute_dtype(), "bf16")
    for _, r in ipairs(gpu:parameters()) do
        T.eq(r.param.dtype, "f32", r.name .. " master weight")
        T.eq(r.grad.dtype, "f32", r.name .. " gradient")
    end
    local ids = lt.randint(0, CFG.vocab_size, 2, 24)
    local targets = lt.randint(0, CFG.vocab_size, 2, 24)
    local gids, gtargets = ids:cuda(), targets:cuda()
    T.eq(gpu:forward(gids).dtype, "f32", "logits come back in f32")
    T.eq(gpu.model.norm.output.dtype, "bf16", "activations in bf16")
    local oc = lt.optim.AdamW(cpu:parameters(), { lr = 5e-3, weight_decay = 0 })
    local og = lt.optim.AdamW(gpu:parameters(), { lr = 5e-3, weight_decay = 0 })
    local first, last, worst = nil, nil, 0
    for _ = 1, 20 do
        oc:zero_grad()
        og:zero_grad()
        local lc = cpu:forward_backward(ids, targets)
        local lg = gpu:forward_backward(gids, gtargets)
        first, last = first or lg, lg
        worst = math.max(worst, math.abs(lc - lg) / math.abs(lc))
        oc:step()
        og:step()
    end
    T.ok(last < first - 0.5, ("bf16 LoRA loss %.3f -> %.3f"):format(first, last))
    -- bf16 activations round at 2^-8 relative: the losses agree to a few percent
    T.ok(worst < 5e-2, ("bf16 GPU and f32 CPU losses drift apart by %.3g relative"):format(worst))
    gpu:to("cpu")
    T.eq(gpu:compute_dtype(), "f32", "back on the host, back to f32")
end)

T.test("a Llama on the GPU: forward, gradients and 20 AdamW steps track the CPU", function()
    lt.manual_seed(3)
    local cpu = lt.llama.new(CFG)
    local gpu = lt.llama.new(CFG)
    gpu:load_state_dict(cpu:state_dict())
    gpu:to("cuda")
    T.eq(gpu:device(), "cuda:0")
    local ids = lt.randint(0, CFG.vocab_size, 2, 24)
    local targets = lt.randint(0, CFG.vocab_size, 2, 24)
    local gids, gtargets = ids:cuda(), targets:cuda()
    -- f32 on the GPU goes through TF32 matmuls: compare at TF32's tolerance
    local d = T.diff(gpu:forward(gids):cpu(), cpu:forward(ids))
    T.ok(d < 5e-3, ("logits differ by %g"):format(d))
    T.eq(gpu:attention_paths(), { "cuda-flash" })
    local oc = lt.optim.AdamW(cpu:parameters(), { lr = 3e-3 })
    local og = lt.optim.AdamW(gpu:parameters(), { lr = 3e-3 })
    local worst = 0
    for _ = 1, 20 do
        oc:zero_grad()
        og:zero_grad()
        local lc = cpu:forward_backward(ids, targets)
        local lg = gpu:forward_backward(gids, gtargets)
        worst = math.max(worst, math.abs(lc - lg) / math.abs(lc))
        oc:step()
        og:step()
    end
    T.ok(worst < 1e-2, ("losses drift apart by %.3g relative"):format(worst))
    gpu:to("cpu")
    T.eq(gpu:device(), "cpu")
end)

T.done()
