"""The workbench's errors: every refusal and failure a user can act on is a `WorkbenchError`, printed as one
message (naming the file, field or variant) with the class's exit status. Anything else is a bug and
keeps its traceback. Standard library only: the command line and the TUI import it before anything heavy.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base class; `exit_code` is what the command line exits with."""

    exit_code = 1

    def message(self) -> str:
        return f"error: {self}"


class InputError(WorkbenchError):
    """Something the user gave cannot be used: a recipe, a data file, a name, an option."""

    exit_code = 2


class RunError(InputError):
    """A run cannot start or go on, for a reason the user can fix."""


class ResourceError(WorkbenchError):
    """The machine lacks what a step needs (disk, memory, a tool, a working backend)."""

    exit_code = 3


class StageFailed(WorkbenchError):
    """A stage could not produce its output (after its parts were each tried)."""


class Interrupted(WorkbenchError):
    """Stopped on request after saving what can be resumed from."""

    exit_code = 130

    def message(self) -> str:
        return f"interrupted: {self}"
