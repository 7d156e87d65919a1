--[[
tokenize.lua - tokenize a JSONL dataset once into luatrain's cache (mmapped token file,
train flags and sample index), showing progress.

    luatrain tools/tokenize.lua data=train.jsonl.gz tokenizer=path/to/model out=cache/ \
        template=llama3 max_len=2048

Training with the same cache_dir and settings then opens the cache instead of tokenizing
again (see lua/luatrain/data/tokens.lua for the layout and the freshness rule).
]]
local lt = require "luatrain"

local cfg = lt.config {
    data = { "", "JSONL dataset (.jsonl or .jsonl.gz)" },
    tokenizer = { "", "tokenizer.json, or a folder holding it (and tokenizer_config.json)" },
    out = { "cache", "cache folder (a subfolder per source and settings is made inside)" },
    template = { "none", "chat template", choices = { "none", "llama2", "llama3", "chatml" } },
    train_on = { "completion", "which tokens are trained", choices = { "completion", "all" } },
    max_len = { 2048, "longest sample in tokens (longer ones are cut)", type = "int" },
    format = { "auto", "record shape", choices = { "auto", "alpaca", "messages", "text", "prompt_completion" } },
    skip_bad_lines = { false, "skip (and count) malformed lines instead of stopping" },
}

if cfg.data == "" or cfg.tokenizer == "" then
    io.stderr:write("tokenize: data= and tokenizer= are required (--help lists the settings)\n")
    os.exit(2)
end

local tok = lt.tokenizer.load(cfg.tokenizer)
local bar = lt.log.progress("tokenize " .. cfg.data)
local t0 = lt.fs.now()
local ds, cached = lt.data.load(cfg.data, tok, {
    cache_dir = cfg.out, template = cfg.template, train_on = cfg.train_on, max_len = cfg.max_len,
    format = cfg.format ~= "auto" and cfg.format or nil, skip_bad_lines = cfg.skip_bad_lines,
    progress = function(fraction, samples) bar:update(fraction, ("%d samples"):format(samples)) end,
})
local m = ds.meta
bar:finish(cached and "already cached" or ("%d samples, %d tokens"):format(ds.n, ds.total))
print(("%s: %d samples, %d tokens (longest %d), %s bad lines, %s dropped, %.1f s%s"):format(cfg.data,
    ds.n, ds.total, ds:max_len(), tostring(m.bad_lines or 0), tostring(m.dropped or 0), lt.fs.now() - t0,
    cached and " (from the cache)" or ""))
for _, e in ipairs(m.bad_examples or {}) do print("  bad line: " .. e) end
