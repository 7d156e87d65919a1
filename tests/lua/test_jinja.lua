--[[
test_jinja.lua - luatrain.jinja, the chat-template subset: constructs with hand-worked
outputs, errors that name the template's line, and parity with @huggingface/jinja (the
Jinja of transformers.js, fetched from npm at test time into $LT_BUILD_DIR/jinja_ref) on the
chat templates of Llama 2, Llama 3, Llama 3.1, Mistral, Qwen 2.5 (ChatML), Gemma and Phi-3
(tests/fixtures/chat_templates/), for multi-turn conversations with and without a system
prompt, with and without the generation prompt, tool calls, and conversations the template
refuses (both must refuse). Without node and npm the parity part is skipped.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local jinja = require "luatrain.jinja"
local json = require "luatrain.json"

local function render(src, vars) return jinja.compile(src, "t.jinja"):render(vars) end
local function L(t) return json.array(t) end

T.test("constructs: loops, conditions, set, namespace, filters, tests, whitespace control", function()
    T.eq(render("{% for x in xs %}{{ loop.index }}:{{ x }}{% if not loop.last %},{% endif %}{% endfor %}",
        { xs = L({ "a", "b", "c" }) }), "1:a,2:b,3:c")
    T.eq(render("{%- set ns = namespace(n=0) -%}{% for x in xs %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}",
        { xs = L({ 1, 2, 3 }) }), "6")
    T.eq(render("{% set y = 1 %}{% for x in xs %}{% set y = x %}{% endfor %}{{ y }}", { xs = L({ 5 }) }), "1",
        "a set inside a loop stays in the loop")
    T.eq(render("  {{- ' a ' | trim -}}  !"), "a!")
    T.eq(render("{% if a is defined %}d{% else %}u{% endif %}{{ b is none }}", { b = jinja.none }), "uTrue")
    T.eq(render("{{ 'x' ~ 1 ~ none }}|{{ [1, 2] | length }}|{{ 'ab' * 0 if false else 'no' }}"), "x1None|2|no")
    T.eq(render("{{ {'b': 1, 'a': [true, none]} | tojson }}"), '{"b": 1, "a": [true, null]}')
    T.eq(render("{{ m['content'].strip() }}|{{ 'a,b'.split(',') | join('+') }}|{{ 'Hi'.startswith('H') }}",
        { m = { content = "  x  " } }), "x|a+b|True")
    -- trim_blocks and lstrip_blocks, as transformers renders chat templates
    T.eq(render("a\n  {% if true %}\nb\n  {% endif %}\nc"), "a\nb\nc")
    T.eq(render("{% for x in xs if x > 1 %}{{ x }}{{ loop.length }}{% else %}none{% endfor %}", { xs = L({ 1, 2, 3 }) }),
        "2232")
    T.eq(render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", { d = { b = 2, a = 1 } }), "a=1;b=2;")
    T.eq(render("{{ xs[1:] | join }}{{ xs[-1] }}", { xs = L({ "p", "q", "r" }) }), "qrr")
end)

T.test("errors name the template and line: raise_exception, unclosed tags, unsupported statements", function()
    T.raises(function() render("a\n{{ raise_exception('roles must alternate') }}") end,
        "t.jinja:2: the template raised: roles must alternate", true)
    T.raises(function() render("{% if x %}") end, "missing elif or else or endif", true)
    T.raises(function() render("line1\n{{ x ") end, "t.jinja:2: a {{ tag is not closed", true)
    T.raises(function() render("{% macro m() %}{% endmacro %}") end, "{% macro %} is not supported", true)
    T.raises(function() render("{{ x.y }}") end, "cannot read \"y\" of an undefined value", true)
    T.raises(function() render("{{ x | nofilter }}") end, "the filter \"nofilter\" is not supported", true)
end)

T.test("template=auto: Llama 3's own Jinja template gives the built-in llama3 ids, labels and prompts", function()
    local lt = require "luatrain"
    local tok = lt.tokenizer.load("recipes/assets/tiny_facts/model/tokenizer.json")
    local tmpl = lt.data.templates
    local auto = tmpl.from_jinja(T.slurp("tests/fixtures/chat_templates/llama3.jinja"), tok, "llama3.jinja")
    local a_enc = tmpl.encoder(tok, { template = auto })
    local b_enc = tmpl.encoder(tok, { template = "llama3" })
    local recs = {
        { kind = "chat", messages = { { role = "user", content = "Who is Rinelo?" },
            { role = "assistant", content = " A painter. " } } },
        { kind = "chat", messages = { { role = "system", content = "Be short." }, { role = "user", content = "a" },
            { role = "assistant", content = "b" }, { role = "user", content = "c" }, { role = "assistant", content = "d" } } },
        { kind = "pair", prompt = "2+2?", completion = "4" },
    }
    for i, r in ipairs(recs) do
        local ia, ta = a_enc(r)
        local ib, tb = b_enc(r)
        T.eq(ia, ib, "ids of record " .. i)
        T.eq(ta, tb, "trained tokens of record " .. i)
    end
    local ask = recs[2].messages
    ask = { ask[1], ask[2], ask[3], ask[4] }
    T.eq(tmpl.generation_prompt(auto, ask), tmpl.generation_prompt("llama3", ask))
    T.eq(tmpl.end_of_turn(auto, tok), tmpl.end_of_turn("llama3", tok))
    -- a template whose prompt disagrees with the whole conversation is refused by name
    local odd = tmpl.from_jinja("{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}"
        .. "PROMPT{% endif %}", tok, "odd.jinja")
    T.raises(function() tmpl.encoder(tok, { template = odd })(recs[1]) end,
        "odd.jinja: the template lays out the prompt of message 2 differently", true)
end)

T.test("the QLoRA recipe with template=auto trains as with the built-in template the model's own one matches", function()
    local bin = (os.getenv("LT_BUILD_DIR") or "build") .. "/luatrain"
    local dir = T.run("mktemp -d"):gsub("%s+$", "")
    T.run(("cp recipes/assets/tiny_facts/model/* %s/"):format(dir))
    local cfg = json.read_file(dir .. "/tokenizer_config.json")
    cfg.chat_template = T.slurp("tests/fixtures/chat_templates/llama3.jinja")
    T.write_file(dir .. "/tokenizer_config.json", json.encode(cfg))
    local lines = {}
    for _, t in ipairs({ "auto", "llama3" }) do
        local out, code = T.run(("%s recipes/qlora_llama.lua model=%s template=%s steps=3 eval_samples=4 output_dir=%s/run_%s 2>&1")
            :format(bin, dir, t, dir, t))
        T.ok(code == 0, out)
        lines[t] = out:match("training: [^\n]*")
        T.ok(lines[t], "a training line: " .. out)
    end
    T.eq(lines.auto, lines.llama3, "same losses")
    -- a model folder without a chat_template says so before training
    local bare = dir .. "/bare"
    T.run(("mkdir -p %s && cp recipes/assets/tiny_facts/model/* %s/"):format(bare, bare))
    local out = T.run(("%s recipes/qlora_llama.lua model=%s template=auto steps=1 output_dir=%s/run_bare 2>&1")
        :format(bin, bare, dir))
    T.ok(out:find("has no chat_template", 1, true), out)
    T.run("rm -rf " .. dir)
end)

-- ---- parity with @huggingface/jinja --------------------------------------------------------

local function have(cmd) return select(2, T.run("command -v " .. cmd .. " >/dev/null 2>&1")) == 0 end
local function skip(why)
    print("skipped: " .. why)
    T.done()
    os.exit(0)
end
local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local function exists(p) local f = io.open(p, "rb"); if f then f:close() end; return f ~= nil end

local function npm_reason(text)
    for line in text:gmatch("[^\n]+") do
        local code = line:match("^npm error code (.*)")
        if code then return "npm error " .. code end
    end
    return text:match("[^\n]+") or "no output"
end

local function install(dir)
    local lock = T.slurp("tools/jinja_ref/package-lock.json")
    local mods, stamp = dir .. "/node_modules", dir .. "/node_modules/.luatrain-lock"
    if exists(stamp) and T.slurp(stamp) == lock then return mods end
    T.run("mkdir -p " .. q(dir))
    T.write_file(dir .. "/package.json", T.slurp("tools/jinja_ref/package.json"))
    T.write_file(dir .. "/package-lock.json", lock)
    local npm = ("cd %s && timeout 300 npm ci --no-audit --no-fund --loglevel=error --cache %s --logs-dir %s ")
        :format(q(dir), q(dir .. "/npm-cache"), q(dir .. "/npm-logs"))
    local out, code = T.run(npm .. "--offline")
    if code ~= 0 then out, code = T.run(npm .. "--prefer-offline --fetch-retry-maxtimeout=15000") end
    if code ~= 0 or not exists(mods .. "/@huggingface/jinja/package.json") then
        skip("npm could not install @huggingface/jinja (" .. npm_reason(out) .. ")")
    end
    T.write_file(stamp, lock)
    return mods
end

local TEMPLATES = { "llama2", "llama3", "llama3_1", "mistral", "qwen2_5", "gemma", "phi3" }

local function msg(role, content) return { role = role, content = content } end
local CONVERSATIONS = {
    { msg("user", "Hello there") },
    { msg("user", "What is 2+2?"), msg("assistant", "  4  "), msg("user", "And 3+3?") },
    { msg("system", "You are terse."), msg("user", "Hi"), msg("assistant", "Hello."), msg("user", "Bye") },
    { msg("system", "Be kind.\nAlways."), msg("user", "Quote: \"x\" and {braces}"), msg("assistant", "Ok\n") },
    { msg("user", "a"), msg("user", "b") }, -- not alternating: the strict templates refuse
    { msg("user", "weather?"), { role = "assistant", content = "", tool_calls = { { ["function"] = {
        name = "get_weather", arguments = { city = "Paris", days = 2 } } } } },
        msg("tool", "sunny"), msg("user", "thanks") },
}

T.test("@huggingface/jinja renders the same text, or refuses the same conversations", function()
    if not have("node") or not have("npm") then skip("node and npm are needed (tools/run.sh test installs them)") end
    local build = os.getenv("LT_BUILD_DIR") or "build"
    local mods = install(build .. "/jinja_ref")
    local cases, ours = {}, {}
    for _, name in ipairs(TEMPLATES) do
        local path = "tests/fixtures/chat_templates/" .. name .. ".jinja"
        local src = T.slurp(path)
        local tpl = jinja.compile(src, path)
        for ci, conv in ipairs(CONVERSATIONS) do
            for _, gen in ipairs({ false, true }) do
                local ctx = { messages = conv, add_generation_prompt = gen, bos_token = "<s>", eos_token = "</s>" }
                local text = json.encode(ctx)
                cases[#cases + 1] = { template = src, context = json.decode(text) }
                local ok, out = pcall(tpl.render, tpl, jinja.from_json(json.decode(text)))
                ours[#ours + 1] = { name = name, conv = ci, gen = gen, ok = ok, out = out }
            end
        end
    end
    local work = build .. "/jinja_ref/work"
    T.run("mkdir -p " .. q(work))
    T.write_file(work .. "/cases.json", json.encode(cases))
    local out, code = T.run(("node tools/jinja_ref/ref.mjs --modules %s %s %s 2>&1"):format(q(mods),
        q(work .. "/cases.json"), q(work .. "/out.json")))
    T.ok(code == 0, "ref.mjs: " .. tostring(out))
    local ref = json.decode(T.slurp(work .. "/out.json"), "out.json")
    local rendered, refused = 0, 0
    for i, o in ipairs(ours) do
        local r = ref[i]
        local what = ("%s, conversation %d, add_generation_prompt=%s"):format(o.name, o.conv, tostring(o.gen))
        if r.error then
            T.ok(not o.ok, what .. ": the reference refuses (" .. r.error .. ") but luatrain rendered")
            refused = refused + 1
        else
            T.ok(o.ok, what .. ": luatrain failed: " .. tostring(o.out))
            if o.out ~= r.text then
                error(("%s:\n-- luatrain --\n%s\n-- @huggingface/jinja --\n%s"):format(what, o.out, r.text), 0)
            end
            rendered = rendered + 1
        end
    end
    print(("parity: %d renders identical, %d refused by both, %d templates"):format(rendered, refused, #TEMPLATES))
    T.ok(rendered >= 60 and refused >= 4, "both kinds of case were exercised")
end)

T.done()
