--[[
test_llama_io.lua - saving and loading Hugging Face folders: single file and shards,
dtype conversion, and no stale layout left behind to be loaded by mistake.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

lt.manual_seed(21)
local CFG = { vocab_size = 50, hidden_size = 16, intermediate_size = 32, num_hidden_layers = 2,
    num_attention_heads = 4, num_key_value_heads = 2 }

local function tmpdir()
    local d = os.tmpname()
    os.remove(d)
    return d
end

local function listing(dir)
    local p = io.popen("ls " .. dir)
    local names = {}
    for line in p:lines() do names[#names + 1] = line end
    p:close()
    return names
end

T.test("single-file save and load reproduce the logits exactly", function()
    local m = lt.llama.new(CFG)
    local dir = tmpdir()
    lt.llama.save_pretrained(m, dir)
    T.eq(listing(dir), { "config.json", "model.safetensors" })
    local cfg = lt.json.read_file(dir .. "/config.json")
    T.eq(cfg.architectures[1], "LlamaForCausalLM")
    T.eq(cfg.num_key_value_heads, 2)
    T.eq(cfg.torch_dtype, "float32")
    local ids = lt.randint(0, 50, { 2, 7 })
    T.ok(lt.llama.from_pretrained(dir):forward(ids):equal(m:forward(ids)))
    os.execute("rm -rf " .. dir)
end)

T.test("sharded bf16 save: index, shards, and values rounded to bf16", function()
    local m = lt.llama.new(CFG)
    local dir = tmpdir()
    lt.llama.save_pretrained(m, dir, { dtype = "bf16", max_shard_bytes = 3000 })
    local idx = lt.json.read_file(dir .. "/model.safetensors.index.json")
    local files, n = {}, 0
    for _, file in pairs(idx.weight_map) do
        files[file] = true
        n = n + 1
        T.ok(file:match("^model%-%d%d%d%d%d%-of%-%d%d%d%d%d%.safetensors$"), file)
    end
    T.ok(n == #m:state_list(), "every parameter is in the weight map")
    local shard_count = 0
    for _ in pairs(files) do shard_count = shard_count + 1 end
    T.ok(shard_count > 2, "several shards")
    T.eq(lt.json.read_file(dir .. "/config.json").torch_dtype, "bfloat16")
    local back = lt.llama.from_pretrained(dir)
    for name, t in pairs(m:state_dict()) do
        T.ok(back:state_dict()[name]:equal(t:to("bf16")), name)
    end
    -- back to one file: the index and its shards go, so nothing stale can be loaded
    lt.llama.save_pretrained(back, dir)
    T.eq(listing(dir), { "config.json", "model.safetensors" })
    os.execute("rm -rf " .. dir)
end)

T.test("a tensor missing from the index's shards is reported", function()
    local m = lt.llama.new(CFG)
    local dir = tmpdir()
    lt.llama.save_pretrained(m, dir, { max_shard_bytes = 3000 })
    local idx = lt.json.read_file(dir .. "/model.safetensors.index.json")
    os.remove(dir .. "/" .. idx.weight_map["model.norm.weight"])
    T.raises(function() lt.llama.from_pretrained(dir) end, "cannot open", true)
    os.execute("rm -rf " .. dir)
end)

T.done()
