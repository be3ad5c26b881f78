"""The report in the team's experiment tracker: the comparison table's numbers as a tracker run's metrics,
the recommendations as its tags, the report files as its artifacts (MLflow, W&B; the recipe's `tracking`)."""

from __future__ import annotations

import csv
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from workbench.core.common import flat
from workbench.core.recipe import TrackingSection

NUMBERS = ("score", "delta", "keep_pct", "size_mb", "bits", "kld", "top1")


def comparison_metrics(comparison: dict[str, Any]) -> dict[str, float]:
    """`<model label>/<column>` for every number in the comparison table (speeds and probes included)."""
    metrics: dict[str, float] = {}
    for row in comparison["rows"]:
        label = row.get("label") or row["name"]
        values = {key: row.get(key) for key in NUMBERS}
        values.update({f"speed.{k}": v for k, v in flat(row.get("speed") or {}).items()})
        values.update({f"probe.{k}": v for k, v in (row.get("probes") or {}).items()})
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[_key(f"{label}/{key}")] = float(value)
    return metrics


def recommendation_tags(comparison: dict[str, Any]) -> dict[str, str]:
    return {
        _key(f"recommended.{item['target']}"): f"{item['variant']}: {item['reason']}"[:5000]
        for item in comparison.get("recommendations", [])
    }


def _key(name: str) -> str:
    """A metric or tag name both trackers accept (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]+", "_", name)[:250]


def log_report(tracking: TrackingSection, run_id: str, run_dir: Path, report_dir: Path, name: str) -> list[str]:
    """Log the report to each configured tracker that takes runs (MLflow, W&B); returns what it logged to.
    A tracker that fails raises; the report stage records it and keeps the report."""
    results = json.loads((report_dir / "results.json").read_text())
    metrics = comparison_metrics(results["comparison"])
    tags = {"workbench.run": run_id, **recommendation_tags(results["comparison"])}
    experiment = tracking.experiment or name
    done = []
    if "mlflow" in tracking.report_to:
        uri = tracking.mlflow_store(run_dir)
        logged = _mlflow(uri, experiment, run_id, metrics, tags, report_dir)
        done.append(f"MLflow {uri}, experiment {experiment}, run {logged}")
    if "wandb" in tracking.report_to:
        logged = _wandb(tracking, experiment, run_id, run_dir, metrics, tags, report_dir)
        done.append(f"W&B project {experiment} ({tracking.wandb_mode}), run {logged}")
    return done


def _mlflow(uri: str, experiment: str, run_id: str, metrics: dict, tags: dict, report_dir: Path) -> str:
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file backend behind this
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name=f"{run_id}/report", tags=tags)
    now = int(time.time() * 1000)
    items = [Metric(key, value, now, 0) for key, value in metrics.items()]
    for start in range(0, len(items), 1000):  # MLflow takes up to 1000 metrics a call
        client.log_batch(run.info.run_id, metrics=items[start : start + 1000])
    client.log_batch(run.info.run_id, tags=[RunTag("mlflow.note.content", _note(tags))])
    client.log_artifacts(run.info.run_id, str(report_dir), "report")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _wandb(
    tracking: TrackingSection, project: str, run_id: str, run_dir: Path, metrics: dict, tags: dict, report_dir: Path
) -> str:
    import wandb

    folder = run_dir / "tracking"
    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, name=f"{run_id}/report", mode=tracking.wandb_mode, dir=str(folder))
    try:
        run.summary.update({**metrics, **tags})
        with open(report_dir / "comparison.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        if rows:
            header: list[str | int] = list(rows[0])
            run.log({"comparison": wandb.Table(columns=header, data=rows[1:])})
        files = wandb.Artifact(f"{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)}-report", type="report")
        files.add_dir(str(report_dir))
        run.log_artifact(files)
        return str(run.id)
    finally:
        run.finish()


def _note(tags: dict[str, str]) -> str:
    """The recommendations as the run's description (MLflow shows it above the metrics)."""
    chosen = {key.removeprefix("recommended."): value for key, value in tags.items() if key.startswith("recommended.")}
    return "\n".join(f"- **{target}**: {value}" for target, value in chosen.items())
