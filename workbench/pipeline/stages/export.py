"""Export stage: quantized variants of the merged model, each made and then checked in its own worker
(see workbench.workers). One failing variant — an error, a native crash, a timeout — never stops the others."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from workbench import workers
from workbench.core import parity, preflight
from workbench.core.devices import pick_device
from workbench.core.errors import StageFailed
from workbench.core.fsutil import dir_size
from workbench.core.models import display_name
from workbench.core.recipe import FORMATS, ExportSection, Format, Recipe
from workbench.core.records import Artifact, Variant, variant_name
from workbench.data.files import read_jsonl
from workbench.export import gguf, gptq
from workbench.pipeline.stages.base import Stage, StageContext, adapter_dir, failure_line
from workbench.qat.check import describe_grid
from workbench.serve import ollama

# how long a worker may take; not part of the cache key (they do not change what is made)
TIMEOUT_FIELDS = {"timeout_s", "check_timeout_s"}


class ExportFailed(StageFailed):
    pass


def key_inputs(recipe: Recipe) -> dict[str, Any]:
    return {
        "export": recipe.export.model_dump(mode="json", exclude=TIMEOUT_FIELDS),
        "llama_cpp": metadata.version("llama_cpp_python"),
    }


def held_out_conversations(ctx: StageContext, count: int) -> list[list[dict[str, str]]]:
    rows = read_jsonl(ctx.inputs["data"] / "held_out.jsonl")
    return [row["messages"] for row in rows if "messages" in row][:count]


@dataclass
class ExportInputs:
    """What every exporter needs, read once per stage."""

    merged: Variant
    tokenizer: Any  # the training tokenizer and chat template (saved with the merged model)
    smoke_prompts: list[list[dict[str, str]]]  # held-out conversations without their answers
    expected: parity.Expected  # held-out conversations as training rendered them, for the parity check
    template: ollama.Translation  # the training chat template in Ollama's template language, if faithful
    stops: list[str]  # the tokens that end an answer, as text (Modelfile stops)


SERVE_CONTEXT = 2048  # the context of the llama-server command written for each GGUF


def stop_texts(tokenizer: Any, end_of_turn: int | None) -> list[str]:
    ids = [end_of_turn, tokenizer.eos_token_id]
    return list(dict.fromkeys(str(tokenizer.convert_ids_to_tokens(i)) for i in ids if i is not None))


def package_for_serving(ctx: StageContext, inputs: ExportInputs, variant: Variant) -> None:
    """Next to an exported GGUF: its Ollama Modelfile (when the template translates faithfully) and the
    llama-server command, both recorded on the variant."""
    gguf_file = Path(variant.path)
    if gguf_file.parent != ctx.out:  # the f16 made only as a source: not shipped
        return
    system_prompt = ctx.recipe.data.system_prompt
    reason = inputs.template.reason or ollama.unquotable(system_prompt)
    final = ctx.run_dir / ctx.stage
    adapter = Path(variant.meta["lora"]).name if variant.meta.get("lora") else None
    serving: dict[str, Any] = {
        "llama_server": ollama.llama_server_command(
            final / gguf_file.name, SERVE_CONTEXT, lora=final / adapter if adapter else None
        ),
        "template": inputs.template.family,
        "stops": inputs.stops,
        "modelfile": None,
        "untranslatable": reason,
    }
    if reason is None:
        modelfile = ctx.out / f"{Path(variant.name).stem}.Modelfile"
        text = ollama.modelfile(gguf_file.name, inputs.template, inputs.stops, system_prompt, adapter=adapter)
        modelfile.write_text(text)
        serving["modelfile"] = modelfile.name
    else:
        ctx.say(f"{variant.name}: no Ollama Modelfile: {reason}")
    variant.meta["serving"] = serving


def record_parity(ctx: StageContext, inputs: ExportInputs, variant: Variant, result: dict[str, Any]) -> None:
    variant.meta["parity"] = parity.with_training_text(result, inputs.tokenizer)
    if result["status"] == "failed":
        where = result["first_difference"] or result["stop_token"]
        ctx.say(f"{variant.name}: SERVING PARITY FAILED: {where}")
    elif result["status"] == "skipped":
        ctx.say(f"{variant.name}: parity check skipped ({result['reason']})")


def check_variant(ctx: StageContext, inputs: ExportInputs, variant: Variant, smoke: bool = True) -> None:
    """Serving parity and the smoke answers, loaded as a server would, in a worker. Raises WorkerFailed
    (the variant fails) when it errs, crashes or times out; a parity result found first is kept."""
    job = {
        "path": variant.path,
        "format": variant.format,
        "expected": inputs.expected.to_dict(),
        "smoke_prompts": inputs.smoke_prompts if smoke else [],
        "lora": variant.meta.get("lora"),
    }
    timeout = ctx.recipe.export.check_timeout_s
    running = ctx.start_worker(
        "variant.check", job, name=variant.name, log_name=f"{variant.name}-check", timeout=timeout
    )
    for event in running.events():
        if "parity" in event:
            record_parity(ctx, inputs, variant, event["parity"])
    result = running.wait().value()
    if smoke:
        variant.meta["smoke"] = result.get("smoke", [])


def check_grid(ctx: StageContext, variant: Variant, merged: Variant) -> None:
    """The grid check of a quantization-aware run's file (workbench.qat.check), recorded on the variant;
    a file off the grid is a failure of the stage, not of the variant (it still serves)."""
    qat = ctx.recipe.train.qat
    job = {"gguf": variant.path, "merged": merged.path, "target": qat.target, "embeddings": qat.embeddings,
           "output": qat.output}  # fmt: skip
    timeout = ctx.recipe.export.check_timeout_s
    outcome = ctx.run_worker("qat.grid", job, name=variant.name, log_name=f"{variant.name}-grid", timeout=timeout)
    grid = variant.meta["grid"] = outcome.value()
    line = f"{variant.name}: grid check {describe_grid(grid)}"
    if grid["status"] != "passed":
        ctx.failures.append(line)
    ctx.say(line)


def record_measurement(variant: Variant, outcome: workers.Outcome) -> None:
    variant.seconds, variant.peak_mem_mb = outcome.seconds, outcome.peak_rss_mb


def made(ctx: StageContext, outcome: workers.Outcome, output: Path) -> None:
    """An exporter's outcome: when it failed, what it left of its output (a truncated file, in the stage's
    own temporary folder) is removed first, so nothing is made from it."""
    if not outcome.ok:
        ctx.remove(output)
    outcome.value()


def attempt(ctx: StageContext, variant: Variant, build: Callable[[Variant], None]) -> Variant:
    """Run one exporter; its failure is recorded on the variant and the stage goes on."""
    ctx.say(f"exporting {variant.name}")
    try:
        build(variant)
        variant.size = dir_size(Path(variant.path))
        ctx.say(f"{variant.name}: {variant.size / 1e6:.1f} MB in {variant.seconds:.1f}s")
    except Exception as exc:  # noqa: BLE001 - any exporter error becomes the variant's error
        variant.status = "failed"
        variant.error = failure_line(variant.name, exc)
        ctx.failures.append(variant.error.splitlines()[0])
        ctx.say(f"FAILED: {variant.error.splitlines()[0]}")
    ctx.event("variant", **variant.to_dict())
    return variant


def gguf_variant(name: str, path: Path, gguf_type: str, parent: str, **meta: str) -> Variant:
    """A GGUF variant made by llama.cpp (`meta`: more to record, e.g. an adapter variant's files)."""
    return Variant(
        name=name,
        format="gguf",
        path=str(path),
        bits=gguf.GGUF_TYPES[gguf_type][1],
        parent=parent,
        quantizer="llama.cpp",
        quantizer_version=metadata.version("llama_cpp_python"),
        meta={"type": gguf_type, **meta},
    )


def export_gguf(ctx: StageContext, inputs: ExportInputs) -> list[Variant]:
    section, merged = ctx.recipe.export, inputs.merged
    timeout = section.timeout_s
    stem = merged.name
    source = ctx.out / f"{stem}-F16.gguf" if "f16" in section.gguf else ctx.work / f"{stem}-F16.gguf"

    def finish(variant: Variant, outcome: workers.Outcome) -> None:
        record_measurement(variant, outcome)
        variant.meta["tensor_types"] = gguf.tensor_types(Path(variant.path))
        check_variant(ctx, inputs, variant)
        package_for_serving(ctx, inputs, variant)

    def build_f16(variant: Variant) -> None:
        outcome = gguf.convert(Path(merged.path), source, "f16", log=ctx.log_path(variant.name), timeout=timeout)
        made(ctx, outcome, source)
        finish(variant, outcome)

    qat = ctx.recipe.train.qat
    keep_f16 = tuple(part for part in ("embeddings", "output") if not getattr(qat, part))

    def builder(gguf_type: str) -> Callable[[Variant], None]:
        trained_for = gguf_type == qat.target

        def build(variant: Variant) -> None:
            if not source.is_file():
                raise ExportFailed(f"{variant.name}: no f16 GGUF to quantize from (its conversion failed)")
            log = ctx.log_path(variant.name)
            if trained_for:  # every tensor in the type it trained for, no mixture
                options: dict[str, Any] = {"pure": True, "keep_f16": keep_f16}
                ctx.say(f"{variant.name}: quantization-aware run, every weight in {gguf_type}")
            else:
                options = {}
            outcome = gguf.quantize(source, Path(variant.path), gguf_type, log=log, timeout=timeout, **options)
            made(ctx, outcome, Path(variant.path))
            fallbacks = gguf.fallbacks(outcome.log.read_text(errors="replace") if outcome.log else "")
            variant.meta["fallbacks"] = fallbacks
            if fallbacks:
                ctx.say(f"{len(fallbacks)} tensors fell back to another type (rows not a multiple of the block)")
            if trained_for:
                check_grid(ctx, variant, merged)
            finish(variant, outcome)

        return build

    def new_variant(gguf_type: str, parent: str) -> Variant:
        path = source if gguf_type == "f16" else ctx.out / f"{stem}-{gguf_type.upper()}.gguf"
        return gguf_variant(path.name, path, gguf_type, parent)

    f16 = attempt(ctx, new_variant("f16", merged.name), build_f16)
    done = [f16] if "f16" in section.gguf else ([] if f16.status == "done" else [f16])
    for gguf_type in [t for t in section.gguf if t != "f16"]:
        done.append(attempt(ctx, new_variant(gguf_type, f16.name), builder(gguf_type)))
    return done  # an f16 made only as a source stays in the work folder, removed with it


def export_adapter(ctx: StageContext, inputs: ExportInputs) -> list[Variant]:
    """The LoRA adapter as a GGUF adapter on the base model quantized to each of `export.adapter_gguf`: what
    llama.cpp and Ollama load when the adapter ships apart from the base (`--lora`, `ADAPTER`). One variant
    per type, checked and measured like the merged-then-quantized files it is compared with."""
    from workbench.core.models import resolve_model

    section, stem = ctx.recipe.export, inputs.merged.name
    timeout = section.timeout_s
    base_dir = Path(resolve_model(ctx.recipe.base_model))
    base_name = display_name(ctx.recipe.base_model)
    base_f16 = ctx.work / f"{base_name}-F16.gguf"
    adapter = ctx.out / f"{stem}-LoRA-F16.gguf"

    def build(variant: Variant) -> None:
        gguf_type, base_file = variant.meta["type"], Path(variant.meta["base"])
        if not base_f16.is_file():
            made(ctx, gguf.convert(base_dir, base_f16, "f16", log=ctx.log_path(base_f16.name), timeout=timeout),
                 base_f16)  # fmt: skip
        if not adapter.is_file():
            trained = adapter_dir(ctx.run_dir, ctx.recipe)
            made(ctx, gguf.convert_lora(trained, base_dir, adapter, log=ctx.log_path(adapter.name), timeout=timeout),
                 adapter)  # fmt: skip
        outcome = gguf.quantize(base_f16, base_file, gguf_type, log=ctx.log_path(base_file.name), timeout=timeout)
        made(ctx, outcome, base_file)
        record_measurement(variant, outcome)
        check_variant(ctx, inputs, variant)
        package_for_serving(ctx, inputs, variant)

    made_variants = []
    for gguf_type in section.adapter_gguf:
        base_file = ctx.out / f"{base_name}-{gguf_type.upper()}.gguf"
        name = f"{stem}-adapter-on-{gguf_type.upper()}.gguf"
        variant = gguf_variant(name, base_file, gguf_type, stem, base=str(base_file), lora=str(adapter))
        made_variants.append(attempt(ctx, variant, build))
        if variant.status == "done":
            variant.size = base_file.stat().st_size + adapter.stat().st_size
    return made_variants


def export_nf4(ctx: StageContext, inputs: ExportInputs) -> list[Variant]:
    section, merged = ctx.recipe.export, inputs.merged
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
        job = {"merged": merged.path, "out": str(out)}
        outcome = ctx.run_worker("nf4.export", job, name=variant.name, timeout=section.timeout_s, echo=True)
        made(ctx, outcome, out)
        record_measurement(variant, outcome)
        check_variant(ctx, inputs, variant)

    return [attempt(ctx, variant, build)]


def export_gptq_awq(ctx: StageContext, inputs: ExportInputs) -> list[Variant]:
    section, merged = ctx.recipe.export, inputs.merged
    methods = [m for m in ("gptq", "awq") if getattr(section, m)]
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
                **({"clip": section.awq_clip} if method == "awq" else {}),
            },
        )

        def build(variant: Variant, method: str = method, out: Path = out) -> None:
            job = {
                "method": method,
                "merged": merged.path,
                "out": str(out),
                "calibration": calibration,
                "bits": section.bits,
                "group_size": section.group_size,
                "desc_act": section.desc_act,
                "awq_clip": section.awq_clip,
                # GPTQModel calibrates in bf16 on CPU, where torch's bf16 matmul is several times slower
                "dtype": "float32" if pick_device("auto") == "cpu" else "auto",
            }
            outcome = ctx.run_worker("gptq.export", job, name=variant.name, timeout=section.timeout_s, echo=True)
            made(ctx, outcome, out)
            if not (out / "quantize_config.json").is_file():
                raise ExportFailed(f"{variant.name}: GPTQModel wrote no quantize_config.json")
            record_measurement(variant, outcome)
            check_variant(ctx, inputs, variant)

        variants.append(attempt(ctx, variant, build))
    return variants


