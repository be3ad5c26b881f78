"""Load a data file into normalised rows, account for bad rows, split, and shape rows for TRL."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core.errors import InputError
from workbench.core.recipe import RowsSection
from workbench.data.files import Limits, _Unparsable, read_rows
from workbench.data.formats import DETECT_ROWS, NORMALISERS, BadRow, Row, detect_format


@dataclass
class BadRowInfo:
    number: int  # 1-based position in the file
    label: str  # "line 7" / "row 7"
    reason: str

    def __str__(self) -> str:
        return f"{self.label}: {self.reason}"


@dataclass
class LoadedData:
    path: Path
    format: str
    rows: list[tuple[int, Row]]  # (1-based number in the file, normalised row)
    bad: list[BadRowInfo] = field(default_factory=list)
    unit: str = "row"

    @property
    def total(self) -> int:
        return len(self.rows) + len(self.bad)

    def mark_bad(self, numbers: dict[int, str]) -> None:
        """Move rows found bad after loading (e.g. too long) to the bad list."""
        self.bad += [BadRowInfo(n, f"{self.unit} {n}", reason) for n, reason in numbers.items()]
        self.bad.sort(key=lambda info: info.number)
        self.rows = [(n, row) for n, row in self.rows if n not in numbers]


class DataError(InputError, ValueError):
    """Data that cannot be used as it is; the message lists what is wrong and where."""


def load_data(
    path: Path,
    fmt: str = "auto",
    system_prompt: str | None = None,
    encoding: str = "utf-8",
    limits: Limits | None = None,
) -> LoadedData:
    """A data file's rows normalised to `fmt` (detected from the first rows when auto), the ones that cannot
    be used kept as bad rows; the file is read as the rows are normalised, within `limits`."""
    stream, unit = read_rows(path, encoding, limits)
    head = _head(stream)
    if not head:
        raise DataError(f"{path}: no rows")
    if fmt == "auto":
        try:
            fmt = detect_format([r for r in head if not isinstance(r, _Unparsable)], str(path))
        except ValueError as exc:
            raise DataError(str(exc)) from None
    normalise = NORMALISERS[fmt]
    loaded = LoadedData(path=path, format=fmt, rows=[], unit=unit)
    for number, row in enumerate(itertools.chain(head, stream), 1):
        try:
            if isinstance(row, _Unparsable):
                raise BadRow(row.reason)
            if not isinstance(row, dict):
                raise BadRow(f"expected an object with {fmt} fields, got {type(row).__name__}")
            loaded.rows.append((number, _with_system(normalise(row), system_prompt)))
        except BadRow as exc:
            loaded.bad.append(BadRowInfo(number, f"{unit} {number}", str(exc)))
    return loaded


def _head(stream: Iterator[Any]) -> list[Any]:
    """The first rows, up to the DETECT_ROWS parsed ones the format is told from (the rest stay unread)."""
    head: list[Any] = []
    parsed = 0
    while parsed < DETECT_ROWS:
        row = next(stream, _END)
        if row is _END:
            break
        head.append(row)
        parsed += not isinstance(row, _Unparsable)
    return head


_END = object()


def _with_system(row: Row, system_prompt: str | None) -> Row:
    if not system_prompt:
        return row
    key = "messages" if "messages" in row else "prompt" if "prompt" in row else None
    if key and row[key][0]["role"] != "system":
        row[key] = [{"role": "system", "content": system_prompt}, *row[key]]
    return row


def load_checked(
    path: Path, section: RowsSection, tokenizer: Any, field: str = "data", system_prompt: str | None = None
) -> tuple[LoadedData, list[int]]:
    """A recipe's data file (`field`) read and normalised, rows longer than its `max_length` in tokens
    marked bad, refused when more rows are bad than its `max_bad_rows` (each named with its number); the
    token lengths of the rest."""
    limits = Limits(section.max_file_mb, section.max_rows, max_length=section.max_length, field=field)
    data = load_data(path, section.format, system_prompt or section.system_prompt, section.encoding, limits)
    lengths = token_lengths([row for _, row in data.rows], tokenizer)
    too_long = {
        number: f"{length} tokens, longer than {field}.max_length {section.max_length}"
        for (number, _), length in zip(data.rows, lengths, strict=True)
        if length > section.max_length
    }
    data.mark_bad(too_long)
    check_bad_rows(data, section.max_bad_rows, field=field)
    return data, [length for length in lengths if length <= section.max_length]


def check_bad_rows(data: LoadedData, tolerated: int, shown: int = 20, field: str = "data") -> None:
    """Refuse when more rows are bad than the recipe tolerates, naming every one (up to `shown`)."""
    if len(data.bad) <= tolerated:
        return
    lines = [
        f"{data.path}: {len(data.bad)} of {data.total} {data.unit}s are bad ({field}.max_bad_rows is {tolerated}):"
    ]
    lines += [f"  {info}" for info in data.bad[:shown]]
    if len(data.bad) > shown:
        lines.append(f"  ... and {len(data.bad) - shown} more")
    raise DataError("\n".join(lines))


def split_rows(
    rows: list[tuple[int, Row]], held_out: float, seed: int
) -> tuple[list[tuple[int, Row]], list[tuple[int, Row]]]:
    """Deterministic train / held-out split: `held_out` < 1 is a fraction, >= 1 a count."""
    count = held_out_count(len(rows), held_out)
    if count >= len(rows):
        raise DataError(
            f"data.held_out is {held_out:g}: {count} of the {len(rows)} usable rows would be held out for evaluation,"
            f" none left to train on; use at least {count + 1} rows or lower data.held_out"
        )
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = sorted(order[:count])
    held_set = set(held)
    return [rows[i] for i in range(len(rows)) if i not in held_set], [rows[i] for i in held]


def held_out_count(rows: int, held_out: float) -> int:
    return round(rows * held_out) if held_out < 1 else int(held_out)


def auto_epochs(examples: int) -> float:
    """Rule of thumb: ~15 epochs at 100 examples, ~10 at 1 000, ~2 at 10 000 (log-linear between)."""
    return round(float(np.interp(math.log10(max(examples, 1)), [2, 3, 4], [15, 10, 2])), 2)


def to_trl(row: Row, loss_on: str) -> dict[str, Any]:
    """TRL's conversational prompt/completion rows mask the prompt; `messages` rows train on all."""
    if "text" in row:
        return {"text": row["text"]}
    if "chosen" in row:
        return row
    if "label" in row:  # unpaired: TRL's KTO rows
        return {"prompt": row["prompt"], "completion": row["completion"], "label": row["label"]}
    messages = row["messages"]
    if loss_on == "all":
        return {"messages": messages}
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def render(row: Row, tokenizer: Any) -> str:
    """A row as the model sees it, through the tokenizer's chat template."""
    if "text" in row:
        return row["text"]
    if "chosen" in row:
        return tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
    if "completion" in row:
        return tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    return tokenizer.apply_chat_template(row["messages"], tokenize=False)


def token_lengths(rows: list[Row], tokenizer: Any) -> list[int]:
    """Each row's length in tokens as the model sees it; a preference pair's is its longer side's."""
    texts = [render(row, tokenizer) for row in rows]
    if not texts:
        return []
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    paired = [i for i, row in enumerate(rows) if "rejected" in row]
    if paired:
        rejected = [
            tokenizer.apply_chat_template(rows[i]["prompt"] + rows[i]["rejected"], tokenize=False) for i in paired
        ]
        for i, ids in zip(paired, tokenizer(rejected, add_special_tokens=False)["input_ids"], strict=True):
            lengths[i] = max(lengths[i], len(ids))
    return lengths
