"""`workbench models list|pull` and `workbench setup`: the base models and the tools runs need offline."""

from __future__ import annotations

import argparse
import os

from workbench.cli.common import Subcommands, _out


def cmd_models_list(args: argparse.Namespace) -> int:
    from workbench.core.models import load_registry

    default, entries = load_registry()
    _out(f"{'name':28} {'params':7} {'local':6} source")
    for entry in entries.values():
        mark = " (default)" if entry.name == default else ""
        where = "yes" if entry.is_local else "no"
        _out(f"{entry.name:28} {entry.params or '':7} {where:6} {entry.source}: {entry.package or entry.hub_id}{mark}")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from workbench.core.models import pull

    path = pull(args.name)
    _out(f"{args.name}: {path}")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    from workbench.export import llamacpp_tools

    folder = llamacpp_tools.setup(os.environ.get("CMAKE_ARGS", ""))
    _out(f"llama.cpp converter and tools ({', '.join(llamacpp_tools.TOOLS)}): {folder}")
    return 0


def register(sub: Subcommands) -> None:
    models = sub.add_parser("models", help="base models").add_subparsers(dest="models_command", required=True)
    models.add_parser("list", help="registry models and which are local").set_defaults(func=cmd_models_list)
    pull = models.add_parser("pull", help="materialise a registry model under models/")
    pull.add_argument("name")
    pull.set_defaults(func=cmd_models_pull)

    sub.add_parser(
        "setup", help="fetch and build what runs need offline later (llama.cpp's converter and tools)"
    ).set_defaults(func=cmd_setup)
