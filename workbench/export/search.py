"""A per-tensor quantization recipe searched under a size budget (`export.search`).

The weights are cut into groups (each kind of weight across the layers — attn_q, ..., ffn_down, token_embd,
output — or each kind in each layer). Each group's sensitivity is measured: the file quantized with that group
alone in a candidate type and everything else in q8_0, its KL divergence to the f16 file on training
conversations the importance matrix did not see (`workbench.export.trials`; the held-out split is never
read). Assuming the groups' damage adds up, the types are allocated by an exact multiple-choice knapsack:
the least total KLD whose bytes fit the budget. llama.cpp quantizes — the plan is a `--tensor-type-file`
kept beside the file — and the workbench decides, then measures the result like every other variant.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from workbench.core.errors import InputError
from workbench.core.gguf_types import Budget
from workbench.export.gguf import Tensor
from workbench.export.trials import Measured, Trial

BASE = "q8_0"  # what every other group is in while one is measured
LAYER_WEIGHT = re.compile(r"blk\.(\d+)\.(.+)\.weight$")
SLACK = 4096  # bytes kept free for metadata the searched file has and the budget's file may not
ALIGNMENT = 32  # GGUF pads each tensor's data to this: up to as many bytes more a tensor than its size
BUCKETS = 20000  # the knapsack's resolution: sizes are rounded up to 1/BUCKETS of the capacity


class BudgetTooSmall(InputError):
    """No assignment of the candidate types fits the budget."""


@dataclass(frozen=True)
class Group:
    """Weights that take one type together."""

    name: str  # "attn_q" (kind) or "blk.3.attn_q" (layer)
    pattern: str  # what llama-quantize's --tensor-type matches (regex search in the tensor's name)
    tensors: tuple[Tensor, ...]

    @property
    def weights(self) -> int:
        return sum(tensor.count for tensor in self.tensors)

    def fits(self, ggml_type: str) -> bool:
        """Every row a whole number of the type's blocks (else llama-quantize falls back to another type)."""
        block = GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type.upper()]][0]
        return all(tensor.dims[0] % block == 0 for tensor in self.tensors)

    def bytes(self, ggml_type: str) -> int:
        return sum(tensor_bytes(tensor.count, ggml_type) for tensor in self.tensors)


def tensor_bytes(count: int, ggml_type: str) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type.upper()]]
    return count // block * size


def groups(tensors: list[Tensor], by: str = "kind") -> list[Group]:
    """The weight matrices in groups, in the file's order (vectors, such as norms, stay as they are)."""
    found: dict[str, list[Tensor]] = {}
    patterns: dict[str, str] = {}
    for tensor in tensors:
        if len(tensor.dims) < 2:
            continue
        layer = LAYER_WEIGHT.match(tensor.name)
        if layer is None:
            name = tensor.name.removesuffix(".weight")
            pattern = f"^{re.escape(tensor.name)}$"
        elif by == "layer":
            name = f"blk.{layer[1]}.{layer[2]}"
            pattern = f"^{re.escape(tensor.name)}$"
        else:
            name = layer[2]
            pattern = rf"^blk\.\d+\.{re.escape(layer[2])}\.weight$"
        found.setdefault(name, []).append(tensor)
        patterns[name] = pattern
    return [Group(name, patterns[name], tuple(members)) for name, members in found.items()]


def sensitivity_trials(
    all_groups: list[Group], types: list[str], imatrix: Path | None
) -> tuple[Trial, dict[tuple[str, str], Trial]]:
    """The baseline (every group in q8_0) and one trial per group and type it fits, other than q8_0."""
    baseline = Trial("all q8_0", BASE.upper(), imatrix)
    trials = {}
    for group in all_groups:
        for ggml_type in types:
            if ggml_type != BASE and group.fits(ggml_type):
                override = (f"{group.pattern}={ggml_type}",)
                trials[group.name, ggml_type] = Trial(f"{group.name}={ggml_type}", BASE.upper(), imatrix, override)
    return baseline, trials


