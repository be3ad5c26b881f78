"""Reading JSON, JSONL, CSV and Parquet files into a list of rows, with 1-based row labels."""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from workbench.errors import InputError

SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


class DataFileError(InputError, ValueError):
    """A file that cannot be read as rows at all."""


def read_rows(path: Path, encoding: str = "utf-8") -> tuple[list[Any], str]:
    """Rows of a data file and the word that numbers them ("line" for JSONL, else "row"). Text files are
    decoded with `encoding`; a byte-order mark (as spreadsheets write one) is read, not kept."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataFileError(f"{path}: unknown file type '{path.suffix}'; expected {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    if kind == "parquet":
        return _parquet(path), "row"
    reader = {"json": _json, "jsonl": _jsonl, "csv": _csv}[kind]
    return reader(path, read_text(path, encoding)), "line" if kind == "jsonl" else "row"


def read_text(path: Path, encoding: str) -> str:
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise DataFileError(f"{path}: data.encoding {encoding!r} is not an encoding Python knows") from None
    if not getattr(info, "_is_text_encoding", True):  # base64, rot13, ...: codecs, but not for text
        raise DataFileError(f"{path}: data.encoding {encoding!r} is not a text encoding")
    codec = info.name
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig" if codec == "utf-8" else codec)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataFileError(
            f"{path}: not readable as {encoding} (byte 0x{data[exc.start]:02x} on line {line}); save the file as "
            "UTF-8, or set data.encoding to the file's encoding (e.g. gbk or gb18030 for Chinese spreadsheets, "
            "cp1252 for Western ones, utf-16)"
        ) from None


def _json(path: Path, text: str) -> list[Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if isinstance(data, dict):  # {"data": [...]} and similar single-list wrappers
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) == 1:
            data = lists[0]
    if not isinstance(data, list):
        raise DataFileError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    return data


class _Unparsable:
    """A JSONL line that is not JSON; kept so the row is reported instead of lost."""

    def __init__(self, reason: str):
        self.reason = reason


def _jsonl(path: Path, text: str) -> list[Any]:
    rows: list[Any] = []
    with io.StringIO(text) as handle:
        for line in handle:
            if not line.strip():
                rows.append(_Unparsable("blank line"))
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                rows.append(_Unparsable(f"not valid JSON ({exc.msg} at column {exc.colno})"))
    # trailing blank lines are file formatting, not rows
    while rows and isinstance(rows[-1], _Unparsable) and rows[-1].reason == "blank line":
        rows.pop()
    return rows


def _csv(path: Path, text: str) -> list[Any]:
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        rows: list[Any] = []
        for record in reader:
            if None in record:
                width = len(reader.fieldnames or [])
                rows.append(_Unparsable(f"has more cells than the header's {width}"))
            else:
                rows.append(record)
        return rows


def _parquet(path: Path) -> list[Any]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for broken files
        raise DataFileError(f"{path}: not a readable Parquet file ({exc})") from None
    return [_clean_nan(row) for row in table.to_pylist()]


def _clean_nan(row: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """The workbench's own row files (splits, task data): one JSON object per line, UTF-8."""
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
