--[[
gguf.lua - GGUF files (llama.cpp's format), written and read from the specification.

    local gguf = require "luatrain.gguf"
    gguf.export_llama(model, "model_folder", "out/model.gguf", { quant = "q8_0" })
    local f = gguf.read("out/model.gguf")        -- f.meta[key], f.tensors[i] = { name, dims, type, ... }
    local w = f:tensor("blk.0.attn_q.weight")    -- f32, dequantized, in GGUF's own row order
    local m = gguf.load_llama("out/model.gguf")  -- a luatrain model of the file's weights

A GGUF v3 file is, little-endian: "GGUF", u32 version, u64 tensor count, u64 key/value
count; the key/value pairs (a string key: u64 length and bytes; a u32 value type; the
value, arrays as u32 element type, u64 count and the elements); per tensor its name, u32
dimension count, u64 sizes fastest first (ne[0] is a row's length), u32 ggml type and u64
offset into the data section; zero padding to general.alignment (32); the data, each
tensor starting at a multiple of the alignment.

export_llama writes llama.cpp's "llama" architecture: the hyperparameters under llama.*,
the tensors under llama.cpp's names, the query and key projections' rows reordered from
Hugging Face's rotate-half layout to the interleaved pairs llama.cpp's RoPE takes (as its
converter does), and the tokenizer of the model's folder (tokenizer.json and
tokenizer_config.json; a byte-level BPE as "gpt2" with its merges and pre-tokenizer, special
tokens as control tokens) with BOS, EOS and the chat template when the folder has one.
Adapters are merged and quantized bases dequantized first; every two-dimensional weight
takes opts.quant ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k"), falling back to
q8_0 and then f16 where a row does not split into the type's blocks, as llama.cpp does;
norms stay f32. The file is written through a temporary file and renamed into place, so a
failure leaves no partial file behind.
]]
local ffi = require "ffi"
local core = require "luatrain.core"
local tensor = require "luatrain.tensor"
local json = require "luatrain.json"

local C, check = core.C, core.check

local M = {}

local ALIGN = 32
local V = { u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, bool = 7, string = 8, array = 9,
    u64 = 10, i64 = 11, f64 = 12 }
local V_NAME = {}
for k, v in pairs(V) do V_NAME[v] = k end
local SCALAR = { u8 = "uint8_t", i8 = "int8_t", u16 = "uint16_t", i16 = "int16_t", u32 = "uint32_t",
    i32 = "int32_t", f32 = "float", u64 = "uint64_t", i64 = "int64_t", f64 = "double", bool = "uint8_t" }
local SIZE = { u8 = 1, i8 = 1, u16 = 2, i16 = 2, u32 = 4, i32 = 4, f32 = 4, u64 = 8, i64 = 8, f64 = 8, bool = 1 }

-- ggml tensor types luatrain writes, by name and id
M.TYPES = { f32 = 0, f16 = 1, q4_0 = 2, q8_0 = 8, q4_k = 12, q6_k = 14, bf16 = 30 }
local TYPE_NAME = {}
for k, v in pairs(M.TYPES) do TYPE_NAME[v] = k end
-- llama.cpp's llama_ftype for general.file_type: what most of the weights are
local FILE_TYPE = { f32 = 0, f16 = 1, q4_0 = 2, q8_0 = 7, q4_k = 15, q6_k = 18, bf16 = 32 }

-- ---- encoding -------------------------------------------------------------------------------

local function scalar(kind, v)
    local b = ffi.new(SCALAR[kind] .. "[1]", v)
    return ffi.string(b, SIZE[kind])
end

local function str(s) return scalar("u64", #s) .. s end

local function array_of(kind, list)
    local n = #list
    local parts = { scalar("u32", V[kind]), scalar("u64", n) }
    if kind == "string" then
        for i = 1, n do parts[#parts + 1] = str(list[i]) end
    else
        local b = ffi.new(SCALAR[kind] .. "[?]", math.max(n, 1))
        for i = 1, n do b[i - 1] = list[i] end
        parts[#parts + 1] = ffi.string(b, n * SIZE[kind])
    end
    return table.concat(parts)
end

-- One key/value: kind is a scalar kind, "string", or "array:<kind>".
local function kv(key, kind, value)
    local elem = kind:match("^array:(.+)$")
    if elem then return str(key) .. scalar("u32", V.array) .. array_of(elem, value) end
    if kind == "string" then return str(key) .. scalar("u32", V.string) .. str(value) end
    if kind == "bool" then value = value and 1 or 0 end
    return str(key) .. scalar("u32", V[kind]) .. scalar(kind, value)
end

local function align(n) return math.ceil(n / ALIGN) * ALIGN end

-- Bytes of a tensor of `dims` (fastest first) in ggml type id `t`.
local function tensor_bytes(t, dims)
    local rows = 1
    for i = 2, #dims do rows = rows * dims[i] end
    local rb = tonumber(C.lt_gguf_row_bytes(t, dims[1]))
    if rb < 0 then error(("gguf: a row of %d values is not whole blocks of %s"):format(dims[1], TYPE_NAME[t]), 3) end
    return rows * rb
end

--[[ Write a GGUF file. meta: a list of { key, kind, value }; tensors: a list of { name,
dims (fastest first), type (a name of M.TYPES), data = function() -> f32 Tensor of
dims[2]..[n] rows of dims[1] values (freed here) }. The data functions are called in
order, one tensor at a time. ]]
function M.write(path, meta, tensors)
    local parts = { "GGUF", scalar("u32", 3), scalar("u64", #tensors), scalar("u64", #meta + 1) }
    parts[#parts + 1] = kv("general.alignment", "u32", ALIGN)
    for _, e in ipairs(meta) do parts[#parts + 1] = kv(e[1], e[2], e[3]) end
    local off = 0
    for _, t in ipairs(tensors) do
        local id = M.TYPES[t.type]
        if not id then error(("gguf.write: tensor %s: unknown type %s"):format(t.name, tostring(t.type)), 2) end
        t.id, t.bytes, t.offset = id, tensor_bytes(id, t.dims), off
        parts[#parts + 1] = str(t.name) .. scalar("u32", #t.dims)
        for _, d in ipairs(t.dims) do parts[#parts + 1] = scalar("u64", d) end
        parts[#parts + 1] = scalar("u32", id) .. scalar("u64", off)
        off = align(off + t.bytes)
    end
    local head = table.concat(parts)
    head = head .. string.rep("\0", align(#head) - #head)
    local fp = ffi.new("lt_atomic_file *[1]")
    check(C.lt_atomic_file_open(fp, path))
    local f = fp[0]
    local ok, err = pcall(function()
        check(C.lt_atomic_file_write(f, head, #head))
        local pad = string.rep("\0", ALIGN)
        for _, t in ipairs(tensors) do
            local x = t.data()
            local rows = 1
            for i = 2, #t.dims do rows = rows * t.dims[i] end
            if x:numel() ~= rows * t.dims[1] or x.dtype ~= "f32" or not x:is_contiguous() then
                error(("gguf.write: tensor %s: the data is not %d contiguous f32 values"):format(t.name,
                    rows * t.dims[1]), 0)
            end
            local out = tensor.empty({ t.bytes }, { dtype = "u8" })
            local st = C.lt_gguf_quantize(t.id, ffi.cast("const float *", x:data_ptr()), rows, t.dims[1],
                out:data_ptr())
            x:free()
            if st ~= 0 then
                out:free()
                check(st)
            end
            st = C.lt_atomic_file_write(f, out:data_ptr(), t.bytes)
            out:free()
            check(st)
            local p = align(t.bytes) - t.bytes
            if p > 0 then check(C.lt_atomic_file_write(f, pad, p)) end
        end
    end)
    if not ok then
        C.lt_atomic_file_abort(f)
        error(err, 0)
    end
    check(C.lt_atomic_file_commit(f))
end

-- ---- reading ---------------------------------------------------------------------------------

local File = {}
File.__index = File

-- Read a GGUF file's header, key/values and tensor infos (the data stays in the file).
-- Errors name the file and what is wrong.
function M.read(path)
    local fh, why = io.open(path, "rb")
    if not fh then error(("gguf.read: %s"):format(why), 2) end
    local size = fh:seek("end")
    fh:seek("set", 0)
    -- the header is read in pieces as it is parsed
    local pos = 0
    local function bytes(n)
        if pos + n > size then error(("%s: ends inside the header (at byte %d, %d more wanted)"):format(path, pos, n), 0) end
        local s = fh:read(n)
        pos = pos + n
        return s
    end
    local function num(kind)
        local s = bytes(SIZE[kind])
        local b = ffi.new(SCALAR[kind] .. "[1]")
        ffi.copy(b, s, SIZE[kind])
        return tonumber(b[0])
    end
    local function gstr()
        local n = num("u64")
        if n > size then error(("%s: a string of %d bytes at byte %d"):format(path, n, pos), 0) end
        return bytes(n)
    end
    local value
    value = function(kind_id, key)
        local kind = V_NAME[kind_id]
        if not kind then error(("%s: key %s has unknown value type %d"):format(path, key, kind_id), 0) end
        if kind == "string" then return gstr() end
        if kind == "array" then
            local et, n = num("u32"), num("u64")
            local out = {}
            for i = 1, n do out[i] = value(et, key) end
            return out
        end
        local v = num(kind)
        if kind == "bool" then return v ~= 0 end
        return v
    end
    local ok, res = pcall(function()
        if bytes(4) ~= "GGUF" then error(("%s: not a GGUF file (no GGUF magic)"):format(path), 0) end
        local version = num("u32")
        if version ~= 3 and version ~= 2 then error(("%s: GGUF version %d (2 and 3 are read)"):format(path, version), 0) end
        local nt, nkv = num("u64"), num("u64")
        local meta, keys = {}, {}
        for _ = 1, nkv do
            local key = gstr()
            meta[key] = value(num("u32"), key)
            keys[#keys + 1] = key
        end
        local tensors, by_name = {}, {}
        for i = 1, nt do
            local name = gstr()
            local nd = num("u32")
            local dims = {}
            for d = 1, nd do dims[d] = num("u64") end
            local t = { name = name, dims = dims, type = num("u32"), offset = num("u64") }
            t.type_name = TYPE_NAME[t.type]
            tensors[i], by_name[name] = t, t
        end
        local al = meta["general.alignment"] or ALIGN
        local data = math.ceil(pos / al) * al
        for _, t in ipairs(tensors) do
            if t.type_name then
                t.bytes = tensor_bytes(t.type, t.dims)
                if data + t.offset + t.bytes > size then
                    error(("%s: tensor %s runs past the end of the file"):format(path, t.name), 0)
                end
            end
        end
        return setmetatable({ path = path, version = version, meta = meta, keys = keys, tensors = tensors,
            by_name = by_name, data_offset = data, size = size, fh = fh }, File)
    end)
    if not ok then
        fh:close()
        error(res, 0)
    end
    return res
end

-- Tensor `name` as f32 (dequantized), shaped { dims[n], ..., dims[1] } (row-major).
function File:tensor(name)
    local t = self.by_name[name]
    if not t then error(("%s: no tensor %s"):format(self.path, name), 2) end
    if not t.type_name then error(("%s: tensor %s has ggml type %d, which luatrain does not read"):format(
        self.path, name, t.type), 2) end
    self.fh:seek("set", self.data_offset + t.offset)
    local raw = self.fh:read(t.bytes)
    local shape = {}
    for i = #t.dims, 1, -1 do shape[#shape + 1] = t.dims[i] end
    local out = tensor.empty(shape)
    local rows = out:numel() / t.dims[1]
    check(C.lt_gguf_dequantize(t.type, raw, rows, t.dims[1], ffi.cast("float *", out:data_ptr())))
    return out
end

function File:close()
    if self.fh then self.fh:close() end
    self.fh = nil
end

-- ---- the llama architecture ----------------------------------------------------------------

-- Hugging Face's names -> llama.cpp's, per layer and for the rest.
local LAYER_NAMES = {
    ["input_layernorm.weight"] = "attn_norm.weight",
    ["self_attn.q_proj.weight"] = "attn_q.weight",
    ["self_attn.k_proj.weight"] = "attn_k.weight",
    ["self_attn.v_proj.weight"] = "attn_v.weight",
    ["self_attn.o_proj.weight"] = "attn_output.weight",
    ["post_attention_layernorm.weight"] = "ffn_norm.weight",
    ["mlp.gate_proj.weight"] = "ffn_gate.weight",
    ["mlp.up_proj.weight"] = "ffn_up.weight",
    ["mlp.down_proj.weight"] = "ffn_down.weight",
}
local TOP_NAMES = { ["model.embed_tokens.weight"] = "token_embd.weight", ["model.norm.weight"] = "output_norm.weight",
    ["lm_head.weight"] = "output.weight" }

function M.gguf_name(hf)
    local i, rest = hf:match("^model%.layers%.(%d+)%.(.+)$")
    if i then return LAYER_NAMES[rest] and ("blk.%s.%s"):format(i, LAYER_NAMES[rest]) end
    return TOP_NAMES[hf]
end

-- Rows of a query or key projection (heads x head_dim, cols) from Hugging Face's order (each
-- head's first halves, then its second halves) to llama.cpp's interleaved pairs, or back.
local function permute_heads(w, heads, back)
    local rows, cols = w:size(1), w:size(2)
    local hd = rows / heads
    local v = back and w:view(heads, hd / 2, 2, cols) or w:view(heads, 2, hd / 2, cols)
    local p = v:transpose(2, 3):contiguous()
    local out = p:view(rows, cols):contiguous()
    v:free()
    p:free()
    return out
end

-- The heads whose rows a weight's RoPE reorder goes by: the query projection's, the key
-- projection's (grouped), nil for any other weight.
local function heads_of(hf, c)
    if hf:find("q_proj", 1, true) then return c.num_attention_heads end
    if hf:find("k_proj", 1, true) then return c.num_key_value_heads or c.num_attention_heads end
    return nil
end

-- The model's weights as { hf_name, f32 tensor maker } in module order: adapters merged into
-- their (dequantized) base, tied weights once.
local function weight_list(model)
    local nnlora = require "luatrain.nn.lora"
    local list = {}
    local function visit(m, prefix)
        local mt = getmetatable(m)
        if mt == nnlora.LoRALinear or mt == nnlora.QuantLinear then
            list[#list + 1] = { prefix .. "weight", function()
                return mt == nnlora.LoRALinear and m:merged_weight() or m.qweight:dequantize("f32")
            end, m.out_features, m.in_features }
            return
        end
        for _, n in ipairs(m._param_names) do
            if not (m._tied and m._tied[n]) then
                local p = m._params[n]
                -- a copy: the writer frees what it is given
                list[#list + 1] = { prefix .. n, function()
                    local x = tensor.empty(p:shape())
                    x:copy_(p)
                    return x
                end, unpack(p:shape()) }
            end
        end
        for _, c in ipairs(m:named_children()) do visit(c.module, prefix .. c.name .. ".") end
    end
    visit(model, "")
    return list
end

-- ---- the tokenizer ---------------------------------------------------------------------------

local function read_json(path) return json.read_file(path, { missing_ok = true }) end

-- special token ids of tokenizer_config.json's bos/eos/pad/unk entries, as GGUF keys
local function special_ids(tc, lookup, meta)
    local function id_of(v)
        if type(v) == "table" then v = v.content end
        return type(v) == "string" and lookup(v) or nil
    end
    local ids = {}
    for _, k in ipairs({ "bos", "eos", "unk", "pad" }) do
        ids[k] = id_of(tc[k .. "_token"])
        if ids[k] then meta[#meta + 1] = { ("tokenizer.ggml.%s_token_id"):format(k == "pad" and "padding" or k),
            "u32", ids[k] } end
    end
    return ids
end

-- Key/values for the tokenizer of a Hugging Face folder (tokenizer.json and
-- tokenizer_config.json beside config.json).
function M.tokenizer_meta(folder, vocab_size)
    local tj = read_json(folder .. "/tokenizer.json")
    if not tj then error(("gguf: %s/tokenizer.json is missing: the GGUF file needs the tokenizer"):format(folder), 2) end
    local tc = read_json(folder .. "/tokenizer_config.json") or {}
    local model = tj.model or {}
    if model.type ~= "BPE" then
        error(("gguf: %s/tokenizer.json: model type %s (BPE is written)"):format(folder, tostring(model.type)), 2)
    end
    if model.byte_fallback then return M.spm_tokenizer_meta(tj, tc, vocab_size) end
    local pre = tj.pre_tokenizer
    local pre_name
    local function has_bytelevel(p)
        if type(p) ~= "table" then return false end
        if p.type == "ByteLevel" then return true end
        for _, q in ipairs(p.pretokenizers or {}) do if has_bytelevel(q) then return true end end
        return false
    end
    if not has_bytelevel(pre) then
        error(("gguf: %s/tokenizer.json: only byte-level BPE tokenizers (Llama 3, GPT-2) are written so far"):format(
            folder), 2)
    end
    if pre.type == "ByteLevel" and pre.use_regex ~= false then
        pre_name = "gpt-2"
    else
        -- Llama 3: a Split on its own regex, then ByteLevel without one
        local text = json.encode(pre)
        if text:find("\\p{N}{1,3}", 1, true) then pre_name = "llama-bpe" else
            error(("gguf: %s/tokenizer.json: a pre-tokenizer llama.cpp would not know (%s)"):format(folder,
                text:sub(1, 200)), 2)
        end
    end
    local tokens, types = {}, {}
    local n = 0
    for tok, id in pairs(model.vocab or {}) do
        tokens[id + 1] = tok
        types[id + 1] = 1
        n = math.max(n, id + 1)
    end
    local specials = {}
    for _, a in ipairs(tj.added_tokens or {}) do
        tokens[a.id + 1] = a.content
        types[a.id + 1] = a.special and 3 or 4
        specials[a.content] = a.id
        n = math.max(n, a.id + 1)
    end
    -- the embedding may have rows past the tokenizer's ids (padding): they get placeholders
    n = math.max(n, vocab_size or 0)
    for i = 1, n do
        if not tokens[i] then
            tokens[i] = ("[PAD%d]"):format(i - 1)
            types[i] = 5 -- unused
        end
    end
    local merges = {}
    for i, m in ipairs(model.merges or {}) do
        merges[i] = type(m) == "table" and (m[1] .. " " .. m[2]) or m
    end
    local meta = {
        { "tokenizer.ggml.model", "string", "gpt2" },
        { "tokenizer.ggml.pre", "string", pre_name },
        { "tokenizer.ggml.tokens", "array:string", tokens },
        { "tokenizer.ggml.token_type", "array:i32", types },
        { "tokenizer.ggml.merges", "array:string", merges },
    }
    local ids = special_ids(tc, function(t) return specials[t] or (model.vocab or {})[t] end, meta)
    meta[#meta + 1] = { "tokenizer.ggml.add_bos_token", "bool", ids.bos ~= nil and tc.add_bos_token ~= false }
    if type(tc.chat_template) == "string" then meta[#meta + 1] = { "tokenizer.chat_template", "string", tc.chat_template } end
    return meta, ids
end

--[[ A SentencePiece-style BPE with byte fallback (Llama 2: "▁" for spaces, <0xXX> tokens for
bytes outside the vocabulary) as llama.cpp's "llama" tokenizer. It merges the adjacent pair
whose joined text is the token of highest score; the scores written are minus the rank of
the first merge of tokenizer.json that makes each token, so it merges in the order the
merges list gives, as Hugging Face's BPE does. Byte tokens are type 6, unknown 2, special
tokens control (3), other added ones user-defined (4). ]]
function M.spm_tokenizer_meta(tj, tc, vocab_size)
    local model = tj.model
    local tokens, types, scores = {}, {}, {}
    local n = 0
    local by_text = {}
    for tok, id in pairs(model.vocab or {}) do
        tokens[id + 1] = tok
        by_text[tok] = id
        types[id + 1] = tok:match("^<0x%x%x>$") and 6 or 1
        scores[id + 1] = -1e9 -- not made by any merge (single characters, bytes)
        n = math.max(n, id + 1)
    end
    if model.unk_token and by_text[model.unk_token] then types[by_text[model.unk_token] + 1] = 2 end
    for rank, m in ipairs(model.merges or {}) do
        local a, b
        if type(m) == "table" then a, b = m[1], m[2] else a, b = m:match("^(.-) (.*)$") end
        local id = a and by_text[a .. b]
        if id and scores[id + 1] == -1e9 then scores[id + 1] = -(rank - 1) end
    end
    for _, a in ipairs(tj.added_tokens or {}) do
        tokens[a.id + 1] = a.content
        by_text[a.content] = a.id
        if types[a.id + 1] ~= 2 then types[a.id + 1] = a.special and 3 or 4 end
        scores[a.id + 1] = scores[a.id + 1] or 0
        n = math.max(n, a.id + 1)
    end
    n = math.max(n, vocab_size or 0)
    for i = 1, n do
        if not tokens[i] then
            tokens[i], types[i], scores[i] = ("[PAD%d]"):format(i - 1), 5, -1e9
        end
    end
    local norm = json.encode(tj.normalizer or json.null)
    local meta = {
        { "tokenizer.ggml.model", "string", "llama" },
        { "tokenizer.ggml.tokens", "array:string", tokens },
        { "tokenizer.ggml.scores", "array:f32", scores },
        { "tokenizer.ggml.token_type", "array:i32", types },
        -- Llama 2's normalizer puts "▁" before the text (Prepend)
        { "tokenizer.ggml.add_space_prefix", "bool", norm:find('"Prepend"', 1, true) ~= nil },
    }
    local ids = special_ids(tc, function(t) return by_text[t] end, meta)
    meta[#meta + 1] = { "tokenizer.ggml.add_bos_token", "bool", ids.bos ~= nil and tc.add_bos_token ~= false }
    meta[#meta + 1] = { "tokenizer.ggml.add_eos_token", "bool", tc.add_eos_token == true }
    if type(tc.chat_template) == "string" then meta[#meta + 1] = { "tokenizer.chat_template", "string", tc.chat_template } end
    return meta, ids
end

-- ---- export ---------------------------------------------------------------------------------

local BLOCK = { q8_0 = 32, q4_0 = 32, q4_k = 256, q6_k = 256 }

-- The type a weight of rows of `cols` values takes for quant `q`: q itself where the rows
-- split into its blocks, else q8_0, else f16.
function M.weight_type(q, cols)
    local b = BLOCK[q]
    if not b or cols % b == 0 then return q end
    if cols % 32 == 0 then return "q8_0" end
    return "f16"
end

-- Write `model` (a luatrain Llama, adapters merged on the fly) as a GGUF file at `path`, the
-- tokenizer from `folder`. opts: quant ("f16" by default), name (general.name).
-- x in llama.cpp's RoPE row order when heads is given (x itself is freed), else x.
local function permuted(x, heads)
    if not heads then return x end
    local p = permute_heads(x, heads)
    x:free()
    return p
end

-- llama.cpp's "llama" architecture has no per-head q/k norm: a Qwen3 would load and compute
-- something else, so it is refused until the qwen3 architecture is written.
local function llama_arch_only(model, who)
    if model.config and model.config.qkv_bias then
        error(("%s: a Qwen2 model (q/k/v biases) needs llama.cpp's qwen2 architecture, which luatrain does not "
            .. "write yet; export a merged Hugging Face folder instead"):format(who), 3)
    end
    if model.config and model.config.qk_norm then
        error(("%s: a Qwen3 model (q_norm/k_norm) needs llama.cpp's qwen3 architecture, which luatrain does not "
            .. "write yet; export a merged Hugging Face folder instead"):format(who), 3)
    end
end

function M.export_llama(model, folder, path, opts)
    opts = opts or {}
    llama_arch_only(model, "gguf.export_llama")
    local q = opts.quant or "f16"
    if not M.TYPES[q] then
        error(("gguf.export_llama: quant must be one of f32, f16, bf16, q8_0, q4_0, q4_k, q6_k, got %s"):format(
            tostring(q)), 2)
    end
    local c = model.config
    local head_dim = c.head_dim or (c.hidden_size / c.num_attention_heads)
    local meta = {
        { "general.architecture", "string", "llama" },
        { "general.name", "string", opts.name or "luatrain export" },
        { "general.file_type", "u32", FILE_TYPE[q] },
        { "general.quantization_version", "u32", 2 },
        { "llama.vocab_size", "u32", c.vocab_size },
        { "llama.context_length", "u32", c.max_position_embeddings },
        { "llama.embedding_length", "u32", c.hidden_size },
        { "llama.block_count", "u32", c.num_hidden_layers },
        { "llama.feed_forward_length", "u32", c.intermediate_size },
        { "llama.attention.head_count", "u32", c.num_attention_heads },
        { "llama.attention.head_count_kv", "u32", c.num_key_value_heads or c.num_attention_heads },
        { "llama.rope.freq_base", "f32", c.rope_theta or 10000 },
        { "llama.attention.layer_norm_rms_epsilon", "f32", c.rms_norm_eps or 1e-5 },
        { "llama.rope.dimension_count", "u32", head_dim },
        { "llama.attention.key_length", "u32", head_dim },
        { "llama.attention.value_length", "u32", head_dim },
    }
    local rs = c.rope_scaling
    if type(rs) == "table" and rs.type == "linear" then
        meta[#meta + 1] = { "llama.rope.scaling.type", "string", "linear" }
        meta[#meta + 1] = { "llama.rope.scaling.factor", "f32", rs.factor }
    end
    local tmeta, ids = M.tokenizer_meta(folder, c.vocab_size)
    for _, e in ipairs(tmeta) do meta[#meta + 1] = e end
    local tensors = {}
    for _, w in ipairs(weight_list(model)) do
        local hf, make = w[1], w[2]
        local name = M.gguf_name(hf)
        if not name then error(("gguf.export_llama: no llama.cpp name for %s"):format(hf), 2) end
        local dims = w[4] and { w[4], w[3] } or { w[3] }
        local ty = #dims == 1 and "f32" or M.weight_type(q, dims[1])
        local heads = heads_of(hf, c)
        tensors[#tensors + 1] = { name = name, dims = dims, type = ty, data = function()
            return permuted(make(), heads)
        end }
    end
    if type(rs) == "table" and rs.type == "llama3" then
        -- Llama 3's scaled frequencies: llama.cpp divides each rotation's angle by a factor
        -- from rope_freqs.weight, the unscaled inverse frequency over the scaled one
        tensors[#tensors + 1] = { name = "rope_freqs.weight", dims = { head_dim / 2 }, type = "f32", data = function()
            local F = require "luatrain.ops.nn"
            local plain = F.rope_inv_freq(head_dim, { theta = c.rope_theta })
            local scaled = F.rope_inv_freq(head_dim, { theta = c.rope_theta, scaling = rs })
            local out = plain / scaled
            plain:free()
            scaled:free()
            return out
        end }
    end
    M.write(path, meta, tensors)
    return { tensors = #tensors, bos = ids.bos, eos = ids.eos }
end

-- ---- LoRA adapters (llama.cpp's adapter GGUF) ---------------------------------------------

--[[ Write the model's LoRA adapters as llama.cpp's adapter file: general.type "adapter",
adapter.type "lora", adapter.lora.alpha, and per adapted weight W two tensors, W.lora_a (the
A matrix, r x in: dims { in, r }) and W.lora_b (B, out x r: dims { r, out }), B's rows in
llama.cpp's RoPE order for the query and key projections. llama.cpp scales B A by alpha over
the rank, so the alpha written is luatrain's scaling times r (rsLoRA's alpha / sqrt(r)
included). opts.quant: "f32" (default) or "f16". DoRA adapters have no llama.cpp form. ]]
function M.export_lora(model, path, opts)
    opts = opts or {}
    llama_arch_only(model, "gguf.export_lora")
    local q = opts.quant or "f32"
    if q ~= "f32" and q ~= "f16" then error(("gguf.export_lora: quant must be f32 or f16, got %s"):format(q), 2) end
    local c = model.config
    local peft = require "luatrain.peft"
    local layers = peft.layers(model)
    if #layers == 0 then error("gguf.export_lora: the model has no LoRA adapters", 2) end
    if model._whole_modules and #model._whole_modules > 0 then
        error(("gguf.export_lora: %s are trained whole (modules_to_save), which a llama.cpp adapter cannot carry; "
            .. "export a merged model instead"):format(table.concat(model._whole_modules, ", ")), 2)
    end
    local tensors, alpha = {}, nil
    for _, e in ipairs(layers) do
        local hf, m = e[1], e[2]
        if m.dora then error(("gguf.export_lora: %s is a DoRA adapter, which llama.cpp cannot apply"):format(hf), 2) end
        if m.merged then error(("gguf.export_lora: %s is merged into its weight; unmerge it first"):format(hf), 2) end
        -- OLoRA/PiSSA layers go out as adapters of the original base (rank 2r, see plain_pair)
        local A, B, r = m:plain_pair()
        local a = m.scaling * r
        if alpha and math.abs(alpha - a) > 1e-6 * math.abs(a) then
            error(("gguf.export_lora: %s scales by %g but others by %g: llama.cpp takes one alpha per file"):format(
                hf, m.scaling, alpha / m.r), 2)
        end
        alpha = a
        local name = M.gguf_name(hf .. ".weight")
        if not name then error(("gguf.export_lora: no llama.cpp name for %s"):format(hf), 2) end
        local heads = heads_of(hf, c)
        tensors[#tensors + 1] = { name = name .. ".lora_a", dims = { m.in_features, r }, type = q, data = function()
            local x = tensor.empty(A:shape())
            x:copy_(A)
            return x
        end }
        tensors[#tensors + 1] = { name = name .. ".lora_b", dims = { r, m.out_features }, type = q, data = function()
            local x = tensor.empty(B:shape())
            x:copy_(B)
            return permuted(x, heads)
        end }
    end
    local meta = {
        { "general.architecture", "string", "llama" },
        { "general.type", "string", "adapter" },
        { "general.name", "string", opts.name or "luatrain LoRA adapter" },
        { "adapter.type", "string", "lora" },
        { "adapter.lora.alpha", "f32", alpha },
    }
    M.write(path, meta, tensors)
    return { tensors = #tensors, alpha = alpha }
end

-- Put the adapters of an adapter GGUF (export_lora's) on `model` (a Llama without them):
-- LoRA of the file's rank and alpha on each weight it names, B's rows back in Hugging Face's
-- order. Returns the model.
function M.load_lora(model, path)
    local f = M.read(path)
    local ok, err = pcall(function()
        if f.meta["general.type"] ~= "adapter" or f.meta["adapter.type"] ~= "lora" then
            error(("%s: not a LoRA adapter GGUF (general.type %s, adapter.type %s)"):format(path,
                tostring(f.meta["general.type"]), tostring(f.meta["adapter.type"])), 0)
        end
        local c = model.config
        -- which weights, and the rank, from the tensors
        local want, r = {}, nil
        for _, t in ipairs(f.tensors) do
            local base = t.name:match("^(.*)%.lora_a$")
            if base then
                want[base] = true
                r = r or t.dims[2]
                if t.dims[2] ~= r then error(("%s: %s has rank %d, others %d"):format(path, t.name, t.dims[2], r), 0) end
            end
        end
        if not r then error(("%s: no .lora_a tensors"):format(path), 0) end
        local names = {}
        for _, rec in ipairs(model:named_modules()) do
            local g = rec.name ~= "" and M.gguf_name(rec.name .. ".weight")
            if g and want[g] then names[#names + 1] = rec.name end
        end
        require("luatrain.peft").apply(model, { r = r, alpha = f.meta["adapter.lora.alpha"], target = names })
        for _, e in ipairs(require("luatrain.peft").layers(model)) do
            local hf, m = e[1], e[2]
            local g = M.gguf_name(hf .. ".weight")
            local heads = heads_of(hf, c)
            local a = f:tensor(g .. ".lora_a")
            m.lora_A.weight:copy_(a)
            a:free()
            local b = f:tensor(g .. ".lora_b")
            if heads then
                local p = permute_heads(b, heads, true)
                b:free()
                b = p
            end
            m.lora_B.weight:copy_(b)
            b:free()
        end
    end)
    f:close()
    if not ok then error(err, 0) end
    return model
end

-- A luatrain Llama (f32) of a GGUF file written by export_llama: its weights dequantized and
-- the query and key rows put back in Hugging Face's order.
function M.load_llama(path)
    local f = M.read(path)
    local m = f.meta
    if m["general.architecture"] ~= "llama" then
        f:close()
        error(("%s: architecture %s (llama is read)"):format(path, tostring(m["general.architecture"])), 2)
    end
    local cfg = { vocab_size = m["llama.vocab_size"] or #m["tokenizer.ggml.tokens"],
        hidden_size = m["llama.embedding_length"], intermediate_size = m["llama.feed_forward_length"],
        num_hidden_layers = m["llama.block_count"], num_attention_heads = m["llama.attention.head_count"],
        num_key_value_heads = m["llama.attention.head_count_kv"], max_position_embeddings = m["llama.context_length"],
        rope_theta = m["llama.rope.freq_base"], rms_norm_eps = m["llama.attention.layer_norm_rms_epsilon"],
        head_dim = m["llama.attention.key_length"], tie_word_embeddings = f.by_name["output.weight"] == nil }
    local model = require("luatrain.pretrained").new(cfg, { init = false })
    local state = model:state_dict()
    local ok, err = pcall(function()
        for hf, p in pairs(state) do
            local name = M.gguf_name(hf)
            if not name or not f.by_name[name] then error(("%s: no tensor for %s"):format(path, hf), 0) end
            local x = f:tensor(name)
            local heads = heads_of(hf, cfg)
            if heads then
                local b = permute_heads(x, heads, true)
                x:free()
                x = b
            end
            p:copy_(x:view(p:shape()))
            x:free()
        end
    end)
    f:close()
    if not ok then error(err, 0) end
    return model
end

return M
