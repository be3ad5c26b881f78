"""What the TUI and `workbench show` show of a run, computed from the store (plain functions, testable without
a terminal)."""

from __future__ import annotations

import json
from typing import Any

from workbench.core.common import OPTIONAL_STAGES, STAGE_ORDER
from workbench.core.records import StageRecord, TrainLog

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


def shown(by_name: dict[str, StageRecord]) -> list[str]:
    """The stages a run's progress lists: every stage, and the optional ones (tune, reward) it has."""
    return [name for name in STAGE_ORDER if name not in OPTIONAL_STAGES or name in by_name]


def pipeline(stages: list[StageRecord], train: TrainLog | None = None) -> str:
    """One line: each stage with its mark; a training stage with step/total while it runs."""
    by_name = {s.name: s for s in stages}
    parts = []
    for name in shown(by_name):
        stage = by_name.get(name)
        if stage is None:
            parts.append(f"{name}·")
        elif name in TRAINING and stage.status == "running" and train:
            parts.append(f"{name} {train.step}/{train.total_steps}")
        else:
            parts.append(f"{name}{MARKS.get(stage.status, '?')}")
    return " ".join(parts)


TRAINING = ("train", "reward", "tune")  # stages that log train_log events
ATTENTION = ("running", "crashed", "failed", "interrupted", "partial")


def marks(stages: list[StageRecord], train: TrainLog | None = None) -> str:
    """The Runs table's narrow form: one mark per stage in pipeline order (· not run yet), then the stage
    that wants attention: the one running (training with step/total), else the first that did not finish."""
    by_name = {s.name: s for s in stages}
    line = "".join(MARKS.get(by_name[name].status, "?") if name in by_name else "·" for name in shown(by_name))
    ordered = [by_name[name] for name in STAGE_ORDER if name in by_name]
    notable = next((s for s in ordered if s.status == "running"), None) or next(
        (s for s in ordered if s.status in ATTENTION), None
    )
    if notable is None:
        return line
    if notable.name in TRAINING and notable.status == "running" and train:
        return f"{line} {notable.name} {train.step}/{train.total_steps}"
    return f"{line} {notable.name} {notable.status}"


# the objective's numbers worth a glance, by stage, in order of preference (the first two its logs have):
# DPO / ORPO / KTO log rewards/margins and rewards/accuracies (KTO: kl), GRPO / RLOO reward and kl, a reward
# model accuracy and margin
HEADLINE = {
    "tune": ("rewards/margins", "rewards/accuracies", "reward", "kl"),
    "reward": ("accuracy", "margin", "mean_reward"),
}
SHORT = {"rewards/margins": "margin", "rewards/accuracies": "acc", "accuracy": "acc", "mean_reward": "reward"}


def headline_keys(stage: str, logs: list[TrainLog]) -> list[str]:
    """The objective's headline metrics among a training stage's logs (none for supervised training)."""
    have = {key for log in logs for key in log.metrics}
    return [key for key in HEADLINE.get(stage, ()) if key in have][:2]


def figure(value: float) -> str:
    """A metric in a few characters: 0.42, 1.35, 0.0012."""
    return f"{value:.2f}" if value == 0 or abs(value) >= 0.01 else f"{value:.2g}"


def training_stage(stages: list[StageRecord], logs: dict[str, list[TrainLog]]) -> str | None:
    """The training stage to follow: the one running, else the last one that logged."""
    running = next((s.name for s in stages if s.name in TRAINING and s.status == "running"), None)
    if running:
        return running
    logged = [name for name in TRAINING if logs.get(name)]
    return max(logged, key=lambda name: logs[name][-1].id) if logged else None


def run_recipe(text: str | None) -> dict[str, Any]:
    """The recipe a run stored (JSON), or {} when it cannot be read."""
    try:
        recipe = json.loads(text or "{}")
    except ValueError:
        return {}
    return recipe if isinstance(recipe, dict) else {}


def stage_label(stage: str, recipe: dict[str, Any] | None) -> str:
    """`tune (dpo)`: a training stage with the objective the recipe tunes by."""
    tune = (recipe or {}).get("tune") if stage == "tune" else None
    objective = tune.get("objective") if isinstance(tune, dict) else None
    return f"{stage} ({objective})" if objective else stage


def training_line(log: TrainLog | None, label: str | None = None) -> str:
    """The last training log in one line: `training: step ...` for supervised training, `tune (dpo) step ...
    · margin 0.42 · acc 0.88` with the objective's headline metrics for the other training stages."""
    stage = (log.stage if log else "") or (label or "train").split()[0]
    label = label or stage
    if not log:
        return f"{'training' if stage == 'train' else label}: no steps logged yet"
    parts = [f"step {log.step}/{log.total_steps}", f"loss {log.loss:.4f}"]
    parts += [f"{SHORT.get(key, key)} {figure(log.metrics[key])}" for key in headline_keys(stage, [log])]
    if log.learning_rate is not None:
        parts.append(f"lr {log.learning_rate:.2e}")
    if log.tokens_per_s:
        parts.append(f"{log.tokens_per_s:.0f} tok/s")
    if log.eta_s is not None:
        parts.append(f"ETA {duration(log.eta_s)}")
    return ("training: " if stage == "train" else f"{label} ") + " · ".join(parts)
