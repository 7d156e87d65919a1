--[[
comm - collectives over the ranks of one job (src/lt_comm.h): Open MPI for host tensors,
NCCL for device tensors. Most code uses the process group of lt.dist, which calls this;
it is here for tests, benchmarks and code that wants the collectives themselves.

    local comm = require "luatrain.comm"
    comm.env()                       -- { launcher = "mpi", rank, world_size, local_rank,
                                     --   local_size, master_addr, master_port, source }
    local c = comm.init{ timeout = 600, deterministic = false, device = "cpu" }
    c.rank, c.world_size, c.local_rank, c.local_size, c.threads
    c:all_reduce(t, "sum")           -- in place; "sum", "avg" or "max"
    local w = c:all_reduce(t, "sum", { async = true }); ...; w:wait()
    c:reduce_scatter(out, inp, "sum"); c:all_gather(out, inp); c:broadcast(t, 0)
    c:barrier(); c:progress()
    c:all_reduce_numbers({ loss, tokens }, "sum")   -- a new list, f64 (integer = true: i64)
    c:shutdown()                     -- MPI_Finalize (the host does it at exit otherwise)
    c:abort(code, why)               -- ends every rank of the job

Every wait has the timeout; after any failure the communicator refuses every call with
the first failure's message, and the host ends the job with MPI_Abort when the error
reaches it (never MPI_Finalize).
]]
local ffi = require "ffi"
local core = require "luatrain.core"
local C, check = core.C, core.check

local M = {}

local OPS = { sum = C.LT_COMM_SUM, avg = C.LT_COMM_AVG, max = C.LT_COMM_MAX }
local LAUNCHERS = { [C.LT_LAUNCH_NONE] = "none", [C.LT_LAUNCH_MPI] = "mpi",
    [C.LT_LAUNCH_SLURM] = "slurm", [C.LT_LAUNCH_TORCHRUN] = "torchrun" }

local function op_id(op)
    local id = OPS[op or "sum"]
    if not id then error("comm: op must be \"sum\", \"avg\" or \"max\", not " .. tostring(op), 3) end
    return id
end

-- What the launcher's variables say (errors for conflicting or incomplete ones).
function M.env()
    local e = ffi.new("lt_comm_env")
    check(C.lt_comm_env_read(e))
    return { launcher = LAUNCHERS[e.launcher], rank = e.rank, world_size = e.world_size,
        local_rank = e.local_rank, local_size = e.local_size,
        master_addr = ffi.string(e.master_addr), master_port = e.master_port,
        source = ffi.string(e.source) }
end

-- A started collective.
local Work = {}
Work.__index = Work

function Work:wait()
    if self.h == nil then return end
    check(C.lt_comm_work_wait(self.h))
    C.lt_comm_work_free(ffi.gc(self.h, nil))
    self.h = nil
end

function Work:test()
    if self.h == nil then return true end
    local done = ffi.new("int32_t[1]")
    check(C.lt_comm_work_test(self.h, done))
    if done[0] ~= 0 then
        C.lt_comm_work_free(ffi.gc(self.h, nil))
        self.h = nil
        return true
    end
    return false
end

local function work_of(ptr)
    return setmetatable({ h = ffi.gc(ptr[0], C.lt_comm_work_free) }, Work)
end

local Comm = {}
Comm.__index = Comm

-- A work pointer for opts.async, or nil (the call waits).
local function work_ptr(opts)
    return opts and opts.async and ffi.new("lt_comm_work *[1]") or nil
end

local function started(ptr)
    if ptr then return work_of(ptr) end
end

function Comm:all_reduce(t, op, opts)
    local ptr = work_ptr(opts)
    check(C.lt_comm_all_reduce(self.c, t, op_id(op), ptr))
    return started(ptr)
end

function Comm:reduce_scatter(out, inp, op, opts)
    local ptr = work_ptr(opts)
    check(C.lt_comm_reduce_scatter(self.c, out, inp, op_id(op), ptr))
    return started(ptr)
end

function Comm:all_gather(out, inp, opts)
    local ptr = work_ptr(opts)
    check(C.lt_comm_all_gather(self.c, out, inp, ptr))
    return started(ptr)
end

function Comm:broadcast(t, root, opts)
    local ptr = work_ptr(opts)
    check(C.lt_comm_broadcast(self.c, t, root or 0, ptr))
    return started(ptr)
end

function Comm:barrier() check(C.lt_comm_barrier(self.c)) end

function Comm:progress() check(C.lt_comm_progress(self.c)) end

-- A list of numbers reduced over the ranks (rank order: the same bits everywhere).
-- opts.integer: as i64 (exact token counts beyond 2^53 are not a concern; sums of
-- integers in doubles are exact up to there anyway).
function Comm:all_reduce_numbers(values, op, opts)
    local n = #values
    local integer = opts and opts.integer
    local buf = ffi.new(integer and "int64_t[?]" or "double[?]", math.max(n, 1))
    for i = 1, n do buf[i - 1] = values[i] end
    if integer then
        check(C.lt_comm_all_reduce_i64(self.c, buf, n, op_id(op)))
    else
        check(C.lt_comm_all_reduce_f64(self.c, buf, n, op_id(op)))
    end
    local out = {}
    for i = 1, n do out[i] = tonumber(buf[i - 1]) end
    return out
end

function Comm:all_reduce_number(v, op) return self:all_reduce_numbers({ v }, op)[1] end

function Comm:set_timeout(seconds) check(C.lt_comm_set_timeout(self.c, seconds)) end

-- The message of the failure that poisoned the communicator, or nil.
function Comm:failure()
    local f = C.lt_comm_failure(self.c)
    return f ~= nil and ffi.string(f) or nil
end

function Comm:shutdown()
    if self.finished then return end
    check(C.lt_comm_shutdown(self.c))
    self.finished = true
end

function Comm:abort(code, why)
    C.lt_comm_abort(self.c, code or 1, why and tostring(why) or "aborted")
    -- only without a launcher to stop the job (torchrun with NCCL alone) does it return
    error(why or "aborted", 0)
end

-- The job's communicator (once per process). opts: timeout (s, default 600),
-- deterministic, device ("cpu" | "cuda"), threads (false: leave the thread count alone;
-- by default the CPU kernels get this rank's share of the machine's cores).
function M.init(opts)
    opts = opts or {}
    local o = ffi.new("lt_comm_options")
    o.timeout_s = opts.timeout or 600
    o.deterministic = opts.deterministic and 1 or 0
    o.device = opts.device == "cuda" and C.LT_DEVICE_CUDA or C.LT_DEVICE_CPU
    o.set_threads = opts.threads == false and 0 or 1
    local ptr = ffi.new("lt_comm *[1]")
    check(C.lt_comm_init(ptr, o))
    local info = ffi.new("lt_comm_info")
    check(C.lt_comm_get_info(ptr[0], info))
    return setmetatable({ c = ptr[0], rank = info.rank, world_size = info.world_size,
        local_rank = info.local_rank, local_size = info.local_size, threads = info.threads,
        has_device = info.has_device ~= 0, deterministic = info.deterministic ~= 0,
        launcher = LAUNCHERS[info.launcher], backend = ffi.string(info.host_backend) }, Comm)
end

return M
