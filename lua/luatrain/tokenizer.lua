--[[
tokenizer.lua - Hugging Face tokenizer.json tokenizers (src/lt_tok.h): Llama 2 style
SentencePiece BPE with byte fallback and Llama 3 style byte-level BPE, id for id as the
Hugging Face tokenizers library (and transformers' tokenizer_config.json rules) give them.

    local tokenizer = require "luatrain.tokenizer"
    local tok = tokenizer.load("models/llama")        -- a folder, or a tokenizer.json path
    local ids = tok:encode("Hello world")              -- {1, 15043, 3186}: BOS added
    tok:encode("Hello", { add_special_tokens = false })
    tok:decode(ids, { skip_special_tokens = true })    -- "Hello world"
    local batch = tok:encode_batch({ "a", "b" })       -- on all cores
    local t = tok:encode_tensor("Hello")               -- an i32 Tensor, for data pipelines
    local s = tok:decode_stream({ skip_special_tokens = true })
    io.write(s:push(id)) ... io.write(s:flush())       -- pieces add up to tok:decode(ids)

load(path [, {config = path | false}]): a folder uses its tokenizer.json and, when present,
tokenizer_config.json; a file path looks for tokenizer_config.json beside it. The config
decides BOS/EOS ids, whether encode adds them (add_bos_token / add_eos_token) and the
default of clean_up_tokenization_spaces.

Fields: vocab_size, bos_id, eos_id, unk_id, pad_id (nil when there is none), kind
("sentencepiece" or "bytelevel"), add_bos, add_eos (what add_special_tokens adds),
clean_up_tokenization_spaces, source (the tokenizer.json path), config (or nil).

Text is bytes: invalid UTF-8 is read as a decoder would (U+FFFD per maximal invalid
subpart). Errors (a malformed file, an id outside the vocabulary) raise the C message.
]]
local ffi = require "ffi"
local core = require "luatrain.core"

local C, check = core.C, core.check

local M = {}

local ok_new, table_new = pcall(require, "table.new")
if not ok_new then table_new = function() return {} end end

-- ---- scratch buffers ----------------------------------------------------------------------
-- One ids and one text buffer for all calls (LuaJIT runs one Lua thread); a call empties
-- them first, and they shrink back when a call needed an unusually large one.

local ids_buf = ffi.new("lt_ids[1]")
local text_buf = ffi.new("lt_text[1]")
local KEEP_BYTES = 16 * 1024 * 1024

local function reset_ids()
    if ids_buf[0].cap * 4 > KEEP_BYTES then C.lt_ids_free(ids_buf) end
    ids_buf[0].len = 0
end

local function reset_text()
    if text_buf[0].cap > KEEP_BYTES then C.lt_text_free(text_buf) end
    text_buf[0].len = 0
end

local function take_text(buf)
    local n = tonumber(buf[0].len)
    return n > 0 and ffi.string(buf[0].data, n) or ""
end

-- ids[0..n) (an int32_t*) as a Lua array.
local function to_array(data, n)
    local out = table_new(n, 0)
    for i = 0, n - 1 do out[i + 1] = data[i] end
    return out
end

local id_scratch, id_scratch_n = nil, 0

-- A Lua array or a 1-D integer Tensor of ids -> int32_t*, count.
local function id_array(ids, fn)
    if type(ids) == "table" then
        local n = #ids
        if n > id_scratch_n then
            id_scratch_n = math.max(n, 2 * id_scratch_n, 64)
            id_scratch = ffi.new("int32_t[?]", id_scratch_n)
        end
        for i = 1, n do
            local v = ids[i]
            if type(v) ~= "number" or v ~= math.floor(v) or v < -2147483648 or v > 2147483647 then
                error(("tokenizer:%s: ids[%d] is %s, not an integer id"):format(fn, i, tostring(v)), 3)
            end
            id_scratch[i - 1] = v
        end
        return id_scratch, n
    end
    local tensor = require "luatrain.tensor"
    if tensor.is_tensor(ids) then
        if ids.dtype_id ~= C.LT_DTYPE_I32 and ids.dtype_id ~= C.LT_DTYPE_I64 then
            error(("tokenizer:%s: ids must be an i32 or i64 tensor, got %s"):format(fn, ids.dtype), 3)
        end
        local t = ids
        if t.dtype_id ~= C.LT_DTYPE_I32 or not t:is_contiguous() then t = t:to("i32"):contiguous() end
        return ffi.cast("int32_t*", t:data_ptr()), tonumber(t:numel()), t
    end
    error(("tokenizer:%s: ids must be a Lua array or a Tensor, got %s"):format(fn, type(ids)), 3)
end

-- ---- options ------------------------------------------------------------------------------

local function opt_bool(opts, key, default, fn)
    local v = opts[key]
    if v == nil then return default end
    if type(v) ~= "boolean" then
        error(("tokenizer:%s: option %s must be a boolean, got %s"):format(fn, key, type(v)), 4)
    end
    return v
end

local function check_opts(opts, fn, allowed)
    if opts == nil then return {} end
    if type(opts) ~= "table" then
        error(("tokenizer:%s: options must be a table, got %s"):format(fn, type(opts)), 3)
    end
    for k in pairs(opts) do
        if not allowed[k] then
            error(("tokenizer:%s: unknown option '%s'"):format(fn, tostring(k)), 3)
        end
    end
    return opts
end

local ENCODE_OPTS = { add_special_tokens = true, split_special_tokens = true }
local BATCH_OPTS = { add_special_tokens = true, split_special_tokens = true, threads = true }
local DECODE_OPTS = { skip_special_tokens = true, clean_up_tokenization_spaces = true }

local function encode_flags(opts, fn)
    local flags = 0
    if opt_bool(opts, "add_special_tokens", true, fn) then flags = flags + C.LT_TOK_ADD_SPECIAL end
    if opt_bool(opts, "split_special_tokens", false, fn) then flags = flags + C.LT_TOK_NO_SPLIT_SPECIAL end
    return flags
end

local function decode_flags(self, opts, fn)
    local flags = 0
    if opt_bool(opts, "skip_special_tokens", false, fn) then flags = flags + C.LT_TOK_SKIP_SPECIAL end
    if opt_bool(opts, "clean_up_tokenization_spaces", self.clean_up_tokenization_spaces, fn) then
        flags = flags + C.LT_TOK_CLEANUP_SPACES
    end
    return flags
end

-- ---- the tokenizer ------------------------------------------------------------------------

local Tokenizer = {}
Tokenizer.__index = Tokenizer

local function handle(self)
    local h = self._h
    if h == nil then error("tokenizer: used after free()", 3) end
    return h
end

local function check_text(text, fn)
    if type(text) ~= "string" then
        error(("tokenizer:%s: text must be a string, got %s"):format(fn, type(text)), 3)
    end
end

-- ids of text as a Lua array. opts: add_special_tokens (true), split_special_tokens (false:
-- special-token text is split out as its token; true: it is ordinary text).
function Tokenizer:encode(text, opts)
    local h = handle(self)
    check_text(text, "encode")
    local flags = encode_flags(check_opts(opts, "encode", ENCODE_OPTS), "encode")
    reset_ids()
    check(C.lt_tokenizer_encode(h, text, #text, flags, ids_buf))
    return to_array(ids_buf[0].data, tonumber(ids_buf[0].len))
end

-- Append the ids of text to an lt_ids buffer (from tokenizer.new_ids()); returns how many
-- were appended. The data pipeline's path: no Lua table per text.
function Tokenizer:encode_to(text, ids, opts)
    local h = handle(self)
    check_text(text, "encode_to")
    if not (type(ids) == "cdata" and ffi.istype("lt_ids[1]", ids)) then
        error("tokenizer:encode_to: ids must be an lt_ids buffer from tokenizer.new_ids()", 2)
    end
    local flags = encode_flags(check_opts(opts, "encode_to", ENCODE_OPTS), "encode_to")
    local before = ids[0].len
    check(C.lt_tokenizer_encode(h, text, #text, flags, ids))
    return tonumber(ids[0].len - before)
end

-- ids of text as a 1-D i32 Tensor.
function Tokenizer:encode_tensor(text, opts)
    local h = handle(self)
    check_text(text, "encode_tensor")
    local flags = encode_flags(check_opts(opts, "encode_tensor", ENCODE_OPTS), "encode_tensor")
    reset_ids()
    check(C.lt_tokenizer_encode(h, text, #text, flags, ids_buf))
    local tensor = require "luatrain.tensor"
    local n = ids_buf[0].len
    local t = tensor.new_header()
    local sizes = ffi.new("int64_t[1]", n)
    check(C.lt_tensor_from_buffer(t, C.LT_DTYPE_I32, 1, sizes, ids_buf[0].data, n * 4))
    return t
end

-- Many texts at once on threads: an array of id arrays. opts as encode, and threads (0 or
-- nil: all cores).
function Tokenizer:encode_batch(texts, opts)
    local h = handle(self)
    if type(texts) ~= "table" then
        error(("tokenizer:encode_batch: texts must be an array of strings, got %s"):format(type(texts)), 2)
    end
    opts = check_opts(opts, "encode_batch", BATCH_OPTS)
    local flags = encode_flags(opts, "encode_batch")
    local threads = opts.threads or 0
    if type(threads) ~= "number" or threads ~= math.floor(threads) or threads < 0 then
        error("tokenizer:encode_batch: threads must be a non-negative integer", 2)
    end
    local n = #texts
    if n == 0 then return {} end
    local ptrs = ffi.new("const char*[?]", n)
    local lens = ffi.new("int64_t[?]", n)
    for i = 1, n do
        local s = texts[i]
        if type(s) ~= "string" then
            error(("tokenizer:encode_batch: texts[%d] is a %s, not a string"):format(i, type(s)), 2)
        end
        -- texts keeps every string alive while C reads it
        ptrs[i - 1] = s
        lens[i - 1] = #s
    end
    local outs = ffi.new("lt_ids[?]", n)
    local st = C.lt_tokenizer_encode_batch(h, ptrs, lens, n, flags, threads, outs)
    local result = table_new(n, 0)
    if st == 0 then
        for i = 0, n - 1 do result[i + 1] = to_array(outs[i].data, tonumber(outs[i].len)) end
    end
    local msg = st ~= 0 and core.last_error() or nil
    for i = 0, n - 1 do C.lt_ids_free(outs + i) end
    if msg then error(msg, 0) end
    return result
end

-- The text of ids (a Lua array or an integer Tensor). opts: skip_special_tokens (false),
-- clean_up_tokenization_spaces (the config's value).
function Tokenizer:decode(ids, opts)
    local h = handle(self)
    local flags = decode_flags(self, check_opts(opts, "decode", DECODE_OPTS), "decode")
    local data, n, keep = id_array(ids, "decode")
    reset_text()
    check(C.lt_tokenizer_decode(h, data, n, flags, text_buf))
    local _ = keep
    return take_text(text_buf)
end

-- The id of a token string, or nil when the vocabulary has no such token.
function Tokenizer:token_to_id(token)
    local h = handle(self)
    check_text(token, "token_to_id")
    local out = ffi.new("int32_t[1]")
    check(C.lt_tokenizer_token_to_id(h, token, #token, out))
    return out[0] >= 0 and out[0] or nil
end

-- The token string of an id as the vocabulary spells it ("▁the", "Ġthe", "<0x0A>").
function Tokenizer:id_to_token(id)
    local h = handle(self)
    reset_text()
    check(C.lt_tokenizer_id_to_token(h, id, text_buf))
    return take_text(text_buf)
end

function Tokenizer:is_special(id)
    local h = handle(self)
    local out = ffi.new("int32_t[1]")
    check(C.lt_tokenizer_is_special(h, id, out))
    return out[0] ~= 0
end

-- ---- streaming decode ---------------------------------------------------------------------

local Stream = {}
Stream.__index = Stream

-- A decoder fed one id at a time: s:push(id) returns the text that id completes (often "",
-- e.g. inside a multi-byte character); s:flush() returns the rest and starts over. The
-- pieces concatenate to tok:decode of the same ids with the same options.
function Tokenizer:decode_stream(opts)
    local h = handle(self)
    local flags = decode_flags(self, check_opts(opts, "decode_stream", DECODE_OPTS), "decode_stream")
    local box = ffi.new("lt_decode_stream*[1]")
    check(C.lt_decode_stream_new(box, h, flags))
    -- the stream reads the tokenizer: keep it alive as long as the stream
    return setmetatable({ _s = ffi.gc(box[0], C.lt_decode_stream_free), tokenizer = self }, Stream)
end

local function stream_handle(self)
    if self._s == nil then error("decode stream: used after free()", 3) end
    if self.tokenizer._h == nil then error("decode stream: its tokenizer was freed", 3) end
    return self._s
end

function Stream:push(id)
    local s = stream_handle(self)
    if type(id) ~= "number" then
        error(("decode stream: push(id): id must be a number, got %s"):format(type(id)), 2)
    end
    reset_text()
    check(C.lt_decode_stream_push(s, id, text_buf))
    return take_text(text_buf)
end

function Stream:flush()
    local s = stream_handle(self)
    reset_text()
    check(C.lt_decode_stream_flush(s, text_buf))
    return take_text(text_buf)
end

function Stream:free()
    local s = self._s
    if s == nil then return end
    self._s = nil
    ffi.gc(s, nil)
    C.lt_decode_stream_free(s)
end

-- ---- loading ------------------------------------------------------------------------------

local function readable(path)
    local f = io.open(path, "rb")
    if not f then return false end
    -- a directory opens on Linux but does not read
    local ok = f:read(0) ~= nil or f:seek("end") ~= nil
    f:close()
    return ok
end

local function dirname(path)
    return path:match("^(.*)/[^/]*$") or "."
end

-- Where the files are: (tokenizer.json, tokenizer_config.json or nil).
local function locate(path, config)
    local tj
    if readable(path .. "/tokenizer.json") then
        tj = path .. "/tokenizer.json"
    else
        tj = path
    end
    if config == false then return tj, nil end
    if config ~= nil then return tj, config end
    local cj = dirname(tj) .. "/tokenizer_config.json"
    return tj, readable(cj) and cj or nil
end

local KINDS = { [1] = "sentencepiece", [2] = "bytelevel" }

function M.load(path, opts)
    if type(path) ~= "string" then
        error(("tokenizer.load: path must be a string, got %s"):format(type(path)), 2)
    end
    opts = opts or {}
    if type(opts) ~= "table" then error("tokenizer.load: options must be a table", 2) end
    if opts.config ~= nil and opts.config ~= false and type(opts.config) ~= "string" then
        error("tokenizer.load: config must be a path or false", 2)
    end
    local tj, cj = locate(path:gsub("/+$", ""), opts.config)
    local box = ffi.new("lt_tokenizer*[1]")
    check(C.lt_tokenizer_load(box, tj, cj))
    local h = ffi.gc(box[0], C.lt_tokenizer_free)
    local info = ffi.new("lt_tokenizer_info")
    check(C.lt_tokenizer_get_info(h, info))
    local function id(v) return v >= 0 and v or nil end
    return setmetatable({
        _h = h,
        vocab_size = info.vocab_size,
        bos_id = id(info.bos_id),
        eos_id = id(info.eos_id),
        unk_id = id(info.unk_id),
        pad_id = id(info.pad_id),
        kind = KINDS[info.kind] or tostring(info.kind),
        add_bos = info.add_bos ~= 0,
        add_eos = info.add_eos ~= 0,
        clean_up_tokenization_spaces = info.clean_up_spaces ~= 0,
        source = tj,
        config = cj,
    }, Tokenizer)
end

-- Release the tokenizer now (its finaliser does it otherwise). Streams made from it keep
-- it alive until they are freed.
function Tokenizer:free()
    local h = self._h
    if h == nil then return end
    self._h = nil
    ffi.gc(h, nil)
    C.lt_tokenizer_free(h)
end

function Tokenizer:__tostring()
    if self._h == nil then return "<tokenizer (freed)>" end
    return ("<tokenizer %s, %s, %d tokens>"):format(self.source, self.kind, self.vocab_size)
end

-- An empty lt_ids buffer for encode_to, freed by its finaliser (or tokenizer.free_ids).
function M.new_ids()
    return ffi.gc(ffi.new("lt_ids[1]"), C.lt_ids_free)
end

function M.free_ids(ids) C.lt_ids_free(ids) end

M.Tokenizer = Tokenizer
return M
