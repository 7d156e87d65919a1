-- test_config.lua - luatrain.config in process: declaration, key=value parsing, types,
-- suggestions, the guarded result and its helpers. (The command-line side - exit codes,
-- --help - is in test_host.lua, which runs the host.)
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local config = require "luatrain.config"

local function spec()
    return {
        steps = { 300, "number of optimizer steps", type = "int" },
        lr = { 3e-4, "peak learning rate" },
        data = { "", "text file to train on (empty: built-in corpus)" },
        schedule = { "cosine", "learning-rate schedule", choices = { "constant", "linear", "cosine" } },
        compile = { false, "compile the model" },
        batch_size = { 8, "sequences per step", type = "int" },
        weight_decay = { 0, "AdamW weight decay" },
        resume = { nil, "checkpoint to resume from", type = "string" },
    }
end

local function make(args)
    return config(spec(), { args = args or {}, name = "fixture.lua" })
end

-- The usage error raised by fn, checked to be one.
local function usage_error(fn)
    local ok, err = pcall(fn)
    T.ok(not ok, "expected a usage error")
    T.ok(config.is_usage_error(err), "not a usage error: " .. tostring(err))
    T.eq(err.exit_status, 2)
    return tostring(err)
end

T.test("defaults, with no arguments", function()
    local cfg = make()
    T.eq(cfg.steps, 300)
    T.eq(cfg.lr, 3e-4)
    T.eq(cfg.data, "")
    T.eq(cfg.schedule, "cosine")
    T.eq(cfg.compile, false)
    T.eq(cfg.resume, nil)
    T.eq(config.overrides(cfg), {})
end)

T.test("key=value and --key=value override, converted to the declared type", function()
    local cfg = make { "steps=50", "--lr=1e-3", "data=a=b.txt", "schedule=linear", "compile=yes",
        "weight_decay=0.01", "resume=/ckpt/step100" }
    T.eq(cfg.steps, 50)
    T.eq(cfg.lr, 1e-3)
    T.eq(cfg.data, "a=b.txt", "only the first '=' splits")
    T.eq(cfg.schedule, "linear")
    T.eq(cfg.compile, true)
    T.eq(cfg.weight_decay, 0.01, "a whole default does not make an int")
    T.eq(cfg.resume, "/ckpt/step100")
    T.eq(cfg.batch_size, 8)
end)

T.test("booleans: words, bare flags and --no-", function()
    for text, want in pairs({ ["true"] = true, ["1"] = true, YES = true, on = true,
        ["false"] = false, ["0"] = false, no = false, Off = false }) do
        T.eq(make({ "compile=" .. text }).compile, want, text)
    end
    T.eq(make({ "--compile" }).compile, true)
    T.eq(make({ "--compile", "--no-compile" }).compile, false, "the last one wins")
    local msg = usage_error(function() make { "compile=maybe" } end)
    T.ok(msg:find("invalid value 'maybe' for compile", 1, true), msg)
    msg = usage_error(function() make { "--steps" } end)
    T.ok(msg:find("malformed argument '--steps'", 1, true), "a bare flag is for booleans only: " .. msg)
end)

T.test("'-' in keys reads as '_'; the last repeated key wins", function()
    local cfg = make { "batch-size=4", "--batch-size=16", "steps=1", "steps=2" }
    T.eq(cfg.batch_size, 16)
    T.eq(cfg.steps, 2)
end)

T.test("numbers and integers are checked", function()
    local msg = usage_error(function() make { "steps=2.5" } end)
    T.ok(msg:find("invalid value '2.5' for steps (expected an integer)", 1, true), msg)
    msg = usage_error(function() make { "lr=fast" } end)
    T.ok(msg:find("invalid value 'fast' for lr (expected a number)", 1, true), msg)
    usage_error(function() make { "lr=" } end)
    usage_error(function() make { "lr=nan" } end)
    T.eq(make({ "steps=1e3" }).steps, 1000, "a whole number in any notation is an int")
    T.eq(make({ "lr=0x10" }).lr, 16)
    T.eq(make({ "lr=inf" }).lr, math.huge)
    usage_error(function() make { "steps=inf" } end)
    T.eq(make({ "data=" }).data, "", "an empty string is a string")
end)

