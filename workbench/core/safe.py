"""Untrusted text made harmless where it lands: model answers, dataset rows, error messages and GGUF metadata
end up in terminals, spreadsheets, Markdown viewers and JSON readers. Standard library only."""

from __future__ import annotations

import json
import math
import re
from typing import Any

# escape sequences (CSI, OSC, other ESC forms), then any C0/C1 control left but newline and tab
_ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])|\x9b[0-?]*[ -/]*[@-~]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROLS_BUT_CR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_CSV_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_MARKDOWN = re.compile(r"([\\`*\[\]<>|!~])")


def terminal_text(text: str, keep_returns: bool = False) -> str:
    """`text` without anything a terminal would act on (colours, cursor moves, title or clipboard writes,
    bells); newlines and tabs stay, and carriage returns with `keep_returns` (a tool's progress bar)."""
    return (_CONTROLS_BUT_CR if keep_returns else _CONTROLS).sub("", _ESCAPES.sub("", text))


def csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula gets a leading apostrophe; numbers pass as they are."""
    if isinstance(value, str) and value.startswith(_CSV_FORMULA):
        return "'" + value
    return "" if value is None else value


def markdown_text(text: str) -> str:
    """Literal text in Markdown: one line, no links, images, inline HTML, code spans or table breaks."""
    return _MARKDOWN.sub(r"\\\1", " ".join(terminal_text(str(text)).split()))


def markdown_row(cells: list[Any]) -> str:
    """One Markdown table row of literal cells."""
    return "| " + " | ".join(markdown_text("" if cell is None else str(cell)) for cell in cells) + " |"


def finite(value: Any) -> Any:
    """`value` with every NaN or infinity (anywhere inside) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def json_text(value: Any, **options: Any) -> str:
    """Strict JSON (RFC 8259): NaN and infinities become null, which every reader accepts."""
    return json.dumps(finite(value), allow_nan=False, **options)
