#!/usr/bin/env python3
"""tools/gpu/interop.py - luatrain's files against Hugging Face's own libraries.

Runs where transformers, peft and safetensors are installed (the GPU machine's image; this
check needs no GPU). For each of two random Llama folders written by transformers itself
(MHA with untied head and plain rope; GQA with tied embeddings and llama3 rope scaling):

  base      transformers' LlamaForCausalLM logits (float64) = luatrain's (float32) on the
            same folder;
  lt->peft  an adapter luatrain wrote (random A and B on every linear layer) loads in PEFT
            and gives luatrain's logits;
  peft->lt  adapters PEFT wrote (random A and B: init_lora_weights=False) load in luatrain
            and give PEFT's logits: all-linear; q/v only on one layer with rsLoRA; DoRA.

Tolerance: ||luatrain - reference|| / ||reference|| <= 1e-5 (luatrain computes in float32,
the reference in float64; float32 lands near 1e-7 here), and every adapter must move the
logits by far more than that (else it was not loaded). One line per check; exit status 1
when any failed.

    python3 tools/gpu/interop.py --luatrain build-gpu/luatrain [--device cpu|cuda] [--work DIR]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

TOL = 1e-5
TIMEOUT_S = 180


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def versions():
    out = [f"torch {torch.__version__}"]
    for name in ("transformers", "peft", "safetensors"):
        try:
            out.append(f"{name} {__import__(name).__version__}")
        except Exception as e:  # reported, and the checks below fail on the import
            out.append(f"{name} missing ({e.__class__.__name__})")
    return ", ".join(out)


class Checks:
    def __init__(self):
        self.failed = 0
        self.lines = []

    def report(self, name, err, moved=None, note=""):
        ok = err == err and err <= TOL and (moved is None or moved > 100 * TOL)
        self.failed += 0 if ok else 1
        extra = f", the adapter moves the logits by {moved:.3g}" if moved is not None else ""
        line = f"interop {name:34} rel {err:.3g} (tol {TOL:g}{extra}){note}  {'PASS' if ok else 'FAIL'}"
        self.lines.append(line)
        print(line, flush=True)

    def fail(self, name, why):
        self.failed += 1
        line = f"interop {name:34} FAIL: {why}"
        self.lines.append(line)
        print(line, flush=True)


def llama_config(kind):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
    from hfcompat import llama_config as make

    common = dict(vocab_size=211, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  max_position_embeddings=64, initializer_range=0.05)
    if kind == "mha":
        return make(rope_theta=10000.0, num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-6,
                    tie_word_embeddings=False, **common)
    return make(rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=True, **common)


def run_luatrain(args, what, **settings):
    cmd = [args.luatrain, "tools/gpu/interop.lua", f"device={args.device}"]
    cmd += [f"{k}={v}" for k, v in settings.items()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    if r.returncode != 0:
        raise RuntimeError(f"luatrain ({what}) exited {r.returncode}: {(r.stderr or r.stdout).strip()[-600:]}")
    from safetensors.torch import load_file
    return load_file(settings["out"])["logits"]


def logits64(model, ids):
    model = model.double().eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.double()


def check_model(args, checks, kind, work):
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    torch.manual_seed(1234 if kind == "mha" else 4321)
    config = llama_config(kind)
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # norms at 1 would hide a norm weight read from the wrong tensor
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    folder = os.path.join(work, f"llama_{kind}")
    model.save_pretrained(folder)
    ids = torch.randint(0, config.vocab_size, (2, 24), dtype=torch.int64)
    ids_file = os.path.join(work, f"ids_{kind}.safetensors")
    save_file({"input_ids": ids.contiguous()}, ids_file)

    def fresh():
        return LlamaForCausalLM.from_pretrained(folder).float().eval()

    ref = logits64(fresh(), ids)
    with torch.no_grad():
        f32_floor = rel(fresh()(input_ids=ids).logits, ref)

    # base: the same folder, the same logits
    try:
        got = run_luatrain(args, "base", model=folder, ids=ids_file, out=os.path.join(work, f"lt_{kind}.safetensors"))
        checks.report(f"base {kind}: luatrain = transformers", rel(got, ref),
                      note=f"; transformers f32 {f32_floor:.2g}")
    except Exception as e:
        checks.fail(f"base {kind}: luatrain = transformers", e)

    # lt->peft: luatrain's adapter in PEFT
    ad = os.path.join(work, f"lt_adapter_{kind}")
    try:
        got = run_luatrain(args, "make adapter", model=folder, ids=ids_file, make_adapter=ad, r=8, alpha=16,
                           out=os.path.join(work, f"lt_lora_{kind}.safetensors"))
        peft_model = PeftModel.from_pretrained(fresh(), ad)
        want = logits64(peft_model, ids)
        checks.report(f"lt->peft {kind}: PEFT loads it", rel(got, want), moved=rel(ref, want))
    except Exception as e:
        checks.fail(f"lt->peft {kind}: PEFT loads it", e)

    # peft->lt: PEFT's adapters in luatrain
    variants = [
        ("all-linear", dict(r=8, lora_alpha=16, target_modules="all-linear")),
        ("q,v layer 1 rslora", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                    layers_to_transform=[1], use_rslora=True)),
        ("dora", dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                        "gate_proj", "up_proj", "down_proj"], use_dora=True)),
    ]
    for tag, kw in variants:
        name = f"peft->lt {kind} {tag}"
        try:
            torch.manual_seed(99)
            lcfg = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, init_lora_weights=False, **kw)
            pm = get_peft_model(fresh(), lcfg)
            with torch.no_grad():  # random A and B at a scale that moves the logits well
                for pname, p in pm.named_parameters():
                    if "lora_A" in pname or "lora_B" in pname:
                        p.normal_(0.0, 0.1)
            ad = os.path.join(work, f"peft_adapter_{kind}_{tag.replace(' ', '_').replace(',', '')}")
            pm.save_pretrained(ad)
            want = logits64(pm, ids)
            got = run_luatrain(args, "load adapter", model=folder, ids=ids_file, adapter=ad,
                               out=os.path.join(work, f"lt_peft_{kind}.safetensors"))
            checks.report(f"{name}", rel(got, want), moved=rel(ref, want))
        except Exception as e:
            checks.fail(name, e)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--luatrain", default="build-gpu/luatrain")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where luatrain runs (the references run on the CPU in float64)")
    ap.add_argument("--work", default=None, help="folder for the files (default: a temporary one)")
    args = ap.parse_args()
    t0 = time.time()
    print(f"# tools/gpu/interop.py: {versions()}; luatrain on {args.device}", flush=True)
    work = args.work or tempfile.mkdtemp(prefix="lt_interop_")
    os.makedirs(work, exist_ok=True)
    checks = Checks()
    for kind in ("mha", "gqa"):
        try:
            check_model(args, checks, kind, work)
        except Exception as e:
            checks.fail(f"{kind} model", f"{e.__class__.__name__}: {e}")
    n = len(checks.lines)
    print(f"# interop: {n - checks.failed} of {n} checks passed in {time.time() - t0:.0f} s", flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
