--[[
export.lua - a trained model (a base, its adapter) written as something people run, and
checked against the model that was trained before it is put in place (`luatrain export`,
lua/luatrain/cmd/export.lua).

    local ex = require "luatrain.export"
    local rep = ex.run{ model = "base_folder", adapter = "runs/qlora", format = "gguf", quant = "q8_0",
        output = "out/model.gguf", base_quant = "nf4", prompts = "eval.jsonl" }

Formats:
  adapter  the adapter alone, in PEFT's layout (adapter_config.json, adapter_model.safetensors)
  merged   a Hugging Face folder: config.json, model.safetensors (quant f32, f16 or bf16) with
           the adapter merged into the dequantized base, the base folder's tokenizer.json and
           tokenizer_config.json, special_tokens_map.json and generation_config.json (BOS, EOS
           and pad ids from the tokenizer's special tokens)
  gguf     one GGUF file for llama.cpp (lt.gguf: f32, f16, bf16, q8_0, q4_0, q4_k, q6_k); without
           adapter= it is the base alone, as quantized in training and dequantized (the base
           an adapter-gguf file goes on)
  adapter-gguf  the adapter as llama.cpp's LoRA adapter file (f32 or f16), for
           `llama-cli -m base.gguf --lora adapter.gguf`

Verification: the export is read back the way a user's program would read it (the merged
folder through lt.llama.from_pretrained and its own tokenizer, the GGUF file through
lt.gguf.load_llama and the tokenizer it carries, the adapter onto a fresh base) and run
beside the trained model (the adapter on its base, quantized as in training: base_quant)
on held-out prompts: the largest |logit difference| over every prompt position, the mean
KL(trained || exported) per position, the share of the trained model's n_predict greedy
tokens the exported model also ranks first (fed the same tokens; its own greedy run is
reported beside), and the tokenizer round trip (the exported tokenizer's ids for every
prompt, and its decoding of them). export_report.json (inside a folder, or beside a file as
FILE.export_report.json) records them, the thresholds and the sizes. Above a threshold the
export fails and nothing that looks complete is left: the output is written under a
temporary name and renamed into place only after it passed.
]]
local lt = require "luatrain"
local fs = require "luatrain.fs"
local json = require "luatrain.json"
local ffi = require "ffi"

local M = {}

M.FORMATS = { adapter = true, merged = true, gguf = true, ["adapter-gguf"] = true }
M.QUANTS = { adapter = { "f32" }, merged = { "bf16", "f16", "f32" },
    gguf = { "q8_0", "f32", "f16", "bf16", "q4_0", "q4_k", "q6_k" }, ["adapter-gguf"] = { "f32", "f16" } }
-- default thresholds per exported precision: the mean KL per position and the greedy
-- agreement; the logit difference is reported, not judged, unless max_logit_delta is given
M.DEFAULT_MAX_KL = { f32 = 1e-4, f16 = 1e-3, bf16 = 5e-3, q8_0 = 2e-2, q6_k = 5e-2, q4_k = 0.2, q4_0 = 0.3 }
M.DEFAULT_MIN_AGREEMENT = { f32 = 1, f16 = 0.9, bf16 = 0.9, q8_0 = 0.8, q6_k = 0.75, q4_k = 0.5, q4_0 = 0.5 }

local function file_size(path)
    local f = io.open(path, "rb")
    if not f then return 0 end
    local n = f:seek("end")
    f:close()
    return n
end

local function tree_size(path)
    if fs.is_dir(path) then
        local n = 0
        for _, e in ipairs(fs.list(path)) do n = n + tree_size(path .. "/" .. e.name) end
        return n
    end
    return file_size(path)
end

local function read_json(path) return json.read_file(path, { missing_ok = true }) end

local function copy_file(from, to)
    local f = assert(io.open(from, "rb"))
    local text = f:read("*a")
    f:close()
    fs.write_atomic(to, text)
