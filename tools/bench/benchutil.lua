--[[
benchutil.lua - what the benchmark scripts print about where they ran. Scripts load it
with package.path = "tools/bench/?.lua;" .. package.path (they run from the repository root).
]]
local M = {}

local function read(path)
    local f = io.open(path)
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return s
end

-- The checked-out commit, short, read from .git (no git binary needed on the device
-- machine); "?" without a .git folder.
function M.commit()
    local head = read(".git/HEAD")
    if not head then return "?" end
    local ref = head:match("^ref: (%S+)")
    if not ref then return head:sub(1, 7) end
    local sha = read(".git/" .. ref)
    if not sha then
        sha = (read(".git/packed-refs") or ""):match("(%x+) " .. ref:gsub("%p", "%%%0"))
    end
    return sha and sha:sub(1, 7) or "?"
end

-- lscpu's text ("" without lscpu).
function M.lscpu()
    local p = io.popen("lscpu 2>/dev/null")
    local text = p and p:read("*a") or ""
    if p then p:close() end
    return text
end

-- The CPU's model name, e.g. "AMD EPYC".
function M.cpu_name(text)
    return (text or M.lscpu()):match("Model name:%s*([^\n]+)") or "unknown CPU"
end

-- "AMD EPYC, 2 cores, AVX-512": model, logical CPUs and the widest vector ISA.
function M.cpu_description()
    local text = M.lscpu()
    local cpus = text:match("\nCPU%(s%):%s*(%d+)") or "?"
    local flags = text:match("Flags:%s*([^\n]+)") or ""
    local isa = flags:find("avx512f", 1, true) and "AVX-512" or (flags:find("avx2", 1, true) and "AVX2" or "SSE")
    return ("%s, %s cores, %s"):format(M.cpu_name(text), cpus, isa)
end

return M
