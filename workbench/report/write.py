"""`report.md`, a self-contained `report.html` (figures inlined), `results.json` and `comparison.csv` for
one run, written together into a folder in one atomic step."""

from __future__ import annotations

import base64
import csv
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.fsutil import atomic_dir
from workbench.report import plots, table
from workbench.report.compare import Comparison, compare
from workbench.store import Store

FIGURES = {
    "quality_vs_size.png": "Quality vs size",
    "quality_vs_cpu_speed.png": "Quality vs CPU speed",
    "quality_vs_gpu_speed.png": "Quality vs GPU speed",
    "loss_curve.png": "Training loss",
}


@dataclass
class RunReport:
    comparison: Comparison
    recipe: dict[str, Any]
    stages: list[dict[str, Any]]
    loss: list[dict[str, Any]]
    failures: list[str] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)  # how the speeds were measured, per target

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.comparison.run_id,
            "recipe": self.recipe.get("name"),
            "comparison": self.comparison.to_dict(),
            "stages": self.stages,
            "failures": self.failures,
            "bench_settings": self.settings,
            "loss": self.loss,
        }


def load(store: Store, run_id: str, run_dir: Path, keep_percent: float | None = None) -> RunReport:
    """The run's comparison from the store; `keep_percent` overrides the recipe's `report.keep_percent`."""
    run = store.run(run_id)
    if run is None:
        raise KeyError(run_id)
    recipe = json.loads(run["recipe"])
    section = recipe.get("report") or {}
    wanted = section.get("task") or next(iter((recipe.get("eval") or {}).get("tasks") or []), None)
    bench = store.bench(run_id)
    keep = keep_percent if keep_percent is not None else section.get("keep_percent", 98.0)
    comparison = compare(run_id, store.variants(run_id), store.metrics(run_id), bench, keep, wanted)
    records = store.stages(run_id)
    stages = [{"name": s.name, "status": s.status, "seconds": s.seconds, "error": s.error} for s in records]
    # a partial stage's error lists every part that failed (variant, model or measurement) and why
    failures = [f"{s.name}: {s.error}" for s in records if s.status in ("partial", "failed", "crashed") and s.error]
    if comparison.task is None:
        failures.append("no evaluation results: nothing to judge the variants by")
    elif wanted and comparison.task != wanted:
        failures.append(f"no results for task {wanted!r}; judged by {comparison.task!r} instead")
    history = run_dir / "train" / "log_history.json"
    loss = json.loads(history.read_text()) if history.is_file() else []
    return RunReport(comparison, recipe, stages, loss, failures, bench_settings(bench))


def bench_settings(bench: list[dict[str, Any]]) -> list[str]:
    """One line per device: lengths, repetitions and threads of its measurements."""
    lines = {}
    for b in bench:
        if b["status"] == "done" and "pp_tps" in b and b["device"] not in lines:
            threads = f", {b['threads']} threads" if b.get("threads") and b["device"] == "cpu" else ""
            lines[b["device"]] = (
                f"{b['device'].upper()}: pp{b['prompt_tokens']} / tg{b['gen_tokens']}, median of"
                f" {b['repetitions']} runs after {b['warmup']} warm-up{threads}"
            )
    return list(lines.values())


def figures(report: RunReport) -> dict[str, bytes]:
    made = {
        "quality_vs_size.png": plots.quality_vs(report.comparison, "size"),
        "quality_vs_cpu_speed.png": plots.quality_vs(report.comparison, "cpu"),
        "quality_vs_gpu_speed.png": plots.quality_vs(report.comparison, "gpu"),
        "loss_curve.png": plots.loss_curve(report.loss),
    }
    return {name: data for name, data in made.items() if data is not None}


def recommendation_lines(comparison: Comparison) -> list[str]:
    names = {r.name: r.label for r in comparison.rows}
    return [
        f"{rec.target.upper()}: {names.get(rec.variant, rec.variant) if rec.variant else 'none'} — {rec.reason}"
        for rec in comparison.recommendations
    ]


