"""`workbench report` and `workbench compare`: a run's comparison, recommendation and report files; several
runs side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.cli.common import Subcommands, _load_report, _out, _percent, _run_name, _store
from workbench.core import safe
from workbench.report import runs, table, twins, write


def cmd_report(args: argparse.Namespace) -> int:
    store = _store(args)
    report = _load_report(store, args.home, args.run, args.keep_percent)
    report.recovered = twins.in_store(store, args.home, report)
    if args.format == "json":
        _out(safe.json_text(report.to_dict(), indent=2))
        return 0
    dest = args.out or args.home / args.run / "report"
    if args.keep_percent is not None and args.out is None:  # the run's own report keeps the recipe's threshold
        dest = dest.with_name(f"report-keep{args.keep_percent:g}")
    dest = write.write(report, dest, own=args.out is None)
    _out(table.plain(report.comparison))
    _out()
    for line in write.recommendation_lines(report.comparison) + write.adapter_lines(report.comparison):
        _out(line)
    _out("\nstages: " + "; ".join(write.stage_lines(report)))
    _out(f"\nreport: {dest / 'report.html'} (also report.md, results.json, comparison.csv)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    store = _store(args)
    side = runs.side_by_side([_load_report(store, args.home, run_id) for run_id in args.runs])
    _out(safe.json_text(side, indent=2) if args.format == "json" else runs.markdown(side))
    return 0


def register(sub: Subcommands) -> None:
    report = sub.add_parser("report", help="a run's comparison table, recommendation and report files")
    report.add_argument("run", type=_run_name)
    report.add_argument("--format", choices=["text", "json"], default="text", help="json: print the results only")
    report.add_argument("--out", type=Path, help="folder for the report files (default: runs/RUN/report)")
    report.add_argument(
        "--keep-percent", type=_percent, help="override report.keep_percent (files go to runs/RUN/report-keepX)"
    )
    report.set_defaults(func=cmd_report)
    compare_runs = sub.add_parser("compare", help="several runs side by side (which training survives quantization)")
    compare_runs.add_argument("runs", nargs="+", type=_run_name)
    compare_runs.add_argument("--format", choices=["md", "json"], default="md")
    compare_runs.set_defaults(func=cmd_compare)
