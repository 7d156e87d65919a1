--[[
test_recipe_shard_base.lua - recipes/qlora_llama.lua under mpirun with 2 ranks, shard_base=true
(each rank keeps half of the 4-bit base and gathers each layer as it runs) against the same
run with the base whole on every rank: the same losses in the log and the same adapter file,
byte for byte, with evaluations during training and answers generated before and after;
and in both, rank 0's logged peak is what `luatrain plan --world=2 --rank=0` says.
And vocab_parallel=true (the embedding and head split by rows over 2 ranks that train as one
model) logs the single process's losses within f32 rounding. Skips (exit 77) without mpirun.
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"

local _, has = T.run("command -v mpirun")
if has ~= 0 then
    print("SKIP: mpirun not found (install openmpi-bin; tools/run.sh test does)")
    os.exit(77)
end

local ARGS = "steps=3 eval_every=2 eval_samples=2 max_new_tokens=2"

local function run(sb, extra)
    local dir = os.tmpname()
    os.remove(dir)
    local out, code = T.run(("bash tests/dist/mpirun.sh 2 240 %s recipes/qlora_llama.lua %s shard_base=%s %s "
        .. "output_dir=%s"):format(T.luatrain(), ARGS, tostring(sb), extra or "", dir))
    T.eq(code, 0, out)
    local losses, peak = {}, nil
    for line in io.lines(dir .. "/log.jsonl") do
        losses[#losses + 1] = line:match('"loss":([%d.e+-]+)')
        peak = tonumber(line:match('"peak_bytes":(%d+)')) or peak
    end
    -- rank 0's peak is its plan (luatrain plan --world=2 --rank=0), to the byte
    if not extra then
        local plan, pc = T.run(("%s plan recipes/qlora_llama.lua %s shard_base=%s --world=2 --rank=0 --json"):format(
            T.luatrain(), ARGS, tostring(sb)))
        T.eq(pc, 0, plan)
        T.eq(tonumber(plan:match('"train":(%d+)')), peak, "rank 0's log peak_bytes is its plan")
    end
    local f = io.open(dir .. "/adapter_model.safetensors", "rb")
    local bytes = f:read("*a")
    f:close()
    T.run("rm -rf " .. dir)
    return losses, bytes
end

T.test("shard_base=true, and zero=3, train like the whole base under DDP, bit for bit", function()
    local l0, a0 = run(false)
    local l1, a1 = run(true)
    T.eq(#l0, 3, "three steps logged")
    T.eq(l1, l0, "losses")
    T.ok(a1 == a0, "the adapter files are the same bytes")
    -- ZeRO-3 (the adapters sharded, each layer gathered as it runs), with and without the base sharded
    local l2, a2 = run(false, "zero=3")
    T.eq(l2, l0, "zero=3 losses")
    T.ok(a2 == a0, "zero=3: the same adapter bytes")
    local l3, a3 = run(true, "zero=3")
    T.eq(l3, l0, "zero=3 with shard_base: losses")
    T.ok(a3 == a0, "zero=3 with shard_base: the same adapter bytes")
end)

T.test("vocab_parallel=true: two ranks as one model train like one process, within f32 rounding", function()
    local function losses(cmd, dir)
        local out, code = T.run(cmd)
        T.eq(code, 0, out)
        local l, peak = {}, nil
        for line in io.lines(dir .. "/log.jsonl") do
            l[#l + 1] = tonumber(line:match('"loss":([%d.e+-]+)'))
            peak = tonumber(line:match('"peak_bytes":(%d+)')) or peak
        end
        T.run("rm -rf " .. dir)
        return l, peak
    end
    local d1, d2 = os.tmpname(), os.tmpname()
    os.remove(d1)
    os.remove(d2)
    local one = losses(("%s recipes/qlora_llama.lua %s output_dir=%s"):format(T.luatrain(), ARGS, d1), d1)
    local two, peak = losses(("bash tests/dist/mpirun.sh 2 240 %s recipes/qlora_llama.lua %s vocab_parallel=true "
        .. "output_dir=%s"):format(T.luatrain(), ARGS, d2), d2)
    local plan = T.run(("%s plan recipes/qlora_llama.lua %s vocab_parallel=true --world=2 --rank=0 --json"):format(
        T.luatrain(), ARGS))
    T.eq(tonumber(plan:match('"train":(%d+)')), peak, "rank 0's log peak_bytes is its plan")
    T.eq(#two, #one)
    for i = 1, #one do
        T.ok(math.abs(two[i] - one[i]) <= 1e-5 * math.abs(one[i]), ("step %d: %.9g vs %.9g"):format(i, two[i], one[i]))
    end
end)

T.done()
