"""The per-tensor types a quantization-aware run trains for.

A single type (q4_0, q8_0) is exported `--pure`: every weight whose rows fit its blocks in that type. A
mixture (q4_k_m, q5_k_m, q6_k) is what `llama-quantize` makes of this model's shapes and names — Q6_K for
some attention-value and feed-forward-down tensors, the output in Q6_K, and fallbacks (q5_0, q5_1, q8_0,
f16) for rows not a multiple of 256. The workbench does not re-implement those rules: it converts the base
model to an f16 GGUF and asks `llama-quantize --dry-run`, then trains each weight on its own type's grid.
The plan is saved with the trained model (`PLAN_FILE`) and the grid check holds the exported file to it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# recipe target -> the file type llama-quantize makes (its mixture); single types are trained `--pure`
MIXTURES = {"q4_k_m": "q4_k_m", "q5_k_m": "q5_k_m", "q6_k": "q6_k"}
PLAN_FILE = "qat-types.json"  # beside the trained model: GGUF tensor -> the grid it was trained on


@dataclass(frozen=True)
class Plan:
    """Which grid each weight trains on."""

    target: str  # the recipe's train.qat.target
    types: dict[str, str | None]  # GGUF tensor name -> a grid.GRIDS key; None: not on a grid (f16, f32)
    names: dict[str, str]  # the model's weight name ("model.layers.0.mlp.down_proj.weight") -> GGUF name

    def grid_of(self, weight: str) -> str | None:
        """The grid of a weight named as the model names it (a peft wrapper's prefix is ignored)."""
        for prefix in ("", "base_model.model."):
            if weight.startswith(prefix) and weight[len(prefix) :] in self.names:
                return self.types.get(self.names[weight[len(prefix) :]])
        return None

    def counts(self) -> dict[str, int]:
        return dict(Counter(kind for kind in self.types.values() if kind is not None))

    def save(self, folder: Path) -> Path:
        from workbench.core.fsutil import atomic_write_text

        path = folder / PLAN_FILE
        atomic_write_text(path, json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Plan:
        data: dict[str, Any] = json.loads(path.read_text())
        return cls(data["target"], data["types"], data["names"])


def grid_key(ggml_type: str) -> str | None:
    """llama-quantize's type name ("q4_K") -> the grid that emulates it, or None (f16, f32: not rounded)."""
    from workbench.qat import grid

    key = ggml_type.lower()
    return key if key in grid.GRIDS else None


def gguf_names(weights: list[str], arch: str, blocks: int) -> dict[str, str]:
    """The model's weight names -> the GGUF tensor names llama.cpp's converter gives them (gguf-py's map)."""
    import gguf

    by_name = {name: kind for kind, name in gguf.MODEL_ARCH_NAMES.items()}
    mapping = gguf.get_tensor_name_map(by_name[arch], blocks)
    names = {}
    for weight in weights:
        stem, _, suffix = weight.rpartition(".")
        mapped = mapping.get_name(stem)
        if mapped:
            names[weight] = f"{mapped}.{suffix}"
    return names


def read_header(path: Path) -> tuple[str, int]:
    """A GGUF file's architecture and block count."""
    import gguf

    reader = gguf.GGUFReader(path)
    field = reader.fields["general.architecture"]
    arch = bytes(field.parts[field.data[0]]).decode()
    blocks = reader.fields[f"{arch}.block_count"]
    return arch, int(blocks.parts[blocks.data[0]][0])


def weight_files(folder: Path) -> dict[str, Path]:
    """A model folder's tensor names -> the safetensors file that holds each (headers only: a large model
    never sits in memory whole)."""
    from safetensors import safe_open

    where: dict[str, Path] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            where.update(dict.fromkeys(handle.keys(), path))
    return where


def plan_from(planned: dict[str, str], f16: Path, model: Path, target: str) -> Plan:
    """The mixture `target` as llama-quantize plans it (`planned`: its dry run on `f16`, a GGUF of `model` or
    of a model of the same shapes and names; `workbench.export.gguf.planned_types`)."""
    arch, blocks = read_header(f16)
    types = {name: grid_key(kind) for name, kind in planned.items()}
    return Plan(target, types, gguf_names(list(weight_files(model)), arch, blocks))
