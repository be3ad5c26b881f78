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
from workbench.core.gguf_types import LADDER, parse_budget
from workbench.core.models import display_name, resolve_model
from workbench.core.recipe import ExportSection, SearchSection
from workbench.core.records import Variant
from workbench.export import choosing, gguf, imatrix, search
from workbench.export.making import ExportContext, ExportFailed, record_measurement
from workbench.qat import mixture
from workbench.qat.check import GridJob, GridResult, describe_grid
from workbench.serve import ollama

SERVE_CONTEXT = 2048  # the context of the llama-server command written for each GGUF
CONVERTER_BYTES = 6  # a parameter: llama.cpp's converter at its peak (measured)
# the name of a file quantized with an importance matrix other than the recipe's own (`export.imatrix_compare`)
CALIBRATION_SUFFIX = {"none": "noimatrix", "generic": "generic-imatrix", "task": "task-imatrix"}


def calibrations(section: ExportSection, gguf_type: str, pure: bool = False) -> list[str]:
    """The importance matrices `gguf_type` is made with, the recipe's own first ("auto": chosen by
    measuring): none for a type that ignores one, and for a quantization-aware run's type (it trained for
    the plain rounding grid)."""
    if pure or not LADDER[gguf_type].uses_imatrix:
        return ["none"]
    if section.imatrix == "auto" and gguf_type not in LADDER_NEEDING:
        return ["auto", *section.imatrix_compare]
    own = "task" if section.imatrix == "auto" else section.imatrix
    return [own, *(c for c in section.imatrix_compare if c != own)]


LADDER_NEEDING = frozenset(name for name, rung in LADDER.items() if rung.needs_imatrix)


def estimate(section: ExportSection) -> Estimate:
    """Every requested file, and the f16 source each quantization starts from when it is not one of them."""
    bits = sum(LADDER[t].bits * len(calibrations(section, t)) for t in section.gguf)
    if "f16" not in section.gguf:
        bits += 16
    if section.search:
        bits += sum(LADDER["q4_k_m"].bits for _ in section.search.budgets)  # about a mid-ladder file each
    return Estimate(bits=bits, memory=CONVERTER_BYTES)


