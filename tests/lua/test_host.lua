-- test_host.lua - the luatrain binary as a user runs it: options, the arg table, exit
-- statuses and error output, recipe settings on the command line, -i, and the install
-- tree. Each case runs the host in a subprocess (LT_BUILD_DIR, set by ctest, finds it).
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = T.lt

local RECIPE = "tests/fixtures/recipes/train_config.lua"
local shell_quote, write, run = T.shell_quote, T.write_file, T.host

-- A temporary script holding text; removed by the caller.
local function script(text)
    local path = os.tmpname() .. ".lua"
    write(path, text)
    return path
end

local function has(s, needle)
    return s:find(needle, 1, true) ~= nil
end

T.test("-v prints the version", function()
    local rc, out = run({ "-v" })
    T.eq(rc, 0)
    T.ok(has(out, "luatrain " .. lt.version), out)
    T.ok(has(out, "LuaJIT"), out)
end)

T.test("-h prints the usage; bad options exit 2", function()
    local rc, out = run({ "-h" })
    T.eq(rc, 0)
    T.ok(has(out, "usage: luatrain"), out)
    local err, _
    rc, _, err = run({ "-x" })
    T.eq(rc, 2)
    T.ok(has(err, "luatrain: unknown option '-x'") and has(err, "usage:"), err)
    rc, _, err = run({ "-e" })
    T.eq(rc, 2)
    T.ok(has(err, "'-e' needs an argument"), err)
end)

T.test("-e runs code, in order, with the library on the path", function()
    local rc, out = run({ "-e", "print(1 + 1)", "-e", "print(require('luatrain').version)" })
    T.eq(rc, 0)
    T.eq(out, "2\n" .. lt.version .. "\n")
    rc, out = run({ "-e", "print(#arg, arg[0])" })
    T.eq(rc, 0)
    T.eq(out, "0\tnil\n", "without a recipe arg[1..] is empty")
end)

T.test("a recipe gets arg and ... as the standalone lua gives them", function()
    local path = script("print(arg[0], #arg, arg[1], arg[2], select('#', ...), ...)\nprint(arg[-1] ~= nil)")
    local rc, out = run({ path, "steps=3", "x y" })
    os.remove(path)
    T.eq(rc, 0)
    T.eq(out, ("%s\t2\tsteps=3\tx y\t2\tsteps=3\tx y\ntrue\n"):format(path))
    rc, out = run({ "--", "-" }, "print('from stdin', arg[0])")
    T.eq(rc, 0)
    T.eq(out, "from stdin\t-\n", "'-' reads the recipe from stdin; -- ends options")
end)

T.test("a recipe error: message and traceback on stderr, status 1", function()
    local path = script("local function inner() error('boom') end\ninner()\n")
    local rc, out, err = run({ path })
    os.remove(path)
    T.eq(rc, 1)
    T.eq(out, "")
    T.ok(err:match("^luatrain: [^\n]*:1: boom\nstack traceback:\n"), err)
    T.ok(has(err, "in function 'inner'"), err)
    path = script("x = = 1")
    rc, out, err = run({ path })
    T.eq(out, "")
    os.remove(path)
    T.eq(rc, 1)
    T.ok(err:match("^luatrain: [^\n]*:1: unexpected symbol near '='"), "syntax error: " .. err)
    rc, out, err = run({ "/nonexistent/recipe.lua" })
    T.eq(out, "")
    T.eq(rc, 2, "a recipe that cannot be opened is bad usage")
    T.ok(has(err, "luatrain: cannot open /nonexistent/recipe.lua"), err)
    rc, out, err = run({ "-e", "error({})" })
    T.eq(out, "")
    T.eq(rc, 1)
    T.ok(has(err, "luatrain: (error object is a table value)"), err)
end)

T.test("os.exit works from a recipe and from -e", function()
    local rc = run({ "-e", "os.exit(7)" })
    T.eq(rc, 7)
    rc = run({ "-e", "os.exit(true)" })
    T.eq(rc, 0)
    local path = script("io.write('partial')\nos.exit(3)")
    local out
    rc, out = run({ path })
    os.remove(path)
    T.eq(rc, 3)
    T.eq(out, "partial", "buffered output is flushed at exit")
end)

T.test("a user error object: its message alone, its exit status", function()
    local rc, _, err = run({ "-e",
        "error(setmetatable({exit_status = 3}, {__tostring = function() return 'bad input' end}))" })
    T.eq(rc, 3)
    T.eq(err, "luatrain: bad input\n", "no traceback")
end)

T.test("recipe settings: key=value overrides", function()
    local rc, out, err = run({ RECIPE, "steps=5", "--lr=1e-3", "--compile", "batch-size=4", "data=my file.txt" })
    T.eq(rc, 0, err)
    T.ok(has(out, 'config: batch_size=4 compile=true data="my file.txt" lr=0.001 schedule=cosine steps=5\n'), out)
    T.ok(has(out, "overrides: batch_size=4,compile=true,data=my file.txt,lr=0.001,steps=5\n"), out)
    rc, out = run({ RECIPE })
    T.eq(rc, 0)
    T.ok(has(out, 'config: batch_size=8 compile=false data="" lr=0.0003 schedule=cosine steps=300\n'), out)
end)

