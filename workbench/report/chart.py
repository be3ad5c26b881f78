"""What a quality-vs-size or quality-vs-speed chart shows, whatever draws it (matplotlib for the report,
plotext in the terminal): the points, the Pareto front through them, the merged score and the bar a
variant must clear to keep `keep_percent` of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from workbench.report.compare import Comparison, ComparisonRow, candidates, pareto_front


@dataclass
class Point:
    label: str
    x: float
    y: float
    on_front: bool
    low: float | None = None  # the 95% paired interval of its score against the merged model's
    high: float | None = None


@dataclass
class Chart:
    xlabel: str
    ylabel: str
    points: list[Point]  # by x
    front: list[Point]  # the Pareto front, by x
    merged: float | None  # the merged model's score
    bar: float | None  # keep_percent of it, direction-aware
    bar_label: str


def interval(row: ComparisonRow, merged: float | None, comparison: Comparison) -> tuple[float | None, float | None]:
    """A row's paired 95% interval of kept % as scores (higher-is-better metrics; kept % = score / merged)."""
    paired = row.paired
    if paired is None or paired.low is None or paired.high is None or merged is None or not comparison.higher_is_better:
        return None, None
    return merged * paired.low / 100, merged * paired.high / 100


def quality_vs(comparison: Comparison, axis: str) -> Chart | None:
    """Task score against size (axis "size") or generation speed on a target ("cpu"/"gpu"); None when
    nothing has both numbers."""
    x_of: Callable[[ComparisonRow], float | None]
    if axis == "size":
        x_of, front, xlabel = (lambda r: r.size_mb), comparison.pareto_size, "size (MiB)"
    else:
        x_of, front = (lambda r: r.tg(axis)), comparison.pareto_speed.get(axis, [])
        xlabel = f"{axis.upper()} generation (tok/s)"
    rows = sorted((r for r in candidates(comparison.rows) if x_of(r) is not None), key=lambda r: x_of(r) or 0)
    if not rows:
        return None
    merged = next((r.score for r in comparison.rows if r.role == "reference" and r.score is not None), None)
    points = [
        Point(r.label, x_of(r) or 0, r.score or 0, r.name in front, *interval(r, merged, comparison)) for r in rows
    ]
    bar = None
    if merged is not None:
        share = comparison.keep_percent / 100
        bar = merged * share if comparison.higher_is_better else merged / share
    return Chart(
        xlabel=xlabel,
        ylabel=f"{comparison.task} {comparison.metric}",
        points=points,
        front=[p for p in points if p.on_front],
        merged=merged,
        bar=bar,
        bar_label=f"{comparison.keep_percent:g}% of merged",
    )


def fidelity_vs_size(comparison: Comparison) -> Chart | None:
    """The size–fidelity frontier: each variant's KLD to the merged model (lower: closer) against its size,
    the front through those no other is both smaller and closer than; None when fewer than two have both."""
    rows = sorted((r for r in candidates(comparison.rows) if r.kld is not None and r.size_mb is not None),
                  key=lambda r: r.size_mb or 0)  # fmt: skip
    if len(rows) < 2:
        return None
    front = set(pareto_front({r.name: (-(r.kld or 0), r.size_mb or 0) for r in rows}))
    points = [Point(r.label, r.size_mb or 0, r.kld or 0, r.name in front) for r in rows]
    return Chart(
        xlabel="size (MiB)",
        ylabel="KLD to the merged model (lower: closer)",
        points=points,
        front=[p for p in points if p.on_front],
        merged=None,
        bar=None,
        bar_label="",
    )
