--[[
test_data_stream.lua - a tokenized dataset streams to disk while it is built: memory stays
bounded whatever the dataset's size, counts and offsets are 64-bit with no total-sized
array in Lua, unnamed build files leave nothing behind (not even after a crash), a failed
build leaves no temporary files, and the spool (lt_spool) that writes the files commits
whole or not at all.

The big build uses the tiny_facts tokenizer (byte-level BPE with 256 merges: about one
token per byte of text, so a few hundred MB of JSONL make a few hundred MB of tokens).
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local ffi = require "ffi"

local core = require "luatrain.core"
local tensor = require "luatrain.tensor"
local C = core.C
local TOKENIZER = "recipes/assets/tiny_facts/model"

local function tmpdir()
    local d = os.tmpname()
    os.remove(d)
    lt.fs.make_dirs(d)
    return d
end

-- Names in a folder, hidden ones included, sorted.
local function list(dir)
    local p = io.popen("ls -A " .. T.shell_quote(dir))
    local names = {}
    for l in p:lines() do names[#names + 1] = l end
    p:close()
    table.sort(names)
    return names
end

local function file_size(path)
    local f = assert(io.open(path, "rb"))
    local n = f:seek("end")
    f:close()
    return n
end

-- A kB field of /proc/self/status, in bytes.
local function status_bytes(field)
    for l in io.lines("/proc/self/status") do
        local v = l:match("^" .. field .. ":%s+(%d+) kB")
        if v then return tonumber(v) * 1024 end
    end
    error("no " .. field .. " in /proc/self/status")
end

-- `lines` JSONL text records of pseudo-random words, about `words` words each, gzipped
-- as they are written (the file never exists uncompressed, nor in memory).
local VOCAB = { "river", "stone", "lantern", "quietly", "the", "of", "meadow", "seven", "copper",
    "whistle", "under", "bright", "harbor", "and", "folded", "a", "maple", "runs", "north", "glass" }
local function write_text_jsonl_gz(path, lines, words)
    local p = assert(io.popen("gzip -1 > " .. T.shell_quote(path), "w"))
    local x, raw = 12345, 0
    local parts = {}
    for i = 1, lines do
        for k = 1, words do
            x = (x * 1103515245 + 12345) % 2147483648
            parts[k] = VOCAB[x % #VOCAB + 1]
        end
        local line = ('{"text": "line %d: %s"}\n'):format(i, table.concat(parts, " "))
        raw = raw + #line
        p:write(line)
    end
    p:close()
    return raw
end

-- ---- memory is bounded --------------------------------------------------------------------

T.test("a few hundred MB of JSONL build into the cache with bounded peak memory", function()
    local dir = tmpdir()
    local src = dir .. "/big.jsonl.gz"
    local raw = write_text_jsonl_gz(src, 40000, 400) -- ~100 MB of JSONL
    local tok = lt.tokenizer.load(TOKENIZER)
    collectgarbage()
    collectgarbage()
    -- Peak resident memory from here on: writing 5 to clear_refs resets VmHWM to the
    -- current RSS (Linux 4.0+); where that is refused the earlier peak stays the floor.
    local f = io.open("/proc/self/clear_refs", "w")
    if f then
        f:write("5")
        f:close()
    end
    local base = math.max(status_bytes("VmRSS"), status_bytes("VmHWM"))
    local t0 = lt.fs.now()
    local ds, cached = lt.data.load(src, tok, { cache_dir = dir .. "/cache" })
    local seconds = lt.fs.now() - t0
    local peak = status_bytes("VmHWM")
    T.eq(cached, false)
    local written = ds.total * 4 + ds.total + (ds.n + 1) * 8
    local cache = dir .. "/cache/" .. list(dir .. "/cache")[1]
    T.eq(file_size(cache .. "/tokens.i32") + file_size(cache .. "/train.u8") +
        file_size(cache .. "/offsets.i64"), written, "the files hold every token")
    local growth = peak - base
    print(("  %.0f MB of JSONL (%.1f MB gzip) -> %d samples, %d tokens, %.0f MB written in %.1f s; " ..
        "peak RSS grew %.1f MB (from %.1f MB)"):format(raw / 1e6, file_size(src) / 1e6, ds.n, ds.total,
        written / 1e6, seconds, growth / 1e6, base / 1e6))
    T.eq(ds.n, 40000)
    T.ok(written > 400e6, "the test writes hundreds of MB")
    -- an in-memory build held at least the bytes written; a streamed one holds a chunk
    T.ok(growth < written / 20, ("peak RSS grew %.1f MB for %.0f MB written"):format(growth / 1e6, written / 1e6))
    -- the mapped dataset is the records, tokenized: the first and last match a fresh encoding
    local encode = lt.data.templates.encoder(tok, {})
    local r = lt.data.records.open(src)
    local first = r:next()
    r:close()
    local want = encode(first)
    T.eq(ds:sample_table(1), want)
    local last_ids = ds:sample_table(ds.n)
    T.eq(tok:decode(last_ids, { skip_special_tokens = true }):match("^line (%d+):"), "40000")
    local total = ds.total
    ds:close()
    local again, from_cache = lt.data.load(src, tok, { cache_dir = dir .. "/cache" })
    T.eq({ from_cache, again.n, again.total }, { true, 40000, total })
    again:close()
    os.execute("rm -rf " .. T.shell_quote(dir))
end)

-- ---- the 2^28 limit ------------------------------------------------------------------------

-- A byte-per-token stand-in tokenizer in plain Lua (fast, no specials).
local function byte_tokenizer()
    local tok = { kind = "bytelevel", bos_id = 1, eos_id = 2, vocab_size = 259 }
    function tok:token_to_id() return nil end
    function tok:encode(text)
        local out = {}
        for i = 1, #text do out[i] = text:byte(i) + 3 end
        return out
    end
    return tok
end

T.test("building allocates nothing in Lua that grows with the dataset", function()
    local dir = tmpdir()
    local src = dir .. "/d.jsonl.gz"
    write_text_jsonl_gz(src, 2000, 200) -- ~2.5 M tokens: old growable arrays reached 16 MB
    local largest, real_new = 0, ffi.new
    ffi.new = function(ct, ...)
        local v = real_new(ct, ...)
        largest = math.max(largest, ffi.sizeof(v))
        return v
    end
    local ok, ds = pcall(lt.data.build, src, byte_tokenizer(), { tmp_dir = dir })
    ffi.new = real_new
    T.ok(ok, tostring(ds))
    T.ok(ds.total > 2e6, "a dataset of millions of tokens")
    T.ok(largest <= 512 * 1024, ("the largest FFI allocation of the build is %d bytes"):format(largest))
    ds:close()
    os.execute("rm -rf " .. T.shell_quote(dir))
end)

T.test("a cache of more than 2^29 tokens opens, samples and batches (sparse files)", function()
    local dir = tmpdir()
    local n1 = 2 ^ 29          -- sample 1: tokens [0, 2^29)
    local total = n1 + 3       -- sample 2: 3 tokens at byte offset 2^31 of tokens.i32
    local function sparse(name, bytes, writes)
        local f = assert(io.open(dir .. "/" .. name, "wb"))
        assert(f:seek("set", bytes - 1))
        f:write("\0")
        for _, w in ipairs(writes) do
            assert(f:seek("set", w[1]))
            f:write(w[2])
        end
        f:close()
    end
    local function i32s(...)
        local v = ffi.new("int32_t[?]", select("#", ...), ...)
        return ffi.string(v, ffi.sizeof(v))
    end
    sparse("tokens.i32", total * 4, { { 0, i32s(11, 12) }, { n1 * 4, i32s(21, 22) } })
    sparse("train.u8", total, { { n1, "\1\1\1" }, { 1, "\1" } })
    local off = ffi.new("int64_t[3]", 0, n1, total)
    lt.fs.write_atomic(dir .. "/offsets.i64", ffi.string(off, 24))
    lt.fs.write_atomic(dir .. "/meta.json", lt.json.encode({ samples = 2, tokens = total }))
    local ds = lt.data.tokens.open_cache(dir)
    T.eq({ ds.n, ds.total, ds:sample_len(1), ds:sample_len(2), ds:max_len() }, { 2, total, n1, 3, n1 })
    local ids, train, len = ds:sample(2)
    T.eq({ ids[0], ids[1], ids[2], train[0], len }, { 21, 22, 0, 1, 3 })
    local a, b = ds:sample_table(2)
    T.eq(a, { 21, 22, 0 })
    T.eq(b, { true, true, true })
    local loader = lt.data.loader(ds, { batch_size = 1, seq_len = 4, shuffle = false, epochs = 1 })
    local first = loader:next()
    T.eq(first.ids:totable()[1], { 11, 12, 0, 0 }, "sample 1, cut to seq_len")
    T.eq(first.targets:totable()[1], { 12, -100, -100, -100 })
    T.eq(loader:next().ids:totable()[1], { 21, 22, 0, 0 })
    ds:close()
    T.raises(function() ds:sample(1) end, "closed dataset", true)
    os.execute("rm -rf " .. T.shell_quote(dir))
end)

-- ---- no leftovers ----------------------------------------------------------------------------

T.test("without cache_dir the files have no name: nothing is left during, after or on a crash", function()
    local dir = tmpdir()
    local spill = dir .. "/tmp"
    lt.fs.make_dirs(spill)
    local src = dir .. "/d.jsonl"
    T.write_file(src, ('{"text": "hello world"}\n'):rep(3000))
    local seen = {}
    local ds = lt.data.build(src, byte_tokenizer(), { tmp_dir = spill, progress = function()
        seen[#seen + 1] = #list(spill)
    end })
    T.ok(#seen > 1)
    for i, n in ipairs(seen) do T.eq(n, 0, "entries in tmp_dir at progress report " .. i) end
    T.eq(list(spill), {}, "after the build")
    T.eq(ds.n, 3000)
    local want = byte_tokenizer():encode("hello world")
    table.insert(want, 1, 1)
    want[#want + 1] = 2
    T.eq(ds:sample_table(3000), want, "BOS, the text's bytes, EOS")
    ds:close()
    -- a process killed mid-build (SIGKILL: no handler runs) leaves nothing either
    local code = ([[
        local lt = require "luatrain"
        local tok = { kind = "bytelevel", bos_id = 1, eos_id = 2 }
        function tok:token_to_id() return nil end
        function tok:encode(t) local o = {} for i = 1, #t do o[i] = t:byte(i) + 3 end return o end
        lt.data.build(%q, tok, { tmp_dir = %q, progress = function(_, samples)
            if samples >= 1000 then os.execute("kill -9 $PPID") end
        end })
        print("not killed")
    ]]):format(src, spill)
    local out = T.run(T.shell_quote(T.luatrain()) .. " -e " .. T.shell_quote(code))
    T.ok(not out:find("not killed"), out)
    T.eq(list(spill), {}, "after a crash")
    os.execute("rm -rf " .. T.shell_quote(dir))
end)

T.test("a crash while building a cache does not break the next run", function()
    local dir = tmpdir()
    local src = dir .. "/d.jsonl"
    T.write_file(src, ('{"text": "abc"}\n'):rep(3000))
    local cache = dir .. "/cache"
    local code = ([[
        local lt = require "luatrain"
        local tok = { kind = "bytelevel", bos_id = 1, eos_id = 2 }
        function tok:token_to_id() return nil end
        function tok:encode(t) local o = {} for i = 1, #t do o[i] = t:byte(i) + 3 end return o end
        lt.data.load(%q, tok, { cache_dir = %q, progress = function(_, samples)
            if samples >= 1000 then os.execute("kill -9 $PPID") end
        end })
    ]]):format(src, cache)
    T.run(T.shell_quote(T.luatrain()) .. " -e " .. T.shell_quote(code))
    local ds, cached = lt.data.load(src, byte_tokenizer(), { cache_dir = cache })
    T.eq({ cached, ds.n, ds.total }, { false, 3000, 3000 * 5 })
    ds:close()
    local again, cached2 = lt.data.load(src, byte_tokenizer(), { cache_dir = cache })
    T.eq({ cached2, again.n }, { true, 3000 })
    again:close()
    os.execute("rm -rf " .. T.shell_quote(dir))
end)

T.test("a failed build names file:line and removes its temporary files", function()
    local dir = tmpdir()
    local spill = dir .. "/tmp"
    lt.fs.make_dirs(spill)
    local src = dir .. "/bad.jsonl"
    T.write_file(src, ('{"text": "fine"}\n'):rep(70000) .. '{"text": 5}\n')
    local tok = byte_tokenizer()
    T.raises(function() lt.data.build(src, tok, { tmp_dir = spill }) end, src .. ":70001: field \"text\" must be a string", true)
    T.eq(list(spill), {})
    T.raises(function() lt.data.load(src, tok, { cache_dir = dir .. "/cache" }) end, src .. ":70001:", true)
    -- settings refused before any record is read, once the cache's files are open
    T.raises(function() lt.data.load(src, tok, { cache_dir = dir .. "/cache", template = "vicuna" }) end,
        'unknown template "vicuna"', true)
    local subs = list(dir .. "/cache")
    T.eq(#subs, 2, "a folder per settings")
    for _, sub in ipairs(subs) do
        T.eq(list(dir .. "/cache/" .. sub), {}, "no data files, no temporary files, no meta.json")
    end
    -- a progress callback that raises stops the build the same way
    T.raises(function() lt.data.build(src, tok, { tmp_dir = spill, progress = function() error("stop", 0) end }) end,
        "stop", true)
    T.eq(list(spill), {})
    T.raises(function() lt.data.build(src, tok, { tmp_dir = dir .. "/missing" }) end,
        "cannot create a temporary file in " .. dir .. "/missing", true)
    os.execute("rm -rf " .. T.shell_quote(dir))
end)

-- ---- the spool -----------------------------------------------------------------------------

local function spool_open(path, tmp_dir)
    local h = ffi.new("lt_spool*[1]")
    core.check(C.lt_spool_open(h, path, tmp_dir))
    return h[0]
end

T.test("spool: a named file appears whole at finish, or not at all", function()
    local dir = tmpdir()
    local path = dir .. "/x.i64"
    local s = spool_open(path)
    local v = ffi.new("int64_t[3]", 5, 6, 2 ^ 40)
    core.check(C.lt_spool_write(s, v, 16))
    core.check(C.lt_spool_write(s, v + 2, 8))
    T.eq(tonumber(C.lt_spool_size(s)), 24)
    T.eq(list(dir)[1]:match("^%.x%.i64%.tmp%-") ~= nil, true, "written under a temporary name")
    local t = tensor.new_header()
    core.check(C.lt_spool_finish(s, t, C.LT_DTYPE_I64))
    T.eq(list(dir), { "x.i64" })
    T.eq(t:totable(), { 5, 6, 2 ^ 40 })
    t:free()
    -- a size that is not whole elements commits nothing; the old file stays
    local s2 = spool_open(path)
    core.check(C.lt_spool_write(s2, v, 12))
    local t2 = tensor.new_header()
    T.eq(C.lt_spool_finish(s2, t2, C.LT_DTYPE_I64) ~= 0, true)
    T.ok(core.last_error():find("12 bytes is not a whole number of i64 elements", 1, true), core.last_error())
    T.eq(list(dir), { "x.i64" })
    T.eq(file_size(path), 24)
    -- abort leaves the old file too
    local s3 = spool_open(path)
    core.check(C.lt_spool_write(s3, v, 8))
    C.lt_spool_abort(s3)
    T.eq(list(dir), { "x.i64" })
    T.eq(file_size(path), 24)
    os.execute("rm -rf " .. T.shell_quote(dir))
end)

T.test("spool: an unnamed file is never visible and maps whole", function()
    local dir = tmpdir()
    local s = spool_open(nil, dir)
    T.eq(list(dir), {})
    local v = ffi.new("int32_t[4]", 1, -2, 3, 123456789)
    core.check(C.lt_spool_write(s, v, 16))
    local t = tensor.new_header()
    core.check(C.lt_spool_finish(s, t, C.LT_DTYPE_I32))
    local p = ffi.cast("int32_t*", t:data_ptr())
    T.eq({ t:numel(), p[0], p[1], p[2], p[3] }, { 4, 1, -2, 3, 123456789 }, "exact (not through f32)")
    T.eq(list(dir), {})
    t:free()
    local h = ffi.new("lt_spool*[1]")
    T.ok(C.lt_spool_open(h, nil, dir .. "/nope") ~= 0)
    T.ok(core.last_error():find("cannot create a temporary file in " .. dir .. "/nope", 1, true), core.last_error())
    local s2 = spool_open(nil, dir)
    T.ok(C.lt_spool_write(s2, nil, 4) ~= 0)
    T.ok(core.last_error():find("temporary file in " .. dir .. ": write from NULL", 1, true), core.last_error())
    C.lt_spool_abort(s2)
    T.eq(list(dir), {})
    os.execute("rm -rf " .. T.shell_quote(dir))
end)

T.done()
