--[[
data/loader.lua - batches from a tokenized dataset: packed or padded, shuffled per epoch,
and resumable exactly.

    local loader = loader.new(ds, { batch_size = 8, seq_len = 512, packing = true,
                                    shuffle = true, seed = 0, epochs = 3 })
    local batch = loader:next()      -- nil after the last epoch
    model:forward_backward(batch.ids, batch.targets, batch)   -- positions, cu_seqlens ride along
    local st = loader:state()        -- a plain table for the checkpoint
    loader:set_state(st)             -- ... and the same batches follow

Packing (the default) puts whole samples one after another into one row of
batch_size * seq_len tokens, padding-free but for the tail: positions restart at 0 for
every sample and cu_seqlens (i32) marks where each one starts, so attention never crosses
samples. The tail after the last sample that fits is one more padding sequence.
Unpacked, each sample gets its own row of seq_len, right-padded. Padding sits at position
0, so no position in a batch exceeds its longest sample's length - 1.

Targets are aligned with positions (what the model predicts there): the next token where
that token is trained, -100 elsewhere, and -100 at each sample's last position, so a
sample never predicts the next one. A sample longer than seq_len is cut.

The order is a permutation of the samples per epoch drawn from (seed, epoch); the state
is { epoch, position, seed }, and every batch starts at a sample boundary, so restoring
the state reproduces the remaining batches exactly. Batch tensors are owned by the
loader and refilled, so iterating allocates nothing.

Data parallelism (opts.rank, opts.world): the ranks of a job read one global stream of
batches, the stream a lone loader gives, in rounds of `world` batches; rank r gets batch r
of every round and passes over the others (counting their samples, not copying them), so
world ranks with grad_accum A see exactly the batches of one process with grad_accum
A x world, and the saved position is global: a run resumes at any world size. Every batch
carries round_trained, the trained targets of its whole round (what the step's loss is
divided by), which every rank knows without communicating. A round the data cannot fill
ends the stream on every rank at once; with opts.whole_rounds = false (evaluation, where
every batch counts) the ranks of a last, partial round still get their batches.
]]
local ffi = require "ffi"
local core = require "luatrain.core"
local tensor = require "luatrain.tensor"

local C, check = core.C, core.check

local M = {}
local Loader = {}
Loader.__index = Loader

local IGNORE = -100

function M.new(ds, opts)
    opts = opts or {}
    local B, T = opts.batch_size or 1, opts.seq_len
    if type(T) ~= "number" or T < 2 then error("loader: seq_len must be at least 2", 2) end
    if type(B) ~= "number" or B < 1 then error("loader: batch_size must be at least 1", 2) end
    local packing = opts.packing ~= false
    local rank, world = opts.rank or 0, opts.world or 1
    if type(world) ~= "number" or world < 1 or world ~= math.floor(world) or type(rank) ~= "number" or
        rank < 0 or rank >= world or rank ~= math.floor(rank) then
        error(("loader: rank %s of world %s: need 0 <= rank < world"):format(tostring(rank), tostring(world)), 2)
    end
    local self = setmetatable({
        ds = ds, B = B, T = T, packing = packing, shuffle = opts.shuffle ~= false,
        seed = opts.seed or 0, epochs = opts.epochs, pad_id = opts.pad_id or 0,
        epoch = 1, pos = 0, order = tensor.empty({ ds.n }, { dtype = "i64" }),
        rng = ffi.new("lt_rng"), order_epoch = nil, rank = rank, world = world,
        whole_rounds = opts.whole_rounds ~= false,
    }, Loader)
    local rows, cols = packing and 1 or B, packing and B * T or T
    self.ids = tensor.empty({ rows, cols }, { dtype = "i64" })
    self.targets = tensor.empty({ rows, cols }, { dtype = "i64" })
    self.positions = tensor.empty({ rows, cols }, { dtype = "i64" })
    if packing then
        self.cu_store = tensor.empty({ B * T + 1 }, { dtype = "i32" })
        self.cu = tensor.new_header()
    end
    return self
