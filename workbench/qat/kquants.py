"""ggml's reference K-quantizers (`quantize_row_q{4,5,6}_K_ref`, no imatrix) as torch quantize→dequantize.

Super-blocks of 256 values; Q4_K / Q5_K split them into 8 sub-blocks of 32 with a 6-bit scale and min each
(`make_qkx2_quants`' search over 21 / 16 trial scales), Q6_K into 16 sub-blocks of 16 with a signed 8-bit
scale (`make_qx_quants`, 18 trial scales). The values are what gguf-py's `dequantize` reads back from the
blocks ggml writes — bit for bit (tests/test_qat_kquants.py holds them to ggml's own quantizer).

Bit-exactness needs ggml's order of float32 operations: its sums run element by element (`_summed`), its
products are rounded before they are added (no fused multiply-add), and `nearest_int` rounds halves to even.
"""

from __future__ import annotations

import numpy as np
import torch

from workbench.qat.blocks import split

SUPER = 256  # QK_K
GROUP_MAX_EPS = 1e-15  # below this a group counts as all zero


def _nearest(x: torch.Tensor) -> torch.Tensor:
    """ggml's `nearest_int` (adding 1.5·2²³): round half to even, as torch.round does."""
    return torch.round(x)


def _over(numerator: float, x: torch.Tensor) -> torch.Tensor:
    """`numerator / x` divided once: torch computes `scalar / tensor` as `x.reciprocal() * scalar`, which
    rounds twice."""
    return torch.full_like(x, numerator) / x


def _first_extreme(x: torch.Tensor) -> torch.Tensor:
    """Per row, the value of largest magnitude; on a tie the first one (`if (amax < fabsf(v))`)."""
    index = x.abs().argmax(dim=-1, keepdim=True)  # argmax returns the first of equal maxima
    return x.gather(-1, index).squeeze(-1)


def _columns(x: torch.Tensor) -> torch.Tensor:
    """Rows of a group as columns: (rows, n) -> (n, rows), contiguous, so the element-by-element sums add
    contiguous vectors (several times faster than strided columns) and per-row values broadcast as they are."""
    return x.movedim(-1, 0).contiguous()


def _summed(columns: torch.Tensor) -> torch.Tensor:
    """Sum over the first dimension of a `_columns` layout one element at a time, in float32 (C's `for`
    loop; torch.sum adds in pairs)."""
    total = columns[0].clone()
    for column in columns[1:]:
        total += column
    return total


