"""Light pieces of the engine that the command line and the TUI need before anything heavy loads."""

from __future__ import annotations

import os
from pathlib import Path


class RunError(Exception):
    """A run cannot start or go on, for a reason the user can fix."""


def default_home() -> Path:
    return Path(os.environ.get("WORKBENCH_HOME", "runs"))
