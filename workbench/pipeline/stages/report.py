"""Report stage: the comparison table, Pareto fronts, recommendation and figures for the run
(`workbench report RUN` writes the same from the store at any time)."""

from __future__ import annotations

from typing import Any

from workbench.core.recipe import Recipe
from workbench.core.records import Artifact
from workbench.pipeline.stages.base import Stage, StageContext
from workbench.report import tracking, twins, write


def key_inputs(recipe: Recipe) -> dict[str, Any]:
    inputs = {"report": recipe.report.model_dump(mode="json"), "eval_tasks": recipe.eval.tasks}
    if recipe.tracking.run_trackers:  # logged there too
        inputs["tracking"] = recipe.tracking.model_dump(mode="json")
    return inputs


def run(ctx: StageContext) -> list[Artifact]:
    report = write.load(ctx.store, ctx.run_id, ctx.run_dir)
    report.recovered = twins.in_store(ctx.store, ctx.run_dir.parent, report)
    write.write_files(report, ctx.out)
    for line in write.recommendation_lines(report.comparison):
        ctx.say(line)
    ctx.say(f"report: {ctx.run_dir / 'report' / 'report.html'}")
    if ctx.recipe.tracking.run_trackers:
        try:
            for where in tracking.log_report(ctx.recipe.tracking, ctx.run_id, ctx.run_dir, ctx.out, ctx.recipe.name):
                ctx.say(f"logged to {where}")
        except Exception as exc:  # noqa: BLE001 - the tracker failed; the report itself stands
            ctx.failures.append(f"tracking: {type(exc).__name__}: {exc}")
            ctx.say(f"could not log to the tracker: {exc}")
    return [
        Artifact(f"report-{path.name}", "report", path.name, path.stat().st_size)
        for path in sorted(ctx.out.iterdir())
        if not path.name.startswith(".")
    ]


STAGE = Stage(name="report", needs=("train", "eval", "bench"), key_inputs=key_inputs, run=run)
