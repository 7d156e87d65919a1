--[[
tokenizer.lua - encode throughput of luatrain's tokenizers against the reference
implementations, on the same documents in the same job.

    luatrain tools/bench/tokenizer.lua modules=BUILD/tokenizer_ref/node_modules [mb=4 passes=3]

(tools/bench/tokenizer.sh builds, installs the reference packages and runs this.) The
documents are the text cases of tests/fixtures/tokenizer_corpus/cases.jsonl (all but the
invalid UTF-8, decode-only, generated, long and edge ones: single characters and
300-character repeats probe parity, they are not text; and those where the two references
are known to disagree), cut into lines, shuffled with a fixed seed and
packed into documents of 1 to 8 KB until `mb` megabytes (10^6 bytes of UTF-8). Every engine
encodes every document without special tokens, `passes` times; MB/s is the input bytes over
the median pass. luatrain runs one thread (tok:encode, one document after another) and all
threads (tok:encode_batch); transformers.js (@lenml/tokenizers) is one thread; Hugging
Face's Rust tokenizers, when installed, one at a time and encodeBatch (its own thread pool).
The token totals of all engines must agree: they encoded the same text (a WARNING line
says otherwise).
]]
local lt = require "luatrain"
local json = lt.json

local cfg = lt.config {
    modules = { "", "node_modules folder of tools/tokenizer_ref (default: LT_BUILD_DIR's or build's tokenizer_ref/node_modules)" },
    mb = { 4, "megabytes of documents to encode" },
    passes = { 3, "timed passes per engine (the median is reported)", type = "int" },
    threads = { 0, "threads for the batch run (0: all cores)", type = "int" },
    seed = { 1, "shuffle seed", type = "int" },
    js = { true, "time transformers.js" },
    rust = { true, "time Hugging Face tokenizers (Rust) when installed" },
    tokenizers = { "llama2,llama3", "comma-separated: llama2, llama3" },
}

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local modules = cfg.modules ~= "" and cfg.modules or
    ((os.getenv("LT_BUILD_DIR") or "build") .. "/tokenizer_ref/node_modules")
local threads = cfg.threads
if threads <= 0 then
    local p = io.popen("nproc")
    threads = tonumber(p:read("*l")) or 1
    p:close()
end
local now = lt.fs.now

