--[[
luatrain - fine-tune Llama-family models from Lua.

    local lt = require "luatrain"
    local x = lt.randn(4, 8)
    print(x:matmul(x:t()):sum():item())

The library is assembled from one module per concern; this file only gathers them.
]]
local core = require "luatrain.core"
local tensor = require "luatrain.tensor"

local lt = {
    version = require("ffi").string(core.C.lt_version()),
    Tensor = tensor.Tensor,
    is_tensor = tensor.is_tensor,
    tensor = tensor.tensor,
    empty = tensor.empty,
    zeros = tensor.zeros,
    ones = tensor.ones,
    full = tensor.full,
    randn = tensor.randn,
    rand = tensor.rand,
    randint = tensor.randint,
    arange = tensor.arange,
    manual_seed = tensor.manual_seed,
    get_rng_state = tensor.get_rng_state,
    set_rng_state = tensor.set_rng_state,
}

return lt
