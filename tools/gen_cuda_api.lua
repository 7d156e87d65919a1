--[[
gen_cuda_api.lua - make the interface between the C core and the CUDA backend.

The backend (cuda/, libluatrain_cuda.so) is loaded on first use and hands the core one
table of function pointers (ARCHITECTURE.md, contract 12). Everything on both sides of
that table is written here from the declarations it carries, so a prototype is written
once, in a header:

  src/core/lt_cuda.h      the runtime the core calls (devices, memory, copies, fills, RNG,
                          settings and test hooks), hand-written, one table entry each;
  src/lt_ops.h,           the ops; each op named in CUDA_OPS below has a CUDA twin with
  src/lt_quant.h          the same prototype and the lt_cuda_ prefix.

It writes, under src/core/cuda_api/:

  ops.h         the twins' prototypes (the backend implements them);
  table.h       struct lt_cuda_api (one pointer per entry), LT_CUDA_API_VERSION and the
                backend's entry point;
  table_init.h  the backend's table, filled with its functions (included by cuda/context.cu);
  forward.c     the core's functions of the same names, which load the backend and call
                through the table (src/core/cuda_loader.c loads it).

LT_CUDA_API_VERSION is a hash of every entry's prototype and of the structs the headers
define, so a backend built from other headers is refused when it loads instead of being
called with the wrong layout.

  luajit tools/gen_cuda_api.lua            rewrite the generated files
  luajit tools/gen_cuda_api.lua --check    exit 1, naming the stale files, when any differs
  (either takes --root DIR; the default is the folder above tools/)
]]

-- The ops with a CUDA twin: the one place this is stated. A name here must be declared in
-- its header and implemented as lt_cuda_<name> in cuda/ (the backend fails to link
-- otherwise). Ops not listed are CPU-only or made of other ops (lt_matmul_backward).
local CUDA_OPS = {
    ["src/lt_ops.h"] = {
        "unary_forward", "unary_backward", "binary_forward", "binary_backward",
        "scalar_forward", "scalar_backward", "axpby",
        "reduce_forward", "reduce_backward", "argmax", "sum_squares", "has_nonfinite",
        "softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
        "matmul",
        "embedding_forward", "embedding_backward",
        "rmsnorm_forward", "rmsnorm_backward",
        "rope_table", "rope_forward", "rope_backward",
        "swiglu_forward", "swiglu_backward",
        "attention_forward", "attention_backward",
        "dropout_forward", "dropout_backward",
        "sample_logits",
        "cross_entropy_forward", "cross_entropy_backward",
        "linear_cross_entropy_forward", "linear_cross_entropy_backward",
        "linear_cross_entropy_fused",
        "adamw_step", "adamw_step_multi", "adamw8_step", "global_norm",
    },
    ["src/lt_quant.h"] = {
        "quantize", "dequantize", "dequantize_rows", "quant_absmax",
        "quant_linear_forward", "quant_linear_backward",
    },
}
local OP_HEADERS = { "src/lt_ops.h", "src/lt_quant.h" }
local RUNTIME_HEADER = "src/core/lt_cuda.h"
-- Headers whose structs cross the table (their layout is part of the version).
local TYPE_HEADERS = { "src/lt.h", "src/lt_ops.h", "src/lt_quant.h", "src/core/cache_alloc.h" }
local OUT = "src/core/cuda_api/"
local WIDTH = 100
local HOW = "luajit tools/gen_cuda_api.lua"

local function die(msg)
    io.stderr:write("gen_cuda_api: ", msg, "\n")
    os.exit(1)
end

local function read(path)
    local f, err = io.open(path, "rb")
    if not f then die(err) end
    local s = f:read("*a")
    f:close()
    return s
end