@dataclass(frozen=True)
class Options:
    """What each group may take: type -> (bytes, added KLD over the all-q8_0 file)."""

    by_group: dict[str, dict[str, tuple[int, float]]]

    @classmethod
    def measured(
        cls,
        all_groups: list[Group],
        types: list[str],
        baseline: Measured,
        trials: dict[tuple[str, str], Measured],
    ) -> Options:
        by_group = {}
        for group in all_groups:
            options = {BASE: (group.bytes(BASE), 0.0)} if group.fits(BASE) and BASE in types else {}
            for ggml_type in types:
                if (group.name, ggml_type) in trials:
                    options[ggml_type] = (group.bytes(ggml_type), trials[group.name, ggml_type].kld - baseline.kld)
            if not options:
                raise InputError(f"tensor group {group.name}: none of {', '.join(types)} fits its rows")
            by_group[group.name] = options
        return cls(by_group)


def allocate(options: Options, capacity: int) -> dict[str, str]:
    """The type of each group whose added KLDs sum least with bytes within `capacity` (an exact
    multiple-choice knapsack over sizes rounded up to 1/BUCKETS of the capacity, so the true total fits)."""
    unit = max(1, math.ceil(capacity / BUCKETS))
    slots = capacity // unit
    best = np.zeros(slots + 1)  # least KLD with at most `index` units used, over the groups so far
    choices = []
    for name, choice in options.by_group.items():
        types = list(choice)
        table = np.full((len(types), slots + 1), np.inf)
        for row, ggml_type in enumerate(types):
            size, kld = choice[ggml_type]
            units = math.ceil(size / unit)
            if units <= slots:
                table[row, units:] = best[: slots + 1 - units] + kld
        pick = table.argmin(axis=0)
        best = table[pick, np.arange(slots + 1)]
        choices.append((name, types, pick))
    if not np.isfinite(best[slots]):
        smallest = sum(min(size for size, _ in choice.values()) for choice in options.by_group.values())
        raise BudgetTooSmall(
            f"the budget leaves {capacity / 2**20:.2f} MiB for the searched weights; the smallest of these types"
            f" need {smallest / 2**20:.2f} MiB"
        )
    plan, left = {}, slots
    for name, types, pick in reversed(choices):
        ggml_type = types[pick[left]]
        plan[name] = ggml_type
        left -= math.ceil(options.by_group[name][ggml_type][0] / unit)
    return dict(reversed(plan.items()))


def predicted_kld(options: Options, plan: dict[str, str], baseline: float) -> float:
    return baseline + sum(options.by_group[name][ggml_type][1] for name, ggml_type in plan.items())


def capacity(
    budget: Budget, budget_file_bytes: int | None, f16: list[Tensor], f16_size: int, all_groups: list[Group]
) -> int:
    """The bytes the searched groups may take. For a size budget (a type's file, MiB): the budget less what
    the file has besides them (the f16 file's metadata and padding, the tensors left as they are) and a
    slack; for bits per weight: those bits over the searched weights."""
    grouped = {tensor.name for group in all_groups for tensor in group.tensors}
    if budget.bpw is not None:
        return int(budget.bpw * sum(group.weights for group in all_groups) / 8)
    limit = budget_file_bytes if budget.same_as else int((budget.mib or 0) * 2**20)
    assert limit is not None
    f16_tensor_bytes = sum(tensor_bytes(t.count, t.type) for t in f16)
    overhead = f16_size - f16_tensor_bytes  # metadata, alignment padding
    kept = sum(tensor_bytes(t.count, t.type) for t in f16 if t.name not in grouped)
    return limit - overhead - kept - SLACK - ALIGNMENT * len(f16)


def tensor_type_file(all_groups: list[Group], plan: dict[str, str]) -> str:
    """llama-quantize's --tensor-type-file: one `pattern=type` a line, every group named."""
    patterns = {group.name: group.pattern for group in all_groups}
    return "".join(f"{patterns[name]}={ggml_type}\n" for name, ggml_type in plan.items())


def compact(plan: dict[str, str]) -> str:
    """The plan in a line: groups of the same type together ("q5_0: attn_q attn_k; q8_0: ffn_down")."""
    by_type: dict[str, list[str]] = {}
    for name, ggml_type in plan.items():
        by_type.setdefault(ggml_type, []).append(name)
    return "; ".join(f"{ggml_type}: {' '.join(names)}" for ggml_type, names in by_type.items())
