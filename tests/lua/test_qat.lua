--[[
test_qat.lua - quantization-aware training and post-training quantization (lt.qat):
  * a fake-quantized linear layer's forward equals a linear layer holding
    dequantize(quantize(W)) exactly, for int8 (per channel), int4 (Q4_0's groups of 32, one
    scale per row, and rows of 344 with a shorter last group) and nf4; its backward gives W
    the gradient of the dequantized weight (the straight-through estimator), bit for bit;
  * QAT as the last phase of a run (tiny_facts: 60 steps of full fine-tuning, then 30 with
    fake int4) ends with a smaller held-out loss after real int4 quantization than PTQ of the
    same run without that phase; convert() turns it into real quantized layers whose forward
    is the fake one's (int4 and int8 exactly; nf4 through lt.quant's kernel, within float
    rounding); int4's weights are GGUF Q4_0's;
  * LoRA on a fake-quantized base: the base's weights are on the int4 grid;
  * the PTQ report of the fine-tuned model: bytes and held-out loss per type against bf16,
    printed with the QAT numbers beside.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
lt.set_num_threads(2)

local function real(w, kind, group) return lt.qat.fake_quantize(w, kind, nil, group) end

T.test("fake-quantized forward = the dequantized weight's forward, and its backward is the STE", function()
    lt.manual_seed(3)
    for _, c in ipairs({ { "int8" }, { "nf4" }, { "int4", 32 }, { "int4", 0 }, { "int4", 32, 344 } }) do
        local kind, group, cols = c[1], c[2], c[3] or 128
        local lin = lt.nn.Linear(cols, 48)
        local fq = lt.qat.wrap(lin, kind, group)
        local x = lt.randn(2, 5, cols)
        local y = fq:forward(x):clone()
        local plain = lt.nn.Linear(cols, 48, { weight = real(lin.weight, kind, group) })
        T.ok(y:equal(plain:forward(x)), ("%s group %s cols %d: forward"):format(kind, tostring(group), cols))
        local dy = lt.randn(2, 5, 48)
        fq:zero_grad()
        plain:zero_grad()
        local dx = fq:backward(x, dy):clone()
        T.ok(dx:equal(plain:backward(x, dy)), kind .. ": dx through the dequantized weight")
        T.ok(fq._grads.weight:equal(plain._grads.weight), kind .. ": dW is the dequantized weight's")
    end
    -- the int4 values are Q4_0's: what lt.gguf writes for the same weight
    local w = lt.randn(4, 64)
    local path = os.tmpname()
    lt.gguf.write(path, {}, { { name = "w", dims = { 64, 4 }, type = "q4_0", data = function() return w:clone() end } })
    local f = lt.gguf.read(path)
    T.ok(f:tensor("w"):equal(lt.qat.fake_quantize(w, "int4")), "int4 = GGUF Q4_0 dequantized")
    f:close()
    os.remove(path)
end)

local DIR = "recipes/assets/tiny_facts"
local tok = lt.tokenizer.load(DIR .. "/model")
local train = lt.data.build(DIR .. "/train.jsonl", tok, { template = "llama3", train_on = "completion", max_len = 96 })
local eval = lt.data.build(DIR .. "/eval.jsonl", tok, { template = "llama3", train_on = "completion", max_len = 96 })
local STEPS, LAST = 60, 30

local function finetune(m, steps, lr)
    return lt.trainer.finetune{ model = m, train = train, batch_size = 8, seq_len = 96, steps = steps, lr = lr,
        eval_every = 0, on_step = function() end }
end
-- the run: STEPS of full fine-tuning at 1e-3, then LAST more at 3e-4, with fake int4 when qat
local function run(qat)
    lt.manual_seed(1)
    local m = lt.llama.from_pretrained(DIR .. "/model")
    finetune(m, STEPS, 1e-3)
    if qat then lt.qat.apply(m, { type = qat }) end
    local res = finetune(m, LAST, 3e-4)
    return m, res
end
local function held_out(m) return lt.trainer.eval_loss(m, eval, { batch_size = 8, seq_len = 96 }) end

T.test("QAT as a run's last phase beats PTQ of the same run after real int4; it converts exactly; the PTQ report",
    function()
    local plain = run(nil)
    local rows = lt.qat.ptq_report(plain, eval, { batch_size = 8, seq_len = 96 })
    io.write(("  PTQ of a %d+%d-step full fine-tune of tiny_facts (decoder linears; held-out loss):\n"):format(STEPS,
        LAST))
    for _, r in ipairs(rows) do
        io.write(("    %-5s %9d bytes  loss %.4f  gap %+.4f\n"):format(r.type, r.bytes, r.loss, r.gap))
        T.ok(r.loss == r.loss and r.loss < 5, r.type .. ": a finite loss")
    end
    T.eq({ rows[1].type, rows[2].type, rows[3].type, rows[4].type }, { "bf16", "int8", "nf4", "int4" })
    -- 4.5 bits a weight (an f16 scale per 32, an f32 one per 64), 8 and a scale per row, 16
    T.ok(math.max(rows[3].bytes, rows[4].bytes) < 0.6 * rows[2].bytes and rows[2].bytes < 0.55 * rows[1].bytes,
        "4-bit < int8 < bf16 in bytes")
    T.ok(held_out(plain) == held_out(plain), "the report leaves the model as it was")

    -- the same run with its last phase under fake int4
    local q = run("int4")
    local fake = held_out(q)
    q:eval()
    local ids = lt.tensor({ tok:encode("What pet does Guzuzu have?") }, { dtype = "i64" })
    local lf = q:forward(ids):clone()
    lt.qat.convert(q)
    T.ok(q:forward(ids):equal(lf), "int4: the converted model's logits are the fake one's")
    local converted = held_out(q)
    T.eq(converted, fake, "and its held-out loss")
    local unq = lt.trainer.eval_loss(plain, eval, { batch_size = 8, seq_len = 96 })
    io.write(("  after real int4: QAT %.4f (gap %+.4f), PTQ %.4f (gap %+.4f), against the run unquantized %.4f\n"):format(
        converted, converted - unq, rows[4].loss, rows[4].loss - unq, unq))
    T.ok(converted < rows[4].loss, "QAT's int4 model has the smaller held-out loss")
    -- int8 converts to its dequantized weights (exact); nf4 to lt.quant's 4-bit layer, whose
    -- kernel dequantizes tile by tile (the same weights, float rounding apart)
    for _, kind in ipairs({ "int8", "nf4" }) do
        lt.manual_seed(1)
        local m = lt.llama.from_pretrained(DIR .. "/model")
        lt.qat.apply(m, { type = kind })
        m:eval()
        local a = m:forward(ids):clone()
        lt.qat.convert(m)
        local d = (m:forward(ids) - a):abs():max():item()
        T.ok(kind == "int8" and d == 0 or d < 1e-3, ("%s: converted logits within %g"):format(kind, d))
    end
end)

T.test("LoRA on a fake-quantized base: the frozen base sits on the int4 grid", function()
    lt.manual_seed(1)
    local m = lt.llama.from_pretrained(DIR .. "/model")
    lt.lora.apply(m, { r = 4, alpha = 8 })
    lt.qat.apply(m, { type = "int4" })
    local q = m.model.layers:children()[1].self_attn.q_proj
    T.ok(q.weight:equal(lt.qat.fake_quantize(q.weight, "int4")), "already quantized: a fixed point")
    T.raises(function() lt.qat.apply(m, { type = "int3" }) end, "type must be int8, int4 or nf4")
end)

T.done()