T.test("recipe settings: mistakes exit 2 with a clean message", function()
    local cases = {
        { "stpes=5", "luatrain: unknown setting 'stpes' (did you mean 'steps'?)\n" ..
            "  (luatrain " .. RECIPE .. " --help lists the settings)\n" },
        { "steps=2.5", "luatrain: invalid value '2.5' for steps (expected an integer)\n" },
        { "lr=fast", "luatrain: invalid value 'fast' for lr (expected a number)\n" },
        { "compile=maybe", "luatrain: invalid value 'maybe' for compile (expected a boolean (true/false, 1/0, yes/no, on/off))\n" },
        { "schedule=cosin", "luatrain: invalid value 'cosin' for schedule (did you mean 'cosine'? one of: constant, linear, cosine)\n" },
        { "steps", "luatrain: malformed argument 'steps' (expected key=value)\n" ..
            "  (luatrain " .. RECIPE .. " --help lists the settings)\n" },
    }
    for _, c in ipairs(cases) do
        local rc, out, err = run({ RECIPE, c[1] })
        T.eq(rc, 2, c[1])
        T.eq(out, "", "the recipe stops before its body: " .. c[1])
        T.eq(err, c[2])
    end
end)

T.test("recipe settings: --help lists them and exits 0", function()
    for _, flag in ipairs({ "--help", "-h" }) do
        local rc, out, err = run({ RECIPE, "steps=1", flag })
        T.eq(rc, 0, flag)
        T.eq(err, "")
        T.ok(not has(out, "config:"), "the recipe does not run on: " .. flag)
        T.ok(has(out, "usage: luatrain " .. RECIPE .. " [key=value ...]\n"), out)
        T.ok(has(out, "A fixture recipe for the config tests.\n"), out)
        T.ok(has(out, "settings of train_config.lua"), out)
        T.ok(has(out, "  setting     type     default   description\n"), out)
        T.ok(has(out, "  batch_size  int      8         sequences per step\n"), out)
        T.ok(has(out, '  data        string   ""        text file to train on (empty: built-in corpus)\n'), out)
        T.ok(has(out, '  schedule    string   "cosine"  learning-rate schedule (one of: constant, linear, cosine)\n'), out)
        T.ok(has(out, "  lr          number   0.0003    peak learning rate\n"), out)
        T.ok(has(out, "  compile     boolean  false     compile the model\n"), out)
        T.ok(has(out, "  resume      string   (none)    checkpoint to resume from\n"), out)
    end
end)

T.test("-i: the REPL after the recipe, with its globals", function()
    local rc, out, err = run({ "-i", RECIPE, "steps=9" }, "steps_seen * 2\nsettings.schedule\nlt ~= nil\n")
    T.eq(rc, 0, err)
    T.ok(has(out, "overrides: steps=9\n18\ncosine\ntrue\n"), out)
    rc, out = run({ "-i", "-e", "x = 42" }, "x\n")
    T.eq(rc, 0)
    T.eq(out, "42\n")
    -- As python -i: a failed recipe still leads into the REPL, and end of input keeps its
    -- failure status.
    rc, out, err = run({ "-i", "-e", "y = 1; error('oops')" }, "y + 1\n")
    T.eq(rc, 1)
    T.eq(out, "2\n")
    T.ok(has(err, "oops"), err)
    rc = run({ "-i", "-e", "error('oops')" }, "exit(0)\n")
    T.eq(rc, 0, "exit() decides")
end)

T.test("no arguments: the REPL on stdin", function()
    local rc, out = run({}, "lt.zeros(2)\n")
    T.eq(rc, 0)
    T.eq(out, tostring(lt.zeros(2)) .. "\n")
end)

T.test("an install tree finds share/luatrain/lua", function()
    local build = os.getenv("LT_BUILD_DIR")
    local has_cmake = os.execute("command -v cmake >/dev/null 2>&1")
    if not build or (has_cmake ~= 0 and has_cmake ~= true) then
        print("skip: install tree (needs LT_BUILD_DIR and cmake)")
        return
    end
    local prefix = os.tmpname()
    os.remove(prefix)
    local ok = os.execute(("cmake --install %s --prefix %s >/dev/null 2>&1"):format(
        shell_quote(build), shell_quote(prefix)))
    T.ok(ok == 0 or ok == true, "cmake --install failed")
    local rc, out, err = run({ "-e", "print(require('luatrain').version, package.path:match('^[^;]*'))" },
        nil, prefix .. "/bin/luatrain")
    T.eq(rc, 0, err)
    T.ok(has(out, lt.version .. "\t" .. prefix .. "/share/luatrain/lua/?.lua"), out)
    -- the installed recipes: listed, run by name from anywhere, their assets found beside them
    local rc2, list = run({ "--recipes" }, nil, prefix .. "/bin/luatrain")
    T.eq(rc2, 0, list)
    T.ok(has(list, prefix .. "/share/luatrain/recipes/qlora_llama.lua"), list)
    local text, code = T.run(("cd / && %s qlora_llama --help"):format(shell_quote(prefix .. "/bin/luatrain")))
    T.eq(code, 0, text)
    T.ok(has(text, prefix .. "/share/luatrain/recipes/assets/tiny_facts/model"), text)
    os.execute("rm -rf " .. shell_quote(prefix))
end)

T.test("--recipes lists the bundled recipes; one runs by its name from any directory", function()
    local rc, out = run({ "--recipes" })
    T.eq(rc, 0, out)
    for _, name in ipairs({ "qlora_llama", "train_tiny", "lora_rank_sweep" }) do T.ok(has(out, name), out) end
    T.ok(has(out, "fine-tune a Llama with QLoRA"), "each with its summary:\n" .. out)
    -- from /tmp: the recipe by name, its built-in example found beside it
    local text, code = T.run(("cd /tmp && %s qlora_llama steps=1 eval_samples=1 tensorboard=false output_dir=%s"):format(
        shell_quote(T.luatrain()), shell_quote(os.tmpname() .. ".d")))
    T.eq(code, 0, text)
    T.ok(has(text, "/recipes/assets/tiny_facts/model on cpu"), text)
    local _, usage = run({ "--help" })
    T.ok(has(usage, "--recipes"), usage)
end)

T.done()
