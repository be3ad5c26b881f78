"""The gptq and awq formats' exporters (`workbench.core.formats.GPTQ`, `AWQ`): GPTQModel (the maintained
successor of auto-gptq and AutoAWQ), writing the on-disk formats those wrote (`quantize_config.json`),
which transformers and vLLM load.

Calibration uses the fine-tune's own training rows, rendered through its chat template: the
activations that matter are the ones the model will see when serving.

Runs in a worker (task `gptq.export`); the variant's checks load it again through transformers, as a
server would.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from workbench.core.devices import pick_device
from workbench.core.formats import Estimate
from workbench.core.fsutil import atomic_write_text
from workbench.core.recipe import ExportSection
from workbench.core.records import Variant
from workbench.data.dataset import render
from workbench.data.files import read_jsonl
from workbench.export.imatrix import generic_texts
from workbench.export.making import ExportContext, ExportFailed, Written, record_measurement
from workbench.workers.child import Channel

PEAK_BYTES = 4.5  # a parameter, in memory


def calibration_texts(rows: list[dict[str, Any]], tokenizer: Any) -> list[str]:
    """Training rows as training rendered them (workbench.data.dataset.render)."""
    return [render(row, tokenizer) for row in rows]


def calibration(source: str, data_dir: Path, tokenizer: Any, count: int) -> list[str]:
    """What GPTQ / AWQ calibrate on (`export.calibration`): the first `count` training rows (task), or the
    first `count` documents of the generic text the importance matrix's `generic` reads."""
    if source == "generic":
        return generic_texts()[:count]
    return calibration_texts(read_jsonl(data_dir / "train.jsonl")[:count], tokenizer)


def skip_awq_clip() -> None:
    """AutoAWQ's `quantize(apply_clip=False)`. GPTQModel keeps the switch on its AWQ processor only, set
    in its constructor; the clip search (10 clipping ratios per weight group, on a sample of the
    calibration activations) is the slowest part of AWQ on a CPU."""
    from gptqmodel.looper.awq_processor import AWQProcessor

    construct = AWQProcessor.__init__

    def without_clip(self: Any, *args: Any, **kwargs: Any) -> None:
        construct(self, *args, **kwargs)
        self.apply_clip = False

    AWQProcessor.__init__ = without_clip


def allow_fp32_awq_packing() -> None:
    """GPTQModel's AWQ module refuses to be built from an fp32 model, though it packs fp32 weights into
    fp16 scales itself and computes fp32 inputs in fp16; let it (the file is the same AutoAWQ GEMM layout)."""
    import torch
    from gptqmodel.nn_modules.qlinear.torch_awq import AwqTorchLinear

    if torch.float32 not in AwqTorchLinear.SUPPORTS_DTYPES:
        AwqTorchLinear.SUPPORTS_DTYPES = [*AwqTorchLinear.SUPPORTS_DTYPES, torch.float32]


@dataclass(frozen=True)
class GPTQJob:
    """The merged model -> a GPTQ or AWQ checkpoint through GPTQModel (task `gptq.export`)."""

    method: Literal["gptq", "awq"]
    merged: Path
    out: Path
    calibration: list[str]  # the texts it calibrates on (export.calibration)
    bits: int
    group_size: int
    desc_act: bool  # GPTQ's activation order
    awq_clip: bool = True  # AWQ's clip search
    dtype: Literal["float32", "auto"] = "auto"  # of the calibration forwards


def export_job(job: GPTQJob, channel: Channel) -> Written:
    # GPTQModel sizes its CPU worker pool from the machine; on two cores its default asks for more than it has
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(1, min(os.cpu_count() or 1, 8))))
    import torch
    from gptqmodel import GPTQModel
    from gptqmodel.quantization.config import AWQConfig, GPTQConfig
    from transformers import AutoTokenizer

    if job.method == "gptq":
        config = GPTQConfig(bits=job.bits, group_size=job.group_size, desc_act=job.desc_act)
    else:
        config = AWQConfig(bits=job.bits, group_size=job.group_size)
        if not job.awq_clip:
            skip_awq_clip()
    tokenizer = AutoTokenizer.from_pretrained(job.merged)
    # GPTQModel picks bf16 on CPU, where torch's bf16 matmul ran 8.6x slower than fp32 on a CPU without
    # bf16 matrix units: the export stage asks for fp32 calibration forwards there
    dtype = torch.float32 if job.dtype == "float32" else "auto"
    if dtype is torch.float32 and job.method == "awq":
        allow_fp32_awq_packing()
    model = GPTQModel.load(str(job.merged), config, dtype=dtype)
    model.quantize(job.calibration, tokenizer=tokenizer, batch_size=8)
    model.save(str(job.out))
    tokenizer.save_pretrained(job.out)
    if dtype is torch.float32:
        store_unquantized_as(job.out, merged_dtype(job.merged))
    return Written()


