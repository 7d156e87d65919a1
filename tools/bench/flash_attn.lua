--[[
flash_attn.lua - FlashAttention speed: forward and backward TFLOP/s of luatrain's attention
kernel (cuda/attention.cu) over sequence lengths, head dims and masks; the luatrain side of
tools/bench/flash_attn.sh, whose peer is flash_attn_sdpa.py (PyTorch's
scaled_dot_product_attention, flash and cuDNN back ends, on the same shapes).

    luatrain tools/bench/flash_attn.lua [seqs=512,1024,2048,4096,8192,16384] [dims=64,128]
        [dtype=bf16] [total_tokens=16384] [reps=20] [json=FILE] [device=cuda]

The grid is FlashAttention's published one: for each sequence length T and head dim D, with
and without the causal mask, batch B = total_tokens / T (so every point holds the same
16k tokens), H = hidden / D heads of a 2048-wide hidden state (32 heads of 64, 16 of 128),
as many key/value heads as query heads (MHA). q, k, v, dout are (B, T, H, D), random
normal, in `dtype`; out, dq, dk, dv are preallocated like q and lse (B, H, T) in f32, so the
timed calls allocate nothing.

FLOPs are counted as FlashAttention counts them: the forward is two T x T x D products per
head, 4 * B * H * T * T * D, halved when causal; the backward is 2.5 times the forward (five
products instead of two). TFLOP/s = FLOPs / median time.

Timing. Three warm-up calls, then `reps` samples. The library exposes no device events,
so each sample is the host clock around a group of back-to-back calls between two
lt.cuda.synchronize() (METHOD.md: synchronize before reading a host clock); the group has as
many calls as make about `sample_ms` of work (measured once after the warm-up), so the
synchronize round trip (tens of microseconds) stays near 1% of a sample even at T = 512,
where one forward takes ~0.2 ms on an H100. Time per call = sample / group size; the table
gives the median over samples. The calls alternate between two input sets (q, k, v, dout
and their out, lse), so the timed code never rereads one set from the L2 cache; each set
is 5 x 64 MiB at the default sizes, far above the H100's 50 MB of L2 anyway.

Correctness first. Before a point is timed, its outputs are poisoned with NaN and the
forward and backward run once; the same kernels then run in f32 on the same inputs
(converted to f32), and ||x - x_f32|| / ||x_f32|| for out, lse, dq, dk, dv must be at most
`tol` (2e-2; bf16 operands land between 1e-3 and 1e-2). NaN fails. A point that fails is
not timed; the script carries on with the others and exits 1 at the end, naming them.

On the CPU (device=cpu dtype=f32, for trying the script out) the same runs on
src/ops/attention.c; the check then compares f32 with f32 and reads 0.

Prints a table; with json=FILE also writes one JSON line per point (engine "luatrain"),
rewritten after every point so a crash keeps what was measured.
]]
local lt = require "luatrain"
package.path = "tools/bench/?.lua;" .. package.path
local bench = require "benchutil"
local F = lt.nn.functional

local cfg = lt.config {
    seqs = { "512,1024,2048,4096,8192,16384", "sequence lengths T" },
    dims = { "64,128", "head dims D" },
    dtype = { "bf16", "dtype of q, k, v, out and the gradients", choices = { "bf16", "f16", "f32" } },
    total_tokens = { 16384, "B * T at every point (B = max(1, total_tokens / T))", type = "int" },
    hidden = { 2048, "H * D: heads = hidden / D", type = "int" },
    reps = { 20, "timed samples per measurement (median reported)", type = "int" },
    sample_ms = { 2, "about this much device work per sample (calls grouped to reach it)" },
    tol = { 2e-2, "largest relative L2 error against the f32 run" },
    device = { "cuda", "where to run", choices = { "cuda", "cpu" } },
    threads = { 0, "CPU threads for device=cpu (0: all cores)", type = "int" },
    json = { "", "write one JSON line per point here" },
}

local on_cuda = cfg.device == "cuda"
if on_cuda and not lt.cuda.is_available() then
    io.stderr:write("flash_attn: no CUDA device (device=cpu dtype=f32 runs the CPU kernel)\n")
    os.exit(2)
end
if not on_cuda then
    if cfg.dtype ~= "f32" then
        io.stderr:write("flash_attn: the CPU attention takes f32 only; give dtype=f32\n")
        os.exit(2)
    end
    lt.set_num_threads(cfg.threads)
end

local now = lt.fs.now
local sync = on_cuda and function() lt.cuda.synchronize() end or function() end

