"""Device auto-detection shared by every stage."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# What a GPU torch can use exists as one of these: the NVIDIA driver, WSL2's GPU bridge, ROCm's driver
GPU_DRIVER_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg", "/dev/kfd")


def no_gpu_possible() -> bool:
    """True when torch could not see a GPU, decided without importing torch (seconds on a small machine:
    an unchanged recipe re-runs without it): every device hidden, macOS, or Linux without a GPU driver."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return True
    if sys.platform == "darwin":
        return True
    return sys.platform.startswith("linux") and not any(Path(f).exists() for f in GPU_DRIVER_FILES)


def pick_device(requested: str = "auto") -> str:
    if requested in ("auto", "cuda") and no_gpu_possible():
        if requested == "cuda":
            raise RuntimeError("train.device is cuda but no CUDA device is available (no GPU driver found)")
        return "cpu"
    if requested == "cpu":
        return "cpu"
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is available")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def usable_cores() -> int:
    """Cores this process may run on (its affinity), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def torch_cuda() -> bool:
    """Whether torch runs on a GPU here (CUDA, or ROCm through the same API)."""
    if no_gpu_possible():
        return False
    import torch

    return torch.cuda.is_available()


def llama_cpp_offload() -> bool:
    """Whether the installed llama-cpp-python was built to offload layers to a GPU."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def gpu_slots() -> list[str]:
    """The visible GPUs as CUDA_VISIBLE_DEVICES entries when there are several (workers then run one per
    GPU at a time); empty with none or one."""
    if no_gpu_possible():
        return []
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    slots = visible[:count] if visible else [str(index) for index in range(count)]
    return slots if len(slots) > 1 else []
