--[[
amp.lua - mixed precision: the precision policy (ARCHITECTURE.md contract 7) and the dynamic
loss scaler that fp16 training needs.

    local pol = lt.amp.policy("bf16", "cuda")   -- or "f32", "fp16", "auto"; device "cpu" too
    lt.amp.apply(model, pol)                    -- the model computes as the policy says
    lt.trainer.finetune{ model = model, loss_scale = pol.loss_scale, ... }

The policy is one table that says, for one device, what each kind of tensor is stored,
computed and accumulated in:
    master, grads, optimizer   f32 always (trainable parameters, their gradients, AdamW)
    frozen                     the dtype unquantized frozen weights are loaded in: bf16 on a
                               GPU under bf16/fp16, else f32 (a quantized base keeps its codes
                               and loads its other weights in bf16)
    compute                    activations and their gradients: f32, bf16 or f16
    matmul                     the product's operand precision: the compute dtype on CUDA; on
                               the CPU "bf16" under precision=bf16 (oneDNN, f32 activations)
    accumulate, reduce         f32: products accumulate in f32; norms, softmax and losses
                               reduce in f32 (the kernels' rule, whatever the dtype)
    loss_scale                 "dynamic" for fp16 (lt.amp.GradScaler), nil otherwise
    tf32                       f32 products may use TF32 tensor cores (CUDA; on unless told,
                               the backend's default; the op tests turn it off)
    deterministic              attention's backward in a fixed order (CUDA; off by default)
apply(model, pol) sets the model's compute dtype, the CPU's matmul precision when the model is
on the CPU, and TF32 and deterministic attention when it is on a GPU.

    local scaler = lt.amp.GradScaler()          -- PyTorch's defaults
    -- lt.trainer does the rest with loss_scale = "dynamic" (or a scaler of its own):
    --   the backward runs on loss x scale, so small fp16 gradients do not flush to zero;
    --   the update unscales (1 / scale folded into the optimizer, no extra pass);
    --   a step whose gradients hold an inf or a NaN is skipped and the scale halves;
    --   after growth_interval clean steps in a row the scale doubles.
    scaler.scale, scaler.skipped        -- the current scale; steps skipped so far
    scaler:state_dict() / load_state_dict(sd)    -- in run checkpoints: resume is exact

The semantics are torch.cuda.amp.GradScaler's: init_scale 2^16, growth_factor 2,
backoff_factor 0.5, growth_interval 2000; a skipped step resets the run of clean steps. The
scale is a power of two (the factors are), so scaling and unscaling are exact: an f32 run
with a scaler and no overflow is bit-identical to one without.
]]
local M = {}

local GradScaler = {}
GradScaler.__index = GradScaler

local function positive(name, v)
    if type(v) ~= "number" or not (v > 0) or v == math.huge then
        error(("GradScaler: %s must be a positive finite number, got %s"):format(name, tostring(v)), 3)
    end
    return v
end

-- opts: init_scale (65536), growth_factor (2), backoff_factor (0.5), growth_interval (2000),
-- dynamic (true; false keeps init_scale forever and only skips overflowing steps).
function M.GradScaler(opts)
    opts = opts or {}
    local self = setmetatable({
        scale = positive("init_scale", opts.init_scale or 65536),
        growth_factor = positive("growth_factor", opts.growth_factor or 2),
        backoff_factor = positive("backoff_factor", opts.backoff_factor or 0.5),
        growth_interval = opts.growth_interval or 2000,
        dynamic = opts.dynamic ~= false,
        growth_tracker = 0, -- clean steps since the scale last changed
        skipped = 0,        -- steps skipped for an inf or NaN gradient
    }, GradScaler)
    if self.growth_factor <= 1 then error("GradScaler: growth_factor must be above 1", 2) end
    if self.backoff_factor >= 1 then error("GradScaler: backoff_factor must be below 1", 2) end
    local gi = self.growth_interval
    if type(gi) ~= "number" or gi < 1 or gi ~= math.floor(gi) then
        error(("GradScaler: growth_interval must be a positive integer, got %s"):format(tostring(gi)), 2)
    end
    return self
end

M.is_scaler = function(x) return getmetatable(x) == GradScaler end

-- After a step's gradients were checked: found_inf says whether any was inf or NaN (the
-- step is then skipped by the caller). Returns the scale the next step uses.
function GradScaler:update(found_inf)
    if found_inf then
        self.skipped = self.skipped + 1
        self.growth_tracker = 0
        if self.dynamic then self.scale = self.scale * self.backoff_factor end
    else
        self.growth_tracker = self.growth_tracker + 1
        if self.dynamic and self.growth_tracker >= self.growth_interval then
            self.scale = self.scale * self.growth_factor
            self.growth_tracker = 0
        end
    end
    return self.scale
end

function GradScaler:state_dict()
    return { scale = self.scale, growth_tracker = self.growth_tracker, skipped = self.skipped,
        growth_factor = self.growth_factor, backoff_factor = self.backoff_factor,
        growth_interval = self.growth_interval, dynamic = self.dynamic }
end

function GradScaler:load_state_dict(sd)
    if type(sd) ~= "table" or type(sd.scale) ~= "number" or not (sd.scale > 0) then
        error("GradScaler: the saved state has no valid scale", 2)
    end
    self.scale = sd.scale
    self.growth_tracker = sd.growth_tracker or 0
    self.skipped = sd.skipped or 0
end

M.GradScaler_mt = GradScaler

-- ---- the policy ------------------------------------------------------------------------------

local PRECISIONS = { auto = true, f32 = true, bf16 = true, fp16 = true }

-- precision: "auto" (bf16 on a GPU, f32 on the CPU), "f32", "bf16" or "fp16"; device: "cpu",
-- "cuda" or "cuda:N"; opts: tf32 (default true), deterministic (default false): CUDA's kernels.
function M.policy(precision, device, opts)
    precision = precision or "auto"
    device = tostring(device or "cpu")
    opts = opts or {}
    if not PRECISIONS[precision] then
        error(("amp.policy: precision must be \"auto\", \"f32\", \"bf16\" or \"fp16\", got %s"):format(
            tostring(precision)), 2)
    end
    local gpu = device:match("^cuda") ~= nil
    if not gpu and device ~= "cpu" then
        error(("amp.policy: device must be \"cpu\", \"cuda\" or \"cuda:N\", got %s"):format(device), 2)
    end
    local name = precision == "auto" and (gpu and "bf16" or "f32") or precision
    local p = { precision = name, device = device, master = "f32", grads = "f32", optimizer = "f32",
        accumulate = "f32", reduce = "f32", tf32 = opts.tf32 ~= false,
        deterministic = opts.deterministic and true or false }
    -- frozen weights that are not quantized: bf16 on a GPU under bf16/fp16 (no cast copy per
    -- forward, half the bytes); f32 on the CPU, whose kernels widen to f32 anyway
    local frozen = (gpu and name ~= "f32") and "bf16" or "f32"
    if name == "f32" then
        p.compute, p.matmul, p.frozen = "f32", "f32", "f32"
    elseif name == "bf16" then
        -- the CPU's bf16: operands rounded to bf16 inside the matmuls, activations in f32
        p.compute, p.matmul, p.frozen = gpu and "bf16" or "f32", "bf16", frozen
    else
        p.compute, p.matmul, p.frozen = "f16", "f16", frozen
        -- f16's narrow range: the backward runs on a scaled loss
        p.loss_scale = "dynamic"
    end
    return setmetatable(p, { __tostring = function(t)
        return ("%s on %s: compute %s, matmul %s, frozen weights %s, master/grads/optimizer f32%s%s%s"):format(
            t.precision, t.device, t.compute, t.matmul, t.frozen, t.loss_scale and ", dynamic loss scaling" or "",
            t.tf32 and ", TF32" or "", t.deterministic and ", deterministic attention" or "")
    end })
end

-- Make `model` compute as the policy says (its device must be the policy's). Returns pol.
function M.apply(model, pol)
    local core = require "luatrain.core"
    local dev = model.device and model:device() or "cpu"
    local gpu = pol.device:match("^cuda") ~= nil
    if (dev == "cpu") == gpu then
        error(("amp.apply: the policy is for %s but the model is on %s (move it first)"):format(pol.device, dev), 2)
    end
    if gpu then
        core.check(core.C.lt_set_device_settings(core.C.LT_DEVICE_CUDA, select(2, core.parse_device(dev)),
            pol.tf32 and 1 or 0, pol.deterministic and 1 or 0))
    else
        core.check(core.C.lt_set_cpu_matmul_precision(pol.matmul == "bf16" and core.C.LT_MATMUL_BF16
            or core.C.LT_MATMUL_F32))
    end
    model:set_compute_dtype(pol.compute)
    return pol
end

return M
