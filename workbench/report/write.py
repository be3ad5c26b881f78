"""`report.md`, a self-contained `report.html` (figures inlined), `results.json` and `comparison.csv` for
one run, each written atomically into a folder; nothing else in that folder is touched."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.core import safe
from workbench.core.errors import RunError
from workbench.core.fsutil import atomic_write_bytes
from workbench.core.parity import describe_served
from workbench.core.records import BenchResult, Metric
from workbench.core.store import Store
from workbench.report import plots, table, twins
from workbench.report.compare import Comparison, Judging, compare
from workbench.report.scores import ROLE_ORDER

FIGURES = {
    "quality_vs_size.png": "Quality vs size",
    "fidelity_vs_size.png": "Fidelity vs size (KLD to the merged model)",
    "quality_vs_cpu_speed.png": "Quality vs CPU speed",
    "quality_vs_gpu_speed.png": "Quality vs GPU speed",
    "loss_curve.png": "Training loss",
    "served_throughput.png": "Served throughput vs latency (each level of the load sweeps)",
}


@dataclass
class RunReport:
    comparison: Comparison
    recipe: dict[str, Any]
    stages: list[dict[str, Any]]
    loss: list[dict[str, Any]]
    failures: list[str] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)  # how the speeds were measured, per target
    recovered: list[dict[str, Any]] = field(default_factory=list)  # against plain / QAT twins (report.twins)
    serving: list[dict[str, Any]] = field(default_factory=list)  # per variant: how to serve it, served parity
    preference: list[str] = field(default_factory=list)  # held-out preference pairs, per model

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.comparison.run_id,
            "recipe": self.recipe.get("name"),
            "comparison": self.comparison.to_dict(),
            "stages": self.stages,
            "failures": self.failures,
            "bench_settings": self.settings,
            "loss": self.loss,
            "recovered": self.recovered,
            "serving": self.serving,
            "preference": self.preference,
        }


def load(store: Store, run_id: str, run_dir: Path, keep_percent: float | None = None) -> RunReport:
    """The run's comparison from the store; `keep_percent` overrides the recipe's `report.keep_percent`."""
    run = store.run(run_id)
    if run is None:
        raise KeyError(run_id)
    recipe = store.recipe(run)
    section = recipe.get("report") or {}
    wanted = section.get("task") or next(iter((recipe.get("eval") or {}).get("tasks") or []), None)
    bench = store.bench(run_id)
    keep = keep_percent if keep_percent is not None else section.get("keep_percent", 98.0)
    defaults = Judging()
    judging = Judging(
        keep_percent=keep,
        keep_on=section.get("keep_on", defaults.keep_on),
        max_kld=section.get("max_kld", defaults.max_kld),
        min_top1=section.get("min_top1", defaults.min_top1),
    )
    variants, metrics = store.variants(run_id), store.metrics(run_id)
    comparison = compare(run_id, variants, metrics, bench, keep, wanted, section.get("max_ttft_ms"),
                         items=store.items(run_id), judging=judging)  # fmt: skip
    records = store.stages(run_id)
    stages = [{"name": s.name, "status": s.status, "seconds": s.seconds, "error": s.error} for s in records]
    # a partial stage's error lists every part that failed (variant, model or measurement) and why
    failures = [f"{s.name}: {s.error}" for s in records if s.status in ("partial", "failed", "crashed") and s.error]
    if comparison.task is None:
        failures.append("no evaluation results: nothing to judge the variants by")
    elif wanted and comparison.task != wanted:
        failures.append(f"no results for task {wanted!r}; judged by {comparison.task!r} instead")
    labels = {row.name: row.label for row in comparison.rows}
    serving = [
        {"variant": labels.get(v.name, v.name), **v.meta.get("serving", {}), "served": v.meta.get("served")}
        for v in store.variants(run_id)
        if v.status == "done" and (v.meta.get("serving") or v.meta.get("served"))
    ]
    history = run_dir / "train" / "log_history.json"
    loss = json.loads(history.read_text()) if history.is_file() else []
    preference = preference_lines(metrics, labels)
    return RunReport(
        comparison, recipe, stages, loss, failures, bench_settings(bench), serving=serving, preference=preference
    )


def preference_lines(metrics: list[Metric], labels: dict[str, str]) -> list[str]:
    """What preference tuning did, per model, on the held-out pairs (workbench.eval.preference)."""
    values: dict[str, dict[str, float]] = {}
    roles = {}
    for m in metrics:
        if m.task == "preference" and m.value is not None:
            values.setdefault(m.model, {})[m.metric] = m.value
            roles[m.model] = m.role
    lines = []
    for model in sorted(values, key=lambda name: ROLE_ORDER.get(roles[name], 3)):
        got = values[model]
        if roles[model] == "reward":
            lines.append(
                f"reward model: ranks {got['accuracy']:.1%} of its held-out pairs right"
                f" (mean score margin {got.get('margin', float('nan')):.3f})"
            )
            continue
        line = (
            f"{labels.get(model, model)}: finds the chosen answer likelier on {got['accuracy']:.1%} of held-out pairs"
        )
        if "reward_margin" in got:
            line += (
                f"; implicit reward vs the supervised model: margin {got['reward_margin']:+.3f},"
                f" {got.get('reward_accuracy', float('nan')):.1%} of pairs ranked right"
            )
        lines.append(line)
    return lines


def bench_settings(bench: list[BenchResult]) -> list[str]:
    """One line per device: lengths, repetitions and threads of its measurements."""
    lines = {}
    for b in bench:
        if b.status == "done" and b.pp_tps is not None and b.device not in lines:
            threads = f", {b.threads} threads" if b.threads and b.device == "cpu" else ""
            lines[b.device] = (
                f"{b.device.upper()}: pp{b.prompt_tokens} / tg{b.gen_tokens}, median of"
                f" {b.repetitions} runs after {b.warmup} warm-up{threads}"
            )
    return list(lines.values())


MARK = ".workbench-report"  # in a folder that holds a report this code wrote: the names of its files


def figures(report: RunReport) -> dict[str, bytes]:
    made = [
        plots.quality_vs(report.comparison, "size"),
        plots.fidelity_vs_size(report.comparison),
        plots.quality_vs(report.comparison, "cpu"),
        plots.quality_vs(report.comparison, "gpu"),
        plots.loss_curve(report.loss),
        plots.served_throughput(report.comparison),
    ]
    return {name: data for name, data in zip(FIGURES, made, strict=True) if data is not None}


def threshold_line(comparison: Comparison) -> str:
    judging = comparison.judging
    on = "the 95% paired interval's lower bound" if judging.keep_on == "lower" else "the point estimate"
    line = (
        f"Threshold: {comparison.keep_percent:g}% of the merged model's score (`report.keep_percent`), applied to"
        f" {on} of kept % (`report.keep_on`; the interval is a paired bootstrap over the held-out items both"
        " answered)."
    )
    limits = [f"KLD > {judging.max_kld:g}" for _ in [0] if judging.max_kld is not None]
    limits += [f"top-1 agreement < {judging.min_top1:g}" for _ in [0] if judging.min_top1 is not None]
    if limits:
        line += f" Not recommended whatever its score: {' or '.join(limits)} (`report.max_kld`, `report.min_top1`)."
    return line


def recommendation_lines(comparison: Comparison) -> list[str]:
    names = {r.name: r.label for r in comparison.rows}
    return [
        f"{rec.target.upper()}: {names.get(rec.variant, rec.variant) if rec.variant else 'none'} — {rec.reason}"
        for rec in comparison.recommendations
    ]


ADAPTER_MARK = "adapter-on-"


def adapter_lines(comparison: Comparison) -> list[str]:
    """Each GGUF adapter on a quantized base against the merged-then-quantized file of the same type: which
    is closer to the merged model (KLD) and which scores better."""
    by_label = {row.label: row for row in comparison.rows}
    lines = []
    for row in comparison.rows:
        if not row.label.startswith(ADAPTER_MARK) or row.status != "done":
            continue
        twin = by_label.get(row.label.removeprefix(ADAPTER_MARK))
        kind = row.label.removeprefix(ADAPTER_MARK).removesuffix(".gguf")
        what = f"{row.label} (the LoRA adapter on the base quantized to {kind})"
        if twin is None or twin.status != "done":
            lines.append(f"{what}: no merged-then-quantized file of that type to compare with")
            continue

        def number(value: float | None, form: str) -> str:
            return "-" if value is None else format(value, form)

        line = (
            f"{what} vs {twin.label} (merged, then quantized): KLD to the merged model {number(row.kld, '.3g')} vs"
            f" {number(twin.kld, '.3g')}, task score {number(row.score, '.3f')} vs {number(twin.score, '.3f')}"
        )
        if row.kld is not None and twin.kld is not None and row.kld != twin.kld:
            line += f"; closer to the merged model: {row.label if row.kld < twin.kld else twin.label}"
        lines.append(line)
    return lines


def serving_lines(report: RunReport) -> list[str]:
    """Per variant: its Ollama Modelfile (or why there is none), the llama-server command, served parity."""
    lines = []
    for item in report.serving:
        parts = []
        if item.get("modelfile"):
            parts.append(f"Ollama: `ollama create NAME -f {item['modelfile']}` (in the export folder)")
        elif item.get("untranslatable"):
            parts.append(f"no Ollama Modelfile: {item['untranslatable']}")
        if item.get("llama_server"):
            parts.append(f"llama.cpp: `{item['llama_server']}`")
        if item.get("served"):
            parts.append(f"served parity {describe_served(item['served'])}")
        lines.append(f"{item['variant']}: " + "; ".join(parts))
    return lines


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
    text = safe.markdown_text
    parts = [f"# Run {text(comparison.run_id)}", "", "## Recommendation", ""]
    parts += [f"- {text(line)}" for line in recommendation_lines(comparison)]
    parts += ["", threshold_line(comparison)]  # our own words and numbers: nothing to escape
    parts += [f"Speeds measured with {text(line)}." for line in report.settings] + [""]
    parts += ["## Variants", "", table.markdown(comparison), ""]
    if report.recovered:
        parts += ["## Quantization-aware training against the plain twin", "", text(twins.RECOVERED_LEGEND), ""]
        parts += [safe.markdown_row(twins.RECOVERED_HEADINGS), "|---" * len(twins.RECOVERED_HEADINGS) + "|"]
        parts += [safe.markdown_row(twins.recovered_cells(item)) for item in report.recovered] + [""]
    if report.serving:
        parts += ["## Serving", "", *[f"- {text(line)}" for line in serving_lines(report)], ""]
    if report.preference:
        parts += ["## Preference (held-out pairs)", "", *[f"- {text(line)}" for line in report.preference], ""]
    if adapter_lines(comparison):
        parts += ["## Adapter or merge", "", *[f"- {text(line)}" for line in adapter_lines(comparison)], ""]
    if report.failures:
        parts += ["## Failures", "", *[f"- {text(line)}" for line in report.failures], ""]
    parts += ["## Figures", ""]
    parts += [f"![{FIGURES[name]}]({name})" for name in images]
    parts += ["", "## Stages", "", *[f"- {text(line)}" for line in stage_lines(report)], ""]
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
            f"<p>{esc(threshold_line(comparison))} Bold: on a Pareto front.</p>",
            *[f"<p>Speeds measured with {esc(line)}.</p>" for line in report.settings],
            "<h2>Variants</h2><table><thead><tr>",
            "".join(f"<th>{esc(h)}</th>" for h in headers),
            "</tr></thead><tbody>",
            *rows_html,
            "</tbody></table>",
            *(
                [
                    "<h2>Quantization-aware training against the plain twin</h2>",
                    f"<p>{esc(twins.RECOVERED_LEGEND)}</p><table><thead><tr>",
                    "".join(f"<th>{esc(h)}</th>" for h in twins.RECOVERED_HEADINGS),
                    "</tr></thead><tbody>",
                    *[
                        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in twins.recovered_cells(item)) + "</tr>"
                        for item in report.recovered
                    ],
                    "</tbody></table>",
                ]
                if report.recovered
                else []
            ),
            *(
                ["<h2>Serving</h2><ul>", *[f"<li>{esc(line)}</li>" for line in serving_lines(report)], "</ul>"]
                if report.serving
                else []
            ),
            *(
                ["<h2>Preference (held-out pairs)</h2><ul>", *[f"<li>{esc(line)}</li>" for line in report.preference]]
                + ["</ul>"]
                if report.preference
                else []
            ),
            *(
                [
                    "<h2>Adapter or merge</h2><ul>",
                    *[f"<li>{esc(line)}</li>" for line in adapter_lines(comparison)],
                    "</ul>",
                ]  # fmt: skip
                if adapter_lines(comparison)
                else []
            ),
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


def csv_text(comparison: Comparison) -> str:
    headers, body = table.raw_rows(comparison)
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow([safe.csv_cell(h) for h in headers])
    writer.writerows([safe.csv_cell(v) for v in row] for row in body)
    return handle.getvalue()


def files(report: RunReport) -> dict[str, bytes]:
    """Every report file by name."""
    images = figures(report)
    return {
        **images,
        "report.md": markdown(report, images).encode(),
        "report.html": to_html(report, images).encode(),
        "results.json": safe.json_text(report.to_dict(), indent=2).encode(),
        "comparison.csv": csv_text(report.comparison).encode(),
    }


def write_files(report: RunReport, folder: Path) -> None:
    """The report's files into `folder`, each replaced atomically, and the mark that says this folder holds
    a workbench report and lists what it wrote. Nothing else there is touched: a figure of an earlier
    report that this one lacks is removed only when that report's mark lists it."""
    made = files(report)
    for name in written_before(folder):
        if name in FIGURES and name not in made:
            (folder / name).unlink(missing_ok=True)
    for name, data in made.items():
        atomic_write_bytes(folder / name, data)
    atomic_write_bytes(folder / MARK, json.dumps(sorted(made)).encode())


def written_before(folder: Path) -> list[str]:
    """The files an earlier report listed in its mark (none for a mark from before marks held a list)."""
    try:
        with open(folder / MARK, "rb") as handle:
            listed = json.loads(handle.read(64 * 1024))
    except (OSError, ValueError):
        return []
    return [name for name in listed if isinstance(name, str)] if isinstance(listed, list) else []


def write(report: RunReport, dest: Path, *, own: bool = False) -> Path:
    """The report into `dest`, made when missing. A folder of the user's (`--out`) must be empty or hold an
    earlier workbench report (its mark); `own` is the run's own report folder."""
    if dest.exists() and not dest.is_dir():
        raise RunError(f"--out {dest}: is a file; the report needs a folder")
    if not own and dest.is_dir() and not (dest / MARK).is_file() and any(dest.iterdir()):
        raise RunError(
            f"--out {dest}: holds files and no {MARK} mark, so not an earlier workbench report; give a new or"
            " empty folder"
        )
    dest.mkdir(parents=True, exist_ok=True)
    write_files(report, dest)
    return dest
