--[[
test_chat.lua - `luatrain chat` driven through a pseudo-terminal as a user would
(tests/lua/pty_drive.py): the default QLoRA recipe trains an adapter on tiny_facts, and the
chat, on a terminal (libedit's prompt and line editing), answers a tiny_facts question with
it correctly, the base alone (/adapter none) does not, /adapter back and /reset work, and
/exit ends it with status 0; the same conversation through a pipe; a missing adapter folder
is an error naming it. Without python3 (its pty module) the terminal part is skipped.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local fs = require "luatrain.fs"

local q = T.shell_quote
local DIR = (os.getenv("TMPDIR") or "/tmp") .. ("/lt_chat_%d_%d"):format(os.time(), math.random(1, 1e6))
local BIN = T.luatrain()

-- the default run: 150 steps on tiny_facts, ~15 s on 2 cores
local out, code = T.run(("%s recipes/qlora_llama.lua output_dir=%s/adapter"):format(q(BIN), q(DIR)))
T.eq(code, 0, out)

local CONVERSATION = table.concat({
    "What pet does Guzuzu have?",
    "/adapter none",
    "What pet does Guzuzu have?",
    "/adapter default",
    "/reset",
    "What is Patove's favorite color?",
    "/exit",
}, "\n") .. "\n"

-- the replies in order, from a transcript
local function replies(text)
    local list = {}
    for r in text:gmatch("bot> ([^\r\n]*)") do list[#list + 1] = r:match("^%s*(.-)%s*$") end
    return list
end

local function check_transcript(text, how)
    local r = replies(text)
    T.eq(#r, 3, how .. ": three replies in:\n" .. text)
    T.eq(r[1], "fox", how .. ": the adapter answers")
    T.ok(r[2] ~= "fox", how .. ": the base alone does not: " .. tostring(r[2]))
    T.eq(r[3], "gray", how .. ": after /adapter default and /reset")
    T.ok(text:find("adapters: default; active: none", 1, true) ~= nil, how .. ": /adapter none")
    T.ok(text:find("(conversation cleared)", 1, true) ~= nil, how .. ": /reset")
end

T.test("on a terminal: the fine-tuned adapter answers a tiny_facts question correctly", function()
    local _, has_python = T.run("command -v python3 > /dev/null")
    if has_python ~= 0 then
        print("  skipped: python3 (its pty module) drives the terminal")
        return
    end
    local input = DIR .. "/input.txt"
    T.write_file(input, CONVERSATION)
    local text, rc = T.run(("python3 tests/lua/pty_drive.py 120 'you> ' -- %s chat adapter=%s threads=2 < %s"):format(
        q(BIN), q(DIR .. "/adapter"), q(input)))
    T.eq(rc, 0, text)
    check_transcript(text, "terminal")
    -- the terminal shows what was typed: libedit echoes the line
    T.ok(text:find("you> What pet does Guzuzu have?", 1, true) ~= nil, "echoed input")
end)

T.test("through a pipe: the same conversation", function()
    local text, rc = T.run(("printf %%s %s | %s chat adapter=%s threads=2"):format(q(CONVERSATION), q(BIN),
        q(DIR .. "/adapter")))
    T.eq(rc, 0, text)
    check_transcript(text, "pipe")
end)

T.test("a missing adapter folder is an error that names it", function()
    local text, rc = T.run(("printf 'hi\\n' | %s chat adapter=%s/nope"):format(q(BIN), q(DIR)))
    T.ok(rc ~= 0, "non-zero exit")
    T.ok(text:find(DIR .. "/nope/adapter_config.json", 1, true) ~= nil, text)
end)

fs.remove_tree(DIR)
T.done()
