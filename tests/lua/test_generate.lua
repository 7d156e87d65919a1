--[[
test_generate.lua - generation with a KV cache and the token sampler: the cached greedy
continuation equals recomputing the whole sequence each step; sampling is reproducible
from a seed, follows softmax(logits / temperature), and top-k / top-p cut the support;
stop strings cut the text and the stream; several prompts at once give each what it gets alone.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local ffi = require "ffi"
local C = require("luatrain.core").C

local CFG = { vocab_size = 60, hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2,
    num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 64 }

T.test("greedy with the KV cache equals full recomputation", function()
    lt.manual_seed(2)
    local m = lt.llama.new(CFG)
    local prompt = { 5, 9, 13, 2, 7 }
    local _, ids = lt.generate(m, nil, prompt, { max_new_tokens = 12 })
    T.eq(#ids, 12)
    local seq = { unpack(prompt) }
    for i = 1, 12 do
        local logits = m:forward(lt.tensor({ seq }, "i64"))
        local best = logits:select(2, #seq):view(CFG.vocab_size):argmax(1):item()
        T.eq(ids[i], best, "token " .. i)
        seq[#seq + 1] = best
    end
end)

T.test("stop strings end the text where one first appears, and nothing of one is streamed", function()
    local dir = "recipes/assets/tiny_facts/model"
    lt.manual_seed(2)
    local m = lt.llama.from_pretrained(dir)
    local tok = lt.tokenizer.load(dir)
    local prompt = tok:encode("What pet does Guzuzu have?", { add_special_tokens = false })
    local full = lt.generate(m, tok, prompt, { max_new_tokens = 24 })
    T.ok(#full >= 8, "a continuation to cut: " .. full)
    -- a stop string from inside the continuation, spanning several tokens
    local stop = full:sub(4, 6)
    local want = full:sub(1, full:find(stop, 1, true) - 1)
    local pieces = {}
    local text = lt.generate(m, tok, prompt, { max_new_tokens = 24, stop_strings = { "never appears", stop },
        on_text = function(p) pieces[#pieces + 1] = p end })
    T.eq(text, want)
    T.eq(table.concat(pieces), want, "streamed")
    T.raises(function() lt.generate(m, nil, prompt, { stop_strings = { "x" } }) end, "stop_strings need a tokenizer")
end)

T.test("several prompts at once: each gets what generating it alone gives, greedy and sampled", function()
    local dir = "recipes/assets/tiny_facts/model"
    lt.manual_seed(2)
    local m = lt.llama.from_pretrained(dir)
    local tok = lt.tokenizer.load(dir)
    -- two of the same length (one batch of 2), two others
    local prompts = { "What pet does Guzuzu have?", "What pet does Patove have?", "Hi", "What is Tokaka's color?" }
    T.eq(#tok:encode(prompts[1]), #tok:encode(prompts[2]), "a batch of two")
    for _, opts in ipairs({ { max_new_tokens = 12 }, { max_new_tokens = 12, temperature = 0.9, top_p = 0.95, seed = 7 } }) do
        local got = lt.generate.generate_batch(m, tok, prompts, opts)
        for i, p in ipairs(prompts) do
            local o = {}
            for k, v in pairs(opts) do o[k] = v end
            o.seed = (opts.seed or 0) + i - 1
            local text, ids = lt.generate(m, tok, p, o)
            T.eq(got[i].ids, ids, ("prompt %d, temperature %s"):format(i, tostring(opts.temperature or 0)))
            T.eq(got[i].text, text)
        end
    end
    T.raises(function() lt.generate.generate_batch(m, tok, {}) end, "non%-empty list")
end)

T.test("sampling is reproducible and stops where asked", function()
    lt.manual_seed(2)
    local m = lt.llama.new(CFG)
    local opts = { max_new_tokens = 15, temperature = 1.0, top_k = 10, top_p = 0.9, seed = 3 }
    local _, a = lt.generate(m, nil, { 1, 2, 3 }, opts)
    local _, b = lt.generate(m, nil, { 1, 2, 3 }, opts)
    T.eq(a, b)
    local _, g1 = lt.generate(m, nil, { 1, 2, 3 }, { max_new_tokens = 8, temperature = 1, top_k = 1 })
    local _, g0 = lt.generate(m, nil, { 1, 2, 3 }, { max_new_tokens = 8 })
    T.eq(g1, g0, "top_k = 1 is greedy")
    local _, stopped = lt.generate(m, nil, { 1, 2, 3 }, { max_new_tokens = 8, stop_ids = { g0[3] } })
    T.eq(#stopped, 2, "stops before a stop id")
    T.raises(function() lt.generate(m, nil, { 1 }, { max_new_tokens = 64 }) end, "exceed the model's 64 positions", true)
    T.raises(function() lt.generate(m, nil, {}, {}) end, "the prompt is empty", true)
end)

local function draw_counts(logits, n, temperature, top_k, top_p)
    local rng = ffi.new("lt_rng")
    C.lt_rng_seed(rng, 11)
    local out = ffi.new("int32_t[1]")
    local counts = {}
    for _ = 1, n do
        assert(C.lt_sample_logits(logits, temperature, top_k, top_p, rng, out) == 0)
        counts[out[0]] = (counts[out[0]] or 0) + 1
    end
    return counts
end

T.test("samples follow softmax(logits / temperature); top-k and top-p cut the support", function()
    local logits = lt.tensor({ 2.0, 1.0, 0.5, 0.0, -1.0 })
    local n = 20000
    for _, temp in ipairs({ 1.0, 0.5 }) do
        local counts = draw_counts(logits, n, temp, 0, 1)
        local z = 0
        for i = 1, 5 do z = z + math.exp(logits[i] / temp) end
        for i = 1, 5 do
            local p = math.exp(logits[i] / temp) / z
            local got = (counts[i - 1] or 0) / n
            -- five standard deviations of a binomial proportion
            T.ok(math.abs(got - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-3,
                ("temperature %g, token %d: %.4f vs %.4f"):format(temp, i - 1, got, p))
        end
    end
    local k2 = draw_counts(logits, 2000, 1.0, 2, 1)
    T.ok(k2[0] and k2[1] and not k2[2] and not k2[3] and not k2[4], "top_k = 2 keeps the two best")
    -- p(0) = 0.587, p(0) + p(1) = 0.803: top_p = 0.7 keeps tokens 0 and 1
    local p7 = draw_counts(logits, 2000, 1.0, 0, 0.7)
    T.ok(p7[0] and p7[1] and not p7[2], "top_p = 0.7 keeps the smallest set reaching 0.7")
    local greedy = draw_counts(logits, 10, 0, 0, 1)
    T.eq(greedy[0], 10, "temperature 0 is greedy")
    local nan = lt.tensor({ 1, 0 / 0 })
    T.raises(function()
        local rng = ffi.new("lt_rng")
        require("luatrain.core").check(C.lt_sample_logits(nan, 1, 0, 1, rng, ffi.new("int32_t[1]")))
    end, "logit 1 is NaN", true)
end)

T.done()
