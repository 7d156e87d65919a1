--[[
data - from files to the token batches a model trains on.

The tokenizer pipeline (one module per step):
    local ds = lt.data.load("train.jsonl", tok, { template = "llama3", max_len = 1024,
                                                  cache_dir = "cache/" })   -- data/tokens.lua
    local loader = lt.data.loader(ds, { batch_size = 8, seq_len = 1024 })  -- data/loader.lua
    local batch = loader:next()
Records of the JSONL shapes are read by data/records.lua and turned into ids and train
flags by data/templates.lua.

The byte-level path, for text without a tokenizer: a text becomes its bytes as token ids
(0..255), and batches are random windows of that stream.

    local stream = lt.data.byte_stream(text)            -- i32 tensor of byte ids
    local batcher = lt.data.windows(stream, B, T, seed)
    local ids, targets = batcher:next()                  -- (B, T) i64 each; targets = ids shifted by one

A batcher owns its two batch tensors and refills them in place, so a step allocates
nothing; its position is (seed, draws), which a checkpoint can save.
]]
local ffi = require "ffi"
local tensor = require "luatrain.tensor"

local M = {}

M.records = require "luatrain.data.records"
M.templates = require "luatrain.data.templates"
M.tokens = require "luatrain.data.tokens"
M.load = M.tokens.load
M.build = M.tokens.build
M.mix = M.tokens.mix
M.loader = require("luatrain.data.loader").new

function M.byte_stream(text)
    if type(text) ~= "string" or #text == 0 then error("byte_stream: expected a non-empty string", 2) end
    local t = tensor.empty({ #text }, { dtype = "i32" })
    local p = ffi.cast("int32_t*", t:data_ptr())
    for i = 1, #text do p[i - 1] = text:byte(i) end
    return t
end

function M.read_file(path)
    local f, err = io.open(path, "rb")
    if not f then error(("cannot open %s: %s"):format(path, err), 0) end
    local text = f:read("*a")
    f:close()
    if #text == 0 then error(path .. ": the file is empty", 0) end
    return text
end

local Windows = {}
Windows.__index = Windows

-- Random windows of T + 1 tokens from a 1-D i32/i64 stream (longer than T). opts.rank and
-- opts.world shard it for data parallelism as the loader does: the ranks draw one global
-- sequence of batches in rounds of `world`, rank r keeping batch r of each round.
function M.windows(stream, B, T, seed, opts)
    opts = opts or {}
    local n = stream:numel()
    if n < T + 2 then
        error(("windows: a stream of %d tokens is too short for windows of %d"):format(n, T + 1), 2)
    end
    local src = stream:contiguous():to("i64")
    local self = setmetatable({
        src = src, n = n, B = B, T = T,
        ids = tensor.empty({ B, T }, { dtype = "i64" }),
        targets = tensor.empty({ B, T }, { dtype = "i64" }),
        starts = tensor.empty({ B }, { dtype = "i64" }),
        rng = ffi.new("lt_rng"),
        draws = 0,
        seed = seed or 0,
        rank = opts.rank or 0,
        world = opts.world or 1,
    }, Windows)
    require("luatrain.core").C.lt_rng_seed(self.rng, self.seed)
    return self
end

function Windows:next()
    local C = require("luatrain.core").C
    local check = require("luatrain.core").check
    -- the round's other batches are drawn and dropped, so every rank's generator stays at
    -- the global position
    for k = 0, self.world - 1 do
        check(C.lt_tensor_randint(self.starts, 0, self.n - self.T - 1, self.rng))
        self.draws = self.draws + 1
        if k == self.rank then break end
    end
    for _ = self.rank + 1, self.world - 1 do
        self.skip = self.skip or tensor.empty({ self.B }, { dtype = "i64" })
        check(C.lt_tensor_randint(self.skip, 0, self.n - self.T - 1, self.rng))
        self.draws = self.draws + 1
    end
    local s = ffi.cast("int64_t*", self.src:data_ptr())
    local st = ffi.cast("int64_t*", self.starts:data_ptr())
    local ids = ffi.cast("int64_t*", self.ids:data_ptr())
    local tg = ffi.cast("int64_t*", self.targets:data_ptr())
    local T = self.T
    for b = 0, self.B - 1 do
        local o = st[b]
        for t = 0, T - 1 do
            ids[b * T + t] = s[o + t]
            tg[b * T + t] = s[o + t + 1]
        end
    end
    return self.ids, self.targets
end

-- The position to save in a checkpoint, and its restore.
function Windows:state() return { seed = self.seed, offset = tonumber(self.rng.offset), draws = self.draws } end

function Windows:set_state(st)
    self.rng.seed = st.seed
    self.rng.offset = st.offset
    self.draws = st.draws
end

-- A small built-in corpus: simple stories from a seeded grammar, so the byte-level model
-- has structure to learn without any file.
function M.tiny_stories(n_stories, seed)
    local rng = ffi.new("lt_rng")
    require("luatrain.core").C.lt_rng_seed(rng, seed or 7)
    local draw = tensor.empty({ 1 }, { dtype = "i64" })
    local C, check = require("luatrain.core").C, require("luatrain.core").check
    local function pick(list)
        check(C.lt_tensor_randint(draw, 0, #list, rng))
        return list[draw[1] + 1]
    end
    local names = { "Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Anna", "Sam" }
    local animals = { "cat", "dog", "bird", "frog", "bunny", "fox", "duck", "bear" }
    local places = { "park", "garden", "forest", "house", "river", "hill", "school", "farm" }
    local things = { "ball", "kite", "box", "hat", "cake", "book", "boat", "drum" }
    local colors = { "red", "blue", "green", "yellow", "big", "small", "shiny", "soft" }
    local verbs = { "play", "run", "jump", "sing", "read", "swim", "dance", "hide" }
    local feelings = { "happy", "sad", "tired", "excited", "scared", "proud", "calm", "hungry" }
    local out = {}
    for _ = 1, n_stories do
        local name, animal, place = pick(names), pick(animals), pick(places)
        local thing, color, verb, feel = pick(things), pick(colors), pick(verbs), pick(feelings)
        out[#out + 1] = ("Once upon a time, there was a little %s named %s. %s liked to %s in the %s. " ..
            "One day, %s found a %s %s. %s was very %s. %s said, \"I will share my %s with my friends.\" " ..
            "They played with the %s %s all day. The end.\n"):format(animal, name, name, verb, place,
            name, color, thing, name, feel, name, thing, color, thing)
    end
    draw:free()
    return table.concat(out)
end

return M
