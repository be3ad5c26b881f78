"""What the TUI shows of a run, computed from the store (plain functions, testable without a terminal)."""

from __future__ import annotations

from typing import Any

from workbench.common import STAGE_ORDER
from workbench.store import StageRecord

MARKS = {"done": "✓", "partial": "~", "failed": "✗", "interrupted": "‖", "running": "…", "crashed": "!"}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def age(seconds: float) -> str:
    """Compact elapsed time: 42s, 5m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(0, int(seconds))}s"


def pipeline(stages: list[StageRecord], train: dict[str, Any] | None = None) -> str:
    """One line: each stage with its mark; the training stage with step/total while it runs."""
    by_name = {s.name: s for s in stages}
    parts = []
    for name in STAGE_ORDER:
        stage = by_name.get(name)
        if stage is None:
            parts.append(f"{name}·")
        elif name == "train" and stage.status == "running" and train:
            parts.append(f"train {train['step']}/{train['total_steps']}")
        else:
            parts.append(f"{name}{MARKS.get(stage.status, '?')}")
    return " ".join(parts)


ATTENTION = ("running", "crashed", "failed", "interrupted", "partial")


def marks(stages: list[StageRecord], train: dict[str, Any] | None = None) -> str:
    """The Runs table's narrow form: one mark per stage in pipeline order (· not run yet), then the stage
    that wants attention: the one running (training with step/total), else the first that did not finish."""
    by_name = {s.name: s for s in stages}
    line = "".join(MARKS.get(by_name[name].status, "?") if name in by_name else "·" for name in STAGE_ORDER)
    ordered = [by_name[name] for name in STAGE_ORDER if name in by_name]
    notable = next((s for s in ordered if s.status == "running"), None) or next(
        (s for s in ordered if s.status in ATTENTION), None
    )
    if notable is None:
        return line
    if notable.name == "train" and notable.status == "running" and train:
        return f"{line} train {train['step']}/{train['total_steps']}"
    return f"{line} {notable.name} {notable.status}"


def training_line(log: dict[str, Any] | None) -> str:
    if not log:
        return "training: no steps logged yet"
    parts = [f"step {log['step']}/{log['total_steps']}", f"loss {log['loss']:.4f}"]
    if log.get("learning_rate") is not None:
        parts.append(f"lr {log['learning_rate']:.2e}")
    if log.get("tokens_per_s"):
        parts.append(f"{log['tokens_per_s']:.0f} tok/s")
    if log.get("eta_s") is not None:
        parts.append(f"ETA {duration(log['eta_s'])}")
    return "training: " + " · ".join(parts)
