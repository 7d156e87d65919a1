--[[
test_trainer.lua - the trainer's stages: token-weighted gradient accumulation (grad_accum = 4
x batch 2 gives the gradients of one batch of 8), stage order and hooks, caller-built
optimizers and LoRA+ groups, non-finite losses and gradients stopping the run at the step
they appear with nothing corrupt written, and steps that train nothing.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

local CFG = { vocab_size = 61, hidden_size = 32, intermediate_size = 48, num_hidden_layers = 2,
    num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 32 }

-- Eight samples of different lengths whose trained (completion) parts differ in size, so
-- micro-batches of two hold very different numbers of trained targets.
local function dataset()
    lt.manual_seed(77)
    local lens = { 5, 12, 3, 11, 7, 4, 10, 6 }
    local prompt = { 1, 8, 2, 3, 6, 1, 7, 2 }
    local samples = {}
    for i, n in ipairs(lens) do
        local ids, train = {}, {}
        local r = lt.randint(1, CFG.vocab_size, n)
        for j = 1, n do
            ids[j] = r:get(j)
            train[j] = j > prompt[i]
        end
        samples[i] = { ids = ids, train = train }
    end
    return lt.data.tokens.from_samples(samples)
end

local function tmpdir()
    local d = os.tmpname()
    os.remove(d)
    lt.fs.make_dirs(d)
    return d
end

-- The gradients after the first step's forward_backward stage, and the step's loss.
local function first_step_grads(batch_size, grad_accum)
    lt.manual_seed(5)
    local model = lt.llama.new(CFG)
    local tr = lt.trainer.new{ model = model, train = dataset(), batch_size = batch_size, seq_len = 12,
        packing = false, shuffle = false, grad_accum = grad_accum, steps = 1, lr = 1e-3 }
    local grads, loss
    tr:hook("forward_backward", function(_, st)
        loss = st.loss
        grads = {}
        for _, r in ipairs(model:parameters()) do grads[r.name] = r.grad:clone() end
    end)
    tr:run()
    return grads, loss, model
end

T.test("grad_accum = 4 x batch 2 gives the gradients and loss of one batch of 8", function()
    local g8, loss8 = first_step_grads(8, 1)
    local g2, loss2 = first_step_grads(2, 4)
    T.near(loss2, loss8, 1e-6, 0, "step loss")
    local n = 0
    for name, g in pairs(g8) do
        local _, rel = T.diff(g2[name], g)
        T.ok(rel <= 2e-6, ("%s: relative difference %.3g"):format(name, rel))
        n = n + 1
    end
    T.ok(n > 10)
    -- the micro-batches really differ in trained targets, so averaging their mean losses
    -- (the old rule) would have weighed tokens unequally and given another loss
    local ds = dataset()
    local l = lt.data.loader(ds, { batch_size = 2, seq_len = 12, packing = false, shuffle = false })
    local counts, means = {}, {}
    lt.manual_seed(5)
    local model = lt.llama.new(CFG)
    for i = 1, 4 do
        local b = l:next()
        counts[i] = b.trained
        means[i] = model:loss(b.ids, b.targets, b)
    end
    T.ok(counts[1] ~= counts[2] or counts[2] ~= counts[3], "micro-batches hold different trained counts")
    local mean_of_means = (means[1] + means[2] + means[3] + means[4]) / 4
    T.ok(math.abs(mean_of_means - loss8) > 1e-3, "the old rule would differ")
end)

T.test("the stages run in order and hooks see and change the state", function()
    lt.manual_seed(1)
    local model = lt.llama.new(CFG)
    local tr = lt.trainer.new{ model = model, train = dataset(), batch_size = 4, seq_len = 12, steps = 2,
        packing = false, shuffle = false }
    local order = {}
    for _, s in ipairs(lt.trainer.STAGES) do
        tr:hook_before(s, function(_, st) order[#order + 1] = "before " .. s .. " " .. st.step end)
        tr:hook(s, function(_, st) order[#order + 1] = s .. " " .. st.step end)
    end
    -- reduce_gradients is where data parallelism averages: here it zeroes the gradients,
    -- so the step must not move the weights (AdamW with weight decay 0 and zero moments)
    local before
    tr:hook_before("forward_backward", function() before = model.model.norm.weight:clone() end)
    tr:hook("reduce_gradients", function() model:zero_grad() end)
    tr:hook("unscale_check", function(_, st) T.eq(st.grad_norm, 0) end)
    local res = tr:run()
    T.ok(model.model.norm.weight:equal(before), "zeroed gradients: no update")
    T.eq(res.steps, 2)
    T.eq(order[1], "before forward_backward 1")
    T.eq(order[2], "forward_backward 1")
    T.eq(order[#order], "log 2")
    local pos = {}
    for i, o in ipairs(order) do pos[o] = i end
    for i = 2, #lt.trainer.STAGES do
        T.ok(pos[lt.trainer.STAGES[i - 1] .. " 1"] < pos[lt.trainer.STAGES[i] .. " 1"], lt.trainer.STAGES[i])
    end
    T.raises(function() tr:hook("backprop", print) end, 'unknown stage "backprop"', true)
end)

T.test("the trainer uses the caller's optimizer; LoRA+ puts the B matrices at ratio x lr", function()
    lt.manual_seed(3)
    local model = lt.llama.new(CFG)
    lt.lora.apply(model, { r = 2, target = { "q_proj", "v_proj" } })
    local groups = lt.optim.lora_plus_groups(model, { lr = 1e-3, ratio = 16 })
    T.eq(#groups, 2)
    T.near(groups[2].lr, 16e-3, 1e-12)
    for _, r in ipairs(groups[2].params) do T.ok(r.name:find("lora_B"), r.name) end
    for _, r in ipairs(groups[1].params) do T.ok(r.name:find("lora_A"), r.name) end
    local opt = lt.optim.AdamW(groups, { weight_decay = 0 })
    local tr = lt.trainer.new{ model = model, train = dataset(), optimizer = opt, batch_size = 4, seq_len = 12,
        steps = 1, schedule = "constant", packing = false }
    T.ok(tr.optimizer == opt)
    tr:run()
    -- AdamW's first step moves every weight by about lr (sign of the gradient): B moved ~16x more
    local b_move = 0
    for _, r in ipairs(model:parameters()) do
        if r.name:find("lora_B") then b_move = math.max(b_move, r.param:abs():max():item()) end
    end
    T.ok(b_move > 8e-3 and b_move < 2e-2, ("B moved by %.3g"):format(b_move))
    -- the option does the same
    local tr2 = lt.trainer.new{ model = model, train = dataset(), lora_plus_ratio = 4, lr = 2e-3,
        batch_size = 4, seq_len = 12, steps = 1, packing = false }
    T.near(tr2.optimizer.groups[2].lr, 8e-3, 1e-12)
    T.raises(function() lt.optim.lora_plus_groups(lt.llama.new(CFG), {}) end, "no LoRA B matrices")
end)

T.test("a non-finite loss stops the run at its step; the log and the weights hold the step before", function()
    lt.manual_seed(9)
    local model = lt.llama.new(CFG)
    local dir = tmpdir()
    local tr = lt.trainer.new{ model = model, train = dataset(), batch_size = 4, seq_len = 12, steps = 6,
        packing = false, log = dir .. "/log.jsonl" }
    local saved
    tr:hook("log", function(_, st)
        if st.step == 2 then saved = model:state_dict() for k, v in pairs(saved) do saved[k] = v:clone() end end
    end)
    -- step 3 starts from a weight poisoned with NaN
    tr:hook_before("forward_backward", function(_, st)
        if st.step == 3 then model.model.layers:get(2).mlp.up_proj.weight:set(5, 0 / 0) end
    end)
    T.raises(function() tr:run() end, "step 3: the loss is nan", true)
    local lines = {}
    for line in io.lines(dir .. "/log.jsonl") do lines[#lines + 1] = lt.json.decode(line) end
    T.eq(#lines, 2, "the log holds steps 1 and 2")
    T.eq(lines[2].step, 2)
    for name, t in pairs(model:state_dict()) do
        if name ~= "model.layers.1.mlp.up_proj.weight" then T.ok(t:equal(saved[name]), name .. " was updated") end
    end
    os.execute("rm -rf " .. dir)
end)

T.test("a non-finite gradient names its parameter with detect_nonfinite = parameter", function()
    lt.manual_seed(9)
    local model = lt.llama.new(CFG)
    local tr = lt.trainer.new{ model = model, train = dataset(), batch_size = 4, seq_len = 12, steps = 3,
        packing = false, detect_nonfinite = "parameter" }
    tr:hook("forward_backward", function(_, st)
        if st.step == 2 then model.model.layers:get(1).self_attn.k_proj:grad("weight"):set(3, math.huge) end
    end)
    T.raises(function() tr:run() end,
        "step 2: the gradient norm is inf; the first non-finite gradient is model.layers.0.self_attn.k_proj.weight's", true)
    -- without the setting the message says how to find it
    local tr2 = lt.trainer.new{ model = lt.llama.new(CFG), train = dataset(), batch_size = 4, seq_len = 12,
        steps = 2, packing = false }
    tr2:hook("forward_backward", function() tr2.params[1].grad:set(1, 0 / 0) end)
    T.raises(function() tr2:run() end, "detect_nonfinite=parameter names the first parameter", true)
    T.raises(function() lt.trainer.new{ model = model, train = dataset(), detect_nonfinite = "yes" } end,
        'detect_nonfinite must be "step" or "parameter"', true)
end)

T.test("clipping never turns a NaN norm into a factor of 1", function()
    local model = lt.llama.new(CFG)
    local p = model:parameters()
    p[1].grad:fill_(0 / 0)
    T.raises(function() lt.optim.grad_norm_clip_coef(p, 1.0) end, "the gradient norm is nan", true)
end)

T.test("a step whose micro-batches train nothing updates nothing", function()
    lt.manual_seed(4)
    local samples = {}
    for i = 1, 4 do samples[i] = { ids = { 1, 2, 3, 4 }, train = { false, false, false, false } } end
    local model = lt.llama.new(CFG)
    local before = model.model.norm.weight:clone()
    local res = lt.trainer.finetune{ model = model, train = lt.data.tokens.from_samples(samples), batch_size = 2,
        seq_len = 4, steps = 2, packing = false, weight_decay = 0.1 }
    T.eq(res.skipped_steps, 2)
    T.ok(model.model.norm.weight:equal(before))
end)

T.done()
