"""A sweep: one recipe run once per combination of varied fields (`--vary train.method=lora,qlora
--vary train.qat.target=none,q4_0`), each combination its own run with a systematic name, one after
another, then compared side by side. Every combination's recipe is validated before anything starts; a
failing run is reported and the others still run; runs that would make the same data stage share it."""

from __future__ import annotations

import itertools
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workbench.core.errors import InputError, Interrupted
from workbench.core.fsutil import atomic_dir
from workbench.core.paths import check_name
from workbench.core.recipe import Recipe, RecipeError, load_recipe
from workbench.core.store import Store
from workbench.pipeline.runlock import RunLock
from workbench.pipeline.stages import STAGES
from workbench.pipeline.stages.base import cache_key, key_payload

SHAREABLE = ("data",)  # stages that need nothing upstream: the same key means the same output


@dataclass(frozen=True)
class Combination:
    run_id: str
    values: tuple[tuple[str, str], ...]  # (dotted field, value) the sweep set for this run
    overrides: tuple[str, ...]  # every --set, the sweep's own first

    def describe(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.values)


def parse_vary(items: list[str]) -> list[tuple[str, list[str]]]:
    """`KEY=V1,V2,...` -> (KEY, [V1, V2, ...]); each key once, each with two or more values."""
    found: list[tuple[str, list[str]]] = []
    problems = []
    for item in items:
        key, sep, raw = item.partition("=")
        values = [value.strip() for value in raw.split(",") if value.strip()]
        if not sep or not key or not values:
            problems.append(f"--vary {item!r}: expected KEY=VALUE,VALUE, e.g. train.method=lora,qlora")
        elif any(key == known for known, _ in found):
            problems.append(f"--vary {key}: given twice; list every value once")
        elif len(set(values)) != len(values):
            problems.append(f"--vary {key}: a value is listed twice")
        else:
            found.append((key, values))
    if problems or not found:
        raise InputError("; ".join(problems) or "a sweep needs at least one --vary KEY=VALUE,VALUE")
    return found


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def combinations(name: str, varied: list[tuple[str, list[str]]], sets: list[str]) -> list[Combination]:
    """Every combination, named `<recipe>-<field>-<value>...` after the last part of each varied field
    (the whole dotted path where two fields end alike)."""
    lasts = [key.rsplit(".", 1)[-1] for key, _ in varied]
    labels = [last if lasts.count(last) == 1 else key for (key, _), last in zip(varied, lasts, strict=True)]
    found = []
    for values in itertools.product(*(values for _, values in varied)):
        pairs = tuple((key, value) for (key, _), value in zip(varied, values, strict=True))
        parts = [f"{_slug(label)}-{_slug(value)}" for label, value in zip(labels, values, strict=True)]
        run_id = check_name(f"{name}-{'-'.join(parts)}")
        found.append(Combination(run_id, pairs, (*sets, *(f"{key}={value}" for key, value in pairs))))
    return found


def load_all(recipe_path: Path, combos: list[Combination]) -> list[Recipe]:
    """Every combination's recipe, or one error listing each combination that cannot be run."""
    recipes, problems = [], []
    for combo in combos:
        try:
            recipes.append(load_recipe(recipe_path, list(combo.overrides)))
        except RecipeError as exc:
            problems += [f"{combo.run_id} ({combo.describe()}): {problem}" for problem in exc.problems]
    if problems:
        raise RecipeError(str(recipe_path), problems)
    return recipes


def share_stages(store: Store, home: Path, recipe: Recipe, run_id: str, done: list[str]) -> list[str]:
    """Give `run_id` the shareable stages an earlier run of the sweep made under the same key (hard links:
    no second copy on disk); the runner then finds them fresh. Returns the stages shared."""
    shared = []
    for name in SHAREABLE:
        key = cache_key(key_payload(STAGES[name], recipe, {}))
        mine = store.stage(run_id, name)
        if mine and mine.status == "done" and mine.cache_key == key and (home / run_id / name).exists():
            continue
        for other in done:
            record = store.stage(other, name)
            source = home / other / name
            if record and record.status == "done" and record.cache_key == key and source.is_dir():
                run_dir = home / run_id
                run_dir.mkdir(parents=True, exist_ok=True)
                with atomic_dir(run_dir / name, root=run_dir) as tmp:
                    shutil.copytree(source, tmp, copy_function=os.link, dirs_exist_ok=True)
                store.upsert_run(run_id, recipe.name, recipe.model_dump(mode="json"), str(recipe.source), os.getpid())
                store.start_stage(run_id, name, key)
                artifacts = [item for item in store.artifacts(other) if item.stage == name]
                for item in artifacts:
                    item.path = str(run_dir / name / Path(item.path).relative_to(source.resolve()))
                store.replace_artifacts(run_id, name, artifacts)
                store.finish_stage(run_id, name, "done")
                shared.append(name)
                break
    return shared


def run_sweep(
    combos: list[Combination],
    recipes: list[Recipe],
    home: Path,
    run_one: Callable[[Recipe, str], None],
) -> dict[str, str | None]:
    """Run each combination with `run_one(recipe, run_id)`; run id -> None when it finished, else the
    error. A failure is reported and the sweep goes on; an interrupt ends it."""
    outcome: dict[str, str | None] = {}
    store = Store(home / "workbench.db")
    try:
        for number, (combo, recipe) in enumerate(zip(combos, recipes, strict=True), start=1):
            print(f"=== sweep {number}/{len(combos)}: {combo.run_id} ({combo.describe()})", flush=True)
            done = [run for run, error in outcome.items() if error is None]
            try:
                with RunLock.held(home, combo.run_id):
                    shared = share_stages(store, home, recipe, combo.run_id, done)
                    if shared:
                        print(f"[{', '.join(shared)}] shared with an earlier run of the sweep", flush=True)
                    run_one(recipe, combo.run_id)
                outcome[combo.run_id] = None
            except Interrupted:  # a cancel (or Ctrl-C) stops the sweep, not only its current run
                raise
            except Exception as exc:  # noqa: BLE001 - one failing run never stops the sweep
                outcome[combo.run_id] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                print(f"=== {combo.run_id} FAILED: {outcome[combo.run_id]}", flush=True)
    finally:
        store.close()
    return outcome