end

-- The sample order of the current epoch (drawn once per epoch).
function Loader:_order()
    if self.order_epoch ~= self.epoch then
        local p = ffi.cast("int64_t*", self.order:data_ptr())
        if self.shuffle then
            -- a stream per epoch: offsets 2^40 apart never overlap
            C.lt_rng_seed(self.rng, self.seed)
            self.rng.offset = (self.epoch - 1) * 1099511627776ULL
            check(C.lt_tensor_randperm(self.order, self.rng))
        else
            for i = 0, self.ds.n - 1 do p[i] = i end
        end
        self.order_epoch = self.epoch
    end
    return ffi.cast("int64_t*", self.order:data_ptr())
end

-- Copy sample `s` (0-based) into row buffers at `at`, cut to `room`; returns its length.
local function put(self, s, ids, tg, pos, at, room)
    local src, tr, n = self.ds:sample(s + 1)
    if n > room then n = room end
    for j = 0, n - 1 do
        ids[at + j] = src[j]
        pos[at + j] = j
        tg[at + j] = (j + 1 < n and tr[j + 1] ~= 0) and src[j + 1] or IGNORE
    end
    return n
end

-- Padding predicts nothing and nothing real attends to it (it is its own sequence in a
-- packed row, and comes after the sample in a padded one), so its positions are all 0: the
-- largest position in a batch is then its longest sample's length - 1, and a seq_len longer
-- than the model's max_position_embeddings only has to fit the samples, not the row.
local function pad(self, ids, tg, pos, from, to)
    for j = from, to - 1 do
        ids[j] = self.pad_id
        tg[j] = IGNORE
        pos[j] = 0
    end
end

-- Trained targets of sample s (0-based) cut to n tokens: positions j < n - 1 whose next
-- token is trained (the last position predicts nothing).
local function sample_trained(self, s, n)
    local _, tr = self.ds:sample(s + 1)
    local k = 0
    for j = 1, n - 1 do
        if tr[j] ~= 0 then k = k + 1 end
    end
    return k
end

-- Pass over the next batch without filling it: the samples it would take and the targets
-- it would train, or nil at the end of the data.
function Loader:_skip()
    if not self:_roll() then return nil end
    local order = self:_order()
    local trained = 0
    if self.packing then
        local cap, filled = self.B * self.T, 0
        while self.pos < self.ds.n do
            local s = order[self.pos]
            local len = math.min(self.ds:sample_len(s + 1), self.T)
            if filled + len > cap then break end
            trained = trained + sample_trained(self, s, len)
            filled = filled + len
            self.pos = self.pos + 1
        end
    else
        for _ = 1, self.B do
            if self.pos >= self.ds.n then break end
            local s = order[self.pos]
            trained = trained + sample_trained(self, s, math.min(self.ds:sample_len(s + 1), self.T))
            self.pos = self.pos + 1
        end
    end
    return trained
end

-- At the end of an epoch, start the next one; false when the last epoch is done.
function Loader:_roll()
    if self.ds.n == 0 then return false end
    if self.pos >= self.ds.n then
        if self.epochs and self.epoch >= self.epochs then return false end
        self.epoch = self.epoch + 1
        self.pos = 0
    end
    return true
end

-- The next batch, or nil when the last epoch is done. A batch is
-- { ids, targets, positions (B, T) or (1, B*T) i64; cu_seqlens (i32) when packed;
--   samples = how many samples it holds; tokens = positions holding sample tokens;
--   trained = how many targets are not -100; round_trained = the trained targets of the
--   round of `world` batches it belongs to (= trained in one process); epoch }.
function Loader:next()
    if self.freed then error("loader: next() after free()", 2) end
    if self.world == 1 then
        local b = self:_fill()
        if b then b.round_trained = b.trained end
        return b
    end
    local batch, round = nil, 0
    for k = 0, self.world - 1 do
        if k == self.rank then
            batch = self:_fill()
            if not batch then return nil end
            round = round + batch.trained
        else
            local t = self:_skip()
            if not t then
                if batch and not self.whole_rounds then break end
                return nil
            end
            round = round + t
        end
    end
    batch.round_trained = round
    return batch
