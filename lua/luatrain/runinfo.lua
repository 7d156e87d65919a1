--[[
runinfo.lua - what an output folder says about the run that wrote it (lt.runinfo).

    lt.runinfo.write("runs/x", cfg, { recipe = arg[0] })  -- runs/x/run_config.json
    lt.runinfo.copy_tokenizer("base_folder", "runs/x")    -- tokenizer files beside the adapter

run_config.json holds every setting (lt.config.values), the recipe and its command line, the
luatrain version and the commit of the tree it runs from (read from .git, "?" without one),
the machine (CPU model, logical CPUs, the vector ISA, threads, host name, OS), the GPU when
the CUDA backend is in use, and the time the run started (ISO 8601 UTC and seconds since the
epoch). It is written atomically.
]]
local json = require "luatrain.json"
local fs = require "luatrain.fs"

local M = {}

local function read(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return s
end

local function first_line(cmd)
    local p = io.popen(cmd .. " 2>/dev/null")
    if not p then return nil end
    local s = p:read("*l")
    p:close()
    return s ~= "" and s or nil
end

-- The commit of the source tree holding luatrain's Lua files (the repository the host runs
-- from), short; "?" for an install without .git.
function M.commit()
    local src = debug.getinfo(1, "S").source:match("^@(.*)/lua/luatrain/runinfo%.lua$")
    if not src then return "?" end
    local git = src .. "/.git"
    local head = read(git .. "/HEAD")
    if not head then return "?" end
    local ref = head:match("^ref: (%S+)")
    if not ref then return head:sub(1, 12) end
    local sha = read(git .. "/" .. ref)
    if not sha then sha = (read(git .. "/packed-refs") or ""):match("(%x+) " .. ref:gsub("%p", "%%%0")) end
    return sha and sha:sub(1, 12) or "?"
end

-- The machine: CPU model, logical CPUs, widest vector ISA, host, OS.
function M.machine()
    local cpu = read("/proc/cpuinfo") or ""
    local flags = cpu:match("flags%s*:%s*([^\n]*)") or ""
    local isa = {}
    for _, f in ipairs({ "avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile" }) do
        if (" " .. flags .. " "):find(" " .. f .. " ", 1, true) then isa[#isa + 1] = f end
    end
    local n = 0
    for _ in cpu:gmatch("\nprocessor%s*:") do n = n + 1 end
    if cpu:match("^processor%s*:") then n = n + 1 end
    return { cpu = cpu:match("model name%s*:%s*([^\n]*)") or "?", logical_cpus = n, isa = json.array(isa),
        threads = require("luatrain").get_num_threads and require("luatrain").get_num_threads() or nil,
        host = first_line("hostname") or "?", os = first_line("uname -sr") or "?" }
end

function M.describe(cfg, opts)
    opts = opts or {}
    local lt = require "luatrain"
    local settings = cfg and lt.config.values(cfg) or {}
    local now = fs.wall_time()
    local info = { settings = settings, recipe = opts.recipe, command = opts.command,
        luatrain = lt.version, commit = M.commit(), machine = M.machine(),
        started = os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(now)), started_unix = now }
    local ok, cuda = pcall(function() return lt.cuda.is_available() and lt.cuda.device_info() or nil end)
    if ok and cuda then info.gpu = { name = cuda.name, total_bytes = cuda.total_bytes } end
    return info
end

-- Write dir/run_config.json (the folder is made if missing); returns the table written.
function M.write(dir, cfg, opts)
    fs.make_dirs(dir)
    local info = M.describe(cfg, opts)
    fs.write_atomic(dir .. "/run_config.json", json.encode(info, { indent = 2 }) .. "\n")
    return info
end

M.TOKENIZER_FILES = { "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model" }

-- The base folder's tokenizer files into dir (those it has), atomically each.
function M.copy_tokenizer(model_dir, dir)
    local n = 0
    for _, f in ipairs(M.TOKENIZER_FILES) do
        local s = read(model_dir .. "/" .. f)
        if s then
            fs.write_atomic(dir .. "/" .. f, s)
            n = n + 1
        end
    end
    return n
end

return M
