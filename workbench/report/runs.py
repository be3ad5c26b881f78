"""Several runs side by side (e.g. LoRA vs QLoRA vs LoftQ): for each kind of variant, each run's task
score, its change vs that run's own merged model and KLD — which training survives quantization best —
and what each quantization-aware run recovered against its plain twin (`twins`)."""

from __future__ import annotations

from typing import Any

from workbench.core import safe
from workbench.report.twins import RECOVERED_HEADINGS, RECOVERED_LEGEND, qat_target, recovered, recovered_cells
from workbench.report.write import RunReport


def training(recipe: dict[str, Any]) -> str | None:
    """How a run was trained, in a few words: "qlora", "lora + QAT q4_0"."""
    method = (recipe.get("train") or {}).get("method")
    target = qat_target(recipe)
    return f"{method} + QAT {target}" if method and target else method


def side_by_side(reports: list[RunReport]) -> dict[str, Any]:
    runs = []
    for report in reports:
        c = report.comparison
        runs.append({"run": c.run_id, "method": training(report.recipe), "task": c.task, "metric": c.metric})
    labels = list(dict.fromkeys(row.label for report in reports for row in report.comparison.rows))
    same_yardstick = len({(r["task"], r["metric"]) for r in runs}) == 1  # else shares are not comparable
    rows = []
    for label in labels:
        cells = {}
        for report in reports:
            row = next((r for r in report.comparison.rows if r.label == label), None)
            if row is not None:
                cells[report.comparison.run_id] = {
                    "score": row.score,
                    "delta": row.delta,
                    "keep_pct": row.keep_pct,
                    "kld": row.kld,
                    "size_mb": row.size_mb,
                    "cpu_tg_tps": row.tg("cpu"),
                }
        kept = {run: cell["keep_pct"] for run, cell in cells.items() if cell["keep_pct"] is not None}
        comparable = same_yardstick and len(kept) > 1 and label not in ("merged", "base")
        best = max(kept, key=lambda run: kept[run]) if comparable else None
        rows.append({"variant": label, "runs": cells, "keeps_most": best})
    return {"runs": runs, "rows": rows, "recovered": recovered(reports)}


def cell_text(cell: dict[str, Any] | None) -> str:
    if not cell or cell["score"] is None:
        return "-"
    text = f"{cell['score']:.3f}"
    if cell["delta"] is not None:
        text += f" ({cell['delta']:+.3f})"
    if cell["kld"] is not None:
        text += f" KLD {cell['kld']:.3f}"
    return text


def headings(table: dict[str, Any]) -> list[str]:
    return [f"{r['run']} ({r['method']})" if r["method"] else r["run"] for r in table["runs"]]


def legend(table: dict[str, Any]) -> str:
    tasks = {f"{r['task']} {r['metric']}" for r in table["runs"] if r["task"]}
    return f"Score: {', '.join(sorted(tasks)) or 'none'}; (change vs the run's merged model), KLD vs it."


def markdown(table: dict[str, Any]) -> str:
    runs = [r["run"] for r in table["runs"]]
    heads = headings(table)
    lines = [safe.markdown_text(legend(table)), ""]
    lines += [safe.markdown_row(["variant", *heads, "keeps most"]), "|---" * (len(runs) + 2) + "|"]
    for row in table["rows"]:
        cells = [cell_text(row["runs"].get(run)) for run in runs]
        lines.append(safe.markdown_row([row["variant"], *cells, row["keeps_most"]]))
    if table.get("recovered"):
        lines += ["", safe.markdown_text(RECOVERED_LEGEND), "", safe.markdown_row(RECOVERED_HEADINGS)]
        lines.append("|---" * len(RECOVERED_HEADINGS) + "|")
        lines += [safe.markdown_row(recovered_cells(item)) for item in table["recovered"]]
    return "\n".join(lines)
