--[[
luatrain - fine-tune Llama-family models from Lua.

    local lt = require "luatrain"
    local x = lt.randn(4, 8)
    print(x:matmul(x:t()):sum():item())

The library is assembled from one module per concern; this file only gathers them.
Modules that need the others are loaded on first use (lt.llama, lt.safetensors, ...), so
`require "luatrain"` stays cheap.
]]
local core = require "luatrain.core"
-- a budget from the environment holds from the first allocation on
if os.getenv("LT_MEMORY_LIMIT") then require "luatrain.memory" end
local tensor = require "luatrain.tensor"
local ew = require "luatrain.ops.elementwise" -- also installs the math methods on tensors
local ops_nn = require "luatrain.ops.nn"

local lt = {
    version = require("ffi").string(core.C.lt_version()),
    Tensor = tensor.Tensor,
    is_tensor = tensor.is_tensor,
    tensor = tensor.tensor,
    empty = tensor.empty,
    zeros = tensor.zeros,
    ones = tensor.ones,
    full = tensor.full,
    randn = tensor.randn,
    rand = tensor.rand,
    randint = tensor.randint,
    arange = tensor.arange,
    manual_seed = tensor.manual_seed,
    get_rng_state = tensor.get_rng_state,
    set_rng_state = tensor.set_rng_state,
    -- t:copy_async_(src) -> ticket; copy_wait(device, ticket, on_host): the copy stream
    copy_wait = tensor.copy_wait,
}

-- Threads for CPU kernels (OpenMP; BLAS runs inside them). 0: one per CPU this process
-- may run on (lt.available_cpus(), which taskset and mpirun's binding narrow); otherwise
-- 1..lt.max_threads(). Anything else is an error naming the value and the range.
function lt.set_num_threads(n)
    if type(n) ~= "number" or n ~= math.floor(n) or n < -2 ^ 31 or n >= 2 ^ 31 then
        error(("threads: %s is not an integer"):format(tostring(n)), 2)
    end
    core.check(core.C.lt_set_num_threads(n))
end
function lt.get_num_threads() return core.C.lt_get_num_threads() end

-- The CPU's matmul precision: "f32" (sgemm) or "bf16" (operands rounded to bf16, f32
-- accumulation, through oneDNN: AVX512-BF16 / AMX). Returns the previous one.
function lt.set_cpu_matmul_precision(p)
    local ids = { f32 = core.C.LT_MATMUL_F32, bf16 = core.C.LT_MATMUL_BF16 }
    if not ids[p] then error(("cpu matmul precision must be \"f32\" or \"bf16\", got %s"):format(tostring(p)), 2) end
    local old = core.C.lt_get_cpu_matmul_precision() == core.C.LT_MATMUL_BF16 and "bf16" or "f32"
    core.check(core.C.lt_set_cpu_matmul_precision(ids[p]))
    return old
end

function lt.get_cpu_matmul_precision()
    return core.C.lt_get_cpu_matmul_precision() == core.C.LT_MATMUL_BF16 and "bf16" or "f32"
end
function lt.available_cpus() return core.C.lt_available_cpus() end
function lt.max_threads() return core.C.lt_max_threads() end

-- lt.ops: every functional kernel (elementwise, reductions, nn ops).
local ops = {}
for k, v in pairs(ew) do ops[k] = v end
for k, v in pairs(ops_nn) do ops[k] = v end
lt.ops = ops

local lazy = {
    nn = "luatrain.nn",
    optim = "luatrain.optim",
    safetensors = "luatrain.safetensors",
    -- Hugging Face model folders (the architecture itself is nn.LlamaForCausalLM)
    llama = "luatrain.pretrained",
    pretrained = "luatrain.pretrained",
    memory = "luatrain.memory",
    -- what a run will hold in memory, before it starts
    plan = "luatrain.plan",
    gguf = "luatrain.gguf",
    qat = "luatrain.qat",
    tensorboard = "luatrain.tensorboard",
    runinfo = "luatrain.runinfo",
    recipes = "luatrain.recipes",
    json = "luatrain.json",
    config = "luatrain.config",
    log = "luatrain.log",
    data = "luatrain.data",
    repl = "luatrain.repl",
    fs = "luatrain.fs",
    tokenizer = "luatrain.tokenizer",
    checkpoint = "luatrain.checkpoint",
    -- LoRA on a model and adapters in PEFT's files (the layer itself is nn.LoRALinear)
    lora = "luatrain.peft",
    peft = "luatrain.peft",
    generate = "luatrain.generate",
    trainer = "luatrain.trainer",
    report = "luatrain.report",
    quant = "luatrain.quant",
    cuda = "luatrain.cuda",
    dist = "luatrain.dist",
    comm = "luatrain.comm",
    amp = "luatrain.amp",
}

setmetatable(lt, {
    -- the lazily loaded modules' names, for completion (repl.lua)
    __lazy = lazy,
    __index = function(t, k)
        local mod = lazy[k]
        if mod == nil then return nil end
        local v = require(mod)
        rawset(t, k, v)
        return v
    end,
})

return lt
