"""Rows of float32 values cut into the blocks a llama.cpp type quantizes, or refused."""

from __future__ import annotations

import torch


def split(x: torch.Tensor, size: int, unit: str = "blocks") -> torch.Tensor:
    """`x` (float32, rows a multiple of `size`) as consecutive blocks of `size` values, one a row."""
    if x.dtype != torch.float32:
        raise TypeError(f"the grid takes float32 values, got {x.dtype}")
    if x.shape[-1] % size:
        raise ValueError(f"rows of {x.shape[-1]} values do not divide into {unit} of {size}")
    return x.reshape(-1, size)
