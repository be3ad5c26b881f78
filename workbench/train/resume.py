"""Where an interrupted training resumes: its last complete checkpoint, and whether unfinished work made under
one cache key may continue under another (a longer training, a library's patch upgrade)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from workbench.core.errors import StageFailed

if TYPE_CHECKING:
    from transformers import Trainer
    from transformers.trainer_utils import TrainOutput

    from workbench.train.callbacks import InterruptCallback


class Workspace(Protocol):
    """What resuming needs of the stage that trains (a stage's context is one)."""

    work: Path  # survives interruptions; checkpoints go to work/checkpoints
    rank: int | None  # the global rank when this is one of several training processes

    def say(self, message: str) -> None: ...

    def keep_aside(self, path: Path) -> Path: ...


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint. The Trainer writes trainer_state.json last, so a checkpoint a kill
    interrupted while it was being saved lacks it (or holds half of it) and is passed over."""
    numbered = (
        [p for p in folder.glob("checkpoint-*") if p.name.rsplit("-", 1)[-1].isdigit()] if folder.is_dir() else []
    )
    for path in sorted(numbered, key=lambda p: int(p.name.rsplit("-", 1)[-1]), reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return str(path)
    return None


def train_from_checkpoint(ctx: Workspace, trainer: Trainer, steps: int, interrupt_cb: InterruptCallback) -> TrainOutput:
    """`trainer.train()` from the last checkpoint in work/checkpoints, if any; an interrupt request saves a
    checkpoint after the current step and stops (`interrupt_cb.requested` says so). Returns the TrainOutput."""
    from workbench.train.callbacks import catch_interrupts
    from workbench.train.distributed import gathered

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
        return trainer.train(resume_from_checkpoint=resume)


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


def can_resume(resumable: frozenset[str], changes: list[tuple[str, Any, Any]]) -> bool:
    """Whether unfinished work made under another key may continue under this one: every change is a
    library's patch upgrade or one of the stage's `resumable` cache-key fields (dotted, under "inputs.")."""
    return all(
        (path.startswith("versions.") and same_minor(old, new)) or path.removeprefix("inputs.") in resumable
        for path, old, new in changes
    )