-- ---- documents -----------------------------------------------------------------------------
local function build_docs()
    local lines, by_cat = {}, {}
    local f = assert(io.open("tests/fixtures/tokenizer_corpus/cases.jsonl", "rb"))
    for line in f:lines() do
        if line:match("%S") then
            local c = json.decode(line)
            if type(c.text) == "string" and c.cat ~= "long" and c.cat ~= "edge" and not c.quirk
                and #c.text > 0 then
                for l in (c.text .. "\n"):gmatch("([^\n]*)\n") do
                    if #l > 0 then
                        lines[#lines + 1] = l
                        by_cat[c.cat] = (by_cat[c.cat] or 0) + #l
                    end
                end
            end
        end
    end
    f:close()
    local state = cfg.seed % 2147483646 + 1
    local function rand(n) -- Park-Miller, exact in doubles
        state = state * 16807 % 2147483647
        return state % n + 1
    end
    local docs, total, target = {}, 0, cfg.mb * 1e6
    while total < target do
        local want = 1000 + rand(7000)
        local parts, size = {}, 0
        while size < want do
            local l = lines[rand(#lines)]
            parts[#parts + 1] = l
            size = size + #l + 1
        end
        local d = table.concat(parts, "\n")
        docs[#docs + 1] = d
        total = total + #d
    end
    return docs, total, by_cat
end

local docs, bytes, by_cat = build_docs()
local docs_path = os.tmpname() .. ".json"
do
    local f = assert(io.open(docs_path, "wb"))
    f:write(json.encode(docs))
    f:close()
end
local cats = {}
for k, v in pairs(by_cat) do cats[#cats + 1] = { k, v } end
table.sort(cats, function(a, b) return a[2] > b[2] end)
local mix = {}
local cat_total = 0
for _, c in ipairs(cats) do cat_total = cat_total + c[2] end
for i = 1, math.min(8, #cats) do mix[#mix + 1] = ("%s %.0f%%"):format(cats[i][1], 100 * cats[i][2] / cat_total) end
print(("documents: %d, %.2f MB (line pool by category: %s, ...)"):format(#docs, bytes / 1e6,
    table.concat(mix, ", ")))

local function median(xs)
    local s = {}
    for i, x in ipairs(xs) do s[i] = x end
    table.sort(s)
    return s[math.floor(#s / 2) + 1]
end

local function time_passes(fn)
    local secs, tokens = {}, 0
    for p = 1, cfg.passes do
        local t0 = now()
        tokens = fn()
        secs[p] = now() - t0
    end
    return median(secs), tokens
end

local function run_ref(name, engine)
    local cmd = ("node tools/tokenizer_ref/ref.js --modules %s --tokenizer %s --engine %s --bench %s --passes %d 2>&1")
        :format(shell_quote(modules), name, engine, shell_quote(docs_path), cfg.passes)
    local p = io.popen(cmd)
    local out = p:read("*a")
    p:close()
    local rows = {}
    for line in out:gmatch("[^\n]+") do
        local ok, r = pcall(json.decode, line)
        if ok and type(r) == "table" and r.mb_per_s then rows[#rows + 1] = r end
    end
    if #rows == 0 then io.stderr:write(("%s %s failed: %s\n"):format(engine, name, out)) end
    return rows
end

local function exists(path)
    local f = io.open(path, "rb")
    if f then f:close() return true end
    return false
end

-- ---- runs --------------------------------------------------------------------------------
local tokenizer = require "luatrain.tokenizer"
local table_rows = {}
local warnings = {}
local opts1 = { add_special_tokens = false }

for name in cfg.tokenizers:gmatch("[^,]+") do
    local tok = tokenizer.load(modules .. "/@lenml/tokenizer-" .. name .. "/models")
    for i = 1, math.min(20, #docs) do tok:encode(docs[i], opts1) end

    local rows = {}
    local s1, n1 = time_passes(function()
        local n = 0
        for i = 1, #docs do n = n + #tok:encode(docs[i], opts1) end
        return n
    end)
    rows[#rows + 1] = { engine = "luatrain", mode = "1 thread", mbs = bytes / s1 / 1e6, tokens = n1 }
    local optsn = { add_special_tokens = false, threads = threads }
    local sn, nn = time_passes(function()
        local n = 0
        for _, ids in ipairs(tok:encode_batch(docs, optsn)) do n = n + #ids end
        return n
    end)
    rows[#rows + 1] = { engine = "luatrain", mode = ("%d threads (encode_batch)"):format(threads),
        mbs = bytes / sn / 1e6, tokens = nn }

    local js_mbs
    if cfg.js then
        for _, r in ipairs(run_ref(name, "js")) do
            rows[#rows + 1] = { engine = "transformers.js", mode = r.mode, mbs = r.mb_per_s, tokens = r.tokens,
                what = r.description }
            js_mbs = js_mbs or r.mb_per_s
        end
    end
    if cfg.rust and exists(modules .. "/tokenizers/package.json") then
        for _, r in ipairs(run_ref(name, "rust")) do
            local mode = r.mode == "all threads" and ("%d threads (encodeBatch)"):format(threads) or "1 thread"
            rows[#rows + 1] = { engine = "HF tokenizers (Rust)", mode = mode, mbs = r.mb_per_s, tokens = r.tokens,
                what = r.description }
        end
    end
    for _, r in ipairs(rows) do
        if r.tokens ~= n1 then
            warnings[#warnings + 1] = ("%s: %s %s counted %d tokens, luatrain %d (encodes differ)")
                :format(name, r.engine, r.mode, r.tokens, n1)
        end
        r.name = name
        r.vs_js = js_mbs and r.mbs / js_mbs or nil
        table_rows[#table_rows + 1] = r
    end
    tok = nil
    collectgarbage()
end
os.remove(docs_path)

print()
print(("%-8s %-22s %-28s %9s %11s %9s"):format("tok", "engine", "mode", "MB/s", "tokens", "vs JS"))
for _, r in ipairs(table_rows) do
    print(("%-8s %-22s %-28s %9.2f %11d %9s"):format(r.name, r.engine, r.mode, r.mbs, r.tokens,
        r.vs_js and ("%.2fx"):format(r.vs_js) or "-"))
end
local seen = {}
for _, r in ipairs(table_rows) do
    if r.what and not seen[r.what] then
        seen[r.what] = true
        print("  " .. r.engine .. ": " .. r.what)
    end
end
for _, w in ipairs(warnings) do print("WARNING: " .. w) end
