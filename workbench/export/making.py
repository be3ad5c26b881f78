"""What an exporter gets from the export stage (`ExportContext`, `ExportInputs`): the run's recipe and
folders, the inputs every exporter shares, workers whose logs are kept with the run, and the steps each
variant goes through there (`attempt`: one failure is recorded on the variant and the others go on;
`check`: serving parity and the smoke answers, in a worker).

An exporter is a format spec's `Exporter.run` (`workbench.core.formats`): it makes its variants, each
inside `ctx.attempt`, checks each with `ctx.check`, and returns them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from workbench import workers
from workbench.core import parity
from workbench.core.errors import StageFailed
from workbench.core.recipe import Recipe
from workbench.core.records import Variant

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class ExportFailed(StageFailed):
    """An exporter found its output unusable (no source to quantize from, a file missing)."""


@dataclass(frozen=True)
class Written:
    """What an exporting worker returns (`gguf.convert`, `nf4.export`, ...): nothing beyond the files its
    job named, which the exporter checks itself."""


@dataclass
class ExportInputs:
    """What every exporter needs, read once per stage."""

    merged: Variant
    tokenizer: Any  # the training tokenizer and chat template (saved with the merged model)
    smoke_prompts: list[list[dict[str, str]]]  # held-out conversations without their answers
    expected: parity.Expected  # held-out conversations as training rendered them, for the parity check
    data: Path  # the data stage's folder (train.jsonl: calibration rows)
    adapter: Path  # the LoRA adapter the run ships (adapter variants convert it)


class ExportContext(Protocol):
    @property
    def recipe(self) -> Recipe: ...

    @property
    def inputs(self) -> ExportInputs: ...

    @property
    def out(self) -> Path:
        """The stage's temporary folder: the variants' files go here."""

    @property
    def work(self) -> Path:
        """Kept across attempts of the stage: what is made only as a source (an f16 GGUF)."""

    @property
    def final(self) -> Path:
        """Where `out` is once the stage succeeds: what recorded paths and written commands name."""

    @property
    def cache(self) -> Path:
        """Kept across runs of the stage (within the run): what is keyed by its own inputs, such as an
        importance matrix, reused when the stage runs again with other settings."""

    @property
    def failures(self) -> list[str]:
        """Parts that failed while the stage went on (the stage ends partial)."""

    def say(self, message: str) -> None: ...

    def log_path(self, name: str) -> Path: ...

    def run_worker(self, task: str, job: DataclassInstance, **options: Any) -> workers.Outcome:
        """The task in a worker, its log kept with the run's (`job`: the task's job dataclass)."""

    def attempt(self, variant: Variant, build: Callable[[Variant], None]) -> Variant:
        """Run `build` on the variant and measure its size; its failure is recorded on the variant."""

    def made(self, outcome: workers.Outcome, output: Path) -> None:
        """An exporting worker's outcome: when it failed, what it left at `output` is removed and it raises."""

    def check(self, variant: Variant, smoke: bool = True) -> None:
        """Serving parity (and the smoke answers) of a made variant, recorded on it; raises when it fails."""


def record_measurement(variant: Variant, outcome: workers.Outcome, program_peak_mb: float | None = None) -> None:
    """The worker's time and peak memory on the variant; `program_peak_mb`: a program the worker ran (a
    llama.cpp tool), whose memory is not the worker's own."""
    peaks = [peak for peak in (outcome.peak_rss_mb, program_peak_mb) if peak is not None]
    variant.seconds, variant.peak_mem_mb = outcome.seconds, max(peaks) if peaks else None
