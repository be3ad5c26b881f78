"""A format plugin's exporter step in a worker (task `format.export`): the job names its format, and what
runs is that format's registered `worker_export`, never a function the job names."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.core import formats
from workbench.workers.child import Channel


@dataclass(frozen=True)
class FormatExportJob:
    format: str  # a registered format: its `worker_export` runs, as `(job, channel) -> dict | None`
    merged: Path  # the merged model's folder
    out: Path  # where the variant goes
    options: dict[str, Any] = field(default_factory=dict)  # the format's own settings (JSON)


@dataclass(frozen=True)
class FormatExportResult:
    details: dict[str, Any] = field(default_factory=dict)  # what the format's exporter returned (JSON)


def export_job(job: FormatExportJob, channel: Channel) -> FormatExportResult:
    spec = formats.spec(job.format)
    if spec.worker_export is None:
        raise formats.FormatError(f"format {spec.name!r} has no worker exporter")
    details = formats.resolve(spec.worker_export)(job, channel)
    return FormatExportResult(details or {})
