"""The gguf format's exporters (`workbench.core.formats.GGUF`): the merged model converted to an f16 GGUF
and quantized to each of `export.gguf`; the LoRA adapter as a GGUF adapter on the base model quantized to
each of `export.adapter_gguf`. Next to each file, what serves it: an Ollama Modelfile (when the chat
template translates faithfully) and the llama-server command."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from workbench import workers
from workbench.core.formats import Estimate
from workbench.core.models import display_name, resolve_model
from workbench.core.recipe import ExportSection
from workbench.core.records import Variant
from workbench.export import gguf
from workbench.export.making import ExportContext, ExportFailed, record_measurement
from workbench.qat.check import GridJob, GridResult, describe_grid
from workbench.serve import ollama

SERVE_CONTEXT = 2048  # the context of the llama-server command written for each GGUF
CONVERTER_BYTES = 6  # a parameter: llama.cpp's converter at its peak (measured)


def estimate(section: ExportSection) -> Estimate:
    """Every requested file, and the f16 source each quantization starts from when it is not one of them."""
    bits = sum(gguf.GGUF_TYPES[t][1] for t in section.gguf)
    if "f16" not in section.gguf:
        bits += 16
    return Estimate(bits=bits, memory=CONVERTER_BYTES)


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


def stop_texts(tokenizer: Any, end_of_turn: int | None) -> list[str]:
    """The tokens that end an answer, as text (Modelfile stops)."""
    ids = [end_of_turn, tokenizer.eos_token_id]
    return list(dict.fromkeys(str(tokenizer.convert_ids_to_tokens(i)) for i in ids if i is not None))


def package_for_serving(ctx: ExportContext, template: ollama.Translation, variant: Variant) -> None:
    """Next to an exported GGUF: its Ollama Modelfile (when the template translates faithfully) and the
    llama-server command, both recorded on the variant."""
    gguf_file = Path(variant.path)
    if gguf_file.parent != ctx.out:  # the f16 made only as a source: not shipped
        return
    system_prompt = ctx.recipe.data.system_prompt
    reason = template.reason or ollama.unquotable(system_prompt)
    adapter = Path(variant.meta["lora"]).name if variant.meta.get("lora") else None
    stops = stop_texts(ctx.inputs.tokenizer, ctx.inputs.expected.end_of_turn)
    serving: dict[str, Any] = {
        "llama_server": ollama.llama_server_command(
            ctx.final / gguf_file.name, SERVE_CONTEXT, lora=ctx.final / adapter if adapter else None
        ),
        "template": template.family,
        "stops": stops,
        "modelfile": None,
        "untranslatable": reason,
    }
    if reason is None:
        modelfile = ctx.out / f"{Path(variant.name).stem}.Modelfile"
        text = ollama.modelfile(gguf_file.name, template, stops, system_prompt, adapter=adapter)
        modelfile.write_text(text)
        serving["modelfile"] = modelfile.name
    else:
        ctx.say(f"{variant.name}: no Ollama Modelfile: {reason}")
    variant.meta["serving"] = serving


def chat_template(ctx: ExportContext) -> ollama.Translation:
    """The training chat template in Ollama's template language, if it translates faithfully."""
    tokenizer = ctx.inputs.tokenizer
    return ollama.translate(
        lambda messages: str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    )


def check_grid(ctx: ExportContext, variant: Variant, merged: Variant) -> None:
    """The grid check of a quantization-aware run's file (workbench.qat.check), recorded on the variant;
    a file off the grid is a failure of the stage, not of the variant (it still serves)."""
    qat = ctx.recipe.train.qat
    assert qat.target is not None  # a run trained for a grid
    job = GridJob(Path(variant.path), Path(merged.path), qat.target, qat.embeddings, qat.output)
    timeout = ctx.recipe.export.check_timeout_s
    outcome = ctx.run_worker("qat.grid", job, name=variant.name, log_name=f"{variant.name}-grid", timeout=timeout)
    grid = outcome.value_as(GridResult)
    variant.meta["grid"] = asdict(grid)
    line = f"{variant.name}: grid check {describe_grid(variant.meta['grid'])}"
    if grid.status != "passed":
        ctx.failures.append(line)
    ctx.say(line)