end

-- The trained model: the base folder, quantized as in training, with the adapter.
function M.trained_model(opts)
    local q = opts.base_quant
    if q == nil then q = "nf4" end
    local quant = (q ~= "none" and q ~= false) and { type = q, blocksize = 64, double_quant = q ~= "int8" } or nil
    local model = lt.llama.from_pretrained(opts.model, { quant = quant, dtype = quant and "bf16" or nil })
    if opts.adapter and opts.adapter ~= "" then lt.lora.load(model, opts.adapter) end
    model:eval()
    return model
end

-- ---- the comparison ------------------------------------------------------------------------

-- Per position of logits (T, V) rows a and b: the largest |a - b| and the sum of
-- KL(softmax(a) || softmax(b)).
local function compare_rows(a, b, T, V)
    local pa = ffi.cast("const float *", a:data_ptr())
    local pb = ffi.cast("const float *", b:data_ptr())
    local worst, kl = 0, 0
    for t = 0, T - 1 do
        local ra, rb = pa + t * V, pb + t * V
        local ma, mb = -math.huge, -math.huge
        for v = 0, V - 1 do
            local d = math.abs(ra[v] - rb[v])
            if d > worst then worst = d end
            if ra[v] > ma then ma = ra[v] end
            if rb[v] > mb then mb = rb[v] end
        end
        local sa, sb = 0, 0
        for v = 0, V - 1 do
            sa = sa + math.exp(ra[v] - ma)
            sb = sb + math.exp(rb[v] - mb)
        end
        local la, lb = math.log(sa) + ma, math.log(sb) + mb
        local k = 0
        for v = 0, V - 1 do
            local lpa = ra[v] - la
            k = k + math.exp(lpa) * (lpa - (rb[v] - lb))
        end
        kl = kl + math.max(k, 0)
    end
    return worst, kl
end

