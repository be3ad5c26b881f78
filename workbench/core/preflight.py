"""Preflight: estimate the disk and memory a stage needs and refuse with numbers before starting,
instead of dying half-way (an OOM kill or a full disk in the middle of an export)."""

from __future__ import annotations

import shutil
from pathlib import Path

import psutil

from workbench.core.errors import ResourceError

GB = 1024**3


class PreflightError(ResourceError):
    pass


def parameter_count(model_dir: Path) -> int:
    """Parameters of a safetensors checkpoint, from the file headers (no weights are read)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                shape = handle.get_slice(name).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total


def free_disk(path: Path) -> int:
    path = Path(path)
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def available_memory() -> int:
    return psutil.virtual_memory().available


def require_room(what: str, where: Path, disk_bytes: float, memory_bytes: float) -> None:
    """Refuse when the estimate does not fit; the message has the numbers and what to do."""
    problems = []
    disk, memory = free_disk(where), available_memory()
    if disk_bytes > disk:
        problems.append(f"needs ~{disk_bytes / GB:.2f} GB free disk in {where}, {disk / GB:.2f} GB free")
    if memory_bytes > memory:
        problems.append(f"needs ~{memory_bytes / GB:.2f} GB of memory, {memory / GB:.2f} GB available")
    if problems:
        raise PreflightError(f"{what} refused before starting: " + "; ".join(problems))