def gguf_variant(name: str, path: Path, gguf_type: str, parent: str, **meta: str) -> Variant:
    """A GGUF variant made by llama.cpp (`meta`: more to record, e.g. an adapter variant's files)."""
    return Variant(
        name=name,
        format="gguf",
        path=str(path),
        bits=LADDER[gguf_type].bits,
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
    plan = ctx.inputs.adapter / mixture.PLAN_FILE if qat.target in mixture.MIXTURES else None
    job = GridJob(Path(variant.path), Path(merged.path), qat.target, qat.embeddings, qat.output, plan)
    timeout = ctx.recipe.export.check_timeout_s
    outcome = ctx.run_worker("qat.grid", job, name=variant.name, log_name=f"{variant.name}-grid", timeout=timeout)
    grid = outcome.value_as(GridResult)
    variant.meta["grid"] = asdict(grid)
    line = f"{variant.name}: grid check {describe_grid(variant.meta['grid'])}"
    if grid.status != "passed":
        ctx.failures.append(line)
    ctx.say(line)


def export_files(ctx: ExportContext) -> list[Variant]:
    """The f16 conversion, then each other type quantized from it, with the recipe's importance matrix and
    those it compares (every tensor in the type a quantization-aware run trained for, without one)."""
    section, merged = ctx.recipe.export, ctx.inputs.merged
    timeout = section.timeout_s
    stem = merged.name
    source = ctx.out / f"{stem}-F16.gguf" if "f16" in section.gguf else ctx.work / f"{stem}-F16.gguf"
    template = chat_template(ctx)
    matrices = Imatrices(ctx, source)
    measuring = choosing.Measuring(ctx, source)
    auto = [t for t in section.gguf if calibrations(section, t, pure=t == ctx.recipe.train.qat.target)[0] == "auto"]
    chosen: dict[str, dict[str, Any]] = {}

    def resolve(gguf_type: str, calibration: str, variant: Variant) -> str:
        """`auto` measured (all auto types at once, when the first needs it) and recorded on the variant."""
        if calibration != "auto":
            return calibration
        if not chosen:
            try:
                task = matrices.get("task")
                assert task is not None
                chosen.update(choosing.choose_imatrix(measuring, auto, ctx.out / task.file))
            except Exception as exc:  # noqa: BLE001 - each auto type fails with it, once measured
                chosen.update(dict.fromkeys(auto, {"failed": str(exc)}))
            for name, choice in chosen.items():
                if "failed" not in choice:
                    ctx.say(f"{name}: imatrix {choice['chosen']} (KLD none {choice['none']['kld']:.4f},"
                            f" task {choice['task']['kld']:.4f})")  # fmt: skip
        if "failed" in chosen[gguf_type]:
            raise ExportFailed(f"choosing its importance matrix failed: {chosen[gguf_type]['failed']}")
        variant.meta["imatrix_choice"] = chosen[gguf_type]
        return str(chosen[gguf_type]["chosen"])

    def finish(variant: Variant, outcome: workers.Outcome, program_peak_mb: float | None = None) -> None:
        record_measurement(variant, outcome, program_peak_mb)
        variant.meta["tensor_types"] = gguf.tensor_types(Path(variant.path))
        ctx.check(variant)
        package_for_serving(ctx, template, variant)

    def build_f16(variant: Variant) -> None:
        outcome = gguf.convert(Path(merged.path), source, "f16", log=ctx.log_path(variant.name), timeout=timeout)
        ctx.made(outcome, source)
        finish(variant, outcome)

    qat = ctx.recipe.train.qat
    keep_f16 = tuple(part for part in ("embeddings", "output") if not getattr(qat, part))

    def builder(gguf_type: str, calibration: str) -> Callable[[Variant], None]:
        trained_for = gguf_type == qat.target

        def build(variant: Variant) -> None:
            if not source.is_file():
                raise ExportFailed(f"{variant.name}: no f16 GGUF to quantize from (its conversion failed)")
            log = ctx.log_path(variant.name)
            if trained_for and gguf_type in mixture.MIXTURES:  # the mixture it trained for, without a matrix
                options: dict[str, Any] = {"keep_f16": keep_f16}
                ctx.say(f"{variant.name}: quantization-aware run, each weight in the type it trained for")
            elif trained_for:  # every tensor in the type it trained for, no mixture
                options = {"pure": True, "keep_f16": keep_f16}
                ctx.say(f"{variant.name}: quantization-aware run, every weight in {gguf_type}")
            else:
                options = {}
            provenance = matrices.get(resolve(gguf_type, calibration, variant))
            variant.meta["imatrix"] = asdict(provenance) if provenance else None
            matrix = ctx.out / provenance.file if provenance else None
            recipe = quantize_recipe(gguf_type, provenance, pure=bool(options.get("pure")))
            outcome = gguf.quantize(
                source, Path(variant.path), gguf_type, imatrix=matrix, recipe=recipe, log=log, timeout=timeout,
                **options,
            )  # fmt: skip
            ctx.made(outcome, Path(variant.path))
            quantized = outcome.value_as(gguf.Quantized)
            fallbacks = gguf.fallbacks(outcome.log.read_text(errors="replace") if outcome.log else "")
            variant.meta["fallbacks"] = fallbacks
            if fallbacks:
                ctx.say(f"{len(fallbacks)} tensors fell back to another type (rows not a multiple of the block)")
            if trained_for:
                check_grid(ctx, variant, merged)
            finish(variant, outcome, quantized.peak_rss_mb)

        return build

    def new_variant(gguf_type: str, parent: str, calibration: str | None = None) -> Variant:
        suffix = f"-{CALIBRATION_SUFFIX[calibration]}" if calibration else ""
        path = source if gguf_type == "f16" else ctx.out / f"{stem}-{gguf_type.upper()}{suffix}.gguf"
        return gguf_variant(path.name, path, gguf_type, parent)

    f16 = ctx.attempt(new_variant("f16", merged.name), build_f16)
    done = [f16] if "f16" in section.gguf else ([] if f16.status == "done" else [f16])
    for gguf_type in [t for t in section.gguf if t != "f16"]:
        own, *compared = calibrations(section, gguf_type, pure=gguf_type == qat.target)
        done.append(ctx.attempt(new_variant(gguf_type, f16.name), builder(gguf_type, own)))
        for calibration in compared:
            variant = new_variant(gguf_type, f16.name, calibration)
            done.append(ctx.attempt(variant, builder(gguf_type, calibration)))
    if section.search:
        done += searched_files(ctx, section.search, source, f16.name, matrices, measuring, finish)
    return done  # an f16 made only as a source stays in the work folder, removed with it


def searched_files(
    ctx: ExportContext,
    section: SearchSection,
    source: Path,
    parent: str,
    matrices: Imatrices,
    measuring: choosing.Measuring,
    finish: Callable[[Variant, workers.Outcome, float | None], None],
) -> list[Variant]:
    """One file per budget of `export.search`: the groups' sensitivities measured once (with the importance
    matrix the recipe's types use: task for auto), a plan allocated under each budget, llama-quantize
    making it from a tensor-type file kept beside it."""
    export = ctx.recipe.export
    calibration = "task" if export.imatrix == "auto" else export.imatrix
    stem = source.stem.removesuffix("-F16")
    measured: list[choosing.Sensitivities | Exception] = []

    def build(variant: Variant) -> None:
        if not source.is_file():
            raise ExportFailed(f"{variant.name}: no f16 GGUF to quantize from (its conversion failed)")
        provenance = matrices.get(calibration)
        matrix = ctx.out / provenance.file if provenance else None
        if not measured:  # once for every budget; a failure fails each budget's file, measured once
            try:
                measured.append(choosing.measure_sensitivities(measuring, section, matrix))
            except Exception as exc:  # noqa: BLE001
                measured.append(exc)
        sensitivities = measured[0]
        if isinstance(sensitivities, Exception):
            raise ExportFailed(f"measuring the tensor groups' sensitivities failed: {sensitivities}")
        budget = parse_budget(variant.meta["budget"])
        stock = choosing.budget_file(ctx, source, budget, matrix).stat().st_size if budget.same_as else None
        planned = choosing.plan_budget(source, budget, sensitivities, stock)
        types_file = ctx.out / f"{Path(variant.name).stem}.tensor-types.txt"
        types_file.write_text(search.tensor_type_file(sensitivities.groups, planned.plan))
        recipe = quantize_recipe(planned.ftype, provenance, made=f"search {planned.budget.label} by KLD")
        outcome = gguf.quantize(source, Path(variant.path), planned.ftype, imatrix=matrix, tensor_types=types_file,
                                recipe=recipe, log=ctx.log_path(variant.name), timeout=export.timeout_s)  # fmt: skip
        ctx.made(outcome, Path(variant.path))
        try:
            checked = choosing.check_searched(Path(variant.path), planned, sensitivities.groups)
        except ExportFailed:
            Path(variant.path).unlink()  # an over-budget file is not left beside the others
            raise
        variant.meta["search"] = {**planned.record(sensitivities), **checked, "tensor_types_file": types_file.name}
        variant.meta["imatrix"] = asdict(provenance) if provenance else None
        variant.bits = round(checked["searched_bytes"] * 8 / sum(g.weights for g in sensitivities.groups), 2)
        ctx.say(f"{variant.name}: {search.compact(planned.plan)} (predicted KLD {planned.predicted_kld:.4f})")
        finish(variant, outcome, outcome.value_as(gguf.Quantized).peak_rss_mb)

    made_variants = []
    for text in section.budgets:
        label = parse_budget(text).label
        path = ctx.out / f"{stem}-SEARCH-{label}.gguf"
        variant = gguf_variant(path.name, path, "q8_0", parent, budget=text)
        variant.meta["type"] = "search"
        made_variants.append(ctx.attempt(variant, build))
    return made_variants


def quantize_recipe(
    gguf_type: str, provenance: imatrix.Provenance | None, pure: bool = False, made: str | None = None
) -> str:
    """How a file was made, as its `workbench.quantize` metadata says it (short: llama.cpp keeps 127
    characters): the type (or `made`), the importance matrix and what it was computed on."""
    made = made or f"{LADDER[gguf_type].ftype}{' pure' if pure else ''}"
    if provenance is None:
        return f"{made}; imatrix none"
    return (
        f"{made}; imatrix {provenance.source} ({provenance.rows} rows, {provenance.chunks}x{provenance.context}"
        f" tokens, text sha256 {provenance.text_sha256[:12]})"
    )


class Imatrices:
    """The importance matrices of one export, computed when a variant first needs one (a failure is kept:
    the variants that need that matrix fail with it, the others go on)."""

    def __init__(self, ctx: ExportContext, model: Path):
        self.ctx, self.model = ctx, model
        self.made: dict[str, imatrix.Provenance | Exception] = {}

    def get(self, calibration: str) -> imatrix.Provenance | None:
        if calibration == "none":
            return None
        if calibration not in self.made:
            self.made[calibration] = self.compute(calibration)
        made = self.made[calibration]
        if isinstance(made, Exception):
            raise ExportFailed(f"the {calibration} importance matrix failed: {made}")
        return made

    def compute(self, calibration: str) -> imatrix.Provenance | Exception:
        ctx, section = self.ctx, self.ctx.recipe.export
        tokenizer = ctx.inputs.tokenizer
        try:
            if calibration == "task":
                calib = imatrix.task_calibration(ctx.inputs.data, tokenizer, section.imatrix_rows, section.measure_rows)
            else:
                calib = imatrix.calibration("generic", imatrix.generic_texts(), tokenizer)
            out = ctx.out / f"{self.model.stem.removesuffix('-F16')}-imatrix-{calibration}.gguf"
            ctx.say(f"importance matrix ({calibration}): {calib.rows} rows, {calib.tokens} tokens, "
                    f"{calib.chunks} chunks of {calib.context}")  # fmt: skip
            made = imatrix.compute(
                self.model, calib, out, ctx.cache / "imatrix", log=ctx.log_path(out.name), timeout=section.timeout_s
            )
        except Exception as exc:  # noqa: BLE001 - recorded on each variant that needed it
            ctx.failures.append(f"{calibration} importance matrix: {exc}")
            ctx.say(f"FAILED: the {calibration} importance matrix: {exc}")
            return exc
        ctx.say(f"importance matrix ({calibration}): {'cached' if made.seconds is None else f'{made.seconds:.1f}s'}")
        return made


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
        recipe = quantize_recipe(gguf_type, None)  # the base model: no data of its own to calibrate on
        outcome = gguf.quantize(
            base_f16, base_file, gguf_type, recipe=recipe, log=ctx.log_path(base_file.name), timeout=timeout
        )
        ctx.made(outcome, base_file)
        variant.meta["imatrix"] = None
        record_measurement(variant, outcome, outcome.value_as(gguf.Quantized).peak_rss_mb)
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