local function numbers(s, what)
    local t = {}
    for v in s:gmatch("[^,%s]+") do
        local n = tonumber(v)
        if not n or n ~= math.floor(n) or n < 1 then
            io.stderr:write(("flash_attn: %s: '%s' is not a positive integer\n"):format(what, v))
            os.exit(2)
        end
        t[#t + 1] = n
    end
    return t
end
local seqs, dims = numbers(cfg.seqs, "seqs"), numbers(cfg.dims, "dims")
for _, D in ipairs(dims) do
    if cfg.hidden % D ~= 0 then
        io.stderr:write(("flash_attn: hidden %d is not a multiple of head dim %d\n"):format(cfg.hidden, D))
        os.exit(2)
    end
end

local function machine()
    if on_cuda then
        local i = lt.cuda.device_info()
        return ("%s (sm_%d%d, %d SMs, %.0f GiB)"):format(i.name, i.major, i.minor, i.sm_count,
            i.total_bytes / 2 ^ 30)
    end
    return ("%s, %d threads"):format(bench.cpu_name(), lt.get_num_threads())
end
local device_name = machine()

local function median(xs)
    local s = {}
    for i, x in ipairs(xs) do s[i] = x end
    table.sort(s)
    local n = #s
    if n % 2 == 1 then return s[(n + 1) / 2] end
    return (s[n / 2] + s[n / 2 + 1]) / 2
end

-- Seconds per call of fn(set): warm-up, then one call alone to size the groups, then
-- cfg.reps groups. Returns the median and the fastest sample, per call.
local function time_calls(fn)
    for i = 1, 3 do fn(i % 2 + 1) end
    sync()
    local t0 = now()
    fn(1)
    sync()
    local one = math.max(now() - t0, 1e-7)
    local group = math.max(1, math.min(200, math.ceil(cfg.sample_ms * 1e-3 / one)))
    local samples, k = {}, 0
    for r = 1, cfg.reps do
        sync()
        t0 = now()
        for _ = 1, group do
            k = k + 1
            fn(k % 2 + 1)
        end
        sync()
        samples[r] = (now() - t0) / group
    end
    local best = math.huge
    for _, s in ipairs(samples) do best = math.min(best, s) end
    return median(samples), best, group
end

-- ||a - b|| / ||b|| (b is the f32 reference); NaN stays NaN so the caller's test fails it.
local function rel_err(a, b)
    local diff = a - b -- f32, on a's device (a is converted to f32 for the subtraction)
    local e = diff:norm() / b:norm()
    diff:free()
    return e
end

local function free_all(ts)
    for _, t in pairs(ts) do t:free() end
end

-- One grid point: check, then time. Returns the record for the table and the JSON.
local function run_point(T, D, causal)
    local B = math.max(1, math.floor(cfg.total_tokens / T))
    local H = math.floor(cfg.hidden / D)
    local opts = { dtype = cfg.dtype, device = cfg.device }
    local f32 = { dtype = "f32", device = cfg.device }
    -- two input sets; set[i] = { q, k, v, dout (B, T, H, D); out (B, T, H, D); lse (B, H, T) f32 }
    local set = {}
    for i = 1, 2 do
        set[i] = {
            q = lt.randn(B, T, H, D, opts), k = lt.randn(B, T, H, D, opts),
            v = lt.randn(B, T, H, D, opts), dout = lt.randn(B, T, H, D, opts),
            out = lt.empty(B, T, H, D, opts), lse = lt.empty(B, H, T, f32),
        }
    end
    -- gradients (B, T, H, D), shared by both sets: only the last write is ever read
    local grads = { dq = lt.empty(B, T, H, D, opts), dk = lt.empty(B, T, H, D, opts),
        dv = lt.empty(B, T, H, D, opts) }
    local fwd_opts, bwd_opts = {}, { causal = causal, dq = grads.dq, dk = grads.dk, dv = grads.dv }
    for i = 1, 2 do fwd_opts[i] = { causal = causal, out = set[i].out, lse = set[i].lse } end

    local function fwd(i)
        local s = set[i]
        F.flash_attention(s.q, s.k, s.v, fwd_opts[i])
    end
    local function bwd(i)
        local s = set[i]
        F.flash_attention_backward(s.dout, s.q, s.k, s.v, s.out, s.lse, bwd_opts)
    end

    -- check on set 1 with poisoned outputs (every element must be written), against the
    -- same kernels in f32 on the same values
    local nan = 0 / 0
    for _, t in ipairs({ set[1].out, set[1].lse, grads.dq, grads.dk, grads.dv }) do t:fill_(nan) end
    fwd(1)
    bwd(1)
    local s1 = set[1]
    local ref = { q = s1.q:to("f32"), k = s1.k:to("f32"), v = s1.v:to("f32"), dout = s1.dout:to("f32") }
    if cfg.dtype == "f32" then -- :to returned the tensors themselves; copy so free_all is safe
        for name, t in pairs(ref) do ref[name] = t:clone() end
    end
    -- the f32 outputs are allocated here: ops/nn.lua makes missing ones on the host
    ref.out, ref.lse = lt.empty(B, T, H, D, f32), lt.empty(B, H, T, f32)
    ref.dq, ref.dk, ref.dv = lt.empty(B, T, H, D, f32), lt.empty(B, T, H, D, f32), lt.empty(B, T, H, D, f32)
    F.flash_attention(ref.q, ref.k, ref.v, { causal = causal, out = ref.out, lse = ref.lse })
    F.flash_attention_backward(ref.dout, ref.q, ref.k, ref.v, ref.out, ref.lse,
        { causal = causal, dq = ref.dq, dk = ref.dk, dv = ref.dv })
    local err = { out = rel_err(s1.out, ref.out), lse = rel_err(s1.lse, ref.lse),
        dq = rel_err(grads.dq, ref.dq), dk = rel_err(grads.dk, ref.dk), dv = rel_err(grads.dv, ref.dv) }
    free_all(ref)
    local ok, worst = true, 0
    for _, e in pairs(err) do
        if not (e <= cfg.tol) then ok = false end
        if e ~= e or e > worst then worst = e end -- NaN sticks: NaN > x is false
        if worst ~= worst then break end
    end

    local flops_fwd = 4 * B * H * T * T * D * (causal and 0.5 or 1)
    local rec = { engine = "luatrain", device = device_name, dtype = cfg.dtype, seq = T, dim = D,
        causal = causal, batch = B, heads = H, kv_heads = H, flops_fwd = flops_fwd,
        flops_bwd = 2.5 * flops_fwd, check_ok = ok, tol = cfg.tol }
    -- JSON has no NaN: a NaN error is written as the string "nan"
    for name, e in pairs(err) do rec["err_" .. name] = e == e and e or "nan" end
    if ok then
        fwd(2) -- set 2's out and lse, which its backward reads
        local fm, fb, fg = time_calls(fwd)
        local bm, bb, bg = time_calls(bwd)
        rec.fwd_s, rec.fwd_min_s, rec.fwd_group = fm, fb, fg
        rec.bwd_s, rec.bwd_min_s, rec.bwd_group = bm, bb, bg
        rec.fwd_tflops = flops_fwd / fm / 1e12
        rec.bwd_tflops = 2.5 * flops_fwd / bm / 1e12
    end
    sync()
    for i = 1, 2 do free_all(set[i]) end
    free_all(grads)
    lt.memory.collect()
    return rec, worst
end

print(("# luatrain tools/bench/flash_attn.lua, %s, commit %s"):format(os.date("!%Y-%m-%dT%H:%MZ"), bench.commit()))
print(("# device: %s; dtype %s; B*T = %d tokens; hidden %d (H = hidden / D, Hkv = H); %d samples, median"):format(
    device_name, cfg.dtype, cfg.total_tokens, cfg.hidden, cfg.reps))
print("# FLOPs: forward 4*B*H*T*T*D (x0.5 causal), backward 2.5x forward; err: worst relative L2 of out/lse/dq/dk/dv vs f32")
print(("%6s %4s %6s %4s %3s %10s %8s %10s %8s %9s"):format("T", "D", "causal", "B", "H",
    "fwd ms", "fwd TF/s", "bwd ms", "bwd TF/s", "err"))

local lines, failed = {}, {}
for _, T in ipairs(seqs) do
    for _, D in ipairs(dims) do
        for _, causal in ipairs({ true, false }) do
            local r, worst = run_point(T, D, causal)
            if r.check_ok then
                print(("%6d %4d %6s %4d %3d %10.3f %8.1f %10.3f %8.1f %9.2e"):format(T, D, tostring(causal),
                    r.batch, r.heads, r.fwd_s * 1e3, r.fwd_tflops, r.bwd_s * 1e3, r.bwd_tflops, worst))
            else
                print(("%6d %4d %6s %4d %3d   CHECK FAILED (not timed): err out %s lse %s dq %s dk %s dv %s; tol %g"):format(
                    T, D, tostring(causal), r.batch, r.heads, tostring(r.err_out), tostring(r.err_lse), tostring(r.err_dq),
                    tostring(r.err_dk), tostring(r.err_dv), cfg.tol))
                failed[#failed + 1] = ("T=%d D=%d causal=%s"):format(T, D, tostring(causal))
            end
            io.stdout:flush()
            lines[#lines + 1] = lt.json.encode(r)
            if cfg.json ~= "" then lt.fs.write_atomic(cfg.json, table.concat(lines, "\n") .. "\n") end
        end
    end
end
if #failed > 0 then
    io.stderr:write(("flash_attn: %d point(s) failed the check against f32 and were not timed: %s\n"):format(
        #failed, table.concat(failed, "; ")))
    os.exit(1)
end
