"""The rows of a training that takes a data file of its own (a reward model's, preference tuning's): read and
checked like the data stage's, then split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workbench.core.recipe import Recipe, RowsSection
from workbench.data.dataset import LoadedData, load_checked, split_rows


def checked_split(
    recipe: Recipe, section: RowsSection, tokenizer: Any, field: str, say: Callable[[str], None]
) -> tuple[LoadedData, list[dict[str, Any]], list[dict[str, Any]]]:
    """A tuning data file (`field`) read and checked like the data stage's (the supervised data's system
    prompt unless it has its own), its tolerated bad rows said, split; rows carry their number."""
    path = recipe.resolve_path(section.path)
    data, _ = load_checked(path, section, tokenizer, field, section.system_prompt or recipe.data.system_prompt)
    for info in data.bad:
        say(f"bad {info} (tolerated, {field}.max_bad_rows={section.max_bad_rows})")
    train, held_out = split_rows(data.rows, section.held_out, section.split_seed)
    say(f"{field}: {data.format}, {len(train)} train / {len(held_out)} held-out rows, {len(data.bad)} bad")
    return data, [{"number": n, **row} for n, row in train], [{"number": n, **row} for n, row in held_out]
