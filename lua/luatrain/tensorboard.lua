--[[
tensorboard.lua - TensorBoard event files, written natively (lt.tensorboard).

    local tb = lt.tensorboard.open("runs/x")          -- runs/x/events.out.tfevents.<time>.<host>
    tb:scalar("train/loss", 2.31, 10)                 -- tag, value, step
    tb:text("samples", "Q: ... A: ...", 10)
    tb:close()

An event file is a sequence of TFRecords: a little-endian u64 length, the masked CRC-32C of
those 8 bytes (u32), the data, the masked CRC-32C of the data (u32); masked means
((crc >> 15) | (crc << 17)) + 0xa282ead8, mod 2^32; CRC-32C is Castagnoli's (reflected
polynomial 0x82f63b78). Each record's data is an Event protocol buffer: wall_time (field 1,
double), step (2, int64), file_version (3, string: the first event says "brain.Event:2") or
summary (5): a Summary of Values, each a tag (1, string) with simple_value (2, float) for a
scalar, or for text the metadata (9: plugin_data (1) with plugin_name (1) "text") and a
tensor (8: a TensorProto of dtype (1) DT_STRING = 7, an empty tensor_shape (2) and
string_val (8)). The protocol buffers are encoded here by hand: varint keys
(field << 3 | wire type), varints, little-endian fixed 32/64-bit values, length-delimited
bytes. Each record is written and flushed at once, so TensorBoard sees a run as it goes.
]]
local ffi = require "ffi"
local bit = require "bit"

local M = {}

-- Seconds since the epoch, with the fraction (TensorBoard's wall_time).
function M.wall_time() return require("luatrain.fs").wall_time() end

-- ---- CRC-32C ---------------------------------------------------------------------------------

local CRC = {}
for i = 0, 255 do
    local c = i
    for _ = 1, 8 do
        if bit.band(c, 1) ~= 0 then c = bit.bxor(bit.rshift(c, 1), 0x82f63b78) else c = bit.rshift(c, 1) end
    end
    CRC[i] = c
end

function M.crc32c(s)
    local c = 0xffffffff
    for i = 1, #s do
        c = bit.bxor(CRC[bit.band(bit.bxor(c, s:byte(i)), 0xff)], bit.rshift(c, 8))
    end
    return bit.tobit(bit.bnot(c)) % 2 ^ 32
end

function M.masked_crc(s)
    local c = M.crc32c(s)
    local rot = bit.bor(bit.rshift(c, 15), bit.lshift(c, 17)) % 2 ^ 32
    return (rot + 0xa282ead8) % 2 ^ 32
end

-- ---- protocol buffers ------------------------------------------------------------------------

local function varint(n)
    local out = {}
    -- n is a non-negative integer (steps, lengths, keys): 7 bits a byte, low first
    repeat
        local b = n % 128
        n = (n - b) / 128
        out[#out + 1] = string.char(n > 0 and b + 128 or b)
    until n == 0
    return table.concat(out)
end

local function key(field, wire) return varint(field * 8 + wire) end

local function fixed(ctype, v, n)
    local b = ffi.new(ctype .. "[1]", v)
    return ffi.string(b, n)
end

local function bytes_field(field, s) return key(field, 2) .. varint(#s) .. s end

local function u32le(v) return fixed("uint32_t", v, 4) end

-- ---- records ---------------------------------------------------------------------------------

local Writer = {}
Writer.__index = Writer

local function record(data)
    local len = fixed("uint64_t", #data, 8)
    return len .. u32le(M.masked_crc(len)) .. data .. u32le(M.masked_crc(data))
end

function Writer:_event(step, body)
    local ev = key(1, 1) .. fixed("double", self.now(), 8)
    if step then ev = ev .. key(2, 0) .. varint(step) end
    local ok, err = self.file:write(record(ev .. body))
    if ok then ok, err = self.file:flush() end
    if not ok then error(("tensorboard %s: write failed: %s"):format(self.path, tostring(err)), 0) end
end

-- A scalar at `step` (a non-negative integer).
function Writer:scalar(tag, value, step)
    if type(value) ~= "number" then error(("tensorboard: scalar %s: %s is not a number"):format(tag, tostring(value)), 2) end
    local v = bytes_field(1, tag) .. key(2, 5) .. fixed("float", value, 4)
    self:_event(step, bytes_field(5, bytes_field(1, v)))
end

-- Text (TensorBoard's text plugin renders it as Markdown) at `step`.
function Writer:text(tag, text, step)
    local meta = bytes_field(1, bytes_field(1, "text"))
    local tensor = key(1, 0) .. varint(7) .. bytes_field(2, "") .. bytes_field(8, tostring(text))
    local v = bytes_field(1, tag) .. bytes_field(9, meta) .. bytes_field(8, tensor)
    self:_event(step, bytes_field(5, bytes_field(1, v)))
end

-- Every numeric field of a log record as a scalar under prefix/name, at record.step.
function Writer:record(rec, prefix)
    local step = rec.step
    if type(step) ~= "number" then return end
    local names = {}
    for k, v in pairs(rec) do
        if k ~= "step" and type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge then
            names[#names + 1] = k
        end
    end
    table.sort(names)
    for _, k in ipairs(names) do self:scalar((prefix and prefix .. "/" or "") .. k, rec[k], step) end
end

function Writer:close()
    if self.file then
        local f = self.file
        self.file = nil
        local ok, err = f:close()
        if not ok then error(("tensorboard %s: close failed: %s"):format(self.path, tostring(err)), 0) end
    end
end

--[[ A new event file in folder `dir` (made if missing), named as TensorBoard expects:
events.out.tfevents.<seconds>.<host>. opts.now: the clock of wall_time (M.wall_time). ]]
function M.open(dir, opts)
    opts = opts or {}
    require("luatrain.fs").make_dirs(dir)
    local hostf = io.popen("hostname 2>/dev/null")
    local host = hostf and hostf:read("*l") or "localhost"
    if hostf then hostf:close() end
    local now = opts.now or M.wall_time
    local path = ("%s/events.out.tfevents.%d.%s"):format(dir, math.floor(now()), host ~= "" and host or "localhost")
    local f, err = io.open(path, "ab")
    if not f then error(("tensorboard: cannot open %s: %s"):format(path, err), 2) end
    local self = setmetatable({ file = f, path = path, now = now }, Writer)
    self:_event(nil, bytes_field(3, "brain.Event:2"))
    return self
end

return M
