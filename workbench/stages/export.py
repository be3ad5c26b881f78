"""Export stage: quantized variants of the merged model. One failing variant never stops the others."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from workbench import parity, preflight
from workbench.export import gguf, gptq, nf4
from workbench.export.run_measured import Measured, run_measured
from workbench.fsutil import dir_size
from workbench.models import display_name
from workbench.recipe import Recipe
from workbench.stages.base import Stage, StageContext
from workbench.stages.data import read_jsonl
from workbench.variants import Variant, variant_name


def key_inputs(recipe: Recipe) -> dict[str, Any]:
    return {"export": recipe.export.model_dump(mode="json"), "llama_cpp": metadata.version("llama_cpp_python")}


def held_out_conversations(ctx: StageContext, count: int) -> list[list[dict[str, str]]]:
    rows = read_jsonl(ctx.inputs["data"] / "held_out.jsonl")
    return [row["messages"] for row in rows if "messages" in row][:count]


def record_parity(ctx: StageContext, variant: Variant, result: parity.ParityResult) -> None:
    variant.meta["parity"] = result.to_dict()
    if not result.passed:
        where = result.first_difference or result.stop_token
        ctx.say(f"{variant.name}: SERVING PARITY FAILED: {where}")


@dataclass
class ExportInputs:
    """What every exporter needs, read once per stage."""

    merged: Variant
    tokenizer: Any  # the training tokenizer and chat template (saved with the merged model)
    smoke_prompts: list[list[dict[str, str]]]  # held-out conversations without their answers
    conversations: list[list[dict[str, str]]]  # held-out conversations for the parity check

    def check_parity(self, ctx: StageContext, variant: Variant, check: Callable[..., parity.ParityResult]) -> None:
        if self.conversations:
            record_parity(ctx, variant, check(self.tokenizer, Path(variant.path), self.conversations))


def record_measurement(variant: Variant, result: Measured) -> None:
    variant.seconds, variant.peak_mem_mb = round(result.seconds, 2), result.peak_rss_mb


def attempt(ctx: StageContext, variant: Variant, build: Callable[[Variant], None]) -> Variant:
    """Run one exporter; its failure is recorded on the variant and the stage goes on."""
    ctx.say(f"exporting {variant.name}")
    try:
        build(variant)
        variant.size = dir_size(Path(variant.path))
        ctx.say(f"{variant.name}: {variant.size / 1e6:.1f} MB in {variant.seconds:.1f}s")
    except Exception as exc:  # noqa: BLE001 - any exporter error becomes the variant's error
        variant.status = "failed"
        variant.error = "".join(traceback.format_exception_only(exc)).strip()
        ctx.failures.append(f"{variant.name}: {variant.error.splitlines()[0]}")
        ctx.say(f"{variant.name} FAILED: {variant.error.splitlines()[0]}")
    ctx.event("variant", **variant.to_dict())
    return variant


def export_gguf(ctx: StageContext, inputs: ExportInputs) -> list[Variant]:
    types, merged = ctx.recipe.export.gguf, inputs.merged
    if not types:
        return []
    version = metadata.version("llama_cpp_python")
    stem = merged.name
    source = ctx.out / f"{stem}-F16.gguf" if "f16" in types else ctx.work / f"{stem}-F16.gguf"

    def smoke(variant: Variant) -> None:
        inputs.check_parity(ctx, variant, parity.check_gguf)
        variant.meta["smoke"] = [
            {"prompt": messages[-1]["content"], "reply": gguf.chat(Path(variant.path), messages)}
            for messages in inputs.smoke_prompts
        ]

    def build_f16(variant: Variant) -> None:
        result = gguf.convert(Path(merged.path), source, "f16")
        record_measurement(variant, result)
        variant.meta["tensor_types"] = gguf.tensor_types(source)
        smoke(variant)

    def builder(gguf_type: str) -> Callable[[Variant], None]:
        def build(variant: Variant) -> None:
            if not source.is_file():
                raise gguf.ExportFailed("no f16 GGUF to quantize from (its conversion failed)")
            result, fallbacks = gguf.quantize(source, Path(variant.path), gguf_type)
            record_measurement(variant, result)
            variant.meta["tensor_types"] = gguf.tensor_types(Path(variant.path))
            variant.meta["fallbacks"] = fallbacks
            if fallbacks:
                ctx.say(f"{len(fallbacks)} tensors fell back to another type (rows not a multiple of the block)")
            smoke(variant)

        return build

    def new_variant(gguf_type: str, parent: str) -> Variant:
        path = source if gguf_type == "f16" else ctx.out / f"{stem}-{gguf_type.upper()}.gguf"
        return Variant(
            name=path.name,
            format="gguf",
            path=str(path),
            bits=gguf.GGUF_TYPES[gguf_type][1],
            parent=parent,
            quantizer="llama.cpp",
            quantizer_version=version,
            meta={"type": gguf_type},
        )

    f16 = attempt(ctx, new_variant("f16", merged.name), build_f16)
    done = [f16] if "f16" in types else ([] if f16.status == "done" else [f16])
    for gguf_type in [t for t in types if t != "f16"]:
        done.append(attempt(ctx, new_variant(gguf_type, f16.name), builder(gguf_type)))
    return done  # an f16 made only as a source stays in the work folder, removed with it


def export_nf4(ctx: StageContext, inputs: ExportInputs) -> list[Variant]:
    if not ctx.recipe.export.nf4:
        return []
    merged = inputs.merged
    out = ctx.out / f"{merged.name}-BNB-NF4"
    variant = Variant(
        name=out.name,
        format="nf4",
        path=str(out),
        bits=4.13,
        parent=merged.name,
        quantizer="bitsandbytes",
        quantizer_version=metadata.version("bitsandbytes"),
    )

    def build(variant: Variant) -> None:
        result = run_measured(["-m", "workbench.export.nf4", merged.path, str(out)])
        if result.returncode != 0:
            raise gguf.ExportFailed(f"nf4 export exited with {result.returncode}", result.output)
        record_measurement(variant, result)
        inputs.check_parity(ctx, variant, parity.check_hf)
        variant.meta["smoke"] = [{"prompt": m[-1]["content"], "reply": nf4.chat(out, m)} for m in inputs.smoke_prompts]

    return [attempt(ctx, variant, build)]


def export_gptq_awq(ctx: StageContext, inputs: ExportInputs) -> list[Variant]:
    section, merged = ctx.recipe.export, inputs.merged
    methods = [m for m in ("gptq", "awq") if getattr(section, m)]
    if not methods:
        return []
    train_rows = read_jsonl(ctx.inputs["data"] / "train.jsonl")[: section.calibration_rows]
    calibration = gptq.calibration_texts(train_rows, inputs.tokenizer)
    version = metadata.version("gptqmodel")
    variants = []
    for method in methods:
        out = ctx.out / f"{merged.name}-{method.upper()}-Int{section.bits}"
        variant = Variant(
            name=out.name,
            format=method,
            path=str(out),
            bits=section.bits,
            parent=merged.name,
            quantizer="gptqmodel",
            quantizer_version=version,
            meta={
                "group_size": section.group_size,
                "desc_act": section.desc_act and method == "gptq",
                "calibration_rows": len(calibration),
            },
        )

        def build(variant: Variant, method: str = method, out: Path = out) -> None:
            job = ctx.work / f"{method}-job.json"
            job.write_text(
                json.dumps(
                    {
                        "method": method,
                        "merged": merged.path,
                        "out": str(out),
                        "calibration": calibration,
                        "bits": section.bits,
                        "group_size": section.group_size,
                        "desc_act": section.desc_act,
                        "smoke": inputs.smoke_prompts,
                        "smoke_out": str(ctx.work / f"{method}-smoke.json"),
                    }
                )
            )
            result = run_measured(["-m", "workbench.export.gptq", str(job)])
            if result.returncode != 0 or not (out / "quantize_config.json").is_file():
                raise gguf.ExportFailed(f"{method} export exited with {result.returncode}", result.output)
            record_measurement(variant, result)
            variant.meta["smoke"] = json.loads((ctx.work / f"{method}-smoke.json").read_text())
            inputs.check_parity(ctx, variant, parity.check_hf)

        variants.append(attempt(ctx, variant, build))
    return variants


def preflight_export(ctx: StageContext, merged_dir: Path) -> None:
    """All requested files together on disk; the converter's peak (~6 bytes a parameter, measured) in memory."""
    params = preflight.parameter_count(merged_dir)
    section = ctx.recipe.export
    bits = sum(gguf.GGUF_TYPES[t][1] for t in section.gguf)
    if section.gguf and "f16" not in section.gguf:
        bits += 16  # the f16 source every quantization starts from
    bits += 4.5 if section.nf4 else 0
    bits += (section.bits + 0.5) * (section.gptq + section.awq)
    memory = params * 6 if section.gguf else params * 4.5
    preflight.check("export", ctx.run_dir, params * bits / 8 * 1.05, memory)


