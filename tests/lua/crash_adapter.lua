--[[
crash_adapter.lua - the child of test_adapter_kill.lua: saves a LoRA adapter into one
folder again and again, save k with every adapter weight equal to k and
base_model_name_or_path "save-k" in adapter_config.json, so a folder whose weights and
config disagree shows.

    luatrain tests/lua/crash_adapter.lua <folder> <first k> <last k>

It prints "started", then "saved <k>" after each save, flushing each line.
]]
local lt = require "luatrain"

local dir, first, last = arg[1], tonumber(arg[2]), tonumber(arg[3])
assert(dir and first and last, "usage: crash_adapter.lua <folder> <first k> <last k>")

lt.manual_seed(1)
local model = lt.llama.new({ vocab_size = 64, hidden_size = 32, intermediate_size = 48,
    num_hidden_layers = 2, num_attention_heads = 2, num_key_value_heads = 1,
    max_position_embeddings = 16, tie_word_embeddings = true })
lt.lora.apply(model, { r = 2, alpha = 4, target = "all-linear" })

local function say(...)
    io.stdout:write(table.concat({ ... }, " "), "\n")
    io.stdout:flush()
end

say("started")
for k = first, last do
    for _, t in pairs(lt.lora.adapter_state(model)) do t:fill_(k) end
    lt.lora.save(model, dir, { base_model_name_or_path = "save-" .. k })
    say("saved", k)
end
