--[[
crash_train.lua - the child of test_checkpoint_kill.lua: trains a tiny Llama with AdamW on
random windows of a built-in text, saving a checkpoint into the run folder after every
step (keep_last = 2), and resumes from the run folder's newest complete checkpoint when
there is one. At the end it writes the weights to <run>/final.safetensors.

    luatrain tests/lua/crash_train.lua <run folder> <steps>

It prints "fresh" or "resumed <step>", then "saved <step>" after each checkpoint and
"done" at the end, flushing each line, so the test can follow it.
]]
local lt = require "luatrain"

local run, steps = arg[1], tonumber(arg[2])
assert(run and steps, "usage: crash_train.lua <run folder> <steps>")

lt.set_num_threads(1)
lt.manual_seed(5)
local model = lt.llama.new({ vocab_size = 256, hidden_size = 32, intermediate_size = 48,
    num_hidden_layers = 2, num_attention_heads = 2, num_key_value_heads = 1,
    max_position_embeddings = 16, tie_word_embeddings = true })
local opt = lt.optim.AdamW(model:parameters(), { lr = 3e-3, betas = { 0.9, 0.95 }, weight_decay = 0.1 })
local batches = lt.data.windows(lt.data.byte_stream(lt.data.tiny_stories(50, 3)), 2, 16, 11)

local function say(...)
    io.stdout:write(table.concat({ ... }, " "), "\n")
    io.stdout:flush()
end

local first = 1
if lt.checkpoint.latest(run) then
    local st = lt.checkpoint.load(run, { model = model, optimizer = opt, loader = batches })
    first = st.step + 1
    say("resumed", st.step)
else
    say("fresh")
end
for step = first, steps do
    local ids, targets = batches:next()
    opt:zero_grad()
    model:forward_backward(ids, targets)
    local _, coef = lt.optim.grad_norm_clip_coef(model:parameters(), 1.0)
    opt:step({ grad_scale = coef })
    lt.checkpoint.save(run, { model = model, optimizer = opt, loader = batches, step = step, keep_last = 2 })
    say("saved", step)
end
lt.safetensors.save(run .. "/final.safetensors", model:state_dict())
say("done")
