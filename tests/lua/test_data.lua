--[[
test_data.lua - the data pipeline: JSONL records (plain and gzip, every shape, field remaps,
bad lines), templates and label masks, the tokenized-dataset cache, packing and padding,
shuffled epochs and exact resume, and packed batches giving each sample the loss it has
alone.

A byte-level stand-in tokenizer (each byte is its own token, special tokens recognised)
keeps these tests independent of the real tokenizers, which have their own tests.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

-- ---- a byte-level stand-in tokenizer ----------------------------------------------------

local SPECIALS = { "<s>", "</s>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eot_id|>", "<|im_start|>", "<|im_end|>" }

local function byte_tokenizer()
    local tok = { kind = "bytelevel", bos_id = 1, eos_id = 2, pad_id = 0, vocab_size = 264 + #SPECIALS }
    local special_id = {}
    for i, s in ipairs(SPECIALS) do special_id[s] = 263 + i end
    special_id["<s>"], special_id["</s>"] = 1, 2
    local by_id = {}
    for s, id in pairs(special_id) do by_id[id] = s end
    function tok:token_to_id(s) return special_id[s] end
    function tok:encode(text, opts)
        local out, i = {}, 1
        if not (opts and opts.add_special_tokens == false) then out[1] = self.bos_id end
        while i <= #text do
            local hit
            for s, id in pairs(special_id) do
                if text:sub(i, i + #s - 1) == s and (not hit or #s > #hit[1]) then hit = { s, id } end
            end
            if hit then
                out[#out + 1] = hit[2]
                i = i + #hit[1]
            else
                out[#out + 1] = text:byte(i) + 3
                i = i + 1
            end
        end
        return out
    end
    function tok:decode(ids)
        local parts = {}
        for _, id in ipairs(ids) do parts[#parts + 1] = by_id[id] or string.char(id - 3) end
        return table.concat(parts)
    end
    return tok
end

local tok = byte_tokenizer()

local function tmpfile(text, suffix)
    local p = os.tmpname() .. (suffix or ".jsonl")
    local f = assert(io.open(p, "wb"))
    f:write(text)
    f:close()
    return p
end

-- The text of the trained tokens of sample i (what the model learns to produce).
local function trained_text(ds, i)
    local ids, train = ds:sample_table(i)
    local out = {}
    for j = 1, #ids do
        if train[j] then out[#out + 1] = tok:decode({ ids[j] }) end
    end
    return table.concat(out)
end

-- ---- records -----------------------------------------------------------------------------

T.test("records: every shape, auto detection, gzip, field remaps", function()
    local alpaca = tmpfile('{"instruction": "Add", "input": "2 and 3", "output": "5"}\n\n{"instruction": "Hi", "output": "Hello"}\n')
    local r = lt.data.records.open(alpaca)
    local a = r:next()
    T.eq({ a.kind, a.prompt, a.completion }, { "pair", "Add\n\n2 and 3", "5" })
    local b, lineno = r:next()
    T.eq({ b.prompt, lineno }, { "Hi", 3 }, "blank lines are passed over")
    T.eq(r:next(), nil)
    r:close()
    local gz = os.tmpname() .. ".jsonl.gz"
    os.execute(("gzip -c %s > %s"):format(alpaca, gz))
    local rg = lt.data.records.open(gz)
    T.eq(rg:next().completion, "5")
    rg:close()
    local sharegpt = tmpfile('{"conversations": [{"from": "system", "value": "Be brief."}, '
        .. '{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}\n')
    local rs = lt.data.records.open(sharegpt, { fields = { messages = "conversations", role = "from", content = "value" } })
    local c = rs:next()
    T.eq({ c.kind, c.messages[1].role, c.messages[2].role, c.messages[3].role }, { "chat", "system", "user", "assistant" })
    rs:close()
    -- found without fields too: format "auto" knows ShareGPT's names, and format = "sharegpt"
    for _, o in ipairs({ {}, { format = "sharegpt" } }) do
        local ra = lt.data.records.open(sharegpt, o)
        local ca = ra:next()
        T.eq({ ca.kind, ca.messages[3].role, ca.messages[3].content }, { "chat", "assistant", "Yo" })
        T.eq(ra.format, o.format or "sharegpt")
        ra:close()
    end
    local pc = tmpfile('{"prompt": "Q: 1+1=", "completion": "2"}\n{"text": "plain"}\n')
    local rp = lt.data.records.open(pc, { format = "prompt_completion", skip_bad_lines = true })
    T.eq(rp:next().completion, "2")
    T.eq(rp:next(), nil)
    T.eq(rp.bad_lines, 1, "a text record in a prompt/completion file is a bad line")
    rp:close()
end)

T.test("records: split reads one part of a file in place, every k-th record held out, errors on its own lines", function()
    local lines = {}
    for i = 1, 7 do lines[i] = ('{"text": "r%d"}'):format(i) end
    lines[8] = ""
    lines[9] = '{"text": 9}' -- a bad record, the 8th non-blank line: held out with every = 4
    local p = tmpfile(table.concat(lines, "\n") .. "\n")
    local function texts(part)
        local r = lt.data.records.open(p, { split = { every = 4, part = part } })
        local out = {}
        local ok, err = pcall(function()
            for rec, lineno in r:iter() do out[#out + 1] = rec.text .. "@" .. lineno end
        end)
        r:close()
        return out, not ok and tostring(err) or nil
    end
    local tr, terr = texts("train")
    T.eq(tr, { "r1@1", "r2@2", "r3@3", "r5@5", "r6@6", "r7@7" })
    T.eq(terr, nil, "the bad record is in the other part")
    local ev, eerr = texts("eval")
    T.eq(ev, { "r4@4" })
    T.ok(eerr and eerr:find(p .. ":9:", 1, true) ~= nil, "named by the file's own line: " .. tostring(eerr))
    T.raises(function() lt.data.records.open(p, { split = { every = 1, part = "train" } }) end, "split must be")
end)

T.test("mix: shares by weight, a part's samples reshuffled and taken round again, the loader reads it", function()
    local function ds(first, n)
        local smp = {}
        for i = 1, n do smp[i] = { ids = { first + i, first + i, first + i } } end
        return lt.data.tokens.from_samples(smp)
    end
    local a, b = ds(100, 8), ds(200, 2)
    local m = lt.data.mix({ { ds = a, weight = 0.7, name = "a" }, { ds = b, weight = 0.3, name = "b" } }, 5)
    T.eq(m.n, 10, "as many samples as the parts together")
    T.eq({ m.meta.parts[1].samples, m.meta.parts[2].samples }, { 7, 3 })
    local from_b, seen_a = {}, {}
    for i = 1, m.n do
        local ids = m:sample_table(i)
        if ids[1] > 200 then from_b[#from_b + 1] = ids[1] else seen_a[ids[1]] = (seen_a[ids[1]] or 0) + 1 end
    end
    T.eq(#from_b, 3, "b's share")
    -- b has 2 samples for 3 places: one of them twice, both at least once
    table.sort(from_b)
    T.ok(from_b[1] == 201 and from_b[3] == 202, "b taken round again")
    local distinct = 0
    for _, c in pairs(seen_a) do distinct = distinct + 1 T.eq(c, 1, "a's samples at most once") end
    T.eq(distinct, 7)
    -- the same seed, the same mixture
    local m2 = lt.data.mix({ { ds = a, weight = 0.7 }, { ds = b, weight = 0.3 } }, 5)
    for i = 1, m.n do T.eq(m2:sample_table(i), m:sample_table(i)) end
    T.eq(m.total, 30)
    -- the loader takes it as a dataset (sample indices as int64)
    local l = lt.data.loader(m, { batch_size = 2, seq_len = 8, shuffle = true, seed = 1 })
    T.ok(l:next() ~= nil, "a batch")
    T.raises(function() lt.data.mix({ { ds = a, weight = 0 } }) end, "weight must be a positive number")
end)

T.test("records: a bad line names file:line and the problem; skip_bad_lines counts it", function()
    local p = tmpfile('{"text": "ok"}\n{"text": 3}\n{"text": "fine"}\n{"text": "unterminated\n[1, 2]\n{"text": "x", "text": "y"}\n')
    local err = T.raises(function()
        local r = lt.data.records.open(p)
        for _ in r:iter() do end
    end)
    T.ok(err:find(p .. ":2: field \"text\" must be a string, got number", 1, true), err)
    local r = lt.data.records.open(p, { skip_bad_lines = true })
    local n = 0
    for _ in r:iter() do n = n + 1 end
    T.eq(n, 2)
    T.eq(r.bad_lines, 4)
    T.ok(r.bad_examples[2]:find(p .. ":4: column 23: unterminated string", 1, true), r.bad_examples[2])
    T.ok(r.bad_examples[4]:find("duplicate key", 1, true), r.bad_examples[4])
    local unknown = tmpfile('{"question": "?", "answer": "!"}\n')
    T.raises(function() lt.data.records.open(unknown):next() end, "cannot tell the dataset format from the keys {answer, question}", true)
    T.raises(function() lt.data.records.open(unknown, { format = "csv" }) end, 'unknown dataset format "csv"', true)
    T.raises(function() lt.data.records.open("/nonexistent/x.jsonl") end, "/nonexistent/x.jsonl: cannot open", true)
    local deep = tmpfile(string.rep("[", 10000) .. "\n")
    T.raises(function() lt.data.records.open(deep):next() end, "nesting deeper than 512", true)
    local huge = tmpfile('{"text": 1e999999}\n')
    T.raises(function() lt.data.records.open(huge):next() end, "must be a string", true)
end)

-- ---- templates and masks -------------------------------------------------------------------

T.test("templates: the trained tokens are the assistant's words and the end token", function()
    local p = tmpfile('{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}, '
        .. '{"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Again"}, '
        .. '{"role": "assistant", "content": "Ok"}]}\n')
    local pc = tmpfile('{"prompt": "P", "completion": "C"}\n')
    local ds3 = lt.data.build(p, tok, { template = "llama3" })
    T.eq(trained_text(ds3, 1), "Yo<|eot_id|>Ok<|eot_id|>")
    T.eq(trained_text(lt.data.build(pc, tok, { template = "llama3" }), 1), "C<|eot_id|>")
    local ids = ds3:sample_table(1)
    T.eq(tok:decode(ids), "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>" ..
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nYo<|eot_id|>" ..
        "<|start_header_id|>user<|end_header_id|>\n\nAgain<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nOk<|eot_id|>")
    local dsc = lt.data.build(p, tok, { template = "chatml" })
    T.eq(trained_text(dsc, 1), "Yo<|im_end|>Ok<|im_end|>")
    local ds2 = lt.data.build(p, tok, { template = "llama2" })
    T.eq(tok:decode(ds2:sample_table(1)), "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nHi [/INST] Yo </s><s>[INST] Again [/INST] Ok </s>")
    T.eq(trained_text(ds2, 1), " Yo </s> Ok </s>")
    local all = lt.data.build(p, tok, { template = "llama3", train_on = "all" })
    local _, tr = all:sample_table(1)
    for j = 1, #tr do T.ok(tr[j]) end
end)

T.test("templates: plain prompts, alpaca layout, EOS, truncation, and errors", function()
    local p = tmpfile('{"instruction": "Name a color", "input": "", "output": "Red"}\n{"instruction": "Sum", "input": "1 2", "output": "3"}\n')
    local ds = lt.data.build(p, tok)
    T.eq(tok:decode(ds:sample_table(1)), "<s>### Instruction:\nName a color\n\n### Response:\nRed</s>")
    T.eq(tok:decode(ds:sample_table(2)), "<s>### Instruction:\nSum\n\n### Input:\n1 2\n\n### Response:\n3</s>")
    T.eq(trained_text(ds, 1), "Red</s>")
    -- truncation keeps the start; a sample whose trained part is cut away is dropped
    T.raises(function() lt.data.build(p, tok, { max_len = 40 }) end,
        "no usable samples (2 records, 0 bad lines, 2 dropped)", true)
    local t2 = tmpfile('{"text": "abcdefghij"}\n')
    local short = lt.data.build(t2, tok, { max_len = 5 })
    T.eq(tok:decode(short:sample_table(1)), "<s>abcd")
    local chat = tmpfile('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}\n')
    T.raises(function() lt.data.build(chat, tok, { template = "llama3" }) end, nil)
    T.raises(function() lt.data.build(chat, tok, { template = "llama2" }) end, ":1: template llama2: messages must alternate", true)
    T.raises(function() lt.data.build(chat, tok) end, "chat messages need a chat template", true)
    T.raises(function() lt.data.build(p, tok, { template = "vicuna" }) end, 'unknown template "vicuna"', true)
    T.raises(function() lt.data.build(p, tok, { train_on = "prompt" }) end, 'train_on must be', true)
    local no_chatml = byte_tokenizer()
    function no_chatml:token_to_id(s) if s:find("im_", 1, true) then return nil end return 1 end
    T.raises(function() lt.data.build(p, no_chatml, { template = "chatml" }) end, "template chatml needs the token <|im_start|>", true)
    -- a Lua function template
    local custom = lt.data.build(p, tok, { template = function(rec)
        return { { text = "Q:" .. rec.prompt, train = false }, { text = "A:" .. rec.completion, train = true } }
    end })
    T.eq(trained_text(custom, 1), "A:Red")
end)

-- ---- the cache -------------------------------------------------------------------------------

T.test("cache: built once, reused, rebuilt when the source or settings change", function()
    local p = tmpfile('{"text": "one two three"}\n{"text": "four"}\n')
    local dir = os.tmpname()
    os.remove(dir)
    local a, cached = lt.data.load(p, tok, { cache_dir = dir })
    T.eq(cached, false)
    local b, cached2 = lt.data.load(p, tok, { cache_dir = dir })
    T.eq(cached2, true)
    T.eq({ b.n, b.total }, { a.n, a.total })
    for i = 1, a.n do
        local ia, ta = a:sample_table(i)
        local ib, tb = b:sample_table(i)
        T.eq(ib, ia)
        T.eq(tb, ta)
    end
    local _, c3 = lt.data.load(p, tok, { cache_dir = dir, max_len = 8 })
    T.eq(c3, false, "different settings")
    local f = io.open(p, "ab")
    f:write('{"text": "five"}\n')
    f:close()
    local d, c4 = lt.data.load(p, tok, { cache_dir = dir })
    T.eq(c4, false, "a changed source")
    T.eq(d.n, 3)
    os.execute("rm -rf " .. dir)
end)

-- ---- batches -----------------------------------------------------------------------------------

local function lengths_file(lengths)
    local lines = {}
    for i, n in ipairs(lengths) do
        lines[i] = ('{"text": "%s"}'):format(string.char(96 + (i - 1) % 26 + 1):rep(n))
    end
    return tmpfile(table.concat(lines, "\n") .. "\n")
end

T.test("packing: whole samples, positions restart, no target crosses a sample", function()
    local ds = lt.data.build(lengths_file({ 3, 7, 2, 9, 5, 4, 6, 1, 8 }), tok)
    local loader = lt.data.loader(ds, { batch_size = 2, seq_len = 12, shuffle = false, epochs = 1 })
    local seen = 0
    while true do
        local b = loader:next()
        if not b then break end
        T.eq(b.ids:shape(), { 1, 24 })
        local cu = b.cu_seqlens:totable()
        T.eq(cu[1], 0)
        T.eq(cu[#cu], 24)
        local ids, tg, pos = b.ids:totable()[1], b.targets:totable()[1], b.positions:totable()[1]
        for s = 1, #cu - 1 do
            local padding = s > b.samples -- the tail after the samples is one padding sequence
            for j = cu[s] + 1, cu[s + 1] do
                T.eq(pos[j], padding and 0 or j - cu[s] - 1, "positions restart; padding's are 0")
            end
            T.eq(tg[cu[s + 1]], -100, "the last position of a sample predicts nothing")
            for j = cu[s] + 1, cu[s + 1] - 1 do
                T.ok(tg[j] == -100 or tg[j] == ids[j + 1], "targets are the next token of the same sample")
            end
        end
        seen = seen + b.samples
    end
    T.eq(seen, ds.n)
end)

-- The largest position in each row of a batch, and the longest sample (cut to seq_len) in it.
local function max_position(b)
    local m = 0
    for _, row in ipairs(b.positions:totable()) do
        for _, p in ipairs(row) do m = math.max(m, p) end
    end
    return m
end

T.test("padding positions never exceed the longest sample's length - 1", function()
    -- short samples in long rows: the padding is most of each batch
    local lengths = { 3, 7, 2, 9, 5, 4, 6, 1, 8 }
    local ds = lt.data.build(lengths_file(lengths), tok)
    for _, packing in ipairs({ true, false }) do
        local loader = lt.data.loader(ds, { batch_size = 2, seq_len = 64, packing = packing, shuffle = false, epochs = 1 })
        local i = 0
        while true do
            local b = loader:next()
            if not b then break end
            local longest = 0
            local cu = b.cu_seqlens and b.cu_seqlens:totable()
            for s = 1, b.samples do
                -- a sample is BOS + its text + EOS (byte tokenizer)
                longest = math.max(longest, lengths[i + s] + 2)
            end
            i = i + b.samples
            T.ok(b.tokens < b.ids:numel(), "the batch holds padding")
            T.eq(max_position(b), longest - 1, ("packing=%s: the largest position"):format(tostring(packing)))
            if cu then
                T.eq(#cu, b.samples + 2, "the padding is one more sequence in cu_seqlens")
                T.eq(cu[#cu], b.ids:numel())
            end
        end
        T.eq(i, ds.n)
    end
end)

T.test("seq_len beyond max_position_embeddings trains when the samples fit the model", function()
    lt.manual_seed(5)
    local model = lt.llama.new({ vocab_size = 272, hidden_size = 16, intermediate_size = 32,
        num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 1,
        max_position_embeddings = 16 })
    local ds = lt.data.build(lengths_file({ 6, 11, 3, 9 }), tok) -- samples of 5..13 tokens
    local loader = lt.data.loader(ds, { batch_size = 1, seq_len = 64, shuffle = false, epochs = 1 })
    local b = loader:next()
    T.eq(b.samples, 4)
    T.ok(b.ids:numel() - b.tokens > 16, "a padding tail longer than the model's positions")
    local loss = model:forward_backward(b.ids, b.targets, { positions = b.positions, cu_seqlens = b.cu_seqlens })
    T.ok(loss == loss and loss > 0, "a finite loss")
end)

T.test("padded batches and shuffled epochs", function()
    local ds = lt.data.build(lengths_file({ 3, 7, 2, 9, 5 }), tok)
    local loader = lt.data.loader(ds, { batch_size = 2, seq_len = 8, packing = false, seed = 5, epochs = 2 })
    local b = loader:next()
    T.eq(b.ids:shape(), { 2, 8 })
    T.eq(b.cu_seqlens, nil)
    local batches = 1
    while loader:next() do batches = batches + 1 end
    T.eq(batches, 6, "3 batches per epoch, 2 epochs")
    local function order(seed)
        local l = lt.data.loader(ds, { batch_size = 1, seq_len = 16, packing = false, seed = seed, epochs = 1 })
        local firsts = {}
        while true do
            local bb = l:next()
            if not bb then break end
            firsts[#firsts + 1] = bb.ids:totable()[1][2]
        end
        return table.concat(firsts, ",")
    end
    T.eq(order(1), order(1), "the same seed gives the same order")
    T.ok(order(1) ~= order(2) or order(1) ~= order(3), "seeds shuffle differently")
end)

T.test("resume: restoring the loader's state midway gives the same remaining batches", function()
    local ds = lt.data.build(lengths_file({ 3, 7, 2, 9, 5, 4, 6, 1, 8, 2, 2, 3, 11, 4 }), tok)
    local function snapshot(b)
        return table.concat(b.ids:totable()[1], ",") .. "|" .. table.concat(b.cu_seqlens:totable(), ",")
    end
    local a = lt.data.loader(ds, { batch_size = 1, seq_len = 12, seed = 9, epochs = 3 })
    local all = {}
    while true do
        local b = a:next()
        if not b then break end
        all[#all + 1] = snapshot(b)
    end
    T.ok(#all > 6)
    local b = lt.data.loader(ds, { batch_size = 1, seq_len = 12, seed = 9, epochs = 3 })
    local stop = math.floor(#all / 2) + 1 -- inside the second epoch
    for _ = 1, stop do b:next() end
    local saved = lt.json.decode(lt.json.encode(b:state())) -- as a checkpoint stores it
    local c = lt.data.loader(ds, { batch_size = 1, seq_len = 12, seed = 9, epochs = 3 })
    c:set_state(saved)
    for i = stop + 1, #all do
        local bc = c:next()
        T.ok(bc, "batch " .. i .. " after resume")
        T.eq(snapshot(bc), all[i], "batch " .. i)
    end
    T.eq(c:next(), nil)
    T.raises(function() lt.data.loader(ds, { batch_size = 1, seq_len = 12, seed = 1 }):set_state(saved) end,
        "saved with seed 9", true)
end)

-- ---- packed batches and the model ---------------------------------------------------------------

T.test("ranks share one global stream of batches; positions stay global across world sizes", function()
    lt.manual_seed(21)
    local samples = {}
    for i = 1, 37 do
        local n = 2 + (i * 7) % 11
        local ids, train = {}, {}
        for j = 1, n do
            ids[j] = (i * 31 + j) % 50 + 1
            train[j] = (i + j) % 3 ~= 0
        end
        samples[i] = { ids = ids, train = train }
    end
    local ds = lt.data.tokens.from_samples(samples)
    for _, packing in ipairs({ true, false }) do
        for _, world in ipairs({ 2, 3 }) do
            local opts = { batch_size = 2, seq_len = 12, packing = packing, seed = 5, epochs = 2 }
            local one = lt.data.loader(ds, opts)
            local ranks = {}
            for r = 0, world - 1 do
                local o = {}
                for k, v in pairs(opts) do o[k] = v end
                o.rank, o.world = r, world
                ranks[r] = lt.data.loader(ds, o)
            end
            local rounds = 0
            while true do
                local want, trained = {}, 0
                for k = 0, world - 1 do
                    local b = one:next()
                    if not b then want = nil break end
                    want[k] = { b.ids:clone(), b.targets:clone(), b.positions:clone(),
                        b.cu_seqlens and b.cu_seqlens:clone() }
                    trained = trained + b.trained
                end
                local got = {}
                for r = 0, world - 1 do got[r] = ranks[r]:next() end
                if want == nil then
                    -- a round the data cannot fill ends the stream on every rank
                    for r = 0, world - 1 do T.ok(got[r] == nil, ("rank %d still has a batch"):format(r)) end
                    break
                end
                rounds = rounds + 1
                for r = 0, world - 1 do
                    local b, w = got[r], want[r]
                    T.ok(b ~= nil, "rank " .. r)
                    T.ok(b.ids:equal(w[1]) and b.targets:equal(w[2]) and b.positions:equal(w[3]),
                        ("world %d rank %d round %d: the global stream's batch"):format(world, r, rounds))
                    if w[4] then T.ok(b.cu_seqlens:equal(w[4])) end
                    T.eq(b.round_trained, trained, "every rank knows the round's trained targets")
                    T.eq(ranks[r]:state(), one:state(), "the position is global")
                end
            end
            T.ok(rounds > 5, "several rounds")
        end
    end
    -- a position saved at world 2 resumes at world 3 and in one process
    local opts = { batch_size = 2, seq_len = 12, seed = 9 }
    local a = lt.data.loader(ds, { batch_size = 2, seq_len = 12, seed = 9, rank = 1, world = 2 })
    for _ = 1, 3 do a:next() end
    local st = a:state()
    local single = lt.data.loader(ds, opts)
    single:set_state(st)
    local three = lt.data.loader(ds, { batch_size = 2, seq_len = 12, seed = 9, rank = 0, world = 3 })
    three:set_state(st)
    T.ok(three:next().ids:equal(single:next().ids), "world 3 continues where world 2 stopped")
    T.raises(function() lt.data.loader(ds, { seq_len = 4, rank = 2, world = 2 }) end, "need 0 <= rank < world", true)
end)

T.test("packed attention equals attention on each sequence alone", function()
    lt.manual_seed(3)
    local q, k, v = lt.randn(1, 13, 4, 8), lt.randn(1, 13, 2, 8), lt.randn(1, 13, 2, 8)
    local cu = lt.tensor({ 0, 5, 6, 13 }, "i32")
    local packed = lt.ops.attention(q, k, v, { cu_seqlens = cu })
    for _, seg in ipairs({ { 1, 5 }, { 6, 1 }, { 7, 7 } }) do
        local s, n = seg[1], seg[2]
        local alone = lt.ops.attention(q:narrow(2, s, n):contiguous(), k:narrow(2, s, n):contiguous(),
            v:narrow(2, s, n):contiguous())
        T.close(packed:narrow(2, s, n), alone, 1e-6, 1e-6, "segment at " .. s)
    end
end)

T.test("a packed batch gives each sample the loss (and gradient) it has alone", function()
    lt.manual_seed(7)
    local model = lt.llama.new({ vocab_size = 272, hidden_size = 32, intermediate_size = 64,
        num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2,
        max_position_embeddings = 64 })
    local ds = lt.data.build(lengths_file({ 6, 11, 3, 9 }), tok)
    local loader = lt.data.loader(ds, { batch_size = 1, seq_len = 40, shuffle = false, epochs = 1 })
    local b = loader:next()
    T.eq(b.samples, 4)
    local N = b.ids:numel()
    local row_loss = lt.empty(N)
    model:zero_grad()
    model:forward_backward(b.ids, b.targets, { positions = b.positions, cu_seqlens = b.cu_seqlens,
        row_loss = row_loss, normalizer = 1 })
    local packed_grad = model:parameters()[1].grad:clone()
    local cu, rl, tg = b.cu_seqlens:totable(), row_loss:totable(), b.targets:totable()[1]
    local alone_grad = lt.zeros(packed_grad:shape())
    for s = 1, 4 do
        local a, e = cu[s], cu[s + 1]
        local packed_sum = 0
        for j = a + 1, e do packed_sum = packed_sum + rl[j] end
        local ids = b.ids:narrow(2, a + 1, e - a):contiguous()
        local targets = b.targets:narrow(2, a + 1, e - a):contiguous()
        local alone_rows = lt.empty(e - a)
        model:zero_grad()
        model:forward_backward(ids, targets, { row_loss = alone_rows, normalizer = 1 })
        local alone_sum = 0
        for _, x in ipairs(alone_rows:totable()) do alone_sum = alone_sum + x end
        T.near(packed_sum, alone_sum, 1e-5, 1e-6, "summed loss of sample " .. s)
        alone_grad:add_(model:parameters()[1].grad)
        local counted = 0
        for j = a + 1, e do if tg[j] ~= -100 then counted = counted + 1 end end
        T.ok(counted == e - a - 1, "every position but the last is a target in a text sample")
    end
    local _, rel = T.diff(packed_grad, alone_grad)
    T.ok(rel < 1e-5, ("the packed gradient is the sum of the samples' gradients (rel %.2g)"):format(rel))
end)

T.done()
