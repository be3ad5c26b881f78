"""Run a recipe's stages in order, skipping those whose cache key is unchanged."""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from typing import Any

from workbench.core.common import default_home  # noqa: F401 - part of the runner API
from workbench.core.errors import RunError
from workbench.core.fsutil import atomic_dir, atomic_write_text
from workbench.core.paths import check_name, remove
from workbench.core.recipe import Recipe
from workbench.core.store import Store
from workbench.eval.tasks import check_metric
from workbench.pipeline.runlock import RunLock
from workbench.pipeline.stages import STAGES, needs_of, stages_of
from workbench.pipeline.stages.base import StageContext, StageInterrupted, cache_key, key_payload
from workbench.train.resume import can_resume, differences

KEY_FILE = "key.json"  # in a stage's work folder: the key payload it was made under


def stages_to_run(recipe: Recipe, selected: list[str] | None) -> list[str]:
    """Stages to consider, in order: the selected ones and everything they need, of those the recipe has."""
    have = stages_of(recipe)
    if not selected:
        return have
    unknown = [name for name in selected if name not in have]
    if unknown:
        raise RunError(f"unknown stage(s) {', '.join(unknown)}; this recipe's stages are {', '.join(have)}")
    wanted: set[str] = set()
    pending = list(selected)
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending += needs_of(name, recipe)
    return [name for name in have if name in wanted]


def run_recipe(
    recipe: Recipe,
    home: Path,
    *,
    stages: list[str] | None = None,
    force: list[str] | None = None,
    run_id: str | None = None,
) -> str:
    """Run (or resume) a recipe; returns the run id. Raises StageInterrupted or RunError. Holds the run's
    lock throughout: a second worker for the same run is refused."""
    force = force or []
    names = stages_to_run(recipe, stages)
    bad_force = [name for name in force if name not in STAGES]
    if bad_force:
        raise RunError(f"--force: unknown stage(s) {', '.join(bad_force)}")
    run_id = check_name(run_id or recipe.name)
    with RunLock.held(home, run_id):
        _run(recipe, home, run_id, names, force)
    return run_id


def _run(recipe: Recipe, home: Path, run_id: str, names: list[str], force: list[str]) -> None:
    run_dir = home / run_id
    store = Store(home / "workbench.db")
    keys: dict[str, str] = {}
    redone: set[str] = set()  # stages run in this call; what needs them runs again too
    try:  # from the moment the run reads `running`, an interrupt is recorded as one
        recipe_path = str(recipe.source) if recipe.source else None
        store.upsert_run(run_id, recipe.name, recipe.model_dump(mode="json"), recipe_path, os.getpid())
        if "eval" in names:  # refused now, not after hours of training
            check_metric(recipe.eval.metric)
        for name in names:
            stage, needs = STAGES[name], needs_of(name, recipe)
            payload = key_payload(stage, recipe, {need: keys[need] for need in needs})
            key = keys[name] = cache_key(payload)
            out = run_dir / name
            record = store.stage(run_id, name)
            fresh = record and record.status == "done" and record.cache_key == key and out.exists()
            if fresh and name not in force and not redone.intersection(needs):
                print(f"[{name}] unchanged, skipped (cached)", flush=True)
                continue
            redone.add(name)
            inputs = {need: run_dir / need for need in needs}
            _run_stage(store, recipe, run_id, run_dir, name, payload, inputs)
        store.set_run_status(run_id, "done")
    except (StageInterrupted, KeyboardInterrupt):
        store.set_run_status(run_id, "interrupted")
        raise
    except BaseException:
        store.set_run_status(run_id, "failed")
        raise
    finally:
        store.close()


def work_folder(ctx: StageContext, payload: dict[str, Any]) -> None:
    """Prepare the stage's work folder (checkpoints and finished parts survive an interruption there).
    Unfinished work of an earlier attempt under another key is resumed when the change allows it (a
    longer training, a library's patch upgrade), else kept aside — never deleted."""
    stage, work = STAGES[ctx.stage], ctx.work
    for old in sorted(p for p in work.parent.glob(f"{ctx.stage}-*") if p != work and p.is_dir()):
        if not any(p.name != KEY_FILE for p in old.iterdir()):
            remove(old, ctx.run_dir)  # nothing in it worth keeping
            continue
        try:
            before = json.loads((old / KEY_FILE).read_text())
        except (OSError, ValueError):
            before = {}
        changes = differences(before, payload)
        said = ", ".join(f"{path.removeprefix('inputs.')}: {a!r} -> {b!r}" for path, a, b in changes[:4]) or "?"
        if before and not work.exists() and can_resume(stage.resumable, changes):
            os.rename(old, work)
            ctx.say(f"continuing the unfinished work of an earlier attempt ({said})")
            continue
        kept = ctx.keep_aside(old)
        ctx.say(
            f"the unfinished work of an earlier attempt cannot continue under this configuration ({said}); "
            f"kept in {kept} — delete it when no longer needed"
        )
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / KEY_FILE, json.dumps(payload, indent=1))


def _run_stage(
    store: Store,
    recipe: Recipe,
    run_id: str,
    run_dir: Path,
    name: str,
    payload: dict[str, Any],
    inputs: dict[str, Path],
) -> None:
    key = cache_key(payload)
    out = run_dir / name
    for leftover in run_dir.glob(f".tmp-{name}-*"):  # output of a process that was killed mid-stage
        remove(leftover, run_dir)
    remove(run_dir / "logs" / name, run_dir)  # worker logs of an earlier attempt
    store.start_stage(run_id, name, key)
    try:
        with atomic_dir(out, root=run_dir) as tmp:
            ctx = StageContext(
                run_id, run_dir, recipe, store, name, tmp, run_dir / ".work" / f"{name}-{key[:12]}", inputs
            )
            work_folder(ctx, payload)
            artifacts = STAGES[name].run(ctx)
    except (StageInterrupted, KeyboardInterrupt) as exc:
        store.finish_stage(run_id, name, "interrupted", str(exc) or "interrupted")
        raise
    except BaseException as exc:
        store.finish_stage(run_id, name, "failed", "".join(traceback.format_exception_only(exc)).strip())
        raise
    for item in artifacts:
        item.path = str((out / item.path).resolve())
    store.replace_artifacts(run_id, name, artifacts)
    # a partial stage keeps its output for what comes next but is redone on the next run
    store.finish_stage(run_id, name, "partial" if ctx.failures else "done", "; ".join(ctx.failures) or None)
    remove(ctx.work, run_dir)