def export_files(ctx: ExportContext) -> list[Variant]:
    """The f16 conversion, then each other type quantized from it (every tensor in the type a
    quantization-aware run trained for)."""
    section, merged = ctx.recipe.export, ctx.inputs.merged
    timeout = section.timeout_s
    stem = merged.name
    source = ctx.out / f"{stem}-F16.gguf" if "f16" in section.gguf else ctx.work / f"{stem}-F16.gguf"
    template = chat_template(ctx)

    def finish(variant: Variant, outcome: workers.Outcome) -> None:
        record_measurement(variant, outcome)
        variant.meta["tensor_types"] = gguf.tensor_types(Path(variant.path))
        ctx.check(variant)
        package_for_serving(ctx, template, variant)

    def build_f16(variant: Variant) -> None:
        outcome = gguf.convert(Path(merged.path), source, "f16", log=ctx.log_path(variant.name), timeout=timeout)
        ctx.made(outcome, source)
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
            ctx.made(outcome, Path(variant.path))
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

    f16 = ctx.attempt(new_variant("f16", merged.name), build_f16)
    done = [f16] if "f16" in section.gguf else ([] if f16.status == "done" else [f16])
    for gguf_type in [t for t in section.gguf if t != "f16"]:
        done.append(ctx.attempt(new_variant(gguf_type, f16.name), builder(gguf_type)))
    return done  # an f16 made only as a source stays in the work folder, removed with it


def export_adapters(ctx: ExportContext) -> list[Variant]:
    """The LoRA adapter as a GGUF adapter on the base model quantized to each of `export.adapter_gguf`: what
    llama.cpp and Ollama load when the adapter ships apart from the base (`--lora`, `ADAPTER`). One variant
    per type, checked and measured like the merged-then-quantized files it is compared with."""
    section, stem = ctx.recipe.export, ctx.inputs.merged.name
    timeout = section.timeout_s
    base_dir = Path(resolve_model(ctx.recipe.base_model))
    base_name = display_name(ctx.recipe.base_model)
    base_f16 = ctx.work / f"{base_name}-F16.gguf"
    adapter = ctx.out / f"{stem}-LoRA-F16.gguf"
    template = chat_template(ctx)

    def build(variant: Variant) -> None:
        gguf_type, base_file = variant.meta["type"], Path(variant.meta["base"])
        if not base_f16.is_file():
            ctx.made(gguf.convert(base_dir, base_f16, "f16", log=ctx.log_path(base_f16.name), timeout=timeout),
                     base_f16)  # fmt: skip
        if not adapter.is_file():
            converted = gguf.convert_lora(
                ctx.inputs.adapter, base_dir, adapter, log=ctx.log_path(adapter.name), timeout=timeout
            )
            ctx.made(converted, adapter)
        outcome = gguf.quantize(base_f16, base_file, gguf_type, log=ctx.log_path(base_file.name), timeout=timeout)
        ctx.made(outcome, base_file)
        record_measurement(variant, outcome)
        ctx.check(variant)
        package_for_serving(ctx, template, variant)

    made_variants = []
    for gguf_type in section.adapter_gguf:
        base_file = ctx.out / f"{base_name}-{gguf_type.upper()}.gguf"
        name = f"{stem}-adapter-on-{gguf_type.upper()}.gguf"
        variant = gguf_variant(name, base_file, gguf_type, stem, base=str(base_file), lora=str(adapter))
        made_variants.append(ctx.attempt(variant, build))
        if variant.status == "done":
            variant.size = base_file.stat().st_size + adapter.stat().st_size
    return made_variants
