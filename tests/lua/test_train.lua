--[[
test_train.lua - the training loop: loss falls, memory is flat to the byte after step 2,
the Lua garbage collector changes nothing, runs are deterministic, and the recipe's saved
model loads back with the same logits.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

local CFG = { vocab_size = 300, hidden_size = 64, intermediate_size = 160, num_hidden_layers = 2,
    num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 32,
    tie_word_embeddings = true }

-- Train a small model; gc: "stop" (collector off), "full" (full collection every step) or
-- nil. Memory is reported relative to what was allocated when the first step began.
local function run(steps, gc)
    lt.manual_seed(5)
    local model = lt.llama.new(CFG)
    local batches = lt.data.windows(lt.data.byte_stream(lt.data.tiny_stories(300, 3)), 4, 32, 11)
    local opt = lt.optim.AdamW(model:parameters(), { lr = 3e-3, betas = { 0.9, 0.95 }, weight_decay = 0.01 })
    local losses, peaks, currents = {}, {}, {}
    lt.memory.collect() -- set-up garbage (the i32 byte stream) goes before the baseline
    local base = lt.memory.stats("cpu").current
    lt.memory.reset_peak("cpu")
    if gc == "stop" then collectgarbage("stop") end
    for step = 1, steps do
        local ids, targets = batches:next()
        opt:zero_grad()
        losses[step] = model:forward_backward(ids, targets)
        local _, coef = lt.optim.grad_norm_clip_coef(model:parameters(), 1.0)
        opt:step({ grad_scale = coef })
        if gc == "full" then collectgarbage("collect") end
        local st = lt.memory.stats("cpu")
        peaks[step], currents[step] = st.peak - base, st.current - base
    end
    if gc == "stop" then collectgarbage("restart") end
    model:free_buffers()
    return losses, peaks, currents
end

local losses, peaks, currents = run(60)

T.test("loss falls", function()
    local head, tail = 0, 0
    for i = 1, 5 do head = head + losses[i] / 5 end
    for i = #losses - 4, #losses do tail = tail + losses[i] / 5 end
    T.ok(math.abs(losses[1] - math.log(300)) < 0.3, ("first loss near ln(V): %.3f"):format(losses[1]))
    T.ok(tail < head - 2.0, ("loss fell from %.3f to %.3f"):format(head, tail))
end)

T.test("peak and current memory flat to the byte after step 2", function()
    for step = 3, #peaks do
        T.eq(peaks[step], peaks[2], "peak bytes at step " .. step)
        T.eq(currents[step], currents[2], "current bytes at step " .. step)
    end
end)

T.test("the garbage collector plays no part, and runs are deterministic", function()
    local l1, p1, c1 = run(8, "stop")
    local l2, p2, c2 = run(8, "full")
    for i = 1, 8 do
        T.eq(l1[i], l2[i], "loss at step " .. i)
        T.eq(l1[i], losses[i], "loss at step " .. i .. " vs the first run")
        T.eq(p1[i], p2[i], "peak bytes at step " .. i)
        T.eq(c1[i], c2[i], "current bytes at step " .. i)
        T.eq(p1[i], peaks[i], "peak bytes at step " .. i .. " vs the first run")
    end
end)

T.test("train_tiny recipe: runs, logs JSONL, saves a model that loads back", function()
    local out = os.tmpname()
    os.remove(out)
    local cmd = ("%s recipes/train_tiny.lua steps=4 batch_size=2 seq_len=32 dim=32 n_layers=1 " ..
        "n_heads=2 n_kv_heads=1 ffn_dim=48 vocab_size=260 log_every=2 out=%s"):format(T.luatrain(), out)
    local text, code = T.run(cmd)
    T.eq(code, 0, "recipe failed:\n" .. text)
    T.ok(text:find("step     4 | loss", 1, true), "no step line in:\n" .. text)
    local lines = 0
    for line in io.lines(out .. "/log.jsonl") do
        local rec = lt.json.decode(line)
        T.ok(rec.loss and rec.lr and rec.grad_norm and rec.tokens_per_s and rec.peak_bytes, line)
        lines = lines + 1
    end
    T.eq(lines, 4, "log records")
    local model = lt.llama.from_pretrained(out .. "/model")
    T.eq(model.config.hidden_size, 32)
    T.eq(model.config.tie_word_embeddings, true)
    local ids = lt.randint(0, 256, { 1, 8 })
    local a = model:forward(ids):clone()
    lt.llama.save_pretrained(model, out .. "/again")
    local b = lt.llama.from_pretrained(out .. "/again"):forward(ids)
    T.ok(a:equal(b), "a saved and reloaded model gives different logits")
    os.execute("rm -rf " .. out)
end)

-- Losses by step from a run's log.jsonl.
local function logged_losses(path)
    local out = {}
    for line in io.lines(path) do
        local r = lt.json.decode(line)
        out[r.step] = r.loss
    end
    return out
end

T.test("a resumed run continues the same trajectory bit for bit", function()
    local small = "dim=32 n_layers=2 n_heads=2 n_kv_heads=1 ffn_dim=48 vocab_size=260 seq_len=32 " ..
        "batch_size=2 log_every=100 save=false warmup=2"
    local a, b = os.tmpname(), os.tmpname()
    os.remove(a)
    os.remove(b)
    local text, code = T.run(("%s recipes/train_tiny.lua %s steps=8 out=%s"):format(T.luatrain(), small, a))
    T.eq(code, 0, text)
    text, code = T.run(("%s recipes/train_tiny.lua %s steps=8 save_every=5 out=%s"):format(T.luatrain(), small, b))
    T.eq(code, 0, text)
    -- throw away what came after the checkpoint, then resume from it
    local full = logged_losses(a .. "/log.jsonl")
    text, code = T.run(("%s recipes/train_tiny.lua %s steps=8 out=%s.2 resume=%s"):format(
        T.luatrain(), small, b, b))
    T.eq(code, 0, text)
    T.ok(text:find("resumed from", 1, true), text)
    local resumed = logged_losses(b .. ".2/log.jsonl")
    for step = 6, 8 do
        T.eq(resumed[step], full[step], "loss at step " .. step)
    end
    T.eq(resumed[5], nil, "the resumed run starts after the checkpoint")
    os.execute(("rm -rf %s %s %s.2"):format(a, b, b))
end)

T.test("bad recipe settings are reported, not crashed on", function()
    local text, code = T.run(T.luatrain() .. " recipes/train_tiny.lua stepz=3")
    T.ok(code ~= 0, "an unknown setting must fail")
    T.ok(text:find("steps", 1, true), "the message should suggest 'steps':\n" .. text)
end)

T.done()
