"""Names that become paths, and the one rule for what the workbench may delete or replace: only what
lies inside its own folders (the runs home, the models folder, its caches)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from workbench.core.errors import InputError, RunError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100 characters"
_NAME = re.compile(NAME_PATTERN)
# the task files and texts that ship with the workbench (lm-eval YAMLs, the generic calibration text)
BUILTIN_EVALS = Path(__file__).resolve().parents[2] / "evals"
# what the workbench keeps beside the run folders in the runs home: the store and SQLite's side files
# (-wal, -shm, -journal), job scripts, logs, the other machines' homes of a multi-machine run. Compared
# without case: on a file system that folds case, `Slurm` is `slurm`.
RESERVED = ("workbench.db*", "slurm", "sweeps", "pulls", "doctor", "node<K>")
_RESERVED = re.compile(r"workbench\.db.*|slurm|sweeps|pulls|doctor|node[0-9]+", re.IGNORECASE)


class BadName(InputError, ValueError):
    """A run name that cannot be a folder name of its own."""


class OutsideError(RunError):
    """A path the workbench was about to delete or replace lies outside the folder it owns."""


def check_name(value: str, what: str = "run name") -> str:
    """`value` when it is a plain name (it becomes one folder under the runs home); else a clear error."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise BadName(f"{what} {value!r}: use {NAME_RULE} (no '/', not '.' or '..')")
    if _RESERVED.fullmatch(value):
        raise BadName(
            f"{what} {value!r}: the workbench keeps its own files under that name in the runs home"
            f" (reserved, in any case: {', '.join(RESERVED)}); choose another"
        )
    return value


def run_folder(home: Path, run_id: str) -> Path:
    """`<home>/<run_id>`, the way from a run's name to its folder. The runs home may be a link (to a bigger
    disk); the run folder may not be one, nor hold one (outside the trackers' own `tracking/` folder, which
    the workbench neither writes nor deletes in), nor resolve anywhere but directly inside the resolved runs
    home — what the workbench writes, deletes or replaces in it must stay there."""
    folder = Path(home) / check_name(run_id)
    if folder.is_symlink() or (folder.exists() and folder.resolve() != Path(home).resolve() / run_id):
        raise OutsideError(
            f"run folder {folder} is a symbolic link or lies outside the runs home; a run's folder must be a"
            " folder of its own in the runs home — remove the link"
        )
    link = _first_link(folder)
    if link is not None:
        raise OutsideError(
            f"{link} is a symbolic link; nothing in a run folder may be one (the run would write or delete"
            " where it points) — remove it"
        )
    return folder


def no_follow(path: str, flags: int) -> int:
    """An `opener` for open(): a symbolic link in the file's place fails (ELOOP) instead of being followed."""
    return os.open(path, flags | os.O_NOFOLLOW, 0o666)


TRACKERS = "tracking"  # a run's tracker files (W&B links its own logs and latest run there), never ours


def _first_link(folder: Path, top: bool = True) -> Path | None:
    try:
        entries = list(os.scandir(folder))
    except OSError:  # missing (a new run), or vanished while a worker tidies up
        return None
    for entry in entries:
        if top and entry.name == TRACKERS and entry.is_dir(follow_symlinks=False):
            continue
        if entry.is_symlink():
            return Path(entry.path)
        if entry.is_dir(follow_symlinks=False) and (found := _first_link(Path(entry.path), top=False)):
            return found
    return None


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
