-- test_json.lua - luatrain.json: numbers that round-trip bit for bit in their shortest text,
-- the strict decoder (C check + cJSON) with its error positions and refusals, unicode
-- escapes, the depth limit, the encoder's layout and escaping, and the callers' files.
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local ffi = require "ffi"
local lt = require "luatrain"
local json = require "luatrain.json"

local bits_box = ffi.new("union { double d; uint64_t u; struct { uint32_t lo, hi; } w; }")

local function bits(x)
    bits_box.d = x
    return bits_box.u
end

local function from_words(hi, lo)
    bits_box.w.hi, bits_box.w.lo = hi, lo
    return bits_box.d
end

-- A random finite double: any sign, mantissa and exponent but the all-ones one. (A NaN
-- read through the FFI is not canonicalised by this LuaJIT and crashes its collector.)
local function random_double()
    return from_words(math.random(0, 0x7fefffff) + math.random(0, 1) * 2 ^ 31, math.random(0, 2 ^ 32 - 1))
end

-- decode(encode(x)) is x, bit for bit, and the text is no longer than %.17g's.
local function round_trips(x)
    local s = json.encode(x)
    local y = json.decode(s)
    if bits(y) ~= bits(x) then
        error(("%.17g encodes as %s, which decodes to %.17g"):format(x, s, y), 2)
    end
    if #s > #string.format("%.17g", x) then
        error(("%.17g encodes as %s, longer than %%.17g"):format(x, s), 2)
    end
    if s:find("inf") or s:find("nan") or s:find("^%-?%.") then
        error(("%.17g encodes as %s, which is not JSON"):format(x, s), 2)
    end
    return s
end

