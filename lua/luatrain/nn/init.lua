--[[
nn - modules under one contract (see nn/module.lua), and their functional kernels.

    local nn = lt.nn
    local layer = nn.Linear(64, 128)
    local y = layer:forward(x)
    local dx = layer:backward(x, dy)   -- layer:grad("weight") accumulates
]]
local module = require "luatrain.nn.module"
local layers = require "luatrain.nn.layers"
local llama = require "luatrain.nn.llama"

return {
    Module = module.Module,
    Sequential = module.Sequential,
    ModuleList = module.ModuleList,
    Linear = layers.Linear,
    Embedding = layers.Embedding,
    RMSNorm = layers.RMSNorm,
    MLP = llama.MLP,
    Attention = llama.Attention,
    DecoderLayer = llama.DecoderLayer,
    LlamaModel = llama.LlamaModel,
    LlamaForCausalLM = llama.LlamaForCausalLM,
    GradCheckpoint = require "luatrain.nn.grad_checkpoint",
    LoRALinear = require("luatrain.nn.lora").LoRALinear,
    QuantLinear = require("luatrain.nn.lora").QuantLinear,
    functional = require "luatrain.ops.nn",
}
