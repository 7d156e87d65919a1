--[[
test_dist.lua - data parallelism's pieces in one process (a world of 1): ZeRO stages 1 and
2 train bit for bit like the plain optimizer, their checkpoints are in the single-process
layout (a ZeRO checkpoint resumes a plain run and the other way round), DDP's buckets cover
the flat gradients in reverse order with the first one small, and the process group of a
lone process is the identity without loading the comm layer. The same code over several
ranks is tested under mpirun (tests/dist/).
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

local CFG = { vocab_size = 61, hidden_size = 32, intermediate_size = 48, num_hidden_layers = 3,
    num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 32 }

local function dataset()
    local samples = {}
    for i = 1, 40 do
        local n = 4 + (i * 5) % 9
        local ids, train = {}, {}
        for j = 1, n do
            ids[j] = (i * 13 + j * 7) % 60 + 1
            train[j] = j > 2
        end
        samples[i] = { ids = ids, train = train }
    end
    return lt.data.tokens.from_samples(samples)
end

local function tmpdir()
    local d = os.tmpname()
    os.remove(d)
    return d
end

-- Train `steps` steps; returns the model and the trainer's result.
local function train(opts)
    lt.manual_seed(7)
    local model = lt.llama.new(CFG)
    local o = { model = model, train = dataset(), batch_size = 3, seq_len = 12, steps = opts.steps or 4,
        grad_accum = 2, lr = 5e-3, weight_decay = 0.1, grad_clip = 0.05, schedule = "constant", seed = 3 }
    for k, v in pairs(opts) do o[k] = v end
    local res = lt.trainer.finetune(o)
    return model, res
end

local function same_weights(a, b, what)
    local sb = b:state_dict()
    for name, t in pairs(a:state_dict()) do T.ok(t:equal(sb[name]), what .. ": " .. name) end
end

T.test("a lone process: the group is the identity and the comm layer is not loaded", function()
    local pg = lt.dist.init()
    T.eq(pg.world, 1)
    T.eq(pg.rank, 0)
    T.ok(pg:is_main())
    T.eq(pg:sum_numbers({ 1.5, 2 }), { 1.5, 2 })
    local t = lt.randn(5)
    local c = t:clone()
    pg:all_reduce(t):wait()
    T.ok(t:equal(c))
    T.ok(package.loaded["luatrain.comm"] == nil, "no comm layer in a lone process")
end)

T.test("ZeRO-1 and ZeRO-2 in one process train bit for bit like the plain optimizer", function()
    local plain = train({ zero = 0 })
    for _, stage in ipairs({ 1, 2 }) do
        local m, res = train({ zero = stage })
        same_weights(m, plain, "zero=" .. stage)
        -- the moments live for the parameters in the shard only (here all of them, without
        -- the alignment gaps): 8 bytes per element
        local numel = 0
        for _, r in ipairs(m:parameters()) do numel = numel + r.param:numel() end
        T.eq(res.optimizer:state_bytes(), 8 * numel)
    end
end)

T.test("ZeRO checkpoints are in the single-process layout: either kind resumes the other", function()
    local straight = train({ steps = 6 })
    for _, stages in ipairs({ { 0, 0 }, { 2, 0 }, { 0, 1 }, { 1, 2 } }) do
        local dir = tmpdir()
        train({ steps = 3, zero = stages[1], checkpoint_dir = dir, save_every = 3 })
        local resumed = train({ steps = 6, zero = stages[2], checkpoint_dir = dir, resume = "auto" })
        same_weights(resumed, straight, ("saved with zero=%d, resumed with zero=%d"):format(stages[1], stages[2]))
        lt.fs.remove_tree(dir)
    end
end)

T.test("DDP's buckets cover the flat gradients in reverse order, the first one small", function()
    lt.manual_seed(1)
    local model = lt.llama.new({ vocab_size = 512, hidden_size = 128, intermediate_size = 384,
        num_hidden_layers = 4, num_attention_heads = 4, max_position_embeddings = 32 })
    model:flatten_parameters({ trainable_only = true })
    local ddp = require("luatrain.dist.ddp").new(model, lt.dist.group(), { bucket_mb = 0.5, first_mb = 0.1 })
    local layout = ddp:layout()
    local g = model:flat_parameters()[1]
    T.ok(#layout >= 4, "several buckets")
    T.eq(layout[1].hi, g.numel, "the first bucket ends the buffer")
    T.eq(layout[#layout].lo, 0, "the last one starts it")
    for i = 2, #layout do
        T.eq(layout[i].hi, layout[i - 1].lo, "contiguous")
        T.ok(layout[i].ready >= layout[i - 1].ready, "later buckets are ready later")
    end
    T.ok((layout[1].hi - layout[1].lo) * 4 < (layout[2].hi - layout[2].lo) * 4, "the first bucket is the small one")
    T.eq(layout[#layout].ready, 5, "the embeddings are complete only at the end")
    ddp:close()
end)

T.test("trainer settings: zero must be 0, 1, 2 or 3; a batch source must match the world", function()
    local model = lt.llama.new(CFG)
    T.raises(function() lt.trainer.new{ model = model, train = dataset(), zero = 4 } end, "zero must be 0, 1, 2 or 3",
        true)
    local sharded = lt.data.loader(dataset(), { seq_len = 8, rank = 0, world = 2 })
    T.raises(function() lt.trainer.new{ model = model, train = sharded } end,
        "a job of 1 processes needs a batch source sharded over them", true)
end)

T.done()
