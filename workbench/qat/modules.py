"""The target's rounding in the training forward pass, with a straight-through gradient.

What ships is `quantize(merge(W, adapter))`, so an adapted layer computes `x @ Q(W + s·B·A)ᵀ` — the
rounding applied to the merged weight, not to W alone — and its adapter gets the gradient the rounding
lets through (identity inside the grid). Full fine-tunes use torchao's fake-quantized modules
(`FakeQuantizedLinear`, `FakeQuantizedEmbedding`) with the workbench's quantizer in them. Frozen weights
(the embeddings of a LoRA run, linears without an adapter) are rounded once, in place: they never change.

Each weight goes through the dtypes it is stored in on its way to the file (the merge dtype, then the f16
GGUF) before it is rounded, so training sees the values the file will hold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear
from torchao.quantization.qat.fake_quantize_config import FakeQuantizeConfigBase
from torchao.quantization.qat.fake_quantizer import FakeQuantizerBase

from workbench.qat import grid
from workbench.qat.mixture import Plan


@dataclass
class GGMLFakeQuantizeConfig(FakeQuantizeConfigBase):
    """A llama.cpp type as a torchao fake-quantization config."""

    target: str  # a key of grid.GRIDS
    chain: tuple[torch.dtype, ...] = ()  # storage dtypes before the rounding


def rounding(grids: Iterable[str], device: str) -> str:
    """What rounds these grids (keys of grid.GRIDS) on this device: libggml itself for any of them, or torch."""
    return "libggml" if any(grid.by_libggml(grid.GRIDS[key], device) for key in grids) else "torch"


class _StraightThrough(torch.autograd.Function):
    """Forward: the rounded values, exactly. Backward: the gradient passes to the unrounded weight."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
        return rounded

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class GGMLFakeQuantizer(FakeQuantizerBase):
    """torchao fake quantizer whose numerics are llama.cpp's reference quantizer (workbench.qat.grid)."""

    def __init__(self, config: GGMLFakeQuantizeConfig):
        super().__init__()
        self.config = config
        self.grid = grid.GRIDS[config.target]
        self.enabled = False  # switched on by the trainer's callback (train.qat.start_after_steps)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        with torch.no_grad():
            rounded = grid.fake_quantize(weight.detach(), self.grid, self.config.chain).to(weight.dtype)
        return _StraightThrough.apply(weight, rounded) if weight.requires_grad else rounded


def _merged_forward(layer: Any, quantizer: GGMLFakeQuantizer) -> Callable[..., torch.Tensor]:
    """A peft LoRA layer's forward on the rounded merged weight. The adapter's own path is added as
    `delta - delta.detach()` (zero in value) on a detached input: A and B get the straight-through
    gradient of `Q(W + s·B·A)`, and the input's gradient goes through the rounded weight only."""
    from peft.utils.integrations import dequantize_module_weight

    original = layer.forward

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not quantizer.enabled or layer.disable_adapters or layer.merged or kwargs.get("adapter_names"):
            return original(x, *args, **kwargs)
        base = layer.get_base_layer()
        adapters = [name for name in layer.active_adapters if name in layer.lora_A]
        with torch.no_grad():
            weight = dequantize_module_weight(base).float()
            for name in adapters:
                weight = weight + layer.get_delta_weight(name).float()
            weight = quantizer(weight).to(x.dtype)
        result = F.linear(x, weight, base.bias)
        detached = x.detach()
        for name in adapters:
            lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
            delta = lora_b(lora_a(layer.lora_dropout[name](detached.to(lora_a.weight.dtype)))) * layer.scaling[name]
            result = result + (delta - delta.detach()).to(result.dtype)
        return result

    return forward


