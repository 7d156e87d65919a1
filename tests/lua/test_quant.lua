-- test_quant.lua - luatrain.quant from Lua: code books, quantize/dequantize, the quantized
-- linear against an explicit dequantization, and bitsandbytes checkpoints: the fixtures of
-- tests/fixtures/bnb_4bit (tools/golden/bnb_fixture.py, an independent NumPy quantizer)
-- load and dequantize to exactly the reference's f32 values, quantizing the reference's
-- source weights here reproduces its bytes, and to_bnb writes the same tensors back.
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local quant = require "luatrain.quant"
local st = require "luatrain.safetensors"
local json = require "luatrain.json"
local ffi = require "ffi"

local FIX = "tests/fixtures/bnb_4bit/"

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p '" .. dir .. "'"))

-- f32 bits of a number, for ulp distances (a union: LuaJIT's alias analysis assumes that
-- a float* and an int32_t* to the same memory do not alias)
local pun = ffi.new("union { float f; int32_t i; }")
local function bits(v)
    pun.f = v
    return pun.i
end

-- every quantized module prefix of a bnb state dict (name -> Tensor)
local function prefixes(tensors)
    local out = {}
    for k in pairs(tensors) do
        local p = k:match("^(.*)%.weight%.quant_state%.bitsandbytes__%w+$")
        if p then out[#out + 1] = p end
    end
    table.sort(out)
    return out
end

local function raw(t)
    local c = t:contiguous()
    return ffi.string(c:data_ptr(), c:nbytes())
end

local function bytes_equal(a, b)
    return a.dtype_id == b.dtype_id and a:numel() == b:numel() and raw(a) == raw(b)
end

T.test("code books", function()
    local nf4 = quant.codebook("nf4")
    T.eq(#nf4, 16)
    T.eq(nf4[1], -1)
    T.eq(nf4[8], 0)
    T.eq(nf4[16], 1)
    T.near(nf4[9], 0.07958029955625534, 1e-7)
    for i = 1, 15 do T.ok(nf4[i] < nf4[i + 1], "nf4 is sorted") end
    -- FP4: sign bit 8; exponent field e (bits 2..1), mantissa m (bit 0); / 12
    local fp4 = quant.codebook("fp4")
    for code = 0, 15 do
        local s, e, m = math.floor(code / 8), math.floor(code / 2) % 4, code % 2
        local mag = e == 0 and m * 0.0625 or (1 + m / 2) * 2 ^ (4 - e)
        T.near(fp4[code + 1], (s == 1 and -mag or mag) / 12, 1e-7, 0, "fp4 code " .. code)
    end
    T.raises(function() quant.codebook("int8") end, "no code book")
    T.raises(function() quant.codebook("nf3") end, "unknown quantization type")
    local map = quant.dynamic_map()
    T.eq(#map, 256)
    T.eq(map[128], 0)
    T.eq(map[256], 1)
    for i = 1, 255 do T.ok(map[i] < map[i + 1]) end
end)

T.test("quantize and dequantize, accessors", function()
    lt.manual_seed(7)
    local w = lt.randn(70, 90) * 0.05
    local q = quant.quantize(w)
    T.eq(q.type, "nf4")
    T.eq(q.blocksize, 64)
    T.eq(q.double_quant, true)
    T.eq(q.shape, { 70, 90 })
    T.eq(q.dtype, "f32")
    T.eq(q:numel(), 6300)
    local d = q:dequantize()
    T.eq(d:shape(), { 70, 90 })
    T.eq(d.dtype, "f32")
    -- NF4's widest half-gap is (1 - 0.7229568) / 2 of a block's absmax (plus the 8-bit
    -- error of a double-quantized absmax)
    local maxabs = T.diff(d, w)
    T.ok(maxabs <= 0.145 * w:abs():max():item(), "dequantization error " .. maxabs)
    T.eq(q.packed.dtype, "u8")
    T.eq(q.packed:numel(), 3150)
    T.eq(q.absmax:numel(), 99) -- ceil(6300 / 64), dequantized scales
    T.eq(q.absmax.dtype, "f32")
    T.eq(q.absmax_q.dtype, "u8")
    T.eq(q.absmax2:numel(), 1)
    T.eq(q.nested_code:numel(), 256)
    T.eq(type(q.offset), "number")
    T.eq(q.code:numel(), 16)
    -- rows as a panel
    local rows = q:dequantize_rows(11, 5)
    T.ok(rows:equal(d:narrow(1, 11, 5)))
    T.ok(q:dequantize("bf16"):equal(d:bf16()))
    -- plain FP4 scales are the stored f32 ones
    local q4 = quant.quantize(w, { type = "fp4", blocksize = 128 })
    T.eq(q4.double_quant, false)
    T.eq(q4.absmax_q, nil)
    T.eq(q4.offset, nil)
    T.eq(q4.absmax:numel(), 50)
    T.ok(tostring(q4):find("fp4 %(70, 90%), block 128") ~= nil, tostring(q4))
    -- views outlive q; accessors after free are an error
    local packed, scales = q.packed, q.absmax
    local copy = packed:clone()
    q:free()
    q:free()
    T.ok(packed:equal(copy))
    T.eq(scales:numel(), 99)
    T.raises(function() return q.packed end, "after q:free%(%)")
    T.raises(function() return q:dequantize() end, "after q:free%(%)")
    T.ok(tostring(q):find("freed") ~= nil)
    T.raises(function() quant.quantize(w, { type = "nf4", blocksize = 48 }) end, "power of two")
    T.raises(function() quant.quantize(w, { type = "int8", double_quant = true }) end, "4%-bit")
    local bad = w:clone()
    bad:set(2 * 90 + 4, 0 / 0)
    T.raises(function() quant.quantize(bad) end, "element %(2, 3%)")
    q4:free()
end)

T.test("bits per parameter of NF4 + double quantization at block size 64", function()
    local w = lt.randn(4096, 4096, { std = 0.02 })
    local q = quant.quantize(w, { type = "nf4", blocksize = 64, double_quant = true })
    w:free()
    T.eq(("%.3f"):format(q:bits_per_param()), "4.127")
    local q2 = quant.quantize(lt.randn(64, 64), { type = "nf4", double_quant = false })
    T.eq(q2:nbytes(), 64 * 64 / 2 + 64 * 4 + 64)
    q:free()
    q2:free()
end)

T.test("linear forward and backward equal an explicit dequantization", function()
    lt.manual_seed(11)
    local cases = {
        { "nf4", 64, true, 37, 192, { 5 } },
        { "nf4", 64, false, 37, 100, { 2, 3 } }, -- 3700 elements: a partial block
        { "fp4", 32, false, 37, 101, { 4 } },    -- odd element count
        { "nf4", 64, true, 300, 4000, { 2, 2 } }, -- two panels
        { "int8", 0, false, 29, 70, { 6 } },
    }
    for _, c in ipairs(cases) do
        local ty, bs, dq, out, inn, lead = c[1], c[2], c[3], c[4], c[5], c[6]
        local w = lt.randn(out, inn) * 0.05
        local q = quant.quantize(w, { type = ty, blocksize = bs, double_quant = dq })
        local dw = q:dequantize()
        local xs = {}
        for i = 1, #lead do xs[i] = lead[i] end
        xs[#xs + 1] = inn
        local x = lt.randn(xs)
        local what = ("%s (%d, %d)"):format(ty, out, inn)
        local y = quant.linear_forward(x, q, { outlier_threshold = 0 })
        local ref = lt.ops.matmul(x:reshape(-1, inn), dw, { trans_b = true })
        local _, rel = T.diff(y:reshape(-1, out), ref)
        -- int8 quantizes x too: compare with a looser bound there
        T.ok(rel <= (ty == "int8" and 2e-2 or 1e-5), what .. " forward, relative error " .. rel)
        local ys = {}
        for i = 1, #lead do ys[i] = lead[i] end
        ys[#ys + 1] = out
        T.eq(y:shape(), ys)
        if ty ~= "int8" then
            -- beta accumulates into a given output
            local y0 = lt.randn(ys)
            local y1 = quant.linear_forward(x, q, { out = y0:clone(), beta = 0.5 })
            local _, r1 = T.diff(y1, y + y0 * 0.5)
            T.ok(r1 <= 1e-5, what .. " beta, relative error " .. r1)
            -- a bf16 input
            local xb = x:bf16()
            local yb = quant.linear_forward(xb, q)
            local refb = lt.ops.matmul(xb:float():reshape(-1, inn), dw, { trans_b = true })
            local _, rb = T.diff(yb:reshape(-1, out), refb)
            T.ok(rb <= 1e-5, what .. " bf16 x, relative error " .. rb)
        end
        if #lead == 1 then -- a transposed (non-nested) view of x is copied, not refused
            local xt = x:t():contiguous():t()
            local _, rt = T.diff(quant.linear_forward(xt, q, { outlier_threshold = 0 }), y)
            T.ok(rt == 0, what .. " transposed x")
        end
        local dy = lt.randn(ys)
        local dx = quant.linear_backward(dy, q)
        T.eq(dx:shape(), xs)
        local dref = lt.ops.matmul(dy:reshape(-1, out), dw)
        local _, rd = T.diff(dx:reshape(-1, inn), dref)
        T.ok(rd <= 1e-5, what .. " backward, relative error " .. rd)
        q:free()
    end
end)

T.test("int8 linear: outlier columns multiply in f32", function()
    lt.manual_seed(3)
    local w = lt.randn(40, 64) * 0.1
    local q = quant.quantize(w, { type = "int8" })
    T.eq(q.blocksize, 0)
    T.eq(q.packed.dtype, "i8")
    local x = lt.randn(8, 64)
    for i = 1, 8 do x:set((i - 1) * 64 + 5, 40 * (i % 2 == 0 and 1 or -1)) end -- column 5
    local ref = lt.ops.matmul(x, q:dequantize(), { trans_b = true })
    local _, with = T.diff(quant.linear_forward(x, q), ref)               -- threshold 6
    local _, without = T.diff(quant.linear_forward(x, q, { outlier_threshold = 0 }), ref)
    -- without the split, column 5 sets every row's scale and the rest rounds coarsely
    T.ok(with < 0.01 and without > 3 * with, ("errors %g with, %g without"):format(with, without))
    q:free()
end)

-- ---- bitsandbytes fixtures --------------------------------------------------------------

local model = st.load(FIX .. "model.safetensors")
local standalone = st.load(FIX .. "standalone.safetensors")
local expected = st.load(FIX .. "expected.safetensors")

T.test("config.json carries transformers' quantization_config", function()
    local cfg = json.read_file(FIX .. "config.json")
    local qc = cfg.quantization_config
    T.eq(qc.quant_method, "bitsandbytes")
    T.eq(qc.load_in_4bit, true)
    T.eq(qc.bnb_4bit_quant_type, "nf4")
    T.eq(qc.bnb_4bit_use_double_quant, true)
    T.eq(qc.bnb_4bit_compute_dtype, "bfloat16")
end)

T.test("from_bnb + dequantize reproduce the reference exactly", function()
    local n = 0
    for _, src in ipairs({ model, standalone }) do
        for _, p in ipairs(prefixes(src)) do
            local q = quant.from_bnb(src, p)
            local d = q:dequantize()
            local want = expected[p .. ".weight"]
            T.eq(d:shape(), want:shape(), p)
            T.ok(bytes_equal(d, want), p .. ": dequantized values differ from the reference")
            -- the state shares the file's tensors
            T.ok(q.packed:same_storage(src[p .. ".weight"]), p)
            q:free()
            n = n + 1
        end
    end
    T.eq(n, 16)
    local q = quant.from_bnb(model, "model.layers.1.self_attn.k_proj")
    T.eq(q.shape, { 24, 48 })
    T.eq(q.dtype, "bf16")
    T.eq(q.double_quant, true)
    local f = st.open(FIX .. "standalone.safetensors") -- a lazy file works too
    local q2 = quant.from_bnb(f, "fp4_plain")
    f:close()
    T.eq(q2.type, "fp4")
    T.eq(q2.shape, { 37, 19 })
    T.ok(bytes_equal(q2:dequantize(), expected["fp4_plain.weight"]))
    q:free()
    q2:free()
end)

T.test("quantizing the reference's source weights reproduces its bytes", function()
    local checked = 0
    for _, src in ipairs({ model, standalone }) do
        for _, p in ipairs(prefixes(src)) do
            local source = expected["source." .. p .. ".weight"]
            if source then
                local ref = quant.from_bnb(src, p)
                local q = quant.quantize(source, { type = ref.type, blocksize = ref.blocksize,
                    double_quant = ref.double_quant })
                local mine = quant.to_bnb(q, p)
                for name, t in pairs(mine) do
                    if not name:find("quant_state") and not name:find("nested_quant_map") then
                        T.ok(bytes_equal(t, src[name]), name .. " differs from the reference")
                    end
                end
                if ref.double_quant then T.eq(q.offset, ref.offset, p .. " offset") end
                T.ok(bytes_equal(q:dequantize(), expected[p .. ".weight"]) or ref.double_quant,
                    p .. " dequantized")
                q:free()
                ref:free()
                checked = checked + 1
            end
        end
    end
    T.eq(checked, 9)
end)

T.test("the dynamic map is bitsandbytes' within 1 ulp", function()
    local map = quant.dynamic_map()
    local stored = model["model.layers.0.mlp.up_proj.weight.nested_quant_map"]:totable()
    local differ, worst = 0, 0
    for i = 1, 256 do
        local d = math.abs(bits(map[i]) - bits(stored[i]))
        if d > 0 then differ = differ + 1 end
        if d > worst then worst = d end
    end
    T.ok(worst <= 1, "max ulp distance " .. worst)
    print(("dynamic map: %d of 256 entries 1 ulp from torch's f32 linspace construction"):format(
        differ))
end)

T.test("to_bnb writes what bitsandbytes saves", function()
    for _, src in ipairs({ model, standalone }) do
        for _, p in ipairs(prefixes(src)) do
            local q = quant.from_bnb(src, p)
            local out = quant.to_bnb(q, p)
            local count = 0
            for name, t in pairs(out) do
                count = count + 1
                local ref = src[name]
                T.ok(ref ~= nil, "to_bnb wrote an unexpected " .. name)
                T.eq(t:shape(), ref:shape(), name)
                if name:find("quant_state") then
                    local a, b = json.decode(raw(t)), json.decode(raw(ref))
                    T.eq(a, b, name)
                    -- the same text as Python's json.dumps, key order included
                    T.eq(raw(t), raw(ref))
                else
                    T.ok(bytes_equal(t, ref), name)
                end
            end
            local want = 0
            for name in pairs(src) do
                if name:sub(1, #p + 1) == p .. "." then want = want + 1 end
            end
            T.eq(count, want, p .. ": tensor count")
            q:free()
        end
    end
end)

T.test("save and load in bitsandbytes' layout", function()
    lt.manual_seed(5)
    local w = lt.randn(33, 70):bf16()
    local tensors = {}
    local qs = {
        a = quant.quantize(w, { type = "nf4" }),
        b = quant.quantize(w, { type = "fp4", blocksize = 256 }),
        c = quant.quantize(w, { type = "int8" }),
    }
    for name, q in pairs(qs) do
        for k, v in pairs(quant.to_bnb(q, "m." .. name)) do tensors[k] = v end
    end
    local path = dir .. "/q.safetensors"
    st.save(path, tensors)
    local back = st.load(path)
    for name, q in pairs(qs) do
        local r = quant.from_bnb(back, "m." .. name)
        T.eq(r.type, q.type)
        T.eq(r.shape, q.shape)
        T.ok(r:dequantize():equal(q:dequantize()), name)
        r:free()
        q:free()
    end
    T.eq(back["m.c.weight_format"]:item(), 0)
end)

T.test("from_bnb errors name the missing or inconsistent piece", function()
    local p = "model.layers.0.self_attn.q_proj"
    local function without(name)
        local t = {}
        for k, v in pairs(model) do
            if k ~= name then t[k] = v end
        end
        return t
    end
    T.raises(function() quant.from_bnb(without(p .. ".weight.absmax"), p) end,
        "no tensor '" .. p .. ".weight.absmax'", true)
    T.raises(function() quant.from_bnb(without(p .. ".weight.nested_quant_map"), p) end,
        "nested_quant_map", true)
    local qs_name = p .. ".weight.quant_state.bitsandbytes__nf4"
    T.raises(function() quant.from_bnb(without(qs_name), p) end,
        "not a bitsandbytes 4-bit Linear", true)
    T.raises(function() quant.from_bnb(model, "model.layers.9.mlp.up_proj") end, "no tensor")
    -- a shape that does not fit the packed codes
    local t = without("")
    local bad = '{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [48, 50], ' ..
        '"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.01}'
    local bt = lt.empty({ #bad }, { dtype = "u8" })
    ffi.copy(bt:data_ptr(), bad, #bad)
    t[qs_name] = bt
    T.raises(function() quant.from_bnb(t, p) end, "packed has 1152 elements")
    -- a name that disagrees with its JSON
    t[qs_name] = nil
    t[p .. ".weight.quant_state.bitsandbytes__fp4"] = model[qs_name]
    T.raises(function() quant.from_bnb(t, p) end, "does not match its name")
    -- the FP4 code book under an NF4 name
    t = without("")
    t[p .. ".weight.quant_map"] = standalone["fp4_plain.weight.quant_map"]
    T.raises(function() quant.from_bnb(t, p) end, "code book")
    t = without("")
    t[p .. ".weight"] = model[p .. ".weight"]:float()
    T.raises(function() quant.from_bnb(t, p) end, "quant_storage=uint8")
    T.raises(function() quant.from_bnb(model, 3) end, "prefix must be a string")
    T.raises(function() quant.from_bnb("x", p) end, "tensors must be a table")
end)

os.execute("rm -rf '" .. dir .. "'")
T.done()
