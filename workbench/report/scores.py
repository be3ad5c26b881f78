"""Evaluation results as one row per model: each task's primary metric (its first) and the fidelity numbers."""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.core.records import Metric

FIDELITY = ("kld_mean", "top1_agreement", "ppl_ratio", "answer_ppl_ratio")
ROLE_ORDER = {"base": 0, "sft": 1, "reference": 2, "variant": 3, "reward": 4}


@dataclass
class ModelScores:
    model: str
    role: str
    scores: dict[str, float | None] = field(default_factory=dict)  # "task metric" or fidelity name -> value


def primary_metrics(rows: list[Metric]) -> dict[str, str]:
    """Each task's first metric, in the order the tasks were reported."""
    primary: dict[str, str] = {}
    for row in rows:
        if row.task != "fidelity":
            primary.setdefault(row.task, row.metric)
    return primary


def columns(rows: list[Metric]) -> list[str]:
    names = [f"{task} {metric}" for task, metric in primary_metrics(rows).items()]
    reported = {row.metric for row in rows if row.task == "fidelity"}
    return names + [name for name in FIDELITY if name in reported]


def by_model(rows: list[Metric]) -> list[ModelScores]:
    primary = primary_metrics(rows)
    models: dict[str, ModelScores] = {}
    for row in rows:
        entry = models.setdefault(row.model, ModelScores(row.model, row.role))
        if row.task == "fidelity" and row.metric in FIDELITY:
            entry.scores[row.metric] = row.value
        elif primary.get(row.task) == row.metric:
            entry.scores[f"{row.task} {row.metric}"] = row.value
    return sorted(models.values(), key=lambda m: ROLE_ORDER.get(m.role, 3))


def gains(rows: list[Metric]) -> list[tuple[str, float, float]]:
    """(task metric, base value, merged value) for every task both were scored on."""
    models = by_model(rows)
    base = next((m for m in models if m.role == "base"), None)
    merged = next((m for m in models if m.role == "reference"), None)
    if base is None or merged is None:
        return []
    return [
        (name, base.scores[name], merged.scores[name])  # type: ignore[misc]
        for name in columns(rows)
        if name not in FIDELITY and base.scores.get(name) is not None and merged.scores.get(name) is not None
    ]


def format_table(rows: list[Metric]) -> list[str]:
    names = columns(rows)
    width = max([len(m.model) for m in by_model(rows)] + [10])
    lines = [f"{'model':{width}} {'role':9} " + " ".join(f"{name:>{max(len(name), 9)}}" for name in names)]
    for entry in by_model(rows):
        cells = []
        for name in names:
            value = entry.scores.get(name)
            text = "-" if value is None else f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
            cells.append(f"{text:>{max(len(name), 9)}}")
        lines.append(f"{entry.model:{width}} {entry.role:9} " + " ".join(cells))
    for name, before, after in gains(rows):
        lines.append(f"fine-tune vs base, {name}: {before:.4g} -> {after:.4g} ({after - before:+.4g})")
    return lines