def stage_lines(report: RunReport) -> list[str]:
    lines = []
    for stage in report.stages:
        seconds = f"{stage['seconds']:.0f} s" if stage["seconds"] is not None else "-"
        lines.append(f"{stage['name']}: {stage['status']}, {seconds}")
    total = sum(s["seconds"] or 0 for s in report.stages)
    lines.append(f"total: {total / 60:.1f} min")
    return lines


def markdown(report: RunReport, images: dict[str, bytes]) -> str:
    comparison = report.comparison
    parts = [f"# Run {comparison.run_id}", "", "## Recommendation", ""]
    parts += [f"- {line}" for line in recommendation_lines(comparison)]
    parts += ["", f"Threshold: {comparison.keep_percent:g}% of the merged model's score (`report.keep_percent`)."]
    parts += [f"Speeds measured with {line}." for line in report.settings] + [""]
    parts += ["## Variants", "", table.markdown(comparison), ""]
    if report.failures:
        parts += ["## Failures", "", *[f"- {line}" for line in report.failures], ""]
    parts += ["## Figures", ""]
    parts += [f"![{FIGURES[name]}]({name})" for name in images]
    parts += ["", "## Stages", "", *[f"- {line}" for line in stage_lines(report)], ""]
    return "\n".join(parts)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.pareto td:first-child { font-weight: bold; }
figure { display: inline-block; margin: 0.5em; }
"""


def to_html(report: RunReport, images: dict[str, bytes]) -> str:
    comparison = report.comparison
    headers, body = table.text_rows(comparison)
    on_front = set(comparison.pareto_size).union(*comparison.pareto_speed.values())
    rows_html = []
    for row, cells in zip(comparison.rows, body, strict=True):
        css = ' class="pareto"' if row.name in on_front else ""
        rows_html.append(f"<tr{css}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    figures_html = [
        f'<figure><img alt="{FIGURES[name]}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        f"<figcaption>{FIGURES[name]}</figcaption></figure>"
        for name, data in images.items()
    ]
    esc = html.escape
    return "\n".join(
        [
            "<!DOCTYPE html>",
            f'<html lang="en"><head><meta charset="utf-8"><title>Run {esc(comparison.run_id)}</title>',
            f"<style>{STYLE}</style></head><body>",
            f"<h1>Run {esc(comparison.run_id)}</h1>",
            "<h2>Recommendation</h2><ul>",
            *[f"<li>{esc(line)}</li>" for line in recommendation_lines(comparison)],
            "</ul>",
            f"<p>Threshold: {comparison.keep_percent:g}% of the merged model's score. Bold: on a Pareto front.</p>",
            *[f"<p>Speeds measured with {esc(line)}.</p>" for line in report.settings],
            "<h2>Variants</h2><table><thead><tr>",
            "".join(f"<th>{esc(h)}</th>" for h in headers),
            "</tr></thead><tbody>",
            *rows_html,
            "</tbody></table>",
            *(
                ["<h2>Failures</h2><ul>", *[f"<li>{esc(f)}</li>" for f in report.failures], "</ul>"]
                if report.failures
                else []
            ),
            "<h2>Figures</h2>",
            *figures_html,
            "<h2>Stages</h2><ul>",
            *[f"<li>{esc(line)}</li>" for line in stage_lines(report)],
            "</ul></body></html>",
        ]
    )


def write_csv(comparison: Comparison, path: Path) -> None:
    headers, body = table.raw_rows(comparison)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(headers)
        writer.writerows(["" if v is None else v for v in row] for row in body)


def write_files(report: RunReport, folder: Path) -> None:
    """Every report file into `folder` (which exists and is empty)."""
    images = figures(report)
    for name, data in images.items():
        (folder / name).write_bytes(data)
    (folder / "report.md").write_text(markdown(report, images), encoding="utf-8")
    (folder / "report.html").write_text(to_html(report, images), encoding="utf-8")
    (folder / "results.json").write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    write_csv(report.comparison, folder / "comparison.csv")


def write(report: RunReport, dest: Path) -> Path:
    with atomic_dir(dest) as tmp:
        write_files(report, tmp)
    return dest
