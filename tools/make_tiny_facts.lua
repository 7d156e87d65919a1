--[[
make_tiny_facts.lua - build the small model and instruction dataset that
recipes/qlora_llama.lua fine-tunes by default (recipes/assets/tiny_facts/).

    luatrain tools/make_tiny_facts.lua [steps=4000 out=recipes/assets/tiny_facts]

The world: made-up people, each with a favorite color and a pet. A tiny Llama
(byte-level vocabulary, 4 layers of 128) is pretrained on plain statements of these facts,
each said several ways ("Mira's favorite color is teal.", "The pet of Mira is a fox.").
It knows the facts but has never seen a question. The instruction dataset then asks
about them in the Llama 3 chat format:
    user: What is Mira's favorite color?    assistant: teal
train.jsonl asks about two thirds of the people, eval.jsonl about the rest. So a
fine-tune can only score on eval by learning to answer questions from what the frozen
base already knows, which is what LoRA on a quantized base is for: exact-match accuracy
on eval starts near 0 and rises when the fine-tune works.

Everything is drawn from fixed seeds, so the files are reproducible. Written:
  model/config.json, model/model.safetensors (bf16), model/tokenizer.json (256 byte
  tokens in byte order and 5 special tokens, Llama 3 style, no merges),
  model/tokenizer_config.json, train.jsonl, eval.jsonl, facts.txt (the pretraining text).
]]
local lt = require "luatrain"
local ffi = require "ffi"

local cfg = lt.config {
    out = { "recipes/assets/tiny_facts", "output folder" },
    people = { 60, "made-up people", type = "int" },
    steps = { 4000, "pretraining steps", type = "int" },
    batch_size = { 16, "sequences per pretraining step", type = "int" },
    seq_len = { 96, "pretraining window", type = "int" },
    lr = { 3e-3, "peak pretraining learning rate" },
    seed = { 7, "seed of the world and the weights", type = "int" },
}

-- ---- the world --------------------------------------------------------------------------
local rng = ffi.new("lt_rng")
require("luatrain.core").C.lt_rng_seed(rng, cfg.seed)
local draw = lt.empty({ 1 }, { dtype = "i64" })
local function pick(n)
    require("luatrain.core").check(require("luatrain.core").C.lt_tensor_randint(draw, 0, n, rng))
    return draw[1] + 1
end