@dataclass(frozen=True)
class Exporter:
    """One way of making variants: every exporter gets the same inputs, makes each variant in a worker
    (`attempt` records a failure and goes on), checks it (`check`: parity + smoke) and returns them."""

    formats: tuple[Format, ...]  # the recipe formats it makes
    wanted: Callable[[ExportSection], bool]  # whether the recipe asks for any of them
    export: Callable[[StageContext, ExportInputs], list[Variant]]


EXPORTERS: tuple[Exporter, ...] = (
    Exporter(("gguf",), lambda section: bool(section.gguf), export_gguf),
    Exporter(("gguf",), lambda section: bool(section.adapter_gguf), export_adapter),
    Exporter(("nf4",), lambda section: section.nf4, export_nf4),
    Exporter(("gptq", "awq"), lambda section: section.gptq or section.awq, export_gptq_awq),
)


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
    preflight.require_room("export", ctx.run_dir, params * bits / 8 * 1.05, memory)


def run(ctx: StageContext) -> list[Artifact]:
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
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)  # saved there by the train stage
    expected = parity.Expected.of(tokenizer, held_out_conversations(ctx, section.parity_prompts))
    inputs = ExportInputs(
        merged=merged,
        tokenizer=tokenizer,
        smoke_prompts=[m[:-1] for m in held_out_conversations(ctx, section.smoke_prompts)],
        expected=expected,
        template=ollama.translate(
            lambda messages: str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        ),
        stops=stop_texts(tokenizer, expected.end_of_turn),
    )
    try:
        check_variant(ctx, inputs, merged, smoke=False)
    except workers.WorkerFailed as exc:  # the reference stays usable; the report names the failed check
        ctx.failures.append(str(exc))
        ctx.say(f"FAILED: {exc}")
    variants = [merged]
    for exporter in EXPORTERS:
        if exporter.wanted(section):
            variants += exporter.export(ctx, inputs)
    # paths point into the temporary folder until the stage is renamed into place
    final = ctx.run_dir / ctx.stage
    for variant in variants[1:]:
        variant.path = str(final / Path(variant.path).name)
        for key in ("base", "lora"):  # an adapter variant's two files
            if key in variant.meta:
                variant.meta[key] = str(final / Path(variant.meta[key]).name)
    ctx.store.replace_variants(ctx.run_id, list(FORMATS), variants)
    exported = [v for v in variants[1:] if v.status == "done"]
    return [Artifact(v.name, v.format, Path(v.path).name, v.size, {"bits": v.bits}) for v in exported]


STAGE = Stage(name="export", needs=("data", "merge"), key_inputs=key_inputs, run=run)
