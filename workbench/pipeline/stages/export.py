"""Export stage: the variants of the merged model every registered format's exporters make (the recipe's
`export` section says which; `workbench.core.formats`), each made and then checked in its own worker (see
workbench.workers). One failing variant — an error, a native crash, a timeout — never stops the others."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench import workers
from workbench.core import formats, parity, preflight
from workbench.core.fsutil import dir_size
from workbench.core.models import display_name
from workbench.core.parity import ParityResult
from workbench.core.recipe import Recipe
from workbench.core.records import Artifact, Variant, variant_name
from workbench.data.files import read_jsonl
from workbench.export.checks import CheckJob, CheckResult
from workbench.export.making import ExportInputs
from workbench.pipeline.stages.base import Stage, StageContext, adapter_dir, failure_line
from workbench.workers import wire

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# how long a worker may take; not part of the cache key (they do not change what is made)
TIMEOUT_FIELDS = {"timeout_s", "check_timeout_s"}
CHECK_BYTES = 4.5  # a parameter in memory: the least the stage reserves (the merged model's own checks)


def key_inputs(recipe: Recipe) -> dict[str, Any]:
    return {
        "export": recipe.export.model_dump(mode="json", exclude=TIMEOUT_FIELDS),
        "llama_cpp": metadata.version("llama_cpp_python"),
    }


def held_out_conversations(ctx: StageContext, count: int) -> list[list[dict[str, str]]]:
    rows = read_jsonl(ctx.inputs["data"] / "held_out.jsonl")
    return [row["messages"] for row in rows if "messages" in row][:count]


@dataclass
class Exporting:
    """The stage as its exporters see it (`workbench.export.making.ExportContext`): they make variants
    inside `attempt` and check each with `check`."""

    ctx: StageContext
    inputs: ExportInputs

    @property
    def recipe(self) -> Recipe:
        return self.ctx.recipe

    @property
    def out(self) -> Path:
        return self.ctx.out

    @property
    def work(self) -> Path:
        return self.ctx.work

    @property
    def final(self) -> Path:
        return self.ctx.run_dir / self.ctx.stage

    @property
    def cache(self) -> Path:
        return self.ctx.run_dir / ".work" / "cache" / self.ctx.stage

    @property
    def failures(self) -> list[str]:
        return self.ctx.failures

    def say(self, message: str) -> None:
        self.ctx.say(message)

    def log_path(self, name: str) -> Path:
        return self.ctx.log_path(name)

    def run_worker(self, task: str, job: DataclassInstance, **options: Any) -> workers.Outcome:
        return self.ctx.run_worker(task, job, **options)

    def attempt(self, variant: Variant, build: Callable[[Variant], None]) -> Variant:
        """Run one exporter; its failure is recorded on the variant and the stage goes on."""
        ctx = self.ctx
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

    def made(self, outcome: workers.Outcome, output: Path) -> None:
        """An exporter's outcome: when it failed, what it left of its output (a truncated file, in the stage's
        own temporary folder) is removed first, so nothing is made from it."""
        if not outcome.ok:
            self.ctx.remove(output)
            raise workers.WorkerFailed(outcome)

    def check(self, variant: Variant, smoke: bool = True) -> None:
        """Serving parity and the smoke answers, loaded as a server would, in a worker. Raises WorkerFailed
        (the variant fails) when it errs, crashes or times out; a parity result found first is kept."""
        job = CheckJob(
            path=variant.path,
            format=variant.format,
            expected=replace(self.inputs.expected, decode=None),  # ids only: the worker decodes nothing
            smoke_prompts=self.inputs.smoke_prompts if smoke else [],
            lora=variant.meta.get("lora"),
        )
        timeout = self.recipe.export.check_timeout_s
        running = self.ctx.start_worker(
            "variant.check", job, name=variant.name, log_name=f"{variant.name}-check", timeout=timeout
        )
        for event in running.events():
            if "parity" in event:
                self.record_parity(variant, wire.decode(ParityResult, event["parity"], "variant.check parity"))
        result = running.wait().value_as(CheckResult)
        if smoke:
            variant.meta["smoke"] = [asdict(answer) for answer in result.smoke or []]

    def record_parity(self, variant: Variant, result: ParityResult) -> None:
        variant.meta["parity"] = parity.with_training_text(result.to_dict(), self.inputs.tokenizer)
        if result.status == "failed":
            where = result.first_difference or result.stop_token
            self.say(f"{variant.name}: SERVING PARITY FAILED: {where}")
        elif result.status == "skipped":
            self.say(f"{variant.name}: parity check skipped ({result.reason})")


def wanted_exporters(recipe: Recipe) -> list[formats.Exporter]:
    """The exporters the recipe asks for, in the registry's order."""
    return [e for spec in formats.specs() for e in spec.exporters if e.wanted(recipe.export)]


def preflight_export(ctx: StageContext, merged_dir: Path) -> None:
    """All requested files together on disk; the hungriest exporter's peak in memory."""
    params = preflight.parameter_count(merged_dir)
    estimates = [formats.resolve(e.estimate)(ctx.recipe.export) for e in wanted_exporters(ctx.recipe) if e.estimate]
    bits = sum(estimate.bits for estimate in estimates)
    memory = params * max([CHECK_BYTES, *(estimate.memory for estimate in estimates)])
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
    inputs = ExportInputs(
        merged=merged,
        tokenizer=tokenizer,
        smoke_prompts=[m[:-1] for m in held_out_conversations(ctx, section.smoke_prompts)],
        expected=parity.Expected.of(tokenizer, held_out_conversations(ctx, section.parity_prompts)),
        data=ctx.inputs["data"],
        adapter=adapter_dir(ctx.run_dir, ctx.recipe),
    )
    exporting = Exporting(ctx, inputs)
    try:
        exporting.check(merged, smoke=False)
    except workers.WorkerFailed as exc:  # the reference stays usable; the report names the failed check
        ctx.failures.append(str(exc))
        ctx.say(f"FAILED: {exc}")
    variants = [merged]
    for exporter in wanted_exporters(ctx.recipe):
        variants += formats.resolve(exporter.run)(exporting)
    # paths point into the temporary folder until the stage is renamed into place
    for variant in variants[1:]:
        variant.path = str(exporting.final / Path(variant.path).name)
        for key in ("base", "lora"):  # an adapter variant's two files
            if key in variant.meta:
                variant.meta[key] = str(exporting.final / Path(variant.meta[key]).name)
    ctx.store.replace_variants(ctx.run_id, [spec.name for spec in formats.specs()], variants)
    exported = [v for v in variants[1:] if v.status == "done"]
    return [Artifact(v.name, v.format, Path(v.path).name, v.size, {"bits": v.bits}) for v in exported]


STAGE = Stage(name="export", needs=("data", "merge"), key_inputs=key_inputs, run=run)