T.test("choices are enforced, with a suggestion", function()
    local msg = usage_error(function() make { "schedule=cosin" } end)
    T.ok(msg:find("invalid value 'cosin' for schedule (did you mean 'cosine'? one of: constant, linear, cosine)",
        1, true), msg)
    msg = usage_error(function() make { "schedule=zzz" } end)
    T.ok(msg:find("(one of: constant, linear, cosine)", 1, true), msg)
    local cfg = config({ bits = { 4, "quantization bits", type = "int", choices = { 4, 8 } } }, { args = { "bits=8" } })
    T.eq(cfg.bits, 8)
    usage_error(function() config({ bits = { 4, "b", type = "int", choices = { 4, 8 } } }, { args = { "bits=5" } }) end)
end)

T.test("an unknown key names the closest one", function()
    local msg = usage_error(function() make { "stpes=5" } end)
    T.ok(msg:find("unknown setting 'stpes' (did you mean 'steps'?)", 1, true), msg)
    msg = usage_error(function() make { "--batch=4" } end)
    T.ok(msg:find("did you mean 'batch_size'?", 1, true), "a prefix is close: " .. msg)
    msg = usage_error(function() make { "qqqqq=1" } end)
    T.ok(msg:find("unknown setting 'qqqqq' (settings: batch_size, compile, data, lr, resume, schedule, steps, weight_decay)",
        1, true), "nothing close: the settings are listed: " .. msg)
    msg = usage_error(function() make { "steps" } end)
    T.ok(msg:find("malformed argument 'steps' (expected key=value)", 1, true), msg)
end)

T.test("other tools' names are the same settings; --key value is key=value", function()
    local cfg = make({ "learning_rate=0.01", "max_steps=20", "per_device_train_batch_size=4",
        "--resume_from_checkpoint", "runs/x/checkpoint-10" })
    T.eq({ cfg.lr, cfg.steps, cfg.batch_size, cfg.resume }, { 0.01, 20, 4, "runs/x/checkpoint-10" })
    T.eq(make({ "--steps", "7", "--compile" }).steps, 7, "--key value beside a bare boolean flag")
    T.eq(make({ "--lr", "0.5" }).lr, 0.5)
    -- a name whose luatrain setting this recipe does not have says what it is called here
    local err = usage_error(function() make({ "lora_r=16" }) end)
    T.ok(err:find("luatrain calls it 'r', which fixture.lua does not take", 1, true) ~= nil, err)
    -- and the value of an alias is checked as the setting's
    usage_error(function() make({ "max_steps=ten" }) end)
    -- --key with nothing after it is still a malformed argument
    usage_error(function() make({ "--steps" }) end)
end)

T.test("the result guards against typos, reading and writing", function()
    local cfg = make()
    local err = T.raises(function() return cfg.stpes end, "unknown setting 'stpes' (did you mean 'steps'?)", true)
    T.ok(err:find("test_config.lua", 1, true), "the error points at the reading line: " .. err)
    T.raises(function() cfg.lrr = 1 end, "unknown setting 'lrr' (did you mean 'lr'?)", true)
    cfg.steps = 10
    T.eq(cfg.steps, 10)
    cfg.resume = "x"
    cfg.resume = nil
    T.eq(cfg.resume, nil, "a declared setting may be nil")
end)

T.test("values(), overrides(), tostring()", function()
    local cfg = make { "steps=5", "data=my file.txt" }
    local v = config.values(cfg)
    T.eq(getmetatable(v), nil, "a plain table")
    T.eq(v.steps, 5)
    T.eq(v.lr, 3e-4)
    T.eq(v.resume, nil)
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    T.eq(n, 7, "every non-nil setting")
    T.eq(config.overrides(cfg), { steps = 5, data = "my file.txt" })
    local n2 = 0
    for _ in pairs(cfg) do n2 = n2 + 1 end
    T.eq(n2, 7, "pairs() on the config lists its settings")
    T.eq(tostring(cfg), 'batch_size=8 compile=false data="my file.txt" lr=0.0003 schedule=cosine steps=5 weight_decay=0')
    T.raises(function() config.values({}) end, "not a config table", true)
end)

T.test("help() lists name, type, default, doc and choices, aligned", function()
    local text = config.help(config(spec(), { args = {}, name = "fixture.lua", description = "A test recipe." }))
    T.ok(text:find("fixture.lua", 1, true), text)
    T.ok(text:find("A test recipe.", 1, true), text)
    T.ok(text:find("  steps         int      300       number of optimizer steps\n", 1, true), text)
    T.ok(text:find('  schedule      string   "cosine"  learning-rate schedule (one of: constant, linear, cosine)\n',
        1, true), text)
    T.ok(text:find('  resume        string   (none)    checkpoint to resume from\n', 1, true), text)
    T.ok(text:find('  lr            number   0.0003    peak learning rate\n', 1, true), text)
    T.ok(text:find('  compile       boolean  false     compile the model\n', 1, true), text)
end)