@dataclass
class QATModel:
    """What `prepare` did to a model; `switch_on` starts the rounding."""

    target: str
    chain: tuple[torch.dtype, ...]  # the storage dtypes every weight goes through before the rounding
    quantizers: list[GGMLFakeQuantizer] = field(default_factory=list)
    # frozen weights and their grids, rounded in place when switched on
    frozen: list[tuple[str, torch.nn.Parameter, str]] = field(default_factory=list)
    on_grid: dict[str, str] = field(default_factory=dict)  # weights trained on a grid -> that grid
    off_grid: list[str] = field(default_factory=list)  # not stored on a grid (llama.cpp keeps them f16)
    enabled: bool = False
    keep_unrounded: bool = False  # keep the frozen weights' values from before the rounding (a teacher uses them)
    unrounded: dict[str, torch.Tensor] = field(default_factory=dict)

    def switch_on(self) -> None:
        if self.enabled:
            return
        for quantizer in self.quantizers:
            quantizer.enabled = True
        with torch.no_grad():
            for name, param, kind in self.frozen:
                rounded = grid.fake_quantize(param.data, grid.GRIDS[kind], self.chain).to(param.dtype)
                if self.keep_unrounded:
                    self.unrounded[name] = param.data
                    param.data = rounded
                else:
                    param.data.copy_(rounded)
        self.enabled = True


def _parent(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    owner, _, attr = name.rpartition(".")
    return (model.get_submodule(owner) if owner else model), attr


def prepare(
    model: Any, target: str, *, merge_dtype: torch.dtype, embeddings: bool, output: bool, plan: Plan | None = None
) -> QATModel:
    """Put the target's rounding into `model` (a peft model for LoRA / QLoRA, a plain one for a full
    fine-tune), switched off until `switch_on`. `embeddings` / `output`: whether the token embeddings and
    the output layer are on the grid (for tied embeddings, the one tensor follows `embeddings`). `plan`: the
    grid of each weight (a mixture, `workbench.qat.mixture`); without one every weight that fits is on the
    target's grid."""
    from peft.tuners.lora import LoraLayer

    state = QATModel(target, grid.storage_chain(merge_dtype))
    input_embeddings, output_layer = model.get_input_embeddings(), model.get_output_embeddings()
    tied = output_layer is not None and output_layer.weight is input_embeddings.weight
    wanted = {id(input_embeddings): embeddings, id(output_layer): embeddings if tied else output}
    adapted: set[int] = set()
    chosen: list[tuple[str, Any]] = []
    embeddings_name = ""
    for name, module in model.named_modules():
        if module is input_embeddings:
            embeddings_name = name
        if isinstance(module, LoraLayer):
            adapted.update(id(sub) for sub in cast(torch.nn.Module, module).modules() if sub is not module)
            chosen.append((name, module))
        elif id(module) not in adapted and isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            if wanted.get(id(module), True):
                chosen.append((name, module))
        elif id(module) not in adapted and type(module).__name__ == "Linear4bit":
            raise ValueError(
                f"{name} is a 4-bit layer without an adapter: QLoRA quantization-aware training needs"
                " train.lora.targets: all-linear"
            )

    def grid_of(name: str, module: Any, shape: tuple[int, ...]) -> str | None:
        if plan is None:
            return target if grid.fits(shape, grid.GRIDS[target]) else None
        if tied and module is output_layer:  # one tensor in the file: the embeddings'
            name = embeddings_name
        kind = plan.grid_of(f"{name}.weight")
        return kind if kind is not None and grid.fits(shape, grid.GRIDS[kind]) else None

    seen: set[int] = set()
    for name, module in chosen:
        weight: Any = module.get_base_layer().weight if isinstance(module, LoraLayer) else module.weight
        shape = tuple(weight.shape) if not hasattr(weight, "quant_state") else tuple(weight.quant_state.shape)
        kind = grid_of(name, module, shape)
        if kind is None:
            state.off_grid.append(name)
            continue
        config = GGMLFakeQuantizeConfig(kind, state.chain)
        if id(weight) not in seen:  # a tied weight is one tensor in the file
            state.on_grid[name] = kind
        if isinstance(module, LoraLayer):
            quantizer = GGMLFakeQuantizer(config)
            module.forward = _merged_forward(module, quantizer)  # type: ignore[attr-defined]
            state.quantizers.append(quantizer)
        elif not weight.requires_grad:
            if id(weight) not in seen:  # rounded once
                state.frozen.append((name, weight, kind))
        else:
            quantizer = GGMLFakeQuantizer(config)
            owner, attr = _parent(model, name)
            swapped: torch.nn.Module
            if isinstance(module, torch.nn.Linear):
                swapped = FakeQuantizedLinear.from_linear(module)
            else:
                swapped = FakeQuantizedEmbedding.from_embedding(module)
            swapped.weight_fake_quantizer = quantizer
            setattr(owner, attr, swapped)
            state.quantizers.append(quantizer)
        seen.add(id(weight))
    return state
