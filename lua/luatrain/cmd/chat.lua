--[[
cmd/chat.lua - `luatrain chat [model=FOLDER] [adapter=PATH | adapter=name=PATH,name=PATH]
[key=value ...]`: talk to a model in the terminal. Each line you type is a user turn; the
reply streams as it is generated, in the model's chat template, and ends at the template's
end-of-turn token, the tokenizer's EOS, a stop string or max_new_tokens. The conversation
is kept (oldest turns dropped when it outgrows the context) until /reset.

Commands: /reset (forget the conversation), /adapter (list the loaded adapters),
/adapter NAME (switch; none: the base alone), /adapter PATH (load a PEFT folder beside the
others, named after its folder, and switch to it), /help, /exit (or Ctrl-D).
On a terminal the line has editing and history (libedit); piped input is read line by line.
]]
local lt = require "luatrain"
local templates = require "luatrain.data.templates"

-- the recipes' built-in example (lt.recipes: beside lua/, or share/luatrain/recipes)
local ASSETS = lt.recipes.dir() .. "/assets/tiny_facts"
local cfg = lt.config {
    model = { ASSETS .. "/model", "the base model's Hugging Face folder", nonempty = true },
    adapter = { "", "adapters: a PEFT folder, or name=folder,name=folder (the first is active)" },
    base_quant = { "nf4", "how the base is quantized (as in training)", choices = { "nf4", "fp4", "int8", "none" } },
    template = { "llama3", "chat template", choices = { "llama3", "llama2", "chatml", "none" } },
    system = { "", "a system message to start every conversation with" },
    temperature = { 0.0, "sampling temperature (0: greedy)", min = 0 },
    top_p = { 1.0, "nucleus sampling (1: off)", above = 0, max = 1 },
    top_k = { 0, "top-k sampling (0: off)", type = "int", min = 0 },
    max_new_tokens = { 128, "longest reply, in tokens", type = "int", min = 1 },
    stop = { "", "stop strings, separated by |" },
    seed = { 0, "sampling seed", type = "int" },
    threads = { 0, "CPU threads (0: all)", type = "int", min = 0 },
}
if cfg.threads > 0 then lt.set_num_threads(cfg.threads) end

local out = io.stdout
local function say(s) out:write(s) out:flush() end

local q = cfg.base_quant ~= "none" and { type = cfg.base_quant, blocksize = 64, double_quant = cfg.base_quant ~= "int8" }
    or nil
local model = lt.llama.from_pretrained(cfg.model, { quant = q, dtype = q and "bf16" or nil })
local tok = lt.tokenizer.load(cfg.model)
model:eval()

-- adapters: "folder" or "name=folder,name=folder". The first one loaded is "default" to the
-- model; the name given to it is kept here.
local aliases = {}
local function load_adapter(name, path)
    if #lt.lora.layers(model) == 0 then
        lt.lora.load(model, path)
        aliases[name] = "default"
    else
        lt.lora.load(model, path, { name = name })
        lt.lora.set_adapter(model, name)
    end
end
local function alias(name) return aliases[name] or name end
if cfg.adapter ~= "" then
    for item in cfg.adapter:gmatch("[^,]+") do
        local name, path = item:match("^([%w_%-%.]+)=(.+)$")
        if not name then name, path = "default", item end
        load_adapter(name, path)
    end
    local first = cfg.adapter:match("^([%w_%-%.]+)=") or "default"
    lt.lora.set_adapter(model, alias(first))
end

local stops = {}
for s in cfg.stop:gmatch("[^|]+") do stops[#stops + 1] = s end
local eot = templates.end_of_turn(cfg.template, tok)
local stop_ids = {}
if eot then stop_ids[#stop_ids + 1] = eot end
if tok.eos_id then stop_ids[#stop_ids + 1] = tok.eos_id end

local messages = {}
local function reset()
    messages = {}
    if cfg.system ~= "" then messages[1] = { role = "system", content = cfg.system } end
end
reset()

local function adapters_line()
    local names = lt.lora.adapter_names(model)
    if #names == 0 then return "no adapters (the base alone)" end
    local active = lt.lora.layers(model)[1][2].disabled and "none" or names[1]
    return ("adapters: %s; active: %s"):format(table.concat(names, ", "), active)
end

-- The prompt of the conversation so far, the oldest turns dropped until it leaves room for
-- a reply.
local function prompt_ids()
    local limit = model.config.max_position_embeddings - cfg.max_new_tokens
    while true do
        local ids = tok:encode(templates.generation_prompt(cfg.template, messages), { add_special_tokens = false })
        local first = (messages[1] and messages[1].role == "system") and 2 or 1
        if #ids <= limit or #messages - first < 2 then return ids end
        table.remove(messages, first)
        table.remove(messages, first)
    end
end

local function command(line)
    local cmd, arg = line:match("^/(%S+)%s*(.-)%s*$")
    if cmd == "exit" or cmd == "quit" then return false end
    if cmd == "reset" then
        reset()
        say("(conversation cleared)\n")
    elseif cmd == "adapter" then
        if arg == "" then
            say(adapters_line() .. "\n")
        elseif arg == "none" or lt.lora.layers(model)[1] and (function()
            for _, n in ipairs(lt.lora.adapter_names(model)) do if n == alias(arg) then return true end end
            return false
        end)() then
            lt.lora.set_adapter(model, alias(arg))
            say(adapters_line() .. "\n")
        elseif require("luatrain.fs").is_dir(arg) then
            local name = arg:gsub("/+$", ""):match("([^/]+)$")
            local ok, err = pcall(load_adapter, name, arg)
            if ok then
                if #lt.lora.adapter_names(model) == 1 then lt.lora.set_adapter(model, "default") end
                say(adapters_line() .. "\n")
            else
                say("error: " .. tostring(err) .. "\n")
            end
        else
            say(("error: no adapter or folder %q (%s)\n"):format(arg, adapters_line()))
        end
    elseif cmd == "help" then
        say("/reset  /adapter [NAME|none|PATH]  /exit\n")
    else
        say(("error: unknown command /%s (/help lists them)\n"):format(tostring(cmd)))
    end
    return true
end

-- the host's libedit line editing (absent under a plain luajit)
local has_host, host = pcall(require, "luatrain.host")
if not has_host then host = nil end
local tty = host ~= nil and host.isatty(0)
local read
if tty then
    read = function()
        local line = host.readline("you> ")
        while line == false do line = host.readline("you> ") end -- Ctrl-C drops the line
        if line and line:find("%S") then host.add_history(line) end
        return line
    end
else
    read = function()
        say("you> ")
        return io.read("*l")
    end
end

say(("chat with %s%s, template %s; /help for commands, Ctrl-D to leave\n"):format(cfg.model,
    cfg.adapter ~= "" and (" + " .. cfg.adapter) or "", cfg.template))
while true do
    local line = read()
    if not line then say("\n") break end
    if line:match("^%s*/") then
        if not command(line:match("^%s*(.-)$")) then break end
    elseif line:find("%S") then
        messages[#messages + 1] = { role = "user", content = line }
        say("bot> ")
        local text = lt.generate(model, tok, prompt_ids(), { max_new_tokens = cfg.max_new_tokens,
            temperature = cfg.temperature, top_p = cfg.top_p, top_k = cfg.top_k, seed = cfg.seed,
            stop_ids = stop_ids, stop_strings = stops, on_text = say })
        say("\n")
        messages[#messages + 1] = { role = "assistant", content = text }
    end
end
