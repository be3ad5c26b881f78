"""A quantization-aware run and its plain twin (the same recipe without `train.qat`): how much of the
quantization loss the QAT run recovered, (PTQ loss - QAT loss) / PTQ loss — with both losses measured
from the plain twin's 16-bit model, as torchao reports it (what the QAT file gives up against the 16-bit
model one would otherwise ship), and with each run's loss from its own 16-bit model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.report.compare import ComparisonRow, oriented

if TYPE_CHECKING:
    from workbench.core.store import Store
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


def merged_row(report: RunReport) -> ComparisonRow | None:
    return next((r for r in report.comparison.rows if r.role == "reference"), None)


def score_loss(reference: ComparisonRow | None, row: ComparisonRow, higher: bool) -> float | None:
    """How much worse `row` scores than `reference` (oriented by the metric: positive is worse)."""
    if reference is None or reference.score is None or row.score is None:
        return None
    return oriented(reference, higher) - oriented(row, higher)


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
        higher, baseline = twin.comparison.higher_is_better, merged_row(twin)
        plain_loss = score_loss(baseline, theirs, higher)
        own_loss = score_loss(merged_row(report), ours, higher)
        found.append(
            {
                "run": report.comparison.run_id,
                "twin": twin.comparison.run_id,
                "variant": label,
                "score": {
                    "plain": theirs.score,
                    "qat": ours.score,
                    "recovered_pct": recovered_pct(plain_loss, score_loss(baseline, ours, higher)),
                    "recovered_own_pct": recovered_pct(plain_loss, own_loss),
                },
                "kld": {"plain": theirs.kld, "qat": ours.kld, "recovered_pct": recovered_pct(theirs.kld, ours.kld)},
                "grid": ours.grid,
            }
        )
    return found


def in_store(store: Store, home: Path, report: RunReport) -> list[dict[str, Any]]:
    """`recovered` for a run and its twins among the store's runs: a QAT run's plain twin, or the QAT runs
    of a plain one."""
    from workbench.report.write import load

    key, mine = twin_key(report.recipe), qat_target(report.recipe)
    others = []
    for run in store.runs():
        recipe = store.recipe(run)
        twin = run.id != report.comparison.run_id and twin_key(recipe) == key
        if twin and (qat_target(recipe) is None) != (mine is None):
            others.append(load(store, run.id, home / run.id))
    return recovered([report, *others])


RECOVERED_HEADINGS = ["QAT run", "plain twin", "variant", "score (plain → QAT)", "recovered",
                      "recovered (own 16-bit)", "KLD (plain → QAT)", "KLD recovered", "grid"]  # fmt: skip


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def recovered_cells(item: dict[str, Any]) -> list[str]:
    def pair(values: dict[str, Any], digits: int = 3) -> str:
        return f"{_number(values['plain'], digits)} → {_number(values['qat'], digits)}"

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}%"

    score, kld = item["score"], item["kld"]
    return [item["run"], item["twin"], item["variant"], pair(score), pct(score["recovered_pct"]),
            pct(score["recovered_own_pct"]), pair(kld, 4), pct(kld["recovered_pct"]), item["grid"] or "-"]  # fmt: skip


RECOVERED_LEGEND = (
    "Quantization-aware runs beside their plain twins: recovered = (plain loss - QAT loss) / plain loss of the"
    " task score, both losses from the plain run's 16-bit model (as torchao reports it); (own 16-bit): each"
    " from its own run's 16-bit model; KLD is each file's against its own run's 16-bit model."
)