T.test("the global arg is read when no args are given", function()
    local saved = rawget(_G, "arg")
    _G.arg = { [0] = "recipes/x.lua", "steps=3", "--compile" }
    local ok, cfg = pcall(config, spec())
    _G.arg = saved
    T.ok(ok, tostring(cfg))
    T.eq(cfg.steps, 3)
    T.eq(cfg.compile, true)
    T.ok(config.help(cfg):find("usage: luatrain recipes/x.lua [key=value ...]", 1, true), config.help(cfg))
end)

T.test("mistakes in the declaration are errors at the declaring line", function()
    local cases = {
        { { a = 1 }, "setting 'a' must be { default" },
        { { a = { 1 } }, "setting 'a' needs a one-line doc string" },
        { { a = { 1, "doc", type = "float" } }, "unknown type 'float'" },
        { { a = { 1.5, "doc", type = "int" } }, "declared int but its default 1.5 is not an integer" },
        { { a = { nil, "doc" } }, "setting 'a' has no default; declare its type" },
        { { a = { {}, "doc" } }, "has a table default" },
        { { a = { "x", "doc", choices = { "y" } } }, "default \"x\" is not one of its choices" },
        { { a = { "x", "doc", choices = "x" } }, "choices must be a non-empty list" },
        { { a = { 1, "doc", choise = { 1 } } }, "unknown field 'choise' (did you mean 'choices'?)" },
        { { ["bad-name"] = { 1, "doc" } }, "setting names must be identifiers" },
    }
    for _, c in ipairs(cases) do
        local err = T.raises(function() config(c[1], { args = {} }) end, c[2], true)
        T.ok(err:find("test_config.lua", 1, true), "points at the declaration: " .. err)
        T.ok(not config.is_usage_error(err), "a recipe mistake is not a usage error")
    end
    T.raises(function() config("steps") end, "expected a table of settings", true)
end)

T.test("ranges: min, max, above, below and nonempty are usage errors naming the setting", function()
    local function mk(args)
        return config({
            batch_size = { 8, "sequences per step", type = "int", min = 1 },
            dropout = { 0.1, "dropout", min = 0, below = 1 },
            lr = { 1e-3, "learning rate", above = 0, max = 10 },
            out = { "runs/x", "output folder", nonempty = true },
        }, { args = args, name = "fixture.lua" })
    end
    T.eq(mk({ "batch_size=1", "dropout=0", "lr=10" }).batch_size, 1)
    T.ok(usage_error(function() mk({ "batch_size=0" }) end):find("batch_size must be at least 1, got 0", 1, true))
    T.ok(usage_error(function() mk({ "dropout=1" }) end):find("dropout must be below 1, got 1", 1, true))
    T.ok(usage_error(function() mk({ "dropout=-0.5" }) end):find("dropout must be at least 0, got -0.5", 1, true))
    T.ok(usage_error(function() mk({ "lr=0" }) end):find("lr must be above 0, got 0", 1, true))
    T.ok(usage_error(function() mk({ "lr=11" }) end):find("lr must be at most 10, got 11", 1, true))
    T.ok(usage_error(function() mk({ "lr=-inf" }) end):find("lr must be above 0", 1, true))
    T.ok(usage_error(function() mk({ "out=" }) end):find("out must not be empty", 1, true))
    local help = config.help(mk({}))
    T.ok(help:find("(at least 1)", 1, true) and help:find("(in [0, 1))", 1, true) and help:find("(in (0, 10])", 1, true)
        and help:find("(not empty)", 1, true), help)
    -- the declaration is checked too: a default outside its range is the author's mistake
    T.raises(function() config({ n = { 0, "n", type = "int", min = 1 } }, { args = {} }) end,
        "its default must be at least 1, got 0", true)
    T.raises(function() config({ s = { "x", "s", min = 1 } }, { args = {} }) end, "min needs a number setting", true)
end)

T.test("distance and closest", function()
    T.eq(config.distance("stpes", "steps"), 1, "a transposition is one edit")
    T.eq(config.distance("", "abc"), 3)
    T.eq(config.distance("kitten", "sitting"), 3)
    T.eq(config.closest("lrr", { "lr", "steps" }), "lr")
    T.eq(config.closest("x", { "y", "z" }), nil, "one letter is never corrected")
    T.eq(config.closest("sched", { "schedule", "steps" }), "schedule")
    T.eq(config.closest("completely_else", { "lr", "steps" }), nil)
end)

T.done()
