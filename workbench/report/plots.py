"""The report's figures as PNG bytes (matplotlib, no display needed)."""

from __future__ import annotations

import io
from typing import Any

from workbench.report import chart
from workbench.report.compare import Comparison

FIGSIZE = (6.4, 4.0)


def _png(figure: Any, right: float | None = None) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout(rect=(0, 0, right, 1) if right else None)
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def _figure(wide: bool = False) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(FIGSIZE[0] + 2.6, FIGSIZE[1]) if wide else FIGSIZE)


def quality_vs(comparison: Comparison, axis: str) -> bytes | None:
    """Task score against size (axis "size") or generation speed on a target ("cpu"/"gpu"), each point with
    its paired 95% interval; the Pareto front drawn and its points filled, the merged score and the keep
    threshold as lines. Points carry numbers, named in a key beside the plot: labels never overlap."""
    return numbered(chart.quality_vs(comparison, axis))


def fidelity_vs_size(comparison: Comparison) -> bytes | None:
    """KLD to the merged model against size: the size–fidelity frontier (log scale: KLDs span decades)."""
    return numbered(chart.fidelity_vs_size(comparison), log_y=True)


def numbered(data: chart.Chart | None, log_y: bool = False) -> bytes | None:
    if data is None:
        return None
    figure, ax = _figure(wide=True)
    key = []
    for number, point in enumerate(data.points, 1):
        on_front = point.on_front
        color = "C3" if on_front else "C0"
        if point.low is not None and point.high is not None:
            # a bootstrap interval need not contain the point estimate: a bar never reaches past it
            below, above = max(0.0, point.y - point.low), max(0.0, point.high - point.y)
            ax.errorbar(point.x, point.y, yerr=[[below], [above]], fmt="none",
                        ecolor=color, alpha=0.5, capsize=2, lw=0.8, zorder=2)  # fmt: skip
        ax.scatter(point.x, point.y, s=60 if on_front else 35, color=color, zorder=3)
        ax.annotate(str(number), (point.x, point.y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        key.append(f"{number}  {point.label.removesuffix('.gguf')}")
    figure.text(0.74, 0.95, "\n".join(key), fontsize=7, va="top", family="monospace")
    if len(data.front) > 1:
        ax.plot([p.x for p in data.front], [p.y for p in data.front], color="C3", lw=1.2, label="Pareto front")
    if data.merged is not None and data.bar is not None:
        ax.axhline(data.merged, color="grey", ls="--", lw=0.8, label="merged")
        ax.axhline(data.bar, color="grey", ls=":", lw=0.8, label=data.bar_label)
    if log_y and min(p.y for p in data.points) > 0:
        ax.set_yscale("log")
    ax.set_xlabel(data.xlabel)
    ax.set_ylabel(data.ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    return _png(figure, right=0.72)


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


def served_throughput(comparison: Comparison) -> bytes | None:
    """Each variant's throughput–latency curve through its server: output tokens/s (with its 95% interval
    over the passes) against the p95 time to first token, one point per level of the sweeps, labelled with
    its clients (x4) or offered rate (2/s)."""
    rows = [r for r in comparison.rows if r.served]
    if not rows:
        return None
    figure, ax = _figure()
    for row in rows:
        levels = [(f"x{k}", n) for k, n in sorted(row.served.items(), key=lambda item: int(item[0]))]
        levels += [(f"{k}/s", n) for k, n in sorted(row.served_rates.items(), key=lambda item: float(item[0]))]
        points = [(name, n) for name, n in levels if n.get("ttft_p95_ms") is not None]
        if not points:
            continue
        xs = [n["ttft_p95_ms"] for _, n in points]
        ys = [n["output_tps"] for _, n in points]
        low = [max(0.0, y - n.get("output_tps_low", y)) for y, (_, n) in zip(ys, points, strict=True)]
        high = [max(0.0, n.get("output_tps_high", y) - y) for y, (_, n) in zip(ys, points, strict=True)]
        line = ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=row.label)
        for x, y, (name, _) in zip(xs, ys, points, strict=True):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=line[0].get_color())  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("time to first token, p95 (ms)")
    ax.set_ylabel("output tokens/s through the server")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(figure)
