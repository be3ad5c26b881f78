"""`workbench recipe validate` and `workbench data inspect`: what a run would take in, checked before it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.cli.common import Subcommands, _out
from workbench.core import safe
from workbench.core.paths import BUILTIN_EVALS


def cmd_validate(args: argparse.Namespace) -> int:
    import tempfile

    from workbench.core.recipe import load_recipe
    from workbench.eval import tasks

    recipe = load_recipe(args.recipe, args.set)
    tasks.check_metric(recipe.eval.metric)
    folders = [BUILTIN_EVALS, *(recipe.resolve_path(folder) for folder in recipe.eval.include)]
    with tempfile.TemporaryDirectory(prefix="workbench-tasks-") as scratch:  # the eval stage's task checks, now
        tasks.copy_task_folders(folders, Path(scratch), recipe.eval.trust_task_code)
    _out(f"{args.recipe}: ok (recipe {recipe.name!r}, base model {recipe.base_model})")
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from workbench.data.dataset import load_data, render, token_lengths
    from workbench.pipeline.stages.data import length_stats

    data = load_data(Path(args.file), args.format, args.system_prompt, args.encoding)
    _out(f"file:    {data.path}")
    _out(f"format:  {data.format}")
    _out(f"rows:    {data.total} ({len(data.rows)} good, {len(data.bad)} bad)")
    for info in data.bad[:20]:
        _out(f"  bad {info}")
    if len(data.bad) > 20:
        _out(f"  ... and {len(data.bad) - 20} more")
    if not data.rows:
        return 1
    from transformers import AutoTokenizer

    from workbench.core.models import ModelError, resolve_model

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
    except (ModelError, OSError) as exc:
        _out(f"(no tokenizer: {exc}; showing the first row as data)")
        _out(safe.json_text(data.rows[0][1], indent=2, ensure_ascii=False))
        return 0 if not data.bad else 1
    number, first = data.rows[0]
    _out(f"\nexample ({data.unit} {number}) through the chat template of {args.model}:\n")
    _out(render(first, tokenizer))
    stats = length_stats(token_lengths([row for _, row in data.rows], tokenizer))
    _out("tokens:  " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    return 0 if not data.bad else 1


def register(sub: Subcommands) -> None:
    recipe = sub.add_parser("recipe", help="recipe tools").add_subparsers(dest="recipe_command", required=True)
    validate = recipe.add_parser("validate", help="check a recipe; prints every problem")
    validate.add_argument("recipe")
    validate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    validate.set_defaults(func=cmd_validate)

    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    inspect = data.add_parser("inspect", help="detected format, rows, bad rows, a rendered example, token lengths")
    inspect.add_argument("file")
    inspect.add_argument("--format", default="auto")
    inspect.add_argument("--model", default="smollm2-135m-instruct", help="whose chat template and tokenizer")
    inspect.add_argument("--system-prompt")
    inspect.add_argument("--encoding", default="utf-8", help="text encoding of the file (default utf-8)")
    inspect.set_defaults(func=cmd_data_inspect)
