--[[
test_flash_attention.lua - the tiled CPU attention (src/ops/attention.c) against a naive
float64 attention written here, one query row at a time.

For every case the reference computes, in f64 from the same f32 inputs, the output, the
log-sum-exp of each row and the analytic gradients dQ, dK, dV of sum(out * dout). Each f32
result must satisfy, per tensor:
  ||got - ref|| / ||ref|| <= 1e-5      (norms over the whole tensor)
  max |got - ref| <= 1e-5 * max |ref|  (no single element off by more than that)
Why the second bound holds for a correct f32 kernel: f32 rounds at u = 6e-8 relative, and
the longest chains here are a D-term score dot product (its error moves p by the same
relative amount through exp) followed by sums over at most S = 4097 keys, in tiles, with
partial sums kept in 16 lanes. Rounding errors of those sums grow like sqrt(terms) * u,
about 64 * 6e-8 = 4e-6 of the magnitudes summed at the longest row, so 1e-5 of the
tensor's largest element leaves room; a masking, indexing or rescaling mistake moves
elements by a sizeable fraction of it. (The largest errors measured are printed.)
]]
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"
local ffi = require "ffi"
local F = lt.nn.functional

local REL, MAXREL = 1e-5, 1e-5

-- f64 copy of a tensor's elements in (B, T, H, D) row-major order.
local function to_f64(t)
    local c = t:contiguous():float()
    local n = c:numel()
    local p = ffi.cast("float*", c:data_ptr())
    local out = ffi.new("double[?]", n > 0 and n or 1)
    for i = 0, n - 1 do out[i] = p[i] end
    return out, n
end

