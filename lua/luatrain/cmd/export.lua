--[[
cmd/export.lua - `luatrain export model=FOLDER [adapter=FOLDER] format=adapter|merged|gguf
[quant=...] output=PATH [key=value ...]` (also format=adapter-gguf): write a trained model as something people run and
check it against the trained one before putting it in place (lua/luatrain/export.lua says
what each format holds and how it is checked). Prints the summary; the report goes to
export_report.json (inside a folder, beside a file). Exits non-zero, leaving nothing that
looks complete, when the export does not behave like the trained model.
]]
local lt = require "luatrain"
local export = require "luatrain.export"

-- the recipes' built-in example (lt.recipes: beside lua/, or share/luatrain/recipes)
local ASSETS = lt.recipes.dir() .. "/assets/tiny_facts"
local cfg = lt.config {
    model = { ASSETS .. "/model", "the base model's Hugging Face folder (config.json, safetensors, tokenizer.json)",
        nonempty = true },
    adapter = { "", "the trained adapter (a PEFT folder, as the recipes write); empty: the base alone" },
    format = { "gguf", "what to write: adapter (PEFT), merged (a Hugging Face folder), gguf (llama.cpp; without "
        .. "adapter= the base) or adapter-gguf (llama.cpp's LoRA adapter file)",
        choices = { "adapter", "merged", "gguf", "adapter-gguf" } },
    quant = { "", "precision of what is written: merged f32/f16/bf16 (bf16 by default); gguf f32, f16, bf16, q8_0 "
        .. "(the default), q4_0, q4_k, q6_k; adapter-gguf f32 (the default) or f16" },
    output = { "", "a folder (adapter, merged) or a file (gguf); required" },
    base_quant = { "nf4", "how the base was quantized in training (the recipe's quant): the model checked against",
        choices = { "nf4", "fp4", "int8", "none" } },
    prompts = { ASSETS .. "/eval.jsonl", "held-out questions (JSONL) the export is checked on" },
    template = { "llama3", "the chat template the prompts are written in" },
    n_prompts = { 8, "questions checked", type = "int", min = 1 },
    n_predict = { 16, "greedy tokens compared per question", type = "int", min = 1 },
    max_kl = { 0, "fail above this mean KL per position (0: the default for the quant)", min = 0 },
    min_agreement = { -1, "fail below this share of agreeing greedy tokens (-1: the default for the quant)", max = 1 },
    max_logit_delta = { 0, "fail above this largest |logit difference| (0: report it only)", min = 0 },
    verify = { true, "check the export against the trained model before putting it in place" },
    threads = { 0, "CPU threads (0: all)", type = "int", min = 0 },
}
if cfg.output == "" then
    error(lt.config.usage_error("export: give output= (a folder for adapter and merged, a file for gguf)"), 0)
end
if cfg.threads > 0 then lt.set_num_threads(cfg.threads) end
local report = export.run {
    model = cfg.model, adapter = cfg.adapter, format = cfg.format, quant = cfg.quant ~= "" and cfg.quant or nil,
    output = cfg.output, base_quant = cfg.base_quant, prompts = cfg.prompts, template = cfg.template,
    n_prompts = cfg.n_prompts, n_predict = cfg.n_predict, max_kl = cfg.max_kl > 0 and cfg.max_kl or nil,
    min_agreement = cfg.min_agreement >= 0 and cfg.min_agreement or nil,
    max_logit_delta = cfg.max_logit_delta > 0 and cfg.max_logit_delta or nil, verify = cfg.verify, say = print,
}
print(export.summary(report))
