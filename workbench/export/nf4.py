"""The nf4 format (`workbench.core.formats.NF4`): the merged model saved as a bitsandbytes 4-bit checkpoint
transformers loads directly, made in a worker (task `nf4.export`), and loaded for inference through
bitsandbytes' kernels, computing in the workbench's dtype for the device."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from workbench.core.formats import Estimate
from workbench.core.recipe import ExportSection
from workbench.core.records import Variant
from workbench.export.making import ExportContext, Written, record_measurement
from workbench.workers.child import Channel

BITS = 4.13  # per weight: 4-bit codes, double-quantized block scales


def quantization_config(compute_dtype: str = "bfloat16"):  # noqa: ANN201 - transformers type, imported lazily
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
    )


def export(merged: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(merged, quantization_config=quantization_config(), device_map=device)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(merged).save_pretrained(out)


def load(path: str, device: str, dtype: str) -> Any:
    """The checkpoint through bitsandbytes' kernels, computing in `dtype` where it is not "auto" (a CPU:
    float32): what eval, bench, chat and the export checks all run."""
    import torch

    from workbench.export.load import transformers_model

    model = transformers_model(path, device, dtype)
    return model if dtype == "auto" else compute_in(model, getattr(torch, dtype))


def compute_in(model: Any, dtype: Any) -> Any:
    """Run a loaded nf4 model in `dtype`: bitsandbytes' compute dtype and every unquantized weight. The
    checkpoint says bf16 (right on a GPU); on a CPU without bf16 matrix units bf16 runs several times
    slower than fp32. Returns the model."""
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.compute_dtype = dtype
    cast_unquantized(model, dtype)
    return model


def cast_unquantized(model: Any, dtype: Any) -> None:
    for param in model.parameters():  # transformers refuses .to(dtype) on a model it loaded quantized
        if param.is_floating_point():
            param.data = param.data.to(dtype)


@dataclass(frozen=True)
class Nf4Job:
    """The merged model -> an nf4 checkpoint (task `nf4.export`)."""

    merged: Path
    out: Path


def export_job(job: Nf4Job, channel: Channel) -> Written:
    export(job.merged, job.out)
    return Written()


def estimate(section: ExportSection) -> Estimate:
    return Estimate(bits=4.5, memory=4.5)


def export_variants(ctx: ExportContext) -> list[Variant]:
    section, merged = ctx.recipe.export, ctx.inputs.merged
    out = ctx.out / f"{merged.name}-BNB-NF4"
    variant = Variant(
        name=out.name,
        format="nf4",
        path=str(out),
        bits=BITS,
        parent=merged.name,
        quantizer="bitsandbytes",
        quantizer_version=metadata.version("bitsandbytes"),
    )

    def build(variant: Variant) -> None:
        job = Nf4Job(Path(merged.path), out)
        outcome = ctx.run_worker("nf4.export", job, name=variant.name, timeout=section.timeout_s, echo=True)
        ctx.made(outcome, out)
        record_measurement(variant, outcome)
        ctx.check(variant)

    return [ctx.attempt(variant, build)]
