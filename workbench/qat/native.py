"""The rounding on CPU by llama.cpp itself: `ggml_quantize_chunk` from the libggml-base that llama-cpp-python
installs (the code llama-quantize runs when it has no importance matrix), read back by gguf-py's
`dequantize`. The same values as the torch grids (workbench.qat.grid; a test holds the two equal), used
on CPU for the types where it is faster (`Grid.native`: the K-quants, whose scale search is a loop of
small steps in torch, and Q8_0). The rows are split over torch's intra-op threads (ctypes lets go of the
GIL during the call).

Absent (no llama-cpp-python, or a library without the symbol), `available()` is False and the torch grids
round on CPU too."""

from __future__ import annotations

import ctypes
import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch


@functools.cache
def library() -> ctypes.CDLL | None:
    """llama-cpp-python's libggml-base with `ggml_quantize_chunk` typed; None where it is absent."""
    try:
        import llama_cpp
    except ImportError:
        return None
    found = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.*"))
    if not found:
        return None
    try:
        lib = ctypes.CDLL(str(found[0]))
        quantize = lib.ggml_quantize_chunk
    except (OSError, AttributeError):
        return None
    quantize.restype = ctypes.c_size_t
    quantize.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, *[ctypes.c_int64] * 3, ctypes.c_void_p]
    return lib


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="ggml-quantize")


def available() -> bool:
    return library() is not None


def values(x: torch.Tensor, ggml_type: str) -> torch.Tensor:
    """`x` (2-D, on CPU, each row a whole number of the type's blocks) as the type stores it, in float32."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    lib = library()
    if lib is None:
        raise RuntimeError("llama.cpp's libggml-base is not installed (llama-cpp-python)")
    kind = GGMLQuantizationType[ggml_type]
    block, size = GGML_QUANT_SIZES[kind]
    source = np.ascontiguousarray(x.detach().float().numpy())
    rows, width = source.shape
    if width % block:  # ggml would abort the process
        raise ValueError(f"rows of {width} values do not divide into {ggml_type} blocks of {block}")
    packed = np.empty(rows * (width // block) * size, dtype=np.uint8)
    threads = max(1, min(torch.get_num_threads(), rows))
    bounds = np.linspace(0, rows, threads + 1, dtype=np.int64)

    def quantize(first: int, last: int) -> int:
        return lib.ggml_quantize_chunk(
            int(kind), source.ctypes.data, packed.ctypes.data, first * width, last - first, width, None
        )

    written = sum(_pool(threads).map(quantize, bounds[:-1].tolist(), bounds[1:].tolist()))
    if written != packed.size:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes of {ggml_type}, expected {packed.size}")
    return torch.from_numpy(quants.dequantize(packed, kind).reshape(rows, width))
