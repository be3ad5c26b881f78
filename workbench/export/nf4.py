"""bitsandbytes nf4 variant: the merged model saved as a 4-bit checkpoint transformers loads directly.
Runs in a worker (task `nf4.export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.workers.child import Channel


def quantization_config(compute_dtype: str = "bfloat16"):  # noqa: ANN201 - transformers type, imported lazily
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
    )


def export(merged: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(merged, quantization_config=quantization_config(), device_map=device)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(merged).save_pretrained(out)


def compute_in(model: Any, dtype: Any) -> Any:
    """Run a loaded nf4 model in `dtype`: bitsandbytes' compute dtype and every unquantized weight. The
    checkpoint says bf16 (right on a GPU); on a CPU without bf16 matrix units bf16 runs several times
    slower than fp32. Returns the model."""
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.compute_dtype = dtype
    cast_unquantized(model, dtype)
    return model


def cast_unquantized(model: Any, dtype: Any) -> None:
    for param in model.parameters():  # transformers refuses .to(dtype) on a model it loaded quantized
        if param.is_floating_point():
            param.data = param.data.to(dtype)


def dequantized(model: Any, dtype: Any) -> Any:
    """The nf4 model with every 4-bit layer replaced, in place, by a plain linear layer holding the weights
    the checkpoint stores (bitsandbytes' `dequantize_4bit`), everything in `dtype`. What the format
    keeps of the model, without its CPU kernel, which takes ~1.8 s for each generated token of a 135M
    model on 2 cores (benchmarked as is): evaluation runs on these weights."""
    import bitsandbytes.functional as bnb_functional
    import torch
    from bitsandbytes.nn import Linear4bit

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Linear4bit):
                state = child.weight.quant_state  # type: ignore[attr-defined]  # bitsandbytes' Params4bit
                weight = bnb_functional.dequantize_4bit(child.weight.data, state)
                plain = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                plain.weight = torch.nn.Parameter(weight.to(dtype), requires_grad=False)
                if child.bias is not None:
                    plain.bias = torch.nn.Parameter(child.bias.data.to(dtype), requires_grad=False)
                setattr(module, name, plain)
    cast_unquantized(model, dtype)
    for marker in ("hf_quantizer", "quantization_method"):  # what remains is a plain model
        if marker in vars(model):
            setattr(model, marker, None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def export_job(job: dict[str, Any], channel: Channel) -> dict[str, Any]:
    export(Path(job["merged"]), Path(job["out"]))
    return {}