local syllables = { "ka", "lo", "mi", "ra", "to", "ne", "zu", "bi", "sa", "ve", "do", "ri", "pa", "mo", "fe", "gu" }
local colors = { "red", "blue", "green", "teal", "gold", "pink", "gray", "plum" }
local pets = { "cat", "dog", "fox", "owl", "frog", "goat", "duck", "bee" }
local people, used = {}, {}
while #people < cfg.people do
    local n = syllables[pick(#syllables)] .. syllables[pick(#syllables)]
    if pick(2) == 1 then n = n .. syllables[pick(#syllables)] end
    n = n:sub(1, 1):upper() .. n:sub(2)
    if not used[n] then
        used[n] = true
        people[#people + 1] = { name = n, color = colors[pick(#colors)], pet = pets[pick(#pets)] }
    end
end

local statements = {
    function(p) return p.name .. "'s favorite color is " .. p.color .. "." end,
    function(p) return "The favorite color of " .. p.name .. " is " .. p.color .. "." end,
    function(p) return p.name .. " likes the color " .. p.color .. " best." end,
    function(p) return p.name .. " has a pet " .. p.pet .. "." end,
    function(p) return "The pet of " .. p.name .. " is a " .. p.pet .. "." end,
    function(p) return p.name .. " lives with a " .. p.pet .. "." end,
}
local lines = {}
for _ = 1, 40 do
    for _, p in ipairs(people) do
        for _, s in ipairs(statements) do lines[#lines + 1] = s(p) end
    end
end
for i = #lines, 2, -1 do
    local j = pick(i)
    lines[i], lines[j] = lines[j], lines[i]
end
local text = table.concat(lines, " ")

-- ---- files ------------------------------------------------------------------------------
local out = cfg.out:gsub("/+$", "")
lt.fs.make_dirs(out .. "/model")

-- GPT-2's byte-to-character map, so byte b is vocabulary entry b
local function bytes_to_unicode()
    local printable = {}
    for b = 33, 126 do printable[b] = true end
    for b = 161, 172 do printable[b] = true end
    for b = 174, 255 do printable[b] = true end
    local map, n = {}, 0
    for b = 0, 255 do
        if printable[b] then
            map[b] = b
        else
            map[b] = 256 + n
            n = n + 1
        end
    end
    return map
end
local function utf8_char(cp)
    if cp < 0x80 then return string.char(cp) end
    if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
    return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end
local specials = { "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>" }
local vocab = {}
for b, cp in pairs(bytes_to_unicode()) do vocab[utf8_char(cp)] = b end
local added = {}
for i, s in ipairs(specials) do
    added[i] = { id = 255 + i, content = s, single_word = false, lstrip = false, rstrip = false,
        normalized = false, special = true }
end
local tokenizer = {
    version = "1.0", truncation = lt.json.null, padding = lt.json.null,
    added_tokens = lt.json.array(added),
    normalizer = lt.json.null,
    pre_tokenizer = { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = true },
    post_processor = {
        type = "TemplateProcessing",
        single = lt.json.array({ { SpecialToken = { id = "<|begin_of_text|>", type_id = 0 } }, { Sequence = { id = "A", type_id = 0 } } }),
        pair = lt.json.array({ { SpecialToken = { id = "<|begin_of_text|>", type_id = 0 } }, { Sequence = { id = "A", type_id = 0 } },
            { SpecialToken = { id = "<|begin_of_text|>", type_id = 1 } }, { Sequence = { id = "B", type_id = 1 } } }),
        special_tokens = { ["<|begin_of_text|>"] = { id = "<|begin_of_text|>", ids = lt.json.array({ 256 }),
            tokens = lt.json.array({ "<|begin_of_text|>" }) } },
    },
    decoder = { type = "ByteLevel", add_prefix_space = true, trim_offsets = true, use_regex = true },
    model = { type = "BPE", dropout = lt.json.null, unk_token = lt.json.null, continuing_subword_prefix = lt.json.null,
        end_of_word_suffix = lt.json.null, fuse_unk = false, byte_fallback = false, ignore_merges = false,
        vocab = vocab, merges = lt.json.array({}) },
}
lt.fs.write_atomic(out .. "/model/tokenizer.json", lt.json.encode(tokenizer, { indent = 2 }) .. "\n")
lt.fs.write_atomic(out .. "/model/tokenizer_config.json", lt.json.encode({
    bos_token = "<|begin_of_text|>", eos_token = "<|eot_id|>", clean_up_tokenization_spaces = false,
    tokenizer_class = "PreTrainedTokenizerFast", model_max_length = 256 }, { indent = 2 }) .. "\n")
lt.fs.write_atomic(out .. "/facts.txt", text .. "\n")

local function qa_line(p, attr)
    local q = attr == "color" and ("What is " .. p.name .. "'s favorite color?") or ("What pet does " .. p.name .. " have?")
    return lt.json.encode({ messages = lt.json.array({ { role = "user", content = q },
        { role = "assistant", content = p[attr] } }) })
end
local n_train = math.floor(#people * 2 / 3)
local train, eval = {}, {}
for i, p in ipairs(people) do
    local dest = i <= n_train and train or eval
    dest[#dest + 1] = qa_line(p, "color")
    dest[#dest + 1] = qa_line(p, "pet")
end
lt.fs.write_atomic(out .. "/train.jsonl", table.concat(train, "\n") .. "\n")
lt.fs.write_atomic(out .. "/eval.jsonl", table.concat(eval, "\n") .. "\n")

-- ---- pretraining ------------------------------------------------------------------------
local tok = lt.tokenizer.load(out .. "/model")
lt.manual_seed(cfg.seed)
local model = lt.llama.new({ vocab_size = 261, hidden_size = 128, intermediate_size = 344,
    num_hidden_layers = 4, num_attention_heads = 4, num_key_value_heads = 4,
    max_position_embeddings = 256, rms_norm_eps = 1e-5, tie_word_embeddings = true,
    bos_token_id = tok.bos_id, eos_token_id = tok.eos_id })
local stream = lt.tensor(tok:encode(text, { add_special_tokens = false }), "i32")
local batches = lt.data.windows(stream, cfg.batch_size, cfg.seq_len, cfg.seed)
local opt = lt.optim.AdamW(model:parameters(), { lr = cfg.lr, betas = { 0.9, 0.95 }, weight_decay = 0 })
local sched = lt.optim.schedule("cosine", { warmup_steps = 50, total_steps = cfg.steps, min_factor = 0.05 })
local t0 = lt.fs.now()
for step = 1, cfg.steps do
    local ids, targets = batches:next()
    opt:set_lr_factor(sched(step))
    opt:zero_grad()
    local loss = model:forward_backward(ids, targets)
    local _, coef = lt.optim.grad_norm_clip_coef(model:parameters(), 1.0)
    opt:step({ grad_scale = coef })
    if step % 250 == 0 or step == cfg.steps then
        print(("step %5d  loss %.4f  %.0f s"):format(step, loss, lt.fs.now() - t0))
    end
end

-- how many facts the base can complete from a statement prompt
local known = 0
for _, p in ipairs(people) do
    local got = lt.generate(model, tok, tok:encode(p.name .. "'s favorite color is", { add_special_tokens = false }),
        { max_new_tokens = 6 })
    if got:match("^ " .. p.color .. "%.") then known = known + 1 end
end
print(("the base completes %d of %d favorite colors"):format(known, #people))

lt.llama.save_pretrained(model, out .. "/model", { dtype = "bf16" })
-- keep the tokenizer files beside the weights (save_pretrained writes config and weights)
print("wrote " .. out)
