"""`workbench doctor`: this machine's CPU, builds and versions, and a tiny run of each backend."""

from __future__ import annotations

import argparse

from workbench.cli.common import Subcommands, _out
from workbench.core import safe


def cmd_doctor(args: argparse.Namespace) -> int:
    from workbench import doctor

    recipe = None
    if args.recipe:
        from workbench.core.recipe import load_recipe

        recipe = load_recipe(args.recipe)
    report = doctor.examine(args.home, recipe)
    if not args.json:
        _out("\n".join(doctor.header_lines(report)))
        needed = ", ".join(report.needed)
        _out(f"\nbackends needed ({needed}), each in its own process (logs in {args.home / 'doctor'}):", flush=True)

    def show(probe: doctor.Probe) -> None:
        _out(doctor.probe_line(probe), flush=True)

    doctor.run_probes(report, args.home, doctor.gguf_types_of(recipe), on_probe=None if args.json else show)
    if args.json:
        _out(safe.json_text(report.to_dict(), indent=2))
    else:
        _out("\n".join(doctor.verdict_lines(report)))
    return 3 if report.failing else 0


def register(sub: Subcommands) -> None:
    doctor = sub.add_parser("doctor", help="CPU, builds, versions, and a tiny run of each backend in its own process")
    doctor.add_argument("--for", dest="recipe", metavar="RECIPE", help="judge by the backends this recipe needs")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(func=cmd_doctor)