def _qkx2(x: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`make_qkx2_quants` on rows of 32 (weights `av_x + |x|`, squared error): per row, the scale and the
    min (positive, subtracted) of the best of the trial grids."""
    xs = _columns(x)  # (32, rows): every per-row value below has the shape (rows,)
    # sqrtf, correctly rounded: torch's float32 sqrt can be an ulp off; through float64 it is exact
    av_x = torch.sqrt((_summed(xs * xs) / 32).double()).float()
    w = av_x + xs.abs()
    low = torch.minimum(x.amin(dim=-1), torch.zeros_like(av_x))
    high = x.amax(dim=-1)
    sum_w, sum_x = _summed(w), _summed(w * xs)
    span = high - low
    flat = span == 0
    span = torch.where(flat, torch.ones_like(span), span)

    iscale = _over(nmax, span)
    scale = _over(1, iscale)
    levels = _nearest(iscale * (xs - low)).clamp_(0, nmax)
    diff = scale * levels + low - xs
    best = _summed(w * (diff * diff))
    for step in range(nstep + 1):  # ggml's loop moves `min` (and so the span) when a trial wins
        span = torch.where(flat, torch.ones_like(span), high - low)
        iscale = _over(_trial(rmin, rdelta, step, nmax), span)
        trial = _nearest((xs - low).mul_(iscale)).clamp_(0, nmax)  # in place: the same operations, fewer copies
        weighted = w * trial
        sum_l, sum_l2, sum_xl = _summed(weighted), _summed(weighted * trial), _summed(weighted.mul_(xs))
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        safe = torch.where(ok, det, torch.ones_like(det))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe
        positive = this_min > 0
        this_scale = torch.where(positive, sum_xl / sum_l2, this_scale)
        this_min = torch.where(positive, torch.zeros_like(this_min), this_min)
        diff = trial.mul_(this_scale).add_(this_min).sub_(xs)
        error = _summed(diff.square_().mul_(w))
        better = ok & (error < best) & ~flat
        best = torch.where(better, error, best)
        scale = torch.where(better, this_scale, scale)
        low = torch.where(better, this_min, low)
    scale = torch.where(flat, torch.zeros_like(scale), scale)
    return scale, -low


def _trial(rmin: float, rdelta: float, step: int, nmax: int) -> float:
    """`rmin + rdelta*is + nmax` in float32, as C computes it."""
    return float(np.float32(np.float32(rmin) + np.float32(rdelta) * np.float32(step)) + np.float32(nmax))


def _half(x: torch.Tensor) -> torch.Tensor:
    """Stored as fp16, read back as fp32 (GGML_FP32_TO_FP16 rounds to nearest even, as torch does)."""
    return x.half().float()


def _min_max_k(x: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int) -> torch.Tensor:
    """Q4_K / Q5_K: super-blocks (rows of 256) → the dequantized values."""
    subs = x.reshape(-1, 8, 32)
    scales, mins = _qkx2(subs, nmax, rmin, rdelta, nstep)
    zero = torch.zeros(subs.shape[0], dtype=torch.float32)
    max_scale, max_min = torch.maximum(scales.amax(dim=-1), zero), torch.maximum(mins.amax(dim=-1), zero)
    inv_scale = torch.where(max_scale > 0, _over(63, torch.where(max_scale > 0, max_scale, 1)), 0)
    inv_min = torch.where(max_min > 0, _over(63, torch.where(max_min > 0, max_min, 1)), 0)
    # uint8_t ls = nearest_int(...): wraps modulo 256 before MIN(63, ls)
    ls = torch.remainder(_nearest(inv_scale.unsqueeze(-1) * scales), 256).clamp_(max=63)
    lm = torch.remainder(_nearest(inv_min.unsqueeze(-1) * mins), 256).clamp_(max=63)
    d = _half(max_scale / 63).unsqueeze(-1) * ls
    dm = _half(max_min / 63).unsqueeze(-1) * lm
    safe = torch.where(d == 0, torch.ones_like(d), d)
    levels = _nearest((subs + dm.unsqueeze(-1)) / safe.unsqueeze(-1)).clamp_(0, nmax)
    # a sub-block whose scale stored as 0 keeps make_qkx2_quants' levels: they are multiplied by 0 anyway
    return (d.unsqueeze(-1) * levels - dm.unsqueeze(-1)).reshape(x.shape)


def q4_k(x: torch.Tensor) -> torch.Tensor:
    """`quantize_row_q4_K_ref`: 4-bit levels, 8 sub-blocks of 32 with 6-bit scales and mins."""
    return _min_max_k(_super_blocks(x), 15, -1.0, 0.1, 20).reshape(x.shape)


def q5_k(x: torch.Tensor) -> torch.Tensor:
    """`quantize_row_q5_K_ref`: 5-bit levels, 8 sub-blocks of 32 with 6-bit scales and mins."""
    return _min_max_k(_super_blocks(x), 31, -0.5, 0.1, 15).reshape(x.shape)


def _qx(x: torch.Tensor, nmax: int) -> torch.Tensor:
    """`make_qx_quants(16, nmax, x, L, rmse_type=1, NULL)` on rows of 16: per row, the scale (signed)."""
    extreme = _first_extreme(x)
    zero = x.abs().amax(dim=-1) < GROUP_MAX_EPS
    extreme = torch.where(zero, torch.ones_like(extreme), extreme)
    xs = _columns(x)
    w = xs * xs
    wx = w * xs  # ggml's w*x[i]*l: (w·x)·l, the same for every trial

    def sums(iscale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        levels = _nearest(xs * iscale).clamp_(-nmax, nmax - 1)
        return _summed(wx * levels), _summed((w * levels).mul_(levels))

    sumlx, suml2 = sums(_over(-nmax, extreme))
    scale = torch.where(suml2 != 0, sumlx / torch.where(suml2 != 0, suml2, 1), 0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        trial = float(-(np.float32(nmax) + np.float32(0.1) * np.float32(step)))
        sumlx, suml2 = sums(_over(trial, extreme))
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        this_scale = sumlx / torch.where(suml2 > 0, suml2, 1)
        scale = torch.where(better, this_scale, scale)
        best = torch.where(better, this_scale * sumlx, best)
    return torch.where(zero, torch.zeros_like(scale), scale)


def q6_k(x: torch.Tensor) -> torch.Tensor:
    """`quantize_row_q6_K_ref`: 6-bit levels, 16 sub-blocks of 16 with signed 8-bit scales."""
    subs = _super_blocks(x).reshape(-1, 16, 16)
    scales = _qx(subs, 32)
    max_scale = _first_extreme(scales)
    empty = max_scale.abs() < GROUP_MAX_EPS
    iscale = _over(-128, torch.where(empty, torch.ones_like(max_scale), max_scale))
    stored = _nearest(iscale.unsqueeze(-1) * scales).clamp_(max=127)
    d = _half(_over(1, iscale)).unsqueeze(-1) * stored
    d = torch.where(empty.unsqueeze(-1), torch.zeros_like(d), d)
    safe = torch.where(d == 0, torch.ones_like(d), d)
    levels = _nearest(subs / safe.unsqueeze(-1)).clamp_(-32, 31)
    return (d.unsqueeze(-1) * levels).reshape(x.shape)


def _super_blocks(x: torch.Tensor) -> torch.Tensor:
    return split(x, SUPER, "super-blocks")
