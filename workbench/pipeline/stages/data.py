"""Data stage: load and check the recipe's data file, then save a deterministic train / held-out split."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from workbench.core import safe
from workbench.core.fsutil import hash_path
from workbench.core.models import resolve_model
from workbench.core.recipe import READ_LIMITS, Recipe
from workbench.core.records import Artifact
from workbench.data.dataset import DataError, load_checked, split_rows
from workbench.data.files import write_jsonl
from workbench.pipeline.stages.base import Stage, StageContext


def base_model_key(base_model: str) -> str:
    resolved = resolve_model(base_model)
    return hash_path(Path(resolved)) if Path(resolved).is_dir() else resolved


def key_inputs(recipe: Recipe) -> dict[str, Any]:
    unkeyed = READ_LIMITS | ({"encoding"} if recipe.data.encoding == "utf-8" else set())
    section = recipe.data.model_dump(mode="json", exclude=unkeyed)
    return {
        "data": section,
        "data_file": hash_path(recipe.resolve_path(recipe.data.path)),
        "base_model": base_model_key(recipe.base_model),
    }


def length_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    ordered = sorted(lengths)
    return {
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 1),
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "max": ordered[-1],
    }


def held_out_users(recipe: Recipe) -> list[str]:
    """What in the recipe evaluates on the held-out rows."""
    users = []
    if "heldout" in recipe.eval.tasks:
        users.append("eval.tasks has heldout")
    if recipe.eval.fidelity_rows:
        users.append(f"eval.fidelity_rows is {recipe.eval.fidelity_rows}")
    return users


def check_held_out(recipe: Recipe, usable: int, held_out: int) -> None:
    """A held-out split of 0 rows is refused unless nothing evaluates on it."""
    users = held_out_users(recipe)
    if held_out or not users:
        return
    fraction = recipe.data.held_out
    needed = next((n for n in range(1, 10**6) if round(n * fraction) >= 1), None) if fraction else None
    more = f"at least {needed} rows give data.held_out {recipe.data.held_out:g} one row, " if needed else ""
    raise DataError(
        f"data.held_out is {recipe.data.held_out:g}: of {usable} usable rows none would be held out, but "
        f"{' and '.join(users)}; {more}or set data.held_out to a count (e.g. 1), "
        "or turn evaluation on held-out rows off (eval.tasks without heldout, eval.fidelity_rows: 0)"
    )


def run(ctx: StageContext) -> list[Artifact]:
    from transformers import AutoTokenizer

    section = ctx.recipe.data
    path = ctx.recipe.resolve_path(section.path)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(ctx.recipe.base_model))
    data, lengths = load_checked(path, section, tokenizer)
    for info in data.bad:
        ctx.say(f"bad {info} (tolerated, data.max_bad_rows={section.max_bad_rows})")

    train, held_out = split_rows(data.rows, section.held_out, section.split_seed)
    check_held_out(ctx.recipe, len(data.rows), len(held_out))
    write_jsonl(ctx.out / "train.jsonl", [{"number": n, **row} for n, row in train])
    write_jsonl(ctx.out / "held_out.jsonl", [{"number": n, **row} for n, row in held_out])
    write_jsonl(ctx.out / "bad_rows.jsonl", [{"number": b.number, "reason": b.reason} for b in data.bad])
    summary = {
        "source": str(path),
        "format": data.format,
        "rows": data.total,
        "bad_rows": len(data.bad),
        "train_rows": len(train),
        "held_out_rows": len(held_out),
        "tokens": length_stats(lengths),
    }
    (ctx.out / "summary.json").write_text(safe.json_text(summary, indent=2))
    ctx.event("data", **summary)
    ctx.say(f"{data.format}: {len(train)} train / {len(held_out)} held-out rows, {len(data.bad)} bad")
    return [
        Artifact("train-split", "data", "train.jsonl", (ctx.out / "train.jsonl").stat().st_size, {"rows": len(train)}),
        Artifact(
            "held-out-split",
            "data",
            "held_out.jsonl",
            (ctx.out / "held_out.jsonl").stat().st_size,
            {"rows": len(held_out)},
        ),
    ]


STAGE = Stage(name="data", needs=(), key_inputs=key_inputs, run=run)
