--[[
tools/gpu/interop.lua - luatrain's half of the interop check (tools/gpu/interop.py drives it
with transformers and PEFT on the other side).

    luatrain tools/gpu/interop.lua model=DIR ids=IDS.safetensors out=LOGITS.safetensors
        [adapter=PEFT_DIR] [make_adapter=DIR r=8 alpha=16 seed=1] [device=cpu|cuda]

Loads the Hugging Face folder `model`; with `adapter`, loads a PEFT adapter onto it; with
`make_adapter`, puts LoRA on every linear layer, fills both A and B with random values (a
fresh adapter has B = 0 and would leave the logits unchanged, proving nothing), and saves it
in PEFT's layout there. Then writes the f32 logits (B, T, V) of the ids tensor `input_ids`
(B, T) to `out` as the tensor "logits".
]]
local lt = require "luatrain"

local cfg = lt.config {
    model = { "", "Hugging Face Llama folder" },
    ids = { "", "safetensors file holding input_ids (B, T), i64" },
    out = { "", "where the logits go (safetensors, tensor \"logits\")" },
    adapter = { "", "a PEFT adapter folder to load onto the model (empty: none)" },
    make_adapter = { "", "put random LoRA adapters on every linear layer and save them here (empty: no)" },
    r = { 8, "rank of the adapters make_adapter makes", type = "int" },
    alpha = { 16, "lora_alpha of the adapters make_adapter makes" },
    seed = { 1, "seed of make_adapter's random values", type = "int" },
    std = { 0.1, "standard deviation of make_adapter's random values" },
    device = { "cpu", "where to run", choices = { "cpu", "cuda" } },
}
for _, key in ipairs({ "model", "ids", "out" }) do
    if cfg[key] == "" then error(("interop: %s= is required"):format(key), 0) end
end
if cfg.adapter ~= "" and cfg.make_adapter ~= "" then
    error("interop: give adapter= or make_adapter=, not both", 0)
end

local model = lt.llama.from_pretrained(cfg.model)
if cfg.adapter ~= "" then
    lt.lora.load(model, cfg.adapter)
elseif cfg.make_adapter ~= "" then
    lt.lora.apply(model, { r = cfg.r, alpha = cfg.alpha, target = "all-linear" })
    lt.manual_seed(cfg.seed)
    local names = {}
    for name in pairs(lt.lora.adapter_state(model)) do names[#names + 1] = name end
    table.sort(names) -- one order, so the seed gives the same adapter every time
    local state = lt.lora.adapter_state(model)
    for _, name in ipairs(names) do state[name]:normal_(0, cfg.std) end
    lt.lora.save(model, cfg.make_adapter, { base_model_name_or_path = cfg.model })
end
model:eval()
if cfg.device ~= "cpu" then model:to(cfg.device) end

local ids = lt.safetensors.load(cfg.ids).input_ids
if not ids then error(cfg.ids .. ": no tensor input_ids", 0) end
local logits = model:forward(cfg.device ~= "cpu" and ids:to(cfg.device) or ids)
logits = logits:to("f32")
if cfg.device ~= "cpu" then logits = logits:cpu() end
lt.safetensors.save(cfg.out, { logits = logits:contiguous() })
print(("interop: logits (%s) of %s%s -> %s"):format(table.concat(logits:shape(), ", "), cfg.model,
    cfg.adapter ~= "" and (" + " .. cfg.adapter) or (cfg.make_adapter ~= "" and (" + new " .. cfg.make_adapter) or ""),
    cfg.out))
