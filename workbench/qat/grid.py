"""llama.cpp's reference quantizers (no imatrix) as torch functions: quantize, then dequantize, in one step.

Each returns the values the GGUF file will hold after llama.cpp quantizes `x` — bit for bit what gguf-py's
`quants.quantize` followed by `quants.dequantize` gives (tests/test_qat.py holds them to it): blocks of 32
along the last dimension, the scale computed in fp32 and stored in fp16, ggml's own rounding. A new target
is one function here and a line in `GRIDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from workbench.qat import kquants, native
from workbench.qat.blocks import split

BLOCK = 32  # Q4_0, Q5_0, Q5_1 and Q8_0 quantize blocks of 32 consecutive values of a row


def _blocks(x: torch.Tensor) -> torch.Tensor:
    return split(x, BLOCK)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1 / d)


def _extreme(blocks: torch.Tensor) -> torch.Tensor:
    """Per block, the value of largest magnitude; on a tie between +m and -m, the one that comes first
    (as ggml's loop finds it). amax/amin are several times faster than argmax over |x|."""
    high, low = blocks.amax(dim=-1, keepdim=True), blocks.amin(dim=-1, keepdim=True)
    extreme = torch.where(high >= -low, high, low)
    tied = ((high == -low) & (high != 0)).squeeze(-1).nonzero().squeeze(-1)
    if tied.numel():
        rows = blocks[tied]
        low_first = (rows == low[tied]).int().argmax(dim=-1) < (rows == high[tied]).int().argmax(dim=-1)
        extreme[tied] = torch.where(low_first.unsqueeze(-1), low[tied], high[tied])
    return extreme


def _symmetric(x: torch.Tensor, half: int) -> torch.Tensor:
    """Q4_0 (half 8) and Q5_0 (half 16): d = (the value of largest magnitude, the first one on a tie) / -half,
    q = min(2·half - 1, trunc(x / d + half + 0.5)), stored as d in fp16 and q; read back as d * (q - half)."""
    blocks = _blocks(x)
    d = _extreme(blocks) / -half
    q = (blocks * _inverse(d)).add_(half + 0.5).trunc_().clamp_(0, 2 * half - 1).sub_(half)
    return q.mul_(d.half().float()).reshape(x.shape)


def q4_0(x: torch.Tensor) -> torch.Tensor:
    """ggml `quantize_row_q4_0_ref`."""
    return _symmetric(x, 8)


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C's roundf (halves away from zero), as gguf-py writes it; torch.round rounds halves to even."""
    a = x.abs()
    floored = a.floor()
    return x.sign() * (floored + (2 * (a - floored)).floor())


def q5_0(x: torch.Tensor) -> torch.Tensor:
    """ggml `quantize_row_q5_0_ref`."""
    return _symmetric(x, 16)


def q5_1(x: torch.Tensor) -> torch.Tensor:
    """ggml `quantize_row_q5_1_ref`: d = (max - min) / 31, q = trunc((x - min) / d + 0.5), stored as d and
    min in fp16 and q; read back as d * q + min."""
    blocks = _blocks(x)
    low = blocks.amin(dim=-1, keepdim=True)
    d = (blocks.amax(dim=-1, keepdim=True) - low) / 31
    q = ((blocks - low) * _inverse(d)).add_(0.5).trunc_().clamp_(0, 31)
    return q.mul_(d.half().float()).add_(low.half().float()).reshape(x.shape)


def q8_0(x: torch.Tensor) -> torch.Tensor:
    """ggml `quantize_row_q8_0_ref`: d = max|x| / 127, q = roundf(x / d), stored as d in fp16 and q."""
    blocks = _blocks(x)
    d = blocks.abs().amax(dim=-1, keepdim=True) / 127
    q = _roundf(blocks * _inverse(d))
    return q.mul_(d.half().float()).reshape(x.shape)


@dataclass(frozen=True)
class Grid:
    """One GGUF type a fine-tune can be trained for."""

    ggml_type: str  # gguf-py's GGMLQuantizationType name
    block: int
    values: Callable[[torch.Tensor], torch.Tensor]
    # rounded on CPU by libggml itself (workbench.qat.native) where that is faster than `values`: the
    # K-quants' scale search is a loop of small steps here, 5-10x slower on 2 cores; Q4_0/Q5_0's few
    # elementwise steps beat the call and gguf-py's unpacking
    native: bool = False


GRIDS: dict[str, Grid] = {
    "q4_0": Grid("Q4_0", BLOCK, q4_0),  # keys: the recipe's names, as in export.gguf
    "q5_0": Grid("Q5_0", BLOCK, q5_0),
    "q5_1": Grid("Q5_1", BLOCK, q5_1),
    "q8_0": Grid("Q8_0", BLOCK, q8_0, native=True),
    "q4_k": Grid("Q4_K", kquants.SUPER, kquants.q4_k, native=True),
    "q5_k": Grid("Q5_K", kquants.SUPER, kquants.q5_k, native=True),
    "q6_k": Grid("Q6_K", kquants.SUPER, kquants.q6_k, native=True),
}

# what a merged weight goes through before llama.cpp quantizes it: saved in the merge dtype, converted to
# the f16 GGUF every quantization starts from, read back as fp32 by the quantizer
SOURCE = torch.float16


def storage_chain(merge_dtype: torch.dtype) -> tuple[torch.dtype, ...]:
    return (merge_dtype, SOURCE)


def by_libggml(grid: Grid, device: str) -> bool:
    """Whether `fake_quantize` rounds to `grid` with libggml itself on this device (else with `grid.values`)."""
    return grid.native and device == "cpu" and native.available()


def fake_quantize(x: torch.Tensor, grid: Grid, chain: Sequence[torch.dtype] = ()) -> torch.Tensor:
    """The values `x` has in the served file: cast through `chain`, then rounded to the grid (fp32)."""
    for dtype in chain:
        x = x.to(dtype)
    if x.ndim == 2 and by_libggml(grid, x.device.type):
        return native.values(x, grid.ggml_type)
    return grid.values(x.float())


def fits(shape: Sequence[int], grid: Grid) -> bool:
    """Whether llama.cpp can store a weight of this shape in the grid's type (else it falls back)."""
    return len(shape) == 2 and shape[-1] % grid.block == 0
