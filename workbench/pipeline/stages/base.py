"""What every stage shares: its context, cache key and the interrupt signal."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from workbench import workers
from workbench.core import paths, safe
from workbench.core.errors import Interrupted, StageFailed, WorkbenchError
from workbench.core.recipe import Recipe, RowsSection
from workbench.core.records import Artifact
from workbench.core.store import Store
from workbench.data.dataset import LoadedData, load_checked, split_rows

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
        self, task: str, job: dict[str, Any], *, name: str, log_name: str | None = None, **options: Any
    ) -> workers.Running:
        """A worker (see workbench.workers; same options) whose log is kept with the run."""
        return workers.start(task, job, name=name, log=self.log_path(log_name or name), **options)

    def run_worker(self, task: str, job: dict[str, Any], **options: Any) -> workers.Outcome:
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


def differences(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted path, old, new) for every leaf that differs between two key payloads."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found += differences(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return found
    return [] if old == new else [(path, old, new)]


def same_minor(old: Any, new: Any) -> bool:
    """A patch upgrade (1.16.0 -> 1.16.2) and nothing more."""
    return isinstance(old, str) and isinstance(new, str) and old.split(".")[:2] == new.split(".")[:2]


def can_resume(stage: Stage, changes: list[tuple[str, Any, Any]]) -> bool:
    """Whether unfinished work made under another key may continue under this one."""
    return all(
        (path.startswith("versions.") and same_minor(old, new)) or path.removeprefix("inputs.") in stage.resumable
        for path, old, new in changes
    )


def failure_line(name: str, exc: Exception) -> str:
    """One line naming what failed (a variant, a model): workers' errors already start with its name."""
    text = str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
    text = text.strip() or type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"


def train_resumably(ctx: StageContext, trainer: Any, steps: int, interrupt_cb: Any) -> Any:
    """`trainer.train()` from the stage's last checkpoint (work/checkpoints), if any; an interrupt request
    saves a checkpoint after the current step and raises StageInterrupted. Returns the TrainOutput."""
    from workbench.train.callbacks import catch_interrupts
    from workbench.train.distributed import gathered
    from workbench.train.loop import last_checkpoint

    resume = last_checkpoint(ctx.work / "checkpoints")
    if resume and int(resume.rsplit("-", 1)[-1]) >= steps:  # past the length asked for now
        if ctx.rank is None or os.environ.get("LOCAL_RANK", "0") == "0":  # one mover per machine
            kept = ctx.keep_aside(ctx.work / "checkpoints")
            ctx.say(f"{Path(resume).name} is past the {steps} steps asked for; training from the start ({kept} kept)")
        resume = None
    seen = gathered(Path(resume).name if resume else None)  # also: every rank past that point before any trains
    if len(set(seen)) > 1:
        found = ", ".join(f"rank {rank}: {name or 'none'}" for rank, name in enumerate(seen))
        raise StageFailed(f"the ranks would resume from different checkpoints ({found}); each machine needs the same")
    if resume:
        ctx.say(f"resuming from {Path(resume).name}")
    # several processes stop through the stop file; a SIGTERM (the launcher's, a rank died) ends a rank
    guard = catch_interrupts(interrupt_cb) if ctx.rank is None else contextlib.nullcontext()
    with guard:
        result = trainer.train(resume_from_checkpoint=resume)
    if interrupt_cb.requested:
        raise StageInterrupted(f"stopped at step {trainer.state.global_step}; run again to resume")
    return result


def trackers(ctx: StageContext) -> list[str]:
    """The recipe's trackers for this stage's Trainer, their destinations set in the environment (which
    several processes inherit)."""
    from workbench.train.loop import tracking_env

    if not ctx.recipe.tracking.report_to:
        return []
    os.environ.update(tracking_env(ctx.recipe.tracking, ctx.run_dir, ctx.stage, ctx.recipe.name))
    return list(ctx.recipe.tracking.report_to)


def adapter_dir(run_dir: Path, recipe: Recipe) -> Path:
    """The adapter the run ships: the preference-tuned one when the recipe tunes, else the supervised one."""
    return run_dir / "tune" / "adapter" if recipe.tune else run_dir / "train"


def checked_split(
    ctx: StageContext, section: RowsSection, tokenizer: Any, field: str
) -> tuple[LoadedData, list[dict[str, Any]], list[dict[str, Any]]]:
    """A tuning data file (`field`) read and checked like the data stage's (the supervised data's system
    prompt unless it has its own), its tolerated bad rows said, split; rows carry their number."""
    path = ctx.recipe.resolve_path(section.path)
    data, _ = load_checked(path, section, tokenizer, field, section.system_prompt or ctx.recipe.data.system_prompt)
    for info in data.bad:
        ctx.say(f"bad {info} (tolerated, {field}.max_bad_rows={section.max_bad_rows})")
    train, held_out = split_rows(data.rows, section.held_out, section.split_seed)
    ctx.say(f"{field}: {data.format}, {len(train)} train / {len(held_out)} held-out rows, {len(data.bad)} bad")
    return data, [{"number": n, **row} for n, row in train], [{"number": n, **row} for n, row in held_out]
