"""The `workbench` command line: the same engine the TUI drives.

One module per command group, each adding its commands with `register(subcommands)`; `build_parser` takes
them in `GROUPS` order (the order `workbench --help` lists the commands in). What they share (printing
through `_out`, argument types, the error-to-exit-status mapping) is `common.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from workbench.cli import chat, doctor, inputs, models, publish, report, run, runs, serve, show, tui
from workbench.cli.common import _explain, _named_runs, _out, _Parser
from workbench.core import paths
from workbench.core.common import default_home

DESCRIPTION = "The `workbench` command line: the same engine the TUI drives."
GROUPS = (run, inputs, models, doctor, runs, chat, serve, publish, tui, show, report)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="workbench", description=DESCRIPTION)
    parser.add_argument(
        "--home",
        type=Path,
        default=default_home(),
        help="folder of the run store and run artifacts (default: $WORKBENCH_HOME or ./runs)",
    )
    sub = parser.add_subparsers(dest="command")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        args.func = tui.cmd_tui
    try:
        for run_id in _named_runs(args):  # a run folder that is (or holds) a link is refused before any use
            paths.run_folder(args.home, run_id)
        return args.func(args)
    except KeyboardInterrupt:
        _out("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `workbench show RUN | head`: the reader has gone; exit as a piped tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # noqa: BLE001 - problems the user can fix get a message; anything else raises
        return _explain(exc)
