--[[
test_lora.lua - LoRA and DoRA adapters: targets, trainable set, PEFT adapter files (read
from an independent writer, written in PEFT's layout), logits and gradients against the
float64 PyTorch reference (tools/golden/lora_reference.py), merging, export.

Tolerances: logits max |diff| <= 2e-4 * max|ref| + 1e-5, adapter gradients
||diff|| / ||ref|| <= 1e-4 (f32 against f64, as for the base model's golden test).
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

local FIX = "tests/fixtures/"
local CFG = { vocab_size = 50, hidden_size = 16, intermediate_size = 32, num_hidden_layers = 3,
    num_attention_heads = 4, num_key_value_heads = 2 }

local function tmpdir()
    local d = os.tmpname()
    os.remove(d)
    return d
end

local function rel_close(a, b, tol, what)
    local _, rel = T.diff(a, b)
    if not (rel <= tol) then error(("%s: relative error %.3g exceeds %.3g"):format(what, rel, tol), 2) end
end

T.test("targets: all-linear, names, a Lua pattern, layers_to_transform", function()
    local function count(opts)
        local m = lt.llama.new(CFG)
        return #lt.lora.apply(m, opts), m
    end
    T.eq(count({ target = "all-linear" }), 21, "7 linears in each of 3 layers; lm_head excluded")
    T.eq(count({ target = { "q_proj", "v_proj" } }), 6)
    T.eq(count({ target = "model%.layers%.%d+%.mlp%.%a+_proj" }), 9)
    T.eq(count({ target = { "q_proj" }, layers_to_transform = { 0, 2 } }), 2)
    T.raises(function() count({ target = { "nope" } }) end, "matches no linear layer", true)
    local _, m = count({ target = { "q_proj" }, r = 3 })
    local names = {}
    for _, r in ipairs(m:parameters()) do names[#names + 1] = r.name end
    table.sort(names)
    T.eq(#names, 6, "only the adapters train")
    T.eq(names[1], "model.layers.0.self_attn.q_proj.lora_A.weight")
    T.eq(m.model.layers:get(1).self_attn.q_proj.lora_A.weight:shape(), { 3, 16 })
    T.eq(m.model.layers:get(1).self_attn.q_proj.lora_B.weight:shape(), { 16, 3 })
    T.eq(m.model.layers:get(1).self_attn.q_proj:grad("weight"), nil, "the base weight has no gradient")
end)

T.test("a fresh adapter changes nothing; merge and unmerge", function()
    lt.manual_seed(3)
    local m = lt.llama.new(CFG)
    local ids = lt.randint(0, 50, 2, 9)
    local before = m:forward(ids):clone()
    lt.lora.apply(m, { r = 4, alpha = 16, dropout = 0.1 })
    m:eval()
    T.ok(m:forward(ids):equal(before), "B starts at zero")
    for _, r in ipairs(m:parameters()) do
        if r.name:find("lora_B") then r.param:normal_(0, 0.2) end
    end
    local with_adapter = m:forward(ids):clone()
    T.ok(not with_adapter:equal(before))
    lt.lora.merge(m)
    local merged = m:forward(ids)
    local d = T.diff(merged, with_adapter)
    T.ok(d < 1e-5, ("merged forward differs by %g"):format(d))
    lt.lora.unmerge(m)
    d = T.diff(m:forward(ids), with_adapter)
    T.ok(d < 1e-5, ("unmerged forward differs by %g"):format(d))
end)

for _, case in ipairs({ { "lora_tiny", "LoRA r=4 on every linear" }, { "lora_tiny_dora", "DoRA r=2 on q, v" } }) do
    local folder = FIX .. case[1]
    T.test(case[2] .. ": a PEFT-layout adapter loads; logits and gradients match the reference", function()
        local golden = lt.safetensors.load(folder .. "/lora_golden.safetensors")
        local base = lt.safetensors.load(FIX .. "llama_tiny_gqa/golden.safetensors")
        local m = lt.llama.from_pretrained(FIX .. "llama_tiny_gqa")
        lt.lora.load(m, folder)
        local logits = m:forward(base.input_ids)
        local diff = T.diff(logits, golden.logits)
        local bound = 2e-4 * golden.logits:abs():max():item() + 1e-5
        T.ok(diff <= bound, ("logits max |diff| %.3g > %.3g"):format(diff, bound))
        m:zero_grad()
        local loss = m:forward_backward(base.input_ids, base.targets)
        T.near(loss, golden.loss:item(), 1e-5, 0, "loss")
        local n = 0
        for _, r in ipairs(m:parameters()) do
            local ref = golden["grad." .. r.name]
            T.ok(ref, "no reference gradient for " .. r.name)
            rel_close(r.grad, ref, 1e-4, "gradient of " .. r.name)
            n = n + 1
        end
        T.ok(n >= 12)
    end)
end

for _, dora in ipairs({ false, true }) do
T.test(("%s (with dropout) inside checkpointed layers: same loss and gradients, shared activations"):format(dora and "DoRA" or "LoRA"), function()
    local base = lt.safetensors.load(FIX .. "llama_tiny_gqa/golden.safetensors")
    local function run(order)
        lt.manual_seed(9)
        local m = lt.llama.from_pretrained(FIX .. "llama_tiny_gqa")
        if order == "checkpoint first" then m:gradient_checkpointing(true) end
        -- dropout on: the recomputation in backward must draw the forward's masks
        lt.lora.apply(m, { r = 4, alpha = 8, dropout = 0.3, dora = dora })
        m:train()
        if order == "adapters first" then m:gradient_checkpointing(true) end
        for _, r in ipairs(m:parameters()) do
            if r.name:find("lora_B") then r.param:normal_(0, 0.2) end
        end
        m:zero_grad()
        local loss = m:forward_backward(base.input_ids, base.targets)
        local grads = {}
        for _, r in ipairs(m:parameters()) do grads[r.name] = r.grad:clone() end
        local function q_proj(i) local l = m.model.layers:get(i) return (l.inner or l).self_attn.q_proj end
        T.ok(getmetatable(q_proj(1)) == lt.nn.LoRALinear, "q_proj is adapted")
        return loss, grads, q_proj(1)._buffers == q_proj(2)._buffers
    end
    local loss0, g0 = run("plain")
    for _, order in ipairs({ "checkpoint first", "adapters first" }) do
        local loss, g, shared = run(order)
        T.eq(loss, loss0, order .. ": loss")
        for name, ref in pairs(g0) do T.ok(g[name]:equal(ref), order .. ": gradient of " .. name) end
        T.ok(shared, order .. ": the adapters of layers 1 and 2 share one set of activation buffers")
    end
end)
end

T.test("DoRA A and B gradients are LoRA's with the upstream gradient scaled by m / ||W + sBA||", function()
    lt.manual_seed(5)
    local W, A, B, mag = lt.randn(5, 7), lt.randn(4, 7), lt.randn(5, 4), lt.rand(5, { low = 0.5, high = 1.5 })
    local x, dy = lt.randn(3, 7), lt.randn(3, 5)
    local function module(dora)
        local m = lt.nn.LoRALinear(lt.nn.Linear(7, 5, { weight = W, trainable = false }), { r = 4, alpha = 8, dora = dora })
        m.lora_A.weight:set_(A)
        m.lora_B.weight:set_(B)
        if dora then m.lora_magnitude_vector:set_(mag) end
        return m
    end
    local d = module(true)
    d:forward(x)
    d:backward(x, dy)
    local coef = d._buffers.dora_coef -- m / norm, (5)
    -- the norm itself, from scratch: ||W + s B A|| per row
    local full = W + B:matmul(A) * 2
    local norm = full:square():sum(2):sqrt():view(5)
    T.close(coef, mag / norm, 1e-5, 1e-6, "m / ||W + sBA||")
    local plain = module(false)
    plain:forward(x)
    plain:backward(x, dy * coef:view(1, 5))
    T.close(d.lora_A:grad("weight"), plain.lora_A:grad("weight"), 1e-5, 1e-6, "dA")
    T.close(d.lora_B:grad("weight"), plain.lora_B:grad("weight"), 1e-5, 1e-6, "dB")
end)

T.test("save writes PEFT's layout; load gives the same logits", function()
    lt.manual_seed(9)
    local m = lt.llama.new(CFG)
    lt.lora.apply(m, { r = 4, alpha = 32, dropout = 0.1, target = "all-linear", rslora = true })
    for _, r in ipairs(m:parameters()) do
        if r.name:find("lora_B") then r.param:normal_(0, 0.1) end
    end
    m:eval()
    local ids = lt.randint(0, 50, 1, 6)
    local want = m:forward(ids):clone()
    local dir = tmpdir()
    lt.lora.save(m, dir, { base_model_name_or_path = "my/base" })
    local cfg = lt.json.read_file(dir .. "/adapter_config.json")
    T.eq({ cfg.peft_type, cfg.task_type, cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.bias,
        cfg.use_rslora, cfg.use_dora, cfg.base_model_name_or_path },
        { "LORA", "CAUSAL_LM", 4, 32, 0.1, "none", true, false, "my/base" })
    T.eq(cfg.target_modules, { "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj" })
    local tensors, meta = lt.safetensors.load(dir .. "/adapter_model.safetensors")
    T.eq(meta.format, "pt")
    local a = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    local b = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    T.eq(a:shape(), { 4, 16 })
    T.eq(b:shape(), { 16, 4 })
    local count = 0
    for _ in pairs(tensors) do count = count + 1 end
    T.eq(count, 42)
    lt.manual_seed(9)
    local m2 = lt.llama.new(CFG)
    lt.lora.load(m2, dir)
    m2:eval()
    T.ok(m2:forward(ids):equal(want), "the reloaded adapter gives the same logits")
    -- a pattern target saves as an anchored regular expression that loads back
    local m3 = lt.llama.new(CFG)
    lt.lora.apply(m3, { r = 2, target = "model%.layers%.1%.self_attn%.[qv]_proj" })
    local dir3 = tmpdir()
    lt.lora.save(m3, dir3)
    T.eq(lt.json.read_file(dir3 .. "/adapter_config.json").target_modules,
        "^(model\\.layers\\.1\\.self_attn\\.q_proj|model\\.layers\\.1\\.self_attn\\.v_proj)$")
    local m4 = lt.llama.new(CFG)
    lt.lora.load(m4, dir3)
    T.eq(#lt.lora.layers(m4), 2)
    os.execute("rm -rf " .. dir .. " " .. dir3)
end)

T.test("rank_pattern, alpha_pattern and exclude_modules: per-module ranks and alphas, read and written as PEFT's", function()
    local dir = tmpdir()
    lt.manual_seed(4)
    local m = lt.llama.new(CFG)
    lt.lora.apply(m, { r = 4, alpha = 8, rank_pattern = { v_proj = 2, ["layers.1.self_attn.q_proj"] = 6 },
        alpha_pattern = { v_proj = 3 }, exclude = { "o_proj" } })
    local by = {}
    for _, e in ipairs(lt.lora.layers(m)) do by[e[1]] = e[2] end
    T.eq({ by["model.layers.0.self_attn.q_proj"].r, by["model.layers.1.self_attn.q_proj"].r }, { 4, 6 },
        "the longer (more specific) key wins")
    T.eq({ by["model.layers.0.self_attn.v_proj"].r, by["model.layers.0.self_attn.v_proj"].alpha }, { 2, 3 })
    T.ok(by["model.layers.0.self_attn.o_proj"] == nil, "o_proj excluded")
    for _, r in ipairs(m:parameters()) do
        if r.name:find("lora_B") then r.param:normal_(0, 0.05) end
    end
    lt.lora.save(m, dir)
    local cfg = lt.json.read_file(dir .. "/adapter_config.json")
    T.eq(cfg.rank_pattern, { v_proj = 2, ["layers.1.self_attn.q_proj"] = 6 })
    T.eq(cfg.alpha_pattern, { v_proj = 3 })
    T.eq(cfg.exclude_modules, { "o_proj" })
    -- loaded into a fresh model of the same base: the same adapters, the same logits
    local fresh = lt.llama.new(CFG)
    fresh:load_state_dict((function()
        local sd = {}
        for k, v in pairs(m:state_dict()) do if not k:find("lora_") then sd[k] = v end end
        return sd
    end)())
    lt.lora.load(fresh, dir)
    local ids = lt.randint(1, CFG.vocab_size, 1, 6)
    m:eval()
    fresh:eval()
    T.ok(fresh:forward(ids):equal(m:forward(ids)), "logits after loading")
    os.execute("rm -rf " .. dir)
end)

T.test("adapter files with problems give clear errors", function()
    local dir = tmpdir()
    local m = lt.llama.new(CFG)
    lt.lora.apply(m, { r = 4, target = { "q_proj" } })
    lt.lora.save(m, dir)
    local other = lt.llama.new({ vocab_size = 50, hidden_size = 24, intermediate_size = 32,
        num_hidden_layers = 3, num_attention_heads = 4, num_key_value_heads = 2 })
    T.raises(function() lt.lora.load(other, dir) end, "lora_A.weight has shape (4, 16) but the model's adapter expects (4, 24)", true)
    local cfg = lt.json.read_file(dir .. "/adapter_config.json")
    -- a rank_pattern the saved tensors do not have is a shape error naming them
    cfg.rank_pattern = { q_proj = 8 }
    lt.fs.write_atomic(dir .. "/adapter_config.json", lt.json.encode(cfg))
    T.raises(function() lt.lora.load(lt.llama.new(CFG), dir) end, "has shape (4, 16) but the model's adapter expects (8, 16)",
        true)
    cfg.rank_pattern = { ["q_proj|k_proj"] = 8 }
    lt.fs.write_atomic(dir .. "/adapter_config.json", lt.json.encode(cfg))
    T.raises(function() lt.lora.load(lt.llama.new(CFG), dir) end, "is a regular expression luatrain cannot read", true)
    cfg.rank_pattern = {}
    for key, v in pairs({ lora_bias = true, target_parameters = { "w" },
        trainable_token_indices = { 1, 2 }, layer_replication = { { 0, 1 } } }) do
        cfg[key] = v
        lt.fs.write_atomic(dir .. "/adapter_config.json", lt.json.encode(cfg))
        T.raises(function() lt.lora.load(lt.llama.new(CFG), dir) end, key .. " = ", true)
        cfg[key] = nil
    end
    -- wrong types name the file and the field
    local function expect(key, value, message)
        local old = cfg[key]
        cfg[key] = value
        lt.fs.write_atomic(dir .. "/adapter_config.json", lt.json.encode(cfg))
        T.raises(function() lt.lora.load(lt.llama.new(CFG), dir) end, message, true)
        cfg[key] = old
    end
    expect("target_modules", lt.json.array({ "q_proj", 7 }), "adapter_config.json: target_modules[2] must be a module name, got 7")
    expect("target_modules", 5, "adapter_config.json: target_modules must be a list of names or a regular expression, got 5")
    expect("layers_to_transform", "0,1", 'adapter_config.json: layers_to_transform must be a layer index or a list of them (0-based), got "0,1"')
    expect("layers_to_transform", lt.json.array({ 0, -1 }), "layers_to_transform must be a layer index or a list of them")
    expect("r", 2.5, "adapter_config.json: r must be a positive integer, got 2.5")
    expect("r", "8", 'adapter_config.json: r must be a positive integer, got "8"')
    expect("lora_alpha", -16, "adapter_config.json: lora_alpha must be a positive number, got -16")
    expect("lora_dropout", 1.5, "adapter_config.json: lora_dropout must be in [0, 1), got 1.5")
    expect("use_dora", "yes", 'adapter_config.json: use_dora must be true or false, got "yes"')
    -- the same keys as PEFT writes them when unused load as before
    cfg.lora_bias, cfg.exclude_modules, cfg.target_parameters = false, lt.json.null, lt.json.null
    lt.fs.write_atomic(dir .. "/adapter_config.json", lt.json.encode(cfg))
    lt.lora.load(lt.llama.new(CFG), dir)
    cfg.peft_type = "IA3"
    lt.fs.write_atomic(dir .. "/adapter_config.json", lt.json.encode(cfg))
    T.raises(function() lt.lora.load(lt.llama.new(CFG), dir) end, "peft_type is IA3", true)
    T.raises(function() lt.lora.save(lt.llama.new(CFG), dir) end, "no LoRA adapters", true)
    os.execute("rm -rf " .. dir)
end)

T.test("export_merged writes a bf16 Hugging Face model equal to base + adapter", function()
    lt.manual_seed(11)
    local m = lt.llama.new(CFG)
    lt.lora.apply(m, { r = 4, alpha = 8 })
    for _, r in ipairs(m:parameters()) do
        if r.name:find("lora_B") then r.param:normal_(0, 0.2) end
    end
    m:eval()
    local ids = lt.randint(0, 50, 2, 5)
    local want = m:forward(ids):clone()
    local dir = tmpdir()
    lt.lora.export_merged(m, dir)
    local merged = lt.llama.from_pretrained(dir)
    local cfg = lt.json.read_file(dir .. "/config.json")
    T.eq(cfg.torch_dtype, "bfloat16")
    local st = lt.safetensors.load(dir .. "/model.safetensors")
    T.eq(st["model.layers.0.self_attn.q_proj.weight"].dtype, "bf16")
    T.eq(st["model.layers.0.self_attn.q_proj.lora_A.weight"], nil)
    local _, rel = T.diff(merged:forward(ids), want)
    T.ok(rel < 2e-2, ("bf16 merged model within bf16 rounding (rel %.3g)"):format(rel))
    os.execute("rm -rf " .. dir)
end)

T.test("OLoRA and PiSSA start from the weight's own directions and save as adapters of the original base", function()
    local nnlora, layers = require "luatrain.nn.lora", require "luatrain.nn.layers"
    -- a weight whose singular values and vectors are known: S_i at (p_i, q_i), signs mixed;
    -- the gap after the third (7 to 5) lets 16 rounds of subspace iteration converge
    local S = { 3, 9, 1, 7, 5, 8, 2, 4 }
    local P, Q = { 2, 5, 7, 1, 9, 12, 16, 3 }, { 4, 20, 1, 13, 8, 24, 17, 10 }
    local base = layers.Linear(24, 16, { weight = lt.zeros(16, 24) })
    for i, s in ipairs(S) do base.weight[P[i]][Q[i]] = (i % 2 == 0) and -s or s end
    local W0 = base.weight:clone()
    local l = nnlora.LoRALinear(base, { r = 3, alpha = 6, init = "pissa" })
    -- s B A is the top three (9, 8, 7); the base keeps the rest
    local top = lt.zeros(16, 24)
    for i, s in ipairs(S) do if s >= 7 then top[P[i]][Q[i]] = W0[P[i]][Q[i]] end end
    local sba = lt.zeros(16, 24)
    lt.ops.matmul(l.lora_B.weight, l.lora_A.weight, { out = sba, alpha = l.scaling })
    local d = T.diff(sba, top)
    T.ok(d < 1e-4, ("PiSSA's s B A is the best rank-3 part (max |diff| %.3g)"):format(d))
    T.ok(T.diff(l:merged_weight(), W0) < 1e-5, "base + s B A is the weight it started from")
    -- OLoRA on a random weight: B's columns orthonormal, nothing changed at the start
    local rb = layers.Linear(24, 16)
    rb.weight:normal_(0, 1)
    local R0 = rb.weight:clone()
    local o = nnlora.LoRALinear(rb, { r = 4, alpha = 8, init = "olora" })
    local btb = lt.ops.matmul(o.lora_B.weight:t():contiguous(), o.lora_B.weight)
    local eye = lt.zeros(4, 4)
    for i = 1, 4 do eye[i][i] = 1 end
    T.ok(T.diff(btb, eye) < 1e-5, "OLoRA's B has orthonormal columns")
    T.ok(T.diff(o:merged_weight(), R0) < 1e-5, "OLoRA: base + s B A is the weight it started from")
    T.raises(function() nnlora.LoRALinear(layers.Linear(8, 8), { r = 2, init = "pissa", dora = true }) end,
        "init=pissa and DoRA do not combine", true)
    -- in a model: same logits at the start; after training the saved adapter is a plain one
    -- (rank 2r) that gives the trained logits on the original base
    for _, kind in ipairs({ "olora", "pissa" }) do
        local dir = tmpdir()
        lt.manual_seed(12)
        local m = lt.llama.new(CFG)
        m:eval()
        local ids = lt.randint(0, 50, 1, 6)
        local before = m:forward(ids):clone()
        lt.lora.apply(m, { r = 4, alpha = 8, init = kind })
        rel_close(m:forward(ids), before, 1e-5, kind .. ": logits at the start")
        for _, r in ipairs(m:parameters()) do
            if r.name:find("lora_[AB]") then
                local n = lt.empty(r.param:shape())
                n:normal_(0, 0.02)
                r.param:add_(n)
                n:free()
            end
        end
        local want = m:forward(ids):clone()
        lt.lora.save(m, dir)
        local cfg = lt.json.read_file(dir .. "/adapter_config.json")
        T.eq({ cfg.r, cfg.lora_alpha, cfg.init_lora_weights }, { 8, 16, true })
        lt.manual_seed(12)
        local fresh = lt.llama.new(CFG)
        lt.lora.load(fresh, dir)
        fresh:eval()
        rel_close(fresh:forward(ids), want, 1e-5, kind .. ": saved adapter on the original base")
        -- building it again splits the weights the same way (a resume rebuilds the model)
        lt.manual_seed(12)
        local again = lt.llama.new(CFG)
        lt.lora.apply(again, { r = 4, alpha = 8, init = kind })
        local w1 = m.model.layers:get(1).self_attn.q_proj.weight
        local w2 = again.model.layers:get(1).self_attn.q_proj.weight
        T.ok(w1:equal(w2), kind .. ": the same residual base when built again")
        os.execute("rm -rf " .. dir)
    end
end)

T.test("modules_to_save: lm_head and embed_tokens trained whole, saved in PEFT's layout, loaded back", function()
    lt.manual_seed(21)
    local m = lt.llama.new(CFG)
    local before = m:num_parameters(true)
    T.raises(function() lt.lora.apply(lt.llama.new(CFG), { r = 2, modules_to_save = { "nope" } }) end,
        "modules_to_save names \"nope\", which is no module of the model", true)
    T.raises(function() lt.lora.apply(lt.llama.new(CFG), { r = 2, modules_to_save = { "q_proj" } }) end,
        "which LoRA adapts too", true)
    lt.lora.apply(m, { r = 2, alpha = 4, modules_to_save = { "lm_head", "embed_tokens" } })
    local V, H = CFG.vocab_size, CFG.hidden_size
    local lora_only = 0
    for _, e in ipairs(lt.lora.layers(m)) do lora_only = lora_only + e[2].lora_A.weight:numel() + e[2].lora_B.weight:numel() end
    T.eq(m:num_parameters(true), lora_only + 2 * V * H, "the adapters and the two whole modules train")
    T.ok(before > m:num_parameters(true), "the rest is frozen")
    for _, r in ipairs(m:parameters()) do
        if not r.name:find("lora_A") then r.param:normal_(0, 0.05) end
    end
    m:eval()
    local ids = lt.randint(0, V, 1, 6)
    local want = m:forward(ids):clone()
    local dir = tmpdir()
    lt.lora.save(m, dir)
    T.eq(lt.json.read_file(dir .. "/adapter_config.json").modules_to_save, { "lm_head", "embed_tokens" })
    local tensors = lt.safetensors.load(dir .. "/adapter_model.safetensors")
    T.eq(tensors["base_model.model.lm_head.weight"]:shape(), { V, H })
    T.eq(tensors["base_model.model.model.embed_tokens.weight"]:shape(), { V, H })
    lt.manual_seed(21)
    local fresh = lt.llama.new(CFG)
    fresh:eval()
    T.ok(not fresh:forward(ids):equal(want), "the base alone differs")
    lt.lora.load(fresh, dir)
    T.ok(fresh:forward(ids):equal(want), "the adapter with its whole modules gives the trained logits")
    T.raises(function() lt.lora.load(fresh, dir, { name = "second" }) end, "cannot share a model", true)
    os.execute("rm -rf " .. dir)
end)

T.test("a rank too large for a layer is refused before any adapter is made", function()
    local m = lt.llama.new(CFG)
    lt.memory.collect()
    local before = lt.memory.stats("cpu").current
    T.raises(function() lt.lora.apply(m, { r = 100000 }) end, "r=100000 is larger than model.layers.0.self_attn.q_proj's smaller dimension", true)
    -- (a collection during the call may release earlier garbage: never more, though)
    T.ok(lt.memory.stats("cpu").current <= before, "nothing allocated")
    T.ok(m.lora_config == nil and #lt.lora.layers(m) == 0, "the model is unchanged")
    T.raises(function() lt.lora.apply(m, { r = 2, alpha = -1 }) end, "alpha must be a positive number, got -1", true)
    T.raises(function() lt.lora.apply(m, { r = 2, dropout = 1 }) end, "dropout must be in [0, 1), got 1", true)
    T.raises(function() lt.lora.apply(m, { r = 1.5 }) end, "r must be a positive integer, got 1.5", true)
end)

T.done()
