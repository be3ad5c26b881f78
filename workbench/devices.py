"""Device auto-detection shared by every stage."""

from __future__ import annotations

import os


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is available")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def usable_cores() -> int:
    """Cores this process may run on (its affinity), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def compute_dtype(model_format: str, device: str) -> str:
    """fp32 on CPU (fp16/bf16 matmuls are emulated on most CPUs), except GPTQ: GPTQModel's CPU kernel
    (TorchAtenLinear) measured 5x slower in fp32 than in bf16. On GPU the checkpoint's own dtype."""
    if device != "cpu":
        return "auto"
    return "bfloat16" if model_format == "gptq" else "float32"
