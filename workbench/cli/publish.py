"""`workbench publish`: a variant with its model card to the Hugging Face Hub (or laid out only)."""

from __future__ import annotations

import argparse

from workbench.cli.common import Subcommands, _out, _run_name, _store


def cmd_publish(args: argparse.Namespace) -> int:
    from workbench.pipeline import publish

    store = _store(args)
    folder = publish.lay_out(store, args.home, args.run, args.variant, args.repo)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    _out(f"{folder}: {', '.join(files)}")
    if args.dry_run:
        _out("dry run: nothing uploaded; the model card is README.md there")
        return 0
    _out(f"uploaded: {publish.upload(folder, args.repo, args.private)}")
    return 0


def register(sub: Subcommands) -> None:
    publish = sub.add_parser("publish", help="a variant with its model card to the Hugging Face Hub")
    publish.add_argument("run", type=_run_name)
    publish.add_argument("--variant", required=True, help="a variant's name or label (e.g. Q4_K_M.gguf, merged)")
    publish.add_argument("--repo", required=True, help="OWNER/NAME on the Hub")
    publish.add_argument("--private", action="store_true", help="create the repository private")
    publish.add_argument("--dry-run", action="store_true", help="lay the repository out under RUN/publish/ only")
    publish.set_defaults(func=cmd_publish)
