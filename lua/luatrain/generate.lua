--[[
generate.lua - text generation with a KV cache: greedy, or sampling with temperature,
top-k and top-p, streaming decoded text as it comes.

    local text, ids = lt.generate(model, tok, "Once upon a time", {
        max_new_tokens = 64, temperature = 0.8, top_p = 0.95, seed = 1,
        on_text = function(piece) io.write(piece) io.flush() end })

The prompt (a string, tokenized with the tokenizer's special tokens, or a Lua array of
ids) runs through the model once (prefill), filling a key/value cache per layer of
(1, prompt + max_new_tokens, Hkv, D); each new token then costs one position. Only the
last position goes through the LM head. Generation stops at max_new_tokens, at the
tokenizer's EOS, or at any id in opts.stop_ids. lt.generate.generate_batch runs several
prompts at once (rows of one cache, one position a step for all).
]]
local ffi = require "ffi"
local core = require "luatrain.core"
local tensor = require "luatrain.tensor"

local C, check = core.C, core.check

local M = {}

-- A fresh cache for `model` holding up to `len` positions of `rows` sequences (1) that
-- advance together: (rows, len, Hkv, D) per layer, k and v, on the model's device, in the
-- dtype its attention computes in.
function M.cache(model, len, rows)
    local c = model.config
    local kv = { k = {}, v = {}, start = 0, len = len }
    local where = { device = model:device(), dtype = model._act_dtype }
    for i = 1, c.num_hidden_layers do
        kv.k[i] = tensor.zeros({ rows or 1, len, c.num_key_value_heads, c.head_dim }, where)
        kv.v[i] = tensor.zeros({ rows or 1, len, c.num_key_value_heads, c.head_dim }, where)
    end
    return kv
end

function M.free_cache(kv)
    for i = 1, #kv.k do
        kv.k[i]:free()
        kv.v[i]:free()
    end
end

local function set_ids(t, ids, from, n)
    local p = ffi.cast("int64_t*", t:data_ptr())
    for j = 0, n - 1 do p[j] = ids[from + j] end
end

-- Rows of ids (a list of equally long sequences) into t (B, n), from position `from`.
local function set_rows(t, seqs, from, n)
    local p = ffi.cast("int64_t*", t:data_ptr())
    for b, ids in ipairs(seqs) do
        for j = 0, n - 1 do p[(b - 1) * n + j] = ids[from + j] end
    end
end

-- Logits (f32) of the last position, after running ids[from .. from + n - 1] at
-- cache.start. Ids and positions are written on the host and copied to the model's device.
-- With bufs.rows, ids is a list of rows advancing together and the logits are (rows, V).
local function step(model, kv, ids, from, n, bufs)
    local B = bufs.rows or 1
    local idt = bufs.ids:resize_(B, n)
    local pos = bufs.pos:resize_(n)
    if bufs.rows then set_rows(idt, ids, from, n) else set_ids(idt, ids, from, n) end
    local pp = ffi.cast("int64_t*", pos:data_ptr())
    for j = 0, n - 1 do pp[j] = kv.start + j end
    if bufs.dev_ids then
        idt = bufs.dev_ids:resize_(B, n):copy_(idt)
        pos = bufs.dev_pos:resize_(n):copy_(pos)
    end
    local h = model.model:forward(idt, { positions = pos, kv = kv, max_position = kv.start + n })
    kv.start = kv.start + n
    local last = h:select(2, n) -- (B, C)
    local logits = model.lm_head:forward(last)
    if logits.dtype ~= "f32" then logits = bufs.logits:copy_(logits) end
    if bufs.rows then return logits end
    return logits:view(logits:numel())
end

