-- test_json.lua - luatrain.json's decoder (C check + cJSON): error positions and refusals,
-- unicode escapes, the depth limit, numbers beyond the double range.
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local ffi = require "ffi"
local json = require "luatrain.json"

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
        local p = ffi.gc(ffi.new("int[1]"), function()
            inner[#inner + 1] = json.decode(('{"i": %d, "l": ["x", "y"]}'):format(i)).i
        end)
        p = nil
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

T.done()
