--[[
data/tokens.lua - a tokenized dataset: every sample's token ids and train flags in three
flat arrays, built from a JSONL file once and then cached on disk.

    local ds = tokens.build("train.jsonl", tok, { template = "llama3", max_len = 2048 })
    local ds = tokens.load("train.jsonl", tok, { cache_dir = "cache/", ... })  -- build or reuse
    ds.n, ds.total                       -- samples, tokens
    local ids, train, len = ds:sample(i) -- int32_t*, uint8_t* and length of sample i (1-based)

Layout (in memory and in a cache folder, little-endian):
  tokens.i32   all samples' ids back to back          (total) int32
  train.u8     1 where the token is a training target  (total) uint8
  offsets.i64  sample i is [offsets[i-1], offsets[i])  (n + 1) int64
  meta.json    what was built from what (source file size and mtime, tokenizer file,
               template, settings) and the counts; a cache is used only when all match.
A cached dataset is mmapped: a large dataset is tokenized once and costs page cache, not
heap. Files are written under temporary names and renamed, meta.json last, so a cache is
either whole or absent.
]]
local ffi = require "ffi"
local core = require "luatrain.core"
local tensor = require "luatrain.tensor"
local json = require "luatrain.json"
local records = require "luatrain.data.records"
local templates = require "luatrain.data.templates"

local bit = require "bit"

local C, check = core.C, core.check

local M = {}
M.VERSION = 1

-- ---- growable flat arrays -----------------------------------------------------------------

local Buf = {}
Buf.__index = Buf

local function buf(ctype)
    return setmetatable({ ctype = ctype, n = 0, cap = 1024, data = ffi.new(ctype .. "[?]", 1024) }, Buf)
end

function Buf:push(v)
    if self.n == self.cap then
        local cap = self.cap * 2
        local d = ffi.new(self.ctype .. "[?]", cap)
        ffi.copy(d, self.data, self.n * ffi.sizeof(self.ctype))
        self.data, self.cap = d, cap
    end
    self.data[self.n] = v
    self.n = self.n + 1
end

-- ---- the dataset object -----------------------------------------------------------------

local Dataset = {}
Dataset.__index = Dataset

local function new_dataset(tok_ptr, train_ptr, off_ptr, n, total, keep, meta)
    return setmetatable({ tokens = tok_ptr, train = train_ptr, offsets = off_ptr, n = n,
        total = total, keep = keep, meta = meta }, Dataset)
end

-- int32_t* ids, uint8_t* train flags, length of sample i (1-based)
function Dataset:sample(i)
    local a, b = self.offsets[i - 1], self.offsets[i]
    return self.tokens + a, self.train + a, tonumber(b - a)
end

function Dataset:sample_len(i)
    return tonumber(self.offsets[i] - self.offsets[i - 1])
end

-- Sample i as Lua arrays (ids, booleans), for tests and inspection.
function Dataset:sample_table(i)
    local ids, tr, n = self:sample(i)
    local a, b = {}, {}
    for j = 0, n - 1 do
        a[j + 1] = ids[j]
        b[j + 1] = tr[j] ~= 0
    end
    return a, b
end

function Dataset:max_len()
    local m = 0
    for i = 1, self.n do
        local l = tonumber(self.offsets[i] - self.offsets[i - 1])
        if l > m then m = l end
    end
    return m
end

-- ---- building -------------------------------------------------------------------------------

local function settings_of(tok, opts)
    return {
        version = M.VERSION,
        template = type(opts.template) == "function" and "lua function" or (opts.template or "none"),
        train_on = opts.train_on or "completion",
        max_len = opts.max_len or json.null,
        format = opts.format or "auto",
        fields = opts.fields or {},
        tokenizer = tok.source or json.null,
    }
end

-- Tokenize every record of a JSONL file. opts: format, fields, skip_bad_lines, template,
-- train_on, max_len, progress (function(fraction_of_file, samples)).
function M.build(path, tok, opts)
    opts = opts or {}
    local encode = templates.encoder(tok, opts)
    local reader = records.open(path, opts)
    local ids_buf, train_buf, off_buf = buf("int32_t"), buf("uint8_t"), buf("int64_t")
    off_buf:push(0)
    local dropped, last_report = 0, 0
    for rec, lineno in reader:iter() do
        local ok, ids, train = pcall(encode, rec)
        if not ok then
            reader:close()
            error(("%s:%d: %s"):format(path, lineno, tostring(ids)), 0)
        end
        if ids then
            for j = 1, #ids do
                ids_buf:push(ids[j])
                train_buf:push(train[j] and 1 or 0)
            end
            off_buf:push(ids_buf.n)
        else
            dropped = dropped + 1
        end
        if opts.progress and reader.records - last_report >= 256 then
            last_report = reader.records
            opts.progress(reader:progress(), off_buf.n - 1)
        end
    end
    reader:close()
    if opts.progress then opts.progress(1, off_buf.n - 1) end
    local n = off_buf.n - 1
    if n == 0 then
        error(("%s: no usable samples (%d records, %d bad lines, %d dropped)"):format(path,
            reader.records, reader.bad_lines, dropped), 0)
    end
    local meta = { samples = n, tokens = ids_buf.n, records = reader.records,
        bad_lines = reader.bad_lines, bad_examples = reader.bad_examples, dropped = dropped,
        format = reader.format }
    return new_dataset(ids_buf.data, train_buf.data, off_buf.data, n, ids_buf.n,
        { ids_buf, train_buf, off_buf }, meta)