end

-- Fill the batch tensors with the next batch (see next()), or nil at the end of the data.
function Loader:_fill()
    if not self:_roll() then return nil end
    local order = self:_order()
    local ids = ffi.cast("int64_t*", self.ids:data_ptr())
    local tg = ffi.cast("int64_t*", self.targets:data_ptr())
    local pos = ffi.cast("int64_t*", self.positions:data_ptr())
    local samples, tokens = 0, 0
    local batch = { ids = self.ids, targets = self.targets, positions = self.positions, epoch = self.epoch }
    if self.packing then
        local cap = self.B * self.T
        local cu = ffi.cast("int32_t*", self.cu_store:data_ptr())
        local nseg, filled = 0, 0
        cu[0] = 0
        while self.pos < self.ds.n do
            local s = order[self.pos]
            local len = math.min(self.ds:sample_len(s + 1), self.T)
            if filled + len > cap then break end
            put(self, s, ids, tg, pos, filled, self.T)
            filled = filled + len
            nseg = nseg + 1
            cu[nseg] = filled
            self.pos = self.pos + 1
            samples = samples + 1
        end
        tokens = filled
        if filled < cap then
            pad(self, ids, tg, pos, filled, cap)
            nseg = nseg + 1
            cu[nseg] = cap
        end
        check(C.lt_tensor_narrow(self.cu, self.cu_store, 0, 0, nseg + 1))
        batch.cu_seqlens = self.cu
    else
        for row = 0, self.B - 1 do
            local at = row * self.T
            if self.pos < self.ds.n then
                local n = put(self, order[self.pos], ids, tg, pos, at, self.T)
                pad(self, ids, tg, pos, at + n, at + self.T)
                self.pos = self.pos + 1
                samples = samples + 1
                tokens = tokens + n
            else
                pad(self, ids, tg, pos, at, at + self.T)
            end
        end
    end
    local trained = 0
    for j = 0, self.targets:numel() - 1 do
        if tg[j] ~= IGNORE then trained = trained + 1 end
    end
    batch.samples, batch.tokens, batch.trained = samples, tokens, trained
    return batch
end

-- Batches per epoch is only known by packing; this is an estimate for schedules.
function Loader:estimate_batches_per_epoch()
    if not self.packing then return math.ceil(self.ds.n / self.B) end
    return math.max(1, math.ceil(self.ds.total / (self.B * self.T)))
end

-- Release the loader's buffers now (not when the collector gets to them); next() fails after.
function Loader:free()
    for _, k in ipairs({ "order", "ids", "targets", "positions", "cu_store", "cu", "skip" }) do
        local t = rawget(self, k)
        if t then t:free() end
    end
    self.freed = true
end

function Loader:state()
    return { epoch = self.epoch, position = self.pos, seed = self.seed }
end

function Loader:set_state(st)
    if type(st) ~= "table" or type(st.epoch) ~= "number" or type(st.position) ~= "number" then
        error("loader:set_state: expected { epoch, position, seed }", 2)
    end
    if st.seed ~= nil and st.seed ~= self.seed then
        error(("loader:set_state: the state was saved with seed %s but this loader has seed %s"):format(
            tostring(st.seed), tostring(self.seed)), 2)
    end
    if st.position < 0 or st.position > self.ds.n then
        error(("loader:set_state: position %d is outside the dataset's %d samples"):format(st.position, self.ds.n), 2)
    end
    self.epoch, self.pos = st.epoch, st.position
    self.order_epoch = nil
end

return M
