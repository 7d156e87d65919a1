-- test_repl.lua - the REPL: sessions driven in process (printing, multi-line input,
-- errors, exit, _, help), completion (M.complete, lazily loaded modules included), value
-- printing, and the host's REPL driven through a pipe (-e with lt, -i after a recipe).
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local repl = require "luatrain.repl"
local tensor = require "luatrain.tensor"
local lt = T.lt

-- A session over a fresh environment that sees the standard globals and lt; out and err
-- collect what it writes.
local function session()
    local env = setmetatable({ lt = lt }, { __index = _G })
    local rec = { out = {}, err = {} }
    rec.s = repl.session {
        env = env,
        out = function(text) rec.out[#rec.out + 1] = text end,
        err = function(text) rec.err[#rec.err + 1] = text end,
    }
    rec.env = env
    function rec.feed(...)
        local more
        for _, line in ipairs({ ... }) do more = rec.s:feed(line) end
        return more
    end
    function rec.take()
        local o, e = table.concat(rec.out), table.concat(rec.err)
        rec.out, rec.err = {}, {}
        return o, e
    end
    return rec
end

T.test("expressions are printed, all their values", function()
    local r = session()
    r.feed("1 + 1")
    T.eq((r.take()), "2\n")
    r.feed('"hi", 3, nil')
    T.eq((r.take()), "hi\t3\tnil\n")
    r.feed("x = 5")
    T.eq((r.take()), "", "a statement prints nothing")
    r.feed("x")
    T.eq((r.take()), "5\n", "globals persist between lines")
    r.feed("= x * 2")
    T.eq((r.take()), "10\n", "the '= expr' shorthand")
    r.feed("return x, 'y'")
    T.eq((r.take()), "5\ty\n", "an explicit return is printed too")
    r.feed("select(2, 'only one')")
    T.eq((r.take()), "", "a call returning nothing prints nothing")
end)

T.test("tables and tensors are pretty-printed", function()
    local r = session()
    r.feed("{1, 2, a = 'b', [10] = true}")
    T.eq((r.take()), '{1, 2, [10] = true, a = "b"}\n', "sequence, then other keys sorted")
    r.feed("lt.ones(2, 3)")
    T.eq((r.take()), tostring(lt.ones(2, 3)) .. "\n", "a tensor result prints as tostring does")
    r.feed("{w = lt.zeros(4, 2)}")
    T.eq((r.take()), "{w = <f32 tensor (4, 2)>}\n", "tensors inside tables are summarised")
    r.feed("t = lt.randn(50, 60)")
    r.feed("t")
    local out = r.take()
    T.ok(out:find("...", 1, true) and out:find("shape (50, 60)", 1, true), "a large tensor is summarised: " .. out)
    T.ok(#out < 2000, "summarised output is short")
    local cyc = {}
    cyc.self = cyc
    T.eq(repl.repr(cyc), "{self = <cycle>}")
    local big = {}
    for i = 1, 300 do big["k" .. i] = i end
    local text = repl.repr(big)
    T.ok(text:find("... (100 more)", 1, true), "long tables are cut")
    T.eq(repl.repr({ nested = { deeper = { deepest = { 1 } } } }), "{nested = {deeper = {deepest = {...}}}}")
    T.eq(repl.repr(setmetatable({}, { __tostring = function() return "custom" end })), "custom")
end)

T.test("multi-line input continues until the chunk is complete", function()
    local r = session()
    T.eq(r.feed("function sq(x)"), true, "wants more")
    T.eq(r.feed("  return x * x"), true)
    T.eq(r.feed("end"), false, "complete")
    r.feed("sq(12)")
    T.eq((r.take()), "144\n")
    T.eq(r.feed("t = {"), true)
    T.eq(r.feed("  1, 2,"), true)
    T.eq(r.feed("}"), false)
    r.feed("#t")
    T.eq((r.take()), "2\n")
    T.eq(r.feed("s = [["), true, "an open long string continues")
    r.feed("two lines]]")
    r.feed("s")
    T.eq((r.take()), "two lines\n")
end)

T.test("errors are reported and the session goes on", function()
    local r = session()
    r.feed("error('boom')")
    local out, err = r.take()
    T.eq(out, "")
    T.eq(err, "stdin:1: boom\n", "an error on the typed line: its message alone")
    r.feed("function f() local y; return y.z end")
    r.feed("f()")
    out, err = r.take()
    T.eq(out, "")
    T.ok(err:find("stdin:1: attempt to index local 'y' (a nil value)", 1, true), err)
    T.ok(err:find("stack traceback:\n\tstdin:1: in function 'f'\n\tstdin:1: in main chunk", 1, true), err)
    T.ok(not err:find("repl.lua", 1, true), "no REPL frames in the traceback: " .. err)
    r.feed("1 +")
    r.feed("= = 2")
    out, err = r.take()
    T.eq(out, "")
    T.ok(err:find("unexpected symbol", 1, true), "a syntax error is reported: " .. err)
    r.feed("lt.zeros(2, 2):view(3)")
    out, err = r.take()
    T.eq(out, "")
    T.ok(err:find("new shape has 3", 1, true), "library errors carry their message: " .. err)
    r.feed("error(setmetatable({}, {__tostring = function() return 'user error' end}))")
    out, err = r.take()
    T.eq(out, "")
    T.eq(err, "user error\n")
    r.feed("40 + 2")
    T.eq((r.take()), "42\n", "still alive")
end)

T.test("an incomplete chunk at end of input is reported", function()
    local r = session()
    r.feed("for i = 1, 3 do")
    r.s:finish()
    local _, err = r.take()
    T.ok(err:find("'end' expected", 1, true), err)
end)

T.test("exit() ends the session with a status", function()
    local r = session()
    r.feed("exit(3)")
    T.eq(r.s.exit_code, 3)
    local r2 = session()
    r2.feed("pcall(exit)")
    T.eq(r2.s.exit_code, 0, "even when caught")
    local r3 = session()
    r3.feed("exit(false)")
    T.eq(r3.s.exit_code, 1)
    local _, err = r3.take()
    T.eq(err, "", "exit is not an error")
end)

T.test("complete: globals and keywords", function()
    local env = { print = print, printf = 1, pairs = pairs, _hidden = 1 }
    T.eq(repl.complete("pri", env), { "print", "printf" })
    T.eq(repl.complete("x = pa", env), { "pairs" }, "the word at the end of the line")
    T.eq(repl.complete("fun", env), { "function" })
    T.eq(repl.complete("_h", env), { "_hidden" }, "private names when asked for")
    T.eq(repl.complete("", env), {})
    T.eq(repl.complete("1.5", env), {}, "numbers are not completed")
    local inherit = setmetatable({}, { __index = { tostring = tostring } })
    T.eq(repl.complete("tostr", inherit), { "tostring" }, "globals through an __index table")
end)

T.test("complete: nested fields", function()
    local env = { lt = { zeros = 1, zero_ = 2, ones = 3, nn = { Linear = 1, LayerNorm = 2, ReLU = 3 } } }
    T.eq(repl.complete("lt.ze", env), { "lt.zero_", "lt.zeros" })
    T.eq(repl.complete("lt.nn.L", env), { "lt.nn.LayerNorm", "lt.nn.Linear" })
    T.eq(repl.complete("lt.nn.Li", env), { "lt.nn.Linear" })
    T.eq(repl.complete("print(lt.on", env), { "lt.ones" })
    T.eq(#repl.complete("lt.", env), 4, "all fields after a dot")
    T.eq(repl.complete("lt.nope.x", env), {})
    T.eq(repl.complete("lt..x", env), {})
    T.eq(repl.complete("lt.ze", { lt = lt }), { "lt.zeros" }, "the real library")
    T.eq(repl.complete("string.up"), { "string.upper" }, "env defaults to _G")
end)

T.test("complete: methods of tensors, strings and objects", function()
    local env = { t = lt.zeros(2), s = "text" }
    local shapes = repl.complete("t:sh", env)
    T.eq(shapes[1], "t:shape")
    for _, c in ipairs(repl.complete("t:", env)) do
        T.ok(tensor.methods[c:sub(3)] ~= nil, "only tensor methods after ':' " .. c)
    end
    T.ok(#repl.complete("t:", env) >= 20, "every method")
    local dot = repl.complete("t.dt", env)
    T.eq(dot, { "t.dtype" }, "properties after '.'")
    T.eq(repl.complete("s:up", env), { "s:upper" })
    local Class = { forward = function() end, backward = function() end, name = "not a method" }
    Class.__index = Class
    env.m = setmetatable({ weight = 1 }, Class)
    T.eq(repl.complete("m:", env), { "m:backward", "m:forward" }, "methods through the class")
    T.eq(repl.complete("m.w", env), { "m.weight" })
end)

T.test("complete runs no code", function()
    local called = false
    local env = { lazy = setmetatable({}, { __index = function() called = true end }) }
    T.eq(repl.complete("lazy.x", env), {})
    T.eq(repl.complete("lazy.x.y", env), {})
    T.ok(not called, "an __index function is not called")
end)

T.test("complete: lt's modules loaded on first use, and inside them", function()
    local env = { lt = lt }
    T.eq(repl.complete("lt.ll", env), { "lt.llama" })
    local got = repl.complete("lt.lora.set_ad", env)
    T.eq(got, { "lt.lora.set_adapter" })
end)

T.test("_ is the last result; help() shows a function's, a module's and a setting's doc", function()
    local r = session()
    r.feed("6 * 7")
    r.take()
    r.feed("_ + 1")
    T.eq(r.take(), "43\n")
    r.feed("help(lt.lora.set_adapter)")
    local out = r.take()
    T.ok(out:find("Make adapter `name` the active one", 1, true) and out:find("peft.lua:%d+"), out)
    r.feed("help(lt.gguf)")
    out = r.take()
    T.ok(out:find("gguf.lua - GGUF files", 1, true) ~= nil, out)
    r.feed("help('lr')")
    T.ok(r.take():find("no setting \"lr\"", 1, true) ~= nil, "no recipe config: says so")
    -- with a recipe's config in the session
    r.env.config = lt.config({ lr = { 3e-4, "peak learning rate" } }, { args = { "lr=0.01" }, name = "x.lua" })
    r.feed("help('learning_rate')")
    T.eq(r.take(), "lr (number, default 0.0003, now 0.01): peak learning rate\n")
end)

T.test("the readline adapter cuts candidates to libedit's word", function()
    local c = repl.readline_completer({ lt = { zeros = 1 } })
    T.eq(c("lt.ze", "x = lt.ze"), { "lt.zeros" })
    T.eq(c("ze", "x = lt.ze"), { "zeros" }, "a shorter word: only its part is replaced")
    T.eq(c("zz", "x = lt.ze"), {})
end)

-- ---- the host's REPL through a pipe -------------------------------------------------

local run = T.host

T.test("pipe: expressions, tensors, multi-line functions, errors, exit", function()
    local rc, out, err = run({}, table.concat({
        "1 + 2",
        "'a string'",
        "lt.ones(2)",
        "function twice(x)",
        "  return 2 * x",
        "end",
        "twice(21)",
        "nil + 1",
        "'after the error'",
        "exit(4)",
        "'not reached'",
    }, "\n") .. "\n")
    T.eq(rc, 4, "exit(4)")
    T.eq(out, "3\na string\n" .. tostring(lt.ones(2)) .. "\n42\nafter the error\n")
    T.ok(err:find("stdin:1: attempt to perform arithmetic on a nil value", 1, true), err)
    T.ok(not out:find("> ", 1, true), "no prompts over a pipe")
end)

T.test("pipe: end of input and os.exit end the REPL", function()
    local rc, out = run({}, "x = 6\nx * 7\n")
    T.eq(rc, 0)
    T.eq(out, "42\n")
    rc = run({}, "os.exit(9)\n")
    T.eq(rc, 9)
    rc, out = run({}, "print('no newline at the end')")
    T.eq(rc, 0)
    T.eq(out, "no newline at the end\n")
end)

T.test("pipe: -i keeps the recipe's globals", function()
    local rc, out = run({ "-i", "tests/fixtures/recipes/train_config.lua", "steps=7" },
        "steps_seen\nsettings.steps + 1\nseed_tensor:sum():item()\n")
    T.eq(rc, 0)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    T.eq(lines[#lines - 2], "7")
    T.eq(lines[#lines - 1], "8")
    T.eq(lines[#lines], "4")
end)

T.test("pipe: -e finds lt; -i after the QLoRA recipe has its model, config and results", function()
    local rc, out = run({ "-e", "print(lt.version)" }, "")
    T.eq(rc, 0)
    T.ok(out:find(lt.version, 1, true) ~= nil, out)
    local dir = os.tmpname()
    os.remove(dir)
    rc, out = run({ "-i", "recipes/qlora_llama.lua", "steps=2", "eval_samples=2", "tensorboard=false",
        "output_dir=" .. dir }, "print(config.steps, result.steps, type(model), type(tokenizer))\nhelp('max_steps')\n")
    T.eq(rc, 0, out)
    T.ok(out:find("the recipe's config, eval_data, model, questions, result, tokenizer, train_data are defined", 1, true)
        ~= nil, out)
    T.ok(out:find("2\t2\ttable\ttable", 1, true) ~= nil, out)
    T.ok(out:find("steps (int, default 150, now 2):", 1, true) ~= nil, out)
    os.execute("rm -rf " .. dir)
end)

T.done()
