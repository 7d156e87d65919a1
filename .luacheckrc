-- luacheck settings for every Lua file of the project (ctest runs `luacheck .`).
std = "luajit"
-- Lua lines may run past the C code's 100 columns: error messages that name a file, a
-- field and the allowed values stay on one line, so they can be found with grep.
max_line_length = 150
ignore = {
    "581",      -- `not (x <= y)` is how NaN-aware comparisons are written here, on purpose
    "212/self", -- methods that ignore self keep the method form (callbacks, hooks)
}
exclude_files = {
    "lua/luatrain/cdef.lua", -- generated from the C headers (tools/gen_cdef.lua)
    "build*/**", ".gpu-deps/**", "node_modules/**",
}
-- a recipe used by the REPL test: its globals are what `luatrain -i` shows
files["tests/fixtures/recipes/train_config.lua"] = { allow_defined_top = true, ignore = { "131" } }
