"""hfcompat.py - one place that builds a transformers LlamaConfig across transformers 4.x and 5.x,
for the scripts that run Hugging Face's own code as a peer or a reference (tools/bench/*_torch.py,
tools/gpu/interop.py).

transformers 5 keeps the rotary settings in one `rope_parameters` object ({rope_type,
rope_theta, factor, ...}) and calls the dtype argument `dtype`; 4.x takes `rope_theta` and
`rope_scaling` (and `torch_dtype`). llama_config(rope_theta=..., rope_scaling=None, **fields)
takes the 4.x spelling and gives whichever the installed version reads.
"""
import inspect


def has_rope_parameters():
    from transformers import LlamaConfig
    if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters:
        return True
    return hasattr(LlamaConfig(), "rope_parameters")


def llama_config(rope_theta=10000.0, rope_scaling=None, **fields):
    from transformers import LlamaConfig
    if has_rope_parameters():
        rope = {"rope_type": "default", "rope_theta": float(rope_theta)}
        if rope_scaling:
            rope.update({k: v for k, v in rope_scaling.items() if k != "type"})
            rope["rope_type"] = rope_scaling.get("rope_type", rope_scaling.get("type"))
        return LlamaConfig(rope_parameters=rope, **fields)
    return LlamaConfig(rope_theta=rope_theta, rope_scaling=rope_scaling, **fields)
