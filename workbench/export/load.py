"""Loading a transformers checkpoint for inference (a format spec's `loader`; `formats.load_for_inference`
is the one way eval, bench and chat load a model): `AutoModelForCausalLM` with the format's own kernels
(GPTQModel for GPTQ / AWQ, bitsandbytes for nf4, as the checkpoint's quantization config says)."""

from __future__ import annotations

from typing import Any


def transformers_model(path: str, device: str, dtype: str) -> Any:
    """The checkpoint on `device`, in `dtype` ("auto": the checkpoint's own), ready for inference."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype if dtype == "auto" else getattr(torch, dtype), device_map={"": device}
    )
    return model.eval()