-- Segments as the kernel sees them: { b, q0, nq, k0, nk } per batch row or packed sequence.
local function segments(B, Tq, S, cu)
    local segs = {}
    if cu then
        for g = 1, #cu - 1 do
            local b, t0, len = math.floor(cu[g] / Tq), cu[g] % Tq, cu[g + 1] - cu[g]
            segs[#segs + 1] = { b, t0, len, t0, len }
        end
    else
        for b = 0, B - 1 do segs[#segs + 1] = { b, 0, Tq, 0, S } end
    end
    return segs
end

-- Naive attention in f64. Returns tables of f64 arrays { out, lse, dq, dk, dv } and sizes.
local function reference(q, k, v, dout, opts)
    local B, Tq, H, D = q:size(1), q:size(2), q:size(3), q:size(4)
    local S, Hkv = k:size(2), k:size(3)
    local group = H / Hkv
    local scale = opts.scale or 1 / math.sqrt(D)
    local causal = opts.causal ~= false
    local qd, kd, vd, god = to_f64(q), to_f64(k), to_f64(v), to_f64(dout)
    local nq_el, nk_el = B * Tq * H * D, B * S * Hkv * D
    local o = ffi.new("double[?]", nq_el)
    local lse = ffi.new("double[?]", B * H * Tq)
    local dq = ffi.new("double[?]", nq_el)
    local dk = ffi.new("double[?]", nk_el)
    local dv = ffi.new("double[?]", nk_el)
    local sc = ffi.new("double[?]", S + 1)  -- scores, then probabilities, of one row
    local dp = ffi.new("double[?]", S + 1)
    local exp, log = math.exp, math.log
    for _, g in ipairs(segments(B, Tq, S, opts.cu)) do
        local b, q0, nq, k0, nk = g[1], g[2], g[3], g[4], g[5]
        for h = 0, H - 1 do
            local hk = math.floor(h / group)
            for i = 0, nq - 1 do
                local n = nk
                if causal then n = math.max(0, math.min(nk, i + nk - nq + 1)) end
                local qo = ((b * Tq + q0 + i) * H + h) * D
                local li = (b * H + h) * Tq + q0 + i
                if n == 0 then
                    lse[li] = -math.huge
                else
                    local m = -math.huge
                    for j = 0, n - 1 do
                        local ko = ((b * S + k0 + j) * Hkv + hk) * D
                        local s = 0
                        for d = 0, D - 1 do s = s + qd[qo + d] * kd[ko + d] end
                        s = s * scale
                        sc[j] = s
                        if s > m then m = s end
                    end
                    local l = 0
                    for j = 0, n - 1 do
                        local e = exp(sc[j] - m)
                        sc[j] = e
                        l = l + e
                    end
                    lse[li] = m + log(l)
                    -- out = P V and dP = dO V^T
                    for j = 0, n - 1 do
                        local ko = ((b * S + k0 + j) * Hkv + hk) * D
                        local p = sc[j] / l
                        sc[j] = p
                        local s = 0
                        for d = 0, D - 1 do
                            local vv = vd[ko + d]
                            o[qo + d] = o[qo + d] + p * vv
                            s = s + god[qo + d] * vv
                        end
                        dp[j] = s
                    end
                    local delta = 0
                    for d = 0, D - 1 do delta = delta + god[qo + d] * o[qo + d] end
                    -- dS = P * (dP - delta); dQ = scale dS K, dK += scale dS^T Q, dV += P^T dO
                    for j = 0, n - 1 do
                        local ko = ((b * S + k0 + j) * Hkv + hk) * D
                        local p = sc[j]
                        local ds = p * (dp[j] - delta) * scale
                        for d = 0, D - 1 do
                            dq[qo + d] = dq[qo + d] + ds * kd[ko + d]
                            dk[ko + d] = dk[ko + d] + ds * qd[qo + d]
                            dv[ko + d] = dv[ko + d] + p * god[qo + d]
                        end
                    end
                end
            end
        end
    end
    return { out = o, lse = lse, dq = dq, dk = dk, dv = dv }
end

-- Relative norm error and max-abs error (and the largest |ref|) of a tensor against f64.
-- Where the reference is all zeros (one visible key: dS = P (dP - D_i) = 0) both measures
-- are absolute.
local function errors(got, ref)
    local g, n = to_f64(got)
    local num, den, maxd, maxr = 0, 0, 0, 0
    for i = 0, n - 1 do
        local r = ref[i]
        if r == -math.huge then
            if g[i] ~= -math.huge then return math.huge, math.huge, 0 end
        else
            local d = math.abs(g[i] - r)
            if d ~= d then return math.huge, math.huge, 0 end
            num, den = num + d * d, den + r * r
            if d > maxd then maxd = d end
            if math.abs(r) > maxr then maxr = math.abs(r) end
        end
    end
    return den > 0 and math.sqrt(num / den) or math.sqrt(num), maxd, maxr
end

local worst = { rel = 0, maxrel = 0 }

-- Runs forward and backward of flash attention and compares all five results.
local function check_case(name, B, Tq, S, H, Hkv, D, causal, extra)
    extra = extra or {}
    T.test(name, function()
        lt.manual_seed(#name)
        local q = lt.randn(B, Tq, H, D)
        local k, v = extra.k or lt.randn(B, S, Hkv, D), extra.v or lt.randn(B, S, Hkv, D)
        local dout = lt.randn(B, Tq, H, D)
        local cs = extra.cu and lt.tensor(extra.cu, "i32") or nil
        local opts = { causal = causal, cu_seqlens = cs, scale = extra.scale }
        local out, lse = F.flash_attention(q, k, v, opts)
        local dq, dk, dv = F.flash_attention_backward(dout, q, k, v, out, lse, opts)
        local ref = reference(q, k, v, dout, { causal = causal, cu = extra.cu, scale = extra.scale })
        local parts = {}
        for _, e in ipairs({ { "out", out }, { "lse", lse }, { "dq", dq }, { "dk", dk }, { "dv", dv } }) do
            local rel, maxd, maxr = errors(e[2], ref[e[1]])
            local mr = maxr > 0 and maxd / maxr or maxd
            T.ok(rel <= REL, ("%s: ||diff|| / ||ref|| = %.3g > %g"):format(e[1], rel, REL))
            T.ok(mr <= MAXREL, ("%s: max |diff| = %.3g is %.3g of max |ref| %.3g (> %g)"):format(
                e[1], maxd, mr, maxr, MAXREL))
            worst.rel, worst.maxrel = math.max(worst.rel, rel), math.max(worst.maxrel, mr)
            parts[#parts + 1] = ("%s %.1e/%.1e"):format(e[1], rel, mr)
        end
        print(("  %-58s %s"):format(name, table.concat(parts, "  ")))
        if extra.after then extra.after(out, lse, dq, dk, dv) end
    end)
end

print("  case                                                       tensor rel-norm/max-rel error")
check_case("causal MHA, T = 17, D = 64", 2, 17, 17, 4, 4, 64, true)
check_case("non-causal MHA, T = 33 < S = 47, D = 16", 1, 33, 47, 3, 3, 16, false)
check_case("causal GQA 8/2, T = 1000, D = 64", 1, 1000, 1000, 8, 2, 64, true)
check_case("non-causal GQA 8/2, T = 150, D = 32", 2, 150, 150, 8, 2, 32, false)
check_case("causal MQA 4/1, T = 300, D = 32", 1, 300, 300, 4, 1, 32, true)
check_case("non-causal MQA 4/1, T = 100, D = 32, scale 0.3", 1, 100, 100, 4, 1, 32, false, { scale = 0.3 })
check_case("causal, queries the last T = 70 of S = 600, D = 128", 2, 70, 600, 4, 2, 128, true)
check_case("causal MHA, T = 257, D = 128", 1, 257, 257, 4, 4, 128, true)
check_case("non-causal GQA 8/4, T = 1000, D = 64", 1, 1000, 1000, 8, 4, 64, false)
check_case("causal, T = 1 decoding over S = 300 cached keys (strided)", 2, 1, 300, 8, 2, 64, true, {
    -- k, v are the first 300 positions of a longer cache, as generation passes them
    k = lt.randn(2, 512, 2, 64):narrow(2, 1, 300), v = lt.randn(2, 512, 2, 64):narrow(2, 1, 300) })
check_case("causal, T = 1 = S", 3, 1, 1, 2, 1, 64, true)
check_case("causal, T = 9 > S = 4: the first queries see no key", 1, 9, 4, 2, 2, 8, true, {
    after = function(out, lse)
        -- queries 0..4 see keys s <= t - 5: none
        for t = 1, 5 do
            T.eq(lse[1][1][t], -math.huge, "lse of a query that sees nothing")
            T.eq(out:narrow(2, t, 1):abs():sum():item(), 0, "output of a query that sees nothing")
        end
    end })
check_case("causal, T = 4097, H 2/1, D = 16", 1, 4097, 4097, 2, 1, 16, true)
check_case("packed sequences (cu_seqlens), causal GQA", 2, 300, 300, 4, 2, 32, true,
    { cu = { 0, 1, 70, 300, 317, 600 } })
check_case("packed sequences, non-causal", 1, 200, 200, 2, 2, 64, false, { cu = { 0, 65, 66, 200 } })

T.test("packed sequences give each sequence what it gets alone (bit for bit)", function()
    lt.manual_seed(5)
    local B, Tq, H, Hkv, D = 2, 300, 4, 2, 32
    local cu = { 0, 1, 70, 300, 317, 600 }
    local q, k, v = lt.randn(B, Tq, H, D), lt.randn(B, Tq, Hkv, D), lt.randn(B, Tq, Hkv, D)
    local dout = lt.randn(B, Tq, H, D)
    for _, causal in ipairs({ true, false }) do
        local opts = { causal = causal, cu_seqlens = lt.tensor(cu, "i32") }
        local out, lse = F.flash_attention(q, k, v, opts)
        local dq, dk, dv = F.flash_attention_backward(dout, q, k, v, out, lse, opts)
        for g = 1, #cu - 1 do
            local b, t0, n = math.floor(cu[g] / Tq) + 1, cu[g] % Tq + 1, cu[g + 1] - cu[g]
            local function part(t) return t:narrow(1, b, 1):narrow(2, t0, n):contiguous() end
            local q1, k1, v1, g1 = part(q), part(k), part(v), part(dout)
            local o1, l1 = F.flash_attention(q1, k1, v1, { causal = causal })
            local dq1, dk1, dv1 = F.flash_attention_backward(g1, q1, k1, v1, o1, l1, { causal = causal })
            local what = ("sequence %d (%s)"):format(g, causal and "causal" or "non-causal")
            T.close(part(out), o1, 0, 0, what .. " out")
            T.close(lse:narrow(1, b, 1):narrow(3, t0, n):contiguous(), l1, 0, 0, what .. " lse")
            T.close(part(dq), dq1, 0, 0, what .. " dq")
            T.close(part(dk), dk1, 0, 0, what .. " dk")
            T.close(part(dv), dv1, 0, 0, what .. " dv")
        end
    end
end)

-- Exact equality of two tensors' bits.
local function same_bits(a, b, what)
    local ca, cb = a:contiguous(), b:contiguous()
    T.ok(ffi.C.memcmp ~= nil)
    T.ok(ffi.C.memcmp(ca:data_ptr(), cb:data_ptr(), ca:numel() * 4) == 0, what .. " differs")
end
ffi.cdef "int memcmp(const void *a, const void *b, size_t n);"

T.test("deterministic: the same bits run to run and for 1 or 2 threads", function()
    lt.manual_seed(11)
    local B, Tq, H, Hkv, D = 2, 700, 8, 2, 64
    local q, k, v = lt.randn(B, Tq, H, D), lt.randn(B, Tq, Hkv, D), lt.randn(B, Tq, Hkv, D)
    local dout = lt.randn(B, Tq, H, D)
    local function run()
        local out, lse = F.flash_attention(q, k, v)
        local dq, dk, dv = F.flash_attention_backward(dout, q, k, v, out, lse)
        return { out, lse, dq, dk, dv }
    end
    local threads = lt.get_num_threads()
    local first, second = run(), run()
    lt.set_num_threads(1)
    local ok, one = pcall(run)
    lt.set_num_threads(threads)
    T.ok(ok, tostring(one))
    for i, name in ipairs({ "out", "lse", "dq", "dk", "dv" }) do
        same_bits(first[i], second[i], name .. " run to run")
        same_bits(first[i], one[i], name .. " with 1 thread against " .. threads)
    end
end)

T.test("flash_attention is attention, with its checks and messages", function()
    T.eq(F.flash_attention, F.attention)
    T.eq(F.flash_attention_backward, F.attention_backward)
    local q, k = lt.randn(1, 4, 4, 8), lt.randn(1, 4, 3, 8)
    T.raises(function() F.flash_attention(q, k, k) end, "H a multiple of Hkv", true)
    T.raises(function() F.flash_attention(q, lt.randn(1, 4, 2, 8), lt.randn(1, 4, 2, 8), { scale = 0 }) end,
        "scale must be a positive finite number", true)
    T.raises(function() F.flash_attention(q:bf16(), lt.randn(1, 4, 2, 8), lt.randn(1, 4, 2, 8)) end,
        "attention_forward: k is f32 but q is bf16", true)
    T.raises(function()
        F.flash_attention(q, lt.randn(1, 4, 2, 8), lt.randn(1, 4, 2, 8), { cu_seqlens = lt.tensor({ 0, 3 }, "i32") })
    end, "cu_seqlens must run from 0 to B * T = 4", true)
end)

T.test("the Llama attention reports the path it ran", function()
    local model = lt.llama.new({ vocab_size = 40, hidden_size = 32, intermediate_size = 48,
        num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2,
        max_position_embeddings = 32 })
    T.eq(model:attention_paths(), {})
    local ids = lt.randint(0, 40, { 1, 12 })
    model:forward(ids)
    T.eq(model:attention_paths(), { "cpu-flash" })
    T.eq(model.model.layers:children()[1].self_attn.attention_path, "cpu-flash")
    model:gradient_checkpointing(true)
    model:forward_backward(ids, ids)
    T.eq(model:attention_paths(), { "cpu-flash" })
end)

print(("  largest errors over all cases: ||diff|| / ||ref|| %.2g, max |diff| / max |ref| %.2g"):format(
    worst.rel, worst.maxrel))
T.done()