end

-- A dataset from token lists already in hand: samples = { { ids = {...}, train = {...} }, ...}
-- (train: booleans or 0/1 per token; omitted = every token trained).
function M.from_samples(samples)
    local ids_buf, train_buf, off_buf = buf("int32_t"), buf("uint8_t"), buf("int64_t")
    off_buf:push(0)
    for i, smp in ipairs(samples) do
        if type(smp.ids) ~= "table" or #smp.ids == 0 then
            error(("from_samples: sample %d has no ids"):format(i), 2)
        end
        for j, id in ipairs(smp.ids) do
            ids_buf:push(id)
            local t = smp.train and smp.train[j]
            train_buf:push((t == nil or t == true or t == 1) and 1 or 0)
        end
        off_buf:push(ids_buf.n)
    end
    return new_dataset(ids_buf.data, train_buf.data, off_buf.data, #samples, ids_buf.n,
        { ids_buf, train_buf, off_buf }, { samples = #samples, tokens = ids_buf.n })
end

-- ---- the cache ------------------------------------------------------------------------------

local function file_info(path)
    local size, mtime = ffi.new("int64_t[1]"), ffi.new("int64_t[1]")
    check(C.lt_file_info(path, size, mtime))
    return { size = tonumber(size[0]), mtime_ns = tostring(mtime[0]) }
end

-- FNV-1a over a string, as 16 hex digits (the cache folder's name).
local function hash(s)
    local h = 0xcbf29ce484222325ULL
    for i = 1, #s do
        h = bit.bxor(h, s:byte(i))
        h = h * 0x100000001b3ULL
    end
    return bit.tohex(h, 16)
end

local function expected_meta(path, tok, opts)
    local src = file_info(path)
    local tok_info = tok.source and file_info(tok.source) or json.null
    return { source = { path = path, size = src.size, mtime_ns = src.mtime_ns },
        tokenizer_file = tok_info, settings = settings_of(tok, opts) }
end

local function same(a, b)
    return json.encode(a) == json.encode(b)
end

local function write_raw(path, ptr, bytes)
    check(C.lt_write_file_atomic(path, ptr, bytes))
end

-- Save a built dataset into `dir` (meta.json last).
function M.save(ds, dir, meta)
    require("luatrain.fs").make_dirs(dir)
    write_raw(dir .. "/tokens.i32", ds.tokens, ds.total * 4)
    write_raw(dir .. "/train.u8", ds.train, ds.total)
    write_raw(dir .. "/offsets.i64", ds.offsets, (ds.n + 1) * 8)
    local m = {}
    for k, v in pairs(meta or {}) do m[k] = v end
    for k, v in pairs(ds.meta or {}) do m[k] = v end
    require("luatrain.fs").write_atomic(dir .. "/meta.json", json.encode(m, { indent = 2 }) .. "\n")
end

-- Open a cache folder (mmap); errors name the file when the folder is damaged.
function M.open_cache(dir)
    local meta = json.read_file(dir .. "/meta.json")
    local t_tok, t_train, t_off = tensor.new_header(), tensor.new_header(), tensor.new_header()
    check(C.lt_tensor_map_file(t_tok, dir .. "/tokens.i32", C.LT_DTYPE_I32))
    check(C.lt_tensor_map_file(t_train, dir .. "/train.u8", C.LT_DTYPE_U8))
    check(C.lt_tensor_map_file(t_off, dir .. "/offsets.i64", C.LT_DTYPE_I64))
    local n, total = t_off:numel() - 1, t_tok:numel()
    if n ~= meta.samples or total ~= meta.tokens or t_train:numel() ~= total then
        error(("%s: cache files disagree with meta.json (samples %d vs %s, tokens %d vs %s)"):format(dir,
            n, tostring(meta.samples), total, tostring(meta.tokens)), 0)
    end
    local off = ffi.cast("int64_t*", t_off:data_ptr())
    if off[0] ~= 0 or off[n] ~= total then
        error(dir .. ": offsets.i64 does not span tokens.i32", 0)
    end
    for i = 1, n do
        if off[i] < off[i - 1] then error(("%s: offsets.i64 decreases at sample %d"):format(dir, i), 0) end
    end
    return new_dataset(ffi.cast("int32_t*", t_tok:data_ptr()), ffi.cast("uint8_t*", t_train:data_ptr()),
        off, n, total, { t_tok, t_train, t_off }, meta)
end

-- The dataset of a JSONL file: from opts.cache_dir when a cache of the same source,
-- tokenizer and settings is there, else built (and saved there when cache_dir is set).
-- Returns the dataset and whether it came from the cache.
function M.load(path, tok, opts)
    opts = opts or {}
    if not opts.cache_dir then return M.build(path, tok, opts), false end
    local want = expected_meta(path, tok, opts)
    local dir = opts.cache_dir .. "/" .. hash(json.encode(want))
    local ok, meta = pcall(json.read_file, dir .. "/meta.json")
    if ok and type(meta) == "table" and same(meta.source, want.source) and
        same(meta.settings, want.settings) and same(meta.tokenizer_file, want.tokenizer_file) then
        return M.open_cache(dir), true
    end
    local ds = M.build(path, tok, opts)
    M.save(ds, dir, want)
    return ds, false
end

return M