def run(ctx: StageContext) -> list[dict[str, Any]]:
    from transformers import AutoTokenizer

    merged_dir = ctx.inputs["merge"]
    base = variant_name(display_name(ctx.recipe.base_model), ctx.run_id)
    merged = Variant(
        name=base,
        format="hf",
        path=str(merged_dir),
        bits=16,
        size=dir_size(merged_dir),
        meta={"dtype": ctx.recipe.merge.dtype, "reference": True},
    )
    preflight_export(ctx, merged_dir)
    section = ctx.recipe.export
    inputs = ExportInputs(
        merged=merged,
        tokenizer=AutoTokenizer.from_pretrained(merged_dir),  # saved by the train stage
        smoke_prompts=[m[:-1] for m in held_out_conversations(ctx, section.smoke_prompts)],
        conversations=held_out_conversations(ctx, section.parity_prompts),
    )
    inputs.check_parity(ctx, merged, parity.check_hf)
    variants = [merged, *export_gguf(ctx, inputs), *export_nf4(ctx, inputs), *export_gptq_awq(ctx, inputs)]
    # paths point into the temporary folder until the stage is renamed into place
    final = ctx.run_dir / ctx.stage
    for variant in variants[1:]:
        variant.path = str(final / Path(variant.path).name)
    ctx.store.replace_variants(ctx.run_id, ["hf", "gguf", "nf4", "gptq", "awq"], [v.to_dict() for v in variants])
    exported = [v for v in variants[1:] if v.status == "done"]
    failed = [v for v in variants[1:] if v.status == "failed"]
    if failed and not exported:
        raise gguf.ExportFailed(f"every export failed: {', '.join(v.name for v in failed)}")
    return [
        {"name": v.name, "kind": v.format, "path": Path(v.path).name, "size": v.size, "meta": {"bits": v.bits}}
        for v in exported
    ]


STAGE = Stage(name="export", needs=("data", "merge"), key_inputs=key_inputs, run=run)
