--[[
amp.lua - mixed precision: the dynamic loss scaler that fp16 training needs.

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

return M
