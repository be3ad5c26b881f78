"""The experiment trackers a training's Trainer reports to (the recipe's `tracking`): which, and where they
write."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from workbench.core.errors import ResourceError
from workbench.core.recipe import Recipe, TrackingSection


def tracking_env(tracking: TrackingSection, run_dir: Path, stage: str, name: str) -> dict[str, str]:
    """Where the Trainer's trackers write (their integrations read these variables): offline stores in
    <run>/tracking/ unless the recipe names a server. Refuses a tracker that is not installed."""
    missing = [tracker for tracker in tracking.report_to if importlib.util.find_spec(tracker) is None]
    if missing:
        raise ResourceError(
            f"tracking.report_to: {', '.join(missing)} is not installed (pip install {' '.join(missing)})"
        )
    folder = run_dir / "tracking"
    return {
        "TENSORBOARD_LOGGING_DIR": str(folder / "tensorboard" / stage),
        "MLFLOW_TRACKING_URI": tracking.mlflow_store(run_dir),
        "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3 keeps its file backend (the offline default) behind this
        "MLFLOW_EXPERIMENT_NAME": tracking.experiment or name,
        "WANDB_PROJECT": tracking.experiment or name,
        "WANDB_MODE": tracking.wandb_mode,
        "WANDB_DIR": str(folder),
    }


def trackers(recipe: Recipe, run_dir: Path, stage: str) -> list[str]:
    """The recipe's trackers for a stage's Trainer (its `report_to`), their destinations set in the
    environment (which several processes inherit)."""
    if not recipe.tracking.report_to:
        return []
    os.environ.update(tracking_env(recipe.tracking, run_dir, stage, recipe.name))
    return list(recipe.tracking.report_to)