-- Returns the generated text (when a tokenizer is given) and the new ids.
-- opts: max_new_tokens (64), temperature (0: greedy), top_k (0: off), top_p (1: off),
--       seed, stop_ids ({}), stop_strings ({}: generation ends where the text first holds
--       one, which is cut off; streamed text is held back while it could still become one),
--       on_token(id), on_text(piece) (both text options need the tokenizer).
function M.generate(model, tok, prompt, opts)
    opts = opts or {}
    local ids
    if type(prompt) == "string" then
        if not tok then error("generate: a string prompt needs a tokenizer", 2) end
        ids = tok:encode(prompt)
    elseif type(prompt) == "table" then
        ids = prompt
    else
        error("generate: the prompt must be a string or a Lua array of token ids", 2)
    end
    if #ids == 0 then error("generate: the prompt is empty", 2) end
    local max_new = opts.max_new_tokens or 64
    local limit = model.config.max_position_embeddings
    if #ids + max_new > limit then
        error(("generate: %d prompt tokens + %d new ones exceed the model's %d positions"):format(
            #ids, max_new, limit), 2)
    end
    local stop = {}
    if tok and tok.eos_id then stop[tok.eos_id] = true end
    for _, s in ipairs(opts.stop_ids or {}) do stop[s] = true end
    local was_training = model.training
    model:eval()
    local kv = M.cache(model, #ids + max_new)
    local rng = ffi.new("lt_rng")
    C.lt_rng_seed(rng, opts.seed or 0)
    local dev = model:device()
    local bufs = { ids = tensor.empty({ 1, 1 }, { dtype = "i64" }), pos = tensor.empty({ 1 }, { dtype = "i64" }),
        logits = tensor.empty({ 1, model.config.vocab_size }, { device = dev }) }
    if dev ~= "cpu" then
        bufs.dev_ids = tensor.empty({ 1, 1 }, { dtype = "i64", device = dev })
        bufs.dev_pos = tensor.empty({ 1 }, { dtype = "i64", device = dev })
    end
    local stops = opts.stop_strings or {}
    if #stops > 0 and not tok then error("generate: stop_strings need a tokenizer", 2) end
    local longest = 0
    for _, s in ipairs(stops) do
        if type(s) ~= "string" or s == "" then error("generate: stop_strings must be non-empty strings", 2) end
        longest = math.max(longest, #s)
    end
    local stream = ((opts.on_text or #stops > 0) and tok) and tok:decode_stream({ skip_special_tokens = true }) or nil
    -- the text so far, and how much of it went out through on_text
    local text_so_far, sent, stopped = "", 0, false
    local function emit(final)
        if not opts.on_text then return end
        -- hold back what could still be the start of a stop string
        local upto = final and #text_so_far or math.max(sent, #text_so_far - (longest > 0 and longest - 1 or 0))
        if upto > sent then
            opts.on_text(text_so_far:sub(sent + 1, upto))
            sent = upto
        end
    end
    local function add_text(piece)
        if piece == "" then return end
        text_so_far = text_so_far .. piece
        for _, s in ipairs(stops) do
            local at = text_so_far:find(s, math.max(1, #text_so_far - #piece - #s + 1), true)
            if at then
                text_so_far = text_so_far:sub(1, at - 1)
                stopped = true
            end
        end
        emit(false)
    end
    local out_id = ffi.new("int32_t[1]")
    local new = {}
    local ok, err = pcall(function()
        local logits = step(model, kv, ids, 1, #ids, bufs)
        local seq = { unpack(ids) }
        for _ = 1, max_new do
            check(C.lt_sample_logits(logits, opts.temperature or 0, opts.top_k or 0, opts.top_p or 1, rng, out_id))
            local id = out_id[0]
            if stop[id] then break end
            new[#new + 1] = id
            seq[#seq + 1] = id
            if opts.on_token then opts.on_token(id) end
            if stream then add_text(stream:push(id)) end
            if stopped or #new == max_new then break end
            logits = step(model, kv, seq, #seq, 1, bufs)
        end
        if stream then
            if not stopped then add_text(stream:flush()) end
            emit(true)
        end
    end)
    M.free_cache(kv)
    model.model.rope.kv = nil
    for _, b in pairs(bufs) do b:free() end
    if was_training then model:train() end
    if not ok then error(err, 0) end
    local text = tok and tok:decode(new, { skip_special_tokens = true }) or nil
    if stopped then text = text_so_far end
    return text, new
end

--[[ Several prompts at once: returns a list of { text, ids } in the prompts' order. Prompts
of the same length run as one batch through one cache of (rows, len, Hkv, D) per layer,
every step one position for all of them (a row that has stopped rides along, its tokens
dropped); prompts of different lengths go in batches of their own, as the attention takes
one position per step for a whole batch. Row i samples with its own generator seeded
opts.seed + i - 1, so each result is what lt.generate gives that prompt with that seed.
opts as lt.generate's, less the streaming ones (on_text, on_token). ]]
function M.generate_batch(model, tok, prompts, opts)
    opts = opts or {}
    if type(prompts) ~= "table" or #prompts == 0 then error("generate_batch: prompts must be a non-empty list", 2) end
    if opts.on_text or opts.on_token or opts.stop_strings then
        error("generate_batch: on_text, on_token and stop_strings are lt.generate's (one prompt)", 2)
    end
    local all = {}
    for i, p in ipairs(prompts) do
        local ids = type(p) == "string" and (tok and tok:encode(p)) or p
        if type(ids) ~= "table" or #ids == 0 then
            error(("generate_batch: prompt %d must be a non-empty string (with a tokenizer) or list of ids"):format(i), 2)
        end
        all[i] = ids
    end
    local max_new = opts.max_new_tokens or 64
    local limit = model.config.max_position_embeddings
    local groups, order = {}, {}
    for i, ids in ipairs(all) do
        if #ids + max_new > limit then
            error(("generate_batch: prompt %d: %d tokens + %d new ones exceed the model's %d positions"):format(
                i, #ids, max_new, limit), 2)
        end
        if not groups[#ids] then
            groups[#ids] = {}
            order[#order + 1] = #ids
        end
        table.insert(groups[#ids], i)
    end
    local stop = {}
    if tok and tok.eos_id then stop[tok.eos_id] = true end
    for _, s in ipairs(opts.stop_ids or {}) do stop[s] = true end
    local was_training = model.training
    model:eval()
    local results = {}
    local dev = model:device()
    for _, len in ipairs(order) do
        local rows = groups[len]
        local B = #rows
        local seqs, new, done, rngs = {}, {}, {}, {}
        for b, i in ipairs(rows) do
            seqs[b] = { unpack(all[i]) }
            new[b] = {}
            rngs[b] = ffi.new("lt_rng")
            C.lt_rng_seed(rngs[b], (opts.seed or 0) + i - 1)
        end
        local kv = M.cache(model, len + max_new, B)
        local bufs = { rows = B, ids = tensor.empty({ B, 1 }, { dtype = "i64" }), pos = tensor.empty({ 1 }, { dtype = "i64" }),
            logits = tensor.empty({ B, model.config.vocab_size }, { device = dev }) }
        if dev ~= "cpu" then
            bufs.dev_ids = tensor.empty({ B, 1 }, { dtype = "i64", device = dev })
            bufs.dev_pos = tensor.empty({ 1 }, { dtype = "i64", device = dev })
        end
        local out_id = ffi.new("int32_t[1]")
        local ok, err = pcall(function()
            local logits = step(model, kv, seqs, 1, len, bufs)
            for _ = 1, max_new do
                local host = logits.device == "cpu" and logits or logits:cpu()
                local live = 0
                for b = 1, B do
                    local row = host:select(1, b)
                    check(C.lt_sample_logits(row, opts.temperature or 0, opts.top_k or 0, opts.top_p or 1, rngs[b], out_id))
                    row:free()
                    local id = out_id[0]
                    if not done[b] then
                        if stop[id] then done[b] = true else new[b][#new[b] + 1] = id end
                    end
                    seqs[b][#seqs[b] + 1] = id
                    if not done[b] then live = live + 1 end
                end
                if host ~= logits then host:free() end
                if live == 0 or #seqs[1] - len == max_new then break end
                logits = step(model, kv, seqs, #seqs[1], 1, bufs)
            end
        end)
        M.free_cache(kv)
        model.model.rope.kv = nil
        for _, b in pairs(bufs) do if type(b) ~= "number" then b:free() end end
        if not ok then
            if was_training then model:train() end
            error(err, 0)
        end
        for b, i in ipairs(rows) do
            results[i] = { ids = new[b], text = tok and tok:decode(new[b], { skip_special_tokens = true }) or nil }
        end
    end
    if was_training then model:train() end
    return results
end

setmetatable(M, { __call = function(_, ...) return M.generate(...) end })

return M
