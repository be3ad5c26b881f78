"""What every stage shares: its context, cache key and the interrupt signal."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from workbench.recipe import Recipe
from workbench.store import Store

KEYED_LIBRARIES = ("workbench", "torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate")


class StageInterrupted(Exception):
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

    def event(self, kind: str, **data: Any) -> None:
        self.store.add_event(self.run_id, self.stage, kind, data)

    def say(self, message: str) -> None:
        print(f"[{self.stage}] {message}", flush=True)
        self.event("message", text=message)


@dataclass
class Stage:
    name: str
    needs: tuple[str, ...]
    key_inputs: Callable[[Recipe], dict[str, Any]]  # recipe sections and input hashes
    run: Callable[[StageContext], list[dict[str, Any]]]  # returns artifacts (paths relative to out)


def library_versions() -> dict[str, str]:
    versions = {}
    for name in KEYED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def cache_key(stage: Stage, recipe: Recipe, upstream: dict[str, str]) -> str:
    payload = {
        "stage": stage.name,
        "inputs": stage.key_inputs(recipe),
        "upstream": upstream,
        "versions": library_versions(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
