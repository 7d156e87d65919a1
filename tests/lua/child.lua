--[[
child.lua - a child process for crash tests: started with posix_spawn, its stdout and
stderr read through a pipe with a deadline, killed with SIGKILL, reaped with a deadline.

    local Child = require "child"
    local c = Child.spawn({ T.luatrain(), "tests/lua/crash_train.lua", dir }, { X = "1" })
    local line = c:expect("^saved (%d+)", 30)   -- the first line matching, or nil at the deadline
    c:kill()
    local how, code = c:wait(30)                 -- "exited", status | "killed", signal

Every wait has a deadline; a child still running at one is killed and reaped, so no test
leaves a process behind.
]]
local ffi = require "ffi"

-- libc, each on its own: another file may have declared one already
for _, decl in ipairs({
    "int pipe2(int fds[2], int flags);",
    "int close(int fd);",
    "long read(int fd, void *buf, size_t n);",
    "int kill(int pid, int sig);",
    "int waitpid(int pid, int *status, int options);",
    "int posix_spawn(int *pid, const char *path, const void *file_actions, const void *attrp, " ..
        "char *const argv[], char *const envp[]);",
    "int posix_spawn_file_actions_init(void *fa);",
    "int posix_spawn_file_actions_destroy(void *fa);",
    "int posix_spawn_file_actions_adddup2(void *fa, int fd, int newfd);",
    "int poll(void *fds, unsigned long nfds, int timeout);",
    "extern char **environ;",
    "struct lt_test_pollfd { int fd; short events; short revents; };",
}) do pcall(ffi.cdef, decl) end

local C = ffi.C
local O_CLOEXEC, SIGKILL, WNOHANG, POLLIN = 0x80000, 9, 1, 1

local Child = {}
Child.__index = Child

local function now() return require("luatrain.fs").now() end

-- Sleep `s` seconds.
function Child.sleep(s) C.poll(nil, 0, math.floor(s * 1000)) end

-- Start argv[1] with arguments argv[2..], the environment plus `env` (name -> value).
function Child.spawn(argv, env)
    local keep = {} -- Lua strings the C arrays point into
    local cargv = ffi.new("char *[?]", #argv + 1)
    for i, a in ipairs(argv) do
        keep[#keep + 1] = a
        cargv[i - 1] = ffi.cast("char *", a)
    end
    local vars = {}
    local i = 0
    while C.environ[i] ~= nil do
        local s = ffi.string(C.environ[i])
        local name = s:match("^([^=]*)=")
        if not (name and env and env[name] ~= nil) then vars[#vars + 1] = s end
        i = i + 1
    end
    for k, v in pairs(env or {}) do vars[#vars + 1] = k .. "=" .. v end
    local cenv = ffi.new("char *[?]", #vars + 1)
    for j, s in ipairs(vars) do
        keep[#keep + 1] = s
        cenv[j - 1] = ffi.cast("char *", s)
    end
    local fds = ffi.new("int[2]")
    assert(C.pipe2(fds, O_CLOEXEC) == 0, "pipe2 failed")
    local fa = ffi.new("uint8_t[256]") -- posix_spawn_file_actions_t is 80 bytes in glibc
    assert(C.posix_spawn_file_actions_init(fa) == 0)
    C.posix_spawn_file_actions_adddup2(fa, fds[1], 1)
    C.posix_spawn_file_actions_adddup2(fa, fds[1], 2)
    local pid = ffi.new("int[1]")
    local rc = C.posix_spawn(pid, argv[1], fa, nil, cargv, cenv)
    C.posix_spawn_file_actions_destroy(fa)
    C.close(fds[1])
    if rc ~= 0 then
        C.close(fds[0])
        error(("posix_spawn %s failed: %d"):format(argv[1], rc))
    end
    return setmetatable({ pid = pid[0], fd = fds[0], buf = "", output = "", keep = keep }, Child)
end

local chunk = ffi.new("char[4096]")
local pfd = ffi.new("struct lt_test_pollfd[1]")

-- Read what the child wrote, waiting at most `timeout` seconds: the number of bytes read
-- (0 when nothing came), or nil at the end of the output.
function Child:pump(timeout)
    if not self.fd then return nil end
    pfd[0].fd, pfd[0].events, pfd[0].revents = self.fd, POLLIN, 0
    local n = C.poll(pfd, 1, math.max(0, math.floor(timeout * 1000)))
    if n <= 0 then return 0 end
    local got = tonumber(C.read(self.fd, chunk, 4096))
    if got <= 0 then
        C.close(self.fd)
        self.fd = nil
        return nil
    end
    local s = ffi.string(chunk, got)
    self.buf = self.buf .. s
    self.output = self.output .. s
    return got
end

-- The captures of the first new line matching `pattern` (or the line), or nil when the
-- output ends or `timeout` seconds pass first.
function Child:expect(pattern, timeout)
    local deadline = now() + timeout
    while true do
        while true do
            local line, rest = self.buf:match("^([^\n]*)\n(.*)$")
            if not line then break end
            self.buf = rest
            local caps = { line:match(pattern) }
            if #caps > 0 then return unpack(caps) end
        end
        local left = deadline - now()
        if left <= 0 or not self:pump(math.min(left, 1)) then return nil end
    end
end

function Child:kill() C.kill(self.pid, SIGKILL) end

-- Reap the child: "exited", status or "killed", signal. Past `timeout` seconds it is
-- killed (and the result says so).
function Child:wait(timeout)
    local status = ffi.new("int[1]")
    local deadline = now() + timeout
    local killed_here = false
    while true do
        local r = C.waitpid(self.pid, status, WNOHANG)
        if r == self.pid then break end
        if r < 0 then error("waitpid failed for " .. self.pid) end
        if now() > deadline and not killed_here then
            self:kill()
            killed_here = true
            deadline = now() + 10
        elseif killed_here and now() > deadline then
            error("child " .. self.pid .. " survives SIGKILL")
        end
        if not self:pump(0.01) then Child.sleep(0.01) end
    end
    while (self:pump(0) or 0) > 0 do end
    if self.fd then
        C.close(self.fd)
        self.fd = nil
    end
    local st = status[0]
    if killed_here then return "timeout", st end
    if bit.band(st, 0x7f) == 0 then return "exited", bit.band(bit.rshift(st, 8), 0xff) end
    return "killed", bit.band(st, 0x7f)
end

return Child
