"""What every command shares: printing (`_out`, terminal-safe), the parser, argument types, the run store,
and the error-to-exit-status mapping."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from workbench.core import paths, safe
from workbench.core.errors import RunError, WorkbenchError
from workbench.core.store import Store
from workbench.report import write

Subcommands = argparse._SubParsersAction  # what a command group's `register` adds its commands to


def _out(text: str = "", **options: object) -> None:
    """Everything the command line prints goes through here (tests/test_security_secrets.py holds it to that):
    file names, store rows, model answers and logs may hold terminal controls, and none reaches the terminal."""
    print(safe.terminal_text(text), **options)  # type: ignore[call-overload]


class _Parser(argparse.ArgumentParser):
    """argparse's usage and error messages, which echo what was typed, through `_out` too."""

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            _out(message, end="", file=file or sys.stderr)


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected a whole number of 1 or more")
    return int(value)


def _percent(value: str) -> float:
    number = float(value)
    if not 0 < number <= 100:
        raise argparse.ArgumentTypeError(f"{value}: expected a percentage above 0 and at most 100")
    return number


def _run_name(value: str) -> str:
    try:
        return paths.check_name(value)
    except paths.BadName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _store(args: argparse.Namespace) -> Store:
    return Store(args.home / "workbench.db")


def _load_report(store: Store, home: Path, run_id: str, keep_percent: float | None = None) -> write.RunReport:
    try:
        return write.load(store, run_id, home / run_id, keep_percent)
    except KeyError:
        raise RunError(f"no run {run_id!r}; `workbench runs` lists them") from None


def _named_runs(args: argparse.Namespace) -> list[str]:
    named = [getattr(args, "run", None), getattr(args, "run_id", None), *(getattr(args, "runs", None) or [])]
    return [run_id for run_id in named if isinstance(run_id, str)]


def _explain(exc: Exception) -> int:
    """A WorkbenchError is one message and its exit status; anything else is a bug and keeps its traceback."""
    if isinstance(exc, WorkbenchError):
        _out(exc.message(), file=sys.stderr)
        return exc.exit_code
    raise exc
