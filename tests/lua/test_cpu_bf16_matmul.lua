--[[
test_cpu_bf16_matmul.lua - the CPU's bf16 matmul precision (lt.set_cpu_matmul_precision):
operands rounded to bf16, products accumulated in f32 by oneDNN. Every layout (transposed
operands, batches, alpha and beta, bf16 and f16 inputs) gives the f32 product of the
rounded operands up to the order of the f32 sums; products too small to gain stay f32 bit
for bit; and a Llama trained with it follows the f32 run's loss.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

local ok_dnnl, why = pcall(lt.set_cpu_matmul_precision, "bf16")
if not ok_dnnl then
    print("SKIP: " .. tostring(why))
    os.exit(77)
end
lt.set_cpu_matmul_precision("f32")

local function rounded(t) return t:to("bf16"):to("f32") end

local function rel(a, b) return (a - b):norm() / b:norm() end

-- The product under the bf16 precision, and the f32 product of the rounded operands.
local function both(a, b, opts)
    lt.set_cpu_matmul_precision("bf16")
    local ok, got = pcall(lt.ops.matmul, a, b, opts)
    lt.set_cpu_matmul_precision("f32")
    if not ok then error(got, 0) end
    return got, lt.ops.matmul(rounded(a), rounded(b), opts)
end

T.test("the setting", function()
    T.eq(lt.get_cpu_matmul_precision(), "f32")
    T.eq(lt.set_cpu_matmul_precision("bf16"), "f32", "returns the previous")
    T.eq(lt.get_cpu_matmul_precision(), "bf16")
    lt.set_cpu_matmul_precision("f32")
    T.raises(function() lt.set_cpu_matmul_precision("tf32") end, 'must be "f32" or "bf16", got tf32')
end)

T.test("every layout: the f32 product of the rounded operands", function()
    lt.manual_seed(3)
    for _, sh in ipairs({ { 300, 257, 129 }, { 64, 1000, 96 }, { 1, 4096, 512 } }) do
        local M, K, N = sh[1], sh[2], sh[3]
        for _, ta in ipairs({ false, true }) do
            for _, tb in ipairs({ false, true }) do
                local a = ta and lt.randn(K, M) or lt.randn(M, K)
                local b = tb and lt.randn(N, K) or lt.randn(K, N)
                local got, want = both(a, b, { trans_a = ta, trans_b = tb })
                T.ok(rel(got, want) < 1e-6, ("%dx%dx%d ta=%s tb=%s: %.3g"):format(M, K, N, tostring(ta), tostring(tb),
                    rel(got, want)))
                -- and the rounding is real: it differs from the f32 product by bf16's error
                local exact = lt.ops.matmul(a, b, { trans_a = ta, trans_b = tb })
                local e = rel(got, exact)
                T.ok(e > 1e-4 and e < 2 ^ -8 * 2, ("%dx%dx%d: bf16 error %.3g"):format(M, K, N, e))
            end
        end
    end
end)

T.test("batches, alpha and beta, bf16 and f16 operands", function()
    lt.manual_seed(4)
    local a, b = lt.randn(3, 200, 150), lt.randn(3, 150, 170)
    local got, want = both(a, b)
    T.ok(rel(got, want) < 1e-6, "batched")
    local c0 = lt.randn(200, 170)
    local c1, c2 = c0:clone(), c0:clone()
    lt.set_cpu_matmul_precision("bf16")
    lt.ops.matmul(a:select(1, 1), b:select(1, 1), { out = c1, alpha = 0.5, beta = 1 })
    lt.set_cpu_matmul_precision("f32")
    lt.ops.matmul(rounded(a:select(1, 1)), rounded(b:select(1, 1)), { out = c2, alpha = 0.5, beta = 1 })
    T.ok(rel(c1, c2) < 1e-6, ("alpha 0.5, beta 1: %.3g"):format(rel(c1, c2)))
    got, want = both(a:to("bf16"), b:to("f16"))
    T.ok(rel(got, want) < 1e-6, "bf16 x f16 operands")
end)

T.test("4-bit weights (QLoRA's base): the f32 product of the rounded operands, forward and backward", function()
    lt.manual_seed(6)
    for _, sh in ipairs({ { 64, 320, 200 }, { 37, 1000, 130 } }) do
        local N, out, inn = sh[1], sh[2], sh[3]
        local q = lt.quant.quantize(lt.randn(out, inn), { type = "nf4", blocksize = 64, double_quant = true })
        local W = rounded(q:dequantize("f32"))
        local x, dy = lt.randn(N, inn), lt.randn(N, out)
        lt.set_cpu_matmul_precision("bf16")
        local y = lt.quant.linear_forward(x, q)
        local y1 = lt.randn(N, out)
        local y2 = y1:clone()
        lt.quant.linear_forward(x, q, { out = y1, beta = 1 })
        local dx = lt.quant.linear_backward(dy, q)
        lt.set_cpu_matmul_precision("f32")
        local want_y = lt.ops.matmul(rounded(x), W, { trans_b = true })
        T.ok(rel(y, want_y) < 1e-6, ("forward %dx%dx%d: %.3g"):format(N, out, inn, rel(y, want_y)))
        lt.ops.matmul(rounded(x), W, { trans_b = true, out = y2, beta = 1 })
        T.ok(rel(y1, y2) < 1e-6, "forward with beta = 1")
        local want_dx = lt.ops.matmul(rounded(dy), W)
        T.ok(rel(dx, want_dx) < 1e-6, ("backward %dx%dx%d: %.3g"):format(N, out, inn, rel(dx, want_dx)))
        local f32 = lt.quant.linear_forward(x, q)
        T.ok(rel(y, f32) > 1e-4, "the bf16 path rounds")
    end
end)

T.test("small products stay f32, bit for bit", function()
    local a, b = lt.randn(8, 16), lt.randn(16, 8)
    local f32 = lt.ops.matmul(a, b)
    lt.set_cpu_matmul_precision("bf16")
    local got = lt.ops.matmul(a, b)
    lt.set_cpu_matmul_precision("f32")
    T.ok(got:equal(f32), "8 x 16 x 8")
end)

T.test("a Llama trained with bf16 matmuls follows the f32 run", function()
    local function run(p)
        lt.set_cpu_matmul_precision(p)
        lt.manual_seed(2)
        local model = lt.llama.new({ vocab_size = 256, hidden_size = 128, intermediate_size = 256,
            num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 4, max_position_embeddings = 64 })
        local text = ("the quick brown fox jumps over the lazy dog. "):rep(60)
        local res = lt.trainer.finetune{ model = model, train = lt.data.windows(lt.data.byte_stream(text), 8, 64, 1),
            steps = 30, lr = 3e-3, schedule = "constant" }
        lt.set_cpu_matmul_precision("f32")
        return res
    end
    local f32, bf16 = run("f32"), run("bf16")
    T.ok(bf16.loss_curve[1] ~= f32.loss_curve[1], "the bf16 run rounds")
    T.near(bf16.loss_curve[1], f32.loss_curve[1], 0.01, 0, "first loss")
    T.near(bf16.last_loss, f32.last_loss, 0.05, 0, "loss after 30 steps")
    T.ok(bf16.last_loss < 0.5 * bf16.first_loss, ("it learns: %.3f -> %.3f"):format(bf16.first_loss, bf16.last_loss))
end)

T.done()
