"""Names, errors, recipes and model answers are shown as they are, never read as markup: a `[` in an
answer or an error message would otherwise fail to render or restyle the screen. Statics showing such
text are made with `markup=False`; these cover the rest."""

from __future__ import annotations

from rich.markup import escape
from textual.content import Content


def cell(value: object) -> str:
    """A DataTable cell (DataTable reads str cells as Rich markup)."""
    return escape(str(value))


def plain(value: str) -> Content:
    """For border titles and option prompts."""
    return Content(value)
