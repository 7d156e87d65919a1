--[[
dist - data-parallel training over the processes of one job (ARCHITECTURE.md, contract 8):
the process group, DDP (dist/ddp.lua) and ZeRO stages 1 and 2 (dist/zero.lua), on the
collectives of lt.comm (Open MPI on host tensors, NCCL on device tensors).

    local pg = lt.dist.init()          -- from the launcher's variables (mpirun, srun,
                                       -- torchrun); a lone process is a world of 1
    pg.rank, pg.world, pg.local_rank, pg:is_main()
    pg:all_reduce(t, "sum")            -- lt.comm's collectives, or nothing in a world of 1
    pg:sum_numbers({ loss, tokens })   -- host numbers summed over the ranks
    lt.dist.shutdown()

A world of 1 initialises no MPI and every collective is the identity, so code written for
several ranks runs unchanged alone. lt.trainer uses the group by itself: under mpirun a
recipe trains data-parallel with no change but its `zero` setting.
]]
local M = {}

local Group = {}
Group.__index = Group

-- The group of a lone process: every collective is the identity.
local function local_group()
    return setmetatable({ rank = 0, world = 1, local_rank = 0, local_size = 1, comm = nil,
        launcher = "none" }, Group)
end

local current

-- A group of one process, whatever the environment says: for running the single-process
-- computation beside a parallel one (tests), or a rank's own local work.
M.local_group = local_group

-- Variables some launcher sets (lt_comm_env_read in C reads and checks them all): with
-- none present this is a lone process, and the comm layer is not even loaded.
local LAUNCH_VARS = { "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "PMI_SIZE",
    "SLURM_PROCID", "SLURM_NTASKS", "RANK", "WORLD_SIZE", "LOCAL_RANK" }

local function launched()
    for _, v in ipairs(LAUNCH_VARS) do
        if os.getenv(v) then return true end
    end
    return false
end

-- The job's process group (made once; later calls return it). opts: timeout (seconds,
-- every wait; default LT_COMM_TIMEOUT from the environment, else 600), deterministic
-- (sums in rank order: bit-reproducible), device ("cpu" or "cuda": whether device
-- collectives are wanted).
function M.init(opts)
    if current then return current end
    opts = opts or {}
    if not launched() then
        current = local_group()
        return current
    end
    local comm_mod = require "luatrain.comm"
    local env = comm_mod.env()
    if env.world_size <= 1 then
        current = local_group()
        return current
    end
    local timeout = opts.timeout or tonumber(os.getenv("LT_COMM_TIMEOUT") or "")
    local comm = comm_mod.init({ timeout = timeout, deterministic = opts.deterministic,
        device = opts.device })
    current = setmetatable({ rank = comm.rank, world = comm.world_size, local_rank = comm.local_rank,
        local_size = comm.local_size, comm = comm, launcher = env.launcher,
        deterministic = opts.deterministic and true or false }, Group)
    return current
end

-- The current group, or nil when init has not run.
function M.get() return current end

-- The current group, made with default settings when there is none.
function M.group() return current or M.init() end

-- Finish the job's communication (MPI_Finalize). Safe to call twice and in a world of 1.
function M.shutdown()
    if current and current.comm then current.comm:shutdown() end
    current = nil
end

-- For tests: forget the group (after a world-of-1 run) so the next init reads the
-- environment again.
function M._reset() current = nil end

function Group:is_main() return self.rank == 0 end

-- Tensor collectives (see lt.comm): in a world of 1 the identity. Each returns a work
-- object to wait on: with opts.async a started one, else (and in a world of 1) one that
-- is already done.
local done = { wait = function() end, test = function() return true end, free = function() end }

function Group:all_reduce(t, op, opts)
    if self.world == 1 then return done end
    return self.comm:all_reduce(t, op or "sum", opts) or done
end

function Group:reduce_scatter(out, inp, op, opts)
    if self.world == 1 then
        if out ~= inp then out:copy_(inp) end
        return done
    end
    return self.comm:reduce_scatter(out, inp, op or "sum", opts) or done
end

function Group:all_gather(out, inp, opts)
    if self.world == 1 then
        if out ~= inp then out:copy_(inp) end
        return done
    end
    return self.comm:all_gather(out, inp, opts) or done
end

function Group:broadcast(t, root, opts)
    if self.world == 1 then return done end
    return self.comm:broadcast(t, root or 0, opts) or done
end

function Group:barrier()
    if self.world > 1 then self.comm:barrier() end
end

-- Advance started collectives (MPI progresses only when called).
function Group:progress()
    if self.world > 1 then self.comm:progress() end
end

-- numbers summed (or op "max") over the ranks, returned as a new list.
function Group:sum_numbers(numbers, op)
    if self.world == 1 then
        local out = {}
        for i, v in ipairs(numbers) do out[i] = v end
        return out
    end
    return self.comm:all_reduce_numbers(numbers, op or "sum")
end

function Group:max_numbers(numbers) return self:sum_numbers(numbers, "max") end

-- End the whole job with a message naming this rank (a world of 1 raises the error).
function Group:abort(why)
    if self.world == 1 then error(why, 0) end
    self.comm:abort(1, why)
end

return M