local function logits_of(model, ids)
    local x = lt.tensor({ ids }, { dtype = "i64" })
    local l = model:forward(x)
    local V = l:size(3)
    local out = l:to("f32"):contiguous():view(#ids, V)
    return out, V
end

-- Greedy continuation of ids for n steps (the whole sequence run each step: short prompts).
local function greedy(model, ids, n, stop)
    local seq, out = {}, {}
    for i, v in ipairs(ids) do seq[i] = v end
    for _ = 1, n do
        local l, V = logits_of(model, seq)
        local p = ffi.cast("const float *", l:data_ptr()) + (#seq - 1) * V
        local best, arg = -math.huge, 0
        for v = 0, V - 1 do
            if p[v] > best then best, arg = p[v], v end
        end
        l:free()
        out[#out + 1] = arg
        seq[#seq + 1] = arg
        if stop and stop[arg] then break end
    end
    return out
end

--[[ Compare two models on prompts (lists of ids): { max_logit_delta, mean_kl, agreement,
positions, prompts = { ... } }. ]]
function M.compare(ref, exp, prompts, opts)
    opts = opts or {}
    local n = opts.n_predict or 16
    local worst, kl, positions, agree, total = 0, 0, 0, 0, 0
    local per = {}
    for i, ids in ipairs(prompts) do
        local a, V = logits_of(ref, ids)
        local b = logits_of(exp, ids)
        local w, k = compare_rows(a, b, #ids, V)
        a:free()
        b:free()
        -- agreement: along the trained model's greedy continuation, the positions where the
        -- exported model's top token is the same (one early tie broken the other way does
        -- not count against every token after it); its own free-running continuation is
        -- reported beside
        local ga = greedy(ref, ids, n, opts.stop)
        local seq = {}
        for j, v in ipairs(ids) do seq[j] = v end
        for _, v in ipairs(ga) do seq[#seq + 1] = v end
        local le = logits_of(exp, seq)
        local pe = ffi.cast("const float *", le:data_ptr())
        local same = 0
        for j = 1, #ga do
            local row = pe + (#ids + j - 2) * V
            local best, arg = -math.huge, 0
            for v = 0, V - 1 do
                if row[v] > best then best, arg = row[v], v end
            end
            if arg == ga[j] then same = same + 1 end
        end
        le:free()
        local gb = greedy(exp, ids, n, opts.stop)
        worst = math.max(worst, w)
        kl, positions = kl + k, positions + #ids
        agree, total = agree + same, total + #ga
        per[i] = { max_logit_delta = w, mean_kl = k / #ids, greedy_trained = ga, greedy_exported = gb,
            agreement = #ga > 0 and same / #ga or 1 }
    end
    return { max_logit_delta = worst, mean_kl = positions > 0 and kl / positions or 0,
        agreement = total > 0 and agree / total or 1, positions = positions, prompts = per }
end

-- The held-out prompts: each question of a JSONL dataset in the chat template, up to `limit`.
function M.prompts(path, template, limit)
    local out = {}
    for _, q in ipairs(lt.trainer.questions(path, template or "llama3", limit or 8)) do out[#out + 1] = q.prompt end
    return out
end

-- The tokenizer round trip: the exported tokenizer's ids for each text against the
-- trained one's, and its decoding of them back to the text.
local function tokenizer_check(base_tok, exp_tok, texts)
    local same_ids, round = 0, 0
    for _, text in ipairs(texts) do
        local a = base_tok:encode(text, { add_special_tokens = false })
        local b = exp_tok:encode(text, { add_special_tokens = false })
        local eq = #a == #b
        for i = 1, #a do eq = eq and a[i] == b[i] end
        if eq then same_ids = same_ids + 1 end
        if exp_tok:decode(b) == text then round = round + 1 end
    end
    return { texts = #texts, same_ids = same_ids, round_trips = round }
end

-- A tokenizer.json rebuilt from a GGUF file's tokenizer keys (what llama.cpp reads), so the
-- round trip checks what the file carries, not the folder it came from.
local PRE = {
    ["gpt-2"] = { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = true },
    ["llama-bpe"] = { type = "Sequence", pretokenizers = {
        { type = "Split", behavior = "Isolated", invert = false, pattern = { Regex =
            "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
            .. "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" } },
        { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = false } } },
}

function M.tokenizer_from_gguf(meta, dir)
    local tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    local pre = PRE[meta["tokenizer.ggml.pre"]]
    if meta["tokenizer.ggml.model"] ~= "gpt2" or not pre then
        error(("gguf tokenizer %s/%s: not one luatrain reads back"):format(tostring(meta["tokenizer.ggml.model"]),
            tostring(meta["tokenizer.ggml.pre"])), 2)
    end
    local vocab, added = {}, {}
    for i, t in ipairs(tokens) do
        local ty = types[i]
        if ty == 3 or ty == 4 then
            added[#added + 1] = { id = i - 1, content = t, single_word = false, lstrip = false, rstrip = false,
                normalized = ty == 4, special = ty == 3 }
        end
        if ty ~= 5 then vocab[t] = i - 1 end
    end
    local merges = {}
    for i, m in ipairs(meta["tokenizer.ggml.merges"] or {}) do merges[i] = m end
    local tj = { version = "1.0", added_tokens = json.array(added), normalizer = json.null, pre_tokenizer = pre,
        post_processor = json.null, decoder = { type = "ByteLevel", add_prefix_space = true, trim_offsets = true,
            use_regex = true },
        model = { type = "BPE", vocab = vocab, merges = json.array(merges), ignore_merges = false,
            byte_fallback = false, fuse_unk = false } }
    fs.make_dirs(dir)
    fs.write_atomic(dir .. "/tokenizer.json", json.encode(tj))
    local bos, eos = meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]
    fs.write_atomic(dir .. "/tokenizer_config.json", json.encode({
        bos_token = bos and tokens[bos + 1] or json.null, eos_token = eos and tokens[eos + 1] or json.null }))
    return lt.tokenizer.load(dir)
end

-- ---- the formats ---------------------------------------------------------------------------

-- special_tokens_map.json and generation_config.json for a merged folder, from the base's
-- tokenizer_config.json and config.json.
local function write_token_files(model_dir, dir, cfg)
    local tc = read_json(model_dir .. "/tokenizer_config.json") or {}
    local tj = read_json(model_dir .. "/tokenizer.json") or {}
    local ids = {}
    for tok, id in pairs((tj.model or {}).vocab or {}) do ids[tok] = id end
    for _, a in ipairs(tj.added_tokens or {}) do ids[a.content] = a.id end
    local function text(v) return type(v) == "table" and v.content or v end
    local map = {}
    for _, key in ipairs({ "bos_token", "eos_token", "unk_token", "pad_token" }) do
        local t = text(tc[key])
        if type(t) == "string" then map[key] = t end
    end
    fs.write_atomic(dir .. "/special_tokens_map.json", json.encode(map, { indent = 2 }) .. "\n")
    -- EOS: the tokenizer's end-of-turn token first (what a chat model stops on), then the
    -- config's own ids
    local eos = {}
    local function add(id)
        if type(id) ~= "number" then return end
        for _, e in ipairs(eos) do if e == id then return end end
        eos[#eos + 1] = id
    end
    add(ids[map.eos_token or ""])
    local ce = cfg.raw and cfg.raw.eos_token_id or cfg.eos_token_id
    if type(ce) == "table" then for _, e in ipairs(ce) do add(e) end else add(ce) end
    local gen = { _from_model_config = false, bos_token_id = ids[map.bos_token or ""] or cfg.bos_token_id,
        eos_token_id = #eos == 1 and eos[1] or json.array(eos), do_sample = false }
    if map.pad_token and ids[map.pad_token] then gen.pad_token_id = ids[map.pad_token] end
    fs.write_atomic(dir .. "/generation_config.json", json.encode(gen, { indent = 2 }) .. "\n")
    return eos
end

local function temp_name(output)
    local dir, name = output:match("^(.*)/([^/]+)$")
    if not dir then dir, name = ".", output end
    return ("%s/.%s.exporting-%d"):format(dir, name, os.time() % 1000000)
end

--[[ Export and verify. opts: model, adapter, format, quant, output, base_quant, prompts
(JSONL), template, n_prompts, n_predict, max_kl, min_agreement, max_logit_delta, verify
(default true), say (a print function). Returns the report (and raises when it failed). ]]
function M.run(opts)
    local say = opts.say or function() end
    local format, output = opts.format, opts.output:gsub("/+$", "")
    if not M.FORMATS[format] then
        error(("export: format must be adapter, merged, gguf or adapter-gguf, got %s"):format(tostring(format)), 2)
    end
    local quant = opts.quant or M.QUANTS[format][1]
    local ok_quant = false
    for _, q in ipairs(M.QUANTS[format]) do ok_quant = ok_quant or q == quant end
    if not ok_quant then
        error(("export: format=%s takes quant=%s, got %s"):format(format, table.concat(M.QUANTS[format], ", "),
            tostring(quant)), 2)
    end
    if (format == "adapter" or format == "adapter-gguf") and not (opts.adapter and opts.adapter ~= "") then
        error(("export: format=%s needs adapter= (a PEFT folder)"):format(format), 2)
    end
    local to_file = format == "gguf" or format == "adapter-gguf"
    if opts.verify ~= false and not (type(opts.prompts) == "string" and opts.prompts ~= "") then
        error("export: give prompts= (held-out questions, JSONL) to check the export on, or verify=false", 2)
    end
    local t0 = fs.now()
    local trained = M.trained_model(opts)
    local tok = lt.tokenizer.load(opts.model)
    say(("export: %s%s -> %s (%s, %s)"):format(opts.model, opts.adapter and opts.adapter ~= "" and
        (" + " .. opts.adapter) or "", output, format, quant))
    fs.make_dirs((output:match("^(.*)/[^/]+$")) or ".")
    -- a folder is built in a hidden sibling and committed as one unit; a file is written
    -- under a hidden name and renamed
    local tmp = to_file and temp_name(output) or fs.make_temp_dir(output)
    local report_path = to_file and (output .. ".export_report.json") or nil
    local done = false
    local ok, err = pcall(function()
        -- write under the temporary name
        local exported
        if format == "adapter" then
            lt.lora.save(trained, tmp, { base_model_name_or_path = opts.model })
        elseif format == "merged" then
            lt.lora.export_merged(trained, tmp, { dtype = quant })
            for _, f in ipairs({ "tokenizer.json", "tokenizer_config.json" }) do
                if fs.exists(opts.model .. "/" .. f) then copy_file(opts.model .. "/" .. f, tmp .. "/" .. f) end
            end
        elseif format == "gguf" then
            lt.gguf.export_llama(trained, opts.model, tmp, { quant = quant, name = opts.name })
        else
            lt.gguf.export_lora(trained, tmp, { quant = quant, name = opts.name })
        end
        local eos = nil
        if format == "merged" then eos = write_token_files(opts.model, tmp, trained.config) end
        -- read it back as a user's program would
        local exp_tok
        if format == "adapter" then
            exported = M.trained_model({ model = opts.model, adapter = tmp, base_quant = opts.base_quant })
            exp_tok = tok
        elseif format == "merged" then
            exported = lt.llama.from_pretrained(tmp)
            exp_tok = lt.tokenizer.load(tmp)
        elseif format == "adapter-gguf" then
            -- the file's adapters on the base as trained
            exported = lt.gguf.load_lora(M.trained_model({ model = opts.model, base_quant = opts.base_quant }), tmp)
            exp_tok = tok
        else
            exported = lt.gguf.load_llama(tmp)
            local f = lt.gguf.read(tmp)
            exp_tok = M.tokenizer_from_gguf(f.meta, tmp .. ".tokenizer")
            f:close()
        end
        exported:eval()
        local report = { format = format, quant = quant, model = opts.model, adapter = opts.adapter,
            base_quant = opts.base_quant or "nf4", output = output }
        if opts.verify ~= false then
            local texts = M.prompts(opts.prompts, opts.template, opts.n_prompts)
            if #texts == 0 then error(("export: %s holds no questions to check the export on"):format(opts.prompts), 0) end
            local prompts = {}
            for i, t in ipairs(texts) do prompts[i] = tok:encode(t, { add_special_tokens = false }) end
            local stop = {}
            for _, e in ipairs(eos or {}) do stop[e] = true end
            local eos_tok = (read_json(opts.model .. "/tokenizer_config.json") or {}).eos_token
            local eos_id = type(eos_tok) == "string" and tok:token_to_id(eos_tok)
            if eos_id then stop[eos_id] = true end
            local cmp = M.compare(trained, exported, prompts, { n_predict = opts.n_predict or 16, stop = stop })
            cmp.tokenizer = tokenizer_check(tok, exp_tok, texts)
            local max_kl = opts.max_kl or M.DEFAULT_MAX_KL[quant] or 1e-2
            local min_agree = opts.min_agreement or M.DEFAULT_MIN_AGREEMENT[quant] or 0.8
            local fails = {}
            if cmp.mean_kl > max_kl then
                fails[#fails + 1] = ("mean KL %.3g per position is above max_kl=%g"):format(cmp.mean_kl, max_kl)
            end
            if cmp.agreement < min_agree then
                fails[#fails + 1] = ("greedy agreement %.3f is below min_agreement=%g"):format(cmp.agreement, min_agree)
            end
            if opts.max_logit_delta and cmp.max_logit_delta > opts.max_logit_delta then
                fails[#fails + 1] = ("max |logit difference| %.3g is above max_logit_delta=%g"):format(
                    cmp.max_logit_delta, opts.max_logit_delta)
            end
            if cmp.tokenizer.same_ids < cmp.tokenizer.texts or cmp.tokenizer.round_trips < cmp.tokenizer.texts then
                fails[#fails + 1] = ("tokenizer: %d of %d prompts give the same ids, %d decode back"):format(
                    cmp.tokenizer.same_ids, cmp.tokenizer.texts, cmp.tokenizer.round_trips)
            end
            report.verification = cmp
            report.thresholds = { max_kl = max_kl, min_agreement = min_agree, max_logit_delta = opts.max_logit_delta }
            report.passed = #fails == 0
            report.failures = fails
        else
            report.passed = true
        end
        -- sizes: what was written, the adapter, the base's files
        report.bytes = { output = tree_size(tmp), base = tree_size(opts.model .. "/model.safetensors")
            + tree_size(opts.model .. "/model.safetensors.index.json") }
        if opts.adapter and opts.adapter ~= "" then report.bytes.adapter = tree_size(opts.adapter) end
        report.seconds = fs.now() - t0
        if not report.passed then
            if report_path then fs.write_atomic(report_path, json.encode(report, { indent = 2 }) .. "\n") end
            error(("export: the exported model does not behave like the trained one: %s; nothing was written to %s%s"):format(
                table.concat(report.failures, "; "), output, report_path and ("; report: " .. report_path) or ""), 0)
        end
        -- put it in place
        if to_file then
            os.remove(output)
            local okr, why = os.rename(tmp, output)
            if not okr then error(("export: %s: %s"):format(output, why), 0) end
            fs.write_atomic(report_path, json.encode(report, { indent = 2 }) .. "\n")
        else
            fs.write_atomic(tmp .. "/export_report.json", json.encode(report, { indent = 2 }) .. "\n")
            fs.commit_dir(tmp, output)
        end
        done = true
        return report
    end)
    if fs.exists(tmp .. ".tokenizer") then pcall(fs.remove_tree, tmp .. ".tokenizer") end
    if not done and fs.exists(tmp) then
        if fs.is_dir(tmp) then pcall(fs.remove_tree, tmp) else os.remove(tmp) end
    end
    if not ok then error(err, 0) end
    return err
end

-- The readable summary of a report.
function M.summary(r)
    local mb = lt.memory.format_bytes
    local out = { ("export %s (%s): %s"):format(r.format, r.quant, r.passed and "passed" or "FAILED") }
    out[#out + 1] = ("  written   %s"):format(mb(r.bytes.output))
    if r.bytes.adapter then out[#out + 1] = ("  adapter   %s"):format(mb(r.bytes.adapter)) end
    out[#out + 1] = ("  base      %s"):format(mb(r.bytes.base))
    local v = r.verification
    if v then
        out[#out + 1] = ("  against the trained model (%s base%s) on %d prompts, %d positions:"):format(
            r.base_quant, r.adapter and r.adapter ~= "" and " + adapter" or "", #v.prompts, v.positions)
        out[#out + 1] = ("    max |logit difference|  %.4g"):format(v.max_logit_delta)
        out[#out + 1] = ("    mean KL per position    %.4g   (max_kl %g)"):format(v.mean_kl, r.thresholds.max_kl)
        out[#out + 1] = ("    greedy tokens agreeing  %.1f%%   (min_agreement %g)"):format(100 * v.agreement,
            r.thresholds.min_agreement)
        out[#out + 1] = ("    tokenizer               %d/%d same ids, %d/%d decode back"):format(v.tokenizer.same_ids,
            v.tokenizer.texts, v.tokenizer.round_trips, v.tokenizer.texts)
    end
    return table.concat(out, "\n")
end

return M