def merged_dtype(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def store_unquantized_as(folder: Path, dtype_name: str) -> None:
    """Calibration ran in fp32: the weights left unquantized (embeddings, norms) go back to the merged
    model's dtype, as a checkpoint quantized in that dtype would hold them (packed integers and fp16
    scales are untouched); config.json says so."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    dtype = getattr(torch, dtype_name)
    if dtype is torch.float32:
        return
    total = 0
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            metadata = handle.metadata()
        tensors = {k: t.to(dtype) if t.dtype is torch.float32 else t for k, t in load_file(file).items()}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        part = file.with_name(file.name + ".part")
        save_file(tensors, str(part), metadata=metadata)
        os.replace(part, file)
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # the shards' sizes changed
        data = json.loads(index.read_text())
        data.setdefault("metadata", {})["total_size"] = total
        atomic_write_text(index, json.dumps(data, indent=2))
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = dtype_name
    atomic_write_text(config_file, json.dumps(config, indent=2))


def estimate(section: ExportSection) -> Estimate:
    return Estimate(bits=section.bits + 0.5, memory=PEAK_BYTES)  # + group scales and zeros


def export_gptq(ctx: ExportContext) -> list[Variant]:
    return [export_method(ctx, "gptq", desc_act=ctx.recipe.export.desc_act)]


def export_awq(ctx: ExportContext) -> list[Variant]:
    return [export_method(ctx, "awq", desc_act=False, clip=ctx.recipe.export.awq_clip)]


def export_method(ctx: ExportContext, method: Literal["gptq", "awq"], desc_act: bool, **recorded: Any) -> Variant:
    """One GPTQModel variant (`method`: gptq or awq, the format it makes), calibrated on the training rows;
    `recorded`: more of the method's settings to record on it."""
    section, merged = ctx.recipe.export, ctx.inputs.merged
    texts = calibration(section.calibration, ctx.inputs.data, ctx.inputs.tokenizer, section.calibration_rows)
    out = ctx.out / f"{merged.name}-{method.upper()}-Int{section.bits}"
    variant = Variant(
        name=out.name,
        format=method,
        path=str(out),
        bits=section.bits,
        parent=merged.name,
        quantizer="gptqmodel",
        quantizer_version=metadata.version("gptqmodel"),
        meta={
            "group_size": section.group_size,
            "desc_act": desc_act,
            "calibration": section.calibration,
            "calibration_rows": len(texts),
            "calibration_tokens": sum(
                len(ids) for ids in ctx.inputs.tokenizer(texts, add_special_tokens=False)["input_ids"]
            ),
            **recorded,
        },
    )

    def build(variant: Variant) -> None:
        job = GPTQJob(
            method=method,
            merged=Path(merged.path),
            out=out,
            calibration=texts,
            bits=section.bits,
            group_size=section.group_size,
            desc_act=section.desc_act,
            awq_clip=section.awq_clip,
            # GPTQModel calibrates in bf16 on CPU, where torch's bf16 matmul is several times slower
            dtype="float32" if pick_device("auto") == "cpu" else "auto",
        )
        outcome = ctx.run_worker("gptq.export", job, name=variant.name, timeout=section.timeout_s, echo=True)
        ctx.made(outcome, out)
        if not (out / "quantize_config.json").is_file():
            raise ExportFailed(f"{variant.name}: GPTQModel wrote no quantize_config.json")
        record_measurement(variant, outcome)
        ctx.check(variant)

    return ctx.attempt(variant, build)
