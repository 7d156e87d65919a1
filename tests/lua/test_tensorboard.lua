--[[
test_tensorboard.lua - lt.tensorboard's event files, read back by a reader written here from
the format (TFRecord framing, masked CRC-32C, the Event / Summary / TensorProto protocol
buffers), sharing no code with the writer: its CRC-32C goes bit by bit from the polynomial,
its protobuf decoder is generic. Every record's two CRCs are checked; the first event carries
the file version; scalars come back at their steps with their float values; text comes back
with the text plugin's metadata and DT_STRING tensor; a corrupted byte is caught by the CRC;
the trainer mirrors its log into TensorBoard when asked (loss, lr, grad norm at every step);
the QLoRA recipe adds its settings, the accuracy before and after, and sample answers.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local fs = require "luatrain.fs"
local ffi = require "ffi"
local bit = require "bit"

-- ---- the reader ----------------------------------------------------------------------------

-- CRC-32C, bit by bit: reflected Castagnoli polynomial 0x82f63b78, initial and final xor ~0
local function crc32c(s)
    local c = 0xffffffff
    for i = 1, #s do
        c = bit.bxor(c, s:byte(i))
        for _ = 1, 8 do
            local lsb = bit.band(c, 1)
            c = bit.rshift(c, 1)
            if lsb == 1 then c = bit.bxor(c, 0x82f63b78) end
        end
    end
    return bit.bxor(c, 0xffffffff) % 2 ^ 32
end
local function masked(s)
    local c = crc32c(s)
    return ((c / 2 ^ 15 - (c / 2 ^ 15) % 1) + (c * 2 ^ 17) % 2 ^ 32 + 0xa282ead8) % 2 ^ 32
end

local function le(s, i, n)
    local v = 0
    for k = n, 1, -1 do v = v * 256 + s:byte(i + k - 1) end
    return v
end

-- the records of an event file, each CRC checked
local function records(path)
    local data = T.slurp(path)
    local out, i = {}, 1
    while i <= #data do
        local n = le(data, i, 8)
        T.eq(le(data, i + 8, 4), masked(data:sub(i, i + 7)), ("record at byte %d: the length's CRC"):format(i - 1))
        local body = data:sub(i + 12, i + 11 + n)
        T.eq(le(data, i + 12 + n, 4), masked(body), ("record at byte %d: the data's CRC"):format(i - 1))
        out[#out + 1] = body
        i = i + 16 + n
    end
    return out
end

-- a protobuf message as { [field] = { values... } }: varints as numbers, fixed64 and
-- fixed32 as raw 8/4-byte strings, length-delimited as strings
local function decode(s)
    local msg, i = {}, 1
    local function varint()
        local v, mul = 0, 1
        while true do
            local b = s:byte(i)
            i = i + 1
            v = v + (b % 128) * mul
            mul = mul * 128
            if b < 128 then return v end
        end
    end
    while i <= #s do
        local k = varint()
        local field, wire = math.floor(k / 8), k % 8
        local v
        if wire == 0 then v = varint()
        elseif wire == 1 then v = s:sub(i, i + 7) i = i + 8
        elseif wire == 5 then v = s:sub(i, i + 3) i = i + 4
        elseif wire == 2 then
            local n = varint()
            v = s:sub(i, i + n - 1)
            i = i + n
        else error("wire type " .. wire) end
        msg[field] = msg[field] or {}
        table.insert(msg[field], v)
    end
    return msg
end
local function as(ctype, raw)
    local b = ffi.new(ctype .. "[1]")
    ffi.copy(b, raw, #raw)
    return tonumber(b[0])
end

-- the events: { wall_time, step, version, values = { { tag, scalar | text } } }
local function events(path)
    local out = {}
    for _, r in ipairs(records(path)) do
        local e = decode(r)
        local ev = { wall_time = as("double", e[1][1]), step = e[2] and e[2][1], version = e[3] and e[3][1],
            values = {} }
        for _, sraw in ipairs(e[5] or {}) do
            for _, vraw in ipairs(decode(sraw)[1] or {}) do
                local v = decode(vraw)
                local item = { tag = v[1][1] }
                if v[2] then item.scalar = as("float", v[2][1]) end
                if v[8] then
                    local tensor = decode(v[8][1])
                    item.dtype = tensor[1][1]
                    item.text = tensor[8][1]
                    item.plugin = decode(decode(v[9][1])[1][1])[1][1]
                end
                ev.values[#ev.values + 1] = item
            end
        end
        out[#out + 1] = ev
    end
    return out
end

local DIR = (os.getenv("TMPDIR") or "/tmp") .. ("/lt_tb_%d_%d"):format(os.time(), math.random(1, 1e6))

T.test("scalars and text read back, every CRC right, the file named as TensorBoard looks for", function()
    local tb = lt.tensorboard.open(DIR .. "/a")
    tb:scalar("train/loss", 2.5, 1)
    tb:scalar("train/loss", 1.25, 2)
    tb:scalar("lr", 3e-4, 2)
    tb:text("samples", "**Q** What pet?\n\nA: fox", 2)
    tb:record({ step = 3, loss = 0.75, tokens_per_s = 1000, note = "x", bad = 0 / 0 }, "train")
    tb:close()
    local files = fs.list(DIR .. "/a")
    T.eq(#files, 1)
    T.ok(files[1].name:match("^events%.out%.tfevents%.%d+%..+$") ~= nil, files[1].name)
    local ev = events(DIR .. "/a/" .. files[1].name)
    T.eq(ev[1].version, "brain.Event:2", "the first event: the file version")
    T.ok(math.abs(ev[1].wall_time - os.time()) < 60, "wall_time is the epoch's")
    local got = {}
    for _, e in ipairs(ev) do
        for _, v in ipairs(e.values) do got[#got + 1] = { e.step, v } end
    end
    T.eq(#got, 6)
    T.eq({ got[1][1], got[1][2].tag, got[1][2].scalar }, { 1, "train/loss", 2.5 })
    T.eq({ got[2][1], got[2][2].scalar }, { 2, 1.25 })
    T.eq(got[3][2].scalar, tonumber(ffi.new("float", 3e-4)), "a float32")
    T.eq({ got[4][2].tag, got[4][2].plugin, got[4][2].dtype, got[4][2].text },
        { "samples", "text", 7, "**Q** What pet?\n\nA: fox" })
    -- record(): the numeric fields, sorted, NaN and strings left out
    T.eq({ got[5][1], got[5][2].tag, got[5][2].scalar }, { 3, "train/loss", 0.75 })
    T.eq({ got[6][2].tag, got[6][2].scalar }, { "train/tokens_per_s", 1000 })
end)

T.test("a corrupted byte is caught by the CRC", function()
    local files = fs.list(DIR .. "/a")
    local path = DIR .. "/a/" .. files[1].name
    local data = T.slurp(path)
    local at = #data - 8
    T.write_file(path, data:sub(1, at - 1) .. string.char((data:byte(at) + 1) % 256) .. data:sub(at + 1))
    local ok, err = pcall(records, path)
    T.ok(not ok and tostring(err):find("the data's CRC", 1, true) ~= nil, tostring(err))
end)

T.test("the trainer mirrors its log into TensorBoard: loss, lr and grad norm each step", function()
    local dir = "recipes/assets/tiny_facts"
    local tok = lt.tokenizer.load(dir .. "/model")
    local ds = lt.data.build(dir .. "/train.jsonl", tok, { template = "llama3", train_on = "completion", max_len = 64 })
    local m = lt.llama.from_pretrained(dir .. "/model", { quant = "nf4", dtype = "bf16" })
    lt.lora.apply(m, { r = 4, alpha = 8 })
    lt.trainer.finetune{ model = m, train = ds, batch_size = 4, seq_len = 64, steps = 3, lr = 1e-3, eval_every = 0,
        log = DIR .. "/run/log.jsonl", tensorboard = DIR .. "/run/tb", on_step = function() end }
    local files = fs.list(DIR .. "/run/tb")
    T.eq(#files, 1)
    local steps = {}
    for _, e in ipairs(events(DIR .. "/run/tb/" .. files[1].name)) do
        for _, v in ipairs(e.values) do
            steps[v.tag] = steps[v.tag] or {}
            steps[v.tag][#steps[v.tag] + 1] = e.step
        end
    end
    for _, tag in ipairs({ "train/loss", "train/lr", "train/grad_norm" }) do
        T.eq(steps[tag], { 1, 2, 3 }, tag)
    end
    -- the same numbers as the JSONL log
    local first = lt.json.decode(T.slurp(DIR .. "/run/log.jsonl"):match("^[^\n]+"))
    local ev = events(DIR .. "/run/tb/" .. files[1].name)
    for _, e in ipairs(ev) do
        for _, v in ipairs(e.values) do
            if v.tag == "train/loss" and e.step == 1 then
                T.eq(v.scalar, tonumber(ffi.new("float", first.loss)), "loss at step 1")
            end
        end
    end
end)

T.test("the QLoRA recipe's run in TensorBoard: settings, train scalars, evaluation and sample answers", function()
    local out, code = T.run(("%s recipes/qlora_llama.lua output_dir=%s/recipe steps=4 eval_samples=4"):format(
        T.shell_quote(T.luatrain()), T.shell_quote(DIR)))
    T.eq(code, 0, out)
    local files = fs.list(DIR .. "/recipe/tensorboard")
    T.eq(#files, 1)
    local tags = {}
    for _, e in ipairs(events(DIR .. "/recipe/tensorboard/" .. files[1].name)) do
        for _, v in ipairs(e.values) do
            tags[v.tag] = tags[v.tag] or {}
            table.insert(tags[v.tag], { step = e.step, v = v })
        end
    end
    T.ok(tags.settings and tags.settings[1].v.text:find("| steps | 4 |", 1, true) ~= nil, "the settings as a table")
    T.eq(#tags["train/loss"], 4, "the loss at every step")
    for _, tag in ipairs({ "train/lr", "train/grad_norm", "train/tokens_per_s", "train/peak_bytes" }) do
        T.ok(tags[tag] ~= nil, tag)
    end
    T.eq({ tags["eval/accuracy"][1].step, tags["eval/accuracy"][2].step }, { 0, 4 }, "accuracy before and after")
    T.ok(tags.samples[1].v.text:find("| question | answer | expected |", 1, true) ~= nil, "sample answers")
end)

fs.remove_tree(DIR)
T.done()
