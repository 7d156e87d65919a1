--[[
fs.lua - file-system helpers over the C core: directories, atomic writes, folders that
commit as one unit, the clock.

    local tmp = fs.make_temp_dir("runs/x/checkpoint-10")   -- ".checkpoint-10.tmp-..." beside it
    ... write the files into tmp ...
    fs.commit_dir(tmp, "runs/x/checkpoint-10")             -- fsync, rename or exchange, fsync

What a crash can leave beside a folder (hidden ".<name>.tmp-", ".<name>.old-" and
".<name>.del-" siblings) is put right by fs.clean_leftovers(path) before the next save
(src/lt_io.h has the protocol).
]]
local ffi = require "ffi"
local core = require "luatrain.core"

local C, check = core.C, core.check

local M = {}

function M.make_dirs(path) check(C.lt_make_dirs(path)) end

-- Write text to path atomically (temporary file, fsync, rename).
function M.write_atomic(path, text) check(C.lt_write_file_atomic(path, text, #text)) end

function M.exists(path)
    local f = io.open(path, "rb")
    if f then f:close() end
    return f ~= nil
end

-- Seconds on a monotonic clock.
function M.now() return C.lt_now() end

-- Seconds since the epoch, with the fraction (CLOCK_REALTIME; M.now is monotonic).
pcall(ffi.cdef, [[
typedef struct lt_fs_timespec { long tv_sec; long tv_nsec; } lt_fs_timespec;
int clock_gettime(int clock_id, lt_fs_timespec *ts);
]])
local wall_ts = ffi.new("lt_fs_timespec")
function M.wall_time()
    if ffi.C.clock_gettime(0, wall_ts) ~= 0 then return os.time() end
    return tonumber(wall_ts.tv_sec) + tonumber(wall_ts.tv_nsec) * 1e-9
end

-- ---- folders -----------------------------------------------------------------------------

local kind_buf = ffi.new("int32_t[1]")
local KIND = { [C.LT_PATH_MISSING] = "missing", [C.LT_PATH_FILE] = "file", [C.LT_PATH_DIR] = "dir",
    [C.LT_PATH_LINK] = "link", [C.LT_PATH_OTHER] = "other" }

-- "missing", "file", "dir" or "other" (symbolic links followed).
function M.kind(path)
    check(C.lt_path_kind(path, kind_buf))
    return KIND[kind_buf[0]]
end

function M.is_dir(path) return M.kind(path) == "dir" end

-- The entries of a folder, sorted by name: { { name = "a", kind = "file" }, ... } (kind as
-- M.kind, "link" for a symbolic link).
function M.list(path)
    local box = ffi.new("lt_dir_list*[1]")
    check(C.lt_dir_list_open(box, path))
    local l = ffi.gc(box[0], C.lt_dir_list_close)
    local out = {}
    for i = 0, tonumber(C.lt_dir_list_count(l)) - 1 do
        out[i + 1] = { name = ffi.string(C.lt_dir_list_name(l, i)), kind = KIND[C.lt_dir_list_kind(l, i)] }
    end
    ffi.gc(l, nil)
    C.lt_dir_list_close(l)
    return out
end

-- rm -rf without a shell; symbolic links are removed, never followed.
function M.remove_tree(path) check(C.lt_remove_tree(path)) end

-- fsync a folder: the names in it survive a power loss.
function M.fsync_dir(path) check(C.lt_fsync_dir(path)) end

-- fsync every file in the tree, then each folder.
function M.sync_tree(path) check(C.lt_dir_sync(path)) end

local name_buf = ffi.new("char[4096]")

-- A new empty hidden folder beside `path`, to build it in; returns its path.
function M.make_temp_dir(path)
    check(C.lt_dir_make_temp(path, name_buf, 4096))
    return ffi.string(name_buf)
end

-- Tests force the commit's fallback (rename aside, then in) where the exchange works.
local NO_EXCHANGE = os.getenv("LUATRAIN_TEST_NO_EXCHANGE") == "1"

-- Put the finished temporary folder `tmp` at `path` as one unit: every file and the folder
-- fsynced, renamed into place (or exchanged with the previous folder, which is then
-- removed), the parent fsynced.
function M.commit_dir(tmp, path)
    check(C.lt_dir_commit(tmp, path, NO_EXCHANGE and C.LT_DIR_COMMIT_NO_EXCHANGE or 0))
end

-- Give the new folder `to` the entries of `from` it lacks (hard links), so a commit keeps
-- what else a user keeps in the folder.
function M.carry_over(from, to) check(C.lt_dir_carry_over(from, to)) end

local restored_buf = ffi.new("int32_t[1]")

-- Put a folder back that a commit's fallback moved aside just before a crash; true if it did.
function M.restore_dir(path)
    check(C.lt_dir_restore(path, restored_buf))
    return restored_buf[0] ~= 0
end

local function split(path)
    path = path:gsub("/+$", "")
    local parent, base = path:match("^(.*)/([^/]+)$")
    if not parent then return ".", path end
    return parent == "" and "/" or parent, base
end
M.split = split

-- What a crash left beside the folder `path`: the folder itself put back when the fallback
-- had moved it aside, then every ".<name>.tmp-/.old-/.del-" sibling removed. Call before
-- saving `path` again; the process saving is the folder's only writer.
function M.clean_leftovers(path)
    local parent, base = split(path)
    if M.kind(parent) ~= "dir" then return end
    M.restore_dir(path)
    local prefix = "." .. base .. "."
    for _, e in ipairs(M.list(parent)) do
        local rest = e.name:sub(1, #prefix) == prefix and e.name:sub(#prefix + 1)
        if rest and (rest:find("^tmp%-") or rest:find("^old%-") or rest:find("^del%-")) then
            M.remove_tree(parent .. "/" .. e.name)
        end
    end
end

-- ---- a test hook for crash tests ----------------------------------------------------------

pcall(ffi.cdef, "int poll(void *fds, unsigned long nfds, int timeout);")

local pause_at = os.getenv("LUATRAIN_TEST_PAUSE")

-- Saves call this between the steps of a commit ("checkpoint 7 committed"). When
-- LUATRAIN_TEST_PAUSE names that point, the process says so on stderr and sleeps (10 s at
-- most), so a test can kill it exactly there. Otherwise it does nothing.
function M.test_point(what)
    if pause_at ~= what then return end
    io.stderr:write("luatrain-test-pause ", what, "\n")
    io.stderr:flush()
    ffi.C.poll(nil, 0, 10000)
end

return M
