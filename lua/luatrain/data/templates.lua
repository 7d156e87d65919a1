--[[
data/templates.lua - chat templates and label masks: a record becomes token ids and, for
each token, whether the model is trained to predict it.

A template turns a record (data/records.lua) into pieces, in order:
  { text = "...", train = bool }   text to tokenize (special-token text such as
                                    "<|eot_id|>" becomes its single special token)
  { id = n, train = bool }          a token id as is (BOS, EOS)
Built in: "none" (plain text, prompt + completion, or an Alpaca-style instruction prompt),
"llama2" ([INST] ... [/INST]), "llama3" (header ids and <|eot_id|>) and "chatml"
(<|im_start|> ... <|im_end|>); or a Lua function(record, tokenizer) -> pieces.

Tokenization. The text of neighbouring text pieces is joined and tokenized once, as the
whole conversation would be. A piece boundary falls after as many tokens as the text up
to it tokenizes to (when a merge crosses a boundary, the token goes to the later piece).
So segment-wise tokenization artefacts (a SentencePiece tokenizer's prefix space before
every separately encoded piece) never appear.

Labels. train_on = "completion" (default) trains on the assistant's replies (and the
end-of-turn token after each); "all" trains on every token. Special-token text inside
the data is recognised as special tokens, as Hugging Face's apply_chat_template followed
by tokenization does.
]]
local M = {}

local function is_sentencepiece(tok)
    return tok.kind == "sentencepiece" or tok.kind == 1
end

-- ---- the built-in templates --------------------------------------------------------------

local function eos_piece(tok, train)
    if not tok.eos_id then error("template: the tokenizer has no EOS token", 0) end
    return { id = tok.eos_id, train = train }
end

local function bos_pieces(tok)
    if tok.bos_id and tok.add_bos ~= false then return { { id = tok.bos_id, train = false } } end
    return {}
end