-- The significant digits of a number's text ("1.25e-07" -> 3, "1200" -> 2, "-0" -> 1).
local function digits(s)
    local mant = s:gsub("^%-", ""):gsub("[eE].*$", ""):gsub("%.", "")
    mant = mant:gsub("^0+", ""):gsub("0+$", "")
    return math.max(#mant, 1)
end

T.test("numbers: chosen values encode as the shortest text and round-trip", function()
    local want = {
        { 0.1, "0.1" }, { 1 / 3, "0.3333333333333333" }, { 2 / 3, "0.6666666666666666" },
        { 1e-300, "1e-300" }, { -0.0, "-0" }, { 0, "0" }, { 2 ^ 53, "9007199254740992" },
        { 2 ^ 53 - 1, "9007199254740991" }, { -(2 ^ 53 - 1), "-9007199254740991" },
        { 2 ^ 53 + 2, "9007199254740994" }, { 2 ^ 63, "9.223372036854776e+18" },
        { 1e15, "1000000000000000" }, { 1e21, "1e+21" }, { 1e22, "1e+22" }, { 1e300, "1e+300" },
        { 5e-324, "5e-324" }, { 2.2250738585072014e-308, "2.2250738585072014e-308" },
        { 1.7976931348623157e308, "1.7976931348623157e+308" }, { 3e-4, "0.0003" },
        { 0.5, "0.5" }, { -2.5, "-2.5" }, { 100, "100" }, { 1e-7, "1e-07" },
        { 123.456, "123.456" }, { 0.1 + 0.2, "0.30000000000000004" },
        { 1000000000000000.5, "1000000000000000.5" },
        { 2.345678806304931640625, "2.3456788063049316" }, -- an f32 loss widened to a double
        -- powers of two whose nearest 16-digit decimal does not read back but the one above
        -- does (the texts are Python's repr)
        { 2 ^ -1017, "7.120236347223045e-307" }, { 2 ^ -496, "4.887898181599368e-150" },
        { 2 ^ -97, "6.310887241768095e-30" }, { -2 ^ -44, "-5.684341886080802e-14" },
        { 2 ^ 89, "6.189700196426902e+26" }, { 2 ^ 976, "6.386688990511104e+293" },
    }
    for _, c in ipairs(want) do
        T.eq(round_trips(c[1]), c[2], ("%.17g"):format(c[1]))
    end
    T.eq(1 / json.decode("-0"), -math.huge, "-0 keeps its sign")
end)

T.test("numbers: random doubles, subnormals and integers round-trip bit for bit", function()
    math.randomseed(1234)
    for _ = 1, 20000 do round_trips(random_double()) end
    for _ = 1, 3000 do -- subnormals: exponent bits zero
        round_trips(from_words(math.random(0, 2 ^ 20 - 1) + math.random(0, 1) * 2 ^ 31, math.random(0, 2 ^ 32 - 1)))
    end
    for e = -1074, 1023 do -- every power of two, and its neighbours
        local p = 2 ^ e
        round_trips(p)
        round_trips(-p)
        if e < 1023 then
            round_trips(p * (1 + 2 ^ -52))
            round_trips(p * (1 - 2 ^ -53))
        end
    end
    for e = -323, 308 do round_trips(tonumber("1e" .. e)) end
    for _ = 1, 5000 do
        local i = math.random(-2 ^ 53 + 1, 2 ^ 53 - 1)
        local s = round_trips(i)
        T.ok(s:match("^%-?%d+$"), "integer " .. s .. " written as one")
    end
end)

T.test("numbers: no precision of %g gives fewer digits that read back", function()
    math.randomseed(99)
    local function check(x)
        local s = round_trips(x)
        if s:match("^%-?%d+$") then return end -- integers are written whole
        local d = digits(s)
        for p = 1, d - 1 do
            local shorter = ("%." .. p .. "g"):format(x)
            if tonumber(shorter) == x then
                error(("%s has %d digits but %s reads back too"):format(s, d, shorter), 2)
            end
        end
    end
    for _ = 1, 3000 do check(random_double()) end
    for _ = 1, 3000 do -- decimals of a few digits, as configs hold, come back as written
        local k = math.random(1, 15)
        local mant = { math.random(1, 9) }
        for i = 2, k do mant[i] = math.random(0, 9) end
        local x = tonumber(table.concat(mant) .. "e" .. math.random(-330, 300))
        if x ~= 0 and x == x and math.abs(x) ~= math.huge then
            check(x)
            T.ok(digits(json.encode(x)) <= k, "a " .. k .. "-digit decimal " .. json.encode(x))
        end
    end
    for _ = 1, 2000 do check(from_words(math.random(0, 2 ^ 20 - 1), math.random(0, 2 ^ 32 - 1))) end
end)

T.test("numbers: non-finite values are an error naming where they are", function()
    T.raises(function() json.encode({ a = { 1, 0 / 0 } }) end, "json.encode: value.a[2] is nan", true)
    T.raises(function() json.encode({ b = math.huge }) end, "value.b is inf", true)
    T.raises(function() json.encode(-math.huge) end, "value is -inf", true)
end)

T.test("numbers: beyond the double range and long integers decode as numbers", function()
    T.eq(json.decode("1e400"), math.huge)
    T.eq(json.decode("-1e400"), -math.huge)
    T.eq(json.decode("1e-400"), 0)
    T.eq(json.decode("[4.9e-324]")[1], 5e-324)
    T.eq(json.decode("123456789012345678901234567890"), 1.2345678901234568e29)
    T.eq(json.decode("9007199254740993"), 2 ^ 53, "rounded to the nearest double")
    T.eq(json.decode("-9007199254740991"), -(2 ^ 53 - 1))
    T.eq(json.decode("1E+2"), 100)
    T.eq(json.decode("-0.0e-0"), 0)
    T.eq(json.decode(string.rep("9", 63)), 1e63, "63 characters are read")
    T.raises(function() json.decode(string.rep("9", 64), "n") end,
        "n:1:1: number '" .. string.rep("9", 40) .. "...' has 64 characters; at most 63 are read", true)
end)

-- text -> the exact error, name "doc".
local errors = {
    { "", "doc:1:1: unexpected end of input" },
    { "  \n ", "doc:2:2: unexpected end of input" },
    { "[1, 2", "doc:1:6: unexpected end of input (expected ',' or ']' in array)" },
    { "[1,", "doc:1:4: unexpected end of input" },
    { "{", "doc:1:2: unexpected end of input (expected a string key)" },
    { '{"a"', "doc:1:5: unexpected end of input (expected ':' after key \"a\")" },
    { '{"a":1', "doc:1:7: unexpected end of input (expected ',' or '}' in object)" },
    { "[1 2]", "doc:1:4: expected ',' or ']' in array, found '2'" },
    { "[1,]", "doc:1:4: expected a value, found ']'" },
    { "[,1]", "doc:1:2: expected a value, found ','" },
    { '{"a":1,}', "doc:1:8: expected a string key, found '}'" },
    { "{1:2}", "doc:1:2: expected a string key, found '1'" },
    { '{"a" 1}', "doc:1:6: expected ':' after key \"a\", found '1'" },
    { '{"a":1 "b":2}', "doc:1:8: expected ',' or '}' in object, found '\"'" },
    { '{\n  "a": 1,\n  "b": x\n}', "doc:3:8: expected a value, found 'x'" },
    { '"abc', "doc:1:5: unterminated string" },
    { '"abc\\', "doc:1:6: unterminated string" },
    { '"a\\x"', "doc:1:3: bad escape \\x" },
    { '"a\\\1"', "doc:1:3: bad escape: \\ then byte 0x01" },
    { '"\\u12G4"', "doc:1:2: bad \\u escape (expected 4 hex digits)" },
    { '"\\u12"', "doc:1:2: bad \\u escape (expected 4 hex digits)" },
    { '"a\nb"', "doc:1:3: control character 0x0a in string (write it as an escape)" },
    { '"a\tb"', "doc:1:3: control character 0x09 in string (write it as an escape)" },
    { '"\0"', "doc:1:2: control character 0x00 in string (write it as an escape)" },
    { "01", "doc:1:1: leading zero in number '01'" },
    { "[-012]", "doc:1:2: leading zero in number '-012'" },
    { "1.", "doc:1:1: bad number '1.'" },
    { "1.e5", "doc:1:1: bad number '1.e5'" },
    { "-.5", "doc:1:1: bad number '-.5'" },
    { "-", "doc:1:1: bad number '-'" },
    { "1e", "doc:1:1: bad number '1e'" },
    { "1e+", "doc:1:1: bad number '1e+'" },
    { "[1-2]", "doc:1:2: bad number '1-2'" },
    { "1.5.3", "doc:1:1: bad number '1.5.3'" },
    { ".5", "doc:1:1: expected a value, found '.'" },
    { "+1", "doc:1:1: expected a value, found '+'" },
    { "NaN", "doc:1:1: expected a value, found 'N'" },
    { "-Infinity", "doc:1:1: bad number '-'" },
    { "nul", "doc:1:1: expected a value, found 'n'" },
    { "True", "doc:1:1: expected a value, found 'T'" },
    { "'a'", "doc:1:1: expected a value, found '''" },
}

T.test("decode: malformed documents name the line, column and what was expected", function()
    for _, c in ipairs(errors) do
        local ok, err = pcall(json.decode, c[1], "doc")
        T.ok(not ok, ("%q was accepted"):format(c[1]))
        T.eq(err, c[2], ("%q"):format(c[1]))
    end
    T.raises(function() json.decode("[") end, "^JSON:1:2: unexpected end of input$")
    T.raises(function() json.decode(42) end, "json.decode: expected a string", true)
end)

T.test("decode: what cJSON would let through is refused", function()
    local refused = {
        -- text after the value
        { "{} x", "doc:1:4: trailing characters after the document ('x')" },
        { "{}{}", "doc:1:3: trailing characters after the document ('{')" },
        { "truex", "doc:1:5: trailing characters after the document ('x')" },
        { "1 2", "doc:1:3: trailing characters after the document ('2')" },
        { "{}\0", "doc:1:3: trailing characters after the document (byte 0x00)" },
        -- whitespace is space, tab, CR and LF only (cJSON skips every byte up to 0x20)
        { "\f{}", "doc:1:1: expected a value, found byte 0x0c" },
        { "{}\v", "doc:1:3: trailing characters after the document (byte 0x0b)" },
        { "[1,\0 2]", "doc:1:4: expected a value, found byte 0x00" },
        -- a byte order mark (cJSON skips one)
        { "\239\187\191{}", "doc:1:1: UTF-8 byte order mark before the document (JSON text must not start with one)" },
        -- invalid UTF-8 in strings: a stray continuation byte, overlong forms, a surrogate
        -- encoded directly, a code point above U+10FFFF, a truncated sequence, 0xFF
        { '"\128"', "doc:1:2: invalid UTF-8 in string (byte 0x80)" },
        { '"a\192\128"', "doc:1:3: invalid UTF-8 in string (byte 0xc0)" },
        { '"\224\128\128"', "doc:1:2: invalid UTF-8 in string (byte 0xe0)" },
        { '"\237\160\128"', "doc:1:2: invalid UTF-8 in string (byte 0xed)" },
        { '"\244\144\128\128"', "doc:1:2: invalid UTF-8 in string (byte 0xf4)" },
        { '"\226\130"', "doc:1:2: invalid UTF-8 in string (byte 0xe2)" },
        { '"\255"', "doc:1:2: invalid UTF-8 in string (byte 0xff)" },
        { '{"k\195": 1}', "doc:1:4: invalid UTF-8 in string (byte 0xc3)" },
        { "\195\169", "doc:1:1: expected a value, found byte 0xc3" },
        -- lone surrogates in \u escapes
        { '"\\uD800"', "doc:1:2: lone surrogate \\uD800 (a high surrogate not followed by a low one)" },
        { '"x\\ud800\\u0041"', "doc:1:3: lone surrogate \\uD800 (a high surrogate not followed by a low one)" },
        { '"\\uDBFF\\uDBFF"', "doc:1:2: lone surrogate \\uDBFF (a high surrogate not followed by a low one)" },
        { '"\\uDC00"', "doc:1:2: lone surrogate \\uDC00 (a low surrogate with no high one before it)" },
        { '"\\uDE00\\uD83D"', "doc:1:2: lone surrogate \\uDE00 (a low surrogate with no high one before it)" },
    }
    for _, c in ipairs(refused) do
        local ok, err = pcall(json.decode, c[1], "doc")
        T.ok(not ok, ("%q was accepted"):format(c[1]))
        T.eq(err, c[2], ("%q"):format(c[1]))
    end
end)

T.test("decode: a key given twice in one object is an error at the second", function()
    T.raises(function() json.decode('{"a": 1, "b": {"c": 2},\n "a": 3}', "cfg") end,
        'cfg:2:2: duplicate key "a"', true)
    T.raises(function() json.decode('[{"x": 1}, {"y": {"z": 1, "z": 1}}]', "cfg") end,
        'cfg:1:27: duplicate key "z"', true)
    T.raises(function() json.decode('{"a\\u0062": 1, "ab": 2}', "cfg") end, 'duplicate key "ab"', true)
    -- the same key in different objects is fine, and the decoder is usable afterwards
    T.eq(json.decode('[{"a": 1}, {"a": 2}]'), { { a = 1 }, { a = 2 } })
    T.eq(json.decode('{"a": null, "b": false}').b, false)
    T.raises(function() json.decode('{"a": null, "a": null}') end, 'JSON:1:13: duplicate key "a"', true)
end)

T.test("decode: nesting is at most 512 arrays and objects deep", function()
    local ok512 = string.rep("[", 512) .. "1" .. string.rep("]", 512)
    local v = json.decode(ok512)
    for _ = 1, 511 do v = v[1] end
    T.eq(v, { 1 })
    local obj512 = string.rep('{"k":', 511) .. "{}" .. string.rep("}", 511)
    T.ok(json.decode(obj512).k)
    T.raises(function() json.decode(string.rep("[", 513) .. string.rep("]", 513), "d") end,
        "d:1:513: nesting deeper than 512", true)
    T.raises(function() json.decode(string.rep('{"k":', 513) .. "1" .. string.rep("}", 513), "d") end,
        "d:1:2561: nesting deeper than 512", true)
    T.raises(function() json.decode(string.rep("[", 100000), "d") end, "d:1:513: nesting deeper than 512", true)
    T.raises(function() json.decode(string.rep("[{\"a\":", 300), "d") end, "nesting deeper than 512", true)
end)

T.test("decode: values, arrays, objects and null", function()
    local v = json.decode(' {"a": [1, 2.5, -3e2, true, false, null, "s", [], {}], "b": {"c": ""}} ')
    T.ok(json.is_array(v.a) and not json.is_array(v) and not json.is_array(v.b))
    T.eq(#v.a, 9)
    T.eq(v.a[1], 1)
    T.eq(v.a[3], -300)
    T.eq(v.a[4], true)
    T.eq(v.a[5], false)
    T.ok(v.a[6] == json.null, "null is json.null")
    T.eq(v.a[7], "s")
    T.ok(json.is_array(v.a[8]) and next(v.a[8]) == nil, "empty array")
    T.ok(not json.is_array(v.a[9]) and next(v.a[9]) == nil, "empty object")
    T.eq(v.b.c, "")
    T.eq(json.decode("null"), json.null)
    T.eq(json.decode('"top"'), "top")
    T.eq(json.decode("\t\r\n 7 \r\n"), 7)
    local arr = json.decode("[null, null]")
    T.eq(#arr, 2, "nulls keep their places in an array")
end)

T.test("decode: unicode escapes and raw UTF-8", function()
    T.eq(json.decode('"\\u0041\\u00e9\\u00E9\\u20ac\\uFFFF"'), "A\195\169\195\169\226\130\172\239\191\191")
    T.eq(json.decode('"\\uD83D\\uDE00"'), "\240\159\152\128")
    T.eq(json.decode('"\\udbff\\udfff"'), "\244\143\191\191", "U+10FFFF")
    T.eq(json.decode('"\\" \\\\ \\/ \\b \\f \\n \\r \\t"'), '" \\ / \b \f \n \r \t')
    T.eq(json.decode('"é € 😀 \127"'), "é € 😀 \127", "raw UTF-8 and DEL pass through")
    local s = json.decode('"a\\u0000b"')
    T.eq(#s, 3, "\\u0000 is a character of the string")
    T.eq(s, "a\0b")
    local o = json.decode('{"k\\u0000": "\\u0000", "k": 1}')
    T.eq(o["k\0"], "\0")
    T.eq(o.k, 1)
    T.eq(json.decode('{"\\u00e9": "x"}')["é"], "x", "escaped keys are decoded")
end)

T.test("decode: a decode from a finaliser during a decode parses on its own", function()
    -- Finalisers that decode, collected while the big document's strings are made.
    local inner = {}
    local big = { "[" }
    for i = 1, 20000 do big[#big + 1] = ('"s%d",'):format(i) end
    big[#big + 1] = '"end"]'
    big = table.concat(big)
    collectgarbage("collect")
    local pause = collectgarbage("setpause", 10)
    local stepmul = collectgarbage("setstepmul", 1000)
    for i = 1, 200 do
        -- garbage at once: its finaliser decodes while a collection step runs
        ffi.gc(ffi.new("int[1]"), function()
            inner[#inner + 1] = json.decode(('{"i": %d, "l": ["x", "y"]}'):format(i)).i
        end)
    end
    local v = json.decode(big)
    collectgarbage("setpause", pause)
    collectgarbage("setstepmul", stepmul)
    collectgarbage("collect")
    T.eq(#v, 20001)
    for i = 1, 20000 do
        if v[i] ~= "s" .. i then error("element " .. i .. " is " .. tostring(v[i])) end
    end
    T.eq(#inner, 200)
    T.eq(json.decode('{"after": [1]}').after, { 1 })
end)

T.test("encode: layout, sorted keys and indent as before", function()
    local v = { b = 1, a = json.array({ 1, "x", json.null, true }), c = { d = {}, e = json.array() } }
    T.eq(json.encode(v), '{"a":[1,"x",null,true],"b":1,"c":{"d":{},"e":[]}}')
    T.eq(json.encode(v, { indent = 2 }),
        '{\n  "a": [\n    1,\n    "x",\n    null,\n    true\n  ],\n  "b": 1,\n  "c": {\n    "d": {},\n    "e": []\n  }\n}')
    T.eq(json.encode({ 1, 2, 3 }), "[1,2,3]", "a Lua sequence is an array")
    T.eq(json.encode({}), "{}", "an empty table is an object")
    T.eq(json.encode({ z = 1, y = 2 }, { sort_keys = false }):len(), 13)
    T.raises(function() json.encode({ [1] = 1, x = 2 }) end, "json.encode: value has a non-string key 1", true)
    T.raises(function() json.encode({ f = print }) end, "json.encode: value.f is a function", true)
end)

T.test("encode: strings are escaped as before; text that is not UTF-8 is an error", function()
    T.eq(json.encode('q" b\\ s/ \n\r\t\b\f'), '"q\\" b\\\\ s/ \\n\\r\\t\\b\\f"')
    T.eq(json.encode("\0\1\31\127"), '"\\u0000\\u0001\\u001f\\u007f"')
    T.eq(json.encode("é € 😀"), '"é € 😀"', "non-ASCII is written as UTF-8")
    for c = 0, 127 do
        local s = string.char(c)
        T.eq(json.decode(json.encode(s)), s, "byte " .. c)
    end
    T.eq(json.encode({ ["k\n"] = 1 }), '{"k\\n":1}')
    T.raises(function() json.encode({ a = { "ok", "bad\255" } }) end,
        "json.encode: value.a[2] is not valid UTF-8 (byte 4 is 0xff)", true)
    T.raises(function() json.encode({ ["\192\128"] = 1 }) end,
        "json.encode: a key of value is not valid UTF-8 (byte 1 is 0xc0)", true)
    T.raises(function() json.encode("\237\160\128") end, "not valid UTF-8", true)
    T.raises(function() json.encode("\244\144\128\128") end, "not valid UTF-8", true)
    T.raises(function() json.encode("ab\226\130") end, "byte 3 is 0xe2", true)
end)

T.test("round trip: documents with every kind of value", function()
    math.randomseed(7)
    local function rnd_string()
        local parts = {}
        for i = 1, math.random(0, 12) do
            local r = math.random()
            if r < 0.6 then
                parts[i] = string.char(math.random(0, 127))
            elseif r < 0.8 then
                parts[i] = "é"
            elseif r < 0.9 then
                parts[i] = "€"
            else
                parts[i] = "😀"
            end
        end
        return table.concat(parts)
    end
    local function rnd(depth)
        local r = math.random()
        if depth > 4 or r < 0.3 then
            local k = math.random(1, 5)
            if k == 1 then return rnd_string() end
            if k == 2 then return random_double() end
            if k == 3 then return math.random(-1000, 1000) end
            if k == 4 then return math.random() < 0.5 end
            return json.null
        elseif r < 0.65 then
            local a = json.array()
            for i = 1, math.random(0, 5) do a[i] = rnd(depth + 1) end
            return a
        end
        local o = {}
        for _ = 1, math.random(0, 5) do o[rnd_string()] = rnd(depth + 1) end
        return o
    end
    local function same(a, b)
        if type(a) ~= type(b) then return false end
        if type(a) == "number" then return bits(a) == bits(b) end
        if type(a) ~= "table" then return a == b end
        if json.is_array(a) ~= json.is_array(b) then return false end
        for k, x in pairs(a) do if not same(x, b[k]) then return false end end
        for k in pairs(b) do if a[k] == nil then return false end end
        return true
    end
    for i = 1, 300 do
        local v = rnd(0)
        local text = json.encode(v, { indent = i % 2 == 0 and 2 or nil })
        T.ok(same(json.decode(text), v), text)
        T.eq(json.encode(json.decode(text), { indent = i % 2 == 0 and 2 or nil }), text)
    end
end)

T.test("callers: log.jsonl and state.json keep their numbers exactly", function()
    local dir = os.tmpname()
    os.remove(dir)
    lt.fs.make_dirs(dir)
    local loss = ffi.new("float[1]", 2.3456789)[0] -- a loss as the f32 kernels give it
    local log = lt.log.open(dir .. "/log.jsonl")
    log:write({ step = 1, loss = loss, lr = 3e-4, tokens = 2 ^ 40 })
    log:close()
    local line = T.slurp(dir .. "/log.jsonl")
    T.eq(line, '{"loss":2.3456788063049316,"lr":0.0003,"step":1,"tokens":1099511627776}\n')
    local rec = json.decode(line)
    T.eq(bits(rec.loss), bits(loss))
    T.eq(rec.lr, 3e-4)
    local state = { step = 12, extra = { best = 0.1 + 0.2, lrs = json.array({ 1e-5, 2.5e-4 }) } }
    lt.fs.write_atomic(dir .. "/state.json", json.encode(state, { indent = 2 }) .. "\n")
    T.eq(T.slurp(dir .. "/state.json"),
        '{\n  "extra": {\n    "best": 0.30000000000000004,\n    "lrs": [\n      1e-05,\n      0.00025\n    ]\n  },\n  "step": 12\n}\n')
    local back = json.read_file(dir .. "/state.json")
    T.eq(back.extra.best, 0.1 + 0.2)
    T.ok(json.is_array(back.extra.lrs))
    lt.fs.write_atomic(dir .. "/bad.json", '{"a": 1,\n  "b": }\n')
    T.raises(function() json.read_file(dir .. "/bad.json") end, dir .. "/bad.json:2:8: expected a value, found '}'", true)
    T.raises(function() json.read_file(dir .. "/missing.json") end, "cannot open " .. dir .. "/missing.json", true)
    os.execute("rm -rf " .. dir)
end)

T.done()
