"""Light pieces of the engine that the command line and the TUI need before anything heavy loads."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workbench.core.safe import terminal_text

_TYPE_ADAPTERS: dict[Any, Any] = {}


def type_adapter(kind: Any) -> Any:
    """pydantic's TypeAdapter for `kind`, made once: how the store's JSON columns and the workers' jobs and
    results are checked against their records."""
    if kind not in _TYPE_ADAPTERS:
        from pydantic import TypeAdapter  # not at import: the TUI reads the store and starts in under a second

        _TYPE_ADAPTERS[kind] = TypeAdapter(kind)
    return _TYPE_ADAPTERS[kind]


# how every child Python starts: -P keeps the folder it is started in off sys.path, so a json.py or
# torch.py lying where the user runs a command is never imported
PYTHON = [sys.executable, "-P"]


def child_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of a child process: `base` (this process's by default) and `extra`, with
    PYTHONSAFEPATH=1, which does for every Python below the child what -P does for the child itself
    (torchrun starts training ranks as `python -u -m ...`, without -P)."""
    return {**(os.environ if base is None else base), **extra, "PYTHONSAFEPATH": "1"}


# stage names in the order they run (the stages themselves live in workbench.pipeline.stages, which loads torch)
STAGE_ORDER = ["data", "train", "reward", "tune", "merge", "export", "eval", "bench", "report"]
# stages only recipes with the matching section have (reward_model, tune)
OPTIONAL_STAGES = frozenset({"reward", "tune"})


def default_home() -> Path:
    return Path(os.environ.get("WORKBENCH_HOME", "runs"))


def make_home(home: Path) -> Path:
    """The runs home, created for its owner only (0700): runs, logs and server keys are nobody else's.
    An existing folder keeps its mode (a home shared on purpose stays shared)."""
    Path(home).mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(home)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on at `host` now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one, their keys joined with dots."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def last_line(text: str, fallback: str) -> str:
    """The last non-empty line of a process's output (usually the error), or `fallback`."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else fallback


def tail(path: Path, lines: int = 200) -> list[str]:
    """The last lines of a log file, carriage-return progress bars reduced to their latest state and
    nothing left that a terminal would act on (logs hold tool and model output)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [terminal_text(line.rsplit("\r", 1)[-1]) for line in text.splitlines()[-lines:]]
