"""Run a recipe's stages in order, skipping those whose cache key is unchanged."""

from __future__ import annotations

import os
import shutil
import traceback
from pathlib import Path

from workbench.common import RunError, default_home  # noqa: F401 - part of the runner API
from workbench.fsutil import atomic_dir
from workbench.recipe import Recipe
from workbench.stages import STAGE_ORDER, STAGES
from workbench.stages.base import StageContext, StageInterrupted, cache_key
from workbench.store import Store


def plan(selected: list[str] | None) -> list[str]:
    """Stages to consider, in order: the selected ones and everything they need."""
    if not selected:
        return list(STAGE_ORDER)
    unknown = [name for name in selected if name not in STAGES]
    if unknown:
        raise RunError(f"unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGE_ORDER)}")
    wanted: set[str] = set()
    pending = list(selected)
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending += STAGES[name].needs
    return [name for name in STAGE_ORDER if name in wanted]


def run_recipe(
    recipe: Recipe,
    home: Path,
    *,
    stages: list[str] | None = None,
    force: list[str] | None = None,
    run_id: str | None = None,
) -> str:
    """Run (or resume) a recipe; returns the run id. Raises StageInterrupted or RunError."""
    force = force or []
    names = plan(stages)
    bad_force = [name for name in force if name not in STAGES]
    if bad_force:
        raise RunError(f"--force: unknown stage(s) {', '.join(bad_force)}")
    run_id = run_id or recipe.name
    run_dir = home / run_id
    store = Store(home / "workbench.db")
    store.upsert_run(
        run_id, recipe.name, recipe.model_dump(mode="json"), str(recipe.source) if recipe.source else None, os.getpid()
    )
    keys: dict[str, str] = {}
    redone: set[str] = set()  # stages run in this call; what needs them runs again too
    try:
        for name in names:
            stage = STAGES[name]
            key = cache_key(stage, recipe, {need: keys[need] for need in stage.needs})
            keys[name] = key
            out = run_dir / name
            record = store.stage(run_id, name)
            fresh = record and record.status == "done" and record.cache_key == key and out.exists()
            if fresh and name not in force and not redone.intersection(stage.needs):
                print(f"[{name}] unchanged, skipped (cached)", flush=True)
                continue
            redone.add(name)
            _run_stage(store, recipe, run_id, run_dir, name, key, {need: run_dir / need for need in stage.needs})
        store.set_run_status(run_id, "done")
    except (StageInterrupted, KeyboardInterrupt):
        store.set_run_status(run_id, "interrupted")
        raise
    except BaseException:
        store.set_run_status(run_id, "failed")
        raise
    finally:
        store.close()
    return run_id


def _run_stage(
    store: Store, recipe: Recipe, run_id: str, run_dir: Path, name: str, key: str, inputs: dict[str, Path]
) -> None:
    out = run_dir / name
    work = run_dir / ".work" / f"{name}-{key[:12]}"
    for stale in (run_dir / ".work").glob(f"{name}-*"):
        if stale != work:  # state of an earlier, different configuration cannot be resumed
            shutil.rmtree(stale, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    for leftover in run_dir.glob(f".tmp-{name}-*"):  # output of a process that was killed mid-stage
        shutil.rmtree(leftover, ignore_errors=True)
    store.start_stage(run_id, name, key)
    try:
        with atomic_dir(out) as tmp:
            ctx = StageContext(run_id, run_dir, recipe, store, name, tmp, work, inputs)
            artifacts = STAGES[name].run(ctx)
    except (StageInterrupted, KeyboardInterrupt) as exc:
        store.finish_stage(run_id, name, "interrupted", str(exc) or "interrupted")
        raise
    except BaseException as exc:
        store.finish_stage(run_id, name, "failed", "".join(traceback.format_exception_only(exc)).strip())
        raise
    for item in artifacts:
        item["path"] = str((out / item["path"]).resolve())
    store.replace_artifacts(run_id, name, artifacts)
    # a partial stage keeps its output for what comes next but is redone on the next run
    store.finish_stage(run_id, name, "partial" if ctx.failures else "done", "; ".join(ctx.failures) or None)
    shutil.rmtree(work, ignore_errors=True)
