--[[
ptq_report.lua - post-training quantization of a trained model: its adapter merged into the
base (as trained, NF4 by default, dequantized), then the decoder's linear layers quantized
to int8 (LLM.int8, outlier columns in f32), NF4 and int4 (llama.cpp's Q4_0) in turn, each
with the bytes of those weights and the held-out loss against bf16 weights (lt.qat.ptq_report).

    luatrain tools/ptq_report.lua [adapter=runs/qlora] [model=...] [dataset=eval.jsonl]

Prints the table and the machine.
]]
package.path = "tools/bench/?.lua;" .. package.path
local lt = require "luatrain"
local ASSETS = "recipes/assets/tiny_facts"
local cfg = lt.config {
    model = { ASSETS .. "/model", "the base model's Hugging Face folder", nonempty = true },
    adapter = { "", "the trained adapter (PEFT folder); empty: the base alone" },
    base_quant = { "nf4", "the base's quantization in training", choices = { "nf4", "fp4", "int8", "none" } },
    dataset = { ASSETS .. "/eval.jsonl", "held-out data (JSONL)", nonempty = true },
    template = { "llama3", "chat template of the data" },
    seq_len = { 128, "tokens a row", type = "int", min = 8 },
}
local fs = require "luatrain.fs"
local ex = require "luatrain.export"
local trained = ex.trained_model({ model = cfg.model, adapter = cfg.adapter, base_quant = cfg.base_quant })
-- the merged weights, as f32 layers the report can quantize
local tmp = fs.make_temp_dir((os.getenv("TMPDIR") or "/tmp") .. "/lt_ptq")
lt.lora.export_merged(trained, tmp, { dtype = "f32" })
for _, f in ipairs({ "tokenizer.json", "tokenizer_config.json" }) do
    local src = io.open(cfg.model .. "/" .. f, "rb")
    if src then
        fs.write_atomic(tmp .. "/" .. f, src:read("*a"))
        src:close()
    end
end
local model = lt.llama.from_pretrained(tmp)
local tok = lt.tokenizer.load(tmp)
local ds = lt.data.build(cfg.dataset, tok, { template = cfg.template, train_on = "completion", max_len = cfg.seq_len })
local rows = lt.qat.ptq_report(model, ds, { batch_size = 8, seq_len = cfg.seq_len })
fs.remove_tree(tmp)
print(("# PTQ of %s%s on %s; machine: %s"):format(cfg.model, cfg.adapter ~= "" and (" + " .. cfg.adapter) or "",
    cfg.dataset, require("benchutil").cpu_description()))
print(("%-6s %12s %10s %9s"):format("type", "bytes", "loss", "gap"))
for _, r in ipairs(rows) do print(("%-6s %12d %10.4f %+9.4f"):format(r.type, r.bytes, r.loss, r.gap)) end