-- Comments and preprocessor lines removed, whitespace runs made one space.
local function code_of(text)
    text = text:gsub("/%*.-%*/", " "):gsub("//[^\n]*", " ")
    local lines = {}
    for line in (text .. "\n"):gmatch("(.-)\n") do
        if not line:match("^%s*#") then lines[#lines + 1] = line end
    end
    return (table.concat(lines, " "):gsub("%s+", " "))
end

-- One parameter list "(const lt_tensor *x, int op)" -> { {decl=..., name=...}, ... }.
local function params_of(list, where)
    local inner = list:sub(2, -2):gsub("^%s+", ""):gsub("%s+$", "")
    local out = {}
    if inner == "void" or inner == "" then return out end
    for p in (inner .. ","):gmatch("([^,]*),") do
        p = p:gsub("^%s+", ""):gsub("%s+$", ""):gsub("%s*%*%s*", " *"):gsub("%* %*", "**")
        local name = p:match("([%a_][%w_]*)$")
        if not name or name == p or p:find("[%(%[]") then
            die(("%s: cannot read parameter '%s' (one named parameter, no arrays or function "
                .. "pointers)"):format(where, p))
        end
        out[#out + 1] = { decl = p, name = name }
    end
    return out
end

-- Every `RET lt_NAME(PARAMS);` in a header, in order.
local function functions_of(path)
    local list = {}
    for ret, name, params in code_of(read(path)):gmatch("([%w_]+) (lt_[%w_]+) ?(%b()) ?;") do
        local where = path .. ": " .. name
        list[#list + 1] = { ret = ret, name = name, params = params_of(params, where) }
    end
    return list
end

local function decls(params)
    local t = {}
    for i, p in ipairs(params) do t[i] = p.decl end
    return t
end

local function names(params)
    local t = {}
    for i, p in ipairs(params) do t[i] = p.name end
    return t
end

-- head .. items joined by ", " .. tail, wrapped under the opening parenthesis.
local function wrap(head, items, tail)
    if #items == 0 then return head .. "void" .. tail end
    local indent = head:match("^%s*") .. string.rep(" ", #head - #head:match("^%s*"))
    if #indent > WIDTH / 2 then indent = head:match("^%s*") .. "    " end
    local lines, cur, fresh = {}, head, true
    for i, item in ipairs(items) do
        local piece = item .. (i < #items and "," or tail)
        if not fresh and #cur + 1 + #piece > WIDTH then
            lines[#lines + 1] = cur
            cur, fresh = indent, true
        end
        cur = cur .. (fresh and "" or " ") .. piece
        fresh = false
    end
    lines[#lines + 1] = cur
    return table.concat(lines, "\n")
end

-- 32-bit FNV-1a of a string, as 8 hex digits.
local function fnv1a(s)
    local bit = require "bit"
    local h = bit.tobit(2166136261)
    for i = 1, #s do
        h = bit.bxor(h, s:byte(i))
        h = bit.tobit(bit.lshift(h, 24) + h * 403) -- h * 16777619 mod 2^32
    end
    return bit.tohex(h)
end

local function collect(root)
    local entries = {}
    for _, f in ipairs(functions_of(root .. RUNTIME_HEADER)) do
        if f.name:match("^lt_cuda_") then
            if f.ret ~= "int" and f.ret ~= "void" then
                die(("%s: %s returns %s; table entries return an int status or nothing")
                    :format(RUNTIME_HEADER, f.name, f.ret))
            end
            f.field = f.name:sub(#"lt_cuda_" + 1)
            f.group = "core/lt_cuda.h"
            entries[#entries + 1] = f
        end
    end
    if #entries == 0 then die(RUNTIME_HEADER .. " declares no lt_cuda_ function") end
    local ops = {}
    for _, h in ipairs(OP_HEADERS) do
        local wanted, found = {}, {}
        for _, n in ipairs(CUDA_OPS[h]) do wanted["lt_" .. n] = true end
        for _, f in ipairs(functions_of(root .. h)) do
            if wanted[f.name] then
                if f.ret ~= "int" then
                    die(("%s: %s does not return an int status"):format(h, f.name))
                end
                f.field = f.name:sub(#"lt_" + 1)
                f.name = "lt_cuda_" .. f.field
                f.group = h:match("[^/]+$")
                found[f.name] = true
                entries[#entries + 1] = f
                ops[#ops + 1] = f
            end
        end
        for _, n in ipairs(CUDA_OPS[h]) do
            if not found["lt_cuda_" .. n] then
                die(("CUDA_OPS names %s, which %s does not declare"):format(n, h))
            end
        end
    end
    local seen = {}
    for _, e in ipairs(entries) do
        if seen[e.field] then die("two entries named " .. e.field) end
        seen[e.field] = true
    end
    -- the version: every prototype, then every struct and unnamed enum (LT_MAX_DIMS) whose
    -- layout crosses the table
    local canon = {}
    for _, e in ipairs(entries) do
        local params = table.concat(decls(e.params), ", ")
        canon[#canon + 1] = ("%s %s(%s);"):format(e.ret, e.name, params)
    end
    for _, h in ipairs(TYPE_HEADERS) do
        local code = code_of(read(root .. h))
        for block in code:gmatch("struct [%w_]+ ?%b{}") do canon[#canon + 1] = block end
        for block in code:gmatch("enum ?%b{}") do canon[#canon + 1] = block end
    end
    return entries, ops, fnv1a(table.concat(canon, "\n"))
end

local function banner(file, what)
    return ("/* %s - GENERATED by tools/gen_cuda_api.lua; do not edit. It is made from\n"
        .. " * src/core/lt_cuda.h, src/lt_ops.h and src/lt_quant.h: change those (or the tool's list of\n"
        .. " * CUDA ops) and run `%s` (the test cuda_api_fresh fails\n"
        .. " * until then).\n *\n%s */\n")
        :format(file, HOW, what)
end

local function by_group(entries, fn)
    local out, group = {}, nil
    for _, e in ipairs(entries) do
        if e.group ~= group then
            group = e.group
            out[#out + 1] = ""
            out[#out + 1] = "/* " .. group .. " */"
        end
        out[#out + 1] = fn(e)
    end
    return table.concat(out, "\n")
end

local function gen_ops_h(ops)
    return banner("cuda_api/ops.h",
        " * The CUDA side of every op that has one: the CPU function's prototype with the lt_cuda_\n"
        .. " * prefix (src/lt_ops.h and src/lt_quant.h document the arguments). The C op checks\n"
        .. " * arguments, then calls these for CUDA tensors; they may assume the checks passed and that\n"
        .. " * every tensor argument is on the same device. Implemented in the .cu files of cuda/; the\n"
        .. " * core's functions of these names (forward.c) call them through the backend's table.")
        .. "#ifndef LT_CUDA_API_OPS_H\n#define LT_CUDA_API_OPS_H\n\n"
        .. "#include \"lt_ops.h\"\n#include \"lt_quant.h\"\n\n"
        .. "#ifdef __cplusplus\nextern \"C\" {\n#endif\n"
        .. by_group(ops, function(e)
            return wrap("int " .. e.name .. "(", decls(e.params), ");")
        end)
        .. "\n\n#ifdef __cplusplus\n}\n#endif\n\n#endif\n"
end

local function gen_table_h(entries, version)
    return banner("cuda_api/table.h",
        " * The table the CUDA backend hands the core: a pointer to the backend's implementation of\n"
        .. " * every function of core/lt_cuda.h and every op twin of cuda_api/ops.h, under the name\n"
        .. " * without its lt_cuda_ prefix. The backend exports one symbol, lt_cuda_backend_api, which\n"
        .. " * returns it; core/cuda_loader.c checks version and size before using any other field.")
        .. "#ifndef LT_CUDA_API_TABLE_H\n#define LT_CUDA_API_TABLE_H\n\n#include <stdint.h>\n\n"
        .. "#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n"
        .. "/* A hash of every entry's prototype and of the layout of the structs they take. */\n"
        .. ("#define LT_CUDA_API_VERSION 0x%su\n\n"):format(version)
        .. "typedef struct lt_cuda_api {\n"
        .. "    uint32_t version; /* LT_CUDA_API_VERSION of the headers the backend was built from */\n"
        .. "    uint32_t size;    /* sizeof(lt_cuda_api) there */\n"
        .. (by_group(entries, function(e)
            return wrap("    " .. e.ret .. " (*" .. e.field .. ")(", decls(e.params), ");")
        end):gsub("\n/%*", "\n    /*"))
        .. "\n} lt_cuda_api;\n\n"
        .. "/* The backend's one exported symbol: its table, which lives as long as the process. */\n"
        .. "#define LT_CUDA_BACKEND_ENTRY \"lt_cuda_backend_api\"\n"
        .. "__attribute__((visibility(\"default\"))) const lt_cuda_api *lt_cuda_backend_api(void);\n"
        .. "\n#ifdef __cplusplus\n}\n#endif\n\n#endif\n"
end

local function gen_table_init_h(entries)
    local items = {}
    for _, e in ipairs(entries) do items[#items + 1] = "    " .. e.name .. "," end
    return banner("cuda_api/table_init.h",
        " * The backend's table: its own function for every entry, in the order of cuda_api/table.h.\n"
        .. " * Included once, by cuda/context.cu, which exports lt_cuda_backend_api.")
        .. "#ifndef LT_CUDA_API_TABLE_INIT_H\n#define LT_CUDA_API_TABLE_INIT_H\n\n"
        .. "static const lt_cuda_api lt_cuda_api_table = {\n"
        .. "    LT_CUDA_API_VERSION,\n    (uint32_t)sizeof(lt_cuda_api),\n"
        .. table.concat(items, "\n")
        .. "\n};\n\n#endif\n"
end

local function gen_forward_c(entries)
    local body = by_group(entries, function(e)
        local head = wrap(e.ret .. " " .. e.name .. "(", decls(e.params), ") {")
        if e.ret == "void" then
            return head .. "\n    const lt_cuda_api *api = lt_cuda_backend_quiet();\n"
                .. wrap("    if (api) api->" .. e.field .. "(", names(e.params), ");") .. "\n}\n"
        end
        return head .. "\n    const lt_cuda_api *api;\n    LT_TRY(lt_cuda_backend_get(&api));\n"
            .. wrap("    return api->" .. e.field .. "(", names(e.params), ");") .. "\n}\n"
    end)
    return banner("cuda_api/forward.c",
        " * The core's side of the table: for every entry, a function of the entry's own name that\n"
        .. " * loads the backend on first use (core/cuda_loader.c) and calls its implementation. An int\n"
        .. " * function returns the loader's failure when the backend cannot load; a void one does\n"
        .. " * nothing then (it frees or sets something no device has yet). These are exported, so the\n"
        .. " * C tests reach the settings and hooks with dlsym(RTLD_DEFAULT, \"lt_cuda_...\").")
        .. "#include \"core/internal.h\"\n"
        .. body:gsub("\n(/%* [^\n]* %*/)\n", "\n%1\n\n") .. ""
end

local root, check = nil, false
local i = 1
while i <= #arg do
    if arg[i] == "--check" then
        check = true
    elseif arg[i] == "--root" then
        i = i + 1
        root = arg[i]
    else
        die("unknown argument " .. arg[i] .. " (usage: " .. HOW .. " [--check] [--root DIR])")
    end
    i = i + 1
end
root = root or ((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/..")
root = root:gsub("/*$", "") .. "/"

local entries, ops, version = collect(root)
local files = {
    { "ops.h", gen_ops_h(ops) },
    { "table.h", gen_table_h(entries, version) },
    { "table_init.h", gen_table_init_h(entries) },
    { "forward.c", gen_forward_c(entries) },
}
local stale = {}
for _, f in ipairs(files) do
    local path = root .. OUT .. f[1]
    local fh = io.open(path, "rb")
    local old = fh and fh:read("*a")
    if fh then fh:close() end
    if old ~= f[2] then
        if check then
            stale[#stale + 1] = OUT .. f[1]
        else
            local out = assert(io.open(path, "wb"))
            out:write(f[2])
            out:close()
            print("wrote " .. OUT .. f[1])
        end
    end
end
if #stale > 0 then
    die("stale: " .. table.concat(stale, ", ") .. "; run `" .. HOW .. "` in the source root")
end
