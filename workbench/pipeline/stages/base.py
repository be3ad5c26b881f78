"""The stage contract: what a stage is (`Stage`), what it runs in (`StageContext`), its cache key, and how
it says it stopped on request (`StageInterrupted`) or that one of its parts failed (`failure_line`)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench import workers
from workbench.core import paths, safe
from workbench.core.errors import Interrupted, WorkbenchError
from workbench.core.recipe import Recipe
from workbench.core.records import Artifact
from workbench.core.store import Store
from workbench.train.resume import train_from_checkpoint

if TYPE_CHECKING:
    from _typeshed import DataclassInstance
    from transformers import Trainer
    from transformers.trainer_utils import TrainOutput

    from workbench.train.callbacks import InterruptCallback

KEYED_LIBRARIES = ("workbench", "torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate")


class StageInterrupted(Interrupted):
    """The stage stopped on request after saving what it can resume from."""


@dataclass
class StageContext:
    run_id: str
    run_dir: Path
    recipe: Recipe
    store: Store
    stage: str
    out: Path  # temporary folder; renamed into place when the stage succeeds
    work: Path  # survives interruptions (checkpoints); keyed by the stage's cache key
    inputs: dict[str, Path] = field(default_factory=dict)  # finished upstream stage folders
    failures: list[str] = field(default_factory=list)  # parts that failed while the rest finished
    rank: int | None = None  # the global rank when this is one of several training processes

    def event(self, kind: str, **data: Any) -> None:
        if not self.rank:  # the stage's own process, or rank 0: one writer per run
            self.store.add_event(self.run_id, self.stage, kind, data)

    def say(self, message: str) -> None:
        print(f"[{self.stage}] {safe.terminal_text(message)}", flush=True)
        self.event("message", text=message)

    def keep_aside(self, path: Path) -> Path:
        """Move unfinished work that cannot be used now to <run>/.work/kept/ (never deleted); returns where."""
        kept = self.run_dir / ".work" / "kept" / f"{path.name}-{uuid.uuid4().hex[:6]}"
        kept.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, kept)
        return kept

    def remove(self, path: Path) -> None:
        """Delete a file or folder of this run (anything outside the run folder is refused)."""
        paths.remove(path, self.run_dir)

    def log_path(self, name: str) -> Path:
        """Where a worker's output about `name` goes: <run>/logs/<stage>/<name>.log, kept after the stage."""
        return self.run_dir / "logs" / self.stage / f"{re.sub(r'[^A-Za-z0-9._+-]+', '_', name)}.log"

    def start_worker(
        self, task: str, job: DataclassInstance, *, name: str, log_name: str | None = None, **options: Any
    ) -> workers.Running:
        """A worker (see workbench.workers; same options) whose log is kept with the run; `job` is the task's
        job dataclass."""
        return workers.start(task, job, name=name, log=self.log_path(log_name or name), **options)

    def run_worker(self, task: str, job: DataclassInstance, **options: Any) -> workers.Outcome:
        """`start_worker` and wait for its outcome."""
        return self.start_worker(task, job, **options).wait()


@dataclass
class Stage:
    name: str
    needs: tuple[str, ...]
    key_inputs: Callable[[Recipe], dict[str, Any]]  # recipe sections and input hashes
    run: Callable[[StageContext], list[Artifact]]  # paths relative to the stage's folder
    # cache-key fields (dotted, under "inputs.") whose change still lets unfinished work resume
    resumable: frozenset[str] = frozenset()
    # whether a recipe has this stage at all (reward and tune only when their sections are there)
    wanted: Callable[[Recipe], bool] = lambda recipe: True


def library_versions() -> dict[str, str]:
    versions = {}
    for name in KEYED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def key_payload(stage: Stage, recipe: Recipe, upstream: dict[str, str]) -> dict[str, Any]:
    """Everything a stage's output depends on: its recipe sections and inputs, upstream keys, versions."""
    payload = {
        "stage": stage.name,
        "inputs": stage.key_inputs(recipe),
        "upstream": upstream,
        "versions": library_versions(),
    }
    return json.loads(json.dumps(payload, sort_keys=True, default=str))


def cache_key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def failure_line(name: str, exc: Exception) -> str:
    """One line naming what failed (a variant, a model): workers' errors already start with its name."""
    text = str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
    text = text.strip() or type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"


def train_resumably(ctx: StageContext, trainer: Trainer, steps: int, interrupt_cb: InterruptCallback) -> TrainOutput:
    """`trainer.train()` from the stage's last checkpoint (`train.resume`); an interrupt request saves a
    checkpoint after the current step and raises StageInterrupted. Returns the TrainOutput."""
    result = train_from_checkpoint(ctx, trainer, steps, interrupt_cb)
    if interrupt_cb.requested:
        raise StageInterrupted(f"stopped at step {trainer.state.global_step}; run again to resume")
    return result


def adapter_dir(run_dir: Path, recipe: Recipe) -> Path:
    """The adapter the run ships: the preference-tuned one when the recipe tunes, else the supervised one."""
    return run_dir / "tune" / "adapter" if recipe.tune else run_dir / "train"
