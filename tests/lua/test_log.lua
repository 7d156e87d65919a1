--[[
test_log.lua - run logs (lt.log): records are written and flushed line by line, and a write
that fails (a full disk: /dev/full) is an error naming the file, in the library and in a
recipe, which then exits with a failing status instead of 0 and an empty log.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

T.test("records are JSON lines, flushed as written; append continues a log", function()
    local dir = os.tmpname()
    os.remove(dir)
    local path = dir .. "/sub/log.jsonl"
    local log = lt.log.open(path)
    log:write({ step = 1, loss = 2.5 })
    T.eq(T.slurp(path), '{"loss":2.5,"step":1}\n', "flushed before close")
    log:close()
    log:close()
    log = lt.log.open(path, true)
    log:write({ step = 2 })
    log:close()
    T.eq(T.slurp(path), '{"loss":2.5,"step":1}\n{"step":2}\n')
    lt.fs.remove_tree(dir)
end)

T.test("a full disk is an error naming the log file", function()
    for _, append in ipairs({ false, true }) do
        local log = lt.log.open("/dev/full", append)
        T.raises(function() log:write({ step = 1 }) end, "log /dev/full: write failed: No space left on device", true)
        log:close() -- the file is already closed: nothing more to report
    end
end)

T.test("a recipe whose log cannot be written stops with an error naming it", function()
    local out = os.tmpname()
    os.remove(out)
    lt.fs.make_dirs(out)
    local ok = os.execute(("ln -s /dev/full %s/log.jsonl"):format(T.shell_quote(out)))
    T.ok(ok == 0 or ok == true, "symlink")
    local text, code = T.run(("%s recipes/train_tiny.lua dim=32 n_layers=1 n_heads=2 n_kv_heads=1 ffn_dim=48 " ..
        "vocab_size=260 seq_len=16 batch_size=2 steps=2 save=false threads=1 out=%s"):format(T.luatrain(), T.shell_quote(out)))
    T.ok(code ~= 0, "a failing exit status:\n" .. text)
    T.ok(text:find("log " .. out .. "/log.jsonl: write failed", 1, true), text)
    lt.fs.remove_tree(out)
end)

T.test("the progress bar fits the terminal's width, and is plain lines through a pipe", function()
    local script = os.tmpname() .. ".lua"
    T.write_file(script, [[
io.write("go> ") io.flush() io.read()
local bar = require("luatrain.log").progress("training")
for i = 1, 20 do bar:update(i / 20, ("step %d loss %.4f lr 3.00e-04 tok/s 12345 peak 41.57 MiB eval 0.5"):format(i, 1 / i)) end
bar:finish("done")
]])
    local _, has_python = T.run("command -v python3 > /dev/null")
    if has_python == 0 then
        for _, cols in ipairs({ 40, 100 }) do
            local out, code = T.run(("echo | PTY_COLUMNS=%d python3 tests/lua/pty_drive.py 30 'go> ' -- %s %s"):format(
                cols, T.shell_quote(T.luatrain()), script))
            T.eq(code, 0, out)
            local n = 0
            for seg in out:gmatch("\r([^\r\n]*)") do
                seg = seg:gsub("\27%[K", "")
                if seg:find("training [", 1, true) then
                    n = n + 1
                    T.ok(#seg <= cols - 1, ("%d columns: a %d-character line: %q"):format(cols, #seg, seg))
                end
            end
            T.ok(n > 0, "redrawn in place:\n" .. out)
        end
    end
    -- through a pipe: a plain line per 10%, nothing redrawn
    local out = T.run(("echo | %s %s 2>&1"):format(T.shell_quote(T.luatrain()), script))
    T.ok(not out:find("\r", 1, true), "no carriage returns in a pipe")
    local lines = 0
    for _ in out:gmatch("training %[") do lines = lines + 1 end
    T.eq(lines, 11, "the first line, then one per 10%:\n" .. out)
    os.remove(script)
end)

T.done()
