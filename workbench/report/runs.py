"""Several runs side by side (e.g. LoRA vs QLoRA vs LoftQ): for each kind of variant, each run's task
score, its change vs that run's own merged model and KLD — which training survives quantization best.
A quantization-aware run beside its plain twin (the same recipe without `train.qat`) also gets how much
of the quantization loss it recovered, as torchao reports it: (PTQ loss - QAT loss) / PTQ loss."""

from __future__ import annotations

import json
from typing import Any

from workbench import safe
from workbench.report.compare import ComparisonRow, oriented
from workbench.report.write import RunReport


def qat_target(recipe: dict[str, Any]) -> str | None:
    return ((recipe.get("train") or {}).get("qat") or {}).get("target")


def twin_key(recipe: dict[str, Any]) -> str:
    """A recipe without its name and its quantization-aware training: equal for a QAT run and its twin."""
    train = {key: value for key, value in (recipe.get("train") or {}).items() if key != "qat"}
    rest = {key: value for key, value in recipe.items() if key not in ("name", "train")}
    return json.dumps({**rest, "train": train}, sort_keys=True, default=str)


def recovered_pct(plain_loss: float | None, qat_loss: float | None) -> float | None:
    """Share of the plain run's quantization loss the QAT run does not suffer; None when there is none."""
    if plain_loss is None or qat_loss is None or plain_loss <= 0:
        return None
    return 100.0 * (plain_loss - qat_loss) / plain_loss


def score_loss(report: RunReport, row: ComparisonRow) -> float | None:
    """What quantization cost a run's task score (oriented: positive is worse than its merged model)."""
    merged = next((r for r in report.comparison.rows if r.role == "reference"), None)
    metric = report.comparison.metric
    if merged is None or merged.score is None or row.score is None or metric is None:
        return None
    return oriented(merged, metric) - oriented(row, metric)


def recovered(reports: list[RunReport]) -> list[dict[str, Any]]:
    """Each QAT run whose plain twin is among `reports`: KLD and task-score loss of the variant it trained
    for, both runs', and the share recovered."""
    found = []
    for report in reports:
        target = qat_target(report.recipe)
        twin = next(
            (
                other
                for other in reports
                if other is not report
                and qat_target(other.recipe) is None
                and twin_key(other.recipe) == twin_key(report.recipe)
            ),
            None,
        )
        if target is None or twin is None:
            continue
        label = f"{target.upper()}.gguf"
        ours = next((r for r in report.comparison.rows if r.label == label), None)
        theirs = next((r for r in twin.comparison.rows if r.label == label), None)
        if ours is None or theirs is None:
            continue
        loss = (score_loss(twin, theirs), score_loss(report, ours))
        found.append(
            {
                "run": report.comparison.run_id,
                "twin": twin.comparison.run_id,
                "variant": label,
                "kld": {"plain": theirs.kld, "qat": ours.kld, "recovered_pct": recovered_pct(theirs.kld, ours.kld)},
                "score_loss": {"plain": loss[0], "qat": loss[1], "recovered_pct": recovered_pct(*loss)},
                "score": {"plain": theirs.score, "qat": ours.score},
                "grid": ours.grid,
            }
        )
    return found


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


RECOVERED_HEADINGS = ["QAT run", "plain twin", "variant", "score (plain → QAT)", "score loss (plain → QAT)",
                      "recovered", "KLD (plain → QAT)", "recovered", "grid"]  # fmt: skip


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def recovered_cells(item: dict[str, Any]) -> list[str]:
    def pair(values: dict[str, Any], digits: int = 3) -> str:
        return f"{_number(values['plain'], digits)} → {_number(values['qat'], digits)}"

    def pct(values: dict[str, Any]) -> str:
        return "-" if values["recovered_pct"] is None else f"{values['recovered_pct']:.0f}%"

    return [item["run"], item["twin"], item["variant"], pair(item["score"]), pair(item["score_loss"]),
            pct(item["score_loss"]), pair(item["kld"], 4), pct(item["kld"]), item["grid"] or "-"]  # fmt: skip


RECOVERED_LEGEND = (
    "Quantization-aware runs beside their plain twins: loss = the variant's change vs its own run's merged"
    " model; recovered = (plain loss - QAT loss) / plain loss."
)


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
