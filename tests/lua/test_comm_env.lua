-- Launch variables: which launcher started a process and as which rank (lt.comm.env, in C
-- lt_comm_env_read), and the misuses that must be errors rather than a silent world of 1.
-- Runs single processes with made-up variables; no MPI is started.
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"

local VARS = { "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS",
    "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "RANK", "WORLD_SIZE", "LOCAL_RANK",
    "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT" }

-- Runs `code` in a fresh luatrain with exactly `vars` of the launchers' variables set.
local function with_env(vars, code)
    local parts = { "env" }
    for _, v in ipairs(VARS) do parts[#parts + 1] = "-u " .. v end
    for k, v in pairs(vars) do parts[#parts + 1] = k .. "=" .. T.shell_quote(v) end
    parts[#parts + 1] = T.shell_quote(T.luatrain())
    parts[#parts + 1] = "-e " .. T.shell_quote("local lt = require 'luatrain' " .. code)
    return T.run(table.concat(parts, " "))
end

local SHOW = "local e = lt.comm.env() print(e.launcher, e.rank, e.world_size, e.local_rank, e.local_size, e.source)"

local function env_of(vars)
    local out, code = with_env(vars, SHOW)
    T.eq(code, 0, out)
    local l, r, w, lr, ls = out:match("^(%S+)\t(%-?%d+)\t(%-?%d+)\t(%-?%d+)\t(%-?%d+)")
    return { launcher = l, rank = tonumber(r), world = tonumber(w), local_rank = tonumber(lr),
        local_size = tonumber(ls), text = out }
end

local function fails(vars, pattern, code)
    local out, rc = with_env(vars, code or SHOW)
    T.ok(rc ~= 0, "succeeded: " .. out)
    T.ok(out:find(pattern) ~= nil, ("no '%s' in: %s"):format(pattern, out))
end

T.test("no variables: a lone process", function()
    local e = env_of({})
    T.eq({ e.launcher, e.rank, e.world }, { "none", 0, 1 })
end)

T.test("Open MPI's variables", function()
    local e = env_of({ OMPI_COMM_WORLD_RANK = "2", OMPI_COMM_WORLD_SIZE = "4", OMPI_COMM_WORLD_LOCAL_RANK = "0",
        OMPI_COMM_WORLD_LOCAL_SIZE = "2", PMIX_RANK = "2" })
    T.eq({ e.launcher, e.rank, e.world, e.local_rank, e.local_size }, { "mpi", 2, 4, 0, 2 })
    T.ok(e.text:find("OMPI_COMM_WORLD_RANK=2 OMPI_COMM_WORLD_SIZE=4", 1, true), e.text)
end)

T.test("PMI (MPICH's hydra) and srun's step variables", function()
    local e = env_of({ PMI_RANK = "1", PMI_SIZE = "3", MPI_LOCALRANKID = "1", MPI_LOCALNRANKS = "3" })
    T.eq({ e.launcher, e.rank, e.world, e.local_rank, e.local_size }, { "mpi", 1, 3, 1, 3 })
    e = env_of({ SLURM_PROCID = "5", SLURM_STEP_NUM_TASKS = "8", SLURM_LOCALID = "1" })
    T.eq({ e.launcher, e.rank, e.world, e.local_rank }, { "slurm", 5, 8, 1 })
    -- srun --mpi=pmix under mpirun's variables: one job, the MPI launcher wins
    e = env_of({ SLURM_PROCID = "1", SLURM_STEP_NUM_TASKS = "2", OMPI_COMM_WORLD_RANK = "1", OMPI_COMM_WORLD_SIZE = "2" })
    T.eq({ e.launcher, e.rank, e.world }, { "mpi", 1, 2 })
end)

T.test("a Slurm batch script's shell is a lone process", function()
    local e = env_of({ SLURM_PROCID = "0", SLURM_LOCALID = "0" })
    T.eq({ e.launcher, e.rank, e.world }, { "none", 0, 1 })
end)

T.test("torchrun's variables", function()
    local e = env_of({ RANK = "3", WORLD_SIZE = "4", LOCAL_RANK = "1", LOCAL_WORLD_SIZE = "2",
        MASTER_ADDR = "10.0.0.1", MASTER_PORT = "29500" })
    T.eq({ e.launcher, e.rank, e.world, e.local_rank, e.local_size }, { "torchrun", 3, 4, 1, 2 })
    local out = with_env({ RANK = "0", WORLD_SIZE = "2", MASTER_ADDR = "h", MASTER_PORT = "29400" },
        "local e = lt.comm.env() print(e.master_addr, e.master_port)")
    T.ok(out:find("h\t29400", 1, true), out)
    -- torchrun's variables beside mpirun's that agree are fine (users export RANK themselves)
    e = env_of({ RANK = "1", WORLD_SIZE = "2", OMPI_COMM_WORLD_RANK = "1", OMPI_COMM_WORLD_SIZE = "2" })
    T.eq({ e.launcher, e.rank, e.world }, { "mpi", 1, 2 })
end)

T.test("misuse: a rank with nothing to connect it, conflicts, half-set and malformed variables", function()
    fails({ RANK = "1", WORLD_SIZE = "2" }, "nothing connects the ranks")
    fails({ RANK = "1" }, "RANK is set but WORLD_SIZE is not")
    fails({ WORLD_SIZE = "2" }, "WORLD_SIZE is set but RANK is not")
    fails({ RANK = "2", WORLD_SIZE = "2", MASTER_ADDR = "h", MASTER_PORT = "1" }, "RANK=2 is not below WORLD_SIZE=2")
    fails({ RANK = "0", WORLD_SIZE = "2", MASTER_ADDR = "h", MASTER_PORT = "99999" }, "MASTER_PORT=99999 is not a TCP port")
    fails({ RANK = "x", WORLD_SIZE = "2" }, 'RANK="x" is not a rank or size')
    fails({ OMPI_COMM_WORLD_RANK = "0", OMPI_COMM_WORLD_SIZE = "2", RANK = "1", WORLD_SIZE = "2" },
        "the launchers' variables disagree: OMPI_COMM_WORLD_RANK=0 OMPI_COMM_WORLD_SIZE=2 but RANK=1 WORLD_SIZE=2")
    fails({ OMPI_COMM_WORLD_RANK = "0", OMPI_COMM_WORLD_SIZE = "2", SLURM_PROCID = "0", SLURM_STEP_NUM_TASKS = "4" },
        "disagree")
    fails({ PMIX_RANK = "1" }, "PMIX_RANK=1 but no variable gives the job's size")
    fails({ WORLD_SIZE = "0", RANK = "0" }, "a job has at least one rank")
end)

T.test("the process group: torchrun-style variables on CPU ranks are refused, RANK=1 alone is no world of 1", function()
    fails({ RANK = "1", WORLD_SIZE = "2" }, "nothing connects the ranks", "lt.dist.init()")
    fails({ RANK = "0", WORLD_SIZE = "2", MASTER_ADDR = "127.0.0.1", MASTER_PORT = "29511" },
        "torchrun%-style launch, which luatrain honours for GPUs", "lt.dist.init()")
    -- a world of 1 from any launcher loads no MPI
    local out, code = with_env({ RANK = "0", WORLD_SIZE = "1" },
        "local pg = lt.dist.init() print(pg.world, pg.comm == nil)")
    T.eq(code, 0, out)
    T.ok(out:find("1\ttrue", 1, true), out)
end)

T.test("a lone process never loads MPI", function()
    local out, code = with_env({}, "lt.dist.init() lt.dist.shutdown() " ..
        "for l in io.lines('/proc/self/maps') do if l:find('libmpi') then print('MAPPED ' .. l) end end")
    T.eq(code, 0, out)
    T.ok(not out:find("MAPPED"), out)
end)

T.done()
