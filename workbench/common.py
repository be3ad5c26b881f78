"""Light pieces of the engine that the command line and the TUI need before anything heavy loads."""

from __future__ import annotations

import os
from pathlib import Path


class RunError(Exception):
    """A run cannot start or go on, for a reason the user can fix."""


# stage names in the order they run (the stages themselves live in workbench.stages, which loads torch)
STAGE_ORDER = ["data", "train", "merge", "export", "eval", "bench", "report"]


def default_home() -> Path:
    return Path(os.environ.get("WORKBENCH_HOME", "runs"))


def last_line(text: str, fallback: str) -> str:
    """The last non-empty line of a process's output (usually the error), or `fallback`."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else fallback
