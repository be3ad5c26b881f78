"""The report's figures as PNG bytes (matplotlib, no display needed)."""

from __future__ import annotations

import io
from typing import Any

from workbench.report.compare import Comparison, Row, candidates, higher_is_better

FIGSIZE = (6.4, 4.0)


def _png(figure: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=FIGSIZE)


def quality_vs(comparison: Comparison, axis: str) -> bytes | None:
    """Task score against size (axis "size") or generation speed on a target ("cpu"/"gpu"); the Pareto
    front drawn and its points filled, the merged score and the keep threshold as lines."""
    if axis == "size":
        x_of, front, xlabel = (lambda r: r.size_mb), comparison.pareto_size, "size (MiB)"
    else:
        x_of, front, xlabel = (
            (lambda r: r.tg(axis)),
            comparison.pareto_speed.get(axis, []),
            f"{axis.upper()} generation (tok/s)",
        )
    rows = [r for r in candidates(comparison.rows) if x_of(r) is not None]
    if not rows:
        return None
    figure, ax = _figure()
    for index, row in enumerate(sorted(rows, key=x_of)):
        on_front = row.name in front
        ax.scatter(x_of(row), row.score, s=60 if on_front else 35, color="C3" if on_front else "C0", zorder=3)
        below = index % 2 == 1  # neighbours' labels alternate above and below, so close points stay readable
        ax.annotate(row.label, (x_of(row), row.score), textcoords="offset points", xytext=(5, -11 if below else 4),
                    fontsize=8)  # fmt: skip
    ordered: list[Row] = sorted((r for r in rows if r.name in front), key=x_of)
    if len(ordered) > 1:
        ax.plot([x_of(r) for r in ordered], [r.score for r in ordered], color="C3", lw=1.2, label="Pareto front")
    merged = next((r for r in comparison.rows if r.role == "reference" and r.score is not None), None)
    if merged is not None and merged.score is not None:
        ax.axhline(merged.score, color="grey", ls="--", lw=0.8, label="merged")
        share = comparison.keep_percent / 100
        bar = merged.score * share if higher_is_better(comparison.metric or "") else merged.score / share
        ax.axhline(bar, color="grey", ls=":", lw=0.8, label=f"{comparison.keep_percent:g}% of merged")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{comparison.task} {comparison.metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(figure)


def loss_curve(history: list[dict[str, Any]]) -> bytes | None:
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return None
    figure, ax = _figure()
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(figure)
