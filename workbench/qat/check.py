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
UNROUNDED = {"F16", "BF16", "F32"}  # types a tensor off the grid is stored in


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


def _load(path: Path, name: str) -> Any:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(name)


@dataclass(frozen=True)
class GridJob:
    gguf: Path  # the file
    merged: Path  # the merged model's folder
    target: str  # the recipe's train.qat.target
    embeddings: bool  # whether the token embeddings were trained on the grid
    output: bool  # whether the output layer was
    plan: Path | None = None  # a mixture's plan (workbench.qat.mixture.PLAN_FILE): the grid of each tensor


@dataclass(frozen=True)
class Retyped:
    tensor: str
    type: str  # what llama.cpp stored it as instead
    trained: str | None = None  # the grid training used for it (a mixture's)


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
        problems += [
            f"{r['tensor']} stored as {r['type']}" + (f", trained as {r['trained']}" if r.get("trained") else "")
            for r in grid["retyped"]
        ]
        problems += [f"{name} not in the merged model" for name in grid["unmatched"]]
        text = "FAILED: " + ("; ".join(problems) or "no tensor in the target type")
    return text + (f" (kept f16: {', '.join(grid['kept_f16'])})" if grid.get("kept_f16") else "")


def grid_job(job: GridJob, channel: Channel) -> GridResult:
    import gguf

    from workbench.qat import grid, mixture

    channel.phase("grid check")
    reader = gguf.GGUFReader(job.gguf)
    arch, blocks = mixture.read_header(job.gguf)
    where = mixture.weight_files(job.merged)
    merged = {name: (where[hf], hf) for hf, name in mixture.gguf_names(list(where), arch, blocks).items()}
    kept = {tensor for flag, tensor in KEPT.items() if not getattr(job, flag)}
    if job.plan is not None:
        planned = mixture.Plan.load(job.plan).types  # GGUF name -> the grid it trained on (None: off grid)
    else:  # a single type: every weight but those kept f16, as llama.cpp stores them all in it
        target_type = grid.GRIDS[job.target].ggml_type
        planned = {
            t.name: job.target
            for t in reader.tensors
            if len(t.shape) >= 2 and t.name not in kept
            and (t.name in merged or gguf.GGMLQuantizationType(t.tensor_type).name == target_type)
        }  # fmt: skip

    compared, mismatched, retyped, unmatched = 0, [], [], []
    for tensor in reader.tensors:
        if len(tensor.shape) < 2:
            continue  # norms and biases stay f32 in every file
        kind = gguf.GGMLQuantizationType(tensor.tensor_type).name
        trained = planned.get(tensor.name)
        if trained is None:
            if kind not in UNROUNDED:
                retyped.append(Retyped(tensor.name, kind))  # rounded in the file, not in training
            continue
        g = grid.GRIDS[trained]
        if kind != g.ggml_type:
            retyped.append(Retyped(tensor.name, kind, trained))
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
