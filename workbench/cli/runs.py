"""`workbench runs` and `workbench cancel`: the store's runs with their status, and stopping one's worker."""

from __future__ import annotations

import argparse

from workbench.cli.common import Subcommands, _out, _run_name, _store, _when
from workbench.core.errors import RunError
from workbench.pipeline import launcher


def cmd_runs(args: argparse.Namespace) -> int:
    store = _store(args)
    runs = store.runs()
    if not runs:
        _out("no runs yet")
        return 0
    _out(f"{'run':24} {'status':12} {'updated':20} stages")
    for run in runs:
        stages = " ".join(f"{s.name}:{s.status}" for s in store.stages(run.id))
        status = store.live_status(run)
        _out(f"{run.id:24} {status:12} {_when(run.updated):20} {stages}")
        if status == "crashed":
            last = store.log_tail(run.id, 1)
            _out(f"{'':24} last words: {last[0] if last else '(no log)'}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    if not launcher.cancel(_store(args), args.run):
        raise RunError(f"run {args.run!r} has no live worker to stop")
    _out(f"asked run {args.run} to stop; it saves what it can resume from")
    return 0


def register(sub: Subcommands) -> None:
    sub.add_parser("runs", help="list runs with status").set_defaults(func=cmd_runs)
    cancel = sub.add_parser("cancel", help="stop a run's worker (training checkpoints first)")
    cancel.add_argument("run", type=_run_name)
    cancel.set_defaults(func=cmd_cancel)
