"""Report stage: the comparison table, Pareto fronts, recommendation and figures for the run
(`workbench report RUN` writes the same from the store at any time)."""

from __future__ import annotations

from typing import Any

from workbench.recipe import Recipe
from workbench.records import Artifact
from workbench.report import twins, write
from workbench.stages.base import Stage, StageContext


def key_inputs(recipe: Recipe) -> dict[str, Any]:
    return {"report": recipe.report.model_dump(mode="json"), "eval_tasks": recipe.eval.tasks}


def run(ctx: StageContext) -> list[Artifact]:
    report = write.load(ctx.store, ctx.run_id, ctx.run_dir)
    report.recovered = twins.in_store(ctx.store, ctx.run_dir.parent, report)
    write.write_files(report, ctx.out)
    for line in write.recommendation_lines(report.comparison):
        ctx.say(line)
    ctx.say(f"report: {ctx.run_dir / 'report' / 'report.html'}")
    return [
        Artifact(f"report-{path.name}", "report", path.name, path.stat().st_size)
        for path in sorted(ctx.out.iterdir())
        if not path.name.startswith(".")
    ]


STAGE = Stage(name="report", needs=("train", "eval", "bench"), key_inputs=key_inputs, run=run)
