"""The grid check (worker task `qat.grid`): the weights a GGUF file holds, dequantized by gguf-py, equal
the merged model's weights rounded by the target's fake quantizer — what quantization-aware training
trained on is what the file serves. Tensors llama.cpp stored in another type are listed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from workbench.workers.child import Channel

# GGUF tensors the recipe keeps out of the grid on purpose: qat.embeddings / qat.output false
KEPT = {"embeddings": "token_embd.weight", "output": "output.weight"}


def _rows_sorted(values: Any) -> Any:
    """Rows in byte order: the converter reorders the rows of some tensors (attention heads), never what
    is inside a row, which is where the blocks are."""
    import numpy as np

    rows = np.ascontiguousarray(values).view(np.dtype((np.void, values.shape[1] * values.itemsize)))
    return np.sort(rows.ravel())


def _same(expected: Any, stored: Any) -> bool:
    import numpy as np

    if expected.shape != stored.shape:
        return False
    if np.array_equal(expected, stored, equal_nan=True):
        return True
    return bool(np.array_equal(_rows_sorted(expected), _rows_sorted(stored)))


def _merged_tensors(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it (read one at a time: a large model never sits
    in memory whole)."""
    from safetensors import safe_open

    where = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            where.update(dict.fromkeys(handle.keys(), path))
    return where


def _load(path: Path, name: str) -> Any:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(name)


@dataclass(frozen=True)
class GridJob:
    gguf: Path  # the file
    merged: Path  # the merged model's folder
    target: str  # a grid name (`workbench.qat.grid.GRIDS`)
    embeddings: bool  # whether the token embeddings were trained on the grid
    output: bool  # whether the output layer was


@dataclass(frozen=True)
class Retyped:
    tensor: str
    type: str  # what llama.cpp stored it as instead


@dataclass(frozen=True)
class GridResult:
    """Recorded as the variant's `meta["grid"]` (its fields, in this order)."""

    target: str
    status: Literal["passed", "failed"]
    tensors: int  # compared
    mismatched: list[str]
    retyped: list[Retyped]
    unmatched: list[str]  # in the target type, not in the merged model
    kept_f16: list[str]


def describe_grid(grid: dict[str, Any]) -> str:
    """A grid check's result in words (for `show` and the export's log)."""
    if grid["status"] == "passed":
        text = f"passed: {grid['tensors']} tensors equal the {grid['target']} rounding training used"
    else:
        problems = [f"{len(grid['mismatched'])} tensors differ"] if grid["mismatched"] else []
        problems += [f"{r['tensor']} stored as {r['type']}" for r in grid["retyped"]]
        problems += [f"{name} not in the merged model" for name in grid["unmatched"]]
        text = "FAILED: " + ("; ".join(problems) or "no tensor in the target type")
    return text + (f" (kept f16: {', '.join(grid['kept_f16'])})" if grid.get("kept_f16") else "")


def grid_job(job: GridJob, channel: Channel) -> GridResult:
    import gguf

    from workbench.qat import grid

    g = grid.GRIDS[job.target]
    channel.phase("grid check")
    reader = gguf.GGUFReader(job.gguf)
    field = reader.fields["general.architecture"]
    arch_name = bytes(field.parts[field.data[0]]).decode()
    blocks = reader.fields[f"{arch_name}.block_count"]
    arch = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}[arch_name]
    names = gguf.get_tensor_name_map(arch, int(blocks.parts[blocks.data[0]][0]))
    merged = {}  # GGUF name -> (file, name in the merged model)
    for hf_name, path in _merged_tensors(job.merged).items():
        stem, _, suffix = hf_name.rpartition(".")
        mapped = names.get_name(stem)
        if mapped:
            merged[f"{mapped}.{suffix}"] = (path, hf_name)
    kept = {tensor for flag, tensor in KEPT.items() if not getattr(job, flag)}

    compared, mismatched, retyped, unmatched = 0, [], [], []
    for tensor in reader.tensors:
        kind = gguf.GGMLQuantizationType(tensor.tensor_type).name
        if len(tensor.shape) < 2 or tensor.name not in merged and kind != g.ggml_type:
            continue  # norms and biases stay f32 in every file
        if kind != g.ggml_type:
            if tensor.name not in kept:
                retyped.append(Retyped(tensor.name, kind))
            continue
        if tensor.name not in merged:
            unmatched.append(tensor.name)
            continue
        expected = grid.fake_quantize(_load(*merged[tensor.name]), g, (grid.SOURCE,)).numpy()
        stored = gguf.dequantize(tensor.data, tensor.tensor_type)
        compared += 1
        if stored.size != expected.size or not _same(expected, stored.reshape(expected.shape)):
            mismatched.append(tensor.name)
    passed = compared > 0 and not mismatched and not retyped and not unmatched
    return GridResult(job.target, "passed" if passed else "failed", compared, mismatched, retyped, unmatched,
                      sorted(kept))  # fmt: skip
