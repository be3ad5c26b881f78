"""Names that become paths, and the one rule for what the workbench may delete or replace: only what
lies inside its own folders (the runs home, the models folder, its caches)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from workbench.errors import InputError, RunError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100 characters"
_NAME = re.compile(NAME_PATTERN)


class BadName(InputError, ValueError):
    """A run name that cannot be a folder name of its own."""


class OutsideError(RunError):
    """A path the workbench was about to delete or replace lies outside the folder it owns."""


def check_name(value: str, what: str = "run name") -> str:
    """`value` when it is a plain name (it becomes one folder under the runs home); else a clear error."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise BadName(f"{what} {value!r}: use {NAME_RULE} (no '/', not '.' or '..')")
    return value


def inside(path: Path, root: Path) -> Path:
    """`path` when it resolves strictly inside `root` (symbolic links followed); else refused."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved == base or not resolved.is_relative_to(base):
        raise OutsideError(f"refusing to delete or replace {path}: it is not inside {root}")
    return Path(path)


def remove(path: Path, root: Path) -> None:
    """Delete a file or folder that lies inside `root`; a missing one is fine."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink():  # the link itself, never what it points to
        if not path.parent.resolve().is_relative_to(Path(root).resolve()):
            raise OutsideError(f"refusing to delete {path}: it is not inside {root}")
        path.unlink()
        return
    inside(path, root)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
