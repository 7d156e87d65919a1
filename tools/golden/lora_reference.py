#!/usr/bin/python3
"""LoRA / DoRA golden fixtures on top of the float64 Llama reference (llama_reference.py).

Rerun from the repository root (Debian's torch: /usr/bin/python3):

    /usr/bin/python3 tools/golden/lora_reference.py --out tests/fixtures

For the tiny GQA model of tests/fixtures/llama_tiny_gqa it writes two adapters in PEFT's
on-disk layout (adapter_config.json as PEFT writes it, adapter_model.safetensors with
base_model.model.<module>.lora_A.weight (r, in), .lora_B.weight (out, r) and, for DoRA,
.lora_magnitude_vector (out)), each with golden outputs on the model's golden batch:

  lora_tiny/        r=4, lora_alpha=8 (scaling 2), every linear layer of both decoder
                    layers (q, k, v, o, gate, up, down), lora_dropout 0
  lora_tiny_dora/   r=2, lora_alpha=4, use_dora, q_proj and v_proj only
  */lora_golden.safetensors
      logits (B, T, V), loss (), grad.<module>.lora_A.weight / .lora_B.weight
      (/ .lora_magnitude_vector) for every adapter tensor

The math is PEFT's: a targeted linear computes x (W + s B A)^T, which for dropout 0 is the
same function as x W^T + s (x A^T) B^T; DoRA computes x (m / ||W + s B A||_row) (W + s B A)^T
with the row norm detached from autograd (DoRA paper, section 4.3), as PEFT does.
A and B are random and non-zero so every gradient is exercised.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_reference as ref  # noqa: E402

SEED = 4242


def adapter_config(r, alpha, targets, dora):
    # The keys PEFT's LoraConfig serialises (sorted, 2-space indent, as save_pretrained)
    return {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": "tests/fixtures/llama_tiny_gqa",
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": {},
        "revision": None,
        "target_modules": sorted(targets),
        "task_type": "CAUSAL_LM",
        "use_dora": dora,
        "use_rslora": False,
    }


def make_adapter(cfg, params, r, targets, dora, seed):
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for i in range(cfg.L):
        for t in targets:
            group = "self_attn" if t.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            mod = "model.layers.%d.%s.%s" % (i, group, t)
            out_f, in_f = params[mod + ".weight"].shape
            a = 0.3 * torch.randn((r, in_f), generator=g, dtype=torch.float64)
            b = 0.3 * torch.randn((out_f, r), generator=g, dtype=torch.float64)
            lora[mod + ".lora_A.weight"] = a.to(torch.float32).to(torch.float64)
            lora[mod + ".lora_B.weight"] = b.to(torch.float32).to(torch.float64)
            if dora:
                w = params[mod + ".weight"]
                m = w.norm(dim=1) * (1.0 + 0.2 * torch.randn((out_f,), generator=g, dtype=torch.float64))
                lora[mod + ".lora_magnitude_vector"] = m.to(torch.float32).to(torch.float64)
    return lora


def effective(params, lora, scaling, dora):
    """The base parameters with every adapted weight replaced by its LoRA/DoRA form."""
    p = dict(params)
    for key in lora:
        if not key.endswith(".lora_A.weight"):
            continue
        mod = key[: -len(".lora_A.weight")]
        w = params[mod + ".weight"] + scaling * (lora[mod + ".lora_B.weight"] @ lora[mod + ".lora_A.weight"])
        if dora:
            norm = w.norm(dim=1, keepdim=True).detach()
            w = lora[mod + ".lora_magnitude_vector"][:, None] * w / norm
        p[mod + ".weight"] = w
    return p


def build(out, name, cfg, params, ids, tgt, r, alpha, targets, dora, seed):
    lora = make_adapter(cfg, params, r, targets, dora, seed)
    leaves = {k: v.clone().requires_grad_(True) for k, v in lora.items()}
    logits = ref.forward(cfg, effective(params, leaves, alpha / r, dora), ids)[0]
    loss = ref.ce_loss(logits, tgt)
    grads = torch.autograd.grad(loss, [leaves[k] for k in leaves])
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    adapter_items = [("base_model.model." + k, lora[k], "F32") for k in sorted(lora)]
    ref.write_safetensors(os.path.join(folder, "adapter_model.safetensors"), adapter_items, {"format": "pt"})
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(adapter_config(r, alpha, targets, dora), f, indent=2, sort_keys=True)
        f.write("\n")
    golden = [("logits", logits.detach(), "F32"), ("loss", loss.detach(), "F32")]
    golden += [("grad." + k, g, "F32") for k, g in zip(leaves, grads)]
    ref.write_safetensors(os.path.join(folder, "lora_golden.safetensors"), golden,
                          {"format": "pt", "r": str(r), "lora_alpha": str(alpha), "use_dora": str(dora)})
    print("%s: loss %.6f, %d adapter tensors" % (name, loss.item(), len(lora)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    base = os.path.join(args.out, "llama_tiny_gqa")
    with open(os.path.join(base, "config.json")) as f:
        cfg = ref.Cfg(json.load(f))
    def tensors(path, dtype):
        return {k: torch.tensor(vals, dtype=dtype).reshape(shape)
                for k, (_, shape, vals) in ref.read_safetensors(path)[1].items()}
    params = tensors(os.path.join(base, "model.safetensors"), torch.float64)
    golden = ref.read_safetensors(os.path.join(base, "golden.safetensors"))[1]
    ids = torch.tensor(golden["input_ids"][2], dtype=torch.int64).reshape(golden["input_ids"][1])
    tgt = torch.tensor(golden["targets"][2], dtype=torch.int64).reshape(golden["targets"][1])
    all_linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    build(args.out, "lora_tiny", cfg, params, ids, tgt, 4, 8, all_linear, False, SEED)
    build(args.out, "lora_tiny_dora", cfg, params, ids, tgt, 2, 4, ["q_proj", "v_proj"], True, SEED + 1)


if __name__ == "__main__":
    main()