-- Split a chat into an optional system prompt and (user, assistant) turns.
local function turns(rec, name)
    local msgs = rec.messages
    local system, out, i = nil, {}, 1
    if msgs[1] and msgs[1].role == "system" then
        system = msgs[1].content
        i = 2
    end
    while i <= #msgs do
        local u, a = msgs[i], msgs[i + 1]
        if u.role ~= "user" or not a or a.role ~= "assistant" then
            error(("template %s: messages must alternate user and assistant after an optional system message (message %d is %s)"):format(
                name, i, u.role), 0)
        end
        out[#out + 1] = { user = u.content, assistant = a.content }
        i = i + 2
    end
    return system, out
end

local function as_chat(rec)
    if rec.kind == "chat" then return rec end
    if rec.kind == "pair" then
        return { kind = "chat", messages = { { role = "user", content = rec.prompt },
            { role = "assistant", content = rec.completion } } }
    end
    return nil
end

local function text_record(rec, tok)
    local p = bos_pieces(tok)
    p[#p + 1] = { text = rec.text, train = true }
    p[#p + 1] = eos_piece(tok, true)
    return p
end

M.templates = {}

function M.templates.none(rec, tok)
    if rec.kind == "text" then return text_record(rec, tok) end
    if rec.kind == "chat" then
        error("template none: chat messages need a chat template (llama2, llama3, chatml) or a Lua function", 0)
    end
    local p = bos_pieces(tok)
    local prompt = rec.prompt
    if rec.instruction then
        prompt = "### Instruction:\n" .. rec.instruction .. "\n\n" ..
            (rec.input ~= "" and ("### Input:\n" .. rec.input .. "\n\n") or "") .. "### Response:\n"
    end
    p[#p + 1] = { text = prompt, train = false }
    p[#p + 1] = { text = rec.completion, train = true }
    p[#p + 1] = eos_piece(tok, true)
    return p
end

-- Meta's Llama 2 chat layout: each turn is <s>[INST] user [/INST] answer </s>, the system
-- prompt inside the first [INST] between <<SYS>> markers.
function M.templates.llama2(rec, tok)
    if rec.kind == "text" then return text_record(rec, tok) end
    local system, ts = turns(as_chat(rec), "llama2")
    local p = {}
    for i, t in ipairs(ts) do
        local sys = (i == 1 and system) and ("<<SYS>>\n" .. system .. "\n<</SYS>>\n\n") or ""
        p[#p + 1] = { text = "<s>[INST] " .. sys .. t.user:match("^%s*(.-)%s*$") .. " [/INST]", train = false }
        p[#p + 1] = { text = " " .. t.assistant:match("^%s*(.-)%s*$") .. " </s>", train = true }
    end
    return p
end

function M.templates.llama3(rec, tok)
    if rec.kind == "text" then return text_record(rec, tok) end
    local chat = as_chat(rec)
    local p = { { text = "<|begin_of_text|>", train = false } }
    for _, m in ipairs(chat.messages) do
        local train = m.role == "assistant"
        p[#p + 1] = { text = "<|start_header_id|>" .. m.role .. "<|end_header_id|>\n\n", train = false }
        p[#p + 1] = { text = m.content:match("^%s*(.-)%s*$") .. "<|eot_id|>", train = train }
    end
    return p
end

function M.templates.chatml(rec, tok)
    if rec.kind == "text" then return text_record(rec, tok) end
    local chat = as_chat(rec)
    local p = {}
    for _, m in ipairs(chat.messages) do
        local train = m.role == "assistant"
        p[#p + 1] = { text = "<|im_start|>" .. m.role .. "\n", train = false }
        p[#p + 1] = { text = m.content .. "<|im_end|>", train = train }
        p[#p + 1] = { text = "\n", train = false }
    end
    return p
end

-- ---- a model's own Jinja chat template (template = "auto") ------------------------------

local JINJA = setmetatable({}, { __mode = "k" }) -- template function -> { tpl, vars, eot }

local function jinja_messages(msgs)
    local json = require "luatrain.json"
    local out = json.array({})
    for i, m in ipairs(msgs) do out[i] = { role = m.role, content = m.content } end
    return out
end

--[[ A template function from Jinja source (tokenizer_config.json's chat_template), rendered
as transformers renders it. Labels: for each assistant message i, the text the template
renders for messages 1..i-1 with the generation prompt must begin the whole conversation's
text; what follows it, up to where messages 1..i's rendering stops agreeing with the whole,
is trained (the reply and the template's end-of-turn marker). A template that lays out a
prefix differently from the whole (so no mask can be read off) is refused by name. ]]
function M.from_jinja(src, tok, where)
    local jinja = require "luatrain.jinja"
    local tpl = jinja.compile(src, where or "chat_template")
    local function text_of(id) return id and tok:id_to_token(id) or "" end
    local vars = { bos_token = text_of(tok.bos_id), eos_token = text_of(tok.eos_id) }
    local function render(msgs, gen)
        local ctx = { messages = jinja_messages(msgs), add_generation_prompt = gen }
        for k, v in pairs(vars) do ctx[k] = v end
        return tpl:render(ctx)
    end
    local function template(rec)
        if rec.kind == "text" then return text_record(rec, tok) end
        local msgs = as_chat(rec).messages
        local whole = render(msgs, false)
        local pieces, at = {}, 0
        for i, m in ipairs(msgs) do
            if m.role == "assistant" then
                local before = { unpack(msgs, 1, i - 1) }
                local prompt = render(before, true)
                if whole:sub(1, #prompt) ~= prompt or #prompt < at then
                    error(("%s: the template lays out the prompt of message %d differently from the whole "
                        .. "conversation, so the trained tokens cannot be told apart"):format(where or "chat_template", i), 0)
                end
                local through = render({ unpack(msgs, 1, i) }, false)
                local stop = #prompt
                while stop < #through and stop < #whole and through:byte(stop + 1) == whole:byte(stop + 1) do
                    stop = stop + 1
                end
                if #prompt > at then pieces[#pieces + 1] = { text = whole:sub(at + 1, #prompt), train = false } end
                if stop > #prompt then pieces[#pieces + 1] = { text = whole:sub(#prompt + 1, stop), train = true } end
                at = stop
            end
        end
        if at < #whole then pieces[#pieces + 1] = { text = whole:sub(at + 1), train = false } end
        return pieces
    end
    -- the end-of-turn marker: the first of the common ones the template writes, else EOS
    local eot = tok.eos_id
    for _, marker in ipairs({ "<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>" }) do
        if src:find(marker, 1, true) and tok:token_to_id(marker) then
            eot = tok:token_to_id(marker)
            break
        end
    end
    -- what a dataset cache records of the template: its source, hashed (FNV-1a, 32 bits)
    local h = 2166136261
    for i = 1, #src do h = bit.tobit(bit.bxor(h, src:byte(i)) * 16777619) end
    JINJA[template] = { render = render, eot = eot, key = ("jinja %08x"):format(bit.band(h, 0xffffffff)) }
    return template
end

-- How a dataset cache names a template: its name, "jinja <hash of the source>", or "lua function".
function M.key_of(template)
    if JINJA[template] then return JINJA[template].key end
    if type(template) == "function" then return "lua function" end
    return template or "none"
end

-- The model folder's chat template (tokenizer_config.json's chat_template: a string, or a
-- list of {name, template} whose "default" is taken).
function M.from_model(dir, tok)
    local json = require "luatrain.json"
    local path = dir .. "/tokenizer_config.json"
    local ok, cfg = pcall(json.read_file, path)
    if not ok then error(("template=auto: cannot read %s (%s)"):format(path, tostring(cfg)), 0) end
    local ct = cfg.chat_template
    if type(ct) == "table" then
        local pick = nil
        for _, e in ipairs(ct) do if type(e) == "table" and e.name == "default" then pick = e.template end end
        ct = pick
    end
    if type(ct) ~= "string" then
        error(("template=auto: %s has no chat_template; name a template (llama3, llama2, chatml, none)"):format(path), 0)
    end
    return M.from_jinja(ct, tok, path .. ": chat_template")
end

-- Template markers a tokenizer must know as single tokens for the template to make sense.
local MARKERS = {
    llama3 = { "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>" },
    chatml = { "<|im_start|>", "<|im_end|>" },
    llama2 = { "<s>", "</s>" },
}

function M.resolve(template, tok)
    if type(template) == "function" then return template end
    local f = M.templates[template or "none"]
    if not f then
        error(("unknown template %q (none, llama2, llama3, chatml, or a Lua function)"):format(tostring(template)), 0)
    end
    for _, marker in ipairs(MARKERS[template] or {}) do
        if not tok:token_to_id(marker) then
            error(("template %s needs the token %s, which this tokenizer does not have"):format(template, marker), 0)
        end
    end
    return f
end

-- ---- tokenization with piece boundaries ---------------------------------------------------

local NO_SPECIAL = { add_special_tokens = false }

local function common_prefix(a, b)
    local n = math.min(#a, #b)
    for i = 1, n do
        if a[i] ~= b[i] then return i - 1 end
    end
    return n
end

-- pieces -> ids, train (arrays of equal length)
function M.encode_pieces(tok, pieces)
    local ids, train = {}, {}
    local run = {} -- consecutive text pieces, tokenized together
    local function flush()
        if #run == 0 then return end
        -- merge neighbours with the same flag: fewer boundaries to find
        local merged = {}
        for _, p in ipairs(run) do
            local last = merged[#merged]
            if last and last.train == p.train then
                last.text = last.text .. p.text
            else
                merged[#merged + 1] = { text = p.text, train = p.train }
            end
        end
        local texts = {}
        for i, p in ipairs(merged) do texts[i] = p.text end
        local full = tok:encode(table.concat(texts), NO_SPECIAL)
        local done, acc = 0, {}
        for i, p in ipairs(merged) do
            acc[#acc + 1] = p.text
            local upto = #full
            if i < #merged then upto = common_prefix(tok:encode(table.concat(acc), NO_SPECIAL), full) end
            for j = done + 1, upto do
                ids[#ids + 1] = full[j]
                train[#train + 1] = p.train
            end
            if upto > done then done = upto end
        end
        run = {}
    end
    for _, p in ipairs(pieces) do
        if p.id ~= nil then
            flush()
            ids[#ids + 1] = p.id
            train[#train + 1] = p.train and true or false
        elseif type(p.text) == "string" then
            run[#run + 1] = { text = p.text, train = p.train and true or false }
        else
            error("template: a piece needs text (a string) or id (a number)", 0)
        end
    end
    flush()
    return ids, train
end

-- An encoder: record -> ids, train flags, or nil and a reason when the record is dropped;
-- and its counts { truncated, too_long } (samples cut to max_len, samples dropped for it).
-- opts: template, train_on ("completion" | "all"), max_len (tokens), long_samples: what a
-- sample longer than max_len becomes: "truncate" (cut, the default), "drop", or "error".
function M.encoder(tok, opts)
    opts = opts or {}
    local template = M.resolve(opts.template, tok)
    local train_on = opts.train_on or "completion"
    if train_on ~= "completion" and train_on ~= "all" then
        error(("train_on must be \"completion\" or \"all\", got %q"):format(tostring(train_on)), 0)
    end
    local max_len = opts.max_len
    local long = opts.long_samples or "truncate"
    if long ~= "truncate" and long ~= "drop" and long ~= "error" then
        error(("long_samples must be \"truncate\", \"drop\" or \"error\", got %q"):format(tostring(long)), 0)
    end
    local counts = { truncated = 0, too_long = 0 }
    return function(rec)
        local ids, train = M.encode_pieces(tok, template(rec, tok))
        if train_on == "all" then
            for i = 1, #train do train[i] = true end
        end
        if max_len and #ids > max_len then
            if long == "error" then
                error(("a sample of %d tokens, longer than max_len=%d (long_samples=truncate or drop to go on)"):format(
                    #ids, max_len), 0)
            elseif long == "drop" then
                counts.too_long = counts.too_long + 1
                return nil, "longer than max_len"
            end
            counts.truncated = counts.truncated + 1
            for i = #ids, max_len + 1, -1 do
                ids[i] = nil
                train[i] = nil
            end
        end
        -- the first token is never a target: something must be trained after it
        local any = false
        for i = 2, #train do any = any or train[i] end
        if not any then return nil, "no trained tokens (after truncation)" end
        return ids, train
    end, counts
end

-- ---- prompts for generation ---------------------------------------------------------------

-- The text that asks the model for the next assistant turn of `messages` (a chat whose
-- last message is the user's), as the template lays out a conversation.
function M.generation_prompt(template, messages)
    if JINJA[template] then return JINJA[template].render(messages, true) end
    if template == "llama3" then
        local parts = { "<|begin_of_text|>" }
        for _, m in ipairs(messages) do
            parts[#parts + 1] = "<|start_header_id|>" .. m.role .. "<|end_header_id|>\n\n" ..
                m.content:match("^%s*(.-)%s*$") .. "<|eot_id|>"
        end
        parts[#parts + 1] = "<|start_header_id|>assistant<|end_header_id|>\n\n"
        return table.concat(parts)
    elseif template == "chatml" then
        local parts = {}
        for _, m in ipairs(messages) do
            parts[#parts + 1] = "<|im_start|>" .. m.role .. "\n" .. m.content .. "<|im_end|>\n"
        end
        parts[#parts + 1] = "<|im_start|>assistant\n"
        return table.concat(parts)
    elseif template == "llama2" then
        local system, i, parts = nil, 1, {}
        if messages[1] and messages[1].role == "system" then
            system, i = messages[1].content, 2
        end
        local first = true
        while i <= #messages do
            local u, a = messages[i], messages[i + 1]
            local sys = (first and system) and ("<<SYS>>\n" .. system .. "\n<</SYS>>\n\n") or ""
            parts[#parts + 1] = "<s>[INST] " .. sys .. u.content:match("^%s*(.-)%s*$") .. " [/INST]"
            if a then parts[#parts + 1] = " " .. a.content:match("^%s*(.-)%s*$") .. " </s>" end
            first = false
            i = i + 2
        end
        return table.concat(parts)
    elseif template == "none" then
        local last = messages[#messages]
        return "### Instruction:\n" .. last.content .. "\n\n### Response:\n"
    end
    error(("generation_prompt: unknown template %q"):format(tostring(template)), 2)
end

-- The end-of-turn token a template's replies finish with (generation stops there).
function M.end_of_turn(template, tok)
    if JINJA[template] then return JINJA[template].eot end
    local name = ({ llama3 = "<|eot_id|>", chatml = "<|im_end|>", llama2 = "</s>" })[template]
    return name and tok:token_to_id(name) or tok.eos_id
end

M.is_sentencepiece = is_sentencepiece

return M
